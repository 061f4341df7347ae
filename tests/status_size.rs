//! Hostile cheap requests against the operator's memory: many MachineRequests
//! with count 0, 2,000 made-up `returnMachines` ids and ~200 KiB of
//! annotations each cost nothing in the cloud but, cached whole, used to take
//! the operator past its chart's memory limit. The operator is started once
//! they all exist (its first listing reads them all), and its peak resident
//! memory must stay under the limit `charts/hostforge/values.yaml` sets.
//!
//! `HOSTFORGE_HOSTILE_REQUESTS` sets how many (default 1000).

use std::time::{Duration, Instant};

use hostforge_testbed::hostile::{chart_memory_limit_kib, create, reconciled};
use hostforge_testbed::operator::quick_config;
use hostforge_testbed::{OperatorProcess, TestEnv};

const WAIT: Duration = Duration::from_secs(900);

#[tokio::test]
async fn hostile_cheap_requests_stay_within_the_memory_limit() {
    let n: usize = std::env::var("HOSTFORGE_HOSTILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = TestEnv::new("hostile-size").await;
    env.install_crds().await;
    create(&env, n).await;

    let mut op = OperatorProcess::start(&env, &quick_config(&env)).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let done = reconciled(&env).await;
        if done == n {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} requests were reconciled"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (peak_kib, cpu) = op.usage().expect("the operator's memory");
    let limit = chart_memory_limit_kib();
    eprintln!(
        "{n} hostile requests: operator peak RSS {} MiB (limit {} MiB), cpu {cpu:?}",
        peak_kib / 1024,
        limit / 1024
    );
    assert!(op.exited().is_none(), "the operator exited");
    assert!(
        peak_kib < limit,
        "peak RSS {peak_kib} KiB is above the chart's limit {limit} KiB"
    );
}

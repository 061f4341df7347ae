//! Hostile cheap requests against the operator's memory: many MachineRequests
//! with count 0, 2,000 made-up `returnMachines` ids and ~200 KiB of
//! annotations each cost nothing in the cloud but, cached whole, used to take
//! the operator past its chart's memory limit. The operator is started once
//! they all exist (its first listing reads them all), and its peak resident
//! memory must stay under the limit `charts/hostforge/values.yaml` sets.
//!
//! `HOSTFORGE_HOSTILE_REQUESTS` sets how many (default 1000).

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use hostforge::api::MachineRequest;
use hostforge_testbed::machines::requests;
use hostforge_testbed::operator::quick_config;
use hostforge_testbed::{repo_path, OperatorProcess, TestEnv};
use kube::api::{ListParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(900);

/// The operator container's memory limit in the chart, in KiB.
fn chart_memory_limit_kib() -> u64 {
    let values = std::fs::read_to_string(repo_path("charts/hostforge/values.yaml"))
        .expect("reading the chart's values");
    let limits = values
        .split("limits:")
        .nth(1)
        .expect("the chart sets resource limits");
    let memory = limits
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .expect("a memory limit")
        .trim();
    let mib: u64 = memory
        .strip_suffix("Mi")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("memory limit {memory} is not in Mi"));
    mib * 1024
}

fn hostile(i: usize) -> MachineRequest {
    let ids: Vec<String> = (0..2000).map(|j| format!("i-{:08x}{j:09x}", i)).collect();
    serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
        "metadata": {
            "name": format!("hostile-{i:05}"),
            "labels": {"hostforge.io/owner": "hostfactory"},
            "annotations": {
                "hostforge.io/hf-ret-0000000000000000": "r".repeat(100 * 1024),
                "noise": "n".repeat(100 * 1024),
            },
        },
        "spec": {"templateRef": {"name": "missing"}, "count": 0, "returnMachines": ids},
    }))
    .expect("a valid request")
}

/// How many requests of the namespace have a status (the operator reached
/// them), read in pages so the test does not hold them all either.
async fn reconciled(env: &TestEnv) -> usize {
    let api = requests(env);
    let mut seen = 0;
    let mut params = ListParams::default().limit(50);
    loop {
        let page = api.list(&params).await.expect("listing requests");
        seen += page
            .items
            .iter()
            .filter(|r| {
                r.status
                    .as_ref()
                    .is_some_and(|st| st.observed_generation.is_some())
            })
            .count();
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => params = params.continue_token(&c),
            _ => return seen,
        }
    }
}

#[tokio::test]
async fn hostile_cheap_requests_stay_within_the_memory_limit() {
    let n: usize = std::env::var("HOSTFORGE_HOSTILE_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let env = TestEnv::new("hostile-size").await;
    env.install_crds().await;
    let api = requests(&env);
    stream::iter(0..n)
        .for_each_concurrent(8, |i| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &hostile(i))
                    .await
                    .unwrap_or_else(|e| panic!("creating request {i}: {e}"));
            }
        })
        .await;

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

//! After a churn or crash phase: duplicates and leaks, held against what moto
//! runs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use hostforge::api::MachineRequest;
use hostforge_testbed::machines::{moto_live_in_cluster, status_live};
use hostforge_testbed::TestEnv;

/// Duplicates (ids listed by more than one request, or more live machines in
/// status than count) and leaks (running in moto, listed nowhere) after a phase.
pub(super) async fn audit(env: &TestEnv, list: &[MachineRequest]) -> (usize, usize, usize, String) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut over = 0usize;
    for mr in list {
        let live = status_live(mr);
        over += live.len().saturating_sub(mr.spec.count.max(0) as usize);
        for id in live {
            *seen.entry(id).or_default() += 1;
        }
    }
    let listed_twice = seen.values().filter(|n| **n > 1).count();
    let in_moto: BTreeSet<String> = moto_live_in_cluster(&env.ec2(), &env.namespace)
        .await
        .into_iter()
        .collect();
    let listed: BTreeSet<String> = seen.keys().cloned().collect();
    let leaks: Vec<&String> = in_moto.difference(&listed).collect();
    let missing: Vec<&String> = listed.difference(&in_moto).collect();
    let detail = format!(
        "moto {} running, status {} live; over count {over}, listed twice {listed_twice}; leaks {:?}; listed but not running {:?}",
        in_moto.len(),
        listed.len(),
        leaks.iter().take(5).collect::<Vec<_>>(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    (over + listed_twice, leaks.len(), missing.len(), detail)
}

/// Launch templates in moto tagged for the namespace's cluster, waited on
/// for up to `wait` until none is left: a leftover the collector would take
/// after its grace period is not a leak, one still there after it is.
pub(super) async fn templates_left(env: &TestEnv, wait: Duration) -> usize {
    let ec2 = env.ec2();
    let t0 = Instant::now();
    loop {
        let left = ec2
            .describe_launch_templates()
            .filters(
                Filter::builder()
                    .name("tag:hostforge.io/cluster")
                    .values(&env.namespace)
                    .build(),
            )
            .send()
            .await
            .map(|out| out.launch_templates().len())
            .unwrap_or(usize::MAX);
        if left == 0 || t0.elapsed() >= wait {
            return left;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

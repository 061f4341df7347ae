//! Hostile cheap requests: MachineRequests with count 0, 2,000 made-up
//! `returnMachines` ids and ~200 KiB of annotations each. They cost nothing
//! in the cloud but, cached whole, once took the operator past its chart's
//! memory limit. Shared by `tests/status_size.rs` (which asserts the limit)
//! and `make bench` (which prints the figure).

use futures::{stream, StreamExt};
use hostforge::api::MachineRequest;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use super::machines::requests;
use super::{repo_path, TestEnv};

/// The operator container's memory limit in the chart, in KiB.
pub fn chart_memory_limit_kib() -> u64 {
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

/// Hostile request number `i`.
pub fn hostile(i: usize) -> MachineRequest {
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

/// Creates `n` hostile requests in `env`'s namespace, 8 at a time.
pub async fn create(env: &TestEnv, n: usize) {
    let api = requests(env);
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
}

/// How many requests of the namespace have a status (the operator reached
/// them), read in pages so the caller does not hold them all either.
pub async fn reconciled(env: &TestEnv) -> usize {
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

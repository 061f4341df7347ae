//! Templates and requests the scenarios create, waiting for them, and the
//! forwarder's call counts.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::future::join_all;
use futures::StreamExt;
use hostforge::api::MachineRequest;
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{self, is_ready, status_live, template_is_ready};
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use serde_json::json;

/// Three templates: two RunInstances (different types) and one EC2 Fleet.
pub(crate) async fn create_templates(env: &TestEnv) -> Vec<&'static str> {
    let (subnet, _) = env.default_subnet_and_group().await;
    let specs = [
        (
            "bench-run-a",
            json!({"providerApi": "RunInstances", "image": {"ssmParameter": AL2023_PARAM},
                   "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}]}),
        ),
        (
            "bench-run-b",
            json!({"providerApi": "RunInstances", "image": {"ssmParameter": AL2023_PARAM},
                   "instanceTypes": [{"type": "m5.large"}]}),
        ),
        (
            "bench-fleet",
            json!({"providerApi": "EC2Fleet", "image": {"ssmParameter": AL2023_PARAM},
                   "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
                   "subnetIds": [subnet], "capacityType": "mixed", "onDemandPercent": 50}),
        ),
    ];
    for (name, spec) in &specs {
        machines::create_template(env, name, spec.clone()).await;
    }
    for (name, _) in &specs {
        machines::wait_template(
            env,
            name,
            "Ready",
            Duration::from_secs(60),
            template_is_ready,
        )
        .await;
    }
    specs.iter().map(|(n, _)| *n).collect()
}

/// Creates `n` requests of `count` machines, spread over `templates`, all at
/// once; returns their names.
pub(crate) async fn apply_requests(
    env: &TestEnv,
    templates: &[&str],
    prefix: &str,
    n: usize,
    count: i32,
) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    // At most 50 creates in flight: "applied at once", without opening
    // thousands of connections to the apiserver.
    for (c, chunk) in names.chunks(50).enumerate() {
        join_all(chunk.iter().enumerate().map(|(i, name)| {
            let template = templates[(c * 50 + i) % templates.len()];
            async move {
                machines::create_request(env, name, template, count, false).await;
            }
        }))
        .await;
    }
    names
}

pub(crate) fn degraded(mr: &MachineRequest) -> bool {
    machines::condition(mr, "Degraded").is_some_and(|(s, _)| s == "True")
}

/// Reasons of a Degraded condition that name what the cloud answered (a
/// refusal, capacity, an error or an outage), as opposed to a stale or
/// internal cause.
const CLOUD_REASONS: &[&str] = &[
    "LaunchFailed",
    "CapacityUnavailable",
    "CloudError",
    "CloudUnavailable",
    "Throttled",
];

/// Ready, or Degraded with a reason that names the cloud's answer: a request
/// that is not stuck without saying why.
pub(crate) fn settled(mr: &MachineRequest) -> bool {
    is_ready(mr)
        || machines::condition(mr, "Degraded")
            .is_some_and(|(s, r)| s == "True" && CLOUD_REASONS.contains(&r.as_str()))
}

/// Waits until every request of the namespace is Ready; prints progress every
/// 5 s. Returns the seconds it took from `since` and the final list, or the
/// list when `timeout` passed. Readiness is followed through a watch, so the
/// figure is when the last request turned Ready, not when a list noticed it.
pub(crate) async fn wait_all_ready(
    start: Instant,
    env: &TestEnv,
    what: &str,
    since: Instant,
    timeout: Duration,
) -> Result<(f64, Vec<MachineRequest>), Vec<MachineRequest>> {
    wait_all(start, env, what, since, timeout, is_ready).await
}

/// [`wait_all_ready`] for any test of "done" (e.g. [`settled`]).
pub(crate) async fn wait_all(
    start: Instant,
    env: &TestEnv,
    what: &str,
    since: Instant,
    timeout: Duration,
    done: fn(&MachineRequest) -> bool,
) -> Result<(f64, Vec<MachineRequest>), Vec<MachineRequest>> {
    let (reader, writer) = reflector::store();
    // Every watch event, the end of the initial listing included: the store
    // fills only when that listing is complete, so checking on object events
    // alone never returned when everything was already Ready (the wait then
    // ran into its timeout).
    let events = reflector(
        writer,
        watcher(machines::requests(env), watcher::Config::default()),
    )
    .default_backoff();
    futures::pin_mut!(events);
    let snapshot =
        || -> Vec<MachineRequest> { reader.state().iter().map(|m| (**m).clone()).collect() };
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => {
                if ev.is_none() {
                    return Err(snapshot());
                }
                let list = reader.state();
                if !list.is_empty() && list.iter().all(|m| done(m)) {
                    return Ok((since.elapsed().as_secs_f64(), snapshot()));
                }
            }
            _ = ticker.tick() => {
                let list = snapshot();
                if since.elapsed() > timeout {
                    return Err(list);
                }
                let ready = list.iter().filter(|m| is_ready(m)).count();
                let machines: usize = list.iter().map(|m| status_live(m).len()).sum();
                let wanted: i64 = list.iter().map(|m| i64::from(m.spec.count)).sum();
                progress!(
                    start,
                    "{what}: {ready}/{} requests Ready, {machines}/{wanted} machines in status",
                    list.len()
                );
            }
        }
    }
}

/// Calls by action from the forwarder's counters (`calls/<Action>`).
pub(crate) fn calls_by_action(fwd: &Forwarder) -> BTreeMap<String, u64> {
    fwd.snapshot()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("calls/").map(|a| (a.to_string(), v)))
        .collect()
}

pub(crate) fn fmt_calls(calls: &BTreeMap<String, u64>) -> String {
    calls
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Batches planned across all requests (each launch batch written to status).
pub(crate) fn planned_batches(list: &[MachineRequest]) -> usize {
    list.iter()
        .filter_map(|m| m.status.as_ref())
        .map(|s| s.launches.len())
        .sum()
}

//! Polling a custom resource until a predicate holds: the one wait every test
//! and the bench use, so a timeout always reports the same way, with the
//! object's status.

use std::fmt::Debug;
use std::time::{Duration, Instant};

use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How often [`wait_for`] reads the object.
const POLL: Duration = Duration::from_millis(250);

/// Reads `name` through `api` until `pred` holds and returns that version;
/// panics after `timeout` with "<Kind> <name> never became <what>" and the
/// object's status, so the failure can be understood from the log alone.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&K) -> bool,
) -> K
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Serialize + Debug,
{
    let deadline = Instant::now() + timeout;
    loop {
        let obj = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get {} {name}: {e}", K::kind(&())));
        if pred(&obj) {
            return obj;
        }
        assert!(
            Instant::now() < deadline,
            "{} {name} never became {what}; status: {}",
            K::kind(&()),
            status_of(&obj)
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The object's `status`, pretty-printed JSON.
fn status_of<K: Serialize>(obj: &K) -> String {
    serde_json::to_value(obj)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v["status"]).ok())
        .unwrap_or_default()
}

/// How often [`eventually`] checks.
const CHECK_EVERY: Duration = Duration::from_millis(200);

/// Awaits `check` every 200 ms until it holds; panics with "timed out
/// waiting for <what>" after `timeout`. For outcomes that are not one
/// object's status (counters, queues, Events), so tests wait on them with
/// the same bounded loop instead of each writing its own.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

//! Waiting on the plugin and moto, and the shape of the plugin's answers.

use super::*;

/// Polls `f` until it returns Some, or fails after `WAIT` naming `what`.
pub(super) async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What moto says about an instance: (private DNS, private IP, public IP,
/// launch time in epoch seconds, state).
pub(super) async fn moto_facts(env: &TestEnv, id: &str) -> (String, String, String, i64, String) {
    let out = env
        .ec2()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    let i = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("instance in moto")
        .clone();
    (
        i.private_dns_name().unwrap_or_default().to_string(),
        i.private_ip_address().unwrap_or_default().to_string(),
        i.public_ip_address().unwrap_or_default().to_string(),
        i.launch_time().map(|t| t.secs()).unwrap_or_default(),
        i.state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
    )
}

pub(super) fn status_of(answer: &Value, id: &str) -> Value {
    answer["requests"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["requestId"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {answer}"))
}

/// Every documented field of a getRequestStatus machine, with its type.
pub(super) fn assert_machine_shape(m: &Value) {
    for key in [
        "machineId",
        "name",
        "result",
        "status",
        "privateIpAddress",
        "publicIpAddress",
        "message",
    ] {
        assert!(m[key].is_string(), "{key} is not a string in {m}");
    }
    assert!(
        m["launchtime"].is_i64(),
        "launchtime is not an integer in {m}"
    );
    if m["result"] == "fail" {
        assert_ne!(m["message"], "", "fail without a message: {m}");
    }
}

pub(super) fn host(m: &Value) -> Value {
    json!({"name": m["name"], "machineId": m["machineId"]})
}

/// Polls the async `f` until it returns Some, or fails after `WAIT`.
pub(super) async fn eventually_async<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! getReturnRequests for hosts the cloud has put at risk while they still
//! run: a spot interruption notice, a rebalance recommendation, a scheduled
//! retirement, and several at once. No operator runs here: the status fields
//! are written directly, as the operator writes them from the interruption
//! queue (tests/interruption_queue.rs proves that part).

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};

use super::*;

/// `base` moved by `secs`, in status's wire format.
fn time(base: Timestamp, secs: i64) -> String {
    (base + SignedDuration::from_secs(secs))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// getReturnRequests' exact answer for the hosts below when the plugin reads
/// its clock `elapsed` seconds after `base`, with `rebalanceGracePeriod: 15m`
/// and `scheduledEventMargin: 10m`.
fn expected(elapsed: i64) -> Value {
    let left = |grace: i64| (grace - elapsed).max(0);
    json!({
        "status": "complete",
        "message": "5 of 6 hosts are being taken back (1 gone or going, 1 spot interruption notice, \
                    1 rebalance recommendation, 2 scheduled retirement or maintenance)",
        "requests": [
            // Noticed 30 s before base: 120 - 30.
            {"machine": "host-int", "machineId": "i-int", "gracePeriod": left(90)},
            // Recommended 60 s before base: 15 min - 60 s.
            {"machine": "host-reb", "machineId": "i-reb", "gracePeriod": left(840)},
            // Retirement 2 h after base, less the 10 min margin.
            {"machine": "host-sch", "machineId": "i-sch", "gracePeriod": left(6600)},
            // Recommended 60 s before base (840) and a maintenance 20 min
            // after it (1200 - 600 = 600): the smaller.
            {"machine": "host-both", "machineId": "i-both", "gracePeriod": left(600)},
            {"machine": "host-lost", "machineId": "i-lost", "gracePeriod": 0},
        ]
    })
}

#[tokio::test]
async fn hosts_at_risk_are_announced_with_the_time_they_have_left() {
    let env = TestEnv::new("hf-risk").await;
    env.install_crds().await;
    let name = "hf-compute-risk";
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineRequest",
        "metadata": {"name": name, "labels": {"hostforge.io/owner": "hostfactory"}},
        "spec": {"templateRef": {"name": "compute"}, "count": 6, "replaceLost": false},
    }))
    .expect("valid MachineRequest");
    requests(&env)
        .create(&PostParams::default(), &mr)
        .await
        .expect("create the request");
    // Whole seconds: status keeps them, and the plugin counts in them.
    let base = Timestamp::from_second(Timestamp::now().as_second()).expect("now");
    let running = |id: &str| {
        json!({"id": format!("i-{id}"), "name": format!("host-{id}"),
               "state": "running", "result": "succeed", "capacityType": "spot"})
    };
    let mut int = running("int");
    int["interruptionNoticeTime"] = json!(time(base, -30));
    let mut reb = running("reb");
    reb["rebalanceRecommendationTime"] = json!(time(base, -60));
    let mut sch = running("sch");
    sch["scheduledEvent"] = json!({"kind": "Retirement", "time": time(base, 7200)});
    let mut both = running("both");
    both["rebalanceRecommendationTime"] = json!(time(base, -60));
    both["scheduledEvent"] = json!({"kind": "Maintenance", "time": time(base, 1200)});
    let lost = json!({"id": "i-lost", "name": "host-lost", "state": "terminated",
                      "result": "fail", "terminationReason": "Lost"});
    let machines = vec![int, reb, sch, both, running("ok"), lost];
    requests(&env)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"machines": machines}})),
        )
        .await
        .expect("write the status");

    let shim = Shim::new(
        &env,
        "rebalanceGracePeriod: 15m\nscheduledEventMargin: 10m\n",
    );
    let held: Vec<Value> = ["int", "reb", "sch", "both", "ok", "lost"]
        .iter()
        .map(|id| json!({"name": format!("host-{id}"), "machineId": format!("i-{id}")}))
        .collect();
    let before = Timestamp::now().as_second() - base.as_second();
    let answer = shim.ok("getReturnRequests", &json!({ "machines": held }));
    let after = Timestamp::now().as_second() - base.as_second();
    // The plugin read its clock between the two: the answer is exactly the
    // one for one of those seconds (on a loaded machine, maybe a few).
    assert!(
        (before..=after).any(|elapsed| answer == expected(elapsed)),
        "{answer:#}\nis not the answer at any second in {before}..={after}, e.g.\n{:#}",
        expected(before)
    );

    // With rebalance recommendations off, the rebalanced host is not listed
    // and the doubly warned one falls back to its scheduled maintenance.
    let off = Shim::new(
        &env,
        "rebalanceGracePeriod: off\nscheduledEventMargin: 10m\n",
    );
    let before = Timestamp::now().as_second() - base.as_second();
    let answer = off.ok(
        "getReturnRequests",
        &json!({"machines": [{"name": "host-reb", "machineId": "i-reb"},
                             {"name": "host-both", "machineId": "i-both"}]}),
    );
    let after = Timestamp::now().as_second() - base.as_second();
    let at = |elapsed: i64| {
        json!([{"machine": "host-both", "machineId": "i-both",
                "gracePeriod": (600 - elapsed).max(0)}])
    };
    assert!(
        (before..=after).any(|elapsed| answer["requests"] == at(elapsed)),
        "{answer:#}"
    );
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("1 of 2 hosts are being taken back (1 scheduled")),
        "{answer}"
    );
}

//! getReturnRequests for hosts launched from an older version of their
//! template: the operator never replaces a scheduler's host, so they are
//! offered with `driftGracePeriod` counted down from when the request saw
//! the current version (`status.templateVersion.since`). No operator runs
//! here: the status fields are written directly, as the operator writes
//! them (tests/drift.rs proves that part).

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Patch, PatchParams, PostParams};

use super::*;

/// `base` moved by `secs`, in status's wire format.
fn time(base: Timestamp, secs: i64) -> String {
    (base + SignedDuration::from_secs(secs))
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// getReturnRequests' exact answer when the plugin reads its clock `elapsed`
/// seconds after `base`, with `driftGracePeriod: 20m`: the version was seen
/// 100 s before base.
fn expected(elapsed: i64) -> Value {
    json!({
        "status": "complete",
        "message": "3 of 5 hosts are being taken back (1 spot interruption notice, 2 drifted from the template)",
        "requests": [
            // Spec drift: 1200 - 100.
            {"machine": "host-spec", "machineId": "i-spec", "gracePeriod": (1100 - elapsed).max(0)},
            // Image drift: the same.
            {"machine": "host-img", "machineId": "i-img", "gracePeriod": (1100 - elapsed).max(0)},
            // Drifted and noticed 30 s before base: the notice's 90 s is smaller.
            {"machine": "host-both", "machineId": "i-both", "gracePeriod": (90 - elapsed).max(0)},
        ]
    })
}

#[tokio::test]
async fn drifted_hosts_are_offered_with_the_drift_grace() {
    let env = TestEnv::new("hf-drift").await;
    env.install_crds().await;
    let name = "hf-compute-drift";
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineRequest",
        "metadata": {"name": name, "labels": {"hostforge.io/owner": "hostfactory"}},
        "spec": {"templateRef": {"name": "compute"}, "count": 5},
    }))
    .expect("valid MachineRequest");
    requests(&env)
        .create(&PostParams::default(), &mr)
        .await
        .expect("create the request");
    let base = Timestamp::from_second(Timestamp::now().as_second()).expect("now");
    let machine = |id: &str, digest: Option<&str>, image: &str| {
        let mut m = json!({"id": format!("i-{id}"), "name": format!("host-{id}"),
               "state": "running", "result": "succeed", "imageId": image});
        if let Some(d) = digest {
            m["templateDigest"] = json!(d);
        }
        m
    };
    let mut both = machine("both", Some("0000aaaa"), "ami-new");
    both["interruptionNoticeTime"] = json!(time(base, -30));
    let machines = vec![
        machine("spec", Some("0000aaaa"), "ami-new"),
        machine("img", Some("1111bbbb"), "ami-old"),
        both,
        // Launched from the current version.
        machine("cur", Some("1111bbbb"), "ami-new"),
        // Launched before hostforge recorded digests: never drifted.
        machine("unrec", None, "ami-old"),
    ];
    requests(&env)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "machines": machines,
                "templateVersion": {"generation": 4, "digest": "1111bbbb",
                    "imageId": "ami-new", "since": time(base, -100)},
            }})),
        )
        .await
        .expect("write the status");

    let shim = Shim::new(&env, "driftGracePeriod: 20m\n");
    let held: Vec<Value> = ["spec", "img", "both", "cur", "unrec"]
        .iter()
        .map(|id| json!({"name": format!("host-{id}"), "machineId": format!("i-{id}")}))
        .collect();
    let before = Timestamp::now().as_second() - base.as_second();
    let answer = shim.ok("getReturnRequests", &json!({ "machines": held }));
    let after = Timestamp::now().as_second() - base.as_second();
    assert!(
        (before..=after).any(|elapsed| answer == expected(elapsed)),
        "{answer:#}\nis not the answer at any second in {before}..={after}, e.g.\n{:#}",
        expected(before)
    );

    // With driftGracePeriod off, only the noticed host is listed.
    let off = Shim::new(&env, "driftGracePeriod: off\n");
    let answer = off.ok("getReturnRequests", &json!({ "machines": held }));
    let ids: Vec<&str> = answer["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .filter_map(|h| h["machineId"].as_str())
        .collect();
    assert_eq!(ids, ["i-both"], "{answer:#}");
    assert!(
        answer["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("1 of 5 hosts are being taken back (1 spot")),
        "{answer}"
    );
}

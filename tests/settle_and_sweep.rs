//! Settling and sweeping against the real apiserver and moto, through the test
//! forwarder: a batch left Pending by a crash after EC2 answered is re-sent
//! with its recorded token first; machines that die at launch cool their
//! offering down so the request falls back; a machine taken for gone that the
//! cloud reports running again is revived if still needed, else terminated.
//! Every case ends with moto running exactly what status counts.

use std::time::Duration;

use hostforge::api::{MachineRequest, MachineState, TerminationReason};
use hostforge_testbed::forwarder::{Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::{
    assert_moto_matches_status, create_request, create_template, is_ready, moto_live, requests,
    status_live, uid, wait_request, wait_with_moto,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

/// A namespace of its own with the CRDs, a forwarder in front of moto, and
/// the operator config talking to EC2 through it (fast loops plus `extra`).
async fn bed(name: &str, extra: &str) -> (TestEnv, Forwarder, String) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "1s", extra);
    (env, fwd, cfg)
}

fn machine<'a>(mr: &'a MachineRequest, id: &str) -> Option<&'a hostforge::api::Machine> {
    mr.status
        .as_ref()
        .and_then(|st| st.machines.iter().find(|m| m.id == id))
}

async fn warning_notes(env: &TestEnv, name: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

/// (a) The operator dies right after EC2 answered RunInstances: the batch is
/// Pending in status and its machines exist. The restarted operator re-sends
/// the recorded token first (on EC2 that returns the same machines; moto
/// ignores tokens, so it launches a second set, which the first full sweep
/// finds and the plan scales down) and ends with exactly `count`.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_crash_after_launch_re_sends_the_recorded_token() {
    use hostforge::api::LaunchState;

    let (env, fwd, cfg) = bed("settle-crash", "").await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    let mr = create_request(&env, "crash", "compute", 3, true).await;
    let mut op = OperatorProcess::spawn_with_env(
        &env,
        &cfg,
        &[],
        &[("HOSTFORGE_FAILPOINTS", "request-after-launch")],
    );
    let exit = op.wait_exit(WAIT).await;
    assert!(exit.is_some_and(|s| !s.success()), "{}", op.log());
    let crashed = requests(&env).get("crash").await.expect("get");
    let launches = crashed.status.as_ref().expect("status").launches.clone();
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(launches[0].state, LaunchState::Pending);
    let token = launches[0].token.clone();
    let first = moto_live(&env, &uid(&mr)).await;
    assert_eq!(first.len(), 3, "launched before the crash");

    let _op = OperatorProcess::start(&env, &cfg).await;
    let done = wait_with_moto(
        &env,
        "crash",
        "Ready with moto = status = 3",
        WAIT,
        |m, live| is_ready(m) && status_live(m).len() == 3 && *live == status_live(m),
    )
    .await;
    assert_moto_matches_status(&env, &done).await;
    let tokens: Vec<String> = fwd
        .requests("RunInstances")
        .iter()
        .map(|r| r.get("ClientToken").cloned().unwrap_or_default())
        .collect();
    assert_eq!(
        tokens,
        vec![token.clone(), token.clone()],
        "the first send and one re-send with the recorded token, no new batch"
    );
    let st = done.status.as_ref().expect("status");
    assert_eq!(st.launches.len(), 1, "{:?}", st.launches);
    assert_eq!(st.launches[0].state, LaunchState::Launched);
}

/// (b) Both machines of a t3.micro batch die before they ever run (moto
/// terminates them while the operator cannot describe them): two deaths at
/// launch on one offering cool it down like a capacity error, so the
/// replacements go to t3.small; a Warning Event names the cloud's reason.
#[tokio::test]
async fn deaths_at_launch_cool_the_offering_down() {
    let (env, fwd, cfg) = bed("settle-deaths", "capacityCooldown: 10m\n").await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    create_template(
        &env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
        }),
    )
    .await;
    // No describe reaches moto: status keeps what the launch answer said
    // (pending) until the machines are gone.
    let blind = fwd.add_rule(Rule::new(
        "DescribeInstances",
        InjectedError::internal_error(),
    ));
    let mr = create_request(&env, "dies", "compute", 2, true).await;
    let launched = wait_request(&env, "dies", "2 machines launched", WAIT, |m| {
        status_live(m).len() == 2
    })
    .await;
    let doomed: Vec<String> = status_live(&launched).into_iter().collect();
    for id in &doomed {
        let m = machine(&launched, id).expect("listed");
        assert_eq!(m.instance_type.as_deref(), Some("t3.micro"));
        assert!(
            matches!(m.state, MachineState::Pending | MachineState::Unknown),
            "{m:?}"
        );
    }
    env.ec2()
        .terminate_instances()
        .set_instance_ids(Some(doomed.clone()))
        .send()
        .await
        .expect("terminate in moto");
    assert!(fwd.remove_rule(blind));

    let done = wait_with_moto(&env, "dies", "Ready on t3.small", WAIT, |m, live| {
        is_ready(m) && *live == status_live(m)
    })
    .await;
    assert_moto_matches_status(&env, &done).await;
    for id in status_live(&done) {
        let m = machine(&done, &id).expect("listed");
        assert_eq!(m.instance_type.as_deref(), Some("t3.small"), "{m:?}");
    }
    for id in &doomed {
        let m = machine(&done, id).expect("kept in status");
        assert_eq!(m.termination_reason, Some(TerminationReason::Lost));
        assert!(m.message.as_deref().is_some_and(|s| !s.is_empty()), "{m:?}");
    }
    let micro_sends = fwd
        .requests("RunInstances")
        .iter()
        .filter(|r| r.get("InstanceType").map(String::as_str) == Some("t3.micro"))
        .count();
    assert_eq!(
        micro_sends, 1,
        "no relaunch on the offering that killed two"
    );
    let notes = warning_notes(&env, "dies", "CapacityUnavailable").await;
    // moto gives its own stateReason for a terminate.
    assert!(
        notes
            .iter()
            .any(|n| n.contains("died at launch") && n.contains("Client.UserInitiatedShutdown")),
        "{notes:?}"
    );
    let _ = mr;
}

/// The whole DescribeInstances answer with nothing in it: every read, by tag
/// or by id, misses every machine (what a lagging index could do).
const NOTHING: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
<requestId>00000000-0000-0000-0000-000000000000</requestId>
<reservationSet/>
</DescribeInstancesResponse>"#;

/// (c) A machine no read reports for a while is taken for gone (Lost). When
/// the cloud reports it running again it is revived where nothing replaced
/// it (replaceLost false), and terminated where it was replaced.
#[tokio::test]
async fn a_machine_taken_for_gone_is_revived_or_terminated() {
    let (env, fwd, cfg) = bed(
        "settle-revive",
        "gcGracePeriod: 5s\nfullSweepInterval: 1s\n",
    )
    .await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;

    for (name, replace_lost) in [("kept", false), ("replaced", true)] {
        create_request(&env, name, "compute", 1, replace_lost).await;
        let ready = wait_request(&env, name, "Ready", WAIT, is_ready).await;
        let original = status_live(&ready).into_iter().next().expect("one machine");

        fwd.reply_with("DescribeInstances", NOTHING);
        let gone = wait_request(&env, name, "the machine taken for gone", WAIT, |m| {
            let lost = machine(m, &original).is_some_and(|x| {
                x.state == MachineState::Terminated
                    && x.termination_reason == Some(TerminationReason::Lost)
            });
            lost && (!replace_lost || !status_live(m).is_empty())
        })
        .await;
        assert!(
            moto_live(&env, &uid(&gone)).await.contains(&original),
            "it still runs in moto"
        );
        fwd.clear_reply("DescribeInstances");

        let done = wait_with_moto(
            &env,
            name,
            "back to one machine, moto = status",
            WAIT,
            |m, live| is_ready(m) && status_live(m).len() == 1 && *live == status_live(m),
        )
        .await;
        assert_moto_matches_status(&env, &done).await;
        let back = machine(&done, &original).expect("still listed");
        if replace_lost {
            assert!(
                !status_live(&done).contains(&original),
                "replaced: terminated as surplus"
            );
            assert_eq!(back.termination_reason, Some(TerminationReason::ScaledDown));
        } else {
            assert!(status_live(&done).contains(&original), "revived: {back:?}");
            assert_eq!(back.state, MachineState::Running);
        }
    }
}

/// Whether `p` is a full sweep's listing: the cluster tag alone, no state
/// filter (the sweeps in between list only machines going down).
fn is_full_listing(p: &std::collections::BTreeMap<String, String>) -> bool {
    p.get("Filter.1.Name").map(String::as_str) == Some("tag:hostforge.io/cluster")
        && !p.contains_key("Filter.2.Name")
}

/// A full sweep takes its view of the requests before it lists EC2. A
/// request created while the listing is out can launch before the listing
/// is answered, and its machines are then listed, old enough for a short
/// grace period (EC2 rounds launch times down to the second), by a request
/// the sweep's view does not hold. They are judged again against the
/// request cache as it is at the verdict (`sweep::still_orphaned`), so they
/// are never terminated as orphans.
///
/// The window is made deterministic with a gate: the operator's first full
/// listing waits in the forwarder until the request is Ready and its
/// machines are older than the grace period.
#[tokio::test]
async fn a_request_created_while_the_full_listing_is_out_keeps_its_machines() {
    use hostforge_testbed::forwarder::{FaultRule, Gate};
    let (env, fwd, cfg) = bed("sweep-window", "fullSweepInterval: 2s\ngcGracePeriod: 1s\n").await;
    create_template(
        &env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
        }),
    )
    .await;
    let gate = Gate::new();
    fwd.add_fault(
        FaultRule::gate("DescribeInstances", &gate)
            .param("Filter.1.Name", "tag:hostforge.io/cluster")
            .without("Filter.2.Name")
            .times(1),
    );
    let _op = OperatorProcess::start(&env, &cfg).await;
    let full_listings = || {
        fwd.requests("DescribeInstances")
            .iter()
            .filter(|p| is_full_listing(p))
            .count()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while full_listings() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no full listing reached the forwarder"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The sweep's view is taken; its listing waits at the gate.
    create_request(&env, "late", "compute", 2, true).await;
    let mr = wait_request(&env, "late", "Ready", WAIT, is_ready).await;
    // Older than the grace period by EC2's own (rounded-down) launch times.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(full_listings(), 1, "the first listing is still held");
    gate.open();

    // A second full listing starts only after the first sweep ended.
    let deadline = tokio::time::Instant::now() + WAIT;
    while full_listings() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sweep never listed again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        fwd.calls("TerminateInstances"),
        0,
        "the late request's machines were taken for orphans"
    );
    let now = requests(&env).get("late").await.expect("request");
    assert!(is_ready(&now), "{:?}", now.status);
    assert_eq!(moto_live(&env, &uid(&mr)).await, status_live(&now));
    assert_eq!(status_live(&now).len(), 2);
}

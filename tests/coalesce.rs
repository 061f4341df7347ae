//! Coalesced launches (src/controller/request/coalesce.rs) through the real
//! apiserver and moto, with the fidelity model on (EC2's ClientToken
//! registry: a token sent again returns what it launched).
//!
//! Each test holds the first RunInstances of a template for a few seconds
//! (`forward_then_hold`), creates two more requests of the template while it
//! is out, and checks that those two go out in one RunInstances carrying
//! both (MaxCount 5, the group's token and tag, no request's tag), and that
//! in the end every request lists exactly its count, moto runs exactly the
//! union and no token was launched twice: on a clean run, after a crash at
//! each step of the group protocol, and with the group call's answer lost.
//! Needs `--features failpoints` (Cargo.toml `required-features`).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostforge::api::{LaunchGroup, MachineLifecycle, MachineRequest};
use hostforge_testbed::forwarder::{FaultRule, Fidelity, Forwarder, Visibility};
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, moto_live_in_cluster, patch_spec, status_live,
    wait_request,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use kube::api::ListParams;
use kube::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// Long enough for two requests to be recorded and queue on a loaded
/// machine, shorter than the SDK's 10 s attempt timeout.
const HOLD: Duration = Duration::from_secs(7);

/// The requests of each test and their counts: the first goes alone, the
/// other two queue behind it and share a call.
const REQUESTS: [(&str, i32); 3] = [("first", 1), ("second", 2), ("third", 3)];

async fn bed(name: &str) -> (TestEnv, Forwarder, String) {
    bed_for(name, "RunInstances").await
}

async fn bed_for(name: &str, provider_api: &str) -> (TestEnv, Forwarder, String) {
    bed_with(name, json!({"providerApi": provider_api})).await
}

/// A bed whose template has `fields` besides image, type and subnet.
async fn bed_with(name: &str, fields: serde_json::Value) -> (TestEnv, Forwarder, String) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::seeded(18));
    let cfg = config_via(
        &env,
        &fwd,
        "2s",
        // The grace outlasts the 2 s by-id lag one test models: it is the
        // operator's allowance for EC2's eventual consistency.
        "fullSweepInterval: 2s\ngcGracePeriod: 3s\n",
    );
    let (subnet, _) = env.default_subnet_and_group().await;
    let mut spec = json!({
        "image": {"ssmParameter": AL2023_PARAM},
        "instanceTypes": [{"type": "t3.micro"}],
        "subnetIds": [subnet],
    });
    if let (Some(spec), Some(fields)) = (spec.as_object_mut(), fields.as_object()) {
        spec.extend(fields.clone());
    }
    create_template(&env, "compute", spec).await;
    (env, fwd, cfg)
}

/// Creates the first request with its RunInstances held, then the other two
/// once that call is out, so they queue behind it.
async fn queue_two_behind_one(env: &TestEnv, fwd: &Forwarder) {
    queue_two_behind_one_of(env, fwd, "RunInstances").await
}

async fn queue_two_behind_one_of(env: &TestEnv, fwd: &Forwarder, action: &str) {
    hold_the_first(env, fwd, action).await;
    for (name, count) in &REQUESTS[1..] {
        create_request(env, name, "compute", *count, true).await;
    }
}

/// Creates the first request and waits until its `action` is out (and held).
async fn hold_the_first(env: &TestEnv, fwd: &Forwarder, action: &str) {
    fwd.add_fault(FaultRule::forward_then_hold(action, HOLD).times(1));
    let (first, count) = REQUESTS[0];
    create_request(env, first, "compute", count, true).await;
    let deadline = Instant::now() + WAIT;
    while fwd.calls(action) == 0 {
        assert!(Instant::now() < deadline, "the first launch never went out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The forwarded RunInstances that carried the group: MaxCount 5, the
/// group's token, its tag and no request's tag.
fn assert_one_group_call(fwd: &Forwarder) {
    let call = one_group_call(fwd, "RunInstances");
    assert_eq!(
        call.get("MaxCount").map(String::as_str),
        Some("5"),
        "{call:#?}"
    );
    let tag_keys: Vec<&String> = call
        .iter()
        .filter(|(k, _)| k.starts_with("TagSpecification.1.Tag.") && k.ends_with(".Key"))
        .map(|(_, v)| v)
        .collect();
    assert!(
        tag_keys.iter().any(|k| *k == "hostforge.io/launch-group"),
        "{call:#?}"
    );
    assert!(
        !tag_keys
            .iter()
            .any(|k| *k == "hostforge.io/request-uid" || *k == "hostforge.io/batch"),
        "a group's instances carry no request's tags: {call:#?}"
    );
}

/// The one group call of `action` (its token is the group's).
fn one_group_call(fwd: &Forwarder, action: &str) -> std::collections::BTreeMap<String, String> {
    let calls = fwd.requests(action);
    let grouped: Vec<_> = calls
        .iter()
        .filter(|p| {
            p.get("ClientToken")
                .is_some_and(|t| t.starts_with("hostforge-lg-"))
        })
        .collect();
    let tokens: BTreeSet<&String> = grouped
        .iter()
        .filter_map(|p| p.get("ClientToken"))
        .collect();
    assert_eq!(tokens.len(), 1, "one group token: {calls:#?}");
    grouped[0].clone()
}

/// Every request Ready with exactly its count, no machine in two requests,
/// moto running exactly their union, and no token launched twice.
async fn assert_exact_shares(env: &TestEnv, fwd: &Forwarder) {
    assert_exact_shares_of(env, fwd, &REQUESTS).await
}

/// [`assert_exact_shares`] for the requests `of` (name, count).
async fn assert_exact_shares_of(env: &TestEnv, fwd: &Forwarder, of: &[(&str, i32)]) {
    let mut union = BTreeSet::new();
    for &(name, count) in of {
        let mr = wait_request(env, name, "Ready", WAIT, is_ready).await;
        let live = status_live(&mr);
        assert_eq!(live.len(), count as usize, "{name}: {:?}", mr.status);
        for id in live {
            assert!(union.insert(id.clone()), "{id} is listed by two requests");
        }
    }
    let deadline = Instant::now() + WAIT;
    loop {
        let in_moto: BTreeSet<String> = moto_live_in_cluster(&env.ec2(), &env.namespace)
            .await
            .into_iter()
            .collect();
        if in_moto == union {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "moto runs {in_moto:?}, the requests list {union:?}; forwarder: {:?}",
            fwd.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let counters = fwd.fidelity_counters();
    assert!(
        counters.launches_by_token.values().all(|n| *n <= 1),
        "one launch per token: {counters:?}"
    );
    // A second set would have had to be terminated to get here.
    assert_eq!(
        fwd.calls("TerminateInstances"),
        0,
        "nothing launched twice: {:?}",
        fwd.snapshot()
    );
}

/// The sweep deletes the group once every member has settled.
async fn wait_groups_deleted(env: &TestEnv) {
    let api: Api<LaunchGroup> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + WAIT;
    loop {
        let left = api.list(&ListParams::default()).await.expect("list groups");
        if left.items.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "launch groups never deleted: {:?}",
            left.items
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn requests_waiting_together_share_one_call() {
    let (env, fwd, cfg) = bed("coalesce").await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    queue_two_behind_one(&env, &fwd).await;
    assert_exact_shares(&env, &fwd).await;
    assert_one_group_call(&fwd);
    assert_eq!(
        fwd.forwarded("RunInstances"),
        2,
        "the first alone, the other two in one call: {:?}",
        fwd.snapshot()
    );
    for (name, _) in &REQUESTS[1..] {
        let mr = wait_request(&env, name, "Ready", WAIT, is_ready).await;
        let launches = &mr.status.expect("status").launches;
        assert!(
            launches.len() == 1 && launches[0].group.is_some(),
            "{name} names its group: {launches:?}"
        );
    }
    wait_groups_deleted(&env).await;
    // The sweep knows whose the group's machines are: nothing is taken for
    // an orphan once the group is gone.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_exact_shares(&env, &fwd).await;
}

/// `maxConcurrentReconciles` bounds the reconciles that run at once. With
/// two, the first request's held launch takes one; the second request takes
/// the other and queues behind that call; the third cannot even start until
/// the first is done, by when the second's call has left. So nothing is
/// shared (three calls of 1, 2 and 3 machines, no group token), and every
/// request still ends with exactly its count. Unbounded, the same steps make
/// two calls (the test above).
#[tokio::test]
async fn a_bound_of_two_reconciles_lets_only_one_request_queue_behind_a_call() {
    let (env, fwd, cfg) = bed("coalesce-bound").await;
    let cfg = format!("{cfg}maxConcurrentReconciles: 2\n");
    let _op = OperatorProcess::start(&env, &cfg).await;
    hold_the_first(&env, &fwd, "RunInstances").await;
    // The second request takes the free reconcile before the third exists:
    // created together, either could have had it (the controller's queue
    // keeps no creation order), and the order asserted below is the point.
    let (second, count) = REQUESTS[1];
    create_request(&env, second, "compute", count, true).await;
    wait_request(&env, second, "its batch recorded", WAIT, |mr| {
        mr.status.as_ref().is_some_and(|s| !s.launches.is_empty())
    })
    .await;
    let (third, count) = REQUESTS[2];
    create_request(&env, third, "compute", count, true).await;
    assert_exact_shares(&env, &fwd).await;
    let counts: Vec<Option<String>> = fwd
        .requests("RunInstances")
        .iter()
        .map(|p| p.get("MaxCount").cloned())
        .collect();
    let expected: Vec<Option<String>> = REQUESTS
        .iter()
        .map(|(_, count)| Some(count.to_string()))
        .collect();
    assert_eq!(
        counts,
        expected,
        "one call per request, in order: {:?}",
        fwd.snapshot()
    );
    assert!(
        fwd.requests("RunInstances").iter().all(|p| p
            .get("ClientToken")
            .is_some_and(|t| !t.starts_with("hostforge-lg-"))),
        "no group call: {:?}",
        fwd.snapshot()
    );
}

/// The bound binding (2 reconciles for 8 requests created together) under
/// EC2's lost answers, partial launches and read lag at high rates
/// ([`Fidelity::lossy`]): requests wait their turn, queue behind calls and
/// settle lost answers by token while others are held back, and still every
/// request ends with exactly its count, none in two requests, moto running
/// exactly their union, no token launched twice and nothing terminated.
#[tokio::test]
async fn a_binding_bound_keeps_exact_shares_under_lost_answers_and_partial_launches() {
    let env = TestEnv::new("coalesce-lossy").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::lossy(18));
    // The grace outlasts the profile's 5 s tag-listing lag.
    let cfg = config_via(
        &env,
        &fwd,
        "2s",
        "fullSweepInterval: 2s\ngcGracePeriod: 10s\nmaxConcurrentReconciles: 2\n",
    );
    let (subnet, _) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM},
               "instanceTypes": [{"type": "t3.micro"}], "subnetIds": [subnet]}),
    )
    .await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    let names: Vec<String> = (1..=8).map(|i| format!("r{i}")).collect();
    let requests: Vec<(&str, i32)> = names
        .iter()
        .zip([1, 2, 3, 4, 1, 2, 3, 4])
        .map(|(n, c)| (n.as_str(), c))
        .collect();
    for &(name, count) in &requests {
        create_request(&env, name, "compute", count, true).await;
    }
    assert_exact_shares_of(&env, &fwd, &requests).await;
    let counters = fwd.fidelity_counters();
    assert!(
        counters.launch_faults() > 0,
        "the profile lost or cut some launches: {counters:?}"
    );
}

async fn a_crash_at(name: &str, point: &str) {
    let (env, fwd, cfg) = bed(name).await;
    let crashing = {
        let env = &env;
        let cfg = cfg.clone();
        async move { OperatorProcess::crash_at(env, &cfg, point, WAIT).await }
    };
    let queuing = queue_two_behind_one(&env, &fwd);
    tokio::join!(crashing, queuing);
    let _op = OperatorProcess::start(&env, &cfg).await;
    assert_exact_shares(&env, &fwd).await;
    assert_one_group_call(&fwd);
    wait_groups_deleted(&env).await;
}

#[tokio::test]
async fn a_crash_after_the_group_is_recorded_launches_it_once() {
    a_crash_at("coalesce-rec", "group-after-record").await;
}

#[tokio::test]
async fn a_crash_after_the_group_call_shares_its_machines_once() {
    a_crash_at("coalesce-call", "group-after-launch").await;
}

#[tokio::test]
async fn a_crash_after_one_member_wrote_its_share_shares_the_rest_once() {
    a_crash_at("coalesce-member", "group-after-member-written").await;
}

#[tokio::test]
async fn a_lost_group_answer_under_tag_lag_is_settled_by_its_token() {
    let (env, fwd, cfg) = bed("coalesce-lost").await;
    // EC2's reads lag: a new instance is invisible by id for 2 s and to tag
    // listings (the sweep's) for 8 s; the token's answer is what settles.
    fwd.set_visibility(Visibility {
        by_id: Duration::from_secs(2),
        by_tag: Duration::from_secs(8),
        stale_after_terminate: Duration::ZERO,
    });
    let _op = OperatorProcess::start(&env, &cfg).await;
    // The group's call (the second RunInstances): moto launches, the
    // answer is lost on every SDK attempt.
    fwd.add_fault(
        FaultRule::forward_then_drop("RunInstances")
            .param("MaxCount", "5")
            .times(3),
    );
    queue_two_behind_one(&env, &fwd).await;
    assert_exact_shares(&env, &fwd).await;
    assert_one_group_call(&fwd);
    wait_groups_deleted(&env).await;
}

#[tokio::test]
async fn fleet_requests_waiting_together_share_one_call() {
    let (env, fwd, cfg) = bed_for("coalesce-fleet", "EC2Fleet").await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    queue_two_behind_one_of(&env, &fwd, "CreateFleet").await;
    assert_exact_shares(&env, &fwd).await;
    let call = one_group_call(&fwd, "CreateFleet");
    assert_eq!(
        call.get("TargetCapacitySpecification.TotalTargetCapacity")
            .map(String::as_str),
        Some("5"),
        "{call:#?}"
    );
    assert_eq!(
        fwd.forwarded("CreateFleet"),
        2,
        "the first alone, the other two in one call: {:?}",
        fwd.snapshot()
    );
    wait_groups_deleted(&env).await;
}

/// A fleet mixing on-demand and spot coalesces too, and each member gets
/// the on-demand share it would have got alone: at 40 %, 2 machines are 1
/// on-demand and 3 are 2 (rounded up each), so the group asks for 3 of 5
/// on-demand where 40 % of 5 would be 2.
#[tokio::test]
async fn a_mixed_fleet_shares_a_call_and_each_member_keeps_its_on_demand_share() {
    let (env, fwd, cfg) = bed_with(
        "coalesce-mixed",
        json!({
            "providerApi": "EC2Fleet",
            "capacityType": "mixed",
            "onDemandPercent": 40,
            "allocationStrategy": "price-capacity-optimized",
        }),
    )
    .await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    queue_two_behind_one_of(&env, &fwd, "CreateFleet").await;
    assert_exact_shares(&env, &fwd).await;
    assert_eq!(
        fwd.forwarded("CreateFleet"),
        2,
        "the first alone, the other two in one call: {:?}",
        fwd.snapshot()
    );
    let call = one_group_call(&fwd, "CreateFleet");
    assert_eq!(
        call.get("TargetCapacitySpecification.OnDemandTargetCapacity")
            .map(String::as_str),
        Some("3"),
        "{call:#?}"
    );
    let api: Api<MachineRequest> = Api::namespaced(env.client.clone(), &env.namespace);
    for (name, on_demand) in [("first", 1), ("second", 1), ("third", 2)] {
        let mr = api.get(name).await.expect("request");
        let machines = &mr.status.as_ref().expect("status").machines;
        let held = machines
            .iter()
            .filter(|m| m.capacity_type == Some(MachineLifecycle::OnDemand))
            .count();
        assert_eq!(held, on_demand, "{name}: {machines:#?}");
    }
    wait_groups_deleted(&env).await;
}

#[tokio::test]
async fn deleting_a_member_whose_group_answer_was_lost_terminates_its_share() {
    let (env, fwd, _) = bed("coalesce-del").await;
    // No full sweep after the first (no orphan collection to lean on), and a
    // grace long enough that the deletion waits for its Pending batch.
    let cfg = config_via(
        &env,
        &fwd,
        "2s",
        "fullSweepInterval: 1h\ngcGracePeriod: 60s\n",
    );
    let _op = OperatorProcess::start(&env, &cfg).await;
    // Every answer to the group's token is lost until the deletion is under way.
    let lost = fwd.add_fault(FaultRule::forward_then_drop("RunInstances").param("MaxCount", "5"));
    queue_two_behind_one(&env, &fwd).await;
    let deadline = Instant::now() + WAIT;
    while !fwd
        .requests("RunInstances")
        .iter()
        .any(|p| p.get("MaxCount").map(String::as_str) == Some("5"))
    {
        assert!(Instant::now() < deadline, "the group call never went out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let api = hostforge_testbed::machines::requests(&env);
    api.delete("second", &Default::default())
        .await
        .expect("delete second");
    // Its share is Pending and its machines carry no request tag: only the
    // group's token finds them.
    fwd.remove_fault(lost);
    while api.get_opt("second").await.expect("get second").is_some() {
        assert!(Instant::now() < deadline, "second was never deleted");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut kept = BTreeSet::new();
    for (name, count) in [REQUESTS[0], REQUESTS[2]] {
        let mr = wait_request(&env, name, "Ready", WAIT, is_ready).await;
        let live = status_live(&mr);
        assert_eq!(live.len(), count as usize, "{name}");
        kept.extend(live);
    }
    let in_moto: BTreeSet<String> = moto_live_in_cluster(&env.ec2(), &env.namespace)
        .await
        .into_iter()
        .collect();
    assert_eq!(
        in_moto,
        kept,
        "second's share was terminated with it; forwarder: {:?}",
        fwd.snapshot()
    );
}

/// Terminations coalesce too (src/controller/cloud/terminations.rs): the
/// TerminateInstances of requests scaled down while another's is out go in
/// one call.
#[tokio::test]
async fn terminations_waiting_together_share_one_call() {
    let (env, fwd, cfg) = bed("coalesce-term").await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    for (name, count) in REQUESTS {
        create_request(&env, name, "compute", count, true).await;
    }
    for (name, _) in REQUESTS {
        wait_request(&env, name, "Ready", WAIT, is_ready).await;
    }
    fwd.add_fault(FaultRule::forward_then_hold("TerminateInstances", HOLD).times(1));
    patch_spec(&env, REQUESTS[0].0, json!({"count": 0})).await;
    let deadline = Instant::now() + WAIT;
    while fwd.calls("TerminateInstances") == 0 {
        assert!(
            Instant::now() < deadline,
            "the first termination never went out"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (name, _) in &REQUESTS[1..] {
        patch_spec(&env, name, json!({"count": 0})).await;
    }
    loop {
        let live = moto_live_in_cluster(&env.ec2(), &env.namespace).await;
        if live.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still running: {live:?}; forwarder: {:?}",
            fwd.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let calls = fwd.requests("TerminateInstances");
    let ids_per_call: Vec<usize> = calls
        .iter()
        .map(|p| p.keys().filter(|k| k.starts_with("InstanceId.")).count())
        .collect();
    assert_eq!(
        ids_per_call,
        [1, 5],
        "the first request alone, the other two in one call: {calls:#?}"
    );
}

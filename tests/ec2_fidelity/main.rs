//! The operator against EC2 behaviour moto lacks, through the test bed's
//! fidelity model (testbed/src/forwarder/fidelity/): a launch whose answer
//! is lost after EC2 acted (RunInstances and CreateFleet), an answer slower
//! than the SDK's attempt timeout, and TerminateInstances answering
//! NotFound for an instance launched a moment ago, and a token EC2 says was
//! used with other parameters (with and without tag lag). Each ends with moto's
//! live instances equal to status and to the count, and one launch per
//! ClientToken.

use std::time::Duration;

use hostforge::api::MachineState;
use hostforge_testbed::forwarder::{
    FaultRule, Fidelity, Forwarder, InjectedError, Rule, Visibility,
};
use hostforge_testbed::machines::{
    assert_moto_matches_status, create_request, create_template, is_ready, moto_instances,
    patch_spec, requests, status_live, uid, wait_request,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

/// Generous: a lost answer costs the SDK's three attempts and a backoff.
const WAIT: Duration = Duration::from_secs(180);

/// The operator's attempt timeout (src/provider/aws/clients.rs
/// `ATTEMPT_TIMEOUT`, 10 s) plus a margin a slow machine only widens.
const PAST_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// A namespace, a forwarder with the fidelity model on, an operator talking
/// to EC2 through it, and a template (`providerApi` as given) in the
/// default subnet, so RunInstances carries a subnet and its token one zone.
async fn bed(name: &str, provider_api: &str) -> (TestEnv, Forwarder, OperatorProcess) {
    bed_in(name, provider_api, true).await
}

/// [`bed`], with the template in the default subnet or (`in_subnet`
/// false) without `subnetIds`, so EC2 picks a zone per RunInstances.
async fn bed_in(
    name: &str,
    provider_api: &str,
    in_subnet: bool,
) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::seeded(16));
    let cfg = config_via(&env, &fwd, "2s", "");
    let op = OperatorProcess::start(&env, &cfg).await;
    let mut spec = json!({
        "providerApi": provider_api,
        "image": {"ssmParameter": AL2023_PARAM},
        "instanceTypes": [{"type": "t3.micro"}],
    });
    if in_subnet {
        let (subnet, _) = env.default_subnet_and_group().await;
        spec["subnetIds"] = json!([subnet]);
    }
    create_template(&env, "compute", spec).await;
    (env, fwd, op)
}

/// Every instance moto ever held for the request (any state), so a second
/// launched set shows even after it was scaled down.
async fn every_instance(env: &TestEnv, mr_uid: &str) -> usize {
    moto_instances(env, mr_uid).await.len()
}

/// The request is Ready with `count` machines, moto runs exactly those,
/// moto never held more, and no token was forwarded to moto twice.
async fn assert_exactly_one_set(env: &TestEnv, fwd: &Forwarder, name: &str, count: usize) {
    let mr = wait_request(env, name, "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(env, &mr).await;
    assert_eq!(status_live(&mr).len(), count, "{:?}", mr.status);
    assert_eq!(
        every_instance(env, &uid(&mr)).await,
        count,
        "moto never held a second set; forwarder: {:?}",
        fwd.snapshot()
    );
    let counters = fwd.fidelity_counters();
    assert!(
        counters.launches_by_token.values().all(|n| *n <= 1),
        "one forwarded launch per token: {counters:?}"
    );
}

#[tokio::test]
async fn a_lost_run_instances_answer_launches_one_set() {
    let (env, fwd, _op) = bed("fid-lost-run", "RunInstances").await;
    // Every SDK attempt of the first call: moto launches, the client sees 500s.
    fwd.add_fault(
        FaultRule::forward_then_error("RunInstances", InjectedError::internal_error()).times(3),
    );
    create_request(&env, "lost", "compute", 3, true).await;
    assert_exactly_one_set(&env, &fwd, "lost", 3).await;
    assert_eq!(fwd.forwarded("RunInstances"), 1, "{:?}", fwd.snapshot());
    assert_eq!(
        fwd.fidelity_counters().misbehaved.get("RunInstances"),
        Some(&3)
    );
}

#[tokio::test]
async fn a_lost_answer_without_subnets_launches_one_set() {
    // EC2's RunInstances token is zonal: without a subnet each SDK retry
    // may land in another zone and launch another set (the model draws a
    // zone per call; seed 16 draws more than one over three attempts).
    let (env, fwd, _op) = bed_in("fid-lost-zonal", "RunInstances", false).await;
    fwd.add_fault(
        FaultRule::forward_then_error("RunInstances", InjectedError::internal_error()).times(3),
    );
    create_request(&env, "lost", "compute", 3, true).await;
    assert_exactly_one_set(&env, &fwd, "lost", 3).await;
}

#[tokio::test]
async fn a_lost_create_fleet_answer_launches_one_set() {
    let (env, fwd, _op) = bed("fid-lost-fleet", "EC2Fleet").await;
    fwd.add_fault(
        FaultRule::forward_then_error("CreateFleet", InjectedError::internal_error()).times(3),
    );
    create_request(&env, "lost", "compute", 3, true).await;
    assert_exactly_one_set(&env, &fwd, "lost", 3).await;
    assert_eq!(fwd.forwarded("CreateFleet"), 1, "{:?}", fwd.snapshot());
    assert_eq!(
        fwd.fidelity_counters().misbehaved.get("CreateFleet"),
        Some(&3)
    );
}

#[tokio::test]
async fn an_answer_slower_than_the_attempt_timeout_launches_one_set() {
    let (env, fwd, _op) = bed("fid-slow", "RunInstances").await;
    fwd.add_fault(FaultRule::forward_then_hold("RunInstances", PAST_ATTEMPT_TIMEOUT).times(1));
    create_request(&env, "slow", "compute", 2, true).await;
    assert_exactly_one_set(&env, &fwd, "slow", 2).await;
    assert_eq!(fwd.forwarded("RunInstances"), 1, "{:?}", fwd.snapshot());
    assert!(
        fwd.calls("RunInstances") >= 2,
        "the SDK gave up on the held attempt and re-sent: {:?}",
        fwd.snapshot()
    );
}

#[tokio::test]
async fn terminate_not_found_on_a_fresh_id_is_retried_and_not_reported_early() {
    let (env, fwd, _op) = bed("fid-fresh-term", "RunInstances").await;
    // Reads by id and TerminateInstances do not know an instance for 20 s
    // after its launch answer; listings by tag see it at once.
    fwd.set_visibility(Visibility {
        by_id: Duration::from_secs(20),
        ..Visibility::default()
    });
    create_request(&env, "fresh", "compute", 2, true).await;
    // Scale down as soon as the launch is on record.
    let mr = wait_request(&env, "fresh", "launched", WAIT, |m| {
        status_live(m).len() == 2
    })
    .await;
    patch_spec(&env, "fresh", json!({"count": 0})).await;
    let api = requests(&env);
    let start = std::time::Instant::now();
    loop {
        let now = api.get("fresh").await.expect("get request");
        let machines = now
            .status
            .as_ref()
            .map(|s| s.machines.clone())
            .unwrap_or_default();
        // Read after status: a terminate moto accepted was counted first.
        let accepted = fwd.forwarded("TerminateInstances");
        let reported = machines
            .iter()
            .filter(|m| {
                matches!(
                    m.state,
                    MachineState::ShuttingDown | MachineState::Terminated
                )
            })
            .count();
        assert!(
            reported == 0 || accepted > 0,
            "shutting-down reported before EC2 accepted a terminate: {machines:?}"
        );
        let live = moto_instances(&env, &uid(&mr))
            .await
            .values()
            .filter(|(state, _)| state == "pending" || state == "running")
            .count();
        if live == 0 && status_live(&now).is_empty() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "not terminated within {WAIT:?}: {machines:?}, {:?}",
            fwd.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let counters = fwd.fidelity_counters();
    assert!(
        counters.terminate_not_found >= 1,
        "the first terminate met the window: {counters:?}"
    );
}

/// EC2 answers `IdempotentParameterMismatch` to every send of a token after
/// the first, which launched but whose answer was lost (the connection
/// dropped): the operator cannot re-send its way to the machines, so it
/// settles the batch by its tag. `tag_lag` hides the new instances from tag
/// reads for a while first, so the lookup must hold them, not launch again.
async fn token_used_before(name: &str, tag_lag: Duration) {
    let (env, fwd, _op) = bed(name, "RunInstances").await;
    fwd.set_visibility(Visibility {
        by_tag: tag_lag,
        ..Visibility::default()
    });
    fwd.add_rule(
        Rule::new(
            "RunInstances",
            InjectedError::new(
                400,
                "IdempotentParameterMismatch",
                "The client token you have provided is associated with a resource that is already deleted or has different parameters.",
            ),
        )
        .after(1),
    );
    fwd.add_fault(FaultRule::forward_then_drop("RunInstances").times(1));
    create_request(&env, "used", "compute", 3, true).await;
    assert_exactly_one_set(&env, &fwd, "used", 3).await;
    assert_eq!(fwd.forwarded("RunInstances"), 1, "{:?}", fwd.snapshot());
    assert!(
        fwd.injected_code("RunInstances", "IdempotentParameterMismatch") >= 1,
        "{:?}",
        fwd.snapshot()
    );
    let mr = requests(&env).get("used").await.expect("get request");
    let launches = &mr.status.as_ref().expect("status").launches;
    assert_eq!(launches.len(), 1, "no second batch: {launches:?}");
    let message = launches[0].message.as_deref().unwrap_or_default();
    assert!(
        message.contains("settled by its tag")
            && message.contains("IdempotentParameterMismatch")
            && message.contains("all 3 machines found"),
        "{launches:?}"
    );
}

#[tokio::test]
async fn a_token_used_with_other_parameters_is_settled_by_its_tag() {
    token_used_before("fid-token-used", Duration::ZERO).await;
}

#[tokio::test]
async fn a_token_used_before_under_tag_lag_holds_and_never_launches_twice() {
    token_used_before("fid-token-used-lag", Duration::from_secs(8)).await;
}

//! The operator against answers of EC2 that moto never gives, through the
//! test bed's fidelity model (testbed/src/forwarder/fidelity/), with a real
//! apiserver, moto and the operator as a child process:
//!
//! 1. an instant EC2 Fleet that launches part of its target and names the
//!    rest in its `errorSet`
//!    (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html>,
//!    <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleetError.html>):
//!    the batch names the shortfall's cause, the type that ran dry is cooled
//!    down, and a follow-up batch on the other type makes up the shortfall,
//!    exactly `count` run;
//! 2. an instant fleet that answers 200 with no instance and an `errorSet`,
//!    which EC2 replays under the same ClientToken
//!    (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>):
//!    the batch is Failed (its token is not re-sent forever) and a new
//!    batch fills the request;
//! 3. instances that die at launch (pending → terminated with a
//!    `stateReason` such as `Client.InvalidKMSKey.InvalidState`,
//!    <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html>):
//!    the offering cools down and the next type fills the request; when every
//!    type dies the request is Degraded naming the reason, with no launch
//!    loop;
//! 4. a tag listing (the full sweep) that misses an old instance, as EC2's
//!    eventually consistent reads may
//!    (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>):
//!    the machine is not taken for gone and not replaced.
//!
//! Each ends comparing moto's live instances with status and the count.

use std::time::{Duration, Instant};

use hostforge::api::conditions::DEGRADED;
use hostforge::api::{LaunchState, Machine, MachineRequest, MachineState};
use hostforge_testbed::forwarder::{
    FaultRule, Fidelity, FleetError, Forwarder, KillAtLaunch, Visibility,
};
use hostforge_testbed::machines::{
    assert_moto_matches_status, create_request, create_template, is_ready, moto_instances,
    patch_spec, requests, status_live, uid, wait_request, wait_with_moto,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

/// Generous: a refused batch waits a backoff, deaths wait for the poller.
const WAIT: Duration = Duration::from_secs(180);

/// How long fresh instances are hidden from reads in test 3.
const READ_LAG: Duration = Duration::from_secs(5);

/// The death reason of test 3 (EC2's wording for a KMS key it cannot use).
const KMS_CODE: &str = "Client.InvalidKMSKey.InvalidState";
const KMS_MESSAGE: &str =
    "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state";

/// A namespace, a forwarder with the fidelity model on (seeded), an
/// operator talking to EC2 through it with quick loops and `extra` config,
/// and a template "compute" in the default subnet with `provider_api` and
/// `types`.
async fn bed(
    name: &str,
    provider_api: &str,
    types: &[&str],
    extra: &str,
) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::seeded(16));
    let cfg = config_via(&env, &fwd, "2s", extra);
    let op = OperatorProcess::start(&env, &cfg).await;
    let (subnet, _) = env.default_subnet_and_group().await;
    let types: Vec<_> = types.iter().map(|t| json!({ "type": t })).collect();
    create_template(
        &env,
        "compute",
        json!({
            "providerApi": provider_api,
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": types,
            "subnetIds": [subnet],
        }),
    )
    .await;
    (env, fwd, op)
}

/// Ready with exactly `count` machines, moto running exactly those.
async fn wait_exactly(env: &TestEnv, name: &str, count: usize) -> MachineRequest {
    let mr = wait_with_moto(
        env,
        name,
        "Ready, status = moto = count",
        WAIT,
        |m, live| is_ready(m) && status_live(m).len() == count && *live == status_live(m),
    )
    .await;
    assert_moto_matches_status(env, &mr).await;
    mr
}

fn machine<'a>(mr: &'a MachineRequest, id: &str) -> Option<&'a Machine> {
    mr.status.as_ref()?.machines.iter().find(|m| m.id == id)
}

/// The message of condition `type_` when it is True.
fn true_message(mr: &MachineRequest, type_: &str) -> Option<String> {
    mr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "True")
        .map(|c| c.message.clone())
}

/// RunInstances calls (however answered) asking for `instance_type`.
fn run_instances_of(fwd: &Forwarder, instance_type: &str) -> usize {
    fwd.requests("RunInstances")
        .iter()
        .filter(|r| r.get("InstanceType").map(String::as_str) == Some(instance_type))
        .count()
}

/// No batch of the request is left Pending.
fn assert_no_pending(mr: &MachineRequest) {
    let launches = &mr.status.as_ref().expect("status").launches;
    assert!(
        launches.iter().all(|b| b.state != LaunchState::Pending),
        "a batch stayed Pending: {launches:?}"
    );
}

/// 1. A fleet over two types launches 1 of 3 and reports
///    `InsufficientInstanceCapacity` for the first type: the batch is
///    Launched with what came and says why it fell short, the type that ran
///    dry is cooled down so the follow-up batch for the other 2 asks only the
///    other type, and moto never held more than 3.
#[tokio::test]
async fn a_partial_fleet_is_made_up_by_a_follow_up_batch_elsewhere() {
    let (env, fwd, _op) = bed(
        "fidc-partial-fleet",
        "EC2Fleet",
        &["t3.micro", "t3.small"],
        "",
    )
    .await;
    fwd.add_fault(FaultRule::partial_fleet(1, FleetError::insufficient_capacity()).times(1));
    create_request(&env, "part", "compute", 3, true).await;
    let mr = wait_exactly(&env, "part", 3).await;
    assert_no_pending(&mr);
    assert_eq!(
        moto_instances(&env, &uid(&mr)).await.len(),
        3,
        "moto never held more than the count"
    );
    let launches = &mr.status.as_ref().expect("status").launches;
    assert!(launches.len() >= 2, "a follow-up batch: {launches:?}");
    assert_eq!(launches[0].state, LaunchState::Launched, "{launches:?}");
    assert_eq!(launches[0].count, 3, "{launches:?}");
    let why = launches[0].message.as_deref().unwrap_or_default();
    assert!(
        why.contains("launched 1 of 3")
            && why.contains("InsufficientInstanceCapacity")
            && why.contains("t3.micro"),
        "the batch says why it fell short: {why:?}"
    );
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.partial_launches, 1, "{counters:?}");
    let fleets = fwd.requests("CreateFleet");
    assert_eq!(
        fleets.len(),
        2,
        "the partial fleet and one follow-up: {:?}",
        fwd.snapshot()
    );
    let types_of = |r: &std::collections::BTreeMap<String, String>| -> Vec<String> {
        r.iter()
            .filter(|(k, _)| {
                k.starts_with("LaunchTemplateConfigs.") && k.ends_with(".InstanceType")
            })
            .map(|(_, v)| v.clone())
            .collect()
    };
    assert!(
        types_of(&fleets[0]).contains(&"t3.micro".to_string()),
        "{:?}",
        fleets[0]
    );
    assert_eq!(
        types_of(&fleets[1]),
        ["t3.small"],
        "the follow-up asks only the type that did not run dry"
    );
}

/// 2. A fleet answers 200 with no instance and `InternalError` in its
///    `errorSet`; EC2 would replay that answer for the same token, so the
///    batch must be Failed, not kept Pending and re-sent: its token is sent
///    at most the SDK's three attempts, and a new batch fills the request.
#[tokio::test]
async fn a_zero_instance_fleet_fails_its_batch_and_a_new_one_fills() {
    let (env, fwd, _op) = bed("fidc-zero-fleet", "EC2Fleet", &["t3.micro"], "").await;
    fwd.add_fault(
        FaultRule::zero_fleet(FleetError::new(
            "InternalError",
            "An internal error has occurred.",
        ))
        .times(1),
    );
    create_request(&env, "zero", "compute", 2, true).await;
    let mr = wait_exactly(&env, "zero", 2).await;
    assert_no_pending(&mr);
    let launches = &mr.status.as_ref().expect("status").launches;
    let first = &launches[0];
    assert_eq!(first.state, LaunchState::Failed, "{launches:?}");
    assert!(
        first
            .message
            .as_deref()
            .is_some_and(|m| m.contains("InternalError")),
        "{first:?}"
    );
    let first_token_sends = fwd
        .requests("CreateFleet")
        .iter()
        .filter(|r| r.get("ClientToken") == Some(&first.token))
        .count();
    assert!(
        (1..=3).contains(&first_token_sends),
        "the zero answer's token is not re-sent past the SDK's attempts: {first_token_sends}"
    );
    assert!(
        launches[1..]
            .iter()
            .any(|b| b.state == LaunchState::Launched && b.token != first.token),
        "a new batch with a new token filled the request: {launches:?}"
    );
    assert_eq!(fwd.fidelity_counters().zero_fleets, 1);
    assert_eq!(moto_instances(&env, &uid(&mr)).await.len(), 2);
}

/// 3. Deaths at launch: the t3.micro launch (the template's first type) dies
///    whole with a KMS `stateReason`, which cools t3.micro down, so t3.small
///    fills the request and t3.micro is not relaunched. Then every launch
///    dies: t3.small cools down too, the request is Degraded naming the
///    stateReason, and no launch is sent while every offering cools down
///    (a loop would send one per reconcile, dozens a minute).
#[tokio::test]
async fn deaths_at_launch_back_off_and_degrade_without_a_loop() {
    let (env, fwd, _op) = bed(
        "fidc-deaths",
        "RunInstances",
        &["t3.micro", "t3.small"],
        "capacityCooldown: 10m\n",
    )
    .await;
    // On EC2 an instance that dies at launch is never seen running; moto
    // reports every instance running on its first read. So deaths come at
    // once after the launch answer and reads lag a few seconds (EC2's
    // eventual consistency): the operator's first sight of a dying machine
    // is its terminated state with the stateReason, as on EC2.
    fwd.set_visibility(Visibility {
        by_id: READ_LAG,
        by_tag: READ_LAG,
        ..Visibility::default()
    });
    let kms = || KillAtLaunch::all(KMS_CODE, KMS_MESSAGE).after(Duration::ZERO);
    // The first launch answer is the t3.micro batch (the template's first
    // type); every instance in it dies. A t3.micro relaunch would live, and
    // show as t3.micro machines below.
    fwd.kill_at_launch(Some(kms().launches(1)));
    create_request(&env, "dies", "compute", 2, true).await;
    // Ready on the t3.micro pair first; after the deaths, Ready again on
    // machines that are all t3.small (without the cooldown the t3.micro
    // relaunch lives and this never holds).
    let mr = wait_with_moto(&env, "dies", "Ready on t3.small only", WAIT, |m, live| {
        let live_in_status = status_live(m);
        is_ready(m)
            && live_in_status.len() == 2
            && *live == live_in_status
            && live_in_status.iter().all(|id| {
                machine(m, id).and_then(|x| x.instance_type.as_deref()) == Some("t3.small")
            })
    })
    .await;
    assert_moto_matches_status(&env, &mr).await;
    assert_eq!(fwd.fidelity_counters().deaths, 2, "the t3.micro pair died");
    let micro = run_instances_of(&fwd, "t3.micro");
    assert!(
        (1..=3).contains(&micro),
        "t3.micro launched only until its deaths cooled it down: {micro}"
    );

    // Every launch dies now: two more machines are t3.small, which die.
    fwd.kill_at_launch(Some(kms()));
    patch_spec(&env, "dies", json!({"count": 4})).await;
    let degraded = wait_request(&env, "dies", "Degraded naming the stateReason", WAIT, |m| {
        true_message(m, DEGRADED).is_some_and(|msg| msg.contains(KMS_CODE))
    })
    .await;
    assert!(!is_ready(&degraded));
    // The window: a slow machine only sends fewer calls in it.
    let before = fwd.calls("RunInstances");
    let micro_before = run_instances_of(&fwd, "t3.micro");
    tokio::time::sleep(Duration::from_secs(20)).await;
    let during = fwd.calls("RunInstances") - before;
    assert!(
        during <= 1,
        "no launch loop while every offering cools down: {during} RunInstances in 20 s \
         (a loop per 500 ms poll would send ~40); {:?}",
        fwd.snapshot()
    );
    assert_eq!(
        run_instances_of(&fwd, "t3.micro"),
        micro_before,
        "t3.micro stays cooled down"
    );
    let small = run_instances_of(&fwd, "t3.small");
    assert!(
        small <= 4,
        "t3.small launched only until its deaths cooled it down: {small}"
    );
    let now = requests(&env).get("dies").await.expect("get request");
    assert_moto_matches_status(&env, &now).await;
    assert_eq!(status_live(&now).len(), 2, "the two that lived");
    assert!(true_message(&now, DEGRADED).is_some_and(|m| m.contains(KMS_CODE)));
}

/// 4. A full sweep whose tag listing misses an old, running machine (a
///    lagging tag index) for several sweeps: the vanish is not confirmed by
///    the read by id, so the machine is not taken for gone and no
///    replacement is launched; once listed again, status = moto = count.
#[tokio::test]
async fn a_full_sweep_missing_an_old_instance_replaces_nothing() {
    let (env, fwd, _op) = bed(
        "fidc-sweep-miss",
        "RunInstances",
        &["t3.micro"],
        "gcGracePeriod: 1s\nfullSweepInterval: 2s\n",
    )
    .await;
    create_request(&env, "old", "compute", 2, true).await;
    let ready = wait_exactly(&env, "old", 2).await;
    let hidden = status_live(&ready).into_iter().next().expect("one machine");
    // Old enough for every grace period before it goes missing.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let launches_before = fwd.calls("RunInstances");
    let hides_before = fwd.fidelity_counters().hidden_by_tag;
    fwd.hide_from_tag_listings([hidden.clone()]);

    // Several sweeps miss it (each listing that missed it counts once).
    let deadline = Instant::now() + WAIT;
    while fwd.fidelity_counters().hidden_by_tag < hides_before + 5 {
        assert!(
            Instant::now() < deadline,
            "no sweep listed while hidden: {:?}",
            fwd.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let during = requests(&env).get("old").await.expect("get request");
    let m = machine(&during, &hidden).expect("still listed");
    assert!(
        m.termination_reason.is_none() && m.state != MachineState::Terminated,
        "a machine missing from tag listings is not taken for gone: {m:?}"
    );
    assert_eq!(status_live(&during).len(), 2, "{:?}", during.status);
    assert_eq!(
        fwd.calls("RunInstances"),
        launches_before,
        "no replacement launched: {:?}",
        fwd.snapshot()
    );
    assert_moto_matches_status(&env, &during).await;

    fwd.show_in_tag_listings();
    let done = wait_exactly(&env, "old", 2).await;
    assert!(status_live(&done).contains(&hidden));
    assert_eq!(fwd.calls("RunInstances"), launches_before);
    assert_eq!(moto_instances(&env, &uid(&done)).await.len(), 2);
}

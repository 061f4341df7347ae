//! EC2's rule for launch answers, through the operator against the real
//! apiserver and moto, with the answers injected by the test forwarder:
//! a 4xx (other than throttling) means nothing was launched, so the batch is
//! Failed, the request Degraded naming the code, and new batches back off
//! instead of re-sending the refused token in a loop;
//! `IdempotentInstanceTerminated` settles the batch with nothing live; and a
//! batch without subnets is pinned to one zone for every send, since EC2's
//! ClientToken is zonal
//! (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>):
//! RunInstances as `Placement.AvailabilityZone`, an instant EC2 Fleet as each
//! override's `AvailabilityZone`
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_FleetLaunchTemplateOverridesRequest.html>).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use hostforge::api::request::LaunchFailure;
use hostforge::api::{LaunchState, MachineRequestStatus};
use hostforge_testbed::forwarder::{Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::{
    assert_moto_matches_status, condition, create_request, create_template, is_ready, requests,
    wait_request,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(180);

/// A namespace of its own, a forwarder in front of moto, and an operator that
/// talks to EC2 through it.
async fn bed(name: &str) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "2s", "");
    let op = OperatorProcess::start(&env, &cfg).await;
    (env, fwd, op)
}

/// A RunInstances template without subnets (EC2 uses a default subnet).
async fn default_subnet_template(env: &TestEnv) {
    create_template(
        env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
}

/// An unlisted 4xx answered forever: Degraded names the code from the first
/// refusal on, every batch is Failed as refused and each token is sent once,
/// and over a 30 s window the backoff (5 s, 10 s, 20 s, …) allows a handful
/// of RunInstances calls where a loop re-sending at once would make dozens.
/// Once EC2 accepts, a new batch fills the request exactly.
#[tokio::test]
async fn a_refused_launch_backs_off_then_a_new_batch_fills_the_request() {
    let (env, fwd, _op) = bed("answers-refused").await;
    default_subnet_template(&env).await;
    let refused = fwd.add_rule(Rule::new(
        "RunInstances",
        InjectedError::new(
            400,
            "VolumeLimitExceeded",
            "You have exceeded your maximum gp3 storage limit of 50 TiB in this region.",
        ),
    ));
    create_request(&env, "refused", "compute", 2, true).await;
    let mr = wait_request(&env, "refused", "Degraded naming the code", WAIT, |m| {
        condition(m, "Degraded").is_some_and(|(s, r)| s == "True" && r == "LaunchFailed")
    })
    .await;
    let st = mr.status.as_ref().expect("status");
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(degraded.contains("VolumeLimitExceeded"), "{degraded}");
    assert!(degraded.contains("maximum gp3 storage limit"), "{degraded}");

    // Watch for 30 s (a fixed window: a slow machine only makes fewer calls).
    tokio::time::sleep(Duration::from_secs(30)).await;
    let sent = fwd.requests("RunInstances");
    let calls = sent.len();
    assert!(
        (1..=6).contains(&calls),
        "the backoff allows at most ~4 batches in 30 s, a hot loop dozens: {calls}"
    );
    let tokens: BTreeSet<&str> = sent
        .iter()
        .filter_map(|p| p.get("ClientToken").map(String::as_str))
        .collect();
    assert_eq!(tokens.len(), calls, "a refused token is never sent again");
    let mr = requests(&env).get("refused").await.expect("request");
    let st = mr.status.as_ref().expect("status");
    assert!(
        st.launches.iter().all(|b| b.state == LaunchState::Failed
            && b.failure == Some(LaunchFailure::Refused)
            && b.message
                .as_deref()
                .is_some_and(|m| m.contains("VolumeLimitExceeded"))),
        "{:?}",
        st.launches
    );
    assert!(st.machines.is_empty());

    // EC2 accepts again: the next batch (after the backoff) fills the request.
    assert!(fwd.remove_rule(refused));
    let mr = wait_request(&env, "refused", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    assert_eq!(
        condition(&mr, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
    let st = mr.status.as_ref().expect("status");
    let launched: Vec<_> = st
        .launches
        .iter()
        .filter(|b| b.state == LaunchState::Launched)
        .collect();
    assert_eq!(launched.len(), 1, "{:?}", st.launches);
    assert!(
        !tokens.contains(launched[0].token.as_str()),
        "a new batch, not a re-send"
    );
}

/// EC2 answers the first send `IdempotentInstanceTerminated` (every instance
/// of that token terminated): the batch is settled with nothing live and a
/// new batch fills the request; it is neither stuck nor re-sent.
#[tokio::test]
async fn a_token_whose_instances_are_terminated_settles_its_batch() {
    let (env, fwd, _op) = bed("answers-terminated").await;
    default_subnet_template(&env).await;
    fwd.add_rule(
        Rule::new(
            "RunInstances",
            InjectedError::new(
                400,
                "IdempotentInstanceTerminated",
                "The client token you have provided is associated with a resource that is already deleted.",
            ),
        )
        .times(1),
    );
    create_request(&env, "terminated", "compute", 2, true).await;
    let mr = wait_request(&env, "terminated", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    let st = mr.status.as_ref().expect("status");
    assert_eq!(st.live_machines(), 2);
    let first = st.launches.first().expect("the first batch");
    assert_eq!(first.state, LaunchState::Launched, "{first:?}");
    assert!(
        first
            .message
            .as_deref()
            .is_some_and(|m| m.contains("terminated") && m.contains("IdempotentInstanceTerminated")),
        "{first:?}"
    );
    assert!(st
        .machines
        .iter()
        .all(|m| m.batch.as_deref() != Some(first.id.as_str())));
    let sent = fwd.requests("RunInstances");
    assert_eq!(sent.len(), 2, "the refused send and one new batch");
    assert_ne!(sent[0].get("ClientToken"), sent[1].get("ClientToken"));
}

/// A template without subnets: the batch records a zone before it is sent,
/// and every send of it (three SDK attempts throttled, then the settle
/// re-send, throttled once and retried) carries that zone as
/// `Placement.AvailabilityZone` with the same token and no subnet, so EC2
/// cannot place a re-send in another zone and launch a second set.
#[tokio::test]
async fn a_batch_without_subnets_is_pinned_to_one_zone_for_every_send() {
    let (env, fwd, _op) = bed("answers-zone").await;
    default_subnet_template(&env).await;
    let (st, zone, sent) = one_pinned_batch(&env, &fwd, "RunInstances", "compute").await;
    for p in &sent {
        assert_eq!(p.get("Placement.AvailabilityZone"), Some(&zone), "{p:?}");
        assert_eq!(p.get("SubnetId"), None, "{p:?}");
        assert_eq!(p.get("MaxCount").map(String::as_str), Some("2"), "{p:?}");
    }
    assert!(
        st.machines
            .iter()
            .all(|m| m.availability_zone.as_deref() == Some(zone.as_str())),
        "{:?}",
        st.machines
    );
}

/// An EC2 Fleet template without subnets: the batch records a zone before it
/// is sent, and every CreateFleet of it (three SDK attempts throttled, then the
/// settle re-send, throttled once and retried) carries that zone as the
/// override's `AvailabilityZone` with the same token and no subnet, so EC2
/// cannot place a re-send in another zone and launch a second set.
#[tokio::test]
async fn a_fleet_batch_without_subnets_is_pinned_to_one_zone_for_every_send() {
    let (env, fwd, _op) = bed("answers-fleet-zone").await;
    create_template(
        &env,
        "fleet",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "providerApi": "EC2Fleet",
        }),
    )
    .await;
    let (st, zone, sent) = one_pinned_batch(&env, &fwd, "CreateFleet", "fleet").await;
    for p in &sent {
        assert_eq!(
            p.get("LaunchTemplateConfigs.1.Overrides.1.AvailabilityZone"),
            Some(&zone),
            "{p:?}"
        );
        assert_eq!(
            p.get("LaunchTemplateConfigs.1.Overrides.1.SubnetId"),
            None,
            "{p:?}"
        );
        assert_eq!(
            p.get("LaunchTemplateConfigs.1.Overrides.2.InstanceType"),
            None,
            "one override per instance type: {p:?}"
        );
    }
    assert_eq!(st.machines.len(), 2, "{:?}", st.machines);
    assert!(
        st.machines
            .iter()
            .all(|m| m.availability_zone.as_deref() == Some(zone.as_str())),
        "{zone}: {:?}",
        st.machines
    );
}

/// Throttles `action` four times (the three SDK attempts of the first send
/// and one of the settle re-send), fills request `zoned` (2 machines) from
/// `template`, and checks what both zone tests share: Ready with moto
/// matching status, one batch with a recorded zone, and five sends that all
/// carry that batch's token. Returns the status, the zone and the sends.
async fn one_pinned_batch(
    env: &TestEnv,
    fwd: &Forwarder,
    action: &str,
    template: &str,
) -> (MachineRequestStatus, String, Vec<BTreeMap<String, String>>) {
    fwd.add_rule(Rule::new(action, InjectedError::request_limit_exceeded()).times(4));
    create_request(env, "zoned", template, 2, true).await;
    let mr = wait_request(env, "zoned", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(env, &mr).await;
    let st = mr.status.clone().expect("status");
    assert_eq!(st.launches.len(), 1, "one batch: {:?}", st.launches);
    let batch = &st.launches[0];
    let zone = batch
        .availability_zone
        .clone()
        .expect("the batch records its zone");
    assert!(zone.starts_with("us-east-1"), "{zone}");
    let sent = fwd.requests(action);
    assert_eq!(fwd.injected(action), 4);
    assert_eq!(
        sent.len(),
        5,
        "3 SDK attempts, then the re-send (2 attempts)"
    );
    for p in &sent {
        assert_eq!(p.get("ClientToken"), Some(&batch.token), "{p:?}");
    }
    (st, zone, sent)
}

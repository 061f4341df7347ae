//! The request controller when EC2 says no: capacity errors fall back to the
//! next instance type and, when every offering is exhausted, set Degraded with
//! AWS's message until capacity returns; throttling and 5xx answers are
//! retried. The faults come from the test forwarder between operator and moto.

use std::time::Duration;

use hostforge_testbed::forwarder::{Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::{
    assert_moto_matches_status, condition, create_request, create_template, is_ready, wait_request,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// A namespace of its own, a forwarder in front of moto, and an operator that
/// talks to EC2 through it (fast loops, plus `extra` config lines).
async fn bed(name: &str, extra: &str) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "2s", extra);
    let op = OperatorProcess::start(&env, &cfg).await;
    (env, fwd, op)
}

#[tokio::test]
async fn capacity_errors_fall_back_then_degrade_then_recover() {
    let (env, fwd, _op) = bed("faults-cap", "capacityCooldown: 3s\n").await;
    create_template(
        &env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
        }),
    )
    .await;

    // t3.micro has no capacity: the request is filled with t3.small.
    let micro = fwd.add_rule(
        Rule::new("RunInstances", InjectedError::insufficient_capacity())
            .param("InstanceType", "t3.micro"),
    );
    create_request(&env, "fallback", "compute", 2, true).await;
    let mr = wait_request(&env, "fallback", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    let st = mr.status.as_ref().expect("status");
    assert!(st
        .machines
        .iter()
        .all(|m| m.instance_type.as_deref() == Some("t3.small")));
    let failed = st
        .launches
        .iter()
        .find(|b| b.instance_types == ["t3.micro"])
        .expect("the refused batch is on record");
    assert!(
        failed
            .message
            .as_deref()
            .is_some_and(|m| m.contains("InsufficientInstanceCapacity")),
        "{failed:?}"
    );
    assert!(fwd.injected("RunInstances") >= 1);

    // Neither type has capacity: Degraded with AWS's words, nothing launched.
    fwd.add_rule(
        Rule::new("RunInstances", InjectedError::insufficient_capacity())
            .param("InstanceType", "t3.small"),
    );
    create_request(&env, "starved", "compute", 1, true).await;
    let mr = wait_request(&env, "starved", "Degraded", WAIT, |m| {
        condition(m, "Degraded").is_some_and(|(s, r)| s == "True" && r == "CapacityUnavailable")
    })
    .await;
    let message = mr
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("InsufficientInstanceCapacity"),
        "{message}"
    );
    assert!(!is_ready(&mr));

    // Capacity is back: after the cooldown the request fills by itself.
    fwd.clear_rules();
    let _ = micro;
    let mr = wait_request(&env, "starved", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    assert_eq!(
        condition(&mr, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
}

#[tokio::test]
async fn throttling_and_server_errors_are_retried() {
    let (env, fwd, op) = bed("faults-retry", "").await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    // More throttled answers than the SDK retries in one call, and polls that
    // fail with 500s: the operator keeps going and ends with exactly 2.
    fwd.add_rule(Rule::new("RunInstances", InjectedError::request_limit_exceeded()).times(4));
    fwd.add_rule(Rule::new("DescribeInstances", InjectedError::internal_error()).times(6));
    create_request(&env, "retried", "compute", 2, true).await;
    let mr = wait_request(&env, "retried", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    assert_eq!(fwd.injected("RunInstances"), 4);
    assert_eq!(fwd.injected("DescribeInstances"), 6);
    assert!(
        op.metric(
            "hostforge_aws_calls_total",
            &["operation=\"RunInstances\"", "outcome=\"Throttled\""]
        ) >= 1.0
    );
}

/// An answer hostforge does not classify (VolumeLimitExceeded is a 4xx the
/// error table does not list) is a refusal: nothing was launched. The very
/// reconcile that meets it writes Degraded (LaunchFailed) naming the cloud's
/// code, Ready says the same instead of an old "template not ready", and a
/// Warning Event carries it. Once EC2 accepts, a new batch (after the short
/// first backoff step) fills the request and the cause is cleared.
#[tokio::test]
async fn an_unlisted_launch_error_is_named_on_the_request() {
    let (env, fwd, _op) = bed("faults-unlisted", "").await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    let refused = fwd.add_rule(Rule::new(
        "RunInstances",
        InjectedError::new(
            400,
            "VolumeLimitExceeded",
            "You have exceeded your maximum gp3 storage limit of 50 TiB in this region.",
        ),
    ));
    create_request(&env, "unlisted", "compute", 2, true).await;
    let mr = wait_request(&env, "unlisted", "Degraded naming the code", WAIT, |m| {
        condition(m, "Degraded").is_some_and(|(s, r)| s == "True" && r == "LaunchFailed")
    })
    .await;
    let st = mr.status.as_ref().expect("status");
    let message = |type_: &str| {
        st.conditions
            .iter()
            .find(|c| c.type_ == type_)
            .map(|c| (c.reason.clone(), c.message.clone()))
            .unwrap_or_default()
    };
    let (_, degraded) = message("Degraded");
    assert!(degraded.contains("VolumeLimitExceeded"), "{degraded}");
    assert!(degraded.contains("maximum gp3 storage limit"), "{degraded}");
    let (ready_reason, ready) = message("Ready");
    assert_eq!(
        ready_reason, "LaunchFailed",
        "Ready names the error, not a stale cause: {ready}"
    );
    assert!(fwd.injected_code("RunInstances", "VolumeLimitExceeded") >= 1);
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let named = events
        .list(&ListParams::default().fields("involvedObject.name=unlisted"))
        .await
        .expect("list events")
        .items
        .into_iter()
        .any(|e| {
            e.type_.as_deref() == Some("Warning")
                && e.reason.as_deref() == Some("LaunchFailed")
                && e.message
                    .as_deref()
                    .is_some_and(|m| m.contains("VolumeLimitExceeded"))
        });
    assert!(named, "a Warning Event names the code");

    // EC2 accepts again: a new batch fills the request and the cause goes away.
    assert!(fwd.remove_rule(refused));
    let mr = wait_request(&env, "unlisted", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    assert_eq!(
        condition(&mr, "Degraded"),
        Some(("False".into(), "AsExpected".into()))
    );
}

/// A template that names a provider the operator does not have: the template
/// and the request both say `ProviderUnknown` (not a template problem), and
/// nothing is sent to EC2.
/// Pointing the template at the configured provider then fills the request.
#[tokio::test]
async fn a_provider_that_is_not_configured_is_named_as_such() {
    let (env, fwd, _op) = bed("faults-provider", "").await;
    create_template(
        &env,
        "elsewhere",
        json!({
            "provider": "other-account",
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
        }),
    )
    .await;
    create_request(&env, "lost", "elsewhere", 1, true).await;
    let mr = wait_request(&env, "lost", "ProviderUnknown", WAIT, |m| {
        condition(m, "Ready").is_some_and(|(s, r)| s == "False" && r == "ProviderUnknown")
    })
    .await;
    let ready = mr
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(ready.contains("other-account"), "{ready}");
    let templates: Api<hostforge::api::MachineTemplate> =
        Api::namespaced(env.client.clone(), &env.namespace);
    let mt = templates.get("elsewhere").await.expect("template");
    let template_ready = mt
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| (c.status.clone(), c.reason.clone()));
    assert_eq!(
        template_ready,
        Some(("False".into(), "ProviderUnknown".into()))
    );
    assert_eq!(fwd.calls("RunInstances"), 0, "nothing launched");
    assert_eq!(fwd.calls("CreateFleet"), 0, "nothing launched");

    // The template names the configured provider: the request fills.
    templates
        .patch(
            "elsewhere",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(json!({"spec": {"provider": null}})),
        )
        .await
        .expect("patch template");
    let mr = wait_request(&env, "lost", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
}

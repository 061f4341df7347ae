//! Changing a template's provider under a request that holds machines: the
//! provider recorded in the request's status wins. Two providers of the
//! operator's config point at the same moto, told apart by the request's
//! status and by the `provider` label of `hostforge_aws_calls_total`.

use std::time::Duration;

use hostforge_testbed::machines::{
    condition, create_request, create_template, is_ready, moto_live, patch_spec, requests, uid,
    wait_request,
};
use hostforge_testbed::operator::sum_metric;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM, REGION};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;

use hostforge::api::MachineTemplate;

const WAIT: Duration = Duration::from_secs(120);
const CALLS: &str = "hostforge_aws_calls_total";

/// Operator config with the named providers, all pointing at the bed's moto.
fn config(env: &TestEnv, providers: &[&str]) -> String {
    let mut cfg = format!(
        "clusterName: {}\npollInterval: 500ms\nsweepInterval: 2s\nproviders:\n",
        env.namespace
    );
    for name in providers {
        cfg.push_str(&format!(
            "  - name: {name}\n    type: aws\n    region: {REGION}\n    endpointUrl: {}\n",
            env.bed.moto_url
        ));
    }
    cfg
}

async fn set_template_provider(env: &TestEnv, name: &str, provider: &str) {
    Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": provider}})),
        )
        .await
        .unwrap_or_else(|e| panic!("patching template {name}: {e}"));
}

/// Calls of `operation` made through `provider`. A template's launch dry
/// run (outcome `dry-run`, made when the template moves to a provider) is
/// not a launch: it is left out.
fn calls(op: &OperatorProcess, provider: &str, operation: &str) -> f64 {
    let provider = format!("provider=\"{provider}\"");
    let operation = format!("operation=\"{operation}\"");
    let text = op.metrics();
    sum_metric(&text, CALLS, &[&provider, &operation])
        - sum_metric(
            &text,
            CALLS,
            &[&provider, &operation, "outcome=\"dry-run\""],
        )
}

/// Polls until the request is gone (its finalizer released).
async fn wait_gone(api: &Api<hostforge::api::MachineRequest>, name: &str, timeout: Duration) {
    let deadline = std::time::Instant::now() + timeout;
    while api.get_opt(name).await.expect("get").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "request {name} was never released"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn degraded_message(mr: &hostforge::api::MachineRequest) -> String {
    mr.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

fn recorded_provider(mr: &hostforge::api::MachineRequest) -> Option<String> {
    mr.status.as_ref().and_then(|st| st.provider.clone())
}

/// A namespace, the operator with providers `aws-a` and `aws-b`, and a
/// template `compute` in `aws-a`.
async fn bed(name: &str) -> (TestEnv, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let op = OperatorProcess::start(&env, &config(&env, &["aws-a", "aws-b"])).await;
    create_template(
        &env,
        "compute",
        json!({"provider": "aws-a", "image": {"ssmParameter": AL2023_PARAM},
               "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    (env, op)
}

#[tokio::test]
async fn a_request_with_machines_stays_in_its_recorded_provider() {
    let (env, op) = bed("provider-switch").await;
    create_request(&env, "kept", "compute", 2, true).await;
    create_request(&env, "emptied", "compute", 1, true).await;
    let kept = wait_request(&env, "kept", "Ready", WAIT, is_ready).await;
    let emptied = wait_request(&env, "emptied", "Ready", WAIT, is_ready).await;
    assert_eq!(recorded_provider(&kept).as_deref(), Some("aws-a"));
    let kept_uid = uid(&kept);
    let kept_machines = moto_live(&env, &kept_uid).await;
    assert_eq!(kept_machines.len(), 2);

    // The template now names aws-b: both requests stay in aws-a and say so.
    set_template_provider(&env, "compute", "aws-b").await;
    let pinned = |m: &hostforge::api::MachineRequest| {
        condition(m, "Degraded").is_some_and(|(s, r)| s == "True" && r == "ProviderChanged")
    };
    let kept = wait_request(&env, "kept", "Degraded ProviderChanged", WAIT, pinned).await;
    let message = degraded_message(&kept);
    assert!(
        message.contains("\"aws-b\"") && message.contains("\"aws-a\""),
        "{message}"
    );
    assert_eq!(recorded_provider(&kept).as_deref(), Some("aws-a"));
    wait_request(&env, "emptied", "Degraded ProviderChanged", WAIT, pinned).await;

    // A machine lost outside the operator is not replaced in aws-b (nor in
    // aws-a: the request launches nothing while pinned).
    let lost = kept_machines.iter().next().expect("a machine").clone();
    env.ec2()
        .terminate_instances()
        .instance_ids(&lost)
        .send()
        .await
        .expect("terminating in moto");
    wait_request(&env, "kept", "the lost machine seen", WAIT, |m| {
        m.status.as_ref().is_some_and(|st| {
            st.machines
                .iter()
                .any(|x| x.id == lost && x.termination_reason.is_some())
        }) && pinned(m)
    })
    .await;
    let live = moto_live(&env, &kept_uid).await;
    assert_eq!(live.len(), 1, "nothing replaced the lost machine: {live:?}");
    assert!(live.is_subset(&kept_machines), "{live:?}");

    // Scaled to 0, a request terminates its machines where they are, then
    // follows the template.
    patch_spec(&env, "emptied", json!({"count": 0})).await;
    let emptied_uid = uid(&emptied);
    let emptied = wait_request(&env, "emptied", "following aws-b", WAIT, |m| {
        recorded_provider(m).as_deref() == Some("aws-b")
            && condition(m, "Degraded").is_some_and(|(s, _)| s == "False")
    })
    .await;
    assert!(
        moto_live(&env, &emptied_uid).await.is_empty(),
        "{emptied:?}"
    );

    // Deleting terminates the machines through the recorded provider.
    requests(&env)
        .delete("kept", &DeleteParams::default())
        .await
        .expect("deleting");
    wait_gone(&requests(&env), "kept", WAIT).await;
    assert!(moto_live(&env, &kept_uid).await.is_empty());
    assert!(calls(&op, "aws-a", "TerminateInstances") >= 2.0);
    assert_eq!(calls(&op, "aws-b", "TerminateInstances"), 0.0);
    assert_eq!(calls(&op, "aws-b", "RunInstances"), 0.0);
    assert_eq!(calls(&op, "aws-b", "CreateFleet"), 0.0);
}

#[tokio::test]
async fn deletion_keeps_the_finalizer_while_the_recorded_provider_is_unconfigured() {
    let (env, mut op) = bed("provider-gone").await;
    let mr = create_request(&env, "orphan", "compute", 1, true).await;
    wait_request(&env, "orphan", "Ready", WAIT, is_ready).await;
    let id = uid(&mr);
    assert_eq!(moto_live(&env, &id).await.len(), 1);
    op.terminate(WAIT).await;

    // aws-a is gone from the config: deletion cannot terminate, so the
    // finalizer stays and the request says why.
    let mut op = OperatorProcess::start(&env, &config(&env, &["aws-b"])).await;
    requests(&env)
        .delete("orphan", &DeleteParams::default())
        .await
        .expect("deleting");
    let held = wait_request(
        &env,
        "orphan",
        "ProviderUnknown while deleting",
        WAIT,
        |m| condition(m, "Ready").is_some_and(|(_, r)| r == "ProviderUnknown"),
    )
    .await;
    assert!(held.metadata.deletion_timestamp.is_some());
    let message = held
        .status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
        .map(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        message.contains("\"aws-a\"") && message.contains("finalizer stays"),
        "{message}"
    );
    assert_eq!(
        moto_live(&env, &id).await.len(),
        1,
        "nothing was terminated"
    );
    op.terminate(WAIT).await;

    // aws-a is back: the machine is terminated and the request goes.
    let _op = OperatorProcess::start(&env, &config(&env, &["aws-a", "aws-b"])).await;
    wait_gone(&requests(&env), "orphan", WAIT).await;
    assert!(moto_live(&env, &id).await.is_empty());
}

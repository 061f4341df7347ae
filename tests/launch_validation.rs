//! A template's launch is dry-run (`DryRun=true`) when its spec or image
//! changes, with the tags a request's machines would carry, so what EC2
//! would refuse shows on the template (`LaunchValidated`, Ready) before any
//! request launches: the real apiserver, an operator child process and moto
//! behind the test forwarder, which records each dry run under
//! `<Action>:DryRun`.
//!
//! moto answers `DryRunOperation` for RunInstances and CreateFleet but
//! creates a launch template even with `DryRun=true`; the forwarder answers
//! CreateLaunchTemplate's dry run as EC2 does
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplate.html>).
//! A refusal is a forwarder rule answering EC2's `UnauthorizedOperation`.

use std::collections::BTreeMap;
use std::time::Duration;

use hostforge::api::conditions::{find_condition, LAUNCH_VALIDATED};
use hostforge::api::MachineTemplate;
use hostforge_testbed::forwarder::{assert_params, Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::{
    condition, create_request, create_template, is_ready, template_is_ready, template_ready,
    wait_request, wait_template,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);
const DRY_RUN: &str = "RunInstances:DryRun";
const TEMPLATE_DRY_RUN: &str = "CreateLaunchTemplate:DryRun";

/// A namespace, a forwarder in front of moto, the CRDs and an operator
/// with `extra` config.
async fn bed(name: &str, extra: &str) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let op = OperatorProcess::start(&env, &config_via(&env, &fwd, "5s", extra)).await;
    (env, fwd, op)
}

async fn spec(env: &TestEnv, api: &str, types: &[&str]) -> Value {
    let (subnet, sg) = env.default_subnet_and_group().await;
    let types: Vec<Value> = types.iter().map(|t| json!({"type": t})).collect();
    json!({
        "image": {"ssmParameter": AL2023_PARAM},
        "providerApi": api,
        "instanceTypes": types,
        "subnetIds": [subnet],
        "securityGroupIds": [sg],
        "tags": {"team": "hpc"},
    })
}

fn templates(env: &TestEnv) -> Api<MachineTemplate> {
    Api::namespaced(env.client.clone(), &env.namespace)
}

/// LaunchValidated as it stands: (status, reason, message, observedGeneration).
fn validated(mt: &MachineTemplate) -> Option<(String, String, String, Option<i64>)> {
    let st = mt.status.as_ref()?;
    find_condition(&st.conditions, LAUNCH_VALIDATED).map(|c| {
        (
            c.status.clone(),
            c.reason.clone(),
            c.message.clone(),
            c.observed_generation,
        )
    })
}

/// Ready and validated for the template's current generation.
fn validated_now(mt: &MachineTemplate) -> bool {
    template_is_ready(mt)
        && validated(mt).is_some_and(|(s, _, _, g)| s == "True" && g == mt.metadata.generation)
}

fn resolved_image(mt: &MachineTemplate) -> String {
    mt.status
        .as_ref()
        .and_then(|s| s.resolved_image.as_ref())
        .map(|i| i.id.clone())
        .expect("a resolved image")
}

/// The tags of a recorded call's first TagSpecification of `resource`.
fn tags_of(
    call: &BTreeMap<String, String>,
    prefix: &str,
    resource: &str,
) -> BTreeMap<String, String> {
    let spec = (1..=8)
        .find(|i| {
            call.get(&format!("{prefix}TagSpecification.{i}.ResourceType"))
                .is_some_and(|r| r == resource)
        })
        .unwrap_or_else(|| panic!("no {resource} tags in {call:#?}"));
    (1..=50)
        .map_while(|j| {
            let key = call.get(&format!("{prefix}TagSpecification.{spec}.Tag.{j}.Key"))?;
            let value = call.get(&format!("{prefix}TagSpecification.{spec}.Tag.{j}.Value"))?;
            Some((key.clone(), value.clone()))
        })
        .collect()
}

#[tokio::test]
async fn a_template_is_dry_run_once_per_change_with_its_machines_tags() {
    let (env, fwd, _op) = bed("dryrun-run", "").await;
    create_template(
        &env,
        "compute",
        spec(&env, "RunInstances", &["t3.micro", "t3.small"]).await,
    )
    .await;
    let mt = wait_template(&env, "compute", "validated", WAIT, validated_now).await;
    let (_, reason, message, _) = validated(&mt).expect("LaunchValidated");
    assert_eq!(reason, "DryRunPassed");
    let image = resolved_image(&mt);
    assert!(message.contains(&image), "{message}");
    let record = mt.status.as_ref().and_then(|s| s.launch_validation.clone());
    assert_eq!(record.map(|r| r.image_id), Some(image.clone()));

    let runs = fwd.requests(DRY_RUN);
    assert_eq!(runs.len(), 1, "{:#?}", fwd.snapshot());
    let (subnet, sg) = env.default_subnet_and_group().await;
    assert_params(
        &runs[0],
        &[
            ("DryRun", "true"),
            ("ImageId", &image),
            ("InstanceType", "t3.micro"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("SubnetId", &subnet),
            ("SecurityGroupId.1", &sg),
        ],
        // The SDK fills in a ClientToken of its own; no user data is sent.
        &["UserData"],
    );
    let tags = tags_of(&runs[0], "", "instance");
    for (key, value) in [
        ("team", "hpc"),
        ("hostforge.io/template", "compute"),
        ("hostforge.io/batch", "launch-validation"),
    ] {
        assert_eq!(tags.get(key).map(String::as_str), Some(value), "{tags:#?}");
    }
    for key in [
        "hostforge.io/cluster",
        "hostforge.io/cluster-id",
        "hostforge.io/request",
    ] {
        assert!(tags.contains_key(key), "{key} in {tags:#?}");
    }
    assert_eq!(fwd.calls("RunInstances"), 0, "a dry run launches nothing");

    // A spec change is checked again; the next reconciles are not.
    templates(&env)
        .patch(
            "compute",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"tags": {"team": "cfd"}}})),
        )
        .await
        .expect("patch the template");
    wait_template(&env, "compute", "validated again", WAIT, |mt| {
        validated_now(mt) && mt.metadata.generation == Some(2)
    })
    .await;
    let runs = fwd.requests(DRY_RUN);
    assert_eq!(runs.len(), 2, "{:#?}", fwd.snapshot());
    assert_eq!(
        tags_of(&runs[1], "", "instance")
            .get("team")
            .map(String::as_str),
        Some("cfd")
    );

    // A request launches as usual and costs no dry run.
    create_request(&env, "r", "compute", 2, true).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    assert_eq!(fwd.requests(DRY_RUN).len(), 2, "{:#?}", fwd.snapshot());
    assert_eq!(fwd.calls("RunInstances"), 1);
}

#[tokio::test]
async fn a_refused_dry_run_holds_the_template_and_its_requests_until_it_passes() {
    let (env, fwd, _op) = bed("dryrun-refused", "launchValidationRetry: 2s\n").await;
    let refusal = fwd.add_rule(Rule::new(DRY_RUN, InjectedError::unauthorized_operation()));
    create_template(
        &env,
        "compute",
        spec(&env, "RunInstances", &["t3.micro"]).await,
    )
    .await;
    let mt = wait_template(&env, "compute", "LaunchRefused", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, r, _)| s == "False" && r == "LaunchRefused")
    })
    .await;
    let (status, reason, message, _) = validated(&mt).expect("LaunchValidated");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "LaunchRefused")
    );
    assert!(
        message.starts_with("a dry run of RunInstances was refused: UnauthorizedOperation"),
        "{message}"
    );
    let (_, _, ready_message) = template_ready(&mt).expect("Ready");
    assert_eq!(ready_message, message);

    create_request(&env, "r", "compute", 1, true).await;
    wait_request(&env, "r", "held by the template", WAIT, |mr| {
        condition(mr, "Ready").is_some_and(|(s, r)| s == "False" && r == "TemplateNotReady")
    })
    .await;
    assert_eq!(fwd.calls("RunInstances"), 0);
    // Retried every launchValidationRetry while refused.
    let tries = fwd.injected(DRY_RUN);
    wait_template(&env, "compute", "retried", WAIT, |_| {
        fwd.injected(DRY_RUN) > tries
    })
    .await;

    // The permission is granted: the next dry run passes and the request launches.
    assert!(fwd.remove_rule(refusal));
    wait_template(&env, "compute", "validated", WAIT, validated_now).await;
    let mr = wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    assert_eq!(mr.status.map(|s| s.counts.running), Some(1));
    assert_eq!(fwd.calls("RunInstances"), 1);
}

#[tokio::test]
async fn a_fleet_template_dry_runs_its_launch_template_and_first_choice() {
    let (env, fwd, _op) = bed("dryrun-fleet", "").await;
    create_template(
        &env,
        "fleet",
        spec(&env, "EC2Fleet", &["t3.small", "t3.micro"]).await,
    )
    .await;
    let mt = wait_template(&env, "fleet", "validated", WAIT, validated_now).await;
    let image = resolved_image(&mt);
    let lt = fwd.requests(TEMPLATE_DRY_RUN);
    assert_eq!(lt.len(), 1, "{:#?}", fwd.snapshot());
    assert_params(
        &lt[0],
        &[("DryRun", "true"), ("LaunchTemplateData.ImageId", &image)],
        &[],
    );
    let template_tags = tags_of(&lt[0], "", "launch-template");
    assert_eq!(template_tags.get("team").map(String::as_str), Some("hpc"));
    assert!(
        template_tags.contains_key("hostforge.io/namespace"),
        "{template_tags:#?}"
    );
    let runs = fwd.requests(DRY_RUN);
    assert_eq!(runs.len(), 1, "{:#?}", fwd.snapshot());
    assert_params(
        &runs[0],
        &[
            ("ImageId", &image),
            ("InstanceType", "t3.small"),
            ("MaxCount", "1"),
        ],
        &["InstanceMarketOptions.MarketType"],
    );
    assert_eq!(
        fwd.calls("CreateLaunchTemplate"),
        0,
        "a dry run creates no template"
    );
    assert_eq!(fwd.calls("CreateFleet") + fwd.calls("RunInstances"), 0);
}

#[tokio::test]
async fn without_validate_launches_nothing_is_dry_run() {
    let (env, fwd, _op) = bed("dryrun-off", "validateLaunches: false\n").await;
    create_template(
        &env,
        "compute",
        spec(&env, "RunInstances", &["t3.micro"]).await,
    )
    .await;
    let mt = wait_template(&env, "compute", "Ready", WAIT, template_is_ready).await;
    assert_eq!(validated(&mt), None);
    assert_eq!(fwd.calls(DRY_RUN), 0);
    create_request(&env, "r", "compute", 1, true).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    assert_eq!(fwd.calls(DRY_RUN), 0);
}

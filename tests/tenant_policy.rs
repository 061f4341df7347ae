//! The tenant policy (issue 17, "Tenants"): a template outside its provider's
//! policy is not Ready (PolicyDenied, naming the value at fault and nothing
//! the policy allows), says so in a Warning Event, and its requests launch
//! nothing; a Secret is read as user data only once labelled
//! `hostforge.io/user-data: "true"`. Real apiserver, operator process, moto
//! behind a forwarder that counts the launch calls.

use std::time::{Duration, Instant};

use hostforge::api::MachineTemplate;
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, template_is_ready, template_ready, wait_request,
    wait_template,
};
use hostforge_testbed::operator::default_config;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// A namespace, a forwarder in front of moto, and an operator whose provider
/// `aws-default` has `policy` (a YAML flow mapping, or none) and whose
/// provider `open` reaches the same moto without a policy.
async fn bed(name: &str, policy: Option<&str>) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let op = OperatorProcess::start(&env, &config(&env, &fwd, policy, None)).await;
    (env, fwd, op)
}

/// The operator config of [`bed`]: provider `aws-default` with
/// `default_policy` and provider `open` with `open_policy` (YAML flow
/// mappings, or none), both through the forwarder.
fn config(
    env: &TestEnv,
    fwd: &Forwarder,
    default_policy: Option<&str>,
    open_policy: Option<&str>,
) -> String {
    let base = default_config(env, "5m").replace(&env.bed.moto_url, fwd.endpoint());
    let policy = |p: Option<&str>| p.map(|p| format!("    policy: {p}\n")).unwrap_or_default();
    let open = format!(
        "  - name: open\n    type: aws\n    region: {}\n    endpointUrl: {}\n{}",
        hostforge_testbed::REGION,
        fwd.endpoint(),
        policy(open_policy)
    );
    // The instance profiles these templates name exist in no IAM: a launch
    // dry run would (rightly) refuse them. This file is about the policy.
    format!(
        "{}pollInterval: 500ms\nsweepInterval: 2s\ndefaultProvider: aws-default\nvalidateLaunches: false\n",
        base.replacen(
            "imageCacheTtl:",
            &format!("{}{open}imageCacheTtl:", policy(default_policy)),
            1
        )
    )
}

fn policy_denied(mt: &MachineTemplate) -> bool {
    template_ready(mt)
        .is_some_and(|(status, reason, _)| status == "False" && reason == "PolicyDenied")
}

/// Waits (bounded) until a Warning Event with `reason` about `object` exists,
/// and returns its message.
async fn wait_event(env: &TestEnv, object: &str, reason: &str) -> String {
    let api = Api::<Event>::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + WAIT;
    loop {
        let found = api
            .list(&ListParams::default())
            .await
            .expect("list events")
            .items
            .into_iter()
            .find(|e| {
                e.reason.as_deref() == Some(reason)
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some(object)
            });
        if let Some(e) = found {
            return e.message.unwrap_or_default();
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} Event on {object} within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Launch calls that reached the forwarder.
fn launches(fwd: &Forwarder) -> u64 {
    fwd.calls("RunInstances") + fwd.calls("CreateFleet")
}

/// A request's Ready condition names the template's PolicyDenied.
async fn wait_request_held_by_policy(env: &TestEnv, name: &str) {
    let mr = wait_request(env, name, "Ready=False naming PolicyDenied", WAIT, |mr| {
        mr.status.as_ref().is_some_and(|st| {
            st.conditions.iter().any(|c| {
                c.type_ == "Ready"
                    && c.status == "False"
                    && c.reason == "TemplateNotReady"
                    && c.message.contains("PolicyDenied")
            })
        })
    })
    .await;
    let st = mr.status.expect("status");
    assert!(st.machines.is_empty(), "{:?}", st.machines);
}

#[tokio::test]
async fn a_namespace_outside_the_policy_launches_nothing() {
    let (env, fwd, _op) = bed("policy-ns", Some("{namespaces: [someone-else]}")).await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    create_request(&env, "denied", "compute", 2, true).await;

    let mt = wait_template(
        &env,
        "compute",
        "Ready=False PolicyDenied",
        WAIT,
        policy_denied,
    )
    .await;
    let (_, _, message) = template_ready(&mt).expect("Ready");
    assert!(message.contains(&env.namespace), "{message}");
    assert!(
        !message.contains("someone-else"),
        "the allowed namespaces leak: {message}"
    );
    let note = wait_event(&env, "compute", "PolicyDenied").await;
    assert!(note.contains(&env.namespace), "{note}");
    wait_request_held_by_policy(&env, "denied").await;

    // The same template through the provider without a policy is Ready and
    // launches: the denial is the policy's, not a broken bed.
    create_template(
        &env,
        "open",
        json!({"provider": "open", "image": {"ssmParameter": AL2023_PARAM},
               "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    create_request(&env, "allowed", "open", 1, true).await;
    wait_request(&env, "allowed", "Ready", WAIT, is_ready).await;
    let after_allowed = launches(&fwd);
    assert!(after_allowed >= 1);

    // Several reconciles of the denied request later, still nothing of its own.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(launches(&fwd), after_allowed, "a denied request launched");
    let mr = wait_request(&env, "denied", "no machines", WAIT, |mr| {
        mr.status.as_ref().is_some_and(|st| st.machines.is_empty())
    })
    .await;
    assert!(!is_ready(&mr));
}

#[tokio::test]
async fn a_profile_or_image_owner_outside_the_policy_is_denied_by_value() {
    let (env, fwd, _op) = bed(
        "policy-values",
        Some("{instanceProfiles: [hpc-node], imageOwners: ['999999999999']}"),
    )
    .await;
    create_template(
        &env,
        "admin",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}],
               "instanceProfile": "admin-role"}),
    )
    .await;
    let mt = wait_template(&env, "admin", "PolicyDenied", WAIT, policy_denied).await;
    let (_, _, message) = template_ready(&mt).expect("Ready");
    assert!(
        message.starts_with("spec.instanceProfile \"admin-role\" is not allowed"),
        "{message}"
    );
    assert!(!message.contains("hpc-node"), "{message}");

    // An allowed profile, but an image of an owner the policy does not list.
    create_template(
        &env,
        "foreign-image",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}],
               "instanceProfile": "hpc-node"}),
    )
    .await;
    let mt = wait_template(&env, "foreign-image", "PolicyDenied", WAIT, policy_denied).await;
    let (_, _, message) = template_ready(&mt).expect("Ready");
    assert!(message.starts_with("image ami-"), "{message}");
    assert!(!message.contains("999999999999"), "{message}");
    wait_event(&env, "foreign-image", "PolicyDenied").await;

    create_request(&env, "r", "foreign-image", 1, true).await;
    wait_request_held_by_policy(&env, "r").await;
    assert_eq!(launches(&fwd), 0);

    // Without a policy the same template is Ready.
    create_template(
        &env,
        "open",
        json!({"provider": "open", "image": {"ssmParameter": AL2023_PARAM},
               "instanceTypes": [{"type": "t3.micro"}], "instanceProfile": "admin-role"}),
    )
    .await;
    wait_template(&env, "open", "Ready", WAIT, template_is_ready).await;
}

#[tokio::test]
async fn a_namespace_selector_admits_a_namespace_once_labelled() {
    let (env, fwd, _op) = bed(
        "policy-selector",
        Some("{namespaceSelector: {matchLabels: {hostforge.io/tenant: gold}}}"),
    )
    .await;
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    create_request(&env, "r", "compute", 1, true).await;
    let mt = wait_template(&env, "compute", "PolicyDenied", WAIT, policy_denied).await;
    let (_, _, message) = template_ready(&mt).expect("Ready");
    assert!(!message.contains("gold"), "the selector leaks: {message}");
    wait_request_held_by_policy(&env, "r").await;
    assert_eq!(launches(&fwd), 0);

    // Labelled, the namespace is selected: the template turns Ready once the
    // cached labels expire (30 s) and the request is filled.
    env.kubectl_ok(&[
        "label",
        "namespace",
        &env.namespace,
        "hostforge.io/tenant=gold",
    ]);
    wait_template(&env, "compute", "Ready", 3 * WAIT, template_is_ready).await;
    wait_request(&env, "r", "Ready", 3 * WAIT, is_ready).await;
    assert!(launches(&fwd) >= 1);

    // The label taken off, the admission ends (within the labels' TTL and
    // the template's next look, not the image cache's).
    env.kubectl_ok(&["label", "namespace", &env.namespace, "hostforge.io/tenant-"]);
    wait_template(
        &env,
        "compute",
        "PolicyDenied again",
        3 * WAIT,
        policy_denied,
    )
    .await;
}

#[tokio::test]
async fn a_user_data_secret_is_read_only_once_labelled() {
    let (env, fwd, _op) = bed("policy-userdata", None).await;
    let secrets = Api::<Secret>::namespaced(env.client.clone(), &env.namespace);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "db-password"},
        "stringData": {"userData": "hunter2"},
    }))
    .expect("secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}],
               "userData": {"secretRef": {"name": "db-password", "key": "userData"}}}),
    )
    .await;
    create_request(&env, "r", "compute", 1, true).await;
    let mr = wait_request(&env, "r", "Degraded UserDataUnavailable", WAIT, |mr| {
        mr.status.as_ref().is_some_and(|st| {
            st.conditions.iter().any(|c| {
                c.type_ == "Degraded" && c.status == "True" && c.reason == "UserDataUnavailable"
            })
        })
    })
    .await;
    let st = mr.status.expect("status");
    let degraded = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .expect("Degraded");
    assert!(
        degraded
            .message
            .contains("add the label hostforge.io/user-data=\"true\""),
        "{}",
        degraded.message
    );
    assert!(!degraded.message.contains("hunter2"));
    assert!(st.machines.is_empty());
    assert_eq!(launches(&fwd), 0, "an unlabelled Secret was launched with");

    // The owner opts the Secret in: the request is filled.
    secrets
        .patch(
            "db-password",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"hostforge.io/user-data": "true"}}})),
        )
        .await
        .expect("label secret");
    // Nothing watches Secrets: the blocked request looks again on its own
    // (RETRY_REFUSED, 60 s), hence the longer bound.
    wait_request(&env, "r", "Ready", 3 * WAIT, is_ready).await;
    assert!(launches(&fwd) >= 1);
}

/// Applies `json` (one object, or a List) with kubectl; panics on failure.
fn kubectl_apply(env: &TestEnv, file: &str, json: &serde_json::Value) {
    let path = env.bed.dir.join(format!("{}-{file}.json", env.namespace));
    std::fs::write(&path, json.to_string()).expect("writing the manifest");
    env.kubectl_ok(&["apply", "-f", path.to_str().expect("utf-8 path")]);
}

/// Refuses every write of a MachineTemplate status in `env`'s namespace
/// while it lives (a ValidatingAdmissionPolicy scoped to that namespace), so
/// the template controller cannot report a new evaluation: what the request
/// gate sees is the status an earlier operator wrote, for as long as the test
/// needs, instead of for the few milliseconds before a restarted operator
/// evaluates its templates again.
struct FrozenTemplateStatus<'a> {
    _policy: AdmissionPolicy<'a>,
}

/// A ValidatingAdmissionPolicy and its Binding of one name, deleted when
/// dropped (they are cluster-wide, and the control plane is shared).
struct AdmissionPolicy<'a> {
    env: &'a TestEnv,
    name: String,
}

impl Drop for AdmissionPolicy<'_> {
    fn drop(&mut self) {
        for kind in [
            "validatingadmissionpolicybinding",
            "validatingadmissionpolicy",
        ] {
            self.env
                .kubectl(&["delete", kind, &self.name, "--ignore-not-found"]);
        }
    }
}

/// The message of [`FrozenTemplateStatus`]'s refusals.
const FROZEN: &str = "template status frozen by the test";

impl<'a> FrozenTemplateStatus<'a> {
    async fn new(env: &'a TestEnv, template: &str) -> FrozenTemplateStatus<'a> {
        let name = format!("freeze-{}", env.namespace);
        let policy = AdmissionPolicy {
            env,
            name: name.clone(),
        };
        kubectl_apply(
            env,
            "freeze",
            &json!({"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
                 "metadata": {"name": name},
                 "spec": {"failurePolicy": "Fail",
                          "matchConstraints": {
                              "resourceRules": [{"apiGroups": ["hostforge.io"], "apiVersions": ["*"],
                                                 "operations": ["UPDATE"],
                                                 "resources": ["machinetemplates/status"]}],
                              "namespaceSelector": {"matchLabels": {
                                  "kubernetes.io/metadata.name": env.namespace}}},
                          "validations": [{"expression": "false", "message": FROZEN}]}},
                {"apiVersion": "admissionregistration.k8s.io/v1",
                 "kind": "ValidatingAdmissionPolicyBinding",
                 "metadata": {"name": name},
                 "spec": {"policyName": name, "validationActions": ["Deny"]}},
            ]}),
        );
        // The apiserver loads policies asynchronously: wait until a (dry-run)
        // status write is refused.
        let deadline = Instant::now() + WAIT;
        loop {
            let out = env.kubectl(&[
                "patch",
                "machinetemplate",
                template,
                "-n",
                &env.namespace,
                "--subresource=status",
                "--type=merge",
                "--dry-run=server",
                "-p",
                r#"{"status":{"machinesInUse":424242}}"#,
            ]);
            if String::from_utf8_lossy(&out.stderr).contains(FROZEN) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the freeze never took effect: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        FrozenTemplateStatus { _policy: policy }
    }
}

/// The request gate checks the policy again: a template Ready under an
/// earlier config (no policy) does not let a request launch once the operator
/// runs with a policy that denies it, even before the template controller has
/// written the denial. Template status is frozen across the restart (see
/// [`FrozenTemplateStatus`]), so only the gate stands between the request and
/// a launch: a namespace the policy does not list, and an image owner it does
/// not allow (checked on the owner the template's status records).
#[tokio::test]
async fn a_restart_with_a_stricter_policy_holds_requests_before_templates_are_evaluated() {
    let env = TestEnv::new("policy-restart").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let mut op = OperatorProcess::start(&env, &config(&env, &fwd, None, None)).await;
    let spec = |provider: &str| {
        json!({"provider": provider, "image": {"ssmParameter": AL2023_PARAM},
               "instanceTypes": [{"type": "t3.micro"}]})
    };
    create_template(&env, "by-namespace", spec("aws-default")).await;
    create_template(&env, "by-owner", spec("open")).await;
    for name in ["by-namespace", "by-owner"] {
        let mt = wait_template(&env, name, "Ready", WAIT, template_is_ready).await;
        // What the gate checks an image owner against.
        let image = mt.status.and_then(|st| st.resolved_image).expect("image");
        assert!(image.owner_id.is_some(), "{image:?}");
    }

    let frozen = FrozenTemplateStatus::new(&env, "by-namespace").await;
    let (stopped, _) = op.terminate(Duration::from_secs(30)).await;
    assert!(stopped.is_some(), "the operator did not stop");
    drop(op);
    let strict = config(
        &env,
        &fwd,
        Some("{namespaces: [someone-else]}"),
        Some("{imageOwners: ['999999999999']}"),
    );
    let mut op = OperatorProcess::start(&env, &strict).await;
    // The new operator has evaluated the templates and could not say so.
    assert!(
        op.wait_log(FROZEN, WAIT).await,
        "the template controller never tried to write:\n{}",
        op.log()
    );
    create_request(&env, "r-namespace", "by-namespace", 1, true).await;
    create_request(&env, "r-owner", "by-owner", 1, true).await;
    wait_request_held_by_policy(&env, "r-namespace").await;
    wait_request_held_by_policy(&env, "r-owner").await;
    let message = |mr: &hostforge::api::MachineRequest| {
        mr.status
            .iter()
            .flat_map(|st| st.conditions.iter())
            .find(|c| c.type_ == "Ready")
            .map(|c| c.message.clone())
            .unwrap_or_default()
    };
    let api = hostforge_testbed::machines::requests(&env);
    let held = message(&api.get("r-namespace").await.expect("request"));
    assert!(
        held.contains(&format!("namespace {:?} may not use", env.namespace)),
        "{held}"
    );
    let held = message(&api.get("r-owner").await.expect("request"));
    assert!(
        held.contains("is not allowed") && held.contains("image ami-"),
        "{held}"
    );
    assert!(!held.contains("999999999999"), "the policy leaks: {held}");
    // Still Ready in status: the gate alone held the requests back.
    for name in ["by-namespace", "by-owner"] {
        let mt = wait_template(&env, name, "still Ready", WAIT, template_is_ready).await;
        assert!(!policy_denied(&mt));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(launches(&fwd), 0, "a request launched past the policy");

    // Lifted, the templates report the denial themselves.
    drop(frozen);
    for name in ["by-namespace", "by-owner"] {
        wait_template(&env, name, "PolicyDenied", WAIT, policy_denied).await;
    }
    assert_eq!(launches(&fwd), 0);
}

/// Creates a template named `name` with `spec`; the apiserver's refusal
/// message when it is refused. `dry_run` leaves nothing behind.
async fn try_create_template(
    env: &TestEnv,
    name: &str,
    spec: serde_json::Value,
    dry_run: bool,
) -> Result<(), String> {
    let mt: MachineTemplate = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineTemplate",
        "metadata": {"name": name}, "spec": spec,
    }))
    .expect("a template");
    let params = PostParams {
        dry_run,
        ..Default::default()
    };
    match Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .create(&params, &mt)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) => Err(status.message),
        Err(other) => panic!("creating template {name}: {other}"),
    }
}

/// The admission-policy example of docs/install.md, applied as a cluster
/// admin would, refuses templates naming a provider or an instance profile
/// their namespace is not given, with the policy's message, and admits the
/// others; a spec update is checked too, a metadata-only update is not.
#[tokio::test]
async fn the_admission_policy_example_limits_providers_and_profiles_by_namespace() {
    let env = TestEnv::new("policy-admission").await;
    env.install_crds().await;
    let path = hostforge_testbed::repo_path("docs/machinetemplate-admission-policy.yaml");
    let text = std::fs::read_to_string(&path).expect("the example");
    let mut items: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("YAML"))
        .collect();
    assert_eq!(items.len(), 2, "a policy and its binding");
    let name = items[0]["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_string();
    // The control plane is shared with the other tests of this binary: bind
    // the example to this test's namespace only, changing nothing else.
    let binding = &mut items[1];
    assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
    assert!(binding["spec"]["matchResources"].is_null());
    binding["spec"]["matchResources"] = json!({"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": env.namespace}}});
    let _policy = AdmissionPolicy { env: &env, name };
    kubectl_apply(
        &env,
        "admission",
        &json!({"apiVersion": "v1", "kind": "List", "items": items}),
    );
    env.kubectl_ok(&[
        "annotate",
        "namespace",
        &env.namespace,
        "hostforge.io/allowed-providers=aws-default, open",
        "hostforge.io/allowed-instance-profiles=hpc-node",
    ]);

    let spec = |extra: serde_json::Value| {
        let mut spec = json!({"image": {"ssmParameter": AL2023_PARAM},
                              "instanceTypes": [{"type": "t3.micro"}]});
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    };
    let ns = env.namespace.clone();
    let provider_refusal = format!(
        "spec.provider aws-research may not be used in namespace {ns} (admission policy hostforge-machinetemplate-tenancy)"
    );
    // The apiserver loads policies asynchronously: wait until it refuses.
    let deadline = Instant::now() + WAIT;
    loop {
        let got = try_create_template(
            &env,
            "probe",
            spec(json!({"provider": "aws-research"})),
            true,
        )
        .await;
        if got
            .as_ref()
            .err()
            .is_some_and(|m| m.contains(&provider_refusal))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the policy never took effect: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let refused = try_create_template(
        &env,
        "research",
        spec(json!({"provider": "aws-research"})),
        false,
    )
    .await
    .expect_err("a provider the namespace is not given");
    assert!(refused.contains(&provider_refusal), "{refused}");
    let refused = try_create_template(
        &env,
        "admin",
        spec(json!({"instanceProfile": "admin-role"})),
        false,
    )
    .await
    .expect_err("an instance profile the namespace is not given");
    assert!(
        refused.contains(&format!(
            "spec.instanceProfile admin-role may not be used in namespace {ns}"
        )),
        "{refused}"
    );
    // The default provider, and a listed one with a listed profile.
    try_create_template(&env, "compute", spec(json!({})), false)
        .await
        .expect("the default provider is given");
    try_create_template(
        &env,
        "hpc",
        spec(json!({"provider": "open", "instanceProfile": "hpc-node"})),
        false,
    )
    .await
    .expect("a given provider and profile");

    // An update of the spec is checked too.
    let api = Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace);
    let moved = api
        .patch(
            "compute",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"provider": "aws-research"}})),
        )
        .await;
    match moved {
        Err(kube::Error::Api(status)) => {
            assert!(
                status.message.contains(&provider_refusal),
                "{}",
                status.message
            )
        }
        other => panic!("a spec update to a provider not given was admitted: {other:?}"),
    }
    // The namespace's rights taken away, its templates can still be labelled
    // (and so finalized and deleted), not changed.
    env.kubectl_ok(&[
        "annotate",
        "namespace",
        &env.namespace,
        "hostforge.io/allowed-providers-",
    ]);
    let deadline = Instant::now() + WAIT;
    while try_create_template(&env, "probe", spec(json!({})), true)
        .await
        .is_ok()
    {
        assert!(
            Instant::now() < deadline,
            "the annotation's removal never took effect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    api.patch(
        "compute",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "hpc"}}})),
    )
    .await
    .expect("a metadata-only update passes");
    api.delete("compute", &Default::default())
        .await
        .expect("delete");
}

//! The MachineTemplate controller against a real apiserver and moto: each test
//! runs its own `hostforge run` child scoped to its namespace.

use std::time::{Duration, Instant};

use hostforge::api::{ImageSourceKind, MachineTemplate};
use hostforge_testbed::machines::wait_template;
use hostforge_testbed::operator::default_config;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

fn template(name: &str, spec: serde_json::Value) -> MachineTemplate {
    serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineTemplate",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid MachineTemplate")
}

fn base_spec(image: serde_json::Value) -> serde_json::Value {
    json!({"image": image, "instanceTypes": [{"type": "t3.micro"}]})
}

async fn create(env: &TestEnv, mt: &MachineTemplate) {
    Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), mt)
        .await
        .unwrap_or_else(|e| panic!("creating template: {e}"));
}

/// Polls the template until `pred` holds (60 s at most).
async fn wait_for(
    env: &TestEnv,
    name: &str,
    what: &str,
    pred: impl Fn(&MachineTemplate) -> bool,
) -> MachineTemplate {
    wait_template(env, name, what, Duration::from_secs(60), pred).await
}

fn ready(mt: &MachineTemplate) -> Option<(String, String)> {
    let status = mt.status.as_ref()?;
    let c = status.conditions.iter().find(|c| c.type_ == "Ready")?;
    (status.observed_generation == mt.metadata.generation)
        .then(|| (c.status.clone(), c.reason.clone()))
}

async fn wait_ready(env: &TestEnv, name: &str) -> MachineTemplate {
    wait_for(env, name, "Ready=True", |mt| {
        ready(mt).is_some_and(|(s, _)| s == "True")
    })
    .await
}

#[tokio::test]
async fn each_image_source_resolves_to_the_image_aws_names() {
    let env = TestEnv::new("mt-sources").await;
    env.install_crds().await;
    let _op = OperatorProcess::start(&env, &default_config(&env, "5m")).await;
    let al2023 = env.al2023_ami().await;

    // Three images registered one second apart: the selector must pick the last.
    let prefix = format!("hf-{}", env.namespace);
    let registered = env.register_images_a_second_apart(&prefix, 3).await;

    create(
        &env,
        &template("by-ssm", base_spec(json!({"ssmParameter": AL2023_PARAM}))),
    )
    .await;
    create(&env, &template("by-id", base_spec(json!({"id": al2023})))).await;
    create(
        &env,
        &template(
            "by-selector",
            base_spec(json!({"selector": {"name": format!("{prefix}-*"), "owners": ["self"]}})),
        ),
    )
    .await;

    let by_ssm = wait_ready(&env, "by-ssm").await;
    let img = by_ssm
        .status
        .and_then(|s| s.resolved_image)
        .expect("resolvedImage");
    assert_eq!(img.id, al2023);
    assert_eq!(img.source, ImageSourceKind::SsmParameter);

    let by_id = wait_ready(&env, "by-id").await;
    let img = by_id
        .status
        .and_then(|s| s.resolved_image)
        .expect("resolvedImage");
    assert_eq!(img.id, al2023);
    assert_eq!(img.source, ImageSourceKind::Id);
    assert!(img.name.unwrap_or_default().starts_with("al2023-ami"));

    let by_selector = wait_ready(&env, "by-selector").await;
    let img = by_selector
        .status
        .and_then(|s| s.resolved_image)
        .expect("resolvedImage");
    assert_eq!(img.id, registered[2], "newest of {registered:?}");
    assert_eq!(img.name.as_deref(), Some(format!("{prefix}-2").as_str()));
    assert_eq!(img.source, ImageSourceKind::Selector);
}

#[tokio::test]
async fn failures_set_a_reason_and_an_event_and_a_fix_makes_the_template_ready() {
    let env = TestEnv::new("mt-failures").await;
    env.install_crds().await;
    let _op = OperatorProcess::start(&env, &default_config(&env, "5m")).await;
    let (subnet, sg) = env.default_subnet_and_group().await;

    // (name, bad spec, expected reason, fixed spec)
    let ssm = json!({"ssmParameter": AL2023_PARAM});
    let cases = [
        (
            "missing-param",
            base_spec(json!({"ssmParameter": "/hostforge/not/there"})),
            "ImageNotFound",
            base_spec(ssm.clone()),
        ),
        (
            "missing-ami",
            base_spec(json!({"id": "ami-0000000000000000f"})),
            "ImageNotFound",
            base_spec(ssm.clone()),
        ),
        (
            "unknown-provider",
            json!({"provider": "nowhere", "image": ssm, "instanceTypes": [{"type": "t3.micro"}]}),
            "ProviderUnknown",
            json!({"provider": "aws-default", "image": ssm, "instanceTypes": [{"type": "t3.micro"}]}),
        ),
        (
            "missing-subnet",
            json!({"image": ssm, "instanceTypes": [{"type": "t3.micro"}], "subnetIds": ["subnet-0123456789abcdef0"]}),
            "SubnetNotFound",
            json!({"image": ssm, "instanceTypes": [{"type": "t3.micro"}], "subnetIds": [subnet]}),
        ),
        (
            "missing-sg",
            json!({"image": ssm, "instanceTypes": [{"type": "t3.micro"}], "securityGroupIds": ["sg-0123456789abcdef0"]}),
            "SecurityGroupNotFound",
            json!({"image": ssm, "instanceTypes": [{"type": "t3.micro"}], "securityGroupIds": [sg]}),
        ),
        (
            "unknown-type",
            json!({"image": ssm, "instanceTypes": [{"type": "t3.micro"}, {"type": "zz9.huge"}]}),
            "InstanceTypeUnknown",
            base_spec(ssm.clone()),
        ),
    ];
    for (name, bad, _, _) in &cases {
        create(&env, &template(name, bad.clone())).await;
    }
    let api = Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace);
    for (name, _, reason, _) in &cases {
        let mt = wait_for(&env, name, reason, |mt| {
            ready(mt).is_some_and(|(s, r)| s == "False" && r == *reason)
        })
        .await;
        let msg = &mt.status.expect("status").conditions[0].message;
        assert!(!msg.is_empty(), "{name}: the condition explains itself");
        wait_for_event(&env, name, reason).await;
    }
    // Fix every spec in place: each becomes Ready without restarting the operator.
    for (name, _, _, fixed) in &cases {
        let mut mt = api.get(name).await.expect("get");
        mt.spec = serde_json::from_value(fixed.clone()).expect("fixed spec");
        api.replace(name, &PostParams::default(), &mt)
            .await
            .unwrap_or_else(|e| panic!("fixing {name}: {e}"));
    }
    for (name, _, _, _) in &cases {
        wait_ready(&env, name).await;
    }
}

async fn wait_for_event(env: &TestEnv, object: &str, reason: &str) {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "no {reason} Event for {object}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn fifty_templates_sharing_a_parameter_cost_one_get_parameter() {
    let env = TestEnv::new("mt-cache").await;
    env.install_crds().await;
    let al2023 = env.al2023_ami().await;
    let param = format!("/hostforge-test/{}/ami", env.namespace);
    env.ssm()
        .put_parameter()
        .name(&param)
        .value(&al2023)
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("PutParameter");
    let op = OperatorProcess::start(&env, &default_config(&env, "10m")).await;

    for i in 0..50 {
        create(
            &env,
            &template(&format!("t{i}"), base_spec(json!({"ssmParameter": param}))),
        )
        .await;
    }
    for i in 0..50 {
        let mt = wait_ready(&env, &format!("t{i}")).await;
        assert_eq!(
            mt.status.and_then(|s| s.resolved_image).map(|i| i.id),
            Some(al2023.clone())
        );
    }
    let calls = op.metric("hostforge_aws_calls_total", &["operation=\"GetParameter\""]);
    assert_eq!(
        calls, 1.0,
        "one GetParameter for 50 templates within one TTL"
    );
    let hits = op.metric("hostforge_image_cache_lookups_total", &["result=\"hit\""]);
    assert!(hits >= 49.0, "cache hits: {hits}");
}

#[tokio::test]
async fn reconciling_an_unchanged_template_calls_nothing_and_writes_nothing() {
    let env = TestEnv::new("mt-quiet").await;
    env.install_crds().await;
    let op = OperatorProcess::start(&env, &default_config(&env, "10m")).await;
    create(
        &env,
        &template("quiet", base_spec(json!({"ssmParameter": AL2023_PARAM}))),
    )
    .await;
    wait_ready(&env, "quiet").await;
    // Let the reconcile triggered by our own status write settle.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let aws_before = op.metric("hostforge_aws_calls_total", &[]);
    let writes_before = op.metric("hostforge_status_writes_total", &[]);
    let reconciles_before = op.metric("hostforge_reconciles_total", &["controller=\"template\""]);

    // A metadata-only change makes the controller reconcile the same spec.
    let api = Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace);
    for i in 0..3 {
        api.patch(
            "quiet",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"touch": i.to_string()}}})),
        )
        .await
        .expect("annotate");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while op.metric("hostforge_reconciles_total", &["controller=\"template\""]) <= reconciles_before
    {
        assert!(
            Instant::now() < deadline,
            "the annotation did not trigger a reconcile"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        op.metric("hostforge_aws_calls_total", &[]),
        aws_before,
        "no AWS call"
    );
    assert_eq!(
        op.metric("hostforge_status_writes_total", &[]),
        writes_before,
        "no status write"
    );
}

#[tokio::test]
async fn bad_config_exits_non_zero_naming_the_key() {
    let env = TestEnv::new("mt-badcfg").await;
    let config = format!(
        "clusterName: x\nproviders:\n  - name: aws-default\n    type: aws\n    region: \"\"\n    endpointUrl: {}\n",
        env.bed.moto_url
    );
    let mut op = OperatorProcess::spawn(&env, &config, &[]);
    let status = op
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the operator exits");
    assert!(!status.success());
    let log = op.log();
    assert!(
        log.contains("providers[0].region"),
        "message names the key: {log}"
    );
}

#[tokio::test]
async fn sigterm_stops_the_operator_cleanly() {
    let env = TestEnv::new("mt-sigterm").await;
    env.install_crds().await;
    let mut op = OperatorProcess::start(&env, &default_config(&env, "5m")).await;
    let (status, took) = op.terminate(Duration::from_secs(10)).await;
    let status = status.expect("exited within 10 s");
    assert!(
        status.success(),
        "clean exit, got {status}; log:\n{}",
        op.log()
    );
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn json_logs_health_and_readiness_after_the_watches_sync() {
    let env = TestEnv::new("mt-runtime").await;
    env.install_crds().await;
    let mut op =
        OperatorProcess::spawn(&env, &default_config(&env, "5m"), &["--log-format", "json"]);
    let port = op.metrics_port;
    let deadline = Instant::now() + Duration::from_secs(60);
    while hostforge_testbed::operator::http_get(port, "/readyz").is_none_or(|(code, _)| code != 200)
    {
        assert!(Instant::now() < deadline, "never ready:\n{}", op.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) =
        hostforge_testbed::operator::http_get(port, "/healthz").expect("/healthz answers");
    assert_eq!((code, body.trim()), (200, "ok"));
    let log = op.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "watches synced; ready"),
        "readiness is logged once the watches have listed: {log}"
    );
    let (status, _) = op.terminate(Duration::from_secs(10)).await;
    assert!(status.is_some_and(|s| s.success()));
}

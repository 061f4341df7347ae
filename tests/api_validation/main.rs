//! The API on a real kube-apiserver: the generated CRDs install and become
//! Established, every example applies, malformed objects are rejected with a message
//! that names the field, and kubectl shows the printer columns and field docs.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use hostforge::api::conditions::{new_condition, READY};
use hostforge::api::{
    ImageSourceKind, LaunchValidation, MachineCounts, MachineRequest, MachineRequestStatus,
    MachineTemplate, MachineTemplateStatus, RequestPhase, ResolvedImage, SelectedSecurityGroup,
    SelectedSubnet,
};
use hostforge_testbed::TestEnv;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde_json::{json, Value};

mod cases;

use cases::malformed_cases;

/// How a manifest is sent: both of kubectl's apply modes, with strict server-side field
/// validation, so unknown fields are errors too.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// `kubectl apply --server-side`: a server-side apply patch.
    ServerSide,
    /// Plain `kubectl apply`: a create, or a merge patch for an existing object.
    ClientSide,
}

fn apply(env: &TestEnv, manifest: &Value) -> Output {
    apply_as(env, manifest, Mode::ServerSide)
}

fn apply_as(env: &TestEnv, manifest: &Value, mode: Mode) -> Output {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("manifest.json");
    std::fs::write(&path, manifest.to_string()).expect("write manifest");
    apply_file_as(env, &path, mode)
}

fn apply_file(env: &TestEnv, path: &std::path::Path) -> Output {
    apply_file_as(env, path, Mode::ServerSide)
}

fn apply_file_as(env: &TestEnv, path: &std::path::Path, mode: Mode) -> Output {
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec![
        "apply",
        "--validate=strict",
        "-n",
        &env.namespace,
        "-f",
        path,
    ];
    if let Mode::ServerSide = mode {
        args.extend(["--server-side", "--field-manager=api-test"]);
    }
    env.kubectl(&args)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn template(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineTemplate",
        "metadata": {"name": name},
        "spec": spec,
    })
}

fn valid_template_spec() -> Value {
    json!({
        "image": {"ssmParameter": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"},
        "instanceTypes": [{"type": "c6i.xlarge"}],
        "subnetIds": ["subnet-0a1b2c3d4e5f60718"],
        "securityGroupIds": ["sg-0123456789abcdef0"],
    })
}

/// A valid template with `fields` set (null removes a field).
fn template_with(name: &str, fields: Value) -> Value {
    let mut spec = valid_template_spec();
    for (k, v) in fields.as_object().expect("object") {
        if v.is_null() {
            spec.as_object_mut().expect("object").remove(k);
        } else {
            spec[k] = v.clone();
        }
    }
    template(name, spec)
}

fn request_with(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineRequest",
        "metadata": {"name": name},
        "spec": spec,
    })
}

#[tokio::test]
async fn crds_install_and_become_established() {
    let env = TestEnv::new("api-crds").await;
    env.install_crds().await;

    let crds: Api<CustomResourceDefinition> = Api::all(env.client.clone());
    for name in [
        "machinetemplates.hostforge.io",
        "machinerequests.hostforge.io",
    ] {
        let crd = crds.get(name).await.expect("CRD exists");
        let conditions = crd
            .status
            .and_then(|s| s.conditions)
            .expect("CRD has conditions");
        for wanted in ["Established", "NamesAccepted"] {
            let c = conditions
                .iter()
                .find(|c| c.type_ == wanted)
                .unwrap_or_else(|| panic!("{name}: no {wanted} condition"));
            assert_eq!(c.status, "True", "{name} {wanted}: {:?}", c.message);
        }
    }

    // Applying the same files again is a no-op, not an error (idempotent install).
    let again = env.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=api-test-reapply",
        "-f",
        hostforge_testbed::repo_path("crds")
            .to_str()
            .expect("utf-8"),
    ]);
    assert!(again.status.success(), "re-apply: {}", stderr(&again));

    let resources = env.kubectl_ok(&["api-resources", "--api-group=hostforge.io", "-o", "wide"]);
    for wanted in [
        "machinetemplates",
        "mt",
        "machinerequests",
        "mreq",
        "hostforge",
    ] {
        assert!(
            resources.split_whitespace().any(|w| w.contains(wanted)),
            "{wanted} missing from api-resources:\n{resources}"
        );
    }
}

#[tokio::test]
async fn every_example_applies_and_reads_back_into_the_types() {
    let env = TestEnv::new("api-examples").await;
    env.install_crds().await;

    let mut files: Vec<PathBuf> = ["examples", "examples/reference"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(hostforge_testbed::repo_path(dir)).expect("examples dir"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "expected the examples, found {files:?}");
    for file in &files {
        let out = apply_file(&env, file);
        assert!(
            out.status.success(),
            "{} does not apply: {}",
            file.display(),
            stderr(&out)
        );
    }

    // What the apiserver stored (defaults filled in) deserializes into our types.
    let templates: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
    let list = templates
        .list(&Default::default())
        .await
        .expect("list templates");
    assert!(
        list.items.len() >= 4,
        "templates stored: {}",
        list.items.len()
    );
    let selector = templates
        .get("compute-selector")
        .await
        .expect("selector template");
    assert_eq!(
        selector.spec.metadata_options.http_tokens,
        hostforge::api::HttpTokens::Required,
        "schema default applied by the apiserver"
    );
    assert_eq!(
        selector
            .spec
            .user_data
            .as_ref()
            .map(|u| u.secret_ref.key.as_str()),
        Some("userData"),
        "secret key default applied by the apiserver"
    );
    let requests: Api<MachineRequest> = Api::namespaced(env.client.clone(), &env.namespace);
    let compute = requests.get("compute").await.expect("request");
    assert_eq!(compute.spec.count, 3);
    assert!(compute.spec.replace_lost);
}

#[tokio::test]
async fn malformed_manifests_are_rejected_naming_the_field() {
    let env = TestEnv::new("api-malformed").await;
    env.install_crds().await;

    // The base objects are valid: a failure below is the mutation, not the fixture.
    let ok = apply(&env, &template_with("base", json!({})));
    assert!(ok.status.success(), "valid template: {}", stderr(&ok));
    let ok = apply(
        &env,
        &request_with("base", json!({"templateRef": {"name": "base"}, "count": 1})),
    );
    assert!(ok.status.success(), "valid request: {}", stderr(&ok));

    let cases = malformed_cases();
    assert!(cases.len() >= 20);
    let mut failures = vec![];
    for mode in [Mode::ServerSide, Mode::ClientSide] {
        for (i, case) in cases.iter().enumerate() {
            // A fresh name per case and mode, so no earlier object interferes.
            let mut manifest = case.manifest.clone();
            let mut before = case.before.clone();
            if manifest["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.len() < 100)
            {
                let name = format!("case-{i}-{mode:?}").to_lowercase();
                manifest["metadata"]["name"] = json!(name);
                if let Some(b) = before.as_mut() {
                    b["metadata"]["name"] = json!(name);
                }
            }
            if let Some(before) = &before {
                let out = apply_as(&env, before, mode);
                assert!(
                    out.status.success(),
                    "{}: setup failed: {}",
                    case.name,
                    stderr(&out)
                );
            }
            let out = apply_as(&env, &manifest, mode);
            let err = stderr(&out);
            if out.status.success() {
                failures.push(format!("{} ({mode:?}): accepted", case.name));
            } else if let Some(missing) = case
                .wanted
                .iter()
                .find(|w| !w.split('|').any(|alt| err.contains(alt)))
            {
                failures.push(format!(
                    "{} ({mode:?}): no {missing:?} in: {err}",
                    case.name
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs `kubectl` until `check` accepts its stdout, for things the apiserver publishes
/// asynchronously (the OpenAPI document behind `kubectl explain`).
fn kubectl_until(env: &TestEnv, args: &[&str], check: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = env.kubectl(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && check(&stdout) {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "kubectl {args:?} never gave the expected output:\n{stdout}{}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn table(output: &str) -> Vec<Vec<String>> {
    output
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

#[tokio::test]
async fn kubectl_shows_columns_categories_and_docs() {
    let env = TestEnv::new("api-kubectl").await;
    env.install_crds().await;

    let ok = apply(
        &env,
        &template_with("compute", json!({"provider": "aws-default"})),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));
    let ok = apply(
        &env,
        &request_with(
            "work",
            json!({"templateRef": {"name": "compute"}, "count": 3}),
        ),
    );
    assert!(ok.status.success(), "{}", stderr(&ok));

    // Status as the operator will write it: typed, server-side applied on /status.
    // Whole seconds: metav1.Time has no finer resolution, and the status is compared below.
    let now = Time(Timestamp::from_second(Timestamp::now().as_second()).expect("now"));
    let params = PatchParams::apply("hostforge-test").force();
    let template_status = MachineTemplateStatus {
        observed_generation: Some(1),
        conditions: vec![new_condition(
            READY,
            true,
            "ImageResolved",
            "",
            Some(1),
            now.clone(),
        )],
        resolved_image: Some(ResolvedImage {
            id: "ami-0123456789abcdef0".into(),
            name: Some("al2023-ami-2023.6".into()),
            source: ImageSourceKind::SsmParameter,
            creation_date: Some("2025-01-01T00:00:00.000Z".into()),
            owner_id: Some("137112412989".into()),
            owner_alias: Some("amazon".into()),
            resolved_at: now.clone(),
        }),
        machines_in_use: Some(2),
        instance_type_info: None,
        launch_validation: Some(LaunchValidation {
            image_id: "ami-0123456789abcdef0".into(),
            checked_at: now.clone(),
        }),
        selected_subnets: vec![SelectedSubnet {
            id: "subnet-0a1b2c3d".into(),
            zone: Some("us-east-1a".into()),
            vpc_id: Some("vpc-0a1b2c3d".into()),
        }],
        selected_security_groups: vec![SelectedSecurityGroup {
            id: "sg-0a1b2c3d".into(),
            name: Some("hpc".into()),
            vpc_id: Some("vpc-0a1b2c3d".into()),
        }],
        launch_template: Some(hostforge::api::ResolvedLaunchTemplate {
            id: "lt-0123456789abcdef0".into(),
            name: Some("hpc-base".into()),
            version: 3,
            image_id: None,
            resolved_at: now.clone(),
        }),
    };
    let templates: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
    templates
        .patch_status(
            "compute",
            &params,
            &Patch::Apply(json!({
                "apiVersion": MachineTemplate::api_version(&()),
                "kind": MachineTemplate::kind(&()),
                "status": template_status,
            })),
        )
        .await
        .expect("template status accepted by the schema");
    let request_status = MachineRequestStatus {
        observed_generation: Some(1),
        phase: Some(RequestPhase::Provisioning),
        conditions: vec![new_condition(
            READY,
            false,
            "Launching",
            "2/3 running",
            Some(1),
            now,
        )],
        counts: MachineCounts {
            desired: 3,
            pending: 1,
            running: 2,
            ..Default::default()
        },
        ..Default::default()
    };
    let requests: Api<MachineRequest> = Api::namespaced(env.client.clone(), &env.namespace);
    let patched = requests
        .patch_status(
            "work",
            &params,
            &Patch::Apply(json!({
                "apiVersion": MachineRequest::api_version(&()),
                "kind": MachineRequest::kind(&()),
                "status": request_status,
            })),
        )
        .await
        .expect("request status accepted by the schema");
    assert_eq!(patched.status, Some(request_status));

    let ns = env.namespace.as_str();
    let rows = table(&env.kubectl_ok(&["get", "mreq", "-n", ns]));
    assert_eq!(
        rows[0],
        ["NAME", "TEMPLATE", "DESIRED", "RUNNING", "READY", "AGE"]
    );
    assert_eq!(rows[1][..5], ["work", "compute", "3", "2", "False"]);

    let rows = table(&env.kubectl_ok(&["get", "mreq", "-n", ns, "-o", "wide"]));
    assert_eq!(rows[0].last().map(String::as_str), Some("PHASE"));
    assert_eq!(rows[1].last().map(String::as_str), Some("Provisioning"));

    let rows = table(&env.kubectl_ok(&["get", "mt", "-n", ns]));
    assert_eq!(
        rows[0],
        ["NAME", "PROVIDER", "API", "IMAGE", "READY", "AGE"]
    );
    assert_eq!(
        rows[1][..5],
        [
            "compute",
            "aws-default",
            "RunInstances",
            "ami-0123456789abcdef0",
            "True"
        ]
    );

    let all = env.kubectl_ok(&["get", "hostforge", "-n", ns]);
    assert!(
        all.contains("machinetemplate.hostforge.io/compute"),
        "{all}"
    );
    assert!(all.contains("machinerequest.hostforge.io/work"), "{all}");

    let explain = kubectl_until(&env, &["explain", "machinerequest.spec.count"], |out| {
        out.contains("count")
    });
    assert!(explain.contains("KIND:       MachineRequest"), "{explain}");
    assert!(explain.contains("FIELD: count <integer>"), "{explain}");
    assert!(explain.contains("0 to 1000"), "{explain}");
    assert!(explain.contains("etcd"), "{explain}");

    let explain = kubectl_until(&env, &["explain", "machinetemplate.spec.userData"], |out| {
        out.contains("userData")
    });
    assert!(explain.contains("secretRef"), "{explain}");

    let explain = kubectl_until(
        &env,
        &["explain", "machinetemplate.spec.capacityReservation"],
        |out| out.contains("capacityReservation"),
    );
    assert!(explain.contains("capacityBlock"), "{explain}");
    assert!(explain.contains("preference None"), "{explain}");
    let explain = kubectl_until(
        &env,
        &[
            "explain",
            "machinetemplate.spec.networkInterfaces.interfaceType",
        ],
        |out| out.contains("interfaceType"),
    );
    assert!(explain.contains("efa-only"), "{explain}");
    assert!(explain.contains("regular ENA interface"), "{explain}");
}

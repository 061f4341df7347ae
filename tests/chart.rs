//! The Helm chart (charts/hostforge) with the Go-built helm and kubectl on the
//! real apiserver: lint and render, install / upgrade / uninstall, schema
//! errors, and RBAC proven rather than assumed: the operator runs with a
//! TokenRequest token of the chart's ServiceAccount through a request
//! lifecycle, then each rule of the chart's roles is removed in turn and the
//! part of the lifecycle that needs it is shown to fail.

mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::{json, Value};
use support::machines::{
    create_request, create_template, is_ready, moto_instances, moto_live, patch_spec, requests,
    status_live, uid, wait_request,
};
use support::operator::default_config;
use support::replica::{helm, helm_ok, kubectl_replace, service_account_kubeconfig, Replica};
use support::{repo_path, TestEnv, AL2023_PARAM};

const CHART: &str = "charts/hostforge";
const WAIT: Duration = Duration::from_secs(90);

fn chart() -> String {
    repo_path(CHART).display().to_string()
}

/// Every document of a rendered manifest stream, as JSON.
fn documents(yaml: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|doc| Value::deserialize(doc).ok())
        .filter(|v| !v.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

#[test]
fn chart_version_and_crds_have_one_source_of_truth() {
    let chart: Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_path("charts/hostforge/Chart.yaml")).expect("Chart.yaml"),
    )
    .expect("Chart.yaml is YAML");
    assert_eq!(
        chart["appVersion"].as_str(),
        Some(env!("CARGO_PKG_VERSION")),
        "Chart.yaml appVersion must equal Cargo.toml's version"
    );
    // The chart's crds/ must be the repository's crds/, byte for byte (it is a
    // link to it; this catches a link replaced by a stale copy).
    let files = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    let repo = repo_path("crds");
    let ours = repo_path("charts/hostforge/crds");
    assert_eq!(
        files(&repo),
        files(&ours),
        "charts/hostforge/crds differs from crds/"
    );
    for name in files(&repo) {
        assert!(
            std::fs::read(repo.join(&name)).ok() == std::fs::read(ours.join(&name)).ok(),
            "charts/hostforge/crds/{name} differs from crds/{name}: keep charts/hostforge/crds a link to ../../crds"
        );
    }
}

/// The AWS operations the adapter calls: every `calls.run("Operation", …)` in
/// src/provider/aws (each call site goes through that one wrapper).
fn aws_operations_called() -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    let dir = repo_path("src/provider/aws");
    for entry in std::fs::read_dir(&dir).expect("src/provider/aws").flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for (i, _) in text.match_indices(".run(") {
            let rest = text[i + 5..].trim_start();
            if let Some(quoted) = rest.strip_prefix('"') {
                if let Some(end) = quoted.find('"') {
                    ops.insert(quoted[..end].to_string());
                }
            }
        }
    }
    ops
}

#[test]
fn the_iam_policy_allows_exactly_the_aws_calls_the_operator_makes() {
    let policy: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("docs/iam-policy.json")).expect("docs/iam-policy.json"),
    )
    .expect("the policy is JSON");
    let mut allowed = BTreeSet::new();
    for st in policy["Statement"].as_array().expect("Statement") {
        let actions = match &st["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect(),
            other => panic!("Action {other}"),
        };
        for a in actions {
            if let Some(op) = a.strip_prefix("ec2:").or_else(|| a.strip_prefix("ssm:")) {
                allowed.insert(op.to_string());
            }
        }
        // Creating calls are allowed only with the cluster tag in the request,
        // terminating and deleting only on resources carrying it.
        let text = st.to_string();
        if text.contains("TerminateInstances") || text.contains("DeleteLaunchTemplate") {
            assert!(
                text.contains("aws:ResourceTag/hostforge.io/cluster"),
                "{text}"
            );
        }
        if text.contains("CreateLaunchTemplate") && !text.contains("ec2:CreateAction") {
            assert!(
                text.contains("aws:RequestTag/hostforge.io/cluster"),
                "{text}"
            );
        }
        if text.contains("CreateTags") {
            assert!(
                text.contains("ec2:CreateAction"),
                "CreateTags only while creating: {text}"
            );
        }
    }
    let mut called = aws_operations_called();
    assert!(called.len() >= 10, "found too few calls: {called:?}");
    // Tagging on create needs CreateTags with an ec2:CreateAction condition.
    called.insert("CreateTags".into());
    assert_eq!(
        allowed, called,
        "docs/iam-policy.json must list exactly the EC2/SSM calls in src/provider/aws"
    );
}

#[tokio::test]
async fn the_chart_lints_and_renders_hardened_defaults() {
    let env = TestEnv::new("chart-render").await;
    let c = chart();
    helm_ok(
        &env,
        &["lint", "--strict", &c, "--set", "config.clusterName=lint"],
    );
    let out = helm_ok(
        &env,
        &[
            "template",
            "demo",
            &c,
            "--namespace",
            "ops",
            "--set",
            "config.clusterName=demo",
        ],
    );
    let docs = documents(&out);
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in [
        "ServiceAccount",
        "ConfigMap",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
    ] {
        assert!(kinds.contains(kind), "{kind} not rendered: {kinds:?}");
    }
    let dep = find(&docs, "Deployment")[0];
    assert_eq!(dep["spec"]["replicas"], 2);
    let pod = &dep["spec"]["template"]["spec"];
    let ctr = &pod["containers"][0];
    let args: Vec<&str> = ctr["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(args.contains(&"--leader-election"), "{args:?}");
    assert!(args.contains(&"--lease-namespace=ops"), "{args:?}");
    let sc = &ctr["securityContext"];
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(ctr["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(ctr["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(ctr["livenessProbe"]["httpGet"]["port"], "metrics");
    assert!(ctr["resources"]["requests"]["memory"].is_string());
    assert!(ctr["resources"]["limits"]["memory"].is_string());
    let cm = find(&docs, "ConfigMap")[0];
    let config = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    assert!(config.contains("clusterName: \"demo\""), "{config}");
    let parsed =
        hostforge::config::OperatorConfig::from_yaml(config).expect("the operator reads it");
    assert_eq!(
        parsed.max_kube_requests_in_flight,
        hostforge::kube_client::DEFAULT_MAX_IN_FLIGHT
    );

    // Namespace mode: Roles only, the operator told to watch that namespace.
    let out = helm_ok(
        &env,
        &[
            "template",
            "demo",
            &c,
            "--set",
            "config.clusterName=demo",
            "--set",
            "watchNamespace=team-a",
            "--set",
            "networkPolicy.enabled=true",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "config.maxKubeRequestsInFlight=8",
        ],
    );
    let docs = documents(&out);
    let cm = find(&docs, "ConfigMap")[0];
    let config = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    let parsed =
        hostforge::config::OperatorConfig::from_yaml(config).expect("the operator reads it");
    assert_eq!(parsed.max_kube_requests_in_flight, 8, "{config}");
    assert!(find(&docs, "ClusterRole").is_empty() && find(&docs, "ClusterRoleBinding").is_empty());
    let roles = find(&docs, "Role");
    assert!(roles.iter().any(|r| r["metadata"]["namespace"] == "team-a"));
    assert_eq!(find(&docs, "NetworkPolicy").len(), 1);
    assert_eq!(find(&docs, "ServiceMonitor").len(), 1);
    let dep = find(&docs, "Deployment")[0];
    let args = dep["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--namespace=team-a"), "{args}");

    // Mistakes are stopped at render time with a message that says what to do.
    let out = helm(&env, &["template", "demo", &c]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.clusterName is required"));
    let out = helm(
        &env,
        &[
            "template",
            "demo",
            &c,
            "--set",
            "config.clusterName=demo",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs leaderElection.enabled=true"));
}

#[tokio::test]
async fn values_of_the_wrong_type_are_rejected_by_the_schema() {
    let env = TestEnv::new("chart-schema").await;
    let c = chart();
    let bad = env
        .bed
        .dir
        .join(format!("bad-values-{}.yaml", env.namespace));
    std::fs::write(
        &bad,
        "replicaCount: two\nconfig:\n  clusterName: demo\n  providers:\n    - {name: a, type: gcp, region: r}\nleaderElection:\n  enabled: \"yes\"\n",
    )
    .expect("write values");
    let bad = bad.display().to_string();
    let out = helm(
        &env,
        &["install", "bad", &c, "-n", &env.namespace, "-f", &bad],
    );
    assert!(!out.status.success(), "install with wrong types succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("values don't meet the specifications of the schema"),
        "{err}"
    );
    assert!(
        err.contains("/replicaCount") && err.contains("want integer"),
        "{err}"
    );
    assert!(
        err.contains("/leaderElection/enabled") && err.contains("want boolean"),
        "{err}"
    );
    assert!(err.contains("/config/providers/0/type"), "{err}");
    let out = helm(
        &env,
        &[
            "install",
            "bad",
            &c,
            "-n",
            &env.namespace,
            "--set",
            "config.clusterName=demo",
            "--set",
            "replicas=3",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("additional properties 'replicas' not allowed"));
    // Nothing was installed.
    assert!(!helm_ok(&env, &["list", "-n", &env.namespace, "-q"]).contains("bad"));
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_on_the_apiserver() {
    let env = TestEnv::new("chart-install").await;
    env.install_crds().await;
    let ns = env.namespace.as_str();
    let c = chart();
    helm_ok(&env, &[
        "install", "hf", &c, "-n", ns, "--set", "config.clusterName=install-test",
        "--set", "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::123456789012:role/hostforge",
    ]);
    let name = "hf-hostforge";
    for (kind, name) in [
        ("deployment", name),
        ("serviceaccount", name),
        ("configmap", name),
        ("service", &format!("{name}-metrics")),
        ("poddisruptionbudget", name),
        ("role", &format!("{name}-leader-election")),
        ("rolebinding", &format!("{name}-leader-election")),
    ] {
        env.kubectl_ok(&["get", "-n", ns, kind, name]);
    }
    env.kubectl_ok(&["get", "clusterrole", name]);
    env.kubectl_ok(&["get", "clusterrolebinding", name]);
    env.kubectl_ok(&[
        "get",
        "crd",
        "machinetemplates.hostforge.io",
        "machinerequests.hostforge.io",
    ]);
    let sa = env.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "serviceaccount",
        name,
        "-o",
        "jsonpath={.metadata.annotations}",
    ]);
    assert!(
        sa.contains("arn:aws:iam::123456789012:role/hostforge"),
        "{sa}"
    );
    let replicas = env.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "deployment",
        name,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "2");
    // The rendered config is one the operator accepts.
    let config = env.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "configmap",
        name,
        "-o",
        "jsonpath={.data.config\\.yaml}",
    ]);
    let path = env.bed.dir.join(format!("chart-config-{ns}.yaml"));
    std::fs::write(&path, &config).expect("write config");
    hostforge::config::OperatorConfig::load(&path)
        .unwrap_or_else(|e| panic!("chart config rejected: {e}\n{config}"));

    helm_ok(
        &env,
        &[
            "upgrade",
            "hf",
            &c,
            "-n",
            ns,
            "--reuse-values",
            "--set",
            "replicaCount=3",
            "--set",
            "config.pollInterval=2s",
            "--set",
            "networkPolicy.enabled=true",
        ],
    );
    let replicas = env.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "deployment",
        name,
        "-o",
        "jsonpath={.spec.replicas}",
    ]);
    assert_eq!(replicas, "3");
    env.kubectl_ok(&["get", "-n", ns, "networkpolicy", name]);
    let config = env.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "configmap",
        name,
        "-o",
        "jsonpath={.data.config\\.yaml}",
    ]);
    assert!(config.contains("pollInterval: \"2s\""), "{config}");
    let status = helm_ok(&env, &["status", "hf", "-n", ns, "-o", "json"]);
    let status: Value = serde_json::from_str(&status).expect("helm status json");
    assert_eq!(status["version"], 2);

    helm_ok(
        &env,
        &["uninstall", "hf", "-n", ns, "--wait", "--timeout", "60s"],
    );
    for (kind, name, namespaced) in [
        ("deployment", name, true),
        ("serviceaccount", name, true),
        ("configmap", name, true),
        ("clusterrole", name, false),
        ("clusterrolebinding", name, false),
    ] {
        let mut args = vec!["get", kind, name, "--ignore-not-found", "-o", "name"];
        if namespaced {
            args.extend(["-n", ns]);
        }
        assert_eq!(
            env.kubectl_ok(&args),
            "",
            "{kind} {name} left after uninstall"
        );
    }
    // CRDs stay (Helm never deletes crds/; deleting them would delete every request).
    env.kubectl_ok(&["get", "crd", "machinerequests.hostforge.io"]);
}

/// One rule of the chart's roles, and how the lifecycle shows it is needed.
struct RuleCheck {
    /// "ClusterRole" or "Role" (the leader-election Role).
    role: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    /// `kubectl auth can-i` arguments that turn "no" once the rule is gone.
    can_i: Vec<String>,
    /// What the operator's log then says (the apiserver's 403).
    forbidden: &'static str,
    scenario: Scenario,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    /// The operator refuses to start.
    Start,
    /// A template and a request are applied; the named step fails.
    Request,
    /// A request reaches Ready, then a machine is returned while another is
    /// scaled down (two Events of one kind in one reconcile: a series patch).
    ScaleDownAndReturn,
    /// The operator leads, then cannot renew and exits.
    Renew,
}

/// Creates the user-data Secret and the template of the lifecycle.
async fn template_with_user_data(env: &TestEnv) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bootstrap"},
        "stringData": {"userData": "#!/bin/sh\necho hello from hostforge\n"},
    }))
    .expect("secret");
    Api::<Secret>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
    create_template(
        env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "userData": {"secretRef": {"name": "bootstrap", "key": "userData"}},
        }),
    )
    .await;
}

/// Events the operator published in the namespace.
fn events(env: &TestEnv) -> Vec<Value> {
    let out = env.kubectl_ok(&[
        "get",
        "events.events.k8s.io",
        "-n",
        &env.namespace,
        "-o",
        "json",
    ]);
    let list: Value = serde_json::from_str(&out).expect("events json");
    list["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| e["reportingController"] == "hostforge")
        .collect()
}

fn operator_config(env: &TestEnv) -> String {
    format!(
        "{}pollInterval: 500ms\nsweepInterval: 2s\n",
        default_config(env, "5m")
    )
}

/// The chart installed once for the RBAC test: its ServiceAccount, roles and Lease name.
struct Installed {
    namespace: String,
    sa: String,
    lease: String,
    kubeconfig: std::path::PathBuf,
}

impl Installed {
    fn lease_args(&self) -> Vec<&str> {
        vec![
            "--leader-election",
            "--lease-name",
            &self.lease,
            "--lease-namespace",
            &self.namespace,
        ]
    }

    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.sa)
    }
}

/// Starts the operator as the chart's ServiceAccount in `work`'s namespace.
fn operator_as_sa(work: &TestEnv, chart: &Installed, name: &str) -> Replica {
    Replica::spawn(
        work,
        name,
        &operator_config(work),
        &chart.kubeconfig,
        &chart.lease_args(),
    )
}

async fn wait_deleted(env: &TestEnv, name: &str) {
    let deadline = Instant::now() + WAIT;
    while requests(env).get_opt(name).await.expect("get").is_some() {
        assert!(
            Instant::now() < deadline,
            "finalizer of {name} never released"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn can_i(env: &TestEnv, chart: &Installed, args: &[String]) -> bool {
    let user = chart.user();
    let mut full: Vec<&str> = vec!["auth", "can-i"];
    full.extend(args.iter().map(String::as_str));
    full.extend(["--as", &user]);
    let out = env.kubectl(&full);
    String::from_utf8_lossy(&out.stdout).trim() == "yes"
}

async fn wait_can_i(env: &TestEnv, chart: &Installed, args: &[String], want: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while can_i(env, chart, args) != want {
        assert!(
            Instant::now() < deadline,
            "RBAC never settled to can-i={want} for {args:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn get_json(env: &TestEnv, args: &[&str]) -> Value {
    let mut full = vec!["get"];
    full.extend(args);
    full.extend(["-o", "json"]);
    let mut v: Value = serde_json::from_str(&env.kubectl_ok(&full)).expect("json");
    if let Some(meta) = v["metadata"].as_object_mut() {
        for k in [
            "resourceVersion",
            "managedFields",
            "uid",
            "creationTimestamp",
        ] {
            meta.remove(k);
        }
    }
    v
}

#[tokio::test]
async fn rbac_the_chart_grants_exactly_what_the_lifecycle_needs() {
    let started = Instant::now();
    let env = TestEnv::new("chart-rbac").await;
    env.install_crds().await;
    let c = chart();
    helm_ok(
        &env,
        &[
            "install",
            "rbac",
            &c,
            "-n",
            &env.namespace,
            "--skip-crds",
            "--set",
            "config.clusterName=rbac",
        ],
    );
    let chart = Installed {
        namespace: env.namespace.clone(),
        sa: "rbac-hostforge".into(),
        lease: "rbac-hostforge".into(),
        kubeconfig: service_account_kubeconfig(&env, &env.namespace, "rbac-hostforge"),
    };
    let cluster_role = get_json(&env, &["clusterrole", "rbac-hostforge"]);
    let lease_role = get_json(
        &env,
        &[
            "role",
            "-n",
            &env.namespace,
            "rbac-hostforge-leader-election",
        ],
    );

    // 1. The whole lifecycle as the ServiceAccount, leader election included.
    let work = TestEnv::new("rbac-life").await;
    template_with_user_data(&work).await;
    let mut op = operator_as_sa(&work, &chart, "rbac-full");
    assert!(
        op.wait_ready(Duration::from_secs(60)).await,
        "never ready:\n{}",
        op.log()
    );
    assert!(op.wait_log("became leader", Duration::from_secs(30)).await);
    let mr = create_request(&work, "burst", "compute", 3, true).await;
    let burst_uid = uid(&mr);
    let mr = wait_request(&work, "burst", "Ready with 3", WAIT, is_ready).await;
    assert_eq!(moto_live(&work, &burst_uid).await, status_live(&mr));
    assert_eq!(status_live(&mr).len(), 3);
    let returned = status_live(&mr).into_iter().next().expect("a machine");
    patch_spec(
        &work,
        "burst",
        json!({"count": 1, "returnMachines": [returned]}),
    )
    .await;
    let mr = wait_request(&work, "burst", "Ready with 1", WAIT, |m| {
        is_ready(m) && status_live(m).len() == 1
    })
    .await;
    assert_eq!(moto_live(&work, &burst_uid).await, status_live(&mr));
    let evs = events(&work);
    assert!(
        evs.iter()
            .any(|e| e["reason"] == "Ready" && e["regarding"]["kind"] == "MachineTemplate"),
        "{evs:#?}"
    );
    assert!(
        evs.iter()
            .any(|e| e["series"]["count"].as_i64().unwrap_or(0) >= 2),
        "no repeated Event (series) was recorded: {evs:#?}"
    );
    requests(&work)
        .delete("burst", &DeleteParams::default())
        .await
        .expect("delete");
    wait_deleted(&work, "burst").await;
    assert!(
        moto_live(&work, &burst_uid).await.is_empty(),
        "machines left after delete"
    );
    assert!(
        !op.log().contains("forbidden"),
        "a call was forbidden:\n{}",
        op.log()
    );
    assert!(op
        .terminate(Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
    eprintln!(
        "full lifecycle as the ServiceAccount: ok after {:?}",
        started.elapsed()
    );

    // 2. Every rule, removed one at a time.
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let lease_ref = format!("leases.coordination.k8s.io/{}", chart.lease);
    let ns_flag = |ns: &str| format!("--namespace={ns}");
    let checks = |work_ns: &str| {
        vec![
            RuleCheck {
                role: "ClusterRole",
                resource: "machinetemplates",
                verbs: &["list", "watch"],
                can_i: s(&["list", "machinetemplates.hostforge.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot list resource "machinetemplates""#,
                scenario: Scenario::Start,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "machinetemplates/status",
                verbs: &["patch"],
                can_i: s(&[
                    "patch",
                    "machinetemplates.hostforge.io",
                    "--subresource=status",
                    &ns_flag(work_ns),
                ]),
                forbidden: r#"cannot patch resource "machinetemplates/status""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "machinerequests",
                verbs: &["list", "watch"],
                can_i: s(&["list", "machinerequests.hostforge.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot list resource "machinerequests""#,
                scenario: Scenario::Start,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "machinerequests",
                verbs: &["patch"],
                can_i: s(&["patch", "machinerequests.hostforge.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot patch resource "machinerequests""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "machinerequests/status",
                verbs: &["update"],
                can_i: s(&[
                    "update",
                    "machinerequests.hostforge.io",
                    "--subresource=status",
                    &ns_flag(work_ns),
                ]),
                forbidden: r#"cannot update resource "machinerequests/status""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "secrets",
                verbs: &["get"],
                can_i: s(&["get", "secrets", &ns_flag(work_ns)]),
                forbidden: r#"cannot get resource "secrets""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "events",
                verbs: &["create"],
                can_i: s(&["create", "events.events.k8s.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot create resource "events""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "events",
                verbs: &["patch"],
                can_i: s(&["patch", "events.events.k8s.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot patch resource "events""#,
                scenario: Scenario::ScaleDownAndReturn,
            },
            RuleCheck {
                role: "Role",
                resource: "leases",
                verbs: &["get"],
                can_i: s(&["get", &lease_ref, &ns_flag(&chart.namespace)]),
                forbidden: r#"cannot get resource "leases""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "Role",
                resource: "leases",
                verbs: &["create"],
                can_i: s(&[
                    "create",
                    "leases.coordination.k8s.io",
                    &ns_flag(&chart.namespace),
                ]),
                forbidden: r#"cannot create resource "leases""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "Role",
                resource: "leases",
                verbs: &["update"],
                can_i: s(&["update", &lease_ref, &ns_flag(&chart.namespace)]),
                forbidden: r#"cannot update resource "leases""#,
                scenario: Scenario::Renew,
            },
        ]
    };

    // The checks cover every rule the chart renders, and nothing else.
    let rule_keys = |role: &Value, kind: &str| -> Vec<(String, String, Vec<String>)> {
        role["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .map(|r| {
                (
                    kind.to_string(),
                    r["resources"][0].as_str().unwrap_or_default().to_string(),
                    r["verbs"]
                        .as_array()
                        .expect("verbs")
                        .iter()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect(),
                )
            })
            .collect()
    };
    let mut rendered = rule_keys(&cluster_role, "ClusterRole");
    rendered.extend(rule_keys(&lease_role, "Role"));
    let covered: Vec<_> = checks("x")
        .iter()
        .map(|c| {
            (
                c.role.to_string(),
                c.resource.to_string(),
                c.verbs.iter().map(|v| v.to_string()).collect::<Vec<_>>(),
            )
        })
        .collect();
    assert_eq!(
        rendered, covered,
        "every rule needs a check proving it (and checks need rules)"
    );

    for (index, _) in covered.iter().enumerate() {
        let t = Instant::now();
        let work = TestEnv::new("rbac-rule").await;
        let check = checks(&work.namespace).remove(index);
        let (original, role_index) = if check.role == "ClusterRole" {
            (&cluster_role, index)
        } else {
            (
                &lease_role,
                index - rule_keys(&cluster_role, "ClusterRole").len(),
            )
        };
        let mut reduced = original.clone();
        reduced["rules"]
            .as_array_mut()
            .expect("rules")
            .remove(role_index);
        kubectl_replace(&env, &reduced);
        wait_can_i(&env, &chart, &check.can_i, false).await;
        env.kubectl(&[
            "delete",
            "lease",
            "-n",
            &chart.namespace,
            &chart.lease,
            "--ignore-not-found",
        ]);
        template_with_user_data(&work).await;

        let mut op = operator_as_sa(&work, &chart, &format!("rbac-{index}"));
        let what = format!("{} {:?} on {}", check.role, check.verbs, check.resource);
        match check.scenario {
            Scenario::Start => {
                let status = op.wait_exit(Duration::from_secs(30)).await;
                assert!(
                    status.is_some_and(|s| !s.success()),
                    "{what}: the operator started anyway:\n{}",
                    op.log()
                );
                assert!(op.log().contains("cannot list"), "{}", op.log());
            }
            Scenario::Request => {
                let mr = create_request(&work, "r", "compute", 2, true).await;
                // The 403 shows in the log or, where the operator reports it to
                // the user, in the request's conditions.
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    let now = requests(&work).get("r").await.expect("get");
                    let in_status = now
                        .status
                        .iter()
                        .flat_map(|st| st.conditions.iter())
                        .any(|c| c.message.contains(check.forbidden));
                    if in_status || op.log().contains(check.forbidden) {
                        break;
                    }
                    assert!(
                        Instant::now() < deadline,
                        "{what}: no 403 seen:\n{}",
                        op.log()
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                // Give the operator a moment to do whatever it still can.
                tokio::time::sleep(Duration::from_secs(2)).await;
                let now = requests(&work).get("r").await.expect("get");
                let launched = moto_instances(&work, &uid(&mr)).await.len();
                match check.resource {
                    "machinetemplates/status" => {
                        let mt = Api::<hostforge::api::MachineTemplate>::namespaced(
                            work.client.clone(),
                            &work.namespace,
                        )
                        .get("compute")
                        .await
                        .expect("template");
                        assert!(
                            mt.status.is_none(),
                            "{what}: template status written anyway"
                        );
                    }
                    "machinerequests" | "leases" => {
                        assert!(
                            now.metadata.finalizers.is_none() && now.status.is_none(),
                            "{what}: request reconciled anyway"
                        );
                        assert_eq!(launched, 0, "{what}");
                        if check.resource == "leases" {
                            assert!(!op.log().contains("became leader"));
                        }
                    }
                    "machinerequests/status" => {
                        assert!(now.status.is_none(), "{what}");
                        assert_eq!(
                            launched, 0,
                            "{what}: launched without recording the intent first"
                        );
                    }
                    "secrets" => {
                        let reason = support::machines::condition(&now, "Ready").map(|(_, r)| r);
                        assert_eq!(reason.as_deref(), Some("UserDataUnavailable"), "{what}");
                        assert_eq!(launched, 0, "{what}");
                    }
                    "events" => {
                        // Events are best effort: the request still comes up, but nobody sees why.
                        wait_request(&work, "r", "Ready", WAIT, is_ready).await;
                        assert!(events(&work).is_empty(), "{what}: events recorded anyway");
                    }
                    other => panic!("no symptom check for {other}"),
                }
            }
            Scenario::ScaleDownAndReturn => {
                let mr = create_request(&work, "r", "compute", 3, true).await;
                let mr2 = wait_request(&work, "r", "Ready with 3", WAIT, is_ready).await;
                let returned = status_live(&mr2).into_iter().next().expect("a machine");
                patch_spec(
                    &work,
                    "r",
                    json!({"count": 1, "returnMachines": [returned]}),
                )
                .await;
                assert!(
                    op.wait_log(check.forbidden, Duration::from_secs(30)).await,
                    "{what}: no 403 seen:\n{}",
                    op.log()
                );
                assert!(
                    events(&work).iter().all(|e| e["series"].is_null()),
                    "{what}: a series was recorded anyway"
                );
                assert!(!moto_instances(&work, &uid(&mr)).await.is_empty());
            }
            Scenario::Renew => {
                assert!(
                    op.wait_log("became leader", Duration::from_secs(30)).await,
                    "{}",
                    op.log()
                );
                let status = op.wait_exit(Duration::from_secs(20)).await;
                assert!(
                    status.is_some_and(|s| !s.success()),
                    "{what}: kept leading without renewing:\n{}",
                    op.log()
                );
                assert!(
                    op.log().contains(check.forbidden) && op.log().contains("lost leadership"),
                    "{}",
                    op.log()
                );
            }
        }
        drop(op);
        kubectl_replace(&env, original);
        wait_can_i(&env, &chart, &check.can_i, true).await;
        eprintln!(
            "without {what}: {:?} fails as expected ({:?})",
            check.scenario,
            t.elapsed()
        );
    }
    eprintln!("RBAC proof took {:?}", started.elapsed());
}

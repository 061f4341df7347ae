//! The Helm chart (charts/hostforge) with the Go-built helm and kubectl on the
//! real apiserver: lint and render, install / upgrade / uninstall, schema
//! errors, and RBAC proven rather than assumed: the operator runs with a
//! TokenRequest token of the chart's ServiceAccount through a request
//! lifecycle, then each rule of the chart's roles is removed in turn and the
//! part of the lifecycle that needs it is shown to fail.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use hostforge_testbed::cli::{helm, helm_ok, kubectl_replace, service_account_kubeconfig};
use hostforge_testbed::forwarder::{FaultRule, Forwarder};
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, moto_instances, moto_live, patch_spec, requests,
    status_live, uid, wait_request,
};
use hostforge_testbed::operator::quick_config;
use hostforge_testbed::OperatorProcess;
use hostforge_testbed::{repo_path, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use serde_json::{json, Value};

mod dashboard;
mod rbac;

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

/// The AWS operations the adapter calls: every `calls.run("Operation", …)` and
/// `calls.run_for("Operation", …)` in src/provider/aws and its folders (each
/// call site goes through one of those wrappers).
fn aws_operations_called() -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    let mut dirs = vec![repo_path("src/provider/aws")];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/provider/aws").flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path);
            }
        }
    }
    for path in files {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        // `Calls::run` and `Calls::run_for` (a call that also costs
        // instance tokens) both name the operation first.
        for call in [".run(", ".run_for("] {
            for (i, _) in text.match_indices(call) {
                let rest = text[i + call.len()..].trim_start();
                if let Some(quoted) = rest.strip_prefix('"') {
                    if let Some(end) = quoted.find('"') {
                        ops.insert(quoted[..end].to_string());
                    }
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
            if let Some(op) = a
                .strip_prefix("ec2:")
                .or_else(|| a.strip_prefix("ssm:"))
                .or_else(|| a.strip_prefix("sqs:"))
            {
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
        "docs/iam-policy.json must list exactly the EC2/SSM/SQS calls in src/provider/aws"
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

    // Namespace mode: Roles, the operator told to watch that namespace.
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
            "--set",
            "config.maxConcurrentReconciles=64",
            "--set-json",
            r#"config.providers=[{"name":"aws-default","type":"aws","region":"us-east-1","interruptionQueue":"hf-demo"}]"#,
        ],
    );
    let docs = documents(&out);
    let cm = find(&docs, "ConfigMap")[0];
    let config = cm["data"]["config.yaml"].as_str().expect("config.yaml");
    let parsed =
        hostforge::config::OperatorConfig::from_yaml(config).expect("the operator reads it");
    assert_eq!(parsed.max_kube_requests_in_flight, 8, "{config}");
    assert_eq!(parsed.max_concurrent_reconciles, 64, "{config}");
    assert_eq!(
        parsed.interruption_queue("aws-default"),
        Some(&hostforge::config::QueueRef::Name("hf-demo".into())),
        "{config}"
    );
    // Namespace mode: cluster-wide, only `get` on namespaces/kube-system
    // (this cluster's identity)...
    let cluster_roles = find(&docs, "ClusterRole");
    assert_eq!(cluster_roles.len(), 1, "{cluster_roles:#?}");
    assert_eq!(
        cluster_roles[0]["rules"],
        json!([{"apiGroups": [""], "resources": ["namespaces"], "resourceNames": ["kube-system"], "verbs": ["get"]}])
    );
    assert_eq!(find(&docs, "ClusterRoleBinding").len(), 1);
    // ...and nothing cluster-wide once clusterId says who the cluster is.
    let with_id = documents(&helm_ok(
        &env,
        &[
            "template",
            "demo",
            &c,
            "--set",
            "config.clusterName=demo",
            "--set",
            "config.clusterId=prod-east-2026",
            "--set",
            "watchNamespace=team-a",
        ],
    ));
    assert!(
        find(&with_id, "ClusterRole").is_empty() && find(&with_id, "ClusterRoleBinding").is_empty()
    );
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

/// `rbac.secretNamespaces`: Secrets can be read in the listed namespaces only
/// (a Role + RoleBinding each), not cluster-wide; and a provider's tenant
/// `policy` reaches the operator's config.
#[tokio::test]
async fn secret_reads_can_be_bound_to_listed_namespaces() {
    let env = TestEnv::new("chart-secret-ns").await;
    env.install_crds().await;
    let ns = env.namespace.as_str();
    let c = chart();
    let release = "secretns";
    helm_ok(
        &env,
        &[
            "install",
            release,
            &c,
            "-n",
            ns,
            "--set",
            "config.clusterName=secret-ns",
            "--set",
            &format!("rbac.secretNamespaces={{{ns}}}"),
            "--set-json",
            &format!(
                r#"config.providers=[{{"name":"a","type":"aws","region":"us-east-1","policy":{{"namespaces":["{ns}"],"namespaceSelector":{{"matchLabels":{{"tier":"gold"}}}},"imageOwners":["amazon"]}}}}]"#
            ),
        ],
    );
    let user = format!("system:serviceaccount:{ns}:{release}-hostforge");
    let can_i = |namespace: &str| {
        let out = env.kubectl(&[
            "auth", "can-i", "get", "secrets", "-n", namespace, "--as", &user,
        ]);
        String::from_utf8_lossy(&out.stdout).trim() == "yes"
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !can_i(ns) {
        assert!(Instant::now() < deadline, "no get secrets in {ns}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!can_i("kube-system"), "secrets readable outside the list");
    assert!(!can_i("default"), "secrets readable outside the list");
    // The selector needs the namespaces' labels.
    let out = env.kubectl(&["auth", "can-i", "get", "namespaces/default", "--as", &user]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");
    // The operator's other cluster-wide rights are still there.
    let out = env.kubectl(&[
        "auth",
        "can-i",
        "list",
        "machinetemplates.hostforge.io",
        "-A",
        "--as",
        &user,
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "yes");

    let config = env.kubectl_ok(&[
        "get",
        "-n",
        ns,
        "configmap",
        &format!("{release}-hostforge"),
        "-o",
        "jsonpath={.data.config\\.yaml}",
    ]);
    let parsed = hostforge::config::OperatorConfig::from_yaml(&config)
        .unwrap_or_else(|e| panic!("chart config rejected: {e}\n{config}"));
    let policy = parsed.tenant_policy("a").expect("the policy is rendered");
    assert!(policy.namespaces.as_ref().is_some_and(|n| n.contains(ns)));
    assert!(policy.needs_namespace_labels());
    assert!(policy
        .image_owners
        .as_ref()
        .is_some_and(|o| o.contains("amazon")));

    // Namespace mode already confines Secret reads: both at once is a mistake.
    let out = helm(
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
            "rbac.secretNamespaces={team-b}",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("rbac.secretNamespaces is for the cluster-wide mode"));
    helm_ok(&env, &["uninstall", release, "-n", ns]);
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

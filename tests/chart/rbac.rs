//! RBAC proven rather than assumed: the operator runs with a TokenRequest
//! token of the chart's ServiceAccount through a request lifecycle, then each
//! rule of the chart's roles is removed in turn and the part of the
//! lifecycle that needs it is shown to fail.

use super::*;

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
    /// Two requests are created while a third's launch is out, so they
    /// share one call (a LaunchGroup), which the sweep deletes afterwards.
    Coalesce,
}

/// Creates the user-data Secret and the template of the lifecycle.
async fn template_with_user_data(env: &TestEnv) {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "bootstrap", "labels": {"hostforge.io/user-data": "true"}},
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
fn operator_as_sa(work: &TestEnv, chart: &Installed, name: &str) -> OperatorProcess {
    OperatorProcess::replica(
        work,
        name,
        &quick_config(work),
        &chart.kubeconfig,
        &chart.lease_args(),
    )
}

/// Starts the operator as the chart's ServiceAccount with EC2 behind a
/// forwarder that holds the first RunInstances, and quick group collection.
fn coalescing_operator(
    work: &TestEnv,
    chart: &Installed,
    name: &str,
) -> (Forwarder, OperatorProcess) {
    let fwd = Forwarder::start(&work.bed.moto_url);
    fwd.add_fault(FaultRule::forward_then_hold("RunInstances", Duration::from_secs(6)).times(1));
    let cfg = format!(
        "{}gcGracePeriod: 1s\nfullSweepInterval: 2s\n",
        quick_config(work).replace(&work.bed.moto_url, fwd.endpoint())
    );
    let op = OperatorProcess::replica(work, name, &cfg, &chart.kubeconfig, &chart.lease_args());
    (fwd, op)
}

/// The coalescing lifecycle: `first` launches (held), `second` and `third`
/// are created while it is out and share the next call.
async fn coalesce(work: &TestEnv, fwd: &Forwarder) {
    create_request(work, "first", "compute", 1, true).await;
    let deadline = Instant::now() + WAIT;
    while fwd.calls("RunInstances") == 0 {
        assert!(Instant::now() < deadline, "the first launch never went out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for name in ["second", "third"] {
        create_request(work, name, "compute", 1, true).await;
    }
    for name in ["first", "second", "third"] {
        wait_request(work, name, "Ready", WAIT, is_ready).await;
    }
}

fn launch_groups(work: &TestEnv) -> Vec<Value> {
    let out = work.kubectl_ok(&["get", "launchgroups", "-n", &work.namespace, "-o", "json"]);
    let list: Value = serde_json::from_str(&out).expect("launch groups json");
    list["items"].as_array().cloned().unwrap_or_default()
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
        .0
        .is_some_and(|s| s.success()));
    // Coalesced launches with the full role: a group is written, used and
    // deleted, and nothing is forbidden.
    let grouped = TestEnv::new("rbac-group").await;
    template_with_user_data(&grouped).await;
    let (fwd, mut op) = coalescing_operator(&grouped, &chart, "rbac-group");
    assert!(
        op.wait_log("became leader", Duration::from_secs(60)).await,
        "{}",
        op.log()
    );
    coalesce(&grouped, &fwd).await;
    assert!(op.wait_log("launching a group", WAIT).await, "{}", op.log());
    assert!(
        op.wait_log("deleted settled launch groups", WAIT).await,
        "{}",
        op.log()
    );
    assert!(launch_groups(&grouped).is_empty());
    assert!(
        !op.log().contains("forbidden"),
        "a call was forbidden:\n{}",
        op.log()
    );
    drop(op);
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
                resource: "launchgroups",
                verbs: &["list"],
                can_i: s(&["list", "launchgroups.hostforge.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot list resource "launchgroups""#,
                scenario: Scenario::Request,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "launchgroups",
                verbs: &["create"],
                can_i: s(&["create", "launchgroups.hostforge.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot create resource "launchgroups""#,
                scenario: Scenario::Coalesce,
            },
            RuleCheck {
                role: "ClusterRole",
                resource: "launchgroups",
                verbs: &["delete"],
                can_i: s(&["delete", "launchgroups.hostforge.io", &ns_flag(work_ns)]),
                forbidden: r#"cannot delete resource "launchgroups""#,
                scenario: Scenario::Coalesce,
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
                role: "ClusterRole",
                resource: "namespaces",
                verbs: &["get"],
                can_i: s(&["get", "namespaces/kube-system"]),
                forbidden: r#"cannot get resource "namespaces""#,
                scenario: Scenario::Start,
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

        let what = format!("{} {:?} on {}", check.role, check.verbs, check.resource);
        let (fwd, mut op) = match check.scenario {
            Scenario::Coalesce => {
                let (fwd, op) = coalescing_operator(&work, &chart, &format!("rbac-{index}"));
                (Some(fwd), op)
            }
            _ => (
                None,
                operator_as_sa(&work, &chart, &format!("rbac-{index}")),
            ),
        };
        match check.scenario {
            Scenario::Start => {
                let status = op.wait_exit(Duration::from_secs(30)).await;
                assert!(
                    status.is_some_and(|s| !s.success()),
                    "{what}: the operator started anyway:\n{}",
                    op.log()
                );
                assert!(op.log().contains(check.forbidden), "{}", op.log());
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
                        let reason =
                            hostforge_testbed::machines::condition(&now, "Ready").map(|(_, r)| r);
                        assert_eq!(reason.as_deref(), Some("UserDataUnavailable"), "{what}");
                        assert_eq!(launched, 0, "{what}");
                    }
                    "launchgroups" => {
                        // Without the listing, the sweep collects no group and
                        // lets no group's machine go; a request launching alone
                        // still comes up.
                        wait_request(&work, "r", "Ready", WAIT, is_ready).await;
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
            Scenario::Coalesce => {
                let fwd = fwd
                    .as_ref()
                    .expect("a forwarder for the coalescing scenario");
                coalesce(&work, fwd).await;
                assert!(
                    op.wait_log(check.forbidden, WAIT).await,
                    "{what}: no 403 seen:\n{}",
                    op.log()
                );
                match check.verbs {
                    // Nothing is sent for a group that could not be recorded:
                    // its batches settle alone, with their own tokens.
                    ["create"] => assert!(launch_groups(&work).is_empty(), "{what}"),
                    // The group stays; its machines stay listed by their requests.
                    _ => assert_eq!(launch_groups(&work).len(), 1, "{what}"),
                }
                for name in ["first", "second", "third"] {
                    let mr = wait_request(&work, name, "Ready", WAIT, is_ready).await;
                    assert_eq!(status_live(&mr).len(), 1, "{what}: {name}");
                }
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

/// The `get namespaces` rule the chart renders only when a provider's tenant
/// policy has a `namespaceSelector`, proven like the others: as the chart's
/// ServiceAccount, a template under such a policy becomes Ready with the
/// rule; without it the template is not Ready and says the namespace's
/// labels could not be read, and it turns Ready once the rule is back.
#[tokio::test]
async fn rbac_a_namespace_selector_policy_needs_get_namespaces() {
    use hostforge_testbed::machines::{template_is_ready, template_ready, wait_template};

    let env = TestEnv::new("chart-rbac-sel").await;
    env.install_crds().await;
    let c = chart();
    let selector = r#"{"namespaceSelector":{"matchLabels":{"hostforge.io/tenant":"rbac"}}}"#;
    helm_ok(
        &env,
        &[
            "install",
            "rbacsel",
            &c,
            "-n",
            &env.namespace,
            "--skip-crds",
            "--set",
            "config.clusterName=rbacsel",
            "--set-json",
            &format!(
                r#"config.providers=[{{"name":"aws-default","type":"aws","region":"us-east-1","policy":{selector}}}]"#
            ),
        ],
    );
    let chart = Installed {
        namespace: env.namespace.clone(),
        sa: "rbacsel-hostforge".into(),
        lease: "rbacsel-hostforge".into(),
        kubeconfig: service_account_kubeconfig(&env, &env.namespace, "rbacsel-hostforge"),
    };
    let cluster_role = get_json(&env, &["clusterrole", "rbacsel-hostforge"]);
    let rules = cluster_role["rules"].as_array().expect("rules");
    let is_selector_rule = |r: &Value| {
        r["resources"] == json!(["namespaces"])
            && r["verbs"] == json!(["get"])
            && r["resourceNames"].is_null()
    };
    let index = rules
        .iter()
        .position(is_selector_rule)
        .expect("the selector's rule is rendered");
    assert_eq!(rules.iter().filter(|r| is_selector_rule(r)).count(), 1);

    // The operator runs with the same policy (its config is the test's).
    let run = |work: &TestEnv, name: &str| {
        let config = quick_config(work).replacen(
            "imageCacheTtl:",
            &format!("    policy: {selector}\nimageCacheTtl:"),
            1,
        );
        OperatorProcess::replica(work, name, &config, &chart.kubeconfig, &chart.lease_args())
    };
    let tenant = |work: &TestEnv| {
        work.kubectl_ok(&[
            "label",
            "namespace",
            &work.namespace,
            "hostforge.io/tenant=rbac",
        ]);
    };
    let spec = json!({"image": {"ssmParameter": AL2023_PARAM},
                      "instanceTypes": [{"type": "t3.micro"}]});

    // 1. With the rule: the labelled namespace is selected, the template Ready.
    let work = TestEnv::new("rbac-sel-with").await;
    tenant(&work);
    create_template(&work, "compute", spec.clone()).await;
    let mut op = run(&work, "rbac-sel-with");
    assert!(
        op.wait_ready(Duration::from_secs(60)).await,
        "never ready:\n{}",
        op.log()
    );
    wait_template(&work, "compute", "Ready", WAIT, template_is_ready).await;
    assert!(
        !op.log().contains("forbidden"),
        "a call was forbidden:\n{}",
        op.log()
    );
    op.terminate(Duration::from_secs(30)).await;
    drop(op);

    // 2. Without it: not Ready, saying why; Ready again once it is back.
    let work = TestEnv::new("rbac-sel-without").await;
    let can_get = s_args(&["get", &format!("namespaces/{}", work.namespace)]);
    let mut reduced = cluster_role.clone();
    reduced["rules"]
        .as_array_mut()
        .expect("rules")
        .remove(index);
    kubectl_replace(&env, &reduced);
    wait_can_i(&env, &chart, &can_get, false).await;
    env.kubectl(&[
        "delete",
        "lease",
        "-n",
        &chart.namespace,
        &chart.lease,
        "--ignore-not-found",
    ]);
    tenant(&work);
    create_template(&work, "compute", spec).await;
    let mut op = run(&work, "rbac-sel-without");
    assert!(
        op.wait_ready(Duration::from_secs(60)).await,
        "never ready:\n{}",
        op.log()
    );
    let forbidden = r#"cannot get resource "namespaces""#;
    let mt = wait_template(
        &work,
        "compute",
        "Ready=False, labels unreadable",
        WAIT,
        |mt| {
            template_ready(mt).is_some_and(|(status, reason, message)| {
                status == "False" && reason == "KubeApiError" && message.contains(forbidden)
            })
        },
    )
    .await;
    let (_, _, message) = template_ready(&mt).expect("Ready");
    assert!(
        message.starts_with(&format!(
            "reading the labels of namespace {} for the operator's tenant policy",
            work.namespace
        )),
        "{message}"
    );
    kubectl_replace(&env, &cluster_role);
    wait_can_i(&env, &chart, &can_get, true).await;
    wait_template(
        &work,
        "compute",
        "Ready once the rule is back",
        WAIT,
        template_is_ready,
    )
    .await;
}

fn s_args(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

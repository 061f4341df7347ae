//! The HostFactory plugin end to end: the five operations run as HostFactory
//! runs them (`hf/scripts/<op>.sh -f input.json`, the real binary) against the
//! real apiserver, with the operator launching into moto; bad input; and
//! import-templates on IBM and open-hostfactory-plugin template files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hostforge::api::{MachineRequest, MachineTemplate};
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::hf::{expect_failure, Shim};
use hostforge_testbed::machines::{
    create_template, moto_instances, moto_live, requests, template_is_ready, uid, wait_template,
};
use hostforge_testbed::operator::quick_config;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};

mod answers;
mod at_risk;
mod drift;
mod hostile;
mod spot;

use answers::{assert_machine_shape, eventually, host, moto_facts, status_of};

const WAIT: Duration = Duration::from_secs(90);

/// Fast polls and sweeps, so the operator notices moto-side changes quickly.
fn config(env: &TestEnv) -> String {
    quick_config(env)
}

#[tokio::test]
async fn the_five_operations_drive_machines_through_the_operator() {
    let env = TestEnv::new("hf-life").await;
    env.install_crds().await;
    let op = OperatorProcess::start(&env, &config(&env)).await;
    create_template(
        &env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
            "maxMachines": 10,
        }),
    )
    .await;
    wait_template(
        &env,
        "compute",
        "Ready with its instance type's size",
        WAIT,
        |mt| {
            template_is_ready(mt)
                && mt
                    .status
                    .as_ref()
                    .is_some_and(|s| s.instance_type_info.is_some())
        },
    )
    .await;
    // The template's HostFactory priority (kept by import-templates in an
    // annotation) is passed through.
    Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .patch(
            "compute",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                json!({"metadata": {"annotations": {"hostforge.io/hf-priority": "5"}}}),
            ),
        )
        .await
        .expect("annotate the priority");
    let shim = Shim::new(&env, "");

    // getAvailableTemplates: attributes are strings in [type, value] pairs,
    // from DescribeInstanceTypes of t3.micro (2 vCPUs, 1 core, 1024 MiB).
    let templates = eventually("the priority", || {
        let a = shim.ok("getAvailableTemplates", &json!({}));
        (a["templates"][0]["priority"] == 5).then_some(a)
    })
    .await;
    assert!(templates["message"].is_string());
    let t = &templates["templates"][0];
    assert_eq!(templates["templates"].as_array().map(Vec::len), Some(1));
    assert_eq!(t["templateId"], "compute");
    assert_eq!(t["maxNumber"], 10);
    assert_eq!(t["availableNumber"], 10);
    assert_eq!(t["attributes"]["type"], json!(["String", "X86_64"]));
    assert_eq!(t["attributes"]["ncpus"], json!(["Numeric", "2"]));
    assert_eq!(t["attributes"]["ncores"], json!(["Numeric", "1"]));
    assert_eq!(t["attributes"]["nram"], json!(["Numeric", "1024"]));

    // requestMachines 3, for LSF account proj-a.
    let created = shim.ok(
        "requestMachines",
        &json!({"template": {"templateId": "compute", "machineCount": 3}, "rc_account": "proj-a"}),
    );
    let req_id = created["requestId"]
        .as_str()
        .expect("requestId")
        .to_string();
    assert!(req_id.starts_with("hf-compute-"), "{req_id}");
    assert!(created["message"].is_string());
    let mr = requests(&env)
        .get(&req_id)
        .await
        .expect("the MachineRequest");
    assert_eq!(mr.labels()["hostforge.io/owner"], "hostfactory");
    assert_eq!(mr.labels()["hostforge.io/hf-provider"], "hostforge");
    assert_eq!((mr.spec.count, mr.spec.replace_lost), (3, false));
    assert_eq!(
        mr.spec.tags,
        BTreeMap::from([("RC_ACCOUNT".to_string(), "proj-a".to_string())])
    );
    let mr_uid = uid(&mr);

    // running with executing machines first, then complete with 3 × succeed.
    let poll = json!({"requests": [{"requestId": req_id}]});
    let mut seen_executing = false;
    let mut first = true;
    let deadline = Instant::now() + WAIT;
    let done = loop {
        let answer = shim.ok("getRequestStatus", &poll);
        let r = status_of(&answer, &req_id);
        if first {
            assert_eq!(r["status"], "running", "a fresh request is running: {r}");
            first = false;
        }
        let machines = r["machines"].as_array().cloned().unwrap_or_default();
        machines.iter().for_each(assert_machine_shape);
        if r["status"] == "running" {
            seen_executing |= machines.iter().any(|m| m["result"] == "executing");
            assert!(
                machines.iter().all(|m| m["result"] != "fail"),
                "no failure expected: {r}"
            );
        } else {
            break r;
        }
        assert!(Instant::now() < deadline, "request never completed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        seen_executing,
        "executing machines were reported before completion"
    );
    assert_eq!(done["status"], "complete", "{done}");
    let machines = done["machines"].as_array().cloned().expect("machines");
    assert_eq!(machines.len(), 3);
    // The dashboard's figures: three running on-demand machines of the
    // template, and one request that became Ready.
    let ns = format!("namespace=\"{}\"", env.namespace);
    let fleet = [ns.as_str(), "template=\"compute\""];
    eventually("the machines gauge", || {
        let running = op.metric(
            "hostforge_machines",
            &[
                fleet[0],
                fleet[1],
                "state=\"running\"",
                "capacity_type=\"on-demand\"",
            ],
        );
        (running == 3.0).then_some(())
    })
    .await;
    assert_eq!(
        op.metric("hostforge_request_ready_seconds_count", &fleet),
        1.0,
        "one request turned Ready once"
    );

    // The account is on every machine in EC2, as IBM's plugin tags it.
    let tagged = moto_instances(&env, &mr_uid).await;
    assert_eq!(tagged.len(), 3);
    for (id, (_, tags)) in &tagged {
        assert_eq!(
            tags.get("RC_ACCOUNT").map(String::as_str),
            Some("proj-a"),
            "{id}"
        );
    }
    for m in &machines {
        assert_eq!(m["result"], "succeed");
        assert_eq!(m["status"], "running");
        assert_eq!(m["message"], "");
        let id = m["machineId"].as_str().expect("id");
        let (dns, private_ip, public_ip, launched, state) = moto_facts(&env, id).await;
        assert_eq!(state, "running");
        assert!(!dns.is_empty());
        assert_eq!(m["name"], dns, "name is the private DNS name");
        assert_eq!(m["privateIpAddress"], private_ip);
        assert_eq!(m["publicIpAddress"], public_ip);
        assert_eq!(m["launchtime"], launched, "launch time in epoch seconds");
    }

    // The template controller counts them (request changes trigger it).
    let available = eventually("availableNumber 7", || {
        let a = shim.ok("getAvailableTemplates", &json!({}));
        (a["templates"][0]["availableNumber"] == 7).then_some(a)
    })
    .await;
    assert_eq!(available["templates"][0]["maxNumber"], 10);

    // requestReturnMachines of two: a ret- id that reaches complete.
    let (give_back, keep) = machines.split_at(2);
    let kept_id = keep[0]["machineId"].as_str().expect("id").to_string();
    let returned = shim.ok(
        "requestReturnMachines",
        &json!({"machines": give_back.iter().map(host).collect::<Vec<_>>()}),
    );
    let ret_id = returned["requestId"]
        .as_str()
        .expect("requestId")
        .to_string();
    assert!(ret_id.starts_with("ret-"), "{ret_id}");
    assert!(returned["message"].is_string());
    let mr = requests(&env).get(&req_id).await.expect("request");
    assert_eq!(mr.spec.count, 1, "count lowered with the return");
    let ret_poll = json!({"requests": {"requestId": ret_id}});
    let ret_done = eventually("the return to complete", || {
        let r = status_of(&shim.ok("getRequestStatus", &ret_poll), &ret_id);
        r["machines"]
            .as_array()
            .into_iter()
            .flatten()
            .for_each(assert_machine_shape);
        (r["status"] == "complete").then_some(r)
    })
    .await;
    let ret_machines = ret_done["machines"].as_array().cloned().expect("machines");
    assert_eq!(ret_machines.len(), 2);
    for (m, asked) in ret_machines.iter().zip(give_back) {
        assert_eq!(m["result"], "succeed");
        assert_eq!(m["machineId"], asked["machineId"]);
        assert_eq!(m["name"], asked["name"]);
        let (.., state) = moto_facts(&env, m["machineId"].as_str().expect("id")).await;
        assert_eq!(state, "terminated");
    }
    // The gauge follows: one running, two terminated (kept in status).
    eventually("the machines gauge after the return", || {
        let m = |state: &str| {
            let state = format!("state=\"{state}\"");
            op.metric("hostforge_machines", &[fleet[0], fleet[1], state.as_str()])
        };
        (m("running") == 1.0 && m("terminated") == 2.0).then_some(())
    })
    .await;
    // Not replaced: after several sweeps only the third machine lives.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let live = moto_live(&env, &mr_uid).await;
    assert_eq!(live.into_iter().collect::<Vec<_>>(), [kept_id.as_str()]);
    assert_eq!(
        moto_instances(&env, &mr_uid).await.len(),
        3,
        "nothing launched"
    );
    let create_view = status_of(&shim.ok("getRequestStatus", &poll), &req_id);
    assert_eq!(create_view["status"], "complete");
    assert_eq!(create_view["machines"].as_array().map(Vec::len), Some(1));
    // Returning again changes nothing (count stays 1).
    shim.ok(
        "requestReturnMachines",
        &json!({"machines": [host(&give_back[0])]}),
    );
    assert_eq!(
        requests(&env)
            .get(&req_id)
            .await
            .expect("request")
            .spec
            .count,
        1
    );

    // A second request of 2, then one instance stopped and one terminated in moto.
    let second = shim.ok(
        "requestMachines",
        &json!({"template": {"templateId": "compute", "machineCount": 2}}),
    );
    let second_id = second["requestId"].as_str().expect("id").to_string();
    let second_poll = json!({"requests": [{"requestId": second_id}]});
    let second_done = eventually("the second request to complete", || {
        let r = status_of(&shim.ok("getRequestStatus", &second_poll), &second_id);
        (r["status"] == "complete").then_some(r)
    })
    .await;
    let fine = second_done["machines"][0].clone();
    let killed = second_done["machines"][1].clone();
    let held: Vec<Value> = [&keep[0], &fine, &killed].into_iter().map(host).collect();
    let all_held = json!({"machines": held});
    let quiet = shim.ok("getReturnRequests", &all_held);
    assert_eq!(quiet["status"], "complete");
    assert!(quiet["message"].is_string());
    assert_eq!(quiet["requests"], json!([]), "healthy hosts are not listed");

    env.ec2()
        .stop_instances()
        .instance_ids(&kept_id)
        .send()
        .await
        .expect("StopInstances");
    env.ec2()
        .terminate_instances()
        .instance_ids(killed["machineId"].as_str().expect("id"))
        .send()
        .await
        .expect("TerminateInstances");
    let reclaimed = eventually("getReturnRequests to list both", || {
        let a = shim.ok("getReturnRequests", &all_held);
        (a["requests"].as_array().map(Vec::len) == Some(2)).then_some(a)
    })
    .await;
    let listed: BTreeMap<String, Value> = reclaimed["requests"]
        .as_array()
        .expect("requests")
        .iter()
        .map(|r| {
            (
                r["machine"].as_str().unwrap_or_default().to_string(),
                r.clone(),
            )
        })
        .collect();
    for gone in [&keep[0], &killed] {
        let name = gone["name"].as_str().expect("name");
        let r = listed
            .get(name)
            .unwrap_or_else(|| panic!("{name} not listed: {reclaimed}"));
        assert_eq!(r["gracePeriod"], 0);
        assert!(r["gracePeriod"].is_i64());
        assert_eq!(r["machineId"], gone["machineId"]);
    }
    assert!(!listed.contains_key(fine["name"].as_str().expect("name")));

    // The create request reports its lost machine as a failure with a message.
    let lost_view = eventually("the lost machine to fail", || {
        let r = status_of(&shim.ok("getRequestStatus", &second_poll), &second_id);
        (r["status"] == "complete_with_error").then_some(r)
    })
    .await;
    let failed: Vec<&Value> = lost_view["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .filter(|m| m["result"] == "fail")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["machineId"], killed["machineId"]);
    assert_machine_shape(failed[0]);
    assert!(
        shim.log().contains("machines requested"),
        "logs go to HF_PROVIDER_LOGDIR"
    );
}

#[tokio::test]
async fn bad_input_fails_with_one_line_and_creates_nothing() {
    let env = TestEnv::new("hf-bad").await;
    env.install_crds().await;
    create_template(
        &env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "maxMachines": 4,
        }),
    )
    .await;
    let shim = Shim::new(&env, "");

    let no_file = expect_failure("requestMachines", shim.run_args("requestMachines", &[]));
    assert!(no_file.contains("no input file"), "{no_file}");
    let missing = expect_failure(
        "getRequestStatus",
        shim.run_args("getRequestStatus", &["-f", "/nonexistent/input.json"]),
    );
    assert!(missing.contains("cannot read input file"), "{missing}");
    let bad_json = shim.conf_dir.join("bad.json");
    std::fs::write(&bad_json, "{\"template\": {\"templateId\": ").expect("write");
    let invalid = expect_failure(
        "requestMachines",
        shim.run_file("requestMachines", &bad_json),
    );
    assert!(invalid.contains("invalid input"), "{invalid}");

    let ask = |id: &str, n: i64| json!({"template": {"templateId": id, "machineCount": n}});
    let unknown = shim.fails("requestMachines", &ask("gpu", 1));
    assert!(unknown.contains("unknown templateId \"gpu\""), "{unknown}");
    assert!(shim
        .fails("requestMachines", &ask("compute", 0))
        .contains("at least 1"));
    let above = shim.fails("requestMachines", &ask("compute", 5));
    assert!(above.contains("above maxNumber 4"), "{above}");
    let wrong_shape = shim.fails(
        "requestMachines",
        &json!({"template": {"templateId": "compute"}}),
    );
    assert!(wrong_shape.contains("machineCount"), "{wrong_shape}");

    let unknown_req = shim.fails(
        "getRequestStatus",
        &json!({"requests": [{"requestId": "hf-nope-12345"}, {"requestId": "ret-0000000000000000"}]}),
    );
    assert!(unknown_req.contains("unknown requestId"), "{unknown_req}");
    let unknown_host = shim.fails(
        "requestReturnMachines",
        &json!({"machines": [{"name": "ip-10-0-0-1.ec2.internal", "machineId": "i-0123456789abcdef0"}]}),
    );
    assert!(
        unknown_host.contains("i-0123456789abcdef0"),
        "{unknown_host}"
    );

    // A missing configuration is one line too.
    let out = std::process::Command::new("sh")
        .arg(hostforge_testbed::repo_path(
            "hf/scripts/getAvailableTemplates.sh",
        ))
        .env("HOSTFORGE_BIN", hostforge_testbed::operator::operator_bin())
        .env_remove("HF_PROVIDER_CONFDIR")
        .env_remove("PRO_CONF_DIR")
        .env_remove("HOSTFORGE_HF_CONFIG")
        .output()
        .expect("run script");
    let unconfigured = expect_failure(
        "getAvailableTemplates",
        hostforge_testbed::hf::Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
    );
    assert!(
        unconfigured.contains("HF_PROVIDER_CONFDIR"),
        "{unconfigured}"
    );

    let created = requests(&env)
        .list(&ListParams::default())
        .await
        .expect("list requests");
    assert!(created.items.is_empty(), "nothing is created on bad input");

    // The template is offered but not Ready without an operator: nothing available.
    let offered = shim.ok("getAvailableTemplates", &json!({}));
    assert_eq!(offered["templates"][0]["availableNumber"], 0);
    assert!(offered["message"]
        .as_str()
        .is_some_and(|m| m.contains("compute is not ready")));
}

/// Copies a fixture folder, filling in the simulator's ids.
fn fixture(src: &Path, dst: &Path, ids: &[(&str, &str)]) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for entry in std::fs::read_dir(src).expect("fixture dir") {
        let path = entry.expect("entry").path();
        let mut text = std::fs::read_to_string(&path).expect("fixture");
        for (k, v) in ids {
            text = text.replace(k, v);
        }
        std::fs::write(dst.join(path.file_name().expect("name")), text).expect("write");
    }
}

#[tokio::test]
async fn imported_ibm_and_plugin_templates_apply_and_become_ready() {
    let env = TestEnv::new("hf-import").await;
    env.install_crds().await;
    let _op = OperatorProcess::start(&env, &config(&env)).await;
    let (subnet, group) = env.default_subnet_and_group().await;
    let ami = env.al2023_ami().await;
    let ids = [
        ("@SUBNET@", subnet.as_str()),
        ("@SG@", group.as_str()),
        ("@AMI@", ami.as_str()),
    ];
    let work = env.bed.dir.join(format!("import-{}", env.namespace));
    let fixtures = hostforge_testbed::repo_path("tests/fixtures/hostfactory");
    fixture(&fixtures.join("ibm"), &work.join("ibm"), &ids);
    fixture(&fixtures.join("ohfp"), &work.join("ohfp"), &ids);
    let out_dir = work.join("manifests");

    let out = std::process::Command::new(hostforge_testbed::operator::operator_bin())
        .args([
            "hf",
            "import-templates",
            "--namespace",
            &env.namespace,
            "--out",
        ])
        .arg(&out_dir)
        .arg(work.join("ibm/awsprov_templates.json"))
        .arg(work.join("ohfp"))
        .output()
        .expect("run import-templates");
    let report = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "import failed: {report}");
    // Every field that is not mapped is named.
    for expected in [
        "Template-OnDemand-1: attributes: not needed",
        "Template-Spot-Fleet: fleetRole: not needed",
        "Template-Spot-Fleet: userData: not mapped",
        "EC2FleetInstant: fleetType: not needed",
        "RunInstances: overridden by",
        "RunInstances: providerApi: RunInstances launches one capacity type",
    ] {
        assert!(
            report.contains(expected),
            "{expected:?} not in report:\n{report}"
        );
    }
    let mut files: Vec<String> = std::fs::read_dir(&out_dir)
        .expect("manifests")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "ec2fleetinstant.yaml",
            "runinstances.yaml",
            "template-ondemand-1.yaml",
            "template-spot-fleet.yaml"
        ]
    );

    env.kubectl_ok(&[
        "apply",
        "-n",
        &env.namespace,
        "-f",
        out_dir.to_str().expect("path"),
    ]);
    let names = [
        "ec2fleetinstant",
        "runinstances",
        "template-ondemand-1",
        "template-spot-fleet",
    ];
    for name in names {
        wait_template(&env, name, "Ready", WAIT, template_is_ready).await;
    }
    let api: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
    let od = api.get("template-ondemand-1").await.expect("template");
    assert_eq!(od.spec.max_machines, Some(5));
    assert_eq!(od.spec.subnet_ids, [subnet.as_str()]);
    assert_eq!(od.spec.tags.get("team").map(String::as_str), Some("hpc"));
    let ri = api.get("runinstances").await.expect("template");
    assert_eq!(
        ri.spec.max_machines,
        Some(4),
        "the inst_templates file wins"
    );
    let secret_ref = ri
        .spec
        .user_data
        .as_ref()
        .expect("user data")
        .secret_ref
        .clone();
    let secret: k8s_openapi::api::core::v1::Secret =
        Api::namespaced(env.client.clone(), &env.namespace)
            .get(&secret_ref.name)
            .await
            .expect("user data secret");
    assert_eq!(
        secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("hostforge.io/user-data"))
            .map(String::as_str),
        Some("true"),
        "the operator reads only Secrets labelled as user data"
    );
    let data = secret.data.expect("data")[&secret_ref.key].0.clone();
    assert!(String::from_utf8_lossy(&data).contains("joining"));

    // HostFactory sees the original templateIds.
    let shim = Shim::new(&env, "templateSelector: hostforge.io/hf-offered=true\n");
    let offered = shim.ok("getAvailableTemplates", &json!({}));
    let mut ids: Vec<&str> = offered["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .filter_map(|t| t["templateId"].as_str())
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "EC2FleetInstant",
            "RunInstances",
            "Template-OnDemand-1",
            "Template-Spot-Fleet"
        ]
    );
    let created = shim.ok(
        "requestMachines",
        &json!({"template": {"templateId": "Template-OnDemand-1", "machineCount": 1}}),
    );
    let mr: MachineRequest = requests(&env)
        .get(created["requestId"].as_str().expect("id"))
        .await
        .expect("request");
    assert_eq!(mr.spec.template_ref.name, "template-ondemand-1");
}

/// A request's own tags (where rc_account goes) follow the template's tag
/// rules at admission: reserved prefixes in any case and empty keys refused.
#[tokio::test]
async fn request_tags_with_reserved_keys_are_refused_at_admission() {
    let env = TestEnv::new("hf-reqtags").await;
    env.install_crds().await;
    let create = |tags: Value| {
        let mr: MachineRequest = serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
            "metadata": {"name": "tagged"},
            "spec": {"templateRef": {"name": "compute"}, "count": 1, "tags": tags},
        }))
        .expect("request");
        let api = requests(&env);
        async move { api.create(&kube::api::PostParams::default(), &mr).await }
    };
    for (tags, words) in [
        (
            json!({"HostForge.io/request": "x"}),
            "tags: keys starting with hostforge.io/ or aws: (in any case) are reserved",
        ),
        (
            json!({"aws:cost": "x"}),
            "tags: keys starting with hostforge.io/ or aws: (in any case) are reserved",
        ),
        (json!({"": "x"}), "tags: a key must not be empty"),
    ] {
        let err = create(tags.clone())
            .await
            .expect_err("refused at admission")
            .to_string();
        assert!(err.contains(words), "{tags}: {err}");
    }
    let ok = create(json!({"RC_ACCOUNT": "proj-a"}))
        .await
        .expect("a plain tag is accepted");
    assert_eq!(ok.spec.tags["RC_ACCOUNT"], "proj-a");
}

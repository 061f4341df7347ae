//! The HostFactory plugin end to end: the five operations run as HostFactory
//! runs them (`hf/scripts/<op>.sh -f input.json`, the real binary) against the
//! real apiserver, with the operator launching into moto; bad input; and
//! import-templates on IBM and open-hostfactory-plugin template files.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use hostforge::api::{MachineRequest, MachineTemplate};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::{json, Value};
use support::forwarder::Forwarder;
use support::hf::{expect_failure, Shim};
use support::machines::{create_template, moto_instances, moto_live, requests, uid};
use support::operator::default_config;
use support::{Operator, TestEnv, AL2023_PARAM};

const WAIT: Duration = Duration::from_secs(90);

/// Fast polls and sweeps, so the operator notices moto-side changes quickly.
fn config(env: &TestEnv) -> String {
    format!(
        "{}pollInterval: 500ms\nsweepInterval: 2s\n",
        default_config(env, "5m")
    )
}

/// Polls `f` until it returns Some, or fails after `WAIT` naming `what`.
async fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn wait_template<F: Fn(&MachineTemplate) -> bool>(
    env: &TestEnv,
    name: &str,
    what: &str,
    pred: F,
) -> MachineTemplate {
    let api: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + WAIT;
    loop {
        let mt = api.get(name).await.expect("get template");
        if pred(&mt) {
            return mt;
        }
        assert!(
            Instant::now() < deadline,
            "template {name} never became {what}: {:?}",
            mt.status
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn is_ready(mt: &MachineTemplate) -> bool {
    mt.status.as_ref().is_some_and(|st| {
        st.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// What moto says about an instance: (private DNS, private IP, public IP,
/// launch time in epoch seconds, state).
async fn moto_facts(env: &TestEnv, id: &str) -> (String, String, String, i64, String) {
    let out = env
        .ec2()
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .expect("DescribeInstances");
    let i = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .next()
        .expect("instance in moto")
        .clone();
    (
        i.private_dns_name().unwrap_or_default().to_string(),
        i.private_ip_address().unwrap_or_default().to_string(),
        i.public_ip_address().unwrap_or_default().to_string(),
        i.launch_time().map(|t| t.secs()).unwrap_or_default(),
        i.state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
    )
}

fn status_of(answer: &Value, id: &str) -> Value {
    answer["requests"]
        .as_array()
        .and_then(|rs| rs.iter().find(|r| r["requestId"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("{id} not in {answer}"))
}

/// Every documented field of a getRequestStatus machine, with its type.
fn assert_machine_shape(m: &Value) {
    for key in [
        "machineId",
        "name",
        "result",
        "status",
        "privateIpAddress",
        "publicIpAddress",
        "message",
    ] {
        assert!(m[key].is_string(), "{key} is not a string in {m}");
    }
    assert!(
        m["launchtime"].is_i64(),
        "launchtime is not an integer in {m}"
    );
    if m["result"] == "fail" {
        assert_ne!(m["message"], "", "fail without a message: {m}");
    }
}

fn host(m: &Value) -> Value {
    json!({"name": m["name"], "machineId": m["machineId"]})
}

#[tokio::test]
async fn the_five_operations_drive_machines_through_the_operator() {
    let env = TestEnv::new("hf-life").await;
    env.install_crds().await;
    let _op = Operator::start(&env, &config(&env)).await;
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
        |mt| {
            is_ready(mt)
                && mt
                    .status
                    .as_ref()
                    .is_some_and(|s| s.instance_type_info.is_some())
        },
    )
    .await;
    let shim = Shim::new(&env, "");

    // getAvailableTemplates: attributes are strings in [type, value] pairs,
    // from DescribeInstanceTypes of t3.micro (2 vCPUs, 1 core, 1024 MiB).
    let templates = shim.ok("getAvailableTemplates", &json!({}));
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

    // requestMachines 3.
    let created = shim.ok(
        "requestMachines",
        &json!({"template": {"templateId": "compute", "machineCount": 3}}),
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
        .arg(support::repo_path("hf/scripts/getAvailableTemplates.sh"))
        .env("HOSTFORGE_BIN", support::operator::operator_bin())
        .env_remove("HF_PROVIDER_CONFDIR")
        .env_remove("PRO_CONF_DIR")
        .env_remove("HOSTFORGE_HF_CONFIG")
        .output()
        .expect("run script");
    let unconfigured = expect_failure(
        "getAvailableTemplates",
        support::hf::Outcome {
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
    let _op = Operator::start(&env, &config(&env)).await;
    let (subnet, group) = env.default_subnet_and_group().await;
    let ami = env.al2023_ami().await;
    let ids = [
        ("@SUBNET@", subnet.as_str()),
        ("@SG@", group.as_str()),
        ("@AMI@", ami.as_str()),
    ];
    let work = env.bed.dir.join(format!("import-{}", env.namespace));
    let fixtures = support::repo_path("tests/fixtures/hostfactory");
    fixture(&fixtures.join("ibm"), &work.join("ibm"), &ids);
    fixture(&fixtures.join("ohfp"), &work.join("ohfp"), &ids);
    let out_dir = work.join("manifests");

    let out = std::process::Command::new(support::operator::operator_bin())
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
        wait_template(&env, name, "Ready", is_ready).await;
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

/// EC2's answer to DescribeSpotInstanceRequests with one request carrying an
/// interruption notice for `instance`, given at `noticed_at` (moto keeps
/// every spot request `fulfilled`, so the forwarder answers for it).
fn noticed_spot_request(instance: &str, noticed_at: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <DescribeSpotInstanceRequestsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>\
         <spotInstanceRequestSet><item>\
         <spotInstanceRequestId>sir-1a2b3c4d</spotInstanceRequestId>\
         <state>active</state>\
         <status><code>marked-for-termination</code><updateTime>{noticed_at}</updateTime>\
         <message>Your Spot Instance is marked to be terminated.</message></status>\
         <instanceId>{instance}</instanceId>\
         </item></spotInstanceRequestSet>\
         </DescribeSpotInstanceRequestsResponse>"
    )
}

#[tokio::test]
async fn a_spot_interruption_notice_is_announced_with_the_rest_of_the_warning() {
    let env = TestEnv::new("hf-spot").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let config = format!(
        "clusterName: {ns}\nproviders:\n  - name: aws-default\n    type: aws\n    region: {region}\n    \
         endpointUrl: {url}\npollInterval: 500ms\nsweepInterval: 2s\nspotNoticeInterval: 500ms\n",
        ns = env.namespace,
        region = support::REGION,
        url = fwd.endpoint(),
    );
    let _op = Operator::start(&env, &config).await;
    create_template(
        &env,
        "spot",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "capacityType": "spot",
        }),
    )
    .await;
    wait_template(&env, "spot", "Ready", is_ready).await;
    let shim = Shim::new(&env, "");
    let created = shim.ok(
        "requestMachines",
        &json!({"template": {"templateId": "spot", "machineCount": 2}}),
    );
    let req_id = created["requestId"]
        .as_str()
        .expect("requestId")
        .to_string();
    let poll = json!({"requests": [{"requestId": req_id}]});
    let mut machines = vec![];
    for _ in 0..360 {
        let r = status_of(&shim.ok("getRequestStatus", &poll), &req_id);
        if r["status"] == "complete" {
            machines = r["machines"].as_array().cloned().unwrap_or_default();
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(machines.len(), 2, "two spot machines running");
    let held: Vec<Value> = machines.iter().map(host).collect();
    let (noticed, fine) = (&machines[0], &machines[1]);
    let noticed_id = noticed["machineId"].as_str().expect("id").to_string();

    // Nothing is announced before EC2 says anything; the check is one
    // DescribeSpotInstanceRequests filtered on the notice codes.
    let none = shim.ok("getReturnRequests", &json!({"machines": held}));
    assert_eq!(none["requests"], json!([]), "{none}");
    eventually("a spot notice check", || {
        (fwd.calls("DescribeSpotInstanceRequests") > 0).then_some(())
    })
    .await;
    let sent = fwd.requests("DescribeSpotInstanceRequests");
    assert_eq!(
        sent[0].get("Filter.1.Name").map(String::as_str),
        Some("status-code")
    );

    // EC2 gives the two-minute warning for one of them, 30 s ago.
    let noticed_at =
        k8s_openapi::jiff::Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(30);
    let noticed_at = noticed_at.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string();
    fwd.reply_with(
        "DescribeSpotInstanceRequests",
        noticed_spot_request(&noticed_id, &noticed_at),
    );
    let api = requests(&env);
    let mut mr: Option<MachineRequest> = None;
    let deadline = Instant::now() + WAIT;
    while mr.is_none() {
        let got = api.get(&req_id).await.expect("get request");
        let has_notice = got.status.as_ref().is_some_and(|s| {
            s.machines
                .iter()
                .any(|m| m.id == noticed_id && m.interruption_notice_time.is_some())
        });
        if has_notice {
            mr = Some(got);
        } else {
            assert!(Instant::now() < deadline, "the notice never reached status");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let mr = mr.expect("request with the notice");
    let st = mr.status.as_ref().expect("status");
    let recorded = st
        .machines
        .iter()
        .find(|m| m.id == noticed_id)
        .and_then(|m| m.interruption_notice_time.as_ref())
        .expect("notice time");
    assert_eq!(
        recorded.0.strftime("%Y-%m-%dT%H:%M:%S.000Z").to_string(),
        noticed_at,
        "status keeps EC2's notice time"
    );
    assert!(
        st.machines
            .iter()
            .filter(|m| m.id != noticed_id)
            .all(|m| m.interruption_notice_time.is_none()),
        "only the noticed machine carries a notice"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let announced = eventually_async(|| async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some("SpotInterruption")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(req_id.as_str())
        })
    })
    .await;
    assert!(
        announced
            .note
            .as_deref()
            .unwrap_or_default()
            .contains(&noticed_id),
        "{announced:?}"
    );

    // getReturnRequests lists the noticed host with what is left of the
    // 120 s warning (about 90 s), and not the other one.
    let answer = shim.ok("getReturnRequests", &json!({"machines": held}));
    let listed = answer["requests"].as_array().cloned().unwrap_or_default();
    assert_eq!(listed.len(), 1, "{answer}");
    assert_eq!(listed[0]["machine"], noticed["name"]);
    let grace = listed[0]["gracePeriod"]
        .as_i64()
        .expect("integer gracePeriod");
    assert!((60..=90).contains(&grace), "grace {grace} in {answer}");
    assert!(
        listed.iter().all(|h| h["machine"] != fine["name"]),
        "a host without a notice is not listed"
    );
    // Moto still runs both: a notice is a warning, not a termination.
    assert_eq!(moto_live(&env, &uid(&mr)).await.len(), 2);
}

/// Polls the async `f` until it returns Some, or fails after `WAIT`.
async fn eventually_async<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! Input a scheduler host, a person or a damaged file can hand the plugin:
//! each is answered with what can be answered and a clear message, never a
//! hang, a guess or a whole call lost to one bad item. No operator runs here:
//! request status is written directly, as the operator would.

use std::process::{Command, Stdio};

use hostforge::api::MachineRequest;
use hostforge_testbed::machines::{create_template, requests};
use kube::api::{Patch, PatchParams, PostParams};

use super::*;

/// Creates a scheduler-owned request `name` whose status lists `machines`
/// (`(id, host name)`, all running), with `return_machines` listed already.
async fn owned_request(
    env: &TestEnv,
    name: &str,
    machines: &[(&str, &str)],
    return_machines: &[String],
) -> MachineRequest {
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineRequest",
        "metadata": {"name": name, "labels": {"hostforge.io/owner": "hostfactory"}},
        "spec": {"templateRef": {"name": "compute"}, "count": machines.len(),
                 "replaceLost": false, "returnMachines": return_machines},
    }))
    .expect("valid MachineRequest");
    requests(env)
        .create(&PostParams::default(), &mr)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
    let listed: Vec<Value> = machines
        .iter()
        .map(|(id, host)| json!({"id": id, "name": host, "state": "running", "result": "succeed"}))
        .collect();
    requests(env)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"machines": listed}})),
        )
        .await
        .unwrap_or_else(|e| panic!("writing the status of {name}: {e}"))
}

async fn compute_template(env: &TestEnv) {
    create_template(
        env,
        "compute",
        json!({"image": {"id": "ami-12345678"}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
}

/// Runs `op -f path` through its script like [`Shim::run_file`], but gives
/// up (and kills it) after 60 s, so an operation that hangs fails the test
/// instead of blocking it.
fn run_bounded(shim: &Shim, op: &str, path: &Path) -> hostforge_testbed::hf::Outcome {
    let script = hostforge_testbed::repo_path("hf/scripts").join(format!("{op}.sh"));
    let out_file = shim.log_dir.join(format!("{op}.bounded.out"));
    let err_file = shim.log_dir.join(format!("{op}.bounded.err"));
    let mut child = Command::new("sh")
        .arg(&script)
        .arg("-f")
        .arg(path)
        .env("HOSTFORGE_BIN", hostforge_testbed::operator::operator_bin())
        .env("HF_PROVIDER_NAME", "hostforge")
        .env("HF_PROVIDER_CONFDIR", &shim.conf_dir)
        .env("HF_PROVIDER_LOGDIR", &shim.log_dir)
        .env_remove("PRO_CONF_DIR")
        .env_remove("HOSTFORGE_HF_CONFIG")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_file).expect("stdout file"))
        .stderr(std::fs::File::create(&err_file).expect("stderr file"))
        .spawn()
        .expect("run script");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{op} -f {} still running after 60 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    hostforge_testbed::hf::Outcome {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out_file).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_file).unwrap_or_default(),
    }
}

#[tokio::test]
async fn status_ids_are_checked_one_by_one() {
    let env = TestEnv::new("hf-ids").await;
    env.install_crds().await;
    owned_request(&env, "hf-compute-good1", &[], &[]).await;
    let shim = Shim::new(&env, "");
    let bad = [
        "has space",
        "a?watch=true",
        "../machinetemplates",
        "UPPER",
        "ret-XYZ",
        "ret-0123456789abcdef,hostforge.io/owner",
        "ret-0123456789abcdef0",
    ];
    let mut ids = vec![json!({"requestId": "hf-compute-good1"})];
    ids.extend(bad.iter().map(|id| json!({"requestId": id})));
    let answer = shim.ok("getRequestStatus", &json!({ "requests": ids }));
    let good = status_of(&answer, "hf-compute-good1");
    assert_eq!(good["status"], "running", "{answer}");
    for id in bad {
        let r = status_of(&answer, id);
        assert_eq!(r["status"], "complete_with_error", "{id}: {r}");
        assert_eq!(r["message"], "unknown requestId", "{id}: {r}");
    }
    let too_many: Vec<Value> = (0..5001)
        .map(|i| json!({"requestId": format!("hf-x-{i}")}))
        .collect();
    let refused = shim.fails("getRequestStatus", &json!({ "requests": too_many }));
    assert!(refused.contains("at most"), "{refused}");
}

#[tokio::test]
async fn a_repeated_request_machines_creates_one_request() {
    let env = TestEnv::new("hf-idem").await;
    env.install_crds().await;
    compute_template(&env).await;
    let shim = Shim::new(&env, "");
    let input = shim.conf_dir.join("request-1.json");
    std::fs::write(
        &input,
        json!({"template": {"templateId": "compute", "machineCount": 2}}).to_string(),
    )
    .expect("write input");
    let answer = |out: hostforge_testbed::hf::Outcome| -> String {
        assert_eq!(out.code, 0, "{out:?}");
        let v: Value = serde_json::from_str(&out.stdout).expect("json answer");
        v["requestId"].as_str().expect("requestId").to_string()
    };
    let first = answer(shim.run_file("requestMachines", &input));
    let again = answer(shim.run_file("requestMachines", &input));
    assert_eq!(first, again, "a retry answers the same request");
    let listed = requests(&env)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 1, "one MachineRequest for one input");
    // Another input file is another HostFactory request, even with the same content.
    let other = shim.conf_dir.join("request-2.json");
    std::fs::copy(&input, &other).expect("copy input");
    let second = answer(shim.run_file("requestMachines", &other));
    assert_ne!(second, first);
    let listed = requests(&env)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert_eq!(listed.items.len(), 2);
}

#[tokio::test]
async fn hostile_input_files_are_refused_quickly_and_clearly() {
    let env = TestEnv::new("hf-input").await;
    env.install_crds().await;
    compute_template(&env).await;
    let shim = Shim::new(&env, "");

    // A FIFO nobody writes to: refused at once, not waited on forever.
    let fifo = shim.conf_dir.join("input.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let out = run_bounded(&shim, "requestMachines", &fifo);
    let line = expect_failure("requestMachines", out);
    assert!(line.contains("not a regular file"), "{line}");

    // A huge file: refused by size, not read into memory.
    let huge = shim.conf_dir.join("huge.json");
    let mut text = " ".repeat(5 << 20);
    text.push_str("{}");
    std::fs::write(&huge, text).expect("write");
    let out = run_bounded(&shim, "getReturnRequests", &huge);
    assert!(
        out.stderr.contains("larger than"),
        "the failure is on stderr too: {out:?}"
    );
    let line = expect_failure("getReturnRequests", out);
    assert!(line.contains("larger than"), "{line}");

    // A typo in a top-level field is refused, not answered as "no hosts".
    let typo = shim.fails(
        "getReturnRequests",
        &json!({"machine": [{"name": "ip-10-0-0-1.ec2.internal"}]}),
    );
    assert!(typo.contains("unknown field `machine`"), "{typo}");

    // A wrong shape names what was expected.
    let shape = shim.fails("requestReturnMachines", &json!({"machines": "host-1"}));
    assert!(!shape.contains("untagged enum"), "{shape}");
    assert!(shape.contains("a list"), "{shape}");
    let shape = shim.fails("getRequestStatus", &json!({"requests": [{"id": "x"}]}));
    assert!(shape.contains("requestId"), "{shape}");
}

#[tokio::test]
async fn a_template_id_two_templates_share_is_refused() {
    let env = TestEnv::new("hf-dupid").await;
    env.install_crds().await;
    for name in ["compute-a", "compute-b"] {
        create_template(
            &env,
            name,
            json!({"image": {"id": "ami-12345678"}, "instanceTypes": [{"type": "t3.micro"}]}),
        )
        .await;
        let api: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
        api.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(
                json!({"metadata": {"annotations": {"hostforge.io/hf-template-id": "Compute"}}}),
            ),
        )
        .await
        .expect("annotate");
    }
    let shim = Shim::new(&env, "");
    let offered = shim.ok("getAvailableTemplates", &json!({}));
    let message = offered["message"].as_str().expect("message");
    assert!(
        message.contains("Compute") && message.contains("compute-a, compute-b"),
        "{offered}"
    );
    let ids: Vec<&Value> = offered["templates"]
        .as_array()
        .expect("templates")
        .iter()
        .map(|t| &t["templateId"])
        .collect();
    assert_eq!(ids, [&json!("Compute")], "listed once: {offered}");
    assert_eq!(offered["templates"][0]["availableNumber"], 0);
    let refused = shim.fails(
        "requestMachines",
        &json!({"template": {"templateId": "Compute", "machineCount": 1}}),
    );
    assert!(refused.contains("ambiguous"), "{refused}");
    let created = requests(&env)
        .list(&ListParams::default())
        .await
        .expect("list");
    assert!(created.items.is_empty());
}

#[tokio::test]
async fn returns_keep_what_was_patched_and_retries_add_nothing() {
    let env = TestEnv::new("hf-partial").await;
    env.install_crds().await;
    let a = ("i-0000000000000000a", "ip-10-0-0-10.ec2.internal");
    let b = ("i-0000000000000fffb", "ip-10-0-0-11.ec2.internal");
    owned_request(&env, "hf-compute-a", &[a], &[]).await;
    // hf-compute-b lists as many ids as the schema allows: one more is refused.
    let full: Vec<String> = (0..2000).map(|i| format!("i-{i:017x}")).collect();
    owned_request(&env, "hf-compute-b", &[b], &full).await;
    let shim = Shim::new(&env, "");
    let both = json!({"machines": [
        {"name": a.1, "machineId": a.0},
        {"name": b.1, "machineId": b.0},
    ]});
    let answer = shim.ok("requestReturnMachines", &both);
    let ret_id = answer["requestId"].as_str().expect("ret id").to_string();
    assert!(ret_id.starts_with("ret-"), "{answer}");
    let message = answer["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("{} NOT returned", b.0)),
        "{answer}"
    );
    let mr_a = requests(&env).get("hf-compute-a").await.expect("a");
    assert_eq!(mr_a.spec.return_machines, [a.0]);
    assert_eq!(mr_a.spec.count, 0);
    let status = shim.ok(
        "getRequestStatus",
        &json!({"requests": [{"requestId": ret_id}]}),
    );
    assert_eq!(status_of(&status, &ret_id)["machines"][0]["machineId"], a.0);

    // The same return again: the same id, and nothing written.
    let again = shim.ok(
        "requestReturnMachines",
        &json!({"machines": [{"name": a.1, "machineId": a.0}]}),
    );
    assert_eq!(again["requestId"], ret_id.as_str(), "{again}");
    let after = requests(&env).get("hf-compute-a").await.expect("a");
    assert_eq!(
        after.metadata.resource_version, mr_a.metadata.resource_version,
        "a retried return writes nothing"
    );

    // A host no owned request lists is not reported as reclaimed.
    let held = json!({"machines": [
        {"name": b.1, "machineId": b.0},
        {"name": "ip-10-9-9-9.ec2.internal", "machineId": "i-0000000000000fff9"},
    ]});
    let reclaim = shim.ok("getReturnRequests", &held);
    assert_eq!(reclaim["requests"], json!([]), "{reclaim}");
    assert!(
        reclaim["message"]
            .as_str()
            .is_some_and(|m| m.contains("1 not found")),
        "{reclaim}"
    );
}

/// Runs `hostforge args…` with stdout the write end of a pipe whose read end
/// is closed already, as under `… | head` once head has exited.
fn run_into_closed_pipe(args: &[&std::ffi::OsStr]) -> std::process::Output {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe(2) writes.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
    // SAFETY: both descriptors were just created and are owned here alone.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    Command::new(hostforge_testbed::operator::operator_bin())
        .args(args)
        .stdout(Stdio::from(write_end))
        .output()
        .expect("run hostforge")
}

#[test]
fn a_closed_stdout_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("awsprov_templates.json");
    std::fs::write(
        &file,
        json!({"templates": [{"templateId": "a", "imageId": "ami-12345678", "vmType": "t3.micro"}]})
            .to_string(),
    )
    .expect("write");
    for args in [
        vec!["hf".as_ref(), "import-templates".as_ref(), file.as_os_str()],
        vec!["crdgen".as_ref(), "--stdout".as_ref()],
    ] {
        let out = run_into_closed_pipe(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn finished_scheduler_requests_expire_and_others_stay() {
    let env = TestEnv::new("hf-expire").await;
    env.install_crds().await;
    let done = ("i-0000000000000000d", "ip-10-0-0-20.ec2.internal");
    let busy = ("i-0000000000000000e", "ip-10-0-0-21.ec2.internal");
    owned_request(&env, "hf-compute-done", &[done], &[done.0.to_string()]).await;
    owned_request(&env, "hf-compute-busy", &[busy], &[]).await;
    // hf-compute-done: everything returned and terminated, as the operator
    // leaves it; hf-compute-busy keeps its running machine.
    requests(&env)
        .patch(
            "hf-compute-done",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"count": 0}})),
        )
        .await
        .expect("scale to 0");
    requests(&env)
        .patch_status(
            "hf-compute-done",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 2, "machines": [
                {"id": done.0, "name": done.1, "state": "terminated", "result": "succeed",
                 "terminationReason": "Returned"}
            ]}})),
        )
        .await
        .expect("status");
    requests(&env)
        .patch_status(
            "hf-compute-busy",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"observedGeneration": 1}})),
        )
        .await
        .expect("status");
    let shim = Shim::new(&env, "finishedRetention: 1s\n");
    let held = json!({"machines": [{"name": busy.1, "machineId": busy.0}]});
    answers::eventually_async(|| async {
        let answer = shim.ok("getReturnRequests", &held);
        assert_eq!(answer["requests"], json!([]), "{answer}");
        let gone = requests(&env)
            .get_opt("hf-compute-done")
            .await
            .expect("get")
            .is_none();
        gone.then_some(())
    })
    .await;
    assert!(
        requests(&env)
            .get_opt("hf-compute-busy")
            .await
            .expect("get")
            .is_some(),
        "a request with a live machine stays"
    );
}

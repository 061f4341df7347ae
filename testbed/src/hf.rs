//! Runs the HostFactory plugin exactly as HostFactory does: `hf/scripts/<op>.sh
//! -f input.json` with the HostFactory environment, the script exec'ing the
//! `hostforge` binary built for this test run, against the bed's apiserver.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use super::operator::operator_bin;
use super::TestEnv;

/// A plugin installation: a configuration directory with `hostforge.yaml`
/// pointing at the bed, a work and a log directory.
pub struct Shim {
    /// `HF_PROVIDER_CONFDIR`.
    pub conf_dir: PathBuf,
    /// `HF_PROVIDER_LOGDIR`.
    pub log_dir: PathBuf,
    work_dir: PathBuf,
    inputs: AtomicU32,
}

/// What one script run did.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code (-1 when killed by a signal).
    pub code: i32,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Shim {
    /// Writes the configuration for `env`'s namespace; `extra` is appended to
    /// hostforge.yaml (e.g. a templateSelector).
    pub fn new(env: &TestEnv, extra: &str) -> Shim {
        let root = env.bed.dir.join(format!("hf-{}", env.namespace));
        let conf_dir = root.join("conf");
        let log_dir = root.join("log");
        let work_dir = root.join("work");
        for d in [&conf_dir, &log_dir, &work_dir] {
            std::fs::create_dir_all(d).expect("creating plugin directories");
        }
        std::fs::write(
            conf_dir.join("hostforge.yaml"),
            format!(
                "namespace: {}\nkubeconfig: {}\ntimeout: 20s\n{extra}",
                env.namespace,
                env.bed.kubeconfig.display()
            ),
        )
        .expect("writing hostforge.yaml");
        Shim {
            conf_dir,
            log_dir,
            work_dir,
            inputs: AtomicU32::new(0),
        }
    }

    /// Runs `<op>.sh` with `args`.
    pub fn run_args(&self, op: &str, args: &[&str]) -> Outcome {
        let script = super::repo_path("hf/scripts").join(format!("{op}.sh"));
        let out = Command::new("sh")
            .arg(&script)
            .args(args)
            .env("HOSTFORGE_BIN", operator_bin())
            .env("HF_PROVIDER_NAME", "hostforge")
            .env("HF_PROVIDER_CONFDIR", &self.conf_dir)
            .env("HF_PROVIDER_WORKDIR", &self.work_dir)
            .env("HF_PROVIDER_LOGDIR", &self.log_dir)
            .env_remove("PRO_CONF_DIR")
            .env_remove("HOSTFORGE_HF_CONFIG")
            .current_dir(&self.work_dir)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Writes `input` to a fresh file in the work directory and runs
    /// `<op>.sh -f FILE`.
    pub fn run(&self, op: &str, input: &serde_json::Value) -> Outcome {
        let n = self.inputs.fetch_add(1, Ordering::SeqCst);
        let path = self.work_dir.join(format!("{op}-{n}.json"));
        std::fs::write(&path, input.to_string()).expect("writing the input file");
        self.run_file(op, &path)
    }

    /// Runs `<op>.sh -f path`.
    pub fn run_file(&self, op: &str, path: &Path) -> Outcome {
        self.run_args(op, &["-f", path.to_str().expect("utf-8 path")])
    }

    /// Runs the operation and returns its JSON answer, asserting the protocol:
    /// exit 0 and nothing but one JSON document on stdout.
    pub fn ok(&self, op: &str, input: &serde_json::Value) -> serde_json::Value {
        let out = self.run(op, input);
        assert_eq!(
            out.code,
            0,
            "{op} failed: stdout {:?}, stderr {:?}\nplugin log:\n{}",
            out.stdout,
            out.stderr,
            self.log()
        );
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{op}: stdout is not one JSON document ({e}): {:?}",
                out.stdout
            )
        })
    }

    /// Runs the operation expecting the protocol's failure: exit 1 and exactly
    /// one line on stdout, which is returned.
    pub fn fails(&self, op: &str, input: &serde_json::Value) -> String {
        expect_failure(op, self.run(op, input))
    }

    /// The plugin's log file.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_dir.join("hostforge-hf.log")).unwrap_or_default()
    }
}

/// Asserts the protocol's failure shape and returns the message.
pub fn expect_failure(op: &str, out: Outcome) -> String {
    assert_eq!(out.code, 1, "{op} should fail: {out:?}");
    let line = out
        .stdout
        .strip_suffix('\n')
        .unwrap_or_else(|| panic!("{op}: no line on stdout: {out:?}"));
    assert!(
        !line.is_empty() && !line.contains('\n'),
        "{op}: not one line: {:?}",
        out.stdout
    );
    line.to_string()
}

/// A scheduler's view of many machines without launching any: a Ready
/// MachineTemplate and scheduler-owned MachineRequests whose status lists
/// running machines, written through the status subresource. Nothing
/// reconciles them (no operator in the namespace), so the plugin's latency
/// can be measured against a fixed, large status.
pub mod seed {
    use hostforge::api::{MachineRequest, MachineTemplate};
    use kube::api::{Patch, PatchParams, PostParams};
    use kube::Api;
    use serde_json::{json, Value};

    use crate::{fixtures, TestEnv};

    /// The instance id of seeded machine `i`.
    pub fn instance_id(i: usize) -> String {
        format!("i-{i:017x}")
    }

    /// The host name (private DNS name) of seeded machine `i`.
    pub fn host_name(i: usize) -> String {
        format!(
            "ip-10-{}-{}-{}.ec2.internal",
            i / 65536,
            (i / 256) % 256,
            i % 256
        )
    }

    /// Creates template `name` (an AMI id, c6i.xlarge) with a Ready status
    /// and its instance type described, `in_use` machines counted.
    pub async fn ready_template(env: &TestEnv, name: &str, in_use: usize) {
        let ready = fixtures::ready_conditions("Resolved");
        let templates: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
        let mt: MachineTemplate = serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineTemplate",
            "metadata": {"name": name},
            "spec": {"image": {"id": "ami-12345678"}, "instanceTypes": [{"type": "c6i.xlarge"}]},
        }))
        .expect("template");
        templates
            .create(&PostParams::default(), &mt)
            .await
            .expect("create template");
        templates
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": 1, "conditions": ready, "machinesInUse": in_use,
                    "resolvedImage": {"id": "ami-12345678", "source": "id", "resolvedAt": "2026-01-01T00:00:00Z"},
                    "instanceTypeInfo": {"instanceType": "c6i.xlarge", "vcpus": 4, "cores": 2,
                                         "memoryMiB": 8192, "architecture": "x86_64"}
                }})),
            )
            .await
            .expect("template status");
    }

    /// Creates scheduler-owned request `name` of template `template` whose
    /// status lists `machines` running machines, numbered from `first` (so
    /// several requests hold distinct machines).
    pub async fn scheduler_request(
        env: &TestEnv,
        name: &str,
        template: &str,
        machines: usize,
        first: usize,
    ) {
        let ready = fixtures::ready_conditions("Resolved");
        let requests: Api<MachineRequest> = Api::namespaced(env.client.clone(), &env.namespace);
        let mr: MachineRequest = serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
            "metadata": {"name": name, "labels": {"hostforge.io/owner": "hostfactory"},
                         "annotations": {"hostforge.io/hf-template-id": template}},
            "spec": {"templateRef": {"name": template}, "count": machines, "replaceLost": false},
        }))
        .expect("request");
        requests
            .create(&PostParams::default(), &mr)
            .await
            .expect("create request");
        let list: Vec<Value> = (first..first + machines)
            .map(|i| {
                fixtures::running_machine(
                    &instance_id(i),
                    &host_name(i),
                    &format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256),
                    &format!("{name}-1"),
                )
            })
            .collect();
        requests
            .patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "observedGeneration": 1, "phase": "Ready", "conditions": ready,
                    "counts": {"desired": machines, "running": machines},
                    "machines": list,
                }})),
            )
            .await
            .expect("request status");
    }
}

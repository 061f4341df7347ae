//! `cargo build && cargo run --example hf_bench`: latency of each HostFactory
//! operation against a MachineRequest holding 2,000 machines in status.
//!
//! `make bench` runs the same operations at 2,000 machines (scenario
//! `hostfactory`); this is the quick, standalone look.
//!
//! Starts the test bed's apiserver (no operator, no cloud: the plugin only
//! reads and writes Kubernetes objects), writes a template and a
//! scheduler-owned request whose status lists 2,000 running machines through
//! the status subresource, then runs every operation the way HostFactory does
//! (`hf/scripts/<op>.sh -f input.json`, a fresh process each time) and prints
//! min / median / max wall time over `HF_BENCH_RUNS` runs (default 7).

use std::time::{Duration, Instant};

use hostforge::api::MachineRequest;
use hostforge_testbed::hf::seed::{self, host_name, instance_id};
use hostforge_testbed::hf::Shim;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

/// The largest request the CRD allows (`count` at most 1,000).
const MACHINES: usize = 1000;

#[tokio::main]
async fn main() {
    let bin = hostforge_testbed::operator::operator_bin();
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build` first",
        bin.display()
    );
    let runs: usize = std::env::var("HF_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7);
    println!("==> starting the bed (kube-apiserver + etcd)");
    let env = hostforge_testbed::TestEnv::new("hf-bench").await;
    env.install_crds().await;
    seed::ready_template(&env, "bench", MACHINES).await;
    seed::scheduler_request(&env, "hf-bench", "bench", MACHINES, 0).await;
    println!("==> seeded {MACHINES} machines in MachineRequest hf-bench");
    let shim = Shim::new(&env, "");
    size_of_request(&env).await;
    if let Some(hold) = std::env::var("HF_BENCH_HOLD_S")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        println!(
            "==> holding {hold} s: HF_PROVIDER_CONFDIR={} HF_PROVIDER_LOGDIR={}",
            shim.conf_dir.display(),
            shim.log_dir.display()
        );
        tokio::time::sleep(Duration::from_secs(hold)).await;
    }

    let hosts: Vec<Value> = (0..MACHINES)
        .map(|i| json!({"name": host_name(i), "machineId": instance_id(i)}))
        .collect();
    let mut report = vec![];
    report.push(time(runs, "getAvailableTemplates", |_| {
        shim.ok("getAvailableTemplates", &json!({}));
    }));
    report.push(time(runs, "getRequestStatus (2,000 machines)", |_| {
        let a = shim.ok(
            "getRequestStatus",
            &json!({"requests": [{"requestId": "hf-bench"}]}),
        );
        assert_eq!(
            a["requests"][0]["machines"].as_array().map(Vec::len),
            Some(MACHINES)
        );
    }));
    report.push(time(runs, "getReturnRequests (2,000 hosts)", |_| {
        shim.ok("getReturnRequests", &json!({"machines": hosts}));
    }));
    // The floor under any write: the apiserver storing one spec change of this
    // 1 MB object (schema and CEL validation, managedFields, etcd), timed
    // in-process with a plain merge patch.
    let requests: Api<MachineRequest> = Api::namespaced(env.client.clone(), &env.namespace);
    let mut floor = vec![];
    for i in 0..runs {
        let started = Instant::now();
        requests
            .patch(
                "hf-bench",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"bench-touch": i.to_string()}}})),
            )
            .await
            .expect("reference patch");
        floor.push(started.elapsed());
    }
    report.push((
        "apiserver floor: one patch of the object".to_string(),
        floor,
    ));
    let mut ret_ids = vec![];
    report.push(time(runs, "requestReturnMachines (1 of 2,000)", |i| {
        let a = shim.ok("requestReturnMachines", &json!({"machines": [hosts[i]]}));
        ret_ids.push(a["requestId"].as_str().unwrap_or_default().to_string());
    }));
    report.push(time(runs, "getRequestStatus (ret- id)", |i| {
        let id = &ret_ids[i % ret_ids.len()];
        shim.ok(
            "getRequestStatus",
            &json!({"requests": [{"requestId": id}]}),
        );
    }));
    report.push(time(runs, "requestMachines", |_| {
        shim.ok(
            "requestMachines",
            &json!({"template": {"templateId": "bench", "machineCount": 1}}),
        );
    }));

    // A return of everything: 100 requests of 10, one call (what the
    // bench's HostFactory scenario ends with), here without an operator
    // reacting to the patches. Each run returns its own 100 requests.
    let mut all_of_100 = vec![];
    for run in 0..runs.min(3) {
        let first = 1_000_000 * (run + 1);
        for r in 0..100 {
            let name = format!("hf-many-{run}-{r:03}");
            seed::scheduler_request(&env, &name, "bench", 10, first + r * 10).await;
        }
        let machines: Vec<Value> = (first..first + 1000)
            .map(|i| json!({"name": host_name(i), "machineId": instance_id(i)}))
            .collect();
        let started = Instant::now();
        shim.ok("requestReturnMachines", &json!({"machines": machines}));
        all_of_100.push(started.elapsed());
    }
    report.push((
        "requestReturnMachines (1,000 of 100 req.)".to_string(),
        all_of_100,
    ));

    // Where requestReturnMachines spends its time (the plugin logs it).
    for line in shim
        .log()
        .lines()
        .filter(|l| l.contains("machines returned"))
        .skip(runs)
        .step_by(20)
    {
        println!("log: {line}");
    }
    println!("\n{MACHINES} machines in status, {runs} runs each, one process per call (debug build unless built with --release):");
    println!(
        "{:<38} {:>9} {:>9} {:>9}",
        "operation", "min", "median", "max"
    );
    for (name, mut times) in report {
        times.sort();
        let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
        println!(
            "{name:<38} {:>9} {:>9} {:>9}",
            ms(times[0]),
            ms(times[times.len() / 2]),
            ms(times[times.len() - 1])
        );
    }
}

/// What the apiserver stores for the request: the whole object and the part of
/// it that is managedFields (server-side field tracking, rewritten on every write).
async fn size_of_request(env: &hostforge_testbed::TestEnv) {
    let requests: Api<MachineRequest> = Api::namespaced(env.client.clone(), &env.namespace);
    let mr = requests.get("hf-bench").await.expect("read request");
    let whole = serde_json::to_vec(&mr).map(|v| v.len()).unwrap_or(0);
    let managed = serde_json::to_vec(&mr.metadata.managed_fields)
        .map(|v| v.len())
        .unwrap_or(0);
    println!(
        "==> request object: {} KiB, of which managedFields {} KiB",
        whole / 1024,
        managed / 1024
    );
}

fn time(runs: usize, name: &str, mut f: impl FnMut(usize)) -> (String, Vec<Duration>) {
    // One untimed call warms the page cache for the binary.
    f(runs);
    let times = (0..runs)
        .map(|i| {
            let started = Instant::now();
            f(i);
            started.elapsed()
        })
        .collect();
    (name.to_string(), times)
}

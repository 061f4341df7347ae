//! `make bench`: how fast hostforge fills MachineRequests next to a direct-SDK
//! baseline, how it behaves under EC2's API rate limits, what it costs while
//! it holds many machines, and whether churn and crashes leave duplicates or
//! leaks. Figures are printed as one table (each beside its target) and
//! written to `<target>/bench/results.json`; they are never test assertions.
//!
//! It runs on the integration-test bed (real kube-apiserver + etcd, moto),
//! with the release operator as a child process (`HOSTFORGE_OPERATOR_BIN`)
//! talking to moto through the fault-injecting forwarder, which counts every
//! EC2 call and can apply EC2's token-bucket model.
//!
//! Sizes: `HOSTFORGE_BENCH_SCALE` multiplies the request counts and
//! durations; the default, 5, runs a burst of 100 requests × 10 machines and
//! a steady state of 10,000 machines in 1,000 requests (about 18 minutes on
//! 2 cores), and 1 is a quick run (burst 20 × 10, steady 2,000 machines; about
//! 10 minutes). `HOSTFORGE_BENCH_SCENARIOS=burst,limits,hostfactory,churn,hostile,interruptions,steady`
//! picks scenarios (hostfactory: R requestMachines × 10 through `hf/scripts`
//! with EC2's default buckets, then the operations' latency at 2,000 machines;
//! interruptions: the time from EC2's events to the machines' status, through
//! the interruption queue and on the polling path, the same at every scale);
//! `HOSTFORGE_BENCH_HOLD_S` sets the steady hold (330 s),
//! `HOSTFORGE_BENCH_LIMITS_SCALE` the bucket scale of the limits scenario and
//! `HOSTFORGE_BENCH_OPERATOR_CONFIG` extra operator config lines (e.g.
//! `coalesceLaunches: false`) for every scenario.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Instant;

use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::TestEnv;

use report::Report;
use sizes::Sizes;

/// Elapsed time since the run started, for progress lines.
fn stamp(start: Instant) -> String {
    format!("[{:>6.1}s]", start.elapsed().as_secs_f64())
}

macro_rules! progress {
    ($start:expr, $($arg:tt)*) => {{
        println!("{} {}", $crate::stamp($start), format!($($arg)*));
        let _ = std::io::Write::flush(&mut std::io::stdout());
    }};
}

mod baseline;
mod operator;
mod report;
mod requests;
mod sample;
mod scenarios;
mod seen;
mod sizes;

#[tokio::main]
async fn main() {
    let start = Instant::now();
    let sizes = Sizes::from_env();
    let wanted: BTreeSet<String> = std::env::var("HOSTFORGE_BENCH_SCENARIOS")
        .unwrap_or_else(|_| "burst,limits,hostfactory,churn,hostile,interruptions,steady".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let bin = hostforge_testbed::operator::operator_bin();
    progress!(
        start,
        "hostforge bench: operator {}, sizes {}",
        bin.display(),
        serde_json::to_string(&sizes).unwrap_or_default()
    );
    progress!(start, "starting kube-apiserver + etcd + moto");
    let first = TestEnv::new("bench").await;
    first.install_crds().await;
    let fwd = Forwarder::start(&first.bed.moto_url);
    progress!(
        start,
        "bed up: apiserver {}, moto {}, forwarder {}",
        first.bed.apiserver_url,
        first.bed.moto_url,
        fwd.endpoint()
    );
    let mut report = Report::new(&sizes);

    let path = results_path();
    let _ = std::fs::remove_dir_all(path.with_file_name("logs"));
    // The JSON is rewritten after every scenario, so an interrupted run
    // still leaves what it measured.
    let save = |report: &mut Report| {
        report.moto_cpu = sample::moto_pid(&first.bed.moto_url).and_then(sample::cpu_seconds);
        report.total_s = start.elapsed().as_secs_f64();
        if let Err(e) = report.write_json(&path) {
            eprintln!("writing {}: {e}", path.display());
        }
    };
    if wanted.contains("burst") {
        scenarios::burst::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("limits") {
        scenarios::limits::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("hostfactory") {
        scenarios::hostfactory::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("churn") {
        scenarios::churn::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("hostile") {
        scenarios::hostile::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("interruptions") {
        scenarios::interruptions::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("steady") {
        scenarios::steady::run(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    report.print();
    println!("results written to {}", path.display());
}

/// `$CARGO_TARGET_DIR/bench/results.json`, or `target/bench/results.json` in
/// the checkout.
fn results_path() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| hostforge_testbed::repo_path("target"))
        .join("bench/results.json")
}

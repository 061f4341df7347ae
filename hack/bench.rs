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
//! durations; the default, 5, is the sizes (burst 100 × 10, steady
//! 10,000 machines in 1,000 requests; about 18 minutes on 2 cores), and 1 is a
//! quick run (burst 20 × 10, steady 2,000 machines; about 10 minutes). `HOSTFORGE_BENCH_SCENARIOS=burst,limits,churn,steady`
//! picks scenarios; `HOSTFORGE_BENCH_HOLD_S` sets the steady hold (330 s) and
//! `HOSTFORGE_BENCH_LIMITS_SCALE` the bucket scale of the limits scenario.

#[path = "bench/baseline.rs"]
mod baseline;
#[path = "bench/report.rs"]
mod report;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::Filter;
use futures::future::join_all;
use futures::StreamExt;
use hostforge::api::{MachineRequest, MachineTemplate};
use kube::api::{Patch, PatchParams};
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::Api;
use serde_json::json;
use support::forwarder::{Forwarder, RateLimits};
use support::machines::{self, is_ready, status_live};
use support::TestEnv;

use report::{Report, Verdict};

/// Operator poll interval (its default): the baseline polls as often.
const POLL: Duration = Duration::from_secs(2);
/// Sweep interval (the operator's default).
const SWEEP: Duration = Duration::from_secs(60);
/// Full sweep interval: half the operator's default (10 min), so that the
/// steady hold (330 s from the end of the fill) always includes one.
const FULL_SWEEP: Duration = Duration::from_secs(300);

/// The sizes of one run.
#[derive(Debug, Clone, serde::Serialize)]
struct Sizes {
    scale: f64,
    burst_requests: usize,
    burst_machines: i32,
    limits_scale: f64,
    steady_requests: usize,
    steady_machines_per_request: i32,
    steady_hold_s: u64,
    churn_requests: usize,
    churn_phase_s: u64,
    crash_every_s: u64,
}

impl Sizes {
    fn from_env() -> Sizes {
        let scale: f64 = std::env::var("HOSTFORGE_BENCH_SCALE")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|f: &f64| f.is_finite() && *f > 0.0)
            .unwrap_or(5.0);
        let n = |base: f64| ((base * scale).round() as usize).max(1);
        Sizes {
            scale,
            burst_requests: n(20.0),
            burst_machines: 10,
            // EC2's real buckets at the size (100 × 10: ~31 s of
            // RunInstances refill); scaled down with the burst so the bucket
            // bound stays well above the poll interval.
            limits_scale: std::env::var("HOSTFORGE_BENCH_LIMITS_SCALE")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or((0.15 * scale).min(1.0)),
            steady_requests: n(200.0),
            steady_machines_per_request: 10,
            // Long enough to include the controller's 5-minute resync of
            // every request, which a shorter hold would never see.
            steady_hold_s: std::env::var("HOSTFORGE_BENCH_HOLD_S")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(330),
            churn_requests: n(20.0).min(200),
            churn_phase_s: (90.0 * scale.sqrt()).round() as u64,
            crash_every_s: 20,
        }
    }
}

/// Elapsed time since the run started, for progress lines.
fn stamp(start: Instant) -> String {
    format!("[{:>6.1}s]", start.elapsed().as_secs_f64())
}

macro_rules! progress {
    ($start:expr, $($arg:tt)*) => {{
        println!("{} {}", stamp($start), format!($($arg)*));
        let _ = std::io::stdout().flush();
    }};
}

#[tokio::main]
async fn main() {
    let start = Instant::now();
    let sizes = Sizes::from_env();
    let wanted: BTreeSet<String> = std::env::var("HOSTFORGE_BENCH_SCENARIOS")
        .unwrap_or_else(|_| "burst,limits,churn,steady".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let bin = support::operator::operator_bin();
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
        report.moto_cpu = moto_pid(&first.bed.moto_url).and_then(cpu_seconds);
        report.total_s = start.elapsed().as_secs_f64();
        if let Err(e) = report.write_json(&path) {
            eprintln!("writing {}: {e}", path.display());
        }
    };
    if wanted.contains("burst") {
        burst(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("limits") {
        limits(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("churn") {
        churn(start, &sizes, &fwd, &mut report).await;
        save(&mut report);
    }
    if wanted.contains("steady") {
        steady(start, &sizes, &fwd, &mut report).await;
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
        .unwrap_or_else(|| support::repo_path("target"))
        .join("bench/results.json")
}

// ---------------------------------------------------------------- operator

/// The release operator as a child process of the bench (not the test
/// harness's wrapper: the bench needs its pid for CPU/RSS and SIGKILL).
struct Op {
    child: Child,
    metrics_port: u16,
}

impl Op {
    /// Starts `hostforge run` for `env`'s namespace and waits for /readyz.
    async fn start(env: &TestEnv, config: &str, tag: &str) -> Op {
        let config_path = env.bed.dir.join(format!("bench-{}.yaml", env.namespace));
        std::fs::write(&config_path, config).expect("writing operator config");
        // Beside results.json, so a run's logs outlive the bed for analysis.
        let log_dir = results_path().with_file_name("logs");
        std::fs::create_dir_all(&log_dir).expect("creating the bench log folder");
        let log_path = log_dir.join(format!("operator-{tag}.log"));
        let log = std::fs::File::create(&log_path).expect("operator log file");
        let metrics_port = free_port();
        let mut cmd = Command::new(support::operator::operator_bin());
        cmd.arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(["--namespace", &env.namespace])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(["--log-format", "text"])
            .env("KUBECONFIG", &env.bed.kubeconfig)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "RUST_LOG",
                std::env::var("HOSTFORGE_BENCH_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        // SAFETY: prctl in the child before exec; the operator dies with the bench.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting the operator");
        let mut op = Op {
            child,
            metrics_port,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = op.child.try_wait() {
                panic!(
                    "operator exited ({status}); log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            let port = op.metrics_port;
            let ready = tokio::task::spawn_blocking(move || {
                support::operator::http_get(port, "/readyz").is_some_and(|(c, _)| c == 200)
            })
            .await
            .unwrap_or(false);
            if ready {
                return op;
            }
            assert!(Instant::now() < deadline, "operator not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `/metrics` text (empty when it does not answer).
    async fn metrics(&self) -> String {
        let port = self.metrics_port;
        tokio::task::spawn_blocking(move || support::operator::http_get(port, "/metrics"))
            .await
            .ok()
            .flatten()
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        support::operator::sum_metric(&self.metrics().await, name, labels)
    }

    /// SIGKILL, as a node failure or OOM kill would.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Operator config: one AWS provider through the forwarder, rate limits as given.
fn operator_config(env: &TestEnv, fwd: &Forwarder, rate_limits: &str) -> String {
    format!(
        "clusterName: {ns}\nproviders:\n  - name: aws-default\n    type: aws\n    region: {region}\n    \
         endpointUrl: {url}\n    rateLimits: {rate_limits}\npollInterval: {poll}s\nsweepInterval: {sweep}s\n\
         fullSweepInterval: {full}s\n",
        ns = env.namespace,
        region = support::REGION,
        url = fwd.endpoint(),
        poll = POLL.as_secs(),
        sweep = SWEEP.as_secs(),
        full = FULL_SWEEP.as_secs(),
    )
}

/// utime + stime of `pid`, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15 (1-based).
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / ticks.max(1.0))
}

/// A `/proc/<pid>/status` figure in kB (e.g. `VmHWM`, `VmRSS`).
fn status_kb(pid: u32, key: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// moto's pid, found by its command line (`moto_launcher.py … -p PORT`).
fn moto_pid(moto_url: &str) -> Option<u32> {
    let port = moto_url.rsplit(':').next()?.trim_end_matches('/');
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.iter().any(|a| a.contains("moto_launcher"))
            && args.windows(2).any(|w| w[0] == "-p" && w[1] == port)
        {
            return Some(pid);
        }
    }
    None
}

// ------------------------------------------------------------- kube helpers

/// Three templates: two RunInstances (different types) and one EC2 Fleet.
async fn create_templates(env: &TestEnv) -> Vec<&'static str> {
    let (subnet, _) = env.default_subnet_and_group().await;
    let specs = [
        (
            "bench-run-a",
            json!({"providerApi": "RunInstances", "image": {"ssmParameter": support::AL2023_PARAM},
                   "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}]}),
        ),
        (
            "bench-run-b",
            json!({"providerApi": "RunInstances", "image": {"ssmParameter": support::AL2023_PARAM},
                   "instanceTypes": [{"type": "m5.large"}]}),
        ),
        (
            "bench-fleet",
            json!({"providerApi": "EC2Fleet", "image": {"ssmParameter": support::AL2023_PARAM},
                   "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
                   "subnetIds": [subnet], "capacityType": "mixed", "onDemandPercent": 50}),
        ),
    ];
    for (name, spec) in &specs {
        machines::create_template(env, name, spec.clone()).await;
    }
    let api: Api<MachineTemplate> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    for (name, _) in &specs {
        loop {
            let mt = api.get(name).await.expect("get template");
            let ready = mt.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "template {name} never Ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    specs.iter().map(|(n, _)| *n).collect()
}

/// Creates `n` requests of `count` machines, spread over `templates`, all at
/// once; returns their names.
async fn apply_requests(
    env: &TestEnv,
    templates: &[&str],
    prefix: &str,
    n: usize,
    count: i32,
) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}-{i:04}")).collect();
    // At most 50 creates in flight: "applied at once", without opening
    // thousands of connections to the apiserver.
    for (c, chunk) in names.chunks(50).enumerate() {
        join_all(chunk.iter().enumerate().map(|(i, name)| {
            let template = templates[(c * 50 + i) % templates.len()];
            async move {
                machines::create_request(env, name, template, count, false).await;
            }
        }))
        .await;
    }
    names
}

fn degraded(mr: &MachineRequest) -> bool {
    machines::condition(mr, "Degraded").is_some_and(|(s, _)| s == "True")
}

/// Waits until every request of the namespace is Ready; prints progress every
/// 5 s. Returns the seconds it took from `since` and the final list, or the
/// list when `timeout` passed. Readiness is followed through a watch, so the
/// figure is when the last request turned Ready, not when a list noticed it.
async fn wait_all_ready(
    start: Instant,
    env: &TestEnv,
    what: &str,
    since: Instant,
    timeout: Duration,
) -> Result<(f64, Vec<MachineRequest>), Vec<MachineRequest>> {
    let (reader, writer) = reflector::store();
    // Every watch event, the end of the initial listing included: the store
    // fills only when that listing is complete, so checking on object events
    // alone never returned when everything was already Ready (the wait then
    // ran into its timeout).
    let events = reflector(
        writer,
        watcher(machines::requests(env), watcher::Config::default()),
    )
    .default_backoff();
    futures::pin_mut!(events);
    let snapshot =
        || -> Vec<MachineRequest> { reader.state().iter().map(|m| (**m).clone()).collect() };
    let mut ticker = tokio::time::interval(Duration::from_secs(5));
    ticker.tick().await;
    loop {
        tokio::select! {
            ev = events.next() => {
                if ev.is_none() {
                    return Err(snapshot());
                }
                let list = reader.state();
                if !list.is_empty() && list.iter().all(|m| is_ready(m)) {
                    return Ok((since.elapsed().as_secs_f64(), snapshot()));
                }
            }
            _ = ticker.tick() => {
                let list = snapshot();
                if since.elapsed() > timeout {
                    return Err(list);
                }
                let ready = list.iter().filter(|m| is_ready(m)).count();
                let machines: usize = list.iter().map(|m| status_live(m).len()).sum();
                let wanted: i64 = list.iter().map(|m| i64::from(m.spec.count)).sum();
                progress!(
                    start,
                    "{what}: {ready}/{} requests Ready, {machines}/{wanted} machines in status",
                    list.len()
                );
            }
        }
    }
}

/// Calls by action from the forwarder's counters (`calls/<Action>`).
fn calls_by_action(fwd: &Forwarder) -> BTreeMap<String, u64> {
    fwd.snapshot()
        .into_iter()
        .filter_map(|(k, v)| k.strip_prefix("calls/").map(|a| (a.to_string(), v)))
        .collect()
}

fn fmt_calls(calls: &BTreeMap<String, u64>) -> String {
    calls
        .iter()
        .map(|(a, n)| format!("{a} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Batches planned across all requests (each launch batch written to status).
fn planned_batches(list: &[MachineRequest]) -> usize {
    list.iter()
        .filter_map(|m| m.status.as_ref())
        .map(|s| s.launches.len())
        .sum()
}

// ------------------------------------------------------------------- burst

async fn burst(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let (r, m) = (sizes.burst_requests, sizes.burst_machines);
    progress!(
        start,
        "== burst: {r} requests × {m} machines, applied at once"
    );
    let env = TestEnv::new("bench-burst").await;
    fwd.set_rate_limits(None);
    // No client buckets here: the burst measures hostforge's own overhead
    // against a baseline that has none either (moto does not throttle);
    // the limits scenario measures the buckets.
    let op = Op::start(
        &env,
        &operator_config(&env, fwd, "{enabled: false}"),
        "burst",
    )
    .await;
    let templates = create_templates(&env).await;
    fwd.reset_counters();
    let polls_before = op.metric("hostforge_machine_polls_total", &[]).await;
    let sweeps_before = op.metric("hostforge_machine_sweeps_total", &[]).await;
    let t0 = Instant::now();
    apply_requests(&env, &templates, "burst", r, m).await;
    progress!(
        start,
        "burst: {r} requests applied in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let outcome = wait_all_ready(start, &env, "burst", t0, Duration::from_secs(600)).await;
    let calls = calls_by_action(fwd);
    let polls = op.metric("hostforge_machine_polls_total", &[]).await - polls_before;
    let sweeps = op.metric("hostforge_machine_sweeps_total", &[]).await - sweeps_before;
    let (took, list) = match outcome {
        Ok(x) => x,
        Err(list) => {
            report.add(
                "burst",
                "all requests Ready",
                "timeout",
                "",
                Verdict::Miss,
                "",
            );
            (f64::NAN, list)
        }
    };
    progress!(
        start,
        "burst: all Ready after {took:.1}s; calls: {}",
        fmt_calls(&calls)
    );

    // The baseline, same launches, same moto, same forwarder.
    fwd.reset_counters();
    progress!(
        start,
        "baseline: {r} × RunInstances(MaxCount {m}), then DescribeInstances polling"
    );
    let ami = env.al2023_ami().await;
    let ec2 = support::ec2_client(fwd.endpoint());
    let types: Vec<&str> = templates
        .iter()
        .map(|t| {
            if *t == "bench-run-b" {
                "m5.large"
            } else {
                "t3.micro"
            }
        })
        .collect();
    let base = baseline::run(&ec2, &ami, &types, r, m, POLL, &env.namespace).await;
    let base_calls = calls_by_action(fwd);
    progress!(
        start,
        "baseline: all running after {:.1}s (launches {:.1}s); calls: {}",
        base.seconds,
        base.launch_seconds,
        fmt_calls(&base_calls)
    );
    baseline::terminate(&ec2, &base.ids).await;

    let machines_n = (r as f64) * f64::from(m);
    let total_calls: u64 = calls.values().sum();
    let launches = calls.get("RunInstances").copied().unwrap_or(0)
        + calls.get("CreateFleet").copied().unwrap_or(0);
    let batches = planned_batches(&list);
    let describes = calls.get("DescribeInstances").copied().unwrap_or(0) as f64;
    // DescribeInstances outside the poll: the sweeps' pages.
    let poll_describes = describes - sweeps;
    let per_poll = if polls > 0.0 {
        poll_describes / polls
    } else {
        0.0
    };
    // The poll describes every changing machine in one call per 200 ids.
    let per_poll_max = (machines_n / 200.0).ceil().max(1.0);
    let ratio = took / base.seconds;
    report.add(
        "burst",
        "time until all Ready",
        format!("{took:.1} s"),
        format!("≤ 1.25 × baseline = {:.1} s", 1.25 * base.seconds),
        Verdict::check(ratio <= 1.25),
        format!("{ratio:.2} × baseline"),
    );
    report.add(
        "burst",
        "baseline: launches + polling until running",
        format!("{:.1} s", base.seconds),
        "",
        Verdict::Info,
        format!(
            "{r} sequential RunInstances {:.1} s (moto {:.0} ms per call), describes {}",
            base.launch_seconds,
            1000.0 * base.launch_seconds / r as f64,
            base.describes
        ),
    );
    report.add(
        "burst",
        "EC2 calls by action",
        fmt_calls(&calls),
        "",
        Verdict::Info,
        format!("baseline: {}", fmt_calls(&base_calls)),
    );
    report.add(
        "burst",
        "EC2 calls per machine",
        format!("{:.3}", total_calls as f64 / machines_n),
        "",
        Verdict::Info,
        format!(
            "baseline {:.3}",
            base_calls.values().sum::<u64>() as f64 / machines_n
        ),
    );
    report.add(
        "burst",
        "launch calls (RunInstances + CreateFleet)",
        launches.to_string(),
        format!("≤ planned batches = {batches}"),
        Verdict::check(launches as usize <= batches),
        "",
    );
    report.add(
        "burst",
        "poll DescribeInstances per poll cycle",
        format!("{per_poll:.2}"),
        format!("≤ {per_poll_max} (one batched call per 200 changing ids)"),
        Verdict::check(per_poll <= per_poll_max),
        format!(
            "{describes} DescribeInstances = {poll_describes} in {polls} polls + {sweeps} sweeps"
        ),
    );
    // The same burst over the RunInstances templates only: the calls the
    // baseline makes, so this ratio is the operator's own overhead, apart
    // from the EC2 Fleet path's extra calls (a launch template per batch).
    // moto gets slower as it holds more instances, and this run comes after
    // the first baseline: a second baseline right after it brackets it, and
    // the ratio is to the mean of the two.
    let (run_only, run_only_calls) = burst_run_instances_only(start, sizes, fwd).await;
    let after = baseline::run(&ec2, &ami, &types, r, m, POLL, &env.namespace).await;
    baseline::terminate(&ec2, &after.ids).await;
    let bracket = (base.seconds + after.seconds) / 2.0;
    progress!(
        start,
        "baseline again: all running after {:.1}s; mean of the two {bracket:.1}s",
        after.seconds
    );
    report.add(
        "burst",
        "time until all Ready, RunInstances templates only",
        format!("{run_only:.1} s"),
        format!("≤ 1.25 × baseline = {:.1} s", 1.25 * bracket),
        Verdict::check(run_only / bracket <= 1.25),
        format!(
            "{:.2} × the mean of the baselines before and after it ({:.1} s, {:.1} s); {}",
            run_only / bracket,
            base.seconds,
            after.seconds,
            fmt_calls(&run_only_calls)
        ),
    );
    report.raw.insert(
        "burst_run_instances_only".into(),
        json!({"seconds": run_only, "calls": run_only_calls,
               "baseline_after_seconds": after.seconds}),
    );
    report.raw.insert(
        "burst".into(),
        json!({"seconds": took, "baseline_seconds": base.seconds,
               "baseline_launch_seconds": base.launch_seconds, "calls": calls,
               "baseline_calls": base_calls, "planned_batches": batches, "polls": polls,
               "sweeps": sweeps, "requests": r, "machines_per_request": m}),
    );
}

/// The burst's requests over the RunInstances templates only, in a fresh
/// namespace; returns the time until all are Ready and the calls made.
async fn burst_run_instances_only(
    start: Instant,
    sizes: &Sizes,
    fwd: &Forwarder,
) -> (f64, BTreeMap<String, u64>) {
    let (r, m) = (sizes.burst_requests, sizes.burst_machines);
    progress!(start, "burst (RunInstances templates only): {r} × {m}");
    let env = TestEnv::new("bench-burst-run").await;
    let _op = Op::start(
        &env,
        &operator_config(&env, fwd, "{enabled: false}"),
        "burst-run",
    )
    .await;
    let templates: Vec<&str> = create_templates(&env)
        .await
        .into_iter()
        .filter(|t| *t != "bench-fleet")
        .collect();
    fwd.reset_counters();
    let t0 = Instant::now();
    apply_requests(&env, &templates, "burst-run", r, m).await;
    let took = match wait_all_ready(start, &env, "burst-run", t0, Duration::from_secs(600)).await {
        Ok((s, _)) => s,
        Err(_) => f64::NAN,
    };
    let calls = calls_by_action(fwd);
    progress!(
        start,
        "burst (RunInstances templates only): all Ready after {took:.1}s; calls: {}",
        fmt_calls(&calls)
    );
    (took, calls)
}

// ------------------------------------------------------------------ limits

/// The shortest time EC2's buckets allow for `run_calls` RunInstances of `m`
/// instances and `fleet_calls` instant fleets (each with one
/// CreateLaunchTemplate and one DeleteLaunchTemplate), all buckets full at
/// the start: per bucket, (demand − burst) / refill rate; the largest wins.
fn bucket_bound(limits: &RateLimits, run_calls: f64, m: f64, fleet_calls: f64) -> (f64, String) {
    let over = |demand: f64, b: support::forwarder::Bucket| ((demand - b.size) / b.rate).max(0.0);
    let parts = [
        (
            format!(
                "RunInstances calls ({run_calls} − {:.2}) / {:.2}/s",
                limits.run_instances.size, limits.run_instances.rate
            ),
            over(run_calls, limits.run_instances),
        ),
        (
            format!(
                "launched instances ({} − {:.1}) / {:.2}/s",
                run_calls * m,
                limits.launched_instances.size,
                limits.launched_instances.rate
            ),
            over(run_calls * m, limits.launched_instances),
        ),
        (
            format!(
                "CreateFleet (and each launch-template action) ({fleet_calls} − {:.2}) / {:.2}/s",
                limits.mutating.size, limits.mutating.rate
            ),
            over(fleet_calls, limits.mutating),
        ),
    ];
    let (text, bound) = parts
        .iter()
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .cloned()
        .unwrap_or_default();
    let all = parts
        .iter()
        .map(|(t, v)| format!("{t} = {v:.1} s"))
        .collect::<Vec<_>>()
        .join("; ");
    (bound, format!("max of: {all} → {text}"))
}

async fn limits(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let (r, m) = (sizes.burst_requests, sizes.burst_machines);
    let f = sizes.limits_scale;
    progress!(
        start,
        "== limits: burst {r} × {m} with EC2's buckets × {f} in the forwarder and the operator"
    );
    let env = TestEnv::new("bench-limits").await;
    let model = RateLimits::ec2_defaults().scaled(f);
    // Both sides start with full buckets at the same moment.
    fwd.set_rate_limits(Some(model.clone()));
    let op = Op::start(
        &env,
        &operator_config(&env, fwd, &format!("{{scale: {f}}}")),
        "limits",
    )
    .await;
    let templates = create_templates(&env).await;
    fwd.reset_counters();
    let t0 = Instant::now();
    apply_requests(&env, &templates, "limits", r, m).await;
    let outcome = wait_all_ready(start, &env, "limits", t0, Duration::from_secs(1200)).await;
    let calls = calls_by_action(fwd);
    let throttled = fwd.throttled();
    fwd.set_rate_limits(None);
    drop(op);
    let (took, list) = match outcome {
        Ok(x) => x,
        Err(list) => (f64::NAN, list),
    };
    let run_calls = (0..r)
        .filter(|i| templates[i % templates.len()] != "bench-fleet")
        .count() as f64;
    let fleet_calls = r as f64 - run_calls;
    let (bound, how) = bucket_bound(&model, run_calls, f64::from(m), fleet_calls);
    progress!(
        start,
        "limits: all Ready after {took:.1}s; bound {bound:.1}s = {how}"
    );
    let failed = list.iter().filter(|m| !is_ready(m) || degraded(m)).count();
    let total: u64 = calls.values().sum();
    let throttled_pct = 100.0 * throttled as f64 / (total.max(1) as f64);
    report.add(
        "limits",
        "time until all Ready",
        format!("{took:.1} s"),
        format!("≤ 1.2 × bucket bound = {:.1} s", 1.2 * bound),
        Verdict::check(took <= 1.2 * bound),
        format!("{:.2} × bound", took / bound),
    );
    report.add(
        "limits",
        "bucket lower bound",
        format!("{bound:.1} s"),
        "",
        Verdict::Info,
        format!("EC2 defaults × {f}: {how}"),
    );
    report.add(
        "limits",
        "throttled answers",
        format!("{throttled} of {total} calls ({throttled_pct:.2} %)"),
        "≤ 1 %",
        Verdict::check(throttled_pct <= 1.0),
        fmt_calls(&calls),
    );
    report.add(
        "limits",
        "failed requests",
        failed.to_string(),
        "0",
        Verdict::check(failed == 0),
        "",
    );
    report.raw.insert(
        "limits".into(),
        json!({"seconds": took, "bound_seconds": bound, "bound": how, "scale": f,
               "throttled": throttled, "calls": calls, "failed": failed}),
    );
}

// ------------------------------------------------------------------ steady

async fn steady(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let (r, m) = (sizes.steady_requests, sizes.steady_machines_per_request);
    let n = r as i64 * i64::from(m);
    progress!(
        start,
        "== steady: {n} machines in {r} requests, then held {}s",
        sizes.steady_hold_s
    );
    let env = TestEnv::new("bench-steady").await;
    fwd.set_rate_limits(None);
    // The fill is not what this scenario measures. EC2's default buckets
    // (the operator's defaults) would pace it at 2 launched instances/s past
    // the first 1,000: over an hour for 10,000. Here RunInstances is paced
    // at what moto sustains next to the polls (5 calls/s: moto's RunInstances
    // grows from 46 ms at 2,000 instances to 110 ms at 8,000; unpaced, moto
    // falls behind and calls hit the 10 s attempt timeout), with the
    // instance bucket out of the way.
    let fill_limits =
        "{runInstances: {burst: 5, rate: 5}, launchedInstances: {burst: 100000, rate: 1000}}";
    let op = Op::start(&env, &operator_config(&env, fwd, fill_limits), "steady").await;
    let templates = create_templates(&env).await;
    let run_templates: Vec<&str> = templates
        .into_iter()
        .filter(|t| *t != "bench-fleet")
        .collect();
    let t0 = Instant::now();
    let moto = moto_pid(&env.bed.moto_url);
    let moto_cpu0 = moto.and_then(cpu_seconds);
    apply_requests(&env, &run_templates, "steady", r, m).await;
    let fill_timeout = Duration::from_secs(600 + 2 * r as u64);
    let fill = match wait_all_ready(start, &env, "steady fill", t0, fill_timeout).await {
        Ok((s, _)) => s,
        Err(_) => f64::NAN,
    };
    let moto_cpu_fill = moto
        .and_then(cpu_seconds)
        .zip(moto_cpu0)
        .map(|(a, b)| a - b);
    progress!(
        start,
        "steady: {n} machines Ready after {fill:.1}s; holding"
    );
    // Let the last status writes and the poll settle before measuring.
    tokio::time::sleep(POLL * 2).await;
    fwd.reset_counters();
    let writes0 = op.metric("hostforge_status_writes_total", &[]).await;
    let cpu0 = cpu_seconds(op.pid()).unwrap_or(f64::NAN);
    let h0 = Instant::now();
    let hold = Duration::from_secs(sizes.steady_hold_s);
    while h0.elapsed() < hold {
        tokio::time::sleep(Duration::from_secs(10).min(hold.saturating_sub(h0.elapsed()))).await;
        progress!(
            start,
            "steady: holding {:.0}/{}s; calls so far: {}",
            h0.elapsed().as_secs_f64(),
            hold.as_secs(),
            fmt_calls(&calls_by_action(fwd))
        );
    }
    let minutes = h0.elapsed().as_secs_f64() / 60.0;
    let calls = calls_by_action(fwd);
    let writes = op.metric("hostforge_status_writes_total", &[]).await - writes0;
    let cpu = cpu_seconds(op.pid()).unwrap_or(f64::NAN) - cpu0;
    let rss_peak = status_kb(op.pid(), "VmHWM").unwrap_or(f64::NAN) / 1024.0;
    let rss_now = status_kb(op.pid(), "VmRSS").unwrap_or(f64::NAN) / 1024.0;
    let per_min: BTreeMap<String, f64> = calls
        .iter()
        .map(|(a, c)| (a.clone(), *c as f64 / minutes))
        .collect();
    let mutating: u64 = ["RunInstances", "CreateFleet", "TerminateInstances"]
        .iter()
        .map(|a| calls.get(*a).copied().unwrap_or(0))
        .sum();
    let describes_per_min = per_min.get("DescribeInstances").copied().unwrap_or(0.0);
    let max_describes = 60.0 / POLL.as_secs_f64();
    let cpu_pct = 100.0 * cpu / (minutes * 60.0);
    report.add(
        "steady",
        format!("fill {n} machines in {r} requests"),
        format!("{fill:.1} s"),
        "",
        Verdict::Info,
        format!(
            "moto CPU during the fill {:.1} s",
            moto_cpu_fill.unwrap_or(f64::NAN)
        ),
    );
    report.add(
        "steady",
        "AWS calls/min by action (hold)",
        if per_min.is_empty() {
            "none".to_string()
        } else {
            per_min
                .iter()
                .map(|(a, v)| format!("{a} {v:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        },
        "",
        Verdict::Info,
        format!("over {:.1} min, sweep every {}s", minutes, SWEEP.as_secs()),
    );
    report.add(
        "steady",
        "launch/terminate calls (hold)",
        mutating.to_string(),
        "0",
        Verdict::check(mutating == 0),
        "",
    );
    report.add(
        "steady",
        "DescribeInstances/min (hold)",
        format!("{describes_per_min:.2}"),
        format!("≤ one per poll interval = {max_describes:.0}/min"),
        Verdict::check(describes_per_min <= max_describes),
        format!(
            "sweeps each {}s list machines going or gone (1 call when none is); the full \
             listing every {}s is {} pages of 250",
            SWEEP.as_secs(),
            FULL_SWEEP.as_secs(),
            (n as f64 / 250.0).ceil()
        ),
    );
    report.add(
        "steady",
        "status writes/min (hold)",
        format!("{:.2}", writes / minutes),
        "0",
        Verdict::check(writes == 0.0),
        "",
    );
    report.add(
        "steady",
        "operator CPU (hold)",
        format!("{cpu_pct:.2} % of a core"),
        "≤ 1 %",
        Verdict::check(cpu_pct <= 1.0),
        format!("{cpu:.2} CPU s in {:.0} s", minutes * 60.0),
    );
    report.add(
        "steady",
        format!("operator peak RSS ({n} machines)"),
        format!("{rss_peak:.1} MiB"),
        "≤ 100 MiB",
        Verdict::check(rss_peak <= 100.0),
        format!("RSS now {rss_now:.1} MiB"),
    );
    report.raw.insert(
        "steady".into(),
        json!({"machines": n, "requests": r, "fill_seconds": fill, "hold_minutes": minutes,
               "calls": calls, "status_writes": writes, "cpu_seconds": cpu,
               "cpu_percent": cpu_pct, "peak_rss_mib": rss_peak, "rss_mib": rss_now,
               "moto_cpu_fill_seconds": moto_cpu_fill}),
    );
}

// ------------------------------------------------------------------- churn

/// One random change to a random request: scale up, scale down, or return
/// machines (ids added to returnMachines and count lowered by as many, in one
/// patch). Returns a word for the tally.
async fn random_change(env: &TestEnv, names: &[String]) -> &'static str {
    let api = machines::requests(env);
    let name = &names[fastrand::usize(..names.len())];
    let Ok(mr) = api.get(name).await else {
        return "get-failed";
    };
    let count = mr.spec.count;
    let patch = match fastrand::u8(0..3) {
        0 => (
            "up",
            json!({"spec": {"count": count + fastrand::i32(1..=3)}}),
        ),
        1 if count > 1 => (
            "down",
            json!({"spec": {"count": count - fastrand::i32(1..=count.min(2))}}),
        ),
        _ => {
            let live: Vec<String> = status_live(&mr).into_iter().collect();
            if live.is_empty() || count == 0 {
                ("up", json!({"spec": {"count": count + 1}}))
            } else {
                let k = fastrand::usize(1..=live.len().min(2)).min(count as usize);
                let mut picked: Vec<String> = Vec::new();
                while picked.len() < k {
                    let id = live[fastrand::usize(..live.len())].clone();
                    if !picked.contains(&id) {
                        picked.push(id);
                    }
                }
                let mut returns = mr.spec.return_machines.clone();
                returns.extend(picked.iter().cloned());
                (
                    "return",
                    json!({"metadata": {"resourceVersion": mr.metadata.resource_version},
                           "spec": {"count": count - k as i32, "returnMachines": returns}}),
                )
            }
        }
    };
    match api
        .patch(name, &PatchParams::default(), &Patch::Merge(patch.1))
        .await
    {
        Ok(_) => patch.0,
        Err(_) => "conflict",
    }
}

/// moto's pending/running instances tagged for `cluster`.
async fn moto_live_for_cluster(ec2: &aws_sdk_ec2::Client, cluster: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:hostforge.io/cluster")
                    .values(cluster)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .expect("DescribeInstances on moto");
        ids.extend(
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| i.instance_id().map(str::to_string)),
        );
        token = out
            .next_token()
            .map(str::to_string)
            .filter(|t| !t.is_empty());
        if token.is_none() {
            return ids;
        }
    }
}

/// Duplicates (ids listed by more than one request, or more live machines in
/// status than count) and leaks (running in moto, listed nowhere) after a phase.
async fn audit(env: &TestEnv, list: &[MachineRequest]) -> (usize, usize, usize, String) {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut over = 0usize;
    for mr in list {
        let live = status_live(mr);
        over += live.len().saturating_sub(mr.spec.count.max(0) as usize);
        for id in live {
            *seen.entry(id).or_default() += 1;
        }
    }
    let listed_twice = seen.values().filter(|n| **n > 1).count();
    let in_moto: BTreeSet<String> = moto_live_for_cluster(&env.ec2(), &env.namespace)
        .await
        .into_iter()
        .collect();
    let listed: BTreeSet<String> = seen.keys().cloned().collect();
    let leaks: Vec<&String> = in_moto.difference(&listed).collect();
    let missing: Vec<&String> = listed.difference(&in_moto).collect();
    let detail = format!(
        "moto {} running, status {} live; over count {over}, listed twice {listed_twice}; leaks {:?}; listed but not running {:?}",
        in_moto.len(),
        listed.len(),
        leaks.iter().take(5).collect::<Vec<_>>(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
    (over + listed_twice, leaks.len(), missing.len(), detail)
}

async fn churn(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let r = sizes.churn_requests;
    progress!(
        start,
        "== churn and crash: {r} requests, {}s of random changes plainly, then {}s with SIGKILL every {}s",
        sizes.churn_phase_s,
        sizes.churn_phase_s,
        sizes.crash_every_s
    );
    let env = TestEnv::new("bench-churn").await;
    fwd.set_rate_limits(None);
    let config = operator_config(&env, fwd, "{enabled: false}");
    let mut op = Op::start(&env, &config, "churn-0").await;
    let templates = create_templates(&env).await;
    let names = apply_requests(&env, &templates, "churn", r, 5).await;
    if wait_all_ready(
        start,
        &env,
        "churn start",
        Instant::now(),
        Duration::from_secs(300),
    )
    .await
    .is_err()
    {
        progress!(start, "churn: not all Ready at the start; going on");
    }
    let mut raw = serde_json::Map::new();
    for (phase, crash) in [("churn", false), ("crash", true)] {
        let mut tally: BTreeMap<&str, u32> = BTreeMap::new();
        let mut kills = 0u32;
        let p0 = Instant::now();
        let mut last_kill = Instant::now();
        let mut last_print = Instant::now();
        while p0.elapsed() < Duration::from_secs(sizes.churn_phase_s) {
            *tally.entry(random_change(&env, &names).await).or_default() += 1;
            if crash && last_kill.elapsed() >= Duration::from_secs(sizes.crash_every_s) {
                op.kill();
                kills += 1;
                op = Op::start(&env, &config, &format!("{phase}-{kills}")).await;
                last_kill = Instant::now();
            }
            if last_print.elapsed() >= Duration::from_secs(10) {
                progress!(
                    start,
                    "{phase}: {:.0}s, changes {tally:?}, kills {kills}",
                    p0.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(fastrand::u64(300..1200))).await;
        }
        let settle0 = Instant::now();
        let (settle, list) =
            match wait_all_ready(start, &env, phase, settle0, Duration::from_secs(600)).await {
                Ok((s, list)) => (s, list),
                Err(list) => (f64::NAN, list),
            };
        let not_ready = list.iter().filter(|m| !is_ready(m)).count();
        let (dups, leaks, missing, detail) = audit(&env, &list).await;
        progress!(
            start,
            "{phase}: settled in {settle:.1}s; duplicates {dups}, leaks {leaks}; {detail}"
        );
        let label = if crash {
            format!(
                "with SIGKILL every {}s ({kills} kills)",
                sizes.crash_every_s
            )
        } else {
            "plain".to_string()
        };
        report.add(
            phase,
            format!("{label}: duplicates / leaks"),
            format!("{dups} / {leaks}"),
            "0 / 0",
            Verdict::check(dups == 0 && leaks == 0),
            detail.clone(),
        );
        report.add(
            phase,
            format!("{label}: requests Ready at the end"),
            format!("{}/{}", list.len() - not_ready, list.len()),
            "all",
            Verdict::check(not_ready == 0 && missing == 0),
            format!(
                "settled {settle:.1} s after the last change; changes {tally:?}; listed but not running {missing}"
            ),
        );
        raw.insert(
            phase.to_string(),
            json!({"changes": tally, "kills": kills, "settle_seconds": settle,
                   "duplicates": dups, "leaks": leaks, "missing": missing,
                   "not_ready": not_ready, "detail": detail}),
        );
    }
    report
        .raw
        .insert("churn".into(), serde_json::Value::Object(raw));
}

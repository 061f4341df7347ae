//! HostFactory: what a Symphony/LSF HostFactory caller does, through
//! `hf/scripts` (a fresh process per call, as the scheduler runs them),
//! with EC2's default buckets in the forwarder and the operator.
//!
//! R requestMachines of M machines, one after another; then getRequestStatus
//! every second for all open requests until each is `complete` with its
//! machines `succeed`; then one requestReturnMachines of every machine and
//! getRequestStatus of its `ret-` id every second until `complete` (every
//! machine terminated, as the protocol reports a return). Once with a
//! RunInstances template, once with an EC2 Fleet (instant) template.
//!
//! Then the operations' latency against a fixed status of 2,000 machines
//! (two requests of 1,000, the CRD's cap per request), no operator: the
//! plugin's own cost, beside the floor under it (a process start).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::{Forwarder, RateLimits};
use hostforge_testbed::hf::{seed, Shim};
use hostforge_testbed::machines::{self, template_is_ready};
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use serde_json::{json, Value};

use crate::operator::{operator_config, start_operator};
use crate::report::{Report, Verdict};
use crate::requests::{calls_by_action, fmt_calls};
use crate::sizes::Sizes;

/// How long the fill or the return may take before the scenario gives up.
const GIVE_UP: Duration = Duration::from_secs(900);
/// The caller's poll interval (HostFactory polls about once a second).
const POLL: Duration = Duration::from_secs(1);
/// Runs of each operation in the latency phase.
const LATENCY_RUNS: usize = 11;

/// The wall time of every successful call of each operation, in ms.
#[derive(Default)]
struct Latencies(BTreeMap<String, Vec<f64>>);

impl Latencies {
    /// (median, max) of `op`, in ms.
    fn median_max(&self, op: &str) -> Option<(f64, f64)> {
        let mut v = self.0.get(op)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some((v[v.len() / 2], v[v.len() - 1]))
    }

    fn json(&self) -> Value {
        self.0
            .iter()
            .map(|(op, v)| {
                let (med, max) = self.median_max(op).unwrap_or((f64::NAN, f64::NAN));
                (
                    op.clone(),
                    json!({"calls": v.len(), "median_ms": med, "max_ms": max}),
                )
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    }
}

/// The scheduler side: runs the scripts and times each call.
struct Caller {
    shim: Shim,
    latencies: Latencies,
}

impl Caller {
    /// Runs `op` with `input` (a fresh process through its script) and
    /// returns its answer; a failed call is the answer's `Err` with its line.
    fn call(&mut self, op: &str, label: &str, input: &Value) -> Result<Value, String> {
        let started = Instant::now();
        let out = tokio::task::block_in_place(|| self.shim.run(op, input));
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if out.code != 0 {
            // Not a latency: a call that failed at once would pass any target.
            return Err(format!("{op}: {} {}", out.stdout.trim(), out.stderr.trim()));
        }
        self.latencies.0.entry(label.into()).or_default().push(ms);
        serde_json::from_str(&out.stdout).map_err(|e| format!("{op}: not JSON ({e})"))
    }
}

/// Calls grouped as the issue counts them.
fn by_class(calls: &BTreeMap<String, u64>) -> BTreeMap<&'static str, u64> {
    let mut out = BTreeMap::new();
    for (action, n) in calls {
        let class = match action.as_str() {
            "RunInstances" | "CreateFleet" | "CreateLaunchTemplate" | "DeleteLaunchTemplate" => {
                "launch"
            }
            "TerminateInstances" => "return",
            a if a.starts_with("Describe") => "poll",
            _ => "other",
        };
        *out.entry(class).or_insert(0) += n;
    }
    out
}

fn sum_maps(a: &BTreeMap<String, u64>, b: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    let mut out = a.clone();
    for (k, v) in b {
        *out.entry(k.clone()).or_insert(0) += v;
    }
    out
}

/// What one fill-and-return run measured.
struct Run {
    submit_s: f64,
    succeed_s: f64,
    return_s: f64,
    fill_calls: BTreeMap<String, u64>,
    return_calls: BTreeMap<String, u64>,
    /// Where the return's time went (see [`return_timeline`]).
    return_timeline: String,
    throttled: u64,
    failed: usize,
    latencies: Latencies,
}

pub(crate) async fn run(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let (r, m) = (sizes.hf_requests, sizes.hf_machines);
    for (tag, api) in [("run", "RunInstances"), ("fleet", "EC2Fleet")] {
        progress!(
            start,
            "== hostfactory ({api}): {r} requestMachines × {m} through hf/scripts, EC2's default buckets"
        );
        let got = fill_and_return(start, fwd, tag, api, r, m).await;
        add_rows(report, &format!("hf-{tag}"), r, m, &got);
    }
    latency(start, report).await;
}

async fn fill_and_return(
    start: Instant,
    fwd: &Forwarder,
    tag: &str,
    api: &str,
    r: usize,
    m: i32,
) -> Run {
    let env = TestEnv::new(&format!("bench-hf-{tag}")).await;
    // EC2's documented buckets, unscaled, on both sides, both full now.
    fwd.set_rate_limits(Some(RateLimits::ec2_defaults()));
    let _op = start_operator(
        &env,
        &operator_config(&env, fwd, "{scale: 1}"),
        &format!("hf-{tag}"),
    )
    .await;
    let (subnet, _) = env.default_subnet_and_group().await;
    let template = format!("hf-{tag}");
    let mut spec = json!({"providerApi": api, "image": {"ssmParameter": AL2023_PARAM},
                          "instanceTypes": [{"type": "t3.medium"}]});
    if api == "EC2Fleet" {
        spec["subnetIds"] = json!([subnet]);
    }
    machines::create_template(&env, &template, spec).await;
    machines::wait_template(
        &env,
        &template,
        "Ready with its instance type described",
        Duration::from_secs(120),
        |mt| {
            template_is_ready(mt)
                && mt
                    .status
                    .as_ref()
                    .is_some_and(|s| s.instance_type_info.is_some())
        },
    )
    .await;
    let mut caller = Caller {
        shim: Shim::new(&env, ""),
        latencies: Latencies::default(),
    };
    // A scheduler looks at the templates before it asks for machines.
    for _ in 0..3 {
        if let Err(e) = caller.call("getAvailableTemplates", "getAvailableTemplates", &json!({})) {
            progress!(start, "hf-{tag}: {e}");
        }
    }

    fwd.reset_counters();
    let t0 = Instant::now();
    let mut open: Vec<String> = vec![];
    let mut failed = 0;
    for _ in 0..r {
        let input = json!({"template": {"templateId": template, "machineCount": m}});
        match caller.call("requestMachines", "requestMachines", &input) {
            Ok(a) => open.push(a["requestId"].as_str().unwrap_or_default().to_string()),
            Err(e) => {
                failed += 1;
                progress!(start, "hf-{tag}: {e}");
            }
        }
    }
    let submit_s = t0.elapsed().as_secs_f64();
    progress!(
        start,
        "hf-{tag}: {} requests submitted in {submit_s:.1}s",
        open.len()
    );

    // Poll every second, all open requests in one call, until each is done.
    let mut hosts: Vec<Value> = vec![];
    let mut ticker = tokio::time::interval(POLL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_note = Instant::now();
    while !open.is_empty() && t0.elapsed() < GIVE_UP {
        ticker.tick().await;
        let ids: Vec<Value> = open.iter().map(|id| json!({"requestId": id})).collect();
        let answer = match caller.call(
            "getRequestStatus",
            "getRequestStatus (create ids)",
            &json!({"requests": ids}),
        ) {
            Ok(a) => a,
            Err(e) => {
                progress!(start, "hf-{tag}: {e}");
                continue;
            }
        };
        let mut succeeded = 0;
        for req in answer["requests"].as_array().into_iter().flatten() {
            let id = req["requestId"].as_str().unwrap_or_default();
            let status = req["status"].as_str().unwrap_or_default();
            let ms = req["machines"].as_array().cloned().unwrap_or_default();
            let ok: Vec<&Value> = ms.iter().filter(|x| x["result"] == "succeed").collect();
            succeeded += ok.len();
            if status == "complete" || status == "complete_with_error" {
                if status == "complete_with_error" || ok.len() != ms.len() {
                    failed += 1;
                }
                hosts.extend(
                    ok.iter()
                        .map(|x| json!({"name": x["name"], "machineId": x["machineId"]})),
                );
                open.retain(|o| o != id);
            }
        }
        if last_note.elapsed() >= Duration::from_secs(5) {
            last_note = Instant::now();
            progress!(
                start,
                "hf-{tag}: {} requests open, {succeeded} of their machines succeed, {} done",
                open.len(),
                hosts.len()
            );
        }
    }
    let succeed_s = t0.elapsed().as_secs_f64();
    let fill_calls = calls_by_action(fwd);
    progress!(
        start,
        "hf-{tag}: {} machines succeed after {succeed_s:.1}s ({} requests not done); calls: {}",
        hosts.len(),
        open.len(),
        fmt_calls(&fill_calls)
    );
    failed += open.len();

    // HostFactory asks which of its hosts the cloud is taking back.
    if let Err(e) = caller.call(
        "getReturnRequests",
        "getReturnRequests (all hosts)",
        &json!({"machines": hosts}),
    ) {
        progress!(start, "hf-{tag}: {e}");
    }

    // Return everything in one call, then poll the return.
    let api_before = apiserver_requests(&env);
    fwd.reset_counters();
    let tr = Instant::now();
    let ret = caller.call(
        "requestReturnMachines",
        "requestReturnMachines (all)",
        &json!({"machines": hosts}),
    );
    let ret_id = match ret {
        Ok(a) => a["requestId"].as_str().unwrap_or_default().to_string(),
        Err(e) => {
            progress!(start, "hf-{tag}: {e}");
            String::new()
        }
    };
    let answered_s = tr.elapsed().as_secs_f64();
    let mut return_s = f64::NAN;
    // Each poll: when it was answered and how many machines were not done.
    let mut polls: Vec<(f64, usize)> = vec![];
    while !ret_id.is_empty() && tr.elapsed() < GIVE_UP {
        ticker.tick().await;
        match caller.call(
            "getRequestStatus",
            "getRequestStatus (ret- id)",
            &json!({"requests": [{"requestId": ret_id}]}),
        ) {
            Ok(a) => {
                let undone = a["requests"][0]["machines"].as_array().map_or(0, |ms| {
                    ms.iter().filter(|m| m["result"] != "succeed").count()
                });
                polls.push((tr.elapsed().as_secs_f64(), undone));
                if a["requests"][0]["status"] == "complete" {
                    return_s = tr.elapsed().as_secs_f64();
                    break;
                }
            }
            Err(e) => progress!(start, "hf-{tag}: {e}"),
        }
    }
    let return_calls = calls_by_action(fwd);
    let api_calls = diff_counts(&apiserver_requests(&env), &api_before);
    let return_timeline = return_timeline(
        fwd,
        &caller.shim,
        tr,
        (answered_s, return_s),
        &polls,
        &api_calls,
    );
    progress!(start, "hf-{tag}: return timeline: {return_timeline}");
    let throttled = fwd.throttled();
    fwd.set_rate_limits(None);
    progress!(
        start,
        "hf-{tag}: return of {} complete after {return_s:.1}s; calls: {}",
        hosts.len(),
        fmt_calls(&return_calls)
    );
    Run {
        submit_s,
        succeed_s,
        return_s,
        fill_calls,
        return_calls,
        return_timeline,
        throttled,
        failed,
        latencies: caller.latencies,
    }
}

fn add_rows(report: &mut Report, scenario: &str, r: usize, m: i32, got: &Run) {
    let machines_n = r as f64 * f64::from(m);
    report.add(
        scenario,
        format!("all {r} × {m} succeed after the first request"),
        format!("{:.1} s", got.succeed_s),
        "≤ 15 s",
        Verdict::check(got.succeed_s <= 15.0 && got.failed == 0),
        format!(
            "{r} requestMachines submitted in {:.1} s; {} requests failed or unfinished",
            got.submit_s, got.failed
        ),
    );
    let all = sum_maps(&got.fill_calls, &got.return_calls);
    let total: u64 = all.values().sum();
    let classes = by_class(&all);
    let per = |class: &str| classes.get(class).copied().unwrap_or(0) as f64 / machines_n;
    let per_machine = total as f64 / machines_n;
    report.add(
        scenario,
        "EC2 calls per machine (launch, poll, return)",
        format!(
            "{per_machine:.3} (launch {:.3}, poll {:.3}, return {:.3}, other {:.3})",
            per("launch"),
            per("poll"),
            per("return"),
            per("other")
        ),
        "≤ 0.1",
        // Calls per machine mean nothing unless every machine was there.
        Verdict::check(per_machine <= 0.1 && got.failed == 0 && got.succeed_s.is_finite()),
        format!("{}; {} throttled answers", fmt_calls(&all), got.throttled),
    );
    report.add(
        scenario,
        format!("return of all {} complete", r * m as usize),
        format!("{:.1} s", got.return_s),
        "≤ 5 s",
        Verdict::check(got.return_s <= 5.0),
        format!(
            "return calls: {}; {}",
            fmt_calls(&got.return_calls),
            got.return_timeline
        ),
    );
    for (op, (med, max)) in got
        .latencies
        .0
        .keys()
        .filter_map(|op| got.latencies.median_max(op).map(|x| (op, x)))
    {
        let n = got.latencies.0.get(op).map_or(0, Vec::len);
        report.add(
            scenario,
            format!("{op} latency (median / max)"),
            format!("{med:.0} / {max:.0} ms"),
            "",
            Verdict::Info,
            format!("{n} calls, one process each"),
        );
    }
    report.raw.insert(
        scenario.into(),
        json!({"requests": r, "machines_per_request": m, "submit_seconds": got.submit_s,
               "succeed_seconds": got.succeed_s, "return_seconds": got.return_s,
               "fill_calls": got.fill_calls, "return_calls": got.return_calls,
               "calls_per_machine": per_machine, "throttled": got.throttled,
               "failed": got.failed, "latency": got.latencies.json()}),
    );
}

/// Where a return's time went, in seconds after requestReturnMachines
/// started (`began`): its answer (with the plugin's own list and slowest
/// patch, from its log), the TerminateInstances calls, the DescribeInstances
/// calls (the polls that can see `terminated`), when the caller saw the
/// return `complete` (`answered_s`, `complete_s`), the apiserver requests
/// made meanwhile (10 or more of a kind), and the machines each of the
/// caller's `polls` found undone.
fn return_timeline(
    fwd: &Forwarder,
    shim: &Shim,
    began: Instant,
    (answered_s, complete_s): (f64, f64),
    polls: &[(f64, usize)],
    api_calls: &BTreeMap<String, u64>,
) -> String {
    let after = |at: &Instant| at.saturating_duration_since(began).as_secs_f64();
    let terminations = fwd.call_times("TerminateInstances");
    let mut out = format!("answered at {answered_s:.2} s");
    if let Some((list, patch)) = return_log_figures(shim) {
        out.push_str(&format!(
            " (plugin: list {list} ms, slowest patch {patch} ms)"
        ));
    }
    if let (Some(first), Some(last)) = (terminations.first(), terminations.last()) {
        out.push_str(&format!(
            ", TerminateInstances {} calls from {:.2} to {:.2} s",
            terminations.len(),
            after(first),
            after(last)
        ));
        // Every DescribeInstances of the return: the polls that can see
        // `terminated`, after the last TerminateInstances and before.
        let describes: Vec<String> = fwd
            .call_times("DescribeInstances")
            .iter()
            .filter(|at| **at > began)
            .map(|at| format!("{:.2}", after(at)))
            .collect();
        out.push_str(&format!(
            ", DescribeInstances at {} s",
            describes.join(", ")
        ));
    }
    out.push_str(&format!(", complete seen at {complete_s:.2} s"));
    let mut busiest: Vec<(&String, &u64)> = api_calls.iter().filter(|(_, n)| **n >= 10).collect();
    busiest.sort_by(|a, b| b.1.cmp(a.1));
    let busiest: Vec<String> = busiest.iter().map(|(k, n)| format!("{k} {n}")).collect();
    out.push_str(&format!(
        "; apiserver requests meanwhile: {}",
        busiest.join(", ")
    ));
    let polled: Vec<String> = polls
        .iter()
        .map(|(at, undone)| format!("{at:.2} s: {undone}"))
        .collect();
    out.push_str(&format!(
        "; machines not done at each poll: {}",
        polled.join(", ")
    ));
    out
}

/// The apiserver's `apiserver_request_total` by verb and resource (with
/// its subresource), from its /metrics; empty when it cannot be read.
fn apiserver_requests(env: &TestEnv) -> BTreeMap<String, u64> {
    let out = env.bed.kubectl(&["get", "--raw", "/metrics"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut counts = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| -> String {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *counts.entry(key).or_insert(0) += n;
    }
    counts
}

/// `after` minus `before`, per key, the keys that grew.
fn diff_counts(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, n)| {
            (
                k.clone(),
                n.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// The list time and the slowest patch of the last requestReturnMachines,
/// in ms, from the `machines returned` lines of the plugin's log.
fn return_log_figures(shim: &Shim) -> Option<(u64, u64)> {
    let log = std::fs::read_to_string(shim.log_dir.join("hostforge-hf.log")).ok()?;
    let field = |line: &str, name: &str| -> Option<u64> {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        rest.split(' ').next()?.parse().ok()
    };
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("machines returned"))
        .collect();
    let list = field(lines.last()?, "list_ms")?;
    let patch = lines.iter().filter_map(|l| field(l, "patch_ms")).max()?;
    Some((list, patch))
}

/// The operations against 2,000 machines in status, no operator, beside a
/// process start.
async fn latency(start: Instant, report: &mut Report) {
    const PER_REQUEST: usize = 1000;
    progress!(
        start,
        "== hostfactory latency: 2 requests × {PER_REQUEST} machines in status, {LATENCY_RUNS} runs each"
    );
    let env = TestEnv::new("bench-hf-latency").await;
    seed::ready_template(&env, "bench", 2 * PER_REQUEST).await;
    for (i, name) in ["hf-bench-a", "hf-bench-b"].iter().enumerate() {
        seed::scheduler_request(&env, name, "bench", PER_REQUEST, i * PER_REQUEST).await;
    }
    let mut caller = Caller {
        shim: Shim::new(&env, ""),
        latencies: Latencies::default(),
    };
    let status_in = json!({"requests": [{"requestId": "hf-bench-a"}, {"requestId": "hf-bench-b"}]});
    let bin = hostforge_testbed::operator::operator_bin();
    let mut starts = vec![];
    // One untimed call of each first: the binary in the page cache.
    let _ = caller.call("getAvailableTemplates", "warm-up", &json!({}));
    caller.latencies.0.remove("warm-up");
    for _ in 0..LATENCY_RUNS {
        let t = Instant::now();
        let _ = std::process::Command::new(&bin).arg("--version").output();
        starts.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = caller.call("getAvailableTemplates", "getAvailableTemplates", &json!({}));
        let answer = caller.call(
            "getRequestStatus",
            "getRequestStatus (2,000 machines)",
            &status_in,
        );
        let n: usize = answer
            .ok()
            .and_then(|a| a["requests"].as_array().cloned())
            .map(|rs| {
                rs.iter()
                    .map(|r| r["machines"].as_array().map_or(0, Vec::len))
                    .sum()
            })
            .unwrap_or(0);
        if n != 2 * PER_REQUEST {
            progress!(start, "hf-latency: getRequestStatus answered {n} machines");
        }
        let _ = caller.call(
            "requestMachines",
            "requestMachines",
            &json!({"template": {"templateId": "bench", "machineCount": 1}}),
        );
    }
    caller
        .latencies
        .0
        .insert("process start (--version)".into(), starts);
    let targets = [
        ("getAvailableTemplates", 50.0),
        ("requestMachines", 50.0),
        ("getRequestStatus (2,000 machines)", 100.0),
    ];
    for (op, target) in targets {
        let (med, max) = caller
            .latencies
            .median_max(op)
            .unwrap_or((f64::NAN, f64::NAN));
        report.add(
            "hf-latency",
            format!("{op} (median / max)"),
            format!("{med:.0} / {max:.0} ms"),
            format!("median ≤ {target:.0} ms"),
            Verdict::check(med <= target),
            format!("{LATENCY_RUNS} runs, one process each, release build"),
        );
    }
    if let Some((med, max)) = caller.latencies.median_max("process start (--version)") {
        report.add(
            "hf-latency",
            "process start alone (hostforge --version)",
            format!("{med:.1} / {max:.1} ms"),
            "",
            Verdict::Info,
            "the floor under every operation",
        );
    }
    report
        .raw
        .insert("hf-latency".into(), caller.latencies.json());
}

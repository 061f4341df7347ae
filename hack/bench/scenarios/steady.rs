//! Steady state: what holding many machines costs (API calls, status writes,
//! CPU, memory).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::TestEnv;
use serde_json::json;

use crate::operator::{operator_config, start_operator, FULL_SWEEP, POLL, SWEEP};
use crate::report::{Report, Verdict};
use crate::requests::{
    apply_requests, calls_by_action, create_templates, fmt_calls, wait_all_ready,
};
use crate::sample::{cpu_seconds, moto_pid, status_kb};
use crate::sizes::Sizes;

pub(crate) async fn run(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
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
    let op = start_operator(&env, &operator_config(&env, fwd, fill_limits), "steady").await;
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
    // The peak so far is the fill's: told apart from the hold's below.
    let rss_fill = status_kb(op.pid(), "VmHWM").unwrap_or(f64::NAN) / 1024.0;
    let rss_held = status_kb(op.pid(), "VmRSS").unwrap_or(f64::NAN) / 1024.0;
    fwd.reset_counters();
    let writes0 = op.metric_async("hostforge_status_writes_total", &[]).await;
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
    let writes = op.metric_async("hostforge_status_writes_total", &[]).await - writes0;
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
        format!(
            "peak by the end of the fill {rss_fill:.1} MiB, RSS then {rss_held:.1} MiB, now {rss_now:.1} MiB"
        ),
    );
    report.raw.insert(
        "steady".into(),
        json!({"machines": n, "requests": r, "fill_seconds": fill, "hold_minutes": minutes,
               "calls": calls, "status_writes": writes, "cpu_seconds": cpu,
               "cpu_percent": cpu_pct, "peak_rss_mib": rss_peak, "rss_mib": rss_now,
               "fill_peak_rss_mib": rss_fill, "held_rss_mib": rss_held,
               "moto_cpu_fill_seconds": moto_cpu_fill}),
    );
}

//! Burst: many requests applied at once, beside a direct-SDK baseline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::TestEnv;
use serde_json::json;

use crate::baseline;
use crate::operator::{operator_config, start_operator, POLL};
use crate::report::{Report, Verdict};
use crate::requests::{
    apply_requests, calls_by_action, create_templates, fmt_calls, planned_batches, wait_all_ready,
};
use crate::sizes::Sizes;

pub(crate) async fn run(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
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
    let op = start_operator(
        &env,
        &operator_config(&env, fwd, "{enabled: false}"),
        "burst",
    )
    .await;
    let templates = create_templates(&env).await;
    fwd.reset_counters();
    let polls_before = op.metric_async("hostforge_machine_polls_total", &[]).await;
    let sweeps_before = op.metric_async("hostforge_machine_sweeps_total", &[]).await;
    let t0 = Instant::now();
    apply_requests(&env, &templates, "burst", r, m).await;
    progress!(
        start,
        "burst: {r} requests applied in {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    let outcome = wait_all_ready(start, &env, "burst", t0, Duration::from_secs(600)).await;
    let calls = calls_by_action(fwd);
    let polls = op.metric_async("hostforge_machine_polls_total", &[]).await - polls_before;
    let sweeps = op.metric_async("hostforge_machine_sweeps_total", &[]).await - sweeps_before;
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
    let ec2 = hostforge_testbed::ec2_client(fwd.endpoint());
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
        format!("≤ 1.0 × baseline = {:.1} s", base.seconds),
        Verdict::check(ratio <= 1.0),
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
        format!("≤ 1.0 × baseline = {:.1} s", bracket),
        Verdict::check(run_only / bracket <= 1.0),
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
    let _op = start_operator(
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

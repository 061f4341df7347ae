//! Rate limits: the burst under EC2's token buckets, against the shortest
//! time those buckets allow.

use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::{Forwarder, RateLimits};
use hostforge_testbed::machines::is_ready;
use hostforge_testbed::TestEnv;
use serde_json::json;

use crate::operator::{operator_config, start_operator};
use crate::report::{Report, Verdict};
use crate::requests::{
    apply_requests, calls_by_action, create_templates, degraded, fmt_calls, wait_all_ready,
};
use crate::sizes::Sizes;

/// Most machines one coalesced launch carries (the operator's
/// `request::batch::MAX_BATCH`).
const MAX_BATCH: f64 = hostforge::controller::request::batch::MAX_BATCH as f64;

/// The shortest time EC2's buckets allow for `run_calls` RunInstances
/// launching `instances` in all and `fleet_calls` instant fleets (each with
/// one CreateLaunchTemplate and one DeleteLaunchTemplate), all buckets full
/// at the start: per bucket, (demand − burst) / refill rate; the largest
/// wins. With coalesced launches `run_calls` is the fewest calls that can
/// carry the machines, so the instance bucket is what binds.
fn bucket_bound(
    limits: &RateLimits,
    run_calls: f64,
    instances: f64,
    fleet_calls: f64,
) -> (f64, String) {
    let over = |demand: f64, b: hostforge_testbed::forwarder::Bucket| {
        ((demand - b.size) / b.rate).max(0.0)
    };
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
                instances, limits.launched_instances.size, limits.launched_instances.rate
            ),
            over(instances, limits.launched_instances),
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

pub(crate) async fn run(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
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
    let op = start_operator(
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
    // RunInstances requests of one template share calls (coalesceLaunches):
    // the fewest calls are one per template per MAX_BATCH machines. The
    // fleet template is a mixed one, whose batches each go alone.
    let run_templates: Vec<&&str> = templates.iter().filter(|t| **t != "bench-fleet").collect();
    let run_requests = (0..r)
        .filter(|i| templates[i % templates.len()] != "bench-fleet")
        .count();
    let instances = (run_requests as f64) * f64::from(m);
    let per_template = instances / run_templates.len().max(1) as f64;
    let run_calls = run_templates.len() as f64 * (per_template / MAX_BATCH).ceil();
    let fleet_calls = (r - run_requests) as f64;
    let (bound, how) = bucket_bound(&model, run_calls, instances, fleet_calls);
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
        format!("≤ 1.1 × bucket bound = {:.1} s", 1.1 * bound),
        Verdict::check(took <= 1.1 * bound),
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

//! Memory under hostile cheap requests: `n` MachineRequests with count 0,
//! 2,000 made-up `returnMachines` ids and ~200 KiB of annotations each (the
//! testbed's `hostile` module) exist before the release operator starts; its
//! peak resident memory once it has reconciled them all is printed beside
//! the chart's memory limit. `tests/status_size.rs` asserts the same bound
//! with the debug build.

use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::hostile;
use hostforge_testbed::TestEnv;
use serde_json::json;

use crate::operator::{operator_config, start_operator};
use crate::report::{Report, Verdict};
use crate::sizes::Sizes;

pub(crate) async fn run(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let n = sizes.hostile_requests;
    progress!(
        start,
        "== hostile: {n} cheap requests of ~250 KiB each, then the operator"
    );
    let env = TestEnv::new("bench-hostile").await;
    hostile::create(&env, n).await;
    progress!(
        start,
        "hostile: {n} requests created; starting the operator"
    );
    let t0 = Instant::now();
    let op = start_operator(
        &env,
        &operator_config(&env, fwd, "{enabled: false}"),
        "hostile",
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(1200);
    let mut done = 0;
    while done < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(2)).await;
        done = hostile::reconciled(&env).await;
    }
    let took = t0.elapsed().as_secs_f64();
    let limit_mib = hostile::chart_memory_limit_kib() / 1024;
    let Some((peak_kib, cpu)) = op.usage() else {
        report.add("hostile", "peak RSS", "unreadable", "", Verdict::Miss, "");
        return;
    };
    let peak_mib = peak_kib / 1024;
    progress!(
        start,
        "hostile: {done} of {n} reconciled after {took:.1}s; peak RSS {peak_mib} MiB"
    );
    report.add(
        "hostile",
        format!("peak RSS with {n} hostile requests"),
        format!("{peak_mib} MiB"),
        format!("< chart limit {limit_mib} MiB"),
        Verdict::check(done == n && peak_mib < limit_mib),
        format!(
            "{done} of {n} reconciled after {took:.1} s, {:.1} s of CPU",
            cpu.as_secs_f64()
        ),
    );
    report.raw.insert(
        "hostile".into(),
        json!({"requests": n, "reconciled": done, "seconds": took,
               "peak_rss_mib": peak_mib, "limit_mib": limit_mib, "cpu_seconds": cpu.as_secs_f64()}),
    );
}

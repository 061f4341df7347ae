//! Interruptions: how long EC2's word that a machine is going takes to show
//! in the machine's status (issue 20: p50 ≤ 2 s, p95 ≤ 5 s through the
//! interruption queue), beside today's polling path.
//!
//! 60 spot machines (6 requests of 10) are filled with the operator's
//! `interruptionQueue` wired to moto's SQS through an EventBridge rule. Then,
//! one at a time in a seeded order with a seeded pause between them, EC2's
//! documented events are put with PutEvents for machines of a seeded sample:
//! spot interruption warnings, rebalance recommendations, and state changes
//! to `terminated` (each after terminating the instance in moto, so the
//! status it leads to is true). A watch on the requests records when each
//! machine's status first shows the event's field or state; the figure is
//! the time from the PutEvents answer to that.
//!
//! Then the operator is restarted without the queue, which is today's path:
//! spot notices found by one DescribeSpotInstanceRequests every
//! `spotNoticeInterval` (10 s; moto keeps every spot request `fulfilled`, so
//! the forwarder answers that call with the noticed requests, as the
//! integration tests do) and terminations found by the sweep every
//! `sweepInterval` (60 s). Both are put in a steady trickle with seeded gaps,
//! independent of when the operator looks, so the figures sample the whole
//! interval. Rebalance recommendations have no polling path: EC2 gives them
//! only as events and in instance metadata.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostforge_testbed::cloud_events::{Ec2Event, EventQueue};
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{self, status_live, template_is_ready};
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::operator::{operator_config, start_operator, SWEEP};
use crate::report::{Report, Verdict};
use crate::requests::{apply_requests, calls_by_action, fmt_calls, wait_all_ready};
use crate::seen::Seen;
use crate::sizes::Sizes;

const REQUESTS: usize = 6;
const MACHINES_PER_REQUEST: i32 = 10;
/// Events put through the queue, by kind.
const QUEUE_SAMPLES: [(Ec2Event, usize); 3] = [
    (Ec2Event::SpotWarning, 12),
    (Ec2Event::Rebalance, 12),
    (Ec2Event::Terminated, 8),
];
/// Spot notices and terminations on the polling path.
const POLL_NOTICES: usize = 10;
const POLL_TERMINATIONS: usize = 6;
/// The order, the sample and the pauses.
const SEED: u64 = 20;
/// The operator's default `spotNoticeInterval` (not set in the config).
const SPOT_NOTICE: Duration = Duration::from_secs(10);
/// How long one queued event may take before it counts as not seen: far
/// above the target, so a slow machine shows as a slow figure.
const QUEUE_WAIT: Duration = Duration::from_secs(60);
/// The same on the polling path: a whole interval, plus room.
const POLL_WAIT: Duration = Duration::from_secs(150);
const TEMPLATE: &str = "bench-spot";
const DSIR: &str = "DescribeSpotInstanceRequests";

/// Latencies of one kind of event, in seconds, and how many never showed.
#[derive(Default)]
struct Samples {
    seconds: Vec<f64>,
    missed: usize,
}

impl Samples {
    fn add(&mut self, from: Instant, seen: Option<Instant>) {
        match seen {
            Some(t) => self
                .seconds
                .push(t.saturating_duration_since(from).as_secs_f64()),
            None => self.missed += 1,
        }
    }

    /// The nearest-rank `p` quantile (0 < p ≤ 1).
    fn quantile(&self, p: f64) -> f64 {
        let mut s = self.seconds.clone();
        if s.is_empty() {
            return f64::NAN;
        }
        s.sort_by(f64::total_cmp);
        let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }

    fn summary(&self) -> String {
        format!(
            "p50 {:.2} s, p95 {:.2} s (n = {}{})",
            self.quantile(0.5),
            self.quantile(0.95),
            self.seconds.len(),
            if self.missed > 0 {
                format!(", {} not seen", self.missed)
            } else {
                String::new()
            }
        )
    }

    fn meets_target(&self) -> bool {
        self.missed == 0 && self.quantile(0.5) <= 2.0 && self.quantile(0.95) <= 5.0
    }

    fn json(&self) -> serde_json::Value {
        json!({"seconds": self.seconds, "missed": self.missed,
               "p50": self.quantile(0.5), "p95": self.quantile(0.95)})
    }
}

pub(crate) async fn run(start: Instant, _sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
    let n = REQUESTS as i32 * MACHINES_PER_REQUEST;
    progress!(
        start,
        "== interruptions: {n} spot machines; events through the queue, then the polling path"
    );
    let env = TestEnv::new("bench-interrupt").await;
    fwd.set_rate_limits(None);
    fwd.disable_fidelity();
    fwd.clear_reply(DSIR);
    let queue_name = format!("hf-{}", env.namespace);
    let queue = match EventQueue::wire(
        &env.bed.moto_url,
        &queue_name,
        &["aws.ec2"],
        &Ec2Event::ALL.map(Ec2Event::detail_type),
    )
    .await
    {
        Ok(q) => q,
        Err(e) => {
            report.add(
                "interruptions",
                "queue wiring on moto",
                "failed",
                "",
                Verdict::Miss,
                e.to_string(),
            );
            return;
        }
    };
    let base = operator_config(&env, fwd, "{}");
    let mut op = start_operator(&env, &with_queue(&base, &queue_name), "interruptions-queue").await;
    machines::create_template(
        &env,
        TEMPLATE,
        json!({"image": {"ssmParameter": AL2023_PARAM},
               "instanceTypes": [{"type": "t3.micro"}], "capacityType": "spot"}),
    )
    .await;
    machines::wait_template(
        &env,
        TEMPLATE,
        "Ready",
        Duration::from_secs(60),
        template_is_ready,
    )
    .await;
    let t0 = Instant::now();
    apply_requests(&env, &[TEMPLATE], "spot", REQUESTS, MACHINES_PER_REQUEST).await;
    let list = match wait_all_ready(
        start,
        &env,
        "interruptions fill",
        t0,
        Duration::from_secs(300),
    )
    .await
    {
        Ok((s, list)) => {
            progress!(
                start,
                "interruptions: {n} spot machines Ready after {s:.1}s"
            );
            list
        }
        Err(_) => {
            report.add(
                "interruptions",
                format!("fill {n} spot machines"),
                "not Ready in 300 s",
                "",
                Verdict::Miss,
                "no latency measured",
            );
            return;
        }
    };
    let mut rng = fastrand::Rng::with_seed(SEED);
    let mut ids: Vec<String> = list.iter().flat_map(status_live).collect();
    ids.sort();
    rng.shuffle(&mut ids);
    let mut ids = ids.into_iter();
    let seen = Seen::watch(&env);

    // The queue.
    let mut plan: Vec<(Ec2Event, String)> = Vec::new();
    for (event, k) in QUEUE_SAMPLES {
        plan.extend(ids.by_ref().take(k).map(|id| (event, id)));
    }
    rng.shuffle(&mut plan);
    fwd.reset_counters();
    let mut queued: BTreeMap<Ec2Event, Samples> = BTreeMap::new();
    for (i, (event, id)) in plan.iter().enumerate() {
        if *event == Ec2Event::Terminated {
            if let Err(e) = env
                .ec2()
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
            {
                progress!(start, "interruptions: terminating {id} in moto: {e}");
            }
        }
        if let Err(e) = queue.put_event(*event, id).await {
            progress!(start, "interruptions: {e}");
            queued.entry(*event).or_default().missed += 1;
            continue;
        }
        let put = Instant::now();
        let shown = seen.wait(id, *event, QUEUE_WAIT).await;
        queued.entry(*event).or_default().add(put, shown);
        if (i + 1) % 8 == 0 {
            progress!(
                start,
                "interruptions: {}/{} queued events in status",
                i + 1,
                plan.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(0..1000))).await;
    }
    let queue_calls = calls_by_action(fwd);
    let polled_with_queue = queue_calls.get(DSIR).copied().unwrap_or(0);
    progress!(
        start,
        "interruptions: queue phase done; calls {}",
        fmt_calls(&queue_calls)
    );
    op.terminate(Duration::from_secs(30)).await;
    drop(op);

    // Today's path: no queue.
    let notice_ids: Vec<String> = ids.by_ref().take(POLL_NOTICES).collect();
    let lost_ids: Vec<String> = ids.by_ref().take(POLL_TERMINATIONS).collect();
    // Gaps of 3-7 s (notices) and 5-11 s (terminations): the trickles span
    // several intervals at random phases.
    let notice_gaps: Vec<u64> = notice_ids.iter().map(|_| rng.u64(3000..7000)).collect();
    let lost_gaps: Vec<u64> = lost_ids.iter().map(|_| rng.u64(5000..11000)).collect();
    fwd.reset_counters();
    fwd.reply_with(DSIR, noticed_spot_requests(&[]));
    let op = start_operator(&env, &base, "interruptions-poll").await;
    progress!(
        start,
        "interruptions: polling path: {} notices and {} terminations in a trickle",
        notice_ids.len(),
        lost_ids.len()
    );
    let notices = async {
        let mut marked: Vec<(String, String)> = Vec::new();
        let mut at = Vec::new();
        for (id, gap) in notice_ids.iter().zip(&notice_gaps) {
            tokio::time::sleep(Duration::from_millis(*gap)).await;
            let now = Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%S.000Z")
                .to_string();
            marked.push((id.clone(), now));
            fwd.reply_with(DSIR, noticed_spot_requests(&marked));
            at.push(Instant::now());
        }
        at
    };
    let terminations = async {
        let mut at = Vec::new();
        for (id, gap) in lost_ids.iter().zip(&lost_gaps) {
            tokio::time::sleep(Duration::from_millis(*gap)).await;
            if let Err(e) = env
                .ec2()
                .terminate_instances()
                .instance_ids(id)
                .send()
                .await
            {
                progress!(start, "interruptions: terminating {id} in moto: {e}");
            }
            at.push(Instant::now());
        }
        at
    };
    let (notice_at, lost_at) = futures::join!(notices, terminations);
    let mut polled: BTreeMap<Ec2Event, Samples> = BTreeMap::new();
    for (ids, at, event) in [
        (&notice_ids, &notice_at, Ec2Event::SpotWarning),
        (&lost_ids, &lost_at, Ec2Event::Terminated),
    ] {
        for (id, put) in ids.iter().zip(at) {
            let left = POLL_WAIT.saturating_sub(put.elapsed());
            let shown = seen.wait(id, event, left).await;
            polled.entry(event).or_default().add(*put, shown);
        }
    }
    let poll_calls = calls_by_action(fwd);
    fwd.clear_reply(DSIR);
    drop(op);
    progress!(
        start,
        "interruptions: polling phase done; calls {}",
        fmt_calls(&poll_calls)
    );

    add_rows(report, &queued, &polled, polled_with_queue, &queue_calls);
    report.raw.insert(
        "interruptions".into(),
        json!({
            "machines": n, "seed": SEED,
            "queue": queued.iter().map(|(e, s)| (e.label(), s.json())).collect::<BTreeMap<_, _>>(),
            "polling": polled.iter().map(|(e, s)| (e.label(), s.json())).collect::<BTreeMap<_, _>>(),
            "queue_calls": queue_calls, "poll_calls": poll_calls,
            "spot_notice_interval_s": SPOT_NOTICE.as_secs(), "sweep_interval_s": SWEEP.as_secs(),
        }),
    );
}

fn add_rows(
    report: &mut Report,
    queued: &BTreeMap<Ec2Event, Samples>,
    polled: &BTreeMap<Ec2Event, Samples>,
    polled_with_queue: u64,
    queue_calls: &BTreeMap<String, u64>,
) {
    const TARGET: &str = "p50 ≤ 2 s, p95 ≤ 5 s";
    let mut all = Samples::default();
    for (event, s) in queued {
        all.seconds.extend(&s.seconds);
        all.missed += s.missed;
        report.add(
            "interruptions",
            format!("queue: {} → status", event.label()),
            s.summary(),
            TARGET,
            Verdict::check(s.meets_target()),
            "from the PutEvents answer to the watch event showing it",
        );
    }
    report.add(
        "interruptions",
        "queue: every event → status",
        all.summary(),
        TARGET,
        Verdict::check(all.meets_target()),
        format!(
            "one at a time, 0-1 s apart; ReceiveMessage {}, DeleteMessage {}",
            queue_calls.get("ReceiveMessage").copied().unwrap_or(0),
            queue_calls.get("DeleteMessage").copied().unwrap_or(0)
        ),
    );
    report.add(
        "interruptions",
        "queue: DescribeSpotInstanceRequests",
        polled_with_queue.to_string(),
        "0 while the queue answers",
        Verdict::check(polled_with_queue == 0),
        "",
    );
    let bounds = [
        (
            Ec2Event::SpotWarning,
            format!("bound: spotNoticeInterval {} s", SPOT_NOTICE.as_secs()),
            "from the forwarder answering with the notice (moto keeps spot requests \
             fulfilled) to status",
        ),
        (
            Ec2Event::Terminated,
            format!("bound: sweepInterval {} s", SWEEP.as_secs()),
            "from TerminateInstances on moto to status, found by the sweep",
        ),
    ];
    for (event, bound, note) in bounds {
        let value = polled
            .get(&event)
            .map(Samples::summary)
            .unwrap_or_else(|| "not measured".into());
        report.add(
            "interruptions",
            format!("today (no queue): {} → status", event.label()),
            value,
            bound,
            Verdict::Info,
            note,
        );
    }
    report.add(
        "interruptions",
        format!("today (no queue): {} → status", Ec2Event::Rebalance.label()),
        "never",
        "",
        Verdict::Info,
        "EC2 gives rebalance recommendations only as events and in instance metadata",
    );
}

/// The operator config `base` with `queue` as the provider's
/// `interruptionQueue` (set just below its `endpointUrl`).
fn with_queue(base: &str, queue: &str) -> String {
    let mut out = String::with_capacity(base.len() + 64);
    for line in base.lines() {
        out.push_str(line);
        out.push('\n');
        if line.trim_start().starts_with("endpointUrl:") {
            out.push_str(&format!("    interruptionQueue: {queue}\n"));
        }
    }
    out
}

/// EC2's answer to DescribeSpotInstanceRequests filtered on the notice codes,
/// with a `marked-for-termination` request for each (instance, notice time)
/// of `marked`
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-request-status.html).
fn noticed_spot_requests(marked: &[(String, String)]) -> String {
    let items: String = marked
        .iter()
        .enumerate()
        .map(|(i, (instance, at))| {
            format!(
                "<item><spotInstanceRequestId>sir-{i:08x}</spotInstanceRequestId>\
                 <state>active</state>\
                 <status><code>marked-for-termination</code><updateTime>{at}</updateTime>\
                 <message>Your Spot Instance is marked to be terminated.</message></status>\
                 <instanceId>{instance}</instanceId></item>"
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <DescribeSpotInstanceRequestsResponse xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\">\
         <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>\
         <spotInstanceRequestSet>{items}</spotInstanceRequestSet>\
         </DescribeSpotInstanceRequestsResponse>"
    )
}

//! Churn and crash: random changes, then the same with the operator
//! SIGKILLed periodically; neither may leave duplicates or leaks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::{Fidelity, Forwarder};
use hostforge_testbed::machines::{self, is_ready, status_live};
use hostforge_testbed::TestEnv;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::audit::{audit, templates_left};
use crate::operator::{operator_config, start_operator};
use crate::report::{Report, Verdict};
use crate::requests::{apply_requests, create_templates, settled, wait_all, wait_all_ready};
use crate::sizes::Sizes;

/// The random EC2 profile's seed: the same seed and call order give the
/// same faults.
const FIDELITY_SEED: u64 = 16;

/// How long the fidelity phase gives the launch-template collector (its
/// grace period, 2 min by default, plus a few sweeps) before counting what
/// is left.
const TEMPLATE_WAIT: Duration = Duration::from_secs(180);

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

pub(crate) async fn run(start: Instant, sizes: &Sizes, fwd: &Forwarder, report: &mut Report) {
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
    let mut op = start_operator(&env, &config, "churn-0").await;
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
    // The third phase crashes the operator the same way with EC2's
    // behaviour modelled at random (lost and partial answers, lag, deaths at
    // launch; testbed/src/forwarder/fidelity): there a request may end
    // Degraded naming the cloud's answer (offerings cooled down by deaths),
    // but never stuck without a cause, and nothing duplicated or leaked.
    for (phase, crash, fidelity) in [
        ("churn", false, false),
        ("crash", true, false),
        ("fidelity", true, true),
    ] {
        if fidelity {
            fwd.enable_fidelity(Fidelity::random(FIDELITY_SEED));
        }
        let mut tally: BTreeMap<&str, u32> = BTreeMap::new();
        let mut kills = 0u32;
        let p0 = Instant::now();
        let mut last_kill = Instant::now();
        let mut last_print = Instant::now();
        while p0.elapsed() < Duration::from_secs(sizes.churn_phase_s) {
            *tally.entry(random_change(&env, &names).await).or_default() += 1;
            if crash && last_kill.elapsed() >= Duration::from_secs(sizes.crash_every_s) {
                op.kill9();
                kills += 1;
                op = start_operator(&env, &config, &format!("{phase}-{kills}")).await;
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
        let done = if fidelity { settled } else { is_ready };
        let (settle, list) =
            match wait_all(start, &env, phase, settle0, Duration::from_secs(600), done).await {
                Ok((s, list)) => (s, list),
                Err(list) => (f64::NAN, list),
            };
        let not_ready = list.iter().filter(|m| !done(m)).count();
        // Of the settled ones, how many are Ready (the rest Degraded naming
        // the cloud, in the fidelity phase).
        let ready = list.iter().filter(|m| is_ready(m)).count();
        let (dups, leaks, missing, detail) = audit(&env, &list).await;
        if fidelity {
            // Leaked launch templates are counted once the collector has had
            // its grace period (it runs every sweep and keeps what a Pending
            // batch needs).
            let templates = templates_left(&env, TEMPLATE_WAIT).await;
            let counters = fwd.fidelity_counters();
            fwd.disable_fidelity();
            progress!(
                start,
                "{phase}: launch templates left {templates} after up to {}s; replays {}, partial {}, deaths {}",
                TEMPLATE_WAIT.as_secs(),
                counters.replays,
                counters.partial_launches,
                counters.deaths
            );
            report.add(
                phase,
                "random EC2 faults, SIGKILL: launch templates left".to_string(),
                templates.to_string(),
                "0",
                Verdict::check(templates == 0),
                format!(
                    "seed {FIDELITY_SEED}; replays {}, partial launches {}, deaths {}, hidden reads {}",
                    counters.replays,
                    counters.partial_launches,
                    counters.deaths,
                    counters.hidden_by_id + counters.hidden_by_tag
                ),
            );
        }
        progress!(
            start,
            "{phase}: settled in {settle:.1}s; duplicates {dups}, leaks {leaks}; {detail}"
        );
        let label = if fidelity {
            format!(
                "random EC2 faults, SIGKILL every {}s ({kills} kills)",
                sizes.crash_every_s
            )
        } else if crash {
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
        let what = if fidelity {
            "requests Ready or Degraded naming the cloud"
        } else {
            "requests Ready at the end"
        };
        report.add(
            phase,
            format!("{label}: {what}"),
            format!("{}/{}", list.len() - not_ready, list.len()),
            "all",
            Verdict::check(not_ready == 0 && missing == 0),
            format!(
                "{ready} Ready, {} Degraded; settled {settle:.1} s after the last change; changes {tally:?}; listed but not running {missing}",
                list.len() - not_ready - ready
            ),
        );
        raw.insert(
            phase.to_string(),
            json!({"changes": tally, "kills": kills, "settle_seconds": settle,
                   "duplicates": dups, "leaks": leaks, "missing": missing,
                   "not_ready": not_ready, "ready": ready, "detail": detail}),
        );
    }
    report
        .raw
        .insert("churn".into(), serde_json::Value::Object(raw));
}

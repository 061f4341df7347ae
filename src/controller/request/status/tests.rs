//! The status step, case by case: one row per situation a request can be in.

use super::*;
use crate::api::conditions::find_condition;
use crate::api::{LaunchBatch, Machine};
use crate::controller::reason::{RETRY_BLOCKED, RETRY_HELD_BACK};
use k8s_openapi::jiff::Timestamp;
use std::time::Duration;

fn batch(id: &str, state: LaunchState) -> LaunchBatch {
    LaunchBatch::test(id, state)
}

/// A batch refused (not for capacity) `ago` seconds before the cases' now.
fn refused(id: &str, ago: i64) -> LaunchBatch {
    LaunchBatch {
        failure: Some(crate::api::request::LaunchFailure::Refused),
        message: Some("refused: RunInstances failed: VolumeLimitExceeded: m".into()),
        created_at: Some(Time(
            Timestamp::from_second(1_700_000_000 - ago).expect("a time"),
        )),
        ..batch(id, LaunchState::Failed)
    }
}

fn running(n: usize) -> Vec<Machine> {
    (0..n)
        .map(|i| Machine::test(&format!("i-{i}")).launched_at(i as i64))
        .collect()
}

/// One case: status before, and the inputs of the step.
struct Case {
    what: &'static str,
    count: i32,
    replace_lost: bool,
    machines: Vec<Machine>,
    launches: Vec<LaunchBatch>,
    blocked: Option<Blocked>,
    held_back: i32,
}

impl Case {
    fn new(what: &'static str, count: i32, machines: Vec<Machine>) -> Case {
        Case {
            what,
            count,
            replace_lost: true,
            machines,
            launches: vec![],
            blocked: None,
            held_back: 0,
        }
    }
}

/// What the step should say: phase, (Ready, Progressing, Degraded) reasons, next look.
type Want = (RequestPhase, [&'static str; 3], Next);

fn run(case: Case) -> (MachineRequestStatus, Summary) {
    let mut st = MachineRequestStatus {
        machines: case.machines,
        launches: case.launches,
        ..Default::default()
    };
    let want = Wanted {
        count: case.count,
        replace_lost: case.replace_lost,
        generation: Some(3),
        status_checks: false,
        status_checks_listed: false,
    };
    let now = Time(Timestamp::from_second(1_700_000_000).expect("a time"));
    let summary = summarize(want, &mut st, case.blocked, case.held_back, now);
    (st, summary)
}

fn reasons(st: &MachineRequestStatus) -> [String; 3] {
    [READY, PROGRESSING, DEGRADED].map(|t| {
        find_condition(&st.conditions, t)
            .map(|c| c.reason.clone())
            .unwrap_or_default()
    })
}

#[test]
fn phase_conditions_and_next_look_for_each_situation() {
    let blocked = Blocked::new(Reason::TemplateNotReady, "MachineTemplate t is not Ready");
    let capacity = Blocked::new(Reason::CapacityUnavailable, "no capacity");
    let refusal = Blocked::new(Reason::LaunchFailed, "VolumeLimitExceeded");
    let mut one_pending = running(2);
    one_pending[1] = Machine::test("i-1").state(MachineState::Pending);
    let mut leaving = running(3);
    leaving[2] = Machine::test("i-2")
        .reason(TerminationReason::ScaledDown)
        .state(MachineState::ShuttingDown);
    let mut lost_kept = running(2);
    lost_kept[1] = Machine::test("i-1")
        .state(MachineState::Terminated)
        .reason(TerminationReason::Lost);
    let cases: Vec<(Case, Want)> = vec![
        (
            Case::new("all running", 2, running(2)),
            (
                RequestPhase::Ready,
                ["AllRunning", "Stable", "AsExpected"],
                Next::After(RESYNC),
            ),
        ),
        (
            Case::new("nothing yet", 2, vec![]),
            (
                RequestPhase::Pending,
                ["Provisioning", "Launching", "AsExpected"],
                Next::After(RETRY_MORE),
            ),
        ),
        (
            Case {
                blocked: Some(blocked.clone()),
                ..Case::new("blocked on the template", 2, vec![])
            },
            (
                RequestPhase::Degraded,
                ["TemplateNotReady", "Launching", "TemplateNotReady"],
                Next::After(RETRY_BLOCKED),
            ),
        ),
        (
            Case {
                blocked: Some(capacity),
                ..Case::new("no capacity anywhere", 2, running(1))
            },
            (
                RequestPhase::Degraded,
                ["CapacityUnavailable", "Launching", "CapacityUnavailable"],
                Next::CapacityExpiry,
            ),
        ),
        (
            Case {
                held_back: 1,
                ..Case::new("held back by maxMachines", 2, running(1))
            },
            (
                RequestPhase::Degraded,
                ["MaxMachinesReached", "Launching", "MaxMachinesReached"],
                Next::After(RETRY_HELD_BACK),
            ),
        ),
        (
            Case {
                blocked: Some(refusal.clone()),
                launches: vec![refused("b-1", 2)],
                ..Case::new(
                    "refused 2 s ago: look again when the 5 s backoff ends",
                    2,
                    vec![],
                )
            },
            (
                RequestPhase::Degraded,
                ["LaunchFailed", "Launching", "LaunchFailed"],
                Next::After(Duration::from_secs(3) + HOLD_MARGIN),
            ),
        ),
        (
            Case {
                blocked: Some(refusal.clone()),
                launches: vec![refused("b-1", 30), refused("b-2", 4)],
                ..Case::new("refused twice: the 10 s backoff", 2, vec![])
            },
            (
                RequestPhase::Degraded,
                ["LaunchFailed", "Launching", "LaunchFailed"],
                Next::After(Duration::from_secs(6) + HOLD_MARGIN),
            ),
        ),
        (
            Case {
                blocked: Some(refusal.clone()),
                launches: vec![refused("b-1", 600)],
                ..Case::new("backoff over, still refused: the reason's retry", 2, vec![])
            },
            (
                RequestPhase::Degraded,
                ["LaunchFailed", "Launching", "LaunchFailed"],
                Next::After(RETRY_REFUSED),
            ),
        ),
        (
            Case {
                blocked: Some(blocked.clone()),
                launches: vec![refused("b-1", 1)],
                ..Case::new("template blocked during a backoff: the sooner", 2, vec![])
            },
            (
                RequestPhase::Degraded,
                ["TemplateNotReady", "Launching", "TemplateNotReady"],
                Next::After(Duration::from_secs(4) + HOLD_MARGIN),
            ),
        ),
        (
            Case::new("partial: one launched, more to go", 3, running(1)),
            (
                RequestPhase::Provisioning,
                ["Provisioning", "Launching", "AsExpected"],
                Next::After(RETRY_MORE),
            ),
        ),
        (
            Case {
                launches: vec![batch("b-1", LaunchState::Pending)],
                ..Case::new("a batch still pending", 2, running(1))
            },
            (
                RequestPhase::Provisioning,
                ["Provisioning", "Launching", "AsExpected"],
                Next::After(RETRY_SETTLING),
            ),
        ),
        (
            Case::new("a machine still starting", 2, one_pending),
            (
                RequestPhase::Provisioning,
                ["Provisioning", "Launching", "AsExpected"],
                Next::After(RETRY_BUSY),
            ),
        ),
        (
            Case::new("a machine on its way out", 2, leaving),
            (
                RequestPhase::Ready,
                ["AllRunning", "Terminating", "AsExpected"],
                Next::After(RETRY_BUSY),
            ),
        ),
        (
            Case {
                replace_lost: false,
                ..Case::new("a lost machine kept in count", 2, lost_kept)
            },
            (
                RequestPhase::Ready,
                ["AllRunning", "Stable", "AsExpected"],
                Next::After(RESYNC),
            ),
        ),
    ];
    for (case, (phase, want_reasons, next)) in cases {
        let what = case.what;
        let (st, summary) = run(case);
        assert_eq!(st.phase, Some(phase), "{what}: phase");
        assert_eq!(
            reasons(&st),
            want_reasons.map(String::from),
            "{what}: reasons"
        );
        assert_eq!(summary.next, next, "{what}: next look");
        assert_eq!(st.observed_generation, Some(3), "{what}");
    }
}

#[test]
fn counts_follow_the_machines() {
    let machines = vec![
        Machine::test("i-1"),
        Machine::test("i-2").state(MachineState::Pending),
        Machine::test("i-3")
            .reason(TerminationReason::Returned)
            .state(MachineState::Terminated),
        Machine::test("i-4")
            .state(MachineState::Stopped)
            .reason(TerminationReason::Lost),
    ];
    let (st, summary) = run(Case::new("mixed", 3, machines));
    assert_eq!(
        st.counts,
        MachineCounts {
            desired: 3,
            pending: 1,
            running: 1,
            returned: 1,
            failed: 1,
            drifted: 0,
        }
    );
    // The starting machine is polled; the stopped lost one is not leaving (replaceLost
    // terminates it through the plan, which marks it first).
    assert_eq!(summary.watch, vec!["i-2".to_string()]);
}

#[test]
fn degraded_is_announced_once_per_change_and_cleared_when_the_cause_is_gone() {
    let blocked = Blocked::new(
        Reason::LaunchFailed,
        "RunInstances failed: InvalidParameterValue",
    );
    let mut st = MachineRequestStatus::default();
    let want = Wanted {
        count: 1,
        replace_lost: true,
        generation: Some(1),
        status_checks: false,
        status_checks_listed: false,
    };
    let now = || Time(Timestamp::from_second(1_700_000_000).expect("a time"));
    let first = summarize(want, &mut st, Some(blocked.clone()), 0, now());
    assert!(first.degraded_changed);
    let again = summarize(want, &mut st, Some(blocked), 0, now());
    assert!(!again.degraded_changed, "same cause, no new Event");
    st.machines = running(1);
    let fixed = summarize(want, &mut st, None, 0, now());
    assert!(fixed.degraded_changed);
    assert_eq!(fixed.degraded, None);
    let degraded = find_condition(&st.conditions, DEGRADED).expect("Degraded");
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("False", "AsExpected")
    );
    let ready = find_condition(&st.conditions, READY).expect("Ready");
    assert_eq!(ready.reason, "AllRunning", "no stale cause on Ready");
}

#[test]
fn pruning_keeps_pending_batches_the_newest_and_recent_gone_machines() {
    let mut st = MachineRequestStatus {
        launches: (0..30)
            .map(|i| batch(&format!("b-{i}"), LaunchState::Launched))
            .collect(),
        ..Default::default()
    };
    st.launches[3].state = LaunchState::Pending;
    st.machines = (0..250)
        .map(|i| {
            Machine::test(&format!("i-{i}"))
                .reason(TerminationReason::Returned)
                .state(MachineState::Terminated)
        })
        .collect();
    prune(&mut st);
    assert_eq!(
        st.launches.len(),
        KEEP_BATCHES + 1,
        "20 settled + 1 pending"
    );
    assert!(st.launches.iter().any(|b| b.id == "b-3"), "pending kept");
    assert_eq!(
        st.launches.last().map(|b| b.id.as_str()),
        Some("b-29"),
        "newest kept"
    );
    assert_eq!(st.machines.len(), KEEP_GONE);
    assert_eq!(st.machines[0].id, "i-50", "oldest dropped first");
}

/// `n` gone machines (given back, terminated) then `live` running ones, the
/// order a request's status accumulates them in.
fn gone_then_live(gone: usize, live: usize) -> Vec<Machine> {
    let gone = (0..gone).map(|i| {
        Machine::test(&format!("i-gone-{i}"))
            .reason(TerminationReason::Returned)
            .state(MachineState::Terminated)
    });
    let live = (0..live).map(|i| Machine::test(&format!("i-live-{i}")));
    gone.chain(live).collect()
}

#[test]
fn pruning_keeps_the_documented_gone_machines_whatever_the_live_count() {
    // (live, gone): the retention must not depend on how many are live.
    for (live, gone) in [(0, 201), (100, 201), (200, 201), (250, 260), (1800, 400)] {
        let mut st = MachineRequestStatus {
            machines: gone_then_live(gone, live),
            ..Default::default()
        };
        prune(&mut st);
        let kept_live = st.machines.iter().filter(|m| m.is_live()).count();
        let kept_gone: Vec<&str> = st
            .machines
            .iter()
            .filter(|m| !m.is_live())
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(
            kept_live, live,
            "live={live} gone={gone}: no live one dropped"
        );
        assert_eq!(
            kept_gone.len(),
            KEEP_GONE,
            "live={live} gone={gone}: the {KEEP_GONE} most recent gone stay"
        );
        let newest = format!("i-gone-{}", gone - 1);
        let oldest_kept = format!("i-gone-{}", gone - KEEP_GONE);
        assert_eq!(
            kept_gone.first(),
            Some(&oldest_kept.as_str()),
            "oldest dropped first"
        );
        assert_eq!(kept_gone.last(), Some(&newest.as_str()), "newest kept");
    }
}

#[test]
fn pruning_keeps_the_documented_settled_batches_beside_pending_ones() {
    // 5 pending batches among 30 settled ones: all pending stay, and the
    // 20 most recent settled ones.
    let mut st = MachineRequestStatus {
        launches: (0..35)
            .map(|i| {
                let state = if i % 7 == 0 {
                    LaunchState::Pending
                } else {
                    LaunchState::Launched
                };
                batch(&format!("b-{i}"), state)
            })
            .collect(),
        ..Default::default()
    };
    prune(&mut st);
    let pending = st
        .launches
        .iter()
        .filter(|b| b.state == LaunchState::Pending)
        .count();
    let settled: Vec<&str> = st
        .launches
        .iter()
        .filter(|b| b.state != LaunchState::Pending)
        .map(|b| b.id.as_str())
        .collect();
    assert_eq!(pending, 5, "every pending batch stays");
    assert_eq!(
        settled.len(),
        KEEP_BATCHES,
        "the documented settled batches stay"
    );
    assert_eq!(settled.last(), Some(&"b-34"), "the newest stays");
    // The 20 newest settled: b-29..34, b-22..27, b-15..20, b-12, b-13.
    assert_eq!(
        settled.first(),
        Some(&"b-12"),
        "oldest settled dropped first"
    );
}

#[test]
fn pruning_keeps_the_newest_batch_even_when_pending_and_settled_mix() {
    // The newest is pending: still exactly 20 settled kept.
    let mut st = MachineRequestStatus {
        launches: (0..25)
            .map(|i| batch(&format!("b-{i}"), LaunchState::Launched))
            .collect(),
        ..Default::default()
    };
    st.launches[24].state = LaunchState::Pending;
    st.launches[0].state = LaunchState::Pending;
    prune(&mut st);
    let ids: Vec<&str> = st.launches.iter().map(|b| b.id.as_str()).collect();
    assert_eq!(ids.len(), KEEP_BATCHES + 2, "{ids:?}");
    assert_eq!(ids.first(), Some(&"b-0"));
    assert_eq!(ids.get(1), Some(&"b-4"));
    assert_eq!(ids.last(), Some(&"b-24"));
}

#[test]
fn a_replacement_in_flight_keeps_ready_and_says_replacing() {
    let mut machines = running(3);
    machines[0].replace_reason = Some(crate::api::ReplaceReason::Rebalance);
    // The replacement is launched, not running yet: count machines run.
    machines.push(Machine {
        state: MachineState::Pending,
        ..Machine::test("i-9")
    });
    let (st, summary) = run(Case::new("replacing", 3, machines.clone()));
    assert_eq!(st.phase, Some(RequestPhase::Ready));
    assert_eq!(
        reasons(&st),
        ["AllRunning", "Replacing", "AsExpected"].map(String::from)
    );
    assert_eq!(summary.watch, ["i-9"]);
    // Both run for a moment: running exceeds count, still Ready.
    machines[3].state = MachineState::Running;
    let (st, _) = run(Case::new("both run", 3, machines));
    assert_eq!(st.counts.running, 4);
    assert_eq!(st.phase, Some(RequestPhase::Ready));
    // Not launched yet: one machine short of the target with its spare.
    let mut short = running(3);
    short[0].replace_reason = Some(crate::api::ReplaceReason::Unhealthy);
    let (_, summary) = run(Case::new("spare missing", 3, short));
    assert_eq!(summary.next, Next::After(RETRY_MORE));
}

#[test]
fn machines_healthy_names_the_impaired_and_is_absent_when_checks_are_off() {
    let mut machines = running(2);
    machines[1].status_check = Some(crate::api::StatusCheck {
        status: crate::api::StatusCheckStatus::Impaired,
        failing: vec![
            crate::api::StatusCheckKind::Instance,
            crate::api::StatusCheckKind::System,
        ],
        since: None,
    });
    let now = || Time(Timestamp::from_second(1_700_000_000).expect("a time"));
    let c = healthy_condition(&machines, true, Some(1), now());
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "MachineImpaired")
    );
    assert!(c.message.contains("i-1 (instance+system)"), "{}", c.message);
    machines[1].termination_reason = Some(TerminationReason::Replaced);
    let c = healthy_condition(&machines, true, Some(1), now());
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "AllHealthy")
    );
    // Before the first listing nothing is known to pass.
    let c = healthy_condition(&machines, false, Some(1), now());
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("Unknown", "NotCheckedYet")
    );

    let mut st = MachineRequestStatus {
        machines: running(1),
        ..Default::default()
    };
    let mut want = Wanted {
        count: 1,
        replace_lost: true,
        generation: Some(1),
        status_checks: true,
        status_checks_listed: true,
    };
    summarize(want, &mut st, None, 0, now());
    assert!(find_condition(&st.conditions, MACHINES_HEALTHY).is_some());
    want.status_checks = false;
    summarize(want, &mut st, None, 0, now());
    assert!(find_condition(&st.conditions, MACHINES_HEALTHY).is_none());
}

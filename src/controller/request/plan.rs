//! The pure heart of the request controller: from what a request wants and the
//! machines its status lists, decide which machines go (and why) and how many
//! to launch. No I/O, so every rule is unit-tested here.
//!
//! Rules:
//! - every listed `returnMachines` id of this request is terminated and marked
//!   Returned (never replaced);
//! - a machine stopped or terminated outside the operator is marked Lost; with
//!   `replaceLost` it is replaced (and a stopped one terminated), without it
//!   it keeps its place in `count`;
//! - surplus live machines are marked ScaledDown, newest first;
//! - the deficit is launched, within the template's `maxMachines` headroom,
//!   less the machines of launches still unsettled (a batch settled by its
//!   tag that saw only part of itself: the rest may only be invisible, and
//!   launching them again would duplicate them);
//! - a live machine at risk is marked to replace (`replaceReason`): a
//!   rebalance recommendation under `rebalancePolicy: Replace`, a failing
//!   status check under `replaceUnhealthy`, never in a HostFactory-owned
//!   request. Each marked machine raises the target by one, so its
//!   replacement launches at once; once enough unmarked machines run to fill
//!   the target, marked machines are marked Replaced and terminated (new
//!   first, old last). The one mechanism for every cause of replacement;
//! - a drifted live machine (see [`super::drift`]) is
//!   marked `Drifted` under `updatePolicy: Replace`, oldest first, while
//!   fewer than `maxSurge` machines are marked Drifted: at most that many
//!   replacements are in flight. A Drifted mark is dropped when the machine
//!   no longer drifts (the template went back) or the policy is Never.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::api::{
    Machine, MachineRequest, MachineRequestSpec, MachineRequestStatus, MachineResult, MachineState,
    RebalancePolicy, ReplaceReason, TerminationReason, UpdatePolicyType,
};

/// Which causes make the request replace a machine (new first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplaceOn {
    /// A rebalance recommendation (`rebalancePolicy: Replace`).
    pub rebalance: bool,
    /// A failing status check (`replaceUnhealthy: true`).
    pub unhealthy: bool,
    /// Drift from the template (`updatePolicy: Replace`).
    pub drift: bool,
    /// How many machines may be marked Drifted at once (`maxSurge`).
    pub max_surge: i32,
}

impl ReplaceOn {
    /// What `mr` asks for; nothing for a HostFactory-owned request, whose
    /// scheduler decides which hosts go.
    pub fn of(mr: &MachineRequest) -> ReplaceOn {
        if mr.is_hostfactory_owned() {
            return ReplaceOn::default();
        }
        ReplaceOn {
            rebalance: mr.spec.rebalance_policy == RebalancePolicy::Replace,
            unhealthy: mr.spec.replace_unhealthy,
            drift: mr.spec.update_policy.type_ == UpdatePolicyType::Replace,
            max_surge: mr.spec.update_policy.surge(),
        }
    }

    /// Whether a machine marked for `reason` is still to be replaced.
    pub fn allows(self, reason: ReplaceReason) -> bool {
        match reason {
            ReplaceReason::Rebalance => self.rebalance,
            ReplaceReason::Unhealthy => self.unhealthy,
            ReplaceReason::Drifted => self.drift,
        }
    }

    /// Why `m` should be replaced now, if it should: a mark it carries while
    /// its cause is still wanted (a Drifted mark only while the machine still
    /// drifts), else a cause it shows. Drift is never a new cause here: the
    /// plan marks drifted machines within `max_surge` ([`mark_drifted`]).
    pub fn reason(self, m: &Machine, drifted: bool) -> Option<ReplaceReason> {
        if let Some(r) = m.replace_reason.filter(|r| self.allows(*r)) {
            if r != ReplaceReason::Drifted || drifted {
                return Some(r);
            }
        }
        if self.rebalance && m.rebalance_recommendation_time.is_some() {
            Some(ReplaceReason::Rebalance)
        } else if self.unhealthy && m.status_check.is_some() {
            Some(ReplaceReason::Unhealthy)
        } else {
            None
        }
    }
}

/// What the request's spec asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desired {
    /// Live machines wanted.
    pub count: i32,
    /// Machines to give back.
    pub return_machines: BTreeSet<String>,
    /// Whether lost machines are replaced.
    pub replace_lost: bool,
    /// Machines launches still Pending may have launched that status does
    /// not list yet: counted as coming, never launched again.
    pub reserved: i32,
    /// Which causes replace a machine.
    pub replace: ReplaceOn,
    /// The live machines drifted from the template (ids).
    pub drifted: BTreeSet<String>,
}

impl Desired {
    /// What `spec` asks for.
    pub fn of(spec: &MachineRequestSpec) -> Desired {
        Desired {
            count: spec.count,
            return_machines: spec.return_machines.iter().cloned().collect(),
            replace_lost: spec.replace_lost,
            reserved: 0,
            replace: ReplaceOn::default(),
            drifted: BTreeSet::new(),
        }
    }

    /// What `mr` asks for, with what `status`'s unsettled launches hold.
    pub fn of_request(mr: &MachineRequest, status: &MachineRequestStatus) -> Desired {
        Desired {
            reserved: status.unconfirmed_launches(),
            replace: ReplaceOn::of(mr),
            drifted: status
                .machines
                .iter()
                .filter(|m| status.is_drifted(m))
                .map(|m| m.id.clone())
                .collect(),
            ..Desired::of(&mr.spec)
        }
    }
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Machines to ask the cloud to terminate (marked, and not terminating yet).
    pub terminate: Vec<String>,
    /// Machines to launch.
    pub launch: i32,
    /// Machines still missing after the launch because of `maxMachines`.
    pub held_back: i32,
    /// Machines newly marked Lost by this plan, for Events.
    pub newly_lost: Vec<String>,
    /// Machines newly marked to replace, for Events: their replacements
    /// are part of `launch`.
    pub newly_marked: Vec<(String, ReplaceReason)>,
    /// Machines marked Replaced by this plan (their replacements run), for
    /// Events: they are in `terminate`.
    pub replaced: Vec<String>,
}

/// How many live machines the request should have: `count`, less the lost
/// machines it keeps in their place when it does not replace them. A
/// machine that was being replaced when it was lost keeps no slot: its
/// replacement already holds it.
pub fn target(count: i32, replace_lost: bool, machines: &[Machine]) -> i32 {
    let kept_lost = if replace_lost {
        0
    } else {
        machines
            .iter()
            .filter(|m| {
                m.termination_reason == Some(TerminationReason::Lost) && m.replace_reason.is_none()
            })
            .count() as i32
    };
    (count - kept_lost).max(0)
}

/// Whether `m` is live and marked to be replaced: it holds an extra slot
/// until its replacement runs.
pub fn is_being_replaced(m: &Machine) -> bool {
    m.is_live() && m.replace_reason.is_some()
}

/// [`target`] plus one slot per live machine being replaced: how many live
/// machines the request holds while replacements are in flight (running
/// machines may exceed `count` until the old ones go).
pub fn target_with_replacements(count: i32, replace_lost: bool, machines: &[Machine]) -> i32 {
    let marked = machines.iter().filter(|m| is_being_replaced(m)).count() as i32;
    target(count, replace_lost, machines) + marked
}

/// How many marked machines may go now: those whose slots unmarked running
/// machines fill. `base` is [`target`], `unmarked_running` the live
/// unmarked machines that run, `marked` the live marked ones.
pub fn releasable(base: i32, unmarked_running: i32, marked: i32) -> i32 {
    let keep = (base - unmarked_running).clamp(0, marked.max(0));
    marked.max(0) - keep
}

/// Takes back machine `i`, which status had as terminated (lost or vanished)
/// and the cloud reports live again: revived (counted again, result back)
/// if the request still needs it, else marked ScaledDown so the plan
/// terminates it (it was replaced). Returns whether it was revived.
pub fn take_back(desired: &Desired, machines: &mut [Machine], i: usize) -> bool {
    let Some(m) = machines.get_mut(i) else {
        return false;
    };
    m.termination_reason = None;
    let live = machines.iter().filter(|m| m.is_live()).count() as i32;
    let needed = target_with_replacements(desired.count, desired.replace_lost, machines)
        - desired.reserved.max(0);
    let revived = live <= needed;
    let m = &mut machines[i];
    if !revived {
        m.termination_reason = Some(TerminationReason::ScaledDown);
    }
    m.result = MachineResult::of(m.state, m.termination_reason);
    revived
}

/// Marks machines in place and plans terminations and launches. `headroom` is
/// how many more machines the template's `maxMachines` allows (None: no limit).
pub fn plan(desired: &Desired, machines: &mut [Machine], headroom: Option<i32>) -> Plan {
    let mut out = Plan::default();
    for m in machines.iter_mut() {
        let listed = desired.return_machines.contains(&m.id);
        match m.termination_reason {
            None if listed => m.termination_reason = Some(TerminationReason::Returned),
            None if m.state.is_down() => {
                m.termination_reason = Some(TerminationReason::Lost);
                out.newly_lost.push(m.id.clone());
            }
            // A lost machine the requester hands back is accounted as returned.
            Some(TerminationReason::Lost) if listed => {
                m.termination_reason = Some(TerminationReason::Returned)
            }
            _ => {}
        }
    }
    mark_replacements(desired, machines, &mut out);

    // Marked machines hold their slots until unmarked ones fill them; they
    // are left out of the scale-down below (they go as Replaced).
    let live: Vec<usize> = (0..machines.len())
        .filter(|i| machines[*i].is_live() && machines[*i].replace_reason.is_none())
        .collect();
    // Lost machines a request does not replace keep their slots, so the
    // live machines are trimmed to the target, not to `count`: trimming to
    // `count` left one live machine too many after a scale-down, and the
    // request never Ready (status compares live with the target).
    let count = target(desired.count, desired.replace_lost, machines).max(0) as usize;
    if live.len() > count {
        let mut newest_first = live.clone();
        newest_first.sort_by_key(|i| {
            let m = &machines[*i];
            (
                Reverse(m.launch_time.as_ref().map(|t| t.0)),
                Reverse(m.id.clone()),
            )
        });
        // None sorts first under Reverse only if it were largest; put unknown
        // launch times (not reported yet: the newest) first explicitly.
        newest_first.sort_by_key(|i| machines[*i].launch_time.is_some());
        for i in newest_first.into_iter().take(live.len() - count) {
            machines[i].termination_reason = Some(TerminationReason::ScaledDown);
        }
    }

    let live_now = machines.iter().filter(|m| m.is_live()).count() as i32;
    let deficit = (target_with_replacements(desired.count, desired.replace_lost, machines)
        - live_now
        - desired.reserved.max(0))
    .max(0);
    out.launch = match headroom {
        Some(h) => deficit.min(h.max(0)),
        None => deficit,
    };
    out.held_back = deficit - out.launch;

    for m in machines.iter_mut() {
        let Some(reason) = m.termination_reason else {
            continue;
        };
        let terminate = match reason {
            TerminationReason::Lost => desired.replace_lost && !m.state.is_terminating(),
            _ => !m.state.is_terminating(),
        };
        if terminate {
            out.terminate.push(m.id.clone());
        }
        m.result = MachineResult::of(m.state, m.termination_reason);
    }
    out
}

/// Marks the live machines `desired` replaces (and unmarks those whose
/// cause is no longer wanted: the policy changed), then marks Replaced the
/// oldest marked machines whose slots running unmarked machines fill.
fn mark_replacements(desired: &Desired, machines: &mut [Machine], out: &mut Plan) {
    for m in machines.iter_mut().filter(|m| m.is_live()) {
        let reason = desired.replace.reason(m, desired.drifted.contains(&m.id));
        if let (Some(r), None) = (reason, m.replace_reason) {
            out.newly_marked.push((m.id.clone(), r));
        }
        m.replace_reason = reason;
    }
    let base = target(desired.count, desired.replace_lost, machines);
    let unmarked_running = machines
        .iter()
        .filter(|m| m.is_live() && m.replace_reason.is_none() && m.state == MachineState::Running)
        .count() as i32;
    let mut marked: Vec<usize> = (0..machines.len())
        .filter(|i| is_being_replaced(&machines[*i]))
        .collect();
    let release = releasable(base, unmarked_running, marked.len() as i32) as usize;
    // Oldest first (unknown launch times last): the longest at risk goes first.
    marked.sort_by_key(|i| {
        let m = &machines[*i];
        (
            m.launch_time.is_none(),
            m.launch_time.as_ref().map(|t| t.0),
            m.id.clone(),
        )
    });
    for i in marked.into_iter().take(release) {
        machines[i].termination_reason = Some(TerminationReason::Replaced);
        out.replaced.push(machines[i].id.clone());
    }
    // After the release, so a machine whose replacement runs frees its
    // surge slot for the next drifted machine at once.
    mark_drifted(desired, machines, out);
}

/// How many more machines may be marked Drifted: `max_surge` less the live
/// machines marked Drifted already.
pub fn drift_slots(max_surge: i32, marked_drifted: i32) -> i32 {
    (max_surge.max(1) - marked_drifted.max(0)).max(0)
}

/// Under `updatePolicy: Replace`, marks the oldest drifted live unmarked
/// machines Drifted while fewer than `max_surge` are.
fn mark_drifted(desired: &Desired, machines: &mut [Machine], out: &mut Plan) {
    let replace = desired.replace;
    if !replace.drift {
        return;
    }
    let marked = machines
        .iter()
        .filter(|m| is_being_replaced(m) && m.replace_reason == Some(ReplaceReason::Drifted))
        .count() as i32;
    let mut candidates: Vec<usize> = (0..machines.len())
        .filter(|i| {
            let m = &machines[*i];
            m.is_live() && m.replace_reason.is_none() && desired.drifted.contains(&m.id)
        })
        .collect();
    candidates.sort_by_key(|i| {
        let m = &machines[*i];
        (
            m.launch_time.is_none(),
            m.launch_time.as_ref().map(|t| t.0),
            m.id.clone(),
        )
    });
    let slots = drift_slots(replace.max_surge, marked) as usize;
    for i in candidates.into_iter().take(slots) {
        machines[i].replace_reason = Some(ReplaceReason::Drifted);
        out.newly_marked
            .push((machines[i].id.clone(), ReplaceReason::Drifted));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MachineState;

    fn m(id: &str, state: MachineState, launched: i64) -> Machine {
        // Results as a launch leaves them: the plan sets results only of machines it marks.
        Machine {
            result: MachineResult::Executing,
            ..Machine::test(id).state(state).launched_at(launched)
        }
    }

    fn desired(count: i32, returns: &[&str], replace_lost: bool) -> Desired {
        Desired {
            count,
            return_machines: returns.iter().map(|s| s.to_string()).collect(),
            replace_lost,
            reserved: 0,
            replace: ReplaceOn::default(),
            drifted: BTreeSet::new(),
        }
    }

    fn running(n: usize) -> Vec<Machine> {
        (0..n)
            .map(|i| m(&format!("i-{i}"), MachineState::Running, i as i64))
            .collect()
    }

    #[test]
    fn launches_the_deficit_and_nothing_when_satisfied() {
        let mut ms = running(2);
        assert_eq!(plan(&desired(5, &[], true), &mut ms, None).launch, 3);
        let p = plan(&desired(2, &[], true), &mut ms, None);
        assert_eq!(p, Plan::default());
        assert!(ms.iter().all(|m| m.result == MachineResult::Executing));
    }

    #[test]
    fn scale_down_takes_returned_first_then_newest() {
        let mut ms = running(5);
        let p = plan(&desired(2, &["i-0"], true), &mut ms, None);
        assert_eq!(p.launch, 0);
        let mut t = p.terminate.clone();
        t.sort();
        assert_eq!(t, ["i-0", "i-3", "i-4"]);
        assert_eq!(ms[0].termination_reason, Some(TerminationReason::Returned));
        assert_eq!(
            ms[4].termination_reason,
            Some(TerminationReason::ScaledDown)
        );
        assert_eq!(ms[1].termination_reason, None);
        assert_eq!(ms[4].result, MachineResult::Executing);
    }

    #[test]
    fn machines_without_launch_time_count_as_newest() {
        let mut ms = running(3);
        ms[0].launch_time = None;
        let p = plan(&desired(2, &[], true), &mut ms, None);
        assert_eq!(p.terminate, ["i-0"]);
    }

    #[test]
    fn returned_machines_are_not_replaced_unless_count_asks() {
        let mut ms = running(3);
        let p = plan(&desired(2, &["i-1"], true), &mut ms, None);
        assert_eq!(
            (p.launch, p.terminate.clone()),
            (0, vec!["i-1".to_string()])
        );
        // Next round: it is terminating; nothing more happens.
        ms[1].state = MachineState::ShuttingDown;
        let p = plan(&desired(2, &["i-1"], true), &mut ms, None);
        assert_eq!(p, Plan::default());
        ms[1].state = MachineState::Terminated;
        plan(&desired(2, &["i-1"], true), &mut ms, None);
        assert_eq!(ms[1].result, MachineResult::Succeed);
    }

    /// Found by the bench's fidelity phase: a machine died at launch in a
    /// request that does not replace lost machines, then its count went
    /// down by one; trimming to `count` kept one live machine too many and
    /// the request was never Ready again.
    #[test]
    fn a_kept_lost_machine_keeps_its_slot_when_the_count_goes_down() {
        let mut ms = running(6);
        ms[5].state = MachineState::Terminated;
        let p = plan(&desired(6, &[], false), &mut ms, None);
        assert_eq!((p.launch, p.terminate.len()), (0, 0), "5 live + 1 lost = 6");
        let p = plan(&desired(5, &[], false), &mut ms, None);
        assert_eq!(p.terminate, ["i-4"], "the newest live machine goes");
        assert_eq!(p.launch, 0);
    }

    #[test]
    fn lost_machines_are_replaced_or_only_reported() {
        let mut ms = running(3);
        ms[2].state = MachineState::Terminated;
        let mut kept = ms.clone();
        let p = plan(&desired(3, &[], true), &mut ms, None);
        assert_eq!(p.launch, 1);
        assert_eq!(p.newly_lost, ["i-2"]);
        assert_eq!(ms[2].result, MachineResult::Fail);
        let p = plan(&desired(3, &[], false), &mut kept, None);
        assert_eq!(p.launch, 0);
        assert_eq!(kept[2].termination_reason, Some(TerminationReason::Lost));
        // Returning the lost machine (count lowered with it) keeps the books right.
        let p = plan(&desired(2, &["i-2"], false), &mut kept, None);
        assert_eq!(p.launch, 0);
        assert_eq!(
            kept[2].termination_reason,
            Some(TerminationReason::Returned)
        );
        assert_eq!(kept[2].result, MachineResult::Succeed);
    }

    #[test]
    fn stopped_machines_are_terminated_only_when_replaced() {
        let mut ms = running(2);
        ms[0].state = MachineState::Stopped;
        let mut kept = ms.clone();
        let p = plan(&desired(2, &[], true), &mut ms, None);
        assert_eq!((p.launch, p.terminate), (1, vec!["i-0".to_string()]));
        let p = plan(&desired(2, &[], false), &mut kept, None);
        assert_eq!((p.launch, p.terminate.len()), (0, 0));
    }

    #[test]
    fn machines_an_unsettled_launch_may_have_made_are_not_launched_again() {
        // (count, running, reserved, launch)
        for (count, running_now, reserved, launch) in [
            (5, 2, 3, 0),
            (5, 2, 1, 2),
            (5, 0, 5, 0),
            (3, 3, 2, 0),
            (5, 2, 0, 3),
        ] {
            let mut ms = running(running_now);
            let d = Desired {
                reserved,
                ..desired(count, &[], true)
            };
            assert_eq!(
                plan(&d, &mut ms, None).launch,
                launch,
                "count {count}, running {running_now}, reserved {reserved}"
            );
        }
    }

    #[test]
    fn a_machine_taken_for_gone_is_revived_only_if_still_needed() {
        let lost_back = |n: usize| {
            let mut ms = running(n);
            // i-0 was taken for gone (lost); the cloud reports it running again.
            ms[0].termination_reason = Some(TerminationReason::Lost);
            ms
        };
        // (count, machines listed, replace_lost, reserved, revived)
        let rows = [
            // Not replaced yet (2 of 3 live besides it): revived.
            (3, 3, true, 0, true),
            // Replaced (3 live besides it): surplus.
            (3, 4, true, 0, false),
            // Without replaceLost nothing replaced it: revived.
            (3, 3, false, 0, true),
            // An unsettled launch holds its place: surplus.
            (3, 3, true, 1, false),
            (1, 1, true, 0, true),
        ];
        for (count, n, replace_lost, reserved, want) in rows {
            let mut ms = lost_back(n);
            let d = Desired {
                reserved,
                ..desired(count, &[], replace_lost)
            };
            assert_eq!(
                take_back(&d, &mut ms, 0),
                want,
                "{count} {n} {replace_lost} {reserved}"
            );
            if want {
                assert_eq!(ms[0].termination_reason, None);
                assert_eq!(ms[0].result, MachineResult::Succeed);
                assert_eq!(plan(&d, &mut ms, None).terminate, Vec::<String>::new());
            } else {
                assert_eq!(
                    ms[0].termination_reason,
                    Some(TerminationReason::ScaledDown)
                );
                assert_eq!(plan(&d, &mut ms, None).terminate, ["i-0"]);
            }
        }
    }

    #[test]
    fn headroom_caps_launches() {
        let mut ms = running(1);
        let p = plan(&desired(10, &[], true), &mut ms, Some(4));
        assert_eq!((p.launch, p.held_back), (4, 5));
        let p = plan(&desired(10, &[], true), &mut ms, Some(-3));
        assert_eq!((p.launch, p.held_back), (0, 9));
    }

    fn replacing(count: i32, replace: ReplaceOn) -> Desired {
        Desired {
            replace,
            ..desired(count, &[], true)
        }
    }

    const REBALANCE: ReplaceOn = ReplaceOn {
        rebalance: true,
        unhealthy: false,
        drift: false,
        max_surge: 1,
    };

    fn recommend(m: &mut Machine) {
        m.rebalance_recommendation_time = Some(m.launch_time.clone().expect("launched"));
    }

    #[test]
    fn releasable_marked_machines_are_those_running_unmarked_ones_cover() {
        // (base, unmarked running, marked, releasable)
        for (base, running_now, marked, want) in [
            (3, 2, 1, 0), // replacement not running yet: keep the old one
            (3, 3, 1, 1), // replacement runs: the old one goes
            (3, 1, 2, 0), // two replacements on their way
            (3, 2, 2, 1), // one of two runs
            (3, 4, 1, 1), // more than enough (count lowered meanwhile)
            (0, 0, 1, 1), // count 0: nothing to wait for
            (3, 3, 0, 0),
        ] {
            assert_eq!(
                releasable(base, running_now, marked),
                want,
                "base {base}, running {running_now}, marked {marked}"
            );
        }
    }

    #[test]
    fn a_recommended_machine_is_replaced_new_first() {
        let mut ms = running(3);
        recommend(&mut ms[1]);
        // Ignore: nothing happens.
        let p = plan(&replacing(3, ReplaceOn::default()), &mut ms.clone(), None);
        assert_eq!(p, Plan::default());
        // Replace: one more launched; nobody terminated yet.
        let p = plan(&replacing(3, REBALANCE), &mut ms, None);
        assert_eq!((p.launch, p.terminate.len()), (1, 0));
        assert_eq!(
            p.newly_marked,
            [("i-1".to_string(), ReplaceReason::Rebalance)]
        );
        assert_eq!(ms[1].replace_reason, Some(ReplaceReason::Rebalance));
        assert_eq!(target_with_replacements(3, true, &ms), 4);
        // The replacement is launching: nothing more, nothing marked again.
        ms.push(m("i-9", MachineState::Pending, 9));
        let p = plan(&replacing(3, REBALANCE), &mut ms, None);
        assert_eq!(p, Plan::default());
        // It runs: the old machine goes, as Replaced (not Lost).
        ms[3].state = MachineState::Running;
        let p = plan(&replacing(3, REBALANCE), &mut ms, None);
        assert_eq!(
            (p.launch, p.terminate.clone()),
            (0, vec!["i-1".to_string()])
        );
        assert_eq!(p.replaced, ["i-1"]);
        assert_eq!(ms[1].termination_reason, Some(TerminationReason::Replaced));
        assert_eq!(target_with_replacements(3, true, &ms), 3);
        // Terminated: never replaced again, never counted as lost.
        ms[1].state = MachineState::Terminated;
        let p = plan(&replacing(3, REBALANCE), &mut ms, None);
        assert_eq!(p, Plan::default());
        assert_eq!(ms[1].result, MachineResult::Succeed);
    }

    #[test]
    fn an_unhealthy_machine_is_replaced_only_when_asked() {
        let impaired = |ms: &mut Vec<Machine>| {
            ms[0].status_check = Some(crate::api::StatusCheck {
                status: crate::api::StatusCheckStatus::Impaired,
                failing: vec![crate::api::StatusCheckKind::System],
                since: None,
            });
        };
        let mut ms = running(2);
        impaired(&mut ms);
        assert_eq!(
            plan(&replacing(2, REBALANCE), &mut ms.clone(), None).launch,
            0
        );
        let unhealthy = ReplaceOn {
            unhealthy: true,
            ..ReplaceOn::default()
        };
        let p = plan(&replacing(2, unhealthy), &mut ms, None);
        assert_eq!(p.launch, 1);
        assert_eq!(ms[0].replace_reason, Some(ReplaceReason::Unhealthy));
    }

    #[test]
    fn turning_the_policy_off_unmarks_and_the_spare_goes_as_surplus() {
        let mut ms = running(2);
        recommend(&mut ms[0]);
        plan(&replacing(2, REBALANCE), &mut ms, None);
        ms.push(m("i-9", MachineState::Pending, 9));
        let p = plan(&replacing(2, ReplaceOn::default()), &mut ms, None);
        assert_eq!(ms[0].replace_reason, None);
        assert_eq!(
            p.terminate,
            ["i-9"],
            "the newest, the replacement, is surplus"
        );
        assert_eq!(ms[0].termination_reason, None);
    }

    #[test]
    fn several_marked_machines_go_as_their_replacements_run() {
        let mut ms = running(4);
        recommend(&mut ms[0]);
        recommend(&mut ms[1]);
        let p = plan(&replacing(4, REBALANCE), &mut ms, None);
        assert_eq!(p.launch, 2);
        ms.push(m("i-8", MachineState::Running, 8));
        ms.push(m("i-9", MachineState::Pending, 9));
        let p = plan(&replacing(4, REBALANCE), &mut ms, None);
        assert_eq!(p.terminate, ["i-0"], "the oldest goes first");
        assert_eq!(p.launch, 0);
        ms[0].state = MachineState::ShuttingDown;
        ms[5].state = MachineState::Running;
        let p = plan(&replacing(4, REBALANCE), &mut ms, None);
        assert_eq!(p.terminate, ["i-1"]);
        assert_eq!(ms.iter().filter(|m| m.is_live()).count(), 4);
    }

    #[test]
    fn a_count_lowered_during_a_replacement_lets_the_marked_machine_go_first() {
        let mut ms = running(3);
        recommend(&mut ms[0]);
        plan(&replacing(3, REBALANCE), &mut ms, None);
        ms.push(m("i-9", MachineState::Pending, 9));
        let p = plan(&replacing(2, REBALANCE), &mut ms, None);
        let mut t = p.terminate.clone();
        t.sort();
        assert_eq!(t, ["i-0", "i-9"]);
        assert_eq!(ms[0].termination_reason, Some(TerminationReason::Replaced));
        assert_eq!(
            ms[3].termination_reason,
            Some(TerminationReason::ScaledDown)
        );
    }

    #[test]
    fn a_marked_machine_lost_before_its_replacement_runs_is_not_replaced_twice() {
        for replace_lost in [true, false] {
            let mut ms = running(2);
            recommend(&mut ms[0]);
            let d = Desired {
                replace: REBALANCE,
                ..desired(2, &[], replace_lost)
            };
            plan(&d, &mut ms, None);
            ms.push(m("i-9", MachineState::Pending, 9));
            ms[0].state = MachineState::Terminated;
            let p = plan(&d, &mut ms, None);
            assert_eq!(p.launch, 0, "replace_lost {replace_lost}");
            assert_eq!(ms[0].termination_reason, Some(TerminationReason::Lost));
            assert!(p.terminate.is_empty(), "replace_lost {replace_lost}: {p:?}");
        }
    }

    fn update(max_surge: i32) -> ReplaceOn {
        ReplaceOn {
            drift: true,
            max_surge,
            ..ReplaceOn::default()
        }
    }

    /// A request of `count` replacing with `replace`, where `ids` drifted.
    fn drifting(count: i32, replace: ReplaceOn, ids: &[&str]) -> Desired {
        Desired {
            drifted: ids.iter().map(|s| s.to_string()).collect(),
            ..replacing(count, replace)
        }
    }

    #[test]
    fn drift_slots_are_max_surge_less_those_marked() {
        // (max surge, marked drifted, slots)
        for (surge, marked, want) in [(1, 0, 1), (1, 1, 0), (3, 1, 2), (2, 5, 0), (0, 0, 1)] {
            assert_eq!(drift_slots(surge, marked), want, "{surge} {marked}");
        }
    }

    #[test]
    fn drifted_machines_are_replaced_oldest_first_max_surge_at_a_time() {
        let mut ms = running(3);
        let all = ["i-0", "i-1", "i-2"];
        // Never: only reported.
        let p = plan(
            &drifting(3, ReplaceOn::default(), &all),
            &mut ms.clone(),
            None,
        );
        assert_eq!(p, Plan::default());
        // Replace, maxSurge 1: the oldest is marked, one replacement launched.
        let p = plan(&drifting(3, update(1), &all), &mut ms, None);
        assert_eq!((p.launch, p.terminate.len()), (1, 0));
        assert_eq!(
            p.newly_marked,
            [("i-0".to_string(), ReplaceReason::Drifted)]
        );
        // While it is pending nothing else is marked, nothing launched.
        ms.push(m("i-9", MachineState::Pending, 9));
        let p = plan(&drifting(3, update(1), &all), &mut ms, None);
        assert_eq!(p, Plan::default());
        // It runs: i-0 goes as Replaced and the next drifted one is marked.
        ms[3].state = MachineState::Running;
        let p = plan(&drifting(3, update(1), &all), &mut ms, None);
        assert_eq!(p.terminate, ["i-0"]);
        assert_eq!(ms[0].termination_reason, Some(TerminationReason::Replaced));
        assert_eq!(ms[0].replace_reason, Some(ReplaceReason::Drifted));
        assert_eq!(
            p.newly_marked,
            [("i-1".to_string(), ReplaceReason::Drifted)]
        );
        assert_eq!(p.launch, 1);
        // The replacement (i-9) is not drifted: never marked.
        assert_eq!(ms[3].replace_reason, None);
    }

    #[test]
    fn a_larger_surge_replaces_several_at_once() {
        let mut ms = running(4);
        let all = ["i-0", "i-1", "i-2", "i-3"];
        let p = plan(&drifting(4, update(3), &all), &mut ms, None);
        assert_eq!(p.launch, 3);
        let marked: Vec<&str> = p.newly_marked.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(marked, ["i-0", "i-1", "i-2"]);
        assert_eq!(target_with_replacements(4, true, &ms), 7);
    }

    #[test]
    fn a_machine_no_longer_drifted_is_unmarked_and_its_spare_goes() {
        let mut ms = running(2);
        let all = ["i-0", "i-1"];
        plan(&drifting(2, update(1), &all), &mut ms, None);
        ms.push(m("i-9", MachineState::Pending, 9));
        // The template went back: nothing drifts.
        let p = plan(&drifting(2, update(1), &[]), &mut ms, None);
        assert_eq!(ms[0].replace_reason, None);
        assert_eq!(p.terminate, ["i-9"], "the replacement is surplus");
        // Policy back to Never with drift still there: unmarked too.
        let mut ms = running(2);
        plan(&drifting(2, update(1), &all), &mut ms, None);
        plan(&drifting(2, ReplaceOn::default(), &all), &mut ms, None);
        assert_eq!(ms[0].replace_reason, None);
    }

    #[test]
    fn a_machine_marked_for_another_cause_keeps_it_and_is_not_counted_twice() {
        let mut ms = running(2);
        recommend(&mut ms[0]);
        let both = ReplaceOn {
            rebalance: true,
            ..update(1)
        };
        let p = plan(&drifting(2, both, &["i-0", "i-1"]), &mut ms, None);
        assert_eq!(ms[0].replace_reason, Some(ReplaceReason::Rebalance));
        assert_eq!(ms[1].replace_reason, Some(ReplaceReason::Drifted));
        assert_eq!(p.launch, 2);
    }

    #[test]
    fn a_hostfactory_request_never_replaces() {
        let mut mr = MachineRequest::new(
            "r",
            MachineRequestSpec {
                template_ref: crate::api::TemplateRef { name: "t".into() },
                count: 1,
                return_machines: vec![],
                replace_lost: true,
                rebalance_policy: RebalancePolicy::Replace,
                replace_unhealthy: true,
                update_policy: crate::api::UpdatePolicy {
                    type_: UpdatePolicyType::Replace,
                    max_surge: Some(2),
                },
                tags: Default::default(),
            },
        );
        assert_eq!(
            ReplaceOn::of(&mr),
            ReplaceOn {
                rebalance: true,
                unhealthy: true,
                drift: true,
                max_surge: 2,
            }
        );
        mr.metadata.labels = Some(
            [(
                crate::api::OWNER_LABEL.to_string(),
                crate::api::HOSTFACTORY_OWNER.to_string(),
            )]
            .into(),
        );
        assert_eq!(ReplaceOn::of(&mr), ReplaceOn::default());
    }
}

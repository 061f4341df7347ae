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
//!   launching them again would duplicate them).

use std::cmp::Reverse;
use std::collections::BTreeSet;

use crate::api::{
    Machine, MachineRequestSpec, MachineRequestStatus, MachineResult, TerminationReason,
};

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
}

impl Desired {
    /// What `spec` asks for.
    pub fn of(spec: &MachineRequestSpec) -> Desired {
        Desired {
            count: spec.count,
            return_machines: spec.return_machines.iter().cloned().collect(),
            replace_lost: spec.replace_lost,
            reserved: 0,
        }
    }

    /// What `spec` asks for, with what `status`'s unsettled launches hold.
    pub fn of_request(spec: &MachineRequestSpec, status: &MachineRequestStatus) -> Desired {
        Desired {
            reserved: status.unconfirmed_launches(),
            ..Desired::of(spec)
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
}

/// How many live machines the request should have: `count`, less the lost
/// machines it keeps in their place when it does not replace them.
pub fn target(count: i32, replace_lost: bool, machines: &[Machine]) -> i32 {
    let kept_lost = if replace_lost {
        0
    } else {
        machines
            .iter()
            .filter(|m| m.termination_reason == Some(TerminationReason::Lost))
            .count() as i32
    };
    (count - kept_lost).max(0)
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
    let needed = target(desired.count, desired.replace_lost, machines) - desired.reserved.max(0);
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

    let live: Vec<usize> = (0..machines.len())
        .filter(|i| machines[*i].is_live())
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
    let deficit = (target(desired.count, desired.replace_lost, machines)
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
}

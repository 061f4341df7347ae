//! Facts about a request's status that several layers need (the request
//! controller, the template controller's `machinesInUse`, the sweep, the
//! HostFactory plugin). They are pure functions of the api types, so they live
//! beside them and nobody has to reach into a controller for them.

use super::request::{
    LaunchBatch, LaunchState, Machine, MachineRequest, MachineRequestStatus, MachineResult,
    MachineState, TemplateVersion, TerminationReason,
};
use super::{HOSTFACTORY_OWNER, OWNER_LABEL};

impl MachineState {
    /// Whether the machine is terminated or on its way there.
    pub fn is_terminating(self) -> bool {
        matches!(self, MachineState::ShuttingDown | MachineState::Terminated)
    }

    /// Whether the machine can no longer serve its request without the
    /// operator doing something: stopped, stopping, or terminating.
    pub fn is_down(self) -> bool {
        self.is_terminating() || matches!(self, MachineState::Stopping | MachineState::Stopped)
    }
}

impl MachineResult {
    /// The outcome the requester sees. A machine the request still counts
    /// succeeds when running; one being given back succeeds once terminated (as
    /// IBM's HostFactory provider reports returns); a lost machine has failed.
    pub fn of(state: MachineState, reason: Option<TerminationReason>) -> MachineResult {
        match reason {
            None => match state {
                MachineState::Running => MachineResult::Succeed,
                MachineState::Pending | MachineState::Unknown => MachineResult::Executing,
                _ => MachineResult::Fail,
            },
            Some(TerminationReason::Lost) => MachineResult::Fail,
            Some(_) => match state {
                MachineState::Terminated => MachineResult::Succeed,
                _ => MachineResult::Executing,
            },
        }
    }
}

impl TerminationReason {
    /// The reason's spelling in status, metrics and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            TerminationReason::Returned => "Returned",
            TerminationReason::ScaledDown => "ScaledDown",
            TerminationReason::Lost => "Lost",
            TerminationReason::RequestDeleted => "RequestDeleted",
            TerminationReason::Replaced => "Replaced",
        }
    }
}

impl Machine {
    /// A status entry for a machine known only by its id, before the cloud has
    /// said anything about it.
    pub fn unknown(id: &str) -> Machine {
        Machine {
            id: id.into(),
            name: None,
            state: MachineState::Unknown,
            result: MachineResult::Executing,
            batch: None,
            instance_type: None,
            availability_zone: None,
            private_ip: None,
            public_ip: None,
            launch_time: None,
            capacity_type: None,
            image_id: None,
            termination_reason: None,
            interruption_notice_time: None,
            rebalance_recommendation_time: None,
            scheduled_event: None,
            replace_reason: None,
            template_digest: None,
            status_check: None,
            capacity_reservation_id: None,
            message: None,
        }
    }

    /// Whether the request still counts the machine as one of its live machines.
    pub fn is_live(&self) -> bool {
        self.termination_reason.is_none() && !self.state.is_down()
    }

    /// Whether the machine was marked to go and is not stopped or terminated yet.
    pub fn is_leaving(&self) -> bool {
        self.termination_reason.is_some()
            && !matches!(self.state, MachineState::Terminated | MachineState::Stopped)
    }
}

/// What changed in a template since a machine was launched from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drift {
    /// The template's launch-relevant spec (the machine's templateDigest
    /// differs from the version's digest).
    pub spec: bool,
    /// The template's resolved image (the machine runs another image).
    pub image: bool,
}

impl Drift {
    /// Whether anything changed.
    pub fn any(self) -> bool {
        self.spec || self.image
    }
}

impl TemplateVersion {
    /// How live machine `m` differs from this version; nothing for a machine
    /// no longer live, or without a templateDigest (launched before hostforge
    /// recorded it: unknown is never drifted).
    pub fn drift_of(&self, m: &Machine) -> Drift {
        let Some(digest) = m.template_digest.as_deref().filter(|_| m.is_live()) else {
            return Drift::default();
        };
        let image = matches!((&m.image_id, &self.image_id), (Some(a), Some(b)) if a != b);
        Drift {
            spec: digest != self.digest,
            image,
        }
    }
}

impl MachineRequestStatus {
    /// Whether machine `m` of this request is drifted from the template
    /// version status last saw (none seen yet: not drifted).
    pub fn is_drifted(&self, m: &Machine) -> bool {
        self.template_version
            .as_ref()
            .is_some_and(|v| v.drift_of(m).any())
    }
}

impl MachineRequest {
    /// Whether HostFactory owns the request (label `hostforge.io/owner:
    /// hostfactory`): the scheduler decides which of its hosts go, so the
    /// operator never replaces one of them on its own (rebalance, status
    /// checks), whatever the spec says.
    pub fn is_hostfactory_owned(&self) -> bool {
        self.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(OWNER_LABEL))
            .is_some_and(|v| v == HOSTFACTORY_OWNER)
    }
}

impl MachineRequestStatus {
    /// Live machines plus machines of launches not settled yet: what the
    /// request holds against its template's `maxMachines`.
    pub fn machines_in_use(&self) -> i32 {
        self.live_machines() + self.unconfirmed_launches()
    }

    /// The launches still `Pending` (recorded, maybe sent), to be settled.
    pub fn pending_launches(&self) -> Vec<LaunchBatch> {
        self.launches
            .iter()
            .filter(|b| b.state == LaunchState::Pending)
            .cloned()
            .collect()
    }

    /// Machines that launches still `Pending` asked for and status does not
    /// list yet (a batch settled by its tag holds the ones its lookup did not
    /// show: they may only be invisible). Counted in their place, so they are
    /// neither launched again nor given to another request's `maxMachines`.
    pub fn unconfirmed_launches(&self) -> i32 {
        self.launches
            .iter()
            .filter(|b| b.state == LaunchState::Pending)
            .map(|b| {
                let listed = count(
                    self.machines
                        .iter()
                        .filter(|m| m.batch.as_deref() == Some(b.id.as_str())),
                );
                (b.count - listed).max(0)
            })
            .sum()
    }

    /// Machines the request counts as its own.
    pub fn live_machines(&self) -> i32 {
        count(self.machines.iter().filter(|m| m.is_live()))
    }

    /// Machines the request counts that are not running yet.
    pub fn pending_machines(&self) -> i32 {
        count(
            self.machines
                .iter()
                .filter(|m| m.is_live() && m.state != MachineState::Running),
        )
    }
}

fn count<'a>(it: impl Iterator<Item = &'a Machine>) -> i32 {
    i32::try_from(it.count()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(id: &str, state: MachineState, reason: Option<TerminationReason>) -> Machine {
        let m = Machine::test(id).state(state);
        match reason {
            Some(r) => m.reason(r),
            None => m,
        }
    }

    #[test]
    fn down_and_terminating_states() {
        use MachineState::*;
        for (s, terminating, down) in [
            (Unknown, false, false),
            (Pending, false, false),
            (Running, false, false),
            (Stopping, false, true),
            (Stopped, false, true),
            (ShuttingDown, true, true),
            (Terminated, true, true),
        ] {
            assert_eq!(s.is_terminating(), terminating, "{s:?}");
            assert_eq!(s.is_down(), down, "{s:?}");
        }
    }

    #[test]
    fn results_follow_state_and_reason() {
        use MachineResult::*;
        use MachineState::*;
        assert_eq!(MachineResult::of(Running, None), Succeed);
        assert_eq!(MachineResult::of(Pending, None), Executing);
        assert_eq!(MachineResult::of(Stopped, None), Fail);
        let returned = Some(TerminationReason::Returned);
        assert_eq!(MachineResult::of(ShuttingDown, returned), Executing);
        assert_eq!(MachineResult::of(Terminated, returned), Succeed);
        assert_eq!(
            MachineResult::of(Running, Some(TerminationReason::Lost)),
            Fail
        );
    }

    #[test]
    fn machines_in_use_counts_live_machines_and_pending_launches() {
        let batch = |state, count| LaunchBatch {
            count,
            ..LaunchBatch::test("b", state)
        };
        let st = MachineRequestStatus {
            machines: vec![
                machine("i-1", MachineState::Running, None),
                machine("i-2", MachineState::Pending, None),
                machine("i-3", MachineState::Stopped, None),
                machine(
                    "i-4",
                    MachineState::Running,
                    Some(TerminationReason::Returned),
                ),
            ],
            launches: vec![
                batch(LaunchState::Pending, 3),
                batch(LaunchState::Launched, 2),
                batch(LaunchState::Failed, 5),
            ],
            ..Default::default()
        };
        assert_eq!(st.live_machines(), 2);
        assert_eq!(st.pending_machines(), 1);
        assert_eq!(st.machines_in_use(), 5);
        assert!(st.machines[3].is_leaving());
        assert!(!st.machines[2].is_leaving());
    }

    #[test]
    fn a_pending_batch_holds_only_the_machines_status_does_not_list_yet() {
        let batch = |id: &str, state, count| LaunchBatch {
            count,
            ..LaunchBatch::test(id, state)
        };
        let of = |id: &str, batch: &str| Machine {
            batch: Some(batch.into()),
            ..machine(id, MachineState::Running, None)
        };
        // (machines with their batch, launches, unconfirmed)
        let rows = vec![
            (vec![], vec![batch("b-1", LaunchState::Pending, 3)], 3),
            (
                vec![of("i-1", "b-1")],
                vec![batch("b-1", LaunchState::Pending, 3)],
                2,
            ),
            // Settled batches hold nothing; more listed than asked is not negative.
            (
                vec![of("i-1", "b-1"), of("i-2", "b-2"), of("i-3", "b-2")],
                vec![
                    batch("b-1", LaunchState::Launched, 3),
                    batch("b-2", LaunchState::Pending, 1),
                ],
                0,
            ),
        ];
        for (machines, launches, want) in rows {
            let st = MachineRequestStatus {
                machines,
                launches,
                ..Default::default()
            };
            assert_eq!(st.unconfirmed_launches(), want, "{st:?}");
            assert_eq!(st.machines_in_use(), st.live_machines() + want);
        }
    }
}

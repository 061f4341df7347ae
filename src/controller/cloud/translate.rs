//! Translation between the provider's plain machines and the request status's
//! machines.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{self, MachineLifecycle, MachineResult};
use crate::provider::{self, CapacityType};

/// What a fresh observation of a machine means for its status entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Copy it in ([`update`]).
    Update,
    /// Copy it in; the machine went down before it ever ran, with a reason
    /// from the cloud: a death at launch (a bad key, a volume limit, no
    /// capacity after all), counted against its offering.
    DiedAtLaunch,
    /// The entry says terminated and the request had let it go as lost (or
    /// as vanished), but the cloud reports it live: revive it or, if it was
    /// replaced, terminate it; never leave it running unmanaged.
    CameBack,
    /// Nothing to copy (a terminated entry stays terminated).
    Keep,
}

/// Classifies `seen` against the status entry `m`. `vanished` is the reason
/// the sweep gives a machine no read reports any more (not a death at launch).
pub fn change(m: &api::Machine, seen: &provider::Machine, vanished: &str) -> Change {
    let live_again = matches!(
        seen.state,
        provider::MachineState::Pending | provider::MachineState::Running
    );
    if m.state == api::MachineState::Terminated {
        return match m.termination_reason {
            _ if !live_again => Change::Keep,
            None | Some(api::TerminationReason::Lost) => Change::CameBack,
            // Let go on purpose: the plan terminates it again.
            Some(_) => Change::Update,
        };
    }
    let never_ran = matches!(
        m.state,
        api::MachineState::Unknown | api::MachineState::Pending
    );
    let with_reason = seen
        .state_reason
        .as_deref()
        .is_some_and(|r| !r.is_empty() && r != vanished);
    if m.termination_reason.is_none() && never_ran && seen.state.is_terminating() && with_reason {
        Change::DiedAtLaunch
    } else {
        Change::Update
    }
}

/// The status spelling of a provider state.
pub fn state(s: provider::MachineState) -> api::MachineState {
    match s {
        provider::MachineState::Pending => api::MachineState::Pending,
        provider::MachineState::Running => api::MachineState::Running,
        provider::MachineState::Stopping => api::MachineState::Stopping,
        provider::MachineState::Stopped => api::MachineState::Stopped,
        provider::MachineState::ShuttingDown => api::MachineState::ShuttingDown,
        provider::MachineState::Terminated => api::MachineState::Terminated,
        provider::MachineState::Unknown => api::MachineState::Unknown,
    }
}

/// A status entry for a machine the cloud reported.
pub fn new_machine(m: &provider::Machine, batch: Option<&str>) -> api::Machine {
    let mut out = api::Machine::unknown(&m.id);
    out.batch = batch.map(str::to_string);
    update(&mut out, m);
    out
}

/// Copies what the cloud reports into a status entry. Fields the cloud left
/// empty keep their old values (a terminated instance loses its IP addresses,
/// but the record of where it ran stays useful).
pub fn update(out: &mut api::Machine, m: &provider::Machine) {
    out.state = state(m.state);
    keep_or(&mut out.name, &m.private_dns_name);
    keep_or(&mut out.instance_type, &m.instance_type);
    keep_or(&mut out.availability_zone, &m.availability_zone);
    keep_or(&mut out.private_ip, &m.private_ip);
    keep_or(&mut out.public_ip, &m.public_ip);
    keep_or(&mut out.image_id, &m.image_id);
    keep_or(&mut out.capacity_reservation_id, &m.capacity_reservation_id);
    if let Some(t) = m.launch_time.as_deref().and_then(parse_time) {
        out.launch_time = Some(t);
    }
    out.capacity_type = Some(match m.capacity_type {
        CapacityType::OnDemand => MachineLifecycle::OnDemand,
        CapacityType::Spot => MachineLifecycle::Spot,
    });
    if out.batch.is_none() {
        out.batch = m.tags.get(super::ownership::BATCH_TAG).cloned();
    }
    if out.state.is_down() {
        if let Some(reason) = &m.state_reason {
            out.message = Some(reason.clone());
        }
    }
    out.result = MachineResult::of(out.state, out.termination_reason);
}

fn keep_or(field: &mut Option<String>, value: &Option<String>) {
    if value.is_some() {
        field.clone_from(value);
    }
}

/// Parses an RFC 3339 time as the cloud reports it.
pub fn parse_time(s: &str) -> Option<Time> {
    s.parse::<Timestamp>().ok().map(Time)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn machine(state: provider::MachineState) -> provider::Machine {
        provider::Machine {
            id: "i-1".into(),
            private_dns_name: Some("ip-10-0-0-1.ec2.internal".into()),
            state,
            state_reason: Some("Client.UserInitiatedShutdown".into()),
            instance_type: Some("t3.micro".into()),
            availability_zone: Some("us-east-1a".into()),
            subnet_id: None,
            private_ip: Some("10.0.0.1".into()),
            public_ip: None,
            launch_time: Some("2026-11-25T10:00:00Z".into()),
            capacity_type: CapacityType::Spot,
            image_id: Some("ami-1".into()),
            tags: BTreeMap::from([("hostforge.io/batch".to_string(), "b-1".to_string())]),
            capacity_reservation_id: Some("cr-1".into()),
        }
    }

    #[test]
    fn observations_are_classified_against_the_entry() {
        use api::MachineState as S;
        use api::TerminationReason as R;
        use provider::MachineState as P;
        let gone = "no longer reported by the cloud";
        let reason = Some("Server.InsufficientInstanceCapacity: Insufficient capacity.");
        // (entry state, entry reason, seen state, seen reason, change)
        type Row<'a> = (S, Option<R>, P, Option<&'a str>, Change);
        let rows: &[Row] = &[
            (S::Pending, None, P::Running, None, Change::Update),
            (
                S::Pending,
                None,
                P::Terminated,
                reason,
                Change::DiedAtLaunch,
            ),
            (
                S::Unknown,
                None,
                P::ShuttingDown,
                reason,
                Change::DiedAtLaunch,
            ),
            // Ran first: lost, not a death at launch.
            (S::Running, None, P::Terminated, reason, Change::Update),
            // Terminated by us while pending (returned, scaled down).
            (
                S::Pending,
                Some(R::Returned),
                P::Terminated,
                reason,
                Change::Update,
            ),
            // Vanished from every read: not a death at launch.
            (S::Pending, None, P::Terminated, Some(gone), Change::Update),
            (S::Pending, None, P::Terminated, None, Change::Update),
            (
                S::Terminated,
                Some(R::Lost),
                P::Terminated,
                reason,
                Change::Keep,
            ),
            (
                S::Terminated,
                Some(R::Lost),
                P::Running,
                None,
                Change::CameBack,
            ),
            (S::Terminated, None, P::Pending, None, Change::CameBack),
            (
                S::Terminated,
                Some(R::ScaledDown),
                P::Running,
                None,
                Change::Update,
            ),
            (S::Terminated, Some(R::Lost), P::Stopped, None, Change::Keep),
        ];
        for (st, why, seen_state, seen_reason, want) in rows {
            let mut entry = api::Machine::unknown("i-1");
            entry.state = *st;
            entry.termination_reason = *why;
            let mut seen = machine(*seen_state);
            seen.state_reason = seen_reason.map(str::to_string);
            assert_eq!(
                change(&entry, &seen, gone),
                *want,
                "{st:?} {why:?} seen {seen_state:?} {seen_reason:?}"
            );
        }
    }

    #[test]
    fn updates_keep_old_values_the_cloud_no_longer_reports() {
        let mut m = new_machine(&machine(provider::MachineState::Running), None);
        assert_eq!(m.batch.as_deref(), Some("b-1"));
        assert_eq!(m.result, MachineResult::Succeed);
        assert_eq!(m.capacity_type, Some(MachineLifecycle::Spot));
        assert!(m.launch_time.is_some());
        assert_eq!(m.message, None);
        assert_eq!(m.capacity_reservation_id.as_deref(), Some("cr-1"));
        let mut gone = machine(provider::MachineState::Terminated);
        gone.private_ip = None;
        gone.capacity_reservation_id = None;
        update(&mut m, &gone);
        assert_eq!(m.state, api::MachineState::Terminated);
        assert_eq!(m.private_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(m.capacity_reservation_id.as_deref(), Some("cr-1"));
        assert_eq!(m.message.as_deref(), Some("Client.UserInitiatedShutdown"));
        assert_eq!(m.result, MachineResult::Fail);
    }
}

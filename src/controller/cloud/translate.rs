//! Translation between the provider's plain machines and the request status's
//! machines.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::api::{self, MachineLifecycle, MachineResult};
use crate::provider::{self, CapacityType};

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
        let mut gone = machine(provider::MachineState::Terminated);
        gone.private_ip = None;
        update(&mut m, &gone);
        assert_eq!(m.state, api::MachineState::Terminated);
        assert_eq!(m.private_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(m.message.as_deref(), Some("Client.UserInitiatedShutdown"));
        assert_eq!(m.result, MachineResult::Fail);
    }
}

//! getReturnRequests: of the hosts HostFactory holds from this provider, the
//! ones the cloud is taking back, read from machine states in status.
//!
//! Listed with `gracePeriod` 0: a machine the operator marked Lost (stopped or
//! terminated outside hostforge), any other machine stopping, stopped,
//! shutting down or terminated that the scheduler did not return itself
//! (e.g. scaled down or its request deleted by a person), and a host no
//! scheduler-owned request lists any more (gone). Returned machines are not
//! listed: the scheduler already let them go.
//!
//! A spot machine with an interruption notice (the operator records EC2's
//! two-minute warning in `interruptionNoticeTime`) is listed while it still
//! runs, with the rest of the warning as `gracePeriod`: 120 s minus the time
//! since the notice, never below 0.

use k8s_openapi::jiff::Timestamp;
use kube::{Api, Client};

use super::protocol::{MachinesIn, ReclaimedHost, ReturnRequestsOut};
use super::returns::owned_requests;
use super::{HfConfig, HfError, MachineKey};
use crate::api::{Machine, MachineRequest, MachineState, TerminationReason};

/// How long EC2 warns before it takes a spot machine back, in seconds.
pub const SPOT_WARNING_SECONDS: i64 = 120;

/// Whether the cloud (or someone other than the scheduler) is taking `m` away.
pub fn is_reclaimed(m: &Machine) -> bool {
    match m.termination_reason {
        Some(TerminationReason::Returned) => false,
        Some(TerminationReason::Lost) => true,
        _ => matches!(
            m.state,
            MachineState::Stopping
                | MachineState::Stopped
                | MachineState::ShuttingDown
                | MachineState::Terminated
        ),
    }
}

/// The seconds the scheduler has left to drain `m` when it is being taken
/// back at `now`; `None` when it is not.
pub fn grace_period(m: &Machine, now: Timestamp) -> Option<i64> {
    if m.termination_reason == Some(TerminationReason::Returned) {
        return None;
    }
    if is_reclaimed(m) {
        return Some(0);
    }
    let noticed = m.interruption_notice_time.as_ref()?.0;
    let since = now.as_second() - noticed.as_second();
    Some((SPOT_WARNING_SECONDS - since).clamp(0, SPOT_WARNING_SECONDS))
}

/// The hosts of `held` to give back at `now`, in input order.
pub fn reclaimed(
    held: &[MachineKey],
    requests: &[MachineRequest],
    now: Timestamp,
) -> Vec<ReclaimedHost> {
    let machines: Vec<&Machine> = requests
        .iter()
        .filter(|mr| super::is_owned(mr))
        .filter_map(|mr| mr.status.as_ref())
        .flat_map(|st| st.machines.iter())
        .collect();
    held.iter()
        .filter_map(|key| {
            let found = machines.iter().find(|m| key.matches(m));
            let grace = match found {
                None => 0,
                Some(m) => grace_period(m, now)?,
            };
            Some(ReclaimedHost {
                machine: key
                    .name
                    .clone()
                    .or_else(|| found.and_then(|m| m.name.clone()))
                    .unwrap_or_default(),
                machine_id: key
                    .id
                    .clone()
                    .or_else(|| found.map(|m| m.id.clone()))
                    .unwrap_or_default(),
                grace_period: grace,
            })
        })
        .collect()
}

/// The operation.
pub async fn get_return_requests(
    client: &Client,
    config: &HfConfig,
    input: MachinesIn,
) -> Result<ReturnRequestsOut, HfError> {
    let held: Vec<MachineKey> = input
        .machines
        .into_vec()
        .iter()
        .map(|m| m.key())
        .filter(|k| k.id.is_some() || k.name.is_some())
        .collect();
    let api: Api<MachineRequest> = Api::namespaced(client.clone(), &config.namespace);
    let requests = if held.is_empty() {
        vec![]
    } else {
        owned_requests(&api, &config.namespace).await?
    };
    let requests_out = reclaimed(&held, &requests, Timestamp::now());
    Ok(ReturnRequestsOut {
        status: "complete".into(),
        message: format!(
            "{} of {} hosts are being taken back",
            requests_out.len(),
            held.len()
        ),
        requests: requests_out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfactory::{OWNER_LABEL, OWNER_VALUE};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff;
    use serde_json::json;

    fn requests() -> Vec<MachineRequest> {
        let m = |id: &str, state: &str, reason: Option<&str>| {
            json!({"id": id, "name": format!("host-{id}"), "state": state, "result": "succeed",
                   "terminationReason": reason})
        };
        vec![serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": "hf-a", "namespace": "hpc", "labels": {OWNER_LABEL: OWNER_VALUE}},
            "spec": {"templateRef": {"name": "compute"}, "count": 4},
            "status": {"machines": [
                m("i-ok", "running", None),
                m("i-lost", "stopped", Some("Lost")),
                m("i-ret", "terminated", Some("Returned")),
                m("i-down", "shutting-down", Some("ScaledDown")),
                m("i-new", "pending", None),
            ]}
        }))
        .expect("request")]
    }

    fn key(id: &str) -> MachineKey {
        MachineKey {
            id: Some(id.into()),
            name: Some(format!("host-{id}")),
        }
    }

    #[test]
    fn lost_taken_and_vanished_hosts_are_listed_with_no_grace() {
        let held: Vec<MachineKey> = ["i-ok", "i-lost", "i-ret", "i-down", "i-new", "i-gone"]
            .into_iter()
            .map(key)
            .collect();
        let out = reclaimed(&held, &requests(), Timestamp::now());
        let names: Vec<_> = out.iter().map(|h| h.machine.as_str()).collect();
        assert_eq!(names, ["host-i-lost", "host-i-down", "host-i-gone"]);
        assert!(out.iter().all(|h| h.grace_period == 0));
        assert_eq!(out[0].machine_id, "i-lost");
    }

    #[test]
    fn a_host_named_only_by_id_gets_its_name_from_status() {
        let out = reclaimed(
            &[MachineKey {
                id: Some("i-lost".into()),
                name: None,
            }],
            &requests(),
            Timestamp::now(),
        );
        assert_eq!(out[0].machine, "host-i-lost");
    }

    #[test]
    fn a_noticed_spot_host_gets_the_rest_of_the_warning() {
        let mut mrs = requests();
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        let noticed: Timestamp = "2026-11-25T10:00:00Z".parse().expect("time");
        machines[0].interruption_notice_time = Some(Time(noticed));
        let at = |secs: i64| noticed + jiff::SignedDuration::from_secs(secs);
        let held = [key("i-ok"), key("i-new")];
        let out = reclaimed(&held, &mrs, at(30));
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].machine_id, "i-ok");
        assert_eq!(out[0].grace_period, 90);
        assert_eq!(reclaimed(&held, &mrs, at(500))[0].grace_period, 0);
        assert_eq!(
            reclaimed(&held, &mrs, at(-5))[0].grace_period,
            120,
            "a clock behind the notice never gives more than the warning"
        );
        // Once the scheduler returned it, it is no longer announced.
        machines_returned(&mut mrs, "i-ok");
        assert!(reclaimed(&held, &mrs, at(30)).is_empty());
    }

    fn machines_returned(mrs: &mut [MachineRequest], id: &str) {
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        for m in machines.iter_mut().filter(|m| m.id == id) {
            m.termination_reason = Some(TerminationReason::Returned);
        }
    }
}

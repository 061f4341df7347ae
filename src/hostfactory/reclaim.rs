//! getReturnRequests: of the hosts HostFactory holds from this provider, the
//! ones the cloud is taking back, read from machine states in status.
//!
//! Listed with `gracePeriod` 0: a machine the operator marked Lost (stopped or
//! terminated outside hostforge), any other machine stopping, stopped,
//! shutting down or terminated that the scheduler did not return itself
//! (e.g. scaled down), and every machine of a request being deleted (the
//! operator is terminating them). Returned machines are not listed: the
//! scheduler already let them go.
//!
//! A host no scheduler-owned request lists is *not* reported: unknown is not
//! reclaimed. A mistyped namespace, a removed owner label or a deleted request
//! would otherwise make the scheduler drain every host it holds; such hosts
//! are counted in the message instead. A host name several live machines
//! carry is not reported either (named as ambiguous in the message).
//!
//! The call also expires finished scheduler-owned requests ([`super::expire`]):
//! HostFactory makes it every few seconds and it lists them anyway.
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

/// What getReturnRequests found for the hosts HostFactory holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reclaim {
    /// The hosts to give back, in input order.
    pub hosts: Vec<ReclaimedHost>,
    /// Hosts no scheduler-owned request lists: not reported as reclaimed.
    pub unknown: Vec<MachineKey>,
    /// Host names several live machines carry: not reported.
    pub ambiguous: Vec<MachineKey>,
}

/// The hosts of `held` to give back at `now`, in input order, and the hosts
/// that could not be judged.
pub fn reclaimed(held: &[MachineKey], requests: &[MachineRequest], now: Timestamp) -> Reclaim {
    // Each machine with whether its request is being deleted: the operator is
    // terminating those, so they are taken back even while still running.
    let machines: Vec<(bool, &Machine)> = requests
        .iter()
        .filter(|mr| super::is_owned(mr))
        .filter_map(|mr| {
            Some((
                mr.metadata.deletion_timestamp.is_some(),
                mr.status.as_ref()?,
            ))
        })
        .flat_map(|(deleting, st)| st.machines.iter().map(move |m| (deleting, m)))
        .collect();
    let mut out = Reclaim::default();
    for key in held {
        let Some((deleting, m)) = key.resolve(machines.iter().copied()).or_note(
            key,
            &mut out.unknown,
            &mut out.ambiguous,
        ) else {
            continue;
        };
        let grace = match grace_period(m, now) {
            Some(grace) => grace,
            None if deleting && m.termination_reason != Some(TerminationReason::Returned) => 0,
            None => continue,
        };
        out.hosts.push(ReclaimedHost {
            machine: key
                .name
                .clone()
                .or_else(|| m.name.clone())
                .unwrap_or_default(),
            machine_id: key.id.clone().unwrap_or_else(|| m.id.clone()),
            grace_period: grace,
        });
    }
    out
}

/// The answer's message: how many hosts are taken back, and which could not
/// be judged.
pub fn message(held: usize, r: &Reclaim) -> String {
    let mut text = format!("{} of {held} hosts are being taken back", r.hosts.len());
    let names = |keys: &[MachineKey]| {
        keys.iter()
            .map(MachineKey::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if !r.unknown.is_empty() {
        text.push_str(&format!(
            "; {} not found in any scheduler-owned MachineRequest (not reported as reclaimed; \
             check the namespace and the hostforge.io/owner label): {}",
            r.unknown.len(),
            names(&r.unknown)
        ));
    }
    if !r.ambiguous.is_empty() {
        text.push_str(&format!(
            "; ambiguous, several live machines have this name: {}",
            names(&r.ambiguous)
        ));
    }
    text
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
    let requests = owned_requests(&api, &config.namespace).await?;
    let found = reclaimed(&held, &requests, Timestamp::now());
    if let Some(retention) = config.finished_retention {
        super::expire::expire(&api, &requests, retention).await;
    }
    if !found.unknown.is_empty() {
        tracing::warn!(
            hosts = found.unknown.len(),
            "held hosts not found in any scheduler-owned MachineRequest; not reported as reclaimed"
        );
    }
    Ok(ReturnRequestsOut {
        status: "complete".into(),
        message: message(held.len(), &found),
        requests: found.hosts,
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
    fn lost_and_taken_hosts_are_listed_with_no_grace() {
        let held: Vec<MachineKey> = ["i-ok", "i-lost", "i-ret", "i-down", "i-new", "i-gone"]
            .into_iter()
            .map(key)
            .collect();
        let found = reclaimed(&held, &requests(), Timestamp::now());
        let out = &found.hosts;
        let names: Vec<_> = out.iter().map(|h| h.machine.as_str()).collect();
        assert_eq!(names, ["host-i-lost", "host-i-down"]);
        assert_eq!(found.unknown, [key("i-gone")]);
        assert!(message(held.len(), &found).contains("1 not found"));
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
        )
        .hosts;
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
        let out = reclaimed(&held, &mrs, at(30)).hosts;
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].machine_id, "i-ok");
        assert_eq!(out[0].grace_period, 90);
        assert_eq!(reclaimed(&held, &mrs, at(500)).hosts[0].grace_period, 0);
        assert_eq!(
            reclaimed(&held, &mrs, at(-5)).hosts[0].grace_period,
            120,
            "a clock behind the notice never gives more than the warning"
        );
        // Once the scheduler returned it, it is no longer announced.
        machines_returned(&mut mrs, "i-ok");
        assert!(reclaimed(&held, &mrs, at(30)).hosts.is_empty());
    }

    #[test]
    fn a_host_no_request_lists_is_not_reported_as_reclaimed() {
        let out = reclaimed(&[key("i-gone")], &requests(), Timestamp::now());
        assert!(out.hosts.is_empty(), "unknown is not reclaimed: {out:?}");
    }

    #[test]
    fn a_reused_host_name_is_judged_by_its_live_holder() {
        let mut mrs = requests();
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        // i-lost's name now belongs to a healthy new machine.
        let mut heir = machines[0].clone();
        heir.id = "i-heir".into();
        heir.name = Some("host-i-lost".into());
        machines.push(heir);
        let by_name = MachineKey {
            id: None,
            name: Some("host-i-lost".into()),
        };
        let out = reclaimed(&[by_name], &mrs, Timestamp::now());
        assert!(
            out.hosts.is_empty(),
            "the healthy holder is not drained: {out:?}"
        );
    }

    #[test]
    fn the_machines_of_a_request_being_deleted_are_taken_back() {
        let mut mrs = requests();
        mrs[0].metadata.deletion_timestamp =
            Some(Time("2026-01-01T00:00:00Z".parse().expect("time")));
        let held = [key("i-ok"), key("i-ret")];
        let out = reclaimed(&held, &mrs, Timestamp::now()).hosts;
        let ids: Vec<_> = out.iter().map(|h| h.machine_id.as_str()).collect();
        assert_eq!(ids, ["i-ok"], "running, but its request is going");
        assert_eq!(out[0].grace_period, 0);
    }

    fn machines_returned(mrs: &mut [MachineRequest], id: &str) {
        let machines = &mut mrs[0].status.as_mut().expect("status").machines;
        for m in machines.iter_mut().filter(|m| m.id == id) {
            m.termination_reason = Some(TerminationReason::Returned);
        }
    }
}

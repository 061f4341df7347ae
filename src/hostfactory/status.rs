//! getRequestStatus for both kinds of id: a create request (a MachineRequest's
//! name) is answered from that request's status, a return request (`ret-…`)
//! from the annotations requestReturnMachines left on the requests it touched
//! and those requests' status. So any process can answer, at any time later.
//!
//! Mapping (as IBM's own AWS provider does it). Create: pending → executing,
//! running → succeed, stopping/stopped/shutting-down/terminated or lost →
//! fail. A create request is `running` until the operator reports it Ready
//! for its current spec and nothing is in flight, even when it is Degraded:
//! HostFactory gives up on a `complete_with_error` request while the operator
//! would go on filling it, leaving machines nobody uses. Then `complete`, or
//! `complete_with_error` when a machine failed. Return: shutting-down and
//! anything not gone yet → executing, terminated or no longer listed → succeed;
//! the request is `complete` when all have succeeded.
//!
//! Every id is checked before it reaches a URL or a label selector: a create
//! id must be a Kubernetes object name, a return id `ret-` and 16 lowercase
//! hex digits. Anything else is answered `unknown requestId` next to the
//! others, so one bad id never fails the whole call. At most
//! [`MAX_IDS`] ids per call, fetched [`CONCURRENCY`] at a time.

use futures::stream::{self, StreamExt};
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::protocol::{
    MachineOut, MachineOutcome, RequestState, RequestStatus, RequestStatusIn, RequestStatusOut,
};
use super::returns::{self, ReturnRecord};
use super::{is_owned, return_key, HfConfig, HfError, OWNER_LABEL, OWNER_VALUE, RETURN_PREFIX};
use crate::api::conditions::{self, DEGRADED, READY};
use crate::api::{LaunchState, Machine, MachineRequest, MachineState, TerminationReason};

/// The status of a create request.
pub fn create_status(mr: &MachineRequest) -> RequestStatus {
    let name = mr.name_any();
    let Some(st) = mr.status.as_ref() else {
        return RequestStatus {
            request_id: name,
            status: RequestState::Running,
            message: "accepted; the operator has not reported on it yet".into(),
            machines: vec![],
        };
    };
    // Machines the scheduler gave back (or that were scaled away) belong to
    // return requests now.
    let machines: Vec<MachineOut> = st
        .machines
        .iter()
        .filter(|m| {
            !matches!(
                m.termination_reason,
                Some(TerminationReason::Returned | TerminationReason::ScaledDown)
            )
        })
        .map(|m| {
            let (result, message) = create_outcome(m);
            machine_out(m, result, message)
        })
        .collect();
    let current = st.observed_generation == mr.metadata.generation;
    let ready = current && conditions::is_true(&st.conditions, READY);
    let in_flight = st.launches.iter().any(|b| b.state == LaunchState::Pending)
        || machines
            .iter()
            .any(|m| m.result == MachineOutcome::Executing);
    let failed = machines
        .iter()
        .filter(|m| m.result == MachineOutcome::Fail)
        .count();
    let (status, message) = if mr.metadata.deletion_timestamp.is_some() {
        (
            RequestState::CompleteWithError,
            "the MachineRequest is being deleted; its machines are terminated".to_string(),
        )
    } else if !ready || in_flight {
        let degraded = conditions::find_condition(&st.conditions, DEGRADED)
            .filter(|c| c.status == conditions::TRUE)
            .map(|c| format!("; degraded: {}: {}", c.reason, c.message))
            .unwrap_or_default();
        (
            RequestState::Running,
            format!(
                "{} of {} machines running{degraded}",
                st.counts.running, mr.spec.count
            ),
        )
    } else if failed > 0 {
        (
            RequestState::CompleteWithError,
            format!("{failed} machines failed"),
        )
    } else {
        (RequestState::Complete, String::new())
    };
    RequestStatus {
        request_id: name,
        status,
        message,
        machines,
    }
}

/// A machine's outcome in a create request, and the message for a failure.
fn create_outcome(m: &Machine) -> (MachineOutcome, String) {
    let gone = |what: &str| {
        m.message
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| format!("instance is {what}"))
    };
    if m.termination_reason == Some(TerminationReason::Lost) {
        return (MachineOutcome::Fail, gone(state_name(m.state)));
    }
    match m.state {
        MachineState::Unknown | MachineState::Pending => (MachineOutcome::Executing, String::new()),
        MachineState::Running => (MachineOutcome::Succeed, String::new()),
        other => (MachineOutcome::Fail, gone(state_name(other))),
    }
}

/// The status of return request `ret_id` from the requests carrying its
/// record; `None` when no request does (an unknown id).
pub fn return_status(ret_id: &str, requests: &[MachineRequest]) -> Option<RequestStatus> {
    let key = return_key(ret_id);
    let mut machines = vec![];
    let mut found = false;
    for mr in requests {
        let Some(value) = mr.annotations().get(&key) else {
            continue;
        };
        found = true;
        let status_machines = mr.status.as_ref().map(|s| &s.machines[..]).unwrap_or(&[]);
        for record in returns::parse_record(value) {
            machines.push(returned_machine(&record, status_machines));
        }
    }
    if !found {
        return None;
    }
    let waiting = machines
        .iter()
        .filter(|m| m.result != MachineOutcome::Succeed)
        .count();
    let (status, message) = if waiting == 0 {
        (RequestState::Complete, String::new())
    } else {
        (
            RequestState::Running,
            format!("{waiting} of {} machines still terminating", machines.len()),
        )
    };
    Some(RequestStatus {
        request_id: ret_id.to_string(),
        status,
        message,
        machines,
    })
}

/// One returned machine: terminated or gone from status → succeed, anything
/// else → executing (the operator has not finished terminating it).
fn returned_machine(record: &ReturnRecord, status_machines: &[Machine]) -> MachineOut {
    match status_machines.iter().find(|m| m.id == record.machine_id) {
        Some(m) => {
            let result = if m.state == MachineState::Terminated {
                MachineOutcome::Succeed
            } else {
                MachineOutcome::Executing
            };
            let mut out = machine_out(m, result, String::new());
            if out.name.is_empty() {
                out.name = record.name.clone();
            }
            out
        }
        None => MachineOut {
            machine_id: record.machine_id.clone(),
            name: record.name.clone(),
            result: MachineOutcome::Succeed,
            status: "terminated".into(),
            private_ip_address: String::new(),
            public_ip_address: String::new(),
            launchtime: 0,
            message: String::new(),
        },
    }
}

fn machine_out(m: &Machine, result: MachineOutcome, message: String) -> MachineOut {
    MachineOut {
        machine_id: m.id.clone(),
        name: m.name.clone().unwrap_or_default(),
        result,
        status: state_name(m.state).to_string(),
        private_ip_address: m.private_ip.clone().unwrap_or_default(),
        public_ip_address: m.public_ip.clone().unwrap_or_default(),
        launchtime: m.launch_time.as_ref().map(|t| t.0.as_second()).unwrap_or(0),
        message,
    }
}

/// EC2's name of a state.
pub fn state_name(state: MachineState) -> &'static str {
    match state {
        MachineState::Unknown => "unknown",
        MachineState::Pending => "pending",
        MachineState::Running => "running",
        MachineState::ShuttingDown => "shutting-down",
        MachineState::Terminated => "terminated",
        MachineState::Stopping => "stopping",
        MachineState::Stopped => "stopped",
    }
}

/// The answer for an id nobody knows (reported only next to known ones; a
/// call about unknown ids alone fails).
fn unknown(request_id: &str) -> RequestStatus {
    RequestStatus {
        request_id: request_id.to_string(),
        status: RequestState::CompleteWithError,
        message: "unknown requestId".into(),
        machines: vec![],
    }
}

/// Most ids one getRequestStatus call may ask about.
pub const MAX_IDS: usize = 5000;
/// Ids fetched at the same time: a bounded number of apiserver connections.
pub const CONCURRENCY: usize = 16;

/// Whether `id` is a Kubernetes object name (an RFC 1123 subdomain), so it can
/// go into a URL path unescaped.
pub fn is_object_name(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 253
        && id.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Whether `id` is a return id as [`returns::new_return_id`] makes them, so it
/// can go into a label selector.
pub fn is_return_id(id: &str) -> bool {
    id.strip_prefix(RETURN_PREFIX).is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

async fn fetch_one(
    api: &Api<MachineRequest>,
    request_id: &str,
) -> Result<Option<RequestStatus>, HfError> {
    if is_return_id(request_id) {
        let selector = format!("{OWNER_LABEL}={OWNER_VALUE},{}", return_key(request_id));
        // The apiserver's cache first: a consistent list waits for that cache
        // to reach etcd's latest revision, up to 100 ms after any write (see
        // `templates::Freshness`). An id the cache does not know yet (a
        // return made a moment ago) is looked up again at the latest revision
        // before it is called unknown.
        for params in [
            ListParams::default().labels(&selector).match_any(),
            ListParams::default().labels(&selector),
        ] {
            let list = api
                .list(&params)
                .await
                .map_err(|e| HfError::kube("list MachineRequests", e))?;
            if let Some(status) = return_status(request_id, &list.items) {
                return Ok(Some(status));
            }
        }
        return Ok(None);
    }
    // Only object names go into the URL; anything else cannot be one of ours.
    if !is_object_name(request_id) {
        return Ok(None);
    }
    let mr = api
        .get_opt(request_id)
        .await
        .map_err(|e| HfError::kube(format!("get MachineRequest {request_id}"), e))?;
    Ok(mr.filter(is_owned).map(|mr| create_status(&mr)))
}

/// The operation. Ids are answered concurrently, in input order; unknown ids
/// are `complete_with_error` next to known ones, and fail the call when no id
/// is known (so a mistyped id is an error, not a silent empty answer).
pub async fn get_request_status(
    client: &Client,
    config: &HfConfig,
    input: RequestStatusIn,
) -> Result<RequestStatusOut, HfError> {
    let ids: Vec<String> = input
        .requests
        .into_vec()
        .into_iter()
        .map(|r| r.request_id)
        .collect();
    if ids.is_empty() {
        return Err(HfError::InvalidInput("requests is empty".into()));
    }
    if ids.len() > MAX_IDS {
        return Err(HfError::InvalidInput(format!(
            "{} requestIds asked about; at most {MAX_IDS} per call",
            ids.len()
        )));
    }
    let api: Api<MachineRequest> = Api::namespaced(client.clone(), &config.namespace);
    // `buffered` keeps the input order while bounding the concurrency.
    let answers: Vec<_> = stream::iter(ids.iter().map(|id| fetch_one(&api, id)))
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let mut requests = Vec::with_capacity(ids.len());
    let mut unknown_ids = vec![];
    for (id, answer) in ids.iter().zip(answers) {
        match answer? {
            Some(status) => requests.push(status),
            None => {
                unknown_ids.push(id.clone());
                requests.push(unknown(id));
            }
        }
    }
    if unknown_ids.len() == ids.len() {
        return Err(HfError::UnknownRequest(unknown_ids.join(", ")));
    }
    Ok(RequestStatusOut { requests })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const T: &str = "2024-01-01T00:00:00Z";

    fn request(
        count: i32,
        ready: bool,
        machines: serde_json::Value,
        annotations: serde_json::Value,
    ) -> MachineRequest {
        serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": "hf-compute-abcde", "namespace": "hpc", "generation": 2,
                         "labels": {OWNER_LABEL: OWNER_VALUE}, "annotations": annotations},
            "spec": {"templateRef": {"name": "compute"}, "count": count, "replaceLost": false},
            "status": {
                "observedGeneration": 2,
                "conditions": [
                    {"type": "Ready", "status": if ready {"True"} else {"False"}, "reason": "x",
                     "message": "", "lastTransitionTime": T},
                    {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": "",
                     "lastTransitionTime": T}
                ],
                "counts": {"desired": count, "running": 1},
                "machines": machines,
            }
        }))
        .expect("request")
    }

    fn m(id: &str, state: &str, reason: Option<&str>) -> serde_json::Value {
        json!({"id": id, "name": format!("ip-{id}.ec2.internal"), "state": state,
               "result": "executing", "privateIp": "10.0.0.9", "launchTime": "2024-01-01T00:00:10Z",
               "terminationReason": reason})
    }

    #[test]
    fn a_filling_request_is_running_with_executing_machines() {
        let mr = request(
            3,
            false,
            json!([
                m("i-1", "running", None),
                m("i-2", "pending", None),
                m("i-3", "unknown", None)
            ]),
            json!({}),
        );
        let s = create_status(&mr);
        assert_eq!(s.status, RequestState::Running);
        let results: Vec<_> = s.machines.iter().map(|m| m.result).collect();
        assert_eq!(
            results,
            [
                MachineOutcome::Succeed,
                MachineOutcome::Executing,
                MachineOutcome::Executing
            ]
        );
        let first = &s.machines[0];
        assert_eq!(first.name, "ip-i-1.ec2.internal");
        assert_eq!(first.private_ip_address, "10.0.0.9");
        assert_eq!(first.public_ip_address, "");
        assert_eq!(first.launchtime, 1_704_067_210);
        assert_eq!(first.status, "running");
    }

    #[test]
    fn a_request_short_of_machines_stays_running_even_with_a_failure() {
        let mr = request(
            2,
            false,
            json!([
                m("i-1", "running", None),
                m("i-2", "terminated", Some("Lost"))
            ]),
            json!({}),
        );
        let s = create_status(&mr);
        assert_eq!(
            s.status,
            RequestState::Running,
            "not complete_with_error while filling"
        );
        assert_eq!(s.machines[1].result, MachineOutcome::Fail);
        assert_eq!(s.machines[1].message, "instance is terminated");
    }

    #[test]
    fn settled_requests_are_complete_or_complete_with_error() {
        let ok = request(1, true, json!([m("i-1", "running", None)]), json!({}));
        assert_eq!(create_status(&ok).status, RequestState::Complete);
        let lost = request(
            2,
            true,
            json!([m("i-1", "running", None), m("i-2", "stopped", Some("Lost"))]),
            json!({}),
        );
        let s = create_status(&lost);
        assert_eq!(s.status, RequestState::CompleteWithError);
        assert_eq!(s.machines[1].result, MachineOutcome::Fail);
        assert!(!s.machines[1].message.is_empty(), "fail needs a message");
    }

    #[test]
    fn returned_machines_leave_the_create_request() {
        let mr = request(
            1,
            true,
            json!([
                m("i-1", "running", None),
                m("i-2", "terminated", Some("Returned"))
            ]),
            json!({}),
        );
        let s = create_status(&mr);
        assert_eq!(s.machines.len(), 1);
        assert_eq!(s.status, RequestState::Complete);
    }

    #[test]
    fn a_stale_status_is_running() {
        let mut mr = request(1, true, json!([m("i-1", "running", None)]), json!({}));
        mr.metadata.generation = Some(3);
        assert_eq!(create_status(&mr).status, RequestState::Running);
    }

    #[test]
    fn only_well_formed_ids_reach_urls_and_selectors() {
        for good in ["hf-compute-x7k2p", "a", "a.b-c", &"a".repeat(253)] {
            assert!(is_object_name(good), "{good}");
        }
        for bad in [
            "",
            "has space",
            "a?watch=true",
            "../x",
            "a/b",
            "UPPER",
            "-a",
            "a-",
            "a..b",
            "a#b",
            &"a".repeat(254),
        ] {
            assert!(!is_object_name(bad), "{bad:?}");
        }
        assert!(is_return_id("ret-0123456789abcdef"));
        for bad in [
            "ret-",
            "ret-XYZ",
            "ret-0123456789ABCDEF",
            "ret-0123456789abcdef0",
            "ret-0123456789abcdef,x",
            "ret-0123456789abcde",
            "hf-0123456789abcdef",
        ] {
            assert!(!is_return_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn return_requests_complete_when_every_machine_is_terminated_or_gone() {
        let record = r#"[{"machineId":"i-1","name":"ip-i-1.ec2.internal"},{"machineId":"i-9","name":"ip-i-9.ec2.internal"}]"#;
        let key = return_key("ret-1");
        let terminating = request(
            0,
            true,
            json!([m("i-1", "shutting-down", Some("Returned"))]),
            json!({key.clone(): record}),
        );
        let s = return_status("ret-1", &[terminating]).expect("known");
        assert_eq!(s.status, RequestState::Running);
        assert_eq!(s.machines[0].result, MachineOutcome::Executing);
        assert_eq!(
            s.machines[1].result,
            MachineOutcome::Succeed,
            "gone from status"
        );
        assert_eq!(s.machines[1].name, "ip-i-9.ec2.internal");

        let done = request(
            0,
            true,
            json!([m("i-1", "terminated", Some("Returned"))]),
            json!({key: record}),
        );
        let s = return_status("ret-1", &[done]).expect("known");
        assert_eq!(s.status, RequestState::Complete);
        assert!(s
            .machines
            .iter()
            .all(|m| m.result == MachineOutcome::Succeed));
        assert!(return_status("ret-2", &[]).is_none());
    }
}

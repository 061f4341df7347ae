//! Expiry of finished scheduler-owned requests. HostFactory never deletes a
//! request: one whose machines were all returned stays with `count: 0` as the
//! record of its returns. Left alone they pile up, and every list of the
//! scheduler's requests grows with them. getReturnRequests (which HostFactory
//! calls every few seconds) deletes the finished ones once they are older than
//! `finishedRetention` (hostforge.yaml, default 1 h): `count` 0, no machine
//! that is not terminated, nothing launching, the operator caught up with the
//! spec, and no return recorded within the retention (so getRequestStatus can
//! still answer recent `ret-` ids). Each delete carries the uid and
//! resourceVersion it was judged on as preconditions, so a request that
//! changed in between is left alone. Failures (e.g. no `delete` permission)
//! are logged and never fail the operation.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Preconditions};
use kube::{Api, ResourceExt};

use super::returns::record_time_of;
use super::{is_owned, return_key, RETURN_PREFIX};
use crate::api::{LaunchState, MachineRequest, MachineState};

/// Default `finishedRetention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(3600);
/// Most requests deleted by one call, so the answer is never held up long.
pub const MAX_DELETES_PER_CALL: usize = 10;

/// Whether `mr` is finished and older than `retention` at `now`.
pub fn is_expired(mr: &MachineRequest, now: Timestamp, retention: Duration) -> bool {
    if !is_owned(mr) || mr.metadata.deletion_timestamp.is_some() || mr.spec.count != 0 {
        return false;
    }
    let Some(st) = mr.status.as_ref() else {
        return false;
    };
    let settled = st.observed_generation == mr.metadata.generation
        && st.launches.iter().all(|b| b.state != LaunchState::Pending)
        && st
            .machines
            .iter()
            .all(|m| m.state == MachineState::Terminated);
    if !settled {
        return false;
    }
    let cutoff = now.as_second() - i64::try_from(retention.as_secs()).unwrap_or(i64::MAX);
    let created = mr
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second());
    let prefix = return_key(RETURN_PREFIX);
    let last_return = mr
        .annotations()
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix))
        .map(|(_, v)| record_time_of(v))
        .max();
    created.is_some_and(|c| c <= cutoff) && last_return.is_none_or(|at| at <= cutoff)
}

/// Deletes up to [`MAX_DELETES_PER_CALL`] expired requests of `requests`;
/// returns how many were deleted.
pub async fn expire(
    api: &Api<MachineRequest>,
    requests: &[MachineRequest],
    retention: Duration,
) -> usize {
    let now = Timestamp::now();
    let mut deleted = 0;
    for mr in requests
        .iter()
        .filter(|mr| is_expired(mr, now, retention))
        .take(MAX_DELETES_PER_CALL)
    {
        let name = mr.name_any();
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: mr.metadata.uid.clone(),
                resource_version: mr.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                deleted += 1;
                tracing::info!(request = %name, "finished scheduler request expired and deleted");
            }
            Err(e) => {
                tracing::warn!(request = %name, error = %e, "could not delete a finished scheduler request");
            }
        }
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfactory::{OWNER_LABEL, OWNER_VALUE};
    use serde_json::json;

    fn request(count: i32, states: &[&str], annotations: serde_json::Value) -> MachineRequest {
        let machines: Vec<_> = states
            .iter()
            .enumerate()
            .map(|(i, s)| json!({"id": format!("i-{i:017x}"), "state": s, "result": "succeed"}))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": "hf-a", "namespace": "hpc", "generation": 3,
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "labels": {OWNER_LABEL: OWNER_VALUE}, "annotations": annotations},
            "spec": {"templateRef": {"name": "compute"}, "count": count},
            "status": {"observedGeneration": 3, "machines": machines}
        }))
        .expect("request")
    }

    #[test]
    fn only_finished_requests_past_the_retention_expire() {
        let hour = Duration::from_secs(3600);
        let later: Timestamp = "2026-01-01T02:00:00Z".parse().expect("time");
        let soon: Timestamp = "2026-01-01T00:30:00Z".parse().expect("time");
        let done = request(0, &["terminated", "terminated"], json!({}));
        assert!(is_expired(&done, later, hour));
        assert!(!is_expired(&done, soon, hour), "within the retention");
        assert!(!is_expired(
            &request(1, &["running"], json!({})),
            later,
            hour
        ));
        assert!(
            !is_expired(&request(0, &["shutting-down"], json!({})), later, hour),
            "a machine still terminating"
        );
        let mut foreign = done.clone();
        foreign.metadata.labels = None;
        assert!(!is_expired(&foreign, later, hour), "not the scheduler's");
        let mut stale = done.clone();
        stale.metadata.generation = Some(4);
        assert!(!is_expired(&stale, later, hour), "the operator is behind");
        // A return recorded recently keeps the request (its ret- id is answerable).
        let at = "2026-01-01T01:45:00Z"
            .parse::<Timestamp>()
            .expect("time")
            .as_second();
        let recent = request(
            0,
            &["terminated"],
            json!({"hostforge.io/hf-ret-00000000000000aa":
                   format!(r#"{{"at":{at},"machines":[]}}"#)}),
        );
        assert!(!is_expired(&recent, later, hour));
    }
}

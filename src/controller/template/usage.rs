//! The template controller's own view of MachineRequests, for
//! `status.machinesInUse`.
//!
//! Why not the request controller's store: the two watches are separate
//! streams, so when a request change triggers its template, the other store
//! may not have seen that change yet and the count would stay stale until the
//! next unrelated reconcile. This watch updates its store before it triggers,
//! so a reconcile always counts at least what triggered it. Each stored copy
//! is slimmed to what the count reads (live machines without their details,
//! unsettled launches), so the second copy costs little memory.

use std::sync::Arc;

use futures::Stream;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, ResourceExt};

use crate::api::{LaunchState, MachineRequest, MachineTemplate};

/// A store of (slimmed) MachineRequests and the stream that fills it; the
/// stream must be polled (it is the controller's trigger) for the store to fill.
pub(super) fn watch(
    api: Api<MachineRequest>,
) -> (
    Store<MachineRequest>,
    impl Stream<Item = Result<MachineRequest, watcher::Error>> + Send + 'static,
) {
    let (reader, writer) = reflector::store();
    let stream = watcher(api, crate::controller::watch::watch_config())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .touched_objects();
    (reader, stream)
}

/// The template a request uses: the object to reconcile when the request changes.
pub(super) fn template_of(mr: MachineRequest) -> Option<ObjectRef<MachineTemplate>> {
    let namespace = mr.namespace()?;
    Some(ObjectRef::new(&mr.spec.template_ref.name).within(&namespace))
}

/// Machines all requests in `namespace` using template `template` hold: live
/// ones plus launches not settled yet, as the request controller counts them
/// against `maxMachines`.
pub(super) fn machines_in_use(
    requests: &[Arc<MachineRequest>],
    namespace: &str,
    template: &str,
) -> i32 {
    requests
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(namespace) && r.spec.template_ref.name == template
        })
        .map(|r| r.status.as_ref().map_or(0, |st| st.machines_in_use()))
        .sum()
}

/// Drops everything [`machines_in_use`] does not read.
fn slim(mr: &mut MachineRequest) {
    mr.metadata.managed_fields = None;
    mr.metadata.annotations = None;
    mr.metadata.labels = None;
    mr.spec.return_machines.clear();
    let Some(st) = mr.status.as_mut() else {
        return;
    };
    st.conditions.clear();
    st.machines.retain(|m| m.is_live());
    for m in &mut st.machines {
        m.name = None;
        m.batch = None;
        m.instance_type = None;
        m.availability_zone = None;
        m.private_ip = None;
        m.public_ip = None;
        m.launch_time = None;
        m.image_id = None;
        m.message = None;
    }
    st.launches.retain(|b| b.state == LaunchState::Pending);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn req(ns: &str, template: &str, machines: serde_json::Value) -> Arc<MachineRequest> {
        let mut mr: MachineRequest = serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": "r", "namespace": ns, "annotations": {"a": "b"},
                         "labels": {"hostforge.io/hf-ret-1": "true"}},
            "spec": {"templateRef": {"name": template}, "count": 3,
                     "returnMachines": ["i-00000000000000001"]},
            "status": {
                "machines": machines,
                "launches": [
                    {"id": "b1", "token": "t", "count": 2, "paramsDigest": "d", "state": "Pending"},
                    {"id": "b0", "token": "t", "count": 5, "paramsDigest": "d", "state": "Launched"}
                ]
            }
        }))
        .expect("valid request");
        slim(&mut mr);
        Arc::new(mr)
    }

    fn machines() -> serde_json::Value {
        json!([
            {"id": "i-1", "state": "running", "result": "succeed", "privateIp": "10.0.0.1"},
            {"id": "i-2", "state": "pending", "result": "executing"},
            {"id": "i-3", "state": "terminated", "result": "fail"},
            {"id": "i-4", "state": "shutting-down", "result": "succeed", "terminationReason": "Returned"},
            {"id": "i-5", "state": "running", "result": "succeed", "terminationReason": "ScaledDown"}
        ])
    }

    #[test]
    fn counts_live_machines_and_pending_launches_of_the_template_only() {
        let all = vec![
            req("ns", "compute", machines()),
            req("ns", "compute", json!([])),
            req("ns", "other", machines()),
            req("elsewhere", "compute", machines()),
        ];
        // 2 live + 2 pending launch, plus 2 pending launch of the empty request.
        assert_eq!(machines_in_use(&all, "ns", "compute"), 6);
        assert_eq!(machines_in_use(&all, "ns", "missing"), 0);
    }

    #[test]
    fn slimming_keeps_the_count_and_drops_details() {
        let mr = req("ns", "compute", machines());
        let st = mr.status.as_ref().expect("status");
        assert_eq!(st.machines.len(), 2);
        assert!(st.machines.iter().all(|m| m.private_ip.is_none()));
        assert_eq!(st.launches.len(), 1);
        assert!(mr.metadata.annotations.is_none());
        assert!(mr.metadata.labels.is_none());
        assert!(mr.spec.return_machines.is_empty());
        assert_eq!(st.machines_in_use(), 4);
    }

    #[test]
    fn a_request_maps_to_its_template_in_its_namespace() {
        let mr = req("ns", "compute", json!([]));
        let target = template_of((*mr).clone()).expect("mapped");
        assert_eq!(target.name, "compute");
        assert_eq!(target.namespace.as_deref(), Some("ns"));
    }
}

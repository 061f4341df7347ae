//! Which requests a template change wakes.
//!
//! The template controller rewrites `status.machinesInUse` whenever a request
//! of the template launches or gives back machines. Waking every request of
//! the template for that count made each such change cost one reconcile per
//! request: a return of 1,000 machines from 100 requests became ~100 template
//! writes, each waking the 100 requests again (measured in the HostFactory
//! bench: 153 reconciles from template changes and 250 stale-copy requeues
//! in the ten seconds of the return). The count matters to a request only
//! while it is held back by `maxMachines`, so a change of the count alone
//! wakes only requests that want more machines than they hold; any other
//! change (spec, readiness, resolved image, selections, a first sight of the
//! template) wakes them all, as before.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::api::{MachineRequest, MachineTemplate};

/// The last request-relevant digest seen of each template (one number per
/// template name; a template deleted and created again differs in its uid,
/// so it wakes every request).
#[derive(Default)]
pub struct TemplateWakes {
    seen: Mutex<HashMap<ObjectRef<MachineTemplate>, u64>>,
}

impl TemplateWakes {
    /// The requests among `requests` to reconcile for this copy of `mt`.
    pub fn wake(
        &self,
        mt: &MachineTemplate,
        requests: &[Arc<MachineRequest>],
    ) -> Vec<ObjectRef<MachineRequest>> {
        let key = ObjectRef::from_obj(mt);
        let digest = relevant_digest(mt);
        let changed = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.insert(key, digest) != Some(digest)
        };
        let (ns, name) = (mt.namespace(), mt.name_any());
        let bounded = mt.spec.max_machines.is_some();
        requests
            .iter()
            .filter(|r| r.namespace() == ns && r.spec.template_ref.name == name)
            .filter(|r| changed || (bounded && wants_more(r)))
            .map(|r| ObjectRef::from_obj(r.as_ref()))
            .collect()
    }
}

/// Whether `mr` holds fewer machines than it asks for: the only requests a
/// freed place under `maxMachines` can unblock.
fn wants_more(mr: &MachineRequest) -> bool {
    let held = mr.status.as_ref().map_or(0, |st| st.machines_in_use());
    mr.spec.count > held
}

/// A digest of everything in `mt` a request reads, that is all of it but
/// `status.machinesInUse` and the bookkeeping every write changes.
fn relevant_digest(mt: &MachineTemplate) -> u64 {
    let mut copy = mt.clone();
    copy.metadata.resource_version = None;
    copy.metadata.managed_fields = None;
    if let Some(st) = copy.status.as_mut() {
        st.machines_in_use = None;
    }
    let mut hasher = DefaultHasher::new();
    serde_json::to_string(&copy)
        .unwrap_or_default()
        .hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(max: Option<i32>, in_use: i32, ready: &str) -> MachineTemplate {
        let mut spec = json!({"image": {"id": "ami-12345678"},
                              "instanceTypes": [{"type": "t3.micro"}]});
        if let Some(max) = max {
            spec["maxMachines"] = json!(max);
        }
        serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineTemplate",
            "metadata": {"name": "t", "namespace": "ns", "resourceVersion": in_use.to_string()},
            "spec": spec,
            "status": {"machinesInUse": in_use,
                       "conditions": [{"type": "Ready", "status": ready, "reason": "R",
                                       "message": "", "lastTransitionTime": "2026-12-04T00:00:00Z"}]},
        }))
        .expect("a template")
    }

    fn request(name: &str, template: &str, count: i32, live: usize) -> Arc<MachineRequest> {
        let machines: Vec<_> = (0..live)
            .map(|i| json!({"id": format!("i-{name}{i}"), "state": "running", "result": "succeed"}))
            .collect();
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"templateRef": {"name": template}, "count": count},
                "status": {"machines": machines},
            }))
            .expect("a request"),
        )
    }

    fn names(refs: Vec<ObjectRef<MachineRequest>>) -> Vec<String> {
        refs.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn a_count_change_wakes_only_requests_held_back_by_max_machines() {
        let wakes = TemplateWakes::default();
        let requests = vec![
            request("full", "t", 2, 2),
            request("short", "t", 3, 1),
            request("other", "u", 3, 0),
        ];
        assert_eq!(
            names(wakes.wake(&template(Some(4), 3, "True"), &requests)),
            ["full", "short"],
            "the first sight wakes every request of the template"
        );
        assert_eq!(
            names(wakes.wake(&template(Some(4), 2, "True"), &requests)),
            ["short"],
            "a freed place wakes only the request that wants more"
        );
        assert_eq!(
            names(wakes.wake(&template(Some(4), 2, "False"), &requests)),
            ["full", "short"],
            "readiness is read by every request"
        );
    }

    #[test]
    fn a_count_change_wakes_nobody_without_max_machines() {
        let wakes = TemplateWakes::default();
        let requests = vec![request("short", "t", 3, 1)];
        assert_eq!(
            names(wakes.wake(&template(None, 1, "True"), &requests)),
            ["short"]
        );
        assert!(wakes.wake(&template(None, 2, "True"), &requests).is_empty());
    }
}

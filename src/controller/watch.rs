//! Controllers over watches whose initial sync can be awaited from anywhere.
//!
//! kube-runtime's `Store::wait_until_ready` wakes only the last task that
//! polled it (it is a oneshot underneath), and the controller itself already
//! waits on it; a second waiter (readiness, the sweep) could hang or starve
//! the controller. So the watch stream reports its first complete listing on
//! a `tokio::sync::watch` channel instead, which any number of tasks can await.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::api::{MachineRequest, MachineTemplate};

/// Becomes true once the watch has listed every object the first time.
#[derive(Debug, Clone)]
pub struct Synced(watch::Receiver<bool>);

impl Synced {
    /// Waits for the first complete listing; false if the watch is gone.
    pub async fn wait(&self) -> bool {
        let mut rx = self.0.clone();
        let synced = rx.wait_for(|synced| *synced).await.is_ok();
        synced
    }

    /// A flag that is already set, for tests and tools without a watch.
    pub fn already() -> Synced {
        let (_tx, rx) = watch::channel(true);
        Synced(rx)
    }
}

/// The prefix of HostFactory's return-record labels and annotations
/// (`hostforge.io/hf-ret-…`) and of its other marks: the plugin reads them
/// through its own calls, never from the operator's caches.
const HF_PREFIX: &str = "hostforge.io/hf-";

/// Objects per page of a watch's listing. The first listing (and every
/// relist) reads whole objects before they are slimmed, and a list served at
/// "any" resourceVersion comes from the apiserver's cache in one piece,
/// whatever the limit: a thousand requests of 300 KB each made a 300 MB
/// answer. So listings are paged, a few MB at a time, and read consistently
/// (which is what lets the apiserver honour the limit).
pub const LIST_PAGE: u32 = 16;

/// The watcher configuration of every cached watch: paged listings.
pub fn watch_config() -> watcher::Config {
    watcher::Config::default().page_size(LIST_PAGE)
}

/// What the controllers' caches drop from each object before storing it.
///
/// The caches hold every object of the watched namespaces for the operator's
/// lifetime, and anyone who may create a MachineRequest decides how large it
/// is: managedFields (which repeat every key of every list), annotations (up
/// to 256 KiB each, HostFactory's return records among them), labels and
/// `spec.returnMachines` entries (up to 2000) that name no machine of the
/// request. Around a thousand such requests filled the operator's memory
/// limit, so each cached copy keeps only what a controller reads.
pub trait Slim {
    /// Drops what no controller reads.
    fn slim(&mut self);
}

/// No controller reads annotations (they are left to users and the
/// HostFactory plugin), managedFields, or HostFactory's labels.
fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|k, _| !k.starts_with(HF_PREFIX));
    }
}

impl Slim for MachineTemplate {
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
    }
}

impl Slim for MachineRequest {
    /// Also drops the `returnMachines` ids its status does not list: the plan
    /// ignores them (only machines of the request are returned), and a
    /// machine status gains later brings a new copy with the id kept.
    fn slim(&mut self) {
        slim_meta(&mut self.metadata);
        if self.spec.return_machines.is_empty() {
            return;
        }
        let listed: BTreeSet<&str> = self
            .status
            .iter()
            .flat_map(|st| st.machines.iter().map(|m| m.id.as_str()))
            .collect();
        let kept: Vec<String> = self
            .spec
            .return_machines
            .iter()
            .filter(|id| listed.contains(id.as_str()))
            .cloned()
            .collect();
        self.spec.return_machines = kept;
    }
}

/// A controller over `api` (every change, status included, triggers it), the
/// store its watch fills, and the signal of that watch's first sync.
pub fn controller<K>(api: Api<K>) -> (Controller<K>, Store<K>, Synced)
where
    K: Resource + Slim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin,
{
    let (reader, writer) = reflector::store();
    let (tx, rx) = watch::channel(false);
    let stream = watcher(api, watch_config())
        .default_backoff()
        .modify(Slim::slim)
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(watcher::Event::InitDone) = event {
                let _ = tx.send(true);
            }
        })
        .applied_objects();
    (
        Controller::for_stream(stream, reader.clone()),
        reader,
        Synced(rx),
    )
}

/// A watch of `api` that fills a store before it yields each object, for a
/// controller that is triggered by these objects and reads them from the same
/// store: the trigger can then never run ahead of what the reconcile reads.
pub fn reflected<K>(
    api: Api<K>,
) -> (
    Store<K>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource + Slim + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watch_config())
        .default_backoff()
        .modify(Slim::slim)
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_cached_request_keeps_only_what_controllers_read() {
        let mut mr: MachineRequest = serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
            "metadata": {
                "name": "r", "namespace": "ns",
                "labels": {"hostforge.io/owner": "hostfactory", "hostforge.io/hf-ret-0123456789abcdef": "true"},
                "annotations": {"hostforge.io/hf-ret-0123456789abcdef": "x".repeat(200_000),
                                "kubectl.kubernetes.io/last-applied-configuration": "{}",
                                "team": "hpc"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                                   "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}}],
            },
            "spec": {"templateRef": {"name": "t"}, "count": 0,
                     "returnMachines": ["i-00000000000000001", "i-0123456789abcdef0", "i-00000000000000002"]},
            "status": {"machines": [{"id": "i-0123456789abcdef0", "state": "running", "result": "succeed"}]},
        }))
        .expect("a request");
        let spec = mr.spec.clone();
        mr.slim();
        assert_eq!(mr.metadata.managed_fields, None);
        assert_eq!(mr.metadata.annotations, None);
        let labels: Vec<&String> = mr.metadata.labels.iter().flat_map(|l| l.keys()).collect();
        assert_eq!(labels, ["hostforge.io/owner"]);
        assert_eq!(mr.spec.return_machines, ["i-0123456789abcdef0"]);
        assert_eq!(
            (mr.spec.count, &mr.spec.template_ref),
            (spec.count, &spec.template_ref)
        );
        assert!(mr.status.is_some_and(|st| st.machines.len() == 1));
    }

    #[test]
    fn a_cached_template_drops_annotations_and_managed_fields() {
        let mut mt: MachineTemplate = serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineTemplate",
            "metadata": {"name": "t", "namespace": "ns",
                         "annotations": {"hostforge.io/hf-template-id": "compute"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"image": {"id": "ami-12345678"}, "instanceTypes": [{"type": "t3.micro"}]},
        }))
        .expect("a template");
        let spec = mt.spec.clone();
        mt.slim();
        assert_eq!(mt.metadata.managed_fields, None);
        assert_eq!(mt.metadata.annotations, None);
        assert_eq!(mt.spec, spec);
    }
}

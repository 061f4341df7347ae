//! Controllers over watches whose initial sync can be awaited from anywhere.
//!
//! kube-runtime's `Store::wait_until_ready` wakes only the last task that
//! polled it (it is a oneshot underneath), and the controller itself already
//! waits on it; a second waiter (readiness, the sweep) could hang or starve
//! the controller. So the watch stream reports its first complete listing on
//! a `tokio::sync::watch` channel instead, which any number of tasks can await.

use std::fmt::Debug;
use std::hash::Hash;

use futures::StreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::watch;

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

/// Drops what no controller reads from the cached copies: managedFields and
/// kubectl's last-applied copy of the spec. At thousands of requests they are
/// a good part of the store's memory.
fn slim<K: Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A controller over `api` (every change, status included, triggers it), the
/// store its watch fills, and the signal of that watch's first sync.
pub fn controller<K>(api: Api<K>) -> (Controller<K>, Store<K>, Synced)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin,
{
    let (reader, writer) = reflector::store();
    let (tx, rx) = watch::channel(false);
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
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
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Debug + Unpin,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(slim)
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

//! Namespaces' labels for tenant policies with a `namespaceSelector`: read
//! lazily (one GET per namespace) and kept for [`LABELS_TTL`], so templates
//! of one namespace cost one read, and a label change is seen within it.
//! The request gate reads the last labels known (it cannot wait on the
//! apiserver); the template controller refreshes them before a template is
//! Ready, so a request never passes on labels nobody read.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// How long a namespace's labels are reused.
pub const LABELS_TTL: Duration = Duration::from_secs(30);

type Labels = BTreeMap<String, String>;

fn cache() -> &'static Mutex<HashMap<String, (Labels, Instant)>> {
    static CACHE: OnceLock<Mutex<HashMap<String, (Labels, Instant)>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// The namespace's labels, from the cache when younger than [`LABELS_TTL`],
/// else read from the apiserver. A namespace that does not exist has none.
pub async fn labels(client: &Client, namespace: &str) -> Result<Labels, kube::Error> {
    if let Ok(map) = cache().lock() {
        if let Some((labels, at)) = map.get(namespace) {
            if at.elapsed() < LABELS_TTL {
                return Ok(labels.clone());
            }
        }
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get_opt(namespace)
        .await?;
    let labels = ns.and_then(|ns| ns.metadata.labels).unwrap_or_default();
    if let Ok(mut map) = cache().lock() {
        map.insert(namespace.to_string(), (labels.clone(), Instant::now()));
    }
    Ok(labels)
}

/// The labels last read for the namespace, whatever their age (None: never
/// read by this process).
pub fn last_known(namespace: &str) -> Option<Labels> {
    cache()
        .lock()
        .ok()
        .and_then(|map| map.get(namespace).map(|(labels, _)| labels.clone()))
}

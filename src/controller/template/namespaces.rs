//! Namespaces' labels for tenant policies with a `namespaceSelector`: read
//! lazily (one GET per namespace) and kept for [`LABELS_TTL`], so templates
//! of one namespace cost one read, and a label change is seen within it.
//! The request gate reads the last labels known (it cannot wait on the
//! apiserver); the template controller refreshes them before a template is
//! Ready, so a request never passes on labels nobody read.
//!
//! The cache lives in the controllers' [`Context`](crate::controller::Context)
//! like the other caches, so each operator instance (and each test) has its
//! own.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client};

/// How long a namespace's labels are reused.
pub const LABELS_TTL: Duration = Duration::from_secs(30);

/// A namespace's labels.
pub type Labels = BTreeMap<String, String>;

/// The labels read per namespace, and when.
#[derive(Debug, Default)]
pub struct NamespaceLabels {
    read: Mutex<HashMap<String, (Labels, Instant)>>,
}

impl NamespaceLabels {
    /// The namespace's labels, from the cache when younger than
    /// [`LABELS_TTL`], else read from the apiserver. A namespace that does
    /// not exist has none.
    pub async fn labels(&self, client: &Client, namespace: &str) -> Result<Labels, kube::Error> {
        if let Some(labels) = self.fresh(namespace, Instant::now()) {
            return Ok(labels);
        }
        let ns = Api::<Namespace>::all(client.clone())
            .get_opt(namespace)
            .await?;
        let labels = ns.and_then(|ns| ns.metadata.labels).unwrap_or_default();
        self.remember(namespace, labels.clone(), Instant::now());
        Ok(labels)
    }

    /// The labels last read for the namespace, whatever their age (None:
    /// never read by this operator).
    pub fn last_known(&self, namespace: &str) -> Option<Labels> {
        self.read
            .lock()
            .ok()
            .and_then(|map| map.get(namespace).map(|(labels, _)| labels.clone()))
    }

    /// The labels read for the namespace if they are younger than
    /// [`LABELS_TTL`] at `now`.
    fn fresh(&self, namespace: &str, now: Instant) -> Option<Labels> {
        let map = self.read.lock().ok()?;
        let (labels, at) = map.get(namespace)?;
        (now.saturating_duration_since(*at) < LABELS_TTL).then(|| labels.clone())
    }

    /// Records the labels read for the namespace at `at`.
    fn remember(&self, namespace: &str, labels: Labels, at: Instant) {
        if let Ok(mut map) = self.read.lock() {
            map.insert(namespace.to_string(), (labels, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gold() -> Labels {
        [("tenant".to_string(), "gold".to_string())].into()
    }

    #[test]
    fn labels_are_reused_within_the_ttl_and_remembered_after_it() {
        let cache = NamespaceLabels::default();
        let t0 = Instant::now();
        assert_eq!(cache.fresh("a", t0), None);
        assert_eq!(cache.last_known("a"), None);
        cache.remember("a", gold(), t0);
        assert_eq!(cache.fresh("a", t0 + LABELS_TTL / 2), Some(gold()));
        // Expired: read again, but the gate still knows the last answer.
        assert_eq!(cache.fresh("a", t0 + LABELS_TTL), None);
        assert_eq!(cache.last_known("a"), Some(gold()));
        assert_eq!(cache.last_known("b"), None);
    }

    #[test]
    fn each_context_has_its_own_cache() {
        let one = NamespaceLabels::default();
        let other = NamespaceLabels::default();
        one.remember("a", gold(), Instant::now());
        assert_eq!(other.last_known("a"), None);
        assert_eq!(other.fresh("a", Instant::now()), None);
    }
}

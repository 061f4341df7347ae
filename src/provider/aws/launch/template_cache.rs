//! The fleet path's launch templates, one per content: every batch (or
//! coalesced group) whose template data would be the same launches from one
//! template this process created, instead of creating and deleting one per
//! call (two mutating calls saved per CreateFleet).
//!
//! Only templates this process created are ever reused, and by id: a template
//! name can be taken or replaced by anyone in the account, an id cannot, and
//! version 1 of a template never changes
//! (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/manage-launch-template-versions.html>).
//! So nothing another principal creates is ever launched from, and a restarted
//! operator starts with an empty cache and creates its own templates again;
//! the collector deletes the old ones once they are older than the grace
//! period and no longer kept here.
//!
//! An entry is kept while a call is using it or it was used within the idle
//! time the collector asks with (its grace period); past that it is forgotten
//! here first, so it is never deleted while a call may still launch from it.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::provider::aws::launch_templates::{
    BATCH_TAG, GROUP_TAG, NAME_TAG, REQUEST_TAG, REQUEST_UID_TAG,
};
use crate::provider::{InstanceTypeChoice, LaunchCapacity, LaunchSpec};

/// The tags that differ between the batches sharing a template: they go on
/// the instances through CreateFleet's own tag specifications, never into the
/// template.
const PER_LAUNCH_TAGS: [&str; 5] = [REQUEST_TAG, REQUEST_UID_TAG, BATCH_TAG, NAME_TAG, GROUP_TAG];

/// What a template's content depends on: the spec with everything the fleet
/// call itself carries cleared (batch, token, count, types, subnets, zone,
/// capacity options, per-launch tags), and the namespace whose operator
/// collects it. A spec field added later stays in the key, so two specs share
/// a template only when the template would be the same.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// The requests' namespace (from the request or launch-group tag), for
    /// a namespaced operator's collector.
    pub namespace: String,
    /// The template's content, as a spec.
    pub content: LaunchSpec,
}

impl Key {
    /// The key of `spec`'s template.
    pub fn of(spec: &LaunchSpec) -> Key {
        // A batch sent alone names its request, a coalesced group's call its
        // LaunchGroup: both `<namespace>/<name>`.
        let namespace = [REQUEST_TAG, GROUP_TAG]
            .iter()
            .find_map(|t| spec.tags.get(*t))
            .and_then(|r| r.split_once('/'))
            .map(|(ns, _)| ns.to_string())
            .unwrap_or_default();
        let mut content = spec.clone();
        content.batch_id.clear();
        content.client_token.clear();
        content.count = 0;
        content.instance_types = Vec::<InstanceTypeChoice>::new();
        content.subnet_ids.clear();
        content.availability_zone = None;
        content.capacity = LaunchCapacity::on_demand();
        for tag in PER_LAUNCH_TAGS {
            content.tags.remove(tag);
        }
        Key { namespace, content }
    }
}

/// One template this process created.
#[derive(Debug)]
struct Entry {
    id: String,
    created: Instant,
    last_used: Instant,
    in_flight: usize,
}

/// The templates this process created and may launch from, by content.
#[derive(Debug, Default)]
pub(crate) struct TemplateCache {
    entries: Mutex<HashMap<Key, Entry>>,
    /// Held while a template is created, so two launches of one content
    /// never both create one.
    creating: tokio::sync::Mutex<()>,
}

/// A template in use by one call: kept (never forgotten, so never collected)
/// until dropped.
#[derive(Debug)]
pub(crate) struct Lease<'a> {
    cache: &'a TemplateCache,
    key: Key,
    /// The template's id, what CreateFleet names.
    pub id: String,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut entries = self.cache.lock();
        if let Some(e) = entries.get_mut(&self.key).filter(|e| e.id == self.id) {
            e.in_flight = e.in_flight.saturating_sub(1);
            e.last_used = Instant::now();
        }
    }
}

impl TemplateCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        // A poisoned map only means a panic elsewhere held the lock; the
        // entries themselves are always whole.
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The template for `key` if this process made one, leased for a call.
    pub fn lease(&self, key: &Key) -> Option<Lease<'_>> {
        let mut entries = self.lock();
        let e = entries.get_mut(key)?;
        e.in_flight += 1;
        e.last_used = Instant::now();
        Some(Lease {
            cache: self,
            key: key.clone(),
            id: e.id.clone(),
        })
    }

    /// The template for `key`, created with `create` (which returns the new
    /// template's id) when this process has none. Creations are one at a
    /// time, and a launch that waited for one uses what it made.
    pub async fn lease_or_create<F, Fut, E>(&self, key: &Key, create: F) -> Result<Lease<'_>, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<String, E>>,
    {
        if let Some(lease) = self.lease(key) {
            return Ok(lease);
        }
        let _one_at_a_time = self.creating.lock().await;
        if let Some(lease) = self.lease(key) {
            return Ok(lease);
        }
        let id = create().await?;
        let now = Instant::now();
        self.lock().insert(
            key.clone(),
            Entry {
                id: id.clone(),
                created: now,
                last_used: now,
                in_flight: 1,
            },
        );
        Ok(Lease {
            cache: self,
            key: key.clone(),
            id,
        })
    }

    /// Forgets the leased template when EC2 says it does not exist and it is
    /// older than `settled` (younger, it is EC2's eventual consistency and
    /// will show): someone deleted it, and the next launch makes a new one.
    pub fn forget_missing(&self, lease: &Lease<'_>, settled: Duration) -> bool {
        let mut entries = self.lock();
        let stale = entries
            .get(&lease.key)
            .is_some_and(|e| e.id == lease.id && e.created.elapsed() >= settled);
        if stale {
            entries.remove(&lease.key);
        }
        stale
    }

    /// The ids of the templates still kept: in use by a call, or used within
    /// `idle` of `now`. The others are forgotten here (a later launch creates
    /// a new template), so the collector may delete them.
    pub fn keep(&self, now: Instant, idle: Duration) -> HashSet<String> {
        let mut entries = self.lock();
        entries.retain(|_, e| e.in_flight > 0 || now.saturating_duration_since(e.last_used) < idle);
        entries.values().map(|e| e.id.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::aws::launch::fixtures::spec;

    fn tagged(request: &str, uid: &str, batch: &str) -> LaunchSpec {
        let mut s = spec();
        s.tags.insert(REQUEST_TAG.into(), request.into());
        s.tags.insert(REQUEST_UID_TAG.into(), uid.into());
        s.tags.insert(BATCH_TAG.into(), batch.into());
        s.tags.insert(NAME_TAG.into(), request.into());
        s
    }

    #[test]
    fn batches_differing_only_in_what_the_fleet_call_carries_share_a_key() {
        let a = tagged("ns/a", "u1", "b-1");
        let mut b = tagged("ns/b", "u2", "b-7");
        b.count = 40;
        b.client_token = "other".into();
        b.subnet_ids = vec!["subnet-z".into()];
        b.availability_zone = Some("us-east-1c".into());
        b.capacity.on_demand_percent = 0;
        b.instance_types.truncate(1);
        b.tags.insert(GROUP_TAG.into(), "ns/lg-1".into());
        assert_eq!(Key::of(&a), Key::of(&b));
        assert_eq!(Key::of(&a).namespace, "ns");

        // A coalesced group's call carries no request tag, only its group's:
        // same namespace, same template (a namespaced operator collects it).
        let mut group = a.clone();
        for tag in [REQUEST_TAG, REQUEST_UID_TAG, BATCH_TAG] {
            group.tags.remove(tag);
        }
        group.tags.insert(GROUP_TAG.into(), "ns/lg-2".into());
        assert_eq!(Key::of(&group), Key::of(&a));

        // Anything the template holds splits the key.
        let mut user_data = a.clone();
        user_data.user_data = Some(b"#!/bin/sh\necho other\n".to_vec());
        let mut image = a.clone();
        image.image_id = "ami-other".into();
        let mut tag = a.clone();
        tag.tags.insert("team".into(), "other".into());
        let other_ns = tagged("other/a", "u1", "b-1");
        for other in [user_data, image, tag, other_ns] {
            assert_ne!(Key::of(&a), Key::of(&other), "{other:?}");
        }
    }

    #[tokio::test]
    async fn one_template_per_key_created_once_and_kept_while_used() {
        let cache = TemplateCache::default();
        let key = Key::of(&tagged("ns/a", "u1", "b-1"));
        let created = std::sync::atomic::AtomicUsize::new(0);
        let create = || async {
            created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, ()>("lt-1".to_string())
        };
        let first = cache.lease_or_create(&key, create).await.expect("created");
        let second = cache
            .lease_or_create(&key, || async { Ok::<_, ()>("lt-2".to_string()) })
            .await
            .expect("leased");
        assert_eq!((first.id.as_str(), second.id.as_str()), ("lt-1", "lt-1"));
        assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 1);

        // In use: kept however long ago it was last used.
        let later = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            cache.keep(later, Duration::from_secs(60)),
            ["lt-1".to_string()].into()
        );
        drop(first);
        drop(second);
        // Used just now: kept; idle past the limit: forgotten, then made anew.
        assert_eq!(cache.keep(Instant::now(), Duration::from_secs(60)).len(), 1);
        assert!(cache.keep(later, Duration::from_secs(60)).is_empty());
        assert!(cache.lease(&key).is_none());
        let again = cache
            .lease_or_create(&key, || async { Ok::<_, ()>("lt-3".to_string()) })
            .await
            .expect("created again");
        assert_eq!(again.id, "lt-3");
    }

    #[tokio::test]
    async fn a_failed_creation_caches_nothing_and_a_missing_template_is_forgotten_once_settled() {
        let cache = TemplateCache::default();
        let key = Key::of(&tagged("ns/a", "u1", "b-1"));
        let failed = cache
            .lease_or_create(&key, || async { Err::<String, _>("quota") })
            .await;
        assert_eq!(failed.err(), Some("quota"));
        assert!(cache.lease(&key).is_none());

        let lease = cache
            .lease_or_create(&key, || async { Ok::<_, ()>("lt-1".to_string()) })
            .await
            .expect("created");
        assert!(
            !cache.forget_missing(&lease, Duration::from_secs(3600)),
            "young: EC2's lag"
        );
        assert!(cache.lease(&key).is_some());
        assert!(cache.forget_missing(&lease, Duration::ZERO));
        assert!(cache.lease(&key).is_none());
        drop(lease);
        assert!(cache
            .keep(Instant::now(), Duration::from_secs(60))
            .is_empty());
    }
}

//! The ClientToken registry: what EC2 remembers of a launch so that a
//! re-send with the same token returns the first answer instead of
//! launching again.
//!
//! Models <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>:
//! same token and same parameters → the original result; same token, other
//! parameters → `IdempotentParameterMismatch`; a RunInstances token in
//! another Region **or Availability Zone** is another request (so it
//! launches again); the token of a terminated instance →
//! `IdempotentInstanceTerminated` (errors-overview.html).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use hyper::header::HeaderMap;

use super::upstream::own_call;
use crate::forwarder::Shared;

/// A launch as EC2 keys its token: action, Region, token and (RunInstances
/// only) Availability Zone.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub(super) struct Key {
    pub(super) action: String,
    pub(super) region: String,
    pub(super) token: String,
    pub(super) zone: String,
}

/// The first answer to a token.
#[derive(Clone, Debug)]
pub(super) struct Entry {
    /// The canonical parameters it was sent with: every decoded form field
    /// (the signature, date and SDK headers are not in the body).
    pub(super) params: BTreeMap<String, String>,
    /// The 200 answer as sent to the client.
    pub(super) body: Bytes,
    /// The instances it launched.
    pub(super) instance_ids: Vec<String>,
}

/// What the registry says about a launch call.
pub(super) enum Verdict {
    /// First time under this key: forward it.
    New,
    /// Same parameters: answer the first answer again.
    Replay(Entry),
    /// Other parameters under a known token.
    Mismatch,
}

/// Every token seen, with the caches zone resolution needs.
#[derive(Default)]
pub(in crate::forwarder) struct Registry {
    entries: HashMap<Key, Entry>,
    locks: HashMap<Key, Arc<tokio::sync::Mutex<()>>>,
    subnet_zones: HashMap<(String, String), String>,
    region_zones: HashMap<String, Vec<String>>,
}

impl Registry {
    /// The lock serializing calls under one key, so a retry arriving while
    /// the first call is still in moto waits for its answer and replays it,
    /// as EC2 does not launch twice for one token.
    pub(super) fn lock_for(&mut self, key: &Key) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.entry(key.clone()).or_default().clone()
    }

    pub(super) fn check(&self, key: &Key, params: &BTreeMap<String, String>) -> Verdict {
        match self.entries.get(key) {
            None => Verdict::New,
            Some(entry) if &entry.params == params => Verdict::Replay(entry.clone()),
            Some(_) => Verdict::Mismatch,
        }
    }

    pub(super) fn register(&mut self, key: Key, entry: Entry) {
        self.entries.entry(key).or_insert(entry);
    }
}

/// Where a RunInstances lands: the zone of its subnet, its placement, or
/// (neither given) one the model draws, as EC2 picks one per call. The bool
/// says the zone was drawn (and must be sent to moto as the placement).
pub(super) async fn zone_of(
    shared: &Shared,
    headers: &HeaderMap,
    region: &str,
    params: &BTreeMap<String, String>,
) -> Result<(String, bool), String> {
    let subnet = params
        .get("SubnetId")
        .or_else(|| params.get("NetworkInterface.1.SubnetId"));
    if let Some(subnet) = subnet {
        let cache_key = (region.to_string(), subnet.clone());
        if let Some(zone) = shared.lock().model.registry.subnet_zones.get(&cache_key) {
            return Ok((zone.clone(), false));
        }
        let answer = own_call(
            shared,
            headers,
            "DescribeSubnets",
            &[("SubnetId.1".to_string(), subnet.clone())],
        )
        .await?;
        // An unknown subnet: moto refuses the launch itself.
        let zone = answer
            .document()
            .and_then(|d| d.root.text_at(&["subnetSet", "item", "availabilityZone"]))
            .unwrap_or_default();
        if !zone.is_empty() {
            shared
                .lock()
                .model
                .registry
                .subnet_zones
                .insert(cache_key, zone.clone());
        }
        return Ok((zone, false));
    }
    if let Some(zone) = params.get("Placement.AvailabilityZone") {
        return Ok((zone.clone(), false));
    }
    let cached = shared
        .lock()
        .model
        .registry
        .region_zones
        .get(region)
        .cloned();
    let zones = match cached {
        Some(zones) => zones,
        None => {
            let answer = own_call(shared, headers, "DescribeAvailabilityZones", &[]).await?;
            let zones: Vec<String> = answer
                .document()
                .and_then(|d| {
                    d.root.child("availabilityZoneInfo").map(|set| {
                        set.elements()
                            .filter_map(|item| item.text_at(&["zoneName"]))
                            .collect()
                    })
                })
                .unwrap_or_default();
            shared
                .lock()
                .model
                .registry
                .region_zones
                .insert(region.to_string(), zones.clone());
            zones
        }
    };
    if zones.is_empty() {
        return Ok((String::new(), false));
    }
    let mut state = shared.lock();
    let index = state.model.rng.usize(0..zones.len());
    Ok((zones[index].clone(), true))
}

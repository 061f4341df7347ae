//! What the cloud last said about each machine, shared by all requests, and the
//! one poll loop that keeps it fresh.
//!
//! Reconciles never describe machines themselves: they tell the tracker which
//! of their machines are changing (launching, terminating), and one loop
//! describes all of those in one batched call per provider per poll interval,
//! records the answers, and wakes the requests whose machines changed. With
//! nothing changing, the loop makes no call at all; the periodic sweep
//! ([`super::gc`]) covers the rest.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, warn};

use crate::api::MachineRequest;
use crate::metrics::Metrics;
use crate::provider::registry::ProviderRegistry;
use crate::provider::{Machine, MachineState};

/// The shared observations and the requests waiting on them.
pub struct Tracker {
    state: Mutex<State>,
    wake: mpsc::UnboundedSender<ObjectRef<MachineRequest>>,
}

#[derive(Default)]
struct State {
    /// Latest answer of the cloud per instance id.
    observed: HashMap<String, Machine>,
    /// Per request: its provider and the ids to describe every poll.
    watching: HashMap<ObjectRef<MachineRequest>, (String, Vec<String>)>,
    /// Per request uid: machines the sweep found tagged for it but missing from
    /// its status (to adopt).
    unlisted: HashMap<String, BTreeMap<String, Machine>>,
}

impl Tracker {
    /// A tracker and the stream of requests it wakes (feed it to the request
    /// controller's `reconcile_on`).
    pub fn new() -> (
        Arc<Tracker>,
        mpsc::UnboundedReceiver<ObjectRef<MachineRequest>>,
    ) {
        let (tx, rx) = mpsc::unbounded();
        (
            Arc::new(Tracker {
                state: Mutex::new(State::default()),
                wake: tx,
            }),
            rx,
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest observation of `id`, if any.
    pub fn observed(&self, id: &str) -> Option<Machine> {
        self.lock().observed.get(id).cloned()
    }

    /// Stores observations; returns the ids whose state, host name or addresses
    /// differ from the previous observation (or that are new).
    pub fn record(&self, machines: impl IntoIterator<Item = Machine>) -> Vec<String> {
        let mut state = self.lock();
        let mut changed = Vec::new();
        for m in machines {
            let differs = state.observed.get(&m.id).is_none_or(|old| {
                old.state != m.state
                    || old.private_dns_name != m.private_dns_name
                    || old.private_ip != m.private_ip
                    || old.public_ip != m.public_ip
            });
            if differs {
                changed.push(m.id.clone());
            }
            state.observed.insert(m.id.clone(), m);
        }
        changed
    }

    /// Overrides the observed state of `ids` after a call whose answer implies
    /// it (a terminate the cloud accepted reads as shutting-down), so an older
    /// observation does not bring a stale state back.
    pub fn set_state(&self, ids: &BTreeSet<String>, state: MachineState) {
        let mut guard = self.lock();
        for id in ids {
            if let Some(m) = guard.observed.get_mut(id) {
                if !m.state.is_terminating() || state == MachineState::Terminated {
                    m.state = state;
                }
            }
        }
    }

    /// Sets the ids of `request` to describe on every poll (empty: none).
    pub fn watch(&self, request: ObjectRef<MachineRequest>, provider: &str, ids: Vec<String>) {
        let mut state = self.lock();
        if ids.is_empty() {
            state.watching.remove(&request);
        } else {
            state.watching.insert(request, (provider.to_string(), ids));
        }
    }

    /// Drops everything about `request` and its machines `ids` (it is gone).
    pub fn forget(&self, request: &ObjectRef<MachineRequest>, uid: &str, ids: &[String]) {
        let mut state = self.lock();
        state.watching.remove(request);
        state.unlisted.remove(uid);
        for id in ids {
            state.observed.remove(id);
        }
    }

    /// Drops observations of machines no request lists any more.
    pub fn forget_machines(&self, ids: &[String]) {
        let mut state = self.lock();
        for id in ids {
            state.observed.remove(id);
        }
    }

    /// Remembers a machine tagged for the request `uid` that its status does not
    /// list, for that request's next reconcile to adopt.
    pub fn add_unlisted(&self, uid: &str, machine: Machine) {
        self.lock()
            .unlisted
            .entry(uid.to_string())
            .or_default()
            .insert(machine.id.clone(), machine);
    }

    /// Takes the machines waiting to be adopted by request `uid`.
    pub fn take_unlisted(&self, uid: &str) -> Vec<Machine> {
        self.lock()
            .unlisted
            .remove(uid)
            .map(|m| m.into_values().collect())
            .unwrap_or_default()
    }

    /// Queues a reconcile of `request`.
    pub fn wake(&self, request: ObjectRef<MachineRequest>) {
        // The receiver only goes away when the controller stops.
        let _ = self.wake.unbounded_send(request);
    }

    /// The watched ids, merged per provider.
    fn watched_ids(&self) -> BTreeMap<String, BTreeSet<String>> {
        let state = self.lock();
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (provider, ids) in state.watching.values() {
            out.entry(provider.clone())
                .or_default()
                .extend(ids.iter().cloned());
        }
        out
    }

    /// The watched requests that listed any of `ids`.
    fn watchers_of(&self, ids: &BTreeSet<String>) -> Vec<ObjectRef<MachineRequest>> {
        self.lock()
            .watching
            .iter()
            .filter(|(_, (_, watched))| watched.iter().any(|id| ids.contains(id)))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// One poll: one batched describe per provider of every watched id, then a
    /// wake-up for each request whose machines changed. Returns the number of
    /// providers described.
    pub async fn poll_once(&self, providers: &ProviderRegistry, metrics: &Metrics) -> usize {
        let mut polled = 0;
        for (provider_name, ids) in self.watched_ids() {
            let Some(provider) = providers.get(&provider_name) else {
                continue;
            };
            let ids: Vec<String> = ids.into_iter().collect();
            polled += 1;
            metrics.poll(&provider_name);
            match provider.describe_machines(&ids).await {
                Ok(machines) => {
                    let changed: BTreeSet<String> = self.record(machines).into_iter().collect();
                    if !changed.is_empty() {
                        debug!(provider = %provider_name, changed = changed.len(), "machines changed");
                        for request in self.watchers_of(&changed) {
                            self.wake(request);
                        }
                    }
                }
                Err(err) => {
                    warn!(provider = %provider_name, error = %err, "polling machines failed")
                }
            }
        }
        polled
    }
}

/// Polls every `interval` until `shutdown` resolves.
pub async fn run_poller(
    tracker: Arc<Tracker>,
    providers: Arc<ProviderRegistry>,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    every(interval, shutdown, || async {
        tracker.poll_once(&providers, &metrics).await;
    })
    .await;
}

/// Runs `tick` every `interval` (the first at once; a slow tick delays the
/// next instead of piling up) until `shutdown` resolves.
pub(super) async fn every<F, Fut>(
    interval: Duration,
    shutdown: impl Future<Output = ()>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let ticks = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            tick().await;
        }
    };
    tokio::select! {
        _ = ticks => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::CapacityType;
    use futures::StreamExt;

    fn machine(id: &str, state: MachineState) -> Machine {
        Machine {
            id: id.into(),
            private_dns_name: None,
            state,
            state_reason: None,
            instance_type: None,
            availability_zone: None,
            subnet_id: None,
            private_ip: None,
            public_ip: None,
            launch_time: None,
            capacity_type: CapacityType::OnDemand,
            image_id: None,
            tags: BTreeMap::new(),
        }
    }

    #[tokio::test]
    async fn records_changes_merges_watches_and_wakes_watchers() {
        let (tracker, mut woken) = Tracker::new();
        assert_eq!(
            tracker.record([machine("i-1", MachineState::Pending)]),
            ["i-1"]
        );
        assert!(tracker
            .record([machine("i-1", MachineState::Pending)])
            .is_empty());
        assert_eq!(
            tracker.record([machine("i-1", MachineState::Running)]),
            ["i-1"]
        );

        let a = ObjectRef::<MachineRequest>::new("a").within("ns");
        let b = ObjectRef::<MachineRequest>::new("b").within("ns");
        tracker.watch(a.clone(), "p", vec!["i-1".into(), "i-2".into()]);
        tracker.watch(b.clone(), "p", vec!["i-3".into()]);
        let watched = tracker.watched_ids();
        assert_eq!(watched["p"].len(), 3);
        let ids: BTreeSet<String> = ["i-2".to_string()].into();
        assert_eq!(tracker.watchers_of(&ids), vec![a.clone()]);
        tracker.watch(b.clone(), "p", vec![]);
        assert_eq!(tracker.watched_ids()["p"].len(), 2);

        tracker.add_unlisted("uid-a", machine("i-9", MachineState::Running));
        assert_eq!(tracker.take_unlisted("uid-a").len(), 1);
        assert!(tracker.take_unlisted("uid-a").is_empty());

        tracker.wake(a.clone());
        assert_eq!(woken.next().await, Some(a.clone()));
        tracker.forget(&a, "uid-a", &["i-1".to_string()]);
        assert!(tracker.observed("i-1").is_none());
        assert!(tracker.watched_ids().is_empty());
    }
}

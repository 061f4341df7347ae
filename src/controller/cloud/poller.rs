//! What the cloud last said about each machine, shared by all requests, and the
//! one poll loop that keeps it fresh.
//!
//! Reconciles never describe machines themselves: they tell the tracker which
//! of their machines are changing (launching, terminating), and one loop
//! describes all of those in one batched call per provider per poll interval,
//! records the answers, and wakes the requests whose machines changed. With
//! nothing changing, the loop makes no call at all; the periodic sweep
//! ([`super::sweep`]) covers the rest.
//!
//! Machines a request starts watching (a launch just answered) do not wait
//! for the next tick: [`FIRST_LOOK`] after the first of them arrives, the loop
//! describes the machines that arrived since (one batched call for all
//! requests), so a burst of launches is seen running, or failed at once (a
//! bad volume key, a refused spot request), within a fraction of the
//! interval. The regular polls keep their interval; a first look costs one
//! call per wave of launches and covers only the new machines, so a long fill
//! of thousands of machines does not turn into back-to-back full polls.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::channel::mpsc;
use kube::runtime::reflector::ObjectRef;
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::api::MachineRequest;
use crate::metrics::Metrics;
use crate::provider::registry::ProviderRegistry;
use crate::provider::{InterruptionNotice, Machine, MachineState};

/// How long after newly watched machines arrive the poller looks at them
/// (capped at a quarter of the poll interval): long enough to gather the
/// launches of a burst into one call, short next to any poll interval.
pub const FIRST_LOOK: Duration = Duration::from_millis(500);

/// The shared observations and the requests waiting on them.
pub struct Tracker {
    state: Mutex<State>,
    wake: mpsc::UnboundedSender<ObjectRef<MachineRequest>>,
    /// Signalled when a request watches an id it did not watch before.
    fresh: Notify,
    /// Rebalance recommendations and scheduled changes from the
    /// interruption queue, until reconciles copy them into status.
    queue_events: super::interruption_queue::EventBook,
    /// What the last status-check listings found (see [`super::status_checks`]).
    status_checks: super::status_checks::StatusBook,
}

#[derive(Default)]
struct State {
    /// Latest answer of the cloud per instance id.
    observed: HashMap<String, Observed>,
    /// Per request: its provider and the ids to describe every poll.
    watching: HashMap<ObjectRef<MachineRequest>, (String, Vec<String>)>,
    /// Per request uid: machines the sweep found tagged for it but missing from
    /// its status (to adopt).
    unlisted: HashMap<String, BTreeMap<String, Machine>>,
    /// Spot interruption notices per instance id.
    notices: HashMap<String, InterruptionNotice>,
    /// Per provider: ids watched since the last poll, for the first look.
    fresh_ids: BTreeMap<String, BTreeSet<String>>,
    /// When the oldest of `fresh_ids` arrived.
    fresh_since: Option<tokio::time::Instant>,
}

/// What the tracker keeps of one observation: the machine without its tags,
/// and of those only the batch (status needs it for a machine it adopts).
/// A tag map holding even one tag costs a whole B-tree node (about 540
/// bytes): 5.4 MB at 10,000 machines (heaptrack), where an empty map costs
/// nothing.
struct Observed {
    machine: Machine,
    batch: Option<String>,
}

impl Observed {
    fn of(mut machine: Machine) -> Observed {
        let batch = machine.tags.remove(super::ownership::BATCH_TAG);
        machine.tags = BTreeMap::new();
        Observed { machine, batch }
    }

    /// The observation as a machine again, its batch tag included.
    fn machine(&self) -> Machine {
        let mut m = self.machine.clone();
        if let Some(batch) = &self.batch {
            m.tags
                .insert(super::ownership::BATCH_TAG.to_string(), batch.clone());
        }
        m
    }
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
                fresh: Notify::new(),
                queue_events: super::interruption_queue::EventBook::default(),
                status_checks: super::status_checks::StatusBook::default(),
            }),
            rx,
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the interruption queue reported about machines beyond notices
    /// and states (see [`super::interruption_queue`]).
    pub fn queue_events(&self) -> &super::interruption_queue::EventBook {
        &self.queue_events
    }

    /// What the status-check listings found (see [`super::status_checks`]).
    pub fn status_checks(&self) -> &super::status_checks::StatusBook {
        &self.status_checks
    }

    /// The latest observation of `id`, if any.
    pub fn observed(&self, id: &str) -> Option<Machine> {
        self.lock().observed.get(id).map(Observed::machine)
    }

    /// Stores observations; returns the ids whose state, host name or addresses
    /// differ from the previous observation (or that are new). Of the tags only
    /// the batch is kept (status needs it for a machine it adopts); the rest
    /// would be a copy of every held machine's tags.
    pub fn record(&self, machines: impl IntoIterator<Item = Machine>) -> Vec<String> {
        let mut state = self.lock();
        let mut changed = Vec::new();
        for m in machines {
            let differs = state.observed.get(&m.id).is_none_or(|old| {
                let old = &old.machine;
                old.state != m.state
                    || old.private_dns_name != m.private_dns_name
                    || old.private_ip != m.private_ip
                    || old.public_ip != m.public_ip
            });
            if differs {
                changed.push(m.id.clone());
            }
            state.observed.insert(m.id.clone(), Observed::of(m));
        }
        changed
    }

    /// Overrides the observed state of `ids` after a call whose answer implies
    /// it (a terminate the cloud accepted reads as shutting-down), so an older
    /// observation does not bring a stale state back.
    pub fn set_state(&self, ids: &BTreeSet<String>, state: MachineState) {
        let mut guard = self.lock();
        for id in ids {
            if let Some(Observed { machine: m, .. }) = guard.observed.get_mut(id) {
                if !m.state.is_terminating() || state == MachineState::Terminated {
                    m.state = state;
                }
            }
        }
    }

    /// Sets the ids of `request` to describe on every poll (empty: none); an
    /// id it did not watch before brings the next poll forward.
    pub fn watch(&self, request: ObjectRef<MachineRequest>, provider: &str, ids: Vec<String>) {
        let mut state = self.lock();
        if ids.is_empty() {
            state.watching.remove(&request);
            return;
        }
        let new: Vec<String> = match state.watching.get(&request) {
            Some((_, before)) => ids
                .iter()
                .filter(|id| !before.contains(id))
                .cloned()
                .collect(),
            None => ids.clone(),
        };
        state.watching.insert(request, (provider.to_string(), ids));
        self.mark_fresh(state, provider, new);
    }

    /// Adds `ids` to what `request` watches, as fresh ids: machines whose
    /// state a call just changed (a terminate the cloud accepted) are looked
    /// at by the next first look, not only once the request has written its
    /// status and Events and re-registered its watch, which under a return
    /// of 100 requests took seconds of apiserver queueing.
    pub fn watch_also<'a>(
        &self,
        request: ObjectRef<MachineRequest>,
        provider: &str,
        ids: impl IntoIterator<Item = &'a String>,
    ) {
        let mut state = self.lock();
        let entry = state
            .watching
            .entry(request)
            .or_insert_with(|| (provider.to_string(), vec![]));
        let new: Vec<String> = ids
            .into_iter()
            .filter(|id| !entry.1.contains(id))
            .cloned()
            .collect();
        entry.1.extend(new.iter().cloned());
        self.mark_fresh(state, provider, new);
    }

    /// Queues `new` ids of `provider` for the first look (and brings it
    /// forward); nothing when there are none.
    fn mark_fresh(&self, mut state: MutexGuard<'_, State>, provider: &str, new: Vec<String>) {
        if new.is_empty() {
            return;
        }
        state
            .fresh_since
            .get_or_insert_with(tokio::time::Instant::now);
        state
            .fresh_ids
            .entry(provider.to_string())
            .or_default()
            .extend(new);
        drop(state);
        self.fresh.notify_one();
    }

    /// Drops everything about `request` and its machines `ids` (it is gone).
    pub fn forget(&self, request: &ObjectRef<MachineRequest>, uid: &str, ids: &[String]) {
        let mut state = self.lock();
        state.watching.remove(request);
        state.unlisted.remove(uid);
        for id in ids {
            state.observed.remove(id);
            state.notices.remove(id);
        }
        drop(state);
        self.queue_events.forget(ids);
    }

    /// Drops observations of machines no request lists any more.
    pub fn forget_machines(&self, ids: &[String]) {
        let mut state = self.lock();
        for id in ids {
            state.observed.remove(id);
            state.notices.remove(id);
        }
        drop(state);
        self.queue_events.forget(ids);
    }

    /// Stores an interruption notice; true when it is new for that machine.
    pub fn record_notice(&self, notice: InterruptionNotice) -> bool {
        let mut state = self.lock();
        let new = !state.notices.contains_key(&notice.id);
        state.notices.insert(notice.id.clone(), notice);
        new
    }

    /// The interruption notice given for `id`, if any.
    pub fn notice(&self, id: &str) -> Option<InterruptionNotice> {
        self.lock().notices.get(id).cloned()
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
        // Everything watched is described now, the new ids included.
        {
            let mut state = self.lock();
            state.fresh_ids.clear();
            state.fresh_since = None;
        }
        self.describe_and_wake(self.watched_ids(), providers, metrics)
            .await
    }

    /// The first look: one batched describe per provider of the ids watched
    /// since the last poll (those still watched). Returns the number of
    /// providers described.
    pub async fn first_look_once(&self, providers: &ProviderRegistry, metrics: &Metrics) -> usize {
        let fresh = self.take_fresh();
        self.describe_and_wake(fresh, providers, metrics).await
    }

    /// Takes the ids watched since the last poll that are still watched.
    fn take_fresh(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut state = self.lock();
        let fresh = std::mem::take(&mut state.fresh_ids);
        state.fresh_since = None;
        let watched: BTreeSet<&String> = state
            .watching
            .values()
            .flat_map(|(_, ids)| ids.iter())
            .collect();
        fresh
            .into_iter()
            .map(|(p, ids)| {
                let ids: BTreeSet<String> =
                    ids.into_iter().filter(|id| watched.contains(id)).collect();
                (p, ids)
            })
            .filter(|(_, ids)| !ids.is_empty())
            .collect()
    }

    /// `ids` but those last seen terminated: that state is final on EC2, so
    /// describing it again (until its request has written it and stopped
    /// watching it) is a call's worth of work for nothing. A return of 1,000
    /// machines otherwise re-described all of them every poll while their
    /// requests caught up.
    fn not_yet_terminated(&self, ids: BTreeSet<String>) -> Vec<String> {
        let state = self.lock();
        ids.into_iter()
            .filter(|id| {
                state
                    .observed
                    .get(id)
                    .is_none_or(|m| m.machine.state != MachineState::Terminated)
            })
            .collect()
    }

    /// How long the first look still waits so that the oldest fresh id is
    /// looked at `first_look` after it arrived: nothing when a describe that
    /// ran meanwhile (a first look of earlier ids, taking as long as the
    /// simulator or EC2 takes) already made it wait that long. Waiting the
    /// full `first_look` after every describe left the cloud idle half of a
    /// return of 1,000 machines while their terminations streamed in.
    fn first_look_wait(&self, first_look: Duration) -> Duration {
        self.lock().fresh_since.map_or(first_look, |since| {
            first_look.saturating_sub(since.elapsed())
        })
    }

    async fn describe_and_wake(
        &self,
        by_provider: BTreeMap<String, BTreeSet<String>>,
        providers: &ProviderRegistry,
        metrics: &Metrics,
    ) -> usize {
        let mut polled = 0;
        for (provider_name, ids) in by_provider {
            let Some(provider) = providers.get(&provider_name) else {
                continue;
            };
            let ids = self.not_yet_terminated(ids);
            if ids.is_empty() {
                continue;
            }
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

/// Polls every `interval`, and looks at newly watched machines [`FIRST_LOOK`]
/// after they arrive, until `shutdown` resolves.
pub async fn run_poller(
    tracker: Arc<Tracker>,
    providers: Arc<ProviderRegistry>,
    metrics: Arc<Metrics>,
    interval: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let first_look = FIRST_LOOK.min(interval / 4);
    let polls = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    tracker.poll_once(&providers, &metrics).await;
                }
                _ = tracker.fresh.notified() => {
                    tokio::time::sleep(tracker.first_look_wait(first_look)).await;
                    tracker.first_look_once(&providers, &metrics).await;
                }
            }
        }
    };
    tokio::select! {
        _ = polls => {}
        _ = shutdown => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn machine(id: &str, state: MachineState) -> Machine {
        Machine::bare(id, state)
    }

    #[test]
    fn an_observation_keeps_of_its_tags_only_the_batch() {
        let (tracker, _woken) = Tracker::new();
        let mut m = machine("i-1", MachineState::Running);
        m.private_ip = Some("10.0.0.1".into());
        m.tags = [
            (super::super::ownership::BATCH_TAG, "b-1"),
            ("team", "hpc"),
            ("Name", "worker"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        tracker.record([m.clone()]);
        let seen = tracker.observed("i-1").expect("observed");
        let tags: Vec<(&str, &str)> = seen
            .tags
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(tags, [(super::super::ownership::BATCH_TAG, "b-1")]);
        assert_eq!(seen.private_ip, m.private_ip);
        m.tags.clear();
        tracker.record([m]);
        assert!(tracker.observed("i-1").expect("observed").tags.is_empty());
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

    #[tokio::test]
    async fn only_newly_watched_ids_bring_the_poll_forward() {
        let (tracker, _woken) = Tracker::new();
        let a = ObjectRef::<MachineRequest>::new("a").within("ns");
        let fresh = |t: &Arc<Tracker>| {
            let t = t.clone();
            async move {
                tokio::time::timeout(Duration::from_millis(50), t.fresh.notified())
                    .await
                    .is_ok()
            }
        };
        tracker.watch(a.clone(), "p", vec!["i-1".into()]);
        assert!(fresh(&tracker).await, "a first watch is fresh");
        tracker.watch(a.clone(), "p", vec!["i-1".into()]);
        assert!(!fresh(&tracker).await, "the same ids are not");
        tracker.watch(a.clone(), "p", vec!["i-1".into(), "i-2".into()]);
        assert!(fresh(&tracker).await, "an added id is");
        tracker.watch(a.clone(), "p", vec!["i-2".into()]);
        assert!(!fresh(&tracker).await, "a shrinking watch is not");
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_look_waits_from_the_oldest_fresh_id() {
        let (tracker, _woken) = Tracker::new();
        let look = Duration::from_millis(500);
        assert_eq!(tracker.first_look_wait(look), look, "nothing fresh");
        let a = ObjectRef::<MachineRequest>::new("a").within("ns");
        tracker.watch(a.clone(), "p", vec!["i-1".into()]);
        tokio::time::advance(Duration::from_millis(200)).await;
        tracker.watch(a.clone(), "p", vec!["i-1".into(), "i-2".into()]);
        assert_eq!(tracker.first_look_wait(look), Duration::from_millis(300));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(
            tracker.first_look_wait(look).is_zero(),
            "a describe ran long"
        );
        assert_eq!(tracker.take_fresh()["p"].len(), 2);
        tracker.watch(
            a.clone(),
            "p",
            vec!["i-1".into(), "i-2".into(), "i-3".into()],
        );
        assert_eq!(tracker.first_look_wait(look), look, "counted from i-3");
    }

    #[tokio::test]
    async fn terminated_machines_are_added_to_the_watch_as_fresh() {
        let (tracker, _woken) = Tracker::new();
        let a = ObjectRef::<MachineRequest>::new("a").within("ns");
        tracker.watch(a.clone(), "p", vec!["i-1".into()]);
        assert_eq!(tracker.take_fresh()["p"].len(), 1);
        let ids = ["i-1".to_string(), "i-2".to_string()];
        tracker.watch_also(a.clone(), "p", &ids);
        assert_eq!(
            tracker.take_fresh()["p"].iter().collect::<Vec<_>>(),
            ["i-2"],
            "only the id not watched yet is fresh"
        );
        assert_eq!(tracker.watched_ids()["p"].len(), 2);
        let b = ObjectRef::<MachineRequest>::new("b").within("ns");
        tracker.watch_also(b, "p", &["i-3".to_string()]);
        assert_eq!(tracker.watched_ids()["p"].len(), 3, "a first watch");
    }

    #[test]
    fn machines_seen_terminated_are_not_described_again() {
        let (tracker, _woken) = Tracker::new();
        tracker.record([
            machine("i-1", MachineState::Terminated),
            machine("i-2", MachineState::ShuttingDown),
        ]);
        let ids: BTreeSet<String> = ["i-1", "i-2", "i-3"].map(String::from).into();
        assert_eq!(tracker.not_yet_terminated(ids), ["i-2", "i-3"]);
    }

    #[test]
    fn the_first_look_takes_only_new_ids_that_are_still_watched() {
        let (tracker, _woken) = Tracker::new();
        let a = ObjectRef::<MachineRequest>::new("a").within("ns");
        let b = ObjectRef::<MachineRequest>::new("b").within("ns");
        tracker.watch(a.clone(), "p", vec!["i-1".into(), "i-2".into()]);
        tracker.watch(b.clone(), "q", vec!["i-3".into()]);
        // i-1 settled before the look: no longer watched, not looked at.
        tracker.watch(a.clone(), "p", vec!["i-2".into(), "i-4".into()]);
        let fresh = tracker.take_fresh();
        assert_eq!(
            fresh["p"].iter().map(String::as_str).collect::<Vec<_>>(),
            ["i-2", "i-4"]
        );
        assert_eq!(fresh["q"].len(), 1);
        assert!(tracker.take_fresh().is_empty(), "taken once");
        tracker.watch(
            a.clone(),
            "p",
            vec!["i-2".into(), "i-4".into(), "i-5".into()],
        );
        tracker.lock().fresh_ids.clear(); // what a full poll does
        assert!(tracker.take_fresh().is_empty());
    }
}

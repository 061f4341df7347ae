//! The sweep: one paginated listing per provider of the machines tagged for
//! this cluster, every `sweepInterval`. A full sweep (the first, then every
//! `fullSweepInterval`) lists every such machine; the sweeps in between list
//! only those stopping, stopped, shutting down or terminated, which is what
//! changes among held machines (a handful, where a full listing of 10,000 is
//! forty 250-instance pages to parse). It is how the operator notices what no
//! poll is watching:
//! - machines of a live request that its status does not list (a launch whose
//!   status write was lost) are handed to that request to adopt;
//! - machines a request lists that changed state (terminated from the console,
//!   spot reclaim) or vanished wake that request;
//! - machines whose request no longer exists are orphans: terminated by a full
//!   sweep once they are older than the grace period (EC2 reads are
//!   eventually consistent), unless there are more of them than
//!   `orphanCollection` allows at once (the brake: none is terminated and the
//!   operator says so loudly) or it is a dry run.
//!
//! Only machines carrying this cluster's identity
//! ([`CLUSTER_ID_TAG`]) are adopted or collected. A machine with this
//! cluster's name and another identity belongs to another cluster that was
//! given the same `clusterName`: it is reported (log, metric, an Event on the
//! request of the same name) and never touched. A machine without an identity
//! (launched before identities existed) is still adopted by its request uid,
//! but never collected as an orphan: nothing proves it is this cluster's.
//!
//! Machines that vanished from the listing altogether, and running orphans or
//! unrecorded running machines, are only seen by full sweeps; a settle that
//! may have left running machines unlisted asks for one at the next sweep
//! ([`FullSweepSignal::request`]), and a full sweep whose listing failed is
//! tried again at the next.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use tracing::{error, info, warn};

use super::launch_groups;
use super::ownership::{CLUSTER_ID_TAG, CLUSTER_TAG, GROUP_TAG, REQUEST_TAG, REQUEST_UID_TAG};
use super::ticker::every;
use super::translate;
use crate::api::{LaunchState, MachineRequest, MachineState};
use crate::config::OrphanCollection;
use crate::controller::events;
use crate::controller::reason::Reason;
use crate::controller::Context;
use crate::provider::{self, Machine};

/// Asks the sweep for a full listing at its next tick: set when a running
/// machine may exist that no status lists (a settled batch found fewer
/// machines than it asked for, or a batch was given up that may have
/// launched), so such machines are adopted within a `sweepInterval`, not a
/// `fullSweepInterval`. The sweep owns it; others only ask.
///
/// It also remembers when the last complete full sweep started: a batch
/// settled by its tag holds its missing machines until a full listing that
/// started after the batch's tag-index grace has looked for them.
#[derive(Debug, Default)]
pub struct FullSweepSignal {
    wanted: AtomicBool,
    last_complete: std::sync::Mutex<Option<Timestamp>>,
}

impl FullSweepSignal {
    /// Wants the next sweep to be a full one.
    pub fn request(&self) {
        self.wanted.store(true, Ordering::SeqCst);
    }

    /// Whether a full sweep was asked for since the last call (and clears it).
    fn take(&self) -> bool {
        self.wanted.swap(false, Ordering::SeqCst)
    }

    /// When the last full sweep whose every listing succeeded started (None:
    /// none since this process started).
    pub fn last_complete(&self) -> Option<Timestamp> {
        *lock(&self.last_complete)
    }

    /// Whether a complete full sweep started once machines launched at
    /// `created` had `grace` to show up in tag-filtered listings: what it did
    /// not list (and hand over for adoption) was never launched. No `created`
    /// (an old record): any complete full sweep.
    pub fn has_looked_after(&self, created: Option<Timestamp>, grace: Duration) -> bool {
        looked_after(self.last_complete(), created, grace)
    }

    /// Records a full sweep that started at `started` and listed everything.
    pub fn completed(&self, started: Timestamp) {
        let mut last = lock(&self.last_complete);
        if last.is_none_or(|t| t < started) {
            *last = Some(started);
        }
    }
}

fn looked_after(last: Option<Timestamp>, created: Option<Timestamp>, grace: Duration) -> bool {
    let Some(last) = last else {
        return false;
    };
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    created.is_none_or(|c| last.as_second() >= c.as_second().saturating_add(grace))
}

/// The stateReason given to a machine the cloud no longer reports at all, by
/// tag or by id (EC2 drops terminated instances from reads about an hour
/// after they end): it is not a death at launch, whatever its last state was.
pub const VANISHED_REASON: &str = "no longer reported by the cloud";

/// What one sweep did, for logs and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Machines listed across providers.
    pub listed: usize,
    /// Machines handed to their request for adoption.
    pub unlisted: usize,
    /// Requests woken because their machines changed.
    pub woken: usize,
    /// Orphans terminated.
    pub orphans_terminated: usize,
    /// Orphans left running: a dry run, or the brake.
    pub orphans_held: usize,
    /// Machines with this cluster's name and another cluster's identity.
    pub foreign: usize,
    /// Machines without an identity whose request is gone (never collected).
    pub unmarked_orphans: usize,
    /// Providers whose listing failed (a full sweep is then not done).
    pub failed_listings: usize,
    /// LaunchGroups deleted because every member has settled.
    pub groups_deleted: usize,
}

/// Sweeps every `sweepInterval` until `shutdown` resolves; the first sweep runs
/// once the request watch has its initial list (so no live request is taken
/// for gone).
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    let sweeps = async {
        if !ctx.requests_synced.wait().await {
            return;
        }
        let last_full: std::sync::Mutex<Option<Instant>> = Default::default();
        every(
            ctx.config.sweep_interval,
            std::future::pending::<()>(),
            || async {
                let started = Instant::now();
                let started_at = Timestamp::now();
                if settling_due(&ctx, started_at) {
                    ctx.full_sweep.request();
                }
                let wanted = ctx.full_sweep.take();
                let due =
                    lock(&last_full).is_none_or(|t| t.elapsed() >= ctx.config.full_sweep_interval);
                let full = due || wanted;
                let report = sweep_once(&ctx, full).await;
                if full && report.failed_listings == 0 {
                    *lock(&last_full) = Some(started);
                    ctx.full_sweep.completed(started_at);
                    wake_settling(&ctx);
                } else if full && wanted {
                    // Still wanted; a missed timed one stays due by itself.
                    ctx.full_sweep.request();
                }
                if report.unlisted
                    + report.woken
                    + report.orphans_terminated
                    + report.orphans_held
                    + report.foreign
                    > 0
                {
                    info!(?report, full, "sweep");
                }
            },
        )
        .await;
    };
    tokio::select! {
        _ = sweeps => {}
        _ = shutdown => {}
    }
}

/// Whether a launch still Pending (held by a settle by tag) has had its
/// grace and no complete full sweep has looked for its machines since: the
/// next sweep must be full, or the hold lasts until a timed one.
fn settling_due(ctx: &Context, now: Timestamp) -> bool {
    let grace = ctx.config.gc_grace_period;
    let grace_s = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    ctx.requests.state().iter().any(|r| {
        r.status.as_ref().is_some_and(|st| {
            st.launches.iter().any(|b| {
                let created = b.created_at.as_ref().map(|t| t.0);
                b.state == LaunchState::Pending
                    && created
                        .is_none_or(|c| now.as_second() >= c.as_second().saturating_add(grace_s))
                    && !ctx.full_sweep.has_looked_after(created, grace)
            })
        })
    })
}

/// Wakes the requests holding machines of a batch settled by its tag: a
/// complete full sweep is what releases (or finds) them.
fn wake_settling(ctx: &Context) {
    for r in ctx.requests.state() {
        let settling = r
            .status
            .as_ref()
            .is_some_and(|st| st.launches.iter().any(|b| b.state == LaunchState::Pending));
        if settling {
            ctx.tracker.wake(ObjectRef::from_obj(r.as_ref()));
        }
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whose a listed machine is, by its [`CLUSTER_ID_TAG`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// This cluster's identity.
    Ours,
    /// Another cluster's: never adopted, woken on, or collected.
    Foreign,
    /// No identity (launched before identities existed): adopted by its
    /// request uid, never collected as an orphan.
    Unmarked,
}

/// Whose `m` is, given this cluster's identity `ours`.
pub fn identity(m: &Machine, ours: &str) -> Identity {
    match m.tags.get(CLUSTER_ID_TAG) {
        None => Identity::Unmarked,
        Some(id) if id == ours => Identity::Ours,
        Some(_) => Identity::Foreign,
    }
}

/// What a sweep does with the orphans it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrphanVerdict {
    /// Terminate them all.
    Terminate,
    /// Report them only (`orphanCollection.dryRun`).
    DryRun,
    /// More than `allowed` at once: terminate none, say so loudly.
    Brake {
        /// The most one sweep may terminate.
        allowed: usize,
    },
}

/// The brake: `orphans` of `owned` listed machines of this cluster (orphans
/// included) may all go only when they are within what `policy` allows at
/// once. A crash leaves a few; a wrong identity, a restored backup or a
/// second cluster makes most of a cluster look orphaned, and then nothing is
/// terminated until a person looks.
pub fn orphan_verdict(orphans: usize, owned: usize, policy: &OrphanCollection) -> OrphanVerdict {
    let allowed = policy.allowed(owned);
    if policy.dry_run {
        OrphanVerdict::DryRun
    } else if orphans > allowed {
        OrphanVerdict::Brake { allowed }
    } else {
        OrphanVerdict::Terminate
    }
}

/// A live request as the sweep needs it.
struct Live {
    request: ObjectRef<MachineRequest>,
    /// Listed machines: state and launch time (seconds since the epoch).
    listed: HashMap<String, (MachineState, Option<i64>)>,
}

/// One sweep over every provider: of every owned machine when `full`, else
/// of those that are going or gone.
pub async fn sweep_once(ctx: &Context, full: bool) -> SweepReport {
    let mut report = SweepReport::default();
    let live: HashMap<String, Live> = ctx
        .requests
        .state()
        .iter()
        .filter_map(|r| {
            let uid = r.uid()?;
            let listed = r
                .status
                .as_ref()
                .map(|st| {
                    st.machines
                        .iter()
                        .map(|m| {
                            let launched = m.launch_time.as_ref().map(|t| t.0.as_second());
                            (m.id.clone(), (m.state, launched))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Some((
                uid,
                Live {
                    request: ObjectRef::from_obj(r.as_ref()),
                    listed,
                },
            ))
        })
        .collect();
    // Coalesced launches: their machines carry the group's tag, not a
    // request's, and belong to the request whose status lists them. One
    // that none lists is in flight while its group exists.
    let groups = match full {
        true => launch_groups::list(ctx).await,
        false => Some(Vec::new()),
    };
    let groups_in_flight = groups.as_deref().map(launch_groups::in_flight);
    let mut owner_by_id: Option<HashMap<String, String>> = None;
    let cluster = vec![(CLUSTER_TAG.to_string(), ctx.config.cluster_name.clone())];
    for name in ctx.providers.names() {
        let Some(provider) = ctx.providers.get(name) else {
            continue;
        };
        ctx.metrics.sweep(name);
        let mut wake: HashSet<ObjectRef<MachineRequest>> = HashSet::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut orphans: Vec<Machine> = Vec::new();
        let mut foreign: Vec<Machine> = Vec::new();
        let mut owned = 0usize;
        let mut unmarked_orphans = 0usize;
        // Page by page: a full listing of 10,000 machines is forty pages,
        // and only the one in hand is kept (its ids stay in `seen`).
        let listing = provider
            .list_owned(&cluster, !full, &mut |machines: Vec<Machine>| {
                report.listed += machines.len();
                for m in machines {
                    if !in_scope(ctx, &m) {
                        continue;
                    }
                    seen.insert(m.id.clone());
                    let whose = identity(&m, &ctx.cluster_id);
                    if whose == Identity::Foreign {
                        foreign.push(m);
                        continue;
                    }
                    if !m.state.is_terminating() {
                        owned += 1;
                    }
                    let mut uid = m.tags.get(REQUEST_UID_TAG).cloned().unwrap_or_default();
                    if let (true, Some(group)) = (uid.is_empty(), m.tags.get(GROUP_TAG)) {
                        let owners = owner_by_id.get_or_insert_with(|| owners_by_id(&live));
                        match owners.get(&m.id) {
                            Some(owner) => uid.clone_from(owner),
                            None => {
                                let in_flight =
                                    groups_in_flight.as_ref().is_none_or(|g| g.contains(group));
                                if full
                                    && !in_flight
                                    && !m.state.is_terminating()
                                    && older_than(&m, ctx.config.gc_grace_period)
                                {
                                    orphans.push(m);
                                }
                                continue;
                            }
                        }
                    }
                    match live.get(&uid) {
                        Some(owner) => match owner.listed.get(&m.id) {
                            None if !m.state.is_terminating() => {
                                ctx.tracker.add_unlisted(&uid, m.clone());
                                report.unlisted += 1;
                                wake.insert(owner.request.clone());
                                ctx.tracker.record([m]);
                            }
                            Some((state, _)) if *state != translate::state(m.state) => {
                                wake.insert(owner.request.clone());
                                ctx.tracker.record([m]);
                            }
                            // Listed as it is: status already says all of it, and
                            // keeping a copy of every held machine would only cost
                            // memory and CPU at every sweep.
                            _ => {}
                        },
                        None if uid.is_empty() => {}
                        // Orphans are judged by full sweeps only: the brake
                        // weighs them against every machine of the cluster.
                        None if !full => {}
                        None => {
                            if !m.state.is_terminating()
                                && older_than(&m, ctx.config.gc_grace_period)
                            {
                                if whose == Identity::Unmarked {
                                    unmarked_orphans += 1;
                                } else {
                                    orphans.push(m);
                                }
                            }
                        }
                    }
                }
            })
            .await;
        if let Err(err) = listing {
            // What the pages so far found stays true (machines to adopt,
            // changed states); vanished machines and orphans need the whole
            // listing, so they wait for the next sweep.
            warn!(provider = name, error = %err, "sweep: listing owned machines failed");
            report.failed_listings += 1;
            report.woken += wake.len();
            for request in wake {
                ctx.tracker.wake(request);
            }
            continue;
        }
        // Machines a request lists that the tag-filtered listing no longer
        // shows (only a full listing can tell). A tag index can lag or a page
        // boundary shift, so each suspect is read again by instance id (a
        // different index) and only what that read does not show either is
        // taken for gone.
        let mut suspects: Vec<(String, ObjectRef<MachineRequest>)> = Vec::new();
        for owner in live.values().filter(|_| full) {
            for (id, (state, launched)) in &owner.listed {
                if seen.contains(id) || *state == MachineState::Terminated {
                    continue;
                }
                let old_enough = launched.is_some_and(|t| {
                    aged_past(t, Timestamp::now().as_second(), ctx.config.gc_grace_period)
                });
                if old_enough && owner_provider_is(ctx, &owner.request, name) {
                    suspects.push((id.clone(), owner.request.clone()));
                }
            }
        }
        if !suspects.is_empty() {
            let ids: Vec<String> = suspects.iter().map(|(id, _)| id.clone()).collect();
            match provider.describe_machines(&ids).await {
                Ok(by_id) => {
                    let (gone, still) = confirm_vanished(&ids, by_id);
                    if !still.is_empty() {
                        info!(
                            provider = name,
                            machines = still.len(),
                            "sweep: machines missing from the tag listing are still reported by id"
                        );
                    }
                    ctx.tracker.record(still);
                    for (id, request) in &suspects {
                        if gone.contains(id) {
                            ctx.tracker.record([vanished(id, ctx.tracker.observed(id))]);
                        }
                        wake.insert(request.clone());
                    }
                }
                Err(err) => {
                    // Unconfirmed: nothing is taken for gone this time.
                    warn!(provider = name, error = %err,
                        "sweep: confirming vanished machines by id failed");
                }
            }
        }
        if full {
            report_foreign(ctx, name, &foreign).await;
            report.foreign += foreign.len();
            report.unmarked_orphans += unmarked_orphans;
            if unmarked_orphans > 0 {
                warn!(
                    provider = name,
                    machines = unmarked_orphans,
                    "sweep: machines without a cluster identity (launched before identities) whose request is gone are left running; terminate them by hand"
                );
            }
            let orphans = still_orphaned(ctx, orphans).await;
            let held = match orphan_verdict(orphans.len(), owned, &ctx.config.orphans) {
                _ if orphans.is_empty() => 0,
                OrphanVerdict::Terminate => {
                    report.orphans_terminated +=
                        collect_orphans(ctx, &provider, name, &orphans).await;
                    0
                }
                OrphanVerdict::DryRun => {
                    for m in &orphans {
                        warn!(
                            provider = name,
                            instance = %m.id,
                            request = m.tags.get(REQUEST_TAG).map(String::as_str).unwrap_or(""),
                            "dry run: would terminate orphan (its MachineRequest no longer exists)"
                        );
                    }
                    orphans.len()
                }
                OrphanVerdict::Brake { allowed } => {
                    error!(
                        provider = name,
                        orphans = orphans.len(),
                        machines = owned,
                        allowed,
                        "sweep brake: more orphans than orphanCollection allows at once; none terminated. \
                         Check that no other cluster uses this clusterId and that requests were not lost \
                         (a restore gives them new uids); then terminate them by hand or raise \
                         orphanCollection.maxShare"
                    );
                    ctx.metrics.orphan_brake_engaged(name);
                    orphans.len()
                }
            };
            ctx.metrics.orphans_held(name, held);
            report.orphans_held += held;
        }
        report.woken += wake.len();
        for request in wake {
            ctx.tracker.wake(request);
        }
    }
    if let Some(groups) = &groups {
        report.groups_deleted += launch_groups::collect(ctx, groups).await;
    }
    report
}

/// The orphans a sweep found, judged again against the request cache as it
/// is now. The sweep's view of the requests is taken before its listing, and
/// a request created while the listing ran can have launched by then (its
/// reconcile runs only once the cache holds it, so the cache has it now);
/// its machines, young and with launch times EC2 rounds down to the second,
/// must not be taken for orphans. A group's machine is kept if a request
/// lists it now or its LaunchGroup exists (read again; unknown keeps it).
async fn still_orphaned(ctx: &Context, orphans: Vec<Machine>) -> Vec<Machine> {
    if orphans.is_empty() {
        return orphans;
    }
    let requests = ctx.requests.state();
    let uids: HashSet<String> = requests.iter().filter_map(|r| r.uid()).collect();
    let listed: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r.status.as_ref())
        .flat_map(|st| st.machines.iter().map(|m| m.id.as_str()))
        .collect();
    let grouped = orphans
        .iter()
        .any(|m| !m.tags.contains_key(REQUEST_UID_TAG));
    let groups = match grouped {
        true => launch_groups::list(ctx)
            .await
            .map(|g| launch_groups::in_flight(&g)),
        false => Some(BTreeSet::new()),
    };
    orphans
        .into_iter()
        .filter(|m| match m.tags.get(REQUEST_UID_TAG) {
            Some(uid) => !uids.contains(uid),
            None => {
                let group = m.tags.get(GROUP_TAG);
                !listed.contains(m.id.as_str())
                    && groups
                        .as_ref()
                        .is_some_and(|g| group.is_none_or(|name| !g.contains(name)))
            }
        })
        .collect()
}

/// Which live request lists each machine, by id: the owner of a machine of a
/// coalesced launch, which carries no request tag.
fn owners_by_id(live: &HashMap<String, Live>) -> HashMap<String, String> {
    live.iter()
        .flat_map(|(uid, l)| l.listed.keys().map(move |id| (id.clone(), uid.clone())))
        .collect()
}

/// Whether the machine belongs to what this operator watches: all namespaces,
/// or the request tag names the watched namespace.
fn in_scope(ctx: &Context, m: &Machine) -> bool {
    match &ctx.namespace {
        None => true,
        Some(ns) => m
            .tags
            .get(REQUEST_TAG)
            .or_else(|| m.tags.get(GROUP_TAG))
            .is_some_and(|r| r.split('/').next() == Some(ns.as_str())),
    }
}

fn owner_provider_is(ctx: &Context, request: &ObjectRef<MachineRequest>, provider: &str) -> bool {
    ctx.requests
        .get(request)
        .and_then(|r| r.status.as_ref().and_then(|s| s.provider.clone()))
        .is_none_or(|p| p == provider)
}

fn older_than(m: &Machine, grace: Duration) -> bool {
    let Some(launched) = m
        .launch_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
    else {
        // No launch time: not something we can date; leave it to the next sweep.
        return false;
    };
    aged_past(launched.as_second(), Timestamp::now().as_second(), grace)
}

/// Whether a machine launched at second `launched` has surely had `grace`
/// by second `now`. EC2 reports launch times in whole seconds, cut down: a
/// machine launched at 12:00:00.9 says 12:00:00. `>=` would give it up to a
/// second less than the grace, so a read-after-write lag as long as the grace
/// could take a new machine for gone; strictly more than the grace cannot.
fn aged_past(launched: i64, now: i64, grace: Duration) -> bool {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    now.saturating_sub(launched) > grace
}

/// Splits suspects missing from the tag listing into those the by-id read
/// does not report either (gone) and what it says about the others (kept
/// with the state the cloud gives them, terminated ones included: EC2 says
/// so by id).
fn confirm_vanished(suspects: &[String], by_id: Vec<Machine>) -> (BTreeSet<String>, Vec<Machine>) {
    let wanted: BTreeSet<&String> = suspects.iter().collect();
    let still: Vec<Machine> = by_id
        .into_iter()
        .filter(|m| wanted.contains(&m.id))
        .collect();
    let reported: BTreeSet<&String> = still.iter().map(|m| &m.id).collect();
    let gone = suspects
        .iter()
        .filter(|id| !reported.contains(id))
        .cloned()
        .collect();
    (gone, still)
}

/// A machine the cloud stopped reporting: treated as terminated.
fn vanished(id: &str, last: Option<Machine>) -> Machine {
    let mut m = last.unwrap_or_else(|| Machine::bare(id, provider::MachineState::Terminated));
    m.state = provider::MachineState::Terminated;
    m.state_reason = Some(VANISHED_REASON.into());
    m
}

/// Says that `foreign` machines (this cluster's name, another identity)
/// were listed and left alone: a warning in the log, the metric, and a
/// Warning Event on each live request of this cluster whose
/// `<namespace>/<name>` one of them carries (a blue/green pair or a restore
/// applying the same requests in two clusters), so its owner sees it.
async fn report_foreign(ctx: &Context, provider: &str, foreign: &[Machine]) {
    ctx.metrics.foreign_machines(provider, foreign.len());
    if foreign.is_empty() {
        return;
    }
    let sample: Vec<&str> = foreign.iter().take(5).map(|m| m.id.as_str()).collect();
    warn!(
        provider,
        machines = foreign.len(),
        sample = %sample.join(","),
        cluster = %ctx.config.cluster_name,
        "sweep: machines carry this cluster's name but another cluster's identity; left alone. \
         Two clusters use one clusterName: give each its own"
    );
    let mut by_request: HashMap<String, Vec<&str>> = HashMap::new();
    for m in foreign {
        if let Some(r) = m.tags.get(REQUEST_TAG) {
            by_request.entry(r.clone()).or_default().push(&m.id);
        }
    }
    for r in ctx.requests.state() {
        let key = format!("{}/{}", r.namespace().unwrap_or_default(), r.name_any());
        let Some(ids) = by_request.get(&key) else {
            continue;
        };
        let note = format!(
            "{} machines ({}) carry this request's name and cluster name {:?} but another \
             cluster's identity: left alone. Another cluster uses the same clusterName",
            ids.len(),
            ids.join(", "),
            ctx.config.cluster_name
        );
        events::publish(
            &ctx.recorder,
            &r.object_ref(&()),
            EventType::Warning,
            Reason::ForeignMachine,
            "Sweep",
            &note,
        )
        .await;
    }
}

async fn collect_orphans(
    ctx: &Context,
    provider: &Arc<dyn provider::MachineProvider>,
    name: &str,
    orphans: &[Machine],
) -> usize {
    let ids: Vec<String> = orphans.iter().map(|m| m.id.clone()).collect();
    match provider::terminate_each_known(provider, &ids).await {
        Ok(accepted) => {
            for m in orphans.iter().filter(|m| accepted.contains(&m.id)) {
                warn!(
                    provider = name,
                    instance = %m.id,
                    request = m.tags.get(REQUEST_TAG).map(String::as_str).unwrap_or(""),
                    request_uid = m.tags.get(REQUEST_UID_TAG).map(String::as_str).unwrap_or(""),
                    "terminating orphan: its MachineRequest no longer exists"
                );
            }
            ctx.metrics.terminated(name, "Orphan", accepted.len());
            accepted.len()
        }
        Err(err) => {
            warn!(provider = name, error = %err, "terminating orphans failed");
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_is_old_only_once_a_whole_grace_surely_passed() {
        let grace = Duration::from_secs(2);
        // Launched at 100.x s, reported as 100: at 102 only 1.x s may have
        // passed.
        assert!(!aged_past(100, 101, grace));
        assert!(!aged_past(100, 102, grace));
        assert!(aged_past(100, 103, grace));
        assert!(!aged_past(100, 99, grace), "a clock behind the launch");
        assert!(!aged_past(i64::MIN, 0, Duration::MAX));
    }

    #[test]
    fn only_this_clusters_identity_is_ours() {
        let tagged = |id: Option<&str>| {
            let mut m = Machine::bare("i-1", provider::MachineState::Running);
            if let Some(id) = id {
                m.tags.insert(CLUSTER_ID_TAG.into(), id.into());
            }
            m
        };
        assert_eq!(identity(&tagged(Some("a")), "a"), Identity::Ours);
        assert_eq!(identity(&tagged(Some("b")), "a"), Identity::Foreign);
        assert_eq!(identity(&tagged(Some("")), "a"), Identity::Foreign);
        assert_eq!(identity(&tagged(None), "a"), Identity::Unmarked);
    }

    #[test]
    fn the_brake_holds_more_orphans_than_allowed() {
        let policy = OrphanCollection::default();
        // (orphans, machines of the cluster listed, verdict)
        let rows = [
            (1, 3, OrphanVerdict::Terminate),
            (5, 5, OrphanVerdict::Terminate),
            (6, 7, OrphanVerdict::Brake { allowed: 5 }),
            (20, 100, OrphanVerdict::Terminate),
            (21, 100, OrphanVerdict::Brake { allowed: 20 }),
            (7, 7, OrphanVerdict::Brake { allowed: 5 }),
        ];
        for (orphans, owned, want) in rows {
            assert_eq!(
                orphan_verdict(orphans, owned, &policy),
                want,
                "{orphans} of {owned}"
            );
        }
        let dry = OrphanCollection {
            dry_run: true,
            ..policy
        };
        assert_eq!(orphan_verdict(1, 100, &dry), OrphanVerdict::DryRun);
    }

    #[test]
    fn only_what_the_by_id_read_does_not_report_is_gone() {
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let m = |id: &str, st| Machine::bare(id, st);
        use provider::MachineState::*;
        // (suspects, by-id answer, gone, still reported)
        type Row<'a> = (Vec<String>, Vec<Machine>, Vec<&'a str>, Vec<&'a str>);
        let rows: Vec<Row> = vec![
            (ids(&["i-1", "i-2"]), vec![], vec!["i-1", "i-2"], vec![]),
            (
                ids(&["i-1", "i-2"]),
                vec![m("i-1", Running)],
                vec!["i-2"],
                vec!["i-1"],
            ),
            // EC2 saying terminated by id is EC2 saying so: recorded as such.
            (
                ids(&["i-1"]),
                vec![m("i-1", Terminated)],
                vec![],
                vec!["i-1"],
            ),
            // An answer about an id not asked for is ignored.
            (ids(&["i-1"]), vec![m("i-9", Running)], vec!["i-1"], vec![]),
        ];
        for (suspects, answer, gone, still) in rows {
            let (g, s) = confirm_vanished(&suspects, answer);
            assert_eq!(g.iter().map(String::as_str).collect::<Vec<_>>(), gone);
            assert_eq!(s.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), still);
        }
    }

    #[test]
    fn a_full_sweep_counts_only_if_it_started_after_the_grace() {
        let t = |s| Timestamp::from_second(s).expect("time");
        let g = Duration::from_secs(120);
        // (last complete full sweep, batch created, looked for its machines)
        let rows = [
            (None, Some(t(1000)), false),
            (None, None, false),
            (Some(t(1100)), Some(t(1000)), false),
            (Some(t(1120)), Some(t(1000)), true),
            (Some(t(5000)), Some(t(1000)), true),
            (Some(t(1)), None, true),
        ];
        for (last, created, want) in rows {
            assert_eq!(looked_after(last, created, g), want, "{last:?} {created:?}");
        }
    }

    #[test]
    fn the_last_complete_full_sweep_only_moves_forward() {
        let signal = FullSweepSignal::default();
        assert_eq!(signal.last_complete(), None);
        let t = |s| Timestamp::from_second(s).expect("time");
        signal.completed(t(100));
        signal.completed(t(50));
        assert_eq!(signal.last_complete(), Some(t(100)));
        assert!(!signal.take());
        signal.request();
        assert!(signal.take());
        assert!(!signal.take());
    }
}

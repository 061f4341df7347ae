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
//! - machines whose request no longer exists are orphans: terminated once they
//!   are older than the grace period (EC2 reads are eventually consistent).
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
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;
use tracing::{info, warn};

use super::ownership::{CLUSTER_TAG, REQUEST_TAG, REQUEST_UID_TAG};
use super::ticker::every;
use super::translate;
use crate::api::{MachineRequest, MachineState};
use crate::controller::Context;
use crate::provider::{self, Machine};

/// Asks the sweep for a full listing at its next tick: set when a running
/// machine may exist that no status lists (a settled batch found fewer
/// machines than it asked for, or a batch was given up that may have
/// launched), so such machines are adopted within a `sweepInterval`, not a
/// `fullSweepInterval`. The sweep owns it; others only ask.
#[derive(Debug, Default)]
pub struct FullSweepSignal(AtomicBool);

impl FullSweepSignal {
    /// Wants the next sweep to be a full one.
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether a full sweep was asked for since the last call (and clears it).
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

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
    /// Providers whose listing failed (a full sweep is then not done).
    pub failed_listings: usize,
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
                let wanted = ctx.full_sweep.take();
                let due =
                    lock(&last_full).is_none_or(|t| t.elapsed() >= ctx.config.full_sweep_interval);
                let full = due || wanted;
                let report = sweep_once(&ctx, full).await;
                if full && report.failed_listings == 0 {
                    *lock(&last_full) = Some(started);
                } else if full && wanted {
                    // Still wanted; a missed timed one stays due by itself.
                    ctx.full_sweep.request();
                }
                if report.unlisted + report.woken + report.orphans_terminated > 0 {
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

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    let cluster = vec![(CLUSTER_TAG.to_string(), ctx.config.cluster_name.clone())];
    for name in ctx.providers.names() {
        let Some(provider) = ctx.providers.get(name) else {
            continue;
        };
        ctx.metrics.sweep(name);
        let mut wake: HashSet<ObjectRef<MachineRequest>> = HashSet::new();
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut orphans: Vec<Machine> = Vec::new();
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
                    let uid = m.tags.get(REQUEST_UID_TAG).cloned().unwrap_or_default();
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
                        None => {
                            if !m.state.is_terminating()
                                && older_than(&m, ctx.config.gc_grace_period)
                            {
                                orphans.push(m);
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
        // Machines a request lists that the cloud no longer reports at all
        // (only a full listing can tell).
        for owner in live.values().filter(|_| full) {
            for (id, (state, launched)) in &owner.listed {
                if seen.contains(id) || *state == MachineState::Terminated {
                    continue;
                }
                let grace = ctx.config.gc_grace_period.as_secs() as i64;
                let old_enough =
                    launched.is_some_and(|t| Timestamp::now().as_second() - t >= grace);
                if old_enough && owner_provider_is(ctx, &owner.request, name) {
                    ctx.tracker.record([vanished(id, ctx.tracker.observed(id))]);
                    wake.insert(owner.request.clone());
                }
            }
        }
        if !orphans.is_empty() {
            report.orphans_terminated += collect_orphans(ctx, &provider, name, &orphans).await;
        }
        report.woken += wake.len();
        for request in wake {
            ctx.tracker.wake(request);
        }
    }
    report
}

/// Whether the machine belongs to what this operator watches: all namespaces,
/// or the request tag names the watched namespace.
fn in_scope(ctx: &Context, m: &Machine) -> bool {
    match &ctx.namespace {
        None => true,
        Some(ns) => m
            .tags
            .get(REQUEST_TAG)
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
    Timestamp::now().as_second() - launched.as_second() >= grace.as_secs() as i64
}

/// A machine the cloud stopped reporting: treated as terminated.
fn vanished(id: &str, last: Option<Machine>) -> Machine {
    let mut m = last.unwrap_or_else(|| Machine::bare(id, provider::MachineState::Terminated));
    m.state = provider::MachineState::Terminated;
    m.state_reason = Some("no longer reported by the cloud".into());
    m
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

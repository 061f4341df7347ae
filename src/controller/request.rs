//! The MachineRequest controller: turns "N machines from template T" into
//! exactly N instances, across crashes. One reconcile is a pipeline whose
//! steps live in `request/`:
//!
//! load → observe → gate → settle → plan (pure) → record intent → act → status
//!
//! - **observe** ([`session`]): what the poller and the sweep saw (states,
//!   adoptions, interruption notices) goes into status;
//! - **gate** ([`gate`]): the template is usable and the provider known, or the
//!   request is blocked with a typed reason;
//! - **settle** ([`settle`]): batches still `Pending` from a crash are adopted
//!   by their tag or re-sent with the same token;
//! - **plan** ([`plan`], pure): which machines to return, scale down or report
//!   lost, and how many to launch;
//! - **record intent** ([`intent`]): the marks and the new batch are written
//!   with optimistic concurrency; only a [`intent::Recorded`] batch can be sent;
//! - **act** ([`act`]): terminate and launch;
//! - **status** ([`status`], pure): counts, conditions, phase, requeue.
//!
//! A reconcile that fails says why on the request (Degraded, with the cloud's
//! code and message) and in a Warning Event. Deletion is [`cleanup`].

pub mod act;
pub mod batch;
pub mod by_tag;
pub mod cleanup;
pub mod coalesce;
pub mod drift;
pub mod gate;
pub mod group;
pub mod group_settle;
pub mod intent;
pub mod plan;
pub mod report;
pub mod session;
pub mod settle;
pub mod status;
pub mod template_wakes;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use kube::runtime::controller::{Action, Config};
use kube::runtime::events::EventType;
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event as Finalize};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use self::session::Session;
use super::reason::Reason;
use super::{Context, Error};
use crate::api::{MachineRequest, MachineTemplate, ReplaceReason};
use crate::failpoint;

/// Label value for this controller in metrics.
const CONTROLLER: &str = "request";
/// Held on every request until all of its machines are terminating.
pub const FINALIZER: &str = "hostforge.io/machines";
/// How soon a copy the watch has not caught up with is looked at again.
const RETRY_STALE: Duration = Duration::from_millis(500);

/// Runs the controller until `shutdown` resolves. Templates wake the requests
/// that use them (`templates` must be the watch that fills `ctx.templates`, see
/// [`super::watch::reflected`]); `wake` carries the poller's wake-ups.
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<MachineRequest>,
    templates: impl Stream<Item = Result<MachineTemplate, watcher::Error>> + Send + 'static,
    wake: impl Stream<Item = ObjectRef<MachineRequest>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let requests = ctx.requests.clone();
    let wakes = template_wakes::TemplateWakes::default();
    let config = Config::default().concurrency(ctx.config.max_concurrent_reconciles);
    controller
        .with_config(config)
        .watches_stream(templates, move |mt: MachineTemplate| {
            wakes.wake(&mt, &requests.state())
        })
        .reconcile_on(wake)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(request = %obj.name, "reconciled"),
                Err(err) => debug!(error = %err, "request reconcile failed"),
            }
        })
        .await;
}

fn key(mr: &MachineRequest) -> String {
    format!("{}/{}", mr.namespace().unwrap_or_default(), mr.name_any())
}

fn error_policy(mr: Arc<MachineRequest>, err: &Error, ctx: Arc<Context>) -> Action {
    if err.is_still_deleting() {
        debug!(request = %key(&mr), wait = %err, "deletion waiting; finalizer kept");
        return Action::requeue(cleanup::RETRY_DELETING);
    }
    let delay = ctx.backoff.failed(&key(&mr));
    warn!(request = %key(&mr), category = err.category(), error = %err, retry_in = ?delay, "request reconcile failed");
    // A failed apply has already said so on the request (report::failure).
    let reported =
        matches!(err, Error::Finalizer(e) if matches!(**e, FinalizerError::ApplyFailed(_)));
    if !reported {
        super::events::spawn_failure(ctx, mr.object_ref(&()), err);
    }
    Action::requeue(delay)
}

/// One reconcile of one request: the stale-copy guard, then the finalizer
/// around `apply` (the pipeline) or [`cleanup::cleanup`].
pub async fn reconcile(mr: Arc<MachineRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = mr
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<MachineRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let k = key(&mr);
    if mr
        .resource_version()
        .is_some_and(|rv| ctx.superseded.is_stale(&k, &rv))
    {
        // The watch has not caught up with our own last write; it will
        // deliver the newer copy (and with it another reconcile).
        debug!(request = %k, "stale copy from the watch cache; waiting for the newer one");
        return Ok(Action::requeue(RETRY_STALE));
    }
    let result = finalizer(&api, FINALIZER, mr, |event| async {
        match event {
            Finalize::Apply(mr) => apply(&mr, &ctx).await,
            Finalize::Cleanup(mr) => {
                let done = cleanup::cleanup(&mr, &ctx).await;
                if done.is_ok() {
                    // The finalizer goes next: the request and its
                    // machines leave the machines gauge.
                    ctx.metrics.fleet.forget_request(&k);
                }
                done
            }
        }
    })
    .await;
    if let Err(FinalizerError::AddFinalizer(e)) = &result {
        if is_failed_patch_test(e) {
            // The copy lacked the finalizer that an earlier reconcile already
            // added (the watch is behind): its guarded patch was refused.
            // Like a stale copy, not a failure.
            debug!(request = %k, "finalizer already added; waiting for the newer copy");
            return Ok(Action::requeue(RETRY_STALE));
        }
    }
    let result = result.map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.backoff.succeeded(&k);
    }
    let category = result.as_ref().err().map(Error::category);
    ctx.metrics
        .reconcile(CONTROLLER, started.elapsed(), category);
    result
}

/// Whether the apiserver refused a JSON patch because its `test` operation
/// failed: a bare 422 Invalid without field causes (a schema violation names
/// its fields).
fn is_failed_patch_test(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(ae) if ae.code == 422
        && ae.details.as_ref().is_none_or(|d| d.causes.is_empty()))
}

/// The pipeline of a live request; a failure is reported on the request.
async fn apply(mr: &MachineRequest, ctx: &Context) -> Result<Action, Error> {
    let mut s = Session::load(mr, ctx)?;
    let result = pipeline(&mut s).await;
    if let Err(err) = &result {
        report::failure(&mut s, err).await;
    }
    s.count_machines();
    result
}

async fn pipeline(s: &mut Session<'_>) -> Result<Action, Error> {
    s.observe().await;
    let open = match gate::check(s.ctx, s.mr, &s.status) {
        Ok(open) => open,
        Err(closed) => {
            return report::finish(s, closed.provider.as_ref(), Some(closed.blocked), 0).await
        }
    };
    s.status.provider = Some(open.provider_name.clone());
    settle::pending(s, &open.provider, &open.template).await?;
    observe_drift(s, &open).await;
    // A request pinned to the provider its machines are in launches nothing.
    let headroom = match open.pinned {
        Some(_) => Some(0),
        None => gate::headroom(s.ctx, s.mr, &open.template),
    };
    let mut desired = plan::Desired::of_request(s.mr, &s.status);
    if open.pinned.is_some() {
        // Nothing launches while pinned: no replacement for drift either.
        desired.drifted.clear();
    }
    let plan = plan::plan(&desired, &mut s.status.machines, headroom);
    for id in &plan.newly_lost {
        let m = s.status.machines.iter().find(|m| &m.id == id);
        let why = m.and_then(|m| m.message.clone()).unwrap_or_default();
        let note = format!("machine {id} was stopped or terminated outside hostforge {why}");
        s.event(EventType::Warning, Reason::MachineLost, "Observe", &note)
            .await;
    }
    announce_replacements(s, &plan).await;
    let (new, mut refusal) = match plan.launch {
        0 => (None, open.pinned.clone()),
        n => match act::next_batch(s, &open, n).await {
            Ok(batch) => (Some(batch), None),
            Err(blocked) => (None, Some(blocked)),
        },
    };
    // Intent is written before anything is sent. A reconcile that sends
    // nothing (it copies what the cloud said) writes once, at the end: the
    // write here came to a second status write per observation, 200 of the
    // 400 a return of 100 requests made. Terminating only machines the spec
    // returns needs no mark either: `returnMachines` already holds that
    // intent, and after a crash the plan reads a listed machine that went
    // down as Returned, never Lost. Other terminations (scale-down,
    // replacement) are choices only the status records.
    let chosen = plan
        .terminate
        .iter()
        .any(|id| !desired.return_machines.contains(id));
    let recorded = if new.is_some() || chosen {
        intent::record(s, new).await?
    } else {
        None
    };
    if recorded.is_some() {
        failpoint!("request-after-intent");
    }
    if !plan.terminate.is_empty() {
        failpoint!("request-after-mark");
        act::terminate(s, &open.provider, &plan.terminate).await?;
        failpoint!("request-after-terminate");
    }
    let mut grouped = false;
    if let Some(recorded) = recorded {
        let batch_id = recorded.batch_id().to_string();
        refusal = act::launch(s, &open.provider, &open.template, recorded)
            .await?
            .or(refusal);
        grouped = s
            .status
            .launches
            .iter()
            .any(|b| b.id == batch_id && b.group.is_some());
    }
    let action = report::finish(s, Some(&open.provider), refusal, plan.held_back).await;
    if grouped {
        // One member of a group has written its share; the others may not.
        failpoint!("group-after-member-written");
    }
    action
}

/// Records the template's version the machines are compared with (when it
/// is usable and the request not pinned to another provider), and says so in
/// an Event when drift appears.
async fn observe_drift<P>(s: &mut Session<'_>, open: &gate::Open<P>) {
    drift::stamp(&mut s.status);
    let current = match (
        &open.pinned,
        drift::current(&open.template, &session::now()),
    ) {
        (None, Some(current)) => current,
        _ => return,
    };
    let newly = drift::record(&mut s.status, current);
    if newly.is_empty() {
        return;
    }
    let (_, why) = drift::condition_message(&s.status);
    let policy = if plan::ReplaceOn::of(s.mr).drift {
        "they are replaced (updatePolicy Replace)"
    } else if s.mr.is_hostfactory_owned() {
        "the scheduler is offered them through getReturnRequests"
    } else {
        "they are kept (updatePolicy Never)"
    };
    let note = format!(
        "{} newly drifted ({}); {why}; {policy}",
        newly.len(),
        newly.join(", ")
    );
    info!(request = %s.key(), machines = ?newly, "machines drifted from their template");
    s.event(EventType::Normal, Reason::Drifted, "Observe", &note)
        .await;
}

/// One Event per machine the plan started replacing, and per machine it
/// let go because its replacement runs.
async fn announce_replacements(s: &Session<'_>, plan: &plan::Plan) {
    for (id, why) in &plan.newly_marked {
        let cause = match why {
            ReplaceReason::Rebalance => {
                "the cloud recommended moving off it (rebalancePolicy Replace)"
            }
            ReplaceReason::Unhealthy => "its status check fails (replaceUnhealthy)",
            ReplaceReason::Drifted => {
                "it was launched from an older version of the template (updatePolicy Replace)"
            }
        };
        let note =
            format!("replacing machine {id}: {cause}; it is terminated once its replacement runs");
        info!(request = %s.key(), instance = %id, reason = ?why, "replacing machine");
        s.event(EventType::Normal, Reason::Replacing, "Replace", &note)
            .await;
    }
    for id in &plan.replaced {
        let note = format!("machine {id} is replaced: its replacement runs; terminating it");
        info!(request = %s.key(), instance = %id, "machine replaced");
        s.event(EventType::Normal, Reason::Replaced, "Replace", &note)
            .await;
    }
}

#[cfg(test)]
mod tests;

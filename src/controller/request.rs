//! The MachineRequest controller: turns "N machines from template T" into
//! exactly N instances, across crashes.
//!
//! One reconcile:
//! 1. takes what the poller and the sweep observed (states, adoptions);
//! 2. settles batches still `Pending` from a crash: adopts what carries the
//!    batch tag, otherwise re-sends the identical launch with the same token;
//! 3. plans (pure, [`super::plan`]): marks machines to return, scale down or
//!    report as lost, and the number to launch;
//! 4. writes the intent (marks, the new batch with its token) to status with
//!    optimistic concurrency; if that write fails nothing is sent;
//! 5. terminates and launches, then writes the outcome.
//!
//! Deleting a request terminates every machine tagged for it and removes the
//! finalizer only once the cloud reports them all shutting down or gone.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::finalizer::{finalizer, Error as FinalizerError, Event as Finalize};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{watcher, Controller};
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::launch::{self as batches, Extras};
use super::ownership::Owner;
use super::plan::{self, Desired};
use super::template::truncate;
use super::translate::{self, is_terminating};
use super::{Context, Error};
use crate::api::conditions::{self, DEGRADED, PROGRESSING, READY};
use crate::api::{
    LaunchBatch, LaunchState, MachineCounts, MachineRequest, MachineRequestStatus, MachineState,
    MachineTemplate, RequestPhase, TerminationReason,
};
use crate::failpoint;
use crate::provider::{self, ImageSource, MachineProvider, ProviderError};

/// Label value for this controller in metrics.
const CONTROLLER: &str = "request";
/// Held on every request until all of its machines are terminating.
pub const FINALIZER: &str = "hostforge.io/machines";
/// How often a request waiting on its template looks again (template changes
/// also wake it at once).
const RETRY_BLOCKED: Duration = Duration::from_secs(30);
/// How soon a deleting request looks again while its machines shut down.
const RETRY_DELETING: Duration = Duration::from_secs(2);
/// How soon a request whose launch the cloud refused tries again.
const RETRY_REFUSED: Duration = Duration::from_secs(60);
/// How soon a request held back by the template's maxMachines looks again
/// (template changes, e.g. machinesInUse, also wake it).
const RETRY_HELD_BACK: Duration = Duration::from_secs(10);
/// A request with nothing in flight is still looked at this often.
const RESYNC: Duration = Duration::from_secs(5 * 60);
/// Settled batches kept in status besides pending ones (the newest is always
/// kept so batch numbers only grow).
const KEEP_BATCHES: usize = 20;
/// Machines given back or lost that status keeps listing, oldest dropped first.
const KEEP_GONE: usize = 200;

/// Runs the controller until `shutdown` resolves. Templates wake the requests
/// that use them (`templates` must be the watch that fills `ctx.templates`, see
/// [`super::watch::reflected`]); `wake` carries the tracker's wake-ups.
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<MachineRequest>,
    templates: impl Stream<Item = Result<MachineTemplate, watcher::Error>> + Send + 'static,
    wake: impl Stream<Item = ObjectRef<MachineRequest>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let requests = ctx.requests.clone();
    controller
        .watches_stream(templates, move |mt: MachineTemplate| {
            let ns = mt.namespace();
            let name = mt.name_any();
            requests
                .state()
                .into_iter()
                .filter(|r| r.namespace() == ns && r.spec.template_ref.name == name)
                .map(|r| ObjectRef::from_obj(r.as_ref()))
                .collect::<Vec<_>>()
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
    let delay = ctx.backoff.failed(&key(&mr));
    warn!(request = %key(&mr), category = err.category(), error = %err, retry_in = ?delay, "request reconcile failed");
    Action::requeue(delay)
}

/// One reconcile of one request (see the module doc).
pub async fn reconcile(mr: Arc<MachineRequest>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = mr
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let api: Api<MachineRequest> = Api::namespaced(ctx.client.clone(), &namespace);
    let k = key(&mr);
    if let Some(rv) = mr.resource_version() {
        if ctx.superseded.is_stale(&k, &rv) {
            // The watch has not caught up with our own last write; it will
            // deliver the newer copy (and with it another reconcile).
            debug!(request = %k, "stale copy from the watch cache; waiting for the newer one");
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
    }
    let result = finalizer(&api, FINALIZER, mr, |event| async {
        match event {
            Finalize::Apply(mr) => apply(&mr, &ctx).await,
            Finalize::Cleanup(mr) => cleanup(&mr, &ctx).await,
        }
    })
    .await;
    if let Err(FinalizerError::AddFinalizer(e)) = &result {
        if is_failed_patch_test(e) {
            // The copy lacked the finalizer that an earlier reconcile already
            // added (the watch is behind): its guarded patch was refused.
            // Like a stale copy, not a failure.
            debug!(request = %k, "finalizer already added; waiting for the newer copy");
            return Ok(Action::requeue(Duration::from_millis(500)));
        }
    }
    let result = result.map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.backoff.succeeded(&k);
    }
    ctx.metrics.reconcile(
        CONTROLLER,
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    result
}

/// Whether the apiserver refused a JSON patch because its `test` operation
/// failed: a bare 422 Invalid without field causes (a schema violation names
/// its fields).
fn is_failed_patch_test(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(ae) if ae.code == 422
        && ae.details.as_ref().is_none_or(|d| d.causes.is_empty()))
}

/// The request being reconciled: its status as it will be written, and the
/// resourceVersion every write is conditional on.
struct Session<'a> {
    ctx: &'a Context,
    mr: &'a MachineRequest,
    api: Api<MachineRequest>,
    status: MachineRequestStatus,
    written: MachineRequestStatus,
    resource_version: Option<String>,
    owner: Owner,
}

impl<'a> Session<'a> {
    fn new(mr: &'a MachineRequest, ctx: &'a Context) -> Result<Session<'a>, Error> {
        let namespace = mr
            .namespace()
            .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
        let uid = mr.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
        let status = mr.status.clone().unwrap_or_default();
        Ok(Session {
            ctx,
            mr,
            api: Api::namespaced(ctx.client.clone(), &namespace),
            written: status.clone(),
            status,
            resource_version: mr.resource_version(),
            owner: Owner {
                cluster: ctx.config.cluster_name.clone(),
                namespace,
                name: mr.name_any(),
                uid,
                template: mr.spec.template_ref.name.clone(),
            },
        })
    }

    /// Writes status if it changed, conditional on the resourceVersion last seen:
    /// a concurrent writer makes this fail instead of being overwritten.
    async fn write(&mut self) -> Result<(), Error> {
        if self.status == self.written {
            return Ok(());
        }
        let mut body = MachineRequest::new(&self.owner.name, self.mr.spec.clone());
        body.metadata.namespace = Some(self.owner.namespace.clone());
        body.metadata.resource_version = self.resource_version.clone();
        body.status = Some(self.status.clone());
        let updated = self
            .api
            .replace_status(&self.owner.name, &PostParams::default(), &body)
            .await
            .map_err(|source| Error::Kube {
                action: "replace MachineRequest status",
                source,
            })?;
        self.ctx.metrics.status_write(CONTROLLER);
        if let Some(old) = &self.resource_version {
            self.ctx.superseded.record(&key(self.mr), old);
        }
        self.resource_version = updated.resource_version();
        self.written = self.status.clone();
        Ok(())
    }

    async fn event(&self, type_: EventType, reason: &str, action: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(&note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(err) = self
            .ctx
            .recorder
            .publish(&event, &self.mr.object_ref(&()))
            .await
        {
            warn!(request = %key(self.mr), error = %err, "publishing event failed");
        }
    }

    /// Copies the tracker's observations and interruption notices into status
    /// and adopts machines the sweep found tagged for this request. Returns the
    /// notices that are new to status.
    fn observe(&mut self) -> Vec<provider::InterruptionNotice> {
        let tracker = &self.ctx.tracker;
        let mut noticed = Vec::new();
        for m in &mut self.status.machines {
            if m.state == MachineState::Terminated {
                continue;
            }
            if let Some(seen) = tracker.observed(&m.id) {
                translate::update(m, &seen);
            }
            if m.interruption_notice_time.is_none() {
                if let Some(notice) = tracker.notice(&m.id) {
                    // An unreadable time still counts as noticed (now), so
                    // the notice is announced once, not at every reconcile.
                    m.interruption_notice_time =
                        Some(translate::parse_time(&notice.noticed_at).unwrap_or_else(now));
                    noticed.push(notice);
                }
            }
        }
        let unlisted = tracker.take_unlisted(&self.owner.uid);
        self.adopt(unlisted);
        noticed
    }

    /// One Warning Event per new interruption notice, so `kubectl describe`
    /// and event pipelines show which machines the cloud is taking back.
    async fn announce(&self, noticed: &[provider::InterruptionNotice]) {
        for n in noticed {
            warn!(request = %key(self.mr), instance = %n.id, action = %n.action,
                noticed_at = %n.noticed_at, "spot interruption notice");
            let note = format!(
                "the cloud will {} spot machine {} two minutes after {}",
                n.action, n.id, n.noticed_at
            );
            self.event(EventType::Warning, "SpotInterruption", "Observe", note)
                .await;
        }
    }

    /// Adds machines tagged for this request that status does not list yet;
    /// returns how many were added.
    fn adopt(&mut self, machines: Vec<provider::Machine>) -> usize {
        let known: BTreeSet<String> = self.status.machines.iter().map(|m| m.id.clone()).collect();
        let mut added = 0;
        for m in machines {
            if known.contains(&m.id) || m.state.is_terminating() {
                continue;
            }
            info!(request = %key(self.mr), instance = %m.id, "adopting machine tagged for this request");
            let batch = m.tags.get(super::ownership::BATCH_TAG).cloned();
            self.status
                .machines
                .push(translate::new_machine(&m, batch.as_deref()));
            added += 1;
        }
        added
    }
}

/// Why a request cannot launch now: the condition reason and message.
struct Blocked {
    reason: &'static str,
    message: String,
}

/// The template if it is usable: it exists, is Ready for its current spec, and
/// has an image.
fn usable_template(
    ctx: &Context,
    mr: &MachineRequest,
    ns: &str,
) -> Result<Arc<MachineTemplate>, Blocked> {
    let name = &mr.spec.template_ref.name;
    let Some(mt) = ctx.templates.get(&ObjectRef::new(name).within(ns)) else {
        return Err(Blocked {
            reason: "TemplateNotFound",
            message: format!("MachineTemplate {ns}/{name} does not exist; waiting for it"),
        });
    };
    let status = mt.status.clone().unwrap_or_default();
    if !conditions::is_true(&status.conditions, READY) {
        let why = conditions::find_condition(&status.conditions, READY)
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_else(|| "not reconciled yet".into());
        return Err(Blocked {
            reason: "TemplateNotReady",
            message: format!("MachineTemplate {name} is not Ready ({why}); waiting for it"),
        });
    }
    if status.observed_generation != mt.metadata.generation || status.resolved_image.is_none() {
        return Err(Blocked {
            reason: "TemplateNotReady",
            message: format!(
                "MachineTemplate {name} changed; waiting for its image to be resolved"
            ),
        });
    }
    Ok(mt)
}

fn provider_name(
    ctx: &Context,
    mt: Option<&MachineTemplate>,
    status: &MachineRequestStatus,
) -> String {
    mt.and_then(|t| t.spec.provider.clone())
        .or_else(|| status.provider.clone())
        .unwrap_or_else(|| ctx.providers.default_name().to_string())
}

async fn apply(mr: &MachineRequest, ctx: &Context) -> Result<Action, Error> {
    let mut s = Session::new(mr, ctx)?;
    let noticed = s.observe();
    s.announce(&noticed).await;
    let template = usable_template(ctx, mr, &s.owner.namespace);
    let provider_name = provider_name(ctx, template.as_ref().ok().map(|t| t.as_ref()), &s.status);
    let Some(provider) = ctx.providers.get(&provider_name) else {
        let blocked = Blocked {
            reason: "TemplateNotReady",
            message: format!("provider {provider_name:?} is not configured"),
        };
        return finish(&mut s, None, Some(blocked), 0).await;
    };
    let template = match template {
        Ok(t) => t,
        Err(blocked) => return finish(&mut s, Some(&provider), Some(blocked), 0).await,
    };
    s.status.provider = Some(provider_name.clone());

    settle_pending(&mut s, &provider, &template).await?;

    // Plan.
    let desired = Desired {
        count: mr.spec.count,
        return_machines: mr.spec.return_machines.iter().cloned().collect(),
        replace_lost: mr.spec.replace_lost,
    };
    let headroom = headroom(ctx, mr, &template, &s.owner);
    let plan = plan::plan(&desired, &mut s.status.machines, headroom);
    for id in &plan.newly_lost {
        let msg = s
            .status
            .machines
            .iter()
            .find(|m| &m.id == id)
            .and_then(|m| m.message.clone())
            .unwrap_or_default();
        s.event(
            EventType::Warning,
            "MachineLost",
            "Observe",
            format!("machine {id} was stopped or terminated outside hostforge {msg}"),
        )
        .await;
    }

    // Choose and record the next batch.
    let mut refusal: Option<Blocked> = None;
    let mut new_batch: Option<(String, provider::LaunchSpec)> = None;
    if plan.launch > 0 {
        match batches::choose(&template.spec, &provider_name, &ctx.capacity) {
            Some(choice) => {
                let image_id = template
                    .status
                    .as_ref()
                    .and_then(|st| st.resolved_image.as_ref())
                    .map(|i| i.id.clone())
                    .unwrap_or_default();
                let mut batch = batches::new_batch(
                    &s.owner.uid,
                    batches::next_seq(&s.status.launches),
                    plan.launch.min(batches::MAX_BATCH),
                    &choice,
                    &template.spec,
                    &image_id,
                    now(),
                );
                match launch_spec(&s, &provider, &template, &batch).await {
                    Ok(spec) => {
                        batch.params_digest = batches::digest(&spec);
                        new_batch = Some((batch.id.clone(), spec));
                        s.status.launches.push(batch);
                    }
                    Err(blocked) => refusal = Some(blocked),
                }
            }
            None => {
                refusal = Some(Blocked {
                    reason: "CapacityUnavailable",
                    message: last_capacity_message(&s.status).unwrap_or_else(|| {
                        "no instance type and subnet of the template has capacity now".into()
                    }),
                })
            }
        }
    }

    // Intent first: marks and the new batch, or nothing is sent.
    s.write().await?;
    if new_batch.is_some() {
        failpoint!("request-after-intent");
    }

    if !plan.terminate.is_empty() {
        failpoint!("request-after-mark");
        terminate(&mut s, &provider, &plan.terminate).await?;
    }
    if let Some((batch_id, spec)) = new_batch {
        if let Some(blocked) = send(&mut s, &provider, &batch_id, &spec).await? {
            refusal = Some(blocked);
        }
    }
    finish(&mut s, Some(&provider), refusal, plan.held_back).await
}

/// Builds the launch spec of `batch` (reads user data and the image's root device).
async fn launch_spec(
    s: &Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
    batch: &LaunchBatch,
) -> Result<provider::LaunchSpec, Blocked> {
    let user_data = match &template.spec.user_data {
        None => None,
        Some(source) => {
            let secrets: Api<Secret> = Api::namespaced(s.ctx.client.clone(), &s.owner.namespace);
            let r = &source.secret_ref;
            let secret = secrets.get_opt(&r.name).await.map_err(|e| Blocked {
                reason: "UserDataUnavailable",
                message: format!("reading Secret {}: {e}", r.name),
            })?;
            let value = secret
                .and_then(|sec| sec.data)
                .and_then(|mut d| d.remove(&r.key))
                .ok_or_else(|| Blocked {
                    reason: "UserDataUnavailable",
                    message: format!(
                        "Secret {} has no key {:?} (spec.userData.secretRef)",
                        r.name, r.key
                    ),
                })?;
            Some(value.0)
        }
    };
    let root_device_name = match (&template.spec.root_volume, &batch.image_id) {
        (Some(_), Some(image)) => {
            s.ctx
                .images
                .resolve(provider, &ImageSource::Id(image.clone()))
                .await
                .map_err(|e| Blocked {
                    reason: "ImageNotFound",
                    message: format!("looking up image {image}: {e}"),
                })?
                .0
                .root_device_name
        }
        _ => None,
    };
    Ok(batches::spec_for(
        batch,
        &template.spec,
        &Extras {
            owner: &s.owner,
            root_device_name,
            user_data,
        },
    ))
}

/// Sends a recorded batch and records the outcome in status (not written yet).
/// A definitive refusal marks the batch Failed and is returned as the reason
/// the request is degraded; an unclear failure leaves it Pending, to be
/// settled (adopted or re-sent with the same token) by the next reconcile.
async fn send(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    batch_id: &str,
    spec: &provider::LaunchSpec,
) -> Result<Option<Blocked>, Error> {
    let outcome = provider.launch(spec).await;
    failpoint!("request-after-launch");
    let provider_name = provider.name().to_string();
    let Some(index) = s.status.launches.iter().position(|b| b.id == batch_id) else {
        return Ok(None);
    };
    match outcome {
        Ok(machines) => {
            s.ctx.tracker.record(machines.clone());
            s.ctx.metrics.launched(&provider_name, machines.len());
            let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
            let known: BTreeSet<String> = s.status.machines.iter().map(|m| m.id.clone()).collect();
            for m in &machines {
                if !known.contains(&m.id) {
                    s.status
                        .machines
                        .push(translate::new_machine(m, Some(batch_id)));
                }
            }
            let batch = &mut s.status.launches[index];
            batch.state = LaunchState::Launched;
            batch.message = (machines.len() < spec.count as usize)
                .then(|| format!("the cloud launched {} of {}", machines.len(), spec.count));
            info!(request = %key(s.mr), batch = %batch_id, launched = ids.len(), "launched");
            s.event(
                EventType::Normal,
                "Launched",
                "Launch",
                format!(
                    "batch {batch_id}: launched {} ({})",
                    ids.len(),
                    ids.join(", ")
                ),
            )
            .await;
            Ok(None)
        }
        Err(err) if is_definitive(&err) => {
            let batch = &mut s.status.launches[index];
            batch.state = LaunchState::Failed;
            batch.message = Some(err.to_string());
            let reason = if matches!(err, ProviderError::Capacity(_)) {
                let offerings = batches::offerings_of(batch, &provider_name);
                s.ctx.capacity.mark_unavailable(offerings);
                "CapacityUnavailable"
            } else {
                "LaunchFailed"
            };
            warn!(request = %key(s.mr), batch = %batch_id, error = %err, "launch refused");
            s.event(
                EventType::Warning,
                reason,
                "Launch",
                format!("batch {batch_id}: {err}"),
            )
            .await;
            Ok(Some(Blocked {
                reason,
                message: err.to_string(),
            }))
        }
        Err(err) => {
            // Maybe sent, maybe not: keep it Pending and let the next reconcile
            // settle it. Persist what we know so far first.
            s.status.launches[index].message = Some(err.to_string());
            s.write().await?;
            Err(Error::Provider {
                action: format!("launching batch {batch_id}"),
                source: err,
            })
        }
    }
}

/// Whether the cloud refused a launch for sure (nothing was created).
fn is_definitive(err: &ProviderError) -> bool {
    matches!(
        err,
        ProviderError::Capacity(_)
            | ProviderError::InvalidParameter(_)
            | ProviderError::AccessDenied(_)
            | ProviderError::NotFound(_)
    )
}

/// Settles batches left Pending by a crash or an unclear failure: machines
/// carrying the batch tag are adopted; if there are none, the identical launch
/// is re-sent with the same token (EC2 then returns the first launch's machines
/// if it did happen). A batch whose parameters changed since is not re-sent.
async fn settle_pending(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
) -> Result<(), Error> {
    let pending: Vec<LaunchBatch> = s
        .status
        .launches
        .iter()
        .filter(|b| b.state == LaunchState::Pending)
        .cloned()
        .collect();
    for batch in pending {
        let found = s
            .ctx
            .batch_lookups
            .find(provider, &s.owner.cluster, &s.owner.uid, &batch.id)
            .await
            .map_err(|source| Error::Provider {
                action: format!("settling batch {}", batch.id),
                source,
            })?;
        if !found.is_empty() {
            if found.len() < usize::try_from(batch.count).unwrap_or(0) {
                // EC2 may have launched fewer (MaxCount is a ceiling), or a
                // tag-filtered read may not show all of them yet: the next
                // sweep lists everything and adopts any that show up later.
                s.ctx.full_sweep_wanted.store(true, Ordering::SeqCst);
            }
            s.ctx.tracker.record(found.clone());
            let adopted = s.adopt(found);
            if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) {
                b.state = LaunchState::Launched;
                b.message = Some(format!(
                    "settled after a restart: {adopted} machines adopted"
                ));
            }
            info!(request = %key(s.mr), batch = %batch.id, adopted, "settled pending batch by its tag");
            continue;
        }
        let spec = match launch_spec(s, provider, template, &batch).await {
            Ok(spec) => spec,
            Err(blocked) => {
                fail_batch(s, &batch.id, format!("not re-sent: {}", blocked.message));
                continue;
            }
        };
        if batches::digest(&spec) != batch.params_digest {
            s.ctx.full_sweep_wanted.store(true, Ordering::SeqCst);
            fail_batch(
                s,
                &batch.id,
                "not re-sent: the template changed after the batch was recorded; a new batch replaces it (the sweep adopts its machines if the first send did launch)".into(),
            );
            continue;
        }
        info!(request = %key(s.mr), batch = %batch.id, token = %batch.token, "re-sending pending batch with its token");
        if let Some(blocked) = send(s, provider, &batch.id, &spec).await? {
            debug!(request = %key(s.mr), reason = blocked.reason, "re-sent batch refused");
        }
    }
    Ok(())
}

fn fail_batch(s: &mut Session<'_>, id: &str, message: String) {
    if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == id) {
        b.state = LaunchState::Failed;
        b.message = Some(message);
    }
}

/// Terminates `ids`; an id the cloud does not know (yet) does not stop the
/// others. Terminated machines read as shutting-down right away, as EC2 answers.
async fn terminate(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    ids: &[String],
) -> Result<(), Error> {
    let accepted = terminate_ids(provider, ids)
        .await
        .map_err(|source| Error::Provider {
            action: "terminating machines".into(),
            source,
        })?;
    for m in &mut s.status.machines {
        if accepted.contains(&m.id) && !is_terminating(m.state) {
            m.state = MachineState::ShuttingDown;
            m.result = translate::result(m.state, m.termination_reason);
        }
    }
    s.ctx
        .tracker
        .set_state(&accepted, provider::MachineState::ShuttingDown);
    let mut by_reason: std::collections::BTreeMap<&'static str, Vec<String>> = Default::default();
    for m in &s.status.machines {
        if accepted.contains(&m.id) {
            by_reason
                .entry(reason_str(m.termination_reason))
                .or_default()
                .push(m.id.clone());
        }
    }
    for (reason, ids) in by_reason {
        s.ctx.metrics.terminated(provider.name(), reason, ids.len());
        s.event(
            EventType::Normal,
            "Terminating",
            "Terminate",
            format!("{reason}: terminating {}", ids.join(", ")),
        )
        .await;
    }
    Ok(())
}

/// Terminates in one call; if the cloud rejects the batch because one id is
/// unknown, each id is tried alone. Returns the ids the cloud accepted.
pub(crate) async fn terminate_ids(
    provider: &Arc<dyn MachineProvider>,
    ids: &[String],
) -> Result<BTreeSet<String>, ProviderError> {
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    match provider.terminate(ids).await {
        Ok(()) => Ok(ids.iter().cloned().collect()),
        Err(ProviderError::NotFound(_)) => {
            let mut accepted = BTreeSet::new();
            for id in ids {
                match provider.terminate(std::slice::from_ref(id)).await {
                    Ok(()) => {
                        accepted.insert(id.clone());
                    }
                    Err(ProviderError::NotFound(_)) => {
                        debug!(instance = %id, "not visible to terminate yet");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(accepted)
        }
        Err(e) => Err(e),
    }
}

fn reason_str(r: Option<TerminationReason>) -> &'static str {
    match r {
        Some(TerminationReason::Returned) => "Returned",
        Some(TerminationReason::ScaledDown) => "ScaledDown",
        Some(TerminationReason::Lost) => "Lost",
        Some(TerminationReason::RequestDeleted) => "RequestDeleted",
        None => "Unknown",
    }
}

/// How many more machines the template's `maxMachines` allows this request.
fn headroom(
    ctx: &Context,
    mr: &MachineRequest,
    mt: &MachineTemplate,
    owner: &Owner,
) -> Option<i32> {
    let max = mt.spec.max_machines?;
    let in_use: i32 = ctx
        .requests
        .state()
        .iter()
        .filter(|r| {
            r.namespace().as_deref() == Some(owner.namespace.as_str())
                && r.spec.template_ref.name == mr.spec.template_ref.name
                && r.uid().as_deref() != Some(owner.uid.as_str())
        })
        .map(|r| machines_in_use(r.status.as_ref()))
        .sum();
    let mine = mr
        .status
        .as_ref()
        .map(|st| st.machines.iter().filter(|m| plan::is_live(m)).count() as i32)
        .unwrap_or(0);
    Some(max - in_use - mine)
}

/// Live machines of a request plus machines of launches not settled yet: what
/// it holds against its template's `maxMachines`.
pub fn machines_in_use(status: Option<&MachineRequestStatus>) -> i32 {
    let Some(st) = status else { return 0 };
    let live = st.machines.iter().filter(|m| plan::is_live(m)).count() as i32;
    let pending: i32 = st
        .launches
        .iter()
        .filter(|b| b.state == LaunchState::Pending)
        .map(|b| b.count)
        .sum();
    live + pending
}

fn last_capacity_message(status: &MachineRequestStatus) -> Option<String> {
    status
        .launches
        .iter()
        .rev()
        .find(|b| b.state == LaunchState::Failed)
        .and_then(|b| b.message.clone())
        .map(|m| format!("every instance type and subnet of the template is out of capacity; last answer: {m}"))
}

/// Counts, conditions, phase, pruning; writes status if anything changed,
/// registers the machines to poll, and decides when to look again.
async fn finish(
    s: &mut Session<'_>,
    provider: Option<&Arc<dyn MachineProvider>>,
    blocked: Option<Blocked>,
    held_back: i32,
) -> Result<Action, Error> {
    let generation = s.mr.metadata.generation;
    let count = s.mr.spec.count;
    prune(&mut s.status);
    let st = &mut s.status;
    let live = st.machines.iter().filter(|m| plan::is_live(m)).count() as i32;
    let running = st
        .machines
        .iter()
        .filter(|m| plan::is_live(m) && m.state == MachineState::Running)
        .count() as i32;
    let pending_batches = st.launches.iter().any(|b| b.state == LaunchState::Pending);
    let leaving: Vec<String> = st
        .machines
        .iter()
        .filter(|m| {
            m.termination_reason.is_some()
                && m.state != MachineState::Terminated
                && m.state != MachineState::Stopped
        })
        .map(|m| m.id.clone())
        .collect();
    st.counts = MachineCounts {
        desired: count,
        pending: plan::pending(&st.machines) as i32,
        running,
        returned: st
            .machines
            .iter()
            .filter(|m| m.termination_reason == Some(TerminationReason::Returned))
            .count() as i32,
        failed: st
            .machines
            .iter()
            .filter(|m| m.termination_reason == Some(TerminationReason::Lost))
            .count() as i32,
    };
    st.observed_generation = generation;
    // Lost machines a request does not replace keep their place in count.
    let kept_lost = if s.mr.spec.replace_lost {
        0
    } else {
        st.counts.failed
    };
    let target = (count - kept_lost).max(0);
    let ready = running == target && live == target && !pending_batches;
    let t = now();
    let degraded = blocked
        .as_ref()
        .map(|b| (b.reason, b.message.clone()))
        .or_else(|| {
            (held_back > 0).then(|| {
                (
                    "MaxMachinesReached",
                    format!("{held_back} machines wait: the template's maxMachines is reached"),
                )
            })
        });
    let ready_cond = if ready {
        conditions::new_condition(
            READY,
            true,
            "AllRunning",
            format!("{running}/{count} machines running"),
            generation,
            t.clone(),
        )
    } else if let Some((reason, message)) = &degraded {
        conditions::new_condition(READY, false, reason, message.clone(), generation, t.clone())
    } else {
        conditions::new_condition(
            READY,
            false,
            "Provisioning",
            format!("{running}/{count} machines running"),
            generation,
            t.clone(),
        )
    };
    let progressing =
        !ready && (live != target || running != live || pending_batches) || !leaving.is_empty();
    let progressing_cond = if progressing {
        let (reason, msg) = if !leaving.is_empty() && live <= target {
            (
                "Terminating",
                format!("{} machines terminating", leaving.len()),
            )
        } else {
            (
                "Launching",
                format!("{live}/{count} machines launched, {running} running"),
            )
        };
        conditions::new_condition(PROGRESSING, true, reason, msg, generation, t.clone())
    } else {
        conditions::new_condition(
            PROGRESSING,
            false,
            "Stable",
            "nothing in flight",
            generation,
            t.clone(),
        )
    };
    let degraded_cond = match &degraded {
        Some((reason, message)) => {
            conditions::new_condition(DEGRADED, true, reason, message.clone(), generation, t)
        }
        None => conditions::new_condition(DEGRADED, false, "AsExpected", "", generation, t),
    };
    let was_degraded = conditions::find_condition(&st.conditions, DEGRADED)
        .map(|c| (c.status.clone(), c.reason.clone()));
    conditions::set_condition(&mut st.conditions, ready_cond);
    conditions::set_condition(&mut st.conditions, progressing_cond);
    conditions::set_condition(&mut st.conditions, degraded_cond);
    st.phase = Some(if ready {
        RequestPhase::Ready
    } else if degraded.is_some() {
        RequestPhase::Degraded
    } else if st.machines.is_empty() && st.launches.is_empty() {
        RequestPhase::Pending
    } else {
        RequestPhase::Provisioning
    });
    let now_degraded = conditions::find_condition(&st.conditions, DEGRADED)
        .map(|c| (c.status.clone(), c.reason.clone()));
    s.write().await?;
    if was_degraded != now_degraded {
        if let Some((reason, message)) = &degraded {
            s.event(EventType::Warning, reason, "Reconcile", message.clone())
                .await;
        }
    }

    // Poll what is changing: launches not running yet, machines on their way out.
    let watch: Vec<String> = s
        .status
        .machines
        .iter()
        .filter(|m| {
            (plan::is_live(m) && m.state != MachineState::Running)
                || (m.termination_reason.is_some()
                    && !matches!(m.state, MachineState::Terminated | MachineState::Stopped))
        })
        .map(|m| m.id.clone())
        .collect();
    let busy = !watch.is_empty();
    if let Some(p) = provider {
        s.ctx
            .tracker
            .watch(ObjectRef::from_obj(s.mr), p.name(), watch);
    }
    let capacity_retry = s
        .ctx
        .capacity
        .next_expiry()
        .map(|d| d + Duration::from_millis(100));
    Ok(match (&blocked, degraded.as_ref().map(|d| d.0)) {
        (Some(_), Some("CapacityUnavailable")) => {
            Action::requeue(capacity_retry.unwrap_or(RETRY_REFUSED))
        }
        (Some(b), _) if b.reason.starts_with("Template") => Action::requeue(RETRY_BLOCKED),
        (Some(_), _) => Action::requeue(RETRY_REFUSED),
        // Waiting for another request of the template to release machines.
        _ if held_back > 0 => Action::requeue(RETRY_HELD_BACK),
        // More to launch (batch cap, partial capacity): go on at once.
        _ if live < target && !pending_batches && held_back == 0 => {
            Action::requeue(Duration::from_millis(200))
        }
        _ if busy => Action::requeue(Duration::from_secs(60)),
        _ => Action::requeue(RESYNC),
    })
}

/// Drops old settled batches and old gone machines, so status stays small.
fn prune(st: &mut MachineRequestStatus) {
    let settled: Vec<usize> = (0..st.launches.len())
        .filter(|i| st.launches[*i].state != LaunchState::Pending)
        .collect();
    if settled.len() > KEEP_BATCHES {
        let last = st.launches.len() - 1;
        let drop: BTreeSet<usize> = settled
            .into_iter()
            .filter(|i| *i != last)
            .take(st.launches.len() - KEEP_BATCHES)
            .collect();
        let mut i = 0;
        st.launches.retain(|_| {
            let keep = !drop.contains(&i);
            i += 1;
            keep
        });
    }
    let gone: Vec<usize> = (0..st.machines.len())
        .filter(|i| {
            let m = &st.machines[*i];
            m.termination_reason.is_some() && m.state == MachineState::Terminated
        })
        .collect();
    if gone.len() > KEEP_GONE {
        let drop: BTreeSet<usize> = gone
            .into_iter()
            .take(st.machines.len() - KEEP_GONE)
            .collect();
        let mut i = 0;
        st.machines.retain(|_| {
            let keep = !drop.contains(&i);
            i += 1;
            keep
        });
    }
}

/// Deletion: terminate every machine tagged for the request (and every one
/// status lists), and release the finalizer once all are shutting down or gone.
async fn cleanup(mr: &MachineRequest, ctx: &Context) -> Result<Action, Error> {
    let mut s = Session::new(mr, ctx)?;
    let template = ctx
        .templates
        .get(&ObjectRef::new(&mr.spec.template_ref.name).within(&s.owner.namespace));
    let provider_name = provider_name(ctx, template.as_deref(), &s.status);
    let Some(provider) = ctx.providers.get(&provider_name) else {
        warn!(request = %key(mr), provider = %provider_name, "provider not configured; cannot terminate machines, releasing the request");
        return Ok(Action::await_change());
    };
    let found = provider
        .describe_owned(&s.owner.request_filter())
        .await
        .map_err(|source| Error::Provider {
            action: "listing the request's machines".into(),
            source,
        })?;
    ctx.tracker.record(found.clone());
    s.adopt(found.clone());
    let seen: BTreeSet<String> = found.iter().map(|m| m.id.clone()).collect();
    for m in &mut s.status.machines {
        if let Some(f) = found.iter().find(|f| f.id == m.id) {
            translate::update(m, f);
        }
        if m.termination_reason.is_none() {
            m.termination_reason = Some(TerminationReason::RequestDeleted);
        }
        m.result = translate::result(m.state, m.termination_reason);
    }
    let to_terminate: Vec<String> = found
        .iter()
        .filter(|m| !m.state.is_terminating())
        .map(|m| m.id.clone())
        .collect();
    // Listed but not visible: give the cloud's eventual consistency the grace period.
    let grace = ctx.config.gc_grace_period;
    let invisible_young = s
        .status
        .machines
        .iter()
        .filter(|m| !seen.contains(&m.id) && !is_terminating(m.state))
        .any(|m| age(m.launch_time.as_ref()).is_none_or(|a| a < grace));
    if !to_terminate.is_empty() {
        terminate(&mut s, &provider, &to_terminate).await?;
    }
    let st = &mut s.status;
    st.phase = Some(RequestPhase::Deleting);
    let generation = mr.metadata.generation;
    conditions::set_condition(
        &mut st.conditions,
        conditions::new_condition(
            READY,
            false,
            "Deleting",
            "terminating all machines",
            generation,
            now(),
        ),
    );
    if let Err(err) = s.write().await {
        debug!(request = %key(mr), error = %err, "status write while deleting failed");
    }
    if to_terminate.is_empty() && !invisible_young {
        let ids: Vec<String> = s.status.machines.iter().map(|m| m.id.clone()).collect();
        ctx.tracker
            .forget(&ObjectRef::from_obj(mr), &s.owner.uid, &ids);
        info!(request = %key(mr), machines = ids.len(), "all machines terminating; releasing the finalizer");
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(RETRY_DELETING))
}

fn age(t: Option<&Time>) -> Option<Duration> {
    let t = t?;
    let secs = Timestamp::now().as_second() - t.0.as_second();
    u64::try_from(secs).ok().map(Duration::from_secs)
}

fn now() -> Time {
    Time(Timestamp::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(status: serde_json::Value) -> kube::Error {
        kube::Error::Api(Box::new(serde_json::from_value(status).expect("a Status")))
    }

    #[test]
    fn a_refused_patch_test_is_told_from_a_schema_violation() {
        let refused = api_error(serde_json::json!({
            "status": "Failure", "code": 422, "reason": "Invalid",
            "message": "the server rejected our request due to an error in our request",
            "details": {"causes": []}
        }));
        assert!(is_failed_patch_test(&refused));
        let invalid = api_error(serde_json::json!({
            "status": "Failure", "code": 422, "reason": "Invalid",
            "message": "MachineRequest.hostforge.io \"a\" is invalid: spec.count: Invalid value",
            "details": {"causes": [{"reason": "FieldValueInvalid", "field": "spec.count"}]}
        }));
        assert!(!is_failed_patch_test(&invalid));
        let conflict = api_error(serde_json::json!({
            "status": "Failure", "code": 409, "reason": "Conflict", "message": "conflict"
        }));
        assert!(!is_failed_patch_test(&conflict));
    }
}

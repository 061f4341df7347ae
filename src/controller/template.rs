//! The MachineTemplate controller: resolves the template's image, checks what
//! the schema cannot (provider, subnets, security groups, instance types), and
//! reports it as `status.resolvedImage` and the `Ready` condition.
//!
//! An unchanged template costs nothing: the image comes from the shared TTL
//! cache, the provider checks run only when the spec changed or the template
//! is not Ready, and status is patched only when something but time changed.
//!
//! Status also carries what schedulers advertise for the template (HostFactory's
//! getAvailableTemplates): `instanceTypeInfo`, the first instance type's size
//! (cached per provider and type by the adapter), and `machinesInUse`, the live
//! machines of every request using the template. Requests changing trigger a
//! reconcile of their template, through a watch of this controller's own (see
//! `usage.rs`) so the count is never read from a store that lags the trigger.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::runtime::Controller;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

pub mod base_template;
mod evaluate;
mod interfaces;
pub mod launch_check;
pub mod namespaces;
pub mod selection;
mod usage;

use super::reason::Reason;
use super::{events, Context, Error};
use crate::api::conditions::{self, FALSE, LAUNCH_VALIDATED, READY};
use crate::api::{
    ImageSourceKind, LaunchValidation, MachineRequest, MachineTemplate, MachineTemplateStatus,
    ResolvedImage,
};
use evaluate::{evaluate, NotReady, Ready, RETRY_TRANSIENT};
use launch_check::Check;

/// Label value for this controller in metrics.
const CONTROLLER: &str = "template";
/// Field manager of hostforge's status patches (server-side apply).
pub const FIELD_MANAGER: &str = "hostforge";
/// Runs the controller until `shutdown` resolves. MachineRequests changing
/// trigger their template too (for `status.machinesInUse`).
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<MachineTemplate>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let requests: Api<MachineRequest> = match &ctx.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (store, trigger) = usage::watch(requests);
    controller
        .watches_stream(trigger, usage::template_of)
        .graceful_shutdown_on(shutdown)
        .run(
            move |mt, ctx| {
                let store = store.clone();
                async move { reconcile_with_usage(mt, ctx, Some(&store)).await }
            },
            error_policy,
            ctx,
        )
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => debug!(template = %obj.name, "reconciled"),
                Err(err) => warn!(error = %err, "template reconcile failed"),
            }
        })
        .await;
}

fn error_policy(mt: Arc<MachineTemplate>, err: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff.failed(&backoff_key(&mt));
    warn!(template = %mt.name_any(), category = err.category(), error = %err, retry_in = ?delay, "retrying template");
    events::spawn_failure(ctx, mt.object_ref(&()), err);
    Action::requeue(delay)
}

fn backoff_key(mt: &MachineTemplate) -> String {
    format!(
        "template:{}/{}",
        mt.namespace().unwrap_or_default(),
        mt.name_any()
    )
}

/// One reconcile of one template (see the module doc); machines in use are
/// counted from the context's request store.
pub async fn reconcile(mt: Arc<MachineTemplate>, ctx: Arc<Context>) -> Result<Action, Error> {
    reconcile_with_usage(mt, ctx, None).await
}

/// [`reconcile`], counting machines in use from `usage` (the controller's own
/// request watch) when given, else from `ctx.requests`.
async fn reconcile_with_usage(
    mt: Arc<MachineTemplate>,
    ctx: Arc<Context>,
    usage: Option<&Store<MachineRequest>>,
) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_template(&mt, &ctx, usage.unwrap_or(&ctx.requests)).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&backoff_key(&mt));
    }
    ctx.metrics.reconcile(
        CONTROLLER,
        started.elapsed(),
        result.as_ref().err().map(Error::category),
    );
    result
}

async fn reconcile_template(
    mt: &MachineTemplate,
    ctx: &Context,
    requests: &Store<MachineRequest>,
) -> Result<Action, Error> {
    let namespace = mt
        .namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let name = mt.name_any();
    let generation = mt.metadata.generation;
    let old_status = mt.status.clone().unwrap_or_default();

    let outcome = evaluate(mt, &old_status, generation, ctx).await;

    let mut status = old_status.clone();
    // What the selectors chose is shown while the template is Ready (and
    // cleared otherwise: the Ready condition says what failed).
    let selected = outcome.as_ref().ok().and_then(|r| r.selected.clone());
    status.selected_subnets = selected
        .as_ref()
        .map(|s| s.subnets.clone())
        .unwrap_or_default();
    status.selected_security_groups = selected.map(|s| s.security_groups).unwrap_or_default();
    let view = outcome.as_ref().ok().and_then(|r| r.view.clone());
    let outcome = check_launch(
        view.as_ref().unwrap_or(mt),
        &mut status,
        generation,
        outcome,
        ctx,
    )
    .await;
    status.observed_generation = generation;
    status.machines_in_use = Some(usage::machines_in_use(&requests.state(), &namespace, &name));
    let now = Time(Timestamp::now());
    let (condition, requeue) = match &outcome {
        Ok(ready) => {
            let first = mt.spec.instance_types.first().map(|t| &t.instance_type);
            match &ready.type_info {
                Some(info) => status.instance_type_info = Some(info.clone()),
                // Keep what is known about the same type through a failed look-up.
                None if status.instance_type_info.as_ref().map(|i| &i.instance_type) != first => {
                    status.instance_type_info = None
                }
                None => {}
            }
            match &ready.launch_template {
                Some(lt) if base_template::same(status.launch_template.as_ref(), lt) => {}
                lt => status.launch_template = lt.clone(),
            }
            if !same_image(status.resolved_image.as_ref(), &ready.image) {
                status.resolved_image = Some(ready.image.clone());
            }
            let message = format!(
                "image {} resolved from {}",
                ready.image.id,
                source_field(ready.image.source)
            );
            (
                conditions::new_condition(
                    READY,
                    true,
                    Reason::Resolved.as_str(),
                    message,
                    generation,
                    now,
                ),
                Action::requeue(ready.refresh_in),
            )
        }
        Err(not_ready) => {
            // A template that is gone or refused is no longer resolved; any
            // other cause says nothing about it.
            if mt.spec.launch_template.is_none()
                || matches!(
                    not_ready.reason,
                    Reason::LaunchTemplateNotFound | Reason::LaunchTemplateRefused
                )
            {
                status.launch_template = None;
            }
            (
                conditions::new_condition(
                    READY,
                    false,
                    not_ready.reason.as_str(),
                    not_ready.message.clone(),
                    generation,
                    now,
                ),
                not_ready
                    .retry
                    .map(Action::requeue)
                    .unwrap_or_else(Action::await_change),
            )
        }
    };
    let old_ready = conditions::find_condition(&old_status.conditions, READY).cloned();
    conditions::set_condition(&mut status.conditions, condition);

    if status != old_status {
        let api: Api<MachineTemplate> = Api::namespaced(ctx.client.clone(), &namespace);
        let patch = serde_json::json!({
            "apiVersion": MachineTemplate::api_version(&()),
            "kind": MachineTemplate::kind(&()),
            "status": status,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(|source| Error::Kube {
            action: "patch MachineTemplate status",
            source,
        })?;
        ctx.metrics.status_write(CONTROLLER);
    }

    let ready_changed = old_ready
        .as_ref()
        .map(|c| (c.status.as_str(), c.reason.as_str()))
        != conditions::find_condition(&status.conditions, READY)
            .map(|c| (c.status.as_str(), c.reason.as_str()));
    if ready_changed {
        publish_event(mt, ctx, &outcome).await;
    }
    Ok(requeue)
}

/// The launch dry run's part of a reconcile (see [`launch_check`]): makes
/// the dry run when one is due and records it in `status`; a refusal, new or
/// standing, makes the template not Ready. Without `validateLaunches` the
/// condition and record are dropped (they would name a check no longer made).
async fn check_launch(
    mt: &MachineTemplate,
    status: &mut MachineTemplateStatus,
    generation: Option<i64>,
    outcome: Result<Ready, NotReady>,
    ctx: &Context,
) -> Result<Ready, NotReady> {
    if !ctx.config.validate_launches {
        status.conditions.retain(|c| c.type_ != LAUNCH_VALIDATED);
        status.launch_validation = None;
        return outcome;
    }
    let mut ready = outcome?;
    let retry = ctx.config.launch_validation_retry;
    let now = Timestamp::now();
    // A new version of the user's launch template ($Latest, $Default moved)
    // is a new launch: dry-run it too. `status` still holds the version the
    // last reconcile resolved.
    let pinned =
        |lt: Option<&crate::api::ResolvedLaunchTemplate>| lt.map(|l| (l.id.clone(), l.version));
    let template_moved =
        pinned(ready.launch_template.as_ref()) != pinned(status.launch_template.as_ref());
    if !template_moved && !launch_check::due(status, generation, &ready.image.id, retry, now) {
        return match conditions::find_condition(&status.conditions, LAUNCH_VALIDATED) {
            Some(c) if c.status == FALSE => Err(NotReady::new(
                Reason::LaunchRefused,
                c.message.clone(),
                Some(launch_check::retry_in(status, retry, now)),
            )),
            _ => Ok(ready),
        };
    }
    let spec = launch_check::spec(
        mt,
        &ready.image.id,
        ready.root_device_name.clone(),
        &ctx.config.cluster_name,
        &ctx.cluster_id,
        ready.launch_template.as_ref(),
    );
    let check = launch_check::run(ready.provider.as_ref(), &spec).await;
    if let Some(c) = launch_check::condition(&check, &spec, generation, Time(now)) {
        conditions::set_condition(&mut status.conditions, c);
    }
    if !matches!(check, Check::Inconclusive(_)) {
        status.launch_validation = Some(LaunchValidation {
            image_id: ready.image.id.clone(),
            checked_at: Time(now),
        });
        // The version this dry run was of, even when it is refused (then the
        // template is not Ready and the Ready path does not record it).
        if template_moved {
            status.launch_template = ready.launch_template.clone();
        }
    }
    match check {
        Check::Refused(e) => {
            warn!(template = %mt.name_any(), error = %e, "the launch dry run was refused");
            Err(NotReady::new(
                Reason::LaunchRefused,
                launch_check::refusal_message(&e),
                Some(retry),
            ))
        }
        Check::Inconclusive(e) => {
            info!(template = %mt.name_any(), error = %e, "the launch dry run got no verdict; trying again");
            ready.refresh_in = ready.refresh_in.min(RETRY_TRANSIENT);
            Ok(ready)
        }
        Check::Passed | Check::Standing => Ok(ready),
    }
}

async fn publish_event(mt: &MachineTemplate, ctx: &Context, outcome: &Result<Ready, NotReady>) {
    let event = match outcome {
        Ok(ready) => Event {
            type_: EventType::Normal,
            reason: Reason::Ready.as_str().into(),
            note: Some(format!("image {} resolved", ready.image.id)),
            action: "ResolveImage".into(),
            secondary: None,
        },
        Err(not_ready) => Event {
            type_: EventType::Warning,
            reason: not_ready.reason.as_str().into(),
            note: Some(events::truncate(&not_ready.message, events::NOTE_MAX)),
            action: "Validate".into(),
            secondary: None,
        },
    };
    match ctx.recorder.publish(&event, &mt.object_ref(&())).await {
        Ok(()) => info!(template = %mt.name_any(), reason = %event.reason, "event published"),
        Err(err) => warn!(template = %mt.name_any(), error = %err, "publishing event failed"),
    }
}

/// Whether `old` records what `new` does but for when it was resolved: then
/// the status keeps `old` (no write for the time alone). A record without the
/// image's owner (written by an earlier version) is replaced, so the request
/// gate can check the owner against a tenant policy.
fn same_image(old: Option<&ResolvedImage>, new: &ResolvedImage) -> bool {
    old.is_some_and(|old| {
        ResolvedImage {
            resolved_at: new.resolved_at.clone(),
            ..old.clone()
        } == *new
    })
}

fn source_field(kind: ImageSourceKind) -> &'static str {
    match kind {
        ImageSourceKind::Id => "spec.image.id",
        ImageSourceKind::SsmParameter => "spec.image.ssmParameter",
        ImageSourceKind::Selector => "spec.image.selector",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(owner: Option<&str>, at: i64) -> ResolvedImage {
        ResolvedImage {
            id: "ami-12345678".into(),
            name: Some("al2023".into()),
            source: ImageSourceKind::SsmParameter,
            creation_date: None,
            owner_id: owner.map(str::to_string),
            owner_alias: None,
            resolved_at: Time(Timestamp::from_second(at).expect("a time")),
        }
    }

    #[test]
    fn a_resolved_image_is_kept_when_only_its_time_changed() {
        let new = image(Some("123456789012"), 200);
        assert!(same_image(Some(&image(Some("123456789012"), 100)), &new));
        assert!(!same_image(None, &new));
        // Written by an earlier version, without the owner: replaced.
        assert!(!same_image(Some(&image(None, 100)), &new));
        let mut other = image(Some("123456789012"), 100);
        other.id = "ami-87654321".into();
        assert!(!same_image(Some(&other), &new));
    }
}

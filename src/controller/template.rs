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
//! [`usage`]) so the count is never read from a store that lags the trigger.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

mod usage;

use super::{events, Context, Error};
use crate::api::conditions::{self, READY};
use crate::api::{
    ImageSourceKind, InstanceTypeInfo, MachineRequest, MachineTemplate, MachineTemplateSpec,
    MachineTemplateStatus, ResolvedImage,
};
use crate::provider::{self, MachineProvider, ProviderError};

/// Label value for this controller in metrics.
const CONTROLLER: &str = "template";
/// Field manager of hostforge's status patches (server-side apply).
pub const FIELD_MANAGER: &str = "hostforge";
/// How long to wait before retrying a template whose provider said "no" in a
/// way that may change on its own (an image published later, a subnet created).
const RETRY_MISSING: Duration = Duration::from_secs(60);
/// Retry delay after a transient provider failure (throttling, 5xx, timeouts).
const RETRY_TRANSIENT: Duration = Duration::from_secs(15);

/// Why a template is not Ready: the condition's reason and message.
#[derive(Debug, Clone, PartialEq)]
struct NotReady {
    reason: &'static str,
    message: String,
    retry: Option<Duration>,
}

impl NotReady {
    fn new(reason: &'static str, message: impl Into<String>, retry: Option<Duration>) -> Self {
        NotReady {
            reason,
            message: message.into(),
            retry,
        }
    }

    /// Maps a provider error met while doing `what` to a condition reason.
    fn from_provider(what: &str, not_found_reason: &'static str, err: &ProviderError) -> Self {
        let retry = if err.is_retryable() {
            Some(RETRY_TRANSIENT)
        } else {
            Some(RETRY_MISSING)
        };
        let reason = match err.category() {
            "NotFound" => not_found_reason,
            "AccessDenied" => "AccessDenied",
            "InvalidParameter" => "InvalidSpec",
            "Throttled" => "Throttled",
            _ => "ProviderError",
        };
        NotReady::new(reason, format!("{what}: {err}"), retry)
    }
}

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
            let keep = status
                .resolved_image
                .as_ref()
                .is_some_and(|old| old.id == ready.image.id && old.source == ready.image.source);
            if !keep {
                status.resolved_image = Some(ready.image.clone());
            }
            let message = format!(
                "image {} resolved from {}",
                ready.image.id,
                source_field(ready.image.source)
            );
            (
                conditions::new_condition(READY, true, "Resolved", message, generation, now),
                Action::requeue(ready.refresh_in),
            )
        }
        Err(not_ready) => (
            conditions::new_condition(
                READY,
                false,
                not_ready.reason,
                not_ready.message.clone(),
                generation,
                now,
            ),
            not_ready
                .retry
                .map(Action::requeue)
                .unwrap_or_else(Action::await_change),
        ),
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

/// A template that is Ready: its image, the first instance type's size (when
/// the provider could tell) and when to look at it again.
struct Ready {
    image: ResolvedImage,
    type_info: Option<InstanceTypeInfo>,
    refresh_in: Duration,
}

async fn evaluate(
    mt: &MachineTemplate,
    old_status: &MachineTemplateStatus,
    generation: Option<i64>,
    ctx: &Context,
) -> Result<Ready, NotReady> {
    let spec = &mt.spec;
    let provider_name = spec
        .provider
        .clone()
        .unwrap_or_else(|| ctx.providers.default_name().to_string());
    let provider = ctx.providers.get(&provider_name).ok_or_else(|| {
        NotReady::new(
            "ProviderUnknown",
            format!(
                "provider {provider_name:?} is not in the operator configuration (configured: {})",
                ctx.providers.names().join(", ")
            ),
            None,
        )
    })?;
    let (source, kind) = image_source(spec)?;

    // The provider checks cost AWS calls: only when the spec changed or the
    // template is not Ready yet (a failed check is retried until it passes).
    let spec_seen = old_status.observed_generation == generation
        && conditions::is_true(&old_status.conditions, READY);
    if !spec_seen {
        validate_in_provider(provider.as_ref(), spec).await?;
    }

    let (image, resolved_at) = ctx
        .images
        .resolve(&provider, &source)
        .await
        .map_err(|e| NotReady::from_provider("resolving the image", "ImageNotFound", &e))?;
    let refresh_in = ctx
        .images
        .expires_in(&provider_name, &source)
        .unwrap_or(ctx.config.image_cache_ttl)
        + Duration::from_secs(1);
    let type_info = first_type_info(provider.as_ref(), spec).await;
    Ok(Ready {
        type_info,
        image: ResolvedImage {
            id: image.id,
            name: image.name,
            source: kind,
            creation_date: image.creation_date,
            resolved_at: to_time(resolved_at),
        },
        refresh_in,
    })
}

/// The size of the template's first instance type. A failed look-up does not
/// make the template unusable (launching does not need it): it is logged, the
/// status keeps what it had, and the next reconcile asks again (the adapter
/// caches answers, so a known type costs no call).
async fn first_type_info(
    provider: &dyn MachineProvider,
    spec: &MachineTemplateSpec,
) -> Option<InstanceTypeInfo> {
    let first = spec.instance_types.first()?;
    match provider.instance_type_info(&first.instance_type).await {
        Ok(Some(info)) => Some(InstanceTypeInfo {
            instance_type: info.instance_type,
            vcpus: info.vcpus,
            cores: info.cores,
            memory_mib: info.memory_mib,
            architecture: info.architecture,
        }),
        Ok(None) => None,
        Err(err) => {
            warn!(instance_type = %first.instance_type, error = %err, "describing the instance type failed");
            None
        }
    }
}

/// Translates `spec.image` into the provider's plain type.
fn image_source(
    spec: &MachineTemplateSpec,
) -> Result<(provider::ImageSource, ImageSourceKind), NotReady> {
    let image = &spec.image;
    let sources = [
        image.id.is_some(),
        image.ssm_parameter.is_some(),
        image.selector.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err(NotReady::new(
            "InvalidSpec",
            "spec.image must set exactly one of id, ssmParameter, selector",
            None,
        ));
    }
    if let Some(id) = &image.id {
        return Ok((provider::ImageSource::Id(id.clone()), ImageSourceKind::Id));
    }
    if let Some(param) = &image.ssm_parameter {
        return Ok((
            provider::ImageSource::SsmParameter(param.clone()),
            ImageSourceKind::SsmParameter,
        ));
    }
    let selector = image
        .selector
        .as_ref()
        .ok_or_else(|| NotReady::new("InvalidSpec", "spec.image.selector is empty", None))?;
    let architecture = selector
        .architecture
        .and_then(|a| serde_json::to_value(a).ok())
        .and_then(|v| v.as_str().map(str::to_string));
    Ok((
        provider::ImageSource::Selector {
            name: selector.name.clone().unwrap_or_else(|| "*".to_string()),
            owners: selector.owners.clone(),
            architecture,
            tags: selector.tags.clone(),
        },
        ImageSourceKind::Selector,
    ))
}

/// Checks that what the template names exists in the provider.
async fn validate_in_provider(
    provider: &dyn MachineProvider,
    spec: &MachineTemplateSpec,
) -> Result<(), NotReady> {
    if !spec.subnet_ids.is_empty() {
        let missing = provider
            .missing_subnets(&spec.subnet_ids)
            .await
            .map_err(|e| {
                NotReady::from_provider("checking spec.subnetIds", "SubnetNotFound", &e)
            })?;
        if !missing.is_empty() {
            return Err(NotReady::new(
                "SubnetNotFound",
                format!(
                    "spec.subnetIds: {} not found in provider {}",
                    missing.join(", "),
                    provider.name()
                ),
                Some(RETRY_MISSING),
            ));
        }
    }
    if !spec.security_group_ids.is_empty() {
        let missing = provider
            .missing_security_groups(&spec.security_group_ids)
            .await
            .map_err(|e| {
                NotReady::from_provider(
                    "checking spec.securityGroupIds",
                    "SecurityGroupNotFound",
                    &e,
                )
            })?;
        if !missing.is_empty() {
            return Err(NotReady::new(
                "SecurityGroupNotFound",
                format!(
                    "spec.securityGroupIds: {} not found in provider {}",
                    missing.join(", "),
                    provider.name()
                ),
                Some(RETRY_MISSING),
            ));
        }
    }
    let types: Vec<String> = spec
        .instance_types
        .iter()
        .map(|t| t.instance_type.clone())
        .collect();
    let unknown = provider.unknown_instance_types(&types).await.map_err(|e| {
        NotReady::from_provider("checking spec.instanceTypes", "InstanceTypeUnknown", &e)
    })?;
    if !unknown.is_empty() {
        return Err(NotReady::new(
            "InstanceTypeUnknown",
            format!(
                "spec.instanceTypes: {} not offered by provider {}",
                unknown.join(", "),
                provider.name()
            ),
            Some(RETRY_MISSING),
        ));
    }
    Ok(())
}

async fn publish_event(mt: &MachineTemplate, ctx: &Context, outcome: &Result<Ready, NotReady>) {
    let event = match outcome {
        Ok(ready) => Event {
            type_: EventType::Normal,
            reason: "Ready".into(),
            note: Some(format!("image {} resolved", ready.image.id)),
            action: "ResolveImage".into(),
            secondary: None,
        },
        Err(not_ready) => Event {
            type_: EventType::Warning,
            reason: not_ready.reason.into(),
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

fn source_field(kind: ImageSourceKind) -> &'static str {
    match kind {
        ImageSourceKind::Id => "spec.image.id",
        ImageSourceKind::SsmParameter => "spec.image.ssmParameter",
        ImageSourceKind::Selector => "spec.image.selector",
    }
}

fn to_time(t: SystemTime) -> Time {
    Time(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
}

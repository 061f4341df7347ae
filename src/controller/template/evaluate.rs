//! The template's evaluation: the provider it names, what the schema cannot
//! check (subnets, security groups, instance types exist), the image resolved
//! through the shared cache, and the first instance type's size. Its answer is
//! [`Ready`] or [`NotReady`] with a typed reason and when to look again.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use tracing::warn;

use crate::api::conditions::{self, READY};
use crate::api::{
    ImageSourceKind, InstanceTypeInfo, MachineTemplate, MachineTemplateSpec, MachineTemplateStatus,
    ResolvedImage,
};
use crate::config::policy::{Asked, Denied};
use crate::controller::reason::Reason;
use crate::controller::Context;
use crate::provider::{self, MachineProvider, ProviderError};

use super::namespaces;
use super::selection::Selected;

/// How long to wait before retrying a template whose provider said "no" in a
/// way that may change on its own (an image published later, a subnet created).
pub(super) const RETRY_MISSING: Duration = Duration::from_secs(60);
/// Retry delay after a transient provider failure (throttling, 5xx, timeouts).
pub(super) const RETRY_TRANSIENT: Duration = Duration::from_secs(15);

/// Why a template is not Ready: the condition's reason and message.
#[derive(Debug, Clone, PartialEq)]
pub struct NotReady {
    /// The Ready condition's reason.
    pub reason: Reason,
    /// What a user reads.
    pub message: String,
    /// When to look again (None: when the template changes).
    pub retry: Option<Duration>,
}

impl NotReady {
    pub(super) fn new(reason: Reason, message: impl Into<String>, retry: Option<Duration>) -> Self {
        NotReady {
            reason,
            message: message.into(),
            retry,
        }
    }

    /// Maps a provider error met while doing `what` to a condition reason.
    pub(super) fn from_provider(what: &str, not_found_reason: Reason, err: &ProviderError) -> Self {
        let retry = if err.is_retryable() {
            Some(RETRY_TRANSIENT)
        } else {
            Some(RETRY_MISSING)
        };
        let reason = match err {
            ProviderError::NotFound(_) => not_found_reason,
            ProviderError::AccessDenied(_) => Reason::AccessDenied,
            ProviderError::InvalidParameter(_) => Reason::InvalidSpec,
            ProviderError::Throttled(_) => Reason::Throttled,
            ProviderError::Capacity(_)
            | ProviderError::Transient(_)
            | ProviderError::Refused(_)
            | ProviderError::Unknown(_) => Reason::ProviderError,
        };
        NotReady::new(reason, format!("{what}: {err}"), retry)
    }
}

/// The NotReady message for a provider name the operator does not know. It
/// never lists the configured names: status and Events are read by tenants.
fn not_configured(provider_name: &str) -> String {
    format!("provider {provider_name:?} is not configured in the operator")
}

/// The NotReady of a template outside the tenant policy. The message names
/// the value at fault only; the operator's log says which template it was.
fn policy_denied(mt: &MachineTemplate, denied: Denied, retry: Option<Duration>) -> NotReady {
    warn!(
        namespace = %mt.metadata.namespace.as_deref().unwrap_or_default(),
        template = %mt.metadata.name.as_deref().unwrap_or_default(),
        denied = %denied,
        "template is outside the tenant policy"
    );
    NotReady::new(Reason::PolicyDenied, denied.0, retry)
}

/// A template that is Ready: its image, the first instance type's size (when
/// the provider could tell) and when to look at it again.
pub struct Ready {
    /// The provider the template names.
    pub provider: Arc<dyn MachineProvider>,
    /// The resolved image.
    pub image: ResolvedImage,
    /// The image's root device, where `rootVolume` applies.
    pub root_device_name: Option<String>,
    /// The first instance type's size, when the provider could tell.
    pub type_info: Option<InstanceTypeInfo>,
    /// When the image's (or a selection's) cache entry expires.
    pub refresh_in: Duration,
    /// What the template's subnet and security group selectors chose.
    pub selected: Option<Selected>,
    /// The template as launches see it when it selects by tags (see
    /// [`MachineTemplate::with_selections`]); `None`: the template itself.
    pub view: Option<MachineTemplate>,
    /// spec.launchTemplate resolved (`None` without one).
    pub launch_template: Option<crate::api::ResolvedLaunchTemplate>,
}

/// Evaluates `mt` (see the module doc).
pub async fn evaluate(
    mt: &MachineTemplate,
    old_status: &MachineTemplateStatus,
    generation: Option<i64>,
    ctx: &Context,
) -> Result<Ready, NotReady> {
    let provider_name = mt
        .spec
        .provider
        .clone()
        .unwrap_or_else(|| ctx.providers.default_name().to_string());
    let provider = ctx.providers.get(&provider_name).ok_or_else(|| {
        // The configured names go to the operator's log only: a tenant learns
        // that this name is wrong, not which other accounts the operator reaches.
        warn!(
            template = %mt.metadata.name.as_deref().unwrap_or_default(),
            provider = %provider_name,
            configured = %ctx.providers.names().join(", "),
            "template names a provider that is not configured"
        );
        NotReady::new(
            Reason::ProviderUnknown,
            not_configured(&provider_name),
            None,
        )
    })?;
    let policy = ctx.config.tenant_policy(&provider_name);
    let mut admitted = None;
    if let Some(policy) = policy {
        let namespace = mt.metadata.namespace.as_deref().unwrap_or_default();
        let labels = if policy.needs_namespace_labels() {
            let labels = ctx
                .namespace_labels
                .labels(&ctx.client, namespace)
                .await
                .map_err(|e| {
                    NotReady::new(
                        Reason::KubeApiError,
                        format!("reading the labels of namespace {namespace} for the operator's tenant policy: {e}"),
                        Some(RETRY_TRANSIENT),
                    )
                })?;
            Some(labels)
        } else {
            None
        };
        let mut asked = Asked::of(namespace, &provider_name, &mt.spec);
        asked.namespace_labels = labels.as_ref();
        // A selector's answer changes with the namespace's labels: look again.
        let retry = policy
            .needs_namespace_labels()
            .then_some(namespaces::LABELS_TTL);
        // Nothing is listed in a provider for a namespace that may not use it.
        policy
            .admits_caller(&asked)
            .map_err(|denied| policy_denied(mt, denied, retry))?;
        admitted = Some((labels, retry));
    }
    // Subnets and groups chosen by tags: what follows checks them as ids.
    let selected = ctx.selections.resolve(mt, &provider).await?;
    let view = selected.as_ref().and_then(|sel| sel.apply(mt));
    let mt = view.as_ref().unwrap_or(mt);
    let spec = &mt.spec;
    if let (Some(policy), Some((labels, retry))) = (policy, admitted) {
        let namespace = mt.metadata.namespace.as_deref().unwrap_or_default();
        let mut asked = Asked::of(namespace, &provider_name, spec);
        asked.namespace_labels = labels.as_ref();
        policy
            .admits(&asked)
            .map_err(|denied| policy_denied(mt, denied, retry))?;
    }
    let (source, kind) = image_source(spec)?;

    // The provider checks cost AWS calls: only when the spec changed or the
    // template is not Ready yet (a failed check is retried until it passes).
    let spec_seen = old_status.observed_generation == generation
        && conditions::is_true(&old_status.conditions, READY);
    if !spec_seen {
        validate_in_provider(provider.as_ref(), spec).await?;
        super::interfaces::check(provider.as_ref(), spec).await?;
    }

    // Looked at again once the cached answer expires: someone may make a
    // new $Latest or $Default version, or delete the template, at any time.
    let launch_template =
        super::base_template::resolve(&ctx.base_templates, &provider, spec).await?;

    let (image, resolved_at) =
        ctx.images.resolve(&provider, &source).await.map_err(|e| {
            NotReady::from_provider("resolving the image", Reason::ImageNotFound, &e)
        })?;
    let mut refresh_in = ctx
        .images
        .expires_in(&provider_name, &source)
        .unwrap_or(ctx.config.image_cache_ttl)
        + Duration::from_secs(1);
    if policy.is_some_and(|p| p.needs_namespace_labels()) {
        // A label taken off the namespace must end the admission soon too.
        refresh_in = refresh_in.min(namespaces::LABELS_TTL);
    }
    if let Some(policy) = policy {
        policy
            .admits_image(
                &image.id,
                image.owner_id.as_deref(),
                image.owner_alias.as_deref(),
            )
            // An image source (SSM parameter, selector) may resolve to
            // another image later: look again when the cache entry expires.
            .map_err(|denied| policy_denied(mt, denied, Some(refresh_in)))?;
    }
    let type_info = first_type_info(provider.as_ref(), spec).await;
    if let Some(sel) = &selected {
        refresh_in = refresh_in.min(sel.refresh_in);
    }
    if let Some(query) = super::base_template::query_of(spec) {
        if let Some(left) = ctx.base_templates.expires_in(&provider_name, &query) {
            refresh_in = refresh_in.min(left + Duration::from_secs(1));
        }
    }
    Ok(Ready {
        selected,
        view,
        launch_template,
        type_info,
        root_device_name: image.root_device_name.clone(),
        provider: provider.clone(),
        image: ResolvedImage {
            id: image.id,
            name: image.name,
            source: kind,
            creation_date: image.creation_date,
            owner_id: image.owner_id,
            owner_alias: image.owner_alias,
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
pub fn image_source(
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
            Reason::InvalidSpec,
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
        .ok_or_else(|| NotReady::new(Reason::InvalidSpec, "spec.image.selector is empty", None))?;
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
                NotReady::from_provider("checking spec.subnetIds", Reason::SubnetNotFound, &e)
            })?;
        if !missing.is_empty() {
            return Err(NotReady::new(
                Reason::SubnetNotFound,
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
                    Reason::SecurityGroupNotFound,
                    &e,
                )
            })?;
        if !missing.is_empty() {
            return Err(NotReady::new(
                Reason::SecurityGroupNotFound,
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
        NotReady::from_provider(
            "checking spec.instanceTypes",
            Reason::InstanceTypeUnknown,
            &e,
        )
    })?;
    if !unknown.is_empty() {
        return Err(NotReady::new(
            Reason::InstanceTypeUnknown,
            format!(
                "spec.instanceTypes: {} not offered by provider {}",
                unknown.join(", "),
                provider.name()
            ),
            Some(RETRY_MISSING),
        ));
    }
    check_placement_group(provider, spec).await
}

/// Checks that the placement group the template names exists: a launch into
/// an unknown group is refused by EC2 (`InvalidPlacementGroup.Unknown`), so
/// the template says so before any request tries.
async fn check_placement_group(
    provider: &dyn MachineProvider,
    spec: &MachineTemplateSpec,
) -> Result<(), NotReady> {
    let Some(group) = spec.placement.as_ref().and_then(|p| p.group_name.clone()) else {
        return Ok(());
    };
    let missing = provider
        .missing_placement_groups(std::slice::from_ref(&group))
        .await
        .map_err(|e| {
            NotReady::from_provider(
                "checking spec.placement.groupName",
                Reason::PlacementGroupNotFound,
                &e,
            )
        })?;
    if missing.is_empty() {
        return Ok(());
    }
    Err(NotReady::new(
        Reason::PlacementGroupNotFound,
        format!(
            "spec.placement.groupName: placement group {group} not found in provider {}",
            provider.name()
        ),
        Some(RETRY_MISSING),
    ))
}

fn to_time(t: SystemTime) -> Time {
    Time(Timestamp::try_from(t).unwrap_or_else(|_| Timestamp::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ErrorDetail;

    fn spec(image: serde_json::Value) -> MachineTemplateSpec {
        serde_json::from_value(serde_json::json!({
            "image": image, "instanceTypes": [{"type": "t3.micro"}],
        }))
        .expect("a spec")
    }

    #[test]
    fn the_image_source_is_exactly_one_of_id_parameter_selector() {
        let id = spec(serde_json::json!({"id": "ami-12345678"}));
        assert_eq!(image_source(&id).map(|s| s.1), Ok(ImageSourceKind::Id));
        let ssm = spec(serde_json::json!({"ssmParameter": "/aws/ami"}));
        assert_eq!(
            image_source(&ssm).map(|s| s.1),
            Ok(ImageSourceKind::SsmParameter)
        );
        let sel = spec(
            serde_json::json!({"selector": {"name": "al2023-*", "owners": ["amazon"], "architecture": "arm64"}}),
        );
        match image_source(&sel) {
            Ok((
                provider::ImageSource::Selector {
                    name, architecture, ..
                },
                ImageSourceKind::Selector,
            )) => {
                assert_eq!(name, "al2023-*");
                assert_eq!(architecture.as_deref(), Some("arm64"));
            }
            other => panic!("a selector: {other:?}"),
        }
        let two = spec(serde_json::json!({"id": "ami-12345678", "ssmParameter": "/aws/ami"}));
        assert_eq!(
            image_source(&two).map(|_| ()).map_err(|e| e.reason),
            Err(Reason::InvalidSpec)
        );
    }

    #[test]
    fn provider_errors_map_to_reasons_by_variant() {
        let d = ErrorDetail {
            operation: "DescribeImages",
            code: "X".into(),
            message: "m".into(),
        };
        let cases = [
            (
                ProviderError::NotFound(d.clone()),
                Reason::ImageNotFound,
                Some(RETRY_MISSING),
            ),
            (
                ProviderError::AccessDenied(d.clone()),
                Reason::AccessDenied,
                Some(RETRY_MISSING),
            ),
            (
                ProviderError::InvalidParameter(d.clone()),
                Reason::InvalidSpec,
                Some(RETRY_MISSING),
            ),
            (
                ProviderError::Throttled(d.clone()),
                Reason::Throttled,
                Some(RETRY_TRANSIENT),
            ),
            (
                ProviderError::Transient(d.clone()),
                Reason::ProviderError,
                Some(RETRY_TRANSIENT),
            ),
            (
                ProviderError::Unknown(d),
                Reason::ProviderError,
                Some(RETRY_MISSING),
            ),
        ];
        for (err, reason, retry) in cases {
            let nr = NotReady::from_provider("resolving the image", Reason::ImageNotFound, &err);
            assert_eq!((nr.reason, nr.retry), (reason, retry), "{err}");
            assert!(
                nr.message.starts_with("resolving the image: "),
                "{}",
                nr.message
            );
        }
    }
}

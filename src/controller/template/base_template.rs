//! A template's `launchTemplate`: the user's own EC2 launch template resolved
//! to its id and version number (what every launch names), or why the
//! template is not Ready: the template or version does not exist, or it
//! would put hostforge's own ownership tags on machines, which only the
//! operator writes (they decide what the operator may terminate).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::evaluate::NotReady;
use crate::api::{MachineTemplateSpec, ResolvedLaunchTemplate, GROUP};
use crate::controller::reason::Reason;
use crate::image::cache::TtlCache;
use crate::provider::{LaunchTemplateQuery, LaunchTemplateVersion, MachineProvider, ProviderError};

/// How long to wait before looking again at a launch template that does not
/// exist or is refused: someone may create or fix it.
const RETRY: std::time::Duration = std::time::Duration::from_secs(60);

type Key = (String, LaunchTemplateQuery);

/// Launch template versions as last described, per provider and query, kept
/// for `imageCacheTtl`: a template is reconciled whenever one of its
/// requests changes, and a burst must not cost a DescribeLaunchTemplateVersions
/// each time. A new `$Latest` / `$Default` is seen within the TTL; a query
/// that found nothing is not kept.
pub struct BaseTemplates {
    cache: Arc<TtlCache<Key, Option<LaunchTemplateVersion>, ProviderError>>,
}

impl BaseTemplates {
    /// An empty cache whose answers live `ttl`.
    pub fn new(ttl: Duration) -> BaseTemplates {
        BaseTemplates {
            cache: TtlCache::new(ttl),
        }
    }

    /// The version `query` names, from the cache or described now.
    async fn version(
        &self,
        provider: &Arc<dyn MachineProvider>,
        query: LaunchTemplateQuery,
    ) -> Result<Option<LaunchTemplateVersion>, ProviderError> {
        let key = (provider.name().to_string(), query.clone());
        let p = provider.clone();
        let (found, _) = self
            .cache
            .get_or_fetch(&key, move || async move {
                match p.launch_template_version(&query).await? {
                    // Not kept: a template created next is seen at the next look.
                    None => Err(ProviderError::NotFound(crate::provider::ErrorDetail {
                        operation: "DescribeLaunchTemplateVersions",
                        code: NO_VERSION.into(),
                        message: String::new(),
                    })),
                    found => Ok(found),
                }
            })
            .await;
        match found {
            Err(ProviderError::NotFound(d)) if d.code == NO_VERSION => Ok(None),
            other => other,
        }
    }

    /// How long the answer for `query` stays fresh.
    pub(super) fn expires_in(
        &self,
        provider: &str,
        query: &LaunchTemplateQuery,
    ) -> Option<Duration> {
        self.cache
            .expires_in(&(provider.to_string(), query.clone()))
    }
}

/// The code of the cache's internal "no such version" error.
const NO_VERSION: &str = "NoSuchVersion";

/// The query `spec.launchTemplate` makes; `None` without one.
pub(super) fn query_of(spec: &MachineTemplateSpec) -> Option<LaunchTemplateQuery> {
    spec.launch_template
        .as_ref()
        .map(|wanted| LaunchTemplateQuery {
            id: wanted.id.clone(),
            name: wanted.name.clone(),
            version: wanted.version.clone(),
        })
}

/// Resolves `spec.launchTemplate`; `Ok(None)` when the template names none.
pub(super) async fn resolve(
    templates: &BaseTemplates,
    provider: &Arc<dyn MachineProvider>,
    spec: &MachineTemplateSpec,
) -> Result<Option<ResolvedLaunchTemplate>, NotReady> {
    let (Some(wanted), Some(query)) = (&spec.launch_template, query_of(spec)) else {
        return Ok(None);
    };
    let named = wanted
        .id
        .as_deref()
        .or(wanted.name.as_deref())
        .unwrap_or_default();
    let found = templates.version(provider, query).await.map_err(|e| {
        NotReady::from_provider(
            "resolving spec.launchTemplate",
            Reason::LaunchTemplateNotFound,
            &e,
        )
    })?;
    let Some(version) = found else {
        return Err(NotReady::new(
            Reason::LaunchTemplateNotFound,
            format!(
                "spec.launchTemplate: launch template {named} version {} not found in provider {}",
                wanted.version,
                provider.name()
            ),
            Some(RETRY),
        ));
    };
    check(&version, named)?;
    Ok(Some(ResolvedLaunchTemplate {
        id: version.id,
        name: version.name,
        version: version.version,
        image_id: version.image_id,
        resolved_at: Time(Timestamp::now()),
    }))
}

/// Refuses a version that tags anything with a `hostforge.io/` key (in any
/// case): those are the operator's ownership tags.
fn check(version: &LaunchTemplateVersion, named: &str) -> Result<(), NotReady> {
    let prefix = format!("{GROUP}/");
    let owned: Vec<&str> = version
        .tag_keys
        .iter()
        .filter(|k| k.to_ascii_lowercase().starts_with(&prefix))
        .map(String::as_str)
        .collect();
    if owned.is_empty() {
        return Ok(());
    }
    Err(NotReady::new(
        Reason::LaunchTemplateRefused,
        format!(
            "spec.launchTemplate: launch template {named} version {} tags {} in its TagSpecifications; \
             hostforge.io/ tags are the operator's ownership tags and may not come from a launch template",
            version.version,
            owned.join(", ")
        ),
        Some(RETRY),
    ))
}

/// Whether `old` records what `new` does but for when it was resolved: the
/// status then keeps `old` (no write for the time alone).
pub(super) fn same(old: Option<&ResolvedLaunchTemplate>, new: &ResolvedLaunchTemplate) -> bool {
    old.is_some_and(|old| {
        ResolvedLaunchTemplate {
            resolved_at: new.resolved_at.clone(),
            ..old.clone()
        } == *new
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(keys: &[&str]) -> LaunchTemplateVersion {
        LaunchTemplateVersion {
            id: "lt-0123456789abcdef0".into(),
            name: Some("base".into()),
            version: 4,
            image_id: None,
            tag_keys: keys.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn ownership_tags_in_a_launch_template_are_refused_by_key() {
        assert!(check(&version(&["team", "Name"]), "base").is_ok());
        let refused = check(&version(&["team", "HostForge.io/cluster"]), "base")
            .expect_err("an ownership tag");
        assert_eq!(refused.reason, Reason::LaunchTemplateRefused);
        assert!(
            refused.message.contains("HostForge.io/cluster"),
            "{}",
            refused.message
        );
        assert!(refused.message.contains("version 4"), "{}", refused.message);
    }

    #[test]
    fn a_record_is_kept_when_only_its_time_changed() {
        let at = |s| Time(Timestamp::from_second(s).expect("a time"));
        let new = ResolvedLaunchTemplate {
            id: "lt-1".into(),
            name: None,
            version: 2,
            image_id: None,
            resolved_at: at(200),
        };
        let old = ResolvedLaunchTemplate {
            resolved_at: at(100),
            ..new.clone()
        };
        assert!(same(Some(&old), &new));
        let moved = ResolvedLaunchTemplate {
            version: 3,
            ..old.clone()
        };
        assert!(!same(Some(&moved), &new));
        assert!(!same(None, &new));
    }
}

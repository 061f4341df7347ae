//! The launch templates hostforge creates for instant-fleet batches: their
//! names, the ownership check before one is reused, and the listing and
//! deletion the controller's collector uses.
//!
//! Names are unique per account and Region, across every cluster and tool in
//! it (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-template-restrictions.html>),
//! so a batch's name carries a digest of the cluster, the full request uid and
//! the batch id: two batches never share one, and a leftover found under a
//! batch's name is only used when its tags say it is that batch's.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, LaunchTemplate};
use sha2::{Digest, Sha256};
use tracing::debug;

use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::errors::detail;
use crate::provider::aws::pages::all_pages;
use crate::provider::{LaunchSpec, OwnedLaunchTemplate, ProviderError};

/// Every hostforge launch template name starts with this, so the collector
/// never touches a template another tool tagged with our cluster tag.
pub const NAME_PREFIX: &str = "hostforge-";

/// The cluster ownership tag (the controller's `hostforge.io/cluster`).
pub const CLUSTER_TAG: &str = "hostforge.io/cluster";
/// The cluster identity tag (the controller's `hostforge.io/cluster-id`).
pub const CLUSTER_ID_TAG: &str = "hostforge.io/cluster-id";
/// The request uid ownership tag (the controller's `hostforge.io/request-uid`).
pub const REQUEST_UID_TAG: &str = "hostforge.io/request-uid";
/// The batch tag (the controller's `hostforge.io/batch`).
pub const BATCH_TAG: &str = "hostforge.io/batch";

/// The tags a leftover template must carry with the spec's values before a
/// batch launches from it: same cluster (name and identity), same request,
/// same batch.
const OWNER_TAGS: [&str; 4] = [CLUSTER_TAG, CLUSTER_ID_TAG, REQUEST_UID_TAG, BATCH_TAG];

/// How many hex digits of the digest the name keeps: 128 bits, so no two
/// batches of any cluster ever meet under one name.
const DIGEST_HEX: usize = 32;

/// EC2's page size limit for DescribeLaunchTemplates.
const PAGE_SIZE: i32 = 200;

/// The batch's template name: `hostforge-<batch id>-<digest>`, the digest over
/// the cluster (name and identity), the full request uid and the batch id (all from the spec's
/// ownership tags), so the name says which batch it is for a person reading
/// the console and cannot collide with another request's or cluster's.
pub fn name_for(spec: &LaunchSpec) -> String {
    let tag = |k: &str| spec.tags.get(k).map(String::as_str).unwrap_or_default();
    let mut hash = Sha256::new();
    for part in [
        tag(CLUSTER_TAG),
        tag(CLUSTER_ID_TAG),
        tag(REQUEST_UID_TAG),
        &spec.batch_id,
    ] {
        hash.update(part.as_bytes());
        // A separator that cannot occur in the parts keeps ("a", "bc") and
        // ("ab", "c") apart.
        hash.update([0u8]);
    }
    let hex: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    format!("{NAME_PREFIX}{}-{}", spec.batch_id, &hex[..DIGEST_HEX])
}

/// Whether a template carrying `tags` belongs to `spec`'s batch: each
/// ownership tag has the spec's value (or both lack it). `Err` names the first
/// tag that differs, for the refusal the caller reports.
pub fn check_owner(
    tags: &BTreeMap<String, String>,
    spec: &LaunchSpec,
) -> Result<(), (&'static str, Option<String>)> {
    for key in OWNER_TAGS {
        let have = tags.get(key);
        if have != spec.tags.get(key) {
            return Err((key, have.cloned()));
        }
    }
    Ok(())
}

/// The template named `name`, if it exists. Looked up with a name filter, so
/// a missing template is an empty answer rather than an error.
pub(super) async fn describe_named(
    clients: &AwsClients,
    calls: &Calls,
    name: &str,
) -> Result<Option<OwnedLaunchTemplate>, ProviderError> {
    let request = clients.ec2.describe_launch_templates().filters(
        Filter::builder()
            .name("launch-template-name")
            .values(name)
            .build(),
    );
    let out = calls
        .run("DescribeLaunchTemplates", || request.send())
        .await?;
    Ok(out
        .launch_templates()
        .iter()
        .filter_map(owned)
        .find(|t| t.name == name))
}

/// Every template carrying all of `tags` whose name has [`NAME_PREFIX`],
/// following EC2's pages.
pub(super) async fn list(
    clients: &AwsClients,
    calls: &Calls,
    tags: &[(String, String)],
) -> Result<Vec<OwnedLaunchTemplate>, ProviderError> {
    let filters: Vec<Filter> = tags
        .iter()
        .map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build())
        .collect();
    let templates = all_pages(|token| {
        let request = clients
            .ec2
            .describe_launch_templates()
            .set_filters(Some(filters.clone()))
            .max_results(PAGE_SIZE)
            .set_next_token(token);
        async move {
            let out = calls
                .run("DescribeLaunchTemplates", || request.send())
                .await?;
            Ok((out.launch_templates.unwrap_or_default(), out.next_token))
        }
    })
    .await?;
    Ok(templates
        .iter()
        .filter_map(owned)
        .filter(|t| t.name.starts_with(NAME_PREFIX))
        .collect())
}

/// Deletes the template `id`; one already gone is `Ok`.
pub(super) async fn delete(
    clients: &AwsClients,
    calls: &Calls,
    id: &str,
) -> Result<(), ProviderError> {
    let request = clients.ec2.delete_launch_template().launch_template_id(id);
    match calls.run("DeleteLaunchTemplate", || request.send()).await {
        Ok(_) => Ok(()),
        Err(e) if is_template_not_found(&e) => {
            debug!(provider = %calls.provider(), template = id, "launch template already gone");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Whether EC2 says a template does not exist: by name
/// `InvalidLaunchTemplateName.NotFoundException`, by id
/// `InvalidLaunchTemplateId.NotFound` (or `.NotFoundException`)
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
/// Right after CreateLaunchTemplate this is EC2's eventual consistency, not a
/// verdict.
pub fn is_template_not_found(e: &ProviderError) -> bool {
    let code = e.code();
    code.starts_with("InvalidLaunchTemplateName.NotFound")
        || code.starts_with("InvalidLaunchTemplateId.NotFound")
}

/// A template refused for reuse because it is not this batch's.
pub(super) fn not_ours(
    name: &str,
    key: &str,
    have: Option<String>,
    spec: &LaunchSpec,
) -> ProviderError {
    ProviderError::Refused(detail(
        "CreateLaunchTemplate",
        "LaunchTemplateNotOwned",
        format!(
            "launch template {name} already exists with {key}={} where batch {} needs {}; \
             hostforge never launches from another owner's template",
            have.as_deref().unwrap_or("<none>"),
            spec.batch_id,
            spec.tags.get(key).map_or("<none>", String::as_str),
        ),
    ))
}

/// The parts of a listed template the collector needs; `None` without an id
/// or name (nothing could be done with it).
fn owned(t: &LaunchTemplate) -> Option<OwnedLaunchTemplate> {
    Some(OwnedLaunchTemplate {
        id: t.launch_template_id()?.to_string(),
        name: t.launch_template_name()?.to_string(),
        created_at: t.create_time().map(|c| c.secs()),
        tags: t
            .tags()
            .iter()
            .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::aws::launch::fixtures::spec as fixtures_spec;

    fn spec(cluster: &str, uid: &str, batch: &str) -> LaunchSpec {
        let mut s = fixtures_spec();
        s.batch_id = batch.into();
        s.tags = [
            (CLUSTER_TAG.to_string(), cluster.to_string()),
            (CLUSTER_ID_TAG.to_string(), format!("id-of-{cluster}")),
            (REQUEST_UID_TAG.to_string(), uid.to_string()),
            (BATCH_TAG.to_string(), batch.to_string()),
        ]
        .into();
        s
    }

    #[test]
    fn names_are_readable_stable_and_never_shared() {
        let a = name_for(&spec("c1", "3f2a9c1e-aaaa-1111", "3f2a9c1e-4"));
        assert!(a.starts_with("hostforge-3f2a9c1e-4-"), "{a}");
        assert_eq!(a.len(), "hostforge-3f2a9c1e-4-".len() + DIGEST_HEX);
        assert!(a.len() <= 128, "EC2's limit");
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        assert_eq!(a, name_for(&spec("c1", "3f2a9c1e-aaaa-1111", "3f2a9c1e-4")));
        // Same 8-hex batch id, another request (uid) or another cluster.
        assert_ne!(a, name_for(&spec("c1", "3f2a9c1e-bbbb-2222", "3f2a9c1e-4")));
        assert_ne!(a, name_for(&spec("c2", "3f2a9c1e-aaaa-1111", "3f2a9c1e-4")));
        assert_ne!(a, name_for(&spec("c1", "3f2a9c1e-aaaa-1111", "3f2a9c1e-5")));
        // Same cluster name, another cluster (identity).
        let mut twin = spec("c1", "3f2a9c1e-aaaa-1111", "3f2a9c1e-4");
        twin.tags
            .insert(CLUSTER_ID_TAG.to_string(), "another-cluster".into());
        assert_ne!(a, name_for(&twin));
        // Parts do not run into each other.
        assert_ne!(
            name_for(&spec("ab", "c", "b-1")),
            name_for(&spec("a", "bc", "b-1"))
        );
    }

    #[test]
    fn only_the_batchs_own_template_passes_the_owner_check() {
        let s = spec("c1", "u-1", "b-1");
        assert_eq!(check_owner(&s.tags, &s), Ok(()));
        let mut extra = s.tags.clone();
        extra.insert("team".into(), "hpc".into());
        assert_eq!(check_owner(&extra, &s), Ok(()), "other tags do not matter");
        for key in OWNER_TAGS {
            let mut other = s.tags.clone();
            other.insert(key.into(), "someone-else".into());
            assert_eq!(
                check_owner(&other, &s),
                Err((key, Some("someone-else".into())))
            );
            let mut missing = s.tags.clone();
            missing.remove(key);
            assert_eq!(check_owner(&missing, &s), Err((key, None)));
        }
        let e = not_ours("n", CLUSTER_TAG, Some("c2".into()), &s);
        assert!(matches!(e, ProviderError::Refused(_)), "{e}");
        assert_eq!(e.code(), "LaunchTemplateNotOwned");
        assert!(e.to_string().contains("hostforge.io/cluster=c2"), "{e}");
    }

    #[test]
    fn both_not_found_spellings_are_recognised() {
        let nf = |code: &str| ProviderError::Refused(detail("X", code, String::new()));
        assert!(is_template_not_found(&nf(
            "InvalidLaunchTemplateName.NotFoundException"
        )));
        assert!(is_template_not_found(&nf(
            "InvalidLaunchTemplateId.NotFound"
        )));
        assert!(!is_template_not_found(&nf("MaxTemplateLimitExceeded")));
    }
}

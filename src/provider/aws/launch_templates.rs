//! The launch templates hostforge creates for instant fleets: their names,
//! and the listing and deletion the controller's collector uses.
//!
//! Names are unique per account and Region, across every cluster and tool in
//! it (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-template-restrictions.html>),
//! so a name carries the template's MachineTemplate for a person reading the
//! console and 64 random bits, so no other name is ever the same. A template
//! is launched from by the id its own creation answered with, never found
//! again by name (see `launch::template_cache`).

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{Filter, LaunchTemplate};
use tracing::debug;

use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::pages::all_pages;
use crate::provider::{OwnedLaunchTemplate, ProviderError};

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
/// The request tag, `<namespace>/<name>` (the controller's `hostforge.io/request`).
pub const REQUEST_TAG: &str = "hostforge.io/request";
/// The MachineTemplate tag (the controller's `hostforge.io/template`).
pub const TEMPLATE_TAG: &str = "hostforge.io/template";
/// The coalesced launch's group tag (the controller's `hostforge.io/launch-group`).
pub const GROUP_TAG: &str = "hostforge.io/launch-group";
/// The display name tag.
pub const NAME_TAG: &str = "Name";
/// The namespace whose requests a launch template serves: a namespaced
/// operator collects only its own namespace's templates.
pub const NAMESPACE_TAG: &str = "hostforge.io/namespace";

/// EC2's page size limit for DescribeLaunchTemplates.
const PAGE_SIZE: i32 = 200;

/// Most characters of the MachineTemplate's name a template name keeps
/// (EC2 allows 128 in all).
const READABLE: usize = 80;

/// A new template's name: `hostforge-<MachineTemplate>-<16 random hex>`, the
/// MachineTemplate's name (from the spec's template tag) cut to
/// [`READABLE`] characters of those EC2 allows.
pub fn new_name(spec_tags: &BTreeMap<String, String>) -> String {
    let readable: String = spec_tags
        .get(TEMPLATE_TAG)
        .map(String::as_str)
        .unwrap_or("fleet")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        .take(READABLE)
        .collect();
    format!("{NAME_PREFIX}{readable}-{:016x}", fastrand::u64(..))
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
    use crate::provider::aws::errors::detail;

    #[test]
    fn names_are_readable_allowed_and_never_repeat() {
        let tags: BTreeMap<String, String> =
            [(TEMPLATE_TAG.to_string(), "gpu.workers_a".to_string())].into();
        let a = new_name(&tags);
        assert!(a.starts_with("hostforge-gpu.workers_a-"), "{a}");
        assert_eq!(a.len(), "hostforge-gpu.workers_a-".len() + 16);
        assert_ne!(a, new_name(&tags));
        let long: BTreeMap<String, String> = [(TEMPLATE_TAG.to_string(), "x".repeat(253))].into();
        assert!(new_name(&long).len() <= 128, "EC2's limit");
        assert!(new_name(&BTreeMap::new()).starts_with("hostforge-fleet-"));
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

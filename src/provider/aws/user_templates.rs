//! A user's own launch template (a MachineTemplate's `launchTemplate`):
//! one DescribeLaunchTemplateVersions call resolves its id or name and its
//! version (a number, `$Latest` or `$Default`) to the id and version number
//! launches name, with the image and tag keys the template controller checks
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeLaunchTemplateVersions.html>).

use std::collections::BTreeSet;

use aws_sdk_ec2::types::LaunchTemplateVersion as Ec2Version;

use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::{LaunchTemplateQuery, LaunchTemplateVersion, ProviderError};

/// Resolves `query`: `Ok(None)` when the template or the version does not
/// exist (EC2's `InvalidLaunchTemplateId.NotFound`,
/// `InvalidLaunchTemplateName.NotFoundException`,
/// `InvalidLaunchTemplateId.VersionNotFound`, or an empty answer).
pub(super) async fn resolve(
    clients: &AwsClients,
    calls: &Calls,
    query: &LaunchTemplateQuery,
) -> Result<Option<LaunchTemplateVersion>, ProviderError> {
    let request = clients
        .ec2
        .describe_launch_template_versions()
        .set_launch_template_id(query.id.clone())
        .set_launch_template_name(query.name.clone())
        .versions(query.version.clone());
    match calls
        .run("DescribeLaunchTemplateVersions", || request.send())
        .await
    {
        Ok(out) => Ok(out.launch_template_versions().first().and_then(version)),
        Err(e) if is_missing(e.code()) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an error code says the template or its version does not exist
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
fn is_missing(code: &str) -> bool {
    code.starts_with("InvalidLaunchTemplateName.NotFound")
        || code.starts_with("InvalidLaunchTemplateId.NotFound")
        || code.starts_with("InvalidLaunchTemplateId.VersionNotFound")
        || code.starts_with("InvalidLaunchTemplateName.VersionNotFound")
}

/// The parts of one described version the operator uses; `None` without an
/// id or version number.
fn version(v: &Ec2Version) -> Option<LaunchTemplateVersion> {
    let data = v.launch_template_data();
    let tag_keys: BTreeSet<String> = data
        .map(|d| d.tag_specifications())
        .unwrap_or_default()
        .iter()
        .flat_map(|s| s.tags())
        .filter_map(|t| t.key().map(str::to_string))
        .collect();
    Some(LaunchTemplateVersion {
        id: v.launch_template_id()?.to_string(),
        name: v.launch_template_name().map(str::to_string),
        version: v.version_number()?,
        image_id: data.and_then(|d| d.image_id()).map(str::to_string),
        tag_keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::types::{LaunchTemplateTagSpecification, ResponseLaunchTemplateData, Tag};

    #[test]
    fn a_described_version_keeps_its_number_image_and_tag_keys() {
        let v = Ec2Version::builder()
            .launch_template_id("lt-0123456789abcdef0")
            .launch_template_name("base")
            .version_number(3)
            .launch_template_data(
                ResponseLaunchTemplateData::builder()
                    .image_id("ami-12345678")
                    .tag_specifications(
                        LaunchTemplateTagSpecification::builder()
                            .tags(
                                Tag::builder()
                                    .key("hostforge.io/cluster")
                                    .value("x")
                                    .build(),
                            )
                            .tags(Tag::builder().key("team").value("hpc").build())
                            .build(),
                    )
                    .build(),
            )
            .build();
        let got = version(&v).expect("complete");
        assert_eq!(got.id, "lt-0123456789abcdef0");
        assert_eq!(got.version, 3);
        assert_eq!(got.image_id.as_deref(), Some("ami-12345678"));
        assert_eq!(
            got.tag_keys.into_iter().collect::<Vec<_>>(),
            ["hostforge.io/cluster", "team"]
        );
    }

    #[test]
    fn missing_templates_and_versions_are_told_apart_from_other_errors() {
        assert!(is_missing("InvalidLaunchTemplateId.NotFound"));
        assert!(is_missing("InvalidLaunchTemplateName.NotFoundException"));
        assert!(is_missing("InvalidLaunchTemplateId.VersionNotFound"));
        assert!(!is_missing("UnauthorizedOperation"));
    }
}

//! Subnets and security groups found by their tags (a template's
//! subnetSelector / securityGroupSelector): one paginated, filtered listing
//! each, `tag:<key>` filters for a value and `tag-key` filters for `*`
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSubnets.html>,
//! <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeSecurityGroups.html>).
//! EC2 ANDs separate filters, so a resource must carry every tag.

use aws_sdk_ec2::types::Filter;

use super::calls::Calls;
use super::clients::AwsClients;
use super::pages::all_pages;
use crate::provider::{ProviderError, SecurityGroupFacts, SubnetFacts, TagQuery, ANY_VALUE};

/// The filters selecting every tag of `tags`.
fn tag_filters(tags: &TagQuery) -> Vec<Filter> {
    tags.iter()
        .map(|(key, value)| {
            if value == ANY_VALUE {
                Filter::builder().name("tag-key").values(key).build()
            } else {
                Filter::builder()
                    .name(format!("tag:{key}"))
                    .values(value)
                    .build()
            }
        })
        .collect()
}

/// Every subnet carrying all of `tags`, sorted by zone then id.
pub(super) async fn subnets(
    clients: &AwsClients,
    calls: &Calls,
    tags: &TagQuery,
) -> Result<Vec<SubnetFacts>, ProviderError> {
    let filters = tag_filters(tags);
    let mut found = all_pages(|token| {
        let request = clients
            .ec2
            .describe_subnets()
            .set_filters(Some(filters.clone()))
            .max_results(1000)
            .set_next_token(token);
        async move {
            let out = calls.run("DescribeSubnets", || request.send()).await?;
            let page = out
                .subnets()
                .iter()
                .filter_map(|s| {
                    Some(SubnetFacts {
                        id: s.subnet_id()?.to_string(),
                        zone: s.availability_zone().map(str::to_string),
                        vpc_id: s.vpc_id().map(str::to_string),
                    })
                })
                .collect();
            Ok((page, out.next_token))
        }
    })
    .await?;
    found.sort();
    found.dedup();
    Ok(found)
}

/// Every security group carrying all of `tags`, sorted by id.
pub(super) async fn security_groups(
    clients: &AwsClients,
    calls: &Calls,
    tags: &TagQuery,
) -> Result<Vec<SecurityGroupFacts>, ProviderError> {
    let filters = tag_filters(tags);
    let mut found = all_pages(|token| {
        let request = clients
            .ec2
            .describe_security_groups()
            .set_filters(Some(filters.clone()))
            .max_results(1000)
            .set_next_token(token);
        async move {
            let out = calls
                .run("DescribeSecurityGroups", || request.send())
                .await?;
            let page = out
                .security_groups()
                .iter()
                .filter_map(|g| {
                    Some(SecurityGroupFacts {
                        id: g.group_id()?.to_string(),
                        name: g.group_name().map(str::to_string),
                        vpc_id: g.vpc_id().map(str::to_string),
                    })
                })
                .collect();
            Ok((page, out.next_token))
        }
    })
    .await?;
    found.sort();
    found.dedup();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_star_asks_for_the_key_and_a_value_for_the_pair() {
        let tags: TagQuery = [
            ("role".to_string(), "*".to_string()),
            ("tier".to_string(), "hpc".to_string()),
        ]
        .into();
        let filters = tag_filters(&tags);
        let named: Vec<(Option<&str>, &[String])> =
            filters.iter().map(|f| (f.name(), f.values())).collect();
        assert_eq!(
            named,
            [
                (Some("tag-key"), &["role".to_string()][..]),
                (Some("tag:tier"), &["hpc".to_string()][..]),
            ]
        );
    }
}

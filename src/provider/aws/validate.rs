//! Existence checks for what a template names: subnets, security groups and
//! instance types. Ids go into filters rather than id parameters, so one
//! unknown id does not fail the whole call, and the answer says which are
//! missing.

use std::collections::HashSet;
use std::future::Future;

use aws_sdk_ec2::types::Filter;

use super::calls::Calls;
use super::clients::AwsClients;
use super::pages::all_pages;
use crate::provider::ProviderError;

/// Values per filter in one call; EC2 accepts up to 200.
const FILTER_BATCH: usize = 200;

/// Subnet ids in `ids` that DescribeSubnets does not report, in input order.
pub(super) async fn missing_subnets(
    clients: &AwsClients,
    calls: &Calls,
    ids: &[String],
) -> Result<Vec<String>, ProviderError> {
    not_reported(ids, |batch, token| {
        let request = clients
            .ec2
            .describe_subnets()
            .filters(filter("subnet-id", &batch))
            .max_results(1000)
            .set_next_token(token);
        async move {
            let out = calls.run("DescribeSubnets", || request.send()).await?;
            let ids = out.subnets().iter().filter_map(|s| s.subnet_id());
            Ok((ids.map(str::to_string).collect(), out.next_token))
        }
    })
    .await
}

/// Security group ids in `ids` that DescribeSecurityGroups does not report, in
/// input order.
pub(super) async fn missing_security_groups(
    clients: &AwsClients,
    calls: &Calls,
    ids: &[String],
) -> Result<Vec<String>, ProviderError> {
    not_reported(ids, |batch, token| {
        let request = clients
            .ec2
            .describe_security_groups()
            .filters(filter("group-id", &batch))
            .max_results(1000)
            .set_next_token(token);
        async move {
            let out = calls
                .run("DescribeSecurityGroups", || request.send())
                .await?;
            let ids = out.security_groups().iter().filter_map(|g| g.group_id());
            Ok((ids.map(str::to_string).collect(), out.next_token))
        }
    })
    .await
}

/// Placement group names in `names` that DescribePlacementGroups does not
/// report, in input order. Asked by the `group-name` filter, which answers an
/// empty list for an unknown name, where the `GroupNames` parameter would fail
/// the whole call (`InvalidPlacementGroup.Unknown`). The call has no paging.
pub(super) async fn missing_placement_groups(
    clients: &AwsClients,
    calls: &Calls,
    names: &[String],
) -> Result<Vec<String>, ProviderError> {
    not_reported(names, |batch, _token| {
        let request = clients
            .ec2
            .describe_placement_groups()
            .filters(filter("group-name", &batch));
        async move {
            let out = calls
                .run("DescribePlacementGroups", || request.send())
                .await?;
            let names = out.placement_groups().iter().filter_map(|g| g.group_name());
            Ok((names.map(str::to_string).collect(), None))
        }
    })
    .await
}

/// The ids of `ids` (deduplicated, in input order) that a filtered listing does
/// not report. `page` sends one page of the listing for a batch of at most
/// [`FILTER_BATCH`] ids and a page token, and answers the ids it reported.
async fn not_reported<F, Fut>(ids: &[String], mut page: F) -> Result<Vec<String>, ProviderError>
where
    F: FnMut(Vec<String>, Option<String>) -> Fut,
    Fut: Future<Output = Result<(Vec<String>, Option<String>), ProviderError>>,
{
    let wanted = unique(ids);
    let mut found = HashSet::new();
    for batch in wanted.chunks(FILTER_BATCH) {
        found.extend(all_pages(|token| page(batch.to_vec(), token)).await?);
    }
    Ok(absent(wanted, &found))
}

/// Instance types in `types` that the region does not offer, in input order.
/// Names with filter wildcards (`*`, `?`) are never types: reported unknown
/// without asking.
pub(super) async fn unknown_instance_types(
    clients: &AwsClients,
    calls: &Calls,
    types: &[String],
) -> Result<Vec<String>, ProviderError> {
    let wanted = unique(types);
    let askable: Vec<String> = wanted
        .iter()
        .filter(|t| !t.contains(['*', '?']))
        .cloned()
        .collect();
    let mut found = HashSet::new();
    for batch in askable.chunks(FILTER_BATCH) {
        found.extend(
            all_pages(|token| {
                let request = clients
                    .ec2
                    .describe_instance_types()
                    .filters(filter("instance-type", batch))
                    .max_results(100)
                    .set_next_token(token);
                async move {
                    let out = calls
                        .run("DescribeInstanceTypes", || request.send())
                        .await?;
                    let types = out
                        .instance_types()
                        .iter()
                        .filter_map(|t| t.instance_type());
                    Ok((
                        types.map(|t| t.as_str().to_string()).collect(),
                        out.next_token,
                    ))
                }
            })
            .await?,
        );
    }
    Ok(absent(wanted, &found))
}

fn filter(name: &str, values: &[String]) -> Filter {
    Filter::builder()
        .name(name)
        .set_values(Some(values.to_vec()))
        .build()
}

/// `ids` without duplicates, first occurrence kept.
pub(super) fn unique(ids: &[String]) -> Vec<String> {
    let mut seen = HashSet::new();
    ids.iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect()
}

fn absent(wanted: Vec<String>, found: &HashSet<String>) -> Vec<String> {
    wanted
        .into_iter()
        .filter(|id| !found.contains(id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_keeps_first_occurrences_in_order() {
        let ids: Vec<String> = ["b", "a", "", "b", "c", "a", ""].map(String::from).into();
        assert_eq!(unique(&ids), ["b", "a", "", "c"]);
    }

    #[test]
    fn absent_reports_in_input_order() {
        let found: HashSet<String> = ["a".to_string()].into();
        assert_eq!(
            absent(vec!["c".into(), "a".into(), "b".into()], &found),
            ["c", "b"]
        );
    }
}

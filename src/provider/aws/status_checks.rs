//! EC2's status checks of running instances: one paginated
//! DescribeInstanceStatus listing (MaxResults 1000, IncludeAllInstances
//! false, so only running instances) of the whole account and region,
//! narrowed to the impaired ones. No instance ids are sent: ids and
//! MaxResults cannot be combined, and a per-id batch would cost a call per
//! 100 machines where the listing costs one per 1,000
//! (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribeInstanceStatus.html).

use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{InstanceStatus, InstanceStatusSummary, SummaryStatus};

use super::calls::Calls;
use super::clients::AwsClients;
use super::pages::for_each_page;
use crate::provider::{Impairment, ProviderError};

/// The most statuses one DescribeInstanceStatus page may hold.
const PAGE: i32 = 1000;

/// Every running instance whose instance or system status is `impaired`.
pub(super) async fn impaired(
    clients: &AwsClients,
    calls: &Calls,
) -> Result<Vec<Impairment>, ProviderError> {
    let mut out = Vec::new();
    for_each_page(
        |token| {
            let request = clients
                .ec2
                .describe_instance_status()
                .include_all_instances(false)
                .max_results(PAGE)
                .set_next_token(token);
            async move {
                let answer = calls
                    .run("DescribeInstanceStatus", || request.send())
                    .await?;
                // Only the impaired are kept: the page (up to 1,000
                // statuses) is dropped here, not copied.
                let impaired: Vec<Impairment> = answer
                    .instance_statuses()
                    .iter()
                    .filter_map(impairment)
                    .collect();
                Ok((impaired, answer.next_token))
            }
        },
        |page| out.extend(page),
    )
    .await?;
    Ok(out)
}

/// The impairment `status` reports, if any.
fn impairment(status: &InstanceStatus) -> Option<Impairment> {
    let id = status.instance_id().filter(|id| !id.is_empty())?;
    let instance = is_impaired(status.instance_status());
    let system = is_impaired(status.system_status());
    if !instance && !system {
        return None;
    }
    // The earliest failing check's impairedSince; RFC 3339 sorts as time.
    let since = [status.instance_status(), status.system_status()]
        .into_iter()
        .flatten()
        .filter(|s| s.status() == Some(&SummaryStatus::Impaired))
        .flat_map(|s| s.details())
        .filter_map(|d| d.impaired_since())
        .filter_map(|t| t.fmt(DateTimeFormat::DateTime).ok())
        .min();
    Some(Impairment {
        id: id.to_string(),
        instance,
        system,
        since,
    })
}

fn is_impaired(summary: Option<&InstanceStatusSummary>) -> bool {
    summary.and_then(|s| s.status()) == Some(&SummaryStatus::Impaired)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::primitives::DateTime;
    use aws_sdk_ec2::types::{InstanceStatusDetails, StatusName, StatusType};

    fn summary(status: SummaryStatus, since: Option<i64>) -> InstanceStatusSummary {
        let detail = InstanceStatusDetails::builder()
            .name(StatusName::Reachability)
            .status(if status == SummaryStatus::Impaired {
                StatusType::Failed
            } else {
                StatusType::Passed
            })
            .set_impaired_since(since.map(DateTime::from_secs))
            .build();
        InstanceStatusSummary::builder()
            .status(status)
            .details(detail)
            .build()
    }

    fn status(
        id: &str,
        instance: InstanceStatusSummary,
        system: InstanceStatusSummary,
    ) -> InstanceStatus {
        InstanceStatus::builder()
            .instance_id(id)
            .instance_status(instance)
            .system_status(system)
            .build()
    }

    #[test]
    fn only_impaired_checks_count_with_the_earliest_since() {
        let ok = || summary(SummaryStatus::Ok, None);
        assert_eq!(impairment(&status("i-1", ok(), ok())), None);
        let both = impairment(&status(
            "i-2",
            summary(SummaryStatus::Impaired, Some(1_790_000_100)),
            summary(SummaryStatus::Impaired, Some(1_790_000_000)),
        ))
        .expect("impaired");
        assert!(both.instance && both.system);
        assert_eq!(both.since.as_deref(), Some("2026-09-21T14:13:20Z"));
        let system = impairment(&status("i-3", ok(), summary(SummaryStatus::Impaired, None)))
            .expect("impaired");
        assert!(!system.instance && system.system);
        assert_eq!(system.since, None);
        let initializing = summary(SummaryStatus::Initializing, None);
        assert_eq!(impairment(&status("i-4", initializing, ok())), None);
    }
}

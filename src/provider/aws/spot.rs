//! Spot interruption notices, read from the spot requests behind the
//! machines.
//!
//! When EC2 decides to take a spot instance back it gives a two-minute
//! warning; the instance's spot request then shows a `marked-for-termination`
//! (or `-stop`, `-hibernation`) status whose update time is when the warning
//! was given. One DescribeSpotInstanceRequests filtered on those status codes
//! lists every noticed spot request of the account and region: usually none
//! or a handful, whatever the number of spot machines held, so a frequent
//! check costs one call. The answer is narrowed to the machines asked about.

use std::collections::HashSet;

use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{Filter, SpotInstanceRequest};

use super::calls::Calls;
use super::clients::AwsClients;
use super::pages::all_pages;
use crate::provider::{InterruptionNotice, ProviderError};

/// The spot request status codes of an interruption notice, with what the
/// notice says will happen to the instance.
const NOTICE_CODES: [(&str, &str); 3] = [
    ("marked-for-termination", "terminate"),
    ("marked-for-stop", "stop"),
    ("marked-for-hibernation", "hibernate"),
];

/// The notices given for any of `ids`; no call for an empty list.
pub(super) async fn notices(
    clients: &AwsClients,
    calls: &Calls,
    ids: &[String],
) -> Result<Vec<InterruptionNotice>, ProviderError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
    let filter = Filter::builder()
        .name("status-code")
        .set_values(Some(
            NOTICE_CODES.iter().map(|(c, _)| c.to_string()).collect(),
        ))
        .build();
    let requests = all_pages(|token| {
        let request = clients
            .ec2
            .describe_spot_instance_requests()
            .filters(filter.clone())
            .max_results(1000)
            .set_next_token(token);
        async move {
            let out = calls
                .run("DescribeSpotInstanceRequests", || request.send())
                .await?;
            Ok((out.spot_instance_requests().to_vec(), out.next_token))
        }
    })
    .await?;
    Ok(requests
        .iter()
        .filter_map(to_notice)
        .filter(|n| wanted.contains(n.id.as_str()))
        .collect())
}

/// The notice a spot request carries, if its status is one.
fn to_notice(r: &SpotInstanceRequest) -> Option<InterruptionNotice> {
    let id = r.instance_id().filter(|id| !id.is_empty())?;
    let status = r.status()?;
    let code = status.code()?;
    let (_, action) = NOTICE_CODES.iter().find(|(c, _)| *c == code)?;
    let noticed_at = status.update_time()?.fmt(DateTimeFormat::DateTime).ok()?;
    Some(InterruptionNotice {
        id: id.to_string(),
        noticed_at,
        action: action.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::primitives::DateTime;
    use aws_sdk_ec2::types::SpotInstanceStatus;

    fn request(instance: &str, code: &str) -> SpotInstanceRequest {
        SpotInstanceRequest::builder()
            .instance_id(instance)
            .status(
                SpotInstanceStatus::builder()
                    .code(code)
                    .update_time(DateTime::from_secs(1_790_000_000))
                    .build(),
            )
            .build()
    }

    #[test]
    fn marked_requests_are_notices_with_their_action_and_time() {
        let n = to_notice(&request("i-1", "marked-for-stop")).expect("a notice");
        assert_eq!(n.id, "i-1");
        assert_eq!(n.action, "stop");
        assert_eq!(n.noticed_at, "2026-09-21T14:13:20Z");
        assert!(to_notice(&request("i-2", "fulfilled")).is_none());
        assert!(to_notice(&request("", "marked-for-termination")).is_none());
    }
}

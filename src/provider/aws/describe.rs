//! DescribeInstances by id and by ownership tags, translated into the port's
//! plain [`Machine`].

use std::collections::BTreeMap;

use aws_sdk_ec2::primitives::DateTimeFormat;
use aws_sdk_ec2::types::{Filter, Instance, InstanceLifecycleType, InstanceStateName};

use super::calls::Calls;
use super::clients::AwsClients;
use super::errors::detail;
use super::pages::{all_pages, for_each_page};
use super::validate::unique;
use crate::provider::{CapacityType, Machine, MachineState, ProviderError};

/// Instance ids per DescribeInstances call (values of one `instance-id` filter).
const ID_BATCH: usize = 200;

/// Instances per DescribeInstances page. EC2 allows 1,000, but one such page
/// and its translation were 14 MB of transient heap (heaptrack, release
/// build, full sweep at 10,000 machines: 30.7 MB before it, 44.6 MB during),
/// the operator's peak while it held those machines. A quarter of that
/// bounds it for four times as many calls, which only the sweep's full
/// listing makes many of (40 per `fullSweepInterval` at 10,000 machines).
const PAGE_SIZE: i32 = 250;

/// The machines among `ids` that EC2 reports now. The ids go into an
/// `instance-id` filter, not `InstanceIds`: an id EC2 does not know yet (a
/// fresh launch, eventually consistent) is simply absent instead of failing
/// the whole call with `InvalidInstanceID.NotFound`.
pub(super) async fn by_ids(
    clients: &AwsClients,
    calls: &Calls,
    ids: &[String],
) -> Result<Vec<Machine>, ProviderError> {
    let ids: Vec<String> = unique(ids)
        .into_iter()
        .filter(|id| !id.is_empty())
        .collect();
    let mut machines = Vec::new();
    for batch in ids.chunks(ID_BATCH) {
        let filter = Filter::builder()
            .name("instance-id")
            .set_values(Some(batch.to_vec()))
            .build();
        machines.extend(describe(clients, calls, vec![filter]).await?);
    }
    Ok(machines)
}

/// Every machine carrying all of `tags`, in any state. Refuses an empty tag
/// list: that would describe (and, for a garbage collector, claim) every
/// instance in the account.
pub(super) async fn by_tags(
    clients: &AwsClients,
    calls: &Calls,
    tags: &[(String, String)],
) -> Result<Vec<Machine>, ProviderError> {
    require_tags(tags)?;
    describe(clients, calls, tag_filters(tags)).await
}

/// The refusal of an empty owner-tag list, shared by every listing by tags.
fn require_tags(tags: &[(String, String)]) -> Result<(), ProviderError> {
    if tags.is_empty() {
        return Err(ProviderError::InvalidParameter(detail(
            "DescribeInstances",
            "MissingParameter",
            "describing owned machines needs at least one tag".into(),
        )));
    }
    Ok(())
}

/// Every machine carrying all of `tags` (with `down_only`, only those in a
/// state other than pending or running), handed to `each` a page at a time.
/// Refuses an empty tag list, as [`by_tags`] does.
pub(super) async fn pages_by_tags(
    clients: &AwsClients,
    calls: &Calls,
    tags: &[(String, String)],
    down_only: bool,
    each: &mut (dyn FnMut(Vec<Machine>) + Send),
) -> Result<(), ProviderError> {
    require_tags(tags)?;
    let mut filters = tag_filters(tags);
    if down_only {
        filters.push(
            Filter::builder()
                .name("instance-state-name")
                .set_values(Some(
                    ["stopping", "stopped", "shutting-down", "terminated"]
                        .map(String::from)
                        .to_vec(),
                ))
                .build(),
        );
    }
    for_each_page(
        |token| describe_page(clients, calls, filters.clone(), token),
        each,
    )
    .await
}

/// Every machine carrying all of `tags` and any of `values` for the tag
/// `key` (EC2 ORs the values of one filter), in calls of at most 200 values.
pub(super) async fn by_tag_values(
    clients: &AwsClients,
    calls: &Calls,
    tags: &[(String, String)],
    key: &str,
    values: &[String],
) -> Result<Vec<Machine>, ProviderError> {
    let values = unique(values);
    if values.is_empty() {
        return Ok(Vec::new());
    }
    let mut machines = Vec::new();
    for chunk in values.chunks(ID_BATCH) {
        let mut filters = tag_filters(tags);
        filters.push(
            Filter::builder()
                .name(format!("tag:{key}"))
                .set_values(Some(chunk.to_vec()))
                .build(),
        );
        machines.extend(describe(clients, calls, filters).await?);
    }
    Ok(machines)
}

fn tag_filters(tags: &[(String, String)]) -> Vec<Filter> {
    tags.iter()
        .map(|(k, v)| {
            Filter::builder()
                .name(format!("tag:{k}"))
                .values(v.clone())
                .build()
        })
        .collect()
}

/// All pages of one DescribeInstances query.
async fn describe(
    clients: &AwsClients,
    calls: &Calls,
    filters: Vec<Filter>,
) -> Result<Vec<Machine>, ProviderError> {
    all_pages(|token| describe_page(clients, calls, filters.clone(), token)).await
}

/// One page (of at most [`PAGE_SIZE`] instances) of a DescribeInstances query and the
/// token of the next; the SDK's answer is dropped once translated.
async fn describe_page(
    clients: &AwsClients,
    calls: &Calls,
    filters: Vec<Filter>,
    token: Option<String>,
) -> Result<(Vec<Machine>, Option<String>), ProviderError> {
    let request = clients
        .ec2
        .describe_instances()
        .set_filters(Some(filters))
        .max_results(PAGE_SIZE)
        .set_next_token(token);
    let out = calls.run("DescribeInstances", || request.send()).await?;
    let machines = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(to_machine)
        .collect();
    Ok((machines, out.next_token))
}

/// Translates an EC2 instance; one without an id is not a machine.
pub(super) fn to_machine(i: &Instance) -> Option<Machine> {
    let id = i.instance_id().filter(|id| !id.is_empty())?.to_string();
    let state = match i.state().and_then(|s| s.name()) {
        Some(InstanceStateName::Pending) => MachineState::Pending,
        Some(InstanceStateName::Running) => MachineState::Running,
        Some(InstanceStateName::Stopping) => MachineState::Stopping,
        Some(InstanceStateName::Stopped) => MachineState::Stopped,
        Some(InstanceStateName::ShuttingDown) => MachineState::ShuttingDown,
        Some(InstanceStateName::Terminated) => MachineState::Terminated,
        _ => MachineState::Unknown,
    };
    let capacity_type = match i.instance_lifecycle() {
        Some(InstanceLifecycleType::Spot) => CapacityType::Spot,
        _ => CapacityType::OnDemand,
    };
    let tags: BTreeMap<String, String> = i
        .tags()
        .iter()
        .filter_map(|t| {
            Some((
                t.key()?.to_string(),
                t.value().unwrap_or_default().to_string(),
            ))
        })
        .collect();
    Some(Machine {
        id,
        private_dns_name: non_empty(i.private_dns_name()),
        state,
        state_reason: non_empty(i.state_reason().and_then(|r| r.message()))
            .or_else(|| non_empty(i.state_transition_reason())),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()),
        availability_zone: non_empty(i.placement().and_then(|p| p.availability_zone())),
        subnet_id: non_empty(i.subnet_id()),
        private_ip: non_empty(i.private_ip_address()),
        public_ip: non_empty(i.public_ip_address()),
        launch_time: i
            .launch_time()
            .and_then(|t| t.fmt(DateTimeFormat::DateTime).ok()),
        capacity_type,
        image_id: non_empty(i.image_id()),
        tags,
        capacity_reservation_id: non_empty(i.capacity_reservation_id()),
    })
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ec2::primitives::DateTime;
    use aws_sdk_ec2::types::{InstanceState, InstanceType, Placement, Tag};

    #[test]
    fn instance_translates_to_machine() {
        let i = Instance::builder()
            .instance_id("i-0123456789abcdef0")
            .state(
                InstanceState::builder()
                    .name(InstanceStateName::Running)
                    .build(),
            )
            .instance_type(InstanceType::C6iXlarge)
            .placement(Placement::builder().availability_zone("us-east-1a").build())
            .subnet_id("subnet-1")
            .private_dns_name("ip-10-0-0-1.ec2.internal")
            .private_ip_address("10.0.0.1")
            .public_ip_address("")
            .launch_time(DateTime::from_secs(1_700_000_000))
            .instance_lifecycle(InstanceLifecycleType::Spot)
            .image_id("ami-1")
            .tags(
                Tag::builder()
                    .key("hostforge.io/cluster")
                    .value("c1")
                    .build(),
            )
            .build();
        let m = to_machine(&i).expect("has an id");
        assert_eq!(m.id, "i-0123456789abcdef0");
        assert_eq!(m.state, MachineState::Running);
        assert_eq!(m.instance_type.as_deref(), Some("c6i.xlarge"));
        assert_eq!(m.availability_zone.as_deref(), Some("us-east-1a"));
        assert_eq!(
            m.private_dns_name.as_deref(),
            Some("ip-10-0-0-1.ec2.internal")
        );
        assert_eq!(m.public_ip, None, "empty strings are absent values");
        assert_eq!(m.launch_time.as_deref(), Some("2023-11-14T22:13:20Z"));
        assert_eq!(m.capacity_type, CapacityType::Spot);
        assert_eq!(
            m.tags.get("hostforge.io/cluster").map(String::as_str),
            Some("c1")
        );
        assert!(to_machine(&Instance::builder().build()).is_none());
    }
}

//! One batch through an instant EC2 Fleet: a launch template for the batch,
//! one CreateFleet call over every instance type × subnet, one DescribeInstances
//! for the machines it returned, then the template is deleted again.
//!
//! The template is named after the batch (`hostforge-<batch id>`), so creating
//! it is idempotent by name: after a crash the same batch finds and reuses it.
//! It gets no ClientToken on purpose: the template is deleted after every
//! CreateFleet, and a repeated token would make EC2 answer with the deleted
//! template instead of creating it again. CreateFleet references it by name,
//! so a re-sent fleet (same ClientToken) matches the first one.

use aws_sdk_ec2::operation::create_fleet::builders::CreateFleetFluentBuilder;
use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::operation::create_launch_template::builders::CreateLaunchTemplateFluentBuilder;
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycle, InstanceType,
    LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    OnDemandOptionsRequest, RequestLaunchTemplateData, ResourceType, SpotAllocationStrategy,
    SpotOptionsRequest, TargetCapacitySpecificationRequest, VolumeType,
};
use tracing::{debug, info, warn};

use super::{check_common, client_token, invalid, is_arn, non_empty, root_device, user_data};
use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::errors::{classify, detail};
use crate::provider::aws::tags;
use crate::provider::{CapacityType, LaunchSpec, Machine, MachineState, ProviderError};

/// The error EC2 answers CreateLaunchTemplate with when the name is taken: for
/// a batch's own template name, a previous attempt of the same batch made it.
const TEMPLATE_EXISTS: &str = "InvalidLaunchTemplateName.AlreadyExistsException";

/// The template version the fleet launches: a batch's template is created once
/// and never gets another version.
const TEMPLATE_VERSION: &str = "1";

/// Launches `spec` through an instant fleet (see
/// [`crate::provider::MachineProvider::launch`]).
pub(super) async fn launch(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<Vec<Machine>, ProviderError> {
    check_common("CreateFleet", spec)?;
    if spec.batch_id.is_empty() {
        return Err(invalid(
            "CreateLaunchTemplate",
            "a fleet batch needs a batch id to name its launch template".into(),
        ));
    }
    let name = template_name(&spec.batch_id);
    ensure_template(clients, calls, spec, &name).await?;
    let answer = calls
        .run("CreateFleet", || {
            fleet_request(&clients.ec2, spec, &name).send()
        })
        .await;
    // Whatever the fleet did, the template has served its purpose: a retry of
    // this batch creates it again by name, and nothing else uses it.
    delete_template(clients, calls, &name).await;
    // No describe here: the fleet's answer names each machine's type, subnet
    // and capacity, and the request's poller describes every launch of every
    // request in one batched call moments later (its first look).
    Ok(pending_machines(spec, launched(&answer?)?))
}

/// The batch's launch template name.
pub(super) fn template_name(batch_id: &str) -> String {
    format!("hostforge-{batch_id}")
}

/// Creates the batch's launch template, or finds it already there (a previous
/// attempt of the same batch, e.g. before a crash).
async fn ensure_template(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
    name: &str,
) -> Result<(), ProviderError> {
    let request = template_request(&clients.ec2, spec, name);
    match calls.run("CreateLaunchTemplate", || request.send()).await {
        Ok(_) => Ok(()),
        Err(e) if e.code() == TEMPLATE_EXISTS => {
            debug!(provider = %calls.provider(), template = name, "reusing the batch's launch template");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// Deletes the batch's template, best effort: a leftover template costs
/// nothing, carries the ownership tags and is reused by a retry of the batch.
async fn delete_template(clients: &AwsClients, calls: &Calls, name: &str) {
    let request = clients
        .ec2
        .delete_launch_template()
        .launch_template_name(name);
    if let Err(e) = calls.run("DeleteLaunchTemplate", || request.send()).await {
        warn!(provider = %calls.provider(), template = name, error = %e,
            "deleting the batch's launch template failed; it is left behind");
    }
}

/// CreateLaunchTemplate for the batch: everything but the instance type and
/// subnet (the fleet's overrides), the template itself tagged like the machines
/// so a leftover can be traced to its request.
pub(super) fn template_request(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchSpec,
    name: &str,
) -> CreateLaunchTemplateFluentBuilder {
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(template_data(spec))
        .set_tag_specifications(non_empty(&tags::tag_specifications(
            &spec.tags,
            &[ResourceType::LaunchTemplate],
        )))
}

/// The template's data: image, network security, access, user data, root
/// volume, metadata options and the instance and volume tags.
pub(super) fn template_data(spec: &LaunchSpec) -> RequestLaunchTemplateData {
    let root = spec.root_volume.as_ref().map(|v| {
        LaunchTemplateBlockDeviceMappingRequest::builder()
            .device_name(root_device(spec))
            .ebs(
                LaunchTemplateEbsBlockDeviceRequest::builder()
                    .volume_size(v.size_gib)
                    .volume_type(VolumeType::from(v.volume_type.as_str()))
                    .set_iops(v.iops)
                    .set_throughput(v.throughput)
                    .encrypted(v.encrypted)
                    .set_kms_key_id(v.kms_key_id.clone())
                    .delete_on_termination(true)
                    .build(),
            )
            .build()
    });
    let profile = spec.instance_profile.as_deref().map(|p| {
        let b = LaunchTemplateIamInstanceProfileSpecificationRequest::builder();
        if is_arn(p) {
            b.arn(p).build()
        } else {
            b.name(p).build()
        }
    });
    let metadata = LaunchTemplateInstanceMetadataOptionsRequest::builder()
        .http_tokens(if spec.metadata.http_tokens_required {
            LaunchTemplateHttpTokensState::Required
        } else {
            LaunchTemplateHttpTokensState::Optional
        })
        .http_endpoint(LaunchTemplateInstanceMetadataEndpointState::Enabled)
        .set_http_put_response_hop_limit(spec.metadata.hop_limit)
        .build();
    RequestLaunchTemplateData::builder()
        .image_id(&spec.image_id)
        .set_security_group_ids(non_empty(&spec.security_group_ids))
        .set_key_name(spec.key_name.clone())
        .set_iam_instance_profile(profile)
        .set_user_data(user_data(spec))
        .set_block_device_mappings(root.map(|r| vec![r]))
        .metadata_options(metadata)
        .set_tag_specifications(non_empty(&tags::template_tag_specifications(
            &spec.tags,
            &tags::LAUNCHED,
        )))
        .build()
}

/// CreateFleet of type `instant` over the batch's template by name.
pub(super) fn fleet_request(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchSpec,
    template: &str,
) -> CreateFleetFluentBuilder {
    let (on_demand, spot) = split(spec);
    let config = FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .launch_template_name(template)
                .version(TEMPLATE_VERSION)
                .build(),
        )
        .set_overrides(Some(overrides(spec)))
        .build();
    // "prioritized": on-demand follows the overrides' order (types, then
    // subnets, as the user ranked them) instead of the lowest price.
    let on_demand_options = (on_demand > 0).then(|| {
        OnDemandOptionsRequest::builder()
            .allocation_strategy(FleetOnDemandAllocationStrategy::Prioritized)
            .build()
    });
    let spot_options = match (&spec.capacity.allocation_strategy, spot > 0) {
        (Some(s), true) => Some(
            SpotOptionsRequest::builder()
                .allocation_strategy(SpotAllocationStrategy::from(s.as_str()))
                .build(),
        ),
        _ => None,
    };
    ec2.create_fleet()
        .r#type(FleetType::Instant)
        .set_client_token(client_token(spec))
        .launch_template_configs(config)
        .target_capacity_specification(target_capacity(spec))
        .set_on_demand_options(on_demand_options)
        .set_spot_options(spot_options)
}

/// How many of the batch's capacity units are on-demand and how many spot.
pub(super) fn split(spec: &LaunchSpec) -> (i32, i32) {
    let on_demand = spec
        .capacity
        .on_demand_count(spec.count)
        .clamp(0, spec.count);
    (on_demand, spec.count - on_demand)
}

/// Every instance type × subnet (types only without subnets), in preference
/// order, which is also their on-demand priority (0 first). The spot price cap
/// is per override, since it is a price per instance-hour.
pub(super) fn overrides(spec: &LaunchSpec) -> Vec<FleetLaunchTemplateOverridesRequest> {
    let (_, spot) = split(spec);
    let max_price = spec.capacity.max_price.clone().filter(|_| spot > 0);
    let subnets: Vec<Option<&String>> = if spec.subnet_ids.is_empty() {
        vec![None]
    } else {
        spec.subnet_ids.iter().map(Some).collect()
    };
    let mut out = Vec::with_capacity(spec.instance_types.len() * subnets.len());
    for t in &spec.instance_types {
        for subnet in &subnets {
            out.push(
                FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(InstanceType::from(t.name.as_str()))
                    .set_subnet_id(subnet.cloned())
                    .set_weighted_capacity(t.weight.map(f64::from))
                    .priority(out.len() as f64)
                    .set_max_price(max_price.clone())
                    .build(),
            );
        }
    }
    out
}

/// The fleet's target: `count` units, split on-demand/spot by the spec.
pub(super) fn target_capacity(spec: &LaunchSpec) -> TargetCapacitySpecificationRequest {
    let (on_demand, spot) = split(spec);
    TargetCapacitySpecificationRequest::builder()
        .total_target_capacity(spec.count)
        .on_demand_target_capacity(on_demand)
        .spot_target_capacity(spot)
        .default_target_capacity_type(if on_demand == 0 {
            DefaultTargetCapacityType::Spot
        } else {
            DefaultTargetCapacityType::OnDemand
        })
        .build()
}

/// One instance the fleet answered with: all that CreateFleet says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Launched {
    /// Instance id.
    pub(super) id: String,
    /// On-demand or spot, from the answer's lifecycle.
    pub(super) capacity_type: CapacityType,
    /// The override's instance type.
    pub(super) instance_type: Option<String>,
    /// The override's subnet, when EC2 says.
    pub(super) subnet_id: Option<String>,
    /// The zone, when EC2 says.
    pub(super) availability_zone: Option<String>,
}

/// The instances of a fleet answer, or, when there are none, why: the first of
/// its errors classified like a failed call (so `InsufficientInstanceCapacity`
/// becomes [`ProviderError::Capacity`]). An answer with neither instances nor
/// errors is a capacity verdict too: re-sending the same ClientToken would only
/// repeat it, so the caller must move on to another type, subnet or capacity.
pub(super) fn launched(out: &CreateFleetOutput) -> Result<Vec<Launched>, ProviderError> {
    let mut launched: Vec<Launched> = Vec::new();
    for group in out.instances() {
        let capacity_type = match group.lifecycle() {
            Some(InstanceLifecycle::Spot) => CapacityType::Spot,
            _ => CapacityType::OnDemand,
        };
        for id in group.instance_ids() {
            if id.is_empty() || launched.iter().any(|l| &l.id == id) {
                continue;
            }
            launched.push(Launched {
                id: id.clone(),
                capacity_type,
                instance_type: group.instance_type().map(|t| t.as_str().to_string()),
                subnet_id: group.subnet_id().map(str::to_string),
                availability_zone: group.availability_zone().map(str::to_string),
            });
        }
    }
    let errors = out.errors();
    if launched.is_empty() {
        return Err(match errors.first() {
            Some(e) => classify(
                "CreateFleet",
                e.error_code().unwrap_or_default(),
                e.error_message().unwrap_or_default(),
                None,
            ),
            None => ProviderError::Capacity(detail(
                "CreateFleet",
                "NoInstancesLaunched",
                "the fleet launched no instances and named no error".into(),
            )),
        });
    }
    if let Some(e) = errors.first() {
        info!(
            launched = launched.len(),
            errors = errors.len(),
            code = e.error_code().unwrap_or_default(),
            message = e.error_message().unwrap_or_default(),
            "fleet launched part of its target"
        );
    }
    Ok(launched)
}

/// The machines in the fleet's answer order, as the launch itself tells:
/// pending, its type, subnet, capacity, image and the tags it was launched
/// with. Host names, addresses and launch times come with the first poll.
pub(super) fn pending_machines(spec: &LaunchSpec, launched: Vec<Launched>) -> Vec<Machine> {
    launched
        .into_iter()
        .map(|l| Machine {
            instance_type: l.instance_type,
            availability_zone: l.availability_zone,
            subnet_id: l.subnet_id,
            capacity_type: l.capacity_type,
            image_id: Some(spec.image_id.clone()),
            tags: spec.tags.clone(),
            ..Machine::bare(l.id, MachineState::Pending)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{offline_client, spec};
    use super::*;
    use crate::provider::{LaunchApi, LaunchCapacity};
    use aws_sdk_ec2::types::{CreateFleetError, CreateFleetInstance};

    fn fleet_spec(on_demand_percent: i32, count: i32) -> LaunchSpec {
        let mut s = spec();
        s.api = LaunchApi::Fleet;
        s.count = count;
        s.capacity = LaunchCapacity {
            on_demand_percent,
            max_price: Some("0.2".into()),
            allocation_strategy: Some("price-capacity-optimized".into()),
        };
        s
    }

    #[test]
    fn overrides_are_types_times_subnets_in_priority_order() {
        let o = overrides(&fleet_spec(50, 4));
        let rows: Vec<_> = o
            .iter()
            .map(|o| {
                (
                    o.instance_type().map(|t| t.as_str()),
                    o.subnet_id(),
                    o.weighted_capacity(),
                    o.priority(),
                    o.max_price(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    Some("c6i.xlarge"),
                    Some("subnet-a"),
                    None,
                    Some(0.0),
                    Some("0.2")
                ),
                (
                    Some("c6i.xlarge"),
                    Some("subnet-b"),
                    None,
                    Some(1.0),
                    Some("0.2")
                ),
                (
                    Some("m6i.xlarge"),
                    Some("subnet-a"),
                    Some(2.0),
                    Some(2.0),
                    Some("0.2")
                ),
                (
                    Some("m6i.xlarge"),
                    Some("subnet-b"),
                    Some(2.0),
                    Some(3.0),
                    Some("0.2")
                ),
            ]
        );
    }

    #[test]
    fn without_subnets_overrides_are_types_only_and_on_demand_has_no_price_cap() {
        let mut s = fleet_spec(100, 2);
        s.subnet_ids.clear();
        let o = overrides(&s);
        assert_eq!(o.len(), 2);
        assert!(o
            .iter()
            .all(|o| o.subnet_id().is_none() && o.max_price().is_none()));
    }

    #[test]
    fn target_capacity_splits_on_demand_rounding_up() {
        let t = target_capacity(&fleet_spec(50, 3));
        assert_eq!(t.total_target_capacity(), Some(3));
        assert_eq!(t.on_demand_target_capacity(), Some(2));
        assert_eq!(t.spot_target_capacity(), Some(1));
        assert_eq!(
            t.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::OnDemand)
        );
        let t = target_capacity(&fleet_spec(0, 3));
        assert_eq!(
            (t.on_demand_target_capacity(), t.spot_target_capacity()),
            (Some(0), Some(3))
        );
        assert_eq!(
            t.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::Spot)
        );
    }

    #[test]
    fn fleet_request_is_instant_by_template_name_with_both_strategies() {
        let client = offline_client();
        let req = fleet_request(&client, &fleet_spec(50, 4), "hostforge-3f2a9c1e-4");
        let i = req.as_input();
        assert_eq!(i.get_type(), &Some(FleetType::Instant));
        assert_eq!(i.get_client_token().as_deref(), Some("tok-1"));
        let configs = i.get_launch_template_configs().as_ref().expect("configs");
        assert_eq!(configs.len(), 1);
        let lt = configs[0]
            .launch_template_specification()
            .expect("template");
        assert_eq!(lt.launch_template_name(), Some("hostforge-3f2a9c1e-4"));
        assert_eq!(lt.version(), Some(TEMPLATE_VERSION));
        assert_eq!(configs[0].overrides().len(), 4);
        let od = i
            .get_on_demand_options()
            .as_ref()
            .expect("on-demand options");
        assert_eq!(
            od.allocation_strategy(),
            Some(&FleetOnDemandAllocationStrategy::Prioritized)
        );
        let spot = i.get_spot_options().as_ref().expect("spot options");
        assert_eq!(
            spot.allocation_strategy(),
            Some(&SpotAllocationStrategy::PriceCapacityOptimized)
        );

        let req = fleet_request(&client, &fleet_spec(100, 4), "t");
        assert_eq!(req.as_input().get_spot_options(), &None, "no spot wanted");
    }

    #[test]
    fn template_holds_everything_but_type_and_subnet() {
        let s = fleet_spec(50, 4);
        let client = offline_client();
        let req = template_request(&client, &s, "hostforge-3f2a9c1e-4");
        let i = req.as_input();
        assert_eq!(
            i.get_launch_template_name().as_deref(),
            Some("hostforge-3f2a9c1e-4")
        );
        let own = i.get_tag_specifications().as_ref().expect("template tags");
        assert_eq!(own[0].resource_type(), Some(&ResourceType::LaunchTemplate));
        let d = i.get_launch_template_data().as_ref().expect("data");
        assert_eq!(d.image_id(), Some("ami-1"));
        assert_eq!(d.instance_type(), None);
        assert_eq!(d.security_group_ids(), ["sg-1"]);
        assert_eq!(d.key_name(), Some("key"));
        assert_eq!(
            d.iam_instance_profile().and_then(|p| p.arn()),
            Some("arn:aws:iam::1:instance-profile/p")
        );
        assert_eq!(d.user_data(), Some("IyEvYmluL3NoCmVjaG8gaGkK"));
        let root = &d.block_device_mappings()[0];
        assert_eq!(root.device_name(), Some("/dev/xvda"));
        let ebs = root.ebs().expect("ebs");
        assert_eq!(ebs.volume_size(), Some(50));
        assert_eq!(ebs.delete_on_termination(), Some(true));
        let md = d.metadata_options().expect("metadata");
        assert_eq!(
            md.http_tokens(),
            Some(&LaunchTemplateHttpTokensState::Required)
        );
        assert_eq!(md.http_put_response_hop_limit(), Some(2));
        let types: Vec<_> = d
            .tag_specifications()
            .iter()
            .filter_map(|t| t.resource_type())
            .collect();
        assert_eq!(types, [&ResourceType::Instance, &ResourceType::Volume]);
    }

    fn answer(
        instances: Vec<CreateFleetInstance>,
        errors: Vec<CreateFleetError>,
    ) -> CreateFleetOutput {
        CreateFleetOutput::builder()
            .set_instances(Some(instances))
            .set_errors(Some(errors))
            .build()
    }

    fn group(lifecycle: InstanceLifecycle, ids: &[&str]) -> CreateFleetInstance {
        CreateFleetInstance::builder()
            .lifecycle(lifecycle)
            .instance_type(InstanceType::C6iXlarge)
            .set_instance_ids(Some(ids.iter().map(|s| s.to_string()).collect()))
            .build()
    }

    fn error(code: &str) -> CreateFleetError {
        CreateFleetError::builder()
            .error_code(code)
            .error_message("no capacity in us-east-1a")
            .build()
    }

    #[test]
    fn answers_with_instances_succeed_even_with_errors() {
        let out = answer(
            vec![
                group(InstanceLifecycle::OnDemand, &["i-1", "i-2"]),
                group(InstanceLifecycle::Spot, &["i-3", "i-1"]),
            ],
            vec![error("InsufficientInstanceCapacity")],
        );
        let l = launched(&out).expect("some launched");
        let rows: Vec<_> = l.iter().map(|l| (l.id.as_str(), l.capacity_type)).collect();
        assert_eq!(
            rows,
            [
                ("i-1", CapacityType::OnDemand),
                ("i-2", CapacityType::OnDemand),
                ("i-3", CapacityType::Spot)
            ]
        );
        assert_eq!(l[0].instance_type.as_deref(), Some("c6i.xlarge"));
    }

    #[test]
    fn empty_answers_fail_with_the_first_error_classified() {
        let out = answer(
            vec![],
            vec![
                error("InsufficientInstanceCapacity"),
                error("InvalidParameterValue"),
            ],
        );
        let e = launched(&out).expect_err("nothing launched");
        assert!(matches!(e, ProviderError::Capacity(_)), "{e}");
        assert_eq!(e.detail().operation, "CreateFleet");
        assert_eq!(e.code(), "InsufficientInstanceCapacity");
        assert_eq!(e.detail().message, "no capacity in us-east-1a");

        let e = launched(&answer(vec![], vec![error("InvalidParameterValue")])).expect_err("bad");
        assert!(matches!(e, ProviderError::InvalidParameter(_)), "{e}");

        let e = launched(&answer(vec![], vec![])).expect_err("silent");
        assert!(matches!(e, ProviderError::Capacity(_)), "{e}");
        assert_eq!(e.code(), "NoInstancesLaunched");
    }

    #[test]
    fn fleet_machines_are_pending_with_what_the_fleet_said() {
        let s = fleet_spec(50, 2);
        let l = launched(&answer(
            vec![group(InstanceLifecycle::Spot, &["i-1", "i-2"])],
            vec![],
        ))
        .expect("launched");
        let machines = pending_machines(&s, l);
        assert_eq!(
            machines.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["i-1", "i-2"],
            "in the fleet's answer order"
        );
        let m = &machines[1];
        assert_eq!(m.state, MachineState::Pending);
        assert_eq!(m.capacity_type, CapacityType::Spot);
        assert_eq!(m.instance_type.as_deref(), Some("c6i.xlarge"));
        assert_eq!(m.image_id.as_deref(), Some(s.image_id.as_str()));
        assert_eq!(m.tags, s.tags);
    }

    #[test]
    fn template_names_follow_the_batch() {
        assert_eq!(template_name("3f2a9c1e-4"), "hostforge-3f2a9c1e-4");
    }
}

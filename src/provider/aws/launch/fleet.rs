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
mod tests;

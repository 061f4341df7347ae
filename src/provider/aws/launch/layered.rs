//! What a fleet override carries beyond an instance type and a subnet: the
//! instance requirements that replace the type (attribute-based instance
//! type selection), and, when the fleet launches from a user's own launch
//! template, hostforge's settings layered on top of that template.
//!
//! - Instance requirements: each override names `InstanceRequirements`
//!   instead of `InstanceType`, and EC2 picks every type that matches
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-attribute-based-instance-type-selection.html>).
//! - A user's template: the fleet names it instead of hostforge's shared
//!   template, so what hostforge would have put in its own template goes on
//!   each override instead: image, key pair, instance profile, metadata
//!   options and placement
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_FleetLaunchTemplateOverridesRequest.html>).
//!   What an override cannot carry (security groups, user data, volumes, CPU
//!   options, EBS optimization, public IP) the MachineTemplate refuses at
//!   admission beside a user's template on the fleet path.

use aws_sdk_ec2::types::builders::FleetLaunchTemplateOverridesRequestBuilder;
use aws_sdk_ec2::types::{
    BurstablePerformance, CpuManufacturer, FleetHttpTokensState,
    FleetIamInstanceProfileSpecificationRequest, FleetInstanceMetadataEndpointState,
    FleetInstanceMetadataOptionsRequest, FleetOnDemandAllocationStrategy, InstanceGeneration,
    InstanceRequirementsRequest, MemoryMiBRequest, Placement, Tenancy, VCpuCountRangeRequest,
};

use super::{is_arn, non_empty};
use crate::provider::{LaunchSpec, RequirementsSpec};

/// `InstanceRequirements` of `r`, in EC2's shape.
pub(super) fn requirements(r: &RequirementsSpec) -> InstanceRequirementsRequest {
    InstanceRequirementsRequest::builder()
        .v_cpu_count(
            VCpuCountRangeRequest::builder()
                .min(r.vcpu.0)
                .set_max(r.vcpu.1)
                .build(),
        )
        .memory_mib(
            MemoryMiBRequest::builder()
                .min(r.memory_mib.0)
                .set_max(r.memory_mib.1)
                .build(),
        )
        .set_cpu_manufacturers(non_empty(
            &r.cpu_manufacturers
                .iter()
                .map(|m| CpuManufacturer::from(m.as_str()))
                .collect::<Vec<_>>(),
        ))
        .set_instance_generations(non_empty(
            &r.instance_generations
                .iter()
                .map(|g| InstanceGeneration::from(g.as_str()))
                .collect::<Vec<_>>(),
        ))
        .set_burstable_performance(
            r.burstable_performance
                .as_deref()
                .map(BurstablePerformance::from),
        )
        .set_excluded_instance_types(non_empty(&r.excluded_instance_types))
        .set_allowed_instance_types(non_empty(&r.allowed_instance_types))
        .build()
}

/// `o` with hostforge's settings on top of a user's template, when the
/// spec launches from one (see the module doc); `o` unchanged otherwise.
pub(super) fn on_base(
    spec: &LaunchSpec,
    o: FleetLaunchTemplateOverridesRequestBuilder,
) -> FleetLaunchTemplateOverridesRequestBuilder {
    if spec.options.base_template.is_none() {
        return o;
    }
    let profile = spec.instance_profile.as_deref().map(|p| {
        let b = FleetIamInstanceProfileSpecificationRequest::builder();
        if is_arn(p) {
            b.arn(p).build()
        } else {
            b.name(p).build()
        }
    });
    let metadata = FleetInstanceMetadataOptionsRequest::builder()
        .http_tokens(if spec.metadata.http_tokens_required {
            FleetHttpTokensState::Required
        } else {
            FleetHttpTokensState::Optional
        })
        .http_endpoint(FleetInstanceMetadataEndpointState::Enabled)
        .set_http_put_response_hop_limit(spec.metadata.hop_limit)
        .build();
    let opts = &spec.options;
    let placement = opts.has_placement().then(|| {
        Placement::builder()
            .set_group_name(opts.placement_group.clone())
            .set_partition_number(opts.partition_number)
            .set_tenancy(opts.tenancy.as_deref().map(Tenancy::from))
            .build()
    });
    o.image_id(&spec.image_id)
        .set_key_name(spec.key_name.clone())
        .set_iam_instance_profile(profile)
        .metadata_options(metadata)
        .set_placement(placement)
}

/// The on-demand allocation strategy: `prioritized` (the overrides' order,
/// types then subnets as the user ranked them) with named types;
/// `lowest-price` with instance requirements, whose types have no order.
pub(super) fn on_demand_strategy(spec: &LaunchSpec) -> FleetOnDemandAllocationStrategy {
    if spec.options.instance_requirements.is_some() {
        FleetOnDemandAllocationStrategy::LowestPrice
    } else {
        FleetOnDemandAllocationStrategy::Prioritized
    }
}

/// The spec's `InstanceRequirements`, when the override list is built from
/// them (one override per subnet) rather than from named types (type ×
/// subnet).
pub(super) fn by_requirements(spec: &LaunchSpec) -> Option<InstanceRequirementsRequest> {
    spec.options
        .instance_requirements
        .as_ref()
        .map(requirements)
}

//! One batch (or coalesced group) through an instant EC2 Fleet: one CreateFleet
//! call over every instance type × subnet, from a launch template holding
//! everything else.
//!
//! The template is shared: every call whose template would hold the same
//! content launches from one template this process created
//! ([`template_cache`]), named by id and version 1, so it can be neither
//! replaced nor changed by anyone else. Before, each call created a template
//! and deleted it again: two more mutating calls per launch. What differs
//! between the calls sharing a template (the request's ownership tags, the
//! batch and group tags, `Name`) goes on the instances through CreateFleet's
//! own tag specifications, which an instant fleet applies at launch
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html>,
//! `TagSpecifications`); the volumes carry the template's shared tags
//! (cluster, template, namespace and the user's tags).
//!
//! A re-send of a batch in this process names the same template, so its
//! ClientToken matches the first send. After a restart the cache is empty and
//! the re-send names a new template: EC2 answers IdempotentParameterMismatch
//! if the first send had reached it, and the batch is settled by its tag.
//! Templates no longer kept (idle past the grace period, or made by an
//! earlier process) are deleted by the controller's collector.
//!
//! A spec with a user's own launch template (`launchTemplate`) launches from
//! that template at its pinned version instead: no template is created or
//! cached, and hostforge's settings go on the overrides ([`layered`]).

use aws_sdk_ec2::operation::create_fleet::builders::CreateFleetFluentBuilder;
use aws_sdk_ec2::operation::create_fleet::CreateFleetOutput;
use aws_sdk_ec2::operation::create_launch_template::builders::CreateLaunchTemplateFluentBuilder;
use aws_sdk_ec2::primitives::{DateTime, DateTimeFormat};
use aws_sdk_ec2::types::{
    DefaultTargetCapacityType, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest, FleetType,
    InstanceLifecycle, InstanceType, LaunchTemplateBlockDeviceMappingRequest,
    LaunchTemplateCpuOptionsRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateIamInstanceProfileSpecificationRequest,
    LaunchTemplateInstanceMetadataEndpointState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplatePlacementRequest,
    OnDemandOptionsRequest, RequestLaunchTemplateData, ResourceType, SpotAllocationStrategy,
    SpotOptionsRequest, TargetCapacitySpecificationRequest, Tenancy, VolumeType,
};
use tracing::{info, warn};

use super::{
    check_common, client_token, is_arn, layered, non_empty, reserve, root_device, user_data,
};
use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::errors::{classify, detail};
use crate::provider::aws::launch_templates::{self, NAMESPACE_TAG};
use crate::provider::aws::tags;

use super::template_cache::{Key, TemplateCache};
use crate::provider::{
    CapacityType, LaunchAnswer, LaunchSpec, Machine, MachineState, ProviderError, Shortfall,
    VolumeSpec,
};

/// The error EC2 answers CreateLaunchTemplate with when the name is taken:
/// with 64 random bits in it, only an earlier try of the same creation whose
/// answer was lost.
const TEMPLATE_EXISTS: &str = "InvalidLaunchTemplateName.AlreadyExistsException";

/// EC2's answer to CreateLaunchTemplate when the account holds its quota of
/// launch templates (5,000 per Region,
/// <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-template-restrictions.html>;
/// the code is in <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
const TEMPLATE_QUOTA: &str = "MaxTemplateLimitExceeded";

/// The template version the fleet launches: hostforge creates a template
/// once and never gives it another version, and version 1 cannot change.
const TEMPLATE_VERSION: &str = "1";

/// How old a template must be before EC2 saying it does not exist means it
/// was deleted rather than not shown yet (EC2's eventual consistency after
/// CreateLaunchTemplate is seconds): the cache then forgets it and the next
/// launch creates another.
const SETTLED: std::time::Duration = std::time::Duration::from_secs(60);

/// Launches `spec` through an instant fleet (see
/// [`crate::provider::MachineProvider::launch`]) from the template `cache`
/// keeps for its content, created first when there is none.
pub(super) async fn launch(
    clients: &AwsClients,
    calls: &Calls,
    cache: &TemplateCache,
    spec: &LaunchSpec,
) -> Result<LaunchAnswer, ProviderError> {
    check_common("CreateFleet", spec)?;
    if spec.options.base_template.is_some() {
        // The user's template is the fleet's: nothing of hostforge's to
        // create, lease or lose.
        let answer = calls
            .run("CreateFleet", || {
                fleet_request(&clients.ec2, spec, "").send()
            })
            .await;
        return answer_of(spec, answer);
    }
    let key = Key::of(spec);
    let template = cache
        .lease_or_create(&key, || create_template(clients, calls, &key))
        .await?;
    let answer = calls
        .run("CreateFleet", || {
            fleet_request(&clients.ec2, spec, &template.id).send()
        })
        .await;
    if let Err(e) = &answer {
        if launch_templates::is_template_not_found(e) && cache.forget_missing(&template, SETTLED) {
            warn!(provider = %calls.provider(), template = %template.id,
                "the fleet's launch template was deleted by someone else; the next launch creates another");
        }
    }
    drop(template);
    answer_of(spec, answer.map_err(template_lag))
}

/// The launch answer of a CreateFleet call's outcome.
fn answer_of(
    spec: &LaunchSpec,
    answer: Result<CreateFleetOutput, ProviderError>,
) -> Result<LaunchAnswer, ProviderError> {
    // Stamped when the answer came: no machine of it launched later, so ages
    // counted from here are never too old (the grace periods of deletion and
    // the sweep stay on the safe side) until the first describe has EC2's own.
    // Whole seconds, as EC2 and the status field (RFC 3339 without fraction)
    // hold launch times: a fraction would never survive the status round trip.
    let answered_at = DateTime::from_secs(DateTime::from(std::time::SystemTime::now()).secs())
        .fmt(DateTimeFormat::DateTime)
        .ok();
    // No describe here: the fleet's answer names each machine's type, subnet
    // and capacity, and the request's poller describes every launch of every
    // request in one batched call moments later (its first look).
    let out = answer?;
    Ok(LaunchAnswer {
        machines: pending_machines(spec, launched(&out)?, answered_at),
        shortfall: shortfall(&out),
    })
}

/// CreateFleet naming a template EC2 does not show yet: right after
/// CreateLaunchTemplate this is EC2's eventual consistency
/// (<https://docs.aws.amazon.com/AWSEC2/latest/devguide/eventual-consistency.html>),
/// so it is retried like a 5xx (the batch stays Pending and its re-send finds
/// or recreates the template), never taken as a verdict on the batch.
fn template_lag(e: ProviderError) -> ProviderError {
    if launch_templates::is_template_not_found(&e) {
        ProviderError::Transient(e.detail().clone())
    } else {
        e
    }
}

/// Creates a template for `key`'s content under a new name and returns its
/// id. A taken name (a lost answer to an earlier try, retried by the SDK) is a
/// retry: the batch stays Pending and its re-send creates one under another
/// name; the one made by the lost try is collected once older than the grace
/// period.
async fn create_template(
    clients: &AwsClients,
    calls: &Calls,
    key: &Key,
) -> Result<String, ProviderError> {
    let name = launch_templates::new_name(&key.content.tags);
    let request = template_request(&clients.ec2, key, &name);
    match calls.run("CreateLaunchTemplate", || request.send()).await {
        Ok(out) => {
            let id = out
                .launch_template()
                .and_then(|t| t.launch_template_id())
                .map(str::to_string);
            match id {
                Some(id) => {
                    info!(provider = %calls.provider(), template = %name, id = %id,
                        "created a launch template for the fleet launches of one content");
                    Ok(id)
                }
                None => Err(ProviderError::Unknown(detail(
                    "CreateLaunchTemplate",
                    "MissingLaunchTemplateId",
                    format!("EC2 created launch template {name} but its answer named no id"),
                ))),
            }
        }
        Err(e) if e.code() == TEMPLATE_EXISTS => Err(ProviderError::Transient(e.detail().clone())),
        Err(e) if e.code() == TEMPLATE_QUOTA => Err(quota_refusal(&e)),
        Err(e) => Err(e),
    }
}

/// The quota answer as a definitive refusal that says what to do: EC2 will
/// refuse every new template until some are deleted, so re-sending would only
/// wedge the batch.
fn quota_refusal(e: &ProviderError) -> ProviderError {
    ProviderError::Refused(detail(
        e.detail().operation,
        TEMPLATE_QUOTA,
        format!(
            "{} (the account's launch templates are at their quota, 5,000 per Region; \
             hostforge deletes its own leftovers after gcGracePeriod, others must be deleted by their owners)",
            e.detail().message
        ),
    ))
}

/// CreateLaunchTemplate for `key`'s content: everything but the instance
/// type and subnet (the fleet's overrides) and the per-launch tags, the
/// template itself tagged with the shared tags and its namespace, so the
/// collector finds it.
pub(super) fn template_request(
    ec2: &aws_sdk_ec2::Client,
    key: &Key,
    name: &str,
) -> CreateLaunchTemplateFluentBuilder {
    let mut tags = key.content.tags.clone();
    tags.insert(NAMESPACE_TAG.to_string(), key.namespace.clone());
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(template_data(&key.content))
        .set_tag_specifications(non_empty(&tags::tag_specifications(
            &tags,
            &[ResourceType::LaunchTemplate],
        )))
}

/// The template's data: image, network security, access, user data, root and
/// data volumes, metadata options, placement, EBS optimization, CPU options and
/// the volumes' tags (the instances' come with the fleet call).
///
/// When the spec says whether to associate a public IP, the security groups go
/// on a primary network interface (device index 0) instead of the top level:
/// EC2 takes `AssociatePublicIpAddress` only on an interface and refuses
/// instance-level groups beside one
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_LaunchTemplateInstanceNetworkInterfaceSpecificationRequest.html>).
/// The subnet stays in the fleet's overrides, which EC2 applies to that
/// interface.
pub(super) fn template_data(spec: &LaunchSpec) -> RequestLaunchTemplateData {
    let volumes: Vec<LaunchTemplateBlockDeviceMappingRequest> =
        spec.root_volume
            .as_ref()
            .map(|v| template_volume(root_device(spec), v, true))
            .into_iter()
            .chain(spec.options.data_volumes.iter().map(|d| {
                template_volume(d.device_name.clone(), &d.volume, d.delete_on_termination)
            }))
            .collect();
    let o = &spec.options;
    let groups = non_empty(&spec.security_group_ids);
    let (groups, interface) = match o.associate_public_ip {
        _ if !o.network_interfaces.is_empty() => (None, None),
        None => (groups, None),
        Some(public) => (
            None,
            Some(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(public)
                    .delete_on_termination(true)
                    .set_groups(groups)
                    .build(),
            ),
        ),
    };
    let placement = o.has_placement().then(|| {
        LaunchTemplatePlacementRequest::builder()
            .set_group_name(o.placement_group.clone())
            .set_partition_number(o.partition_number)
            .set_tenancy(o.tenancy.as_deref().map(Tenancy::from))
            .build()
    });
    let cpu = o.cpu.as_ref().map(|c| {
        LaunchTemplateCpuOptionsRequest::builder()
            .set_core_count(c.core_count)
            .set_threads_per_core(c.threads_per_core)
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
        .set_security_group_ids(groups)
        .set_network_interfaces(reserve::template_interfaces(spec).or(interface.map(|i| vec![i])))
        .set_capacity_reservation_specification(reserve::template_reservation(spec))
        .set_instance_market_options(reserve::template_market(spec))
        .set_placement(placement)
        .set_ebs_optimized(o.ebs_optimized)
        .set_cpu_options(cpu)
        .set_key_name(spec.key_name.clone())
        .set_iam_instance_profile(profile)
        .set_user_data(user_data(spec))
        .set_block_device_mappings(non_empty(&volumes))
        .metadata_options(metadata)
        .set_tag_specifications(non_empty(&tags::template_tag_specifications(
            &spec.tags,
            &[ResourceType::Volume],
        )))
        .build()
}

/// One EBS block device mapping of the launch template.
fn template_volume(
    device: String,
    v: &VolumeSpec,
    delete_on_termination: bool,
) -> LaunchTemplateBlockDeviceMappingRequest {
    LaunchTemplateBlockDeviceMappingRequest::builder()
        .device_name(device)
        .ebs(
            LaunchTemplateEbsBlockDeviceRequest::builder()
                .volume_size(v.size_gib)
                .volume_type(VolumeType::from(v.volume_type.as_str()))
                .set_iops(v.iops)
                .set_throughput(v.throughput)
                .encrypted(v.encrypted)
                .set_kms_key_id(v.kms_key_id.clone())
                .delete_on_termination(delete_on_termination)
                .build(),
        )
        .build()
}

/// CreateFleet of type `instant` over the template `template_id` (or, when
/// the spec has one, the user's base template at its pinned version), with
/// every tag of the spec on the instances. The spend cap (`MaxTotalPrice`)
/// goes on the options of each part the fleet launches, on-demand and spot:
/// EC2 caps each part by its own options
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_OnDemandOptionsRequest.html>,
/// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_SpotOptionsRequest.html>).
pub(super) fn fleet_request(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchSpec,
    template_id: &str,
) -> CreateFleetFluentBuilder {
    let (on_demand, spot) = split(spec);
    let (template_id, version) = match &spec.options.base_template {
        Some(base) => (base.id.clone(), base.version.to_string()),
        None => (template_id.to_string(), TEMPLATE_VERSION.to_string()),
    };
    let config = FleetLaunchTemplateConfigRequest::builder()
        .launch_template_specification(
            FleetLaunchTemplateSpecificationRequest::builder()
                .launch_template_id(template_id)
                .version(version)
                .build(),
        )
        .set_overrides(Some(overrides(spec)))
        .build();
    // "prioritized": on-demand follows the overrides' order (types, then
    // subnets, as the user ranked them) instead of the lowest price.
    let cap = spec.options.max_total_price.clone();
    let on_demand_options = (on_demand > 0).then(|| {
        OnDemandOptionsRequest::builder()
            .allocation_strategy(layered::on_demand_strategy(spec))
            .set_max_total_price(cap.clone())
            .set_capacity_reservation_options(reserve::fleet_options(spec, on_demand))
            .build()
    });
    let strategy = spec.capacity.allocation_strategy.as_deref();
    let spot_options = (spot > 0 && (strategy.is_some() || cap.is_some())).then(|| {
        SpotOptionsRequest::builder()
            .set_allocation_strategy(strategy.map(SpotAllocationStrategy::from))
            .set_max_total_price(cap.clone())
            .build()
    });
    ec2.create_fleet()
        .r#type(FleetType::Instant)
        .set_client_token(client_token(spec))
        .launch_template_configs(config)
        .target_capacity_specification(target_capacity(spec))
        .set_on_demand_options(on_demand_options)
        .set_spot_options(spot_options)
        .set_tag_specifications(non_empty(&tags::tag_specifications(
            &spec.tags,
            &[ResourceType::Instance],
        )))
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
///
/// Without subnets each override carries the batch's pinned zone
/// (`AvailabilityZone`,
/// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_FleetLaunchTemplateOverridesRequest.html>):
/// EC2's ClientToken is zonal, and a re-send EC2 placed in another zone would
/// launch a second set
/// (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>).
/// With subnets the subnet names the zone.
pub(super) fn overrides(spec: &LaunchSpec) -> Vec<FleetLaunchTemplateOverridesRequest> {
    let (_, spot) = split(spec);
    let max_price = spec.capacity.max_price.clone().filter(|_| spot > 0);
    let subnets: Vec<Option<&String>> = if spec.subnet_ids.is_empty() {
        vec![None]
    } else {
        spec.subnet_ids.iter().map(Some).collect()
    };
    let zone = spec
        .availability_zone
        .clone()
        .filter(|z| !z.is_empty() && spec.subnet_ids.is_empty());
    if let Some(requirements) = layered::by_requirements(spec) {
        // One override per subnet, EC2 choosing the types; no priority: the
        // on-demand strategy is lowest-price (see [`layered`]).
        return subnets
            .iter()
            .map(|subnet| {
                let o = FleetLaunchTemplateOverridesRequest::builder()
                    .instance_requirements(requirements.clone())
                    .set_subnet_id(subnet.cloned())
                    .set_availability_zone(zone.clone())
                    .set_max_price(max_price.clone());
                layered::on_base(spec, o).build()
            })
            .collect();
    }
    let mut out = Vec::with_capacity(spec.instance_types.len() * subnets.len());
    for t in &spec.instance_types {
        for subnet in &subnets {
            let o = FleetLaunchTemplateOverridesRequest::builder()
                .instance_type(InstanceType::from(t.name.as_str()))
                .set_subnet_id(subnet.cloned())
                .set_availability_zone(zone.clone())
                .set_weighted_capacity(t.weight.map(f64::from))
                .priority(out.len() as f64)
                .set_max_price(max_price.clone());
            out.push(layered::on_base(spec, o).build());
        }
    }
    out
}

/// The fleet's target: `count` units, split on-demand/spot by the spec.
pub(super) fn target_capacity(spec: &LaunchSpec) -> TargetCapacitySpecificationRequest {
    let (on_demand, spot) = split(spec);
    if reserve::is_capacity_block(spec) {
        // A Capacity Block fleet names only its total: EC2 refuses on-demand
        // or spot target capacities beside capacity-block (see `reserve`).
        return TargetCapacitySpecificationRequest::builder()
            .total_target_capacity(spec.count)
            .default_target_capacity_type(DefaultTargetCapacityType::CapacityBlock)
            .build();
    }
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

/// The instances of a fleet answer, or, when there are none, why.
///
/// An instant fleet's answer is final: re-sending the same ClientToken
/// replays it (<https://docs.aws.amazon.com/AWSEC2/latest/devguide/ec2-api-idempotency.html>),
/// so an answer without instances is a definitive verdict whatever its error
/// codes say, or a Pending batch would be re-sent forever. The first error
/// decides which: a capacity code is [`ProviderError::Capacity`] (try another
/// type, subnet or capacity type), a bad-spec, access or not-found code keeps
/// its category, and anything else (`InternalError`, codes we do not know) is
/// [`ProviderError::Refused`] with EC2's code and message, so the batch is
/// Failed and a new batch (new token) follows. An answer with neither
/// instances nor errors is a capacity verdict.
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
            Some(e) => no_instances(
                e.error_code().unwrap_or_default(),
                e.error_message().unwrap_or_default(),
            ),
            None => ProviderError::Capacity(detail(
                "CreateFleet",
                "NoInstancesLaunched",
                "the fleet launched no instances and named no error".into(),
            )),
        });
    }
    if errors.is_empty() {
        info!(launched = launched.len(), "fleet launched");
    } else {
        warn!(
            launched = launched.len(),
            errors = errors.len(),
            "fleet launched part of its target"
        );
    }
    Ok(launched)
}

/// Why a fleet that launched some instances fell short, one item per error in
/// its `errorSet` (API_CreateFleetError.html): the code and message, the
/// override's type and subnet, and the lifecycle. Kept, not logged away: the
/// batch says why it fell short and the capacity codes cool their offerings.
pub(super) fn shortfall(out: &CreateFleetOutput) -> Vec<Shortfall> {
    out.errors()
        .iter()
        .map(|e| {
            let code = e.error_code().unwrap_or_default();
            // Classified once: its message is the one tenants may read (no
            // encoded authorization blob), its category cools offerings.
            let classified = classify(
                "CreateFleet",
                code,
                e.error_message().unwrap_or_default(),
                None,
            );
            let overrides = e
                .launch_template_and_overrides()
                .and_then(|lo| lo.overrides());
            Shortfall {
                code: code.to_string(),
                message: classified.detail().message.clone(),
                instance_type: overrides
                    .and_then(|o| o.instance_type())
                    .map(|t| t.as_str().to_string()),
                subnet_id: overrides.and_then(|o| o.subnet_id()).map(str::to_string),
                spot: e.lifecycle().map(|l| *l == InstanceLifecycle::Spot),
                capacity: matches!(classified, ProviderError::Capacity(_)),
            }
        })
        .collect()
}

/// The verdict of a fleet answer without instances whose first error is
/// `code`: see [`launched`].
fn no_instances(code: &str, message: &str) -> ProviderError {
    match classify("CreateFleet", code, message, None) {
        e @ (ProviderError::Capacity(_)
        | ProviderError::InvalidParameter(_)
        | ProviderError::AccessDenied(_)
        | ProviderError::NotFound(_)
        | ProviderError::Refused(_)) => e,
        other => ProviderError::Refused(detail(
            "CreateFleet",
            code,
            format!(
                "the fleet launched no instances: {}",
                other.detail().message
            ),
        )),
    }
}

/// The machines in the fleet's answer order, as the launch itself tells:
/// pending, its type, subnet, capacity, image, the tags it was launched with,
/// and `launched_at` (when the answer came) as launch time until the first
/// poll has EC2's: a machine without one would look forever young to
/// deletion and the sweep. Host names and addresses come with the first poll.
pub(super) fn pending_machines(
    spec: &LaunchSpec,
    launched: Vec<Launched>,
    launched_at: Option<String>,
) -> Vec<Machine> {
    launched
        .into_iter()
        .map(|l| Machine {
            instance_type: l.instance_type,
            availability_zone: l.availability_zone,
            subnet_id: l.subnet_id,
            capacity_type: l.capacity_type,
            image_id: Some(spec.image_id.clone()),
            tags: spec.tags.clone(),
            launch_time: launched_at.clone(),
            ..Machine::bare(l.id, MachineState::Pending)
        })
        .collect()
}

#[cfg(test)]
mod tests;

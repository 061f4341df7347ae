//! One batch through RunInstances: the first instance type and subnet,
//! MinCount 1 and MaxCount `count`, all on-demand or all spot. Its answer holds
//! the full instances, so no describe follows.

use aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder;
use aws_sdk_ec2::types::{
    BlockDeviceMapping, CpuOptionsRequest, EbsBlockDevice, HttpTokensState,
    IamInstanceProfileSpecification, InstanceMarketOptionsRequest, InstanceMetadataEndpointState,
    InstanceMetadataOptionsRequest, InstanceNetworkInterfaceSpecification, InstanceType,
    LaunchTemplateSpecification, MarketType, Placement, SpotMarketOptions, Tenancy, VolumeType,
};

use super::{
    check_common, client_token, invalid, is_arn, non_empty, reserve, root_device, user_data,
};
use crate::provider::aws::calls::Calls;
use crate::provider::aws::clients::AwsClients;
use crate::provider::aws::describe::to_machine;
use crate::provider::aws::errors::detail;
use crate::provider::aws::tags;
use crate::provider::{LaunchSpec, Machine, ProviderError, VolumeSpec};

/// One RunInstances call; its answer holds the full instances, so no describe
/// follows.
pub(super) async fn launch(
    clients: &AwsClients,
    calls: &Calls,
    spec: &LaunchSpec,
) -> Result<Vec<Machine>, ProviderError> {
    let request = run_instances_request(&clients.ec2, spec)?;
    // MaxCount (= count) tokens of the launched-instances bucket; an instant
    // fleet has no instance bucket.
    let count = usize::try_from(spec.count).unwrap_or(0);
    let out = calls
        .run_for("RunInstances", count, || request.send())
        .await?;
    let machines: Vec<Machine> = out.instances().iter().filter_map(to_machine).collect();
    if machines.is_empty() {
        // EC2 answers MinCount=1 with at least one instance or an error, so an
        // empty success should not happen. Treated as a capacity verdict: the
        // same ClientToken would only replay this answer, so the caller must
        // move on to another type, subnet or capacity type as a new batch.
        return Err(ProviderError::Capacity(detail(
            "RunInstances",
            "NoInstancesLaunched",
            format!(
                "RunInstances for batch {} succeeded without instances",
                spec.batch_id
            ),
        )));
    }
    Ok(machines)
}

/// The RunInstances request for `spec`: the first instance type and subnet,
/// MinCount 1 and MaxCount `count`, spot when the spec is all spot.
pub(super) fn run_instances_request(
    ec2: &aws_sdk_ec2::Client,
    spec: &LaunchSpec,
) -> Result<RunInstancesFluentBuilder, ProviderError> {
    const OP: &str = "RunInstances";
    check_common(OP, spec)?;
    if spec.options.instance_requirements.is_some() {
        return Err(invalid(
            OP,
            "RunInstances launches one named instance type, not instance requirements".into(),
        ));
    }
    let market = match spec.capacity.on_demand_percent {
        100 => reserve::market(spec),
        0 => Some(
            InstanceMarketOptionsRequest::builder()
                .market_type(MarketType::Spot)
                .spot_options(
                    SpotMarketOptions::builder()
                        .set_max_price(spec.capacity.max_price.clone())
                        .build(),
                )
                .build(),
        ),
        p => {
            return Err(invalid(
                OP,
                format!("RunInstances launches all on-demand or all spot, not {p} % on-demand"),
            ))
        }
    };
    let instance_type = spec
        .instance_types
        .first()
        .map(|t| InstanceType::from(t.name.as_str()));
    let root = spec
        .root_volume
        .as_ref()
        .map(|v| volume(root_device(spec), v, true));
    let volumes: Vec<BlockDeviceMapping> = root
        .into_iter()
        .chain(
            spec.options
                .data_volumes
                .iter()
                .map(|d| volume(d.device_name.clone(), &d.volume, d.delete_on_termination)),
        )
        .collect();
    let (subnet, groups, interface) = network(spec);
    let cpu = spec.options.cpu.as_ref().map(|c| {
        CpuOptionsRequest::builder()
            .set_core_count(c.core_count)
            .set_threads_per_core(c.threads_per_core)
            .build()
    });
    let profile = spec.instance_profile.as_deref().map(|p| {
        let b = IamInstanceProfileSpecification::builder();
        if is_arn(p) {
            b.arn(p).build()
        } else {
            b.name(p).build()
        }
    });
    let metadata = InstanceMetadataOptionsRequest::builder()
        .http_tokens(if spec.metadata.http_tokens_required {
            HttpTokensState::Required
        } else {
            HttpTokensState::Optional
        })
        .http_endpoint(InstanceMetadataEndpointState::Enabled)
        .set_http_put_response_hop_limit(spec.metadata.hop_limit)
        .build();
    // The user's template is the base; every parameter below goes on top of it
    // (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-launch-templates.html>:
    // parameters given in the call override the template's).
    let base = spec.options.base_template.as_ref().map(|b| {
        LaunchTemplateSpecification::builder()
            .launch_template_id(&b.id)
            .version(b.version.to_string())
            .build()
    });
    Ok(ec2
        .run_instances()
        .set_launch_template(base)
        .image_id(&spec.image_id)
        .set_instance_type(instance_type)
        .min_count(1)
        .max_count(spec.count)
        .set_client_token(client_token(spec))
        .set_subnet_id(subnet)
        .set_placement(placement(spec))
        .set_security_group_ids(groups)
        .set_network_interfaces(reserve::interfaces(spec).or(interface.map(|i| vec![i])))
        .set_ebs_optimized(spec.options.ebs_optimized)
        .set_cpu_options(cpu)
        .set_key_name(spec.key_name.clone())
        .set_iam_instance_profile(profile)
        .set_user_data(user_data(spec))
        .set_block_device_mappings(non_empty(&volumes))
        .metadata_options(metadata)
        .set_instance_market_options(market)
        .set_capacity_reservation_specification(reserve::reservation(spec))
        .set_tag_specifications(non_empty(&tags::tag_specifications(
            &spec.tags,
            &tags::LAUNCHED,
        ))))
}

/// One EBS block device mapping.
fn volume(device: String, v: &VolumeSpec, delete_on_termination: bool) -> BlockDeviceMapping {
    BlockDeviceMapping::builder()
        .device_name(device)
        .ebs(
            EbsBlockDevice::builder()
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

/// The subnet and security groups as top-level parameters, or, when the spec
/// says whether to associate a public IP, on a primary network interface
/// instead: EC2 takes `AssociatePublicIpAddress` only on a new interface at
/// device index 0, and refuses an instance-level subnet or security groups
/// beside a network interface
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceNetworkInterfaceSpecification.html>).
fn network(
    spec: &LaunchSpec,
) -> (
    Option<String>,
    Option<Vec<String>>,
    Option<InstanceNetworkInterfaceSpecification>,
) {
    let subnet = spec.subnet_ids.first().cloned();
    let groups = non_empty(&spec.security_group_ids);
    if !spec.options.network_interfaces.is_empty() {
        return (None, None, None);
    }
    match spec.options.associate_public_ip {
        None => (subnet, groups, None),
        Some(public) => (
            None,
            None,
            Some(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .associate_public_ip_address(public)
                    .delete_on_termination(true)
                    .set_subnet_id(subnet)
                    .set_groups(groups)
                    .build(),
            ),
        ),
    }
}

/// Placement: the placement group, partition and tenancy when the spec sets
/// them, and the batch's pinned zone, sent only when no subnet is (a subnet
/// already names its zone). EC2's ClientToken is zonal: without a zone EC2
/// picks one per call, and a re-send it placed elsewhere would launch a second
/// set (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>).
fn placement(spec: &LaunchSpec) -> Option<Placement> {
    let zone = spec
        .availability_zone
        .as_ref()
        .filter(|z| !z.is_empty() && spec.subnet_ids.is_empty());
    let o = &spec.options;
    if zone.is_none() && !o.has_placement() {
        return None;
    }
    Some(
        Placement::builder()
            .set_availability_zone(zone.cloned())
            .set_group_name(o.placement_group.clone())
            .set_partition_number(o.partition_number)
            .set_tenancy(o.tenancy.as_deref().map(Tenancy::from))
            .build(),
    )
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{offline_client, spec};
    use super::super::DEFAULT_ROOT_DEVICE;
    use super::*;
    use crate::provider::{
        CpuSpec, DataVolumeSpec, LaunchCapacity, LaunchOptions, MetadataSpec, VolumeSpec,
    };
    use aws_sdk_ec2::types::ResourceType;

    #[test]
    fn run_instances_carries_the_whole_spec() {
        let client = offline_client();
        let req = run_instances_request(&client, &spec()).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_image_id().as_deref(), Some("ami-1"));
        assert_eq!(i.get_instance_type(), &Some(InstanceType::C6iXlarge));
        assert_eq!((i.get_min_count(), i.get_max_count()), (&Some(1), &Some(3)));
        assert_eq!(i.get_client_token().as_deref(), Some("tok-1"));
        assert_eq!(i.get_subnet_id().as_deref(), Some("subnet-a"));
        assert_eq!(i.get_security_group_ids(), &Some(vec!["sg-1".to_string()]));
        assert_eq!(i.get_key_name().as_deref(), Some("key"));
        let profile = i.get_iam_instance_profile().as_ref().expect("profile");
        assert_eq!(profile.arn(), Some("arn:aws:iam::1:instance-profile/p"));
        assert_eq!(profile.name(), None);
        assert_eq!(
            i.get_user_data().as_deref(),
            Some("IyEvYmluL3NoCmVjaG8gaGkK")
        );
        let bdm = i.get_block_device_mappings().as_ref().expect("root");
        assert_eq!(bdm.len(), 1);
        assert_eq!(bdm[0].device_name(), Some(DEFAULT_ROOT_DEVICE));
        let ebs = bdm[0].ebs().expect("ebs");
        assert_eq!(ebs.volume_size(), Some(50));
        assert_eq!(ebs.volume_type(), Some(&VolumeType::Gp3));
        assert_eq!((ebs.iops(), ebs.throughput()), (Some(4000), Some(250)));
        assert_eq!(ebs.encrypted(), Some(true));
        assert_eq!(ebs.kms_key_id(), Some("key-1"));
        assert_eq!(ebs.delete_on_termination(), Some(true));
        let md = i.get_metadata_options().as_ref().expect("metadata");
        assert_eq!(md.http_tokens(), Some(&HttpTokensState::Required));
        assert_eq!(
            md.http_endpoint(),
            Some(&InstanceMetadataEndpointState::Enabled)
        );
        assert_eq!(md.http_put_response_hop_limit(), Some(2));
        assert_eq!(i.get_instance_market_options(), &None, "on-demand");
        let ts = i.get_tag_specifications().as_ref().expect("tags");
        let types: Vec<_> = ts.iter().filter_map(|t| t.resource_type()).collect();
        assert_eq!(types, [&ResourceType::Instance, &ResourceType::Volume]);
        assert!(ts.iter().all(|t| t.tags().len() == 2));
    }

    #[test]
    fn minimal_spec_leaves_optional_parameters_out() {
        let mut s = spec();
        s.subnet_ids.clear();
        s.security_group_ids.clear();
        s.key_name = None;
        s.instance_profile = Some("worker".into());
        s.user_data = None;
        s.root_volume = None;
        s.tags.clear();
        s.client_token.clear();
        s.metadata = MetadataSpec {
            http_tokens_required: false,
            hop_limit: None,
        };
        let client = offline_client();
        let req = run_instances_request(&client, &s).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_subnet_id(), &None);
        assert_eq!(i.get_security_group_ids(), &None);
        assert_eq!(i.get_key_name(), &None);
        assert_eq!(i.get_user_data(), &None);
        assert_eq!(i.get_block_device_mappings(), &None);
        assert_eq!(i.get_tag_specifications(), &None);
        assert_eq!(i.get_client_token(), &None);
        let profile = i.get_iam_instance_profile().as_ref().expect("profile");
        assert_eq!((profile.name(), profile.arn()), (Some("worker"), None));
        let md = i.get_metadata_options().as_ref().expect("metadata");
        assert_eq!(md.http_tokens(), Some(&HttpTokensState::Optional));
        assert_eq!(md.http_put_response_hop_limit(), None);
        assert_eq!(i.get_placement(), &None, "no zone pinned: none sent");
    }

    #[test]
    fn a_pinned_zone_is_sent_only_without_a_subnet() {
        let client = offline_client();
        let mut s = spec();
        s.availability_zone = Some("us-east-1b".into());
        let req = run_instances_request(&client, &s).expect("valid");
        assert_eq!(req.as_input().get_placement(), &None, "the subnet decides");
        s.subnet_ids.clear();
        let req = run_instances_request(&client, &s).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_subnet_id(), &None);
        let zone = i
            .get_placement()
            .as_ref()
            .and_then(|p| p.availability_zone());
        assert_eq!(zone, Some("us-east-1b"));
    }

    #[test]
    fn root_volume_follows_the_image_root_device() {
        let mut s = spec();
        s.root_device_name = Some("/dev/sda1".into());
        let client = offline_client();
        let req = run_instances_request(&client, &s).expect("valid");
        let bdm = req.as_input().get_block_device_mappings().clone();
        assert_eq!(bdm.expect("root")[0].device_name(), Some("/dev/sda1"));
    }

    #[test]
    fn all_spot_uses_the_spot_market_with_the_max_price() {
        let mut s = spec();
        s.capacity = LaunchCapacity {
            on_demand_percent: 0,
            max_price: Some("0.12".into()),
            allocation_strategy: None,
            on_demand_units: None,
        };
        let client = offline_client();
        let req = run_instances_request(&client, &s).expect("valid");
        let m = req
            .as_input()
            .get_instance_market_options()
            .clone()
            .expect("spot");
        assert_eq!(m.market_type(), Some(&MarketType::Spot));
        assert_eq!(m.spot_options().and_then(|o| o.max_price()), Some("0.12"));
    }

    /// A spec with every launch option set.
    fn spec_with_options() -> LaunchSpec {
        let mut s = spec();
        s.options = LaunchOptions {
            placement_group: Some("pg-hpc".into()),
            partition_number: Some(3),
            tenancy: Some("dedicated".into()),
            ebs_optimized: Some(true),
            associate_public_ip: Some(false),
            cpu: Some(CpuSpec {
                core_count: Some(4),
                threads_per_core: Some(1),
            }),
            data_volumes: vec![DataVolumeSpec {
                device_name: "/dev/sdf".into(),
                volume: VolumeSpec {
                    size_gib: 200,
                    volume_type: "io2".into(),
                    iops: Some(5000),
                    throughput: None,
                    encrypted: true,
                    kms_key_id: Some("alias/data".into()),
                },
                delete_on_termination: false,
            }],
            max_total_price: None,
            ..Default::default()
        };
        s
    }

    #[test]
    fn launch_options_reach_run_instances() {
        let client = offline_client();
        let req = run_instances_request(&client, &spec_with_options()).expect("valid");
        let i = req.as_input();
        let p = i.get_placement().as_ref().expect("placement");
        assert_eq!(p.group_name(), Some("pg-hpc"));
        assert_eq!(p.partition_number(), Some(3));
        assert_eq!(p.tenancy(), Some(&Tenancy::Dedicated));
        assert_eq!(p.availability_zone(), None, "the subnet decides the zone");
        assert_eq!(i.get_ebs_optimized(), &Some(true));
        let cpu = i.get_cpu_options().as_ref().expect("cpu");
        assert_eq!(
            (cpu.core_count(), cpu.threads_per_core()),
            (Some(4), Some(1))
        );
        let bdm = i.get_block_device_mappings().as_ref().expect("volumes");
        assert_eq!(bdm.len(), 2, "root and one data volume");
        assert_eq!(bdm[1].device_name(), Some("/dev/sdf"));
        let ebs = bdm[1].ebs().expect("ebs");
        assert_eq!(ebs.volume_size(), Some(200));
        assert_eq!(ebs.volume_type(), Some(&VolumeType::Io2));
        assert_eq!((ebs.iops(), ebs.throughput()), (Some(5000), None));
        assert_eq!(ebs.kms_key_id(), Some("alias/data"));
        assert_eq!(ebs.delete_on_termination(), Some(false));
        assert_eq!(
            bdm[0].ebs().and_then(|e| e.delete_on_termination()),
            Some(true)
        );
    }

    #[test]
    fn a_public_ip_choice_moves_subnet_and_groups_onto_the_interface() {
        let client = offline_client();
        let req = run_instances_request(&client, &spec_with_options()).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_subnet_id(), &None, "not beside an interface");
        assert_eq!(i.get_security_group_ids(), &None, "not beside an interface");
        let nics = i.get_network_interfaces().as_ref().expect("interface");
        assert_eq!(nics.len(), 1);
        assert_eq!(nics[0].device_index(), Some(0));
        assert_eq!(nics[0].associate_public_ip_address(), Some(false));
        assert_eq!(nics[0].subnet_id(), Some("subnet-a"));
        assert_eq!(nics[0].groups(), ["sg-1".to_string()]);
        assert_eq!(nics[0].delete_on_termination(), Some(true));

        // Without subnets the pinned zone still goes in Placement, beside the group.
        let mut s = spec_with_options();
        s.subnet_ids.clear();
        s.availability_zone = Some("us-east-1b".into());
        let req = run_instances_request(&client, &s).expect("valid");
        let i = req.as_input();
        let nics = i.get_network_interfaces().as_ref().expect("interface");
        assert_eq!(nics[0].subnet_id(), None);
        let p = i.get_placement().as_ref().expect("placement");
        assert_eq!(
            (p.availability_zone(), p.group_name()),
            (Some("us-east-1b"), Some("pg-hpc"))
        );
    }

    #[test]
    fn without_options_nothing_new_is_sent() {
        let client = offline_client();
        let req = run_instances_request(&client, &spec()).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_network_interfaces(), &None);
        assert_eq!(i.get_ebs_optimized(), &None);
        assert_eq!(i.get_cpu_options(), &None);
        assert_eq!(i.get_placement(), &None);
    }

    #[test]
    fn a_user_template_is_the_base_at_its_pinned_version() {
        let client = offline_client();
        let mut s = spec();
        s.options.base_template = Some(crate::provider::BaseTemplate {
            id: "lt-0aaaaaaaaaaaaaaaa".into(),
            version: 12,
        });
        let req = run_instances_request(&client, &s).expect("valid");
        let i = req.as_input();
        let lt = i.get_launch_template().as_ref().expect("launch template");
        assert_eq!(lt.launch_template_id(), Some("lt-0aaaaaaaaaaaaaaaa"));
        assert_eq!(lt.version(), Some("12"));
        // hostforge's parameters on top, as without a template.
        assert_eq!(i.get_image_id().as_deref(), Some("ami-1"));
        assert_eq!(i.get_instance_type(), &Some(InstanceType::C6iXlarge));
        assert_eq!(i.get_subnet_id().as_deref(), Some("subnet-a"));
        assert!(i.get_tag_specifications().is_some());

        let req = run_instances_request(&client, &spec()).expect("valid");
        assert_eq!(req.as_input().get_launch_template(), &None);
    }

    #[test]
    fn instance_requirements_are_refused_by_run_instances() {
        let client = offline_client();
        let mut s = spec();
        s.instance_types.clear();
        s.options.instance_requirements = Some(Default::default());
        let err = run_instances_request(&client, &s).expect_err("requirements");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
    }

    #[test]
    fn mixed_capacity_and_empty_batches_are_refused_before_any_call() {
        let client = offline_client();
        let mut s = spec();
        s.capacity.on_demand_percent = 50;
        let err = run_instances_request(&client, &s).expect_err("mixed");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
        assert_eq!(err.detail().operation, "RunInstances");

        let mut s = spec();
        s.count = 0;
        let err = run_instances_request(&client, &s).expect_err("no machines");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");

        let mut s = spec();
        s.instance_types.clear();
        let err = run_instances_request(&client, &s).expect_err("no type");
        assert!(matches!(err, ProviderError::InvalidParameter(_)), "{err}");
    }
}

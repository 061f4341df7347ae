//! Unit tests of the fleet request builders and answer parsing, read back
//! from the builders without any call.

use super::super::fixtures::{offline_client, spec};
use std::collections::BTreeMap;

use super::*;
use crate::provider::{LaunchApi, LaunchCapacity};
use aws_sdk_ec2::types::{
    CreateFleetError, CreateFleetInstance, FleetLaunchTemplateOverrides,
    LaunchTemplateAndOverridesResponse,
};

fn fleet_spec(on_demand_percent: i32, count: i32) -> LaunchSpec {
    let mut s = spec();
    s.api = LaunchApi::Fleet;
    s.count = count;
    s.capacity = LaunchCapacity {
        on_demand_percent,
        max_price: Some("0.2".into()),
        allocation_strategy: Some("price-capacity-optimized".into()),
        on_demand_units: None,
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
    assert!(o.iter().all(|o| o.subnet_id().is_none()
        && o.max_price().is_none()
        && o.availability_zone().is_none()));
}

#[test]
fn a_pinned_zone_goes_on_every_override_only_without_a_subnet() {
    let mut s = fleet_spec(100, 2);
    s.availability_zone = Some("us-east-1b".into());
    let with_subnets = overrides(&s);
    assert_eq!(with_subnets.len(), 4);
    assert!(
        with_subnets.iter().all(|o| o.availability_zone().is_none()),
        "the subnet decides the zone"
    );
    s.subnet_ids.clear();
    let without_subnets = overrides(&s);
    let zones: Vec<_> = without_subnets
        .iter()
        .map(|o| (o.subnet_id(), o.availability_zone()))
        .collect();
    assert_eq!(
        zones,
        [(None, Some("us-east-1b")), (None, Some("us-east-1b"))]
    );
    let client = offline_client();
    let req = fleet_request(&client, &s, "lt-x");
    let sent: Vec<_> = req
        .as_input()
        .get_launch_template_configs()
        .iter()
        .flatten()
        .flat_map(|c| c.overrides())
        .map(|o| o.availability_zone())
        .collect();
    assert_eq!(sent, [Some("us-east-1b"), Some("us-east-1b")]);
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
fn fleet_request_is_instant_by_template_id_with_both_strategies_and_every_tag() {
    let client = offline_client();
    let s = fleet_spec(50, 4);
    let req = fleet_request(&client, &s, "lt-0123");
    let i = req.as_input();
    assert_eq!(i.get_type(), &Some(FleetType::Instant));
    assert_eq!(i.get_client_token().as_deref(), Some("tok-1"));
    let configs = i.get_launch_template_configs().as_ref().expect("configs");
    assert_eq!(configs.len(), 1);
    let lt = configs[0]
        .launch_template_specification()
        .expect("template");
    assert_eq!(lt.launch_template_id(), Some("lt-0123"));
    assert_eq!(
        lt.launch_template_name(),
        None,
        "a name can be taken over, an id not"
    );
    assert_eq!(lt.version(), Some(TEMPLATE_VERSION));
    // The instances get every tag of the spec from the call itself.
    let tagged = i.get_tag_specifications().as_ref().expect("instance tags");
    assert_eq!(tagged.len(), 1);
    assert_eq!(tagged[0].resource_type(), Some(&ResourceType::Instance));
    let tags: BTreeMap<&str, &str> = tagged[0]
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?, t.value()?)))
        .collect();
    let want: BTreeMap<&str, &str> = s
        .tags
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(tags, want);
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
fn template_holds_everything_but_type_subnet_and_the_per_launch_tags() {
    let mut s = fleet_spec(50, 4);
    s.tags
        .insert(launch_templates::REQUEST_TAG.into(), "ns/r".into());
    s.tags
        .insert(launch_templates::REQUEST_UID_TAG.into(), "u-1".into());
    s.tags
        .insert(launch_templates::BATCH_TAG.into(), "b-1".into());
    s.tags
        .insert(launch_templates::CLUSTER_TAG.into(), "c1".into());
    let client = offline_client();
    let req = template_request(&client, &Key::of(&s), "hostforge-t-0123");
    let i = req.as_input();
    assert_eq!(
        i.get_launch_template_name().as_deref(),
        Some("hostforge-t-0123")
    );
    let own = i.get_tag_specifications().as_ref().expect("template tags");
    assert_eq!(own[0].resource_type(), Some(&ResourceType::LaunchTemplate));
    let own_keys: Vec<&str> = own[0].tags().iter().filter_map(|t| t.key()).collect();
    assert!(
        own_keys.contains(&launch_templates::CLUSTER_TAG),
        "{own_keys:?}"
    );
    assert!(own_keys.contains(&NAMESPACE_TAG), "{own_keys:?}");
    assert!(
        !own_keys.contains(&launch_templates::REQUEST_UID_TAG),
        "{own_keys:?}"
    );
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
    assert_eq!(
        types,
        [&ResourceType::Volume],
        "the instances' come with the fleet"
    );
    let volume_keys: Vec<&str> = d.tag_specifications()[0]
        .tags()
        .iter()
        .filter_map(|t| t.key())
        .collect();
    assert!(volume_keys.contains(&launch_templates::CLUSTER_TAG));
    for own in [
        launch_templates::REQUEST_TAG,
        launch_templates::REQUEST_UID_TAG,
        launch_templates::BATCH_TAG,
        launch_templates::NAME_TAG,
    ] {
        assert!(
            !volume_keys.contains(&own),
            "{own} differs between the launches sharing it"
        );
    }
}

fn answer(instances: Vec<CreateFleetInstance>, errors: Vec<CreateFleetError>) -> CreateFleetOutput {
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
fn empty_answers_fail_definitively_with_the_first_error() {
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

/// A zero-instance answer is replayed under its token, so codes that would
/// be retried as a failed call (InternalError, throttling) or that nobody
/// knows must still end the batch: never retryable, never Unknown.
#[test]
fn empty_answers_with_server_or_unknown_codes_are_refusals_not_retries() {
    for code in ["InternalError", "RequestLimitExceeded", "SomethingNew"] {
        let e = launched(&answer(vec![], vec![error(code)])).expect_err(code);
        assert!(matches!(e, ProviderError::Refused(_)), "{code}: {e}");
        assert!(!e.is_retryable(), "{code}");
        assert_eq!(e.code(), code);
        assert!(
            e.detail().message.contains("no capacity in us-east-1a"),
            "EC2's message is kept: {e}"
        );
    }
}

#[test]
fn a_template_not_visible_yet_is_a_retry_and_the_quota_a_refusal() {
    let lag = template_lag(ProviderError::Refused(detail(
        "CreateFleet",
        "InvalidLaunchTemplateName.NotFoundException",
        "not there".into(),
    )));
    assert!(matches!(lag, ProviderError::Transient(_)), "{lag}");
    assert_eq!(lag.code(), "InvalidLaunchTemplateName.NotFoundException");
    let other = template_lag(ProviderError::Refused(detail(
        "CreateFleet",
        "Nope",
        "".into(),
    )));
    assert!(matches!(other, ProviderError::Refused(_)));

    let q = quota_refusal(&ProviderError::Refused(detail(
        "CreateLaunchTemplate",
        TEMPLATE_QUOTA,
        "limit reached".into(),
    )));
    assert!(matches!(q, ProviderError::Refused(_)), "{q}");
    assert!(!q.is_retryable());
    assert_eq!(q.code(), "MaxTemplateLimitExceeded");
    assert!(q.to_string().contains("limit reached"), "{q}");
}

#[test]
fn fleet_machines_are_pending_with_what_the_fleet_said() {
    let s = fleet_spec(50, 2);
    let l = launched(&answer(
        vec![group(InstanceLifecycle::Spot, &["i-1", "i-2"])],
        vec![],
    ))
    .expect("launched");
    let machines = pending_machines(&s, l, Some("2026-01-02T03:04:05Z".into()));
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
    assert!(
        machines
            .iter()
            .all(|m| m.launch_time.as_deref() == Some("2026-01-02T03:04:05Z")),
        "stamped from the start"
    );
}

#[test]
fn the_shortfall_names_each_error_with_its_override() {
    let placed = CreateFleetError::builder()
        .error_code("InsufficientInstanceCapacity")
        .error_message("We currently do not have sufficient t3.micro capacity")
        .lifecycle(InstanceLifecycle::Spot)
        .launch_template_and_overrides(
            LaunchTemplateAndOverridesResponse::builder()
                .overrides(
                    FleetLaunchTemplateOverrides::builder()
                        .instance_type(InstanceType::T3Micro)
                        .subnet_id("subnet-1")
                        .build(),
                )
                .build(),
        )
        .build();
    let out = answer(
        vec![group(InstanceLifecycle::OnDemand, &["i-1"])],
        vec![placed, error("InvalidParameterValue")],
    );
    let s = shortfall(&out);
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].code, "InsufficientInstanceCapacity");
    assert_eq!(s[0].instance_type.as_deref(), Some("t3.micro"));
    assert_eq!(s[0].subnet_id.as_deref(), Some("subnet-1"));
    assert_eq!(s[0].spot, Some(true));
    assert!(s[0].capacity, "a capacity code cools its offering");
    assert_eq!(s[1].instance_type, None);
    assert_eq!(s[1].spot, None);
    assert!(!s[1].capacity, "a bad parameter is not a capacity verdict");
    assert!(shortfall(&answer(
        vec![group(InstanceLifecycle::Spot, &["i-2"])],
        vec![]
    ))
    .is_empty());
}

/// A fleet spec with every launch option set.
fn fleet_spec_with_options(on_demand_percent: i32) -> LaunchSpec {
    let mut s = fleet_spec(on_demand_percent, 4);
    s.options = crate::provider::LaunchOptions {
        placement_group: Some("pg-hpc".into()),
        partition_number: Some(2),
        tenancy: Some("host".into()),
        ebs_optimized: Some(true),
        associate_public_ip: Some(true),
        cpu: Some(crate::provider::CpuSpec {
            core_count: Some(8),
            threads_per_core: Some(1),
        }),
        data_volumes: vec![crate::provider::DataVolumeSpec {
            device_name: "/dev/sdg".into(),
            volume: VolumeSpec {
                size_gib: 500,
                volume_type: "st1".into(),
                iops: None,
                throughput: None,
                encrypted: false,
                kms_key_id: None,
            },
            delete_on_termination: true,
        }],
        max_total_price: Some("12.5".into()),
        capacity_reservation: None,
        network_interfaces: Vec::new(),
    };
    s
}

#[test]
fn launch_options_reach_the_launch_template_data() {
    let client = offline_client();
    let req = template_request(&client, &Key::of(&fleet_spec_with_options(50)), "t");
    let d = req
        .as_input()
        .get_launch_template_data()
        .clone()
        .expect("data");
    let p = d.placement().expect("placement");
    assert_eq!(p.group_name(), Some("pg-hpc"));
    assert_eq!(p.partition_number(), Some(2));
    assert_eq!(p.tenancy(), Some(&aws_sdk_ec2::types::Tenancy::Host));
    assert_eq!(d.ebs_optimized(), Some(true));
    let cpu = d.cpu_options().expect("cpu");
    assert_eq!(
        (cpu.core_count(), cpu.threads_per_core()),
        (Some(8), Some(1))
    );
    let bdm = d.block_device_mappings();
    assert_eq!(bdm.len(), 2, "root and one data volume");
    assert_eq!(bdm[1].device_name(), Some("/dev/sdg"));
    let ebs = bdm[1].ebs().expect("ebs");
    assert_eq!(ebs.volume_size(), Some(500));
    assert_eq!(ebs.volume_type(), Some(&VolumeType::St1));
    assert_eq!(ebs.encrypted(), Some(false));
    // The public IP choice takes the security groups onto the interface.
    assert!(d.security_group_ids().is_empty(), "not beside an interface");
    let nics = d.network_interfaces();
    assert_eq!(nics.len(), 1);
    assert_eq!(nics[0].device_index(), Some(0));
    assert_eq!(nics[0].associate_public_ip_address(), Some(true));
    assert_eq!(nics[0].groups(), ["sg-1".to_string()]);
    assert_eq!(nics[0].subnet_id(), None, "the overrides name the subnet");
}

#[test]
fn the_spend_cap_goes_on_both_parts_of_the_fleet() {
    let client = offline_client();
    let req = fleet_request(&client, &fleet_spec_with_options(50), "t");
    let i = req.as_input();
    let od = i.get_on_demand_options().as_ref().expect("on-demand");
    assert_eq!(od.max_total_price(), Some("12.5"));
    let spot = i.get_spot_options().as_ref().expect("spot");
    assert_eq!(spot.max_total_price(), Some("12.5"));

    // All spot without a strategy: the cap alone still needs SpotOptions.
    let mut s = fleet_spec_with_options(0);
    s.capacity.allocation_strategy = None;
    let req = fleet_request(&client, &s, "t");
    let i = req.as_input();
    assert_eq!(i.get_on_demand_options(), &None);
    let spot = i.get_spot_options().as_ref().expect("spot");
    assert_eq!(
        (spot.max_total_price(), spot.allocation_strategy()),
        (Some("12.5"), None)
    );
}

#[test]
fn without_options_the_template_data_is_as_before() {
    let client = offline_client();
    let req = template_request(&client, &Key::of(&fleet_spec(50, 4)), "t");
    let d = req
        .as_input()
        .get_launch_template_data()
        .clone()
        .expect("data");
    assert_eq!(d.placement(), None);
    assert_eq!(d.ebs_optimized(), None);
    assert_eq!(d.cpu_options(), None);
    assert!(d.network_interfaces().is_empty());
    assert_eq!(d.block_device_mappings().len(), 1);
    let req = fleet_request(&client, &fleet_spec(50, 4), "t");
    let od = req.as_input().get_on_demand_options().clone().expect("od");
    assert_eq!(od.max_total_price(), None);
}

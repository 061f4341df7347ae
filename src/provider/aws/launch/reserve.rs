//! Capacity reservations, Capacity Blocks and network interfaces (EFA) in
//! EC2's request types, for both launch paths: RunInstances, and the
//! fleet's launch template and CreateFleet call.
//!
//! - `CapacityReservationSpecification`: the preference and target go
//!   together only with `capacity-reservations-only`
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CapacityReservationSpecification.html>);
//!   the template's CEL rules keep other combinations out.
//! - Capacity Blocks: RunInstances with `InstanceMarketOptions.MarketType
//!   capacity-block` and the block as target
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-launch.html>);
//!   an instant fleet from a launch template holding both, with
//!   `DefaultTargetCapacityType capacity-block`, no on-demand or spot target
//!   capacity and no `CapacityReservationOptions`
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-launch-instances-capacity-blocks-walkthrough.html>).
//! - Fleets and ordinary reservations: the launch template names the
//!   preference or a resource group, and the fleet's on-demand part uses
//!   reservations first (`use-capacity-reservations-first`, instant fleets
//!   only,
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-on-demand-capacity-reservations.html>).
//! - Network interfaces: with interfaces, EC2 takes the subnet, security
//!   groups and public IP choice on them and refuses them at the instance
//!   level; a public IP only on the primary interface
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_InstanceNetworkInterfaceSpecification.html>).
//!   The card and device indexes come resolved from the template (EC2's
//!   layout for EFA on multi-card types,
//!   <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html>).

use aws_sdk_ec2::types::{
    CapacityReservationOptionsRequest, CapacityReservationPreference,
    CapacityReservationSpecification, CapacityReservationTarget,
    FleetCapacityReservationUsageStrategy, InstanceMarketOptionsRequest,
    InstanceNetworkInterfaceSpecification, LaunchTemplateCapacityReservationSpecificationRequest,
    LaunchTemplateInstanceMarketOptionsRequest,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, MarketType,
};

use super::non_empty;
use crate::provider::{LaunchSpec, ReservationSpec};

/// The spec's reservation, when it has one.
fn of(spec: &LaunchSpec) -> Option<&ReservationSpec> {
    spec.options.capacity_reservation.as_ref()
}

/// Whether the spec launches into a Capacity Block.
pub(super) fn is_capacity_block(spec: &LaunchSpec) -> bool {
    of(spec).is_some_and(|r| r.capacity_block)
}

/// RunInstances `InstanceMarketOptions` for an on-demand launch: market
/// type `capacity-block` into a Capacity Block, else none.
pub(super) fn market(spec: &LaunchSpec) -> Option<InstanceMarketOptionsRequest> {
    is_capacity_block(spec).then(|| {
        InstanceMarketOptionsRequest::builder()
            .market_type(MarketType::CapacityBlock)
            .build()
    })
}

/// The preference both shapes of `CapacityReservationSpecification` carry.
fn preference(r: &ReservationSpec) -> Option<CapacityReservationPreference> {
    r.preference
        .as_deref()
        .map(CapacityReservationPreference::from)
}

/// The target both shapes carry: a reservation id or a resource group.
fn target(r: &ReservationSpec) -> Option<CapacityReservationTarget> {
    r.has_target().then(|| {
        CapacityReservationTarget::builder()
            .set_capacity_reservation_id(r.reservation_id.clone())
            .set_capacity_reservation_resource_group_arn(r.resource_group_arn.clone())
            .build()
    })
}

/// RunInstances `CapacityReservationSpecification`.
pub(super) fn reservation(spec: &LaunchSpec) -> Option<CapacityReservationSpecification> {
    let r = of(spec)?;
    Some(
        CapacityReservationSpecification::builder()
            .set_capacity_reservation_preference(preference(r))
            .set_capacity_reservation_target(target(r))
            .build(),
    )
}

/// The launch template's `CapacityReservationSpecification`.
pub(super) fn template_reservation(
    spec: &LaunchSpec,
) -> Option<LaunchTemplateCapacityReservationSpecificationRequest> {
    let r = of(spec)?;
    Some(
        LaunchTemplateCapacityReservationSpecificationRequest::builder()
            .set_capacity_reservation_preference(preference(r))
            .set_capacity_reservation_target(target(r))
            .build(),
    )
}

/// The launch template's `InstanceMarketOptions`: `capacity-block` for a
/// Capacity Block.
pub(super) fn template_market(
    spec: &LaunchSpec,
) -> Option<LaunchTemplateInstanceMarketOptionsRequest> {
    is_capacity_block(spec).then(|| {
        LaunchTemplateInstanceMarketOptionsRequest::builder()
            .market_type(MarketType::CapacityBlock)
            .build()
    })
}

/// CreateFleet `OnDemandOptions.CapacityReservationOptions` when the fleet
/// has an on-demand part and the spec uses reservations (see
/// [`ReservationSpec::fleet_uses_reservations_first`]).
pub(super) fn fleet_options(
    spec: &LaunchSpec,
    on_demand: i32,
) -> Option<CapacityReservationOptionsRequest> {
    let r = of(spec)?;
    (on_demand > 0 && r.fleet_uses_reservations_first()).then(|| {
        CapacityReservationOptionsRequest::builder()
            .usage_strategy(FleetCapacityReservationUsageStrategy::UseCapacityReservationsFirst)
            .build()
    })
}

/// RunInstances `NetworkInterfaces` for the spec's interfaces, each with the
/// batch's subnet and security groups; the public IP choice on the primary.
pub(super) fn interfaces(spec: &LaunchSpec) -> Option<Vec<InstanceNetworkInterfaceSpecification>> {
    let subnet = spec.subnet_ids.first().cloned();
    let groups = non_empty(&spec.security_group_ids);
    let list: Vec<_> = spec
        .options
        .network_interfaces
        .iter()
        .map(|i| {
            InstanceNetworkInterfaceSpecification::builder()
                .device_index(i.device_index)
                .network_card_index(i.network_card_index)
                .interface_type(&i.interface_type)
                .delete_on_termination(true)
                .set_associate_public_ip_address(
                    spec.options.associate_public_ip.filter(|_| i.is_primary()),
                )
                .set_subnet_id(subnet.clone())
                .set_groups(groups.clone())
                .build()
        })
        .collect();
    non_empty(&list)
}

/// The launch template's `NetworkInterfaces`: as [`interfaces`] but without
/// the subnet, which the fleet's overrides carry.
pub(super) fn template_interfaces(
    spec: &LaunchSpec,
) -> Option<Vec<LaunchTemplateInstanceNetworkInterfaceSpecificationRequest>> {
    let groups = non_empty(&spec.security_group_ids);
    let list: Vec<_> = spec
        .options
        .network_interfaces
        .iter()
        .map(|i| {
            LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                .device_index(i.device_index)
                .network_card_index(i.network_card_index)
                .interface_type(&i.interface_type)
                .delete_on_termination(true)
                .set_associate_public_ip_address(
                    spec.options.associate_public_ip.filter(|_| i.is_primary()),
                )
                .set_groups(groups.clone())
                .build()
        })
        .collect();
    non_empty(&list)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{offline_client, spec};
    use super::super::fleet::{fleet_request, target_capacity, template_data};
    use super::super::run_instances::run_instances_request;
    use super::*;
    use crate::provider::{InterfaceSpec, LaunchApi, LaunchCapacity};
    use aws_sdk_ec2::types::DefaultTargetCapacityType;

    fn reserved(r: ReservationSpec) -> LaunchSpec {
        let mut s = spec();
        s.options.capacity_reservation = Some(r);
        s
    }

    fn group_target() -> ReservationSpec {
        ReservationSpec {
            preference: Some("capacity-reservations-only".into()),
            resource_group_arn: Some("arn:aws:resource-groups:us-east-1:1:group/g".into()),
            ..Default::default()
        }
    }

    fn block() -> ReservationSpec {
        ReservationSpec {
            reservation_id: Some("cr-1".into()),
            capacity_block: true,
            ..Default::default()
        }
    }

    fn efa_spec() -> LaunchSpec {
        let mut s = spec();
        s.options.associate_public_ip = Some(false);
        s.options.network_interfaces = vec![
            InterfaceSpec {
                interface_type: "efa".into(),
                network_card_index: 0,
                device_index: 0,
            },
            InterfaceSpec {
                interface_type: "efa-only".into(),
                network_card_index: 1,
                device_index: 1,
            },
        ];
        s
    }

    #[test]
    fn run_instances_carries_preference_and_target() {
        let client = offline_client();
        let req = run_instances_request(&client, &reserved(group_target())).expect("valid");
        let crs = req
            .as_input()
            .get_capacity_reservation_specification()
            .clone()
            .expect("sent");
        assert_eq!(
            crs.capacity_reservation_preference(),
            Some(&CapacityReservationPreference::CapacityReservationsOnly)
        );
        let target = crs.capacity_reservation_target().expect("target");
        assert_eq!(
            target.capacity_reservation_resource_group_arn(),
            Some("arn:aws:resource-groups:us-east-1:1:group/g")
        );
        assert_eq!(target.capacity_reservation_id(), None);
        assert_eq!(req.as_input().get_instance_market_options(), &None);

        let none = reserved(ReservationSpec {
            preference: Some("none".into()),
            ..Default::default()
        });
        let req = run_instances_request(&client, &none).expect("valid");
        let crs = req
            .as_input()
            .get_capacity_reservation_specification()
            .clone()
            .expect("sent");
        assert_eq!(
            crs.capacity_reservation_preference(),
            Some(&CapacityReservationPreference::None)
        );
        assert!(crs.capacity_reservation_target().is_none());

        let req = run_instances_request(&client, &spec()).expect("valid");
        assert_eq!(
            req.as_input().get_capacity_reservation_specification(),
            &None,
            "EC2's default (open) stays EC2's"
        );
    }

    #[test]
    fn a_capacity_block_launches_with_its_market_type_and_target() {
        let client = offline_client();
        let req = run_instances_request(&client, &reserved(block())).expect("valid");
        let i = req.as_input();
        let m = i.get_instance_market_options().clone().expect("market");
        assert_eq!(m.market_type(), Some(&MarketType::CapacityBlock));
        assert!(m.spot_options().is_none());
        let crs = i
            .get_capacity_reservation_specification()
            .clone()
            .expect("sent");
        assert_eq!(crs.capacity_reservation_preference(), None);
        assert_eq!(
            crs.capacity_reservation_target()
                .and_then(|t| t.capacity_reservation_id()),
            Some("cr-1")
        );
    }

    #[test]
    fn interfaces_carry_subnet_groups_and_the_public_ip_on_the_primary() {
        let client = offline_client();
        let req = run_instances_request(&client, &efa_spec()).expect("valid");
        let i = req.as_input();
        assert_eq!(i.get_subnet_id(), &None, "not beside interfaces");
        assert_eq!(i.get_security_group_ids(), &None, "not beside interfaces");
        let nics = i.get_network_interfaces().clone().expect("interfaces");
        let rows: Vec<_> = nics
            .iter()
            .map(|n| {
                (
                    n.interface_type(),
                    n.network_card_index(),
                    n.device_index(),
                    n.subnet_id(),
                    n.groups().to_vec(),
                    n.associate_public_ip_address(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                (
                    Some("efa"),
                    Some(0),
                    Some(0),
                    Some("subnet-a"),
                    vec!["sg-1".to_string()],
                    Some(false)
                ),
                (
                    Some("efa-only"),
                    Some(1),
                    Some(1),
                    Some("subnet-a"),
                    vec!["sg-1".to_string()],
                    None
                ),
            ]
        );
    }

    #[test]
    fn the_fleet_template_holds_reservation_market_and_interfaces() {
        let mut s = efa_spec();
        s.api = LaunchApi::Fleet;
        s.options.capacity_reservation = Some(block());
        let data = template_data(&s);
        assert_eq!(
            data.security_group_ids(),
            &[] as &[String],
            "on the interfaces"
        );
        let nics = data.network_interfaces();
        assert_eq!(nics.len(), 2);
        assert_eq!(
            (
                nics[1].interface_type(),
                nics[1].network_card_index(),
                nics[1].device_index()
            ),
            (Some("efa-only"), Some(1), Some(1))
        );
        assert_eq!(nics[0].groups(), ["sg-1".to_string()]);
        assert_eq!(nics[0].associate_public_ip_address(), Some(false));
        assert_eq!(nics[1].associate_public_ip_address(), None);
        assert_eq!(nics[0].subnet_id(), None, "the overrides carry the subnet");
        assert_eq!(
            data.instance_market_options().and_then(|m| m.market_type()),
            Some(&MarketType::CapacityBlock)
        );
        assert_eq!(
            data.capacity_reservation_specification()
                .and_then(|c| c.capacity_reservation_target())
                .and_then(|t| t.capacity_reservation_id()),
            Some("cr-1")
        );
    }

    #[test]
    fn a_capacity_block_fleet_names_only_its_total() {
        let mut s = reserved(block());
        s.api = LaunchApi::Fleet;
        let t = target_capacity(&s);
        assert_eq!(t.total_target_capacity(), Some(3));
        assert_eq!(
            t.default_target_capacity_type(),
            Some(&DefaultTargetCapacityType::CapacityBlock)
        );
        assert_eq!(
            (t.on_demand_target_capacity(), t.spot_target_capacity()),
            (None, None)
        );
        let req = fleet_request(&offline_client(), &s, "lt-1");
        let od = req
            .as_input()
            .get_on_demand_options()
            .clone()
            .expect("on-demand");
        assert!(
            od.capacity_reservation_options().is_none(),
            "EC2 refuses them here"
        );
    }

    #[test]
    fn a_fleet_with_reservations_uses_them_first_for_its_on_demand_part() {
        let mut s = reserved(group_target());
        s.api = LaunchApi::Fleet;
        let req = fleet_request(&offline_client(), &s, "lt-1");
        let od = req
            .as_input()
            .get_on_demand_options()
            .clone()
            .expect("on-demand");
        assert_eq!(
            od.capacity_reservation_options()
                .and_then(|c| c.usage_strategy()),
            Some(&FleetCapacityReservationUsageStrategy::UseCapacityReservationsFirst)
        );
        let data = template_data(&s);
        let crs = data
            .capacity_reservation_specification()
            .expect("in the template");
        assert_eq!(
            crs.capacity_reservation_target()
                .and_then(|t| t.capacity_reservation_resource_group_arn()),
            Some("arn:aws:resource-groups:us-east-1:1:group/g")
        );

        s.options.capacity_reservation = Some(ReservationSpec {
            preference: Some("none".into()),
            ..Default::default()
        });
        let req = fleet_request(&offline_client(), &s, "lt-1");
        let od = req
            .as_input()
            .get_on_demand_options()
            .clone()
            .expect("on-demand");
        assert!(
            od.capacity_reservation_options().is_none(),
            "none: not first"
        );

        s.options.capacity_reservation = Some(group_target());
        s.capacity = LaunchCapacity {
            on_demand_percent: 0,
            max_price: None,
            allocation_strategy: None,
            on_demand_units: None,
        };
        let req = fleet_request(&offline_client(), &s, "lt-1");
        assert!(
            req.as_input().get_on_demand_options().is_none(),
            "no on-demand part"
        );
    }
}

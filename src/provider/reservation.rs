//! Capacity reservations and network interfaces of one launch, in plain
//! types and EC2's spelling: built from a template by
//! [`LaunchOptions::of_template`](super::LaunchOptions::of_template), turned
//! into RunInstances, launch template and CreateFleet parameters by the
//! adapter.

use crate::api::{CapacityReservation, NetworkInterface};

/// Which capacity reservations a launch uses (EC2
/// `CapacityReservationSpecification`), and whether it launches into a
/// Capacity Block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ReservationSpec {
    /// `open`, `none` or `capacity-reservations-only`; `None`: not sent.
    pub preference: Option<String>,
    /// `CapacityReservationTarget.CapacityReservationId`.
    pub reservation_id: Option<String>,
    /// `CapacityReservationTarget.CapacityReservationResourceGroupArn`.
    pub resource_group_arn: Option<String>,
    /// Market type `capacity-block` (RunInstances), default target capacity
    /// type `capacity-block` (CreateFleet).
    pub capacity_block: bool,
}

impl ReservationSpec {
    /// The spec of a template's `capacityReservation`.
    pub fn of(r: &CapacityReservation) -> ReservationSpec {
        ReservationSpec {
            preference: r.preference.map(|p| p.ec2().to_string()),
            reservation_id: r.id.clone(),
            resource_group_arn: r.resource_group_arn.clone(),
            capacity_block: r.capacity_block,
        }
    }

    /// Whether a target (a reservation or a group) is named.
    pub fn has_target(&self) -> bool {
        self.reservation_id.is_some() || self.resource_group_arn.is_some()
    }

    /// Whether an instant fleet's on-demand part should use reservations
    /// first (`OnDemandOptions.CapacityReservationOptions.UsageStrategy
    /// use-capacity-reservations-first`): for any preference but `none`, and
    /// never for a Capacity Block, where EC2 refuses those options
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-launch-instances-capacity-blocks-walkthrough.html>).
    pub fn fleet_uses_reservations_first(&self) -> bool {
        !self.capacity_block && self.preference.as_deref() != Some("none")
    }
}

/// One network interface of a launch, its defaults resolved.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterfaceSpec {
    /// `interface`, `efa` or `efa-only`.
    pub interface_type: String,
    /// `NetworkCardIndex`.
    pub network_card_index: i32,
    /// `DeviceIndex`.
    pub device_index: i32,
}

impl InterfaceSpec {
    /// The interfaces of a template's `networkInterfaces`, in its order.
    pub fn all(list: &[NetworkInterface]) -> Vec<InterfaceSpec> {
        list.iter()
            .enumerate()
            .map(|(i, n)| InterfaceSpec {
                interface_type: n.interface_type.ec2().to_string(),
                network_card_index: n.card(i),
                device_index: n.device(i),
            })
            .collect()
    }

    /// Whether this is the primary interface (card 0, device 0), the only
    /// one a public IP may be associated with. Card 0 is where an instance's
    /// primary interface is
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/efa-acc-inst-types.html>).
    pub fn is_primary(&self) -> bool {
        self.network_card_index == 0 && self.device_index == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{InterfaceType, ReservationPreference};

    #[test]
    fn preferences_map_to_ec2_spelling() {
        let r = ReservationSpec::of(&CapacityReservation {
            preference: Some(ReservationPreference::TargetedOnly),
            resource_group_arn: Some(
                "arn:aws:resource-groups:us-east-1:123456789012:group/g".into(),
            ),
            ..Default::default()
        });
        assert_eq!(r.preference.as_deref(), Some("capacity-reservations-only"));
        assert!(r.has_target());
        assert!(r.fleet_uses_reservations_first());
        let none = ReservationSpec::of(&CapacityReservation {
            preference: Some(ReservationPreference::None),
            ..Default::default()
        });
        assert_eq!(none.preference.as_deref(), Some("none"));
        assert!(!none.fleet_uses_reservations_first());
        let block = ReservationSpec::of(&CapacityReservation {
            id: Some("cr-0123456789abcdef0".into()),
            capacity_block: true,
            ..Default::default()
        });
        assert!(!block.fleet_uses_reservations_first());
        assert_eq!(block.preference, None);
    }

    #[test]
    fn a_template_maps_into_the_launch_options() {
        let t: crate::api::MachineTemplateSpec = serde_json::from_value(serde_json::json!({
            "image": {"id": "ami-0123456789abcdef0"},
            "instanceTypes": [{"type": "p4d.24xlarge"}],
            "capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true},
            "networkInterfaces": [{"interfaceType": "efa"}, {"interfaceType": "efa-only"}],
        }))
        .expect("spec");
        let o = super::super::LaunchOptions::of_template(&t);
        let r = o.capacity_reservation.expect("reservation");
        assert_eq!(r.reservation_id.as_deref(), Some("cr-0123456789abcdef0"));
        assert!(r.capacity_block);
        assert_eq!(o.network_interfaces.len(), 2);
        assert_eq!(o.network_interfaces[1].network_card_index, 1);
    }

    #[test]
    fn interfaces_default_to_one_card_each_primary_first() {
        let efa = |t| NetworkInterface {
            interface_type: t,
            ..Default::default()
        };
        let all = InterfaceSpec::all(&[
            efa(InterfaceType::Efa),
            efa(InterfaceType::EfaOnly),
            NetworkInterface {
                interface_type: InterfaceType::Interface,
                network_card_index: Some(0),
                device_index: Some(2),
            },
        ]);
        let got: Vec<_> = all
            .iter()
            .map(|i| {
                (
                    i.interface_type.as_str(),
                    i.network_card_index,
                    i.device_index,
                )
            })
            .collect();
        assert_eq!(
            got,
            [("efa", 0, 0), ("efa-only", 1, 0), ("interface", 0, 2)]
        );
        let second = InterfaceSpec::all(&[efa(InterfaceType::Efa), efa(InterfaceType::Efa)]);
        assert_eq!(
            (second[1].network_card_index, second[1].device_index),
            (1, 1)
        );
        assert!(all[0].is_primary());
        assert!(!all[2].is_primary());
    }
}

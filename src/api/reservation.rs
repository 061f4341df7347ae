//! Capacity reservations, Capacity Blocks and network interfaces (EFA) of a
//! MachineTemplate: what HPC and ML users ask for at launch, kept apart from
//! the template's other fields so that each can grow on its own.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a capacity reservation id as EC2 issues them (Capacity Blocks
/// have the same form).
pub const CAPACITY_RESERVATION_ID_PATTERN: &str = r"^cr-[0-9a-f]{8}([0-9a-f]{9})?$";

/// Pattern of a Capacity Reservation resource group's ARN.
pub const RESOURCE_GROUP_ARN_PATTERN: &str =
    r"^arn:aws[a-z-]*:resource-groups:[a-z0-9-]+:[0-9]{12}:group/[A-Za-z0-9_.-]{1,300}$";

/// Which capacity reservations the machines use (EC2
/// `CapacityReservationSpecification`), and whether the target is a Capacity
/// Block for ML. Without this field EC2's own default applies: `open`, so
/// the account's open reservations with matching attributes are used first.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.preference) || has(self.id) || has(self.resourceGroupArn)")
        .message("capacityReservation: set preference, id or resourceGroupArn"),
    validation = Rule::new("!(has(self.id) && has(self.resourceGroupArn))")
        .message("capacityReservation: set id or resourceGroupArn, not both")
        .field_path(".resourceGroupArn"),
    validation = Rule::new("!has(self.preference) || self.preference == 'TargetedOnly' || (!has(self.id) && !has(self.resourceGroupArn))")
        .message("capacityReservation.preference Open or None takes no target (id or resourceGroupArn): EC2 accepts a target only alone or with TargetedOnly")
        .field_path(".preference"),
    validation = Rule::new("!has(self.preference) || self.preference != 'TargetedOnly' || has(self.id) || has(self.resourceGroupArn)")
        .message("capacityReservation.preference TargetedOnly needs a target: id or resourceGroupArn")
        .field_path(".preference"),
    validation = Rule::new("!has(self.capacityBlock) || !self.capacityBlock || has(self.id)")
        .message("capacityReservation.capacityBlock needs the Capacity Block's reservation id (capacityReservation.id)")
        .field_path(".capacityBlock"),
)]
#[serde(rename_all = "camelCase")]
pub struct CapacityReservation {
    /// Open: run in any open reservation with matching attributes, else as
    /// regular on-demand (EC2's default, also when this field is empty).
    /// None: never use a reservation, even an open one (the account's open
    /// reservations are then left unused by these machines). TargetedOnly:
    /// run only in the reservation or group given by id or resourceGroupArn;
    /// without capacity there the launch fails. Empty with a target: the
    /// target only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preference: Option<ReservationPreference>,

    /// The capacity reservation (cr-…) to launch into. With providerApi
    /// EC2Fleet only for a Capacity Block: EC2 Fleet targets ordinary
    /// reservations through a resource group (resourceGroupArn).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = CAPACITY_RESERVATION_ID_PATTERN))]
    pub id: Option<String>,

    /// ARN of a Capacity Reservation resource group: the machines run in any
    /// reservation of the group with matching attributes and free capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048), regex(pattern = RESOURCE_GROUP_ARN_PATTERN))]
    pub resource_group_arn: Option<String>,

    /// The reservation named by id is a Capacity Block for ML: machines are
    /// launched with market type capacity-block (RunInstances
    /// InstanceMarketOptions, CreateFleet DefaultTargetCapacityType). Needs
    /// capacityType on-demand (no spot, no mix, no maxPrice). Machines only
    /// launch while the block is active and are terminated when it ends.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capacity_block: bool,
}

/// Whether machines use capacity reservations.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum ReservationPreference {
    /// Any open reservation with matching attributes, else on-demand (EC2 `open`).
    Open,
    /// No reservation, even an open one (EC2 `none`).
    None,
    /// Only the targeted reservation or group (EC2 `capacity-reservations-only`).
    TargetedOnly,
}

impl ReservationPreference {
    /// EC2's spelling (`CapacityReservationPreference`).
    pub fn ec2(self) -> &'static str {
        match self {
            ReservationPreference::Open => "open",
            ReservationPreference::None => "none",
            ReservationPreference::TargetedOnly => "capacity-reservations-only",
        }
    }
}

/// One network interface of each machine. The first in the list is the
/// primary interface (card 0, device 0).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    /// interface (a regular ENA interface, the default), efa (an Elastic
    /// Fabric Adapter with IP traffic) or efa-only (EFA traffic only, never
    /// the primary interface). The instance types must support EFA.
    #[serde(default)]
    pub interface_type: InterfaceType,

    /// Network card the interface is attached to. Default: its position in
    /// the list (0 for the first), so a list of EFAs spreads one per card as
    /// multi-card types (e.g. p4d.24xlarge) need. Must be below the type's
    /// MaximumNetworkCards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 63))]
    pub network_card_index: Option<i32>,

    /// Device index on its card. Default: 0 for the first interface; for
    /// the others 0 when efa-only and 1 otherwise (EC2's recommended layout
    /// for EFA on multi-card types: an EFA-only interface at device 0 of each
    /// further card, an ENA interface at device 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 63))]
    pub device_index: Option<i32>,
}

/// The kind of a network interface, as EC2 spells it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "kebab-case")]
pub enum InterfaceType {
    /// A regular (ENA) interface.
    #[default]
    Interface,
    /// An Elastic Fabric Adapter that also carries IP traffic.
    Efa,
    /// An Elastic Fabric Adapter without IP traffic.
    EfaOnly,
}

impl InterfaceType {
    /// EC2's spelling (`InterfaceType`).
    pub fn ec2(self) -> &'static str {
        match self {
            InterfaceType::Interface => "interface",
            InterfaceType::Efa => "efa",
            InterfaceType::EfaOnly => "efa-only",
        }
    }

    /// Whether the interface is an Elastic Fabric Adapter.
    pub fn is_efa(self) -> bool {
        self != InterfaceType::Interface
    }
}

impl NetworkInterface {
    /// The card the interface at `position` of the list is attached to.
    pub fn card(&self, position: usize) -> i32 {
        self.network_card_index
            .unwrap_or_else(|| i32::try_from(position).unwrap_or(i32::MAX))
    }

    /// The device index of the interface at `position` of the list.
    pub fn device(&self, position: usize) -> i32 {
        self.device_index.unwrap_or(
            if position == 0 || self.interface_type == InterfaceType::EfaOnly {
                0
            } else {
                1
            },
        )
    }
}

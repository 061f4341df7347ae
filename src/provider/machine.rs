//! Machines as the cloud reports them, in plain types: the port's answer to
//! describe, list and launch calls, and the facts about instance types and
//! interruption notices that come with them.

use std::collections::BTreeMap;
use std::fmt;

/// The cloud's warning that it is taking a spot machine back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterruptionNotice {
    /// Instance id.
    pub id: String,
    /// When the notice was given (RFC 3339): the warning period runs from here.
    pub noticed_at: String,
    /// What will happen to it: `terminate`, `stop` or `hibernate`.
    pub action: String,
}

/// A running machine whose status checks the cloud reports failing (EC2:
/// its instance or system status is `impaired`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Impairment {
    /// Instance id.
    pub id: String,
    /// The instance status check fails (the machine's own software or
    /// network configuration).
    pub instance: bool,
    /// The system status check fails (the cloud's hardware, power or
    /// network under the machine).
    pub system: bool,
    /// When the earliest failing check started failing (RFC 3339), when the
    /// cloud says.
    pub since: Option<String>,
}

/// The hardware of one instance type, as the cloud describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceTypeInfo {
    /// Instance type, e.g. `c6i.xlarge`.
    pub instance_type: String,
    /// Virtual CPUs (hardware threads) by default.
    pub vcpus: i32,
    /// Physical cores by default.
    pub cores: i32,
    /// Memory in MiB.
    pub memory_mib: i64,
    /// First supported CPU architecture as the cloud names it (`x86_64`, `arm64`, …).
    pub architecture: Option<String>,
    /// Whether the type supports Elastic Fabric Adapters; `None`: not said.
    pub efa_supported: Option<bool>,
    /// How many network cards the type has; `None`: not said.
    pub max_network_cards: Option<i32>,
}

/// One machine as the cloud reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// Instance id.
    pub id: String,
    /// The host name HostFactory reports; empty until the cloud assigns it.
    pub private_dns_name: Option<String>,
    /// Lifecycle state.
    pub state: MachineState,
    /// Why the machine is in its state (e.g. a spot interruption), when the cloud says.
    pub state_reason: Option<String>,
    /// Instance type, e.g. `c6i.xlarge`.
    pub instance_type: Option<String>,
    /// Availability zone.
    pub availability_zone: Option<String>,
    /// Subnet the machine runs in.
    pub subnet_id: Option<String>,
    /// Private IPv4 address.
    pub private_ip: Option<String>,
    /// Public IPv4 address, if any.
    pub public_ip: Option<String>,
    /// Launch time, RFC 3339.
    pub launch_time: Option<String>,
    /// On-demand or spot.
    pub capacity_type: CapacityType,
    /// Image the machine was launched from.
    pub image_id: Option<String>,
    /// The machine's tags; ownership is read from these.
    pub tags: BTreeMap<String, String>,
    /// The capacity reservation it runs in, when the cloud says.
    pub capacity_reservation_id: Option<String>,
}

impl Machine {
    /// A machine known only by its id and state (a vanished machine, a launch
    /// answer before its first describe): every other fact is unknown.
    pub fn bare(id: impl Into<String>, state: MachineState) -> Machine {
        Machine {
            id: id.into(),
            private_dns_name: None,
            state,
            state_reason: None,
            instance_type: None,
            availability_zone: None,
            subnet_id: None,
            private_ip: None,
            public_ip: None,
            launch_time: None,
            capacity_type: CapacityType::OnDemand,
            image_id: None,
            tags: BTreeMap::new(),
            capacity_reservation_id: None,
        }
    }
}

/// A machine's lifecycle state, the cloud-neutral subset that controllers act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MachineState {
    /// Launched, not running yet.
    Pending,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Stopped (not billed for compute, still exists).
    Stopped,
    /// Being terminated.
    ShuttingDown,
    /// Gone (still listed for a while).
    Terminated,
    /// A state this version does not know.
    Unknown,
}

impl MachineState {
    /// The state's name as EC2 spells it (status fields, HostFactory).
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Pending => "pending",
            MachineState::Running => "running",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::ShuttingDown => "shutting-down",
            MachineState::Terminated => "terminated",
            MachineState::Unknown => "unknown",
        }
    }

    /// Whether the machine is on its way out or gone; such machines no longer
    /// count towards a request's live machines.
    pub fn is_terminating(self) -> bool {
        matches!(self, MachineState::ShuttingDown | MachineState::Terminated)
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a machine is paid for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CapacityType {
    /// Regular on-demand capacity.
    #[default]
    OnDemand,
    /// Spot capacity (may be interrupted).
    Spot,
}

impl CapacityType {
    /// The name used in specs and status: `on-demand` or `spot`.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

//! What one launch batch asks of the cloud, in plain types: the controller
//! builds a [`LaunchSpec`] from a template and a batch, digests it to guard its
//! ClientToken, and an adapter turns it into one launch call.

use std::collections::BTreeMap;

/// Which cloud API one launch batch goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaunchApi {
    /// One RunInstances call: the first instance type and the first subnet only
    /// (fallbacks are separate batches), MinCount 1 and MaxCount `count`.
    RunInstances,
    /// One CreateFleet call of type `instant`: every instance type × subnet as an
    /// override, on-demand/spot split from [`LaunchCapacity`].
    Fleet,
}

/// Everything one launch needs, in plain types. Two specs that are equal launch
/// the same thing; the controller digests this to guard its ClientToken.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaunchSpec {
    /// The batch id, also written into the `hostforge.io/batch` tag by the
    /// controller (it is part of `tags`), so a crashed launch can be found again.
    pub batch_id: String,
    /// Idempotency token (EC2 ClientToken), at most 64 characters.
    pub client_token: String,
    /// Machines wanted (fleet: target capacity units).
    pub count: i32,
    /// Which API to launch through.
    pub api: LaunchApi,
    /// Image to launch.
    pub image_id: String,
    /// The image's root device (e.g. `/dev/xvda`), where `root_volume` applies.
    pub root_device_name: Option<String>,
    /// Instance types in order of preference (RunInstances uses the first).
    pub instance_types: Vec<InstanceTypeChoice>,
    /// Subnets in order of preference (RunInstances uses the first); empty: the
    /// account's default subnet.
    pub subnet_ids: Vec<String>,
    /// The Availability Zone a launch without subnets is pinned to (RunInstances
    /// sends it as `Placement.AvailabilityZone`, a fleet as each override's
    /// `AvailabilityZone`; EC2 then uses that zone's default subnet). `None` with no subnets: the cloud picks the zone. EC2's
    /// ClientToken is zonal, so a batch keeps one zone for every send.
    pub availability_zone: Option<String>,
    /// On-demand, spot or a mix, and how spot capacity is chosen.
    pub capacity: LaunchCapacity,
    /// Security groups; empty: the VPC's default group.
    pub security_group_ids: Vec<String>,
    /// EC2 key pair name.
    pub key_name: Option<String>,
    /// IAM instance profile: a name, or an ARN (starts with `arn:`).
    pub instance_profile: Option<String>,
    /// User data as the machine should see it (the adapter encodes it).
    pub user_data: Option<Vec<u8>>,
    /// Root volume settings; `None` keeps the image's.
    pub root_volume: Option<VolumeSpec>,
    /// Instance metadata service settings.
    pub metadata: MetadataSpec,
    /// Every tag for instances and their volumes: ownership tags, `Name`, and the
    /// template's own tags. Applied in the launch call itself, never afterwards.
    pub tags: BTreeMap<String, String>,
}

/// One instance type a launch may use.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InstanceTypeChoice {
    /// Instance type, e.g. `c6i.xlarge`.
    pub name: String,
    /// Capacity units one machine of this type counts for (fleet only).
    pub weight: Option<i32>,
}

/// Pricing of a launch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaunchCapacity {
    /// Share of `count` launched on-demand, 0 to 100 (100: all on-demand, 0: all
    /// spot). RunInstances supports only 0 or 100.
    pub on_demand_percent: i32,
    /// Highest spot price per instance-hour (USD); `None`: the on-demand price.
    pub max_price: Option<String>,
    /// Fleet spot allocation strategy as EC2 spells it (e.g.
    /// `price-capacity-optimized`); `None`: EC2's default.
    pub allocation_strategy: Option<String>,
    /// Exactly this many of `count` on-demand, in place of the percentage: a
    /// coalesced fleet carries the sum of its members' own rounded on-demand
    /// shares, so each member gets what it would have got alone. `None`: from
    /// `on_demand_percent`.
    pub on_demand_units: Option<i32>,
}

impl LaunchCapacity {
    /// All on-demand.
    pub fn on_demand() -> LaunchCapacity {
        LaunchCapacity {
            on_demand_percent: 100,
            max_price: None,
            allocation_strategy: None,
            on_demand_units: None,
        }
    }

    /// How many of `count` are on-demand: `on_demand_units` when set, else the
    /// percentage rounded up (so 50 % of 3 is 2).
    pub fn on_demand_count(&self, count: i32) -> i32 {
        if let Some(units) = self.on_demand_units {
            return units.clamp(0, count.max(0));
        }
        let pct = self.on_demand_percent.clamp(0, 100);
        (count * pct + 99) / 100
    }
}

/// Root volume of each machine.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeSpec {
    /// Size in GiB.
    pub size_gib: i32,
    /// EBS volume type as EC2 spells it (`gp3`, `io2`, …).
    pub volume_type: String,
    /// Provisioned IOPS.
    pub iops: Option<i32>,
    /// Provisioned throughput, MiB/s.
    pub throughput: Option<i32>,
    /// Whether the volume is encrypted.
    pub encrypted: bool,
    /// KMS key for encryption; `None`: the account's default EBS key.
    pub kms_key_id: Option<String>,
}

/// Instance metadata service settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MetadataSpec {
    /// IMDSv2 session tokens required (IMDSv1 off).
    pub http_tokens_required: bool,
    /// Response hop limit; `None`: EC2's default.
    pub hop_limit: Option<i32>,
}

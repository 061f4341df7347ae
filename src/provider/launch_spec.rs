//! What one launch batch asks of the cloud, in plain types: the controller
//! builds a [`LaunchSpec`] from a template and a batch, digests it to guard its
//! ClientToken, and an adapter turns it into one launch call.

use std::collections::BTreeMap;
use std::fmt;

use crate::api::MachineTemplateSpec;

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
/// the same thing; the controller digests this (its `Debug` text) to guard its
/// ClientToken.
#[derive(Clone, PartialEq, Eq, Hash)]
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
    /// Placement group, tenancy, EBS optimization, public IP, CPU options, data
    /// volumes and the fleet's spend cap; default: none of them sent.
    pub options: LaunchOptions,
}

impl fmt::Debug for LaunchSpec {
    /// Every field, but `options` only when it sets something: the controller
    /// digests this text, and a batch recorded before launch options existed
    /// must keep its digest so that it is re-sent with its token after an
    /// upgrade rather than adopted by tag.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("LaunchSpec");
        d.field("batch_id", &self.batch_id)
            .field("client_token", &self.client_token)
            .field("count", &self.count)
            .field("api", &self.api)
            .field("image_id", &self.image_id)
            .field("root_device_name", &self.root_device_name)
            .field("instance_types", &self.instance_types)
            .field("subnet_ids", &self.subnet_ids)
            .field("availability_zone", &self.availability_zone)
            .field("capacity", &self.capacity)
            .field("security_group_ids", &self.security_group_ids)
            .field("key_name", &self.key_name)
            .field("instance_profile", &self.instance_profile)
            .field("user_data", &self.user_data)
            .field("root_volume", &self.root_volume)
            .field("metadata", &self.metadata)
            .field("tags", &self.tags);
        if self.options != LaunchOptions::default() {
            d.field("options", &self.options);
        }
        d.finish()
    }
}

/// The launch options of a template beyond image, types, network and volumes:
/// each is sent only when set, so EC2's defaults stay EC2's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LaunchOptions {
    /// Placement group name (`Placement.GroupName`).
    pub placement_group: Option<String>,
    /// Partition of a partition placement group (`Placement.PartitionNumber`).
    pub partition_number: Option<i32>,
    /// Tenancy as EC2 spells it: `default`, `dedicated` or `host`.
    pub tenancy: Option<String>,
    /// `EbsOptimized`.
    pub ebs_optimized: Option<bool>,
    /// Public IPv4 on the primary interface; when set, the subnet and security
    /// groups travel on that interface (EC2 refuses them beside it).
    pub associate_public_ip: Option<bool>,
    /// `CpuOptions`.
    pub cpu: Option<CpuSpec>,
    /// EBS volumes besides the root volume, in the template's order.
    pub data_volumes: Vec<DataVolumeSpec>,
    /// Most one fleet launch may cost per hour (USD), for its on-demand and
    /// spot parts; fleets only.
    pub max_total_price: Option<String>,
    /// The user's launch template every launch starts from (with the
    /// version the batch pinned); `None`: no base template.
    pub base_template: Option<super::BaseTemplate>,
    /// Instance types chosen by EC2 from attributes instead of
    /// `instance_types` (fleets only).
    pub instance_requirements: Option<super::RequirementsSpec>,
    /// Capacity reservation preference and target, Capacity Block market.
    pub capacity_reservation: Option<super::ReservationSpec>,
    /// Network interfaces (EFA); when set, the subnet, security groups and
    /// public IP choice travel on them.
    pub network_interfaces: Vec<super::InterfaceSpec>,
}

impl LaunchOptions {
    /// The options `template` asks for, in EC2's spelling.
    pub fn of_template(template: &MachineTemplateSpec) -> LaunchOptions {
        let placement = template.placement.as_ref();
        LaunchOptions {
            placement_group: placement.and_then(|p| p.group_name.clone()),
            partition_number: placement.and_then(|p| p.partition_number),
            tenancy: placement.and_then(|p| p.tenancy.as_ref()).map(wire),
            ebs_optimized: template.ebs_optimized,
            associate_public_ip: template.associate_public_ip_address,
            cpu: template.cpu_options.as_ref().map(|c| CpuSpec {
                core_count: c.core_count,
                threads_per_core: c.threads_per_core,
            }),
            data_volumes: template
                .data_volumes
                .iter()
                .map(|v| DataVolumeSpec {
                    device_name: v.device_name.clone(),
                    volume: VolumeSpec {
                        size_gib: v.size_gib,
                        volume_type: wire(&v.volume_type),
                        iops: v.iops,
                        throughput: v.throughput,
                        encrypted: v.encrypted,
                        kms_key_id: v.kms_key_id.clone(),
                    },
                    delete_on_termination: v.delete_on_termination,
                })
                .collect(),
            max_total_price: template.max_total_price.clone(),
            // Pinned per batch by the controller, never taken from the spec's
            // moving version.
            base_template: None,
            instance_requirements: super::RequirementsSpec::of_template(template),
            capacity_reservation: template
                .capacity_reservation
                .as_ref()
                .map(super::ReservationSpec::of),
            network_interfaces: super::InterfaceSpec::all(&template.network_interfaces),
        }
    }

    /// Whether any placement field is set (a `Placement` must be sent).
    pub fn has_placement(&self) -> bool {
        self.placement_group.is_some() || self.partition_number.is_some() || self.tenancy.is_some()
    }
}

/// The wire spelling of a serde enum of the API (e.g. `dedicated`, `gp3`,
/// `amazon-web-services`).
pub(super) fn wire<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// CPU cores and threads per core to enable.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CpuSpec {
    /// `CpuOptions.CoreCount`.
    pub core_count: Option<i32>,
    /// `CpuOptions.ThreadsPerCore`.
    pub threads_per_core: Option<i32>,
}

/// One EBS volume attached at launch besides the root volume.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataVolumeSpec {
    /// Device name, e.g. `/dev/sdf`.
    pub device_name: String,
    /// Size, type, performance and encryption.
    pub volume: VolumeSpec,
    /// Whether the volume goes with its machine.
    pub delete_on_termination: bool,
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

/// An EBS volume's size, type, performance and encryption (root or data).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn template(extra: serde_json::Value) -> MachineTemplateSpec {
        let mut spec = serde_json::json!({
            "image": {"id": "ami-0123456789abcdef0"},
            "instanceTypes": [{"type": "c6i.xlarge"}],
        });
        for (k, v) in extra.as_object().expect("object") {
            spec[k] = v.clone();
        }
        serde_json::from_value(spec).expect("template")
    }

    #[test]
    fn every_option_maps_in_ec2_spelling() {
        let t = template(serde_json::json!({
            "placement": {"groupName": "pg", "partitionNumber": 2, "tenancy": "dedicated"},
            "ebsOptimized": true,
            "associatePublicIpAddress": false,
            "cpuOptions": {"coreCount": 4, "threadsPerCore": 1},
            "dataVolumes": [
                {"deviceName": "/dev/sdf", "sizeGiB": 100, "type": "io2", "iops": 3000,
                 "kmsKeyId": "alias/k", "deleteOnTermination": false},
                {"deviceName": "/dev/sdg", "sizeGiB": 10},
            ],
            "maxTotalPrice": "3.5",
        }));
        let o = LaunchOptions::of_template(&t);
        assert_eq!(o.placement_group.as_deref(), Some("pg"));
        assert_eq!(o.partition_number, Some(2));
        assert_eq!(o.tenancy.as_deref(), Some("dedicated"));
        assert_eq!(o.ebs_optimized, Some(true));
        assert_eq!(o.associate_public_ip, Some(false));
        assert_eq!(
            o.cpu,
            Some(CpuSpec {
                core_count: Some(4),
                threads_per_core: Some(1)
            })
        );
        assert_eq!(o.data_volumes.len(), 2);
        let first = &o.data_volumes[0];
        assert_eq!(first.device_name, "/dev/sdf");
        assert_eq!(first.volume.volume_type, "io2");
        assert_eq!(first.volume.iops, Some(3000));
        assert_eq!(first.volume.kms_key_id.as_deref(), Some("alias/k"));
        assert!(!first.delete_on_termination);
        let second = &o.data_volumes[1];
        assert_eq!(second.volume.volume_type, "gp3", "the default type");
        assert!(second.volume.encrypted, "encrypted by default");
        assert!(second.delete_on_termination, "deleted by default");
        assert_eq!(o.max_total_price.as_deref(), Some("3.5"));
        assert!(o.has_placement());
    }

    #[test]
    fn a_template_without_options_maps_to_none() {
        let o = LaunchOptions::of_template(&template(serde_json::json!({})));
        assert_eq!(o, LaunchOptions::default());
        assert!(!o.has_placement());
    }

    #[test]
    fn the_digest_text_names_options_only_when_set() {
        let mut spec = LaunchSpec {
            batch_id: "b".into(),
            client_token: "t".into(),
            count: 1,
            api: LaunchApi::RunInstances,
            image_id: "ami-1".into(),
            root_device_name: None,
            instance_types: Vec::new(),
            subnet_ids: Vec::new(),
            availability_zone: None,
            capacity: LaunchCapacity::on_demand(),
            security_group_ids: Vec::new(),
            key_name: None,
            instance_profile: None,
            user_data: None,
            root_volume: None,
            metadata: MetadataSpec {
                http_tokens_required: true,
                hop_limit: None,
            },
            tags: BTreeMap::new(),
            options: LaunchOptions::default(),
        };
        let before = format!("{spec:?}");
        assert!(!before.contains("options"), "{before}");
        assert!(before.ends_with("tags: {} }"), "{before}");
        spec.options.ebs_optimized = Some(true);
        let after = format!("{spec:?}");
        assert!(after.contains("ebs_optimized: Some(true)"), "{after}");
    }
}

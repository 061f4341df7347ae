//! MachineTemplate: how to launch a machine. Requests refer to a template by name, so
//! one template serves any number of requests, and a change to it applies to every
//! machine launched afterwards (machines already running are left as they are).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{AMI_ID_PATTERN, OBJECT_NAME_PATTERN, SECURITY_GROUP_ID_PATTERN, SUBNET_ID_PATTERN};

/// Desired launch configuration of a MachineTemplate.
// clippy mistakes the repeated keys of separate printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "hostforge.io",
    version = "v1alpha1",
    kind = "MachineTemplate",
    namespaced,
    shortname = "mt",
    category = "hostforge",
    status = "MachineTemplateStatus",
    derive = "PartialEq",
    doc = "MachineTemplate says how hostforge launches cloud machines: the image, instance types, capacity type, network, user data and limits. MachineRequests in the same namespace refer to it by name.",
    printcolumn(
        name = "Provider",
        type_ = "string",
        json_path = ".spec.provider",
        description = "Provider instance from the operator configuration"
    ),
    printcolumn(
        name = "API",
        type_ = "string",
        json_path = ".spec.providerApi",
        description = "Cloud API used to launch"
    ),
    printcolumn(
        name = "Image",
        type_ = "string",
        json_path = ".status.resolvedImage.id",
        description = "Image id the source currently resolves to"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the template is usable"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[x_kube(
    validation = Rule::new("self.capacityType != 'mixed' || self.providerApi == 'EC2Fleet'")
        .message("capacityType mixed needs providerApi EC2Fleet: one RunInstances call launches a single capacity type")
        .field_path(".capacityType"),
    validation = Rule::new("has(self.onDemandPercent) == (self.capacityType == 'mixed')")
        .message("onDemandPercent is required with capacityType mixed and not allowed with on-demand or spot")
        .field_path(".onDemandPercent"),
    validation = Rule::new("!has(self.allocationStrategy) || (self.providerApi == 'EC2Fleet' && self.capacityType != 'on-demand')")
        .message("allocationStrategy chooses spot capacity pools: it needs providerApi EC2Fleet and capacityType spot or mixed")
        .field_path(".allocationStrategy"),
    validation = Rule::new("!has(self.maxPrice) || self.capacityType != 'on-demand'")
        .message("maxPrice is the most to pay for spot capacity: it needs capacityType spot or mixed")
        .field_path(".maxPrice"),
    validation = Rule::new("self.providerApi == 'EC2Fleet' || !has(self.instanceTypes) || self.instanceTypes.all(t, !has(t.weight))")
        .message("instanceTypes[].weight is only used with providerApi EC2Fleet")
        .field_path(".instanceTypes"),
    validation = Rule::new("!has(self.subnetSelector) || !has(self.subnetIds) || size(self.subnetIds) == 0")
        .message("subnetIds and subnetSelector: set one of them, not both")
        .field_path(".subnetSelector"),
    validation = Rule::new("!has(self.securityGroupSelector) || !has(self.securityGroupIds) || size(self.securityGroupIds) == 0")
        .message("securityGroupIds and securityGroupSelector: set one of them, not both")
        .field_path(".securityGroupSelector"),
    validation = Rule::new("!has(self.maxTotalPrice) || self.providerApi == 'EC2Fleet'")
        .message("maxTotalPrice caps the hourly price of one EC2 Fleet launch: it needs providerApi EC2Fleet")
        .field_path(".maxTotalPrice"),
    // spec.launchTemplate and spec.instanceRequirements (launch_base.rs):
    validation = Rule::new("(has(self.instanceTypes) && self.instanceTypes.size() > 0) != has(self.instanceRequirements)")
        .message("set exactly one of instanceTypes or instanceRequirements: EC2 does not take both in one launch")
        .field_path(".instanceRequirements"),
    validation = Rule::new("!has(self.instanceRequirements) || self.providerApi == 'EC2Fleet'")
        .message("instanceRequirements needs providerApi EC2Fleet: RunInstances launches one named instance type")
        .field_path(".instanceRequirements"),
    validation = Rule::new("!has(self.launchTemplate) || self.providerApi != 'EC2Fleet' || !(has(self.securityGroupIds) || has(self.userData) || has(self.rootVolume) || has(self.dataVolumes) || has(self.cpuOptions) || has(self.ebsOptimized) || has(self.associatePublicIpAddress))")
        .message("with launchTemplate and providerApi EC2Fleet, set securityGroupIds, userData, rootVolume, dataVolumes, cpuOptions, ebsOptimized and associatePublicIpAddress in the launch template: an EC2 Fleet override cannot carry them")
        .field_path(".launchTemplate"),
    // Capacity reservations and network interfaces (reservation.rs).
    validation = Rule::new("!has(self.capacityReservation) || !has(self.capacityReservation.capacityBlock) || !self.capacityReservation.capacityBlock || self.capacityType == 'on-demand'")
        .message("capacityReservation.capacityBlock launches into a Capacity Block: capacityType must be on-demand (not spot or mixed, no maxPrice)")
        .field_path(".capacityReservation.capacityBlock"),
    validation = Rule::new("!has(self.capacityReservation) || !has(self.capacityReservation.id) || self.providerApi != 'EC2Fleet' || (has(self.capacityReservation.capacityBlock) && self.capacityReservation.capacityBlock)")
        .message("capacityReservation.id with providerApi EC2Fleet: EC2 Fleet targets reservations through a resource group, set capacityReservation.resourceGroupArn (an id is for a Capacity Block or RunInstances)")
        .field_path(".capacityReservation.id"),
    validation = Rule::new("!has(self.networkInterfaces) || size(self.networkInterfaces) <= 1 || !has(self.associatePublicIpAddress) || !self.associatePublicIpAddress")
        .message("associatePublicIpAddress: true needs a single network interface: EC2 assigns a public IP only when one interface is launched")
        .field_path(".associatePublicIpAddress"),
)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateSpec {
    /// Name of the provider instance (a cloud account and region) from the operator's
    /// configuration. Empty: the operator's default provider.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub provider: Option<String>,

    /// Cloud API used to launch machines. RunInstances launches one instance type per
    /// call and falls back to the next type in instanceTypes on capacity errors;
    /// EC2Fleet (an instant fleet) lets EC2 pick among all instanceTypes and supports
    /// capacityType mixed, allocationStrategy and weights.
    #[serde(default)]
    pub provider_api: ProviderApi,

    /// The machine image. Set exactly one of id, ssmParameter or selector; the resolved
    /// image id is shown in status.resolvedImage.
    pub image: ImageSource,

    /// Instance types in order of preference (at most 20, no duplicates). The first type
    /// with capacity is used; with providerApi EC2Fleet the order is the on-demand
    /// priority and the spot candidates. Required unless instanceRequirements is set
    /// (exactly one of the two).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(min = 1, max = 20))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub instance_types: Vec<InstanceTypeOption>,

    /// Pricing model: on-demand, spot, or mixed (providerApi EC2Fleet only; the share of
    /// on-demand machines is onDemandPercent).
    #[serde(default)]
    pub capacity_type: CapacityType,

    /// Percentage of machines launched as on-demand when capacityType is mixed; the rest
    /// are spot. Required with mixed, not allowed otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub on_demand_percent: Option<i32>,

    /// How EC2 Fleet chooses spot capacity pools (providerApi EC2Fleet with capacityType
    /// spot or mixed). Default: price-capacity-optimized. On-demand capacity always follows
    /// the order of instanceTypes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation_strategy: Option<AllocationStrategy>,

    /// Highest price per instance-hour to pay for spot capacity, in US dollars, e.g.
    /// "0.25". Empty: at most the on-demand price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(\.[0-9]{1,8})?$"))]
    pub max_price: Option<String>,

    /// Subnets to launch into (subnet-…), in order of preference; each launch batch stays
    /// in one subnet. Empty: the default subnet of the account's default VPC.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = SUBNET_ID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub subnet_ids: Vec<String>,

    /// Security groups (sg-…) attached to every machine. Empty: the VPC's default group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(regex(pattern = SECURITY_GROUP_ID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub security_group_ids: Vec<String>,

    /// Subnets chosen by their tags instead of by id: every subnet of the provider's
    /// region that carries all of these tags. The template controller resolves it into
    /// status.selectedSubnets (ordered by zone, then id; launches prefer them in that
    /// order) and looks again every selectorRefreshInterval of the operator (5m by
    /// default), so a subnet tagged later is used without editing the template. Not
    /// with subnetIds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet_selector: Option<TagSelector>,

    /// Security groups chosen by their tags instead of by id: every group carrying all
    /// of these tags, attached to every machine. Resolved into
    /// status.selectedSecurityGroups like subnetSelector; the groups must all be in one
    /// VPC (the machines' subnets' VPC). Not with securityGroupIds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_group_selector: Option<TagSelector>,

    /// Name of an EC2 key pair installed for SSH access. Empty: no key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub key_name: Option<String>,

    /// IAM instance profile given to every machine: its name or its ARN.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 2048),
        regex(
            pattern = r"^(arn:aws[a-z-]*:iam::[0-9]{12}:instance-profile/[\w+=,.@/-]+|[\w+=,.@-]{1,128})$"
        )
    )]
    pub instance_profile: Option<String>,

    /// Where the machines' user data (e.g. a cloud-init or bootstrap script) comes from.
    /// Only a reference to a Secret is accepted, so no credentials are ever written into
    /// the template itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<UserDataSource>,

    /// Root volume of every machine. Empty: the image's own root volume settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_volume: Option<RootVolume>,

    /// Instance metadata service (IMDS) settings. Default: IMDSv2 tokens required.
    #[serde(default)]
    pub metadata_options: MetadataOptions,

    /// Extra tags put on every machine and volume (at most 40; keys up to 128 and values
    /// up to 256 characters). Keys starting with "hostforge.io/" or "aws:", in any mix of
    /// upper and lower case, are reserved, and a key must not be empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 40,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.size() <= 128)")
            .message("tags: keys are at most 128 characters"),
        validation = Rule::new("self.all(k, k.size() >= 1)")
            .message("tags: a key must not be empty"),
        validation = Rule::new(
            "self.all(k, !k.lowerAscii().startsWith('hostforge.io/') && !k.lowerAscii().startsWith('aws:'))"
        )
        .message("tags: keys starting with hostforge.io/ or aws: (in any case) are reserved"),
    )]
    pub tags: BTreeMap<String, String>,

    /// Most machines that all MachineRequests using this template may have at once.
    /// Launches beyond it wait. Empty: no limit other than the cloud account's quotas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_machines: Option<i32>,

    /// Where EC2 places the machines: a placement group (cluster, partition or
    /// spread), a partition of it, and the tenancy. Empty: EC2's default placement on
    /// shared hardware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Whether the machines get dedicated bandwidth to EBS (EBS-optimized). Empty:
    /// the instance type's default (current types are EBS-optimized already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ebs_optimized: Option<bool>,

    /// Whether each machine gets a public IPv4 address on its primary network
    /// interface, whatever its subnet's own setting says. Empty: the subnet's setting
    /// (true in a default subnet). When set, the subnet and security groups are sent on
    /// that network interface, as EC2 requires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub associate_public_ip_address: Option<bool>,

    /// CPU cores and threads per core to enable, e.g. threadsPerCore 1 to turn
    /// hyper-threading off for HPC jobs. Must be valid for every instance type listed
    /// (EC2 refuses the launch otherwise). Empty: all cores and threads of the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_options: Option<CpuOptions>,

    /// EBS volumes attached to each machine besides its root volume (at most 16, one
    /// per device name). Each is created at launch and tagged like the machine.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["deviceName".into()]),
        validation = Rule::new("self.all(v, self.exists_one(w, w.deviceName == v.deviceName))")
            .message("dataVolumes: each deviceName may appear only once"),
    )]
    pub data_volumes: Vec<DataVolume>,

    /// Most that one EC2 Fleet launch may cost per hour, in US dollars, e.g. "5.00"
    /// (CreateFleet MaxTotalPrice, for its on-demand and spot parts alike): the fleet
    /// launches fewer machines rather than exceed it. It caps each launch call, not
    /// all machines of the template together. providerApi EC2Fleet only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]{1,6}(\.[0-9]{1,8})?$"))]
    pub max_total_price: Option<String>,

    /// A user's own EC2 launch template as the base of every launch (id or name,
    /// and a version). hostforge's image, instance types, subnets, ownership tags
    /// and every field set here go on top of it; spec.image stays required (the
    /// operator resolves, polices and reports the image). The template must not
    /// tag anything with hostforge.io/ keys. With providerApi EC2Fleet, settings
    /// an EC2 Fleet override cannot carry (security groups, user data, volumes,
    /// CPU options, EBS optimization, public IP) must be in the launch template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<super::launch_base::LaunchTemplateRef>,

    /// Instance types chosen by EC2 from their attributes instead of
    /// instanceTypes (providerApi EC2Fleet only; exactly one of the two). The
    /// type EC2 picked shows in each machine's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_requirements: Option<super::launch_base::InstanceRequirements>,
    /// Which capacity reservations the machines use: a preference (Open,
    /// None, TargetedOnly), a reservation id or a resource group, and whether
    /// the reservation is a Capacity Block. Empty: EC2's default, open, so
    /// the account's open reservations with matching attributes are used;
    /// set preference None to keep these machines out of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation: Option<super::reservation::CapacityReservation>,

    /// Network interfaces of each machine, the first being the primary (card
    /// 0, device 0); set interfaceType efa or efa-only for an Elastic Fabric
    /// Adapter. The subnet, security groups and associatePublicIpAddress are
    /// then sent on the interfaces, as EC2 requires. Empty: one regular
    /// interface. At most 32 (one per network card of the largest types).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(
        validation = Rule::new("size(self) == 0 || !has(self[0].interfaceType) || self[0].interfaceType != 'efa-only'")
            .message("networkInterfaces[0] is the primary interface, which carries IP traffic: it cannot be efa-only"),
        validation = Rule::new("size(self) == 0 || ((!has(self[0].deviceIndex) || self[0].deviceIndex == 0) && (!has(self[0].networkCardIndex) || self[0].networkCardIndex == 0))")
            .message("networkInterfaces[0] is the primary interface: its deviceIndex and networkCardIndex must be 0"),
    )]
    pub network_interfaces: Vec<super::reservation::NetworkInterface>,
}

/// Cloud resources chosen by their tags (subnets, security groups).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct TagSelector {
    /// Tags a resource must carry, all of them (1 to 16; values up to 256 characters).
    /// A value of "*" matches the key with any value, e.g. {"kubernetes.io/role/internal-elb": "*"}.
    #[schemars(extend(
        "minProperties" = 1,
        "maxProperties" = 16,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.size() >= 1 && k.size() <= 128)")
            .message("tags: keys are 1-128 characters"),
    )]
    pub tags: BTreeMap<String, String>,
}

/// Placement of the machines: placement group, partition and tenancy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.partitionNumber) || has(self.groupName)")
        .message("placement.partitionNumber needs placement.groupName (a partition placement group)")
        .field_path(".partitionNumber"),
)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Name of an existing placement group in the provider's account and region. The
    /// template is not Ready while the group does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub group_name: Option<String>,

    /// Partition of a partition placement group to launch into (1 to 7). Empty: EC2
    /// spreads the machines over the partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 7))]
    pub partition_number: Option<i32>,

    /// Hardware tenancy: default (shared), dedicated (single-tenant hardware) or host
    /// (a Dedicated Host with auto-placement). Empty: default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenancy: Option<Tenancy>,
}

/// Hardware tenancy of a machine.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "lowercase")]
pub enum Tenancy {
    /// Shared hardware.
    Default,
    /// Hardware dedicated to the account.
    Dedicated,
    /// A Dedicated Host.
    Host,
}

/// CPU options of a machine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.coreCount) || has(self.threadsPerCore)")
        .message("cpuOptions: set coreCount, threadsPerCore or both"),
)]
#[serde(rename_all = "camelCase")]
pub struct CpuOptions {
    /// Number of CPU cores to enable. Empty: all cores of the type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 512))]
    pub core_count: Option<i32>,

    /// Threads per core: 1 turns simultaneous multithreading (hyper-threading) off,
    /// 2 keeps it on. Empty: the type's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2))]
    pub threads_per_core: Option<i32>,
}

/// One EBS volume attached at launch besides the root volume.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.throughput) || self.type == 'gp3'")
        .message("dataVolumes[].throughput is only supported by type gp3")
        .field_path(".throughput"),
    validation = Rule::new("!has(self.iops) || self.type in ['gp3', 'io1', 'io2']")
        .message("dataVolumes[].iops is only supported by types gp3, io1 and io2")
        .field_path(".iops"),
    validation = Rule::new("!(self.type in ['io1', 'io2']) || has(self.iops)")
        .message("dataVolumes[].iops is required for types io1 and io2")
        .field_path(".iops"),
    validation = Rule::new("!has(self.kmsKeyId) || self.encrypted")
        .message("dataVolumes[].kmsKeyId needs encrypted: true")
        .field_path(".kmsKeyId"),
)]
#[serde(rename_all = "camelCase")]
pub struct DataVolume {
    /// Device name the volume is attached as, e.g. /dev/sdf or /dev/xvdb (not the
    /// root device). On Nitro instance types the machine sees it as an NVMe device.
    #[schemars(
        length(min = 8, max = 12),
        regex(pattern = r"^/dev/(sd|xvd)[b-z][a-z]?$")
    )]
    pub device_name: String,

    /// Size in GiB (1 to 65536; the most each type allows is EC2's to enforce).
    #[serde(rename = "sizeGiB")]
    #[schemars(range(min = 1, max = 65536))]
    pub size_gib: i32,

    /// EBS volume type. Default gp3.
    #[serde(rename = "type", default)]
    pub volume_type: VolumeType,

    /// Provisioned IOPS (gp3, io1, io2; required for io1 and io2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 256000))]
    pub iops: Option<i32>,

    /// Provisioned throughput in MiB/s (gp3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 125, max = 2000))]
    pub throughput: Option<i32>,

    /// Whether the volume is encrypted. Default true.
    #[serde(default = "default_true")]
    pub encrypted: bool,

    /// KMS key (id, ARN or alias) that encrypts the volume. Empty: the account's default
    /// EBS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,

    /// Whether the volume is deleted when its machine terminates. Default true; false
    /// keeps the volume (and its cost) after the machine is gone.
    #[serde(default = "default_true")]
    pub delete_on_termination: bool,
}

/// The cloud API a template launches through.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum ProviderApi {
    /// EC2 RunInstances: one instance type per call.
    #[default]
    RunInstances,
    /// EC2 CreateFleet of type instant: EC2 picks among all instance types.
    #[serde(rename = "EC2Fleet")]
    Ec2Fleet,
}

/// Where the machine image comes from; exactly one source is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    cel,
    validation = Rule::new("(has(self.id) ? 1 : 0) + (has(self.ssmParameter) ? 1 : 0) + (has(self.selector) ? 1 : 0) == 1")
        .message("image: set exactly one of id, ssmParameter or selector"),
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// A fixed image id, e.g. ami-0123456789abcdef0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = AMI_ID_PATTERN))]
    pub id: Option<String>,

    /// Name of an SSM parameter holding an image id, e.g.
    /// /aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64. Read again
    /// when the operator's image cache expires, so new launches follow the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^[A-Za-z0-9_./:-]+$"))]
    pub ssm_parameter: Option<String>,

    /// Picks the newest image (by creation date) that matches all the given criteria.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<ImageSelector>,
}

/// Criteria of an image search; the newest match wins.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.name) || has(self.tags)")
        .message("image.selector: set name, tags or both, so that it matches specific images"),
)]
#[serde(rename_all = "camelCase")]
pub struct ImageSelector {
    /// Image name, "*" matching any characters and "?" any one, e.g. "al2023-ami-2023.*".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    pub name: Option<String>,

    /// Accounts whose images may match (required, so a look-alike public image from
    /// a stranger is never picked): "self", "amazon", "aws-marketplace" or a 12-digit
    /// account id.
    #[schemars(
        length(min = 1, max = 10),
        inner(regex(pattern = r"^(self|amazon|aws-marketplace|[0-9]{12})$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub owners: Vec<String>,

    /// CPU architecture the image must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<ImageArchitecture>,

    /// Tags the image must carry, all of them with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 10,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    pub tags: BTreeMap<String, String>,
}

/// CPU architecture of an image, as EC2 names it.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum ImageArchitecture {
    /// 64-bit x86.
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit ARM (Graviton).
    #[serde(rename = "arm64")]
    Arm64,
    /// 32-bit x86.
    #[serde(rename = "i386")]
    I386,
    /// 64-bit x86 Mac.
    #[serde(rename = "x86_64_mac")]
    X86_64Mac,
    /// 64-bit ARM Mac.
    #[serde(rename = "arm64_mac")]
    Arm64Mac,
}

/// One candidate instance type.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypeOption {
    /// EC2 instance type, e.g. c6i.xlarge.
    #[serde(rename = "type")]
    #[schemars(
        length(min = 3, max = 64),
        regex(pattern = r"^[a-z][a-z0-9-]*\.[a-z0-9-]+$")
    )]
    pub instance_type: String,

    /// Capacity units one machine of this type would count for (EC2 Fleet
    /// WeightedCapacity), providerApi EC2Fleet only. Accepted but not applied yet: a
    /// request counts machines, so launches are sent unweighted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: Option<i32>,
}

/// Pricing model of the machines a template launches.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "kebab-case")]
pub enum CapacityType {
    /// Regular on-demand instances.
    #[default]
    OnDemand,
    /// Spot instances, cheaper but reclaimable by EC2 at two minutes' notice.
    Spot,
    /// Both, in the proportion given by onDemandPercent.
    Mixed,
}

/// EC2 Fleet spot allocation strategies.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "kebab-case")]
pub enum AllocationStrategy {
    /// Pools with the most spare capacity among the cheapest (EC2's recommendation).
    PriceCapacityOptimized,
    /// Pools with the most spare capacity.
    CapacityOptimized,
    /// Pools with the most spare capacity, in the order of instanceTypes where possible.
    CapacityOptimizedPrioritized,
    /// The cheapest pools (most likely to be interrupted).
    LowestPrice,
    /// Spread over all pools.
    Diversified,
}

/// Where user data comes from. Only Secret references are allowed.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UserDataSource {
    /// A key of a Secret in the template's namespace; its value is passed to the machine
    /// as user data (at most 16 KiB once base64-encoded).
    pub secret_ref: SecretKeySelector,
}

/// A key in a Secret of the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,

    /// Key inside the Secret's data. Default: userData.
    #[serde(default = "default_user_data_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn default_user_data_key() -> String {
    "userData".into()
}

/// Root EBS volume of each machine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.throughput) || self.type == 'gp3'")
        .message("rootVolume.throughput is only supported by type gp3")
        .field_path(".throughput"),
    validation = Rule::new("!has(self.iops) || self.type in ['gp3', 'io1', 'io2']")
        .message("rootVolume.iops is only supported by types gp3, io1 and io2")
        .field_path(".iops"),
    validation = Rule::new("!(self.type in ['io1', 'io2']) || has(self.iops)")
        .message("rootVolume.iops is required for types io1 and io2")
        .field_path(".iops"),
    validation = Rule::new("!has(self.kmsKeyId) || self.encrypted")
        .message("rootVolume.kmsKeyId needs encrypted: true")
        .field_path(".kmsKeyId"),
)]
#[serde(rename_all = "camelCase")]
pub struct RootVolume {
    /// Size in GiB (1 to 16384); must be at least the image's snapshot size.
    #[serde(rename = "sizeGiB")]
    #[schemars(range(min = 1, max = 16384))]
    pub size_gib: i32,

    /// EBS volume type. Default gp3.
    #[serde(rename = "type", default)]
    pub volume_type: VolumeType,

    /// Provisioned IOPS (gp3, io1, io2; required for io1 and io2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 256000))]
    pub iops: Option<i32>,

    /// Provisioned throughput in MiB/s (gp3 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 125, max = 2000))]
    pub throughput: Option<i32>,

    /// Whether the volume is encrypted. Default true.
    #[serde(default = "default_true")]
    pub encrypted: bool,

    /// KMS key (id, ARN or alias) that encrypts the volume. Empty: the account's default
    /// EBS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    pub kms_key_id: Option<String>,
}

fn default_true() -> bool {
    true
}

/// EBS volume types.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "lowercase")]
pub enum VolumeType {
    /// General purpose SSD, current generation.
    #[default]
    Gp3,
    /// General purpose SSD, previous generation.
    Gp2,
    /// Provisioned IOPS SSD.
    Io1,
    /// Provisioned IOPS SSD, current generation.
    Io2,
    /// Throughput optimized HDD.
    St1,
    /// Cold HDD.
    Sc1,
    /// Magnetic, previous generation.
    Standard,
}

/// Instance metadata service settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MetadataOptions {
    /// required (IMDSv2 only, the default) or optional (IMDSv1 allowed too).
    #[serde(default)]
    pub http_tokens: HttpTokens,

    /// How many network hops a metadata response may travel (1 to 64); 2 lets
    /// containers on the machine reach IMDS. Empty: EC2's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 64))]
    pub hop_limit: Option<i32>,
}

/// Whether IMDSv2 session tokens are required.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "lowercase")]
pub enum HttpTokens {
    /// Only IMDSv2 (session tokens) is served.
    #[default]
    Required,
    /// IMDSv1 is served as well.
    Optional,
}

/// Observed state of a MachineTemplate, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineTemplateStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Current state: Ready is True when the image resolves and the provider exists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// The image new machines are launched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolved_image: Option<ResolvedImage>,

    /// Live machines of all requests that use this template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machines_in_use: Option<i32>,

    /// Size of one machine of the first instance type, as the provider describes it
    /// (DescribeInstanceTypes), so that schedulers such as HostFactory can advertise
    /// the template's CPUs and memory without a lookup table of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type_info: Option<InstanceTypeInfo>,

    /// The last dry run of the template's launch (see the `LaunchValidated`
    /// condition): which image it was made with and when, so the next one is
    /// made when the image changes, or after `launchValidationRetry` while
    /// it did not pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_validation: Option<LaunchValidation>,

    /// The subnets spec.subnetSelector selects, ordered by zone then id (the order
    /// launches prefer them in). Empty without a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected_subnets: Vec<SelectedSubnet>,

    /// The security groups spec.securityGroupSelector selects, by id. Empty without
    /// a selector.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub selected_security_groups: Vec<SelectedSecurityGroup>,

    /// spec.launchTemplate as last resolved: its id, name and the version number
    /// launches name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<super::launch_base::ResolvedLaunchTemplate>,
}

/// A subnet a template's subnetSelector chose.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SelectedSubnet {
    /// Subnet id (subnet-…).
    pub id: String,
    /// Its Availability Zone, e.g. us-east-1a.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
}

/// A security group a template's securityGroupSelector chose.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SelectedSecurityGroup {
    /// Group id (sg-…).
    pub id: String,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its VPC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vpc_id: Option<String>,
}

/// One dry run of a template's launch.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchValidation {
    /// The image the dry run launched.
    pub image_id: String,
    /// When it was made.
    pub checked_at: Time,
}

/// The hardware of one instance type.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypeInfo {
    /// The instance type described, the first of spec.instanceTypes.
    pub instance_type: String,

    /// Virtual CPUs (hardware threads).
    pub vcpus: i32,

    /// Physical cores.
    pub cores: i32,

    /// Memory in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: i64,

    /// CPU architecture as the cloud names it, e.g. x86_64 or arm64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
}

/// The outcome of resolving a template's image source.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedImage {
    /// The image id, e.g. ami-0123456789abcdef0.
    pub id: String,

    /// The image's name, when the cloud reports one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Which field of spec.image produced it: id, ssmParameter or selector.
    pub source: ImageSourceKind,

    /// When the image was created, as the cloud reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date: Option<String>,

    /// The account id that owns the image, as the cloud reports it. The
    /// operator's tenant policy (imageOwners) is checked against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,

    /// The owner alias the cloud reports for images it publishes itself
    /// (amazon, aws-marketplace), also checked against the tenant policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner_alias: Option<String>,

    /// When the operator resolved it.
    pub resolved_at: Time,
}

/// Which kind of image source was resolved.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "camelCase")]
pub enum ImageSourceKind {
    /// spec.image.id.
    Id,
    /// spec.image.ssmParameter.
    SsmParameter,
    /// spec.image.selector.
    Selector,
}

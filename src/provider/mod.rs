//! The provider port: what the controllers need from a cloud, in plain types.
//!
//! Controllers translate CRD types into these and back, so an adapter knows
//! nothing of Kubernetes and a second cloud is one more adapter module plus one
//! match arm in [`registry`]. The AWS adapter lives in [`aws`].

pub mod aws;
pub mod registry;

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;

/// A cloud account in one region that can find images and manage machines.
///
/// Methods that take id lists make no call for an empty list, and batch and
/// paginate internally, so callers can merge work across requests freely.
#[async_trait]
pub trait MachineProvider: Send + Sync {
    /// The provider instance's name from the operator config (metrics, messages,
    /// cache keys).
    fn name(&self) -> &str;

    /// Resolves an image source to one concrete, existing image.
    async fn lookup_image(&self, source: &ImageSource) -> Result<ResolvedImage, ProviderError>;

    /// Which of these subnet ids do not exist (or are not visible) in this account
    /// and region, in input order.
    async fn missing_subnets(&self, ids: &[String]) -> Result<Vec<String>, ProviderError>;

    /// Which of these security group ids do not exist in this account and region,
    /// in input order.
    async fn missing_security_groups(&self, ids: &[String]) -> Result<Vec<String>, ProviderError>;

    /// Which of these instance types the region does not offer, in input order.
    async fn unknown_instance_types(&self, types: &[String]) -> Result<Vec<String>, ProviderError>;

    /// The size of one machine of `instance_type` (vCPUs, cores, memory,
    /// architecture), so schedulers can be told what a template offers without a
    /// lookup table of their own. `None` when the region does not offer the type.
    /// The facts of a type never change, so adapters may cache them for good.
    async fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> Result<Option<InstanceTypeInfo>, ProviderError>;

    /// The machines with these ids that the cloud currently reports, in any order.
    /// An id missing from the answer is unknown right now, which for a fresh
    /// launch means "not visible yet", not "gone".
    async fn describe_machines(&self, ids: &[String]) -> Result<Vec<Machine>, ProviderError>;

    /// Every machine carrying all of these tags (key, value), in any state,
    /// including recently terminated ones.
    async fn describe_owned(
        &self,
        tags: &[(String, String)],
    ) -> Result<Vec<Machine>, ProviderError>;

    /// The machines among `ids` that the cloud has announced it will take back
    /// (spot interruption notices), each with when it said so: schedulers get
    /// the rest of the warning to drain them. Machines without a notice are
    /// simply absent.
    async fn interruption_notices(
        &self,
        ids: &[String],
    ) -> Result<Vec<InterruptionNotice>, ProviderError>;

    /// Every machine carrying all of `tags` (in any state, or with `down_only`
    /// only those stopping, stopped, shutting down or terminated: what changes
    /// among held machines, usually a handful whatever the fleet), handed to
    /// `page` one page of the listing at a time. The sweep lists 10,000
    /// machines this way while holding one page of them, not all of them.
    /// An error ends the listing; the pages handed over until then stay valid.
    async fn list_owned(
        &self,
        tags: &[(String, String)],
        down_only: bool,
        page: &mut (dyn FnMut(Vec<Machine>) + Send),
    ) -> Result<(), ProviderError>;

    /// Every machine carrying all of `tags` and, for the tag `key`, any of
    /// `values`, in any state: the machines of many launch batches in one
    /// call (per 200 values) instead of one call each. No call for no values.
    async fn describe_owned_any(
        &self,
        tags: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<Machine>, ProviderError>;

    /// Asks the cloud to terminate these machines. Success means the request was
    /// accepted; the machines go through `shutting-down` first.
    async fn terminate(&self, ids: &[String]) -> Result<(), ProviderError>;

    /// Launches one batch: exactly one launch call (RunInstances or CreateFleet)
    /// carrying `spec.client_token`, so re-sending an identical spec after a crash
    /// returns the first launch's machines instead of new ones (on real EC2).
    ///
    /// `Ok` holds at least one machine, possibly fewer than `spec.count` when the
    /// cloud had less capacity; the caller plans another batch for the rest. `Err`
    /// means nothing was launched; a [`ProviderError::Capacity`] tells the caller to
    /// try another instance type, subnet or capacity type as a new batch.
    async fn launch(&self, spec: &LaunchSpec) -> Result<Vec<Machine>, ProviderError>;
}

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
}

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
}

impl LaunchCapacity {
    /// All on-demand.
    pub fn on_demand() -> LaunchCapacity {
        LaunchCapacity {
            on_demand_percent: 100,
            max_price: None,
            allocation_strategy: None,
        }
    }

    /// How many of `count` are on-demand (rounded up, so 50 % of 3 is 2).
    pub fn on_demand_count(&self, count: i32) -> i32 {
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

/// Where a template's image comes from; also the image cache key, hence `Hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageSource {
    /// A fixed image id, verified to exist.
    Id(String),
    /// A parameter whose value is an image id (e.g. AWS's public "latest AL2023"
    /// parameters), so launches follow the publisher's updates.
    SsmParameter(String),
    /// The newest available image matching all of the criteria.
    Selector {
        /// Name pattern; `*` matches any characters, `?` one. Empty or `*`: any name.
        name: String,
        /// Accounts whose images may match: `self`, `amazon`, `aws-marketplace`
        /// or account ids. Required, so a look-alike public image is never picked.
        owners: Vec<String>,
        /// CPU architecture as the cloud names it (`x86_64`, `arm64`, …).
        architecture: Option<String>,
        /// Tags the image must carry with exactly these values.
        tags: BTreeMap<String, String>,
    },
}

impl ImageSource {
    /// The bounded name of the source kind, as written into template status.
    pub fn kind(&self) -> &'static str {
        match self {
            ImageSource::Id(_) => "id",
            ImageSource::SsmParameter(_) => "ssmParameter",
            ImageSource::Selector { .. } => "selector",
        }
    }
}

impl fmt::Display for ImageSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageSource::Id(id) => write!(f, "image id {id}"),
            ImageSource::SsmParameter(p) => write!(f, "SSM parameter {p}"),
            ImageSource::Selector {
                name,
                owners,
                architecture,
                tags,
            } => {
                write!(
                    f,
                    "image selector name={name:?} owners=[{}]",
                    owners.join(",")
                )?;
                if let Some(arch) = architecture {
                    write!(f, " architecture={arch}")?;
                }
                for (k, v) in tags {
                    write!(f, " tag:{k}={v}")?;
                }
                Ok(())
            }
        }
    }
}

/// An image a source resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image id to launch with.
    pub id: String,
    /// The image's name, shown to users so they can tell what they run.
    pub name: Option<String>,
    /// When the image was created (RFC 3339, as the cloud reports it).
    pub creation_date: Option<String>,
    /// Which kind of source produced it: `id`, `ssmParameter` or `selector`.
    pub source: String,
    /// The image's root device name (e.g. `/dev/xvda`), needed to size the root
    /// volume at launch.
    pub root_device_name: Option<String>,
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

/// What the cloud said when a call failed: enough to act on and to show a
/// user, never credentials or raw request data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorDetail {
    /// The API operation, e.g. `DescribeImages`.
    pub operation: &'static str,
    /// The cloud's error code, e.g. `InvalidAMIID.NotFound`, or one of ours for
    /// conditions found without an error (e.g. `NoMatchingImage`).
    pub code: String,
    /// The cloud's (or our) message.
    pub message: String,
}

impl fmt::Display for ErrorDetail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.operation, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// Why a provider call failed, grouped by what the caller should do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The thing asked for does not exist (or is not visible yet).
    #[error("not found: {0}")]
    NotFound(ErrorDetail),
    /// The operator's credentials may not do this.
    #[error("access denied: {0}")]
    AccessDenied(ErrorDetail),
    /// The cloud's rate limit was hit; retry later with backoff.
    #[error("throttled: {0}")]
    Throttled(ErrorDetail),
    /// The request itself is wrong (a bad spec); retrying will not help.
    #[error("invalid parameter: {0}")]
    InvalidParameter(ErrorDetail),
    /// No capacity or quota for this type/zone/capacity type; try another.
    #[error("insufficient capacity: {0}")]
    Capacity(ErrorDetail),
    /// A 5xx, timeout or connection failure; retry with backoff.
    #[error("transient failure: {0}")]
    Transient(ErrorDetail),
    /// Anything else.
    #[error("unexpected error: {0}")]
    Unknown(ErrorDetail),
}

impl ProviderError {
    /// A bounded label for metrics, Event and condition reasons.
    pub fn category(&self) -> &'static str {
        match self {
            ProviderError::NotFound(_) => "NotFound",
            ProviderError::AccessDenied(_) => "AccessDenied",
            ProviderError::Throttled(_) => "Throttled",
            ProviderError::InvalidParameter(_) => "InvalidParameter",
            ProviderError::Capacity(_) => "Capacity",
            ProviderError::Transient(_) => "Transient",
            ProviderError::Unknown(_) => "Unknown",
        }
    }

    /// Whether the same call may succeed if simply tried again later.
    /// Capacity errors are not: the answer is a different type or zone.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::Throttled(_) | ProviderError::Transient(_)
        )
    }

    /// The details, whatever the category.
    pub fn detail(&self) -> &ErrorDetail {
        match self {
            ProviderError::NotFound(d)
            | ProviderError::AccessDenied(d)
            | ProviderError::Throttled(d)
            | ProviderError::InvalidParameter(d)
            | ProviderError::Capacity(d)
            | ProviderError::Transient(d)
            | ProviderError::Unknown(d) => d,
        }
    }

    /// The cloud's error code (e.g. `InvalidAMIID.NotFound`).
    pub fn code(&self) -> &str {
        &self.detail().code
    }
}

/// Told about every cloud API call, so metrics can count calls by operation and
/// outcome without the adapters knowing about the metrics library.
pub trait CallObserver: Send + Sync {
    /// One call (one page of a paginated call) finished. `outcome` is `"ok"` or a
    /// [`ProviderError::category`]; `seconds` includes the SDK's own retries.
    fn aws_call(
        &self,
        provider: &str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    );
}

/// An observer that ignores everything, for tools and tests that need no metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl CallObserver for NoopObserver {
    fn aws_call(
        &self,
        _provider: &str,
        _operation: &'static str,
        _outcome: &'static str,
        _seconds: f64,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detail() -> ErrorDetail {
        ErrorDetail {
            operation: "DescribeImages",
            code: "InvalidAMIID.NotFound".into(),
            message: "The image id '[ami-1]' does not exist".into(),
        }
    }

    #[test]
    fn categories_are_bounded_and_retry_follows_them() {
        let all = [
            ProviderError::NotFound(detail()),
            ProviderError::AccessDenied(detail()),
            ProviderError::Throttled(detail()),
            ProviderError::InvalidParameter(detail()),
            ProviderError::Capacity(detail()),
            ProviderError::Transient(detail()),
            ProviderError::Unknown(detail()),
        ];
        let cats: Vec<_> = all.iter().map(ProviderError::category).collect();
        assert_eq!(
            cats,
            [
                "NotFound",
                "AccessDenied",
                "Throttled",
                "InvalidParameter",
                "Capacity",
                "Transient",
                "Unknown"
            ]
        );
        let retryable: Vec<_> = all.iter().map(ProviderError::is_retryable).collect();
        assert_eq!(retryable, [false, false, true, false, false, true, false]);
    }

    #[test]
    fn messages_carry_operation_code_and_text() {
        let e = ProviderError::NotFound(detail());
        assert_eq!(
            e.to_string(),
            "not found: DescribeImages failed: InvalidAMIID.NotFound: The image id '[ami-1]' does not exist"
        );
        assert_eq!(e.code(), "InvalidAMIID.NotFound");
    }

    #[test]
    fn sources_know_their_kind_and_describe_themselves() {
        let sel = ImageSource::Selector {
            name: "al2023-*".into(),
            owners: vec!["amazon".into(), "self".into()],
            architecture: Some("arm64".into()),
            tags: [("team".to_string(), "hpc".to_string())].into(),
        };
        assert_eq!(sel.kind(), "selector");
        assert_eq!(
            sel.to_string(),
            "image selector name=\"al2023-*\" owners=[amazon,self] architecture=arm64 tag:team=hpc"
        );
        assert_eq!(ImageSource::Id("ami-1".into()).kind(), "id");
        assert_eq!(
            ImageSource::SsmParameter("/p".into()).kind(),
            "ssmParameter"
        );
    }
}

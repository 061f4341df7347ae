//! The operator's own configuration: which cloud accounts it may use and how.
//!
//! Read once at start from a YAML file (a mounted ConfigMap in a cluster) and
//! validated completely before anything else runs, so a typo stops the operator
//! with a message naming the key instead of surfacing later as a failed launch.
//! Templates choose a provider instance by its `name`; nothing else in the
//! operator knows about accounts, regions or endpoints.

mod checks;
pub mod duration;
pub mod policy;
mod queue;
pub mod rate_limits;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use policy::TenantPolicy;
use rate_limits::RateLimitConfig;
use raw::RawConfig;

/// Image look-ups are cached this long unless `imageCacheTtl` says otherwise:
/// short enough that a new SSM parameter value reaches launches within minutes,
/// long enough that many templates cost one call.
pub const DEFAULT_IMAGE_CACHE_TTL: Duration = Duration::from_secs(5 * 60);

/// Instances younger than this are never garbage-collected unless
/// `gcGracePeriod` says otherwise: EC2 reads are eventually consistent, so a
/// just-launched instance may not yet be visible where its owner is recorded.
pub const DEFAULT_GC_GRACE_PERIOD: Duration = Duration::from_secs(2 * 60);

/// The most orphans one sweep terminates, as a share (percent) of this
/// cluster's machines it listed, unless `orphanCollection.maxShare` says
/// otherwise: more than that at once is more likely a mistake (a second
/// cluster, a restored backup, a wrong identity) than a crash's leftovers.
pub const DEFAULT_ORPHAN_MAX_SHARE: u32 = 20;

/// Orphans one sweep may always terminate whatever the share, unless
/// `orphanCollection.minimum` says otherwise: a small cluster's leftovers
/// after a crash are a few machines.
pub const DEFAULT_ORPHAN_MINIMUM: u32 = 5;

/// How often machines that are changing (launching, terminating) are described,
/// in one batched call for all requests, unless `pollInterval` says otherwise.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How often every machine the cluster owns is listed (one paginated call per
/// provider) to find lost machines, adopt unrecorded ones and collect orphans,
/// unless `sweepInterval` says otherwise.
pub const DEFAULT_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How often a sweep lists every machine the cluster owns (adoption, vanished
/// machines, orphans), unless `fullSweepInterval` says otherwise; the sweeps in
/// between list only machines that are stopping, stopped, shutting down or
/// terminated. At 10,000 machines a full listing is forty 250-instance pages,
/// and parsing them was most of the operator's CPU while nothing changed.
pub const DEFAULT_FULL_SWEEP_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// How long an instance type in a subnet is avoided after the cloud reported no
/// capacity for it, unless `capacityCooldown` says otherwise.
pub const DEFAULT_CAPACITY_COOLDOWN: Duration = Duration::from_secs(3 * 60);

/// How often the spot interruption notices of held spot machines are checked,
/// unless `spotNoticeInterval` says otherwise (`0s` turns the check off). EC2
/// warns two minutes ahead; checking every 10 s leaves a scheduler at least
/// 110 s to drain, for one call per interval while spot machines are held.
pub const DEFAULT_SPOT_NOTICE_INTERVAL: Duration = Duration::from_secs(10);

/// How soon a template whose launch dry run EC2 refused is checked again,
/// unless `launchValidationRetry` says otherwise: a fixed permission shows
/// within this long, for one dry run per template per interval while refused.
pub const DEFAULT_LAUNCH_VALIDATION_RETRY: Duration = Duration::from_secs(5 * 60);

/// How long the subnets and security groups a template selects by tags are
/// kept before they are listed again, unless `selectorRefreshInterval` says
/// otherwise: a subnet tagged later is used within this long, for one listing
/// per selector per interval.
pub const DEFAULT_SELECTOR_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// How often the cloud's status checks of running machines are read, unless
/// `statusCheckInterval` says otherwise (`0s` or `off` turns them off). EC2
/// runs its checks every minute and an impaired machine stays impaired for
/// minutes; one paginated listing per provider every 5 minutes finds it at
/// the cost of a handful of calls an hour, whatever the fleet.
pub const DEFAULT_STATUS_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Requests in flight to the apiserver unless `maxKubeRequestsInFlight` says
/// otherwise: well above what the controllers need to keep the apiserver busy
/// (a status write takes a few milliseconds there), far below a connection
/// per request. Defined here, with the other defaults, so the config stays a
/// leaf; it must equal `crate::kube_client::DEFAULT_MAX_IN_FLIGHT` (a test
/// checks it).
pub const DEFAULT_MAX_KUBE_REQUESTS_IN_FLIGHT: usize = 32;

/// Request reconciles running at once unless `maxConcurrentReconciles` says
/// otherwise. kube's default is no bound: when the machines of 1,000 requests
/// came up together (10,000 machines in the bench's steady fill), 1,000
/// reconciles held a copy of their status and a serialized status patch
/// each while they waited for one of the apiserver slots above, and that was
/// the operator's peak memory. 128 keeps four times those slots busy and lets
/// two full coalesced launch calls (50 requests each) gather while a third
/// is out.
pub const DEFAULT_MAX_CONCURRENT_RECONCILES: u16 = 128;

/// The validated operator configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Written into the ownership tags of every instance, so several operators
    /// (clusters) can share one account without touching each other's machines.
    pub cluster_name: String,
    /// `clusterId`: this cluster's identity, when set by hand; otherwise the
    /// operator derives it from the cluster itself (the uid of the
    /// `kube-system` namespace). Two clusters with one `clusterName` never
    /// share an identity, so neither touches the other's machines.
    pub cluster_id: Option<String>,
    /// What the sweep does with orphans (`orphanCollection`).
    pub orphans: OrphanCollection,
    /// Named provider instances, in the order of the file; names are unique.
    pub providers: Vec<ProviderConfig>,
    /// The provider used by templates that name none.
    pub default_provider: String,
    /// The tenant policies (`providers[].policy`) by provider name; a
    /// provider without one admits every namespace and value (the
    /// single-tenant default).
    pub tenant_policies: BTreeMap<String, TenantPolicy>,
    /// The interruption queues (`providers[].interruptionQueue`) by provider
    /// name; a provider without one learns of interruptions by polling.
    pub interruption_queues: BTreeMap<String, QueueRef>,
    /// How long a resolved image stays valid before it is looked up again.
    pub image_cache_ttl: Duration,
    /// Minimum age of an instance before garbage collection may terminate it.
    pub gc_grace_period: Duration,
    /// Interval of the batched describe of changing machines.
    pub poll_interval: Duration,
    /// Interval of the sweep for machines that went down.
    pub sweep_interval: Duration,
    /// Interval of the sweep over every owned machine.
    pub full_sweep_interval: Duration,
    /// How long an offering without capacity is avoided.
    pub capacity_cooldown: Duration,
    /// Interval of the check for spot interruption notices; zero turns it off.
    pub spot_notice_interval: Duration,
    /// Interval of the listing of the cloud's status checks
    /// (`statusCheckInterval`); zero turns it off.
    pub status_check_interval: Duration,
    /// Most requests to the apiserver awaiting their answer at once (each is
    /// an HTTP/1.1 connection of its own).
    pub max_kube_requests_in_flight: usize,
    /// Most request reconciles running at once (`maxConcurrentReconciles`);
    /// the others wait in the controller's queue, holding nothing.
    pub max_concurrent_reconciles: u16,
    /// `coalesceLaunches` (default on): launches of requests of one template
    /// that wait for EC2's call bucket at the same time go out as one call
    /// (a LaunchGroup records it first), so a burst is bound by EC2's
    /// instance bucket rather than its call bucket.
    pub coalesce_launches: bool,
    /// `validateLaunches` (default on): the template controller dry-runs a
    /// template's launch when its spec or image changes, and a template EC2
    /// would refuse is not Ready (`LaunchValidated=False`).
    pub validate_launches: bool,
    /// How soon a dry run that did not pass is made again: an IAM or tag
    /// policy fix changes nothing the operator watches.
    pub launch_validation_retry: Duration,
    /// How long a tag selection of subnets or security groups is kept before
    /// it is listed again (`selectorRefreshInterval`).
    pub selector_refresh_interval: Duration,
}

/// How the sweep collects orphans (machines of this cluster whose request no
/// longer exists): the brake, and a dry run that only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanCollection {
    /// Report orphans (log, metric) without terminating any.
    pub dry_run: bool,
    /// Percent of this cluster's listed machines one sweep may terminate as
    /// orphans; above it (and above `minimum`) the sweep terminates none and
    /// says so loudly.
    pub max_share: u32,
    /// Orphans one sweep may always terminate, whatever the share.
    pub minimum: u32,
}

impl Default for OrphanCollection {
    fn default() -> Self {
        OrphanCollection {
            dry_run: false,
            max_share: DEFAULT_ORPHAN_MAX_SHARE,
            minimum: DEFAULT_ORPHAN_MINIMUM,
        }
    }
}

impl OrphanCollection {
    /// The most orphans one sweep may terminate when it listed `owned`
    /// machines of this cluster (orphans included).
    pub fn allowed(&self, owned: usize) -> usize {
        let share = owned.saturating_mul(self.max_share as usize) / 100;
        share.max(self.minimum as usize)
    }
}

/// One named cloud account and region the operator may launch into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// What templates put in `spec.provider`.
    pub name: String,
    /// Which adapter serves this instance.
    pub kind: ProviderKind,
    /// Cloud region, e.g. `us-east-1`.
    pub region: String,
    /// Endpoint override for simulators (moto) or VPC endpoints.
    pub endpoint_url: Option<String>,
    /// Role to assume on top of the operator's own credentials, for launching into
    /// another account.
    pub assume_role_arn: Option<String>,
    /// Client-side API rate limits (`rateLimits`; EC2's documented token
    /// buckets unless scaled, overridden or disabled), so the operator waits
    /// for tokens instead of being throttled.
    pub rate_limits: RateLimitConfig,
}

/// Where a provider's interruption queue is (`interruptionQueue`): the
/// queue's URL, or its name in the provider's account and region (looked up
/// once at start).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRef {
    /// `https://sqs.<region>.amazonaws.com/<account>/<name>` or an endpoint's.
    Url(String),
    /// The queue's name.
    Name(String),
}

impl fmt::Display for QueueRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueRef::Url(s) | QueueRef::Name(s) => f.write_str(s),
        }
    }
}

impl OperatorConfig {
    /// The interruption queue of the provider called `name`, if it has one.
    pub fn interruption_queue(&self, name: &str) -> Option<&QueueRef> {
        self.interruption_queues.get(name)
    }
}

/// The clouds hostforge has an adapter for: adding one is a variant here, an
/// adapter module and one match arm in the provider registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum ProviderKind {
    /// Amazon EC2 (and SSM for image parameters).
    #[serde(rename = "aws")]
    Aws,
}

impl ProviderKind {
    /// The name used in the config file, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Aws => "aws",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the configuration cannot be used. Every message names the file or key
/// at fault, because it is printed as the operator's last words at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the filesystem said.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, has an unknown key or a value of the wrong type;
    /// serde's message starts with the key path (e.g. `providers[0]: unknown field`).
    #[error("{0}")]
    Parse(#[from] serde_yaml::Error),
    /// The YAML parsed but some values are not acceptable.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<Problem>),
}

/// One invalid value: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path in the file, e.g. `providers[1].region`.
    pub key: String,
    /// What is wrong, for a human.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl OperatorConfig {
    /// Reads and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<OperatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        OperatorConfig::from_yaml(&text)
    }

    /// Parses and validates a config document.
    pub fn from_yaml(s: &str) -> Result<OperatorConfig, ConfigError> {
        let raw: RawConfig = serde_yaml::from_str(s)?;
        raw.validate()
    }

    /// The provider instance called `name`, if configured.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// The tenant policy of the provider called `name`; None: it admits
    /// everything (no policy configured).
    pub fn tenant_policy(&self, name: &str) -> Option<&TenantPolicy> {
        self.tenant_policies.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
clusterName: prod-east
providers:
  - name: aws-default
    type: aws
    region: us-east-1
    endpointUrl: null
    assumeRoleArn: null
  - name: aws-west
    type: aws
    region: us-west-2
    endpointUrl: http://127.0.0.1:5000
    assumeRoleArn: arn:aws:iam::123456789012:role/hostforge
defaultProvider: aws-west
imageCacheTtl: 30s
gcGracePeriod: 1h30m
"#;

    fn err(yaml: &str) -> String {
        OperatorConfig::from_yaml(yaml)
            .expect_err("config must be rejected")
            .to_string()
    }

    #[test]
    fn full_config_parses() {
        let c = OperatorConfig::from_yaml(GOOD).expect("valid config");
        assert_eq!(c.cluster_name, "prod-east");
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].kind, ProviderKind::Aws);
        assert_eq!(c.providers[0].endpoint_url, None);
        assert_eq!(
            c.providers[1].endpoint_url.as_deref(),
            Some("http://127.0.0.1:5000")
        );
        assert_eq!(
            c.providers[1].assume_role_arn.as_deref(),
            Some("arn:aws:iam::123456789012:role/hostforge")
        );
        assert_eq!(c.default_provider, "aws-west");
        assert_eq!(c.image_cache_ttl, Duration::from_secs(30));
        assert_eq!(c.gc_grace_period, Duration::from_secs(5400));
        assert_eq!(
            c.provider("aws-west").map(|p| p.region.as_str()),
            Some("us-west-2")
        );
        assert!(c.provider("nope").is_none());
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = OperatorConfig::from_yaml(
            "clusterName: c1\nproviders:\n- {name: a, type: aws, region: eu-west-1}\n",
        )
        .expect("valid config");
        assert_eq!(c.default_provider, "a");
        assert_eq!(c.image_cache_ttl, DEFAULT_IMAGE_CACHE_TTL);
        assert_eq!(c.gc_grace_period, DEFAULT_GC_GRACE_PERIOD);
        assert_eq!(c.sweep_interval, DEFAULT_SWEEP_INTERVAL);
        assert_eq!(c.full_sweep_interval, DEFAULT_FULL_SWEEP_INTERVAL);
        assert_eq!(
            c.max_kube_requests_in_flight,
            crate::kube_client::DEFAULT_MAX_IN_FLIGHT
        );
    }

    #[test]
    fn max_concurrent_reconciles_is_read_and_checked() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        let c = OperatorConfig::from_yaml(base).expect("valid");
        assert_eq!(
            c.max_concurrent_reconciles,
            DEFAULT_MAX_CONCURRENT_RECONCILES
        );
        let c = OperatorConfig::from_yaml(&format!("{base}maxConcurrentReconciles: 8\n"))
            .expect("valid");
        assert_eq!(c.max_concurrent_reconciles, 8);
        for n in ["0", "5000", "-1"] {
            assert_eq!(
                err(&format!("{base}maxConcurrentReconciles: {n}\n")),
                format!("maxConcurrentReconciles: {n} is out of range (1 to 4096)")
            );
        }
    }

    #[test]
    fn max_kube_requests_in_flight_is_read_and_checked() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        let c = OperatorConfig::from_yaml(&format!("{base}maxKubeRequestsInFlight: 4\n"))
            .expect("valid");
        assert_eq!(c.max_kube_requests_in_flight, 4);
        assert_eq!(
            err(&format!("{base}maxKubeRequestsInFlight: 0\n")),
            "maxKubeRequestsInFlight: 0 is out of range (1 to 1024)"
        );
        assert_eq!(
            err(&format!("{base}maxKubeRequestsInFlight: 5000\n")),
            "maxKubeRequestsInFlight: 5000 is out of range (1 to 1024)"
        );
        assert!(err(&format!("{base}maxKubeRequestsInFlight: many\n"))
            .contains("maxKubeRequestsInFlight"));
    }

    #[test]
    fn full_sweep_interval_is_read_and_checked() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        let c =
            OperatorConfig::from_yaml(&format!("{base}fullSweepInterval: 2m\n")).expect("valid");
        assert_eq!(c.full_sweep_interval, Duration::from_secs(120));
        assert_eq!(
            err(&format!("{base}fullSweepInterval: 0s\n")),
            r#"fullSweepInterval: "0s" is too short (at least 1s)"#
        );
    }

    #[test]
    fn rate_limits_default_to_ec2s_and_can_be_scaled_or_disabled() {
        use crate::config::rate_limits::{BucketShape, Class};
        let c = OperatorConfig::from_yaml(GOOD).expect("valid config");
        assert_eq!(c.providers[0].rate_limits, RateLimitConfig::default());
        let c = OperatorConfig::from_yaml(
            "clusterName: c1\nproviders:\n- name: a\n  type: aws\n  region: eu-west-1\n  \
             rateLimits: {scale: 0.5, runInstances: {burst: 10, rate: 4}}\n\
             - name: b\n  type: aws\n  region: eu-west-1\n  rateLimits: {enabled: false}\n",
        )
        .expect("valid config");
        let a = &c.providers[0].rate_limits;
        assert_eq!(
            a.bucket(Class::RunInstances),
            BucketShape {
                burst: 5.0,
                rate: 2.0
            }
        );
        assert_eq!(
            a.bucket(Class::Describe),
            BucketShape {
                burst: 50.0,
                rate: 10.0
            }
        );
        assert!(a.enabled);
        assert!(!c.providers[1].rate_limits.enabled);
    }

    #[test]
    fn bad_rate_limits_name_their_key() {
        let base = "clusterName: c1\nproviders:\n- name: a\n  type: aws\n  region: eu-west-1\n";
        let e = err(&format!(
            "{base}  rateLimits: {{scale: -1, describe: {{burst: 0, rate: 5}}}}\n"
        ));
        assert!(e.contains("providers[0].rateLimits.describe.burst"), "{e}");
        assert!(e.contains("providers[0].rateLimits.scale"), "{e}");
        let e = err(&format!("{base}  rateLimits: {{burstt: 1}}\n"));
        assert!(e.contains("unknown field `burstt`"), "{e}");
        let e = err(&format!("{base}  rateLimits: {{mutating: {{rate: 5}}}}\n"));
        assert!(e.contains("missing field `burst`"), "{e}");
    }

    #[test]
    fn load_reads_a_file_and_names_a_missing_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, GOOD).expect("write");
        assert_eq!(
            OperatorConfig::load(&path).expect("loads").cluster_name,
            "prod-east"
        );
        let missing = dir.path().join("absent.yaml");
        let msg = OperatorConfig::load(&missing)
            .expect_err("missing file")
            .to_string();
        assert!(
            msg.starts_with(&format!("reading {}", missing.display())),
            "{msg}"
        );
    }

    #[test]
    fn empty_region_names_its_key() {
        let msg = err(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n- {name: b, type: aws, region: ''}\n",
        );
        assert_eq!(msg, "providers[1].region: must not be empty");
    }

    #[test]
    fn bad_durations_name_their_key() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        assert_eq!(
            err(&format!("{base}imageCacheTtl: 5x\n")),
            r#"imageCacheTtl: "5x" is not a duration (use 30s, 5m, 1h)"#
        );
        assert_eq!(
            err(&format!("{base}gcGracePeriod: \"120\"\n")),
            r#"gcGracePeriod: "120" is not a duration (use 30s, 5m, 1h)"#
        );
        assert_eq!(
            err(&format!("{base}imageCacheTtl: 0s\n")),
            r#"imageCacheTtl: "0s" is too short (at least 1s)"#
        );
        assert!(err(&format!("{base}imageCacheTtl: 9000h\n")).contains("too long"));
        let c = OperatorConfig::from_yaml(&format!("{base}gcGracePeriod: 1s\n")).expect("valid");
        assert_eq!(c.gc_grace_period, Duration::from_secs(1));
    }

    #[test]
    fn names_must_be_dns_labels_and_unique() {
        let msg = err(
            "clusterName: Prod_East\nproviders:\n- {name: a, type: aws, region: us-east-1}\n- {name: a, type: aws, region: us-east-2}\n- {name: '', type: aws, region: us-east-2}\n",
        );
        assert!(
            msg.contains("clusterName: \"Prod_East\" must be lowercase"),
            "{msg}"
        );
        assert!(
            msg.contains("providers[1].name: \"a\" is used by an earlier provider"),
            "{msg}"
        );
        assert!(
            msg.contains("providers[2].name: must not be empty"),
            "{msg}"
        );
        assert_eq!(
            err("clusterName: ''\nproviders: [{name: a, type: aws, region: r1}]\n"),
            "clusterName: must not be empty"
        );
    }

    #[test]
    fn providers_are_required() {
        assert_eq!(
            err("clusterName: c\nproviders: []\n"),
            "providers: must list at least one provider instance"
        );
        let msg = err("clusterName: c\n");
        assert!(msg.contains("missing field `providers`"), "{msg}");
    }

    #[test]
    fn default_provider_must_exist() {
        assert_eq!(
            err("clusterName: c\nproviders: [{name: a, type: aws, region: r1}]\ndefaultProvider: b\n"),
            r#"defaultProvider: "b" is not the name of a configured provider"#
        );
    }

    #[test]
    fn unknown_keys_and_types_are_rejected_with_their_path() {
        let msg = err(
            "clusterName: c\nproviders: [{name: a, type: aws, region: r1}]\nimageCacheTTL: 5m\n",
        );
        assert!(msg.contains("unknown field `imageCacheTTL`"), "{msg}");
        let msg =
            err("clusterName: c\nproviders:\n- {name: a, type: aws, region: r1, regoin: x}\n");
        assert!(
            msg.starts_with("providers[0]: unknown field `regoin`"),
            "{msg}"
        );
        let msg = err("clusterName: c\nproviders:\n- {name: a, type: gcp, region: r1}\n");
        assert!(
            msg.starts_with("providers[0].type: unknown variant `gcp`"),
            "{msg}"
        );
        let msg = err("clusterName: c\nproviders:\n- {name: a, type: aws}\n");
        assert!(
            msg.starts_with("providers[0]: missing field `region`"),
            "{msg}"
        );
    }

    #[test]
    fn endpoint_and_role_are_checked() {
        let msg = err(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: r1, endpointUrl: 'localhost:5000', assumeRoleArn: 'role/x'}\n",
        );
        assert!(
            msg.contains(
                r#"providers[0].endpointUrl: "localhost:5000" is not an http:// or https:// URL"#
            ),
            "{msg}"
        );
        assert!(
            msg.contains(r#"providers[0].assumeRoleArn: "role/x" is not an IAM role ARN"#),
            "{msg}"
        );
        let c = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: cn-north-1, endpointUrl: 'https://ec2.vpce.example', assumeRoleArn: 'arn:aws-cn:iam::123456789012:role/path/x'}\n",
        )
        .expect("valid");
        assert_eq!(c.providers[0].region, "cn-north-1");
    }

    #[test]
    fn cluster_identity_and_orphan_collection_are_checked() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        let c = OperatorConfig::from_yaml(base).expect("valid");
        assert_eq!(c.cluster_id, None, "derived from the cluster unless set");
        assert_eq!(c.orphans, OrphanCollection::default());
        let c = OperatorConfig::from_yaml(&format!(
            "{base}clusterId: prod-east/2026\norphanCollection: {{dryRun: true, maxShare: 5, minimum: 0}}\n"
        ))
        .expect("valid");
        assert_eq!(c.cluster_id.as_deref(), Some("prod-east/2026"));
        assert!(c.orphans.dry_run);
        assert_eq!((c.orphans.max_share, c.orphans.minimum), (5, 0));
        assert_eq!(
            err(&format!("{base}clusterId: \"\"\n")),
            "clusterId: must be 1 to 128 characters"
        );
        assert!(
            err(&format!("{base}clusterId: a b\n")).starts_with("clusterId: ' ' is not allowed")
        );
        assert_eq!(
            err(&format!("{base}orphanCollection: {{maxShare: 0}}\n")),
            "orphanCollection.maxShare: 0 is not a percentage from 1 to 100"
        );
        assert!(err(&format!("{base}orphanCollection: {{share: 5}}\n")).contains("unknown field"));
        assert_eq!(
            err(&format!("{base}gcGracePeriod: 0s\n")),
            r#"gcGracePeriod: "0s" is too short (at least 1s)"#
        );
    }

    #[test]
    fn tenant_policies_are_read_per_provider_and_absent_by_default() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        let c = OperatorConfig::from_yaml(base).expect("valid");
        assert!(c.tenant_policy("a").is_none(), "single-tenant default");
        let c = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- name: a\n  type: aws\n  region: us-east-1\n  \
             policy: {namespaces: [team-a], subnetIds: [subnet-0000000a], imageOwners: [amazon]}\n\
             - {name: b, type: aws, region: us-east-1}\n",
        )
        .expect("valid");
        let p = c.tenant_policy("a").expect("a policy");
        assert_eq!(
            p.namespaces
                .as_ref()
                .map(|n| n.iter().cloned().collect::<Vec<_>>()),
            Some(vec!["team-a".to_string()])
        );
        assert!(p.instance_profiles.is_none() && p.security_group_ids.is_none());
        assert!(c.tenant_policy("b").is_none());
        let msg = err(
            "clusterName: c\nproviders:\n- name: a\n  type: aws\n  region: us-east-1\n  \
             policy: {imageOwners: [self]}\n",
        );
        assert!(
            msg.starts_with("providers[0].policy.imageOwners[0]: \"self\" cannot be checked"),
            "{msg}"
        );
        assert!(err(
            "clusterName: c\nproviders:\n- name: a\n  type: aws\n  region: us-east-1\n  \
             policy: {namespace: [x]}\n"
        )
        .contains("unknown field `namespace`"));
    }

    #[test]
    fn the_orphan_brake_allows_a_share_or_the_minimum() {
        let o = OrphanCollection::default();
        // (machines of this cluster listed, orphans one sweep may terminate)
        for (owned, allowed) in [(0, 5), (10, 5), (25, 5), (30, 6), (1000, 200)] {
            assert_eq!(o.allowed(owned), allowed, "{owned}");
        }
        let strict = OrphanCollection {
            max_share: 1,
            minimum: 0,
            ..o
        };
        assert_eq!(strict.allowed(50), 0);
    }
}

//! The operator's own configuration: which cloud accounts it may use and how.
//!
//! Read once at start from a YAML file (a mounted ConfigMap in a cluster) and
//! validated completely before anything else runs, so a typo stops the operator
//! with a message naming the key instead of surfacing later as a failed launch.
//! Templates choose a provider instance by its `name`; nothing else in the
//! operator knows about accounts, regions or endpoints.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::provider::aws::limits::{RateLimitConfig, RawRateLimits};

/// Image look-ups are cached this long unless `imageCacheTtl` says otherwise:
/// short enough that a new SSM parameter value reaches launches within minutes,
/// long enough that many templates cost one call.
pub const DEFAULT_IMAGE_CACHE_TTL: Duration = Duration::from_secs(5 * 60);

/// Instances younger than this are never garbage-collected unless
/// `gcGracePeriod` says otherwise: EC2 reads are eventually consistent, so a
/// just-launched instance may not yet be visible where its owner is recorded.
pub const DEFAULT_GC_GRACE_PERIOD: Duration = Duration::from_secs(2 * 60);

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

/// Largest accepted `maxKubeRequestsInFlight`: kube queues at most 1,024
/// requests in front of the limit, and more connections than that is what the
/// limit is there to prevent.
const MAX_KUBE_REQUESTS_IN_FLIGHT: i64 = 1024;

/// Longest accepted duration, so a unit slip ("5000h") is caught at start.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The validated operator configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    /// Written into the ownership tags of every instance, so several operators
    /// (clusters) can share one account without touching each other's machines.
    pub cluster_name: String,
    /// Named provider instances, in the order of the file; names are unique.
    pub providers: Vec<ProviderConfig>,
    /// The provider used by templates that name none.
    pub default_provider: String,
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
    /// Most requests to the apiserver awaiting their answer at once (each is
    /// an HTTP/1.1 connection of its own).
    pub max_kube_requests_in_flight: usize,
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
        load(path)
    }

    /// Parses and validates a config document.
    pub fn from_yaml(s: &str) -> Result<OperatorConfig, ConfigError> {
        from_yaml(s)
    }

    /// The provider instance called `name`, if configured.
    pub fn provider(&self, name: &str) -> Option<&ProviderConfig> {
        self.providers.iter().find(|p| p.name == name)
    }
}

/// Reads and validates the config file at `path`.
pub fn load(path: &Path) -> Result<OperatorConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_yaml(&text)
}

/// Parses and validates a config document.
pub fn from_yaml(s: &str) -> Result<OperatorConfig, ConfigError> {
    let raw: RawConfig = serde_yaml::from_str(s)?;
    raw.validate()
}

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    cluster_name: String,
    providers: Vec<RawProvider>,
    #[serde(default)]
    default_provider: Option<String>,
    #[serde(default)]
    image_cache_ttl: Option<String>,
    #[serde(default)]
    gc_grace_period: Option<String>,
    #[serde(default)]
    poll_interval: Option<String>,
    #[serde(default)]
    sweep_interval: Option<String>,
    #[serde(default)]
    full_sweep_interval: Option<String>,
    #[serde(default)]
    capacity_cooldown: Option<String>,
    #[serde(default)]
    spot_notice_interval: Option<String>,
    #[serde(default)]
    max_kube_requests_in_flight: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawProvider {
    name: String,
    #[serde(rename = "type")]
    kind: ProviderKind,
    region: String,
    #[serde(default)]
    endpoint_url: Option<String>,
    #[serde(default)]
    assume_role_arn: Option<String>,
    #[serde(default)]
    rate_limits: Option<RawRateLimits>,
}

impl RawConfig {
    fn validate(mut self) -> Result<OperatorConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });

        if let Err(msg) = check_dns_label(&self.cluster_name) {
            problem("clusterName".into(), msg);
        }
        if self.providers.is_empty() {
            problem(
                "providers".into(),
                "must list at least one provider instance".into(),
            );
        }
        let mut seen = BTreeSet::new();
        let mut rate_limits = Vec::with_capacity(self.providers.len());
        for (i, p) in self.providers.iter_mut().enumerate() {
            let key = |field: &str| format!("providers[{i}].{field}");
            if let Err(msg) = check_dns_label(&p.name) {
                problem(key("name"), msg);
            } else if !seen.insert(p.name.as_str()) {
                problem(
                    key("name"),
                    format!(
                        "{:?} is used by an earlier provider; names must be unique",
                        p.name
                    ),
                );
            }
            if let Err(msg) = check_region(&p.region) {
                problem(key("region"), msg);
            }
            if let Some(url) = &p.endpoint_url {
                if let Err(msg) = check_url(url) {
                    problem(key("endpointUrl"), msg);
                }
            }
            if let Some(arn) = &p.assume_role_arn {
                if let Err(msg) = check_role_arn(arn) {
                    problem(key("assumeRoleArn"), msg);
                }
            }
            let limits = match p.rate_limits.take() {
                None => RateLimitConfig::default(),
                Some(raw) => raw.validate(&key("rateLimits")).unwrap_or_else(|found| {
                    for (key, message) in found {
                        problem(key, message);
                    }
                    RateLimitConfig::default()
                }),
            };
            rate_limits.push(limits);
        }
        let default_provider = match &self.default_provider {
            Some(name) => {
                if !self.providers.iter().any(|p| &p.name == name) {
                    problem(
                        "defaultProvider".into(),
                        format!("{name:?} is not the name of a configured provider"),
                    );
                }
                name.clone()
            }
            None => self
                .providers
                .first()
                .map(|p| p.name.clone())
                .unwrap_or_default(),
        };
        let mut duration = |key: &str, value: &Option<String>, default: Duration, min: Duration| {
            let Some(text) = value else {
                return default;
            };
            match parse_duration(text) {
                Some(d) if d < min => {
                    problem(
                        key.into(),
                        format!("{text:?} is too short (at least {})", format_duration(min)),
                    );
                    default
                }
                Some(d) if d > MAX_DURATION => {
                    problem(
                        key.into(),
                        format!(
                            "{text:?} is too long (at most {})",
                            format_duration(MAX_DURATION)
                        ),
                    );
                    default
                }
                Some(d) => d,
                None => {
                    problem(
                        key.into(),
                        format!("{text:?} is not a duration (use 30s, 5m, 1h)"),
                    );
                    default
                }
            }
        };
        let image_cache_ttl = duration(
            "imageCacheTtl",
            &self.image_cache_ttl,
            DEFAULT_IMAGE_CACHE_TTL,
            Duration::from_secs(1),
        );
        let gc_grace_period = duration(
            "gcGracePeriod",
            &self.gc_grace_period,
            DEFAULT_GC_GRACE_PERIOD,
            Duration::ZERO,
        );
        let poll_interval = duration(
            "pollInterval",
            &self.poll_interval,
            DEFAULT_POLL_INTERVAL,
            Duration::from_millis(200),
        );
        let sweep_interval = duration(
            "sweepInterval",
            &self.sweep_interval,
            DEFAULT_SWEEP_INTERVAL,
            Duration::from_secs(1),
        );
        let full_sweep_interval = duration(
            "fullSweepInterval",
            &self.full_sweep_interval,
            DEFAULT_FULL_SWEEP_INTERVAL,
            Duration::from_secs(1),
        );
        let capacity_cooldown = duration(
            "capacityCooldown",
            &self.capacity_cooldown,
            DEFAULT_CAPACITY_COOLDOWN,
            Duration::ZERO,
        );
        let spot_notice_interval = duration(
            "spotNoticeInterval",
            &self.spot_notice_interval,
            DEFAULT_SPOT_NOTICE_INTERVAL,
            Duration::ZERO,
        );
        let max_kube_requests_in_flight = match self.max_kube_requests_in_flight {
            None => crate::kube_client::DEFAULT_MAX_IN_FLIGHT,
            Some(n) if (1..=MAX_KUBE_REQUESTS_IN_FLIGHT).contains(&n) => n as usize,
            Some(n) => {
                problem(
                    "maxKubeRequestsInFlight".into(),
                    format!("{n} is out of range (1 to {MAX_KUBE_REQUESTS_IN_FLIGHT})"),
                );
                crate::kube_client::DEFAULT_MAX_IN_FLIGHT
            }
        };

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(OperatorConfig {
            cluster_name: self.cluster_name,
            providers: self
                .providers
                .into_iter()
                .zip(rate_limits)
                .map(|(p, rate_limits)| ProviderConfig {
                    name: p.name,
                    kind: p.kind,
                    region: p.region,
                    endpoint_url: p.endpoint_url,
                    assume_role_arn: p.assume_role_arn,
                    rate_limits,
                })
                .collect(),
            default_provider,
            image_cache_ttl,
            gc_grace_period,
            poll_interval,
            sweep_interval,
            full_sweep_interval,
            capacity_cooldown,
            spot_notice_interval,
            max_kube_requests_in_flight,
        })
    }
}

/// Names end up in tags and in `spec.provider`, whose schema only admits
/// DNS labels: accept exactly those.
fn check_dns_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 63 {
        return Err(format!("{s:?} is longer than 63 characters"));
    }
    let ok_chars = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok_chars || s.starts_with('-') || s.ends_with('-') {
        return Err(format!(
            "{s:?} must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_region(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    let ok = s
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !ok || s.starts_with('-') || s.ends_with('-') {
        return Err(format!("{s:?} is not a region name (e.g. us-east-1)"));
    }
    Ok(())
}

fn check_url(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty (leave it out to use the cloud's own endpoint)".into());
    }
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(host)
            if !host.is_empty()
                && !host.starts_with('/')
                && !host.contains(char::is_whitespace) =>
        {
            Ok(())
        }
        _ => Err(format!("{s:?} is not an http:// or https:// URL")),
    }
}

fn check_role_arn(s: &str) -> Result<(), String> {
    // arn:<partition>:iam::<account>:role/<path/name>
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let ok = parts.len() == 6
        && parts[0] == "arn"
        && parts[1].starts_with("aws")
        && parts[2] == "iam"
        && parts[3].is_empty()
        && parts[4].len() == 12
        && parts[4].bytes().all(|b| b.is_ascii_digit())
        && parts[5]
            .strip_prefix("role/")
            .is_some_and(|n| !n.is_empty());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not an IAM role ARN (arn:aws:iam::123456789012:role/name)"
        ))
    }
}

/// Parses `30s`, `5m`, `1h`, `250ms` and sums like `1h30m`. No bare numbers:
/// a unit left out is more often a mistake than a choice.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let value: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.checked_mul(60)?),
            "h" => Duration::from_secs(value.checked_mul(3600)?),
            "d" => Duration::from_secs(value.checked_mul(86_400)?),
            _ => return None,
        };
        total = total.checked_add(part)?;
    }
    Some(total)
}

/// The inverse of [`parse_duration`] for whole units, for messages.
fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if d.subsec_millis() != 0 || secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs.is_multiple_of(86_400) {
        format!("{}d", secs / 86_400)
    } else if secs.is_multiple_of(3600) {
        format!("{}h", secs / 3600)
    } else if secs.is_multiple_of(60) {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
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
        from_yaml(yaml)
            .expect_err("config must be rejected")
            .to_string()
    }

    #[test]
    fn full_config_parses() {
        let c = from_yaml(GOOD).expect("valid config");
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
        let c =
            from_yaml("clusterName: c1\nproviders:\n- {name: a, type: aws, region: eu-west-1}\n")
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
    fn max_kube_requests_in_flight_is_read_and_checked() {
        let base = "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n";
        let c = from_yaml(&format!("{base}maxKubeRequestsInFlight: 4\n")).expect("valid");
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
        let c = from_yaml(&format!("{base}fullSweepInterval: 2m\n")).expect("valid");
        assert_eq!(c.full_sweep_interval, Duration::from_secs(120));
        assert_eq!(
            err(&format!("{base}fullSweepInterval: 0s\n")),
            r#"fullSweepInterval: "0s" is too short (at least 1s)"#
        );
    }

    #[test]
    fn rate_limits_default_to_ec2s_and_can_be_scaled_or_disabled() {
        use crate::provider::aws::limits::{BucketShape, Class};
        let c = from_yaml(GOOD).expect("valid config");
        assert_eq!(c.providers[0].rate_limits, RateLimitConfig::default());
        let c = from_yaml(
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
        let msg = load(&missing).expect_err("missing file").to_string();
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
        // gcGracePeriod may be zero (tests), unlike the cache TTL.
        let c = from_yaml(&format!("{base}gcGracePeriod: 0s\n")).expect("valid");
        assert_eq!(c.gc_grace_period, Duration::ZERO);
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
        let c = from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: cn-north-1, endpointUrl: 'https://ec2.vpce.example', assumeRoleArn: 'arn:aws-cn:iam::123456789012:role/path/x'}\n",
        )
        .expect("valid");
        assert_eq!(c.providers[0].region, "cn-north-1");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        for bad in [
            "",
            "5",
            "5x",
            "m",
            "-5s",
            "5 s",
            "1.5h",
            "99999999999999999999h",
        ] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(7 * 86_400)), "7d");
        assert_eq!(format_duration(Duration::from_secs(1)), "1s");
    }
}

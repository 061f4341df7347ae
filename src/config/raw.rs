//! The config file as written, and its validation into [`OperatorConfig`]:
//! every problem is collected with its key path, so one run of the operator
//! names all of them.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::Deserialize;

use super::checks::{check_dns_label, check_region, check_role_arn, check_url};
use super::duration::{format_duration, parse_duration};
use super::policy::RawPolicy;
use super::queue::check_queue;
use super::rate_limits::{RateLimitConfig, RawRateLimits};
use super::{
    ConfigError, OperatorConfig, OrphanCollection, Problem, ProviderConfig, ProviderKind,
    DEFAULT_CAPACITY_COOLDOWN, DEFAULT_FULL_SWEEP_INTERVAL, DEFAULT_GC_GRACE_PERIOD,
    DEFAULT_IMAGE_CACHE_TTL, DEFAULT_LAUNCH_VALIDATION_RETRY, DEFAULT_MAX_CONCURRENT_RECONCILES,
    DEFAULT_MAX_KUBE_REQUESTS_IN_FLIGHT, DEFAULT_POLL_INTERVAL, DEFAULT_SELECTOR_REFRESH_INTERVAL,
    DEFAULT_SPOT_NOTICE_INTERVAL, DEFAULT_STATUS_CHECK_INTERVAL, DEFAULT_SWEEP_INTERVAL,
};

/// Largest accepted `maxKubeRequestsInFlight`: kube queues at most 1,024
/// requests in front of the limit, and more connections than that is what the
/// limit is there to prevent.
const MAX_KUBE_REQUESTS_IN_FLIGHT: i64 = 1024;

/// Largest accepted `maxConcurrentReconciles`: beyond a few thousand the
/// bound no longer bounds memory, which is what it is there for.
const MAX_CONCURRENT_RECONCILES: i64 = 4096;

/// Longest accepted duration, so a unit slip ("5000h") is caught at start.
const MAX_DURATION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// The file as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(super) struct RawConfig {
    cluster_name: String,
    #[serde(default)]
    cluster_id: Option<String>,
    #[serde(default)]
    orphan_collection: Option<RawOrphanCollection>,
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
    status_check_interval: Option<String>,
    #[serde(default)]
    max_kube_requests_in_flight: Option<i64>,
    #[serde(default)]
    max_concurrent_reconciles: Option<i64>,
    #[serde(default)]
    coalesce_launches: Option<bool>,
    #[serde(default)]
    validate_launches: Option<bool>,
    #[serde(default)]
    launch_validation_retry: Option<String>,
    #[serde(default)]
    selector_refresh_interval: Option<String>,
}

/// `orphanCollection` as written.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOrphanCollection {
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    max_share: Option<i64>,
    #[serde(default)]
    minimum: Option<i64>,
}

/// Longest accepted `clusterId`: it is a tag value (at most 256 characters)
/// and a filter value of every sweep listing.
const MAX_CLUSTER_ID: usize = 128;

/// Whether `id` can be a `clusterId`: 1 to 128 characters a tag value and a
/// filter take as they are (letters, digits and `-._:/=+@`).
fn check_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLUSTER_ID {
        return Err(format!("must be 1 to {MAX_CLUSTER_ID} characters"));
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-._:/=+@".contains(*c)))
    {
        Some(c) => Err(format!(
            "{c:?} is not allowed (letters, digits and -._:/=+@ only)"
        )),
        None => Ok(()),
    }
}

/// One `providers[]` entry as written.
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
    #[serde(default)]
    policy: Option<RawPolicy>,
    #[serde(default)]
    interruption_queue: Option<String>,
}

impl RawConfig {
    /// Checks every value, collecting all problems with their key paths, and
    /// fills in the defaults.
    pub(super) fn validate(mut self) -> Result<OperatorConfig, ConfigError> {
        let mut problems = Vec::new();
        let mut problem = |key: String, message: String| problems.push(Problem { key, message });

        if let Err(msg) = check_dns_label(&self.cluster_name) {
            problem("clusterName".into(), msg);
        }
        if let Some(id) = &self.cluster_id {
            if let Err(msg) = check_cluster_id(id) {
                problem("clusterId".into(), msg);
            }
        }
        let mut orphans = OrphanCollection::default();
        if let Some(raw) = &self.orphan_collection {
            orphans.dry_run = raw.dry_run;
            match raw.max_share {
                None => {}
                Some(n @ 1..=100) => orphans.max_share = n as u32,
                Some(n) => problem(
                    "orphanCollection.maxShare".into(),
                    format!("{n} is not a percentage from 1 to 100"),
                ),
            }
            match raw.minimum {
                None => {}
                Some(n @ 0..=10_000) => orphans.minimum = n as u32,
                Some(n) => problem(
                    "orphanCollection.minimum".into(),
                    format!("{n} is out of range (0 to 10000)"),
                ),
            }
        }
        if self.providers.is_empty() {
            problem(
                "providers".into(),
                "must list at least one provider instance".into(),
            );
        }
        let mut seen = BTreeSet::new();
        let mut rate_limits = Vec::with_capacity(self.providers.len());
        let mut tenant_policies = BTreeMap::new();
        let mut interruption_queues = BTreeMap::new();
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
            if let Some(raw) = &p.interruption_queue {
                match check_queue(raw) {
                    Ok(queue) => {
                        interruption_queues.insert(p.name.clone(), queue);
                    }
                    Err(msg) => problem(key("interruptionQueue"), msg),
                }
            }
            if let Some(raw) = p.policy.take() {
                match raw.validate(&key("policy")) {
                    Ok(policy) => {
                        tenant_policies.insert(p.name.clone(), policy);
                    }
                    Err(found) => {
                        for (key, message) in found {
                            problem(key, message);
                        }
                    }
                }
            }
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
            // Never zero: EC2's reads lag its launches, and a machine whose
            // record is not visible yet must not be taken for an orphan.
            Duration::from_secs(1),
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
        let launch_validation_retry = duration(
            "launchValidationRetry",
            &self.launch_validation_retry,
            DEFAULT_LAUNCH_VALIDATION_RETRY,
            Duration::from_secs(1),
        );
        let selector_refresh_interval = duration(
            "selectorRefreshInterval",
            &self.selector_refresh_interval,
            DEFAULT_SELECTOR_REFRESH_INTERVAL,
            Duration::from_secs(1),
        );
        // `off` and a bare `0` turn the check off too: the brief spelling an
        // operator reaches for first.
        let status_check_text = self.status_check_interval.as_ref().map(|t| match t.trim() {
            "off" | "0" => "0s".to_string(),
            other => other.to_string(),
        });
        let status_check_interval = match duration(
            "statusCheckInterval",
            &status_check_text,
            DEFAULT_STATUS_CHECK_INTERVAL,
            Duration::ZERO,
        ) {
            d if !d.is_zero() && d < Duration::from_secs(1) => {
                problem(
                    "statusCheckInterval".into(),
                    format!("{d:?} is too short (at least 1s, or 0s/off to turn it off)"),
                );
                DEFAULT_STATUS_CHECK_INTERVAL
            }
            d => d,
        };
        let max_kube_requests_in_flight = match self.max_kube_requests_in_flight {
            None => DEFAULT_MAX_KUBE_REQUESTS_IN_FLIGHT,
            Some(n) if (1..=MAX_KUBE_REQUESTS_IN_FLIGHT).contains(&n) => n as usize,
            Some(n) => {
                problem(
                    "maxKubeRequestsInFlight".into(),
                    format!("{n} is out of range (1 to {MAX_KUBE_REQUESTS_IN_FLIGHT})"),
                );
                DEFAULT_MAX_KUBE_REQUESTS_IN_FLIGHT
            }
        };
        let max_concurrent_reconciles = match self.max_concurrent_reconciles {
            None => DEFAULT_MAX_CONCURRENT_RECONCILES,
            Some(n) if (1..=MAX_CONCURRENT_RECONCILES).contains(&n) => {
                u16::try_from(n).unwrap_or(DEFAULT_MAX_CONCURRENT_RECONCILES)
            }
            Some(n) => {
                problem(
                    "maxConcurrentReconciles".into(),
                    format!("{n} is out of range (1 to {MAX_CONCURRENT_RECONCILES})"),
                );
                DEFAULT_MAX_CONCURRENT_RECONCILES
            }
        };

        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(OperatorConfig {
            cluster_name: self.cluster_name,
            cluster_id: self.cluster_id,
            orphans,
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
            tenant_policies,
            interruption_queues,
            image_cache_ttl,
            gc_grace_period,
            poll_interval,
            sweep_interval,
            full_sweep_interval,
            capacity_cooldown,
            spot_notice_interval,
            status_check_interval,
            max_kube_requests_in_flight,
            max_concurrent_reconciles,
            coalesce_launches: self.coalesce_launches.unwrap_or(true),
            validate_launches: self.validate_launches.unwrap_or(true),
            launch_validation_retry,
            selector_refresh_interval,
        })
    }
}

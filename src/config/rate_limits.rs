//! The `rateLimits` block of a provider instance: EC2's throttling classes,
//! their documented token-bucket shapes, and how the config file scales,
//! overrides or disables them. Only the shapes live here, so the config stays
//! a leaf; the live buckets that make calls wait are the AWS adapter's
//! `Limiter` (`provider/aws/limits.rs`), which also knows which EC2 operation
//! falls in which class.

use serde::Deserialize;

/// One token bucket's shape: up to `burst` tokens, refilled continuously at
/// `rate` tokens per second. `f64` because EC2 documents fractional rates and
/// scaled-down runs need them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketShape {
    /// Bucket capacity (how many calls or instances may go at once).
    pub burst: f64,
    /// Refill rate in tokens per second (the sustained rate).
    pub rate: f64,
}

impl BucketShape {
    const fn new(burst: f64, rate: f64) -> BucketShape {
        BucketShape { burst, rate }
    }
}

/// The EC2 throttling classes the operator's calls fall into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// `RunInstances` calls (request bucket).
    RunInstances,
    /// Instances launched by `RunInstances` (resource bucket, `MaxCount` tokens).
    LaunchedInstances,
    /// `TerminateInstances` calls (request bucket).
    TerminateInstances,
    /// Instances terminated by `TerminateInstances` (resource bucket).
    TerminatedInstances,
    /// Every other mutating action: CreateFleet, CreateLaunchTemplate,
    /// DeleteLaunchTemplate, ….
    Mutating,
    /// Non-mutating actions: `Describe*`, `Get*`, `List*`, `Search*`.
    Describe,
}

impl Class {
    /// The key of this class in the config file.
    pub fn key(self) -> &'static str {
        match self {
            Class::RunInstances => "runInstances",
            Class::LaunchedInstances => "launchedInstances",
            Class::TerminateInstances => "terminateInstances",
            Class::TerminatedInstances => "terminatedInstances",
            Class::Mutating => "mutating",
            Class::Describe => "describe",
        }
    }

    /// EC2's documented default bucket for the class.
    pub fn ec2_default(self) -> BucketShape {
        match self {
            Class::RunInstances => BucketShape::new(5.0, 2.0),
            Class::LaunchedInstances => BucketShape::new(1000.0, 2.0),
            Class::TerminateInstances => BucketShape::new(100.0, 5.0),
            Class::TerminatedInstances => BucketShape::new(1000.0, 20.0),
            Class::Mutating => BucketShape::new(50.0, 5.0),
            Class::Describe => BucketShape::new(100.0, 20.0),
        }
    }

    const ALL: [Class; 6] = [
        Class::RunInstances,
        Class::LaunchedInstances,
        Class::TerminateInstances,
        Class::TerminatedInstances,
        Class::Mutating,
        Class::Describe,
    ];
}

/// Largest accepted `scale`: far beyond any raised account limit, so a slip
/// ("1000" meant as a rate) is caught at start.
const MAX_SCALE: f64 = 1000.0;

/// The validated `rateLimits` of one provider instance.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimitConfig {
    /// False when `enabled: false`: calls go out as fast as the operator makes
    /// them (EC2 then throttles and the SDK retries).
    pub enabled: bool,
    /// The effective bucket of each class (defaults, overrides, then scale).
    buckets: [BucketShape; 6],
}

// Every number is validated finite and positive, so equality is total; the
// operator config compares equal as a whole (`Eq`) to detect changes.
impl Eq for RateLimitConfig {}

impl Default for RateLimitConfig {
    /// EC2's documented defaults, enabled.
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            enabled: true,
            buckets: Class::ALL.map(Class::ec2_default),
        }
    }
}

impl RateLimitConfig {
    /// The effective bucket of `class`.
    pub fn bucket(&self, class: Class) -> BucketShape {
        self.buckets[class as usize]
    }

    /// No client-side limiting at all.
    pub fn disabled() -> RateLimitConfig {
        RateLimitConfig {
            enabled: false,
            ..RateLimitConfig::default()
        }
    }

    /// Every bucket multiplied by `factor` (sizes kept at one token or more,
    /// so every call can pass): the same rule as the test forwarder's
    /// `RateLimits::scaled`, so both sides of a benchmark agree.
    pub fn scaled(mut self, factor: f64) -> RateLimitConfig {
        for b in &mut self.buckets {
            b.burst = (b.burst * factor).max(1.0);
            b.rate *= factor;
        }
        self
    }
}

/// `rateLimits` as written in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RawRateLimits {
    #[serde(default)]
    enabled: Option<bool>,
    #[serde(default)]
    scale: Option<f64>,
    #[serde(default)]
    run_instances: Option<RawBucket>,
    #[serde(default)]
    launched_instances: Option<RawBucket>,
    #[serde(default)]
    terminate_instances: Option<RawBucket>,
    #[serde(default)]
    terminated_instances: Option<RawBucket>,
    #[serde(default)]
    mutating: Option<RawBucket>,
    #[serde(default)]
    describe: Option<RawBucket>,
}

/// One class override as written: both fields required, so a half-written
/// override is an error rather than a silent mix with the default.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBucket {
    burst: f64,
    rate: f64,
}

impl RawRateLimits {
    /// Validates the block found at `key` (e.g. `providers[0].rateLimits`);
    /// problems come back as (key path, message).
    pub fn validate(self, key: &str) -> Result<RateLimitConfig, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut config = RateLimitConfig {
            enabled: self.enabled.unwrap_or(true),
            ..RateLimitConfig::default()
        };
        let overrides = [
            (Class::RunInstances, self.run_instances),
            (Class::LaunchedInstances, self.launched_instances),
            (Class::TerminateInstances, self.terminate_instances),
            (Class::TerminatedInstances, self.terminated_instances),
            (Class::Mutating, self.mutating),
            (Class::Describe, self.describe),
        ];
        for (class, raw) in overrides {
            let Some(raw) = raw else { continue };
            let at = format!("{key}.{}", class.key());
            let mut ok = true;
            if !(raw.burst.is_finite() && raw.burst >= 1.0) {
                problems.push((
                    format!("{at}.burst"),
                    format!("{} must be a number of at least 1", raw.burst),
                ));
                ok = false;
            }
            if !(raw.rate.is_finite() && raw.rate > 0.0) {
                problems.push((
                    format!("{at}.rate"),
                    format!("{} must be a positive number (tokens per second)", raw.rate),
                ));
                ok = false;
            }
            if ok {
                config.buckets[class as usize] = BucketShape::new(raw.burst, raw.rate);
            }
        }
        if let Some(scale) = self.scale {
            if scale.is_finite() && scale > 0.0 && scale <= MAX_SCALE {
                config = config.scaled(scale);
            } else {
                problems.push((
                    format!("{key}.scale"),
                    format!("{scale} must be a number above 0 and at most {MAX_SCALE}"),
                ));
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawRateLimits {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn defaults_are_ec2s() {
        let c = RateLimitConfig::default();
        assert!(c.enabled);
        assert_eq!(
            c.bucket(Class::RunInstances),
            BucketShape::new(5.0, 2.0),
            "RunInstances 5 burst, 2/s"
        );
        assert_eq!(
            c.bucket(Class::LaunchedInstances),
            BucketShape::new(1000.0, 2.0)
        );
        assert_eq!(c.bucket(Class::Mutating), BucketShape::new(50.0, 5.0));
        assert_eq!(c.bucket(Class::Describe), BucketShape::new(100.0, 20.0));
        assert_eq!(
            c.bucket(Class::TerminateInstances),
            BucketShape::new(100.0, 5.0)
        );
    }

    #[test]
    fn scale_and_overrides_apply() {
        let c = raw("scale: 0.1\nmutating: {burst: 20, rate: 4}")
            .validate("k")
            .expect("valid");
        assert_eq!(c.bucket(Class::RunInstances), BucketShape::new(1.0, 0.2));
        assert_eq!(
            c.bucket(Class::LaunchedInstances),
            BucketShape::new(100.0, 0.2)
        );
        let m = c.bucket(Class::Mutating);
        assert!((m.burst - 2.0).abs() < 1e-9 && (m.rate - 0.4).abs() < 1e-9);
        assert!(c.enabled);
        let off = raw("enabled: false").validate("k").expect("valid");
        assert!(!off.enabled);
        assert_eq!(raw("{}").validate("k"), Ok(RateLimitConfig::default()));
    }

    #[test]
    fn bad_values_name_their_key() {
        let problems = raw("scale: 0\ndescribe: {burst: 0.5, rate: -1}")
            .validate("providers[0].rateLimits")
            .expect_err("invalid");
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "providers[0].rateLimits.describe.burst",
                "providers[0].rateLimits.describe.rate",
                "providers[0].rateLimits.scale",
            ]
        );
        assert!(raw("scale: .nan").validate("k").is_err());
        assert!(raw("scale: 1001").validate("k").is_err());
        for bad in [
            "runInstances: {burst: 5}",
            "runInstances: {burst: 5, rate: 2, extra: 1}",
            "unknownClass: {burst: 5, rate: 2}",
            "scale: fast",
        ] {
            assert!(
                serde_yaml::from_str::<RawRateLimits>(bad).is_err(),
                "{bad} should not parse"
            );
        }
    }
}

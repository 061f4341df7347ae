//! Client-side EC2 rate limiting: the operator keeps inside the account's API
//! token buckets instead of being throttled.
//!
//! EC2 throttles per account and region with token buckets ("Request
//! throttling for the Amazon EC2 API", EC2 developer guide): every action has
//! a request bucket shaped by its category (one token per call), and
//! `RunInstances` / `TerminateInstances` also draw from a resource bucket (one
//! token per instance). A call that finds a bucket empty is answered
//! `RequestLimitExceeded`; retrying it costs another token and backs the whole
//! account off, other tools on the same account included. Waiting here until
//! the tokens are there costs the same time without the failed calls, so a
//! burst of hundreds of launches runs at exactly the rate the account allows.
//!
//! The buckets are per provider instance (one account and region) and per
//! action, with EC2's documented defaults; the operator config can scale them
//! (`providers[].rateLimits.scale`, e.g. for an account with raised limits or
//! a scaled-down benchmark), override a class or switch them off.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

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
    /// The request class of an EC2 `operation`; `None` for calls EC2 does not
    /// throttle with these buckets (the SSM calls that go through the same
    /// [`super::calls::Calls`]).
    pub fn of(operation: &str) -> Option<Class> {
        if SSM_OPERATIONS.contains(&operation) {
            return None;
        }
        Some(match operation {
            "RunInstances" => Class::RunInstances,
            "TerminateInstances" => Class::TerminateInstances,
            op if ["Describe", "Get", "List", "Search"]
                .iter()
                .any(|p| op.starts_with(p)) =>
            {
                Class::Describe
            }
            _ => Class::Mutating,
        })
    }

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

/// Operations made through the AWS adapter that are not EC2 (SSM has its own,
/// much larger per-action limits and is called once per image cache period).
const SSM_OPERATIONS: &[&str] = &["GetParameter", "GetParameters", "GetParametersByPath"];

/// The limiter refills at this share of each bucket's rate. EC2 counts a
/// call when it arrives, the operator when it leaves: on a busy node two
/// calls spaced exactly one refill apart can arrive closer together, and the
/// second is then throttled, its retry takes the next caller's token, and so
/// on. 5 % slack absorbs that jitter at every rate EC2 uses (at 2/s it is
/// 25 ms per call) for a 5 % longer sustained burst.
pub const REFILL_HEADROOM: f64 = 0.95;

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

/// The live buckets of one provider instance, shared by all its calls.
///
/// Each call reserves its tokens at once, possibly driving a bucket below
/// zero, and then sleeps until the refill has paid that debt: callers are
/// served in arrival order without polling, and a call costing more than the
/// burst (a `MaxCount` above it) waits for the refill instead of never
/// passing.
#[derive(Debug)]
pub struct Limiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(&'static str, Class), Level>>,
}

/// One bucket's state: tokens at `at` (negative while callers wait).
#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// Buckets shaped by `config`, all full.
    pub fn new(config: RateLimitConfig) -> Limiter {
        Limiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the token one call of `operation` needs from its request bucket
    /// and returns how long the caller must wait before sending it (zero when
    /// the token was there).
    pub fn reserve(&self, operation: &'static str) -> Duration {
        match Class::of(operation) {
            Some(class) => self.draw(operation, class, 1.0),
            None => Duration::ZERO,
        }
    }

    /// Takes `instances` tokens from the instance bucket of `operation`
    /// (RunInstances: its `MaxCount`; TerminateInstances: its ids) and
    /// returns how long to wait; zero for operations without one.
    pub fn reserve_instances(&self, operation: &'static str, instances: u32) -> Duration {
        match Class::of(operation) {
            Some(Class::RunInstances) => {
                self.draw(operation, Class::LaunchedInstances, f64::from(instances))
            }
            Some(Class::TerminateInstances) => {
                self.draw(operation, Class::TerminatedInstances, f64::from(instances))
            }
            _ => Duration::ZERO,
        }
    }

    fn draw(&self, operation: &'static str, class: Class, cost: f64) -> Duration {
        if !self.config.enabled {
            return Duration::ZERO;
        }
        let shape = self.config.bucket(class);
        let rate = shape.rate * REFILL_HEADROOM;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // EC2 keeps a request bucket per action, shaped by its class.
        let level = buckets.entry((operation, class)).or_insert(Level {
            tokens: shape.burst,
            at: now,
        });
        let elapsed = now.saturating_duration_since(level.at).as_secs_f64();
        level.tokens = (level.tokens + elapsed * rate).min(shape.burst) - cost;
        level.at = now;
        if level.tokens < 0.0 {
            Duration::from_secs_f64(-level.tokens / rate)
        } else {
            Duration::ZERO
        }
    }

    /// [`Limiter::reserve`], then sleeps the wait out.
    pub async fn acquire(&self, operation: &'static str) -> Duration {
        sleep(self.reserve(operation)).await
    }

    /// [`Limiter::reserve_instances`], then sleeps the wait out.
    pub async fn acquire_instances(&self, operation: &'static str, instances: u32) -> Duration {
        sleep(self.reserve_instances(operation, instances)).await
    }
}

async fn sleep(wait: Duration) -> Duration {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    wait
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(yaml: &str) -> RawRateLimits {
        serde_yaml::from_str(yaml).expect("parses")
    }

    #[test]
    fn classes_follow_ec2s_categories() {
        assert_eq!(Class::of("RunInstances"), Some(Class::RunInstances));
        assert_eq!(
            Class::of("TerminateInstances"),
            Some(Class::TerminateInstances)
        );
        assert_eq!(Class::of("DescribeInstances"), Some(Class::Describe));
        assert_eq!(Class::of("DescribeInstanceTypes"), Some(Class::Describe));
        assert_eq!(Class::of("CreateFleet"), Some(Class::Mutating));
        assert_eq!(Class::of("CreateLaunchTemplate"), Some(Class::Mutating));
        assert_eq!(Class::of("DeleteLaunchTemplate"), Some(Class::Mutating));
        assert_eq!(Class::of("GetParameter"), None, "SSM is not EC2");
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

    #[tokio::test(start_paused = true)]
    async fn run_instances_waits_for_its_request_bucket() {
        let limiter = Limiter::new(RateLimitConfig::default());
        let start = Instant::now();
        // 5 burst, then one every 0.5 s (plus the headroom).
        let spacing = 0.5 / REFILL_HEADROOM;
        for _ in 0..5 {
            assert_eq!(limiter.acquire("RunInstances").await, Duration::ZERO);
        }
        for i in 1..=4u32 {
            limiter.acquire("RunInstances").await;
            let elapsed = start.elapsed().as_secs_f64();
            assert!(
                (elapsed - spacing * f64::from(i)).abs() < 0.01,
                "call {} at {elapsed}",
                5 + i
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn launched_instances_take_max_count_tokens() {
        let limiter = Limiter::new(RateLimitConfig::default().scaled(0.1));
        // Scaled: RunInstances 1 burst 0.2/s; instances 100 burst 0.2/s.
        assert_eq!(
            limiter.acquire_instances("RunInstances", 100).await,
            Duration::ZERO
        );
        assert_eq!(limiter.acquire("RunInstances").await, Duration::ZERO);
        let start = Instant::now();
        // The request bucket refills in 5 s, but 10 instances need 50 s.
        let need = 50.0 / REFILL_HEADROOM;
        let waited = limiter.acquire_instances("RunInstances", 10).await;
        assert!((waited.as_secs_f64() - need).abs() < 0.01, "{waited:?}");
        let waited = limiter.acquire("RunInstances").await;
        assert!(waited.is_zero(), "the request token refilled meanwhile");
        assert!((start.elapsed().as_secs_f64() - need).abs() < 0.01);
        // Terminations draw from their own instance bucket (100 burst scaled).
        assert!(limiter
            .reserve_instances("TerminateInstances", 100)
            .is_zero());
        assert!(limiter
            .reserve_instances("DescribeInstances", 100)
            .is_zero());
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_are_spaced_by_the_rate() {
        let limiter = std::sync::Arc::new(Limiter::new(RateLimitConfig::default()));
        let start = Instant::now();
        // Describe: 100 burst, 20/s: 140 concurrent calls end after 2 s
        // (plus the headroom).
        let tasks: Vec<_> = (0..140)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    l.acquire("DescribeInstances").await;
                    Instant::now()
                })
            })
            .collect();
        let mut last = start;
        for t in tasks {
            last = last.max(t.await.expect("task"));
        }
        let took = (last - start).as_secs_f64();
        assert!((took - 2.0 / REFILL_HEADROOM).abs() < 0.01, "{took}");
        // Other actions have buckets of their own; SSM is not limited.
        assert_eq!(limiter.reserve("DescribeSubnets"), Duration::ZERO);
        for _ in 0..1000 {
            assert_eq!(limiter.reserve("GetParameter"), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_up_to_its_burst_only() {
        let limiter = Limiter::new(RateLimitConfig::default());
        for _ in 0..5 {
            limiter.acquire("RunInstances").await;
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        for _ in 0..5 {
            assert_eq!(limiter.reserve("RunInstances"), Duration::ZERO);
        }
        assert!(limiter.reserve("RunInstances") > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_waits() {
        let limiter = Limiter::new(RateLimitConfig::disabled());
        for _ in 0..100 {
            assert_eq!(limiter.reserve("RunInstances"), Duration::ZERO);
            assert_eq!(
                limiter.reserve_instances("RunInstances", 1000),
                Duration::ZERO
            );
        }
    }
}

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
//!
//! The bucket shapes and their config (`BucketShape`, `Class`,
//! `RateLimitConfig`) are in [`crate::config::rate_limits`]; this module holds
//! what runs: which operation draws from which bucket, and the live buckets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::rate_limits::{Class, RateLimitConfig};

// Which EC2 operation falls in which throttling class is the adapter's
// knowledge, so this half of `Class` lives beside the limiter.
impl Class {
    /// The request class of an EC2 `operation`; `None` for calls EC2 does not
    /// throttle with these buckets (the SSM calls that go through the same
    /// `super::calls::Calls`).
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
}

/// Operations made through the AWS adapter that are not EC2 (SSM has its own,
/// much larger per-action limits and is called once per image cache period).
const SSM_OPERATIONS: &[&str] = &["GetParameter", "GetParameters", "GetParametersByPath"];

/// The limiter refills at this share of each bucket's rate. EC2 counts a
/// call when it arrives, the limiter when it reserves the call's tokens, and
/// every call arrives later. Where a bucket is full, that gap costs EC2's
/// side refill the limiter already counted: a launch takes its instance
/// tokens from a full bucket, then waits for its RunInstances token, and EC2
/// charges it only when it arrives, the refill of the wait lost at the cap
/// (measured: 1.7 s, two tokens, throttled the last launch of the limits
/// scenario when the limiter refilled at the full rate with a one-second
/// start lag). 5 % slack absorbs such gaps at every rate EC2 uses, for a 5 %
/// longer sustained burst. Reserving a call's request and instance tokens
/// together, the gap counted, would allow the full rate.
pub const REFILL_HEADROOM: f64 = 0.95;

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

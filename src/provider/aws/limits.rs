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

/// How much later than its neighbours a call may reach EC2 without being
/// throttled. EC2 counts a call when it arrives, the limiter when it sends
/// it: a call that arrives later than the one before it lets EC2's bucket
/// refill longer (harmless), one that arrives sooner gives it less time than
/// the limiter counted, and a call that reaches a full bucket late loses the
/// refill of its delay at the cap. The limiter keeps this much refill
/// (`rate × ARRIVAL_SPREAD` tokens) unspent in every bucket, which covers
/// both, so it can refill at EC2's full rate: the margin costs a moment at
/// the start of a burst, never its sustained rate.
pub const ARRIVAL_SPREAD: Duration = Duration::from_millis(100);

/// The longest a call is told to wait: a day, far beyond any documented
/// bucket, so a degenerate scaled rate cannot overflow the clock.
const LONGEST_WAIT: Duration = Duration::from_secs(86_400);

/// The live buckets of one provider instance, shared by all its calls.
///
/// A call reserves every token it needs at once, request and instance
/// tokens together, charged at the moment it may be sent: the moment all of
/// its buckets hold enough. EC2 charges both when the call arrives, so
/// charging each bucket when it is ready instead (instance tokens from a
/// full bucket, then a wait for the request token) would count refill that
/// EC2 lost at the cap meanwhile. Buckets whose tokens are promised to
/// waiting callers are at a future moment; later callers queue behind them,
/// served in arrival order without polling. A call costing more than the
/// burst (a `MaxCount` above it) goes when the bucket is full and leaves it
/// in debt, instead of never passing.
#[derive(Debug)]
pub struct Limiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<(&'static str, Class), Level>>,
}

/// One bucket's state: `tokens` at moment `at`, which is later than now while
/// callers wait for tokens promised to them (negative after a call that
/// cost more than the burst).
#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Level {
    /// The tokens at `t` (not before `self.at`), refilled up to `burst`.
    fn tokens_at(&self, t: Instant, rate: f64, burst: f64) -> f64 {
        let elapsed = t.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + elapsed * rate).min(burst)
    }
}

/// One bucket a call draws from: which, and how many tokens.
struct Draw {
    key: (&'static str, Class),
    cost: f64,
}

impl Limiter {
    /// Buckets shaped by `config`, all full.
    pub fn new(config: RateLimitConfig) -> Limiter {
        Limiter {
            config,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the tokens one call of `operation` needs, its request token and,
    /// for RunInstances and TerminateInstances, `instances` tokens of their
    /// instance bucket (RunInstances: its `MaxCount`; TerminateInstances: its
    /// ids), all charged at one moment; returns how long the caller must wait
    /// before sending it (zero when the tokens are there).
    pub fn reserve(&self, operation: &'static str, instances: u32) -> Duration {
        let Some(class) = Class::of(operation) else {
            return Duration::ZERO;
        };
        if !self.config.enabled {
            return Duration::ZERO;
        }
        let mut draws = vec![Draw {
            key: (operation, class),
            cost: 1.0,
        }];
        let instance_class = match class {
            Class::RunInstances => Some(Class::LaunchedInstances),
            Class::TerminateInstances => Some(Class::TerminatedInstances),
            _ => None,
        };
        if let Some(c) = instance_class.filter(|_| instances > 0) {
            draws.push(Draw {
                key: (operation, c),
                cost: f64::from(instances),
            });
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        // The moment every bucket can pay: the latest of their own moments.
        let send = draws
            .iter()
            .map(|d| self.ready_at(&mut buckets, d, now))
            .max()
            .unwrap_or(now);
        for d in &draws {
            let shape = self.config.bucket(d.key.1);
            if let Some(level) = buckets.get_mut(&d.key) {
                let tokens = level.tokens_at(send, shape.rate, shape.burst) - d.cost;
                *level = Level { tokens, at: send };
            }
        }
        send.saturating_duration_since(now)
    }

    /// The first moment, not before `now` nor before the tokens promised to
    /// earlier callers, at which the bucket of `draw` holds its cost plus
    /// the arrival margin (at most the burst).
    fn ready_at(
        &self,
        buckets: &mut HashMap<(&'static str, Class), Level>,
        draw: &Draw,
        now: Instant,
    ) -> Instant {
        let shape = self.config.bucket(draw.key.1);
        // EC2 keeps a request bucket per action, shaped by its class.
        let level = buckets.entry(draw.key).or_insert(Level {
            tokens: shape.burst,
            at: now,
        });
        let base = now.max(level.at);
        let have = level.tokens_at(base, shape.rate, shape.burst);
        let margin = shape.rate * ARRIVAL_SPREAD.as_secs_f64();
        let need = (draw.cost + margin).min(shape.burst);
        if have >= need {
            return base;
        }
        // Rates are validated positive and finite; a wait too long to
        // represent is capped rather than trusted.
        let wait = Duration::try_from_secs_f64((need - have) / shape.rate)
            .unwrap_or(LONGEST_WAIT)
            .min(LONGEST_WAIT);
        base + wait
    }

    /// [`Limiter::reserve`], then sleeps the wait out.
    pub async fn acquire(&self, operation: &'static str, instances: u32) -> Duration {
        sleep(self.reserve(operation, instances)).await
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

    /// Seconds since `start`.
    fn since(start: Instant) -> f64 {
        start.elapsed().as_secs_f64()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 0.01
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

    #[tokio::test(start_paused = true)]
    async fn run_instances_waits_for_its_request_bucket() {
        let limiter = Limiter::new(RateLimitConfig::default());
        let start = Instant::now();
        // 5 burst, 2/s, 0.2 tokens of margin: four go at once, the fifth
        // when 1.2 are there, then one every 0.5 s at EC2's full rate.
        for _ in 0..4 {
            assert_eq!(limiter.acquire("RunInstances", 0).await, Duration::ZERO);
        }
        for i in 0..4u32 {
            limiter.acquire("RunInstances", 0).await;
            let at = since(start);
            assert!(
                close(at, 0.1 + 0.5 * f64::from(i)),
                "call {} at {at}",
                5 + i
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_its_request_and_instance_tokens_together() {
        let limiter = Limiter::new(RateLimitConfig::default().scaled(0.1));
        // Scaled: RunInstances 1 burst 0.2/s; instances 100 burst 0.2/s.
        let start = Instant::now();
        assert_eq!(limiter.acquire("RunInstances", 100).await, Duration::ZERO);
        // The request bucket refills in 5 s, but 10 instances (and the
        // margin) need 50.1 s: the call waits for both.
        let waited = limiter.acquire("RunInstances", 10).await;
        assert!(close(waited.as_secs_f64(), 50.1), "{waited:?}");
        // Its request token was charged when it went, not when it was
        // ready: the next call waits a full refill.
        let waited = limiter.acquire("RunInstances", 0).await;
        assert!(close(waited.as_secs_f64(), 5.0), "{waited:?}");
        assert!(close(since(start), 55.1));
    }

    #[tokio::test(start_paused = true)]
    async fn instance_tokens_do_not_refill_at_the_cap_while_the_request_waits() {
        let limiter = Limiter::new(RateLimitConfig::default().scaled(0.1));
        let start = Instant::now();
        // The request bucket is empty, the instance bucket full (100).
        assert_eq!(limiter.reserve("RunInstances", 0), Duration::ZERO);
        // 100 instances wait 5 s for the request token; EC2 charges their
        // instance tokens when the call arrives, from a bucket that stayed
        // full meanwhile, so the limiter charges them then too.
        assert!(close(
            limiter.acquire("RunInstances", 100).await.as_secs_f64(),
            5.0
        ));
        // One more instance needs 1.02 tokens refilled from 0 at 5 s: 10.1 s,
        // not the 5 s a bucket charged at the start would have said.
        limiter.acquire("RunInstances", 1).await;
        assert!(close(since(start), 10.1), "{}", since(start));
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_costing_more_than_the_burst_goes_when_full_and_leaves_a_debt() {
        let limiter = Limiter::new(RateLimitConfig::default().scaled(0.1));
        let start = Instant::now();
        // 150 instances from a bucket of 100: they go at once (full), and the
        // bucket owes 50, paid back at 0.2/s before the next instance.
        assert_eq!(limiter.acquire("RunInstances", 150).await, Duration::ZERO);
        limiter.acquire("RunInstances", 1).await;
        assert!(close(since(start), (50.0 + 1.02) / 0.2), "{}", since(start));
    }

    #[tokio::test(start_paused = true)]
    async fn termination_draws_from_its_own_buckets() {
        let limiter = Limiter::new(RateLimitConfig::default().scaled(0.1));
        assert_eq!(limiter.reserve("RunInstances", 100), Duration::ZERO);
        // TerminateInstances: 10 burst, 100 instances of burst.
        assert_eq!(limiter.reserve("TerminateInstances", 100), Duration::ZERO);
        assert!(limiter.reserve("TerminateInstances", 1) > Duration::ZERO);
        // Describe has no instance bucket: the count is ignored.
        assert_eq!(limiter.reserve("DescribeInstances", 1000), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_are_spaced_by_the_rate() {
        let limiter = std::sync::Arc::new(Limiter::new(RateLimitConfig::default()));
        let start = Instant::now();
        // Describe: 100 burst, 20/s, 2 tokens of margin: 140 concurrent calls
        // end after (140 - 100 + 2) / 20 = 2.1 s.
        let tasks: Vec<_> = (0..140)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    l.acquire("DescribeInstances", 0).await;
                    Instant::now()
                })
            })
            .collect();
        let mut last = start;
        for t in tasks {
            last = last.max(t.await.expect("task"));
        }
        let took = (last - start).as_secs_f64();
        assert!(close(took, 2.1), "{took}");
        // Other actions have buckets of their own; SSM is not limited.
        assert_eq!(limiter.reserve("DescribeSubnets", 0), Duration::ZERO);
        for _ in 0..1000 {
            assert_eq!(limiter.reserve("GetParameter", 0), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_bucket_refills_up_to_its_burst_only() {
        let limiter = Limiter::new(RateLimitConfig::default());
        for _ in 0..5 {
            limiter.acquire("RunInstances", 0).await;
        }
        tokio::time::sleep(Duration::from_secs(3600)).await;
        // Full again (5), not 7,200: four go, the fifth waits for the margin.
        for _ in 0..4 {
            assert_eq!(limiter.reserve("RunInstances", 0), Duration::ZERO);
        }
        assert!(limiter.reserve("RunInstances", 0) > Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_never_waits() {
        let limiter = Limiter::new(RateLimitConfig::disabled());
        for _ in 0..100 {
            assert_eq!(limiter.reserve("RunInstances", 0), Duration::ZERO);
            assert_eq!(limiter.reserve("RunInstances", 1000), Duration::ZERO);
        }
    }
}

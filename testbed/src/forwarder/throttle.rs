//! EC2's API throttling, modelled as token buckets per action.
//!
//! This model is an independent oracle of EC2's buckets, written from EC2's
//! documentation: it is deliberately not shared with the operator's own
//! limiter (`src/provider/aws/limits.rs`), so a mistake there cannot hide
//! itself by being copied into the bed that measures it.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// EC2 actions that get the smaller "unfiltered and unpaginated" request
/// bucket when called without a filter or pagination (EC2 developer guide,
/// "Request throttling for the Amazon EC2 API").
const UNFILTERED_DESCRIBES: &[&str] = &[
    "DescribeInstances",
    "DescribeInstanceStatus",
    "DescribeNetworkInterfaces",
    "DescribeSecurityGroups",
    "DescribeSnapshots",
    "DescribeSpotInstanceRequests",
    "DescribeVolumes",
];

/// One token bucket's shape: up to `size` tokens, refilled continuously at
/// `rate` tokens per second. Both are `f64` because EC2 documents fractional
/// refill rates (0.1/s) and scaled-down benchmarks need them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    /// Bucket maximum capacity (the burst).
    pub size: f64,
    /// Bucket refill rate in tokens per second (the sustained rate).
    pub rate: f64,
}

impl Bucket {
    /// A bucket of `size` tokens refilled at `rate` per second.
    pub const fn new(size: f64, rate: f64) -> Bucket {
        Bucket { size, rate }
    }
}

/// EC2's API throttling model: token buckets per API action, as EC2 applies
/// them, so a benchmark can see a launcher hit `RequestLimitExceeded` where
/// real EC2 would throttle it.
///
/// As EC2 does, every action has its own request bucket (one token per call),
/// shaped by its category; `RunInstances` and `TerminateInstances` also draw
/// from a resource bucket, one token per instance. A call needs every bucket
/// it draws from to hold enough tokens; otherwise it is answered
/// `RequestLimitExceeded` (HTTP 503), not forwarded, and takes no tokens.
/// Only EC2 calls (SigV4 scope `ec2`, or an unsigned form with `Action`) are
/// limited.
#[derive(Clone, Debug, PartialEq)]
pub struct RateLimits {
    /// Request bucket of `RunInstances` (EC2: 5, 2/s).
    pub run_instances: Bucket,
    /// Resource bucket of `RunInstances`: one token per instance, counted as
    /// the call's `MaxCount` (EC2: 1000, 2/s).
    pub launched_instances: Bucket,
    /// Request bucket of `TerminateInstances` (EC2: 100, 5/s).
    pub terminate_instances: Bucket,
    /// Resource bucket of `TerminateInstances`: one token per `InstanceId.N`
    /// (EC2: 1000, 20/s).
    pub terminated_instances: Bucket,
    /// Request bucket of each mutating action not listed elsewhere, e.g.
    /// CreateFleet, CreateLaunchTemplate, DeleteLaunchTemplate (EC2: 50, 5/s).
    pub mutating: Bucket,
    /// Request bucket of each non-mutating action (`Describe*`, `Get*`,
    /// `List*`, `Search*`) (EC2: 100, 20/s).
    pub describe: Bucket,
    /// Separate, smaller request bucket used by DescribeInstances,
    /// DescribeSecurityGroups, … when called without `Filter.N` and without
    /// `MaxResults`/`NextToken` (EC2: 50, 10/s).
    pub describe_unfiltered: Bucket,
    /// Actions EC2 gives a bucket of their own ("uncategorized actions"),
    /// e.g. CreateTags (EC2: 100, 10/s); wins over the fields above except
    /// the resource buckets.
    pub actions: BTreeMap<String, Bucket>,
}

impl RateLimits {
    /// EC2's documented defaults ("Request throttling for the Amazon EC2
    /// API", EC2 developer guide: request token bucket sizes and refill
    /// rates, uncategorized actions, resource token buckets).
    pub fn ec2_defaults() -> RateLimits {
        let actions = [
            ("CreateTags", Bucket::new(100.0, 10.0)),
            ("DeleteTags", Bucket::new(100.0, 10.0)),
            ("CreateLaunchTemplateVersion", Bucket::new(100.0, 5.0)),
            ("ModifyLaunchTemplate", Bucket::new(100.0, 5.0)),
            ("StartInstances", Bucket::new(5.0, 2.0)),
        ]
        .into_iter()
        .map(|(name, bucket)| (name.to_string(), bucket))
        .collect();
        RateLimits {
            run_instances: Bucket::new(5.0, 2.0),
            launched_instances: Bucket::new(1000.0, 2.0),
            terminate_instances: Bucket::new(100.0, 5.0),
            terminated_instances: Bucket::new(1000.0, 20.0),
            mutating: Bucket::new(50.0, 5.0),
            describe: Bucket::new(100.0, 20.0),
            describe_unfiltered: Bucket::new(50.0, 10.0),
            actions,
        }
    }

    /// Every size and rate multiplied by `factor` (sizes kept at one token
    /// or more, so every call can pass eventually): `scaled(0.1)` makes a
    /// short benchmark meet the limits a long real run would.
    pub fn scaled(mut self, factor: f64) -> RateLimits {
        let scale = |b: &mut Bucket| {
            b.size = (b.size * factor).max(1.0);
            b.rate *= factor;
        };
        scale(&mut self.run_instances);
        scale(&mut self.launched_instances);
        scale(&mut self.terminate_instances);
        scale(&mut self.terminated_instances);
        scale(&mut self.mutating);
        scale(&mut self.describe);
        scale(&mut self.describe_unfiltered);
        self.actions.values_mut().for_each(scale);
        self
    }

    /// The request bucket a call draws one token from, and the key naming
    /// that bucket's state (per action, as EC2 keeps it).
    pub fn request_bucket(
        &self,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> (String, Bucket) {
        if let Some(bucket) = self.actions.get(action) {
            return (action.to_string(), *bucket);
        }
        match action {
            "RunInstances" => return (action.to_string(), self.run_instances),
            "TerminateInstances" => return (action.to_string(), self.terminate_instances),
            _ => {}
        }
        let non_mutating = ["Describe", "Get", "List", "Search"]
            .iter()
            .any(|p| action.starts_with(p));
        if !non_mutating {
            return (action.to_string(), self.mutating);
        }
        let narrowed = params
            .keys()
            .any(|k| k.starts_with("Filter.") || k == "MaxResults" || k == "NextToken");
        if UNFILTERED_DESCRIBES.contains(&action) && !narrowed {
            (format!("{action}#unfiltered"), self.describe_unfiltered)
        } else {
            (action.to_string(), self.describe)
        }
    }

    /// The resource bucket a call draws from, its key, and how many tokens
    /// the call costs; `None` for actions without one.
    pub fn resource_bucket(
        &self,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> Option<(String, Bucket, f64)> {
        match action {
            "RunInstances" => {
                let count = ["MaxCount", "MinCount"]
                    .iter()
                    .find_map(|k| params.get(*k).and_then(|v| v.parse::<u32>().ok()))
                    .unwrap_or(1);
                Some((
                    "RunInstances#instances".to_string(),
                    self.launched_instances,
                    f64::from(count),
                ))
            }
            "TerminateInstances" => {
                let count = params
                    .keys()
                    .filter(|k| k.starts_with("InstanceId."))
                    .count()
                    .max(1);
                Some((
                    "TerminateInstances#instances".to_string(),
                    self.terminated_instances,
                    count as f64,
                ))
            }
            _ => None,
        }
    }
}

/// The level of one bucket, refilled lazily when a call looks at it.
struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn refill(&mut self, spec: Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * spec.rate).min(spec.size);
        self.last = now;
    }
}

/// The levels of every bucket a [`RateLimits`] model has drawn from, keyed
/// as [`RateLimits::request_bucket`] and [`RateLimits::resource_bucket`] name
/// them; every bucket starts full.
#[derive(Default)]
pub(super) struct Buckets(HashMap<String, TokenBucket>);

impl Buckets {
    /// Forgets every level, so each bucket is full again.
    pub(super) fn clear(&mut self) {
        self.0.clear();
    }

    /// Takes the call's tokens when every bucket it draws from has enough.
    pub(super) fn admit(
        &mut self,
        limits: &RateLimits,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> bool {
        let (key, spec) = limits.request_bucket(action, params);
        let mut draws = vec![(key, spec, 1.0)];
        draws.extend(limits.resource_bucket(action, params));
        let now = Instant::now();
        let mut enough = true;
        for (key, spec, cost) in &draws {
            let bucket = self.0.entry(key.clone()).or_insert_with(|| TokenBucket {
                tokens: spec.size,
                last: now,
            });
            bucket.refill(*spec, now);
            // A hair of slack so float refill (0.1/s × 10 s) still reaches 1.
            enough &= bucket.tokens + 1e-9 >= *cost;
        }
        if enough {
            for (key, _, cost) in &draws {
                if let Some(bucket) = self.0.get_mut(key) {
                    bucket.tokens -= cost;
                }
            }
        }
        enough
    }
}

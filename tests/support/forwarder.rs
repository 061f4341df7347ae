//! A fault-injecting HTTP forwarder between AWS clients and the simulator.
//!
//! moto never answers `InsufficientInstanceCapacity`, `RequestLimitExceeded`
//! or a 5xx, yet those are the answers a launcher has to survive. The
//! [`Forwarder`] sits between a client (the AWS SDK with an endpoint override,
//! in a test or in a child-process operator) and moto: it forwards every
//! request unchanged and relays moto's answer, except where a [`Rule`] or the
//! optional EC2 rate-limit model ([`RateLimits`]) says to answer with an error
//! instead. It also counts calls and keeps the decoded parameters of recent
//! calls, so a test can assert what was actually sent.
//!
//! What it understands of a request:
//! * EC2 (query protocol): `POST /` with an `application/x-www-form-urlencoded`
//!   body `Action=RunInstances&Version=…&InstanceType=…`; query-string
//!   parameters are read as well.
//! * JSON protocols (SSM): the action is the part of `X-Amz-Target` after the
//!   dot (`AmazonSSM.GetParameter` → `GetParameter`); the body's fields are
//!   flattened into dotted keys (`Name`, `Tags.1.Key`).
//! * anything else (moto's own `/moto-api/…`): forwarded, not counted.
//!
//! Error answers follow what EC2 and the SDKs show on the wire:
//! * `InsufficientInstanceCapacity` is an EC2 *server* error, so HTTP 500
//!   (EC2 API reference, "Error codes": server errors "are accompanied by a
//!   500-series HTTP response code" and list InsufficientInstanceCapacity;
//!   client logs show `statusCode: 500, retryable: true`, e.g.
//!   nib-health-funds/hammertime#29). The code is the bare
//!   `InsufficientInstanceCapacity`; `Server.` prefixes belong to instance
//!   state reasons, not to API errors.
//! * `RequestLimitExceeded` is HTTP 503 with message `Request limit exceeded.`
//!   (as AWS SDK logs show it: "Request limit exceeded. (Service: AmazonEC2;
//!   Status Code: 503; Error Code: RequestLimitExceeded …)",
//!   cloudfoundry/bosh-aws-cpi-release#61, jclouds/legacy-jclouds#1214).
//! * `InternalError` is HTTP 500.
//!
//! Note for test writers: the Rust SDK's standard retry strategy retries
//! HTTP 500/502/503/504 and throttling codes (3 attempts by default), so an
//! injected `InsufficientInstanceCapacity` or `RequestLimitExceeded` is seen
//! by the forwarder up to three times per SDK call unless the client's retry
//! config is changed. Also note that a real `CreateFleet` of type `instant`
//! reports capacity shortfalls inside a 200 answer (its `errorSet`); a rule
//! on `CreateFleet` models a failed call, not that partial answer.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// How many recent calls [`Forwarder::requests`] can look back on; older
/// ones are dropped so a long benchmark does not grow without bound.
pub const REQUEST_LOG_LIMIT: usize = 10_000;

/// Largest request or upstream answer body the forwarder reads (64 MiB);
/// EC2 and SSM calls are far smaller, so a larger one is a broken client.
const MAX_BODY: usize = 64 << 20;

/// Headers that describe one hop, not the message, so they are never relayed
/// (RFC 9110 §7.6.1); hyper sets its own framing on each side.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

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

/// The error answer a matching [`Rule`] (or an empty token bucket) gives
/// instead of forwarding; it is written in the wire format the client's
/// protocol expects, so the SDK parses it as if AWS had sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectedError {
    /// HTTP status of the answer (the SDK's retry decision depends on it).
    pub status: u16,
    /// The AWS error code, as `ProvideErrorMetadata::code()` will return it.
    pub code: String,
    /// The human-readable message.
    pub message: String,
}

impl InjectedError {
    /// Any error; for codes the constructors below do not cover.
    pub fn new(status: u16, code: impl Into<String>, message: impl Into<String>) -> InjectedError {
        InjectedError {
            status,
            code: code.into(),
            message: message.into(),
        }
    }

    /// EC2 has no capacity for the requested type in the zone: HTTP 500,
    /// `InsufficientInstanceCapacity` (a server error in EC2's error-code
    /// list; see the module docs for sources).
    pub fn insufficient_capacity() -> InjectedError {
        InjectedError::new(
            500,
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity in the Availability Zone you requested. \
             Our system will be working on provisioning additional capacity.",
        )
    }

    /// EC2 throttled the call: HTTP 503, `RequestLimitExceeded`,
    /// `Request limit exceeded.`; the same answer an empty token bucket gives.
    pub fn request_limit_exceeded() -> InjectedError {
        InjectedError::new(503, "RequestLimitExceeded", "Request limit exceeded.")
    }

    /// An EC2-side fault: HTTP 500, `InternalError`.
    pub fn internal_error() -> InjectedError {
        InjectedError::new(
            500,
            "InternalError",
            "An internal error has occurred. Retry your request, but if the problem persists, \
             contact us.",
        )
    }

    /// EC2 is overloaded: HTTP 503, `Unavailable`.
    pub fn unavailable() -> InjectedError {
        InjectedError::new(
            503,
            "Unavailable",
            "The server is overloaded and can't handle the request.",
        )
    }

    /// The EC2 query-protocol error document.
    fn ec2_xml(&self, request_id: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
             <Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
            xml_escape(&self.code),
            xml_escape(&self.message),
            request_id
        )
    }

    /// The awsJson1_1 error document (SSM and other JSON services).
    fn json_body(&self) -> String {
        serde_json::json!({ "__type": self.code, "message": self.message }).to_string()
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// Says which calls get an [`InjectedError`] instead of being forwarded.
///
/// A call matches when its action equals `action` (`"*"` matches any action)
/// and every `(key, value)` in `params` matches a decoded parameter:
/// * a plain key must be present with exactly that value
///   (`("InstanceType", "c6i.xlarge")`, `("SubnetId", "subnet-1")`);
/// * a key starting with `.` is a dotted-path suffix: it matches a parameter
///   whose key is the rest (`InstanceType`) or ends with it
///   (`LaunchTemplateConfigs.1.Overrides.2.InstanceType`), because CreateFleet
///   and CreateLaunchTemplate nest the fields a test cares about.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The action (`RunInstances`), or `"*"` for every action.
    pub action: String,
    /// Parameters that must all match (see the type's docs).
    pub params: Vec<(String, String)>,
    /// Answer only the first N matching calls, then let them pass; `None`
    /// answers every matching call until the rule is removed.
    pub times: Option<u32>,
    /// What to answer.
    pub error: InjectedError,
}

impl Rule {
    /// A rule that answers every `action` call with `error`; narrow it with
    /// [`Rule::param`] and [`Rule::times`].
    pub fn new(action: impl Into<String>, error: InjectedError) -> Rule {
        Rule {
            action: action.into(),
            params: Vec::new(),
            times: None,
            error,
        }
    }

    /// Adds a parameter that must match (a `.`-prefixed key matches as a
    /// dotted-path suffix).
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Rule {
        self.params.push((key.into(), value.into()));
        self
    }

    /// Limits the rule to its first `n` matching calls (`0`: never answers).
    pub fn times(mut self, n: u32) -> Rule {
        self.times = Some(n);
        self
    }

    /// Whether a call of `action` with decoded `params` matches (ignoring
    /// `times`); public so tests can check a rule against a recorded call.
    pub fn matches(&self, action: &str, params: &BTreeMap<String, String>) -> bool {
        (self.action == "*" || self.action == action)
            && self
                .params
                .iter()
                .all(|(key, value)| param_matches(key, value, params))
    }
}

fn param_matches(key: &str, value: &str, params: &BTreeMap<String, String>) -> bool {
    match key.strip_prefix('.') {
        Some(bare) => params
            .iter()
            .any(|(k, v)| v == value && (k == bare || k.ends_with(key))),
        None => params.get(key).is_some_and(|v| v == value),
    }
}

/// Names a rule added with [`Forwarder::add_rule`], so a test can remove
/// just that one while others stay.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleId(u64);

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

/// A running forwarder: an HTTP/1.1 server on `127.0.0.1:<free port>` with
/// its own thread and tokio runtime, so it serves the same whether the
/// caller is a `#[tokio::test]`, plain code, or an operator in a child
/// process given [`Forwarder::endpoint`]. Keep the value alive as long as
/// clients use the endpoint: dropping it stops the server and closes its
/// connections.
///
/// All methods take `&self`, so a test can flip faults while clients run.
pub struct Forwarder {
    endpoint: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Starts a forwarder to `upstream` (`http://127.0.0.1:PORT`, e.g.
    /// `TestBed::moto_url`); panics when it cannot, as test setup does.
    pub fn start(upstream: &str) -> Forwarder {
        Forwarder::try_start(upstream)
            .unwrap_or_else(|e| panic!("starting the forwarder to {upstream}: {e}"))
    }

    /// Starts a forwarder to `upstream`, reporting why it could not.
    pub fn try_start(upstream: &str) -> std::io::Result<Forwarder> {
        let upstream = upstream.trim_end_matches('/').to_string();
        upstream.parse::<Uri>().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("upstream {upstream:?}: {e}"),
            )
        })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("forwarder")
            .enable_all()
            .build()?;
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };

        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        // No idle upstream connections: moto's server may close one between
        // calls, and a call sent on such a connection would fail; a fresh
        // loopback connection per call costs little.
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(0)
            .build(connector);
        let shared = Arc::new(Shared {
            upstream,
            client,
            state: Mutex::new(State::default()),
        });

        let (tx, rx) = tokio::sync::oneshot::channel();
        let serving = shared.clone();
        let thread = std::thread::Builder::new()
            .name(format!("forwarder-{}", addr.port()))
            .spawn(move || {
                runtime.block_on(accept_loop(listener, serving, rx));
                // Connection tasks still open are cancelled here.
                runtime.shutdown_background();
            })?;
        Ok(Forwarder {
            endpoint: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// The URL to give clients or the operator's endpoint override.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Where calls are forwarded to.
    pub fn upstream(&self) -> &str {
        &self.shared.upstream
    }

    /// Adds a rule after the existing ones; the first matching rule with
    /// uses left answers a call.
    pub fn add_rule(&self, rule: Rule) -> RuleId {
        let mut state = self.shared.lock();
        state.next_rule += 1;
        let id = RuleId(state.next_rule);
        state.rules.push((id, rule));
        id
    }

    /// Removes one rule; false when it was already gone (removed, or used up
    /// its `times`).
    pub fn remove_rule(&self, id: RuleId) -> bool {
        let mut state = self.shared.lock();
        let before = state.rules.len();
        state.rules.retain(|(rid, _)| *rid != id);
        state.rules.len() != before
    }

    /// Removes every rule, so calls pass again (rate limits stay).
    pub fn clear_rules(&self) {
        self.shared.lock().rules.clear();
    }

    /// Answers every EC2 `action` call with `body` (a whole 200 XML document)
    /// instead of forwarding it, until [`Forwarder::clear_reply`]: for what
    /// moto does not model, such as a spot request carrying an interruption
    /// notice. Rate limits and rules still apply first.
    pub fn reply_with(&self, action: impl Into<String>, body: impl Into<String>) {
        self.shared
            .lock()
            .replies
            .insert(action.into(), body.into());
    }

    /// Forwards `action` to moto again.
    pub fn clear_reply(&self, action: &str) {
        self.shared.lock().replies.remove(action);
    }

    /// Turns the EC2 rate-limit model on (`Some`) or off (`None`, the
    /// default). Every bucket starts full.
    pub fn set_rate_limits(&self, limits: Option<RateLimits>) {
        let mut state = self.shared.lock();
        state.limits = limits;
        state.buckets.clear();
    }

    /// Calls of `action` that reached the forwarder, however answered
    /// (forwarded, injected by a rule, or throttled).
    pub fn calls(&self, action: &str) -> u64 {
        get(&self.shared.lock().calls, action)
    }

    /// Calls of `action` sent on to the upstream.
    pub fn forwarded(&self, action: &str) -> u64 {
        get(&self.shared.lock().forwarded, action)
    }

    /// Calls of `action` answered by a rule, whatever the code.
    pub fn injected(&self, action: &str) -> u64 {
        self.shared
            .lock()
            .injected
            .iter()
            .filter(|((a, _), _)| a == action)
            .map(|(_, n)| n)
            .sum()
    }

    /// Calls of `action` answered by a rule with error `code`.
    pub fn injected_code(&self, action: &str, code: &str) -> u64 {
        self.shared
            .lock()
            .injected
            .get(&(action.to_string(), code.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Calls answered `RequestLimitExceeded` by the rate-limit model (not by
    /// rules), all actions together.
    pub fn throttled(&self) -> u64 {
        self.shared.lock().throttled.values().sum()
    }

    /// Calls of `action` answered by the rate-limit model.
    pub fn throttled_for(&self, action: &str) -> u64 {
        get(&self.shared.lock().throttled, action)
    }

    /// Every counter, for a report or an assertion message:
    /// `calls/<Action>`, `forwarded/<Action>`, `injected/<Action>/<Code>`,
    /// `throttled/<Action>`, `upstream_errors/<Action>` and the total
    /// `throttled`.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        let state = self.shared.lock();
        let mut out = BTreeMap::new();
        for (prefix, map) in [
            ("calls", &state.calls),
            ("forwarded", &state.forwarded),
            ("throttled", &state.throttled),
            ("upstream_errors", &state.upstream_errors),
        ] {
            for (action, n) in map {
                out.insert(format!("{prefix}/{action}"), *n);
            }
        }
        for ((action, code), n) in &state.injected {
            out.insert(format!("injected/{action}/{code}"), *n);
        }
        out.insert("throttled".to_string(), state.throttled.values().sum());
        out
    }

    /// Zeroes every counter and forgets recorded calls (rules, rate limits
    /// and bucket levels stay).
    pub fn reset_counters(&self) {
        let mut state = self.shared.lock();
        state.calls.clear();
        state.forwarded.clear();
        state.injected.clear();
        state.throttled.clear();
        state.upstream_errors.clear();
        state.requests.clear();
    }

    /// Decoded parameters of the recent calls of `action` (oldest first, at
    /// most [`REQUEST_LOG_LIMIT`] calls of all actions kept), however they
    /// were answered: e.g. to check that a re-sent RunInstances carried the
    /// same `ClientToken`.
    pub fn requests(&self, action: &str) -> Vec<BTreeMap<String, String>> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|(a, _)| a == action)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

impl Drop for Forwarder {
    /// Stops accepting, closes open connections and waits for the thread.
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn get(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

struct Shared {
    upstream: String,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
}

impl Shared {
    /// The state, even if a panicking test thread poisoned the lock.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    rules: Vec<(RuleId, Rule)>,
    next_rule: u64,
    limits: Option<RateLimits>,
    buckets: HashMap<String, TokenBucket>,
    calls: BTreeMap<String, u64>,
    forwarded: BTreeMap<String, u64>,
    injected: BTreeMap<(String, String), u64>,
    throttled: BTreeMap<String, u64>,
    upstream_errors: BTreeMap<String, u64>,
    requests: VecDeque<(String, BTreeMap<String, String>)>,
    replies: HashMap<String, String>,
}

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

/// What the forwarder decided for one call.
enum Decision {
    Forward,
    Answer(InjectedError),
    Reply(String),
}

impl State {
    fn decide(&mut self, call: &Call) -> Decision {
        let Some(action) = call.action.as_deref() else {
            return Decision::Forward;
        };
        *self.calls.entry(action.to_string()).or_default() += 1;
        self.requests
            .push_back((action.to_string(), call.params.clone()));
        while self.requests.len() > REQUEST_LOG_LIMIT {
            self.requests.pop_front();
        }

        // EC2 throttles before it does anything else, so a throttled call
        // takes no rule use, and a call a rule fails still took its tokens.
        if call.is_ec2() && !self.admit(action, &call.params) {
            *self.throttled.entry(action.to_string()).or_default() += 1;
            return Decision::Answer(InjectedError::request_limit_exceeded());
        }

        let hit = self
            .rules
            .iter()
            .position(|(_, rule)| rule.times != Some(0) && rule.matches(action, &call.params));
        if let Some(index) = hit {
            let rule = &mut self.rules[index].1;
            let error = rule.error.clone();
            if let Some(left) = rule.times.as_mut() {
                *left = left.saturating_sub(1);
                if *left == 0 {
                    self.rules.remove(index);
                }
            }
            *self
                .injected
                .entry((action.to_string(), error.code.clone()))
                .or_default() += 1;
            return Decision::Answer(error);
        }
        if let Some(body) = self.replies.get(action) {
            return Decision::Reply(body.clone());
        }
        *self.forwarded.entry(action.to_string()).or_default() += 1;
        Decision::Forward
    }

    /// Takes the call's tokens when every bucket it draws from has enough.
    fn admit(&mut self, action: &str, params: &BTreeMap<String, String>) -> bool {
        let Some(limits) = &self.limits else {
            return true;
        };
        let (key, spec) = limits.request_bucket(action, params);
        let mut draws = vec![(key, spec, 1.0)];
        draws.extend(limits.resource_bucket(action, params));
        let now = Instant::now();
        let mut enough = true;
        for (key, spec, cost) in &draws {
            let bucket = self
                .buckets
                .entry(key.clone())
                .or_insert_with(|| TokenBucket {
                    tokens: spec.size,
                    last: now,
                });
            bucket.refill(*spec, now);
            // A hair of slack so float refill (0.1/s × 10 s) still reaches 1.
            enough &= bucket.tokens + 1e-9 >= *cost;
        }
        if enough {
            for (key, _, cost) in &draws {
                if let Some(bucket) = self.buckets.get_mut(key) {
                    bucket.tokens -= cost;
                }
            }
        }
        enough
    }
}

/// What the forwarder understood of one request.
struct Call {
    action: Option<String>,
    params: BTreeMap<String, String>,
    /// A JSON-protocol call (has `X-Amz-Target`); errors are answered as JSON.
    json: bool,
    /// The service of the SigV4 credential scope (`ec2`, `ssm`), if signed.
    service: Option<String>,
}

impl Call {
    fn parse(parts: &Parts, body: &[u8]) -> Call {
        let headers = &parts.headers;
        let service = header_str(headers, "authorization").and_then(sigv4_service);
        let mut params = BTreeMap::new();
        if let Some(query) = parts.uri.query() {
            params.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        if let Some(target) = header_str(headers, "x-amz-target") {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
                flatten_json("", &value, &mut params);
            }
            let action = target.rsplit('.').next().unwrap_or(target).to_string();
            return Call {
                action: Some(action),
                params,
                json: true,
                service,
            };
        }
        let is_form = header_str(headers, CONTENT_TYPE.as_str())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            params.extend(form_urlencoded::parse(body).into_owned());
        }
        Call {
            action: params.get("Action").cloned(),
            params,
            json: false,
            service,
        }
    }

    fn is_ec2(&self) -> bool {
        match self.service.as_deref() {
            Some(service) => service == "ec2",
            None => !self.json && self.action.is_some(),
        }
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ec2/aws4_request, …`
/// → `ec2`.
fn sigv4_service(authorization: &str) -> Option<String> {
    let scope = authorization.split("Credential=").nth(1)?;
    let scope = scope.split([',', ' ']).next()?;
    scope.split('/').nth(3).map(str::to_string)
}

/// Flattens a JSON body into the dotted keys EC2 uses (`Tags.1.Key`), so
/// rules and recorded calls look alike for both protocols.
fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten_json(&key(k), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(&key(&(i + 1).to_string()), v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        serde_json::Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // Keep-alive: a client may send many calls on one
                        // connection and keep it idle as long as it likes.
                        let _ = http1::Builder::new()
                            .header_read_timeout(None)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of file descriptors and the like: pause, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                format!("forwarder: reading the request body: {e}"),
            ))
        }
    };
    let call = Call::parse(&parts, &body);
    let decision = shared.lock().decide(&call);
    match decision {
        Decision::Answer(error) => Ok(error_response(&error, call.json)),
        Decision::Reply(body) => Ok(xml_response(body)),
        Decision::Forward => match forward(&shared, parts, body).await {
            Ok(response) => Ok(response),
            Err(message) => {
                if let Some(action) = &call.action {
                    *shared
                        .lock()
                        .upstream_errors
                        .entry(action.clone())
                        .or_default() += 1;
                }
                Ok(plain(
                    StatusCode::BAD_GATEWAY,
                    format!("forwarder: upstream {}: {message}", shared.upstream),
                ))
            }
        },
    }
}

/// Sends the request on unchanged (same method, path, query, headers but the
/// hop-by-hop ones, body) and returns the upstream answer the same way.
async fn forward(
    shared: &Shared,
    parts: Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, String> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", shared.upstream)
        .parse()
        .map_err(|e| format!("bad target URI: {e}"))?;
    let mut request = Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    copy_end_to_end(&parts.headers, request.headers_mut());

    let answer = shared
        .client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (answer_parts, answer_body) = answer.into_parts();
    let answer_body = Limited::new(answer_body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let mut response = Response::new(Full::new(answer_body));
    *response.status_mut() = answer_parts.status;
    copy_end_to_end(&answer_parts.headers, response.headers_mut());
    Ok(response)
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn error_response(error: &InjectedError, json: bool) -> Response<Full<Bytes>> {
    let request_id = request_id();
    let (body, content_type) = if json {
        (error.json_body(), "application/x-amz-json-1.1")
    } else {
        (error.ec2_xml(&request_id), "text/xml;charset=UTF-8")
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = error.status_code();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), id);
    }
    if json {
        if let Ok(code) = HeaderValue::from_str(&error.code) {
            headers.insert(HeaderName::from_static("x-amzn-errortype"), code);
        }
    }
    response
}

/// A 200 EC2 (query protocol) answer with `body` as the document.
fn xml_response(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    response
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A random UUID-shaped request id, as EC2's `RequestID` looks.
fn request_id() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
            .collect()
    };
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

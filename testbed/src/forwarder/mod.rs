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
//! on `CreateFleet` models a failed call, not that partial answer (the
//! fidelity model's `FaultRule::partial_fleet` / `zero_fleet` do).
//!
//! Capacity reservations (`reservations`): moto never reports an instance's
//! `CapacityReservationId` and knows no `capacity-block` market; the
//! forwarder reports the targeted reservation in DescribeInstances and asks
//! moto for on-demand instances in place of a Capacity Block (the recorded
//! parameters stay as sent).
//!
//! The EC2 fidelity model (`fidelity/`, off by default) adds what moto
//! lacks: ClientToken idempotency, faults after moto acted, partial
//! launches, eventual consistency, deaths at launch, launch-template quota
//! and lag; see that module's docs for its API.

mod fidelity;
mod paging;
mod pending;
mod placement;
mod requirements;
mod reservations;
mod rules;
mod server;
mod status_checks;
mod throttle;
mod wire;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub use fidelity::{
    FaultKind, FaultRule, Fidelity, FidelityCounters, FleetError, Gate, KillAtLaunch, Pick,
    RandomProfile, Then, Visibility,
};
pub use placement::PlacementGroup;
pub use rules::{InjectedError, Rule, RuleId};
pub use status_checks::Impaired;
pub use throttle::{Bucket, RateLimits};
pub use wire::DRY_RUN_SUFFIX;

use server::accept_loop;
use throttle::Buckets;
use wire::Call;

/// How many recent calls [`Forwarder::requests`] can look back on; older
/// ones are dropped so a long benchmark does not grow without bound.
pub const REQUEST_LOG_LIMIT: usize = 10_000;

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

    /// Adds a placement group to those `DescribePlacementGroups` reports
    /// (moto has none: the forwarder answers that call itself, from the
    /// groups added here; see `placement`).
    pub fn add_placement_group(&self, group: PlacementGroup) {
        self.shared.lock().placement_groups.push(group);
    }

    /// Models attribute-based instance type selection for CreateFleet,
    /// which moto lacks: overrides with `InstanceRequirements` reach moto as
    /// one override per matching type (see `requirements`).
    pub fn model_instance_requirements(&self) {
        self.shared.lock().model_requirements = true;
    }

    /// Reports instance `id`'s status checks `checks` as failing (impaired
    /// since now) in every DescribeInstanceStatus answer that lists it,
    /// until [`Forwarder::heal`]; moto reports every running instance `ok`
    /// (see `status_checks`).
    pub fn impair(&self, id: impl Into<String>, checks: Impaired) {
        let since = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S.000Z")
            .to_string();
        self.shared
            .lock()
            .impaired
            .insert(id.into(), status_checks::Marked { checks, since });
    }

    /// Reports instance `id`'s status checks as moto does again (passing).
    pub fn heal(&self, id: &str) {
        self.shared.lock().impaired.remove(id);
    }

    /// Reports every running instance but `known` as `pending` in
    /// DescribeInstances answers, until [`Forwarder::release_pending`]:
    /// EC2 keeps a new instance pending for a while, moto runs it at once
    /// (see `pending`).
    pub fn hold_pending<I: IntoIterator<Item = S>, S: Into<String>>(&self, known: I) {
        self.shared.lock().held_pending = Some(known.into_iter().map(Into::into).collect());
    }

    /// Reports instances as moto does again.
    pub fn release_pending(&self) {
        self.shared.lock().held_pending = None;
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
    /// `throttled/<Action>`, `upstream_errors/<Action>`, the total
    /// `throttled`, and the fidelity model's non-zero counters as
    /// `fidelity/<name>`.
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
        // Only what the model did, so a snapshot without it reads as before.
        out.extend(
            state
                .model
                .counters
                .entries()
                .into_iter()
                .filter(|(_, n)| *n > 0),
        );
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
        state.model.counters = FidelityCounters::default();
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
            .filter(|(a, _, _)| a == action)
            .map(|(_, _, p)| p.clone())
            .collect()
    }

    /// When each recent call of `action` reached the forwarder (oldest
    /// first, from the same log as [`Forwarder::requests`]): a bench reads
    /// where a phase's time went from it.
    pub fn call_times(&self, action: &str) -> Vec<Instant> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|(a, _, _)| a == action)
            .map(|(_, at, _)| *at)
            .collect()
    }

    /// The decoded parameters of the last recorded call of `action`; panics
    /// (naming every action seen) when there was none.
    pub fn last_request(&self, action: &str) -> BTreeMap<String, String> {
        self.requests(action)
            .pop()
            .unwrap_or_else(|| panic!("no {action} call: {:#?}", self.snapshot()))
    }

    /// Turns the EC2 fidelity model on (see `fidelity`'s module docs):
    /// the ClientToken registry, visibility windows, template quota and
    /// lag, deaths; `Fidelity::default()` is the registry alone.
    pub fn enable_fidelity(&self, fidelity: Fidelity) {
        self.shared.lock().model.enable(fidelity);
    }

    /// Turns the EC2 fidelity model off (a bench phase that used it must not
    /// leave its faults to the next one); counters stay readable.
    pub fn disable_fidelity(&self) {
        self.shared.lock().model.disable();
    }

    /// Adds a fault that lets the call reach moto (or the registry) and
    /// then changes the answer, or changes the request first; works with
    /// or without `enable_fidelity`.
    pub fn add_fault(&self, fault: FaultRule) -> RuleId {
        let mut state = self.shared.lock();
        state.next_rule += 1;
        let id = RuleId(state.next_rule);
        state.model.faults.push((id, fault));
        id
    }

    /// Removes a fault; false when it was already gone.
    pub fn remove_fault(&self, id: RuleId) -> bool {
        let mut state = self.shared.lock();
        let before = state.model.faults.len();
        state.model.faults.retain(|(fid, _)| *fid != id);
        state.model.faults.len() != before
    }

    /// Sets the eventual-consistency windows (turns the model on).
    pub fn set_visibility(&self, visibility: Visibility) {
        let mut state = self.shared.lock();
        state.model.on = true;
        state.model.visibility = visibility;
    }

    /// Hides these instance ids from every DescribeInstances not naming
    /// them by id, until [`Forwarder::show_in_tag_listings`]: a tag index
    /// that misses an old instance (turns the model on).
    pub fn hide_from_tag_listings<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        let mut state = self.shared.lock();
        state.model.on = true;
        state
            .model
            .hidden_from_tags
            .extend(ids.into_iter().map(Into::into));
    }

    /// Lists every instance hidden by `hide_from_tag_listings` again.
    pub fn show_in_tag_listings(&self) {
        self.shared.lock().model.hidden_from_tags.clear();
    }

    /// Kills instances at launch (turns the model on); `None` stops it.
    pub fn kill_at_launch(&self, kill: Option<KillAtLaunch>) {
        let mut state = self.shared.lock();
        state.model.on = true;
        state.model.kill = kill;
    }

    /// CreateLaunchTemplate answers `MaxTemplateLimitExceeded` once moto
    /// holds `quota` templates; `None` lifts it (turns the model on).
    pub fn set_launch_template_quota(&self, quota: Option<usize>) {
        let mut state = self.shared.lock();
        state.model.on = true;
        state.model.template_quota = quota;
    }

    /// For `lag` after a CreateLaunchTemplate, DeleteLaunchTemplate and
    /// CreateFleet naming the template answer NotFound (turns the model on).
    pub fn set_launch_template_lag(&self, lag: Duration) {
        let mut state = self.shared.lock();
        state.model.on = true;
        state.model.template_lag = lag;
    }

    /// What the fidelity model did so far.
    pub fn fidelity_counters(&self) -> FidelityCounters {
        self.shared.lock().model.counters.clone()
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
    buckets: Buckets,
    calls: BTreeMap<String, u64>,
    forwarded: BTreeMap<String, u64>,
    injected: BTreeMap<(String, String), u64>,
    throttled: BTreeMap<String, u64>,
    upstream_errors: BTreeMap<String, u64>,
    /// Recent calls: action, when it reached the forwarder, parameters.
    requests: VecDeque<(String, Instant, BTreeMap<String, String>)>,
    replies: HashMap<String, String>,
    placement_groups: Vec<PlacementGroup>,
    /// Whether CreateFleet overrides with InstanceRequirements are rewritten
    /// into matching types before moto sees them (see `requirements`).
    model_requirements: bool,
    /// Instances whose status checks are reported failing.
    impaired: BTreeMap<String, status_checks::Marked>,
    /// While set: the instances DescribeInstances reports as moto does;
    /// every other running one reads pending.
    held_pending: Option<std::collections::BTreeSet<String>>,
    /// Instances launched into a targeted capacity reservation.
    reserved: reservations::Reserved,
    model: fidelity::Model,
}

/// Decoded query parameters from `(key, value)` pairs, as [`Call::parse`]
/// leaves them: how the forwarder's unit tests write a call's parameters.
#[cfg(test)]
fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What the forwarder decided for one call.
enum Decision {
    Forward,
    Answer(InjectedError),
    Reply(String),
    /// The fidelity model serves it (and counts what it forwards).
    Model,
}

impl State {
    fn decide(&mut self, call: &Call) -> Decision {
        let Some(action) = call.action.as_deref() else {
            return Decision::Forward;
        };
        *self.calls.entry(action.to_string()).or_default() += 1;
        self.requests
            .push_back((action.to_string(), Instant::now(), call.params.clone()));
        while self.requests.len() > REQUEST_LOG_LIMIT {
            self.requests.pop_front();
        }

        // EC2 throttles before it does anything else, so a throttled call
        // takes no rule use, and a call a rule fails still took its tokens.
        if call.is_ec2() && !self.admit(action, &call.params) {
            *self.throttled.entry(action.to_string()).or_default() += 1;
            return Decision::Answer(InjectedError::request_limit_exceeded());
        }

        let mut hit = None;
        for (index, (_, rule)) in self.rules.iter_mut().enumerate() {
            if rule.times == Some(0) || !rule.matches(action, &call.params) {
                continue;
            }
            if rule.after > 0 {
                rule.after -= 1;
                continue;
            }
            hit = Some(index);
            break;
        }
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
        // moto does the call even with DryRun=true: EC2 only checks it and
        // answers DryRunOperation
        // (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateLaunchTemplate.html>,
        // `DryRun`). moto honours it for RunInstances and CreateFleet.
        if action == "CreateLaunchTemplate:DryRun" && call.is_ec2() {
            return Decision::Answer(InjectedError::dry_run_operation());
        }
        if action == "DescribePlacementGroups" && call.is_ec2() {
            return match placement::describe(&self.placement_groups, &call.params) {
                Ok(body) => Decision::Reply(body),
                Err(error) => Decision::Answer(error),
            };
        }
        if self.model.serves(action, &call.params) && call.is_ec2() && !call.json {
            return Decision::Model;
        }
        self.count_forward(action);
        Decision::Forward
    }

    /// Counts one call of `action` sent on to the upstream.
    fn count_forward(&mut self, action: &str) {
        *self.forwarded.entry(action.to_string()).or_default() += 1;
    }

    /// Takes the call's tokens when the rate-limit model is on and every
    /// bucket it draws from has enough; true when it is off.
    fn admit(&mut self, action: &str, params: &BTreeMap<String, String>) -> bool {
        match &self.limits {
            Some(limits) => self.buckets.admit(limits, action, params),
            None => true,
        }
    }
}

/// Asserts that the recorded `call` carries each `(key, value)` and none of
/// the keys in `absent`: how tests check the exact parameters EC2 received.
pub fn assert_params(call: &BTreeMap<String, String>, wanted: &[(&str, &str)], absent: &[&str]) {
    for (key, value) in wanted {
        assert_eq!(
            call.get(*key).map(String::as_str),
            Some(*value),
            "{key} in {call:#?}"
        );
    }
    for key in absent {
        assert!(
            !call.contains_key(*key),
            "{key} must not be sent: {call:#?}"
        );
    }
}

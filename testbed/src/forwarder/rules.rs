//! What the forwarder answers instead of forwarding: injected errors and the
//! rules that pick the calls they answer.

use std::collections::BTreeMap;

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

    /// EC2's answer to a dry run that would have succeeded: HTTP 412,
    /// `DryRunOperation`
    /// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>).
    pub fn dry_run_operation() -> InjectedError {
        InjectedError::new(
            412,
            "DryRunOperation",
            "Request would have succeeded, but DryRun flag is set.",
        )
    }

    /// EC2's answer to a call (or dry run) the caller's IAM policies do not
    /// allow: HTTP 403, `UnauthorizedOperation`, with an encoded
    /// authorization message.
    pub fn unauthorized_operation() -> InjectedError {
        InjectedError::new(
            403,
            "UnauthorizedOperation",
            "You are not authorized to perform this operation. Encoded authorization failure \
             message: AQoDYXdzEJr",
        )
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
    /// Matching calls still to let pass before the rule answers any: the
    /// second send of a token, not the first (see [`Rule::after`]).
    pub after: u32,
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
            after: 0,
            error,
        }
    }

    /// Lets the first `n` matching calls pass untouched (to later rules, the
    /// fidelity model and moto) before the rule answers: counted in calls, so
    /// "the re-send of a token is refused" needs no race against the client.
    pub fn after(mut self, n: u32) -> Rule {
        self.after = n;
        self
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

pub(super) fn param_matches(key: &str, value: &str, params: &BTreeMap<String, String>) -> bool {
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
pub struct RuleId(pub(super) u64);

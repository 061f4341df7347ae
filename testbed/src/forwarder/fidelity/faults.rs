//! Fault rules that let moto act and then change the answer, or change the
//! request first: lost answers, partial launches, zero-instance fleets.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::forwarder::rules::{param_matches, InjectedError};

/// A fault added with [`crate::forwarder::Forwarder::add_fault`]: like a
/// [`crate::forwarder::Rule`] it matches an action and parameters and can be
/// limited with [`FaultRule::times`], but the call still reaches moto (or
/// the registry) unless the kind says otherwise.
#[derive(Clone, Debug)]
pub struct FaultRule {
    /// The action (`RunInstances`), or `"*"`.
    pub action: String,
    /// Parameters that must all match (same syntax as `Rule::param`).
    pub params: Vec<(String, String)>,
    /// Parameters that must be absent (exact keys).
    pub absent: Vec<String>,
    /// Uses left; `None`: until removed.
    pub times: Option<u32>,
    /// What to do.
    pub kind: FaultKind,
}

/// What a [`FaultRule`] does to a call.
#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Let EC2 act, then answer something else (the answer is lost).
    Then(Then),
    /// RunInstances launches at most this many (MaxCount rewritten down).
    PartialRun(u32),
    /// CreateFleet (instant) launches at most this many and its answer
    /// carries `error` in its `errorSet`.
    PartialFleet(u32, FleetError),
    /// CreateFleet answers 200 with no instance and `error` in its
    /// `errorSet`, without reaching moto.
    ZeroFleet(FleetError),
    /// The call waits before it reaches moto until the test opens the gate:
    /// a window in which the test changes the world the call will see,
    /// driven by the test's own progress, never by a clock.
    Gate(Gate),
}

/// A gate calls wait at (see [`FaultKind::Gate`]); clones share it.
#[derive(Clone, Debug)]
pub struct Gate(std::sync::Arc<tokio::sync::watch::Sender<bool>>);

impl Default for Gate {
    fn default() -> Gate {
        Gate(std::sync::Arc::new(tokio::sync::watch::Sender::new(false)))
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// Opens the gate: every call waiting at it, and every later one, goes on.
    pub fn open(&self) {
        self.0.send_replace(true);
    }

    /// Waits until the gate is open.
    pub(super) async fn passed(&self) {
        let mut open = self.0.subscribe();
        // The sender lives in `self`, so the wait ends only by opening.
        let _ = open.wait_for(|o| *o).await;
    }
}

/// What the client gets instead of the real answer, after EC2 acted.
///
/// Models <https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>:
/// a call may succeed in EC2 while the client sees an error or a timeout,
/// which is why launches carry a ClientToken.
#[derive(Clone, Debug)]
pub enum Then {
    /// An error answer (500 `InternalError`, 503 `RequestLimitExceeded`…).
    Error(InjectedError),
    /// The connection is closed without an answer.
    Drop,
    /// The real answer, after this long (past the SDK's attempt timeout).
    Hold(Duration),
}

/// One item of a CreateFleet `errorSet`.
///
/// Shape from <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleetError.html>:
/// `errorCode`, `errorMessage`, `launchTemplateAndOverrides`, `lifecycle`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetError {
    /// `errorCode`, e.g. `InsufficientInstanceCapacity`.
    pub code: String,
    /// `errorMessage`.
    pub message: String,
}

impl FleetError {
    /// An error item with this code and message.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> FleetError {
        FleetError {
            code: code.into(),
            message: message.into(),
        }
    }

    /// EC2's capacity shortfall item.
    pub fn insufficient_capacity() -> FleetError {
        FleetError::new(
            "InsufficientInstanceCapacity",
            "We currently do not have sufficient capacity in the Availability Zone you requested.",
        )
    }
}

impl FaultRule {
    fn new(action: impl Into<String>, kind: FaultKind) -> FaultRule {
        FaultRule {
            action: action.into(),
            params: Vec::new(),
            absent: Vec::new(),
            times: None,
            kind,
        }
    }

    /// `action` waits at `gate` before it reaches moto.
    pub fn gate(action: impl Into<String>, gate: &Gate) -> FaultRule {
        FaultRule::new(action, FaultKind::Gate(gate.clone()))
    }

    /// Matches only calls without parameter `key` (an exact key, e.g.
    /// `Filter.3.Name`).
    pub fn without(mut self, key: impl Into<String>) -> FaultRule {
        self.absent.push(key.into());
        self
    }

    /// Forward `action`, then answer `error` instead of moto's answer.
    pub fn forward_then_error(action: impl Into<String>, error: InjectedError) -> FaultRule {
        FaultRule::new(action, FaultKind::Then(Then::Error(error)))
    }

    /// Forward `action`, then close the connection without an answer.
    pub fn forward_then_drop(action: impl Into<String>) -> FaultRule {
        FaultRule::new(action, FaultKind::Then(Then::Drop))
    }

    /// Forward `action`, then hold the answer for `hold` before sending it.
    pub fn forward_then_hold(action: impl Into<String>, hold: Duration) -> FaultRule {
        FaultRule::new(action, FaultKind::Then(Then::Hold(hold)))
    }

    /// RunInstances launches at most `launch` instances (fewer than MaxCount:
    /// <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_RunInstances.html>,
    /// "If Amazon EC2 cannot launch the maximum number … it launches the
    /// largest possible number above MinCount").
    pub fn partial_run_instances(launch: u32) -> FaultRule {
        FaultRule::new("RunInstances", FaultKind::PartialRun(launch))
    }

    /// An instant CreateFleet launches at most `launch` and reports `error`
    /// for the rest (API_CreateFleet.html, "Errors" of instant fleets).
    pub fn partial_fleet(launch: u32, error: FleetError) -> FaultRule {
        FaultRule::new("CreateFleet", FaultKind::PartialFleet(launch, error))
    }

    /// An instant CreateFleet that launched nothing: 200, `fleetId` and
    /// `errorSet` only; kept under its ClientToken when the registry is on.
    pub fn zero_fleet(error: FleetError) -> FaultRule {
        FaultRule::new("CreateFleet", FaultKind::ZeroFleet(error))
    }

    /// Adds a parameter that must match (a `.`-prefixed key matches as a
    /// dotted-path suffix, as for `Rule::param`).
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> FaultRule {
        self.params.push((key.into(), value.into()));
        self
    }

    /// Limits the rule to its first `n` matching calls.
    pub fn times(mut self, n: u32) -> FaultRule {
        self.times = Some(n);
        self
    }

    pub(in crate::forwarder) fn matches(
        &self,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> bool {
        self.times != Some(0)
            && (self.action == "*" || self.action == action)
            && self
                .params
                .iter()
                .all(|(key, value)| param_matches(key, value, params))
            && self.absent.iter().all(|key| !params.contains_key(key))
    }

    pub(super) fn is_then(&self) -> bool {
        matches!(self.kind, FaultKind::Then(_))
    }
}

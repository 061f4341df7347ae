//! The fidelity model's state: what it was told (config, fault rules), what
//! it saw (tokens, instances, templates) and what it did (counters).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::config::{Fidelity, KillAtLaunch, Pick, Visibility};
use super::faults::{FaultKind, FaultRule, Then};
use super::tokens::Registry;
use super::xml::Element;
use crate::forwarder::rules::{InjectedError, RuleId};

/// What the model did, for a test's assertions or a bench report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FidelityCounters {
    /// Launch calls answered from the ClientToken registry.
    pub replays: u64,
    /// Launch calls answered `IdempotentParameterMismatch`.
    pub mismatches: u64,
    /// RunInstances answered `IdempotentInstanceTerminated`.
    pub terminated_answers: u64,
    /// Launch calls forwarded to moto, per ClientToken (`""`: none).
    pub launches_by_token: BTreeMap<String, u64>,
    /// Calls whose answer a forward-then-misbehave rule replaced, per action.
    pub misbehaved: BTreeMap<String, u64>,
    /// Launch calls rewritten to launch fewer than asked.
    pub partial_launches: u64,
    /// Zero-instance fleet answers synthesized.
    pub zero_fleets: u64,
    /// Instances dropped from DescribeInstances answers read by id.
    pub hidden_by_id: u64,
    /// Instances dropped from tag-filtered / unfiltered DescribeInstances.
    pub hidden_by_tag: u64,
    /// Instances shown with their pre-terminate state.
    pub stale_states: u64,
    /// TerminateInstances answered `InvalidInstanceID.NotFound`.
    pub terminate_not_found: u64,
    /// Instances terminated in moto as deaths at launch.
    pub deaths: u64,
    /// CreateLaunchTemplate answered `MaxTemplateLimitExceeded`.
    pub template_quota_refusals: u64,
    /// Calls answered NotFound because a template was too fresh.
    pub template_lag_refusals: u64,
}

impl FidelityCounters {
    /// Launch faults the random profile made: calls answered from the token
    /// registry after a lost answer, answers replaced, partial launches.
    pub fn launch_faults(&self) -> u64 {
        self.replays + self.misbehaved.values().sum::<u64>() + self.partial_launches
    }

    /// Forwarded launches under `token`.
    pub fn launches_for(&self, token: &str) -> u64 {
        self.launches_by_token.get(token).copied().unwrap_or(0)
    }

    /// The counters as `fidelity/<name>` entries for `Forwarder::snapshot`.
    pub(in crate::forwarder) fn entries(&self) -> Vec<(String, u64)> {
        let mut out = vec![
            ("fidelity/replays".to_string(), self.replays),
            ("fidelity/mismatches".to_string(), self.mismatches),
            (
                "fidelity/terminated_answers".to_string(),
                self.terminated_answers,
            ),
            (
                "fidelity/launches".to_string(),
                self.launches_by_token.values().sum(),
            ),
            (
                "fidelity/max_launches_per_token".to_string(),
                self.launches_by_token
                    .iter()
                    .filter(|(t, _)| !t.is_empty())
                    .map(|(_, n)| *n)
                    .max()
                    .unwrap_or(0),
            ),
            (
                "fidelity/partial_launches".to_string(),
                self.partial_launches,
            ),
            ("fidelity/zero_fleets".to_string(), self.zero_fleets),
            ("fidelity/hidden_by_id".to_string(), self.hidden_by_id),
            ("fidelity/hidden_by_tag".to_string(), self.hidden_by_tag),
            ("fidelity/stale_states".to_string(), self.stale_states),
            (
                "fidelity/terminate_not_found".to_string(),
                self.terminate_not_found,
            ),
            ("fidelity/deaths".to_string(), self.deaths),
            (
                "fidelity/template_quota_refusals".to_string(),
                self.template_quota_refusals,
            ),
            (
                "fidelity/template_lag_refusals".to_string(),
                self.template_lag_refusals,
            ),
        ];
        for (action, n) in &self.misbehaved {
            out.push((format!("fidelity/misbehaved/{action}"), *n));
        }
        out
    }
}

/// What the model knows of one instance it saw launched.
#[derive(Clone, Debug)]
pub(in crate::forwarder) struct Seen {
    pub(super) launched: Instant,
    /// When TerminateInstances was accepted, and the state before it.
    pub(super) terminated: Option<(Instant, Element)>,
    /// `stateReason` to show once it is shutting down or terminated.
    pub(super) death: Option<(String, String)>,
}

/// The model's whole state, inside the forwarder's lock.
pub(in crate::forwarder) struct Model {
    pub(in crate::forwarder) on: bool,
    pub(in crate::forwarder) visibility: Visibility,
    pub(in crate::forwarder) random: Option<super::config::RandomProfile>,
    pub(in crate::forwarder) rng: fastrand::Rng,
    pub(in crate::forwarder) faults: Vec<(RuleId, FaultRule)>,
    pub(in crate::forwarder) registry: Registry,
    pub(in crate::forwarder) instances: HashMap<String, Seen>,
    pub(in crate::forwarder) hidden_from_tags: HashSet<String>,
    pub(in crate::forwarder) kill: Option<KillAtLaunch>,
    pub(in crate::forwarder) template_quota: Option<usize>,
    pub(in crate::forwarder) template_lag: Duration,
    /// Template name or id → when it was created.
    pub(in crate::forwarder) templates_created: HashMap<String, Instant>,
    /// One CreateLaunchTemplate at a time while a quota is set, so two
    /// concurrent creates cannot both pass the count.
    pub(in crate::forwarder) template_gate: Arc<tokio::sync::Mutex<()>>,
    pub(in crate::forwarder) counters: FidelityCounters,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            on: false,
            visibility: Visibility::default(),
            random: None,
            rng: fastrand::Rng::with_seed(0),
            faults: Vec::new(),
            registry: Registry::default(),
            instances: HashMap::new(),
            hidden_from_tags: HashSet::new(),
            kill: None,
            template_quota: None,
            template_lag: Duration::ZERO,
            templates_created: HashMap::new(),
            template_gate: Arc::new(tokio::sync::Mutex::new(())),
            counters: FidelityCounters::default(),
        }
    }
}

/// Actions the model handles itself once it is on.
const MODELLED: &[&str] = &[
    "RunInstances",
    "CreateFleet",
    "DescribeInstances",
    "TerminateInstances",
    "CreateLaunchTemplate",
    "DeleteLaunchTemplate",
];

/// Faults one call drew: at most one before forwarding, one after.
#[derive(Default)]
pub(super) struct Drawn {
    pub(in crate::forwarder) before: Option<FaultKind>,
    pub(in crate::forwarder) after: Option<Then>,
}

impl Model {
    /// Turns the model on with `fidelity` (keeps rules, counters, records).
    pub(in crate::forwarder) fn enable(&mut self, fidelity: Fidelity) {
        self.on = true;
        self.visibility = fidelity.visibility;
        self.random = fidelity.random;
        self.template_lag = fidelity.launch_template_lag;
        self.rng = fastrand::Rng::with_seed(fidelity.seed);
    }

    /// Turns the model off again (the plain relay serves every call that no
    /// fault rule matches); records and counters stay for inspection.
    pub(in crate::forwarder) fn disable(&mut self) {
        self.on = false;
        self.random = None;
        self.visibility = Visibility::default();
        self.template_lag = Duration::ZERO;
        self.kill = None;
        self.hidden_from_tags.clear();
    }

    /// Whether the model, not the plain relay, serves this call.
    pub(in crate::forwarder) fn serves(
        &self,
        action: &str,
        params: &BTreeMap<String, String>,
    ) -> bool {
        (self.on && MODELLED.contains(&action))
            || self.faults.iter().any(|(_, f)| f.matches(action, params))
    }

    /// Takes one use of the first matching rule of each kind, and adds the
    /// random profile's draw for launch calls.
    pub(super) fn draw(&mut self, action: &str, params: &BTreeMap<String, String>) -> Drawn {
        let mut drawn = Drawn::default();
        let mut i = 0;
        while i < self.faults.len() {
            let fault = &mut self.faults[i].1;
            let wanted = if fault.is_then() {
                drawn.after.is_none()
            } else {
                drawn.before.is_none()
            };
            if wanted && fault.matches(action, params) {
                match &fault.kind {
                    FaultKind::Then(then) => drawn.after = Some(then.clone()),
                    other => drawn.before = Some(other.clone()),
                }
                if let Some(left) = fault.times.as_mut() {
                    *left = left.saturating_sub(1);
                    if *left == 0 {
                        self.faults.remove(i);
                        continue;
                    }
                }
            }
            i += 1;
        }
        if let Some(profile) = self.random.clone() {
            if matches!(action, "RunInstances" | "CreateFleet") {
                let roll = self.rng.f64();
                let partial = self.rng.f64() < profile.partial;
                if drawn.after.is_none() {
                    if roll < profile.forward_then_500 {
                        drawn.after = Some(Then::Error(InjectedError::internal_error()));
                    } else if roll < profile.forward_then_500 + profile.forward_then_drop {
                        drawn.after = Some(Then::Drop);
                    }
                }
                if drawn.before.is_none() && partial {
                    let asked = launch_size(action, params);
                    if asked > 1 {
                        let k = asked / 2;
                        drawn.before = Some(if action == "RunInstances" {
                            FaultKind::PartialRun(k)
                        } else {
                            FaultKind::PartialFleet(
                                k,
                                super::faults::FleetError::insufficient_capacity(),
                            )
                        });
                    }
                }
            }
        }
        drawn
    }

    /// Records instances seen in a launch answer and picks those that die.
    pub(super) fn launched(&mut self, ids: &[String]) -> Vec<String> {
        let now = Instant::now();
        let mut dying = Vec::new();
        let death_rate = self.random.as_ref().map_or(0.0, |r| r.death);
        let kill = match self.kill.as_mut() {
            Some(k) if k.launches != Some(0) => {
                if let Some(left) = k.launches.as_mut() {
                    *left -= 1;
                }
                Some(k.clone())
            }
            _ => None,
        };
        for (index, id) in ids.iter().enumerate() {
            let mut seen = Seen {
                launched: now,
                terminated: None,
                death: None,
            };
            if let Some(k) = &kill {
                let dies = match k.pick {
                    Pick::First(n) => index < n,
                    Pick::Share(p) => self.rng.f64() < p,
                };
                if dies {
                    seen.death = Some((k.code.clone(), k.message.clone()));
                }
            } else if death_rate > 0.0 && self.rng.f64() < death_rate {
                seen.death = Some((
                    "Server.InsufficientInstanceCapacity".to_string(),
                    "Server.InsufficientInstanceCapacity: Insufficient capacity.".to_string(),
                ));
            }
            if seen.death.is_some() {
                dying.push(id.clone());
            }
            self.instances.entry(id.clone()).or_insert(seen);
        }
        dying
    }

    /// Whether a DescribeInstances answer may need rewriting at all; when
    /// not, it is relayed without being parsed (a bench's large listings).
    pub(super) fn rewrites_reads(&self) -> bool {
        let v = self.visibility;
        let consistent = v.by_id.is_zero()
            && v.by_tag.is_zero()
            && v.stale_after_terminate.is_zero()
            && self.hidden_from_tags.is_empty();
        !consistent
            || self.kill.is_some()
            || self.counters.deaths > 0
            || self.random.as_ref().is_some_and(|r| r.death > 0.0)
    }

    /// How long after the launch answer a death happens.
    pub(super) fn death_delay(&self) -> Duration {
        self.kill
            .as_ref()
            .map_or(Duration::from_secs(3), |k| k.after)
    }
}

/// MaxCount of a RunInstances, TotalTargetCapacity of a CreateFleet.
pub(super) fn launch_size(action: &str, params: &BTreeMap<String, String>) -> u32 {
    let key = if action == "RunInstances" {
        "MaxCount"
    } else {
        "TargetCapacitySpecification.TotalTargetCapacity"
    };
    params.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

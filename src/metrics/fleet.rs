//! Figures about the machines themselves, for the Grafana dashboard the chart
//! ships: machines in status by template, state and capacity type; how long a
//! request waits for Ready; how long calls wait for the client-side EC2 rate
//! limiter. Labels stay bounded: namespace, template, state, capacity type,
//! provider and AWS operation, never a request or instance name.
//!
//! The machines gauge costs no walk over every machine: each reconcile of a
//! request hands in that request's machines (which it holds anyway), and the
//! gauge moves by the difference from what the request counted before.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::api::conditions::{find_condition, READY, TRUE};
use crate::api::{Machine, MachineLifecycle, MachineState};

#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord, EncodeLabelSet)]
struct MachineLabels {
    namespace: String,
    template: String,
    state: &'static str,
    capacity_type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TemplateLabels {
    namespace: String,
    template: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    provider: String,
    operation: &'static str,
}

/// One request's share of the machines gauge.
type Share = BTreeMap<MachineLabels, i64>;

/// The families, registered into the operator's registry by [`super::Metrics`].
pub struct FleetMetrics {
    machines: Family<MachineLabels, Gauge>,
    /// What each request (`namespace/name`) last added to `machines`; the
    /// lock also orders every change of the gauge.
    shares: Mutex<HashMap<String, Share>>,
    request_ready: Family<TemplateLabels, Histogram>,
    rate_limit_wait: Family<OperationLabels, Histogram>,
}

/// The spelling of a machine state in the `state` label (as in status).
fn state_label(state: MachineState) -> &'static str {
    match state {
        MachineState::Unknown => "unknown",
        MachineState::Pending => "pending",
        MachineState::Running => "running",
        MachineState::ShuttingDown => "shutting-down",
        MachineState::Terminated => "terminated",
        MachineState::Stopping => "stopping",
        MachineState::Stopped => "stopped",
    }
}

/// The spelling of a capacity type in the `capacity_type` label.
fn capacity_label(c: Option<MachineLifecycle>) -> &'static str {
    match c {
        Some(MachineLifecycle::OnDemand) => "on-demand",
        Some(MachineLifecycle::Spot) => "spot",
        None => "unknown",
    }
}

impl FleetMetrics {
    /// Creates the families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> FleetMetrics {
        let machines = Family::<MachineLabels, Gauge>::default();
        let request_ready = Family::<TemplateLabels, Histogram>::new_with_constructor(|| {
            // 1 s to ~68 min.
            Histogram::new(exponential_buckets(1.0, 2.0, 13))
        });
        let rate_limit_wait = Family::<OperationLabels, Histogram>::new_with_constructor(|| {
            // 10 ms to ~41 s.
            Histogram::new(exponential_buckets(0.01, 2.0, 13))
        });
        registry.register(
            "machines",
            "Machines listed in MachineRequest status, by namespace, template, state and capacity type (as of each request's last reconcile)",
            machines.clone(),
        );
        registry.register(
            "request_ready_seconds",
            "Time from when a request was last found not Ready (its first reconcile, a raised count, a lost machine) until it is Ready, by namespace and template",
            request_ready.clone(),
        );
        registry.register(
            "aws_rate_limit_wait_seconds",
            "Time a call waited for the client-side EC2 rate limiter's tokens before it was sent, by provider instance and operation (calls that did not wait are not observed)",
            rate_limit_wait.clone(),
        );
        FleetMetrics {
            machines,
            shares: Mutex::new(HashMap::new()),
            request_ready,
            rate_limit_wait,
        }
    }

    /// Sets what request `key` (`namespace/name`) of `template` adds to the
    /// machines gauge: its `machines` as status lists them.
    pub fn request_machines(
        &self,
        key: &str,
        namespace: &str,
        template: &str,
        machines: &[Machine],
    ) {
        let mut share = Share::new();
        for m in machines {
            let labels = MachineLabels {
                namespace: namespace.to_string(),
                template: template.to_string(),
                state: state_label(m.state),
                capacity_type: capacity_label(m.capacity_type),
            };
            *share.entry(labels).or_default() += 1;
        }
        self.replace_share(key, share);
    }

    /// Takes request `key` out of the machines gauge (it is gone).
    pub fn forget_request(&self, key: &str) {
        self.replace_share(key, Share::new());
    }

    fn replace_share(&self, key: &str, share: Share) {
        let mut shares = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        let old = if share.is_empty() {
            shares.remove(key).unwrap_or_default()
        } else {
            shares
                .insert(key.to_string(), share.clone())
                .unwrap_or_default()
        };
        let mut delta: BTreeMap<&MachineLabels, i64> = BTreeMap::new();
        for (labels, n) in &old {
            *delta.entry(labels).or_default() -= n;
        }
        for (labels, n) in &share {
            *delta.entry(labels).or_default() += n;
        }
        for (labels, d) in delta.into_iter().filter(|(_, d)| *d != 0) {
            let left = self.machines.get_or_create(labels).inc_by(d) + d;
            if left == 0 {
                // No series is kept for a template or state nobody has.
                self.machines.remove(labels);
            }
        }
    }

    /// Observes a request becoming Ready, when a status write moves its
    /// Ready condition from `before` to `after`: the time since Ready turned
    /// False (the request's first reconcile, a raised count, a lost
    /// machine), or since it was `created` when its first status write
    /// already says Ready.
    pub fn request_status_written(
        &self,
        namespace: &str,
        template: &str,
        created: Option<Timestamp>,
        before: &[Condition],
        after: &[Condition],
    ) {
        fn ready(cs: &[Condition]) -> Option<(bool, &Condition)> {
            find_condition(cs, READY).map(|c| (c.status == TRUE, c))
        }
        let Some((true, now_ready)) = ready(after) else {
            return;
        };
        let since = match ready(before) {
            Some((true, _)) => return,
            Some((false, c)) => c.last_transition_time.0,
            None => match created {
                Some(t) => t,
                None => return,
            },
        };
        let took = now_ready.last_transition_time.0.as_millisecond() - since.as_millisecond();
        // Clocks of two writers can disagree a little; never a negative time.
        let seconds = took.max(0) as f64 / 1000.0;
        self.request_ready
            .get_or_create(&TemplateLabels {
                namespace: namespace.to_string(),
                template: template.to_string(),
            })
            .observe(seconds);
    }

    /// Records one placeholder sample in every family (see
    /// [`super::Metrics::names`]); the gauge is left as it was.
    pub(super) fn touch_every_family(&self) {
        self.machines
            .get_or_create(&MachineLabels {
                namespace: String::new(),
                template: String::new(),
                state: "probe",
                capacity_type: "probe",
            })
            .set(0);
        self.request_ready
            .get_or_create(&TemplateLabels {
                namespace: String::new(),
                template: String::new(),
            })
            .observe(0.0);
        self.rate_limit_wait("probe", "probe", 0.0);
    }

    /// Observes a call of `operation` that waited `seconds` for the
    /// client-side rate limiter of `provider`.
    pub fn rate_limit_wait(&self, provider: &str, operation: &'static str, seconds: f64) {
        self.rate_limit_wait
            .get_or_create(&OperationLabels {
                provider: provider.to_string(),
                operation,
            })
            .observe(seconds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::conditions::new_condition;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn machine(id: &str, state: MachineState, spot: bool) -> Machine {
        let mut m = Machine::unknown(id);
        m.state = state;
        m.capacity_type = Some(if spot {
            MachineLifecycle::Spot
        } else {
            MachineLifecycle::OnDemand
        });
        m
    }

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encode");
        out
    }

    #[test]
    fn the_machines_gauge_moves_by_each_requests_difference() {
        let mut registry = Registry::with_prefix("hostforge");
        let f = FleetMetrics::register(&mut registry);
        let series = |state: &str, cap: &str| {
            format!("hostforge_machines{{namespace=\"hpc\",template=\"compute\",state=\"{state}\",capacity_type=\"{cap}\"}}")
        };
        f.request_machines(
            "hpc/a",
            "hpc",
            "compute",
            &[
                machine("i-1", MachineState::Running, true),
                machine("i-2", MachineState::Running, true),
                machine("i-3", MachineState::Pending, false),
            ],
        );
        f.request_machines(
            "hpc/b",
            "hpc",
            "compute",
            &[machine("i-4", MachineState::Running, true)],
        );
        let t = text(&registry);
        assert!(
            t.contains(&format!("{} 3", series("running", "spot"))),
            "{t}"
        );
        assert!(
            t.contains(&format!("{} 1", series("pending", "on-demand"))),
            "{t}"
        );
        // a's pending machine runs, one spot machine is gone.
        f.request_machines(
            "hpc/a",
            "hpc",
            "compute",
            &[
                machine("i-1", MachineState::Running, true),
                machine("i-2", MachineState::Terminated, true),
                machine("i-3", MachineState::Running, false),
            ],
        );
        let t = text(&registry);
        assert!(
            t.contains(&format!("{} 2", series("running", "spot"))),
            "{t}"
        );
        assert!(
            t.contains(&format!("{} 1", series("terminated", "spot"))),
            "{t}"
        );
        assert!(
            t.contains(&format!("{} 1", series("running", "on-demand"))),
            "{t}"
        );
        assert!(
            !t.contains(&series("pending", "on-demand")),
            "no empty series: {t}"
        );
        // The same share again changes nothing; a deleted request leaves.
        f.request_machines(
            "hpc/a",
            "hpc",
            "compute",
            &[
                machine("i-1", MachineState::Running, true),
                machine("i-2", MachineState::Terminated, true),
                machine("i-3", MachineState::Running, false),
            ],
        );
        f.forget_request("hpc/a");
        let t = text(&registry);
        assert!(
            t.contains(&format!("{} 1", series("running", "spot"))),
            "{t}"
        );
        assert!(!t.contains(&series("running", "on-demand")), "{t}");
        f.forget_request("hpc/b");
        f.forget_request("hpc/never-seen");
        assert!(!text(&registry).contains("hostforge_machines{"));
    }

    #[test]
    fn ready_is_observed_once_per_transition() {
        let mut registry = Registry::with_prefix("hostforge");
        let f = FleetMetrics::register(&mut registry);
        let at = |s: i64| Time(Timestamp::from_second(1_700_000_000 + s).expect("time"));
        let ready = |yes: bool, s: i64| vec![new_condition("Ready", yes, "R", "", Some(1), at(s))];
        let created = Some(at(0).0);
        // Created at 0, first seen not Ready at 2, Ready at 40: 38 s.
        f.request_status_written("hpc", "compute", created, &[], &ready(false, 2));
        f.request_status_written(
            "hpc",
            "compute",
            created,
            &ready(false, 2),
            &ready(true, 40),
        );
        // Still Ready: nothing.
        f.request_status_written(
            "hpc",
            "compute",
            created,
            &ready(true, 40),
            &ready(true, 40),
        );
        // Count raised at 100, Ready again at 112: 12 s.
        f.request_status_written(
            "hpc",
            "compute",
            created,
            &ready(false, 100),
            &ready(true, 112),
        );
        let t = text(&registry);
        let labels = "{namespace=\"hpc\",template=\"compute\"}";
        assert!(
            t.contains(&format!("hostforge_request_ready_seconds_count{labels} 2")),
            "{t}"
        );
        assert!(
            t.contains(&format!("hostforge_request_ready_seconds_sum{labels} 50.0")),
            "{t}"
        );
        // Ready at its first write: from creation.
        f.request_status_written("hpc", "other", created, &[], &ready(true, 7));
        assert!(text(&registry).contains(
            "hostforge_request_ready_seconds_sum{namespace=\"hpc\",template=\"other\"} 7.0"
        ));
    }

    #[test]
    fn rate_limit_waits_are_observed_by_operation() {
        let mut registry = Registry::with_prefix("hostforge");
        let f = FleetMetrics::register(&mut registry);
        f.rate_limit_wait("aws-default", "RunInstances", 0.5);
        let t = text(&registry);
        assert!(t.contains(
            "hostforge_aws_rate_limit_wait_seconds_count{provider=\"aws-default\",operation=\"RunInstances\"} 1"
        ), "{t}");
    }
}

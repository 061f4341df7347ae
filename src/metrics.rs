//! One Prometheus registry for the whole operator, so every figure an operator
//! of hostforge needs is on `/metrics` with the `hostforge_` prefix and bounded
//! labels (controller names, AWS operation names and error categories; never
//! object names or error text).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::image::CacheObserver;
use crate::provider::CallObserver;

pub mod fleet;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    controller: &'static str,
    category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AwsLabels {
    provider: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TerminationLabels {
    provider: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueMessageLabels {
    provider: String,
    kind: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    result: &'static str,
}

/// The operator's metrics; shared through `Arc` by controllers and adapters.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram>,
    status_writes: Family<ControllerLabels, Counter>,
    aws_calls: Family<AwsLabels, Counter>,
    aws_call_duration: Family<AwsLabels, Histogram>,
    image_cache: Family<CacheLabels, Counter>,
    polls: Family<ProviderLabels, Counter>,
    sweeps: Family<ProviderLabels, Counter>,
    launched: Family<ProviderLabels, Counter>,
    terminated: Family<TerminationLabels, Counter>,
    templates_collected: Family<ProviderLabels, Counter>,
    foreign_machines: Family<ProviderLabels, Gauge>,
    orphans_held: Family<ProviderLabels, Gauge>,
    orphan_brakes: Family<ProviderLabels, Counter>,
    queue_messages: Family<QueueMessageLabels, Counter>,
    queue_failures: Family<ProviderLabels, Counter>,
    queue_up: Family<ProviderLabels, Gauge>,
    /// Machines by template and state, request-to-Ready time, rate-limit
    /// waits: the dashboard's figures about the fleet.
    pub fleet: fleet::FleetMetrics,
    status_check_failures: Family<ProviderLabels, Counter>,
    impaired_machines: Family<ProviderLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every family under the `hostforge` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("hostforge");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Family::<ControllerLabels, Histogram>::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            });
        let status_writes = Family::<ControllerLabels, Counter>::default();
        let aws_calls = Family::<AwsLabels, Counter>::default();
        let aws_call_duration = Family::<AwsLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let image_cache = Family::<CacheLabels, Counter>::default();
        let polls = Family::<ProviderLabels, Counter>::default();
        let sweeps = Family::<ProviderLabels, Counter>::default();
        let launched = Family::<ProviderLabels, Counter>::default();
        let terminated = Family::<TerminationLabels, Counter>::default();
        let templates_collected = Family::<ProviderLabels, Counter>::default();
        let foreign_machines = Family::<ProviderLabels, Gauge>::default();
        let orphans_held = Family::<ProviderLabels, Gauge>::default();
        let orphan_brakes = Family::<ProviderLabels, Counter>::default();
        let queue_messages = Family::<QueueMessageLabels, Counter>::default();
        let queue_failures = Family::<ProviderLabels, Counter>::default();
        let queue_up = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "interruption_queue_messages",
            "Messages taken from the interruption queue, by provider instance, event kind (or malformed) and outcome (applied, unknown_instance, ignored, malformed, redelivered)",
            queue_messages.clone(),
        );
        registry.register(
            "interruption_queue_failures",
            "Receives or deletes on the interruption queue that failed (the spot notice polling covers for the queue meanwhile)",
            queue_failures.clone(),
        );
        registry.register(
            "interruption_queue_up",
            "1 while the provider's interruption queue answers (spot notices are not polled then), 0 while it does not",
            queue_up.clone(),
        );
        registry.register(
            "foreign_machines",
            "Machines carrying this cluster's name but another cluster's identity, as of the last full sweep (left alone; two clusters share a clusterName)",
            foreign_machines.clone(),
        );
        registry.register(
            "orphans_held",
            "Orphans the last sweep did not terminate: a dry run, or more than orphanCollection allows at once",
            orphans_held.clone(),
        );
        registry.register(
            "orphan_brake_engaged",
            "Sweeps that found more orphans than orphanCollection allows at once and terminated none",
            orphan_brakes.clone(),
        );
        registry.register(
            "launch_templates_collected",
            "Leftover launch templates (crash, lost leadership, failed delete) the collector deleted, by provider instance",
            templates_collected.clone(),
        );
        registry.register(
            "machine_polls",
            "Batched describes of changing machines (one per provider per poll interval with work)",
            polls.clone(),
        );
        registry.register(
            "machine_sweeps",
            "Listings of every machine the cluster owns (adoption, lost machines, garbage collection)",
            sweeps.clone(),
        );
        registry.register(
            "machines_launched",
            "Machines the cloud reported launched, by provider instance",
            launched.clone(),
        );
        registry.register(
            "machines_terminated",
            "Machines the operator asked the cloud to terminate, by provider instance and reason",
            terminated.clone(),
        );
        registry.register(
            "reconciles",
            "Reconciles run, by controller",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by controller and error category",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile, by controller",
            reconcile_duration.clone(),
        );
        registry.register(
            "status_writes",
            "Status patches sent to the apiserver, by controller",
            status_writes.clone(),
        );
        registry.register(
            "aws_calls",
            "AWS API calls, by provider instance, operation and outcome",
            aws_calls.clone(),
        );
        registry.register(
            "aws_call_duration_seconds",
            "AWS API call latency, by provider instance, operation and outcome",
            aws_call_duration.clone(),
        );
        registry.register(
            "image_cache_lookups",
            "Image resolutions served from the cache (hit) or the provider (miss)",
            image_cache.clone(),
        );
        let fleet = fleet::FleetMetrics::register(&mut registry);
        let status_check_failures = Family::<ProviderLabels, Counter>::default();
        let impaired_machines = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "status_check_failures",
            "Machines newly found failing the cloud's instance or system status check (impaired), by provider instance",
            status_check_failures.clone(),
        );
        registry.register(
            "impaired_machines",
            "Machines held by requests that fail a status check as of the provider's last status-check listing",
            impaired_machines.clone(),
        );
        Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            status_writes,
            aws_calls,
            aws_call_duration,
            image_cache,
            polls,
            sweeps,
            launched,
            terminated,
            templates_collected,
            foreign_machines,
            orphans_held,
            orphan_brakes,
            queue_messages,
            queue_failures,
            queue_up,
            fleet,
            status_check_failures,
            impaired_machines,
        }
    }

    /// Counts one message taken from `provider`'s interruption queue:
    /// `kind` is the event's kind (or `malformed`), `outcome` what became of it.
    pub fn queue_message(&self, provider: &str, kind: &'static str, outcome: &'static str) {
        self.queue_messages
            .get_or_create(&QueueMessageLabels {
                provider: provider.to_string(),
                kind,
                outcome,
            })
            .inc();
    }

    /// Counts a failed receive or delete on `provider`'s interruption queue.
    pub fn queue_failure(&self, provider: &str) {
        self.queue_failures
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// Whether `provider`'s interruption queue answers right now.
    pub fn queue_up(&self, provider: &str, up: bool) {
        self.queue_up
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(i64::from(up));
    }

    /// Records one batched describe by the poller.
    pub fn poll(&self, provider: &str) {
        self.polls
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// Records one sweep over a provider's owned machines.
    pub fn sweep(&self, provider: &str) {
        self.sweeps
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// Records `n` machines launched.
    pub fn launched(&self, provider: &str, n: usize) {
        self.launched
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc_by(n as u64);
    }

    /// Records `n` leftover launch templates deleted by the collector.
    pub fn launch_templates_collected(&self, provider: &str, n: usize) {
        self.templates_collected
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc_by(n as u64);
    }

    /// Records `n` machines sent to termination for `reason` (e.g. `ScaledDown`,
    /// `Orphan`).
    pub fn terminated(&self, provider: &str, reason: &'static str, n: usize) {
        self.terminated
            .get_or_create(&TerminationLabels {
                provider: provider.to_string(),
                reason,
            })
            .inc_by(n as u64);
    }

    /// Sets how many machines with this cluster's name but another
    /// identity the last full sweep of `provider` listed.
    pub fn foreign_machines(&self, provider: &str, n: usize) {
        self.foreign_machines
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets how many orphans the last sweep of `provider` left running (a
    /// dry run or the brake).
    pub fn orphans_held(&self, provider: &str, n: usize) {
        self.orphans_held
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Records one sweep of `provider` whose orphans the brake held.
    pub fn orphan_brake_engaged(&self, provider: &str) {
        self.orphan_brakes
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc();
    }

    /// Records one finished reconcile and, when it failed, its error category.
    pub fn reconcile(&self, controller: &'static str, took: Duration, error: Option<&'static str>) {
        let labels = ControllerLabels { controller };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
        if let Some(category) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    controller,
                    category,
                })
                .inc();
        }
    }

    /// Records one status patch sent by `controller`.
    pub fn status_write(&self, controller: &'static str) {
        self.status_writes
            .get_or_create(&ControllerLabels { controller })
            .inc();
    }

    /// Counts `n` machines of `provider` newly found failing a status check.
    pub fn status_check_failures(&self, provider: &str, n: usize) {
        self.status_check_failures
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .inc_by(n as u64);
    }

    /// Sets how many held machines of `provider` fail a status check.
    pub fn impaired_machines(&self, provider: &str, n: usize) {
        self.impaired_machines
            .get_or_create(&ProviderLabels {
                provider: provider.to_string(),
            })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    /// Every sample name `/metrics` can carry, whether or not a family has
    /// samples yet (the text format leaves out a labelled family until it is
    /// first used): a throwaway registry with every family touched once is
    /// encoded and its `# TYPE` lines read, with the suffixes the format adds
    /// (`_total` for counters, `_bucket`, `_sum`, `_count` for histograms).
    /// Dashboards and alerts are checked against this list.
    pub fn names() -> Result<std::collections::BTreeSet<String>, std::fmt::Error> {
        let probe = Metrics::new();
        probe.touch_every_family();
        Ok(sample_names(&probe.encode()?))
    }

    /// Records one placeholder sample in every family, so each is encoded.
    /// A family added to [`Metrics::new`] needs its line here (a test counts
    /// the registry's descriptors against the encoded families).
    fn touch_every_family(&self) {
        let p = "probe";
        self.reconcile(p, Duration::ZERO, Some(p));
        self.status_write(p);
        self.aws_call(p, p, p, 0.0);
        self.image_cache(true);
        self.poll(p);
        self.sweep(p);
        self.launched(p, 0);
        self.terminated(p, p, 0);
        self.launch_templates_collected(p, 0);
        self.foreign_machines(p, 0);
        self.orphans_held(p, 0);
        self.orphan_brake_engaged(p);
        self.queue_message(p, p, p);
        self.queue_failure(p);
        self.queue_up(p, true);
        self.status_check_failures(p, 0);
        self.impaired_machines(p, 0);
        self.fleet.touch_every_family();
    }

    /// How many families are registered (from the registry's descriptors).
    #[cfg(test)]
    fn registered(&self) -> usize {
        format!("{:?}", self.registry)
            .matches("Descriptor {")
            .count()
    }
}

impl CallObserver for Metrics {
    fn aws_call(
        &self,
        provider: &str,
        operation: &'static str,
        outcome: &'static str,
        seconds: f64,
    ) {
        let labels = AwsLabels {
            provider: provider.to_string(),
            operation,
            outcome,
        };
        self.aws_calls.get_or_create(&labels).inc();
        self.aws_call_duration
            .get_or_create(&labels)
            .observe(seconds);
    }

    fn rate_limit_wait(&self, provider: &str, operation: &'static str, seconds: f64) {
        self.fleet.rate_limit_wait(provider, operation, seconds);
    }
}

impl CacheObserver for Metrics {
    fn image_cache(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.image_cache
            .get_or_create(&CacheLabels { result })
            .inc();
    }
}

/// The sample names of a text exposition, from its `# TYPE` lines.
fn sample_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            "info" => &["_info"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registered_family_is_touched_for_names() {
        let m = Metrics::new();
        m.touch_every_family();
        let text = m.encode().expect("encode");
        let encoded = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
        assert!(encoded > 20, "{text}");
        assert_eq!(
            encoded,
            m.registered(),
            "a family registered in Metrics::new has no line in touch_every_family:\n{text}"
        );
    }

    #[test]
    fn names_cover_every_family_before_it_has_samples() {
        let names = Metrics::names().expect("names");
        for name in [
            "hostforge_reconciles_total",
            "hostforge_reconcile_errors_total",
            "hostforge_reconcile_duration_seconds_bucket",
            "hostforge_reconcile_duration_seconds_sum",
            "hostforge_reconcile_duration_seconds_count",
            "hostforge_interruption_queue_up",
            "hostforge_machines",
            "hostforge_request_ready_seconds_bucket",
            "hostforge_aws_rate_limit_wait_seconds_count",
            "hostforge_status_check_failures_total",
            "hostforge_impaired_machines",
        ] {
            assert!(names.contains(name), "{name} not in {names:?}");
        }
        assert!(
            !names.contains("hostforge_reconciles"),
            "a counter's samples end in _total"
        );
        assert!(!names.contains("hostforge_machines_total"));
    }

    #[test]
    fn text_format_carries_prefix_and_bounded_labels() {
        let m = Metrics::new();
        m.reconcile("template", Duration::from_millis(3), Some("ImageNotFound"));
        m.aws_call("aws-default", "GetParameter", "ok", 0.01);
        m.image_cache(true);
        m.status_write("template");
        let text = m.encode().expect("encode");
        assert!(text.contains("hostforge_reconciles_total{controller=\"template\"} 1"));
        assert!(text.contains(
            "hostforge_reconcile_errors_total{controller=\"template\",category=\"ImageNotFound\"} 1"
        ));
        assert!(text.contains(
            "hostforge_aws_calls_total{provider=\"aws-default\",operation=\"GetParameter\",outcome=\"ok\"} 1"
        ));
        assert!(text.contains("hostforge_image_cache_lookups_total{result=\"hit\"} 1"));
    }
}

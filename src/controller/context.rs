//! What every reconcile needs, built once by the operator runtime and shared
//! through an `Arc`: no DI container, plain fields.

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::Store;
use kube::Client;

use super::backoff::{Backoff, Superseded};
use super::cloud::batch_lookups::BatchLookups;
use super::cloud::capacity::CapacityCache;
use super::cloud::poller::Tracker;
use super::cloud::sweep::FullSweepSignal;
use super::cloud::terminations::Terminations;
use super::request::coalesce::Coalescer;
use super::template::base_template::BaseTemplates;
use super::template::namespaces::NamespaceLabels;
use super::template::selection::Selections;
use super::watch::Synced;
use crate::api::{MachineRequest, MachineTemplate};
use crate::config::OperatorConfig;
use crate::image::ImageResolver;
use crate::metrics::Metrics;
use crate::provider::registry::ProviderRegistry;

/// Shared state of the controllers.
pub struct Context {
    /// The Kubernetes client (the only store hostforge has).
    pub client: Client,
    /// The validated operator configuration.
    pub config: Arc<OperatorConfig>,
    /// Named provider instances from the configuration.
    pub providers: Arc<ProviderRegistry>,
    /// Image resolution with its TTL cache, shared by all templates.
    pub images: Arc<ImageResolver>,
    /// The operator's metrics registry.
    pub metrics: Arc<Metrics>,
    /// Publishes Kubernetes Events on the objects we reconcile.
    pub recorder: Recorder,
    /// Every MachineTemplate, as the template controller's watch sees them.
    pub templates: Store<MachineTemplate>,
    /// Every MachineRequest, as the request controller's watch sees them.
    pub requests: Store<MachineRequest>,
    /// Set once the template watch has listed everything.
    pub templates_synced: Synced,
    /// Set once the request watch has listed everything.
    pub requests_synced: Synced,
    /// What the cloud last said about each machine; the one poll loop.
    pub tracker: Arc<Tracker>,
    /// Offerings that recently had no capacity.
    pub capacity: CapacityCache,
    /// Per-object retry delays after failed reconciles.
    pub backoff: Backoff,
    /// Status versions this process wrote over (stale watch copies).
    pub superseded: Superseded,
    /// Lookups of pending launch batches, answered together.
    pub batch_lookups: BatchLookups,
    /// The only namespace watched, if the operator is namespace-scoped: the
    /// sweep then leaves other namespaces' machines alone.
    pub namespace: Option<String>,
    /// Asks the sweep for a full listing (see [`FullSweepSignal`]).
    pub full_sweep: FullSweepSignal,
    /// This cluster's identity, tagged on every machine and launch template
    /// it creates (see [`crate::controller::cloud::ownership::CLUSTER_ID_TAG`]):
    /// what the sweep and the template collector require before they adopt,
    /// collect or delete anything.
    pub cluster_id: String,
    /// The launch queues that let requests of one template share a call.
    pub coalescer: Arc<Coalescer>,
    /// The termination queues that let requests share a TerminateInstances.
    pub terminations: Terminations,
    /// Namespaces' labels, read for tenant policies with a
    /// `namespaceSelector` by the template controller and last known to the
    /// request gate.
    pub namespace_labels: NamespaceLabels,
    /// Subnets and security groups templates select by tags, cached for
    /// `selectorRefreshInterval`.
    pub selections: Selections,
    /// Users' launch templates as last described, cached for `imageCacheTtl`.
    pub base_templates: BaseTemplates,
}

/// The parts of [`Context`] that come from the controllers' watches.
pub struct Watches {
    /// The template controller's store.
    pub templates: Store<MachineTemplate>,
    /// The request controller's store.
    pub requests: Store<MachineRequest>,
    /// The template watch's first sync.
    pub templates_synced: Synced,
    /// The request watch's first sync.
    pub requests_synced: Synced,
    /// The shared machine tracker.
    pub tracker: Arc<Tracker>,
    /// The watched namespace, if not all.
    pub namespace: Option<String>,
}

impl Context {
    /// Builds the context; the Event reporter is named after the operator.
    pub fn new(
        client: Client,
        config: Arc<OperatorConfig>,
        providers: Arc<ProviderRegistry>,
        images: Arc<ImageResolver>,
        metrics: Arc<Metrics>,
        watches: Watches,
        cluster_id: String,
    ) -> Self {
        let reporter = Reporter {
            controller: "hostforge".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        let capacity = CapacityCache::new(config.capacity_cooldown);
        let selections = Selections::new(config.selector_refresh_interval);
        let base_templates = BaseTemplates::new(config.image_cache_ttl);
        Context {
            config,
            providers,
            images,
            metrics,
            recorder,
            templates: watches.templates,
            requests: watches.requests,
            templates_synced: watches.templates_synced,
            requests_synced: watches.requests_synced,
            tracker: watches.tracker,
            capacity,
            backoff: Backoff::default(),
            superseded: Superseded::default(),
            batch_lookups: BatchLookups::default(),
            namespace: watches.namespace,
            full_sweep: FullSweepSignal::default(),
            coalescer: Arc::new(Coalescer::new(client.clone())),
            terminations: Terminations::default(),
            client,
            cluster_id,
            namespace_labels: NamespaceLabels::default(),
            selections,
            base_templates,
        }
    }
}

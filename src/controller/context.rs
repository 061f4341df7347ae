//! What every reconcile needs, built once by the operator runtime and shared
//! through an `Arc`: no DI container, plain fields.

use std::sync::Arc;

use kube::runtime::events::{Recorder, Reporter};
use kube::Client;

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
}

impl Context {
    /// Builds the context; the Event reporter is named after the operator.
    pub fn new(
        client: Client,
        config: Arc<OperatorConfig>,
        providers: Arc<ProviderRegistry>,
        images: Arc<ImageResolver>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let reporter = Reporter {
            controller: "hostforge".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let recorder = Recorder::new(client.clone(), reporter);
        Context {
            client,
            config,
            providers,
            images,
            metrics,
            recorder,
        }
    }
}

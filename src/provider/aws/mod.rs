//! The AWS adapter of the provider port: EC2 for images, instances and network
//! checks, SSM for image parameters. Each job lives in its own module; this
//! one only wires them to the [`MachineProvider`] trait.

mod calls;
pub mod clients;
mod describe;
pub mod errors;
pub mod event_message;
mod images;
mod instance_types;
mod launch;
pub mod launch_templates;
pub mod limits;
mod pages;
pub mod queue;
mod selectors;
mod spot;
mod status_checks;
mod tags;
mod terminate;
mod user_templates;
mod validate;
mod zones;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_ec2::config::SharedCredentialsProvider;

pub use clients::AwsClients;
pub use queue::SqsQueue;

use calls::Calls;
use limits::Limiter;

use crate::config::rate_limits::RateLimitConfig;
use crate::config::ProviderConfig;
use crate::provider::{
    CallObserver, ImageSource, Impairment, InstanceTypeInfo, InterruptionNotice, LaunchAnswer,
    LaunchSpec, Machine, MachineProvider, OwnedLaunchTemplate, ProviderError, ResolvedImage,
    SecurityGroupFacts, SubnetFacts, TagQuery,
};

/// One configured AWS account and region.
pub struct AwsProvider {
    clients: AwsClients,
    calls: Calls,
    type_info: instance_types::InfoCache,
    zones: zones::ZoneCache,
    templates: launch::TemplateCache,
}

impl AwsProvider {
    /// Builds the adapter for a provider instance of the config, with the
    /// standard credential chain.
    pub async fn connect(config: &ProviderConfig, observer: Arc<dyn CallObserver>) -> AwsProvider {
        let clients = AwsClients::connect(config).await;
        AwsProvider::with_limits(&config.name, clients, observer, &config.rate_limits)
    }

    /// Builds the adapter with fixed credentials (simulators, tests).
    pub async fn connect_with_credentials(
        config: &ProviderConfig,
        credentials: SharedCredentialsProvider,
        observer: Arc<dyn CallObserver>,
    ) -> AwsProvider {
        let clients = AwsClients::connect_with_credentials(config, credentials).await;
        AwsProvider::with_limits(&config.name, clients, observer, &config.rate_limits)
    }

    /// Wraps clients built elsewhere; `name` is what metrics and cache keys say.
    /// EC2's default rate limits apply.
    pub fn new(name: &str, clients: AwsClients, observer: Arc<dyn CallObserver>) -> AwsProvider {
        AwsProvider::with_limits(name, clients, observer, &RateLimitConfig::default())
    }

    /// [`AwsProvider::new`] with the client-side rate limits of `limits`.
    pub fn with_limits(
        name: &str,
        clients: AwsClients,
        observer: Arc<dyn CallObserver>,
        limits: &RateLimitConfig,
    ) -> AwsProvider {
        let limiter = Arc::new(Limiter::new(limits.clone()));
        AwsProvider {
            clients,
            calls: Calls::new(name, observer, limiter),
            type_info: instance_types::InfoCache::default(),
            zones: zones::ZoneCache::default(),
            templates: launch::TemplateCache::default(),
        }
    }

    /// The SDK clients, for the launch strategies that build on this adapter.
    pub fn clients(&self) -> &AwsClients {
        &self.clients
    }
}

#[async_trait]
impl MachineProvider for AwsProvider {
    fn name(&self) -> &str {
        self.calls.provider()
    }

    async fn lookup_image(&self, source: &ImageSource) -> Result<ResolvedImage, ProviderError> {
        images::lookup(&self.clients, &self.calls, source).await
    }

    async fn missing_subnets(&self, ids: &[String]) -> Result<Vec<String>, ProviderError> {
        validate::missing_subnets(&self.clients, &self.calls, ids).await
    }

    async fn missing_security_groups(&self, ids: &[String]) -> Result<Vec<String>, ProviderError> {
        validate::missing_security_groups(&self.clients, &self.calls, ids).await
    }

    async fn select_subnets(&self, tags: &TagQuery) -> Result<Vec<SubnetFacts>, ProviderError> {
        selectors::subnets(&self.clients, &self.calls, tags).await
    }

    async fn select_security_groups(
        &self,
        tags: &TagQuery,
    ) -> Result<Vec<SecurityGroupFacts>, ProviderError> {
        selectors::security_groups(&self.clients, &self.calls, tags).await
    }

    async fn unknown_instance_types(&self, types: &[String]) -> Result<Vec<String>, ProviderError> {
        validate::unknown_instance_types(&self.clients, &self.calls, types).await
    }

    async fn missing_placement_groups(
        &self,
        names: &[String],
    ) -> Result<Vec<String>, ProviderError> {
        validate::missing_placement_groups(&self.clients, &self.calls, names).await
    }

    async fn launch_template_version(
        &self,
        query: &crate::provider::LaunchTemplateQuery,
    ) -> Result<Option<crate::provider::LaunchTemplateVersion>, ProviderError> {
        user_templates::resolve(&self.clients, &self.calls, query).await
    }

    async fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> Result<Option<InstanceTypeInfo>, ProviderError> {
        instance_types::info(&self.clients, &self.calls, &self.type_info, instance_type).await
    }

    async fn describe_machines(&self, ids: &[String]) -> Result<Vec<Machine>, ProviderError> {
        describe::by_ids(&self.clients, &self.calls, ids).await
    }

    async fn describe_owned(
        &self,
        tags: &[(String, String)],
    ) -> Result<Vec<Machine>, ProviderError> {
        describe::by_tags(&self.clients, &self.calls, tags).await
    }

    async fn list_owned(
        &self,
        tags: &[(String, String)],
        down_only: bool,
        page: &mut (dyn FnMut(Vec<Machine>) + Send),
    ) -> Result<(), ProviderError> {
        describe::pages_by_tags(&self.clients, &self.calls, tags, down_only, page).await
    }

    async fn describe_owned_any(
        &self,
        tags: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<Machine>, ProviderError> {
        describe::by_tag_values(&self.clients, &self.calls, tags, key, values).await
    }

    async fn interruption_notices(
        &self,
        ids: &[String],
    ) -> Result<Vec<InterruptionNotice>, ProviderError> {
        spot::notices(&self.clients, &self.calls, ids).await
    }

    async fn impaired_machines(&self) -> Result<Vec<Impairment>, ProviderError> {
        status_checks::impaired(&self.clients, &self.calls).await
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), ProviderError> {
        terminate::terminate(&self.clients, &self.calls, ids).await
    }

    async fn validate_launch(&self, spec: &LaunchSpec) -> Result<(), ProviderError> {
        launch::validate(&self.clients, &self.calls, spec).await
    }

    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchAnswer, ProviderError> {
        launch::launch(&self.clients, &self.calls, &self.templates, spec).await
    }

    async fn default_zones(&self) -> Result<Vec<String>, ProviderError> {
        zones::default_zones(&self.clients, &self.calls, &self.zones).await
    }

    async fn list_launch_templates(
        &self,
        tags: &[(String, String)],
    ) -> Result<Vec<OwnedLaunchTemplate>, ProviderError> {
        launch_templates::list(&self.clients, &self.calls, tags).await
    }

    async fn delete_launch_template(&self, id: &str) -> Result<(), ProviderError> {
        launch_templates::delete(&self.clients, &self.calls, id).await
    }

    fn launch_templates_in_use(&self, idle: Duration) -> HashSet<String> {
        self.templates.keep(Instant::now(), idle)
    }
}

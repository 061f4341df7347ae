//! The named provider instances of the operator config, built once at start.
//! Templates pick one by name; supporting another cloud means an adapter and
//! one match arm in [`ProviderRegistry::new`].

use std::collections::BTreeMap;
use std::sync::Arc;

use super::aws::AwsProvider;
use super::{CallObserver, MachineProvider};
use crate::config::{OperatorConfig, ProviderKind};

/// Why the registry could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Two provider instances share a name (a config that skipped validation).
    #[error("provider {0:?} is configured twice")]
    DuplicateName(String),
    /// The default provider is not among the instances.
    #[error("default provider {0:?} is not configured")]
    UnknownDefault(String),
}

/// Provider instances by name.
pub struct ProviderRegistry {
    providers: BTreeMap<String, Arc<dyn MachineProvider>>,
    /// Names in config order, for messages.
    order: Vec<String>,
    default: String,
}

impl ProviderRegistry {
    /// Builds one adapter (with its own cloud clients) per configured instance.
    pub async fn new(
        config: &OperatorConfig,
        observer: Arc<dyn CallObserver>,
    ) -> Result<ProviderRegistry, RegistryError> {
        let mut providers: Vec<Arc<dyn MachineProvider>> =
            Vec::with_capacity(config.providers.len());
        for p in &config.providers {
            let provider: Arc<dyn MachineProvider> = match p.kind {
                ProviderKind::Aws => Arc::new(AwsProvider::connect(p, observer.clone()).await),
            };
            providers.push(provider);
        }
        ProviderRegistry::from_providers(&config.default_provider, providers)
    }

    /// A registry of ready-made providers (tests use in-memory fakes); names
    /// come from [`MachineProvider::name`].
    pub fn from_providers(
        default: &str,
        providers: Vec<Arc<dyn MachineProvider>>,
    ) -> Result<ProviderRegistry, RegistryError> {
        let mut map = BTreeMap::new();
        let mut order = Vec::with_capacity(providers.len());
        for p in providers {
            let name = p.name().to_string();
            if map.insert(name.clone(), p).is_some() {
                return Err(RegistryError::DuplicateName(name));
            }
            order.push(name);
        }
        if !map.contains_key(default) {
            return Err(RegistryError::UnknownDefault(default.to_string()));
        }
        Ok(ProviderRegistry {
            providers: map,
            order,
            default: default.to_string(),
        })
    }

    /// The provider instance called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn MachineProvider>> {
        self.providers.get(name).cloned()
    }

    /// The instance used by templates that name none.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    /// The default provider instance.
    pub fn default_provider(&self) -> Option<Arc<dyn MachineProvider>> {
        self.get(&self.default)
    }

    /// All instance names in config order, for messages listing the choices.
    pub fn names(&self) -> Vec<&str> {
        self.order.iter().map(String::as_str).collect()
    }
}

impl std::fmt::Debug for ProviderRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderRegistry")
            .field("providers", &self.order)
            .field("default", &self.default)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::NoopObserver;

    #[tokio::test]
    async fn builds_one_provider_per_config_entry() {
        let config = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: east, type: aws, region: us-east-1, endpointUrl: 'http://127.0.0.1:9'}\n- {name: west, type: aws, region: us-west-2, endpointUrl: 'http://127.0.0.1:9'}\ndefaultProvider: west\n",
        )
        .expect("valid config");
        let reg = ProviderRegistry::new(&config, Arc::new(NoopObserver))
            .await
            .expect("registry");
        assert_eq!(reg.names(), ["east", "west"]);
        assert_eq!(reg.default_name(), "west");
        assert_eq!(
            reg.get("east").map(|p| p.name().to_string()).as_deref(),
            Some("east")
        );
        assert_eq!(
            reg.default_provider()
                .map(|p| p.name().to_string())
                .as_deref(),
            Some("west")
        );
        assert!(reg.get("north").is_none());
    }

    #[tokio::test]
    async fn rejects_duplicates_and_unknown_default() {
        let config = OperatorConfig::from_yaml(
            "clusterName: c\nproviders:\n- {name: a, type: aws, region: us-east-1}\n",
        )
        .expect("valid config");
        let reg = ProviderRegistry::new(&config, Arc::new(NoopObserver))
            .await
            .expect("registry");
        let a = reg.get("a").expect("a");
        assert_eq!(
            ProviderRegistry::from_providers("a", vec![a.clone(), a.clone()]).err(),
            Some(RegistryError::DuplicateName("a".into()))
        );
        assert_eq!(
            ProviderRegistry::from_providers("b", vec![a]).err(),
            Some(RegistryError::UnknownDefault("b".into()))
        );
    }
}

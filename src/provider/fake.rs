//! One programmable [`MachineProvider`] for unit tests, so a test module
//! scripts only the answers it cares about instead of hand-writing all
//! thirteen methods of the port (and keeping that copy in step with it).
//!
//! Everything is set through `&self` after construction, so a test keeps an
//! `Arc<FakeProvider>` for programming and reading counts while the code
//! under test holds the same fake as an `Arc<dyn MachineProvider>`. Methods
//! nobody programs answer benignly: empty lists, no type info, `Ok`.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use super::{
    ErrorDetail, ImageSource, InstanceTypeInfo, InterruptionNotice, LaunchAnswer, LaunchSpec,
    Machine, MachineProvider, ProviderError, ResolvedImage, SecurityGroupFacts, SubnetFacts,
    TagQuery,
};

/// A provider whose answers a test programs and whose calls it counts.
#[derive(Default)]
pub struct FakeProvider {
    name: String,
    /// How long every call takes (virtual time under a paused clock).
    delay: Mutex<Duration>,
    /// The machines tag look-ups answer from.
    machines: Mutex<Vec<Machine>>,
    /// Results of the next `lookup_image` calls, in order; `Ok` forever after.
    image_script: Mutex<VecDeque<Result<(), ProviderError>>>,
    /// What `describe_owned_any` fails with, if anything.
    describe_error: Mutex<Option<ProviderError>>,
    /// Ids `terminate` answers NotFound for.
    unknown_ids: Mutex<Vec<String>>,
    /// An id `terminate` answers Throttled for.
    failing_id: Mutex<Option<String>>,
    /// What `default_zones` answers.
    zones: Mutex<Vec<String>>,
    /// Whether the next call panics (a bug below the provider port).
    panic_once: AtomicBool,
    calls: Mutex<HashMap<&'static str, usize>>,
    terminate_calls: Mutex<Vec<Vec<String>>>,
    in_flight: AtomicUsize,
    most_in_flight: AtomicUsize,
}

/// Locks `m` even if a panicking test thread poisoned it: the fake's state
/// stays meaningful, and a poisoned lock must not hide the original panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `terminate` reports for an unknown or failing id.
fn terminate_detail() -> ErrorDetail {
    ErrorDetail {
        operation: "TerminateInstances",
        code: "InvalidInstanceID.NotFound".into(),
        message: String::new(),
    }
}

impl FakeProvider {
    /// A fake named `name` (the provider instance name, which callers use in
    /// cache keys), answering everything benignly and at once.
    pub fn new(name: &str) -> Arc<FakeProvider> {
        Arc::new(FakeProvider {
            name: name.into(),
            ..Default::default()
        })
    }

    /// Every call now takes `delay` before answering, so tests can overlap
    /// calls and see coalescing and in-flight limits.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.delay) = delay;
    }

    /// Tag look-ups (`describe_owned_any`) answer from these machines.
    pub fn with_machines(&self, machines: Vec<Machine>) {
        *lock(&self.machines) = machines;
    }

    /// Queues the result of the next unscripted `lookup_image` call; an `Ok`
    /// (and every call once the script is used up) resolves to `ami-<n>`,
    /// where n counts the earlier `lookup_image` calls.
    pub fn script_image(&self, result: Result<(), ProviderError>) {
        lock(&self.image_script).push_back(result);
    }

    /// `describe_owned_any` fails with `err` from now on.
    pub fn fail_describe(&self, err: ProviderError) {
        *lock(&self.describe_error) = Some(err);
    }

    /// `terminate` answers NotFound for any call naming one of `ids`, as EC2
    /// rejects a whole batch for one unknown id.
    pub fn unknown_ids(&self, ids: &[&str]) {
        *lock(&self.unknown_ids) = ids.iter().map(|s| s.to_string()).collect();
    }

    /// `terminate` answers Throttled for any call naming `id` (and no unknown
    /// id).
    pub fn failing_id(&self, id: &str) {
        *lock(&self.failing_id) = Some(id.to_string());
    }

    /// `default_zones` answers `zones` from now on (none by default: no pinning).
    pub fn set_default_zones(&self, zones: &[&str]) {
        *lock(&self.zones) = zones.iter().map(|z| z.to_string()).collect();
    }

    /// The next call of any method panics after its delay, like a bug below
    /// the provider port.
    pub fn panic_once(&self) {
        self.panic_once.store(true, Ordering::SeqCst);
    }

    /// How many times `operation` (a trait method name, e.g.
    /// `"lookup_image"`) has been called.
    pub fn calls(&self, operation: &str) -> usize {
        lock(&self.calls).get(operation).copied().unwrap_or(0)
    }

    /// The ids of every `terminate` call, in call order.
    pub fn terminate_calls(&self) -> Vec<Vec<String>> {
        lock(&self.terminate_calls).clone()
    }

    /// The most calls that were ever in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.most_in_flight.load(Ordering::SeqCst)
    }

    /// Counts a call of `operation`, waits the delay while it is in flight,
    /// and panics if told to. Returns how many earlier calls of `operation`
    /// there were.
    async fn call(&self, operation: &'static str) -> usize {
        let earlier = {
            let mut calls = lock(&self.calls);
            let n = calls.entry(operation).or_default();
            *n += 1;
            *n - 1
        };
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        let delay = *lock(&self.delay);
        tokio::time::sleep(delay).await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if self.panic_once.swap(false, Ordering::SeqCst) {
            panic!("a bug below the provider port");
        }
        earlier
    }
}

#[async_trait]
impl MachineProvider for FakeProvider {
    fn name(&self) -> &str {
        &self.name
    }

    async fn lookup_image(&self, source: &ImageSource) -> Result<ResolvedImage, ProviderError> {
        let n = self.call("lookup_image").await;
        let scripted = lock(&self.image_script).pop_front();
        scripted.unwrap_or(Ok(()))?;
        Ok(ResolvedImage {
            id: format!("ami-{n}"),
            name: Some(source.to_string()),
            creation_date: None,
            source: source.kind().to_string(),
            root_device_name: None,
            owner_id: None,
            owner_alias: None,
        })
    }

    async fn missing_subnets(&self, _: &[String]) -> Result<Vec<String>, ProviderError> {
        self.call("missing_subnets").await;
        Ok(vec![])
    }

    async fn missing_security_groups(&self, _: &[String]) -> Result<Vec<String>, ProviderError> {
        self.call("missing_security_groups").await;
        Ok(vec![])
    }

    async fn select_subnets(&self, _: &TagQuery) -> Result<Vec<SubnetFacts>, ProviderError> {
        self.call("select_subnets").await;
        Ok(vec![])
    }

    async fn select_security_groups(
        &self,
        _: &TagQuery,
    ) -> Result<Vec<SecurityGroupFacts>, ProviderError> {
        self.call("select_security_groups").await;
        Ok(vec![])
    }

    async fn unknown_instance_types(&self, _: &[String]) -> Result<Vec<String>, ProviderError> {
        self.call("unknown_instance_types").await;
        Ok(vec![])
    }

    async fn missing_placement_groups(&self, _: &[String]) -> Result<Vec<String>, ProviderError> {
        self.call("missing_placement_groups").await;
        Ok(vec![])
    }

    async fn instance_type_info(&self, _: &str) -> Result<Option<InstanceTypeInfo>, ProviderError> {
        self.call("instance_type_info").await;
        Ok(None)
    }

    async fn describe_machines(&self, _: &[String]) -> Result<Vec<Machine>, ProviderError> {
        self.call("describe_machines").await;
        Ok(vec![])
    }

    async fn describe_owned(&self, _: &[(String, String)]) -> Result<Vec<Machine>, ProviderError> {
        self.call("describe_owned").await;
        Ok(vec![])
    }

    async fn interruption_notices(
        &self,
        _: &[String],
    ) -> Result<Vec<InterruptionNotice>, ProviderError> {
        self.call("interruption_notices").await;
        Ok(vec![])
    }

    async fn impaired_machines(&self) -> Result<Vec<crate::provider::Impairment>, ProviderError> {
        self.call("impaired_machines").await;
        Ok(vec![])
    }

    async fn list_owned(
        &self,
        _: &[(String, String)],
        _: bool,
        _: &mut (dyn FnMut(Vec<Machine>) + Send),
    ) -> Result<(), ProviderError> {
        self.call("list_owned").await;
        Ok(())
    }

    async fn describe_owned_any(
        &self,
        tags: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<Machine>, ProviderError> {
        self.call("describe_owned_any").await;
        if let Some(err) = lock(&self.describe_error).clone() {
            return Err(err);
        }
        Ok(lock(&self.machines)
            .iter()
            .filter(|m| tags.iter().all(|(k, v)| m.tags.get(k) == Some(v)))
            .filter(|m| m.tags.get(key).is_some_and(|v| values.contains(v)))
            .cloned()
            .collect())
    }

    async fn terminate(&self, ids: &[String]) -> Result<(), ProviderError> {
        lock(&self.terminate_calls).push(ids.to_vec());
        self.call("terminate").await;
        if ids.iter().any(|id| lock(&self.unknown_ids).contains(id)) {
            return Err(ProviderError::NotFound(terminate_detail()));
        }
        if ids
            .iter()
            .any(|id| lock(&self.failing_id).as_ref() == Some(id))
        {
            return Err(ProviderError::Throttled(terminate_detail()));
        }
        Ok(())
    }

    async fn validate_launch(&self, _: &LaunchSpec) -> Result<(), ProviderError> {
        self.call("validate_launch").await;
        Ok(())
    }

    async fn launch(&self, _: &LaunchSpec) -> Result<LaunchAnswer, ProviderError> {
        self.call("launch").await;
        Ok(LaunchAnswer::default())
    }

    async fn default_zones(&self) -> Result<Vec<String>, ProviderError> {
        self.call("default_zones").await;
        Ok(lock(&self.zones).clone())
    }
}

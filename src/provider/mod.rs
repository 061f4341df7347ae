//! The provider port: what the controllers need from a cloud, in plain types.
//!
//! Controllers translate CRD types into these and back, so an adapter knows
//! nothing of Kubernetes and a second cloud is one more adapter module plus one
//! match arm in [`registry`]. The AWS adapter lives in [`aws`].

pub mod aws;
mod cloud_event;
mod error;
#[cfg(test)]
pub mod fake;
mod image;
mod launch_answer;
mod launch_base;
mod launch_spec;
mod machine;
mod network;
mod observer;
pub mod queue;
pub mod registry;
mod reservation;
mod terminate;

use std::collections::BTreeMap;

use async_trait::async_trait;

pub use cloud_event::{CloudEvent, ScheduledKind};
pub use error::{ErrorDetail, ProviderError};
pub use image::{ImageSource, ResolvedImage};
pub use launch_answer::{LaunchAnswer, Shortfall};
pub use launch_base::{BaseTemplate, LaunchTemplateQuery, LaunchTemplateVersion, RequirementsSpec};
pub use launch_spec::{
    CpuSpec, DataVolumeSpec, InstanceTypeChoice, LaunchApi, LaunchCapacity, LaunchOptions,
    LaunchSpec, MetadataSpec, VolumeSpec,
};
pub use machine::{
    CapacityType, Impairment, InstanceTypeInfo, InterruptionNotice, Machine, MachineState,
};
pub use network::{SecurityGroupFacts, SubnetFacts, TagQuery, ANY_VALUE};
pub use observer::{CallObserver, NoopObserver};
pub use reservation::{InterfaceSpec, ReservationSpec};
pub use terminate::terminate_each_known;

/// A launch template hostforge created (for an instant-fleet batch), as a
/// listing reports it: the collector needs its age and ownership tags to tell
/// a leftover of a crash, a lost leadership or a failed delete from the
/// template of a batch still being launched, and its id to delete it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedLaunchTemplate {
    /// The template id (`lt-…`): deleting by id never hits a template that
    /// took over a freed name.
    pub id: String,
    /// The template name.
    pub name: String,
    /// When the cloud created it, seconds since the epoch; `None` when it did
    /// not say (the collector then keeps it: age unknown).
    pub created_at: Option<i64>,
    /// The template's own tags (the batch's ownership tags).
    pub tags: BTreeMap<String, String>,
}

/// A cloud account in one region that can find images and manage machines.
///
/// Methods that take id lists make no call for an empty list, and batch and
/// paginate internally, so callers can merge work across requests freely.
#[async_trait]
pub trait MachineProvider: Send + Sync {
    /// The provider instance's name from the operator config (metrics, messages,
    /// cache keys).
    fn name(&self) -> &str;

    /// Resolves an image source to one concrete, existing image.
    async fn lookup_image(&self, source: &ImageSource) -> Result<ResolvedImage, ProviderError>;

    /// Which of these subnet ids do not exist (or are not visible) in this account
    /// and region, in input order.
    async fn missing_subnets(&self, ids: &[String]) -> Result<Vec<String>, ProviderError>;

    /// Which of these security group ids do not exist in this account and region,
    /// in input order.
    async fn missing_security_groups(&self, ids: &[String]) -> Result<Vec<String>, ProviderError>;

    /// Every subnet carrying all of `tags` (a value of [`ANY_VALUE`]: the key
    /// with any value), sorted by zone then id.
    async fn select_subnets(&self, tags: &TagQuery) -> Result<Vec<SubnetFacts>, ProviderError>;

    /// Every security group carrying all of `tags`, sorted by id.
    async fn select_security_groups(
        &self,
        tags: &TagQuery,
    ) -> Result<Vec<SecurityGroupFacts>, ProviderError>;

    /// Which of these instance types the region does not offer, in input order.
    async fn unknown_instance_types(&self, types: &[String]) -> Result<Vec<String>, ProviderError>;

    /// Which of these placement group names do not exist in this account and
    /// region, in input order.
    async fn missing_placement_groups(
        &self,
        names: &[String],
    ) -> Result<Vec<String>, ProviderError>;

    /// The size of one machine of `instance_type` (vCPUs, cores, memory,
    /// architecture), so schedulers can be told what a template offers without a
    /// lookup table of their own. `None` when the region does not offer the type.
    /// The facts of a type never change, so adapters may cache them for good.
    async fn instance_type_info(
        &self,
        instance_type: &str,
    ) -> Result<Option<InstanceTypeInfo>, ProviderError>;

    /// The machines with these ids that the cloud currently reports, in any order.
    /// An id missing from the answer is unknown right now, which for a fresh
    /// launch means "not visible yet", not "gone".
    async fn describe_machines(&self, ids: &[String]) -> Result<Vec<Machine>, ProviderError>;

    /// Every machine carrying all of these tags (key, value), in any state,
    /// including recently terminated ones.
    async fn describe_owned(
        &self,
        tags: &[(String, String)],
    ) -> Result<Vec<Machine>, ProviderError>;

    /// The machines among `ids` that the cloud has announced it will take back
    /// (spot interruption notices), each with when it said so: schedulers get
    /// the rest of the warning to drain them. Machines without a notice are
    /// simply absent.
    async fn interruption_notices(
        &self,
        ids: &[String],
    ) -> Result<Vec<InterruptionNotice>, ProviderError>;

    /// Every running machine of the account and region whose status checks
    /// fail, from one listing of every running machine's status (paginated
    /// internally, the largest pages the cloud allows; never per id): the
    /// status-check loop makes one such listing per interval however many
    /// machines the requests hold. Machines that pass are absent.
    async fn impaired_machines(&self) -> Result<Vec<Impairment>, ProviderError>;

    /// Every machine carrying all of `tags` (in any state, or with `down_only`
    /// only those stopping, stopped, shutting down or terminated: what changes
    /// among held machines, usually a handful whatever the fleet), handed to
    /// `page` one page of the listing at a time. The sweep lists 10,000
    /// machines this way while holding one page of them, not all of them.
    /// An error ends the listing; the pages handed over until then stay valid.
    async fn list_owned(
        &self,
        tags: &[(String, String)],
        down_only: bool,
        page: &mut (dyn FnMut(Vec<Machine>) + Send),
    ) -> Result<(), ProviderError>;

    /// Every machine carrying all of `tags` and, for the tag `key`, any of
    /// `values`, in any state: the machines of many launch batches in one
    /// call (per 200 values) instead of one call each. No call for no values.
    async fn describe_owned_any(
        &self,
        tags: &[(String, String)],
        key: &str,
        values: &[String],
    ) -> Result<Vec<Machine>, ProviderError>;

    /// Asks the cloud to terminate these machines. Success means the request was
    /// accepted; the machines go through `shutting-down` first.
    async fn terminate(&self, ids: &[String]) -> Result<(), ProviderError>;

    /// Asks the cloud whether `spec` would launch, without launching
    /// anything (EC2's `DryRun`): `Ok` when it would, else the cloud's
    /// refusal (a missing permission, a tag policy, a parameter it does not
    /// take). A retryable error says nothing either way. The template
    /// controller calls it when a template or its image changes, so what
    /// would refuse every launch shows on the template first.
    async fn validate_launch(&self, spec: &LaunchSpec) -> Result<(), ProviderError>;

    /// Launches one batch: exactly one launch call (RunInstances or CreateFleet)
    /// carrying `spec.client_token`, so re-sending an identical spec after a crash
    /// returns the first launch's machines instead of new ones (on real EC2).
    ///
    /// `Ok` holds at least one machine, possibly fewer than `spec.count` when the
    /// cloud had less capacity (with the cloud's reasons in
    /// [`LaunchAnswer::shortfall`] when it gave them); the caller plans another
    /// batch for the rest. `Err`
    /// means nothing was launched; a [`ProviderError::Capacity`] tells the caller to
    /// try another instance type, subnet or capacity type as a new batch.
    async fn launch(&self, spec: &LaunchSpec) -> Result<LaunchAnswer, ProviderError>;

    /// The version of a user's launch template that `query` names (a
    /// MachineTemplate's `launchTemplate`), resolved to its id and version
    /// number so launches name a version that cannot move; `Ok(None)` when
    /// the template or the version does not exist. Adapters without launch
    /// templates keep this default, which refuses.
    async fn launch_template_version(
        &self,
        query: &LaunchTemplateQuery,
    ) -> Result<Option<LaunchTemplateVersion>, ProviderError> {
        Err(ProviderError::InvalidParameter(ErrorDetail {
            operation: "DescribeLaunchTemplateVersions",
            code: "Unsupported".into(),
            message: format!(
                "provider {} has no launch templates (asked for {:?})",
                self.name(),
                query.id.as_ref().or(query.name.as_ref())
            ),
        }))
    }

    /// The zones a launch without subnets may be pinned to (those with a
    /// default subnet), sorted. A launch token is zonal on EC2, so a batch
    /// without subnets records one of these before it is sent and keeps it for
    /// every re-send. Empty: this provider does not pin zones (the default).
    async fn default_zones(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// Every launch template carrying all of `tags` (key, value), paginated
    /// internally: what the collector reads to delete the templates batches
    /// left behind, which otherwise pile up to the account's quota (5,000 per
    /// Region) and then refuse every fleet launch. Adapters that create no
    /// templates keep this default: there is nothing to collect.
    async fn list_launch_templates(
        &self,
        _tags: &[(String, String)],
    ) -> Result<Vec<OwnedLaunchTemplate>, ProviderError> {
        Ok(Vec::new())
    }

    /// Deletes the launch template with this id. A template that is already
    /// gone is not an error (`Ok`): someone else (a batch's own delete) won.
    async fn delete_launch_template(&self, _id: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// The ids of the launch templates this adapter still launches from:
    /// in use by a call, or used within `idle`. The collector never deletes
    /// these; the adapter forgets the others here, so a later launch makes a
    /// new template rather than naming one the collector may have deleted.
    /// Adapters that create no templates keep this default.
    fn launch_templates_in_use(
        &self,
        _idle: std::time::Duration,
    ) -> std::collections::HashSet<String> {
        std::collections::HashSet::new()
    }
}

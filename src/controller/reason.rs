//! Condition and Event reasons, typed. Control flow (how soon a blocked
//! request looks again) is decided by the variant, never by a reason's
//! spelling, and every error maps to a reason by its variant.

use std::time::Duration;

use super::Error;
use crate::provider::ProviderError;

/// How often a request waiting on its template looks again (template changes
/// also wake it at once).
pub const RETRY_BLOCKED: Duration = Duration::from_secs(30);
/// How soon a request whose launch the cloud refused tries again.
pub const RETRY_REFUSED: Duration = Duration::from_secs(60);
/// The wait before the next batch after one launch refused for a reason
/// other than capacity (a 4xx: nothing was launched). Small, so a cause fixed
/// at once costs little.
pub const RETRY_REFUSED_FIRST: Duration = Duration::from_secs(5);
/// The longest wait between batches while launches keep being refused: a
/// refusal that never ends costs one launch call per this long, not a loop.
pub const RETRY_REFUSED_MAX: Duration = Duration::from_secs(5 * 60);

/// How long the next batch waits after `refusals` launches in a row were
/// refused (not for capacity): [`RETRY_REFUSED_FIRST`], doubling with each
/// refusal, at most [`RETRY_REFUSED_MAX`]; zero without a refusal.
pub fn refused_backoff(refusals: u32) -> Duration {
    let Some(doublings) = refusals.checked_sub(1) else {
        return Duration::ZERO;
    };
    RETRY_REFUSED_FIRST
        .checked_mul(2u32.saturating_pow(doublings.min(16)))
        .map_or(RETRY_REFUSED_MAX, |d| d.min(RETRY_REFUSED_MAX))
}

/// How soon a request held back by the template's maxMachines looks again
/// (template changes, e.g. machinesInUse, also wake it).
pub const RETRY_HELD_BACK: Duration = Duration::from_secs(10);

/// Every reason hostforge writes into a condition or an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    // Why a request cannot make progress (Ready=False, Degraded=True).
    /// The request's MachineTemplate does not exist.
    TemplateNotFound,
    /// The request's MachineTemplate is not Ready for its current spec.
    TemplateNotReady,
    /// The provider named by the template (or recorded in status) is not configured.
    ProviderUnknown,
    /// The template now names another provider than the one the request's
    /// machines are in: the request stays there and launches nothing.
    ProviderChanged,
    /// The user-data Secret cannot be read or lacks its key.
    UserDataUnavailable,
    /// The template's image cannot be found.
    ImageNotFound,
    /// No instance type and subnet of the template has capacity now.
    CapacityUnavailable,
    /// The cloud refused a launch for sure (nothing was created).
    LaunchFailed,
    /// The template's maxMachines holds machines back.
    MaxMachinesReached,
    // Why a reconcile failed (it is retried with backoff).
    /// The cloud throttled a call.
    Throttled,
    /// The cloud answered 5xx, timed out or could not be reached.
    CloudUnavailable,
    /// The cloud answered with an error hostforge does not classify.
    CloudError,
    /// The operator's credentials may not make a call.
    AccessDenied,
    /// The cloud called a parameter of the spec invalid.
    InvalidSpec,
    /// The cloud did not find something the spec names.
    NotFound,
    /// A Kubernetes API call failed.
    KubeApiError,
    /// Something that should not happen (an object without a uid, say).
    InternalError,
    // The template controller's own causes.
    /// A subnet the template names does not exist.
    SubnetNotFound,
    /// A security group the template names does not exist.
    SecurityGroupNotFound,
    /// An instance type the template names is not offered.
    InstanceTypeUnknown,
    /// The placement group the template names does not exist.
    PlacementGroupNotFound,
    /// The user's launch template (or the version) the template names does
    /// not exist.
    LaunchTemplateNotFound,
    /// The user's launch template carries what hostforge may not take from
    /// it (its ownership tags).
    LaunchTemplateRefused,
    /// An instance type of the template does not support the Elastic Fabric
    /// Adapters its networkInterfaces ask for.
    EfaNotSupported,
    /// A networkInterfaces card index is beyond an instance type's network
    /// cards.
    NetworkCardOutOfRange,
    /// A dry run of the template's launch was refused by the cloud (a
    /// permission, a tag policy, a parameter): every launch would be.
    LaunchRefused,
    /// The provider failed in a way hostforge does not classify.
    ProviderError,
    /// The template is outside the operator's tenant policy for its
    /// namespace (provider, subnet, security group, instance profile or
    /// image owner).
    PolicyDenied,
    // States that are not problems.
    /// All desired machines run.
    AllRunning,
    /// Machines are being launched towards the desired count.
    Provisioning,
    /// Machines are being launched.
    Launching,
    /// Machines are being terminated.
    Terminating,
    /// Nothing is in flight.
    Stable,
    /// Not degraded.
    AsExpected,
    /// The request is being deleted.
    Deleting,
    /// A template's image is resolved (its Ready condition).
    Resolved,
    /// A template became Ready (its Event).
    Ready,
    /// A launch returned machines.
    Launched,
    /// A machine was stopped or terminated outside hostforge.
    MachineLost,
    /// The cloud announced it takes a spot machine back.
    SpotInterruption,
    /// The cloud recommends moving work off a spot machine (elevated risk of
    /// interruption).
    RebalanceRecommendation,
    /// The cloud scheduled a retirement or maintenance of a machine.
    ScheduledChange,
    /// A machine is being replaced (rebalance recommendation, failing status
    /// check): its replacement launches first (Event; Progressing).
    Replacing,
    /// A machine's replacement runs and the machine is terminated (Event).
    Replaced,
    /// A machine's status check fails (Event; MachinesHealthy=False).
    MachineImpaired,
    /// A machine's status checks pass again (Event).
    MachineHealthy,
    /// No live machine fails a status check (MachinesHealthy=True).
    AllHealthy,
    /// The cloud's status checks were not read yet since the operator
    /// started (MachinesHealthy=Unknown).
    NotCheckedYet,
    /// A machine carries this request's name and this cluster's name but
    /// another cluster's identity: two clusters share a `clusterName`; it is
    /// left alone.
    ForeignMachine,
    /// Machines were launched from an older version of the template
    /// (Drifted=True, and an Event when drift appears).
    Drifted,
    /// Every machine with a launch record matches the template
    /// (Drifted=False).
    UpToDate,
}

impl Reason {
    /// The reason's spelling in conditions and Events.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::TemplateNotFound => "TemplateNotFound",
            Reason::TemplateNotReady => "TemplateNotReady",
            Reason::ProviderUnknown => "ProviderUnknown",
            Reason::ProviderChanged => "ProviderChanged",
            Reason::UserDataUnavailable => "UserDataUnavailable",
            Reason::ImageNotFound => "ImageNotFound",
            Reason::CapacityUnavailable => "CapacityUnavailable",
            Reason::LaunchFailed => "LaunchFailed",
            Reason::MaxMachinesReached => "MaxMachinesReached",
            Reason::Throttled => "Throttled",
            Reason::CloudUnavailable => "CloudUnavailable",
            Reason::CloudError => "CloudError",
            Reason::AccessDenied => "AccessDenied",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::NotFound => "NotFound",
            Reason::KubeApiError => "KubeApiError",
            Reason::InternalError => "InternalError",
            Reason::SubnetNotFound => "SubnetNotFound",
            Reason::SecurityGroupNotFound => "SecurityGroupNotFound",
            Reason::InstanceTypeUnknown => "InstanceTypeUnknown",
            Reason::PlacementGroupNotFound => "PlacementGroupNotFound",
            Reason::LaunchTemplateNotFound => "LaunchTemplateNotFound",
            Reason::LaunchTemplateRefused => "LaunchTemplateRefused",
            Reason::EfaNotSupported => "EfaNotSupported",
            Reason::NetworkCardOutOfRange => "NetworkCardOutOfRange",
            Reason::LaunchRefused => "LaunchRefused",
            Reason::ProviderError => "ProviderError",
            Reason::PolicyDenied => "PolicyDenied",
            Reason::AllRunning => "AllRunning",
            Reason::Provisioning => "Provisioning",
            Reason::Launching => "Launching",
            Reason::Terminating => "Terminating",
            Reason::Stable => "Stable",
            Reason::AsExpected => "AsExpected",
            Reason::Deleting => "Deleting",
            Reason::Resolved => "Resolved",
            Reason::Ready => "Ready",
            Reason::Launched => "Launched",
            Reason::MachineLost => "MachineLost",
            Reason::SpotInterruption => "SpotInterruption",
            Reason::RebalanceRecommendation => "RebalanceRecommendation",
            Reason::ScheduledChange => "ScheduledChange",
            Reason::ForeignMachine => "ForeignMachine",
            Reason::Replacing => "Replacing",
            Reason::Replaced => "Replaced",
            Reason::MachineImpaired => "MachineImpaired",
            Reason::MachineHealthy => "MachineHealthy",
            Reason::AllHealthy => "AllHealthy",
            Reason::NotCheckedYet => "NotCheckedYet",
            Reason::Drifted => "Drifted",
            Reason::UpToDate => "UpToDate",
        }
    }

    /// How soon a request blocked for this reason looks again; `None` when the
    /// caller decides (capacity waits for its cooldown to expire).
    pub fn retry_after(self) -> Option<Duration> {
        match self {
            Reason::TemplateNotFound
            | Reason::TemplateNotReady
            | Reason::ProviderUnknown
            | Reason::ProviderChanged => Some(RETRY_BLOCKED),
            Reason::MaxMachinesReached => Some(RETRY_HELD_BACK),
            Reason::CapacityUnavailable => None,
            _ => Some(RETRY_REFUSED),
        }
    }

    /// The reason a provider error is reported under; `not_found` names what
    /// was looked for when the cloud answered "not found".
    pub fn of_provider(err: &ProviderError, not_found: Reason) -> Reason {
        match err {
            ProviderError::NotFound(_) => not_found,
            ProviderError::AccessDenied(_) => Reason::AccessDenied,
            ProviderError::Throttled(_) => Reason::Throttled,
            ProviderError::InvalidParameter(_) => Reason::InvalidSpec,
            ProviderError::Capacity(_) => Reason::CapacityUnavailable,
            ProviderError::Transient(_) => Reason::CloudUnavailable,
            ProviderError::Refused(_) | ProviderError::Unknown(_) => Reason::CloudError,
        }
    }

    /// The reason a failed reconcile is reported under.
    pub fn of_error(err: &Error) -> Reason {
        match err {
            Error::Kube { .. } => Reason::KubeApiError,
            Error::MissingObjectKey(_) | Error::Serialize(_) => Reason::InternalError,
            Error::Provider { source, .. } => Reason::of_provider(source, Reason::NotFound),
            Error::StillDeleting(_) => Reason::Deleting,
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => Reason::of_error(e),
                _ => Reason::KubeApiError,
            },
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::ErrorDetail;

    fn detail(code: &str) -> ErrorDetail {
        ErrorDetail {
            operation: "RunInstances",
            code: code.into(),
            message: "m".into(),
        }
    }

    #[test]
    fn errors_map_to_reasons_by_variant() {
        let cases = [
            (
                ProviderError::Unknown(detail("VolumeLimitExceeded")),
                Reason::CloudError,
            ),
            (
                ProviderError::Throttled(detail("RequestLimitExceeded")),
                Reason::Throttled,
            ),
            (
                ProviderError::Transient(detail("InternalError")),
                Reason::CloudUnavailable,
            ),
            (
                ProviderError::AccessDenied(detail("UnauthorizedOperation")),
                Reason::AccessDenied,
            ),
            (
                ProviderError::NotFound(detail("InvalidAMIID.NotFound")),
                Reason::ImageNotFound,
            ),
        ];
        for (err, want) in cases {
            assert_eq!(
                Reason::of_provider(&err, Reason::ImageNotFound),
                want,
                "{err}"
            );
        }
        let err = Error::Provider {
            action: "launching batch b-1".into(),
            source: ProviderError::Unknown(detail("VolumeLimitExceeded")),
        };
        assert_eq!(Reason::of_error(&err), Reason::CloudError);
        assert_eq!(
            Reason::of_error(&Error::MissingObjectKey("metadata.uid")),
            Reason::InternalError
        );
    }

    #[test]
    fn refused_launches_back_off_doubling_to_a_ceiling() {
        let s = Duration::from_secs;
        let table = [
            (0, s(0)),
            (1, s(5)),
            (2, s(10)),
            (3, s(20)),
            (4, s(40)),
            (5, s(80)),
            (6, s(160)),
            (7, s(300)),
            (8, s(300)),
            (40, s(300)),
            (u32::MAX, s(300)),
        ];
        for (refusals, want) in table {
            assert_eq!(refused_backoff(refusals), want, "{refusals} refusals");
        }
    }

    #[test]
    fn waiting_on_the_template_retries_sooner_than_a_refusal() {
        assert_eq!(Reason::TemplateNotReady.retry_after(), Some(RETRY_BLOCKED));
        assert_eq!(Reason::ProviderUnknown.retry_after(), Some(RETRY_BLOCKED));
        assert_eq!(Reason::LaunchFailed.retry_after(), Some(RETRY_REFUSED));
        assert_eq!(
            Reason::UserDataUnavailable.retry_after(),
            Some(RETRY_REFUSED)
        );
        assert_eq!(Reason::CapacityUnavailable.retry_after(), None);
        assert_eq!(
            Reason::MaxMachinesReached.retry_after(),
            Some(RETRY_HELD_BACK)
        );
    }
}

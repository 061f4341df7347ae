//! Errors that make a reconcile fail and be retried with backoff. Problems in
//! the user's spec are not errors here: they become conditions and Events.

use crate::provider::ProviderError;

/// A reconcile failure that is worth retrying.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Kubernetes API refused or failed a call (conflict, timeout, 5xx).
    #[error("kubernetes API call `{action}` failed: {source}")]
    Kube {
        /// What we were doing, e.g. "patch MachineTemplate status".
        action: &'static str,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// An object arrived without a field the apiserver always sets.
    #[error("object is missing {0}")]
    MissingObjectKey(&'static str),
    /// Serialising a status patch failed.
    #[error("serialising status: {0}")]
    Serialize(#[from] serde_json::Error),
    /// A cloud call failed in a way worth retrying (throttled, 5xx, timeout,
    /// or an answer we cannot classify).
    #[error("{action}: {source}")]
    Provider {
        /// What we were doing, e.g. "settling batch 3f2a9c1e-2".
        action: String,
        /// The provider's error.
        #[source]
        source: ProviderError,
    },
    /// Adding or removing the finalizer failed, or the reconcile inside it did.
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// A deleting request still has machines EC2 has not confirmed going (or
    /// a launch batch whose machines may not show yet). Not a failure: kube's
    /// finalizer helper removes the finalizer whenever cleanup returns `Ok`,
    /// whatever the requeue, so waiting has to be an `Err`.
    #[error("deletion waits for {0}")]
    StillDeleting(String),
}

impl Error {
    /// Whether this is a deletion that is still waiting (directly or inside
    /// the finalizer), to be looked at again soon without a backoff or an
    /// Event.
    pub fn is_still_deleting(&self) -> bool {
        match self {
            Error::StillDeleting(_) => true,
            Error::Finalizer(inner) => matches!(
                inner.as_ref(),
                kube::runtime::finalizer::Error::CleanupFailed(e) if e.is_still_deleting()
            ),
            _ => false,
        }
    }
}

impl Error {
    /// A bounded label for metrics and logs (conditions and Events use
    /// [`super::reason::Reason::of_error`]).
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApiError",
            Error::MissingObjectKey(_) => "MissingObjectKey",
            Error::Serialize(_) => "SerializeError",
            Error::Provider { .. } => "ProviderError",
            Error::StillDeleting(_) => "StillDeleting",
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.category(),
                _ => "FinalizerError",
            },
        }
    }
}

//! Errors that make a reconcile fail and be retried with backoff. Problems in
//! the user's spec are not errors here: they become conditions and Events.

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
}

impl Error {
    /// A bounded label for metrics and Event reasons.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { .. } => "KubeApiError",
            Error::MissingObjectKey(_) => "MissingObjectKey",
            Error::Serialize(_) => "SerializeError",
        }
    }
}

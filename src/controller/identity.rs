//! This cluster's identity: what tells its machines from those of another
//! cluster that was given the same `clusterName` (a blue/green pair, a DR or
//! staging copy of the values, a restore from backup). The name is chosen by
//! people and copied with the values; the identity is taken from the cluster
//! itself, the uid of its `kube-system` namespace, which the apiserver
//! assigns when the cluster is created and no restore or copy carries over.
//! `clusterId` in the config overrides it, for operators that may not read
//! that namespace or that must keep an identity across a cluster rebuild.

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, ResourceExt};

/// The namespace whose uid is the cluster's identity: every cluster has it,
/// and it is never deleted.
pub const IDENTITY_NAMESPACE: &str = "kube-system";

/// Why the identity could not be found; the operator does not start without
/// one, as it could not tell its machines from another cluster's.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// Reading the namespace failed (usually RBAC).
    #[error(
        "reading namespace {IDENTITY_NAMESPACE} for this cluster's identity: {0}; grant `get` on \
         namespaces/{IDENTITY_NAMESPACE} (the Helm chart does) or set clusterId in the config"
    )]
    Read(#[source] kube::Error),
    /// The namespace has no uid (never on a real apiserver).
    #[error("namespace {IDENTITY_NAMESPACE} has no uid; set clusterId in the config")]
    NoUid,
}

/// The identity: `configured` when the config sets one, else the uid of the
/// `kube-system` namespace.
pub async fn resolve(client: &Client, configured: Option<&str>) -> Result<String, IdentityError> {
    if let Some(id) = configured {
        return Ok(id.to_string());
    }
    let ns = Api::<Namespace>::all(client.clone())
        .get(IDENTITY_NAMESPACE)
        .await
        .map_err(IdentityError::Read)?;
    ns.uid().ok_or(IdentityError::NoUid)
}

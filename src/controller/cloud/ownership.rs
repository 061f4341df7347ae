//! The EC2 tags that tie every instance (and its volumes) to its request.
//!
//! Tags are the only link between the cloud and Kubernetes that survives a
//! crash between a launch and the status write that records it, so they are
//! written in the launch call itself and read back by the settle step, the
//! sweep (adoption, lost machines) and garbage collection.

use std::collections::BTreeMap;

/// The operator config's `clusterName`: scopes everything below, so several
/// clusters can share an account without touching each other's machines.
pub const CLUSTER_TAG: &str = "hostforge.io/cluster";
/// This cluster's identity: unlike `clusterName` (a name anyone can give
/// two clusters: a blue/green pair, a DR copy of the values, a restore), it
/// is derived from the cluster itself (the uid of its `kube-system`
/// namespace) or set by hand (`clusterId`). The sweep adopts and collects
/// only machines carrying this cluster's identity; one with the same name
/// and another identity is reported, never touched.
pub const CLUSTER_ID_TAG: &str = "hostforge.io/cluster-id";
/// `<namespace>/<name>` of the request, for people reading the console.
pub const REQUEST_TAG: &str = "hostforge.io/request";
/// The request's uid: names survive delete-and-recreate, uids do not.
pub const REQUEST_UID_TAG: &str = "hostforge.io/request-uid";
/// The template the machine was launched from.
pub const TEMPLATE_TAG: &str = "hostforge.io/template";
/// The launch batch (an id in the request's `status.launches`).
pub const BATCH_TAG: &str = "hostforge.io/batch";
/// `<namespace>/<LaunchGroup name>` on the machines of a coalesced launch
/// (one call for several requests of a template). They carry no request or
/// batch tag, since one call's tags are the same for all of its instances;
/// which request each belongs to is decided from EC2's answer to the group's
/// token and recorded in the requests' status.
pub const GROUP_TAG: &str = "hostforge.io/launch-group";
/// The console's display name.
pub const NAME_TAG: &str = "Name";
/// The namespace a shared fleet launch template serves (set by the AWS
/// adapter on the template, never on a machine), so a namespaced operator's
/// collector deletes only its own.
pub const NAMESPACE_TAG: &str = "hostforge.io/namespace";

/// Who owns a launch: everything the ownership tags say except the batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The operator's cluster name.
    pub cluster: String,
    /// The cluster's identity ([`CLUSTER_ID_TAG`]).
    pub cluster_id: String,
    /// The request's namespace.
    pub namespace: String,
    /// The request's name.
    pub name: String,
    /// The request's uid.
    pub uid: String,
    /// The template's name.
    pub template: String,
}

impl Owner {
    /// Every tag for a machine of `batch`: the template's own tags first, then the
    /// ownership tags (which the template cannot override; its schema reserves the
    /// prefix). The template may set its own `Name`.
    pub fn tags(
        &self,
        batch: &str,
        template_tags: &BTreeMap<String, String>,
    ) -> BTreeMap<String, String> {
        let mut tags = BTreeMap::new();
        tags.insert(NAME_TAG.to_string(), self.name.clone());
        tags.extend(template_tags.clone());
        tags.insert(CLUSTER_TAG.into(), self.cluster.clone());
        tags.insert(CLUSTER_ID_TAG.into(), self.cluster_id.clone());
        tags.insert(
            REQUEST_TAG.into(),
            format!("{}/{}", self.namespace, self.name),
        );
        tags.insert(REQUEST_UID_TAG.into(), self.uid.clone());
        tags.insert(TEMPLATE_TAG.into(), self.template.clone());
        tags.insert(BATCH_TAG.into(), batch.to_string());
        tags
    }

    /// The tag filter that finds every machine of this request.
    pub fn request_filter(&self) -> Vec<(String, String)> {
        vec![
            (CLUSTER_TAG.into(), self.cluster.clone()),
            (REQUEST_UID_TAG.into(), self.uid.clone()),
        ]
    }

    /// The tag filter that finds the machines of one batch.
    pub fn batch_filter(&self, batch: &str) -> Vec<(String, String)> {
        let mut f = self.request_filter();
        f.push((BATCH_TAG.into(), batch.to_string()));
        f
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_tags_win_over_template_tags_but_name_is_overridable() {
        let owner = Owner {
            cluster: "c1".into(),
            cluster_id: "id-1".into(),
            namespace: "ns".into(),
            name: "req".into(),
            uid: "u-1".into(),
            template: "t".into(),
        };
        let template: BTreeMap<String, String> = [
            ("team".to_string(), "hpc".to_string()),
            ("Name".to_string(), "worker".to_string()),
        ]
        .into();
        let tags = owner.tags("u-1-1", &template);
        assert_eq!(tags["Name"], "worker");
        assert_eq!(tags["team"], "hpc");
        assert_eq!(tags[CLUSTER_TAG], "c1");
        assert_eq!(tags[CLUSTER_ID_TAG], "id-1");
        assert_eq!(tags[REQUEST_TAG], "ns/req");
        assert_eq!(tags[REQUEST_UID_TAG], "u-1");
        assert_eq!(tags[TEMPLATE_TAG], "t");
        assert_eq!(tags[BATCH_TAG], "u-1-1");
        assert_eq!(owner.tags("b", &BTreeMap::new())["Name"], "req");
        assert_eq!(owner.batch_filter("b").len(), 3);
    }
}

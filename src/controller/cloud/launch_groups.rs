//! The sweep's view of LaunchGroups (the records of coalesced launches): which
//! are still in flight, so that a machine of one that no request lists yet is
//! not taken for an orphan, and which may go.
//!
//! A group may be deleted once it is older than `gcGracePeriod` and every
//! member has settled its batch as the request cache shows it (or the request
//! is gone). The cache only ever lags the apiserver, so a member it shows
//! settled has written its share; and the sweep reads the same cache to tell
//! whose a machine is, so once a group is gone its machines are found in the
//! members' status. Deleting a group earlier would let a member still Pending
//! send its own token and launch its machines twice.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use tracing::{debug, info, warn};

use crate::api::{LaunchGroup, LaunchGroupSpec, LaunchState, MachineRequest};
use crate::controller::Context;

/// Every LaunchGroup the operator watches (all namespaces, or its own), read
/// from the apiserver; `None` when the read failed (then no machine of a
/// group is taken for an orphan this time).
pub async fn list(ctx: &Context) -> Option<Vec<LaunchGroup>> {
    let api: Api<LaunchGroup> = match &ctx.namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    match api.list(&ListParams::default()).await {
        Ok(list) => Some(list.items),
        Err(err) => {
            warn!(error = %err, "sweep: listing launch groups failed");
            None
        }
    }
}

/// The value of the group tag (`<namespace>/<name>`) of each group.
pub fn in_flight(groups: &[LaunchGroup]) -> BTreeSet<String> {
    groups
        .iter()
        .map(|g| format!("{}/{}", g.namespace().unwrap_or_default(), g.name_any()))
        .collect()
}

/// Whether every member of `group` has settled its batch, given the cached
/// requests of its namespace by uid.
pub fn settled(group: &LaunchGroupSpec, requests: &HashMap<String, &MachineRequest>) -> bool {
    group.members.iter().all(|m| match requests.get(&m.uid) {
        // Gone: nothing will settle it, and its share is an orphan.
        None => true,
        // A batch the status no longer lists was pruned as settled: it was
        // recorded before its group, and groups are only judged after the
        // grace period, far longer than the cache lags.
        Some(r) => r.status.as_ref().is_none_or(|st| {
            st.launches
                .iter()
                .all(|b| b.id != m.batch || b.state != LaunchState::Pending)
        }),
    })
}

/// Whether `created` is at least `grace` ago.
fn older_than(created: Option<Timestamp>, grace: Duration) -> bool {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    created.is_some_and(|c| Timestamp::now().as_second() - c.as_second() >= grace)
}

/// Deletes the groups that are done (see the module doc); returns how many.
pub async fn collect(ctx: &Context, groups: &[LaunchGroup]) -> usize {
    if groups.is_empty() {
        return 0;
    }
    let cached = ctx.requests.state();
    let by_uid: HashMap<String, &MachineRequest> = cached
        .iter()
        .filter_map(|r| Some((r.uid()?, r.as_ref())))
        .collect();
    let mut deleted = 0;
    for g in groups {
        let created = g.metadata.creation_timestamp.as_ref().map(|t| t.0);
        if !older_than(created, ctx.config.gc_grace_period) || !settled(&g.spec, &by_uid) {
            continue;
        }
        let Some(ns) = g.namespace() else {
            continue;
        };
        let api: Api<LaunchGroup> = Api::namespaced(ctx.client.clone(), &ns);
        match api.delete(&g.name_any(), &DeleteParams::default()).await {
            Ok(_) => {
                deleted += 1;
                debug!(group = %g.name_any(), namespace = %ns, "deleted a settled launch group");
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(err) => {
                warn!(group = %g.name_any(), error = %err, "deleting a settled launch group failed")
            }
        }
    }
    if deleted > 0 {
        info!(groups = deleted, "sweep: deleted settled launch groups");
    }
    deleted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LaunchBatch, LaunchGroupMember, MachineRequestSpec, MachineRequestStatus};

    fn request(uid: &str, batch: &str, state: LaunchState) -> MachineRequest {
        let mut r = MachineRequest::new(
            "r",
            MachineRequestSpec {
                template_ref: crate::api::TemplateRef { name: "t".into() },
                count: 1,
                return_machines: Vec::new(),
                replace_lost: false,
                rebalance_policy: Default::default(),
                replace_unhealthy: false,
                update_policy: Default::default(),
                tags: Default::default(),
            },
        );
        r.metadata.uid = Some(uid.into());
        r.status = Some(MachineRequestStatus {
            launches: vec![LaunchBatch::test(batch, state)],
            ..MachineRequestStatus::default()
        });
        r
    }

    #[test]
    fn a_group_is_done_only_when_every_member_settled_or_is_gone() {
        let member = |uid: &str| LaunchGroupMember {
            request: "r".into(),
            uid: uid.into(),
            batch: format!("{uid}-1"),
            count: 1,
            on_demand: None,
        };
        let group = LaunchGroupSpec {
            template: "t".into(),
            provider: "aws".into(),
            token: "tok".into(),
            count: 2,
            params_digest: String::new(),
            members: vec![member("a"), member("b")],
        };
        let a_done = request("a", "a-1", LaunchState::Launched);
        let b_pending = request("b", "b-1", LaunchState::Pending);
        let b_done = request("b", "b-1", LaunchState::Failed);
        fn map<'a>(rs: &[&'a MachineRequest]) -> HashMap<String, &'a MachineRequest> {
            rs.iter().map(|r| (r.uid().expect("uid"), *r)).collect()
        }
        assert!(!settled(&group, &map(&[&a_done, &b_pending])));
        assert!(settled(&group, &map(&[&a_done, &b_done])));
        assert!(settled(&group, &map(&[&a_done])), "b is gone");
        // A batch pruned from status (settled long ago) holds nothing.
        let b_pruned = request("b", "b-2", LaunchState::Pending);
        assert!(settled(&group, &map(&[&a_done, &b_pruned])));
    }
}

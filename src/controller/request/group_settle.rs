//! Settling a Pending batch that went out in a coalesced call: its own token
//! was never sent, the group's was. The group's token is re-sent (EC2 answers
//! with what it launched, all of it) and the member takes its share of that
//! answer ([`super::group::share_of`]); only when the template no longer
//! builds the group's parameters are the group's machines looked up by the
//! group's tag, and then only once a full sweep after the grace period has
//! looked (a lagging tag listing would split differently).

use std::sync::Arc;
use std::time::Duration;

use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::act;
use super::group;
use super::session::Session;
use crate::api::{LaunchBatch, LaunchGroup, LaunchState, MachineTemplate};
use crate::controller::cloud::ownership::{CLUSTER_TAG, GROUP_TAG};
use crate::controller::cloud::translate;
use crate::controller::Error;
use crate::provider::MachineProvider;

/// Where a Pending batch's launch went.
pub enum Found {
    /// It is a member of this group.
    Group(Box<LaunchGroup>),
    /// It names a group that no longer exists.
    Gone(String),
    /// No group lists it: it went (or goes) alone, with its own token.
    Alone,
}

/// The group `batch` went out in, read from the apiserver (never from a
/// cache: a group missed here would have the batch's own token sent, and
/// that would launch its machines a second time). `listed` keeps one listing
/// of the namespace's groups for the reconcile.
pub async fn find(
    s: &Session<'_>,
    batch: &LaunchBatch,
    listed: &mut Option<Vec<LaunchGroup>>,
) -> Result<Found, Error> {
    if batch.group.is_none() && !s.ctx.config.coalesce_launches {
        return Ok(Found::Alone);
    }
    // One listing (no `get`): the operator's role has one verb less, and a
    // reconcile with several Pending batches reads once.
    if listed.is_none() {
        let api: Api<LaunchGroup> = Api::namespaced(s.ctx.client.clone(), &s.owner.namespace);
        let groups = api
            .list(&ListParams::default())
            .await
            .map_err(|source| Error::Kube {
                action: "list LaunchGroups",
                source,
            })?;
        *listed = Some(groups.items);
    }
    let groups = listed.iter().flatten();
    if let Some(name) = &batch.group {
        return Ok(groups
            .clone()
            .find(|g| g.name_any() == *name)
            .cloned()
            .map_or_else(|| Found::Gone(name.clone()), |g| Found::Group(Box::new(g))));
    }
    Ok(groups
        .clone()
        .find(|g| group::has_member(&g.spec, &s.owner.uid, &batch.id))
        .cloned()
        .map_or(Found::Alone, |g| Found::Group(Box::new(g))))
}

/// A batch whose group is gone (deleted by hand: the sweep deletes a group
/// only once every member has settled): its share cannot be told apart any
/// more, so the batch is settled with nothing and says so; the group's
/// machines no request lists are collected by the sweep as orphans.
pub fn gone(s: &mut Session<'_>, batch: &LaunchBatch, name: &str) {
    warn!(request = %s.key(), batch = %batch.id, group = %name, "launch group of a pending batch is gone");
    if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) {
        b.state = LaunchState::Launched;
        b.message = Some(format!(
            "its launch group {name} was deleted before this request recorded its share; \
             machines of the group that no request lists are collected as orphans"
        ));
    }
}

/// Settles member `batch` of `group`: re-sends the group's token when the
/// template still builds the group's parameters, else by the group's tag.
pub async fn settle(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
    batch: &LaunchBatch,
    launch_group: &LaunchGroup,
) -> Result<(), Error> {
    let name = launch_group.name_any();
    let spec = &launch_group.spec;
    if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) {
        b.group = Some(name.clone());
    }
    let built = act::launch_spec(s, provider, template, batch).await;
    let why = match built {
        Ok(built)
            if built.digest == batch.params_digest && built.shared_digest == spec.params_digest =>
        {
            let call = group::group_spec(
                &built.spec,
                spec,
                &s.owner.namespace,
                &name,
                &template.spec.tags,
            );
            info!(request = %s.key(), batch = %batch.id, group = %name, "re-sending the launch group's token");
            let answer = s.ctx.coalescer.resend(provider, &name, &call).await;
            let share = answer.and_then(|a| {
                group::share_of(&a, &spec.members, &s.owner.uid, &batch.id)
                    .ok_or_else(|| group::not_a_member(&name))
            });
            act::answered(s, provider, &batch.id, batch.count, Some(name), share).await?;
            return Ok(());
        }
        Ok(_) => "the template changed after the group was recorded".to_string(),
        Err(blocked) => format!("its launch spec cannot be built: {}", blocked.message),
    };
    by_tag(s, provider, batch, launch_group, &why).await
}

/// The group's machines by its tag, split once a full sweep after the grace
/// has looked (until then the listing may lack some, and a split of part of
/// them would hand out the wrong ones); the batch is held Pending meanwhile.
async fn by_tag(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    batch: &LaunchBatch,
    launch_group: &LaunchGroup,
    why: &str,
) -> Result<(), Error> {
    let name = launch_group.name_any();
    let grace = s.ctx.config.gc_grace_period;
    let created = launch_group
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .or_else(|| batch.created_at.as_ref().map(|t| t.0));
    if !s.ctx.full_sweep.has_looked_after(created, grace) {
        if !s.ctx.full_sweep.has_looked_after(created, Duration::ZERO) {
            s.ctx.full_sweep.request();
        }
        if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) {
            b.message = Some(format!(
                "settling through launch group {name} by its tag ({why}; not re-sent): \
                 held until a full sweep after the grace period has looked for its machines"
            ));
        }
        return Ok(());
    }
    let tags = vec![
        (CLUSTER_TAG.to_string(), s.owner.cluster.clone()),
        (
            GROUP_TAG.to_string(),
            format!("{}/{name}", s.owner.namespace),
        ),
    ];
    let found = provider
        .describe_owned(&tags)
        .await
        .map_err(|source| Error::Provider {
            action: format!("settling batch {} by its group's tag", batch.id),
            source,
        })?;
    let at = launch_group
        .spec
        .members
        .iter()
        .position(|m| m.uid == s.owner.uid && m.batch == batch.id);
    let share = at
        .and_then(|at| {
            group::split(&found, &launch_group.spec.members)
                .into_iter()
                .nth(at)
        })
        .unwrap_or_default();
    s.ctx.tracker.record(share.clone());
    let listed = share.len();
    for m in &share {
        if !s.status.machines.iter().any(|k| k.id == m.id) {
            s.status
                .machines
                .push(translate::new_machine(m, Some(&batch.id)));
        }
    }
    if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) {
        b.state = LaunchState::Launched;
        b.message = Some(format!(
            "settled through launch group {name} by its tag ({why}; not re-sent): \
             {listed} of {} machines found",
            batch.count
        ));
    }
    info!(request = %s.key(), batch = %batch.id, group = %name, listed, "settled a group member by the group's tag");
    Ok(())
}

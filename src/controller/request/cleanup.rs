//! Deletion: terminate every machine of the request, found by its tags and
//! by the ids status lists, and release the finalizer only once EC2 has
//! confirmed each one shutting down or gone.
//!
//! What the tag listing does not show is not taken for gone: EC2's reads are
//! eventually consistent (<https://docs.aws.amazon.com/AWSEC2/latest/devguide/eventual-consistency.html>),
//! so a fresh instance may be missing from tag filters, from `instance-id`
//! reads, and TerminateInstances may answer NotFound for it, which "does not
//! mean the instance was or will be terminated". So status machines the
//! listing misses are looked up and terminated by id, an id EC2 does not
//! know is tried again until it is older than `gcGracePeriod`, and a Pending
//! batch (sent or not, its machines maybe invisible yet) holds the finalizer
//! until `gcGracePeriod` after deletion began: no launch of the request can
//! be sent after that (deleting requests are only cleaned up), so by then its
//! machines show in the tag listing and are terminated with the rest.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};

use super::act;
use super::gate;
use super::group_settle::{self, Found};
use super::session::{now, Session};
use crate::api::conditions::{self, READY};
use crate::api::{
    LaunchState, MachineRequest, MachineResult, MachineTemplate, RequestPhase, TerminationReason,
};
use crate::controller::cloud::translate;
use crate::controller::reason::Reason;
use crate::controller::{Context, Error};
use crate::provider::MachineProvider;

/// How soon a deleting request looks again while its machines shut down.
pub const RETRY_DELETING: Duration = Duration::from_secs(2);

/// One reconcile of a request being deleted: `Ok` once the finalizer may go
/// (kube's finalizer helper then removes it), [`Error::StillDeleting`] while
/// something still holds it.
pub async fn cleanup(mr: &MachineRequest, ctx: &Context) -> Result<Action, Error> {
    let mut s = Session::load(mr, ctx)?;
    let template = ctx
        .templates
        .get(&ObjectRef::new(&mr.spec.template_ref.name).within(&s.owner.namespace));
    let provider_name =
        gate::cleanup_provider(template.as_deref(), &s.status, ctx.providers.default_name());
    let Some(provider) = ctx.providers.get(&provider_name) else {
        return unconfigured(&mut s, mr, &provider_name).await;
    };
    if let Some(template) = template.as_deref() {
        take_group_shares(&mut s, &provider, template).await;
    }
    let found = provider
        .describe_owned(&s.owner.request_filter())
        .await
        .map_err(|source| Error::Provider {
            action: "listing the request's machines".into(),
            source,
        })?;
    ctx.tracker.record(found.clone());
    // Machines of Pending batches (and any a lost status write left out) that
    // the listing shows are the request's like the rest.
    s.adopt(found.clone());
    let seen: BTreeSet<String> = found.iter().map(|m| m.id.clone()).collect();
    // Whatever status lists that the tag listing missed, by id: a tag index
    // lagging behind, or a machine wrongly taken for gone.
    let unseen: Vec<String> = s
        .status
        .machines
        .iter()
        .filter(|m| !seen.contains(&m.id))
        .map(|m| m.id.clone())
        .collect();
    let by_id = provider
        .describe_machines(&unseen)
        .await
        .map_err(|source| Error::Provider {
            action: "looking up the request's machines by id".into(),
            source,
        })?;
    ctx.tracker.record(by_id.clone());
    for m in &mut s.status.machines {
        if let Some(f) = found.iter().chain(&by_id).find(|f| f.id == m.id) {
            translate::update(m, f);
        }
        if m.termination_reason.is_none() {
            m.termination_reason = Some(TerminationReason::RequestDeleted);
        }
        m.result = MachineResult::of(m.state, m.termination_reason);
    }
    // Every machine not known to be going, by id: those EC2 does not know yet
    // answer NotFound and stay as they are, to be tried again.
    let to_terminate: Vec<String> = s
        .status
        .machines
        .iter()
        .filter(|m| !m.state.is_terminating())
        .map(|m| m.id.clone())
        .collect();
    if !to_terminate.is_empty() {
        act::terminate(&mut s, &provider, &to_terminate).await?;
    }
    let deleting_since = mr.metadata.deletion_timestamp.as_ref();
    let hold = Hold::of(&s.status, deleting_since, ctx.config.gc_grace_period);
    let st = &mut s.status;
    st.phase = Some(RequestPhase::Deleting);
    conditions::set_condition(
        &mut st.conditions,
        conditions::new_condition(
            READY,
            false,
            Reason::Deleting.as_str(),
            hold.message(),
            mr.metadata.generation,
            now(),
        ),
    );
    if let Err(err) = s.write().await {
        debug!(request = %s.key(), error = %err, "status write while deleting failed");
    }
    s.count_machines();
    if hold.releases() {
        let ids: Vec<String> = s.status.machines.iter().map(|m| m.id.clone()).collect();
        ctx.tracker
            .forget(&ObjectRef::from_obj(mr), &s.owner.uid, &ids);
        info!(request = %s.key(), machines = ids.len(), unconfirmed = hold.gone_unconfirmed,
            "all machines terminating; releasing the finalizer");
        return Ok(Action::await_change());
    }
    Err(Error::StillDeleting(hold.waits().join(" and ")))
}

/// Pending batches that went out in a coalesced call: their machines carry
/// the group's tag, not the request's, so the tag listing below cannot find
/// them; the group's token is re-sent and the request's share put into
/// status, to be terminated by id with the rest. What cannot be taken this
/// way (an error, the template changed) stays Pending: the finalizer waits
/// for it as for any Pending batch, and what is left then is an orphan of
/// the sweep's once its group is gone.
async fn take_group_shares(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
) {
    let pending = s.status.pending_launches();
    let mut groups = None;
    for batch in pending {
        let found = group_settle::find(s, &batch, &mut groups).await;
        let result = match found {
            Ok(Found::Group(group)) => {
                group_settle::settle(s, provider, template, &batch, &group).await
            }
            Ok(_) => Ok(()),
            Err(err) => Err(err),
        };
        if let Err(err) = result {
            debug!(request = %s.key(), batch = %batch.id, error = %err,
                "taking a launch group's share while deleting failed; trying again");
        }
    }
}

/// Deletion when the request's provider is not configured: nothing can be
/// terminated. A request that recorded a provider (it launched, or may have)
/// keeps its finalizer and says why, on its Ready condition and in a Warning
/// Event, until that provider is configured again; releasing it would leave
/// its machines running with nobody to terminate them. One that never
/// recorded one launched nothing and goes.
async fn unconfigured(
    s: &mut Session<'_>,
    mr: &MachineRequest,
    provider_name: &str,
) -> Result<Action, Error> {
    if s.status.provider.is_none() && !gate::holds_machines(&s.status) {
        info!(request = %s.key(), provider = %provider_name, "provider not configured and nothing launched; releasing the finalizer");
        return Ok(Action::await_change());
    }
    let message = unconfigured_message(provider_name);
    let st = &mut s.status;
    st.phase = Some(RequestPhase::Deleting);
    let was = conditions::find_condition(&st.conditions, READY).map(|c| c.reason.clone());
    conditions::set_condition(
        &mut st.conditions,
        conditions::new_condition(
            READY,
            false,
            Reason::ProviderUnknown.as_str(),
            message.clone(),
            mr.metadata.generation,
            now(),
        ),
    );
    if was.as_deref() != Some(Reason::ProviderUnknown.as_str()) {
        warn!(request = %s.key(), provider = %provider_name, "provider not configured; keeping the finalizer");
        s.event(
            EventType::Warning,
            Reason::ProviderUnknown,
            "Delete",
            &message,
        )
        .await;
    }
    if let Err(err) = s.write().await {
        debug!(request = %s.key(), error = %err, "status write while deleting failed");
    }
    Err(Error::StillDeleting(format!(
        "provider {provider_name:?} to be configured again"
    )))
}

/// What a deleting request whose provider is gone from the configuration says.
fn unconfigured_message(provider_name: &str) -> String {
    format!(
        "provider {provider_name:?}, where this request's machines were launched, is not \
         configured any more: they cannot be terminated, so the finalizer stays until it is \
         configured again (or until someone who terminated them removes the finalizer)"
    )
}

/// What still keeps a deleting request's finalizer, after this reconcile's
/// terminations.
#[derive(Debug, Default, PartialEq, Eq)]
struct Hold {
    /// Machines EC2 has not confirmed going (it did not know their id yet)
    /// and that are younger than the grace period.
    young_unconfirmed: usize,
    /// Machines EC2 has not confirmed going that are older than the grace
    /// period: EC2 answers NotFound by id for them, they are taken as gone.
    gone_unconfirmed: usize,
    /// Pending batches while the grace period since deletion runs.
    pending_batches: usize,
}

impl Hold {
    /// Reads `status` as terminations left it. A machine's age counts from its
    /// launch time, or, without one, from `deleting_since` (nothing of the
    /// request is launched after deletion begins), as does a Pending batch's.
    fn of(
        status: &crate::api::MachineRequestStatus,
        deleting_since: Option<&Time>,
        grace: Duration,
    ) -> Hold {
        let young = |t: Option<&Time>| age(t.or(deleting_since)).is_none_or(|a| a < grace);
        let mut hold = Hold::default();
        for m in status.machines.iter().filter(|m| !m.state.is_terminating()) {
            if young(m.launch_time.as_ref()) {
                hold.young_unconfirmed += 1;
            } else {
                hold.gone_unconfirmed += 1;
            }
        }
        if young(None) {
            hold.pending_batches = status
                .launches
                .iter()
                .filter(|b| b.state == LaunchState::Pending)
                .count();
        }
        hold
    }

    /// Whether the finalizer may go.
    fn releases(&self) -> bool {
        self.young_unconfirmed == 0 && self.pending_batches == 0
    }

    /// The Ready condition's message: what deletion is waiting for, if anything.
    fn message(&self) -> String {
        let waits = self.waits();
        if waits.is_empty() {
            "terminating all machines".into()
        } else {
            format!(
                "terminating all machines; waiting for {}",
                waits.join(" and ")
            )
        }
    }

    /// What deletion waits for, one phrase each.
    fn waits(&self) -> Vec<String> {
        let mut waits = Vec::new();
        if self.young_unconfirmed > 0 {
            waits.push(format!(
                "{} machine(s) the cloud does not show yet",
                self.young_unconfirmed
            ));
        }
        if self.pending_batches > 0 {
            waits.push(format!(
                "{} launch batch(es) whose machines may not show yet",
                self.pending_batches
            ));
        }
        waits
    }
}

fn age(t: Option<&Time>) -> Option<Duration> {
    let t = t?;
    let secs = Timestamp::now().as_second() - t.0.as_second();
    u64::try_from(secs).ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{Machine, MachineRequestStatus, MachineState};

    const GRACE: Duration = Duration::from_secs(120);

    fn ago(secs: i64) -> Time {
        Time(Timestamp::from_second(Timestamp::now().as_second() - secs).expect("a time"))
    }

    fn machine(id: &str, state: MachineState, launched_ago: Option<i64>) -> Machine {
        let mut m = Machine::unknown(id);
        m.state = state;
        m.launch_time = launched_ago.map(ago);
        m
    }

    fn status(machines: Vec<Machine>, pending: usize) -> MachineRequestStatus {
        let launches: Vec<serde_json::Value> = (0..pending)
            .map(|i| {
                serde_json::json!({"id": format!("b-{i}"), "token": "t", "count": 1,
                    "paramsDigest": "", "state": "Pending"})
            })
            .collect();
        let mut st: MachineRequestStatus =
            serde_json::from_value(serde_json::json!({ "launches": launches })).expect("status");
        st.machines = machines;
        st
    }

    #[test]
    fn confirmed_going_machines_release_and_young_unknown_ones_hold() {
        let deleting = ago(5);
        let st = status(
            vec![
                machine("i-1", MachineState::ShuttingDown, Some(10)),
                machine("i-2", MachineState::Terminated, None),
            ],
            0,
        );
        let h = Hold::of(&st, Some(&deleting), GRACE);
        assert!(h.releases(), "{h:?}");
        assert_eq!(h.message(), "terminating all machines");

        // EC2 did not know i-3's id yet (TerminateInstances NotFound): held.
        let st = status(vec![machine("i-3", MachineState::Pending, Some(10))], 0);
        let h = Hold::of(&st, Some(&deleting), GRACE);
        assert!(!h.releases());
        assert_eq!(h.young_unconfirmed, 1);
        assert!(h
            .message()
            .contains("1 machine(s) the cloud does not show yet"));

        // Older than the grace period and still unknown by id: gone.
        let st = status(vec![machine("i-4", MachineState::Running, Some(600))], 0);
        let h = Hold::of(&st, Some(&deleting), GRACE);
        assert!(h.releases(), "{h:?}");
        assert_eq!(h.gone_unconfirmed, 1);
    }

    #[test]
    fn a_machine_without_launch_time_ages_from_the_deletion() {
        let st = status(vec![machine("i-1", MachineState::Pending, None)], 0);
        assert!(!Hold::of(&st, Some(&ago(5)), GRACE).releases());
        assert!(Hold::of(&st, Some(&ago(600)), GRACE).releases());
    }

    #[test]
    fn pending_batches_hold_for_the_grace_period_after_deletion() {
        let st = status(Vec::new(), 2);
        let h = Hold::of(&st, Some(&ago(5)), GRACE);
        assert_eq!(h.pending_batches, 2);
        assert!(!h.releases());
        assert!(
            h.message().contains("2 launch batch(es)"),
            "{}",
            h.message()
        );
        assert!(Hold::of(&st, Some(&ago(600)), GRACE).releases());
        assert!(Hold::of(&st, Some(&ago(0)), Duration::ZERO).releases());
    }
}

//! The end of a reconcile, said on the request: the status step's result
//! written (with a Warning Event when Degraded changes and the machines to
//! poll registered), or the error a failed reconcile ended in.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use tracing::debug;

use super::gate::Blocked;
use super::session::{now, Session};
use super::status::{self, Wanted};
use crate::api::conditions::{self, DEGRADED, READY};
use crate::api::RequestPhase;
use crate::controller::reason::Reason;
use crate::controller::{events, Error};
use crate::provider::MachineProvider;

/// The status step: summarize (pure), write, announce a change of Degraded,
/// register the machines to poll, and say when to look again.
pub async fn finish(
    s: &mut Session<'_>,
    provider: Option<&Arc<dyn MachineProvider>>,
    blocked: Option<Blocked>,
    held_back: i32,
) -> Result<Action, Error> {
    let want = Wanted {
        count: s.mr.spec.count,
        replace_lost: s.mr.spec.replace_lost,
        generation: s.mr.metadata.generation,
        status_checks: !s.ctx.config.status_check_interval.is_zero(),
        status_checks_listed: provider
            .is_some_and(|p| s.ctx.tracker.status_checks().listed(p.name())),
    };
    let summary = status::summarize(want, &mut s.status, blocked, held_back, now());
    s.write().await?;
    if let (true, Some(d)) = (summary.degraded_changed, &summary.degraded) {
        s.event(EventType::Warning, d.reason, "Reconcile", &d.message)
            .await;
    }
    if let Some(p) = provider {
        s.ctx
            .tracker
            .watch(ObjectRef::from_obj(s.mr), p.name(), summary.watch);
    }
    Ok(Action::requeue(
        summary.next.delay(s.ctx.capacity.next_expiry()),
    ))
}

/// Says on the request why its reconcile failed: Degraded (and Ready, unless
/// all machines run) name the error with the cloud's code and message, and a
/// Warning Event carries it, so no condition keeps a cause that is no longer
/// true. A write conflict is not reported: the newer copy decides.
pub async fn failure(s: &mut Session<'_>, err: &Error) {
    if matches!(err, Error::Kube { source: kube::Error::Api(ae), .. } if ae.code == 409) {
        return;
    }
    let reason = Reason::of_error(err);
    let message = events::chain(err);
    let generation = s.mr.metadata.generation;
    let st = &mut s.status;
    let condition = |type_: &str| {
        conditions::new_condition(
            type_,
            false,
            reason.as_str(),
            message.clone(),
            generation,
            now(),
        )
    };
    if !conditions::is_true(&st.conditions, READY) {
        conditions::set_condition(&mut st.conditions, condition(READY));
        st.phase = Some(RequestPhase::Degraded);
    }
    let mut degraded = condition(DEGRADED);
    degraded.status = conditions::TRUE.into();
    conditions::set_condition(&mut st.conditions, degraded);
    if let Err(write) = s.write().await {
        debug!(request = %s.key(), error = %write, "writing the failure to status failed");
    }
    s.event(EventType::Warning, reason, "Reconcile", &message)
        .await;
}

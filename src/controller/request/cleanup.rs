//! Deletion: terminate every machine tagged for the request (and every one
//! status lists), and release the finalizer only once the cloud reports them
//! all shutting down or gone.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, info, warn};

use super::act;
use super::gate;
use super::session::{now, Session};
use crate::api::conditions::{self, READY};
use crate::api::{MachineRequest, MachineResult, RequestPhase, TerminationReason};
use crate::controller::cloud::translate;
use crate::controller::reason::Reason;
use crate::controller::{Context, Error};

/// How soon a deleting request looks again while its machines shut down.
const RETRY_DELETING: Duration = Duration::from_secs(2);

/// One reconcile of a request being deleted; `await_change` once the
/// finalizer may go.
pub async fn cleanup(mr: &MachineRequest, ctx: &Context) -> Result<Action, Error> {
    let mut s = Session::load(mr, ctx)?;
    let template = ctx
        .templates
        .get(&ObjectRef::new(&mr.spec.template_ref.name).within(&s.owner.namespace));
    let provider_name =
        gate::provider_name(template.as_deref(), &s.status, ctx.providers.default_name());
    let Some(provider) = ctx.providers.get(&provider_name) else {
        warn!(request = %s.key(), provider = %provider_name, "provider not configured; cannot terminate machines, releasing the request");
        return Ok(Action::await_change());
    };
    let found = provider
        .describe_owned(&s.owner.request_filter())
        .await
        .map_err(|source| Error::Provider {
            action: "listing the request's machines".into(),
            source,
        })?;
    ctx.tracker.record(found.clone());
    s.adopt(found.clone());
    let seen: BTreeSet<String> = found.iter().map(|m| m.id.clone()).collect();
    for m in &mut s.status.machines {
        if let Some(f) = found.iter().find(|f| f.id == m.id) {
            translate::update(m, f);
        }
        if m.termination_reason.is_none() {
            m.termination_reason = Some(TerminationReason::RequestDeleted);
        }
        m.result = MachineResult::of(m.state, m.termination_reason);
    }
    let to_terminate: Vec<String> = found
        .iter()
        .filter(|m| !m.state.is_terminating())
        .map(|m| m.id.clone())
        .collect();
    // Listed but not visible: give the cloud's eventual consistency the grace period.
    let grace = ctx.config.gc_grace_period;
    let invisible_young = s
        .status
        .machines
        .iter()
        .filter(|m| !seen.contains(&m.id) && !m.state.is_terminating())
        .any(|m| age(m.launch_time.as_ref()).is_none_or(|a| a < grace));
    if !to_terminate.is_empty() {
        act::terminate(&mut s, &provider, &to_terminate).await?;
    }
    let st = &mut s.status;
    st.phase = Some(RequestPhase::Deleting);
    conditions::set_condition(
        &mut st.conditions,
        conditions::new_condition(
            READY,
            false,
            Reason::Deleting.as_str(),
            "terminating all machines",
            mr.metadata.generation,
            now(),
        ),
    );
    if let Err(err) = s.write().await {
        debug!(request = %s.key(), error = %err, "status write while deleting failed");
    }
    if to_terminate.is_empty() && !invisible_young {
        let ids: Vec<String> = s.status.machines.iter().map(|m| m.id.clone()).collect();
        ctx.tracker
            .forget(&ObjectRef::from_obj(mr), &s.owner.uid, &ids);
        info!(request = %s.key(), machines = ids.len(), "all machines terminating; releasing the finalizer");
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(RETRY_DELETING))
}

fn age(t: Option<&Time>) -> Option<Duration> {
    let t = t?;
    let secs = Timestamp::now().as_second() - t.0.as_second();
    u64::try_from(secs).ok().map(Duration::from_secs)
}

//! "Intent before launch", as a type. A launch may only be sent for a batch
//! the apiserver holds as `Pending` in the request's status: after a crash the
//! next reconcile then finds it and settles it (adopts its machines or re-sends
//! the same token) instead of losing or repeating it. [`Recorded`] can only be
//! made by [`record`] (after the status write) or by [`Recorded::pending`]
//! (for a batch already in the written status), and
//! [`super::act::launch`] takes one.

use super::session::{now, Session};
use crate::api::conditions::{find_condition, new_condition, set_condition, READY};
use crate::api::{LaunchBatch, LaunchState};
use crate::controller::reason::Reason;
use crate::controller::Error;
use crate::provider::LaunchSpec;

/// A request's first status write can be this record, before any summary:
/// it says `Ready=False` (Provisioning) and the generation it acts on, so
/// a GitOps tool reading `Ready` and `observedGeneration` (Flux's kstatus)
/// never takes a status without conditions for a finished request.
fn not_ready_yet(s: &mut Session<'_>) {
    if find_condition(&s.status.conditions, READY).is_some() {
        return;
    }
    let generation = s.mr.metadata.generation;
    let asked: i32 = s
        .status
        .launches
        .iter()
        .filter(|b| b.state == LaunchState::Pending)
        .map(|b| b.count)
        .sum();
    set_condition(
        &mut s.status.conditions,
        new_condition(
            READY,
            false,
            Reason::Provisioning.as_str(),
            format!("launching {asked} machines"),
            generation,
            now(),
        ),
    );
    s.status.observed_generation = generation;
}

/// A batch chosen by this reconcile, not written yet.
pub struct NewBatch {
    /// The status entry (state Pending, with its token and digest).
    pub batch: LaunchBatch,
    /// What will be sent.
    pub spec: LaunchSpec,
    /// What the spec shares with other requests' batches (coalescing key).
    pub shared_digest: String,
}

/// A batch whose intent the apiserver has accepted: safe to send.
#[derive(Debug)]
pub struct Recorded {
    batch_id: String,
    spec: LaunchSpec,
    shared_digest: String,
}

impl Recorded {
    /// The batch, if the written status holds it as Pending.
    pub fn pending(
        s: &Session<'_>,
        batch_id: &str,
        spec: LaunchSpec,
        shared_digest: String,
    ) -> Option<Recorded> {
        s.written()
            .launches
            .iter()
            .any(|b| b.id == batch_id && b.state == LaunchState::Pending)
            .then(|| Recorded {
                batch_id: batch_id.to_string(),
                spec,
                shared_digest,
            })
    }

    /// The batch's id (its tag and status entry).
    pub fn batch_id(&self) -> &str {
        &self.batch_id
    }

    /// What to send.
    pub fn spec(&self) -> &LaunchSpec {
        &self.spec
    }

    /// The digest of what the spec shares with other requests' batches.
    pub fn shared_digest(&self) -> &str {
        &self.shared_digest
    }
}

/// Writes the intent (marks made by the plan, and `new` as a Pending batch)
/// with optimistic concurrency; if the write fails nothing may be sent.
pub async fn record(s: &mut Session<'_>, new: Option<NewBatch>) -> Result<Option<Recorded>, Error> {
    let new = new.inspect(|n| s.status.launches.push(n.batch.clone()));
    not_ready_yet(s);
    s.write().await?;
    Ok(new.and_then(|n| Recorded::pending(s, &n.batch.id, n.spec, n.shared_digest)))
}

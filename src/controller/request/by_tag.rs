//! Settling a Pending batch by its tag, when its token cannot settle it:
//! the template changed after the batch was recorded, its spec cannot be
//! built, or EC2 says the token was used with other parameters.
//!
//! The batch's machines are looked up by the batch tag and adopted. What that
//! lookup does not show may only be invisible yet (EC2's tag index lags,
//! <https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>),
//! so the batch stays Pending and holds the missing machines in the
//! request's count (see
//! [`crate::api::MachineRequestStatus::unconfirmed_launches`]) until a full
//! sweep that started after the batch's creation plus `gcGracePeriod` has
//! looked for them; only then are they given up and launched anew.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::info;

use super::session::Session;
use crate::api::{LaunchBatch, LaunchState};
use crate::controller::Error;
use crate::provider::MachineProvider;

/// What a batch settled by its tag is, given how many of its machines status
/// lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ByTag {
    /// Every machine it asked for is listed: Launched.
    Complete,
    /// Some are missing and may only be invisible: stay Pending, hold them.
    Hold {
        /// Machines held.
        missing: i32,
    },
    /// A full sweep after the grace did not find the missing ones either:
    /// they were never launched. Launched with what was found.
    Release {
        /// Machines given up.
        missing: i32,
    },
}

/// The rule for a batch settled by its tag: `listed` of its `count` machines
/// are in status; `looked` is whether a complete full sweep started after
/// its creation plus the grace period.
pub fn by_tag(count: i32, listed: i32, looked: bool) -> ByTag {
    let missing = (count - listed).max(0);
    match (missing, looked) {
        (0, _) => ByTag::Complete,
        (missing, false) => ByTag::Hold { missing },
        (missing, true) => ByTag::Release { missing },
    }
}

/// Adopts the batch's machines by its tag; holds or releases the missing ones.
pub async fn settle(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    batch: &LaunchBatch,
    why: &str,
) -> Result<(), Error> {
    let found = s
        .ctx
        .batch_lookups
        .find(provider, &s.owner.cluster, &s.owner.uid, &batch.id)
        .await
        .map_err(|source| Error::Provider {
            action: format!("settling batch {}", batch.id),
            source,
        })?;
    s.ctx.tracker.record(found.clone());
    s.adopt(found);
    // What a full sweep found meanwhile, before deciding that it found nothing.
    let unlisted = s.ctx.tracker.take_unlisted(&s.owner.uid);
    s.adopt(unlisted);
    let listed = i32::try_from(
        s.status
            .machines
            .iter()
            .filter(|m| m.batch.as_deref() == Some(batch.id.as_str()))
            .count(),
    )
    .unwrap_or(i32::MAX);
    let grace = s.ctx.config.gc_grace_period;
    let created = batch.created_at.as_ref().map(|t| t.0);
    let looked = s.ctx.full_sweep.has_looked_after(created, grace);
    let verdict = by_tag(batch.count, listed, looked);
    if matches!(verdict, ByTag::Hold { .. })
        && !s.ctx.full_sweep.has_looked_after(created, Duration::ZERO)
    {
        // No full listing since the batch was recorded: ask for one now (the
        // sweep asks for another once the grace has passed).
        s.ctx.full_sweep.request();
    }
    let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) else {
        return Ok(());
    };
    let count = batch.count;
    match verdict {
        ByTag::Complete => {
            b.state = LaunchState::Launched;
            b.message = Some(format!(
                "settled by its tag ({why}; not re-sent): all {count} machines found"
            ));
        }
        ByTag::Hold { missing } => {
            b.message = Some(format!(
                "settling by its tag ({why}; not re-sent): {listed} of {count} machines found; \
                 the other {missing} may only be invisible yet and are held until a full sweep \
                 after {} has looked for them",
                until(created, grace)
            ));
        }
        ByTag::Release { missing } => {
            b.state = LaunchState::Launched;
            b.message = Some(format!(
                "settled by its tag ({why}; not re-sent): {listed} of {count} machines found; \
                 a full sweep after the grace period did not find the other {missing}"
            ));
        }
    }
    info!(request = %s.key(), batch = %batch.id, listed, count, ?verdict, "settled pending batch by its tag");
    Ok(())
}

fn until(created: Option<Timestamp>, grace: Duration) -> String {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    created
        .and_then(|c| Timestamp::from_second(c.as_second().saturating_add(grace)).ok())
        .map_or_else(|| "the next one".to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_machines_are_held_until_a_full_sweep_after_the_grace() {
        // (count, listed, looked, verdict)
        let rows = [
            (3, 3, false, ByTag::Complete),
            (3, 4, true, ByTag::Complete),
            (3, 1, false, ByTag::Hold { missing: 2 }),
            (3, 0, false, ByTag::Hold { missing: 3 }),
            (3, 1, true, ByTag::Release { missing: 2 }),
            (3, 0, true, ByTag::Release { missing: 3 }),
        ];
        for (count, listed, looked, want) in rows {
            assert_eq!(
                by_tag(count, listed, looked),
                want,
                "{count} {listed} {looked}"
            );
        }
    }
}

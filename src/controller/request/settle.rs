//! Settling batches left `Pending` by a crash or an unclear failure.
//!
//! EC2's answer to a ClientToken is authoritative: the same token with the
//! same parameters returns the instances the first call launched
//! (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>),
//! all of them, where a tag-filtered read may show only part of them for a
//! while (the tag index lags). So a batch whose launch spec can still be built
//! with the digest it was recorded with is re-sent with its token, first.
//!
//! Only when that is impossible (the template changed, or the spec cannot be
//! built) are its machines looked up by the batch tag and adopted. What that
//! lookup does not show may only be invisible yet, so the batch stays Pending
//! and holds the missing machines in the request's count (see
//! [`crate::api::MachineRequestStatus::unconfirmed_launches`]) until a full
//! sweep that started after the batch's creation plus `gcGracePeriod` has
//! looked for them; only then are they given up and launched anew.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tracing::{debug, info};

use super::act;
use super::batch;
use super::intent::Recorded;
use super::session::Session;
use crate::api::{LaunchBatch, LaunchState, MachineTemplate};
use crate::controller::Error;
use crate::provider::MachineProvider;

/// How a Pending batch is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Send it again with its token: EC2 returns what it launched, or launches it.
    Resend,
    /// Its token cannot be sent again with the same parameters: look its
    /// machines up by tag, and hold the ones not seen. The text says why.
    ByTag(String),
}

/// The route of a batch recorded with `recorded_digest`, given the digest
/// of the spec as it can be built now (`Err`: why it cannot be built).
pub fn route(now: Result<&str, &str>, recorded_digest: &str) -> Route {
    match now {
        Ok(d) if d == recorded_digest => Route::Resend,
        Ok(_) => Route::ByTag("the template changed after the batch was recorded".into()),
        Err(why) => Route::ByTag(format!("its launch spec cannot be built: {why}")),
    }
}

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

/// Settles every Pending batch of the session's status.
pub async fn pending(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
) -> Result<(), Error> {
    let pending: Vec<LaunchBatch> = s
        .status
        .launches
        .iter()
        .filter(|b| b.state == LaunchState::Pending)
        .cloned()
        .collect();
    for batch in pending {
        let built = act::launch_spec(s, provider, template, &batch).await;
        let digest = built.as_ref().map(batch::digest);
        let r = route(
            digest
                .as_deref()
                .map_err(|blocked| blocked.message.as_str()),
            &batch.params_digest,
        );
        match (r, built) {
            (Route::Resend, Ok(spec)) => {
                let Some(recorded) = Recorded::pending(s, &batch.id, spec) else {
                    // Pending here but not in what the apiserver holds: never sent.
                    debug!(request = %s.key(), batch = %batch.id, "batch not recorded yet; not re-sent");
                    continue;
                };
                info!(request = %s.key(), batch = %batch.id, token = %batch.token, "re-sending pending batch with its token");
                if let Some(blocked) = act::launch(s, provider, recorded).await? {
                    debug!(request = %s.key(), reason = %blocked.reason, "re-sent batch refused");
                }
            }
            (Route::ByTag(why), _) => settle_by_tag(s, provider, &batch, &why).await?,
            // `route` re-sends only a spec that was built.
            (Route::Resend, Err(blocked)) => {
                settle_by_tag(s, provider, &batch, &blocked.message).await?
            }
        }
    }
    Ok(())
}

/// Adopts the batch's machines by its tag; holds or releases the missing ones.
async fn settle_by_tag(
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
    fn the_token_is_re_sent_whenever_the_same_parameters_can_be_built() {
        // (digest now or why not, recorded digest, route is a re-send)
        let rows: [(Result<&str, &str>, &str, bool); 4] = [
            (Ok("sha256:a"), "sha256:a", true),
            (Ok("sha256:b"), "sha256:a", false),
            (Err("Secret s has no key \"k\""), "sha256:a", false),
            // An old record without a digest is never re-sent.
            (Ok("sha256:a"), "", false),
        ];
        for (now, recorded, resend) in rows {
            let r = route(now, recorded);
            assert_eq!(r == Route::Resend, resend, "{now:?} vs {recorded}: {r:?}");
        }
        match route(Err("no image"), "d") {
            Route::ByTag(why) => assert!(why.contains("no image"), "{why}"),
            r => panic!("{r:?}"),
        }
    }

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

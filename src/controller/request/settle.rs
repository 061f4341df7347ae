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
//! built) is the batch settled by its tag ([`super::by_tag`]).
//!
//! A batch that went out in a coalesced call never sent its own token, so it
//! is settled through its LaunchGroup instead ([`super::group_settle`]): a
//! batch that names its group reads it; one that does not (a crash before
//! the group's answer was recorded) is looked up among the namespace's
//! groups, read from the apiserver, before its own token is ever sent.

use std::sync::Arc;

use tracing::{debug, info};

use super::act;
use super::by_tag;
use super::group_settle::{self, Found};
use super::intent::Recorded;
use super::session::Session;
use crate::api::{LaunchGroup, MachineTemplate};
use crate::controller::Error;
use crate::failpoint;
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

/// Settles every Pending batch of the session's status.
pub async fn pending(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
) -> Result<(), Error> {
    let pending = s.status.pending_launches();
    let mut groups: Option<Vec<LaunchGroup>> = None;
    for batch in pending {
        match group_settle::find(s, &batch, &mut groups).await? {
            Found::Group(group) => {
                group_settle::settle(s, provider, template, &batch, &group).await?;
                continue;
            }
            Found::Gone(name) => {
                group_settle::gone(s, &batch, &name);
                continue;
            }
            Found::Alone => {}
        }
        let built = act::launch_spec(s, provider, template, &batch).await;
        let r = route(
            built
                .as_ref()
                .map(|b| b.digest.as_str())
                .map_err(|blocked| blocked.message.as_str()),
            &batch.params_digest,
        );
        match (r, built) {
            (Route::Resend, Ok(built)) => {
                let Some(recorded) =
                    Recorded::pending(s, &batch.id, built.spec, built.shared_digest)
                else {
                    // Pending here but not in what the apiserver holds: never sent.
                    debug!(request = %s.key(), batch = %batch.id, "batch not recorded yet; not re-sent");
                    continue;
                };
                info!(request = %s.key(), batch = %batch.id, token = %batch.token, "re-sending pending batch with its token");
                // Alone and with its own token, never in a new group: this
                // token may have launched already.
                let outcome = provider.launch(recorded.spec()).await;
                failpoint!("request-after-launch");
                let answered =
                    act::answered(s, provider, &batch.id, batch.count, None, outcome).await?;
                if let Some(blocked) = answered {
                    debug!(request = %s.key(), reason = %blocked.reason, "re-sent batch refused");
                }
            }
            (Route::ByTag(why), _) => by_tag::settle(s, provider, &batch, &why).await?,
            // `route` re-sends only a spec that was built.
            (Route::Resend, Err(blocked)) => {
                by_tag::settle(s, provider, &batch, &blocked.message).await?
            }
        }
    }
    Ok(())
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
}

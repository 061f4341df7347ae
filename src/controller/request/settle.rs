//! Settling batches left `Pending` by a crash or an unclear failure: machines
//! carrying the batch tag are adopted; if there are none, the identical launch
//! is re-sent with the same token (EC2 then returns the first launch's machines
//! if it did happen). A batch whose parameters changed since is not re-sent.

use std::sync::Arc;

use tracing::{debug, info};

use super::act;
use super::batch;
use super::intent::Recorded;
use super::session::Session;
use crate::api::{LaunchBatch, LaunchState, MachineTemplate};
use crate::controller::Error;
use crate::provider::MachineProvider;

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
        let found = s
            .ctx
            .batch_lookups
            .find(provider, &s.owner.cluster, &s.owner.uid, &batch.id)
            .await
            .map_err(|source| Error::Provider {
                action: format!("settling batch {}", batch.id),
                source,
            })?;
        if !found.is_empty() {
            if found.len() < usize::try_from(batch.count).unwrap_or(0) {
                // EC2 may have launched fewer (MaxCount is a ceiling), or a
                // tag-filtered read may not show all of them yet: the next
                // sweep lists everything and adopts any that show up later.
                s.ctx.full_sweep.request();
            }
            s.ctx.tracker.record(found.clone());
            let adopted = s.adopt(found);
            if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch.id) {
                b.state = LaunchState::Launched;
                b.message = Some(format!(
                    "settled after a restart: {adopted} machines adopted"
                ));
            }
            info!(request = %s.key(), batch = %batch.id, adopted, "settled pending batch by its tag");
            continue;
        }
        let spec = match act::launch_spec(s, provider, template, &batch).await {
            Ok(spec) => spec,
            Err(blocked) => {
                fail(s, &batch.id, format!("not re-sent: {}", blocked.message));
                continue;
            }
        };
        if batch::digest(&spec) != batch.params_digest {
            s.ctx.full_sweep.request();
            fail(
                s,
                &batch.id,
                "not re-sent: the template changed after the batch was recorded; a new batch replaces it (the sweep adopts its machines if the first send did launch)".into(),
            );
            continue;
        }
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
    Ok(())
}

fn fail(s: &mut Session<'_>, id: &str, message: String) {
    if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == id) {
        b.state = LaunchState::Failed;
        b.message = Some(message);
    }
}

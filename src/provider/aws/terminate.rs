//! TerminateInstances in batches.

use super::calls::Calls;
use super::clients::AwsClients;
use super::validate::unique;
use crate::provider::ProviderError;

/// Instance ids per TerminateInstances call.
const TERMINATE_BATCH: usize = 500;

/// Requests termination of `ids`. Stops at the first failed batch: EC2 rejects
/// a whole batch when one id is unknown (`InvalidInstanceID.NotFound`), which
/// is not proof that the others were terminated, so the caller must look again.
pub(super) async fn terminate(
    clients: &AwsClients,
    calls: &Calls,
    ids: &[String],
) -> Result<(), ProviderError> {
    let ids: Vec<String> = unique(ids)
        .into_iter()
        .filter(|id| !id.is_empty())
        .collect();
    for batch in ids.chunks(TERMINATE_BATCH) {
        // One token per id from TerminateInstances' instance bucket.
        calls
            .run_for("TerminateInstances", batch.len(), || {
                clients
                    .ec2
                    .terminate_instances()
                    .set_instance_ids(Some(batch.to_vec()))
                    .send()
            })
            .await?;
    }
    Ok(())
}

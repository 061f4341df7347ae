//! Launching one batch: RunInstances or an instant EC2 Fleet, with the batch's
//! ClientToken and every tag applied in the launch call itself.

use super::calls::Calls;
use super::clients::AwsClients;
use super::errors::detail;
use crate::provider::{LaunchSpec, Machine, ProviderError};

/// Launches `spec` (see [`crate::provider::MachineProvider::launch`]).
pub(super) async fn launch(
    _clients: &AwsClients,
    _calls: &Calls,
    spec: &LaunchSpec,
) -> Result<Vec<Machine>, ProviderError> {
    Err(ProviderError::Unknown(detail(
        "RunInstances",
        "NotImplemented",
        format!("launching batch {} is not implemented yet", spec.batch_id),
    )))
}

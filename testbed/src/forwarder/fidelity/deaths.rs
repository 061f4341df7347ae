//! Deaths at launch: instances the model picked are terminated in moto a
//! little after their launch answer, as EC2 terminates an instance that
//! cannot start (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/troubleshooting-launch.html>,
//! "Instance terminates immediately"); their `stateReason` is shown by
//! `consistency::describe`.

use std::sync::Arc;

use hyper::header::HeaderMap;

use super::upstream::{id_params, own_call};
use crate::forwarder::Shared;

/// Terminates `ids` in moto after the model's death delay, in the
/// background (on the forwarder's runtime), with the launch's headers.
pub(super) fn schedule(shared: &Arc<Shared>, headers: &HeaderMap, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let delay = shared.lock().model.death_delay();
    let shared = shared.clone();
    let headers = headers.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let answer = own_call(&shared, &headers, "TerminateInstances", &id_params(&ids)).await;
        if answer.is_ok_and(|a| a.status.is_success()) {
            shared.lock().model.counters.deaths += ids.len() as u64;
        }
    });
}

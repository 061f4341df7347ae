//! Terminating a list of machines when some of them may be unknown to the
//! cloud: EC2 rejects a whole TerminateInstances call if one id does not exist
//! (yet, or any more), and callers (the request controller, the sweep) want
//! the others to go anyway.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::debug;

use super::{MachineProvider, ProviderError};

/// Terminates `ids` in one call; if the cloud rejects the batch because an id
/// is unknown ([`ProviderError::NotFound`]), each id is tried alone and the
/// unknown ones are skipped. Returns the ids the cloud accepted; no call is
/// made for an empty list. Any other error ends the attempt and is returned,
/// so a throttled or failing cloud is retried by the caller as a whole.
pub async fn terminate_each_known(
    provider: &Arc<dyn MachineProvider>,
    ids: &[String],
) -> Result<BTreeSet<String>, ProviderError> {
    if ids.is_empty() {
        return Ok(BTreeSet::new());
    }
    match provider.terminate(ids).await {
        Ok(()) => Ok(ids.iter().cloned().collect()),
        Err(ProviderError::NotFound(_)) => {
            let mut accepted = BTreeSet::new();
            for id in ids {
                match provider.terminate(std::slice::from_ref(id)).await {
                    Ok(()) => {
                        accepted.insert(id.clone());
                    }
                    Err(ProviderError::NotFound(_)) => {
                        debug!(instance = %id, "not visible to terminate yet");
                    }
                    Err(e) => return Err(e),
                }
            }
            Ok(accepted)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::fake::FakeProvider;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn fake(unknown: &[&str], failing: Option<&str>) -> Arc<FakeProvider> {
        let f = FakeProvider::new("fake");
        f.unknown_ids(unknown);
        if let Some(id) = failing {
            f.failing_id(id);
        }
        f
    }

    fn calls(f: &FakeProvider) -> Vec<Vec<String>> {
        f.terminate_calls()
    }

    #[tokio::test]
    async fn known_ids_go_in_one_call_and_none_for_an_empty_list() {
        let f = fake(&[], None);
        let p: Arc<dyn MachineProvider> = f.clone();
        let got = terminate_each_known(&p, &ids(&["i-1", "i-2"]))
            .await
            .expect("accepted");
        assert_eq!(got, ids(&["i-1", "i-2"]).into_iter().collect());
        assert!(terminate_each_known(&p, &[])
            .await
            .expect("nothing")
            .is_empty());
        assert_eq!(calls(&f), [ids(&["i-1", "i-2"])]);
    }

    #[tokio::test]
    async fn an_unknown_id_is_skipped_and_the_others_go_one_by_one() {
        let f = fake(&["i-2"], None);
        let p: Arc<dyn MachineProvider> = f.clone();
        let got = terminate_each_known(&p, &ids(&["i-1", "i-2", "i-3"]))
            .await
            .expect("accepted");
        assert_eq!(got, ids(&["i-1", "i-3"]).into_iter().collect());
        assert_eq!(
            calls(&f),
            [
                ids(&["i-1", "i-2", "i-3"]),
                ids(&["i-1"]),
                ids(&["i-2"]),
                ids(&["i-3"])
            ]
        );
    }

    #[tokio::test]
    async fn other_errors_end_the_attempt() {
        let f = fake(&[], Some("i-1"));
        let p: Arc<dyn MachineProvider> = f.clone();
        let err = terminate_each_known(&p, &ids(&["i-1", "i-2"]))
            .await
            .expect_err("throttled");
        assert!(matches!(err, ProviderError::Throttled(_)), "{err}");

        let f = fake(&["i-1"], Some("i-2"));
        let p: Arc<dyn MachineProvider> = f.clone();
        let err = terminate_each_known(&p, &ids(&["i-1", "i-2", "i-3"]))
            .await
            .expect_err("throttled while one by one");
        assert!(matches!(err, ProviderError::Throttled(_)), "{err}");
        assert_eq!(calls(&f).len(), 3, "stops at the failing id");
    }
}

//! Coalesced terminations: the TerminateInstances of requests that come in
//! while one is out go together in the next call (up to EC2's 1,000 ids),
//! one queue per provider. A scheduler returning 1,000 machines of 100
//! requests at once is then a few calls, not a hundred.
//!
//! EC2 refuses a whole call when one id is unknown to it
//! (`InvalidInstanceID.NotFound`, e.g. an instance launched a moment ago),
//! which says nothing about the others; then each caller's ids are tried as
//! that caller would have alone ([`terminate_each_known`]), so one request's
//! fresh machine never costs another request its termination.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::controller::call_queue::{CallQueue, Waiting};
use crate::provider::{terminate_each_known, MachineProvider, ProviderError};

/// Most ids one TerminateInstances takes
/// (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_TerminateInstances.html>).
pub const MAX_IDS: usize = 1000;

type Accepted = Result<BTreeSet<String>, ProviderError>;

/// The termination queues, one per provider.
#[derive(Default)]
pub struct Terminations {
    queue: Arc<CallQueue<String, Vec<String>, Accepted>>,
}

impl Terminations {
    /// Terminates `ids`, in one call with whatever else queues meanwhile;
    /// returns the ids the cloud accepted (unknown ones are left out).
    pub async fn terminate(&self, provider: &Arc<dyn MachineProvider>, ids: &[String]) -> Accepted {
        if ids.is_empty() {
            return Ok(BTreeSet::new());
        }
        let sender = Arc::clone(provider);
        let send = move |next: Vec<Waiting<Vec<String>, Accepted>>| {
            let provider = Arc::clone(&sender);
            async move { send(&provider, next).await }
        };
        match self
            .queue
            .submit(provider.name().to_string(), ids.to_vec(), take_call, send)
            .await
        {
            Some(accepted) => accepted,
            // The queue's task died: try alone, as without coalescing.
            None => terminate_each_known(provider, ids).await,
        }
    }
}

/// One call for everything in `next`; on an unknown id, each caller's own.
async fn send(provider: &Arc<dyn MachineProvider>, next: Vec<Waiting<Vec<String>, Accepted>>) {
    if next.len() == 1 {
        for w in next {
            let accepted = terminate_each_known(provider, &w.item).await;
            w.answer(accepted);
        }
        return;
    }
    let all: Vec<String> = next
        .iter()
        .flat_map(|w| w.item.iter().cloned())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    match provider.terminate(&all).await {
        Ok(()) => {
            for w in next {
                let ids = w.item.iter().cloned().collect();
                w.answer(Ok(ids));
            }
        }
        Err(ProviderError::NotFound(_)) => {
            for w in next {
                let accepted = terminate_each_known(provider, &w.item).await;
                w.answer(accepted);
            }
        }
        Err(err) => {
            for w in next {
                w.answer(Err(err.clone()));
            }
        }
    }
}

/// The callers of the next call: the first, and those after it while the
/// call stays within [`MAX_IDS`].
fn take_call(
    waiting: &mut Vec<Waiting<Vec<String>, Accepted>>,
) -> Vec<Waiting<Vec<String>, Accepted>> {
    let mut ids = 0;
    let mut n = 0;
    for w in waiting.iter() {
        if n > 0 && ids + w.item.len() > MAX_IDS {
            break;
        }
        ids += w.item.len();
        n += 1;
    }
    waiting.drain(..n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::fake::FakeProvider;

    fn ids(prefix: &str, n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i-{prefix}{i}")).collect()
    }

    #[test]
    fn a_call_takes_callers_within_a_thousand_ids() {
        let mut q: Vec<_> = (0..15)
            .map(|i| Waiting::detached(ids(&i.to_string(), 100)))
            .collect();
        assert_eq!(take_call(&mut q).len(), 10);
        assert_eq!(take_call(&mut q).len(), 5);
        let mut big = vec![
            Waiting::detached(ids("a", 1500)),
            Waiting::detached(ids("b", 1)),
        ];
        assert_eq!(take_call(&mut big).len(), 1, "a large caller still goes");
    }

    #[tokio::test]
    async fn callers_queued_behind_a_call_share_the_next_and_an_unknown_id_costs_only_its_caller() {
        let fake = FakeProvider::new("fake");
        fake.set_delay(std::time::Duration::from_millis(50));
        fake.unknown_ids(&["i-new"]);
        let provider: Arc<dyn MachineProvider> = fake.clone();
        let t = Arc::new(Terminations::default());
        let mut tasks = Vec::new();
        for (i, extra) in ["", "", "i-new"].iter().enumerate() {
            let (t, p) = (Arc::clone(&t), Arc::clone(&provider));
            let mut mine = ids(&format!("{i}-"), 2);
            if !extra.is_empty() {
                mine.push(extra.to_string());
            }
            tasks.push(tokio::spawn(async move {
                (mine.clone(), t.terminate(&p, &mine).await)
            }));
            if i == 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
        for task in tasks {
            let (mine, accepted) = task.await.expect("task");
            let accepted = accepted.expect("accepted");
            let known: BTreeSet<String> = mine.into_iter().filter(|i| i != "i-new").collect();
            assert_eq!(accepted, known);
        }
        let calls = fake.terminate_calls();
        // The first alone; the next two together (refused for i-new); then
        // each of those two on its own terms.
        assert_eq!(calls[0].len(), 2, "{calls:?}");
        assert_eq!(calls[1].len(), 5, "{calls:?}");
        assert!(calls[2..].iter().all(|c| c.len() <= 3), "{calls:?}");
    }
}

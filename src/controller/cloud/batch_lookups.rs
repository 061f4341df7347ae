//! Finding the machines of pending launch batches for many requests at once.
//!
//! A batch still `Pending` in status (the operator died between writing the
//! intent and recording the launch, or the launch call timed out) is looked
//! up by its batch tag before anything is re-sent. After a restart at scale
//! hundreds of requests do that together, and a call each would be a burst
//! of hundreds of DescribeInstances against the account's Describe bucket
//! (and, on a struggling endpoint, more timeouts). Lookups that arrive within
//! [`WINDOW`] of each other are answered instead by one tag-filtered call per
//! provider: the cluster tag plus the batch tag with up to 200 values each.
//! At most one such call per provider is in flight: lookups that arrive
//! during it are answered by the next, so a slow endpoint sees one call at a
//! time, never a pile of them.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use super::ownership::{BATCH_TAG, CLUSTER_TAG, REQUEST_UID_TAG};
use crate::provider::{ErrorDetail, Machine, MachineProvider, ProviderError};

/// How long the first lookup waits for others to join its call: short next
/// to the call itself, long enough to gather a restart's reconciles.
pub const WINDOW: Duration = Duration::from_millis(50);

type Answer = Result<Vec<Machine>, ProviderError>;

struct Waiter {
    batch: String,
    request_uid: String,
    reply: oneshot::Sender<Answer>,
}

/// The lookups of one provider and cluster waiting for the next call, and
/// whether a task is making calls for them.
#[derive(Default)]
struct Queue {
    waiting: Vec<Waiter>,
    running: bool,
}

/// The lookups waiting for their provider's next call.
#[derive(Default, Clone)]
pub struct BatchLookups {
    queues: Arc<Mutex<HashMap<String, Queue>>>,
}

impl BatchLookups {
    /// The machines of launch batch `batch` of the request `request_uid`, in
    /// cluster `cluster`, found together with every other lookup of the same
    /// provider that arrives within [`WINDOW`].
    pub async fn find(
        &self,
        provider: &Arc<dyn MachineProvider>,
        cluster: &str,
        request_uid: &str,
        batch: &str,
    ) -> Answer {
        let (reply, answer) = oneshot::channel();
        let key = format!("{}\u{0}{cluster}", provider.name());
        let start = {
            let mut queues = self.lock();
            let queue = queues.entry(key.clone()).or_default();
            queue.waiting.push(Waiter {
                batch: batch.to_string(),
                request_uid: request_uid.to_string(),
                reply,
            });
            !std::mem::replace(&mut queue.running, true)
        };
        if start {
            // A task of its own, so a cancelled reconcile cannot strand the
            // lookups that joined it.
            let this = self.clone();
            let provider = provider.clone();
            let cluster = cluster.to_string();
            tokio::spawn(async move {
                let mut guard = Abandon {
                    lookups: this.clone(),
                    key: key.clone(),
                    armed: true,
                };
                tokio::time::sleep(WINDOW).await;
                while this.answer(&key, &provider, &cluster).await {}
                guard.armed = false;
            });
        }
        answer.await.unwrap_or_else(|_| {
            Err(ProviderError::Transient(ErrorDetail {
                operation: "DescribeInstances",
                code: "LookupAbandoned".into(),
                message: "the batched lookup of pending launches ended without an answer".into(),
            }))
        })
    }

    /// One call for every lookup queued under `key`; each gets its machines.
    /// Returns false, and lets the next lookup start a task, when none was
    /// queued.
    async fn answer(&self, key: &str, provider: &Arc<dyn MachineProvider>, cluster: &str) -> bool {
        let waiters = {
            let mut queues = self.lock();
            let Some(queue) = queues.get_mut(key) else {
                return false;
            };
            if queue.waiting.is_empty() {
                queues.remove(key);
                return false;
            }
            std::mem::take(&mut queue.waiting)
        };
        let batches: Vec<String> = waiters
            .iter()
            .map(|w| w.batch.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found = provider
            .describe_owned_any(
                &[(CLUSTER_TAG.to_string(), cluster.to_string())],
                BATCH_TAG,
                &batches,
            )
            .await;
        // Grouped once, so each waiter costs its own machines, not all of them.
        let mut by_batch: HashMap<(String, String), Vec<Machine>> = HashMap::new();
        let found = found.map(|machines| {
            for m in machines {
                if let (Some(batch), Some(uid)) =
                    (m.tags.get(BATCH_TAG), m.tags.get(REQUEST_UID_TAG))
                {
                    by_batch
                        .entry((batch.clone(), uid.clone()))
                        .or_default()
                        .push(m);
                }
            }
        });
        for w in waiters {
            let mine = match &found {
                Ok(()) => Ok(by_batch
                    .get(&(w.batch, w.request_uid))
                    .cloned()
                    .unwrap_or_default()),
                Err(err) => Err(err.clone()),
            };
            // The reconcile may have been cancelled meanwhile; nothing to do.
            let _ = w.reply.send(mine);
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Clears a provider's queue if its lookup task dies (a panic below the
/// provider call): the waiting lookups then end as abandoned, and the next
/// lookup starts a new task, instead of all of them waiting forever on a
/// task that is gone.
struct Abandon {
    lookups: BatchLookups,
    key: String,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if self.armed {
            // Dropping the waiters' senders answers each of them.
            self.lookups.lock().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::fake::FakeProvider;
    use crate::provider::MachineState;
    use std::collections::BTreeMap;

    fn machine(id: &str, uid: &str, batch: &str) -> Machine {
        Machine {
            tags: BTreeMap::from([
                (CLUSTER_TAG.to_string(), "c".to_string()),
                (REQUEST_UID_TAG.to_string(), uid.to_string()),
                (BATCH_TAG.to_string(), batch.to_string()),
            ]),
            ..Machine::bare(id, MachineState::Running)
        }
    }

    #[tokio::test]
    async fn concurrent_lookups_share_one_call_and_get_their_own_machines() {
        let fake = FakeProvider::new("p");
        fake.with_machines(vec![
            machine("i-1", "u1", "b1"),
            machine("i-2", "u1", "b1"),
            machine("i-3", "u2", "b2"),
            // Same batch id, another request: never handed to u3.
            machine("i-4", "u9", "b3"),
        ]);
        let provider: Arc<dyn MachineProvider> = fake.clone();
        let lookups = BatchLookups::default();
        let (a, b, c) = tokio::join!(
            lookups.find(&provider, "c", "u1", "b1"),
            lookups.find(&provider, "c", "u2", "b2"),
            lookups.find(&provider, "c", "u3", "b3"),
        );
        let ids =
            |r: Answer| -> Vec<String> { r.expect("answer").into_iter().map(|m| m.id).collect() };
        assert_eq!(ids(a), ["i-1", "i-2"]);
        assert_eq!(ids(b), ["i-3"]);
        assert!(ids(c).is_empty());
        assert_eq!(
            fake.calls("describe_owned_any"),
            1,
            "one call for all three"
        );

        // A later lookup makes a call of its own.
        ids(lookups.find(&provider, "c", "u1", "b1").await);
        assert_eq!(fake.calls("describe_owned_any"), 2);
    }

    // Paused time: the overlap is ordered by the clock, not by how busy the
    // machine is.
    #[tokio::test(start_paused = true)]
    async fn lookups_arriving_during_a_call_share_the_next_one() {
        let fake = FakeProvider::new("p");
        fake.with_machines(vec![machine("i-1", "u1", "b1"), machine("i-2", "u2", "b2")]);
        fake.set_delay(Duration::from_millis(200));
        let provider: Arc<dyn MachineProvider> = fake.clone();
        let lookups = BatchLookups::default();
        let late = |uid: &'static str, batch: &'static str| {
            let (lookups, provider) = (lookups.clone(), provider.clone());
            async move {
                // While the first call (200 ms) is in flight.
                tokio::time::sleep(WINDOW + Duration::from_millis(20)).await;
                lookups.find(&provider, "c", uid, batch).await
            }
        };
        let (a, b, c) = tokio::join!(
            lookups.find(&provider, "c", "u1", "b1"),
            late("u2", "b2"),
            late("u1", "b1"),
        );
        assert_eq!(a.expect("a").len(), 1);
        assert_eq!(b.expect("b").len(), 1);
        assert_eq!(c.expect("c").len(), 1);
        assert_eq!(
            fake.calls("describe_owned_any"),
            2,
            "the late ones share the second"
        );
        assert_eq!(fake.most_in_flight(), 1, "never two calls at once");
    }

    #[tokio::test]
    async fn a_failed_call_fails_every_lookup_that_shared_it() {
        let fake = FakeProvider::new("p");
        fake.fail_describe(ProviderError::Transient(ErrorDetail {
            operation: "DescribeInstances",
            code: "InternalError".into(),
            message: "boom".into(),
        }));
        let provider: Arc<dyn MachineProvider> = fake.clone();
        let lookups = BatchLookups::default();
        let (a, b) = tokio::join!(
            lookups.find(&provider, "c", "u1", "b1"),
            lookups.find(&provider, "c", "u2", "b2"),
        );
        assert!(matches!(a, Err(ProviderError::Transient(_))));
        assert!(matches!(b, Err(ProviderError::Transient(_))));
        assert_eq!(fake.calls("describe_owned_any"), 1);
    }

    #[tokio::test]
    async fn a_lookup_task_that_dies_abandons_its_lookups_and_the_next_one_works() {
        let fake = FakeProvider::new("p");
        fake.with_machines(vec![machine("i-1", "u1", "b1")]);
        fake.panic_once();
        let provider: Arc<dyn MachineProvider> = fake.clone();
        let lookups = BatchLookups::default();
        let first = lookups.find(&provider, "c", "u1", "b1").await;
        assert!(
            matches!(&first, Err(ProviderError::Transient(d)) if d.code == "LookupAbandoned"),
            "{first:?}"
        );
        let second = lookups.find(&provider, "c", "u1", "b1").await;
        assert_eq!(second.expect("second lookup").len(), 1);
        assert_eq!(fake.calls("describe_owned_any"), 2);
    }
}

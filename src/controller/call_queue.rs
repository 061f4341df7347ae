//! One cloud call in flight per key; whatever queues meanwhile goes out in the
//! next call. Shared by coalesced launches (`request::coalesce`) and
//! coalesced terminations (`cloud::terminations`): EC2 counts calls in one
//! bucket and instances in another, and a burst of reconciles that each make
//! their own call runs into the call bucket long before the instance bucket.
//!
//! A key with a queue has a task sending its calls; the task ends (and the
//! key is freed) when nothing waits. If the task dies without answering, the
//! waiting callers see that instead of waiting forever.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// One queued item and where its answer goes.
pub struct Waiting<T, R> {
    /// What the caller queued.
    pub item: T,
    reply: oneshot::Sender<R>,
}

impl<T, R> Waiting<T, R> {
    /// An item nobody waits for, for unit tests of `take` rules.
    #[cfg(test)]
    pub fn detached(item: T) -> Self {
        let (reply, _) = oneshot::channel();
        Waiting { item, reply }
    }

    /// Hands the caller its answer (a caller that went away is no error).
    pub fn answer(self, answer: R) {
        let _ = self.reply.send(answer);
    }
}

/// Takes the items of the next call out of a key's queue (the first always,
/// then as many as the call may carry).
pub type Take<T, R> = fn(&mut Vec<Waiting<T, R>>) -> Vec<Waiting<T, R>>;

/// The queues of every key.
pub struct CallQueue<K, T, R> {
    queues: Mutex<HashMap<K, Vec<Waiting<T, R>>>>,
}

impl<K, T, R> Default for CallQueue<K, T, R> {
    fn default() -> Self {
        CallQueue {
            queues: Mutex::new(HashMap::new()),
        }
    }
}

impl<K, T, R> CallQueue<K, T, R>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    fn queues(&self) -> MutexGuard<'_, HashMap<K, Vec<Waiting<T, R>>>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `item` under `key` and waits for its answer. When no call of
    /// the key is out, a task is started that takes the next call's items
    /// with `take` and hands them to `send` (which answers each), until the
    /// queue is empty. `None`: the task ended without answering.
    pub async fn submit<S, F>(
        self: &Arc<Self>,
        key: K,
        item: T,
        take: Take<T, R>,
        send: S,
    ) -> Option<R>
    where
        S: Fn(Vec<Waiting<T, R>>) -> F + Send + 'static,
        F: Future<Output = ()> + Send,
    {
        let (reply, answer) = oneshot::channel();
        let start = {
            let mut queues = self.queues();
            match queues.get_mut(&key) {
                Some(waiting) => {
                    waiting.push(Waiting { item, reply });
                    false
                }
                None => {
                    queues.insert(key.clone(), vec![Waiting { item, reply }]);
                    true
                }
            }
        };
        if start {
            let me = Arc::clone(self);
            tokio::spawn(async move { me.drive(key, take, send).await });
        }
        answer.await.ok()
    }

    async fn drive<S, F>(self: Arc<Self>, key: K, take: Take<T, R>, send: S)
    where
        S: Fn(Vec<Waiting<T, R>>) -> F,
        F: Future<Output = ()>,
    {
        // Ending any other way (a panic) frees the key, and dropping the
        // queued items tells their callers.
        let mut guard = Free {
            queue: Arc::clone(&self),
            key: key.clone(),
            armed: true,
        };
        loop {
            let next = {
                let mut queues = self.queues();
                let Some(waiting) = queues.get_mut(&key) else {
                    guard.armed = false;
                    return;
                };
                let next = take(waiting);
                if next.is_empty() {
                    // Under the lock: whoever queues next starts a new task.
                    queues.remove(&key);
                    guard.armed = false;
                    return;
                }
                next
            };
            send(next).await;
        }
    }
}

struct Free<K: Hash + Eq, T, R> {
    queue: Arc<CallQueue<K, T, R>>,
    key: K,
    armed: bool,
}

impl<K: Hash + Eq, T, R> Drop for Free<K, T, R> {
    fn drop(&mut self) {
        if self.armed {
            let mut queues = self.queue.queues.lock().unwrap_or_else(|e| e.into_inner());
            queues.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn all<T, R>(w: &mut Vec<Waiting<T, R>>) -> Vec<Waiting<T, R>> {
        std::mem::take(w)
    }

    #[tokio::test]
    async fn what_queues_behind_a_call_goes_in_the_next_one() {
        let queue: Arc<CallQueue<&'static str, u32, usize>> = Arc::default();
        let calls = Arc::new(AtomicUsize::new(0));
        let send = {
            let calls = Arc::clone(&calls);
            move |batch: Vec<Waiting<u32, usize>>| {
                let calls = Arc::clone(&calls);
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let n = batch.len();
                    for w in batch {
                        w.answer(n);
                    }
                }
            }
        };
        let mut answers = Vec::new();
        let mut tasks = Vec::new();
        for i in 0..5 {
            let q = Arc::clone(&queue);
            let send = send.clone();
            tasks.push(tokio::spawn(
                async move { q.submit("k", i, all, send).await },
            ));
            if i == 0 {
                // The first call is out before the others queue.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        for t in tasks {
            answers.push(t.await.expect("task").expect("answered"));
        }
        assert_eq!(answers, [1, 4, 4, 4, 4]);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(queue.queues().is_empty(), "the key is freed");
    }

    #[tokio::test]
    async fn a_call_that_dies_tells_its_callers() {
        let queue: Arc<CallQueue<&'static str, u32, u32>> = Arc::default();
        let send = |_batch: Vec<Waiting<u32, u32>>| async move {
            panic!("the call died");
        };
        assert_eq!(queue.submit("k", 1, all, send).await, None);
        // The key is free again.
        let ok = |batch: Vec<Waiting<u32, u32>>| async move {
            for w in batch {
                w.answer(7);
            }
        };
        assert_eq!(queue.submit("k", 1, all, ok).await, Some(7));
    }
}

//! A TTL cache that coalesces concurrent look-ups of the same key into one.
//!
//! Values are kept for a fixed TTL. Errors are never stored: callers that were
//! already waiting for the failed look-up share its error, and the next caller
//! after it starts a fresh one, so a fixed cause (a parameter created, a role
//! granted) is seen at once.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use tokio::time::Instant;

/// How a look-up was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// From a fresh stored value.
    Hit,
    /// By joining a look-up another caller had already started.
    Joined,
    /// By starting the look-up (the only case that calls the source).
    Miss,
}

type Pending<V, E> = Shared<BoxFuture<'static, Result<V, E>>>;

struct Entry<V, E> {
    value: Option<(V, Instant)>,
    pending: Option<Pending<V, E>>,
}

impl<V, E> Default for Entry<V, E> {
    fn default() -> Self {
        Entry {
            value: None,
            pending: None,
        }
    }
}

/// Values by key, each valid for `ttl` after it was fetched.
pub struct TtlCache<K, V, E> {
    ttl: Duration,
    entries: Mutex<HashMap<K, Entry<V, E>>>,
}

impl<K, V, E> TtlCache<K, V, E>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
    E: Clone + Send + Sync + 'static,
{
    /// An empty cache whose values live `ttl`.
    pub fn new(ttl: Duration) -> Arc<Self> {
        Arc::new(TtlCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        })
    }

    /// The fresh value of `key`, or the result of the look-up already running
    /// for it, or the result of `fetch()` started now. The look-up keeps running
    /// (driven by whoever awaits it next) even if this caller goes away.
    pub async fn get_or_fetch<F, Fut>(self: &Arc<Self>, key: &K, fetch: F) -> (Result<V, E>, Lookup)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let (pending, how) = {
            let mut entries = self.lock();
            let now = Instant::now();
            let entry = entries.entry(key.clone()).or_default();
            if let Some((value, expires)) = &entry.value {
                if *expires > now {
                    return (Ok(value.clone()), Lookup::Hit);
                }
            }
            if let Some(pending) = &entry.pending {
                (pending.clone(), Lookup::Joined)
            } else {
                let pending = self.start(key.clone(), fetch());
                entry.pending = Some(pending.clone());
                // Forget keys nobody asked about for a whole TTL.
                entries.retain(|_, e| {
                    e.pending.is_some() || e.value.as_ref().is_some_and(|(_, exp)| *exp > now)
                });
                (pending, Lookup::Miss)
            }
        };
        (pending.await, how)
    }

    /// How long the stored value of `key` stays fresh; `None` when there is none.
    pub fn expires_in(&self, key: &K) -> Option<Duration> {
        let entries = self.lock();
        let (_, expires) = entries.get(key)?.value.as_ref()?;
        let left = expires.checked_duration_since(Instant::now())?;
        (!left.is_zero()).then_some(left)
    }

    /// The shared look-up: on completion it stores a value (not an error) and
    /// clears itself, so the next caller after an error starts afresh.
    fn start<Fut>(self: &Arc<Self>, key: K, fetch: Fut) -> Pending<V, E>
    where
        Fut: Future<Output = Result<V, E>> + Send + 'static,
    {
        let cache = Arc::downgrade(self);
        async move {
            let result = fetch.await;
            if let Some(cache) = cache.upgrade() {
                let mut entries = cache.lock();
                let entry = entries.entry(key).or_default();
                entry.pending = None;
                if let Ok(value) = &result {
                    entry.value = Some((value.clone(), Instant::now() + cache.ttl));
                }
            }
            result
        }
        .boxed()
        .shared()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<K, Entry<V, E>>> {
        // The map is consistent after every statement: a panic elsewhere
        // while holding the lock leaves nothing half-done.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

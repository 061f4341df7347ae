//! Per-object exponential backoff for failed reconciles.
//!
//! kube-runtime's `error_policy` is told only about the current failure, so a
//! fixed delay would retry a persistently failing object (an apiserver that
//! keeps refusing, a cloud outage) at the same rate forever. This remembers
//! consecutive failures per object and doubles the delay, with jitter so that
//! many objects failing together do not retry in lockstep.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// First retry delay.
pub const BASE: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX: Duration = Duration::from_secs(5 * 60);

/// Consecutive failures per object key (e.g. `namespace/name`).
#[derive(Debug, Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// Records a failure of `key` and returns how long to wait before retrying:
    /// `BASE·2^(n-1)` capped at `MAX`, minus up to 20 % jitter.
    pub fn failed(&self, key: &str) -> Duration {
        let n = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let n = failures.entry(key.to_string()).or_insert(0);
            *n = n.saturating_add(1);
            *n
        };
        let exp = BASE.saturating_mul(1u32 << (n - 1).min(16));
        let delay = exp.min(MAX);
        delay.mul_f64(1.0 - 0.2 * fastrand::f64())
    }

    /// Forgets the failures of `key` after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets_on_success() {
        let b = Backoff::default();
        let delays: Vec<Duration> = (0..12).map(|_| b.failed("ns/a")).collect();
        for (i, d) in delays.iter().enumerate().take(8) {
            let full = BASE * (1 << i);
            assert!(*d <= full && *d >= full.mul_f64(0.8), "{i}: {d:?}");
        }
        assert!(delays[11] <= MAX && delays[11] >= MAX.mul_f64(0.8));
        // Other objects are independent.
        assert!(b.failed("ns/b") <= BASE);
        b.succeeded("ns/a");
        assert!(b.failed("ns/a") <= BASE);
    }
}

/// Resource versions this process has written over, per object key.
///
/// A reconcile queued while another one was writing status is handed the
/// object from the watch cache, which may not have caught up with that write
/// yet. Acting on such a stale copy would repeat work (settle an already
/// settled batch) only to fail on the conflict; recognising it lets the
/// reconcile wait for the watch instead.
#[derive(Debug, Default)]
pub struct Superseded {
    versions: Mutex<HashMap<String, std::collections::VecDeque<String>>>,
}

/// Superseded versions remembered per object.
const SUPERSEDED_KEEP: usize = 16;

impl Superseded {
    /// Records that this process replaced version `old` of `key`.
    pub fn record(&self, key: &str, old: &str) {
        let mut map = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(key.to_string()).or_default();
        list.push_back(old.to_string());
        while list.len() > SUPERSEDED_KEEP {
            list.pop_front();
        }
    }

    /// Whether version `rv` of `key` is one this process has already written over.
    pub fn is_stale(&self, key: &str, rv: &str) -> bool {
        let map = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).is_some_and(|l| l.iter().any(|v| v == rv))
    }

    /// Forgets `key` (the object is gone).
    pub fn forget(&self, key: &str) {
        let mut map = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(key);
    }
}

#[cfg(test)]
mod superseded_tests {
    use super::*;

    #[test]
    fn remembers_what_was_written_over() {
        let s = Superseded::default();
        s.record("ns/a", "10");
        s.record("ns/a", "11");
        assert!(s.is_stale("ns/a", "10") && s.is_stale("ns/a", "11"));
        assert!(!s.is_stale("ns/a", "12") && !s.is_stale("ns/b", "10"));
        for v in 0..20 {
            s.record("ns/a", &v.to_string());
        }
        assert!(!s.is_stale("ns/a", "10") || s.is_stale("ns/a", "19"));
        s.forget("ns/a");
        assert!(!s.is_stale("ns/a", "19"));
    }
}

//! Which providers' interruption queues answer right now, shared by the
//! queue consumer (which sets it) and the spot notice polling (which stands
//! aside for those providers): the queue and the polling never both spend
//! calls on the same notices, and a queue that stops answering is covered.

use std::collections::BTreeSet;
use std::sync::Mutex;

/// The providers whose queue answered its last receive.
#[derive(Debug, Default)]
pub struct QueueHealth {
    up: Mutex<BTreeSet<String>>,
}

impl QueueHealth {
    /// Starts with the providers that have a queue counted as answering: the
    /// consumer's first receive follows at once and a failure hands the
    /// notices back to polling within one receive, while starting them as
    /// down would make one poll per provider at every start for nothing.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(configured: I) -> QueueHealth {
        QueueHealth {
            up: Mutex::new(configured.into_iter().map(Into::into).collect()),
        }
    }

    /// Whether `provider`'s queue answers (so its notices need no polling).
    pub fn is_up(&self, provider: &str) -> bool {
        self.lock().contains(provider)
    }

    /// Records whether `provider`'s queue answered; true when that changed.
    pub fn set(&self, provider: &str, up: bool) -> bool {
        let mut set = self.lock();
        if up {
            set.insert(provider.to_string())
        } else {
            set.remove(provider)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.up.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_queues_start_up_and_flip_on_answers() {
        let h = QueueHealth::new(["a"]);
        assert!(h.is_up("a"));
        assert!(!h.is_up("b"), "no queue: polled");
        assert!(h.set("a", false), "went down");
        assert!(!h.is_up("a"));
        assert!(!h.set("a", false), "no change");
        assert!(h.set("a", true));
        assert!(h.is_up("a"));
    }
}

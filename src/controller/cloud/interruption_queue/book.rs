//! The rebalance recommendations and scheduled changes the interruption
//! queue reported, per machine, until the holding request's reconcile copies
//! them into status ([`super::fold`]). Interruption notices and state
//! changes need no book of their own: they go where the polling puts them
//! (the tracker's notices and observations), so one path writes them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::provider::ScheduledKind;

/// What the queue reported about one machine beyond notices and states.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineEvents {
    /// When a rebalance recommendation was given (RFC 3339).
    pub rebalance_at: Option<String>,
    /// The latest scheduled change: its kind, code and start (RFC 3339).
    pub scheduled: Option<(ScheduledKind, String, Option<String>)>,
}

/// Per instance id, what the queue reported.
#[derive(Debug, Default)]
pub struct EventBook {
    by_id: Mutex<HashMap<String, MachineEvents>>,
}

impl EventBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, MachineEvents>> {
        self.by_id.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a rebalance recommendation; the first one's time is kept.
    pub fn rebalance(&self, id: &str, at: &str) {
        let mut book = self.lock();
        let entry = book.entry(id.to_string()).or_default();
        if entry.rebalance_at.is_none() {
            entry.rebalance_at = Some(at.to_string());
        }
    }

    /// Records a scheduled change (a later one replaces an earlier one).
    pub fn scheduled(&self, id: &str, kind: ScheduledKind, code: &str, start: Option<&str>) {
        self.lock().entry(id.to_string()).or_default().scheduled =
            Some((kind, code.to_string(), start.map(str::to_string)));
    }

    /// What was reported about `id` (empty when nothing).
    pub fn get(&self, id: &str) -> MachineEvents {
        self.lock().get(id).cloned().unwrap_or_default()
    }

    /// Drops what was reported about machines no request lists any more.
    pub fn forget(&self, ids: &[String]) {
        let mut book = self.lock();
        for id in ids {
            book.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_recommendation_and_the_latest_schedule_are_kept() {
        let b = EventBook::default();
        assert_eq!(b.get("i-1"), MachineEvents::default());
        b.rebalance("i-1", "2026-12-01T10:00:00Z");
        b.rebalance("i-1", "2026-12-01T10:05:00Z");
        b.scheduled("i-1", ScheduledKind::Maintenance, "A", None);
        b.scheduled(
            "i-1",
            ScheduledKind::Retirement,
            "B",
            Some("2026-12-09T00:00:00Z"),
        );
        let e = b.get("i-1");
        assert_eq!(e.rebalance_at.as_deref(), Some("2026-12-01T10:00:00Z"));
        assert_eq!(
            e.scheduled,
            Some((
                ScheduledKind::Retirement,
                "B".into(),
                Some("2026-12-09T00:00:00Z".into())
            ))
        );
        b.forget(&["i-1".into()]);
        assert_eq!(b.get("i-1"), MachineEvents::default());
    }
}

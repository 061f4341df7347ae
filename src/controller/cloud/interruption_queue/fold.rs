//! Copies what the queue reported about a machine into its status entry, for
//! the holding request's reconcile; each fact new to the entry comes back as
//! an Event to publish. Pure, so a fact already in status (a redelivered
//! message, a restarted operator) changes nothing and announces nothing.

use crate::api::request::{ScheduledEvent, ScheduledEventKind};
use crate::api::Machine;
use crate::controller::cloud::translate::parse_time;
use crate::controller::reason::Reason;
use crate::provider::ScheduledKind;

use super::MachineEvents;

/// Folds `events` into `m`; returns the Events (reason, note) for what is new.
pub fn fold(m: &mut Machine, events: &MachineEvents) -> Vec<(Reason, String)> {
    let mut out = Vec::new();
    if m.state.is_down() {
        // Moot once the machine is gone, and every byte of a status counts
        // (src/api/request.rs, MAX_COUNT).
        m.rebalance_recommendation_time = None;
        m.scheduled_event = None;
        return out;
    }
    if let Some(at) = &events.rebalance_at {
        if m.rebalance_recommendation_time.is_none() {
            if let Some(t) = parse_time(at) {
                m.rebalance_recommendation_time = Some(t);
                out.push((
                    Reason::RebalanceRecommendation,
                    format!(
                        "the cloud recommends moving work off spot machine {} (elevated risk of interruption since {at})",
                        m.id
                    ),
                ));
            }
        }
    }
    if let Some((kind, code, start)) = &events.scheduled {
        let wanted = scheduled_event(*kind, start.as_deref());
        if m.scheduled_event.as_ref() != Some(&wanted) {
            m.scheduled_event = Some(wanted);
            let when = start.as_deref().unwrap_or("a time the cloud did not give");
            out.push((
                Reason::ScheduledChange,
                format!(
                    "the cloud scheduled a {} of machine {} ({code}) starting {when}",
                    kind.as_str().to_lowercase(),
                    m.id
                ),
            ));
        }
    }
    out
}

/// The status entry of a scheduled change of `kind` starting at `start`
/// (RFC 3339; unreadable or absent: no time).
pub fn scheduled_event(kind: ScheduledKind, start: Option<&str>) -> ScheduledEvent {
    ScheduledEvent {
        kind: match kind {
            ScheduledKind::Retirement => ScheduledEventKind::Retirement,
            ScheduledKind::Maintenance => ScheduledEventKind::Maintenance,
        },
        time: start.and_then(parse_time),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api;

    #[test]
    fn new_facts_are_copied_and_announced_once() {
        let mut m = Machine::unknown("i-1");
        let events = MachineEvents {
            rebalance_at: Some("2026-12-01T10:00:00Z".into()),
            scheduled: Some((
                ScheduledKind::Retirement,
                "AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED".into(),
                Some("2026-12-09T00:00:00Z".into()),
            )),
        };
        let said = fold(&mut m, &events);
        assert_eq!(
            said.iter().map(|(r, _)| *r).collect::<Vec<_>>(),
            [Reason::RebalanceRecommendation, Reason::ScheduledChange]
        );
        assert!(
            said[1].1.contains("retirement of machine i-1"),
            "{}",
            said[1].1
        );
        assert_eq!(
            m.rebalance_recommendation_time,
            parse_time("2026-12-01T10:00:00Z")
        );
        let s = m.scheduled_event.clone().expect("scheduled");
        assert_eq!(s.kind, ScheduledEventKind::Retirement);
        assert_eq!(s.time, parse_time("2026-12-09T00:00:00Z"));
        // Redelivered: nothing new.
        assert!(fold(&mut m, &events).is_empty());
        assert!(fold(&mut m, &MachineEvents::default()).is_empty());
        // Gone: cleared, not announced again.
        m.state = api::MachineState::Terminated;
        assert!(fold(&mut m, &events).is_empty());
        assert_eq!(m.rebalance_recommendation_time, None);
        assert_eq!(m.scheduled_event, None);
    }
}

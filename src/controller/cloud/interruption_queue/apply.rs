//! What one event does: recorded where the holding request's reconcile reads
//! it, the request woken, and what its status must show before the message
//! may be deleted.

use std::collections::HashMap;

use kube::runtime::reflector::ObjectRef;

use super::fold;
use super::holders::Holder;
use crate::api::{self, MachineLifecycle, MachineRequest};
use crate::controller::Context;
use crate::provider::{self, CapacityType, CloudEvent, InterruptionNotice};

/// What a machine's status entry must show for an event to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// An interruption notice time.
    Notice,
    /// A rebalance recommendation time.
    Rebalance,
    /// This scheduled event.
    Scheduled(api::request::ScheduledEvent),
    /// A down state (stopping, stopped, shutting down, terminated).
    Down,
}

/// One status write a message waits for.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    /// The request that lists the machine.
    pub request: ObjectRef<MachineRequest>,
    /// The machine.
    pub id: String,
    /// What its entry must show.
    pub expect: Expect,
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Recorded for these writes (none: status shows it already).
    Applied(Vec<Pending>),
    /// No request lists any of its machines (another cluster's, or gone).
    UnknownInstance,
    /// Nothing to do: a machine entering pending or running, or one still
    /// launching (the poller describes those anyway).
    Ignored,
}

/// Records `event` for the machines of it that `holders` lists, waking their
/// requests.
pub fn apply(ctx: &Context, event: &CloudEvent, holders: &HashMap<String, Holder>) -> Outcome {
    let held: Vec<&Holder> = event
        .instance_ids()
        .into_iter()
        .filter_map(|id| holders.get(id))
        .collect();
    if held.is_empty() {
        return Outcome::UnknownInstance;
    }
    let mut pending = Vec::new();
    let mut ignored = 0;
    for h in held {
        let m = &h.machine;
        let expect = match event {
            CloudEvent::SpotInterruption { action, time, .. } => {
                if m.interruption_notice_time.is_some() || m.state.is_down() {
                    continue;
                }
                ctx.tracker.record_notice(InterruptionNotice {
                    id: m.id.clone(),
                    noticed_at: time.clone(),
                    action: action.clone(),
                });
                Expect::Notice
            }
            CloudEvent::RebalanceRecommendation { time, .. } => {
                if m.rebalance_recommendation_time.is_some() || m.state.is_down() {
                    continue;
                }
                ctx.tracker.queue_events().rebalance(&m.id, time);
                Expect::Rebalance
            }
            CloudEvent::Scheduled {
                kind, code, start, ..
            } => {
                if m.state.is_down() {
                    continue;
                }
                ctx.tracker
                    .queue_events()
                    .scheduled(&m.id, *kind, code, start.as_deref());
                let wanted = fold::scheduled_event(*kind, start.as_deref());
                if m.scheduled_event.as_ref() == Some(&wanted) {
                    continue;
                }
                Expect::Scheduled(wanted)
            }
            CloudEvent::StateChange { state, .. } => {
                let down = !matches!(
                    state,
                    provider::MachineState::Pending
                        | provider::MachineState::Running
                        | provider::MachineState::Unknown
                );
                let launching = matches!(
                    m.state,
                    api::MachineState::Unknown | api::MachineState::Pending
                );
                if !down || launching {
                    ignored += 1;
                    continue;
                }
                if m.state.is_down() {
                    continue;
                }
                ctx.tracker.record([observation(ctx, m, *state)]);
                Expect::Down
            }
        };
        ctx.tracker.wake(h.request.clone());
        pending.push(Pending {
            request: h.request.clone(),
            id: m.id.clone(),
            expect,
        });
    }
    if pending.is_empty() && ignored > 0 {
        return Outcome::Ignored;
    }
    Outcome::Applied(pending)
}

/// Whether machine entry `m` (None: gone from status, or its request gone)
/// shows what `expect` waits for.
pub fn written(m: Option<&api::Machine>, expect: &Expect) -> bool {
    let Some(m) = m else {
        return true;
    };
    if m.state.is_down() {
        // Down is final for every event: nothing more is written for it.
        return true;
    }
    match expect {
        Expect::Notice => m.interruption_notice_time.is_some(),
        Expect::Rebalance => m.rebalance_recommendation_time.is_some(),
        Expect::Scheduled(wanted) => m.scheduled_event.as_ref() == Some(wanted),
        Expect::Down => false,
    }
}

/// The cloud's latest word on `m` with the state the event reports: the
/// poller's last observation when there is one, else what status knows (a
/// machine seen running since the last restart has no observation).
fn observation(
    ctx: &Context,
    m: &api::Machine,
    state: provider::MachineState,
) -> provider::Machine {
    let mut seen = ctx.tracker.observed(&m.id).unwrap_or_else(|| {
        let mut bare = provider::Machine::bare(m.id.clone(), state);
        bare.capacity_type = match m.capacity_type {
            Some(MachineLifecycle::Spot) => CapacityType::Spot,
            _ => CapacityType::OnDemand,
        };
        bare
    });
    seen.state = state;
    seen
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    #[test]
    fn each_expectation_reads_its_own_field() {
        let mut m = api::Machine::unknown("i-1");
        m.state = api::MachineState::Running;
        let wanted = fold::scheduled_event(
            crate::provider::ScheduledKind::Retirement,
            Some("2027-01-06T08:00:00Z"),
        );
        let scheduled = Expect::Scheduled(wanted.clone());
        for e in [
            &Expect::Notice,
            &Expect::Rebalance,
            &scheduled,
            &Expect::Down,
        ] {
            assert!(!written(Some(&m), e), "{e:?}");
            assert!(written(None, e), "gone: nothing to write");
        }
        m.interruption_notice_time = Some(Time(Timestamp::UNIX_EPOCH));
        assert!(written(Some(&m), &Expect::Notice));
        assert!(!written(Some(&m), &Expect::Rebalance));
        m.scheduled_event = Some(fold::scheduled_event(
            crate::provider::ScheduledKind::Maintenance,
            None,
        ));
        assert!(!written(Some(&m), &scheduled), "another schedule");
        m.scheduled_event = Some(wanted);
        assert!(written(Some(&m), &scheduled));
        m.state = api::MachineState::Stopped;
        for e in [&Expect::Rebalance, &Expect::Down] {
            assert!(written(Some(&m), e), "down is final: {e:?}");
        }
    }
}

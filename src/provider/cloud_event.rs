//! What the cloud says about a machine on its own initiative (an interruption
//! warning, a rebalance recommendation, a state change, a scheduled
//! retirement or maintenance), in plain types: the interruption queue's
//! adapter parses the cloud's messages into these, so the consumer in the
//! controllers knows nothing of the cloud's JSON.

use super::MachineState;

/// One event about one or more machines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudEvent {
    /// The cloud takes a spot machine back in two minutes.
    SpotInterruption {
        /// The machine.
        instance_id: String,
        /// What will happen to it: `terminate`, `stop` or `hibernate`.
        action: String,
        /// When the warning was given (RFC 3339).
        time: String,
    },
    /// A spot machine is at elevated risk of interruption.
    RebalanceRecommendation {
        /// The machine.
        instance_id: String,
        /// When the recommendation was given (RFC 3339).
        time: String,
    },
    /// A machine entered a new state.
    StateChange {
        /// The machine.
        instance_id: String,
        /// The state it entered.
        state: MachineState,
        /// When (RFC 3339).
        time: String,
    },
    /// The cloud scheduled a change that takes machines away for a while or
    /// for good (retirement, reboot or maintenance).
    Scheduled {
        /// The affected machines.
        instance_ids: Vec<String>,
        /// Retirement or maintenance.
        kind: ScheduledKind,
        /// The cloud's own code for it, e.g.
        /// `AWS_EC2_INSTANCE_RETIREMENT_SCHEDULED`.
        code: String,
        /// When the change starts (RFC 3339), if the cloud said.
        start: Option<String>,
        /// When the cloud announced it (RFC 3339).
        time: String,
    },
}

/// What a scheduled change does to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScheduledKind {
    /// The machine is stopped or terminated for good (failing hardware).
    Retirement,
    /// The machine or its host is rebooted or maintained; it comes back.
    Maintenance,
}

impl ScheduledKind {
    /// The spelling in status, Events and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduledKind::Retirement => "Retirement",
            ScheduledKind::Maintenance => "Maintenance",
        }
    }
}

impl CloudEvent {
    /// The machines the event is about.
    pub fn instance_ids(&self) -> Vec<&str> {
        match self {
            CloudEvent::SpotInterruption { instance_id, .. }
            | CloudEvent::RebalanceRecommendation { instance_id, .. }
            | CloudEvent::StateChange { instance_id, .. } => vec![instance_id.as_str()],
            CloudEvent::Scheduled { instance_ids, .. } => {
                instance_ids.iter().map(String::as_str).collect()
            }
        }
    }

    /// A bounded name of the event's kind, for metric labels and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CloudEvent::SpotInterruption { .. } => "spot_interruption",
            CloudEvent::RebalanceRecommendation { .. } => "rebalance_recommendation",
            CloudEvent::StateChange { .. } => "state_change",
            CloudEvent::Scheduled { .. } => "scheduled_change",
        }
    }
}

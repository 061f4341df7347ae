//! Builders for the api types in unit tests, so a test names only the fields
//! it is about: `Machine::test("i-1").state(Pending).launched_at(30)`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::request::{Machine, MachineResult, MachineState, TerminationReason};

/// Launch times in tests count seconds from this instant.
pub const EPOCH: i64 = 1_700_000_000;

impl Machine {
    /// A running machine with only its id set.
    pub fn test(id: &str) -> Machine {
        Machine {
            id: id.into(),
            name: None,
            state: MachineState::Running,
            result: MachineResult::Succeed,
            batch: None,
            instance_type: None,
            availability_zone: None,
            private_ip: None,
            public_ip: None,
            launch_time: None,
            capacity_type: None,
            image_id: None,
            termination_reason: None,
            interruption_notice_time: None,
            message: None,
        }
    }

    /// With this state (and the result it implies).
    pub fn state(mut self, state: MachineState) -> Machine {
        self.state = state;
        self.result = MachineResult::of(state, self.termination_reason);
        self
    }

    /// Marked to go for this reason (and the result it implies).
    pub fn reason(mut self, reason: TerminationReason) -> Machine {
        self.termination_reason = Some(reason);
        self.result = MachineResult::of(self.state, self.termination_reason);
        self
    }

    /// Launched `secs` after [`EPOCH`].
    pub fn launched_at(mut self, secs: i64) -> Machine {
        self.launch_time = Timestamp::from_second(EPOCH + secs).ok().map(Time);
        self
    }

    /// Launched by this batch.
    pub fn in_batch(mut self, batch: &str) -> Machine {
        self.batch = Some(batch.into());
        self
    }
}

//! Builders for the api types in unit tests, so a test names only the fields
//! it is about: `Machine::test("i-1").state(Pending).launched_at(30)`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::request::{
    LaunchBatch, LaunchState, Machine, MachineResult, MachineState, TerminationReason,
};

/// Launch times in tests count seconds from this instant.
pub const EPOCH: i64 = 1_700_000_000;

impl Machine {
    /// A running machine with only its id set.
    pub fn test(id: &str) -> Machine {
        Machine::unknown(id).state(MachineState::Running)
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

impl LaunchBatch {
    /// A batch of one machine in this state, with a token derived from its id.
    pub fn test(id: &str, state: LaunchState) -> LaunchBatch {
        LaunchBatch {
            id: id.into(),
            attempt: 0,
            token: format!("t-{id}"),
            count: 1,
            params_digest: String::new(),
            state,
            image_id: None,
            instance_types: vec![],
            subnet_ids: vec![],
            capacity_type: None,
            created_at: None,
            message: None,
            availability_zone: None,
            failure: None,
            group: None,
            launch_template: None,
            template_digest: None,
        }
    }
}

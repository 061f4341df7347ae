//! Objects built by hand for tests and benchmarks that seed status directly
//! (no operator, no cloud): one builder, so every hand-made machine has the
//! fields the API requires.

use serde_json::{json, Value};

/// The status time every fixture uses (fixtures are never compared to the clock).
pub const FIXED_TIME: &str = "2026-01-01T00:00:00Z";

/// A `Ready=True` condition list for a status patch, observed at generation 1.
pub fn ready_conditions(reason: &str) -> Value {
    json!([{"type": "Ready", "status": "True", "reason": reason, "message": "",
            "lastTransitionTime": FIXED_TIME, "observedGeneration": 1}])
}

/// A running on-demand machine as a MachineRequest's status lists it, for a
/// status patch: `id`, host `name` and `private_ip`, launched in batch
/// `batch` as a c6i.xlarge from ami-12345678 in us-east-1a at [`FIXED_TIME`].
pub fn running_machine(id: &str, name: &str, private_ip: &str, batch: &str) -> Value {
    json!({
        "id": id, "name": name, "state": "running", "result": "succeed",
        "batch": batch, "instanceType": "c6i.xlarge", "availabilityZone": "us-east-1a",
        "privateIp": private_ip, "launchTime": FIXED_TIME, "capacityType": "on-demand",
        "imageId": "ami-12345678"
    })
}

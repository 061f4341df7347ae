use super::*;

fn api_error(status: serde_json::Value) -> kube::Error {
    kube::Error::Api(Box::new(serde_json::from_value(status).expect("a Status")))
}

#[test]
fn a_refused_patch_test_is_told_from_a_schema_violation() {
    let refused = api_error(serde_json::json!({
        "status": "Failure", "code": 422, "reason": "Invalid",
        "message": "the server rejected our request due to an error in our request",
        "details": {"causes": []}
    }));
    assert!(is_failed_patch_test(&refused));
    let invalid = api_error(serde_json::json!({
        "status": "Failure", "code": 422, "reason": "Invalid",
        "message": "MachineRequest.hostforge.io \"a\" is invalid: spec.count: Invalid value",
        "details": {"causes": [{"reason": "FieldValueInvalid", "field": "spec.count"}]}
    }));
    assert!(!is_failed_patch_test(&invalid));
    let conflict = api_error(serde_json::json!({
        "status": "Failure", "code": 409, "reason": "Conflict", "message": "conflict"
    }));
    assert!(!is_failed_patch_test(&conflict));
}

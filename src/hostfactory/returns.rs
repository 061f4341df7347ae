//! requestReturnMachines: every named machine is found in the scheduler-owned
//! MachineRequests (by id and name), and each request holding some of them
//! gets exactly one JSON patch that
//!
//! - adds their ids to `spec.returnMachines` (the operator terminates them,
//!   marks them Returned and never replaces them),
//! - lowers `spec.count` by the machines it still counted (otherwise the
//!   operator would launch replacements; a machine already listed is not
//!   counted twice, so a repeated return changes nothing),
//! - records the return request (`ret-…`) in a label (to find the requests
//!   again with one selective list) and an annotation (which machines), so
//!   getRequestStatus can answer for it later, from any process.
//!
//! The patch starts with a `test` of `metadata.generation`: if the spec changed
//! since it was read (another return, a person), the patch is refused and
//! re-planned from a fresh read, so no return and no count change is lost.

use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::protocol::{MachinesIn, RequestIdOut};
use super::{
    is_owned, return_key, HfConfig, HfError, MachineKey, OWNER_LABEL, OWNER_VALUE, RETURN_PREFIX,
};
use crate::api::{MachineRequest, TerminationReason};

/// How often a patch refused by its generation test is re-planned.
const ATTEMPTS: usize = 8;

/// One returned machine as the annotation records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReturnRecord {
    /// Instance id.
    pub machine_id: String,
    /// Host name, kept so the answer can name the host after status forgot it.
    #[serde(default)]
    pub name: String,
}

/// The records in an annotation value; a value that is not ours reads as none.
pub fn parse_record(value: &str) -> Vec<ReturnRecord> {
    serde_json::from_str(value).unwrap_or_default()
}

/// A new return request id: `ret-` and 16 random hex digits.
pub fn new_return_id() -> String {
    format!("{RETURN_PREFIX}{:016x}", fastrand::u64(..))
}

/// The machines of one request to return.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestReturn {
    /// The MachineRequest's name.
    pub request: String,
    /// The machines, as recorded.
    pub machines: Vec<ReturnRecord>,
}

/// Which request holds which of the `wanted` machines, and which machines no
/// scheduler-owned request holds.
pub fn locate(
    wanted: &[MachineKey],
    requests: &[MachineRequest],
) -> (Vec<RequestReturn>, Vec<MachineKey>) {
    let mut found: Vec<RequestReturn> = vec![];
    let mut unknown = vec![];
    for key in wanted {
        let hit = requests.iter().filter(|mr| is_owned(mr)).find_map(|mr| {
            let st = mr.status.as_ref()?;
            let m = st.machines.iter().find(|m| key.matches(m))?;
            Some((mr.name_any(), m))
        });
        let Some((request, m)) = hit else {
            unknown.push(key.clone());
            continue;
        };
        let record = ReturnRecord {
            machine_id: m.id.clone(),
            name: m
                .name
                .clone()
                .or_else(|| key.name.clone())
                .unwrap_or_default(),
        };
        match found.iter_mut().find(|r| r.request == request) {
            Some(r) if r.machines.contains(&record) => {}
            Some(r) => r.machines.push(record),
            None => found.push(RequestReturn {
                request,
                machines: vec![record],
            }),
        }
    }
    (found, unknown)
}

/// The JSON patch returning `machines` from `mr` under return id `ret_id`.
pub fn patch_ops(
    mr: &MachineRequest,
    machines: &[ReturnRecord],
    ret_id: &str,
) -> serde_json::Value {
    let mut listed = mr.spec.return_machines.clone();
    let mut lower = 0;
    let status_machines = mr.status.as_ref().map(|s| &s.machines[..]).unwrap_or(&[]);
    for rec in machines {
        if listed.contains(&rec.machine_id) {
            continue;
        }
        listed.push(rec.machine_id.clone());
        // Only machines the request still counts lower count: live ones, and
        // lost ones it keeps in count because it does not replace them.
        let counted = status_machines
            .iter()
            .find(|m| m.id == rec.machine_id)
            .is_some_and(|m| {
                m.is_live()
                    || (m.termination_reason == Some(TerminationReason::Lost)
                        && !mr.spec.replace_lost)
            });
        if counted {
            lower += 1;
        }
    }
    let key = return_key(ret_id);
    let escaped = key.replace('~', "~0").replace('/', "~1");
    let record = serde_json::to_string(machines).unwrap_or_else(|_| "[]".into());
    let mut ops = vec![
        json!({"op": "test", "path": "/metadata/generation", "value": mr.metadata.generation}),
        json!({"op": "add", "path": "/spec/returnMachines", "value": listed}),
        json!({"op": "replace", "path": "/spec/count", "value": (mr.spec.count - lower).max(0)}),
    ];
    match &mr.metadata.labels {
        Some(_) => ops.push(
            json!({"op": "add", "path": format!("/metadata/labels/{escaped}"), "value": "true"}),
        ),
        None => ops
            .push(json!({"op": "add", "path": "/metadata/labels", "value": {key.clone(): "true"}})),
    }
    match &mr.metadata.annotations {
        Some(_) => ops.push(
            json!({"op": "add", "path": format!("/metadata/annotations/{escaped}"), "value": record}),
        ),
        None => ops.push(
            json!({"op": "add", "path": "/metadata/annotations", "value": {key: record}}),
        ),
    }
    serde_json::Value::Array(ops)
}

/// Patches one request, re-reading and re-planning when its generation test
/// fails because someone changed the spec in between.
async fn return_from(
    api: &Api<MachineRequest>,
    first: &MachineRequest,
    machines: &[ReturnRecord],
    ret_id: &str,
) -> Result<(), HfError> {
    let name = first.name_any();
    let mut current = first.clone();
    for attempt in 1..=ATTEMPTS {
        let ops = patch_ops(&current, machines, ret_id);
        let patch: Patch<()> = Patch::Json(
            serde_json::from_value(ops)
                .map_err(|e| HfError::Output(format!("building the patch: {e}")))?,
        );
        match api.patch(&name, &PatchParams::default(), &patch).await {
            Ok(_) => return Ok(()),
            // A failed `test` is 422 (Invalid) or 409 (Conflict) depending on
            // the apiserver version; both mean "read again".
            Err(kube::Error::Api(status)) if matches!(status.code, 409 | 422) => {
                tracing::debug!(request = %name, attempt, reason = %status.message, "return patch refused; re-reading");
                current = api
                    .get(&name)
                    .await
                    .map_err(|e| HfError::kube(format!("get MachineRequest {name}"), e))?;
            }
            Err(e) => return Err(HfError::kube(format!("patch MachineRequest {name}"), e)),
        }
    }
    Err(HfError::Contended(format!("MachineRequest {name}")))
}

/// Lists the scheduler-owned requests of the namespace.
pub async fn owned_requests(
    api: &Api<MachineRequest>,
    namespace: &str,
) -> Result<Vec<MachineRequest>, HfError> {
    let selector = format!("{OWNER_LABEL}={OWNER_VALUE}");
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| HfError::kube(format!("list MachineRequests in namespace {namespace}"), e))?
        .items)
}

/// The operation. Machines no request holds are named in the message (they
/// are gone already); when none is held at all the call fails.
pub async fn request_return_machines(
    client: &Client,
    config: &HfConfig,
    input: MachinesIn,
) -> Result<RequestIdOut, HfError> {
    let wanted: Vec<MachineKey> = input.machines.into_vec().iter().map(|m| m.key()).collect();
    if wanted.is_empty() {
        return Err(HfError::InvalidInput("machines is empty".into()));
    }
    if let Some(bad) = wanted.iter().find(|k| k.id.is_none() && k.name.is_none()) {
        return Err(HfError::InvalidInput(format!(
            "a machine needs a name or a machineId ({})",
            bad.describe()
        )));
    }
    let api: Api<MachineRequest> = Api::namespaced(client.clone(), &config.namespace);
    let started = std::time::Instant::now();
    let requests = owned_requests(&api, &config.namespace).await?;
    let listed_in = started.elapsed();
    let (found, unknown) = locate(&wanted, &requests);
    let unknown_names: Vec<String> = unknown.iter().map(MachineKey::describe).collect();
    if found.is_empty() {
        return Err(HfError::UnknownMachines(unknown_names.join(", ")));
    }
    let ret_id = new_return_id();
    for r in &found {
        let Some(mr) = requests.iter().find(|mr| mr.name_any() == r.request) else {
            continue;
        };
        let patch_started = std::time::Instant::now();
        return_from(&api, mr, &r.machines, &ret_id).await?;
        tracing::info!(
            request = %r.request,
            return_id = %ret_id,
            machines = r.machines.len(),
            list_ms = listed_in.as_millis() as u64,
            patch_ms = patch_started.elapsed().as_millis() as u64,
            "machines returned"
        );
    }
    let returned: usize = found.iter().map(|r| r.machines.len()).sum();
    let mut message = format!(
        "{returned} machines of {} requests are being returned",
        found.len()
    );
    if !unknown_names.is_empty() {
        message.push_str(&format!(
            "; not held by any request (already gone): {}",
            unknown_names.join(", ")
        ));
    }
    Ok(RequestIdOut {
        request_id: ret_id,
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(
        name: &str,
        count: i32,
        listed: &[&str],
        machines: serde_json::Value,
    ) -> MachineRequest {
        serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineRequest",
            "metadata": {"name": name, "namespace": "hpc", "generation": 4,
                         "labels": {OWNER_LABEL: OWNER_VALUE}, "annotations": {"a": "b"}},
            "spec": {"templateRef": {"name": "compute"}, "count": count, "replaceLost": false,
                     "returnMachines": listed},
            "status": {"machines": machines}
        }))
        .expect("request")
    }

    fn m(id: &str, state: &str, reason: Option<&str>) -> serde_json::Value {
        json!({"id": id, "name": format!("host-{id}"), "state": state, "result": "succeed",
               "terminationReason": reason})
    }

    fn key(id: Option<&str>, name: Option<&str>) -> MachineKey {
        MachineKey {
            id: id.map(String::from),
            name: name.map(String::from),
        }
    }

    #[test]
    fn machines_are_grouped_by_request_and_strangers_reported() {
        let reqs = [
            request(
                "hf-a",
                2,
                &[],
                json!([m("i-1", "running", None), m("i-2", "running", None)]),
            ),
            request("hf-b", 1, &[], json!([m("i-3", "running", None)])),
        ];
        let (found, unknown) = locate(
            &[
                key(Some("i-1"), Some("host-i-1")),
                key(None, Some("host-i-3")),
                key(Some("i-2"), None),
                key(Some("i-2"), None),
                key(Some("i-1"), Some("somebody-else")),
                key(Some("i-404"), None),
            ],
            &reqs,
        );
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].request, "hf-a");
        let ids: Vec<_> = found[0]
            .machines
            .iter()
            .map(|r| r.machine_id.as_str())
            .collect();
        assert_eq!(ids, ["i-1", "i-2"], "duplicates collapse");
        assert_eq!(found[1].machines[0].name, "host-i-3");
        assert_eq!(unknown.len(), 2, "{unknown:?}");
    }

    #[test]
    fn requests_not_owned_by_the_scheduler_are_never_touched() {
        let mut mr = request("mine", 1, &[], json!([m("i-1", "running", None)]));
        mr.metadata.labels = None;
        let (found, unknown) = locate(&[key(Some("i-1"), None)], &[mr]);
        assert!(found.is_empty());
        assert_eq!(unknown.len(), 1);
    }

    #[test]
    fn the_patch_lists_ids_lowers_count_once_and_records_the_return() {
        let mr = request(
            "hf-a",
            3,
            &["i-0"],
            json!([
                m("i-0", "shutting-down", Some("Returned")),
                m("i-1", "running", None),
                m("i-2", "stopped", Some("Lost")),
                m("i-3", "running", None)
            ]),
        );
        let recs: Vec<ReturnRecord> = ["i-0", "i-1", "i-2"]
            .iter()
            .map(|id| ReturnRecord {
                machine_id: id.to_string(),
                name: format!("host-{id}"),
            })
            .collect();
        let ops = patch_ops(&mr, &recs, "ret-1");
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/metadata/generation", "value": 4})
        );
        assert_eq!(ops[1]["value"], json!(["i-0", "i-1", "i-2"]));
        // i-0 was already listed; i-1 is live and i-2 a kept lost machine.
        assert_eq!(
            ops[2],
            json!({"op": "replace", "path": "/spec/count", "value": 1})
        );
        assert_eq!(ops[3]["path"], "/metadata/labels/hostforge.io~1hf-ret-1");
        assert_eq!(
            ops[4]["path"],
            "/metadata/annotations/hostforge.io~1hf-ret-1"
        );
        let value = ops[4]["value"].as_str().expect("string");
        assert_eq!(parse_record(value), recs);
        let _: Patch<()> = Patch::Json(serde_json::from_value(ops).expect("a valid JSON patch"));
    }

    #[test]
    fn missing_annotations_are_created_whole() {
        let mut mr = request("hf-a", 1, &[], json!([m("i-1", "running", None)]));
        mr.metadata.annotations = None;
        let recs = [ReturnRecord {
            machine_id: "i-1".into(),
            name: String::new(),
        }];
        let ops = patch_ops(&mr, &recs, "ret-2");
        assert_eq!(ops[4]["path"], "/metadata/annotations");
        assert!(ops[4]["value"]["hostforge.io/hf-ret-2"].is_string());
        assert_eq!(ops[2]["value"], 0);
    }

    #[test]
    fn return_ids_are_distinct_and_prefixed() {
        let a = new_return_id();
        assert!(a.starts_with(RETURN_PREFIX) && a.len() == 20);
        assert_ne!(a, new_return_id());
        assert!(parse_record("not json").is_empty());
    }
}

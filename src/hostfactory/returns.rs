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
//! re-planned from a fresh read (which must still be scheduler-owned), so no
//! return and no count change is lost. A refusal with the generation unchanged
//! is the apiserver rejecting the object, and is reported as such.
//!
//! The records are bounded: a retried return whose machines are all listed
//! already answers the return id that recorded them and writes nothing, and
//! the records of one request never take more than [`RECORD_BUDGET`] bytes of
//! its annotations (the oldest *completed* returns are dropped to make room),
//! far below the apiserver's 256 KiB limit for all annotations of an object.
//!
//! A return touching several requests patches each; when some patches fail,
//! the others stand, the answer carries the return id and names the failures.

use std::collections::BTreeMap;

use futures::stream::{self, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::protocol::{MachinesIn, RequestIdOut};
use super::{
    is_owned, return_key, HfConfig, HfError, MachineKey, OWNER_LABEL, OWNER_VALUE, RETURN_PREFIX,
};
use crate::api::{Machine, MachineRequest, MachineState, TerminationReason};

/// How often a patch refused by its generation test is re-planned.
const ATTEMPTS: usize = 8;
/// Requests patched at the same time by one return: a bounded number of
/// apiserver connections, as getRequestStatus fetches.
pub const PATCH_CONCURRENCY: usize = 16;

/// Most bytes (keys and values) the return records of one request may take in
/// its annotations. The apiserver refuses an object whose annotations exceed
/// 256 KiB in all; this leaves half of that to everyone else.
pub const RECORD_BUDGET: usize = 128 * 1024;

/// Page size of the lists of scheduler-owned requests: the apiserver answers
/// in bounded pieces however many requests the scheduler keeps.
pub const LIST_PAGE: u32 = 250;

/// The annotation key prefix of return records.
fn record_prefix() -> String {
    return_key(RETURN_PREFIX)
}

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

/// An annotation value: when the return was made (to drop the oldest completed
/// records first) and its machines. Older values were the bare machine list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
enum RecordValue {
    /// The current form.
    Dated {
        /// Seconds since the epoch.
        at: i64,
        /// The machines.
        machines: Vec<ReturnRecord>,
    },
    /// The form before returns were dated.
    Bare(Vec<ReturnRecord>),
}

/// The records in an annotation value; a value that is not ours reads as none.
pub fn parse_record(value: &str) -> Vec<ReturnRecord> {
    match serde_json::from_str(value) {
        Ok(RecordValue::Dated { machines, .. } | RecordValue::Bare(machines)) => machines,
        Err(_) => vec![],
    }
}

/// When the record in annotation value `value` was made, in seconds since the
/// epoch (0 for undated ones, which are the oldest).
pub fn record_time_of(value: &str) -> i64 {
    record_time(value)
}

/// When the record was made (0 for undated ones, which are the oldest).
fn record_time(value: &str) -> i64 {
    match serde_json::from_str(value) {
        Ok(RecordValue::Dated { at, .. }) => at,
        _ => 0,
    }
}

/// The annotation value recording `machines` returned at `at`.
pub fn record_value(machines: &[ReturnRecord], at: i64) -> String {
    serde_json::to_string(&RecordValue::Dated {
        at,
        machines: machines.to_vec(),
    })
    .unwrap_or_else(|_| "[]".into())
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

/// Where the machines HostFactory named are.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Located {
    /// The machines found, by request.
    pub found: Vec<RequestReturn>,
    /// Keys no scheduler-owned request holds.
    pub unknown: Vec<MachineKey>,
    /// Name-only keys several live machines answer to; refused.
    pub ambiguous: Vec<MachineKey>,
}

/// Which request holds which of the `wanted` machines (see
/// [`MachineKey::resolve`]), which machines no scheduler-owned request holds,
/// and which keys are ambiguous.
pub fn locate(wanted: &[MachineKey], requests: &[MachineRequest]) -> Located {
    let candidates = || {
        requests
            .iter()
            .filter(|mr| is_owned(mr))
            .filter_map(|mr| Some((mr, mr.status.as_ref()?)))
            .flat_map(|(mr, st)| st.machines.iter().map(move |m| (mr, m)))
    };
    let mut out = Located::default();
    for key in wanted {
        let Some((mr, m)) =
            key.resolve(candidates())
                .or_note(key, &mut out.unknown, &mut out.ambiguous)
        else {
            continue;
        };
        let request = mr.name_any();
        let record = ReturnRecord {
            machine_id: m.id.clone(),
            name: m
                .name
                .clone()
                .or_else(|| key.name.clone())
                .unwrap_or_default(),
        };
        match out.found.iter_mut().find(|r| r.request == request) {
            Some(r) if r.machines.iter().any(|x| x.machine_id == record.machine_id) => {}
            Some(r) => r.machines.push(record),
            None => out.found.push(RequestReturn {
                request,
                machines: vec![record],
            }),
        }
    }
    out
}

/// The return records on `mr`: annotation key → value.
fn records(mr: &MachineRequest) -> impl Iterator<Item = (&String, &String)> {
    let prefix = record_prefix();
    mr.annotations()
        .iter()
        .filter(move |(k, _)| k.starts_with(&prefix))
}

/// A return id that already recorded every one of `found`'s machines, when
/// each is listed in its request's `returnMachines` already: a retried return
/// is answered with it and writes nothing.
pub fn already_returned(found: &[RequestReturn], requests: &[MachineRequest]) -> Option<String> {
    let mut covering: Option<Vec<String>> = None;
    for r in found {
        let mr = requests.iter().find(|mr| mr.name_any() == r.request)?;
        if r.machines
            .iter()
            .any(|rec| !mr.spec.return_machines.contains(&rec.machine_id))
        {
            return None;
        }
        let here: Vec<String> = records(mr)
            .filter(|(_, v)| {
                let recorded = parse_record(v);
                r.machines
                    .iter()
                    .all(|m| recorded.iter().any(|x| x.machine_id == m.machine_id))
            })
            .filter_map(|(k, _)| k.strip_prefix("hostforge.io/hf-").map(String::from))
            .collect();
        covering = Some(match covering {
            None => here,
            Some(before) => before.into_iter().filter(|k| here.contains(k)).collect(),
        });
    }
    covering?.into_iter().min()
}

/// Whether every machine of a record is terminated or gone from status.
fn is_complete(value: &str, machines: &[Machine]) -> bool {
    parse_record(value).iter().all(|rec| {
        machines
            .iter()
            .find(|m| m.id == rec.machine_id)
            .is_none_or(|m| m.state == MachineState::Terminated)
    })
}

/// The return records to drop from `mr` so that a new record of `new_bytes`
/// (key and value) fits [`RECORD_BUDGET`]: completed returns, oldest first,
/// down to three quarters of the budget so that the next returns need no
/// dropping. Fails when the returns still terminating alone leave no room.
pub fn records_to_drop(mr: &MachineRequest, new_bytes: usize) -> Result<Vec<String>, HfError> {
    let existing: BTreeMap<&String, &String> = records(mr).collect();
    let mut used: usize = existing.iter().map(|(k, v)| k.len() + v.len()).sum();
    if used + new_bytes <= RECORD_BUDGET {
        return Ok(vec![]);
    }
    let machines = mr.status.as_ref().map(|s| &s.machines[..]).unwrap_or(&[]);
    let mut done: Vec<(i64, &String, usize)> = existing
        .iter()
        .filter(|(_, v)| is_complete(v, machines))
        .map(|(k, v)| (record_time(v), *k, k.len() + v.len()))
        .collect();
    done.sort();
    let mut drop = vec![];
    for (_, key, size) in done {
        if used + new_bytes <= RECORD_BUDGET / 4 * 3 {
            break;
        }
        used -= size;
        drop.push(key.clone());
    }
    if used + new_bytes > RECORD_BUDGET {
        return Err(HfError::RecordsFull(format!(
            "MachineRequest {}: its return records would exceed {RECORD_BUDGET} bytes and \
             the earlier returns are still terminating; try again once they are done",
            mr.name_any()
        )));
    }
    Ok(drop)
}

/// The JSON patch returning `machines` from `mr` under return id `ret_id`
/// at `now` (seconds since the epoch).
pub fn patch_ops(
    mr: &MachineRequest,
    machines: &[ReturnRecord],
    ret_id: &str,
    now: i64,
) -> Result<serde_json::Value, HfError> {
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
    let escape = |k: &str| k.replace('~', "~0").replace('/', "~1");
    let escaped = escape(&key);
    let record = record_value(machines, now);
    let dropped = records_to_drop(mr, key.len() + record.len())?;
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
    for old in dropped {
        if mr.labels().contains_key(&old) {
            ops.push(json!({"op": "remove", "path": format!("/metadata/labels/{}", escape(&old))}));
        }
        ops.push(
            json!({"op": "remove", "path": format!("/metadata/annotations/{}", escape(&old))}),
        );
    }
    Ok(serde_json::Value::Array(ops))
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
        let ops = patch_ops(&current, machines, ret_id, Timestamp::now().as_second())?;
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
                let fresh = api
                    .get(&name)
                    .await
                    .map_err(|e| HfError::kube(format!("get MachineRequest {name}"), e))?;
                if !is_owned(&fresh) {
                    return Err(HfError::NotOwned(name));
                }
                if status.code == 422 && fresh.metadata.generation == current.metadata.generation {
                    // The test held: the apiserver refused the object itself.
                    return Err(HfError::Rejected {
                        request: name,
                        message: status.message,
                    });
                }
                current = fresh;
            }
            Err(e) => return Err(HfError::kube(format!("patch MachineRequest {name}"), e)),
        }
    }
    Err(HfError::Contended(format!("MachineRequest {name}")))
}

/// Lists the requests of the namespace matching `selector`, page by page.
pub async fn list_pages(
    api: &Api<MachineRequest>,
    namespace: &str,
    selector: &str,
) -> Result<Vec<MachineRequest>, HfError> {
    let mut items = vec![];
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().labels(selector).limit(LIST_PAGE);
        if let Some(t) = &token {
            params = params.continue_token(t);
        }
        let page = api.list(&params).await.map_err(|e| {
            HfError::kube(format!("list MachineRequests in namespace {namespace}"), e)
        })?;
        items.extend(page.items);
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(items);
        }
    }
}

/// Lists the scheduler-owned requests of the namespace.
pub async fn owned_requests(
    api: &Api<MachineRequest>,
    namespace: &str,
) -> Result<Vec<MachineRequest>, HfError> {
    list_pages(api, namespace, &format!("{OWNER_LABEL}={OWNER_VALUE}")).await
}

/// The operation. Machines no request holds are named in the message (they
/// are gone already), and so are ambiguous host names (refused); when nothing
/// can be returned at all the call fails. When some requests could be patched
/// and others not, the return stands for the patched ones: the answer has the
/// return id and names the failures.
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
    let located = locate(&wanted, &requests);
    let names = |keys: &[MachineKey]| {
        keys.iter()
            .map(MachineKey::describe)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut notes = vec![];
    if !located.unknown.is_empty() {
        notes.push(format!(
            "not held by any request (already gone): {}",
            names(&located.unknown)
        ));
    }
    if !located.ambiguous.is_empty() {
        notes.push(format!(
            "ambiguous, several live machines have this name (give the machineId): {}",
            names(&located.ambiguous)
        ));
    }
    if located.found.is_empty() {
        return Err(if located.ambiguous.is_empty() {
            HfError::UnknownMachines(names(&located.unknown))
        } else {
            HfError::InvalidInput(notes.join("; "))
        });
    }
    let returned: usize = located.found.iter().map(|r| r.machines.len()).sum();
    if let Some(ret_id) = already_returned(&located.found, &requests) {
        tracing::info!(return_id = %ret_id, machines = returned, "return repeated; nothing to write");
        let mut message = format!("{returned} machines are already being returned under {ret_id}");
        for n in notes {
            message.push_str("; ");
            message.push_str(&n);
        }
        return Ok(RequestIdOut {
            request_id: ret_id,
            message,
        });
    }
    let ret_id = new_return_id();
    // One patch per request, PATCH_CONCURRENCY at a time: a return of all
    // the scheduler's machines touches every request, and one after the
    // other that was 100 patches in 7 s (bench, 100 requests × 10).
    let jobs = located.found.iter().filter_map(|r| {
        let mr = requests.iter().find(|mr| mr.name_any() == r.request)?;
        let (api, ret_id) = (&api, &ret_id);
        Some(async move {
            let patch_started = std::time::Instant::now();
            let outcome = return_from(api, mr, &r.machines, ret_id).await;
            (r, outcome, patch_started.elapsed())
        })
    });
    let outcomes: Vec<_> = stream::iter(jobs)
        .buffered(PATCH_CONCURRENCY)
        .collect()
        .await;
    let mut patched = 0;
    let mut failed = vec![];
    for (r, outcome, took) in outcomes {
        match outcome {
            Ok(()) => {
                patched += r.machines.len();
                tracing::info!(
                    request = %r.request,
                    return_id = %ret_id,
                    machines = r.machines.len(),
                    list_ms = listed_in.as_millis() as u64,
                    patch_ms = took.as_millis() as u64,
                    "machines returned"
                );
            }
            Err(err) => {
                tracing::warn!(request = %r.request, return_id = %ret_id, error = %err, "return failed");
                let ids: Vec<&str> = r.machines.iter().map(|m| m.machine_id.as_str()).collect();
                failed.push(format!("{} NOT returned ({err})", ids.join(", ")));
            }
        }
    }
    if patched == 0 {
        return Err(HfError::ReturnFailed(failed.join("; ")));
    }
    let mut message = format!(
        "{patched} machines of {} requests are being returned",
        located.found.len() - failed.len()
    );
    for n in failed.iter().chain(&notes) {
        message.push_str("; ");
        message.push_str(n);
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

    /// A return touching several requests patches them at the same time:
    /// an API stand-in answers the list, and holds each PATCH until a second
    /// one is in flight (or 5 s pass, so a sequential caller still ends);
    /// the most PATCHes it saw in flight at once is the figure.
    #[tokio::test]
    async fn a_return_patches_its_requests_at_the_same_time() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;

        use axum::http::{Method, Response};
        use kube::client::Body;

        let requests: Vec<MachineRequest> = (0..4)
            .map(|i| {
                let id = format!("i-{i}");
                request(&format!("hf-{i}"), 1, &[], json!([m(&id, "running", None)]))
            })
            .collect();
        let list = serde_json::to_vec(&json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequestList",
            "metadata": {}, "items": requests,
        }))
        .expect("list");
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (now_s, most_s) = (now.clone(), most.clone());
        let service = tower::service_fn(move |req: axum::http::Request<Body>| {
            let (now, most, list, requests) = (
                now_s.clone(),
                most_s.clone(),
                list.clone(),
                requests.clone(),
            );
            async move {
                if req.method() != Method::PATCH {
                    return Ok::<_, std::convert::Infallible>(Response::new(Body::from(list)));
                }
                let open = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(open, Ordering::SeqCst);
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while most.load(Ordering::SeqCst) < 2 && std::time::Instant::now() < deadline {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                let name = req.uri().path().rsplit('/').next().unwrap_or_default();
                let object = requests
                    .iter()
                    .find(|mr| mr.name_any() == name)
                    .map(|mr| serde_json::to_vec(mr).expect("object"))
                    .unwrap_or_default();
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(Response::new(Body::from(object)))
            }
        });
        let client = Client::new(service, "hpc");
        let config = HfConfig::from_yaml(std::path::Path::new("h.yaml"), "namespace: hpc\n")
            .expect("config");
        let input: MachinesIn = serde_json::from_value(json!({"machines": (0..4)
            .map(|i| json!({"machineId": format!("i-{i}"), "name": format!("host-i-{i}")}))
            .collect::<Vec<_>>()}))
        .expect("input");
        let out = request_return_machines(&client, &config, input)
            .await
            .expect("returned");
        assert!(
            out.message.starts_with("4 machines of 4 requests"),
            "{}",
            out.message
        );
        assert!(
            most.load(Ordering::SeqCst) >= 2,
            "patches went one at a time"
        );
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
        let Located { found, unknown, .. } = locate(
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
    fn a_name_only_return_takes_the_live_holder_and_refuses_ambiguous_names() {
        let mut old = m("i-old", "terminated", Some("Returned"));
        old["name"] = json!("host-x");
        let mut new = m("i-new", "running", None);
        new["name"] = json!("host-x");
        let reqs = [request("hf-a", 1, &["i-old"], json!([old, new]))];
        let found = locate(&[key(None, Some("host-x"))], &reqs).found;
        assert_eq!(found[0].machines[0].machine_id, "i-new");
        let mut twin = m("i-twin", "running", None);
        twin["name"] = json!("host-x");
        let reqs = [reqs[0].clone(), request("hf-b", 1, &[], json!([twin]))];
        let located = locate(&[key(None, Some("host-x"))], &reqs);
        assert!(located.found.is_empty(), "never a guess: {located:?}");
        assert_eq!(located.ambiguous.len(), 1);
    }

    #[test]
    fn requests_not_owned_by_the_scheduler_are_never_touched() {
        let mut mr = request("mine", 1, &[], json!([m("i-1", "running", None)]));
        mr.metadata.labels = None;
        let located = locate(&[key(Some("i-1"), None)], &[mr]);
        assert!(located.found.is_empty());
        assert_eq!(located.unknown.len(), 1);
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
        let ops = patch_ops(&mr, &recs, "ret-1", 1_700_000_000).expect("fits");
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
        // Old undated records still read.
        assert_eq!(
            parse_record(&serde_json::to_string(&recs).expect("json")),
            recs
        );
    }

    #[test]
    fn missing_annotations_are_created_whole() {
        let mut mr = request("hf-a", 1, &[], json!([m("i-1", "running", None)]));
        mr.metadata.annotations = None;
        let recs = [ReturnRecord {
            machine_id: "i-1".into(),
            name: String::new(),
        }];
        let ops = patch_ops(&mr, &recs, "ret-2", 0).expect("fits");
        assert_eq!(ops[4]["path"], "/metadata/annotations");
        assert!(ops[4]["value"]["hostforge.io/hf-ret-2"].is_string());
        assert_eq!(ops[2]["value"], 0);
    }

    /// Applies `ops` as the apiserver would (the subset `patch_ops` emits).
    fn apply(mr: &mut MachineRequest, ops: &serde_json::Value) {
        let unescape = |p: &str| p.replace("~1", "/").replace("~0", "~");
        for op in ops.as_array().expect("ops") {
            let path = op["path"].as_str().expect("path");
            let value = &op["value"];
            match (op["op"].as_str().expect("op"), path) {
                ("test", _) => assert_eq!(value, &json!(mr.metadata.generation)),
                (_, "/spec/returnMachines") => {
                    mr.spec.return_machines = serde_json::from_value(value.clone()).expect("ids")
                }
                (_, "/spec/count") => mr.spec.count = value.as_i64().expect("count") as i32,
                (kind, p) => {
                    let (map, key) = if let Some(k) = p.strip_prefix("/metadata/labels/") {
                        (mr.metadata.labels.get_or_insert_default(), unescape(k))
                    } else if let Some(k) = p.strip_prefix("/metadata/annotations/") {
                        (mr.metadata.annotations.get_or_insert_default(), unescape(k))
                    } else {
                        panic!("unexpected op {op}");
                    };
                    if kind == "remove" {
                        assert!(map.remove(&key).is_some(), "removing a missing {key}");
                    } else {
                        map.insert(key, value.as_str().expect("string").to_string());
                    }
                }
            }
        }
        mr.metadata.generation = mr.metadata.generation.map(|g| g + 1);
    }

    fn annotation_bytes(mr: &MachineRequest) -> usize {
        mr.annotations()
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum()
    }

    #[test]
    fn two_thousand_single_returns_stay_far_below_the_annotation_limit() {
        let machines: Vec<serde_json::Value> = (0..2000)
            .map(|i| {
                json!({"id": format!("i-{i:017x}"), "name": format!("ip-10-{}-{}-{}.eu-central-1.compute.internal", i / 65536, (i / 256) % 256, i % 256),
                       "state": "running", "result": "succeed"})
            })
            .collect();
        let mut mr = request("hf-a", 2000, &[], json!(machines));
        let mut ret_ids = vec![];
        for i in 0..2000 {
            let m = &mr.status.as_ref().expect("status").machines[i];
            let rec = ReturnRecord {
                machine_id: m.id.clone(),
                name: m.name.clone().unwrap_or_default(),
            };
            let ret_id = format!("ret-{i:016x}");
            let ops = patch_ops(&mr, &[rec], &ret_id, i as i64).expect("always room");
            apply(&mut mr, &ops);
            ret_ids.push(ret_id);
            // The operator terminates returned machines a few returns later.
            if i >= 5 {
                let st = mr.status.as_mut().expect("status");
                st.machines[i - 5].state = MachineState::Terminated;
            }
            let bytes = annotation_bytes(&mr);
            assert!(
                bytes <= RECORD_BUDGET + 16,
                "after {} returns the annotations hold {bytes} bytes",
                i + 1
            );
        }
        assert_eq!(mr.spec.count, 0);
        assert_eq!(mr.spec.return_machines.len(), 2000);
        // The returns still terminating are all answerable.
        for ret_id in &ret_ids[1995..] {
            assert!(
                mr.annotations().contains_key(&return_key(ret_id)),
                "{ret_id}"
            );
            assert!(mr.labels().contains_key(&return_key(ret_id)), "{ret_id}");
        }
        assert!(annotation_bytes(&mr) < 256 * 1024 / 2 + 64);
    }

    #[test]
    fn returns_still_terminating_are_never_dropped_for_room() {
        let machines: Vec<serde_json::Value> = (0..2000)
            .map(|i| json!({"id": format!("i-{i:017x}"), "name": format!("host-with-a-long-name-{i:040}"),
                             "state": "running", "result": "succeed"}))
            .collect();
        let mut mr = request("hf-a", 2000, &[], json!(machines));
        let mut refused = None;
        for i in 0..2000 {
            let m = &mr.status.as_ref().expect("status").machines[i];
            let rec = ReturnRecord {
                machine_id: m.id.clone(),
                name: m.name.clone().unwrap_or_default(),
            };
            match patch_ops(&mr, &[rec], &format!("ret-{i:016x}"), i as i64) {
                Ok(ops) => apply(&mut mr, &ops),
                Err(e) => {
                    refused = Some((i, e));
                    break;
                }
            }
        }
        let (at, err) = refused.expect("the budget is reached");
        assert!(at > 500, "refused early, at {at}");
        assert!(err.to_string().contains("still terminating"), "{err}");
        assert_eq!(
            records(&mr).count(),
            at,
            "no record of a running return was dropped"
        );
    }

    #[test]
    fn a_retried_return_is_answered_with_its_first_id() {
        let mr = request(
            "hf-a",
            1,
            &["i-1"],
            json!([
                m("i-1", "shutting-down", Some("Returned")),
                m("i-2", "running", None)
            ]),
        );
        let mut mr = mr;
        let rec = ReturnRecord {
            machine_id: "i-1".into(),
            name: "host-i-1".into(),
        };
        mr.metadata.annotations.get_or_insert_default().insert(
            return_key("ret-00000000000000aa"),
            record_value(std::slice::from_ref(&rec), 5),
        );
        let found = locate(&[key(Some("i-1"), None)], std::slice::from_ref(&mr)).found;
        assert_eq!(
            already_returned(&found, std::slice::from_ref(&mr)).as_deref(),
            Some("ret-00000000000000aa")
        );
        let both = locate(
            &[key(Some("i-1"), None), key(Some("i-2"), None)],
            std::slice::from_ref(&mr),
        )
        .found;
        assert_eq!(already_returned(&both, &[mr]), None, "i-2 is new");
    }

    #[test]
    fn return_ids_are_distinct_and_prefixed() {
        let a = new_return_id();
        assert!(a.starts_with(RETURN_PREFIX) && a.len() == 20);
        assert_ne!(a, new_return_id());
        assert!(parse_record("not json").is_empty());
    }
}

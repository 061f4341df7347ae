//! The JSON HostFactory exchanges with a provider plugin, as IBM's "Host
//! Factory provider plug-in interface specification" (Symphony 7.3.2) shows
//! it. Inputs are lenient where schedulers differ (a single object where a list
//! is documented, missing optional fields); outputs always carry every field,
//! with the documented types (attribute values are strings, launch times
//! integers), because HostFactory's parser is strict about those.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::{HfError, MachineKey};

/// Parses an input file's text as `T`.
pub fn parse<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T, HfError> {
    serde_json::from_str(text).map_err(|source| HfError::InvalidJson {
        path: path.to_path_buf(),
        source,
    })
}

/// A list that some callers send as a single object.
#[derive(Debug, Clone, PartialEq)]
pub enum OneOrMany<T> {
    /// The documented form.
    Many(Vec<T>),
    /// One element without the list.
    One(T),
}

/// Parsed by hand rather than as an untagged enum, whose only complaint is
/// "data did not match any variant": this one says what was expected and
/// passes on the element's own error (a missing or mistyped field).
impl<'de, T: DeserializeOwned> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(d)?;
        match value {
            serde_json::Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    serde_json::from_value(item)
                        .map_err(|e| D::Error::custom(format!("element {i} of the list: {e}")))
                })
                .collect::<Result<Vec<T>, _>>()
                .map(OneOrMany::Many),
            serde_json::Value::Object(_) => serde_json::from_value(value)
                .map(OneOrMany::One)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "expected a list of objects (or one object), got {}",
                kind(&other)
            ))),
        }
    }
}

/// A JSON value's kind, for messages (never the value: it may be large).
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

impl<T> OneOrMany<T> {
    /// The elements.
    pub fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::Many(v) => v,
            OneOrMany::One(t) => vec![t],
        }
    }
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(vec![])
    }
}

// ---- getAvailableTemplates ----

/// getAvailableTemplates' answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplatesOut {
    /// The offered templates.
    pub templates: Vec<TemplateOut>,
    /// Notes for the administrator (templates that are not Ready).
    pub message: String,
}

/// One offered template.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateOut {
    /// The id HostFactory requests machines with.
    pub template_id: String,
    /// Most machines of this template at once; -1 for no limit.
    pub max_number: i64,
    /// How many more may be requested now.
    pub available_number: i64,
    /// Resource attributes, each `[type, value]` with the value as a string:
    /// `type` (String), `ncpus`, `ncores`, `nram` (Numeric, MiB).
    pub attributes: BTreeMap<String, [String; 2]>,
    /// First instance type, for the administrator's information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_type: Option<String>,
    /// Image new machines start from, for the administrator's information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// The template's HostFactory `priority` (higher is preferred), from the
    /// `hostforge.io/hf-priority` annotation; absent when the template has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i64>,
}

// ---- requestMachines ----

/// requestMachines' input. Unknown top-level fields are refused (a typo must
/// not pass as a valid request); inside `template` schedulers add their own.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestMachinesIn {
    /// What to launch.
    pub template: TemplateRequest,
    /// The LSF resource connector's account for the machines (`rc_account`),
    /// put on them as the `RC_ACCOUNT` tag as IBM's AWS plugin does, so cost
    /// reports can split the bill by account.
    #[serde(default)]
    pub rc_account: Option<String>,
}

/// The template and number of machines asked for.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRequest {
    /// A templateId from getAvailableTemplates.
    pub template_id: String,
    /// How many machines.
    pub machine_count: i64,
}

/// requestMachines' and requestReturnMachines' answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestIdOut {
    /// The id to poll with getRequestStatus.
    pub request_id: String,
    /// What happened, for the administrator.
    pub message: String,
}

// ---- getRequestStatus ----

/// getRequestStatus' input; unknown top-level fields are refused.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RequestStatusIn {
    /// The requests to report on.
    pub requests: OneOrMany<RequestIdIn>,
}

/// One request id in an input.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestIdIn {
    /// A requestId from requestMachines or requestReturnMachines.
    pub request_id: String,
}

/// getRequestStatus' answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestStatusOut {
    /// One entry per requested id, in input order.
    pub requests: Vec<RequestStatus>,
}

/// Status of a request: `running`, `complete` or `complete_with_error`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    /// Machines are still on their way (or on their way out).
    Running,
    /// Every machine has settled as asked.
    Complete,
    /// Settled with failures, or the id is unknown.
    CompleteWithError,
}

/// One request's status.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestStatus {
    /// The id asked about.
    pub request_id: String,
    /// Overall state.
    pub status: RequestState,
    /// Why, for the administrator.
    pub message: String,
    /// The request's machines.
    pub machines: Vec<MachineOut>,
}

/// A machine's outcome: `executing`, `succeed` or `fail`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MachineOutcome {
    /// On its way (launching, or terminating when returned).
    Executing,
    /// Done as asked.
    Succeed,
    /// Failed; `message` says why.
    Fail,
}

/// One machine in getRequestStatus.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MachineOut {
    /// Instance id.
    #[serde(rename = "machineId")]
    pub machine_id: String,
    /// Host name: the private DNS name ("" until the cloud assigns one).
    pub name: String,
    /// Outcome.
    pub result: MachineOutcome,
    /// EC2 instance state, e.g. running.
    pub status: String,
    /// Private IPv4 address, "" when none.
    #[serde(rename = "privateIpAddress")]
    pub private_ip_address: String,
    /// Public IPv4 address, "" when none.
    #[serde(rename = "publicIpAddress")]
    pub public_ip_address: String,
    /// Launch time in seconds since the epoch, 0 while unknown.
    pub launchtime: i64,
    /// Detail; always set when `result` is fail.
    pub message: String,
}

// ---- requestReturnMachines and getReturnRequests ----

/// requestReturnMachines' and getReturnRequests' input. Unknown top-level
/// fields are refused: `{"machine": [...]}` would otherwise read as no hosts.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct MachinesIn {
    /// The machines.
    #[serde(default)]
    pub machines: OneOrMany<MachineIn>,
}

/// A machine named in an input.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineIn {
    /// Host name.
    #[serde(default)]
    pub name: Option<String>,
    /// Instance id.
    #[serde(default)]
    pub machine_id: Option<String>,
}

impl MachineIn {
    /// The key to match status machines with; empty strings count as absent.
    pub fn key(&self) -> MachineKey {
        let clean = |s: &Option<String>| s.as_ref().filter(|v| !v.trim().is_empty()).cloned();
        MachineKey {
            id: clean(&self.machine_id),
            name: clean(&self.name),
        }
    }
}

/// getReturnRequests' answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReturnRequestsOut {
    /// Always `complete`: the answer is computed at once.
    pub status: String,
    /// Summary for the administrator.
    pub message: String,
    /// Hosts the cloud is taking back.
    pub requests: Vec<ReclaimedHost>,
}

/// A host the cloud is taking back.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReclaimedHost {
    /// Host name as HostFactory knows it.
    pub machine: String,
    /// Instance id, when known.
    #[serde(rename = "machineId")]
    pub machine_id: String,
    /// Seconds left before the host goes away (0: already gone).
    #[serde(rename = "gracePeriod")]
    pub grace_period: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lists_may_be_single_objects() {
        let p = Path::new("in.json");
        let many: RequestStatusIn =
            parse(p, r#"{"requests":[{"requestId":"a"},{"requestId":"b"}]}"#).expect("list");
        assert_eq!(many.requests.into_vec().len(), 2);
        let one: RequestStatusIn = parse(p, r#"{"requests":{"requestId":"a"}}"#).expect("one");
        assert_eq!(one.requests.into_vec()[0].request_id, "a");
    }

    #[test]
    fn typos_and_wrong_shapes_are_named() {
        let p = Path::new("in.json");
        let typo = parse::<MachinesIn>(p, r#"{"machine":[{"name":"h"}]}"#).expect_err("typo");
        assert!(
            typo.to_string().contains("unknown field `machine`"),
            "{typo}"
        );
        let shape = parse::<MachinesIn>(p, r#"{"machines":"h"}"#).expect_err("shape");
        assert!(
            shape.to_string().contains("expected a list of objects"),
            "{shape}"
        );
        let inner = parse::<RequestStatusIn>(p, r#"{"requests":[{"requestId":"a"},{"id":"b"}]}"#)
            .expect_err("element");
        assert!(
            inner.to_string().contains("element 1") && inner.to_string().contains("requestId"),
            "{inner}"
        );
        let ok: MachinesIn = parse(p, r#"{"machines":{"name":"h"}}"#).expect("one object");
        assert_eq!(ok.machines.into_vec().len(), 1);
        let empty: MachinesIn = parse(p, "{}").expect("no machines");
        assert!(empty.machines.into_vec().is_empty());
    }

    #[test]
    fn bad_json_names_the_file() {
        let err = parse::<RequestMachinesIn>(Path::new("/x/in.json"), "{").expect_err("bad");
        assert!(
            err.to_string().starts_with("invalid input in /x/in.json"),
            "{err}"
        );
        let err = parse::<RequestMachinesIn>(Path::new("in.json"), r#"{"template":{}}"#)
            .expect_err("missing field");
        assert!(err.to_string().contains("templateId"), "{err}");
    }

    #[test]
    fn outputs_use_the_documented_names_and_types() {
        let m = MachineOut {
            machine_id: "i-1".into(),
            name: "ip-10-0-0-1.ec2.internal".into(),
            result: MachineOutcome::Succeed,
            status: "running".into(),
            private_ip_address: "10.0.0.1".into(),
            public_ip_address: String::new(),
            launchtime: 1_700_000_000,
            message: String::new(),
        };
        let v = serde_json::to_value(RequestStatus {
            request_id: "hf-x".into(),
            status: RequestState::CompleteWithError,
            message: String::new(),
            machines: vec![m],
        })
        .expect("json");
        assert_eq!(v["status"], "complete_with_error");
        let m = &v["machines"][0];
        for key in [
            "machineId",
            "name",
            "result",
            "status",
            "privateIpAddress",
            "publicIpAddress",
            "launchtime",
            "message",
        ] {
            assert!(m.get(key).is_some(), "{key}");
        }
        assert_eq!(m["result"], "succeed");
        assert!(m["launchtime"].is_i64());
    }

    #[test]
    fn empty_strings_do_not_identify_machines() {
        let m: MachineIn =
            serde_json::from_str(r#"{"name":"","machineId":"i-1"}"#).expect("machine");
        assert_eq!(
            m.key(),
            MachineKey {
                id: Some("i-1".into()),
                name: None
            }
        );
    }
}

//! The HostFactory provider plugin: IBM Spectrum Symphony's HostFactory and
//! LSF's resource connector run `<operation>.sh -f input.json`; the scripts in
//! `hf/scripts/` exec `hostforge hf <operation> -f input.json`, which answers
//! from the Kubernetes objects alone (never the cloud), so the operator's
//! exactly-once launches, status and GitOps apply to scheduler-driven machines.
//!
//! Every answer is derived from MachineTemplates and MachineRequests; the only
//! writes are creating a MachineRequest (requestMachines) and one JSON patch per
//! affected MachineRequest (requestReturnMachines). Nothing is kept on the
//! scheduler host, so any number of scheduler replicas, restarts or hosts agree.
//!
//! Modules: [`protocol`] (the JSON shapes), [`config`] (hostforge.yaml and the
//! Kubernetes client), one module per operation ([`templates`], [`machines`],
//! [`status`], [`returns`], [`reclaim`]), [`cli`] (the `hf` subcommand) and
//! [`import`] (awsprov_templates.json → MachineTemplate manifests).

pub mod cli;
pub mod config;
pub mod error;
pub mod import;
pub mod machines;
pub mod protocol;
pub mod reclaim;
pub mod returns;
pub mod status;
pub mod templates;

pub use config::HfConfig;
pub use error::HfError;

use crate::api::{Machine, MachineRequest};

/// Label on every MachineRequest the plugin creates: the scheduler owns it, and
/// the plugin only ever looks at (and returns machines of) requests carrying it.
pub const OWNER_LABEL: &str = "hostforge.io/owner";
/// Value of [`OWNER_LABEL`] for HostFactory-owned requests.
pub const OWNER_VALUE: &str = "hostfactory";
/// Label with the HostFactory provider instance (`HF_PROVIDER_NAME` /
/// `PROVIDER_NAME`) that created a request, for people looking at requests.
pub const PROVIDER_LABEL: &str = "hostforge.io/hf-provider";
/// Annotation holding a template's HostFactory templateId when it is not the
/// object's name (imported ids may contain characters Kubernetes names cannot).
pub const TEMPLATE_ID_ANNOTATION: &str = "hostforge.io/hf-template-id";
/// Prefix of return request ids; create request ids are MachineRequest names,
/// which the plugin always starts with `hf-`, so the two never collide.
pub const RETURN_PREFIX: &str = "ret-";

/// The label and annotation key recording return request `ret_id` on a
/// MachineRequest (`hostforge.io/hf-ret-…`): the label finds the requests a
/// return touched with one selective list, the annotation says which machines.
pub fn return_key(ret_id: &str) -> String {
    format!("hostforge.io/hf-{ret_id}")
}

/// One machine as HostFactory names it in requestReturnMachines and
/// getReturnRequests: an instance id, a host name, or both.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MachineKey {
    /// EC2 instance id.
    pub id: Option<String>,
    /// Host name (the private DNS name).
    pub name: Option<String>,
}

impl MachineKey {
    /// Whether `m` is this machine: by id and name when both are given (a
    /// machine whose name is not known yet matches on its id), else by whichever
    /// is given. A key with neither matches nothing.
    pub fn matches(&self, m: &Machine) -> bool {
        match (&self.id, &self.name) {
            (Some(id), Some(name)) => *id == m.id && m.name.as_ref().is_none_or(|n| n == name),
            (Some(id), None) => *id == m.id,
            (None, Some(name)) => m.name.as_deref() == Some(name.as_str()),
            (None, None) => false,
        }
    }

    /// How the machine is named in messages.
    pub fn describe(&self) -> String {
        match (&self.id, &self.name) {
            (Some(id), Some(name)) => format!("{name} ({id})"),
            (Some(id), None) => id.clone(),
            (None, Some(name)) => name.clone(),
            (None, None) => "<unnamed>".into(),
        }
    }
}

/// Whether a MachineRequest belongs to the scheduler.
pub fn is_owned(mr: &MachineRequest) -> bool {
    mr.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(OWNER_LABEL))
        .is_some_and(|v| v == OWNER_VALUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{MachineResult, MachineState};

    fn machine(id: &str, name: Option<&str>) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "state": "running", "result": "succeed"
        }))
        .expect("machine")
    }

    #[test]
    fn keys_match_by_id_and_name_or_either() {
        let m = machine("i-1", Some("ip-10-0-0-1.ec2.internal"));
        assert_eq!(m.state, MachineState::Running);
        assert_eq!(m.result, MachineResult::Succeed);
        let both = MachineKey {
            id: Some("i-1".into()),
            name: Some("ip-10-0-0-1.ec2.internal".into()),
        };
        assert!(both.matches(&m));
        let wrong_name = MachineKey {
            name: Some("other".into()),
            ..both.clone()
        };
        assert!(!wrong_name.matches(&m), "both given: both must match");
        assert!(
            wrong_name.matches(&machine("i-1", None)),
            "no name known yet"
        );
        let by_name = MachineKey {
            id: None,
            name: Some("ip-10-0-0-1.ec2.internal".into()),
        };
        assert!(by_name.matches(&m));
        assert!(!by_name.matches(&machine("i-1", None)));
        assert!(!MachineKey::default().matches(&m));
    }

    #[test]
    fn return_keys_are_valid_label_keys() {
        let key = return_key("ret-0123456789abcdef");
        let name = key.strip_prefix("hostforge.io/").expect("prefix");
        assert!(name.len() <= 63);
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_'));
    }
}

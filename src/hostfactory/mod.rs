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
//! [`status`], [`returns`], [`reclaim`]), [`cli`] (the `hf` subcommand), [`tls`]
//! (the TLS crypto of a one-shot process) and
//! [`import`] (awsprov_templates.json → MachineTemplate manifests).

pub mod cli;
pub mod config;
pub mod error;
pub mod expire;
pub mod import;
pub mod machines;
pub mod protocol;
pub mod reclaim;
pub mod returns;
pub mod status;
pub mod templates;
pub mod tls;

pub use config::HfConfig;
pub use error::HfError;

use crate::api::{Machine, MachineRequest, MachineState};

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
/// Annotation holding a template's HostFactory `priority` (an integer), kept
/// by import-templates and passed through by getAvailableTemplates, so the
/// scheduler still prefers the templates the administrator ranked higher.
pub const PRIORITY_ANNOTATION: &str = "hostforge.io/hf-priority";
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

    /// The one machine of `candidates` this key names, so that a return or a
    /// reclaim report never lands on the wrong host.
    ///
    /// A key with an instance id names the machine with that id (ids are never
    /// reused). A name-only key (the protocol's mandatory field) is a host name,
    /// which EC2 reuses once an instance is gone and which overlapping networks
    /// share, so it names a *live* machine: exactly one live machine with that
    /// name is the answer, several are [`Resolved::Ambiguous`] (never a guess).
    /// With no live one, a machine still on its way out (stopped, shutting down)
    /// is the answer, so a retried return or a reclaim report still finds it;
    /// with none of those either, the most recently launched terminated one
    /// (the last holder of the name; returning it again is harmless).
    pub fn resolve<'a, T>(
        &self,
        candidates: impl IntoIterator<Item = (T, &'a Machine)>,
    ) -> Resolved<(T, &'a Machine)> {
        let mut hits: Vec<(T, &'a Machine)> = candidates
            .into_iter()
            .filter(|(_, m)| self.matches(m))
            .collect();
        if self.id.is_some() || hits.is_empty() {
            return match hits.into_iter().next() {
                Some(hit) => Resolved::One(hit),
                None => Resolved::NotFound,
            };
        }
        let live = hits.iter().filter(|(_, m)| m.is_live()).count();
        if live > 0 {
            hits.retain(|(_, m)| m.is_live());
        } else if hits
            .iter()
            .any(|(_, m)| m.state != MachineState::Terminated)
        {
            hits.retain(|(_, m)| m.state != MachineState::Terminated);
        } else {
            // All terminated: the latest holder of the name.
            let latest = hits
                .into_iter()
                .enumerate()
                .max_by_key(|(i, (_, m))| (m.launch_time.as_ref().map(|t| t.0), *i))
                .map(|(_, hit)| hit);
            return latest.map_or(Resolved::NotFound, Resolved::One);
        }
        match hits.len() {
            1 => hits.pop().map_or(Resolved::NotFound, Resolved::One),
            n => Resolved::Ambiguous(n),
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

/// What a [`MachineKey`] names among the scheduler's machines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolved<T> {
    /// Exactly this machine.
    One(T),
    /// No scheduler-owned request lists such a machine.
    NotFound,
    /// A host name several live (or several leaving) machines carry: the key
    /// cannot say which one is meant, so nothing is done with it.
    Ambiguous(usize),
}

impl<T> Resolved<T> {
    /// The one machine named, or `None` with the key noted where the answer
    /// says why nothing was done with it (`unknown` or `ambiguous`): what
    /// every operation taking keys does with one that names no single machine.
    pub fn or_note(
        self,
        key: &MachineKey,
        unknown: &mut Vec<MachineKey>,
        ambiguous: &mut Vec<MachineKey>,
    ) -> Option<T> {
        match self {
            Resolved::One(hit) => Some(hit),
            Resolved::NotFound => {
                unknown.push(key.clone());
                None
            }
            Resolved::Ambiguous(_) => {
                ambiguous.push(key.clone());
                None
            }
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

    fn at(id: &str, name: &str, state: &str, reason: Option<&str>, launched: &str) -> Machine {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "state": state, "result": "succeed",
            "terminationReason": reason, "launchTime": launched
        }))
        .expect("machine")
    }

    fn by_name(name: &str) -> MachineKey {
        MachineKey {
            id: None,
            name: Some(name.into()),
        }
    }

    #[test]
    fn a_name_only_key_names_the_live_holder_of_a_reused_name() {
        let host = "ip-10-0-0-1.ec2.internal";
        let old = at(
            "i-old",
            host,
            "terminated",
            Some("Returned"),
            "2026-01-01T00:00:00Z",
        );
        let new = at("i-new", host, "running", None, "2026-01-02T00:00:00Z");
        let got = by_name(host).resolve([(0, &old), (1, &new)]);
        assert!(
            matches!(got, Resolved::One((1, m)) if m.id == "i-new"),
            "{got:?}"
        );
    }

    #[test]
    fn a_name_two_live_machines_carry_is_ambiguous() {
        let host = "ip-10-0-0-1.ec2.internal";
        let a = at("i-a", host, "running", None, "2026-01-01T00:00:00Z");
        let b = at("i-b", host, "running", None, "2026-01-02T00:00:00Z");
        assert_eq!(
            by_name(host).resolve([(0, &a), (1, &b)]).map_machine_ids(),
            Resolved::Ambiguous(2)
        );
        // An id settles it.
        let key = MachineKey {
            id: Some("i-b".into()),
            name: Some(host.into()),
        };
        assert!(matches!(
            key.resolve([(0, &a), (1, &b)]),
            Resolved::One((1, _))
        ));
    }

    #[test]
    fn without_a_live_holder_the_leaving_then_the_latest_machine_is_named() {
        let host = "ip-10-0-0-1.ec2.internal";
        let gone = at(
            "i-1",
            host,
            "terminated",
            Some("Lost"),
            "2026-01-01T00:00:00Z",
        );
        let later = at(
            "i-2",
            host,
            "terminated",
            Some("Returned"),
            "2026-01-03T00:00:00Z",
        );
        let leaving = at(
            "i-3",
            host,
            "shutting-down",
            Some("Returned"),
            "2026-01-02T00:00:00Z",
        );
        let got = by_name(host).resolve([(0, &gone), (1, &leaving), (2, &later)]);
        assert!(matches!(got, Resolved::One((1, _))), "{got:?}");
        let got = by_name(host).resolve([(0, &gone), (2, &later)]);
        assert!(matches!(got, Resolved::One((2, _))), "{got:?}");
        assert_eq!(
            by_name("other").resolve([(0, &gone)]).map_machine_ids(),
            Resolved::NotFound
        );
    }

    impl<T> Resolved<(T, &Machine)> {
        fn map_machine_ids(self) -> Resolved<String> {
            match self {
                Resolved::One((_, m)) => Resolved::One(m.id.clone()),
                Resolved::NotFound => Resolved::NotFound,
                Resolved::Ambiguous(n) => Resolved::Ambiguous(n),
            }
        }
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

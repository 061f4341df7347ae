//! getAvailableTemplates: the offered MachineTemplates (those matching the
//! configured label selector) with the attributes HostFactory schedules by,
//! read from template status (`instanceTypeInfo`, `machinesInUse`) that the
//! MachineTemplate controller keeps, so no cloud call is made here.

use std::collections::BTreeMap;

use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};

use super::protocol::{TemplateOut, TemplatesOut};
use super::{HfConfig, HfError, PRIORITY_ANNOTATION, TEMPLATE_ID_ANNOTATION};
use crate::api::conditions::{self, READY};
use crate::api::MachineTemplate;

/// `availableNumber` of a template without `maxMachines`. HostFactory wants a
/// number; this is the largest `maxMachines` the API accepts, so an unlimited
/// template never looks smaller than a limited one.
pub const UNLIMITED_AVAILABLE: i64 = 100_000;

/// The templateId HostFactory knows a template by: its `hostforge.io/hf-template-id`
/// annotation (kept by import-templates when the original id is no valid
/// Kubernetes name), else its name.
pub fn template_id(mt: &MachineTemplate) -> String {
    mt.annotations()
        .get(TEMPLATE_ID_ANNOTATION)
        .filter(|id| !id.is_empty())
        .cloned()
        .unwrap_or_else(|| mt.name_any())
}

/// Whether the template can launch now (Ready for its current generation).
pub fn is_ready(mt: &MachineTemplate) -> bool {
    mt.status.as_ref().is_some_and(|st| {
        st.observed_generation == mt.metadata.generation
            && conditions::is_true(&st.conditions, READY)
    })
}

/// One template as HostFactory sees it. A template that is not Ready is
/// offered with `availableNumber` 0, so HostFactory knows it but asks for none.
pub fn offer(mt: &MachineTemplate) -> TemplateOut {
    let status = mt.status.clone().unwrap_or_default();
    let in_use = i64::from(status.machines_in_use.unwrap_or(0));
    let max = mt.spec.max_machines.map(i64::from);
    let available = if is_ready(mt) {
        (max.unwrap_or(UNLIMITED_AVAILABLE) - in_use).max(0)
    } else {
        0
    };
    let mut attributes = BTreeMap::new();
    if let Some(info) = &status.instance_type_info {
        let arch = info.architecture.as_deref().unwrap_or("x86_64");
        attributes.insert("type".into(), ["String".into(), host_type(arch)]);
        attributes.insert("ncpus".into(), ["Numeric".into(), info.vcpus.to_string()]);
        attributes.insert("ncores".into(), ["Numeric".into(), info.cores.to_string()]);
        attributes.insert(
            "nram".into(),
            ["Numeric".into(), info.memory_mib.to_string()],
        );
    } else if let Some(r) = &mt.spec.instance_requirements {
        // EC2 picks the types at launch: the least any machine will have is
        // what a scheduler can count on.
        attributes.insert(
            "ncpus".into(),
            ["Numeric".into(), r.vcpu_count.min.max(1).to_string()],
        );
        attributes.insert(
            "nram".into(),
            ["Numeric".into(), r.memory_mib.min.to_string()],
        );
    }
    TemplateOut {
        template_id: template_id(mt),
        max_number: max.unwrap_or(-1),
        available_number: available,
        attributes,
        vm_type: mt
            .spec
            .instance_types
            .first()
            .map(|t| t.instance_type.clone()),
        image_id: status.resolved_image.map(|i| i.id),
        priority: priority(mt),
    }
}

/// The template's HostFactory priority from its `hostforge.io/hf-priority`
/// annotation. A value that is not an integer is left out rather than
/// guessed at (getAvailableTemplates must still answer for the other
/// templates) and named in the answer's message ([`bad_priority_message`]).
pub fn priority(mt: &MachineTemplate) -> Option<i64> {
    mt.annotations()
        .get(PRIORITY_ANNOTATION)
        .and_then(|v| v.trim().parse().ok())
}

/// The note for a template whose priority annotation is not an integer: it
/// is offered without a priority, and the administrator is told why.
pub fn bad_priority_message(mt: &MachineTemplate) -> Option<String> {
    let value = mt.annotations().get(PRIORITY_ANNOTATION)?;
    priority(mt).is_none().then(|| {
        format!(
            "{}: annotation {PRIORITY_ANNOTATION} {value:?} is not an integer; offered without a priority",
            template_id(mt)
        )
    })
}

/// The `type` attribute value for an EC2 architecture, as IBM's own AWS
/// provider writes it (`X86_64`), upper-cased for the others (`ARM64`).
pub fn host_type(architecture: &str) -> String {
    architecture.to_ascii_uppercase()
}

/// Why each offered template cannot launch now, for the answer's message.
pub fn not_ready_message(templates: &[MachineTemplate]) -> String {
    let notes: Vec<String> = templates
        .iter()
        .filter(|mt| !is_ready(mt))
        .map(|mt| {
            let why = mt
                .status
                .as_ref()
                .and_then(|st| conditions::find_condition(&st.conditions, READY))
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "not reconciled yet".into());
            format!("{} is not ready ({why})", template_id(mt))
        })
        .collect();
    notes.join("; ")
}

/// The templateIds several offered templates share, each with their names:
/// such an id cannot say which template is meant, so it is not offered and
/// requestMachines refuses it (never the first by name).
pub fn duplicate_ids(templates: &[MachineTemplate]) -> BTreeMap<String, Vec<String>> {
    let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for mt in templates {
        by_id
            .entry(template_id(mt))
            .or_default()
            .push(mt.name_any());
    }
    by_id.retain(|_, names| names.len() > 1);
    by_id
}

/// The message naming a templateId several templates share.
pub fn ambiguous_message(id: &str, names: &[String]) -> String {
    format!(
        "templateId {id} is ambiguous: templates {} share it; rename one (annotation {TEMPLATE_ID_ANNOTATION})",
        names.join(", ")
    )
}

/// How fresh a list must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Whatever the apiserver's watch cache holds now (`resourceVersion=0`):
    /// answered at once. A consistent list waits until that cache has caught
    /// up with etcd's latest revision, and right after a write to any other
    /// object (the requestMachines just before) that wait is up to the
    /// apiserver's 100 ms progress-request tick: back-to-back requestMachines
    /// took 90 ms each that way, 10 ms with the cache.
    Cached,
    /// Read at etcd's latest revision: for a second look before refusing.
    Consistent,
}

/// The offered templates, sorted by name.
pub async fn list(
    client: &Client,
    config: &HfConfig,
    freshness: Freshness,
) -> Result<Vec<MachineTemplate>, HfError> {
    let api: Api<MachineTemplate> = Api::namespaced(client.clone(), &config.namespace);
    let mut params = ListParams::default();
    if freshness == Freshness::Cached {
        params = params.match_any();
    }
    if let Some(selector) = &config.template_selector {
        params = params.labels(selector);
    }
    let mut items = api
        .list(&params)
        .await
        .map_err(|e| {
            HfError::kube(
                format!("list MachineTemplates in namespace {}", config.namespace),
                e,
            )
        })?
        .items;
    items.sort_by_key(|mt| mt.name_any());
    Ok(items)
}

/// The operation.
pub async fn get_available_templates(
    client: &Client,
    config: &HfConfig,
) -> Result<TemplatesOut, HfError> {
    // A template listed a moment late is offered at the next call; the
    // scheduler asks every few seconds.
    let templates = list(client, config, Freshness::Cached).await?;
    Ok(answer(&templates))
}

/// getAvailableTemplates' answer for `templates`: a templateId several of
/// them share is listed once, with nothing available, and named in `message`.
pub fn answer(templates: &[MachineTemplate]) -> TemplatesOut {
    let duplicates = duplicate_ids(templates);
    let mut offered: Vec<TemplateOut> = vec![];
    for mt in templates {
        let mut out = offer(mt);
        if duplicates.contains_key(&out.template_id) {
            if offered.iter().any(|o| o.template_id == out.template_id) {
                continue;
            }
            out.available_number = 0;
        }
        offered.push(out);
    }
    let mut notes: Vec<String> = duplicates
        .iter()
        .map(|(id, names)| ambiguous_message(id, names))
        .collect();
    notes.extend(templates.iter().filter_map(bad_priority_message));
    let not_ready = not_ready_message(templates);
    if !not_ready.is_empty() {
        notes.push(not_ready);
    }
    TemplatesOut {
        templates: offered,
        message: notes.join("; "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    pub(crate) fn template(extra_status: serde_json::Value, max: Option<i32>) -> MachineTemplate {
        let mut status = json!({
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Resolved", "message": "",
                            "lastTransitionTime": "2024-01-01T00:00:00Z"}],
            "resolvedImage": {"id": "ami-12345678", "source": "id", "resolvedAt": "2024-01-01T00:00:00Z"},
            "machinesInUse": 3,
            "instanceTypeInfo": {"instanceType": "c6i.xlarge", "vcpus": 4, "cores": 2,
                                 "memoryMiB": 8192, "architecture": "x86_64"}
        });
        if let (Some(s), Some(extra)) = (status.as_object_mut(), extra_status.as_object()) {
            s.extend(extra.clone());
        }
        serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineTemplate",
            "metadata": {"name": "compute", "namespace": "hpc", "generation": 1},
            "spec": {"image": {"id": "ami-12345678"}, "instanceTypes": [{"type": "c6i.xlarge"}],
                     "maxMachines": max},
            "status": status,
        }))
        .expect("template")
    }

    #[test]
    fn attributes_are_strings_in_typed_pairs() {
        let out = offer(&template(json!({}), Some(10)));
        let v = serde_json::to_value(&out).expect("json");
        assert_eq!(v["templateId"], "compute");
        assert_eq!(v["maxNumber"], 10);
        assert_eq!(v["availableNumber"], 7);
        assert_eq!(v["attributes"]["type"], json!(["String", "X86_64"]));
        assert_eq!(v["attributes"]["ncpus"], json!(["Numeric", "4"]));
        assert_eq!(v["attributes"]["ncores"], json!(["Numeric", "2"]));
        assert_eq!(v["attributes"]["nram"], json!(["Numeric", "8192"]));
        assert_eq!(v["vmType"], "c6i.xlarge");
        assert_eq!(v["imageId"], "ami-12345678");
    }

    #[test]
    fn instance_requirements_advertise_their_minimums() {
        let mut mt = template(json!({"instanceTypeInfo": null}), Some(10));
        mt.spec.instance_types.clear();
        mt.spec.instance_requirements = Some(
            serde_json::from_value(
                json!({"vcpuCount": {"min": 8, "max": 16}, "memoryMiB": {"min": 32768}}),
            )
            .expect("requirements"),
        );
        let v = serde_json::to_value(offer(&mt)).expect("json");
        assert_eq!(v["attributes"]["ncpus"], json!(["Numeric", "8"]));
        assert_eq!(v["attributes"]["nram"], json!(["Numeric", "32768"]));
        assert!(v["attributes"].get("ncores").is_none(), "{v}");
        assert!(v.get("vmType").is_none_or(Value::is_null), "{v}");
    }

    #[test]
    fn unlimited_templates_say_minus_one_and_a_large_availability() {
        let out = offer(&template(json!({}), None));
        assert_eq!(out.max_number, -1);
        assert_eq!(out.available_number, UNLIMITED_AVAILABLE - 3);
    }

    #[test]
    fn full_and_unready_templates_have_nothing_available() {
        let full = offer(&template(json!({"machinesInUse": 12}), Some(10)));
        assert_eq!(full.available_number, 0);
        let unready = template(
            json!({"conditions": [{"type": "Ready", "status": "False", "reason": "SubnetNotFound",
                                   "message": "subnet-1 not found", "lastTransitionTime": "2024-01-01T00:00:00Z"}]}),
            Some(10),
        );
        assert_eq!(offer(&unready).available_number, 0);
        assert_eq!(
            not_ready_message(&[unready]),
            "compute is not ready (SubnetNotFound: subnet-1 not found)"
        );
    }

    #[test]
    fn the_priority_annotation_is_passed_through_and_a_bad_one_is_named() {
        let with = |value: &str| {
            let mut mt = template(json!({}), Some(10));
            mt.metadata.annotations =
                Some([(PRIORITY_ANNOTATION.to_string(), value.to_string())].into());
            mt
        };
        let v = serde_json::to_value(offer(&with("7"))).expect("json");
        assert_eq!(v["priority"], 7);
        let none = serde_json::to_value(offer(&template(json!({}), Some(10)))).expect("json");
        assert!(none.get("priority").is_none(), "{none}");
        let bad = answer(&[with("high")]);
        assert_eq!(bad.templates[0].priority, None);
        assert_eq!(
            bad.message,
            "compute: annotation hostforge.io/hf-priority \"high\" is not an integer; offered without a priority"
        );
    }

    #[test]
    fn the_annotation_overrides_the_template_id_and_arm_is_named() {
        let mut mt = template(json!({}), None);
        mt.metadata.annotations = Some(
            [(
                TEMPLATE_ID_ANNOTATION.to_string(),
                "Template-VM-1".to_string(),
            )]
            .into(),
        );
        if let Some(info) = mt
            .status
            .as_mut()
            .and_then(|s| s.instance_type_info.as_mut())
        {
            info.architecture = Some("arm64".into());
        }
        let out = offer(&mt);
        assert_eq!(out.template_id, "Template-VM-1");
        assert_eq!(
            out.attributes["type"],
            ["String".to_string(), "ARM64".to_string()]
        );
    }

    #[test]
    fn a_template_id_two_templates_share_is_listed_once_with_nothing_available() {
        let named = |name: &str, id: &str| {
            let mut mt = template(json!({}), Some(10));
            mt.metadata.name = Some(name.into());
            mt.metadata.annotations =
                Some([(TEMPLATE_ID_ANNOTATION.to_string(), id.to_string())].into());
            mt
        };
        let out = answer(&[
            named("a", "Compute"),
            named("b", "Compute"),
            named("c", "Gpu"),
        ]);
        let ids: Vec<&str> = out
            .templates
            .iter()
            .map(|t| t.template_id.as_str())
            .collect();
        assert_eq!(ids, ["Compute", "Gpu"]);
        assert_eq!(out.templates[0].available_number, 0);
        assert_eq!(out.templates[1].available_number, 7);
        assert!(
            out.message
                .contains("templateId Compute is ambiguous: templates a, b"),
            "{}",
            out.message
        );
    }

    #[test]
    fn unknown_sizes_are_left_out_rather_than_guessed() {
        let mut mt = template(json!({}), None);
        if let Some(st) = mt.status.as_mut() {
            st.instance_type_info = None;
        }
        assert!(offer(&mt).attributes.is_empty());
    }
}

//! requestMachines: one MachineRequest per HostFactory request, labelled as
//! scheduler-owned; its name is the requestId. The operator does the rest.
//!
//! The request has `replaceLost: false`: HostFactory learns about a lost host
//! from getReturnRequests and asks for new machines itself, so a replacement
//! launched behind its back would run unused.

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};

use super::protocol::{RequestIdOut, RequestMachinesIn};
use super::templates::{self, template_id};
use super::{HfConfig, HfError, OWNER_LABEL, OWNER_VALUE, PROVIDER_LABEL, TEMPLATE_ID_ANNOTATION};
use crate::api::request::MAX_COUNT;
use crate::api::{MachineRequest, MachineRequestSpec, MachineTemplate, TemplateRef};

/// Checks the input against the offered templates and builds the request to
/// create (with `generateName`, so concurrent calls never collide).
pub fn build_request(
    input: &RequestMachinesIn,
    offered: &[MachineTemplate],
    provider_name: Option<&str>,
) -> Result<MachineRequest, HfError> {
    let wanted = &input.template.template_id;
    let mt = offered
        .iter()
        .find(|mt| template_id(mt) == *wanted)
        .ok_or_else(|| HfError::UnknownTemplate {
            template_id: wanted.clone(),
            offered: offered
                .iter()
                .map(template_id)
                .collect::<Vec<_>>()
                .join(", "),
        })?;
    let count = input.template.machine_count;
    if count < 1 {
        return Err(HfError::InvalidInput(format!(
            "machineCount must be at least 1, got {count}"
        )));
    }
    if let Some(max) = mt.spec.max_machines {
        if count > i64::from(max) {
            return Err(HfError::InvalidInput(format!(
                "machineCount {count} is above maxNumber {max} of template {wanted}"
            )));
        }
    }
    if count > i64::from(MAX_COUNT) {
        return Err(HfError::InvalidInput(format!(
            "machineCount {count} is above {MAX_COUNT}, the most one request may hold; request in several steps"
        )));
    }
    let template_name = mt.name_any();
    let mut labels =
        std::collections::BTreeMap::from([(OWNER_LABEL.to_string(), OWNER_VALUE.to_string())]);
    if let Some(p) = provider_name.filter(|p| is_label_value(p)) {
        labels.insert(PROVIDER_LABEL.to_string(), p.to_string());
    }
    Ok(MachineRequest {
        metadata: ObjectMeta {
            generate_name: Some(name_prefix(&template_name)),
            labels: Some(labels),
            annotations: Some([(TEMPLATE_ID_ANNOTATION.to_string(), wanted.clone())].into()),
            ..Default::default()
        },
        spec: MachineRequestSpec {
            template_ref: TemplateRef {
                name: template_name,
            },
            count: count as i32,
            return_machines: vec![],
            replace_lost: false,
        },
        status: None,
    })
}

/// `hf-<template>-`: the prefix of generated request names (the apiserver adds
/// five characters). Always starts with `hf-`, never `ret-`.
pub fn name_prefix(template: &str) -> String {
    let mut stem: String = template.chars().take(40).collect();
    while stem.ends_with(['.', '-']) {
        stem.pop();
    }
    format!("hf-{stem}-")
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The operation.
pub async fn request_machines(
    client: &Client,
    config: &HfConfig,
    input: &RequestMachinesIn,
    provider_name: Option<&str>,
) -> Result<RequestIdOut, HfError> {
    let offered = templates::list(client, config).await?;
    let mr = build_request(input, &offered, provider_name)?;
    let api: Api<MachineRequest> = Api::namespaced(client.clone(), &config.namespace);
    let created = api
        .create(&PostParams::default(), &mr)
        .await
        .map_err(|e| HfError::kube("create MachineRequest", e))?;
    let name = created.name_any();
    tracing::info!(request = %name, template = %input.template.template_id, count = input.template.machine_count, "machines requested");
    Ok(RequestIdOut {
        message: format!(
            "MachineRequest {}/{name} asks for {} machines of template {}",
            config.namespace, input.template.machine_count, input.template.template_id
        ),
        request_id: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostfactory::protocol::TemplateRequest;
    use serde_json::json;

    fn offered(max: Option<i32>) -> Vec<MachineTemplate> {
        vec![serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1",
            "kind": "MachineTemplate",
            "metadata": {"name": "compute", "namespace": "hpc"},
            "spec": {"image": {"id": "ami-12345678"}, "instanceTypes": [{"type": "t3.micro"}],
                     "maxMachines": max},
        }))
        .expect("template")]
    }

    fn input(id: &str, count: i64) -> RequestMachinesIn {
        RequestMachinesIn {
            template: TemplateRequest {
                template_id: id.into(),
                machine_count: count,
            },
        }
    }

    #[test]
    fn builds_an_owned_request_that_does_not_replace_lost_machines() {
        let mr = build_request(&input("compute", 3), &offered(Some(10)), Some("hostforge"))
            .expect("valid");
        assert_eq!(mr.metadata.generate_name.as_deref(), Some("hf-compute-"));
        assert_eq!(mr.labels()[OWNER_LABEL], OWNER_VALUE);
        assert_eq!(mr.labels()[PROVIDER_LABEL], "hostforge");
        assert_eq!(mr.annotations()[TEMPLATE_ID_ANNOTATION], "compute");
        assert_eq!(mr.spec.count, 3);
        assert_eq!(mr.spec.template_ref.name, "compute");
        assert!(!mr.spec.replace_lost);
    }

    #[test]
    fn bad_counts_and_templates_are_refused_with_their_reason() {
        let err = |i: RequestMachinesIn, max| {
            build_request(&i, &offered(max), None)
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(input("compute", 0), None).contains("at least 1"));
        assert!(err(input("compute", -2), None).contains("at least 1"));
        assert!(err(input("compute", 11), Some(10)).contains("above maxNumber 10"));
        assert!(err(input("compute", 2001), None).contains("above 2000"));
        let unknown = err(input("gpu", 1), None);
        assert!(
            unknown.contains("\"gpu\"") && unknown.contains("[compute]"),
            "{unknown}"
        );
    }

    #[test]
    fn odd_provider_names_are_not_put_in_labels() {
        let mr = build_request(&input("compute", 1), &offered(None), Some("my provider"))
            .expect("valid");
        assert!(!mr.labels().contains_key(PROVIDER_LABEL));
    }

    #[test]
    fn name_prefixes_are_short_and_clean() {
        assert_eq!(name_prefix("a.b-"), "hf-a.b-");
        assert!(name_prefix(&"x".repeat(200)).len() <= 44);
    }
}

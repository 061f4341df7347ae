//! requestMachines: one MachineRequest per HostFactory request, labelled as
//! scheduler-owned; its name is the requestId. The operator does the rest.
//!
//! Idempotent: the name is `hf-<template>-` and ten hex digits of a digest of
//! the input *file* (its path, device, inode, modification time, size and
//! content) with the templateId and count. A new request comes with an input
//! file written for it (a new modification time at least), so two requests
//! never share a name even with the same template and count, while a rerun of
//! the same script with the same file (a wrapper's retry, a timeout that came
//! after the create) finds the request it already created and answers it
//! instead of creating a second. The create is never cut short by
//! the deadline: if its answer does not come, the request is looked up by its
//! name, and once it exists it is answered.
//!
//! The request has `replaceLost: false`: HostFactory learns about a lost host
//! from getReturnRequests and asks for new machines itself, so a replacement
//! launched behind its back would run unused.

use std::future::Future;
use std::time::Duration;

use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client, ResourceExt};
use sha2::{Digest, Sha256};

use super::protocol::{RequestIdOut, RequestMachinesIn};
use super::templates::{self, ambiguous_message, duplicate_ids, template_id, Freshness};
use super::{
    is_owned, HfConfig, HfError, OWNER_LABEL, OWNER_VALUE, PROVIDER_LABEL, TEMPLATE_ID_ANNOTATION,
};
use crate::api::request::MAX_COUNT;
use crate::api::{MachineRequest, MachineRequestSpec, MachineTemplate, TemplateRef};

/// Ten hex digits identifying one HostFactory request: a digest of the
/// templateId, the count and `input_identity` (the input file's path, device,
/// inode, modification time, size and content, as the CLI read it).
pub fn request_key(input: &RequestMachinesIn, input_identity: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(input.template.template_id.as_bytes());
    hash.update([0]);
    hash.update(input.template.machine_count.to_be_bytes());
    hash.update(input_identity);
    hash.finalize()
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks the input against the offered templates and builds the request to
/// create, named `hf-<template>-<key>` (see [`request_key`]).
pub fn build_request(
    input: &RequestMachinesIn,
    offered: &[MachineTemplate],
    provider_name: Option<&str>,
    key: &str,
) -> Result<MachineRequest, HfError> {
    let wanted = &input.template.template_id;
    if let Some(names) = duplicate_ids(offered).get(wanted) {
        return Err(HfError::InvalidInput(ambiguous_message(wanted, names)));
    }
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
            name: Some(format!("{}{key}", name_prefix(&template_name))),
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
            rebalance_policy: Default::default(),
            replace_unhealthy: false,
            update_policy: Default::default(),
            tags: request_tags(input)?,
        },
        status: None,
    })
}

/// The tag IBM's AWS plugin puts requestMachines' `rc_account` in.
pub const RC_ACCOUNT_TAG: &str = "RC_ACCOUNT";

/// The request's own tags: `rc_account` as [`RC_ACCOUNT_TAG`] (none when it
/// is absent or blank). A value EC2 would refuse as a tag value (over 256
/// characters) is refused here, before anything is created.
pub fn request_tags(
    input: &RequestMachinesIn,
) -> Result<std::collections::BTreeMap<String, String>, HfError> {
    let Some(account) = input.rc_account.as_deref().map(str::trim) else {
        return Ok(Default::default());
    };
    if account.is_empty() {
        return Ok(Default::default());
    }
    if account.chars().count() > 256 {
        return Err(HfError::InvalidInput(format!(
            "rc_account is {} characters long; a tag value holds at most 256",
            account.chars().count()
        )));
    }
    Ok([(RC_ACCOUNT_TAG.to_string(), account.to_string())].into())
}

/// `hf-<template>-`: the prefix of request names (the key follows). Always
/// starts with `hf-`, never `ret-`.
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

/// Whether `existing` (found under the name `wanted` was to be created with)
/// is that request, created by an earlier run of the same input.
pub fn is_same_request(existing: &MachineRequest, wanted: &MachineRequest) -> bool {
    is_owned(existing)
        && existing.spec.template_ref == wanted.spec.template_ref
        && existing.annotations().get(TEMPLATE_ID_ANNOTATION)
            == wanted.annotations().get(TEMPLATE_ID_ANNOTATION)
}

/// The operation. Each of its three steps (listing the templates, the
/// create, the look-up after a create without an answer) gets `step` time.
pub async fn request_machines(
    client: &Client,
    config: &HfConfig,
    input: &RequestMachinesIn,
    provider_name: Option<&str>,
    key: &str,
) -> Result<RequestIdOut, HfError> {
    let step = config.timeout;
    // From the apiserver's cache first (see `Freshness::Cached`); a templateId
    // the cache does not offer is looked up again at etcd's latest revision
    // before it is refused, so a template made a moment ago is not refused.
    let mut offered =
        tokio::time::timeout(step, templates::list(client, config, Freshness::Cached))
            .await
            .map_err(|_| HfError::Timeout(step))??;
    if !offered
        .iter()
        .any(|mt| template_id(mt) == input.template.template_id)
    {
        offered =
            tokio::time::timeout(step, templates::list(client, config, Freshness::Consistent))
                .await
                .map_err(|_| HfError::Timeout(step))??;
    }
    let mr = build_request(input, &offered, provider_name, key)?;
    let name = mr.name_any();
    let api: Api<MachineRequest> = Api::namespaced(client.clone(), &config.namespace);
    let created = create_or_find(
        &mr,
        &config.namespace,
        step,
        api.create(&PostParams::default(), &mr),
        || api.get_opt(&name),
    )
    .await?;
    tracing::info!(request = %name, template = %input.template.template_id, count = input.template.machine_count, created, "machines requested");
    Ok(RequestIdOut {
        message: format!(
            "MachineRequest {}/{name} asks for {} machines of template {} ({created})",
            config.namespace, input.template.machine_count, input.template.template_id
        ),
        request_id: name,
    })
}

/// Sends the create of `mr` (`create`) and settles what it did, each step
/// within `step`: created, or, when the name exists already or the create got
/// no answer (timeout, broken connection: it may have landed), the request
/// looked up by name (`get`) if it is this request. Returns how it was made,
/// for the answer's message; a created request is always answered.
pub async fn create_or_find<C, G, GF>(
    mr: &MachineRequest,
    namespace: &str,
    step: Duration,
    create: C,
    get: G,
) -> Result<&'static str, HfError>
where
    C: Future<Output = Result<MachineRequest, kube::Error>>,
    G: FnOnce() -> GF,
    GF: Future<Output = Result<Option<MachineRequest>, kube::Error>>,
{
    let name = mr.name_any();
    let how = match tokio::time::timeout(step, create).await {
        Ok(Ok(_)) => return Ok("created"),
        Ok(Err(kube::Error::Api(status))) if status.code == 409 => {
            "already created by an earlier run of this input"
        }
        Ok(Err(kube::Error::Api(status))) if status.code < 500 => {
            return Err(HfError::kube(
                "create MachineRequest",
                kube::Error::Api(status),
            ))
        }
        unanswered => {
            let why = match unanswered {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {step:?}"),
            };
            tracing::warn!(request = %name, error = %why, "create unanswered; looking the request up");
            "created (confirmed by a look-up after the create went unanswered)"
        }
    };
    let existing = tokio::time::timeout(step, get())
        .await
        .map_err(|_| HfError::Timeout(step))?
        .map_err(|e| HfError::kube(format!("get MachineRequest {name}"), e))?;
    match existing {
        Some(found) if is_same_request(&found, mr) => Ok(how),
        Some(_) => Err(HfError::InvalidInput(format!(
            "MachineRequest {namespace}/{name} exists and is not this request; not touched"
        ))),
        None => Err(HfError::InvalidInput(format!(
            "MachineRequest {namespace}/{name} was not created; try again"
        ))),
    }
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
            rc_account: None,
        }
    }

    /// The templates are read from the apiserver's cache first
    /// (`resourceVersion=0`, no wait for it to catch up with etcd), and a
    /// templateId the cache does not offer yet is read again at the latest
    /// revision before it is refused: an API stand-in whose cache lacks the
    /// template still gets the request created.
    #[tokio::test]
    async fn templates_come_from_the_cache_and_a_miss_is_read_again() {
        use std::sync::{Arc, Mutex};

        use axum::http::{Method, Response, StatusCode};
        use kube::client::Body;

        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        let service = tower::service_fn(move |req: axum::http::Request<Body>| {
            let log = log.clone();
            async move {
                let uri = req.uri().to_string();
                log.lock()
                    .expect("log")
                    .push(format!("{} {uri}", req.method()));
                let (status, body) = if req.method() == Method::POST {
                    let bytes = req
                        .into_body()
                        .collect_bytes()
                        .await
                        .map(|b| b.to_vec())
                        .unwrap_or_default();
                    (StatusCode::CREATED, bytes)
                } else {
                    let items = if uri.contains("resourceVersion=0") {
                        vec![]
                    } else {
                        offered(None)
                    };
                    let list = json!({"apiVersion": "hostforge.io/v1alpha1",
                                      "kind": "MachineTemplateList", "metadata": {},
                                      "items": items});
                    (StatusCode::OK, serde_json::to_vec(&list).expect("list"))
                };
                let mut answer = Response::new(Body::from(body));
                *answer.status_mut() = status;
                Ok::<_, std::convert::Infallible>(answer)
            }
        });
        let client = Client::new(service, "hpc");
        let config = HfConfig::from_yaml(std::path::Path::new("h.yaml"), "namespace: hpc\n")
            .expect("config");
        let out = request_machines(&client, &config, &input("compute", 2), None, "0123456789")
            .await
            .expect("created");
        assert_eq!(out.request_id, "hf-compute-0123456789");
        let seen = seen.lock().expect("log").clone();
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert!(
            seen[0].starts_with("GET ") && seen[0].contains("resourceVersion=0"),
            "{seen:?}"
        );
        assert!(
            seen[1].starts_with("GET ") && !seen[1].contains("resourceVersion"),
            "{seen:?}"
        );
        assert!(seen[2].starts_with("POST "), "{seen:?}");
    }

    #[test]
    fn builds_an_owned_request_that_does_not_replace_lost_machines() {
        let mr = build_request(
            &input("compute", 3),
            &offered(Some(10)),
            Some("hostforge"),
            "0123456789",
        )
        .expect("valid");
        assert_eq!(mr.metadata.name.as_deref(), Some("hf-compute-0123456789"));
        assert_eq!(mr.labels()[OWNER_LABEL], OWNER_VALUE);
        assert_eq!(mr.labels()[PROVIDER_LABEL], "hostforge");
        assert_eq!(mr.annotations()[TEMPLATE_ID_ANNOTATION], "compute");
        assert_eq!(mr.spec.count, 3);
        assert_eq!(mr.spec.template_ref.name, "compute");
        assert!(!mr.spec.replace_lost);
        assert!(mr.spec.tags.is_empty(), "no rc_account, no tag");
    }

    #[test]
    fn rc_account_becomes_the_rc_account_tag() {
        let with = |account: &str| RequestMachinesIn {
            rc_account: Some(account.into()),
            ..input("compute", 1)
        };
        let mr = build_request(&with(" proj-a "), &offered(None), None, "k").expect("valid");
        assert_eq!(
            mr.spec.tags,
            [(RC_ACCOUNT_TAG.to_string(), "proj-a".to_string())].into()
        );
        let blank = build_request(&with("  "), &offered(None), None, "k").expect("valid");
        assert!(blank.spec.tags.is_empty());
        let err = build_request(&with(&"x".repeat(257)), &offered(None), None, "k")
            .expect_err("too long")
            .to_string();
        assert!(err.contains("rc_account") && err.contains("256"), "{err}");
    }

    #[test]
    fn bad_counts_and_templates_are_refused_with_their_reason() {
        let err = |i: RequestMachinesIn, max| {
            build_request(&i, &offered(max), None, "k")
                .expect_err("invalid")
                .to_string()
        };
        assert!(err(input("compute", 0), None).contains("at least 1"));
        assert!(err(input("compute", -2), None).contains("at least 1"));
        assert!(err(input("compute", 11), Some(10)).contains("above maxNumber 10"));
        assert!(err(input("compute", 1001), None).contains("above 1000"));
        let unknown = err(input("gpu", 1), None);
        assert!(
            unknown.contains("\"gpu\"") && unknown.contains("[compute]"),
            "{unknown}"
        );
    }

    #[test]
    fn odd_provider_names_are_not_put_in_labels() {
        let mr = build_request(
            &input("compute", 1),
            &offered(None),
            Some("my provider"),
            "k",
        )
        .expect("valid");
        assert!(!mr.labels().contains_key(PROVIDER_LABEL));
    }

    #[test]
    fn the_same_input_file_gives_the_same_name_and_another_file_another() {
        let i = input("compute", 3);
        let key = request_key(&i, b"/work/in.json\0inode 7\0mtime 1");
        assert_eq!(key.len(), 10);
        assert_eq!(key, request_key(&i, b"/work/in.json\0inode 7\0mtime 1"));
        assert_ne!(key, request_key(&i, b"/work/in.json\0inode 7\0mtime 2"));
        assert_ne!(
            key,
            request_key(&input("compute", 4), b"/work/in.json\0inode 7\0mtime 1")
        );
        let a = build_request(&i, &offered(None), None, &key).expect("valid");
        let b = build_request(&i, &offered(None), None, &key).expect("valid");
        assert_eq!(a.metadata.name, b.metadata.name);
        assert!(is_same_request(&a, &b));
        let mut foreign = b.clone();
        foreign.metadata.labels = None;
        assert!(!is_same_request(&foreign, &a), "not scheduler-owned");
    }

    fn built() -> MachineRequest {
        build_request(&input("compute", 2), &offered(None), None, "0123456789").expect("valid")
    }

    #[tokio::test(start_paused = true)]
    async fn a_create_without_an_answer_is_answered_once_the_request_exists() {
        let mr = built();
        let step = Duration::from_secs(30);
        let found = mr.clone();
        let how = create_or_find(&mr, "hpc", step, std::future::pending(), || async {
            Ok(Some(found))
        })
        .await
        .expect("answered");
        assert!(how.contains("confirmed by a look-up"), "{how}");
        let none = create_or_find(&mr, "hpc", step, std::future::pending(), || async {
            Ok(None)
        })
        .await
        .expect_err("not there");
        assert!(none.to_string().contains("was not created"), "{none}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_existing_name_is_answered_only_when_it_is_this_request() {
        let mr = built();
        let step = Duration::from_secs(30);
        let conflict = || async {
            Err(kube::Error::Api(
                kube::core::Status {
                    code: 409,
                    reason: "AlreadyExists".into(),
                    ..kube::core::Status::default()
                }
                .boxed(),
            ))
        };
        let same = mr.clone();
        let how = create_or_find(&mr, "hpc", step, conflict(), || async { Ok(Some(same)) })
            .await
            .expect("answered");
        assert!(how.contains("earlier run"), "{how}");
        let mut foreign = mr.clone();
        foreign.metadata.labels = None;
        let err = create_or_find(&mr, "hpc", step, conflict(), || async { Ok(Some(foreign)) })
            .await
            .expect_err("not ours");
        assert!(err.to_string().contains("is not this request"), "{err}");
    }

    #[test]
    fn a_template_id_two_templates_share_is_refused() {
        let mut two = offered(None);
        let mut other = two[0].clone();
        other.metadata.name = Some("compute-2".into());
        other.metadata.annotations =
            Some([(TEMPLATE_ID_ANNOTATION.to_string(), "compute".to_string())].into());
        two.push(other);
        let err = build_request(&input("compute", 1), &two, None, "k").expect_err("ambiguous");
        assert!(err.to_string().contains("ambiguous"), "{err}");
    }

    #[test]
    fn name_prefixes_are_short_and_clean() {
        assert_eq!(name_prefix("a.b-"), "hf-a.b-");
        assert!(name_prefix(&"x".repeat(200)).len() <= 44);
    }
}

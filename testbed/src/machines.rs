//! Helpers for tests that drive MachineRequests: create templates and
//! requests, wait on their status, and read what really exists in moto.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use hostforge::api::conditions::{is_true, READY};
use hostforge::api::{MachineRequest, MachineTemplate};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use serde_json::json;

use super::{wait_for, TestEnv};

/// Creates a MachineTemplate from a JSON spec.
pub async fn create_template(env: &TestEnv, name: &str, spec: serde_json::Value) {
    let mt: MachineTemplate = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineTemplate",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .expect("valid MachineTemplate");
    Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .create(&PostParams::default(), &mt)
        .await
        .unwrap_or_else(|e| panic!("creating template {name}: {e}"));
}

/// Creates a MachineRequest for `count` machines of `template`.
pub async fn create_request(
    env: &TestEnv,
    name: &str,
    template: &str,
    count: i32,
    replace_lost: bool,
) -> MachineRequest {
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineRequest",
        "metadata": {"name": name},
        "spec": {"templateRef": {"name": template}, "count": count, "replaceLost": replace_lost},
    }))
    .expect("valid MachineRequest");
    requests(env)
        .create(&PostParams::default(), &mr)
        .await
        .unwrap_or_else(|e| panic!("creating request {name}: {e}"))
}

/// The namespace's MachineRequest API.
pub fn requests(env: &TestEnv) -> Api<MachineRequest> {
    Api::namespaced(env.client.clone(), &env.namespace)
}

/// Merge-patches a request's spec.
pub async fn patch_spec(env: &TestEnv, name: &str, spec: serde_json::Value) {
    requests(env)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .unwrap_or_else(|e| panic!("patching request {name}: {e}"));
}

/// Polls the request until `pred` holds ([`crate::wait_for`] on requests).
pub async fn wait_request(
    env: &TestEnv,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&MachineRequest) -> bool,
) -> MachineRequest {
    wait_for(&requests(env), name, what, timeout, pred).await
}

/// Polls the template until `pred` holds ([`crate::wait_for`] on templates).
pub async fn wait_template(
    env: &TestEnv,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&MachineTemplate) -> bool,
) -> MachineTemplate {
    let api = Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace);
    wait_for(&api, name, what, timeout, pred).await
}

/// The status of condition `type_` and its reason.
pub fn condition(mr: &MachineRequest, type_: &str) -> Option<(String, String)> {
    mr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

/// A template's Ready condition as it stands, whichever generation it
/// describes: (status, reason, message).
pub fn template_ready(mt: &MachineTemplate) -> Option<(String, String, String)> {
    mt.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Ready=True for the current generation.
pub fn is_ready(mr: &MachineRequest) -> bool {
    mr.status.as_ref().is_some_and(|st| {
        st.observed_generation == mr.metadata.generation && is_true(&st.conditions, READY)
    })
}

/// Ready=True on a template (whatever generation it was observed at).
pub fn template_is_ready(mt: &MachineTemplate) -> bool {
    mt.status
        .as_ref()
        .is_some_and(|st| is_true(&st.conditions, READY))
}

/// Ids of the machines the request still counts (no termination reason).
pub fn status_live(mr: &MachineRequest) -> BTreeSet<String> {
    mr.status
        .as_ref()
        .map(|st| {
            st.machines
                .iter()
                .filter(|m| m.termination_reason.is_none())
                .map(|m| m.id.clone())
                .collect()
        })
        .unwrap_or_default()
}

/// Every instance moto holds of this request uid: tagged with it, or of a
/// coalesced launch (tagged with its launch group, not a request) and
/// listed in the request's status: id → (state, tags).
pub async fn moto_instances(
    env: &TestEnv,
    uid: &str,
) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let mut found = described(
        env,
        Filter::builder()
            .name("tag:hostforge.io/request-uid")
            .values(uid)
            .build(),
    )
    .await;
    let listed: Vec<String> = requests(env)
        .list(&Default::default())
        .await
        .expect("list requests")
        .items
        .into_iter()
        .filter(|r| r.metadata.uid.as_deref() == Some(uid))
        .flat_map(|r| r.status.map(|st| st.machines).unwrap_or_default())
        .map(|m| m.id)
        .collect();
    if !listed.is_empty() {
        let grouped = described(
            env,
            Filter::builder()
                .name("tag-key")
                .values("hostforge.io/launch-group")
                .build(),
        )
        .await;
        found.extend(grouped.into_iter().filter(|(id, _)| listed.contains(id)));
    }
    found
}

/// moto's instances matching `filter`: id → (state, tags).
async fn described(
    env: &TestEnv,
    filter: Filter,
) -> BTreeMap<String, (String, BTreeMap<String, String>)> {
    let out = env
        .ec2()
        .describe_instances()
        .filters(filter)
        .send()
        .await
        .expect("DescribeInstances on moto");
    out.reservations()
        .iter()
        .flat_map(|r| r.instances())
        .map(|i| {
            let tags = i
                .tags()
                .iter()
                .map(|t| {
                    (
                        t.key().unwrap_or_default().to_string(),
                        t.value().unwrap_or_default().to_string(),
                    )
                })
                .collect();
            (
                i.instance_id().unwrap_or_default().to_string(),
                (
                    i.state()
                        .and_then(|s| s.name())
                        .map(|n| n.as_str().to_string())
                        .unwrap_or_default(),
                    tags,
                ),
            )
        })
        .collect()
}

/// Ids of this request's instances moto has pending or running.
pub async fn moto_live(env: &TestEnv, uid: &str) -> BTreeSet<String> {
    moto_instances(env, uid)
        .await
        .into_iter()
        .filter(|(_, (state, _))| state == "pending" || state == "running")
        .map(|(id, _)| id)
        .collect()
}

/// moto's pending/running instances tagged `hostforge.io/cluster=<cluster>`
/// (every page): what a cluster runs, whichever request they belong to.
pub async fn moto_live_in_cluster(ec2: &aws_sdk_ec2::Client, cluster: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = ec2
            .describe_instances()
            .filters(
                Filter::builder()
                    .name("tag:hostforge.io/cluster")
                    .values(cluster)
                    .build(),
            )
            .filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .build(),
            )
            .max_results(1000)
            .set_next_token(token)
            .send()
            .await
            .expect("DescribeInstances on moto");
        ids.extend(
            out.reservations()
                .iter()
                .flat_map(|r| r.instances())
                .filter_map(|i| i.instance_id().map(str::to_string)),
        );
        token = out
            .next_token()
            .map(str::to_string)
            .filter(|t| !t.is_empty());
        if token.is_none() {
            return ids;
        }
    }
}

/// The request's uid.
pub fn uid(mr: &MachineRequest) -> String {
    mr.metadata.uid.clone().expect("request has a uid")
}

/// Asserts that moto runs exactly the machines status counts.
pub async fn assert_moto_matches_status(env: &TestEnv, mr: &MachineRequest) {
    let in_moto = moto_live(env, &uid(mr)).await;
    let in_status = status_live(mr);
    assert_eq!(
        in_moto,
        in_status,
        "moto's live instances differ from status; status: {}",
        serde_json::to_string_pretty(&mr.status).unwrap_or_default()
    );
}

/// Polls (every 250 ms, up to `timeout`) until `pred` holds of request
/// `name` and of moto's live instances of it; panics naming `what` and
/// both sides when it never does. For tests whose outcome is a relation
/// between status and the simulator, not a condition alone.
pub async fn wait_with_moto(
    env: &TestEnv,
    name: &str,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&MachineRequest, &BTreeSet<String>) -> bool,
) -> MachineRequest {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let mr = requests(env).get(name).await.expect("get request");
        let live = moto_live(env, &uid(&mr)).await;
        if pred(&mr, &live) {
            return mr;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name}: {what} never held; moto {live:?}, status: {}",
            serde_json::to_string_pretty(&mr.status).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

//! Drift on real components (kube-apiserver, moto through the forwarder):
//!
//! - every machine carries the template digest its batch was recorded with
//!   and the request the template's version (`status.templateVersion`);
//! - changing `maxMachines`, or moving the image source to an id naming the
//!   same AMI, drifts nothing (`Drifted=False`, `UpToDate`);
//! - changing a launch parameter (a tag) makes every request report its
//!   machines drifted (`counts.drifted`, `Drifted=True` naming the cause, an
//!   Event);
//! - `updatePolicy: Replace` replaces them new first, `maxSurge` (1) at a
//!   time: the forwarder holds new instances `pending` (as EC2 does) and the
//!   old machine waits; once the replacements run the old ones are
//!   terminated (`Replaced`, replaceReason `Drifted`), moto's live instances
//!   are exactly status's, every launch after the change carried the new tag,
//!   and the request is back to `drifted: 0`, `Drifted=False`;
//! - `Never` (the default) and a HostFactory-owned request keep their
//!   machines (the plugin offers the latter through getReturnRequests:
//!   tests/hostfactory/drift.rs).

use std::collections::BTreeSet;
use std::time::Duration;

use hostforge::api::{MachineRequest, MachineTemplate, ReplaceReason, TerminationReason};
use hostforge_testbed::forwarder::{Fidelity, Forwarder};
use hostforge_testbed::machines::{
    condition, create_template, is_ready, moto_live, requests, uid, wait_request, wait_template,
    wait_with_moto,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::wait::eventually;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

async fn create(env: &TestEnv, name: &str, count: i32, extra: Value, labels: Value) {
    let mut spec = json!({"templateRef": {"name": "t"}, "count": count});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }))
    .expect("a valid request");
    requests(env)
        .create(&PostParams::default(), &mr)
        .await
        .unwrap_or_else(|e| panic!("creating {name}: {e}"));
}

fn templates(env: &TestEnv) -> Api<MachineTemplate> {
    Api::namespaced(env.client.clone(), &env.namespace)
}

/// Merges `spec` into template `t` and waits until its status describes the
/// new generation; returns that generation.
async fn patch_template(env: &TestEnv, spec: Value) -> i64 {
    let mt = templates(env)
        .patch(
            "t",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": spec })),
        )
        .await
        .expect("patch the template");
    let generation = mt.metadata.generation.expect("a generation");
    wait_template(env, "t", "its status caught up", WAIT, |mt| {
        mt.status
            .as_ref()
            .is_some_and(|s| s.observed_generation == Some(generation))
    })
    .await;
    generation
}

/// A namespace, an operator reaching moto through a forwarder (with
/// `fidelity` on when given; status checks off, sweeping every `sweep`, and
/// `extra` config) and template `t` tagged `build: 1`.
async fn bed(
    name: &str,
    fidelity: Option<Fidelity>,
    sweep: &str,
    extra: &str,
) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    if let Some(fidelity) = fidelity {
        fwd.enable_fidelity(fidelity);
    }
    let cfg = config_via(
        &env,
        &fwd,
        sweep,
        &format!("statusCheckInterval: off\n{extra}"),
    );
    let op = OperatorProcess::start(&env, &cfg).await;
    create_template(
        &env,
        "t",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "tags": {"build": "1"},
        }),
    )
    .await;
    (env, fwd, op)
}

/// Whether the request compares its machines with template generation `g`.
fn sees(mr: &MachineRequest, g: i64) -> bool {
    mr.status
        .as_ref()
        .and_then(|s| s.template_version.as_ref())
        .is_some_and(|v| v.generation == Some(g))
}

fn live(mr: &MachineRequest) -> BTreeSet<String> {
    mr.status
        .iter()
        .flat_map(|s| &s.machines)
        .filter(|m| m.is_live())
        .map(|m| m.id.clone())
        .collect()
}

fn drifted(mr: &MachineRequest) -> i32 {
    mr.status.as_ref().map(|s| s.counts.drifted).unwrap_or(-1)
}

fn drift_condition(mr: &MachineRequest) -> Option<(String, String, String)> {
    let c = mr
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Drifted")?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn up_to_date(mr: &MachineRequest) -> bool {
    drifted(mr) == 0 && drift_condition(mr).is_some_and(|(s, r, _)| s == "False" && r == "UpToDate")
}

async fn event_reasons(env: &TestEnv, name: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// The values RunInstances call `params` gave tag `key`.
fn tag_values(params: &std::collections::BTreeMap<String, String>, key: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, v)| k.starts_with("TagSpecification.") && k.ends_with(".Key") && *v == key)
        .filter_map(|(k, _)| params.get(&format!("{}.Value", k.trim_end_matches(".Key"))))
        .cloned()
        .collect()
}

#[tokio::test]
async fn a_template_change_drifts_machines_and_replace_swaps_them_new_first() {
    let (env, fwd, _op) = bed("drift", None, "10m", "").await;
    create(
        &env,
        "replace",
        2,
        json!({"updatePolicy": {"type": "Replace", "maxSurge": 1}}),
        json!({}),
    )
    .await;
    create(&env, "never", 1, json!({}), json!({})).await;
    create(
        &env,
        "hf",
        1,
        json!({"updatePolicy": {"type": "Replace"}}),
        json!({"hostforge.io/owner": "hostfactory"}),
    )
    .await;
    let mut before = Vec::new();
    for name in ["replace", "never", "hf"] {
        let mr = wait_request(&env, name, "Ready and up to date", WAIT, |mr| {
            is_ready(mr) && up_to_date(mr)
        })
        .await;
        let st = mr.status.as_ref().expect("status");
        assert!(
            st.machines.iter().all(|m| m.template_digest.is_some()),
            "{name}: every machine carries its batch's digest"
        );
        let version = st.template_version.as_ref().expect("templateVersion");
        assert!(
            st.machines
                .iter()
                .all(|m| m.template_digest.as_deref() == Some(version.digest.as_str())),
            "{name}: launched from the current version"
        );
        before.push(live(&mr));
    }
    let all_before: BTreeSet<String> = before.iter().flatten().cloned().collect();

    // maxMachines is not launch-relevant; nor is the image source when the
    // new one names the same AMI.
    let g = patch_template(&env, json!({"maxMachines": 50})).await;
    let ami = templates(&env)
        .get("t")
        .await
        .expect("get")
        .status
        .and_then(|s| s.resolved_image)
        .map(|i| i.id)
        .expect("a resolved image");
    let g2 = patch_template(&env, json!({"image": {"ssmParameter": null, "id": ami}})).await;
    assert!(g2 > g);
    for name in ["replace", "never", "hf"] {
        let mr = wait_request(&env, name, "the new generation seen", WAIT, |mr| {
            sees(mr, g2)
        })
        .await;
        assert!(up_to_date(&mr), "{name}: {:?}", drift_condition(&mr));
        assert!(is_ready(&mr));
    }

    // A launch parameter changes: every machine drifts. New instances stay
    // pending (as on EC2) until the test lets them run.
    fwd.hold_pending(all_before.iter().cloned());
    let launches_before = fwd.requests("RunInstances").len();
    let g3 = patch_template(&env, json!({"tags": {"build": "2"}})).await;
    let replace_before = &before[0];
    let mr = wait_request(&env, "replace", "one replacement launched", WAIT, |mr| {
        sees(mr, g3) && live(mr).len() == 3
    })
    .await;
    assert_eq!(drifted(&mr), 2);
    let (status, reason, message) = drift_condition(&mr).expect("Drifted");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Drifted"));
    assert_eq!(
        message,
        "2 machines were launched from an older version of the template: spec changed (2)"
    );
    let marked: Vec<&str> = mr
        .status
        .iter()
        .flat_map(|s| &s.machines)
        .filter(|m| m.is_live() && m.replace_reason == Some(ReplaceReason::Drifted))
        .map(|m| m.id.as_str())
        .collect();
    assert_eq!(marked.len(), 1, "maxSurge 1: one at a time ({marked:?})");
    let first_old = marked[0].to_string();
    // While the replacement is pending (several polls of it), the old
    // machine is neither marked to go nor terminated in moto.
    let polls = fwd.calls("DescribeInstances");
    eventually(
        "the pending replacement polled a few times",
        WAIT,
        || async { fwd.calls("DescribeInstances") >= polls + 4 },
    )
    .await;
    let mr = requests(&env).get("replace").await.expect("get");
    assert_eq!(
        live(&mr).len(),
        3,
        "no second replacement while one is pending"
    );
    assert!(live(&mr).contains(&first_old), "old kept while new pending");
    assert!(moto_live(&env, &uid(&mr)).await.contains(&first_old));

    // The replacements run: the old machines go as Replaced (Drifted), one
    // after the other, and moto's live instances are exactly status's.
    fwd.release_pending();
    let mr = wait_with_moto(&env, "replace", "both replaced", WAIT, |mr, moto| {
        is_ready(mr)
            && live(mr).len() == 2
            && live(mr).is_disjoint(replace_before)
            && *moto == live(mr)
    })
    .await;
    let mr = wait_request(&env, "replace", "up to date again", WAIT, |m| {
        up_to_date(m) && live(m) == live(&mr)
    })
    .await;
    for id in replace_before {
        let m = mr
            .status
            .iter()
            .flat_map(|s| &s.machines)
            .find(|m| &m.id == id)
            .expect("old machine listed");
        assert_eq!(
            (m.termination_reason, m.replace_reason),
            (
                Some(TerminationReason::Replaced),
                Some(ReplaceReason::Drifted)
            ),
            "{id}"
        );
    }
    let counts = &mr.status.as_ref().expect("status").counts;
    assert_eq!((counts.running, counts.failed, counts.drifted), (2, 0, 0));
    // Every launch since the change carried the new tag.
    let sent = fwd.requests("RunInstances");
    let after: Vec<_> = sent[launches_before..].iter().collect();
    assert!(after.len() >= 2, "two replacement launches: {after:?}");
    for params in &after {
        let values = tag_values(params, "build");
        assert!(
            !values.is_empty() && values.iter().all(|v| v == "2"),
            "the new tag on every tag specification: {params:?}"
        );
    }
    let reasons = event_reasons(&env, "replace").await;
    for r in ["Drifted", "Replacing", "Replaced"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }

    // Never, and the HostFactory-owned request (whatever its spec says):
    // reported, never replaced.
    for (name, was) in [("never", &before[1]), ("hf", &before[2])] {
        let mr = wait_request(&env, name, "drift reported", WAIT, |mr| {
            sees(mr, g3) && drifted(mr) == 1
        })
        .await;
        let (status, reason, _) = drift_condition(&mr).expect("Drifted");
        assert_eq!((status.as_str(), reason.as_str()), ("True", "Drifted"));
        assert_eq!(&live(&mr), was, "{name}: nothing replaced");
        assert!(
            mr.status
                .iter()
                .flat_map(|s| &s.machines)
                .all(|m| m.replace_reason.is_none()),
            "{name}: nothing marked"
        );
        assert_eq!(
            &moto_live(&env, &uid(&mr)).await,
            was,
            "{name}: moto unchanged"
        );
        assert_eq!(
            condition(&mr, "Ready").map(|c| c.0),
            Some("True".to_string())
        );
        assert!(event_reasons(&env, name)
            .await
            .iter()
            .any(|r| r == "Drifted"));
    }

    // A new image: the Replace request's machines drift by image and are
    // replaced by machines launched with it; Never reports both causes.
    let other = another_ami(&env, &ami).await;
    let launches_before = fwd.requests("RunInstances").len();
    let replaced_by_tag = live(&mr);
    let g4 = patch_template(&env, json!({"image": {"id": other}})).await;
    let mr = wait_with_moto(
        &env,
        "replace",
        "replaced for the image",
        WAIT,
        |mr, moto| {
            sees(mr, g4)
                && is_ready(mr)
                && up_to_date(mr)
                && live(mr).len() == 2
                && live(mr).is_disjoint(&replaced_by_tag)
                && *moto == live(mr)
        },
    )
    .await;
    let images: BTreeSet<Option<String>> = mr
        .status
        .iter()
        .flat_map(|s| &s.machines)
        .filter(|m| m.is_live())
        .map(|m| m.image_id.clone())
        .collect();
    assert_eq!(images, BTreeSet::from([Some(other.clone())]));
    let sent = fwd.requests("RunInstances");
    assert!(sent.len() >= launches_before + 2);
    for params in &sent[launches_before..] {
        assert_eq!(params.get("ImageId"), Some(&other), "{params:?}");
    }
    let mr = wait_request(&env, "never", "both causes", WAIT, |mr| sees(mr, g4)).await;
    assert_eq!(
        drift_condition(&mr).map(|c| c.2),
        Some(
            "1 machines were launched from an older version of the template: spec changed (1), image changed (1)"
                .to_string()
        )
    );
}

/// Replacement under EC2's lost answers, partial launches and read lag at
/// high rates (`Fidelity::lossy`): the replacements' launches are settled by
/// their tokens, a short one is topped up, and in the end every request runs
/// exactly its count of new machines (none in two requests), moto runs
/// exactly those, the old ones went as Replaced, and no token launched twice.
#[tokio::test]
async fn replacement_keeps_exact_counts_under_lost_answers_and_partial_launches() {
    // The grace outlasts the profile's 5 s tag-listing lag.
    let (env, fwd, _op) = bed(
        "drift-lossy",
        Some(Fidelity::lossy(21)),
        "2s",
        "fullSweepInterval: 2s\ngcGracePeriod: 10s\n",
    )
    .await;
    let requests: [(&str, usize); 3] = [("a", 3), ("b", 2), ("c", 4)];
    for (name, count) in requests {
        let policy = json!({"updatePolicy": {"type": "Replace", "maxSurge": 2}});
        create(&env, name, count as i32, policy, json!({})).await;
    }
    let mut before = BTreeSet::new();
    for (name, _) in requests {
        let mr = wait_request(&env, name, "Ready and up to date", WAIT, |mr| {
            is_ready(mr) && up_to_date(mr)
        })
        .await;
        before.extend(live(&mr));
    }

    let faults_before = fwd.fidelity_counters().launch_faults();
    let g = patch_template(&env, json!({"tags": {"build": "2"}})).await;
    let mut after = BTreeSet::new();
    for (name, count) in requests {
        let mr = wait_with_moto(&env, name, "replaced", WAIT, |mr, moto| {
            sees(mr, g)
                && is_ready(mr)
                && up_to_date(mr)
                && live(mr).len() == count
                && live(mr).is_disjoint(&before)
                && *moto == live(mr)
        })
        .await;
        for id in live(&mr) {
            assert!(after.insert(id.clone()), "{id} is listed by two requests");
        }
        let old: Vec<_> = mr
            .status
            .iter()
            .flat_map(|s| &s.machines)
            .filter(|m| before.contains(&m.id))
            .map(|m| (m.id.clone(), m.termination_reason))
            .collect();
        assert!(
            old.iter()
                .all(|(_, r)| *r == Some(TerminationReason::Replaced)),
            "{name}: the old machines went as Replaced: {old:?}"
        );
    }
    let counters = fwd.fidelity_counters();
    assert!(
        counters.launches_by_token.values().all(|n| *n <= 1),
        "one launch per token: {counters:?}"
    );
    assert!(
        counters.launch_faults() > faults_before,
        "the profile lost or cut some replacement launches: {counters:?}"
    );
}

/// An x86_64 AMI of the simulator other than `not`.
async fn another_ami(env: &TestEnv, not: &str) -> String {
    let out = env
        .ec2()
        .describe_images()
        .owners("amazon")
        .send()
        .await
        .expect("DescribeImages");
    out.images()
        .iter()
        .filter(|i| {
            i.architecture().map(|a| a.as_str()) == Some("x86_64") && i.image_id() != Some(not)
        })
        .filter_map(|i| i.image_id().map(str::to_string))
        .min()
        .expect("another x86_64 AMI in the simulator")
}

#[tokio::test]
async fn max_surge_needs_replace_at_admission() {
    let env = TestEnv::new("drift-cel").await;
    env.install_crds().await;
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
        "metadata": {"name": "bad"},
        "spec": {"templateRef": {"name": "t"}, "count": 1, "updatePolicy": {"maxSurge": 2}},
    }))
    .expect("a request");
    let err = requests(&env)
        .create(&PostParams::default(), &mr)
        .await
        .expect_err("refused");
    let text = err.to_string();
    assert!(
        text.contains("spec.updatePolicy.maxSurge")
            && text.contains("applies only to type Replace"),
        "{text}"
    );
}

//! The GitOps contract of the status, checked on objects the real operator
//! writes (apiserver + operator + moto behind the test forwarder):
//!
//! * the Argo CD health checks shipped in `deploy/argocd/*.lua`, run by a Lua
//!   5.4 interpreter over each object as Argo CD hands it over (`obj`, the
//!   object's JSON as a Lua table): Progressing while not observed or
//!   filling, Degraded with the condition's reason and message, Healthy when
//!   Ready;
//! * what Flux's kstatus reads: every status the bed produces carries a
//!   `Ready` condition, and `observedGeneration` catches up with
//!   `metadata.generation` once the operator has reconciled.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use hostforge::api::{MachineRequest, MachineTemplate};
use hostforge_testbed::forwarder::{Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::{
    condition, create_template, is_ready, requests, template_ready, wait_request, wait_template,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use kube::api::{Patch, PatchParams, PostParams};
use kube::Api;
use mlua::{Lua, LuaSerdeExt, SerializeOptions};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// An image id moto does not know.
const MISSING_AMI: &str = "ami-0000000000000000f";

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_file(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

/// Which object kind a health check is for.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Request,
    Template,
}

impl Kind {
    fn script(self) -> &'static str {
        match self {
            Kind::Request => "deploy/argocd/machinerequest-health.lua",
            Kind::Template => "deploy/argocd/machinetemplate-health.lua",
        }
    }
}

/// Runs the shipped health check for `kind` over `object` as Argo CD does:
/// a fresh interpreter, the object as the global table `obj` (JSON null and
/// absent fields are both nil), and the returned table's status and message.
fn health(kind: Kind, object: &Value) -> (String, String) {
    let lua = Lua::new();
    let options = SerializeOptions::new()
        .serialize_none_to_null(false)
        .serialize_unit_to_null(false);
    let obj = lua
        .to_value_with(object, options)
        .expect("object converts to a Lua table");
    lua.globals().set("obj", obj).expect("set obj");
    let hs: mlua::Table = lua
        .load(read(kind.script()))
        .set_name(kind.script())
        .eval()
        .unwrap_or_else(|e| panic!("{} failed on {object}: {e}", kind.script()));
    let status: String = hs.get("status").expect("hs.status is a string");
    let message: String = hs.get("message").expect("hs.message is a string");
    (status, message)
}

/// A condition of a status as JSON.
fn cond<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// What the health check must say of `object`, worked out from its status
/// independently of the Lua, plus the Flux rules every status must keep.
fn expected(kind: Kind, object: &Value) -> String {
    let st = &object["status"];
    if st.is_null() {
        return "Progressing".into();
    }
    // Every status says the generation it acts on, the request's first
    // launch record included (it carries Ready=False, Provisioning).
    let observed = st["observedGeneration"]
        .as_i64()
        .unwrap_or_else(|| panic!("a status without observedGeneration: {object}"));
    // kstatus: a reconciled object always says Ready, and observedGeneration
    // never runs ahead of the spec.
    let ready = cond(object, "Ready")
        .unwrap_or_else(|| panic!("a reconciled status without a Ready condition: {object}"));
    let generation = object["metadata"]["generation"]
        .as_i64()
        .expect("generation");
    assert!(observed <= generation, "{object}");
    if observed != generation || st["phase"] == "Deleting" {
        return "Progressing".into();
    }
    let degraded = matches!(kind, Kind::Request)
        && cond(object, "Degraded").is_some_and(|c| c["status"] == "True");
    match ready["status"].as_str() {
        _ if degraded => "Degraded".into(),
        Some("True") => "Healthy".into(),
        Some("False") if matches!(kind, Kind::Template) || st["phase"] == "Degraded" => {
            "Degraded".into()
        }
        _ => "Progressing".into(),
    }
}

/// Every object seen while waiting, to check the rules on all of them.
#[derive(Default)]
struct Seen(Mutex<Vec<(Kind, Value)>>);

impl Seen {
    fn add<K: serde::Serialize>(&self, kind: Kind, object: &K) {
        let v = serde_json::to_value(object).expect("object to JSON");
        self.0.lock().expect("lock").push((kind, v));
    }
}

async fn bed(name: &str) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "2s", "capacityCooldown: 3s\n");
    let op = OperatorProcess::start(&env, &cfg).await;
    (env, fwd, op)
}

fn templates(env: &TestEnv) -> Api<MachineTemplate> {
    Api::namespaced(env.client.clone(), &env.namespace)
}

/// The health of a live object, checked against [`expected`].
fn check<K: serde::Serialize>(kind: Kind, object: &K) -> (String, String) {
    let v = serde_json::to_value(object).expect("object to JSON");
    let got = health(kind, &v);
    assert_eq!(got.0, expected(kind, &v), "{kind:?} {v}");
    got
}

#[tokio::test]
async fn health_checks_and_flux_rules_hold_for_every_phase_the_bed_produces() {
    let (env, fwd, _op) = bed("gitops").await;
    let seen = Seen::default();

    // Templates: not evaluated yet → Progressing; Ready → Healthy; an image
    // EC2 does not know → Degraded naming it; fixed → Progressing until the
    // operator has looked at the new generation, then Healthy.
    let good: MachineTemplate = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineTemplate",
        "metadata": {"name": "compute"},
        "spec": {"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]},
    }))
    .expect("template");
    let created = templates(&env)
        .create(&PostParams::default(), &good)
        .await
        .expect("create template");
    let (status, message) = check(Kind::Template, &created);
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Waiting for the operator to evaluate the template");
    let mt = wait_template(&env, "compute", "Ready", WAIT, |mt| {
        seen.add(Kind::Template, mt);
        mt.status.as_ref().and_then(|s| s.observed_generation) == mt.metadata.generation
            && template_ready(mt).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(check(Kind::Template, &mt).0, "Healthy");

    create_template(
        &env,
        "broken",
        json!({"image": {"id": MISSING_AMI}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    let mt = wait_template(&env, "broken", "ImageNotFound", WAIT, |mt| {
        seen.add(Kind::Template, mt);
        template_ready(mt).is_some_and(|(s, r, _)| s == "False" && r == "ImageNotFound")
    })
    .await;
    let (_, _, why) = template_ready(&mt).expect("Ready condition");
    let (status, message) = check(Kind::Template, &mt);
    assert_eq!(status, "Degraded");
    assert_eq!(message, format!("ImageNotFound: {why}"));
    assert!(message.contains(MISSING_AMI), "{message}");

    let patched = templates(&env)
        .patch(
            "broken",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"image": {"id": null, "ssmParameter": AL2023_PARAM}}})),
        )
        .await
        .expect("fix the image");
    // The answer to the patch has the new generation and the old status.
    let (status, message) = check(Kind::Template, &patched);
    assert_eq!(status, "Progressing", "{message}");
    assert_eq!(
        message,
        format!(
            "Waiting for the operator to evaluate generation {}",
            patched.metadata.generation.expect("generation")
        )
    );
    let mt = wait_template(&env, "broken", "Ready again", WAIT, |mt| {
        seen.add(Kind::Template, mt);
        mt.status.as_ref().and_then(|s| s.observed_generation) == mt.metadata.generation
            && template_ready(mt).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert_eq!(check(Kind::Template, &mt).0, "Healthy");

    // A request: no capacity anywhere → Degraded with EC2's words; capacity
    // back → filled → Healthy; scaled up → Progressing until filled again.
    let starve = fwd.add_rule(Rule::new(
        "RunInstances",
        InjectedError::insufficient_capacity(),
    ));
    let mr: MachineRequest = serde_json::from_value(json!({
        "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
        "metadata": {"name": "burst"},
        "spec": {"templateRef": {"name": "compute"}, "count": 2, "replaceLost": true},
    }))
    .expect("request");
    let created = requests(&env)
        .create(&PostParams::default(), &mr)
        .await
        .expect("create request");
    let (status, message) = check(Kind::Request, &created);
    assert_eq!(status, "Progressing");
    assert_eq!(message, "Waiting for the operator to observe the request");
    let mr = wait_request(&env, "burst", "Degraded", WAIT, |mr| {
        seen.add(Kind::Request, mr);
        condition(mr, "Degraded").is_some_and(|(s, r)| s == "True" && r == "CapacityUnavailable")
    })
    .await;
    let (status, message) = check(Kind::Request, &mr);
    assert_eq!(status, "Degraded");
    assert!(
        message.starts_with("CapacityUnavailable: ")
            && message.contains("InsufficientInstanceCapacity"),
        "{message}"
    );
    assert!(fwd.remove_rule(starve));
    let mr = wait_request(&env, "burst", "Ready", WAIT, |mr| {
        seen.add(Kind::Request, mr);
        is_ready(mr)
    })
    .await;
    let (status, message) = check(Kind::Request, &mr);
    assert_eq!(status, "Healthy");
    assert_eq!(message, "AllRunning: 2/2 machines running");

    let patched = requests(&env)
        .patch(
            "burst",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"count": 4}})),
        )
        .await
        .expect("scale up");
    let (status, message) = check(Kind::Request, &patched);
    assert_eq!(status, "Progressing");
    assert_eq!(
        message,
        format!(
            "Waiting for the operator to observe generation {}",
            patched.metadata.generation.expect("generation")
        )
    );
    let mr = wait_request(&env, "burst", "Ready with 4", WAIT, |mr| {
        seen.add(Kind::Request, mr);
        is_ready(mr) && mr.status.as_ref().is_some_and(|s| s.counts.running == 4)
    })
    .await;
    assert_eq!(check(Kind::Request, &mr).0, "Healthy");

    // Every object seen on the way: the Lua agrees with the rules, and each
    // reconciled status keeps Flux's (checked inside `expected`).
    let seen = seen.0.into_inner().expect("lock");
    let mut statuses = std::collections::BTreeSet::new();
    for (kind, object) in &seen {
        let (status, _) = health(*kind, object);
        assert_eq!(status, expected(*kind, object), "{kind:?} {object}");
        statuses.insert((format!("{kind:?}"), status));
    }
    for want in [
        ("Request", "Degraded"),
        ("Request", "Healthy"),
        ("Template", "Degraded"),
        ("Template", "Healthy"),
    ] {
        assert!(
            statuses.contains(&(want.0.to_string(), want.1.to_string())),
            "never saw {want:?}: {statuses:?}"
        );
    }
}

/// The Argo CD values snippet ships the same scripts as the `.lua` files, so
/// what is tested above is what users paste.
#[test]
fn the_values_snippet_carries_the_tested_scripts() {
    let values: serde_yaml::Value =
        serde_yaml::from_str(&read("deploy/argocd/values.yaml")).expect("values.yaml parses");
    let cm = &values["configs"]["cm"];
    for (key, kind) in [
        (
            "resource.customizations.health.hostforge.io_MachineRequest",
            Kind::Request,
        ),
        (
            "resource.customizations.health.hostforge.io_MachineTemplate",
            Kind::Template,
        ),
    ] {
        let script = cm[key]
            .as_str()
            .unwrap_or_else(|| panic!("values.yaml has no configs.cm.{key}"));
        assert_eq!(script, read(kind.script()), "{key}");
    }
    let docs = read("docs/gitops.md");
    assert!(docs.contains("deploy/argocd/values.yaml"));
}

/// The checks on hand-made objects for the states the bed does not reach on
/// demand: deletion, a Ready condition still Unknown, no conditions.
#[test]
fn states_the_bed_does_not_force_are_progressing() {
    let deleting = json!({
        "metadata": {"generation": 3},
        "status": {"observedGeneration": 3, "phase": "Deleting",
                   "conditions": [{"type": "Ready", "status": "False", "reason": "Deleting", "message": ""}]},
    });
    assert_eq!(
        health(Kind::Request, &deleting),
        (
            "Progressing".into(),
            "Deleting: terminating its machines".into()
        )
    );
    let filling = json!({
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1, "phase": "Provisioning",
                   "conditions": [
                       {"type": "Ready", "status": "False", "reason": "Provisioning", "message": "1/2 machines running"},
                       {"type": "Progressing", "status": "True", "reason": "Launching", "message": "2/2 machines launched, 1 running"},
                       {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""}]},
    });
    assert_eq!(
        health(Kind::Request, &filling),
        (
            "Progressing".into(),
            "Launching: 2/2 machines launched, 1 running".into()
        )
    );
    let unknown = json!({
        "metadata": {"generation": 1},
        "status": {"observedGeneration": 1,
                   "conditions": [{"type": "Ready", "status": "Unknown", "reason": "Resolving", "message": ""}]},
    });
    assert_eq!(
        health(Kind::Template, &unknown),
        (
            "Progressing".into(),
            "Waiting for the Ready condition".into()
        )
    );
    let bare = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1}});
    assert_eq!(health(Kind::Template, &bare).0, "Progressing");
}

//! Replacement of machines at risk, on real components (kube-apiserver,
//! moto through the forwarder):
//!
//! - a rebalance recommendation put on moto's EventBridge (routed to SQS,
//!   read by the operator's interruption queue) makes a request with
//!   `rebalancePolicy: Replace` launch a replacement at once and terminate
//!   the old machine only once the replacement runs (the forwarder holds new
//!   instances `pending`, as EC2 does, until the test lets them run); with
//!   `Ignore`, and in a HostFactory-owned request, nothing is replaced;
//! - an instance the forwarder reports impaired (DescribeInstanceStatus as
//!   EC2 documents it) is reported on the machine (`statusCheck`), in the
//!   request's `MachinesHealthy` condition and in an Event; with
//!   `replaceUnhealthy` it is replaced, without it not, and the condition
//!   turns True again once the machine passes;
//! - the status-check loop makes at most one listing per provider per
//!   interval (MaxResults 1000, IncludeAllInstances false, no ids), and
//!   none when it is off.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostforge::api::{
    MachineRequest, MachineState, ReplaceReason, StatusCheckKind, TerminationReason,
};
use hostforge_testbed::cloud_events::{Ec2Event, EventQueue};
use hostforge_testbed::forwarder::{Forwarder, Impaired};
use hostforge_testbed::machines::{
    create_template, is_ready, moto_live, requests, uid, wait_request, wait_with_moto,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::wait::eventually;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(180);

/// The HostFactory plugin's owner label and the api layer's copy agree (the
/// controller reads the api's; the plugin may not be imported by it).
#[test]
fn the_owner_label_is_the_plugins() {
    assert_eq!(
        hostforge::api::OWNER_LABEL,
        hostforge::hostfactory::OWNER_LABEL
    );
    assert_eq!(
        hostforge::api::HOSTFACTORY_OWNER,
        hostforge::hostfactory::OWNER_VALUE
    );
}

/// A queue and an EventBridge rule sending EC2's rebalance recommendations
/// to it, straight on moto (docs/interruptions.md).
async fn wire_queue(env: &TestEnv, name: &str) -> EventQueue {
    EventQueue::wire(
        &env.bed.moto_url,
        name,
        &["aws.ec2"],
        &[Ec2Event::Rebalance.detail_type()],
    )
    .await
    .expect("wiring the queue")
}

/// Puts EC2's rebalance recommendation for instance `id` on the default bus.
async fn recommend_rebalance(queue: &EventQueue, id: &str) {
    queue
        .put_event(Ec2Event::Rebalance, id)
        .await
        .expect("PutEvents");
}

/// Creates request `name` for `count` machines of template `template` with
/// `extra` merged into its spec and `labels` on it.
async fn create(
    env: &TestEnv,
    name: &str,
    template: &str,
    count: i32,
    extra: Value,
    labels: Value,
) {
    let mut spec = json!({"templateRef": {"name": template}, "count": count});
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

async fn template(env: &TestEnv, capacity: &str) {
    create_template(
        env,
        "t",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "capacityType": capacity,
        }),
    )
    .await;
}

fn live(mr: &MachineRequest) -> BTreeSet<String> {
    mr.status
        .iter()
        .flat_map(|s| &s.machines)
        .filter(|m| m.is_live())
        .map(|m| m.id.clone())
        .collect()
}

fn machine<'a>(mr: &'a MachineRequest, id: &str) -> Option<&'a hostforge::api::Machine> {
    mr.status.as_ref()?.machines.iter().find(|m| m.id == id)
}

fn condition<'a>(
    mr: &'a MachineRequest,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    mr.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// The reasons of the Events on request `name`.
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

const HF_LABELS: &str = r#"{"hostforge.io/owner": "hostfactory"}"#;

fn hf_labels() -> Value {
    serde_json::from_str(HF_LABELS).expect("labels")
}

/// Creates request `hf`: one machine of template `t`, owned by the
/// HostFactory plugin, asking for every replacement (which the operator
/// must leave to the plugin).
async fn create_hf(env: &TestEnv) {
    create(
        env,
        "hf",
        "t",
        1,
        json!({"rebalancePolicy": "Replace", "replaceUnhealthy": true}),
        hf_labels(),
    )
    .await;
}

#[tokio::test]
async fn a_rebalance_recommendation_replaces_new_first_only_under_replace() {
    let env = TestEnv::new("replace-rebalance").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let queue = format!("rb-{}", env.namespace);
    let cloud = wire_queue(&env, &queue).await;
    let cfg = config_via(&env, &fwd, "10m", "statusCheckInterval: off\n");
    let endpoint = format!("    endpointUrl: {}\n", fwd.endpoint());
    let cfg = cfg.replace(
        &endpoint,
        &format!("{endpoint}    interruptionQueue: {queue}\n"),
    );
    let _op = OperatorProcess::start(&env, &cfg).await;
    template(&env, "spot").await;
    create(
        &env,
        "replace",
        "t",
        2,
        json!({"rebalancePolicy": "Replace"}),
        json!({}),
    )
    .await;
    create(&env, "ignore", "t", 2, json!({}), json!({})).await;
    create_hf(&env).await;
    let mut before = Vec::new();
    for name in ["replace", "ignore", "hf"] {
        let mr = wait_request(&env, name, "Ready", WAIT, is_ready).await;
        before.push(live(&mr));
    }
    let [replace_before, ignore_before, hf_before] = [&before[0], &before[1], &before[2]];
    let old = replace_before.iter().next().expect("a machine").clone();

    // New instances stay pending (as on EC2) until the test lets them run.
    fwd.hold_pending(before.iter().flatten().cloned());
    recommend_rebalance(&cloud, &old).await;
    for id in [ignore_before.iter().next(), hf_before.iter().next()]
        .into_iter()
        .flatten()
    {
        recommend_rebalance(&cloud, id).await;
    }

    // The replacement is launched at once, the old machine stays.
    let mr = wait_request(&env, "replace", "a replacement launched", WAIT, |mr| {
        let marked = machine(mr, &old)
            .is_some_and(|m| m.replace_reason == Some(ReplaceReason::Rebalance) && m.is_live());
        marked && live(mr).len() == 3
    })
    .await;
    let new: Vec<String> = live(&mr).difference(replace_before).cloned().collect();
    assert_eq!(new.len(), 1, "one replacement: {new:?}");
    let new = new[0].clone();
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
    let old_now = machine(&mr, &old).expect("old listed");
    assert_eq!(
        old_now.termination_reason, None,
        "old kept while new pending"
    );
    assert_ne!(
        machine(&mr, &new).map(|m| m.state),
        Some(MachineState::Running),
        "the forwarder holds the new one pending"
    );
    assert!(moto_live(&env, &uid(&mr)).await.contains(&old));
    assert_eq!(
        hostforge_testbed::machines::condition(&mr, "Progressing").map(|c| c.1),
        Some("Replacing".to_string())
    );

    // The replacement runs: the old machine goes as Replaced, and moto's
    // live instances are exactly status's, `count` of them.
    fwd.release_pending();
    let mr = wait_with_moto(&env, "replace", "old replaced", WAIT, |mr, moto| {
        let gone = machine(mr, &old)
            .is_some_and(|m| m.termination_reason == Some(TerminationReason::Replaced));
        gone && is_ready(mr) && live(mr).len() == 2 && *moto == live(mr)
    })
    .await;
    assert!(live(&mr).contains(&new));
    let counts = &mr.status.as_ref().expect("status").counts;
    assert_eq!(
        (counts.running, counts.failed),
        (2, 0),
        "Replaced is no failure"
    );
    let reasons = event_reasons(&env, "replace").await;
    for r in ["RebalanceRecommendation", "Replacing", "Replaced"] {
        assert!(reasons.iter().any(|x| x == r), "{r} in {reasons:?}");
    }

    // Ignore and the HostFactory-owned request: reported, never replaced.
    for (name, was) in [("ignore", ignore_before), ("hf", hf_before)] {
        let mr = wait_request(&env, name, "the recommendation reported", WAIT, |mr| {
            mr.status
                .iter()
                .flat_map(|s| &s.machines)
                .any(|m| m.rebalance_recommendation_time.is_some())
        })
        .await;
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
    }
}

#[tokio::test]
async fn an_impaired_machine_is_reported_and_replaced_only_when_asked() {
    let env = TestEnv::new("replace-impaired").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "10m", "statusCheckInterval: 1s\n");
    let op = OperatorProcess::start(&env, &cfg).await;
    template(&env, "on-demand").await;
    create(&env, "report", "t", 2, json!({}), json!({})).await;
    create(
        &env,
        "fix",
        "t",
        2,
        json!({"replaceUnhealthy": true}),
        json!({}),
    )
    .await;
    create_hf(&env).await;
    let mut before = Vec::new();
    for name in ["report", "fix", "hf"] {
        let mr = wait_request(&env, name, "Ready and healthy", WAIT, |mr| {
            is_ready(mr) && condition(mr, "MachinesHealthy").is_some_and(|c| c.status == "True")
        })
        .await;
        before.push(live(&mr));
    }
    let first = |i: usize| before[i].iter().next().expect("a machine").clone();
    let (sick, broken, hf_sick) = (first(0), first(1), first(2));
    fwd.impair(&sick, Impaired::SYSTEM);
    fwd.impair(&broken, Impaired::INSTANCE);
    fwd.impair(&hf_sick, Impaired::SYSTEM);

    // Reported: the machine's field, the condition naming it, an Event.
    let mr = wait_request(&env, "report", "the impairment reported", WAIT, |mr| {
        let field = machine(mr, &sick).is_some_and(|m| {
            m.status_check
                .as_ref()
                .is_some_and(|c| c.failing == [StatusCheckKind::System] && c.since.is_some())
        });
        let cond = condition(mr, "MachinesHealthy").is_some_and(|c| {
            c.status == "False" && c.reason == "MachineImpaired" && c.message.contains(&sick)
        });
        field && cond
    })
    .await;
    assert_eq!(
        live(&mr),
        before[0],
        "not replaced without replaceUnhealthy"
    );
    eventually("a MachineImpaired Event", WAIT, || async {
        event_reasons(&env, "report")
            .await
            .iter()
            .any(|r| r == "MachineImpaired")
    })
    .await;

    // replaceUnhealthy: replaced, new first, moto agrees.
    let mr = wait_with_moto(
        &env,
        "fix",
        "the impaired machine replaced",
        WAIT,
        |mr, moto| {
            let gone = machine(mr, &broken).is_some_and(|m| {
                m.termination_reason == Some(TerminationReason::Replaced)
                    && m.replace_reason == Some(ReplaceReason::Unhealthy)
            });
            gone && is_ready(mr) && live(mr).len() == 2 && *moto == live(mr)
        },
    )
    .await;
    assert!(!live(&mr).contains(&broken));
    // The replacement passes its checks: healthy again.
    wait_request(&env, "fix", "healthy after the replacement", WAIT, |mr| {
        condition(mr, "MachinesHealthy").is_some_and(|c| c.status == "True")
    })
    .await;

    // HostFactory-owned: reported, never replaced, over several listings.
    wait_request(&env, "hf", "the impairment reported", WAIT, |mr| {
        machine(mr, &hf_sick).is_some_and(|m| m.status_check.is_some())
    })
    .await;
    let listings = fwd.calls("DescribeInstanceStatus");
    eventually("three more listings", WAIT, || async {
        fwd.calls("DescribeInstanceStatus") >= listings + 3
    })
    .await;
    let mr = requests(&env).get("hf").await.expect("get");
    assert_eq!(
        live(&mr),
        before[2],
        "the scheduler decides, not the operator"
    );
    assert!(machine(&mr, &hf_sick).is_some_and(|m| m.replace_reason.is_none()));
    assert_eq!(moto_live(&env, &uid(&mr)).await, before[2]);

    // Healthy again: the field goes, the condition turns True.
    fwd.heal(&sick);
    let mr = wait_request(&env, "report", "healthy again", WAIT, |mr| {
        condition(mr, "MachinesHealthy")
            .is_some_and(|c| c.status == "True" && c.reason == "AllHealthy")
    })
    .await;
    assert!(machine(&mr, &sick).is_some_and(|m| m.status_check.is_none()));
    eventually("a MachineHealthy Event", WAIT, || async {
        event_reasons(&env, "report")
            .await
            .iter()
            .any(|r| r == "MachineHealthy")
    })
    .await;
    assert!(
        op.metric("hostforge_status_check_failures_total", &[]) >= 3.0,
        "{}",
        op.metrics()
    );
}

/// An operator started on an account where it holds no machine knows that
/// none fails a check without a call: a request created afterwards says
/// `AllHealthy` from its first status, not `NotCheckedYet` until the next
/// listing (10 minutes here) wakes and rewrites every request.
#[tokio::test]
async fn requests_after_a_start_with_no_machines_are_healthy_without_a_listing() {
    let env = TestEnv::new("replace-empty").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "10m", "statusCheckInterval: 10m\n");
    let _op = OperatorProcess::start(&env, &cfg).await;
    template(&env, "on-demand").await;
    create(&env, "fresh", "t", 2, json!({}), json!({})).await;
    wait_request(&env, "fresh", "Ready and AllHealthy", WAIT, |mr| {
        is_ready(mr)
            && condition(mr, "MachinesHealthy")
                .is_some_and(|c| c.status == "True" && c.reason == "AllHealthy")
    })
    .await;
    assert_eq!(fwd.calls("DescribeInstanceStatus"), 0, "no listing needed");
}

#[tokio::test]
async fn the_status_check_loop_lists_once_per_interval_and_never_when_off() {
    const INTERVAL: Duration = Duration::from_secs(2);
    let env = TestEnv::new("replace-pace").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config_via(&env, &fwd, "10m", "statusCheckInterval: 2s\n");
    let started = Instant::now();
    let op = OperatorProcess::start(&env, &cfg).await;
    template(&env, "on-demand").await;
    create(&env, "paced", "t", 2, json!({}), json!({})).await;
    wait_request(&env, "paced", "Ready", WAIT, is_ready).await;
    eventually("five listings", WAIT, || async {
        fwd.calls("DescribeInstanceStatus") >= 5
    })
    .await;
    let calls = fwd.calls("DescribeInstanceStatus");
    let elapsed = started.elapsed();
    // One tick per interval at most (a loaded machine only delays ticks);
    // moto answers in one page, so one call per listing.
    let ticks = elapsed.as_secs_f64() / INTERVAL.as_secs_f64() + 1.0;
    assert!(
        calls as f64 <= ticks,
        "{calls} listings in {elapsed:?} at one per {INTERVAL:?}"
    );
    for params in fwd.requests("DescribeInstanceStatus") {
        assert_eq!(params.get("MaxResults").map(String::as_str), Some("1000"));
        assert_eq!(
            params.get("IncludeAllInstances").map(String::as_str),
            Some("false")
        );
        assert!(
            !params.keys().any(|k| k.starts_with("InstanceId")),
            "a listing, never per id: {params:?}"
        );
    }
    assert!(
        op.metric(
            "hostforge_aws_calls_total",
            &["operation=\"DescribeInstanceStatus\""]
        ) >= 5.0
    );
    drop(op);

    // Off: no listing, and no MachinesHealthy condition.
    let off = TestEnv::new("replace-off").await;
    let fwd_off = Forwarder::start(&off.bed.moto_url);
    let cfg = config_via(&off, &fwd_off, "1s", "statusCheckInterval: off\n");
    let _op = OperatorProcess::start(&off, &cfg).await;
    template(&off, "on-demand").await;
    create(&off, "quiet", "t", 1, json!({}), json!({})).await;
    wait_request(&off, "quiet", "Ready", WAIT, is_ready).await;
    // The sweep (every second) lists several times meanwhile.
    let sweeps = fwd_off.calls("DescribeInstances");
    eventually("several sweeps", WAIT, || async {
        fwd_off.calls("DescribeInstances") >= sweeps + 5
    })
    .await;
    assert_eq!(fwd_off.calls("DescribeInstanceStatus"), 0);
    let mr = requests(&off).get("quiet").await.expect("get");
    assert!(condition(&mr, "MachinesHealthy").is_none());
}

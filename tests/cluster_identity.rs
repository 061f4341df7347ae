//! Nothing a cluster does hurts machines that are not its own, proven with
//! real control planes and one moto:
//!
//! 1. two clusters (two kube-apiservers, so two `kube-system` uids) given the
//!    same `clusterName` and the same namespace and request names, as a
//!    blue/green pair or a restore would be: each sees the other's machines
//!    in its sweep, reports them (metric, Event on its request of that name)
//!    and terminates none; neither loses a machine;
//! 2. orphans of this cluster (their request deleted while the operator was
//!    down): a dry run only reports them; more than `orphanCollection` allows
//!    at once are held by the brake; within it they are terminated.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, moto_live_in_cluster, requests, status_live, uid,
    wait_request,
};
use hostforge_testbed::operator::default_config;
use hostforge_testbed::{second_bed, OperatorProcess, TestEnv, AL2023_PARAM};
use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

/// Generous: each step waits on a sweep of a loaded 2-core machine.
const WAIT: Duration = Duration::from_secs(180);

/// Config for an operator of cluster `cluster_name` talking to EC2 through
/// `fwd`, with full sweeps every 2 s and a 1 s orphan grace (so a mistake
/// shows within seconds), plus `extra`.
fn config(env: &TestEnv, fwd: &Forwarder, cluster_name: &str, extra: &str) -> String {
    let base = default_config(env, "5m")
        .replace(&env.bed.moto_url, fwd.endpoint())
        .replace(
            &format!("clusterName: {}\n", env.namespace),
            &format!("clusterName: {cluster_name}\n"),
        );
    format!(
        "{base}pollInterval: 500ms\nsweepInterval: 2s\nfullSweepInterval: 2s\ngcGracePeriod: 1s\n{extra}"
    )
}

async fn template(env: &TestEnv) {
    let (subnet, _) = env.default_subnet_and_group().await;
    create_template(
        env,
        "compute",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "subnetIds": [subnet],
        }),
    )
    .await;
}

/// Running or pending instances in moto tagged with `cluster_name`.
async fn live_in_cluster(env: &TestEnv, cluster_name: &str) -> BTreeSet<String> {
    moto_live_in_cluster(&env.ec2(), cluster_name)
        .await
        .into_iter()
        .collect()
}

/// Waits until `op`'s metric `name` (all label sets summed) reaches `want`.
async fn wait_metric(op: &OperatorProcess, name: &str, want: f64) {
    let start = Instant::now();
    loop {
        let have = op.metric(name, &[]);
        if have >= want {
            return;
        }
        assert!(
            start.elapsed() < WAIT,
            "{name} stayed at {have} (want {want}):\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn event_notes(env: &TestEnv, reason: &str) -> Vec<String> {
    Api::<Event>::namespaced(env.client.clone(), &env.namespace)
        .list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .filter_map(|e| e.message)
        .collect()
}

#[tokio::test]
async fn two_clusters_with_one_name_never_touch_each_others_machines() {
    let blue = TestEnv::new("ident-twins").await;
    let green = blue.twin(second_bed).await;
    blue.install_crds().await;
    green.install_crds().await;
    let shared_name = blue.namespace.clone();
    let (fwd_blue, fwd_green) = (
        Forwarder::start(&blue.bed.moto_url),
        Forwarder::start(&green.bed.moto_url),
    );

    let op_blue = OperatorProcess::start(&blue, &config(&blue, &fwd_blue, &shared_name, "")).await;
    template(&blue).await;
    create_request(&blue, "work", "compute", 3, true).await;
    let blue_mr = wait_request(&blue, "work", "Ready", WAIT, is_ready).await;
    let blue_machines = status_live(&blue_mr);
    assert_eq!(blue_machines.len(), 3);

    // The same objects applied to the second cluster (new uids), the same
    // clusterName in its values.
    let op_green =
        OperatorProcess::start(&green, &config(&green, &fwd_green, &shared_name, "")).await;
    template(&green).await;
    create_request(&green, "work", "compute", 2, true).await;
    let green_mr = wait_request(&green, "work", "Ready", WAIT, is_ready).await;
    let green_machines = status_live(&green_mr);
    assert_eq!(green_machines.len(), 2);
    assert_ne!(uid(&blue_mr), uid(&green_mr));

    // Each operator's full sweeps have listed the other's machines (older than
    // the grace by then) and set them aside as foreign.
    wait_metric(&op_green, "hostforge_foreign_machines", 3.0).await;
    wait_metric(&op_blue, "hostforge_foreign_machines", 2.0).await;
    // One more full sweep each after that, for good measure.
    let sweeps = |op: &OperatorProcess| op.metric("hostforge_machine_sweeps_total", &[]);
    let (b, g) = (sweeps(&op_blue), sweeps(&op_green));
    wait_metric(&op_blue, "hostforge_machine_sweeps_total", b + 2.0).await;
    wait_metric(&op_green, "hostforge_machine_sweeps_total", g + 2.0).await;

    let all: BTreeSet<String> = blue_machines.union(&green_machines).cloned().collect();
    assert_eq!(
        live_in_cluster(&blue, &shared_name).await,
        all,
        "both clusters' machines still run"
    );
    assert_eq!(fwd_blue.forwarded("TerminateInstances"), 0);
    assert_eq!(fwd_green.forwarded("TerminateInstances"), 0);
    for (env, machines) in [(&blue, &blue_machines), (&green, &green_machines)] {
        let mr = requests(env).get("work").await.expect("get request");
        assert!(is_ready(&mr), "{:?}", mr.status);
        assert_eq!(&status_live(&mr), machines, "nothing adopted or lost");
    }
    // The green request's owner is told about the blue machines of its name.
    let notes = event_notes(&green, "ForeignMachine").await;
    assert!(
        notes
            .iter()
            .any(|n| blue_machines.iter().all(|id| n.contains(id.as_str()))),
        "{notes:?}"
    );
}

#[tokio::test]
async fn orphans_are_held_by_a_dry_run_and_the_brake_and_collected_within_it() {
    let env = TestEnv::new("ident-brake").await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let name = env.namespace.clone();
    let mut op = OperatorProcess::start(&env, &config(&env, &fwd, &name, "")).await;
    template(&env).await;
    create_request(&env, "work", "compute", 3, true).await;
    let mr = wait_request(&env, "work", "Ready", WAIT, is_ready).await;
    let machines = status_live(&mr);
    assert_eq!(machines.len(), 3);

    // The request goes while the operator is down: its machines are orphans.
    assert!(op
        .terminate(Duration::from_secs(30))
        .await
        .0
        .is_some_and(|s| s.success()));
    let api = requests(&env);
    api.patch(
        "work",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .expect("drop finalizer");
    api.delete("work", &DeleteParams::default())
        .await
        .expect("delete request");

    // Dry run: reported, not terminated.
    let mut op = OperatorProcess::start(
        &env,
        &config(&env, &fwd, &name, "orphanCollection: {dryRun: true}\n"),
    )
    .await;
    wait_metric(&op, "hostforge_orphans_held", 3.0).await;
    assert!(op.log().contains("dry run: would terminate orphan"));
    assert_eq!(live_in_cluster(&env, &name).await, machines);
    assert_eq!(fwd.forwarded("TerminateInstances"), 0);
    op.terminate(Duration::from_secs(30)).await;

    // 3 orphans of 3 machines, above 10 % and above a minimum of 2: the brake.
    let mut op = OperatorProcess::start(
        &env,
        &config(
            &env,
            &fwd,
            &name,
            "orphanCollection: {maxShare: 10, minimum: 2}\n",
        ),
    )
    .await;
    wait_metric(&op, "hostforge_orphan_brake_engaged_total", 2.0).await;
    assert_eq!(op.metric("hostforge_orphans_held", &[]), 3.0);
    assert!(op.log().contains("sweep brake"), "{}", op.log());
    assert_eq!(live_in_cluster(&env, &name).await, machines);
    assert_eq!(fwd.forwarded("TerminateInstances"), 0);
    op.terminate(Duration::from_secs(30)).await;

    // The defaults allow 5 at once: collected.
    let op = OperatorProcess::start(&env, &config(&env, &fwd, &name, "")).await;
    let start = Instant::now();
    while !live_in_cluster(&env, &name).await.is_empty() {
        assert!(
            start.elapsed() < WAIT,
            "orphans not collected:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(op.metric("hostforge_orphans_held", &[]), 0.0);
}

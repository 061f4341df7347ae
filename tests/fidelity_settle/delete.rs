//! Deleting a request while its newest machines are invisible to EC2's
//! reads: the request goes only once every instance of it is terminating.

use std::collections::BTreeSet;
use std::time::Duration;

use hostforge_testbed::forwarder::Visibility;
use hostforge_testbed::machines::{
    create_request, is_ready, moto_instances, patch_spec, requests, status_live, uid, wait_request,
};
use hostforge_testbed::OperatorProcess;
use kube::api::DeleteParams;
use serde_json::json;

use super::{bed, WAIT};

/// Reads by id and TerminateInstances do not know a fresh instance for this long.
const BY_ID: Duration = Duration::from_secs(15);
/// Tag listings do not show a fresh instance for this long.
const BY_TAG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn deleting_right_after_a_scale_up_waits_for_the_hidden_machines() {
    // One full sweep only (at start), so orphan collection cannot terminate
    // a leaked machine later and hide the leak; a grace long enough that a
    // Pending batch holds the finalizer past the visibility windows.
    let (env, fwd, cfg) = bed("settle-delete", "10m", "gcGracePeriod: 60s\n").await;
    let _op = OperatorProcess::start(&env, &cfg).await;
    let mr = create_request(&env, "doomed", "compute", 2, true).await;
    let ready = wait_request(&env, "doomed", "Ready with 2", WAIT, |m| {
        is_ready(m) && status_live(m).len() == 2
    })
    .await;
    let first = status_live(&ready);
    // The model measures each window from an instance's launch answer,
    // which came before Ready: after this the first two are outside the
    // windows set next, only the scale-up's are inside them.
    tokio::time::sleep(BY_TAG).await;
    fwd.set_visibility(Visibility {
        by_id: BY_ID,
        by_tag: BY_TAG,
        ..Visibility::default()
    });
    let sent = fwd.forwarded("RunInstances");
    patch_spec(&env, "doomed", json!({"count": 4})).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while fwd.forwarded("RunInstances") == sent {
        assert!(tokio::time::Instant::now() < deadline, "no scale-up launch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    requests(&env)
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");

    let deadline = tokio::time::Instant::now() + WAIT;
    while requests(&env)
        .get_opt("doomed")
        .await
        .expect("get")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "request not gone within {WAIT:?}: {:?}",
            fwd.fidelity_counters()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Read at once: nothing may still be live in moto.
    let instances = moto_instances(&env, &uid(&mr)).await;
    let live: Vec<(&String, &String)> = instances
        .iter()
        .filter(|(_, (state, _))| state == "pending" || state == "running")
        .map(|(id, (state, _))| (id, state))
        .collect();
    assert!(
        live.is_empty(),
        "live after the request was gone: {live:?}; counters {:?}",
        fwd.fidelity_counters()
    );
    let ids: BTreeSet<String> = instances.keys().cloned().collect();
    assert_eq!(ids.len(), 4, "the scale-up launched two more: {ids:?}");
    assert!(first.is_subset(&ids));
    let counters = fwd.fidelity_counters();
    assert!(
        counters.hidden_by_id + counters.hidden_by_tag + counters.terminate_not_found >= 1,
        "the new machines were hidden from the operator's reads: {counters:?}"
    );
    assert_eq!(
        counters.launches_by_token.values().sum::<u64>(),
        2,
        "two launches, one per batch: {counters:?}"
    );
}

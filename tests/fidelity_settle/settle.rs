//! A batch left Pending by a crash right after RunInstances answered is
//! settled by re-sending its token, whatever the tag listing shows.

use std::collections::BTreeSet;
use std::time::Duration;

use aws_sdk_ec2::types::Filter;
use hostforge::api::{LaunchState, MachineRequest};
use hostforge_testbed::forwarder::{Forwarder, Visibility};
use hostforge_testbed::machines::{
    assert_moto_matches_status, create_request, is_ready, moto_instances, moto_live, requests,
    status_live, uid, wait_request,
};
use hostforge_testbed::{ec2_client, OperatorProcess, TestEnv};

use super::{bed, PeakLive, WAIT};

const POINT: &str = "request-after-launch";

/// Every sweep a full listing (by the cluster tag), so the tag index's lag
/// meets the sweep's vanish detection again and again.
const FULL_SWEEPS: &str = "fullSweepInterval: 2s\n";

/// Runs the operator until it aborts right after RunInstances answered;
/// returns the batch's token and the instances moto launched for it, after
/// checking that status never heard of them and the batch is Pending.
async fn crash_after_launch(
    env: &TestEnv,
    fwd: &Forwarder,
    cfg: &str,
    name: &str,
    count: usize,
) -> (String, BTreeSet<String>) {
    OperatorProcess::crash_at(env, cfg, POINT, WAIT).await;
    let crashed = requests(env).get(name).await.expect("get request");
    let launches = crashed.status.as_ref().expect("status").launches.clone();
    assert_eq!(launches.len(), 1, "{launches:?}");
    assert_eq!(launches[0].state, LaunchState::Pending);
    assert!(
        status_live(&crashed).is_empty(),
        "status never heard of them"
    );
    let launched = moto_live(env, &uid(&crashed)).await;
    assert_eq!(launched.len(), count, "moto launched the batch");
    assert_eq!(fwd.forwarded("RunInstances"), 1, "{:?}", fwd.snapshot());
    (launches[0].token.clone(), launched)
}

/// Ready with `count` live machines and the first batch no longer Pending.
fn settled_with(count: usize) -> impl Fn(&MachineRequest) -> bool {
    move |m| {
        is_ready(m)
            && status_live(m).len() == count
            && m.status.as_ref().is_some_and(|st| {
                st.launches
                    .first()
                    .is_some_and(|b| b.state != LaunchState::Pending)
            })
    }
}

/// The ClientToken of every RunInstances the forwarder received.
fn tokens_sent(fwd: &Forwarder) -> Vec<String> {
    fwd.requests("RunInstances")
        .iter()
        .map(|r| r.get("ClientToken").cloned().unwrap_or_default())
        .collect()
}

/// Every instance moto ever held for the request (terminated ones too).
async fn ever_held(env: &TestEnv, mr: &MachineRequest) -> usize {
    moto_instances(env, &uid(mr)).await.len()
}

/// The request's instances a tag-filtered DescribeInstances through the
/// forwarder (as the operator reads) shows, any state.
async fn tag_listing_via_model(fwd: &Forwarder, mr: &MachineRequest) -> usize {
    let out = ec2_client(fwd.endpoint())
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:hostforge.io/request-uid")
                .values(uid(mr))
                .build(),
        )
        .send()
        .await
        .expect("DescribeInstances through the forwarder");
    out.reservations().iter().map(|r| r.instances().len()).sum()
}

/// Waits until the operator's tag listings missed hidden instances `more`
/// more times than `since` (so sweeps ran with part of the batch invisible).
async fn wait_for_hidden_listings(fwd: &Forwarder, since: u64, more: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while fwd.fidelity_counters().hidden_by_tag < since + more {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no more tag listings within {WAIT:?}: {:?}",
            fwd.fidelity_counters()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn settle_with_the_tag_index_lagging_replays_the_token() {
    let (env, fwd, cfg) = bed("settle-lag", "2s", FULL_SWEEPS).await;
    // Fresh instances: missing from tag listings for 40 s (longer than the
    // restart and the settle take), from reads by id for 5 s.
    fwd.set_visibility(Visibility {
        by_id: Duration::from_secs(5),
        by_tag: Duration::from_secs(40),
        ..Visibility::default()
    });
    let mr = create_request(&env, "lag", "compute", 3, true).await;
    let (token, launched) = crash_after_launch(&env, &fwd, &cfg, "lag", 3).await;
    let peak = PeakLive::start(&env, &uid(&mr), launched.len());

    let _op = OperatorProcess::start(&env, &cfg).await;
    let done = wait_request(&env, "lag", "settled with 3", WAIT, settled_with(3)).await;
    let counters = fwd.fidelity_counters();
    assert!(counters.replays >= 1, "the registry replayed: {counters:?}");
    assert!(
        counters.hidden_by_tag >= 1,
        "the operator's tag reads missed the batch: {counters:?}"
    );
    assert_eq!(
        status_live(&done),
        launched,
        "status lists the first launch's machines"
    );
    assert_moto_matches_status(&env, &done).await;

    // Until the tag index shows the batch, and after: nothing relaunched,
    // nothing taken for gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tag_listing_via_model(&fwd, &done).await < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "tag window never ended"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let before = fwd.calls("DescribeInstances");
    // A few more reads (polls, sweeps) once the batch is visible.
    let deadline = tokio::time::Instant::now() + WAIT;
    while fwd.calls("DescribeInstances") < before + 10 {
        assert!(tokio::time::Instant::now() < deadline, "no more reads");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let done = wait_request(&env, "lag", "still settled with 3", WAIT, settled_with(3)).await;
    assert_eq!(status_live(&done), launched);
    assert_moto_matches_status(&env, &done).await;
    assert_eq!(ever_held(&env, &done).await, 3, "moto never held more");
    assert!(peak.peak() <= 3, "peak live {} > 3", peak.peak());
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.launches_for(&token), 1, "{counters:?}");
    assert_eq!(
        counters.launches_by_token.values().sum::<u64>(),
        1,
        "one forwarded launch in all: {counters:?}"
    );
    let sent = tokens_sent(&fwd);
    assert!(sent.len() >= 2, "re-sent after the restart: {sent:?}");
    assert!(sent.iter().all(|t| *t == token), "{sent:?} vs {token}");
}

#[tokio::test]
async fn settle_seeing_part_of_the_batch_launches_no_deficit() {
    let (env, fwd, cfg) = bed("settle-part", "2s", FULL_SWEEPS).await;
    let mr = create_request(&env, "part", "compute", 3, true).await;
    let (token, launched) = crash_after_launch(&env, &fwd, &cfg, "part", 3).await;
    // Two of the three stay missing from every tag listing.
    let hidden: Vec<String> = launched.iter().take(2).cloned().collect();
    fwd.hide_from_tag_listings(hidden.clone());
    let peak = PeakLive::start(&env, &uid(&mr), launched.len());

    let _op = OperatorProcess::start(&env, &cfg).await;
    let done = wait_request(&env, "part", "settled with 3", WAIT, settled_with(3)).await;
    assert_eq!(status_live(&done), launched, "all three, hidden ones too");
    assert_moto_matches_status(&env, &done).await;
    // More tag listings (sweeps, cleanup of nothing) with two still hidden.
    let since = fwd.fidelity_counters().hidden_by_tag;
    wait_for_hidden_listings(&fwd, since, 6).await;
    let done = wait_request(&env, "part", "still settled with 3", WAIT, settled_with(3)).await;
    assert_eq!(status_live(&done), launched);
    assert_moto_matches_status(&env, &done).await;
    assert_eq!(ever_held(&env, &done).await, 3, "no deficit was launched");
    assert!(peak.peak() <= 3, "peak live {} > 3", peak.peak());
    let counters = fwd.fidelity_counters();
    assert!(counters.replays >= 1, "{counters:?}");
    assert_eq!(counters.launches_for(&token), 1, "{counters:?}");
    assert_eq!(
        counters.launches_by_token.values().sum::<u64>(),
        1,
        "one forwarded launch in all: {counters:?}"
    );
    assert!(tokens_sent(&fwd).iter().all(|t| *t == token));
}

#[tokio::test]
async fn a_terminated_token_settles_the_batch_and_a_new_batch_fills_it() {
    let (env, fwd, cfg) = bed("settle-term", "2s", FULL_SWEEPS).await;
    let mr = create_request(&env, "term", "compute", 3, true).await;
    let (token, launched) = crash_after_launch(&env, &fwd, &cfg, "term", 3).await;
    // While the operator is down the batch's instances are terminated
    // (straight on moto) and no tag listing shows them: settling by tag
    // finds nothing, only the token's answer tells what became of them.
    env.ec2()
        .terminate_instances()
        .set_instance_ids(Some(launched.iter().cloned().collect()))
        .send()
        .await
        .expect("TerminateInstances on moto");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let states = moto_instances(&env, &uid(&mr)).await;
        if states.values().all(|(state, _)| state == "terminated") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{states:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fwd.hide_from_tag_listings(launched.clone());
    let peak = PeakLive::start(&env, &uid(&mr), 0);

    let _op = OperatorProcess::start(&env, &cfg).await;
    let done = wait_request(&env, "term", "settled with 3", WAIT, settled_with(3)).await;
    let counters = fwd.fidelity_counters();
    assert!(
        counters.terminated_answers >= 1,
        "the re-send got IdempotentInstanceTerminated: {counters:?}"
    );
    let st = done.status.as_ref().expect("status");
    assert_eq!(st.launches[0].token, token);
    assert_eq!(
        st.launches[0].state,
        LaunchState::Launched,
        "{:?}",
        st.launches
    );
    assert!(st.launches.len() >= 2, "a new batch: {:?}", st.launches);
    let live = status_live(&done);
    assert!(live.is_disjoint(&launched), "{live:?} vs {launched:?}");
    assert_moto_matches_status(&env, &done).await;
    assert_eq!(ever_held(&env, &done).await, 6, "one new set, no more");
    assert!(peak.peak() <= 3, "peak live {} > 3", peak.peak());
    assert_eq!(counters.launches_for(&token), 1, "{counters:?}");
    let other: Vec<(&String, &u64)> = counters
        .launches_by_token
        .iter()
        .filter(|(t, _)| **t != token)
        .collect();
    assert_eq!(other.len(), 1, "one new token: {counters:?}");
    assert_eq!(*other[0].1, 1, "launched once: {counters:?}");
}

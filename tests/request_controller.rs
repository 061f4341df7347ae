//! The MachineRequest controller against a real apiserver and moto, with the
//! operator as a child process: launch, scale, return, delete, lost machines,
//! orphans, EC2 Fleet, and batched polling.

use std::collections::BTreeSet;
use std::time::Duration;

use hostforge::api::{MachineResult, TerminationReason};
use hostforge_testbed::machines::{
    assert_moto_matches_status, condition, create_request, create_template, is_ready,
    moto_instances, moto_live, patch_spec, requests, status_live, uid, wait_request,
};
use hostforge_testbed::operator::default_config;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// The operator config for request tests: fast polls and sweeps.
fn config(env: &TestEnv, extra: &str) -> String {
    format!(
        "{}pollInterval: 500ms\nsweepInterval: 2s\n{extra}",
        default_config(env, "5m")
    )
}

async fn ssm_template(env: &TestEnv, name: &str) {
    create_template(
        env,
        name,
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
            "tags": {"team": "hpc"},
        }),
    )
    .await;
}

#[tokio::test]
async fn a_request_scales_returns_and_deletes_with_moto_matching_status() {
    let env = TestEnv::new("req-life").await;
    env.install_crds().await;
    let op = OperatorProcess::start(&env, &config(&env, "")).await;
    ssm_template(&env, "compute").await;
    let mr = create_request(&env, "burst", "compute", 5, true).await;
    let uid = uid(&mr);

    // 5: Ready, exactly 5 running instances with the ownership tags.
    let mr = wait_request(&env, "burst", "Ready with 5", WAIT, is_ready).await;
    assert_eq!(status_live(&mr).len(), 5);
    assert_moto_matches_status(&env, &mr).await;
    let ami = env.al2023_ami().await;
    for (id, (state, tags)) in moto_instances(&env, &uid).await {
        assert_eq!(state, "running", "{id}");
        assert_eq!(tags["hostforge.io/cluster"], env.namespace);
        assert_eq!(
            tags["hostforge.io/request"],
            format!("{}/burst", env.namespace)
        );
        assert_eq!(tags["hostforge.io/template"], "compute");
        assert!(tags["hostforge.io/batch"].starts_with(&uid.replace('-', "")[..8]));
        assert_eq!(tags["team"], "hpc");
        assert_eq!(tags["Name"], "burst");
    }
    let st = mr.status.clone().expect("status");
    assert_eq!((st.counts.desired, st.counts.running), (5, 5));
    for m in &st.machines {
        assert_eq!(m.result, MachineResult::Succeed);
        assert!(
            m.name.as_deref().is_some_and(|n| n.ends_with(".internal")),
            "{m:?}"
        );
        assert!(m.private_ip.is_some() && m.launch_time.is_some());
        assert_eq!(m.image_id.as_deref(), Some(ami.as_str()));
        assert_eq!(m.instance_type.as_deref(), Some("t3.micro"));
    }
    assert!(st.launches.iter().all(|b| b.token.starts_with(&uid)));

    // 5 → 8.
    patch_spec(&env, "burst", json!({"count": 8})).await;
    let mr = wait_request(&env, "burst", "Ready with 8", WAIT, |m| {
        is_ready(m) && status_live(m).len() == 8
    })
    .await;
    assert_moto_matches_status(&env, &mr).await;

    // 8 → 3: the five newest go.
    let before = mr.status.clone().expect("status").machines;
    patch_spec(&env, "burst", json!({"count": 3})).await;
    let mr = wait_request(&env, "burst", "Ready with 3", WAIT, |m| {
        is_ready(m) && status_live(m).len() == 3
    })
    .await;
    assert_moto_matches_status(&env, &mr).await;
    let mut by_age = before.clone();
    by_age.sort_by_key(|m| (m.launch_time.as_ref().map(|t| t.0), m.id.clone()));
    let oldest: BTreeSet<String> = by_age.iter().take(3).map(|m| m.id.clone()).collect();
    assert_eq!(
        status_live(&mr),
        oldest,
        "the newest machines are scaled down"
    );
    let scaled: Vec<_> = mr
        .status
        .as_ref()
        .expect("status")
        .machines
        .iter()
        .filter(|m| m.termination_reason == Some(TerminationReason::ScaledDown))
        .collect();
    assert_eq!(scaled.len(), 5);

    // Return two named machines (count lowered with them, as HostFactory does).
    let returned: Vec<String> = oldest.iter().take(2).cloned().collect();
    patch_spec(
        &env,
        "burst",
        json!({"count": 1, "returnMachines": returned}),
    )
    .await;
    let mr = wait_request(&env, "burst", "two returned", WAIT, |m| {
        is_ready(m)
            && m.status.as_ref().is_some_and(|st| {
                st.machines
                    .iter()
                    .filter(|x| returned.contains(&x.id))
                    .all(|x| {
                        x.termination_reason == Some(TerminationReason::Returned)
                            && x.result == MachineResult::Succeed
                    })
            })
    })
    .await;
    assert_moto_matches_status(&env, &mr).await;
    assert_eq!(mr.status.as_ref().expect("status").counts.returned, 2);
    let in_moto = moto_instances(&env, &uid).await;
    for id in &returned {
        assert_eq!(in_moto[id].0, "terminated", "{id} returned");
    }
    // Returned machines are not replaced: the count stays 1 for a while.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(moto_live(&env, &uid).await.len(), 1);

    // Delete: nothing of it is left running, and the object goes away.
    requests(&env)
        .delete("burst", &Default::default())
        .await
        .expect("delete request");
    let deadline = std::time::Instant::now() + WAIT;
    while requests(&env)
        .get_opt("burst")
        .await
        .expect("get")
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "finalizer never released"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        moto_live(&env, &uid).await.is_empty(),
        "machines left after delete"
    );
    assert!(op.metric("hostforge_machines_terminated_total", &[]) >= 8.0);
}

#[tokio::test]
async fn lost_machines_are_replaced_or_only_reported() {
    let env = TestEnv::new("req-lost").await;
    env.install_crds().await;
    let _op = OperatorProcess::start(&env, &config(&env, "")).await;
    ssm_template(&env, "compute").await;
    let replace = create_request(&env, "replace", "compute", 2, true).await;
    let keep = create_request(&env, "keep", "compute", 2, false).await;
    let r1 = wait_request(&env, "replace", "Ready", WAIT, is_ready).await;
    let k1 = wait_request(&env, "keep", "Ready", WAIT, is_ready).await;

    let victim_r = status_live(&r1).into_iter().next().expect("a machine");
    let victim_k = status_live(&k1).into_iter().next().expect("a machine");
    env.ec2()
        .terminate_instances()
        .instance_ids(&victim_r)
        .instance_ids(&victim_k)
        .send()
        .await
        .expect("terminate directly in moto");

    let r2 = wait_request(&env, "replace", "replaced", WAIT, |m| {
        is_ready(m) && !status_live(m).contains(&victim_r) && status_live(m).len() == 2
    })
    .await;
    let lost = r2
        .status
        .as_ref()
        .expect("status")
        .machines
        .iter()
        .find(|m| m.id == victim_r)
        .expect("lost machine still reported")
        .clone();
    assert_eq!(lost.termination_reason, Some(TerminationReason::Lost));
    assert_eq!(lost.result, MachineResult::Fail);
    assert_moto_matches_status(&env, &r2).await;

    let k2 = wait_request(&env, "keep", "reported lost", WAIT, |m| {
        m.status.as_ref().is_some_and(|st| st.counts.failed == 1)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let k2b = requests(&env).get("keep").await.expect("get");
    assert_eq!(status_live(&k2b).len(), 1, "not replaced");
    assert_eq!(moto_live(&env, &uid(&keep)).await.len(), 1);
    assert!(is_ready(&k2b), "nothing more to do: {:?}", k2.status);
    assert_eq!(uid(&replace).len(), 36);
}

#[tokio::test]
async fn a_waiting_request_starts_when_its_template_appears() {
    let env = TestEnv::new("req-wait").await;
    env.install_crds().await;
    let _op = OperatorProcess::start(&env, &config(&env, "")).await;
    create_request(&env, "early", "later", 1, true).await;
    let mr = wait_request(&env, "early", "waiting", WAIT, |m| {
        condition(m, "Ready").is_some_and(|(_, r)| r == "TemplateNotFound")
    })
    .await;
    assert!(mr
        .metadata
        .finalizers
        .as_ref()
        .is_some_and(|f| f.iter().any(|f| f == "hostforge.io/machines")));
    assert_eq!(
        condition(&mr, "Degraded"),
        Some(("True".into(), "TemplateNotFound".into()))
    );
    ssm_template(&env, "later").await;
    let mr = wait_request(&env, "early", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
}

#[tokio::test]
async fn an_orphan_left_by_a_forced_delete_is_collected() {
    let env = TestEnv::new("req-orphan").await;
    env.install_crds().await;
    // Running orphans are found by full sweeps only.
    let cfg = config(&env, "gcGracePeriod: 1s\nfullSweepInterval: 2s\n");
    let mut op = OperatorProcess::start(&env, &cfg).await;
    ssm_template(&env, "compute").await;
    let mr = create_request(&env, "doomed", "compute", 2, true).await;
    wait_request(&env, "doomed", "Ready", WAIT, is_ready).await;
    let uid = uid(&mr);

    // Stop the operator, then delete the request with its finalizer removed.
    op.terminate(Duration::from_secs(20)).await;
    env.kubectl_ok(&[
        "-n",
        &env.namespace,
        "patch",
        "machinerequest",
        "doomed",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    env.kubectl_ok(&[
        "-n",
        &env.namespace,
        "delete",
        "machinerequest",
        "doomed",
        "--wait=true",
    ]);
    assert_eq!(moto_live(&env, &uid).await.len(), 2, "orphans exist");

    let op = OperatorProcess::start(&env, &cfg).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !moto_live(&env, &uid).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "orphans never collected:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        op.metric(
            "hostforge_machines_terminated_total",
            &["reason=\"Orphan\""]
        ),
        2.0
    );
    assert!(op.log().contains("terminating orphan"));
}

#[tokio::test]
async fn ec2_fleet_launches_a_mixed_request_in_one_call() {
    let env = TestEnv::new("req-fleet").await;
    env.install_crds().await;
    let op = OperatorProcess::start(&env, &config(&env, "")).await;
    let (subnet, _) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "mixed",
        json!({
            "providerApi": "EC2Fleet",
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
            "subnetIds": [subnet],
            "capacityType": "mixed",
            "onDemandPercent": 50,
        }),
    )
    .await;
    let mr = create_request(&env, "fleet", "mixed", 4, true).await;
    let mr2 = wait_request(&env, "fleet", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr2).await;
    assert_eq!(
        op.metric("hostforge_aws_calls_total", &["operation=\"CreateFleet\""]),
        1.0
    );
    let lifecycles: BTreeSet<String> = mr2
        .status
        .as_ref()
        .expect("status")
        .machines
        .iter()
        .filter_map(|m| m.capacity_type.map(|c| format!("{c:?}")))
        .collect();
    assert_eq!(lifecycles.len(), 2, "on-demand and spot: {lifecycles:?}");
    assert_eq!(moto_live(&env, &uid(&mr)).await.len(), 4);
}

#[tokio::test]
async fn twenty_pending_requests_share_one_describe_per_poll() {
    let env = TestEnv::new("req-batch").await;
    env.install_crds().await;
    // A long sweep interval: every describe after the first sweep is a poll.
    let cfg = format!(
        "{}pollInterval: 500ms\nsweepInterval: 1h\n",
        default_config(&env, "5m")
    );
    let op = OperatorProcess::start(&env, &cfg).await;
    ssm_template(&env, "compute").await;
    for i in 0..20 {
        create_request(&env, &format!("r{i}"), "compute", 1, true).await;
    }
    for i in 0..20 {
        let mr = wait_request(&env, &format!("r{i}"), "Ready", WAIT, is_ready).await;
        assert_moto_matches_status(&env, &mr).await;
    }
    let describes = op.metric(
        "hostforge_aws_calls_total",
        &["operation=\"DescribeInstances\""],
    );
    let polls = op.metric("hostforge_machine_polls_total", &[]);
    let sweeps = op.metric("hostforge_machine_sweeps_total", &[]);
    assert!(polls >= 1.0);
    assert_eq!(
        describes,
        polls + sweeps,
        "every DescribeInstances is one poll (for all requests) or the sweep"
    );
    // Requests recorded while a launch is out share the next call
    // (coalesceLaunches), so 20 requests take at most 20 calls.
    let launches = op.metric("hostforge_aws_calls_total", &["operation=\"RunInstances\""]);
    assert!((1.0..=20.0).contains(&launches), "{launches}");
}

#[tokio::test]
async fn max_machines_caps_all_requests_of_a_template() {
    let env = TestEnv::new("req-max").await;
    env.install_crds().await;
    let _op = OperatorProcess::start(&env, &config(&env, "")).await;
    create_template(
        &env,
        "capped",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "maxMachines": 3,
        }),
    )
    .await;
    let first = create_request(&env, "first", "capped", 2, true).await;
    wait_request(&env, "first", "Ready", WAIT, is_ready).await;
    let second = create_request(&env, "second", "capped", 2, true).await;
    let held = wait_request(&env, "second", "held back", WAIT, |m| {
        condition(m, "Degraded").is_some_and(|(s, r)| s == "True" && r == "MaxMachinesReached")
            && status_live(m).len() == 1
    })
    .await;
    assert!(!is_ready(&held));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        moto_live(&env, &uid(&second)).await.len(),
        1,
        "no more than the cap"
    );

    // The first request goes away: the second fills up.
    requests(&env)
        .delete("first", &Default::default())
        .await
        .expect("delete first");
    let mr = wait_request(&env, "second", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    assert!(moto_live(&env, &uid(&first)).await.is_empty());
}

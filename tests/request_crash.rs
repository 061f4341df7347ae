//! Crash safety of the launch protocol: the operator (a child process) aborts
//! at a named step — right after recording launch intent, right after EC2
//! answered but before status is written, right after marking machines for
//! termination — and is started again. Afterwards moto must hold exactly the
//! machines status lists: none duplicated, none leaked. moto ignores
//! ClientToken, so the forwarder's request log proves that a re-send carried
//! the recorded token and that an adopted batch was not sent twice.
//!
//! Needs `--features failpoints` (Cargo.toml `required-features`).

use std::time::Duration;

use hostforge::api::{LaunchState, MachineState, TerminationReason};
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{
    assert_moto_matches_status, create_request, create_template, is_ready, moto_live, patch_spec,
    requests, status_live, uid, wait_request,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

fn config(env: &TestEnv, fwd: &Forwarder) -> String {
    config_via(env, fwd, "2s", "")
}

/// Runs the operator with `point` enabled until it aborts there.
async fn crash_at(env: &TestEnv, cfg: &str, point: &str) {
    OperatorProcess::crash_at(env, cfg, point, WAIT).await
}

/// A namespace with the CRDs, a forwarder in front of moto, the operator's
/// config through it, and the template `compute` (t3.micro).
async fn bed(name: &str) -> (TestEnv, Forwarder, String) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let cfg = config(&env, &fwd);
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    (env, fwd, cfg)
}

#[tokio::test]
async fn a_kill_at_each_launch_step_neither_duplicates_nor_leaks() {
    let (env, fwd, cfg) = bed("crash").await;

    for (i, point) in ["request-after-intent", "request-after-launch"]
        .into_iter()
        .enumerate()
    {
        let name = format!("crash-{i}");
        fwd.reset_counters();
        let mr = create_request(&env, &name, "compute", 3, true).await;
        crash_at(&env, &cfg, point).await;

        // The intent is on record, still Pending.
        let crashed = requests(&env).get(&name).await.expect("get");
        let launches = crashed.status.as_ref().expect("status").launches.clone();
        assert_eq!(launches.len(), 1, "{point}: {launches:?}");
        assert_eq!(launches[0].state, LaunchState::Pending, "{point}");
        let token = launches[0].token.clone();
        let sent_before = fwd.requests("RunInstances");
        let live_before = moto_live(&env, &uid(&mr)).await.len();
        match point {
            "request-after-intent" => {
                assert!(sent_before.is_empty(), "nothing sent before the crash");
                assert_eq!(live_before, 0);
            }
            _ => {
                assert_eq!(sent_before.len(), 1);
                assert_eq!(live_before, 3, "launched, but status never heard of them");
                assert!(status_live(&crashed).is_empty());
            }
        }

        let mut op = OperatorProcess::start(&env, &cfg).await;
        let mut done = wait_request(&env, &name, "Ready", WAIT, is_ready).await;
        if point == "request-after-launch" {
            // The re-sent token launched a second set on moto (EC2 would
            // return the first): the first full sweep finds the first set
            // and the plan scales the surplus down.
            let deadline = std::time::Instant::now() + WAIT;
            while moto_live(&env, &uid(&done)).await != status_live(&done) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{point}: surplus never went"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
                done = wait_request(&env, &name, "Ready", WAIT, is_ready).await;
            }
        }
        assert_moto_matches_status(&env, &done).await;
        assert_eq!(status_live(&done).len(), 3, "{point}");
        let sent: Vec<String> = fwd
            .requests("RunInstances")
            .iter()
            .map(|r| r.get("ClientToken").cloned().unwrap_or_default())
            .collect();
        // After the launch the batch is settled by re-sending its token
        // (EC2's answer to it is authoritative), never by a new batch.
        let sends = if point == "request-after-launch" {
            2
        } else {
            1
        };
        assert_eq!(
            sent,
            vec![token.clone(); sends],
            "{point}: every RunInstances carries the recorded token"
        );
        let batch = &done.status.as_ref().expect("status").launches[0];
        assert_eq!(
            (batch.state, batch.token.as_str()),
            (LaunchState::Launched, token.as_str())
        );
        op.terminate(Duration::from_secs(20)).await;
    }

    // A kill between marking machines for scale-down and terminating them.
    let name = "crash-0";
    patch_spec(&env, name, json!({"count": 1})).await;
    crash_at(&env, &cfg, "request-after-mark").await;
    let marked = requests(&env).get(name).await.expect("get");
    assert_eq!(status_live(&marked).len(), 1, "two marked ScaledDown");
    assert_eq!(
        moto_live(&env, &uid(&marked)).await.len(),
        3,
        "not terminated yet"
    );
    let _op = OperatorProcess::start(&env, &cfg).await;
    // Ready with one live machine is already true while the restarted
    // operator's TerminateInstances of the two marked ones is on its way, so
    // wait until status reads them going down too (EC2 accepted the call).
    let done = wait_request(
        &env,
        name,
        "Ready with 1, the marked two going down",
        WAIT,
        |m| {
            let down = m.status.as_ref().is_some_and(|st| {
                st.machines
                    .iter()
                    .filter(|x| x.termination_reason.is_some())
                    .all(|x| {
                        matches!(
                            x.state,
                            MachineState::ShuttingDown | MachineState::Terminated
                        )
                    })
            });
            is_ready(m) && status_live(m).len() == 1 && down
        },
    )
    .await;
    assert_moto_matches_status(&env, &done).await;
}

/// A return marks nothing before TerminateInstances (`returnMachines` is its
/// record): a kill right after EC2 accepted the call, before any status
/// write, must still end with the machines Returned, never Lost, and nothing
/// launched in their place.
#[tokio::test]
async fn a_kill_after_a_return_is_sent_leaves_the_machines_returned() {
    let (env, fwd, cfg) = bed("crash-return").await;
    let name = "give-back";
    create_request(&env, name, "compute", 3, true).await;
    let mut op = OperatorProcess::start(&env, &cfg).await;
    let ready = wait_request(&env, name, "Ready with 3", WAIT, |m| {
        is_ready(m) && status_live(m).len() == 3
    })
    .await;
    op.terminate(Duration::from_secs(20)).await;
    let live: Vec<String> = status_live(&ready).into_iter().collect();
    let (returned, kept) = (live[..2].to_vec(), live[2].clone());
    // As HostFactory returns: the ids listed and count lowered with them.
    patch_spec(&env, name, json!({"returnMachines": returned, "count": 1})).await;
    fwd.reset_counters();

    crash_at(&env, &cfg, "request-after-terminate").await;
    let crashed = requests(&env).get(name).await.expect("get");
    let unmarked =
        crashed.status.iter().flat_map(|st| &st.machines).all(|m| {
            m.termination_reason.is_none() && !matches!(m.state, MachineState::ShuttingDown)
        });
    assert!(
        unmarked,
        "no status write before the kill: {:?}",
        crashed.status
    );
    assert_eq!(
        moto_live(&env, &uid(&crashed)).await,
        [kept.clone()].into(),
        "EC2 took the return before the kill"
    );

    let _op = OperatorProcess::start(&env, &cfg).await;
    let done = wait_request(&env, name, "two Returned and down, one live", WAIT, |m| {
        let machines: Vec<_> = m.status.iter().flat_map(|st| &st.machines).collect();
        let gone = machines
            .iter()
            .filter(|x| returned.contains(&x.id))
            .all(|x| {
                x.termination_reason == Some(TerminationReason::Returned)
                    && x.state == MachineState::Terminated
            });
        gone && status_live(m) == [kept.clone()].into()
    })
    .await;
    let lost = done
        .status
        .iter()
        .flat_map(|st| &st.machines)
        .filter(|m| m.termination_reason == Some(TerminationReason::Lost))
        .count();
    assert_eq!(lost, 0, "{:?}", done.status);
    assert_eq!(
        fwd.calls("RunInstances"),
        0,
        "nothing replaces a returned machine"
    );
    assert_moto_matches_status(&env, &done).await;
}

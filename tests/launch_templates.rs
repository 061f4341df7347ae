//! Launch templates are never leaked, fleet answers without instances end
//! their batch, and deletion waits out a Pending batch: the real apiserver,
//! moto, the test forwarder and an operator child process.
//!
//! EC2 behaviour moto lacks is modelled by the forwarder, each with its page:
//! - the launch-template quota: CreateLaunchTemplate answers 400
//!   `MaxTemplateLimitExceeded` at 5,000 templates per Region
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/launch-template-restrictions.html>,
//!   code in <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>);
//! - an instant fleet that launched nothing answers 200 with only an
//!   `errorSet` (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateFleet.html>,
//!   "Errors": "Information about the instances that could not be launched by
//!   the fleet. Supported only for fleets of type instant.");
//! - eventual consistency: DescribeInstances may not show fresh instances
//!   (<https://docs.aws.amazon.com/AWSEC2/latest/devguide/eventual-consistency.html>).

use std::time::Duration;

use aws_sdk_ec2::types::{Filter, RequestLaunchTemplateData, ResourceType, Tag, TagSpecification};
use hostforge::api::{LaunchState, MachineRequest};
use hostforge_testbed::forwarder::{FaultRule, Forwarder, InjectedError, Rule};
use hostforge_testbed::machines::{
    assert_moto_matches_status, condition, create_request, create_template, is_ready, wait_request,
};
use hostforge_testbed::operator::{config_via, default_config};
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

/// The operator config: through the forwarder, quick polls and sweeps (the
/// collector runs every `sweepInterval`), plus `extra` lines.
fn config(env: &TestEnv, fwd: &Forwarder, extra: &str) -> String {
    config_via(env, fwd, "2s", extra)
}

/// A namespace, a forwarder in front of moto and the CRDs.
async fn bed(name: &str) -> (TestEnv, Forwarder) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    (env, fwd)
}

/// An instant-fleet template of one on-demand type.
async fn fleet_template(env: &TestEnv, name: &str) {
    create_template(
        env,
        name,
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "providerApi": "EC2Fleet",
        }),
    )
    .await;
}

/// Creates a launch template in moto directly (as a crashed operator, or
/// someone else, left it) with `tags` on the template itself.
async fn moto_template(env: &TestEnv, name: &str, tags: &[(&str, &str)]) {
    let image = env.al2023_ami().await;
    env.ec2()
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(RequestLaunchTemplateData::builder().image_id(image).build())
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::LaunchTemplate)
                .set_tags(Some(
                    tags.iter()
                        .map(|(k, v)| Tag::builder().key(*k).value(*v).build())
                        .collect(),
                ))
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate on moto");
}

/// Names of the launch templates moto holds tagged for `cluster`.
async fn cluster_templates(env: &TestEnv, cluster: &str) -> Vec<String> {
    let mut names: Vec<String> = env
        .ec2()
        .describe_launch_templates()
        .filters(
            Filter::builder()
                .name("tag:hostforge.io/cluster")
                .values(cluster)
                .build(),
        )
        .max_results(200)
        .send()
        .await
        .expect("DescribeLaunchTemplates on moto")
        .launch_templates()
        .iter()
        .filter_map(|t| t.launch_template_name())
        .map(str::to_string)
        .collect();
    names.sort();
    names
}

/// Waits until moto holds no template tagged for `cluster`.
async fn wait_no_templates(env: &TestEnv, cluster: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = cluster_templates(env, cluster).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "launch templates left for {cluster}: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The Degraded condition's message, if any.
fn degraded_message(mr: &MachineRequest) -> String {
    mr.status
        .as_ref()
        .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Degraded"))
        .map(|c| c.message.clone())
        .unwrap_or_default()
}

/// Templates a crash left behind (this cluster's name and identity tags,
/// hostforge names, no Pending batch) are deleted once older than the grace
/// period; a template with a hostforge name but another cluster's name, or
/// this cluster's name and another identity (a second cluster given the same
/// clusterName), is not touched.
#[tokio::test]
async fn leaked_launch_templates_are_collected() {
    let (env, fwd) = bed("lt-collect").await;
    let ns = env.namespace.clone();
    let cluster = ns.clone();
    let gone_request = format!("{ns}/gone");
    let id = env.cluster_id().await;
    for i in 1..=2 {
        let batch = format!("deadbeef-{i}");
        moto_template(
            &env,
            &format!("hostforge-{batch}-{ns}"),
            &[
                ("hostforge.io/cluster", &cluster),
                ("hostforge.io/cluster-id", &id),
                ("hostforge.io/request", &gone_request),
                ("hostforge.io/request-uid", "0000-gone"),
                ("hostforge.io/batch", &batch),
            ],
        )
        .await;
    }
    let foreign = format!("hostforge-foreign-{ns}");
    moto_template(
        &env,
        &foreign,
        &[
            ("hostforge.io/cluster", "another-cluster"),
            ("hostforge.io/request", &gone_request),
        ],
    )
    .await;
    // Same cluster name, another cluster's identity: never collected.
    let twin = format!("hostforge-twin-{ns}");
    moto_template(
        &env,
        &twin,
        &[
            ("hostforge.io/cluster", &cluster),
            ("hostforge.io/cluster-id", "another-identity"),
            ("hostforge.io/request", &gone_request),
            ("hostforge.io/request-uid", "0000-gone"),
            ("hostforge.io/batch", "deadbeef-3"),
        ],
    )
    .await;
    assert_eq!(cluster_templates(&env, &cluster).await.len(), 3);

    let op = OperatorProcess::start(&env, &config(&env, &fwd, "gcGracePeriod: 1s\n")).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while cluster_templates(&env, &cluster).await != [twin.clone()] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "left: {:?}",
            cluster_templates(&env, &cluster).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        cluster_templates(&env, "another-cluster")
            .await
            .iter()
            .filter(|n| **n == foreign)
            .count(),
        1,
        "another cluster's template stays"
    );
    assert!(fwd.calls("DescribeLaunchTemplates") >= 1);
    assert_eq!(
        op.metric_async("hostforge_launch_templates_collected_total", &[])
            .await,
        2.0
    );
    env.ec2()
        .delete_launch_template()
        .launch_template_name(&foreign)
        .send()
        .await
        .expect("clean up the foreign template");
}

/// At the account's template quota CreateLaunchTemplate answers
/// `MaxTemplateLimitExceeded`: the request is Degraded naming the code
/// (not a batch Pending forever), no fleet is sent, and once templates can
/// be created again the request fills and no template is left.
#[tokio::test]
async fn template_quota_degrades_the_request_instead_of_wedging() {
    let (env, fwd) = bed("lt-quota").await;
    let _op = OperatorProcess::start(&env, &config(&env, &fwd, "gcGracePeriod: 1s\n")).await;
    fleet_template(&env, "fleet").await;
    let quota = fwd.add_rule(Rule::new(
        "CreateLaunchTemplate",
        InjectedError::new(
            400,
            "MaxTemplateLimitExceeded",
            "You've reached the maximum number of launch templates allowed.",
        ),
    ));
    create_request(&env, "quota", "fleet", 1, true).await;
    let mr = wait_request(&env, "quota", "Degraded naming the quota", WAIT, |m| {
        condition(m, "Degraded").is_some_and(|(s, _)| s == "True")
            && degraded_message(m).contains("MaxTemplateLimitExceeded")
    })
    .await;
    let st = mr.status.as_ref().expect("status");
    assert!(
        st.launches.iter().any(|b| b.state == LaunchState::Failed
            && b.message
                .as_deref()
                .is_some_and(|m| m.contains("MaxTemplateLimitExceeded"))),
        "a batch Failed with the code: {:?}",
        st.launches
    );
    assert_eq!(fwd.calls("CreateFleet"), 0, "no fleet without a template");

    fwd.remove_rule(quota);
    let mr = wait_request(&env, "quota", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    wait_no_templates(&env, &env.namespace).await;
}

/// Fleet launches of one content share one launch template (two mutating
/// calls saved per launch): three requests at once without coalescing make
/// three CreateFleet and one CreateLaunchTemplate, and no template is
/// deleted while they launch. Their machines carry their own requests' tags
/// from the fleet call. Once the template has been idle for the grace
/// period the operator gives it up and the collector deletes it; the next
/// launch creates a new one.
#[tokio::test]
async fn fleet_requests_share_one_launch_template_until_it_idles() {
    let (env, fwd) = bed("lt-share").await;
    let _op = OperatorProcess::start(
        &env,
        &config(&env, &fwd, "gcGracePeriod: 20s\ncoalesceLaunches: false\n"),
    )
    .await;
    fleet_template(&env, "fleet").await;
    for name in ["a", "b", "c"] {
        create_request(&env, name, "fleet", 2, true).await;
    }
    for name in ["a", "b", "c"] {
        let mr = wait_request(&env, name, "Ready", WAIT, is_ready).await;
        // Machines found by this request's own tags, as the sweep finds them.
        assert_moto_matches_status(&env, &mr).await;
    }
    assert_eq!(fwd.calls("CreateFleet"), 3, "one call per request");
    assert_eq!(fwd.calls("CreateLaunchTemplate"), 1, "one template for all");
    assert_eq!(fwd.calls("DeleteLaunchTemplate"), 0);
    assert_eq!(cluster_templates(&env, &env.namespace).await.len(), 1);

    // Idle past the grace period: given up and collected.
    wait_no_templates(&env, &env.namespace).await;
    assert_eq!(fwd.calls("DeleteLaunchTemplate"), 1);
    create_request(&env, "d", "fleet", 1, true).await;
    wait_request(&env, "d", "Ready", WAIT, is_ready).await;
    assert_eq!(
        fwd.calls("CreateLaunchTemplate"),
        2,
        "a new one after the old was given up"
    );
}

/// A coalesced group's fleet call carries no request tag, only its group's;
/// its launch template is still this namespace's: the same template the
/// requests sent alone use, collected by this (namespaced) operator once
/// idle, so none is left behind.
#[tokio::test]
async fn a_coalesced_fleets_template_is_shared_and_collected() {
    let (env, fwd) = bed("lt-group").await;
    let _op = OperatorProcess::start(&env, &config(&env, &fwd, "gcGracePeriod: 1s\n")).await;
    fleet_template(&env, "fleet").await;
    // The first call is held, so the next two requests queue and share one.
    fwd.add_fault(FaultRule::forward_then_hold("CreateFleet", Duration::from_secs(7)).times(1));
    create_request(&env, "a", "fleet", 1, true).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while fwd.calls("CreateFleet") == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no CreateFleet");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    create_request(&env, "b", "fleet", 2, true).await;
    create_request(&env, "c", "fleet", 3, true).await;
    for name in ["a", "b", "c"] {
        let mr = wait_request(&env, name, "Ready", WAIT, is_ready).await;
        assert_moto_matches_status(&env, &mr).await;
    }
    let calls = fwd.requests("CreateFleet");
    assert!(
        calls.iter().any(|p| p
            .get("ClientToken")
            .is_some_and(|t| t.starts_with("hostforge-lg-"))),
        "a group call: {calls:#?}"
    );
    let ids: std::collections::BTreeSet<&String> = calls
        .iter()
        .filter_map(|p| {
            p.get("LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId")
        })
        .collect();
    assert_eq!(ids.len(), 1, "alone or grouped, one template: {calls:#?}");
    wait_no_templates(&env, &env.namespace).await;
}

/// An instant fleet answering 200 with no instances and only an
/// `InternalError` in its `errorSet` launched nothing, and re-sending its
/// token would replay that answer: the batch is Failed (not Pending and
/// re-sent forever), and a new batch fills the request once EC2 launches.
#[tokio::test]
async fn a_zero_instance_fleet_answer_fails_the_batch() {
    let (env, fwd) = bed("lt-zero").await;
    let _op = OperatorProcess::start(&env, &config(&env, &fwd, "gcGracePeriod: 1s\n")).await;
    fleet_template(&env, "fleet").await;
    fwd.reply_with(
        "CreateFleet",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<CreateFleetResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>7a62c49f-347e-4fc4-9331-6e8eEXAMPLE</requestId>
  <fleetId>fleet-0123456789abcdef0</fleetId>
  <errorSet>
    <item>
      <errorCode>InternalError</errorCode>
      <errorMessage>An internal error has occurred.</errorMessage>
      <lifecycle>on-demand</lifecycle>
    </item>
  </errorSet>
  <fleetInstanceSet/>
</CreateFleetResponse>"#,
    );
    create_request(&env, "zero", "fleet", 1, true).await;
    let mr = wait_request(&env, "zero", "a Failed batch", WAIT, |m| {
        m.status.as_ref().is_some_and(|st| {
            st.launches.iter().any(|b| {
                b.state == LaunchState::Failed
                    && b.message
                        .as_deref()
                        .is_some_and(|msg| msg.contains("InternalError"))
            })
        })
    })
    .await;
    assert!(!is_ready(&mr));
    assert!(
        degraded_message(&mr).contains("InternalError")
            || condition(&mr, "Degraded").is_some_and(|(s, _)| s == "True"),
        "{:?}",
        mr.status
    );

    fwd.clear_reply("CreateFleet");
    let mr = wait_request(&env, "zero", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &mr).await;
    let st = mr.status.as_ref().expect("status");
    assert!(
        st.launches.iter().all(|b| b.state != LaunchState::Pending),
        "{:?}",
        st.launches
    );
    wait_no_templates(&env, &env.namespace).await;
}

/// Deleting a request whose batch is Pending (the operator crashed after EC2
/// launched, before status heard of the machines) while EC2 does not show
/// the new instances yet: the finalizer stays until the batch's machines
/// show and are terminated, so no instance outlives the request.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn deleting_a_request_with_a_pending_batch_leaves_no_instance() {
    use hostforge_testbed::machines::{moto_live, requests, uid};
    use kube::api::DeleteParams;

    let (env, fwd) = bed("lt-delete").await;
    // A long sweep interval: only the first sweep runs, so the orphan
    // collection cannot hide a leak by terminating the machines later.
    let cfg = format!(
        "{}pollInterval: 500ms\nsweepInterval: 10m\ngcGracePeriod: 20s\n",
        default_config(&env, "5m").replace(&env.bed.moto_url, fwd.endpoint())
    );
    create_template(
        &env,
        "compute",
        json!({"image": {"ssmParameter": AL2023_PARAM}, "instanceTypes": [{"type": "t3.micro"}]}),
    )
    .await;
    let mr = create_request(&env, "doomed", "compute", 2, true).await;
    let mut op = OperatorProcess::spawn_with_env(
        &env,
        &cfg,
        &[],
        &[("HOSTFORGE_FAILPOINTS", "request-after-launch")],
    );
    let status = op.wait_exit(WAIT).await;
    assert!(status.is_some_and(|s| !s.success()), "{}", op.log());
    let crashed = requests(&env).get("doomed").await.expect("get");
    let launches = &crashed.status.as_ref().expect("status").launches;
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].state, LaunchState::Pending);
    assert_eq!(moto_live(&env, &uid(&mr)).await.len(), 2);

    // EC2 does not show the fresh instances yet, to tag or id lookups.
    fwd.reply_with(
        "DescribeInstances",
        r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeInstancesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>8f7724cf-496f-496e-8fe3-example</requestId>
  <reservationSet/>
</DescribeInstancesResponse>"#,
    );
    requests(&env)
        .delete("doomed", &DeleteParams::default())
        .await
        .expect("delete");
    let op = OperatorProcess::start(&env, &cfg).await;
    // Until the operator says it waits for the batch (or, wrongly, let go).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match requests(&env).get_opt("doomed").await.expect("get") {
            None => break,
            Some(m) => {
                let ready = m
                    .status
                    .as_ref()
                    .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                if ready.contains("launch batch") {
                    break;
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no deletion progress"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Now EC2 shows them.
    fwd.clear_reply("DescribeInstances");
    let deadline = tokio::time::Instant::now() + WAIT;
    while requests(&env)
        .get_opt("doomed")
        .await
        .expect("get")
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "finalizer never released"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        moto_live(&env, &uid(&mr)).await,
        Default::default(),
        "every instance of the request is terminating by the time it is gone\n{}",
        op.log()
    );
    assert!(fwd.calls("TerminateInstances") >= 1);
}

/// A restart between CreateFleet and the status write, with the EC2
/// fidelity model on (ClientToken registry, tag and id lag, the
/// launch-template lag): the new process has no kept template, so a re-send
/// of the batch would name another one under the same token (EC2 would
/// answer IdempotentParameterMismatch and the batch be settled by its tag).
/// Whichever way the batch settles, the request ends with exactly its
/// machines: one launch for the token, none twice, and the first process's
/// template collected.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_restart_after_a_fleet_launch_settles_it_once_under_ec2s_rules() {
    use hostforge_testbed::forwarder::{Fidelity, Visibility};
    use hostforge_testbed::machines::{moto_live, requests, uid};

    let (env, fwd) = bed("lt-restart").await;
    fwd.enable_fidelity(Fidelity {
        visibility: Visibility {
            by_id: Duration::from_secs(2),
            by_tag: Duration::from_secs(5),
            stale_after_terminate: Duration::from_secs(3),
        },
        launch_template_lag: Duration::from_secs(2),
        ..Fidelity::seeded(19)
    });
    // gcGracePeriod is the operator's allowance for EC2's read lag: it
    // outlasts the 2 s by-id lag, or a young machine could be taken for gone.
    let cfg = config(&env, &fwd, "fullSweepInterval: 2s\ngcGracePeriod: 4s\n");
    fleet_template(&env, "fleet").await;
    let mr = create_request(&env, "restart", "fleet", 3, true).await;
    OperatorProcess::crash_at(&env, &cfg, "request-after-launch", WAIT).await;
    let crashed = requests(&env).get("restart").await.expect("get");
    let launches = &crashed.status.as_ref().expect("status").launches;
    assert_eq!(launches.len(), 1);
    assert_eq!(launches[0].state, LaunchState::Pending);
    let token = launches[0].token.clone();

    let _op = OperatorProcess::start(&env, &cfg).await;
    let done = wait_request(&env, "restart", "Ready", WAIT, is_ready).await;
    assert_moto_matches_status(&env, &done).await;
    assert_eq!(
        moto_live(&env, &uid(&mr)).await.len(),
        3,
        "one set, not two"
    );
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.launches_for(&token), 1, "{counters:?}");
    wait_no_templates(&env, &env.namespace).await;
}

//! The EC2 fidelity model (src/forwarder/fidelity/) against the bed's moto
//! through the real aws-sdk-ec2 client: each piece of EC2 behaviour it
//! models, seen as the SDK sees it, and moto's state behind it.

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    Filter, FleetLaunchTemplateConfigRequest, FleetLaunchTemplateSpecificationRequest,
    RequestLaunchTemplateData,
};
use hostforge_testbed::forwarder::{
    FaultRule, Fidelity, FleetError, KillAtLaunch, RandomProfile, Visibility,
};

use super::*;

/// RunInstances of `count` with a ClientToken, optionally in `subnet`.
async fn launch_with_token(
    ec2: &aws_sdk_ec2::Client,
    ami: &str,
    marker: &str,
    count: i32,
    token: &str,
    subnet: Option<&str>,
) -> Result<Vec<String>, SdkError<RunInstancesError>> {
    let out = ec2
        .run_instances()
        .image_id(ami)
        .instance_type(InstanceType::T3Micro)
        .min_count(1)
        .max_count(count)
        .client_token(token)
        .set_subnet_id(subnet.map(str::to_string))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(clients::MARK).value(marker).build())
                .build(),
        )
        .send()
        .await?;
    Ok(out
        .instances()
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect())
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

fn ids_of(found: Vec<(String, String)>) -> Vec<String> {
    found.into_iter().map(|(id, _)| id).collect()
}

/// Instances a DescribeInstances through `ec2` returns for `filter`.
async fn described(ec2: &aws_sdk_ec2::Client, filter: Filter) -> Vec<aws_sdk_ec2::types::Instance> {
    ec2.describe_instances()
        .filters(filter)
        .send()
        .await
        .expect("DescribeInstances through the forwarder")
        .reservations()
        .iter()
        .flat_map(|r| r.instances().to_vec())
        .collect()
}

fn by_id(id: &str) -> Filter {
    Filter::builder().name("instance-id").values(id).build()
}

fn by_mark(marker: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{}", clients::MARK))
        .values(marker)
        .build()
}

/// Polls `check` every 200 ms until it is true; panics after `bound`.
async fn eventually<F, Fut>(what: &str, bound: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < bound, "not within {bound:?}: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn same_token_replays_the_first_launch_and_other_params_mismatch() {
    let env = TestEnv::new("fid-token").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::default());
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let (subnet, _) = env.default_subnet_and_group().await;
    let token = format!("{}-tok", env.namespace);

    let first = launch_with_token(&ec2, &ami, &env.namespace, 2, &token, Some(&subnet))
        .await
        .expect("first launch");
    let again = launch_with_token(&ec2, &ami, &env.namespace, 2, &token, Some(&subnet))
        .await
        .expect("re-send with the same token");
    assert_eq!(sorted(again), sorted(first.clone()), "the same instances");
    assert_eq!(
        ids_of(in_moto(&env, &env.namespace).await),
        sorted(first.clone()),
        "one set launched"
    );
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.launches_for(&token), 1, "{counters:?}");
    assert_eq!(counters.replays, 1, "{counters:?}");
    assert_eq!(fwd.forwarded("RunInstances"), 1);

    let err = launch_with_token(&ec2, &ami, &env.namespace, 3, &token, Some(&subnet))
        .await
        .expect_err("other parameters under the same token");
    assert_eq!(
        code_and_status(&err),
        ("IdempotentParameterMismatch".to_string(), Some(400))
    );
    assert_eq!(fwd.fidelity_counters().mismatches, 1);

    env.ec2()
        .terminate_instances()
        .set_instance_ids(Some(first.clone()))
        .send()
        .await
        .expect("terminate directly in moto");
    let err = launch_with_token(&ec2, &ami, &env.namespace, 2, &token, Some(&subnet))
        .await
        .expect_err("every instance of the token is terminated");
    assert_eq!(
        code_and_status(&err),
        ("IdempotentInstanceTerminated".to_string(), Some(400))
    );
    assert_eq!(fwd.fidelity_counters().terminated_answers, 1);
    assert_eq!(fwd.forwarded("RunInstances"), 1, "nothing launched again");
}

#[tokio::test]
async fn without_a_subnet_the_token_is_per_zone_and_a_new_zone_launches_again() {
    let env = TestEnv::new("fid-zone").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::seeded(7));
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let token = format!("{}-tok", env.namespace);

    let mut zones = std::collections::BTreeSet::new();
    for _ in 0..8 {
        let ids = launch_with_token(&ec2, &ami, &env.namespace, 2, &token, None)
            .await
            .expect("launch without a subnet");
        let described = env
            .ec2()
            .describe_instances()
            .instance_ids(ids[0].clone())
            .send()
            .await
            .expect("DescribeInstances in moto");
        let zone = described.reservations()[0].instances()[0]
            .placement()
            .and_then(|p| p.availability_zone())
            .expect("zone")
            .to_string();
        zones.insert(zone);
    }
    let launches = fwd.fidelity_counters().launches_for(&token);
    assert!(zones.len() >= 2, "seed 7 draws several zones: {zones:?}");
    assert_eq!(launches, zones.len() as u64, "one launch per zone drawn");
    assert_eq!(
        in_moto(&env, &env.namespace).await.len() as u64,
        2 * launches,
        "each zone's re-send launched a second set"
    );
    assert_eq!(fwd.fidelity_counters().replays, 8 - launches);
}

#[tokio::test]
async fn forward_then_error_loses_the_answer_and_the_retry_replays() {
    let env = TestEnv::new("fid-lost").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::default());
    fwd.add_fault(
        FaultRule::forward_then_error("RunInstances", InjectedError::internal_error()).times(3),
    );
    let ec2 = ec2_fast_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let (subnet, _) = env.default_subnet_and_group().await;
    let token = format!("{}-tok", env.namespace);

    let err = launch_with_token(&ec2, &ami, &env.namespace, 3, &token, Some(&subnet))
        .await
        .expect_err("every attempt's answer is lost");
    assert_eq!(code_and_status(&err), ("InternalError".into(), Some(500)));
    assert_eq!(fwd.calls("RunInstances"), 3, "the SDK tried 3 times");
    let in_moto_now = ids_of(in_moto(&env, &env.namespace).await);
    assert_eq!(in_moto_now.len(), 3, "moto launched once: {in_moto_now:?}");
    let again = launch_with_token(&ec2, &ami, &env.namespace, 3, &token, Some(&subnet))
        .await
        .expect("the rule is used up; the re-send replays");
    assert_eq!(sorted(again), in_moto_now);
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.launches_for(&token), 1, "{counters:?}");
    assert_eq!(counters.misbehaved.get("RunInstances"), Some(&3));
    assert_eq!(counters.replays, 3, "two SDK retries and the re-send");
}

#[tokio::test]
async fn forward_then_drop_closes_the_connection_after_moto_acted() {
    let env = TestEnv::new("fid-drop").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.add_fault(FaultRule::forward_then_drop("RunInstances").times(1));
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let err = launch(&ec2, &ami, "t3.micro", &env.namespace, 2)
        .await
        .expect_err("no answer");
    assert!(
        matches!(err, SdkError::DispatchFailure(_)),
        "a lost connection: {err:?}"
    );
    assert_eq!(in_moto(&env, &env.namespace).await.len(), 2, "moto acted");
}

#[tokio::test]
async fn partial_run_instances_launches_fewer_than_max_count() {
    let env = TestEnv::new("fid-partial").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.add_fault(FaultRule::partial_run_instances(1).times(1));
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let ids = launch(&ec2, &ami, "t3.micro", &env.namespace, 3)
        .await
        .expect("a partial launch is a success");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(in_moto(&env, &env.namespace).await.len(), 1);
    assert_eq!(
        fwd.requests("RunInstances")[0]
            .get("MaxCount")
            .map(String::as_str),
        Some("3")
    );
    assert_eq!(fwd.fidelity_counters().partial_launches, 1);
}

async fn fleet_template(ec2: &aws_sdk_ec2::Client, name: &str, ami: &str) {
    ec2.create_launch_template()
        .launch_template_name(name)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .image_id(ami)
                .instance_type(InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplate");
}

async fn instant_fleet(
    ec2: &aws_sdk_ec2::Client,
    template: &str,
    count: i32,
    token: &str,
) -> aws_sdk_ec2::operation::create_fleet::CreateFleetOutput {
    ec2.create_fleet()
        .r#type(FleetType::Instant)
        .client_token(token)
        .launch_template_configs(
            FleetLaunchTemplateConfigRequest::builder()
                .launch_template_specification(
                    FleetLaunchTemplateSpecificationRequest::builder()
                        .launch_template_name(template)
                        .version("$Latest")
                        .build(),
                )
                .overrides(
                    FleetLaunchTemplateOverridesRequest::builder()
                        .instance_type(InstanceType::T3Micro)
                        .build(),
                )
                .build(),
        )
        .target_capacity_specification(
            TargetCapacitySpecificationRequest::builder()
                .total_target_capacity(count)
                .on_demand_target_capacity(count)
                .default_target_capacity_type(DefaultTargetCapacityType::OnDemand)
                .build(),
        )
        .send()
        .await
        .expect("CreateFleet answers 200")
}

fn fleet_ids(out: &aws_sdk_ec2::operation::create_fleet::CreateFleetOutput) -> Vec<String> {
    sorted(
        out.instances()
            .iter()
            .flat_map(|i| i.instance_ids().to_vec())
            .collect(),
    )
}

#[tokio::test]
async fn fleets_answer_partial_and_zero_instance_error_sets_and_replay_them() {
    let env = TestEnv::new("fid-fleet").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::default());
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let template = format!("{}-lt", env.namespace);
    fleet_template(&ec2, &template, &ami).await;

    fwd.add_fault(FaultRule::partial_fleet(1, FleetError::insufficient_capacity()).times(1));
    let partial = instant_fleet(&ec2, &template, 3, &format!("{}-a", env.namespace)).await;
    assert_eq!(fleet_ids(&partial).len(), 1, "{partial:?}");
    let errors = partial.errors();
    assert_eq!(errors.len(), 1, "{partial:?}");
    assert_eq!(errors[0].error_code(), Some("InsufficientInstanceCapacity"));
    assert_eq!(errors[0].lifecycle().map(|l| l.as_str()), Some("on-demand"));
    let spec = errors[0]
        .launch_template_and_overrides()
        .and_then(|o| o.launch_template_specification())
        .expect("the failing template is named");
    assert_eq!(spec.launch_template_name(), Some(template.as_str()));
    assert_eq!(
        errors[0]
            .launch_template_and_overrides()
            .and_then(|o| o.overrides())
            .and_then(|o| o.instance_type())
            .map(|t| t.as_str()),
        Some("t3.micro")
    );
    let sent = fwd.requests("CreateFleet");
    assert_eq!(
        sent[0]
            .get("TargetCapacitySpecification.TotalTargetCapacity")
            .map(String::as_str),
        Some("3"),
        "the client asked for 3"
    );

    fwd.add_fault(
        FaultRule::zero_fleet(FleetError::new("InternalError", "An internal error")).times(1),
    );
    let zero_token = format!("{}-b", env.namespace);
    let zero = instant_fleet(&ec2, &template, 2, &zero_token).await;
    assert!(fleet_ids(&zero).is_empty(), "{zero:?}");
    assert_eq!(zero.errors()[0].error_code(), Some("InternalError"));
    let fleet_id = zero.fleet_id().expect("a fleet id").to_string();
    let replayed = instant_fleet(&ec2, &template, 2, &zero_token).await;
    assert_eq!(
        replayed.fleet_id(),
        Some(fleet_id.as_str()),
        "replayed under its token"
    );
    assert!(fleet_ids(&replayed).is_empty());
    assert_eq!(
        in_moto(&env, &env.namespace).await.len(),
        0,
        "fleets carry no marker tag"
    );
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.zero_fleets, 1, "{counters:?}");
    assert_eq!(counters.replays, 1, "{counters:?}");
    assert_eq!(counters.launches_for(&zero_token), 0, "never forwarded");
    assert_eq!(fwd.forwarded("CreateFleet"), 1);
}

#[tokio::test]
async fn fresh_instances_are_hidden_by_id_then_by_tag_and_terminate_says_not_found() {
    let env = TestEnv::new("fid-visible").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.set_visibility(Visibility {
        by_id: Duration::from_secs(2),
        by_tag: Duration::from_secs(3600),
        stale_after_terminate: Duration::ZERO,
    });
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let ids = launch(&ec2, &ami, "t3.micro", &env.namespace, 1)
        .await
        .expect("launch");
    let id = ids[0].clone();
    // Right after the launch answer (well inside 2 s even on a slow machine
    // is not guaranteed, so only the lasting windows are asserted strictly).
    let err = ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .err();
    let not_found = fwd.fidelity_counters().terminate_not_found;
    if let Some(err) = &err {
        assert_eq!(
            code_and_status(err),
            ("InvalidInstanceID.NotFound".into(), Some(400))
        );
        assert_eq!(not_found, 1);
        assert_eq!(fwd.forwarded("TerminateInstances"), 0, "not forwarded");
    }
    eventually("visible by id", Duration::from_secs(60), || async {
        !described(&ec2, by_id(&id)).await.is_empty()
    })
    .await;
    assert!(
        described(&ec2, by_mark(&env.namespace)).await.is_empty(),
        "still hidden from the tag listing"
    );
    assert!(fwd.fidelity_counters().hidden_by_tag >= 1);
    fwd.hide_from_tag_listings([id.clone()]);
    fwd.set_visibility(Visibility::default());
    assert!(
        described(&ec2, by_mark(&env.namespace)).await.is_empty(),
        "chosen id hidden"
    );
    fwd.show_in_tag_listings();
    assert_eq!(described(&ec2, by_mark(&env.namespace)).await.len(), 1);
}

#[tokio::test]
async fn terminate_keeps_the_old_state_visible_for_a_while() {
    let env = TestEnv::new("fid-stale").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.set_visibility(Visibility {
        stale_after_terminate: Duration::from_secs(3600),
        ..Visibility::default()
    });
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let id = launch(&ec2, &ami, "t3.micro", &env.namespace, 1)
        .await
        .expect("launch")[0]
        .clone();
    ec2.terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("terminate");
    let seen = described(&ec2, by_id(&id)).await;
    let state = seen[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string());
    assert_eq!(state.as_deref(), Some("running"), "stale: {seen:?}");
    let in_moto_state = env
        .ec2()
        .describe_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("moto")
        .reservations()[0]
        .instances()[0]
        .state()
        .and_then(|s| s.name())
        .map(|n| n.as_str().to_string());
    assert_ne!(
        in_moto_state.as_deref(),
        Some("running"),
        "moto terminated it"
    );
    assert_eq!(fwd.fidelity_counters().stale_states, 1);
}

#[tokio::test]
async fn instances_die_at_launch_with_their_state_reason() {
    let env = TestEnv::new("fid-death").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.kill_at_launch(Some(
        KillAtLaunch::all(
            "Client.InvalidKMSKey.InvalidState",
            "Client.InvalidKMSKey.InvalidState: The KMS key provided is in an incorrect state",
        )
        .first(1)
        .after(Duration::from_millis(500))
        .launches(1),
    ));
    let ec2 = ec2_no_retry(fwd.endpoint());
    let ami = env.al2023_ami().await;
    let ids = launch(&ec2, &ami, "t3.micro", &env.namespace, 2)
        .await
        .expect("launch");
    let dead = ids[0].clone();
    eventually(
        "the first instance died",
        Duration::from_secs(60),
        || async { fwd.fidelity_counters().deaths == 1 },
    )
    .await;
    let seen = described(&ec2, by_mark(&env.namespace)).await;
    let dead_one = seen
        .iter()
        .find(|i| i.instance_id() == Some(dead.as_str()))
        .expect("the dead one is listed");
    assert_eq!(
        dead_one.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("terminated")
    );
    assert_eq!(
        dead_one.state_reason().and_then(|r| r.code()),
        Some("Client.InvalidKMSKey.InvalidState")
    );
    let alive = seen
        .iter()
        .find(|i| i.instance_id() == Some(ids[1].as_str()))
        .expect("the other is listed");
    assert_eq!(
        alive.state().and_then(|s| s.name()).map(|n| n.as_str()),
        Some("running")
    );
}

/// A client in a Region of its own, so the account's template count there
/// is this test's alone.
fn ec2_in(endpoint: &str, region: &'static str) -> aws_sdk_ec2::Client {
    let conf = hostforge_testbed::ec2_client(endpoint)
        .config()
        .to_builder()
        .region(aws_sdk_ec2::config::Region::from_static(region))
        .retry_config(RetryConfig::disabled())
        .build();
    aws_sdk_ec2::Client::from_conf(conf)
}

#[tokio::test]
async fn launch_templates_hit_the_quota_and_lag_after_create() {
    let env = TestEnv::new("fid-lt").await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let ec2 = ec2_in(fwd.endpoint(), "eu-west-3");
    let held = ec2
        .describe_launch_templates()
        .send()
        .await
        .expect("DescribeLaunchTemplates")
        .launch_templates()
        .len();
    fwd.set_launch_template_quota(Some(held + 1));
    fwd.set_launch_template_lag(Duration::from_secs(3600));
    let data = || {
        RequestLaunchTemplateData::builder()
            .instance_type(InstanceType::T3Micro)
            .build()
    };
    let first = format!("{}-1", env.namespace);
    ec2.create_launch_template()
        .launch_template_name(&first)
        .launch_template_data(data())
        .send()
        .await
        .expect("under the quota");
    let err = ec2
        .create_launch_template()
        .launch_template_name(format!("{}-2", env.namespace))
        .launch_template_data(data())
        .send()
        .await
        .expect_err("at the quota");
    assert_eq!(
        code_and_status(&err),
        ("MaxTemplateLimitExceeded".into(), Some(400))
    );
    let err = ec2
        .delete_launch_template()
        .launch_template_name(&first)
        .send()
        .await
        .expect_err("just created");
    assert_eq!(
        code_and_status(&err),
        (
            "InvalidLaunchTemplateName.NotFoundException".into(),
            Some(400)
        )
    );
    fwd.set_launch_template_lag(Duration::ZERO);
    ec2.delete_launch_template()
        .launch_template_name(&first)
        .send()
        .await
        .expect("after the lag");
    let counters = fwd.fidelity_counters();
    assert_eq!(counters.template_quota_refusals, 1, "{counters:?}");
    assert_eq!(counters.template_lag_refusals, 1, "{counters:?}");
}

#[tokio::test]
async fn the_random_profile_is_deterministic_for_a_seed() {
    // Two forwarders, same seed, same call sequence: same faults.
    let env = TestEnv::new("fid-random").await;
    let ami = env.al2023_ami().await;
    let mut outcomes = Vec::new();
    for _ in 0..2 {
        let fwd = Forwarder::start(&env.bed.moto_url);
        let mut profile = Fidelity::random(11);
        profile.visibility = Visibility::default();
        profile.random = Some(RandomProfile {
            forward_then_500: 0.3,
            forward_then_drop: 0.2,
            partial: 0.3,
            death: 0.0,
        });
        fwd.enable_fidelity(profile);
        let ec2 = ec2_no_retry(fwd.endpoint());
        let mut seen = Vec::new();
        for _ in 0..12 {
            seen.push(
                match launch(&ec2, &ami, "t3.micro", &env.namespace, 4).await {
                    Ok(ids) => format!("ok {}", ids.len()),
                    Err(e) => format!("err {:?}", code_and_status(&e).1),
                },
            );
        }
        outcomes.push(seen);
    }
    assert_eq!(outcomes[0], outcomes[1]);
    assert!(
        outcomes[0].iter().any(|o| o != "ok 4"),
        "the profile injected something: {:?}",
        outcomes[0]
    );
}

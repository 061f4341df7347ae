//! Subnets and security groups chosen by tags (`spec.subnetSelector`,
//! `spec.securityGroupSelector`): the template controller lists them through
//! the provider (DescribeSubnets / DescribeSecurityGroups with `tag:` and
//! `tag-key` filters), shows them in status with their zones, and launches
//! use them as ids on both paths; a selector matching nothing holds requests
//! with a reason, and a resource tagged later is picked up within
//! `selectorRefreshInterval`. Real apiserver, an operator child process, moto
//! behind the recording forwarder.

use std::collections::BTreeSet;
use std::time::Duration;

use hostforge::api::{MachineRequest, MachineTemplate};
use hostforge_testbed::forwarder::Forwarder;
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, template_ready, wait_request, wait_template,
};
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{OperatorProcess, TestEnv, AL2023_PARAM};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);

async fn bed(name: &str) -> (TestEnv, Forwarder, OperatorProcess) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    let config = config_via(&env, &fwd, "5s", "selectorRefreshInterval: 2s\n");
    let op = OperatorProcess::start(&env, &config).await;
    (env, fwd, op)
}

/// The default VPC's subnets as (zone, id), sorted, and the VPC's id.
async fn default_subnets(env: &TestEnv) -> (Vec<(String, String)>, String) {
    let out = env
        .ec2()
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("default-for-az")
                .values("true")
                .build(),
        )
        .send()
        .await
        .expect("DescribeSubnets");
    let mut subnets: Vec<(String, String)> = out
        .subnets()
        .iter()
        .map(|s| {
            (
                s.availability_zone().expect("zone").to_string(),
                s.subnet_id().expect("id").to_string(),
            )
        })
        .collect();
    subnets.sort();
    let vpc = out.subnets()[0].vpc_id().expect("vpc").to_string();
    assert!(
        subnets.len() >= 3,
        "moto's default VPC has a subnet per zone"
    );
    (subnets, vpc)
}

async fn tag(env: &TestEnv, id: &str, key: &str, value: &str) {
    env.ec2()
        .create_tags()
        .resources(id)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key(key)
                .value(value)
                .build(),
        )
        .send()
        .await
        .expect("CreateTags");
}

/// A security group in `vpc` tagged `key=value`.
async fn tagged_group(env: &TestEnv, vpc: &str, name: &str, key: &str, value: &str) -> String {
    let id = env
        .ec2()
        .create_security_group()
        .group_name(name)
        .description("hostforge selector test")
        .vpc_id(vpc)
        .send()
        .await
        .expect("CreateSecurityGroup")
        .group_id()
        .expect("group id")
        .to_string();
    tag(env, &id, key, value).await;
    id
}

fn selected(mt: &MachineTemplate) -> (Vec<(String, String)>, Vec<String>) {
    let st = mt.status.clone().unwrap_or_default();
    (
        st.selected_subnets
            .iter()
            .map(|s| (s.zone.clone().unwrap_or_default(), s.id.clone()))
            .collect(),
        st.selected_security_groups
            .iter()
            .map(|g| g.id.clone())
            .collect(),
    )
}

fn spec(api: &str, key: &str, value: &str) -> serde_json::Value {
    json!({
        "image": {"ssmParameter": AL2023_PARAM},
        "providerApi": api,
        "instanceTypes": [{"type": "t3.micro"}],
        "subnetSelector": {"tags": {key: value}},
        "securityGroupSelector": {"tags": {key: "*"}},
    })
}

/// Both selectors resolve into status (zone order), both launch paths use
/// exactly the selected ids, and a subnet tagged afterwards joins the
/// selection without any change to the template.
#[tokio::test]
async fn subnets_and_groups_chosen_by_tags_are_launched_into() {
    let (env, fwd, _op) = bed("sel-launch").await;
    let key = format!("hostforge-test/{}", env.namespace);
    let (subnets, vpc) = default_subnets(&env).await;
    // The second and third zones are tagged "hpc", the first "other".
    tag(&env, &subnets[2].1, &key, "hpc").await;
    tag(&env, &subnets[1].1, &key, "hpc").await;
    tag(&env, &subnets[0].1, &key, "other").await;
    let sg = tagged_group(&env, &vpc, &format!("{}-sg", env.namespace), &key, "any").await;

    create_template(&env, "run", spec("RunInstances", &key, "hpc")).await;
    create_template(&env, "fleet", spec("EC2Fleet", &key, "hpc")).await;
    for name in ["run", "fleet"] {
        let mt = wait_template(&env, name, "Ready", WAIT, |mt| {
            template_ready(mt).is_some_and(|(s, _, _)| s == "True")
        })
        .await;
        assert_eq!(
            selected(&mt),
            (
                vec![subnets[1].clone(), subnets[2].clone()],
                vec![sg.clone()]
            ),
            "{name}: selected by zone, then id; groups by id"
        );
    }

    create_request(&env, "r", "run", 2, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    let run = fwd
        .requests("RunInstances")
        .pop()
        .expect("a RunInstances call");
    assert_eq!(
        run.get("SubnetId"),
        Some(&subnets[1].1),
        "the first selected subnet: {run:#?}"
    );
    assert_eq!(run.get("SecurityGroupId.1"), Some(&sg), "{run:#?}");
    assert!(!run.contains_key("SecurityGroupId.2"), "{run:#?}");

    create_request(&env, "f", "fleet", 2, false).await;
    wait_request(&env, "f", "Ready", WAIT, is_ready).await;
    let fleet = fwd
        .requests("CreateFleet")
        .pop()
        .expect("a CreateFleet call");
    let overrides: BTreeSet<&String> = fleet
        .iter()
        .filter(|(k, _)| {
            k.starts_with("LaunchTemplateConfigs.1.Overrides.") && k.ends_with(".SubnetId")
        })
        .map(|(_, v)| v)
        .collect();
    assert_eq!(
        overrides,
        BTreeSet::from([&subnets[1].1, &subnets[2].1]),
        "one override per selected subnet: {fleet:#?}"
    );
    let template = fwd
        .requests("CreateLaunchTemplate")
        .pop()
        .expect("the fleet's launch template");
    assert_eq!(
        template.get("LaunchTemplateData.SecurityGroupId.1"),
        Some(&sg),
        "{template:#?}"
    );

    // Tagged later: picked up within selectorRefreshInterval (2 s here).
    tag(&env, &subnets[0].1, &key, "hpc").await;
    let mt = wait_template(&env, "run", "the new subnet selected", WAIT, |mt| {
        selected(mt).0.len() == 3
    })
    .await;
    assert_eq!(selected(&mt).0, subnets[..3].to_vec());
    // What the machines run in is what status says.
    let r: MachineRequest = wait_request(&env, "r", "status", WAIT, |_| true).await;
    for m in &r.status.expect("status").machines {
        assert!(
            [&subnets[1].0, &subnets[2].0].contains(&m.availability_zone.as_ref().expect("zone")),
            "{m:?}"
        );
    }
}

/// A selector that matches nothing: the template is not Ready with a reason
/// naming the tags, its request launches nothing and waits, and tagging a
/// subnet lets it go without touching either object.
#[tokio::test]
async fn a_selector_matching_nothing_holds_requests_until_a_subnet_is_tagged() {
    let (env, fwd, _op) = bed("sel-none").await;
    let key = format!("hostforge-test/{}", env.namespace);
    let (subnets, _) = default_subnets(&env).await;
    create_template(
        &env,
        "t",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "subnetSelector": {"tags": {key.clone(): "batch"}},
        }),
    )
    .await;
    let mt = wait_template(&env, "t", "SubnetNotFound", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, r, _)| s == "False" && r == "SubnetNotFound")
    })
    .await;
    let (_, _, message) = template_ready(&mt).expect("Ready");
    assert_eq!(
        message,
        format!(
            "spec.subnetSelector: no subnet carries the tags {key}=batch in provider aws-default"
        )
    );
    assert_eq!(selected(&mt), (vec![], vec![]));
    create_request(&env, "r", "t", 1, false).await;
    wait_request(&env, "r", "TemplateNotReady", WAIT, |mr| {
        mr.status.as_ref().is_some_and(|st| {
            st.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "TemplateNotReady")
        })
    })
    .await;
    assert!(fwd.requests("RunInstances").is_empty(), "nothing launched");

    tag(&env, &subnets[1].1, &key, "batch").await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    let run = fwd
        .requests("RunInstances")
        .pop()
        .expect("a RunInstances call");
    assert_eq!(run.get("SubnetId"), Some(&subnets[1].1), "{run:#?}");
}

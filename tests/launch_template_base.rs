//! A user's own launch template as the base of every launch
//! (`spec.launchTemplate`) and attribute-based instance types
//! (`spec.instanceRequirements`), end to end: the real apiserver, an
//! operator child process and moto behind the test forwarder, which records
//! every call's decoded parameters.
//!
//! The user's template is created in moto by each test. moto resolves
//! `$Latest`/`$Default` in DescribeLaunchTemplateVersions and launches from a
//! named template in RunInstances and CreateFleet, so those run for real.
//! moto does not honour `InstanceRequirements` in a CreateFleet override (it
//! needs an `InstanceType`): the forwarder models EC2's answer (see
//! `testbed/src/forwarder/requirements.rs`) by picking the types that match
//! from its instance type table and rewriting the request moto sees.

use std::time::Duration;

use aws_sdk_ec2::types::{
    LaunchTemplateTagSpecificationRequest, RequestLaunchTemplateData, ResourceType, Tag,
};
use hostforge::api::MachineTemplate;
use hostforge_testbed::forwarder::assert_params;
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, template_ready, wait_request, wait_template,
};
use hostforge_testbed::operator::launch_bed;
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// Creates a launch template in moto (straight, not through the forwarder)
/// whose data tags instances with `tags`, and returns its id.
async fn user_template(env: &TestEnv, name: &str, sg: &str, tags: &[(&str, &str)]) -> String {
    let mut data = RequestLaunchTemplateData::builder().security_group_ids(sg);
    if !tags.is_empty() {
        // moto fails (500) on a tag specification without tags.
        let mut spec =
            LaunchTemplateTagSpecificationRequest::builder().resource_type(ResourceType::Instance);
        for (k, v) in tags {
            spec = spec.tags(Tag::builder().key(*k).value(*v).build());
        }
        data = data.tag_specifications(spec.build());
    }
    let out = env
        .ec2()
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(data.build())
        .send()
        .await
        .expect("CreateLaunchTemplate on moto");
    out.launch_template()
        .and_then(|t| t.launch_template_id())
        .expect("an id")
        .to_string()
}

/// The template's status.launchTemplate as JSON (null when absent).
fn resolved(mt: &MachineTemplate) -> Value {
    serde_json::to_value(mt.status.as_ref().and_then(|s| s.launch_template.clone())).expect("json")
}

/// RunInstances names the user's template at the resolved version number,
/// with hostforge's image, type, subnet and tags on top; the template status
/// and the batch show the version; a new version named by the spec is
/// resolved again.
#[tokio::test]
async fn run_instances_launches_from_the_users_template_at_its_resolved_version() {
    let (env, fwd, _op) = launch_bed("ltb-run").await;
    let (subnet, sg) = env.default_subnet_and_group().await;
    let name = format!("base-{}", env.namespace);
    let lt = user_template(&env, &name, &sg, &[("team", "hpc")]).await;
    create_template(
        &env,
        "lt",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "subnetIds": [subnet],
            "launchTemplate": {"name": name},
        }),
    )
    .await;
    let mt = wait_template(&env, "lt", "Ready=True", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let r = resolved(&mt);
    assert_eq!(r["id"], json!(lt), "{r}");
    assert_eq!(r["name"], json!(name), "{r}");
    assert_eq!(
        r["version"],
        json!(1),
        "$Default resolved to its number: {r}"
    );

    create_request(&env, "r", "lt", 1, false).await;
    let mr = wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    let call = fwd.last_request("RunInstances");
    let ami = env.al2023_ami().await;
    assert_params(
        &call,
        &[
            ("LaunchTemplate.LaunchTemplateId", &lt),
            ("LaunchTemplate.Version", "1"),
            ("ImageId", &ami),
            ("InstanceType", "t3.micro"),
            ("SubnetId", &subnet),
            ("TagSpecification.1.ResourceType", "instance"),
        ],
        &["LaunchTemplate.LaunchTemplateName"],
    );
    // The template controller's dry run names the same template and version.
    assert_params(
        &fwd.last_request("RunInstances:DryRun"),
        &[
            ("LaunchTemplate.LaunchTemplateId", &lt),
            ("LaunchTemplate.Version", "1"),
            ("ImageId", &ami),
        ],
        &[],
    );
    let batch = &mr.status.as_ref().expect("status").launches[0];
    let pinned = serde_json::to_value(&batch.launch_template).expect("json");
    assert_eq!(pinned, json!({"id": lt, "version": 1}));
    // The template was reconciled at every change of its request; the
    // version is described once per imageCacheTtl (5m here).
    assert_eq!(fwd.calls("DescribeLaunchTemplateVersions"), 1);

    // A second version, then the spec naming it: resolved again.
    env.ec2()
        .create_launch_template_version()
        .launch_template_id(&lt)
        .launch_template_data(
            RequestLaunchTemplateData::builder()
                .security_group_ids(&sg)
                .build(),
        )
        .send()
        .await
        .expect("CreateLaunchTemplateVersion on moto");
    Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .patch(
            "lt",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"launchTemplate": {"version": "$Latest"}}})),
        )
        .await
        .expect("patch the template");
    wait_template(&env, "lt", "launchTemplate version 2", WAIT, |mt| {
        resolved(mt)["version"] == json!(2)
    })
    .await;
}

/// EC2 Fleet names the user's template (no hostforge template is created)
/// with the type, subnet, image and metadata on each override and every tag
/// in CreateFleet's own TagSpecifications; the machines run.
#[tokio::test]
async fn a_fleet_launches_from_the_users_template_with_hostforges_overrides() {
    let (env, fwd, _op) = launch_bed("ltb-fleet").await;
    let (subnet, sg) = env.default_subnet_and_group().await;
    let lt = user_template(&env, &format!("fleet-{}", env.namespace), &sg, &[]).await;
    create_template(
        &env,
        "lt",
        json!({
            "providerApi": "EC2Fleet",
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
            "subnetIds": [subnet],
            "keyName": "ops",
            "launchTemplate": {"id": lt, "version": "1"},
        }),
    )
    .await;
    create_request(&env, "r", "lt", 2, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;

    let ami = env.al2023_ami().await;
    let fleet = fwd.last_request("CreateFleet");
    let o = |i: usize, k: &str| format!("LaunchTemplateConfigs.1.Overrides.{i}.{k}");
    assert_params(
        &fleet,
        &[
            ("Type", "instant"),
            (
                "LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId",
                &lt,
            ),
            (
                "LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version",
                "1",
            ),
            (&o(1, "InstanceType"), "t3.micro"),
            (&o(1, "SubnetId"), &subnet),
            (&o(1, "ImageId"), &ami),
            (&o(1, "KeyName"), "ops"),
            (&o(1, "MetadataOptions.HttpTokens"), "required"),
            (&o(2, "InstanceType"), "t3.small"),
            (&o(2, "ImageId"), &ami),
            ("TagSpecification.1.ResourceType", "instance"),
        ],
        &[],
    );
    assert_eq!(
        fwd.calls("CreateLaunchTemplate"),
        0,
        "the user's template is the fleet's"
    );
    assert_eq!(fwd.calls("CreateLaunchTemplate:DryRun"), 0);
    assert_params(
        &fwd.last_request("RunInstances:DryRun"),
        &[
            ("LaunchTemplate.LaunchTemplateId", &lt),
            ("LaunchTemplate.Version", "1"),
            ("InstanceType", "t3.micro"),
            ("KeyName", "ops"),
        ],
        &[],
    );
}

/// A template that does not exist keeps the MachineTemplate Ready=False
/// (LaunchTemplateNotFound, naming it); one that tags instances with
/// hostforge.io/ keys is refused (LaunchTemplateRefused, naming the key).
#[tokio::test]
async fn a_missing_or_owner_tagging_template_keeps_the_machine_template_not_ready() {
    let (env, _fwd, _op) = launch_bed("ltb-bad").await;
    let (_, sg) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "missing",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "launchTemplate": {"name": format!("absent-{}", env.namespace)},
        }),
    )
    .await;
    let mt = wait_template(&env, "missing", "Ready=False", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let (_, reason, message) = template_ready(&mt).expect("condition");
    assert_eq!(reason, "LaunchTemplateNotFound", "{message}");
    assert!(
        message.contains("spec.launchTemplate") && message.contains("absent-"),
        "{message}"
    );
    assert_eq!(resolved(&mt), Value::Null);

    let name = format!("owned-{}", env.namespace);
    user_template(&env, &name, &sg, &[("hostforge.io/cluster", "someone")]).await;
    create_template(
        &env,
        "owned",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "launchTemplate": {"name": name},
        }),
    )
    .await;
    let mt = wait_template(&env, "owned", "Ready=False", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let (_, reason, message) = template_ready(&mt).expect("condition");
    assert_eq!(reason, "LaunchTemplateRefused", "{message}");
    assert!(message.contains("hostforge.io/cluster"), "{message}");
}

/// Attribute-based types: CreateFleet carries InstanceRequirements on one
/// override per subnet (no InstanceType), and the machines EC2 picked (here
/// the forwarder's model of EC2) show types that satisfy them in status.
#[tokio::test]
async fn a_fleet_by_instance_requirements_launches_matching_types() {
    let (env, fwd, _op) = launch_bed("ltb-abs").await;
    fwd.model_instance_requirements();
    let (subnet, _) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "abs",
        json!({
            "providerApi": "EC2Fleet",
            "image": {"ssmParameter": AL2023_PARAM},
            "subnetIds": [subnet],
            "instanceRequirements": {
                "vcpuCount": {"min": 2, "max": 2},
                "memoryMiB": {"min": 4096, "max": 8192},
                "burstablePerformance": "excluded",
                "cpuManufacturers": ["intel"],
                "excludedInstanceTypes": ["m5.*"],
            },
        }),
    )
    .await;
    create_request(&env, "r", "abs", 2, false).await;
    let mr = wait_request(&env, "r", "Ready", WAIT, is_ready).await;

    let fleet = fwd.last_request("CreateFleet");
    let o = |k: &str| format!("LaunchTemplateConfigs.1.Overrides.1.{k}");
    assert_params(
        &fleet,
        &[
            (&o("SubnetId"), &subnet),
            (&o("InstanceRequirements.VCpuCount.Min"), "2"),
            (&o("InstanceRequirements.VCpuCount.Max"), "2"),
            (&o("InstanceRequirements.MemoryMiB.Min"), "4096"),
            (&o("InstanceRequirements.MemoryMiB.Max"), "8192"),
            (&o("InstanceRequirements.BurstablePerformance"), "excluded"),
            (&o("InstanceRequirements.CpuManufacturer.1"), "intel"),
            (&o("InstanceRequirements.ExcludedInstanceType.1"), "m5.*"),
            ("OnDemandOptions.AllocationStrategy", "lowest-price"),
        ],
        &[
            &o("InstanceType"),
            &o("Priority"),
            "LaunchTemplateConfigs.1.Overrides.2.SubnetId",
        ],
    );
    // No single type exists before EC2 picks one: the dry run is the
    // fleet template's alone.
    assert!(fwd.calls("CreateLaunchTemplate:DryRun") >= 1);
    assert_eq!(fwd.calls("RunInstances:DryRun"), 0);
    let status = mr.status.as_ref().expect("status");
    assert_eq!(status.machines.len(), 2, "{status:?}");
    for m in &status.machines {
        let t = m.instance_type.as_deref().expect("a type in status");
        // The types of the forwarder's table with 2 vCPUs, 4-8 GiB, an
        // Intel CPU, not burstable and not m5.*.
        assert!(
            ["c5.large", "c6i.large", "m6i.large", "m4.large"].contains(&t),
            "{t} does not satisfy the requirements"
        );
    }
}

//! The launch options of a MachineTemplate (placement group, partition,
//! tenancy, EBS optimization, public IP, CPU options, data volumes, the fleet
//! spend cap) reach EC2 exactly as its API documents them, on both launch
//! paths: the real apiserver, an operator child process and moto behind the
//! test forwarder, which records every call's decoded parameters.
//!
//! moto (5.x) has no placement groups: the forwarder answers
//! DescribePlacementGroups from the groups a test declares, as EC2 does
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribePlacementGroups.html>).
//! moto accepts the other options without acting on most of them (placement,
//! tenancy, CPU options, the spend cap), so they are checked by parameters.
//! moto also drops `Ebs.Iops` of a RunInstances block device and then refuses
//! io1 and io2 for lacking it, so the volumes here are gp3 (io2 mapping is
//! covered by the unit tests of the request builders).

use std::time::Duration;

use hostforge::api::MachineTemplate;
use hostforge_testbed::forwarder::{assert_params, PlacementGroup};
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, template_ready, wait_request, wait_template,
};
use hostforge_testbed::operator::launch_bed;
use hostforge_testbed::AL2023_PARAM;
use kube::api::{Patch, PatchParams};
use kube::Api;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(120);

/// Every launch option but the spend cap, into `subnet` with group `sg`.
fn options(subnet: &str, sg: &str, group: &str) -> Value {
    json!({
        "image": {"ssmParameter": AL2023_PARAM},
        "instanceTypes": [{"type": "t3.micro"}],
        "subnetIds": [subnet],
        "securityGroupIds": [sg],
        "rootVolume": {"sizeGiB": 12},
        "placement": {"groupName": group, "partitionNumber": 2, "tenancy": "dedicated"},
        "ebsOptimized": true,
        "associatePublicIpAddress": true,
        "cpuOptions": {"coreCount": 1, "threadsPerCore": 1},
        "dataVolumes": [
            {"deviceName": "/dev/sdf", "sizeGiB": 20, "type": "gp3", "iops": 4000},
            {"deviceName": "/dev/sdg", "sizeGiB": 10, "throughput": 250,
             "encrypted": false, "deleteOnTermination": false},
        ],
    })
}

/// The parameters every launch option turns into, under `prefix` (empty for
/// RunInstances, `LaunchTemplateData.` for the fleet's template). Block
/// device mapping 1 is the root volume, the data volumes follow in order.
fn option_params(prefix: &str, list: &str) -> Vec<(String, String)> {
    let p = |k: &str| format!("{prefix}{k}");
    let bdm = |i: usize, k: &str| format!("{prefix}BlockDeviceMapping.{i}.{k}");
    vec![
        (bdm(1, "Ebs.VolumeSize"), "12".into()),
        (p("Placement.GroupName"), "hpc".into()),
        (p("Placement.PartitionNumber"), "2".into()),
        (p("Placement.Tenancy"), "dedicated".into()),
        (p("EbsOptimized"), "true".into()),
        (p("CpuOptions.CoreCount"), "1".into()),
        (p("CpuOptions.ThreadsPerCore"), "1".into()),
        (p(&format!("{list}.1.DeviceIndex")), "0".into()),
        (
            p(&format!("{list}.1.AssociatePublicIpAddress")),
            "true".into(),
        ),
        (p(&format!("{list}.1.DeleteOnTermination")), "true".into()),
        (bdm(2, "DeviceName"), "/dev/sdf".into()),
        (bdm(2, "Ebs.VolumeSize"), "20".into()),
        (bdm(2, "Ebs.VolumeType"), "gp3".into()),
        (bdm(2, "Ebs.Iops"), "4000".into()),
        (bdm(2, "Ebs.Encrypted"), "true".into()),
        (bdm(2, "Ebs.DeleteOnTermination"), "true".into()),
        (bdm(3, "DeviceName"), "/dev/sdg".into()),
        (bdm(3, "Ebs.VolumeSize"), "10".into()),
        (bdm(3, "Ebs.VolumeType"), "gp3".into()),
        (bdm(3, "Ebs.Throughput"), "250".into()),
        (bdm(3, "Ebs.Encrypted"), "false".into()),
        (bdm(3, "Ebs.DeleteOnTermination"), "false".into()),
    ]
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// RunInstances: every option as EC2 documents it, the subnet and security
/// group on the primary network interface (not beside it), and the machine
/// runs.
#[tokio::test]
async fn run_instances_sends_every_launch_option() {
    let (env, fwd, _op) = launch_bed("lo-run").await;
    let (subnet, sg) = env.default_subnet_and_group().await;
    fwd.add_placement_group(PlacementGroup::new("hpc", "partition"));
    create_template(&env, "opts", options(&subnet, &sg, "hpc")).await;
    create_request(&env, "r", "opts", 1, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;

    let call = fwd.last_request("RunInstances");
    let mut wanted = option_params("", "NetworkInterface");
    wanted.push(("NetworkInterface.1.SubnetId".into(), subnet.clone()));
    wanted.push(("NetworkInterface.1.SecurityGroupId.1".into(), sg.clone()));
    assert_params(
        &call,
        &as_refs(&wanted),
        &[
            "SubnetId",
            "SecurityGroupId.1",
            "BlockDeviceMapping.4.DeviceName",
        ],
    );
    assert!(fwd.calls("DescribePlacementGroups") >= 1);
}

/// EC2 Fleet: every option in the launch template's data (the subnet stays in
/// the overrides, the security group moves onto the interface), and the spend
/// cap on both the on-demand and the spot options of CreateFleet.
#[tokio::test]
async fn fleet_sends_every_launch_option_and_the_spend_cap() {
    let (env, fwd, _op) = launch_bed("lo-fleet").await;
    let (subnet, sg) = env.default_subnet_and_group().await;
    fwd.add_placement_group(PlacementGroup::new("hpc", "partition"));
    let mut spec = options(&subnet, &sg, "hpc");
    spec["providerApi"] = json!("EC2Fleet");
    spec["capacityType"] = json!("mixed");
    spec["onDemandPercent"] = json!(50);
    spec["maxTotalPrice"] = json!("2.5");
    // moto fails a fleet whose SpotOptions lack an AllocationStrategy (a
    // KeyError, answered 500); EC2 takes its default there.
    spec["allocationStrategy"] = json!("price-capacity-optimized");
    create_template(&env, "opts", spec).await;
    create_request(&env, "r", "opts", 2, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;

    let template = fwd.last_request("CreateLaunchTemplate");
    let mut wanted = option_params("LaunchTemplateData.", "NetworkInterface");
    wanted.push((
        "LaunchTemplateData.NetworkInterface.1.SecurityGroupId.1".into(),
        sg.clone(),
    ));
    assert_params(
        &template,
        &as_refs(&wanted),
        &[
            "LaunchTemplateData.SecurityGroupId.1",
            "LaunchTemplateData.NetworkInterface.1.SubnetId",
        ],
    );
    let fleet = fwd.last_request("CreateFleet");
    assert_params(
        &fleet,
        &[
            ("OnDemandOptions.MaxTotalPrice", "2.5"),
            ("SpotOptions.MaxTotalPrice", "2.5"),
            ("SpotOptions.AllocationStrategy", "price-capacity-optimized"),
            ("LaunchTemplateConfigs.1.Overrides.1.SubnetId", &subnet),
        ],
        &[],
    );
}

/// A placement group that does not exist keeps the template Ready=False with
/// reason PlacementGroupNotFound naming the group; naming one that exists
/// makes it Ready.
#[tokio::test]
async fn a_missing_placement_group_keeps_the_template_not_ready() {
    let (env, fwd, _op) = launch_bed("lo-pg").await;
    fwd.add_placement_group(PlacementGroup::new("present", "cluster"));
    create_template(
        &env,
        "pg",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "placement": {"groupName": "absent"},
        }),
    )
    .await;
    let mt = wait_template(&env, "pg", "Ready=False", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, _, _)| s == "False")
    })
    .await;
    let (_, reason, message) = template_ready(&mt).expect("condition");
    assert_eq!(reason, "PlacementGroupNotFound", "{message}");
    assert!(
        message.contains("spec.placement.groupName") && message.contains("absent"),
        "{message}"
    );

    Api::<MachineTemplate>::namespaced(env.client.clone(), &env.namespace)
        .patch(
            "pg",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"placement": {"groupName": "present"}}})),
        )
        .await
        .expect("patch the template");
    let mt = wait_template(&env, "pg", "Ready=True", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    let (_, reason, _) = template_ready(&mt).expect("condition");
    assert_ne!(reason, "PlacementGroupNotFound");
}

//! Capacity reservations, Capacity Blocks and network interfaces (EFA) of a
//! MachineTemplate reach EC2 exactly as its API documents them, on both
//! launch paths and in the template's dry run: the real apiserver, an
//! operator child process and moto behind the test forwarder, which records
//! every call's decoded parameters.
//!
//! moto (5.x) accepts reservations and interface types but does not act on
//! them: it never reports `CapacityReservationId`, and knows no
//! `capacity-block`. The forwarder models EC2's answers for both (see
//! `testbed/src/forwarder/reservations.rs`): it reports the targeted
//! reservation in DescribeInstances and asks moto for on-demand instances in
//! place of a Capacity Block. Whether an instance really lands in the
//! reservation (its capacity, its zone, its start) is checked by parameters
//! only. moto's DescribeInstanceTypes does carry `NetworkInfo` (EfaSupported,
//! MaximumNetworkCards), so the EFA refusal runs on moto's own answer.

use std::time::{Duration, Instant};

use hostforge::api::MachineRequest;
use hostforge_testbed::forwarder::assert_params;
use hostforge_testbed::machines::{
    create_request, create_template, is_ready, template_ready, wait_request, wait_template,
};
use hostforge_testbed::operator::launch_bed;
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::Api;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(120);
const CR: &str = "cr-0123456789abcdef0";
const GROUP: &str = "arn:aws:resource-groups:us-east-1:123456789012:group/hpc";

/// Whether every machine of the request reports `cr` as its reservation.
fn all_in(mr: &MachineRequest, cr: &str) -> bool {
    mr.status.as_ref().is_some_and(|s| {
        !s.machines.is_empty()
            && s.machines
                .iter()
                .all(|m| m.capacity_reservation_id.as_deref() == Some(cr))
    })
}

/// RunInstances: the targeted reservation with TargetedOnly, the EFA on
/// the primary interface with the subnet, group and public IP choice on it
/// (none at the top level); the same in the template's dry run; and the
/// machine reports the reservation DescribeInstances names.
#[tokio::test]
async fn run_instances_targets_the_reservation_with_an_efa() {
    let (env, fwd, _op) = launch_bed("cr-run").await;
    let (subnet, sg) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "efa",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "c5n.18xlarge"}],
            "subnetIds": [subnet],
            "securityGroupIds": [sg],
            "associatePublicIpAddress": false,
            "capacityReservation": {"preference": "TargetedOnly", "id": CR},
            "networkInterfaces": [{"interfaceType": "efa"}],
        }),
    )
    .await;
    create_request(&env, "r", "efa", 1, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;

    let wanted = [
        (
            "CapacityReservationSpecification.CapacityReservationPreference",
            "capacity-reservations-only",
        ),
        (
            "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId",
            CR,
        ),
        ("NetworkInterface.1.InterfaceType", "efa"),
        ("NetworkInterface.1.NetworkCardIndex", "0"),
        ("NetworkInterface.1.DeviceIndex", "0"),
        ("NetworkInterface.1.SubnetId", subnet.as_str()),
        ("NetworkInterface.1.SecurityGroupId.1", sg.as_str()),
        ("NetworkInterface.1.AssociatePublicIpAddress", "false"),
        ("NetworkInterface.1.DeleteOnTermination", "true"),
    ];
    let absent = [
        "SubnetId",
        "SecurityGroupId.1",
        "NetworkInterface.2.DeviceIndex",
        "InstanceMarketOptions.MarketType",
    ];
    assert_params(&fwd.last_request("RunInstances"), &wanted, &absent);
    assert_params(&fwd.last_request("RunInstances:DryRun"), &wanted, &absent);

    wait_request(&env, "r", "the machine in its reservation", WAIT, |mr| {
        all_in(mr, CR)
    })
    .await;
}

/// RunInstances into a Capacity Block: market type capacity-block and the
/// block as the only target (no preference).
#[tokio::test]
async fn run_instances_launches_into_a_capacity_block() {
    let (env, fwd, _op) = launch_bed("cr-block").await;
    create_template(
        &env,
        "block",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "p4d.24xlarge"}],
            "capacityReservation": {"id": CR, "capacityBlock": true},
        }),
    )
    .await;
    create_request(&env, "r", "block", 2, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    assert_params(
        &fwd.last_request("RunInstances"),
        &[
            ("InstanceMarketOptions.MarketType", "capacity-block"),
            (
                "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId",
                CR,
            ),
        ],
        &[
            "CapacityReservationSpecification.CapacityReservationPreference",
            "InstanceMarketOptions.SpotOptions.MaxPrice",
        ],
    );
    wait_request(&env, "r", "machines in the block", WAIT, |mr| {
        all_in(mr, CR)
    })
    .await;
}

/// EC2 Fleet into a Capacity Block with four EFAs on four cards: the launch
/// template holds the market type, the block and the interfaces (groups on
/// each, the subnet in the overrides); CreateFleet names capacity-block as
/// its default target capacity type and only its total.
#[tokio::test]
async fn fleet_launches_a_capacity_block_with_efa_on_every_card() {
    let (env, fwd, _op) = launch_bed("cr-fleet").await;
    let (subnet, sg) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "block",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "providerApi": "EC2Fleet",
            "instanceTypes": [{"type": "p4d.24xlarge"}],
            "subnetIds": [subnet],
            "securityGroupIds": [sg],
            "capacityReservation": {"id": CR, "capacityBlock": true},
            "networkInterfaces": [
                {"interfaceType": "efa"}, {"interfaceType": "efa-only"},
                {"interfaceType": "efa-only"}, {"interfaceType": "efa-only"},
            ],
        }),
    )
    .await;
    create_request(&env, "r", "block", 2, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;

    let lt = |k: &str| format!("LaunchTemplateData.{k}");
    let mut wanted: Vec<(String, String)> =
        vec![
        (lt("InstanceMarketOptions.MarketType"), "capacity-block".into()),
        (
            lt("CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"),
            CR.into(),
        ),
    ];
    for (i, kind) in ["efa", "efa-only", "efa-only", "efa-only"]
        .iter()
        .enumerate()
    {
        let n = i + 1;
        let nic = |k: &str| lt(&format!("NetworkInterface.{n}.{k}"));
        wanted.push((nic("InterfaceType"), kind.to_string()));
        wanted.push((nic("NetworkCardIndex"), i.to_string()));
        // EC2's layout: EFA-only at device 0 of each further card.
        wanted.push((nic("DeviceIndex"), "0".into()));
        wanted.push((nic("SecurityGroupId.1"), sg.clone()));
    }
    let refs: Vec<(&str, &str)> = wanted
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_params(
        &fwd.last_request("CreateLaunchTemplate"),
        &refs,
        &[
            "LaunchTemplateData.SecurityGroupId.1",
            "LaunchTemplateData.NetworkInterface.1.SubnetId",
            "LaunchTemplateData.NetworkInterface.5.InterfaceType",
        ],
    );
    assert_params(
        &fwd.last_request("CreateFleet"),
        &[
            ("TargetCapacitySpecification.TotalTargetCapacity", "2"),
            (
                "TargetCapacitySpecification.DefaultTargetCapacityType",
                "capacity-block",
            ),
            ("LaunchTemplateConfigs.1.Overrides.1.SubnetId", &subnet),
        ],
        &[
            "TargetCapacitySpecification.OnDemandTargetCapacity",
            "TargetCapacitySpecification.SpotTargetCapacity",
            "OnDemandOptions.CapacityReservationOptions.UsageStrategy",
        ],
    );
    wait_request(&env, "r", "machines in the block", WAIT, |mr| {
        all_in(mr, CR)
    })
    .await;
}

/// EC2 Fleet with a reservation resource group: the launch template targets
/// the group and the fleet's on-demand part uses reservations first.
#[tokio::test]
async fn fleet_uses_a_reservation_group_first() {
    let (env, fwd, _op) = launch_bed("cr-group").await;
    create_template(
        &env,
        "group",
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "providerApi": "EC2Fleet",
            "instanceTypes": [{"type": "t3.micro"}, {"type": "t3.small"}],
            "capacityReservation": {"preference": "TargetedOnly", "resourceGroupArn": GROUP},
        }),
    )
    .await;
    create_request(&env, "r", "group", 1, false).await;
    wait_request(&env, "r", "Ready", WAIT, is_ready).await;
    assert_params(
        &fwd.last_request("CreateLaunchTemplate"),
        &[
            (
                "LaunchTemplateData.CapacityReservationSpecification.CapacityReservationPreference",
                "capacity-reservations-only",
            ),
            (
                "LaunchTemplateData.CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationResourceGroupArn",
                GROUP,
            ),
        ],
        &["LaunchTemplateData.InstanceMarketOptions.MarketType"],
    );
    assert_params(
        &fwd.last_request("CreateFleet"),
        &[
            (
                "OnDemandOptions.CapacityReservationOptions.UsageStrategy",
                "use-capacity-reservations-first",
            ),
            (
                "TargetCapacitySpecification.DefaultTargetCapacityType",
                "on-demand",
            ),
        ],
        &[],
    );
}

/// An EFA on a type without EFA support (moto's DescribeInstanceTypes says
/// `EfaSupported=false` for t3.micro) keeps the template Ready=False with
/// reason EfaNotSupported naming the type, with an Event; interfaces on
/// more cards than the type has are refused naming the card; a type that
/// fits makes the template Ready, and no launch is ever tried before.
#[tokio::test]
async fn interfaces_the_types_cannot_take_are_refused() {
    let (env, fwd, _op) = launch_bed("cr-efa").await;
    let spec = |types: serde_json::Value, interfaces: serde_json::Value| {
        json!({
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": types,
            "networkInterfaces": interfaces,
        })
    };
    create_template(
        &env,
        "no-efa",
        spec(
            json!([{"type": "c5n.18xlarge"}, {"type": "t3.micro"}]),
            json!([{"interfaceType": "efa"}]),
        ),
    )
    .await;
    create_template(
        &env,
        "cards",
        spec(
            json!([{"type": "c5n.18xlarge"}]),
            json!([{"interfaceType": "efa"}, {"interfaceType": "efa-only"}]),
        ),
    )
    .await;
    create_template(
        &env,
        "fits",
        spec(
            json!([{"type": "p4d.24xlarge"}]),
            json!([{"interfaceType": "efa"}, {"interfaceType": "efa-only"}]),
        ),
    )
    .await;
    for (name, reason, words) in [
        (
            "no-efa",
            "EfaNotSupported",
            ["t3.micro", "does not support EFA"],
        ),
        (
            "cards",
            "NetworkCardOutOfRange",
            ["spec.networkInterfaces[1]", "c5n.18xlarge"],
        ),
    ] {
        let mt = wait_template(&env, name, "Ready=False", WAIT, |mt| {
            template_ready(mt).is_some_and(|(s, _, _)| s == "False")
        })
        .await;
        let (_, got, message) = template_ready(&mt).expect("condition");
        assert_eq!(got, reason, "{name}: {message}");
        for w in words {
            assert!(message.contains(w), "{name}: {w} in {message}");
        }
        wait_for_event(&env, name, reason).await;
    }
    wait_template(&env, "fits", "Ready=True", WAIT, |mt| {
        template_ready(mt).is_some_and(|(s, _, _)| s == "True")
    })
    .await;
    assert!(fwd.calls("DescribeInstanceTypes") >= 1);
    assert_eq!(fwd.calls("RunInstances"), 0, "nothing launched");
}

async fn wait_for_event(env: &TestEnv, object: &str, reason: &str) {
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let deadline = Instant::now() + WAIT;
    loop {
        let list = events
            .list(&ListParams::default())
            .await
            .expect("list events");
        if list.items.iter().any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(object)
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "no {reason} Event for {object}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

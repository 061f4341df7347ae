//! The malformed manifests the CRDs must reject, each with the words
//! kubectl's error must name.

use super::*;

pub(super) struct Case {
    pub(super) name: &'static str,
    /// Applied first (and expected to succeed), for update rules.
    pub(super) before: Option<Value>,
    pub(super) manifest: Value,
    /// Every fragment must appear in kubectl's error output; `a|b` accepts either (the
    /// two apply modes word some errors differently).
    pub(super) wanted: &'static [&'static str],
}

fn case(name: &'static str, manifest: Value, wanted: &'static [&'static str]) -> Case {
    Case {
        name,
        before: None,
        manifest,
        wanted,
    }
}

pub(super) fn malformed_cases() -> Vec<Case> {
    let req = |spec: Value| request_with("req", spec);
    vec![
        case(
            "missing image",
            template_with("t", json!({"image": null})),
            &["spec.image", "Required value"],
        ),
        case(
            "two image sources",
            template_with(
                "t",
                json!({"image": {"id": "ami-0123456789abcdef0", "ssmParameter": "/a/b"}}),
            ),
            &["spec.image", "exactly one of id, ssmParameter or selector"],
        ),
        case(
            "empty image",
            template_with("t", json!({"image": {}})),
            &["spec.image", "exactly one of id, ssmParameter or selector"],
        ),
        case(
            "bad ami id",
            template_with("t", json!({"image": {"id": "ami-xyz"}})),
            &["spec.image.id", "should match"],
        ),
        case(
            "bad subnet id",
            template_with("t", json!({"subnetIds": ["subnet-a"]})),
            &["spec.subnetIds[0]", "should match"],
        ),
        case(
            "bad security group id",
            template_with("t", json!({"securityGroupIds": ["sg-1"]})),
            &["spec.securityGroupIds[0]", "should match"],
        ),
        case(
            "bad instance id to return",
            req(json!({"templateRef": {"name": "t"}, "count": 1, "returnMachines": ["i-nothex"]})),
            &["spec.returnMachines[0]", "should match"],
        ),
        case(
            "count -1",
            req(json!({"templateRef": {"name": "t"}, "count": -1})),
            &["spec.count", "greater than or equal to 0"],
        ),
        case(
            "count 5000",
            req(json!({"templateRef": {"name": "t"}, "count": 5000})),
            &["spec.count", "less than or equal to 1000"],
        ),
        case(
            "maxSurge without Replace",
            req(json!({"templateRef": {"name": "t"}, "count": 1, "updatePolicy": {"maxSurge": 2}})),
            &["spec.updatePolicy.maxSurge", "applies only to type Replace"],
        ),
        case(
            "maxSurge 0",
            req(json!({"templateRef": {"name": "t"}, "count": 1,
                       "updatePolicy": {"type": "Replace", "maxSurge": 0}})),
            &["spec.updatePolicy.maxSurge", "greater than or equal to 1"],
        ),
        case(
            "unknown updatePolicy type",
            req(json!({"templateRef": {"name": "t"}, "count": 1,
                       "updatePolicy": {"type": "RollingUpdate"}})),
            &["spec.updatePolicy.type", "Unsupported value"],
        ),
        case(
            "count missing",
            req(json!({"templateRef": {"name": "t"}})),
            &["spec.count", "Required value"],
        ),
        case(
            "templateRef missing",
            req(json!({"count": 1})),
            &["spec.templateRef", "Required value"],
        ),
        case(
            "templateRef bad name",
            req(json!({"templateRef": {"name": "Bad_Name"}, "count": 1})),
            &["spec.templateRef.name", "should match"],
        ),
        case(
            "unknown providerApi",
            template_with("t", json!({"providerApi": "SpotFleet"})),
            &["spec.providerApi", "Unsupported value", "\"EC2Fleet\""],
        ),
        case(
            "unknown capacityType",
            template_with("t", json!({"capacityType": "preemptible"})),
            &["spec.capacityType", "Unsupported value"],
        ),
        case(
            "unknown httpTokens",
            template_with("t", json!({"metadataOptions": {"httpTokens": "sometimes"}})),
            &["spec.metadataOptions.httpTokens", "Unsupported value"],
        ),
        case(
            "inline user data script",
            template_with("t", json!({"userData": "#!/bin/bash\necho hi"})),
            &["spec.userData", "must be of type object|expected map"],
        ),
        case(
            "inline user data field",
            template_with("t", json!({"userData": {"content": "#!/bin/bash"}})),
            &["spec.userData"],
        ),
        case(
            "empty instanceTypes",
            template_with("t", json!({"instanceTypes": []})),
            &["spec.instanceTypes", "should have at least 1 items"],
        ),
        case(
            "duplicate instance type",
            template_with(
                "t",
                json!({"instanceTypes": [{"type": "c6i.xlarge"}, {"type": "c6i.xlarge"}]}),
            ),
            &["spec.instanceTypes", "Duplicate value|duplicate entries"],
        ),
        case(
            "malformed instance type",
            template_with("t", json!({"instanceTypes": [{"type": "C6I XL"}]})),
            &["spec.instanceTypes[0].type", "should match"],
        ),
        case(
            "mixed with RunInstances",
            template_with("t", json!({"capacityType": "mixed", "onDemandPercent": 20})),
            &["spec.capacityType", "mixed needs providerApi EC2Fleet"],
        ),
        case(
            "mixed without onDemandPercent",
            template_with(
                "t",
                json!({"providerApi": "EC2Fleet", "capacityType": "mixed"}),
            ),
            &["spec.onDemandPercent", "required with capacityType mixed"],
        ),
        case(
            "onDemandPercent 150",
            template_with(
                "t",
                json!({"providerApi": "EC2Fleet", "capacityType": "mixed", "onDemandPercent": 150}),
            ),
            &["spec.onDemandPercent", "less than or equal to 100"],
        ),
        case(
            "maxPrice on-demand",
            template_with("t", json!({"maxPrice": "0.5"})),
            &["spec.maxPrice", "spot"],
        ),
        case(
            "allocationStrategy with RunInstances",
            template_with(
                "t",
                json!({"capacityType": "spot", "allocationStrategy": "lowest-price"}),
            ),
            &["spec.allocationStrategy", "EC2Fleet"],
        ),
        case(
            "weight with RunInstances",
            template_with(
                "t",
                json!({"instanceTypes": [{"type": "c6i.xlarge", "weight": 2}]}),
            ),
            &[
                "spec.instanceTypes",
                "weight is only used with providerApi EC2Fleet",
            ],
        ),
        case(
            "reserved tag key",
            template_with("t", json!({"tags": {"hostforge.io/request": "x"}})),
            &["spec.tags", "reserved"],
        ),
        case(
            "upper-case aws tag key",
            template_with("t", json!({"tags": {"AWS:x": "x"}})),
            &["spec.tags", "reserved"],
        ),
        case(
            "mixed-case hostforge tag key",
            template_with("t", json!({"tags": {"Hostforge.io/x": "x"}})),
            &["spec.tags", "reserved"],
        ),
        case(
            "empty tag key",
            template_with("t", json!({"tags": {"": "x"}})),
            &["spec.tags", "must not be empty"],
        ),
        case(
            "too long tag value",
            template_with("t", json!({"tags": {"team": "x".repeat(300)}})),
            &["spec.tags.team", "Too long"],
        ),
        case(
            "selector without owners",
            template_with("t", json!({"image": {"selector": {"name": "al2023-*"}}})),
            &["spec.image.selector.owners", "Required value"],
        ),
        case(
            "selector with a bad owner",
            template_with(
                "t",
                json!({"image": {"selector": {"name": "al2023-*", "owners": ["anyone"]}}}),
            ),
            &["spec.image.selector.owners[0]", "should match"],
        ),
        case(
            "io2 without iops",
            template_with("t", json!({"rootVolume": {"sizeGiB": 100, "type": "io2"}})),
            &["spec.rootVolume.iops", "required for types io1 and io2"],
        ),
        case(
            "throughput on gp2",
            template_with(
                "t",
                json!({"rootVolume": {"sizeGiB": 100, "type": "gp2", "throughput": 250}}),
            ),
            &["spec.rootVolume.throughput", "gp3"],
        ),
        case(
            "partition number without a placement group",
            template_with("t", json!({"placement": {"partitionNumber": 2}})),
            &[
                "spec.placement.partitionNumber",
                "partitionNumber needs placement.groupName",
            ],
        ),
        case(
            "unknown tenancy",
            template_with("t", json!({"placement": {"tenancy": "shared"}})),
            &["spec.placement.tenancy", "Unsupported value"],
        ),
        case(
            "threads per core 3",
            template_with("t", json!({"cpuOptions": {"threadsPerCore": 3}})),
            &["spec.cpuOptions.threadsPerCore", "less than or equal to 2"],
        ),
        case(
            "launch template by id and name",
            template_with(
                "t",
                json!({"launchTemplate": {"id": "lt-0123456789abcdef0", "name": "base"}}),
            ),
            &["spec.launchTemplate", "set exactly one of id or name"],
        ),
        case(
            "launch template version latest",
            template_with(
                "t",
                json!({"launchTemplate": {"name": "base", "version": "latest"}}),
            ),
            &["spec.launchTemplate.version", "should match"],
        ),
        case(
            "security groups beside a fleet's launch template",
            template_with(
                "t",
                json!({"providerApi": "EC2Fleet", "launchTemplate": {"name": "base"},
                       "securityGroupIds": ["sg-0123456789abcdef0"]}),
            ),
            &[
                "spec.launchTemplate",
                "an EC2 Fleet override cannot carry them",
            ],
        ),
        case(
            "instance requirements on RunInstances",
            template_with(
                "t",
                json!({"instanceTypes": null,
                       "instanceRequirements": {"vcpuCount": {"min": 2}, "memoryMiB": {"min": 1024}}}),
            ),
            &["spec.instanceRequirements", "needs providerApi EC2Fleet"],
        ),
        case(
            "instance requirements beside instance types",
            template_with(
                "t",
                json!({"providerApi": "EC2Fleet",
                       "instanceRequirements": {"vcpuCount": {"min": 2}, "memoryMiB": {"min": 1024}}}),
            ),
            &[
                "spec.instanceRequirements",
                "set exactly one of instanceTypes or instanceRequirements",
            ],
        ),
        case(
            "instance requirements without a memory range",
            template_with(
                "t",
                json!({"providerApi": "EC2Fleet", "instanceTypes": null,
                       "instanceRequirements": {"vcpuCount": {"min": 2}}}),
            ),
            &["spec.instanceRequirements.memoryMiB", "Required value"],
        ),
        case(
            "spend cap on RunInstances",
            template_with("t", json!({"maxTotalPrice": "10"})),
            &["spec.maxTotalPrice", "needs providerApi EC2Fleet"],
        ),
        case(
            "data volume iops on st1",
            template_with(
                "t",
                json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 500, "type": "st1", "iops": 500}]}),
            ),
            &[
                "spec.dataVolumes[0].iops",
                "only supported by types gp3, io1 and io2",
            ],
        ),
        case(
            "data volume throughput on io2",
            template_with(
                "t",
                json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 50, "type": "io2", "iops": 3000, "throughput": 300}]}),
            ),
            &[
                "spec.dataVolumes[0].throughput",
                "only supported by type gp3",
            ],
        ),
        case(
            "data volume on the root device",
            template_with(
                "t",
                json!({"dataVolumes": [{"deviceName": "/dev/xvda", "sizeGiB": 50}]}),
            ),
            &["spec.dataVolumes[0].deviceName", "should match"],
        ),
        case(
            "two data volumes on one device",
            template_with(
                "t",
                json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 50}, {"deviceName": "/dev/sdf", "sizeGiB": 10}]}),
            ),
            &[
                "spec.dataVolumes",
                "Duplicate value|duplicate entries|each deviceName may appear only once",
            ],
        ),
        case(
            "seventeen data volumes",
            template_with(
                "t",
                json!({"dataVolumes": (0..17u8)
                    .map(|i| json!({"deviceName": format!("/dev/sd{}", (b'b' + i) as char), "sizeGiB": 1}))
                    .collect::<Vec<_>>()}),
            ),
            &["spec.dataVolumes", "must have at most 16 items|Too many"],
        ),
        case(
            "unknown field",
            template_with("t", json!({"replicas": 3})),
            &["spec.replicas"],
        ),
        case(
            "request name too long",
            request_with(
                &"r".repeat(200),
                json!({"templateRef": {"name": "t"}, "count": 1}),
            ),
            &["metadata.name", "at most 192"],
        ),
        Case {
            name: "templateRef changed on update",
            before: Some(req(json!({"templateRef": {"name": "first"}, "count": 1}))),
            manifest: req(json!({"templateRef": {"name": "second"}, "count": 1})),
            wanted: &["spec.templateRef", "templateRef is immutable"],
        },
    ]
    .into_iter()
    .chain(reservation_cases())
    .collect()
}

/// Capacity reservations, Capacity Blocks and network interfaces.
fn reservation_cases() -> Vec<Case> {
    vec![
        case(
            "reservation id and group",
            template_with(
                "t",
                json!({"capacityReservation": {"id": "cr-0123456789abcdef0",
                    "resourceGroupArn": "arn:aws:resource-groups:us-east-1:123456789012:group/g"}}),
            ),
            &[
                "spec.capacityReservation.resourceGroupArn",
                "set id or resourceGroupArn, not both",
            ],
        ),
        case(
            "preference None with a target",
            template_with(
                "t",
                json!({"capacityReservation": {"preference": "None", "id": "cr-0123456789abcdef0"}}),
            ),
            &[
                "spec.capacityReservation.preference",
                "Open or None takes no target",
            ],
        ),
        case(
            "capacity block with spot",
            template_with(
                "t",
                json!({"capacityType": "spot",
                    "capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true}}),
            ),
            &[
                "spec.capacityReservation.capacityBlock",
                "capacityType must be on-demand",
            ],
        ),
        case(
            "reservation id on a fleet",
            template_with(
                "t",
                json!({"providerApi": "EC2Fleet",
                    "capacityReservation": {"id": "cr-0123456789abcdef0"}}),
            ),
            &["spec.capacityReservation.id", "resourceGroupArn"],
        ),
        case(
            "bad reservation id",
            template_with("t", json!({"capacityReservation": {"id": "cr-xyz"}})),
            &["spec.capacityReservation.id", "should match|does not match"],
        ),
        case(
            "efa-only primary interface",
            template_with(
                "t",
                json!({"networkInterfaces": [{"interfaceType": "efa-only"}]}),
            ),
            &["spec.networkInterfaces", "cannot be efa-only"],
        ),
        case(
            "public IP with two interfaces",
            template_with(
                "t",
                json!({"associatePublicIpAddress": true,
                    "networkInterfaces": [{"interfaceType": "efa"}, {"interfaceType": "efa"}]}),
            ),
            &[
                "spec.associatePublicIpAddress",
                "needs a single network interface",
            ],
        ),
    ]
}

//! Local checks of the API's validation rules, without an apiserver: every example
//! parses into the Rust types, and every CEL rule of the CRDs accepts what it should
//! and rejects what it should, evaluated by kube's client-side CEL (`kube/cel`).
//! The same cases run against a real apiserver in `tests/api_validation.rs`.

use std::path::Path;

use kube::core::cel::Validator;
use kube::CustomResourceExt;
use serde_json::{json, Value};

use super::*;

fn schema_of<K: CustomResourceExt>() -> Value {
    schema_json(&K::crd())
}

/// The messages of every CEL rule that `object` breaks (after schema defaulting).
fn cel_errors<K: CustomResourceExt>(object: &Value, old: Option<&Value>) -> Vec<String> {
    match Validator::new().validate(&schema_of::<K>(), object, old) {
        Ok(()) => vec![],
        Err(errors) => errors.as_slice().iter().map(|e| e.to_string()).collect(),
    }
}

fn template(spec: Value) -> Value {
    json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineTemplate",
        "metadata": {"name": "t"},
        "spec": spec,
    })
}

fn valid_template_spec() -> Value {
    json!({
        "image": {"ssmParameter": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"},
        "instanceTypes": [{"type": "c6i.xlarge"}],
    })
}

/// `valid_template_spec()` with the given top-level spec fields replaced.
fn template_with(fields: Value) -> Value {
    let mut spec = valid_template_spec();
    for (k, v) in fields.as_object().expect("object") {
        spec[k] = v.clone();
    }
    template(spec)
}

fn request(name: &str, template_name: &str, count: i64) -> Value {
    json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineRequest",
        "metadata": {"name": name},
        "spec": {"templateRef": {"name": template_name}, "count": count},
    })
}

fn read_examples() -> Vec<(String, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = ["examples", "examples/reference"]
        .iter()
        .flat_map(|d| std::fs::read_dir(root.join(d)).expect("examples dir exists"))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("readable example");
            let value: Value = serde_yaml::from_str(&text).expect("example is YAML");
            (p.display().to_string(), value)
        })
        .collect()
}

#[test]
fn examples_parse_into_the_types_and_pass_cel() {
    let mut kinds = vec![];
    for (path, value) in read_examples() {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "MachineTemplate" => {
                let t: MachineTemplate =
                    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{path}: {e}"));
                t.validate_cel().unwrap_or_else(|e| panic!("{path}: {e}"));
            }
            "MachineRequest" => {
                let r: MachineRequest =
                    serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{path}: {e}"));
                r.validate_cel().unwrap_or_else(|e| panic!("{path}: {e}"));
            }
            "Secret" => {}
            other => panic!("{path}: unexpected kind {other}"),
        }
        kinds.push(kind);
    }
    for wanted in ["MachineTemplate", "MachineRequest", "Secret"] {
        assert!(kinds.iter().any(|k| k == wanted), "no {wanted} example");
    }
}

#[test]
fn examples_cover_every_image_source_and_the_fleet() {
    let templates: Vec<MachineTemplate> = read_examples()
        .into_iter()
        .filter(|(_, v)| v["kind"] == "MachineTemplate")
        .map(|(p, v)| serde_json::from_value(v).unwrap_or_else(|e| panic!("{p}: {e}")))
        .collect();
    assert!(templates.iter().any(|t| t.spec.image.id.is_some()));
    assert!(templates
        .iter()
        .any(|t| t.spec.image.ssm_parameter.is_some()));
    assert!(templates.iter().any(|t| t.spec.image.selector.is_some()));
    // Every launch option is shown somewhere (docs/api.md points at these files).
    assert!(templates
        .iter()
        .any(|t| t
            .spec
            .placement
            .as_ref()
            .is_some_and(|p| p.group_name.is_some()
                && p.partition_number.is_some()
                && p.tenancy.is_some())));
    assert!(templates.iter().any(|t| t.spec.ebs_optimized.is_some()));
    assert!(templates
        .iter()
        .any(|t| t.spec.associate_public_ip_address.is_some()));
    assert!(templates.iter().any(|t| t.spec.cpu_options.is_some()));
    assert!(templates.iter().any(|t| !t.spec.data_volumes.is_empty()));
    assert!(templates.iter().any(|t| t.spec.max_total_price.is_some()));
    assert!(templates
        .iter()
        .any(|t| t.spec.provider_api == ProviderApi::Ec2Fleet
            && t.spec.capacity_type != CapacityType::OnDemand));
}

#[test]
fn defaults_fill_in_a_minimal_template() {
    let t: MachineTemplate =
        serde_json::from_value(template(valid_template_spec())).expect("minimal template");
    assert_eq!(t.spec.provider_api, ProviderApi::RunInstances);
    assert_eq!(t.spec.capacity_type, CapacityType::OnDemand);
    assert_eq!(t.spec.metadata_options.http_tokens, HttpTokens::Required);
    let r: MachineRequest = serde_json::from_value(request("r", "t", 3)).expect("request");
    assert!(r.spec.replace_lost);
    // And the schema carries the same defaults, so the apiserver fills them in too.
    let schema = schema_of::<MachineTemplate>();
    let spec = &schema["properties"]["spec"]["properties"];
    assert_eq!(spec["providerApi"]["default"], "RunInstances");
    assert_eq!(spec["capacityType"]["default"], "on-demand");
    assert_eq!(spec["metadataOptions"]["default"]["httpTokens"], "required");
    let schema = schema_of::<MachineRequest>();
    assert_eq!(
        schema["properties"]["spec"]["properties"]["replaceLost"]["default"],
        true
    );
}

#[test]
fn minimal_valid_objects_pass_cel() {
    assert_eq!(
        cel_errors::<MachineTemplate>(&template(valid_template_spec()), None),
        Vec::<String>::new()
    );
    assert_eq!(
        cel_errors::<MachineRequest>(&request("r", "t", 0), None),
        Vec::<String>::new()
    );
}

/// Each case: a spec change that breaks exactly one rule, and a fragment of the message.
#[test]
fn template_cel_rules_reject_bad_combinations() {
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "two image sources",
            json!({"image": {"id": "ami-0123456789abcdef0", "ssmParameter": "/a/b"}}),
            "exactly one of id, ssmParameter or selector",
        ),
        (
            "no image source",
            json!({"image": {}}),
            "exactly one of id, ssmParameter or selector",
        ),
        (
            "all image sources",
            json!({"image": {"id": "ami-0123456789abcdef0", "ssmParameter": "/a/b", "selector": {"name": "x", "owners": ["amazon"]}}}),
            "exactly one",
        ),
        (
            "selector without name or tags",
            json!({"image": {"selector": {"owners": ["amazon"]}}}),
            "set name, tags or both",
        ),
        (
            "mixed with RunInstances",
            json!({"capacityType": "mixed", "onDemandPercent": 50}),
            "capacityType mixed needs providerApi EC2Fleet",
        ),
        (
            "mixed without percent",
            json!({"providerApi": "EC2Fleet", "capacityType": "mixed"}),
            "onDemandPercent is required",
        ),
        (
            "percent without mixed",
            json!({"capacityType": "spot", "onDemandPercent": 10}),
            "onDemandPercent is required",
        ),
        (
            "allocation strategy with RunInstances",
            json!({"capacityType": "spot", "allocationStrategy": "lowest-price"}),
            "allocationStrategy",
        ),
        (
            "allocation strategy on-demand fleet",
            json!({"providerApi": "EC2Fleet", "allocationStrategy": "lowest-price"}),
            "allocationStrategy",
        ),
        (
            "max price on-demand",
            json!({"maxPrice": "0.5"}),
            "maxPrice",
        ),
        (
            "weights with RunInstances",
            json!({"instanceTypes": [{"type": "c6i.xlarge", "weight": 2}]}),
            "weight is only used with providerApi EC2Fleet",
        ),
        (
            "reserved tag",
            json!({"tags": {"hostforge.io/request": "x"}}),
            "reserved",
        ),
        (
            "aws tag",
            json!({"tags": {"aws:cloudformation:stack": "x"}}),
            "reserved",
        ),
        (
            "upper-case aws tag",
            json!({"tags": {"AWS:x": "x"}}),
            "reserved",
        ),
        (
            "mixed-case aws tag",
            json!({"tags": {"Aws:cloudformation:stack": "x"}}),
            "reserved",
        ),
        (
            "mixed-case hostforge tag",
            json!({"tags": {"Hostforge.io/x": "x"}}),
            "reserved",
        ),
        (
            "upper-case hostforge tag",
            json!({"tags": {"HOSTFORGE.IO/request": "x"}}),
            "reserved",
        ),
        (
            "empty tag key",
            json!({"tags": {"": "x"}}),
            "must not be empty",
        ),
        (
            "long tag key",
            json!({"tags": {"k".repeat(129): "x"}}),
            "at most 128",
        ),
        (
            "gp2 with throughput",
            json!({"rootVolume": {"sizeGiB": 10, "type": "gp2", "throughput": 200}}),
            "throughput",
        ),
        (
            "st1 with iops",
            json!({"rootVolume": {"sizeGiB": 500, "type": "st1", "iops": 200}}),
            "iops is only supported",
        ),
        (
            "io2 without iops",
            json!({"rootVolume": {"sizeGiB": 10, "type": "io2"}}),
            "iops is required",
        ),
        (
            "kms key unencrypted",
            json!({"rootVolume": {"sizeGiB": 10, "encrypted": false, "kmsKeyId": "alias/x"}}),
            "kmsKeyId needs encrypted",
        ),
        (
            "partition without a group",
            json!({"placement": {"partitionNumber": 2}}),
            "placement.partitionNumber needs placement.groupName",
        ),
        (
            "empty cpu options",
            json!({"cpuOptions": {}}),
            "cpuOptions: set coreCount, threadsPerCore or both",
        ),
        (
            "spend cap with RunInstances",
            json!({"maxTotalPrice": "5"}),
            "maxTotalPrice caps the hourly price of one EC2 Fleet launch",
        ),
        (
            "subnet ids and a subnet selector",
            json!({"subnetIds": ["subnet-0123abcd"], "subnetSelector": {"tags": {"tier": "hpc"}}}),
            "subnetIds and subnetSelector: set one of them",
        ),
        (
            "group ids and a group selector",
            json!({"securityGroupIds": ["sg-0123abcd"], "securityGroupSelector": {"tags": {"tier": "*"}}}),
            "securityGroupIds and securityGroupSelector: set one of them",
        ),
        (
            "selector key too long",
            json!({"subnetSelector": {"tags": {"k".repeat(129): "x"}}}),
            "tags: keys are 1-128 characters",
        ),
        (
            "data volume iops on st1",
            json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 500, "type": "st1", "iops": 500}]}),
            "dataVolumes[].iops is only supported by types gp3, io1 and io2",
        ),
        (
            "data volume io1 without iops",
            json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 50, "type": "io1"}]}),
            "dataVolumes[].iops is required for types io1 and io2",
        ),
        (
            "data volume throughput on gp2",
            json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 50, "type": "gp2", "throughput": 300}]}),
            "dataVolumes[].throughput is only supported by type gp3",
        ),
        (
            "data volume kms key unencrypted",
            json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 50, "encrypted": false, "kmsKeyId": "alias/x"}]}),
            "dataVolumes[].kmsKeyId needs encrypted",
        ),
        (
            "data volumes on one device",
            json!({"dataVolumes": [{"deviceName": "/dev/sdf", "sizeGiB": 50}, {"deviceName": "/dev/sdf", "sizeGiB": 10}]}),
            "each deviceName may appear only once",
        ),
    ];
    for (name, fields, wanted) in cases {
        let errors = cel_errors::<MachineTemplate>(&template_with(fields), None);
        assert!(
            errors.iter().any(|e| e.contains(wanted)),
            "{name}: wanted an error containing {wanted:?}, got {errors:?}"
        );
        assert_eq!(
            errors.len(),
            1,
            "{name}: exactly one rule should fail: {errors:?}"
        );
    }
}

#[test]
fn template_cel_rules_accept_good_combinations() {
    let cases: Vec<Value> = vec![
        json!({"providerApi": "EC2Fleet", "capacityType": "mixed", "onDemandPercent": 0,
               "allocationStrategy": "capacity-optimized", "maxPrice": "1.5",
               "instanceTypes": [{"type": "c6i.xlarge", "weight": 1}, {"type": "c6i.2xlarge", "weight": 2}]}),
        json!({"capacityType": "spot", "maxPrice": "0.1"}),
        json!({"image": {"selector": {"tags": {"os": "rocky9"}, "owners": ["123456789012"]}}}),
        json!({"image": {"id": "ami-0123456789abcdef0"}}),
        json!({"rootVolume": {"sizeGiB": 10, "type": "io1", "iops": 3000}}),
        json!({"rootVolume": {"sizeGiB": 10, "throughput": 500, "iops": 4000, "kmsKeyId": "alias/x"}}),
        json!({"tags": {"team": "hpc", "kubernetes.io/cluster/x": "owned"}}),
        json!({"placement": {"groupName": "pg", "partitionNumber": 7, "tenancy": "host"},
               "ebsOptimized": false, "associatePublicIpAddress": true,
               "cpuOptions": {"threadsPerCore": 1},
               "dataVolumes": [
                   {"deviceName": "/dev/sdf", "sizeGiB": 100, "type": "io2", "iops": 8000, "kmsKeyId": "alias/x"},
                   {"deviceName": "/dev/xvdb", "sizeGiB": 500, "type": "sc1", "deleteOnTermination": false},
                   {"deviceName": "/dev/sdg", "sizeGiB": 10, "throughput": 500}]}),
        json!({"placement": {"tenancy": "dedicated"}}),
        json!({"providerApi": "EC2Fleet", "maxTotalPrice": "12.75"}),
        json!({"subnetSelector": {"tags": {"tier": "hpc", "kubernetes.io/role/internal-elb": "*"}},
               "securityGroupSelector": {"tags": {"tier": "hpc"}}}),
        // Only the prefixes are reserved, not the words.
        json!({"tags": {"awsome": "x", "Name": "n", "my-hostforge.io/x": "y", "k".repeat(128): "x"}}),
    ];
    for fields in cases {
        let errors = cel_errors::<MachineTemplate>(&template_with(fields.clone()), None);
        assert!(errors.is_empty(), "{fields}: {errors:?}");
    }
}

#[test]
fn image_source_rule_is_checkable_on_its_own() {
    assert!(ImageSource::validate_cel(&json!({"id": "ami-0123456789abcdef0"}), None).is_ok());
    assert!(ImageSource::validate_cel(&json!({}), None).is_err());
}

#[test]
fn template_ref_is_immutable() {
    let old: MachineRequest = serde_json::from_value(request("r", "a", 1)).expect("request");
    let mut new = old.clone();
    new.spec.count = 5;
    new.validate_cel_update(&old).expect("count may change");
    new.spec.template_ref.name = "b".into();
    let err = new
        .validate_cel_update(&old)
        .expect_err("templateRef must not change")
        .to_string();
    assert!(err.contains("templateRef is immutable"), "{err}");
    assert!(err.contains("spec.templateRef"), "{err}");
}

#[test]
fn request_name_must_fit_a_tag_value() {
    let errors = cel_errors::<MachineRequest>(&request(&"r".repeat(193), "t", 1), None);
    assert!(
        errors.iter().any(|e| e.contains("metadata.name")),
        "{errors:?}"
    );
    assert!(cel_errors::<MachineRequest>(&request(&"r".repeat(192), "t", 1), None).is_empty());
}

#[test]
fn status_round_trips_through_json() {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;
    let now = Time(Timestamp::from_second(1_700_000_000).expect("time"));
    let status = MachineRequestStatus {
        observed_generation: Some(2),
        phase: Some(RequestPhase::Provisioning),
        conditions: vec![conditions::new_condition(
            conditions::READY,
            false,
            "Launching",
            "1/2 running",
            Some(2),
            now.clone(),
        )],
        counts: MachineCounts {
            desired: 2,
            pending: 1,
            running: 1,
            ..Default::default()
        },
        provider: Some("aws-default".into()),
        machines: vec![Machine {
            id: "i-0123456789abcdef0".into(),
            name: Some("ip-10-0-0-1.ec2.internal".into()),
            state: MachineState::Running,
            result: MachineResult::Succeed,
            batch: Some("3f2a9c1e-1".into()),
            instance_type: Some("c6i.xlarge".into()),
            availability_zone: Some("us-east-1a".into()),
            private_ip: Some("10.0.0.1".into()),
            public_ip: None,
            launch_time: Some(now.clone()),
            capacity_type: Some(MachineLifecycle::OnDemand),
            image_id: Some("ami-0123456789abcdef0".into()),
            termination_reason: None,
            interruption_notice_time: None,
            rebalance_recommendation_time: None,
            scheduled_event: None,
            replace_reason: None,
            template_digest: Some("0123abcd".into()),
            status_check: None,
            capacity_reservation_id: Some("cr-0123456789abcdef0".into()),
            message: None,
        }],
        template_version: Some(crate::api::TemplateVersion {
            generation: Some(3),
            digest: "0123abcd".into(),
            image_id: Some("ami-1".into()),
            since: now.clone(),
        }),
        launches: vec![LaunchBatch {
            id: "3f2a9c1e-1".into(),
            attempt: 0,
            token: "hf-3f2a9c1e-1-0-5d41402abc4b2a76b9719d911017c592".into(),
            count: 2,
            params_digest: "sha256:0f3e".into(),
            state: LaunchState::Launched,
            image_id: Some("ami-0123456789abcdef0".into()),
            instance_types: vec!["c6i.xlarge".into()],
            subnet_ids: vec!["subnet-0a1b2c3d4e5f60718".into()],
            capacity_type: Some(CapacityType::OnDemand),
            created_at: Some(now),
            message: None,
            availability_zone: None,
            failure: None,
            group: None,
            launch_template: None,
            template_digest: Some("0123abcd".into()),
        }],
    };
    let value = serde_json::to_value(&status).expect("serializes");
    assert_eq!(value["machines"][0]["state"], "running");
    assert_eq!(value["machines"][0]["capacityType"], "on-demand");
    assert_eq!(value["launches"][0]["state"], "Launched");
    assert_eq!(
        value["conditions"][0]["lastTransitionTime"],
        "2023-11-14T22:13:20Z"
    );
    let back: MachineRequestStatus = serde_json::from_value(value).expect("deserializes");
    assert_eq!(back, status);
}

/// `valid_template_spec()` with `fields` over it and without instanceTypes.
fn template_without_types(fields: Value) -> Value {
    let mut t = template_with(fields);
    t["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("instanceTypes");
    t
}

fn requirements() -> Value {
    json!({"vcpuCount": {"min": 2, "max": 8}, "memoryMiB": {"min": 4096},
           "cpuManufacturers": ["intel", "amazon-web-services"],
           "instanceGenerations": ["current"], "burstablePerformance": "excluded",
           "excludedInstanceTypes": ["t2.*", "m5a.large"]})
}

#[test]
fn launch_template_and_instance_requirements_rules() {
    let good = [
        template_with(json!({"launchTemplate": {"id": "lt-0123456789abcdef0"}})),
        template_with(json!({"launchTemplate": {"name": "hpc-base", "version": "$Latest"}})),
        template_with(
            json!({"providerApi": "EC2Fleet", "launchTemplate": {"name": "b", "version": "12"},
                   "keyName": "k", "placement": {"groupName": "pg"}}),
        ),
        template_without_types(
            json!({"providerApi": "EC2Fleet", "instanceRequirements": requirements()}),
        ),
        template_without_types(json!({"providerApi": "EC2Fleet",
            "launchTemplate": {"id": "lt-0123456789abcdef0"},
            "instanceRequirements": {"vcpuCount": {"min": 1}, "memoryMiB": {"min": 0},
                                     "allowedInstanceTypes": ["c6i.*"]}})),
    ];
    for t in &good {
        let errors = cel_errors::<MachineTemplate>(t, None);
        assert!(errors.is_empty(), "{t}: {errors:?}");
    }
    let bad: Vec<(&str, Value, &str)> = vec![
        (
            "id and name",
            template_with(json!({"launchTemplate": {"id": "lt-0123456789abcdef0", "name": "x"}})),
            "launchTemplate: set exactly one of id or name",
        ),
        (
            "neither id nor name",
            template_with(json!({"launchTemplate": {"version": "3"}})),
            "launchTemplate: set exactly one of id or name",
        ),
        (
            "a fleet override cannot carry security groups",
            template_with(json!({"providerApi": "EC2Fleet",
                "launchTemplate": {"id": "lt-0123456789abcdef0"},
                "securityGroupIds": ["sg-12345678"]})),
            "set securityGroupIds, userData",
        ),
        (
            "requirements with RunInstances",
            template_without_types(json!({"instanceRequirements": requirements()})),
            "instanceRequirements needs providerApi EC2Fleet",
        ),
        (
            "requirements beside types",
            template_with(
                json!({"providerApi": "EC2Fleet", "instanceRequirements": requirements()}),
            ),
            "set exactly one of instanceTypes or instanceRequirements",
        ),
        (
            "neither types nor requirements",
            template_without_types(json!({})),
            "set exactly one of instanceTypes or instanceRequirements",
        ),
        (
            "allowed and excluded",
            template_without_types(json!({"providerApi": "EC2Fleet",
                "instanceRequirements": {"vcpuCount": {"min": 1}, "memoryMiB": {"min": 1},
                    "allowedInstanceTypes": ["c6i.*"], "excludedInstanceTypes": ["t2.*"]}})),
            "allowedInstanceTypes or excludedInstanceTypes, not both",
        ),
        (
            "max below min",
            template_without_types(json!({"providerApi": "EC2Fleet",
                "instanceRequirements": {"vcpuCount": {"min": 8, "max": 4}, "memoryMiB": {"min": 1}}})),
            "max must be at least min",
        ),
    ];
    for (what, t, want) in bad {
        let errors = cel_errors::<MachineTemplate>(&t, None);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{what}: {errors:?}"
        );
    }
}

/// Capacity reservations, Capacity Blocks and network interfaces: every bad
/// combination is refused by exactly one rule whose message names the field.
#[test]
fn reservation_and_interface_cel_rules() {
    let group = "arn:aws:resource-groups:us-east-1:123456789012:group/hpc-reservations";
    let bad: Vec<(&str, Value, &str)> = vec![
        (
            "empty reservation",
            json!({"capacityReservation": {}}),
            "capacityReservation: set preference, id or resourceGroupArn",
        ),
        (
            "id and group",
            json!({"capacityReservation": {"id": "cr-0123456789abcdef0", "resourceGroupArn": group}}),
            "capacityReservation: set id or resourceGroupArn, not both",
        ),
        (
            "open with a target",
            json!({"capacityReservation": {"preference": "Open", "id": "cr-0123456789abcdef0"}}),
            "capacityReservation.preference Open or None takes no target",
        ),
        (
            "none with a group",
            json!({"capacityReservation": {"preference": "None", "resourceGroupArn": group}}),
            "capacityReservation.preference Open or None takes no target",
        ),
        (
            "targeted only without a target",
            json!({"capacityReservation": {"preference": "TargetedOnly"}}),
            "capacityReservation.preference TargetedOnly needs a target",
        ),
        (
            "capacity block without an id",
            json!({"capacityReservation": {"resourceGroupArn": group, "capacityBlock": true}}),
            "capacityReservation.capacityBlock needs the Capacity Block's reservation id",
        ),
        (
            "capacity block with spot",
            json!({"capacityType": "spot", "capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true}}),
            "capacityReservation.capacityBlock launches into a Capacity Block: capacityType must be on-demand",
        ),
        (
            "capacity block with a spot price",
            json!({"capacityType": "spot", "maxPrice": "1.2", "capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true}}),
            "capacityType must be on-demand",
        ),
        (
            "capacity block in a spot mix",
            json!({"providerApi": "EC2Fleet", "capacityType": "mixed", "onDemandPercent": 50,
                   "capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true}}),
            "capacityType must be on-demand",
        ),
        (
            "reservation id with a fleet",
            json!({"providerApi": "EC2Fleet", "capacityReservation": {"id": "cr-0123456789abcdef0"}}),
            "capacityReservation.id with providerApi EC2Fleet",
        ),
        (
            "efa-only primary",
            json!({"networkInterfaces": [{"interfaceType": "efa-only"}]}),
            "networkInterfaces[0] is the primary interface, which carries IP traffic",
        ),
        (
            "primary on card 1",
            json!({"networkInterfaces": [{"interfaceType": "efa", "networkCardIndex": 1}]}),
            "networkInterfaces[0] is the primary interface: its deviceIndex and networkCardIndex must be 0",
        ),
        (
            "primary at device 1",
            json!({"networkInterfaces": [{"deviceIndex": 1}]}),
            "networkInterfaces[0] is the primary interface: its deviceIndex and networkCardIndex must be 0",
        ),
        (
            "public ip with two interfaces",
            json!({"associatePublicIpAddress": true,
                   "networkInterfaces": [{"interfaceType": "efa"}, {"interfaceType": "efa-only"}]}),
            "associatePublicIpAddress: true needs a single network interface",
        ),
    ];
    for (name, fields, wanted) in bad {
        let errors = cel_errors::<MachineTemplate>(&template_with(fields), None);
        assert!(
            errors.iter().any(|e| e.contains(wanted)),
            "{name}: wanted an error containing {wanted:?}, got {errors:?}"
        );
        assert_eq!(
            errors.len(),
            1,
            "{name}: exactly one rule should fail: {errors:?}"
        );
    }
    let good: Vec<Value> = vec![
        json!({"capacityReservation": {"preference": "None"}}),
        json!({"capacityReservation": {"preference": "Open"}}),
        json!({"capacityReservation": {"id": "cr-0123456789abcdef0"}}),
        json!({"capacityReservation": {"preference": "TargetedOnly", "resourceGroupArn": group}}),
        json!({"capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true}}),
        json!({"providerApi": "EC2Fleet", "capacityReservation": {"id": "cr-0123456789abcdef0", "capacityBlock": true}}),
        json!({"providerApi": "EC2Fleet", "capacityType": "mixed", "onDemandPercent": 50,
               "capacityReservation": {"resourceGroupArn": group}}),
        json!({"associatePublicIpAddress": false, "networkInterfaces": [
            {"interfaceType": "efa"}, {"interfaceType": "efa-only", "networkCardIndex": 1, "deviceIndex": 1}]}),
        json!({"associatePublicIpAddress": true, "networkInterfaces": [{"interfaceType": "efa"}]}),
    ];
    for fields in good {
        let errors = cel_errors::<MachineTemplate>(&template_with(fields.clone()), None);
        assert!(errors.is_empty(), "{fields}: {errors:?}");
    }
}

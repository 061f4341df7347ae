//! One template object of an `awsprov_templates.json` (IBM's AWS provider or
//! open-hostfactory-plugin field names) → a MachineTemplate manifest, plus a
//! Secret when it has a user data script. Every field is either mapped,
//! mapped with a change that is reported, or reported as not mapped: the
//! caller gets a [`Note`] for each, by field name, so nothing is dropped
//! silently.
//!
//! [`convert`] reads the fields by group, in a fixed order (the notes come
//! out in that order): the launch group (`launch.rs`), the host group
//! (`host.rs`, with placement, tenancy and EBS optimization from
//! `placement.rs`, interfaceType and efaCount from `network.rs`), the
//! machine limit, the user's launch template (`launch_template.rs`), then the
//! fields with no equivalent
//! (`unmapped.rs`).

mod cursor;
mod host;
mod launch;
mod launch_template;
mod network;
mod placement;
mod unmapped;

use std::path::Path;

use serde_json::{json, Map, Value};

use cursor::Cursor;

use crate::api::MachineTemplate;
use crate::hostfactory::{PRIORITY_ANNOTATION, TEMPLATE_ID_ANNOTATION};

/// Label the import puts on every template so a `templateSelector` can offer
/// exactly the imported ones.
pub const OFFERED_LABEL: &str = "hostforge.io/hf-offered";

/// A remark about one source field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The field as the source file names it.
    pub field: String,
    /// What happened to it.
    pub message: String,
}

/// One converted template.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The HostFactory templateId.
    pub template_id: String,
    /// The MachineTemplate's name.
    pub name: String,
    /// The MachineTemplate manifest.
    pub template: Value,
    /// The Secret holding the user data, if any.
    pub secret: Option<Value>,
    /// Fields not mapped, or mapped with a change.
    pub notes: Vec<Note>,
}

/// Converts one template object; `dir` is where relative script paths start
/// (and the only place scripts are read from), `namespace` goes into the
/// manifests when given.
pub fn convert(
    source: &Map<String, Value>,
    dir: &Path,
    namespace: Option<&str>,
) -> Result<Converted, String> {
    convert_with(source, dir, namespace, false)
}

/// [`convert`], reading user data scripts outside `dir` too when
/// `allow_outside` (`--allow-outside`).
pub fn convert_with(
    source: &Map<String, Value>,
    dir: &Path,
    namespace: Option<&str>,
    allow_outside: bool,
) -> Result<Converted, String> {
    let mut c = Cursor::new(source);
    let template_id = c
        .string("templateId")
        .ok_or("templateId is missing or not a string")?;
    let name = kube_name(&template_id).ok_or_else(|| {
        format!("templateId {template_id:?} has no characters usable in a Kubernetes name")
    })?;
    let mut spec = Map::new();

    launch::read(&mut c, &template_id)?.write(&mut spec);
    host::image(&mut c, &mut spec);
    host::network(&mut c, &mut spec);
    placement::read(&mut c, &mut spec);
    network::read(&mut c, &mut spec);
    if let Some(v) = host::root_volume(&mut c) {
        spec.insert("rootVolume".into(), v);
    }
    let tags = host::tags(&mut c);
    if !tags.is_empty() {
        spec.insert("tags".into(), json!(tags));
    }
    max_machines(&mut c, &mut spec);
    let hf_priority = priority(&mut c);
    let secret = host::user_data(&mut c, &mut spec, &name, dir, namespace, allow_outside);
    launch_template::read(&mut c, &mut spec);
    unmapped::note_the_rest(&mut c);

    let mut metadata = json!({
        "name": name,
        "labels": {OFFERED_LABEL: "true"},
        "annotations": {TEMPLATE_ID_ANNOTATION: template_id},
    });
    if let Some(p) = hf_priority {
        metadata["annotations"][PRIORITY_ANNOTATION] = json!(p.to_string());
    }
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    let template = json!({
        "apiVersion": "hostforge.io/v1alpha1",
        "kind": "MachineTemplate",
        "metadata": metadata,
        "spec": spec,
    });
    serde_json::from_value::<MachineTemplate>(template.clone())
        .map_err(|e| format!("{template_id}: the converted template is not valid: {e}"))?;
    Ok(Converted {
        template_id,
        name,
        template,
        secret,
        notes: c.notes,
    })
}

/// priority → the `hostforge.io/hf-priority` annotation, which
/// getAvailableTemplates passes through; an integer or its text only.
fn priority(c: &mut Cursor) -> Option<i64> {
    let value = c.take("priority")?;
    let parsed = match &value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    if parsed.is_none() {
        c.note("priority", format!("{value} is not an integer; not mapped"));
    }
    parsed
}

/// maxNumber → maxMachines; a negative number means no limit.
fn max_machines(c: &mut Cursor, spec: &mut Map<String, Value>) {
    match c.take("maxNumber") {
        Some(Value::Number(n)) => match n.as_i64() {
            Some(v) if (1..=100_000).contains(&v) => {
                spec.insert("maxMachines".into(), json!(v));
            }
            Some(v) if v < 0 => {}
            _ => c.note(
                "maxNumber",
                format!("{n} is outside 1..100000; no limit set"),
            ),
        },
        Some(other) => c.note(
            "maxNumber",
            format!("{other} is not a number; no limit set"),
        ),
        None => {}
    }
}

/// A Kubernetes object name for a templateId: lower case, runs of other
/// characters as `-`, at most 253 characters.
pub fn kube_name(id: &str) -> Option<String> {
    let mut out = String::new();
    for ch in id.chars() {
        let c = ch.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed: String = out
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .chars()
        .take(253)
        .collect();
    let trimmed = trimmed
        .trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string();
    (!trimmed.is_empty()).then_some(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(v: Value) -> Converted {
        let map = v.as_object().cloned().expect("object");
        convert(&map, Path::new("."), Some("hpc")).expect("converts")
    }

    fn fields(c: &Converted) -> Vec<&str> {
        c.notes.iter().map(|n| n.field.as_str()).collect()
    }

    #[test]
    fn placement_tenancy_and_ebs_optimization_have_a_home() {
        let c = conv(json!({
            "templateId": "hpc",
            "imageId": "ami-0123456789abcdef0",
            "vmType": "c6i.xlarge",
            "placementGroupName": "pg-hpc",
            "tenancy": "dedicated",
            "ebsOptimized": "true",
        }));
        let spec = &c.template["spec"];
        assert_eq!(
            spec["placement"],
            json!({"groupName": "pg-hpc", "tenancy": "dedicated"})
        );
        assert_eq!(spec["ebsOptimized"], json!(true));
        assert_eq!(fields(&c), Vec::<&str>::new(), "{:?}", c.notes);

        let c = conv(json!({
            "templateId": "odd",
            "imageId": "ami-0123456789abcdef0",
            "vmType": "c6i.xlarge",
            "tenancy": "shared",
            "ebsOptimized": "sometimes",
            "placementGroupName": "x".repeat(300),
        }));
        let spec = &c.template["spec"];
        assert_eq!(spec.get("placement"), None);
        assert_eq!(spec.get("ebsOptimized"), None);
        assert_eq!(
            fields(&c),
            ["placementGroupName", "tenancy", "ebsOptimized"],
            "{:?}",
            c.notes
        );
        assert!(c.notes[1].message.contains("default, dedicated or host"));
    }

    #[test]
    fn ibm_efa_fields_map_to_network_interfaces() {
        let c = conv(json!({
            "templateId": "hpc-efa",
            "imageId": "ami-0123456789abcdef0",
            "vmType": "p4d.24xlarge",
            "interfaceType": "efa",
            "efaCount": 4,
        }));
        let list = c.template["spec"]["networkInterfaces"]
            .as_array()
            .expect("interfaces");
        assert_eq!(list.len(), 4);
        assert!(
            !fields(&c).contains(&"interfaceType") && !fields(&c).contains(&"efaCount"),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn an_ibm_on_demand_template_maps_field_by_field() {
        let c = conv(json!({
            "templateId": "Template-VM-1",
            "maxNumber": 5,
            "attributes": {"type": ["String", "X86_64"], "ncpus": ["Numeric", "1"]},
            "imageId": "ami-0123456789abcdef0",
            "subnetId": "subnet-0123456789abcdef0,subnet-1123456789abcdef0",
            "vmType": "t3.micro",
            "keyName": "ops",
            "securityGroupIds": ["sg-0123456789abcdef0"],
            "instanceProfile": "hpc-node",
            "rootDeviceVolumeSize": 50,
            "volumeType": "io2",
            "iops": 3000,
            "instanceTags": "team=hpc;cost=42;aws:x=y",
            "fleetRole": "arn:aws:iam::123456789012:role/fleet",
            "pgrpName": "pg-1",
            "priority": 5
        }));
        assert_eq!(c.name, "template-vm-1");
        assert_eq!(
            c.template["metadata"]["annotations"][PRIORITY_ANNOTATION],
            "5"
        );
        assert_eq!(c.template_id, "Template-VM-1");
        let t = &c.template;
        assert_eq!(
            t["metadata"]["annotations"][TEMPLATE_ID_ANNOTATION],
            "Template-VM-1"
        );
        assert_eq!(t["metadata"]["labels"][OFFERED_LABEL], "true");
        assert_eq!(t["metadata"]["namespace"], "hpc");
        let s = &t["spec"];
        assert_eq!(s["image"], json!({"id": "ami-0123456789abcdef0"}));
        assert_eq!(s["instanceTypes"], json!([{"type": "t3.micro"}]));
        assert_eq!(s["subnetIds"].as_array().map(Vec::len), Some(2));
        assert_eq!(s["maxMachines"], 5);
        assert_eq!(s["capacityType"], "on-demand");
        assert!(s.get("providerApi").is_none());
        assert_eq!(
            s["rootVolume"],
            json!({"sizeGiB": 50, "type": "io2", "iops": 3000})
        );
        assert_eq!(s["tags"], json!({"team": "hpc", "cost": "42"}));
        assert_eq!(s["keyName"], "ops");
        assert_eq!(s["instanceProfile"], "hpc-node");
        assert_eq!(
            fields(&c),
            ["instanceTags", "attributes", "fleetRole", "pgrpName"]
        );
    }

    #[test]
    fn spot_fleets_with_weights_become_ec2_fleet() {
        let c = conv(json!({
            "templateId": "spot",
            "imageId": "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
            "vmTypes": {"c5.xlarge": 1, "c5.2xlarge": 2},
            "priceType": "heterogeneous",
            "percentOnDemand": 25,
            "allocationStrategy": "capacityOptimized",
            "maxSpotPrice": 0.5,
            "awshandler": "SpotFleet"
        }));
        let s = &c.template["spec"];
        assert_eq!(s["providerApi"], "EC2Fleet");
        assert_eq!(s["capacityType"], "mixed");
        assert_eq!(s["onDemandPercent"], 25);
        assert_eq!(s["allocationStrategy"], "capacity-optimized");
        assert_eq!(s["maxPrice"], "0.5");
        assert_eq!(
            s["instanceTypes"],
            json!([{"type": "c5.2xlarge", "weight": 2}, {"type": "c5.xlarge", "weight": 1}])
        );
        assert_eq!(
            s["image"]["ssmParameter"],
            "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64"
        );
        assert_eq!(fields(&c), ["awshandler"]);
    }

    #[test]
    fn settings_that_do_not_apply_are_reported_not_kept() {
        let c = conv(json!({
            "templateId": "od",
            "imageId": "resolve:ssm:/my/ami",
            "vmTypes": {"t3.micro": 1, "t3.small": 2},
            "allocationStrategy": "lowestPrice",
            "maxSpotPrice": "0.1",
            "percentOnDemand": 50,
            "iops": 3000,
            "launchTemplateId": "lt-0123",
            "userData": "A=1;B=2",
            "maxNumber": -1
        }));
        let s = &c.template["spec"];
        assert_eq!(s["image"]["ssmParameter"], "/my/ami");
        assert!(s.get("allocationStrategy").is_none() && s.get("maxPrice").is_none());
        assert!(s.get("maxMachines").is_none(), "-1 means no limit");
        assert_eq!(
            s["instanceTypes"],
            json!([{"type": "t3.micro"}, {"type": "t3.small"}])
        );
        let mut f = fields(&c);
        f.sort();
        assert_eq!(
            f,
            [
                "allocationStrategy",
                "iops",
                "launchTemplateId",
                "maxSpotPrice",
                "percentOnDemand",
                "userData",
                "vmTypes"
            ]
        );
    }

    #[test]
    fn user_data_scripts_become_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("boot.sh"), "#!/bin/sh\necho hi\n").expect("write");
        let map = json!({"templateId": "boot", "imageId": "ami-12345678", "vmType": "t3.micro",
                         "userDataScript": "boot.sh"});
        let c = convert(map.as_object().expect("object"), dir.path(), None).expect("converts");
        let secret = c.secret.expect("secret");
        assert_eq!(secret["metadata"]["name"], "boot-userdata");
        assert_eq!(secret["stringData"]["userData"], "#!/bin/sh\necho hi\n");
        assert_eq!(
            secret["metadata"]["labels"]["hostforge.io/user-data"], "true",
            "the operator reads only Secrets that opted in"
        );
        assert_eq!(
            c.template["spec"]["userData"]["secretRef"]["name"],
            "boot-userdata"
        );
        assert!(c.notes.is_empty(), "{:?}", c.notes);

        let missing = json!({"templateId": "x", "imageId": "ami-12345678", "vmType": "t3.micro",
                             "userDataScript": "nope.sh"});
        let c = convert(missing.as_object().expect("object"), dir.path(), None).expect("converts");
        assert!(c.secret.is_none());
        assert_eq!(fields(&c), ["userDataScript"]);
    }

    #[test]
    fn scripts_outside_the_template_directory_or_too_large_are_not_read() {
        let root = tempfile::tempdir().expect("tempdir");
        let dir = root.path().join("conf");
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(root.path().join("secret.key"), "PRIVATE").expect("write");
        std::fs::write(dir.join("big.sh"), "#".repeat(16 * 1024 + 1)).expect("write");
        let with = |script: &str| {
            json!({"templateId": "t", "imageId": "ami-12345678", "vmType": "t3.micro",
                   "userDataScript": script})
        };
        let outside = root.path().join("secret.key");
        for script in ["../secret.key", outside.to_str().expect("utf-8")] {
            let t = with(script);
            let c = convert(t.as_object().expect("object"), &dir, None).expect("converts");
            assert!(c.secret.is_none(), "{script} was read");
            assert!(
                c.notes[0].message.contains("--allow-outside"),
                "{:?}",
                c.notes
            );
            let allowed =
                convert_with(t.as_object().expect("object"), &dir, None, true).expect("converts");
            let secret = allowed.secret.expect("read when allowed");
            assert_eq!(secret["stringData"]["userData"], "PRIVATE");
        }
        let t = with("big.sh");
        let c = convert_with(t.as_object().expect("object"), &dir, None, true).expect("converts");
        assert!(c.secret.is_none());
        assert!(c.notes[0].message.contains("16384"), "{:?}", c.notes);
    }

    #[test]
    fn unusable_templates_are_errors() {
        let err = |v: Value| {
            convert(v.as_object().expect("object"), Path::new("."), None).expect_err("error")
        };
        assert!(err(json!({"vmType": "t3.micro"})).contains("templateId"));
        assert!(err(json!({"templateId": "a"})).contains("vmType"));
        assert!(err(json!({"templateId": "%%%", "vmType": "t3.micro"})).contains("Kubernetes name"));
    }

    #[test]
    fn names_are_made_kubernetes_safe() {
        assert_eq!(kube_name("Template_VM 1").as_deref(), Some("template-vm-1"));
        assert_eq!(kube_name("-a.b-").as_deref(), Some("a.b"));
        assert_eq!(kube_name("__"), None);
        assert_eq!(kube_name(&"A".repeat(300)).map(|n| n.len()), Some(253));
    }
}

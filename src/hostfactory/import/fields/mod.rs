//! One template object of an `awsprov_templates.json` (IBM's AWS provider or
//! open-hostfactory-plugin field names) → a MachineTemplate manifest, plus a
//! Secret when it has a user data script. Every field is either mapped,
//! mapped with a change that is reported, or reported as not mapped: the
//! caller gets a [`Note`] for each, by field name, so nothing is dropped
//! silently.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::api::MachineTemplate;
use crate::hostfactory::TEMPLATE_ID_ANNOTATION;

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

/// Converts one template object; `dir` is where relative script paths start,
/// `namespace` goes into the manifests when given.
pub fn convert(
    source: &Map<String, Value>,
    dir: &Path,
    namespace: Option<&str>,
) -> Result<Converted, String> {
    let mut c = Cursor {
        rest: source.clone(),
        notes: vec![],
    };
    let template_id = c
        .string("templateId")
        .ok_or("templateId is missing or not a string")?;
    let name = kube_name(&template_id).ok_or_else(|| {
        format!("templateId {template_id:?} has no characters usable in a Kubernetes name")
    })?;
    let mut spec = Map::new();

    // Instance types first: weights and spot decide the API.
    let (types, weighted) = instance_types(&mut c);
    if types.is_empty() {
        return Err(format!("{template_id}: no vmType or vmTypes"));
    }
    let capacity = capacity(&mut c);
    let handler = c
        .string("providerApi")
        .map(|v| ("providerApi", v))
        .or_else(|| c.string("awshandler").map(|v| ("awshandler", v)));
    let allocation = c.string("allocationStrategy");
    let mut fleet = capacity.0 == "mixed" || (allocation.is_some() && capacity.0 != "on-demand");
    if let Some((field, api)) = &handler {
        match api.as_str() {
            "RunInstances" if fleet => c.note(
                field,
                "RunInstances launches one capacity type without allocation strategies; EC2Fleet is used",
            ),
            "RunInstances" => {}
            "EC2Fleet" | "EC2FleetInstant" => fleet = true,
            other => {
                fleet = true;
                c.note(
                    field,
                    format!("{other} is launched as an EC2 Fleet of type instant; the operator keeps the count itself"),
                );
            }
        }
    }
    if fleet {
        spec.insert("providerApi".into(), json!("EC2Fleet"));
    }
    let types_json: Vec<Value> = types
        .iter()
        .map(|(t, w)| match w {
            Some(w) if fleet => json!({"type": t, "weight": w}),
            _ => json!({"type": t}),
        })
        .collect();
    if weighted && !fleet {
        c.note(
            "vmTypes",
            "weights need EC2 Fleet; this template launches with RunInstances, so they are dropped",
        );
    }
    spec.insert("instanceTypes".into(), Value::Array(types_json));
    spec.insert("capacityType".into(), json!(capacity.0));
    if let Some(pct) = capacity.1 {
        spec.insert("onDemandPercent".into(), json!(pct));
    }
    if let Some(a) = allocation {
        match allocation_strategy(&a) {
            Some(v) if fleet && capacity.0 != "on-demand" => {
                spec.insert("allocationStrategy".into(), json!(v));
            }
            Some(_) => c.note(
                "allocationStrategy",
                "only applies to spot capacity; on-demand capacity follows the order of vmTypes",
            ),
            None => c.note(
                "allocationStrategy",
                format!("{a:?} is not an EC2 Fleet spot strategy"),
            ),
        }
    }
    if let Some(price) = c.take("maxSpotPrice") {
        let text = match &price {
            Value::Number(n) => Some(n.to_string()),
            Value::String(s) => Some(s.clone()),
            _ => None,
        };
        match text {
            Some(p) if capacity.0 != "on-demand" => {
                spec.insert("maxPrice".into(), json!(p));
            }
            Some(_) => c.note(
                "maxSpotPrice",
                "ignored: the template launches on-demand capacity",
            ),
            None => c.note("maxSpotPrice", "not a number"),
        }
    }

    image(&mut c, &mut spec);
    let subnets = [c.list("subnetId"), c.list("subnetIds")].concat();
    if !subnets.is_empty() {
        spec.insert("subnetIds".into(), json!(dedup(subnets)));
    }
    let groups = c.list("securityGroupIds");
    if !groups.is_empty() {
        spec.insert("securityGroupIds".into(), json!(dedup(groups)));
    }
    if let Some(k) = c.string("keyName") {
        spec.insert("keyName".into(), json!(k));
    }
    if let Some(p) = c.string("instanceProfile") {
        spec.insert("instanceProfile".into(), json!(p));
    }
    if let Some(v) = root_volume(&mut c) {
        spec.insert("rootVolume".into(), v);
    }
    let tags = tags(&mut c);
    if !tags.is_empty() {
        spec.insert("tags".into(), json!(tags));
    }
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
    let secret = user_data(&mut c, &mut spec, &name, dir, namespace);

    for (field, message) in [
        ("attributes", "not needed: the operator reads the size of the first instance type from the cloud (status.instanceTypeInfo)"),
        ("fleetRole", "not needed: EC2 Fleet instant fleets use the service-linked role"),
        ("fleetType", "not needed: fleets are always of type instant"),
        ("launchTemplateId", "not supported: hostforge launches without launch templates; copy its settings into this template"),
        ("launchTemplateVersion", "not supported: hostforge launches without launch templates"),
        ("userData", "not mapped: these variables fed IBM's own user_data.sh; put them into the user data script"),
    ] {
        if c.take(field).is_some() {
            c.note(field, message);
        }
    }
    let rest: Vec<String> = c.rest.keys().cloned().collect();
    for field in rest {
        c.note(&field, "no hostforge equivalent; not mapped");
    }

    let mut metadata = json!({
        "name": name,
        "labels": {OFFERED_LABEL: "true"},
        "annotations": {TEMPLATE_ID_ANNOTATION: template_id},
    });
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

/// The source fields not consumed yet, and the notes so far.
struct Cursor {
    rest: Map<String, Value>,
    notes: Vec<Note>,
}

impl Cursor {
    fn take(&mut self, field: &str) -> Option<Value> {
        self.rest.remove(field).filter(|v| !v.is_null())
    }

    fn note(&mut self, field: &str, message: impl Into<String>) {
        self.notes.push(Note {
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// A string field (numbers and booleans are accepted as their text).
    fn string(&mut self, field: &str) -> Option<String> {
        match self.take(field)? {
            Value::String(s) if s.trim().is_empty() => None,
            Value::String(s) => Some(s.trim().to_string()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            other => {
                self.note(field, format!("expected a string, got {other}; not mapped"));
                None
            }
        }
    }

    /// A list field, given as a JSON list or a comma-separated string.
    fn list(&mut self, field: &str) -> Vec<String> {
        match self.take(field) {
            None => vec![],
            Some(Value::String(s)) => split(&s, ','),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::trim).filter(|s| !s.is_empty()))
                .map(String::from)
                .collect(),
            Some(other) => {
                self.note(field, format!("expected a list, got {other}; not mapped"));
                vec![]
            }
        }
    }
}

fn split(s: &str, sep: char) -> Vec<String> {
    s.split(sep)
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect()
}

fn dedup(items: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for i in items {
        if !out.contains(&i) {
            out.push(i);
        }
    }
    out
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

/// vmType (a type or a comma list) then vmTypes (a list, or an object of type →
/// weight; JSON objects carry no order, so those come sorted by name). Returns
/// the types with weights and whether any weight is not 1.
fn instance_types(c: &mut Cursor) -> (Vec<(String, Option<i64>)>, bool) {
    let mut types: Vec<(String, Option<i64>)> =
        c.list("vmType").into_iter().map(|t| (t, None)).collect();
    let mut weighted = false;
    match c.take("vmTypes") {
        None => {}
        Some(Value::Object(map)) => {
            for (t, w) in map {
                let weight = w.as_i64().filter(|w| (1..=1000).contains(w));
                if weight.is_none() {
                    c.note(
                        "vmTypes",
                        format!("weight of {t} ({w}) is not 1..1000; dropped"),
                    );
                }
                weighted |= weight.is_some_and(|w| w != 1);
                match types.iter_mut().find(|(x, _)| *x == t) {
                    Some(entry) => entry.1 = weight,
                    None => types.push((t, weight)),
                }
            }
        }
        Some(Value::Array(items)) => {
            for t in items.iter().filter_map(|v| v.as_str()) {
                if !types.iter().any(|(x, _)| x == t) {
                    types.push((t.to_string(), None));
                }
            }
        }
        Some(Value::String(s)) => {
            for t in split(&s, ',') {
                if !types.iter().any(|(x, _)| *x == t) {
                    types.push((t, None));
                }
            }
        }
        Some(other) => c.note(
            "vmTypes",
            format!("expected an object or list, got {other}"),
        ),
    }
    if types.len() > 20 {
        c.note(
            "vmTypes",
            format!("{} types; only the first 20 are kept", types.len()),
        );
        types.truncate(20);
    }
    for extra in ["vmTypesOnDemand", "vmTypesPriority"] {
        if c.take(extra).is_some() {
            c.note(extra, "not mapped: hostforge uses one list of types (vmType/vmTypes) for both capacity types");
        }
    }
    (types, weighted)
}

/// priceType and percentOnDemand → capacityType and onDemandPercent.
fn capacity(c: &mut Cursor) -> (&'static str, Option<i64>) {
    let price = c.string("priceType");
    let pct = c.take("percentOnDemand");
    let kind = match price.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("ondemand") | Some("on-demand") => "on-demand",
        Some("spot") => "spot",
        Some("heterogeneous") | Some("mixed") => "mixed",
        Some(other) => {
            c.note(
                "priceType",
                format!("{other:?} is not ondemand, spot or heterogeneous; on-demand used"),
            );
            "on-demand"
        }
    };
    let pct = match (kind, pct) {
        ("mixed", Some(v)) => match v.as_i64().filter(|p| (0..=100).contains(p)) {
            Some(p) => Some(p),
            None => {
                c.note("percentOnDemand", format!("{v} is not 0..100; 0 used"));
                Some(0)
            }
        },
        ("mixed", None) => {
            c.note(
                "percentOnDemand",
                "missing with priceType heterogeneous; 0 (all spot) used",
            );
            Some(0)
        }
        (_, Some(_)) => {
            c.note(
                "percentOnDemand",
                "ignored: only used with priceType heterogeneous",
            );
            None
        }
        (_, None) => None,
    };
    (kind, pct)
}

/// IBM's camelCase strategies → the API's kebab-case ones.
fn allocation_strategy(s: &str) -> Option<&'static str> {
    Some(match s {
        "priceCapacityOptimized" | "price-capacity-optimized" => "price-capacity-optimized",
        "capacityOptimized" | "capacity-optimized" => "capacity-optimized",
        "capacityOptimizedPrioritized" | "capacity-optimized-prioritized" => {
            "capacity-optimized-prioritized"
        }
        "lowestPrice" | "lowest-price" => "lowest-price",
        "diversified" => "diversified",
        _ => return None,
    })
}

/// imageId: an AMI id, or an SSM parameter path (also as `resolve:ssm:…`).
fn image(c: &mut Cursor, spec: &mut Map<String, Value>) {
    let Some(id) = c.string("imageId") else {
        c.note(
            "imageId",
            "missing: the template cannot launch until spec.image is set",
        );
        return;
    };
    if is_ami_id(&id) {
        spec.insert("image".into(), json!({"id": id}));
    } else if let Some(param) = id
        .strip_prefix("resolve:ssm:")
        .or(Some(&id))
        .filter(|p| p.starts_with('/'))
    {
        spec.insert("image".into(), json!({"ssmParameter": param}));
    } else {
        c.note(
            "imageId",
            format!("{id:?} is neither an AMI id nor an SSM parameter path; not mapped"),
        );
    }
}

/// Whether `s` is an AMI id as the API accepts it (`ami-` and 8 or 17
/// lower-case hex digits, [`crate::api::AMI_ID_PATTERN`]).
fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    })
}

/// rootDeviceVolumeSize, volumeType, iops → rootVolume.
fn root_volume(c: &mut Cursor) -> Option<Value> {
    let size = c.take("rootDeviceVolumeSize");
    let vtype = c.string("volumeType");
    let iops = c.take("iops");
    let Some(size) = size else {
        for (field, present) in [("volumeType", vtype.is_some()), ("iops", iops.is_some())] {
            if present {
                c.note(
                    field,
                    "not mapped: needs rootDeviceVolumeSize (the root volume's size)",
                );
            }
        }
        return None;
    };
    let Some(size) = size.as_i64().filter(|s| (1..=16384).contains(s)) else {
        c.note(
            "rootDeviceVolumeSize",
            format!("{size} is not 1..16384 GiB; not mapped"),
        );
        return None;
    };
    let mut v = json!({"sizeGiB": size});
    let vt = vtype.unwrap_or_else(|| "gp3".into());
    if !["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"].contains(&vt.as_str()) {
        c.note(
            "volumeType",
            format!("{vt:?} is not an EBS volume type; gp3 used"),
        );
    } else {
        v["type"] = json!(vt);
    }
    let vt = v["type"].as_str().unwrap_or("gp3").to_string();
    match iops.as_ref().and_then(Value::as_i64) {
        Some(n) if ["gp3", "io1", "io2"].contains(&vt.as_str()) && (100..=256_000).contains(&n) => {
            v["iops"] = json!(n);
        }
        Some(n) => c.note(
            "iops",
            format!("{n} does not apply to volume type {vt}; not mapped"),
        ),
        None if iops.is_some() => c.note("iops", "not a number; not mapped"),
        None => {}
    }
    if ["io1", "io2"].contains(&vt.as_str()) && v.get("iops").is_none() {
        c.note("volumeType", format!("{vt} needs iops; gp3 used instead"));
        v["type"] = json!("gp3");
    }
    Some(v)
}

/// instanceTags `k=v;k=v` → tags (reserved keys reported).
fn tags(c: &mut Cursor) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(text) = c.string("instanceTags") else {
        return out;
    };
    for pair in split(&text, ';') {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let k = k.trim();
                if k.starts_with("hostforge.io/") || k.starts_with("aws:") {
                    c.note("instanceTags", format!("tag {k} is reserved; dropped"));
                } else if k.len() > 128 || v.len() > 256 {
                    c.note("instanceTags", format!("tag {k} is too long; dropped"));
                } else {
                    out.insert(k.to_string(), v.trim().to_string());
                }
            }
            _ => c.note(
                "instanceTags",
                format!("{pair:?} is not key=value; dropped"),
            ),
        }
    }
    out
}

/// userDataScript (a file) → a Secret and spec.userData.secretRef.
fn user_data(
    c: &mut Cursor,
    spec: &mut Map<String, Value>,
    name: &str,
    dir: &Path,
    namespace: Option<&str>,
) -> Option<Value> {
    let script = c.string("userDataScript")?;
    let path = dir.join(&script);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            c.note(
                "userDataScript",
                format!("cannot read {}: {e}; not mapped", path.display()),
            );
            return None;
        }
    };
    let secret_name = format!("{}-userdata", name.chars().take(240).collect::<String>());
    spec.insert(
        "userData".into(),
        json!({"secretRef": {"name": secret_name, "key": "userData"}}),
    );
    let mut metadata = json!({"name": secret_name});
    if let Some(ns) = namespace {
        metadata["namespace"] = json!(ns);
    }
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "stringData": {"userData": text},
    }))
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
            "pgrpName": "pg-1"
        }));
        assert_eq!(c.name, "template-vm-1");
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

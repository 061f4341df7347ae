//! Attribute-based instance type selection, which moto (5.x) does not
//! implement: its CreateFleet needs an `InstanceType` in every override and
//! fails on `InstanceRequirements`. When a test turns this on
//! ([`Forwarder::model_instance_requirements`](super::Forwarder::model_instance_requirements)),
//! the forwarder does what EC2 documents
//! (<https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-fleet-attribute-based-instance-type-selection.html>):
//! every override with `InstanceRequirements` becomes one override per
//! instance type that matches all of them (vCPUs, memory, CPU maker,
//! generation, burstable performance, excluded or allowed types with `*`
//! wildcards), the other fields of the override kept, and the rewritten
//! request goes to moto. The recorded request stays the one the client sent.
//!
//! The types come from [`TYPES`], values as EC2's DescribeInstanceTypes
//! reports them for these types; all are x86_64, so every one can run the
//! tests' AL2023 image (EC2 also leaves out types that cannot run the image).
//! EC2's defaults for attributes not given: current and previous
//! generations, any CPU maker, burstable types excluded.

use std::collections::BTreeMap;

/// One instance type as DescribeInstanceTypes describes it.
struct TypeInfo {
    name: &'static str,
    vcpus: i64,
    memory_mib: i64,
    manufacturer: &'static str,
    current: bool,
    burstable: bool,
}

const fn t(
    name: &'static str,
    vcpus: i64,
    memory_mib: i64,
    manufacturer: &'static str,
    current: bool,
    burstable: bool,
) -> TypeInfo {
    TypeInfo {
        name,
        vcpus,
        memory_mib,
        manufacturer,
        current,
        burstable,
    }
}

/// The types the model picks from, in the order it offers them.
const TYPES: &[TypeInfo] = &[
    t("t3.micro", 2, 1024, "intel", true, true),
    t("t3.small", 2, 2048, "intel", true, true),
    t("t3.medium", 2, 4096, "intel", true, true),
    t("t3a.medium", 2, 4096, "amd", true, true),
    t("c5.large", 2, 4096, "intel", true, false),
    t("c5.xlarge", 4, 8192, "intel", true, false),
    t("c6i.large", 2, 4096, "intel", true, false),
    t("c5a.large", 2, 4096, "amd", true, false),
    t("m5.large", 2, 8192, "intel", true, false),
    t("m5.xlarge", 4, 16384, "intel", true, false),
    t("m6i.large", 2, 8192, "intel", true, false),
    t("m6a.large", 2, 8192, "amd", true, false),
    t("r5.large", 2, 16384, "intel", true, false),
    t("m4.large", 2, 8192, "intel", false, false),
    t("c4.large", 2, 3840, "intel", false, false),
];

/// The instance types matching the requirements in `req` (the parameters
/// under one override's `InstanceRequirements.`), in [`TYPES`] order.
pub(super) fn matching(req: &BTreeMap<String, String>) -> Vec<&'static str> {
    let num = |k: &str| req.get(k).and_then(|v| v.parse::<i64>().ok());
    let list = |prefix: &str| -> Vec<String> {
        let mut items: Vec<(usize, String)> = req
            .iter()
            .filter_map(|(k, v)| {
                let i = k.strip_prefix(prefix)?.parse::<usize>().ok()?;
                Some((i, v.clone()))
            })
            .collect();
        items.sort();
        items.into_iter().map(|(_, v)| v).collect()
    };
    let within = |v: i64, min: Option<i64>, max: Option<i64>| {
        min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m)
    };
    let makers = list("CpuManufacturer.");
    let generations = list("InstanceGeneration.");
    let excluded = list("ExcludedInstanceType.");
    let allowed = list("AllowedInstanceType.");
    let burstable = req
        .get("BurstablePerformance")
        .map_or("excluded", String::as_str);
    TYPES
        .iter()
        .filter(|i| within(i.vcpus, num("VCpuCount.Min"), num("VCpuCount.Max")))
        .filter(|i| within(i.memory_mib, num("MemoryMiB.Min"), num("MemoryMiB.Max")))
        .filter(|i| makers.is_empty() || makers.iter().any(|m| m == i.manufacturer))
        .filter(|i| {
            let generation = if i.current { "current" } else { "previous" };
            generations.is_empty() || generations.iter().any(|g| g == generation)
        })
        .filter(|i| match burstable {
            "included" => true,
            "required" => i.burstable,
            _ => !i.burstable,
        })
        .filter(|i| !excluded.iter().any(|p| glob(p, i.name)))
        .filter(|i| allowed.is_empty() || allowed.iter().any(|p| glob(p, i.name)))
        .map(|i| i.name)
        .collect()
}

/// Whether `name` matches `pattern`, `*` matching any characters.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, rest)) => {
            let Some(tail) = name.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len()).any(|i| tail.is_char_boundary(i) && glob(rest, &tail[i..]))
        }
    }
}

/// A CreateFleet's `params` with every override that has
/// `InstanceRequirements` replaced by one override per matching type (see
/// the module doc); `None` when no override has requirements.
pub(super) fn rewrite(params: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    if !params.keys().any(|k| k.contains(".InstanceRequirements.")) {
        return None;
    }
    // config index -> override index -> (field -> value)
    let mut overrides: BTreeMap<usize, BTreeMap<usize, BTreeMap<String, String>>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (k, v) in params {
        match override_field(k) {
            Some((c, o, field)) => {
                overrides
                    .entry(c)
                    .or_default()
                    .entry(o)
                    .or_default()
                    .insert(field.to_string(), v.clone());
            }
            None => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for (c, list) in overrides {
        let mut n = 0;
        for fields in list.into_values() {
            let req: BTreeMap<String, String> = fields
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        k.strip_prefix("InstanceRequirements.")?.to_string(),
                        v.clone(),
                    ))
                })
                .collect();
            let types: Vec<Option<&str>> = if req.is_empty() {
                vec![None]
            } else {
                matching(&req).into_iter().map(Some).collect()
            };
            for ty in types {
                n += 1;
                let prefix = format!("LaunchTemplateConfigs.{c}.Overrides.{n}.");
                for (k, v) in &fields {
                    if !k.starts_with("InstanceRequirements.") {
                        out.insert(format!("{prefix}{k}"), v.clone());
                    }
                }
                if let Some(ty) = ty {
                    out.insert(format!("{prefix}InstanceType"), ty.to_string());
                }
            }
        }
    }
    Some(out)
}

/// `LaunchTemplateConfigs.<c>.Overrides.<o>.<field>` → (c, o, field).
fn override_field(key: &str) -> Option<(usize, usize, &str)> {
    let rest = key.strip_prefix("LaunchTemplateConfigs.")?;
    let (c, rest) = rest.split_once('.')?;
    let rest = rest.strip_prefix("Overrides.")?;
    let (o, field) = rest.split_once('.')?;
    Some((c.parse().ok()?, o.parse().ok()?, field))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forwarder::params as req;

    #[test]
    fn types_match_every_attribute_and_exclusions_by_wildcard() {
        let got = matching(&req(&[
            ("VCpuCount.Min", "2"),
            ("VCpuCount.Max", "2"),
            ("MemoryMiB.Min", "4096"),
            ("MemoryMiB.Max", "8192"),
            ("CpuManufacturer.1", "intel"),
            ("InstanceGeneration.1", "current"),
            ("ExcludedInstanceType.1", "m5.*"),
        ]));
        assert_eq!(got, ["c5.large", "c6i.large", "m6i.large"]);
        let burst = matching(&req(&[
            ("VCpuCount.Min", "2"),
            ("MemoryMiB.Min", "0"),
            ("BurstablePerformance", "required"),
            ("AllowedInstanceType.1", "t3.*"),
        ]));
        assert_eq!(burst, ["t3.micro", "t3.small", "t3.medium"]);
    }

    #[test]
    fn an_override_with_requirements_becomes_one_per_matching_type() {
        let params = req(&[
            ("Action", "CreateFleet"),
            ("LaunchTemplateConfigs.1.Overrides.1.SubnetId", "subnet-1"),
            (
                "LaunchTemplateConfigs.1.Overrides.1.InstanceRequirements.VCpuCount.Min",
                "4",
            ),
            (
                "LaunchTemplateConfigs.1.Overrides.1.InstanceRequirements.MemoryMiB.Min",
                "16384",
            ),
            ("LaunchTemplateConfigs.1.Overrides.2.SubnetId", "subnet-2"),
            (
                "LaunchTemplateConfigs.1.Overrides.2.InstanceRequirements.VCpuCount.Min",
                "4",
            ),
            (
                "LaunchTemplateConfigs.1.Overrides.2.InstanceRequirements.MemoryMiB.Min",
                "16384",
            ),
        ]);
        let out = rewrite(&params).expect("rewritten");
        let o = |i: usize, k: &str| out.get(&format!("LaunchTemplateConfigs.1.Overrides.{i}.{k}"));
        assert_eq!(o(1, "InstanceType").map(String::as_str), Some("m5.xlarge"));
        assert_eq!(o(1, "SubnetId").map(String::as_str), Some("subnet-1"));
        assert_eq!(o(2, "SubnetId").map(String::as_str), Some("subnet-2"));
        assert!(!out.keys().any(|k| k.contains("InstanceRequirements")));
        assert_eq!(out.get("Action").map(String::as_str), Some("CreateFleet"));
        assert!(rewrite(&req(&[("Action", "CreateFleet")])).is_none());
    }
}

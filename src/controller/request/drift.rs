//! Drift, pure: which live machines of a request were launched from an older
//! version of their template. No I/O, so every rule is unit-tested here.
//!
//! Rules:
//! - the template's launch digest ([`spec_digest`]) is recorded on a launch
//!   batch before the batch is sent, and copied onto its machines from that
//!   record ([`stamp`], `templateDigest`), never from the template at
//!   adoption time: a machine settled after a crash carries what its launch
//!   was sent with. Its image is the one the cloud reports it runs;
//! - the digest covers every field of the template's spec except
//!   `maxMachines` (how many, not how) and `image` (the source: the image it
//!   resolves to counts instead, so moving to an SSM parameter that names
//!   the same AMI drifts nothing). Request fields (`spec.tags`) and the
//!   content of the user-data Secret are not part of it, nor are unset values
//!   (null, empty lists and maps), so a new optional field drifts nothing;
//! - the request records the template's digest and resolved image as last
//!   seen (`status.templateVersion`, with since when), only from a template
//!   whose status describes its current spec (the gate's condition to
//!   launch); otherwise the last record stands;
//! - a live machine is drifted when its digest differs from the record's
//!   (Spec) or its image from the record's (Image); machines without a
//!   digest (launched before hostforge recorded it, or adopted after their
//!   batch's record was pruned) are never drifted.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::batch::hex_prefix;
use crate::api::{MachineRequestStatus, MachineTemplate, MachineTemplateSpec, TemplateVersion};

/// Template spec fields that do not change how a machine is launched: a
/// change of them drifts nothing. `image` is compared by its resolved id.
const NOT_LAUNCH_RELEVANT: &[&str] = &["maxMachines", "image"];

/// Bytes of the SHA-256 kept: 32 bits tell two versions of one template
/// apart, and every machine carries the digest (status size).
const DIGEST_BYTES: usize = 4;

/// Digest of the launch-relevant part of `spec`: its JSON without
/// [`NOT_LAUNCH_RELEVANT`], keys sorted at every level (so the order of
/// fields in the Rust type never changes it) and unset values (null, empty
/// lists and maps) left out, so a new optional field added to the type in
/// an upgrade does not drift every machine.
pub fn spec_digest(spec: &MachineTemplateSpec) -> String {
    let mut value = serde_json::to_value(spec).unwrap_or(Value::Null);
    if let Some(obj) = value.as_object_mut() {
        for key in NOT_LAUNCH_RELEVANT {
            obj.remove(*key);
        }
        // A selector, not what it selects now, is the spec: launches see the
        // selection as ids (MachineTemplate::with_selections), and a subnet
        // tagged or untagged later drifts no machine.
        if spec.subnet_selector.is_some() {
            obj.remove("subnetIds");
        }
        if spec.security_group_selector.is_some() {
            obj.remove("securityGroupIds");
        }
    }
    let mut canonical = String::new();
    write_canonical(&value, &mut canonical);
    let mut hash = Sha256::new();
    hash.update(canonical.as_bytes());
    hex_prefix(hash, DIGEST_BYTES)
}

/// Whether `v` says nothing: null, or an empty list or map.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map
                .iter()
                .filter(|(_, v)| !is_unset(v))
                .map(|(k, _)| k)
                .collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(k) {
                    write_canonical(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// The template's version as it is now (`since` left to [`record`]), if its
/// status describes its current spec; else drift cannot be decided now.
pub fn current(template: &MachineTemplate, now: &Time) -> Option<TemplateVersion> {
    let status = template.status.as_ref()?;
    if status.observed_generation != template.metadata.generation {
        return None;
    }
    Some(TemplateVersion {
        generation: template.metadata.generation,
        digest: spec_digest(&template.spec),
        image_id: status.resolved_image.as_ref().map(|i| i.id.clone()),
        since: now.clone(),
    })
}

/// Copies each batch's digest onto its machines that have none yet.
pub fn stamp(st: &mut MachineRequestStatus) {
    for m in st
        .machines
        .iter_mut()
        .filter(|m| m.template_digest.is_none())
    {
        let Some(batch) = m.batch.as_deref() else {
            continue;
        };
        if let Some(b) = st.launches.iter().find(|b| b.id == batch) {
            m.template_digest.clone_from(&b.template_digest);
        }
    }
}

/// The live drifted machines' ids.
pub fn drifted(st: &MachineRequestStatus) -> BTreeSet<String> {
    st.machines
        .iter()
        .filter(|m| st.is_drifted(m))
        .map(|m| m.id.clone())
        .collect()
}

/// Records `current` as the version machines are compared with (keeping
/// `since` while the digest and image stay the same) and returns the
/// machines that became drifted by it, for the Event.
pub fn record(st: &mut MachineRequestStatus, mut current: TemplateVersion) -> Vec<String> {
    let before = drifted(st);
    if let Some(old) = &st.template_version {
        if old.digest == current.digest && old.image_id == current.image_id {
            current.since = old.since.clone();
        }
    }
    st.template_version = Some(current);
    drifted(st).difference(&before).cloned().collect()
}

/// The live drifted machines by cause: (drifted, of them spec, of them image).
pub fn tally(st: &MachineRequestStatus) -> (usize, usize, usize) {
    let Some(v) = &st.template_version else {
        return (0, 0, 0);
    };
    let drifts: Vec<_> = st
        .machines
        .iter()
        .map(|m| v.drift_of(m))
        .filter(|d| d.any())
        .collect();
    (
        drifts.len(),
        drifts.iter().filter(|d| d.spec).count(),
        drifts.iter().filter(|d| d.image).count(),
    )
}

/// The Drifted condition's (status, message): True naming how many live
/// machines drifted and why, False when none.
pub fn condition_message(st: &MachineRequestStatus) -> (bool, String) {
    let (n, spec, image) = tally(st);
    if n == 0 {
        return (
            false,
            "every machine was launched from the template's current spec and image".into(),
        );
    }
    let mut why = Vec::new();
    if spec > 0 {
        why.push(format!("spec changed ({spec})"));
    }
    if image > 0 {
        why.push(format!("image changed ({image})"));
    }
    (
        true,
        format!(
            "{n} machines were launched from an older version of the template: {}",
            why.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{
        LaunchBatch, LaunchState, Machine, MachineTemplateStatus, ResolvedImage, TerminationReason,
    };
    use k8s_openapi::jiff::Timestamp;

    fn template(json: serde_json::Value) -> MachineTemplate {
        let spec: MachineTemplateSpec = serde_json::from_value(json).expect("a template spec");
        let mut mt = MachineTemplate::new("t", spec);
        mt.metadata.generation = Some(1);
        mt
    }

    fn base() -> serde_json::Value {
        serde_json::json!({
            "image": {"id": "ami-1"},
            "instanceTypes": [{"type": "t3.micro"}],
        })
    }

    fn with(key: &str, value: serde_json::Value) -> serde_json::Value {
        let mut v = base();
        v[key] = value;
        v
    }

    fn time(s: i64) -> Time {
        Time(Timestamp::from_second(1_700_000_000 + s).expect("time"))
    }

    #[test]
    fn max_machines_and_the_image_source_do_not_change_the_digest() {
        let d = spec_digest(&template(base()).spec);
        assert_eq!(d.len(), 2 * DIGEST_BYTES);
        for (key, value) in [
            ("maxMachines", serde_json::json!(7)),
            ("image", serde_json::json!({"ssmParameter": "/p"})),
        ] {
            assert_eq!(
                spec_digest(&template(with(key, value)).spec),
                d,
                "{key} is not launch-relevant"
            );
        }
        for (key, value) in [
            ("tags", serde_json::json!({"team": "b"})),
            ("instanceTypes", serde_json::json!([{"type": "t3.small"}])),
            ("keyName", serde_json::json!("k")),
            ("subnetIds", serde_json::json!(["subnet-1"])),
        ] {
            assert_ne!(
                spec_digest(&template(with(key, value)).spec),
                d,
                "{key} is launch-relevant"
            );
        }
    }

    #[test]
    fn what_a_selector_selects_now_does_not_change_the_digest() {
        let mut spec = with(
            "subnetSelector",
            serde_json::json!({"tags": {"tier": "hpc"}}),
        );
        spec["securityGroupSelector"] = serde_json::json!({"tags": {"tier": "*"}});
        let mt = template(spec);
        let d = spec_digest(&mt.spec);
        let mut view = mt.clone();
        view.spec.subnet_ids = vec!["subnet-1".into(), "subnet-2".into()];
        view.spec.security_group_ids = vec!["sg-1".into()];
        assert_eq!(spec_digest(&view.spec), d, "the selection is not the spec");
        let mut other = mt.clone();
        other.spec.subnet_selector = None;
        assert_ne!(spec_digest(&other.spec), d, "the selector is");
    }

    #[test]
    fn unset_fields_do_not_change_the_digest() {
        let d = spec_digest(&template(base()).spec);
        for (key, value) in [
            ("subnetIds", serde_json::json!([])),
            ("tags", serde_json::json!({})),
            ("keyName", serde_json::Value::Null),
        ] {
            assert_eq!(spec_digest(&template(with(key, value)).spec), d, "{key}");
        }
        // The same holds for fields the type does not have yet.
        let mut a = String::new();
        let mut b = String::new();
        write_canonical(&serde_json::json!({"x": 1}), &mut a);
        write_canonical(
            &serde_json::json!({"x": 1, "newList": [], "newMap": {}, "newOpt": null}),
            &mut b,
        );
        assert_eq!(a, b);
    }

    #[test]
    fn the_digest_ignores_the_order_of_map_keys() {
        let a = with("tags", serde_json::json!({"a": "1", "b": "2"}));
        let b = with("tags", serde_json::json!({"b": "2", "a": "1"}));
        assert_eq!(
            spec_digest(&template(a).spec),
            spec_digest(&template(b).spec)
        );
    }

    fn version(mt: &MachineTemplate, image: &str, at: i64) -> TemplateVersion {
        TemplateVersion {
            generation: mt.metadata.generation,
            digest: spec_digest(&mt.spec),
            image_id: Some(image.into()),
            since: time(at),
        }
    }

    fn launched(id: &str, mt: &MachineTemplate, image: &str) -> Machine {
        Machine {
            template_digest: Some(spec_digest(&mt.spec)),
            image_id: Some(image.into()),
            ..Machine::test(id)
        }
    }

    #[test]
    fn drift_names_spec_and_image_and_nothing_without_a_digest_or_when_gone() {
        let old = template(base());
        let new = template(with("keyName", serde_json::json!("k")));
        let m = launched("i-1", &old, "ami-1");
        let d = |v: TemplateVersion| {
            let d = v.drift_of(&m);
            (d.spec, d.image)
        };
        assert_eq!(d(version(&old, "ami-1", 0)), (false, false));
        assert_eq!(d(version(&new, "ami-1", 0)), (true, false));
        assert_eq!(d(version(&old, "ami-2", 0)), (false, true));
        assert_eq!(d(version(&new, "ami-2", 0)), (true, true));
        let unrecorded = Machine {
            image_id: Some("ami-1".into()),
            ..Machine::test("i-2")
        };
        assert!(!version(&new, "ami-2", 0).drift_of(&unrecorded).any());
        let gone = m.clone().reason(TerminationReason::Returned);
        assert!(!version(&new, "ami-2", 0).drift_of(&gone).any());
    }

    #[test]
    fn record_keeps_since_for_the_same_version_and_reports_only_new_drift() {
        let old = template(base());
        let new = template(with("keyName", serde_json::json!("k")));
        let mut st = MachineRequestStatus {
            machines: vec![
                launched("i-1", &old, "ami-1"),
                launched("i-2", &new, "ami-1"),
                Machine::test("i-3"),
            ],
            ..Default::default()
        };
        // i-2 was launched from a spec the request never saw as current.
        assert_eq!(record(&mut st, version(&old, "ami-1", 0)), ["i-2"]);
        assert_eq!(record(&mut st, version(&old, "ami-2", 1)), ["i-1"]);
        assert!(record(&mut st, version(&old, "ami-2", 9)).is_empty());
        assert_eq!(
            st.template_version.as_ref().map(|v| v.since.clone()),
            Some(time(1))
        );
        assert_eq!(tally(&st), (2, 1, 2));
        assert_eq!(
            condition_message(&st),
            (
                true,
                "2 machines were launched from an older version of the template: spec changed (1), image changed (2)".to_string()
            )
        );
        // The template goes to what i-2 was launched from: only i-1 drifts.
        assert!(record(&mut st, version(&new, "ami-1", 10)).is_empty());
        assert_eq!(tally(&st), (1, 1, 0));
        assert_eq!(
            st.template_version.as_ref().map(|v| v.since.clone()),
            Some(time(10))
        );
        st.machines[0] = st.machines[0].clone().reason(TerminationReason::Returned);
        assert!(!condition_message(&st).0);
    }

    #[test]
    fn stamp_copies_the_batch_digest_only_onto_unrecorded_machines() {
        let mut st = MachineRequestStatus {
            machines: vec![
                Machine::test("i-1").in_batch("b-1"),
                Machine::test("i-2").in_batch("b-gone"),
                Machine {
                    template_digest: Some("old".into()),
                    ..Machine::test("i-3").in_batch("b-1")
                },
            ],
            launches: vec![LaunchBatch {
                template_digest: Some("new".into()),
                ..LaunchBatch::test("b-1", LaunchState::Launched)
            }],
            ..Default::default()
        };
        stamp(&mut st);
        let digests: Vec<Option<&str>> = st
            .machines
            .iter()
            .map(|m| m.template_digest.as_deref())
            .collect();
        assert_eq!(digests, [Some("new"), None, Some("old")]);
    }

    #[test]
    fn the_current_version_needs_a_status_for_the_current_generation() {
        let mut mt = template(base());
        assert_eq!(current(&mt, &time(0)), None);
        mt.status = Some(MachineTemplateStatus {
            observed_generation: Some(1),
            resolved_image: Some(
                serde_json::from_value::<ResolvedImage>(
                    serde_json::json!({"id": "ami-9", "source": "id", "resolvedAt": "2026-01-01T00:00:00Z"}),
                )
                .expect("an image"),
            ),
            ..Default::default()
        });
        assert_eq!(
            current(&mt, &time(0)).and_then(|c| c.image_id),
            Some("ami-9".to_string())
        );
        mt.metadata.generation = Some(2);
        assert_eq!(current(&mt, &time(0)), None);
    }
}

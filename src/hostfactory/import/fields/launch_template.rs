//! A template's own EC2 launch template: launchTemplateId and
//! launchTemplateVersion → spec.launchTemplate (id, version). A value the API
//! would refuse is reported and left out, so the rest still imports.

use serde_json::{json, Map, Value};

use super::cursor::Cursor;

/// What an EC2 Fleet override cannot carry beside a user's launch template
/// (the MachineTemplate refuses them together, see docs/api.md).
const NOT_BESIDE_A_FLEET_TEMPLATE: [&str; 7] = [
    "securityGroupIds",
    "userData",
    "rootVolume",
    "dataVolumes",
    "cpuOptions",
    "ebsOptimized",
    "associatePublicIpAddress",
];

/// launchTemplateId, launchTemplateVersion → launchTemplate. Call after the
/// other groups: on the fleet path, the settings an override cannot carry
/// are then reported and dropped (the launch template must hold them).
pub(super) fn read(c: &mut Cursor, spec: &mut Map<String, Value>) {
    let id = c.string("launchTemplateId");
    let version = c.string("launchTemplateVersion");
    let Some(id) = id else {
        if version.is_some() {
            c.note(
                "launchTemplateVersion",
                "no launchTemplateId beside it; not mapped",
            );
        }
        return;
    };
    if !matches_id(&id) {
        c.note(
            "launchTemplateId",
            format!("{id:?} is not a launch template id (lt-…); not mapped"),
        );
        return;
    }
    let mut lt = Map::new();
    lt.insert("id".into(), json!(id));
    if let Some(v) = version {
        if is_version(&v) {
            lt.insert("version".into(), json!(v));
        } else {
            c.note(
                "launchTemplateVersion",
                format!("{v:?} is not a version number, $Latest or $Default; $Default is used"),
            );
        }
    }
    spec.insert("launchTemplate".into(), Value::Object(lt));
    if spec.get("providerApi").and_then(Value::as_str) == Some("EC2Fleet") {
        for field in NOT_BESIDE_A_FLEET_TEMPLATE {
            if spec.remove(field).is_some() {
                c.note(
                    "launchTemplateId",
                    format!("spec.{field} dropped: with a launch template an EC2 Fleet takes it from the launch template"),
                );
            }
        }
    }
}

/// Whether `id` matches `crate::api::launch_base::LAUNCH_TEMPLATE_ID_PATTERN`: `lt-` and 8 or 17
/// lowercase hex digits.
fn matches_id(id: &str) -> bool {
    id.strip_prefix("lt-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn is_version(v: &str) -> bool {
    v == "$Latest"
        || v == "$Default"
        || (!v.is_empty()
            && v.len() <= 18
            && !v.starts_with('0')
            && v.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_from(source: Value) -> (Map<String, Value>, Vec<String>, Map<String, Value>) {
        let source = source.as_object().expect("object").clone();
        let mut c = Cursor::new(&source);
        let mut spec = Map::new();
        if let Some(api) = source.get("providerApi") {
            spec.insert("providerApi".into(), api.clone());
            spec.insert("securityGroupIds".into(), json!(["sg-12345678"]));
        }
        read(&mut c, &mut spec);
        let notes = c.notes.iter().map(|n| n.message.clone()).collect();
        (spec, notes, c.rest.clone())
    }

    #[test]
    fn id_and_version_map_to_the_launch_template() {
        let (spec, notes, rest) = read_from(
            json!({"launchTemplateId": "lt-0123456789abcdef0", "launchTemplateVersion": 3}),
        );
        assert_eq!(
            spec["launchTemplate"],
            json!({"id": "lt-0123456789abcdef0", "version": "3"})
        );
        assert!(notes.is_empty(), "{notes:?}");
        assert!(rest.is_empty(), "both consumed: {rest:?}");

        let (spec, _, _) = read_from(
            json!({"launchTemplateId": "lt-0123456789abcdef0", "launchTemplateVersion": "$Latest"}),
        );
        assert_eq!(spec["launchTemplate"]["version"], "$Latest");
        let (spec, _, _) = read_from(json!({"launchTemplateId": "lt-0123456789abcdef0"}));
        assert!(
            spec["launchTemplate"].get("version").is_none(),
            "the API's default"
        );
    }

    #[test]
    fn bad_values_are_reported_not_kept() {
        let (spec, notes, _) = read_from(json!({"launchTemplateId": "my-template"}));
        assert!(spec.get("launchTemplate").is_none());
        assert!(notes[0].contains("not a launch template id"), "{notes:?}");

        let (spec, notes, _) = read_from(
            json!({"launchTemplateId": "lt-0123456789abcdef0", "launchTemplateVersion": "latest"}),
        );
        assert!(spec["launchTemplate"].get("version").is_none());
        assert!(notes[0].contains("$Default is used"), "{notes:?}");

        let (spec, notes, _) = read_from(json!({"launchTemplateVersion": "2"}));
        assert!(spec.is_empty());
        assert!(notes[0].contains("no launchTemplateId"), "{notes:?}");
    }

    #[test]
    fn a_fleet_drops_what_its_overrides_cannot_carry() {
        let (spec, notes, _) = read_from(
            json!({"launchTemplateId": "lt-0123456789abcdef0", "providerApi": "EC2Fleet"}),
        );
        assert!(spec.get("securityGroupIds").is_none());
        assert!(
            notes[0].contains("spec.securityGroupIds dropped"),
            "{notes:?}"
        );
    }
}

//! The placement group of a template: placementGroupName and tenancy →
//! spec.placement, ebsOptimized → spec.ebsOptimized. A value the API would
//! refuse is reported and left out, so the rest of the template still
//! imports.

use serde_json::{json, Map, Value};

use super::cursor::Cursor;

/// The longest placement group name EC2 accepts (and the API's bound).
const MAX_GROUP_NAME: usize = 255;

/// placementGroupName, tenancy, ebsOptimized → placement and ebsOptimized.
pub(super) fn read(c: &mut Cursor, spec: &mut Map<String, Value>) {
    let mut placement = Map::new();
    if let Some(name) = c.string("placementGroupName") {
        if name.len() <= MAX_GROUP_NAME {
            placement.insert("groupName".into(), json!(name));
        } else {
            c.note(
                "placementGroupName",
                format!("longer than {MAX_GROUP_NAME} characters; not mapped"),
            );
        }
    }
    if let Some(tenancy) = c.string("tenancy") {
        match tenancy.to_ascii_lowercase().as_str() {
            t @ ("default" | "dedicated" | "host") => {
                placement.insert("tenancy".into(), json!(t));
            }
            _ => c.note(
                "tenancy",
                format!("{tenancy:?} is not one of default, dedicated or host; not mapped"),
            ),
        }
    }
    if !placement.is_empty() {
        spec.insert("placement".into(), Value::Object(placement));
    }
    if let Some(v) = c.string("ebsOptimized") {
        match v.to_ascii_lowercase().as_str() {
            "true" => {
                spec.insert("ebsOptimized".into(), json!(true));
            }
            "false" => {
                spec.insert("ebsOptimized".into(), json!(false));
            }
            _ => c.note(
                "ebsOptimized",
                format!("{v:?} is not true or false; not mapped"),
            ),
        }
    }
}

//! The network interfaces of a template: IBM's interfaceType (`efa`) and
//! efaCount → spec.networkInterfaces, that many Elastic Fabric Adapters
//! (one when only interfaceType efa is given), one per network card as
//! multi-card types need. A value the API would refuse is reported and left
//! out, so the rest of the template still imports.

use serde_json::{json, Map, Value};

use super::cursor::Cursor;

/// The most interfaces the API takes (one per card of the largest types).
const MAX_INTERFACES: i64 = 32;

/// interfaceType, efaCount → networkInterfaces.
pub(super) fn read(c: &mut Cursor, spec: &mut Map<String, Value>) {
    let efa = match c.string("interfaceType") {
        None => None,
        Some(t) => match t.to_ascii_lowercase().as_str() {
            "efa" => Some(true),
            "interface" => Some(false),
            _ => {
                c.note(
                    "interfaceType",
                    format!("{t:?} is not efa or interface; not mapped"),
                );
                None
            }
        },
    };
    let count = match c.take("efaCount") {
        None => None,
        Some(v) => {
            let n = match &v {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            };
            match n {
                Some(n) if (0..=MAX_INTERFACES).contains(&n) => Some(n),
                _ => {
                    c.note(
                        "efaCount",
                        format!("{v} is not a number from 0 to {MAX_INTERFACES}; not mapped"),
                    );
                    None
                }
            }
        }
    };
    let n = match (efa, count) {
        (Some(false), Some(n)) if n > 0 => {
            c.note(
                "efaCount",
                "interfaceType is interface: no EFA mapped".to_string(),
            );
            0
        }
        (Some(false), _) | (_, Some(0)) => 0,
        (_, Some(n)) => n,
        (Some(true), None) => 1,
        (None, None) => 0,
    };
    if n > 0 {
        let list: Vec<Value> = (0..n).map(|_| json!({"interfaceType": "efa"})).collect();
        spec.insert("networkInterfaces".into(), Value::Array(list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(v: Value) -> (Map<String, Value>, Vec<String>) {
        let mut c = Cursor::new(v.as_object().expect("object"));
        let mut spec = Map::new();
        read(&mut c, &mut spec);
        (spec, c.notes.iter().map(|n| n.field.clone()).collect())
    }

    #[test]
    fn efa_count_becomes_that_many_adapters() {
        let (spec, notes) = read_all(json!({"interfaceType": "efa", "efaCount": 4}));
        assert!(notes.is_empty(), "{notes:?}");
        let list = spec["networkInterfaces"].as_array().expect("list");
        assert_eq!(list.len(), 4);
        assert!(list.iter().all(|i| i["interfaceType"] == "efa"));
        let (spec, _) = read_all(json!({"interfaceType": "EFA"}));
        assert_eq!(spec["networkInterfaces"].as_array().map(Vec::len), Some(1));
        let (spec, _) = read_all(json!({"efaCount": "2"}));
        assert_eq!(spec["networkInterfaces"].as_array().map(Vec::len), Some(2));
    }

    #[test]
    fn bad_values_are_reported_and_left_out() {
        let (spec, notes) = read_all(json!({"interfaceType": "ena", "efaCount": 99}));
        assert!(spec.is_empty());
        assert_eq!(notes, ["interfaceType", "efaCount"]);
        let (spec, notes) = read_all(json!({"interfaceType": "interface", "efaCount": 2}));
        assert!(spec.is_empty());
        assert_eq!(notes, ["efaCount"]);
        let (spec, notes) = read_all(json!({"interfaceType": "interface"}));
        assert!(spec.is_empty() && notes.is_empty());
    }
}

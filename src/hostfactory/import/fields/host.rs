//! The host group of a template: what each machine looks like (image,
//! network, root volume, tags, user data).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Map, Value};

use super::cursor::{dedup, split, Cursor};
use crate::config::policy::USER_DATA_LABEL;

/// imageId: an AMI id, or an SSM parameter path (also as `resolve:ssm:…`).
pub(super) fn image(c: &mut Cursor, spec: &mut Map<String, Value>) {
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

/// subnetId, subnetIds, securityGroupIds, keyName, instanceProfile → the
/// fields of the same meaning (lists merged and deduplicated).
pub(super) fn network(c: &mut Cursor, spec: &mut Map<String, Value>) {
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
}

/// rootDeviceVolumeSize, volumeType, iops → rootVolume.
pub(super) fn root_volume(c: &mut Cursor) -> Option<Value> {
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
pub(super) fn tags(c: &mut Cursor) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(text) = c.string("instanceTags") else {
        return out;
    };
    for pair in split(&text, ';') {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                let k = k.trim();
                if is_reserved(k) {
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

/// Whether a tag key is one hostforge or AWS reserves. Case-insensitive, as
/// the CRD checks it: `AWS:x` would otherwise pass the import and be refused
/// by the apiserver when the template is applied.
fn is_reserved(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    key.starts_with("hostforge.io/") || key.starts_with("aws:")
}

/// EC2's limit for user data, before base64 encoding.
pub const MAX_USER_DATA_BYTES: u64 = 16 * 1024;

/// userDataScript (a file) → a Secret and spec.userData.secretRef.
///
/// The script must be a regular file of at most [`MAX_USER_DATA_BYTES`] in
/// the template file's directory (or below it) unless `allow_outside`: a
/// template file naming `/etc/shadow` or `../../.ssh/id_rsa` must not get
/// that file copied into a Secret.
pub(super) fn user_data(
    c: &mut Cursor,
    spec: &mut Map<String, Value>,
    name: &str,
    dir: &Path,
    namespace: Option<&str>,
    allow_outside: bool,
) -> Option<Value> {
    let script = c.string("userDataScript")?;
    let path = dir.join(&script);
    let text = match read_script(&path, dir, allow_outside) {
        Ok(t) => t,
        Err(why) => {
            c.note(
                "userDataScript",
                format!("{}: {why}; not mapped", path.display()),
            );
            return None;
        }
    };
    let secret_name = format!("{}-userdata", name.chars().take(240).collect::<String>());
    spec.insert(
        "userData".into(),
        json!({"secretRef": {"name": secret_name, "key": "userData"}}),
    );
    // The operator reads a Secret as user data only when it opted in.
    let mut metadata = json!({"name": secret_name, "labels": {USER_DATA_LABEL: "true"}});
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

/// The text of user data script `path`, checked as [`user_data`] says.
fn read_script(path: &Path, dir: &Path, allow_outside: bool) -> Result<String, String> {
    use std::io::Read;
    let real = std::fs::canonicalize(path).map_err(|e| format!("cannot read: {e}"))?;
    if !allow_outside {
        let base =
            std::fs::canonicalize(dir).map_err(|e| format!("cannot read its directory: {e}"))?;
        if !real.starts_with(&base) {
            return Err(format!(
                "outside the template file's directory {} (pass --allow-outside to read it)",
                base.display()
            ));
        }
    }
    let meta = std::fs::metadata(&real).map_err(|e| format!("cannot read: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_USER_DATA_BYTES {
        return Err(format!(
            "{} bytes, above EC2's user data limit of {MAX_USER_DATA_BYTES}",
            meta.len()
        ));
    }
    let mut bytes = vec![];
    std::fs::File::open(&real)
        .and_then(|f| f.take(MAX_USER_DATA_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_USER_DATA_BYTES {
        return Err(format!(
            "above EC2's user data limit of {MAX_USER_DATA_BYTES} bytes"
        ));
    }
    String::from_utf8(bytes).map_err(|_| "not UTF-8 text".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_tag_prefixes_are_dropped_in_any_case() {
        let source = serde_json::json!({
            "instanceTags": "team=hpc;AWS:x=1;Aws:y=2;HostForge.IO/owner=3;hostforge.io/z=4;awsome=5"
        });
        let mut c = Cursor::new(source.as_object().expect("an object"));
        let kept = tags(&mut c);
        let keys: Vec<&str> = kept.keys().map(String::as_str).collect();
        assert_eq!(keys, ["awsome", "team"]);
        let dropped: Vec<&str> = c
            .notes
            .iter()
            .filter(|n| n.message.ends_with("is reserved; dropped"))
            .map(|n| n.message.as_str())
            .collect();
        assert_eq!(dropped.len(), 4, "{dropped:?}");
    }
}

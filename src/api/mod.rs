//! The `hostforge.io/v1alpha1` API: the MachineTemplate and MachineRequest custom
//! resources, generated from these Rust types so that the CRDs, the controllers and
//! the validation rules can never drift apart.
//!
//! Everything a user can get wrong is rejected by the apiserver through the schema
//! (patterns, enums, ranges, CEL rules), so the controllers only ever see well-formed
//! objects. The YAML in `crds/` is produced by [`crd_yaml_files`] (`hostforge crdgen`).

pub mod conditions;
mod facts;
#[cfg(test)]
mod fixtures;
pub mod launch_base;
pub mod launch_group;
pub mod request;
pub mod reservation;
mod selection;
pub mod template;

#[cfg(test)]
mod validation_tests;

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use facts::Drift;
pub use launch_base::{
    BatchLaunchTemplate, Burstable, CountRange, CpuManufacturer, InstanceGeneration,
    InstanceRequirements, LaunchTemplateRef, ResolvedLaunchTemplate,
};
pub use launch_group::{LaunchGroup, LaunchGroupMember, LaunchGroupSpec};
pub use request::{
    LaunchBatch, LaunchState, Machine, MachineCounts, MachineLifecycle, MachineRequest,
    MachineRequestSpec, MachineRequestStatus, MachineResult, MachineState, RebalancePolicy,
    ReplaceReason, RequestPhase, StatusCheck, StatusCheckKind, StatusCheckStatus, TemplateRef,
    TerminationReason,
};
pub use request::{TemplateVersion, UpdatePolicy, UpdatePolicyType};
pub use reservation::{
    CapacityReservation, InterfaceType, NetworkInterface, ReservationPreference,
};
pub use template::{
    AllocationStrategy, CapacityType, HttpTokens, ImageArchitecture, ImageSelector, ImageSource,
    ImageSourceKind, InstanceTypeInfo, InstanceTypeOption, LaunchValidation, MachineTemplate,
    MachineTemplateSpec, MachineTemplateStatus, MetadataOptions, ProviderApi, ResolvedImage,
    RootVolume, SecretKeySelector, SelectedSecurityGroup, SelectedSubnet, TagSelector,
    UserDataSource, VolumeType,
};

/// The API group of every hostforge resource; also the prefix of its tags and finalizers.
pub const GROUP: &str = "hostforge.io";
/// The only served and stored version so far.
pub const VERSION: &str = "v1alpha1";

/// Label naming who drives a MachineRequest. Here, in the api layer, because
/// both the HostFactory plugin (which sets it) and the request controller
/// (which never replaces machines behind the scheduler's back) read it, and
/// neither may import the other.
pub const OWNER_LABEL: &str = "hostforge.io/owner";
/// Value of [`OWNER_LABEL`] on requests HostFactory created and owns.
pub const HOSTFACTORY_OWNER: &str = "hostfactory";

/// Pattern of an AMI id as EC2 issues them (8 or 17 lowercase hex digits).
pub const AMI_ID_PATTERN: &str = r"^ami-[0-9a-f]{8}([0-9a-f]{9})?$";
/// Pattern of a subnet id as EC2 issues them.
pub const SUBNET_ID_PATTERN: &str = r"^subnet-[0-9a-f]{8}([0-9a-f]{9})?$";
/// Pattern of a security group id as EC2 issues them.
pub const SECURITY_GROUP_ID_PATTERN: &str = r"^sg-[0-9a-f]{8}([0-9a-f]{9})?$";
/// Pattern of an instance id as EC2 issues them.
pub const INSTANCE_ID_PATTERN: &str = r"^i-[0-9a-f]{8}([0-9a-f]{9})?$";
/// Pattern of a Kubernetes object name (RFC 1123 subdomain), for references.
pub const OBJECT_NAME_PATTERN: &str =
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// Schema transform for enums: drops the enum type's own description, so that an
/// optional enum field shows the field's doc in `kubectl explain` (kube's rewrite of
/// `Option<Enum>` would otherwise replace it with the type's doc).
pub(crate) fn field_doc_only(schema: &mut schemars::Schema) {
    schema.remove("description");
}

/// Why writing the CRD files failed; `crdgen` prints it and exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum CrdGenError {
    /// A CRD could not be rendered as YAML (a bug in the types, not in the input).
    #[error("rendering CRD {name} as YAML: {source}")]
    Render {
        /// The CRD's metadata.name.
        name: String,
        /// What the YAML serializer reported.
        source: serde_yaml::Error,
    },
    /// The output directory or a file in it could not be written.
    #[error("writing {}: {source}", path.display())]
    Write {
        /// The path that could not be created or written.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// One generated CRD manifest, with the file name it is committed under in `crds/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdFile {
    /// File name inside the CRD directory, e.g. `machinetemplates.yaml`.
    pub file_name: &'static str,
    /// The full YAML document, header comment included.
    pub yaml: String,
}

/// All CRDs of the API, in the order they should be installed (templates first,
/// since requests refer to them). Install these rather than `MachineTemplate::crd()`
/// directly: they carry the tidied descriptions that `kubectl explain` shows.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        (
            "machinetemplates.yaml",
            tidy_descriptions(MachineTemplate::crd()),
        ),
        (
            "machinerequests.yaml",
            tidy_descriptions(MachineRequest::crd()),
        ),
        ("launchgroups.yaml", tidy_descriptions(LaunchGroup::crd())),
    ]
}

/// Doc comments arrive with the source's line breaks, which `kubectl explain` would
/// print as ragged lines; join lines within a paragraph and keep blank-line breaks.
fn tidy_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, child) in map.iter_mut() {
                    match child {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = unwrap_lines(text);
                        }
                        // Defaults and enums are data, not schema.
                        _ if key == "default" || key == "enum" => {}
                        _ => walk(child),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

fn unwrap_lines(text: &str) -> String {
    text.split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n\n")
}

const HEADER: &str = "# Generated by `hostforge crdgen` from the types in src/api/. Do not edit:\n\
                      # change the types and run `make crds`.\n";

/// Renders every CRD as the YAML committed in `crds/`; the same text is compared by
/// the staleness test, so what is installed is always what the code validates.
pub fn crd_yaml_files() -> Result<Vec<CrdFile>, CrdGenError> {
    crds()
        .into_iter()
        .map(|(file_name, crd)| {
            let body = serde_yaml::to_string(&crd).map_err(|source| CrdGenError::Render {
                name: crd.metadata.name.clone().unwrap_or_default(),
                source,
            })?;
            Ok(CrdFile {
                file_name,
                yaml: format!("{HEADER}{body}"),
            })
        })
        .collect()
}

/// Writes every CRD into `dir` (created if missing) and returns the paths written.
pub fn write_crd_files(dir: &Path) -> Result<Vec<PathBuf>, CrdGenError> {
    std::fs::create_dir_all(dir).map_err(|source| CrdGenError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    crd_yaml_files()?
        .into_iter()
        .map(|file| {
            let path = dir.join(file.file_name);
            std::fs::write(&path, file.yaml).map_err(|source| CrdGenError::Write {
                path: path.clone(),
                source,
            })?;
            Ok(path)
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream, for `crdgen --stdout | kubectl apply -f -`.
pub fn crd_yaml_stream() -> Result<String, CrdGenError> {
    Ok(crd_yaml_files()?
        .into_iter()
        .map(|f| f.yaml)
        .collect::<Vec<_>>()
        .join("---\n"))
}

/// The OpenAPI schema of a CRD's only version, as JSON, for tests that walk it.
#[cfg(test)]
fn schema_json(crd: &CustomResourceDefinition) -> serde_json::Value {
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("derived CRD has a schema");
    serde_json::to_value(schema).expect("schema serializes")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed CRDs must be exactly what the types generate; otherwise the
    /// apiserver validates against rules the code no longer has.
    #[test]
    fn committed_crds_are_up_to_date() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for file in crd_yaml_files().expect("CRDs render") {
            let path = dir.join(file.file_name);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == file.yaml,
                "{} is stale or missing: run `make crds` (or `cargo run -- crdgen`) and commit the result",
                path.display()
            );
        }
    }

    #[test]
    fn descriptions_are_unwrapped_into_paragraphs() {
        assert_eq!(unwrap_lines("a\nb\n\nc\n d"), "a b\n\nc d");
        let yaml = crd_yaml_files().expect("render").remove(1).yaml;
        assert!(yaml.contains("Number of live machines wanted, 0 to 1000. The limit keeps the request's status, which lists"));
    }

    #[test]
    fn crds_have_names_groups_and_categories() {
        for (file, crd) in crds() {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions.len(), 1);
            assert_eq!(crd.spec.versions[0].name, VERSION);
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["hostforge".to_string()][..])
            );
            let status = crd.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref());
            // A LaunchGroup is a record written once, with nothing to report.
            let wants_status = file != "launchgroups.yaml";
            assert_eq!(
                status.is_some(),
                wants_status,
                "status subresource of {file}"
            );
        }
        assert_eq!(MachineTemplate::shortnames(), &["mt"]);
        assert_eq!(MachineRequest::shortnames(), &["mreq"]);
    }

    /// The apiserver refuses non-structural schemas; kube-derive turns some Rust
    /// shapes into `oneOf`/`anyOf`, so make sure none survive.
    #[test]
    fn schemas_are_structural() {
        fn walk(path: &str, v: &serde_json::Value) {
            match v {
                serde_json::Value::Object(map) => {
                    for bad in ["oneOf", "anyOf", "allOf", "$ref", "const"] {
                        assert!(!map.contains_key(bad), "{bad} at {path}");
                    }
                    if path.ends_with("properties") || path.is_empty() {
                        // keys are property names
                    } else if !map.contains_key("x-kubernetes-preserve-unknown-fields")
                        && !path.ends_with("/default")
                        && !path.contains("x-kubernetes-validations")
                        && !path.contains("x-kubernetes-list-map-keys")
                    {
                        assert!(map.contains_key("type"), "no type at {path}");
                    }
                    for (k, child) in map {
                        if k == "default" || k == "enum" || k == "x-kubernetes-validations" {
                            continue;
                        }
                        walk(&format!("{path}/{k}"), child);
                    }
                }
                serde_json::Value::Array(items) => {
                    for (i, child) in items.iter().enumerate() {
                        walk(&format!("{path}/{i}"), child);
                    }
                }
                _ => {}
            }
        }
        for (name, crd) in crds() {
            let value = schema_json(&crd);
            let spec = &value["properties"]["spec"];
            walk(&format!("{name}:spec"), spec);
            walk(&format!("{name}:status"), &value["properties"]["status"]);
        }
    }

    /// Every property carries a description, since it is what `kubectl explain` shows.
    #[test]
    fn every_field_is_documented() {
        fn walk(path: &str, v: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(props) = v.get("properties").and_then(|p| p.as_object()) else {
                if let Some(items) = v.get("items") {
                    walk(&format!("{path}[]"), items, missing);
                }
                return;
            };
            for (k, child) in props {
                let p = format!("{path}.{k}");
                if child.get("description").is_none() {
                    missing.push(p.clone());
                }
                walk(&p, child, missing);
            }
        }
        let mut missing = vec![];
        for (name, crd) in crds() {
            let value = schema_json(&crd);
            walk(name, &value["properties"]["spec"], &mut missing);
            walk(name, &value["properties"]["status"], &mut missing);
        }
        assert!(missing.is_empty(), "undocumented fields: {missing:?}");
    }
}

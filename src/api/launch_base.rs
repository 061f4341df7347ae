//! What a MachineTemplate may take from elsewhere instead of spelling it out:
//! a user's own EC2 launch template as the base of every launch
//! ([`LaunchTemplateRef`]), and instance types chosen by EC2 from attributes
//! ([`InstanceRequirements`]) instead of a list. Kept apart from `template.rs`
//! so the template's own fields stay one screen each.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Pattern of a launch template id as EC2 issues them.
pub const LAUNCH_TEMPLATE_ID_PATTERN: &str = r"^lt-[0-9a-f]{8}([0-9a-f]{9})?$";

/// A user's own EC2 launch template, the base every launch starts from:
/// hostforge's image, instance types, subnets, ownership tags and every
/// other field the MachineTemplate sets go on top of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("has(self.id) != has(self.name)")
        .message("launchTemplate: set exactly one of id or name"),
)]
#[serde(rename_all = "camelCase")]
pub struct LaunchTemplateRef {
    /// The launch template's id, e.g. lt-0123456789abcdef0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = LAUNCH_TEMPLATE_ID_PATTERN))]
    pub id: Option<String>,

    /// The launch template's name (resolved to its id by the operator).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 128), regex(pattern = r"^[a-zA-Z0-9().\-/_]+$"))]
    pub name: Option<String>,

    /// The version to launch: a version number, "$Latest" or "$Default".
    /// Default "$Default". The operator resolves it to a number (shown in
    /// status.launchTemplate) and every launch names that number, so a batch
    /// re-sent after a new version was made launches what it first asked for.
    #[serde(default = "default_version")]
    #[schemars(regex(pattern = r"^([1-9][0-9]{0,17}|\$Latest|\$Default)$"))]
    pub version: String,
}

fn default_version() -> String {
    "$Default".into()
}

/// Instance types chosen by EC2 from their attributes (EC2 attribute-based
/// instance type selection), for providerApi EC2Fleet: every type that
/// matches all of these is a candidate, in every subnet.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!(has(self.allowedInstanceTypes) && has(self.excludedInstanceTypes))")
        .message("instanceRequirements: set allowedInstanceTypes or excludedInstanceTypes, not both (EC2 takes one)")
        .field_path(".allowedInstanceTypes"),
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRequirements {
    /// Virtual CPUs per machine: min required, max optional (no upper bound).
    pub vcpu_count: CountRange,

    /// Memory per machine in MiB: min required, max optional.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: CountRange,

    /// CPU makers to allow. Empty: any. The CPU architecture follows the
    /// image (EC2 only picks types that can run it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub cpu_manufacturers: Vec<CpuManufacturer>,

    /// Instance generations to allow. Empty: current and previous.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub instance_generations: Vec<InstanceGeneration>,

    /// Burstable performance (T) types: included, excluded or required.
    /// Empty: EC2's default, excluded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burstable_performance: Option<Burstable>,

    /// Types never to pick; "*" matches any characters, e.g. "t2.*" or "m5a.*"
    /// (at most 400). Not with allowedInstanceTypes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 400),
        inner(length(min = 1, max = 30), regex(pattern = r"^[a-z0-9.*-]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub excluded_instance_types: Vec<String>,

    /// The only types to pick from, when they also match the attributes;
    /// "*" matches any characters, e.g. "c6i.*" (at most 400). Not with
    /// excludedInstanceTypes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 400),
        inner(length(min = 1, max = 30), regex(pattern = r"^[a-z0-9.*-]+$"))
    )]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub allowed_instance_types: Vec<String>,
}

/// A range of counts: min required, max optional (no upper bound).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[x_kube(
    validation = Rule::new("!has(self.max) || self.max >= self.min")
        .message("max must be at least min")
        .field_path(".max"),
)]
#[serde(rename_all = "camelCase")]
pub struct CountRange {
    /// Smallest allowed value.
    #[schemars(range(min = 0, max = 16777216))]
    pub min: i32,

    /// Largest allowed value. Empty: no upper bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 16777216))]
    pub max: Option<i32>,
}

/// CPU makers, as EC2 names them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "kebab-case")]
pub enum CpuManufacturer {
    /// Intel.
    Intel,
    /// AMD.
    Amd,
    /// AWS Graviton.
    AmazonWebServices,
    /// Apple (Mac instances).
    Apple,
}

/// Instance generations, as EC2 names them.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "lowercase")]
pub enum InstanceGeneration {
    /// Current generation types.
    Current,
    /// Previous generation types.
    Previous,
}

/// Whether burstable performance (T) types may be picked.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "lowercase")]
pub enum Burstable {
    /// Burstable types may be picked.
    Included,
    /// Burstable types are never picked.
    Excluded,
    /// Only burstable types are picked.
    Required,
}

/// The user's launch template as the operator resolved it, so every launch
/// names one fixed version and a reader sees which.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedLaunchTemplate {
    /// The template's id.
    pub id: String,
    /// The template's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version number spec.launchTemplate.version resolved to; launches
    /// name it.
    pub version: i64,
    /// The image the version names, when it names one (spec.image overrides
    /// it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,
    /// When the operator resolved it.
    pub resolved_at: Time,
}

/// The user's launch template a batch was sent with: pinned with the batch,
/// so a re-send names the same version whatever `$Latest` means by then.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BatchLaunchTemplate {
    /// The template's id.
    pub id: String,
    /// The version number.
    pub version: i64,
}

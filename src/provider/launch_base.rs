//! A launch's base launch template and attribute-based instance types, in
//! plain types: what [`super::LaunchOptions`] carries for a template's
//! `launchTemplate` and `instanceRequirements`, and what resolving a user's
//! launch template answers.

use std::collections::BTreeSet;

use super::launch_spec::wire;
use crate::api::{InstanceRequirements, MachineTemplateSpec};

/// A user's launch template every launch of the batch starts from: its id
/// and the version number the batch pinned.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseTemplate {
    /// `lt-…`.
    pub id: String,
    /// A version number (never `$Latest`/`$Default`: those move).
    pub version: i64,
}

/// Instance types by attribute (EC2 `InstanceRequirements`), in EC2's
/// spelling; fleets only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct RequirementsSpec {
    /// vCPUs: min, and max when bounded.
    pub vcpu: (i32, Option<i32>),
    /// Memory MiB: min, and max when bounded.
    pub memory_mib: (i32, Option<i32>),
    /// `intel`, `amd`, `amazon-web-services`, `apple`.
    pub cpu_manufacturers: Vec<String>,
    /// `current`, `previous`.
    pub instance_generations: Vec<String>,
    /// `included`, `excluded`, `required`.
    pub burstable_performance: Option<String>,
    /// Types never picked (wildcards allowed).
    pub excluded_instance_types: Vec<String>,
    /// The only types picked (wildcards allowed).
    pub allowed_instance_types: Vec<String>,
}

impl RequirementsSpec {
    /// The requirements `template` asks for, if any.
    pub fn of_template(template: &MachineTemplateSpec) -> Option<RequirementsSpec> {
        template.instance_requirements.as_ref().map(Self::of)
    }

    /// `r` in EC2's spelling.
    pub fn of(r: &InstanceRequirements) -> RequirementsSpec {
        RequirementsSpec {
            vcpu: (r.vcpu_count.min, r.vcpu_count.max),
            memory_mib: (r.memory_mib.min, r.memory_mib.max),
            cpu_manufacturers: r.cpu_manufacturers.iter().map(wire).collect(),
            instance_generations: r.instance_generations.iter().map(wire).collect(),
            burstable_performance: r.burstable_performance.as_ref().map(wire),
            excluded_instance_types: r.excluded_instance_types.clone(),
            allowed_instance_types: r.allowed_instance_types.clone(),
        }
    }
}

/// Which launch template a MachineTemplate names, and which version.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LaunchTemplateQuery {
    /// `lt-…`, or `None` when named by `name`.
    pub id: Option<String>,
    /// The template name, or `None` when named by `id`.
    pub name: Option<String>,
    /// A number, `$Latest` or `$Default`.
    pub version: String,
}

/// One version of a user's launch template as the cloud describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchTemplateVersion {
    /// `lt-…`.
    pub id: String,
    /// The template name.
    pub name: Option<String>,
    /// The version number.
    pub version: i64,
    /// The image it names, if any.
    pub image_id: Option<String>,
    /// Every tag key in its TagSpecifications (any resource type): the
    /// operator refuses a template that would put its own keys on machines.
    pub tag_keys: BTreeSet<String>,
}

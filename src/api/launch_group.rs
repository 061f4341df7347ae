//! LaunchGroup: the record of one coalesced launch, written by the operator
//! (never by users) before the launch call it describes.
//!
//! When several requests of one template wait to launch at the same time, one
//! RunInstances carries all of them. EC2's ClientToken makes that call safe to
//! repeat, but only if whoever repeats it knows the token, the members and
//! their counts: a crash between the call and the members' status writes
//! would otherwise leave each member with a Pending batch whose own token was
//! never sent, and re-sending that would launch its machines a second time.
//! So the group is created (one atomic create) before the call, and every
//! member that finds its batch Pending looks here first.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// One coalesced launch: who is in it, how many each, and the token it is sent
/// with. Created before the call; deleted by the sweep once every member has
/// recorded its share (or is gone).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostforge.io",
    version = "v1alpha1",
    kind = "LaunchGroup",
    namespaced,
    category = "hostforge",
    derive = "PartialEq",
    doc = "LaunchGroup records one launch call that carries the launches of several MachineRequests of one template (written by the operator before the call, deleted once every member has its machines). Do not create or edit these by hand.",
    printcolumn(name = "Template", type_ = "string", json_path = ".spec.template"),
    printcolumn(name = "Machines", type_ = "integer", json_path = ".spec.count"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LaunchGroupSpec {
    /// The MachineTemplate every member launches from.
    pub template: String,

    /// The provider (operator config `providers[].name`) the call goes to.
    pub provider: String,

    /// The ClientToken of the group's launch call; every send of it uses this.
    #[schemars(length(max = 64))]
    pub token: String,

    /// Machines the call asks for: the sum of the members' counts.
    pub count: i32,

    /// Digest of the launch parameters shared by every member (everything but
    /// the members' own ownership tags): a member re-sends the group's token only
    /// when the template still builds these parameters.
    pub params_digest: String,

    /// The members in the order the instances are shared out: the answer's
    /// instance ids, sorted, go to the first member until it has its count,
    /// then to the next.
    pub members: Vec<LaunchGroupMember>,
}

/// One MachineRequest's batch inside a group.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchGroupMember {
    /// The request's name.
    pub request: String,
    /// The request's uid (a name survives delete-and-recreate, a uid does not).
    pub uid: String,
    /// The batch id in the request's `status.launches`.
    pub batch: String,
    /// Machines this member gets.
    pub count: i32,
    /// Of `count`, how many on-demand, for a fleet mixing on-demand and spot:
    /// the member's own rounded share, so the group asks for the sum and each
    /// member takes its on-demand machines from the answer's on-demand ones
    /// and the rest from its spot ones. Absent: one capacity type for all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<i32>,
}

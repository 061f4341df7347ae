//! MachineRequest: how many machines, from which template. The operator keeps exactly
//! `count` live machines for it and records every launch in status before making it,
//! so that a crash at any moment neither loses nor duplicates machines.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{INSTANCE_ID_PATTERN, OBJECT_NAME_PATTERN};

/// Most machines one request may ask for. Status lists every machine (up to ~440
/// bytes each with real AWS values) and every launch, and the whole object must stay
/// well below etcd's 1.5 MiB limit on one request: at 1000 machines plus 200 gone,
/// HostFactory's return records and a full returnMachines it is ~1.0 MB stored
/// (~1.1 MB with every annotation byte the apiserver allows used; 2000 machines
/// came to ~1.4 MB). Larger fleets use several requests.
pub const MAX_COUNT: i32 = 1000;

/// Desired state of a MachineRequest.
// clippy mistakes the repeated keys of separate printcolumn(...) entries for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "hostforge.io",
    version = "v1alpha1",
    kind = "MachineRequest",
    namespaced,
    shortname = "mreq",
    category = "hostforge",
    status = "MachineRequestStatus",
    derive = "PartialEq",
    doc = "MachineRequest asks hostforge for a number of machines launched from a MachineTemplate in the same namespace. The operator keeps that many machines running and terminates them all when the request is deleted.",
    printcolumn(
        name = "Template",
        type_ = "string",
        json_path = ".spec.templateRef.name",
        description = "MachineTemplate the machines are launched from"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".spec.count",
        description = "Live machines wanted"
    ),
    printcolumn(
        name = "Running",
        type_ = "integer",
        json_path = ".status.counts.running",
        description = "Machines running"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "True when all desired machines are running"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Summary of the request's state",
        priority = 1
    ),
    validation = Rule::new("size(self.metadata.name) <= 192")
        .message("metadata.name: at most 192 characters, so that <namespace>/<name> fits in an EC2 tag value"),
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct MachineRequestSpec {
    /// The MachineTemplate (in the same namespace) to launch from. Cannot be changed
    /// after creation: create a new request to move to another template.
    #[x_kube(
        validation = Rule::new("self == oldSelf")
            .message("templateRef is immutable: create a new MachineRequest to use another template")
    )]
    pub template_ref: TemplateRef,

    /// Number of live machines wanted, 0 to 1000. The limit keeps the request's status,
    /// which lists every machine, well below etcd's 1.5 MiB object size limit; use several
    /// requests for more machines.
    #[schemars(range(min = 0, max = 1000))]
    pub count: i32,

    /// Instance ids (i-…) of this request's machines to give back. Every listed machine is
    /// terminated and reported as returned, never replaced; lower count along with it
    /// (as HostFactory does), or a new machine is launched to keep count. When count is
    /// lowered without naming machines, the newest go first. Ids that are not machines of
    /// this request are ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 2000), inner(regex(pattern = INSTANCE_ID_PATTERN)))]
    #[x_kube(merge_strategy = ListMerge::Set)]
    pub return_machines: Vec<String>,

    /// Whether machines that disappear without the operator terminating them (spot
    /// reclaim, manual termination, hardware failure) are replaced. Default true.
    #[serde(default = "default_true")]
    pub replace_lost: bool,

    /// What a rebalance recommendation (the cloud's warning that a spot
    /// machine's risk of interruption went up) does: Ignore (default: it is
    /// only reported, in the machine's rebalanceRecommendationTime and an
    /// Event) or Replace (a replacement is launched at once, and the machine
    /// is terminated, terminationReason Replaced, once the replacement runs).
    /// Requests owned by HostFactory (label hostforge.io/owner=hostfactory)
    /// never replace: the scheduler decides.
    #[serde(default, skip_serializing_if = "RebalancePolicy::is_ignore")]
    pub rebalance_policy: RebalancePolicy,

    /// Whether a machine that fails the cloud's instance or system status
    /// check (status.machines[].statusCheck) is replaced the same way as a
    /// rebalance Replace: its replacement first, the machine terminated
    /// (terminationReason Replaced) once the replacement runs. Default false:
    /// impaired machines are only reported. Never for requests owned by
    /// HostFactory.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replace_unhealthy: bool,

    /// What happens to machines launched from an older version of the
    /// template (drifted: see status.counts.drifted and the Drifted
    /// condition). Never (default): they are only reported. Replace: each is
    /// replaced the same way as a rebalance Replace, its replacement first,
    /// the old machine terminated (terminationReason Replaced, replaceReason
    /// Drifted) once the replacement runs, at most maxSurge at a time.
    /// Requests owned by HostFactory never replace: their drifted hosts are
    /// offered to the scheduler through getReturnRequests instead.
    #[serde(default, skip_serializing_if = "UpdatePolicy::is_never")]
    pub update_policy: UpdatePolicy,

    /// Extra tags put on this request's machines and volumes, over the template's tags
    /// (a key in both takes this value), e.g. the HostFactory account (RC_ACCOUNT). At
    /// most 40; keys up to 128 and values up to 256 characters. Keys starting with
    /// "hostforge.io/" or "aws:", in any mix of upper and lower case, are reserved, and a
    /// key must not be empty. A change applies to machines launched afterwards.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = 40,
        "additionalProperties" = {"type": "string", "maxLength": 256}
    ))]
    #[x_kube(
        validation = Rule::new("self.all(k, k.size() <= 128)")
            .message("tags: keys are at most 128 characters"),
        validation = Rule::new("self.all(k, k.size() >= 1)")
            .message("tags: a key must not be empty"),
        validation = Rule::new(
            "self.all(k, !k.lowerAscii().startsWith('hostforge.io/') && !k.lowerAscii().startsWith('aws:'))"
        )
        .message("tags: keys starting with hostforge.io/ or aws: (in any case) are reserved"),
    )]
    pub tags: BTreeMap<String, String>,
}

fn default_true() -> bool {
    true
}

/// What a rebalance recommendation does to a machine of the request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum RebalancePolicy {
    /// Report it (rebalanceRecommendationTime, an Event); nothing else.
    #[default]
    Ignore,
    /// Launch a replacement at once; terminate the machine once the
    /// replacement runs.
    Replace,
}

impl RebalancePolicy {
    /// Whether this is the default, Ignore (left out when serialized, so
    /// requests written before the field existed read back the same).
    pub fn is_ignore(&self) -> bool {
        *self == RebalancePolicy::Ignore
    }
}

/// How a request treats machines launched from an older version of its
/// template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.type == 'Replace' || !has(self.maxSurge)")
        .message("updatePolicy.maxSurge applies only to type Replace")
        .field_path(".maxSurge"),
)]
#[serde(rename_all = "camelCase")]
pub struct UpdatePolicy {
    /// Never (default): drifted machines are only reported. Replace: they
    /// are replaced, new first.
    #[serde(rename = "type", default)]
    pub type_: UpdatePolicyType,

    /// Replace only: how many drifted machines are replaced at once, i.e. how
    /// many replacements may be launched before the machines they replace
    /// are terminated (like a Deployment's maxSurge; there is no
    /// maxUnavailable, since an old machine is terminated only once its
    /// replacement runs, so replacing never lowers the running machines
    /// below count). 1 to 1000; empty: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_surge: Option<i32>,
}

impl UpdatePolicy {
    /// Whether this is the default, Never without options (left out when
    /// serialized, so requests written before the field existed read back
    /// the same).
    pub fn is_never(&self) -> bool {
        *self == UpdatePolicy::default()
    }

    /// Replacements in flight at once under Replace (maxSurge, default 1).
    pub fn surge(&self) -> i32 {
        self.max_surge.unwrap_or(1).max(1)
    }
}

/// Whether drifted machines are replaced.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum UpdatePolicyType {
    /// Report them (status.counts.drifted, the Drifted condition); nothing else.
    #[default]
    Never,
    /// Replace them, new first, at most maxSurge at a time.
    Replace,
}

/// Reference to a MachineTemplate in the same namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name of the MachineTemplate.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Observed state of a MachineRequest, written by the operator.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MachineRequestStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// One-word summary: Pending, Provisioning, Ready, Degraded or Deleting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,

    /// Ready (all desired machines running, for observedGeneration), Progressing
    /// (machines are being launched or terminated), Degraded (the operator cannot make
    /// progress, e.g. a broken template or no capacity), Drifted (live machines were
    /// launched from an older version of the template) and, while status checks are
    /// read, MachinesHealthy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Machine counts by state.
    #[serde(default)]
    pub counts: MachineCounts,

    /// The provider instance the machines were launched through, kept so that they
    /// can be terminated even when the template is deleted first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,

    /// Every machine launched for this request and not yet forgotten, live or not.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Atomic)]
    pub machines: Vec<Machine>,

    /// The template's launch digest and image as last seen (while the
    /// template is usable), which machines are compared with to find drift.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_version: Option<TemplateVersion>,

    /// The launch-intent record: every launch is written here (state Pending) before it
    /// is sent to the cloud, so that after a restart it can be settled instead of being
    /// lost or repeated.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["id".into()]))]
    pub launches: Vec<LaunchBatch>,
}

/// Summary phase of a request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum RequestPhase {
    /// Accepted; nothing launched yet.
    Pending,
    /// Machines are being launched or terminated to reach count.
    Provisioning,
    /// count machines are running.
    Ready,
    /// The operator cannot make progress; see the Degraded condition.
    Degraded,
    /// The request is being deleted and its machines terminated.
    Deleting,
}

/// Machine counts of a request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MachineCounts {
    /// spec.count as last observed.
    #[serde(default)]
    pub desired: i32,
    /// Machines launched but not running yet.
    #[serde(default)]
    pub pending: i32,
    /// Machines running.
    #[serde(default)]
    pub running: i32,
    /// Machines given back (terminated on request).
    #[serde(default)]
    pub returned: i32,
    /// Machines that failed to launch or were lost.
    #[serde(default)]
    pub failed: i32,
    /// Live machines launched from an older version of the template (its
    /// launch-relevant spec or its resolved image changed since; see the
    /// Drifted condition). Machines launched before hostforge recorded what
    /// a machine was launched from are never counted.
    #[serde(default)]
    pub drifted: i32,
}

/// One machine of a request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    /// Instance id, e.g. i-0123456789abcdef0.
    pub id: String,

    /// Host name (the private DNS name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// Instance state as the cloud last reported it.
    pub state: MachineState,

    /// Outcome from the requester's point of view: executing (on its way), succeed
    /// (running and usable) or fail.
    pub result: MachineResult,

    /// Launch batch (an id in status.launches) that created it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<String>,

    /// Instance type, e.g. c6i.xlarge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,

    /// Availability zone, e.g. us-east-1a.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,

    /// Private IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_ip: Option<String>,

    /// Public IPv4 address, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_ip: Option<String>,

    /// When the cloud launched it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_time: Option<Time>,

    /// on-demand or spot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_type: Option<MachineLifecycle>,

    /// Image it was launched from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,

    /// Why the operator let the machine go or stopped counting it: Returned (listed
    /// in spec.returnMachines), ScaledDown (surplus after count was lowered), Lost
    /// (stopped or terminated outside the operator), Replaced (its replacement
    /// runs, see replaceReason) or RequestDeleted. Empty for a machine the
    /// request still counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_reason: Option<TerminationReason>,

    /// When the cloud announced that it is taking this spot machine back (EC2's
    /// two-minute interruption notice); from then on a scheduler should drain it.
    /// Empty while no notice was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_notice_time: Option<Time>,

    /// When the cloud recommended moving work off this spot machine (EC2's
    /// rebalance recommendation: its risk of interruption went up). Empty while
    /// no recommendation was seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebalance_recommendation_time: Option<Time>,

    /// A change the cloud scheduled for this machine (a retirement or a
    /// maintenance) and when it starts. Empty while none was announced, and
    /// cleared with rebalanceRecommendationTime once the machine is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_event: Option<ScheduledEvent>,

    /// Why the operator is replacing this machine: Rebalance (a rebalance
    /// recommendation under rebalancePolicy Replace), Unhealthy (an
    /// impaired status check under replaceUnhealthy) or Drifted (launched
    /// from an older template, under updatePolicy Replace). Its replacement is
    /// launched first; the machine is terminated (terminationReason
    /// Replaced) once the replacement runs. Empty when not being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_reason: Option<ReplaceReason>,

    /// The cloud's status checks when one of them fails (EC2's instance or
    /// system status check is impaired), with since when. Empty while the
    /// checks pass, are not read (statusCheckInterval 0), or the machine is
    /// not running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_check: Option<StatusCheck>,

    /// The capacity reservation (or Capacity Block) the machine runs in, as
    /// the cloud reports it (DescribeInstances CapacityReservationId). Empty
    /// when it runs on regular capacity or the cloud does not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation_id: Option<String>,
    /// Digest of the template's launch-relevant spec the machine was
    /// launched with, copied from its launch batch's record (so a crash or
    /// an adoption never takes it from a newer template). With imageId, what
    /// drift compares against status.templateVersion. Empty for machines
    /// launched before hostforge recorded it, or adopted after their batch's
    /// record was dropped: those never count as drifted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_digest: Option<String>,

    /// Last noteworthy event, e.g. why it failed or was terminated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The version of the template a request's machines are compared with.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateVersion {
    /// The template's metadata.generation when last seen (for people: a
    /// change of generation alone, e.g. of maxMachines, drifts nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,

    /// Digest of the template's launch-relevant spec: every spec field but
    /// maxMachines and the image source (whose resolved image counts
    /// instead). A machine whose templateDigest differs has drifted (Spec).
    #[schemars(length(max = 64))]
    pub digest: String,

    /// The template's resolved image. A machine (with a templateDigest)
    /// running another image has drifted (Image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,

    /// When the request first saw this digest and image: HostFactory's
    /// getReturnRequests counts a drifted host's driftGracePeriod from it.
    pub since: Time,
}

/// Why a machine is being replaced.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum ReplaceReason {
    /// The cloud recommended moving off it (rebalancePolicy Replace).
    Rebalance,
    /// One of its status checks failed (replaceUnhealthy).
    Unhealthy,
    /// It was launched from an older version of the template (updatePolicy
    /// Replace).
    Drifted,
}

/// A failing status check of a machine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusCheck {
    /// Impaired: the cloud reports a check failing.
    pub status: StatusCheckStatus,

    /// Which checks fail: Instance (the machine's own software or network
    /// configuration) and/or System (the cloud's hardware, power or network
    /// under it).
    #[schemars(length(max = 2))]
    pub failing: Vec<StatusCheckKind>,

    /// When the check started failing, as the cloud says (or when the
    /// operator first saw it failing, when the cloud does not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
}

/// What a failing status check reports.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum StatusCheckStatus {
    /// At least one check fails.
    Impaired,
}

/// One of the cloud's status checks.
#[derive(
    Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[schemars(transform = super::field_doc_only)]
pub enum StatusCheckKind {
    /// The instance status check (the machine itself).
    Instance,
    /// The system status check (the cloud's infrastructure under it).
    System,
}

/// A change the cloud scheduled for a machine.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduledEvent {
    /// Retirement (the machine goes away for good) or Maintenance (it is
    /// rebooted or its host maintained, and comes back). The cloud's own code
    /// for the change is in the ScheduledChange Event.
    pub kind: ScheduledEventKind,

    /// When the change starts, if the cloud said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
}

/// What a scheduled change does to a machine.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum ScheduledEventKind {
    /// The machine is stopped or terminated for good (failing hardware).
    Retirement,
    /// The machine is rebooted or its host maintained; it comes back.
    Maintenance,
}

/// Why a machine no longer counts towards its request.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum TerminationReason {
    /// Listed in spec.returnMachines: terminated and never replaced.
    Returned,
    /// Surplus after spec.count was lowered (newest machines go first).
    ScaledDown,
    /// Stopped or terminated outside the operator (spot reclaim, a person, a
    /// hardware failure); replaced when spec.replaceLost is true.
    Lost,
    /// The request is being deleted.
    RequestDeleted,
    /// Replaced on purpose (replaceReason: a rebalance recommendation, a
    /// failing status check, drift) by a machine that already runs. Not a failure
    /// (not counted as Lost) and never replaced again.
    Replaced,
}

/// EC2 instance states, plus unknown for an instance the cloud does not show yet.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "kebab-case")]
pub enum MachineState {
    /// Not reported by the cloud yet (its reads are eventually consistent).
    Unknown,
    /// Starting.
    Pending,
    /// Running.
    Running,
    /// Being terminated.
    ShuttingDown,
    /// Terminated.
    Terminated,
    /// Being stopped.
    Stopping,
    /// Stopped.
    Stopped,
}

/// A machine's outcome, in the words of the HostFactory protocol.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "lowercase")]
pub enum MachineResult {
    /// On its way (launching, or terminating when returned).
    Executing,
    /// Done: running (or, when returned, terminated).
    Succeed,
    /// Failed.
    Fail,
}

/// Whether a machine is on-demand or spot.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
#[serde(rename_all = "kebab-case")]
pub enum MachineLifecycle {
    /// On-demand instance.
    OnDemand,
    /// Spot instance.
    Spot,
}

/// One launch call (RunInstances or CreateFleet), recorded before it is made.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LaunchBatch {
    /// Batch id, `<request-uid-prefix>-<sequence>`; also the hostforge.io/batch tag of its
    /// machines.
    pub id: String,

    /// Always 0: a batch is sent under one token only, so every send and re-send
    /// of it (SDK retries, settling after a crash) is the same request to EC2. A
    /// launch that must be tried again after a refusal is a new batch, with a new
    /// id and token.
    #[serde(default)]
    pub attempt: i32,

    /// Idempotency token (EC2 ClientToken) sent with every send of this batch,
    /// derived from the request uid and batch, so it survives restarts.
    #[schemars(length(max = 64))]
    pub token: String,

    /// Machines the launch asks for.
    pub count: i32,

    /// Digest of every launch parameter: a re-sent launch must have the same digest,
    /// since the cloud rejects a token reused with other parameters.
    pub params_digest: String,

    /// Pending (recorded, maybe sent), Launched (the cloud answered with machines) or
    /// Failed (the cloud refused it; nothing was launched).
    pub state: LaunchState,

    /// Image the launch uses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_id: Option<String>,

    /// Instance types the launch asks for, in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instance_types: Vec<String>,

    /// Subnets the launch targets: exactly one for RunInstances (EC2's ClientToken is
    /// zonal), the fleet's overrides for EC2Fleet; empty for the default subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnet_ids: Vec<String>,

    /// The Availability Zone a RunInstances batch without a subnet is pinned to
    /// (sent as Placement.AvailabilityZone, so EC2 uses that zone's default
    /// subnet). Chosen before the batch is recorded and sent with every send of
    /// it: EC2's ClientToken is zonal, and a re-send EC2 placed in another zone
    /// would be a new launch
    /// (https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,

    /// Pricing model of the launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_type: Option<super::CapacityType>,

    /// When the batch was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Time>,

    /// Why the launch failed, or other detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,

    /// How a Failed launch was refused by the cloud: Capacity (the offering
    /// cools down and another is tried at once) or Refused (any other refusal:
    /// the next batch waits a backoff that doubles with each refusal in a row).
    /// Absent when the batch was not refused by the cloud.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<LaunchFailure>,

    /// The LaunchGroup this batch was sent in, when its launch shared one call
    /// with other requests of the template (it was then sent with the group's
    /// token, never its own). Absent for a batch sent alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,

    /// The user's launch template (spec.launchTemplate) and the version number
    /// the batch is sent with, pinned when it is recorded so every re-send
    /// names the same version. Absent without spec.launchTemplate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_template: Option<super::launch_base::BatchLaunchTemplate>,
    /// Digest of the template's launch-relevant spec the batch launches
    /// with, recorded with it and copied onto its machines
    /// (machines[].templateDigest). Absent on batches recorded before
    /// hostforge recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_digest: Option<String>,
}

/// How the cloud refused a launch; decides when the next batch may go.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum LaunchFailure {
    /// No capacity for the batch's offerings: they cool down, others are tried.
    Capacity,
    /// Any other refusal (a 4xx such as VolumeLimitExceeded, a bad parameter,
    /// access denied): nothing was launched, and new batches back off.
    Refused,
}

/// Progress of a launch batch.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[schemars(transform = super::field_doc_only)]
pub enum LaunchState {
    /// Recorded; the launch may or may not have reached the cloud.
    Pending,
    /// The cloud answered and its machines are in status.machines.
    Launched,
    /// The cloud refused the launch; nothing was created.
    Failed,
}

#[cfg(test)]
mod size_tests {
    //! The whole stored object at the largest a request can get, with values
    //! as long as real AWS ones, against etcd's 1.5 MiB request limit.

    use serde_json::json;

    use super::*;

    /// Gone machines status keeps besides the live ones (the controller's
    /// `KEEP_GONE`; the api layer may not import it).
    const GONE: usize = 200;
    /// Settled launch batches status keeps (the controller's `KEEP_BATCHES`).
    const BATCHES: usize = 20;
    /// All annotations of an object may take this much (the apiserver's limit),
    /// HostFactory's return records (at most half of it) among them.
    const ANNOTATIONS: usize = 256 * 1024;
    /// spec.returnMachines' maxItems.
    const MAX_RETURNS: usize = 2000;
    /// HostFactory's budget for its return records (`RECORD_BUDGET`).
    const HF_RECORDS: usize = 128 * 1024;
    /// The bound for a request with HostFactory's records: a third below
    /// etcd's 1.5 MiB.
    const BOUND: usize = 1024 * 1024;
    /// The bound with every byte of annotations the apiserver allows used: a
    /// quarter below etcd's 1.5 MiB.
    const WORST_BOUND: usize = 1152 * 1024;

    fn machine(i: usize, gone: bool, queue_fields: bool) -> serde_json::Value {
        let (a, b, c) = (i / 65536 % 256, i / 256 % 256, i % 256);
        let mut m = json!({
            "id": format!("i-{:017x}", 0x0abc_def0_1234_5678_u64 + i as u64),
            "name": format!("ip-10-{a:03}-{b:03}-{c:03}.eu-central-1.compute.internal"),
            "state": if gone { "terminated" } else { "running" },
            "result": if gone { "fail" } else { "succeed" },
            "batch": format!("0123abcd-{:04}", i / 100),
            "instanceType": "m7i-flex.12xlarge",
            "availabilityZone": "eu-central-1c",
            "privateIp": format!("10.{a:03}.{b:03}.{c:03}"),
            "publicIp": format!("203.{a:03}.{b:03}.{c:03}"),
            "launchTime": "2025-01-31T23:59:59Z",
            "capacityType": "on-demand",
            "imageId": "ami-0123456789abcdef0",
            "interruptionNoticeTime": "2025-01-31T23:59:59Z",
            "templateDigest": "0123abcd",
        });
        // The interruption queue's fields, on live machines only (they are
        // cleared once a machine is down).
        if queue_fields && !gone {
            m["rebalanceRecommendationTime"] = json!("2025-01-31T23:59:59Z");
            m["scheduledEvent"] = json!({"kind": "Maintenance", "time": "2025-01-31T23:59:59Z"});
        }
        if gone {
            m["terminationReason"] = json!("Lost");
            m["message"] =
                json!("Server.SpotInstanceTermination: Spot instance termination by the cloud");
        }
        m
    }

    fn largest_request(queue_fields: bool) -> MachineRequest {
        let max = usize::try_from(MAX_COUNT).expect("a positive cap");
        let machines: Vec<_> = (0..max)
            .map(|i| machine(i, false, queue_fields))
            .chain((max..max + GONE).map(|i| machine(i, true, queue_fields)))
            .collect();
        let launches: Vec<_> = (0..BATCHES + 1)
            .map(|i| {
                json!({"id": format!("0123abcd-{i:04}"), "attempt": 0,
                    "token": format!("{:064x}", i), "count": 100,
                    "paramsDigest": "0123456789abcdef01234567", "state": "Launched",
                    "imageId": "ami-0123456789abcdef0",
                    "instanceTypes": ["m7i-flex.12xlarge", "m6i.12xlarge", "c7i.12xlarge", "r7i.12xlarge"],
                    "subnetIds": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1", "subnet-0123456789abcdef2"],
                    "capacityType": "on-demand", "createdAt": "2025-01-31T23:59:59Z",
                    "templateDigest": "0123abcd",
                    "message": "InsufficientInstanceCapacity: We currently do not have sufficient m7i-flex.12xlarge capacity in the Availability Zone you requested"})
            })
            .collect();
        let conditions: Vec<_> = ["Ready", "Degraded", "Progressing", "Drifted"]
            .iter()
            .map(|t| {
                json!({"type": t, "status": "True", "reason": "LaunchRefused",
                    "message": "x".repeat(1024), "observedGeneration": 12345,
                    "lastTransitionTime": "2025-01-31T23:59:59Z"})
            })
            .collect();
        // HostFactory's return labels, one per record: at least ~60 bytes of
        // annotation each, so the records' half of the annotations bounds them.
        let labels: serde_json::Map<_, _> = (0..ANNOTATIONS / 2 / 60)
            .map(|i| (format!("hostforge.io/hf-ret-{i:016x}"), json!("true")))
            .chain([("hostforge.io/owner".to_string(), json!("hostfactory"))])
            .collect();
        let returns: Vec<String> = (0..MAX_RETURNS)
            .map(|i| format!("i-{:017x}", 0x0abc_def0_1234_5678_u64 + i as u64))
            .collect();
        serde_json::from_value(json!({
            "apiVersion": "hostforge.io/v1alpha1", "kind": "MachineRequest",
            "metadata": {
                "name": "x".repeat(192), "namespace": "y".repeat(63),
                "uid": "0123abcd-0123-4567-89ab-0123456789ab",
                "resourceVersion": "123456789012", "generation": 12345,
                "creationTimestamp": "2025-01-31T23:59:59Z",
                "finalizers": ["hostforge.io/machines"],
                "labels": labels,
                "annotations": {"a": "z".repeat(ANNOTATIONS - 1)},
            },
            "spec": {"templateRef": {"name": "t".repeat(192)}, "count": MAX_COUNT,
                "returnMachines": returns, "replaceLost": true},
            "status": {"observedGeneration": 12345, "phase": "Ready",
                "provider": "p".repeat(63),
                "counts": {"desired": MAX_COUNT, "pending": 0, "running": MAX_COUNT,
                    "returned": 0, "failed": GONE},
                "conditions": conditions, "machines": machines, "launches": launches,
                "templateVersion": {"generation": 12345, "digest": "0123abcd",
                    "imageId": "ami-0123456789abcdef0", "since": "2025-01-31T23:59:59Z"}},
        }))
        .expect("a valid request")
    }

    /// The stored size of `mr`: its JSON plus managedFields, which list every
    /// returnMachines entry (a set) and every label key again.
    fn stored_size(mr: &MachineRequest) -> usize {
        let len = |v: &dyn JsonLen| v.len();
        len(mr) + 2 * len(&mr.spec.return_machines) + len(&mr.metadata.labels)
    }

    trait JsonLen {
        fn len(&self) -> usize;
    }
    impl<T: Serialize> JsonLen for T {
        fn len(&self) -> usize {
            serde_json::to_vec(self).expect("serializable").len()
        }
    }

    #[test]
    fn the_largest_request_stays_well_below_etcds_limit() {
        let mut mr = largest_request(false);
        let status = serde_json::to_vec(&mr.status).expect("serializable").len();
        let worst = stored_size(&mr);
        // With HostFactory's records as the only annotations (its budget).
        mr.metadata.annotations =
            Some([("hostforge.io/hf-ret-0".to_string(), "z".repeat(HF_RECORDS))].into());
        let usual = stored_size(&mr);
        eprintln!("status {status} B; stored {usual} B with HF records, {worst} B with every annotation byte used");
        assert!(
            usual <= BOUND,
            "a request of {MAX_COUNT} machines with HF records is ~{usual} bytes stored, above {BOUND}: lower MAX_COUNT"
        );
        assert!(
            worst <= WORST_BOUND,
            "a request of {MAX_COUNT} machines with full annotations is ~{worst} bytes stored, above {WORST_BOUND}: lower MAX_COUNT"
        );
    }

    /// With the interruption queue's fields (rebalanceRecommendationTime,
    /// scheduledEvent) on every live machine the request no longer meets the
    /// bounds above (~1.13 MB stored with HF records, ~1.26 MB with every
    /// annotation byte used, measured 2026-12-03): it still stays a sixth
    /// below etcd's 1.5 MiB. Whether MAX_COUNT or the bounds give way is an
    /// open decision (docs/interruptions.md, "Limits").
    #[test]
    fn the_largest_request_with_queue_fields_stays_below_etcds_limit() {
        const ETCD_SIXTH_BELOW: usize = 1536 * 1024 * 5 / 6;
        let without = stored_size(&largest_request(false));
        let mut mr = largest_request(true);
        let worst = stored_size(&mr);
        assert!(worst > without, "the fixture carries the queue's fields");
        mr.metadata.annotations =
            Some([("hostforge.io/hf-ret-0".to_string(), "z".repeat(HF_RECORDS))].into());
        let usual = stored_size(&mr);
        eprintln!("with queue fields: stored {usual} B with HF records, {worst} B with every annotation byte used");
        assert!(
            worst <= ETCD_SIXTH_BELOW,
            "a request of {MAX_COUNT} machines with the queue's fields and full annotations is ~{worst} bytes stored, above {ETCD_SIXTH_BELOW}"
        );
    }
}

//! The steps that change the cloud: build a batch's launch spec (reading the
//! user-data Secret and the image), send a recorded launch and classify the
//! answer, and terminate machines. Outcomes go into the session's status; the
//! status step writes them.
//!
//! EC2's rule for launch answers
//! (<https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>),
//! as [`outcome_of`] applies it:
//! - machines: the batch is Launched;
//! - a client error (4xx) other than throttling: nothing was launched. The
//!   batch is Failed with the code and message, the request Degraded naming
//!   them, a Warning Event says so; capacity errors cool their offering down
//!   and the next offering goes at once, any other refusal holds new batches
//!   back for a backoff that doubles with each refusal in a row
//!   ([`batch::refusal_hold`]), so a refusal that never ends costs one call per
//!   backoff step, and a refused token is never sent again;
//! - `IdempotentInstanceTerminated`: an earlier send of the token launched, and
//!   all of it is terminated: the batch is settled with nothing live, and the
//!   request launches a new batch as usual;
//! - `IdempotentParameterMismatch`: an earlier send of the token launched; the
//!   batch is settled by its tag ([`by_tag::settle`]): what the tag shows is
//!   adopted and the rest held (Pending) until a full sweep after the grace,
//!   never launched again meanwhile;
//! - throttling, 5xx, timeouts and lost connections: maybe launched, so the
//!   batch stays Pending and the next reconcile settles it (adopt by tag or
//!   re-send the same token, to the same zone).
//!
//! A batch without subnets is pinned to a zone before it is recorded
//! ([`batch::pinned_zone`]), since EC2's token is zonal.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, ResourceExt};
use tracing::{info, warn};

use super::batch::{self, Extras, UserData};
use super::by_tag;
use super::coalesce::{self, Delivery};
use super::gate::{Blocked, Open};
use super::intent::{NewBatch, Recorded};
use super::session::{now, Session};
use crate::api::request::LaunchFailure;
use crate::api::{
    CapacityType, LaunchBatch, LaunchState, MachineResult, MachineState, MachineTemplate,
    ProviderApi,
};
use crate::config::policy::USER_DATA_LABEL;
use crate::controller::cloud::capacity::{self, Offering};
use crate::controller::cloud::translate;
use crate::controller::reason::Reason;
use crate::controller::Error;
use crate::failpoint;
use crate::provider::{self, ImageSource, LaunchAnswer, MachineProvider, ProviderError, Shortfall};

/// Chooses the next batch of `count` machines (offering, token) and builds
/// what it will send; `Err` when nothing can be launched now and why.
pub async fn next_batch(
    s: &Session<'_>,
    open: &Open<Arc<dyn MachineProvider>>,
    count: i32,
) -> Result<NewBatch, Blocked> {
    let template = &open.template;
    if let Some(hold) = batch::refusal_hold(&s.status.launches, &now()).filter(|h| h.is_holding()) {
        return Err(Blocked::new(Reason::LaunchFailed, hold.describe()));
    }
    let Some(choice) = batch::choose(&template.spec, &open.provider_name, &s.ctx.capacity) else {
        return Err(Blocked::new(
            Reason::CapacityUnavailable,
            died_at_launch_message(s, &template.spec, &open.provider_name)
                .or_else(|| last_capacity_message(s))
                .unwrap_or_else(|| {
                    "no instance type and subnet of the template has capacity now".into()
                }),
        ));
    };
    let image_id = template
        .status
        .as_ref()
        .and_then(|st| st.resolved_image.as_ref())
        .map(|i| i.id.clone())
        .unwrap_or_default();
    let seq = batch::next_seq(&s.status.launches);
    let zones = match (template.spec.provider_api, choice.subnet_ids.is_empty()) {
        (ProviderApi::RunInstances | ProviderApi::Ec2Fleet, true) => {
            open.provider.default_zones().await.map_err(|e| {
                Blocked::new(
                    Reason::of_provider(&e, Reason::NotFound),
                    format!("looking up the default subnets to pin the batch's zone: {e}"),
                )
            })?
        }
        _ => Vec::new(),
    };
    let mut new = batch::new_batch(
        &s.owner.uid,
        seq,
        count.min(batch::MAX_BATCH),
        &choice,
        &template.spec,
        &image_id,
        now(),
    );
    new.availability_zone = batch::pinned_zone(template.spec.provider_api, &choice, &zones, seq);
    // The user's template at the version the template controller resolved,
    // pinned with the batch (the gate admits a template with a launchTemplate
    // only once its status names one).
    new.launch_template = template
        .spec
        .launch_template
        .as_ref()
        .and(template.status.as_ref())
        .and_then(|st| st.launch_template.as_ref())
        .map(|lt| crate::api::BatchLaunchTemplate {
            id: lt.id.clone(),
            version: lt.version,
        });
    new.template_digest = Some(super::drift::spec_digest(&template.spec));
    let built = launch_spec(s, &open.provider, template, &new).await?;
    new.params_digest = built.digest;
    Ok(NewBatch {
        batch: new,
        spec: built.spec,
        shared_digest: built.shared_digest,
    })
}

/// When machines of this template died at launch and that cooled its
/// offerings down: the instance's `stateReason`, which says why better than
/// any launch answer (the launches themselves were accepted).
fn died_at_launch_message(
    s: &Session<'_>,
    spec: &crate::api::MachineTemplateSpec,
    provider: &str,
) -> Option<String> {
    let mine = batch::offerings_of_template(spec, provider);
    s.ctx
        .capacity
        .death_reason_among(|o| mine.contains(o))
        .map(|why| format!("every instance type and subnet of the template is cooling down after machines died at launch: {why}"))
}

fn last_capacity_message(s: &Session<'_>) -> Option<String> {
    s.status
        .launches
        .iter()
        .rev()
        .find(|b| b.state == LaunchState::Failed)
        .and_then(|b| b.message.clone())
        .map(|m| format!("every instance type and subnet of the template is out of capacity; last answer: {m}"))
}

/// Whether the Secret opted in to being user data: it carries
/// [`USER_DATA_LABEL`] with the value `"true"`.
pub fn opted_in(secret: &Secret) -> bool {
    secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(USER_DATA_LABEL))
        .is_some_and(|v| v == "true")
}

/// Builds the launch spec of `batch` and its digest (reads user data and the
/// image's root device).
pub async fn launch_spec(
    s: &Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
    batch: &LaunchBatch,
) -> Result<batch::Built, Blocked> {
    let user_data = match &template.spec.user_data {
        None => None,
        Some(source) => {
            let secrets: Api<Secret> = Api::namespaced(s.ctx.client.clone(), &s.owner.namespace);
            let r = &source.secret_ref;
            let secret = secrets.get_opt(&r.name).await.map_err(|e| {
                Blocked::new(
                    Reason::UserDataUnavailable,
                    format!("reading Secret {}: {e}", r.name),
                )
            })?;
            // Only a Secret its owner marked as user data is read into a
            // machine: a template may name any Secret of its namespace.
            if let Some(sec) = &secret {
                if !opted_in(sec) {
                    return Err(Blocked::new(
                        Reason::UserDataUnavailable,
                        format!(
                            "Secret {} is not marked as user data: add the label {USER_DATA_LABEL}=\"true\" to it (spec.userData.secretRef)",
                            r.name
                        ),
                    ));
                }
            }
            // The uid keys the user data's share of the digest (batch::digest).
            let secret_uid = secret
                .as_ref()
                .and_then(|sec| sec.metadata.uid.clone())
                .unwrap_or_default();
            let value = secret
                .and_then(|sec| sec.data)
                .and_then(|mut d| d.remove(&r.key))
                .ok_or_else(|| {
                    Blocked::new(
                        Reason::UserDataUnavailable,
                        format!(
                            "Secret {} has no key {:?} (spec.userData.secretRef)",
                            r.name, r.key
                        ),
                    )
                })?;
            Some(UserData {
                bytes: value.0,
                secret_uid,
            })
        }
    };
    let root_device_name = match (&template.spec.root_volume, &batch.image_id) {
        (Some(_), Some(image)) => {
            s.ctx
                .images
                .resolve(provider, &ImageSource::Id(image.clone()))
                .await
                .map_err(|e| {
                    Blocked::new(
                        Reason::ImageNotFound,
                        format!("looking up image {image}: {e}"),
                    )
                })?
                .0
                .root_device_name
        }
        _ => None,
    };
    Ok(batch::build(
        batch,
        &template.spec,
        &Extras {
            owner: &s.owner,
            request_tags: &s.mr.spec.tags,
            root_device_name,
            user_data,
        },
    ))
}

/// Sends a recorded batch (alone, or in one call with other requests'
/// batches: [`super::coalesce`]) and records the outcome in status (not
/// written yet), by EC2's rule for launch answers (see the module doc).
/// Returns why the request is degraded when the cloud refused the launch; an
/// unclear failure leaves the batch Pending and fails the reconcile, to be
/// settled (adopted or re-sent with the same token) by the next one.
pub async fn launch(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
    recorded: Recorded,
) -> Result<Option<Blocked>, Error> {
    let batch_id = recorded.batch_id().to_string();
    let asked = recorded.spec().count;
    // Every batch may share a call; a mixed fleet member keeps its own
    // rounded on-demand share in the group (`group::mixed_on_demand`).
    let (group, outcome) = if s.ctx.config.coalesce_launches {
        let key = coalesce::Key {
            provider: provider.name().to_string(),
            namespace: s.owner.namespace.clone(),
            template: template.name_any(),
            shared_digest: recorded.shared_digest().to_string(),
        };
        let member = coalesce::Member {
            request: s.owner.name.clone(),
            uid: s.owner.uid.clone(),
            batch: batch_id.clone(),
            spec: recorded.spec().clone(),
            template_tags: template.spec.tags.clone(),
        };
        match s
            .ctx
            .coalescer
            .launch(key, Arc::clone(provider), member)
            .await
        {
            Delivery::Alone(outcome) => (None, outcome),
            Delivery::Grouped { name, result } => (Some(name), result),
            // Maybe sent in a group: unclear, so Pending until settled.
            Delivery::Unknown(why) => (
                None,
                Err(ProviderError::Unknown(provider::ErrorDetail {
                    operation: "RunInstances",
                    code: "LaunchGroup".into(),
                    message: why,
                })),
            ),
        }
    } else {
        (None, provider.launch(recorded.spec()).await)
    };
    failpoint!("request-after-launch");
    answered(s, provider, &batch_id, asked, group, outcome).await
}

/// Records a launch answer for batch `batch_id` (sent in LaunchGroup
/// `group` when named) by EC2's rule for launch answers.
pub async fn answered(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    batch_id: &str,
    asked: i32,
    group: Option<String>,
    outcome: Result<LaunchAnswer, ProviderError>,
) -> Result<Option<Blocked>, Error> {
    let provider_name = provider.name().to_string();
    let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch_id) else {
        return Ok(None);
    };
    if group.is_some() {
        b.group.clone_from(&group);
    }
    let in_group = group
        .as_deref()
        .map(|g| format!(" (one call with other requests: launch group {g})"))
        .unwrap_or_default();
    match outcome {
        Ok(answer) => {
            let why_short = answer.shortfall_line();
            cool_shortfall(s, batch_id, &provider_name, &answer.shortfall);
            let machines = answer.machines;
            s.ctx.metrics.launched(&provider_name, machines.len());
            let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
            s.ctx.tracker.record(machines.clone());
            let known: BTreeSet<String> = s.status.machines.iter().map(|m| m.id.clone()).collect();
            for m in &machines {
                if !known.contains(&m.id) {
                    s.status
                        .machines
                        .push(translate::new_machine(m, Some(batch_id)));
                }
            }
            let message = (machines.len() < asked as usize).then(|| {
                let launched = format!(
                    "the cloud launched {} of {}{in_group}",
                    machines.len(),
                    asked
                );
                match why_short {
                    Some(why) => format!("{launched}: {why}"),
                    None => launched,
                }
            });
            settle_batch(s, batch_id, LaunchState::Launched, None, message);
            info!(request = %s.key(), batch = %batch_id, launched = ids.len(), group = group.as_deref().unwrap_or(""), "launched");
            let note = format!(
                "batch {batch_id}: launched {} ({}){in_group}",
                ids.len(),
                ids.join(", ")
            );
            s.event(EventType::Normal, Reason::Launched, "Launch", &note)
                .await;
            Ok(None)
        }
        Err(err) => match outcome_of(&err) {
            Outcome::TokenTerminated => {
                let message = format!(
                    "every instance launched with this batch's token is terminated, nothing live from it{in_group} ({err})"
                );
                info!(request = %s.key(), batch = %batch_id, "batch token's instances are all terminated");
                settle_batch(s, batch_id, LaunchState::Launched, None, Some(message));
                Ok(None)
            }
            Outcome::TokenUsed if group.is_none() => token_used(s, provider, batch_id, &err).await,
            Outcome::Refused(failure) => {
                if failure == LaunchFailure::Capacity {
                    if let Some(b) = s.status.launches.iter().find(|b| b.id == batch_id) {
                        s.ctx
                            .capacity
                            .mark_unavailable(batch::offerings_of(b, &provider_name));
                    }
                }
                Ok(Some(
                    refused(s, batch_id, failure, format!("{err}{in_group}")).await,
                ))
            }
            // A group's token used before: its members settle it through
            // the group (by the group's tag), as after an unclear answer.
            Outcome::Unclear | Outcome::TokenUsed => {
                // Maybe sent, maybe not: keep it Pending and let the next
                // reconcile settle it. Persist what we know so far first.
                if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == batch_id) {
                    b.message = Some(format!("{err}{in_group}"));
                }
                s.write().await?;
                Err(Error::Provider {
                    action: format!("launching batch {batch_id}{in_group}"),
                    source: err,
                })
            }
        },
    }
}

/// Cools down the offerings a partial launch said had no capacity (a fleet's
/// `errorSet` with a capacity code), so the batch that follows for the
/// shortfall asks elsewhere first instead of the pool that just ran dry. The
/// offering is keyed as the plan asks for it (the batch's types, subnets and
/// capacity type); a spot shortage inside a mixed fleet cools nothing, as the
/// same offering's on-demand part still launched.
fn cool_shortfall(s: &Session<'_>, batch_id: &str, provider: &str, shortfall: &[Shortfall]) {
    let Some(b) = s.status.launches.iter().find(|b| b.id == batch_id) else {
        return;
    };
    let spot = b.capacity_type == Some(CapacityType::Spot);
    let offerings: Vec<Offering> = shortfall
        .iter()
        .filter(|f| f.capacity && f.spot.is_none_or(|f_spot| f_spot == spot))
        .filter_map(|f| {
            capacity::batch_offering(
                provider,
                &b.instance_types,
                &b.subnet_ids,
                spot,
                f.instance_type.as_deref(),
                f.subnet_id.as_deref(),
            )
        })
        .collect();
    if !offerings.is_empty() {
        info!(request = %s.key(), batch = %batch_id, offerings = offerings.len(),
            "cooling down offerings the launch found without capacity");
        s.ctx.capacity.mark_unavailable(offerings);
    }
}

/// What a failed launch call means for its batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing was launched, for the reason given: the batch is Failed.
    Refused(LaunchFailure),
    /// Every instance of the token is terminated: settled, nothing live.
    TokenTerminated,
    /// The token launched before (with other parameters): look it up.
    TokenUsed,
    /// Maybe launched (throttled, 5xx, timeout, lost or unreadable answer):
    /// the batch stays Pending.
    Unclear,
}

/// EC2's rule for launch answers: a client error other than throttling means
/// nothing was launched; only throttling, 5xx, timeouts and lost connections
/// leave a launch in doubt. The token answers are recognised by their code.
pub fn outcome_of(err: &ProviderError) -> Outcome {
    if err.is_token_terminated() {
        return Outcome::TokenTerminated;
    }
    if err.is_token_mismatch() {
        return Outcome::TokenUsed;
    }
    match err {
        ProviderError::Capacity(_) => Outcome::Refused(LaunchFailure::Capacity),
        ProviderError::InvalidParameter(_)
        | ProviderError::AccessDenied(_)
        | ProviderError::NotFound(_)
        | ProviderError::Refused(_) => Outcome::Refused(LaunchFailure::Refused),
        ProviderError::Throttled(_) | ProviderError::Transient(_) | ProviderError::Unknown(_) => {
            Outcome::Unclear
        }
    }
}

/// Sets the outcome of batch `id` in status.
fn settle_batch(
    s: &mut Session<'_>,
    id: &str,
    state: LaunchState,
    failure: Option<LaunchFailure>,
    message: Option<String>,
) {
    if let Some(b) = s.status.launches.iter_mut().find(|b| b.id == id) {
        b.state = state;
        b.failure = failure;
        b.message = message;
    }
}

/// Marks batch `id` Failed as refused with `message` (the cloud's code and
/// message), says so in a Warning Event, and returns why the request is
/// degraded: for a non-capacity refusal, the backoff the next batch waits.
async fn refused(
    s: &mut Session<'_>,
    id: &str,
    failure: LaunchFailure,
    message: String,
) -> Blocked {
    settle_batch(
        s,
        id,
        LaunchState::Failed,
        Some(failure),
        Some(message.clone()),
    );
    warn!(request = %s.key(), batch = %id, error = %message, "launch refused");
    let (reason, message) = match failure {
        LaunchFailure::Capacity => (Reason::CapacityUnavailable, message),
        LaunchFailure::Refused => (
            Reason::LaunchFailed,
            batch::refusal_hold(&s.status.launches, &now()).map_or(message, |hold| hold.describe()),
        ),
    };
    let note = format!("batch {id}: {message}");
    s.event(EventType::Warning, reason, "Launch", &note).await;
    Blocked::new(reason, message)
}

/// `IdempotentParameterMismatch`: an earlier send of this token did launch
/// (with parameters EC2 holds as different, e.g. sent by another version of
/// hostforge before a crash). The token cannot tell what it launched, so the
/// batch is settled by its tag like one whose template changed
/// ([`by_tag::settle`]): its machines are adopted, and the ones a lagging tag
/// read does not show yet stay held in the count (the batch stays Pending)
/// until a full sweep after the grace has looked for them. Nothing is
/// launched in their place meanwhile, so a tag lag cannot become a second set.
async fn token_used(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    id: &str,
    err: &ProviderError,
) -> Result<Option<Blocked>, Error> {
    let Some(batch) = s.status.launches.iter().find(|b| b.id == id).cloned() else {
        return Ok(None);
    };
    info!(request = %s.key(), batch = %id, "token used before with other parameters: settling by tag");
    let why = format!(
        "EC2 says its token was used before with other parameters ({})",
        err.code()
    );
    by_tag::settle(s, provider, &batch, &why).await?;
    Ok(None)
}

/// Terminates `ids`; an id the cloud does not know (yet) does not stop the
/// others. Terminated machines read as shutting-down right away, as EC2 answers.
pub async fn terminate(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    ids: &[String],
) -> Result<(), Error> {
    let accepted = s
        .ctx
        .terminations
        .terminate(provider, ids)
        .await
        .map_err(|source| Error::Provider {
            action: "terminating machines".into(),
            source,
        })?;
    for m in &mut s.status.machines {
        if accepted.contains(&m.id) && !m.state.is_terminating() {
            m.state = MachineState::ShuttingDown;
            m.result = MachineResult::of(m.state, m.termination_reason);
        }
    }
    s.ctx
        .tracker
        .set_state(&accepted, provider::MachineState::ShuttingDown);
    s.ctx
        .tracker
        .watch_also(ObjectRef::from_obj(s.mr), provider.name(), &accepted);
    let mut by_reason: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    for m in &s.status.machines {
        if accepted.contains(&m.id) {
            let reason = m.termination_reason.map_or("Unknown", |r| r.as_str());
            by_reason.entry(reason).or_default().push(m.id.clone());
        }
    }
    for (reason, ids) in by_reason {
        s.ctx.metrics.terminated(provider.name(), reason, ids.len());
        let note = format!("{reason}: terminating {}", ids.join(", "));
        s.event(EventType::Normal, Reason::Terminating, "Terminate", &note)
            .await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::aws::errors::classify;

    #[test]
    fn only_secrets_labelled_as_user_data_are_read_into_machines() {
        let secret = |labels: serde_json::Value| -> Secret {
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s", "labels": labels}}))
                .expect("a secret")
        };
        assert!(opted_in(&secret(
            serde_json::json!({USER_DATA_LABEL: "true"})
        )));
        assert!(!opted_in(&secret(serde_json::json!({}))));
        assert!(!opted_in(&secret(
            serde_json::json!({USER_DATA_LABEL: "false"})
        )));
        assert!(!opted_in(&secret(
            serde_json::json!({"hostforge.io/user": "true"})
        )));
        let unlabelled: Secret =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "s"}})).expect("s");
        assert!(!opted_in(&unlabelled));
    }

    /// EC2's rule, one row per answer RunInstances or CreateFleet can give:
    /// the code, the HTTP status, and what it means for the batch.
    #[test]
    fn launch_answers_follow_ec2s_rule() {
        use LaunchFailure::{Capacity, Refused};
        let table = [
            (
                "InsufficientInstanceCapacity",
                Some(500),
                Outcome::Refused(Capacity),
            ),
            ("VcpuLimitExceeded", Some(400), Outcome::Refused(Capacity)),
            ("VolumeLimitExceeded", Some(400), Outcome::Refused(Refused)),
            (
                "InvalidBlockDeviceMapping",
                Some(400),
                Outcome::Refused(Refused),
            ),
            (
                "MaxTemplateLimitExceeded",
                Some(400),
                Outcome::Refused(Refused),
            ),
            (
                "InvalidLaunchTemplateName.NotFoundException",
                Some(400),
                Outcome::Refused(Refused),
            ),
            (
                "InvalidParameterValue",
                Some(400),
                Outcome::Refused(Refused),
            ),
            (
                "UnauthorizedOperation",
                Some(403),
                Outcome::Refused(Refused),
            ),
            (
                "InvalidAMIID.NotFound",
                Some(400),
                Outcome::Refused(Refused),
            ),
            ("SomeFutureCode", Some(400), Outcome::Refused(Refused)),
            (
                "IdempotentInstanceTerminated",
                Some(400),
                Outcome::TokenTerminated,
            ),
            ("IdempotentParameterMismatch", Some(400), Outcome::TokenUsed),
            ("RequestLimitExceeded", Some(503), Outcome::Unclear),
            ("RequestLimitExceeded", Some(400), Outcome::Unclear),
            ("InternalError", Some(500), Outcome::Unclear),
            ("SomeFutureCode", Some(503), Outcome::Unclear),
            // No answer, or one that cannot be read: maybe launched.
            ("DispatchFailure", None, Outcome::Unclear),
        ];
        for (code, status, want) in table {
            let err = classify("RunInstances", code, "m", status);
            assert_eq!(outcome_of(&err), want, "{code} {status:?}: {err}");
        }
        let timeout = ProviderError::Transient(crate::provider::ErrorDetail {
            operation: "RunInstances",
            code: "Timeout".into(),
            message: String::new(),
        });
        assert_eq!(outcome_of(&timeout), Outcome::Unclear);
    }
}

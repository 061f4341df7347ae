//! The steps that change the cloud: build a batch's launch spec (reading the
//! user-data Secret and the image), send a recorded launch and classify the
//! answer, and terminate machines. Outcomes go into the session's status; the
//! status step writes them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;
use kube::Api;
use tracing::{info, warn};

use super::batch::{self, Extras};
use super::gate::{Blocked, Open};
use super::intent::{NewBatch, Recorded};
use super::session::{now, Session};
use crate::api::{LaunchBatch, LaunchState, MachineResult, MachineState, MachineTemplate};
use crate::controller::cloud::translate;
use crate::controller::reason::Reason;
use crate::controller::Error;
use crate::failpoint;
use crate::provider::{self, ImageSource, LaunchSpec, MachineProvider, ProviderError};

/// Chooses the next batch of `count` machines (offering, token) and builds
/// what it will send; `Err` when nothing can be launched now and why.
pub async fn next_batch(
    s: &Session<'_>,
    open: &Open<Arc<dyn MachineProvider>>,
    count: i32,
) -> Result<NewBatch, Blocked> {
    let template = &open.template;
    let Some(choice) = batch::choose(&template.spec, &open.provider_name, &s.ctx.capacity) else {
        return Err(Blocked::new(
            Reason::CapacityUnavailable,
            last_capacity_message(s).unwrap_or_else(|| {
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
    let mut new = batch::new_batch(
        &s.owner.uid,
        batch::next_seq(&s.status.launches),
        count.min(batch::MAX_BATCH),
        &choice,
        &template.spec,
        &image_id,
        now(),
    );
    let spec = launch_spec(s, &open.provider, template, &new).await?;
    new.params_digest = batch::digest(&spec);
    Ok(NewBatch { batch: new, spec })
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

/// Builds the launch spec of `batch` (reads user data and the image's root device).
pub async fn launch_spec(
    s: &Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    template: &MachineTemplate,
    batch: &LaunchBatch,
) -> Result<LaunchSpec, Blocked> {
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
            Some(value.0)
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
    Ok(batch::spec_for(
        batch,
        &template.spec,
        &Extras {
            owner: &s.owner,
            root_device_name,
            user_data,
        },
    ))
}

/// Sends a recorded batch and records the outcome in status (not written yet).
/// A definitive refusal marks the batch Failed and is returned as the reason
/// the request is degraded; an unclear failure leaves it Pending, to be
/// settled (adopted or re-sent with the same token) by the next reconcile.
pub async fn launch(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    recorded: Recorded,
) -> Result<Option<Blocked>, Error> {
    let outcome = provider.launch(recorded.spec()).await;
    failpoint!("request-after-launch");
    let batch_id = recorded.batch_id();
    let provider_name = provider.name().to_string();
    let Some(index) = s.status.launches.iter().position(|b| b.id == batch_id) else {
        return Ok(None);
    };
    let asked = recorded.spec().count;
    match outcome {
        Ok(machines) => {
            s.ctx.tracker.record(machines.clone());
            s.ctx.metrics.launched(&provider_name, machines.len());
            let ids: Vec<String> = machines.iter().map(|m| m.id.clone()).collect();
            let known: BTreeSet<String> = s.status.machines.iter().map(|m| m.id.clone()).collect();
            for m in &machines {
                if !known.contains(&m.id) {
                    s.status
                        .machines
                        .push(translate::new_machine(m, Some(batch_id)));
                }
            }
            let batch = &mut s.status.launches[index];
            batch.state = LaunchState::Launched;
            batch.message = (machines.len() < asked as usize)
                .then(|| format!("the cloud launched {} of {}", machines.len(), asked));
            info!(request = %s.key(), batch = %batch_id, launched = ids.len(), "launched");
            let note = format!(
                "batch {batch_id}: launched {} ({})",
                ids.len(),
                ids.join(", ")
            );
            s.event(EventType::Normal, Reason::Launched, "Launch", &note)
                .await;
            Ok(None)
        }
        Err(err) if is_definitive(&err) => {
            let batch = &mut s.status.launches[index];
            batch.state = LaunchState::Failed;
            batch.message = Some(err.to_string());
            let reason = if matches!(err, ProviderError::Capacity(_)) {
                let offerings = batch::offerings_of(batch, &provider_name);
                s.ctx.capacity.mark_unavailable(offerings);
                Reason::CapacityUnavailable
            } else {
                Reason::LaunchFailed
            };
            warn!(request = %s.key(), batch = %batch_id, error = %err, "launch refused");
            let note = format!("batch {batch_id}: {err}");
            s.event(EventType::Warning, reason, "Launch", &note).await;
            Ok(Some(Blocked::new(reason, err.to_string())))
        }
        Err(err) => {
            // Maybe sent, maybe not: keep it Pending and let the next reconcile
            // settle it. Persist what we know so far first.
            s.status.launches[index].message = Some(err.to_string());
            s.write().await?;
            Err(Error::Provider {
                action: format!("launching batch {batch_id}"),
                source: err,
            })
        }
    }
}

/// Whether the cloud refused a launch for sure (nothing was created).
fn is_definitive(err: &ProviderError) -> bool {
    matches!(
        err,
        ProviderError::Capacity(_)
            | ProviderError::InvalidParameter(_)
            | ProviderError::AccessDenied(_)
            | ProviderError::NotFound(_)
    )
}

/// Terminates `ids`; an id the cloud does not know (yet) does not stop the
/// others. Terminated machines read as shutting-down right away, as EC2 answers.
pub async fn terminate(
    s: &mut Session<'_>,
    provider: &Arc<dyn MachineProvider>,
    ids: &[String],
) -> Result<(), Error> {
    let accepted = provider::terminate_each_known(provider, ids)
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

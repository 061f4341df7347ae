//! The request being reconciled: its status as it will be written, the
//! resourceVersion every write is conditional on, and the observations
//! (poller, sweep, interruption notices) folded into it.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, warn};

use super::CONTROLLER;
use crate::api::{MachineRequest, MachineRequestStatus, MachineState};
use crate::controller::cloud::ownership::{Owner, BATCH_TAG};
use crate::controller::cloud::translate;
use crate::controller::events;
use crate::controller::reason::Reason;
use crate::controller::{Context, Error};
use crate::provider;

/// One reconcile's view of one request.
pub struct Session<'a> {
    /// What every step reads: clients, stores, the tracker.
    pub ctx: &'a Context,
    /// The request as the watch delivered it.
    pub mr: &'a MachineRequest,
    api: Api<MachineRequest>,
    /// Status as this reconcile will write it.
    pub status: MachineRequestStatus,
    /// Status as the apiserver last accepted it from us (or as it was read).
    written: MachineRequestStatus,
    resource_version: Option<String>,
    /// Who the request's machines belong to (their ownership tags).
    pub owner: Owner,
}

impl<'a> Session<'a> {
    /// Starts a reconcile of `mr`.
    pub fn load(mr: &'a MachineRequest, ctx: &'a Context) -> Result<Session<'a>, Error> {
        let namespace = mr
            .namespace()
            .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
        let uid = mr.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
        let status = mr.status.clone().unwrap_or_default();
        Ok(Session {
            ctx,
            mr,
            api: Api::namespaced(ctx.client.clone(), &namespace),
            written: status.clone(),
            status,
            resource_version: mr.resource_version(),
            owner: Owner {
                cluster: ctx.config.cluster_name.clone(),
                namespace,
                name: mr.name_any(),
                uid,
                template: mr.spec.template_ref.name.clone(),
            },
        })
    }

    /// `<namespace>/<name>`, for logs and backoff.
    pub fn key(&self) -> String {
        format!("{}/{}", self.owner.namespace, self.owner.name)
    }

    /// Status as the apiserver has it from us: what a crash would leave.
    pub fn written(&self) -> &MachineRequestStatus {
        &self.written
    }

    /// Writes status if it changed, conditional on the resourceVersion last
    /// seen: a concurrent writer makes this fail instead of being overwritten.
    pub async fn write(&mut self) -> Result<(), Error> {
        if self.status == self.written {
            return Ok(());
        }
        let mut body = MachineRequest::new(&self.owner.name, self.mr.spec.clone());
        body.metadata.namespace = Some(self.owner.namespace.clone());
        body.metadata.resource_version = self.resource_version.clone();
        body.status = Some(self.status.clone());
        let updated = self
            .api
            .replace_status(&self.owner.name, &PostParams::default(), &body)
            .await
            .map_err(|source| Error::Kube {
                action: "replace MachineRequest status",
                source,
            })?;
        self.ctx.metrics.status_write(CONTROLLER);
        if let Some(old) = &self.resource_version {
            self.ctx.superseded.record(&self.key(), old);
        }
        self.resource_version = updated.resource_version();
        self.written = self.status.clone();
        Ok(())
    }

    /// Publishes an Event on the request.
    pub async fn event(&self, type_: EventType, reason: Reason, action: &str, note: &str) {
        let object = self.mr.object_ref(&());
        events::publish(&self.ctx.recorder, &object, type_, reason, action, note).await;
    }

    /// Copies the tracker's observations and interruption notices into status,
    /// adopts machines the sweep found tagged for this request, and announces
    /// new notices (one Warning Event each, so `kubectl describe` and event
    /// pipelines show which machines the cloud is taking back).
    pub async fn observe(&mut self) {
        let tracker = &self.ctx.tracker;
        let mut noticed = Vec::new();
        for m in &mut self.status.machines {
            if m.state == MachineState::Terminated {
                continue;
            }
            if let Some(seen) = tracker.observed(&m.id) {
                translate::update(m, &seen);
            }
            if m.interruption_notice_time.is_none() {
                if let Some(notice) = tracker.notice(&m.id) {
                    // An unreadable time still counts as noticed (now), so
                    // the notice is announced once, not at every reconcile.
                    m.interruption_notice_time =
                        Some(translate::parse_time(&notice.noticed_at).unwrap_or_else(now));
                    noticed.push(notice);
                }
            }
        }
        let unlisted = tracker.take_unlisted(&self.owner.uid);
        self.adopt(unlisted);
        for n in &noticed {
            warn!(request = %self.key(), instance = %n.id, action = %n.action,
                noticed_at = %n.noticed_at, "spot interruption notice");
            let note = format!(
                "the cloud will {} spot machine {} two minutes after {}",
                n.action, n.id, n.noticed_at
            );
            self.event(
                EventType::Warning,
                Reason::SpotInterruption,
                "Observe",
                &note,
            )
            .await;
        }
    }

    /// Adds machines tagged for this request that status does not list yet;
    /// returns how many were added.
    pub fn adopt(&mut self, machines: Vec<provider::Machine>) -> usize {
        let known: BTreeSet<String> = self.status.machines.iter().map(|m| m.id.clone()).collect();
        let mut added = 0;
        for m in machines {
            if known.contains(&m.id) || m.state.is_terminating() {
                continue;
            }
            info!(request = %self.key(), instance = %m.id, "adopting machine tagged for this request");
            let batch = m.tags.get(BATCH_TAG).cloned();
            self.status
                .machines
                .push(translate::new_machine(&m, batch.as_deref()));
            added += 1;
        }
        added
    }
}

/// The time status entries are stamped with.
pub fn now() -> Time {
    Time(Timestamp::now())
}

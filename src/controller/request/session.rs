//! The request being reconciled: its status as it will be written, the
//! resourceVersion every write is conditional on, and the observations
//! (poller, sweep, interruption notices) folded into it.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, warn};

use super::plan;
use super::CONTROLLER;
use crate::api::{CapacityType, MachineRequest, MachineRequestStatus, MachineState};
use crate::controller::cloud::capacity::{self, DeathVerdict};
use crate::controller::cloud::interruption_queue::fold as queue_fold;
use crate::controller::cloud::ownership::{Owner, BATCH_TAG};
use crate::controller::cloud::status_checks;
use crate::controller::cloud::sweep::VANISHED_REASON;
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
                cluster_id: ctx.cluster_id.clone(),
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
        debug!(
            request = %self.key(),
            machines = self.status.machines.len(),
            live = self.status.live_machines(),
            phase = ?self.status.phase,
            "status written"
        );
        self.ctx.metrics.fleet.request_status_written(
            &self.owner.namespace,
            &self.owner.template,
            self.mr.metadata.creation_timestamp.as_ref().map(|t| t.0),
            &self.written.conditions,
            &self.status.conditions,
        );
        // A write the apiserver found identical to what it holds (e.g. a
        // value that differs only below what the wire format keeps) is a
        // no-op that keeps the resourceVersion: that version is current, not
        // superseded, or every later copy of it would be taken for stale.
        let new = updated.resource_version();
        if let Some(old) = &self.resource_version {
            if new.as_ref() != Some(old) {
                self.ctx.superseded.record(&self.key(), old);
            }
        }
        self.resource_version = new;
        self.written = self.status.clone();
        Ok(())
    }

    /// Hands the machines status holds (as written) to the machines gauge:
    /// this request's share of it, so the gauge costs no walk over every
    /// request.
    pub fn count_machines(&self) {
        self.ctx.metrics.fleet.request_machines(
            &self.key(),
            &self.owner.namespace,
            &self.owner.template,
            &self.written.machines,
        );
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
    ///
    /// Two observations mean more than a new state:
    /// - a machine that went down before it ever ran, with a reason from the
    ///   cloud, died at launch: it is counted against its offering, and
    ///   repeated deaths cool the offering down before the plan replaces it
    ///   (see [`crate::controller::cloud::capacity`]);
    /// - a machine status had as terminated (lost, or vanished from every
    ///   read) that the cloud reports live again is revived if the request
    ///   still needs it, else marked ScaledDown so the plan terminates it.
    pub async fn observe(&mut self) {
        let tracker = &self.ctx.tracker;
        let mut noticed = Vec::new();
        let mut announced = Vec::new();
        let mut died: Vec<(usize, provider::Machine)> = Vec::new();
        let mut came_back: Vec<usize> = Vec::new();
        let mut checks: Vec<(Reason, String)> = Vec::new();
        let checks_on = !self.ctx.config.status_check_interval.is_zero();
        let provider_name = self.status.provider.clone().unwrap_or_default();
        let stamp = now();
        for (i, m) in self.status.machines.iter_mut().enumerate() {
            if let Some(seen) = tracker.observed(&m.id) {
                match translate::change(m, &seen, VANISHED_REASON) {
                    translate::Change::Keep => continue,
                    translate::Change::Update => translate::update(m, &seen),
                    translate::Change::DiedAtLaunch => {
                        translate::update(m, &seen);
                        died.push((i, seen));
                    }
                    translate::Change::CameBack => {
                        translate::update(m, &seen);
                        came_back.push(i);
                    }
                }
            } else if m.state == MachineState::Terminated {
                continue;
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
            // Rebalance recommendations and scheduled changes from the
            // interruption queue (src/controller/cloud/interruption_queue).
            announced.extend(queue_fold::fold(m, &tracker.queue_events().get(&m.id)));
            // The cloud's status checks (src/controller/cloud/status_checks.rs);
            // none are shown while they are not read.
            let checked = if checks_on {
                tracker.status_checks().lookup(&provider_name, &m.id)
            } else {
                status_checks::Checked::Passing
            };
            if let Some(change) = status_checks::fold(m, checked, &stamp) {
                if checks_on {
                    checks.push(change);
                }
            }
        }
        let unlisted = tracker.take_unlisted(&self.owner.uid);
        self.adopt(unlisted);
        self.take_back(&came_back).await;
        self.count_deaths(&died).await;
        for (reason, note) in &announced {
            warn!(request = %self.key(), reason = reason.as_str(), "{note}");
            self.event(EventType::Warning, *reason, "Observe", note)
                .await;
        }
        for (reason, note) in &checks {
            let type_ = if *reason == Reason::MachineImpaired {
                warn!(request = %self.key(), "{note}");
                EventType::Warning
            } else {
                info!(request = %self.key(), "{note}");
                EventType::Normal
            };
            self.event(type_, *reason, "Observe", note).await;
        }
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

    /// Revives or marks for termination machines taken for gone that the
    /// cloud reports live again (see [`plan::take_back`]).
    async fn take_back(&mut self, indices: &[usize]) {
        let desired = plan::Desired::of_request(self.mr, &self.status);
        for &i in indices {
            let revived = plan::take_back(&desired, &mut self.status.machines, i);
            let m = &mut self.status.machines[i];
            let id = m.id.clone();
            let note = if revived {
                format!("machine {id} was taken for gone but the cloud reports it live again: counted again")
            } else {
                format!("machine {id} was taken for gone and replaced, but the cloud reports it live again: terminating it as surplus")
            };
            m.message = Some(note.clone());
            warn!(request = %self.key(), instance = %id, revived, "machine taken for gone is live again");
            self.event(EventType::Warning, Reason::MachineLost, "Observe", &note)
                .await;
        }
    }

    /// Counts machines that died at launch against the offering their batch
    /// chose; announces an offering cooled down by them (Warning Event naming
    /// the cloud's stateReason), so the plan's next batch falls back.
    async fn count_deaths(&mut self, died: &[(usize, provider::Machine)]) {
        let Some(provider_name) = self.status.provider.clone() else {
            return;
        };
        for (i, seen) in died {
            let m = &self.status.machines[*i];
            let why = seen.state_reason.clone().unwrap_or_default();
            let batch = m
                .batch
                .as_deref()
                .and_then(|id| self.status.launches.iter().find(|b| b.id == id));
            let Some(batch) = batch else {
                continue;
            };
            let Some(offering) = capacity::batch_offering(
                &provider_name,
                &batch.instance_types,
                &batch.subnet_ids,
                batch.capacity_type == Some(CapacityType::Spot),
                m.instance_type.as_deref().or(seen.instance_type.as_deref()),
                seen.subnet_id.as_deref(),
            ) else {
                continue;
            };
            let id = m.id.clone();
            let verdict = self.ctx.capacity.record_death(offering.clone(), &id, &why);
            warn!(request = %self.key(), instance = %id, reason = %why, ?verdict, "machine died at launch");
            if let DeathVerdict::CooledDown { deaths } = verdict {
                let subnet = if offering.subnet.is_empty() {
                    "the default subnet"
                } else {
                    offering.subnet.as_str()
                };
                let note = format!(
                    "{deaths} machines of {}{} in {subnet} died at launch within {}s (last: {id}: {why}); \
                     not launched there until the cooldown passes",
                    offering.instance_type,
                    if offering.spot { " (spot)" } else { "" },
                    self.ctx.config.capacity_cooldown.as_secs(),
                );
                self.event(
                    EventType::Warning,
                    Reason::CapacityUnavailable,
                    "Observe",
                    &note,
                )
                .await;
            }
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

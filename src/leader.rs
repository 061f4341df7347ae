//! Leader election on a `coordination.k8s.io/v1` Lease, so that two or more
//! replicas of the operator can run for availability while only one of them
//! reconciles (two reconcilers would race each other's launches and status
//! writes).
//!
//! The protocol is client-go's, kept small:
//!
//! - Every attempt reads the Lease and writes it back with the
//!   `resourceVersion` it read (a conditional update), so of two candidates
//!   acting on the same copy exactly one wins and the other gets a conflict.
//! - A candidate takes the Lease over only when the holder has not renewed it
//!   for `lease_duration`, measured on the candidate's own monotonic clock from
//!   the moment it *saw* the last change, never by comparing the timestamps
//!   written by another machine (so clock skew between nodes cannot shorten it).
//! - The leader renews every `renew_interval` and gives up once it could not
//!   renew for `renew_deadline` (< `lease_duration`): it stops before any
//!   standby may take over.
//! - On a graceful stop the leader releases the Lease (empty holder), so a
//!   standby takes over at its next attempt instead of after the full duration.
//!
//! A crate was considered: kube-lease-manager supports kube 5 but writes the
//! Lease with server-side apply (the `patch` verb) and would add a dependency
//! tree; this module needs `get`, `create` and `update` on one Lease.
//!
//! The RBAC it needs: `get`, `create`, `update` on `leases` in the Lease's
//! namespace.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, info, warn};

/// Timings of the election; the defaults are client-go's for controllers
/// (15 s lease, renew within 10 s) with a 5 s renewal.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Name of the Lease object.
    pub name: String,
    /// Namespace of the Lease object (the operator's own namespace in a cluster).
    pub namespace: String,
    /// This process's identity, written as `holderIdentity`; unique per process.
    pub identity: String,
    /// How long a standby waits after the last renewal it saw before taking over.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// How long the leader keeps leading without a successful renewal; must be
    /// shorter than `lease_duration` so it stops before a standby may start.
    pub renew_deadline: Duration,
    /// How often a standby tries, and how soon a failed renewal is retried.
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Settings with the default timings (15 s lease, 5 s renewal, 10 s deadline, 2 s retry).
    pub fn new(name: impl Into<String>, namespace: impl Into<String>, identity: String) -> Self {
        LeaseSettings {
            name: name.into(),
            namespace: namespace.into(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// `<POD_NAME or hostname>-<pid>-<random>`: unique per process, so a
    /// restarted container in the same Pod does not mistake the lease of its
    /// dead predecessor for its own (it waits for it to expire instead).
    pub fn default_identity() -> String {
        let base = std::env::var("POD_NAME")
            .ok()
            .filter(|s| !s.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "hostforge".into());
        format!(
            "{base}-{}-{:06x}",
            std::process::id(),
            fastrand::u32(..0x100_0000)
        )
    }
}

/// Why leadership ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaderError {
    /// Another process holds the lease now (it took over after we missed renewals).
    #[error("lease {lease} is now held by {holder}")]
    TakenOver {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The new holder's identity.
        holder: String,
    },
    /// Renewals failed for the whole renew deadline (apiserver unreachable, RBAC removed, …).
    #[error("could not renew lease {lease} for {seconds} s: {last_error}")]
    RenewDeadline {
        /// `namespace/name` of the Lease.
        lease: String,
        /// The renew deadline in seconds.
        seconds: u64,
        /// The last failure seen.
        last_error: String,
    },
}

/// The result of one acquire-or-renew attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// This process holds the lease (just acquired or renewed).
    Leading,
    /// Another process holds an unexpired lease.
    HeldBy(String),
    /// Another writer changed the lease between our read and our write; try again.
    Conflict,
}

/// The last version of the lease record this process saw, and when it saw it.
#[derive(Debug, Clone)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
    duration: Duration,
    seen_at: Instant,
}

/// One candidate in the election.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    observed: Option<Observed>,
}

impl Elector {
    /// A candidate for `settings.namespace/settings.name`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// The settings this elector runs with.
    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn lease_key(&self) -> String {
        format!("{}/{}", self.settings.namespace, self.settings.name)
    }

    /// Records `lease` as seen now unless it is the record seen last: the
    /// expiry clock restarts only when the holder or its renew time changes.
    fn observe(&mut self, lease: &Lease) {
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.filter(|h| !h.is_empty());
        let renew_time = spec.renew_time.map(|t| t.0);
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.settings.lease_duration);
        let same = self
            .observed
            .as_ref()
            .is_some_and(|o| o.holder == holder && o.renew_time == renew_time);
        if same {
            if let Some(o) = self.observed.as_mut() {
                o.resource_version = lease.metadata.resource_version.clone();
            }
            return;
        }
        self.observed = Some(Observed {
            holder,
            renew_time,
            resource_version: lease.metadata.resource_version.clone(),
            duration,
            seen_at: Instant::now(),
        });
    }

    /// How long until the record last seen expires (zero if it has).
    fn until_expiry(&self) -> Duration {
        self.observed
            .as_ref()
            .map(|o| o.duration.saturating_sub(o.seen_at.elapsed()))
            .unwrap_or_default()
    }

    /// Whether the record last seen has gone unrenewed for its duration.
    fn observed_expired(&self) -> bool {
        self.observed
            .as_ref()
            .is_none_or(|o| o.seen_at.elapsed() >= o.duration)
    }

    fn my_spec(&self, previous: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let me = &self.settings.identity;
        let previous_holder = previous
            .and_then(|p| p.holder_identity.as_deref())
            .filter(|h| !h.is_empty());
        let renewing = previous_holder == Some(me.as_str());
        let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(me.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
            ),
            acquire_time: if renewing {
                previous.and_then(|p| p.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            // client-go counts every change of holder, a released lease included.
            lease_transitions: Some(if renewing || previous.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..Default::default()
        }
    }

    /// One attempt to acquire the lease or, when held by us, renew it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(self.my_spec(None, now)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        self.observe(&lease);
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        match &holder {
            Some(h) if h != &self.settings.identity && !self.observed_expired() => {
                return Ok(Attempt::HeldBy(h.clone()));
            }
            _ => {}
        }
        lease.spec = Some(self.my_spec(Some(&spec), now));
        // `lease.metadata.resourceVersion` is the one just read: the update is
        // conditional on nobody having written in between.
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                if holder.as_deref() != Some(self.settings.identity.as_str()) {
                    info!(lease = %self.lease_key(), identity = %self.settings.identity,
                        previous = holder.as_deref().unwrap_or("<none>"), "acquired the lease");
                }
                self.observe(&updated);
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Waits until this process holds the lease. `on_contact` is called after
    /// every attempt that reached the apiserver (a standby is healthy and can
    /// take over). Errors are logged and retried: a standby has nothing better to do.
    pub async fn acquire(&mut self, mut on_contact: impl FnMut()) {
        let mut last_holder: Option<String> = None;
        loop {
            let mut wait = self.settings.retry_period;
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => {
                    on_contact();
                    return;
                }
                Ok(Attempt::HeldBy(holder)) => {
                    on_contact();
                    if last_holder.as_ref() != Some(&holder) {
                        info!(lease = %self.lease_key(), holder = %holder, "standing by; the lease is held");
                        last_holder = Some(holder);
                    }
                    // Try again right when the lease would expire, not up to a
                    // retry period later: a dead leader is replaced sooner.
                    wait = wait.min(self.until_expiry() + Duration::from_millis(50));
                }
                Ok(Attempt::Conflict) => {
                    on_contact();
                    debug!(lease = %self.lease_key(), "conflict acquiring the lease; retrying");
                }
                Err(e) => {
                    warn!(lease = %self.lease_key(), error = %e, "acquiring the lease failed; retrying")
                }
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Keeps the lease renewed until `release` turns true (then returns
    /// `Ok(self)` for [`Elector::release`]) or leadership is lost (`Err`). The
    /// caller must stop reconciling at once on `Err`.
    pub async fn hold(
        mut self,
        mut release: watch::Receiver<bool>,
    ) -> Result<Elector, (Elector, LeaderError)> {
        let mut last_renewal = Instant::now();
        let mut wait = self.settings.renew_interval;
        loop {
            tokio::select! {
                _ = release.wait_for(|r| *r) => return Ok(self),
                _ = tokio::time::sleep(wait) => {}
            }
            let left = self
                .settings
                .renew_deadline
                .saturating_sub(last_renewal.elapsed());
            let attempt = tokio::time::timeout(left, self.try_acquire_or_renew()).await;
            let last_error = match attempt {
                Ok(Ok(Attempt::Leading)) => {
                    last_renewal = Instant::now();
                    wait = self.settings.renew_interval;
                    debug!(lease = %self.lease_key(), "renewed the lease");
                    continue;
                }
                Ok(Ok(Attempt::HeldBy(holder))) => {
                    let lease = self.lease_key();
                    return Err((self, LeaderError::TakenOver { lease, holder }));
                }
                Ok(Ok(Attempt::Conflict)) => "conflicting update".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the request timed out".to_string(),
            };
            warn!(lease = %self.lease_key(), error = %last_error, "renewing the lease failed; retrying");
            if last_renewal.elapsed() >= self.settings.renew_deadline {
                let lease = self.lease_key();
                let seconds = self.settings.renew_deadline.as_secs();
                return Err((
                    self,
                    LeaderError::RenewDeadline {
                        lease,
                        seconds,
                        last_error,
                    },
                ));
            }
            wait = self.settings.retry_period.min(
                self.settings
                    .renew_deadline
                    .saturating_sub(last_renewal.elapsed()),
            );
        }
    }

    /// Gives the lease up (empty holder, 1 s duration) if this process still
    /// holds it, so a standby takes over at its next attempt. Best effort: a
    /// failure only means the standby waits for the lease to expire.
    pub async fn release(&mut self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.settings.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        lease.spec = Some(spec);
        self.api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.lease_key(), "released the lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elector(identity: &str) -> Elector {
        // A client is never used by these tests: they exercise the pure parts.
        let config = kube::Config::new("http://127.0.0.1:9".parse().expect("uri"));
        let client = Client::try_from(config).expect("client");
        Elector::new(client, LeaseSettings::new("l", "ns", identity.into()))
    }

    fn lease(holder: Option<&str>, renew_secs: i64, rv: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                renew_time: Some(MicroTime(
                    Timestamp::from_second(renew_secs).expect("timestamp"),
                )),
                lease_duration_seconds: Some(15),
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn expiry_restarts_only_when_the_record_changes() {
        let mut e = elector("me");
        assert!(e.observed_expired(), "nothing seen yet: free to try");
        e.observe(&lease(Some("other"), 100, "1"));
        assert!(!e.observed_expired());
        let first = e.observed.as_ref().expect("observed").seen_at;
        // Same holder and renew time (e.g. a label changed): the clock keeps running.
        e.observe(&lease(Some("other"), 100, "2"));
        assert_eq!(e.observed.as_ref().expect("observed").seen_at, first);
        assert_eq!(
            e.observed
                .as_ref()
                .and_then(|o| o.resource_version.as_deref()),
            Some("2")
        );
        // A renewal restarts it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        e.observe(&lease(Some("other"), 105, "3"));
        assert!(e.observed.as_ref().expect("observed").seen_at > first);
    }

    #[tokio::test]
    async fn a_record_expires_after_its_own_duration() {
        let mut e = elector("me");
        let mut l = lease(Some("other"), 100, "1");
        if let Some(spec) = l.spec.as_mut() {
            spec.lease_duration_seconds = Some(0);
        }
        e.observe(&l);
        assert!(e.observed_expired());
    }

    #[tokio::test]
    async fn taking_over_counts_a_transition_and_renewing_does_not() {
        let e = elector("me");
        let now = Timestamp::from_second(200).expect("timestamp");
        let fresh = e.my_spec(None, now);
        assert_eq!(fresh.holder_identity.as_deref(), Some("me"));
        assert_eq!(fresh.lease_transitions, Some(0));
        assert_eq!(fresh.lease_duration_seconds, Some(15));

        let mut theirs = lease(Some("other"), 100, "1").spec.expect("spec");
        theirs.lease_transitions = Some(3);
        let taken = e.my_spec(Some(&theirs), now);
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));

        let later = Timestamp::from_second(205).expect("timestamp");
        let renewed = e.my_spec(Some(&taken), later);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
    }

    #[test]
    fn identities_are_unique_per_process_start() {
        let a = LeaseSettings::default_identity();
        let b = LeaseSettings::default_identity();
        assert!(a.contains(&std::process::id().to_string()));
        assert_ne!(a, b);
    }
}

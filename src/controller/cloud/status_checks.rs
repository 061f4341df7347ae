//! The cloud's status checks of running machines: every
//! `statusCheckInterval` (default 5 minutes; 0 turns it off), one paginated
//! listing per provider that holds live machines ([`MachineProvider::impaired_machines`],
//! DescribeInstanceStatus on EC2), whatever the number of machines.
//!
//! What a listing found for the machines the requests hold is kept in the
//! [`StatusBook`] (replaced wholesale per provider, so a machine that passes
//! again is simply absent), and every request whose status does not show it
//! yet is woken. Its reconcile folds the book into the machines' status
//! ([`fold`]: `statusCheck` set or cleared, a Warning `MachineImpaired` or a
//! Normal `MachineHealthy` Event per change), the status step derives the
//! `MachinesHealthy` condition, and with `replaceUnhealthy` the plan replaces
//! an impaired machine (new first). Machines newly found impaired are counted
//! in `hostforge_status_check_failures_total{provider}`; the gauge
//! `hostforge_impaired_machines{provider}` holds the current number.
//!
//! [`MachineProvider::impaired_machines`]: crate::provider::MachineProvider::impaired_machines

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::reflector::ObjectRef;
use tracing::{debug, warn};

use super::ticker::every_once_synced;
use super::translate::parse_time;
use crate::api::{Machine, MachineRequest, StatusCheck, StatusCheckKind, StatusCheckStatus};
use crate::controller::reason::Reason;
use crate::controller::Context;
use crate::provider::Impairment;

/// What the last listings said, per provider: the impaired machines among
/// those the requests held. A provider never listed yet is absent.
#[derive(Default)]
pub struct StatusBook {
    by_provider: Mutex<HashMap<String, HashMap<String, Impairment>>>,
}

/// What the book says about one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    /// Its provider was not listed yet (just started, or every listing failed).
    NotYet,
    /// The last listing did not report it impaired.
    Passing,
    /// The last listing reported it impaired.
    Impaired(Impairment),
}

impl StatusBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, HashMap<String, Impairment>>> {
        self.by_provider.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the last listing of `provider` said about machine `id`.
    pub fn lookup(&self, provider: &str, id: &str) -> Checked {
        match self.lock().get(provider) {
            None => Checked::NotYet,
            Some(impaired) => match impaired.get(id) {
                Some(i) => Checked::Impaired(i.clone()),
                None => Checked::Passing,
            },
        }
    }

    /// Whether `provider` was listed since this process started: until it
    /// was, no request can say its machines pass.
    pub fn listed(&self, provider: &str) -> bool {
        self.lock().contains_key(provider)
    }

    /// Stores a listing of `provider`; returns the ids impaired now that
    /// were not at the previous listing.
    pub fn replace(&self, provider: &str, impaired: HashMap<String, Impairment>) -> Vec<String> {
        let mut book = self.lock();
        let before = book.get(provider);
        let new = impaired
            .keys()
            .filter(|id| before.is_none_or(|b| !b.contains_key(*id)))
            .cloned()
            .collect();
        book.insert(provider.to_string(), impaired);
        new
    }
}

/// Lists every `statusCheckInterval` (never, when it is zero) until
/// `shutdown` resolves; the first listing waits for the request watch's list.
pub async fn run(ctx: Arc<Context>, shutdown: impl Future<Output = ()>) {
    every_once_synced(
        ctx.config.status_check_interval,
        ctx.requests_synced.wait(),
        shutdown,
        || async {
            check_once(&ctx).await;
        },
    )
    .await;
}

/// One held machine: the request listing it and whether its status shows a
/// failing check.
struct Held {
    request: ObjectRef<MachineRequest>,
    shown: bool,
}

/// One listing per provider that holds live machines; returns how many
/// providers were listed.
pub async fn check_once(ctx: &Context) -> usize {
    let mut listed = 0;
    let held_by_provider = held_machines(ctx);
    // A provider holding no live machine has nothing that can fail: its
    // listing is known to be empty without a call. Recording it lets the
    // requests created later say AllHealthy from their first status write;
    // left unlisted, they said NotCheckedYet until the next listing woke and
    // rewrote every one of them (1,000 status writes five minutes after an
    // operator started on an empty account, in the steady bench).
    for name in ctx.providers.names() {
        if !held_by_provider.contains_key(name) && !ctx.tracker.status_checks().listed(name) {
            ctx.tracker.status_checks().replace(name, HashMap::new());
        }
    }
    for (provider_name, held) in held_by_provider {
        let Some(provider) = ctx.providers.get(&provider_name) else {
            continue;
        };
        listed += 1;
        let found = match provider.impaired_machines().await {
            Ok(found) => found,
            Err(err) => {
                warn!(provider = %provider_name, error = %err, "listing status checks failed");
                continue;
            }
        };
        let impaired: HashMap<String, Impairment> = found
            .into_iter()
            .filter(|i| held.contains_key(&i.id))
            .map(|i| (i.id.clone(), i))
            .collect();
        let first_listing = !ctx.tracker.status_checks().listed(&provider_name);
        let mut wake = Vec::new();
        for (id, h) in &held {
            if needs_wake(first_listing, h.shown, impaired.contains_key(id)) {
                wake.push(h.request.clone());
            }
        }
        let count = impaired.len();
        let newly: Vec<String> = ctx
            .tracker
            .status_checks()
            .replace(&provider_name, impaired)
            .into_iter()
            .filter(|id| held.get(id).is_some_and(|h| !h.shown))
            .collect();
        if !newly.is_empty() {
            warn!(provider = %provider_name, machines = ?newly, "machines fail a status check");
        }
        debug!(provider = %provider_name, impaired = count, "status checks listed");
        ctx.metrics
            .status_check_failures(&provider_name, newly.len());
        ctx.metrics.impaired_machines(&provider_name, count);
        wake.sort_by_key(|r| (r.namespace.clone(), r.name.clone()));
        wake.dedup();
        for request in wake {
            ctx.tracker.wake(request);
        }
    }
    listed
}

/// Whether a request holding a machine must be reconciled after a listing:
/// when its status disagrees with the listing, and on the provider's first
/// listing for every holder, since a request reconciled before it says
/// `NotCheckedYet` and nothing else would wake it to say the machines pass.
fn needs_wake(first_listing: bool, shown: bool, impaired: bool) -> bool {
    first_listing || shown != impaired
}

/// Per provider, the live machines the requests hold.
fn held_machines(ctx: &Context) -> BTreeMap<String, HashMap<String, Held>> {
    let mut out: BTreeMap<String, HashMap<String, Held>> = BTreeMap::new();
    for mr in ctx.requests.state() {
        let Some(status) = &mr.status else {
            continue;
        };
        let Some(provider) = &status.provider else {
            continue;
        };
        for m in status.machines.iter().filter(|m| m.is_live()) {
            out.entry(provider.clone()).or_default().insert(
                m.id.clone(),
                Held {
                    request: ObjectRef::from_obj(mr.as_ref()),
                    shown: m.status_check.is_some(),
                },
            );
        }
    }
    out
}

/// Folds what the book says (`checked`) into `m`'s status; returns the Event
/// (reason, note) for a change: newly impaired (Warning) or passing again
/// (Normal). A machine that is not live carries no check (it is going).
pub fn fold(m: &mut Machine, checked: Checked, now: &Time) -> Option<(Reason, String)> {
    if !m.is_live() {
        m.status_check = None;
        return None;
    }
    match checked {
        Checked::NotYet => None,
        Checked::Passing => m.status_check.take().map(|_| {
            (
                Reason::MachineHealthy,
                format!("machine {} passes its status checks again", m.id),
            )
        }),
        Checked::Impaired(i) => {
            let mut failing = Vec::new();
            if i.instance {
                failing.push(StatusCheckKind::Instance);
            }
            if i.system {
                failing.push(StatusCheckKind::System);
            }
            let since = i
                .since
                .as_deref()
                .and_then(parse_time)
                .or_else(|| m.status_check.as_ref().and_then(|c| c.since.clone()))
                .unwrap_or_else(|| now.clone());
            let wanted = StatusCheck {
                status: StatusCheckStatus::Impaired,
                failing,
                since: Some(since),
            };
            let new = m.status_check.is_none();
            let note = new.then(|| {
                let which: Vec<&str> = wanted
                    .failing
                    .iter()
                    .map(|k| match k {
                        StatusCheckKind::Instance => "instance",
                        StatusCheckKind::System => "system",
                    })
                    .collect();
                let since = i.since.as_deref().unwrap_or("now");
                (
                    Reason::MachineImpaired,
                    format!(
                        "machine {} fails its {} status check (impaired since {since})",
                        m.id,
                        which.join(" and ")
                    ),
                )
            });
            m.status_check = Some(wanted);
            note
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::MachineState;
    use k8s_openapi::jiff::Timestamp;

    fn impaired(id: &str, system: bool, since: Option<&str>) -> Impairment {
        Impairment {
            id: id.into(),
            instance: !system,
            system,
            since: since.map(Into::into),
        }
    }

    #[test]
    fn the_book_knows_unlisted_providers_and_new_impairments() {
        let book = StatusBook::default();
        assert_eq!(book.lookup("p", "i-1"), Checked::NotYet);
        let one: HashMap<_, _> = [("i-1".to_string(), impaired("i-1", true, None))].into();
        assert_eq!(book.replace("p", one.clone()), ["i-1"]);
        assert!(matches!(book.lookup("p", "i-1"), Checked::Impaired(_)));
        assert_eq!(book.lookup("p", "i-2"), Checked::Passing);
        assert_eq!(book.lookup("q", "i-1"), Checked::NotYet);
        assert!(book.replace("p", one).is_empty(), "not new the second time");
        assert!(book.replace("p", HashMap::new()).is_empty());
        assert_eq!(book.lookup("p", "i-1"), Checked::Passing);
    }

    #[test]
    fn a_machine_is_reported_impaired_once_and_healthy_again_once() {
        let now = Time(Timestamp::from_second(1_790_000_000).expect("a time"));
        let mut m = Machine::test("i-1");
        assert_eq!(fold(&mut m, Checked::NotYet, &now), None);
        assert_eq!(fold(&mut m, Checked::Passing, &now), None);
        let i = impaired("i-1", true, Some("2026-12-01T10:00:00Z"));
        let (reason, note) = fold(&mut m, Checked::Impaired(i.clone()), &now).expect("new");
        assert_eq!(reason, Reason::MachineImpaired);
        assert!(note.contains("system status check"), "{note}");
        let check = m.status_check.clone().expect("check");
        assert_eq!(check.failing, [StatusCheckKind::System]);
        assert_eq!(check.since, parse_time("2026-12-01T10:00:00Z"));
        assert_eq!(fold(&mut m, Checked::Impaired(i), &now), None, "once");
        // Without the cloud's time: the first time seen is kept.
        let mut n = Machine::test("i-2");
        fold(
            &mut n,
            Checked::Impaired(impaired("i-2", false, None)),
            &now,
        );
        assert_eq!(
            n.status_check.as_ref().and_then(|c| c.since.clone()),
            Some(now.clone())
        );
        let (reason, _) = fold(&mut m, Checked::Passing, &now).expect("healthy");
        assert_eq!(reason, Reason::MachineHealthy);
        assert_eq!(m.status_check, None);
        // Going machines carry no check.
        fold(&mut n, Checked::NotYet, &now);
        n.state = MachineState::ShuttingDown;
        assert_eq!(fold(&mut n, Checked::NotYet, &now), None);
        assert_eq!(n.status_check, None);
    }

    #[test]
    fn the_failure_counter_has_the_dashboards_name() {
        let m = crate::metrics::Metrics::new();
        m.status_check_failures("aws-default", 2);
        m.impaired_machines("aws-default", 1);
        let text = m.encode().expect("encode");
        assert!(
            text.contains("hostforge_status_check_failures_total{provider=\"aws-default\"} 2"),
            "{text}"
        );
        assert!(text.contains("hostforge_impaired_machines{provider=\"aws-default\"} 1"));
    }

    #[test]
    fn the_first_listing_wakes_every_holder_later_ones_only_changes() {
        assert!(
            needs_wake(true, false, false),
            "NotCheckedYet must turn True"
        );
        assert!(needs_wake(true, true, true));
        assert!(!needs_wake(false, false, false));
        assert!(!needs_wake(false, true, true));
        assert!(needs_wake(false, false, true));
        assert!(needs_wake(false, true, false));
    }
}

//! Spot interruption notices: every `spotNoticeInterval`, one check per
//! provider for the live spot machines the requests list, so a scheduler
//! hears that the cloud is taking a machine back while there is still time
//! to drain it (EC2 gives two minutes).
//!
//! The check makes no call while no spot machine is held. A notice found is
//! kept in the tracker and the request holding the machine is woken; its
//! reconcile writes `interruptionNoticeTime` into the machine's status and
//! publishes a `SpotInterruption` Event. Machines whose status already
//! carries a notice are not asked about again, so a restarted operator does
//! not announce them twice.
//!
//! A provider whose interruption queue answers is not checked: the queue
//! brings the same notices within seconds ([`super::interruption_queue`]). The check
//! covers it again as soon as a receive fails, until the queue answers.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;

use kube::runtime::reflector::ObjectRef;
use tracing::warn;

use super::interruption_queue::QueueHealth;
use super::ticker::every_once_synced;
use crate::api::{MachineLifecycle, MachineRequest};
use crate::controller::Context;

/// Checks every `spotNoticeInterval` (never, when it is zero) until
/// `shutdown` resolves; the first check waits for the request watch's list.
/// Providers whose queue `queues` reports answering are skipped.
pub async fn run(ctx: Arc<Context>, queues: Arc<QueueHealth>, shutdown: impl Future<Output = ()>) {
    every_once_synced(
        ctx.config.spot_notice_interval,
        ctx.requests_synced.wait(),
        shutdown,
        || async {
            check_polled(&ctx, &queues).await;
        },
    )
    .await;
}

/// One check over every provider; returns the number of new notices.
pub async fn check_once(ctx: &Context) -> usize {
    check_polled(ctx, &QueueHealth::default()).await
}

/// One check over every provider whose queue `queues` does not report
/// answering; returns the number of new notices.
pub async fn check_polled(ctx: &Context, queues: &QueueHealth) -> usize {
    let (by_provider, holders) = spot_machines(ctx);
    let mut new = 0;
    for (provider_name, ids) in by_provider {
        if queues.is_up(&provider_name) {
            continue;
        }
        let Some(provider) = ctx.providers.get(&provider_name) else {
            continue;
        };
        match provider.interruption_notices(&ids).await {
            Ok(notices) => {
                for notice in notices {
                    let holder = holders.get(&notice.id).cloned();
                    if ctx.tracker.record_notice(notice) {
                        new += 1;
                        if let Some(request) = holder {
                            ctx.tracker.wake(request);
                        }
                    }
                }
            }
            Err(err) => {
                warn!(provider = %provider_name, error = %err, "checking spot interruption notices failed")
            }
        }
    }
    new
}

/// Per provider, the live spot machines without a known notice, and which
/// request lists each.
fn spot_machines(
    ctx: &Context,
) -> (
    BTreeMap<String, Vec<String>>,
    HashMap<String, ObjectRef<MachineRequest>>,
) {
    let mut by_provider: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut holders = HashMap::new();
    for mr in ctx.requests.state() {
        let Some(status) = &mr.status else {
            continue;
        };
        let Some(provider) = &status.provider else {
            continue;
        };
        for m in &status.machines {
            let unnoticed_spot = m.capacity_type == Some(MachineLifecycle::Spot)
                && m.is_live()
                && m.interruption_notice_time.is_none()
                && ctx.tracker.notice(&m.id).is_none();
            if unnoticed_spot {
                by_provider
                    .entry(provider.clone())
                    .or_default()
                    .push(m.id.clone());
                holders.insert(m.id.clone(), ObjectRef::from_obj(mr.as_ref()));
            }
        }
    }
    (by_provider, holders)
}

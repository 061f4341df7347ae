//! One provider's queue loop: receive (long poll), apply, wait for the
//! status writes, delete; back off while the queue does not answer.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, Instant};
use tracing::{debug, info, warn};

use super::apply::{self, Outcome, Pending};
use super::holders;
use super::QueueHealth;
use crate::controller::Context;
use crate::provider::queue::{EventQueue, QueueMessage, MAX_WAIT_SECONDS};

/// How long a message waits for its request's status write before it is
/// left to come back (after the queue's visibility timeout, 60 s).
pub const WRITE_WAIT: Duration = Duration::from_secs(30);

/// How often the store is read while messages wait for their writes.
const WRITE_CHECK: Duration = Duration::from_millis(100);

/// The first pause after a failed receive; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The longest pause between receives of a queue that does not answer.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Receives from `queue` until the task is dropped.
pub(super) async fn run(ctx: Arc<Context>, queue: Arc<dyn EventQueue>, health: Arc<QueueHealth>) {
    let provider = queue.provider().to_string();
    ctx.metrics.queue_up(&provider, health.is_up(&provider));
    let mut failures: u32 = 0;
    loop {
        match queue.receive(MAX_WAIT_SECONDS).await {
            Ok(messages) => {
                failures = 0;
                if health.set(&provider, true) {
                    info!(provider = %provider, "interruption queue answers; spot notices are read from it, not polled");
                }
                ctx.metrics.queue_up(&provider, true);
                if !messages.is_empty() {
                    handle(&ctx, queue.as_ref(), messages).await;
                }
            }
            Err(err) => {
                failures = failures.saturating_add(1);
                ctx.metrics.queue_failure(&provider);
                ctx.metrics.queue_up(&provider, false);
                if health.set(&provider, false) {
                    warn!(provider = %provider, error = %err, "interruption queue does not answer; polling for spot notices until it does");
                } else {
                    debug!(provider = %provider, error = %err, failures, "interruption queue still does not answer");
                }
                sleep(backoff(failures)).await;
            }
        }
    }
}

/// The pause after `failures` failed receives in a row, with jitter so that
/// many operators do not retry in step.
fn backoff(failures: u32) -> Duration {
    let exp = FIRST_BACKOFF.saturating_mul(1u32 << failures.saturating_sub(1).min(6));
    let capped = exp.min(MAX_BACKOFF);
    capped.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A message that waits for status writes before it is deleted.
struct Waiting {
    receipt: String,
    kind: &'static str,
    pending: Vec<Pending>,
}

/// Applies one batch of messages and deletes each once it is handled.
async fn handle(ctx: &Context, queue: &dyn EventQueue, messages: Vec<QueueMessage>) {
    let provider = queue.provider().to_string();
    let ids: BTreeSet<String> = messages
        .iter()
        .filter_map(|m| m.event.as_ref().ok())
        .flat_map(|e| e.instance_ids().into_iter().map(str::to_string))
        .collect();
    let holders = holders::find(ctx, &ids);
    let mut now = Vec::new();
    let mut waiting = Vec::new();
    for msg in messages {
        let event = match msg.event {
            Err(err) => {
                warn!(provider = %provider, message = %msg.message_id, error = %err,
                    "interruption queue message is no event hostforge reads; deleting it");
                ctx.metrics
                    .queue_message(&provider, err.category, "malformed");
                now.push(msg.receipt);
                continue;
            }
            Ok(event) => event,
        };
        let kind = event.kind();
        match apply::apply(ctx, &event, &holders) {
            Outcome::UnknownInstance => {
                debug!(provider = %provider, message = %msg.message_id, kind,
                    instances = ?event.instance_ids(), "event for machines no request lists; deleting it");
                ctx.metrics
                    .queue_message(&provider, kind, "unknown_instance");
                now.push(msg.receipt);
            }
            Outcome::Ignored => {
                ctx.metrics.queue_message(&provider, kind, "ignored");
                now.push(msg.receipt);
            }
            Outcome::Applied(pending) if pending.is_empty() => {
                // Status shows it already (a redelivered message).
                ctx.metrics.queue_message(&provider, kind, "applied");
                now.push(msg.receipt);
            }
            Outcome::Applied(pending) => {
                info!(provider = %provider, message = %msg.message_id, kind,
                    instances = ?event.instance_ids(), "cloud event for held machines");
                waiting.push(Waiting {
                    receipt: msg.receipt,
                    kind,
                    pending,
                });
            }
        }
    }
    delete(ctx, queue, &now).await;
    let deadline = Instant::now() + WRITE_WAIT;
    while !waiting.is_empty() {
        let (done, rest): (Vec<Waiting>, Vec<Waiting>) =
            waiting.into_iter().partition(|w| written(ctx, &w.pending));
        waiting = rest;
        let receipts: Vec<String> = done.iter().map(|w| w.receipt.clone()).collect();
        if !receipts.is_empty() {
            // Status shows the events, the messages are still in the queue.
            crate::failpoint!("queue-before-delete");
        }
        delete(ctx, queue, &receipts).await;
        for w in &done {
            ctx.metrics.queue_message(&provider, w.kind, "applied");
        }
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for w in &waiting {
                warn!(provider = %provider, kind = w.kind,
                    "status not written in time; the message comes back after the queue's visibility timeout");
                ctx.metrics.queue_message(&provider, w.kind, "redelivered");
            }
            break;
        }
        sleep(WRITE_CHECK).await;
    }
}

/// Whether every write `pending` waits for shows in the request store.
fn written(ctx: &Context, pending: &[Pending]) -> bool {
    pending.iter().all(|p| {
        let m = holders::current(ctx, &p.request, &p.id);
        apply::written(m.as_ref(), &p.expect)
    })
}

/// Deletes `receipts`; a failure is logged and counted (the messages come
/// back and are handled again, with the same result).
async fn delete(ctx: &Context, queue: &dyn EventQueue, receipts: &[String]) {
    if let Err(err) = queue.delete(receipts).await {
        warn!(provider = %queue.provider(), error = %err, count = receipts.len(),
            "deleting interruption queue messages failed; they come back and are handled again");
        ctx.metrics.queue_failure(queue.provider());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        fastrand::seed(7);
        for (failures, max) in [(1, 1.0), (2, 2.0), (3, 4.0), (7, 60.0), (30, 60.0)] {
            let d = backoff(failures).as_secs_f64();
            assert!(d >= max / 2.0 && d <= max, "{failures}: {d}");
        }
    }
}

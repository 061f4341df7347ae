//! The interruption queue's consumer: per provider with an
//! `interruptionQueue`, one long-poll loop that turns the cloud's own events
//! (spot interruption warnings, rebalance recommendations, state changes,
//! scheduled retirements and maintenance) into status within seconds.
//!
//! A message about a machine some request lists is recorded where that
//! request's reconcile reads it (the tracker's notices and observations,
//! [`book::EventBook`] for rebalance and scheduled changes), the request is
//! woken, and the message is deleted only once the request's status shows
//! it: an operator that dies in between gets the message again and handles
//! it again, with the same result. Messages about machines no request lists
//! and messages that are no event hostforge reads are counted and deleted.
//!
//! While a provider's queue answers, [`super::interruptions`] does not poll
//! that provider's spot notices ([`health::QueueHealth`]); when it stops
//! answering, the polling takes over again until it does.

pub mod apply;
pub mod book;
mod consume;
pub mod fold;
pub mod health;
pub mod holders;

use std::future::Future;
use std::sync::Arc;

use futures::future::join_all;

use crate::controller::Context;
use crate::provider::queue::EventQueue;

pub use book::{EventBook, MachineEvents};
pub use health::QueueHealth;

/// Runs one consumer per queue until `shutdown` resolves; the first receive
/// waits for the request watch's list, so no message is taken for a machine
/// of an unknown request only because the list was not in yet.
pub async fn run(
    ctx: Arc<Context>,
    queues: Vec<Arc<dyn EventQueue>>,
    health: Arc<QueueHealth>,
    shutdown: impl Future<Output = ()>,
) {
    if queues.is_empty() {
        return;
    }
    let loops = async {
        if !ctx.requests_synced.wait().await {
            return;
        }
        join_all(
            queues
                .into_iter()
                .map(|q| consume::run(ctx.clone(), q, health.clone())),
        )
        .await;
    };
    tokio::select! {
        _ = loops => {}
        _ = shutdown => {}
    }
}

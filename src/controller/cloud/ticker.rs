//! One interval loop for the background jobs (poller, sweep, interruption
//! notices, status checks), so each of them says only what it does at a tick.

use std::future::Future;
use std::time::Duration;

/// Runs `tick` every `interval` (the first at once; a slow tick delays the
/// next instead of piling up) until `shutdown` resolves.
pub async fn every<F, Fut>(interval: Duration, shutdown: impl Future<Output = ()>, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    let ticks = async {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            tick().await;
        }
    };
    tokio::select! {
        _ = ticks => {}
        _ = shutdown => {}
    }
}

/// [`every`] for a job that reads the request watch: nothing when `interval`
/// is zero (the job is turned off), else the first tick once `synced`
/// resolves true (the watch has its first list, so no live request is taken
/// for missing), and none if it resolves false; until `shutdown` resolves.
pub async fn every_once_synced<F, Fut>(
    interval: Duration,
    synced: impl Future<Output = bool>,
    shutdown: impl Future<Output = ()>,
    tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    if interval.is_zero() {
        return;
    }
    let ticks = async {
        if synced.await {
            every(interval, std::future::pending::<()>(), tick).await;
        }
    };
    tokio::select! {
        _ = ticks => {}
        _ = shutdown => {}
    }
}

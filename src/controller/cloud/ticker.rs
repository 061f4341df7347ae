//! One interval loop for the background jobs (poller, sweep, interruption
//! notices), so each of them says only what it does at a tick.

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

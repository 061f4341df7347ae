//! When each machine's status first showed an interruption, as the
//! apiserver's watch delivered it: a background watch over the namespace's
//! MachineRequests records the first instant a machine carried an
//! interruption notice, a rebalance recommendation or the terminated state.
//! A watch, not a poll, so a latency is not rounded up to a poll period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hostforge::api::{MachineRequest, MachineState};
use hostforge_testbed::cloud_events::Ec2Event;
use hostforge_testbed::machines;
use hostforge_testbed::TestEnv;
use kube::runtime::{watcher, WatchStreamExt};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

type Firsts = HashMap<(String, Ec2Event), Instant>;

/// The first sightings, filled by a watch task until dropped.
pub(crate) struct Seen {
    firsts: Arc<Mutex<Firsts>>,
    changed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl Seen {
    /// Starts watching `env`'s requests. What is already in status when the
    /// watch starts is recorded too (with the start's instant), so only
    /// machines without the field are meaningful samples.
    pub(crate) fn watch(env: &TestEnv) -> Seen {
        let firsts = Arc::new(Mutex::new(Firsts::new()));
        let changed = Arc::new(Notify::new());
        let stream = watcher(machines::requests(env), watcher::Config::default())
            .default_backoff()
            .applied_objects();
        let (f, c) = (firsts.clone(), changed.clone());
        let task = tokio::spawn(async move {
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let Ok(mr) = ev else { continue };
                let now = Instant::now();
                let mut new = false;
                if let Ok(mut firsts) = f.lock() {
                    for key in shown(&mr) {
                        firsts.entry(key).or_insert_with(|| {
                            new = true;
                            now
                        });
                    }
                }
                if new {
                    c.notify_waiters();
                }
            }
        });
        Seen {
            firsts,
            changed,
            task,
        }
    }

    /// When `event` first showed for machine `id`, if it has.
    pub(crate) fn first(&self, id: &str, event: Ec2Event) -> Option<Instant> {
        self.firsts
            .lock()
            .ok()?
            .get(&(id.to_string(), event))
            .copied()
    }

    /// Waits until `event` shows for `id`, at most `timeout`; the instant it
    /// first showed.
    pub(crate) async fn wait(
        &self,
        id: &str,
        event: Ec2Event,
        timeout: Duration,
    ) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(t) = self.first(id, event) {
                return Some(t);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            // The 50 ms bound only covers a wake-up missed between the check
            // and the wait; the watch's notification is what normally wakes.
            let _ = tokio::time::timeout(left.min(Duration::from_millis(50)), notified).await;
        }
    }
}

impl Drop for Seen {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Every (machine, event) a request's status shows.
fn shown(mr: &MachineRequest) -> Vec<(String, Ec2Event)> {
    let mut out = Vec::new();
    for m in mr.status.iter().flat_map(|s| &s.machines) {
        if m.interruption_notice_time.is_some() {
            out.push((m.id.clone(), Ec2Event::SpotWarning));
        }
        if m.rebalance_recommendation_time.is_some() {
            out.push((m.id.clone(), Ec2Event::Rebalance));
        }
        if m.state == MachineState::Terminated {
            out.push((m.id.clone(), Ec2Event::Terminated));
        }
    }
    out
}

//! Settling a launch batch, and deleting a request, while EC2's reads lag
//! behind its writes, proven through the test bed's EC2 fidelity model
//! (testbed/src/forwarder/fidelity/) against a real kube-apiserver, moto
//! and the operator as a child process.
//!
//! EC2 behaviour exercised:
//! - the ClientToken registry: a re-send with the same token and
//!   parameters returns the first launch's instances instead of launching
//!   again, and answers `IdempotentInstanceTerminated` once all of them are
//!   terminated (<https://docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html>,
//!   <https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html>);
//! - eventual consistency: fresh instances missing from tag-filtered reads
//!   (longer) and from reads by id and TerminateInstances (briefly), "does
//!   not mean the instance was or will be terminated"
//!   (<https://docs.aws.amazon.com/ec2/latest/devguide/eventual-consistency.html>).
//!
//! What is proven (each test ends with status == moto's live instances ==
//! the count, checked on moto directly, not through the model):
//! - [`settle`]: an operator killed right after RunInstances answered
//!   (failpoint `request-after-launch`, so the batch is still Pending)
//!   settles the batch on restart by re-sending its recorded token, even
//!   when the tag listing shows none or only part of the batch: EC2 replays,
//!   moto never holds a second set, and a token whose instances were all
//!   terminated meanwhile settles the batch and a new batch fills the count.
//!   Needs `--features failpoints`.
//! - [`delete`]: deleting a request right after a scale-up, while the new
//!   machines are still invisible to tag and id reads, releases the request
//!   only once every one of its instances is terminating in moto.

#[cfg(feature = "failpoints")]
mod settle;

mod delete;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_ec2::types::{Filter, InstanceStateName};
use hostforge_testbed::forwarder::{Fidelity, Forwarder};
use hostforge_testbed::machines::create_template;
use hostforge_testbed::operator::config_via;
use hostforge_testbed::{TestEnv, AL2023_PARAM};
use serde_json::json;

/// Generous bound for every wait: a slow machine only takes longer.
pub const WAIT: Duration = Duration::from_secs(180);

/// A namespace, a forwarder with the fidelity model on (seeded), the
/// operator's config pointing at it (full sweeps every `sweep`, `extra`
/// appended), and a RunInstances template in the default subnet, so a token
/// always keys one zone.
pub async fn bed(name: &str, sweep: &str, extra: &str) -> (TestEnv, Forwarder, String) {
    let env = TestEnv::new(name).await;
    env.install_crds().await;
    let fwd = Forwarder::start(&env.bed.moto_url);
    fwd.enable_fidelity(Fidelity::seeded(16));
    let cfg = config_via(&env, &fwd, sweep, extra);
    let (subnet, _) = env.default_subnet_and_group().await;
    create_template(
        &env,
        "compute",
        json!({
            "providerApi": "RunInstances",
            "image": {"ssmParameter": AL2023_PARAM},
            "instanceTypes": [{"type": "t3.micro"}],
            "subnetIds": [subnet],
        }),
    )
    .await;
    (env, fwd, cfg)
}

/// Samples moto's live instances of one request (read from moto directly)
/// until dropped, keeping the largest number seen.
pub struct PeakLive {
    peak: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakLive {
    /// Starts sampling every 100 ms; `seen` is taken as already observed.
    pub fn start(env: &TestEnv, uid: &str, seen: usize) -> PeakLive {
        let peak = Arc::new(AtomicUsize::new(seen));
        let ec2 = env.ec2();
        let uid = uid.to_string();
        let sink = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                // A failed read is skipped; the next sample counts.
                if let Ok(live) = live_in_moto(&ec2, &uid).await {
                    sink.fetch_max(live, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        PeakLive { peak, task }
    }

    /// The largest number of live instances seen so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
}

/// Pending or running instances moto holds tagged with this request uid.
async fn live_in_moto(ec2: &aws_sdk_ec2::Client, uid: &str) -> Result<usize, String> {
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:hostforge.io/request-uid")
                .values(uid)
                .build(),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| {
            i.state().and_then(|s| s.name()).is_some_and(|n| {
                matches!(n, InstanceStateName::Pending | InstanceStateName::Running)
            })
        })
        .count())
}

impl Drop for PeakLive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

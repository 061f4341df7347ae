//! The operator runtime behind `hostforge run`: load and validate the config,
//! build one client set per provider instance, serve health and metrics, run
//! the controllers until SIGTERM/SIGINT, then stop gracefully.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use kube::api::ListParams;
use kube::Api;
use tokio::sync::watch;
use tracing::{error, info};

use crate::api::{MachineRequest, MachineTemplate};
use crate::config::{ConfigError, OperatorConfig, ProviderKind};
use crate::controller::cloud::interruption_queue::QueueHealth;
use crate::controller::cloud::poller::Tracker;
use crate::controller::{self, Context, Watches};
use crate::http::{self, HttpError, Readiness};
use crate::image::ImageResolver;
use crate::leader::{Elector, LeaderError, LeaseSettings};
use crate::metrics::Metrics;
use crate::provider::aws::{AwsClients, SqsQueue};
use crate::provider::queue::EventQueue;
use crate::provider::registry::ProviderRegistry;

/// The elector sends one request at a time; a second slot is slack.
const LEASE_REQUESTS_IN_FLIGHT: usize = 2;

/// What `hostforge run` was told on its command line.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The operator config file (a mounted ConfigMap in a cluster).
    pub config_path: PathBuf,
    /// Watch only this namespace; all namespaces when `None`.
    pub namespace: Option<String>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub metrics_addr: SocketAddr,
    /// Run the controllers only while holding this Lease (`--leader-election`);
    /// `None` runs them at once (a single replica).
    pub leader_election: Option<LeaseSettings>,
}

/// Why the operator could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The config file is missing or invalid; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// No usable Kubernetes client configuration (no kubeconfig, no in-cluster env).
    #[error("connecting to Kubernetes: {0}")]
    KubeConfig(#[source] kube::Error),
    /// The CRDs are not installed or the operator may not list them.
    #[error(
        "cannot list MachineTemplates ({0}); are the CRDs installed (kubectl apply -f crds/) \
         and does the operator's service account have RBAC for hostforge.io?"
    )]
    CrdsMissing(#[source] kube::Error),
    /// This cluster's identity could not be found (see
    /// [`controller::identity`]).
    #[error(transparent)]
    Identity(#[from] controller::identity::IdentityError),
    /// Building the provider clients failed.
    #[error("setting up providers: {0}")]
    Provider(String),
    /// The health/metrics server could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// Waiting for signals failed.
    #[error("installing signal handlers: {0}")]
    Signal(#[source] std::io::Error),
    /// Leadership was lost: the process stopped reconciling and exits so that
    /// it restarts as a standby.
    #[error("lost leadership: {0}")]
    LeadershipLost(#[source] LeaderError),
}

/// Runs the operator until SIGTERM or SIGINT.
pub async fn run(opts: RunOptions) -> Result<(), RunError> {
    return_large_blocks();
    let config = Arc::new(OperatorConfig::load(&opts.config_path)?);
    info!(
        cluster = %config.cluster_name,
        providers = config.providers.len(),
        namespace = opts.namespace.as_deref().unwrap_or("<all>"),
        "starting hostforge"
    );
    let kube_config = crate::kube_client::infer_config()
        .await
        .map_err(RunError::KubeConfig)?;
    let client =
        crate::kube_client::client(kube_config.clone(), config.max_kube_requests_in_flight)
            .map_err(RunError::KubeConfig)?;

    let cluster_id = controller::identity::resolve(&client, config.cluster_id.as_deref()).await?;
    info!(cluster_id = %cluster_id, "cluster identity");

    let metrics = Arc::new(Metrics::new());
    let providers = Arc::new(
        ProviderRegistry::new(&config, metrics.clone())
            .await
            .map_err(|e| RunError::Provider(e.to_string()))?,
    );
    let images = Arc::new(ImageResolver::new(config.image_cache_ttl, metrics.clone()));

    let (templates, requests): (Api<MachineTemplate>, Api<MachineRequest>) = match &opts.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    templates
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(RunError::CrdsMissing)?;
    requests
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(RunError::CrdsMissing)?;

    let (template_controller, _, templates_synced) =
        controller::watch::controller(templates.clone());
    // The request controller is woken by template changes and reads templates
    // from the store that very watch fills, so it never sees an older copy
    // than the change that woke it.
    let (template_store, template_events) = controller::watch::reflected(templates);
    let (request_controller, request_store, requests_synced) =
        controller::watch::controller(requests);
    let (tracker, wake) = Tracker::new();
    let ctx = Arc::new(Context::new(
        client.clone(),
        config.clone(),
        providers.clone(),
        images,
        metrics.clone(),
        Watches {
            templates: template_store,
            requests: request_store,
            templates_synced,
            requests_synced,
            tracker: tracker.clone(),
            namespace: opts.namespace.clone(),
        },
        cluster_id,
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let readiness = Arc::new(Readiness::default());
    let (bound, server) = http::serve(
        opts.metrics_addr,
        metrics.clone(),
        readiness.clone(),
        stopped(),
    )
    .await?;
    info!(addr = %bound, "serving /healthz, /readyz, /metrics");
    let server = tokio::spawn(server);

    // One signal future for the whole run, so a signal while standing by is not lost.
    let signal = wait_for_signal();
    tokio::pin!(signal);
    // With leader election nothing below runs before this process holds the
    // Lease. A standby counts as ready once it reached the apiserver: it is
    // healthy and can take over, and a rollout must not wait on it forever.
    let (release_tx, release_rx) = watch::channel(false);
    let mut leadership = None;
    if let Some(settings) = opts.leader_election.clone() {
        // The Lease has a client (and connection) of its own: a renewal must
        // never wait behind a queue of status writes for longer than the lease.
        let lease_client = crate::kube_client::client(kube_config, LEASE_REQUESTS_IN_FLIGHT)
            .map_err(RunError::KubeConfig)?;
        let mut elector = Elector::new(lease_client, settings);
        info!(identity = %elector.settings().identity, lease = %elector.settings().name, "waiting for leadership");
        let acquired = {
            let readiness = readiness.clone();
            tokio::select! {
                () = elector.acquire(move || readiness.set_ready()) => true,
                res = &mut signal => {
                    res.map_err(RunError::Signal)?;
                    false
                }
            }
        };
        if !acquired {
            info!("shutdown signal received while standing by; stopped");
            let _ = stop_tx.send(true);
            let _ = server.await;
            return Ok(());
        }
        info!(identity = %elector.settings().identity, "became leader; starting controllers");
        leadership = Some(tokio::spawn(elector.hold(release_rx)));
    }
    let lost = async {
        match leadership.as_mut() {
            Some(hold) => Some(hold.await),
            None => std::future::pending().await,
        }
    };

    // The interruption queues (providers[].interruptionQueue): while one
    // answers, its provider's spot notices are read from it, not polled.
    let queues = interruption_queues(&config, metrics.clone()).await;
    let queue_health = Arc::new(QueueHealth::new(
        queues.iter().map(|q| q.provider().to_string()),
    ));
    let mut tasks = vec![
        tokio::spawn(controller::template::run(
            ctx.clone(),
            template_controller,
            stopped(),
        )),
        tokio::spawn(controller::request::run(
            ctx.clone(),
            request_controller,
            template_events,
            wake,
            stopped(),
        )),
        tokio::spawn(controller::cloud::poller::run_poller(
            tracker,
            providers,
            metrics,
            config.poll_interval,
            stopped(),
        )),
        tokio::spawn(controller::cloud::sweep::run(ctx.clone(), stopped())),
        tokio::spawn(controller::cloud::interruptions::run(
            ctx.clone(),
            queue_health.clone(),
            stopped(),
        )),
        tokio::spawn(controller::cloud::interruption_queue::run(
            ctx.clone(),
            queues,
            queue_health,
            stopped(),
        )),
        tokio::spawn(controller::cloud::template_collector::run(
            ctx.clone(),
            stopped(),
        )),
        tokio::spawn(controller::cloud::status_checks::run(
            ctx.clone(),
            stopped(),
        )),
    ];
    // Ready once both watches have listed everything: before that a reconcile
    // could miss a template, or the sweep take a live request for gone.
    {
        let ctx = ctx.clone();
        let readiness = readiness.clone();
        tasks.push(tokio::spawn(async move {
            let synced = ctx.templates_synced.wait().await && ctx.requests_synced.wait().await;
            if synced {
                info!("watches synced; ready");
                readiness.set_ready();
            }
        }));
    }

    tokio::select! {
        res = &mut signal => res.map_err(RunError::Signal)?,
        ended = lost => {
            // Stop reconciling at once: another replica may already lead.
            for task in &tasks {
                task.abort();
            }
            let _ = stop_tx.send(true);
            let err = match ended {
                Some(Ok(Err((_, err)))) => err,
                _ => {
                    error!("the lease keeper ended unexpectedly");
                    LeaderError::RenewDeadline {
                        lease: opts.leader_election.map(|s| s.name).unwrap_or_default(),
                        seconds: 0,
                        last_error: "lease keeper task ended".into(),
                    }
                }
            };
            error!(error = %err, "lost leadership; stopped reconciling, exiting");
            return Err(RunError::LeadershipLost(err));
        }
    }
    info!("shutdown signal received; stopping controllers");
    let _ = stop_tx.send(true);
    for task in tasks {
        if let Err(err) = task.await {
            error!(error = %err, "operator task failed");
        }
    }
    // Controllers are stopped: hand the Lease over so a standby starts now.
    let _ = release_tx.send(true);
    if let Some(hold) = leadership {
        match hold.await {
            Ok(Ok(mut elector)) => {
                if let Err(err) = elector.release().await {
                    error!(error = %err, "releasing the lease failed; a standby takes over when it expires");
                }
            }
            Ok(Err((_, err))) => error!(error = %err, "leadership was lost while stopping"),
            Err(err) => error!(error = %err, "lease keeper task failed"),
        }
    }
    match server.await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => error!(error = %err, "health/metrics server failed"),
        Err(err) => error!(error = %err, "health/metrics server task failed"),
    }
    info!("stopped");
    Ok(())
}

/// One queue per provider with an `interruptionQueue`, with clients of its
/// own built like the provider's (region, endpoint override, role).
async fn interruption_queues(
    config: &OperatorConfig,
    metrics: Arc<Metrics>,
) -> Vec<Arc<dyn EventQueue>> {
    let mut out: Vec<Arc<dyn EventQueue>> = Vec::new();
    for p in &config.providers {
        let Some(queue) = config.interruption_queue(&p.name) else {
            continue;
        };
        let clients = match p.kind {
            ProviderKind::Aws => AwsClients::connect(p).await,
        };
        info!(provider = %p.name, queue = %queue, "reading the interruption queue");
        out.push(Arc::new(SqsQueue::new(
            &p.name,
            clients.sqs,
            queue.clone(),
            metrics.clone(),
        )));
    }
    out
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Has glibc's allocator give large blocks (128 KiB and up: EC2 answers, the
/// buffers they are read into) their own mappings, returned to the system
/// when freed. By default glibc raises that threshold to the largest block
/// freed so far (up to 32 MiB), after which such buffers came from the heap
/// and their pages stayed resident: the steady bench's operator grew 8 MB
/// while its sweep and status-check listing ran at 10,000 machines (98.7 MiB
/// peak, 90.7 at the fill's end). Setting the threshold keeps it fixed. musl
/// (the container image's libc) has no such setting and maps large blocks
/// anyway.
fn return_large_blocks() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters and takes glibc's
    // arena locks itself, so calling it while other threads allocate is sound.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

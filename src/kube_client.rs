//! The operator's Kubernetes client: kube's own stack (kubeconfig or in-cluster
//! config, TLS, auth, timeouts) with at most `maxKubeRequestsInFlight` requests
//! waiting for their response at once.
//!
//! kube speaks HTTP/1.1 to the apiserver: every request in flight has a
//! connection of its own, opened on demand and then kept in the pool. A
//! thousand requests applied at once wake a thousand reconciles, whose status
//! writes opened a thousand TLS connections with tens of KiB of buffers each:
//! at 10,000 machines that was most of the operator's memory, and a thousand
//! sockets for the apiserver to serve. Requests over the cap wait in the
//! client's queue instead (kube's own buffer in front of this layer); the
//! apiserver answers one patch in milliseconds, so the queue drains at its
//! pace, not ours. A watch holds its slot only until its response headers
//! arrive, so long-running watches never use up the cap.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use kube::client::ClientBuilder;
use kube::{Client, Config};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{Layer, Service};

/// Requests in flight to the apiserver unless `maxKubeRequestsInFlight` says
/// otherwise: well above what the controllers need to keep the apiserver busy
/// (a status write takes a few milliseconds there), far below a connection
/// per request.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 32;

/// A client from `config` whose requests in flight never exceed
/// `max_in_flight` (at least 1).
pub fn client(config: Config, max_in_flight: usize) -> Result<Client, kube::Error> {
    Ok(ClientBuilder::try_from(config)?
        .with_layer(&InFlightLimitLayer::new(max_in_flight))
        .build())
}

/// A client for a process that makes a few calls and exits (the HostFactory
/// plugin): kube's own stack (TLS from the config, base URI, kube's retry of
/// 429/503/504 when `default_retry` is on, auth, extra headers) on a
/// connector with `TCP_NODELAY`.
///
/// kube's own connector leaves Nagle's algorithm on. A new connection then
/// sends the TLS handshake's last flight, and the request right behind it
/// waits for the apiserver's delayed ACK: about 40 ms on every fresh
/// connection, which a long-running operator pays once per pooled connection
/// and a one-shot process pays on every call (measured: getAvailableTemplates
/// 87 → 44 ms in a release build). A proxied config keeps kube's stack, which
/// alone knows how to tunnel.
pub fn one_shot_client(config: Config) -> Result<Client, kube::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::TokioExecutor;
    use kube::client::ConfigExt;
    use tower::util::{option_layer, MapErrLayer};

    if config.proxy_url.is_some() {
        return Client::try_from(config);
    }
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let retry = config
        .default_retry
        .then(|| tower::retry::RetryLayer::new(kube::client::retry::RetryPolicy::server_retry()));
    // Innermost first, the order of kube's own stack (base URI outermost).
    Ok(ClientBuilder::new(hyper, config.default_namespace.clone())
        .with_layer(&MapErrLayer::new(
            |e: hyper_util::client::legacy::Error| -> tower::BoxError { Box::new(e) },
        ))
        .with_layer(&config.extra_headers_layer()?)
        .with_layer(&option_layer(config.auth_layer()?))
        .with_layer(&option_layer(retry))
        .with_layer(&config.base_uri_layer())
        .build())
}

/// The config `hostforge run` builds its clients from: the kubeconfig
/// (`KUBECONFIG`, then `~/.kube/config`) or the in-cluster service account,
/// as `kube::Client::try_default` finds them.
pub async fn infer_config() -> Result<Config, kube::Error> {
    Config::infer().await.map_err(kube::Error::InferConfig)
}

/// Wraps a service so that at most `max` of its calls are unanswered at once.
#[derive(Debug, Clone)]
pub struct InFlightLimitLayer {
    slots: Arc<Semaphore>,
}

impl InFlightLimitLayer {
    /// A limit of `max` calls (0 is taken as 1, which still makes progress).
    pub fn new(max: usize) -> InFlightLimitLayer {
        InFlightLimitLayer {
            slots: Arc::new(Semaphore::new(max.max(1))),
        }
    }
}

impl<S> Layer<S> for InFlightLimitLayer {
    type Service = InFlightLimit<S>;

    fn layer(&self, inner: S) -> InFlightLimit<S> {
        InFlightLimit {
            inner,
            slots: PollSemaphore::new(self.slots.clone()),
            slot: None,
        }
    }
}

/// The service of [`InFlightLimitLayer`]: ready once it holds a slot, which
/// the next call's future keeps until that call is answered.
#[derive(Debug)]
pub struct InFlightLimit<S> {
    inner: S,
    slots: PollSemaphore,
    slot: Option<OwnedSemaphorePermit>,
}

impl<S, R> Service<R> for InFlightLimit<S>
where
    S: Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.slot.is_none() {
            // The semaphore is never closed, so `None` cannot come; were it
            // to, calls would go on unlimited rather than stop.
            self.slot = ready!(self.slots.poll_acquire(cx));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // tower's contract: `call` follows a ready `poll_ready`, so the slot
        // is here; kube's buffer keeps that contract.
        let slot = self.slot.take();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let result = answer.await;
            drop(slot);
            result
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tower::buffer::Buffer;
    use tower::ServiceExt;

    use super::*;

    /// Answers after 20 ms and records how many calls were unanswered at most.
    #[derive(Clone, Default)]
    struct Slow {
        now: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
    }

    impl Service<u32> for Slow {
        type Response = u32;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<u32, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, n: u32) -> Self::Future {
            let (now, most) = (self.now.clone(), self.most.clone());
            Box::pin(async move {
                let open = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(open, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok(n * 2)
            })
        }
    }

    async fn most_in_flight(limit: usize, calls: u32) -> (usize, Vec<u32>) {
        let slow = Slow::default();
        let most = slow.most.clone();
        // As kube uses it: one shared buffer in front of the stack.
        let service = Buffer::new(InFlightLimitLayer::new(limit).layer(slow), 1024);
        let answers = futures::future::join_all((0..calls).map(|n| {
            let service = service.clone();
            async move { service.oneshot(n).await.unwrap_or(u32::MAX) }
        }))
        .await;
        (most.load(Ordering::SeqCst), answers)
    }

    /// Whether the TCP socket of this process whose local address is
    /// `local` has Nagle's algorithm off (`TCP_NODELAY`), found among the
    /// process's open descriptors.
    fn nodelay_of_own_socket(local: std::net::SocketAddr) -> Option<bool> {
        for entry in std::fs::read_dir("/proc/self/fd").ok()?.flatten() {
            let Ok(fd) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            // SAFETY: plain getsockname/getsockopt into local buffers of the
            // sizes passed; a descriptor that is no socket just fails.
            unsafe {
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                if libc::getsockname(fd, std::ptr::addr_of_mut!(addr).cast(), &mut len) != 0
                    || i32::from(addr.sin_family) != libc::AF_INET
                    || u16::from_be(addr.sin_port) != local.port()
                {
                    continue;
                }
                let mut on: libc::c_int = 0;
                let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                if libc::getsockopt(
                    fd,
                    libc::IPPROTO_TCP,
                    libc::TCP_NODELAY,
                    std::ptr::addr_of_mut!(on).cast(),
                    &mut len,
                ) == 0
                {
                    return Some(on != 0);
                }
            }
        }
        None
    }

    /// The one-shot client's connection has Nagle off, so a request written
    /// behind the TLS handshake does not wait for the server's delayed ACK.
    #[tokio::test]
    async fn one_shot_connections_have_nagle_off() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let client = one_shot_client(Config::new(url.parse().expect("url"))).expect("client");
        let server = tokio::spawn(async move {
            let (mut socket, peer) = listener.accept().await.expect("accept");
            let mut seen = Vec::new();
            let mut buf = [0u8; 1024];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await.expect("read");
                assert!(n > 0, "the client closed before its request");
                seen.extend_from_slice(&buf[..n]);
            }
            // The client's end of this connection lives in this process.
            let nodelay = nodelay_of_own_socket(peer);
            let body = br#"{"major":"1","minor":"34"}"#;
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                body.len()
            );
            socket.write_all(head.as_bytes()).await.expect("write");
            socket.write_all(body).await.expect("write");
            nodelay
        });
        client
            .apiserver_version()
            .await
            .expect("the request is answered");
        assert_eq!(server.await.expect("server"), Some(true));
    }

    #[tokio::test]
    async fn calls_over_the_limit_wait_and_all_are_answered() {
        let (most, answers) = most_in_flight(3, 12).await;
        assert_eq!(most, 3, "never more than the limit, and the limit is used");
        assert_eq!(answers, (0..12).map(|n| n * 2).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_limit_of_zero_still_answers_one_at_a_time() {
        let (most, answers) = most_in_flight(0, 4).await;
        assert_eq!(most, 1);
        assert_eq!(answers, vec![0, 2, 4, 6]);
    }
}

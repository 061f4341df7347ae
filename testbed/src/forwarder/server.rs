//! The forwarder's HTTP side: accepting connections, deciding each call and
//! relaying it to the upstream unchanged.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::TokioIo;

use super::fidelity::{serve, Dropped};
use super::status_checks::rewrite;
use super::wire::{error_response, plain, xml_response, Call};
use super::{Decision, Shared};

/// Largest request or upstream answer body the forwarder reads (64 MiB);
/// EC2 and SSM calls are far smaller, so a larger one is a broken client.
pub(super) const MAX_BODY: usize = 64 << 20;

/// Headers that describe one hop, not the message, so they are never relayed
/// (RFC 9110 §7.6.1); hyper sets its own framing on each side.
pub(super) const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut shutdown: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // Keep-alive: a client may send many calls on one
                        // connection and keep it idle as long as it likes.
                        let _ = http1::Builder::new()
                            .header_read_timeout(None)
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // Out of file descriptors and the like: pause, keep serving.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(plain(
                StatusCode::BAD_REQUEST,
                format!("forwarder: reading the request body: {e}"),
            ))
        }
    };
    let call = Call::parse(&parts, &body);
    let decision = shared.lock().decide(&call);
    match decision {
        Decision::Answer(error) => Ok(error_response(&error, call.json)),
        Decision::Reply(body) => Ok(xml_response(body)),
        Decision::Model => {
            let action = call.action.clone().unwrap_or_default();
            serve(&shared, &parts.headers, &action, &call.params).await
        }
        Decision::Forward => {
            let (parts, body) = requirements_rewritten(&shared, &call, parts, body);
            let mut parts = parts;
            let body = match super::reservations::for_moto(&String::from_utf8_lossy(&body)) {
                Some(changed) => {
                    // The length changed: hyper sets it again from the new body.
                    parts.headers.remove(hyper::header::CONTENT_LENGTH);
                    Bytes::from(changed)
                }
                None => body,
            };
            forward_and_relay(&shared, &call, parts, body).await
        }
    }
}

/// Forwards a call the forwarder does not answer itself and relays the
/// answer, rewritten where the forwarder models what moto lacks.
async fn forward_and_relay(
    shared: &Arc<Shared>,
    call: &Call,
    parts: Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Dropped> {
    match forward(shared, parts, body).await {
        Ok(response) if call.action.as_deref() == Some("DescribeInstanceStatus") => {
            let response = rewrite_body(response, |text| super::paging::page(&call.params, text));
            Ok(impair(shared, response.await).await)
        }
        Ok(response) if call.action.as_deref() == Some("DescribeInstances") => {
            let response = hold_pending(shared, response).await;
            Ok(rewrite_body(response, |text| shared.lock().reserved.report(text)).await)
        }
        Ok(response)
            if matches!(
                call.action.as_deref(),
                Some("RunInstances" | "CreateLaunchTemplate" | "CreateFleet")
            ) =>
        {
            let action = call.action.clone().unwrap_or_default();
            Ok(rewrite_body(response, |text| {
                shared.lock().reserved.learn(&action, &call.params, text);
                None
            })
            .await)
        }
        Ok(response) => Ok(response),
        Err(message) => {
            if let Some(action) = &call.action {
                *shared
                    .lock()
                    .upstream_errors
                    .entry(action.clone())
                    .or_default() += 1;
            }
            Ok(plain(
                StatusCode::BAD_GATEWAY,
                format!("forwarder: upstream {}: {message}", shared.upstream),
            ))
        }
    }
}

/// A CreateFleet with `InstanceRequirements` rewritten into matching
/// instance types when the test turned that model on (see `requirements`);
/// any other request unchanged. The body changes length, so the length
/// header is dropped (hyper sets it from the new body).
fn requirements_rewritten(
    shared: &Shared,
    call: &super::wire::Call,
    mut parts: Parts,
    body: Bytes,
) -> (Parts, Bytes) {
    let on = shared.lock().model_requirements;
    if !on || call.action.as_deref() != Some("CreateFleet") || call.json {
        return (parts, body);
    }
    let Some(params) = super::requirements::rewrite(&call.params) else {
        return (parts, body);
    };
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params.iter())
        .finish();
    parts.headers.remove(hyper::header::CONTENT_LENGTH);
    (parts, Bytes::from(encoded))
}

/// moto's DescribeInstances answer with the instances a test holds shown
/// pending (see `pending`); unchanged otherwise.
async fn hold_pending(shared: &Shared, response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let Some(known) = shared.lock().held_pending.clone() else {
        return response;
    };
    rewrite_body(response, |text| super::pending::rewrite(text, &known)).await
}

/// `response` with its body rewritten by `rewrite` (when it answers
/// `Some`); only successful answers are touched.
async fn rewrite_body(
    response: Response<Full<Bytes>>,
    rewrite: impl FnOnce(&str) -> Option<String>,
) -> Response<Full<Bytes>> {
    if !response.status().is_success() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    match rewrite(&String::from_utf8_lossy(&bytes)) {
        Some(new) => {
            // The length changed: hyper sets it again from the new body.
            parts.headers.remove(hyper::header::CONTENT_LENGTH);
            Response::from_parts(parts, Full::new(Bytes::from(new)))
        }
        None => Response::from_parts(parts, Full::new(bytes)),
    }
}

/// moto's DescribeInstanceStatus answer with the instances a test marked
/// impaired rewritten (see `status_checks`); unchanged otherwise.
async fn impair(shared: &Shared, response: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let marked = shared.lock().impaired.clone();
    if marked.is_empty() {
        return response;
    }
    rewrite_body(response, |text| rewrite(text, &marked)).await
}

/// Sends the request on unchanged (same method, path, query, headers but the
/// hop-by-hop ones, body) and returns the upstream answer the same way.
async fn forward(
    shared: &Shared,
    parts: Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, String> {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", shared.upstream)
        .parse()
        .map_err(|e| format!("bad target URI: {e}"))?;
    let mut request = Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    copy_end_to_end(&parts.headers, request.headers_mut());

    let answer = shared
        .client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (answer_parts, answer_body) = answer.into_parts();
    let answer_body = Limited::new(answer_body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let mut response = Response::new(Full::new(answer_body));
    *response.status_mut() = answer_parts.status;
    copy_end_to_end(&answer_parts.headers, response.headers_mut());
    Ok(response)
}

fn copy_end_to_end(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !HOP_BY_HOP.contains(&name.as_str()) {
            to.append(name.clone(), value.clone());
        }
    }
}

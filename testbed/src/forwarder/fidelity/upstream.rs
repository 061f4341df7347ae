//! The model's own calls to moto: a launch forwarded with rewritten
//! parameters, and the reads it sends itself (DescribeInstances to refresh
//! a replay, DescribeSubnets for a zone, TerminateInstances for a death).
//! Each reuses the client's signed headers, so moto picks the same account
//! and region as for the client's call (moto does not check signatures).

use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};

use super::xml::Document;
use crate::forwarder::server::{HOP_BY_HOP, MAX_BODY};
use crate::forwarder::Shared;

/// Headers never copied onto the model's own calls: the hop-by-hop ones
/// (framing is hyper's) and those describing the body, which is the model's.
const ABOUT_THE_BODY: &[&str] = &["content-length", "content-type", "expect"];

/// An answer from moto.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
}

impl Answer {
    /// The body as a parsed document, for a 200 answer that parses.
    pub(super) fn document(&self) -> Option<Document> {
        if self.status != StatusCode::OK {
            return None;
        }
        Document::parse(std::str::from_utf8(&self.body).ok()?)
    }
}

/// Sends an EC2 query call with `params` (form-encoded) to moto, with the
/// client's `headers`.
pub(super) async fn call(
    shared: &Shared,
    headers: &HeaderMap,
    params: &BTreeMap<String, String>,
) -> Result<Answer, String> {
    let body = form(params);
    let uri: Uri = format!("{}/", shared.upstream)
        .parse()
        .map_err(|e| format!("bad target URI: {e}"))?;
    let mut request = Request::post(uri)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("building the request: {e}"))?;
    for (name, value) in headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && !ABOUT_THE_BODY.contains(&name.as_str()) {
            request.headers_mut().append(name.clone(), value.clone());
        }
    }
    request.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
    );
    let answer = shared
        .client
        .request(request)
        .await
        .map_err(|e| format!("{e:?}"))?;
    let (parts, body) = answer.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let mut headers = parts.headers;
    headers.remove(CONTENT_LENGTH);
    headers.remove("transfer-encoding");
    headers.remove("connection");
    Ok(Answer {
        status: parts.status,
        headers,
        body,
    })
}

/// A call the model makes on its own: `action` with `params`.
pub(super) async fn own_call(
    shared: &Shared,
    headers: &HeaderMap,
    action: &str,
    params: &[(String, String)],
) -> Result<Answer, String> {
    let mut all = BTreeMap::new();
    all.insert("Action".to_string(), action.to_string());
    all.insert("Version".to_string(), "2016-11-15".to_string());
    all.extend(params.iter().cloned());
    call(shared, headers, &all).await
}

/// `InstanceId.1=…&InstanceId.2=…` parameters.
pub(super) fn id_params(ids: &[String]) -> Vec<(String, String)> {
    ids.iter()
        .enumerate()
        .map(|(i, id)| (format!("InstanceId.{}", i + 1), id.clone()))
        .collect()
}

fn form(params: &BTreeMap<String, String>) -> String {
    let mut out = form_urlencoded::Serializer::new(String::new());
    for (k, v) in params {
        out.append_pair(k, v);
    }
    out.finish()
}

/// The region of the call's SigV4 credential scope (`us-east-1`).
pub(super) fn region(headers: &HeaderMap) -> String {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|scope| scope.split([',', ' ']).next())
        .and_then(|scope| scope.split('/').nth(2))
        .unwrap_or("us-east-1")
        .to_string()
}

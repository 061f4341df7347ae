//! The wire formats the forwarder reads and writes: the EC2 query and JSON
//! protocols' parameters, the SigV4 service of a call, and error and reply
//! documents the SDK parses as if AWS had sent them.

use super::fidelity::escape;
use std::collections::BTreeMap;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Response, StatusCode};

use super::rules::InjectedError;

/// What the forwarder understood of one request.
pub(super) struct Call {
    pub(super) action: Option<String>,
    pub(super) params: BTreeMap<String, String>,
    /// A JSON-protocol call (has `X-Amz-Target`); errors are answered as JSON.
    pub(super) json: bool,
    /// The service of the SigV4 credential scope (`ec2`, `ssm`), if signed.
    pub(super) service: Option<String>,
}

impl Call {
    pub(super) fn parse(parts: &Parts, body: &[u8]) -> Call {
        let headers = &parts.headers;
        let service = header_str(headers, "authorization").and_then(sigv4_service);
        let mut params = BTreeMap::new();
        if let Some(query) = parts.uri.query() {
            params.extend(form_urlencoded::parse(query.as_bytes()).into_owned());
        }
        if let Some(target) = header_str(headers, "x-amz-target") {
            if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
                flatten_json("", &value, &mut params);
            }
            let action = target.rsplit('.').next().unwrap_or(target).to_string();
            return Call {
                action: Some(action),
                params,
                json: true,
                service,
            };
        }
        let is_form = header_str(headers, CONTENT_TYPE.as_str())
            .is_some_and(|ct| ct.starts_with("application/x-www-form-urlencoded"));
        if is_form {
            params.extend(form_urlencoded::parse(body).into_owned());
        }
        Call {
            action: params.get("Action").map(|a| dry_run_name(a, &params)),
            params,
            json: false,
            service,
        }
    }

    pub(super) fn is_ec2(&self) -> bool {
        match self.service.as_deref() {
            Some(service) => service == "ec2",
            None => !self.json && self.action.is_some(),
        }
    }
}

/// The name a call is counted, matched and recorded under: its action, with
/// [`DRY_RUN_SUFFIX`] when it is sent with `DryRun=true` (EC2 checks such a
/// call without doing it), so a dry run never counts as, or takes a fault
/// meant for, the call itself.
fn dry_run_name(action: &str, params: &BTreeMap<String, String>) -> String {
    if params.get("DryRun").is_some_and(|v| v == "true") {
        format!("{action}{DRY_RUN_SUFFIX}")
    } else {
        action.to_string()
    }
}

/// Appended to the action of a call made with `DryRun=true`: a dry run of
/// RunInstances is counted and matched as `RunInstances:DryRun`.
pub const DRY_RUN_SUFFIX: &str = ":DryRun";

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/ec2/aws4_request, …`
/// → `ec2`.
fn sigv4_service(authorization: &str) -> Option<String> {
    let scope = authorization.split("Credential=").nth(1)?;
    let scope = scope.split([',', ' ']).next()?;
    scope.split('/').nth(3).map(str::to_string)
}

/// Flattens a JSON body into the dotted keys EC2 uses (`Tags.1.Key`), so
/// rules and recorded calls look alike for both protocols.
fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                flatten_json(&key(k), v, out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten_json(&key(&(i + 1).to_string()), v, out);
            }
        }
        serde_json::Value::String(s) => {
            out.insert(prefix.to_string(), s.clone());
        }
        serde_json::Value::Null => {}
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

impl InjectedError {
    /// The EC2 query-protocol error document.
    fn ec2_xml(&self, request_id: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>{}</Code>\
             <Message>{}</Message></Error></Errors><RequestID>{}</RequestID></Response>",
            escape(&self.code),
            escape(&self.message),
            request_id
        )
    }

    /// The awsJson1_1 error document (SSM and other JSON services).
    fn json_body(&self) -> String {
        serde_json::json!({ "__type": self.code, "message": self.message }).to_string()
    }

    pub(super) fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

pub(super) fn error_response(error: &InjectedError, json: bool) -> Response<Full<Bytes>> {
    let request_id = request_id();
    let (body, content_type) = if json {
        (error.json_body(), "application/x-amz-json-1.1")
    } else {
        (error.ec2_xml(&request_id), "text/xml;charset=UTF-8")
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = error.status_code();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert(HeaderName::from_static("x-amzn-requestid"), id);
    }
    if json {
        if let Ok(code) = HeaderValue::from_str(&error.code) {
            headers.insert(HeaderName::from_static("x-amzn-errortype"), code);
        }
    }
    response
}

/// A 200 EC2 (query protocol) answer with `body` as the document.
pub(super) fn xml_response(body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/xml;charset=UTF-8"),
    );
    response
}

pub(super) fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// A random UUID-shaped request id, as EC2's `RequestID` looks.
fn request_id() -> String {
    let hex = |n: usize| -> String {
        (0..n)
            .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
            .collect()
    };
    format!("{}-{}-{}-{}-{}", hex(8), hex(4), hex(4), hex(4), hex(12))
}

//! Who may use the HTTP listener's APIs: OPA's `--authentication` and `--authorization`
//! options, and arbiter's default that keeps the Data API and `/metrics` to loopback callers.
//!
//! - `--authorization=basic`: every request to `/health`, `/metrics` and `/v1/data` is decided
//!   by `data.system.authz.allow` (a rule in the served policies), with OPA's input: `method`,
//!   `path` (the URL's segments, each percent-decoded once), `params`, `headers` (Go's
//!   canonical names, as OPA gives them), `identity` (the bearer token, with
//!   `--authentication=token`) and `body` (a JSON request body). Anything but `true` is
//!   `401 {"code": "unauthorized"}`, as in OPA. The audit dashboard keeps its own token.
//! - By default (no `--authorization`), the Data API and `/metrics` answer loopback callers
//!   only — unless mTLS with `--allowed-caller` already decides who connects. `/health` stays
//!   open for probes. Before this, a Data API on `0.0.0.0` answered anyone, and a crafted
//!   `input` wrote decision events.
//! - `--authorization=off`: everyone, as OPA without options (an explicit choice).

use std::collections::BTreeMap;
use std::sync::Arc;

use arbiter_engine::DataRef;
use arbiter_engine::regorus::Value;
use arbiter_engine::value::from_json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value as Json, json};

use crate::http::PeerAddr;
use crate::state::State;

/// `--authentication`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Authentication {
    #[default]
    Off,
    /// The `Authorization: Bearer <token>` header's token is `input.identity`.
    Token,
}

/// `--authorization`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Authorization {
    /// Not given: the Data API and `/metrics` answer loopback (or mTLS-allowed) callers only.
    #[default]
    LoopbackOnly,
    /// `data.system.authz.allow` decides every request.
    Basic,
    /// Everyone (given explicitly).
    Off,
}

/// How the HTTP listener's APIs are protected.
#[derive(Debug, Clone, Default)]
pub struct ApiAccess {
    pub authentication: Authentication,
    pub authorization: Authorization,
    /// mTLS with allowed callers is on: the handshake already decided who connects.
    pub mtls_callers: bool,
    /// The largest body of a Data API write (`PUT`, `PATCH`): the data file limit,
    /// `max_data_file_bytes` (`None`: its default), as every other way data arrives.
    pub max_write_bytes: Option<u64>,
}

impl ApiAccess {
    /// The largest body a request with `method` may send: a write's is a data document's
    /// ([`ApiAccess::max_write_bytes`]); any other request's is the Data API's 4 MiB.
    pub fn body_limit(&self, method: &axum::http::Method) -> usize {
        use axum::http::Method;
        if matches!(*method, Method::PUT | Method::PATCH) {
            let limit = self
                .max_write_bytes
                .unwrap_or(arbiter_engine::limits::LoadLimits::default().max_data_file_bytes);
            usize::try_from(limit).unwrap_or(usize::MAX)
        } else {
            crate::http::MAX_BODY
        }
    }
}

fn unauthorized(message: &str) -> Response {
    let mut r = Response::new(Body::from(
        json!({"code": "unauthorized", "message": message}).to_string(),
    ));
    *r.status_mut() = StatusCode::UNAUTHORIZED;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    r
}

/// The middleware in front of `/health`, `/metrics` and the Data API.
pub async fn gate(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    request: Request,
    next: Next,
) -> Response {
    let access = &state.options.api;
    match access.authorization {
        Authorization::Off => next.run(request).await,
        Authorization::LoopbackOnly => {
            if request.uri().path() == "/health"
                || peer.ip().to_canonical().is_loopback()
                || access.mtls_callers
            {
                next.run(request).await
            } else {
                unauthorized(
                    "the Data API and /metrics answer loopback callers only: protect them with \
                     --authorization=basic (a system.authz policy) or mTLS with --allowed-caller, \
                     or serve everyone with --authorization=off",
                )
            }
        }
        Authorization::Basic => {
            let (parts, body) = request.into_parts();
            let limit = access.body_limit(&parts.method);
            let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
                return crate::http::body_too_large(&parts.method, limit);
            };
            let input = match admin_input(&parts, &bytes, access.authentication) {
                Ok(i) => i,
                // The same answer the Data API gives this path.
                Err(e) => {
                    return crate::http::error(StatusCode::BAD_REQUEST, "invalid_parameter", e);
                }
            };
            let authorizer = state.authorizer.load_full();
            let allow = DataRef::from_segments(
                vec!["system".into(), "authz".into(), "allow".into()],
                "system/authz/allow",
            )
            .ok()
            .and_then(|r| authorizer.evaluate_value(&r, input).ok());
            if allow == Some(Value::Bool(true)) {
                next.run(Request::from_parts(parts, Body::from(bytes)))
                    .await
            } else {
                unauthorized("request rejected by administrative policy")
            }
        }
    }
}

/// Go's canonical header name (`x-forwarded-for` → `X-Forwarded-For`), as OPA's input has it.
fn canonical_header(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = true;
    for c in name.chars() {
        out.push(if upper {
            c.to_ascii_uppercase()
        } else {
            c.to_ascii_lowercase()
        });
        upper = c == '-';
    }
    out
}

/// OPA's input for `system.authz`; an error for a path the Data API would refuse too.
fn admin_input(
    parts: &axum::http::request::Parts,
    body: &[u8],
    authentication: Authentication,
) -> Result<Value, String> {
    let path: Vec<Json> = crate::http::path_segments(parts.uri.path())?
        .into_iter()
        .map(Json::String)
        .collect();
    let mut params: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for (k, v) in crate::http::query_pairs(&parts.uri) {
        params.entry(k).or_default().push(Json::String(v));
    }
    let mut headers: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(canonical_header(name.as_str()))
            .or_default()
            .push(Json::String(
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
    }
    let mut input = json!({
        "method": parts.method.as_str(),
        "path": path,
        "params": params,
        "headers": headers,
    });
    if authentication == Authentication::Token
        && let Some(token) = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    {
        input["identity"] = Json::String(token.trim().to_string());
    }
    if !body.is_empty()
        && let Ok(b) = serde_json::from_slice::<Json>(body)
    {
        input["body"] = b;
    }
    Ok(from_json(&input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_is_opas() {
        let request = axum::http::Request::builder()
            .method("POST")
            .uri("/v1/data/a%2Fb/c?pretty=true&x=1&x=2")
            .header("authorization", "Bearer secret")
            .header("x-forwarded-for", "10.0.0.1")
            .body(())
            .unwrap_or_default();
        let (parts, ()) = request.into_parts();
        let input = arbiter_engine::value::to_json(
            &admin_input(&parts, br#"{"input": {"a": 1}}"#, Authentication::Token)
                .unwrap_or(Value::Null),
        );
        assert_eq!(input["method"], "POST");
        assert_eq!(input["path"], json!(["v1", "data", "a/b", "c"]));
        assert_eq!(input["params"]["x"], json!(["1", "2"]));
        assert_eq!(input["headers"]["X-Forwarded-For"], json!(["10.0.0.1"]));
        assert_eq!(input["identity"], "secret");
        assert_eq!(input["body"]["input"]["a"], 1);
        let without = arbiter_engine::value::to_json(
            &admin_input(&parts, b"", Authentication::Off).unwrap_or(Value::Null),
        );
        assert!(without.get("identity").is_none());
    }

    /// `input.path` is the reading the Data API queries by: `/v1/data//secret` is
    /// `data.secret` there, so the policy sees `["v1", "data", "secret"]`, not an empty segment
    /// that a rule on `input.path[2]` would let through.
    #[test]
    fn the_input_path_is_the_data_apis_reading() {
        let parts = |uri: &str| {
            axum::http::Request::builder()
                .uri(uri)
                .body(())
                .unwrap_or_default()
                .into_parts()
                .0
        };
        let input = arbiter_engine::value::to_json(
            &admin_input(&parts("/v1/data//secret/"), b"", Authentication::Off)
                .unwrap_or(Value::Null),
        );
        assert_eq!(input["path"], json!(["v1", "data", "secret"]));
        let reference = crate::http::data_ref_of("/v1/data//secret/");
        assert_eq!(
            reference
                .and_then(Result::ok)
                .map(|r| r.as_rego().to_string()),
            Some("data.secret".to_string())
        );
        assert!(admin_input(&parts("/v1/data/a%zz"), b"", Authentication::Off).is_err());
    }
}

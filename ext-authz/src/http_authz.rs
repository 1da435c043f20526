//! Envoy's HTTP ext_authz protocol (`http_service`), beside the gRPC one: Envoy sends the
//! request's method, path (after its `path_prefix`), the headers its `allowed_headers` let
//! through (and `headers_to_add`), and the body when `with_request_body` is on; a `200`
//! answer allows, any other status denies with that status, body and headers.
//!
//! The request is read into the same [`AuthzRequest`] a gRPC check gives, and decided by the
//! same path (`State::check_as`): the same input document, identity rules, decision record and
//! metrics (origin `http_authz`). What the protocol cannot carry is absent, never guessed:
//!
//! | `input.attributes…` | HTTP mode |
//! |---|---|
//! | `request.http.method`, `path` (query included), `headers` | as Envoy sent them (the prefix removed from the path) |
//! | `request.http.host` | the `host` header Envoy sends (the original authority) |
//! | `request.http.body` / `rawBody` | the body, as text when it is UTF-8 and not gRPC, else as bytes |
//! | `request.http.id` | the `x-request-id` header |
//! | `request.http.scheme` | the `x-forwarded-proto` header, when Envoy sends it |
//! | `request.http.protocol`, `source` (address, principal, certificate), `destination`, `contextExtensions`, `metadataContext`, `tlsSession` | absent: not in the protocol |
//!
//! So an mTLS caller's identity is not known in HTTP mode (a JWT-SVID in a header is); the
//! connection's peer is Envoy, recorded as `requested_by`. An allow answers `200` with the
//! policy's upstream headers and its response headers (Envoy's `allowed_upstream_headers` and
//! `allowed_client_headers_on_success` choose which travel on); a denial answers its status
//! (a policy's `200` for a denial is answered `403`: in this protocol `200` is an allow), body
//! and headers. Every answer names its decision in `x-arbiter-decision-id`.

use std::sync::Arc;

use arbiter_engine::DenyReason;
use arbiter_engine::request::{AuthzRequest, HttpRequest};
use axum::body::Body;
use axum::extract::{ConnectInfo, State as AxState};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::http::PeerAddr;
use crate::metrics::Origin;
use crate::state::State;

/// The HTTP ext_authz service's settings.
#[derive(Debug, Clone, Default)]
pub struct HttpAuthzOptions {
    /// Envoy's `http_service.path_prefix`, removed from the path before deciding.
    pub path_prefix: String,
    /// The largest body read (a larger one is answered 413, a denial).
    pub max_body_bytes: usize,
}

#[derive(Clone)]
struct Service {
    state: Arc<State>,
    options: Arc<HttpAuthzOptions>,
}

/// The router: every method and path is a check.
pub fn router(state: Arc<State>, options: HttpAuthzOptions) -> axum::Router {
    axum::Router::new().fallback(check).with_state(Service {
        state,
        options: Arc::new(options),
    })
}

async fn check(
    AxState(svc): AxState<Service>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = svc.options.max_body_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
            .into_response();
    };
    let request = authz_request(&method, &uri, &headers, &body, &svc.options);
    let (outcome, decision_id) = svc
        .state
        // Envoy puts its span's context in the headers of the authorization request, where
        // the check's input reads it (`State::check_as` looks there).
        .check_as(Origin::HttpAuthz, Box::new(request), Some(peer), None)
        .await;
    let d = &outcome.decision;
    // An unaudited request is denied even in dry-run mode.
    let dry_run =
        svc.state.options.dry_run && !matches!(d.reason, Some(DenyReason::AuditUnavailable));
    let mut response = if d.allowed || dry_run {
        let mut r = StatusCode::OK.into_response();
        if d.allowed {
            append(r.headers_mut(), &d.headers);
            append(r.headers_mut(), &d.response_headers_to_add);
        }
        r
    } else {
        let status = StatusCode::from_u16(d.http_status)
            .ok()
            .filter(|s| *s != StatusCode::OK)
            .unwrap_or(StatusCode::FORBIDDEN);
        // A policy's own denial carries the policy's body; an error its reason code.
        let body = match (&d.body, d.reason.as_ref()) {
            (Some(b), _) => b.clone(),
            (None, Some(r)) if r.is_error() => r.code().to_string(),
            _ => String::new(),
        };
        let mut r = (status, body).into_response();
        append(r.headers_mut(), &d.headers);
        r
    };
    if let Ok(v) = HeaderValue::from_str(&decision_id) {
        response.headers_mut().insert("x-arbiter-decision-id", v);
    }
    response
}

/// Headers from the policy; names or values HTTP cannot carry are left out (the input
/// builder's checks already refused such requests; a policy's own values are checked here).
fn append(to: &mut HeaderMap, headers: &[arbiter_engine::decision::Header]) {
    for h in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            to.append(n, v);
        }
    }
}

/// The check Envoy's HTTP request describes.
pub fn authz_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    options: &HttpAuthzOptions,
) -> AuthzRequest {
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let path = match target.strip_prefix(options.path_prefix.trim_end_matches('/')) {
        Some(rest) if !options.path_prefix.is_empty() && rest.starts_with('/') => rest,
        _ => target,
    };
    let lines: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut http = HttpRequest {
        method: method.as_str().to_string(),
        path: path.to_string(),
        size: i64::try_from(body.len()).unwrap_or(i64::MAX),
        headers: lines,
        ..HttpRequest::default()
    };
    let header = |name: &str| http.header(name).unwrap_or_default();
    // gRPC as the input builder reads it (the same media type), so its bytes stay bytes.
    let grpc =
        arbiter_engine::body::media_type(&header("content-type")).starts_with("application/grpc");
    let (id, host, scheme) = (
        header("x-request-id"),
        header("host"),
        header("x-forwarded-proto"),
    );
    match std::str::from_utf8(body) {
        Ok(s) if !grpc => http.body = s.to_string(),
        _ => http.raw_body = body.to_vec(),
    }
    (http.id, http.host, http.scheme) = (id, host, scheme);
    AuthzRequest {
        time: Some(arbiter_engine::request::Timestamp::from_ns(
            arbiter_engine::clock::now_ns(),
        )),
        http: Some(http),
        ..AuthzRequest::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_envoy_describes() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("shop.example"));
        h.insert("x-request-id", HeaderValue::from_static("r-1"));
        h.append("x-tag", HeaderValue::from_static("a"));
        h.append("x-tag", HeaderValue::from_static("b"));
        let opts = HttpAuthzOptions {
            path_prefix: "/authz".into(),
            max_body_bytes: 1 << 20,
        };
        let uri: Uri = "/authz/api/items?q=1".parse().unwrap();
        let r = authz_request(&Method::POST, &uri, &h, b"{\"a\":1}", &opts);
        let http = r.http.unwrap();
        assert_eq!(http.path, "/api/items?q=1");
        assert_eq!(
            (http.host.as_str(), http.id.as_str()),
            ("shop.example", "r-1")
        );
        assert_eq!(http.body, "{\"a\":1}");
        assert!(http.raw_body.is_empty());
        let tags: Vec<&str> = http
            .headers
            .iter()
            .filter(|(k, _)| k == "x-tag")
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(r.source.is_none(), "the peer is Envoy, not the caller");
        // A path that only starts with the prefix's letters keeps them.
        let uri: Uri = "/authzed".parse().unwrap();
        let r = authz_request(&Method::GET, &uri, &h, b"", &opts);
        assert_eq!(r.http.unwrap().path, "/authzed");
        // Bytes that are not UTF-8, and gRPC bodies, stay bytes.
        let r = authz_request(&Method::POST, &uri, &h, &[0xff, 0], &opts);
        assert_eq!(r.http.unwrap().raw_body, vec![0xff, 0]);
    }
}

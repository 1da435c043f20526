//! The HTTP listener: `GET /health`, `GET /metrics`, and OPA's Data API
//! (`POST /v1/data/{path}` with `{"input": …}`, `GET /v1/data/{path}`; and its writes, `PUT`,
//! `PATCH` with JSON Patch and `DELETE`), so existing OPA clients can switch.
//!
//! The data reference is built from the URL's segments (each percent-decoded once), never from
//! query text (OPA's CVE-2025-46569).

use arbiter_engine::trace_context::TraceContext;
use std::net::SocketAddr;
use std::sync::Arc;

use arbiter_engine::DataRef;
use arbiter_engine::data_write::{DataWrite, WriteError, WriteOp};
use arbiter_engine::value::{from_json, to_json};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, DefaultBodyLimit, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use crate::state::State;

/// The client's address, for plaintext and TLS listeners alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Largest request body the Data API accepts.
pub const MAX_BODY: usize = 4 << 20;

pub fn router(state: Arc<State>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/status", get(status))
        .route("/v1/config", get(config))
        .route("/v1/policies", get(policies))
        .route("/v1/policies/{*id}", get(policy))
        .fallback(data_api)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::api_auth::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        // The Data API reads its bodies itself, each method under its own limit
        // (`ApiAccess::body_limit`); no other route reads one.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// OPA's `http_request_duration_seconds{code,handler,method}`: every request, timed to its
/// answer, under OPA's handler names.
async fn timed(
    AxState(state): AxState<Arc<State>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let start = std::time::Instant::now();
    let path = request.uri().path();
    let handler = if path == "/v1/data" || path.starts_with("/v1/data/") {
        "v1/data"
    } else if path == "/health" || path.starts_with("/health/") {
        "health"
    } else if path == "/metrics" {
        "metrics"
    } else if path == "/v1/status" {
        "v1/status"
    } else if path == "/v1/config" {
        "v1/config"
    } else if path == "/v1/policies" || path.starts_with("/v1/policies/") {
        "v1/policies"
    } else {
        "catchall"
    };
    let method = request.method().as_str().to_string();
    let response = next.run(request).await;
    state.metrics.opa.http_request(
        response.status().as_u16(),
        handler,
        &method,
        u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX),
    );
    response
}

/// The diagnostic listener's routes: `/health` and `/metrics`, nothing else (OPA's
/// `--diagnostic-addr`).
pub fn diagnostic_router(state: Arc<State>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(axum::middleware::from_fn_with_state(state.clone(), timed))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "not_found",
                "the diagnostic address serves /health and /metrics",
            )
        })
        .with_state(state)
}

fn json_response(status: StatusCode, body: &Json, pretty: bool) -> Response {
    let text = if pretty {
        serde_json::to_string_pretty(body)
    } else {
        serde_json::to_string(body)
    }
    .unwrap_or_default();
    let mut r = (status, text).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

pub(crate) fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    json_response(
        status,
        &json!({"code": code, "message": message.into()}),
        false,
    )
}

/// OPA's `/health`: 200 while the server can evaluate, so a liveness probe does not restart a
/// server that is waiting for its bundles. `?bundles` (or `?bundle`) is 500 until the policy
/// is loaded; `?plugins` is 500 while a plugin is not up — `bundle` (the policy),
/// `envoy_ext_authz_grpc` (the gRPC listener), `decision_logs` (required auditing) — except the
/// ones named by `exclude-plugin`. The failing answer carries OPA's `error`; arbiter's own
/// fields are beside it.
async fn health(AxState(state): AxState<Arc<State>>, uri: Uri) -> Response {
    use std::sync::atomic::Ordering;
    let a = state.authorizer.load();
    let reload = state.reload_status.load();
    let awaiting = state.awaiting_policy.load(Ordering::Acquire);
    let mut body = json!({
        "revision": a.policies().revision(),
        "path": a.path().slash_path(),
        // Serving a stand-in that denies every check until the configured policy loads.
        "awaiting_policy": awaiting,
        "reloads": reload.reloads,
        "reload_failures": reload.failures,
        // The set that failed to load did not replace this one: still healthy, but stale.
        "last_reload_error": reload.last_error,
        "last_reload_error_at": reload.last_error_at,
        // Auditing is required and the decision log refuses events: checks are denied.
        "audit_unavailable": !state.audit_available(),
    });
    let params = query_pairs(&uri);
    let asked = |name: &str| bool_param(&params, name);
    let excluded = |plugin: &str| {
        params
            .iter()
            .any(|(k, v)| k == "exclude-plugin" && v.split(',').any(|p| p == plugin))
    };
    let plugins = state.plugins();
    let error = if (asked("bundles") || asked("bundle")) && awaiting {
        Some("one or more bundles are not activated")
    } else if asked("plugins") && plugins.iter().any(|(name, up)| !up && !excluded(name)) {
        Some("one or more plugins are not up")
    } else {
        None
    };
    match error {
        None => json_response(StatusCode::OK, &body, false),
        Some(e) => {
            body["error"] = json!(e);
            json_response(StatusCode::INTERNAL_SERVER_ERROR, &body, false)
        }
    }
}

/// OPA's name for a plugin's state (`/v1/status`, `plugin_status_gauge`).
fn plugin_state(up: bool) -> &'static str {
    if up { "OK" } else { "NOT_READY" }
}

/// OPA's `/v1/status`: what the status plugin reports — the instance's `labels`, each
/// bundle's activation, each plugin's state.
async fn status(AxState(state): AxState<Arc<State>>) -> Response {
    let plugins: serde_json::Map<String, Json> = state
        .plugins()
        .iter()
        .map(|(name, up)| ((*name).to_string(), json!({"state": plugin_state(*up)})))
        .collect();
    json_response(
        StatusCode::OK,
        &json!({"result": {
            "labels": state.options.labels.to_json(),
            "bundles": state.metrics.opa.bundle_status(),
            "plugins": plugins,
        }}),
        false,
    )
}

/// OPA's `GET /v1/config`: the configuration in effect, credentials and keys removed, with
/// the instance's `labels`.
async fn config(AxState(state): AxState<Arc<State>>) -> Response {
    let mut active = match &state.options.active_config {
        Json::Object(m) => m.clone(),
        _ => serde_json::Map::new(),
    };
    active.insert("labels".into(), state.options.labels.to_json());
    json_response(StatusCode::OK, &json!({ "result": active }), false)
}

/// OPA's `GET /v1/policies`: every Rego module, by id (its file), with its text. Read-only:
/// policies come from files and bundles, so `PUT` and `DELETE` are 405.
async fn policies(AxState(state): AxState<Arc<State>>) -> Response {
    let a = state.authorizer.load();
    let list: Vec<Json> = a
        .policies()
        .rego_sources()
        .into_iter()
        .map(|(id, raw)| json!({"id": id, "raw": raw}))
        .collect();
    json_response(StatusCode::OK, &json!({ "result": list }), false)
}

/// OPA's `GET /v1/policies/{id}`.
async fn policy(
    AxState(state): AxState<Arc<State>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let a = state.authorizer.load();
    match a
        .policies()
        .rego_sources()
        .into_iter()
        .find(|(name, _)| *name == id || name.trim_start_matches('/') == id)
    {
        Some((id, raw)) => json_response(
            StatusCode::OK,
            &json!({"result": {"id": id, "raw": raw}}),
            false,
        ),
        None => error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            format!("storage_not_found_error: policy id \"{id}\""),
        ),
    }
}

async fn metrics(AxState(state): AxState<Arc<State>>) -> Response {
    let a = state.authorizer.load();
    let plugins = state.plugins();
    let statuses: Vec<(&str, &str)> = plugins
        .iter()
        .map(|(name, up)| (*name, plugin_state(*up)))
        .collect();
    let text = state.metrics.render(
        a.policies().revision(),
        &a.path().slash_path(),
        a.rego_engine() == Ok(arbiter_engine::authorizer::RegoEngine::Rvm),
        state.ready(),
        &statuses,
    );
    let mut r = text.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// OPA's boolean query parameter (`getBoolParam`): given without a value, or as `true` (any
/// case) at least once.
pub fn bool_param(params: &[(String, String)], name: &str) -> bool {
    let values: Vec<&str> = params
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .collect();
    match values.as_slice() {
        [] => false,
        [""] => true,
        _ => values.iter().any(|v| v.eq_ignore_ascii_case("true")),
    }
}

/// The query's `name=value` pairs, names and values form-decoded (`+` is a space, then one
/// percent-decoding; an invalid escape reads as empty). The Data API's parameters and
/// `system.authz`'s `input.params` are this one reading.
pub fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let decode = |s: &str| {
        arbiter_engine::path::percent_decode(&s.replace('+', " "))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    uri.query()
        .unwrap_or("")
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The first value of parameter `name` among the query's pairs.
fn query_param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find_map(|(k, v)| (k == name).then_some(v.as_str()))
}

/// A URL path's segments, each percent-decoded once; empty segments (`//`, a trailing `/`) are
/// not segments. The Data API's reference and `system.authz`'s `input.path` are this one
/// reading, so a policy guarding `/v1/data/x` sees the path the query will read.
pub fn path_segments(path: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    for raw in path.split('/').filter(|s| !s.is_empty()) {
        let Some(bytes) = arbiter_engine::path::percent_decode(raw) else {
            return Err(format!("invalid percent-escape in path segment `{raw}`"));
        };
        match String::from_utf8(bytes) {
            Ok(s) => segments.push(s),
            Err(_) => return Err("path segment is not valid UTF-8".into()),
        }
    }
    Ok(segments)
}

/// `/v1/data[/a/b/c]` → a data reference, each segment decoded once.
pub fn data_ref_of(path: &str) -> Option<Result<DataRef, String>> {
    Some(
        data_path_of(path)?
            .and_then(|segments| DataRef::from_segments(segments, path).map_err(|e| e.to_string())),
    )
}

/// `/v1/data[/a/b/c]` → the document's path in `data`, each segment decoded once (`None`: not
/// a Data API path). Reads and writes name documents by this one reading.
pub fn data_path_of(path: &str) -> Option<Result<Vec<String>, String>> {
    let rest = path.strip_prefix("/v1/data")?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    Some(path_segments(rest))
}

async fn data_api(
    AxState(state): AxState<Arc<State>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let limit = state.options.api.body_limit(&method);
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return body_too_large(&method, limit);
    };
    if matches!(method, Method::PUT | Method::PATCH | Method::DELETE) {
        return write_data(state, &method, &uri, &headers, &body, peer).await;
    }
    let Some(reference) = data_ref_of(uri.path()) else {
        return error(
            StatusCode::NOT_FOUND,
            "resource_not_found",
            "no such endpoint",
        );
    };
    let reference = match reference {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_parameter", e),
    };
    let started = std::time::Instant::now();
    let params = query_pairs(&uri);
    let asked = |name: &str| bool_param(&params, name);
    let pretty = asked("pretty");
    if query_param(&params, "explain").is_some_and(|v| v != "off") {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_parameter",
            "explain is not supported: arbiter evaluates without traces (use `arbiter eval` and print())",
        );
    }
    let input = match method {
        Method::POST => {
            if body.iter().all(u8::is_ascii_whitespace) {
                None
            } else {
                match serde_json::from_slice::<Json>(&body) {
                    Ok(Json::Object(mut m)) => m.remove("input").map(|i| from_json(&i)),
                    Ok(_) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid_parameter",
                            "request body must be an object with an `input` field",
                        );
                    }
                    Err(e) => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid_parameter",
                            format!("request body is not JSON: {e}"),
                        );
                    }
                }
            }
        }
        Method::GET => match query_param(&params, "input") {
            None => None,
            Some(text) => match serde_json::from_str::<Json>(text) {
                Ok(i) => Some(from_json(&i)),
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "invalid_parameter",
                        format!("`input` is not JSON: {e}"),
                    );
                }
            },
        },
        _ => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use GET or POST (PUT, PATCH or DELETE to write)",
            );
        }
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let trace = TraceContext::from_headers(header("traceparent"), header("tracestate"));
    let (result, decision_id) = state.data(reference, input, Some(peer), trace).await;
    match result {
        Ok(v) => {
            let mut body = serde_json::Map::new();
            body.insert("decision_id".into(), json!(decision_id));
            if v != arbiter_engine::regorus::Value::Undefined {
                body.insert("result".into(), to_json(&v));
            }
            if asked("metrics") || asked("instrument") {
                body.insert(
                    "metrics".into(),
                    json!({"timer_server_handler_ns": started.elapsed().as_nanos()}),
                );
            }
            if asked("provenance") {
                let a = state.authorizer.load();
                body.insert(
                    "provenance".into(),
                    json!({
                        "version": format!("arbiter-{}", env!("CARGO_PKG_VERSION")),
                        "revision": a.policies().revision(),
                        "bundles": a.policies().bundles_json(),
                    }),
                );
            }
            json_response(StatusCode::OK, &Json::Object(body), pretty)
        }
        Err(message) => json_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            &json!({"code": "internal_error", "message": message, "decision_id": decision_id}),
            pretty,
        ),
    }
}

/// `413`: a request body over its limit, saying which limit and how to raise it.
pub(crate) fn body_too_large(method: &Method, limit: usize) -> Response {
    let message = if matches!(*method, Method::PUT | Method::PATCH) {
        format!(
            "the request body is over the limit of {limit} bytes for data (raise it with \
             --max-data-file-bytes or `limits: {{max_data_file_bytes: …}}` in the config)"
        )
    } else {
        format!("the request body is over the Data API's limit of {limit} bytes")
    };
    error(StatusCode::PAYLOAD_TOO_LARGE, "invalid_parameter", message)
}

/// OPA's Data API writes: `PUT` (create or overwrite, creating parents; `If-None-Match: *`
/// leaves an existing document alone), `PATCH` (JSON Patch `add`, `remove`, `replace`, paths
/// relative to the URL's) and `DELETE`. All or nothing; `204` when applied, and OPA's status and
/// error codes otherwise.
async fn write_data(
    state: Arc<State>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    peer: SocketAddr,
) -> Response {
    let base = match data_path_of(uri.path()) {
        None => {
            return error(
                StatusCode::NOT_FOUND,
                "resource_not_found",
                "no such endpoint",
            );
        }
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, "invalid_parameter", e),
        Some(Ok(s)) => s,
    };
    let writes = match *method {
        Method::PUT => match serde_json::from_slice::<Json>(body) {
            Ok(v) => vec![DataWrite {
                op: WriteOp::Upsert,
                path: base,
                value: from_json(&v),
            }],
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_parameter",
                    format!("request body is not JSON: {e}"),
                );
            }
        },
        Method::PATCH => match patch_writes(&base, body) {
            Ok(w) => w,
            Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_parameter", e),
        },
        _ if base.is_empty() => {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "the data root cannot be deleted",
            );
        }
        _ => vec![DataWrite {
            op: WriteOp::Remove,
            path: base,
            value: arbiter_engine::regorus::Value::Null,
        }],
    };
    let if_none_match = *method == Method::PUT
        && headers
            .get(header::IF_NONE_MATCH)
            .is_some_and(|v| v.as_bytes() == b"*");
    let operations = writes.len();
    let done = tokio::task::spawn_blocking(move || state.write_data(&writes, if_none_match)).await;
    match done {
        Ok(Ok(crate::state::Written::Applied(revision))) => {
            // Who changed the data the decisions read, and which revision it made: the
            // server's log says it for every write (decision events name the revision).
            tracing::info!(
                event = "data_write",
                peer = %peer,
                method = %method,
                path = %uri.path(),
                operations,
                revision = %revision,
                "data write from {peer}: {method} {} ({operations} operation{}): revision {revision}",
                uri.path(),
                if operations == 1 { "" } else { "s" }
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(Ok(crate::state::Written::Exists)) => StatusCode::NOT_MODIFIED.into_response(),
        Ok(Err(e @ WriteError::NotFound { .. })) => {
            error(StatusCode::NOT_FOUND, "resource_not_found", e.to_string())
        }
        Ok(Err(e @ WriteError::Conflict { .. })) => {
            error(StatusCode::NOT_FOUND, "resource_conflict", e.to_string())
        }
        Ok(Err(e @ WriteError::Invalid(_))) => {
            error(StatusCode::BAD_REQUEST, "invalid_parameter", e.to_string())
        }
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the write stopped before it finished; nothing was written",
        ),
    }
}

/// A JSON Patch body as writes below `base`: `[{"op": "add"|"remove"|"replace", "path": "/…",
/// "value": …}]` (a missing `value` is `null`, a missing `path` is `base` itself).
fn patch_writes(base: &[String], body: &[u8]) -> Result<Vec<DataWrite>, String> {
    let ops = match serde_json::from_slice::<Json>(body) {
        Ok(Json::Array(ops)) => ops,
        Ok(_) => return Err("request body must be a JSON Patch: an array of operations".into()),
        Err(e) => return Err(format!("request body is not JSON: {e}")),
    };
    ops.iter()
        .map(|op| {
            let name = op.get("op").and_then(Json::as_str).unwrap_or_default();
            let kind = WriteOp::parse(name)
                .filter(|k| *k != WriteOp::Upsert)
                .ok_or_else(|| format!("bad patch operation: {name}"))?;
            let pointer = match op.get("path") {
                None => "",
                Some(Json::String(p)) => p.as_str(),
                Some(_) => return Err("a patch operation's `path` must be a string".into()),
            };
            let mut path = base.to_vec();
            path.extend(arbiter_engine::data_write::parse_pointer(pointer));
            Ok(DataWrite {
                op: kind,
                path,
                value: op
                    .get("value")
                    .map_or(arbiter_engine::regorus::Value::Null, from_json),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OPA's `getBoolParam`: `?x`, `?x=true`, `?x=TRUE` ask; `?x=false`, `?x=1`, absent do not.
    #[test]
    fn boolean_parameters_as_opa_reads_them() {
        let ask = |q: &str, name: &str| {
            let uri: Uri = format!("/health?{q}").parse().unwrap();
            bool_param(&query_pairs(&uri), name)
        };
        assert!(ask("bundles", "bundles"));
        assert!(ask("bundles=true", "bundles"));
        assert!(ask("bundles=TRUE", "bundles"));
        assert!(ask("bundles=false&bundles=true", "bundles"));
        assert!(!ask("bundles=false", "bundles"));
        assert!(!ask("bundles=1", "bundles"));
        assert!(!ask("plugins", "bundles"));
    }

    #[test]
    fn data_refs_come_from_segments() {
        let r = data_ref_of("/v1/data/envoy/authz/allow").unwrap().unwrap();
        assert_eq!(r.as_rego(), "data.envoy.authz.allow");
        assert!(data_ref_of("/v1/data").unwrap().unwrap().is_root());
        let injected = data_ref_of("/v1/data/a%7Bx%20%3D%201%7D/b")
            .unwrap()
            .unwrap();
        assert_eq!(injected.as_rego(), "data[\"a{x = 1}\"].b");
        assert!(data_ref_of("/v1/database").is_none());
        assert!(data_ref_of("/v1/data/a%zz").unwrap().is_err());
        assert!(data_ref_of("/v1/data/a%0Ab").unwrap().is_err());
    }
}

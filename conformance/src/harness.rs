//! arbiter in-process, an echo upstream and a real Envoy, wired together on 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet};
use arbiter_ext_authz::decision_log::DecisionLogConfig;
use arbiter_ext_authz::{ListenAddr, RunningServer, ServeOptions, ServerConfig};

use crate::envoy::{Envoy, EnvoyOptions};

/// An authorizer for the policies under `dir`, deciding at `path`.
pub fn authorizer_for(dir: &Path, path: &str) -> Result<Authorizer, String> {
    let set = PolicySet::load(
        &[dir],
        &LoadOptions {
            eval_timeout: Some(Duration::from_millis(50)),
            ..LoadOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    let path = DataRef::parse(path).map_err(|e| e.to_string())?;
    Ok(Authorizer::new(
        Arc::new(set),
        path,
        InputOptions::default(),
    ))
}

/// A server configuration on ephemeral loopback ports.
pub fn loopback_config(decision_log: Option<DecisionLogConfig>) -> ServerConfig {
    ServerConfig {
        grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
        http: Some(ListenAddr::Tcp("127.0.0.1:0".into())),
        options: ServeOptions {
            dry_run: false,
            deadline: Duration::from_millis(100),
            labels: InstanceLabels {
                id: "test".into(),
                version: "test".into(),
                extra: Default::default(),
            },
            api: Default::default(),
            grpc_duration_buckets: Vec::new(),
            active_config: serde_json::Value::Null,
        },
        workers: 2,
        queue: 256,
        decision_log,
        tls: None,
        limits: Default::default(),
        ui: None,
        diagnostic: None,
        http_authz: None,
        otlp: None,
    }
}

/// Everything an end-to-end test talks to.
pub struct Harness {
    pub runtime: tokio::runtime::Runtime,
    pub arbiter: Option<RunningServer>,
    pub upstream: SocketAddr,
    pub envoy: Envoy,
}

impl std::fmt::Debug for Harness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("upstream", &self.upstream)
            .field("envoy", &self.envoy)
            .finish_non_exhaustive()
    }
}

/// An upstream that answers every request with what it received, as JSON:
/// `{"method", "target", "headers": {name: [values]}, "body"}`.
async fn echo(
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::Json<serde_json::Value> {
    let mut h = serde_json::Map::new();
    for (k, v) in &headers {
        let entry = h
            .entry(k.as_str().to_string())
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
        if let serde_json::Value::Array(a) = entry {
            a.push(serde_json::Value::String(
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    axum::Json(serde_json::json!({
        "method": method.as_str(),
        "target": uri.to_string(),
        "headers": h,
        "body": String::from_utf8_lossy(&body),
    }))
}

impl Harness {
    /// Start arbiter with `authorizer` and `config`, the echo upstream, and Envoy with
    /// `customize` applied to its options.
    pub fn start(
        authorizer: Authorizer,
        config: ServerConfig,
        customize: impl FnOnce(&mut EnvoyOptions),
    ) -> Result<Harness, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let arbiter = runtime
            .block_on(arbiter_ext_authz::start(config, authorizer))
            .map_err(|e| format!("{e:#}"))?;
        let grpc = arbiter
            .grpc_addr
            .ok_or("the harness needs a TCP gRPC listener")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .map_err(|e| e.to_string())?;
        let upstream = listener.local_addr().map_err(|e| e.to_string())?;
        let app = axum::Router::new().fallback(echo);
        runtime.spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let mut options = EnvoyOptions::new(grpc, upstream);
        customize(&mut options);
        let envoy = Envoy::start(&options)?;
        Ok(Harness {
            runtime,
            arbiter: Some(arbiter),
            upstream,
            envoy,
        })
    }

    /// Stop arbiter (gracefully), leaving Envoy and the upstream running.
    pub fn stop_arbiter(&mut self) -> Result<(), String> {
        if let Some(a) = self.arbiter.take() {
            self.runtime
                .block_on(a.shutdown())
                .map_err(|e| format!("{e:#}"))?;
        }
        Ok(())
    }
}

/// The decision events of a log file, each line parsed (a line that is not JSON is an error
/// naming it).
pub fn read_events(path: &Path) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{e}: {l}")))
        .collect()
}

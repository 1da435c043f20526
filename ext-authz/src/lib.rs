//! # arbiter-ext-authz
//!
//! arbiter's servers on top of `arbiter-engine`:
//! - gRPC: `envoy.service.auth.v3.Authorization/Check` (Envoy's ext_authz) and the gRPC health
//!   service;
//! - HTTP: `GET /health`, `GET /metrics` (Prometheus) and OPA's Data API;
//! - Envoy's HTTP ext_authz protocol ([`http_authz`]), when configured.
//!
//! This crate owns transport only: it converts Envoy's `CheckRequest` into the engine's request
//! model ([`convert`]), runs the decision on a bounded evaluation pool with a deadline
//! ([`pool`], [`state`]) and converts the engine's `Decision` back into a `CheckResponse`.
//! Every request it can decode gets a `CheckResponse`; errors, timeouts and overload are
//! denials with a reason, never gRPC errors, so the outcome never depends on Envoy's
//! `failure_mode_allow`.

pub mod api_auth;
pub mod convert;
pub mod dashboard;
pub mod decision_log;
pub mod fetch;
pub mod fleet;
pub mod grpc;
pub mod http;
pub mod http_authz;
pub mod listener;
pub mod metrics;
pub mod opa_metrics;
pub mod otel;
pub mod pool;
pub mod protojson;
pub mod reload;
pub mod response;
pub mod server;
pub mod service;
pub mod shadow;
pub mod state;
pub mod tls;
pub mod wire;

pub use server::{ListenAddr, RunningServer, ServerConfig, start, start_with};
pub use state::ServeOptions;

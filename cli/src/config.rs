//! `arbiter serve --config FILE`: the file read once, into one typed structure.
//!
//! Keys are arbiter's (written with dashes, as the flags; the underscore spelling is accepted
//! as an alias) and the parts of OPA's configuration an Envoy deployment uses (`plugins`,
//! `services`, `bundles`, `keys`, `decision_logs`, `distributed_tracing`), with OPA's
//! spellings. A key the structure does not know is an error naming the key, the file, its line
//! and column: a typo in a security configuration must not be silently ignored.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::Value as Json;

use arbiter_ext_authz::service::{Bearer, BearerToken, ServiceAuth};

/// A path, or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A value written as text or as a number (`workers: 4`, `eval-timeout: 50ms`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(serde_json::Number),
}

impl std::fmt::Display for Scalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scalar::Text(s) => f.write_str(s),
            Scalar::Number(n) => write!(f, "{n}"),
        }
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    // ---- arbiter's keys: the flags of `arbiter serve` ----
    pub policies: Option<OneOrMany>,
    /// `--shadow`.
    pub shadow: Option<OneOrMany>,
    #[serde(rename = "grpc-addr", alias = "grpc_addr")]
    pub grpc_addr: Option<String>,
    #[serde(rename = "http-addr", alias = "http_addr")]
    pub http_addr: Option<String>,
    #[serde(rename = "http-authz-addr", alias = "http_authz_addr")]
    pub http_authz_addr: Option<String>,
    #[serde(rename = "http-authz-path-prefix", alias = "http_authz_path_prefix")]
    pub http_authz_path_prefix: Option<String>,
    pub path: Option<String>,
    #[serde(rename = "eval-timeout", alias = "eval_timeout")]
    pub eval_timeout: Option<Scalar>,
    #[serde(rename = "cel-cost-limit", alias = "cel_cost_limit")]
    pub cel_cost_limit: Option<Scalar>,
    pub workers: Option<Scalar>,
    #[serde(rename = "io-threads", alias = "io_threads")]
    pub io_threads: Option<Scalar>,
    pub queue: Option<Scalar>,
    #[serde(rename = "path-normalization", alias = "path_normalization")]
    pub path_normalization: Option<String>,
    #[serde(rename = "dry-run", alias = "dry_run")]
    pub dry_run: Option<bool>,
    #[serde(rename = "skip-request-body-parse", alias = "skip_request_body_parse")]
    pub skip_request_body_parse: Option<bool>,
    /// `--proto-descriptor` (relative to the file).
    #[serde(rename = "proto-descriptor", alias = "proto_descriptor")]
    pub proto_descriptor: Option<String>,
    #[serde(rename = "v0-compatible", alias = "v0_compatible")]
    pub v0_compatible: Option<bool>,
    pub limits: Option<arbiter_engine::limits::Limits>,
    #[serde(rename = "trust-bundles", alias = "trust_bundles")]
    pub trust_bundles: Option<BTreeMap<String, String>>,
    #[serde(rename = "trust-xfcc-by", alias = "trust_xfcc_by")]
    pub trust_xfcc_by: Option<String>,
    /// `--jwt-bundle` per trust domain (files relative to the file).
    #[serde(rename = "jwt-bundles", alias = "jwt_bundles")]
    pub jwt_bundles: Option<BTreeMap<String, String>>,
    #[serde(rename = "jwt-audiences", alias = "jwt_audiences")]
    pub jwt_audiences: Option<Vec<String>>,
    #[serde(rename = "jwt-svid-header", alias = "jwt_svid_header")]
    pub jwt_svid_header: Option<String>,
    #[serde(rename = "tls-cert", alias = "tls_cert")]
    pub tls_cert: Option<String>,
    #[serde(rename = "tls-key", alias = "tls_key")]
    pub tls_key: Option<String>,
    #[serde(rename = "tls-client-ca", alias = "tls_client_ca")]
    pub tls_client_ca: Option<String>,
    #[serde(rename = "allowed-callers", alias = "allowed_callers")]
    pub allowed_callers: Option<OneOrMany>,
    pub watch: Option<bool>,
    /// `--otlp-endpoint` and its companions.
    #[serde(rename = "otlp-endpoint", alias = "otlp_endpoint")]
    pub otlp_endpoint: Option<String>,
    #[serde(rename = "otlp-protocol", alias = "otlp_protocol")]
    pub otlp_protocol: Option<String>,
    #[serde(rename = "otlp-headers", alias = "otlp_headers")]
    pub otlp_headers: Option<BTreeMap<String, String>>,
    #[serde(rename = "otlp-service-name", alias = "otlp_service_name")]
    pub otlp_service_name: Option<String>,
    #[serde(rename = "trace-sample-percentage", alias = "trace_sample_percentage")]
    pub trace_sample_percentage: Option<f64>,
    #[serde(rename = "watch-interval", alias = "watch_interval")]
    pub watch_interval: Option<Scalar>,
    #[serde(rename = "reload-require-tests", alias = "reload_require_tests")]
    pub reload_require_tests: Option<bool>,
    pub ui: Option<bool>,
    #[serde(rename = "ui-token-file", alias = "ui_token_file")]
    pub ui_token_file: Option<String>,
    #[serde(rename = "istio-root-namespace", alias = "istio_root_namespace")]
    pub istio_root_namespace: Option<String>,
    #[serde(
        rename = "istio-allow-without-allow-policies",
        alias = "istio_allow_without_allow_policies"
    )]
    pub istio_allow_without_allow_policies: Option<bool>,
    #[serde(rename = "decision-log", alias = "decision_log")]
    pub decision_log: Option<String>,
    #[serde(rename = "decision-log-url", alias = "decision_log_url")]
    pub decision_log_url: Option<String>,
    /// `--decision-log-nats` and its companions (files relative to this file).
    #[serde(rename = "decision-log-nats", alias = "decision_log_nats")]
    pub decision_log_nats: Option<String>,
    #[serde(
        rename = "decision-log-nats-subject",
        alias = "decision_log_nats_subject"
    )]
    pub decision_log_nats_subject: Option<String>,
    #[serde(
        rename = "decision-log-nats-stream",
        alias = "decision_log_nats_stream"
    )]
    pub decision_log_nats_stream: Option<String>,
    #[serde(
        rename = "decision-log-nats-replicas",
        alias = "decision_log_nats_replicas"
    )]
    pub decision_log_nats_replicas: Option<usize>,
    #[serde(rename = "decision-log-nats-creds", alias = "decision_log_nats_creds")]
    pub decision_log_nats_creds: Option<String>,
    #[serde(rename = "decision-log-nats-ca", alias = "decision_log_nats_ca")]
    pub decision_log_nats_ca: Option<String>,
    #[serde(
        rename = "decision-log-upload-interval",
        alias = "decision_log_upload_interval"
    )]
    pub decision_log_upload_interval: Option<Scalar>,
    #[serde(rename = "decision-log-max-size", alias = "decision_log_max_size")]
    pub decision_log_max_size: Option<Scalar>,
    #[serde(rename = "decision-log-max-files", alias = "decision_log_max_files")]
    pub decision_log_max_files: Option<u64>,
    #[serde(rename = "decision-log-fsync", alias = "decision_log_fsync")]
    pub decision_log_fsync: Option<String>,
    #[serde(
        rename = "decision-log-mask-headers",
        alias = "decision_log_mask_headers"
    )]
    pub decision_log_mask_headers: Option<String>,
    #[serde(rename = "decision-log-queue", alias = "decision_log_queue")]
    pub decision_log_queue: Option<u64>,
    pub audit: Option<String>,
    pub authentication: Option<String>,
    pub authorization: Option<String>,

    // ---- OPA's configuration ----
    pub plugins: Option<Plugins>,
    /// A map of name → service, or a list of services with `name` (both are OPA's); read
    /// with [`ConfigFile::services`].
    pub services: Option<Json>,
    pub bundles: Option<BTreeMap<String, BundleConfig>>,
    pub keys: Option<BTreeMap<String, KeyConfig>>,
    pub decision_logs: Option<DecisionLogs>,
    /// OPA's `labels`: added to every decision event's `labels` (beside `id` and `version`).
    pub labels: Option<BTreeMap<String, String>>,
    pub status: Option<Status>,
    /// OPA's `distributed_tracing`.
    pub distributed_tracing: Option<DistributedTracing>,
    /// The document as read (after `${VAR}` and `--set`), for [`ConfigFile::active`].
    #[serde(skip)]
    pub raw: Json,
}

/// OPA's `plugins`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plugins {
    pub envoy_ext_authz_grpc: Option<EnvoyPlugin>,
}

/// `plugins.envoy_ext_authz_grpc`, as OPA-Envoy spells it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvoyPlugin {
    pub addr: Option<String>,
    pub path: Option<String>,
    pub query: Option<String>,
    #[serde(rename = "dry-run")]
    pub dry_run: Option<bool>,
    #[serde(rename = "skip-request-body-parse")]
    pub skip_request_body_parse: Option<bool>,
    /// gRPC reflection: refused when `true` (arbiter does not serve it).
    #[serde(rename = "enable-reflection")]
    pub enable_reflection: Option<bool>,
    /// The largest `CheckRequest` accepted: `limits.max_request_bytes`.
    #[serde(rename = "grpc-max-recv-msg-size")]
    pub grpc_max_recv_msg_size: Option<u64>,
    /// The largest `CheckResponse` sent.
    #[serde(rename = "grpc-max-send-msg-size")]
    pub grpc_max_send_msg_size: Option<u64>,
    /// Accepted: arbiter's latency histograms are always on (and OPA's
    /// `grpc_request_duration_seconds` is served beside them).
    #[serde(rename = "enable-performance-metrics")]
    pub enable_performance_metrics: Option<bool>,
    /// Buckets of `grpc_request_duration_seconds`.
    #[serde(rename = "grpc-request-duration-seconds-buckets")]
    pub grpc_request_duration_seconds_buckets: Option<Vec<f64>>,
    /// Protobuf descriptors for `parsed_body` of gRPC requests (`--proto-descriptor`).
    #[serde(rename = "proto-descriptor")]
    pub proto_descriptor: Option<String>,
}

/// OPA's `distributed_tracing`: OTLP span export, as OPA configures it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedTracing {
    /// `grpc` or `http`; absent: no tracing (as OPA).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// `host:port` [default: localhost:4317].
    pub address: Option<String>,
    /// [default: arbiter; OPA's is `opa`].
    pub service_name: Option<String>,
    pub sample_percentage: Option<f64>,
    /// Only `off`: TLS to the collector is not supported.
    pub encryption: Option<String>,
    pub allow_insecure_tls: Option<bool>,
    pub tls_cert_file: Option<String>,
    pub tls_private_key_file: Option<String>,
    pub tls_ca_cert_file: Option<String>,
    pub resource: Option<TracingResource>,
    pub batch_span_processor_options: Option<BatchSpanProcessor>,
    /// OPA's OTLP metrics: refused when `true` (arbiter's metrics are on `/metrics`).
    pub metrics: Option<bool>,
    pub metrics_export_interval_ms: Option<u64>,
}

/// `distributed_tracing.resource`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingResource {
    pub service_version: Option<String>,
    pub service_instance_id: Option<String>,
    pub service_namespace: Option<String>,
    pub deployment_environment: Option<String>,
}

/// `distributed_tracing.batch_span_processor_options`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSpanProcessor {
    /// Refused when `true`: a decision never waits for the span queue.
    pub blocking: Option<bool>,
    pub batch_timeout_ms: Option<u64>,
    pub export_timeout_ms: Option<u64>,
    pub max_export_batch_size: Option<usize>,
    pub max_queue_size: Option<usize>,
}

impl DistributedTracing {
    /// The export it describes (`None` without a `type`, as OPA); what arbiter does not do is
    /// an error naming the key.
    pub fn config(&self) -> Result<Option<arbiter_ext_authz::otel::OtlpConfig>, String> {
        use arbiter_ext_authz::otel::{OtlpConfig, Protocol};
        let Some(kind) = self.kind.as_deref().filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        let protocol = match kind.to_ascii_lowercase().as_str() {
            "grpc" => Protocol::Grpc,
            "http" => Protocol::HttpProtobuf,
            _ => {
                return Err(format!(
                    "distributed_tracing.type: `{kind}` (give `grpc` or `http`)"
                ));
            }
        };
        if self.encryption.as_deref().is_some_and(|e| e != "off")
            || self.tls_cert_file.is_some()
            || self.tls_private_key_file.is_some()
            || self.tls_ca_cert_file.is_some()
            || self.allow_insecure_tls == Some(true)
        {
            return Err("distributed_tracing.encryption: only `off` is supported (export to a local collector)".into());
        }
        if self.metrics == Some(true) {
            return Err(
                "distributed_tracing.metrics: OTLP metrics are not supported (scrape /metrics)"
                    .into(),
            );
        }
        let address = self.address.as_deref().unwrap_or("localhost:4317");
        let endpoint = if address.contains("://") {
            address.to_string()
        } else {
            format!("http://{address}")
        };
        let mut c = OtlpConfig::new(endpoint, protocol);
        if let Some(n) = &self.service_name {
            c.service_name = n.clone();
        }
        if let Some(p) = self.sample_percentage {
            c.sample_ratio = p / 100.0;
        }
        if let Some(r) = &self.resource {
            for (key, value) in [
                ("service.version", &r.service_version),
                ("service.instance.id", &r.service_instance_id),
                ("service.namespace", &r.service_namespace),
                ("deployment.environment.name", &r.deployment_environment),
            ] {
                if let Some(v) = value {
                    c.resource.push((key.to_string(), v.clone()));
                }
            }
        }
        if let Some(b) = &self.batch_span_processor_options {
            if b.blocking == Some(true) {
                return Err("distributed_tracing.batch_span_processor_options.blocking: not supported (a decision never waits for tracing)".into());
            }
            let ms = std::time::Duration::from_millis;
            if let Some(n) = b.batch_timeout_ms {
                c.delay = ms(n);
            }
            if let Some(n) = b.export_timeout_ms {
                c.timeout = ms(n);
            }
            if let Some(n) = b.max_export_batch_size {
                c.max_batch = n;
            }
            if let Some(n) = b.max_queue_size {
                c.max_queue = n;
            }
        }
        c.validate()
            .map_err(|e| format!("distributed_tracing: {e}"))?;
        Ok(Some(c))
    }
}

/// OPA's `status`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Status {
    /// Status lines on the console: arbiter's load and reload messages (stderr).
    pub console: Option<bool>,
    /// OPA's bundle metrics (`bundle_loaded_counter`, `last_success_bundle_activation`, …) on
    /// `/metrics`: arbiter serves them always.
    pub prometheus: Option<bool>,
    /// Status reports to a service: refused when set.
    pub service: Option<String>,
    pub partition_name: Option<String>,
    pub trigger: Option<String>,
}

/// One of OPA's `services` (`v1/plugins/rest`): where it is, and what each request carries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// The name, in the list form of `services`.
    pub name: Option<String>,
    pub url: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub credentials: Option<Credentials>,
    pub response_header_timeout_seconds: Option<u64>,
    /// Refused when `true` (see [`Service::auth`]).
    pub allow_insecure_tls: Option<bool>,
    pub tls: Option<ServerTls>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// `services.*.tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    pub ca_cert: Option<String>,
    pub system_ca_required: Option<bool>,
}

/// `credentials.client_tls`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientTls {
    pub cert: Option<String>,
    pub private_key: Option<String>,
    /// Refused when set: give an unencrypted key.
    pub private_key_passphrase: Option<String>,
    /// OPA's deprecated place for `tls.ca_cert`.
    pub ca_cert: Option<String>,
    pub system_ca_required: Option<bool>,
}

/// `credentials.oauth2`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// `client_credentials` (the default); `jwt_bearer` is refused.
    pub grant_type: Option<String>,
    pub signing_key: Option<String>,
    pub additional_headers: Option<Json>,
    pub additional_parameters: Option<Json>,
}

/// `services.*.credentials`: OPA's methods, by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub bearer: Option<BearerConfig>,
    pub oauth2: Option<OAuth2Config>,
    pub client_tls: Option<ClientTls>,
    pub s3_signing: Option<Json>,
    pub gcp_metadata: Option<Json>,
    pub azure_managed_identity: Option<Json>,
    pub plugin: Option<String>,
}

/// `credentials.bearer`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BearerConfig {
    pub token: Option<String>,
    pub token_path: Option<String>,
    pub scheme: Option<String>,
}

impl Service {
    /// The headers and credentials every request to this service carries. What arbiter does
    /// not implement is an error naming it: a download sent without the credentials the
    /// operator configured would fail later and less clearly.
    pub fn auth(&self, name: &str, base: &Path) -> Result<ServiceAuth, String> {
        let at = |what: &str| format!("services.{name}.{what}");
        if self.allow_insecure_tls == Some(true) {
            return Err(format!(
                "{}: not supported (give the server's CA as tls.ca_cert)",
                at("allow_insecure_tls")
            ));
        }
        if let Some(kind) = self.kind.as_deref().filter(|k| !k.is_empty()) {
            return Err(format!(
                "{}: `{kind}` services are not supported (bundles come over HTTP(S))",
                at("type")
            ));
        }
        let mut auth = ServiceAuth {
            headers: self
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            ..ServiceAuth::default()
        };
        if let Some(t) = &self.tls {
            auth.tls.ca_cert = t.ca_cert.as_ref().map(|p| base.join(p));
            auth.tls.system_ca_required = t.system_ca_required.unwrap_or(false);
        }
        if let Some(c) = &self.credentials {
            let methods = [
                c.bearer.is_some(),
                c.oauth2.is_some(),
                c.client_tls.is_some(),
            ];
            if methods.iter().filter(|m| **m).count() > 1 {
                return Err(format!(
                    "{}: a maximum of one auth method can be configured",
                    at("credentials")
                ));
            }
            if let Some(t) = &c.client_tls {
                if t.private_key_passphrase.is_some() {
                    return Err(format!(
                        "{}: not supported (give an unencrypted key)",
                        at("credentials.client_tls.private_key_passphrase")
                    ));
                }
                let (Some(cert), Some(key)) = (&t.cert, &t.private_key) else {
                    return Err(format!(
                        "{}: needs `cert` and `private_key`",
                        at("credentials.client_tls")
                    ));
                };
                auth.tls.client_cert = Some((base.join(cert), base.join(key)));
                if auth.tls.ca_cert.is_none() {
                    auth.tls.ca_cert = t.ca_cert.as_ref().map(|p| base.join(p));
                }
                auth.tls.system_ca_required |= t.system_ca_required.unwrap_or(false);
            }
            if let Some(o) = &c.oauth2 {
                let at = |what: &str| at(&format!("credentials.oauth2.{what}"));
                match o.grant_type.as_deref() {
                    None | Some("client_credentials") => {}
                    Some(g) => {
                        return Err(format!(
                            "{}: `{g}` is not supported (only client_credentials)",
                            at("grant_type")
                        ));
                    }
                }
                for (key, set) in [
                    ("signing_key", o.signing_key.is_some()),
                    ("additional_headers", o.additional_headers.is_some()),
                    ("additional_parameters", o.additional_parameters.is_some()),
                ] {
                    if set {
                        return Err(format!("{}: not supported", at(key)));
                    }
                }
                let need = |v: &Option<String>, key: &str| {
                    v.clone()
                        .filter(|s| !s.is_empty())
                        .ok_or_else(|| format!("{}: missing", at(key)))
                };
                auth.oauth2 = Some(arbiter_ext_authz::service::OAuth2::new(
                    need(&o.token_url, "token_url")?,
                    need(&o.client_id, "client_id")?,
                    need(&o.client_secret, "client_secret")?,
                    o.scopes.clone(),
                ));
            }
            for (method, set) in [
                ("s3_signing", c.s3_signing.is_some()),
                ("gcp_metadata", c.gcp_metadata.is_some()),
                ("azure_managed_identity", c.azure_managed_identity.is_some()),
                ("plugin", c.plugin.is_some()),
            ] {
                if set {
                    return Err(format!(
                        "{}: not supported (arbiter sends `headers`, `bearer`, `oauth2` client credentials and `client_tls`)",
                        at(&format!("credentials.{method}"))
                    ));
                }
            }
            if let Some(b) = &c.bearer {
                let token = match (&b.token, &b.token_path) {
                    (Some(_), Some(_)) => {
                        return Err(format!(
                            "{}: specify a value for either the \"token\" or \"token_path\" field",
                            at("credentials.bearer")
                        ));
                    }
                    (Some(t), None) => BearerToken::Literal(t.clone()),
                    (None, Some(p)) => BearerToken::File(base.join(p)),
                    (None, None) => BearerToken::Literal(String::new()),
                };
                auth.bearer = Some(Bearer {
                    scheme: b
                        .scheme
                        .clone()
                        .filter(|s| !s.is_empty())
                        .unwrap_or_else(|| "Bearer".into()),
                    token,
                });
            }
        }
        auth.validate()
            .map_err(|e| format!("services.{name}: {e}"))?;
        Ok(auth)
    }

    /// How long a request to this service may take (OPA's `response_header_timeout_seconds`,
    /// 10 s by default).
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.response_header_timeout_seconds.unwrap_or(10).max(1))
    }
}

/// One of OPA's `bundles`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleConfig {
    pub service: Option<String>,
    /// Defaults to `bundles/<name>`, as OPA's.
    pub resource: Option<String>,
    pub signing: Option<Signing>,
    pub polling: Option<Polling>,
    /// OPA's persistence of downloaded bundles; refused when `true`.
    pub persist: Option<bool>,
    /// `periodic` (OPA's default); `manual` is refused.
    pub trigger: Option<String>,
    pub size_limit_bytes: Option<u64>,
}

/// `bundles.*.polling`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Polling {
    pub min_delay_seconds: Option<u64>,
    pub max_delay_seconds: Option<u64>,
    /// Long polling is refused when set: the server would hold requests arbiter does not
    /// wait for.
    pub long_polling_timeout_seconds: Option<u64>,
}

/// `bundles.*.signing`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    pub keyid: Option<String>,
    pub scope: Option<String>,
    #[serde(default)]
    pub exclude_files: Vec<String>,
}

/// One of OPA's `keys`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub key: Option<String>,
    pub algorithm: Option<String>,
    pub scope: Option<String>,
}

/// OPA's `decision_logs`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionLogs {
    pub console: Option<bool>,
    pub service: Option<String>,
    pub resource: Option<String>,
    pub reporting: Option<Reporting>,
    pub mask_decision: Option<String>,
    pub drop_decision: Option<String>,
}

/// `decision_logs.reporting`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reporting {
    pub buffer_size_limit_events: Option<u64>,
    pub max_delay_seconds: Option<u64>,
    pub min_delay_seconds: Option<u64>,
    pub upload_size_limit_bytes: Option<u64>,
}

impl ConfigFile {
    /// OPA's `services`, typed, by name (a map keyed by name, or a list with `name`). A key
    /// OPA's services do not have is an error naming the service and the key.
    pub fn services(&self) -> Result<Vec<(String, Service)>, String> {
        let parse = |name: &str, v: &Json| -> Result<Service, String> {
            serde_json::from_value(v.clone()).map_err(|e| format!("services.{name}: {e}"))
        };
        match &self.services {
            None | Some(Json::Null) => Ok(Vec::new()),
            Some(Json::Object(m)) => m
                .iter()
                .map(|(name, v)| Ok((name.clone(), parse(name, v)?)))
                .collect(),
            Some(Json::Array(a)) => {
                a.iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let s = parse(&i.to_string(), v)?;
                        let name = s.name.clone().ok_or_else(|| {
                            format!("services[{i}]: a listed service needs a `name`")
                        })?;
                        Ok((name, s))
                    })
                    .collect()
            }
            Some(_) => Err("`services` must be a map of name to service, or a list".into()),
        }
    }

    /// The service called `name`; without a name, the only service there is (OPA's rule).
    pub fn service(&self, name: Option<&str>) -> Result<Option<(String, Service)>, String> {
        let all = self.services()?;
        Ok(match name {
            Some(n) => all.into_iter().find(|(k, _)| k == n),
            None if all.len() == 1 => all.into_iter().next(),
            None => None,
        })
    }

    /// Read and check `path` (YAML, or JSON, which is YAML too). Errors name the file, the line
    /// and column, and the key or value that is wrong.
    pub fn read(path: &Path) -> Result<ConfigFile, String> {
        Self::load(Some(path), &[], &[])
    }

    /// OPA's configuration loading (`internal/config.Load`): the file with `${VAR}` replaced by
    /// the environment variable (kept as written when unset or empty), then `--set k=v` and
    /// `--set-file k=path` overrides merged over it, then checked as [`ConfigFile::parse`].
    pub fn load(
        path: Option<&Path>,
        sets: &[String],
        set_files: &[String],
    ) -> Result<ConfigFile, String> {
        let (name, text) = match path {
            Some(p) => (
                p.display().to_string(),
                std::fs::read_to_string(p)
                    .map_err(|e| format!("{}: cannot read the configuration: {e}", p.display()))?,
            ),
            None => ("the configuration".to_string(), String::new()),
        };
        let text = substitute_env(&text, |k| std::env::var(k).ok());
        if sets.is_empty() && set_files.is_empty() {
            let mut c = Self::parse(&name, &text)?;
            c.raw = yaml_serde::from_str::<Json>(&text).unwrap_or(Json::Null);
            return Ok(c);
        }
        // Parse once for the file's own errors with their lines, then merge the overrides.
        Self::parse(&name, &text)?;
        let mut base: Json = if text.trim().is_empty() {
            Json::Object(Default::default())
        } else {
            yaml_serde::from_str(&text).map_err(|e| format!("{name}: {e}"))?
        };
        if base.is_null() {
            base = Json::Object(Default::default());
        }
        let mut overrides = Json::Object(Default::default());
        for s in sets {
            let s = substitute_env(s, |k| std::env::var(k).ok());
            crate::strvals::parse_into(&s, &mut overrides, None)
                .map_err(|e| format!("failed parsing --set data: {e}"))?;
        }
        for s in set_files {
            let read = |path: &str| {
                std::fs::read_to_string(path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| format!("{path}: {e}"))
            };
            crate::strvals::parse_into(s, &mut overrides, Some(&read))
                .map_err(|e| format!("failed parsing --set-file data: {e}"))?;
        }
        merge(&mut base, overrides);
        let merged = serde_json::to_string_pretty(&base).map_err(|e| e.to_string())?;
        let mut c = Self::parse(&format!("{name} with --set"), &merged)?;
        c.raw = base;
        Ok(c)
    }

    /// OPA's active configuration (`ActiveConfig`): the document with every service's
    /// `credentials` and every key's `key` and `private_key` removed.
    pub fn active(&self) -> Json {
        let mut v = match &self.raw {
            Json::Object(_) => self.raw.clone(),
            _ => Json::Object(Default::default()),
        };
        let strip = |x: &mut Json, fields: &[&str]| {
            if let Json::Object(m) = x {
                for f in fields {
                    m.remove(*f);
                }
            }
        };
        match v.get_mut("services") {
            Some(Json::Object(m)) => m.values_mut().for_each(|s| strip(s, &["credentials"])),
            Some(Json::Array(a)) => a.iter_mut().for_each(|s| strip(s, &["credentials"])),
            _ => {}
        }
        if let Some(Json::Object(m)) = v.get_mut("keys") {
            m.values_mut()
                .for_each(|k| strip(k, &["key", "private_key"]));
        }
        v
    }

    pub fn parse(name: &str, text: &str) -> Result<ConfigFile, String> {
        if text.trim().is_empty() {
            return Ok(ConfigFile::default());
        }
        yaml_serde::from_str::<Option<ConfigFile>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                let msg = e.to_string();
                // The message without yaml's own position, which is given in front.
                let msg = msg.split(" at line ").next().unwrap_or(&msg).to_string();
                match e.location() {
                    Some(l) => format!("{name}:{}:{}: {msg}", l.line(), l.column()),
                    None => format!("{name}: {msg}"),
                }
            })
    }
}

/// OPA's `${VAR}` substitution: the shortest `${...}`, replaced by the variable when it is set
/// and not empty; otherwise kept as written.
pub fn substitute_env(text: &str, var: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find('}') {
            Some(j) => {
                let name = &after[..j];
                match var(name).filter(|v| !v.is_empty()) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&rest[i..i + 2 + j + 1]),
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// OPA's `mergeValues`: objects merge key by key, anything else in `src` replaces.
fn merge(dest: &mut Json, src: Json) {
    match (dest, src) {
        (Json::Object(d), Json::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(&k) {
                    Some(slot) if slot.is_object() && v.is_object() => merge(slot, v),
                    _ => {
                        d.insert(k, v);
                    }
                }
            }
        }
        (d, s) => *d = s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_misspelled_key_names_the_key_file_line_and_column() {
        let e = ConfigFile::parse(
            "arbiter.yaml",
            "grpc-addr: 127.0.0.1:9191\neval-timeout: 20ms\ngrpc_adr: :9292\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with("arbiter.yaml:3:1: unknown field `grpc_adr`, expected one of"),
            "{e}"
        );
        // Nested sections too, with OPA's spellings.
        let e = ConfigFile::parse(
            "opa.yaml",
            "plugins:\n  envoy_ext_authz_grpc:\n    addr: :9191\n    dryrun: true\n",
        )
        .unwrap_err();
        assert!(
            e.starts_with(
                "opa.yaml:4:5: plugins.envoy_ext_authz_grpc: unknown field `dryrun`, expected one of"
            ),
            "{e}"
        );
    }

    #[test]
    fn env_substitution_and_set_overrides_as_opa() {
        let env = |k: &str| match k {
            "TOKEN" => Some("t0k".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            substitute_env("a: ${TOKEN} b: ${EMPTY} c: ${NOPE} d: ${", env),
            "a: t0k b: ${EMPTY} c: ${NOPE} d: ${"
        );
        let dir = arbiter_engine::scratch::ScratchDir::new(&format!(
            "arbiter-config-set-{}",
            std::process::id()
        ));
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "plugins:\n  envoy_ext_authz_grpc:\n    addr: :9191\n    path: envoy/authz/allow\ndecision_logs:\n  console: false\n",
        )
        .unwrap();
        let secret = dir.join("token");
        std::fs::write(&secret, "from-file\n").unwrap();
        let c = ConfigFile::load(
            Some(&file),
            &[
                "plugins.envoy_ext_authz_grpc.addr=127.0.0.1:9292".into(),
                "decision_logs.console=true,services.s.url=http://127.0.0.1:1".into(),
            ],
            &[format!(
                "services.s.credentials.bearer.token={}",
                secret.display()
            )],
        )
        .unwrap();
        let plugin = c
            .plugins
            .clone()
            .and_then(|p| p.envoy_ext_authz_grpc)
            .unwrap();
        // Merged: the override replaced addr, path stayed.
        assert_eq!(plugin.addr.as_deref(), Some("127.0.0.1:9292"));
        assert_eq!(plugin.path.as_deref(), Some("envoy/authz/allow"));
        assert_eq!(c.decision_logs.as_ref().and_then(|d| d.console), Some(true));
        let (_, svc) = c.service(Some("s")).unwrap().unwrap();
        assert_eq!(
            svc.credentials
                .and_then(|c| c.bearer)
                .and_then(|b| b.token)
                .as_deref(),
            Some("from-file")
        );
        // A misspelled key through --set is named too.
        let e = ConfigFile::load(None, &["plugins.envoy_ext_authz_grpc.adr=:1".into()], &[])
            .unwrap_err();
        assert!(e.contains("unknown field `adr`"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn both_spellings_and_opa_sections_are_read() {
        let c = ConfigFile::parse(
            "c.yaml",
            "grpc_addr: :1\nhttp-addr: :2\nworkers: 4\nlimits: {max_headers: 10}\nplugins: {envoy_ext_authz_grpc: {path: a/b, dry-run: true}}\ndecision_logs: {console: true}\n",
        )
        .unwrap();
        assert_eq!(c.grpc_addr.as_deref(), Some(":1"));
        assert_eq!(c.http_addr.as_deref(), Some(":2"));
        assert_eq!(c.workers.map(|w| w.to_string()).as_deref(), Some("4"));
        assert_eq!(c.limits.map(|l| l.max_headers), Some(10));
        let plugin = c.plugins.and_then(|p| p.envoy_ext_authz_grpc).unwrap();
        assert_eq!(plugin.path.as_deref(), Some("a/b"));
        assert_eq!(plugin.dry_run, Some(true));
        assert_eq!(c.decision_logs.and_then(|d| d.console), Some(true));
        // A wrong type is an error with its place too.
        let e = ConfigFile::parse("c.yaml", "watch: sometimes\n").unwrap_err();
        assert!(e.starts_with("c.yaml:1:8: "), "{e}");
        assert!(ConfigFile::parse("c.yaml", "").is_ok());
    }
}

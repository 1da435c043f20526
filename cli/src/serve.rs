//! `arbiter serve`: the Envoy ext_authz server.
//!
//! Settings come from flags, then from the YAML file given with `--config`, then from defaults.
//! The file takes the flags' names as keys (`grpc-addr: 127.0.0.1:9191`, `dry-run: true`, …);
//! an OPA configuration with `plugins.envoy_ext_authz_grpc` (`addr`, `path`, `dry-run`,
//! `skip-request-body-parse`) is read too, so an OPA-Envoy deployment's file works unchanged.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::body::GrpcBodies;
use arbiter_engine::identity::{IdentityOptions, SpiffeId};
use arbiter_engine::input::InputOptions;
use arbiter_engine::path::PathPolicy;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, RegoVersion};
use arbiter_ext_authz::decision_log::DecisionLogConfig;
use arbiter_ext_authz::fetch::Fetched;
use arbiter_ext_authz::service::ServiceAuth;
use arbiter_ext_authz::tls::TlsSettings;
use arbiter_ext_authz::{ListenAddr, ServeOptions, ServerConfig};

use crate::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PathNormalization {
    /// Deny ambiguous paths with 400 (the default).
    Strict,
    /// OPA-Envoy's parsing; nothing is rejected. For migration testing only.
    Lenient,
}

/// `--authentication`, as OPA's server has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthenticationArg {
    /// No identity.
    Off,
    /// The `Authorization: Bearer` token is `input.identity` for `system.authz`.
    Token,
}

/// `--authorization`, as OPA's server has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthorizationArg {
    /// Everyone may use the Data API and `/metrics` (without the flag, only loopback callers).
    Off,
    /// `data.system.authz.allow` decides every HTTP request.
    Basic,
}

#[derive(Debug, Default, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub limits: crate::load_limits::LoadLimitArgs,
    /// Policy files or folders (default: the bundled `policies/`).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Policy file or folder (repeatable; the same as a positional path).
    #[arg(long = "policies", value_name = "PATH")]
    pub policies: Vec<PathBuf>,
    /// YAML configuration file; flags override it. `${VAR}` is replaced by the environment
    /// variable, as OPA does.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a configuration value, OPA's `--set` (`plugins.envoy_ext_authz_grpc.addr=:9191`;
    /// comma-separated, repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Override a configuration value with a file's contents, OPA's `--set-file`.
    #[arg(long, value_name = "KEY=PATH")]
    pub set_file: Vec<String>,
    /// A plaintext listener with `/health` and `/metrics` only, open to every caller (OPA's
    /// `--diagnostic-addr`, for probes).
    #[arg(long, value_name = "ADDR")]
    pub diagnostic_addr: Option<String>,
    /// File and folder names to skip when loading policy folders (Go `filepath.Match` patterns
    /// on the base name, OPA's `--ignore`; names starting with `.` are always skipped).
    #[arg(long, value_name = "PATTERN")]
    pub ignore: Vec<String>,
    /// gRPC listener: `host:port` or `unix:///path` [default: 127.0.0.1:9191].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<String>,
    /// HTTP listener for health, metrics and the Data API [default: 127.0.0.1:8181].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Also serve Envoy's HTTP ext_authz protocol (`http_service`) on this address [default:
    /// off].
    #[arg(long, value_name = "ADDR")]
    pub http_authz_addr: Option<String>,
    /// The `path_prefix` of Envoy's `http_service`, removed from each path before deciding.
    #[arg(long, value_name = "PREFIX")]
    pub http_authz_path_prefix: Option<String>,
    /// Decision path, as OPA-Envoy's `path` [default: envoy/authz/allow].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    #[command(flatten)]
    pub log: crate::logconfig::LogArgs,
    /// The server's own log: events at this level and above [default: info].
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<crate::logging::LogLevel>,
    /// The server's own log: `text` (`arbiter: …` lines) or `json` (one object per line, with
    /// stable fields) [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<crate::logging::LogFormat>,
    /// Answer every check with OK but log the real decision.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not parse request bodies (no `parsed_body`/`truncated_body` in the input).
    #[arg(long)]
    pub skip_request_body_parse: bool,
    /// A protobuf descriptor set (`protoc --descriptor_set_out`): gRPC request bodies are
    /// decoded into `parsed_body` (OPA-Envoy's `proto-descriptor`).
    #[arg(long, value_name = "FILE")]
    pub proto_descriptor: Option<PathBuf>,
    /// Accept pre-1.0 Rego syntax.
    #[arg(long)]
    pub v0_compatible: bool,
    /// Deadline for one decision, e.g. `50ms` [default: 50ms].
    #[arg(long, value_name = "DURATION")]
    pub eval_timeout: Option<String>,
    /// Expression steps one evaluation of the CEL policies may take; past it the check is
    /// denied with `limit_exceeded:cel_cost`; 0 for no budget but the deadline
    /// [default: 1000000].
    #[arg(long, value_name = "N")]
    pub cel_cost_limit: Option<usize>,
    /// Evaluation threads; 0 evaluates on the server's own threads, saving two hand-offs per
    /// check (the engines' time limits still apply) [default: 0].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Threads that serve connections (and, with `--workers 0`, decide). 1 runs everything on
    /// one thread, where responses that are ready together leave in one write: the least CPU
    /// per check and a lower p99, at some throughput behind a busy proxy
    /// (`benches/RESULTS.md`). 0: one thread where the process has one CPU, else one per CPU
    /// [default: 0].
    #[arg(long, value_name = "N")]
    pub io_threads: Option<usize>,
    /// Checks that may wait for an evaluation thread before new ones are denied with
    /// `overload` [default: 1024].
    #[arg(long, value_name = "N")]
    pub queue: Option<usize>,
    /// How request paths are checked [default: strict].
    #[arg(long, value_enum, value_name = "MODE")]
    pub path_normalization: Option<PathNormalization>,
    /// Verify peer certificates against this trust domain's bundle: `TD=FILE` (PEM), repeatable.
    /// With any bundle, certificates of other trust domains are refused.
    #[arg(long, value_name = "TD=FILE")]
    pub trust_bundle: Vec<String>,
    /// Trust `x-forwarded-client-cert` elements appended by this hop (a SPIFFE ID).
    #[arg(long, value_name = "SPIFFE_ID")]
    pub trust_xfcc_by: Option<String>,
    /// Accept JWT-SVIDs signed with this trust domain's JWT bundle: `TD=FILE` (a SPIFFE bundle
    /// or a JWKS), repeatable; re-read when it changes. Needs `--jwt-audience`.
    #[arg(long, value_name = "TD=FILE")]
    pub jwt_bundle: Vec<String>,
    /// An audience a JWT-SVID must name in `aud` to be accepted, repeatable.
    #[arg(long, value_name = "AUDIENCE")]
    pub jwt_audience: Vec<String>,
    /// The header carrying JWT-SVIDs [default: authorization, as `Bearer <token>`].
    #[arg(long, value_name = "NAME")]
    pub jwt_svid_header: Option<String>,
    /// Serve TLS on both listeners with this certificate chain (PEM); reloaded when it changes.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of `--tls-cert` (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM).
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Only callers whose certificate's SPIFFE ID matches may connect (repeatable; `*` and `**`
    /// match path segments).
    #[arg(long, value_name = "PATTERN")]
    pub allowed_caller: Vec<String>,
    /// Export an OpenTelemetry span per check and per Data API query to this collector,
    /// `http://host:port` [default: off]. A check continues Envoy's trace (W3C `traceparent`).
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// How spans are exported: `grpc` (port 4317) or `http/protobuf` (port 4318) [default:
    /// grpc].
    #[arg(long, value_name = "PROTOCOL")]
    pub otlp_protocol: Option<String>,
    /// A header sent with every export, `NAME=VALUE` (a collector's credentials), repeatable.
    #[arg(long, value_name = "NAME=VALUE")]
    pub otlp_header: Vec<String>,
    /// The spans' `service.name` [default: arbiter].
    #[arg(long, value_name = "NAME")]
    pub otlp_service_name: Option<String>,
    /// Percentage of requests arriving without a trace context that start a trace; a request
    /// with one is traced when its caller sampled it [default: 100].
    #[arg(long, value_name = "PERCENT")]
    pub trace_sample_percentage: Option<f64>,
    /// Reload the policies when their files change (SIGHUP always reloads).
    #[arg(long)]
    pub watch: bool,
    /// How often `--watch` looks at the files [default: 1s].
    #[arg(long, value_name = "DURATION")]
    pub watch_interval: Option<String>,
    /// A reload must also pass the set's own tests (`*_test.rego`, `*_test.yaml`).
    #[arg(long)]
    pub reload_require_tests: bool,
    /// An OPA bundle to serve: a `.tar.gz` file, a folder in bundle layout, or an
    /// `http(s)://` URL polled with ETags (repeatable; bundles may not share roots).
    #[arg(long, value_name = "PATH_OR_URL")]
    pub bundle: Vec<String>,
    /// How often a bundle URL is polled [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub bundle_poll: Option<String>,
    /// Verify bundle signatures with this key: a PEM public key or certificate file, or an
    /// HMAC secret. A bundle without a valid signature is then refused.
    #[arg(long, value_name = "KEY")]
    pub verification_key: Option<String>,
    /// The id of `--verification-key` (OPA's flag) [default: default]. As in OPA, a
    /// configured id is used whatever `kid` the signature names.
    #[arg(long, value_name = "ID")]
    pub verification_key_id: Option<String>,
    /// The signature algorithm [default: RS256].
    #[arg(long, value_name = "ALG")]
    pub verification_alg: Option<String>,
    /// The scope signatures must carry.
    #[arg(long, value_name = "SCOPE")]
    pub verification_scope: Option<String>,
    /// Shadow policies: a second set (files or folders, repeatable) that decides every Envoy
    /// check beside the live one and is never enforced; disagreements are counted
    /// (`arbiter_shadow_disagreements_total`) and written into the decision event (`shadow`).
    /// Reloaded with the live set.
    #[arg(long, value_name = "PATH")]
    pub shadow: Vec<PathBuf>,
    /// Istio's root namespace: its AuthorizationPolicies apply to every workload
    /// [default: istio-system].
    #[arg(long, value_name = "NS")]
    pub istio_root_namespace: Option<String>,
    /// Allow a workload that no Istio ALLOW policy selects, as Istio does (arbiter denies it by
    /// default).
    #[arg(long)]
    pub istio_allow_without_allow_policies: bool,
    /// Mount the audit dashboard over the decision-log file at `/ui/` on the HTTP listener
    /// (needs --decision-log FILE).
    #[arg(long)]
    pub ui: bool,
    /// The bearer token the dashboard asks for (required when the HTTP listener is not on
    /// loopback, unless mTLS with allowed callers protects it).
    #[arg(long, value_name = "FILE")]
    pub ui_token_file: Option<PathBuf>,
    /// OPA's `--authentication`: `token` makes the bearer token `input.identity` for
    /// `system.authz` [default: off].
    #[arg(long, value_enum, value_name = "MODE")]
    pub authentication: Option<AuthenticationArg>,
    /// OPA's `--authorization`: `basic` asks `data.system.authz.allow` about every HTTP request;
    /// `off` serves the Data API and `/metrics` to everyone. Without it, they answer loopback
    /// callers only (or mTLS-allowed callers).
    #[arg(long, value_enum, value_name = "MODE")]
    pub authorization: Option<AuthorizationArg>,
}

/// A file per trust domain: the flag's `TD=FILE` values, else the configuration file's map
/// (its files relative to it).
fn per_trust_domain(
    flag: &str,
    specs: &[String],
    from_file: Option<&std::collections::BTreeMap<String, String>>,
    base: &Path,
) -> Result<Vec<(String, PathBuf)>, String> {
    if specs.is_empty() {
        return Ok(from_file
            .into_iter()
            .flatten()
            .map(|(td, f)| (td.clone(), base.join(f)))
            .collect());
    }
    specs
        .iter()
        .map(|spec| {
            spec.split_once('=')
                .map(|(td, f)| (td.to_string(), PathBuf::from(f)))
                .ok_or_else(|| format!("{flag} `{spec}` is not TD=FILE"))
        })
        .collect()
}

/// How often JWT bundle files are checked for a change when `--watch` is off (a kernel
/// notification usually comes first).
const JWT_BUNDLE_POLL: Duration = Duration::from_secs(2);

/// The settings after flags, file and defaults are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub policies: Vec<PathBuf>,
    /// `--shadow`: the shadow set's files and folders (none: no shadow).
    pub shadow: Vec<PathBuf>,
    pub grpc_addr: String,
    pub http_addr: String,
    /// `--http-authz-addr`: Envoy's HTTP ext_authz protocol (none: not served).
    pub http_authz_addr: Option<String>,
    pub http_authz_path_prefix: String,
    pub path: String,
    pub decision_log: Option<DecisionLogConfig>,
    pub limits: arbiter_engine::limits::Limits,
    pub dry_run: bool,
    pub skip_request_body_parse: bool,
    /// `--proto-descriptor`: the descriptor set gRPC bodies are decoded with.
    pub proto_descriptor: Option<PathBuf>,
    pub v0_compatible: bool,
    pub eval_timeout: Duration,
    /// Expression steps per CEL evaluation (`None`: no budget).
    pub cel_cost_limit: Option<u64>,
    pub workers: usize,
    /// Runtime threads; 0 for one per available CPU, 1 for a single-threaded runtime.
    pub io_threads: usize,
    pub queue: usize,
    pub path_normalization: PathNormalization,
    /// `(trust domain, bundle file)` pairs.
    pub trust_bundles: Vec<(String, PathBuf)>,
    pub trust_xfcc_by: Option<String>,
    /// `--jwt-bundle`: JWT bundles per trust domain (none: JWT-SVIDs are not read).
    pub jwt_bundles: Vec<(String, PathBuf)>,
    /// `--jwt-audience`.
    pub jwt_audiences: Vec<String>,
    /// `--jwt-svid-header`, lower-case.
    pub jwt_svid_header: String,
    pub tls: Option<TlsSettings>,
    pub watch: Option<Duration>,
    pub reload_require_tests: bool,
    /// Bundles: `--bundle`, or OPA's `bundles`.
    pub bundles: Vec<BundleSource>,
    /// `--ignore` patterns.
    pub ignore: Vec<String>,
    /// `--diagnostic-addr`.
    pub diagnostic_addr: Option<String>,
    /// `--otlp-endpoint` and the rest, or OPA's `distributed_tracing` (none: no spans).
    pub otlp: Option<arbiter_ext_authz::otel::OtlpConfig>,
    /// OPA's `labels`, for decision events.
    pub labels: std::collections::BTreeMap<String, String>,
    /// `grpc-request-duration-seconds-buckets` (empty: OPA-Envoy's).
    pub grpc_duration_buckets: Vec<f64>,
    /// The configuration file as `GET /v1/config` shows it (credentials and keys removed).
    pub active_config: serde_json::Value,
    pub istio: arbiter_engine::istio::IstioOptions,
    pub ui: bool,
    pub ui_token_file: Option<PathBuf>,
    pub authentication: AuthenticationArg,
    pub authorization: Option<AuthorizationArg>,
}

pub use arbiter_engine::units::parse_duration;

/// A bundle to serve: `--bundle`, or one of OPA's `bundles`.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleSource {
    /// Its name: the key under OPA's `bundles`, or what `--bundle` gave.
    pub name: String,
    /// A `.tar.gz` file, a folder in bundle layout, or an `http(s)://` URL.
    pub location: String,
    /// The headers and credentials of the service it is downloaded from.
    pub auth: ServiceAuth,
    /// How long one download may take.
    pub timeout: Duration,
    /// A poll waits a random delay between these two after a download, as OPA's
    /// `polling.min_delay_seconds` and `max_delay_seconds`.
    pub polling: (Duration, Duration),
    /// `size_limit_bytes`.
    pub size_limit: usize,
    pub verification: Option<arbiter_engine::bundle::Verification>,
}

impl BundleSource {
    pub fn is_url(&self) -> bool {
        self.location.starts_with("http://") || self.location.starts_with("https://")
    }

    /// The next polling delay: uniform in `polling`, so that a fleet does not poll in step.
    fn next_delay(&self) -> Duration {
        let (min, max) = self.polling;
        let spread = max.saturating_sub(min);
        if spread.is_zero() {
            return min;
        }
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 32);
        // xorshift: enough to spread pollers; nothing depends on it being unpredictable.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        min + spread.mul_f64((x % 1_000_000) as f64 / 1_000_000.0)
    }
}

/// OPA's default polling delays (`v1/download/config.go`).
const OPA_POLLING: (Duration, Duration) = (Duration::from_secs(60), Duration::from_secs(120));

/// The bundled policies: `./policies` when run from the repository, else the folder next to the
/// sources this binary was built from.
fn bundled_policies() -> PathBuf {
    let here = PathBuf::from("policies");
    if here.is_dir() {
        return here;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

impl Args {
    /// The bundles: `--bundle` (with `--bundle-poll` and the `--verification-*` flags), or
    /// else every one of OPA's `bundles`, resolved as OPA resolves them: `resource` defaults
    /// to `bundles/<name>` on the bundle's `service`; `signing.keyid` names one of `keys`;
    /// `keys` without `signing` verify the bundles that are signed.
    fn bundle_sources(
        &self,
        file: &crate::config::ConfigFile,
        base: &Path,
    ) -> Result<Vec<BundleSource>, String> {
        use arbiter_engine::bundle::{Verification, VerificationKey};
        if !self.bundle.is_empty() {
            let every = match &self.bundle_poll {
                Some(p) => parse_duration(p)?,
                None => Duration::from_secs(30),
            };
            let verification = match &self.verification_key {
                None => None,
                Some(k) => Some(Verification::single(
                    self.verification_key_id.as_deref().unwrap_or_default(),
                    self.verification_alg.as_deref().unwrap_or("RS256"),
                    &crate::build::key_material(k)?,
                    self.verification_scope.as_deref().unwrap_or_default(),
                )),
            };
            return Ok(self
                .bundle
                .iter()
                .map(|b| BundleSource {
                    name: b.clone(),
                    location: b.clone(),
                    auth: ServiceAuth::default(),
                    timeout: Duration::from_secs(30),
                    polling: (every, every),
                    size_limit: arbiter_ext_authz::fetch::MAX_BODY_BYTES,
                    verification: verification.clone(),
                })
                .collect());
        }
        let mut keys = std::collections::BTreeMap::new();
        for (id, k) in file.keys.iter().flatten() {
            let material = k
                .key
                .as_deref()
                .ok_or_else(|| format!("keys.{id}: no `key`"))?;
            keys.insert(
                id.clone(),
                VerificationKey {
                    algorithm: k.algorithm.clone().unwrap_or_else(|| "RS256".into()),
                    key: crate::build::key_material(material)
                        .map_err(|e| format!("keys.{id}: {e}"))?,
                    scope: k.scope.clone().unwrap_or_default(),
                },
            );
        }
        let mut out = Vec::new();
        for (name, b) in file.bundles.iter().flatten() {
            let at = |what: &str| format!("bundles.{name}.{what}");
            if b.persist == Some(true) {
                return Err(format!(
                    "{}: not supported (arbiter keeps bundles in memory)",
                    at("persist")
                ));
            }
            match b.trigger.as_deref() {
                None | Some("periodic") => {}
                Some(t) => {
                    return Err(format!(
                        "{}: `{t}` is not supported (only `periodic`)",
                        at("trigger")
                    ));
                }
            }
            let p = b.polling.clone().unwrap_or_default();
            if p.long_polling_timeout_seconds.is_some() {
                return Err(format!(
                    "{}: long polling is not supported",
                    at("polling.long_polling_timeout_seconds")
                ));
            }
            // OPA's rules and messages (`v1/download/config.go`).
            let polling = match (p.min_delay_seconds, p.max_delay_seconds) {
                (None, None) => OPA_POLLING,
                (Some(min), Some(max)) if max >= min => {
                    (Duration::from_secs(min), Duration::from_secs(max))
                }
                (Some(_), Some(_)) => {
                    return Err(format!(
                        "{}: max polling delay must be >= min polling delay",
                        at("polling")
                    ));
                }
                (None, Some(_)) => {
                    return Err(format!(
                        "{}: polling configuration missing 'min_delay_seconds'",
                        at("polling")
                    ));
                }
                (Some(_), None) => {
                    return Err(format!(
                        "{}: polling configuration missing 'max_delay_seconds'",
                        at("polling")
                    ));
                }
            };
            let resource = b
                .resource
                .clone()
                .unwrap_or_else(|| format!("bundles/{name}"));
            let (location, auth, timeout) = if let Some(path) = resource.strip_prefix("file://") {
                (
                    base.join(path).display().to_string(),
                    ServiceAuth::default(),
                    Duration::from_secs(10),
                )
            } else {
                let (svc_name, svc) = match b.service.as_deref() {
                    Some(n) => file.service(Some(n))?.ok_or_else(|| {
                        format!("{}: service name \"{n}\" not found", at("service"))
                    })?,
                    None => file.service(None)?.ok_or_else(|| {
                        format!("{}: missing; name one of `services`", at("service"))
                    })?,
                };
                let url = svc
                    .url
                    .clone()
                    .ok_or_else(|| format!("services.{svc_name}: no `url`"))?;
                (
                    format!(
                        "{}/{}",
                        url.trim_end_matches('/'),
                        resource.trim_start_matches('/')
                    ),
                    svc.auth(&svc_name, base)?,
                    svc.timeout(),
                )
            };
            let verification = match &b.signing {
                Some(signing) => {
                    let key_id = signing.keyid.clone().unwrap_or_default();
                    if !key_id.is_empty() && !keys.contains_key(&key_id) {
                        return Err(format!(
                            "{}: key id `{key_id}` is not in `keys`",
                            at("signing.keyid")
                        ));
                    }
                    Some(Verification {
                        key_id,
                        keys: keys.clone(),
                        scope: signing.scope.clone().unwrap_or_default(),
                        exclude_files: signing.exclude_files.clone(),
                        unsigned_allowed: false,
                    })
                }
                // OPA verifies the bundles that are signed when there are keys.
                None if !keys.is_empty() => Some(Verification {
                    keys: keys.clone(),
                    unsigned_allowed: true,
                    ..Verification::default()
                }),
                None => None,
            };
            out.push(BundleSource {
                name: name.clone(),
                location,
                auth,
                timeout,
                polling,
                size_limit: b
                    .size_limit_bytes
                    .and_then(|n| usize::try_from(n).ok())
                    .map_or(arbiter_ext_authz::fetch::MAX_BODY_BYTES, |n| {
                        n.min(arbiter_ext_authz::fetch::MAX_BODY_BYTES)
                    }),
                verification,
            });
        }
        Ok(out)
    }

    /// Combine flags, the config file and defaults.
    /// Span export: the flags, else arbiter's keys in the file, else OPA's
    /// `distributed_tracing`.
    fn otlp_config(
        &self,
        file: &crate::config::ConfigFile,
    ) -> Result<Option<arbiter_ext_authz::otel::OtlpConfig>, String> {
        use arbiter_ext_authz::otel::{OtlpConfig, Protocol};
        let protocol = self
            .otlp_protocol
            .clone()
            .or_else(|| file.otlp_protocol.clone());
        let endpoint = self
            .otlp_endpoint
            .clone()
            .or_else(|| file.otlp_endpoint.clone());
        let mut config = match (endpoint, &file.distributed_tracing) {
            (Some(endpoint), _) => {
                let protocol = match &protocol {
                    Some(p) => p.parse::<Protocol>()?,
                    None => Protocol::Grpc,
                };
                OtlpConfig::new(endpoint, protocol)
            }
            (None, Some(dt)) => match dt.config()? {
                Some(c) => c,
                None => return Ok(None),
            },
            (None, None) => {
                if protocol.is_some()
                    || !self.otlp_header.is_empty()
                    || self.otlp_service_name.is_some()
                    || self.trace_sample_percentage.is_some()
                {
                    return Err("the OTLP settings need --otlp-endpoint".into());
                }
                return Ok(None);
            }
        };
        if let Some(n) = self
            .otlp_service_name
            .clone()
            .or_else(|| file.otlp_service_name.clone())
        {
            config.service_name = n;
        }
        if let Some(p) = self
            .trace_sample_percentage
            .or(file.trace_sample_percentage)
        {
            config.sample_ratio = p / 100.0;
        }
        for h in &self.otlp_header {
            let (k, v) = h
                .split_once('=')
                .ok_or_else(|| format!("--otlp-header `{h}`: give NAME=VALUE"))?;
            config
                .headers
                .push((k.trim().to_string(), v.trim().to_string()));
        }
        if self.otlp_header.is_empty()
            && let Some(h) = &file.otlp_headers
        {
            config
                .headers
                .extend(h.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        config.validate()?;
        Ok(Some(config))
    }

    pub fn settings(&self) -> Result<Settings, String> {
        let file =
            crate::config::ConfigFile::load(self.config.as_deref(), &self.set, &self.set_file)?;
        // OPA-Envoy's plugin configuration, when present.
        let opa = file
            .plugins
            .as_ref()
            .and_then(|p| p.envoy_ext_authz_grpc.clone())
            .unwrap_or_default();
        // Paths in the file are relative to the file.
        let base = self
            .config
            .as_deref()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        let mut policies: Vec<PathBuf> = self.paths.iter().chain(&self.policies).cloned().collect();
        if policies.is_empty()
            && let Some(list) = &file.policies
        {
            policies.extend(list.to_vec().iter().map(|p| base.join(p)));
        }
        let bundles = self.bundle_sources(&file, &base)?;
        if policies.is_empty() && bundles.is_empty() {
            policies.push(bundled_policies());
        }
        let mut limits = file.limits.unwrap_or_default();
        self.limits.apply_to(&mut limits);
        // OPA-Envoy's plugin keys arbiter does not serve are refused by name; its sizes are
        // limits.
        if opa.enable_reflection == Some(true) {
            return Err("plugins.envoy_ext_authz_grpc.enable-reflection: gRPC reflection is not served (give grpcurl the protos of envoy.service.auth.v3)".into());
        }
        if let Some(b) = &opa.grpc_request_duration_seconds_buckets
            && (b.is_empty()
                || b.windows(2).any(|w| w[0] >= w[1])
                || b.iter().any(|x| !x.is_finite()))
        {
            return Err("plugins.envoy_ext_authz_grpc.grpc-request-duration-seconds-buckets: give increasing, finite upper bounds".into());
        }
        if let Some(n) = opa.grpc_max_recv_msg_size {
            limits.max_request_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(n) = opa.grpc_max_send_msg_size {
            limits.max_response_bytes = usize::try_from(n).unwrap_or(usize::MAX);
        }
        if let Some(status) = &file.status {
            if status.service.is_some() {
                return Err("status.service: status reports to a service are not supported (status.prometheus and /health?bundles tell the same)".into());
            }
            if status.trigger.as_deref().is_some_and(|t| t != "periodic") {
                return Err("status.trigger: only `periodic` is supported".into());
            }
        }
        let eval_timeout = match self
            .eval_timeout
            .clone()
            .or_else(|| file.eval_timeout.as_ref().map(ToString::to_string))
        {
            Some(s) => parse_duration(&s)?,
            None => limits.eval_timeout,
        };
        limits.eval_timeout = eval_timeout;
        let number = |flag: Option<usize>,
                      key: &str,
                      value: &Option<crate::config::Scalar>,
                      default: usize|
         -> Result<usize, String> {
            match (flag, value) {
                (Some(n), _) => Ok(n),
                (None, Some(v)) => v
                    .to_string()
                    .parse()
                    .map_err(|_| format!("`{key}` must be a number")),
                (None, None) => Ok(default),
            }
        };
        let path_normalization = match self.path_normalization {
            Some(p) => p,
            None => match file.path_normalization.as_deref() {
                None | Some("strict") => PathNormalization::Strict,
                Some("lenient") => PathNormalization::Lenient,
                Some(other) => {
                    return Err(format!(
                        "`path-normalization` must be `strict` or `lenient`, not `{other}`"
                    ));
                }
            },
        };
        let trust_bundles = per_trust_domain(
            "--trust-bundle",
            &self.trust_bundle,
            file.trust_bundles.as_ref(),
            &base,
        )?;
        let jwt_bundles = per_trust_domain(
            "--jwt-bundle",
            &self.jwt_bundle,
            file.jwt_bundles.as_ref(),
            &base,
        )?;
        let jwt_audiences = if self.jwt_audience.is_empty() {
            file.jwt_audiences.clone().unwrap_or_default()
        } else {
            self.jwt_audience.clone()
        };
        if !jwt_bundles.is_empty() && jwt_audiences.iter().all(|a| a.trim().is_empty()) {
            return Err("--jwt-bundle needs --jwt-audience: a JWT-SVID is accepted only by the audiences it names".into());
        }
        let jwt_svid_header = self
            .jwt_svid_header
            .clone()
            .or_else(|| file.jwt_svid_header.clone())
            .unwrap_or_else(|| "authorization".into())
            .to_ascii_lowercase();
        let path_of = |flag: &Option<PathBuf>, value: &Option<String>| {
            flag.clone()
                .or_else(|| value.as_ref().map(|p| base.join(p)))
        };
        let tls_cert = path_of(&self.tls_cert, &file.tls_cert);
        let tls_key = path_of(&self.tls_key, &file.tls_key);
        let tls_client_ca = path_of(&self.tls_client_ca, &file.tls_client_ca);
        let allowed_callers = if self.allowed_caller.is_empty() {
            file.allowed_callers
                .as_ref()
                .map(crate::config::OneOrMany::to_vec)
                .unwrap_or_default()
        } else {
            self.allowed_caller.clone()
        };
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                cert,
                key,
                client_ca: tls_client_ca,
                allowed_callers,
            }),
            (None, None) => {
                if tls_client_ca.is_some() || !allowed_callers.is_empty() {
                    return Err(
                        "--tls-client-ca and --allowed-caller need --tls-cert and --tls-key".into(),
                    );
                }
                None
            }
            _ => return Err("--tls-cert and --tls-key go together".into()),
        };
        let mut shadow = self.shadow.clone();
        if shadow.is_empty()
            && let Some(list) = &file.shadow
        {
            shadow.extend(list.to_vec().iter().map(|p| base.join(p)));
        }
        Ok(Settings {
            shadow,
            trust_bundles,
            jwt_bundles,
            jwt_audiences,
            jwt_svid_header,
            trust_xfcc_by: self
                .trust_xfcc_by
                .clone()
                .or_else(|| file.trust_xfcc_by.clone()),
            tls,
            watch: if self.watch || file.watch.unwrap_or(false) {
                Some(
                    match self
                        .watch_interval
                        .clone()
                        .or_else(|| file.watch_interval.as_ref().map(ToString::to_string))
                    {
                        Some(s) => parse_duration(&s)?,
                        None => Duration::from_secs(1),
                    },
                )
            } else {
                None
            },
            bundles,
            ignore: self.ignore.clone(),
            diagnostic_addr: self.diagnostic_addr.clone(),
            otlp: self.otlp_config(&file)?,
            labels: file.labels.clone().unwrap_or_default(),
            active_config: file.active(),
            grpc_duration_buckets: opa
                .grpc_request_duration_seconds_buckets
                .clone()
                .unwrap_or_default(),
            ui: self.ui || file.ui.unwrap_or(false),
            authentication: match (self.authentication, file.authentication.as_deref()) {
                (Some(a), _) => a,
                (None, None | Some("off")) => AuthenticationArg::Off,
                (None, Some("token")) => AuthenticationArg::Token,
                (None, Some(other)) => {
                    return Err(format!(
                        "`authentication` must be `off` or `token`, not `{other}`"
                    ));
                }
            },
            authorization: match (self.authorization, file.authorization.as_deref()) {
                (Some(a), _) => Some(a),
                (None, None) => None,
                (None, Some("off")) => Some(AuthorizationArg::Off),
                (None, Some("basic")) => Some(AuthorizationArg::Basic),
                (None, Some(other)) => {
                    return Err(format!(
                        "`authorization` must be `off` or `basic`, not `{other}`"
                    ));
                }
            },
            ui_token_file: self
                .ui_token_file
                .clone()
                .or_else(|| file.ui_token_file.clone().map(PathBuf::from)),
            istio: arbiter_engine::istio::IstioOptions {
                root_namespace: self
                    .istio_root_namespace
                    .clone()
                    .or_else(|| file.istio_root_namespace.clone())
                    .unwrap_or_else(|| "istio-system".into()),
                allow_without_allow_policies: self.istio_allow_without_allow_policies
                    || file.istio_allow_without_allow_policies.unwrap_or(false),
            },
            reload_require_tests: self.reload_require_tests
                || file.reload_require_tests.unwrap_or(false),
            policies,
            grpc_addr: self
                .grpc_addr
                .clone()
                .or_else(|| file.grpc_addr.clone())
                .or_else(|| opa.addr.clone())
                .unwrap_or_else(|| "127.0.0.1:9191".into()),
            http_addr: self
                .http_addr
                .clone()
                .or_else(|| file.http_addr.clone())
                .unwrap_or_else(|| "127.0.0.1:8181".into()),
            http_authz_addr: self
                .http_authz_addr
                .clone()
                .or_else(|| file.http_authz_addr.clone()),
            http_authz_path_prefix: self
                .http_authz_path_prefix
                .clone()
                .or_else(|| file.http_authz_path_prefix.clone())
                .unwrap_or_default(),
            path: self
                .path
                .clone()
                .or_else(|| file.path.clone())
                .or_else(|| opa.path.clone())
                .or_else(|| opa.query.clone())
                .unwrap_or_else(|| "envoy/authz/allow".into()),
            decision_log: crate::logconfig::decision_log_config(&self.log, &file, &base)?,
            limits,
            dry_run: self.dry_run || file.dry_run.or(opa.dry_run).unwrap_or(false),
            skip_request_body_parse: self.skip_request_body_parse
                || file
                    .skip_request_body_parse
                    .or(opa.skip_request_body_parse)
                    .unwrap_or(false),
            proto_descriptor: self.proto_descriptor.clone().or_else(|| {
                file.proto_descriptor
                    .as_ref()
                    .or(opa.proto_descriptor.as_ref())
                    .map(|p| base.join(p))
            }),
            v0_compatible: self.v0_compatible || file.v0_compatible.unwrap_or(false),
            eval_timeout,
            cel_cost_limit: {
                let default =
                    usize::try_from(arbiter_engine::cel::DEFAULT_COST_LIMIT).unwrap_or(usize::MAX);
                let n = number(
                    self.cel_cost_limit,
                    "cel-cost-limit",
                    &file.cel_cost_limit,
                    default,
                )?;
                (n > 0).then(|| u64::try_from(n).unwrap_or(u64::MAX))
            },
            workers: number(self.workers, "workers", &file.workers, 0)?,
            io_threads: number(self.io_threads, "io-threads", &file.io_threads, 0)?,
            queue: number(self.queue, "queue", &file.queue, 1024)?.max(1),
            path_normalization,
        })
    }
}

/// The runtime for `--io-threads`, how the start-up line names it, and whether it is the
/// current-thread scheduler. One thread is the
/// current-thread scheduler, where a task another wakes runs after the tasks already queued
/// (the multi-threaded one runs it next), so the connection writes the responses of a read's
/// checks together instead of one each: about a third less CPU per check and a lower p99
/// behind Envoy, at some throughput (`benches/RESULTS.md`). 0 chooses it where the process has
/// one CPU (a sidecar's limit, a pinned process), else a thread per CPU.
fn runtime_builder(io_threads: usize) -> (tokio::runtime::Builder, String, bool) {
    let threads = match io_threads {
        0 => std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        n => n,
    };
    if threads == 1 {
        (
            tokio::runtime::Builder::new_current_thread(),
            "one I/O thread".into(),
            true,
        )
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        (b, format!("{threads} I/O threads"), false)
    }
}

/// The allocator heaps the last sets were built in (`arbiter_alloc_counter::in_own_heap`): the
/// serving set's and the one it replaced, which checks in flight may still hold. An older heap
/// is deleted when a new one is kept; its set is gone by then, so its pages are empty and go
/// back whole (a block still in use would move to the main heap, not be freed). Keeping each
/// set's data in pages of its own is what keeps RSS flat over reloads that change a large
/// document (`benches/RESULTS.md`, "Mesh-size, last round").
#[derive(Clone, Default)]
struct SetHeaps(Arc<std::sync::Mutex<std::collections::VecDeque<arbiter_alloc_counter::Heap>>>);

impl SetHeaps {
    const KEPT: usize = 2;

    fn keep(&self, heap: arbiter_alloc_counter::Heap) {
        let mut heaps = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        heaps.push_back(heap);
        let extra = heaps.len().saturating_sub(Self::KEPT);
        let old: Vec<_> = heaps.drain(..extra).collect();
        drop(heaps);
        drop(old);
    }
}

/// Load policies and build the authorizer the settings describe.
/// The latest bytes of each bundle fetched from a URL, by bundle name (shared with the
/// pollers).
pub type FetchedBundle =
    std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, Vec<u8>>>>;

pub fn authorizer(s: &Settings) -> Result<Authorizer, String> {
    authorizer_with(s, None)
}

/// The policy sources: the folders and files, plus every bundle (a file, a folder, or the
/// bytes last fetched from its URL), each verified as configured. Bundles may not claim the
/// same part of `data` (OPA's rule on roots across bundles).
fn sources(
    s: &Settings,
    fetched: Option<&FetchedBundle>,
) -> Result<arbiter_engine::PolicySources, String> {
    let limits = s.limits.load();
    let mut sources = if s.policies.is_empty() {
        arbiter_engine::PolicySources::default()
    } else {
        arbiter_engine::PolicySources::discover_with(&s.policies, &s.ignore, &limits)
            .map_err(|e| e.to_string())?
    };
    let mut loaded = Vec::new();
    for b in &s.bundles {
        let shown = &b.location;
        let bundle = if b.is_url() {
            let bytes = fetched
                .and_then(|f| f.lock().ok().and_then(|g| g.get(&b.name).cloned()))
                .ok_or_else(|| format!("{shown}: the bundle has not been fetched"))?;
            let files = arbiter_engine::bundle::untar_with(&bytes, &limits)
                .map_err(|e| format!("{shown}: {e}"))?;
            arbiter_engine::bundle::from_files_with(files, shown, b.verification.as_ref(), &limits)
                .map_err(|e| format!("{shown}: {e}"))?
        } else {
            arbiter_engine::bundle::load_with(Path::new(shown), b.verification.as_ref(), &limits)?
        };
        if bundle.is_delta() {
            return Err(format!(
                "{shown}: a delta bundle (patch.json) applies to its snapshot bundle, and none is active"
            ));
        }
        loaded.push((b, bundle));
    }
    let named: Vec<(&str, &arbiter_engine::bundle::Manifest)> = loaded
        .iter()
        .map(|(b, bundle)| (b.name.as_str(), &bundle.manifest))
        .collect();
    arbiter_engine::bundle::check_disjoint_roots(&named)?;
    // With several bundles, one revision for the set: each bundle's, by name.
    let revision = (loaded.len() > 1).then(|| {
        named
            .iter()
            .map(|(name, m)| format!("{name}={}", m.revision))
            .collect::<Vec<_>>()
            .join(",")
    });
    for (b, bundle) in loaded {
        // OPA's `data.system.bundles[name].manifest`.
        let manifest = serde_json::json!({
            "revision": bundle.manifest.revision,
            "roots": bundle.manifest.roots_or_all(),
        });
        sources
            .data
            .push(arbiter_engine::loader::DataDocument::from_json(
                format!("{}:/.manifest", b.location),
                vec!["system".into(), "bundles".into(), b.name.clone()],
                &serde_json::json!({ "manifest": manifest }),
            ));
        let mut from = bundle.sources;
        from.bundles
            .insert(b.name.clone(), bundle.manifest.revision);
        sources.extend(from);
    }
    if revision.is_some() {
        sources.revision = revision;
    }
    // Folders and bundles together.
    sources.check_limits(&limits)?;
    Ok(sources)
}

pub fn authorizer_with(
    s: &Settings,
    fetched: Option<&FetchedBundle>,
) -> Result<Authorizer, String> {
    authorizer_from_sources(s, &sources(s, fetched)?)
}

/// The policy sources of `s` (folders, files and bundles that need no download).
pub fn policy_sources(s: &Settings) -> Result<arbiter_engine::PolicySources, String> {
    sources(s, None)
}

/// The authorizer `serve` decides with, from sources already read.
pub fn authorizer_from_sources(
    s: &Settings,
    sources: &arbiter_engine::PolicySources,
) -> Result<Authorizer, String> {
    let options = LoadOptions {
        rego_version: if s.v0_compatible {
            RegoVersion::V0Compatible
        } else {
            RegoVersion::V1
        },
        include_tests: false,
        eval_timeout: Some(s.eval_timeout),
        cel_cost_limit: s.cel_cost_limit,
        istio: s.istio.clone(),
        strict_builtin_errors: true,
    };
    let set = PolicySet::from_sources(sources, &options).map_err(|e| e.to_string())?;
    let path = DataRef::parse(&s.path).map_err(|e| e.to_string())?;
    let mut identity = IdentityOptions::default();
    for (td, file) in &s.trust_bundles {
        let pem = std::fs::read_to_string(file)
            .map_err(|e| format!("--trust-bundle {td}={}: {e}", file.display()))?;
        identity
            .add_bundle_pem(td, &pem)
            .map_err(|e| format!("--trust-bundle {td}={}: {e}", file.display()))?;
    }
    if !s.jwt_bundles.is_empty() {
        let mut jwt = arbiter_engine::identity::JwtSvidOptions {
            audiences: s.jwt_audiences.clone(),
            header: s.jwt_svid_header.clone(),
            ..Default::default()
        };
        for (td, file) in &s.jwt_bundles {
            let text = std::fs::read_to_string(file)
                .map_err(|e| format!("--jwt-bundle {td}={}: {e}", file.display()))?;
            jwt.add_bundle(td, &text)
                .map_err(|e| format!("--jwt-bundle {td}={}: {e}", file.display()))?;
        }
        identity.jwt_svid = Some(jwt);
    }
    if let Some(hop) = &s.trust_xfcc_by {
        identity.trusted_xfcc_hop = Some(
            SpiffeId::parse_workload(hop).map_err(|e| format!("--trust-xfcc-by `{hop}`: {e}"))?,
        );
    }
    for w in set.warnings() {
        tracing::warn!(event = "policy_warning", "{}", crate::check::warning(w));
    }
    if let Err(reason) = set.check_entrypoint(&path) {
        tracing::warn!(
            event = "no_entrypoint",
            path = %path,
            "warning: {reason}; every check will be denied until a policy defines it"
        );
    }
    Ok(Authorizer::new(
        Arc::new(set),
        path,
        InputOptions {
            path_policy: match s.path_normalization {
                PathNormalization::Strict => PathPolicy::Strict,
                PathNormalization::Lenient => PathPolicy::Lenient,
            },
            skip_body_parse: s.skip_request_body_parse,
            grpc: match &s.proto_descriptor {
                Some(p) => {
                    Some(GrpcBodies::load(p).map_err(|e| format!("--proto-descriptor {e}"))?)
                }
                None => None,
            },
            ..InputOptions::with_limits(&s.limits)
        },
    )
    .with_identity_options(identity))
}

/// Download `b` (unchanged since `etag`, or new), within its size limit.
fn download(b: &BundleSource, etag: Option<&str>) -> Result<Fetched, String> {
    match arbiter_ext_authz::fetch::get(&b.location, etag, &b.auth, b.timeout)? {
        Fetched::New { body, .. } if body.len() > b.size_limit => Err(format!(
            "{}: the bundle is larger than size_limit_bytes ({})",
            b.location, b.size_limit
        )),
        other => Ok(other),
    }
}

/// A delta bundle's manifest and writes.
type Delta = (
    arbiter_engine::bundle::Manifest,
    Vec<arbiter_engine::data_write::DataWrite>,
);

/// A downloaded delta bundle (one with a `patch.json`): its manifest and writes, or why it
/// does not read; `None` for a snapshot bundle (which the full build reads).
fn delta_bundle(
    b: &BundleSource,
    body: &[u8],
    limits: &arbiter_engine::limits::LoadLimits,
) -> Option<Result<Delta, String>> {
    let files = arbiter_engine::bundle::untar_with(body, limits).ok()?;
    if !files.contains_key("patch.json") {
        return None;
    }
    Some(
        arbiter_engine::bundle::from_files_with(
            files,
            &b.location,
            b.verification.as_ref(),
            limits,
        )
        .map_err(|e| format!("{}: {e}", b.location))
        .map(|bundle| (bundle.manifest, bundle.patch.unwrap_or_default())),
    )
}

/// Apply a downloaded delta of bundle `name` (or report why it does not read), as a reload
/// reports: the log line, and OPA's bundle metrics.
fn apply_delta(state: &arbiter_ext_authz::state::State, name: &str, delta: Result<Delta, String>) {
    let applied = delta.and_then(|(manifest, writes)| {
        state
            .apply_bundle_delta(name, &manifest, writes)
            .map_err(|e| e.to_string())
    });
    match applied {
        Ok(rev) => {
            tracing::info!(event = "bundle_delta", bundle = %name, revision = %rev, "applied a delta of bundle {name}: revision {rev}");
            activated(state, Some(name));
        }
        Err(e) => {
            let serving = state.authorizer.load().policies().revision().to_string();
            tracing::error!(
                event = "bundle_delta_failed",
                bundle = %name,
                revision = %serving,
                error = %e,
                "a delta of bundle {name} failed, still serving revision {serving}:\n{e}"
            );
            state.metrics.opa.bundle_failed(name, "bundle_error", &e);
        }
    }
}

/// OPA's bundle metrics after a load: `bundle` (or every bundle of the set) is active at its
/// revision.
fn activated(state: &arbiter_ext_authz::state::State, bundle: Option<&str>) {
    let a = state.authorizer.load();
    for (name, revision) in a.policies().bundles() {
        if bundle.is_none_or(|b| b == name) {
            state.metrics.opa.bundle_activated(name, revision);
        }
    }
}

/// How often a bundle URL is tried while the server has no policy.
const AWAITING_RETRY: Duration = Duration::from_secs(2);

/// The settings the shadow set is built with: the live ones, with `--shadow`'s files as the
/// policies (and no bundles); `None` without `--shadow`.
fn shadow_settings(s: &Settings) -> Option<Settings> {
    (!s.shadow.is_empty()).then(|| Settings {
        policies: s.shadow.clone(),
        bundles: Vec::new(),
        ..s.clone()
    })
}

/// What serves while a bundle URL has not been loaded: no policy at all (not the local
/// policies alone, which would be a partial policy), so every check is denied with
/// `no_policy`.
fn awaiting_bundle(s: &Settings) -> Result<Authorizer, String> {
    let nothing = Settings {
        policies: Vec::new(),
        bundles: Vec::new(),
        ..s.clone()
    };
    authorizer_with(&nothing, None)
}

/// A complete authorizer for a reload: like [`authorizer`], and, with
/// `--reload-require-tests`, only if the set's own tests pass.
pub fn validated_authorizer(
    s: &Settings,
    fetched: Option<&FetchedBundle>,
) -> Result<Authorizer, String> {
    let a = authorizer_with(s, fetched)?;
    a.policies()
        .check_entrypoint(a.path())
        .map_err(|reason| reason.to_string())?;
    if s.reload_require_tests {
        let sources = sources(s, fetched)?;
        let options = arbiter_engine::testing::TestOptions {
            rego_version: a.policies().options().rego_version,
            istio: a.policies().options().istio.clone(),
            check_request_reader: arbiter_ext_authz::protojson::authz_request,
            ..Default::default()
        };
        let report = arbiter_engine::testing::run(&sources, &options).map_err(|e| e.to_string())?;
        let sum = report.summary();
        if sum.fail + sum.error > 0 {
            let failing: Vec<String> = report
                .results
                .iter()
                .filter(|r| {
                    matches!(
                        r.outcome,
                        arbiter_engine::testing::Outcome::Fail(_)
                            | arbiter_engine::testing::Outcome::Error(_)
                    )
                })
                .map(|r| r.full_name())
                .take(5)
                .collect();
            return Err(format!(
                "{} of {} tests fail: {}",
                sum.fail + sum.error,
                sum.total,
                failing.join(", ")
            ));
        }
    }
    Ok(a)
}

/// The instance's id (`labels.id`): a new UUID per start, as OPA; when events are shipped to
/// NATS, one kept beside the decision-log file (`<log>.instance-id`), so each instance's chain
/// in the stream keeps one name across restarts.
fn instance_id(s: &Settings) -> Result<String, String> {
    let Some(log) = s.decision_log.as_ref().filter(|l| l.nats.is_some()) else {
        return Ok(uuid::Uuid::new_v4().to_string());
    };
    let Some(file) = &log.file else {
        return Ok(uuid::Uuid::new_v4().to_string());
    };
    let path = std::path::PathBuf::from(format!("{}.instance-id", file.path.display()));
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        _ => {
            let id = uuid::Uuid::new_v4().to_string();
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                let _ = std::fs::create_dir_all(dir);
            }
            std::fs::write(&path, format!("{id}\n"))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok(id)
        }
    }
}

/// The server configuration the settings describe.
pub fn server_config(s: &Settings) -> Result<ServerConfig, String> {
    let id = instance_id(s)?;
    let mut decision_log = s.decision_log.clone();
    if let Some(n) = decision_log.as_mut().and_then(|l| l.nats.as_mut())
        && n.subject.is_empty()
    {
        n.subject = format!("arbiter.decisions.{id}");
    }
    Ok(ServerConfig {
        grpc: s.grpc_addr.parse::<ListenAddr>()?,
        http: Some(s.http_addr.parse::<ListenAddr>()?),
        options: ServeOptions {
            dry_run: s.dry_run,
            deadline: s.eval_timeout,
            labels: InstanceLabels {
                id,
                version: env!("CARGO_PKG_VERSION").to_string(),
                extra: s.labels.clone(),
            },
            api: api_access(s),
            grpc_duration_buckets: s.grpc_duration_buckets.clone(),
            active_config: s.active_config.clone(),
        },
        workers: s.workers,
        queue: s.queue,
        decision_log,
        tls: s.tls.clone(),
        limits: s.limits,
        ui: ui_dashboard(s)?,
        diagnostic: s
            .diagnostic_addr
            .as_deref()
            .map(str::parse::<ListenAddr>)
            .transpose()?,
        otlp: s.otlp.clone(),
        http_authz: s.http_authz_addr.clone().map(|a| {
            (
                a,
                arbiter_ext_authz::http_authz::HttpAuthzOptions {
                    path_prefix: s.http_authz_path_prefix.clone(),
                    max_body_bytes: s.limits.max_request_bytes,
                },
            )
        }),
    })
}

/// Whether the server's own mTLS decides who connects: client certificates are required and
/// must match `--allowed-caller` (then neither the dashboard nor the APIs need more).
fn mtls_admits_callers(s: &Settings) -> bool {
    s.tls
        .as_ref()
        .is_some_and(|t| t.client_ca.is_some() && !t.allowed_callers.is_empty())
}

/// Who may use the HTTP listener's APIs.
fn api_access(s: &Settings) -> arbiter_ext_authz::api_auth::ApiAccess {
    use arbiter_ext_authz::api_auth::{ApiAccess, Authentication, Authorization};
    ApiAccess {
        authentication: match s.authentication {
            AuthenticationArg::Off => Authentication::Off,
            AuthenticationArg::Token => Authentication::Token,
        },
        authorization: match s.authorization {
            None => Authorization::LoopbackOnly,
            Some(AuthorizationArg::Off) => Authorization::Off,
            Some(AuthorizationArg::Basic) => Authorization::Basic,
        },
        mtls_callers: mtls_admits_callers(s),
        max_write_bytes: Some(s.limits.load().max_data_file_bytes),
    }
}

/// The dashboard for `--ui`: over the decision-log file, protected off loopback.
fn ui_dashboard(
    s: &Settings,
) -> Result<Option<Arc<arbiter_ext_authz::dashboard::Dashboard>>, String> {
    use arbiter_ext_authz::dashboard::{Auth, Dashboard, check_exposure};
    if !s.ui {
        return Ok(None);
    }
    let Some(file) = s.decision_log.as_ref().and_then(|l| l.file.as_ref()) else {
        return Err("--ui shows the decision log: give --decision-log FILE".into());
    };
    let auth = match &s.ui_token_file {
        Some(p) => {
            Auth::Token(crate::audit::read_token(p).map_err(|e| format!("--ui-token-file {e}"))?)
        }
        None => Auth::None,
    };
    let mtls = mtls_admits_callers(s);
    // `:port` listens on every interface.
    let addr: std::net::SocketAddr = match s.http_addr.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => s.http_addr.clone(),
    }
    .parse()
    .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)));
    check_exposure(&addr, &auth, mtls)
        .map_err(|e| format!("refusing to start: {e} (--ui-token-file for --ui)"))?;
    let d = Dashboard::follow(&file.path, auth, "/ui");
    d.spawn_refresher(Duration::from_secs(1));
    Ok(Some(d))
}

/// The code and constants only starting (or a reload) used — arguments, configuration, the
/// policy compilers — taken out of the resident set once the server serves: about 7 MiB of the
/// binary stays mapped otherwise, though checks never use it
/// (`arbiter_alloc_counter::release_executable_pages`).
fn release_startup_code() {
    match arbiter_alloc_counter::release_executable_pages() {
        Ok(bytes) => tracing::debug!(
            event = "code_pages_released",
            bytes,
            "the executable's pages unmapped until used again: {bytes} bytes advised"
        ),
        Err(e) => tracing::debug!(
            event = "code_pages_released",
            error = %e,
            "the executable's pages stay mapped: {e}"
        ),
    }
}

/// SIGTERM or Ctrl-C. The handlers are installed when this is called (inside the runtime),
/// not when the future is first polled: call it before announcing that the server is up, so
/// a signal sent right after the announcement drains gracefully instead of killing the
/// process with the default action.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{Signal, SignalKind, signal};
        async fn next(s: Option<&mut Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let (mut term, mut int) = (term, int);
            if term.is_none() && int.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
            tokio::select! {
                () = next(term.as_mut()) => {}
                () = next(int.as_mut()) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

pub fn run(args: &Args) -> Exit {
    crate::logging::init(args.log_level, args.log_format);
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(event = "fatal", error = %e, "{e}");
            return Exit::Usage;
        }
    };
    // Bundle URLs are fetched before serving. If one cannot be fetched or the set cannot be
    // loaded, the server starts anyway, as OPA does: every check is denied (`no_policy`) and
    // health says NOT_SERVING until the pollers bring a set that loads. The set is only ever
    // loaded whole: a bundle missing could be a deny rule missing.
    let fetched: FetchedBundle = Default::default();
    let mut etags: std::collections::BTreeMap<String, Option<String>> = Default::default();
    let any_url = settings.bundles.iter().any(BundleSource::is_url);
    let mut awaiting: Option<String> = None;
    // What the first downloads did, for OPA's bundle metrics once the server runs.
    let mut first_downloads: Vec<(String, Result<(), String>)> = Vec::new();
    // All at once: a slow bundle server delays the start by one timeout, not one per bundle.
    let downloads: Vec<(&BundleSource, Result<Fetched, String>)> = std::thread::scope(|scope| {
        let running: Vec<_> = settings
            .bundles
            .iter()
            .filter(|b| b.is_url())
            .map(|b| (b, scope.spawn(move || download(b, None))))
            .collect();
        running
            .into_iter()
            .map(|(b, h)| {
                let got = h
                    .join()
                    .unwrap_or_else(|_| Err(format!("{}: the download failed", b.location)));
                (b, got)
            })
            .collect()
    });
    for (b, got) in downloads {
        first_downloads.push((
            b.name.clone(),
            got.as_ref().map(|_| ()).map_err(Clone::clone),
        ));
        match got {
            Ok(Fetched::New { body, etag }) => {
                if let Ok(mut g) = fetched.lock() {
                    g.insert(b.name.clone(), body);
                }
                etags.insert(b.name.clone(), etag);
            }
            Ok(Fetched::Unchanged) => {
                awaiting = Some(format!("{}: unexpected 304 without an ETag", b.location));
            }
            Err(e) => awaiting = Some(format!("cannot fetch the bundle: {e}")),
        }
    }
    // What is watched, and how it looked before the first load: a change written while the
    // server starts is then reloaded, not taken as the state the set was loaded from. With
    // `--watch`, every file the set is built from; without it, the JWT bundles alone: they
    // rotate (SPIRE publishes new keys before it signs with them) and are re-read anyway.
    let jwt_files: Vec<PathBuf> = settings
        .jwt_bundles
        .iter()
        .map(|(_, f)| f.clone())
        .collect();
    let watcher = match settings.watch {
        Some(interval) => {
            let mut watched = settings.policies.clone();
            watched.extend(settings.shadow.iter().cloned());
            watched.extend(settings.trust_bundles.iter().map(|(_, f)| f.clone()));
            watched.extend(jwt_files);
            watched.extend(settings.proto_descriptor.iter().cloned());
            watched.extend(
                settings
                    .bundles
                    .iter()
                    .filter(|b| !b.is_url())
                    .map(|b| PathBuf::from(&b.location)),
            );
            Some((watched, interval, "files changed"))
        }
        None if !jwt_files.is_empty() => Some((jwt_files, JWT_BUNDLE_POLL, "a JWT bundle changed")),
        None => None,
    }
    .map(|(paths, interval, why)| {
        let seen = arbiter_ext_authz::reload::fingerprint(&paths);
        (paths, interval, why, seen)
    });
    // Each set is built in an allocator heap of its own, kept while it may still serve
    // (`SetHeaps`).
    let heaps = SetHeaps::default();
    let loaded = awaiting.is_none().then(|| {
        let (loaded, heap) =
            arbiter_alloc_counter::in_own_heap(|| authorizer_with(&settings, Some(&fetched)));
        heaps.keep(heap);
        loaded
    });
    let authorizer = match loaded {
        Some(Ok(a)) => a,
        Some(Err(e)) if !any_url => {
            tracing::error!(event = "fatal", error = %e, "{e}");
            return Exit::Failed;
        }
        other => {
            if let Some(Err(e)) = other {
                awaiting = Some(e);
            }
            match awaiting_bundle(&settings) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(event = "fatal", error = %e, "{e}");
                    return Exit::Failed;
                }
            }
        }
    };
    // Loading parsed files into trees that are gone now (the data's JSON, the modules' syntax
    // before compiling): give those pages back before serving (at 100,000 identities RSS went
    // from 319 MiB to 145 MiB, benches/RESULTS.md).
    arbiter_alloc_counter::release_free_memory();
    let config = match server_config(&settings) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(event = "fatal", error = %e, "{e}");
            return Exit::Usage;
        }
    };
    let (mut builder, runtime_name, one_thread) = runtime_builder(settings.io_threads);
    // With one I/O thread, a shadow set decides in that thread's idle time (its queued checks
    // when the runtime is about to wait for I/O); with several, on a side thread.
    let shadow_runner = match (settings.shadow.is_empty(), one_thread) {
        (false, true) => {
            let slot = arbiter_ext_authz::shadow::IdleSlot::default();
            let hook = slot.clone();
            builder.on_thread_park(move || hook.on_park());
            arbiter_ext_authz::shadow::Runner::Idle(slot)
        }
        _ => arbiter_ext_authz::shadow::Runner::Thread,
    };
    let runtime = match builder.enable_all().thread_name("arbiter-io").build() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(event = "fatal", error = %e, "cannot start the runtime: {e}");
            return Exit::Failed;
        }
    };
    let result: anyhow::Result<()> = runtime.block_on(async {
        let revision = authorizer.policies().revision().to_string();
        let modules = authorizer.policies().modules().len();
        let engine = match authorizer.rego_engine() {
            Ok(arbiter_engine::authorizer::RegoEngine::Rvm) => "Rego on the RVM".to_string(),
            Ok(arbiter_engine::authorizer::RegoEngine::Interpreter) => {
                "Rego on the interpreter".to_string()
            }
            Err(why) => format!("Rego on the interpreter ({why})"),
        };
        let running = arbiter_ext_authz::start_with(config, authorizer, awaiting.is_some())
            .await
            .context("cannot start")?;
        if let Some(shadow) = shadow_settings(&settings) {
            let a = authorizer_with(&shadow, None)
                .map_err(|e| anyhow::anyhow!("the shadow policies: {e}"))?;
            let revision = a.policies().revision().to_string();
            running
                .state
                .start_shadow_with(a, &shadow_runner)
                .map_err(|e| anyhow::anyhow!(e))?;
            let place = match shadow_runner {
                arbiter_ext_authz::shadow::Runner::Idle(_) => "in the I/O thread's idle time",
                arbiter_ext_authz::shadow::Runner::Thread => "on a side thread",
            };
            tracing::info!(event = "shadow_start", revision = %revision, "shadowing every check with revision {revision} {place} (never enforced)");
        }
        for (name, outcome) in &first_downloads {
            let opa = &running.state.metrics.opa;
            opa.bundle_request(name);
            match outcome {
                Ok(()) => opa.bundle_response(name, true),
                Err(e) => opa.bundle_failed(name, "bundle_error", e),
            }
        }
        if awaiting.is_none() {
            activated(&running.state, None);
        }
        // Reloads: on SIGHUP, and on file changes with --watch; one at a time.
        let build: arbiter_ext_authz::reload::Build = {
            let (s, f) = (settings.clone(), fetched.clone());
            Arc::new(move || validated_authorizer(&s, Some(&f)))
        };
        let lock = Arc::new(std::sync::Mutex::new(()));
        let do_reload = {
            let state = Arc::downgrade(&running.state);
            let (build, lock, heaps) = (build.clone(), lock.clone(), heaps.clone());
            let shadow = shadow_settings(&settings);
            // `bundle`: the bundle whose new download caused the reload (its activation or
            // failure is what OPA's bundle metrics count); `None`: every bundle is reloaded.
            move |why: &str, bundle: Option<&str>| -> bool {
                let Some(state) = state.upgrade() else {
                    return false;
                };
                let _one = lock.lock();
                let (reloaded, heap) = arbiter_alloc_counter::in_own_heap(|| {
                    arbiter_ext_authz::reload::reload_after(&state, &build, bundle)
                });
                heaps.keep(heap);
                if let (Some(shadow), Some(s)) = (state.shadow.get(), &shadow) {
                    match arbiter_alloc_counter::in_own_heap(|| authorizer_with(s, None)) {
                        (Ok(a), heap) => {
                            heaps.keep(heap);
                            let rev = a.policies().revision().to_string();
                            shadow.replace(a);
                            tracing::info!(event = "shadow_reload", reason = %why, revision = %rev, "shadow reloaded ({why}): revision {rev}");
                        }
                        (Err(e), _) => {
                            let rev = shadow.revision();
                            tracing::error!(
                                event = "shadow_reload_failed",
                                reason = %why,
                                revision = %rev,
                                error = %e,
                                "shadow reload ({why}) failed, still shadowing with revision {rev}:\n{e}"
                            );
                        }
                    }
                }
                match reloaded {
                    Ok(rev) => {
                        tracing::info!(event = "reload", reason = %why, revision = %rev, "reloaded ({why}): revision {rev}");
                        activated(&state, bundle);
                    }
                    Err(e) => {
                        let serving = state.authorizer.load().policies().revision().to_string();
                        tracing::error!(
                            event = "reload_failed",
                            reason = %why,
                            revision = %serving,
                            error = %e,
                            "reload ({why}) failed, still serving revision {serving}:\n{e}"
                        );
                        if let Some(name) = bundle {
                            state.metrics.opa.bundle_failed(name, "bundle_error", &e);
                        }
                    }
                }
                // The set replaced (or built and refused) is freed by now unless a check still
                // holds it: give its pages back, so that RSS after reloads stays at one set's;
                // and the compiler's code, run again, leaves the resident set again.
                arbiter_alloc_counter::release_free_memory();
                release_startup_code();
                true
            }
        };
        for b in settings.bundles.iter().filter(|b| b.is_url()).cloned() {
            // Poll with the ETag after a random delay in the bundle's polling range; a new
            // bundle goes through the same validated reload.
            let (on_new, fetched) = (do_reload.clone(), fetched.clone());
            let limits = settings.limits.load();
            let mut etag = etags.get(&b.name).cloned().flatten();
            let state = Arc::downgrade(&running.state);
            std::thread::Builder::new()
                .name("arbiter-bundle-poll".into())
                .spawn(move || {
                    loop {
                        // Without a policy, try again soon.
                        let awaiting = state.upgrade().is_some_and(|s| {
                            s.awaiting_policy.load(std::sync::atomic::Ordering::Acquire)
                        });
                        let delay = b.next_delay();
                        std::thread::sleep(if awaiting {
                            delay.min(AWAITING_RETRY)
                        } else {
                            delay
                        });
                        let metrics = state.upgrade().map(|s| s.metrics.clone());
                        if let Some(m) = &metrics {
                            m.opa.bundle_request(&b.name);
                        }
                        let got = download(&b, etag.as_deref());
                        if let Some(m) = &metrics {
                            match &got {
                                Ok(f) => m.opa.bundle_response(
                                    &b.name,
                                    matches!(f, Fetched::New { .. }),
                                ),
                                Err(e) => m.opa.bundle_failed(&b.name, "bundle_error", e),
                            }
                        }
                        match got {
                            Ok(Fetched::Unchanged) => {}
                            Ok(Fetched::New { body, etag: e }) => {
                                if let Some(delta) = delta_bundle(&b, &body, &limits) {
                                    // OPA's delta bundle: applied to the active data, not
                                    // kept as the snapshot the next full build reads.
                                    etag = e;
                                    let Some(s) = state.upgrade() else {
                                        return;
                                    };
                                    apply_delta(&s, &b.name, delta);
                                    continue;
                                }
                                if let Ok(mut g) = fetched.lock() {
                                    g.insert(b.name.clone(), body);
                                }
                                etag = e;
                                if !on_new(&format!("a new bundle {}", b.name), Some(&b.name)) {
                                    return;
                                }
                            }
                            Err(e) => tracing::warn!(
                                event = "bundle_poll_failed",
                                bundle = %b.name,
                                error = %e,
                                "bundle {} poll failed (still serving the last good set): {e}",
                                b.name
                            ),
                        }
                    }
                })
                .context("cannot start the bundle poller")?;
        }
        if let Some((paths, interval, why, seen)) = watcher {
            let on_change = do_reload.clone();
            std::thread::Builder::new()
                .name("arbiter-watch".into())
                .spawn(move || {
                    arbiter_ext_authz::reload::watch(paths, interval, seen, || {
                        on_change(why, None)
                    })
                })
                .context("cannot start the file watcher")?;
        }
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            if let Ok(mut hup) = signal(SignalKind::hangup()) {
                let on_hup = do_reload.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        let f = on_hup.clone();
                        let _ = tokio::task::spawn_blocking(move || f("SIGHUP", None)).await;
                    }
                });
            }
        }
        // Every handler is installed: only now say that the server is up.
        let stop = shutdown_signal();
        let from = settings
            .policies
            .iter()
            .map(|p| p.display().to_string())
            .chain(settings.bundles.iter().map(|b| format!("bundle {}", b.location)))
            .collect::<Vec<_>>()
            .join(", ");
        tracing::info!(
            event = "start",
            path = %settings.path,
            from = %from,
            modules,
            revision = %revision,
            engine = %engine,
            runtime = %runtime_name,
            "serving `{}` from {from} ({modules} modules, revision {revision}; {engine}; {runtime_name})",
            settings.path,
        );
        let grpc = running
            .grpc_addr
            .map_or(settings.grpc_addr.clone(), |a| a.to_string());
        let http = running
            .http_addr
            .map_or(settings.http_addr.clone(), |a| a.to_string());
        tracing::info!(
            event = "listening",
            grpc_addr = %grpc,
            http_addr = %http,
            "gRPC ext_authz on {grpc}, HTTP (health, metrics, Data API) on {http}"
        );
        if let Some(a) = running.diagnostic_addr {
            tracing::info!(event = "listening", diagnostic_addr = %a, "diagnostic (health, metrics) on {a}");
        }
        if let Some(a) = running.http_authz_addr {
            tracing::info!(event = "listening", http_authz_addr = %a, "HTTP ext_authz on {a}");
        }
        if let Some(a) = running.http_addr
            && !a.ip().is_loopback()
            && settings.authorization.is_none()
            && !api_access(&settings).mtls_callers
        {
            tracing::warn!(
                event = "loopback_only",
                http_addr = %a,
                "the Data API and /metrics on {a} answer loopback callers only \
                 (--authorization=basic with a system.authz policy, mTLS with --allowed-caller, \
                 or --authorization=off to serve everyone)"
            );
        }
        if settings.ui
            && let Some(a) = running.http_addr
        {
            tracing::info!(
                event = "listening",
                "audit dashboard on {}://{a}/ui/",
                if settings.tls.is_some() {
                    "https"
                } else {
                    "http"
                }
            );
        }
        if let Some(why) = &awaiting {
            tracing::warn!(
                event = "awaiting_bundle",
                error = %why,
                "awaiting the bundle, denying every check and reporting NOT_SERVING until it loads: {why}"
            );
        }
        release_startup_code();
        running.wait_for_signal(stop).await?;
        tracing::info!(event = "stopped", "stopped");
        Ok(())
    });
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            tracing::error!(event = "fatal", error = %format!("{e:#}"), "{e:#}");
            Exit::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch folder with a `config.yaml`, removed when dropped.
    struct ConfigDir(arbiter_engine::scratch::ScratchDir);

    impl ConfigDir {
        fn new(name: &str) -> Self {
            ConfigDir(arbiter_engine::scratch::ScratchDir::new(&format!(
                "arbiter-serve-{name}-{}",
                std::process::id()
            )))
        }

        /// The settings `serve --config` reads from `yaml`.
        fn settings(&self, yaml: &str) -> Result<Settings, String> {
            let file = self.0.join("config.yaml");
            std::fs::write(&file, yaml).unwrap();
            Args {
                config: Some(file),
                ..Args::default()
            }
            .settings()
        }
    }

    /// Span export from the flags, arbiter's keys, or OPA's `distributed_tracing`; what arbiter
    /// cannot do (TLS to the collector, a blocking queue) is an error naming the key.
    #[test]
    fn tracing_comes_from_flags_keys_or_opas_distributed_tracing() {
        use arbiter_ext_authz::otel::Protocol;
        let flags = Args {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            otlp_protocol: Some("http/protobuf".into()),
            otlp_header: vec!["x-key=abc".into()],
            trace_sample_percentage: Some(25.0),
            ..Args::default()
        }
        .settings()
        .unwrap()
        .otlp
        .unwrap();
        assert_eq!(flags.protocol, Protocol::HttpProtobuf);
        assert_eq!(flags.headers, [("x-key".to_string(), "abc".to_string())]);
        assert!((flags.sample_ratio - 0.25).abs() < 1e-9);
        assert_eq!(flags.service_name, "arbiter");
        assert_eq!(Args::default().settings().unwrap().otlp, None);
        let orphan = Args {
            otlp_protocol: Some("grpc".into()),
            ..Args::default()
        };
        assert!(orphan.settings().unwrap_err().contains("--otlp-endpoint"));

        let dir = ConfigDir::new("tracing");
        let keys = dir
            .settings(
                "otlp-endpoint: http://c:4317\notlp-service-name: authz\notlp-headers: {x-a: b}\n",
            )
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(
            (keys.endpoint.as_str(), keys.protocol),
            ("http://c:4317", Protocol::Grpc)
        );
        assert_eq!(keys.service_name, "authz");
        assert_eq!(keys.headers, [("x-a".to_string(), "b".to_string())]);

        let opa = dir
            .settings(
                "distributed_tracing:\n  type: grpc\n  address: otel:4317\n  service_name: opa\n  sample_percentage: 10\n  resource: {service_namespace: mesh}\n  batch_span_processor_options: {max_queue_size: 100, batch_timeout_ms: 200}\n",
            )
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(opa.endpoint, "http://otel:4317");
        assert_eq!(opa.service_name, "opa");
        assert!((opa.sample_ratio - 0.1).abs() < 1e-9);
        assert_eq!(
            opa.resource,
            [("service.namespace".to_string(), "mesh".to_string())]
        );
        assert_eq!(
            (opa.max_queue, opa.delay),
            (100, Duration::from_millis(200))
        );
        // OPA's default address, and no `type`: no tracing (as OPA).
        let default = dir
            .settings("distributed_tracing: {type: http}\n")
            .unwrap()
            .otlp
            .unwrap();
        assert_eq!(
            (default.endpoint.as_str(), default.protocol),
            ("http://localhost:4317", Protocol::HttpProtobuf)
        );
        assert_eq!(
            dir.settings("distributed_tracing: {address: x:1}\n")
                .unwrap()
                .otlp,
            None
        );
        for (yaml, names) in [
            (
                "distributed_tracing: {type: grpc, encryption: tls}\n",
                "encryption",
            ),
            ("distributed_tracing: {type: zipkin}\n", "type"),
            (
                "distributed_tracing: {type: grpc, batch_span_processor_options: {blocking: true}}\n",
                "blocking",
            ),
            (
                "distributed_tracing: {type: grpc, sample_percentage: 150}\n",
                "percent",
            ),
            (
                "distributed_tracing: {type: grpc, exporter: x}\n",
                "exporter",
            ),
            ("otlp-endpoint: https://c:4317\n", "TLS"),
        ] {
            let e = dir.settings(yaml).unwrap_err();
            assert!(e.contains(names), "{yaml}: {e}");
        }
    }

    /// `--shadow` and the `shadow` key (paths relative to the file); the shadow's settings are
    /// the live ones with its policies and no bundles.
    #[test]
    fn the_shadow_set_comes_from_the_flag_or_the_file() {
        let dir = ConfigDir::new("shadow");
        let s = dir
            .settings("policies: live\nshadow: [next, more]\n")
            .unwrap();
        assert_eq!(s.shadow, [dir.0.join("next"), dir.0.join("more")]);
        let shadow = shadow_settings(&s).unwrap();
        assert_eq!(shadow.policies, s.shadow);
        assert_eq!(
            (shadow.path.as_str(), shadow.bundles.len()),
            (s.path.as_str(), 0)
        );
        let file = dir.0.join("config.yaml");
        let flagged = Args {
            config: Some(file),
            shadow: vec![PathBuf::from("flag")],
            ..Args::default()
        }
        .settings()
        .unwrap();
        assert_eq!(flagged.shadow, [PathBuf::from("flag")]);
        assert!(shadow_settings(&dir.settings("policies: live\n").unwrap()).is_none());
    }

    /// `--cel-cost-limit` and the `cel-cost-limit` key: the default budget, a flag over the
    /// file, and 0 for none (then only the deadline stops a CEL evaluation).
    #[test]
    fn the_cel_cost_limit_comes_from_the_flag_or_the_file() {
        let dir = ConfigDir::new("cost");
        let default = Args::default().settings().unwrap();
        assert_eq!(
            default.cel_cost_limit,
            Some(arbiter_engine::cel::DEFAULT_COST_LIMIT)
        );
        let from_file = dir.settings("cel-cost-limit: 0\n").unwrap();
        assert_eq!(from_file.cel_cost_limit, None);
        let flag = Args {
            config: Some(dir.0.join("config.yaml")),
            cel_cost_limit: Some(5000),
            ..Args::default()
        };
        assert_eq!(flag.settings().unwrap().cel_cost_limit, Some(5000));
    }

    #[test]
    fn flags_override_file_and_opa_config_is_read() {
        let dir = ConfigDir::new("cfg");
        let file = dir.0.join("config.yaml");
        std::fs::write(
            &file,
            "plugins:\n  envoy_ext_authz_grpc:\n    addr: :9292\n    path: envoy/authz/result\n    dry-run: true\ndecision-log: '-'\neval-timeout: 20ms\npolicies: [p1, p2]\n",
        )
        .unwrap();
        let args = Args {
            config: Some(file),
            http_addr: Some("127.0.0.1:0".into()),
            ..Args::default()
        };
        let s = args.settings().unwrap();
        assert_eq!(s.grpc_addr, ":9292");
        assert_eq!(s.http_addr, "127.0.0.1:0");
        assert_eq!(s.path, "envoy/authz/result");
        assert!(s.dry_run);
        assert!(s.decision_log.as_ref().is_some_and(|l| l.stdout));
        assert_eq!(s.eval_timeout, Duration::from_millis(20));
        assert_eq!(s.policies, vec![dir.0.join("p1"), dir.0.join("p2")]);

        let args = Args {
            config: args.config.clone(),
            path: Some("x/y".into()),
            paths: vec!["here".into()],
            ..Args::default()
        };
        let s = args.settings().unwrap();
        assert_eq!(s.path, "x/y");
        assert_eq!(s.policies, vec![PathBuf::from("here")]);
    }

    /// OPA's `services`, `bundles` and `keys` resolve as OPA resolves them (issue 25, items
    /// 1–3 and 7), and what arbiter does not do is refused by name.
    #[test]
    fn opa_bundles_resolve_as_opa_and_unsupported_keys_are_named() {
        let dir = ConfigDir::new("bundles");
        let settings = |yaml: &str| dir.settings(yaml);
        let base = "services:\n  controller:\n    url: https://bundles.example/v1/\n    headers: {X-Tenant: acme}\n    credentials: {bearer: {token: t0k}}\nkeys:\n  global_key: {key: s3cret, algorithm: HS256}\n";
        let s = settings(&format!(
            "{base}bundles:\n  envoy/authz:\n    service: controller\n    signing: {{keyid: global_key, exclude_files: [\"*.md\"]}}\n  roles:\n    resource: roles.tar.gz\n    polling: {{min_delay_seconds: 5, max_delay_seconds: 9}}\n"
        ))
        .unwrap();
        assert!(
            s.policies.is_empty(),
            "bundles replace the bundled policies"
        );
        let [authz, roles] = s.bundles.as_slice() else {
            panic!("two bundles: {:?}", s.bundles)
        };
        // `resource` defaults to bundles/<name>; a bundle without `service` takes the only one.
        assert_eq!(
            authz.location,
            "https://bundles.example/v1/bundles/envoy/authz"
        );
        assert_eq!(roles.location, "https://bundles.example/v1/roles.tar.gz");
        let auth = authz.auth.request_headers().unwrap();
        assert_eq!(
            auth,
            [
                ("X-Tenant".to_string(), "acme".to_string()),
                ("Authorization".to_string(), "Bearer t0k".to_string())
            ]
        );
        assert_eq!(roles.auth, authz.auth);
        // OPA's default polling, and the configured one; each delay falls inside it.
        assert_eq!(authz.polling, OPA_POLLING);
        assert_eq!(
            roles.polling,
            (Duration::from_secs(5), Duration::from_secs(9))
        );
        for _ in 0..20 {
            let d = roles.next_delay();
            assert!(
                d >= Duration::from_secs(5) && d <= Duration::from_secs(9),
                "{d:?}"
            );
        }
        // Signing: the configured key id and the key set; `keys` alone verify signed bundles
        // and let unsigned ones load.
        let v = authz.verification.as_ref().unwrap();
        assert_eq!(v.key_id, "global_key");
        assert_eq!(v.keys["global_key"].algorithm, "HS256");
        assert_eq!(v.exclude_files, vec!["*.md".to_string()]);
        assert!(!v.unsigned_allowed);
        let v = roles.verification.as_ref().unwrap();
        assert!(v.key_id.is_empty() && v.unsigned_allowed);

        for (yaml, want) in [
            (
                "bundles:\n  a:\n    service: controller\n    signing: {keyid: other}\n",
                "bundles.a.signing.keyid: key id `other` is not in `keys`",
            ),
            (
                "bundles:\n  a:\n    service: nope\n",
                "bundles.a.service: service name \"nope\" not found",
            ),
            (
                "bundles:\n  a:\n    polling: {min_delay_seconds: 9, max_delay_seconds: 5}\n",
                "max polling delay must be >= min polling delay",
            ),
            (
                "bundles:\n  a:\n    polling: {min_delay_seconds: 9}\n",
                "polling configuration missing 'max_delay_seconds'",
            ),
            (
                "bundles:\n  a:\n    polling: {long_polling_timeout_seconds: 9}\n",
                "long polling is not supported",
            ),
            (
                "bundles:\n  a:\n    trigger: manual\n",
                "bundles.a.trigger: `manual` is not supported",
            ),
            (
                "bundles:\n  a:\n    persist: true\n",
                "bundles.a.persist: not supported",
            ),
        ] {
            let e = settings(&format!("{base}{yaml}")).unwrap_err();
            assert!(e.contains(want), "{yaml}: `{e}` lacks `{want}`");
        }
        for (service, want) in [
            (
                "credentials: {s3_signing: {}}",
                "services.controller.credentials.s3_signing: not supported",
            ),
            (
                "credentials: {oauth2: {token_url: http://x, client_id: a, client_secret: b, grant_type: jwt_bearer}}",
                "grant_type: `jwt_bearer` is not supported",
            ),
            (
                "credentials: {oauth2: {client_id: a, client_secret: b}}",
                "credentials.oauth2.token_url: missing",
            ),
            (
                "credentials: {bearer: {token: a}, client_tls: {cert: c.pem, private_key: k.pem}}",
                "a maximum of one auth method",
            ),
            (
                "credentials: {bearer: {token: a, token_path: b}}",
                "either the \"token\" or \"token_path\" field",
            ),
            (
                "credentails: {bearer: {token: a}}",
                "services.controller: unknown field `credentails`",
            ),
            ("headers: {X-A: \"1\\r\\nX-Admin: yes\"}", "line break"),
        ] {
            let e = settings(&format!(
                "services:\n  controller:\n    url: http://127.0.0.1:1\n    {service}\nbundles:\n  a: {{}}\n"
            ))
            .unwrap_err();
            assert!(e.contains(want), "{service}: `{e}` lacks `{want}`");
        }
    }

    /// The load limits come from `limits:` in the config, and a flag overrides its key; a set
    /// past one is not served (issue 18 item 7).
    #[test]
    fn load_limits_from_the_config_and_the_flags() {
        let dir = ConfigDir::new("loadlimits");
        let policies = dir.0.join("p");
        std::fs::create_dir_all(&policies).unwrap();
        std::fs::write(policies.join("a.rego"), "package a\nallow := true\n").unwrap();
        std::fs::write(policies.join("b.rego"), "package b\nallow := true\n").unwrap();
        let file = dir.0.join("config.yaml");
        std::fs::write(
            &file,
            "limits: {max_modules: 1, max_data_file_bytes: 1MiB, max_bundle_bytes: 2MB}\n",
        )
        .unwrap();
        let args = Args {
            config: Some(file),
            paths: vec![policies.clone()],
            ..Args::default()
        };
        let s = args.settings().unwrap();
        assert_eq!(s.limits.max_modules, 1);
        assert_eq!(s.limits.max_data_file_bytes, 1 << 20);
        assert_eq!(s.limits.max_bundle_bytes, 2_000_000);
        let e = authorizer(&s).map(|_| ()).unwrap_err();
        assert!(
            e.contains("2 policy files, over the limit of 1 (raise it with --max-modules"),
            "{e}"
        );
        let args = Args {
            limits: crate::load_limits::LoadLimitArgs {
                max_modules: Some(2),
                ..Default::default()
            },
            ..args
        };
        let s = args.settings().unwrap();
        assert_eq!(s.limits.max_modules, 2);
        assert_eq!(s.limits.max_data_file_bytes, 1 << 20);
        assert!(authorizer(&s).is_ok());
    }

    /// OPA-Envoy's other plugin keys and OPA's `status` and `labels` (issue 25, item 7): each
    /// takes effect or is refused by name.
    #[test]
    fn opa_plugin_status_and_labels_keys() {
        let dir = ConfigDir::new("plugin");
        let settings = |yaml: &str| dir.settings(yaml);
        let s = settings(
            "plugins:\n  envoy_ext_authz_grpc:\n    grpc-max-recv-msg-size: 1048576\n    grpc-max-send-msg-size: 65536\n    enable-performance-metrics: true\n    enable-reflection: false\nstatus: {console: true, prometheus: true}\nlabels: {region: eu-1}\n",
        )
        .unwrap();
        assert_eq!(s.limits.max_request_bytes, 1 << 20);
        assert_eq!(s.limits.max_response_bytes, 65536);
        assert_eq!(s.labels["region"], "eu-1");
        // `proto-descriptor` is read relative to the file; a missing or bad set fails the
        // start, naming the file.
        let s = settings("plugins: {envoy_ext_authz_grpc: {proto-descriptor: set.pb}}").unwrap();
        let pb = s.proto_descriptor.clone().unwrap();
        assert!(pb.ends_with("set.pb") && pb.is_absolute(), "{pb:?}");
        let e = authorizer(&s).unwrap_err();
        assert!(
            e.starts_with("--proto-descriptor ") && e.contains("set.pb"),
            "{e}"
        );
        std::fs::write(&pb, b"\x0a\x03abc").unwrap();
        let e = authorizer(&s).unwrap_err();
        assert!(e.contains("not a protobuf FileDescriptorSet"), "{e}");
        for (yaml, want) in [
            (
                "plugins: {envoy_ext_authz_grpc: {enable-reflection: true}}",
                "enable-reflection: gRPC reflection is not served",
            ),
            ("status: {service: s}", "status.service: status reports"),
            (
                "plugins: {envoy_ext_authz_grpc: {grpc-request-duration-seconds-buckets: [0.1, 0.01]}}",
                "give increasing, finite upper bounds",
            ),
            ("status: {consol: true}", "unknown field `consol`"),
        ] {
            let e = settings(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: `{e}` lacks `{want}`");
        }
    }

    #[test]
    fn defaults() {
        let s = Args::default().settings().unwrap();
        assert_eq!(s.grpc_addr, "127.0.0.1:9191");
        assert_eq!(s.http_addr, "127.0.0.1:8181");
        assert_eq!(s.path, "envoy/authz/allow");
        assert_eq!(s.eval_timeout, Duration::from_millis(50));
        assert!(s.policies[0].ends_with("policies"));
    }
}

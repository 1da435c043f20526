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
use arbiter_engine::identity::{IdentityOptions, SpiffeId};
use arbiter_engine::input::InputOptions;
use arbiter_engine::path::PathPolicy;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, RegoVersion};
use arbiter_ext_authz::decision_log::DecisionLogConfig;
use arbiter_ext_authz::tls::TlsSettings;
use arbiter_ext_authz::{ListenAddr, ServeOptions, ServerConfig};
use serde_json::Value as Json;

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
    /// Policy files or folders (default: the bundled `policies/`).
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Policy file or folder (repeatable; the same as a positional path).
    #[arg(long = "policies", value_name = "PATH")]
    pub policies: Vec<PathBuf>,
    /// YAML configuration file; flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// gRPC listener: `host:port` or `unix:///path` [default: 127.0.0.1:9191].
    #[arg(long, value_name = "ADDR")]
    pub grpc_addr: Option<String>,
    /// HTTP listener for health, metrics and the Data API [default: 127.0.0.1:8181].
    #[arg(long, value_name = "ADDR")]
    pub http_addr: Option<String>,
    /// Decision path, as OPA-Envoy's `path` [default: envoy/authz/allow].
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    #[command(flatten)]
    pub log: crate::logconfig::LogArgs,
    /// Answer every check with OK but log the real decision.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not parse request bodies (no `parsed_body`/`truncated_body` in the input).
    #[arg(long)]
    pub skip_request_body_parse: bool,
    /// Accept pre-1.0 Rego syntax.
    #[arg(long)]
    pub v0_compatible: bool,
    /// Deadline for one decision, e.g. `50ms` [default: 50ms].
    #[arg(long, value_name = "DURATION")]
    pub eval_timeout: Option<String>,
    /// Evaluation threads; 0 evaluates on the server's own threads, saving two hand-offs per
    /// check (the engines' time limits still apply) [default: 0].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
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
    /// `http(s)://` URL polled with ETags.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub bundle: Option<String>,
    /// How often a bundle URL is polled [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub bundle_poll: Option<String>,
    /// Verify bundle signatures with this key: a PEM public key or certificate file, or an
    /// HMAC secret. A bundle without a valid signature is then refused.
    #[arg(long, value_name = "KEY")]
    pub verification_key: Option<String>,
    /// The key id signatures must name (`kid`).
    #[arg(long, value_name = "ID")]
    pub verification_key_id: Option<String>,
    /// The signature algorithm [default: RS256].
    #[arg(long, value_name = "ALG")]
    pub verification_alg: Option<String>,
    /// The scope signatures must carry.
    #[arg(long, value_name = "SCOPE")]
    pub verification_scope: Option<String>,
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

/// The settings after flags, file and defaults are combined.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub policies: Vec<PathBuf>,
    pub grpc_addr: String,
    pub http_addr: String,
    pub path: String,
    pub decision_log: Option<DecisionLogConfig>,
    pub limits: arbiter_engine::limits::Limits,
    pub dry_run: bool,
    pub skip_request_body_parse: bool,
    pub v0_compatible: bool,
    pub eval_timeout: Duration,
    pub workers: usize,
    pub queue: usize,
    pub path_normalization: PathNormalization,
    /// `(trust domain, bundle file)` pairs.
    pub trust_bundles: Vec<(String, PathBuf)>,
    pub trust_xfcc_by: Option<String>,
    pub tls: Option<TlsSettings>,
    pub watch: Option<Duration>,
    pub reload_require_tests: bool,
    /// A bundle file, folder or URL.
    pub bundle: Option<String>,
    pub bundle_poll: Duration,
    pub verification: Option<arbiter_engine::bundle::Verification>,
    pub istio: arbiter_engine::istio::IstioOptions,
    pub ui: bool,
    pub ui_token_file: Option<PathBuf>,
    pub authentication: AuthenticationArg,
    pub authorization: Option<AuthorizationArg>,
}

pub use arbiter_engine::units::parse_duration;

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
    /// Combine flags, the config file and defaults.
    pub fn settings(&self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(p) => crate::config::ConfigFile::read(p)?,
            None => crate::config::ConfigFile::default(),
        };
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
        // A bundle: the flag, or OPA's `bundles` (the first) with its service and signing key.
        let mut bundle = self.bundle.clone();
        let mut verification_key = self.verification_key.clone();
        let mut verification_key_id = self.verification_key_id.clone();
        let mut verification_alg = self.verification_alg.clone();
        let mut verification_scope = self.verification_scope.clone();
        if bundle.is_none()
            && let Some(bundles) = &file.bundles
            && let Some((_, b)) = bundles.iter().next()
        {
            let resource = b
                .resource
                .clone()
                .unwrap_or_else(|| "bundles/bundle.tar.gz".into());
            let base_url = b.service.as_deref().and_then(|name| {
                crate::logconfig::opa_service(file.services.as_ref(), Some(name))
                    .and_then(|s| s.get("url"))
                    .and_then(Json::as_str)
                    .map(str::to_string)
            });
            bundle = Some(match base_url {
                Some(u) => format!(
                    "{}/{}",
                    u.trim_end_matches('/'),
                    resource.trim_start_matches('/')
                ),
                None => resource,
            });
            if let Some(signing) = &b.signing {
                let keyid = signing.keyid.clone();
                if let (Some(id), Some(keys)) = (&keyid, &file.keys)
                    && let Some(k) = keys.get(id)
                {
                    verification_key = verification_key.or_else(|| k.key.clone());
                    verification_alg = verification_alg.or_else(|| k.algorithm.clone());
                    verification_scope = verification_scope.or_else(|| k.scope.clone());
                }
                verification_key_id = verification_key_id.or(keyid);
                verification_scope = verification_scope.or_else(|| signing.scope.clone());
            }
        }
        let verification = match verification_key {
            None => None,
            Some(k) => Some(arbiter_engine::bundle::Verification {
                key_id: verification_key_id.unwrap_or_default(),
                algorithm: verification_alg.unwrap_or_else(|| "RS256".into()),
                key: crate::build::key_material(&k)?,
                scope: verification_scope.unwrap_or_default(),
            }),
        };
        if policies.is_empty() && bundle.is_none() {
            policies.push(bundled_policies());
        }
        let mut limits = file.limits.unwrap_or_default();
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
        let mut trust_bundles = Vec::new();
        for spec in &self.trust_bundle {
            let (td, file) = spec
                .split_once('=')
                .ok_or_else(|| format!("--trust-bundle `{spec}` is not TD=FILE"))?;
            trust_bundles.push((td.to_string(), PathBuf::from(file)));
        }
        if self.trust_bundle.is_empty()
            && let Some(m) = &file.trust_bundles
        {
            for (td, f) in m {
                trust_bundles.push((td.clone(), base.join(f)));
            }
        }
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
        Ok(Settings {
            trust_bundles,
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
            bundle,
            bundle_poll: match self.bundle_poll.clone() {
                Some(p) => parse_duration(&p)?,
                None => Duration::from_secs(30),
            },
            verification,
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
            v0_compatible: self.v0_compatible || file.v0_compatible.unwrap_or(false),
            eval_timeout,
            workers: number(self.workers, "workers", &file.workers, 0)?,
            queue: number(self.queue, "queue", &file.queue, 1024)?.max(1),
            path_normalization,
        })
    }
}

/// Load policies and build the authorizer the settings describe.
/// The latest bytes of a bundle fetched from a URL (shared with the poller).
pub type FetchedBundle = std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>;

pub fn authorizer(s: &Settings) -> Result<Authorizer, String> {
    authorizer_with(s, None)
}

/// The policy sources: the folders and files, plus the bundle (a file, a folder, or the bytes
/// last fetched from its URL), verified when a key is configured.
fn sources(
    s: &Settings,
    fetched: Option<&FetchedBundle>,
) -> Result<arbiter_engine::PolicySources, String> {
    let mut sources = if s.policies.is_empty() {
        arbiter_engine::PolicySources::default()
    } else {
        arbiter_engine::PolicySources::discover(&s.policies).map_err(|e| e.to_string())?
    };
    if let Some(b) = &s.bundle {
        let bundle = if b.starts_with("http://") || b.starts_with("https://") {
            let bytes = fetched
                .and_then(|f| f.lock().ok().and_then(|g| g.clone()))
                .ok_or_else(|| format!("{b}: the bundle has not been fetched"))?;
            let files = arbiter_engine::bundle::untar(&bytes).map_err(|e| format!("{b}: {e}"))?;
            arbiter_engine::bundle::from_files(files, b, s.verification.as_ref())
                .map_err(|e| format!("{b}: {e}"))?
        } else {
            arbiter_engine::bundle::load(Path::new(b), s.verification.as_ref())?
        };
        sources.extend(bundle.sources);
    }
    Ok(sources)
}

pub fn authorizer_with(
    s: &Settings,
    fetched: Option<&FetchedBundle>,
) -> Result<Authorizer, String> {
    let options = LoadOptions {
        rego_version: if s.v0_compatible {
            RegoVersion::V0Compatible
        } else {
            RegoVersion::V1
        },
        include_tests: false,
        eval_timeout: Some(s.eval_timeout),
        istio: s.istio.clone(),
        strict_builtin_errors: true,
    };
    let set =
        PolicySet::from_sources(&sources(s, fetched)?, &options).map_err(|e| e.to_string())?;
    let path = DataRef::parse(&s.path).map_err(|e| e.to_string())?;
    let mut identity = IdentityOptions::default();
    for (td, file) in &s.trust_bundles {
        let pem = std::fs::read_to_string(file)
            .map_err(|e| format!("--trust-bundle {td}={}: {e}", file.display()))?;
        identity
            .add_bundle_pem(td, &pem)
            .map_err(|e| format!("--trust-bundle {td}={}: {e}", file.display()))?;
    }
    if let Some(hop) = &s.trust_xfcc_by {
        identity.trusted_xfcc_hop = Some(
            SpiffeId::parse_workload(hop).map_err(|e| format!("--trust-xfcc-by `{hop}`: {e}"))?,
        );
    }
    for w in set.warnings() {
        eprintln!("arbiter: {}", crate::check::warning(w));
    }
    if let Err(reason) = set.check_entrypoint(&path) {
        eprintln!(
            "arbiter: warning: {reason}; every check will be denied until a policy defines it"
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
            ..InputOptions::with_limits(&s.limits)
        },
    )
    .with_identity_options(identity))
}

/// How often a bundle URL is tried while the server has no policy.
const AWAITING_RETRY: Duration = Duration::from_secs(2);

/// What serves while a bundle URL has not been loaded: no policy at all (not the local
/// policies alone, which would be a partial policy), so every check is denied with
/// `no_policy`.
fn awaiting_bundle(s: &Settings) -> Result<Authorizer, String> {
    let nothing = Settings {
        policies: Vec::new(),
        bundle: None,
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

/// The server configuration the settings describe.
pub fn server_config(s: &Settings) -> Result<ServerConfig, String> {
    Ok(ServerConfig {
        grpc: s.grpc_addr.parse::<ListenAddr>()?,
        http: Some(s.http_addr.parse::<ListenAddr>()?),
        options: ServeOptions {
            dry_run: s.dry_run,
            deadline: s.eval_timeout,
            labels: InstanceLabels {
                id: uuid::Uuid::new_v4().to_string(),
                version: env!("CARGO_PKG_VERSION").to_string(),
            },
            api: api_access(s),
        },
        workers: s.workers,
        queue: s.queue,
        decision_log: s.decision_log.clone(),
        tls: s.tls.clone(),
        limits: s.limits,
        ui: ui_dashboard(s)?,
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
    let settings = match args.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("arbiter: {e}");
            return Exit::Usage;
        }
    };
    // A bundle URL is fetched before serving. If it cannot be fetched or loaded, the server
    // starts anyway, as OPA does: every check is denied (`no_policy`) and health says
    // NOT_SERVING until the poller loads a good bundle.
    let fetched: FetchedBundle = Default::default();
    let mut etag: Option<String> = None;
    let url_bundle = settings.bundle.clone().filter(|b| b.starts_with("http"));
    let mut awaiting: Option<String> = None;
    if let Some(url) = url_bundle.as_deref() {
        match arbiter_ext_authz::fetch::get(url, None, None, Duration::from_secs(30)) {
            Ok(arbiter_ext_authz::fetch::Fetched::New { body, etag: e }) => {
                if let Ok(mut g) = fetched.lock() {
                    *g = Some(body);
                }
                etag = e;
            }
            Ok(arbiter_ext_authz::fetch::Fetched::Unchanged) => {
                awaiting = Some(format!("{url}: unexpected 304 without an ETag"));
            }
            Err(e) => awaiting = Some(format!("cannot fetch the bundle: {e}")),
        }
    }
    let loaded = awaiting
        .is_none()
        .then(|| authorizer_with(&settings, Some(&fetched)));
    let authorizer = match loaded {
        Some(Ok(a)) => a,
        Some(Err(e)) if url_bundle.is_none() => {
            eprintln!("{e}");
            return Exit::Failed;
        }
        other => {
            if let Some(Err(e)) = other {
                awaiting = Some(e);
            }
            match awaiting_bundle(&settings) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("{e}");
                    return Exit::Failed;
                }
            }
        }
    };
    let config = match server_config(&settings) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("arbiter: {e}");
            return Exit::Usage;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("arbiter-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("arbiter: cannot start the runtime: {e}");
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
        // Reloads: on SIGHUP, and on file changes with --watch; one at a time.
        let build: arbiter_ext_authz::reload::Build = {
            let (s, f) = (settings.clone(), fetched.clone());
            Arc::new(move || validated_authorizer(&s, Some(&f)))
        };
        let lock = Arc::new(std::sync::Mutex::new(()));
        let do_reload = {
            let state = Arc::downgrade(&running.state);
            let (build, lock) = (build.clone(), lock.clone());
            move |why: &str| -> bool {
                let Some(state) = state.upgrade() else {
                    return false;
                };
                let _one = lock.lock();
                match arbiter_ext_authz::reload::reload(&state, &build) {
                    Ok(rev) => eprintln!("arbiter: reloaded ({why}): revision {rev}"),
                    Err(e) => eprintln!(
                        "arbiter: reload ({why}) failed, still serving revision {}:\n{e}",
                        state.authorizer.load().policies().revision()
                    ),
                }
                true
            }
        };
        if let Some(url) = settings.bundle.clone().filter(|b| b.starts_with("http")) {
            // Poll with the ETag; a new bundle goes through the same validated reload.
            let (on_new, fetched, every) =
                (do_reload.clone(), fetched.clone(), settings.bundle_poll);
            let mut etag = etag.clone();
            let state = Arc::downgrade(&running.state);
            std::thread::Builder::new()
                .name("arbiter-bundle-poll".into())
                .spawn(move || {
                    loop {
                        // Without a policy, try again soon.
                        let awaiting = state.upgrade().is_some_and(|s| {
                            s.awaiting_policy.load(std::sync::atomic::Ordering::Acquire)
                        });
                        std::thread::sleep(if awaiting {
                            every.min(AWAITING_RETRY)
                        } else {
                            every
                        });
                        match arbiter_ext_authz::fetch::get(
                            &url,
                            etag.as_deref(),
                            None,
                            Duration::from_secs(30),
                        ) {
                            Ok(arbiter_ext_authz::fetch::Fetched::Unchanged) => {}
                            Ok(arbiter_ext_authz::fetch::Fetched::New { body, etag: e }) => {
                                if let Ok(mut g) = fetched.lock() {
                                    *g = Some(body);
                                }
                                etag = e;
                                if !on_new("a new bundle") {
                                    return;
                                }
                            }
                            Err(e) => eprintln!(
                                "arbiter: bundle poll failed (still serving the last good set): {e}"
                            ),
                        }
                    }
                })
                .context("cannot start the bundle poller")?;
        }
        let mut watched = settings.policies.clone();
        if let Some(b) = settings.bundle.as_ref().filter(|b| !b.starts_with("http")) {
            watched.push(PathBuf::from(b));
        }
        if let Some(interval) = settings.watch {
            let paths = watched.clone();
            let on_change = do_reload.clone();
            std::thread::Builder::new()
                .name("arbiter-watch".into())
                .spawn(move || {
                    arbiter_ext_authz::reload::watch(paths, interval, || on_change("files changed"))
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
                        let _ = tokio::task::spawn_blocking(move || f("SIGHUP")).await;
                    }
                });
            }
        }
        // Every handler is installed: only now say that the server is up.
        let stop = shutdown_signal();
        eprintln!(
            "arbiter: serving `{}` from {} ({modules} modules, revision {revision}; {engine})",
            settings.path,
            settings
                .policies
                .iter()
                .map(|p| p.display().to_string())
                .chain(settings.bundle.iter().map(|b| format!("bundle {b}")))
                .collect::<Vec<_>>()
                .join(", "),
        );
        eprintln!(
            "arbiter: gRPC ext_authz on {}, HTTP (health, metrics, Data API) on {}",
            running
                .grpc_addr
                .map_or(settings.grpc_addr.clone(), |a| a.to_string()),
            running
                .http_addr
                .map_or(settings.http_addr.clone(), |a| a.to_string()),
        );
        if let Some(a) = running.http_addr
            && !a.ip().is_loopback()
            && settings.authorization.is_none()
            && !api_access(&settings).mtls_callers
        {
            eprintln!(
                "arbiter: the Data API and /metrics on {a} answer loopback callers only \
                 (--authorization=basic with a system.authz policy, mTLS with --allowed-caller, \
                 or --authorization=off to serve everyone)"
            );
        }
        if settings.ui
            && let Some(a) = running.http_addr
        {
            eprintln!(
                "arbiter: audit dashboard on {}://{a}/ui/",
                if settings.tls.is_some() {
                    "https"
                } else {
                    "http"
                }
            );
        }
        if let Some(why) = &awaiting {
            eprintln!(
                "arbiter: awaiting the bundle, denying every check and reporting NOT_SERVING until it loads: {why}"
            );
        }
        running.wait_for_signal(stop).await?;
        eprintln!("arbiter: stopped");
        Ok(())
    });
    match result {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("arbiter: {e:#}");
            Exit::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_and_opa_config_is_read() {
        let dir = std::env::temp_dir().join(format!("arbiter-serve-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
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
        assert_eq!(s.policies, vec![dir.join("p1"), dir.join("p2")]);

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

//! Decision-log settings of `arbiter serve`: flags, arbiter's config keys, and OPA's
//! `services` / `decision_logs` configuration, so an OPA config file keeps working.

use std::path::Path;
use std::time::Duration;

use arbiter_engine::DataRef;
use arbiter_ext_authz::decision_log::{
    DecisionLogConfig, FileSinkConfig, Fsync, LogTarget, NatsConfig, UploadConfig,
};

use crate::config::ConfigFile;
use crate::serve::parse_duration;

/// Whether a decision may go unaudited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuditMode {
    /// Log what can be logged; count what is dropped.
    BestEffort,
    /// Answer a request only once its event is written; deny it (`audit_unavailable`) when the
    /// event cannot be written within a second.
    Required,
}

#[derive(Debug, Default, Clone, clap::Args)]
pub struct LogArgs {
    /// Write decision events as JSON lines to this file (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub decision_log: Option<String>,
    /// Also upload decision events to this collector (OPA's format: gzip JSON arrays POSTed to
    /// the URL, e.g. `http://collector:8080/logs`).
    #[arg(long, value_name = "URL")]
    pub decision_log_url: Option<String>,
    /// Rotate the decision-log file at this size (`100MiB`, `10MB`, `500000`) [default: 100MiB].
    #[arg(long, value_name = "SIZE")]
    pub decision_log_max_size: Option<String>,
    /// Rotated decision-log files kept [default: 10].
    #[arg(long, value_name = "N")]
    pub decision_log_max_files: Option<u32>,
    /// When decision events are forced to disk: never, batch (after each batch of queued
    /// events) or always [default: batch].
    #[arg(long, value_name = "WHEN")]
    pub decision_log_fsync: Option<String>,
    /// Request headers erased from decision events, comma-separated; `""` erases none
    /// [default: authorization,proxy-authorization,cookie,x-api-key].
    #[arg(long, value_name = "NAMES")]
    pub decision_log_mask_headers: Option<String>,
    /// Events that may wait for the log writer [default: 10000].
    #[arg(long, value_name = "N")]
    pub decision_log_queue: Option<usize>,
    /// Also ship every event of the decision-log file (the spool) to NATS JetStream at this
    /// URL (`nats://host:4222`, comma-separated for a cluster), at least once, de-duplicated
    /// by the stream on `decision_id`. Needs `--decision-log FILE`.
    #[arg(long, value_name = "URL")]
    pub decision_log_nats: Option<String>,
    /// The subject events are published on [default: arbiter.decisions.<instance id>].
    #[arg(long, value_name = "SUBJECT")]
    pub decision_log_nats_subject: Option<String>,
    /// Create this JetStream stream (for `arbiter.decisions.>`) when it does not exist
    /// [default: a stream for the subject must exist].
    #[arg(long, value_name = "NAME")]
    pub decision_log_nats_stream: Option<String>,
    /// Replicas of a stream created with `--decision-log-nats-stream` [default: 1].
    #[arg(long, value_name = "N")]
    pub decision_log_nats_replicas: Option<usize>,
    /// A NATS credentials file (`.creds`: the user's JWT and NKey seed).
    #[arg(long, value_name = "FILE")]
    pub decision_log_nats_creds: Option<std::path::PathBuf>,
    /// CA certificates (PEM) that sign the NATS server's certificate (TLS required).
    #[arg(long, value_name = "FILE")]
    pub decision_log_nats_ca: Option<std::path::PathBuf>,
    /// `required`: deny a request whose decision event cannot be queued [default: best-effort].
    #[arg(long, value_enum, value_name = "MODE")]
    pub audit: Option<AuditMode>,
}

pub use arbiter_engine::units::parse_size;

/// Combine flags, arbiter's keys and OPA's `decision_logs` into a decision-log configuration;
/// `None` when no sink is configured.
pub fn decision_log_config(
    args: &LogArgs,
    file: &ConfigFile,
    base: &Path,
) -> Result<Option<DecisionLogConfig>, String> {
    let opa = file.decision_logs.clone();
    let mut config = DecisionLogConfig::none();
    // Where.
    let target = args
        .decision_log
        .clone()
        .or_else(|| file.decision_log.clone());
    match target.map(|t| LogTarget::parse(&t)) {
        Some(LogTarget::Stdout) => config.stdout = true,
        Some(LogTarget::File(p)) => {
            let p = if p.is_relative() && args.decision_log.is_none() {
                base.join(p)
            } else {
                p
            };
            config.file = Some(FileSinkConfig::new(p));
        }
        None => {}
    }
    let console = opa.as_ref().and_then(|o| o.console) == Some(true);
    if console {
        config.stdout = true;
    }
    let url = match args
        .decision_log_url
        .clone()
        .or_else(|| file.decision_log_url.clone())
    {
        Some(u) => Some((u, None)),
        None => {
            // OPA uploads to `decision_logs.service`, or to the only service there is.
            let named = opa.as_ref().and_then(|o| o.service.clone());
            let uploading = named.is_some() || (opa.is_some() && !console);
            match (uploading, file.service(named.as_deref())?) {
                (true, Some((name, svc))) => {
                    let base_url = svc
                        .url
                        .clone()
                        .ok_or_else(|| format!("service `{name}` has no `url`"))?;
                    let resource = opa
                        .as_ref()
                        .and_then(|o| o.resource.clone())
                        .unwrap_or_else(|| "/logs".into());
                    Some((
                        format!(
                            "{}/{}",
                            base_url.trim_end_matches('/'),
                            resource.trim_start_matches('/')
                        ),
                        Some(svc.auth(&name, base)?),
                    ))
                }
                (true, None) if named.is_some() => {
                    return Err(format!(
                        "decision_logs.service `{}` is not in `services`",
                        named.unwrap_or_default()
                    ));
                }
                _ => None,
            }
        }
    };
    if let Some((url, auth)) = url {
        let mut u = UploadConfig::new(url);
        u.auth = auth.unwrap_or_default();
        let reporting = opa
            .as_ref()
            .and_then(|o| o.reporting.clone())
            .unwrap_or_default();
        if let Some(n) = reporting.buffer_size_limit_events {
            u.buffer_events = usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
        if let Some(n) = reporting.max_delay_seconds {
            u.max_delay = Duration::from_secs(n.max(1));
        }
        if let Some(n) = reporting.upload_size_limit_bytes {
            // OPA's limit is on compressed bytes; decision events compress about 8:1.
            u.batch_bytes = usize::try_from(n.saturating_mul(8)).unwrap_or(usize::MAX);
        }
        if let Some(s) = &file.decision_log_upload_interval {
            u.max_delay = parse_duration(&s.to_string())?;
        }
        config.upload = Some(u);
    }
    // How.
    if let Some(f) = config.file.as_mut() {
        if let Some(s) = args
            .decision_log_max_size
            .clone()
            .or_else(|| file.decision_log_max_size.as_ref().map(ToString::to_string))
        {
            f.max_bytes = parse_size(&s)?;
        }
        match args.decision_log_max_files {
            Some(n) => f.max_files = n.max(1),
            None => {
                if let Some(n) = file.decision_log_max_files {
                    f.max_files = u32::try_from(n).unwrap_or(u32::MAX).max(1);
                }
            }
        }
        if let Some(s) = args
            .decision_log_fsync
            .clone()
            .or_else(|| file.decision_log_fsync.clone())
        {
            f.fsync = s.parse::<Fsync>()?;
        }
    }
    if let Some(list) = args
        .decision_log_mask_headers
        .clone()
        .or_else(|| file.decision_log_mask_headers.clone())
    {
        config.mask_headers = list
            .split(',')
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
    }
    if let Some(n) = args.decision_log_queue {
        config.queue = n.max(1);
    } else if let Some(n) = file.decision_log_queue {
        config.queue = usize::try_from(n).unwrap_or(usize::MAX).max(1);
    }
    let (mask, drop) = opa
        .as_ref()
        .map(|o| (o.mask_decision.clone(), o.drop_decision.clone()))
        .unwrap_or_default();
    for (key, value, slot) in [
        ("mask_decision", mask, &mut config.mask_decision),
        ("drop_decision", drop, &mut config.drop_decision),
    ] {
        if let Some(p) = value {
            *slot = DataRef::parse(&p).map_err(|e| format!("decision_logs.{key}: {e}"))?;
        }
    }
    let audit = match args.audit {
        Some(a) => a,
        None => match file.audit.as_deref() {
            None | Some("best-effort") => AuditMode::BestEffort,
            Some("required") => AuditMode::Required,
            Some(other) => {
                return Err(format!(
                    "`audit` must be best-effort or required, not `{other}`"
                ));
            }
        },
    };
    config.audit_required = audit == AuditMode::Required;
    if let Some(url) = args
        .decision_log_nats
        .clone()
        .or_else(|| file.decision_log_nats.clone())
    {
        if config.file.is_none() {
            return Err("--decision-log-nats needs --decision-log FILE: the file is the spool events are shipped from".into());
        }
        // An empty subject is filled in with the instance's id when the server starts.
        let mut n = NatsConfig::new(
            url,
            args.decision_log_nats_subject
                .clone()
                .or_else(|| file.decision_log_nats_subject.clone())
                .unwrap_or_default(),
        );
        n.stream = args
            .decision_log_nats_stream
            .clone()
            .or_else(|| file.decision_log_nats_stream.clone());
        n.replicas = args
            .decision_log_nats_replicas
            .or(file.decision_log_nats_replicas)
            .unwrap_or(1);
        // Files named in the configuration file are relative to it.
        n.creds = args
            .decision_log_nats_creds
            .clone()
            .or_else(|| file.decision_log_nats_creds.as_ref().map(|p| base.join(p)));
        n.ca = args
            .decision_log_nats_ca
            .clone()
            .or_else(|| file.decision_log_nats_ca.as_ref().map(|p| base.join(p)));
        let mut check = n.clone();
        if check.subject.is_empty() {
            check.subject = "arbiter.decisions.x".into();
        }
        check.validate()?;
        config.nats = Some(n);
    }
    let any_sink = config.file.is_some() || config.stdout || config.upload.is_some();
    if !any_sink {
        if config.audit_required {
            return Err(
                "--audit required needs a decision log (--decision-log or --decision-log-url)"
                    .into(),
            );
        }
        return Ok(None);
    }
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value as Json, json};

    fn config(j: Json) -> ConfigFile {
        ConfigFile::parse("test.yaml", &j.to_string()).unwrap()
    }

    /// `--decision-log-nats` needs the file it ships from; its settings from flags or keys,
    /// files relative to the configuration file; the subject is left for the instance id.
    #[test]
    fn nats_shipping_needs_the_file_and_reads_its_settings() {
        let no_file = LogArgs {
            decision_log_nats: Some("nats://127.0.0.1:4222".into()),
            ..LogArgs::default()
        };
        let e = decision_log_config(&no_file, &ConfigFile::default(), Path::new("")).unwrap_err();
        assert!(e.contains("needs --decision-log FILE"), "{e}");
        let args = LogArgs {
            decision_log: Some("/var/log/d.log".into()),
            decision_log_nats: Some("nats://a:4222,nats://b:4222".into()),
            decision_log_nats_stream: Some("DECISIONS".into()),
            ..LogArgs::default()
        };
        let c = decision_log_config(&args, &ConfigFile::default(), Path::new(""))
            .unwrap()
            .unwrap();
        let n = c.nats.unwrap();
        assert_eq!(n.url, "nats://a:4222,nats://b:4222");
        assert_eq!(
            (n.subject.as_str(), n.stream.as_deref()),
            ("", Some("DECISIONS"))
        );
        let keys = config(json!({
            "decision-log": "d.log",
            "decision-log-nats": "nats://n:4222",
            "decision-log-nats-subject": "audit.mesh",
            "decision-log-nats-creds": "nats.creds",
            "decision-log-nats-replicas": 3
        }));
        let n = decision_log_config(&LogArgs::default(), &keys, Path::new("/etc/arbiter"))
            .unwrap()
            .unwrap()
            .nats
            .unwrap();
        assert_eq!(n.subject, "audit.mesh");
        assert_eq!(n.replicas, 3);
        assert_eq!(
            n.creds.as_deref(),
            Some(Path::new("/etc/arbiter/nats.creds"))
        );
        let bad = LogArgs {
            decision_log_nats_subject: Some("a.*".into()),
            ..args
        };
        assert!(decision_log_config(&bad, &ConfigFile::default(), Path::new("")).is_err());
    }

    #[test]
    fn nothing_configured_is_no_log() {
        assert_eq!(
            decision_log_config(&LogArgs::default(), &ConfigFile::default(), Path::new("")),
            Ok(None)
        );
        let required = LogArgs {
            audit: Some(AuditMode::Required),
            ..LogArgs::default()
        };
        assert!(decision_log_config(&required, &ConfigFile::default(), Path::new("")).is_err());
    }

    #[test]
    fn flags_and_opa_config() {
        let args = LogArgs {
            decision_log: Some("/var/log/d.log".into()),
            decision_log_max_size: Some("1MiB".into()),
            decision_log_fsync: Some("always".into()),
            decision_log_mask_headers: Some("Authorization, X-Secret".into()),
            audit: Some(AuditMode::Required),
            ..LogArgs::default()
        };
        let file = config(json!({
            "services": [{"name": "acme", "url": "http://127.0.0.1:9000/v1/", "credentials": {"bearer": {"token": "t0k"}}}],
            "decision_logs": {
                "service": "acme",
                "resource": "/logs",
                "mask_decision": "custom/mask",
                "reporting": {"buffer_size_limit_events": 50, "max_delay_seconds": 3}
            }
        }));
        let c = decision_log_config(&args, &file, Path::new("/etc/arbiter"))
            .unwrap()
            .unwrap();
        let f = c.file.unwrap();
        assert_eq!(f.path, Path::new("/var/log/d.log"));
        assert_eq!((f.max_bytes, f.fsync), (1 << 20, Fsync::Always));
        assert_eq!(c.mask_headers, vec!["authorization", "x-secret"]);
        assert!(c.audit_required);
        let u = c.upload.unwrap();
        assert_eq!(u.url, "http://127.0.0.1:9000/v1/logs");
        assert_eq!(
            u.auth,
            arbiter_ext_authz::service::ServiceAuth::bearer("t0k")
        );
        assert_eq!((u.buffer_events, u.max_delay), (50, Duration::from_secs(3)));
        assert_eq!(c.mask_decision, DataRef::parse("custom/mask").unwrap());

        let c = decision_log_config(
            &LogArgs::default(),
            &config(json!({"decision-log": "logs/d.log", "decision_logs": {"console": true}})),
            Path::new("/etc/arbiter"),
        )
        .unwrap()
        .unwrap();
        assert!(c.stdout);
        assert_eq!(c.file.unwrap().path, Path::new("/etc/arbiter/logs/d.log"));
        assert_eq!(
            c.mask_headers,
            vec![
                "authorization",
                "proxy-authorization",
                "cookie",
                "x-api-key"
            ]
        );
    }
}

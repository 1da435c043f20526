//! OPA's and OPA-Envoy's Prometheus metric families, beside arbiter's own, so the dashboards and
//! alerts written for OPA-Envoy keep working: the names, labels and default buckets of
//! `grpc_request_duration_seconds{handler="check"}` (OPA-Envoy), `http_request_duration_seconds
//! {code,handler,method}` (OPA's server), `opa_info`, `plugin_status_gauge{name,status}`, the
//! bundle families of OPA's status plugin (`bundle_loaded_counter`,
//! `bundle_failed_load_counter`, `last_bundle_request`, `last_success_bundle_activation`,
//! `last_success_bundle_download`, `last_success_bundle_request`), and the `process_*` family.
//!
//! The gRPC histogram is atomics (it is on the decision path). The HTTP histograms and the
//! bundle states are behind short locks taken after a response is made or a bundle is handled,
//! never while a decision is being made.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use crate::metrics::{Histogram, escape};

/// OPA-Envoy's default `grpc-request-duration-seconds-buckets`.
pub const GRPC_BUCKETS: &[f64] = &[
    1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 3e-3, 5e-3, 0.1, 1.0,
];

/// OPA's default `http_request_duration_seconds` buckets.
pub const HTTP_BUCKETS: &[f64] = &[1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 0.01, 0.1, 1.0];

/// What OPA's status plugin reports of one bundle.
#[derive(Debug, Default, Clone)]
struct BundleState {
    loaded: u64,
    /// `(code, message)` → failures.
    failed: BTreeMap<(String, String), u64>,
    last_request_ns: Option<i128>,
    last_success_request_ns: Option<i128>,
    last_success_download_ns: Option<i128>,
    /// When, and which revision.
    last_success_activation: Option<(i128, String)>,
}

/// OPA's metric families.
#[derive(Debug)]
pub struct OpaMetrics {
    grpc: Histogram,
    http: Mutex<BTreeMap<(u16, &'static str, String), Histogram>>,
    bundles: Mutex<BTreeMap<String, BundleState>>,
    start_time: f64,
}

impl Default for OpaMetrics {
    fn default() -> Self {
        Self::new(&[])
    }
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl OpaMetrics {
    /// With OPA-Envoy's gRPC buckets, or `grpc_buckets` when given.
    pub fn new(grpc_buckets: &[f64]) -> Self {
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        OpaMetrics {
            grpc: Histogram::new(if grpc_buckets.is_empty() {
                GRPC_BUCKETS
            } else {
                grpc_buckets
            }),
            http: Mutex::default(),
            bundles: Mutex::default(),
            start_time: start,
        }
    }

    /// One Envoy check, answered after `ns`.
    pub fn grpc_check(&self, ns: u64) {
        self.grpc.observe(ns);
    }

    /// One HTTP request, answered with `code` after `ns`; `handler` is OPA's name for the
    /// route (`v1/data`, `health`, `metrics`, `catchall`).
    pub fn http_request(&self, code: u16, handler: &'static str, method: &str, ns: u64) {
        let method = match method {
            "GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS" => method,
            _ => "other",
        };
        let mut http = self.http.lock().unwrap_or_else(|e| e.into_inner());
        http.entry((code, handler, method.to_string()))
            .or_insert_with(|| Histogram::new(HTTP_BUCKETS))
            .observe(ns);
    }

    fn bundle<R>(&self, name: &str, f: impl FnOnce(&mut BundleState) -> R) -> R {
        let mut b = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        f(b.entry(name.to_string()).or_default())
    }

    /// A download of bundle `name` was asked for.
    pub fn bundle_request(&self, name: &str) {
        self.bundle(name, |b| b.last_request_ns = Some(now_ns()));
    }

    /// The server answered: new bytes (`downloaded`) or not modified.
    pub fn bundle_response(&self, name: &str, downloaded: bool) {
        let t = now_ns();
        self.bundle(name, |b| {
            b.last_success_request_ns = Some(t);
            if downloaded {
                b.last_success_download_ns = Some(t);
            }
        });
    }

    /// Bundle `name` at `revision` is serving.
    pub fn bundle_activated(&self, name: &str, revision: &str) {
        let t = now_ns();
        self.bundle(name, |b| {
            b.loaded += 1;
            b.last_success_activation = Some((t, revision.to_string()));
        });
    }

    /// Downloading or activating bundle `name` failed.
    pub fn bundle_failed(&self, name: &str, code: &str, message: &str) {
        let message: String = message.chars().take(200).collect();
        self.bundle(name, |b| {
            *b.failed.entry((code.to_string(), message)).or_default() += 1;
        });
    }

    /// OPA's `/v1/status` view of the bundles: by name, with `active_revision` and the times
    /// (RFC 3339) of the last request, successful request, download and activation.
    pub fn bundle_status(&self) -> serde_json::Value {
        let t = |ns: Option<i128>| {
            ns.map(arbiter_engine::record::rfc3339_nanos)
                .map_or(serde_json::Value::Null, serde_json::Value::from)
        };
        let bundles = self.bundles.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::Value::Object(
            bundles
                .iter()
                .map(|(name, b)| {
                    let (activated, revision) = match &b.last_success_activation {
                        Some((at, rev)) => (Some(*at), rev.clone()),
                        None => (None, String::new()),
                    };
                    (
                        name.clone(),
                        serde_json::json!({
                            "name": name,
                            "active_revision": revision,
                            "last_request": t(b.last_request_ns),
                            "last_successful_request": t(b.last_success_request_ns),
                            "last_successful_download": t(b.last_success_download_ns),
                            "last_successful_activation": t(activated),
                        }),
                    )
                })
                .collect(),
        )
    }

    /// The families, in the text exposition. `plugins` is each plugin's name and OPA status
    /// (`OK`, `NOT_READY`, `ERROR`).
    pub fn render(&self, out: &mut String, plugins: &[(&str, &str)]) {
        let _ = writeln!(
            out,
            "# HELP grpc_request_duration_seconds A histogram of duration for grpc authz requests."
        );
        let _ = writeln!(out, "# TYPE grpc_request_duration_seconds histogram");
        self.grpc
            .render(out, "grpc_request_duration_seconds", "handler=\"check\"");
        let _ = writeln!(
            out,
            "# HELP http_request_duration_seconds A histogram of duration for requests."
        );
        let _ = writeln!(out, "# TYPE http_request_duration_seconds histogram");
        {
            let http = self.http.lock().unwrap_or_else(|e| e.into_inner());
            for ((code, handler, method), h) in http.iter() {
                h.render(
                    out,
                    "http_request_duration_seconds",
                    &format!("code=\"{code}\",handler=\"{handler}\",method=\"{method}\""),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP opa_info Information about the OPA environment."
        );
        let _ = writeln!(out, "# TYPE opa_info gauge");
        let _ = writeln!(
            out,
            "opa_info{{version=\"arbiter-{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            out,
            "# HELP plugin_status_gauge Gauge for the plugin by status."
        );
        let _ = writeln!(out, "# TYPE plugin_status_gauge gauge");
        for (name, status) in plugins {
            let _ = writeln!(
                out,
                "plugin_status_gauge{{name=\"{name}\",status=\"{status}\"}} 1"
            );
        }
        let bundles = self
            .bundles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family(
            out,
            "bundle_loaded_counter",
            "counter",
            "Counter for the bundle loaded.",
        );
        for (name, b) in &bundles {
            let _ = writeln!(
                out,
                "bundle_loaded_counter{{name=\"{}\"}} {}",
                escape(name),
                b.loaded
            );
        }
        family(
            out,
            "bundle_failed_load_counter",
            "counter",
            "Counter for the failed bundle load.",
        );
        for (name, b) in &bundles {
            for ((code, message), n) in &b.failed {
                let _ = writeln!(
                    out,
                    "bundle_failed_load_counter{{code=\"{}\",message=\"{}\",name=\"{}\"}} {n}",
                    escape(code),
                    escape(message),
                    escape(name)
                );
            }
        }
        for (metric, help, pick) in [
            (
                "last_bundle_request",
                "Gauge for the last bundle request.",
                (|b: &BundleState| b.last_request_ns) as fn(&BundleState) -> Option<i128>,
            ),
            (
                "last_success_bundle_download",
                "Gauge for the last success bundle download.",
                |b: &BundleState| b.last_success_download_ns,
            ),
            (
                "last_success_bundle_request",
                "Gauge for the last success bundle request.",
                |b: &BundleState| b.last_success_request_ns,
            ),
        ] {
            family(out, metric, "gauge", help);
            for (name, b) in &bundles {
                if let Some(t) = pick(b) {
                    let _ = writeln!(out, "{metric}{{name=\"{}\"}} {t}", escape(name));
                }
            }
        }
        family(
            out,
            "last_success_bundle_activation",
            "gauge",
            "Gauge for the last success bundle activation.",
        );
        for (name, b) in &bundles {
            if let Some((t, rev)) = &b.last_success_activation {
                let _ = writeln!(
                    out,
                    "last_success_bundle_activation{{active_revision=\"{}\",name=\"{}\"}} {t}",
                    escape(rev),
                    escape(name)
                );
            }
        }
        self.render_process(out);
    }

    /// The `process_*` family, as Prometheus client libraries read it from `/proc/self`.
    fn render_process(&self, out: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        // utime and stime are fields 14 and 15 of stat (12 and 13 after the name); vsize 23,
        // rss 24 (in pages).
        let ticks = 100.0;
        let page = 4096.0;
        if let (Some(u), Some(s)) = (field(11), field(12)) {
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds."
            );
            let _ = writeln!(out, "# TYPE process_cpu_seconds_total counter");
            let _ = writeln!(out, "process_cpu_seconds_total {}", (u + s) / ticks);
        }
        if let Some(v) = field(20) {
            let _ = writeln!(
                out,
                "# HELP process_virtual_memory_bytes Virtual memory size in bytes."
            );
            let _ = writeln!(out, "# TYPE process_virtual_memory_bytes gauge");
            let _ = writeln!(out, "process_virtual_memory_bytes {v}");
        }
        if let Some(r) = field(21) {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes."
            );
            let _ = writeln!(out, "# TYPE process_resident_memory_bytes gauge");
            let _ = writeln!(out, "process_resident_memory_bytes {}", r * page);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let _ = writeln!(
                out,
                "# HELP process_open_fds Number of open file descriptors."
            );
            let _ = writeln!(out, "# TYPE process_open_fds gauge");
            let _ = writeln!(out, "process_open_fds {}", fds.count());
        }
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|line| line.starts_with("Max open files"))
                    .and_then(|line| line.split_whitespace().nth(3))
                    .and_then(|v| v.parse::<u64>().ok())
            });
        if let Some(m) = max_fds {
            let _ = writeln!(
                out,
                "# HELP process_max_fds Maximum number of open file descriptors."
            );
            let _ = writeln!(out, "# TYPE process_max_fds gauge");
            let _ = writeln!(out, "process_max_fds {m}");
        }
        let _ = writeln!(
            out,
            "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds."
        );
        let _ = writeln!(out, "# TYPE process_start_time_seconds gauge");
        let _ = writeln!(out, "process_start_time_seconds {}", self.start_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opa_families_render_with_opas_names_labels_and_buckets() {
        let m = OpaMetrics::default();
        m.grpc_check(2_000); // 2 µs
        m.http_request(200, "v1/data", "POST", 50_000);
        m.bundle_request("envoy/authz");
        m.bundle_response("envoy/authz", true);
        m.bundle_activated("envoy/authz", "r7");
        m.bundle_failed("roles", "bundle_error", "server replied with not found");
        let mut text = String::new();
        m.render(
            &mut text,
            &[("envoy_ext_authz_grpc", "OK"), ("bundle", "OK")],
        );
        for want in [
            "grpc_request_duration_seconds_bucket{handler=\"check\",le=\"0.000001\"} 0",
            "grpc_request_duration_seconds_bucket{handler=\"check\",le=\"0.000005\"} 1",
            "grpc_request_duration_seconds_bucket{handler=\"check\",le=\"+Inf\"} 1",
            "grpc_request_duration_seconds_count{handler=\"check\"} 1",
            "http_request_duration_seconds_bucket{code=\"200\",handler=\"v1/data\",method=\"POST\",le=\"0.0001\"} 1",
            "plugin_status_gauge{name=\"envoy_ext_authz_grpc\",status=\"OK\"} 1",
            "bundle_loaded_counter{name=\"envoy/authz\"} 1",
            "bundle_failed_load_counter{code=\"bundle_error\",message=\"server replied with not found\",name=\"roles\"} 1",
            "last_success_bundle_activation{active_revision=\"r7\",name=\"envoy/authz\"} ",
            "last_success_bundle_download{name=\"envoy/authz\"} ",
            "opa_info{version=\"arbiter-",
            "process_start_time_seconds ",
            "process_resident_memory_bytes ",
            "process_cpu_seconds_total ",
        ] {
            assert!(text.contains(want), "missing `{want}` in:\n{text}");
        }
        assert!(!text.contains("last_bundle_request{name=\"roles\"}"));
    }
}

//! Prometheus metrics, kept in atomics so recording a decision never takes a lock.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Machine-readable deny reasons, in the order their counters are kept.
const REASONS: &[&str] = &[
    "policy_denied",
    "undefined_decision",
    "invalid_decision_type",
    "invalid_decision_field",
    "eval_conflict",
    "eval_error",
    "limit_exceeded:time",
    "limit_exceeded:memory",
    "limit_exceeded:regex",
    "limit_exceeded:cel_cost",
    "limit_exceeded",
    "timeout",
    "overload",
    "bad_input",
    "non_canonical_path",
    "body_parse_error",
    "input_too_large",
    "no_policy",
    "audit_unavailable",
    "identity_invalid",
];

/// Upper bounds of the decision-latency histogram, in seconds.
const BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25,
];

/// A histogram in atomics: bucket counts, the count and the sum of the observed durations.
/// arbiter's decision latency and OPA's duration families are each one. An observation adds
/// one to its own bucket only (a check adds to one counter, not to every bucket above it);
/// rendering sums them into Prometheus' cumulative buckets.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: Vec<f64>,
    /// Observations in `(bounds[i - 1], bounds[i]]`, not cumulative.
    counts: Vec<AtomicU64>,
    count: AtomicU64,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// Upper bounds in seconds.
    pub(crate) fn new(bounds: &[f64]) -> Self {
        Histogram {
            bounds: bounds.to_vec(),
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_ns: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, ns: u64) {
        #[expect(clippy::cast_precision_loss, reason = "seconds for a histogram")]
        let secs = ns as f64 / 1e9;
        // Above the last bound, only `+Inf` (the count) holds it.
        if let Some(c) = self
            .bounds
            .iter()
            .position(|bound| secs <= *bound)
            .and_then(|i| self.counts.get(i))
        {
            c.fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` lines of `name`, each with `labels` (`a="b",…`).
    pub(crate) fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (c, bound) in self.counts.iter().zip(&self.bounds) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        // Read after the buckets, which an observation counts in first: never below them.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        #[expect(clippy::cast_precision_loss, reason = "seconds for a histogram")]
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let braced = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braced} {sum}");
        let _ = writeln!(out, "{name}_count{braced} {count}");
    }
}

/// arbiter's decision latency, with its buckets.
#[derive(Debug)]
struct DecisionLatency(Histogram);

impl Default for DecisionLatency {
    fn default() -> Self {
        DecisionLatency(Histogram::new(BUCKETS))
    }
}

/// Where a decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Grpc,
    DataApi,
    /// Envoy's HTTP ext_authz protocol.
    HttpAuthz,
}

impl Origin {
    /// The engine's name for it (decision records, error rules).
    pub fn engine(self) -> arbiter_engine::record::Origin {
        match self {
            Origin::Grpc => arbiter_engine::record::Origin::Grpc,
            Origin::DataApi => arbiter_engine::record::Origin::DataApi,
            Origin::HttpAuthz => arbiter_engine::record::Origin::HttpAuthz,
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    allow: [AtomicU64; 2],
    deny: [AtomicU64; 2],
    error: [AtomicU64; 2],
    reasons: [AtomicU64; REASONS.len()],
    other_reason: AtomicU64,
    latency: DecisionLatency,
    log_dropped: [AtomicU64; DROP_REASONS.len()],
    log_written: AtomicU64,
    /// `--audit required`: checks denied because their event was not written in time.
    audit_write_timeouts: AtomicU64,
    log_uploaded: AtomicU64,
    log_upload_failures: AtomicU64,
    log_upload_buffered: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    data_writes: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    /// Shadow evaluation (`serve --shadow`): on, checks decided, disagreements (new access,
    /// new denial), checks not shadowed because its queue was full.
    shadow_on: std::sync::atomic::AtomicBool,
    shadow_evaluated: AtomicU64,
    shadow_disagreements: [AtomicU64; 2],
    shadow_dropped: AtomicU64,
    /// Shipping to NATS JetStream (`--decision-log-nats`): on, events acknowledged, failed
    /// attempts, events lost to rotation before they were shipped, bytes not yet shipped.
    ship_on: std::sync::atomic::AtomicBool,
    shipped: AtomicU64,
    ship_failures: AtomicU64,
    ship_lost: AtomicU64,
    ship_lag_bytes: AtomicU64,
    /// OpenTelemetry spans (`--otlp-endpoint`): on, exported, dropped by [`SpanDrop`].
    trace_on: std::sync::atomic::AtomicBool,
    trace_exported: AtomicU64,
    trace_dropped: [AtomicU64; SPAN_DROPS.len()],
    /// OPA's and OPA-Envoy's families, served beside these.
    pub opa: crate::opa_metrics::OpaMetrics,
}

/// Labels of `arbiter_requests_refused_total`, indexed by [`Refusal`].
const REFUSALS: &[&str] = &["receiving", "receiving_bytes", "too_large", "timeout"];

/// Why the gRPC listener refused a request before it reached a policy (no decision, no event:
/// there was no whole request to decide on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_receiving` requests were already arriving.
    Receiving = 0,
    /// `max_receiving_bytes` were already held for arriving requests.
    ReceivingBytes = 1,
    /// The message declared, or sent, more than `max_request_bytes`.
    TooLarge = 2,
    /// The message did not arrive within `request_timeout`.
    Timeout = 3,
}

/// Labels of `arbiter_trace_spans_dropped_total`, indexed by [`SpanDrop`].
const SPAN_DROPS: &[&str] = &["queue_full", "export_failed", "rejected"];

/// Why a span was not exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanDrop {
    /// The exporter's queue was full (the collector is slow or down).
    QueueFull = 0,
    /// The export of its batch failed (unreachable, timed out, an error status).
    ExportFailed = 1,
    /// The collector took the batch but rejected the span (OTLP `partial_success`).
    Rejected = 2,
}

/// Labels of `arbiter_decision_logs_dropped_total`, indexed by [`DropReason`].
const DROP_REASONS: &[&str] = &[
    "queue_full",
    "sink_error",
    "encode_error",
    "upload_buffer_full",
    "shutdown",
    "drop_policy",
];

/// Why a decision-log event was not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The writer's queue was full.
    QueueFull = 0,
    /// A sink failed to write the event.
    SinkError = 1,
    /// The event could not be encoded.
    Encode = 2,
    /// The upload buffer was full (the collector is down or slow).
    UploadBufferFull = 3,
    /// Shutdown's grace period ended before the collector took the event.
    Shutdown = 4,
    /// OPA's `system.log.drop` policy said so.
    Policy = 5,
}

impl Metrics {
    /// With OPA-Envoy's `grpc_request_duration_seconds` buckets set (empty: its defaults).
    pub fn with_grpc_buckets(buckets: &[f64]) -> Self {
        Metrics {
            opa: crate::opa_metrics::OpaMetrics::new(buckets),
            ..Metrics::default()
        }
    }

    /// Count one decision: its outcome, its reason, its latency.
    pub fn record(
        &self,
        origin: Origin,
        allowed: bool,
        reason: Option<(&str, bool)>,
        latency_ns: u64,
    ) {
        let i = match origin {
            Origin::Grpc => {
                self.opa.grpc_check(latency_ns);
                0
            }
            Origin::DataApi => 1,
            // Counted with the gRPC checks (the check counters), not in OPA-Envoy's gRPC
            // histogram.
            Origin::HttpAuthz => 0,
        };
        match reason {
            None if allowed => self.allow[i].fetch_add(1, Ordering::Relaxed),
            None => self.deny[i].fetch_add(1, Ordering::Relaxed),
            Some((_, true)) => self.error[i].fetch_add(1, Ordering::Relaxed),
            Some((_, false)) => self.deny[i].fetch_add(1, Ordering::Relaxed),
        };
        if let Some((code, _)) = reason {
            match REASONS.iter().position(|r| *r == code) {
                Some(p) => self.reasons[p].fetch_add(1, Ordering::Relaxed),
                None => self.other_reason.fetch_add(1, Ordering::Relaxed),
            };
        }
        self.latency.0.observe(latency_ns);
    }

    /// Events are shipped to NATS: their families are served.
    pub fn shipping_enabled(&self) {
        self.ship_on.store(true, Ordering::Relaxed);
    }

    pub fn log_shipped(&self, n: usize) {
        self.shipped
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn ship_failed(&self) {
        self.ship_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn ship_lost(&self, n: u64) {
        self.ship_lost.fetch_add(n, Ordering::Relaxed);
    }

    pub fn set_ship_lag(&self, bytes: u64) {
        self.ship_lag_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Shipped, failed attempts, lost, lag in bytes.
    pub fn ship_counts(&self) -> [u64; 4] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            l(&self.shipped),
            l(&self.ship_failures),
            l(&self.ship_lost),
            l(&self.ship_lag_bytes),
        ]
    }

    /// Spans are exported: their families are served.
    pub fn tracing_enabled(&self) {
        self.trace_on.store(true, Ordering::Relaxed);
    }

    pub fn spans_exported(&self, n: usize) {
        self.trace_exported
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn spans_dropped(&self, why: SpanDrop, n: usize) {
        self.trace_dropped[why as usize]
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Spans exported, and dropped by [`SpanDrop`].
    pub fn span_counts(&self) -> (u64, [u64; SPAN_DROPS.len()]) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (
            l(&self.trace_exported),
            std::array::from_fn(|i| l(&self.trace_dropped[i])),
        )
    }

    /// A shadow set is configured: its families are served.
    pub fn shadow_enabled(&self) {
        self.shadow_on.store(true, Ordering::Relaxed);
    }

    /// The shadow set decided a check that the live set decided `live`.
    pub fn shadow_evaluated(&self, live: bool, shadow: bool) {
        self.shadow_evaluated.fetch_add(1, Ordering::Relaxed);
        match (live, shadow) {
            (false, true) => self.shadow_disagreements[0].fetch_add(1, Ordering::Relaxed),
            (true, false) => self.shadow_disagreements[1].fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
    }

    /// A check was not shadowed: the shadow's queue was full.
    pub fn shadow_dropped(&self) {
        self.shadow_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Shadow counters: evaluated, new access, new denials, dropped.
    pub fn shadow_counts(&self) -> [u64; 4] {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        [
            l(&self.shadow_evaluated),
            l(&self.shadow_disagreements[0]),
            l(&self.shadow_disagreements[1]),
            l(&self.shadow_dropped),
        ]
    }

    /// A request the listener refused before decoding it.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn log_dropped(&self, why: DropReason) {
        self.log_dropped[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn log_written(&self) {
        self.log_written.fetch_add(1, Ordering::Relaxed);
    }

    /// Under `--audit required`, a check's event was not written within the bound.
    pub fn audit_write_timeout(&self) {
        self.audit_write_timeouts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn audit_write_timeouts(&self) -> u64 {
        self.audit_write_timeouts.load(Ordering::Relaxed)
    }

    /// A policy reload attempt.
    pub fn reload(&self, ok: bool) {
        if ok {
            self.reloads_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            self.reloads_failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A data write applied (the Data API's `PUT`/`PATCH`/`DELETE`, a delta bundle).
    pub fn data_write(&self) {
        self.data_writes.fetch_add(1, Ordering::Relaxed);
    }

    /// A sink failed; the event may still have reached another sink.
    pub fn log_sink_error(&self) {
        self.log_dropped[DropReason::SinkError as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn log_uploaded(&self, n: usize) {
        self.log_uploaded.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn upload_failed(&self) {
        self.log_upload_failures.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_upload_buffered(&self, n: usize) {
        self.log_upload_buffered.store(n as u64, Ordering::Relaxed);
    }

    /// Events delivered to the collector.
    pub fn uploaded_total(&self) -> u64 {
        self.log_uploaded.load(Ordering::Relaxed)
    }

    /// Events waiting in the upload buffer.
    pub fn upload_buffered(&self) -> u64 {
        self.log_upload_buffered.load(Ordering::Relaxed)
    }

    /// Dropped events for one reason.
    pub fn dropped(&self, why: DropReason) -> u64 {
        self.log_dropped[why as usize].load(Ordering::Relaxed)
    }

    pub fn dropped_total(&self) -> u64 {
        self.log_dropped
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text exposition: arbiter's families, then OPA's (`plugins`: each
    /// plugin's name and OPA status).
    pub fn render(
        &self,
        revision: &str,
        path: &str,
        on_rvm: bool,
        ready: bool,
        plugins: &[(&str, &str)],
    ) -> String {
        let mut s = String::with_capacity(4096);
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            s,
            "# HELP arbiter_decisions_total Decisions made, by outcome and origin."
        );
        let _ = writeln!(s, "# TYPE arbiter_decisions_total counter");
        for (i, origin) in ["grpc", "data_api"].iter().enumerate() {
            let _ = writeln!(
                s,
                "arbiter_decisions_total{{outcome=\"allow\",origin=\"{origin}\"}} {}",
                l(&self.allow[i])
            );
            let _ = writeln!(
                s,
                "arbiter_decisions_total{{outcome=\"deny\",origin=\"{origin}\"}} {}",
                l(&self.deny[i])
            );
            let _ = writeln!(
                s,
                "arbiter_decisions_total{{outcome=\"error\",origin=\"{origin}\"}} {}",
                l(&self.error[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_denials_total Denials, by machine-readable reason."
        );
        let _ = writeln!(s, "# TYPE arbiter_decision_denials_total counter");
        for (r, a) in REASONS.iter().zip(&self.reasons) {
            let _ = writeln!(
                s,
                "arbiter_decision_denials_total{{reason=\"{r}\"}} {}",
                l(a)
            );
        }
        let _ = writeln!(
            s,
            "arbiter_decision_denials_total{{reason=\"other\"}} {}",
            l(&self.other_reason)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_duration_seconds Time from receiving a check to answering it."
        );
        let _ = writeln!(s, "# TYPE arbiter_decision_duration_seconds histogram");
        self.latency
            .0
            .render(&mut s, "arbiter_decision_duration_seconds", "");
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_logs_dropped_total Decision-log events not written, by reason."
        );
        let _ = writeln!(s, "# TYPE arbiter_decision_logs_dropped_total counter");
        for (i, why) in DROP_REASONS.iter().enumerate() {
            let _ = writeln!(
                s,
                "arbiter_decision_logs_dropped_total{{reason=\"{why}\"}} {}",
                l(&self.log_dropped[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP arbiter_audit_write_timeouts_total Checks denied (audit_unavailable) under --audit required because their event was not written within 1 s; the event may still be written."
        );
        let _ = writeln!(s, "# TYPE arbiter_audit_write_timeouts_total counter");
        let _ = writeln!(
            s,
            "arbiter_audit_write_timeouts_total {}",
            l(&self.audit_write_timeouts)
        );
        if self.shadow_on.load(Ordering::Relaxed) {
            let [evaluated, new_access, new_denial, dropped] = self.shadow_counts();
            let _ = writeln!(
                s,
                "# HELP arbiter_shadow_evaluations_total Checks the shadow policy set decided."
            );
            let _ = writeln!(s, "# TYPE arbiter_shadow_evaluations_total counter");
            let _ = writeln!(s, "arbiter_shadow_evaluations_total {evaluated}");
            let _ = writeln!(
                s,
                "# HELP arbiter_shadow_disagreements_total Checks the shadow set decided otherwise: new_access (live denied, shadow allowed), new_denial (live allowed, shadow denied)."
            );
            let _ = writeln!(s, "# TYPE arbiter_shadow_disagreements_total counter");
            let _ = writeln!(
                s,
                "arbiter_shadow_disagreements_total{{direction=\"new_access\"}} {new_access}"
            );
            let _ = writeln!(
                s,
                "arbiter_shadow_disagreements_total{{direction=\"new_denial\"}} {new_denial}"
            );
            let _ = writeln!(
                s,
                "# HELP arbiter_shadow_dropped_total Checks not shadowed: the shadow's queue was full."
            );
            let _ = writeln!(s, "# TYPE arbiter_shadow_dropped_total counter");
            let _ = writeln!(s, "arbiter_shadow_dropped_total {dropped}");
        }
        if self.ship_on.load(Ordering::Relaxed) {
            let [shipped, failures, lost, lag] = self.ship_counts();
            for (name, kind, help, v) in [
                (
                    "arbiter_decision_logs_shipped_total",
                    "counter",
                    "Decision events NATS JetStream acknowledged.",
                    shipped,
                ),
                (
                    "arbiter_decision_logs_ship_failures_total",
                    "counter",
                    "Failed attempts to connect to NATS or to have a batch acknowledged (retried).",
                    failures,
                ),
                (
                    "arbiter_decision_logs_ship_lost_total",
                    "counter",
                    "Times the spool file being shipped was rotated away before it was shipped.",
                    lost,
                ),
                (
                    "arbiter_decision_logs_ship_lag_bytes",
                    "gauge",
                    "Bytes of the decision-log spool not yet acknowledged by NATS.",
                    lag,
                ),
            ] {
                let _ = writeln!(s, "# HELP {name} {help}");
                let _ = writeln!(s, "# TYPE {name} {kind}");
                let _ = writeln!(s, "{name} {v}");
            }
        }
        if self.trace_on.load(Ordering::Relaxed) {
            let (exported, dropped) = self.span_counts();
            let _ = writeln!(
                s,
                "# HELP arbiter_trace_spans_exported_total Spans the OTLP collector took."
            );
            let _ = writeln!(s, "# TYPE arbiter_trace_spans_exported_total counter");
            let _ = writeln!(s, "arbiter_trace_spans_exported_total {exported}");
            let _ = writeln!(
                s,
                "# HELP arbiter_trace_spans_dropped_total Spans not exported: queue_full (the exporter's queue was full), export_failed (their batch could not be sent), rejected (the collector refused them)."
            );
            let _ = writeln!(s, "# TYPE arbiter_trace_spans_dropped_total counter");
            for (why, n) in SPAN_DROPS.iter().zip(dropped) {
                let _ = writeln!(
                    s,
                    "arbiter_trace_spans_dropped_total{{reason=\"{why}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_logs_written_total Decision-log events written."
        );
        let _ = writeln!(s, "# TYPE arbiter_decision_logs_written_total counter");
        let _ = writeln!(
            s,
            "arbiter_decision_logs_written_total {}",
            l(&self.log_written)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_logs_uploaded_total Decision-log events the collector accepted."
        );
        let _ = writeln!(s, "# TYPE arbiter_decision_logs_uploaded_total counter");
        let _ = writeln!(
            s,
            "arbiter_decision_logs_uploaded_total {}",
            l(&self.log_uploaded)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_logs_upload_failures_total Uploads that failed and will be retried."
        );
        let _ = writeln!(
            s,
            "# TYPE arbiter_decision_logs_upload_failures_total counter"
        );
        let _ = writeln!(
            s,
            "arbiter_decision_logs_upload_failures_total {}",
            l(&self.log_upload_failures)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_decision_logs_upload_buffered Decision-log events waiting for the collector."
        );
        let _ = writeln!(s, "# TYPE arbiter_decision_logs_upload_buffered gauge");
        let _ = writeln!(
            s,
            "arbiter_decision_logs_upload_buffered {}",
            l(&self.log_upload_buffered)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_requests_refused_total gRPC requests refused before decoding (listener limits), by reason."
        );
        let _ = writeln!(s, "# TYPE arbiter_requests_refused_total counter");
        for (i, why) in REFUSALS.iter().enumerate() {
            let _ = writeln!(
                s,
                "arbiter_requests_refused_total{{reason=\"{why}\"}} {}",
                l(&self.refused[i])
            );
        }
        let _ = writeln!(
            s,
            "# HELP arbiter_policy_reloads_total Policy reload attempts, by result (an error keeps the previous set)."
        );
        let _ = writeln!(s, "# TYPE arbiter_policy_reloads_total counter");
        let _ = writeln!(
            s,
            "arbiter_policy_reloads_total{{result=\"ok\"}} {}",
            l(&self.reloads_ok)
        );
        let _ = writeln!(
            s,
            "arbiter_policy_reloads_total{{result=\"error\"}} {}",
            l(&self.reloads_failed)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_data_writes_total Data writes applied (Data API PUT, PATCH, DELETE and delta bundles); each makes a new revision."
        );
        let _ = writeln!(s, "# TYPE arbiter_data_writes_total counter");
        let _ = writeln!(s, "arbiter_data_writes_total {}", l(&self.data_writes));
        let _ = writeln!(
            s,
            "# HELP arbiter_policy_info The active policy revision and decision path."
        );
        let _ = writeln!(s, "# TYPE arbiter_policy_info gauge");
        let _ = writeln!(
            s,
            "arbiter_policy_info{{revision=\"{}\",path=\"{}\"}} 1",
            escape(revision),
            escape(path)
        );
        let _ = writeln!(
            s,
            "# HELP arbiter_rego_on_rvm Whether Rego decisions run on the bytecode VM (1) or on \
             the slower interpreter (0; `arbiter check` says why)."
        );
        let _ = writeln!(s, "# TYPE arbiter_rego_on_rvm gauge");
        let _ = writeln!(s, "arbiter_rego_on_rvm {}", u8::from(on_rvm));
        let _ = writeln!(
            s,
            "# HELP arbiter_ready Whether policies are loaded and the gRPC listener is up."
        );
        let _ = writeln!(s, "# TYPE arbiter_ready gauge");
        let _ = writeln!(s, "arbiter_ready {}", u8::from(ready));
        // Only while the allocator counts (`ARBITER_COUNT_ALLOCATIONS=1`, a benchmarking aid).
        if let Some((allocations, bytes)) = arbiter_alloc_counter::counted() {
            let _ = writeln!(
                s,
                "# HELP arbiter_allocations_total Heap allocations since start-up (ARBITER_COUNT_ALLOCATIONS)."
            );
            let _ = writeln!(s, "# TYPE arbiter_allocations_total counter");
            let _ = writeln!(s, "arbiter_allocations_total {allocations}");
            let _ = writeln!(
                s,
                "# HELP arbiter_allocated_bytes_total Bytes allocated since start-up (ARBITER_COUNT_ALLOCATIONS)."
            );
            let _ = writeln!(s, "# TYPE arbiter_allocated_bytes_total counter");
            let _ = writeln!(s, "arbiter_allocated_bytes_total {bytes}");
        }
        self.opa.render(&mut s, plugins);
        s
    }
}

/// Escape a Prometheus label value.
pub(crate) fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        m.record(Origin::Grpc, true, None, 30_000);
        m.record(Origin::Grpc, false, Some(("policy_denied", false)), 40_000);
        m.record(Origin::Grpc, false, Some(("timeout", true)), 50_000_000);
        let text = m.render("abc", "envoy/authz/allow", false, true, &[]);
        assert!(text.contains("arbiter_decisions_total{outcome=\"allow\",origin=\"grpc\"} 1"));
        assert!(text.contains("arbiter_decisions_total{outcome=\"deny\",origin=\"grpc\"} 1"));
        assert!(text.contains("arbiter_decisions_total{outcome=\"error\",origin=\"grpc\"} 1"));
        assert!(text.contains("arbiter_decision_denials_total{reason=\"timeout\"} 1"));
        assert!(text.contains("arbiter_decision_duration_seconds_bucket{le=\"0.00005\"} 2"));
        assert!(text.contains("arbiter_decision_duration_seconds_count 3"));
        // Every bucket, cumulative: 30 and 40 µs in the second, 50 ms in the eleventh.
        let buckets: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("arbiter_decision_duration_seconds_bucket"))
            .collect();
        assert_eq!(
            buckets,
            [
                "arbiter_decision_duration_seconds_bucket{le=\"0.000025\"} 0",
                "arbiter_decision_duration_seconds_bucket{le=\"0.00005\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.0001\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.00025\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.0005\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.001\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.0025\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.005\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.01\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.025\"} 2",
                "arbiter_decision_duration_seconds_bucket{le=\"0.05\"} 3",
                "arbiter_decision_duration_seconds_bucket{le=\"0.1\"} 3",
                "arbiter_decision_duration_seconds_bucket{le=\"0.25\"} 3",
                "arbiter_decision_duration_seconds_bucket{le=\"+Inf\"} 3",
            ]
        );
        // Past the last bound: in `+Inf` alone.
        m.record(Origin::Grpc, true, None, 2_000_000_000);
        let text = m.render("abc", "envoy/authz/allow", false, true, &[]);
        assert!(text.contains("arbiter_decision_duration_seconds_bucket{le=\"0.25\"} 3\n"));
        assert!(text.contains("arbiter_decision_duration_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(
            text.contains("arbiter_policy_info{revision=\"abc\",path=\"envoy/authz/allow\"} 1")
        );
        // Decisions off the VM are visible, not silent.
        assert!(text.contains("\narbiter_rego_on_rvm 0\n"));
        let text = m.render("abc", "envoy/authz/allow", true, true, &[]);
        assert!(text.contains("\narbiter_rego_on_rvm 1\n"));
    }
}

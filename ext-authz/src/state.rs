//! What the gRPC and HTTP servers share: the active authorizer, the evaluation pool, metrics and
//! the decision log, and the one function that runs a decision with a deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arbiter_engine::authorizer::{Authorizer, CheckOutcome, Timings};
use arbiter_engine::bundle::Manifest;
use arbiter_engine::data_write::{DataOverlay, DataWrite, WriteError};
use arbiter_engine::identity::IdentityOutcome;
use arbiter_engine::record::{DecisionRecord, InstanceLabels, RecordInput};
use arbiter_engine::regorus::Value;
use arbiter_engine::request::AuthzRequest;
use arbiter_engine::trace_context::TraceContext;
use arbiter_engine::{DataRef, Decision, DenyReason};
use arc_swap::ArcSwap;

use crate::decision_log::DecisionLog;
use crate::metrics::{Metrics, Origin};
use crate::pool::EvalPool;

/// Behaviour switches of a running server.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// OPA-Envoy's `dry-run`: answer OK always, log the real decision.
    pub dry_run: bool,
    /// Deadline for one decision; past it the answer is a denial with reason `timeout`.
    pub deadline: Duration,
    pub labels: InstanceLabels,
    /// Who may use the HTTP listener's APIs.
    pub api: crate::api_auth::ApiAccess,
    /// Upper bounds of OPA-Envoy's `grpc_request_duration_seconds`; empty: OPA-Envoy's.
    pub grpc_duration_buckets: Vec<f64>,
    /// The OPA configuration in effect, credentials and keys removed, for `GET /v1/config`.
    pub active_config: serde_json::Value,
}

pub struct State {
    pub authorizer: ArcSwap<Authorizer>,
    /// What reloading last did (read by `/health`; never touched by decisions).
    pub reload_status: ArcSwap<crate::reload::ReloadStatus>,
    pub pool: EvalPool,
    pub metrics: Arc<Metrics>,
    pub decision_log: Option<DecisionLog>,
    pub options: ServeOptions,
    pub grpc_ready: AtomicBool,
    /// Serving without the policy it was configured with (a bundle URL not fetched yet):
    /// every check is denied (`no_policy`) and health is NOT_SERVING until a reload succeeds.
    pub awaiting_policy: AtomicBool,
    /// Signalled when readiness changes, so the gRPC health service follows it.
    pub readiness_changed: tokio::sync::Notify,
    /// What the Data API and delta bundles have written (replayed over every reloaded set),
    /// and the lock that puts writes and reloads one after another.
    pub data_writes: std::sync::Mutex<DataState>,
    /// The shadow policy set (`serve --shadow`), once set with [`State::start_shadow`].
    pub shadow: std::sync::OnceLock<crate::shadow::Shadow>,
    /// OpenTelemetry spans (`--otlp-endpoint`).
    pub tracer: Option<crate::otel::Tracer>,
}

/// Data changes made since the sources were read, replayed over every reloaded set: a new
/// snapshot of a bundle ends its deltas; the Data API's writes stay until overwritten.
#[derive(Debug, Default)]
pub struct DataState {
    pub overlay: DataOverlay,
    /// Each bundle's deltas since its snapshot, in the order they were applied.
    pub deltas: std::collections::BTreeMap<String, Vec<(Manifest, Vec<DataWrite>)>>,
}

/// What a Data API write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    /// Applied: the revision now serving.
    Applied(String),
    /// `If-None-Match: *` and the document exists: nothing written.
    Exists,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

pub fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
        .unwrap_or(0)
}

fn denied(reason: DenyReason) -> CheckOutcome {
    CheckOutcome {
        decision: Decision::deny(reason),
        input: None,
        timings: Timings::default(),
        identity: IdentityOutcome::Absent,
    }
}

impl State {
    /// Change the reload status (reloads are serialized by their caller).
    pub fn update_reload_status(&self, f: impl FnOnce(&mut crate::reload::ReloadStatus)) {
        let mut s = (**self.reload_status.load()).clone();
        f(&mut s);
        self.reload_status.store(Arc::new(s));
    }

    /// Serving, with the configured policy, and — when auditing is required — with a decision
    /// log that takes events.
    pub fn ready(&self) -> bool {
        self.plugins().iter().all(|(_, up)| *up)
    }

    /// OPA's plugins and whether each is up: `bundle` (the configured policy is loaded),
    /// `envoy_ext_authz_grpc` (the gRPC listener), `decision_logs` (required auditing takes
    /// events). `/health?plugins`, `plugin_status_gauge` and [`State::ready`] read this.
    pub fn plugins(&self) -> [(&'static str, bool); 3] {
        [
            ("bundle", !self.awaiting_policy.load(Ordering::Acquire)),
            (
                "envoy_ext_authz_grpc",
                self.grpc_ready.load(Ordering::Acquire),
            ),
            ("decision_logs", self.audit_available()),
        ]
    }

    /// Whether a check's trace context is used: for its span, or its event's trace ids.
    pub fn traces(&self) -> bool {
        self.tracer.is_some() || self.decision_log.is_some()
    }

    /// False while auditing is required and the decision log refuses events (checks are then
    /// denied with `audit_unavailable`).
    pub fn audit_available(&self) -> bool {
        self.decision_log
            .as_ref()
            .is_none_or(|l| !l.audit_required() || l.healthy())
    }

    /// Run `work` on the evaluation pool within the deadline; overload, timeout and a lost
    /// worker are denials.
    ///
    /// The deadline counts from `received`, when the check arrived: time spent waiting for a
    /// thread (behind another check's evaluation) counts too, so a decision the caller has
    /// stopped waiting for is the `timeout` denial the caller saw, never an allow. A timeout
    /// that finished keeps what it built (input, identity) for its event.
    pub async fn run<F>(&self, received: Instant, work: F) -> CheckOutcome
    where
        F: FnOnce() -> CheckOutcome + Send + 'static,
    {
        let deadline = self.options.deadline;
        let late = |mut outcome: CheckOutcome| {
            if received.elapsed() > deadline {
                outcome.decision = Decision::deny(DenyReason::Timeout);
            }
            outcome
        };
        if received.elapsed() > deadline {
            return denied(DenyReason::Timeout);
        }
        if self.pool.is_inline() {
            let Ok(_slot) = self.pool.try_inline() else {
                return denied(DenyReason::Overload);
            };
            // Fail closed on the deadline even though nothing could interrupt the work.
            return late(work());
        }
        let Ok(rx) = self.pool.try_run(work) else {
            return denied(DenyReason::Overload);
        };
        match tokio::time::timeout(deadline.saturating_sub(received.elapsed()), rx).await {
            Ok(Ok(outcome)) => late(outcome),
            Ok(Err(_)) => denied(DenyReason::EvalError(
                "the evaluation worker stopped before answering".into(),
            )),
            Err(_) => denied(DenyReason::Timeout),
        }
    }

    /// Apply Data API writes (`PUT`, `PATCH`, `DELETE` on `/v1/data`): all or none, with the
    /// validation of a reload (bundle roots, rules, storage errors), then one atomic swap. The
    /// compiled policies are kept; the work is the copy-on-write of the written paths. Blocks
    /// while a reload runs (call it off the async runtime).
    pub fn write_data(
        &self,
        writes: &[DataWrite],
        if_none_match: bool,
    ) -> Result<Written, WriteError> {
        let mut data = self
            .data_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.authorizer.load_full();
        let set = current.policies();
        if if_none_match
            && let [w] = writes
            && arbiter_engine::data_write::lookup(&set.data(), &w.path).is_some()
        {
            return Ok(Written::Exists);
        }
        set.check_not_bundle_owned(writes)?;
        let next = set.with_writes(writes, None)?;
        data.overlay.record(&next.data(), writes);
        Ok(Written::Applied(self.swap_data(&current, next)))
    }

    /// Serve `next`, `current`'s set with other data, in one swap; its revision.
    fn swap_data(&self, current: &Authorizer, next: arbiter_engine::PolicySet) -> String {
        let revision = next.revision().to_string();
        self.authorizer
            .store(Arc::new(current.with_policies(Arc::new(next))));
        self.metrics.data_write();
        revision
    }

    /// Apply a delta bundle of bundle `name` (its manifest and `patch.json`) to the data its
    /// snapshot activated: all or none, one atomic swap, the bundle's revision the delta's.
    /// Returns the revision now serving. Blocks while a reload runs.
    pub fn apply_bundle_delta(
        &self,
        name: &str,
        manifest: &Manifest,
        writes: Vec<DataWrite>,
    ) -> Result<String, WriteError> {
        let mut data = self
            .data_writes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.authorizer.load_full();
        let next = current
            .policies()
            .with_bundle_delta(name, manifest, &writes)?;
        data.deltas
            .entry(name.to_string())
            .or_default()
            .push((manifest.clone(), writes));
        Ok(self.swap_data(&current, next))
    }

    /// Shadow every Envoy check from now on with `authorizer` (see [`crate::shadow`]), on a
    /// side thread. Once; later sets replace it with [`crate::shadow::Shadow::replace`].
    pub fn start_shadow(self: &Arc<Self>, authorizer: Authorizer) -> Result<(), String> {
        self.start_shadow_with(authorizer, &crate::shadow::Runner::Thread)
    }

    /// [`State::start_shadow`], deciding where `runner` says.
    pub fn start_shadow_with(
        self: &Arc<Self>,
        authorizer: Authorizer,
        runner: &crate::shadow::Runner,
    ) -> Result<(), String> {
        let shadow = crate::shadow::Shadow::start(
            authorizer,
            Arc::downgrade(self),
            self.metrics.clone(),
            runner,
        )
        .map_err(|e| format!("cannot start the shadow: {e}"))?;
        self.shadow
            .set(shadow)
            .map_err(|_| "a shadow set is already running".to_string())
    }

    /// Decide an Envoy check (gRPC).
    pub async fn check(
        &self,
        request: AuthzRequest,
        requested_by: Option<SocketAddr>,
    ) -> (CheckOutcome, String) {
        self.check_as(Origin::Grpc, Box::new(request), requested_by, None)
            .await
    }

    /// Decide an Envoy check that came by `origin` (gRPC or the HTTP protocol). `trace` is the
    /// trace context of the call itself (Envoy's span for the check, in the gRPC metadata or
    /// the HTTP headers); without one, the checked request's own `traceparent` is the parent.
    /// The request comes boxed: this future, and the work it hands to the pool, hold a
    /// pointer rather than the request's bytes, which each move of a future copies.
    pub async fn check_as(
        &self,
        origin: Origin,
        request: Box<AuthzRequest>,
        requested_by: Option<SocketAddr>,
        trace: Option<TraceContext>,
    ) -> (CheckOutcome, String) {
        let received = Instant::now();
        let timestamp_ns = now_ns();
        let decision_id = uuid::Uuid::new_v4().to_string();
        let trace = trace.or_else(|| {
            let h = request.http.as_ref().filter(|_| self.traces())?;
            TraceContext::from_headers(
                h.header("traceparent").as_deref(),
                h.header("tracestate").as_deref(),
            )
        });
        // One for the work (on a pool thread), one for the event's path and revision.
        let authorizer = self.authorizer.load_full();
        let set = authorizer.clone();
        // Only an event carries the request line: no copies when nothing is logged.
        let request_line = self
            .decision_log
            .as_ref()
            .and_then(|_| arbiter_engine::record::RequestLine::of(&request));
        // The input document is built for a policy that reads it (the parts it reads); an
        // event holds the request, from which the log's writer writes the whole document.
        let keep_input = self.decision_log.is_some();
        // With a shadow set, the request is kept for it (shared, not copied), and an event holds
        // the document.
        let (outcome, shadow_request) = match self.shadow.get().filter(|s| s.open()) {
            None => (
                self.run(received, move || {
                    if keep_input {
                        authorizer.check_for_record(*request)
                    } else {
                        authorizer.check_with(&request, false)
                    }
                })
                .await,
                None,
            ),
            Some(_) => {
                let request = Arc::new(*request);
                let r = request.clone();
                (
                    self.run(received, move || authorizer.check_with(&r, keep_input))
                        .await,
                    Some(request),
                )
            }
        };
        let mut outcome = outcome;
        let logged = self
            .finish(
                origin,
                &mut outcome,
                received,
                Finish {
                    decision_id: &decision_id,
                    timestamp_ns,
                    path: set.path(),
                    requested_by,
                    policies: set.policies(),
                    trace,
                    request: request_line,
                    shadow: shadow_request,
                },
            )
            .await;
        if !logged {
            // `audit: required`: no event, no access.
            outcome.decision = Decision::deny(DenyReason::AuditUnavailable);
        }
        (outcome, decision_id)
    }

    /// Evaluate a data reference for the Data API.
    pub async fn data(
        &self,
        reference: DataRef,
        input: Option<Value>,
        requested_by: Option<SocketAddr>,
        trace: Option<TraceContext>,
    ) -> (Result<Value, String>, String) {
        let received = Instant::now();
        let timestamp_ns = now_ns();
        let decision_id = uuid::Uuid::new_v4().to_string();
        let authorizer = self.authorizer.load_full();
        let policies = authorizer.policies().clone();
        let path = reference.clone();
        let logged_input = input.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let outcome = self
            .run(received, move || {
                let start = Instant::now();
                let value =
                    authorizer.evaluate_value(&reference, input.unwrap_or(Value::Undefined));
                let eval_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
                let decision = match &value {
                    // A decision-shaped result (a boolean, or an object with `allowed`) is
                    // logged as that decision; any other document as an allowed read.
                    Ok(v @ Value::Bool(_)) => Decision::from_result(v),
                    Ok(v @ Value::Object(o)) if o.contains_key(&Value::from("allowed")) => {
                        Decision::from_result(v)
                    }
                    // An undefined document: not an allowed read (OPA logs no result for it).
                    Ok(Value::Undefined) => Decision::deny(DenyReason::UndefinedDecision),
                    Ok(v) => {
                        let mut d = Decision::allow();
                        d.result = Some(arbiter_engine::value::to_json(v));
                        d
                    }
                    Err(e) => Decision::deny(e.deny_reason()),
                };
                let _ = tx.send(value.map_err(|e| e.message));
                CheckOutcome {
                    decision,
                    input: None,
                    timings: Timings {
                        input_ns: 0,
                        eval_ns,
                    },
                    identity: IdentityOutcome::Absent,
                }
            })
            .await;
        let result = match rx.await {
            Ok(r) => r,
            Err(_) => Err(outcome
                .decision
                .reason
                .as_ref()
                .map_or_else(|| "evaluation failed".to_string(), ToString::to_string)),
        };
        let mut outcome = CheckOutcome {
            input: logged_input.map(RecordInput::Document),
            ..outcome
        };
        let logged = self
            .finish(
                Origin::DataApi,
                &mut outcome,
                received,
                Finish {
                    decision_id: &decision_id,
                    timestamp_ns,
                    path: &path,
                    requested_by,
                    policies: &policies,
                    trace,
                    request: None,
                    shadow: None,
                },
            )
            .await;
        let result = if logged {
            result
        } else {
            Err(DenyReason::AuditUnavailable.to_string())
        };
        (result, decision_id)
    }

    /// Count the decision and queue its event. False only when auditing is required and the
    /// event could not be written (refused, or not in its sinks within
    /// [`AUDIT_WRITE_TIMEOUT`](crate::decision_log::AUDIT_WRITE_TIMEOUT)): the caller must then
    /// deny. Under `--audit required` this waits for the write, so an answered decision
    /// survives a crash of the server.
    async fn finish(
        &self,
        origin: Origin,
        outcome: &mut CheckOutcome,
        received: Instant,
        f: Finish<'_>,
    ) -> bool {
        // The event takes the input: the caller answers from the decision.
        let input = outcome.input.take();
        let server_ns = u64::try_from(received.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let d = &outcome.decision;
        // The span starts when the request arrived; the record names it (OPA logs its own
        // span's id), or the caller's span when this one is not traced.
        let span = self.tracer.as_ref().and_then(|t| {
            let start = u64::try_from(f.timestamp_ns).unwrap_or(0);
            t.begin(f.trace.as_ref(), start)
        });
        let ids = match (&span, &f.trace) {
            (Some(s), _) => Some((hex::encode(s.trace_id), hex::encode(s.span_id))),
            (None, Some(c)) => Some((c.parent.trace_hex(), c.parent.span_hex())),
            (None, None) => None,
        };
        // What the span needs of what the record takes.
        let span_names = span
            .as_ref()
            .map(|_| (f.policies.revision().to_string(), f.path.slash_path()));
        let mut record = self.decision_log.as_ref().map(|_| {
            let (trace_id, span_id) = ids.map_or((None, None), |(t, s)| (Some(t), Some(s)));
            Box::new(DecisionRecord {
                decision_id: f.decision_id.to_string(),
                timestamp_ns: f.timestamp_ns,
                path: f.path.slash_path(),
                input,
                decision: d.clone(),
                timings: outcome.timings,
                server_ns,
                requested_by: f.requested_by.map(|a| a.to_string()).unwrap_or_default(),
                revision: f.policies.revision().to_string(),
                dry_run: self.options.dry_run && origin != Origin::DataApi,
                trace_id,
                span_id,
                identity: outcome.identity.clone(),
                policies: Some(f.policies.clone()),
                origin: origin.engine(),
                request: f.request,
                shadow: None,
            })
        });
        // The shadow decides after this answer (in idle time or on its own thread) and sends
        // the event on.
        // With auditing required it takes events only while the log's sinks take them. A check
        // the live set could not decide (overload, a timeout) is not shadowed: there is
        // nothing to compare, and no time to spare.
        // Under `--audit required` the answer waits for its event, so the event does not wait
        // for the shadow: the shadow still decides (and counts disagreements), the event goes
        // straight to the log without the shadow's verdict.
        let audit_required = self
            .decision_log
            .as_ref()
            .is_some_and(DecisionLog::audit_required);
        if let (Some(request), Some(shadow)) = (f.shadow, self.shadow.get())
            && !arbiter_engine::audit::replay::NOT_DECISIONS.contains(&d.reason_code())
        {
            let job = crate::shadow::Job {
                request,
                live_allowed: d.allowed,
                timestamp_ns: f.timestamp_ns,
                record: if audit_required { None } else { record.take() },
            };
            if let Err(job) = shadow.submit(job) {
                self.metrics.shadow_dropped();
                if job.record.is_some() {
                    record = job.record;
                }
            }
        }
        let logged = match (&self.decision_log, record) {
            (Some(log), Some(record)) if audit_required => match log.submit_acked(record) {
                Some(written) => {
                    match tokio::time::timeout(crate::decision_log::AUDIT_WRITE_TIMEOUT, written)
                        .await
                    {
                        Ok(Ok(went)) => went,
                        // The writer stopped (shutdown) without saying.
                        Ok(Err(_)) => false,
                        Err(_) => {
                            self.metrics.audit_write_timeout();
                            false
                        }
                    }
                }
                None => false,
            },
            (Some(log), Some(record)) => {
                log.submit(record);
                true
            }
            // No log, or the shadow took the event.
            _ => true,
        };
        // Metrics count what the caller is told: under `--audit required` a check whose event
        // could not be queued is the `audit_unavailable` denial the caller turns it into.
        let unaudited;
        let told = if logged {
            d
        } else {
            unaudited = Decision::deny(DenyReason::AuditUnavailable);
            &unaudited
        };
        self.metrics.record(
            origin,
            told.allowed,
            told.reason
                .as_ref()
                .map(|r| (r.code(), origin.engine().is_error(r))),
            server_ns,
        );
        // The span says what the caller was told, as the metrics do.
        if let (Some(tracer), Some(started), Some((revision, path))) =
            (&self.tracer, span, span_names)
        {
            let first = told.decided_by.first();
            tracer.end(crate::otel::Finished {
                end_unix_ns: started.start_unix_ns.saturating_add(server_ns),
                started,
                origin,
                fields: crate::otel::SpanFields {
                    allowed: told.allowed,
                    reason: told.reason_code(),
                    error: told
                        .reason
                        .as_ref()
                        .filter(|r| origin.engine().is_error(r))
                        .map(ToString::to_string),
                    policy: first.map(|b| b.policy.clone()),
                    rule: first.and_then(|b| b.rule.clone()),
                    identity: outcome.identity.identity().map(|i| i.id.to_string()),
                    revision,
                    decision_id: f.decision_id.to_string(),
                    path,
                    dry_run: self.options.dry_run && origin != Origin::DataApi,
                    input_ns: outcome.timings.input_ns,
                    eval_ns: outcome.timings.eval_ns,
                },
            });
        }
        logged
    }
}

/// What an event and a span are made of besides the outcome. Borrowed, and the peer's address
/// as it came: the texts are made only for an event or a span, not for every check.
struct Finish<'a> {
    decision_id: &'a str,
    timestamp_ns: i128,
    path: &'a DataRef,
    /// The peer that asked (`requested_by`); none on a socket without an address.
    requested_by: Option<SocketAddr>,
    policies: &'a Arc<arbiter_engine::PolicySet>,
    /// The caller's trace context.
    trace: Option<TraceContext>,
    /// The check's request as sent (none for the Data API).
    request: Option<arbiter_engine::record::RequestLine>,
    /// The request, for the shadow set (an Envoy check while one runs).
    shadow: Option<Arc<AuthzRequest>>,
}

//! Decision records: who asked what, what was decided, why, under which policy revision.
//!
//! A [`DecisionRecord`] is captured on the decision path with no encoding work (a check's input
//! stays its request as read, written as JSON text when the event is: [`RecordInput`]);
//! [`DecisionRecord::to_event`] turns it into OPA's decision-log event
//! (`decision_id`, `timestamp`, `path`, `input`, `result`, `labels`, `bundles`, `metrics`,
//! `error`, `requested_by`) plus arbiter's own fields (`allowed`, `http_status`, `reason`,
//! `revision`, `dry_run`) — off the decision path, on the log writer.

use regorus::Value;
use serde_json::{Map, Value as Json, json};

use crate::authorizer::Timings;
use crate::decision::Decision;
use crate::value::to_json;

/// Who this arbiter instance is, for the `labels` of every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceLabels {
    /// A UUID chosen at start-up.
    pub id: String,
    /// arbiter's version.
    pub version: String,
    /// OPA's configured `labels`.
    pub extra: std::collections::BTreeMap<String, String>,
}

impl InstanceLabels {
    /// OPA's `labels`: the configured ones, then `id` and `version`, which win over configured
    /// ones of the same name, as in OPA. Decision events and `/v1/status` carry this.
    /// [`InstanceLabels::to_json`]'s object, written field by field: the configured labels in
    /// their order, `id` and `version` in place of configured ones of those names, else after
    /// them.
    fn write(&self, o: &mut Obj<'_>) {
        for (k, v) in &self.extra {
            let v = match k.as_str() {
                "id" => &self.id,
                "version" => &self.version,
                _ => v,
            };
            o.value_any_key(k, v);
        }
        if !self.extra.contains_key("id") {
            o.value("id", &self.id);
        }
        if !self.extra.contains_key("version") {
            o.value("version", &self.version);
        }
    }

    pub fn to_json(&self) -> Json {
        let mut l = Map::new();
        for (k, v) in &self.extra {
            l.insert(k.clone(), json!(v));
        }
        l.insert("id".into(), json!(self.id));
        l.insert("version".into(), json!(self.version));
        Json::Object(l)
    }
}

/// Everything an event needs, captured cheaply.
#[derive(Debug, Clone)]
pub struct DecisionRecord {
    pub decision_id: String,
    /// Nanoseconds since the Unix epoch when the check arrived.
    pub timestamp_ns: i128,
    /// Decision path in slash form (`envoy/authz/allow`).
    pub path: String,
    pub input: Option<RecordInput>,
    pub decision: Decision,
    pub timings: Timings,
    /// Whole handling time, from receipt to answer.
    pub server_ns: u64,
    /// The caller's address (Envoy's, for gRPC checks; the HTTP client's for the Data API).
    pub requested_by: String,
    /// Policy revision the decision was made under.
    pub revision: String,
    pub dry_run: bool,
    /// W3C trace context from the request's `traceparent` header, when present.
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
    /// Who the caller was, or why that was not established.
    pub identity: crate::identity::IdentityOutcome,
    /// The policy set that decided: the log writer evaluates its `system.log.mask` and
    /// `system.log.drop` policies, if any.
    pub policies: Option<std::sync::Arc<crate::PolicySet>>,
    /// Where the decision was asked for: [`Origin::Grpc`] for an Envoy check, or
    /// [`Origin::DataApi`] for a query of the Data API (which is not a request to a path).
    pub origin: Origin,
    /// An Envoy check's request as sent (method, target, host), kept even when the decision
    /// was made before the input was built (a refused path, a timeout, overload), so that
    /// every event names what was asked.
    pub request: Option<RequestLine>,
    /// What the shadow policy set (`serve --shadow`) decided, when it disagreed with the
    /// decision enforced.
    pub shadow: Option<ShadowVerdict>,
}

/// A record's `input`.
#[derive(Debug, Clone)]
pub enum RecordInput {
    /// A document as given: the Data API's input, a shadowed check's document.
    Document(Value),
    /// A check's request as read: its document is written from it when the event is
    /// ([`crate::input::Reading::write_document`]), so the decision path builds only the parts
    /// its policies read and no value is built, serialized and dropped for the log.
    Request(Box<RequestInput>),
}

/// A check's request and how it was read: what its input document is made of.
#[derive(Debug, Clone)]
pub struct RequestInput {
    pub request: crate::request::AuthzRequest,
    pub reading: crate::input::Reading,
}

impl RecordInput {
    /// The document, when it is held as one.
    pub fn document(&self) -> Option<&Value> {
        match self {
            RecordInput::Document(v) => Some(v),
            RecordInput::Request(_) => None,
        }
    }

    /// The document as a Rego value (a check's with the caller's `identity`, as the policies
    /// saw it), for the writers that need a value: the mask and drop policies, tests.
    pub fn to_value(&self, identity: &crate::identity::IdentityOutcome) -> Value {
        match self {
            RecordInput::Document(v) => v.clone(),
            RecordInput::Request(r) => r.reading.document(&r.request, identity.to_value().as_ref()),
        }
    }
}

/// A shadow set's decision of a check, never enforced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowVerdict {
    pub allowed: bool,
    /// `allowed`, or the denial's reason code.
    pub reason: String,
    /// The policy (and rule) that decided, as the event's `policy` and `rule`.
    pub policy: Option<String>,
    pub rule: Option<String>,
    /// The shadow set's revision.
    pub revision: String,
}

impl ShadowVerdict {
    pub fn of(d: &Decision, revision: &str) -> Self {
        let first = d.decided_by.first();
        ShadowVerdict {
            allowed: d.allowed,
            reason: d.reason_code().to_string(),
            policy: first.map(|b| b.policy.clone()),
            rule: first.and_then(|b| b.rule.clone()),
            revision: revision.to_string(),
        }
    }
}

/// Where a decision was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    /// An ext_authz check (gRPC).
    #[default]
    Grpc,
    /// A Data API query (`/v1/data/...`).
    DataApi,
    /// An ext_authz check over Envoy's HTTP protocol (`http_service`).
    HttpAuthz,
}

impl Origin {
    /// Whether `reason` is an error when the decision was asked for here. An undefined
    /// document read through the Data API is an answer (OPA logs no error for it); an
    /// undefined decision for an Envoy check is an error.
    pub fn is_error(self, reason: &crate::decision::DenyReason) -> bool {
        reason.is_error()
            && !(self == Origin::DataApi
                && matches!(reason, crate::decision::DenyReason::UndefinedDecision))
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Grpc => "grpc",
            Origin::DataApi => "data_api",
            Origin::HttpAuthz => "http_authz",
        }
    }
}

/// A request as sent: method, target (not decoded) and host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestLine {
    pub method: String,
    pub target: String,
    pub host: String,
}

impl RequestLine {
    /// The request line of an Envoy check.
    pub fn of(req: &crate::request::AuthzRequest) -> Option<RequestLine> {
        req.http.as_ref().map(|h| RequestLine {
            method: h.method.clone(),
            target: h.path.clone(),
            host: h.host.clone(),
        })
    }
}

/// RFC 3339 with nanoseconds, UTC, as OPA writes `timestamp`.
pub fn rfc3339_nanos(ns: i128) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(ns)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The trace and span id of a W3C `traceparent` header (`00-<trace>-<span>-<flags>`), read by
/// [`crate::trace_context::TraceParent::parse`].
pub fn parse_traceparent(h: &str) -> Option<(String, String)> {
    crate::trace_context::TraceParent::parse(h).map(|p| (p.trace_hex(), p.span_hex()))
}

impl DecisionRecord {
    /// OPA's decision-log event with arbiter's additions.
    pub fn to_event(&self, labels: &InstanceLabels) -> Json {
        let mut e = self.event_fields(labels);
        if let Some(input) = &self.input {
            e.insert("input".into(), to_json(&input.to_value(&self.identity)));
        }
        Json::Object(e)
    }

    /// Every field of the event but `input`, which writers serialize straight from the Rego
    /// value (see [`DecisionRecord::seal`]), as a JSON tree: what a mask or drop policy reads.
    /// It is the JSON that [`DecisionRecord::write_fields`] writes, read back.
    pub fn event_fields(&self, labels: &InstanceLabels) -> Map<String, Json> {
        let mut buf = Vec::with_capacity(1024);
        self.write_fields(labels, &mut buf);
        match serde_json::from_slice(&buf) {
            Ok(Json::Object(m)) => m,
            _ => Map::new(),
        }
    }

    /// Every field of the event but `input`, written as one JSON object straight to `out`, in
    /// the event's order, with no JSON tree in between (the log writer's cost per event).
    pub fn write_fields(&self, labels: &InstanceLabels, out: &mut Vec<u8>) {
        let mut e = Obj::open(out);
        let mut l = e.object("labels");
        labels.write(&mut l);
        l.close();
        e.value("decision_id", &self.decision_id);
        if let Some(t) = &self.trace_id {
            e.value("trace_id", t);
        }
        if let Some(s) = &self.span_id {
            e.value("span_id", s);
        }
        // OPA's `bundles`: each bundle the set came from, by name, with its manifest revision;
        // none for policies loaded from files (arbiter's `revision` names those).
        if let Some(p) = self.policies.as_ref().filter(|p| !p.bundles().is_empty()) {
            e.value("bundles", &p.bundles_json());
        }
        e.value("path", &self.path);
        let d = &self.decision;
        let failed = d.reason.as_ref().filter(|r| self.origin.is_error(r));
        match (failed, &d.result) {
            (Some(r), _) => {
                let mut o = e.object("error");
                o.value("code", r.code());
                o.value("message", &r.to_string());
                o.close();
            }
            (None, Some(result)) => e.value("result", result),
            (None, None) => {}
        }
        e.value("requested_by", &self.requested_by);
        e.value("timestamp", &rfc3339_nanos(self.timestamp_ns));
        let mut m = e.object("metrics");
        m.value("timer_rego_input_parse_ns", &self.timings.input_ns);
        m.value("timer_rego_query_eval_ns", &self.timings.eval_ns);
        m.value("timer_server_handler_ns", &self.server_ns);
        m.close();
        e.value("allowed", &d.allowed);
        e.value("http_status", &if d.allowed { 200 } else { d.http_status });
        e.value("reason", d.reason_code());
        if let Some(first) = d.decided_by.first() {
            e.value("policy", &first.policy);
            if let Some(rule) = &first.rule {
                e.value("rule", rule);
            }
        }
        if d.decided_by.len() > 1 {
            e.key("decided_by");
            e.out.push(b'[');
            for (i, x) in d.decided_by.iter().enumerate() {
                if i > 0 {
                    e.out.push(b',');
                }
                let mut o = Obj::open(e.out);
                o.value("policy", &x.policy);
                o.value("rule", &x.rule);
                o.close();
            }
            e.out.push(b']');
        }
        match &self.identity {
            crate::identity::IdentityOutcome::Valid(i) => {
                let mut o = e.object("identity");
                o.value("spiffe_id", i.id.as_str());
                o.value("source", i.source.as_str());
                o.close();
            }
            crate::identity::IdentityOutcome::Absent => e.value("identity", &()),
            crate::identity::IdentityOutcome::Invalid(why) => {
                let mut o = e.object("identity");
                o.value("error", why);
                o.close();
            }
        }
        if !d.audit.is_empty() {
            e.value("audit", &d.audit);
        }
        if let Some(shadow) = &d.istio_dry_run {
            e.value("istio_dry_run", shadow);
        }
        if let Some(s) = &self.shadow {
            let mut o = e.object("shadow");
            o.value("allowed", &s.allowed);
            o.value("reason", &s.reason);
            if let Some(p) = &s.policy {
                o.value("policy", p);
            }
            if let Some(r) = &s.rule {
                o.value("rule", r);
            }
            o.value("revision", &s.revision);
            o.close();
        }
        e.value("revision", &self.revision);
        e.value("dry_run", &self.dry_run);
        e.value("origin", self.origin.as_str());
        if let Some(r) = &self.request {
            let mut o = e.object("request");
            o.value("method", &r.method);
            o.value("path", &r.target);
            o.value("host", &r.host);
            o.close();
        }
        e.close();
    }

    /// The event as the log writer writes it when no mask or drop policy is loaded: its
    /// fields, `erased` (the credential headers in `masked_headers` taken out of the input),
    /// OPA's console envelope when `console` (`level`, `msg`, `time`, `type`), then the
    /// chain's `prev_hash`, the input and `hash`. Returns the line and its hash.
    pub fn seal(
        &self,
        labels: &InstanceLabels,
        masked_headers: &[String],
        console: bool,
        prev_hash: &str,
    ) -> (Vec<u8>, String) {
        self.seal_into(
            Vec::with_capacity(2048),
            labels,
            masked_headers,
            console,
            prev_hash,
        )
    }

    /// [`DecisionRecord::seal`] into `buffer` (emptied first): a writer that hands each line's
    /// buffer back keeps one allocation, grown once to its largest event, instead of one per
    /// event (and a copy each time an event outgrows a fresh one).
    pub fn seal_into(
        &self,
        mut buffer: Vec<u8>,
        labels: &InstanceLabels,
        masked_headers: &[String],
        console: bool,
        prev_hash: &str,
    ) -> (Vec<u8>, String) {
        buffer.clear();
        let mut body = buffer;
        self.write_fields(labels, &mut body);
        // The credential headers are left out while the input is written (no copy of it).
        let (erased, mask) = match &self.input {
            None => (Vec::new(), None),
            Some(RecordInput::Document(v)) => {
                let mask = crate::audit::mask::header_mask(v, masked_headers);
                (mask.erased.clone(), Some(mask))
            }
            Some(RecordInput::Request(r)) => {
                (r.reading.masked_pointers(&r.request, masked_headers), None)
            }
        };
        if !erased.is_empty() {
            Obj::reopen(&mut body).value("erased", &erased);
            body.push(b'}');
        }
        if console {
            let mut e = Obj::reopen(&mut body);
            for (k, v) in console_envelope(self.timestamp_ns) {
                e.value(k, &v);
            }
            e.close();
        }
        let write_input = |out: &mut Vec<u8>| match (&self.input, &mask) {
            (Some(RecordInput::Document(input)), Some(mask)) => {
                serde_json::to_writer(out, &crate::audit::mask::Masked { input, mask }).is_ok()
            }
            (Some(RecordInput::Request(r)), _) => r.reading.write_document(
                &r.request,
                self.identity.to_value().as_ref(),
                masked_headers,
                out,
            ),
            _ => false,
        };
        crate::audit::chain::seal_written(
            body,
            self.input.is_some().then_some(write_input),
            prev_hash,
        )
    }
}

/// OPA's console envelope of a decision event: on the console, OPA writes each event as a
/// log line with these fields beside the event's (`time`: the event's `timestamp_ns` to the
/// second).
pub fn console_envelope(timestamp_ns: i128) -> [(&'static str, String); 4] {
    let secs = timestamp_ns.div_euclid(1_000_000_000) * 1_000_000_000;
    [
        ("level", "info".to_owned()),
        ("msg", "Decision Log".to_owned()),
        ("time", rfc3339_nanos(secs)),
        ("type", "openpolicyagent.org/decision_logs".to_owned()),
    ]
}

/// A JSON object written field by field (keys are the event's own names: plain ASCII, never
/// escaped), values through serde_json, so every value is encoded as serde_json encodes it.
struct Obj<'a> {
    out: &'a mut Vec<u8>,
    empty: bool,
}

impl<'a> Obj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Obj { out, empty: true }
    }

    /// Continues a closed object: its `}` is taken off (the caller closes it again).
    fn reopen(out: &'a mut Vec<u8>) -> Self {
        let empty = out.len() <= 2;
        out.pop();
        Obj { out, empty }
    }

    fn key(&mut self, k: &str) {
        debug_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(k.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// A field whose name is not the event's own (a configured label): escaped as JSON.
    fn value_any_key<T: serde::Serialize + ?Sized>(&mut self, k: &str, v: &T) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        if serde_json::to_writer(&mut *self.out, k).is_err() {
            self.out.extend_from_slice(b"\"\"");
        }
        self.out.push(b':');
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            self.out.extend_from_slice(b"null");
        }
    }

    fn value<T: serde::Serialize + ?Sized>(&mut self, k: &str, v: &T) {
        self.key(k);
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            // only maps with non-string keys fail; the event has none
            self.out.extend_from_slice(b"null");
        }
    }

    fn object(&mut self, k: &str) -> Obj<'_> {
        self.key(k);
        Obj::open(self.out)
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::DenyReason;

    fn record(decision: Decision) -> DecisionRecord {
        DecisionRecord {
            decision_id: "d-1".into(),
            timestamp_ns: 1_795_690_800_123_456_789,
            path: "envoy/authz/allow".into(),
            input: Some(RecordInput::Document(
                Value::from_json_str(r#"{"a": 1}"#).unwrap(),
            )),
            decision,
            timings: Timings {
                input_ns: 10,
                eval_ns: 20,
            },
            server_ns: 40,
            requested_by: "127.0.0.1:5000".into(),
            revision: "rev".into(),
            dry_run: false,
            trace_id: None,
            span_id: None,
            identity: crate::identity::IdentityOutcome::Absent,
            policies: None,
            origin: Default::default(),
            request: None,
            shadow: None,
        }
    }

    #[test]
    fn events_name_their_origin_and_the_request_as_sent() {
        let labels = InstanceLabels {
            id: "i".into(),
            version: "v".into(),
            extra: Default::default(),
        };
        let mut r = record(Decision::deny(DenyReason::Timeout));
        r.input = None;
        r.request = Some(RequestLine {
            method: "GET".into(),
            target: "/%61dmin?x".into(),
            host: "h".into(),
        });
        let e = r.event_fields(&labels);
        assert_eq!(e["origin"], "grpc");
        assert_eq!(
            e["request"],
            json!({"method": "GET", "path": "/%61dmin?x", "host": "h"})
        );
        r.origin = Origin::DataApi;
        r.request = None;
        let e = r.event_fields(&labels);
        assert_eq!(e["origin"], "data_api");
        assert!(!e.contains_key("request"));
    }

    #[test]
    fn event_has_opa_fields() {
        let labels = InstanceLabels {
            id: "i".into(),
            version: "0.1.0".into(),
            extra: Default::default(),
        };
        let e = record(Decision::from_result(&Value::Bool(true))).to_event(&labels);
        assert_eq!(e["decision_id"], "d-1");
        assert_eq!(e["path"], "envoy/authz/allow");
        assert_eq!(e["input"], json!({"a": 1}));
        assert_eq!(e["result"], true);
        assert_eq!(e["timestamp"], "2026-11-26T11:00:00.123456789Z");
        assert_eq!(e["metrics"]["timer_rego_query_eval_ns"], 20);
        assert_eq!(e["labels"]["id"], "i");
        assert_eq!(e["allowed"], true);
        assert_eq!(e["reason"], "allowed");

        let e = record(Decision::deny(DenyReason::Timeout)).to_event(&labels);
        assert_eq!(e["error"]["code"], "timeout");
        assert!(e.get("result").is_none());
        assert_eq!(e["http_status"], 403);
    }

    /// Issue 25, item 8: `bundles` names the loaded bundles with their manifest revisions
    /// (none for files), `labels` carries the configured ones beside `id` and `version`, and
    /// an undefined Data API read is neither allowed nor an error.
    #[test]
    fn bundles_labels_and_undefined_reads_as_opa() {
        let labels = InstanceLabels {
            id: "i".into(),
            version: "v".into(),
            extra: [("region", "eu-1"), ("id", "configured")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut sources = crate::PolicySources::default();
        sources.add_rego(
            "a.rego",
            "package envoy.authz
allow := true
",
        );
        let files = crate::PolicySet::from_sources(&sources, &crate::LoadOptions::default())
            .map(std::sync::Arc::new)
            .unwrap();
        sources.bundles.insert("envoy/authz".into(), "r7".into());
        sources.bundles.insert("roles".into(), "r2".into());
        let bundled = crate::PolicySet::from_sources(&sources, &crate::LoadOptions::default())
            .map(std::sync::Arc::new)
            .unwrap();
        let mut r = record(Decision::from_result(&Value::Bool(true)));
        r.policies = Some(files);
        let e = r.to_event(&labels);
        assert!(e.get("bundles").is_none(), "{e}");
        assert_eq!(
            e["labels"],
            json!({"id": "i", "version": "v", "region": "eu-1"})
        );
        r.policies = Some(bundled);
        assert_eq!(
            r.to_event(&labels)["bundles"],
            json!({"envoy/authz": {"revision": "r7"}, "roles": {"revision": "r2"}})
        );
        let mut read = record(Decision::deny(DenyReason::UndefinedDecision));
        read.origin = Origin::DataApi;
        let e = read.to_event(&labels);
        assert_eq!(e["allowed"], false);
        assert!(e.get("error").is_none() && e.get("result").is_none(), "{e}");
        // The same for an Envoy check is an error.
        let e = record(Decision::deny(DenyReason::UndefinedDecision)).to_event(&labels);
        assert_eq!(e["error"]["code"], "undefined_decision");
    }

    /// Two events in full, as the log writer's common path seals them. The expected lines were
    /// written by the build before the event was serialized without a JSON tree (its
    /// `event_fields` through `serde_json::Map` and `seal_with_input`, at 59bd34f): the bytes, and so
    /// every hash, stay what they were.
    #[test]
    fn sealed_lines_are_byte_for_byte_as_before() {
        for (line, want) in golden_lines() {
            assert_eq!(String::from_utf8_lossy(&line), want);
        }
    }

    fn golden_lines() -> Vec<(Vec<u8>, &'static str)> {
        let labels = InstanceLabels {
            id: "i-1".into(),
            version: "v\u{2028}2".into(),
            extra: [("region", "eu-1"), ("id", "configured")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        let mut allow = record(Decision::from_result(
            &Value::from_json_str(r#"{"allowed": true, "headers": {"x": "y"}}"#).unwrap(),
        ));
        allow.trace_id = Some("4bf92f3577b34da6a3ce929d0e0e4736".into());
        allow.span_id = Some("00f067aa0ba902b7".into());
        allow.decision.decided_by = vec![
            crate::decision::DecidedBy {
                policy: "a.rego".into(),
                rule: Some("allow".into()),
            },
            crate::decision::DecidedBy {
                policy: "b.cel.yaml".into(),
                rule: None,
            },
        ];
        allow.decision.audit = vec!["ns/audit-all".into()];
        allow.decision.istio_dry_run = Some(json!({"allowed": false, "policy": "p"}));
        allow.request = Some(RequestLine {
            method: "GET".into(),
            target: "/a\u{2029}b?q=\"1\"".into(),
            host: "h".into(),
        });
        allow.identity = crate::identity::IdentityOutcome::Invalid("bad \u{85} id".into());
        allow.input = Some(RecordInput::Document(
            Value::from_json_str(
                r#"{"attributes": {"request": {"http": {"headers": {"authorization": "Bearer x", "a": "\u2028"}}}}}"#,
            )
            .unwrap(),
        ));
        let mut deny = record(Decision::deny(DenyReason::Timeout));
        deny.dry_run = true;
        deny.input = None;
        let mut out = Vec::new();
        let mut prev = crate::audit::chain::GENESIS.to_string();
        for (r, want) in [(allow, GOLDEN_ALLOW), (deny, GOLDEN_DENY)] {
            let level = [("level", "info".to_owned())];
            let (line, hash) = seal_for_test(&r, &labels, &level, &prev);
            // the writer's own path gives the same bytes as the JSON tree, with and without
            // OPA's console envelope
            let masked = ["authorization".to_owned()];
            let console = console_envelope(r.timestamp_ns);
            for (on, envelope) in [(false, &[][..]), (true, &console[..])] {
                assert_eq!(
                    String::from_utf8_lossy(&r.seal(&labels, &masked, on, &prev).0),
                    String::from_utf8_lossy(&seal_for_test(&r, &labels, envelope, &prev).0),
                );
            }
            prev = hash;
            out.push((line, want));
        }
        out
    }

    /// The writer's common path: the fields, the erased credential headers, the console
    /// envelope, the chain.
    fn seal_for_test(
        r: &DecisionRecord,
        labels: &InstanceLabels,
        envelope: &[(&str, String)],
        prev: &str,
    ) -> (Vec<u8>, String) {
        let mut fields = r.event_fields(labels);
        let mut input = r.input.as_ref().map(|i| i.to_value(&r.identity));
        if let Some(i) = input.as_mut() {
            let erased = crate::audit::mask::mask_input_headers(i, &["authorization".to_string()]);
            if !erased.is_empty() {
                fields.insert(
                    "erased".into(),
                    Json::Array(erased.into_iter().map(Json::String).collect()),
                );
            }
        }
        for (k, v) in envelope {
            fields.insert((*k).into(), json!(v));
        }
        crate::audit::chain::seal_with_input(fields, input.as_ref(), prev)
    }

    const GOLDEN_ALLOW: &str = r##"{"labels":{"id":"i-1","region":"eu-1","version":"v\u20282"},"decision_id":"d-1","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","path":"envoy/authz/allow","result":{"allowed":true,"headers":{"x":"y"}},"requested_by":"127.0.0.1:5000","timestamp":"2026-11-26T11:00:00.123456789Z","metrics":{"timer_rego_input_parse_ns":10,"timer_rego_query_eval_ns":20,"timer_server_handler_ns":40},"allowed":true,"http_status":200,"reason":"allowed","policy":"a.rego","rule":"allow","decided_by":[{"policy":"a.rego","rule":"allow"},{"policy":"b.cel.yaml","rule":null}],"identity":{"error":"bad \u0085 id"},"audit":["ns/audit-all"],"istio_dry_run":{"allowed":false,"policy":"p"},"revision":"rev","dry_run":false,"origin":"grpc","request":{"method":"GET","path":"/a\u2029b?q=\"1\"","host":"h"},"erased":["/input/attributes/request/http/headers/authorization"],"level":"info","prev_hash":"0000000000000000000000000000000000000000000000000000000000000000","input":{"attributes":{"request":{"http":{"headers":{"a":"\u2028"}}}}},"hash":"91b5558f358a08e16552e53da7b362c2c805f72c79da8f67736eddc9380fda09"}
"##;
    const GOLDEN_DENY: &str = r##"{"labels":{"id":"i-1","region":"eu-1","version":"v\u20282"},"decision_id":"d-1","path":"envoy/authz/allow","error":{"code":"timeout","message":"timeout"},"requested_by":"127.0.0.1:5000","timestamp":"2026-11-26T11:00:00.123456789Z","metrics":{"timer_rego_input_parse_ns":10,"timer_rego_query_eval_ns":20,"timer_server_handler_ns":40},"allowed":false,"http_status":403,"reason":"timeout","identity":null,"revision":"rev","dry_run":true,"origin":"grpc","level":"info","prev_hash":"91b5558f358a08e16552e53da7b362c2c805f72c79da8f67736eddc9380fda09","hash":"53324449a906a34d7e639c1c88dab4e7f48c6c786f3a4e8dfe8aa5e60b539ca2"}
"##;

    /// A check's record holds its request as read; the event written from it is byte for
    /// byte the event of the same record holding the document's value (what the server wrote
    /// before): credential headers erased from `headers` and `headerMap`, the caller's identity
    /// as `input.identity`, with and without OPA's console envelope.
    #[test]
    fn a_checks_input_is_written_from_its_request_as_from_its_value() {
        use crate::request::{AuthzRequest, HttpRequest, Peer, RawHeader};
        let labels = InstanceLabels {
            id: "i".into(),
            version: "v".into(),
            extra: Default::default(),
        };
        let mut request = AuthzRequest {
            source: Some(Peer {
                principal: "spiffe://example.org/ns/prod/sa/web".into(),
                ..Peer::default()
            }),
            http: Some(HttpRequest {
                method: "GET".into(),
                path: "/api/v1/products?x=1".into(),
                host: "shop.example.org".into(),
                headers: vec![
                    ("authorization".into(), "Bearer secret".into()),
                    ("x-tenant".into(), "acme".into()),
                    ("Cookie".into(), "sid=1".into()),
                ],
                ..HttpRequest::default()
            }),
            ..AuthzRequest::default()
        };
        let masked: Vec<String> = crate::audit::mask::DEFAULT_MASKED_HEADERS
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut checked = 0;
        for raw in [false, true] {
            if raw && let Some(h) = request.http.as_mut() {
                h.header_map = Some(
                    std::mem::take(&mut h.headers)
                        .into_iter()
                        .map(|(key, value)| RawHeader {
                            key,
                            value,
                            raw_value: vec![],
                        })
                        .collect(),
                );
            }
            let reading =
                crate::input::read_request(&request, &crate::input::InputOptions::default())
                    .unwrap();
            let identity = crate::identity::resolve(&request, &Default::default(), 0);
            assert!(identity.identity().is_some(), "a valid identity");
            let mut from_value = record(Decision::allow());
            from_value.identity = identity;
            from_value.input = Some(RecordInput::Document(
                reading.document(&request, from_value.identity.to_value().as_ref()),
            ));
            let from_request = DecisionRecord {
                input: Some(RecordInput::Request(Box::new(RequestInput {
                    request: request.clone(),
                    reading,
                }))),
                ..from_value.clone()
            };
            for console in [false, true] {
                let (want, want_hash) =
                    from_value.seal(&labels, &masked, console, crate::audit::chain::GENESIS);
                let (got, got_hash) =
                    from_request.seal(&labels, &masked, console, crate::audit::chain::GENESIS);
                let text = String::from_utf8_lossy(&got);
                assert_eq!(text, String::from_utf8_lossy(&want));
                assert_eq!(got_hash, want_hash);
                assert!(
                    text.contains(r#""erased":["/input/attributes/request/http/"#),
                    "{text}"
                );
                assert!(
                    !text.contains("secret") && !text.contains("sid=1"),
                    "{text}"
                );
                assert!(text.contains(r#""identity":{"spiffe_id":"#), "{text}");
                checked += 1;
            }
            // The JSON tree (mask and drop policies) holds the same input.
            assert_eq!(from_request.to_event(&labels), from_value.to_event(&labels));
        }
        assert_eq!(checked, 4);
    }

    /// The labels written field by field are the JSON `to_json` gives (`/v1/status` serves that),
    /// whatever the configured names.
    #[test]
    fn labels_are_written_as_their_json() {
        for extra in [
            vec![],
            vec![
                ("version", "configured"),
                ("a\"b", "\u{2028}"),
                ("zone", "z"),
            ],
            vec![("id", "x"), ("ümlaut", "y")],
        ] {
            let labels = InstanceLabels {
                id: "i".into(),
                version: "v".into(),
                extra: extra
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            };
            let mut out = Vec::new();
            let mut o = Obj::open(&mut out);
            labels.write(&mut o);
            o.close();
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&labels.to_json()).unwrap()
            );
        }
    }

    #[test]
    fn traceparent() {
        assert_eq!(
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some((
                "4bf92f3577b34da6a3ce929d0e0e4736".into(),
                "00f067aa0ba902b7".into()
            ))
        );
        assert_eq!(parse_traceparent("00-0000-00f067aa0ba902b7-01"), None);
        assert_eq!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
    }
}

//! Replaying recorded decisions under other policies: which requests a policy change would
//! have let in, and which it would have turned away.
//!
//! Every decision-log event of an Envoy check carries the input the policy saw. The input is
//! OPA-Envoy's document, whose `attributes` are the `CheckRequest` in protobuf JSON, so the
//! server's own reader turns it back into the request ([`crate::request::AuthzRequest`]) and
//! [`Authorizer::check`] decides it again exactly as `serve` would: the same input building,
//! path reading and identity rules (one reading of each fact; nothing here re-implements
//! them), with the clock frozen at the event's `timestamp` so that time-of-day rules, token
//! expiry and certificate validity decide as they did then.
//!
//! What is compared is allowed against denied. The baseline is the recorded decision, or, with
//! a baseline policy set, the same event re-decided under it (then drift in time or data
//! between recording and replay does not count, and neither do recorded errors).
//!
//! Events that cannot be compared are counted, never dropped silently:
//! - Data API queries (`origin: data_api`) ask for documents, not for access;
//! - events without an input (refused before one was built: a malformed path, overload);
//! - under the recorded baseline, events whose recorded denial was not the policy's answer
//!   ([`NOT_DECISIONS`]: overload, timeouts, an unavailable audit log);
//! - lines that are not events, and inputs the reader refuses.
//!
//! An event whose input was masked before it was written (`erased`, `masked`) is replayed with
//! what is left and flagged *approximate* when the policies that decide it may read a masked
//! field: the identity fields always (the engine reads them), any other field when its name
//! (the pointer's last segment) appears in the text of a Rego, CEL or Istio policy of that
//! set. That reading is deliberately wide: it may flag an event whose decision does not depend
//! on the field, and it misses only a policy that reaches a field without naming it (iterating
//! over every header), which the README states.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use serde_json::{Map, Value as Json, json};

use super::summary::{parse_ts, path_of};
use crate::authorizer::{Authorizer, CheckOutcome};
use crate::data_ref::DataRef;
use crate::decision::Decision;
use crate::identity::IdentityOutcome;
use crate::loader::PolicySources;
use crate::request::CheckRequestReader;

/// Denials that are not a policy's answer: the server could not decide in time or at all.
/// A replay against the recorded baseline counts them instead of comparing them, and the
/// shadow set (`serve --shadow`) does not evaluate them.
pub const NOT_DECISIONS: &[&str] = &[
    "overload",
    "timeout",
    "limit_exceeded:time",
    "audit_unavailable",
];

/// Example events kept per group, unless configured.
pub const DEFAULT_EXAMPLES: usize = 3;

/// One policy set that decides replayed events: an authorizer for its configured decision path
/// and, made on first use, one for every other path events name.
pub struct Side {
    authorizer: Authorizer,
    /// The authorizer's decision path in slash form, as events record it.
    path: String,
    others: RwLock<HashMap<String, Arc<Authorizer>>>,
    mentions: Mentions,
}

impl Side {
    /// `sources` are the files the authorizer's set was loaded from: the masked fields its
    /// policies may read are looked up in their text.
    pub fn new(authorizer: Authorizer, sources: &PolicySources) -> Self {
        Side {
            path: authorizer.path().slash_path(),
            authorizer,
            others: RwLock::new(HashMap::new()),
            mentions: Mentions::of(sources),
        }
    }

    /// The authorizer for an event's decision path (slash form).
    fn for_path(&self, path: &str) -> Result<Arc<Authorizer>, String> {
        if let Ok(known) = self.others.read()
            && let Some(a) = known.get(path)
        {
            return Ok(a.clone());
        }
        let reference = DataRef::parse(path).map_err(|e| e.to_string())?;
        let a = &self.authorizer;
        let made = Arc::new(
            Authorizer::new(a.policies().clone(), reference, a.input_options().clone())
                .with_identity_options(a.identity_options().clone()),
        );
        if let Ok(mut known) = self.others.write() {
            known.insert(path.to_string(), made.clone());
        }
        Ok(made)
    }

    fn decide(
        &self,
        path: &str,
        request: &crate::request::AuthzRequest,
    ) -> Result<CheckOutcome, String> {
        if path.is_empty() || path == self.path {
            return Ok(self.authorizer.check(request));
        }
        Ok(self.for_path(path)?.check(request))
    }
}

/// The text of a set's policies (Rego, CEL, Istio; not tests, not data), lower case: where a
/// masked field's name is looked for.
struct Mentions {
    text: String,
}

impl Mentions {
    fn of(sources: &PolicySources) -> Self {
        let mut text = String::new();
        for f in sources
            .rego
            .iter()
            .chain(&sources.cel)
            .chain(&sources.istio)
        {
            text.push_str(&f.text.to_ascii_lowercase());
            text.push('\n');
        }
        Mentions { text }
    }

    /// Whether a policy of the set may read the input field at `pointer` (`/input/...`).
    fn may_read(&self, pointer: &str) -> bool {
        let Some(field) = pointer.strip_prefix("/input/") else {
            // `/result`, `/nd_builtin_cache`: not what the policy reads.
            return false;
        };
        // The engine itself reads these to establish the caller's identity.
        if field.starts_with("attributes/source/")
            || field.ends_with("/x-forwarded-client-cert")
            || field == "attributes/source"
        {
            return true;
        }
        let last = field.rsplit('/').next().unwrap_or(field);
        let name = last
            .replace("~1", "/")
            .replace("~0", "~")
            .to_ascii_lowercase();
        name.is_empty() || self.text.contains(&name)
    }
}

/// Allowed or denied, why, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub allowed: bool,
    /// `allowed`, or the denial's reason code.
    pub reason: String,
    /// `policy:rule`, `policy`, or `(none)`, as `arbiter audit summary` names rules.
    pub rule: String,
}

impl Verdict {
    fn recorded(e: &Json) -> Option<Verdict> {
        let allowed = e.get("allowed").and_then(Json::as_bool)?;
        let reason = e
            .get("reason")
            .and_then(Json::as_str)
            .unwrap_or(if allowed { "allowed" } else { "unknown" })
            .to_string();
        Some(Verdict {
            allowed,
            reason,
            rule: super::summary::rule_of(e),
        })
    }

    fn of(d: &Decision) -> Verdict {
        Verdict {
            allowed: d.allowed,
            reason: d.reason_code().to_string(),
            rule: {
                let first = d.decided_by.first();
                super::summary::rule_label(
                    first.map(|b| b.policy.as_str()),
                    first.and_then(|b| b.rule.as_deref()),
                )
            },
        }
    }
}

/// Which way a decision flipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Denied before, allowed after: access the change opens (the dangerous direction).
    NewAccess,
    /// Allowed before, denied after: requests the change breaks (the outage direction).
    NewDenial,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::NewAccess => "new_access",
            Direction::NewDenial => "new_denial",
        }
    }
}

/// One flipped event, as shown in a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Example {
    pub decision_id: String,
    pub timestamp: String,
    /// `file:line`.
    pub at: String,
    pub before: Verdict,
    pub after: Verdict,
    pub approximate: bool,
    /// Position in the replayed files, for a stable choice of examples.
    #[serde(skip)]
    pub seq: u64,
}

/// Flips that share a key: how many, how many approximate, and the first few.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Group {
    pub count: u64,
    pub approximate: u64,
    pub examples: Vec<Example>,
}

impl Group {
    fn add(&mut self, x: &Example, keep: usize) {
        self.count += 1;
        self.approximate += u64::from(x.approximate);
        if self.examples.len() < keep {
            self.examples.push(x.clone());
        } else if let Some(last) = self.examples.last()
            && x.seq < last.seq
        {
            self.examples.pop();
            self.examples.push(x.clone());
        }
        self.examples.sort_by_key(|e| e.seq);
    }

    fn merge(&mut self, other: Group, keep: usize) {
        self.count += other.count;
        self.approximate += other.approximate;
        self.examples.extend(other.examples);
        self.examples.sort_by_key(|e| e.seq);
        self.examples.truncate(keep);
    }
}

/// Flips grouped by who asked for what.
pub type RequestKey = (Direction, String, String, String);
/// Flips grouped by the rule that decided before and after.
pub type RuleKey = (Direction, String, String);

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Lines read.
    pub lines: u64,
    /// Events re-decided and compared.
    pub compared: u64,
    pub unchanged: u64,
    pub new_access: u64,
    pub new_denials: u64,
    /// Compared events whose input was masked where the deciding policies may read it.
    pub approximate: u64,
    /// Of those, how many flipped.
    pub approximate_flips: u64,
    /// Data API queries (not access decisions).
    pub data_api: u64,
    /// Events without an input, by recorded reason.
    pub without_input: BTreeMap<String, u64>,
    /// Events recorded with an error, by reason (compared unless in `not_compared`).
    pub recorded_errors: BTreeMap<String, u64>,
    /// Recorded errors that are not decisions, not compared (recorded baseline only).
    pub not_compared: BTreeMap<String, u64>,
    /// Re-decided events the candidate decided with an error, by reason.
    pub candidate_errors: BTreeMap<String, u64>,
    /// Lines that are not events, events without a recorded decision, inputs the reader
    /// refuses.
    pub unreadable: u64,
    /// The first few reasons a line was unreadable (`file:line: why`), by position.
    unreadable_first: Vec<(u64, String)>,
    pub by_request: BTreeMap<RequestKey, Group>,
    pub by_rule: BTreeMap<RuleKey, Group>,
    /// Examples kept per group.
    pub keep: usize,
}

impl Report {
    pub fn new(keep: usize) -> Self {
        Report {
            keep,
            ..Report::default()
        }
    }

    pub fn flips(&self) -> u64 {
        self.new_access + self.new_denials
    }

    fn unreadable(&mut self, seq: u64, at: &str, why: &str) {
        self.unreadable += 1;
        if self.unreadable_first.len() < 5 {
            self.unreadable_first.push((seq, format!("{at}: {why}")));
        }
    }

    /// The first few reasons a line was unreadable (`file:line: why`).
    pub fn unreadable_examples(&self) -> impl Iterator<Item = &str> {
        self.unreadable_first.iter().map(|(_, s)| s.as_str())
    }

    /// Fold another worker's report into this one.
    pub fn merge(&mut self, o: Report) {
        self.lines += o.lines;
        self.compared += o.compared;
        self.unchanged += o.unchanged;
        self.new_access += o.new_access;
        self.new_denials += o.new_denials;
        self.approximate += o.approximate;
        self.approximate_flips += o.approximate_flips;
        self.data_api += o.data_api;
        self.unreadable += o.unreadable;
        for (map, other) in [
            (&mut self.without_input, o.without_input),
            (&mut self.recorded_errors, o.recorded_errors),
            (&mut self.not_compared, o.not_compared),
            (&mut self.candidate_errors, o.candidate_errors),
        ] {
            for (k, v) in other {
                *map.entry(k).or_default() += v;
            }
        }
        self.unreadable_first.extend(o.unreadable_first);
        self.unreadable_first.sort();
        self.unreadable_first.truncate(5);
        let keep = self.keep;
        for (k, g) in o.by_request {
            self.by_request.entry(k).or_default().merge(g, keep);
        }
        for (k, g) in o.by_rule {
            self.by_rule.entry(k).or_default().merge(g, keep);
        }
    }

    /// The groups by request of one direction, the largest first.
    pub fn requests(&self, d: Direction) -> Vec<(&RequestKey, &Group)> {
        largest_first(&self.by_request, d, |k| k.0)
    }

    /// The groups by rule of one direction, the largest first.
    pub fn rules(&self, d: Direction) -> Vec<(&RuleKey, &Group)> {
        largest_first(&self.by_rule, d, |k| k.0)
    }

    /// The report as JSON (`arbiter replay -f json`).
    pub fn to_json(&self) -> Json {
        let groups_by_request = |d: Direction| -> Vec<Json> {
            self.requests(d)
                .into_iter()
                .map(|((_, identity, path, method), g)| {
                    json!({"identity": identity, "path": path, "method": method,
                        "count": g.count, "approximate": g.approximate, "examples": g.examples})
                })
                .collect()
        };
        let groups_by_rule = |d: Direction| -> Vec<Json> {
            self.rules(d)
                .into_iter()
                .map(|((_, before, after), g)| {
                    json!({"rule_before": before, "rule_after": after,
                        "count": g.count, "approximate": g.approximate, "examples": g.examples})
                })
                .collect()
        };
        json!({
            "lines": self.lines,
            "compared": self.compared,
            "unchanged": self.unchanged,
            "new_access": self.new_access,
            "new_denials": self.new_denials,
            "approximate": self.approximate,
            "approximate_flips": self.approximate_flips,
            "not_replayed": {
                "data_api": self.data_api,
                "without_input": self.without_input,
                "recorded_not_decisions": self.not_compared,
                "unreadable": self.unreadable,
                "unreadable_examples": self.unreadable_examples().collect::<Vec<_>>(),
            },
            "recorded_errors": self.recorded_errors,
            "candidate_errors": self.candidate_errors,
            "flips": {
                "new_access": {
                    "by_request": groups_by_request(Direction::NewAccess),
                    "by_rule": groups_by_rule(Direction::NewAccess),
                },
                "new_denials": {
                    "by_request": groups_by_request(Direction::NewDenial),
                    "by_rule": groups_by_rule(Direction::NewDenial),
                },
            },
        })
    }
}

/// The groups of `map` in direction `d`: most events first, then by key.
fn largest_first<K: Ord>(
    map: &BTreeMap<K, Group>,
    d: Direction,
    direction: impl Fn(&K) -> Direction,
) -> Vec<(&K, &Group)> {
    let mut v: Vec<(&K, &Group)> = map.iter().filter(|(k, _)| direction(k) == d).collect();
    v.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    v
}

/// Re-decides events under a candidate set, against the recorded decision or a baseline set.
pub struct Replayer {
    candidate: Side,
    baseline: Option<Side>,
    reader: CheckRequestReader,
    keep: usize,
}

/// What happened to one line.
enum Replayed {
    Compared {
        before: Verdict,
        after: Verdict,
        approximate: bool,
        identity: String,
    },
    DataApi,
    WithoutInput(String),
    NotCompared(String),
    Unreadable(String),
}

impl Replayer {
    /// `reader` is the server's reading of a `CheckRequest` in protobuf JSON.
    pub fn new(candidate: Side, baseline: Option<Side>, reader: CheckRequestReader) -> Self {
        Replayer {
            candidate,
            baseline,
            reader,
            keep: DEFAULT_EXAMPLES,
        }
    }

    /// Keep `n` example events per group.
    pub fn with_examples(mut self, n: usize) -> Self {
        self.keep = n;
        self
    }

    fn replay_event(&self, e: &Json) -> Replayed {
        let Json::Object(event) = e else {
            return Replayed::Unreadable("not a JSON object".into());
        };
        if event.get("decision_id").is_none() {
            return Replayed::Unreadable("not a decision event (no `decision_id`)".into());
        }
        if event.get("origin").and_then(Json::as_str) == Some("data_api") {
            return Replayed::DataApi;
        }
        let Some(recorded) = Verdict::recorded(e) else {
            return Replayed::Unreadable("the event records no decision (`allowed`)".into());
        };
        let input = match event.get("input") {
            Some(i @ Json::Object(_)) => i,
            _ => return Replayed::WithoutInput(recorded.reason),
        };
        let Some(ts) = event
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(parse_ts)
            .and_then(|t| i64::try_from(t).ok())
        else {
            return Replayed::Unreadable("no readable `timestamp`".into());
        };
        let path = event.get("path").and_then(Json::as_str).unwrap_or_default();
        let request = match (self.reader)(input) {
            Ok(r) => r,
            Err(why) => return Replayed::Unreadable(format!("its input does not read: {why}")),
        };
        let masked = masked_pointers(event);
        let _frozen = crate::clock::freeze(ts);
        let after = match self.candidate.decide(path, &request) {
            Ok(o) => o,
            Err(why) => return Replayed::Unreadable(format!("decision path `{path}`: {why}")),
        };
        let mut approximate = masked.iter().any(|p| self.candidate.mentions.may_read(p));
        let before = match &self.baseline {
            None => {
                if NOT_DECISIONS.contains(&recorded.reason.as_str()) {
                    return Replayed::NotCompared(recorded.reason);
                }
                recorded
            }
            Some(b) => {
                approximate |= masked.iter().any(|p| b.mentions.may_read(p));
                match b.decide(path, &request) {
                    Ok(o) => Verdict::of(&o.decision),
                    Err(why) => {
                        return Replayed::Unreadable(format!("decision path `{path}`: {why}"));
                    }
                }
            }
        };
        let identity = match &after.identity {
            IdentityOutcome::Valid(i) => i.id.as_str().to_string(),
            IdentityOutcome::Absent => "(no identity)".into(),
            IdentityOutcome::Invalid(_) => "(invalid identity)".into(),
        };
        Replayed::Compared {
            before,
            after: Verdict::of(&after.decision),
            approximate,
            identity,
        }
    }

    /// Replay one line into `report`.
    pub fn replay_line(&self, line: &[u8], at: &str, seq: u64, report: &mut Report) {
        report.lines += 1;
        let e: Json = match serde_json::from_slice(line) {
            Ok(e) => e,
            Err(why) => {
                report.unreadable(seq, at, &format!("not JSON: {why}"));
                return;
            }
        };
        if let Some(reason) = e.get("reason").and_then(Json::as_str)
            && e.get("error").is_some()
        {
            *report
                .recorded_errors
                .entry(reason.to_string())
                .or_default() += 1;
        }
        match self.replay_event(&e) {
            Replayed::DataApi => report.data_api += 1,
            Replayed::WithoutInput(r) => *report.without_input.entry(r).or_default() += 1,
            Replayed::NotCompared(r) => *report.not_compared.entry(r).or_default() += 1,
            Replayed::Unreadable(why) => report.unreadable(seq, at, &why),
            Replayed::Compared {
                before,
                after,
                approximate,
                identity,
            } => {
                report.compared += 1;
                report.approximate += u64::from(approximate);
                if !after.allowed && after.reason != "policy_denied" {
                    *report
                        .candidate_errors
                        .entry(after.reason.clone())
                        .or_default() += 1;
                }
                let direction = match (before.allowed, after.allowed) {
                    (false, true) => Direction::NewAccess,
                    (true, false) => Direction::NewDenial,
                    _ => {
                        report.unchanged += 1;
                        return;
                    }
                };
                match direction {
                    Direction::NewAccess => report.new_access += 1,
                    Direction::NewDenial => report.new_denials += 1,
                }
                report.approximate_flips += u64::from(approximate);
                let x = Example {
                    decision_id: string_at(&e, "/decision_id"),
                    timestamp: string_at(&e, "/timestamp"),
                    at: at.to_string(),
                    before,
                    after,
                    approximate,
                    seq,
                };
                let method = string_at(&e, "/input/attributes/request/http/method");
                let keep = report.keep;
                report
                    .by_rule
                    .entry((direction, x.before.rule.clone(), x.after.rule.clone()))
                    .or_default()
                    .add(&x, keep);
                report
                    .by_request
                    .entry((direction, identity, path_of(&e), method))
                    .or_default()
                    .add(&x, keep);
            }
        }
    }

    /// Replay every line of `files` (in the order given) on `threads` threads: lines are read
    /// in batches by this thread and decided by the others, so memory does not grow with the
    /// logs' length.
    pub fn replay_files<R: BufRead>(
        &self,
        files: Vec<(String, R)>,
        threads: usize,
    ) -> std::io::Result<Report> {
        const BATCH: usize = 256;
        let threads = threads.max(1);
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(threads * 4);
        let rx = Mutex::new(rx);
        let keep = self.keep;
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut report = Report::new(keep);
                        loop {
                            let batch = match rx.lock() {
                                Ok(r) => match r.recv() {
                                    Ok(b) => b,
                                    Err(_) => break,
                                },
                                Err(_) => break,
                            };
                            for (i, range) in batch.lines.iter().enumerate() {
                                if range.is_empty() {
                                    continue;
                                }
                                let at = format!("{}:{}", batch.file, batch.first_line + i as u64);
                                self.replay_line(
                                    &batch.bytes[range.clone()],
                                    &at,
                                    batch.first_seq + i as u64,
                                    &mut report,
                                );
                            }
                        }
                        report
                    })
                })
                .collect();
            let read = (|| -> std::io::Result<()> {
                let mut seq = 0u64;
                for (name, mut r) in files {
                    let file: Arc<str> = Arc::from(name.as_str());
                    let mut line_no = 1u64;
                    let mut batch = Batch::new(file.clone(), line_no, seq);
                    let mut buf = Vec::new();
                    loop {
                        buf.clear();
                        if r.read_until(b'\n', &mut buf)? == 0 {
                            break;
                        }
                        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                        if !line.iter().all(u8::is_ascii_whitespace) {
                            batch.push(line);
                        } else {
                            batch.skip();
                        }
                        line_no += 1;
                        seq += 1;
                        if batch.lines.len() >= BATCH {
                            let full = std::mem::replace(
                                &mut batch,
                                Batch::new(file.clone(), line_no, seq),
                            );
                            if tx.send(full).is_err() {
                                return Ok(());
                            }
                        }
                    }
                    if !batch.lines.is_empty() && tx.send(batch).is_err() {
                        return Ok(());
                    }
                }
                Ok(())
            })();
            drop(tx);
            let mut total = Report::new(keep);
            for w in workers {
                match w.join() {
                    Ok(r) => total.merge(r),
                    Err(_) => {
                        return Err(std::io::Error::other("a replay thread panicked"));
                    }
                }
            }
            read.map(|()| total)
        })
    }
}

/// Lines read together: one buffer, the ranges of its lines.
struct Batch {
    file: Arc<str>,
    first_line: u64,
    first_seq: u64,
    bytes: Vec<u8>,
    lines: Vec<std::ops::Range<usize>>,
}

impl Batch {
    fn new(file: Arc<str>, first_line: u64, first_seq: u64) -> Self {
        Batch {
            file,
            first_line,
            first_seq,
            bytes: Vec::new(),
            lines: Vec::new(),
        }
    }

    fn push(&mut self, line: &[u8]) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(line);
        self.lines.push(start..self.bytes.len());
    }

    /// A blank line: nothing to replay, but line numbers stay right.
    fn skip(&mut self) {
        let at = self.bytes.len();
        self.lines.push(at..at);
    }
}

/// The pointers an event's masking took out or replaced (`erased`, `masked`).
fn masked_pointers(event: &Map<String, Json>) -> Vec<&str> {
    ["erased", "masked"]
        .iter()
        .filter_map(|k| event.get(*k).and_then(Json::as_array))
        .flatten()
        .filter_map(Json::as_str)
        .collect()
}

fn string_at(e: &Json, pointer: &str) -> String {
    e.pointer(pointer)
        .and_then(Json::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loader::SourceFile;

    fn mentions(rego: &str) -> Mentions {
        Mentions::of(&PolicySources {
            rego: vec![SourceFile {
                name: "p.rego".into(),
                text: rego.into(),
            }],
            ..PolicySources::default()
        })
    }

    #[test]
    fn a_masked_field_is_read_when_its_name_appears_or_the_engine_reads_it() {
        let m = mentions("allow if input.attributes.request.http.headers[\"X-Api-Key\"] == \"k\"");
        let h = "/input/attributes/request/http/headers/";
        assert!(
            m.may_read(&format!("{h}x-api-key")),
            "named, in another case"
        );
        assert!(!m.may_read(&format!("{h}cookie")), "never named");
        // Identity comes from these whatever the policies say.
        assert!(m.may_read("/input/attributes/source/certificate"));
        assert!(m.may_read(&format!("{h}x-forwarded-client-cert")));
        // Pointer escapes are undone before looking.
        let m = mentions("x := input.claims[\"a/b\"]");
        assert!(m.may_read("/input/claims/a~1b"));
        // The result is what the policy produced, not what it read.
        assert!(!m.may_read("/result/a~1b"));
    }

    fn example(seq: u64) -> Example {
        let v = Verdict {
            allowed: false,
            reason: "policy_denied".into(),
            rule: "(none)".into(),
        };
        Example {
            decision_id: format!("d-{seq}"),
            timestamp: String::new(),
            at: String::new(),
            before: v.clone(),
            after: v,
            approximate: seq.is_multiple_of(2),
            seq,
        }
    }

    #[test]
    fn groups_keep_the_earliest_examples_whatever_the_order_of_arrival() {
        let ids = |g: &Group| g.examples.iter().map(|e| e.seq).collect::<Vec<_>>();
        let mut a = Group::default();
        for seq in [9, 4, 7, 1, 8] {
            a.add(&example(seq), 2);
        }
        assert_eq!(ids(&a), [1, 4]);
        let mut b = Group::default();
        for seq in [3, 11] {
            b.add(&example(seq), 2);
        }
        a.merge(b, 2);
        assert_eq!(ids(&a), [1, 3]);
        assert_eq!(a.count, 7);
        assert_eq!(a.approximate, 2, "4 and 8 of the first, none of the second");
    }
}

//! What a decision log says, in numbers: totals, allow/deny over time, the most denied callers,
//! paths and rules, error reasons, latency percentiles, and the same per policy revision.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

/// Counts per bucket of time.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Bucket {
    pub start: String,
    pub allowed: u64,
    pub denied: u64,
    /// Of `denied`, those caused by errors.
    pub errors: u64,
}

/// Decision latency (`metrics.timer_server_handler_ns`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct Latency {
    pub count: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub max_ns: u64,
}

/// One policy revision's share.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revision {
    pub revision: String,
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    pub first: String,
    pub last: String,
}

/// A name and how often it was seen.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Count {
    pub name: String,
    pub count: u64,
}

/// Shadow disagreements (`serve --shadow`) of one identity on one request.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ShadowCount {
    /// `new_access` (the shadow allowed what was denied) or `new_denial`.
    pub direction: String,
    pub identity: String,
    pub method: String,
    pub path: String,
    pub count: u64,
}

/// The summary of one or more log files.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Denials caused by errors (evaluation errors, timeouts, overload, bad input, …).
    pub errors: u64,
    pub dry_run: u64,
    /// Lines that were not decision events.
    pub unreadable: u64,
    pub first: Option<String>,
    pub last: Option<String>,
    pub allow_rate: f64,
    pub bucket_seconds: i64,
    pub timeline: Vec<Bucket>,
    pub top_denied_identities: Vec<Count>,
    pub top_denied_paths: Vec<Count>,
    pub top_deny_rules: Vec<Count>,
    pub reasons: Vec<Count>,
    pub latency: Latency,
    pub revisions: Vec<Revision>,
    /// Events whose shadow set (`serve --shadow`) decided otherwise, by direction.
    pub shadow_new_access: u64,
    pub shadow_new_denials: u64,
    /// The most frequent shadow disagreements, by direction, identity, method and path.
    pub shadow_disagreements: Vec<ShadowCount>,
    /// What a bounded summary ([`SummaryBuilder::bounded`]) gave up exactness for, in words;
    /// empty when every figure is exact.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub approximate: Vec<String>,
}

/// Collects events one at a time.
///
/// By default it keeps every timestamp and latency (exact percentiles and timeline for any
/// span). [`SummaryBuilder::bounded`] keeps memory bounded however many events it counts, for
/// the fleet dashboard that follows a stream without end: see there what that costs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SummaryBuilder {
    bounded: bool,
    /// Bounded: counts per bucket of `grid_seconds` (aligned to the epoch) instead of `times`.
    grid_seconds: i64,
    grid: BTreeMap<i64, (u64, u64, u64)>,
    /// Bounded, once `latencies` reached [`EXACT_LATENCIES`]: a log-linear histogram
    /// ([`latency_bucket`]) and the largest value.
    histogram: Vec<u64>,
    max_latency: u64,
    /// Bounded: a ranking held more than [`RANKED`] names and lost its smallest.
    pruned: bool,
    events: u64,
    allowed: u64,
    denied: u64,
    errors: u64,
    dry_run: u64,
    unreadable: u64,
    first: Option<(i128, String)>,
    last: Option<(i128, String)>,
    /// Time, allowed, an error.
    times: Vec<(i128, bool, bool)>,
    identities: HashMap<String, u64>,
    paths: HashMap<String, u64>,
    rules: HashMap<String, u64>,
    reasons: HashMap<String, u64>,
    latencies: Vec<u64>,
    revisions: BTreeMap<String, Revision>,
    /// (new access?, identity, method, path) → events.
    shadow: HashMap<(bool, String, String, String), u64>,
}

/// Bounded: latencies kept exactly before the histogram takes over.
const EXACT_LATENCIES: usize = 65_536;
/// Bounded: timeline buckets of one minute before they become days.
const GRID_MINUTES: usize = 50_000;
/// Bounded: names kept per ranking (twice as many before the smallest are dropped).
const RANKED: usize = 10_000;
/// Significant bits of a latency histogram bucket: values within 1/128 (0.8 %).
const HIST_BITS: u32 = 7;
const HIST_BUCKETS: usize = (1 << HIST_BITS) * (64 - HIST_BITS as usize + 1);

/// A latency's histogram bucket: exact below 128 ns, then 128 buckets per power of two.
fn latency_bucket(v: u64) -> usize {
    let sub = 1u64 << HIST_BITS;
    if v < sub {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= HIST_BITS
    let shift = e - HIST_BITS;
    let m = (v >> shift) & (sub - 1);
    (sub as usize) * (shift as usize + 1) + m as usize
}

/// The largest value of histogram bucket `b` (percentiles are reported at the bucket's top,
/// never below the true value).
fn bucket_top(b: usize) -> u64 {
    let sub = 1usize << HIST_BITS;
    if b < sub {
        return b as u64;
    }
    let shift = (b / sub - 1) as u32;
    let m = (b % sub) as u64;
    let low = ((1u64 << HIST_BITS) | m) << shift;
    low.saturating_add((1u64 << shift) - 1)
}

/// The `RANKED` entries of `v` with the largest `count`, ties by key: what a ranking that grew
/// past twice as many keeps.
fn largest<K: Ord, V>(mut v: Vec<(K, V)>, count: impl Fn(&V) -> u64) -> Vec<(K, V)> {
    v.sort_by(|a, b| count(&b.1).cmp(&count(&a.1)).then_with(|| a.0.cmp(&b.0)));
    v.truncate(RANKED);
    v
}

/// Keep the `RANKED` largest counts of a ranking that grew past twice as many.
fn prune<K: Eq + std::hash::Hash + Ord>(m: &mut HashMap<K, u64>) -> bool {
    if m.len() <= 2 * RANKED {
        return false;
    }
    let kept = largest(m.drain().collect(), |n| *n);
    m.extend(kept);
    true
}

/// Reasons that are the policy saying no rather than something failing.
pub fn is_policy_reason(r: &str) -> bool {
    matches!(r, "policy_denied" | "undefined_decision")
}

/// An RFC 3339 timestamp in nanoseconds since the epoch.
pub(crate) fn parse_ts(s: &str) -> Option<i128> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(time::OffsetDateTime::unix_timestamp_nanos)
}

/// The identity a denied event is filed under.
pub fn identity_of(e: &Json) -> String {
    match e.get("identity") {
        Some(Json::Object(i)) => i
            .get("spiffe_id")
            .and_then(Json::as_str)
            .map_or_else(|| "(invalid identity)".to_string(), str::to_string),
        _ => "(no identity)".to_string(),
    }
}

/// The instance that decided (`labels.id`), or `(unnamed)`.
pub fn instance_of(e: &Json) -> String {
    e.pointer("/labels/id")
        .and_then(Json::as_str)
        .map_or_else(|| "(unnamed)".to_string(), str::to_string)
}

/// What an event asked for: the canonical path of an Envoy check (`parsed_path`, the path
/// policies decided on), the target as sent when the check was refused before its input was
/// built (`request.path`, without the query), or `data api: <path>` for a Data API query —
/// never a request to a path. Events written before `origin` existed are read as before.
pub fn path_of(e: &Json) -> String {
    let data_api = |e: &Json| {
        e.get("path")
            .and_then(Json::as_str)
            .map(|p| format!("data api: {p}"))
    };
    let canonical = e
        .pointer("/input/parsed_path")
        .and_then(Json::as_array)
        .map(|segments| {
            let parts: Vec<&str> = segments.iter().filter_map(Json::as_str).collect();
            format!("/{}", parts.join("/"))
        });
    let sent = |pointer: &str| {
        e.pointer(pointer)
            .and_then(Json::as_str)
            .map(|p| p.split('?').next().unwrap_or(p).to_string())
    };
    match e.get("origin").and_then(Json::as_str) {
        Some("data_api") => data_api(e),
        Some(_) => canonical
            .or_else(|| sent("/input/attributes/request/http/path"))
            .or_else(|| sent("/request/path")),
        None => canonical
            .or_else(|| sent("/input/attributes/request/http/path"))
            .or_else(|| data_api(e)),
    }
    .unwrap_or_else(|| "(none)".into())
}

/// `policy:rule`, `policy`, or `(none)`.
pub fn rule_of(e: &Json) -> String {
    rule_label(
        e.get("policy").and_then(Json::as_str),
        e.get("rule").and_then(Json::as_str),
    )
}

/// How a decision's policy and rule are named: `policy:rule`, `policy`, or `(none)`.
pub fn rule_label(policy: Option<&str>, rule: Option<&str>) -> String {
    match (policy, rule) {
        (Some(p), Some(r)) => format!("{p}:{r}"),
        (Some(p), None) => p.to_string(),
        _ => "(none)".to_string(),
    }
}

fn sum_where(m: &HashMap<(bool, String, String, String), u64>, access: bool) -> u64 {
    m.iter()
        .filter(|(k, _)| k.0 == access)
        .map(|(_, n)| n)
        .sum()
}

/// A percentage with one decimal, `0.0%` of nothing.
pub fn percent(n: u64, of: u64) -> String {
    if of == 0 {
        "0.0%".into()
    } else {
        format!("{:.1}%", n as f64 * 100.0 / of as f64)
    }
}

fn fmt_ts(ns: i128) -> String {
    crate::record::rfc3339_nanos(ns)
}

impl SummaryBuilder {
    /// Count one line of a log; lines that are not events are counted as unreadable.
    pub fn add_line(&mut self, line: &[u8]) {
        match serde_json::from_slice::<Json>(line) {
            Ok(e) if e.get("decision_id").is_some() => self.add(&e),
            _ => self.unreadable += 1,
        }
    }

    /// Count one event.
    pub fn add(&mut self, e: &Json) {
        self.events += 1;
        let allowed = e.get("allowed").and_then(Json::as_bool).unwrap_or(false);
        let reason = e
            .get("reason")
            .and_then(Json::as_str)
            .unwrap_or(if allowed { "allowed" } else { "unknown" });
        if allowed {
            self.allowed += 1;
        } else {
            self.denied += 1;
            if !is_policy_reason(reason) {
                self.errors += 1;
            }
            *self.reasons.entry(reason.to_string()).or_default() += 1;
            *self.identities.entry(identity_of(e)).or_default() += 1;
            *self.paths.entry(path_of(e)).or_default() += 1;
            let rule = rule_of(e);
            *self.rules.entry(rule).or_default() += 1;
        }
        if e.get("dry_run").and_then(Json::as_bool) == Some(true) {
            self.dry_run += 1;
        }
        if let Some(shadow) = e.get("shadow").and_then(|s| s.get("allowed")?.as_bool())
            && shadow != allowed
        {
            let method = e
                .pointer("/request/method")
                .or_else(|| e.pointer("/input/attributes/request/http/method"))
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_string();
            *self
                .shadow
                .entry((shadow, identity_of(e), method, path_of(e)))
                .or_default() += 1;
        }
        if let Some(ns) = e
            .pointer("/metrics/timer_server_handler_ns")
            .and_then(Json::as_u64)
        {
            self.add_latency(ns);
        }
        let ts = e.get("timestamp").and_then(Json::as_str).unwrap_or("");
        if let Some(t) = parse_ts(ts) {
            if self.first.as_ref().is_none_or(|(f, _)| t < *f) {
                self.first = Some((t, ts.to_string()));
            }
            if self.last.as_ref().is_none_or(|(l, _)| t > *l) {
                self.last = Some((t, ts.to_string()));
            }
            self.add_time(t, allowed, !allowed && !is_policy_reason(reason));
        }
        // arbiter's `revision`, else OPA's `bundles` (name=revision for each, in name order).
        let from_bundles = e.get("bundles").and_then(Json::as_object).map(|b| {
            b.iter()
                .map(|(name, v)| {
                    format!(
                        "{name}={}",
                        v.get("revision").and_then(Json::as_str).unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        });
        let revision = e
            .get("revision")
            .and_then(Json::as_str)
            .or(from_bundles.as_deref())
            .unwrap_or("(unknown)");
        let r = self
            .revisions
            .entry(revision.to_string())
            .or_insert_with(|| Revision {
                revision: revision.to_string(),
                events: 0,
                allowed: 0,
                denied: 0,
                first: ts.to_string(),
                last: ts.to_string(),
            });
        r.events += 1;
        if allowed {
            r.allowed += 1;
        } else {
            r.denied += 1;
        }
        if parse_ts(&r.first).is_none_or(|f| parse_ts(ts).is_some_and(|t| t < f)) {
            r.first = ts.to_string();
        }
        if parse_ts(&r.last).is_none_or(|l| parse_ts(ts).is_some_and(|t| t > l)) {
            r.last = ts.to_string();
        }
        if self.bounded {
            let mut pruned = false;
            for m in [
                &mut self.identities,
                &mut self.paths,
                &mut self.rules,
                &mut self.reasons,
            ] {
                pruned |= prune(m);
            }
            pruned |= prune(&mut self.shadow);
            if self.revisions.len() > 2 * RANKED {
                let all = std::mem::take(&mut self.revisions).into_iter().collect();
                self.revisions = largest(all, |r: &Revision| r.events).into_iter().collect();
                pruned = true;
            }
            self.pruned |= pruned;
        }
    }

    /// A builder whose memory is bounded however many events it counts, for a stream without
    /// end. What it gives up, and only once there is that much to count:
    /// - latency percentiles: exact for the first 65,536 latencies, then from a log-linear
    ///   histogram (7 significant bits: each percentile at most 0.8 % above the true value;
    ///   the maximum stays exact);
    /// - the timeline: counts per minute, per day after 50,000 minutes with events (the
    ///   buckets [`finish`](Self::finish) draws are then a week or longer: still exact);
    /// - rankings (identities, paths, rules, reasons, revisions, shadow disagreements): exact
    ///   up to 20,000 names each; past that the 10,000 most frequent are kept, so a name that
    ///   comes back later is counted from then on.
    ///
    /// [`Summary::approximate`] says which of these happened. Totals are always exact.
    pub fn bounded() -> Self {
        SummaryBuilder {
            bounded: true,
            grid_seconds: 60,
            ..SummaryBuilder::default()
        }
    }

    fn add_latency(&mut self, ns: u64) {
        if !self.bounded {
            self.latencies.push(ns);
            return;
        }
        self.max_latency = self.max_latency.max(ns);
        if self.histogram.is_empty() {
            self.latencies.push(ns);
            if self.latencies.len() < EXACT_LATENCIES {
                return;
            }
            self.histogram = vec![0; HIST_BUCKETS];
            for v in std::mem::take(&mut self.latencies) {
                self.histogram[latency_bucket(v)] += 1;
            }
            return;
        }
        self.histogram[latency_bucket(ns)] += 1;
    }

    fn add_time(&mut self, t: i128, allowed: bool, error: bool) {
        if !self.bounded {
            self.times.push((t, allowed, error));
            return;
        }
        let g = i128::from(self.grid_seconds) * 1_000_000_000;
        let k = i64::try_from(t.div_euclid(g)).unwrap_or(i64::MAX);
        let c = self.grid.entry(k).or_default();
        if allowed {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
        if error {
            c.2 += 1;
        }
        if self.grid_seconds == 60 && self.grid.len() > GRID_MINUTES {
            let mut days: BTreeMap<i64, (u64, u64, u64)> = BTreeMap::new();
            for (k, (a, d, e)) in std::mem::take(&mut self.grid) {
                let c = days.entry(k.div_euclid(1440)).or_default();
                c.0 += a;
                c.1 += d;
                c.2 += e;
            }
            self.grid = days;
            self.grid_seconds = 86_400;
        }
    }

    /// The summary, with `top` entries in each ranking.
    pub fn finish(mut self, top: usize) -> Summary {
        let rank = |m: HashMap<String, u64>| -> Vec<Count> {
            let mut v: Vec<Count> = m
                .into_iter()
                .map(|(name, count)| Count { name, count })
                .collect();
            v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.name.cmp(&b.name)));
            v.truncate(top);
            v
        };
        let mut approximate = Vec::new();
        let latency = if self.histogram.is_empty() {
            self.latencies.sort_unstable();
            let pct = |p: usize| -> u64 {
                if self.latencies.is_empty() {
                    return 0;
                }
                let idx = (self.latencies.len() * p).div_ceil(100).saturating_sub(1);
                self.latencies[idx.min(self.latencies.len() - 1)]
            };
            Latency {
                count: self.latencies.len() as u64,
                p50_ns: pct(50),
                p90_ns: pct(90),
                p99_ns: pct(99),
                max_ns: self.latencies.last().copied().unwrap_or(0),
            }
        } else {
            approximate.push(
                "latency percentiles from a histogram (at most 0.8 % above the true value)".into(),
            );
            let count: u64 = self.histogram.iter().sum();
            let pct = |p: u64| -> u64 {
                let rank = (count * p).div_ceil(100).max(1);
                let mut seen = 0;
                for (b, n) in self.histogram.iter().enumerate() {
                    seen += n;
                    if seen >= rank {
                        return bucket_top(b).min(self.max_latency);
                    }
                }
                self.max_latency
            };
            Latency {
                count,
                p50_ns: pct(50),
                p90_ns: pct(90),
                p99_ns: pct(99),
                max_ns: self.max_latency,
            }
        };
        if self.pruned {
            approximate.push(
                "rankings keep the 10,000 most frequent names each; names dropped and seen again are counted from then on"
                    .into(),
            );
        }
        let (bucket_seconds, timeline) = match (&self.first, &self.last) {
            (Some((f, _)), Some((l, _))) => {
                let span_s = ((l - f) / 1_000_000_000) as i64;
                let size = [60, 300, 900, 3600, 21_600, 86_400, 604_800]
                    .into_iter()
                    .find(|s| span_s / s < 24)
                    .unwrap_or(2_592_000);
                let size_ns = i128::from(size) * 1_000_000_000;
                let start = f - f.rem_euclid(size_ns);
                let mut buckets: BTreeMap<i128, (u64, u64, u64)> = BTreeMap::new();
                // Bounded: grid buckets, each inside one of these (both aligned to the epoch,
                // the grid's size divides this one's).
                let g = i128::from(self.grid_seconds) * 1_000_000_000;
                for (k, (a, d, e)) in &self.grid {
                    let b = buckets
                        .entry((i128::from(*k) * g - start) / size_ns)
                        .or_default();
                    b.0 += a;
                    b.1 += d;
                    b.2 += e;
                }
                for (t, allowed, error) in &self.times {
                    let b = buckets.entry((t - start) / size_ns).or_default();
                    if *allowed {
                        b.0 += 1;
                    } else {
                        b.1 += 1;
                    }
                    if *error {
                        b.2 += 1;
                    }
                }
                (
                    size,
                    buckets
                        .into_iter()
                        .map(|(i, (a, d, e))| Bucket {
                            start: fmt_ts(start + i * size_ns),
                            allowed: a,
                            denied: d,
                            errors: e,
                        })
                        .collect(),
                )
            }
            _ => (0, Vec::new()),
        };
        Summary {
            events: self.events,
            allowed: self.allowed,
            denied: self.denied,
            errors: self.errors,
            dry_run: self.dry_run,
            unreadable: self.unreadable,
            first: self.first.map(|(_, s)| s),
            last: self.last.map(|(_, s)| s),
            allow_rate: if self.events == 0 {
                0.0
            } else {
                self.allowed as f64 / self.events as f64
            },
            bucket_seconds,
            timeline,
            top_denied_identities: rank(self.identities),
            top_denied_paths: rank(self.paths),
            top_deny_rules: rank(self.rules),
            reasons: rank(self.reasons),
            latency,
            revisions: self.revisions.into_values().collect(),
            shadow_new_access: sum_where(&self.shadow, true),
            shadow_new_denials: sum_where(&self.shadow, false),
            shadow_disagreements: {
                let mut v: Vec<ShadowCount> = self
                    .shadow
                    .into_iter()
                    .map(|((access, identity, method, path), count)| ShadowCount {
                        direction: if access { "new_access" } else { "new_denial" }.into(),
                        identity,
                        method,
                        path,
                        count,
                    })
                    .collect();
                // New access first, then the most frequent; `top` of each direction.
                v.sort_by(|a, b| {
                    a.direction
                        .cmp(&b.direction)
                        .then(b.count.cmp(&a.count))
                        .then_with(|| (&a.identity, &a.path).cmp(&(&b.identity, &b.path)))
                });
                let mut kept: HashMap<String, usize> = HashMap::new();
                v.retain(|c| {
                    let n = kept.entry(c.direction.clone()).or_default();
                    *n += 1;
                    *n <= top
                });
                v
            },
            approximate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Issue 16, finding 4: a Data API query is never filed as a request to a path, and a
    /// check refused before its input was built is filed under the path it asked for.
    #[test]
    fn events_are_filed_under_what_they_asked_for() {
        let check = json!({"origin": "grpc", "path": "envoy/authz/allow",
            "input": {"parsed_path": ["admin", "people"],
                      "attributes": {"request": {"http": {"path": "/admin/people?x=1"}}}}});
        assert_eq!(path_of(&check), "/admin/people");
        let refused = json!({"origin": "grpc", "path": "envoy/authz/allow",
            "request": {"method": "GET", "path": "//admin/people?x=1", "host": "h"}});
        assert_eq!(path_of(&refused), "//admin/people");
        // A crafted Data API input that looks like a request is still a Data API query.
        let query = json!({"origin": "data_api", "path": "envoy/authz/allow",
            "input": {"parsed_path": ["admin"],
                      "attributes": {"request": {"http": {"path": "/admin/x"}}}}});
        assert_eq!(path_of(&query), "data api: envoy/authz/allow");
        // Logs written before `origin`.
        assert_eq!(
            path_of(&json!({"path": "envoy/authz/allow"})),
            "data api: envoy/authz/allow"
        );
    }

    #[test]
    fn counts_rankings_percentiles_and_revisions() {
        let mut b = SummaryBuilder::default();
        for i in 0..100u64 {
            let allowed = i % 4 != 0; // 25 denials
            let e = json!({
                "decision_id": format!("d{i}"),
                "timestamp": format!("2026-11-26T10:{:02}:00Z", i % 60),
                "allowed": allowed,
                "reason": if allowed { "allowed" } else if i % 8 == 0 { "policy_denied" } else { "timeout" },
                "identity": if i % 3 == 0 { json!({"spiffe_id": "spiffe://td/a"}) } else { json!(null) },
                "input": {"attributes": {"request": {"http": {"path": format!("/p{}?q=1", i % 2)}}}},
                "policy": "authz.cel.yaml",
                "rule": "deny-all",
                "metrics": {"timer_server_handler_ns": (i + 1) * 1000},
                "revision": if i < 50 { "r1" } else { "r2" },
            });
            b.add(&e);
        }
        b.add_line(b"not json");
        let s = b.finish(3);
        assert_eq!(
            (s.events, s.allowed, s.denied, s.unreadable),
            (100, 75, 25, 1)
        );
        assert_eq!(s.errors, 12, "timeouts are errors, policy denials are not");
        assert_eq!(
            s.reasons[0],
            Count {
                name: "policy_denied".into(),
                count: 13
            }
        );
        assert_eq!(s.top_denied_paths[0].name, "/p0");
        assert_eq!(s.top_denied_paths[0].count, 25);
        assert_eq!(s.top_deny_rules[0].name, "authz.cel.yaml:deny-all");
        assert_eq!(
            s.top_denied_identities.iter().map(|c| c.count).sum::<u64>(),
            25
        );
        assert_eq!(s.latency.p50_ns, 50_000);
        assert_eq!(s.latency.p99_ns, 99_000);
        assert_eq!(s.latency.max_ns, 100_000);
        assert_eq!(s.revisions.len(), 2);
        assert_eq!(s.revisions[0].events, 50);
        assert_eq!(s.bucket_seconds, 300);
        assert_eq!(
            s.timeline.iter().map(|b| b.allowed + b.denied).sum::<u64>(),
            100
        );
        assert_eq!(s.timeline[0].start, "2026-11-26T10:00:00Z");
        assert_eq!(s.timeline.iter().map(|b| b.errors).sum::<u64>(), 12);
        assert_eq!(s.first.as_deref(), Some("2026-11-26T10:00:00Z"));
    }

    #[test]
    fn a_bounded_summary_stays_bounded_and_says_what_is_approximate() {
        let mut b = SummaryBuilder::bounded();
        for i in 0..100_000u64 {
            b.add(&json!({
                "decision_id": i.to_string(),
                // one event a minute: 100,000 minutes (≈ 69 days) become days.
                "timestamp": crate::record::rfc3339_nanos(i128::from(i) * 60_000_000_000 + 1_700_000_000_000_000_000),
                "allowed": false,
                "reason": "policy_denied",
                "input": {"attributes": {"request": {"http": {"path": format!("/u/{i}")}}}},
                "metrics": {"timer_server_handler_ns": 1000 + i},
            }));
        }
        let s = b.clone().finish(3);
        assert_eq!((s.events, s.denied), (100_000, 100_000));
        assert_eq!(s.timeline.iter().map(|t| t.denied).sum::<u64>(), 100_000);
        assert_eq!(s.bucket_seconds, 604_800);
        // The exact timeline, from the same events kept whole.
        let mut exact = SummaryBuilder::default();
        for i in (0..100_000u64).step_by(1) {
            exact.add(&json!({
                "decision_id": i.to_string(),
                "timestamp": crate::record::rfc3339_nanos(i128::from(i) * 60_000_000_000 + 1_700_000_000_000_000_000),
                "allowed": false, "reason": "policy_denied",
                "metrics": {"timer_server_handler_ns": 1000 + i},
            }));
        }
        let e = exact.finish(3);
        assert_eq!(s.timeline, e.timeline);
        assert_eq!(s.latency.max_ns, e.latency.max_ns);
        for (got, want) in [
            (s.latency.p50_ns, e.latency.p50_ns),
            (s.latency.p90_ns, e.latency.p90_ns),
            (s.latency.p99_ns, e.latency.p99_ns),
        ] {
            assert!(got >= want && got <= want + want / 128, "{got} vs {want}");
        }
        assert_eq!(s.approximate.len(), 2, "{:?}", s.approximate);
        assert!(b.paths.len() <= 2 * RANKED);
        assert!(b.latencies.is_empty() && b.grid.len() < 100);
    }
}

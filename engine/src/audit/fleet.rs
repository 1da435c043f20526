//! The index behind the fleet dashboard (`arbiter audit serve --nats URL --stream S`): the
//! decision events of every instance, read from the JetStream stream they are shipped to, in
//! memory that stays bounded however long the stream grows.
//!
//! - **A window of recent events** in compact [`Row`]s (the same rows and the same filter as
//!   the file index, [`select`]), at most [`FleetIndex::window`] of them; an event shown whole
//!   is read back from the stream by its sequence. Older events leave the window but stay
//!   counted.
//! - **Totals over everything read**, from a [`SummaryBuilder::bounded`]: exact counts;
//!   timeline, latency percentiles and rankings bounded as that builder says.
//! - **Each instance's hash chain**, checked as events arrive with a bounded state per
//!   instance: its last hash, the recent hashes (a copy the stream did not deduplicate is
//!   counted once, as a duplicate), and events that arrived before their predecessor (a
//!   shipper that re-sent after a lost acknowledgement can put an event after its successor):
//!   they wait, linked as soon as the predecessor comes. An event that does not fit is a
//!   problem of that instance's chain, named by stream sequence and decision id.
//! - **Saved and restored** ([`FleetIndex::save`], [`FleetIndex::load`]): the whole state is a
//!   few MiB at most, so the dashboard resumes after a restart from the sequence it saved.
//!
//! No networking here: the caller feeds messages in stream order ([`FleetIndex::add_batch`]).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::chain::{GENESIS, LineError};
use super::index::{At, Filter, Row, Strings, prepare, row_of, select};
use super::summary::{Summary, SummaryBuilder, instance_of};

/// Recent hashes kept per instance, to recognize a copy of an event already read.
const RECENT: usize = 1024;
/// Events per instance that may wait for their predecessor before it counts as missing.
const WAITING: usize = 4096;

/// A hash's key among the recent ones.
fn key(hash: &str) -> u128 {
    hash.get(..32)
        .and_then(|h| u128::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

/// A problem in an instance's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub sequence: u64,
    pub decision_id: String,
    pub error: String,
}

/// An event read before the one it links to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Waiting {
    hash: String,
    sequence: u64,
    decision_id: String,
}

/// One instance, as the stream shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Events read (copies excluded).
    pub events: u64,
    pub allowed: u64,
    pub denied: u64,
    /// Of `denied`, those caused by errors.
    pub errors: u64,
    /// Events whose hash and link verified.
    pub verified: u64,
    /// Copies of events already read (beyond the stream's duplicate window).
    pub duplicates: u64,
    /// `prev_hash` of the instance's first event ([`GENESIS`] for a chain from its start).
    pub first_prev_hash: Option<String>,
    pub last_hash: Option<String>,
    pub last_sequence: u64,
    /// The newest timestamp seen (ns since the epoch), `i64::MIN` before any.
    pub last_time_ns: i64,
    /// Problems found, and the first of them.
    pub problems: u64,
    pub first_problem: Option<Problem>,
    /// The first 128 bits of recent hashes (a verified SHA-256: a key as good as the whole).
    recent: VecDeque<u128>,
    recent_set: HashSet<u128>,
    /// prev_hash → the event waiting for it.
    waiting: HashMap<String, Waiting>,
}

impl Default for Instance {
    fn default() -> Self {
        Instance {
            events: 0,
            allowed: 0,
            denied: 0,
            errors: 0,
            verified: 0,
            duplicates: 0,
            first_prev_hash: None,
            last_hash: None,
            last_sequence: 0,
            // Not 0: an instance whose events carry no readable timestamp has no last time,
            // not 1970's.
            last_time_ns: i64::MIN,
            problems: 0,
            first_problem: None,
            recent: VecDeque::new(),
            recent_set: HashSet::new(),
            waiting: HashMap::new(),
        }
    }
}

impl Instance {
    /// Whether the chain read so far is whole: no problem, nothing waiting.
    pub fn intact(&self) -> bool {
        self.problems == 0 && self.waiting.is_empty()
    }

    /// Events read before their predecessor, still waiting for it.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The oldest event still waiting: (sequence, decision id).
    pub fn first_waiting(&self) -> Option<(u64, &str)> {
        self.waiting
            .values()
            .min_by_key(|w| w.sequence)
            .map(|w| (w.sequence, w.decision_id.as_str()))
    }

    pub fn from_genesis(&self) -> bool {
        self.first_prev_hash.as_deref() == Some(GENESIS)
    }

    fn problem(&mut self, sequence: u64, decision_id: &str, error: String) {
        self.problems += 1;
        self.first_problem.get_or_insert_with(|| Problem {
            sequence,
            decision_id: decision_id.to_string(),
            error,
        });
    }

    fn remember(&mut self, hash: &str) {
        if self.recent.len() >= RECENT
            && let Some(old) = self.recent.pop_front()
        {
            self.recent_set.remove(&old);
        }
        let k = key(hash);
        self.recent.push_back(k);
        self.recent_set.insert(k);
    }

    /// `hash` follows the chain's last event: it becomes the last, and so do the events that
    /// waited for it, in turn.
    fn advance(&mut self, mut hash: String) {
        loop {
            self.verified += 1;
            self.remember(&hash);
            let next = self.waiting.remove(&hash);
            self.last_hash = Some(hash);
            match next {
                Some(n) => hash = n.hash,
                None => return,
            }
        }
    }

    /// Whether an event with this hash was read already.
    fn seen(&self, hash: &str) -> bool {
        self.recent_set.contains(&key(hash)) || self.waiting.values().any(|w| w.hash == hash)
    }

    /// Link an event with a verified hash; returns false for a copy of one already read.
    fn link(&mut self, sequence: u64, decision_id: &str, prev: String, hash: String) -> bool {
        if self.recent_set.contains(&key(&hash))
            || self.waiting.get(&prev).is_some_and(|w| w.hash == hash)
        {
            self.duplicates += 1;
            return false;
        }
        match &self.last_hash {
            None => self.first_prev_hash = Some(prev),
            Some(last) if *last == prev => {}
            Some(_) => {
                if self.first_prev_hash.as_deref() == Some(hash.as_str()) {
                    // The event before the first one read (the instance's first events came
                    // out of order): the chain now starts one earlier.
                    self.first_prev_hash = Some(prev);
                    self.verified += 1;
                    self.remember(&hash);
                    return true;
                }
                if self.recent_set.contains(&key(&prev)) {
                    // It follows an event already followed: a second chain from the same point
                    // (an instance restarted on a truncated or restored file).
                    self.problem(
                        sequence,
                        decision_id,
                        format!(
                            "a fork: this event follows {prev}, which another event already follows"
                        ),
                    );
                    return true;
                }
                if self.waiting.len() >= WAITING {
                    // Too many waiting: the oldest one's predecessor is taken as missing, and
                    // the chain continues from the newest event.
                    let oldest = self.first_waiting().map(|(s, d)| (s, d.to_string()));
                    if let Some((s, d)) = oldest {
                        self.problem(
                            s,
                            &d,
                            format!(
                                "events are missing: {} events waited for predecessors that never came",
                                self.waiting.len()
                            ),
                        );
                    }
                    self.waiting.clear();
                    self.last_hash = Some(hash.clone());
                    self.remember(&hash);
                    return true;
                }
                if let Some(other) = self.waiting.get(&prev) {
                    let d = other.decision_id.clone();
                    self.problem(
                        sequence,
                        decision_id,
                        format!("a fork: this event and decision {d} both follow {prev}"),
                    );
                    return true;
                }
                self.waiting.insert(
                    prev,
                    Waiting {
                        hash,
                        sequence,
                        decision_id: decision_id.to_string(),
                    },
                );
                return true;
            }
        }
        self.advance(hash);
        true
    }
}

/// Messages parsed and hash-checked, to add in order ([`FleetIndex::add_parsed`]).
#[derive(Debug)]
pub struct Parsed(Vec<super::index::Prepared>);

/// The fleet's index. See the module's documentation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetIndex {
    window: usize,
    rows: VecDeque<Row>,
    strings: Strings,
    /// Strings in use after the last compaction.
    strings_in_use: usize,
    summary: SummaryBuilder,
    instances: BTreeMap<String, Instance>,
    /// The last stream sequence read.
    last_sequence: u64,
    /// Messages read (copies included).
    messages: u64,
    /// Messages that are not decision events, and the first of them.
    unreadable: u64,
    first_unreadable: Option<u64>,
    /// Events that left the window (still counted in the totals).
    folded: u64,
    /// Which stream was read (the caller's name for it, e.g. its creation time): a stream
    /// created again under the same name numbers its messages from 1 again.
    stream_id: String,
}

/// What a saved state starts with: a name, then the format's version.
const SAVED_MAGIC: &[u8; 8] = b"ARBFLEET";
const SAVED_VERSION: u32 = 1;

impl FleetIndex {
    /// An empty index keeping at most `window` recent events in rows (at least 1).
    pub fn new(window: usize) -> Self {
        FleetIndex {
            window: window.max(1),
            rows: VecDeque::new(),
            strings: Strings::default(),
            strings_in_use: 0,
            summary: SummaryBuilder::bounded(),
            instances: BTreeMap::new(),
            last_sequence: 0,
            messages: 0,
            unreadable: 0,
            first_unreadable: None,
            folded: 0,
            stream_id: String::new(),
        }
    }

    /// Which stream was read ([`FleetIndex::set_stream_id`]); empty before.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    pub fn set_stream_id(&mut self, id: &str) {
        self.stream_id = id.to_string();
    }

    pub fn window(&self) -> usize {
        self.window
    }

    /// The last stream sequence read: resume after it.
    pub fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    /// Messages read, copies included.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    pub fn unreadable(&self) -> (u64, Option<u64>) {
        (self.unreadable, self.first_unreadable)
    }

    /// Events read that are no longer in the window.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    pub fn rows(&self) -> &VecDeque<Row> {
        &self.rows
    }

    pub fn strings(&self) -> &Strings {
        &self.strings
    }

    pub fn instances(&self) -> &BTreeMap<String, Instance> {
        &self.instances
    }

    /// Read messages `(sequence, payload)` in stream order; messages at or before
    /// [`last_sequence`](Self::last_sequence) (delivered again after a restart) are skipped.
    /// Parsing and hashing run on all cores; linking and counting in order.
    pub fn add_batch(&mut self, batch: Vec<(u64, Vec<u8>)>) {
        let fresh: Vec<(u64, Vec<u8>)> = batch
            .into_iter()
            .filter(|(seq, _)| *seq > self.last_sequence)
            .collect();
        self.add_parsed(Self::parse(fresh));
    }

    /// The parsing and hashing part of [`add_batch`](Self::add_batch), on all cores, apart
    /// from the index: a caller that shares the index parses before it takes its lock.
    pub fn parse(batch: Vec<(u64, Vec<u8>)>) -> Parsed {
        Parsed(prepare(
            batch
                .into_iter()
                .map(|(seq, bytes)| (seq, 0, bytes))
                .collect(),
        ))
    }

    /// Link and count messages [`parse`](Self::parse)d, in stream order.
    pub fn add_parsed(&mut self, parsed: Parsed) {
        for (seq, _, parsed, checked, _) in parsed.0 {
            self.add_prepared(seq, parsed, checked);
        }
        self.evict();
    }

    fn add_prepared(
        &mut self,
        sequence: u64,
        parsed: Result<Json, String>,
        checked: Result<(String, String), LineError>,
    ) {
        if sequence <= self.last_sequence {
            return;
        }
        self.last_sequence = sequence;
        self.messages += 1;
        let e = match parsed {
            Ok(e) if e.get("decision_id").is_some() => e,
            _ => {
                self.unreadable += 1;
                self.first_unreadable.get_or_insert(sequence);
                return;
            }
        };
        let decision_id = e.get("decision_id").and_then(Json::as_str).unwrap_or("");
        let inst = self.instances.entry(instance_of(&e)).or_default();
        match checked {
            Ok((prev, hash)) => {
                if !inst.link(sequence, decision_id, prev, hash) {
                    return;
                }
            }
            Err(err) => {
                // A copy of an event already read is still a copy, whatever else is wrong.
                if let Some(h) = e.get("hash").and_then(Json::as_str)
                    && inst.seen(h)
                {
                    inst.duplicates += 1;
                    return;
                }
                inst.problem(sequence, decision_id, err.to_string());
            }
        }
        self.summary.add(&e);
        let row = row_of(&e, At::Stream { sequence }, &mut self.strings);
        inst.events += 1;
        inst.last_sequence = sequence;
        inst.last_time_ns = inst.last_time_ns.max(row.time_ns);
        match row.outcome {
            super::index::Outcome::Allowed => inst.allowed += 1,
            super::index::Outcome::Denied => inst.denied += 1,
            super::index::Outcome::Error => {
                inst.denied += 1;
                inst.errors += 1;
            }
        }
        self.rows.push_back(row);
    }

    /// Keep the window's bound; drop strings no row names any more once they are the larger
    /// part.
    fn evict(&mut self) {
        while self.rows.len() > self.window {
            self.rows.pop_front();
            self.folded += 1;
        }
        if self.strings.len() > 2 * self.strings_in_use + 4096 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        let mut fresh = Strings::default();
        let mut map: HashMap<u32, u32> = HashMap::new();
        let old = &self.strings;
        let mut keep =
            |id: u32| -> u32 { *map.entry(id).or_insert_with(|| fresh.intern(old.get(id))) };
        for r in &mut self.rows {
            r.instance = keep(r.instance);
            r.identity = keep(r.identity);
            r.path = keep(r.path);
            r.rule = keep(r.rule);
            r.reason = keep(r.reason);
        }
        self.strings_in_use = fresh.len();
        self.strings = fresh;
    }

    /// Totals, rankings and percentiles over every event read.
    pub fn summary(&self, top: usize) -> Summary {
        self.summary.clone().finish(top)
    }

    /// Rows of the window matching `f`, newest first: how many, and the positions of those on
    /// page `page`.
    pub fn query(&self, f: &Filter, page: usize, per_page: usize) -> (usize, Vec<usize>) {
        select(self.rows.iter(), &self.strings, f, page, per_page)
    }

    /// The position in the window of the event at stream sequence `sequence`.
    pub fn find(&self, sequence: u64) -> Option<usize> {
        let key = |r: &Row| match r.at {
            At::Stream { sequence } => sequence,
            At::Line { .. } => 0,
        };
        self.rows.binary_search_by_key(&sequence, key).ok()
    }

    /// The whole state, to [`load`](Self::load) after a restart.
    pub fn save(&self) -> Vec<u8> {
        let mut out = SAVED_MAGIC.to_vec();
        out.extend(SAVED_VERSION.to_le_bytes());
        // Serializing plain data into a Vec cannot fail.
        out.extend(postcard::to_allocvec(self).unwrap_or_default());
        out
    }

    /// A state written by [`save`](Self::save); `window` replaces the saved one (a smaller
    /// window folds the oldest rows now).
    pub fn load(bytes: &[u8], window: usize) -> Result<Self, String> {
        let rest = bytes
            .strip_prefix(SAVED_MAGIC.as_slice())
            .ok_or("not a saved dashboard state (written by `arbiter audit serve --state`)")?;
        let (version, rest) = rest
            .split_first_chunk::<4>()
            .ok_or("the saved dashboard state is cut short")?;
        if u32::from_le_bytes(*version) != SAVED_VERSION {
            return Err(format!(
                "the saved dashboard state has version {}, this arbiter reads {SAVED_VERSION}",
                u32::from_le_bytes(*version)
            ));
        }
        let mut index: FleetIndex = postcard::from_bytes(rest)
            .map_err(|e| format!("the saved dashboard state is unreadable: {e}"))?;
        index.window = window.max(1);
        index.evict();
        Ok(index)
    }
}

/// Whether every instance's chain is whole and every message an event.
pub fn all_intact(index: &FleetIndex) -> bool {
    index.unreadable == 0 && index.instances.values().all(Instance::intact)
}

#[cfg(test)]
mod tests;

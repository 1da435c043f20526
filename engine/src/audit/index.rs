//! An in-memory index over decision-log files, for looking rather than grepping: every event
//! is read once, its hash chain checked, its totals counted (exactly as
//! [`SummaryBuilder`](super::summary::SummaryBuilder) counts them for `arbiter audit summary`)
//! and a compact row kept — where the line is, when, the outcome, and interned identity, path,
//! rule and revision — so filtering a million events is a scan over small rows and showing one
//! event reads its line back from the file.
//!
//! A log that grows is indexed incrementally ([`LogIndex::refresh`]): appended lines are read;
//! a rotation or any other change to what was already read rebuilds the index.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

use super::chain::{self, LineError, VerifyFailure};
use super::summary::{
    Summary, SummaryBuilder, identity_of, instance_of, is_policy_reason, path_of, rule_of,
};

/// What a decision was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Allowed,
    /// Denied by policy.
    Denied,
    /// Denied because something failed (evaluation error, timeout, overload, bad input…).
    Error,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }
}

/// Where an event is kept, to read it whole again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum At {
    /// A line of a file of the index: the file's place, the line's first byte and length, and
    /// its 1-based number.
    Line {
        file: u32,
        offset: u64,
        len: u32,
        line: u32,
    },
    /// A message of a JetStream stream ([`super::fleet::FleetIndex`]).
    Stream { sequence: u64 },
}

/// One event, as the index keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    pub at: At,
    /// The instance that decided (`labels.id`), interned.
    pub instance: u32,
    /// Nanoseconds since the epoch; `i64::MIN` without a readable timestamp.
    pub time_ns: i64,
    pub outcome: Outcome,
    pub identity: u32,
    pub path: u32,
    pub rule: u32,
    pub reason: u32,
    pub latency_ns: u64,
}

/// The hash chain's state over everything indexed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Events whose hash and link verified before the first failure.
    pub verified: usize,
    /// `prev_hash` of the first event ([`chain::GENESIS`] for a chain from its start).
    pub first_prev_hash: Option<String>,
    pub failure: Option<VerifyFailure>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    path: PathBuf,
    id: (u64, u64),
    /// Bytes read, up to the last complete line.
    len: u64,
    /// The file's size when last looked at.
    size: u64,
}

/// A file as seen on disk: path, (device, inode), size.
type Looked = (PathBuf, (u64, u64), u64);

/// Interned strings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "Vec<String>", into = "Vec<String>")]
pub struct Strings {
    list: Vec<String>,
    ids: HashMap<String, u32>,
}

impl From<Vec<String>> for Strings {
    fn from(list: Vec<String>) -> Self {
        let ids = list
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), u32::try_from(i).unwrap_or(u32::MAX)))
            .collect();
        Strings { list, ids }
    }
}

impl From<Strings> for Vec<String> {
    fn from(s: Strings) -> Self {
        s.list
    }
}

impl Strings {
    /// How many strings are held.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = u32::try_from(self.list.len()).unwrap_or(u32::MAX);
        self.list.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }

    pub fn get(&self, id: u32) -> &str {
        self.list.get(id as usize).map_or("", String::as_str)
    }

    /// The ids of strings containing `needle` (case-insensitive).
    pub fn matching(&self, needle: &str) -> Vec<bool> {
        let n = needle.to_lowercase();
        self.list
            .iter()
            .map(|s| s.to_lowercase().contains(&n))
            .collect()
    }
}

/// What to show: every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub identity: Option<String>,
    pub path: Option<String>,
    pub rule: Option<String>,
    pub outcome: Option<Outcome>,
    /// Inclusive bounds, nanoseconds since the epoch.
    pub from_ns: Option<i64>,
    pub to_ns: Option<i64>,
    /// The instance (`labels.id`), exactly.
    pub instance: Option<String>,
}

/// The rows of `rows` (oldest first) matching `f`, newest first: how many, and the positions
/// of those on page `page` (0-based) — the one filter of the file index and the fleet's.
pub fn select<'a, I>(
    rows: I,
    strings: &Strings,
    f: &Filter,
    page: usize,
    per_page: usize,
) -> (usize, Vec<usize>)
where
    I: DoubleEndedIterator<Item = &'a Row> + ExactSizeIterator,
{
    let ids = |needle: &Option<String>| needle.as_ref().map(|n| strings.matching(n));
    let (identity, path, rule) = (ids(&f.identity), ids(&f.path), ids(&f.rule));
    // An instance is named exactly: `node-1` is not `node-10`.
    let instance: Option<Option<u32>> = f
        .instance
        .as_ref()
        .map(|want| strings.ids.get(want.as_str()).copied());
    let hit = |set: &Option<Vec<bool>>, id: u32| {
        set.as_ref()
            .is_none_or(|s| s.get(id as usize).copied().unwrap_or(false))
    };
    let mut total = 0;
    let mut out = Vec::new();
    let skip = page.saturating_mul(per_page);
    for (i, r) in rows.enumerate().rev() {
        let ok = f.outcome.is_none_or(|o| o == r.outcome)
            && f.from_ns.is_none_or(|t| r.time_ns >= t)
            && f.to_ns.is_none_or(|t| r.time_ns <= t)
            && instance.is_none_or(|want| want == Some(r.instance))
            && hit(&identity, r.identity)
            && hit(&path, r.path)
            && hit(&rule, r.rule);
        if ok {
            if total >= skip && out.len() < per_page {
                out.push(i);
            }
            total += 1;
        }
    }
    (total, out)
}

/// The compact row of event `e` kept `at`.
pub(crate) fn row_of(e: &Json, at: At, strings: &mut Strings) -> Row {
    let allowed = e.get("allowed").and_then(Json::as_bool).unwrap_or(false);
    let reason = e
        .get("reason")
        .and_then(Json::as_str)
        .unwrap_or(if allowed { "allowed" } else { "unknown" });
    let outcome = if allowed {
        Outcome::Allowed
    } else if is_policy_reason(reason) {
        Outcome::Denied
    } else {
        Outcome::Error
    };
    Row {
        at,
        instance: strings.intern(&instance_of(e)),
        time_ns: e
            .get("timestamp")
            .and_then(Json::as_str)
            .and_then(parse_ts)
            .unwrap_or(i64::MIN),
        outcome,
        identity: strings.intern(&identity_of(e)),
        path: strings.intern(&path_of(e)),
        rule: strings.intern(&rule_of(e)),
        reason: strings.intern(reason),
        latency_ns: e
            .pointer("/metrics/timer_server_handler_ns")
            .and_then(Json::as_u64)
            .unwrap_or(0),
    }
}

/// The index of a set of decision-log files.
#[derive(Debug, Clone)]
pub struct LogIndex {
    /// The files as given.
    given: Vec<PathBuf>,
    /// Also read the rotated siblings (`x.1`, `x.2`, …) of each file given.
    rotated: bool,
    seen: Vec<Seen>,
    pub rows: Vec<Row>,
    pub strings: Strings,
    summary: SummaryBuilder,
    verdict: Verdict,
    prev_hash: Option<String>,
    /// Bytes after the last newline of the newest file (a write in progress, or a cut).
    pub trailing_bytes: u64,
    /// Lines that are not decision events.
    pub unreadable: u64,
    /// Lines read per file.
    line_counts: Vec<u32>,
}

/// Rotated files in the order they were written: `x.3 x.2 x.1 x`.
pub fn chronological(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn key(p: &Path) -> (String, i64) {
        let s = p.to_string_lossy().into_owned();
        if let Some((base, n)) = s.rsplit_once('.')
            && let Ok(n) = n.parse::<i64>()
        {
            return (base.to_string(), -n);
        }
        (s, 0)
    }
    let mut v: Vec<PathBuf> = paths.to_vec();
    v.sort_by_key(|p| key(p));
    v
}

/// Numbers past the last rotated file found that are still looked at: a gap this long or
/// shorter is read past. A writer killed mid-rotation leaves one missing number, and the next
/// rotation closes it; 16 leaves room for kills in a row.
const ROTATED_GAP: u32 = 16;

/// The rotated siblings of `log` on disk, `x.1`, `x.2`, … by number (newest first). Numbers
/// may be missing — a writer killed mid-rotation leaves a gap (`x.9` moved to `x.10`, `x.8`
/// not yet to `x.9`) — and the files after a gap are listed all the same (up to
/// [`ROTATED_GAP`] missing numbers in a row): a file skipped for a gap would drop its events
/// from every reader without a word. (An event really missing still breaks the chain.) Found
/// by looking up each name, not by listing the folder, so that the cost does not grow with
/// the folder (the NATS shipper looks while idle).
pub fn rotated_siblings(log: &Path) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    let mut missing = 0;
    let mut n: u32 = 1;
    while missing < ROTATED_GAP {
        let p = PathBuf::from(format!("{}.{n}", log.display()));
        if p.is_file() {
            out.push((n, p));
            missing = 0;
        } else {
            missing += 1;
        }
        let Some(next) = n.checked_add(1) else { break };
        n = next;
    }
    out
}

/// `x`, plus its rotated siblings `x.1`, `x.2`, … (oldest first), for each file given; files
/// given explicitly keep their place.
pub fn with_rotated(given: &[PathBuf]) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for g in given {
        let rotated = rotated_siblings(g).into_iter().map(|(_, p)| p);
        for p in rotated.rev() {
            if !out.contains(&p) && !given.contains(&p) {
                out.push(p);
            }
        }
        if !out.contains(g) {
            out.push(g.clone());
        }
    }
    out
}

/// A file's identity (device, inode; a rename keeps it): how the log's readers and writer tell
/// a rotated file from its successor at the same name.
pub fn file_id(m: &std::fs::Metadata) -> (u64, u64) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        (m.dev(), m.ino())
    }
    #[cfg(not(unix))]
    {
        let _ = m;
        (0, 0)
    }
}

/// A timestamp in nanoseconds, as the index keeps it.
fn parse_ts(s: &str) -> Option<i64> {
    super::summary::parse_ts(s).and_then(|t| i64::try_from(t).ok())
}

/// A line parsed and its own hash checked.
pub(crate) type Prepared = (
    u64,
    u32,
    Result<Json, String>,
    Result<(String, String), LineError>,
    Vec<u8>,
);

/// Parse and hash-check `batch` on all cores, keeping its order.
pub(crate) fn prepare(batch: Vec<(u64, u32, Vec<u8>)>) -> Vec<Prepared> {
    let one = |(at, no, bytes): (u64, u32, Vec<u8>)| -> Prepared {
        let parsed: Result<Json, String> =
            serde_json::from_slice(&bytes).map_err(|e| format!("invalid JSON: {e}"));
        let checked = match &parsed {
            Ok(e) => chain::check_parsed(&bytes, e),
            Err(e) => Err(LineError::Malformed(e.clone())),
        };
        (at, no, parsed, checked, bytes)
    };
    let threads = std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
        .min(8);
    if threads < 2 || batch.len() < 64 {
        return batch.into_iter().map(one).collect();
    }
    let per = batch.len().div_ceil(threads);
    let mut chunks: Vec<Vec<(u64, u32, Vec<u8>)>> = Vec::new();
    let mut it = batch.into_iter();
    loop {
        let c: Vec<_> = it.by_ref().take(per).collect();
        if c.is_empty() {
            break;
        }
        chunks.push(c);
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(one).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

impl LogIndex {
    /// Index `files`, put in the order they were written (`x.2 x.1 x`).
    pub fn open(files: &[PathBuf]) -> std::io::Result<Self> {
        let mut index = Self::empty(files, false);
        index.refresh()?;
        Ok(index)
    }

    /// Index a live log: `file` and the rotated files beside it, following rotations.
    pub fn follow(file: &Path) -> std::io::Result<Self> {
        let mut index = Self::unread(file);
        index.refresh()?;
        Ok(index)
    }

    /// [`LogIndex::follow`] without reading anything yet: the first
    /// [`refresh`](Self::refresh) reads it all.
    pub fn unread(file: &Path) -> Self {
        Self::empty(&[file.to_path_buf()], true)
    }

    fn empty(files: &[PathBuf], rotated: bool) -> Self {
        Self {
            given: files.to_vec(),
            rotated,
            seen: Vec::new(),
            rows: Vec::new(),
            strings: Strings::default(),
            summary: SummaryBuilder::default(),
            verdict: Verdict::default(),
            prev_hash: None,
            trailing_bytes: 0,
            unreadable: 0,
            line_counts: Vec::new(),
        }
    }

    /// The files indexed, oldest first.
    pub fn files(&self) -> Vec<&Path> {
        self.seen.iter().map(|s| s.path.as_path()).collect()
    }

    /// The files to read now, with identity and size.
    fn look(&self) -> std::io::Result<Vec<Looked>> {
        let paths = chronological(&if self.rotated {
            with_rotated(&self.given)
        } else {
            self.given.clone()
        });
        let mut now = Vec::new();
        for p in &paths {
            match std::fs::metadata(p) {
                Ok(m) => now.push((p.clone(), file_id(&m), m.len())),
                // A live log may not exist yet, or be between a rename and its successor.
                Err(e) if self.rotated && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("{}: {e}", p.display()),
                    ));
                }
            }
        }
        Ok(now)
    }

    /// Whether what was read changed in a way appending cannot follow: files rotated,
    /// replaced, truncated or added.
    pub fn needs_rebuild(&self) -> std::io::Result<bool> {
        let now = self.look()?;
        let last = now.len().saturating_sub(1);
        let grew_only = now.len() == self.seen.len()
            && now
                .iter()
                .zip(&self.seen)
                .enumerate()
                .all(|(i, ((p, id, size), s))| {
                    *p == s.path
                        && *id == s.id
                        && if i == last {
                            *size >= s.size
                        } else {
                            *size == s.size
                        }
                });
        Ok(!grew_only)
    }

    /// A new index of the same files, read from the start.
    pub fn reopen(&self) -> std::io::Result<Self> {
        let mut fresh = Self::empty(&self.given, self.rotated);
        fresh.rebuild()?;
        Ok(fresh)
    }

    fn rebuild(&mut self) -> std::io::Result<()> {
        let now = self.look()?;
        *self = Self::empty(&self.given, self.rotated);
        for (p, id, size) in &now {
            self.seen.push(Seen {
                path: p.clone(),
                id: *id,
                len: 0,
                size: *size,
            });
            self.line_counts.push(0);
        }
        for i in 0..self.seen.len() {
            self.read_from(i)?;
        }
        Ok(())
    }

    /// Read what was appended since the last call; rebuild when files were rotated, replaced
    /// or changed. Returns whether anything changed.
    pub fn refresh(&mut self) -> std::io::Result<bool> {
        if self.needs_rebuild()? {
            self.rebuild()?;
            return Ok(true);
        }
        let Some(last) = self.seen.len().checked_sub(1) else {
            return Ok(false);
        };
        let size = std::fs::metadata(&self.seen[last].path)?.len();
        // (`needs_rebuild` saw the file a moment ago; a rotation in between is seen next time.)
        if size == self.seen[last].size {
            return Ok(false);
        }
        self.seen[last].size = size;
        self.read_from(last)?;
        Ok(true)
    }

    /// Read file `i` from where its indexing stopped, in batches whose lines are parsed and
    /// hashed on all cores, then counted and linked in order.
    fn read_from(&mut self, i: usize) -> std::io::Result<()> {
        const BATCH: usize = 512;
        let mut f = File::open(&self.seen[i].path)?;
        let mut offset = self.seen[i].len;
        f.seek(SeekFrom::Start(offset))?;
        let mut r = BufReader::with_capacity(1 << 20, f);
        self.trailing_bytes = 0;
        let mut batch: Vec<(u64, u32, Vec<u8>)> = Vec::with_capacity(BATCH);
        let mut spare: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut line = spare.pop().unwrap_or_default();
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            let complete = n > 0 && line.last() == Some(&b'\n');
            if complete {
                self.line_counts[i] += 1;
                let at = offset;
                offset += n as u64;
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                if line.is_empty() {
                    spare.push(line);
                } else {
                    batch.push((at, self.line_counts[i], line));
                }
            }
            if batch.len() >= BATCH || !complete {
                for (at, line_no, parsed, checked, bytes) in prepare(std::mem::take(&mut batch)) {
                    self.add_line(i, at, line_no, &bytes, parsed, checked);
                    spare.push(bytes);
                }
                self.seen[i].len = offset;
            }
            if n == 0 {
                break;
            }
            if !complete {
                // A write in progress (or a cut): read again once it is complete. In a file
                // that is not the newest, it can only be a cut.
                self.trailing_bytes = n as u64;
                if i + 1 < self.seen.len() && self.verdict.failure.is_none() {
                    self.verdict.failure = Some(VerifyFailure {
                        file: self.seen[i].path.display().to_string(),
                        line: self.line_counts[i] as usize + 1,
                        error: LineError::Incomplete,
                    });
                }
                break;
            }
        }
        Ok(())
    }

    fn add_line(
        &mut self,
        file: usize,
        offset: u64,
        line_no: u32,
        line: &[u8],
        parsed: Result<Json, String>,
        checked: Result<(String, String), LineError>,
    ) {
        // The chain, exactly as `arbiter audit verify` checks it.
        if self.verdict.failure.is_none() {
            let fail = |error| VerifyFailure {
                file: self.seen[file].path.display().to_string(),
                line: line_no as usize,
                error,
            };
            match checked {
                Err(e) => self.verdict.failure = Some(fail(e)),
                Ok((prev, hash)) => match &self.prev_hash {
                    Some(expected) if *expected != prev => {
                        self.verdict.failure = Some(fail(LineError::BrokenLink {
                            expected: expected.clone(),
                            found: prev,
                        }));
                    }
                    _ => {
                        if self.prev_hash.is_none() {
                            self.verdict.first_prev_hash = Some(prev);
                        }
                        self.verdict.verified += 1;
                        self.prev_hash = Some(hash);
                    }
                },
            }
        }
        let e = match parsed {
            Ok(e) if e.get("decision_id").is_some() => e,
            _ => {
                self.summary.add_line(line);
                self.unreadable += 1;
                return;
            }
        };
        self.summary.add(&e);
        let at = At::Line {
            file: u32::try_from(file).unwrap_or(u32::MAX),
            offset,
            len: u32::try_from(line.len()).unwrap_or(u32::MAX),
            line: line_no,
        };
        let row = row_of(&e, at, &mut self.strings);
        self.rows.push(row);
    }

    /// The totals, rankings and percentiles `arbiter audit summary` prints for these files.
    pub fn summary(&self, top: usize) -> Summary {
        self.summary.clone().finish(top)
    }

    /// The hash chain's verdict (an incomplete last line counts, as for `audit verify`).
    pub fn verdict(&self) -> Verdict {
        let mut v = self.verdict.clone();
        if v.failure.is_none()
            && self.trailing_bytes > 0
            && let Some(last) = self.seen.last()
        {
            v.failure = Some(VerifyFailure {
                file: last.path.display().to_string(),
                line: self.line_counts.last().copied().unwrap_or(0) as usize + 1,
                error: LineError::Incomplete,
            });
        }
        v
    }

    /// Rows matching `f`, newest first: how many, and those of page `page` (0-based).
    pub fn query(&self, f: &Filter, page: usize, per_page: usize) -> (usize, Vec<usize>) {
        select(self.rows.iter(), &self.strings, f, page, per_page)
    }

    /// The whole event of row `i`, read back from its file.
    pub fn event(&self, i: usize) -> std::io::Result<Json> {
        let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such event");
        let Some(At::Line {
            file, offset, len, ..
        }) = self.rows.get(i).map(|r| r.at)
        else {
            return Err(not_found());
        };
        let path = &self.seen.get(file as usize).ok_or_else(not_found)?.path;
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf)?;
        serde_json::from_slice(&buf)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }

    /// Where row `i` is: `file:line`.
    pub fn location(&self, i: usize) -> String {
        match self.rows.get(i).map(|r| r.at) {
            Some(At::Line { file, line, .. }) => self
                .seen
                .get(file as usize)
                .map_or_else(String::new, |s| format!("{}:{line}", s.path.display())),
            // A file index holds lines only; the fleet's stream messages are located by the
            // dashboard, which knows the stream's name.
            Some(At::Stream { .. }) | None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests;

//! The hash chain of a decision log.
//!
//! Each event carries `prev_hash`, the `hash` of the event before it, and `hash`, the SHA-256 of
//! the event's own JSON bytes as written — everything before `,"hash":"…"}`, `prev_hash`
//! included — with `}` closing them. Hashing the written bytes rather than a re-encoding means
//! the verifier needs no canonicalization that could disagree with the writer.
//!
//! Changing any byte of an event breaks its `hash`; deleting, inserting or swapping events
//! breaks the next event's `prev_hash`. The chain continues across restarts and rotated files:
//! the writer starts from the last hash it finds. A chain with no predecessor starts from
//! [`GENESIS`].
//!
//! Without a secret, someone who can rewrite the whole log can recompute the whole chain; the
//! chain proves that a log agrees with any hash copied out of it earlier (a later event's
//! hash, a hash shipped to the collector), which is what makes tampering evident.

use std::io::BufRead;

use serde_json::{Map, Value as Json};

/// `prev_hash` of the first event of a new chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

const HASH_PREFIX: &[u8] = b",\"hash\":\"";

/// Line separators other than `\n` that line-oriented tools split on (Python's
/// `str.splitlines`, many log shippers): U+0085, U+2028, U+2029, as UTF-8, with their JSON
/// escapes. (serde_json already escapes the ASCII control characters.)
const SEPARATORS: [(&[u8], &[u8]); 3] = [
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
];

/// The raw separator of [`SEPARATORS`] at the start of `bytes`, if any: its length and escape.
fn separator_at(bytes: &[u8]) -> Option<(usize, &'static [u8])> {
    SEPARATORS
        .iter()
        .find(|(raw, _)| bytes.starts_with(raw))
        .map(|(raw, escape)| (raw.len(), *escape))
}

/// Whether `bytes` hold a raw separator of [`SEPARATORS`].
fn has_separator(bytes: &[u8]) -> bool {
    memchr::memchr2_iter(0xc2, 0xe2, bytes).any(|i| separator_at(&bytes[i..]).is_some())
}

/// Escape every raw line separator of a JSON text. They can only stand inside strings (JSON's
/// structure is ASCII), where the escape means the same character: one event stays one line
/// for every reader. The lead bytes are searched with `memchr` (SIMD): most events have none.
fn escape_separators(body: &mut Vec<u8>) {
    let mut leads = memchr::memchr2_iter(0xc2, 0xe2, body).peekable();
    if leads.peek().is_none() {
        return;
    }
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at = 0;
    for i in leads {
        if i < at {
            continue;
        }
        if let Some((n, escape)) = separator_at(&body[i..]) {
            out.extend_from_slice(&body[at..i]);
            out.extend_from_slice(escape);
            at = i + n;
        }
    }
    out.extend_from_slice(&body[at..]);
    *body = out;
}

fn sha256_hex(bytes: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    // Into a buffer of the right size: `hex::encode` builds its string a char at a time (5 % of
    // the log writer's time under load, as much as the digest's hex is worth).
    let mut text = [0u8; 64];
    match hex::encode_to_slice(digest.as_ref(), &mut text) {
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => hex::encode(digest),
    }
}

/// Add `prev_hash` and `hash` to `event` and encode it as one line (with `\n`).
/// Returns the line and the event's hash.
pub fn seal(mut event: Map<String, Json>, prev_hash: &str) -> (Vec<u8>, String) {
    event.remove("hash");
    event.insert("prev_hash".into(), Json::String(prev_hash.to_string()));
    // An object of strings, numbers and nested values always encodes.
    let mut body = serde_json::to_vec(&Json::Object(event)).unwrap_or_else(|_| b"{}".to_vec());
    escape_separators(&mut body);
    let hash = sha256_hex(&body);
    body.pop(); // the closing brace
    body.extend_from_slice(HASH_PREFIX);
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"\"}\n");
    (body, hash)
}

/// [`seal`] for an event whose `input` is a Rego value: it is serialized straight into the
/// line, skipping the conversion to a JSON tree (the writer's largest cost).
pub fn seal_with_input(
    mut fields: Map<String, Json>,
    input: Option<&regorus::Value>,
    prev_hash: &str,
) -> (Vec<u8>, String) {
    fields.remove("hash");
    fields.remove("input");
    let mut body = Vec::with_capacity(2048);
    if serde_json::to_writer(&mut body, &Json::Object(fields)).is_err() {
        body = b"{}".to_vec();
    }
    seal_object(body, input, prev_hash)
}

/// [`seal_with_input`] for an event already written as one JSON object without `prev_hash`,
/// `input` or `hash` (what [`crate::record::DecisionRecord::write_fields`] writes): adds them
/// and encodes the line.
pub fn seal_object<I: serde::Serialize>(
    body: Vec<u8>,
    input: Option<&I>,
    prev_hash: &str,
) -> (Vec<u8>, String) {
    seal_written(
        body,
        input.map(|i| move |out: &mut Vec<u8>| serde_json::to_writer(out, i).is_ok()),
        prev_hash,
    )
}

/// [`seal_object`] with the input written by `write_input` (false: it could not be, and the
/// event has no `input`).
pub fn seal_written(
    mut body: Vec<u8>,
    write_input: Option<impl FnOnce(&mut Vec<u8>) -> bool>,
    prev_hash: &str,
) -> (Vec<u8>, String) {
    body.pop(); // the closing brace
    if body.len() > 1 {
        body.push(b',');
    }
    body.extend_from_slice(b"\"prev_hash\":\"");
    body.extend_from_slice(prev_hash.as_bytes());
    body.push(b'"');
    if let Some(write) = write_input {
        let mark = body.len();
        body.extend_from_slice(b",\"input\":");
        if !write(&mut body) {
            body.truncate(mark);
        }
    }
    body.push(b'}');
    escape_separators(&mut body);
    let hash = sha256_hex(&body);
    body.pop();
    body.extend_from_slice(HASH_PREFIX);
    body.extend_from_slice(hash.as_bytes());
    body.extend_from_slice(b"\"}\n");
    (body, hash)
}

/// What is wrong with one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineError {
    /// Not an event written by arbiter: not JSON, or no trailing `hash`.
    Malformed(String),
    /// The bytes do not hash to the recorded `hash`: the event was changed.
    Modified,
    /// `prev_hash` is not the previous event's hash: events are missing, inserted or out of
    /// order.
    BrokenLink { expected: String, found: String },
    /// The last line has no newline: a write was cut short or the file was truncated.
    Incomplete,
}

impl std::fmt::Display for LineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LineError::Malformed(why) => write!(f, "not a sealed decision event ({why})"),
            LineError::Modified => {
                f.write_str("the event does not match its hash: it was modified")
            }
            LineError::BrokenLink { expected, found } => write!(
                f,
                "prev_hash {found} is not the previous event's hash {expected}: events are missing, inserted or out of order"
            ),
            LineError::Incomplete => {
                f.write_str("the last line is incomplete (a cut-short write or a truncated file)")
            }
        }
    }
}

/// Where the trailing `,"hash":"<64 hex>"}` of a sealed line starts.
fn hash_tail(line: &[u8]) -> Result<usize, LineError> {
    let tail = HASH_PREFIX.len() + 64 + 2;
    if line.len() < tail + 1 || !line.ends_with(b"\"}") {
        return Err(LineError::Malformed("no trailing hash".into()));
    }
    let split = line.len() - tail;
    if &line[split..split + HASH_PREFIX.len()] != HASH_PREFIX {
        return Err(LineError::Malformed("no trailing hash".into()));
    }
    Ok(split)
}

/// One line's own check: its hash, and its recorded `prev_hash` and `hash`.
pub fn check_line(line: &[u8]) -> Result<(String, String), LineError> {
    // The cheap check first: a line without the trailing hash is not parsed.
    hash_tail(line)?;
    let event: Json = serde_json::from_slice(line)
        .map_err(|e| LineError::Malformed(format!("invalid JSON: {e}")))?;
    check_parsed(line, &event)
}

/// [`check_line`] for a line already parsed into `event` (one JSON parse per line for
/// readers that also need the event's fields).
pub fn check_parsed(line: &[u8], event: &Json) -> Result<(String, String), LineError> {
    let split = hash_tail(line)?;
    if has_separator(line) {
        return Err(LineError::Malformed(
            "a raw line separator (U+0085, U+2028 or U+2029) inside the line: line-oriented tools would see two events".into(),
        ));
    }
    let recorded = std::str::from_utf8(&line[split + HASH_PREFIX.len()..line.len() - 2])
        .map_err(|_| LineError::Malformed("the hash is not text".into()))?
        .to_string();
    let prev = event
        .get("prev_hash")
        .and_then(Json::as_str)
        .ok_or_else(|| LineError::Malformed("no prev_hash".into()))?
        .to_string();
    let mut body = line[..split].to_vec();
    body.push(b'}');
    if sha256_hex(&body) != recorded {
        return Err(LineError::Modified);
    }
    Ok((prev, recorded))
}

/// The first problem found, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    pub file: String,
    /// 1-based line number in `file`.
    pub line: usize,
    pub error: LineError,
}

/// What verifying a log found.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub files: usize,
    /// Events that verified before the first failure (all of them when there is none).
    pub events: usize,
    /// `prev_hash` of the first event: [`GENESIS`] for a complete chain, else the hash of an
    /// event in an earlier file that was not given.
    pub first_prev_hash: Option<String>,
    /// Hash of the last event that verified.
    pub last_hash: Option<String>,
    pub failure: Option<VerifyFailure>,
    /// Lines that are not decision events (no chain hash, no `decision_id`, no `prev_hash`):
    /// what a console log holds besides events — the server's own messages, OPA's
    /// status lines. They are skipped and counted; they cannot hide a removed or changed event,
    /// which breaks the chain.
    pub skipped: usize,
}

/// Whether a line is a decision event (which must verify) rather than another log line: it
/// carries the chain's hash, or names a `decision_id` or `prev_hash` anywhere — so an event
/// cut short or altered still counts as one and fails.
fn is_event(line: &[u8]) -> bool {
    let has = |needle: &[u8]| line.windows(needle.len()).any(|w| w == needle);
    hash_tail(line).is_ok() || has(b"\"decision_id\"") || has(b"\"prev_hash\"")
}

/// Verify files in order (oldest first), stopping at the first problem.
pub fn verify<R: BufRead>(files: Vec<(String, R)>) -> std::io::Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut prev: Option<String> = None;
    for (name, mut reader) in files {
        report.files += 1;
        let mut line = Vec::new();
        let mut n = 0;
        loop {
            line.clear();
            if reader.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            n += 1;
            let fail = |error| VerifyFailure {
                file: name.clone(),
                line: n,
                error,
            };
            if line.last() != Some(&b'\n') {
                report.failure = Some(fail(LineError::Incomplete));
                return Ok(report);
            }
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if !is_event(&line) {
                report.skipped += 1;
                continue;
            }
            match check_line(&line) {
                Err(e) => {
                    report.failure = Some(fail(e));
                    return Ok(report);
                }
                Ok((p, h)) => {
                    match &prev {
                        None => report.first_prev_hash = Some(p),
                        Some(expected) if *expected != p => {
                            report.failure = Some(fail(LineError::BrokenLink {
                                expected: expected.clone(),
                                found: p,
                            }));
                            return Ok(report);
                        }
                        Some(_) => {}
                    }
                    report.events += 1;
                    report.last_hash = Some(h.clone());
                    prev = Some(h);
                }
            }
        }
    }
    Ok(report)
}

/// One chain verified from events in any order (a stream's, where a retried publish can
/// land after a later event): each event's own hash is checked, then the events are put in
/// chain order by their links.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LinkedReport {
    /// Events given.
    pub events: usize,
    /// Indices of the events in chain order, from the first (the one whose `prev_hash` is no
    /// given event's hash) along the links.
    pub order: Vec<usize>,
    /// The hashes of the events in `order`, in that order.
    pub hashes: Vec<String>,
    /// `prev_hash` of the first event: [`GENESIS`] when the chain is whole from its start.
    pub first_prev_hash: Option<String>,
    /// Hash of the last event in chain order.
    pub last_hash: Option<String>,
    /// What is wrong, each with the index of the event it concerns: an event that does not
    /// match its hash, a gap (an event whose predecessor is not among the events, besides the
    /// first), a fork (two events naming the same predecessor). Empty when the chain is whole.
    pub problems: Vec<(usize, String)>,
}

/// Verify `lines` (events of one writer, each without its newline) as one chain, in whatever
/// order they come; duplicates (the same hash twice) count once.
pub fn verify_linked(lines: &[&[u8]]) -> LinkedReport {
    use std::collections::{HashMap, HashSet};
    let mut report = LinkedReport {
        events: lines.len(),
        ..LinkedReport::default()
    };
    // Each distinct event once: (index, prev_hash, hash).
    let mut by_hash: HashMap<String, usize> = HashMap::new();
    let mut hash_of: Vec<Option<String>> = vec![None; lines.len()];
    let mut prev_of: Vec<Option<String>> = vec![None; lines.len()];
    for (i, line) in lines.iter().enumerate() {
        match check_line(line) {
            Ok((prev, hash)) => {
                if let std::collections::hash_map::Entry::Vacant(v) = by_hash.entry(hash.clone()) {
                    v.insert(i);
                    hash_of[i] = Some(hash);
                    prev_of[i] = Some(prev);
                }
            }
            Err(e) => report.problems.push((i, e.to_string())),
        }
    }
    let mut next: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut heads = Vec::new();
    for (i, prev) in prev_of.iter().enumerate() {
        let Some(prev) = prev else { continue };
        next.entry(prev.as_str()).or_default().push(i);
        if !by_hash.contains_key(prev) {
            heads.push(i);
        }
    }
    for &h in heads.iter().skip(1) {
        report.problems.push((
            h,
            format!(
                "events are missing before this one: its prev_hash {} is not among the events",
                prev_of[h].as_deref().unwrap_or_default()
            ),
        ));
    }
    let mut seen: HashSet<usize> = HashSet::new();
    for &head in &heads {
        if report.first_prev_hash.is_none() {
            report.first_prev_hash = prev_of[head].clone();
        }
        let mut at = Some(head);
        while let Some(i) = at {
            if !seen.insert(i) {
                break;
            }
            report.order.push(i);
            let hash = hash_of[i].as_deref().unwrap_or_default();
            report.hashes.push(hash.to_string());
            report.last_hash = Some(hash.to_string());
            at = match next.get(hash).map(Vec::as_slice) {
                None | Some([]) => None,
                Some([one]) => Some(*one),
                Some([first, rest @ ..]) => {
                    for r in rest {
                        report.problems.push((
                            *r,
                            format!("a fork: this event and another both follow {hash}"),
                        ));
                    }
                    Some(*first)
                }
            };
        }
    }
    report
}

/// The hash of the last complete, sealed line of `text` (how a writer continues a chain).
pub fn last_hash(text: &[u8]) -> Option<String> {
    text.split(|b| *b == b'\n')
        .rev()
        .skip(1) // whatever follows the last newline is not a complete line
        .find(|l| !l.is_empty())
        .and_then(|l| check_line(l).ok())
        .map(|(_, h)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: usize) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|i| {
                let mut m = Map::new();
                m.insert("decision_id".into(), Json::from(format!("d-{i}")));
                let (mut line, h) = seal(m, &prev);
                prev = h;
                line.pop();
                line
            })
            .collect()
    }

    #[test]
    fn a_chain_in_any_order_is_put_back_in_order() {
        let c = chain_of(5);
        let shuffled: Vec<&[u8]> = [3, 0, 4, 1, 2, 1]
            .iter()
            .map(|&i| c[i].as_slice())
            .collect();
        let r = verify_linked(&shuffled);
        assert!(r.problems.is_empty(), "{:?}", r.problems);
        assert_eq!(r.order, [1, 3, 4, 0, 2], "chain order, the duplicate once");
        let in_order: Vec<String> = c.iter().map(|l| check_line(l).unwrap().1).collect();
        assert_eq!(r.hashes, in_order);
        assert_eq!(r.first_prev_hash.as_deref(), Some(GENESIS));
    }

    #[test]
    fn gaps_forks_and_changed_events_are_named() {
        let c = chain_of(5);
        // Event 2 missing: a gap before event 3.
        let gap: Vec<&[u8]> = [0, 1, 3, 4].iter().map(|&i| c[i].as_slice()).collect();
        let r = verify_linked(&gap);
        assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
        assert_eq!(r.problems[0].0, 2);
        assert!(r.problems[0].1.contains("missing before"));
        // A changed byte.
        let mut changed = c[1].clone();
        let at = changed.iter().position(|b| *b == b'd').unwrap_or(0);
        changed[at + 12] ^= 1;
        let lines: Vec<&[u8]> = vec![&c[0], &changed, &c[2]];
        let r = verify_linked(&lines);
        assert!(r.problems.iter().any(|(i, _)| *i == 1), "{:?}", r.problems);
        // Two events after the same one.
        let mut other = Map::new();
        other.insert("decision_id".into(), Json::from("fork"));
        let prev = check_line(&c[0]).unwrap().1;
        let (mut fork, _) = seal(other, &prev);
        fork.pop();
        let lines: Vec<&[u8]> = vec![&c[0], &c[1], &fork];
        let r = verify_linked(&lines);
        assert!(
            r.problems.iter().any(|(_, p)| p.contains("fork")),
            "{:?}",
            r.problems
        );
    }
    use serde_json::json;

    /// U+2028, U+2029 and U+0085 in a value are written escaped: one event, one line, for
    /// `str.splitlines()` too; a line holding one raw is not a sealed event.
    #[test]
    fn unicode_line_separators_are_escaped() {
        let event = match json!({"decision_id": "a", "input": {"h": "x\u{2028}y\u{2029}z\u{85}w"}})
        {
            Json::Object(m) => m,
            _ => unreachable!(),
        };
        for (line, _) in [
            seal(event.clone(), GENESIS),
            seal_with_input(
                event.clone(),
                Some(&crate::value::from_json(&event["input"])),
                GENESIS,
            ),
        ] {
            let text = String::from_utf8(line.clone()).unwrap();
            assert_eq!(text.lines().count(), 1);
            assert!(!text.contains(['\u{2028}', '\u{2029}', '\u{85}']), "{text}");
            assert!(text.contains("x\\u2028y\\u2029z\\u0085w"), "{text}");
            // The escapes read back as the same characters, and the line verifies.
            let back: Json = serde_json::from_slice(&line).unwrap();
            assert_eq!(back["input"]["h"], "x\u{2028}y\u{2029}z\u{85}w");
            assert!(check_line(line.strip_suffix(b"\n").unwrap()).is_ok());
        }
        // The same event written raw (its hash recomputed over the raw bytes) is refused.
        let raw = "{\"decision_id\":\"a\",\"h\":\"x\u{2028}y\",\"prev_hash\":\"0000000000000000000000000000000000000000000000000000000000000000\"}";
        let hash = sha256_hex(raw.as_bytes());
        let line = format!("{},\"hash\":\"{hash}\"}}", &raw[..raw.len() - 1]);
        assert!(
            matches!(check_line(line.as_bytes()), Err(LineError::Malformed(m)) if m.contains("U+2028"))
        );
    }

    /// The format the README documents, checked against hashes computed outside this crate:
    /// each expected hash is `sha256sum` of the event's bytes as written before `,"hash":…`,
    /// with `}` closing them, `prev_hash` the previous event's hash (the first's is all zeros):
    ///
    /// ```text
    /// G=0000000000000000000000000000000000000000000000000000000000000000
    /// printf '%s' "{\"decision_id\":\"a\",\"allowed\":true,\"prev_hash\":\"$G\"}" | sha256sum
    /// printf '%s' "{\"decision_id\":\"b\",\"allowed\":false,\"prev_hash\":\"$H1\"}" | sha256sum
    /// ```
    #[test]
    fn known_answer_vectors() {
        const H1: &str = "a47bde9b5c86363e51bc0e2e0f4ef1b22bf0d943b1483a1d6c0b079570ae0bce";
        const H2: &str = "aa3358c4184c80c8aec1a2ba6ebd31a3ff440e95e1ad4b5b2a4f2fcbcc45b626";
        let object = |v: Json| match v {
            Json::Object(m) => m,
            _ => unreachable!(),
        };
        let (line, hash) = seal(
            object(json!({"decision_id": "a", "allowed": true})),
            GENESIS,
        );
        assert_eq!(hash, H1);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            format!(
                "{{\"decision_id\":\"a\",\"allowed\":true,\"prev_hash\":\"{GENESIS}\",\"hash\":\"{H1}\"}}\n"
            )
        );
        // The writer's path (input serialized straight into the line) writes the same bytes.
        let (line2, hash2) = seal_with_input(
            object(json!({"decision_id": "a", "allowed": true})),
            None,
            GENESIS,
        );
        assert_eq!(
            (line2, hash2),
            seal(
                object(json!({"decision_id": "a", "allowed": true})),
                GENESIS
            )
        );
        let (line, hash) = seal(object(json!({"decision_id": "b", "allowed": false})), H1);
        assert_eq!(hash, H2);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            format!(
                "{{\"decision_id\":\"b\",\"allowed\":false,\"prev_hash\":\"{H1}\",\"hash\":\"{H2}\"}}\n"
            )
        );
    }

    fn event(i: usize) -> Map<String, Json> {
        match json!({"decision_id": format!("d{i}"), "input": {"s": "a\n{\"allowed\":true}"}, "allowed": i.is_multiple_of(2)})
        {
            Json::Object(m) => m,
            _ => unreachable!(),
        }
    }

    fn log(n: usize) -> Vec<Vec<u8>> {
        let mut prev = GENESIS.to_string();
        (0..n)
            .map(|i| {
                let (line, h) = seal(event(i), &prev);
                prev = h;
                line
            })
            .collect()
    }

    fn verify_lines(lines: &[Vec<u8>]) -> VerifyReport {
        let text: Vec<u8> = lines.concat();
        verify(vec![("log".to_string(), std::io::Cursor::new(text))]).unwrap()
    }

    #[test]
    fn an_untouched_log_verifies() {
        let lines = log(5);
        let r = verify_lines(&lines);
        assert_eq!(r.failure, None);
        assert_eq!(r.events, 5);
        assert_eq!(r.first_prev_hash.as_deref(), Some(GENESIS));
        // Each line is one JSON object with the chain fields.
        for l in &lines {
            let v: Json = serde_json::from_slice(l).unwrap();
            assert_eq!(v["hash"].as_str().unwrap().len(), 64);
        }
        assert_eq!(last_hash(&lines.concat()), r.last_hash);
    }

    #[test]
    fn one_changed_byte_a_deletion_and_a_swap_are_caught() {
        let lines = log(5);
        // Flip one byte of line 3's body.
        let mut changed = lines.clone();
        let pos = changed[2].iter().position(|b| *b == b'd').unwrap();
        changed[2][pos] = b'e';
        let r = verify_lines(&changed);
        let f = r.failure.unwrap();
        assert_eq!((f.line, f.error), (3, LineError::Modified));
        assert_eq!(r.events, 2);

        let mut deleted = lines.clone();
        deleted.remove(1);
        let f = verify_lines(&deleted).failure.unwrap();
        assert_eq!(f.line, 2);
        assert!(matches!(f.error, LineError::BrokenLink { .. }));

        let mut swapped = lines.clone();
        swapped.swap(3, 4);
        let f = verify_lines(&swapped).failure.unwrap();
        assert_eq!(f.line, 4);
        assert!(matches!(f.error, LineError::BrokenLink { .. }));

        let mut truncated = lines.concat();
        truncated.truncate(truncated.len() - 10);
        let r = verify(vec![("log".to_string(), std::io::Cursor::new(truncated))]).unwrap();
        assert_eq!(r.failure.unwrap().error, LineError::Incomplete);

        // A forged event without the chain is malformed; a line put in place of an event,
        // even one that is not an event, leaves the chain broken where the event was.
        let mut forged = lines.clone();
        forged[0] = b"{\"decision_id\":\"x\",\"allowed\":true}\n".to_vec();
        assert!(matches!(
            verify_lines(&forged).failure.unwrap().error,
            LineError::Malformed(_)
        ));
        let mut replaced = lines.clone();
        replaced[1] = b"{\"allowed\":true}\n".to_vec();
        let r = verify_lines(&replaced);
        assert!(matches!(
            r.failure.unwrap().error,
            LineError::BrokenLink { .. }
        ));
        assert_eq!(r.skipped, 1);
    }

    /// A console log (`kubectl logs`) holds the server's own messages between the events:
    /// they are skipped and counted, and the chain still verifies (issue 25, item 8).
    #[test]
    fn other_lines_of_a_console_log_are_skipped_and_counted() {
        let lines = log(3);
        let mixed = vec![
            b"arbiter: serving `envoy/authz/allow` from policies\n".to_vec(),
            lines[0].clone(),
            b"{\"level\":\"info\",\"msg\":\"Status Log\"}\n".to_vec(),
            lines[1].clone(),
            b"\n".to_vec(),
            lines[2].clone(),
        ];
        let r = verify_lines(&mixed);
        assert_eq!(r.failure, None);
        assert_eq!((r.events, r.skipped), (3, 3));
    }

    #[test]
    fn the_chain_spans_files() {
        let lines = log(6);
        let a: Vec<u8> = lines[..3].concat();
        let b: Vec<u8> = lines[3..].concat();
        let r = verify(vec![
            ("log.1".to_string(), std::io::Cursor::new(a.clone())),
            ("log".to_string(), std::io::Cursor::new(b.clone())),
        ])
        .unwrap();
        assert_eq!((r.files, r.events, r.failure), (2, 6, None));
        // In the wrong order, the second file's first event does not link.
        let r = verify(vec![
            ("log".to_string(), std::io::Cursor::new(b)),
            ("log.1".to_string(), std::io::Cursor::new(a)),
        ])
        .unwrap();
        let f = r.failure.unwrap();
        assert_eq!((f.file.as_str(), f.line), ("log.1", 1));
    }
}

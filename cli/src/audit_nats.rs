//! `arbiter audit verify --nats URL --stream S [--instance ID] [FILE…]`: every instance's hash
//! chain, read back from the JetStream stream the instances ship to — so deleting the newest
//! events of a local file is visible: the stream has them — and, with FILEs, the files compared
//! with their instance's events in the stream (the first event missing from either).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;

use arbiter_engine::audit::chain::{self, GENESIS};
use arbiter_engine::audit::index::chronological;
use arbiter_ext_authz::decision_log::NatsConfig;
use arbiter_ext_authz::decision_log::nats::{Stored, read_stream};

use crate::Exit;
use crate::audit::{Format, VerifyArgs};

/// One instance's events in the stream.
#[derive(Debug, Default)]
struct Instance {
    /// Stream sequence, decision id, line.
    events: Vec<(u64, String, Vec<u8>)>,
}

fn field(event: &serde_json::Value, pointer: &str) -> String {
    event
        .pointer(pointer)
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
        .to_string()
}

/// What one instance's check found.
#[derive(Debug)]
struct Checked {
    id: String,
    events: usize,
    from_genesis: bool,
    first_prev_hash: String,
    last_hash: String,
    /// (stream sequence, decision id, what is wrong).
    problems: Vec<(u64, String, String)>,
    /// Hashes of the instance's events, in chain order.
    order: Vec<String>,
}

fn check(id: &str, inst: &Instance) -> Checked {
    let lines: Vec<&[u8]> = inst.events.iter().map(|(_, _, l)| l.as_slice()).collect();
    let r = chain::verify_linked(&lines);
    Checked {
        id: id.to_string(),
        events: r.order.len(),
        from_genesis: r.first_prev_hash.as_deref() == Some(GENESIS),
        first_prev_hash: r.first_prev_hash.unwrap_or_default(),
        last_hash: r.last_hash.unwrap_or_default(),
        problems: r
            .problems
            .into_iter()
            .map(|(i, p)| (inst.events[i].0, inst.events[i].1.clone(), p))
            .collect(),
        order: r.hashes,
    }
}

/// A local file set compared with its instance in the stream.
#[derive(Debug, Default)]
struct Compared {
    instance: String,
    file_events: usize,
    /// Events of the files the stream lacks: count, and the first (decision id, where).
    missing_from_stream: usize,
    first_missing_from_stream: Option<(String, String)>,
    /// Events the stream has after the files' last one: count, and the first decision id.
    missing_from_files: usize,
    first_missing_from_files: Option<String>,
}

fn compare(
    files: &[std::path::PathBuf],
    checked: &[Checked],
    ids: &HashMap<String, String>,
) -> Result<Compared, String> {
    let mut c = Compared::default();
    let mut hashes: Vec<String> = Vec::new();
    let mut where_of: Vec<(String, String)> = Vec::new();
    for f in chronological(files) {
        let text = std::fs::read(&f).map_err(|e| format!("{}: {e}", f.display()))?;
        for (n, line) in text.split_inclusive(|b| *b == b'\n').enumerate() {
            let Some(line) = line.strip_suffix(b"\n") else {
                continue;
            };
            // One parse per line: the chain's check and the fields read from the same event.
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(line) else {
                continue;
            };
            let Ok((_, hash)) = chain::check_parsed(line, &event) else {
                continue;
            };
            if c.instance.is_empty() {
                c.instance = field(&event, "/labels/id");
            }
            hashes.push(hash);
            where_of.push((
                field(&event, "/decision_id"),
                format!("{}:{}", f.display(), n + 1),
            ));
        }
    }
    c.file_events = hashes.len();
    let stream = checked.iter().find(|k| k.id == c.instance);
    let in_stream: HashSet<&str> = stream
        .map(|k| k.order.iter().map(String::as_str).collect())
        .unwrap_or_default();
    for (h, w) in hashes.iter().zip(&where_of) {
        if !in_stream.contains(h.as_str()) {
            c.missing_from_stream += 1;
            c.first_missing_from_stream.get_or_insert_with(|| w.clone());
        }
    }
    if let (Some(k), Some(last)) = (stream, hashes.last()) {
        // After the files' last event, in the stream's chain order.
        if let Some(at) = k.order.iter().position(|h| h == last) {
            let after = &k.order[at + 1..];
            c.missing_from_files = after.len();
            c.first_missing_from_files = after.first().and_then(|h| ids.get(h).cloned());
        }
    }
    Ok(c)
}

pub fn verify(
    a: &VerifyArgs,
    url: &str,
    stream: &str,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let config = NatsConfig::reader(url, a.nats_creds.clone(), a.nats_ca.clone());
    let stored: Vec<Stored> = match read_stream(&config, stream) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "arbiter audit: {e}");
            return Exit::Usage;
        }
    };
    let mut instances: BTreeMap<String, Instance> = BTreeMap::new();
    // Hash → decision id, to name events found by hash.
    let mut ids: HashMap<String, String> = HashMap::new();
    let mut unreadable: Vec<u64> = Vec::new();
    for s in &stored {
        let Ok(event) = serde_json::from_slice::<serde_json::Value>(&s.payload) else {
            unreadable.push(s.sequence);
            continue;
        };
        let id = field(&event, "/labels/id");
        let decision = field(&event, "/decision_id");
        if a.instance.as_ref().is_some_and(|want| *want != id) {
            continue;
        }
        ids.insert(field(&event, "/hash"), decision.clone());
        instances
            .entry(id)
            .or_default()
            .events
            .push((s.sequence, decision, s.payload.to_vec()));
    }
    if let Some(want) = &a.instance
        && !instances.contains_key(want)
    {
        let _ = writeln!(
            err,
            "arbiter audit: no events of instance `{want}` in `{stream}`"
        );
        return Exit::Failed;
    }
    let checked: Vec<Checked> = instances.iter().map(|(id, i)| check(id, i)).collect();
    let compared = if a.files.is_empty() {
        None
    } else {
        match compare(&a.files, &checked, &ids) {
            Ok(c) => Some(c),
            Err(e) => {
                let _ = writeln!(err, "arbiter audit: {e}");
                return Exit::Usage;
            }
        }
    };
    let ok = unreadable.is_empty()
        && checked.iter().all(|k| k.problems.is_empty())
        && compared
            .as_ref()
            .is_none_or(|c| c.missing_from_stream == 0 && c.missing_from_files == 0);
    match a.format {
        Format::Json => {
            let v = serde_json::json!({
                "ok": ok,
                "stream": stream,
                "messages": stored.len(),
                "unreadable_sequences": unreadable,
                "instances": checked.iter().map(|k| serde_json::json!({
                    "id": k.id,
                    "events": k.events,
                    "from_genesis": k.from_genesis,
                    "first_prev_hash": k.first_prev_hash,
                    "last_hash": k.last_hash,
                    "problems": k.problems.iter().map(|(seq, d, p)| serde_json::json!({
                        "sequence": seq, "decision_id": d, "error": p,
                    })).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
                "files": compared.as_ref().map(|c| serde_json::json!({
                    "instance": c.instance,
                    "events": c.file_events,
                    "missing_from_stream": c.missing_from_stream,
                    "first_missing_from_stream": c.first_missing_from_stream.as_ref().map(|(d, w)| serde_json::json!({"decision_id": d, "at": w})),
                    "missing_from_files": c.missing_from_files,
                    "first_missing_from_files": c.first_missing_from_files,
                })),
            });
            let _ = writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_default()
            );
        }
        Format::Pretty => {
            let _ = writeln!(
                out,
                "{}: {} messages, {} instance{}",
                stream,
                stored.len(),
                checked.len(),
                if checked.len() == 1 { "" } else { "s" }
            );
            for k in &checked {
                let start = if k.from_genesis {
                    "from the start of its chain".to_string()
                } else {
                    format!(
                        "after event {} (earlier events not in the stream)",
                        k.first_prev_hash
                    )
                };
                if k.problems.is_empty() {
                    let _ = writeln!(
                        out,
                        "OK: instance {}: {} events, chain intact, {start}; last hash {}",
                        k.id, k.events, k.last_hash
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "FAILED: instance {}: {} problem{}",
                        k.id,
                        k.problems.len(),
                        if k.problems.len() == 1 { "" } else { "s" }
                    );
                    for (seq, d, p) in k.problems.iter().take(10) {
                        let _ = writeln!(out, "  message {seq} (decision {d}): {p}");
                    }
                }
            }
            if !unreadable.is_empty() {
                let _ = writeln!(
                    out,
                    "FAILED: messages that are not decision events: {unreadable:?}"
                );
            }
            if let Some(c) = &compared {
                let _ = writeln!(
                    out,
                    "files: {} events of instance {}",
                    c.file_events, c.instance
                );
                match &c.first_missing_from_stream {
                    None => {
                        let _ = writeln!(out, "  every event of the files is in the stream");
                    }
                    Some((d, w)) => {
                        let _ = writeln!(
                            out,
                            "FAILED: {} events of the files are not in the stream; the first: decision {d} at {w}",
                            c.missing_from_stream
                        );
                    }
                }
                if c.missing_from_files > 0 {
                    let _ = writeln!(
                        out,
                        "FAILED: the stream has {} events after the files' last one (the newest events were removed from the files?); the first: decision {}",
                        c.missing_from_files,
                        c.first_missing_from_files.as_deref().unwrap_or("?")
                    );
                } else {
                    let _ = writeln!(out, "  the files end where the stream does");
                }
            }
        }
    }
    if ok { Exit::Ok } else { Exit::Failed }
}

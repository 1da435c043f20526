use std::io::Write;

use serde_json::json;

use super::*;
use crate::audit::chain::{GENESIS, seal};

fn dir(name: &str) -> crate::scratch::ScratchDir {
    crate::scratch::ScratchDir::new(&format!("arbiter-index-{}-{name}", std::process::id()))
}

fn event(i: usize) -> serde_json::Map<String, Json> {
    let allowed = !i.is_multiple_of(3);
    let e = json!({
        "decision_id": format!("d{i}"),
        "timestamp": format!("2026-11-26T10:{:02}:{:02}Z", (i / 60) % 60, i % 60),
        "allowed": allowed,
        "reason": if allowed { "allowed" } else if i.is_multiple_of(2) { "policy_denied" } else { "timeout" },
        "identity": if i.is_multiple_of(4) { json!({"spiffe_id": format!("spiffe://td/ns/a/sa/s{}", i % 8)}) } else { json!(null) },
        "input": {"attributes": {"request": {"http": {"path": format!("/p{}?q", i % 5)}}}},
        "policy": "authz.cel.yaml",
        "rule": if allowed { "reads" } else { "deny-writes" },
        "metrics": {"timer_server_handler_ns": 1000 + i},
        "revision": "r1",
    });
    e.as_object().unwrap().clone()
}

/// `n` sealed events starting after `prev`; returns the text and the last hash.
fn log(range: std::ops::Range<usize>, mut prev: String) -> (Vec<u8>, String) {
    let mut out = Vec::new();
    for i in range {
        let (line, hash) = seal(event(i), &prev);
        out.extend_from_slice(&line);
        prev = hash;
    }
    (out, prev)
}

fn builder_summary(text: &[u8]) -> Summary {
    let mut b = SummaryBuilder::default();
    for l in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        b.add_line(l);
    }
    b.finish(10)
}

#[test]
fn indexes_counts_and_verifies_like_summary_and_verify() {
    let d = dir("basic");
    let (text, _) = log(0..120, GENESIS.into());
    let f = d.join("decisions.log");
    std::fs::write(&f, &text).unwrap();
    let idx = LogIndex::open(std::slice::from_ref(&f)).unwrap();
    assert_eq!(idx.rows.len(), 120);
    assert_eq!(idx.summary(10), builder_summary(&text));
    let v = idx.verdict();
    assert_eq!(v.failure, None);
    assert_eq!(v.verified, 120);
    assert_eq!(v.first_prev_hash.as_deref(), Some(GENESIS));
    // Row 7: read back whole.
    assert_eq!(idx.event(7).unwrap()["decision_id"], json!("d7"));
    assert_eq!(idx.location(7), format!("{}:8", f.display()));
    assert_eq!(idx.strings.get(idx.rows[7].path), "/p2");
    assert_eq!(idx.rows[3].outcome, Outcome::Error);
    assert_eq!(idx.rows[6].outcome, Outcome::Denied);
}

#[test]
fn filters_page_newest_first() {
    let d = dir("query");
    let (text, _) = log(0..120, GENESIS.into());
    let f = d.join("decisions.log");
    std::fs::write(&f, &text).unwrap();
    let idx = LogIndex::open(&[f]).unwrap();
    let (all, page) = idx.query(&Filter::default(), 0, 10);
    assert_eq!((all, page.len(), page[0]), (120, 10, 119));
    let (_, page2) = idx.query(&Filter::default(), 1, 10);
    assert_eq!(page2[0], 109);
    let denied = Filter {
        outcome: Some(Outcome::Denied),
        ..Filter::default()
    };
    assert_eq!(idx.query(&denied, 0, 1000).0, 20, "i % 6 == 0");
    let p = Filter {
        path: Some("P3".into()),
        identity: Some("(no identity)".into()),
        ..Filter::default()
    };
    let (n, rows) = idx.query(&p, 0, 1000);
    assert!(n > 0);
    assert!(rows.iter().all(|&i| i % 5 == 3 && i % 4 != 0));
    let rule = Filter {
        rule: Some("deny-writes".into()),
        ..Filter::default()
    };
    assert_eq!(idx.query(&rule, 0, 1000).0, 40);
    let window = Filter {
        from_ns: parse_ts("2026-11-26T10:00:10Z"),
        to_ns: parse_ts("2026-11-26T10:00:19Z"),
        ..Filter::default()
    };
    assert_eq!(idx.query(&window, 0, 1000).0, 10, "d10 to d19");
}

#[test]
fn follows_appends_and_rotation() {
    let d = dir("grow");
    let f = d.join("decisions.log");
    let (a, h) = log(0..10, GENESIS.into());
    std::fs::write(&f, &a).unwrap();
    let mut idx = LogIndex::follow(&f).unwrap();
    assert!(!idx.refresh().unwrap(), "nothing new");
    let (b, h2) = log(10..15, h);
    // Half a line first: not indexed until complete.
    let mut file = std::fs::OpenOptions::new().append(true).open(&f).unwrap();
    file.write_all(&b[..b.len() - 20]).unwrap();
    assert!(idx.refresh().unwrap());
    assert_eq!(idx.rows.len(), 14);
    assert!(matches!(
        idx.verdict().failure.map(|f| f.error),
        Some(LineError::Incomplete)
    ));
    file.write_all(&b[b.len() - 20..]).unwrap();
    assert!(idx.refresh().unwrap());
    assert_eq!(idx.rows.len(), 15);
    assert_eq!(idx.verdict().failure, None);
    // Rotation: decisions.log becomes decisions.log.1, a new file continues the chain.
    std::fs::rename(&f, d.join("decisions.log.1")).unwrap();
    let (c, _) = log(15..18, h2);
    std::fs::write(&f, &c).unwrap();
    assert!(idx.refresh().unwrap());
    assert_eq!(idx.rows.len(), 18);
    assert_eq!(idx.files().len(), 2);
    assert_eq!(idx.verdict().verified, 18);
    assert_eq!(idx.verdict().failure, None);
}

/// A writer killed mid-rotation leaves a gap in the numbers (`x.9` moved to `x.10`, `x.8` not
/// yet to `x.9`): every file present is read, in order, and the chain verifies across the gap.
#[test]
fn a_gap_in_the_rotated_numbers_loses_no_file() {
    let d = dir("gap");
    let f = d.join("decisions.log");
    let mut prev = GENESIS.to_string();
    // Oldest first: x.10, x.8, …, x.1, x; each file two events.
    let numbers = [
        Some(10),
        Some(8),
        Some(7),
        Some(6),
        Some(5),
        Some(4),
        Some(3),
        Some(2),
        Some(1),
        None,
    ];
    for (k, n) in numbers.iter().enumerate() {
        let (text, h) = log(2 * k..2 * k + 2, prev);
        prev = h;
        let p = n.map_or(f.clone(), |n| d.join(format!("decisions.log.{n}")));
        std::fs::write(&p, &text).unwrap();
    }
    // Not siblings: other suffixes, a leading zero, zero, a number past a gap longer than
    // the readers look (16 missing in a row after `x.10`).
    for other in [
        "decisions.log.27",
        "decisions.log.instance-id",
        "decisions.log.012",
        "decisions.log.0",
        "decisions.log.1x",
    ] {
        std::fs::write(d.join(other), "{}\n").unwrap();
    }
    let files = with_rotated(std::slice::from_ref(&f));
    let names: Vec<String> = files
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let want: Vec<String> = numbers
        .iter()
        .map(|n| {
            n.map_or("decisions.log".to_string(), |n| {
                format!("decisions.log.{n}")
            })
        })
        .collect();
    assert_eq!(names, want);
    let mut idx = LogIndex::follow(&f).unwrap();
    idx.refresh().unwrap();
    assert_eq!(idx.verdict().verified, 20, "{:?}", idx.verdict().failure);
    assert_eq!(idx.verdict().failure, None);
}

#[test]
fn a_tampered_event_is_found_where_verify_finds_it() {
    let d = dir("tamper");
    let f = d.join("decisions.log");
    let (text, _) = log(0..30, GENESIS.into());
    let tampered = String::from_utf8(text).unwrap().replacen(
        "\"decision_id\":\"d12\"",
        "\"decision_id\":\"dX2\"",
        1,
    );
    std::fs::write(&f, &tampered).unwrap();
    let idx = LogIndex::open(std::slice::from_ref(&f)).unwrap();
    let v = idx.verdict();
    let expected = chain::verify(vec![(
        f.display().to_string(),
        BufReader::new(File::open(&f).unwrap()),
    )])
    .unwrap();
    assert_eq!(v.failure, expected.failure);
    assert_eq!(v.verified, expected.events);
    assert_eq!(v.failure.unwrap().line, 13);
    assert_eq!(idx.rows.len(), 30, "every event is still shown");
}

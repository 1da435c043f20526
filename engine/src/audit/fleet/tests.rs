use serde_json::json;

use super::*;
use crate::audit::chain::{self, GENESIS, seal};
use crate::audit::index::Outcome;

fn event(instance: &str, i: usize) -> serde_json::Map<String, Json> {
    let allowed = !i.is_multiple_of(3);
    json!({
        "decision_id": format!("{instance}-d{i}"),
        "labels": {"id": instance},
        "timestamp": format!("2026-11-26T{:02}:{:02}:{:02}Z", (i / 3600) % 24, (i / 60) % 60, i % 60),
        "allowed": allowed,
        "reason": if allowed { "allowed" } else if i.is_multiple_of(2) { "policy_denied" } else { "timeout" },
        "identity": {"spiffe_id": format!("spiffe://td/ns/a/sa/s{}", i % 7)},
        "input": {"attributes": {"request": {"http": {"path": format!("/p{}", i % 5)}}}},
        "policy": "authz.rego",
        "rule": if allowed { "reads" } else { "deny-writes" },
        "metrics": {"timer_server_handler_ns": 1000 + i},
        "revision": "r1",
    })
    .as_object()
    .unwrap()
    .clone()
}

/// `n` sealed events of one instance, from its genesis.
fn chain_of(instance: &str, n: usize) -> Vec<Vec<u8>> {
    let mut prev = GENESIS.to_string();
    (0..n)
        .map(|i| {
            let (mut line, hash) = seal(event(instance, i), &prev);
            prev = hash;
            line.pop(); // the newline
            line
        })
        .collect()
}

/// Two instances' events interleaved, numbered from 1 as a stream numbers them.
fn interleaved(n: usize) -> Vec<(u64, Vec<u8>)> {
    let (a, b) = (chain_of("node-a", n), chain_of("node-b", n));
    a.into_iter()
        .zip(b)
        .flat_map(|(x, y)| [x, y])
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l))
        .collect()
}

/// Events of `chain` in the order `order` names them, numbered from 1 as a stream would.
fn in_order(chain: &[Vec<u8>], order: &[usize]) -> Vec<(u64, Vec<u8>)> {
    order
        .iter()
        .enumerate()
        .map(|(s, &i)| (s as u64 + 1, chain[i].clone()))
        .collect()
}

/// `msgs` indexed in batches of `batch`, keeping `window` rows.
fn indexed(msgs: &[(u64, Vec<u8>)], window: usize, batch: usize) -> FleetIndex {
    let mut idx = FleetIndex::new(window);
    for chunk in msgs.chunks(batch) {
        idx.add_batch(chunk.to_vec());
    }
    idx
}

fn summary_of(lines: &[(u64, Vec<u8>)]) -> Summary {
    let mut b = SummaryBuilder::default();
    for (_, l) in lines {
        b.add_line(l);
    }
    b.finish(10)
}

#[test]
fn counts_like_the_summary_and_checks_each_instances_chain() {
    let msgs = interleaved(300);
    let idx = indexed(&msgs, 1000, 97);
    // Below every bound, the bounded summary is the exact one.
    assert_eq!(idx.summary(10), summary_of(&msgs));
    assert_eq!(idx.rows().len(), 600);
    assert_eq!(idx.last_sequence(), 600);
    let a = &idx.instances()["node-a"];
    assert!(a.intact() && a.from_genesis(), "{a:?}");
    assert_eq!((a.events, a.verified, a.duplicates), (300, 300, 0));
    assert_eq!(a.allowed + a.denied, 300);
    assert_eq!(a.errors, 50, "timeouts (odd multiples of 3 below 300)");
    assert!(all_intact(&idx));
    // The filter is the file index's, plus the instance, named exactly.
    let f = Filter {
        instance: Some("node-b".into()),
        outcome: Some(Outcome::Denied),
        ..Filter::default()
    };
    let (n, page) = idx.query(&f, 0, 10);
    assert_eq!(n, 50);
    let newest = idx.rows()[page[0]];
    assert_eq!(idx.strings().get(newest.instance), "node-b");
    // node-b's event 294 (the last denied by policy: a multiple of 6) is message 2 × 294 + 2.
    assert_eq!(newest.at, At::Stream { sequence: 590 });
    assert_eq!(idx.find(590), Some(page[0]));
    let f = Filter {
        instance: Some("node".into()),
        ..Filter::default()
    };
    assert_eq!(idx.query(&f, 0, 10).0, 0, "no substring match on instances");
}

#[test]
fn copies_are_counted_once_and_late_events_are_linked_when_their_predecessor_comes() {
    let a = chain_of("node-a", 10);
    // The stream got 0 1 2 4 3 5 5 6 …: event 4 before 3 (a re-send after a lost ack), and
    // a copy of 5 past the duplicate window.
    let order = [0, 1, 2, 4, 3, 5, 5, 6, 7, 8, 9];
    let msgs = in_order(&a, &order);
    let mut idx = FleetIndex::new(100);
    idx.add_batch(msgs[..4].to_vec());
    let inst = &idx.instances()["node-a"];
    assert_eq!(inst.waiting(), 1, "event 4 waits for 3");
    assert_eq!(inst.first_waiting(), Some((4, "node-a-d4")));
    assert!(!inst.intact());
    idx.add_batch(msgs[4..].to_vec());
    let inst = &idx.instances()["node-a"];
    assert!(inst.intact(), "{inst:?}");
    assert_eq!((inst.events, inst.verified, inst.duplicates), (10, 10, 1));
    assert_eq!(idx.summary(10).events, 10, "the copy is not counted");
    assert_eq!(idx.messages(), 11);
}

#[test]
fn an_instances_first_events_out_of_order_still_make_one_chain() {
    let a = chain_of("node-a", 4);
    let mut idx = FleetIndex::new(100);
    // 1 0 2 3: the first event read is the second of the chain.
    let msgs = in_order(&a, &[1, 0, 2, 3]);
    idx.add_batch(msgs);
    let inst = &idx.instances()["node-a"];
    assert!(inst.intact() && inst.from_genesis(), "{inst:?}");
    assert_eq!((inst.events, inst.verified), (4, 4));
}

#[test]
fn an_instance_without_timestamps_has_no_last_time() {
    let mut e = event("node-a", 0);
    e.remove("timestamp");
    let (mut line, _) = seal(e, GENESIS);
    line.pop();
    let mut idx = FleetIndex::new(10);
    idx.add_batch(vec![(1, line)]);
    assert_eq!(idx.instances()["node-a"].last_time_ns, i64::MIN);
    let with_time = indexed(&interleaved(1), 10, 1);
    assert!(with_time.instances()["node-a"].last_time_ns > 0);
}

#[test]
fn a_missing_event_a_tampered_one_and_a_fork_are_problems() {
    let a = chain_of("node-a", 6);
    // Event 2 never arrives; the rest wait for it.
    let mut idx = FleetIndex::new(100);
    let msgs = in_order(&a, &[0, 1, 3, 4, 5]);
    idx.add_batch(msgs);
    let inst = &idx.instances()["node-a"];
    assert_eq!((inst.verified, inst.waiting()), (2, 3));
    assert!(!all_intact(&idx));

    // An edited event fails its own hash.
    let mut idx = FleetIndex::new(100);
    let mut edited = a[1].clone();
    let at = edited.windows(4).position(|w| w == b"true").unwrap();
    edited.splice(at..at + 4, b"fals".iter().copied());
    edited.insert(at + 4, b'e');
    idx.add_batch(vec![(1, a[0].clone()), (2, edited), (3, a[2].clone())]);
    let inst = &idx.instances()["node-a"];
    let p = inst.first_problem.as_ref().unwrap();
    assert_eq!((p.sequence, p.decision_id.as_str()), (2, "node-a-d1"));
    assert!(p.error.contains("hash"), "{}", p.error);

    // Two events after the same one: a second chain from a truncated file.
    let mut other = event("node-a", 99);
    other.insert("decision_id".into(), json!("other"));
    let first_hash = chain::check_line(&a[0]).unwrap().1;
    let (mut fork, _) = seal(other, &first_hash);
    fork.pop();
    let mut idx = FleetIndex::new(100);
    idx.add_batch(vec![
        (1, a[0].clone()),
        (2, a[1].clone()),
        (3, a[2].clone()),
        (4, fork),
    ]);
    let inst = &idx.instances()["node-a"];
    assert!(!inst.intact());
    assert_eq!(inst.waiting(), 0, "a fork is not waiting for anything");
    let p = inst.first_problem.as_ref().unwrap();
    assert_eq!((p.sequence, p.decision_id.as_str()), (4, "other"));
    assert!(p.error.contains("a fork"), "{}", p.error);
    // The chain goes on from its last event.
    idx.add_batch(vec![(5, a[3].clone())]);
    let inst = &idx.instances()["node-a"];
    assert_eq!((inst.verified, inst.problems), (4, 1));
}

#[test]
fn the_window_is_bounded_and_the_totals_keep_everything() {
    let msgs = interleaved(2000);
    let idx = indexed(&msgs, 500, 256);
    assert_eq!(idx.rows().len(), 500);
    assert_eq!(idx.folded(), 3500);
    assert_eq!(idx.summary(10), summary_of(&msgs));
    // The window holds the newest events.
    assert_eq!(idx.rows()[0].at, At::Stream { sequence: 3501 });
    assert_eq!(idx.find(3500), None);
    // Paths p0..p4 and seven identities: the strings stay few.
    assert!(idx.strings().len() < 64, "{}", idx.strings().len());
}

#[test]
fn strings_no_row_names_are_dropped() {
    // Every event a new path: the strings would grow with the stream.
    let mut prev = GENESIS.to_string();
    let mut idx = FleetIndex::new(100);
    for s in 0..20_000u64 {
        let mut e = event("node-a", s as usize);
        e.insert(
            "input".into(),
            json!({"attributes": {"request": {"http": {"path": format!("/u/{s}")}}}}),
        );
        let (mut line, hash) = seal(e, &prev);
        line.pop();
        prev = hash;
        idx.add_batch(vec![(s + 1, line)]);
    }
    assert!(
        idx.strings().len() < 100 * 5 * 2 + 4096 + 100,
        "{}",
        idx.strings().len()
    );
    let newest = *idx.rows().back().unwrap();
    assert_eq!(idx.strings().get(newest.path), "/u/19999");
    assert_eq!(idx.strings().get(newest.instance), "node-a");
    assert!(idx.instances()["node-a"].intact());
}

#[test]
fn saved_and_loaded_it_resumes_where_it_stopped() {
    let msgs = interleaved(400);
    let mut whole = FleetIndex::new(300);
    whole.add_batch(msgs.clone());

    let mut first = FleetIndex::new(300);
    first.add_batch(msgs[..333].to_vec());
    let saved = first.save();
    let mut resumed = FleetIndex::load(&saved, 300).unwrap();
    assert_eq!(resumed.last_sequence(), 333);
    // Delivered again after the restart: skipped, not counted twice.
    resumed.add_batch(msgs[300..].to_vec());
    assert_eq!(resumed.summary(10), whole.summary(10));
    assert_eq!(resumed.instances(), whole.instances());
    assert_eq!(resumed.rows(), whole.rows());
    assert!(all_intact(&resumed));

    assert!(FleetIndex::load(&saved[..20], 300).is_err());
    let e = FleetIndex::load(b"junk\n", 300).unwrap_err();
    assert!(e.contains("not a saved dashboard state"), "{e}");
    let mut other = saved.clone();
    other[8] = 9;
    let e = FleetIndex::load(&other, 300).unwrap_err();
    assert!(e.contains("version 9"), "{e}");
    // A smaller window folds the oldest rows.
    assert_eq!(FleetIndex::load(&saved, 10).unwrap().rows().len(), 10);
}

//! The CEL specification's simple conformance tests through arbiter's CEL setup. Fails when
//! fewer tests pass than the floor in `conformance/cel-floor.txt`, or when the committed
//! `conformance/cel-results.md` differs from this run's (`ARBITER_UPDATE_RESULTS=1` rewrites
//! it; a plain test run writes nothing).

use std::path::PathBuf;

use arbiter_conformance::cel_spec::{self, ENV, Outcome};

#[test]
fn cel_spec_suite() {
    let dir = arbiter_conformance::suite_dir(ENV, "cel-spec").unwrap_or_else(|e| panic!("{e}"));
    let (pool, files) =
        cel_spec::load(&dir).unwrap_or_else(|e| panic!("cannot load the CEL suite: {e}"));
    assert!(
        files.len() >= 25,
        "expected the suite's 30 files, found {}",
        files.len()
    );
    let results = cel_spec::run(&pool, &files);
    let passed = results
        .iter()
        .filter(|r| r.outcome == Outcome::Pass)
        .count();
    let total = results.len();
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let md = cel_spec::markdown(&results);
    let stale = arbiter_conformance::check_report("cel-results.md", "cel_conformance", &md);
    let floor: usize = std::fs::read_to_string(here.join("cel-floor.txt"))
        .expect("read cel-floor.txt")
        .trim()
        .parse()
        .expect("cel-floor.txt holds a number");
    println!("CEL conformance: {passed} of {total} tests pass, floor {floor}");
    assert!(
        passed >= floor,
        "CEL conformance fell below the floor: {passed} < {floor} (see conformance/cel-results.md)"
    );
    if let Err(e) = stale {
        panic!("{e}");
    }
}

#[test]
#[ignore = "diagnostic aid: prints failing tests of the files named in ARBITER_CEL_FILE"]
fn dump_cel_failures() {
    let dir = arbiter_conformance::suite_dir(ENV, "cel-spec").unwrap();
    let (pool, files) = cel_spec::load(&dir).unwrap();
    let wanted = std::env::var("ARBITER_CEL_FILE").unwrap_or_default();
    let files: Vec<_> = files
        .into_iter()
        .filter(|(n, _)| wanted.split(',').any(|w| w == n))
        .collect();
    for r in cel_spec::run(&pool, &files) {
        if let Outcome::Fail(why) = &r.outcome {
            println!(
                "{}/{}/{}: {}",
                r.file,
                r.section,
                r.name,
                why.chars().take(200).collect::<String>()
            );
        }
    }
}

//! OPA's Rego conformance suite through arbiter's engine. Fails when fewer cases pass than the
//! floor in `conformance/opa-floor.txt`, when arbiter does not beat regorus alone, or when the
//! committed `conformance/opa-results.md` differs from this run's (`ARBITER_UPDATE_RESULTS=1`
//! rewrites it; a plain test run writes nothing).

use std::path::PathBuf;

use arbiter_conformance::opa::{ENV, Report, load_cases};

#[test]
fn opa_conformance_suite() {
    let dir = match arbiter_conformance::suite_dir(ENV, "opa-cases") {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    let cases = match load_cases(&dir) {
        Ok(c) => c,
        Err(e) => panic!("cannot load the OPA suite: {e}"),
    };
    let total = cases.len();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let report = Report::run(cases, threads);
    let arbiter = Report::passes(&report.arbiter);
    let regorus = Report::passes(&report.regorus);

    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let md = report.markdown();
    let stale = arbiter_conformance::check_report("opa-results.md", "opa_conformance", &md);
    let floor: usize = std::fs::read_to_string(here.join("opa-floor.txt"))
        .expect("read opa-floor.txt")
        .trim()
        .parse()
        .expect("opa-floor.txt holds a number");

    println!(
        "OPA conformance: arbiter {arbiter}/{total}, regorus alone {regorus}/{total}, floor {floor}"
    );
    assert!(
        arbiter >= floor,
        "OPA conformance fell below the floor: {arbiter} passing, floor {floor} (see conformance/opa-results.md)"
    );
    assert!(
        arbiter > regorus,
        "arbiter ({arbiter}) should pass more OPA cases than regorus alone ({regorus})"
    );
    if let Err(e) = stale {
        panic!("{e}");
    }
}

#[test]
#[ignore = "diagnostic aid: prints failing cases of one folder (ARBITER_OPA_FOLDER)"]
fn dump_failures() {
    let dir = arbiter_conformance::suite_dir(ENV, "opa-cases").unwrap();
    let folder = std::env::var("ARBITER_OPA_FOLDER").unwrap_or_default();
    for c in load_cases(&dir).unwrap() {
        if !folder.is_empty() && !folder.split(',').any(|f| f == c.folder) {
            continue;
        }
        let o =
            arbiter_conformance::opa::run_case(arbiter_conformance::opa::Setup::Arbiter, &c.case);
        if let arbiter_conformance::opa::Outcome::Fail(why) = o {
            println!(
                "{} | want {:?} {:?} | {why}",
                c.case.note, c.case.want_error_code, c.case.want_error
            );
        }
    }
}

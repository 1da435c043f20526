//! OPA's Rego conformance suite through arbiter's engine. Fails when fewer cases pass than the
//! floor in `conformance/opa-floor.txt`, when arbiter does not beat regorus alone, or when the
//! committed `conformance/opa-results.md` differs from this run's (`ARBITER_UPDATE_RESULTS=1`
//! rewrites it; a plain test run writes nothing).

use std::path::PathBuf;

use arbiter_conformance::opa::{ENV, Report, load_cases};

/// OPA's suite, read from `../shared/conformance` (or `ARBITER_OPA_CASES`); a test helper,
/// so a suite that is missing fails the test.
#[allow(clippy::panic)]
fn suite() -> Vec<arbiter_conformance::opa::SuiteCase> {
    let dir = match arbiter_conformance::suite_dir(ENV, "opa-cases") {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    };
    match load_cases(&dir) {
        Ok(c) => c,
        Err(e) => panic!("cannot load the OPA suite: {e}"),
    }
}

#[test]
fn opa_conformance_suite() {
    let cases = suite();
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

/// Cases the VM answers as OPA does, at least (1,581 of the 1,593 it runs, 2026-12-06): a VM
/// that gave up on more cases would leave them to the interpreter and still pass the list.
const VM_AGREES_FLOOR: usize = 1_581;

/// The suite's `data.<path> = x` cases on the bytecode VM (RVM), which decides every served
/// request whose path it compiles; the test above runs them on the interpreter. Fails when the
/// VM answers a case otherwise than OPA and the case is not in `conformance/opa-vm-known.txt`,
/// when a listed case no longer disagrees (take it off the list), or when fewer cases than
/// the floor agree.
#[test]
fn the_vm_answers_as_opa_wherever_it_answers() {
    use arbiter_conformance::opa::{VmOutcome, run_all_on_vm};
    use std::collections::BTreeSet;

    let cases = suite();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let outcomes = run_all_on_vm(&cases, threads);

    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let listed =
        std::fs::read_to_string(here.join("opa-vm-known.txt")).expect("read opa-vm-known.txt");
    let known: BTreeSet<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();

    let mut agrees = 0;
    let mut on_interpreter = 0;
    let mut disagreeing = BTreeSet::new();
    let mut new = Vec::new();
    for (c, o) in cases.iter().zip(&outcomes) {
        match o {
            VmOutcome::Agrees => agrees += 1,
            VmOutcome::Interpreter => on_interpreter += 1,
            VmOutcome::NotApplicable => {}
            VmOutcome::Disagrees(why) => {
                let key = format!("{} | {}", c.case.note, c.case.query);
                if !known.contains(key.as_str()) {
                    new.push(format!("{key}: {why}"));
                }
                disagreeing.insert(key);
            }
        }
    }
    let fixed: Vec<&&str> = known
        .iter()
        .filter(|k| !disagreeing.contains(**k))
        .collect();
    println!(
        "OPA conformance on the VM: {agrees} agree, {} disagree ({} listed), {on_interpreter} left to the interpreter",
        disagreeing.len(),
        known.len()
    );
    assert!(
        new.is_empty(),
        "the VM answers these cases otherwise than OPA:\n{}",
        new.join("\n")
    );
    assert!(
        fixed.is_empty(),
        "listed in opa-vm-known.txt but no longer disagreeing (take them off): {fixed:?}"
    );
    assert!(
        agrees >= VM_AGREES_FLOOR,
        "{agrees} cases agree on the VM, floor {VM_AGREES_FLOOR}"
    );
}

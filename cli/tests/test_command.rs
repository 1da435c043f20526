//! `arbiter test` as a user runs it: verdicts, exit codes, output formats and coverage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/test")
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Run `arbiter test` in the fixtures folder.
fn arbiter_test(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .arg("test")
        .args(args)
        .current_dir(fixtures())
        .output()
        .expect("run arbiter")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", stdout(o), stderr(o)))
}

/// `# opa: VERDICT` comments before each test rule of the fixture: what `opa test` reports,
/// from OPA's documented behaviour.
fn expected_verdicts() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (file, package) in [
        ("verdicts/policy.rego", "data.verdicts"),
        ("verdicts/verdicts_test.rego", "data.verdicts_test"),
    ] {
        let text = std::fs::read_to_string(fixtures().join(file)).unwrap();
        let mut pending: Option<String> = None;
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("# opa: ") {
                pending = Some(v.trim().to_string());
                continue;
            }
            if let Some(v) = pending.take() {
                let name: String = line
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                let mut key = format!("{package}.{name}");
                let mut n = 1;
                while out.contains_key(&key) {
                    key = format!("{package}.{name}#{n:02}");
                    n += 1;
                }
                out.insert(key, v);
            }
        }
    }
    out
}

#[test]
fn verdicts_match_opa_test() {
    let expected = expected_verdicts();
    assert!(expected.len() >= 17, "{expected:?}");
    let o = arbiter_test(&["-f", "json", "verdicts"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let mut got = BTreeMap::new();
    for r in json(&o).as_array().unwrap() {
        let name = format!(
            "{}.{}",
            r["package"].as_str().unwrap(),
            r["name"].as_str().unwrap()
        );
        let verdict = if r["skip"] == true {
            "SKIPPED"
        } else if r["fail"] == true {
            "FAIL"
        } else if r.get("error").is_some() {
            "ERROR"
        } else {
            "PASS"
        };
        assert!(
            r["location"]["row"].as_u64().unwrap() > 0,
            "every result has a location: {r}"
        );
        got.insert(name, verdict.to_string());
    }
    assert_eq!(got, expected);
}

#[test]
fn failures_show_the_expression_and_both_values() {
    let o = arbiter_test(&["verdicts", "-r", "test_twice"]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(
        out.contains("data.verdicts_test.test_twice#01: FAIL"),
        "{out}"
    );
    assert!(
        out.contains("verdicts/verdicts_test.rego:83:5: `1 == 2` does not hold"),
        "{out}"
    );
    assert!(out.contains("expected: 2"), "{out}");
    assert!(out.contains("actual:   1"), "{out}");
    // Not verbose: the passing test is only counted.
    assert!(!out.contains("test_twice: PASS"), "{out}");
    assert!(out.contains("PASS: 1/2\nFAIL: 1/2\n"), "{out}");

    let o = arbiter_test(&["verdicts", "-r", "mock_does_not_leak"]);
    let out = stdout(&o);
    assert!(
        out.contains(
            "`verdicts.allow with input as {\"method\": \"GET\", \"user\": \"eve\"}` is false"
        ),
        "{out}"
    );

    let o = arbiter_test(&["-v", "verdicts", "-r", "test_true$"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("verdicts/verdicts_test.rego:\n"), "{out}");
    assert!(
        out.contains("data.verdicts_test.test_true: PASS ("),
        "{out}"
    );
}

#[test]
fn exit_codes() {
    // Load errors: 2, with file:line:col.
    let o = arbiter_test(&["broken"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("broken/broken_test.rego:5:1:"),
        "{}",
        stderr(&o)
    );
    // Skipped tests fail the run unless -z.
    assert_eq!(arbiter_test(&["skipped"]).status.code(), Some(1));
    assert_eq!(arbiter_test(&["-z", "skipped"]).status.code(), Some(0));
    assert_eq!(
        arbiter_test(&["--exit-zero-on-skipped", "skipped"])
            .status
            .code(),
        Some(0)
    );
    // No tests at all, or a filter that matches nothing: exit 0 as `opa test` (issue 25,
    // item 10), with a notice.
    let o = arbiter_test(&["none"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("no tests found"), "{}", stderr(&o));
    let o = arbiter_test(&["-r", "nothing-matches", "skipped"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stderr(&o).contains("matching --run"), "{}", stderr(&o));
    // Bad arguments: 2.
    assert_eq!(arbiter_test(&["-r", "(", "skipped"]).status.code(), Some(2));
    assert_eq!(
        arbiter_test(&["--timeout", "soon", "skipped"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(arbiter_test(&["missing-folder"]).status.code(), Some(2));
}

/// The coverage of OPA's own documented examples (`cmd/test_test.go`,
/// `TestCoverageThreshold`): 40.00 for one file, 33.33 for three, with the same lines.
#[test]
fn coverage_matches_opa_examples() {
    let o = arbiter_test(&["--coverage", "-f", "json", "coverage/opa-single"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c = json(&o);
    assert_eq!(
        c["coverage"],
        serde_json::json!(40),
        "OPA writes 40, not 40.0"
    );
    let f = &c["files"]["coverage/opa-single/test.rego"];
    assert_eq!(
        f["not_covered"],
        serde_json::json!([
            {"start": {"row": 3}, "end": {"row": 4}},
            {"start": {"row": 7}, "end": {"row": 7}}
        ])
    );
    assert_eq!(
        (f["covered_lines"].as_u64(), f["not_covered_lines"].as_u64()),
        (Some(2), Some(3))
    );
    assert_eq!(c["tests"][0]["name"], "test_q");

    let o = arbiter_test(&[
        "--coverage",
        "--threshold",
        "100",
        "-v",
        "coverage/opa-single",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Code coverage threshold not met: got 40.00 instead of 100.00\nLines not covered:\n\tcoverage/opa-single/test.rego:3-4\n\tcoverage/opa-single/test.rego:7\n"
    );
    let o = arbiter_test(&["--coverage", "--threshold", "40", "coverage/opa-single"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    let o = arbiter_test(&[
        "--coverage",
        "--threshold",
        "100",
        "-v",
        "coverage/opa-multi",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "Code coverage threshold not met: got 33.33 instead of 100.00\nLines not covered:\n\tcoverage/opa-multi/policy1.rego:3-4\n\tcoverage/opa-multi/policy1.rego:7\n\tcoverage/opa-multi/policy2.rego:3-5\n\tcoverage/opa-multi/policy2.rego:8-9\n"
    );
}

/// A fixture counted by hand (see the comments): rule values and body expressions are
/// lines; a line is covered when a test evaluated it.
#[test]
fn coverage_matches_a_hand_count() {
    // hand.rego, with input {"score": 90}:
    //   4  grade := "high" if {   value evaluated          covered
    //   5    input.score > 80     true                     covered
    //   8  grade := "low" if {    body failed, no value    not covered
    //   9    input.score <= 80    evaluated (false)        covered
    //  12  bonus := amount if {   never referenced         not covered
    //  13    input.score > 95                              not covered
    //  14    amount := ...                                 not covered
    //  17  unused := 7                                     not covered
    // → 3 of 8 lines, 37.5%. hand_test.rego: line 3, 1 of 1. Overall 4 of 9, 44.44%.
    let o = arbiter_test(&["--coverage", "-f", "json", "coverage/hand"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let c = json(&o);
    let f = &c["files"]["coverage/hand/hand.rego"];
    assert_eq!(
        f["covered"],
        serde_json::json!([
            {"start": {"row": 4}, "end": {"row": 5}},
            {"start": {"row": 9}, "end": {"row": 9}}
        ])
    );
    assert_eq!(
        f["not_covered"],
        serde_json::json!([
            {"start": {"row": 8}, "end": {"row": 8}},
            {"start": {"row": 12}, "end": {"row": 14}},
            {"start": {"row": 17}, "end": {"row": 17}}
        ])
    );
    assert_eq!(f["coverage"], serde_json::json!(37.5));
    assert_eq!(
        c["files"]["coverage/hand/hand_test.rego"]["coverage"],
        serde_json::json!(100)
    );
    assert_eq!(c["coverage"], serde_json::json!(44.44));

    let o = arbiter_test(&["--coverage", "coverage/hand"]);
    let out = stdout(&o);
    assert!(
        out.contains("coverage/hand/hand.rego        37.50%     3/8     not covered: 8, 12-14, 17"),
        "{out}"
    );
}

#[test]
fn junit_is_valid_xml_with_the_counts() {
    let o = arbiter_test(&["-f", "junit", "verdicts", "skipped"]);
    assert_eq!(o.status.code(), Some(1));
    let text = stdout(&o);
    let doc = roxmltree::Document::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "testsuites");
    assert_eq!(root.attribute("tests"), Some("19"));
    assert_eq!(root.attribute("failures"), Some("7"));
    assert_eq!(root.attribute("errors"), Some("0"));
    assert_eq!(root.attribute("skipped"), Some("2"));
    let suites: Vec<_> = root
        .children()
        .filter(|n| n.has_tag_name("testsuite"))
        .collect();
    assert_eq!(suites.len(), 3);
    let cases: Vec<_> = doc
        .descendants()
        .filter(|n| n.has_tag_name("testcase"))
        .collect();
    assert_eq!(cases.len(), 19);
    let failing = cases
        .iter()
        .find(|c| c.attribute("name") == Some("test_twice#01"))
        .unwrap();
    assert_eq!(failing.attribute("classname"), Some("data.verdicts_test"));
    let failure = failing
        .children()
        .find(|n| n.has_tag_name("failure"))
        .unwrap();
    assert_eq!(failure.attribute("message"), Some("`1 == 2` does not hold"));
    assert!(failure.text().unwrap().contains("expected: 2"));
    // Quotes and brackets in names and messages are escaped, not breaking the document.
    assert!(text.contains("&quot;"), "{text}");
}

#[test]
fn bench_reports_ns_per_op() {
    let o = arbiter_test(&["--bench", "--benchtime", "20ms", "skipped"]);
    let out = stdout(&o);
    let line = out
        .lines()
        .find(|l| l.starts_with("data.s_test.test_ok"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(line.ends_with(" ns/op"), "{line}");
    let fields: Vec<&str> = line.split_whitespace().collect();
    let n: u64 = fields[1].parse().unwrap();
    let ns: f64 = fields[2].parse().unwrap();
    assert!(n >= 10 && ns > 0.0, "{line}");
}

#[test]
fn the_bundled_policies_pass_their_own_tests() {
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["test", "-f", "json", "policies"])
        .current_dir(repo())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let results = json(&o);
    let kinds: Vec<&str> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["kind"].as_str().unwrap())
        .collect();
    assert!(
        kinds.iter().filter(|k| **k == "rego").count() >= 10,
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| **k == "decision").count() >= 10,
        "{kinds:?}"
    );
}

/// Issue 17: `arbiter test` gives every test the verdict real `opa test` 1.7.1 gave it
/// (`conformance/opa-tests/expected.json`, recorded by `conformance/opa-tests/record.sh`): a
/// corpus with `with` on data, functions and built-ins, failures, a conflict error, built-in
/// errors (a failure in OPA, not an error), a `todo_` test and a test of two bodies; and the
/// bundled Envoy policy's tests loaded with OPA's `prefix:path` data syntax and without it.
#[test]
fn verdicts_equal_opa_test() {
    let expected: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("conformance/opa-tests/expected.json")).unwrap(),
    )
    .unwrap();
    for set in expected["sets"].as_array().unwrap() {
        let paths: Vec<&str> = set["paths"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap())
            .collect();
        let out = Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .args(["test", "-f", "json"])
            .args(&paths)
            .current_dir(repo())
            .output()
            .unwrap();
        let results: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{paths:?}: {e}: {}", stderr(&out)));
        let mut verdicts = BTreeMap::new();
        for t in results.as_array().unwrap() {
            let v = if t.get("fail").is_some() {
                "fail"
            } else if t.get("error").is_some() {
                "error"
            } else if t.get("skip").is_some() {
                "skip"
            } else {
                "pass"
            };
            verdicts.insert(
                format!(
                    "{}.{}",
                    t["package"].as_str().unwrap(),
                    t["name"].as_str().unwrap()
                ),
                serde_json::Value::from(v),
            );
        }
        let want: BTreeMap<String, serde_json::Value> =
            serde_json::from_value(set["verdicts"].clone()).unwrap();
        assert_eq!(verdicts, want, "{paths:?}");
        assert_eq!(
            i64::from(out.status.code().unwrap()),
            set["exit_code"].as_i64().unwrap(),
            "{paths:?}: exit status"
        );
    }
}

/// Decision tests of gRPC calls: the file's `proto_descriptor` (relative to the file) decodes
/// each case's `grpc` message as `serve --proto-descriptor` decodes a real call's body, so the
/// policy reads the message's fields in `parsed_body`.
/// CEL policies read a decoded gRPC message as `input.parsed_body`, in the protobuf JSON
/// mapping: `kind` is the enum's name, and `count`, an `int64`, a string (`int()` reads it).
#[test]
fn cel_policies_read_the_decoded_grpc_message() {
    let dir = std::env::temp_dir().join(format!("arbiter-test-grpc-cel-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("protos")).unwrap();
    arbiter_conformance::grpc_body::write_descriptor_set(&dir.join("protos/greeter.pb")).unwrap();
    std::fs::write(
        dir.join("greeter.cel.yaml"),
        "name: greeter
rules:
  - name: small-user-calls
    effect: allow
    when: >
      input.parsed_body.kind == \"USER\" && int(input.parsed_body.count) < 5 &&
      input.parsed_body.userName.startsWith(\"a\")
",
    )
    .unwrap();
    std::fs::write(
        dir.join("greeter_test.yaml"),
        "proto_descriptor: protos/greeter.pb
request: {path: /arbiter.test.Greeter/Hello}
cases:
  - name: ann, three
    request: {grpc: {userName: ann, kind: USER, count: 3}}
    expect: {allowed: true, rule: small-user-calls}
  - name: ann, nine
    request: {grpc: {userName: ann, kind: USER, count: 9}}
    expect: {allowed: false}
  - name: ann as an admin
    request: {grpc: {userName: ann, kind: ADMIN, count: 1}}
    expect: {allowed: false}
  - name: bob
    request: {grpc: {userName: bob, kind: USER, count: 1}}
    expect: {allowed: false}
",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["test", "-v"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("PASS: 4/4"), "{}", stdout(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decision_tests_send_grpc_messages() {
    let dir = std::env::temp_dir().join(format!("arbiter-test-grpc-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("protos")).unwrap();
    arbiter_conformance::grpc_body::write_descriptor_set(&dir.join("protos/greeter.pb")).unwrap();
    std::fs::copy(
        arbiter_conformance::grpc_body::fixtures().join("policy.rego"),
        dir.join("policy.rego"),
    )
    .unwrap();
    let cases = "proto_descriptor: protos/greeter.pb
request: {path: /arbiter.test.Greeter/Hello}
cases:
  - name: ann as a user
    request: {grpc: {userName: ann, kind: USER, count: 3}}
    expect: {allowed: true}
  - name: ann as an admin
    request: {grpc: {userName: ann, kind: ADMIN}}
    expect: {allowed: false, reason: policy_denied}
  - name: a stream of ann's messages
    request:
      path: /arbiter.test.Greeter/Upload
      grpc: {userName: ann}
    expect: {allowed: true}
";
    std::fs::write(dir.join("greeter_test.yaml"), cases).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_arbiter"))
            .arg("test")
            .args(args)
            .arg(&dir)
            .output()
            .unwrap()
    };
    let o = run(&["-v"]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("PASS: 3/3"), "{}", stdout(&o));

    // A case whose policy would read the message must fail when the message says otherwise:
    // the expectation flipped is a failure, not a pass.
    std::fs::write(
        dir.join("greeter_test.yaml"),
        cases.replace(
            "expect: {allowed: false, reason: policy_denied}",
            "expect: {allowed: true}",
        ),
    )
    .unwrap();
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    assert!(stdout(&o).contains("ann as an admin"), "{}", stdout(&o));

    // A message that is not the method's input type, and a `grpc` without a descriptor set,
    // are load errors naming the case.
    std::fs::write(
        dir.join("greeter_test.yaml"),
        cases.replace("count: 3", "count: lots"),
    )
    .unwrap();
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    let err = stderr(&o) + &stdout(&o);
    assert!(
        err.contains("case `ann as a user`")
            && err.contains("not a valid arbiter.test.HelloRequest"),
        "{err}"
    );
    std::fs::write(
        dir.join("greeter_test.yaml"),
        cases.replace("proto_descriptor: protos/greeter.pb\n", ""),
    )
    .unwrap();
    let o = run(&[]);
    assert_eq!(o.status.code(), Some(2), "{}{}", stdout(&o), stderr(&o));
    assert!(
        (stderr(&o) + &stdout(&o)).contains("`grpc` needs the file's `proto_descriptor`"),
        "{}",
        stderr(&o)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

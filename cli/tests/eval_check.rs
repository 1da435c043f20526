//! `arbiter eval` and `arbiter check` as a user runs them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run arbiter")
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// What `opa eval -f json -d policies -i policies/inputs/frontend-get-products.json
/// data.envoy.authz.allow` prints: one result with one expression whose value is `true`
/// (OPA's documented output shape; `text` and `location` describe the query).
#[test]
fn eval_bundled_policy_matches_opa_shape() {
    let out = arbiter(&[
        "eval",
        "-f",
        "json",
        "-d",
        "policies",
        "-i",
        "policies/inputs/frontend-get-products.json",
        "data.envoy.authz.allow",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        json(&out),
        serde_json::json!({
            "result": [{
                "expressions": [{
                    "value": true,
                    "text": "data.envoy.authz.allow",
                    "location": {"row": 1, "col": 1}
                }]
            }]
        })
    );
}

#[test]
fn eval_bindings_and_undefined() {
    let out = arbiter(&[
        "eval",
        "-d",
        "policies",
        "x := data.authz.roles[\"order-writer\"][0].methods",
    ]);
    assert!(out.status.success());
    let v = json(&out);
    assert_eq!(
        v["result"][0]["bindings"]["x"],
        serde_json::json!(["GET", "POST"])
    );
    assert_eq!(v["result"][0]["expressions"][0]["value"], true);

    // Undefined prints `{}`; with --fail the exit status is 1.
    let out = arbiter(&["eval", "-d", "policies", "data.envoy.authz.nope"]);
    assert!(out.status.success());
    assert_eq!(json(&out), serde_json::json!({}));
    let out = arbiter(&["eval", "--fail", "-d", "policies", "data.envoy.authz.nope"]);
    assert_eq!(out.status.code(), Some(1));

    // The denied case: no identity, no token, so `allow` is false (defined).
    let out = arbiter(&[
        "eval",
        "-f",
        "raw",
        "-d",
        "policies",
        "data.envoy.authz.allow",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "false");
}

/// As `opa eval`: a built-in error makes its expression undefined unless
/// `--strict-builtin-errors` is given (recorded from OPA 1.7.1: `opa eval -f json '1/0'` prints
/// `{}` and exits 0). Integers beyond 64 bits print with every digit.
#[test]
fn eval_builtin_errors_and_big_numbers_as_opa() {
    let out = arbiter(&["eval", "-f", "json", "1/0"]);
    assert!(out.status.success());
    assert_eq!(json(&out), serde_json::json!({}));
    let out = arbiter(&["eval", "-f", "json", "--strict-builtin-errors", "1/0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["errors"][0]["message"], "div: divide by zero");
    let out = arbiter(&["eval", "-f", "json", "x := 37037036703703703670"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("\"x\": 37037036703703703670"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// An empty folder of this test process's own under the system's temporary folder.
fn fresh_dir(name: &str) -> arbiter_engine::scratch::ScratchDir {
    arbiter_engine::scratch::ScratchDir::new(&format!("arbiter-cli-{name}-{}", std::process::id()))
}

fn broken_policy_dir(name: &str) -> arbiter_engine::scratch::ScratchDir {
    let dir = fresh_dir(name);
    std::fs::write(
        dir.join("broken.rego"),
        "package broken\n\nallow if {\n    input.user ==\n}\n",
    )
    .unwrap();
    dir
}

#[test]
fn check_reports_file_line_col_and_exits_1() {
    let dir = broken_policy_dir("check");
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = dir.join("broken.rego");
    let expected = format!("{}:5:1: expecting expression", file.display());
    assert!(stderr.contains(&expected), "stderr: {stderr}");

    let out = arbiter(&["check", "policies"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A decision path that cannot run on the bytecode VM is a warning naming the rule's place and
/// the reason (issue 18: the fallback to the interpreter is never silent); `--strict` fails.
#[test]
fn check_warns_when_the_decision_path_is_off_the_vm() {
    let dir = fresh_dir("offvm");
    let file = dir.join("p.rego");
    std::fs::write(
        &file,
        "package envoy.authz\n\ndefault allow := false\n\nallow if {\n\tok with input.x as 1\n}\n\nok if input.x == 1\n",
    )
    .unwrap();
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let want = format!(
        "{}:6:5: warning: data.envoy.authz.allow runs on the interpreter, not the bytecode VM",
        file.display()
    );
    assert!(stderr.contains(&want), "stderr: {stderr}");
    assert!(stderr.contains("`with`"), "stderr: {stderr}");
    let out = arbiter(&["check", "--strict", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    // Another decision path that the policies do not define: nothing to say.
    let out = arbiter(&["check", "--path", "other/allow", dir.to_str().unwrap()]);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The bundled policies run on the VM: no warning.
    let out = arbiter(&["check", "--strict", "policies"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The load limits are flags of every command that loads policies, named as in `limits:` of
/// the config (issue 18 item 7): a refusal names the limit and how to raise it.
#[test]
fn check_refuses_past_a_load_limit_and_says_how_to_raise_it() {
    let dir = fresh_dir("loadlimits");
    std::fs::write(
        dir.join("p.rego"),
        "package p\n\nallow if input.x in data.xs\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("data.json"),
        format!("{{\"xs\": [{}]}}", "1,".repeat(999) + "1"),
    )
    .unwrap();
    let len = std::fs::metadata(dir.join("data.json")).unwrap().len();
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = arbiter(&[
        "check",
        "--max-data-file-bytes",
        "1KiB",
        dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}: file is {len} bytes, over the limit of 1024 bytes for data files (raise it with \
         --max-data-file-bytes or `limits: {{max_data_file_bytes: …}}` in the config)",
        dir.join("data.json").display()
    );
    assert!(stderr.contains(&want), "stderr: {stderr}");
    let out = arbiter(&["check", "--max-modules", "0", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 policy file, over the limit of 0 (raise it with --max-modules"),
        "stderr: {stderr}"
    );
    // The same limit from `eval`.
    let out = arbiter(&[
        "eval",
        "--max-data-file-bytes",
        "1KiB",
        "-d",
        dir.to_str().unwrap(),
        "data.p.allow",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn eval_errors_use_opa_error_shape() {
    let dir = broken_policy_dir("eval");
    let out = arbiter(&["eval", "-d", dir.to_str().unwrap(), "data.broken.allow"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json(&out);
    let e = &v["errors"][0];
    assert_eq!(e["code"], "rego_parse_error");
    assert_eq!(e["message"], "expecting expression");
    assert_eq!(e["location"]["row"], 5);
    assert_eq!(e["location"]["col"], 1);
    assert!(
        Path::new(e["location"]["file"].as_str().unwrap()).ends_with("broken.rego"),
        "{e}"
    );

    // An evaluation error (a conflict) is reported the same way.
    std::fs::write(
        dir.join("broken.rego"),
        "package broken\n\nx := input.a\nx := input.b\n",
    )
    .unwrap();
    let input = dir.join("input.json");
    std::fs::write(&input, r#"{"a": 1, "b": 2}"#).unwrap();
    let out = arbiter(&[
        "eval",
        "-d",
        dir.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "data.broken.x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json(&out)["errors"][0]["code"], "eval_conflict_error");
}

/// CEL policies are type-checked at load (issue 19): a misspelled attribute, a comparison of
/// a string with an int and a call no overload accepts are three errors, each with the line and
/// column of the sub-expression, and exit 1; the same rules written right check clean.
#[test]
fn check_type_checks_cel_policies() {
    let dir = fresh_dir("celtypes");
    let file = dir.join("typos.cel.yaml");
    let policy = |when: [&str; 3]| {
        format!(
            "name: typos\nrules:\n  - name: admin-path\n    effect: allow\n    when: {}\n  - name: by-method\n    effect: allow\n    when: '{}'\n  - name: prefix\n    effect: deny\n    when: {}\n",
            when[0], when[1], when[2]
        )
    };
    std::fs::write(
        &file,
        policy([
            "request.pth.startsWith(\"/admin\")",
            "request.method == 42",
            "request.url_path.startsWith(1)",
        ]),
    )
    .unwrap();
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let f = file.display();
    for expected in [
        format!("{f}:5:18: `request` has no attribute `pth` (it has: method, path,"),
        format!(
            "{f}:8:27: type error: found no matching overload for '_==_' applied to '(string, int)'"
        ),
        format!(
            "{f}:11:38: type error: found no matching overload for 'startsWith' applied to 'string.(int)'"
        ),
    ] {
        assert!(
            stderr.contains(&expected),
            "want {expected}\nstderr: {stderr}"
        );
    }
    assert_eq!(stderr.lines().count(), 3, "stderr: {stderr}");

    std::fs::write(
        &file,
        policy([
            "request.path.startsWith(\"/admin\")",
            "request.method == \"GET\"",
            "request.url_path.startsWith(\"/x\")",
        ]),
    )
    .unwrap();
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Istio AuthorizationPolicies: Istio's own validation rules are errors with file and line,
/// its best-practice advice is a warning (exit 0, or 1 with `--strict`), and the table of
/// documentation cases checks clean.
#[test]
fn check_validates_istio_policies() {
    let dir = fresh_dir("istio");
    let bad = dir.join("bad.istio.yaml");
    std::fs::write(
        &bad,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad\n  namespace: foo\nspec:\n  rules:\n  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/a/sa/b\"]\n        namespace: [\"x\"]\n",
    )
    .unwrap();
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:11:9: `bad`: spec.rules[0].from[0].source: unknown field `namespace`",
            bad.display()
        )),
        "stderr: {stderr}"
    );
    std::fs::write(
        &bad,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bad\n  namespace: foo\nspec:\n  rules:\n  - from:\n    - source:\n        principals: [\"spiffe://cluster.local/ns/a/sa/b\"]\n",
    )
    .unwrap();
    let stderr =
        String::from_utf8_lossy(&arbiter(&["check", dir.to_str().unwrap()]).stderr).into_owned();
    assert!(
        stderr.contains(
            "principal `spiffe://cluster.local/ns/a/sa/b` must not start with `spiffe://`"
        ),
        "stderr: {stderr}"
    );
    // Only negative matching in an ALLOW rule: a warning.
    std::fs::write(
        &bad,
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: lax\n  namespace: foo\nspec:\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        notPaths: [\"/admin\"]\n",
    )
    .unwrap();
    let out = arbiter(&["check", dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stderr: {stderr}");
    assert!(
        stderr.contains(&format!(
            "{}:4: warning: `foo/lax` rule 0: an ALLOW rule with only `not…` fields",
            bad.display()
        )),
        "stderr: {stderr}"
    );
    let out = arbiter(&["check", "--strict", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let _ = std::fs::remove_dir_all(&dir);

    let out = arbiter(&["check", "conformance/cases/istio"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The JWT scenario's RequestAuthentication is skipped with a note.
    assert!(String::from_utf8_lossy(&out.stderr).contains("`RequestAuthentication` `jwt-example`"));
}

/// `arbiter test` runs decision tests against Istio policies like any other.
#[test]
fn test_runs_decision_tests_against_istio_policies() {
    let out = arbiter(&["test", "conformance/cases/istio/02-authz-deny"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("PASS: 6/6"), "{stdout}");
}

/// A typo in `serve --config` stops the server before it listens: exit 2, with the key, the
/// file, its line and column (a security configuration must not ignore a key it does not know).
#[test]
fn serve_refuses_a_misspelled_config_key() {
    let dir = std::env::temp_dir().join(format!("arbiter-cfg-typo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("arbiter.yaml");
    std::fs::write(
        &file,
        "grpc-addr: 127.0.0.1:0\nhttp-addr: 127.0.0.1:0\ndecison-log: /tmp/x.log\n",
    )
    .unwrap();
    let out = arbiter(&["serve", "--config", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    let want = format!(
        "arbiter: {}:3:1: unknown field `decison-log`, expected one of",
        file.display()
    );
    assert!(stderr.starts_with(&want), "stderr: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `opa eval`'s other habits (issue 25, item 10): `-f values`, `-f bindings`, `-b`, `-t rego`,
/// `--timeout`, `--metrics`. The expected texts are what OPA-Envoy 1.7.1 printed for the same
/// command lines (`~/.cache/arbiter-ref/opa eval …`, 2026-12-03).
#[test]
fn eval_values_bindings_bundles_and_metrics_as_opa() {
    let out = |args: &[&str]| {
        let o = arbiter(args);
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    let q = "x := [1,2][_]; y := x * 10";
    assert_eq!(
        out(&["eval", "-f", "values", q]),
        "[\n  true,\n  true\n]\n[\n  true,\n  true\n]\n"
    );
    assert_eq!(
        out(&["eval", "-f", "bindings", q]),
        "{\n  \"x\": 1,\n  \"y\": 10\n}\n{\n  \"x\": 2,\n  \"y\": 20\n}\n"
    );
    assert_eq!(out(&["eval", "-f", "bindings", "1 == 1"]), "{}\n");
    assert_eq!(out(&["eval", "-f", "values", "x := 1; x > 5"]), "");
    let bundle = repo().join("conformance/fixtures/opa-bundles/opa-plain.tar.gz");
    assert_eq!(
        out(&[
            "eval",
            "-t",
            "rego",
            "-b",
            bundle.to_str().unwrap(),
            "-f",
            "values",
            "data.envoy.authz.allow",
        ]),
        "[\n  false\n]\n"
    );
    let with_metrics: serde_json::Value =
        serde_json::from_str(&out(&["eval", "--metrics", "--timeout", "5s", "true"])).unwrap();
    assert_eq!(with_metrics["result"][0]["expressions"][0]["value"], true);
    assert!(with_metrics["metrics"]["timer_rego_query_eval_ns"].is_u64());
    // --coverage adds OPA's coverage report: the body lines evaluated and not (OPA also counts
    // the rule heads, rows 3 and 7 here; regorus does not).
    let dir = std::env::temp_dir().join(format!("arbiter-eval-cov-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let policy = dir.join("p.rego");
    std::fs::write(
        &policy,
        "package p\n\nallow if {\n  input.x == 1\n}\n\ndeny if {\n  input.x == 2\n}\n",
    )
    .unwrap();
    let input = dir.join("input.json");
    std::fs::write(&input, r#"{"x": 1}"#).unwrap();
    let covered: serde_json::Value = serde_json::from_str(&out(&[
        "eval",
        "--coverage",
        "-d",
        policy.to_str().unwrap(),
        "-i",
        input.to_str().unwrap(),
        "data.p.allow",
    ]))
    .unwrap();
    let f = &covered["coverage"]["files"][policy.to_str().unwrap()];
    assert_eq!(
        f["covered"],
        serde_json::json!([{"start": {"row": 4}, "end": {"row": 4}}]),
        "{covered}"
    );
    assert_eq!(
        f["not_covered"],
        serde_json::json!([{"start": {"row": 8}, "end": {"row": 8}}])
    );
    assert_eq!(covered["coverage"]["coverage"], serde_json::json!(50));
    let (policy_for_package, input_for_package) = (policy.clone(), input.clone());
    // --package: the query's bare names are that package's rules (OPA printed the same).
    assert_eq!(
        out(&[
            "eval",
            "--package",
            "p",
            "-d",
            policy_for_package.to_str().unwrap(),
            "-i",
            input_for_package.to_str().unwrap(),
            "-f",
            "values",
            "allow; not deny; x := input.x",
        ]),
        "[\n  true,\n  true,\n  true\n]\n"
    );
    let _ = std::fs::remove_dir_all(dir);
    // A target arbiter does not have is refused.
    assert_eq!(
        arbiter(&["eval", "-t", "wasm", "true"]).status.code(),
        Some(2)
    );
}

/// `arbiter eval … | head`: when the reader goes away, eval ends quietly with status 0 (as
/// `opa eval`), it does not panic on the closed pipe.
#[test]
fn eval_stops_quietly_when_the_reader_goes() {
    use std::io::Read as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(["eval", "numbers.range(1, 300000)"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The pipe is closed here (stdout dropped) while eval still writes megabytes.
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");
}

/// `arbiter bench` as `opa bench` reports: samples, time and allocations per operation, the
/// allocations counted (in a pass of their own, apart from the timed one) and the same in every
/// run of one benchmark — a decision allocates as much each time.
#[test]
fn bench_reports_time_and_allocations_per_operation() {
    let out = arbiter(&[
        "bench",
        "-d",
        "policies/envoy/authz.rego",
        "-d",
        "policies/authz/data.json",
        "-i",
        "policies/inputs/frontend-get-products.json",
        "--decision",
        "--benchtime",
        "50ms",
        "--count",
        "2",
        "-f",
        "json",
        "data.envoy.authz.allow",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = json(&out);
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for r in runs {
        assert!(r["samples"].as_u64().unwrap() >= 10, "{r}");
        assert!(r["ns_per_op"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["p50_ns"].as_u64() <= r["p99_ns"].as_u64(), "{r}");
        let allocs = r["allocs_per_op"].as_f64().unwrap();
        assert!(allocs >= 10.0, "a decision allocates: {r}");
        assert!(r["bytes_per_op"].as_f64().unwrap() > allocs, "{r}");
    }
    let allocs = |i: usize| runs[i]["allocs_per_op"].as_f64().unwrap();
    assert!(
        (allocs(0) - allocs(1)).abs() < 1.0,
        "the same allocations per decision in both runs: {runs:?}"
    );
}

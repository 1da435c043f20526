//! `arbiter istio diff`: its answers for a change that looks harmless, the counterexample
//! replayed as decision tests by `arbiter test` (the decision path `serve` takes) under both
//! sets, and the CI gate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value as Json, json};

mod common;

fn arbiter(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_arbiter"))
        .args(args)
        .output()
        .unwrap()
}

const POLICY: &str = "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: orders
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  action: ALLOW
  rules:
  - from:
    - source:
        SOURCE
    to:
    - operation:
        methods: [GET]
        paths: [PATHS]
";

fn folder(dir: &Path, name: &str, source: &str, paths: &str) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let text = POLICY.replace("SOURCE", source).replace("PATHS", paths);
    std::fs::write(d.join("orders.yaml"), text).unwrap();
    d
}

fn diff(old: &Path, new: &Path, extra: &[&str]) -> (Option<i32>, Json) {
    let mut args = vec![
        "istio",
        "diff",
        "-f",
        "json",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = arbiter(&args);
    let text = String::from_utf8(out.stdout).unwrap();
    let j = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), j)
}

/// Run one case as a decision test of `folder` with `arbiter test`.
fn replay(folder: &Path, case: &Json) -> Output {
    let file = folder.join("diff_test.yaml");
    std::fs::write(
        &file,
        serde_json::to_string(&json!({"cases": [case]})).unwrap(),
    )
    .unwrap();
    let out = arbiter(&["test", folder.to_str().unwrap(), "-v"]);
    std::fs::remove_file(&file).unwrap();
    out
}

#[test]
fn a_change_that_looks_harmless_opens_access_and_the_counterexample_replays() {
    let dir = common::tmp("istio-diff", "harmless");
    // Before: the frontend may read orders. After: "any workload of the shop namespace, and
    // paths written as a prefix" — which also opens `/api/orders-admin`.
    let old = folder(
        &dir,
        "old",
        "principals: [cluster.local/ns/shop/sa/frontend]",
        "/api/orders/*",
    );
    let new = folder(&dir, "new", "namespaces: [shop]", "/api/orders*");
    let (code, d) = diff(&old, &new, &[]);
    assert_eq!(code, Some(0), "{d:#}");
    assert_eq!(d["new_access"]["answer"], "found", "{d:#}");
    assert_eq!(d["new_denials"]["answer"], "none", "{d:#}");
    let found = &d["new_access"];
    assert_eq!(found["old"]["allowed"], false);
    assert_eq!(found["new"]["allowed"], true);
    assert_eq!(found["new"]["policy"], "shop/orders");
    // The counterexample, decided by `arbiter test` under each set as the diff says.
    for (folder, case) in [
        (&new, &found["test_case_new"]),
        (&old, &found["test_case_old"]),
    ] {
        let out = replay(folder, case);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{case:#}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("PASS"),
            "{case:#}"
        );
    }
    // A wrong expectation fails there: the replay is a real check.
    let mut wrong = found["test_case_new"].clone();
    wrong["expect"]["allowed"] = json!(false);
    assert_eq!(replay(&new, &wrong).status.code(), Some(1));

    // The gates: the change fails `--fail-on new-access`; the reverse change only narrows.
    assert_eq!(diff(&old, &new, &["--fail-on", "new-access"]).0, Some(1));
    let (code, back) = diff(&new, &old, &["--fail-on", "new-access"]);
    assert_eq!(code, Some(0), "{back:#}");
    assert_eq!(back["new_access"]["answer"], "none");
    assert_eq!(back["new_denials"]["answer"], "found");
    assert_eq!(diff(&new, &old, &["--fail-on", "any"]).0, Some(1));
    assert_eq!(diff(&old, &old, &["--fail-on", "any"]).0, Some(0));

    // The pretty answer names the example and the rule.
    let out = arbiter(&[
        "istio",
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    let text = String::from_utf8(out.stdout).unwrap();
    for want in [
        "NEW ACCESS (denied before, allowed now): for example",
        "after:  allowed by shop/orders rules[0]",
        "NEW DENIALS (allowed before, denied now): none (exact)",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
}

#[test]
fn what_it_cannot_enumerate_is_unknown_and_fails_the_gate() {
    let dir = common::tmp("istio-diff", "unknown");
    let old = folder(
        &dir,
        "old",
        "requestPrincipals: [\"https://issuer/*\"]",
        "/a",
    );
    let (code, d) = diff(&old, &old, &["--fail-on", "any"]);
    assert_eq!(code, Some(1), "{d:#}");
    assert_eq!(d["new_access"]["answer"], "unknown");
    assert!(
        d["new_access"]["because"][0]
            .as_str()
            .unwrap()
            .contains("requestPrincipals")
    );
    // Broken files are usage errors.
    let broken = dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("p.yaml"),
        POLICY
            .replace("SOURCE", "principalz: [x]")
            .replace("PATHS", "/a"),
    )
    .unwrap();
    let out = arbiter(&[
        "istio",
        "diff",
        old.to_str().unwrap(),
        broken.to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn invariants_are_proven_or_refuted_with_a_request_that_breaks_them() {
    let dir = common::tmp("istio-diff", "invariants");
    let new = folder(&dir, "new", "namespaces: [shop]", "/api/orders*");
    let check = |deny: &[&str]| {
        let mut args = vec![
            "istio",
            "check-invariants",
            "-f",
            "json",
            new.to_str().unwrap(),
        ];
        for d in deny {
            args.extend(["--deny", d]);
        }
        let out = arbiter(&args);
        let j: Json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code(), j)
    };
    // Nothing outside the shop namespace reads orders; nothing deletes: both hold.
    let (code, r) = check(&["path=/api/orders*, not namespace=shop", "method=DELETE"]);
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(
        (r[0]["verdict"].as_str(), r[1]["verdict"].as_str()),
        (Some("proven"), Some("proven"))
    );
    // "Only the frontend reaches the admin paths" does not hold; the request that breaks it is
    // allowed by `arbiter test` under these policies.
    let (code, r) =
        check(&["path=/api/orders-admin*, not principal=cluster.local/ns/shop/sa/frontend"]);
    assert_eq!(code, Some(1), "{r:#}");
    assert_eq!(r[0]["verdict"], "refuted");
    let w = &r[0]["detail"]["request"];
    assert!(
        w["path"].as_str().unwrap().starts_with("/api/orders-admin"),
        "{w}"
    );
    assert_ne!(w["principal"], "spiffe://cluster.local/ns/shop/sa/frontend");
    let out = replay(&new, &r[0]["detail"]["test_case"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Terms that do not read are usage errors.
    let out = arbiter(&[
        "istio",
        "check-invariants",
        new.to_str().unwrap(),
        "--deny",
        "colour=red",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key `colour`"));
}

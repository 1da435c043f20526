//! Rego tests: discovery, evaluation, explanation of failures, coverage and benchmarks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use regorus::Value;
use regorus::unstable::{BoolOp, Expr, Literal, LiteralStmt, Rule, RuleHead};

use super::coverage::CoverageAccumulator;
use super::{Bench, FailedAt, Failure, Mismatch, Outcome, TestKind, TestOptions, TestReport};
use super::{TestResult, coverage::CoverageReport};
use crate::diagnostic::LoadError;
use crate::loader::{PolicySources, RegoVersion, SourceFile};
use crate::policy_set::{LoadOptions, PolicySet};
use crate::rego::EvalError;

/// Rules named so are tests (OPA's `TestPrefix`).
pub const TEST_PREFIX: &str = "test_";
/// Rules named so are skipped tests (OPA's `SkipTestPrefix`).
pub const SKIP_PREFIX: &str = "todo_test_";
/// Second and later rules with one name are renamed to this, then shown as `name#NN`.
const DUP_MARK: &str = "__arbiter_dup";
const PROBE: &str = "__arbiter_probe_";
const VALUE: &str = "__arbiter_value_";

/// A statement of a test body, as written.
#[derive(Debug, Clone)]
struct Stmt {
    /// The literal with its `with` modifiers.
    text: String,
    /// Only the `with` modifiers (`with input as {...}`), or empty.
    with: String,
    line: u32,
    col: u32,
    kind: StmtKind,
}

#[derive(Debug, Clone)]
enum StmtKind {
    Compare {
        lhs: String,
        rhs: String,
        op: BoolOp,
    },
    Expr(String),
    Not(String),
    Other,
}

/// A test rule found in a module.
#[derive(Debug, Clone)]
struct TestRule {
    file: String,
    /// The package without `data.`.
    package: String,
    /// The head's ground reference as it is in the (possibly renamed) source.
    ground: String,
    line: u32,
    col: u32,
    skip: bool,
    /// `test_x[name]`: a value per case.
    dynamic: bool,
    /// The body, when the rule has exactly one.
    stmts: Option<Vec<Stmt>>,
    /// Byte range of the name, when the head is a plain name (for renaming duplicates).
    name_range: Option<(usize, usize)>,
}

impl TestRule {
    fn display(&self) -> String {
        match self.ground.rsplit_once(DUP_MARK) {
            Some((name, n)) => format!("{name}#{n}"),
            None => self.ground.clone(),
        }
    }

    fn path(&self) -> String {
        format!("data.{}.{}", self.package, self.ground)
    }

    fn full_name(&self) -> String {
        format!("data.{}.{}", self.package, self.display())
    }
}

fn op_text(op: &BoolOp) -> &'static str {
    match op {
        BoolOp::Lt => "<",
        BoolOp::Le => "<=",
        BoolOp::Eq => "==",
        BoolOp::Ge => ">=",
        BoolOp::Gt => ">",
        BoolOp::Ne => "!=",
    }
}

fn stmt_of(s: &LiteralStmt) -> Stmt {
    let contents = s.span.source.contents();
    let start = s.span.start as usize;
    let end = s
        .with_mods
        .iter()
        .map(|w| w.span.end as usize)
        .fold(s.span.end as usize, usize::max);
    let text = contents
        .get(start..end)
        .unwrap_or_else(|| s.span.text())
        .to_string();
    let with = match (s.with_mods.first(), s.with_mods.last()) {
        (Some(a), Some(b)) => contents
            .get(a.span.start as usize..b.span.end as usize)
            .unwrap_or("")
            .to_string(),
        _ => String::new(),
    };
    let kind = match &s.literal {
        Literal::Expr { expr, .. } => match expr.as_ref() {
            Expr::BoolExpr { op, lhs, rhs, .. } => StmtKind::Compare {
                lhs: lhs.span().text().to_string(),
                rhs: rhs.span().text().to_string(),
                op: op.clone(),
            },
            e => StmtKind::Expr(e.span().text().to_string()),
        },
        Literal::NotExpr { expr, .. } => StmtKind::Not(expr.span().text().to_string()),
        _ => StmtKind::Other,
    };
    Stmt {
        text,
        with,
        line: s.span.line,
        col: s.span.col,
        kind,
    }
}

/// Every test rule of every module, in load order.
fn discover(set: &PolicySet) -> Vec<TestRule> {
    let mut engine = set.engine();
    let mut out = Vec::new();
    for module in engine.get_modules().iter() {
        let package = module.package.refr.span().text().to_string();
        for rule in &module.policy {
            let Rule::Spec { span, head, bodies } = rule.as_ref() else {
                continue;
            };
            let refr = match head {
                RuleHead::Compr { refr, .. } | RuleHead::Set { refr, .. } => refr,
                RuleHead::Func { .. } => continue,
            };
            let text = refr.span().text();
            let ground = text.split('[').next().unwrap_or(text).trim();
            let Some(name) = ground
                .split('.')
                .find(|c| c.starts_with(TEST_PREFIX) || c.starts_with(SKIP_PREFIX))
            else {
                continue;
            };
            let plain = ground == text && !ground.contains('.');
            out.push(TestRule {
                file: span.source.file().clone(),
                package: package.clone(),
                ground: ground.to_string(),
                line: span.line,
                col: span.col,
                skip: name.starts_with(SKIP_PREFIX),
                dynamic: text.contains('['),
                stmts: (bodies.len() == 1)
                    .then(|| bodies[0].query.stmts.iter().map(stmt_of).collect()),
                name_range: plain.then(|| {
                    let s = refr.span();
                    (s.start as usize, s.end as usize)
                }),
            });
        }
    }
    out
}

/// Rename the second and later test rules sharing a name (OPA runs each as its own test).
/// Returns the sources to use, and whether anything changed.
fn rename_duplicates(sources: &PolicySources, rules: &[TestRule]) -> Option<PolicySources> {
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut edits: BTreeMap<String, Vec<(usize, usize, String)>> = BTreeMap::new();
    for r in rules.iter().filter(|r| !r.skip) {
        let n = seen
            .entry((r.package.clone(), r.ground.clone()))
            .or_insert(0);
        if *n > 0
            && let Some((a, b)) = r.name_range
        {
            edits.entry(r.file.clone()).or_default().push((
                a,
                b,
                format!("{}{DUP_MARK}{:02}", r.ground, *n),
            ));
        }
        *n += 1;
    }
    if edits.is_empty() {
        return None;
    }
    let mut out = sources.clone();
    for file in out.rego.iter_mut().chain(out.rego_tests.iter_mut()) {
        if let Some(list) = edits.get_mut(&file.name) {
            list.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (a, b, name) in list.iter() {
                if file.text.is_char_boundary(*a) && file.text.is_char_boundary(*b) {
                    file.text.replace_range(*a..*b, name);
                }
            }
        }
    }
    Some(out)
}

fn load_options(options: &TestOptions) -> LoadOptions {
    LoadOptions {
        rego_version: options.rego_version,
        include_tests: true,
        eval_timeout: Some(options.timeout),
        strict_builtin_errors: options.strict_builtin_errors,
        ..LoadOptions::default()
    }
}

/// A value for people: JSON, or `undefined`.
pub(crate) fn value_text(v: &Value) -> String {
    match v {
        Value::Undefined => "undefined".into(),
        v => v.to_json_str().unwrap_or_else(|_| format!("{v:?}")),
    }
}

fn elapsed(since: Instant) -> Duration {
    since.elapsed()
}

/// Run the Rego tests.
pub(crate) fn run(sources: &PolicySources, options: &TestOptions) -> Result<TestReport, LoadError> {
    let load = load_options(options);
    let mut effective = sources.clone();
    let mut set = PolicySet::from_sources(&effective, &load)?;
    let mut rules = discover(&set);
    if let Some(renamed) = rename_duplicates(&effective, &rules) {
        effective = renamed;
        set = PolicySet::from_sources(&effective, &load)?;
        rules = discover(&set);
    }
    let mut coverage = options.coverage.then(CoverageAccumulator::default);
    let mut results = Vec::new();
    for rule in &rules {
        if let Some(re) = &options.filter
            && !re.is_match(&rule.full_name())
        {
            continue;
        }
        results.push(run_one(&set, &effective, rule, options, coverage.as_mut()));
    }
    Ok(TestReport {
        results,
        coverage: coverage.map(|c| {
            let mut report: CoverageReport = c.finish();
            // Files that no test reached still count, with every line not covered.
            for name in set.modules() {
                if !report.files.iter().any(|f| &f.file == name) {
                    report.files.push(super::FileCoverage {
                        file: name.clone(),
                        ..Default::default()
                    });
                }
            }
            report.files.sort_by(|a, b| a.file.cmp(&b.file));
            report
        }),
    })
}

fn run_one(
    set: &PolicySet,
    sources: &PolicySources,
    rule: &TestRule,
    options: &TestOptions,
    coverage: Option<&mut CoverageAccumulator>,
) -> TestResult {
    let mut result = TestResult {
        kind: TestKind::Rego,
        file: rule.file.clone(),
        line: rule.line,
        col: rule.col,
        package: format!("data.{}", rule.package),
        name: rule.display(),
        outcome: Outcome::Skip,
        duration: Duration::ZERO,
        output: Vec::new(),
        bench: None,
    };
    if rule.skip {
        return result;
    }
    let mut engine = set.engine();
    engine.set_gather_prints(true);
    if coverage.is_some() {
        engine.set_enable_coverage(true);
    }
    let start = Instant::now();
    let evaluated = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        engine.eval_rule(rule.path())
    }));
    result.duration = elapsed(start);
    result.output = engine.take_prints().unwrap_or_default();
    if let Some(acc) = coverage
        && let Ok(report) = engine.get_coverage_report()
    {
        acc.add(&report);
    }
    result.outcome = match evaluated {
        Err(_) => Outcome::Error("the policy engine panicked while evaluating this test".into()),
        Ok(Err(e)) => Outcome::Error(EvalError::from_regorus(&e).message),
        Ok(Ok(Value::Bool(true))) => Outcome::Pass,
        Ok(Ok(v)) if rule.dynamic && matches!(v, Value::Object(_)) => {
            let mut failing = Vec::new();
            failing_cases(&v, &mut Vec::new(), &mut failing);
            if failing.is_empty() {
                Outcome::Pass
            } else {
                Outcome::Fail(Failure {
                    message: format!("failing cases: {}", failing.join(", ")),
                    ..Failure::default()
                })
            }
        }
        Ok(Ok(v)) => Outcome::Fail(explain(sources, rule, options, &v)),
    };
    if let (Some(budget), Outcome::Pass) = (options.bench, &result.outcome) {
        result.bench = Some(bench(set, rule, budget));
    }
    result
}

/// Keys of a parameterized test's result whose leaves are not all `true`.
fn failing_cases(v: &Value, path: &mut Vec<String>, out: &mut Vec<String>) {
    match v {
        Value::Bool(true) => {}
        Value::Object(m) => {
            for (k, v) in m.iter() {
                path.push(match k {
                    Value::String(s) => s.to_string(),
                    k => value_text(k),
                });
                failing_cases(v, path, out);
                path.pop();
            }
        }
        _ => out.push(path.join(".")),
    }
}

fn bench(set: &PolicySet, rule: &TestRule, budget: Duration) -> Bench {
    let path = rule.path();
    let start = Instant::now();
    let mut iterations: u64 = 0;
    while iterations < 10 || start.elapsed() < budget {
        let mut engine = set.engine();
        let _ = engine.eval_rule(path.clone());
        iterations += 1;
        if iterations >= 10_000_000 {
            break;
        }
    }
    Bench {
        iterations,
        ns_per_op: start.elapsed().as_nanos() as f64 / iterations as f64,
    }
}

/// Why a test did not evaluate to `true`: the first statement of its body that does not hold,
/// found by evaluating growing prefixes of the body, and the values involved.
fn explain(
    sources: &PolicySources,
    rule: &TestRule,
    options: &TestOptions,
    value: &Value,
) -> Failure {
    let fallback = Failure {
        message: format!(
            "`{}` is {}, expected true",
            rule.display(),
            value_text(value)
        ),
        ..Failure::default()
    };
    let Some(stmts) = rule.stmts.as_ref().filter(|s| !s.is_empty()) else {
        return fallback;
    };
    let Some(file) = sources
        .rego
        .iter()
        .chain(&sources.rego_tests)
        .find(|f| f.name == rule.file)
    else {
        return fallback;
    };
    let v1 = options.rego_version == RegoVersion::V1 || file.text.contains("import rego.v1");
    let mut extra = String::from("\n");
    for k in 1..=stmts.len() {
        let body: Vec<&str> = stmts[..k].iter().map(|s| s.text.as_str()).collect();
        extra.push_str(&probe_rule(&format!("{PROBE}{k}"), v1, &body, None));
    }
    let Some(set) = with_extra(sources, file, &extra, options) else {
        return fallback;
    };
    let mut engine = set.engine();
    let pkg = &rule.package;
    let mut failed = None;
    for k in 1..=stmts.len() {
        match engine.eval_rule(format!("data.{pkg}.{PROBE}{k}")) {
            Ok(Value::Undefined) => {
                failed = Some(k - 1);
                break;
            }
            Ok(_) => {}
            Err(_) => return fallback,
        }
    }
    let Some(i) = failed else {
        return fallback;
    };
    let stmt = &stmts[i];
    let prefix: Vec<&str> = stmts[..i].iter().map(|s| s.text.as_str()).collect();
    let probe_value = |expr: &str| -> Option<String> {
        let extra = format!(
            "\n{}",
            probe_rule(&format!("{VALUE}0"), v1, &prefix, Some((expr, &stmt.with)))
        );
        let set = with_extra(sources, file, &extra, options)?;
        let mut engine = set.engine();
        let v = engine.eval_rule(format!("data.{pkg}.{VALUE}0")).ok()?;
        Some(match v {
            Value::Set(s) if s.len() == 1 => s.iter().next().map(value_text).unwrap_or_default(),
            Value::Set(s) if s.is_empty() => "undefined".into(),
            Value::Set(s) => format!(
                "one of {}",
                s.iter().map(value_text).collect::<Vec<_>>().join(", ")
            ),
            v => value_text(&v),
        })
    };
    let mut failure = Failure {
        message: format!("`{}` does not hold", stmt.text),
        failed_at: Some(FailedAt {
            file: rule.file.clone(),
            line: stmt.line,
            col: stmt.col,
            text: stmt.text.clone(),
        }),
        mismatches: Vec::new(),
    };
    match &stmt.kind {
        StmtKind::Compare { lhs, rhs, op } => {
            if let (Some(l), Some(r)) = (probe_value(lhs), probe_value(rhs)) {
                let expected = match op {
                    BoolOp::Eq => r,
                    op => format!("{} {r}", op_text(op)),
                };
                failure.mismatches.push(Mismatch {
                    what: lhs.clone(),
                    expected,
                    actual: l,
                });
            }
        }
        StmtKind::Expr(e) => {
            if let Some(v) = probe_value(e) {
                failure.message = format!("`{}` is {v}", stmt.text);
                failure.mismatches.push(Mismatch {
                    what: e.clone(),
                    expected: "true".into(),
                    actual: v,
                });
            }
        }
        StmtKind::Not(e) => {
            if let Some(v) = probe_value(e) {
                failure.message = format!("`{}` does not hold: `{e}` is {v}", stmt.text);
                failure.mismatches.push(Mismatch {
                    what: e.clone(),
                    expected: "false or undefined".into(),
                    actual: v,
                });
            }
        }
        StmtKind::Other => {}
    }
    failure
}

/// `name if { body }`, or with `value`: `name contains __v if { body; __v := (expr) with … }`.
fn probe_rule(name: &str, v1: bool, body: &[&str], value: Option<(&str, &str)>) -> String {
    let mut lines: Vec<String> = body.iter().map(|s| format!("\t{s}")).collect();
    let head = match value {
        Some((expr, with)) => {
            lines.push(format!("\t__arbiter_v := ({expr}) {with}"));
            if v1 {
                format!("{name} contains __arbiter_v if")
            } else {
                format!("{name}[__arbiter_v]")
            }
        }
        None if v1 => format!("{name} if"),
        None => name.to_string(),
    };
    if lines.is_empty() {
        lines.push("\ttrue".into());
    }
    format!("{head} {{\n{}\n}}\n", lines.join("\n"))
}

/// The sources with `extra` appended to `file`, compiled; `None` when that does not compile.
fn with_extra(
    sources: &PolicySources,
    file: &SourceFile,
    extra: &str,
    options: &TestOptions,
) -> Option<PolicySet> {
    let mut s = sources.clone();
    for f in s.rego.iter_mut().chain(s.rego_tests.iter_mut()) {
        if f.name == file.name {
            f.text.push_str(extra);
        }
    }
    PolicySet::from_sources(&s, &load_options(options)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(files: &[(&str, &str)]) -> PolicySources {
        let mut s = PolicySources::default();
        for (name, text) in files {
            if name.ends_with("_test.rego") {
                s.rego_tests.push(SourceFile {
                    name: (*name).into(),
                    text: (*text).into(),
                });
            } else {
                s.add_rego(*name, *text);
            }
        }
        s
    }

    fn outcomes(report: &TestReport) -> Vec<(String, &'static str)> {
        report
            .results
            .iter()
            .map(|r| (r.full_name(), r.outcome.label()))
            .collect()
    }

    #[test]
    fn pass_fail_error_skip_and_duplicates() {
        let s = sources(&[(
            "p_test.rego",
            r#"package p
test_pass if { 1 == 1 }
test_fail if { 1 == 2 }
test_error if { 1 / 0 == 1 }
todo_test_later if { false }
test_dup if { true }
test_dup if { false }
test_value := 7
"#,
        )]);
        let r = run(&s, &TestOptions::default()).unwrap();
        assert_eq!(
            outcomes(&r),
            vec![
                ("data.p.test_pass".into(), "PASS"),
                ("data.p.test_fail".into(), "FAIL"),
                // A built-in error is undefined, so the test fails (as in `opa test`).
                ("data.p.test_error".into(), "FAIL"),
                ("data.p.todo_test_later".into(), "SKIPPED"),
                ("data.p.test_dup".into(), "PASS"),
                ("data.p.test_dup#01".into(), "FAIL"),
                ("data.p.test_value".into(), "FAIL"),
            ]
        );
        let Outcome::Fail(f) = &r.results[1].outcome else {
            panic!()
        };
        let at = f.failed_at.as_ref().unwrap();
        assert_eq!((at.line, at.text.as_str()), (3, "1 == 2"));
        assert_eq!(
            f.mismatches,
            vec![Mismatch {
                what: "1".into(),
                expected: "2".into(),
                actual: "1".into()
            }]
        );
        let Outcome::Fail(f) = &r.results[6].outcome else {
            panic!()
        };
        assert_eq!(f.message, "`test_value` is 7, expected true");
    }

    /// regorus patch 61: a function replaced by `with` is undefined where its replacement is,
    /// even when the function has a default: `opa test` passes all three (OPA 1.7.1); arbiter
    /// answered the replaced function's default, so the first test failed.
    #[test]
    fn a_mocked_default_function_is_undefined_where_its_mock_is() {
        let s = sources(&[
            (
                "authz.rego",
                r#"package authz
default risk(_) := 0
risk(u) := 9 if u == "mallory"
allow if risk(input.user) < 5
"#,
            ),
            (
                "authz_test.rego",
                r#"package authz_test
import data.authz
partial_risk(u) := 1 if u == "ann"
test_mock_undefined_is_not_the_default if {
    not authz.allow with input as {"user": "bob"} with authz.risk as partial_risk
}
test_mock_defined if {
    authz.allow with input as {"user": "ann"} with authz.risk as partial_risk
}
test_default_unmocked if {
    authz.allow with input as {"user": "bob"}
}
"#,
            ),
        ]);
        let r = run(&s, &TestOptions::default()).unwrap();
        let labels: Vec<&str> = r.results.iter().map(|t| t.outcome.label()).collect();
        assert_eq!(labels, vec!["PASS", "PASS", "PASS"], "{r:#?}");
    }

    #[test]
    fn with_mocks_input_data_and_functions_and_failures_show_values() {
        let s = sources(&[
            (
                "authz.rego",
                r#"package authz
default allow := false
allow if {
    input.user in data.admins
    lookup(input.user) == "ok"
}
lookup(u) := "ok" if u != ""
"#,
            ),
            (
                "authz_test.rego",
                r#"package authz_test
import data.authz
mock_lookup(_) := "ok"
deny_lookup(_) := "no"
test_input_and_data if {
    authz.allow with input as {"user": "ann"} with data.admins as ["ann"]
}
test_function_mock if {
    not authz.allow with input as {"user": "ann"} with data.admins as ["ann"] with authz.lookup as deny_lookup
}
test_value_mock if {
    authz.allow with input as {"user": "ann"} with data.admins as ["ann"] with authz.lookup as "ok"
}
test_failing if {
    x := 1
    authz.allow with input as {"user": "bob"} with data.admins as ["ann"]
}
test_failing_compare if {
    count(data.admins) == 2 with data.admins as ["ann"]
}
"#,
            ),
        ]);
        let r = run(&s, &TestOptions::default()).unwrap();
        let labels: Vec<&str> = r.results.iter().map(|t| t.outcome.label()).collect();
        assert_eq!(
            labels,
            vec!["PASS", "PASS", "PASS", "FAIL", "FAIL"],
            "{r:#?}"
        );
        let Outcome::Fail(f) = &r.results[3].outcome else {
            panic!()
        };
        let at = f.failed_at.as_ref().unwrap();
        assert_eq!((at.file.as_str(), at.line), ("authz_test.rego", 16));
        assert!(at.text.starts_with("authz.allow with input as"), "{at:?}");
        assert_eq!(f.mismatches[0].expected, "true");
        assert_eq!(f.mismatches[0].actual, "false");
        let Outcome::Fail(f) = &r.results[4].outcome else {
            panic!()
        };
        assert_eq!(f.mismatches[0].expected, "2");
        assert_eq!(f.mismatches[0].actual, "1");
    }

    #[test]
    fn filter_and_parameterized_tests() {
        let s = sources(&[(
            "q_test.rego",
            r#"package q
test_cases[name] := ok if {
    some name, c in {"one": 1, "two": 2}
    ok := c < 2
}
test_other if { true }
"#,
        )]);
        let r = run(&s, &TestOptions::default()).unwrap();
        let Outcome::Fail(f) = &r.results[0].outcome else {
            panic!("{r:#?}")
        };
        assert_eq!(f.message, "failing cases: two");
        let opts = TestOptions {
            filter: Some(regex::Regex::new("other$").unwrap()),
            ..TestOptions::default()
        };
        let r = run(&s, &opts).unwrap();
        assert_eq!(outcomes(&r), vec![("data.q.test_other".into(), "PASS")]);
    }

    #[test]
    fn timeouts_are_errors() {
        let s = sources(&[(
            "slow_test.rego",
            r#"package slow
test_slow if {
    some x in numbers.range(1, 1000000)
    some y in numbers.range(1, 1000000)
    x + y < 0
}
"#,
        )]);
        let opts = TestOptions {
            timeout: Duration::from_millis(50),
            ..TestOptions::default()
        };
        let start = Instant::now();
        let r = run(&s, &opts).unwrap();
        assert_eq!(r.results[0].outcome.label(), "ERROR", "{r:#?}");
        assert!(start.elapsed() < Duration::from_secs(20));
    }

    /// With `--strict-builtin-errors`, the same built-in error is an error verdict.
    #[test]
    fn strict_builtin_errors_make_errors() {
        let s = sources(&[("p_test.rego", "package p\ntest_error if { 1 / 0 == 1 }\n")]);
        let strict = TestOptions {
            strict_builtin_errors: true,
            ..TestOptions::default()
        };
        let r = run(&s, &strict).unwrap();
        assert_eq!(r.results[0].outcome.label(), "ERROR");
        let r = run(&s, &TestOptions::default()).unwrap();
        assert_eq!(r.results[0].outcome.label(), "FAIL");
    }
}

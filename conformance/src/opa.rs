//! OPA's Rego conformance suite, run through arbiter's engine setup (and, for comparison, through
//! a plain regorus engine without arbiter's built-ins).
//!
//! A case passes when:
//! - it expects a result (`want_result`): evaluation succeeds and the bindings equal the expected
//!   ones (as a set of results; with `sort_bindings`, array values are compared sorted);
//! - it expects an error (`want_error_code` / `want_error`): evaluation fails, the error's OPA
//!   code is the expected one, and `"<code>: <message>"` contains `want_error`.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arbiter_engine::rego::{EngineOptions, EvalError, EvalErrorKind, new_engine};
use arbiter_engine::regorus::{self, Value};
use arbiter_engine::value::{from_json, to_json};
use serde::Deserialize;
use serde_json::Value as Json;

/// The environment variable that overrides where the suite is read from.
pub const ENV: &str = "ARBITER_OPA_CASES";

#[derive(Debug, Deserialize)]
struct CaseFile {
    cases: Vec<Case>,
}

/// One test case, with the field names of OPA's own runner.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    pub note: String,
    pub query: String,
    #[serde(default)]
    pub modules: Vec<String>,
    #[serde(default)]
    pub data: Option<Json>,
    #[serde(default)]
    pub input: Option<Json>,
    #[serde(default)]
    pub input_term: Option<String>,
    #[serde(default)]
    pub want_result: Option<Vec<Json>>,
    #[serde(default)]
    pub sort_bindings: bool,
    #[serde(default)]
    pub want_error_code: Option<String>,
    #[serde(default)]
    pub want_error: Option<String>,
    #[serde(default)]
    pub strict_error: bool,
    #[serde(default)]
    pub ignore_generated_vars: bool,
}

/// A case and the suite folder it came from.
#[derive(Debug, Clone)]
pub struct SuiteCase {
    pub folder: String,
    pub file: PathBuf,
    pub case: Case,
}

/// Read every case under `dir` (the folder holding `v1/`).
pub fn load_cases(dir: &Path) -> Result<Vec<SuiteCase>, String> {
    let root = dir.join("v1");
    let root = if root.is_dir() {
        root
    } else {
        dir.to_path_buf()
    };
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(|e| format!("cannot read {}: {e}", root.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    folders.sort();
    let mut out = Vec::new();
    for folder in folders {
        let name = folder
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .map_err(|e| format!("cannot read {}: {e}", folder.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let parsed: CaseFile =
                yaml_serde::from_str(&text).map_err(|e| format!("{}: {e}", file.display()))?;
            for case in parsed.cases {
                out.push(SuiteCase {
                    folder: name.clone(),
                    file: file.clone(),
                    case,
                });
            }
        }
    }
    if out.is_empty() {
        return Err(format!("no cases found under {}", root.display()));
    }
    Ok(out)
}

/// Which engine setup runs the cases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// arbiter's engine: regorus plus arbiter's built-ins.
    Arbiter,
    /// regorus as it comes, for comparison.
    RegorusAlone,
}

/// Why a case failed, in a few words (used to explain failing folders).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

fn engine_for(setup: Setup, case: &Case) -> regorus::Engine {
    let timer = regorus::utils::limits::ExecutionTimerConfig {
        limit: Duration::from_secs(10),
        check_interval: NonZeroU32::MIN.saturating_add(63),
    };
    match setup {
        Setup::Arbiter => {
            let mut e = new_engine(&EngineOptions {
                strict_builtin_errors: case.strict_error,
                eval_timeout: Some(timer.limit),
                // OPA has no column limit; its suite embeds long tokens on one line.
                policy_length: no_length_limit(),
                ..EngineOptions::default()
            });
            e.set_execution_timer_config(timer);
            e
        }
        Setup::RegorusAlone => {
            let mut e = regorus::Engine::new();
            e.set_strict_builtin_errors(case.strict_error);
            e.set_policy_length_config(no_length_limit());
            e.set_execution_timer_config(timer);
            e
        }
    }
}

fn no_length_limit() -> regorus::PolicyLengthConfig {
    regorus::PolicyLengthConfig {
        max_col: NonZeroU32::MAX,
        max_file_bytes: std::num::NonZeroUsize::MAX,
        max_lines: std::num::NonZeroUsize::MAX,
    }
}

/// Run one case.
pub fn run_case(setup: Setup, case: &Case) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| run_case_inner(setup, case))) {
        Ok(o) => o,
        Err(p) => Outcome::Fail(format!("panic: {}", panic_text(p.as_ref()))),
    }
}

/// The first line of a panic's message.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    let msg = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    first_line(&msg)
}

fn first_line(s: &str) -> String {
    let line = s
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    let mut out: String = line.chars().take(120).collect();
    if line.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// The case's input: `input`, or the value of `input_term` (a query's first expression), or
/// none.
fn case_input(case: &Case) -> Result<Option<Value>, EvalError> {
    if let Some(i) = &case.input {
        return Ok(Some(from_json(i)));
    }
    let Some(term) = &case.input_term else {
        return Ok(None);
    };
    let r = regorus::Engine::new()
        .eval_query(term.clone(), false)
        .map_err(|e| EvalError::from_regorus(&e))?;
    Ok(Some(
        r.result
            .first()
            .and_then(|r| r.expressions.first())
            .map_or(Value::Undefined, |e| e.value.clone()),
    ))
}

fn run_case_inner(setup: Setup, case: &Case) -> Outcome {
    let mut engine = engine_for(setup, case);
    let result = (|| -> Result<regorus::QueryResults, EvalError> {
        for (i, m) in case.modules.iter().enumerate() {
            engine
                .add_policy(format!("test-{i}.rego"), m.clone())
                .map_err(|e| EvalError::from_regorus(&e))?;
        }
        if let Some(d) = &case.data {
            engine
                .add_data(from_json(d))
                .map_err(|e| EvalError::from_regorus(&e))?;
        }
        if let Some(input) = case_input(case)? {
            engine.set_input(input);
        }
        if setup == Setup::Arbiter {
            // What arbiter adds to regorus's compiler: OPA's type check of built-in calls.
            if let Some(d) = arbiter_engine::typecheck::check_modules(engine.get_modules())
                .into_iter()
                .next()
            {
                return Err(EvalError {
                    kind: EvalErrorKind::Compile(d.code),
                    message: d.to_string(),
                    location: Some(d),
                });
            }
            arbiter_engine::typecheck::check_query_text(&mut engine, &case.query, None, true)?;
        }
        engine
            .eval_query(case.query.clone(), false)
            .map_err(|e| EvalError::from_regorus(&e))
    })();
    let wants_error =
        case.want_result.is_none() && (case.want_error_code.is_some() || case.want_error.is_some());
    match (result, wants_error) {
        (Ok(r), false) => compare_results(case, &r),
        (Ok(r), true) => Outcome::Fail(format!(
            "expected error `{}`, got {} result(s)",
            case.want_error_code
                .as_deref()
                .or(case.want_error.as_deref())
                .unwrap_or(""),
            r.result.len()
        )),
        (Err(e), false) => Outcome::Fail(classify_error(&e)),
        (Err(e), true) => {
            let code = e.kind.opa_code();
            let bare = e
                .location
                .as_ref()
                .map_or(e.message.as_str(), |d| d.message.as_str());
            let text = format!("{code}: {bare}");
            // OPA's whole error text, `file:row: code: message` (its suite names modules
            // `test-N.rego`, as this runner does).
            let located = e
                .location
                .as_ref()
                .map(|d| format!("{}:{}: {text}", d.file, d.line));
            if let Some(want) = &case.want_error_code
                && want != code
            {
                return Outcome::Fail(format!("error code `{code}` instead of `{want}`"));
            }
            if let Some(want) = &case.want_error
                && !text.contains(want.as_str())
                && !located.is_some_and(|l| l.contains(want.as_str()))
            {
                return Outcome::Fail(format!("error message differs: `{}`", first_line(bare)));
            }
            Outcome::Pass
        }
    }
}

fn classify_error(e: &EvalError) -> String {
    let bare = e
        .location
        .as_ref()
        .map_or(e.message.as_str(), |d| d.message.as_str());
    if let Some(rest) = bare
        .split("could not find function ")
        .nth(1)
        .or_else(|| bare.split("undefined function ").nth(1))
    {
        let name: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
        return format!("missing built-in `{name}`");
    }
    if matches!(e.kind, EvalErrorKind::Limit(_)) {
        return "time limit".to_string();
    }
    format!("unexpected error: {}", first_line(bare))
}

fn compare_results(case: &Case, r: &regorus::QueryResults) -> Outcome {
    let want = case.want_result.clone().unwrap_or_default();
    let mut got: Vec<Json> = r
        .result
        .iter()
        .map(|res| {
            let mut b = to_json(&res.bindings);
            if let Json::Object(m) = &mut b {
                if case.ignore_generated_vars {
                    m.retain(|k, _| !k.starts_with("__"));
                }
                if case.sort_bindings {
                    for v in m.values_mut() {
                        sort_array(v);
                    }
                }
            }
            b
        })
        .collect();
    let mut want: Vec<Json> = want
        .into_iter()
        .map(|mut b| {
            if case.sort_bindings
                && let Json::Object(m) = &mut b
            {
                for v in m.values_mut() {
                    sort_array(v);
                }
            }
            b
        })
        .collect();
    got.sort_by_key(canonical);
    want.sort_by_key(canonical);
    if got.len() == want.len() && got.iter().zip(&want).all(|(a, b)| json_eq(a, b)) {
        Outcome::Pass
    } else {
        let g = serde_json::to_string(&got).unwrap_or_default();
        Outcome::Fail(format!("wrong result: {}", first_line(&g)))
    }
}

fn sort_array(v: &mut Json) {
    if let Json::Array(a) = v {
        a.sort_by_key(canonical);
    }
}

/// A stable text of a JSON value with object keys sorted and numbers normalised.
fn canonical(v: &Json) -> String {
    match v {
        Json::Object(m) => {
            let sorted: BTreeMap<&String, String> =
                m.iter().map(|(k, v)| (k, canonical(v))).collect();
            let parts: Vec<String> = sorted.iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
            format!("{{{}}}", parts.join(","))
        }
        Json::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        Json::Number(n) => n.as_f64().map_or_else(|| n.to_string(), |f| format!("{f}")),
        other => other.to_string(),
    }
}

/// JSON equality where `1` equals `1.0` (arrays in order, objects by key).
pub fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => {
            x == y || x.as_f64().zip(y.as_f64()).is_some_and(|(p, q)| p == q)
        }
        (Json::Array(x), Json::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Json::Object(x), Json::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}

/// The outcome of every case under both setups.
#[derive(Debug)]
pub struct Report {
    pub cases: Vec<SuiteCase>,
    pub arbiter: Vec<Outcome>,
    pub regorus: Vec<Outcome>,
}

impl Report {
    pub fn passes(outcomes: &[Outcome]) -> usize {
        outcomes.iter().filter(|o| **o == Outcome::Pass).count()
    }

    /// Run all cases under both setups, on `threads` threads with large stacks.
    pub fn run(cases: Vec<SuiteCase>, threads: usize) -> Report {
        let arbiter = run_all(&cases, Setup::Arbiter, threads);
        let regorus = run_all(&cases, Setup::RegorusAlone, threads);
        Report {
            cases,
            arbiter,
            regorus,
        }
    }

    /// The markdown report: totals, a per-folder table, and why each failing folder fails.
    pub fn markdown(&self) -> String {
        struct Folder {
            total: usize,
            arbiter: usize,
            regorus: usize,
            causes: BTreeMap<String, usize>,
        }
        let mut folders: BTreeMap<&str, Folder> = BTreeMap::new();
        for (i, c) in self.cases.iter().enumerate() {
            let f = folders.entry(&c.folder).or_insert(Folder {
                total: 0,
                arbiter: 0,
                regorus: 0,
                causes: BTreeMap::new(),
            });
            f.total += 1;
            if self.arbiter[i] == Outcome::Pass {
                f.arbiter += 1;
            } else if let Outcome::Fail(why) = &self.arbiter[i] {
                *f.causes.entry(generalize(why)).or_default() += 1;
            }
            if self.regorus[i] == Outcome::Pass {
                f.regorus += 1;
            }
        }
        let total = self.cases.len();
        let a = Self::passes(&self.arbiter);
        let r = Self::passes(&self.regorus);
        let mut s = String::new();
        s.push_str("# OPA conformance results\n\n");
        s.push_str(
            "Written by `cargo test -p arbiter-conformance --test opa_conformance`; do not edit.\n",
        );
        s.push_str("Suite: OPA's `v1/test/cases/testdata/v1` (see `../shared/conformance/opa-cases/README.md`).\n\n");
        s.push_str(&format!(
            "| setup | passing | of | rate |\n|---|---|---|---|\n| arbiter (regorus + arbiter built-ins) | {a} | {total} | {:.1}% |\n| regorus alone | {r} | {total} | {:.1}% |\n\n",
            pct(a, total),
            pct(r, total)
        ));
        s.push_str(
            "## Per folder\n\n| folder | cases | arbiter | regorus alone |\n|---|---|---|---|\n",
        );
        for (name, f) in &folders {
            s.push_str(&format!(
                "| {name} | {} | {} | {} |\n",
                f.total, f.arbiter, f.regorus
            ));
        }
        s.push_str("\n## Failing folders and why\n\n");
        for (name, f) in &folders {
            if f.arbiter == f.total {
                continue;
            }
            let mut causes: Vec<(&String, &usize)> = f.causes.iter().collect();
            causes.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
            let list: Vec<String> = causes
                .iter()
                .take(3)
                .map(|(c, n)| format!("{c} ({n})"))
                .collect();
            s.push_str(&format!(
                "- **{name}**: {} of {} failing — {}\n",
                f.total - f.arbiter,
                f.total,
                list.join("; ")
            ));
        }
        s
    }
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        #[expect(clippy::cast_precision_loss, reason = "a percentage for people")]
        let p = 100.0 * n as f64 / total as f64;
        p
    }
}

/// Fold case-specific detail out of a failure cause so causes group.
fn generalize(why: &str) -> String {
    if why.starts_with("wrong result") {
        return "wrong result".to_string();
    }
    if why.starts_with("error message differs") {
        return "error message differs from OPA's".to_string();
    }
    if let Some(rest) = why.strip_prefix("expected error") {
        let code = rest.split('`').nth(1).unwrap_or("");
        return format!("no error where OPA raises `{code}`");
    }
    why.to_string()
}

/// What the bytecode VM (RVM), which decides every served request it can compile, answers for
/// a case whose query is `data.<path> = x` (all but a few dozen of the suite's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmOutcome {
    /// Another kind of query, or policies that do not load (the interpreter's run covers those).
    NotApplicable,
    /// The VM does not compile the path, or stops with an error: the interpreter decides, as
    /// `arbiter serve` does then.
    Interpreter,
    /// The VM's answer is OPA's.
    Agrees,
    /// The VM answers, and not as OPA does: a served decision would be wrong.
    Disagrees(String),
}

/// The rule path of a `data.<path> = x` query.
fn queried_path(query: &str) -> Option<&str> {
    let (lhs, rhs) = query.split_once('=')?;
    let lhs = lhs.trim();
    let plain = lhs.strip_prefix("data.")?.split('.').all(|s| {
        s.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    });
    (rhs.trim() == "x" && plain).then_some(lhs)
}

/// Run one case on the VM, through arbiter's loader and `RvmDecider` as `arbiter serve` does.
pub fn run_case_on_vm(case: &Case) -> VmOutcome {
    match catch_unwind(AssertUnwindSafe(|| run_case_on_vm_inner(case))) {
        Ok(o) => o,
        Err(p) => VmOutcome::Disagrees(format!("panic: {}", panic_text(p.as_ref()))),
    }
}

fn run_case_on_vm_inner(case: &Case) -> VmOutcome {
    use arbiter_engine::rvm::RvmDecider;
    use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};

    let Some(path) = queried_path(&case.query).and_then(|p| DataRef::parse(p).ok()) else {
        return VmOutcome::NotApplicable;
    };
    let mut sources = PolicySources::default();
    for (i, m) in case.modules.iter().enumerate() {
        sources.add_rego(format!("test-{i}.rego"), m.clone());
    }
    if let Some(d) = &case.data {
        sources.add_data("data.json", d.clone());
    }
    let options = LoadOptions {
        eval_timeout: Some(Duration::from_secs(10)),
        strict_builtin_errors: case.strict_error,
        ..LoadOptions::default()
    };
    let Ok(set) = PolicySet::from_sources(&sources, &options) else {
        return VmOutcome::NotApplicable;
    };
    let Ok(vm) = RvmDecider::compile(&set, &path) else {
        return VmOutcome::Interpreter;
    };
    let Ok(input) = case_input(case) else {
        return VmOutcome::NotApplicable;
    };
    let input = input.unwrap_or(Value::Undefined);
    let Ok(got) = vm.evaluate(input) else {
        return VmOutcome::Interpreter;
    };
    let got_text = first_line(&got.to_string());
    let Some(want) = &case.want_result else {
        return VmOutcome::Disagrees(format!(
            "OPA raises `{}`, the VM answers {got_text}",
            case.want_error_code
                .as_deref()
                .or(case.want_error.as_deref())
                .unwrap_or("an error"),
        ));
    };
    let want = want.first().and_then(|b| b.get("x")).cloned();
    let agrees = match (&got, want) {
        (Value::Undefined, None) => true,
        (Value::Undefined, Some(_)) | (_, None) => false,
        (got, Some(mut want)) => {
            let mut got = to_json(got);
            if case.sort_bindings {
                sort_array(&mut got);
                sort_array(&mut want);
            }
            json_eq(&got, &want)
        }
    };
    if agrees {
        VmOutcome::Agrees
    } else {
        VmOutcome::Disagrees(format!("the VM answers {got_text}"))
    }
}

/// [`run_case_on_vm`] for every case, on `threads` threads with large stacks.
pub fn run_all_on_vm(cases: &[SuiteCase], threads: usize) -> Vec<VmOutcome> {
    run_parallel(cases, threads, run_case_on_vm, || {
        VmOutcome::Disagrees("not run".to_string())
    })
}

fn run_all(cases: &[SuiteCase], setup: Setup, threads: usize) -> Vec<Outcome> {
    run_parallel(
        cases,
        threads,
        |case| run_case(setup, case),
        || Outcome::Fail("not run".to_string()),
    )
}

/// `run` for every case, on `threads` threads with large stacks, in the cases' order;
/// `not_run` for a case no thread reached.
fn run_parallel<T: Send>(
    cases: &[SuiteCase],
    threads: usize,
    run: impl Fn(&Case) -> T + Sync,
    not_run: impl Fn() -> T,
) -> Vec<T> {
    let next = AtomicUsize::new(0);
    let out: Vec<Mutex<Option<T>>> = (0..cases.len()).map(|_| Mutex::new(None)).collect();
    let work = || {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(c) = cases.get(i) else { break };
            let o = run(&c.case);
            if let Ok(mut slot) = out[i].lock() {
                *slot = Some(o);
            }
        }
    };
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            // Deeply recursive policies need more stack than the default 2 MiB.
            if std::thread::Builder::new()
                .stack_size(256 << 20)
                .spawn_scoped(s, work)
                .is_err()
            {
                work();
            }
        }
    });
    out.into_iter()
        .map(|m| m.into_inner().ok().flatten().unwrap_or_else(&not_run))
        .collect()
}

//! `arbiter test PATH…`: run Rego tests (`test_*` rules, like `opa test`) and decision tests
//! (`*_test.yaml`), report in OPA's pretty or JSON shapes or as JUnit XML.
//!
//! Exit 0 when every test passed, or when no test was found (as `opa test`, with a notice on
//! stderr); 1 when one failed or errored, when tests were skipped (unless
//! `--exit-zero-on-skipped`), or when coverage is under `--threshold`; 2 when the policies,
//! tests or arguments could not be loaded.

use std::fmt::Write as _;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use arbiter_engine::testing::{
    self, CoverageReport, Outcome, TestKind, TestOptions, TestReport, TestResult, coverage,
};
use arbiter_engine::{PolicySources, RegoVersion};
use serde_json::{Value as Json, json};

use crate::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Pretty,
    Json,
    Junit,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub limits: crate::load_limits::LoadLimitArgs,
    /// Policy files or folders (policies, data, `*_test.rego`, `*_test.yaml`).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// List every test with its duration, and print() output.
    #[arg(short, long)]
    pub verbose: bool,
    /// Run only tests whose name matches this regular expression (`data.pkg.test_x`,
    /// `file: case name`).
    #[arg(short, long, value_name = "REGEX")]
    pub run: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "pretty")]
    pub format: Format,
    /// Report Rego line coverage.
    #[arg(short, long)]
    pub coverage: bool,
    /// With --coverage: fail when coverage is below this percentage.
    #[arg(long, value_name = "PCT", default_value_t = 0.0)]
    pub threshold: f64,
    /// Time limit for one test.
    #[arg(short, long, value_name = "DURATION", default_value = "5s")]
    pub timeout: String,
    /// Benchmark each passing test and report ns/op.
    #[arg(long)]
    pub bench: bool,
    /// With --bench: how long to repeat each test.
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    pub benchtime: String,
    /// Exit 0 even when tests were skipped (`todo_test_*`).
    #[arg(short = 'z', long)]
    pub exit_zero_on_skipped: bool,
    /// Accept pre-1.0 Rego syntax, as `opa --v0-compatible`.
    #[arg(long)]
    pub v0_compatible: bool,
    /// A built-in error in a Rego test is an error verdict; without it the expression is
    /// undefined and the test fails, as in `opa test`. Decision tests are always strict.
    #[arg(long)]
    pub strict_builtin_errors: bool,
    /// Istio's root namespace, as for `arbiter serve` [default: istio-system].
    #[arg(long, value_name = "NS")]
    pub istio_root_namespace: Option<String>,
    /// Allow a workload that no Istio ALLOW policy selects, as for `arbiter serve`.
    #[arg(long)]
    pub istio_allow_without_allow_policies: bool,
}

pub fn run(args: &Args) -> Exit {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    run_to(args, &mut stdout.lock(), &mut stderr.lock())
}

/// Run with the report written to `out` and problems to `err`.
pub fn run_to(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Exit {
    let usage = |err: &mut dyn Write, msg: String| {
        let _ = writeln!(err, "arbiter test: {msg}");
        Exit::Usage
    };
    let filter = match args.run.as_deref().map(regex::Regex::new).transpose() {
        Ok(f) => f,
        Err(e) => return usage(err, format!("--run: {e}")),
    };
    let timeout = match crate::serve::parse_duration(&args.timeout) {
        Ok(t) => t,
        Err(e) => return usage(err, format!("--timeout: {e}")),
    };
    let benchtime = match crate::serve::parse_duration(&args.benchtime) {
        Ok(t) => t,
        Err(e) => return usage(err, format!("--benchtime: {e}")),
    };
    if !(0.0..=100.0).contains(&args.threshold) {
        return usage(err, "--threshold must be between 0 and 100".into());
    }
    let sources = match PolicySources::discover_with(&args.paths, &[], &args.limits.limits()) {
        Ok(s) => s,
        Err(e) => {
            for d in &e.diagnostics {
                let _ = writeln!(err, "{d}");
            }
            return Exit::Usage;
        }
    };
    let options = TestOptions {
        check_request_reader: arbiter_ext_authz::protojson::authz_request,
        strict_builtin_errors: args.strict_builtin_errors,
        filter,
        timeout,
        coverage: args.coverage,
        bench: args.bench.then_some(benchtime),
        rego_version: if args.v0_compatible {
            RegoVersion::V0Compatible
        } else {
            RegoVersion::V1
        },
        istio: arbiter_engine::istio::IstioOptions {
            root_namespace: args
                .istio_root_namespace
                .clone()
                .unwrap_or_else(|| "istio-system".into()),
            allow_without_allow_policies: args.istio_allow_without_allow_policies,
        },
    };
    let report = match testing::run(&sources, &options) {
        Ok(r) => r,
        Err(e) => {
            for d in &e.diagnostics {
                let _ = writeln!(err, "{d}");
            }
            return Exit::Usage;
        }
    };
    let text = match args.format {
        Format::Pretty => pretty(&report, args.verbose, args.bench),
        Format::Json => {
            let tests = Json::Array(report.results.iter().map(result_json).collect());
            let doc = match &report.coverage {
                Some(c) => {
                    let mut doc = c.to_opa_json();
                    doc["tests"] = tests;
                    doc
                }
                None => tests,
            };
            serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"
        }
        Format::Junit => junit(&report),
    };
    let _ = out.write_all(text.as_bytes());
    let s = report.summary();
    let mut exit = Exit::Ok;
    if s.total == 0 {
        let _ = writeln!(
            err,
            "arbiter test: no tests found (Rego rules named test_*, or *_test.yaml files){}",
            if args.run.is_some() {
                " matching --run"
            } else {
                ""
            }
        );
        // As `opa test`: nothing ran, nothing failed (CI that filters with -r relies on it).
    }
    if s.fail + s.error > 0 || (s.skip > 0 && !args.exit_zero_on_skipped) {
        exit = Exit::Failed;
    }
    if let Some(c) = &report.coverage
        && c.percent() < args.threshold
    {
        let _ = writeln!(
            err,
            "Code coverage threshold not met: got {:.2} instead of {:.2}",
            c.percent(),
            args.threshold
        );
        if args.verbose {
            let _ = writeln!(err, "Lines not covered:");
            for f in &c.files {
                for (a, b) in coverage::ranges(&f.not_covered) {
                    let _ = if a == b {
                        writeln!(err, "\t{}:{a}", f.file)
                    } else {
                        writeln!(err, "\t{}:{a}-{b}", f.file)
                    };
                }
            }
        }
        exit = Exit::Failed;
    }
    exit
}

const RULE: &str =
    "--------------------------------------------------------------------------------";

fn line_for(r: &TestResult) -> String {
    let name = match r.kind {
        TestKind::Rego => r.full_name(),
        TestKind::Decision => r.name.clone(),
    };
    match r.outcome {
        Outcome::Skip => format!("{name}: SKIPPED"),
        _ => format!("{name}: {} ({:?})", r.outcome.label(), r.duration),
    }
}

/// The detail under a failed or erroring test, indented.
fn detail(r: &TestResult) -> String {
    let mut s = String::new();
    match &r.outcome {
        Outcome::Fail(f) => {
            match &f.failed_at {
                Some(at) => {
                    let _ = writeln!(s, "  {}:{}:{}: {}", at.file, at.line, at.col, f.message);
                }
                None => {
                    let loc = if r.line > 0 {
                        format!("{}:{}: ", r.file, r.line)
                    } else {
                        format!("{}: ", r.file)
                    };
                    let _ = writeln!(s, "  {loc}{}", f.message);
                }
            }
            for m in &f.mismatches {
                let _ = writeln!(s, "    {}:", m.what);
                let _ = writeln!(s, "      expected: {}", m.expected);
                let _ = writeln!(s, "      actual:   {}", m.actual);
            }
        }
        Outcome::Error(e) => {
            for l in e.lines() {
                let _ = writeln!(s, "  {l}");
            }
        }
        Outcome::Pass | Outcome::Skip => {}
    }
    s
}

/// OPA's pretty report: failures (or, with -v, everything) grouped by file, then the counts.
fn pretty(report: &TestReport, verbose: bool, bench: bool) -> String {
    let mut s = String::new();
    if bench {
        for r in &report.results {
            match (&r.bench, &r.outcome) {
                (Some(b), _) => {
                    let _ = writeln!(
                        s,
                        "{}\t{:>10}\t{:>12.0} ns/op",
                        r.full_name(),
                        b.iterations,
                        b.ns_per_op
                    );
                }
                (None, _) => {
                    let _ = writeln!(s, "{}", line_for(r));
                    s.push_str(&detail(r));
                }
            }
        }
    } else {
        let mut current_file: Option<&str> = None;
        for r in &report.results {
            let interesting = matches!(r.outcome, Outcome::Fail(_) | Outcome::Error(_));
            if !(verbose || interesting) {
                continue;
            }
            if current_file != Some(r.file.as_str()) {
                if current_file.is_some() {
                    s.push('\n');
                }
                let _ = writeln!(s, "{}:", r.file);
                current_file = Some(r.file.as_str());
            }
            let _ = writeln!(s, "{}", line_for(r));
            s.push_str(&detail(r));
            if verbose || interesting {
                for o in &r.output {
                    let _ = writeln!(s, "  {o}");
                }
            }
        }
    }
    let sum = report.summary();
    if !s.is_empty() {
        let _ = writeln!(s, "{RULE}");
    }
    let n = sum.total;
    if sum.pass > 0 {
        let _ = writeln!(s, "PASS: {}/{n}", sum.pass);
    }
    if sum.fail > 0 {
        let _ = writeln!(s, "FAIL: {}/{n}", sum.fail);
    }
    if sum.skip > 0 {
        let _ = writeln!(s, "SKIPPED: {}/{n}", sum.skip);
    }
    if sum.error > 0 {
        let _ = writeln!(s, "ERROR: {}/{n}", sum.error);
    }
    if let Some(c) = &report.coverage {
        s.push_str(&coverage_table(c));
    }
    s
}

fn coverage_table(c: &CoverageReport) -> String {
    let mut s = format!("{RULE}\nCOVERAGE\n");
    let width = c
        .files
        .iter()
        .map(|f| f.file.len())
        .max()
        .unwrap_or(5)
        .max(5);
    for f in &c.files {
        let total = f.covered.len() + f.not_covered.len();
        let missing: Vec<String> = coverage::ranges(&f.not_covered)
            .into_iter()
            .map(|(a, b)| {
                if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                }
            })
            .collect();
        let _ = write!(
            s,
            "{:<width$}  {:>6.2}%  {:>4}/{:<4}",
            f.file,
            f.percent(),
            f.covered.len(),
            total
        );
        if !missing.is_empty() {
            let _ = write!(s, "  not covered: {}", missing.join(", "));
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "{:<width$}  {:>6.2}%  {:>4}/{:<4}",
        "total",
        c.percent(),
        c.covered_lines(),
        c.covered_lines() + c.not_covered_lines()
    );
    s
}

/// One result in OPA's JSON shape (`location`, `package`, `name`, `fail`, `error`, `skip`,
/// `duration` in ns), plus `kind`, `failed_at` and `mismatches`.
fn result_json(r: &TestResult) -> Json {
    let mut o = json!({
        "location": {"file": r.file, "row": r.line, "col": r.col},
        "package": r.package,
        "name": r.name,
        "kind": match r.kind { TestKind::Rego => "rego", TestKind::Decision => "decision" },
        "duration": u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
    });
    match &r.outcome {
        Outcome::Pass => {}
        Outcome::Skip => o["skip"] = json!(true),
        Outcome::Error(e) => o["error"] = json!({"message": e}),
        Outcome::Fail(f) => {
            o["fail"] = json!(true);
            o["message"] = json!(f.message);
            if let Some(at) = &f.failed_at {
                o["failed_at"] = json!({
                    "location": {"file": at.file, "row": at.line, "col": at.col},
                    "text": at.text,
                });
            }
            if !f.mismatches.is_empty() {
                o["mismatches"] = Json::Array(
                    f.mismatches
                        .iter()
                        .map(
                            |m| json!({"what": m.what, "expected": m.expected, "actual": m.actual}),
                        )
                        .collect(),
                );
            }
        }
    }
    if !r.output.is_empty() {
        o["output"] = json!(r.output.join("\n"));
    }
    if let Some(b) = &r.bench {
        o["benchmark_result"] = json!({"N": b.iterations, "ns_per_op": b.ns_per_op});
    }
    o
}

/// XML 1.0 cannot carry most control characters, even escaped: they are written as `\u{..}`
/// (quick-xml escapes markup, not these).
fn xml_text(s: &str) -> std::borrow::Cow<'_, str> {
    if !s
        .chars()
        .any(|c| (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r'))
    {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

fn secs(d: Duration) -> String {
    format!("{:.6}", d.as_secs_f64())
}

/// JUnit XML, one `<testsuite>` per file, as CI systems read it (written by quick-xml).
fn junit(report: &TestReport) -> String {
    use quick_xml::events::{BytesDecl, BytesEnd, BytesStart, BytesText, Event};
    let sum = report.summary();
    let total: Duration = report.results.iter().map(|r| r.duration).sum();
    let mut w = quick_xml::Writer::new_with_indent(Vec::new(), b' ', 2);
    // Writing into a Vec cannot fail.
    let mut put = |e: Event<'_>| {
        let _ = w.write_event(e);
    };
    put(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)));
    let (tests, failures, errors, skipped) = (
        sum.total.to_string(),
        sum.fail.to_string(),
        sum.error.to_string(),
        sum.skip.to_string(),
    );
    put(Event::Start(BytesStart::new("testsuites").with_attributes(
        [
            ("name", "arbiter"),
            ("tests", tests.as_str()),
            ("failures", failures.as_str()),
            ("errors", errors.as_str()),
            ("skipped", skipped.as_str()),
            ("time", secs(total).as_str()),
        ],
    )));
    let mut files: Vec<&str> = Vec::new();
    for r in &report.results {
        if !files.contains(&r.file.as_str()) {
            files.push(&r.file);
        }
    }
    for file in files {
        let rs: Vec<&TestResult> = report.results.iter().filter(|r| r.file == file).collect();
        let count =
            |f: fn(&Outcome) -> bool| rs.iter().filter(|r| f(&r.outcome)).count().to_string();
        put(Event::Start(BytesStart::new("testsuite").with_attributes(
            [
                ("name", xml_text(file).as_ref()),
                ("tests", rs.len().to_string().as_str()),
                (
                    "failures",
                    count(|o| matches!(o, Outcome::Fail(_))).as_str(),
                ),
                ("errors", count(|o| matches!(o, Outcome::Error(_))).as_str()),
                ("skipped", count(|o| matches!(o, Outcome::Skip)).as_str()),
                ("time", secs(rs.iter().map(|r| r.duration).sum()).as_str()),
            ],
        )));
        for r in rs {
            let case = BytesStart::new("testcase").with_attributes([
                ("name", xml_text(&r.name).as_ref()),
                ("classname", xml_text(&r.package).as_ref()),
                ("file", xml_text(&r.file).as_ref()),
                ("line", r.line.to_string().as_str()),
                ("time", secs(r.duration).as_str()),
            ]);
            let (tag, message, body) = match &r.outcome {
                Outcome::Pass => {
                    put(Event::Empty(case));
                    continue;
                }
                Outcome::Skip => ("skipped", None, None),
                Outcome::Fail(f) => ("failure", Some(f.message.clone()), Some(detail(r))),
                Outcome::Error(e) => (
                    "error",
                    Some(e.lines().next().unwrap_or("error").to_string()),
                    Some(e.clone()),
                ),
            };
            put(Event::Start(case));
            let mut inner = BytesStart::new(tag);
            if let Some(m) = &message {
                inner.push_attribute(("message", xml_text(m).as_ref()));
            }
            match &body {
                None => put(Event::Empty(inner)),
                Some(b) => {
                    put(Event::Start(inner));
                    put(Event::Text(BytesText::new(&xml_text(b))));
                    put(Event::End(BytesEnd::new(tag)));
                }
            }
            put(Event::End(BytesEnd::new("testcase")));
        }
        put(Event::End(BytesEnd::new("testsuite")));
    }
    put(Event::End(BytesEnd::new("testsuites")));
    let mut out = String::from_utf8(w.into_inner()).unwrap_or_default();
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    /// Control characters XML 1.0 cannot carry are spelled out; markup is left to quick-xml.
    #[test]
    fn xml_text_spells_out_control_characters() {
        assert_eq!(super::xml_text("a\u{1}b\tc"), "a\\u{1}b\tc");
        assert!(matches!(
            super::xml_text("<ok & fine>"),
            std::borrow::Cow::Borrowed("<ok & fine>")
        ));
    }
}

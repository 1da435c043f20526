//! The policy test runner behind `arbiter test`.
//!
//! Two kinds of tests run side by side:
//!
//! - **Rego tests**, with `opa test`'s conventions: every rule whose name starts with `test_`, in
//!   any package, is a test that passes when it evaluates to `true`; `todo_test_` rules are
//!   reported as skipped; `with` mocks input, data and functions; two rules with the same name
//!   are two tests (`test_x`, `test_x#01`). A failing test names the first expression of its
//!   body that did not hold, with the values on both sides of a comparison.
//! - **Decision tests** (`*_test.yaml`, see [`decision`]): requests decided exactly as
//!   `arbiter serve` decides them — CEL and Rego together, through the same input building,
//!   identity and deny-overrides — against expected outcomes.
//!
//! Coverage comes from regorus's per-expression coverage, merged over all Rego tests.

use std::time::Duration;

use crate::diagnostic::LoadError;
use crate::loader::{PolicySources, RegoVersion};

pub mod coverage;
pub mod decision;
pub mod rego;

pub use coverage::{CoverageReport, FileCoverage};

/// How tests run.
#[derive(Debug, Clone)]
pub struct TestOptions {
    /// Run only tests whose full name matches (`data.pkg.test_x`, `file: case`).
    pub filter: Option<regex::Regex>,
    /// Wall-clock limit for one test.
    pub timeout: Duration,
    /// Gather Rego coverage.
    pub coverage: bool,
    /// Benchmark each passing test for about this long.
    pub bench: Option<Duration>,
    pub rego_version: RegoVersion,
    /// How Istio AuthorizationPolicies apply (as `arbiter serve` is configured).
    pub istio: crate::istio::IstioOptions,
    /// Reads decision tests' whole `CheckRequest`s (the server's converter; see
    /// [`crate::request::CheckRequestReader`]).
    pub check_request_reader: crate::request::CheckRequestReader,
    /// A built-in error inside a Rego test is an error verdict. Off by default, as in
    /// `opa test`: the failing expression is undefined and the test fails. Decision tests
    /// always decide as the server does (strict).
    pub strict_builtin_errors: bool,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            filter: None,
            timeout: Duration::from_secs(5),
            coverage: false,
            bench: None,
            rego_version: RegoVersion::V1,
            istio: crate::istio::IstioOptions::default(),
            check_request_reader: crate::request::no_check_request_reader,
            strict_builtin_errors: false,
        }
    }
}

/// Which runner a test belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestKind {
    Rego,
    Decision,
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    Fail(Failure),
    /// The test could not be evaluated (an evaluation error, a timeout, a bad request).
    Error(String),
    Skip,
}

impl Outcome {
    /// OPA's word for it.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail(_) => "FAIL",
            Outcome::Error(_) => "ERROR",
            Outcome::Skip => "SKIPPED",
        }
    }
}

/// Why a test failed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Failure {
    /// One sentence.
    pub message: String,
    /// Rego: the first expression of the test body that did not hold.
    pub failed_at: Option<FailedAt>,
    /// Expected and actual values.
    pub mismatches: Vec<Mismatch>,
}

/// Where a Rego test stopped holding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedAt {
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// The expression's text, with its `with` modifiers.
    pub text: String,
}

/// One expected value and what was found instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// What was compared (`allowed`, `headers.x-user`, or the left operand of a comparison).
    pub what: String,
    pub expected: String,
    pub actual: String,
}

/// How fast a test ran, repeated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bench {
    pub iterations: u64,
    pub ns_per_op: f64,
}

/// One test's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TestResult {
    pub kind: TestKind,
    pub file: String,
    pub line: u32,
    pub col: u32,
    /// Rego: the package (`data.envoy.authz_test`). Decision tests: the decision path.
    pub package: String,
    /// Rego: the rule name (`test_x`, `test_x#01`). Decision tests: the case name.
    pub name: String,
    pub outcome: Outcome,
    pub duration: Duration,
    /// `print()` output.
    pub output: Vec<String>,
    pub bench: Option<Bench>,
}

impl TestResult {
    /// The name `-r` matches and reports show.
    pub fn full_name(&self) -> String {
        match self.kind {
            TestKind::Rego => format!("{}.{}", self.package, self.name),
            TestKind::Decision => format!("{}: {}", self.file, self.name),
        }
    }
}

/// Everything one run found.
#[derive(Debug, Clone, Default)]
pub struct TestReport {
    pub results: Vec<TestResult>,
    pub coverage: Option<CoverageReport>,
}

/// Counts by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub total: usize,
    pub pass: usize,
    pub fail: usize,
    pub error: usize,
    pub skip: usize,
}

impl TestReport {
    pub fn summary(&self) -> Summary {
        let mut s = Summary {
            total: self.results.len(),
            ..Summary::default()
        };
        for r in &self.results {
            match r.outcome {
                Outcome::Pass => s.pass += 1,
                Outcome::Fail(_) => s.fail += 1,
                Outcome::Error(_) => s.error += 1,
                Outcome::Skip => s.skip += 1,
            }
        }
        s
    }
}

/// Run every Rego test and decision test found in `sources`.
///
/// Load and compile problems (in policies, Rego tests or decision-test files) are a
/// [`LoadError`]: nothing runs.
pub fn run(sources: &PolicySources, options: &TestOptions) -> Result<TestReport, LoadError> {
    // Parse decision tests first: a typo there is a load error like any other.
    let decision_files = decision::parse_all(sources, options.check_request_reader)?;
    let mut report = rego::run(sources, options)?;
    report
        .results
        .extend(decision::run(sources, &decision_files, options)?);
    Ok(report)
}

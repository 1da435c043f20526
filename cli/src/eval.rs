//! `arbiter eval`: the `opa eval` subset people script against.
//!
//! `-f json` prints exactly the shape of `opa eval -f json`:
//! `{"result":[{"expressions":[{"value":…,"text":…,"location":{"row":…,"col":…}}],"bindings":{…}}]}`
//! (an undefined result prints `{}`), and errors as
//! `{"errors":[{"message":…,"code":…,"location":{"file":…,"row":…,"col":…}}]}` with exit status 1.

use std::path::PathBuf;

use arbiter_engine::value::{from_json, to_json};
use arbiter_engine::{Diagnostic, LoadOptions, PolicySet, PolicySources, RegoVersion};
use serde_json::{Map, Value as Json, json};

use crate::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// OPA's JSON result set.
    Json,
    /// Expression values only; strings without quotes.
    Raw,
    /// Human-readable: the value, or a table of bindings.
    Pretty,
    /// Each result's expression values as a JSON array, one per line (OPA's `values`).
    Values,
    /// Each result's bindings as a JSON object, one per line (OPA's `bindings`).
    Bindings,
}

/// `opa eval -t`: arbiter evaluates Rego only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    Rego,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub limits: crate::load_limits::LoadLimitArgs,
    /// The Rego query, e.g. `data.envoy.authz.allow`.
    pub query: String,
    /// Policy or data file or folder (repeatable).
    #[arg(short = 'd', long = "data", value_name = "PATH")]
    pub data: Vec<PathBuf>,
    /// A bundle: a `.tar.gz` or a folder in bundle layout (repeatable), as `opa eval -b`.
    #[arg(short = 'b', long = "bundle", value_name = "PATH")]
    pub bundle: Vec<PathBuf>,
    /// The evaluation target; only `rego`.
    #[arg(short = 't', long = "target", value_enum)]
    pub target: Option<Target>,
    /// Stop the evaluation after this long (`50ms`, `2s`); none by default, as in `opa eval`.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Add the evaluation's timers to the JSON output (`metrics`), as `opa eval --metrics`.
    #[arg(long)]
    pub metrics: bool,
    /// Add the Rego lines the evaluation covered to the JSON output (`coverage`, OPA's shape),
    /// as `opa eval --coverage`.
    #[arg(long)]
    pub coverage: bool,
    /// Evaluate the query in this package (`envoy.authz`): its bare names are that package's
    /// rules, as `opa eval --package`.
    #[arg(long, value_name = "PACKAGE", conflicts_with = "coverage")]
    pub package: Option<String>,
    /// Input document (JSON, or YAML by extension); `-` reads stdin.
    #[arg(short = 'i', long = "input", value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Read the input document from stdin.
    #[arg(short = 'I', long = "stdin-input", conflicts_with = "input")]
    pub stdin_input: bool,
    /// Output format.
    #[arg(short = 'f', long = "format", value_enum, default_value_t = Format::Json)]
    pub format: Format,
    /// Exit with status 1 when the result is undefined.
    #[arg(long)]
    pub fail: bool,
    /// Exit with status 1 when the result is defined.
    #[arg(long, conflicts_with = "fail")]
    pub fail_defined: bool,
    /// Accept pre-1.0 Rego syntax, as `opa --v0-compatible`.
    #[arg(long)]
    pub v0_compatible: bool,
    /// A built-in error is an error (exit 1), as `opa eval --strict-builtin-errors`; without it
    /// the failing expression is undefined, as in `opa eval`. Decisions (`serve`, `test`,
    /// `bench`) are always strict.
    #[arg(long)]
    pub strict_builtin_errors: bool,
}

/// One error in OPA's JSON shape.
fn error_json(d: &Diagnostic) -> Json {
    let mut e = Map::new();
    e.insert("message".into(), json!(d.message));
    e.insert("code".into(), json!(d.code));
    if d.line != 0 {
        e.insert(
            "location".into(),
            json!({"file": d.file, "row": d.line, "col": d.col}),
        );
    }
    Json::Object(e)
}

fn print_errors(format: Format, diagnostics: &[Diagnostic]) {
    match format {
        Format::Json => {
            let errors: Vec<Json> = diagnostics.iter().map(error_json).collect();
            crate::outln!("{}", pretty(&json!({ "errors": errors })));
        }
        Format::Raw | Format::Pretty | Format::Values | Format::Bindings => {
            let n = diagnostics.len();
            eprintln!("{n} error{} occurred:", if n == 1 { "" } else { "s" });
            for d in diagnostics {
                eprintln!("{d}");
            }
        }
    }
}

/// JSON indented by two spaces, as OPA prints it.
fn pretty(v: &Json) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// The query results in `opa eval -f json` shape.
pub fn results_json(results: &arbiter_engine::regorus::QueryResults) -> Json {
    if results.result.is_empty() {
        return json!({});
    }
    let list: Vec<Json> = results
        .result
        .iter()
        .map(|r| {
            let expressions: Vec<Json> = r
                .expressions
                .iter()
                .map(|e| {
                    let mut m = Map::new();
                    m.insert("value".into(), to_json(&e.value));
                    m.insert("text".into(), json!(e.text.as_ref()));
                    m.insert(
                        "location".into(),
                        json!({"row": e.location.row, "col": e.location.col}),
                    );
                    Json::Object(m)
                })
                .collect();
            let mut m = Map::new();
            m.insert("expressions".into(), Json::Array(expressions));
            let bindings = to_json(&r.bindings);
            if bindings.as_object().is_some_and(|b| !b.is_empty()) {
                m.insert("bindings".into(), bindings);
            }
            Json::Object(m)
        })
        .collect();
    json!({ "result": list })
}

fn print_results(format: Format, results: &arbiter_engine::regorus::QueryResults) {
    match format {
        Format::Json => crate::outln!("{}", pretty(&results_json(results))),
        Format::Raw => {
            for r in &results.result {
                for e in &r.expressions {
                    match to_json(&e.value) {
                        Json::String(s) => crate::outln!("{s}"),
                        other => crate::outln!("{}", pretty(&other)),
                    }
                }
            }
        }
        Format::Pretty => print_pretty(results),
        Format::Values => {
            for r in &results.result {
                let line: Vec<Json> = r.expressions.iter().map(|e| to_json(&e.value)).collect();
                crate::outln!("{}", pretty(&Json::Array(line)));
            }
        }
        Format::Bindings => {
            for r in &results.result {
                let b = to_json(&r.bindings);
                let b = if b.is_object() { b } else { json!({}) };
                crate::outln!("{}", pretty(&b));
            }
        }
    }
}

fn print_pretty(results: &arbiter_engine::regorus::QueryResults) {
    if results.result.is_empty() {
        crate::outln!("undefined");
        return;
    }
    let has_bindings = results.result.iter().any(|r| {
        to_json(&r.bindings)
            .as_object()
            .is_some_and(|b| !b.is_empty())
    });
    if !has_bindings && results.result.len() == 1 && results.result[0].expressions.len() == 1 {
        crate::outln!(
            "{}",
            pretty(&to_json(&results.result[0].expressions[0].value))
        );
        return;
    }
    // A table: one column per binding, one row per result.
    let mut columns: Vec<String> = Vec::new();
    for r in &results.result {
        if let Json::Object(b) = to_json(&r.bindings) {
            for k in b.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let rows: Vec<Vec<String>> = results
        .result
        .iter()
        .map(|r| {
            let b = to_json(&r.bindings);
            columns
                .iter()
                .map(|c| b.get(c).map_or(String::new(), Json::to_string))
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([c.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let rule: String = widths
        .iter()
        .map(|w| format!("+{}", "-".repeat(w + 2)))
        .collect::<String>()
        + "+";
    let line = |cells: &[String]| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("| {c:<w$} "))
            .collect::<String>()
            + "|"
    };
    crate::outln!("{rule}");
    crate::outln!("{}", line(&columns));
    crate::outln!("{rule}");
    for r in &rows {
        crate::outln!("{}", line(r));
    }
    crate::outln!("{rule}");
}

/// What `arbiter eval -f json` prints for `query` over Rego `modules` (name, text), a `data`
/// document and an `input` (without `--strict-builtin-errors`), and whether it is an error:
/// the differential corpus compares this with `opa eval -f json`.
pub fn eval_json(
    query: &str,
    modules: &[(String, String)],
    data: Option<&Json>,
    input: Option<&Json>,
) -> (Json, bool) {
    let mut sources = PolicySources::default();
    for (name, text) in modules {
        sources.add_rego(name.clone(), text.clone());
    }
    if let Some(d) = data {
        sources.add_data("data.json", d.clone());
    }
    let options = LoadOptions {
        eval_timeout: None,
        strict_builtin_errors: false,
        ..LoadOptions::default()
    };
    let set = match PolicySet::from_sources(&sources, &options) {
        Ok(s) => s,
        Err(e) => {
            let errors: Vec<Json> = e.diagnostics.iter().map(error_json).collect();
            return (json!({ "errors": errors }), true);
        }
    };
    match set.query(query, input.map(from_json)) {
        Ok(results) => (results_json(&results), false),
        Err(e) => {
            let d = e.location.clone().unwrap_or_else(|| {
                Diagnostic::file("query", e.message.clone()).with_code(e.kind.opa_code())
            });
            (json!({ "errors": [error_json(&d)] }), true)
        }
    }
}

pub fn run(args: &Args) -> Exit {
    let options = LoadOptions {
        rego_version: if args.v0_compatible {
            RegoVersion::V0Compatible
        } else {
            RegoVersion::V1
        },
        // No deadline unless --timeout, as in `opa eval`.
        eval_timeout: match args.timeout.as_deref().map(crate::serve::parse_duration) {
            None => None,
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                eprintln!("arbiter eval: --timeout: {e}");
                return Exit::Usage;
            }
        },
        strict_builtin_errors: args.strict_builtin_errors,
        ..LoadOptions::default()
    };
    let limits = args.limits.limits();
    let sources = PolicySources::discover_with(&args.data, &[], &limits).and_then(|mut sources| {
        for b in &args.bundle {
            let bundle = arbiter_engine::bundle::load_with(b, None, &limits).map_err(|e| {
                arbiter_engine::LoadError::one(Diagnostic::file(b.display().to_string(), e))
            })?;
            sources.extend(bundle.sources);
        }
        sources.check_limits(&limits).map_err(|e| {
            arbiter_engine::LoadError::one(Diagnostic::file(
                args.data
                    .iter()
                    .chain(&args.bundle)
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                e,
            ))
        })?;
        Ok(sources)
    });
    let set = sources.and_then(|s| PolicySet::from_sources(&s, &options));
    let set = match set {
        Ok(s) => s,
        Err(e) => {
            print_errors(args.format, &e.diagnostics);
            return Exit::Failed;
        }
    };
    let input_path = if args.stdin_input {
        Some(PathBuf::from("-"))
    } else {
        args.input.clone()
    };
    let input = match input_path.as_deref().map(crate::input::read_document) {
        None => None,
        Some(Ok(doc)) => Some(from_json(&doc)),
        Some(Err(message)) => {
            print_errors(
                args.format,
                &[Diagnostic::file("input", message).with_code("input_error")],
            );
            return Exit::Failed;
        }
    };
    let started = std::time::Instant::now();
    let options = arbiter_engine::policy_set::QueryOptions {
        package: args.package.as_deref(),
        coverage: args.coverage,
    };
    let (queried, coverage) = set.query_with(&args.query, input, &options);
    let eval_ns = started.elapsed().as_nanos();
    match queried {
        Ok(results) => {
            if (args.metrics || coverage.is_some()) && args.format == Format::Json {
                let mut out = results_json(&results);
                if let Json::Object(m) = &mut out {
                    if args.metrics {
                        m.insert(
                            "metrics".into(),
                            json!({"timer_rego_query_eval_ns": eval_ns}),
                        );
                    }
                    if let Some(c) = &coverage {
                        m.insert("coverage".into(), c.to_opa_json());
                    }
                }
                crate::outln!("{}", pretty(&out));
            } else {
                print_results(args.format, &results);
            }
            let defined = !results.result.is_empty();
            if (args.fail && !defined) || (args.fail_defined && defined) {
                Exit::Failed
            } else {
                Exit::Ok
            }
        }
        Err(e) => {
            let d = e.location.clone().unwrap_or_else(|| {
                Diagnostic::file("query", e.message.clone()).with_code(e.kind.opa_code())
            });
            print_errors(args.format, &[d]);
            Exit::Failed
        }
    }
}

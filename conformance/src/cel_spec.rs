//! The CEL specification's "simple" conformance tests, run through arbiter's CEL setup (the same
//! environment, extensions and helper functions the policies get).
//!
//! The test files are protobuf text format; they are read with `prost-reflect` against
//! descriptors compiled from the suite's own `.proto` files by `protox` (pure Rust, no `protoc`).
//! A test passes when evaluation gives the expected value, or fails when an error is expected.
//! Messages and enums are the suite's own protos, through `arbiter_engine::cel::proto`.
//! Every test is type-checked first, as cel-go runs the suite, by arbiter's checker
//! (`arbiter_engine::cel::check`) unless it sets `disable_check`: a `check_only` test passes
//! on the check alone, a deduced type is compared where the test gives one, and a check error
//! fails a test that expects a value.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbiter_engine::cel::check::{self, Decls, Overload, Ty};
use arbiter_engine::cel::proto;
use cel::{Context, Value as CelValue};
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, Value as PValue};

pub const ENV: &str = "ARBITER_CEL_SPEC";

/// The outcome of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

#[derive(Debug, Clone)]
pub struct TestResult {
    pub file: String,
    pub section: String,
    pub name: String,
    /// A `check_only` test: type-checked, not evaluated.
    pub check_only: bool,
    pub outcome: Outcome,
}

/// Compile the suite's protos.
pub fn descriptor_pool(dir: &Path) -> Result<DescriptorPool, String> {
    let proto = dir.join("proto");
    let files = [
        "cel/expr/conformance/test/simple.proto",
        "cel/expr/conformance/proto2/test_all_types.proto",
        "cel/expr/conformance/proto2/test_all_types_extensions.proto",
        "cel/expr/conformance/proto3/test_all_types.proto",
    ];
    let fds = protox::compile(files, [&proto])
        .map_err(|e| format!("cannot compile the CEL suite's protos: {e}"))?;
    DescriptorPool::from_file_descriptor_set(fds).map_err(|e| e.to_string())
}

/// Every test file of the suite, parsed.
pub fn load(dir: &Path) -> Result<(DescriptorPool, Vec<(String, DynamicMessage)>), String> {
    let pool = descriptor_pool(dir)?;
    let desc = pool
        .get_message_by_name("cel.expr.conformance.test.SimpleTestFile")
        .ok_or("SimpleTestFile is not in the descriptors")?;
    let data = dir.join("tests/simple/testdata");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&data)
        .map_err(|e| format!("cannot read {}: {e}", data.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "textproto"))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for p in names {
        let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        let msg = DynamicMessage::parse_text_format(desc.clone(), &text)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let stem = p
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        out.push((stem, msg));
    }
    if out.is_empty() {
        return Err(format!("no test files under {}", data.display()));
    }
    Ok((pool, out))
}

fn field<'a>(m: &'a DynamicMessage, name: &str) -> Option<std::borrow::Cow<'a, PValue>> {
    m.has_field_by_name(name)
        .then(|| m.get_field_by_name(name))
        .flatten()
}

fn string(m: &DynamicMessage, name: &str) -> String {
    field(m, name)
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn boolean(m: &DynamicMessage, name: &str) -> bool {
    field(m, name).and_then(|v| v.as_bool()).unwrap_or(false)
}

fn messages(m: &DynamicMessage, name: &str) -> Vec<DynamicMessage> {
    m.get_field_by_name(name)
        .and_then(|v| {
            v.as_list()
                .map(|l| l.iter().filter_map(|x| x.as_message().cloned()).collect())
        })
        .unwrap_or_default()
}

/// `google.protobuf.Any`: the message it packs, as CEL sees it (a well-known type as its CEL
/// value).
fn any_value(pool: &DescriptorPool, any: &DynamicMessage) -> Result<CelValue, String> {
    let url = string(any, "type_url");
    let bytes = field(any, "value")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let name = url.rsplit('/').next().unwrap_or("");
    let desc = pool
        .get_message_by_name(name)
        .ok_or_else(|| format!("unknown message `{name}`"))?;
    let m = DynamicMessage::decode(desc, bytes).map_err(|e| e.to_string())?;
    proto::message_value(m).map_err(|e| e.to_string())
}

/// A `cel.expr.Value` as the `cel` crate's value.
fn expected_value(pool: &DescriptorPool, v: &DynamicMessage) -> Result<CelValue, String> {
    let get = |n: &str| field(v, n);
    if v.has_field_by_name("null_value") {
        return Ok(CelValue::Null);
    }
    if let Some(b) = get("bool_value") {
        return Ok(CelValue::Bool(b.as_bool().unwrap_or(false)));
    }
    if let Some(i) = get("int64_value") {
        return Ok(CelValue::Int(i.as_i64().unwrap_or(0)));
    }
    if let Some(u) = get("uint64_value") {
        return Ok(CelValue::UInt(u.as_u64().unwrap_or(0)));
    }
    if let Some(d) = get("double_value") {
        return Ok(CelValue::Float(d.as_f64().unwrap_or(0.0)));
    }
    if let Some(s) = get("string_value") {
        return Ok(CelValue::String(Arc::new(
            s.as_str().unwrap_or("").to_string(),
        )));
    }
    if let Some(b) = get("bytes_value") {
        return Ok(CelValue::Bytes(Arc::new(
            b.as_bytes().map(|b| b.to_vec()).unwrap_or_default(),
        )));
    }
    if let Some(l) = get("list_value") {
        let l = l.as_message().cloned().ok_or("bad list")?;
        let items = messages(&l, "values")
            .iter()
            .map(|x| expected_value(pool, x))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(CelValue::List(Arc::new(items)));
    }
    if let Some(m) = get("map_value") {
        let m = m.as_message().cloned().ok_or("bad map")?;
        let mut out: std::collections::HashMap<cel::objects::Key, CelValue> =
            std::collections::HashMap::new();
        for e in messages(&m, "entries") {
            let k = expected_value(
                pool,
                &field(&e, "key")
                    .and_then(|x| x.as_message().cloned())
                    .ok_or("map key")?,
            )?;
            let val = expected_value(
                pool,
                &field(&e, "value")
                    .and_then(|x| x.as_message().cloned())
                    .ok_or("map value")?,
            )?;
            let key = match k {
                CelValue::Int(i) => cel::objects::Key::Int(i),
                CelValue::UInt(u) => cel::objects::Key::Uint(u),
                CelValue::Bool(b) => cel::objects::Key::Bool(b),
                CelValue::String(s) => cel::objects::Key::String(s),
                _ => return Err("unsupported map key".into()),
            };
            out.insert(key, val);
        }
        return Ok(CelValue::Map(cel::objects::Map { map: Arc::new(out) }));
    }
    if let Some(a) = get("object_value") {
        return any_value(pool, a.as_message().ok_or("bad object")?);
    }
    if let Some(t) = get("type_value") {
        return Err(format!(
            "type values are not supported (`{}`)",
            t.as_str().unwrap_or("")
        ));
    }
    if let Some(e) = get("enum_value") {
        // legacy enums: an enum value is its number
        let e = e.as_message().ok_or("bad enum")?;
        return Ok(CelValue::Int(
            field(e, "value")
                .and_then(|v| v.as_i32())
                .map(i64::from)
                .unwrap_or(0),
        ));
    }
    Err("empty value".into())
}

/// Bindings (`map<string, ExprValue>`) as context variables.
fn bind(
    pool: &DescriptorPool,
    ctx: &mut Context<'_, '_>,
    test: &DynamicMessage,
) -> Result<(), String> {
    let Some(b) = field(test, "bindings") else {
        return Ok(());
    };
    let Some(map) = b.as_map() else {
        return Ok(());
    };
    for (k, v) in map {
        let MapKey::String(name) = k else { continue };
        let ev = v.as_message().ok_or("binding is not an ExprValue")?;
        let value = field(ev, "value")
            .and_then(|x| x.as_message().cloned())
            .ok_or_else(|| format!("binding `{name}` is not a plain value"))?;
        ctx.add_variable_from_value(name.clone(), expected_value(pool, &value)?);
    }
    Ok(())
}

/// A `cel.expr.Type` as the checker's type.
fn decl_type(t: &DynamicMessage) -> Ty {
    let prim = |n: i32| match n {
        1 => Ty::Bool,
        2 => Ty::Int,
        3 => Ty::Uint,
        4 => Ty::Double,
        5 => Ty::String,
        6 => Ty::Bytes,
        _ => Ty::Dyn,
    };
    let enum_of = |name: &str| field(t, name).and_then(|v| v.as_enum_number());
    let msg_of = |name: &str| field(t, name).and_then(|v| v.as_message().cloned());
    if t.has_field_by_name("null") {
        return Ty::Null;
    }
    if let Some(p) = enum_of("primitive") {
        return prim(p);
    }
    if let Some(p) = enum_of("wrapper") {
        return Ty::Wrapper(Box::new(prim(p)));
    }
    if let Some(w) = enum_of("well_known") {
        return match w {
            2 => Ty::Timestamp,
            3 => Ty::Duration,
            _ => Ty::Dyn,
        };
    }
    if let Some(l) = msg_of("list_type") {
        let e = msg_of_in(&l, "elem_type").map_or(Ty::Dyn, |e| decl_type(&e));
        return Ty::List(Box::new(e));
    }
    if let Some(m) = msg_of("map_type") {
        let k = msg_of_in(&m, "key_type").map_or(Ty::Dyn, |e| decl_type(&e));
        let v = msg_of_in(&m, "value_type").map_or(Ty::Dyn, |e| decl_type(&e));
        return Ty::Map(Box::new(k), Box::new(v));
    }
    if t.has_field_by_name("message_type") {
        let name = string(t, "message_type");
        return match name.as_str() {
            "google.protobuf.Timestamp" => Ty::Timestamp,
            "google.protobuf.Duration" => Ty::Duration,
            "google.protobuf.Any" | "google.protobuf.Value" => Ty::Dyn,
            "google.protobuf.Struct" => Ty::Map(Box::new(Ty::String), Box::new(Ty::Dyn)),
            "google.protobuf.ListValue" => Ty::List(Box::new(Ty::Dyn)),
            _ => Ty::Message(name.into()),
        };
    }
    if t.has_field_by_name("type_param") {
        return Ty::Param(type_param(&string(t, "type_param")));
    }
    if let Some(inner) = msg_of("type") {
        return Ty::Type(Box::new(decl_type(&inner)));
    }
    if t.has_field_by_name("error") {
        return Ty::Error;
    }
    if let Some(a) = msg_of("abstract_type") {
        let params = messages(&a, "parameter_types")
            .iter()
            .map(decl_type)
            .collect();
        return Ty::Opaque(string(&a, "name").into(), params);
    }
    Ty::Dyn
}

fn msg_of_in(m: &DynamicMessage, name: &str) -> Option<DynamicMessage> {
    field(m, name).and_then(|v| v.as_message().cloned())
}

/// A declared type parameter's number (`A` and the like are single letters).
fn type_param(name: &str) -> u8 {
    name.bytes().next().map_or(0, |b| b.wrapping_sub(b'A'))
}

/// The checker's declarations for a test: the standard library, the suite's protos, the
/// test's `type_env` and its container.
fn test_decls(pool: &DescriptorPool, test: &DynamicMessage) -> Decls {
    let mut d = Decls::standard().with_pool(pool.clone());
    d.set_container(&string(test, "container"));
    for decl in messages(test, "type_env") {
        let name = string(&decl, "name");
        if let Some(ident) = msg_of_in(&decl, "ident") {
            let t = msg_of_in(&ident, "type").map_or(Ty::Dyn, |t| decl_type(&t));
            d.add_var(&name, t);
        }
        if let Some(f) = msg_of_in(&decl, "function") {
            for o in messages(&f, "overloads") {
                d.add_overload(
                    &name,
                    Overload {
                        member: boolean(&o, "is_instance_function"),
                        params: messages(&o, "params").iter().map(decl_type).collect(),
                        result: msg_of_in(&o, "result_type").map_or(Ty::Dyn, |t| decl_type(&t)),
                    },
                );
            }
        }
    }
    d
}

/// Type-checks the test's expression: its type, or the first problem.
fn type_check(
    pool: &DescriptorPool,
    env: &cel::Env,
    test: &DynamicMessage,
    expr: &str,
) -> Result<Ty, String> {
    let ast = env
        .parser()
        .parse(expr)
        .map_err(|e| format!("parse error: {e}"))?;
    check::check(&ast, &test_decls(pool, test)).map_err(|errors| {
        errors
            .first()
            .map_or_else(String::new, |e| e.message.clone())
    })
}

fn values_equal(a: &CelValue, b: &CelValue) -> bool {
    match (a, b) {
        (CelValue::Float(x), CelValue::Float(y)) => (x.is_nan() && y.is_nan()) || x == y,
        (CelValue::List(x), CelValue::List(y)) => {
            x.len() == y.len() && x.iter().zip(y.iter()).all(|(p, q)| values_equal(p, q))
        }
        (CelValue::Map(x), CelValue::Map(y)) => {
            x.map.len() == y.map.len()
                && x.map
                    .iter()
                    .all(|(k, v)| y.map.get(k).is_some_and(|w| values_equal(v, w)))
        }
        _ => a == b,
    }
}

fn run_test(pool: &DescriptorPool, test: &DynamicMessage) -> Outcome {
    let mut expr = string(test, "expr");
    // A type value is compared by asking CEL whether the result is that type (the `cel`
    // crate's `Value` has no type variant to compare with): `(expr) == T`, expected true.
    let type_value = field(test, "value")
        .and_then(|v| v.as_message().cloned())
        .and_then(|v| field(&v, "type_value").and_then(|t| t.as_str().map(str::to_string)));
    if let Some(t) = &type_value {
        expr = format!("({expr}) == {t}");
    }
    let mut env = if boolean(test, "disable_macros") {
        cel::Env::default().with_stdlib()
    } else {
        arbiter_engine::cel::env()
    };
    proto::register(&mut env, pool);
    let _ = env.add_extension(proto::extension);
    let container = string(test, "container");
    if !container.is_empty() && env.set_container(&container).is_err() {
        return Outcome::Fail(format!("bad container `{container}`"));
    }
    // The type check, as cel-go runs it before evaluation: a check_only test passes on it
    // alone; a deduced type is compared where the test gives one.
    let deduced = field(test, "typed_result")
        .and_then(|v| v.as_message().cloned())
        .and_then(|tr| msg_of_in(&tr, "deduced_type"));
    if boolean(test, "check_only") || !boolean(test, "disable_check") {
        let expects_error =
            test.has_field_by_name("eval_error") || test.has_field_by_name("any_eval_errors");
        match type_check(pool, &env, test, &string(test, "expr")) {
            Err(e) if !expects_error => return Outcome::Fail(format!("check error: {e}")),
            Err(_) => return Outcome::Pass,
            Ok(t) => {
                if let Some(want) = &deduced {
                    let want = decl_type(want);
                    if t != want {
                        return Outcome::Fail(format!("deduced type {t}, want {want}"));
                    }
                }
            }
        }
        if boolean(test, "check_only") {
            return Outcome::Pass;
        }
    }
    let program = match env.compile(&expr) {
        Ok(p) => p,
        Err(e) => {
            return if test.has_field_by_name("eval_error")
                || test.has_field_by_name("any_eval_errors")
            {
                Outcome::Pass
            } else {
                Outcome::Fail(format!(
                    "parse error: {}",
                    e.to_string().lines().next().unwrap_or("")
                ))
            };
        }
    };
    let mut root = Context::with_env(Arc::new(env));
    arbiter_engine::cel::add_functions(&mut root);
    proto::add_enum_constants(&mut root, pool);
    // the test's variables are declared at the top, where an absolute name (`.y`) finds them
    if let Err(e) = bind(pool, &mut root, test) {
        return Outcome::Fail(format!("unsupported binding: {e}"));
    }
    let result = program.execute(&root);
    if test.has_field_by_name("eval_error") || test.has_field_by_name("any_eval_errors") {
        return match result {
            Err(_) => Outcome::Pass,
            Ok(v) => Outcome::Fail(format!("expected an error, got {v:?}")),
        };
    }
    if test.has_field_by_name("unknown") || test.has_field_by_name("any_unknowns") {
        return Outcome::Fail("unknown values are not supported".into());
    }
    let expected = if type_value.is_some() {
        Ok(CelValue::Bool(true))
    } else if let Some(v) = field(test, "value").and_then(|v| v.as_message().cloned()) {
        expected_value(pool, &v)
    } else if let Some(tr) = field(test, "typed_result").and_then(|v| v.as_message().cloned()) {
        match field(&tr, "result").and_then(|v| v.as_message().cloned()) {
            Some(v) => expected_value(pool, &v),
            None => Err("typed_result without a result".into()),
        }
    } else {
        Ok(CelValue::Bool(true))
    };
    match (result, expected) {
        (_, Err(e)) => Outcome::Fail(format!("unsupported expectation: {e}")),
        (Err(e), _) => Outcome::Fail(format!("error: {e}")),
        (Ok(got), Ok(want)) if values_equal(&got, &want) => Outcome::Pass,
        (Ok(got), Ok(want)) => Outcome::Fail(format!("got {got:?}, want {want:?}")),
    }
}

/// Run every test of every file (on a thread with a large stack: the `cel` crate's parser
/// recurses deeply in debug builds).
pub fn run(pool: &DescriptorPool, files: &[(String, DynamicMessage)]) -> Vec<TestResult> {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .stack_size(1 << 30)
            .spawn_scoped(s, || run_on_this_thread(pool, files))
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    })
}

fn run_on_this_thread(
    pool: &DescriptorPool,
    files: &[(String, DynamicMessage)],
) -> Vec<TestResult> {
    let mut out = Vec::new();
    for (file, msg) in files {
        for section in messages(msg, "section") {
            let section_name = string(&section, "name");
            for test in messages(&section, "test") {
                let outcome = catch_unwind(AssertUnwindSafe(|| run_test(pool, &test)))
                    .unwrap_or_else(|_| Outcome::Fail("panic in the cel crate".into()));
                out.push(TestResult {
                    file: file.clone(),
                    section: section_name.clone(),
                    name: string(&test, "name"),
                    check_only: boolean(&test, "check_only"),
                    outcome,
                });
            }
        }
    }
    out
}

fn cause(section: &str, why: &str) -> String {
    if section.starts_with("strong_") {
        // arbiter's enums are the spec's legacy ones (ints), cel-go's default; the
        // strong-enum sections need enum-typed values (`type(GlobalEnum.GAZ) == GlobalEnum`)
        return "strong enums (arbiter's are legacy enums: ints)".into();
    }
    if why.contains("want 'known struct'") || why.contains("protobuf messages") {
        return "protobuf messages (not in the `cel` crate)".into();
    }
    if let Some(rest) = why.split("Undeclared reference to '").nth(1) {
        let name: String = rest.chars().take_while(|c| *c != '\'').collect();
        return format!("undeclared `{name}`");
    }
    if why.starts_with("got ") {
        return "wrong value".into();
    }
    if why.starts_with("parse error") {
        return "parse error".into();
    }
    let w = why.split(['(', '`']).next().unwrap_or(why).trim();
    w.chars().take(50).collect()
}

/// The markdown report: totals and the pass rate per file with the main failure causes.
pub fn markdown(results: &[TestResult]) -> String {
    #[derive(Default)]
    struct PerFile {
        tests: usize,
        passed: usize,
        check_only: usize,
        check_only_passed: usize,
        causes: BTreeMap<String, usize>,
    }
    let mut files: BTreeMap<&str, PerFile> = BTreeMap::new();
    for r in results {
        let e = files.entry(&r.file).or_default();
        e.tests += 1;
        e.check_only += usize::from(r.check_only);
        match &r.outcome {
            Outcome::Pass => {
                e.passed += 1;
                e.check_only_passed += usize::from(r.check_only);
            }
            Outcome::Fail(why) => {
                *e.causes.entry(cause(&r.section, why)).or_default() += 1;
            }
        }
    }
    let tests: usize = files.values().map(|f| f.tests).sum();
    let passed: usize = files.values().map(|f| f.passed).sum();
    let check_only: usize = files.values().map(|f| f.check_only).sum();
    let check_only_passed: usize = files.values().map(|f| f.check_only_passed).sum();
    let mut s = String::new();
    s.push_str("# CEL conformance results\n\n");
    s.push_str(
        "Written by `cargo test -p arbiter-conformance --test cel_conformance`; do not edit.\n",
    );
    s.push_str("Suite: cel-spec `tests/simple/testdata` (see `../shared/conformance/cel-spec/README.md`), run through arbiter's CEL setup: each test type-checked by arbiter's checker (unless it sets `disable_check`), then evaluated (unless it is `check_only`).\n\n");
    s.push_str(&format!(
        "Passing: **{passed} of {tests}** tests ({:.1}%), of which {check_only_passed} of {check_only} `check_only` tests.\n\n",
        if tests == 0 { 0.0 } else { 100.0 * passed as f64 / tests as f64 }
    ));
    s.push_str("| file | tests | passing | rate | check_only (passing) | main failure causes |\n|---|---|---|---|---|---|\n");
    for (f, pf) in &files {
        let mut cs: Vec<(&String, &usize)> = pf.causes.iter().collect();
        cs.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let causes: Vec<String> = cs
            .iter()
            .take(3)
            .map(|(c, n)| format!("{c} ({n})"))
            .collect();
        let rate = if pf.tests == 0 {
            0.0
        } else {
            100.0 * pf.passed as f64 / pf.tests as f64
        };
        s.push_str(&format!(
            "| {f} | {} | {} | {rate:.0}% | {} ({}) | {} |\n",
            pf.tests,
            pf.passed,
            pf.check_only,
            pf.check_only_passed,
            causes.join("; ")
        ));
    }
    s
}

//! CEL policies (`*.cel.yaml`) beside Rego.
//!
//! Semantics, as Istio's AuthorizationPolicy: any matching `deny` rule denies (with its status,
//! 403 by default); otherwise any matching `allow` rule allows; otherwise the request is denied.
//! A rule whose condition errors counts as matching if it is a `deny` rule and as not matching
//! if it is an `allow` rule, so an error can only ever deny. A file's `match` decides whether its
//! rules apply; a `match` that errors applies the file (again: errors never widen access).
//!
//! Every expression is checked and compiled once at load: size and shape guards before the
//! parser sees it ([`guard`]), comprehension depth on the AST, then the type checker
//! ([`check`]: undeclared variables, attributes the vocabulary does not have, calls no overload
//! accepts), then a probe evaluation against an empty request that turns the remaining type
//! errors and unknown functions into load errors. Problems are reported with the file, line and
//! column of the sub-expression.

pub mod check;
pub mod file;
mod fold;
pub mod guard;
pub mod network;
pub mod proto;
pub mod sets;
pub mod vars;

use std::sync::Arc;

use cel::common::ast::IdedExpr;
use cel::common::value::Val;
use cel::{Context, Env, ExecutionError, Value as CelValue};

use crate::decision::Header;
use crate::diagnostic::Diagnostic;
use crate::loader::SourceFile;
use crate::path::CanonicalPath;
use crate::request::{Address, AuthzRequest, Peer};
use file::{Effect, FileSpec};
use vars::{LenientMap, MapBuilder};

/// The checker's declarations of arbiter's vocabulary, built once.
fn check_decls() -> &'static check::Decls {
    static DECLS: std::sync::OnceLock<check::Decls> = std::sync::OnceLock::new();
    DECLS.get_or_init(check::Decls::arbiter)
}

#[derive(Debug, Clone)]
struct Compiled {
    /// The expression as written: what was checked and probed, and what each data document
    /// is folded into.
    expr: IdedExpr,
    /// What is evaluated: `expr` with `data`'s selections folded against the bound document
    /// ([`fold`]).
    run: IdedExpr,
}

impl Compiled {
    fn new(expr: IdedExpr) -> Self {
        Self {
            run: expr.clone(),
            expr,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CelRule {
    pub name: String,
    pub effect: Effect,
    when: Compiled,
    pub status: Option<u16>,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
}

#[derive(Debug, Clone)]
pub struct CelFile {
    pub file: String,
    pub name: String,
    matcher: Option<Compiled>,
    pub rules: Vec<CelRule>,
}

/// Which request-dependent variables the loaded expressions use (the rest are not built).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Uses {
    pub request: bool,
    /// Which of `request`'s attributes ([`REQUEST_FIELDS`], one bit each) are read: all of
    /// them when `request` is used otherwise than by selecting an attribute.
    pub request_fields: u16,
    pub source: bool,
    /// Which of `source`'s attributes ([`PEER_FIELDS`], one bit each) are read: all of them
    /// when `source` is used otherwise than by selecting an attribute.
    pub source_fields: u8,
    pub destination: bool,
    /// The same for `destination`.
    pub destination_fields: u8,
    pub connection: bool,
    pub identity: bool,
    pub input: bool,
}

/// The attributes of `request`, in the order of [`Uses::request_fields`]' bits.
pub const REQUEST_FIELDS: [&str; 14] = [
    "method",
    "path",
    "url_path",
    "host",
    "scheme",
    "headers",
    "query",
    "time",
    "id",
    "protocol",
    "body",
    "size",
    "useragent",
    "referer",
];

/// The attributes of `source` and `destination`, in the order of [`Uses::source_fields`]'
/// bits.
pub const PEER_FIELDS: [&str; 3] = ["address", "port", "principal"];

/// The bit of `request.<field>` in [`Uses::request_fields`]. Evaluated at compile time where
/// it is used (`const { request_field_bit("method") }`): a name that is not in
/// [`REQUEST_FIELDS`] does not compile, and a check pays no search.
#[expect(
    clippy::panic,
    reason = "called only in const blocks: the panic is a compile error, never a run-time one"
)]
const fn request_field_bit(field: &str) -> u16 {
    const fn same(a: &str, b: &str) -> bool {
        let (a, b) = (a.as_bytes(), b.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        let mut i = 0;
        while i < a.len() {
            if a[i] != b[i] {
                return false;
            }
            i += 1;
        }
        true
    }
    let mut i = 0;
    while i < REQUEST_FIELDS.len() {
        if same(REQUEST_FIELDS[i], field) {
            return 1 << i;
        }
        i += 1;
    }
    panic!("not an attribute of `request`")
}

/// Compiled CEL policy files, ready to evaluate from many threads.
pub struct CelPolicies {
    files: Arc<Vec<CelFile>>,
    env: Arc<Env>,
    root: Context<'static, 'static>,
    uses: Uses,
    /// The headers `request.headers` is read for, each by a constant name, when that is the
    /// only way it is read; `None`: all of them.
    headers_read: Option<Arc<[String]>>,
    warnings: Vec<Diagnostic>,
    /// How long one evaluation may run.
    time_limit: Option<std::time::Duration>,
    /// How many expression steps one evaluation may take ([`DEFAULT_COST_LIMIT`]).
    cost_limit: Option<u64>,
}

/// The expression steps one evaluation of a set's CEL policies may take, by default: a
/// comprehension over a list of a million elements from `data` passes it and is stopped
/// (`limit_exceeded:cel_cost`) whatever the machine's speed, where the deadline would depend
/// on it. Kubernetes bounds one CEL expression at a cost of 1,000,000 too; its cost weighs
/// operations by the sizes they touch, this counts evaluated expressions (a comprehension's
/// every iteration counts the steps of its condition and step).
pub const DEFAULT_COST_LIMIT: u64 = 1_000_000;

impl std::fmt::Debug for CelPolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CelPolicies")
            .field("files", &self.files)
            .field("uses", &self.uses)
            .finish_non_exhaustive()
    }
}

/// What the CEL policies need to know about one request.
#[derive(Debug, Clone, Copy)]
pub struct CelRequest<'a> {
    pub request: &'a AuthzRequest,
    pub path: &'a CanonicalPath,
    /// The host and the header values as the input was built with them
    /// ([`crate::input::Input`]): CEL reads the same reading Rego does.
    pub host: &'a crate::path::Host,
    pub headers: &'a [(String, String)],
    /// The OPA-Envoy input document (for `input`).
    pub input: Option<&'a regorus::Value>,
    /// The caller's identity document (for `identity`).
    pub identity: Option<&'a regorus::Value>,
}

/// What the CEL policies decided.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CelVerdict {
    pub allowed: bool,
    /// The file and rule that decided: the matching deny rule, or the first matching allow rule;
    /// `None` when nothing matched.
    pub file: Option<String>,
    pub rule: Option<String>,
    pub status: Option<u16>,
    pub headers: Vec<Header>,
    pub body: Option<String>,
    /// Conditions that failed to evaluate (`file: rule: message`).
    pub errors: Vec<String>,
    /// The deciding deny rule matched because its condition failed to evaluate.
    pub errored: bool,
    /// The evaluation was stopped at its deadline (a denial, `limit_exceeded:time`).
    pub timed_out: bool,
    /// The evaluation was stopped at its cost limit (a denial, `limit_exceeded:cel_cost`).
    pub over_budget: bool,
}

/// The CEL environment: the standard library and the strings, lists, math, encoders,
/// bindings (`cel.bind`), two-variable comprehensions, network (`ip`, `cidr`) and sets
/// extensions.
pub fn env() -> Env {
    // Backtick-escaped field names (`` data.labels.`app.kubernetes.io/name` ``), as cel-go
    // and Kubernetes accept them.
    let mut env = Env::stdlib().with_ident_escape_syntax(true);
    for ext in [
        cel::extensions::strings as fn(&mut Env) -> Result<(), cel::DeclarationError>,
        cel::extensions::lists,
        cel::extensions::math,
        cel::extensions::encoders,
        cel::extensions::bindings,
        cel::extensions::block,
        cel::extensions::two_var_comprehensions,
        network::extension,
        sets::extension,
        path_extension,
        jwt_extension,
    ] {
        let _ = env.add_extension(ext);
    }
    env
}

/// `path.glob(pattern, path)` ([`crate::path::glob_match`]): an overload of the environment,
/// which reads its two strings where they are (a function of the context is given copies).
fn path_extension(env: &mut Env) -> Result<(), cel::DeclarationError> {
    use cel::common::types::{CelBool, CelString};
    fn path_glob(pattern: &CelString<'_>, path: &CelString<'_>) -> &'static CelBool {
        CelBool::of(crate::path::glob_match(pattern.inner(), path.inner()))
    }
    cel::add_overload!(env, fn path_glob: (CelString, CelString) -> &CelBool, name = "path.glob")?;
    Ok(())
}

/// `jwt.decode_verify(token, constraints)`, OPA's `io.jwt.decode_verify` (`[valid, header,
/// claims]`, [`crate::builtins::jwt::decode_verify`]): an overload of the environment, which
/// reads the token where it is and returns the result as built from Rego's value (a function
/// of the context is given copies, and its result is converted twice more).
fn jwt_extension(env: &mut Env) -> Result<(), cel::DeclarationError> {
    use cel::common::types::{CelString, DYN_TYPE, STRING_TYPE};
    use cel::common::value::CowVal;
    fn decode_verify<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
        let fail = |e: String| ExecutionError::function_error("jwt.decode_verify", e);
        let token = args
            .first()
            .and_then(|t| t.downcast_ref::<CelString>())
            .ok_or_else(|| fail("the token is not a string".into()))?;
        let constraints = match args.get(1) {
            Some(c) => jwt_constraints(c.as_ref())?,
            None => regorus::Value::Null,
        };
        crate::builtins::jwt::decode_verify(&regorus::Value::from(token.inner()), &constraints)
            .map(|v| CowVal::Owned(jwt_result(&v)))
            .map_err(|e| fail(e.to_string()))
    }
    env.add_overload(
        "jwt.decode_verify",
        "string_dyn_jwt_decode_verify",
        vec![STRING_TYPE, DYN_TYPE],
        decode_verify,
    )
}

/// Values converted for `jwt.decode_verify` recently on this thread. A policy passes the
/// same constraints on every request (`{"secret": data.…, …}`), and the token cache
/// (`builtins::jwt`) hands out the same header and claims for the same token: converting them
/// between CEL and Rego again on each call was most of the call's allocations (issue 20).
struct JwtConversions {
    /// The last constraints, as CEL gave them and as Rego's.
    constraints: Option<(Box<dyn Val>, regorus::Value)>,
    /// Verified tokens' headers and claims from the token cache.
    decoded: Vec<Decoded>,
}

/// A verified token's header and claims: Rego's values (kept, so that their allocations cannot
/// be reused by others while compared by address) and CEL's.
struct Decoded {
    header: regorus::Value,
    payload: regorus::Value,
    cel_header: Box<dyn Val>,
    cel_payload: Box<dyn Val>,
}

/// Decoded tokens whose conversion is kept per thread; the list is emptied when full.
const JWT_CONVERSIONS: usize = 16;

thread_local! {
    static JWT_CONVERTED: std::cell::RefCell<JwtConversions> =
        const { std::cell::RefCell::new(JwtConversions { constraints: None, decoded: Vec::new() }) };
}

/// `jwt.decode_verify`'s constraints as Rego's value: the last conversion again when the
/// constraints are equal to the last ones (CEL's equality: numbers equal across types are
/// the same number to the verification).
fn jwt_constraints(c: &dyn Val) -> Result<regorus::Value, ExecutionError> {
    let hit = JWT_CONVERTED.with(|k| {
        k.borrow()
            .constraints
            .as_ref()
            .filter(|(cel, _)| cel.equals(c))
            .map(|(_, rego)| rego.clone())
    });
    if let Some(rego) = hit {
        return Ok(rego);
    }
    let value = CelValue::try_from(c)?;
    let rego = cel_to_rego(&value);
    if let Ok(kept) = Box::<dyn Val>::try_from(value) {
        JWT_CONVERTED.with(|k| k.borrow_mut().constraints = Some((kept, rego.clone())));
    }
    Ok(rego)
}

/// `[valid, header, claims]` as CEL's value; a verified token's header and claims converted
/// once per token the token cache holds (the same allocations: compared by address).
fn jwt_result(v: &regorus::Value) -> Box<dyn Val> {
    use cel::common::types::{CelBool, CelList};
    use regorus::Value as R;
    let (valid, header, payload) = match v.as_array().map(|a| a.as_slice()) {
        // A token that did not verify has new, empty maps: nothing to keep.
        Ok([R::Bool(true), h @ R::Object(_), p @ R::Object(_)]) => (true, h, p),
        _ => return vars::from_rego(v),
    };
    let same = |a: &R, b: &R| match (a, b) {
        (R::Object(a), R::Object(b)) => std::ptr::eq(&**a, &**b),
        _ => false,
    };
    let found = JWT_CONVERTED.with(|k| {
        k.borrow()
            .decoded
            .iter()
            .find(|d| same(&d.header, header) && same(&d.payload, payload))
            .map(|d| {
                (
                    d.cel_header.clone_as_boxed(),
                    d.cel_payload.clone_as_boxed(),
                )
            })
    });
    let (h, p) = match found {
        Some(hp) => hp,
        None => {
            let (h, p) = (vars::from_rego(header), vars::from_rego(payload));
            JWT_CONVERTED.with(|k| {
                let mut k = k.borrow_mut();
                if k.decoded.len() >= JWT_CONVERSIONS {
                    k.decoded.clear();
                }
                k.decoded.push(Decoded {
                    header: header.clone(),
                    payload: payload.clone(),
                    cel_header: h.clone_as_boxed(),
                    cel_payload: p.clone_as_boxed(),
                });
            });
            (h, p)
        }
    };
    Box::new(CelList::from(vec![
        Box::new(CelBool::from(valid)) as Box<dyn Val>,
        h,
        p,
    ]))
}

/// Add arbiter's helper functions to a root context: `net.cidr_contains(cidr, ip_or_cidr)`,
/// `spiffe.match(id, pattern)` and `spiffe.parse(id)`; `path.glob` and `jwt.decode_verify`
/// are the environment's ([`path_extension`], [`jwt_extension`]).
pub fn add_functions(ctx: &mut Context<'static, 'static>) {
    let _ = ctx.add_function(
        "net.cidr_contains",
        |cidr: Arc<String>, ip: Arc<String>| -> Result<bool, ExecutionError> {
            crate::builtins::net::contains(&cidr, &ip)
                .map_err(|e| ExecutionError::function_error("net.cidr_contains", e))
        },
    );
    let _ = ctx.add_function(
        "spiffe.match",
        |id: Arc<String>, pattern: Arc<String>| -> bool {
            crate::identity::spiffe_match(&id, &pattern)
        },
    );
    let _ = ctx.add_function(
        "spiffe.parse",
        |id: Arc<String>| -> Result<CelValue, ExecutionError> {
            match crate::identity::SpiffeId::parse(&id) {
                Ok(s) => Ok(rego_to_cel_value(&s.to_value())),
                Err(e) => Err(ExecutionError::function_error("spiffe.parse", e)),
            }
        },
    );
}

/// A CEL value as a Rego value (arguments of helpers shared with Rego).
fn cel_to_rego(v: &CelValue) -> regorus::Value {
    use regorus::Value as R;
    match v {
        CelValue::List(items) => R::from(items.iter().map(cel_to_rego).collect::<Vec<_>>()),
        CelValue::Map(m) => {
            let mut o = R::new_object();
            if let Ok(obj) = o.as_object_mut() {
                for (k, val) in m.map.iter() {
                    let key = match k {
                        cel::objects::Key::String(s) => R::from(s.as_str()),
                        cel::objects::Key::Int(i) => R::from(*i),
                        cel::objects::Key::Uint(u) => R::from(*u),
                        cel::objects::Key::Bool(b) => R::Bool(*b),
                    };
                    obj.insert(key, cel_to_rego(val));
                }
            }
            o
        }
        CelValue::Int(i) => R::from(*i),
        CelValue::UInt(u) => R::from(*u),
        CelValue::Float(f) => R::from(*f),
        CelValue::String(s) => R::from(s.as_str()),
        CelValue::Bool(b) => R::Bool(*b),
        _ => R::Null,
    }
}

fn rego_to_cel_value(v: &regorus::Value) -> CelValue {
    let boxed = vars::from_rego(v);
    CelValue::try_from(boxed.as_ref()).unwrap_or(CelValue::Null)
}

/// `line`/`col` of a byte offset inside an expression that starts at `at` in the file.
fn position(at: (u32, u32), source: &str, offset: usize) -> (u32, u32) {
    let before = &source[..offset.min(source.len())];
    let lines = u32::try_from(before.matches('\n').count()).unwrap_or(0);
    let col =
        u32::try_from(before.rsplit('\n').next().map_or(0, |l| l.chars().count())).unwrap_or(0);
    if lines == 0 {
        (at.0, at.1 + col)
    } else {
        (at.0 + lines, col + 1)
    }
}

fn compile_expr(
    env: &Env,
    file: &str,
    source: &str,
    at: (u32, u32),
    root: &Context<'static, 'static>,
    data_probe: &ProbeInputs,
) -> Result<(Compiled, Vec<String>), Vec<Diagnostic>> {
    let err = |pos: (u32, u32), msg: String| {
        Diagnostic::at(file, pos.0, pos.1, msg).with_code("cel_compile_error")
    };
    guard::pre_parse(source).map_err(|m| vec![err(at, m)])?;
    let parser = env
        .parser()
        .max_recursion_depth(u16::try_from(guard::MAX_NESTING).unwrap_or(32));
    let (expr, info) = parser.parse_with_source_info(source).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|e| {
                let line = usize::try_from(e.pos.0).unwrap_or(1).max(1);
                let col = usize::try_from(e.pos.1).unwrap_or(0);
                let offset = source
                    .split_inclusive('\n')
                    .take(line - 1)
                    .map(str::len)
                    .sum::<usize>()
                    + col;
                err(
                    position(at, source, offset),
                    format!("syntax error: {}", e.msg),
                )
            })
            .collect::<Vec<_>>()
    })?;
    let at_id = |id: u64| {
        let offset = info
            .offset_for(id)
            .map_or(0, |(s, _)| usize::try_from(s).unwrap_or(0));
        position(at, source, offset)
    };
    let problems = guard::check_ast(&expr);
    if !problems.is_empty() {
        return Err(problems
            .into_iter()
            .map(|p| err(at_id(p.id), p.message))
            .collect());
    }
    // The type check: undeclared names, attributes the vocabulary does not have, calls no
    // overload accepts (`request.method == 42`), each where it is in the expression.
    if let Err(errors) = check::check(&expr, check_decls()) {
        return Err(errors
            .into_iter()
            .map(|e| {
                let what = if e.no_overload {
                    format!("type error: {}", e.message)
                } else {
                    e.message
                };
                err(at_id(e.id), what)
            })
            .collect());
    }
    let roots = root_idents(&expr);
    // Probe: evaluate against an empty request. Unknown functions and type errors that do not
    // depend on the request's values surface here, at load time. `input` is OPA's whole input
    // document, whose shape the empty request does not have: an expression that reads it is
    // only checked for unknown names.
    let reads_input = roots.iter().any(|r| r == "input");
    let mut child = root.new_inner_scope();
    data_probe.bind(&mut child);
    // Bounded as a request's evaluation is: an expression that takes more than the cost limit
    // on the empty request (a comprehension over a large list from `data` that nothing in the
    // request cuts short) takes it on every request that does not cut it short either; it is
    // refused here instead of denying at run time.
    // With no cost limit configured, the probe still stops at the default one (loading must
    // not take unbounded time) but refuses nothing: the deadline governs at run time.
    let budget = data_probe.cost_limit.unwrap_or(DEFAULT_COST_LIMIT);
    let probed =
        cel::deadline::with_budget(None, Some(budget), || CelValue::resolve(&expr, &child));
    match probed {
        Err(e) if cel::deadline::over_budget(&e) && data_probe.cost_limit.is_some() => {
            return Err(vec![err(
                at,
                format!(
                    "cost: the expression takes more than {budget} evaluation steps on an empty request (a comprehension over a large list or map from `data`?); every request it does not cut short would be denied with `limit_exceeded:cel_cost` (raise `--cel-cost-limit` if it must run)"
                ),
            )]);
        }
        Err(e) if cel::deadline::over_budget(&e) => {}
        Err(ExecutionError::UndeclaredReference(name)) => {
            return Err(vec![err(
                at,
                format!("unknown function or variable `{name}`"),
            )]);
        }
        Err(
            e @ (ExecutionError::NoSuchOverload(_)
            | ExecutionError::UnsupportedBinaryOperator(..)
            | ExecutionError::ValuesNotComparable(..)),
        ) if !reads_input => {
            return Err(vec![err(at, format!("type error: {e}"))]);
        }
        _ => {}
    }
    Ok((Compiled::new(expr), roots))
}

/// The variables an expression reads: their names, or `request.<field>` where `request`'s
/// attribute is selected directly.
fn root_idents(e: &IdedExpr) -> Vec<String> {
    use cel::common::ast::Expr;
    fn go(e: &IdedExpr, out: &mut Vec<String>) {
        match &e.expr {
            // A header by a constant name: `request.headers["x-tenant-id"]` reads that header
            // alone (see `CelPolicies::headers_read`).
            Expr::Call(c)
                if c.func_name == cel::common::ast::operators::INDEX
                    && c.target.is_none()
                    && c.args.len() == 2
                    && is_request_headers(&c.args[0])
                    && let Expr::Literal(cel::common::ast::LiteralValue::String(name)) =
                        &c.args[1].expr =>
            {
                out.push(format!("{HEADER_ROOT}{}", name.inner()));
            }
            Expr::Ident(n) => out.push(n.clone()),
            // An attribute of `request`, `source` or `destination`: `request.<field>` (see
            // `Uses::request_fields`, `Uses::source_fields`).
            Expr::Select(s)
                if matches!(&s.operand.expr, Expr::Ident(n)
                    if n == "request" || n == "source" || n == "destination") =>
            {
                if let Expr::Ident(n) = &s.operand.expr {
                    out.push(format!("{n}.{}", s.field));
                }
            }
            Expr::Select(s) => go(&s.operand, out),
            Expr::Struct(st) => {
                for en in &st.entries {
                    if let cel::common::ast::EntryExpr::StructField(f) = &en.expr {
                        go(&f.value, out);
                    }
                }
            }
            Expr::Call(c) => {
                if let Some(t) = &c.target {
                    go(t, out);
                }
                c.args.iter().for_each(|a| go(a, out));
            }
            Expr::Comprehension(c) => {
                for x in [
                    &c.iter_range,
                    &c.accu_init,
                    &c.loop_cond,
                    &c.loop_step,
                    &c.result,
                ] {
                    go(x, out);
                }
            }
            Expr::List(l) => l.elements.iter().for_each(|x| go(x, out)),
            Expr::Map(m) => {
                for en in &m.entries {
                    if let cel::common::ast::EntryExpr::MapEntry(me) = &en.expr {
                        go(&me.key, out);
                        go(&me.value, out);
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    go(e, &mut out);
    out
}

/// Whether the expressions whose [`root_idents`] are `roots` use the variable `var`, and which
/// of its attributes `fields` they read (bit `i`: `fields[i]`): all of them (`u32::MAX`) when
/// `var` is used otherwise than by selecting an attribute (`var.f`, or a header of
/// `request.headers` by name).
fn attributes_read(roots: &[String], var: &str, fields: &[&str]) -> (bool, u32) {
    if roots.iter().any(|r| r == var) {
        return (true, u32::MAX);
    }
    let mut used = false;
    let mut bits = 0;
    for r in roots {
        let Some(f) = r.strip_prefix(var).and_then(|r| r.strip_prefix('.')) else {
            continue;
        };
        used = true;
        // `headers[]<name>` (see `HEADER_ROOT`) reads the attribute `headers`.
        let f = f.split_once("[]").map_or(f, |(attribute, _)| attribute);
        if let Some(i) = fields.iter().position(|x| *x == f) {
            bits |= 1 << i;
        }
    }
    (used, bits)
}

/// How [`root_idents`] names a header read by a constant name: this, then the name.
const HEADER_ROOT: &str = "request.headers[]";

/// Whether `e` is `request.headers`.
fn is_request_headers(e: &IdedExpr) -> bool {
    use cel::common::ast::Expr;
    matches!(&e.expr, Expr::Select(s)
        if !s.test && s.field == "headers"
            && matches!(&s.operand.expr, Expr::Ident(n) if n == "request"))
}

/// The empty request used by the load-time probe, and the cost limit it is held to.
struct ProbeInputs {
    request: AuthzRequest,
    path: CanonicalPath,
    host: crate::path::Host,
    cost_limit: Option<u64>,
}

impl ProbeInputs {
    fn new(cost_limit: Option<u64>) -> Self {
        Self {
            cost_limit,
            request: AuthzRequest::default(),
            path: CanonicalPath::empty(),
            host: crate::path::Host::default(),
        }
    }

    fn bind<'p>(&self, ctx: &mut Context<'p, 'static>) {
        let req = CelRequest {
            request: &self.request,
            path: &self.path,
            host: &self.host,
            headers: &[],
            input: None,
            identity: None,
        };
        let all = Uses {
            request: true,
            request_fields: u16::MAX,
            source: true,
            source_fields: u8::MAX,
            destination: true,
            destination_fields: u8::MAX,
            connection: true,
            identity: true,
            input: true,
        };
        bind_variables(ctx, &req, all, None);
    }
}

/// `source` or `destination`: the attributes `fields` names ([`PEER_FIELDS`]' bits).
fn peer_map(p: Option<&Peer>, fields: u8) -> LenientMap {
    let (address, port) = match p.and_then(|p| p.address.as_ref()) {
        Some(Address::Socket(s)) => (s.address.as_str(), i64::from(s.port_value)),
        Some(Address::Pipe { path, .. }) => (path.as_str(), 0),
        _ => ("", 0),
    };
    let want = |i: usize| fields & (1 << i) != 0;
    let mut m = MapBuilder::with_capacity(fields.count_ones() as usize);
    if want(0) {
        m = m.str("address", address);
    }
    if want(1) {
        m = m.int("port", port);
    }
    if want(2) {
        m = m.str("principal", p.map_or("", |p| p.principal.as_str()));
    }
    m.lenient()
}

fn bind_variables<'p>(
    ctx: &mut Context<'p, 'static>,
    r: &CelRequest<'_>,
    uses: Uses,
    headers_read: Option<&[String]>,
) {
    let empty_http = crate::request::HttpRequest::default();
    let http = r.request.http.as_ref().unwrap_or(&empty_http);
    if uses.request {
        let headers = r.headers;
        let header = |n: &str| {
            headers
                .iter()
                .find(|(k, _)| k == n)
                .map_or("", |(_, v)| v.as_str())
        };
        // Only the attributes the policies read (`Uses::request_fields`).
        let want = |bit: u16| uses.request_fields & bit != 0;
        let mut m = MapBuilder::new();
        if want(const { request_field_bit("method") }) {
            m = m.str("method", &http.method);
        }
        if want(const { request_field_bit("path") }) {
            m = m.str("path", &http.path);
        }
        if want(const { request_field_bit("url_path") }) {
            m = m.str("url_path", &r.path.path);
        }
        if want(const { request_field_bit("host") }) {
            m = m.string("host", r.host.canonical());
        }
        if want(const { request_field_bit("scheme") }) {
            m = m.str("scheme", &http.scheme);
        }
        if want(const { request_field_bit("headers") }) {
            let map = match headers_read {
                None => vars::string_map(headers.iter().map(|(k, v)| (k.as_str(), v.as_str()))),
                // Only the headers read by name: a map with the same entry for each of them,
                // in the same order (of a repeated name, the one a whole map keeps).
                Some(names) => {
                    let read: smallvec::SmallVec<[(&str, &str); 4]> = headers
                        .iter()
                        .filter(|(k, _)| names.iter().any(|n| n == k))
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect();
                    vars::string_map(read.into_iter())
                }
            };
            m = m.val("headers", Box::new(map));
        }
        if want(const { request_field_bit("query") }) {
            m = m.str("query", &r.path.raw_query);
        }
        if want(const { request_field_bit("time") }) {
            let time = r.request.time.unwrap_or_default();
            m = m.val("time", vars::timestamp(time.seconds, time.nanos));
        }
        if want(const { request_field_bit("id") }) {
            m = m.str("id", &http.id);
        }
        if want(const { request_field_bit("protocol") }) {
            m = m.str("protocol", &http.protocol);
        }
        if want(const { request_field_bit("body") }) {
            let body = if http.body.is_empty() {
                String::from_utf8_lossy(&http.raw_body).into_owned()
            } else {
                http.body.clone()
            };
            m = m.string("body", body);
        }
        if want(const { request_field_bit("size") }) {
            m = m.int("size", http.size);
        }
        if want(const { request_field_bit("useragent") }) {
            m = m.str("useragent", header("user-agent"));
        }
        if want(const { request_field_bit("referer") }) {
            m = m.str("referer", header("referer"));
        }
        let m = m.lenient();
        ctx.add_variable_named("request", Box::new(m));
    }
    if uses.source {
        ctx.add_variable_named(
            "source",
            Box::new(peer_map(r.request.source.as_ref(), uses.source_fields)),
        );
    }
    if uses.destination {
        ctx.add_variable_named(
            "destination",
            Box::new(peer_map(
                r.request.destination.as_ref(),
                uses.destination_fields,
            )),
        );
    }
    if uses.connection {
        let src = r.request.source.as_ref();
        let mtls = src.is_some_and(|p| !p.principal.is_empty() || !p.certificate.is_empty());
        let uri_san = src
            .map(|p| p.principal.as_str())
            .filter(|p| p.contains("://"))
            .unwrap_or("");
        let sni = r
            .request
            .tls_session
            .as_ref()
            .map_or("", |t| t.sni.as_str());
        let m = MapBuilder::new()
            .bool("mtls", mtls)
            .str("requested_server_name", sni)
            .str("uri_san_peer_certificate", uri_san)
            .lenient();
        ctx.add_variable_named("connection", Box::new(m));
    }
    if uses.identity {
        let v: Box<dyn Val> = match r.identity {
            // The identity document is a map: missing fields read as "" like the rest of the
            // vocabulary.
            Some(id) => {
                let b = vars::from_rego(id);
                match b.downcast_ref::<cel::common::types::CelMap>() {
                    Some(map) => Box::new(LenientMap::new(map.clone())),
                    None => b,
                }
            }
            None => Box::new(LenientMap::default()),
        };
        ctx.add_variable_named("identity", v);
    }
    if uses.input {
        let v = match r.input {
            Some(i) => vars::from_rego(i),
            None => Box::new(LenientMap::default()),
        };
        ctx.add_variable_named("input", v);
    }
}

/// A text check of a deny rule's condition, given without white space.
type Lint = fn(&str) -> bool;

/// Advice for deny rules (reliability.md §3 H9, issue 16 finding 5): each check, and what the
/// warning says.
const DENY_ADVICE: [(Lint, &str); 3] = [
    (
        reads_raw_path,
        "matches `request.path`, the raw target with its query; match `request.url_path`, the canonical path (decoded, no query)",
    ),
    (
        compares_path_exactly,
        "denies an exact path: a sub-path, a trailing `/` or another case can reach the same backend; deny with `path.glob(\"/admin/**\", request.url_path)` or write allow rules instead",
    ),
    (
        compares_header_with_empty,
        "compares a header with \"\": a missing header and an empty one read alike; test presence with `\"x-h\" in request.headers` and the value separately",
    ),
];

/// `request.headers["x"] == ""` (or `!=`): a missing header and an empty one read alike, so a
/// deny rule written this way is bypassed by sending the header empty, or by leaving it out
/// (issue 16, finding 5).
fn compares_header_with_empty(w: &str) -> bool {
    static EMPTY: std::sync::LazyLock<Option<regex::Regex>> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"request\.headers(\["[^"]*"\]|\.[A-Za-z0-9_]+)(==|!=)""|""(==|!=)request\.headers"#,
        )
        .ok()
    });
    EMPTY.as_ref().is_some_and(|re| re.is_match(w))
}

/// `request.path.startsWith(…)` and the like: `request.path` is Envoy's attribute, the raw
/// target with its query. Strict mode refuses a target spelled two ways, but the raw text still
/// differs from the path a backend routes on (`%20`, `%3B`, the query): deny on
/// `request.url_path`, the canonical path.
fn reads_raw_path(w: &str) -> bool {
    ["startsWith(", "endsWith(", "contains(", "matches("]
        .iter()
        .any(|m| w.contains(&format!("request.path.{m}")))
        || w.contains("glob(\"") && w.contains(",request.path)")
}

/// Whether a condition compares the request path with `==` (a deny-list on exact paths).
fn compares_path_exactly(w: &str) -> bool {
    ["request.url_path", "request.path"]
        .iter()
        .any(|p| w.contains(&format!("{p}==")) || w.contains(&format!("=={p}")))
}

/// Why a condition has no boolean value.
enum Failed {
    /// The evaluation passed its time limit.
    Stopped,
    /// The evaluation took more steps than its cost limit.
    OverBudget,
    Error(String),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Stopped => f.write_str("the evaluation passed its time limit"),
            Failed::OverBudget => f.write_str("the evaluation passed its cost limit"),
            Failed::Error(e) => f.write_str(e),
        }
    }
}

fn truthy(r: Result<CelValue, ExecutionError>) -> Result<bool, Failed> {
    match r {
        Ok(CelValue::Bool(b)) => Ok(b),
        Ok(other) => Err(Failed::Error(format!(
            "condition is not a boolean but {other:?}"
        ))),
        Err(e) if cel::deadline::exceeded(&e) => Err(Failed::Stopped),
        Err(e) if cel::deadline::over_budget(&e) => Err(Failed::OverBudget),
        Err(e) => Err(Failed::Error(e.to_string())),
    }
}

/// The context every evaluation starts from: arbiter's functions and `data`.
fn root_context(env: &Arc<Env>, data: &regorus::Value) -> Context<'static, 'static> {
    let mut root = Context::with_env(env.clone());
    add_functions(&mut root);
    root.add_variable_named("data", vars::from_rego(data));
    root
}

/// Fold each of `files`' expressions against `root`'s `data` ([`fold`]) into what is
/// evaluated, and bind the values folded in `root`.
fn fold_files(files: &mut [CelFile], root: &mut Context<'static, 'static>) {
    let mut folds = fold::Folds::default();
    if let Some(data) = root.get_variable("data") {
        let bound = fold::Bound {
            data: data.as_ref(),
            root,
        };
        for f in files.iter_mut() {
            let rules = f.rules.iter_mut().map(|r| &mut r.when);
            for c in f.matcher.iter_mut().chain(rules) {
                c.run = fold::fold(&c.expr, &bound, &mut folds);
            }
        }
    }
    for (name, value) in folds.into_variables() {
        root.add_variable_as_val(name, value);
    }
}

impl CelPolicies {
    /// Compile CEL policy files, with `data` bound once for every evaluation, and the default
    /// cost limit ([`DEFAULT_COST_LIMIT`]).
    pub fn compile(sources: &[SourceFile], data: &regorus::Value) -> Result<Self, Vec<Diagnostic>> {
        Self::compile_with_cost_limit(sources, data, Some(DEFAULT_COST_LIMIT))
    }

    /// [`CelPolicies::compile`] with `cost_limit` expression steps per evaluation (`None`: no
    /// budget but the time limit). An expression that passes the limit on an empty request
    /// does not load.
    pub fn compile_with_cost_limit(
        sources: &[SourceFile],
        data: &regorus::Value,
        cost_limit: Option<u64>,
    ) -> Result<Self, Vec<Diagnostic>> {
        let env = Arc::new(env());
        let root = root_context(&env, data);
        let probe = ProbeInputs::new(cost_limit);
        let mut files = Vec::new();
        let mut errors = Vec::new();
        let mut warnings = Vec::new();
        let mut roots: Vec<String> = Vec::new();
        for src in sources {
            let spec: FileSpec = match file::parse(&src.name, &src.text) {
                Ok(s) => s,
                Err(mut e) => {
                    errors.append(&mut e);
                    continue;
                }
            };
            let mut compile = |text: &str, at: (u32, u32)| match compile_expr(
                &env, &spec.file, text, at, &root, &probe,
            ) {
                Ok((c, r)) => {
                    roots.extend(r);
                    Some(c)
                }
                Err(mut e) => {
                    errors.append(&mut e);
                    None
                }
            };
            let matcher = spec.match_expr.as_ref().and_then(|(m, at)| compile(m, *at));
            let mut rules = Vec::new();
            for r in &spec.rules {
                if r.effect == Effect::Deny {
                    let compact: String = r.when.chars().filter(|c| !c.is_whitespace()).collect();
                    for (applies, why) in DENY_ADVICE {
                        if applies(&compact) {
                            warnings.push(
                                Diagnostic::at(
                                    &spec.file,
                                    r.when_at.0,
                                    r.when_at.1,
                                    format!("rule `{}` {why}", r.name),
                                )
                                .with_code("cel_policy_warning"),
                            );
                        }
                    }
                }
                if let Some(when) = compile(&r.when, r.when_at) {
                    rules.push(CelRule {
                        name: r.name.clone(),
                        effect: r.effect,
                        when,
                        status: r.status,
                        headers: r.headers.clone(),
                        body: r.body.clone(),
                    });
                }
            }
            files.push(CelFile {
                file: spec.file.clone(),
                name: spec.name.clone(),
                matcher,
                rules,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let used = |v: &str| roots.iter().any(|r| r == v);
        // `request.f` alone reads one attribute; `request` used any other way reads them all.
        let (request, request_fields) = attributes_read(&roots, "request", &REQUEST_FIELDS);
        // `request.headers["name"]` alone reads those headers; `request.headers` used any
        // other way (iterated, `size`, `in`, a field, passed on) reads them all.
        let headers_read = (!used("request") && !used("request.headers")).then(|| {
            let mut names: Vec<String> = roots
                .iter()
                .filter_map(|r| r.strip_prefix(HEADER_ROOT))
                .map(str::to_string)
                .collect();
            names.sort();
            names.dedup();
            Arc::from(names)
        });
        let (source, source_fields) = attributes_read(&roots, "source", &PEER_FIELDS);
        let (destination, destination_fields) =
            attributes_read(&roots, "destination", &PEER_FIELDS);
        let uses = Uses {
            request,
            // Partial masks fit (14 and 3 attributes); all of them is the type's every bit.
            request_fields: u16::try_from(request_fields).unwrap_or(u16::MAX),
            source,
            source_fields: u8::try_from(source_fields).unwrap_or(u8::MAX),
            destination,
            destination_fields: u8::try_from(destination_fields).unwrap_or(u8::MAX),
            connection: used("connection"),
            identity: used("identity"),
            input: used("input"),
        };
        let mut root = root;
        fold_files(&mut files, &mut root);
        Ok(Self {
            files: Arc::new(files),
            env,
            root,
            uses,
            headers_read,
            warnings,
            time_limit: None,
            cost_limit,
        })
    }

    /// The same policies with `data` bound to another document (a data write): nothing is
    /// compiled again; `data`'s selections are folded again against the new document.
    pub fn with_data(&self, data: &regorus::Value) -> Self {
        let mut root = root_context(&self.env, data);
        let mut files = self.files.to_vec();
        fold_files(&mut files, &mut root);
        Self {
            files: Arc::new(files),
            env: self.env.clone(),
            root,
            uses: self.uses,
            headers_read: self.headers_read.clone(),
            warnings: self.warnings.clone(),
            time_limit: self.time_limit,
            cost_limit: self.cost_limit,
        }
    }

    /// Advice found while compiling: deny rules that compare the path exactly
    /// (reliability.md §3 H9).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    pub fn files(&self) -> &[CelFile] {
        &self.files
    }

    /// Which request-dependent variables the policies use.
    pub fn uses(&self) -> Uses {
        self.uses
    }

    /// The headers `request.headers` is built with when the policies read it only by constant
    /// names (`request.headers["x-tenant-id"]`); `None`: every header.
    pub fn headers_read(&self) -> Option<&[String]> {
        self.headers_read.as_deref()
    }

    /// Stop every evaluation after `limit` (the policy set's evaluation time limit).
    pub fn set_time_limit(&mut self, limit: Option<std::time::Duration>) {
        self.time_limit = limit;
    }

    /// Decide one request: deny-overrides, then allow, else deny. Evaluation stops at the time
    /// limit: work that grows with the request (comprehensions over its parts) cannot hold a
    /// thread past the deadline; a stopped evaluation is a denial.
    pub fn evaluate(&self, req: &CelRequest<'_>) -> CelVerdict {
        self.evaluate_since(req, std::time::Instant::now())
    }

    /// [`Self::evaluate`], with the time limit counted from `started` (the caller's clock
    /// reading that began the evaluation: one reading fewer per request).
    pub fn evaluate_since(&self, req: &CelRequest<'_>, started: std::time::Instant) -> CelVerdict {
        let deadline = self.time_limit.map(|t| started + t);
        cel::deadline::with_budget(deadline, self.cost_limit, || self.evaluate_within(req))
    }

    fn evaluate_within(&self, req: &CelRequest<'_>) -> CelVerdict {
        let mut ctx = self.root.new_inner_scope();
        bind_variables(&mut ctx, req, self.uses, self.headers_read.as_deref());
        let mut verdict = CelVerdict::default();
        let mut applicable: Vec<&CelFile> = Vec::with_capacity(self.files.len());
        for f in self.files.iter() {
            match &f.matcher {
                None => applicable.push(f),
                Some(m) => match truthy(CelValue::resolve(&m.run, &ctx)) {
                    Ok(true) => applicable.push(f),
                    Ok(false) => {}
                    Err(stop @ (Failed::Stopped | Failed::OverBudget)) => {
                        return stopped(&stop, &f.file, "match");
                    }
                    Err(e) => {
                        verdict.errors.push(format!("{}: match: {e}", f.file));
                        applicable.push(f);
                    }
                },
            }
        }
        // Deny rules first: any match (or error) denies.
        for f in &applicable {
            for r in f.rules.iter().filter(|r| r.effect == Effect::Deny) {
                let (hit, errored) = match truthy(CelValue::resolve(&r.when.run, &ctx)) {
                    Ok(b) => (b, false),
                    Err(stop @ (Failed::Stopped | Failed::OverBudget)) => {
                        return stopped(&stop, &f.file, &r.name);
                    }
                    Err(e) => {
                        verdict.errors.push(format!("{}: {}: {e}", f.file, r.name));
                        (true, true)
                    }
                };
                if hit {
                    verdict.errored = errored;
                    verdict.allowed = false;
                    verdict.file = Some(f.file.clone());
                    verdict.rule = Some(r.name.clone());
                    verdict.status = r.status;
                    verdict.headers = headers(&r.headers);
                    verdict.body = r.body.clone();
                    return verdict;
                }
            }
        }
        for f in &applicable {
            for r in f.rules.iter().filter(|r| r.effect == Effect::Allow) {
                match truthy(CelValue::resolve(&r.when.run, &ctx)) {
                    Ok(true) => {
                        verdict.allowed = true;
                        verdict.file = Some(f.file.clone());
                        verdict.rule = Some(r.name.clone());
                        verdict.headers = headers(&r.headers);
                        return verdict;
                    }
                    Ok(false) => {}
                    Err(stop @ (Failed::Stopped | Failed::OverBudget)) => {
                        return stopped(&stop, &f.file, &r.name);
                    }
                    Err(e) => verdict.errors.push(format!("{}: {}: {e}", f.file, r.name)),
                }
            }
        }
        verdict
    }
}

/// The verdict of an evaluation stopped at its deadline or its cost limit, in `file`'s
/// `rule`.
fn stopped(why: &Failed, file: &str, rule: &str) -> CelVerdict {
    CelVerdict {
        timed_out: matches!(why, Failed::Stopped),
        over_budget: matches!(why, Failed::OverBudget),
        errors: vec![format!("{file}: {rule}: {why}")],
        ..CelVerdict::default()
    }
}

fn headers(h: &[(String, String)]) -> Vec<Header> {
    h.iter()
        .map(|(k, v)| Header {
            name: k.clone(),
            value: v.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests;

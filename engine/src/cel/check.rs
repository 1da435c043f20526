//! A static type checker for arbiter's CEL, run on every expression at load.
//!
//! It gives each expression a type from the declarations (arbiter's attribute vocabulary:
//! `request.method` is a `string`, `request.headers` a `map(string, string)`, `request.time` a
//! `google.protobuf.Timestamp`; `data` and `input`, whose shapes are the documents', are `dyn`)
//! and the overloads of the standard functions, as cel-go's checker does, and reports what
//! cel-go would refuse to compile: an undeclared name, a field the type does not have, and a
//! call no overload of the function accepts (`request.method == 42`, `request.size + "1"`,
//! `request.path.startsWith(1)`).
//!
//! The `cel` crate has no checker; this one is arbiter's own, written after cel-go's
//! (`checker/checker.go`): the same type names in messages, the same unification of type
//! parameters (`_==_` is `(A, A) -> bool`), `dyn` assignable to and from every type, `null` to
//! messages, wrappers, timestamps and durations, a wrapper to its primitive. Where it knows
//! less than cel-go it errs towards accepting: a function it has no overloads for (the
//! extensions, arbiter's helpers) returns `dyn` after its arguments are checked, and a list
//! of mixed element types is a `list(dyn)`. The runtime probe and evaluation stay the last
//! word; the checker only refuses what cannot run as written.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use prost_reflect::{DescriptorPool, FieldDescriptor, Kind, MessageDescriptor};

/// A CEL type, as the checker deduces it.
#[derive(Clone, Debug, PartialEq)]
pub enum Ty {
    Dyn,
    Null,
    Bool,
    Int,
    Uint,
    Double,
    String,
    Bytes,
    Duration,
    Timestamp,
    List(Box<Ty>),
    Map(Box<Ty>, Box<Ty>),
    /// A protobuf message, by its full name.
    Message(Arc<str>),
    /// A protobuf wrapper (`google.protobuf.Int64Value`): its primitive, or `null`.
    Wrapper(Box<Ty>),
    /// One of arbiter's attribute groups (`request`, `source`, …): a map with known fields.
    Record(&'static str),
    /// A type value: `int`, `type(x)`.
    Type(Box<Ty>),
    /// An abstract type with parameters: `optional_type(int)`, `net.IP`.
    Opaque(Arc<str>, Vec<Ty>),
    /// A type parameter of an overload (`A`), while a call is resolved.
    Param(u8),
    /// The type of an expression that already has an error: accepted everywhere, so that one
    /// mistake is reported once.
    Error,
}

impl Ty {
    fn list(t: Ty) -> Ty {
        Ty::List(Box::new(t))
    }
    fn map(k: Ty, v: Ty) -> Ty {
        Ty::Map(Box::new(k), Box::new(v))
    }
    fn optional(t: Ty) -> Ty {
        Ty::Opaque(Arc::from("optional_type"), vec![t])
    }
    fn is_dyn_like(&self) -> bool {
        matches!(self, Ty::Dyn | Ty::Error | Ty::Param(_))
    }
}

impl fmt::Display for Ty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ty::Dyn => f.write_str("dyn"),
            Ty::Null => f.write_str("null_type"),
            Ty::Bool => f.write_str("bool"),
            Ty::Int => f.write_str("int"),
            Ty::Uint => f.write_str("uint"),
            Ty::Double => f.write_str("double"),
            Ty::String => f.write_str("string"),
            Ty::Bytes => f.write_str("bytes"),
            Ty::Duration => f.write_str("google.protobuf.Duration"),
            Ty::Timestamp => f.write_str("google.protobuf.Timestamp"),
            Ty::List(e) => write!(f, "list({e})"),
            Ty::Map(k, v) => write!(f, "map({k}, {v})"),
            Ty::Message(n) => f.write_str(n),
            Ty::Wrapper(p) => write!(f, "wrapper({p})"),
            Ty::Record(n) => f.write_str(n),
            Ty::Type(t) => write!(f, "type({t})"),
            Ty::Opaque(n, ps) if ps.is_empty() => f.write_str(n),
            Ty::Opaque(n, ps) => {
                let ps: Vec<String> = ps.iter().map(ToString::to_string).collect();
                write!(f, "{n}({})", ps.join(", "))
            }
            Ty::Param(p) => write!(f, "{}", char::from(b'A' + p)),
            Ty::Error => f.write_str("!error!"),
        }
    }
}

/// One overload of a function: `member` for `x.f(…)`, whose first parameter is `x`.
#[derive(Clone, Debug)]
pub struct Overload {
    pub member: bool,
    pub params: Vec<Ty>,
    pub result: Ty,
}

/// A problem found in an expression: the id of the sub-expression and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeError {
    pub id: u64,
    pub message: String,
    /// A call no overload of its function accepts (the rest name what is undeclared or
    /// undefined).
    pub no_overload: bool,
}

/// What the checker knows: variables, functions, and protobuf messages.
#[derive(Clone, Default)]
pub struct Decls {
    vars: HashMap<String, Ty>,
    functions: HashMap<String, Vec<Overload>>,
    pool: Option<DescriptorPool>,
    container: String,
}

impl Decls {
    /// The standard library's functions, nothing else.
    pub fn standard() -> Self {
        Decls {
            functions: standard_functions().clone(),
            ..Decls::default()
        }
    }

    /// arbiter's CEL vocabulary: the attribute groups, `identity`, and `data` and `input` as
    /// `dyn`.
    pub fn arbiter() -> Self {
        let mut d = Decls::standard();
        for (name, fields) in VOCABULARY {
            let ty = if fields.is_empty() {
                Ty::Dyn
            } else {
                Ty::Record(name)
            };
            d.add_var(name, ty);
        }
        d
    }

    pub fn add_var(&mut self, name: &str, ty: Ty) {
        self.vars.insert(name.to_owned(), ty);
    }

    pub fn add_overload(&mut self, name: &str, overload: Overload) {
        self.functions
            .entry(name.to_owned())
            .or_default()
            .push(overload);
    }

    /// Messages and enums for struct literals, fields and constants.
    pub fn with_pool(mut self, pool: DescriptorPool) -> Self {
        self.pool = Some(pool);
        self
    }

    pub fn set_container(&mut self, container: &str) {
        container.clone_into(&mut self.container);
    }

    /// `name` under the container: `a.b.name`, `a.name`, `name` for container `a.b`; a
    /// leading dot makes the name absolute.
    fn candidates(&self, name: &str) -> Vec<String> {
        if let Some(abs) = name.strip_prefix('.') {
            return vec![abs.to_owned()];
        }
        let mut out = Vec::new();
        let mut scope = self.container.as_str();
        while !scope.is_empty() {
            out.push(format!("{scope}.{name}"));
            scope = scope.rfind('.').map_or("", |i| &scope[..i]);
        }
        out.push(name.to_owned());
        out
    }

    fn message(&self, name: &str) -> Option<MessageDescriptor> {
        let pool = self.pool.as_ref()?;
        self.candidates(name)
            .iter()
            .find_map(|c| pool.get_message_by_name(c))
    }

    /// A name that is not a variable: a type (`int`, a message), or an enum constant.
    fn named(&self, name: &str) -> Option<Ty> {
        for c in self.candidates(name) {
            if let Some(t) = self.vars.get(&c) {
                return Some(t.clone());
            }
            if let Some(t) = builtin_type(&c) {
                return Some(Ty::Type(Box::new(t)));
            }
            if let Some(pool) = &self.pool {
                if let Some(m) = pool.get_message_by_name(&c) {
                    return Some(Ty::Type(Box::new(message_type(&m))));
                }
                if let Some((e, v)) = c.rsplit_once('.')
                    && let Some(e) = pool.get_enum_by_name(e)
                    && e.get_value_by_name(v).is_some()
                {
                    return Some(Ty::Int);
                }
            }
        }
        None
    }
}

fn builtin_type(name: &str) -> Option<Ty> {
    Some(match name {
        "int" => Ty::Int,
        "uint" => Ty::Uint,
        "double" => Ty::Double,
        "bool" => Ty::Bool,
        "string" => Ty::String,
        "bytes" => Ty::Bytes,
        "null_type" => Ty::Null,
        "dyn" => Ty::Dyn,
        "list" => Ty::list(Ty::Dyn),
        "map" => Ty::map(Ty::Dyn, Ty::Dyn),
        "type" => Ty::Type(Box::new(Ty::Dyn)),
        "optional_type" => Ty::optional(Ty::Dyn),
        "google.protobuf.Duration" => Ty::Duration,
        "google.protobuf.Timestamp" => Ty::Timestamp,
        // the network extension's types
        "net.IP" | "net.CIDR" => Ty::Opaque(Arc::from(name), Vec::new()),
        _ => return None,
    })
}

/// arbiter's CEL variables: the attribute groups with their fields and types (what
/// `cel::bind_variables` builds), and `data` and `input`, whose shapes are the documents'.
/// The one list of the vocabulary: the checker reports a name or an attribute not in it.
pub const VOCABULARY: &[(&str, &[(&str, &str)])] = &[
    (
        "request",
        &[
            ("method", "string"),
            ("path", "string"),
            ("url_path", "string"),
            ("host", "string"),
            ("scheme", "string"),
            ("headers", "map(string, string)"),
            ("query", "string"),
            ("time", "timestamp"),
            ("id", "string"),
            ("protocol", "string"),
            ("body", "string"),
            ("size", "int"),
            ("useragent", "string"),
            ("referer", "string"),
        ],
    ),
    (
        "source",
        &[
            ("address", "string"),
            ("port", "int"),
            ("principal", "string"),
        ],
    ),
    (
        "destination",
        &[
            ("address", "string"),
            ("port", "int"),
            ("principal", "string"),
        ],
    ),
    (
        "connection",
        &[
            ("mtls", "bool"),
            ("requested_server_name", "string"),
            ("uri_san_peer_certificate", "string"),
        ],
    ),
    (
        "identity",
        &[
            ("spiffe_id", "string"),
            ("trust_domain", "string"),
            ("path", "string"),
            ("segments", "list(string)"),
            ("source", "string"),
            ("svid", "dyn"),
        ],
    ),
    ("data", &[]),
    ("input", &[]),
];

fn record_fields(record: &str) -> &'static [(&'static str, &'static str)] {
    VOCABULARY
        .iter()
        .find(|(n, _)| *n == record)
        .map_or(&[], |(_, f)| f)
}

fn record_field(record: &str, field: &str) -> Option<Ty> {
    record_fields(record)
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, t)| parse_ty(t))
}

/// The CEL type of a message: a well-known type as the CEL type it stands for.
pub fn message_type(m: &MessageDescriptor) -> Ty {
    let wrapped = |p| Ty::Wrapper(Box::new(p));
    match m.full_name() {
        "google.protobuf.BoolValue" => wrapped(Ty::Bool),
        "google.protobuf.BytesValue" => wrapped(Ty::Bytes),
        "google.protobuf.DoubleValue" | "google.protobuf.FloatValue" => wrapped(Ty::Double),
        "google.protobuf.Int32Value" | "google.protobuf.Int64Value" => wrapped(Ty::Int),
        "google.protobuf.StringValue" => wrapped(Ty::String),
        "google.protobuf.UInt32Value" | "google.protobuf.UInt64Value" => wrapped(Ty::Uint),
        "google.protobuf.Timestamp" => Ty::Timestamp,
        "google.protobuf.Duration" => Ty::Duration,
        "google.protobuf.Struct" => Ty::map(Ty::String, Ty::Dyn),
        "google.protobuf.ListValue" => Ty::list(Ty::Dyn),
        "google.protobuf.Value" | "google.protobuf.Any" => Ty::Dyn,
        name => Ty::Message(Arc::from(name)),
    }
}

fn kind_type(kind: &Kind) -> Ty {
    match kind {
        Kind::Double | Kind::Float => Ty::Double,
        Kind::Int32
        | Kind::Int64
        | Kind::Sint32
        | Kind::Sint64
        | Kind::Sfixed32
        | Kind::Sfixed64 => Ty::Int,
        Kind::Uint32 | Kind::Uint64 | Kind::Fixed32 | Kind::Fixed64 => Ty::Uint,
        Kind::Bool => Ty::Bool,
        Kind::String => Ty::String,
        Kind::Bytes => Ty::Bytes,
        Kind::Enum(_) => Ty::Int,
        Kind::Message(m) => message_type(m),
    }
}

/// The CEL type of a message field.
pub fn field_type(fd: &FieldDescriptor) -> Ty {
    if fd.is_map()
        && let Kind::Message(entry) = fd.kind()
    {
        return Ty::map(
            kind_type(&entry.map_entry_key_field().kind()),
            kind_type(&entry.map_entry_value_field().kind()),
        );
    }
    let t = kind_type(&fd.kind());
    if fd.is_list() { Ty::list(t) } else { t }
}

/// Parses a type of the overload table: `int`, `list(A)`, `map(K, V)`, `optional(A)`.
fn parse_ty(s: &str) -> Ty {
    let s = s.trim();
    if let Some(inner) = s.strip_prefix("list(").and_then(|r| r.strip_suffix(')')) {
        return Ty::list(parse_ty(inner));
    }
    if let Some(inner) = s
        .strip_prefix("optional(")
        .and_then(|r| r.strip_suffix(')'))
    {
        return Ty::optional(parse_ty(inner));
    }
    if let Some(inner) = s.strip_prefix("type(").and_then(|r| r.strip_suffix(')')) {
        return Ty::Type(Box::new(parse_ty(inner)));
    }
    if let Some(inner) = s.strip_prefix("map(").and_then(|r| r.strip_suffix(')')) {
        let (k, v) = inner.split_once(',').unwrap_or((inner, "dyn"));
        return Ty::map(parse_ty(k), parse_ty(v));
    }
    match s {
        "A" => Ty::Param(0),
        "B" => Ty::Param(1),
        "K" => Ty::Param(10),
        "V" => Ty::Param(21),
        "_" => Ty::Param(FREE),
        "timestamp" => Ty::Timestamp,
        "duration" => Ty::Duration,
        "null" => Ty::Null,
        other => builtin_type(other).unwrap_or(Ty::Dyn),
    }
}

/// The standard library's overloads, as cel-go declares them. A line is `name: signature;
/// signature…`; a signature `(int, int) -> int` is a global call, `string.(string) -> bool`
/// a member call on a `string`.
const STANDARD: &str = "
_+_: (int, int) -> int; (uint, uint) -> uint; (double, double) -> double; (string, string) -> string; (bytes, bytes) -> bytes; (list(A), list(A)) -> list(A); (timestamp, duration) -> timestamp; (duration, timestamp) -> timestamp; (duration, duration) -> duration
_-_: (int, int) -> int; (uint, uint) -> uint; (double, double) -> double; (timestamp, timestamp) -> duration; (timestamp, duration) -> timestamp; (duration, duration) -> duration
_*_: (int, int) -> int; (uint, uint) -> uint; (double, double) -> double
_/_: (int, int) -> int; (uint, uint) -> uint; (double, double) -> double
_%_: (int, int) -> int; (uint, uint) -> uint
-_: (int) -> int; (double) -> double
!_: (bool) -> bool
_&&_: (bool, bool) -> bool
_||_: (bool, bool) -> bool
@not_strictly_false: (bool) -> bool
_==_: (A, A) -> bool
_!=_: (A, A) -> bool
_<_: (int, int) -> bool; (uint, uint) -> bool; (double, double) -> bool; (string, string) -> bool; (bytes, bytes) -> bool; (bool, bool) -> bool; (timestamp, timestamp) -> bool; (duration, duration) -> bool; (int, uint) -> bool; (int, double) -> bool; (uint, int) -> bool; (uint, double) -> bool; (double, int) -> bool; (double, uint) -> bool
_<=_: (int, int) -> bool; (uint, uint) -> bool; (double, double) -> bool; (string, string) -> bool; (bytes, bytes) -> bool; (bool, bool) -> bool; (timestamp, timestamp) -> bool; (duration, duration) -> bool; (int, uint) -> bool; (int, double) -> bool; (uint, int) -> bool; (uint, double) -> bool; (double, int) -> bool; (double, uint) -> bool
_>_: (int, int) -> bool; (uint, uint) -> bool; (double, double) -> bool; (string, string) -> bool; (bytes, bytes) -> bool; (bool, bool) -> bool; (timestamp, timestamp) -> bool; (duration, duration) -> bool; (int, uint) -> bool; (int, double) -> bool; (uint, int) -> bool; (uint, double) -> bool; (double, int) -> bool; (double, uint) -> bool
_>=_: (int, int) -> bool; (uint, uint) -> bool; (double, double) -> bool; (string, string) -> bool; (bytes, bytes) -> bool; (bool, bool) -> bool; (timestamp, timestamp) -> bool; (duration, duration) -> bool; (int, uint) -> bool; (int, double) -> bool; (uint, int) -> bool; (uint, double) -> bool; (double, int) -> bool; (double, uint) -> bool
_?_:_: (bool, A, A) -> A
_[_]: (list(A), int) -> A; (map(K, V), K) -> V; (optional(list(A)), int) -> optional(A); (optional(map(K, V)), K) -> optional(V)
@in: (A, list(A)) -> bool; (K, map(K, V)) -> bool
size: (string) -> int; (bytes) -> int; (list(A)) -> int; (map(K, V)) -> int; string.() -> int; bytes.() -> int; list(A).() -> int; map(K, V).() -> int
contains: string.(string) -> bool
startsWith: string.(string) -> bool
endsWith: string.(string) -> bool
matches: string.(string) -> bool; (string, string) -> bool
int: (int) -> int; (uint) -> int; (double) -> int; (string) -> int; (timestamp) -> int
uint: (uint) -> uint; (int) -> uint; (double) -> uint; (string) -> uint
double: (double) -> double; (int) -> double; (uint) -> double; (string) -> double
string: (string) -> string; (int) -> string; (uint) -> string; (double) -> string; (bool) -> string; (bytes) -> string; (timestamp) -> string; (duration) -> string
bytes: (bytes) -> bytes; (string) -> bytes
bool: (bool) -> bool; (string) -> bool
duration: (duration) -> duration; (string) -> duration
timestamp: (timestamp) -> timestamp; (string) -> timestamp; (int) -> timestamp
dyn: (A) -> dyn
type: (A) -> type(A)
getFullYear: timestamp.() -> int; timestamp.(string) -> int
getMonth: timestamp.() -> int; timestamp.(string) -> int
getDayOfYear: timestamp.() -> int; timestamp.(string) -> int
getDayOfMonth: timestamp.() -> int; timestamp.(string) -> int
getDate: timestamp.() -> int; timestamp.(string) -> int
getDayOfWeek: timestamp.() -> int; timestamp.(string) -> int
getHours: timestamp.() -> int; timestamp.(string) -> int; duration.() -> int
getMinutes: timestamp.() -> int; timestamp.(string) -> int; duration.() -> int
getSeconds: timestamp.() -> int; timestamp.(string) -> int; duration.() -> int
getMilliseconds: timestamp.() -> int; timestamp.(string) -> int; duration.() -> int
optional.of: (A) -> optional(A)
optional.ofNonZeroValue: (A) -> optional(A)
optional.none: () -> optional(_)
hasValue: optional(A).() -> bool
value: optional(A).() -> A
orValue: optional(A).(A) -> A
or: optional(A).(optional(A)) -> optional(A)
_[?_]: (list(A), int) -> optional(A); (map(K, V), K) -> optional(V); (optional(list(A)), int) -> optional(A); (optional(map(K, V)), K) -> optional(V)
";

fn standard_functions() -> &'static HashMap<String, Vec<Overload>> {
    static TABLE: OnceLock<HashMap<String, Vec<Overload>>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t: HashMap<String, Vec<Overload>> = HashMap::new();
        for line in STANDARD.lines().filter(|l| !l.trim().is_empty()) {
            let Some((name, sigs)) = line.split_once(": ") else {
                continue;
            };
            for sig in sigs.split("; ") {
                let Some((args, result)) = sig.split_once(" -> ") else {
                    continue;
                };
                let (member, recv, args) = match args.split_once(".(") {
                    Some((recv, rest)) => (true, Some(parse_ty(recv)), rest),
                    None => (false, None, args.strip_prefix('(').unwrap_or(args)),
                };
                let args = args.strip_suffix(')').unwrap_or(args);
                let mut params: Vec<Ty> = recv.into_iter().collect();
                params.extend(split_top(args).into_iter().map(parse_ty));
                t.entry(name.to_owned()).or_default().push(Overload {
                    member,
                    params,
                    result: parse_ty(result),
                });
            }
        }
        t
    })
}

/// `a, map(b, c), d` split at its top-level commas.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if !s[start..].trim().is_empty() {
        out.push(&s[start..]);
    }
    out
}

/// The element type of an empty list or map literal, and `optional.none()`'s value type: a
/// type still free, which takes whatever it is joined with (`[[], [1]]` is a `list(list(int))`).
const FREE: u8 = u8::MAX;

/// Type parameters bound while one overload is tried.
type Subst = HashMap<u8, Ty>;

/// Whether a value of type `arg` can be passed where `param` is wanted, binding `param`'s
/// type parameters.
fn unify(param: &Ty, arg: &Ty, s: &mut Subst) -> bool {
    use Ty::*;
    match (param, arg) {
        (Param(p), _) if *p != FREE => match s.get(p).cloned() {
            Some(bound) => {
                if unify(&bound, arg, s) {
                    // a parameter bound to `null`, or to a primitive its wrapper can stand
                    // for, takes the type that admits both
                    if matches!(bound, Null | Param(FREE))
                        || matches!(arg, Wrapper(w) if **w == bound)
                    {
                        s.insert(*p, arg.clone());
                    }
                    true
                } else {
                    false
                }
            }
            None => {
                s.insert(*p, arg.clone());
                true
            }
        },
        (Error, _) | (_, Error) | (Dyn, _) | (_, Dyn) => true,
        (Param(_), _) | (_, Param(_)) => true,
        (List(a), List(b)) => unify(a, b, s),
        (Map(k1, v1), Map(k2, v2)) => unify(k1, k2, s) && unify(v1, v2, s),
        (Map(k, v), Record(_)) => unify(k, &String, s) && unify(v, &Dyn, s),
        (Record(a), Record(b)) => a == b,
        (Message(a), Message(b)) => a == b,
        (Null, Message(_) | Wrapper(_) | Timestamp | Duration | Opaque(..))
        | (Message(_) | Wrapper(_) | Timestamp | Duration | Opaque(..), Null) => true,
        (Wrapper(a), Wrapper(b)) => unify(a, b, s),
        (Wrapper(a), b) | (b, Wrapper(a)) => unify(a, b, s),
        (Type(_), Type(_)) => true,
        (Opaque(a, ps), Opaque(b, qs)) => {
            a == b && ps.len() == qs.len() && ps.iter().zip(qs).all(|(p, q)| unify(p, q, s))
        }
        (a, b) => a == b,
    }
}

/// `t` with its type parameters replaced by what they were bound to (`dyn` when unbound).
fn substitute(t: &Ty, s: &Subst) -> Ty {
    match t {
        Ty::Param(FREE) => Ty::Param(FREE),
        Ty::Param(p) => s.get(p).map_or(Ty::Dyn, |b| substitute(b, s)),
        Ty::List(e) => Ty::list(substitute(e, s)),
        Ty::Map(k, v) => Ty::map(substitute(k, s), substitute(v, s)),
        Ty::Type(e) => Ty::Type(Box::new(substitute(e, s))),
        Ty::Opaque(n, ps) => Ty::Opaque(n.clone(), ps.iter().map(|p| substitute(p, s)).collect()),
        Ty::Wrapper(p) => Ty::Wrapper(Box::new(substitute(p, s))),
        other => other.clone(),
    }
}

/// The type of a list's elements or a conditional's branches: their common type, else `dyn`.
fn join(a: &Ty, b: &Ty) -> Ty {
    if a == b {
        return a.clone();
    }
    match (a, b) {
        (Ty::Error | Ty::Param(FREE), t) | (t, Ty::Error | Ty::Param(FREE)) => t.clone(),
        (
            Ty::Null,
            t @ (Ty::Message(_) | Ty::Wrapper(_) | Ty::Timestamp | Ty::Duration | Ty::Opaque(..)),
        )
        | (
            t @ (Ty::Message(_) | Ty::Wrapper(_) | Ty::Timestamp | Ty::Duration | Ty::Opaque(..)),
            Ty::Null,
        ) => t.clone(),
        (Ty::Wrapper(w), p) | (p, Ty::Wrapper(w)) if **w == *p => Ty::Wrapper(w.clone()),
        (Ty::List(x), Ty::List(y)) => Ty::list(join(x, y)),
        (Ty::Map(k1, v1), Ty::Map(k2, v2)) => Ty::map(join(k1, k2), join(v1, v2)),
        (Ty::Opaque(n, ps), Ty::Opaque(m, qs)) if n == m && ps.len() == qs.len() => Ty::Opaque(
            n.clone(),
            ps.iter().zip(qs).map(|(p, q)| join(p, q)).collect(),
        ),
        _ => Ty::Dyn,
    }
}

/// Checks `expr`: its type, or the problems found.
pub fn check(expr: &IdedExpr, decls: &Decls) -> Result<Ty, Vec<TypeError>> {
    let mut c = Checker {
        decls,
        scopes: Vec::new(),
        errors: Vec::new(),
    };
    let t = c.check(expr);
    if c.errors.is_empty() {
        Ok(resolved(&t))
    } else {
        Err(c.errors)
    }
}

struct Checker<'d> {
    decls: &'d Decls,
    scopes: Vec<(String, Ty)>,
    errors: Vec<TypeError>,
}

impl Checker<'_> {
    fn error(&mut self, id: u64, message: String) -> Ty {
        self.errors.push(TypeError {
            id,
            message,
            no_overload: false,
        });
        Ty::Error
    }

    fn local(&self, name: &str) -> Option<Ty> {
        self.scopes
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.clone())
    }

    fn check(&mut self, e: &IdedExpr) -> Ty {
        match &e.expr {
            Expr::Literal(l) => match l {
                LiteralValue::Int(_) => Ty::Int,
                LiteralValue::UInt(_) => Ty::Uint,
                LiteralValue::Double(_) => Ty::Double,
                LiteralValue::String(_) => Ty::String,
                LiteralValue::Bytes(_) => Ty::Bytes,
                LiteralValue::Boolean(_) => Ty::Bool,
                LiteralValue::Null => Ty::Null,
            },
            Expr::Ident(name) => {
                if let Some(t) = self.local(name) {
                    return t;
                }
                match self.decls.named(name) {
                    Some(t) => t,
                    None => self.undeclared(e.id, name),
                }
            }
            Expr::Select(s) => {
                if !s.test
                    && let Some((segments, root)) = qualified(e)
                    && self.local(segments[0]).is_none()
                {
                    return self.qualified(e.id, root, &segments);
                }
                let operand = self.check(&s.operand);
                let field = self.field(e.id, &operand, &s.field);
                if s.test { Ty::Bool } else { field }
            }
            Expr::Call(call) => self.call(e, call),
            Expr::List(l) => {
                let mut elem: Option<Ty> = None;
                for (i, x) in l.elements.iter().enumerate() {
                    let mut t = self.check(x);
                    if l.optional_indices.contains(&i) {
                        t = match t {
                            Ty::Opaque(n, mut ps) if &*n == "optional_type" && ps.len() == 1 => {
                                ps.remove(0)
                            }
                            other => other,
                        };
                    }
                    elem = Some(match elem {
                        None => t,
                        Some(prev) => join(&prev, &t),
                    });
                }
                Ty::list(elem.unwrap_or(Ty::Param(FREE)))
            }
            Expr::Map(m) => {
                let (mut kt, mut vt): (Option<Ty>, Option<Ty>) = (None, None);
                for entry in &m.entries {
                    if let EntryExpr::MapEntry(me) = &entry.expr {
                        let k = self.check(&me.key);
                        let mut v = self.check(&me.value);
                        if me.optional
                            && let Ty::Opaque(n, ps) = &v
                            && &**n == "optional_type"
                            && ps.len() == 1
                        {
                            v = ps[0].clone();
                        }
                        kt = Some(kt.map_or(k.clone(), |p| join(&p, &k)));
                        vt = Some(vt.map_or(v.clone(), |p| join(&p, &v)));
                    }
                }
                Ty::map(kt.unwrap_or(Ty::Param(FREE)), vt.unwrap_or(Ty::Param(FREE)))
            }
            Expr::Struct(st) => self.construct(e.id, st),
            Expr::Comprehension(c) => {
                let range = self.check(&c.iter_range);
                let (v1, v2) = match &range {
                    Ty::List(el) => (Ty::Int, (**el).clone()),
                    Ty::Map(k, v) => ((**k).clone(), (**v).clone()),
                    Ty::Record(_) => (Ty::String, Ty::Dyn),
                    t if t.is_dyn_like() => (Ty::Dyn, Ty::Dyn),
                    other => {
                        let msg = format!(
                            "expression of type '{other}' cannot be range of a comprehension (must be list, map, or dynamic)"
                        );
                        self.error(c.iter_range.id, msg);
                        (Ty::Error, Ty::Error)
                    }
                };
                let (first, second) = match (&range, &c.iter_var2) {
                    (Ty::List(_), None) => (v2.clone(), None),
                    (_, None) => (v1.clone(), None),
                    (_, Some(_)) => (v1.clone(), Some(v2.clone())),
                };
                let mut accu = self.check(&c.accu_init);
                let depth = self.scopes.len();
                self.scopes.push((c.accu_var.clone(), accu.clone()));
                self.scopes.push((c.iter_var.clone(), first));
                if let (Some(name), Some(t)) = (&c.iter_var2, second) {
                    self.scopes.push((name.clone(), t));
                }
                let cond = self.check(&c.loop_cond);
                if !unify(&Ty::Bool, &cond, &mut Subst::new()) {
                    self.error(
                        c.loop_cond.id,
                        format!("expected type 'bool' but found '{cond}'"),
                    );
                }
                let step = self.check(&c.loop_step);
                // an accumulator that starts as `[]` or `{}` takes the type the step gives it
                if accu != step && unify(&accu, &step, &mut Subst::new()) {
                    accu = more_specific(&accu, &step);
                }
                self.scopes.truncate(depth);
                self.scopes.push((c.accu_var.clone(), accu));
                let result = self.check(&c.result);
                self.scopes.truncate(depth);
                result
            }
            Expr::Unspecified => Ty::Dyn,
        }
    }

    /// A qualified name `a.b.c` whose root is no local variable: the longest prefix that
    /// names a variable, a type or a constant, with the fields after it selected.
    fn qualified(&mut self, id: u64, root: u64, segments: &[&str]) -> Ty {
        for n in (1..=segments.len()).rev() {
            let name = segments[..n].join(".");
            if let Some(mut t) = self.decls.named(&name) {
                for field in &segments[n..] {
                    t = self.field(id, &t, field);
                }
                return t;
            }
        }
        self.undeclared(root, segments[0])
    }

    fn undeclared(&mut self, id: u64, name: &str) -> Ty {
        let mut available: Vec<&str> = self.decls.vars.keys().map(String::as_str).collect();
        available.sort_unstable();
        let container = &self.decls.container;
        let within = if container.is_empty() {
            String::new()
        } else {
            format!(" in container `{container}`")
        };
        self.error(
            id,
            format!(
                "undeclared variable `{name}`{within} (available: {})",
                available.join(", ")
            ),
        )
    }

    /// The type of `operand.field`.
    fn field(&mut self, id: u64, operand: &Ty, field: &str) -> Ty {
        match operand {
            t if t.is_dyn_like() => Ty::Dyn,
            Ty::Map(k, v) => {
                if unify(k, &Ty::String, &mut Subst::new()) {
                    (**v).clone()
                } else {
                    self.error(
                        id,
                        format!("type '{operand}' does not support field selection"),
                    )
                }
            }
            Ty::Record(r) => match record_field(r, field) {
                Some(t) => t,
                None => {
                    let has: Vec<&str> = record_fields(r).iter().map(|(f, _)| *f).collect();
                    self.error(
                        id,
                        format!(
                            "`{r}` has no attribute `{field}` (it has: {})",
                            has.join(", ")
                        ),
                    )
                }
            },
            Ty::Message(name) => {
                let Some(m) = self.decls.message(name) else {
                    return Ty::Dyn;
                };
                if let Some(fd) = m.get_field_by_name(field) {
                    return field_type(&fd);
                }
                if let Some(ext) = m.get_extension_by_full_name(field) {
                    let t = kind_type(&ext.kind());
                    return if ext.is_list() { Ty::list(t) } else { t };
                }
                self.error(id, format!("undefined field '{field}'"))
            }
            // selecting on an optional selects on its value, optionally (cel-go's
            // optional field selection); arbiter's runtime allows it
            Ty::Opaque(n, ps) if &**n == "optional_type" && ps.len() == 1 => {
                let inner = ps[0].clone();
                Ty::optional(self.field(id, &inner, field))
            }
            other => self.error(
                id,
                format!("type '{other}' does not support field selection"),
            ),
        }
    }

    fn construct(&mut self, id: u64, st: &cel::common::ast::StructExpr) -> Ty {
        let Some(m) = self.decls.message(&st.type_name) else {
            for entry in &st.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    self.check(&f.value);
                }
            }
            return self.error(id, format!("undeclared reference to '{}'", st.type_name));
        };
        for entry in &st.entries {
            let EntryExpr::StructField(f) = &entry.expr else {
                continue;
            };
            let mut value = self.check(&f.value);
            if f.optional
                && let Ty::Opaque(n, ps) = &value
                && &**n == "optional_type"
                && ps.len() == 1
            {
                value = ps[0].clone();
            }
            match m.get_field_by_name(&f.field) {
                None => {
                    self.error(entry.id, format!("undefined field '{}'", f.field));
                }
                Some(fd) => {
                    let want = field_type(&fd);
                    if !unify(&want, &value, &mut Subst::new()) {
                        self.error(
                            entry.id,
                            format!(
                                "expected type of field '{}' is '{want}' but provided type is '{value}'",
                                f.field
                            ),
                        );
                    }
                }
            }
        }
        message_type(&m)
    }

    fn call(&mut self, e: &IdedExpr, call: &cel::common::ast::CallExpr) -> Ty {
        // `ns.f(…)` where `ns` is no variable: the global function `ns.f`
        let mut name = call.func_name.clone();
        let mut target = call.target.as_deref();
        if let Some(t) = target
            && let Some((segments, _)) = qualified(t)
            && self.local(segments[0]).is_none()
            && !self.decls.vars.contains_key(segments[0])
            && self.decls.named(&segments.join(".")).is_none()
        {
            name = format!("{}.{name}", segments.join("."));
            target = None;
        }
        // `_?._`: optional field selection
        if name == "_?._" && call.args.len() == 2 {
            let operand = self.check(&call.args[0]);
            let operand = match operand {
                Ty::Opaque(n, mut ps) if &*n == "optional_type" && ps.len() == 1 => ps.remove(0),
                other => other,
            };
            let field = match &call.args[1].expr {
                Expr::Literal(LiteralValue::String(s)) => s.inner().to_owned(),
                _ => return Ty::optional(Ty::Dyn),
            };
            return Ty::optional(self.field(e.id, &operand, &field));
        }
        let mut args: Vec<Ty> = Vec::with_capacity(call.args.len() + 1);
        if let Some(t) = target {
            args.push(self.check(t));
        }
        for a in &call.args {
            args.push(self.check(a));
        }
        let member = target.is_some();
        let overloads: Vec<Overload> = match self.decls.functions.get(&name) {
            Some(o) => o.clone(),
            // a function the checker has no overloads for: the extensions, arbiter's helpers
            None => return Ty::Dyn,
        };
        let candidates: Vec<&Overload> = overloads
            .iter()
            .filter(|o| o.member == member && o.params.len() == args.len())
            .collect();
        let mut result: Option<Ty> = None;
        for o in &candidates {
            let mut s = Subst::new();
            if o.params.iter().zip(&args).all(|(p, a)| unify(p, a, &mut s)) {
                let r = substitute(&o.result, &s);
                result = Some(match result {
                    None => r,
                    Some(prev) if prev == r => prev,
                    Some(_) => Ty::Dyn,
                });
            }
        }
        match result {
            Some(r) => r,
            None if candidates.is_empty() && !overloads.iter().any(|o| o.member == member) => {
                // declared only the other way (a global called as a member, or the reverse)
                Ty::Dyn
            }
            None => {
                let shown = if member {
                    let rest: Vec<String> = args[1..].iter().map(ToString::to_string).collect();
                    format!("{}.({})", args[0], rest.join(", "))
                } else {
                    let all: Vec<String> = args.iter().map(ToString::to_string).collect();
                    format!("({})", all.join(", "))
                };
                self.errors.push(TypeError {
                    id: e.id,
                    message: format!(
                        "found no matching overload for '{}' applied to '{shown}'",
                        call.func_name
                    ),
                    no_overload: true,
                });
                Ty::Error
            }
        }
    }
}

/// `t` with the types still free as `dyn`.
fn resolved(t: &Ty) -> Ty {
    substitute(&substitute_free(t), &Subst::new())
}

fn substitute_free(t: &Ty) -> Ty {
    match t {
        Ty::Param(FREE) => Ty::Dyn,
        Ty::List(e) => Ty::list(substitute_free(e)),
        Ty::Map(k, v) => Ty::map(substitute_free(k), substitute_free(v)),
        Ty::Type(e) => Ty::Type(Box::new(substitute_free(e))),
        Ty::Opaque(n, ps) => Ty::Opaque(n.clone(), ps.iter().map(substitute_free).collect()),
        Ty::Wrapper(p) => Ty::Wrapper(Box::new(substitute_free(p))),
        other => other.clone(),
    }
}

/// Of two types that unify, the one that says more (`list(int)` over `list(dyn)`).
fn more_specific(a: &Ty, b: &Ty) -> Ty {
    fn dyn_count(t: &Ty) -> usize {
        match t {
            Ty::Dyn | Ty::Param(_) | Ty::Error => 1,
            Ty::List(e) => dyn_count(e),
            Ty::Map(k, v) => dyn_count(k) + dyn_count(v),
            Ty::Opaque(_, ps) => ps.iter().map(dyn_count).sum(),
            _ => 0,
        }
    }
    if dyn_count(b) < dyn_count(a) {
        b.clone()
    } else {
        a.clone()
    }
}

/// `a.b.c` as its segments and the id of `a`, when the expression is a plain qualified name.
fn qualified(e: &IdedExpr) -> Option<(Vec<&str>, u64)> {
    let mut segments = Vec::new();
    let mut expr = e;
    loop {
        match &expr.expr {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                segments.reverse();
                return Some((segments, expr.id));
            }
            Expr::Select(s) if !s.test => {
                segments.push(s.field.as_str());
                expr = &s.operand;
            }
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty_with(expr: &str, decls: &Decls) -> Result<String, Vec<String>> {
        let ast = crate::cel::env().parser().parse(expr).expect("parses");
        check(&ast, decls)
            .map(|t| t.to_string())
            .map_err(|es| es.into_iter().map(|e| e.message).collect())
    }

    fn ty(expr: &str) -> Result<String, Vec<String>> {
        ty_with(expr, &Decls::arbiter())
    }

    #[test]
    fn the_vocabulary_has_types() {
        assert_eq!(ty("request.method"), Ok("string".into()));
        assert_eq!(ty("request.headers"), Ok("map(string, string)".into()));
        assert_eq!(
            ty("request.headers['x-a'].startsWith('b')"),
            Ok("bool".into())
        );
        assert_eq!(ty("request.time"), Ok("google.protobuf.Timestamp".into()));
        assert_eq!(ty("request.time.getHours() < 6"), Ok("bool".into()));
        assert_eq!(ty("request.size >= 1024u"), Ok("bool".into()));
        assert_eq!(ty("source.port + 1"), Ok("int".into()));
        assert_eq!(ty("identity.segments"), Ok("list(string)".into()));
        assert_eq!(ty("data.roles[identity.spiffe_id]"), Ok("dyn".into()));
        assert_eq!(
            ty("request.headers.exists(k, k.startsWith('x-'))"),
            Ok("bool".into())
        );
        assert_eq!(ty("[1, 2].map(x, x * 2)"), Ok("list(int)".into()));
        assert_eq!(ty("[1, 'a']"), Ok("list(dyn)".into()));
    }

    #[test]
    fn what_cannot_run_as_written_is_an_error() {
        assert_eq!(
            ty("request.pth == '/admin'"),
            Err(vec!["`request` has no attribute `pth` (it has: method, path, url_path, host, scheme, headers, query, time, id, protocol, body, size, useragent, referer)".into()])
        );
        assert_eq!(
            ty("request.method == 42"),
            Err(vec![
                "found no matching overload for '_==_' applied to '(string, int)'".into()
            ])
        );
        assert_eq!(
            ty("request.path.startsWith(1)"),
            Err(vec![
                "found no matching overload for 'startsWith' applied to 'string.(int)'".into()
            ])
        );
        assert_eq!(
            ty("request.size + '1'"),
            Err(vec![
                "found no matching overload for '_+_' applied to '(int, string)'".into()
            ])
        );
        assert_eq!(
            ty("reqest.method"),
            Err(vec!["undeclared variable `reqest` (available: connection, data, destination, identity, input, request, source)".into()])
        );
        assert_eq!(
            ty("request.method > 1"),
            Err(vec![
                "found no matching overload for '_>_' applied to '(string, int)'".into()
            ])
        );
        assert_eq!(
            ty("(1).f"),
            Err(vec!["type 'int' does not support field selection".into()])
        );
        assert_eq!(
            ty("1.all(x, x)"),
            Err(vec![
                "expression of type 'int' cannot be range of a comprehension (must be list, map, or dynamic)"
                    .into()
            ])
        );
        // one mistake, one error: what depends on it is not reported again
        let errors = ty("request.pth.startsWith('/a') && request.pth.size() > 2").unwrap_err();
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors
                .iter()
                .all(|e| e.starts_with("`request` has no attribute `pth`"))
        );
    }

    #[test]
    fn dyn_and_unknown_functions_are_accepted() {
        // `data` and `input` are whatever the documents are
        assert_eq!(ty("data.x == 42 && input.y == 'z'"), Ok("bool".into()));
        // functions the checker has no overloads for return `dyn`: extensions, helpers
        assert_eq!(ty("'a'.upperAscii() == 'A'"), Ok("bool".into()));
        assert_eq!(
            ty("path.glob('/api/**', request.url_path)"),
            Ok("dyn".into())
        );
        assert_eq!(ty("math.greatest(1, 2)"), Ok("dyn".into()));
        assert_eq!(ty("cel.bind(x, 1, x + 1)"), Ok("int".into()));
        // a type parameter bound to `dyn` accepts the rest
        assert_eq!(ty("dyn(1) == 'a'"), Ok("bool".into()));
    }

    #[test]
    fn messages_are_typed_from_their_descriptors() {
        let pool = DescriptorPool::global();
        let mut d = Decls::arbiter().with_pool(pool);
        d.set_container("google.protobuf");
        let check_with = |e: &str| ty_with(e, &d);
        assert_eq!(
            check_with("Int64Value{value: 1}"),
            Ok("wrapper(int)".into())
        );
        assert_eq!(
            check_with("FieldMask{paths: ['a']}.paths"),
            Ok("list(string)".into())
        );
        assert_eq!(
            check_with("FieldMask{paths: 'a'}"),
            Err(vec![
                "expected type of field 'paths' is 'list(string)' but provided type is 'string'"
                    .into()
            ])
        );
        assert_eq!(
            check_with("FieldMask{path: ['a']}"),
            Err(vec!["undefined field 'path'".into()])
        );
    }
}

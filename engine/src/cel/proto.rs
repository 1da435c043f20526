//! Protobuf messages and enums in CEL, from a descriptor set, as the CEL spec defines them:
//! message construction (`pkg.Msg{field: value}`), field selection with proto defaults,
//! presence (`has(m.f)`: set for a field with presence, non-default for a proto3 scalar,
//! non-empty for a repeated field or a map), equality field by field, enum constants as `int`
//! (the spec's "legacy" enums, cel-go's default), and the well-known types as CEL values: the
//! wrappers read as their value or `null` when unset, `Timestamp` and `Duration` as CEL's,
//! `Struct`, `Value` and `ListValue` as JSON-shaped maps, values and lists, `Any` as the message
//! it packs. Assigning to a field checks the value's type and range (an `int` out of `int32`'s
//! range is an error, as the spec's conformance tests require).
//!
//! The `cel` crate has struct types (`StructType`) but no protobuf: this module implements a
//! message as a `Val` of its own over `prost_reflect::DynamicMessage`, and the vendored crate's
//! patch 6 lets such a value travel through `cel::Value` as an opaque that is a `Val` again on
//! its way back in, and lets a field read as its default while `has()` reports it absent.
//!
//! ```
//! use prost_reflect::DescriptorPool;
//! let mut env = arbiter_engine::cel::env();
//! arbiter_engine::cel::proto::register(&mut env, &DescriptorPool::global());
//! let p = env.compile("google.protobuf.Int32Value{value: 7} == 7").unwrap();
//! let ctx = cel::Context::with_env(std::sync::Arc::new(env));
//! assert_eq!(p.execute(&ctx), Ok(cel::Value::Bool(true)));
//! ```

use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use cel::IdedExpr;
use cel::common::ast::{Expr, SelectExpr};
use cel::common::traits::{Indexer, Zeroer};
use cel::common::types::{ANY_TYPE, DURATION_TYPE, TIMESTAMP_TYPE, Type};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::objects::{Key, Map, Opaque};
use cel::parser::{Macro, MacroExprHelper, ParseError};
use cel::{Context, Env, ExecutionError, Value};
use prost_reflect::prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MapKey,
    MessageDescriptor, ReflectMessage, Value as PValue,
};

const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// A protobuf message as a CEL value.
#[derive(Clone)]
pub struct Message(Arc<Inner>);

struct Inner {
    ty: Type,
    msg: DynamicMessage,
}

impl Message {
    fn new(msg: DynamicMessage) -> Self {
        let ty = Type::new_struct(msg.descriptor().full_name().to_owned());
        Message(Arc::new(Inner { ty, msg }))
    }

    /// The message.
    pub fn message(&self) -> &DynamicMessage {
        &self.0.msg
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:?}", self.0.ty.name(), self.0.msg)
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        messages_equal(&self.0.msg, &other.0.msg)
    }
}
impl Eq for Message {}

impl Opaque for Message {
    fn runtime_type_name(&self) -> &str {
        self.0.ty.name()
    }
    fn as_val(&self) -> Option<&(dyn Val + 'static)> {
        Some(self)
    }
}

impl Val for Message {
    fn get_type(&self) -> &Type {
        &self.0.ty
    }
    /// Only for the overload macros, which take no message: a message's type is its own
    /// message's (`get_type`).
    fn cel_type() -> &'static Type {
        static MESSAGE: Type = Type::new_struct_type("google.protobuf.Message");
        &MESSAGE
    }
    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }
    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        Some(self)
    }
    fn to_opaque(&self) -> Option<Arc<dyn Opaque>> {
        Some(Arc::new(self.clone()))
    }
    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Message>().is_some_and(|o| o == self)
    }
    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn Any> {
        Some(self)
    }
}
impl StaticVal for Message {}

impl Zeroer for Message {
    fn is_zero_value(&self) -> bool {
        self.0.msg.fields().next().is_none()
    }
}

/// A field of a message, or a proto2 extension of it, named by its full name
/// (``msg.`pkg.ext` ``).
enum Field {
    Field(FieldDescriptor),
    Extension(ExtensionDescriptor),
}

impl Message {
    fn field(&self, idx: &dyn Val) -> Result<Field, ExecutionError> {
        let name = match Value::try_from(idx) {
            Ok(Value::String(s)) => s,
            _ => {
                return Err(ExecutionError::UnexpectedType {
                    got: idx.get_type().name().to_owned(),
                    want: "string".to_owned(),
                });
            }
        };
        let desc = self.0.msg.descriptor();
        if let Some(fd) = desc.get_field_by_name(&name) {
            return Ok(Field::Field(fd));
        }
        desc.get_extension_by_full_name(&name)
            .map(Field::Extension)
            .ok_or_else(|| {
                ExecutionError::NoSuchKey(Arc::new(format!(
                    "no such field `{name}` in `{}`",
                    self.0.ty.name()
                )))
            })
    }
}

impl Indexer for Message {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let v = match self.field(idx)? {
            Field::Field(fd) => field_value(&self.0.msg, &fd)?,
            Field::Extension(ext) => extension_value(&self.0.msg, &ext)?,
        };
        Ok(CowVal::Owned(Box::<dyn Val>::try_from(v)?))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }

    fn presence(&self, idx: &dyn Val) -> Option<Result<bool, ExecutionError>> {
        Some(self.field(idx).map(|f| match f {
            Field::Field(fd) => self.0.msg.has_field(&fd),
            Field::Extension(ext) => self.0.msg.has_extension(&ext),
        }))
    }
}

/// CEL's equality of two messages: of one type, each field present in both or neither, and
/// equal values (`Any` fields compared as the messages they pack; a NaN is equal to nothing).
fn messages_equal(a: &DynamicMessage, b: &DynamicMessage) -> bool {
    let desc = a.descriptor();
    if desc.full_name() != b.descriptor().full_name() {
        return false;
    }
    desc.fields().all(|fd| {
        let (ha, hb) = (a.has_field(&fd), b.has_field(&fd));
        if ha != hb {
            return false;
        }
        if !ha {
            return true;
        }
        match (field_value(a, &fd), field_value(b, &fd)) {
            // `Value`'s equality is CEL's (a NaN is equal to nothing)
            (Ok(x), Ok(y)) => x == y,
            // an `Any` that does not unpack: its bytes
            (Err(_), Err(_)) => a.get_field(&fd) == b.get_field(&fd),
            _ => false,
        }
    })
}

/// The CEL value of field `fd` of `msg`: its default when unset (`null` for a wrapper or a
/// `Value`, an empty message otherwise).
fn field_value(msg: &DynamicMessage, fd: &FieldDescriptor) -> Result<Value, ExecutionError> {
    if let Kind::Message(md) = fd.kind()
        && !fd.is_list()
        && !fd.is_map()
        && !msg.has_field(fd)
    {
        return Ok(unset_message(&md));
    }
    value_of(&msg.get_field(fd), &fd.kind())
}

/// The CEL value of extension `ext` of `msg`, its default when unset.
fn extension_value(
    msg: &DynamicMessage,
    ext: &ExtensionDescriptor,
) -> Result<Value, ExecutionError> {
    let kind = ext.kind();
    if let Kind::Message(md) = &kind
        && !ext.is_list()
        && !msg.has_extension(ext)
    {
        return Ok(unset_message(md));
    }
    value_of(&msg.get_extension(ext), &kind)
}

/// The value an unset message field reads as.
fn unset_message(md: &MessageDescriptor) -> Value {
    match md.full_name() {
        n if is_wrapper(n) => Value::Null,
        "google.protobuf.Value" | "google.protobuf.Any" => Value::Null,
        "google.protobuf.Struct" => Value::Map(Map {
            map: Arc::new(HashMap::new()),
        }),
        "google.protobuf.ListValue" => Value::List(Arc::new(Vec::new())),
        _ => message_value(DynamicMessage::new(md.clone())).unwrap_or(Value::Null),
    }
}

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.BoolValue"
            | "google.protobuf.BytesValue"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int32Value"
            | "google.protobuf.Int64Value"
            | "google.protobuf.StringValue"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.UInt64Value"
    )
}

fn map_key(k: &MapKey) -> Key {
    match k {
        MapKey::Bool(b) => Key::Bool(*b),
        MapKey::I32(i) => Key::Int(i64::from(*i)),
        MapKey::I64(i) => Key::Int(*i),
        MapKey::U32(u) => Key::Uint(u64::from(*u)),
        MapKey::U64(u) => Key::Uint(*u),
        MapKey::String(s) => Key::String(Arc::new(s.clone())),
    }
}

/// A field's protobuf value of kind `kind` as a CEL value (a repeated field's kind is its
/// elements').
fn value_of(v: &PValue, kind: &Kind) -> Result<Value, ExecutionError> {
    Ok(match v {
        PValue::Bool(b) => Value::Bool(*b),
        PValue::I32(i) => Value::Int(i64::from(*i)),
        PValue::I64(i) => Value::Int(*i),
        PValue::U32(u) => Value::UInt(u64::from(*u)),
        PValue::U64(u) => Value::UInt(*u),
        PValue::F32(f) => Value::Float(f64::from(*f)),
        PValue::F64(f) => Value::Float(*f),
        PValue::String(s) => Value::String(Arc::new(s.clone())),
        PValue::Bytes(b) => Value::Bytes(Arc::new(b.to_vec())),
        PValue::EnumNumber(n) => match kind {
            Kind::Enum(e) if e.full_name() == "google.protobuf.NullValue" => Value::Null,
            _ => Value::Int(i64::from(*n)),
        },
        PValue::Message(m) => message_value(m.clone())?,
        PValue::List(items) => Value::List(Arc::new(
            items
                .iter()
                .map(|x| value_of(x, kind))
                .collect::<Result<Vec<_>, _>>()?,
        )),
        PValue::Map(m) => {
            // a map field's kind is its entry message's; the values are of the entry's
            // `value` field
            let vkind = match kind {
                Kind::Message(entry) if entry.is_map_entry() => {
                    entry.map_entry_value_field().kind()
                }
                other => other.clone(),
            };
            let mut out = HashMap::new();
            for (k, val) in m {
                out.insert(map_key(k), value_of(val, &vkind)?);
            }
            Value::Map(Map { map: Arc::new(out) })
        }
    })
}

fn int_field(m: &DynamicMessage, name: &str) -> i64 {
    m.get_field_by_name(name)
        .and_then(|v| v.as_i64().or_else(|| v.as_i32().map(i64::from)))
        .unwrap_or(0)
}

/// A message as a CEL value: a well-known type as the CEL value it stands for, any other
/// message as a [`Message`].
pub fn message_value(m: DynamicMessage) -> Result<Value, ExecutionError> {
    let desc = m.descriptor();
    let name = desc.full_name();
    if is_wrapper(name) {
        return match desc.get_field_by_name("value") {
            Some(fd) => value_of(&m.get_field(&fd), &fd.kind()),
            None => Ok(Value::Null),
        };
    }
    match name {
        "google.protobuf.Timestamp" => {
            let (s, n) = (int_field(&m, "seconds"), int_field(&m, "nanos"));
            let t = u32::try_from(n)
                .ok()
                .and_then(|n| chrono::DateTime::from_timestamp(s, n))
                .ok_or_else(|| ExecutionError::function_error("timestamp", "out of range"))?;
            Ok(Value::Timestamp(t.fixed_offset()))
        }
        "google.protobuf.Duration" => {
            let (s, n) = (int_field(&m, "seconds"), int_field(&m, "nanos"));
            Ok(Value::Duration(
                chrono::Duration::try_seconds(s)
                    .and_then(|d| d.checked_add(&chrono::Duration::nanoseconds(n)))
                    .ok_or_else(|| ExecutionError::function_error("duration", "out of range"))?,
            ))
        }
        "google.protobuf.Struct" => {
            let mut out = HashMap::new();
            let fields = desc.get_field_by_name("fields").map(|fd| m.get_field(&fd));
            for (k, v) in fields
                .as_deref()
                .and_then(PValue::as_map)
                .into_iter()
                .flatten()
            {
                let MapKey::String(k) = k else { continue };
                let v = match v.as_message() {
                    Some(v) => message_value(v.clone())?,
                    None => Value::Null,
                };
                out.insert(Key::String(Arc::new(k.clone())), v);
            }
            Ok(Value::Map(Map { map: Arc::new(out) }))
        }
        "google.protobuf.ListValue" => {
            let mut out = Vec::new();
            if let Some(fd) = desc.get_field_by_name("values") {
                for v in m.get_field(&fd).as_list().unwrap_or_default() {
                    if let Some(v) = v.as_message() {
                        out.push(message_value(v.clone())?);
                    }
                }
            }
            Ok(Value::List(Arc::new(out)))
        }
        "google.protobuf.Value" => {
            let Some(fd) = desc
                .oneofs()
                .next()
                .and_then(|o| o.fields().find(|f| m.has_field(f)))
            else {
                return Ok(Value::Null);
            };
            field_value(&m, &fd)
        }
        "google.protobuf.Any" => {
            let url = m
                .get_field_by_name("type_url")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            let bytes = m
                .get_field_by_name("value")
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            let type_name = url.rsplit('/').next().unwrap_or_default();
            let inner = desc
                .parent_pool()
                .get_message_by_name(type_name)
                .ok_or_else(|| {
                    ExecutionError::function_error("any", format!("unknown type `{url}`"))
                })?;
            let inner = DynamicMessage::decode(inner, bytes)
                .map_err(|e| ExecutionError::function_error("any", e.to_string()))?;
            message_value(inner)
        }
        _ => Ok(Value::Opaque(Arc::new(Message::new(m)))),
    }
}

fn internal(what: &str) -> ExecutionError {
    ExecutionError::InternalError(what.to_owned())
}

fn type_error(want: &str, got: &Value) -> ExecutionError {
    ExecutionError::UnexpectedType {
        got: format!("{:?}", got.type_of()),
        want: want.to_owned(),
    }
}

fn range_error(kind: &str) -> ExecutionError {
    ExecutionError::function_error("range", format!("value out of {kind} range"))
}

/// A CEL value as the protobuf value of a field of kind `kind`; `None` leaves the field unset
/// (`null` for a message field).
fn to_proto(kind: &Kind, v: &Value) -> Result<Option<PValue>, ExecutionError> {
    let int = |v: &Value| match v {
        Value::Int(i) => Ok(*i),
        other => Err(type_error("int", other)),
    };
    let uint = |v: &Value| match v {
        Value::UInt(u) => Ok(*u),
        other => Err(type_error("uint", other)),
    };
    Ok(Some(match kind {
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            PValue::I32(i32::try_from(int(v)?).map_err(|_| range_error("int32"))?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(int(v)?),
        Kind::Uint32 | Kind::Fixed32 => {
            PValue::U32(u32::try_from(uint(v)?).map_err(|_| range_error("uint32"))?)
        }
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(uint(v)?),
        Kind::Float => match v {
            Value::Float(f) => PValue::F32(*f as f32),
            other => return Err(type_error("double", other)),
        },
        Kind::Double => match v {
            Value::Float(f) => PValue::F64(*f),
            other => return Err(type_error("double", other)),
        },
        Kind::Bool => match v {
            Value::Bool(b) => PValue::Bool(*b),
            other => return Err(type_error("bool", other)),
        },
        Kind::String => match v {
            Value::String(s) => PValue::String(s.to_string()),
            other => return Err(type_error("string", other)),
        },
        Kind::Bytes => match v {
            Value::Bytes(b) => PValue::Bytes(prost_reflect::bytes::Bytes::from(b.to_vec())),
            other => return Err(type_error("bytes", other)),
        },
        Kind::Enum(e) => {
            if e.full_name() == "google.protobuf.NullValue" {
                match v {
                    Value::Null | Value::Int(0) => PValue::EnumNumber(0),
                    other => return Err(type_error("null", other)),
                }
            } else {
                PValue::EnumNumber(i32::try_from(int(v)?).map_err(|_| range_error("enum"))?)
            }
        }
        Kind::Message(md) => return message_for(md, v).map(|m| m.map(PValue::Message)),
    }))
}

/// A CEL value as a message of type `md` (a well-known type from the CEL value it stands for);
/// `None` for `null` (an unset field), except for `google.protobuf.Value`, where it is JSON's
/// null.
fn message_for(
    md: &MessageDescriptor,
    v: &Value,
) -> Result<Option<DynamicMessage>, ExecutionError> {
    let name = md.full_name();
    if let Value::Opaque(o) = v
        && let Some(m) = o.downcast_ref::<Message>()
    {
        if m.0.msg.descriptor().full_name() == name {
            return Ok(Some(m.0.msg.clone()));
        }
        if name == "google.protobuf.Any" {
            return Ok(Some(pack_any(md, &m.0.msg)?));
        }
        // a `google.protobuf.Value` takes a message JSON can write (`Empty`, `FieldMask`)
        if name != "google.protobuf.Value" {
            return Err(type_error(name, v));
        }
    }
    if matches!(v, Value::Null) {
        match name {
            // JSON's null, and an `Any` holding it
            "google.protobuf.Value" | "google.protobuf.Any" => {}
            "google.protobuf.Struct" | "google.protobuf.ListValue" => {
                return Err(ExecutionError::function_error(
                    "field",
                    format!("unsupported field type: null for `{name}`"),
                ));
            }
            // an unset field, an element left out
            _ => return Ok(None),
        }
    }
    let mut m = DynamicMessage::new(md.clone());
    let set = |m: &mut DynamicMessage, field: &str, v: &Value| -> Result<(), ExecutionError> {
        let fd = md
            .get_field_by_name(field)
            .ok_or_else(|| internal("a well-known type without its field"))?;
        set_field(m, &fd, v)
    };
    if is_wrapper(name) {
        set(&mut m, "value", v)?;
        return Ok(Some(m));
    }
    match (name, v) {
        ("google.protobuf.Timestamp", Value::Timestamp(t)) => {
            set(&mut m, "seconds", &Value::Int(t.timestamp()))?;
            set(
                &mut m,
                "nanos",
                &Value::Int(i64::from(t.timestamp_subsec_nanos())),
            )?;
        }
        ("google.protobuf.Duration", Value::Duration(d)) => {
            set(&mut m, "seconds", &Value::Int(d.num_seconds()))?;
            set(&mut m, "nanos", &Value::Int(i64::from(d.subsec_nanos())))?;
        }
        ("google.protobuf.Struct", Value::Map(_)) => set(&mut m, "fields", v)?,
        ("google.protobuf.ListValue", Value::List(_)) => set(&mut m, "values", v)?,
        ("google.protobuf.Value", v) => {
            let (field, v) = json_field(v)?;
            set(&mut m, field, &v)?;
        }
        ("google.protobuf.Any", v) => {
            let pool = md.parent_pool();
            let wkt = match v {
                Value::Bool(_) => "google.protobuf.BoolValue",
                Value::Int(_) => "google.protobuf.Int64Value",
                Value::UInt(_) => "google.protobuf.UInt64Value",
                Value::Float(_) => "google.protobuf.DoubleValue",
                Value::String(_) => "google.protobuf.StringValue",
                Value::Bytes(_) => "google.protobuf.BytesValue",
                Value::Timestamp(_) => "google.protobuf.Timestamp",
                Value::Duration(_) => "google.protobuf.Duration",
                Value::Map(_) => "google.protobuf.Struct",
                Value::List(_) => "google.protobuf.ListValue",
                Value::Null => "google.protobuf.Value",
                other => return Err(type_error("a message", other)),
            };
            let inner_desc = pool
                .get_message_by_name(wkt)
                .ok_or_else(|| internal("a well-known type missing from the pool"))?;
            let inner = message_for(&inner_desc, v)?
                .ok_or_else(|| internal("a well-known value without a message"))?;
            return Ok(Some(pack_any(md, &inner)?));
        }
        _ => return Err(type_error(name, v)),
    }
    Ok(Some(m))
}

/// The field of `google.protobuf.Value` a CEL value sets, and its value there, as protobuf's
/// JSON mapping writes it: an integer beyond ±(2^53 − 1) as a string, bytes in base64, a
/// duration and a timestamp as their JSON strings, a field mask as its paths, `Empty` as `{}`.
fn json_field(v: &Value) -> Result<(&'static str, Value), ExecutionError> {
    const MAX_SAFE: i64 = (1 << 53) - 1;
    let string = |s: String| ("string_value", Value::String(Arc::new(s)));
    Ok(match v {
        Value::Null => ("null_value", Value::Int(0)),
        Value::Bool(_) => ("bool_value", v.clone()),
        Value::Int(i) if i.abs() <= MAX_SAFE => ("number_value", Value::Float(*i as f64)),
        Value::Int(i) => string(i.to_string()),
        Value::UInt(u) if *u <= MAX_SAFE as u64 => ("number_value", Value::Float(*u as f64)),
        Value::UInt(u) => string(u.to_string()),
        Value::Float(_) => ("number_value", v.clone()),
        Value::String(_) => ("string_value", v.clone()),
        Value::Bytes(b) => {
            use base64::Engine as _;
            string(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        Value::Duration(d) => string(json_duration(d)),
        Value::Timestamp(t) => string(
            t.to_utc()
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        ),
        Value::Map(_) => ("struct_value", v.clone()),
        Value::List(_) => ("list_value", v.clone()),
        Value::Opaque(o) => match o.downcast_ref::<Message>().map(|m| &m.0.msg) {
            Some(m) if m.descriptor().full_name() == "google.protobuf.Empty" => (
                "struct_value",
                Value::Map(Map {
                    map: Arc::new(HashMap::new()),
                }),
            ),
            Some(m) if m.descriptor().full_name() == "google.protobuf.FieldMask" => {
                let paths = m
                    .get_field_by_name("paths")
                    .and_then(|p| {
                        p.as_list().map(|l| {
                            l.iter()
                                .filter_map(|x| x.as_str().map(str::to_owned))
                                .collect::<Vec<_>>()
                        })
                    })
                    .unwrap_or_default();
                string(paths.join(","))
            }
            _ => return Err(type_error("a JSON value", v)),
        },
        other => return Err(type_error("a JSON value", other)),
    })
}

/// A duration as protobuf's JSON mapping writes it: seconds, with 3, 6 or 9 fractional digits
/// when there are any (`1.5s` is `1.500s`).
fn json_duration(d: &chrono::Duration) -> String {
    let (secs, nanos) = (d.num_seconds(), d.subsec_nanos());
    if nanos == 0 {
        return format!("{secs}s");
    }
    let sign = if secs < 0 || nanos < 0 { "-" } else { "" };
    let (secs, nanos) = (secs.unsigned_abs(), nanos.unsigned_abs());
    let frac = if nanos % 1_000_000 == 0 {
        format!("{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{:06}", nanos / 1_000)
    } else {
        format!("{nanos:09}")
    };
    format!("{sign}{secs}.{frac}s")
}

fn pack_any(
    any: &MessageDescriptor,
    inner: &DynamicMessage,
) -> Result<DynamicMessage, ExecutionError> {
    let mut m = DynamicMessage::new(any.clone());
    let url = format!("{TYPE_URL_PREFIX}{}", inner.descriptor().full_name());
    for (field, value) in [
        ("type_url", PValue::String(url)),
        (
            "value",
            PValue::Bytes(prost_reflect::bytes::Bytes::from(inner.encode_to_vec())),
        ),
    ] {
        let fd = any
            .get_field_by_name(field)
            .ok_or_else(|| internal("Any without its fields"))?;
        m.set_field(&fd, value);
    }
    Ok(m)
}

/// Sets field `fd` of `m` from a CEL value (a list for a repeated field, a map for a map
/// field), checking types and ranges.
fn set_field(
    m: &mut DynamicMessage,
    fd: &FieldDescriptor,
    v: &Value,
) -> Result<(), ExecutionError> {
    let value = if fd.is_map() {
        let Kind::Message(entry) = fd.kind() else {
            return Err(internal("a map field without an entry message"));
        };
        let (kf, vf) = (entry.map_entry_key_field(), entry.map_entry_value_field());
        let Value::Map(map) = v else {
            return Err(type_error("map", v));
        };
        let mut out = HashMap::new();
        for (k, val) in map.map.iter() {
            let key = Value::from(k.clone());
            let key = match to_proto(&kf.kind(), &key)? {
                Some(PValue::Bool(b)) => MapKey::Bool(b),
                Some(PValue::I32(i)) => MapKey::I32(i),
                Some(PValue::I64(i)) => MapKey::I64(i),
                Some(PValue::U32(u)) => MapKey::U32(u),
                Some(PValue::U64(u)) => MapKey::U64(u),
                Some(PValue::String(s)) => MapKey::String(s),
                _ => return Err(type_error("a map key", &key)),
            };
            // a null message is left out
            if let Some(val) = to_proto(&vf.kind(), val)? {
                out.insert(key, val);
            }
        }
        PValue::Map(out)
    } else if fd.is_list() {
        let Value::List(items) = v else {
            return Err(type_error("list", v));
        };
        let kind = fd.kind();
        // a null message is left out
        let mut out = Vec::with_capacity(items.len());
        for x in items.iter() {
            out.extend(to_proto(&kind, x)?);
        }
        PValue::List(out)
    } else {
        match to_proto(&fd.kind(), v)? {
            Some(p) => p,
            None => {
                m.clear_field(fd);
                return Ok(());
            }
        }
    };
    m.try_set_field(fd, value)
        .map_err(|e| ExecutionError::function_error("field", e.to_string()))
}

/// A message type that struct literals construct.
struct MessageType {
    ty: Type,
    desc: MessageDescriptor,
}

impl cel::StructType for MessageType {
    fn get_type(&self) -> &Type {
        &self.ty
    }

    fn new_value<'b, 'v>(
        &self,
        fields: BTreeMap<String, CowVal<'b, 'v>>,
    ) -> Result<Box<dyn Val + 'v>, ExecutionError> {
        let mut m = DynamicMessage::new(self.desc.clone());
        for (name, value) in fields {
            let fd = self.desc.get_field_by_name(&name).ok_or_else(|| {
                ExecutionError::NoSuchKey(Arc::new(format!(
                    "no such field `{name}` in `{}`",
                    self.desc.full_name()
                )))
            })?;
            let value = Value::try_from(value.as_ref())?;
            set_field(&mut m, &fd, &value)?;
        }
        Box::<dyn Val>::try_from(message_value(m)?)
    }
}

/// Registers cel-go's proto extension macros: `proto.hasExt(msg, pkg.ext)` and
/// `proto.getExt(msg, pkg.ext)` test for and read the proto2 extension `pkg.ext` of `msg`
/// (they expand to ``has(msg.`pkg.ext`)`` and ``msg.`pkg.ext` ``).
pub fn extension(env: &mut Env) -> Result<(), cel::DeclarationError> {
    for (name, test) in [("hasExt", true), ("getExt", false)] {
        env.add_macro(Macro::receiver(name, 2, move |h, t, a| {
            get_ext(h, t, a, test)
        }))?;
    }
    Ok(())
}

fn get_ext(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
    test: bool,
) -> Result<Option<IdedExpr>, ParseError> {
    if !matches!(target.as_ref().map(|t| &t.expr), Some(Expr::Ident(ns)) if ns == "proto") {
        return Ok(None);
    }
    let [msg, ext]: [IdedExpr; 2] = std::mem::take(args)
        .try_into()
        .map_err(|_| helper.new_error(0, "proto.getExt and proto.hasExt take two arguments"))?;
    let mut segments = Vec::new();
    let mut e = &ext.expr;
    loop {
        match e {
            Expr::Ident(name) => {
                segments.push(name.as_str());
                break;
            }
            Expr::Select(s) if !s.test => {
                segments.push(s.field.as_str());
                e = &s.operand.expr;
            }
            _ => return Err(helper.new_error(ext.id, "invalid extension field")),
        }
    }
    segments.reverse();
    Ok(Some(helper.next_expr(Expr::Select(SelectExpr {
        operand: Box::new(msg),
        field: segments.join("."),
        test,
    }))))
}

/// Registers every message of `pool` as a struct type of `env` (constructible by its full
/// name, under the container too). Names already registered as other types are left alone.
pub fn register(env: &mut Env, pool: &DescriptorPool) {
    for desc in pool.all_messages() {
        if desc.is_map_entry() {
            continue;
        }
        let ty = match desc.full_name() {
            "google.protobuf.Timestamp" => TIMESTAMP_TYPE.to_owned(),
            "google.protobuf.Duration" => DURATION_TYPE.to_owned(),
            "google.protobuf.Any" => ANY_TYPE.to_owned(),
            name => Type::new_struct(name.to_owned()),
        };
        let _ = env.add_type(MessageType { ty, desc });
    }
}

/// Adds every enum constant of `pool` to `ctx` as an `int` variable named by its enum's full
/// name (`pkg.Msg.NestedEnum.BAR`): CEL's legacy enums, cel-go's default.
pub fn add_enum_constants(ctx: &mut Context<'_, '_>, pool: &DescriptorPool) {
    for e in pool.all_enums() {
        for v in e.values() {
            ctx.add_variable_from_value(
                format!("{}.{}", e.full_name(), v.name()),
                Value::Int(i64::from(v.number())),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Evaluates `expr` with the well-known types (the global pool holds them, `type.proto`'s
    /// `google.protobuf.Type` and `Field` among them).
    fn eval(expr: &str) -> Result<Value, ExecutionError> {
        let pool = DescriptorPool::global();
        let mut env = crate::cel::env();
        register(&mut env, &pool);
        let _ = env.add_extension(extension);
        let program = env.compile(expr).expect("compiles");
        let mut ctx = Context::with_env(Arc::new(env));
        add_enum_constants(&mut ctx, &pool);
        program.execute(&ctx)
    }

    fn holds(expr: &str) {
        assert_eq!(eval(expr), Ok(Value::Bool(true)), "{expr}");
    }

    #[test]
    fn fields_read_as_their_defaults_and_has_tells_presence() {
        holds("google.protobuf.Field{}.name == '' && !has(google.protobuf.Field{}.name)");
        holds("has(google.protobuf.Field{name: 'a'}.name)");
        holds("google.protobuf.Field{number: 7}.number == 7");
        // an unset message field is its message's default; an unset wrapper is null
        holds("google.protobuf.Type{}.source_context.file_name == ''");
        holds("!has(google.protobuf.Type{}.source_context)");
        holds("google.protobuf.Type{}.fields == []");
        holds(
            "google.protobuf.Type{fields: [google.protobuf.Field{name: 'x'}]}.fields[0].name == 'x'",
        );
        // optional selection and optional fields use presence
        holds("!google.protobuf.Field{}.?name.hasValue()");
        holds("google.protobuf.Field{?name: optional.none()} == google.protobuf.Field{}");
        holds("google.protobuf.Field{?name: optional.of('n')}.name == 'n'");
    }

    #[test]
    fn messages_compare_by_type_and_fields() {
        holds(
            "google.protobuf.Field{name: 'a', number: 1} == google.protobuf.Field{number: 1, name: 'a'}",
        );
        holds("google.protobuf.Field{name: 'a'} != google.protobuf.Field{name: 'b'}");
        holds("google.protobuf.Field{} != google.protobuf.Option{}");
        holds("type(google.protobuf.Field{}) == google.protobuf.Field");
    }

    #[test]
    fn enums_are_ints_and_assignments_are_checked() {
        holds("google.protobuf.Field.Kind.TYPE_STRING == 9");
        holds("google.protobuf.Field{kind: google.protobuf.Field.Kind.TYPE_STRING}.kind == 9");
        // int32 range, field types and names
        assert!(eval("google.protobuf.Field{number: 3000000000}").is_err());
        assert!(eval("google.protobuf.Field{number: 'x'}").is_err());
        assert!(eval("google.protobuf.Field{nmae: 'x'}").is_err());
        assert!(eval("google.protobuf.Field{kind: 1u}").is_err());
    }

    #[test]
    fn well_known_types_are_cel_values() {
        holds("google.protobuf.Int32Value{value: 7} == 7");
        holds("google.protobuf.StringValue{} == ''");
        holds("google.protobuf.Timestamp{seconds: 1} == timestamp(1)");
        holds("google.protobuf.Duration{seconds: 2, nanos: 500000000} == duration('2.5s')");
        holds("google.protobuf.Struct{fields: {'a': 1, 'b': [true]}} == {'a': 1.0, 'b': [true]}");
        holds("google.protobuf.ListValue{values: ['x', null]} == ['x', null]");
        holds("google.protobuf.Value{string_value: 'x'} == 'x'");
        // a repeated message field
        holds(
            "google.protobuf.Api{methods: [google.protobuf.Method{name: 'm'}]}.methods[0].name == 'm'",
        );
    }

    #[test]
    fn a_message_survives_a_trip_through_a_variable_and_a_result() {
        let pool = DescriptorPool::global();
        let desc = pool
            .get_message_by_name("google.protobuf.Field")
            .expect("Field");
        let mut m = DynamicMessage::new(desc.clone());
        m.set_field_by_name("name", PValue::String("f".into()));
        let mut env = crate::cel::env();
        register(&mut env, &pool);
        let program = env.compile("m.name + '!'").expect("compiles");
        let echo = env.compile("m").expect("compiles");
        let mut ctx = Context::with_env(Arc::new(env));
        ctx.add_variable_from_value("m", message_value(m.clone()).expect("a message"));
        assert_eq!(
            program.execute(&ctx),
            Ok(Value::String(Arc::new("f!".into())))
        );
        let Ok(Value::Opaque(o)) = echo.execute(&ctx) else {
            panic!("a message result is an opaque value");
        };
        assert_eq!(o.downcast_ref::<Message>().map(Message::message), Some(&m));
    }

    #[test]
    fn proto_get_ext_names_an_extension_field() {
        // no extension of Field is in the global pool: the macro expands to a select of the
        // extension's full name, which is then unknown
        let e = eval("proto.getExt(google.protobuf.Field{}, pkg.ext)").unwrap_err();
        assert!(e.to_string().contains("pkg.ext"), "{e}");
        assert!(eval("proto.hasExt(google.protobuf.Field{}, pkg.ext)").is_err());
    }
}

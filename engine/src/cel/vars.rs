//! CEL variables: Envoy's attribute vocabulary built from the request model.
//!
//! Every attribute is always present — missing strings are `""`, missing maps `{}` — and a
//! header that was not sent reads as `""`, so rules need no `has()` guards. Values are built as
//! CEL values directly (no serde round trip), and only for the variables the loaded policies
//! use.

use cel::ExecutionError;
use cel::common::traits::{Container, Indexer, Iterable, Sizer, Zeroer};
use cel::common::types::{
    self, CelBool, CelInt, CelList, CelMap, CelMapEntries, CelMapKey, CelNull, CelString,
    CelTimestamp, Type, cel_map_entries,
};
use cel::common::value::{CowVal, Val};

/// A map whose missing string keys read as `""` (headers, attributes that may be absent).
#[derive(Debug, Clone)]
pub struct LenientMap(pub CelMap<'static>, CelString<'static>);

impl LenientMap {
    pub fn new(map: CelMap<'static>) -> Self {
        Self(map, CelString::from(""))
    }
}

impl Default for LenientMap {
    fn default() -> Self {
        Self::new(CelMap::default())
    }
}

impl Val for LenientMap {
    fn get_type(&self) -> &Type {
        &types::MAP_TYPE
    }
    fn cel_type() -> &'static Type {
        &types::MAP_TYPE
    }
    fn as_container(&self) -> Option<&dyn Container> {
        self.0.as_container()
    }
    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }
    fn as_iterable<'b, 'w>(&'b self) -> Option<&'b (dyn Iterable + 'w)>
    where
        Self: 'w,
    {
        self.0.as_iterable()
    }
    fn as_sizer(&self) -> Option<&dyn Sizer> {
        self.0.as_sizer()
    }
    fn as_zeroer(&self) -> Option<&dyn Zeroer> {
        self.0.as_zeroer()
    }
    fn equals(&self, other: &dyn Val) -> bool {
        match other.downcast_ref::<LenientMap>() {
            Some(o) => self.0.equals(&o.0),
            None => self.0.equals(other),
        }
    }
    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(self.clone())
    }
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl cel::common::value::StaticVal for LenientMap {}

impl Indexer for LenientMap {
    fn get<'b, 'w>(&'b self, key: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        match self.0.get(key) {
            Err(ExecutionError::NoSuchKey(_)) if key.downcast_ref::<CelString>().is_some() => {
                Ok(CowVal::Borrowed(&self.1))
            }
            other => other,
        }
    }
    fn steal<'w>(self: Box<Self>, key: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(key).map(CowVal::into_owned)
    }
}

/// Build maps of attribute name → value.
pub struct MapBuilder(CelMapEntries<'static>);

impl MapBuilder {
    pub fn new() -> Self {
        Self(cel_map_entries(16))
    }
    /// Room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        Self(cel_map_entries(n))
    }
    /// An entry under one of the vocabulary's names: the key is borrowed, not copied.
    pub fn val(mut self, k: &'static str, v: Box<dyn Val>) -> Self {
        self.0.insert(CelMapKey::String(CelString::from(k)), v);
        self
    }
    /// An entry under a name known only at run time (a header's).
    pub fn named(mut self, k: &str, v: Box<dyn Val>) -> Self {
        self.0
            .insert(CelMapKey::String(CelString::from(k.to_string())), v);
        self
    }
    pub fn str(self, k: &'static str, v: &str) -> Self {
        self.val(k, Box::new(text(v)))
    }
    /// A string the caller already owns, moved in rather than copied.
    pub fn string(self, k: &'static str, v: String) -> Self {
        self.val(k, Box::new(CelString::from(v)))
    }
    pub fn int(self, k: &'static str, v: i64) -> Self {
        self.val(k, Box::new(CelInt::from(v)))
    }
    pub fn bool(self, k: &'static str, v: bool) -> Self {
        self.val(k, Box::new(CelBool::from(v)))
    }
    pub fn map(self) -> CelMap<'static> {
        CelMap::from(self.0)
    }
    pub fn lenient(self) -> LenientMap {
        LenientMap::new(self.map())
    }
}

/// A CEL string of `v`; the empty string (most of the vocabulary's absent attributes) without
/// an allocation.
fn text(v: &str) -> CelString<'static> {
    if v.is_empty() {
        CelString::from("")
    } else {
        CelString::from(v.to_string())
    }
}

impl Default for MapBuilder {
    fn default() -> Self {
        Self::new()
    }
}

pub fn string_map<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>) -> LenientMap {
    let mut b = MapBuilder::with_capacity(pairs.len());
    for (k, v) in pairs {
        b = b.named(k, Box::new(text(v)));
    }
    b.lenient()
}

pub fn timestamp(seconds: i64, nanos: i32) -> Box<dyn Val> {
    let dt = chrono::DateTime::from_timestamp(seconds, u32::try_from(nanos).unwrap_or(0))
        .unwrap_or_default()
        .fixed_offset();
    Box::new(CelTimestamp::from(dt))
}

/// A Rego value as a CEL value (for `input`, and for `data`).
pub fn from_rego(v: &regorus::Value) -> Box<dyn Val> {
    use regorus::Value as R;
    match v {
        R::Null | R::Undefined => Box::new(CelNull),
        R::Bool(b) => Box::new(CelBool::from(*b)),
        R::Number(_) => {
            let j = crate::value::to_json(v);
            match (j.as_i64(), j.as_u64(), j.as_f64()) {
                (Some(i), _, _) => Box::new(CelInt::from(i)),
                (None, Some(u), _) => Box::new(cel::common::types::CelUInt::from(u)),
                (_, _, Some(f)) => Box::new(cel::common::types::CelDouble::from(f)),
                _ => Box::new(CelNull),
            }
        }
        R::String(s) => Box::new(CelString::from(s.to_string())),
        R::Array(items) => Box::new(CelList::from(
            items.iter().map(from_rego).collect::<Vec<_>>(),
        )),
        R::Set(items) => Box::new(CelList::from(
            items.iter().map(from_rego).collect::<Vec<_>>(),
        )),
        R::Object(o) => {
            let mut m = cel_map_entries(o.len());
            for (k, val) in o.iter() {
                let key = match k {
                    R::String(s) => CelMapKey::String(CelString::from(s.to_string())),
                    other => {
                        CelMapKey::String(CelString::from(crate::value::to_json(other).to_string()))
                    }
                };
                m.insert(key, from_rego(val));
            }
            Box::new(CelMap::from(m))
        }
    }
}

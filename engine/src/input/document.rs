//! The input document's one shape, walked once and handed to a [`Sink`]: a Rego value for the
//! policies ([`Tree`]), or JSON text for a decision record ([`Text`], written straight from the
//! request when the event is written, with no value in between).
//!
//! Both sinks see the same calls, so the document a policy reads and the one a record holds
//! cannot drift apart. The walk visits each object's fixed keys in their sorted order (the order
//! in which a Rego object serializes); keys known only at run time (header names, labels,
//! namespaces, query names) are put in order by the walk for a sink that writes as it goes
//! ([`Sink::ORDERED`]), with the last of equal keys kept, as a Rego object keeps it.

use regorus::Value;

use super::{KEYS, Needs, Reading, base64, below, wants};
use crate::audit::mask::is_masked_header as is_masked;
use crate::path::PathPolicy;
use crate::request::{Address, AuthzRequest, HttpRequest, Metadata, Peer};
use crate::value::from_json;

/// A key of the document: one of its fixed names (shared, see `KEYS`), or one known only at
/// run time.
#[derive(Clone, Copy)]
pub(crate) enum Key<'a> {
    Fixed(&'a Value),
    Named(&'a str),
}

/// Where the walk puts the document. Every method with a key adds an entry to the object
/// open last; `item_*` add an element to the list open last.
pub(crate) trait Sink {
    /// Whether entries must come in key order (text written as it goes); a Rego object sorts
    /// its entries itself.
    const ORDERED: bool;
    /// An object at `key`, `room` entries expected; then its entries, then [`Self::close`].
    fn open(&mut self, key: Key<'_>, room: usize);
    /// An object as the next element of the open list.
    fn open_item(&mut self, room: usize);
    fn close(&mut self);
    /// A list at `key`; then its elements, then [`Self::close_list`].
    fn open_list(&mut self, key: Key<'_>, room: usize);
    fn close_list(&mut self);
    fn str(&mut self, key: Key<'_>, s: &str);
    fn item_str(&mut self, s: &str);
    fn uint(&mut self, key: Key<'_>, n: u64);
    fn int(&mut self, key: Key<'_>, n: i64);
    fn bool(&mut self, key: Key<'_>, b: bool);
    /// A value already built (a parsed body, metadata, the identity).
    fn value(&mut self, key: Key<'_>, v: &Value);
}

fn fixed(v: &Value) -> Key<'_> {
    Key::Fixed(v)
}

/// The entries of `pairs` as `S` needs them: in order, the last of equal keys kept, for an
/// ordered sink; as given otherwise (a Rego object orders and keeps the last itself).
fn entries<T, S: Sink>(pairs: &[(String, T)]) -> impl Iterator<Item = &(String, T)> {
    let mut order: Vec<usize> = Vec::new();
    if S::ORDERED && pairs.len() > 1 {
        order.extend(0..pairs.len());
        order.sort_by(|a, b| pairs[*a].0.cmp(&pairs[*b].0));
        // A stable sort keeps equal keys in arrival order: keep the last of each run.
        order.dedup_by(|later, earlier| {
            let same = pairs[*later].0 == pairs[*earlier].0;
            if same {
                *earlier = *later;
            }
            same
        });
    }
    let sorted = !order.is_empty();
    let direct = (!sorted).then(|| pairs.iter()).into_iter().flatten();
    let by_order = order.into_iter().map(move |i| &pairs[i]);
    direct.chain(by_order)
}

/// A map of strings (only when it has entries, as protojson writes it).
fn string_map<S: Sink>(s: &mut S, key: &Value, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        return;
    }
    s.open(fixed(key), pairs.len());
    for (k, v) in entries::<_, S>(pairs) {
        s.str(Key::Named(k), v);
    }
    s.close();
}

/// A string, only when it is not empty (as protojson writes it).
fn text<S: Sink>(s: &mut S, key: &Value, v: &str) {
    if !v.is_empty() {
        s.str(fixed(key), v);
    }
}

/// [`text`] where `n` reads `key`.
fn text_read<S: Sink>(s: &mut S, n: &Needs, key: &Value, v: &str) {
    if wants(n, key) {
        text(s, key, v);
    }
}

/// [`string_map`] where `n` reads `key`.
fn map_read<S: Sink>(s: &mut S, n: &Needs, key: &Value, pairs: &[(String, String)]) {
    if wants(n, key) {
        string_map(s, key, pairs);
    }
}

/// What the walk reads: the request, as read, and the parts wanted.
pub(crate) struct Walk<'a> {
    pub req: &'a AuthzRequest,
    pub reading: &'a Reading,
    pub identity: Option<&'a Value>,
    pub needs: &'a Needs,
    /// Headers left out of `headers` and `headerMap` (a record's credential headers).
    pub masked: &'a [String],
}

impl Walk<'_> {
    /// The document, as the root object's entries (the sink has the root open).
    pub(crate) fn document<S: Sink>(&self, s: &mut S) {
        let k = &*KEYS;
        let Walk {
            req,
            reading,
            identity,
            needs,
            ..
        } = *self;
        if let Some(an) = below(needs, &k.attributes) {
            self.attributes(s, an);
        }
        if let Some(v) = identity
            && wants(needs, &k.identity)
        {
            s.value(fixed(&k.identity), v);
        }
        if let Some(parsed) = &reading.body
            && wants(needs, &k.parsed_body)
        {
            s.value(fixed(&k.parsed_body), &parsed.value);
        }
        if wants(needs, &k.parsed_path) {
            s.open_list(fixed(&k.parsed_path), reading.path.segment_count());
            for seg in reading.path.segments() {
                s.item_str(seg);
            }
            s.close_list();
        }
        if wants(needs, &k.parsed_query) {
            s.open(fixed(&k.parsed_query), reading.query.len());
            for (name, vs) in entries::<_, S>(&reading.query) {
                s.open_list(Key::Named(name), vs.len());
                for v in vs {
                    s.item_str(v);
                }
                s.close_list();
            }
            s.close();
        }
        if let Some(p) = req.source.as_ref().map(|s| s.principal.as_str())
            && !p.is_empty()
            && wants(needs, &k.source_principal)
        {
            s.str(fixed(&k.source_principal), p);
        }
        if let Some(parsed) = &reading.body
            && wants(needs, &k.truncated_body)
        {
            s.bool(fixed(&k.truncated_body), parsed.truncated);
        }
        if wants(needs, &k.version) {
            s.open(fixed(&k.version), 2);
            s.value(fixed(&k.encoding), &k.protojson);
            s.value(fixed(&k.ext_authz), &k.v3);
            s.close();
        }
    }

    fn attributes<S: Sink>(&self, s: &mut S, an: &Needs) {
        let k = &*KEYS;
        let req = self.req;
        s.open(fixed(&k.attributes), 4);
        map_read(s, an, &k.context_extensions, &req.context_extensions);
        if let Some(d) = &req.destination
            && let Some(n) = below(an, &k.destination)
        {
            peer(s, &k.destination, d, n);
        }
        if let Some(m) = &req.metadata_context
            && wants(an, &k.metadata_context)
        {
            metadata(s, &k.metadata_context, m);
        }
        if (req.time.is_some() || req.http.is_some())
            && let Some(rn) = below(an, &k.request)
        {
            s.open(fixed(&k.request), 2);
            if req.http.is_some()
                && let Some(hn) = below(rn, &k.http)
            {
                self.http(s, hn);
            }
            if let Some(t) = req.time
                && wants(rn, &k.time)
            {
                s.open(fixed(&k.time), 2);
                if t.nanos != 0 {
                    s.int(fixed(&k.nanos), i64::from(t.nanos));
                }
                if t.seconds != 0 {
                    s.int(fixed(&k.seconds), t.seconds);
                }
                s.close();
            }
            s.close();
        }
        if let Some(m) = &req.route_metadata_context
            && wants(an, &k.route_metadata_context)
        {
            metadata(s, &k.route_metadata_context, m);
        }
        if let Some(src) = &req.source
            && let Some(n) = below(an, &k.source)
        {
            peer(s, &k.source, src, n);
        }
        if let Some(t) = &req.tls_session
            && wants(an, &k.tls_session)
        {
            s.open(fixed(&k.tls_session), 1);
            text(s, &k.sni, &t.sni);
            s.close();
        }
        s.close();
    }

    fn http<S: Sink>(&self, s: &mut S, n: &Needs) {
        let k = &*KEYS;
        let empty = HttpRequest::default();
        let h = self.req.http.as_ref().unwrap_or(&empty);
        let headers = self.reading.headers(self.req);
        let masked = self.masked;
        s.open(fixed(&k.http), 8);
        text_read(s, n, &k.body, &h.body);
        text_read(s, n, &k.fragment, &h.fragment);
        if let Some(raw) = &h.header_map
            && wants(n, &k.header_map)
        {
            s.open(fixed(&k.header_map), 1);
            if !raw.is_empty() {
                s.open_list(fixed(&k.headers), raw.len());
                for r in raw.iter().filter(|r| !is_masked(masked, &r.key)) {
                    s.open_item(3);
                    text(s, &k.key, &r.key);
                    if !r.raw_value.is_empty() {
                        s.str(fixed(&k.raw_value), &base64(&r.raw_value));
                    }
                    text(s, &k.value, &r.value);
                    s.close();
                }
                s.close_list();
            }
            s.close();
        }
        match below(n, &k.headers) {
            None => {}
            Some(Needs::Whole) if !headers.is_empty() => {
                s.open(fixed(&k.headers), headers.len());
                for (name, value) in entries::<_, S>(headers) {
                    if !is_masked(masked, name) {
                        s.str(Key::Named(name), value);
                    }
                }
                s.close();
            }
            Some(Needs::Whole) => {}
            // Only the headers read by name (a reference with a constant name).
            Some(Needs::Keys(names)) => {
                // Each name looked up once (a check's hot path: the policy's headers by name).
                let read: smallvec::SmallVec<[&(String, String); 8]> = entries::<_, S>(headers)
                    .filter(|(name, _)| {
                        names.contains_key(name.as_str()) && !is_masked(masked, name)
                    })
                    .collect();
                if !read.is_empty() {
                    s.open(fixed(&k.headers), read.len());
                    for (name, value) in read {
                        s.str(Key::Named(name), value);
                    }
                    s.close();
                }
            }
        }
        // Strict mode gives the host one spelling, as it gives the path one (see the README).
        if wants(n, &k.host) {
            match self.reading.path_policy {
                PathPolicy::Strict => text(s, &k.host, &self.reading.host.canonical()),
                PathPolicy::Lenient => text(s, &k.host, &h.host),
            }
        }
        text_read(s, n, &k.id, &h.id);
        text_read(s, n, &k.method, &h.method);
        text_read(s, n, &k.path, &h.path);
        text_read(s, n, &k.protocol, &h.protocol);
        text_read(s, n, &k.query, &h.query);
        if !h.raw_body.is_empty() && wants(n, &k.raw_body) {
            s.str(fixed(&k.raw_body), &base64(&h.raw_body));
        }
        text_read(s, n, &k.scheme, &h.scheme);
        if h.size != 0 && wants(n, &k.size) {
            s.int(fixed(&k.size), h.size);
        }
        s.close();
    }
}

fn peer<S: Sink>(s: &mut S, key: &Value, p: &Peer, n: &Needs) {
    let k = &*KEYS;
    s.open(fixed(key), 4);
    if let Some(a) = &p.address
        && wants(n, &k.address)
    {
        address(s, a);
    }
    text_read(s, n, &k.certificate, &p.certificate);
    map_read(s, n, &k.labels, &p.labels);
    text_read(s, n, &k.principal, &p.principal);
    text_read(s, n, &k.service, &p.service);
    s.close();
}

fn address<S: Sink>(s: &mut S, a: &Address) {
    let k = &*KEYS;
    s.open(fixed(&k.address), 1);
    match a {
        Address::Socket(sa) => {
            s.open(fixed(&k.socket_address), 2);
            text(s, &k.address, &sa.address);
            if sa.ipv4_compat {
                s.bool(fixed(&k.ipv4_compat), true);
            }
            text(s, &k.named_port, &sa.named_port);
            if sa.port_value != 0 {
                s.uint(fixed(&k.port_value), u64::from(sa.port_value));
            }
            if let Some(p) = &sa.protocol {
                text(s, &k.protocol, p);
            }
            text(s, &k.resolver_name, &sa.resolver_name);
            s.close();
        }
        Address::Pipe { path, mode } => {
            s.open(fixed(&k.pipe), 2);
            if *mode != 0 {
                s.uint(fixed(&k.mode), u64::from(*mode));
            }
            text(s, &k.path, path);
            s.close();
        }
        Address::EnvoyInternal {
            server_listener_name,
            endpoint_id,
        } => {
            s.open(fixed(&k.envoy_internal_address), 2);
            text(s, &k.endpoint_id, endpoint_id);
            text(s, &k.server_listener_name, server_listener_name);
            s.close();
        }
    }
    s.close();
}

fn metadata<S: Sink>(s: &mut S, key: &Value, m: &Metadata) {
    let k = &*KEYS;
    s.open(fixed(key), 2);
    if !m.filter_metadata.is_empty() {
        s.open(fixed(&k.filter_metadata), m.filter_metadata.len());
        for (ns, v) in entries::<_, S>(&m.filter_metadata) {
            s.value(Key::Named(ns), &from_json(v));
        }
        s.close();
    }
    if !m.typed_filter_metadata.is_empty() {
        s.open(
            fixed(&k.typed_filter_metadata),
            m.typed_filter_metadata.len(),
        );
        for (ns, url) in entries::<_, S>(&m.typed_filter_metadata) {
            s.open(Key::Named(ns), 1);
            text(s, &k.at_type, url);
            s.close();
        }
        s.close();
    }
    s.close();
}

/// The document as a Rego value: each object's entries gathered, then made an object (which
/// orders them and keeps the last of equal keys).
pub(crate) struct Tree {
    /// The objects open, the root first, each with its key in the object above (none for the
    /// root and for a list's element): inline, as deep as the document's shape goes (seven),
    /// so the walk itself allocates nothing.
    objects: smallvec::SmallVec<[OpenObject; 8]>,
    /// The lists open, with their keys.
    lists: smallvec::SmallVec<[(Value, Vec<Value>); 2]>,
}

/// An object being built: its key in the object above (none for the root and for a list's
/// element), and its entries.
type OpenObject = (Option<Value>, Vec<(Value, Value)>);

impl Tree {
    pub(crate) fn new() -> Self {
        let mut objects = smallvec::SmallVec::new();
        objects.push((None, Vec::with_capacity(8)));
        Tree {
            objects,
            lists: smallvec::SmallVec::new(),
        }
    }

    #[inline(always)]
    fn key(key: Key<'_>) -> Value {
        match key {
            Key::Fixed(v) => v.clone(),
            Key::Named(s) => Value::from(s),
        }
    }

    #[inline(always)]
    fn entry(&mut self, key: Value, v: Value) {
        if let Some((_, entries)) = self.objects.last_mut() {
            entries.push((key, v));
        }
    }

    #[inline(always)]
    fn item(&mut self, v: Value) {
        if let Some((_, items)) = self.lists.last_mut() {
            items.push(v);
        }
    }

    /// The root object, once the walk is done.
    pub(crate) fn done(mut self) -> Value {
        match self.objects.pop() {
            Some((_, entries)) => Value::from(regorus::value::Object::from_entries(entries)),
            None => Value::Undefined,
        }
    }
}

impl Sink for Tree {
    const ORDERED: bool = false;

    #[inline]
    fn open(&mut self, key: Key<'_>, room: usize) {
        self.objects
            .push((Some(Self::key(key)), Vec::with_capacity(room)));
    }

    #[inline]
    fn open_item(&mut self, room: usize) {
        self.objects.push((None, Vec::with_capacity(room)));
    }

    #[inline]
    fn close(&mut self) {
        if let Some((key, entries)) = self.objects.pop() {
            let v = Value::from(regorus::value::Object::from_entries(entries));
            match key {
                Some(key) => self.entry(key, v),
                None => self.item(v),
            }
        }
    }

    #[inline]
    fn open_list(&mut self, key: Key<'_>, room: usize) {
        self.lists.push((Self::key(key), Vec::with_capacity(room)));
    }

    #[inline]
    fn close_list(&mut self) {
        if let Some((key, items)) = self.lists.pop() {
            self.entry(key, Value::from(items));
        }
    }

    #[inline]
    fn str(&mut self, key: Key<'_>, s: &str) {
        self.entry(Self::key(key), Value::from(s));
    }

    #[inline]
    fn item_str(&mut self, s: &str) {
        self.item(Value::from(s));
    }

    #[inline]
    fn uint(&mut self, key: Key<'_>, n: u64) {
        self.entry(Self::key(key), Value::from(n));
    }

    #[inline]
    fn int(&mut self, key: Key<'_>, n: i64) {
        self.entry(Self::key(key), Value::from(n));
    }

    #[inline]
    fn bool(&mut self, key: Key<'_>, b: bool) {
        self.entry(Self::key(key), Value::Bool(b));
    }

    #[inline]
    fn value(&mut self, key: Key<'_>, v: &Value) {
        self.entry(Self::key(key), v.clone());
    }
}

/// The document as JSON text, written as the walk goes: the bytes serde_json writes for the
/// Rego value [`Tree`] builds (strings escaped by serde_json, numbers as integers).
pub(crate) struct Text<'a> {
    out: &'a mut Vec<u8>,
    /// Per open object or list, whether nothing was written in it yet.
    first: smallvec::SmallVec<[bool; 16]>,
    /// Whether a value did not encode.
    failed: bool,
}

impl<'a> Text<'a> {
    /// The root object opened in `out`.
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        let mut first = smallvec::SmallVec::new();
        first.push(true);
        Text {
            out,
            first,
            failed: false,
        }
    }

    /// The root object closed; false when a value in it did not encode (the text is then not
    /// the document, and the caller leaves it out as it leaves out a value that does not encode).
    pub(crate) fn done(self) -> bool {
        self.out.push(b'}');
        !self.failed
    }

    fn comma(&mut self) {
        if let Some(first) = self.first.last_mut() {
            if !*first {
                self.out.push(b',');
            }
            *first = false;
        }
    }

    fn string(&mut self, s: &str) {
        // Writing to a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *self.out, s);
    }

    fn key(&mut self, key: Key<'_>) {
        self.comma();
        match key {
            Key::Fixed(Value::String(s)) => {
                // The document's own names: plain ASCII, never escaped.
                self.out.push(b'"');
                self.out.extend_from_slice(s.as_bytes());
                self.out.extend_from_slice(b"\":");
            }
            Key::Fixed(other) => {
                let _ = serde_json::to_writer(&mut *self.out, other);
                self.out.push(b':');
            }
            Key::Named(s) => {
                self.string(s);
                self.out.push(b':');
            }
        }
    }
}

impl Sink for Text<'_> {
    const ORDERED: bool = true;

    fn open(&mut self, key: Key<'_>, _room: usize) {
        self.key(key);
        self.out.push(b'{');
        self.first.push(true);
    }

    fn open_item(&mut self, _room: usize) {
        self.comma();
        self.out.push(b'{');
        self.first.push(true);
    }

    fn close(&mut self) {
        self.first.pop();
        self.out.push(b'}');
    }

    fn open_list(&mut self, key: Key<'_>, _room: usize) {
        self.key(key);
        self.out.push(b'[');
        self.first.push(true);
    }

    fn close_list(&mut self) {
        self.first.pop();
        self.out.push(b']');
    }

    fn str(&mut self, key: Key<'_>, s: &str) {
        self.key(key);
        self.string(s);
    }

    fn item_str(&mut self, s: &str) {
        self.comma();
        self.string(s);
    }

    fn uint(&mut self, key: Key<'_>, n: u64) {
        self.key(key);
        let _ = serde_json::to_writer(&mut *self.out, &n);
    }

    fn int(&mut self, key: Key<'_>, n: i64) {
        self.key(key);
        let _ = serde_json::to_writer(&mut *self.out, &n);
    }

    fn bool(&mut self, key: Key<'_>, b: bool) {
        self.key(key);
        self.out
            .extend_from_slice(if b { b"true" } else { b"false" });
    }

    fn value(&mut self, key: Key<'_>, v: &Value) {
        self.key(key);
        if serde_json::to_writer(&mut *self.out, v).is_err() {
            self.failed = true;
        }
    }
}

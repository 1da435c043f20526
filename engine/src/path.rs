//! Canonical request paths: the one function that turns Envoy's raw request target into the path
//! policies see.
//!
//! Envoy hands over the request target exactly as the client sent it ("No decoding is
//! performed"). Authorizers that parse it differently from the backend have been bypassed again
//! and again: `//admin` read as a URI authority (CVE-2026-26205), `%2F`/`%5C` decoded by the
//! backend only (CVE-2021-31920), `/../` resolved by the backend only (CVE-2019-9901), a fragment
//! kept in the path (CVE-2021-39156), a re-encoded `?` (CVE-2026-32811).
//!
//! The strict profile (the default) therefore accepts only paths whose meaning is unambiguous:
//! the target is split at the first `?`, percent-decoded exactly once, and rejected if anything
//! could be read two ways — a raw `#` or `\`, control characters or non-ASCII bytes, an encoded
//! `/`, `\`, NUL, `?` or `#`, a leftover `%XX` after decoding (double encoding), invalid UTF-8,
//! `.` or `..` segments, or empty interior segments (`//`). What is accepted is already in its
//! only reading, so canonicalization is idempotent.

use std::fmt;

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`): what a URL
/// component, a query value or Envoy's forwarded PEM encodes.
pub const UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encode `s` as a URL component (everything but the unreserved characters).
pub fn encode_component(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, UNRESERVED).to_string()
}

/// How strictly request paths are checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PathPolicy {
    /// Reject every ambiguous path (the default).
    #[default]
    Strict,
    /// OPA-Envoy's behaviour: split at `?`, decode once, split on `/`; nothing is rejected
    /// except undecodable escapes. For compatibility testing only.
    Lenient,
}

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathError {
    NotOriginForm,
    Fragment,
    RawBackslash,
    ControlOrNonAscii,
    InvalidEscape,
    EncodedDelimiter(&'static str),
    DoubleEncoding,
    InvalidUtf8,
    DotSegment,
    EmptySegment,
    /// An unreserved character (RFC 3986 §2.3: letters, digits, `-._~`) sent percent-encoded.
    EncodedUnreserved(char),
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::NotOriginForm => f.write_str("path does not start with `/`"),
            PathError::Fragment => f.write_str("path contains a fragment (`#`)"),
            PathError::RawBackslash => f.write_str("path contains a backslash"),
            PathError::ControlOrNonAscii => {
                f.write_str("path contains a control character or a non-ASCII byte")
            }
            PathError::InvalidEscape => f.write_str("path contains an invalid percent-escape"),
            PathError::EncodedDelimiter(d) => write!(f, "path contains an encoded `{d}`"),
            PathError::DoubleEncoding => f.write_str("path is percent-encoded twice"),
            PathError::InvalidUtf8 => f.write_str("decoded path is not valid UTF-8"),
            PathError::DotSegment => f.write_str("path contains a `.` or `..` segment"),
            PathError::EmptySegment => f.write_str("path contains an empty segment (`//`)"),
            PathError::EncodedUnreserved(c) => write!(
                f,
                "path percent-encodes `{c}`, which needs no encoding (RFC 3986 §2.3): `/%69nternal` is `/internal` to the backend but not to a rule on the raw path"
            ),
        }
    }
}

impl std::error::Error for PathError {}

/// A request target split into a canonical path and its query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath {
    /// The decoded path, starting with `/` (empty when the request had no path).
    pub path: String,
    /// Where [`Self::segments`] start in `path`: past its leading `/` (all of them in lenient
    /// mode, as OPA-Envoy trims them).
    segments_from: usize,
    /// The raw query string (without `?`), not decoded.
    pub raw_query: String,
}

impl CanonicalPath {
    /// A request without a path (Envoy sends none only for CONNECT): `parsed_path` `[""]`.
    pub fn empty() -> Self {
        CanonicalPath {
            path: String::new(),
            segments_from: 0,
            raw_query: String::new(),
        }
    }

    /// Decoded segments as OPA-Envoy's `parsed_path` has them: leading `/` trimmed, split on
    /// `/` (`/` → `[""]`, `/a/b/` → `["a", "b", ""]`). Read from the path, not kept apart.
    pub fn segments(&self) -> std::str::Split<'_, char> {
        self.path[self.segments_from..].split('/')
    }

    /// How many [`Self::segments`] there are.
    pub fn segment_count(&self) -> usize {
        self.segments().count()
    }
}

/// Canonicalize a raw request target (`attributes.request.http.path`).
pub fn canonicalize(target: &str, policy: PathPolicy) -> Result<CanonicalPath, PathError> {
    // A request without a path (Envoy sends none only for CONNECT) has nothing to confuse:
    // OPA-Envoy gives it `parsed_path` [""].
    if target.is_empty() {
        return Ok(CanonicalPath::empty());
    }
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((target, ""));
    match policy {
        PathPolicy::Strict => strict(raw_path, raw_query),
        PathPolicy::Lenient => {
            let decoded = percent_decode(raw_path).ok_or(PathError::InvalidEscape)?;
            let path = String::from_utf8_lossy(&decoded).into_owned();
            Ok(CanonicalPath {
                // OPA-Envoy trims every leading `/`.
                segments_from: path.len() - path.trim_start_matches('/').len(),
                path,
                raw_query: raw_query.to_string(),
            })
        }
    }
}

fn strict(raw_path: &str, raw_query: &str) -> Result<CanonicalPath, PathError> {
    if !raw_path.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    for b in raw_path.bytes().chain(raw_query.bytes()) {
        match b {
            b'#' => return Err(PathError::Fragment),
            0..=0x1f | 0x7f..=0xff => return Err(PathError::ControlOrNonAscii),
            _ => {}
        }
    }
    if raw_path.contains('\\') {
        return Err(PathError::RawBackslash);
    }
    // Without an escape the path is the target's, whose bytes were checked above: what the
    // decoding's checks look for needs a `%`.
    let escaped = raw_path.contains('%');
    let path = if escaped {
        decoded_path(raw_path)?
    } else {
        raw_path.to_string()
    };
    let canonical = CanonicalPath {
        path,
        segments_from: 1,
        raw_query: raw_query.to_string(),
    };
    let mut segments = canonical.segments().peekable();
    while let Some(s) = segments.next() {
        if s == "." || s == ".." {
            return Err(PathError::DotSegment);
        }
        // `/` alone and a trailing `/` leave one empty segment at the end; anything else empty
        // is `//`.
        if s.is_empty() && segments.peek().is_some() {
            return Err(PathError::EmptySegment);
        }
    }
    if escaped {
        encoded_unreserved(raw_path)?;
    }
    Ok(canonical)
}

/// A path with escapes, decoded, and refused when the decoding would let one path be spelled
/// two ways.
fn decoded_path(raw_path: &str) -> Result<String, PathError> {
    let decoded = percent_decode(raw_path).ok_or(PathError::InvalidEscape)?;
    for (b, name) in [
        (b'/', "/"),
        (b'\\', "\\"),
        (0u8, "NUL"),
        (b'?', "?"),
        (b'#', "#"),
    ] {
        // Compare the decoded bytes against the raw ones: a delimiter that appears only after
        // decoding was encoded.
        let raw_count = raw_path.bytes().filter(|x| *x == b).count();
        let decoded_count = decoded.iter().filter(|x| **x == b).count();
        if decoded_count > raw_count {
            return Err(PathError::EncodedDelimiter(name));
        }
    }
    if decoded.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return Err(PathError::ControlOrNonAscii);
    }
    let path = String::from_utf8(decoded).map_err(|_| PathError::InvalidUtf8)?;
    if has_escape(&path) {
        return Err(PathError::DoubleEncoding);
    }
    Ok(path)
}

/// RFC 3986 §6.2.2.2: an encoded unreserved character is the character itself. Refused, so
/// that the raw target a policy may read (`attributes.request.http.path`, CEL's
/// `request.path`) never spells a path in a second way.
fn encoded_unreserved(raw_path: &str) -> Result<(), PathError> {
    for w in raw_path.as_bytes().windows(3) {
        if w[0] == b'%'
            && let (Some(hi), Some(lo)) = (hex(w[1]), hex(w[2]))
        {
            let c = char::from(hi << 4 | lo);
            if c.is_ascii_alphanumeric() || "-._~".contains(c) {
                return Err(PathError::EncodedUnreserved(c));
            }
        }
    }
    Ok(())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decode `%XX` escapes once; `None` for a `%` not followed by two hex digits.
pub fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex(*b.get(i + 1)?)?;
            let lo = hex(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn has_escape(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
}

/// Go's `url.ParseQuery`, which OPA-Envoy uses for `parsed_query`: `&`-separated pairs, `+` is a
/// space, keys without `=` have the value `""`, a `;` or a bad escape is an error. Keys keep
/// their first-seen order; values keep theirs.
pub fn parse_query(raw: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    parse_query_pairs(raw, false)
}

/// Go's `url.URL.Query()`, which OPA-Envoy uses for the request target's `parsed_query`: as
/// [`parse_query`], but a pair with a `;` or a bad escape is left out instead of failing the
/// whole query (lenient mode; strict mode refuses such a target).
pub fn parse_query_lossy(raw: &str) -> Vec<(String, Vec<String>)> {
    parse_query_pairs(raw, true).unwrap_or_default()
}

fn parse_query_pairs(raw: &str, skip_bad: bool) -> Result<Vec<(String, Vec<String>)>, String> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    // Linear in the number of pairs: a target of thousands of distinct names costs no more
    // than reading it. The index is built once there are more than a few names (a scan of a
    // handful is cheaper than hashing; a query usually has one or two).
    let mut index: Option<std::collections::HashMap<String, usize>> = None;
    for pair in raw.split('&') {
        if pair.is_empty() {
            continue;
        }
        if pair.contains(';') {
            if skip_bad {
                continue;
            }
            return Err("invalid semicolon separator in query".to_string());
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = match (query_unescape(k), query_unescape(v)) {
            (Ok(k), Ok(v)) => (k, v),
            (Err(_), _) | (_, Err(_)) if skip_bad => continue,
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let seen = match &index {
            Some(index) => index.get(&k).copied(),
            None => out.iter().position(|(name, _)| *name == k),
        };
        match seen {
            Some(i) => out[i].1.push(v),
            None => {
                if let Some(index) = index.as_mut() {
                    index.insert(k.clone(), out.len());
                } else if out.len() >= QUERY_SCAN {
                    let mut built: std::collections::HashMap<String, usize> = out
                        .iter()
                        .enumerate()
                        .map(|(i, (name, _))| (name.clone(), i))
                        .collect();
                    built.insert(k.clone(), out.len());
                    index = Some(built);
                }
                out.push((k, vec![v]));
            }
        }
    }
    Ok(out)
}

/// Names a query's pairs are matched by scanning before they are indexed.
const QUERY_SCAN: usize = 8;

fn query_unescape(s: &str) -> Result<String, String> {
    // Nothing to replace or decode (most names and values): the text as it is.
    if !s.bytes().any(|b| b == b'+' || b == b'%') {
        return Ok(s.to_string());
    }
    let plus = s.replace('+', " ");
    let bytes =
        percent_decode(&plus).ok_or_else(|| format!("invalid URL escape in query: {s:?}"))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// A request's host, read once. Every language sees a projection of this one reading:
/// Rego (strict mode) and CEL see [`Host::canonical`], Istio's `hosts` match
/// [`Host::authority`] the way Envoy's RBAC filter matches `:authority` (port included), and
/// an Istio DENY rule also matches the canonical spelling (stricter than Envoy, never looser).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Host {
    /// The authority as sent, lower-cased (trailing dot and port kept): what Envoy's RBAC
    /// filter compares case-insensitively with Istio's `hosts`.
    pub authority: String,
    /// Where [`Host::name`] ends in `authority`.
    name_end: usize,
    /// Where [`Host::port`] starts in `authority`, when it carries one.
    port_start: Option<usize>,
    /// The port is the scheme's default (`:80` for `http`, `:443` for `https`).
    default_port: bool,
}

impl Host {
    /// Read `host` (the `:authority` or `Host` header) of a request over `scheme`.
    pub fn parse(host: &str, scheme: &str) -> Host {
        let authority = host.to_ascii_lowercase();
        // `[v6]:443` keeps its brackets; a bare IPv6 address has no port.
        let (name, port) = match authority.rsplit_once(':') {
            Some((h, p))
                if !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (!h.contains(':') || h.ends_with(']')) =>
            {
                (h, Some(p))
            }
            _ => (authority.as_str(), None),
        };
        let name_end = name.strip_suffix('.').unwrap_or(name).len();
        let default = if scheme.eq_ignore_ascii_case("http") {
            Some("80")
        } else if scheme.eq_ignore_ascii_case("https") {
            Some("443")
        } else {
            None
        };
        let default_port = port.is_some() && port == default;
        let port_start = port.map(|p| authority.len() - p.len());
        Host {
            name_end,
            port_start,
            default_port,
            authority,
        }
    }

    /// Lower case, without the trailing dot of a fully qualified name (RFC 4343, RFC 3986
    /// §6.2.3). `[v6]` keeps its brackets.
    pub fn name(&self) -> &str {
        &self.authority[..self.name_end]
    }

    /// The port as written, when the authority carries one.
    pub fn port(&self) -> Option<&str> {
        self.port_start.map(|i| &self.authority[i..])
    }

    /// One spelling: `Secret.COM`, `secret.com.` and, over https, `secret.com:443` all read
    /// `secret.com`, so a rule about a host cannot be bypassed by spelling it differently
    /// (CVE-2021-39155). Other ports stay: `secret.com:8443` is another origin, and a rule
    /// about it names it.
    pub fn canonical(&self) -> String {
        match self.port() {
            Some(p) if !self.default_port => format!("{}:{p}", self.name()),
            _ => self.name().to_string(),
        }
    }
}

/// [`Host::canonical`] of `host` over `scheme`.
pub fn canonical_host(host: &str, scheme: &str) -> String {
    Host::parse(host, scheme).canonical()
}

/// Segment-wise path matching: `*` matches one segment, `**` any number of segments (zero
/// included), and `*` inside a segment matches any characters except `/`. Both sides are
/// compared as written (pass the canonical path).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    // Empty pattern segments (`//`) carry nothing: `"/" + [].join("/") + "/**"` means `/**`.
    with_segments(pattern.split('/').filter(|s| !s.is_empty()), |p| {
        with_segments(path.trim_start_matches('/').split('/'), |s| {
            match_segments(p, s)
        })
    })
}

/// `f` of the segments `it` yields, collected on the stack when there are few (every check
/// matches globs: no allocation for the usual path).
fn with_segments<'a, R>(
    mut it: impl Iterator<Item = &'a str>,
    f: impl FnOnce(&[&'a str]) -> R,
) -> R {
    const ON_STACK: usize = 16;
    let mut buf = [""; ON_STACK];
    let mut n = 0;
    while let Some(seg) = it.next() {
        if n == ON_STACK {
            let mut all = buf.to_vec();
            all.push(seg);
            all.extend(it);
            return f(&all);
        }
        buf[n] = seg;
        n += 1;
    }
    f(&buf[..n])
}

fn match_segments(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|i| match_segments(rest, &s[i..])),
        Some((first, rest)) => match s.split_first() {
            Some((seg, srest)) => segment_match(first, seg) && match_segments(rest, srest),
            None => false,
        },
    }
}

fn segment_match(p: &str, s: &str) -> bool {
    if p == "*" {
        return true;
    }
    if !p.contains('*') {
        return p == s;
    }
    let parts: Vec<&str> = p.split('*').collect();
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !s.starts_with(first)
        || !s[first.len()..].ends_with(last)
        || s.len() < first.len() + last.len()
    {
        return false;
    }
    let mut rest = &s[first.len()..s.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_queries_leave_bad_pairs_out_as_go_does() {
        // Recorded from OPA-Envoy (conformance/fixtures/opa-envoy-drop-in, parity): `bad=%zz`
        // is left out, the rest is read.
        let q = "name=alice&name=bob&empty=&flag&enc=%2Fa%20b+c&bad=%zz&semi=1;2";
        assert!(parse_query(q).is_err());
        let want: Vec<(String, Vec<String>)> = vec![
            ("name".into(), vec!["alice".into(), "bob".into()]),
            ("empty".into(), vec!["".into()]),
            ("flag".into(), vec!["".into()]),
            ("enc".into(), vec!["/a b c".into()]),
        ];
        assert_eq!(parse_query_lossy(q), want);
    }

    #[test]
    fn globs() {
        assert!(glob_match("/api/*/orders/**", "/api/v1/orders"));
        assert!(glob_match("/api/*/orders/**", "/api/v1/orders/1/items"));
        assert!(!glob_match("/api/*/orders/**", "/api/orders"));
        assert!(!glob_match("/api/v1/*", "/api/v1/a/b"));
        assert!(glob_match("/files/*.json", "/files/a.json"));
        assert!(!glob_match("/files/*.json", "/files/a.yaml"));
        assert!(glob_match("/**", "/anything/at/all"));
        assert!(!glob_match("/public/**", "/publicity"));
        assert!(glob_match("/public/**", "/public"));
        assert!(glob_match("//**", "/api/v1"));
        assert!(glob_match("/**", "/"));
        assert!(glob_match("/api//v1/**", "/api/v1/x"));
    }

    #[test]
    fn globs_over_more_segments_than_the_stack_holds() {
        // 16 segments are collected on the stack; more go to the heap, read the same way.
        let long: String = (0..20).map(|i| format!("/s{i}")).collect();
        assert!(glob_match("/s0/**", &long));
        assert!(glob_match(&long, &long));
        assert!(glob_match(&format!("{long}/**"), &long));
        assert!(!glob_match(&format!("{long}/x"), &long));
        assert!(!glob_match(&long.replace("/s19", "/t19"), &long));
        assert!(glob_match(&long.replace("/s19", "/*"), &long));
        assert!(glob_match(&long.replace("/s17", "/*7"), &long));
        assert!(!glob_match(&long.replace("/s17", "/*8"), &long));
    }

    fn ok(p: &str) -> CanonicalPath {
        canonicalize(p, PathPolicy::Strict).unwrap_or_else(|e| panic!("{p}: {e}"))
    }

    fn err(p: &str) -> PathError {
        canonicalize(p, PathPolicy::Strict).expect_err(p)
    }

    #[test]
    fn accepts_ordinary_paths() {
        assert_eq!(ok("/").segments().collect::<Vec<_>>(), vec![""]);
        assert_eq!(
            ok("/api/v1/orders/123?x=1").segments().collect::<Vec<_>>(),
            vec!["api", "v1", "orders", "123"]
        );
        assert_eq!(ok("/api/v1/orders/123?x=1").raw_query, "x=1");
        assert_eq!(
            ok("/a/b/").segments().collect::<Vec<_>>(),
            vec!["a", "b", ""]
        );
        assert_eq!(ok("/caf%C3%A9").path, "/café");
        assert_eq!(ok("/a%20b").segments().collect::<Vec<_>>(), vec!["a b"]);
        assert_eq!(
            ok("/.well-known/x").segments().collect::<Vec<_>>(),
            vec![".well-known", "x"]
        );
        assert_eq!(ok("/public?next=/admin").path, "/public");
        assert_eq!(ok("").segments().collect::<Vec<_>>(), vec![""]);
    }

    #[test]
    fn rejects_confusable_paths() {
        // reliability.md §3 A
        assert_eq!(err("//admin/people"), PathError::EmptySegment);
        assert_eq!(err("/public/../admin"), PathError::DotSegment);
        assert_eq!(err("/public/./admin"), PathError::DotSegment);
        assert_eq!(err("/public/%2e%2e/admin"), PathError::DotSegment);
        assert_eq!(err("/public/.%2E/admin"), PathError::DotSegment);
        assert_eq!(
            err("/public%2F..%2Fadmin"),
            PathError::EncodedDelimiter("/")
        );
        assert_eq!(err("/admin%2fsecret"), PathError::EncodedDelimiter("/"));
        assert_eq!(err("/admin%5Csecret"), PathError::EncodedDelimiter("\\"));
        // Issue 16: an unreserved character sent encoded spells a second raw path.
        assert_eq!(err("/%69nternal/x"), PathError::EncodedUnreserved('i'));
        assert_eq!(err("/a%2Db"), PathError::EncodedUnreserved('-'));
        assert_eq!(err("/%7Euser"), PathError::EncodedUnreserved('~'));
        assert_eq!(err("/public\\..\\admin"), PathError::RawBackslash);
        assert_eq!(err("/admin#frag"), PathError::Fragment);
        assert_eq!(err("/admin%23x"), PathError::EncodedDelimiter("#"));
        assert_eq!(err("/mypath%3Ffoo=bar"), PathError::EncodedDelimiter("?"));
        assert_eq!(err("/admin%00"), PathError::EncodedDelimiter("NUL"));
        assert_eq!(err("/admin%00.json"), PathError::EncodedDelimiter("NUL"));
        assert_eq!(err("/%252e%252e/admin"), PathError::DoubleEncoding);
        assert_eq!(err("/%C0%AE%C0%AE/admin"), PathError::InvalidUtf8);
        assert_eq!(err("/adm%FFin"), PathError::InvalidUtf8);
        assert_eq!(err("http://evil.example/admin"), PathError::NotOriginForm);
        assert_eq!(err("admin"), PathError::NotOriginForm);
        assert_eq!(err("/a%zz"), PathError::InvalidEscape);
        assert_eq!(err("/a%0Ab"), PathError::ControlOrNonAscii);
        assert_eq!(err("/a\u{7f}"), PathError::ControlOrNonAscii);
    }

    #[test]
    fn lenient_matches_opa_envoy() {
        // OPA-Envoy trims every leading `/`, decodes once and splits: `//admin/people` becomes
        // ["admin", "people"] and is evaluated, where the strict profile refuses it.
        let p = canonicalize("//admin/people?x=1", PathPolicy::Lenient).unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), vec!["admin", "people"]);
        assert_eq!(p.raw_query, "x=1");
        let p = canonicalize("/a%2Fb", PathPolicy::Lenient).unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), vec!["a", "b"]);
    }

    /// Percent-encode what a request target may not carry raw.
    fn encode(path: &str) -> String {
        path.bytes()
            .map(|b| {
                if b.is_ascii_graphic() && b != b'%' {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect()
    }

    #[test]
    fn hosts_have_one_spelling() {
        for (host, scheme, want) in [
            ("secret.com", "https", "secret.com"),
            ("Secret.COM", "https", "secret.com"),
            ("secret.com.", "http", "secret.com"),
            ("secret.com:443", "https", "secret.com"),
            ("SECRET.com.:80", "http", "secret.com"),
            ("secret.com:443", "http", "secret.com:443"),
            ("secret.com:8443", "https", "secret.com:8443"),
            ("secret.com:80", "", "secret.com:80"),
            ("secret.com:443", "HTTPS", "secret.com"),
            ("[::1]:443", "https", "[::1]"),
            ("[::1]:8080", "https", "[::1]:8080"),
            ("::1", "https", "::1"),
            ("", "https", ""),
        ] {
            assert_eq!(canonical_host(host, scheme), want, "{host} over {scheme}");
            // Idempotent.
            assert_eq!(canonical_host(want, scheme), want);
        }
        let h = Host::parse("Api.Example.COM.:8443", "https");
        assert_eq!((h.name(), h.port()), ("api.example.com", Some("8443")));
        assert_eq!(h.authority, "api.example.com.:8443");
        let h = Host::parse("[::1]", "http");
        assert_eq!((h.name(), h.port()), ("[::1]", None));
    }

    #[test]
    fn canonical_is_idempotent() {
        for p in [
            "/",
            "/a/b/",
            "/caf%C3%A9/x",
            "/a%20b/c?d=e",
            "/x/.y",
            "/100%25",
            // Found by the fuzz target: decodes to a two-byte character.
            "/%DE%ADF",
        ] {
            let once = ok(p);
            let again = ok(&encode(&once.path));
            assert_eq!(
                once,
                CanonicalPath {
                    raw_query: once.raw_query.clone(),
                    ..again
                },
                "{p}"
            );
        }
    }

    #[test]
    fn query_parsing_follows_go() {
        let q = parse_query("a=1&a=2&x=y&flag&sp=a+b&enc=%2F").unwrap();
        assert_eq!(
            q,
            vec![
                ("a".into(), vec!["1".into(), "2".into()]),
                ("x".into(), vec!["y".into()]),
                ("flag".into(), vec!["".into()]),
                ("sp".into(), vec!["a b".into()]),
                ("enc".into(), vec!["/".into()]),
            ]
        );
        assert!(parse_query("a=1;b=2").is_err());
        assert!(parse_query("a=%zz").is_err());
        assert!(parse_query("a=%").is_err());
        assert!(parse_query("").unwrap().is_empty());
        // Many names, repeated across the point where the names are indexed: each value under
        // its name, names in first-seen order (as a plain scan gives them).
        let pairs: Vec<(String, String)> = (0..60)
            .map(|i| (format!("n{}", (i * 7) % 23), format!("v{i}")))
            .collect();
        let raw: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut want: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in &pairs {
            match want.iter_mut().find(|(name, _)| name == k) {
                Some((_, vs)) => vs.push(v.clone()),
                None => want.push((k.clone(), vec![v.clone()])),
            }
        }
        assert_eq!(parse_query(&raw.join("&")).unwrap(), want);
    }
}

//! OPA bundles: `.tar.gz` archives (or folders in the same layout) with a `.manifest`
//! (`revision`, `roots`), data documents, Rego modules — and, as arbiter's extension, CEL
//! policies and decision tests — optionally signed with a `.signatures.json`.
//!
//! The layout and the signature format are OPA's (OPA docs "Bundles", `v1/bundle`):
//!
//! - paths in the archive may start with `/`; `data.json`/`data.yaml` go under the document
//!   path of their folder; `.manifest` is JSON; modules must declare packages inside `roots`,
//!   and data must lie inside them;
//! - `.signatures.json` is `{"signatures": ["<JWS>"]}`; the JWS payload lists every file as
//!   `{"name", "hash", "algorithm": "SHA-256"}` (plus `keyid`, `scope`, `iat`, `iss`);
//!   structured files (`data.json`, `data.yaml`, `.manifest`) are hashed over their JSON with
//!   object keys sorted and no whitespace (as Go encodes it), the rest over their bytes; every
//!   file must be listed and match, and no listed file may be missing.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use serde_json::Value as Json;

use crate::builtins::jose;
use crate::limits::LoadLimits;
use crate::loader::{DataDocument, PolicySources, SourceFile};

/// The `.manifest`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifest {
    pub revision: String,
    /// `None`: the whole `data` tree (OPA's default root `""`).
    pub roots: Option<Vec<String>>,
    pub rego_version: Option<i64>,
    pub metadata: Option<Json>,
}

/// How signatures are checked: OPA's `keys` with one bundle's `bundles.*.signing`.
///
/// The key is chosen as OPA chooses it (`v1/bundle/verify.go`): the configured `key_id`
/// first; without one, the JWS header's `kid`, then the payload's deprecated `keyid` claim.
/// A bundle `opa build --signing-key` signed (`kid: default`) thus verifies under a
/// configuration that names its key `global_key`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verification {
    /// `bundles.*.signing.keyid` or `--verification-key-id`; empty when not configured.
    pub key_id: String,
    /// OPA's `keys`, by id.
    pub keys: BTreeMap<String, VerificationKey>,
    /// `bundles.*.signing.scope`; empty: the chosen key's scope.
    pub scope: String,
    /// `bundles.*.signing.exclude_files`: patterns (Go's `filepath.Match`) of files that are
    /// loaded without being verified.
    pub exclude_files: Vec<String>,
    /// An unsigned bundle loads: OPA's `keys` without a `signing` section for the bundle
    /// verify only the bundles that are signed. With `signing`, arbiter requires a signature
    /// (OPA loads an unsigned bundle unless `keyid` is configured: a stripped signature would
    /// pass there).
    pub unsigned_allowed: bool,
}

/// One of OPA's `keys`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerificationKey {
    /// `HS256` (secret) or `RS256`/`PS256`/`ES256`/… (PEM public key or certificate).
    pub algorithm: String,
    pub key: String,
    pub scope: String,
}

impl Verification {
    /// One key, as `opa run --verification-key K --verification-key-id ID` configures it: the
    /// key is stored under `ID` (`default` when empty) and that id is the configured one.
    pub fn single(key_id: &str, algorithm: &str, key: &str, scope: &str) -> Self {
        let id = if key_id.is_empty() { "default" } else { key_id };
        Verification {
            key_id: id.to_string(),
            keys: BTreeMap::from([(
                id.to_string(),
                VerificationKey {
                    algorithm: algorithm.to_string(),
                    key: key.to_string(),
                    scope: scope.to_string(),
                },
            )]),
            scope: String::new(),
            exclude_files: Vec::new(),
            unsigned_allowed: false,
        }
    }

    fn excludes(&self, path: &str) -> bool {
        self.exclude_files
            .iter()
            .any(|pattern| go_path_match(pattern, path))
    }
}

/// Go's `path/filepath.Match` on `/`-separated paths: `*` is any run of characters but `/`,
/// `?` one such character, `[...]` a class (`^` negates, ranges with `-`), `\\` escapes. A
/// malformed pattern matches nothing, as Go's error does for OPA.
pub fn go_path_match(pattern: &str, name: &str) -> bool {
    fn class(p: &[char], c: char) -> Option<(bool, usize)> {
        // p starts after `[`; returns (matched, chars consumed including `]`).
        let mut i = 0;
        let negate = p.first() == Some(&'^');
        if negate {
            i += 1;
        }
        let mut matched = false;
        let mut first = true;
        loop {
            let mut lo = *p.get(i)?;
            if lo == ']' && !first {
                return Some((matched != negate, i + 1));
            }
            first = false;
            if lo == '\\' {
                i += 1;
                lo = *p.get(i)?;
            }
            i += 1;
            let mut hi = lo;
            if p.get(i) == Some(&'-') && p.get(i + 1).is_some_and(|&c| c != ']') {
                hi = p[i + 1];
                i += 2;
                if hi == '\\' {
                    hi = *p.get(i)?;
                    i += 1;
                }
            }
            if lo <= c && c <= hi {
                matched = true;
            }
        }
    }
    fn go(p: &[char], n: &[char]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some('*') => (0..=n.len())
                .take_while(|&k| k == 0 || n[k - 1] != '/')
                .any(|k| go(&p[1..], &n[k..])),
            Some('?') => n.first().is_some_and(|&c| c != '/') && go(&p[1..], &n[1..]),
            Some('[') => match n.first() {
                Some(&c) if c != '/' => match class(&p[1..], c) {
                    Some((true, used)) => go(&p[1 + used..], &n[1..]),
                    _ => false,
                },
                _ => false,
            },
            Some('\\') => p.get(1).is_some_and(|c| n.first() == Some(c)) && go(&p[2..], &n[1..]),
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    go(&p, &n)
}

/// What signing a bundle takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signing {
    pub algorithm: String,
    /// The HMAC secret, or a PEM private key (PKCS #8, or PKCS #1 for RSA, SEC1 for EC).
    pub key: String,
    pub key_id: Option<String>,
    pub scope: Option<String>,
}

impl Manifest {
    /// The roots it claims: its `roots`, or all of `data` (the root `""`) without them, as OPA
    /// reads a manifest (and records it in `data.system.bundles`).
    pub fn roots_or_all(&self) -> Vec<String> {
        self.roots.clone().unwrap_or_else(|| vec![String::new()])
    }
}

/// A root (`envoy/authz`) as a path in `data`, one segment per key (`""` is `data` itself).
pub fn root_segments(root: &str) -> Vec<String> {
    root.split('/')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// A read bundle: its files, manifest, and the policy sources they make.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub manifest: Manifest,
    /// Every file, by path without a leading `/`.
    pub files: BTreeMap<String, Vec<u8>>,
    pub sources: PolicySources,
    pub signed: bool,
    /// A delta bundle's `patch.json`: writes to apply to the data the bundle's snapshot
    /// activated (`None`: a snapshot bundle).
    pub patch: Option<Vec<crate::data_write::DataWrite>>,
}

impl Bundle {
    /// OPA's delta bundle: a `patch.json` instead of policies and data.
    pub fn is_delta(&self) -> bool {
        self.patch.is_some()
    }
}

/// A delta bundle's `patch.json` (`{"data": [{"op": "upsert"|"remove"|"replace", "path":
/// "/a/b", "value": …}]}`), each operation's path inside the manifest's roots, as OPA reads it.
fn parse_patch(
    bytes: &[u8],
    manifest: &Manifest,
) -> Result<Vec<crate::data_write::DataWrite>, String> {
    use crate::data_write::{DataWrite, WriteOp, parse_pointer};
    let json: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("bundle load failed on patch.json decode: {e}"))?;
    let ops = match json.get("data") {
        None | Some(serde_json::Value::Null) => return Ok(Vec::new()),
        Some(serde_json::Value::Array(ops)) => ops,
        Some(_) => return Err("patch.json: `data` must be a list of operations".into()),
    };
    let roots: Vec<Vec<String>> = manifest
        .roots_or_all()
        .iter()
        .map(|r| root_segments(r))
        .collect();
    ops.iter()
        .map(|op| {
            let name = op.get("op").and_then(|o| o.as_str()).unwrap_or_default();
            let kind = WriteOp::parse(name)
                .filter(|k| *k != WriteOp::Add)
                .ok_or_else(|| format!("bad patch operation: {name}"))?;
            let path = parse_pointer(op.get("path").and_then(|p| p.as_str()).unwrap_or(""));
            if !roots.iter().any(|r| path.starts_with(r)) {
                return Err(format!(
                    "manifest roots [{}] do not permit data patch at path '{}'",
                    manifest.roots.clone().unwrap_or_default().join(" "),
                    path.join("/")
                ));
            }
            Ok(DataWrite {
                op: kind,
                path,
                value: op
                    .get("value")
                    .map_or(regorus::Value::Null, crate::value::from_json),
            })
        })
        .collect()
}

fn clean(path: &str) -> Result<String, String> {
    let p = path.trim_start_matches("./").trim_start_matches('/');
    if p.split('/').any(|s| s == "..") || p.contains('\\') || p.contains('\0') {
        return Err(format!("unsafe path `{path}` in the bundle"));
    }
    Ok(p.to_string())
}

/// The files of a `.tar.gz` bundle.
pub fn untar(bytes: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, String> {
    untar_with(bytes, &LoadLimits::default())
}

/// The files of a `.tar.gz` bundle, refused past `limits.max_bundle_bytes` uncompressed.
pub fn untar_with(bytes: &[u8], limits: &LoadLimits) -> Result<BTreeMap<String, Vec<u8>>, String> {
    /// Reads at most `left` bytes, and says whether it stopped there.
    struct Capped<R> {
        inner: R,
        left: u64,
        hit: std::rc::Rc<std::cell::Cell<bool>>,
    }
    impl<R: Read> Read for Capped<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.left == 0 {
                self.hit.set(true);
                return Ok(0);
            }
            let max = buf
                .len()
                .min(usize::try_from(self.left).unwrap_or(usize::MAX));
            let n = self.inner.read(&mut buf[..max])?;
            self.left -= n as u64;
            Ok(n)
        }
    }
    let hit = std::rc::Rc::new(std::cell::Cell::new(false));
    // The tar stream (headers and padding too) stops one byte past the limit: a gzip bomb ends
    // here, and an error it causes is reported as the limit.
    let capped = Capped {
        inner: flate2::read::GzDecoder::new(bytes),
        left: limits.max_bundle_bytes.saturating_add(1),
        hit: hit.clone(),
    };
    let mut archive = tar::Archive::new(capped);
    let mut files = BTreeMap::new();
    let mut total: u64 = 0;
    let over = |e: String| {
        if hit.get() {
            limits
                .check_bundle(limits.max_bundle_bytes.saturating_add(1))
                .err()
                .unwrap_or(e)
        } else {
            e
        }
    };
    let entries = archive
        .entries()
        .map_err(|e| over(format!("not a tar.gz bundle: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| over(format!("bundle read failed: {e}")))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()
            .map_err(|e| format!("bundle read failed: {e}"))?
            .to_string_lossy()
            .into_owned();
        let name = clean(&path)?;
        // The header's size first: no reading of a file the limit refuses.
        limits.check_bundle(total.saturating_add(entry.header().size().unwrap_or(0)))?;
        let mut buf = Vec::new();
        entry
            .read_to_end(&mut buf)
            .map_err(|e| over(format!("bundle read failed on {name}: {e}")))?;
        total += buf.len() as u64;
        limits.check_bundle(total)?;
        if files.insert(name.clone(), buf).is_some() {
            return Err(format!("`{name}` appears twice in the bundle"));
        }
    }
    Ok(files)
}

/// The files of a folder in bundle layout.
pub fn read_dir(dir: &Path) -> Result<BTreeMap<String, Vec<u8>>, String> {
    read_dir_with(dir, &LoadLimits::default())
}

/// The files of a folder in bundle layout, refused past `limits.max_bundle_bytes` together,
/// as a `.tar.gz` bundle is.
pub fn read_dir_with(dir: &Path, limits: &LoadLimits) -> Result<BTreeMap<String, Vec<u8>>, String> {
    fn walk(
        base: &Path,
        dir: &Path,
        limits: &LoadLimits,
        total: &mut u64,
        out: &mut BTreeMap<String, Vec<u8>>,
    ) -> Result<(), String> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(Result::ok)
            .collect();
        entries.sort_by_key(std::fs::DirEntry::path);
        for e in entries {
            let p = e.path();
            if p.is_dir() {
                // Hidden folders (`.git`) hold nothing a bundle loads, and can be large.
                if !e.file_name().to_string_lossy().starts_with('.') {
                    walk(base, &p, limits, total, out)?;
                }
            } else {
                let rel = p
                    .strip_prefix(base)
                    .map_err(|e| e.to_string())?
                    .to_string_lossy()
                    .replace('\\', "/");
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                limits.check_bundle(total.saturating_add(len))?;
                let mut bytes = Vec::new();
                std::fs::File::open(&p)
                    .and_then(|f| {
                        f.take(limits.max_bundle_bytes.saturating_add(1))
                            .read_to_end(&mut bytes)
                    })
                    .map_err(|e| format!("{}: {e}", p.display()))?;
                *total = total.saturating_add(bytes.len() as u64);
                limits.check_bundle(*total)?;
                out.insert(rel, bytes);
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, limits, &mut 0, &mut out)?;
    Ok(out)
}

/// Read a bundle from its files, verifying signatures when `verification` is given (a bundle
/// without `.signatures.json` is then refused) and refusing signed bundles without one.
pub fn from_files(
    files: BTreeMap<String, Vec<u8>>,
    name: &str,
    verification: Option<&Verification>,
) -> Result<Bundle, String> {
    from_files_with(files, name, verification, &LoadLimits::default())
}

/// [`from_files`] under `limits`: each policy and data file's size and the number of policy
/// files, as a folder of policies is refused.
pub fn from_files_with(
    files: BTreeMap<String, Vec<u8>>,
    name: &str,
    verification: Option<&Verification>,
    limits: &LoadLimits,
) -> Result<Bundle, String> {
    let signed = files.contains_key(".signatures.json");
    match (signed, verification) {
        (true, Some(v)) => verify_signatures(&files, v)?,
        (false, Some(v)) if !v.unsigned_allowed => {
            return Err("bundle missing .signatures.json file".into());
        }
        (false, Some(_)) => {}
        (true, None) => {
            return Err("the bundle is signed but no verification key is configured".into());
        }
        (false, None) => {}
    }
    let manifest = match files.get(".manifest") {
        None => Manifest::default(),
        Some(b) => parse_manifest(b)?,
    };
    let mut sources = PolicySources::default();
    for (path, bytes) in &files {
        let file = Path::new(path);
        let base = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let display = format!("{name}:/{path}");
        let err_name = display.clone();
        let text =
            || String::from_utf8(bytes.clone()).map_err(|_| format!("{err_name}: not UTF-8 text"));
        if base.starts_with('.') {
            continue; // .manifest, .signatures.json
        }
        let kind = crate::loader::classify(file, false);
        if kind.is_some() {
            limits
                .check_file(
                    kind == Some(crate::loader::SourceKind::Data),
                    bytes.len() as u64,
                )
                .map_err(|e| format!("{display}: {e}"))?;
        }
        match kind {
            Some(crate::loader::SourceKind::Rego) => sources.rego.push(SourceFile {
                name: display,
                text: text()?,
            }),
            Some(crate::loader::SourceKind::RegoTest) => sources.rego_tests.push(SourceFile {
                name: display,
                text: text()?,
            }),
            Some(crate::loader::SourceKind::Cel) => sources.cel.push(SourceFile {
                name: display,
                text: text()?,
            }),
            Some(crate::loader::SourceKind::DecisionTest) => {
                sources.decision_tests.push(SourceFile {
                    name: display,
                    text: text()?,
                });
            }
            Some(crate::loader::SourceKind::Data) => {
                let prefix: Vec<String> = file
                    .parent()
                    .map(|p| {
                        p.components()
                            .map(|c| c.as_os_str().to_string_lossy().into_owned())
                            .filter(|s| !s.is_empty())
                            .collect()
                    })
                    .unwrap_or_default();
                // Borrowed: a data file can be most of the bundle.
                let text =
                    std::str::from_utf8(bytes).map_err(|_| format!("{display}: not UTF-8 text"))?;
                let doc = DataDocument::parse(display.clone(), prefix, text)
                    .map_err(|d| format!("{display}:{}:{}: {}", d.line, d.col, d.message))?;
                sources.data.push(doc);
            }
            Some(crate::loader::SourceKind::Istio) => sources.istio.push(SourceFile {
                name: display,
                text: text()?,
            }),
            None => {
                if (path.ends_with(".yaml") || path.ends_with(".yml"))
                    && limits.check_file(false, bytes.len() as u64).is_ok()
                    && let Ok(t) = text()
                    && crate::istio::looks_like_istio(&t)
                {
                    sources.istio.push(SourceFile {
                        name: display,
                        text: t,
                    });
                }
            }
        }
    }
    sources.check_limits(limits)?;
    check_roots(&manifest, &sources)?;
    if !manifest.revision.is_empty() {
        sources.revision = Some(manifest.revision.clone());
    }
    let patch = match files.get("patch.json") {
        None => None,
        Some(bytes) => {
            limits
                .check_file(true, bytes.len() as u64)
                .map_err(|e| format!("{name}:/patch.json: {e}"))?;
            let has_sources = !(sources.rego.is_empty()
                && sources.rego_tests.is_empty()
                && sources.data.is_empty()
                && sources.cel.is_empty()
                && sources.istio.is_empty());
            if has_sources {
                return Err(
                    "delta bundle expected to contain only patch file but policies or data files found"
                        .into(),
                );
            }
            Some(parse_patch(bytes, &manifest)?)
        }
    };
    Ok(Bundle {
        manifest,
        files,
        sources,
        signed,
        patch,
    })
}

/// Read a `.tar.gz` bundle file or a folder in bundle layout.
pub fn load(path: &Path, verification: Option<&Verification>) -> Result<Bundle, String> {
    load_with(path, verification, &LoadLimits::default())
}

/// [`load`] under `limits`, the limits every loader applies. Errors begin with the bundle's
/// name.
pub fn load_with(
    path: &Path,
    verification: Option<&Verification>,
    limits: &LoadLimits,
) -> Result<Bundle, String> {
    read_bundle(path, verification, limits).map_err(|e| format!("{}: {e}", path.display()))
}

/// [`load_with`] with errors that do not repeat the bundle's name (the caller names it).
pub(crate) fn read_bundle(
    path: &Path,
    verification: Option<&Verification>,
    limits: &LoadLimits,
) -> Result<Bundle, String> {
    let files = if path.is_dir() {
        read_dir_with(path, limits)?
    } else {
        untar_with(&std::fs::read(path).map_err(|e| e.to_string())?, limits)?
    };
    from_files_with(files, &path.display().to_string(), verification, limits)
}

fn parse_manifest(bytes: &[u8]) -> Result<Manifest, String> {
    let v: Json = serde_json::from_slice(bytes)
        .map_err(|e| format!("bundle load failed on manifest decode: {e}"))?;
    let Json::Object(m) = &v else {
        return Err("the .manifest must be a JSON object".into());
    };
    let revision = match m.get("revision") {
        None | Some(Json::Null) => String::new(),
        Some(Json::String(s)) => s.clone(),
        Some(_) => return Err("manifest `revision` must be a string".into()),
    };
    let roots = match m.get("roots") {
        None | Some(Json::Null) => None,
        Some(Json::Array(a)) => Some(
            a.iter()
                .map(|r| {
                    r.as_str()
                        .map(|s| s.trim_matches('/').to_string())
                        .ok_or_else(|| "manifest `roots` must be strings".to_string())
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("manifest `roots` must be a list".into()),
    };
    Ok(Manifest {
        revision,
        roots,
        rego_version: m.get("rego_version").and_then(Json::as_i64),
        metadata: m.get("metadata").cloned(),
    })
}

fn root_contains(root: &str, path: &str) -> bool {
    root.is_empty() || path == root || path.starts_with(&format!("{root}/"))
}

/// OPA's rule across bundles served together (`v1/bundle/store.go`): no two claim an
/// overlapping root. A bundle without `roots` claims all of `data` (the root `""`), so it can
/// only be served alone. The messages are OPA's.
pub fn check_disjoint_roots(bundles: &[(&str, &Manifest)]) -> Result<(), String> {
    use std::collections::BTreeSet;
    let roots = Manifest::roots_or_all;
    let mut colliding = BTreeSet::new();
    let mut conflicts = BTreeSet::new();
    let mut empty = BTreeSet::new();
    for (i, (a, ma)) in bundles.iter().enumerate() {
        let ra = roots(ma);
        if ra.iter().any(String::is_empty) {
            empty.insert(*a);
        }
        for (b, mb) in &bundles[i + 1..] {
            for x in &ra {
                for y in &roots(mb) {
                    if !(root_contains(x, y) || root_contains(y, x)) {
                        continue;
                    }
                    colliding.insert(*a);
                    colliding.insert(*b);
                    conflicts.insert(if x == y {
                        format!("root {x} is in multiple bundles")
                    } else {
                        let (lo, hi) = if x < y { (x, y) } else { (y, x) };
                        format!("{lo} overlaps {hi}")
                    });
                }
            }
        }
    }
    if colliding.is_empty() {
        return Ok(());
    }
    let names = colliding.into_iter().collect::<Vec<_>>().join(", ");
    if !empty.is_empty() {
        return Err(format!(
            "bundles [{names}] have overlapping roots and cannot be activated simultaneously because bundle(s) [{}] specify empty root paths ('') which overlap with any other bundle root",
            empty.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    Err(format!(
        "detected overlapping roots in manifests for these bundles: [{names}] ({})",
        conflicts.into_iter().collect::<Vec<_>>().join(", ")
    ))
}

/// OPA's rule: packages and data lie inside the roots; roots do not overlap.
fn check_roots(manifest: &Manifest, sources: &PolicySources) -> Result<(), String> {
    let Some(roots) = &manifest.roots else {
        return Ok(());
    };
    for (i, a) in roots.iter().enumerate() {
        for b in &roots[i + 1..] {
            if root_contains(a, b) || root_contains(b, a) {
                return Err(format!("manifest has overlapped roots: '{a}' and '{b}'"));
            }
        }
    }
    for f in sources.rego.iter().chain(&sources.rego_tests) {
        let package = f
            .text
            .lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("package "))
            .map(|p| p.split('#').next().unwrap_or(p).trim().replace('.', "/"))
            .unwrap_or_default();
        if !roots.iter().any(|r| root_contains(r, &package)) {
            return Err(format!(
                "manifest roots {roots:?} do not permit '{}' in module '{}'",
                package.replace('/', "."),
                f.name
            ));
        }
    }
    fn dfs(v: &regorus::Value, path: &str, roots: &[String]) -> Result<(), String> {
        if roots.iter().any(|r| root_contains(r, path)) {
            return Ok(());
        }
        match v {
            regorus::Value::Object(m)
                if roots.iter().any(|r| root_contains(path, r)) || path.is_empty() =>
            {
                for (k, v) in m.iter() {
                    let k = match k {
                        regorus::Value::String(s) => s.to_string(),
                        other => other.to_string(),
                    };
                    let p = if path.is_empty() {
                        k
                    } else {
                        format!("{path}/{k}")
                    };
                    dfs(v, &p, roots)?;
                }
                Ok(())
            }
            _ => Err(format!(
                "manifest roots {roots:?} do not permit data at path '/{path}'"
            )),
        }
    }
    for d in &sources.data {
        dfs(&d.at_root(), "", roots)?;
    }
    Ok(())
}

/// A JSON value with its numbers kept as written (OPA hashes `json.Number` text).
enum Canon {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Canon>),
    Object(Vec<(String, Canon)>),
}

/// Parse JSON text keeping number literals.
fn parse_canon(text: &str) -> Result<Canon, String> {
    struct P<'a> {
        s: &'a [u8],
        i: usize,
        depth: usize,
    }
    impl P<'_> {
        fn ws(&mut self) {
            while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            }
        }
        fn value(&mut self) -> Result<Canon, String> {
            self.ws();
            self.depth += 1;
            if self.depth > 512 {
                return Err("JSON nested too deep".into());
            }
            let v = match self.s.get(self.i) {
                Some(b'{') => {
                    self.i += 1;
                    let mut out = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b'}') {
                        self.i += 1;
                    } else {
                        loop {
                            self.ws();
                            let Canon::String(k) = self.string()? else {
                                return Err("object key".into());
                            };
                            self.ws();
                            if self.s.get(self.i) != Some(&b':') {
                                return Err("expected `:`".into());
                            }
                            self.i += 1;
                            let v = self.value()?;
                            out.push((k, v));
                            self.ws();
                            match self.s.get(self.i) {
                                Some(b',') => self.i += 1,
                                Some(b'}') => {
                                    self.i += 1;
                                    break;
                                }
                                _ => return Err("expected `,` or `}`".into()),
                            }
                        }
                    }
                    Canon::Object(out)
                }
                Some(b'[') => {
                    self.i += 1;
                    let mut out = Vec::new();
                    self.ws();
                    if self.s.get(self.i) == Some(&b']') {
                        self.i += 1;
                    } else {
                        loop {
                            out.push(self.value()?);
                            self.ws();
                            match self.s.get(self.i) {
                                Some(b',') => self.i += 1,
                                Some(b']') => {
                                    self.i += 1;
                                    break;
                                }
                                _ => return Err("expected `,` or `]`".into()),
                            }
                        }
                    }
                    Canon::Array(out)
                }
                Some(b'"') => self.string()?,
                Some(b't') if self.s[self.i..].starts_with(b"true") => {
                    self.i += 4;
                    Canon::Bool(true)
                }
                Some(b'f') if self.s[self.i..].starts_with(b"false") => {
                    self.i += 5;
                    Canon::Bool(false)
                }
                Some(b'n') if self.s[self.i..].starts_with(b"null") => {
                    self.i += 4;
                    Canon::Null
                }
                Some(_) => {
                    let start = self.i;
                    while self.i < self.s.len()
                        && matches!(
                            self.s[self.i],
                            b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                        )
                    {
                        self.i += 1;
                    }
                    if start == self.i {
                        return Err("unexpected character".into());
                    }
                    let n =
                        std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
                    n.parse::<f64>().map_err(|_| format!("bad number `{n}`"))?;
                    Canon::Number(n.to_string())
                }
                None => return Err("unexpected end".into()),
            };
            self.depth -= 1;
            Ok(v)
        }
        fn string(&mut self) -> Result<Canon, String> {
            // Find the end, then let serde_json decode the escapes.
            let start = self.i;
            if self.s.get(self.i) != Some(&b'"') {
                return Err("expected a string".into());
            }
            self.i += 1;
            while self.i < self.s.len() {
                match self.s[self.i] {
                    b'\\' => self.i += 2,
                    b'"' => {
                        self.i += 1;
                        let s: String = serde_json::from_slice(&self.s[start..self.i])
                            .map_err(|e| e.to_string())?;
                        return Ok(Canon::String(s));
                    }
                    _ => self.i += 1,
                }
            }
            Err("unterminated string".into())
        }
    }
    let mut p = P {
        s: text.as_bytes(),
        i: 0,
        depth: 0,
    };
    let v = p.value()?;
    p.ws();
    if p.i != p.s.len() {
        return Err("trailing characters".into());
    }
    Ok(v)
}

fn canon_from_json(v: &Json) -> Canon {
    match v {
        Json::Null => Canon::Null,
        Json::Bool(b) => Canon::Bool(*b),
        Json::Number(n) => Canon::Number(n.to_string()),
        Json::String(s) => Canon::String(s.clone()),
        Json::Array(a) => Canon::Array(a.iter().map(canon_from_json).collect()),
        Json::Object(m) => Canon::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), canon_from_json(v)))
                .collect(),
        ),
    }
}

/// A string as Go's `encoding/json` writes it with HTML escaping off.
fn go_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            '\u{2028}' => out.extend_from_slice(b"\\u2028"),
            '\u{2029}' => out.extend_from_slice(b"\\u2029"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

fn write_canon(v: &Canon, out: &mut Vec<u8>) {
    match v {
        Canon::Null => out.extend_from_slice(b"null"),
        Canon::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Canon::Number(n) => out.extend_from_slice(n.as_bytes()),
        Canon::String(s) => go_string(s, out),
        Canon::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canon(x, out);
            }
            out.push(b']');
        }
        Canon::Object(m) => {
            let mut sorted: Vec<&(String, Canon)> = m.iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            out.push(b'{');
            for (i, (k, x)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                go_string(k, out);
                out.push(b':');
                write_canon(x, out);
            }
            out.push(b'}');
        }
    }
}

fn is_structured(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    matches!(
        base,
        "data.json" | "data.yaml" | ".signatures.json" | ".manifest"
    )
}

/// OPA's file digest (`bundle.SignatureHasher`), SHA-256, hex.
pub fn file_hash(path: &str, bytes: &[u8]) -> Result<String, String> {
    let input: Vec<u8> = if is_structured(path) {
        let text = std::str::from_utf8(bytes).map_err(|_| format!("{path}: not UTF-8"))?;
        let canon = if path.ends_with(".yaml") {
            // The data as it loads (OPA's YAML), so the digest covers what decisions read.
            let v = crate::loader::parse_opa_yaml(path, text).map_err(|d| d.to_string())?;
            canon_from_json(&v)
        } else {
            parse_canon(text).map_err(|e| format!("{path}: {e}"))?
        };
        let mut out = Vec::new();
        write_canon(&canon, &mut out);
        out
    } else {
        bytes.to_vec()
    };
    Ok(hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        &input,
    )))
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn verify_signatures(files: &BTreeMap<String, Vec<u8>>, v: &Verification) -> Result<(), String> {
    let sig: Json = serde_json::from_slice(&files[".signatures.json"])
        .map_err(|e| format!(".signatures.json: {e}"))?;
    let tokens: Vec<&str> = sig
        .get("signatures")
        .and_then(Json::as_array)
        .map(|a| a.iter().filter_map(Json::as_str).collect())
        .unwrap_or_default();
    let token = match tokens.as_slice() {
        [] => return Err(".signatures.json: missing JWT (expected exactly one)".into()),
        [t] => *t,
        _ => {
            return Err(
                ".signatures.json: multiple JWTs not supported (expected exactly one)".into(),
            );
        }
    };
    let parts: Vec<&str> = token.split('.').collect();
    let [h, p, s] = parts.as_slice() else {
        return Err(".signatures.json: the signature is not a compact JWS".into());
    };
    let dec = |x: &str| {
        crate::builtins::encoding::base64url_decode(x).map_err(|e| format!(".signatures.json: {e}"))
    };
    let header: Json = serde_json::from_slice(&dec(h)?).map_err(|e| e.to_string())?;
    let payload: Json = serde_json::from_slice(&dec(p)?).map_err(|e| e.to_string())?;
    let alg = header.get("alg").and_then(Json::as_str).unwrap_or("");
    // OPA's order: the configured id, the header's `kid`, the deprecated `keyid` claim.
    let key_id = Some(v.key_id.as_str())
        .filter(|k| !k.is_empty())
        .or_else(|| header.get("kid").and_then(Json::as_str))
        .or_else(|| payload.get("keyid").and_then(Json::as_str))
        .unwrap_or("");
    if key_id.is_empty() {
        return Err("verification key ID is empty".into());
    }
    let key = v
        .keys
        .get(key_id)
        .ok_or_else(|| format!("verification key corresponding to ID {key_id} not found"))?;
    if alg != key.algorithm {
        return Err(format!(
            "signature algorithm `{alg}` is not `{}`, the algorithm of key `{key_id}`",
            key.algorithm
        ));
    }
    let signing_input = format!("{h}.{p}");
    let signature = dec(s)?;
    let ok = if alg.starts_with("HS") {
        jose::hmac_verify(
            alg,
            key.key.as_bytes(),
            signing_input.as_bytes(),
            &signature,
        )
    } else {
        let keys = jose::parse_keys(&key.key).map_err(|e| format!("verification key: {e}"))?;
        keys.iter()
            .any(|k| jose::verify(&k.key, alg, signing_input.as_bytes(), &signature))
    };
    if !ok {
        return Err("bundle signature verification failed".into());
    }
    let scope = payload.get("scope").and_then(Json::as_str).unwrap_or("");
    let want_scope = if v.scope.is_empty() {
        &key.scope
    } else {
        &v.scope
    };
    if scope != want_scope {
        return Err("scope mismatch".into());
    }
    let mut listed: BTreeMap<String, (String, String)> = BTreeMap::new();
    for f in payload
        .get("files")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
    {
        let name = f.get("name").and_then(Json::as_str).unwrap_or("");
        let hash = f.get("hash").and_then(Json::as_str).unwrap_or("");
        let algo = f.get("algorithm").and_then(Json::as_str).unwrap_or("");
        listed.insert(
            name.trim_start_matches('/').to_string(),
            (hash.to_string(), algo.to_string()),
        );
    }
    for (path, bytes) in files {
        if path == ".signatures.json" {
            continue;
        }
        // Excluded files are loaded unverified; a listing of one is not required either.
        if v.excludes(path) {
            listed.remove(path);
            continue;
        }
        let Some((hash, algo)) = listed.remove(path) else {
            return Err(format!("file {path} not included in bundle signature"));
        };
        if algo != "SHA-256" {
            return Err(format!("{path}: unsupported hashing algorithm `{algo}`"));
        }
        let got = file_hash(path, bytes)?;
        if !got.eq_ignore_ascii_case(&hash) {
            return Err(format!(
                "{path}: digest mismatch (want: {hash}, got: {got})"
            ));
        }
    }
    if !listed.is_empty() {
        let extra: Vec<&String> = listed.keys().collect();
        return Err(format!(
            "file(s) {extra:?} specified in bundle signatures but not found in the target bundle"
        ));
    }
    Ok(())
}

/// The `.signatures.json` for `files` (all but itself), as `opa sign` writes it.
pub fn sign(files: &BTreeMap<String, Vec<u8>>, s: &Signing) -> Result<Vec<u8>, String> {
    let mut list = Vec::new();
    for (path, bytes) in files {
        if path == ".signatures.json" {
            continue;
        }
        list.push(serde_json::json!({
            "name": path,
            "hash": file_hash(path, bytes)?,
            "algorithm": "SHA-256",
        }));
    }
    let mut payload = serde_json::json!({"files": list});
    if let Some(scope) = &s.scope {
        payload["scope"] = Json::String(scope.clone());
    }
    let mut header = serde_json::json!({"alg": s.algorithm});
    if let Some(kid) = &s.key_id {
        header["kid"] = Json::String(kid.clone());
    }
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(payload.to_string().as_bytes())
    );
    let signature = if s.algorithm.starts_with("HS") {
        jose::hmac_sign(&s.algorithm, s.key.as_bytes(), signing_input.as_bytes())
            .ok_or_else(|| format!("unknown algorithm `{}`", s.algorithm))?
    } else {
        jose::sign_pem(&s.key, &s.algorithm, signing_input.as_bytes())
            .map_err(|e| format!("signing key: {e}"))?
    };
    let token = format!("{signing_input}.{}", b64url(&signature));
    serde_json::to_vec_pretty(&serde_json::json!({"signatures": [token]}))
        .map_err(|e| e.to_string())
}

/// Build a bundle from a folder: every policy, data, CEL and test file under `dir` (hidden
/// files skipped), a `.manifest` with `revision` (and `roots` when given), signed when
/// `signing` is given. The result is a gzip-compressed tar with relative entry names, as
/// `tar -czf` writes them (OPA reads names with and without a leading `/`).
pub fn build(
    dir: &Path,
    revision: &str,
    roots: Option<&[String]>,
    signing: Option<&Signing>,
) -> Result<Vec<u8>, String> {
    build_with(dir, revision, roots, signing, &LoadLimits::default())
}

/// [`build`] under `limits`: a bundle that would be refused when loaded is not built.
pub fn build_with(
    dir: &Path,
    revision: &str,
    roots: Option<&[String]>,
    signing: Option<&Signing>,
    limits: &LoadLimits,
) -> Result<Vec<u8>, String> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (path, bytes) in read_dir_with(dir, limits)? {
        let hidden = path.split('/').any(|s| s.starts_with('.'));
        if hidden || crate::loader::classify(Path::new(&path), false).is_none() {
            continue;
        }
        files.insert(path, bytes);
    }
    let mut manifest = serde_json::json!({"revision": revision});
    if let Some(r) = roots {
        manifest["roots"] = Json::from(r.to_vec());
    }
    files.insert(
        ".manifest".into(),
        serde_json::to_vec(&manifest).map_err(|e| e.to_string())?,
    );
    // Refuse to build what would not load.
    from_files_with(files.clone(), &dir.display().to_string(), None, limits)?;
    if let Some(s) = signing {
        let sig = sign(&files, s)?;
        files.insert(".signatures.json".into(), sig);
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut tar = tar::Builder::new(&mut gz);
        for (path, bytes) in &files {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_mtime(0);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_cksum();
            tar.append_data(&mut header, path, bytes.as_slice())
                .map_err(|e| format!("{path}: {e}"))?;
        }
        tar.finish().map_err(|e| e.to_string())?;
    }
    let mut out = gz.finish().map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(out)
}

#[cfg(test)]
mod tests;

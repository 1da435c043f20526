//! Finding and reading policy files the way OPA does.
//!
//! Each path given is a file or a folder. Folders are walked recursively in a stable (sorted)
//! order, hidden entries (names starting with `.`) are skipped, and each file is classified by
//! its name:
//!
//! | file | what it is |
//! |---|---|
//! | `*.rego` | a Rego module |
//! | `*_test.rego` | a Rego test module, loaded only by the test runner |
//! | `data.json`, `data.yaml`, `data.yml` | a data document, placed under the document path of its folder (`a/b/data.json` → `data.a.b`), as in OPA bundles |
//! | `*.cel.yaml`, `*.cel.yml` | a CEL policy |
//! | `*_test.yaml`, `*_test.yml` | decision tests |
//!
//! A `.json`/`.yaml` file named directly on the command line is a data document merged at the
//! root, as `opa eval -d roles.json` does. Everything else is ignored.

use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use crate::diagnostic::{Diagnostic, LoadError};
use crate::limits::LoadLimits;

/// Which Rego syntax modules are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegoVersion {
    /// Rego v1 (OPA 1.0 and later): `if` and `contains` are required. The default.
    #[default]
    V1,
    /// Pre-1.0 syntax, as `opa --v0-compatible` accepts it.
    V0Compatible,
}

/// What a file found under a policy path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceKind {
    Rego,
    RegoTest,
    Data,
    Cel,
    DecisionTest,
    Istio,
}

/// A file's text with the name it is reported under.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// The path as the user would write it (relative to the current directory when given so).
    pub name: String,
    pub text: String,
}

/// A data document and where it goes in `data`.
#[derive(Debug, Clone)]
pub struct DataDocument {
    pub file: String,
    /// Document path segments: `a/b/data.json` → `["a", "b"]`.
    pub prefix: Vec<String>,
    /// The document, as the Rego value it is in `data` (parsed once, straight from the text).
    pub value: regorus::Value,
    /// SHA-256 of the document's text as read (of its JSON text for a document given as
    /// JSON): what the policy set's revision digests.
    pub digest: Vec<u8>,
}

impl DataDocument {
    /// A document given as JSON (embedding, tests, a bundle's manifest).
    pub fn from_json(file: impl Into<String>, prefix: Vec<String>, value: &Json) -> Self {
        DataDocument {
            file: file.into(),
            prefix,
            value: crate::value::from_json(value),
            digest: sha256(value.to_string().as_bytes()),
        }
    }

    /// The document as seen from the root of `data`: its value inside objects named by its
    /// prefix (`a/b/data.json` holding `{"x": 1}` is `{"a": {"b": {"x": 1}}}`).
    pub fn at_root(&self) -> regorus::Value {
        let mut v = self.value.clone();
        for seg in self.prefix.iter().rev() {
            let mut m = regorus::value::Object::new();
            m.insert(regorus::Value::from(seg.as_str()), v);
            v = m.into_value();
        }
        v
    }

    /// A document file's text (`data.json`, `data.yaml`), parsed straight into a Rego value;
    /// errors name `file` and the position.
    ///
    /// A large document this process parsed before from the same bytes (the same file name,
    /// path and digest: a reload whose data did not change) is that earlier value, shared:
    /// see [`Reuse`].
    pub fn parse(file: String, prefix: Vec<String>, text: &str) -> Result<Self, Diagnostic> {
        let digest = sha256(text.as_bytes());
        let reusable = text.len() >= Reuse::MIN_BYTES;
        if reusable && let Some(value) = Reuse::get(&file, &prefix, &digest) {
            return Ok(DataDocument {
                file,
                prefix,
                value,
                digest,
            });
        }
        let mut interner = crate::value::Interner::default();
        let value = if DocFormat::from_name(&file) == DocFormat::Json {
            crate::value::parse_json_shared(text, &mut interner)
                .map_err(|e| json_error(&file, &e))?
        } else {
            crate::value::from_json_shared(&parse_opa_yaml(&file, text)?, &mut interner)
        };
        if reusable {
            Reuse::put(&file, &prefix, &digest, &value);
        }
        Ok(DataDocument {
            digest,
            file,
            prefix,
            value,
        })
    }
}

/// The last value parsed from each large data document (by file name and document path),
/// with the digest of its bytes. A reload reads every file again; one whose bytes did not
/// change takes the value parsed before instead of parsing it again, so the new set and the
/// one it replaces share that document: a reload of an unchanged 1,000,000-identity file costs
/// its reading and hashing, not a second copy of it in memory (issue 18: RSS after reloads
/// within 10% of the first load's). Values are immutable (a change copies the part it
/// changes), so sharing is safe. Only documents of at least [`Reuse::MIN_BYTES`] are kept,
/// at most [`Reuse::MAX_ENTRIES`] of them; a document that is no longer loaded stays held
/// until its entry is replaced or evicted.
struct Reuse;

type ReuseKey = (String, Vec<String>);

static REUSE: std::sync::Mutex<Vec<(ReuseKey, Vec<u8>, regorus::Value)>> =
    std::sync::Mutex::new(Vec::new());

impl Reuse {
    const MIN_BYTES: usize = 1 << 20;
    const MAX_ENTRIES: usize = 16;

    fn get(file: &str, prefix: &[String], digest: &[u8]) -> Option<regorus::Value> {
        let entries = REUSE.lock().ok()?;
        entries
            .iter()
            .find(|((f, p), d, _)| f == file && p.as_slice() == prefix && d.as_slice() == digest)
            .map(|(_, _, value)| value.clone())
    }

    fn put(file: &str, prefix: &[String], digest: &[u8], value: &regorus::Value) {
        let Ok(mut entries) = REUSE.lock() else {
            return;
        };
        entries.retain(|((f, p), _, _)| !(f == file && p.as_slice() == prefix));
        if entries.len() >= Self::MAX_ENTRIES {
            entries.remove(0);
        }
        entries.push((
            (file.to_string(), prefix.to_vec()),
            digest.to_vec(),
            value.clone(),
        ));
    }
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// Everything found under the policy paths, read but not yet compiled.
#[derive(Debug, Clone, Default)]
pub struct PolicySources {
    pub rego: Vec<SourceFile>,
    pub rego_tests: Vec<SourceFile>,
    pub data: Vec<DataDocument>,
    pub cel: Vec<SourceFile>,
    pub decision_tests: Vec<SourceFile>,
    /// Istio `AuthorizationPolicy` files.
    pub istio: Vec<SourceFile>,
    /// A bundle's manifest revision: the policy set's revision instead of a digest.
    pub revision: Option<String>,
    /// The bundles these sources came from: name → manifest revision (decision events name
    /// them as OPA does, under `bundles`).
    pub bundles: std::collections::BTreeMap<String, String>,
}

/// Largest policy file read, in bytes (regorus's own policy limit is the same).
pub const MAX_FILE_BYTES: u64 = crate::limits::MAX_POLICY_FILE_BYTES;

impl PolicySources {
    /// Read every policy, test and data file under `paths`. All problems are collected and
    /// reported together.
    pub fn discover<P: AsRef<Path>>(paths: &[P]) -> Result<Self, LoadError> {
        Self::discover_ignoring(paths, &[])
    }

    /// [`PolicySources::discover`], skipping the files and folders inside the given folders
    /// whose names match one of `ignore` (Go `filepath.Match` patterns on the base name, as
    /// OPA's `--ignore`).
    pub fn discover_ignoring<P: AsRef<Path>>(
        paths: &[P],
        ignore: &[String],
    ) -> Result<Self, LoadError> {
        Self::discover_with(paths, ignore, &LoadLimits::default())
    }

    /// [`PolicySources::discover_ignoring`] under `limits` (file sizes, bundle size, number of
    /// policy files), the same limits every loader applies.
    pub fn discover_with<P: AsRef<Path>>(
        paths: &[P],
        ignore: &[String],
        limits: &LoadLimits,
    ) -> Result<Self, LoadError> {
        let mut sources = PolicySources::default();
        let mut diagnostics = Vec::new();
        for root in paths {
            // OPA's `prefix:path` (`authz:policies/authz`): the documents under `path` are
            // loaded at `data.prefix` (dots separate its segments).
            let (data_prefix, root) = split_data_prefix(root.as_ref());
            let root = root.as_path();
            let meta = match std::fs::metadata(root) {
                Ok(m) => m,
                Err(e) => {
                    diagnostics.push(Diagnostic::file(
                        root.display().to_string(),
                        format!("cannot read policy path: {e}"),
                    ));
                    continue;
                }
            };
            if meta.is_dir() {
                let mut files = Vec::new();
                if let Err(d) = walk(root, ignore, &mut files) {
                    diagnostics.push(d);
                }
                for file in files {
                    let mut prefix = data_prefix.clone();
                    prefix.extend(document_prefix(root, &file));
                    sources.add_file(&file, prefix, false, limits, &mut diagnostics);
                }
            } else if is_bundle_file(root) {
                match crate::bundle::read_bundle(root, None, limits) {
                    Ok(b) => {
                        let mut b = b.sources;
                        b.bundles.insert(
                            root.display().to_string(),
                            b.revision.clone().unwrap_or_default(),
                        );
                        sources.extend(b);
                    }
                    Err(e) => diagnostics.push(Diagnostic::file(root.display().to_string(), e)),
                }
            } else {
                sources.add_file(root, data_prefix, true, limits, &mut diagnostics);
            }
        }
        if let Err(message) = sources.check_limits(limits) {
            diagnostics.push(Diagnostic::file(
                paths
                    .iter()
                    .map(|p| p.as_ref().display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                message,
            ));
        }
        if diagnostics.is_empty() {
            Ok(sources)
        } else {
            Err(LoadError { diagnostics })
        }
    }

    /// How many policy files these sources hold (Rego modules and tests, CEL, Istio and
    /// decision-test files): what `max_modules` counts.
    pub fn policy_files(&self) -> usize {
        self.rego.len()
            + self.rego_tests.len()
            + self.cel.len()
            + self.istio.len()
            + self.decision_tests.len()
    }

    /// Refuse sources past `limits`' count of policy files (sizes are refused as files are
    /// read).
    pub fn check_limits(&self, limits: &LoadLimits) -> Result<(), String> {
        limits.check_modules(self.policy_files())
    }

    /// Add everything of `other` (a bundle's sources); its revision wins.
    pub fn extend(&mut self, other: PolicySources) {
        self.rego.extend(other.rego);
        self.rego_tests.extend(other.rego_tests);
        self.data.extend(other.data);
        self.cel.extend(other.cel);
        self.decision_tests.extend(other.decision_tests);
        self.istio.extend(other.istio);
        self.bundles.extend(other.bundles);
        if other.revision.is_some() {
            self.revision = other.revision;
        }
    }

    /// Add a module given as text (embedding, tests, `arbiter eval` on stdin).
    pub fn add_rego(&mut self, name: impl Into<String>, text: impl Into<String>) {
        self.rego.push(SourceFile {
            name: name.into(),
            text: text.into(),
        });
    }

    /// Add a data document at the root of `data`.
    pub fn add_data(&mut self, file: impl Into<String>, value: Json) {
        self.data
            .push(DataDocument::from_json(file, Vec::new(), &value));
    }

    fn add_file(
        &mut self,
        path: &Path,
        prefix: Vec<String>,
        named_explicitly: bool,
        limits: &LoadLimits,
        diagnostics: &mut Vec<Diagnostic>,
    ) {
        let kind = match classify(path, named_explicitly) {
            Some(k) => k,
            // Other YAML files hold Istio policies when they say so.
            None if is_yaml(path) => match read_limited(path, false, limits) {
                Ok(t) if crate::istio::looks_like_istio(&t) => SourceKind::Istio,
                _ => return,
            },
            None => return,
        };
        let name = path.display().to_string();
        let text = match read_limited(path, kind == SourceKind::Data, limits) {
            Ok(t) => t,
            Err(message) => {
                diagnostics.push(Diagnostic::file(name, message));
                return;
            }
        };
        let file = SourceFile {
            name: name.clone(),
            text,
        };
        match kind {
            SourceKind::Rego => self.rego.push(file),
            SourceKind::RegoTest => self.rego_tests.push(file),
            SourceKind::Cel => self.cel.push(file),
            SourceKind::DecisionTest => self.decision_tests.push(file),
            SourceKind::Istio => self.istio.push(file),
            SourceKind::Data => match DataDocument::parse(name, prefix, &file.text) {
                Ok(doc) => self.data.push(doc),
                Err(d) => diagnostics.push(d),
            },
        }
    }

    /// Merge all data documents into one `data` object, as a Rego value. Objects merge key by
    /// key; any other clash (two files setting the same key to different non-object values) is
    /// an error that names both files.
    pub fn merged_data(&self) -> Result<regorus::Value, LoadError> {
        let mut root = regorus::Value::new_object();
        let mut owners: Vec<(Vec<String>, String)> = Vec::new();
        let mut diagnostics = Vec::new();
        for doc in &self.data {
            if doc.prefix.is_empty() && !matches!(doc.value, regorus::Value::Object(_)) {
                diagnostics.push(Diagnostic::file(
                    &doc.file,
                    "a data document at the root must be a JSON object",
                ));
                continue;
            }
            let wrapped = doc.at_root();
            let mut at = Vec::new();
            if let Err(conflict_path) = merge(&mut root, wrapped, &mut at) {
                let other = owners
                    .iter()
                    .rev()
                    .find(|(p, _)| conflict_path.starts_with(p) || p.starts_with(&conflict_path))
                    .map(|(_, f)| f.as_str())
                    .unwrap_or("another data file");
                diagnostics.push(Diagnostic::file(
                    &doc.file,
                    format!(
                        "data conflict at `data.{}`: also set by {other}",
                        conflict_path.join(".")
                    ),
                ));
            }
            owners.push((doc.prefix.clone(), doc.file.clone()));
        }
        if diagnostics.is_empty() {
            Ok(root)
        } else {
            Err(LoadError { diagnostics })
        }
    }
}

fn merge(
    into: &mut regorus::Value,
    from: regorus::Value,
    at: &mut Vec<String>,
) -> Result<(), Vec<String>> {
    use regorus::Value;
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            let a = regorus::Rc::make_mut(a);
            let b = regorus::Rc::try_unwrap(b).unwrap_or_else(|b| (*b).clone());
            for (k, v) in b {
                at.push(match &k {
                    Value::String(s) => s.to_string(),
                    other => other.to_string(),
                });
                match a.get_mut(&k) {
                    Some(existing) => merge(existing, v, at)?,
                    None => {
                        a.insert(k, v);
                    }
                }
                at.pop();
            }
            Ok(())
        }
        (a, b) if *a == b => Ok(()),
        _ => Err(at.clone()),
    }
}

/// Classify a file by its name. `named_explicitly` is true for files given directly as paths.
fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml" || e == "yml")
}

/// A path named like an OPA bundle archive (`.tar.gz`, `.tgz`).
pub fn is_bundle_file(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

pub fn classify(path: &Path, named_explicitly: bool) -> Option<SourceKind> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with("_test.rego") {
        return Some(SourceKind::RegoTest);
    }
    if name.ends_with(".rego") {
        return Some(SourceKind::Rego);
    }
    if name.ends_with(".cel.yaml") || name.ends_with(".cel.yml") {
        return Some(SourceKind::Cel);
    }
    if name.ends_with(".istio.yaml") || name.ends_with(".istio.yml") {
        return Some(SourceKind::Istio);
    }
    if name.ends_with("_test.yaml") || name.ends_with("_test.yml") {
        return Some(SourceKind::DecisionTest);
    }
    if matches!(name, "data.json" | "data.yaml" | "data.yml") {
        return Some(SourceKind::Data);
    }
    if named_explicitly
        && (name.ends_with(".json") || name.ends_with(".yaml") || name.ends_with(".yml"))
    {
        return Some(SourceKind::Data);
    }
    None
}

fn walk(dir: &Path, ignore: &[String], out: &mut Vec<PathBuf>) -> Result<(), Diagnostic> {
    let entries = std::fs::read_dir(dir).map_err(|e| {
        Diagnostic::file(
            dir.display().to_string(),
            format!("cannot read folder: {e}"),
        )
    })?;
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                !n.starts_with('.')
                    && !ignore
                        .iter()
                        .any(|pattern| crate::bundle::go_path_match(pattern, n))
            })
        })
        .collect();
    paths.sort();
    for p in paths {
        // Symlinked folders are followed once; a cycle would be bounded by the OS path limit,
        // so refuse symlinks to folders outright.
        let meta = std::fs::symlink_metadata(&p)
            .map_err(|e| Diagnostic::file(p.display().to_string(), format!("cannot read: {e}")))?;
        if meta.is_dir() {
            walk(&p, ignore, out)?;
        } else if meta.is_file() || meta.file_type().is_symlink() && p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// `root/a/b/data.json` → `["a", "b"]`.
/// `a.b:some/path` → (`["a", "b"]`, `some/path`), as OPA reads a path argument with a data
/// prefix; a path that exists as written, or whose part before `:` is not a dotted name, is
/// taken whole.
fn split_data_prefix(path: &Path) -> (Vec<String>, std::path::PathBuf) {
    let whole = (Vec::new(), path.to_path_buf());
    let Some(text) = path.to_str() else {
        return whole;
    };
    if path.exists() {
        return whole;
    }
    let Some((prefix, rest)) = text.split_once(':') else {
        return whole;
    };
    let segments: Vec<String> = prefix.split('.').map(str::to_string).collect();
    let name = |s: &String| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    };
    if rest.is_empty() || !segments.iter().all(name) {
        return whole;
    }
    (segments, std::path::PathBuf::from(rest))
}

fn document_prefix(root: &Path, file: &Path) -> Vec<String> {
    file.parent()
        .and_then(|parent| parent.strip_prefix(root).ok())
        .map(|rel| {
            rel.components()
                .filter_map(|c| c.as_os_str().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn read_limited(path: &Path, data: bool, limits: &LoadLimits) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    limits.check_file(data, meta.len())?;
    // Read at most one byte past the limit, in case the file grew since.
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?,
            meta.len().saturating_add(1),
        ),
        &mut bytes,
    )
    .map_err(|e| format!("cannot read: {e}"))?;
    limits.check_file(data, bytes.len() as u64)?;
    String::from_utf8(bytes).map_err(|e| format!("file is not valid UTF-8: {e}"))
}

/// How a document is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocFormat {
    Json,
    Yaml,
}

impl DocFormat {
    /// YAML for `.yaml`/`.yml` files, JSON otherwise.
    pub fn from_name(name: &str) -> Self {
        if name.ends_with(".yaml") || name.ends_with(".yml") {
            DocFormat::Yaml
        } else {
            DocFormat::Json
        }
    }
}

/// YAML as OPA reads data and input documents (go-yaml v2: `yes`, `on`, `y` are booleans,
/// `010` is octal, `1_000` a thousand; regorus patch 28), the one reading of `data.yaml`,
/// bundles' data files and their signatures, `-i input.yaml` and `yaml.unmarshal`. arbiter's
/// own YAML files (CEL policies, decision tests, configuration) are YAML 1.2.
pub fn parse_opa_yaml(name: &str, text: &str) -> Result<Json, Diagnostic> {
    regorus::value::yaml11::parse(text)
        .map(|v| crate::value::to_json(&v))
        .map_err(|e| yaml_diagnostic(name, &e))
}

fn yaml_diagnostic(name: &str, e: &yaml_serde::Error) -> Diagnostic {
    let (line, col, message) = yaml_position(e);
    Diagnostic::at(name, line, col, format!("invalid YAML: {message}"))
}

/// A YAML error's line, column and message (without the " at line X column Y" the reader
/// appends: a diagnostic carries the position).
pub(crate) fn yaml_position(e: &yaml_serde::Error) -> (u32, u32, String) {
    let (line, col) = e
        .location()
        .map(|l| {
            (
                u32::try_from(l.line()).unwrap_or(0),
                u32::try_from(l.column()).unwrap_or(0),
            )
        })
        .unwrap_or((0, 0));
    let message = e.to_string();
    let message = message
        .rsplit_once(" at line ")
        .map_or(message.as_str(), |(m, _)| m)
        .to_string();
    (line, col, message)
}

/// Parse a JSON or YAML data document (by its name), reporting the position of a syntax error.
pub fn parse_data(name: &str, text: &str) -> Result<Json, Diagnostic> {
    parse_document(name, text, DocFormat::from_name(name))
}

/// Parse a document in the given format; errors name `name` and the position.
pub fn parse_document(name: &str, text: &str, format: DocFormat) -> Result<Json, Diagnostic> {
    if format == DocFormat::Json {
        serde_json::from_str(text).map_err(|e| json_error(name, &e))
    } else {
        yaml_serde::from_str(text).map_err(|e| yaml_diagnostic(name, &e))
    }
}

/// A JSON syntax error in `name`, at its position.
fn json_error(name: &str, e: &serde_json::Error) -> Diagnostic {
    Diagnostic::at(
        name,
        u32::try_from(e.line()).unwrap_or(0),
        u32::try_from(e.column()).unwrap_or(0),
        format!("invalid JSON: {}", strip_position(&e.to_string())),
    )
}

/// serde_json appends " at line X column Y"; the diagnostic carries the position already.
fn strip_position(msg: &str) -> &str {
    msg.rfind(" at line ").map_or(msg, |i| &msg[..i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn tmpdir(name: &str) -> crate::scratch::ScratchDir {
        crate::scratch::ScratchDir::new(&format!("arbiter-loader-{name}-{}", std::process::id()))
    }

    /// A large document parsed again from the same bytes is the value parsed before; changed
    /// bytes, or the same bytes under another name or path, are parsed.
    #[test]
    fn an_unchanged_large_document_is_parsed_once() {
        let big = |tenant: &str| {
            let ids: Vec<String> = (0..30_000)
                .map(|i| format!("\"spiffe://td/sa/s{i:06}\":{{\"tenant\":\"{tenant}\"}}"))
                .collect();
            format!("{{\"identities\":{{{}}}}}", ids.join(","))
        };
        let (a, b) = (big("t1"), big("t2"));
        assert!(a.len() >= Reuse::MIN_BYTES, "{} bytes", a.len());
        let file = "reuse-test/data.json".to_string();
        let first = DataDocument::parse(file.clone(), vec![], &a).unwrap();
        assert_eq!(
            Reuse::get(&file, &[], &first.digest).as_ref(),
            Some(&first.value)
        );
        let again = DataDocument::parse(file.clone(), vec![], &a).unwrap();
        let (regorus::Value::Object(x), regorus::Value::Object(y)) = (&first.value, &again.value)
        else {
            panic!("objects");
        };
        assert!(std::sync::Arc::ptr_eq(x, y), "the same value, not a copy");
        let changed = DataDocument::parse(file.clone(), vec![], &b).unwrap();
        assert_ne!(changed.value, first.value);
        assert_eq!(
            changed.value["identities"]["spiffe://td/sa/s000000"]["tenant"],
            regorus::Value::from("t2")
        );
        // One entry per file: the first bytes' value is no longer held.
        assert!(Reuse::get(&file, &[], &first.digest).is_none());
        assert!(Reuse::get(&file, &[], &changed.digest).is_some());
        assert!(Reuse::get("other/data.json", &[], &changed.digest).is_none());
        assert!(Reuse::get(&file, &["x".to_string()], &changed.digest).is_none());
        // Small documents are not kept.
        let small = DataDocument::parse("reuse-test/small.json".into(), vec![], "{}").unwrap();
        assert!(Reuse::get("reuse-test/small.json", &[], &small.digest).is_none());
    }

    #[test]
    fn classifies_by_name() {
        assert_eq!(
            classify(Path::new("a/x.rego"), false),
            Some(SourceKind::Rego)
        );
        assert_eq!(
            classify(Path::new("a/x_test.rego"), false),
            Some(SourceKind::RegoTest)
        );
        assert_eq!(
            classify(Path::new("a/data.yaml"), false),
            Some(SourceKind::Data)
        );
        assert_eq!(classify(Path::new("a/roles.json"), false), None);
        assert_eq!(
            classify(Path::new("roles.json"), true),
            Some(SourceKind::Data)
        );
        assert_eq!(
            classify(Path::new("p/api.cel.yaml"), false),
            Some(SourceKind::Cel)
        );
        assert_eq!(
            classify(Path::new("p/api_test.yaml"), false),
            Some(SourceKind::DecisionTest)
        );
    }

    #[test]
    fn data_goes_under_its_folder_path() {
        let d = tmpdir("prefix");
        fs::create_dir_all(d.join("a/b")).unwrap();
        fs::write(d.join("data.json"), r#"{"top": 1}"#).unwrap();
        fs::write(d.join("a/b/data.json"), r#"{"x": [1, 2]}"#).unwrap();
        fs::write(d.join("a/data.yaml"), "y: yes\n").unwrap();
        fs::write(d.join("a/notes.json"), "not data").unwrap();
        let s = PolicySources::discover(&[&d]).unwrap();
        let merged = crate::value::to_json(&s.merged_data().unwrap());
        assert_eq!(
            merged,
            // OPA's YAML: the key `y` and the value `yes` are both `true` (YAML 1.1).
            serde_json::json!({"top": 1, "a": {"b": {"x": [1, 2]}, "true": true}})
        );
    }

    /// OPA's YAML (go-yaml v2, YAML 1.1 plain scalars). The expected document is what
    /// `opa eval -d DIR data.a -f json` (OPA 1.7.1) printed for this file on 2026-12-03.
    #[test]
    fn data_yaml_reads_as_opa_reads_it() {
        let text = "y: yes\nn: off\nq: \"yes\"\no: 010\nb: 0b101\nu: 1_000\nf: 1_0.5\nnul: ~\nt: True\nt2: TRUE\nyy: Yes\nhex: 0x1F\nneg: -0x10\nsex: 1:30\nd: 2001-12-14\n";
        assert_eq!(
            parse_opa_yaml("a/data.yaml", text).unwrap(),
            serde_json::json!({"b": 5, "d": "2001-12-14", "f": 10.5, "false": false, "hex": 31,
                "neg": -16, "nul": null, "o": 8, "q": "yes", "sex": "1:30", "t": true,
                "t2": true, "true": true, "u": 1000, "yy": true})
        );
        // OPA refuses what JSON cannot hold.
        let e = parse_opa_yaml("a/data.yaml", "x: .inf\n").unwrap_err();
        assert!(e.message.contains("unsupported value: +Inf"), "{e:?}");
    }

    #[test]
    fn conflicting_data_names_both_files() {
        let d = tmpdir("conflict");
        fs::create_dir_all(d.join("a")).unwrap();
        fs::write(d.join("data.json"), r#"{"a": {"k": 1}}"#).unwrap();
        fs::write(d.join("a/data.json"), r#"{"k": 2}"#).unwrap();
        let s = PolicySources::discover(&[&d]).unwrap();
        let err = s.merged_data().unwrap_err().to_string();
        assert!(err.contains("data conflict at `data.a.k`"), "{err}");
        assert!(err.contains("data.json"), "{err}");
    }

    #[test]
    fn json_syntax_error_has_position() {
        let d = tmpdir("badjson");
        fs::write(d.join("data.json"), "{\n  \"a\": [1,\n}").unwrap();
        let err = PolicySources::discover(&[&d]).unwrap_err();
        let diag = &err.diagnostics[0];
        assert_eq!(diag.line, 3);
        assert!(diag.message.starts_with("invalid JSON"), "{}", diag.message);
    }

    #[test]
    fn tests_and_hidden_files_are_separated() {
        let d = tmpdir("tests");
        fs::create_dir_all(d.join(".git")).unwrap();
        fs::write(d.join(".git/x.rego"), "package hidden").unwrap();
        fs::write(d.join("p.rego"), "package p").unwrap();
        fs::write(d.join("p_test.rego"), "package p_test").unwrap();
        let s = PolicySources::discover(&[&d]).unwrap();
        assert_eq!(s.rego.len(), 1);
        assert_eq!(s.rego_tests.len(), 1);
    }

    #[test]
    fn missing_path_is_an_error() {
        let err = PolicySources::discover(&["/nonexistent/arbiter"]).unwrap_err();
        assert!(err.to_string().contains("cannot read policy path"));
    }
}

//! A compiled set of policies and data: load once, evaluate many times from many threads.
//!
//! # Why a clone per evaluation
//!
//! A regorus `Engine` is evaluated through `&mut self`, so concurrent callers each need their
//! own. After loading, the set prepares its engine once (analysis, scheduling, loop hoisting)
//! and keeps it as a prototype; every evaluation clones the prototype. Modules, data and the
//! compiled schedule are shared behind `Arc`s, so a clone costs a fraction of a microsecond
//! (measured in `benches/`, see `benches/RESULTS.md`), far below the evaluation itself, and it
//! needs no lock, no thread-local state and no pool to size. A clone of a prototype that had
//! never been prepared would redo the analysis on its first evaluation (~100 µs), which is why
//! loading prepares it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use regorus::Value;

use crate::cel::CelPolicies;
use crate::data_ref::DataRef;
use crate::decision::{Decision, DenyReason};
use crate::diagnostic::{Diagnostic, LoadError};
use crate::loader::{PolicySources, RegoVersion};
use crate::rego::{self, EngineOptions, EvalError};
use crate::value::from_json;

/// How a policy set is loaded and evaluated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    pub rego_version: RegoVersion,
    /// Load `*_test.rego` modules too (the test runner does; servers do not).
    pub include_tests: bool,
    /// Wall-clock budget for one evaluation; `None` for no limit. The default is
    /// [`crate::limits::Limits`]'s (50 ms), as `arbiter serve` uses: an embedder that builds a
    /// set with the defaults gets the same bounded evaluation.
    pub eval_timeout: Option<Duration>,
    /// Expression steps one evaluation of the CEL policies may take
    /// ([`crate::cel::DEFAULT_COST_LIMIT`]); `None` for no bound but the time limit.
    pub cel_cost_limit: Option<u64>,
    /// How Istio `AuthorizationPolicy` files are applied.
    pub istio: crate::istio::IstioOptions,
    /// A built-in error is an evaluation error (the default: a decision that fails denies with
    /// a reason). `false` makes the failing expression undefined, as `opa eval` does without
    /// `--strict-builtin-errors`; only `arbiter eval` uses that.
    pub strict_builtin_errors: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            rego_version: RegoVersion::V1,
            include_tests: false,
            eval_timeout: Some(crate::limits::Limits::default().eval_timeout),
            cel_cost_limit: Some(crate::cel::DEFAULT_COST_LIMIT),
            istio: crate::istio::IstioOptions::default(),
            strict_builtin_errors: true,
        }
    }
}

impl LoadOptions {
    fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            rego_version: self.rego_version,
            strict_builtin_errors: self.strict_builtin_errors,
            eval_timeout: self.eval_timeout,
            ..EngineOptions::default()
        }
    }
}

/// Compiled Rego modules, CEL policies and data, ready to evaluate.
/// How `opa eval`'s options shape a query ([`PolicySet::query_with`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryOptions<'a> {
    /// `--package`: the query's bare names are this package's rules (dotted, as written after
    /// `package`).
    pub package: Option<&'a str>,
    /// `--coverage`: report the Rego lines the evaluation covered.
    pub coverage: bool,
}

#[derive(Clone)]
pub struct PolicySet {
    prototype: regorus::Engine,
    modules: Vec<String>,
    cel: Option<Arc<CelPolicies>>,
    istio: Option<Arc<crate::istio::IstioPolicies>>,
    warnings: Vec<Diagnostic>,
    revision: String,
    bundles: Arc<std::collections::BTreeMap<String, String>>,
    options: LoadOptions,
    /// Where each rule's value lies in `data` (writes to the data may not put a value there).
    rule_paths: Arc<Vec<RulePath>>,
    /// The revision of the sources, when data writes have changed the set since (its own
    /// revision is then this one with the writes' digest).
    base_revision: Option<String>,
    /// What the Rego modules can read of `input` ([`crate::input::needs`]).
    rego_input_reads: Arc<crate::input::needs::RegoReads>,
}

impl std::fmt::Debug for PolicySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicySet")
            .field("modules", &self.modules)
            .field("revision", &self.revision)
            .finish_non_exhaustive()
    }
}

impl PolicySet {
    /// Read and compile everything under `paths` (files or folders).
    pub fn load<P: AsRef<Path>>(paths: &[P], options: &LoadOptions) -> Result<Self, LoadError> {
        let sources = PolicySources::discover(paths)?;
        Self::from_sources(&sources, options)
    }

    /// Compile already-read sources. All parse errors are reported together; compile errors
    /// (found when the engine is prepared) follow once every module parsed.
    pub fn from_sources(sources: &PolicySources, options: &LoadOptions) -> Result<Self, LoadError> {
        Self::build(sources, options, None)
    }

    /// Compile with `overrides` deep-merged over the data documents (objects merge key by key,
    /// anything else replaces): decision tests that change a role or an entitlement.
    pub fn from_sources_with_data(
        sources: &PolicySources,
        options: &LoadOptions,
        overrides: &serde_json::Value,
    ) -> Result<Self, LoadError> {
        Self::build(sources, options, Some(overrides))
    }

    fn build(
        sources: &PolicySources,
        options: &LoadOptions,
        overrides: Option<&serde_json::Value>,
    ) -> Result<Self, LoadError> {
        let mut engine = rego::new_engine(&options.engine_options());
        let mut diagnostics = Vec::new();
        let mut modules = Vec::new();
        let files = sources.rego.iter().chain(
            options
                .include_tests
                .then_some(&sources.rego_tests)
                .into_iter()
                .flatten(),
        );
        let mut warnings = Vec::new();
        let mut rules = Vec::new();
        for file in &sources.rego {
            warnings.extend(risky_defaults(&file.name, &file.text));
            warnings.extend(raw_path_comparisons(&file.name, &file.text));
        }
        for file in files {
            diagnostics.extend(forbidden_calls(&file.name, &file.text));
            match engine.add_policy(file.name.clone(), file.text.clone()) {
                Ok(_) => modules.push(file.name.clone()),
                Err(e) => diagnostics
                    .push(Diagnostic::from_regorus(&e, &file.name).with_code("rego_parse_error")),
            }
        }
        let mut data_value = Value::new_object();
        match sources.merged_data() {
            Ok(mut data) => {
                if let Some(o) = overrides {
                    merge_value_over(&mut data, from_json(o));
                }
                data_value = data;
                if let Err(e) = engine.add_data(data_value.clone()) {
                    diagnostics.push(Diagnostic::file("data", format!("cannot load data: {e}")));
                }
            }
            Err(e) => diagnostics.extend(e.diagnostics),
        }
        let cel = if sources.cel.is_empty() {
            None
        } else {
            match CelPolicies::compile_with_cost_limit(
                &sources.cel,
                &data_value,
                options.cel_cost_limit,
            ) {
                Ok(mut c) => {
                    warnings.extend(c.warnings().iter().cloned());
                    c.set_time_limit(options.eval_timeout);
                    Some(Arc::new(c))
                }
                Err(mut e) => {
                    diagnostics.append(&mut e);
                    None
                }
            }
        };
        let mut istio_policies = Vec::new();
        for f in &sources.istio {
            match crate::istio::parse(&f.name, &f.text) {
                Ok((mut p, mut w)) => {
                    istio_policies.append(&mut p);
                    warnings.append(&mut w);
                }
                Err(mut e) => diagnostics.append(&mut e),
            }
        }
        let istio = (!istio_policies.is_empty()).then(|| {
            Arc::new(crate::istio::IstioPolicies {
                policies: istio_policies,
                options: options.istio.clone(),
            })
        });
        if diagnostics.is_empty() {
            // Calls the source text hides (inside template strings), found in the syntax tree.
            for d in crate::typecheck::find_calls(engine.get_modules(), FORBIDDEN_BUILTINS) {
                diagnostics.push(
                    Diagnostic::at(
                        d.file,
                        d.line,
                        d.col,
                        format!(
                            "`{}` is not allowed: arbiter never does network I/O while deciding",
                            d.message
                        ),
                    )
                    .with_code("rego_compile_error"),
                );
            }
        }
        // OPA's compiler stages: declared variables (`rewriteLocalVars`), then safety, then
        // types.
        if diagnostics.is_empty() {
            diagnostics.extend(crate::typecheck::unused_declarations(engine.get_modules()));
        }
        if diagnostics.is_empty() {
            diagnostics.extend(crate::typecheck::unsafe_rule_vars(engine.get_modules()));
        }
        if diagnostics.is_empty() {
            diagnostics.extend(crate::typecheck::check_modules(engine.get_modules()));
        }
        if diagnostics.is_empty() {
            rules = rule_paths(&mut engine);
            diagnostics.extend(rule_data_conflicts(&rules, sources, &data_value));
        }
        if !diagnostics.is_empty() {
            return Err(LoadError { diagnostics });
        }
        // Prepare (analyse, schedule, hoist) now: compile errors surface at load time, and
        // clones start warm.
        if let Err(e) = engine.eval_query("true".to_string(), false) {
            let fallback = modules.first().map_or("policy", String::as_str);
            let d = Diagnostic::from_regorus(&e, fallback);
            let code = compile_error_code(&d.message);
            return Err(LoadError::one(d.with_code(code)));
        }
        let revision = revision_of(sources, options.include_tests);
        let rego_input_reads = Arc::new(crate::input::needs::RegoReads::of(engine.get_modules()));
        Ok(PolicySet {
            prototype: engine,
            modules,
            cel,
            istio,
            warnings,
            revision,
            bundles: Arc::new(sources.bundles.clone()),
            options: options.clone(),
            rule_paths: Arc::new(rules),
            base_revision: None,
            rego_input_reads,
        })
    }

    /// The files compiled into this set, in load order.
    pub fn modules(&self) -> &[String] {
        &self.modules
    }

    /// The Istio authorization policies, when any are loaded.
    pub fn istio(&self) -> Option<&Arc<crate::istio::IstioPolicies>> {
        self.istio.as_ref()
    }

    /// Advice found while loading (Istio's best-practice warnings, `default allow := true` in
    /// Rego, CEL deny rules on exact paths): not errors; `arbiter check --strict` fails on them.
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// What the Rego modules can read of `input`: the parts of the input document a check
    /// builds for them ([`crate::input::needs`]).
    pub fn rego_input_reads(&self) -> &Arc<crate::input::needs::RegoReads> {
        &self.rego_input_reads
    }

    /// The CEL policies, when any are loaded.
    pub fn cel(&self) -> Option<&Arc<CelPolicies>> {
        self.cel.as_ref()
    }

    /// A digest of every module and data document: the same sources give the same revision,
    /// any change gives another. Decision records carry it.
    pub fn revision(&self) -> &str {
        &self.revision
    }

    /// Every Rego module compiled into the set: its file name and its text (OPA's
    /// `/v1/policies`).
    pub fn rego_sources(&self) -> Vec<(String, String)> {
        self.prototype
            .get_policies()
            .map(|sources| {
                sources
                    .iter()
                    .map(|s| (s.get_path().clone(), s.get_contents().clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// OPA's `bundles` document: `{name: {"revision": …}}` for each bundle the set came from
    /// (decision events, the Data API's `provenance`).
    pub fn bundles_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.bundles
                .iter()
                .map(|(name, rev)| (name.clone(), serde_json::json!({ "revision": rev })))
                .collect(),
        )
    }

    /// The bundles the set was loaded from: name → manifest revision (empty for files).
    pub fn bundles(&self) -> &std::collections::BTreeMap<String, String> {
        &self.bundles
    }

    pub fn options(&self) -> &LoadOptions {
        &self.options
    }

    /// The data document (without rule values).
    pub fn data(&self) -> Value {
        self.prototype.get_data()
    }

    /// This set with `writes` applied to its data: the same compiled policies (nothing is
    /// parsed or prepared again), the new data, and a new revision, so that a decision's
    /// revision names the data it saw. Refused, with this set unchanged, when a write fails or
    /// would put data where a rule's value lies.
    ///
    /// The revision: for a delta bundle (`bundle`: its name and the delta's revision), the
    /// sources' revision with that bundle's revision replaced (and `data.system.bundles`'
    /// manifest and the decision log's `bundles` follow); for Data API writes, the sources'
    /// revision followed by `+` and a digest of every write since.
    pub fn with_writes(
        &self,
        writes: &[crate::data_write::DataWrite],
        bundle: Option<(&str, &str)>,
    ) -> Result<PolicySet, crate::data_write::WriteError> {
        use crate::data_write::{WriteError, changed_document, lookup};
        let data = crate::data_write::apply(&self.prototype.get_data(), writes)?;
        for w in writes {
            let changed = changed_document(&data, &w.path);
            for rule in self.rule_paths.iter() {
                let related = rule.path.starts_with(&changed) || changed.starts_with(&rule.path);
                if related && lookup(&data, &rule.path).is_some() {
                    return Err(WriteError::Invalid(format!(
                        "{}:{}: rego_compile_error: conflicting rule for data path {} found",
                        rule.file,
                        rule.line,
                        rule.path.join("/")
                    )));
                }
            }
        }
        let mut next = self.clone();
        next.prototype
            .replace_data(data.clone())
            .map_err(|e| WriteError::Invalid(format!("{e:#}")))?;
        next.cel = self.cel.as_ref().map(|c| Arc::new(c.with_data(&data)));
        let mut base = self
            .base_revision
            .clone()
            .unwrap_or_else(|| self.revision.clone());
        if let Some((name, revision)) = bundle {
            let old = self.bundles.get(name).cloned().unwrap_or_default();
            let mut bundles = (*self.bundles).clone();
            bundles.insert(name.to_string(), revision.to_string());
            next.bundles = Arc::new(bundles);
            // One bundle: its revision is the set's; several: `name=revision,…`.
            let listed = format!("{name}={old}");
            base = if base == old {
                revision.to_string()
            } else if base.split(',').any(|part| part == listed) {
                base.split(',')
                    .map(|part| {
                        if part == listed {
                            format!("{name}={revision}")
                        } else {
                            part.to_string()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            } else {
                format!("{base}+{}", writes_digest(&self.revision, writes))
            };
        }
        if bundle.is_some() && self.base_revision.is_none() {
            next.revision = base;
            next.base_revision = None;
        } else {
            next.revision = format!("{base}+{}", writes_digest(&self.revision, writes));
            next.base_revision = Some(base);
        }
        Ok(next)
    }

    /// This set with a delta bundle applied: `writes` (its `patch.json`) to the data of bundle
    /// `name`'s snapshot, whose manifest roots the delta's must equal (OPA's rule), and the
    /// bundle's revision — in `data.system.bundles`, the decision log's `bundles` and the set's
    /// revision — the delta's.
    pub fn with_bundle_delta(
        &self,
        name: &str,
        manifest: &crate::bundle::Manifest,
        writes: &[crate::data_write::DataWrite],
    ) -> Result<PolicySet, crate::data_write::WriteError> {
        use crate::data_write::{DataWrite, WriteError, WriteOp, lookup};
        let at = |leaf: &str| -> Vec<String> {
            ["system", "bundles", name, "manifest", leaf]
                .iter()
                .map(|s| s.to_string())
                .collect()
        };
        let data = self.data();
        let Some(active) = lookup(&data, &at("roots")) else {
            return Err(WriteError::Invalid(format!(
                "delta bundle '{name}' has no snapshot bundle activated to apply to"
            )));
        };
        let roots: Value = crate::value::from_json(&serde_json::json!(manifest.roots_or_all()));
        if *active != roots {
            return Err(WriteError::Invalid(format!(
                "delta bundle '{name}' has wasm resolvers or manifest roots that are different from those in the store"
            )));
        }
        let mut all = writes.to_vec();
        all.push(DataWrite {
            op: WriteOp::Upsert,
            path: at("revision"),
            value: Value::from(manifest.revision.as_str()),
        });
        self.with_writes(&all, Some((name, manifest.revision.as_str())))
    }

    /// This set with `overlay` (the Data API's writes, kept across reloads) replayed over its
    /// data. An entry the new set refuses (now inside a bundle's roots, where a rule's value
    /// lies, or under a value that is not an object) is dropped from the overlay, and named in
    /// the returned list; a removal of a document this set lacks is nothing to do.
    pub fn with_overlay(
        &self,
        overlay: &mut crate::data_write::DataOverlay,
    ) -> (PolicySet, Vec<String>) {
        use crate::data_write::{WriteOp, lookup, show};
        let data = self.data();
        let writes: Vec<_> = overlay
            .writes()
            .into_iter()
            .filter(|w| w.op != WriteOp::Remove || lookup(&data, &w.path).is_some())
            .collect();
        if writes.is_empty() {
            return (self.clone(), Vec::new());
        }
        let all = self
            .check_not_bundle_owned(&writes)
            .and_then(|()| self.with_writes(&writes, None));
        if let Ok(next) = all {
            return (next, Vec::new());
        }
        // Some entry is refused: find which, one at a time, and replay the others together.
        let mut kept = Vec::new();
        let mut dropped = Vec::new();
        for w in writes {
            let one = std::slice::from_ref(&w);
            match self
                .check_not_bundle_owned(one)
                .and_then(|()| self.with_writes(one, None))
            {
                Ok(_) => kept.push(w),
                Err(e) => {
                    overlay.forget(&w.path);
                    dropped.push(format!("{}: {e}", show(&w.path)));
                }
            }
        }
        match self.with_writes(&kept, None) {
            Ok(next) => (next, dropped),
            Err(e) => {
                for w in &kept {
                    overlay.forget(&w.path);
                }
                dropped.push(format!("every other write: {e}"));
                (self.clone(), dropped)
            }
        }
    }

    /// This set's bundles' claims on `data` (OPA's manifest `roots`, read from
    /// `data.system.bundles`): the Data API may not write inside them, nor to the root while
    /// any exists.
    pub fn check_not_bundle_owned(
        &self,
        writes: &[crate::data_write::DataWrite],
    ) -> Result<(), crate::data_write::WriteError> {
        use crate::data_write::WriteError;
        let data = self.prototype.get_data();
        let Some(Value::Object(bundles)) =
            crate::data_write::lookup(&data, &["system".into(), "bundles".into()])
        else {
            return Ok(());
        };
        let mut roots = Vec::new();
        for (name, b) in bundles.iter() {
            let name = name.as_string().map(|s| s.to_string()).unwrap_or_default();
            if let Value::Array(rs) = &b[&Value::from("manifest")][&Value::from("roots")] {
                for r in rs.iter() {
                    let r = r.as_string().map(|s| s.to_string()).unwrap_or_default();
                    roots.push((name.clone(), crate::bundle::root_segments(&r)));
                }
            }
        }
        // The bundles' manifests (roots, revisions) say who owns what: not writable either.
        let manifests = ["system".to_string(), "bundles".to_string()];
        for w in writes {
            if !w.path.is_empty()
                && (w.path.starts_with(&manifests) || manifests.starts_with(&w.path))
            {
                return Err(WriteError::Invalid(format!(
                    "path {} is owned by the bundle plugin (the active bundles' manifests)",
                    w.path.join("/")
                )));
            }
            if w.path.is_empty() && !roots.is_empty() {
                return Err(WriteError::Invalid(
                    "can't write to document root with bundle roots configured".into(),
                ));
            }
            if let Some((name, _)) = roots
                .iter()
                .find(|(_, r)| w.path.starts_with(r) || r.starts_with(&w.path))
            {
                return Err(WriteError::Invalid(format!(
                    "path {} is owned by bundle \"{name}\"",
                    w.path.join("/")
                )));
            }
        }
        Ok(())
    }

    /// A fresh engine with everything loaded, for callers that drive regorus directly (the test
    /// runner). Cheap: the prototype is shared.
    pub fn engine(&self) -> regorus::Engine {
        self.prototype.clone()
    }

    /// Evaluate the value at `reference` for `input`. `Value::Undefined` means no value.
    pub fn evaluate(&self, reference: &DataRef, input: Value) -> Result<Value, EvalError> {
        let mut engine = self.prototype.clone();
        engine.set_input(input);
        if !reference.is_root() {
            match engine.eval_rule(reference.as_rego().to_string()) {
                Ok(v) => return Ok(v),
                Err(e) if rego::is_not_a_rule(&e) => {}
                Err(e) => return Err(EvalError::from_regorus(&e)),
            }
        }
        // Not a rule: a data document, a package, or the root. A query reads it; the text is
        // built from escaped segments (see `DataRef`), never from user-supplied query text.
        first_value(
            engine
                .eval_query(reference.as_rego().to_string(), false)
                .map_err(|e| EvalError::from_regorus(&e))?,
        )
    }

    /// Decide: evaluate `reference` and turn the result into a [`Decision`], failing closed.
    pub fn decide(&self, reference: &DataRef, input: Value) -> Decision {
        match self.evaluate(reference, input) {
            Ok(v) => Decision::from_result(&v),
            Err(e) => Decision::deny(e.deny_reason()),
        }
    }

    /// Evaluate an ad-hoc query (`arbiter eval`). The query text comes from the operator, not
    /// from a request.
    pub fn query(
        &self,
        query: &str,
        input: Option<Value>,
    ) -> Result<regorus::QueryResults, EvalError> {
        self.query_with(query, input, &QueryOptions::default()).0
    }

    /// [`PolicySet::query`] as `opa eval`'s options shape it: in a package, and with the Rego
    /// lines the evaluation covered.
    pub fn query_with(
        &self,
        query: &str,
        input: Option<Value>,
        options: &QueryOptions<'_>,
    ) -> (
        Result<regorus::QueryResults, EvalError>,
        Option<crate::testing::CoverageReport>,
    ) {
        let mut engine = self.prototype.clone();
        let v1 = self.options.rego_version == RegoVersion::V1;
        if let Err(e) = crate::typecheck::check_query_text(&mut engine, query, options.package, v1)
        {
            return (Err(e), None);
        }
        engine.set_query_package(options.package.map(str::to_string));
        engine.set_enable_coverage(options.coverage);
        if let Some(input) = input {
            engine.set_input(input);
        }
        let result = engine
            .eval_query(query.to_string(), false)
            .map_err(|e| EvalError::from_regorus(&e));
        let coverage = options.coverage.then(|| {
            let mut acc = crate::testing::coverage::CoverageAccumulator::default();
            if let Ok(report) = engine.get_coverage_report() {
                acc.add(&report);
            }
            acc.finish()
        });
        (result, coverage)
    }

    /// Whether Rego defines something at `reference`: a rule (whatever it evaluates to), a
    /// package or a data document.
    pub fn defines(&self, reference: &DataRef) -> bool {
        let mut engine = self.prototype.clone();
        match engine.eval_rule(reference.as_rego().to_string()) {
            Ok(_) => true,
            Err(e) if rego::is_not_a_rule(&e) => !matches!(
                self.evaluate(reference, Value::new_object()),
                Ok(Value::Undefined)
            ),
            // An evaluation error with an empty input: the rule exists.
            Err(_) => true,
        }
    }

    /// Check that a server can decide at `reference` (Rego defines it, or CEL policies are
    /// loaded), so it can warn instead of silently denying every request.
    pub fn check_entrypoint(&self, reference: &DataRef) -> Result<(), DenyReason> {
        if self.defines(reference) || self.cel.is_some() || self.istio.is_some() {
            Ok(())
        } else {
            Err(DenyReason::NoPolicy(format!(
                "no Rego rule or document at `{reference}`, no CEL and no Istio policies"
            )))
        }
    }
}

/// Rules whose path is also a data document (`package abac` with rule `hours`, and
/// `abac/data.json` with key `hours`). OPA refuses these; regorus reports them only while
/// evaluating, as "recursion detected".
/// Where a rule puts its value in `data`, and where the rule is written.
#[derive(Debug, Clone)]
struct RulePath {
    path: Vec<String>,
    file: String,
    line: u32,
    col: u32,
}

/// Each rule's path in `data` (once per path), from the compiled modules.
fn rule_paths(engine: &mut regorus::Engine) -> Vec<RulePath> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for module in engine.get_modules().iter() {
        let package = module.package.refr.span().text();
        for rule in &module.policy {
            let (span, refr) = (rule.span(), crate::typecheck::rule_head_ref(rule));
            let text = refr.span().text();
            let ground = text.split('[').next().unwrap_or(text).trim();
            let path: Vec<String> = package
                .split('.')
                .chain(ground.split('.'))
                .map(str::to_string)
                .collect();
            if !seen.insert(path.clone()) {
                continue;
            }
            out.push(RulePath {
                path,
                file: span.source.file().to_string(),
                line: span.line,
                col: span.col,
            });
        }
    }
    out
}

fn rule_data_conflicts(
    rules: &[RulePath],
    sources: &PolicySources,
    data: &Value,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for rule in rules {
        if crate::data_write::lookup(data, &rule.path).is_some() {
            let owner = sources
                .data
                .iter()
                .find(|d| rule.path.starts_with(&d.prefix))
                .map_or_else(|| "a data document".to_string(), |d| d.file.clone());
            out.push(
                Diagnostic::at(
                    rule.file.as_str(),
                    rule.line,
                    rule.col,
                    format!(
                        "rule `data.{}` conflicts with the data document at the same path (from {owner})",
                        rule.path.join(".")
                    ),
                )
                .with_code("rego_compile_error"),
            );
        }
    }
    out
}

/// Built-ins that would do I/O on the decision path; a policy that calls (or mocks) one does
/// not load.
const FORBIDDEN_BUILTINS: &[&str] = &["http.send", "net.lookup_ip_addr", "opa.runtime"];

/// `default allow := true` (or `=`): every request that no rule decides is allowed, the
/// opposite of zero trust's deny by default (reliability.md §3 H9). A warning, not an error:
/// a deliberately open policy is valid Rego.
fn risky_defaults(file: &str, text: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split('#').next().unwrap_or("");
        let Some(rest) = code.trim_start().strip_prefix("default") else {
            continue;
        };
        if !rest.starts_with(char::is_whitespace) {
            continue;
        }
        let Some((name, value)) = rest.split_once(":=").or_else(|| rest.split_once('=')) else {
            continue;
        };
        if name.trim() == "allow" && value.trim() == "true" {
            let col = code.len() - code.trim_start().len() + 1;
            out.push(
                Diagnostic::at(
                    file,
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    u32::try_from(col).unwrap_or(u32::MAX),
                    "`default allow := true` allows every request that no rule decides; deny by \
                     default (`default allow := false`) and write the rules that allow",
                )
                .with_code("rego_policy_warning"),
            );
        }
    }
    out
}

/// Calls of [`FORBIDDEN_BUILTINS`] in a Rego source, outside comments and strings.
/// Rules that compare the raw request target (`input.attributes.request.http.path`, query
/// included and not decoded) with `startswith`, `==`, `regex.match` or `glob.match`: the
/// canonical path is `input.parsed_path` (issue 16, finding 5). A warning: strict mode refuses
/// second spellings, but lenient mode and OPA do not.
fn raw_path_comparisons(file: &str, text: &str) -> Vec<Diagnostic> {
    const RAW: &str = "input.attributes.request.http.path";
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let code = line.split('#').next().unwrap_or("");
        let Some(col) = code.find(RAW) else {
            continue;
        };
        let rest = &code[col + RAW.len()..];
        let before = &code[..col];
        let compared = rest.trim_start().starts_with("==")
            || before.trim_end().ends_with("==")
            || ["startswith(", "regex.match(", "glob.match(", "endswith("]
                .iter()
                .any(|f| before.contains(f));
        // `input.attributes.request.http.path[...]` and other uses are not comparisons.
        if compared && !rest.starts_with('[') {
            out.push(
                Diagnostic::at(
                    file,
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    u32::try_from(col + 1).unwrap_or(u32::MAX),
                    "compares the raw request target (query included, not decoded); compare the canonical path, `input.parsed_path`, so that another spelling of the path cannot pass",
                )
                .with_code("rego_policy_warning"),
            );
        }
    }
    out
}

fn forbidden_calls(file: &str, text: &str) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // Blank out strings and the comment, keeping columns.
        let mut code = String::with_capacity(line.len());
        let mut quote: Option<char> = None;
        let mut escaped = false;
        for c in line.chars() {
            match quote {
                Some(q) => {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' && q == '"' {
                        escaped = true;
                    } else if c == q {
                        quote = None;
                    }
                    code.push(' ');
                }
                None => {
                    if c == '#' {
                        break;
                    }
                    if c == '"' || c == '`' {
                        quote = Some(c);
                    }
                    code.push(c);
                }
            }
        }
        for name in FORBIDDEN_BUILTINS {
            let mut from = 0;
            while let Some(pos) = code[from..].find(name).map(|p| p + from) {
                from = pos + name.len();
                let before_ok = code[..pos]
                    .chars()
                    .last()
                    .is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == '.'));
                let after = code[pos + name.len()..].trim_start();
                let called = after.starts_with('(');
                let mocked = code[..pos].trim_end().ends_with("with");
                if before_ok && (called || mocked) {
                    out.push(
                        Diagnostic::at(
                            file,
                            u32::try_from(i + 1).unwrap_or(u32::MAX),
                            u32::try_from(code[..pos].chars().count() + 1).unwrap_or(u32::MAX),
                            format!(
                                "`{name}` is not allowed: arbiter never does network I/O while deciding"
                            ),
                        )
                        .with_code("rego_compile_error"),
                    );
                }
            }
        }
    }
    out
}

/// Deep-merge `over` into `base`: objects merge key by key, anything else replaces.
pub fn merge_over(base: &mut serde_json::Value, over: &serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge_over(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// [`merge_over`] on Rego values: objects merge key by key, anything else is replaced.
fn merge_value_over(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            let b = regorus::Rc::make_mut(b);
            let o = regorus::Rc::try_unwrap(o).unwrap_or_else(|o| (*o).clone());
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(slot) => merge_value_over(slot, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The value of a one-expression query: `Undefined` when it had no result.
fn first_value(results: regorus::QueryResults) -> Result<Value, EvalError> {
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map_or(Value::Undefined, |e| e.value))
}

/// OPA's code for a compile-stage error, from its message.
fn compile_error_code(message: &str) -> &'static str {
    let m = message.to_ascii_lowercase();
    if m.contains("unsafe") {
        "rego_unsafe_var_error"
    } else if m.contains("recursion") {
        "rego_recursion_error"
    } else if m.contains("type") {
        "rego_type_error"
    } else {
        "rego_compile_error"
    }
}

/// A digest of `writes` made to the set at `revision` (hex, 16 digits): the suffix of the
/// revision they make.
fn writes_digest(revision: &str, writes: &[crate::data_write::DataWrite]) -> String {
    use aws_lc_rs::digest::{Context, SHA256};
    let mut ctx = Context::new(&SHA256);
    ctx.update(revision.as_bytes());
    for w in writes {
        ctx.update(b"\0");
        ctx.update(w.op.name().as_bytes());
        for seg in &w.path {
            ctx.update(b"/");
            ctx.update(seg.as_bytes());
        }
        ctx.update(b"\0");
        ctx.update(crate::value::to_json(&w.value).to_string().as_bytes());
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn revision_of(sources: &PolicySources, include_tests: bool) -> String {
    use aws_lc_rs::digest::{Context, SHA256};
    if let Some(r) = &sources.revision {
        return r.clone();
    }
    let mut ctx = Context::new(&SHA256);
    let tests = include_tests
        .then_some(&sources.rego_tests)
        .into_iter()
        .flatten();
    for f in sources.rego.iter().chain(tests) {
        ctx.update(b"rego\0");
        ctx.update(f.name.as_bytes());
        ctx.update(b"\0");
        ctx.update(f.text.as_bytes());
        ctx.update(b"\0");
    }
    for f in &sources.istio {
        ctx.update(b"istio\0");
        ctx.update(f.name.as_bytes());
        ctx.update(b"\0");
        ctx.update(f.text.as_bytes());
        ctx.update(b"\0");
    }
    for f in &sources.cel {
        ctx.update(b"cel\0");
        ctx.update(f.name.as_bytes());
        ctx.update(b"\0");
        ctx.update(f.text.as_bytes());
        ctx.update(b"\0");
    }
    for d in &sources.data {
        ctx.update(b"data\0");
        ctx.update(d.prefix.join("/").as_bytes());
        ctx.update(b"\0");
        ctx.update(&d.digest);
        ctx.update(b"\0");
    }
    let digest = ctx.finish();
    hex::encode(&digest.as_ref()[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(rego: &str, data: serde_json::Value) -> PolicySet {
        let mut s = PolicySources::default();
        s.add_rego("p.rego", rego);
        s.add_data("data.json", data);
        PolicySet::from_sources(&s, &LoadOptions::default()).unwrap()
    }

    #[test]
    fn evaluates_rules_documents_and_packages() {
        let p = set(
            "package envoy.authz\nallow if input.user == \"alice\"\nx := 1\n",
            serde_json::json!({"roles": {"alice": ["admin"]}}),
        );
        let allow = DataRef::parse("envoy/authz/allow").unwrap();
        let input = from_json(&serde_json::json!({"user": "alice"}));
        assert_eq!(
            p.evaluate(&allow, input.clone()).unwrap(),
            Value::Bool(true)
        );
        assert_eq!(
            p.evaluate(&allow, Value::new_object()).unwrap(),
            Value::Undefined
        );
        let roles = DataRef::parse("roles/alice").unwrap();
        assert_eq!(
            crate::value::to_json(&p.evaluate(&roles, Value::new_object()).unwrap()),
            serde_json::json!(["admin"])
        );
        let pkg = DataRef::parse("envoy/authz").unwrap();
        let v = p.evaluate(&pkg, input).unwrap();
        assert_eq!(v["x"], Value::from(1));
    }

    #[test]
    fn decide_fails_closed() {
        let p = set(
            "package t\nallow := 1 / input.zero\nconflict := input.a\nconflict := input.b\n",
            serde_json::json!({}),
        );
        let d = p.decide(
            &DataRef::parse("t/allow").unwrap(),
            from_json(&serde_json::json!({"zero": 0})),
        );
        assert!(!d.allowed);
        assert!(d.reason.as_ref().unwrap().is_error(), "{:?}", d.reason);
        let d = p.decide(
            &DataRef::parse("t/conflict").unwrap(),
            from_json(&serde_json::json!({"a": 1, "b": 2})),
        );
        assert!(!d.allowed);
        assert_eq!(d.reason_code(), "eval_conflict", "{:?}", d.reason);
        let d = p.decide(&DataRef::parse("t/missing").unwrap(), Value::new_object());
        assert_eq!(d.reason_code(), "undefined_decision");
    }

    #[test]
    fn default_allow_true_is_a_warning_with_its_line() {
        let mut s = PolicySources::default();
        s.add_rego(
            "open.rego",
            "package envoy.authz\n\n# default allow := true (a comment)\n  default allow := true\ndefault deny = true\n",
        );
        s.add_rego("closed.rego", "package other\n\ndefault allow := false\n");
        let set = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap();
        let w = set.warnings();
        assert_eq!(w.len(), 1, "{w:?}");
        assert_eq!(
            (w[0].file.as_str(), w[0].line, w[0].col),
            ("open.rego", 4, 3)
        );
        assert!(
            w[0].message.contains("default allow := false"),
            "{}",
            w[0].message
        );
        // `=` is the same rule.
        let mut s = PolicySources::default();
        s.add_rego("old.rego", "package p\ndefault allow = true\n");
        assert_eq!(
            PolicySet::from_sources(&s, &LoadOptions::default())
                .unwrap()
                .warnings()
                .len(),
            1
        );
    }

    #[test]
    fn load_options_default_to_the_limits_deadline() {
        assert_eq!(
            LoadOptions::default().eval_timeout,
            Some(crate::limits::Limits::default().eval_timeout)
        );
        assert_eq!(
            LoadOptions::default().eval_timeout,
            Some(Duration::from_millis(50))
        );
    }

    /// Issue 16, finding 5: comparing the raw target instead of `parsed_path` is a warning
    /// with its place; reading it otherwise is not.
    #[test]
    fn raw_path_comparisons_are_warnings() {
        let text = "package envoy.authz\n\ndefault allow := false\n\nallow if not startswith(input.attributes.request.http.path, \"/internal\")\nallow if input.attributes.request.http.path == \"/health\" # probes\nlog := input.attributes.request.http.path\n";
        let w = raw_path_comparisons("p.rego", text);
        let places: Vec<(u32, u32)> = w.iter().map(|d| (d.line, d.col)).collect();
        // Counted by hand: `allow if not startswith(` is 24 characters; `allow if ` is 9.
        assert_eq!(places, vec![(5, 25), (6, 10)], "{w:?}");
        assert!(w[0].message.contains("input.parsed_path"));
        let mut s = PolicySources::default();
        s.add_rego("p.rego", text);
        let set = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap();
        assert_eq!(set.warnings().len(), 2, "{:?}", set.warnings());
    }

    #[test]
    fn forbidden_calls_inside_template_strings_are_refused() {
        let mut s = PolicySources::default();
        s.add_rego(
            "t.rego",
            "package t\n\nmsg := $\"runtime: {opa.runtime()}\"\n",
        );
        let e = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e:?}");
        let d = &e.diagnostics[0];
        assert_eq!(
            (d.line, d.col, d.code),
            (3, 20, "rego_compile_error"),
            "{d}"
        );
        assert!(d.message.contains("opa.runtime"), "{d}");
    }

    #[test]
    fn errors_inside_template_strings_name_their_line_and_column() {
        let mut s = PolicySources::default();
        s.add_rego(
            "t.rego",
            "package t\n\nq := $`two\n{input.a} lines`\nr := $\"{  1 +  }\"\n",
        );
        let e = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap_err();
        let d = &e.diagnostics[0];
        // Counted by hand: the `}` after `1 +` on line 5.
        assert_eq!((d.file.as_str(), d.line, d.col), ("t.rego", 5, 16), "{d}");
        assert_eq!(d.message, "expecting expression", "{d}");
    }

    #[test]
    fn keywords_head_references_as_in_opa_1() {
        // OPA's suite, keywordrefs: a keyword followed at once by `.name` is a reference.
        let mut s = PolicySources::default();
        s.add_rego(
            "k.rego",
            "package k\n\nif.foo := 1\n\ntrue.bar contains \"a\"\n\ndefault not.f(_) := 2\n\n\
             p if {\n  if.foo == 1\n  true.bar == {\"a\"}\n  not.f(0) == 2\n  not false\n}\n",
        );
        let set = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap();
        let r = set.query("data.k.p", None).unwrap();
        assert_eq!(
            r.result[0].expressions[0].value,
            Value::from(true),
            "{:?}",
            r.result
        );
    }

    #[test]
    fn parse_errors_name_file_line_and_column() {
        let mut s = PolicySources::default();
        s.add_rego("broken.rego", "package x\n\nallow if {\n  input.a ==\n}\n");
        let err = PolicySet::from_sources(&s, &LoadOptions::default()).unwrap_err();
        assert_eq!(err.diagnostics.len(), 1, "{err}");
        let d = &err.diagnostics[0];
        // Counted by hand: `==` on line 4 has no right operand; the first token that cannot
        // start one is the `}` at line 5, column 1.
        assert_eq!(
            (d.file.as_str(), d.line, d.col, d.message.as_str(), d.code),
            (
                "broken.rego",
                5,
                1,
                "expecting expression",
                "rego_parse_error"
            ),
            "{d}"
        );
    }

    #[test]
    fn a_rule_and_a_data_document_at_one_path_is_a_load_error() {
        let mut sources = PolicySources::default();
        sources.add_rego(
            "abac.rego",
            "package abac\n\nhours if { data.abac.hours.start < 9 }\nok := 1\n",
        );
        sources.data.push(crate::loader::DataDocument::from_json(
            "abac/data.json",
            vec!["abac".into()],
            &serde_json::json!({"hours": {"start": 8}, "other": 1}),
        ));
        let e = PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1, "{e:?}");
        let d = &e.diagnostics[0];
        assert_eq!((d.file.as_str(), d.line, d.col), ("abac.rego", 3, 1));
        assert!(d.message.contains("`data.abac.hours`"), "{d}");
        assert!(d.message.contains("abac/data.json"), "{d}");
    }

    #[test]
    fn network_builtins_do_not_load() {
        let mut sources = PolicySources::default();
        sources.add_rego(
            "p.rego",
            "package p\n# http.send(x) in a comment is fine\ns := \"http.send(\"\nx := http.send({\"url\": \"u\"})\ny := 1 if { true with net.lookup_ip_addr as \"1.2.3.4\" }\n",
        );
        let e = PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap_err();
        let at: Vec<(u32, u32)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(at, vec![(4, 6), (5, 23)], "{e:?}");
        assert!(
            e.diagnostics[0]
                .message
                .contains("`http.send` is not allowed")
        );
    }

    #[test]
    fn v0_needs_the_flag() {
        let mut s = PolicySources::default();
        s.add_rego("old.rego", "package old\nallow { input.a == 1 }\n");
        assert!(PolicySet::from_sources(&s, &LoadOptions::default()).is_err());
        let opts = LoadOptions {
            rego_version: RegoVersion::V0Compatible,
            ..LoadOptions::default()
        };
        let p = PolicySet::from_sources(&s, &opts).unwrap();
        let v = p
            .evaluate(
                &DataRef::parse("old/allow").unwrap(),
                from_json(&serde_json::json!({"a": 1})),
            )
            .unwrap();
        assert_eq!(v, Value::Bool(true));
    }

    #[test]
    fn time_limit_denies() {
        let mut s = PolicySources::default();
        s.add_rego(
            "slow.rego",
            "package slow\nallow if { some x in numbers.range(1, 100000); some y in numbers.range(1, 100000); x + y < 0 }\n",
        );
        let opts = LoadOptions {
            eval_timeout: Some(Duration::from_millis(20)),
            ..LoadOptions::default()
        };
        let p = PolicySet::from_sources(&s, &opts).unwrap();
        let d = p.decide(&DataRef::parse("slow/allow").unwrap(), Value::new_object());
        assert!(!d.allowed);
        assert_eq!(d.reason_code(), "limit_exceeded:time", "{:?}", d.reason);
        // On the VM too (its clock is read every 512 instructions): stopped, not run to its
        // end (10^10 iterations).
        let a = crate::authorizer::Authorizer::new(
            Arc::new(p),
            DataRef::parse("slow/allow").unwrap(),
            crate::input::InputOptions::default(),
        );
        assert!(a.rego_engine().is_ok(), "runs on the VM");
        let start = std::time::Instant::now();
        let d = a.check(&crate::request::AuthzRequest::default()).decision;
        assert_eq!(d.reason_code(), "limit_exceeded:time", "{:?}", d.reason);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    /// A runaway CEL rule, a comprehension over a list of 1,000,000 elements from `data`, is
    /// stopped by the cost limit whatever the machine's speed (the deadline here is 10 s and
    /// is not what stops it): `limit_exceeded:cel_cost`. Without a cost limit, the deadline
    /// stops it (`limit_exceeded:time`). A rule over a short list decides as usual; one that
    /// runs away on every request (nothing in the request cuts it short) is refused at load.
    #[test]
    fn a_runaway_cel_rule_is_stopped_by_its_cost_limit() {
        use crate::authorizer::Authorizer;
        use crate::request::{AuthzRequest, HttpRequest};
        let policy = |runaway: &str| {
            let mut sources = PolicySources::default();
            sources.cel.push(crate::loader::SourceFile {
                name: "big.cel.yaml".into(),
                text: format!("name: big\nrules:\n  - name: small\n    effect: allow\n    when: request.method == \"GET\" && data.small.exists(x, x == 3)\n  - name: runaway\n    effect: allow\n    when: {runaway}\n"),
            });
            sources.add_data(
                "data.json",
                serde_json::json!({"big": (0..1_000_000).collect::<Vec<i64>>(), "small": [1, 2, 3]}),
            );
            sources
        };
        let sources = policy("request.method == \"POST\" && data.big.exists(x, x == -1)");
        let decide = |options: &LoadOptions, method: &str| {
            let set = Arc::new(PolicySet::from_sources(&sources, options).unwrap());
            let path = DataRef::parse("envoy/authz/allow").unwrap();
            let authorizer = Authorizer::new(set, path, crate::input::InputOptions::default());
            let req = AuthzRequest {
                http: Some(HttpRequest {
                    method: method.into(),
                    path: "/".into(),
                    ..HttpRequest::default()
                }),
                ..AuthzRequest::default()
            };
            let started = std::time::Instant::now();
            (authorizer.check(&req).decision, started.elapsed())
        };
        let generous = LoadOptions {
            eval_timeout: Some(Duration::from_secs(10)),
            ..LoadOptions::default()
        };
        let (d, took) = decide(&generous, "POST");
        assert!(!d.allowed);
        assert_eq!(d.reason_code(), "limit_exceeded:cel_cost", "{:?}", d.reason);
        assert!(took < Duration::from_secs(10), "{took:?}");
        let (d, _) = decide(&generous, "GET");
        assert!(d.allowed, "{:?}", d.reason);
        let unbounded = LoadOptions {
            eval_timeout: Some(Duration::from_millis(20)),
            cel_cost_limit: None,
            ..LoadOptions::default()
        };
        let (d, _) = decide(&unbounded, "POST");
        assert_eq!(d.reason_code(), "limit_exceeded:time", "{:?}", d.reason);
        // Without a cost limit nothing is refused for its cost (the deadline governs).
        assert!(
            PolicySet::from_sources(&policy("data.big.exists(x, x == -1)"), &unbounded).is_ok()
        );
        let refused = PolicySet::from_sources(&policy("data.big.exists(x, x == -1)"), &generous)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("big.cel.yaml:8:11:")
                && refused.contains("cost: the expression takes more than 1000000"),
            "{refused}"
        );
    }

    #[test]
    fn revision_changes_with_sources() {
        let a = set("package a\nx := 1\n", serde_json::json!({}));
        let b = set("package a\nx := 2\n", serde_json::json!({}));
        let a2 = set("package a\nx := 1\n", serde_json::json!({}));
        assert_ne!(a.revision(), b.revision());
        assert_eq!(a.revision(), a2.revision());
    }

    #[test]
    fn shared_across_threads() {
        let p = std::sync::Arc::new(set(
            "package t\nallow if input.n % 2 == 0\n",
            serde_json::json!({}),
        ));
        let r = DataRef::parse("t/allow").unwrap();
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let p = p.clone();
                let r = r.clone();
                std::thread::spawn(move || {
                    for n in 0..200 {
                        let d = p.decide(&r, from_json(&serde_json::json!({"n": n + t})));
                        assert_eq!(d.allowed, (n + t) % 2 == 0);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    /// Issue 18 item 6: a data write makes a new set from the old one without compiling:
    /// Rego (on the RVM, still) and CEL decide over the new data, the old set keeps deciding
    /// over the old, and the revision names the writes.
    #[test]
    fn a_data_write_reaches_rego_on_the_vm_and_cel_and_leaves_the_old_set_alone() {
        use crate::authorizer::{Authorizer, RegoEngine};
        use crate::data_write::{DataWrite, WriteOp};
        use crate::request::{AuthzRequest, HttpRequest, Peer};
        let mut sources = PolicySources::default();
        sources.add_rego(
            "authz.rego",
            "package envoy.authz\ndefault allow := false\nallow if data.roles[input.attributes.source.principal] == \"admin\"\n",
        );
        sources.cel.push(crate::loader::SourceFile {
            name: "authz.cel.yaml".into(),
            text: "name: roles\nrules:\n  - name: admins\n    effect: allow\n    when: data.roles[source.principal] == \"admin\"\n".into(),
        });
        sources.add_data(
            "data.json",
            serde_json::json!({"roles": {"spiffe://a": "admin"}}),
        );
        let set = Arc::new(PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap());
        let path = DataRef::parse("envoy/authz/allow").unwrap();
        let old = Authorizer::new(set.clone(), path, crate::input::InputOptions::default());
        assert_eq!(old.rego_engine(), Ok(RegoEngine::Rvm));
        let from = |principal: &str| AuthzRequest {
            source: Some(Peer {
                principal: principal.into(),
                ..Peer::default()
            }),
            http: Some(HttpRequest {
                method: "GET".into(),
                path: "/".into(),
                ..HttpRequest::default()
            }),
            ..AuthzRequest::default()
        };
        let writes = [
            DataWrite {
                op: WriteOp::Upsert,
                path: vec!["roles".into(), "spiffe://b".into()],
                value: Value::from("admin"),
            },
            DataWrite {
                op: WriteOp::Remove,
                path: vec!["roles".into(), "spiffe://a".into()],
                value: Value::Null,
            },
        ];
        let next = Arc::new(set.with_writes(&writes, None).unwrap());
        let new = old.with_policies(next.clone());
        assert_eq!(
            new.rego_engine(),
            Ok(RegoEngine::Rvm),
            "the write lost the VM"
        );
        assert!(old.check(&from("spiffe://a")).decision.allowed);
        assert!(!old.check(&from("spiffe://b")).decision.allowed);
        // Both languages must allow (deny overrides): CEL saw the new data too.
        assert!(new.check(&from("spiffe://b")).decision.allowed);
        let denied = new.check(&from("spiffe://a")).decision;
        assert!(!denied.allowed, "{denied:?}");
        // The revision: the source revision, `+`, a digest of the writes; chained.
        let base = set.revision().to_string();
        assert!(
            next.revision().starts_with(&format!("{base}+")),
            "{}",
            next.revision()
        );
        let again = next.with_writes(&writes[..1], None).unwrap();
        assert!(again.revision().starts_with(&format!("{base}+")));
        assert_ne!(again.revision(), next.revision());
        // A write where a rule's value lies is refused, naming the rule.
        let err = set
            .with_writes(
                &[DataWrite {
                    op: WriteOp::Upsert,
                    path: vec!["envoy".into(), "authz".into(), "allow".into()],
                    value: Value::Bool(true),
                }],
                None,
            )
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "authz.rego:2: rego_compile_error: conflicting rule for data path envoy/authz/allow found"
        );
    }
}

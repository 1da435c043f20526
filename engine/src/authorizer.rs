//! The decision path: a request in, a [`Decision`] out, never an error and never a panic.
//!
//! An [`Authorizer`] is a compiled policy set plus the decision path and input options. It is
//! immutable and shared: a policy reload builds a new one and swaps it in whole, so every
//! decision is attributable to exactly one revision.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use regorus::Value;

use crate::cel::{CelRequest, CelVerdict};
use crate::data_ref::DataRef;
use crate::decision::{DecidedBy, Decision, DenyReason};
use crate::identity::{self, IdentityOptions, IdentityOutcome};
use crate::input::{Attributes, InputOptions, Needs, Reading, read_request};
use crate::policy_set::PolicySet;
use crate::record::{RecordInput, RequestInput};
use crate::request::AuthzRequest;
use crate::rvm::RvmDecider;

/// How long each step of a decision took, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timings {
    /// Building the input document (path canonicalization and body parsing included).
    pub input_ns: u64,
    /// Evaluating the policy.
    pub eval_ns: u64,
}

/// The result of one check, with what a decision record needs.
#[derive(Debug, Clone)]
pub struct CheckOutcome {
    pub decision: Decision,
    /// The input document the policy saw, whole, when the caller asked to keep it: as a value
    /// ([`Authorizer::check`]), or as the request it is written from
    /// ([`Authorizer::check_for_record`]). `None` when the request was refused before.
    pub input: Option<RecordInput>,
    pub timings: Timings,
    /// Who the caller is, or why that is not known.
    pub identity: IdentityOutcome,
}

/// A policy set, the decision path and how inputs are built.
///
/// When the policy set has both a Rego decision at the path and CEL policies, a request is
/// allowed only if both allow (deny overrides); with only one of them, that one decides; with
/// neither, every request is denied (`no_policy`).
#[derive(Debug, Clone)]
pub struct Authorizer {
    policies: Arc<PolicySet>,
    path: DataRef,
    input_options: InputOptions,
    identity_options: IdentityOptions,
    /// Whether Rego defines the decision path (computed once).
    rego_decides: bool,
    /// What the policies read of the input document (`None`: nothing): the parts Rego's
    /// references name when Rego decides, all of it for CEL's `input`.
    reads_document: Option<Arc<Needs>>,
    /// Whether a policy reads the identity document without the input document: CEL's
    /// `identity`, Istio's principals.
    reads_identity: bool,
    /// The decision path compiled for the RVM, when it compiles (see [`crate::rvm`]).
    rvm: Option<Arc<RvmDecider>>,
    /// Why the RVM is not used, when it is not.
    rvm_unavailable: Option<String>,
    /// Whether the RVM may be used at all (not when the interpreter was chosen).
    use_rvm: bool,
    /// Other paths the Data API asked for, compiled for the RVM on first use (`None`: the VM
    /// cannot run that path). Shared by clones; at most [`DATA_API_PROGRAMS`] paths.
    data_api_programs: Arc<RwLock<HashMap<DataRef, Option<Arc<RvmDecider>>>>>,
}

/// What a policy reads of the input document (Rego deciding: what its references name; CEL's
/// `input`: all of it), and whether one reads the identity document (CEL's `identity`,
/// Istio's principals, which are the identity's).
fn reads_documents(
    policies: &PolicySet,
    path: &DataRef,
    rego_decides: bool,
) -> (Option<Arc<Needs>>, bool) {
    let cel = policies.cel().map(|c| c.uses()).unwrap_or_default();
    let document = if cel.input {
        Some(Arc::new(Needs::Whole))
    } else {
        rego_decides.then(|| Arc::new(policies.rego_input_reads().at(path.segments())))
    };
    (document, policies.istio().is_some() || cel.identity)
}

/// Run `input` on the VM: `None` when the interpreter must answer instead, which is when a run
/// fails for another reason than a limit: the interpreter re-evaluates it, so errors and their
/// messages are always the interpreter's; a limit is not retried. A frozen clock
/// ([`crate::clock::freeze`]) holds for both.
fn on_vm(vm: &RvmDecider, input: &Value) -> Option<Result<Value, crate::rego::EvalError>> {
    match vm.evaluate(input.clone()) {
        Ok(v) => Some(Ok(v)),
        Err(e)
            if e.chain()
                .any(|c| c.downcast_ref::<regorus::LimitError>().is_some()) =>
        {
            Some(Err(crate::rego::EvalError::from_regorus(&e)))
        }
        Err(_) => None,
    }
}

/// How many Data API paths keep a compiled program (a client asking for arbitrary paths does
/// not grow memory without bound; paths past this run on the interpreter).
const DATA_API_PROGRAMS: usize = 64;

/// Which Rego evaluator decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RegoEngine {
    /// The bytecode VM, falling back to the interpreter for what it cannot run.
    #[default]
    Rvm,
    /// The tree-walking interpreter only.
    Interpreter,
}

/// A CEL verdict as a decision.
fn cel_decision(mut v: CelVerdict) -> Decision {
    let ruled = v.rule.is_some();
    // The verdict's names moved into the decision, not copied.
    let decided_by = match (v.file.take(), v.rule.take()) {
        (Some(policy), rule) => vec![DecidedBy { policy, rule }],
        _ => Vec::new(),
    };
    if v.timed_out {
        return Decision::deny(DenyReason::LimitExceeded("time", v.errors.join("; ")));
    }
    if v.over_budget {
        return Decision::deny(DenyReason::LimitExceeded("cel_cost", v.errors.join("; ")));
    }
    let mut d = if v.allowed {
        let mut d = Decision::allow();
        d.headers = v.headers;
        d
    } else if ruled && v.errored {
        Decision::deny(DenyReason::EvalError(v.errors.join("; ")))
    } else {
        let mut d = Decision::deny(DenyReason::PolicyDenied);
        if let Some(s) = v.status {
            d.http_status = s;
        }
        d.headers = v.headers;
        d.body = v.body;
        d
    };
    d.decided_by = decided_by;
    d
}

fn elapsed_ns(since: Instant) -> u64 {
    ns_between(since, Instant::now())
}

fn ns_between(start: Instant, end: Instant) -> u64 {
    u64::try_from(end.saturating_duration_since(start).as_nanos()).unwrap_or(u64::MAX)
}

impl Authorizer {
    pub fn new(policies: Arc<PolicySet>, path: DataRef, input_options: InputOptions) -> Self {
        let rego_decides = policies.defines(&path);
        let (reads_document, reads_identity) = reads_documents(&policies, &path, rego_decides);
        let (rvm, rvm_unavailable) = if rego_decides {
            match RvmDecider::compile(&policies, &path) {
                Ok(d) => (Some(Arc::new(d)), None),
                Err(why) => (None, Some(why)),
            }
        } else {
            (None, Some("Rego does not define the decision path".into()))
        };
        Self {
            policies,
            path,
            input_options,
            identity_options: IdentityOptions::default(),
            rego_decides,
            reads_document,
            reads_identity,
            rvm,
            rvm_unavailable,
            use_rvm: true,
            data_api_programs: Arc::default(),
        }
    }

    /// This authorizer over `policies`, a data write's successor of its own set (the same
    /// compiled policies, other data, see [`PolicySet::with_writes`]): the RVM programs are
    /// kept and given the new data, nothing is compiled again.
    pub fn with_policies(&self, policies: Arc<PolicySet>) -> Self {
        let data = policies.data();
        let rvm = self
            .rvm
            .as_ref()
            .and_then(|d| d.with_data(data.clone()).ok().map(Arc::new));
        let rvm_unavailable = match (&self.rvm, &rvm) {
            (Some(_), None) => Some("the RVM refused the new data".to_string()),
            _ => self.rvm_unavailable.clone(),
        };
        let programs: HashMap<DataRef, Option<Arc<RvmDecider>>> = self
            .data_api_programs
            .read()
            .map(|known| {
                known
                    .iter()
                    .map(|(path, p)| {
                        let p = p
                            .as_ref()
                            .and_then(|d| d.with_data(data.clone()).ok().map(Arc::new));
                        (path.clone(), p)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (reads_document, reads_identity) =
            reads_documents(&policies, &self.path, self.rego_decides);
        Self {
            reads_document,
            reads_identity,
            policies,
            rvm,
            rvm_unavailable,
            data_api_programs: Arc::new(RwLock::new(programs)),
            ..self.clone()
        }
    }

    /// Choose the Rego evaluator (the RVM by default).
    pub fn with_rego_engine(mut self, engine: RegoEngine) -> Self {
        if engine == RegoEngine::Interpreter {
            self.rvm = None;
            self.rvm_unavailable = Some("the interpreter was chosen".into());
            self.use_rvm = false;
        }
        self
    }

    /// `Ok` when decisions run on the RVM; else why they run on the interpreter.
    pub fn rego_engine(&self) -> Result<RegoEngine, &str> {
        match (&self.rvm, &self.rvm_unavailable) {
            (Some(_), _) => Ok(RegoEngine::Rvm),
            (None, Some(why)) => Err(why),
            (None, None) => Ok(RegoEngine::Interpreter),
        }
    }

    /// Evaluate the decision path for an input: on the RVM when it is available, else on the
    /// interpreter. A failed RVM run is re-evaluated by the interpreter, so errors are
    /// always the interpreter's; limits are not retried.
    fn decide_rego(&self, input: &Value) -> Decision {
        match self.rvm.as_deref().and_then(|vm| on_vm(vm, input)) {
            Some(Ok(v)) => Decision::from_result(&v),
            Some(Err(e)) => Decision::deny(e.deny_reason()),
            None => self.policies.decide(&self.path, input.clone()),
        }
    }

    /// How caller identities are established (trust bundles, a trusted XFCC hop).
    pub fn with_identity_options(mut self, options: IdentityOptions) -> Self {
        self.identity_options = options;
        self
    }

    pub fn identity_options(&self) -> &IdentityOptions {
        &self.identity_options
    }

    pub fn policies(&self) -> &Arc<PolicySet> {
        &self.policies
    }

    pub fn path(&self) -> &DataRef {
        &self.path
    }

    pub fn input_options(&self) -> &InputOptions {
        &self.input_options
    }

    /// Decide one request.
    pub fn check(&self, request: &AuthzRequest) -> CheckOutcome {
        self.check_with(request, true)
    }

    /// [`Self::check`]; with `keep_input` false, a caller that does not need the input
    /// document (no decision record holds it) saves building it when no loaded policy reads it
    /// (CEL and Istio sets without Rego; CEL's `input` reads it): the outcome's `input` is
    /// then `None`. The request is read, checked and refused exactly as with it.
    pub fn check_with(&self, request: &AuthzRequest, keep_input: bool) -> CheckOutcome {
        self.check_reading(request, keep_input).0
    }

    /// [`Self::check_with`] for a decision record, which holds the whole document: the outcome's
    /// `input` is `request` itself with how it was read ([`RecordInput::Request`]), from which
    /// the record's writer writes the document, off the decision path and without building it;
    /// the decision builds only what its policies read. When they read it whole, the document
    /// built for them is the record's ([`RecordInput::Document`]), not built twice.
    pub fn check_for_record(&self, request: AuthzRequest) -> CheckOutcome {
        let (mut outcome, reading) = self.check_reading(&request, false);
        if outcome.input.is_none() {
            outcome.input = reading
                .map(|reading| RecordInput::Request(Box::new(RequestInput { request, reading })));
        }
        outcome
    }

    /// [`Self::check_with`], and the request as read (`None` when it was refused before).
    fn check_reading(
        &self,
        request: &AuthzRequest,
        keep_input: bool,
    ) -> (CheckOutcome, Option<Reading>) {
        let start = Instant::now();
        let identity =
            identity::resolve_at(request, &self.identity_options, crate::clock::now_secs);
        // The parts of the input document built: all of it for a caller that keeps it (a
        // decision record), else what the policies read.
        let needs = if keep_input {
            Some(&Needs::Whole)
        } else {
            self.reads_document.as_deref()
        };
        // The identity as a document: for `input.identity`, CEL's `identity` and Istio's
        // principals; a set that reads none of them does not build it.
        let identity_value = (needs.is_some_and(|n| n.get("identity").is_some())
            || self.reads_identity)
            .then(|| identity.to_value())
            .flatten();
        let reading = match read_request(request, &self.input_options) {
            Ok(r) => r,
            Err(reason) => {
                let outcome = CheckOutcome {
                    decision: Decision::deny(reason),
                    input: None,
                    timings: Timings {
                        input_ns: elapsed_ns(start),
                        eval_ns: 0,
                    },
                    identity,
                };
                return (outcome, None);
            }
        };
        let document = needs.map(|n| reading.document_of(request, identity_value.as_ref(), n));
        let attributes = Attributes {
            document: document.as_ref(),
            ..reading.attributes(request)
        };
        // One clock reading ends the input's time and starts the evaluation's.
        let eval_start = Instant::now();
        let input_ns = ns_between(start, eval_start);
        let decision = match catch_unwind(AssertUnwindSafe(|| {
            self.decide_request(request, attributes, identity_value.as_ref(), eval_start)
        })) {
            Ok(d) => d,
            Err(_) => Decision::deny(DenyReason::EvalError(
                "the policy engine panicked while evaluating this request".into(),
            )),
        };
        let outcome = CheckOutcome {
            decision,
            // Only the whole document is the request's input; a part of it is not kept.
            input: document
                .filter(|_| needs.is_some_and(Needs::is_whole))
                .map(RecordInput::Document),
            timings: Timings {
                input_ns,
                eval_ns: elapsed_ns(eval_start),
            },
            identity,
        };
        (outcome, Some(reading))
    }

    /// Istio first (a DENY or a missing ALLOW decides alone; an allow is one vote), then CEL and
    /// Rego ([`Self::decide_cel_and_rego`]).
    fn decide_request(
        &self,
        request: &AuthzRequest,
        input: Attributes<'_>,
        identity: Option<&Value>,
        started: Instant,
    ) -> Decision {
        // Istio's AuthorizationPolicies first: a denial there decides; an allow is one vote
        // among the languages loaded (deny overrides).
        let Some(istio) = self.policies.istio() else {
            return self.decide_cel_and_rego(request, input, identity, started);
        };
        let v = istio.evaluate(&crate::istio::Request::from_check(request, input, identity));
        let decided_by = v.decided_by.as_ref().map(|(policy, rule)| DecidedBy {
            policy: format!("istio:{policy}"),
            rule: Some(format!("rules[{rule}]")),
        });
        let dry_run = v.dry_run.as_ref().map(|s| {
            serde_json::json!({
                "allowed": s.allowed,
                "policy": s.decided_by.as_ref().map(|(p, _)| p),
                "rule": s.decided_by.as_ref().map(|(_, r)| format!("rules[{r}]")),
            })
        });
        let others = self.policies.cel().is_some() || self.rego_decides;
        // A workload no ALLOW policy selects: the other languages decide alone when loaded.
        let others_decide = v.abstained && others;
        if !v.allowed && !others_decide {
            let mut d = Decision::deny(DenyReason::PolicyDenied);
            d.decided_by.extend(decided_by);
            d.audit = v.audit;
            d.istio_dry_run = dry_run;
            if let Some(note) = v.note {
                d.body = None;
                d.result = Some(serde_json::json!({"istio": note}));
            }
            return d;
        }
        let mut d = if others {
            self.decide_cel_and_rego(request, input, identity, started)
        } else {
            Decision::allow()
        };
        if d.allowed {
            d.decided_by.extend(decided_by);
        }
        d.audit.extend(v.audit);
        d.istio_dry_run = dry_run;
        d
    }

    /// Rego and CEL together: CEL first (it is cheap, and a CEL denial makes the Rego result
    /// irrelevant), then Rego; both must allow.
    fn decide_cel_and_rego(
        &self,
        request: &AuthzRequest,
        input: Attributes<'_>,
        identity: Option<&Value>,
        started: Instant,
    ) -> Decision {
        let cel = self.policies.cel().map(|c| {
            c.evaluate_since(
                &CelRequest {
                    request,
                    path: input.path,
                    host: input.host,
                    headers: input.headers,
                    input: input.document,
                    identity,
                },
                started,
            )
        });
        let rego = || {
            // Rego deciding, the document is built (`reads_document`).
            let Some(document) = input.document else {
                return Decision::deny(DenyReason::EvalError(
                    "the input document was not built".into(),
                ));
            };
            let mut d = self.decide_rego(document);
            d.decided_by.push(DecidedBy {
                policy: self.path.as_rego().to_string(),
                rule: None,
            });
            d
        };
        match (cel, self.rego_decides) {
            (None, true) => rego(),
            (None, false) => Decision::deny(DenyReason::NoPolicy(format!(
                "no Rego rule at `{}` and no CEL policies",
                self.path
            ))),
            (Some(v), false) => cel_decision(v),
            (Some(v), true) => {
                if !v.allowed {
                    return cel_decision(v);
                }
                let cel_allow = cel_decision(v);
                let mut d = rego();
                if d.allowed {
                    d.headers.extend(cel_allow.headers);
                    d.decided_by.extend(cel_allow.decided_by);
                }
                d
            }
        }
    }

    /// Evaluate `path` for an input document (the Data API and `check`), containing any panic
    /// in the engine: a panic is a denial, not a dead worker.
    pub fn decide_value(&self, path: &DataRef, input: Value) -> Decision {
        match catch_unwind(AssertUnwindSafe(|| self.policies.decide(path, input))) {
            Ok(d) => d,
            Err(_) => Decision::deny(DenyReason::EvalError(
                "the policy engine panicked while evaluating this request".into(),
            )),
        }
    }

    /// Evaluate `path` and return the raw value (the Data API returns results that are not
    /// decisions).
    pub fn evaluate_value(
        &self,
        path: &DataRef,
        input: Value,
    ) -> Result<Value, crate::rego::EvalError> {
        // On the RVM as gRPC checks are, when it runs this path (the Data API asks for the
        // decision path and others).
        let run = || match self.program_for(path).and_then(|vm| on_vm(&vm, &input)) {
            Some(r) => r,
            None => self.policies.evaluate(path, input.clone()),
        };
        match catch_unwind(AssertUnwindSafe(run)) {
            Ok(r) => r,
            Err(_) => Err(crate::rego::EvalError {
                kind: crate::rego::EvalErrorKind::Other,
                message: "the policy engine panicked while evaluating this request".into(),
                location: None,
            }),
        }
    }

    /// The RVM program for `path`: the decision path's, or one compiled on first use for a
    /// path the policies define. `None` when the VM is off or cannot run it.
    pub fn program_for(&self, path: &DataRef) -> Option<Arc<RvmDecider>> {
        if !self.use_rvm {
            return None;
        }
        if *path == self.path {
            return self.rvm.clone();
        }
        if let Ok(known) = self.data_api_programs.read()
            && let Some(p) = known.get(path)
        {
            return p.clone();
        }
        // Data without rules is read directly by the interpreter; nothing to compile.
        if !self.policies.defines(path) {
            return None;
        }
        let program = RvmDecider::compile(&self.policies, path).ok().map(Arc::new);
        if let Ok(mut known) = self.data_api_programs.write()
            && known.len() < DATA_API_PROGRAMS
        {
            known.insert(path.clone(), program.clone());
        }
        program
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::{Authorizer, RecordInput};
    use crate::data_ref::DataRef;
    use crate::input::InputOptions;
    use crate::loader::{PolicySources, SourceFile};
    use crate::policy_set::{LoadOptions, PolicySet};
    use crate::request::{AuthzRequest, HttpRequest};

    fn authorizer(rego: Option<&str>, cel: Option<&str>) -> Authorizer {
        let mut sources = PolicySources::default();
        if let Some(r) = rego {
            sources.add_rego("authz.rego", r);
        }
        if let Some(when) = cel {
            sources.cel.push(SourceFile {
                name: "authz.cel.yaml".into(),
                text: format!(
                    "name: t\nrules:\n  - name: r\n    effect: allow\n    when: '{when}'\n"
                ),
            });
        }
        let set = PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap();
        Authorizer::new(
            Arc::new(set),
            DataRef::parse("envoy/authz/allow").unwrap(),
            InputOptions::default(),
        )
    }

    fn request(method: &str, path: &str, body: &str) -> AuthzRequest {
        let mut headers = vec![(":path".to_string(), path.to_string())];
        if !body.is_empty() {
            headers.push(("content-type".into(), "application/json".into()));
        }
        AuthzRequest {
            http: Some(HttpRequest {
                method: method.into(),
                path: path.into(),
                host: "shop.example.com".into(),
                headers,
                body: body.into(),
                ..HttpRequest::default()
            }),
            ..AuthzRequest::default()
        }
    }

    /// Requests a CEL-only set allows, denies, and refuses before any policy (a body that is
    /// not JSON, a path with `..`, a query that does not parse).
    fn cases() -> Vec<(AuthzRequest, bool, &'static str)> {
        vec![
            (request("GET", "/api/items", ""), true, "allowed"),
            (
                request("POST", "/api/items", "{\"a\": 1}"),
                false,
                "policy_denied",
            ),
            (
                request("GET", "/api/items", "{not json"),
                false,
                "body_parse_error",
            ),
            (
                request("GET", "/api/../admin", ""),
                false,
                "non_canonical_path",
            ),
            (request("GET", "/api/items?a=%zz", ""), false, "bad_input"),
        ]
    }

    #[test]
    fn a_set_that_reads_no_input_decides_alike_without_building_it() {
        let a = authorizer(None, Some("request.method == \"GET\""));
        for (req, allowed, code) in cases() {
            let kept = a.check(&req);
            let lean = a.check_with(&req, false);
            let http = req.http.as_ref().unwrap();
            let path = format!("{} {}", http.method, http.path);
            assert_eq!(kept.decision.allowed, allowed, "{path}");
            assert_eq!(
                kept.decision.reason_code(),
                code,
                "{path}: {:?}",
                kept.decision
            );
            assert_eq!(lean.decision, kept.decision, "{path}");
            assert!(lean.input.is_none(), "{path}: no document was asked for");
            // A request refused before any policy has no document either way.
            let refused = ["body_parse_error", "non_canonical_path", "bad_input"].contains(&code);
            assert_eq!(kept.input.is_some(), !refused, "{path}");
        }
    }

    /// Rego reads only some of the input document: without a decision log it gets only those
    /// parts, and decides exactly as with the whole document, whatever it reads and however
    /// (constant keys, a variable index, `input` whole, a header by name, `object.get`).
    #[test]
    fn rego_decides_alike_on_the_parts_of_the_document_it_reads() {
        let full = |method: &str, path: &str, body: &str| {
            let mut r = request(method, path, body);
            r.source = Some(crate::request::Peer {
                principal: "spiffe://cluster.local/ns/a/sa/b".into(),
                address: Some(crate::request::Address::Socket(
                    crate::request::SocketAddress {
                        address: "10.0.0.1".into(),
                        port_value: 4000,
                        ..Default::default()
                    },
                )),
                ..Default::default()
            });
            r.context_extensions = vec![("vh".into(), "shop".into())];
            if let Some(h) = r.http.as_mut() {
                h.headers.push(("x-tenant".into(), "acme".into()));
                h.headers.push(("x-other".into(), "1".into()));
            }
            r
        };
        let requests = [
            full("GET", "/api/items?a=1", ""),
            full("POST", "/api/items", "{\"a\": 1}"),
            request("GET", "/admin", ""),
            full("DELETE", "/api/../x", ""),
        ];
        let policies = [
            // A header by name, a peer's principal, the path: a small part.
            "package envoy.authz\nallow if { input.attributes.request.http.headers[\"x-tenant\"] == \"acme\"; input.attributes.source.principal != \"\"; input.parsed_path[0] == \"api\" }",
            // Absent parts read as absent: no `x-other` when only `x-tenant` is named.
            "package envoy.authz\nallow if not input.attributes.request.http.headers[\"x-missing\"]\nallow if count(input.attributes.request.http.headers) > 3",
            // A variable index, a count of a whole object, the parsed body and query.
            "package envoy.authz\nallow if { some k; input.attributes.contextExtensions[k] == \"shop\"; input.parsed_body.a == 1 }\nallow if input.parsed_query.a[0] == \"1\"",
            // `input` whole, and through a built-in.
            "package envoy.authz\nallow if count(object.keys(input)) > 5\nallow if object.get(input, [\"version\", \"encoding\"], \"\") == \"x\"",
            // An object result built from input: the same object.
            "package envoy.authz\nallow := {\"allowed\": true, \"headers\": {\"x-peer\": input.attributes.source.principal}, \"body\": input.attributes.request.http.method}",
            // Nothing read at all.
            "package envoy.authz\nallow := true",
            // Through an alias of a part of `input` (OPA-Envoy policies' first line): the
            // fields read through it, a header's absence, the alias whole.
            "package envoy.authz\nhttp := input.attributes.request.http\nallow if { http.headers[\"x-tenant\"] == \"acme\"; not http.headers[\"x-missing\"]; http.method == \"GET\" }",
            "package envoy.authz\nhttp := input.attributes.request.http\nallow if count(http.headers) > 3\nallow if data.envoy.authz.http.method == \"POST\"",
            // Through an import of a part (OPA-Envoy's examples), with `as` and without; the
            // name with a variable key, and whole.
            "package envoy.authz\nimport input.attributes.request.http as http_request\nallow if { http_request.headers[\"x-tenant\"] == \"acme\"; not http_request.headers[\"x-missing\"]; http_request.method == \"GET\" }",
            "package envoy.authz\nimport input.attributes.request.http\nallow if { some k; http.headers[k] == \"1\"; http.method == \"POST\" }\nallow if count(http) > 7",
        ];
        for policy in policies {
            let a = authorizer(Some(policy), None);
            for r in &requests {
                let whole = a.check(r);
                let lean = a.check_with(r, false);
                assert_eq!(lean.decision, whole.decision, "{policy}\n{r:?}");
                // A part of the document is not the request's input, and is not kept.
                let whole_read = a.reads_document.as_ref().unwrap().is_whole();
                if !whole_read {
                    assert!(lean.input.is_none(), "{policy}");
                }
                // For a record: the same decision, and an input that is the whole document —
                // the request as read when the policies read a part, the document built for
                // them when they read it whole.
                let recorded = a.check_for_record(r.clone());
                assert_eq!(recorded.decision, whole.decision, "{policy}\n{r:?}");
                match (&recorded.input, &whole.input) {
                    (None, None) => {}
                    (Some(got), Some(RecordInput::Document(want))) => {
                        assert_eq!(&got.to_value(&recorded.identity), want, "{policy}");
                        assert_eq!(
                            matches!(got, RecordInput::Document(_)),
                            whole_read,
                            "{policy}"
                        );
                    }
                    (got, want) => panic!("{policy}: {got:?} against {want:?}"),
                }
            }
        }
        // Through the alias and through the import, only the fields read are built (not
        // `http` whole).
        for policy in [policies[6], policies[8]] {
            let a = authorizer(Some(policy), None);
            let http = a
                .reads_document
                .as_deref()
                .and_then(|n| n.get("attributes"))
                .and_then(|n| n.get("request"))
                .and_then(|n| n.get("http"))
                .unwrap();
            assert!(
                !http.is_whole() && http.get("method").is_some() && http.get("path").is_none(),
                "{policy}"
            );
            assert!(
                a.check_with(&requests[0], false).decision.allowed,
                "{policy}"
            );
            assert!(
                !a.check_with(&requests[1], false).decision.allowed,
                "{policy}"
            );
        }
        // The first policy was given only what it reads, and allowed on it.
        let a = authorizer(Some(policies[0]), None);
        let reads = a.reads_document.as_deref().unwrap();
        assert!(reads.get("version").is_none() && reads.get("attributes").is_some());
        assert!(a.check_with(&requests[0], false).decision.allowed);
        let doc = crate::input::read_request(&requests[0], &InputOptions::default())
            .unwrap()
            .document_of(&requests[0], None, reads);
        assert_eq!(
            crate::value::to_json(&doc),
            serde_json::json!({
                "attributes": {
                    "request": {"http": {"headers": {"x-tenant": "acme"}}},
                    "source": {"principal": "spiffe://cluster.local/ns/a/sa/b"}
                },
                "parsed_path": ["api", "items"]
            })
        );
    }

    #[test]
    fn the_identity_reaches_cel_and_istio_without_a_document() {
        let caller = "spiffe://cluster.local/ns/default/sa/frontend";
        let from = |principal: &str| AuthzRequest {
            source: Some(crate::request::Peer {
                principal: principal.into(),
                ..Default::default()
            }),
            // The workload an Istio policy of namespace `default` selects.
            destination: Some(crate::request::Peer {
                principal: "spiffe://cluster.local/ns/default/sa/products".into(),
                ..Default::default()
            }),
            ..request("GET", "/api/items", "")
        };
        let cel = authorizer(None, Some(&format!("identity.spiffe_id == \"{caller}\"")));
        let mut sources = PolicySources::default();
        sources.istio.push(SourceFile {
            name: "p.istio.yaml".into(),
            text: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n  namespace: default\nspec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/default/sa/frontend\"]\n".into(),
        });
        let istio = Authorizer::new(
            Arc::new(PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap()),
            DataRef::parse("envoy/authz/allow").unwrap(),
            InputOptions::default(),
        );
        for (name, a) in [("cel", cel), ("istio", istio)] {
            let allowed = a.check_with(&from(caller), false);
            assert!(allowed.decision.allowed, "{name}: {:?}", allowed.decision);
            assert!(allowed.input.is_none(), "{name}");
            let other = a.check_with(&from("spiffe://cluster.local/ns/default/sa/other"), false);
            assert!(!other.decision.allowed, "{name}: {:?}", other.decision);
        }
    }

    #[test]
    fn the_document_is_built_when_a_policy_reads_it() {
        let req = request("GET", "/api/items", "");
        let cel = authorizer(
            None,
            Some("input.attributes.request.http.method == \"GET\""),
        );
        let rego = authorizer(
            Some("package envoy.authz\nallow if input.attributes.request.http.method == \"GET\"\n"),
            None,
        );
        // CEL's `input` is the whole document, which the outcome keeps; Rego here reads one
        // field, so only that part is built, and it is not kept as the request's input.
        for (a, kept) in [(cel, true), (rego, false)] {
            let out = a.check_with(&req, false);
            assert!(out.decision.allowed, "{:?}", out.decision);
            assert_eq!(out.input.is_some(), kept);
            // Kept for a decision record: the whole document either way.
            let out = a.check_with(&req, true);
            let method = &out
                .input
                .as_ref()
                .and_then(RecordInput::document)
                .expect("the document")["attributes"]["request"]["http"]["method"];
            assert_eq!(method.as_string().unwrap().as_ref(), "GET");
            assert!(
                out.input.as_ref().and_then(RecordInput::document).unwrap()["version"]
                    != regorus::Value::Undefined
            );
        }
    }
}

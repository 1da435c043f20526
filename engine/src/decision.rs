//! Decisions, and the one place a policy result becomes one.
//!
//! A [`Decision`] is what arbiter answers: allowed or not, and what to tell Envoy. It is never a
//! `Result`: every error on the way (undefined result, wrong type, evaluation error, limit,
//! timeout, bad input) is a denial carrying a machine-readable [`DenyReason`]. Callers cannot
//! forget to handle an error by unwrapping it into "allow".
//!
//! The result conventions are OPA-Envoy's: a boolean, or an object with `allowed` and the
//! optional response fields (`headers`, `request_headers_to_remove`, `response_headers_to_add`,
//! `query_parameters_to_set`, `query_parameters_to_remove`, `http_status`, `body`,
//! `dynamic_metadata`).

use std::fmt;

use regorus::Value;
use serde_json::Value as Json;

use crate::value::to_json;

/// Why a request was denied. `code()` is the stable, machine-readable form that goes into
/// decision records and metrics; `Display` adds the detail for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DenyReason {
    /// The policy evaluated and said no.
    PolicyDenied,
    /// The decision was undefined: no rule produced a value and there is no default.
    UndefinedDecision,
    /// The decision was neither a boolean nor an object with a boolean `allowed`.
    InvalidDecisionType(String),
    /// A response field of an object decision had the wrong type or value.
    InvalidDecisionField(String),
    /// A complete rule or function produced two different values.
    EvalConflict(String),
    /// Any other evaluation error (type error, builtin error, missing function, ...).
    EvalError(String),
    /// An evaluation limit fired: `time`, `memory` or `regex`.
    LimitExceeded(&'static str, String),
    /// The decision did not finish within the deadline.
    Timeout,
    /// The server had no capacity for another evaluation.
    Overload,
    /// The request could not be turned into an input document.
    BadInput(String),
    /// The request path is not canonical (dot segments, encoded slashes, ...).
    NonCanonicalPath(String),
    /// A body declared as JSON, form or multipart could not be parsed.
    BodyParseError(String),
    /// The input is larger than the configured limit.
    InputTooLarge(String),
    /// No policy set is loaded, or the decision path does not exist in it.
    NoPolicy(String),
    /// The decision event could not be queued and auditing is required.
    AuditUnavailable,
    /// Caller identity could not be established where the policy set requires one.
    IdentityInvalid(String),
}

impl DenyReason {
    /// Stable code for records, metrics and tests.
    pub fn code(&self) -> &'static str {
        match self {
            DenyReason::PolicyDenied => "policy_denied",
            DenyReason::UndefinedDecision => "undefined_decision",
            DenyReason::InvalidDecisionType(_) => "invalid_decision_type",
            DenyReason::InvalidDecisionField(_) => "invalid_decision_field",
            DenyReason::EvalConflict(_) => "eval_conflict",
            DenyReason::EvalError(_) => "eval_error",
            DenyReason::LimitExceeded("time", _) => "limit_exceeded:time",
            DenyReason::LimitExceeded("memory", _) => "limit_exceeded:memory",
            DenyReason::LimitExceeded("regex", _) => "limit_exceeded:regex",
            DenyReason::LimitExceeded("cel_cost", _) => "limit_exceeded:cel_cost",
            DenyReason::LimitExceeded(_, _) => "limit_exceeded",
            DenyReason::Timeout => "timeout",
            DenyReason::Overload => "overload",
            DenyReason::BadInput(_) => "bad_input",
            DenyReason::NonCanonicalPath(_) => "non_canonical_path",
            DenyReason::BodyParseError(_) => "body_parse_error",
            DenyReason::InputTooLarge(_) => "input_too_large",
            DenyReason::NoPolicy(_) => "no_policy",
            DenyReason::AuditUnavailable => "audit_unavailable",
            DenyReason::IdentityInvalid(_) => "identity_invalid",
        }
    }

    /// The detail for people, when there is one.
    pub fn detail(&self) -> Option<&str> {
        match self {
            DenyReason::InvalidDecisionType(d)
            | DenyReason::InvalidDecisionField(d)
            | DenyReason::EvalConflict(d)
            | DenyReason::EvalError(d)
            | DenyReason::LimitExceeded(_, d)
            | DenyReason::BadInput(d)
            | DenyReason::NonCanonicalPath(d)
            | DenyReason::BodyParseError(d)
            | DenyReason::InputTooLarge(d)
            | DenyReason::NoPolicy(d)
            | DenyReason::IdentityInvalid(d) => Some(d),
            DenyReason::PolicyDenied
            | DenyReason::UndefinedDecision
            | DenyReason::Timeout
            | DenyReason::Overload
            | DenyReason::AuditUnavailable => None,
        }
    }

    /// True when the denial comes from an error rather than from the policy saying no.
    pub fn is_error(&self) -> bool {
        !matches!(self, DenyReason::PolicyDenied)
    }

    /// The HTTP status the denial maps to when the policy did not choose one: 400 for requests
    /// that are malformed, 403 otherwise. (Overload and timeouts are still 403: the client must
    /// not learn to retry around a policy.)
    pub fn default_http_status(&self) -> u16 {
        match self {
            DenyReason::BadInput(_)
            | DenyReason::NonCanonicalPath(_)
            | DenyReason::BodyParseError(_) => 400,
            DenyReason::InputTooLarge(_) => 413,
            _ => 403,
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail() {
            Some(d) => write!(f, "{}: {d}", self.code()),
            None => f.write_str(self.code()),
        }
    }
}

/// A header to add (on allow: to the upstream request or the downstream response; on deny: to
/// the local reply).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

/// The policy (a Rego decision path, or a CEL file) and rule that contributed to a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecidedBy {
    /// `data.envoy.authz.allow` for Rego, the file name for CEL.
    pub policy: String,
    /// The CEL rule's name; `None` for Rego.
    pub rule: Option<String>,
}

/// What arbiter answers for one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub allowed: bool,
    /// Why it was denied; `None` when allowed.
    pub reason: Option<DenyReason>,
    /// Status for a denial (the policy's `http_status`, else the reason's default).
    pub http_status: u16,
    /// Body of the denied response.
    pub body: Option<String>,
    /// On allow: headers added to the upstream request. On deny: headers on the local reply.
    pub headers: Vec<Header>,
    pub request_headers_to_remove: Vec<String>,
    pub response_headers_to_add: Vec<Header>,
    pub query_parameters_to_set: Vec<(String, String)>,
    pub query_parameters_to_remove: Vec<String>,
    pub dynamic_metadata: Option<serde_json::Map<String, Json>>,
    /// The policy's raw result, for decision logs and the Data API (`None` when undefined or
    /// when evaluation failed).
    pub result: Option<Json>,
    /// Which policies and rules decided: the one that denied, or every one that allowed.
    pub decided_by: Vec<DecidedBy>,
    /// Istio AUDIT policies that matched (the decision record lists them).
    pub audit: Vec<String>,
    /// What Istio `istio.io/dry-run` policies would have decided (`allowed`, `policy`, `rule`).
    pub istio_dry_run: Option<Json>,
}

impl Decision {
    /// An allow with no response shaping.
    pub fn allow() -> Self {
        Decision {
            allowed: true,
            reason: None,
            http_status: 200,
            body: None,
            headers: Vec::new(),
            request_headers_to_remove: Vec::new(),
            response_headers_to_add: Vec::new(),
            query_parameters_to_set: Vec::new(),
            query_parameters_to_remove: Vec::new(),
            dynamic_metadata: None,
            result: None,
            decided_by: Vec::new(),
            audit: Vec::new(),
            istio_dry_run: None,
        }
    }

    /// A denial for `reason`, with the reason's default status.
    pub fn deny(reason: DenyReason) -> Self {
        Decision {
            allowed: false,
            http_status: reason.default_http_status(),
            reason: Some(reason),
            ..Decision::allow()
        }
    }

    /// The machine-readable reason code, `"allowed"` when allowed.
    pub fn reason_code(&self) -> &'static str {
        self.reason.as_ref().map_or("allowed", DenyReason::code)
    }

    /// Turn a policy result into a decision, following OPA-Envoy's conventions exactly and
    /// failing closed on anything else.
    pub fn from_result(result: &Value) -> Decision {
        match result {
            Value::Undefined => Decision::deny(DenyReason::UndefinedDecision),
            Value::Bool(b) => {
                let mut d = if *b {
                    Decision::allow()
                } else {
                    Decision::deny(DenyReason::PolicyDenied)
                };
                d.result = Some(Json::Bool(*b));
                d
            }
            Value::Object(_) => {
                let json = to_json(result);
                let mut d = match from_object(result) {
                    Ok(d) => d,
                    Err(reason) => Decision::deny(reason),
                };
                d.result = Some(json);
                d
            }
            other => {
                let mut d = Decision::deny(DenyReason::InvalidDecisionType(format!(
                    "illegal value for policy evaluation result: {}",
                    type_name(other)
                )));
                d.result = Some(to_json(other));
                d
            }
        }
    }
}

fn from_object(obj: &Value) -> Result<Decision, DenyReason> {
    let allowed = match &obj["allowed"] {
        Value::Bool(b) => *b,
        Value::Undefined => {
            return Err(DenyReason::InvalidDecisionType(
                "unable to determine evaluation result due to missing \"allowed\" key".into(),
            ));
        }
        other => {
            return Err(DenyReason::InvalidDecisionType(format!(
                "expected allowed to be of type 'boolean' but got '{}'",
                type_name(other)
            )));
        }
    };
    let mut d = if allowed {
        Decision::allow()
    } else {
        Decision::deny(DenyReason::PolicyDenied)
    };
    d.headers = headers(&obj["headers"], "headers")?;
    d.response_headers_to_add =
        headers(&obj["response_headers_to_add"], "response_headers_to_add")?;
    d.request_headers_to_remove = string_list(
        &obj["request_headers_to_remove"],
        "request_headers_to_remove",
    )?;
    d.query_parameters_to_remove = string_list(
        &obj["query_parameters_to_remove"],
        "query_parameters_to_remove",
    )?;
    d.query_parameters_to_set = query_params(&obj["query_parameters_to_set"])?;
    match &obj["body"] {
        Value::Undefined => {}
        Value::String(s) => d.body = Some(s.to_string()),
        other => {
            return Err(field_error(format!(
                "expected body to be of type 'string' but got '{}'",
                type_name(other)
            )));
        }
    }
    match &obj["http_status"] {
        Value::Undefined => {}
        Value::Number(_) => {
            let code = obj["http_status"]
                .as_i64()
                .ok()
                .and_then(|c| u16::try_from(c).ok())
                .filter(|c| is_envoy_status_code(*c))
                .ok_or_else(|| {
                    field_error(format!(
                        "invalid HTTP status code {}",
                        to_json(&obj["http_status"])
                    ))
                })?;
            if !allowed {
                d.http_status = code;
            }
        }
        other => {
            return Err(field_error(format!(
                "expected http_status to be of type 'number' but got '{}'",
                type_name(other)
            )));
        }
    }
    match &obj["dynamic_metadata"] {
        Value::Undefined => {}
        Value::Object(_) => {
            if let Json::Object(m) = to_json(&obj["dynamic_metadata"]) {
                d.dynamic_metadata = Some(m);
            }
        }
        other => {
            return Err(field_error(format!(
                "expected dynamic_metadata to be of type 'object' but got '{}'",
                type_name(other)
            )));
        }
    }
    Ok(d)
}

fn field_error(msg: String) -> DenyReason {
    DenyReason::InvalidDecisionField(msg)
}

/// The elements of an array, or of a set in its order: OPA hands a decision to OPA-Envoy as
/// JSON, where a set is an array, so every list field accepts both.
fn items(v: &Value) -> Vec<&Value> {
    match v {
        Value::Array(a) => a.iter().collect(),
        Value::Set(s) => s.iter().collect(),
        _ => Vec::new(),
    }
}

/// `headers` is an object of name → string or [string], or an array (or set) of such objects.
fn headers(v: &Value, field: &str) -> Result<Vec<Header>, DenyReason> {
    let mut out = Vec::new();
    match v {
        Value::Undefined => {}
        Value::Object(_) => header_object(v, &mut out)?,
        Value::Array(_) | Value::Set(_) => {
            for item in items(v) {
                if !matches!(item, Value::Object(_)) {
                    return Err(field_error(format!(
                        "expected {field} to be of type 'object' but got '{}'",
                        type_name(item)
                    )));
                }
                header_object(item, &mut out)?;
            }
        }
        other => {
            return Err(field_error(format!(
                "expected {field} to be of type 'object' but got '{}'",
                type_name(other)
            )));
        }
    }
    Ok(out)
}

fn header_object(v: &Value, out: &mut Vec<Header>) -> Result<(), DenyReason> {
    let Ok(obj) = v.as_object() else {
        return Ok(());
    };
    for (k, val) in obj.iter() {
        let Value::String(name) = k else {
            return Err(field_error("header names must be strings".into()));
        };
        match val {
            Value::String(s) => out.push(Header {
                name: name.to_string(),
                value: s.to_string(),
            }),
            Value::Array(_) | Value::Set(_) => {
                for item in items(val) {
                    let Value::String(s) = item else {
                        return Err(field_error(format!(
                            "invalid value type {} for header '{name}'",
                            type_name(item)
                        )));
                    };
                    out.push(Header {
                        name: name.to_string(),
                        value: s.to_string(),
                    });
                }
            }
            _ => {
                return Err(field_error(format!(
                    "type assertion error for header '{name}'"
                )));
            }
        }
    }
    Ok(())
}

fn string_list(v: &Value, field: &str) -> Result<Vec<String>, DenyReason> {
    match v {
        Value::Undefined => Ok(Vec::new()),
        Value::Array(_) | Value::Set(_) => items(v)
            .into_iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.to_string()),
                other => Err(field_error(format!(
                    "expected {field} value to be of type 'string' but got '{}'",
                    type_name(other)
                ))),
            })
            .collect(),
        other => Err(field_error(format!(
            "expected {field} to be of type '[]string' but got '{}'",
            type_name(other)
        ))),
    }
}

fn query_params(v: &Value) -> Result<Vec<(String, String)>, DenyReason> {
    let mut out = Vec::new();
    match v {
        Value::Undefined => {}
        Value::Object(obj) => {
            for (k, val) in obj.iter() {
                let Value::String(key) = k else {
                    return Err(field_error("query parameter names must be strings".into()));
                };
                match val {
                    Value::String(s) => out.push((key.to_string(), s.to_string())),
                    Value::Array(_) | Value::Set(_) => {
                        for item in items(val) {
                            let Value::String(s) = item else {
                                return Err(field_error(format!(
                                    "expected array element to be string but got '{}'",
                                    type_name(item)
                                )));
                            };
                            out.push((key.to_string(), s.to_string()));
                        }
                    }
                    other => {
                        return Err(field_error(format!(
                            "expected value to be string or array but got '{}'",
                            type_name(other)
                        )));
                    }
                }
            }
        }
        other => {
            return Err(field_error(format!(
                "expected query_parameters_to_set to be a map but got '{}'",
                type_name(other)
            )));
        }
    }
    Ok(out)
}

/// The codes of Envoy's `envoy.type.v3.StatusCode` enum (the ones a denied response can carry),
/// which OPA-Envoy also requires.
pub fn is_envoy_status_code(code: u16) -> bool {
    matches!(
        code,
        100 | 200..=208
            | 226
            | 300..=305
            | 307
            | 308
            | 400..=417
            | 421..=424
            | 426
            | 428
            | 429
            | 431
            | 500..=508
            | 510
            | 511
    )
}

/// The Rego type name of a value, as OPA's error messages use them.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Set(_) => "set",
        Value::Object(_) => "object",
        Value::Undefined => "undefined",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(json: &str) -> Value {
        Value::from_json_str(json).unwrap()
    }

    #[test]
    fn booleans() {
        assert!(Decision::from_result(&Value::Bool(true)).allowed);
        let d = Decision::from_result(&Value::Bool(false));
        assert!(!d.allowed);
        assert_eq!(d.reason_code(), "policy_denied");
        assert_eq!(d.http_status, 403);
    }

    #[test]
    fn undefined_and_wrong_types_deny() {
        assert_eq!(
            Decision::from_result(&Value::Undefined).reason_code(),
            "undefined_decision"
        );
        for bad in [
            r#""true""#,
            "1",
            r#"{"allowed":"yes"}"#,
            "{}",
            "[true]",
            "null",
        ] {
            let d = Decision::from_result(&v(bad));
            assert!(!d.allowed, "{bad}");
            assert_eq!(d.reason_code(), "invalid_decision_type", "{bad}");
        }
    }

    /// OPA-Envoy's documented form: `headers` as a set of objects (`headers contains {...}`),
    /// and list fields given as sets (issue 25, item 4).
    #[test]
    fn sets_are_lists() {
        let mut headers = Value::new_set();
        let mut remove = Value::new_set();
        {
            let h = headers.as_set_mut().unwrap();
            h.insert(v(r#"{"x-ext-auth-allow": "yes"}"#));
            h.insert(v(r#"{"x-validated-by": "security-checkpoint"}"#));
            remove.as_set_mut().unwrap().insert(v(r#""authorization""#));
        }
        let mut values = Value::new_set();
        values.as_set_mut().unwrap().insert(v(r#""2""#));
        let mut result =
            v(r#"{"allowed": false, "http_status": 429, "response_headers_to_add": {}}"#);
        {
            let obj = result.as_object_mut().unwrap();
            obj.insert(v(r#""headers""#), headers);
            obj.insert(v(r#""request_headers_to_remove""#), remove);
            let mut added = v("{}");
            added.as_object_mut().unwrap().insert(v(r#""x-b""#), values);
            obj.insert(v(r#""response_headers_to_add""#), added);
        }
        let d = Decision::from_result(&result);
        assert_eq!(d.reason_code(), "policy_denied", "{d:?}");
        assert_eq!(d.http_status, 429);
        let names: Vec<&str> = d.headers.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["x-ext-auth-allow", "x-validated-by"]);
        assert_eq!(d.request_headers_to_remove, ["authorization"]);
        assert_eq!(d.response_headers_to_add[0].value, "2");

        // The same from Rego, as OPA-Envoy's documentation writes it.
        let mut sources = crate::PolicySources::default();
        sources.add_rego(
            "authz.rego",
            r#"package envoy.authz
default allow := false
headers contains {"x-ext-auth-allow": "yes"}
headers contains {"x-validated-by": "security-checkpoint"}
result := {"allowed": allow, "headers": headers, "request_headers_to_remove": {"authorization"}}
"#,
        );
        let set = crate::PolicySet::from_sources(&sources, &crate::LoadOptions::default()).unwrap();
        let d = set.decide(
            &crate::DataRef::parse("envoy/authz/result").unwrap(),
            v("{}"),
        );
        assert_eq!(d.reason_code(), "policy_denied", "{d:?}");
        assert_eq!(d.headers.len(), 2, "{d:?}");
        assert_eq!(d.request_headers_to_remove, ["authorization"]);
    }

    #[test]
    fn object_fields() {
        let d = Decision::from_result(&v(r#"{
            "allowed": true,
            "headers": {"x-a": "1", "x-b": ["2", "3"]},
            "request_headers_to_remove": ["authorization"],
            "response_headers_to_add": [{"x-c": "4"}],
            "query_parameters_to_set": {"q": "v", "m": ["1","2"]},
            "query_parameters_to_remove": ["debug"],
            "dynamic_metadata": {"k": {"n": 1}}
        }"#));
        assert!(d.allowed);
        assert_eq!(d.headers.len(), 3);
        assert_eq!(d.headers[1].name, "x-b");
        assert_eq!(d.request_headers_to_remove, vec!["authorization"]);
        assert_eq!(d.response_headers_to_add[0].value, "4");
        assert_eq!(d.query_parameters_to_set.len(), 3);
        assert_eq!(d.query_parameters_to_remove, vec!["debug"]);
        assert_eq!(
            d.dynamic_metadata.unwrap()["k"],
            serde_json::json!({"n": 1})
        );
    }

    #[test]
    fn deny_object_with_status_and_body() {
        let d = Decision::from_result(&v(
            r#"{"allowed": false, "http_status": 401, "body": "no", "headers": {"www-authenticate": "Bearer"}}"#,
        ));
        assert!(!d.allowed);
        assert_eq!(d.http_status, 401);
        assert_eq!(d.body.as_deref(), Some("no"));
        assert_eq!(d.headers[0].name, "www-authenticate");
    }

    #[test]
    fn bad_fields_deny_even_when_allowed() {
        for bad in [
            r#"{"allowed": true, "headers": 5}"#,
            r#"{"allowed": true, "headers": {"a": 1}}"#,
            r#"{"allowed": true, "request_headers_to_remove": "x"}"#,
            r#"{"allowed": false, "http_status": 999}"#,
            r#"{"allowed": false, "http_status": "403"}"#,
            r#"{"allowed": false, "http_status": 418}"#,
            r#"{"allowed": true, "body": 1}"#,
            r#"{"allowed": true, "dynamic_metadata": []}"#,
            r#"{"allowed": true, "query_parameters_to_set": {"a": 1}}"#,
        ] {
            let d = Decision::from_result(&v(bad));
            assert!(!d.allowed, "{bad}");
            assert_eq!(d.reason_code(), "invalid_decision_field", "{bad}");
        }
    }
}

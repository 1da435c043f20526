//! The regorus side: how an engine is configured, and what its errors mean.
//!
//! Every regorus engine arbiter creates comes from [`new_engine`], so the policy test runner, the
//! conformance runner, `arbiter eval` and the server all see the same built-ins, the same strict
//! built-in errors and the same limits.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use regorus::PolicyLengthConfig;
use regorus::utils::limits::ExecutionTimerConfig;

use crate::builtins;
use crate::decision::DenyReason;
use crate::loader::RegoVersion;

/// How a regorus engine is set up.
#[derive(Debug, Clone, Copy)]
pub struct EngineOptions {
    pub rego_version: RegoVersion,
    /// Built-in errors are errors (OPA's `--strict-builtin-errors`). On by default: with it off,
    /// a failing built-in inside `not` would flip a denial into an allow.
    pub strict_builtin_errors: bool,
    /// Wall-clock budget per evaluation; `None` means no limit (`arbiter eval`).
    pub eval_timeout: Option<Duration>,
    /// Largest policy file, in bytes, lines and columns.
    pub policy_length: PolicyLengthConfig,
}

/// Policy size limits: 1 MiB, 20,000 lines (regorus's defaults) and 16,384 columns. regorus
/// allows 1,024 columns, which refuses ordinary policies that embed a JWT or a certificate on
/// one line; OPA has no column limit at all.
pub fn default_policy_length() -> PolicyLengthConfig {
    PolicyLengthConfig {
        max_col: NonZeroU32::new(16_384).unwrap_or(NonZeroU32::MIN),
        max_file_bytes: NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN),
        max_lines: NonZeroUsize::new(20_000).unwrap_or(NonZeroUsize::MIN),
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            rego_version: RegoVersion::V1,
            strict_builtin_errors: true,
            eval_timeout: None,
            policy_length: default_policy_length(),
        }
    }
}

/// A regorus engine with arbiter's built-ins registered and the options applied.
pub fn new_engine(opts: &EngineOptions) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(opts.rego_version == RegoVersion::V0Compatible);
    engine.set_builtin_error_hook(Some(crate::typecheck::builtin_error_hook));
    engine.set_strict_builtin_errors(opts.strict_builtin_errors);
    engine.set_policy_length_config(opts.policy_length);
    if let Some(limit) = opts.eval_timeout {
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit,
            // Time is read every 64 work units: frequent enough to stop a runaway loop within
            // a fraction of a millisecond, rare enough not to show in the profile.
            check_interval: NonZeroU32::MIN.saturating_add(63),
        });
    }
    builtins::register(&mut engine, opts.strict_builtin_errors);
    engine
}

/// An evaluation error, classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EvalError {
    pub kind: EvalErrorKind,
    /// The message for people, with the location when regorus gave one
    /// (`file:line:col: message`).
    pub message: String,
    /// The location and bare message, when regorus gave a location.
    pub location: Option<crate::diagnostic::Diagnostic>,
}

/// Broad classes of evaluation errors, matching OPA's error codes where one exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalErrorKind {
    /// `eval_conflict_error`: a complete rule or function produced two values.
    Conflict,
    /// `eval_type_error`.
    Type,
    /// `eval_builtin_error`.
    Builtin,
    /// A time, memory or regex limit.
    Limit(&'static str),
    /// A query OPA's compiler refuses before evaluating it, with OPA's code
    /// (`rego_parse_error`, `rego_type_error`).
    Compile(&'static str),
    /// Anything else (`eval_internal_error`, compile errors surfacing at evaluation).
    Other,
}

impl EvalErrorKind {
    /// OPA's error code for this kind.
    pub fn opa_code(self) -> &'static str {
        match self {
            EvalErrorKind::Conflict => "eval_conflict_error",
            EvalErrorKind::Type => "eval_type_error",
            EvalErrorKind::Builtin => "eval_builtin_error",
            EvalErrorKind::Limit(_) => "eval_cancel_error",
            EvalErrorKind::Compile(code) => code,
            EvalErrorKind::Other => "eval_internal_error",
        }
    }
}

impl EvalError {
    /// Classify a regorus error.
    pub fn from_regorus(err: &anyhow::Error) -> Self {
        let limit = err
            .chain()
            .find_map(|e| e.downcast_ref::<regorus::LimitError>())
            .map(limit_kind);
        let text = format!("{err:#}");
        let diag = crate::diagnostic::Diagnostic::from_regorus(err, "query");
        let message = if diag.line == 0 {
            diag.message.clone()
        } else {
            diag.to_string()
        };
        let lower = diag.message.to_ascii_lowercase();
        let at_call = caret_at_call(&text);
        let kind = if let Some(k) = limit {
            EvalErrorKind::Limit(k)
        } else if lower.contains("time limit") || lower.contains("execution exceeded") {
            EvalErrorKind::Limit("time")
        } else if lower.contains("memory limit") {
            EvalErrorKind::Limit("memory")
        } else if lower.contains("regex") && lower.contains("size limit") {
            EvalErrorKind::Limit("regex")
        } else if let Some(f) = err
            .chain()
            .find_map(|e| e.downcast_ref::<crate::typecheck::BuiltinFailure>())
        {
            // A built-in's own message may say "conflict" (GraphQL's field conflicts).
            if f.code == "eval_type_error" {
                EvalErrorKind::Type
            } else {
                EvalErrorKind::Builtin
            }
        } else if lower.contains("multiple outputs")
            || lower.contains("conflict")
            || lower.contains("object keys must be unique")
        {
            EvalErrorKind::Conflict
        } else if reads_as_type_error(&diag.message) {
            EvalErrorKind::Type
        } else if at_call
            || lower.contains("invalid syntax")
            || lower.contains("divide by zero")
            || lower.contains("modulo on floating-point")
            || lower.contains("modulo by zero")
            || text.contains("builtin")
        {
            EvalErrorKind::Builtin
        } else {
            EvalErrorKind::Other
        };
        let location = (diag.line != 0).then(|| diag.clone().with_code(kind.opa_code()));
        EvalError {
            kind,
            message,
            location,
        }
    }

    /// The denial this error causes.
    pub fn deny_reason(&self) -> DenyReason {
        match self.kind {
            EvalErrorKind::Conflict => DenyReason::EvalConflict(self.message.clone()),
            EvalErrorKind::Limit(k) => DenyReason::LimitExceeded(k, self.message.clone()),
            _ => DenyReason::EvalError(self.message.clone()),
        }
    }
}

/// True when an error message is one of regorus's wordings of a wrong argument type (OPA:
/// `eval_type_error`).
pub(crate) fn reads_as_type_error(message: &str) -> bool {
    let lower = message.to_ascii_lowercase();
    // OPA's operand errors (`operand 1 non-string key found …`) are type errors; `operand 1:
    // …` (a colon after the number) is how other built-in errors name an operand.
    let operand_error = lower
        .split_once(": ")
        .map_or(lower.as_str(), |(_, rest)| rest)
        .strip_prefix("operand ")
        .and_then(|r| r.split_once(' '))
        .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()));
    let operand_named = lower.contains("operand ")
        && lower.split("operand ").skip(1).any(|r| {
            r.split_once(':')
                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
        });
    operand_error
        || (lower.contains("expects") && lower.contains("argument"))
        || (lower.contains("operand") && lower.contains("must be") && !operand_named)
        || lower.contains("but got")
        || (lower.contains("requires") && (lower.contains("argument") || lower.contains("path")))
        || lower.contains("is not an object")
        || lower.contains("expects string keys")
        || lower.contains("expects string collection")
}

/// True when regorus's source excerpt puts the caret on a function call (`name(` or
/// `a.b.name(`): errors raised there come from a built-in.
fn caret_at_call(text: &str) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let Some(caret) = l.find('^') else { continue };
        let Some(src) = i.checked_sub(1).and_then(|j| lines.get(j)) else {
            continue;
        };
        // Both lines start with the same gutter (`NN | ` / `   | `), so the caret's byte offset
        // indexes the source line directly.
        let Some(rest) = src.get(caret..) else {
            continue;
        };
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
            .unwrap_or(rest.len());
        return name_len > 0 && rest[name_len..].starts_with('(');
    }
    false
}

fn limit_kind(e: &regorus::LimitError) -> &'static str {
    match e {
        regorus::LimitError::TimeLimitExceeded { .. } => "time",
        regorus::LimitError::MemoryLimitExceeded { .. } => "memory",
        regorus::LimitError::RegexSizeLimitExceeded { .. } => "regex",
    }
}

/// True when regorus refused a path because no rule is defined there (it may still be a data
/// document or a package, which a query can read).
pub(crate) fn is_not_a_rule(err: &anyhow::Error) -> bool {
    err.to_string() == "not a valid rule path"
}

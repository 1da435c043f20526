//! The regorus side: how an engine is configured, and what its errors mean.
//!
//! Every regorus engine arbiter creates comes from [`new_engine`], so the policy test runner, the
//! conformance runner, `arbiter eval` and the server all see the same built-ins, the same strict
//! built-in errors and the same limits.

use std::num::NonZeroU32;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;

use crate::builtins;
use crate::decision::DenyReason;
use crate::loader::RegoVersion;

/// How a regorus engine is set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineOptions {
    pub rego_version: RegoVersion,
    /// Built-in errors are errors (OPA's `--strict-builtin-errors`). On by default: with it off,
    /// a failing built-in inside `not` would flip a denial into an allow.
    pub strict_builtin_errors: bool,
    /// Wall-clock budget per evaluation; `None` means no limit (`arbiter eval`).
    pub eval_timeout: Option<Duration>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            rego_version: RegoVersion::V1,
            strict_builtin_errors: true,
            eval_timeout: None,
        }
    }
}

/// A regorus engine with arbiter's built-ins registered and the options applied.
pub fn new_engine(opts: &EngineOptions) -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(opts.rego_version == RegoVersion::V0Compatible);
    engine.set_strict_builtin_errors(opts.strict_builtin_errors);
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
        let kind = if let Some(k) = limit {
            EvalErrorKind::Limit(k)
        } else if lower.contains("time limit") || lower.contains("execution exceeded") {
            EvalErrorKind::Limit("time")
        } else if lower.contains("memory limit") {
            EvalErrorKind::Limit("memory")
        } else if lower.contains("regex") && lower.contains("size limit") {
            EvalErrorKind::Limit("regex")
        } else if lower.contains("multiple outputs") || lower.contains("conflict") {
            EvalErrorKind::Conflict
        } else if lower.contains("expects") && lower.contains("argument")
            || lower.contains("type")
                && (lower.contains("mismatch")
                    || lower.contains("expected")
                    || lower.contains("invalid"))
            || lower.contains("operand")
        {
            EvalErrorKind::Type
        } else if text.contains("builtin") || lower.contains("failed to") {
            EvalErrorKind::Builtin
        } else {
            EvalErrorKind::Other
        };
        EvalError { kind, message }
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

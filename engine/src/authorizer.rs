//! The decision path: a request in, a [`Decision`] out, never an error and never a panic.
//!
//! An [`Authorizer`] is a compiled policy set plus the decision path and input options. It is
//! immutable and shared: a policy reload builds a new one and swaps it in whole, so every
//! decision is attributable to exactly one revision.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use regorus::Value;

use crate::data_ref::DataRef;
use crate::decision::{Decision, DenyReason};
use crate::input::{InputOptions, build_input};
use crate::policy_set::PolicySet;
use crate::request::AuthzRequest;

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
    /// The input document the policy saw (`None` when the request was refused before).
    pub input: Option<Value>,
    pub timings: Timings,
}

/// A policy set, the decision path and how inputs are built.
#[derive(Debug, Clone)]
pub struct Authorizer {
    policies: Arc<PolicySet>,
    path: DataRef,
    input_options: InputOptions,
}

fn elapsed_ns(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Authorizer {
    pub fn new(policies: Arc<PolicySet>, path: DataRef, input_options: InputOptions) -> Self {
        Self {
            policies,
            path,
            input_options,
        }
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
        let start = Instant::now();
        let input = match build_input(request, &self.input_options) {
            Ok(i) => i,
            Err(reason) => {
                return CheckOutcome {
                    decision: Decision::deny(reason),
                    input: None,
                    timings: Timings {
                        input_ns: elapsed_ns(start),
                        eval_ns: 0,
                    },
                };
            }
        };
        let input_ns = elapsed_ns(start);
        let eval_start = Instant::now();
        let decision = self.decide_value(&self.path, input.value.clone());
        CheckOutcome {
            decision,
            input: Some(input.value),
            timings: Timings {
                input_ns,
                eval_ns: elapsed_ns(eval_start),
            },
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
        match catch_unwind(AssertUnwindSafe(|| self.policies.evaluate(path, input))) {
            Ok(r) => r,
            Err(_) => Err(crate::rego::EvalError {
                kind: crate::rego::EvalErrorKind::Other,
                message: "the policy engine panicked while evaluating this request".into(),
                location: None,
            }),
        }
    }
}

//! # arbiter-engine
//!
//! The policy engine behind arbiter: it loads Rego policies and data the way OPA does, compiles
//! them once, and turns every evaluation into a [`Decision`] that fails closed.
//!
//! The crate knows nothing of transport: no gRPC, no Envoy protobufs, no async runtime. The
//! `arbiter-ext-authz` crate converts Envoy's `CheckRequest` into this crate's request model and a
//! [`Decision`] back into a `CheckResponse`; the CLI and embedders call the same API.
//!
//! ```
//! use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
//!
//! let mut sources = PolicySources::default();
//! sources.add_rego("authz.rego", r#"
//!     package envoy.authz
//!     default allow := false
//!     allow if input.attributes.request.http.method == "GET"
//! "#);
//! let policies = PolicySet::from_sources(&sources, &LoadOptions::default())?;
//! let path = DataRef::parse("envoy/authz/allow")?;
//!
//! let input = serde_json::json!({"attributes": {"request": {"http": {"method": "GET"}}}});
//! let decision = policies.decide(&path, arbiter_engine::value::from_json(&input));
//! assert!(decision.allowed);
//!
//! let input = serde_json::json!({"attributes": {"request": {"http": {"method": "DELETE"}}}});
//! let decision = policies.decide(&path, arbiter_engine::value::from_json(&input));
//! assert!(!decision.allowed);
//! assert_eq!(decision.reason_code(), "policy_denied");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod audit;
pub mod authorizer;
pub mod body;
pub mod builtins;
pub mod bundle;
pub mod cel;
pub mod clock;
pub mod data_ref;
pub mod data_write;
pub mod decision;
pub mod diagnostic;
pub mod identity;
pub mod input;
pub mod istio;
pub mod limits;
pub mod loader;
pub mod path;
pub mod policy_set;
pub mod record;
pub mod rego;
pub mod request;
pub mod rvm;
#[cfg(any(test, feature = "scratch"))]
#[doc(hidden)]
pub mod scratch;
pub mod testing;
pub mod trace_context;
pub mod typecheck;
pub mod units;
pub mod value;

pub use data_ref::DataRef;
pub use decision::{DecidedBy, Decision, DenyReason, Header};
pub use diagnostic::{Diagnostic, LoadError};
pub use loader::{PolicySources, RegoVersion};
pub use policy_set::{LoadOptions, PolicySet};
pub use regorus;

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

//! Decision logs auditors can trust: masking of secrets, a hash chain that makes any change,
//! deletion or reordering of events evident, and summaries of what was decided.
//!
//! Everything here works on finished events (`serde_json` values and JSON lines); the writer
//! that calls it runs off the decision path.

pub mod chain;
pub mod fleet;
pub mod index;
pub mod mask;
pub mod replay;
pub mod summary;

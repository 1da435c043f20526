//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` and
//! `tracestate` headers a check or a query arrives with, read in one place for the decision
//! record (`trace_id`, `span_id`) and for the server's own spans.
//!
//! Written here rather than taken from the OpenTelemetry SDK's propagator: the rules are the
//! few below, and the propagator needs the SDK's context machinery on every request.

/// A valid `traceparent`: the trace, the caller's span and its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// The incoming trace context: `traceparent` and, when valid, `tracestate` (passed on as is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    pub parent: TraceParent,
    pub state: Option<String>,
}

/// The longest `tracestate` kept (the specification's limit a vendor must propagate).
pub const MAX_TRACESTATE: usize = 512;

fn lower_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

impl TraceParent {
    /// Parse a `traceparent` value by the specification's processing rules: lowercase hex
    /// only; version `ff` is invalid; version `00` has exactly four fields; a later version
    /// may add fields after a `-`, which are ignored; an all-zero trace or parent id is
    /// invalid. An invalid header is ignored (`None`), never an error.
    pub fn parse(h: &str) -> Option<Self> {
        let h = h.trim_matches([' ', '\t']);
        let version = h.get(..2)?;
        let v = lower_hex::<1>(version)?[0];
        if v == 0xff {
            return None;
        }
        let fixed = h.get(..55)?;
        let rest = &h[55..];
        if (v == 0 && !rest.is_empty()) || (v > 0 && !rest.is_empty() && !rest.starts_with('-')) {
            return None;
        }
        let b = fixed.as_bytes();
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let trace_id = lower_hex::<16>(&fixed[3..35])?;
        let span_id = lower_hex::<8>(&fixed[36..52])?;
        let flags = lower_hex::<1>(&fixed[53..55])?[0];
        (trace_id != [0; 16] && span_id != [0; 8]).then_some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    /// The caller recorded its span (flag `01`): a parent-based sampler samples this one too.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    pub fn trace_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    pub fn span_hex(&self) -> String {
        hex::encode(self.span_id)
    }
}

impl TraceContext {
    /// The context from a `traceparent` and an optional `tracestate` value; `None` when the
    /// `traceparent` is absent or invalid. A `tracestate` longer than [`MAX_TRACESTATE`] or
    /// with characters outside the specification's set is dropped (the parent is kept).
    pub fn from_headers(traceparent: Option<&str>, tracestate: Option<&str>) -> Option<Self> {
        let parent = TraceParent::parse(traceparent?)?;
        let state = tracestate
            .map(|s| s.trim_matches([' ', '\t']))
            .filter(|s| {
                !s.is_empty()
                    && s.len() <= MAX_TRACESTATE
                    && s.bytes().all(|b| (0x20..=0x7e).contains(&b))
            })
            .map(str::to_string);
        Some(TraceContext { parent, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn valid_traceparent() {
        let p = TraceParent::parse(VALID).unwrap();
        assert_eq!(p.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_hex(), "00f067aa0ba902b7");
        assert!(p.sampled());
        let p =
            TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!p.sampled());
        // Surrounding blanks are not part of the value.
        assert!(TraceParent::parse(&format!(" {VALID}\t")).is_some());
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-0000-00f067aa0ba902b7-01",
            // All-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Uppercase hex.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            // Version ff, and version 00 with more fields.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            // Wrong separators, non-hex.
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version must separate what it adds with `-`.
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn later_versions_keep_the_four_fields() {
        let p = TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what")
            .unwrap();
        assert_eq!(p.span_hex(), "00f067aa0ba902b7");
        assert!(
            TraceParent::parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").is_some()
        );
    }

    #[test]
    fn tracestate_is_kept_when_valid() {
        let c = TraceContext::from_headers(Some(VALID), Some("rojo=00f067aa0ba902b7,congo=t61"))
            .unwrap();
        assert_eq!(c.state.as_deref(), Some("rojo=00f067aa0ba902b7,congo=t61"));
        let long = "a=".to_string() + &"b".repeat(600);
        let c = TraceContext::from_headers(Some(VALID), Some(&long)).unwrap();
        assert_eq!(c.state, None);
        let c = TraceContext::from_headers(Some(VALID), Some("a=\u{7f}")).unwrap();
        assert_eq!(c.state, None);
        assert_eq!(TraceContext::from_headers(None, Some("a=b")), None);
    }
}

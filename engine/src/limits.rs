//! Every limit in one place, with its default and why (`../shared/reference/reliability.md` §5
//! is the starting point). Each violation is a denial with a reason — `input_too_large`,
//! `limit_exceeded:time`, `body_parse_error`, … — or, for policies, a load error; never a
//! crash, a hang or an allow.
//!
//! | limit | default | enforced by |
//! |---|---|---|
//! | `eval_timeout` | 50 ms | the engines' execution timers, and the server's deadline |
//! | `max_request_bytes` | 4 MiB | the gRPC server (tonic's default): larger `CheckRequest`s get `RESOURCE_EXHAUSTED` |
//! | `max_response_bytes` | 4 MiB | the gRPC server: a larger `CheckResponse` (a policy's long `body`) is not sent, the check fails with `RESOURCE_EXHAUSTED` and Envoy denies it (OPA-Envoy's `grpc-max-send-msg-size`) |
//! | `max_body_bytes` | 1 MiB | input building: a larger request body is `input_too_large` before parsing |
//! | `max_body_depth` | 64 | the strict JSON body parser (`body_parse_error`) |
//! | `max_headers` | 200 | input building: more distinct header names is `input_too_large` |
//! | `max_header_bytes` | 64 KiB | input building: a header whose values total more is `input_too_large` |
//! | `max_path_bytes` | 64 KiB | input building: a longer request target is `input_too_large` |
//! | `max_connections` | 1024 | each listener: further connections wait in the kernel's backlog |
//! | `max_streams` | 100 | the gRPC listener: HTTP/2 streams per connection (`SETTINGS_MAX_CONCURRENT_STREAMS`) |
//! | `max_receiving` | 16,384 | the gRPC listener: requests whose message has not fully arrived, all connections together; more get `RESOURCE_EXHAUSTED` |
//! | `max_receiving_bytes` | 64 MiB | the gRPC listener: bytes held for those requests; more get `RESOURCE_EXHAUSTED` |
//! | `max_header_list_bytes` | 64 KiB | both listeners: HTTP/2 header list, HTTP/1 header block |
//! | `request_timeout` | 10 s | both listeners: a request's headers and message must arrive within it (gRPC `DEADLINE_EXCEEDED`; HTTP closes the connection or answers 408); an idle HTTP/1 connection is closed after it |
//! | policy files | 1 MiB, 20,000 lines, 16,384 columns | loading (`rego::default_policy_length`, fixed) |
//! | CEL expressions | 16 KiB, nesting 32, comprehensions nested 3 | loading (`cel::guard`, fixed) |
//! | Rego regex size | 100 KB compiled | regorus (fixed) |
//! | SPIFFE IDs | 2048 bytes, trust domain 255 | `identity` (fixed, from the SPIFFE standard) |

use std::time::Duration;

use serde::Deserialize;

/// The configurable limits (`limits:` in `arbiter serve --config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    #[serde(deserialize_with = "crate::units::serde_units::duration")]
    pub eval_timeout: Duration,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_request_bytes: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_response_bytes: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_body_bytes: usize,
    pub max_body_depth: usize,
    pub max_headers: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_header_bytes: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_path_bytes: usize,
    pub max_connections: usize,
    pub max_streams: u32,
    pub max_receiving: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_receiving_bytes: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_header_list_bytes: usize,
    #[serde(deserialize_with = "crate::units::serde_units::duration")]
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            eval_timeout: Duration::from_millis(50),
            max_request_bytes: 4 << 20,
            max_response_bytes: 4 << 20,
            max_body_bytes: 1 << 20,
            max_body_depth: crate::body::DEFAULT_MAX_DEPTH,
            max_headers: 200,
            max_header_bytes: 64 << 10,
            max_path_bytes: 64 << 10,
            max_connections: 1024,
            max_streams: 100,
            max_receiving: 16_384,
            max_receiving_bytes: 64 << 20,
            max_header_list_bytes: 64 << 10,
            request_timeout: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_partial_config() {
        let l: Limits = serde_json::from_value(serde_json::json!({
            "max_headers": 50, "eval_timeout": "20ms", "max_body_bytes": "2MiB"
        }))
        .unwrap();
        assert_eq!(l.max_headers, 50);
        assert_eq!(l.eval_timeout, Duration::from_millis(20));
        assert_eq!(l.max_body_depth, 64);
        assert_eq!(l.max_body_bytes, 2 << 20);
        assert!(serde_json::from_value::<Limits>(serde_json::json!({"max_header": 1})).is_err());
    }
}

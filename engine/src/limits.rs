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
//! | `max_data_file_bytes` | 64 MiB | every loader (folder, bundle file, bundle folder, bundle URL): a larger `data.json`/`data.yaml` is refused before it is parsed |
//! | `max_bundle_bytes` | 256 MiB | every bundle (file, folder, URL download): its files together, uncompressed |
//! | `max_modules` | 100,000 | every loader: policy files (Rego, Rego tests, CEL, Istio, decision tests) in the set, all sources together |
//! | policy files | 1 MiB, 20,000 lines, 16,384 columns | every loader (the Rego parser's own limit, `rego::default_policy_length`, fixed) |
//! | data nesting | 128 levels | every loader (the JSON and YAML parsers' recursion limit, fixed) |
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
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_data_file_bytes: usize,
    #[serde(deserialize_with = "crate::units::serde_units::size")]
    pub max_bundle_bytes: usize,
    pub max_modules: usize,
}

impl Limits {
    /// The limits every loader applies.
    pub fn load(&self) -> LoadLimits {
        LoadLimits {
            max_data_file_bytes: self.max_data_file_bytes as u64,
            max_bundle_bytes: self.max_bundle_bytes as u64,
            max_modules: self.max_modules,
        }
    }
}

/// The largest policy file (Rego, CEL, Istio, decision test) any loader reads: the Rego
/// parser's own limit (`rego::default_policy_length`), so not configurable.
pub const MAX_POLICY_FILE_BYTES: u64 = 1 << 20;

/// What every loader (a folder, a bundle file, a bundle folder, a bundle downloaded from a URL)
/// refuses, the same way: the configurable part of [`Limits`]. A refusal names the limit and
/// how to raise it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadLimits {
    /// Largest data document file, in bytes.
    pub max_data_file_bytes: u64,
    /// Largest bundle, its files together uncompressed (and its download), in bytes.
    pub max_bundle_bytes: u64,
    /// Most policy files in one set.
    pub max_modules: usize,
}

impl Default for LoadLimits {
    fn default() -> Self {
        Limits::default().load()
    }
}

impl LoadLimits {
    /// Refuse a file of `len` bytes that is a data document (`data`) or a policy file.
    pub fn check_file(&self, data: bool, len: u64) -> Result<(), String> {
        if data && len > self.max_data_file_bytes {
            return Err(format!(
                "file is {len} bytes, over the limit of {} bytes for data files \
                 ({})",
                self.max_data_file_bytes,
                how_to_raise("max_data_file_bytes")
            ));
        }
        if !data && len > MAX_POLICY_FILE_BYTES {
            return Err(format!(
                "file is {len} bytes, over the limit of {MAX_POLICY_FILE_BYTES} bytes for \
                 policy files (the Rego parser's own limit, fixed: split the file)"
            ));
        }
        Ok(())
    }

    /// Refuse a bundle whose files so far total `len` bytes.
    pub fn check_bundle(&self, len: u64) -> Result<(), String> {
        if len > self.max_bundle_bytes {
            return Err(format!(
                "the bundle is larger than {} bytes uncompressed ({})",
                self.max_bundle_bytes,
                how_to_raise("max_bundle_bytes")
            ));
        }
        Ok(())
    }

    /// Refuse a set of `n` policy files.
    pub fn check_modules(&self, n: usize) -> Result<(), String> {
        if n > self.max_modules {
            return Err(format!(
                "{n} policy file{}, over the limit of {} ({})",
                if n == 1 { "" } else { "s" },
                self.max_modules,
                how_to_raise("max_modules")
            ));
        }
        Ok(())
    }
}

/// How a user raises a load limit: the command-line flag, or the config file's `limits:`.
fn how_to_raise(name: &str) -> String {
    format!(
        "raise it with --{} or `limits: {{{name}: …}}` in the config",
        name.replace('_', "-")
    )
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
            max_data_file_bytes: 64 << 20,
            max_bundle_bytes: 256 << 20,
            max_modules: 100_000,
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

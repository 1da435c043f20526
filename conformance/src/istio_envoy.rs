//! Istio scenarios through a real Envoy: a test PKI issuing SPIFFE client certificates, an
//! ES256 signer whose JWKS Envoy's `jwt_authn` filter verifies, and one route per workload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use serde_json::{Value as Json, json};

use crate::envoy::TempDir;

/// The scenario folders of `conformance/cases/istio/`, in order.
pub fn scenarios() -> Vec<std::path::PathBuf> {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases/istio");
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no scenarios under {}", root.display());
    dirs
}
use crate::pki::{Ca, Pair};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// An ES256 key: signs tokens, and is the JWKS Envoy's `jwt_authn` verifies them with.
pub struct Signer {
    pem: String,
    pub jwks: String,
}

impl Signer {
    pub fn new() -> Self {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let point = key.public_key_raw();
        assert_eq!(point.len(), 65, "an uncompressed P-256 point");
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "alg": "ES256", "kid": "test",
            "x": b64(&point[1..33]), "y": b64(&point[33..])}]});
        Self {
            pem: key.serialize_pem(),
            jwks: jwks.to_string(),
        }
    }

    pub fn token(&self, payload: &Json) -> String {
        let head = b64(json!({"alg": "ES256", "kid": "test", "typ": "JWT"})
            .to_string()
            .as_bytes());
        let body = b64(payload.to_string().as_bytes());
        let signing_input = format!("{head}.{body}");
        let sig =
            arbiter_engine::builtins::jose::sign_pem(&self.pem, "ES256", signing_input.as_bytes())
                .unwrap();
        format!("{signing_input}.{}", b64(&sig))
    }
}

/// Envoy's `jwt_authn` filter as Istio configures it for a RequestAuthentication: one provider
/// per issuer, the payload in the metadata under the issuer, a missing token allowed (a bad
/// one is rejected by Envoy with 401).
pub fn jwt_filter(issuers: &[String], jwks: &str) -> String {
    jwt_filter_keyed(issuers, jwks, None)
}

/// [`jwt_filter`] with every payload filed under `key` (istiod's `payload`) instead of under
/// its issuer.
pub fn jwt_filter_keyed(issuers: &[String], jwks: &str, key: Option<&str>) -> String {
    let mut providers = String::new();
    let mut requirements = String::new();
    for (i, iss) in issuers.iter().enumerate() {
        providers.push_str(&format!(
            "                p{i}:\n                  issuer: '{iss}'\n                  local_jwks:\n                    inline_string: '{jwks}'\n                  payload_in_metadata: '{}'\n",
            key.unwrap_or(iss)
        ));
        requirements.push_str(&format!("                    - provider_name: p{i}\n"));
    }
    format!(
        r#"          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
{providers}              rules:
              - match: {{prefix: "/"}}
                requires:
                  requires_any:
                    requirements:
{requirements}                    - allow_missing: {{}}
"#
    )
}

/// One route per workload, chosen by the `x-arbiter-workload` header; `per_route` gives each
/// route's `typed_per_filter_config` entries (indented 20 spaces).
pub fn routes(
    workloads: &[BTreeMap<String, String>],
    per_route: &dyn Fn(usize) -> String,
) -> String {
    let mut out = String::new();
    for i in 0..workloads.len() {
        out.push_str(&format!(
            r#"              - match:
                  prefix: "/"
                  headers: [{{name: x-arbiter-workload, string_match: {{exact: "{i}"}}}}]
                route: {{cluster: upstream, timeout: 5s}}
                typed_per_filter_config:
{}"#,
            per_route(i)
        ));
    }
    out.push_str("              - match: {prefix: \"/\"}\n                route: {cluster: upstream, timeout: 5s}\n");
    out
}

/// The workload as the ext_authz context extensions of its route (as Istio's per-workload
/// sidecars would describe it).
pub fn ext_authz_per_route(workload: &BTreeMap<String, String>) -> String {
    let ext: Vec<String> = workload
        .iter()
        .map(|(k, v)| format!("{k:?}: {v:?}"))
        .collect();
    format!(
        r#"                  envoy.filters.http.ext_authz:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute
                    check_settings:
                      context_extensions: {{{}}}
"#,
        ext.join(", ")
    )
}

pub struct Pki {
    _dir: TempDir,
    pub ca: Ca,
    pub listener: Pair,
    clients: HashMap<String, Pair>,
}

impl Pki {
    pub fn new() -> Self {
        let dir = TempDir::new("istio-pki").unwrap();
        let ca = Ca::new(&dir.0, "cluster.local istio CA").unwrap();
        let listener = ca
            .issue(
                "listener",
                Some("spiffe://cluster.local/ns/foo/sa/httpbin"),
                &["localhost"],
                &["127.0.0.1"],
            )
            .unwrap();
        Self {
            _dir: dir,
            ca,
            listener,
            clients: HashMap::new(),
        }
    }

    pub fn client(&mut self, id: &str) -> Pair {
        let n = self.clients.len();
        let ca = &self.ca;
        self.clients
            .entry(id.to_string())
            .or_insert_with(|| {
                ca.issue(&format!("client-{n}"), Some(id), &[], &[])
                    .unwrap()
            })
            .clone()
    }

    /// The listener's `transport_socket` (indented 6 spaces): TLS with this CA's listener
    /// certificate, client certificates requested (not required) and verified against the CA.
    pub fn listener_tls(&self) -> String {
        crate::envoy::downstream_tls(
            &self.listener.cert,
            &self.listener.key,
            &self.ca.file,
            false,
        )
    }
}

impl Default for Signer {
    fn default() -> Self {
        Self::new()
    }
}

impl Default for Pki {
    fn default() -> Self {
        Self::new()
    }
}

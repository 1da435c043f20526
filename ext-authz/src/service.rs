//! What every request to one of OPA's `services` carries: its `headers`, its credentials
//! (`bearer`, `oauth2` client credentials, `client_tls`) and the roots it trusts (`tls`).
//! Bundle downloads and decision-log uploads both take their header lines and their TLS
//! configuration from here, so a service's credentials mean the same thing on both paths.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Headers and credentials of one service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceAuth {
    /// `services.*.headers`, in order.
    pub headers: Vec<(String, String)>,
    /// `services.*.credentials.bearer`.
    pub bearer: Option<Bearer>,
    /// `services.*.credentials.oauth2` (the client-credentials grant).
    pub oauth2: Option<OAuth2>,
    /// `services.*.tls` and `credentials.client_tls`.
    pub tls: ServiceTls,
}

/// Whom the service's TLS trusts, and what certificate arbiter presents.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceTls {
    /// `tls.ca_cert`: PEM CA certificates the server must chain to, instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// `tls.system_ca_required`: the system's roots as well as `ca_cert`.
    pub system_ca_required: bool,
    /// `credentials.client_tls`: the certificate chain and private key (PEM) presented.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

/// `credentials.oauth2` with `grant_type: client_credentials`: a token from `token_url`,
/// asked with the client's id and secret (HTTP Basic), kept until shortly before it expires.
#[derive(Debug, Clone)]
pub struct OAuth2 {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    /// The current token and when to ask again; shared by the clones of one service.
    cache: Arc<Mutex<Option<(String, Instant)>>>,
}

impl PartialEq for OAuth2 {
    fn eq(&self, other: &Self) -> bool {
        (
            &self.token_url,
            &self.client_id,
            &self.client_secret,
            &self.scopes,
        ) == (
            &other.token_url,
            &other.client_id,
            &other.client_secret,
            &other.scopes,
        )
    }
}

impl Eq for OAuth2 {}

impl OAuth2 {
    pub fn new(
        token_url: String,
        client_id: String,
        client_secret: String,
        scopes: Vec<String>,
    ) -> Self {
        OAuth2 {
            token_url,
            client_id,
            client_secret,
            scopes,
            cache: Arc::default(),
        }
    }

    /// The access token: the cached one, or a new one from `token_url`.
    fn token(&self, tls: &ServiceTls, timeout: Duration) -> Result<String, String> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((token, until)) = cache.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD
            .encode(format!("{}:{}", self.client_id, self.client_secret));
        let mut form = String::from("grant_type=client_credentials");
        if !self.scopes.is_empty() {
            form.push_str("&scope=");
            form.push_str(&form_encode(&self.scopes.join(" ")));
        }
        let headers = [
            ("Authorization".to_string(), format!("Basic {basic}")),
            (
                "Content-Type".to_string(),
                "application/x-www-form-urlencoded".to_string(),
            ),
        ];
        let (status, _, body) = crate::fetch::request(
            "POST",
            &self.token_url,
            &headers,
            form.as_bytes(),
            tls.client_config_for(&self.token_url)?.as_ref(),
            timeout,
        )?;
        if status != 200 {
            return Err(format!(
                "oauth2 token endpoint {} answered {status}",
                self.token_url
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| format!("oauth2 token endpoint {}: {e}", self.token_url))?;
        let token = v
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("oauth2 token endpoint {}: no access_token", self.token_url))?
            .to_string();
        check_value("oauth2 access_token", &token)?;
        // Ask again when 90% of its lifetime has passed (an hour when it does not say).
        let lifetime = v
            .get("expires_in")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_mul(9) / 10);
        *cache = Some((token.clone(), until));
        Ok(token)
    }
}

/// `application/x-www-form-urlencoded` for one value: a URL component with `+` for a space
/// (a `%20` in the encoding can only come from a space: `%` itself is `%25`).
fn form_encode(s: &str) -> String {
    arbiter_engine::path::encode_component(s).replace("%20", "+")
}

impl ServiceTls {
    /// The rustls configuration for `url`: `None` for `http://`.
    pub fn client_config_for(
        &self,
        url: &str,
    ) -> Result<Option<Arc<rustls::ClientConfig>>, String> {
        if url.starts_with("https://") {
            self.client_config()
                .map(|c| Some(Arc::new(c)))
                .map_err(|e| format!("{url}: {e}"))
        } else {
            Ok(None)
        }
    }

    /// The rustls configuration for this service.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, String> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let mut roots = rustls::RootCertStore::empty();
        if self.ca_cert.is_none() || self.system_ca_required {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
        if let Some(ca) = &self.ca_cert {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca)
                .and_then(Iterator::collect)
                .map_err(|e| format!("tls.ca_cert {}: {e}", ca.display()))?;
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| format!("tls.ca_cert {}: {e}", ca.display()))?;
            }
        }
        if roots.is_empty() {
            return Err("no trusted root certificates: give tls.ca_cert".into());
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        match &self.client_cert {
            None => Ok(builder.with_no_client_auth()),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                    .and_then(Iterator::collect)
                    .map_err(|e| format!("credentials.client_tls.cert {}: {e}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                    format!("credentials.client_tls.private_key {}: {e}", key.display())
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("credentials.client_tls: {e}"))
            }
        }
    }
}

/// `credentials.bearer`: `Authorization: <scheme> <token>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    /// `scheme`, `Bearer` by default.
    pub scheme: String,
    pub token: BearerToken,
}

/// Where the token comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerToken {
    /// `token`.
    Literal(String),
    /// `token_path`: read at every request, as OPA does, so a rotated token is picked up.
    File(PathBuf),
}

impl ServiceAuth {
    /// A service with only a bearer token (`Bearer` scheme).
    pub fn bearer(token: impl Into<String>) -> Self {
        ServiceAuth {
            bearer: Some(Bearer {
                scheme: "Bearer".into(),
                token: BearerToken::Literal(token.into()),
            }),
            ..ServiceAuth::default()
        }
    }

    /// Check names and values once, when the configuration is read: a value with a line
    /// break would smuggle a header (or a request) into every download.
    pub fn validate(&self) -> Result<(), String> {
        for (k, v) in &self.headers {
            if k.is_empty() || !k.bytes().all(is_token_byte) {
                return Err(format!("header name `{k}` is not an HTTP token"));
            }
            check_value(k, v)?;
        }
        if let Some(b) = &self.bearer {
            if b.scheme.is_empty() || !b.scheme.bytes().all(is_token_byte) {
                return Err(format!(
                    "credentials.bearer.scheme `{}` is not an HTTP token",
                    b.scheme
                ));
            }
            if let BearerToken::Literal(t) = &b.token {
                check_value("credentials.bearer.token", t)?;
            }
        }
        Ok(())
    }

    /// The headers for one request; an OAuth2 token is fetched (or taken from the cache)
    /// within `timeout`.
    pub fn headers_within(&self, timeout: Duration) -> Result<Vec<(String, String)>, String> {
        let mut out = self.request_headers()?;
        if let Some(o) = &self.oauth2 {
            out.push((
                "Authorization".into(),
                format!("Bearer {}", o.token(&self.tls, timeout)?),
            ));
        }
        Ok(out)
    }

    /// The static and bearer headers for one request.
    pub fn request_headers(&self) -> Result<Vec<(String, String)>, String> {
        let mut out = self.headers.clone();
        if let Some(b) = &self.bearer {
            let token = match &b.token {
                BearerToken::Literal(t) => t.clone(),
                BearerToken::File(p) => {
                    let t = std::fs::read_to_string(p).map_err(|e| {
                        format!("credentials.bearer.token_path {}: {e}", p.display())
                    })?;
                    let t = t.trim().to_string();
                    check_value("credentials.bearer.token_path", &t)?;
                    t
                }
            };
            out.push(("Authorization".into(), format!("{} {token}", b.scheme)));
        }
        Ok(out)
    }
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn check_value(what: &str, v: &str) -> Result<(), String> {
    if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(format!("{what}: the value holds a line break or NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_then_the_token_and_a_token_file_is_read_each_time() {
        let dir = std::env::temp_dir().join(format!("arbiter-service-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "first\n").unwrap();
        let auth = ServiceAuth {
            headers: vec![("X-Tenant".into(), "acme".into())],
            bearer: Some(Bearer {
                scheme: "Token".into(),
                token: BearerToken::File(file.clone()),
            }),
            ..ServiceAuth::default()
        };
        auth.validate().unwrap();
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            auth.request_headers().unwrap(),
            [
                pair("X-Tenant", "acme"),
                pair("Authorization", "Token first")
            ]
        );
        std::fs::write(&file, "second").unwrap();
        assert_eq!(
            auth.request_headers().unwrap().last(),
            Some(&pair("Authorization", "Token second"))
        );
        std::fs::remove_file(&file).unwrap();
        assert!(auth.request_headers().unwrap_err().contains("token_path"));
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(
            ServiceAuth::bearer("t0k").request_headers().unwrap(),
            [pair("Authorization", "Bearer t0k")]
        );
    }

    #[test]
    fn line_breaks_are_refused() {
        let smuggle = ServiceAuth {
            headers: vec![("X-A".into(), "1\r\nX-Admin: yes".into())],
            ..ServiceAuth::default()
        };
        assert!(smuggle.validate().is_err());
        assert!(ServiceAuth::bearer("a\nb").validate().is_err());
        let name = ServiceAuth {
            headers: vec![("X A".into(), "1".into())],
            ..ServiceAuth::default()
        };
        assert!(name.validate().is_err());
    }
}

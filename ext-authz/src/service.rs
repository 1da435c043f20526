//! What every request to one of OPA's `services` carries: its `headers` and its
//! `credentials.bearer`. Bundle downloads and decision-log uploads both take their header
//! lines from here, so a service's credentials mean the same thing on both paths.

use std::path::PathBuf;

/// Headers and credentials of one service.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServiceAuth {
    /// `services.*.headers`, in order.
    pub headers: Vec<(String, String)>,
    /// `services.*.credentials.bearer`.
    pub bearer: Option<Bearer>,
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
            headers: Vec::new(),
            bearer: Some(Bearer {
                scheme: "Bearer".into(),
                token: BearerToken::Literal(token.into()),
            }),
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

    /// The header lines (each ending in CRLF) for one request.
    pub fn header_lines(&self) -> Result<String, String> {
        let mut out = String::new();
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
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
            out.push_str(&format!("Authorization: {} {token}\r\n", b.scheme));
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
        };
        auth.validate().unwrap();
        assert_eq!(
            auth.header_lines().unwrap(),
            "X-Tenant: acme\r\nAuthorization: Token first\r\n"
        );
        std::fs::write(&file, "second").unwrap();
        assert!(auth.header_lines().unwrap().ends_with("Token second\r\n"));
        std::fs::remove_file(&file).unwrap();
        assert!(auth.header_lines().unwrap_err().contains("token_path"));
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(
            ServiceAuth::bearer("t0k").header_lines().unwrap(),
            "Authorization: Bearer t0k\r\n"
        );
    }

    #[test]
    fn line_breaks_are_refused() {
        let smuggle = ServiceAuth {
            headers: vec![("X-A".into(), "1\r\nX-Admin: yes".into())],
            bearer: None,
        };
        assert!(smuggle.validate().is_err());
        assert!(ServiceAuth::bearer("a\nb").validate().is_err());
        let name = ServiceAuth {
            headers: vec![("X A".into(), "1".into())],
            bearer: None,
        };
        assert!(name.validate().is_err());
    }
}

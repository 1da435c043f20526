//! Workload identity: strict SPIFFE IDs.
//!
//! A [`SpiffeId`] is parsed exactly as the SPIFFE-ID standard says: the scheme is `spiffe`, the
//! trust domain is lower-case `[a-z0-9.-_]` (no port, no userinfo, no percent-encoding, at most
//! 255 bytes), path segments are `[a-zA-Z0-9.-_]`, never empty, `.` or `..`, no trailing `/`, no
//! query or fragment, and the whole ID is at most 2048 bytes. Nothing is trimmed or
//! case-folded: `SPIFFE://…`, `spiffe://Example.org/…` and ` spiffe://…` are not SPIFFE IDs.

use std::fmt;

use regorus::Value;

pub mod chain;
pub mod jwt_svid;
#[cfg(test)]
mod props;
mod resolve;
pub mod xfcc;

pub use jwt_svid::{JwtSvidInfo, JwtSvidOptions};
pub use resolve::{
    Identity, IdentityOptions, IdentityOutcome, IdentitySource, SvidInfo, resolve, resolve_at,
    svid_from_certificate,
};

/// Longest SPIFFE ID accepted, in bytes.
pub const MAX_ID_BYTES: usize = 2048;
/// Longest trust domain accepted, in bytes.
pub const MAX_TRUST_DOMAIN_BYTES: usize = 255;

/// Why a string is not a SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiffeIdError {
    Empty,
    WrongScheme,
    MissingTrustDomain,
    BadTrustDomainChar(char),
    TrustDomainTooLong,
    BadPathChar(char),
    EmptySegment,
    DotSegment,
    TrailingSlash,
    TooLong,
    NotAWorkload,
}

impl fmt::Display for SpiffeIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeIdError::Empty => f.write_str("empty SPIFFE ID"),
            SpiffeIdError::WrongScheme => f.write_str("scheme is not `spiffe://`"),
            SpiffeIdError::MissingTrustDomain => f.write_str("trust domain is missing"),
            SpiffeIdError::BadTrustDomainChar(c) => write!(
                f,
                "trust domain contains `{}`; only lower-case letters, digits, `.`, `-` and `_` are allowed",
                c.escape_default()
            ),
            SpiffeIdError::TrustDomainTooLong => {
                write!(
                    f,
                    "trust domain is longer than {MAX_TRUST_DOMAIN_BYTES} bytes"
                )
            }
            SpiffeIdError::BadPathChar(c) => write!(
                f,
                "path contains `{}`; only letters, digits, `.`, `-` and `_` are allowed",
                c.escape_default()
            ),
            SpiffeIdError::EmptySegment => f.write_str("path contains an empty segment"),
            SpiffeIdError::DotSegment => f.write_str("path contains a `.` or `..` segment"),
            SpiffeIdError::TrailingSlash => f.write_str("path ends with `/`"),
            SpiffeIdError::TooLong => write!(f, "SPIFFE ID is longer than {MAX_ID_BYTES} bytes"),
            SpiffeIdError::NotAWorkload => {
                f.write_str("a workload identity needs a path after the trust domain")
            }
        }
    }
}

impl std::error::Error for SpiffeIdError {}

/// A valid SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SpiffeId {
    id: String,
    /// Byte length of `spiffe://<trust domain>`.
    td_end: usize,
}

const SCHEME: &str = "spiffe://";

/// A trust domain as bundles are keyed by it: exactly what a SPIFFE ID's trust domain may be
/// (`example.org`, not `example.org/x` or `Example.org`).
pub fn check_trust_domain(trust_domain: &str) -> Result<(), String> {
    match SpiffeId::parse(&format!("spiffe://{trust_domain}")) {
        Ok(id) if id.trust_domain() == trust_domain => Ok(()),
        _ => Err(format!("`{trust_domain}` is not a valid trust domain")),
    }
}

impl SpiffeId {
    /// Parse any SPIFFE ID, the trust domain's own (`spiffe://example.org`) included.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_ID_BYTES {
            return Err(SpiffeIdError::TooLong);
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        let td_len = rest.find('/').unwrap_or(rest.len());
        let td = &rest[..td_len];
        if td.is_empty() {
            return Err(SpiffeIdError::MissingTrustDomain);
        }
        if td.len() > MAX_TRUST_DOMAIN_BYTES {
            return Err(SpiffeIdError::TrustDomainTooLong);
        }
        if let Some(c) = td.chars().find(|c| {
            !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_'))
        }) {
            return Err(SpiffeIdError::BadTrustDomainChar(c));
        }
        let path = &rest[td_len..];
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(SpiffeIdError::TrailingSlash);
            }
            for seg in path[1..].split('/') {
                if seg.is_empty() {
                    return Err(SpiffeIdError::EmptySegment);
                }
                if seg == "." || seg == ".." {
                    return Err(SpiffeIdError::DotSegment);
                }
                if let Some(c) = seg
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
                {
                    return Err(SpiffeIdError::BadPathChar(c));
                }
            }
        }
        Ok(Self {
            id: s.to_string(),
            td_end: SCHEME.len() + td_len,
        })
    }

    /// Parse the ID of a workload: a path is required (a trust domain alone is not a leaf).
    pub fn parse_workload(s: &str) -> Result<Self, SpiffeIdError> {
        let id = Self::parse(s)?;
        if id.path().is_empty() {
            return Err(SpiffeIdError::NotAWorkload);
        }
        Ok(id)
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    pub fn trust_domain(&self) -> &str {
        &self.id[SCHEME.len()..self.td_end]
    }

    /// The path, with its leading `/` (`""` for a trust domain ID).
    pub fn path(&self) -> &str {
        &self.id[self.td_end..]
    }

    pub fn segments(&self) -> Vec<&str> {
        let p = self.path();
        if p.is_empty() {
            Vec::new()
        } else {
            p[1..].split('/').collect()
        }
    }

    /// `{spiffe_id, trust_domain, path, segments}`, as `spiffe.parse` returns it.
    pub fn to_value(&self) -> Value {
        let mut o = Value::new_object();
        if let Ok(m) = o.as_object_mut() {
            m.insert(Value::from("spiffe_id"), Value::from(self.as_str()));
            m.insert(
                Value::from("trust_domain"),
                Value::from(self.trust_domain()),
            );
            m.insert(Value::from("path"), Value::from(self.path()));
            m.insert(
                Value::from("segments"),
                Value::from(
                    self.segments()
                        .into_iter()
                        .map(Value::from)
                        .collect::<Vec<_>>(),
                ),
            );
        }
        o
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

/// Match a SPIFFE ID against a pattern such as `spiffe://example.org/ns/*/sa/**`: the trust
/// domain is compared exactly, then the path segment by segment, `*` matching one segment and
/// `**` any number (zero included). Anything that is not a valid SPIFFE ID never matches.
pub fn spiffe_match(id: &str, pattern: &str) -> bool {
    let Ok(id) = SpiffeId::parse(id) else {
        return false;
    };
    let Some(rest) = pattern.strip_prefix(SCHEME) else {
        return false;
    };
    let td_len = rest.find('/').unwrap_or(rest.len());
    if &rest[..td_len] != id.trust_domain() {
        return false;
    }
    let pat: Vec<&str> = rest[td_len..]
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    matches(&pat, &id.segments())
}

fn matches(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|i| matches(rest, &s[i..])),
        Some((&"*", rest)) => !s.is_empty() && matches(rest, &s[1..]),
        Some((lit, rest)) => s.first() == Some(lit) && matches(rest, &s[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_ids() {
        // reliability.md §3 D13: these must be accepted.
        for ok in [
            "spiffe://example.org/ns/prod/sa/web",
            "spiffe://example.org/.path",
            "spiffe://example.org/..path",
            "spiffe://example.org/...",
            "spiffe://10.0.0.1/ns/x",
            "spiffe://example.org",
        ] {
            assert!(SpiffeId::parse(ok).is_ok(), "{ok}");
        }
        let exact = format!("spiffe://example.org/{}", "a".repeat(MAX_ID_BYTES - 21));
        assert_eq!(exact.len(), MAX_ID_BYTES);
        assert!(SpiffeId::parse(&exact).is_ok());
        let id = SpiffeId::parse("spiffe://example.org/ns/prod/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/web");
        assert_eq!(id.segments(), vec!["ns", "prod", "sa", "web"]);
    }

    #[test]
    fn rejects_every_malformed_class() {
        // reliability.md §3 D1–D12.
        let long = format!("spiffe://example.org/{}", "a".repeat(MAX_ID_BYTES));
        let long_td = format!("spiffe://{}/x", "a".repeat(256));
        for bad in [
            "spiffe://",
            "spiffe:///",
            "spiffe://example.org/",
            "spiffe://example.org/ns/",
            "spiffe://example.org//ns",
            "spiffe://example.org/ns//sa",
            "spiffe://example.org/./ns",
            "spiffe://example.org/ns/..",
            "spiffe://example.org/../admin",
            "spiffe://Example.org/ns/x",
            "spiffe://example.org:8443/ns/x",
            "spiffe://user@example.org/ns/x",
            "spiffe://example.org/ns/x?y=1",
            "spiffe://example.org/ns/x#y",
            "spiffe://%65xample.org/ns/x",
            "spiffe://example.org/ns/%41",
            "spiffe://example.org/ns/x$",
            "spiffe://example.org/ns/😀",
            "spiffe://[::1]/ns/x",
            "SPIFFE://example.org/ns/x",
            "https://example.org/ns/x",
            " spiffe://example.org/ns/x",
            long.as_str(),
            long_td.as_str(),
            "",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            SpiffeId::parse_workload("spiffe://example.org"),
            Err(SpiffeIdError::NotAWorkload)
        );
    }

    #[test]
    fn matching_is_segment_wise_and_trust_domain_exact() {
        assert!(spiffe_match(
            "spiffe://example.org/ns/prod/sa/web",
            "spiffe://example.org/ns/*/sa/*"
        ));
        assert!(spiffe_match(
            "spiffe://example.org/ns/prod/sa/web",
            "spiffe://example.org/ns/prod/**"
        ));
        assert!(spiffe_match(
            "spiffe://example.org/ns/prod",
            "spiffe://example.org/ns/prod/**"
        ));
        // reliability.md C9: no string-prefix matching, no trust-domain suffix confusion.
        assert!(!spiffe_match(
            "spiffe://example.org/ns/production/sa/x",
            "spiffe://example.org/ns/prod/**"
        ));
        assert!(!spiffe_match(
            "spiffe://example.org.evil.com/ns/prod/sa/x",
            "spiffe://example.org/ns/prod/**"
        ));
        assert!(!spiffe_match(
            "spiffe://evil.org/ns/prod/sa/web",
            "spiffe://example.org/**"
        ));
        assert!(!spiffe_match(
            "spiffe://example.org//ns",
            "spiffe://example.org/**"
        ));
        assert!(!spiffe_match(
            "spiffe://example.org/ns/prod/sa/web",
            "spiffe://example.org/ns/*"
        ));
    }
}

//! References into the `data` document, built from segments and never from query text.
//!
//! OPA's Data API once turned the URL path into Rego query text, and a crafted path injected
//! Rego (CVE-2025-46569). A [`DataRef`] is a list of segments; when regorus needs text, each
//! segment that is not a plain identifier is written as a quoted string in brackets, so no
//! segment can ever be read as anything but a key.

use std::fmt;

/// A path into `data`, such as `envoy/authz/allow` (→ `data.envoy.authz.allow`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DataRef {
    segments: Vec<String>,
    rendered: String,
}

/// Why a decision path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataRefError {
    #[error("decision path `{0}` has an empty segment")]
    EmptySegment(String),
    #[error("decision path `{0}` contains a control character")]
    ControlCharacter(String),
}

impl DataRef {
    /// Parse a slash-separated path (`envoy/authz/allow`, `/envoy/authz/allow`) or a dotted
    /// reference (`data.envoy.authz.allow`, the form `opa eval` takes). The root (`""` or
    /// `data`) is allowed and means the whole document.
    pub fn parse(path: &str) -> Result<Self, DataRefError> {
        let trimmed = path.trim();
        let segments: Vec<&str> = if let Some(rest) = trimmed.strip_prefix("data.") {
            rest.split('.').collect()
        } else if trimmed == "data" || trimmed.is_empty() || trimmed == "/" {
            Vec::new()
        } else {
            trimmed.trim_matches('/').split('/').collect()
        };
        Self::from_segments(segments.into_iter().map(str::to_string).collect(), path)
    }

    /// Build from already-split segments (a URL path after percent-decoding each segment).
    pub fn from_segments(segments: Vec<String>, original: &str) -> Result<Self, DataRefError> {
        for s in &segments {
            if s.is_empty() {
                return Err(DataRefError::EmptySegment(original.to_string()));
            }
            if s.chars().any(char::is_control) {
                return Err(DataRefError::ControlCharacter(original.to_string()));
            }
        }
        let mut rendered = String::from("data");
        for s in &segments {
            if is_identifier(s) {
                rendered.push('.');
                rendered.push_str(s);
            } else {
                rendered.push('[');
                // serde_json produces a valid Rego string literal: same escapes.
                rendered.push_str(&serde_json::Value::String(s.clone()).to_string());
                rendered.push(']');
            }
        }
        Ok(Self { segments, rendered })
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    pub fn is_root(&self) -> bool {
        self.segments.is_empty()
    }

    /// The reference as Rego text (`data.envoy.authz.allow`, `data["a-b"].c`).
    pub fn as_rego(&self) -> &str {
        &self.rendered
    }

    /// The slash form used in decision logs and OPA's `path` field (`envoy/authz/allow`).
    pub fn slash_path(&self) -> String {
        self.segments.join("/")
    }
}

impl fmt::Display for DataRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rendered)
    }
}

const KEYWORDS: &[&str] = &[
    "as", "contains", "default", "else", "every", "false", "if", "import", "in", "not", "null",
    "package", "some", "true", "with",
];

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && !KEYWORDS.contains(&s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slash_and_dotted_forms_agree() {
        let a = DataRef::parse("envoy/authz/allow").unwrap();
        let b = DataRef::parse("data.envoy.authz.allow").unwrap();
        let c = DataRef::parse("/envoy/authz/allow").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(a.as_rego(), "data.envoy.authz.allow");
        assert_eq!(a.slash_path(), "envoy/authz/allow");
    }

    #[test]
    fn odd_segments_are_quoted_not_interpreted() {
        let r =
            DataRef::from_segments(vec!["a".into(), "b\"] = x; true #".into(), "if".into()], "")
                .unwrap();
        assert_eq!(r.as_rego(), r#"data.a["b\"] = x; true #"]["if"]"#);
    }

    #[test]
    fn empty_segments_are_refused() {
        assert!(DataRef::parse("envoy//allow").is_err());
        assert!(DataRef::parse("data").unwrap().is_root());
    }
}

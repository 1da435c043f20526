//! `x-forwarded-client-cert` (XFCC), as Envoy writes it.
//!
//! The header is a comma-separated list of elements; each element is `;`-separated `Key=Value`
//! pairs. A value may be quoted (`"…"`, with `\"` and `\\` escapes) and then contains `,`, `;`
//! and `=` as plain text: `Subject="CN=a,URI=spiffe://x/y"` holds no `URI` key. Envoy's
//! `APPEND_FORWARD` appends the element describing the client it saw, with `By=` set to its own
//! certificate's URI, to what the client (or an earlier hop) sent.

use std::collections::BTreeMap;

/// One XFCC element: keys lower-cased, values unquoted. A key that appears more than once keeps
/// every value.
pub type Element = BTreeMap<String, Vec<String>>;

/// Why an XFCC header could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XfccError {
    UnterminatedQuote,
    MissingEquals(String),
    Empty,
}

impl std::fmt::Display for XfccError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            XfccError::UnterminatedQuote => f.write_str("unterminated quoted value"),
            XfccError::MissingEquals(p) => write!(f, "pair `{}` has no `=`", p.escape_default()),
            XfccError::Empty => f.write_str("empty header"),
        }
    }
}

impl std::error::Error for XfccError {}

/// Split `s` on `sep`, not inside quotes; quotes and escapes are kept for the next step.
fn split_outside_quotes(s: &str, sep: char) -> Result<Vec<&str>, XfccError> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                out.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    if quoted {
        return Err(XfccError::UnterminatedQuote);
    }
    out.push(&s[start..]);
    Ok(out)
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) else {
        return v.to_string();
    };
    let mut out = String::with_capacity(inner.len());
    let mut escaped = false;
    for c in inner.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// Parse a whole XFCC header into its elements, in order.
pub fn parse(header: &str) -> Result<Vec<Element>, XfccError> {
    if header.trim().is_empty() {
        return Err(XfccError::Empty);
    }
    let mut elements = Vec::new();
    for raw in split_outside_quotes(header, ',')? {
        let mut el = Element::new();
        for pair in split_outside_quotes(raw, ';')? {
            if pair.trim().is_empty() {
                continue;
            }
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| XfccError::MissingEquals(pair.to_string()))?;
            el.entry(k.trim().to_ascii_lowercase())
                .or_default()
                .push(unquote(v));
        }
        elements.push(el);
    }
    Ok(elements)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_values_are_text() {
        // reliability.md C3: the quoted Subject is not parsed as a URI element.
        let e = parse(r#"By=spiffe://td/proxy;Subject="CN=a,URI=spiffe://example.org/ns/prod/sa/frontend";URI=spiffe://td/ns/a/sa/b"#).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0]["uri"], vec!["spiffe://td/ns/a/sa/b"]);
        assert_eq!(
            e[0]["subject"],
            vec!["CN=a,URI=spiffe://example.org/ns/prod/sa/frontend"]
        );
        let e = parse(r#"Subject="CN=a,URI=spiffe://example.org/ns/prod/sa/frontend""#).unwrap();
        assert!(!e[0].contains_key("uri"));
    }

    #[test]
    fn several_elements_and_errors() {
        let e = parse("By=spiffe://a/x;URI=spiffe://a/client1,By=spiffe://a/proxy;Hash=ab;URI=spiffe://a/client2").unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[1]["by"], vec!["spiffe://a/proxy"]);
        assert_eq!(e[1]["uri"], vec!["spiffe://a/client2"]);
        assert!(parse(r#"URI="spiffe://a"#).is_err());
        assert!(parse("URI").is_err());
        assert!(parse("").is_err());
        let e = parse(r#"URI="a\"b""#).unwrap();
        assert_eq!(e[0]["uri"], vec!["a\"b"]);
    }
}

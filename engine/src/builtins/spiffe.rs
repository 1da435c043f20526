//! `spiffe.parse(id)` and `spiffe.match(id, pattern)`: the same functions CEL policies have.

use regorus::Value;

use super::{Registrar, string_arg};
use crate::identity::{SpiffeId, spiffe_match};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("spiffe.parse", 1, |a| {
        let id = string_arg(a, 1)?;
        SpiffeId::parse(id)
            .map(|s| s.to_value())
            .map_err(|e| anyhow::anyhow!("`{}` is not a SPIFFE ID: {e}", id.escape_default()))
    });
    r.add("spiffe.match", 2, |a| {
        let id = string_arg(a, 1)?;
        let pattern = string_arg(a, 2)?;
        Ok(Value::Bool(spiffe_match(id, pattern)))
    });
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    #[test]
    fn parse_and_match() {
        assert_eq!(
            eval(r#"spiffe.parse("spiffe://example.org/ns/prod/sa/web")"#).unwrap(),
            json!({"spiffe_id": "spiffe://example.org/ns/prod/sa/web", "trust_domain": "example.org", "path": "/ns/prod/sa/web", "segments": ["ns", "prod", "sa", "web"]})
        );
        assert!(eval(r#"spiffe.parse("spiffe://Example.org/x")"#).is_err());
        assert_eq!(eval(r#"spiffe.match("spiffe://example.org/ns/prod/sa/web", "spiffe://example.org/ns/*/sa/**")"#).unwrap(), json!(true));
        assert_eq!(eval(r#"spiffe.match("spiffe://example.org.evil.com/ns/prod", "spiffe://example.org/**")"#).unwrap(), json!(false));
    }
}

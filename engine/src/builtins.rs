//! Built-ins OPA users rely on that regorus lacks, added as regorus extensions.
//!
//! | family | functions |
//! |---|---|
//! | JWT | `io.jwt.decode`, `io.jwt.decode_verify`, `io.jwt.verify_{hs,rs,ps,es}*`, `io.jwt.verify_eddsa`, `io.jwt.encode_sign_raw`, `io.jwt.encode_sign` (HS*, ES*) |
//! | X.509 | `crypto.x509.parse_certificates`, `crypto.x509.parse_and_verify_certificates` |
//! | keys | `crypto.x509.parse_rsa_private_key`, `crypto.parse_private_keys` (RSA) |
//! | crypto | `crypto.md5`, `crypto.sha1`, `crypto.sha256`, `crypto.hmac.{md5,sha1,sha256,sha512,equal}` |
//! | net | `net.cidr_intersects`, `net.cidr_overlap`, `net.cidr_merge`, `net.cidr_contains_matches` |
//! | arrays | `array.flatten` (OPA 1.x) |
//! | AWS | `providers.aws.sign_req` (Signature Version 4) |
//! | globs | `regex.globs_match` |
//! | JSON Schema | `json.verify_schema`, `json.match_schema` |
//! | GraphQL | `graphql.parse`, `graphql.parse_query`, `graphql.parse_schema`, `graphql.parse_and_verify`, `graphql.is_valid`, `graphql.schema_is_valid` |
//! | SPIFFE | `spiffe.parse`, `spiffe.match` (arbiter's own; the same functions CEL has) |
//!
//! Results follow OPA's byte for byte (the OPA conformance suite checks them; see
//! `conformance/opa-results.md`). Errors carry OPA's messages. When an engine runs without strict
//! built-in errors (only the conformance runner does), an error makes the call undefined, as in
//! OPA.

use regorus::Value;

pub mod array;
pub mod aws;
pub mod crypto;
pub mod encoding;
pub mod globs;
pub mod graphql;
pub mod jose;
pub mod jwt;
pub mod keys;
pub mod net;
pub mod schema;
pub mod spiffe;
pub mod x509;

/// Register every arbiter built-in on `engine`.
pub fn register(engine: &mut regorus::Engine, strict: bool) {
    let mut r = Registrar { engine, strict };
    array::register(&mut r);
    aws::register(&mut r);
    jwt::register(&mut r);
    keys::register(&mut r);
    crypto::register(&mut r);
    globs::register(&mut r);
    graphql::register(&mut r);
    net::register(&mut r);
    schema::register(&mut r);
    spiffe::register(&mut r);
    x509::register(&mut r);
}

/// Adds extensions, wrapping them for the engine's error mode.
pub(crate) struct Registrar<'a> {
    engine: &'a mut regorus::Engine,
    strict: bool,
}

/// The names of every built-in arbiter adds (filled as engines register them).
static NAMES: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Whether `name` is one of the built-ins arbiter adds.
pub fn is_added(name: &str) -> bool {
    NAMES.lock().is_ok_and(|n| n.contains(name))
}

impl Registrar<'_> {
    pub(crate) fn add<F>(&mut self, name: &str, nargs: u8, f: F)
    where
        F: Fn(&[Value]) -> anyhow::Result<Value> + Clone + Send + Sync + 'static,
    {
        if let Ok(mut names) = NAMES.lock()
            && !names.contains(name)
        {
            names.insert(name.to_string());
        }
        let strict = self.strict;
        let fname = name.to_string();
        let vm_f = f.clone();
        // OPA reports built-in errors as `<name>: <message>`.
        let ext = move |args: Vec<Value>| -> anyhow::Result<Value> {
            match f(&args) {
                Ok(v) => Ok(v),
                Err(e) if strict => Err(anyhow::anyhow!("{fname}: {e}")),
                Err(_) => Ok(Value::Undefined),
            }
        };
        // Registration only fails for a duplicate name, which would be a bug caught by the
        // tests that call every built-in.
        let _ = self
            .engine
            .add_extension(name.to_string(), nargs, Box::new(ext));
        // The same function for the RVM, which resolves built-ins by name (vendored regorus,
        // patch 4). Its errors are always strict; the VM makes them undefined when it is not.
        let vm_name = name.to_string();
        regorus::register_vm_extension(
            name,
            nargs,
            std::sync::Arc::new(move |args: &[Value]| {
                vm_f(args).map_err(|e| anyhow::anyhow!("{vm_name}: {e}"))
            }),
        );
    }
}

/// The string operand at 1-based position `pos`, with OPA's error for anything else.
pub(crate) fn string_arg(args: &[Value], pos: usize) -> anyhow::Result<&str> {
    match args.get(pos - 1) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => anyhow::bail!(
            "operand {pos} must be string but got {}",
            crate::decision::type_name(other)
        ),
        None => anyhow::bail!("missing operand {pos}"),
    }
}

/// Go's `strconv.Quote`.
pub fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c if c.is_control() => {
                if (c as u32) < 0x10000 {
                    out.push_str(&format!("\\u{:04x}", c as u32))
                } else {
                    out.push_str(&format!("\\U{:08x}", c as u32))
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Parse JSON text into a Rego value (numbers keep their precision; duplicate keys: last wins,
/// as Go's `encoding/json` does).
pub(crate) fn json_to_value(text: &str) -> anyhow::Result<Value> {
    let json: serde_json::Value = serde_json::from_str(text)?;
    Ok(crate::value::from_json(&json))
}

#[cfg(test)]
pub(crate) mod testutil {
    use crate::value::{from_json, to_json};
    use regorus::Value;

    /// Evaluate a Rego expression with arbiter's built-ins (strict errors).
    pub fn eval(expr: &str) -> anyhow::Result<serde_json::Value> {
        let mut engine = crate::rego::new_engine(&crate::rego::EngineOptions::default());
        engine.add_policy("t.rego".into(), format!("package t\nx := {expr}\n"))?;
        let v = engine.eval_rule("data.t.x".into())?;
        if v == Value::Undefined {
            anyhow::bail!("undefined");
        }
        Ok(to_json(&v))
    }

    pub fn eval_with_input(
        expr: &str,
        input: serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        let mut engine = crate::rego::new_engine(&crate::rego::EngineOptions::default());
        engine.add_policy("t.rego".into(), format!("package t\nx := {expr}\n"))?;
        engine.set_input(from_json(&input));
        let v = engine.eval_rule("data.t.x".into())?;
        if v == Value::Undefined {
            anyhow::bail!("undefined");
        }
        Ok(to_json(&v))
    }
}

/// What regorus patches 22 and 23 give a policy, through arbiter's engine.
#[cfg(test)]
mod tests {
    use super::testutil::eval;

    #[test]
    fn arithmetic_is_opas_big_float() {
        assert_eq!(eval("0.1 + 0.2 == 0.3").unwrap(), serde_json::json!(true));
        assert_eq!(
            eval("1 / 3.0").unwrap().to_string(),
            "0.33333333333333333334"
        );
        assert_eq!(eval("0 * -7.25").unwrap().to_string(), "-0");
        assert_eq!(eval("[- 5, - 2.50]").unwrap().to_string(), "[-5,-2.50]");
    }

    #[test]
    fn sprintf_refuses_a_text_past_its_bound() {
        // 70 verbs of width 10^6 would be 70 MB; the bound is 64 MiB.
        let fmt = "%1000000d".repeat(70);
        let args = vec!["1"; 70].join(", ");
        let err = eval(&format!("sprintf({fmt:?}, [{args}])")).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");
        // One such verb is fine.
        let one = eval("sprintf(\"%1000000d\", [1])").unwrap();
        assert_eq!(one.as_str().map(str::len), Some(1_000_000));
    }
}

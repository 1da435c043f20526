//! `io.jwt.*`, following OPA's `topdown/tokens.go`: the same results, the same checks in the same
//! order, the same error messages.

use regorus::Value;

use super::encoding::{base64url_decode, base64url_encode_raw};
use super::jose::{self, Key, KeyEntry};
use super::{Registrar, json_to_value, string_arg};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("io.jwt.decode", 1, |a| decode(&a[0]));
    r.add("io.jwt.decode_verify", 2, |a| decode_verify(&a[0], &a[1]));
    for (name, alg) in [
        ("io.jwt.verify_rs256", "RS256"),
        ("io.jwt.verify_rs384", "RS384"),
        ("io.jwt.verify_rs512", "RS512"),
        ("io.jwt.verify_ps256", "PS256"),
        ("io.jwt.verify_ps384", "PS384"),
        ("io.jwt.verify_ps512", "PS512"),
        ("io.jwt.verify_es256", "ES256"),
        ("io.jwt.verify_es384", "ES384"),
        ("io.jwt.verify_es512", "ES512"),
        ("io.jwt.verify_eddsa", "EdDSA"),
    ] {
        r.add(name, 2, move |a| verify_with_keys(a, alg));
    }
    for (name, alg) in [
        ("io.jwt.verify_hs256", "HS256"),
        ("io.jwt.verify_hs384", "HS384"),
        ("io.jwt.verify_hs512", "HS512"),
    ] {
        r.add(name, 2, move |a| verify_hmac(a, alg));
    }
    r.add("io.jwt.encode_sign_raw", 3, |a| {
        let headers = string_arg(a, 1)?;
        let payload = string_arg(a, 2)?;
        let jwk = string_arg(a, 3)?;
        encode_sign(headers, payload, jwk)
    });
    r.add("io.jwt.encode_sign", 3, |a| {
        let headers = go_json(&a[0]);
        let payload = go_json(&a[1]);
        let jwk = go_json(&a[2]);
        encode_sign(&headers, &payload, &jwk)
    });
}

/// A token split into its three segments.
struct Token<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
}

fn split(token: &Value) -> anyhow::Result<Token<'_>> {
    let Value::String(s) = token else {
        anyhow::bail!(
            "operand 1 must be string but got {}",
            crate::decision::type_name(token)
        );
    };
    if !s.contains('.') {
        anyhow::bail!("encoded JWT had no period separators");
    }
    let parts: Vec<&str> = s.split('.').collect();
    if parts.len() != 3 {
        anyhow::bail!("encoded JWT must have 3 sections, found {}", parts.len());
    }
    Ok(Token {
        header: parts[0],
        payload: parts[1],
        signature: parts[2],
    })
}

fn to_text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

fn json_object(text: &str) -> anyhow::Result<Value> {
    let v = json_to_value(text).map_err(|e| anyhow::anyhow!("invalid JSON: {e}"))?;
    if !matches!(v, Value::Object(_)) {
        anyhow::bail!("decoded JSON type was not an Object");
    }
    Ok(v)
}

impl Token<'_> {
    fn decoded_header(&self) -> anyhow::Result<Value> {
        let bytes = base64url_decode(self.header)
            .map_err(|e| anyhow::anyhow!("JWT header had invalid encoding: {e}"))?;
        let header =
            json_object(&to_text(bytes)).map_err(|e| anyhow::anyhow!("bad JWT header: {e}"))?;
        if header["enc"] != Value::Undefined {
            anyhow::bail!("JWT is a JWE object, which is not supported");
        }
        Ok(header)
    }

    fn decoded_payload_text(&self) -> anyhow::Result<String> {
        let bytes = base64url_decode(self.payload)
            .map_err(|e| anyhow::anyhow!("JWT payload had invalid encoding: {e}"))?;
        Ok(to_text(bytes))
    }

    fn decoded_signature(&self) -> anyhow::Result<Vec<u8>> {
        base64url_decode(self.signature).map_err(|e| anyhow::anyhow!("{e}"))
    }

    fn signing_input(&self) -> String {
        format!("{}.{}", self.header, self.payload)
    }
}

/// `io.jwt.decode(token)` → `[header, payload, signature_hex]`.
fn decode(token: &Value) -> anyhow::Result<Value> {
    let t = split(token)?;
    let header = t.decoded_header()?;
    let payload_text = t.decoded_payload_text()?;
    if header["cty"] == Value::from("JWT") {
        // A nested token: its payload is the inner token, possibly quoted.
        let inner = payload_text.trim_matches(|c| c == '"' || c == '\'');
        return decode(&Value::from(inner));
    }
    let payload = json_object(&payload_text)?;
    let sig = base64url_decode(t.signature)
        .map_err(|e| anyhow::anyhow!("JWT signature had invalid encoding: {e}"))?;
    Ok(Value::from(vec![
        header,
        payload,
        Value::from(hex::encode(sig)),
    ]))
}

/// The header fields OPA recognises.
#[derive(Default)]
struct Header {
    alg: String,
    kid: String,
    cty: String,
    crit: Vec<String>,
    unknown: Vec<String>,
}

fn parse_header(h: &Value) -> anyhow::Result<Header> {
    let mut out = Header::default();
    let Ok(obj) = h.as_object() else {
        return Ok(out);
    };
    for (k, v) in obj.iter() {
        let Value::String(name) = k else { continue };
        let string = |what: &str| -> anyhow::Result<String> {
            match v {
                Value::String(s) => Ok(s.to_string()),
                _ => anyhow::bail!("{what}: must be a string"),
            }
        };
        match name.as_ref() {
            "alg" => out.alg = string("alg")?,
            "kid" => out.kid = string("kid")?,
            "typ" => {
                string("typ")?;
            }
            "cty" => out.cty = string("cty")?,
            "crit" => {
                let Value::Array(items) = v else {
                    anyhow::bail!("crit: must be a list");
                };
                for item in items.iter() {
                    if let Value::String(s) = item {
                        out.crit.push(s.to_string());
                    }
                }
                if out.crit.is_empty() {
                    anyhow::bail!("crit: must be a nonempty list");
                }
            }
            other => out.unknown.push(other.to_string()),
        }
    }
    Ok(out)
}

impl Header {
    fn valid(&self) -> bool {
        !self.alg.is_empty() && !self.unknown.iter().any(|u| self.crit.contains(u))
    }
}

/// OPA's `builtinJWTVerify`: a key whose `kid` matches is used alone; otherwise every key is
/// tried, skipping JWKS keys whose `alg` differs from the token's.
fn verify_with_keys(a: &[Value], alg: &str) -> anyhow::Result<Value> {
    let t = split(&a[0])?;
    let keys = jose::parse_keys(string_arg(a, 2)?)?;
    let sig = t.decoded_signature()?;
    let header = parse_header(&t.decoded_header()?)?;
    let input = t.signing_input();
    let ok = verify_any(&keys, &header, alg, input.as_bytes(), &sig);
    Ok(Value::Bool(ok))
}

fn verify_any(keys: &[KeyEntry], header: &Header, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    if !header.kid.is_empty()
        && let Some(k) = keys.iter().find(|k| k.kid == header.kid)
    {
        return jose::verify(&k.key, alg, msg, sig);
    }
    keys.iter()
        .filter(|k| k.alg.is_empty() || k.alg == header.alg)
        .any(|k| jose::verify(&k.key, alg, msg, sig))
}

fn verify_hmac(a: &[Value], alg: &str) -> anyhow::Result<Value> {
    string_arg(a, 1)?;
    let secret = string_arg(a, 2)?;
    let t = split(&a[0])?;
    let sig = t.decoded_signature()?;
    let input = t.signing_input();
    Ok(Value::Bool(jose::hmac_verify(
        alg,
        secret.as_bytes(),
        input.as_bytes(),
        &sig,
    )))
}

/// Parsed `io.jwt.decode_verify` constraints.
struct Constraints {
    keys: Option<Vec<KeyEntry>>,
    secret: String,
    alg: String,
    iss: String,
    aud: String,
    /// Nanoseconds since the epoch.
    time: f64,
}

fn parse_constraints(c: &Value) -> anyhow::Result<Constraints> {
    let Ok(obj) = c.as_object() else {
        anyhow::bail!(
            "operand 2 must be object but got {}",
            crate::decision::type_name(c)
        );
    };
    let mut out = Constraints {
        keys: None,
        secret: String::new(),
        alg: String::new(),
        iss: String::new(),
        aud: String::new(),
        time: -1.0,
    };
    for (k, v) in obj.iter() {
        let name = match k {
            Value::String(s) => s.to_string(),
            other => crate::value::to_json(other).to_string(),
        };
        let string = |what: &str| -> anyhow::Result<String> {
            match v {
                Value::String(s) => Ok(s.to_string()),
                _ => anyhow::bail!("{what} constraint: must be a string"),
            }
        };
        match name.as_str() {
            "cert" => {
                let Value::String(s) = v else {
                    anyhow::bail!("cert constraint: must be a string");
                };
                out.keys = Some(jose::parse_keys(s)?);
            }
            "secret" => out.secret = string("secret")?,
            "alg" => out.alg = string("alg")?,
            "iss" => out.iss = string("iss")?,
            "aud" => out.aud = string("aud")?,
            "time" => out.time = time_from_value(v)?,
            other => anyhow::bail!("unknown token validation constraint: {other}"),
        }
    }
    if out.time < 0.0 {
        out.time = now_ns();
    }
    let n = usize::from(out.keys.is_some()) + usize::from(!out.secret.is_empty());
    if n > 1 {
        anyhow::bail!("duplicate key constraints");
    }
    if n < 1 {
        anyhow::bail!("no key constraint");
    }
    Ok(out)
}

fn time_from_value(v: &Value) -> anyhow::Result<f64> {
    if !matches!(v, Value::Number(_)) {
        anyhow::bail!("token time constraint: must be a number");
    }
    let t =
        lossy_f64(v).ok_or_else(|| anyhow::anyhow!("token time constraint: unvalid float64"))?;
    if t < 0.0 {
        anyhow::bail!("token time constraint: must not be negative");
    }
    Ok(t)
}

/// A number as the nearest `f64` (Go's `json.Number.Float64`), even when not exact.
fn lossy_f64(v: &Value) -> Option<f64> {
    crate::value::to_json(v).as_f64()
}

fn now_ns() -> f64 {
    crate::clock::now_ns() as f64
}

fn unverified() -> Value {
    Value::from(vec![
        Value::Bool(false),
        Value::new_object(),
        Value::new_object(),
    ])
}

/// What `decode_verify` found about a token apart from the clock: every check but `exp` and
/// `nbf` depends only on the token and the constraints.
#[derive(Clone)]
enum Checked {
    Unverified,
    Verified { header: Value, payload: Value },
}

/// Tokens decided recently on this thread, keyed by the token and the constraints without
/// `time`. A service mesh sees the same bearer token on many requests, and a policy often
/// verifies it more than once (Rego and CEL, or several rules); OPA caches verified tokens
/// too. Per thread, so no lock sits on the decision path; bounded, and emptied when full.
struct VerifyCache {
    entries: std::collections::HashMap<Box<str>, (Value, Checked)>,
}

/// Entries per thread, and the longest token cached (longer ones are checked every time).
const CACHE_ENTRIES: usize = 512;
const CACHE_TOKEN_BYTES: usize = 8 * 1024;

thread_local! {
    static VERIFIED: std::cell::RefCell<VerifyCache> = std::cell::RefCell::new(VerifyCache {
        entries: std::collections::HashMap::new(),
    });
}

/// The constraints that decide a token once and for all: all of them but `time`.
fn cache_key(constraints: &Value) -> Value {
    let time = Value::from("time");
    match constraints {
        Value::Object(m) if m.contains_key(&time) => {
            let mut m = (**m).clone();
            m.remove(&time);
            Value::from(m)
        }
        other => other.clone(),
    }
}

/// `io.jwt.decode_verify(token, constraints)` → `[valid, header, payload]`.
pub(crate) fn decode_verify(token: &Value, constraints: &Value) -> anyhow::Result<Value> {
    let text = match token {
        Value::String(s) if s.len() <= CACHE_TOKEN_BYTES => Some(s.as_ref()),
        _ => None,
    };
    if let Some(text) = text {
        let key = cache_key(constraints);
        let hit = VERIFIED.with(|c| {
            c.borrow()
                .entries
                .get(text)
                .filter(|(k, _)| *k == key)
                .map(|(_, checked)| checked.clone())
        });
        if let Some(checked) = hit {
            // The constraints were valid when this entry was made; only `time` can differ.
            let now = match constraints.as_object()?.get(&Value::from("time")) {
                Some(t) => time_from_value(t)?,
                None => now_ns(),
            };
            return at_time(checked, now);
        }
        let c = parse_constraints(constraints)?;
        let checked = check(token, &c)?;
        VERIFIED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.entries.len() >= CACHE_ENTRIES {
                cache.entries.clear();
            }
            cache.entries.insert(text.into(), (key, checked.clone()));
        });
        return at_time(checked, c.time);
    }
    let c = parse_constraints(constraints)?;
    at_time(check(token, &c)?, c.time)
}

/// Signature, algorithm, issuer and audience: OPA's checks before the clock, in its order.
fn check(token: &Value, c: &Constraints) -> anyhow::Result<Checked> {
    let mut current = token.clone();
    let (header, payload_text) = loop {
        let t = split(&current)?;
        let header = t.decoded_header()?;
        let h = parse_header(&header)?;
        if !h.valid() {
            return Ok(Checked::Unverified);
        }
        if !c.alg.is_empty() && c.alg != h.alg {
            return Ok(Checked::Unverified);
        }
        let sig = t.decoded_signature()?;
        // OPA knows these algorithms (EdDSA since 1.x); any other (`none` included) is an
        // error, not a token that fails to verify.
        const KNOWN: [&str; 13] = [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
            "HS256", "HS384", "HS512", "EdDSA",
        ];
        if !KNOWN.contains(&h.alg.as_str()) {
            anyhow::bail!("unknown JWS algorithm: {}", h.alg);
        }
        let input = t.signing_input();
        let verified = match &c.keys {
            Some(keys) => verify_any(keys, &h, &h.alg, input.as_bytes(), &sig),
            None => jose::verify(
                &Key::Secret(c.secret.as_bytes().to_vec()),
                &h.alg,
                input.as_bytes(),
                &sig,
            ),
        };
        if !verified {
            return Ok(Checked::Unverified);
        }
        let payload_text = t.decoded_payload_text()?;
        if h.cty.eq_ignore_ascii_case("JWT") {
            current = Value::from(payload_text);
            continue;
        }
        break (header, payload_text);
    };
    let payload = json_object(&payload_text)?;

    if !c.iss.is_empty() {
        match &payload["iss"] {
            Value::String(s) if s.as_ref() == c.iss => {}
            _ => return Ok(Checked::Unverified),
        }
    }
    match &payload["aud"] {
        Value::Undefined => {
            if !c.aud.is_empty() {
                return Ok(Checked::Unverified);
            }
        }
        aud => {
            let ok = match aud {
                Value::String(s) => s.as_ref() == c.aud,
                Value::Array(items) => items
                    .iter()
                    .any(|i| matches!(i, Value::String(s) if s.as_ref() == c.aud)),
                _ => false,
            };
            if !ok {
                return Ok(Checked::Unverified);
            }
        }
    }
    Ok(Checked::Verified { header, payload })
}

/// `exp` and `nbf` against the evaluation time (ns), then the result.
fn at_time(checked: Checked, time_ns: f64) -> anyhow::Result<Value> {
    let Checked::Verified { header, payload } = checked else {
        return Ok(unverified());
    };
    let now_s = time_ns / 1_000_000_000.0;
    match &payload["exp"] {
        Value::Undefined => {}
        n @ Value::Number(_) => {
            if now_s >= lossy_f64(n).unwrap_or(f64::INFINITY) {
                return Ok(unverified());
            }
        }
        _ => anyhow::bail!("exp value must be a number"),
    }
    match &payload["nbf"] {
        Value::Undefined => {}
        n @ Value::Number(_) => {
            if now_s < lossy_f64(n).unwrap_or(f64::NEG_INFINITY) {
                return Ok(unverified());
            }
        }
        _ => anyhow::bail!("nbf value must be a number"),
    }
    Ok(Value::from(vec![Value::Bool(true), header, payload]))
}

/// `io.jwt.encode_sign*`: sign with the first key of a JWK (set).
fn encode_sign(headers: &str, payload: &str, jwk_text: &str) -> anyhow::Result<Value> {
    let jwk: serde_json::Value = serde_json::from_str(jwk_text)?;
    let key = match jwk.get("keys") {
        Some(serde_json::Value::Array(keys)) => keys
            .first()
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no keys found in JWK set"))?,
        _ => jwk,
    };
    // OPA 1.x's wordings (its suite, `jwtencodesignheadererrors`): an empty header cannot be
    // parsed, a broken object cannot be parsed, and anything else without a string `alg` has
    // none.
    const NO_ALG: &str = "missing or invalid 'alg' header: jwsbb: header \"alg\" not found";
    let header: serde_json::Value = match serde_json::from_str(headers) {
        Ok(h) => h,
        Err(_) if headers.trim().is_empty() => anyhow::bail!(
            "missing or invalid 'alg' header: cannot parse JSON: cannot parse empty string"
        ),
        Err(_) if headers.trim_start().starts_with('{') => {
            anyhow::bail!("missing or invalid 'alg' header: cannot parse JSON")
        }
        Err(_) => anyhow::bail!(NO_ALG),
    };
    let alg = header
        .get("alg")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| anyhow::anyhow!(NO_ALG))?;
    if !matches!(
        alg,
        "RS256"
            | "RS384"
            | "RS512"
            | "PS256"
            | "PS384"
            | "PS512"
            | "ES256"
            | "ES384"
            | "ES512"
            | "HS256"
            | "HS384"
            | "HS512"
            | "EdDSA"
    ) {
        anyhow::bail!("unknown JWS algorithm: {alg}");
    }
    let typ = header.get("typ").and_then(serde_json::Value::as_str);
    if (typ.is_none() || typ == Some("JWT"))
        && serde_json::from_str::<serde_json::Value>(payload).is_err()
    {
        anyhow::bail!("type is JWT but payload is not JSON");
    }
    let signing_input = format!(
        "{}.{}",
        base64url_encode_raw(headers.as_bytes()),
        base64url_encode_raw(payload.as_bytes())
    );
    let sig = jose::sign(&key, alg, signing_input.as_bytes())?;
    Ok(Value::from(format!(
        "{signing_input}.{}",
        base64url_encode_raw(&sig)
    )))
}

/// A value as Go's `json.Marshal` writes it: compact, keys sorted, `<`, `>`, `&`, U+2028 and
/// U+2029 escaped.
pub(crate) fn go_json(v: &Value) -> String {
    let text = crate::value::to_json(v).to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests;

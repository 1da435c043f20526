//! JWT-SVIDs: a SPIFFE identity carried as a signed JWT, for callers that cannot present an
//! X.509-SVID over mTLS. Validated as the SPIFFE JWT-SVID standard says, with nothing left to
//! the token:
//!
//! - the JOSE header's `alg` is one of RS256/384/512, ES256/384/512, PS256/384/512 (never
//!   `none`, never an HMAC: a symmetric key would let every verifier mint tokens); `typ`, when
//!   present, is `JWT` or `JOSE`; no `crit` extensions; `kid` names the key;
//! - `sub` is a workload SPIFFE ID; the key is looked up **only in the JWT bundle of `sub`'s own
//!   trust domain**, by `kid` (a key of another trust domain never verifies a token);
//! - the signature verifies with that key (and the key's own `alg`, when its JWK names one,
//!   is the header's);
//! - `aud` is present (a string or a list) and holds one of the audiences this server accepts;
//! - `exp` is present and in the future; `nbf`, when present, is in the past.
//!
//! The header and claims are read by the strict JSON reader (a duplicate key is an error, so
//! the verifier and another reader cannot see different claims).

use std::collections::BTreeMap;

use serde_json::Value as Json;

use super::SpiffeId;
use crate::builtins::jose::{self, KeyEntry};

/// The algorithms the JWT-SVID standard allows.
pub const ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512",
];

/// Longest token read, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// JWT bundles per trust domain, the audiences accepted and where the token is.
#[derive(Debug, Clone, Default)]
pub struct JwtSvidOptions {
    /// Keys per trust domain (from a SPIFFE bundle or a JWKS).
    pub bundles: BTreeMap<String, Vec<KeyEntry>>,
    /// A token must name one of these in `aud`.
    pub audiences: Vec<String>,
    /// The request header holding the token (lower-case); `authorization` takes
    /// `Bearer <token>`, any other header the token itself (a `Bearer ` prefix is allowed).
    pub header: String,
}

/// What a valid JWT-SVID said besides the ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtSvidInfo {
    pub audience: Vec<String>,
    /// `exp`, RFC 3339.
    pub expires: String,
    /// `iat`, RFC 3339, when present.
    pub issued_at: Option<String>,
    pub key_id: String,
    pub alg: String,
}

impl JwtSvidOptions {
    /// Add the JWT bundle of `trust_domain`: a SPIFFE bundle (a JWKS whose JWT keys have
    /// `use: jwt-svid`; `x509-svid` keys are skipped) or a plain JWKS. Every key must have a
    /// `kid` (tokens name their key by it) and be a public key.
    pub fn add_bundle(&mut self, trust_domain: &str, text: &str) -> Result<usize, String> {
        super::check_trust_domain(trust_domain)?;
        let doc: Json = serde_json::from_str(text)
            .map_err(|e| format!("not a JWKS or SPIFFE bundle (JSON): {e}"))?;
        let Some(Json::Array(keys)) = doc.get("keys") else {
            return Err("not a JWKS or SPIFFE bundle: no `keys` list".into());
        };
        let mut added = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            match k.get("use").and_then(Json::as_str) {
                None | Some("jwt-svid" | "sig") => {}
                Some(_) => continue,
            }
            let kid = k.get("kid").and_then(Json::as_str).unwrap_or("");
            if kid.is_empty() {
                return Err(format!("key {i} has no `kid`"));
            }
            if k.get("kty").and_then(Json::as_str) == Some("oct") || k.get("d").is_some() {
                return Err(format!(
                    "key `{kid}` is not a public key (JWT bundles hold public keys only)"
                ));
            }
            let parsed =
                jose::parse_keys(&k.to_string()).map_err(|e| format!("key `{kid}`: {e}"))?;
            added.extend(parsed);
        }
        if added.is_empty() {
            return Err("no JWT-SVID key in the bundle".into());
        }
        let n = added.len();
        self.bundles
            .entry(trust_domain.to_string())
            .or_default()
            .extend(added);
        Ok(n)
    }

    /// The token in a request, from the configured header; `None` when the header is absent
    /// or is not a bearer credential (`authorization: Basic …`).
    pub fn token<'a>(&self, value: &'a str) -> Option<&'a str> {
        let v = value.trim();
        let bearer = v
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| v[7..].trim());
        if self.header == "authorization" {
            bearer
        } else {
            Some(bearer.unwrap_or(v))
        }
    }
}

fn part(s: &str, what: &str) -> Result<Vec<u8>, String> {
    crate::builtins::encoding::base64url_decode(s)
        .map_err(|_| format!("the token's {what} is not base64url"))
}

fn object(bytes: &[u8], what: &str) -> Result<Json, String> {
    let v = crate::body::parse_json_strict(bytes, 16)
        .map_err(|e| format!("the token's {what} is not a JSON object: {}", e.0))?;
    let j = crate::value::to_json(&v);
    if j.is_object() {
        Ok(j)
    } else {
        Err(format!("the token's {what} is not a JSON object"))
    }
}

fn rfc3339(secs: i64) -> String {
    crate::record::rfc3339_nanos(i128::from(secs) * 1_000_000_000)
}

fn seconds(claims: &Json, name: &str) -> Result<Option<i64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Json::Number(n)) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.is_finite())
                    .map(|f| f.floor() as i64)
            })
            .map(Some)
            .ok_or_else(|| format!("`{name}` is not a number of seconds")),
        Some(_) => Err(format!("`{name}` is not a number of seconds")),
    }
}

/// Validate `token` at `now` (seconds since the epoch).
pub fn validate(
    token: &str,
    opts: &JwtSvidOptions,
    now: i64,
) -> Result<(SpiffeId, JwtSvidInfo), String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(format!("the token is longer than {MAX_TOKEN_BYTES} bytes"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWS compact token (three dot-separated parts)".into());
    };
    let header = object(&part(h, "header")?, "header")?;
    let alg = header.get("alg").and_then(Json::as_str).unwrap_or("");
    if !ALGORITHMS.contains(&alg) {
        return Err(format!(
            "`alg` is `{}`; a JWT-SVID is signed with RS, ES or PS 256/384/512",
            alg.escape_default()
        ));
    }
    match header.get("typ") {
        None => {}
        Some(Json::String(t)) if t == "JWT" || t == "JOSE" => {}
        Some(t) => return Err(format!("`typ` is {t}; JWT or JOSE expected")),
    }
    if header.get("crit").is_some() {
        return Err("`crit` header extensions are not supported".into());
    }
    let kid = match header.get("kid") {
        Some(Json::String(k)) if !k.is_empty() => k.as_str(),
        _ => return Err("the header has no `kid` naming the signing key".into()),
    };
    let claims = object(&part(p, "claims")?, "claims")?;
    let sub = claims
        .get("sub")
        .and_then(Json::as_str)
        .ok_or("no `sub` claim")?;
    let id = SpiffeId::parse_workload(sub)
        .map_err(|e| format!("`sub` `{}` is not a SPIFFE ID: {e}", sub.escape_default()))?;
    let td = id.trust_domain();
    let bundle = opts
        .bundles
        .get(td)
        .ok_or_else(|| format!("no JWT bundle for trust domain `{td}`"))?;
    let key = bundle.iter().find(|k| k.kid == kid).ok_or_else(|| {
        format!(
            "key `{}` is not in the JWT bundle of `{td}`",
            kid.escape_default()
        )
    })?;
    if !key.alg.is_empty() && key.alg != alg {
        return Err(format!(
            "key `{kid}` is for {}, the token says {alg}",
            key.alg
        ));
    }
    let signature = part(s, "signature")?;
    let signing_input = &token[..h.len() + 1 + p.len()];
    if !jose::verify(&key.key, alg, signing_input.as_bytes(), &signature) {
        return Err(format!(
            "the signature does not verify with key `{kid}` of `{td}`"
        ));
    }
    let audience: Vec<String> = match claims.get("aud") {
        Some(Json::String(a)) => vec![a.clone()],
        Some(Json::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|a| a.as_str().map(String::from))
            .collect::<Option<_>>()
            .ok_or("`aud` holds a value that is not a string")?,
        Some(_) => return Err("`aud` is not a string or a list of strings".into()),
        None => return Err("no `aud` claim (a JWT-SVID must name its audience)".into()),
    };
    if !audience.iter().any(|a| opts.audiences.contains(a)) {
        return Err(format!(
            "`aud` {audience:?} does not name this server (accepted: {:?})",
            opts.audiences
        ));
    }
    let exp = seconds(&claims, "exp")?.ok_or("no `exp` claim (a JWT-SVID must expire)")?;
    if now >= exp {
        return Err(format!("expired at {}", rfc3339(exp)));
    }
    if let Some(nbf) = seconds(&claims, "nbf")?
        && now < nbf
    {
        return Err(format!("not valid before {}", rfc3339(nbf)));
    }
    let iat = seconds(&claims, "iat")?;
    Ok((
        id,
        JwtSvidInfo {
            audience,
            expires: rfc3339(exp),
            issued_at: iat.map(rfc3339),
            key_id: kid.to_string(),
            alg: alg.to_string(),
        },
    ))
}

#[cfg(test)]
mod tests;

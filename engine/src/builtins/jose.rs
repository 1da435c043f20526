//! Keys and signatures for the JWT built-ins: PEM certificates, PEM public keys and JWK (sets),
//! as OPA accepts them, verified and signed with aws-lc-rs.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, KeyPair, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::Value as Json;

use super::encoding::base64url_decode;

/// Elliptic curves JWS uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    P521,
}

/// A public (or symmetric) key a token can be verified with.
#[derive(Debug, Clone)]
pub enum Key {
    /// DER `SubjectPublicKeyInfo` of an RSA key.
    RsaSpki(Vec<u8>),
    /// RSA modulus and exponent (from a JWK), big-endian.
    RsaParts { n: Vec<u8>, e: Vec<u8> },
    /// EC public key: DER SPKI or an uncompressed point, and its curve.
    Ec(Curve, Vec<u8>),
    /// Ed25519 public key: DER SPKI or the raw 32 bytes.
    Ed25519(Vec<u8>),
    /// A symmetric key (`kty: oct`).
    Secret(Vec<u8>),
}

/// A key with the algorithm and key id a JWKS may attach to it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: Key,
    pub alg: String,
    pub kid: String,
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_ED25519: &str = "1.3.101.112";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_P521: &str = "1.3.132.0.35";

const KNOWN_ALGS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "HS256",
    "HS384", "HS512", "EdDSA",
];

/// OPA's `getKeysFromCertOrJWK`: a PEM certificate, a PEM public key, or a JWK / JWK set.
pub fn parse_keys(text: &str) -> anyhow::Result<Vec<KeyEntry>> {
    if text.contains("-----BEGIN") {
        let (rest, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
            .map_err(|_| anyhow::anyhow!("failed to extract a Key from the PEM certificate"))?;
        if !rest.iter().all(u8::is_ascii_whitespace) {
            anyhow::bail!("extra data after a PEM certificate block");
        }
        let key = match pem.label.as_str() {
            "CERTIFICATE" => {
                let cert = pem
                    .parse_x509()
                    .map_err(|e| anyhow::anyhow!("failed to parse a PEM certificate: {e}"))?;
                key_from_spki(cert.public_key().raw, &cert.public_key().algorithm)?
            }
            "PUBLIC KEY" => {
                use x509_parser::prelude::FromDer;
                let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents)
                    .map_err(|e| anyhow::anyhow!("failed to parse a PEM public key: {e}"))?;
                key_from_spki(&pem.contents, &spki.algorithm)?
            }
            _ => anyhow::bail!("failed to extract a Key from the PEM certificate"),
        };
        return Ok(vec![KeyEntry {
            key,
            alg: String::new(),
            kid: String::new(),
        }]);
    }
    let json: Json = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("failed to parse a JWK key (set): {e}"))?;
    let jwks: Vec<&Json> = match json.get("keys") {
        Some(Json::Array(keys)) => keys.iter().collect(),
        Some(_) => anyhow::bail!("failed to parse a JWK key (set): `keys` must be an array"),
        None => vec![&json],
    };
    let mut out = Vec::new();
    for jwk in jwks {
        let key = key_from_jwk(jwk)
            .map_err(|e| anyhow::anyhow!("failed to parse a JWK key (set): {e}"))?;
        let alg = jwk
            .get("alg")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        if !alg.is_empty() && !KNOWN_ALGS.contains(&alg.as_str()) {
            continue;
        }
        let kid = jwk
            .get("kid")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_string();
        out.push(KeyEntry { key, alg, kid });
    }
    Ok(out)
}

fn key_from_spki(
    der: &[u8],
    alg: &x509_parser::x509::AlgorithmIdentifier<'_>,
) -> anyhow::Result<Key> {
    let oid = alg.algorithm.to_id_string();
    match oid.as_str() {
        OID_RSA => Ok(Key::RsaSpki(der.to_vec())),
        OID_EC => {
            let curve = alg
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            let curve = match curve.as_str() {
                OID_P256 => Curve::P256,
                OID_P384 => Curve::P384,
                OID_P521 => Curve::P521,
                other => anyhow::bail!("unsupported elliptic curve {other}"),
            };
            Ok(Key::Ec(curve, der.to_vec()))
        }
        OID_ED25519 => Ok(Key::Ed25519(der.to_vec())),
        other => anyhow::bail!("unsupported public key algorithm {other}"),
    }
}

fn b64_field(jwk: &Json, name: &str) -> anyhow::Result<Vec<u8>> {
    let s = jwk
        .get(name)
        .and_then(Json::as_str)
        .ok_or_else(|| anyhow::anyhow!("missing `{name}`"))?;
    base64url_decode(s).map_err(|e| anyhow::anyhow!("`{name}`: {e}"))
}

fn key_from_jwk(jwk: &Json) -> anyhow::Result<Key> {
    match jwk.get("kty").and_then(Json::as_str) {
        Some("RSA") => Ok(Key::RsaParts {
            n: b64_field(jwk, "n")?,
            e: b64_field(jwk, "e")?,
        }),
        Some("EC") => {
            let curve = match jwk.get("crv").and_then(Json::as_str) {
                Some("P-256") => Curve::P256,
                Some("P-384") => Curve::P384,
                Some("P-521") => Curve::P521,
                other => anyhow::bail!("unsupported curve {other:?}"),
            };
            let mut point = vec![4u8];
            let size = coord_size(curve);
            point.extend(left_pad(&b64_field(jwk, "x")?, size));
            point.extend(left_pad(&b64_field(jwk, "y")?, size));
            Ok(Key::Ec(curve, point))
        }
        Some("OKP") => match jwk.get("crv").and_then(Json::as_str) {
            Some("Ed25519") => Ok(Key::Ed25519(b64_field(jwk, "x")?)),
            other => anyhow::bail!("unsupported curve {other:?}"),
        },
        Some("oct") => Ok(Key::Secret(b64_field(jwk, "k")?)),
        other => anyhow::bail!("unsupported key type {other:?}"),
    }
}

fn coord_size(curve: Curve) -> usize {
    match curve {
        Curve::P256 => 32,
        Curve::P384 => 48,
        Curve::P521 => 66,
    }
}

fn left_pad(bytes: &[u8], size: usize) -> Vec<u8> {
    if bytes.len() >= size {
        return bytes.to_vec();
    }
    let mut v = vec![0u8; size - bytes.len()];
    v.extend_from_slice(bytes);
    v
}

/// Verify `sig` over `msg` with `key` for JWS algorithm `alg`. Any mismatch (wrong key type for
/// the algorithm, bad signature) is `false`.
pub fn verify(key: &Key, alg: &str, msg: &[u8], sig: &[u8]) -> bool {
    use signature::VerificationAlgorithm;
    let rsa: Option<&'static dyn VerificationAlgorithm> = match alg {
        "RS256" => Some(&signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY),
        "RS384" => Some(&signature::RSA_PKCS1_2048_8192_SHA384),
        "RS512" => Some(&signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY),
        "PS256" => Some(&signature::RSA_PSS_2048_8192_SHA256),
        "PS384" => Some(&signature::RSA_PSS_2048_8192_SHA384),
        "PS512" => Some(&signature::RSA_PSS_2048_8192_SHA512),
        _ => None,
    };
    if let Some(params) = rsa {
        return match key {
            Key::RsaSpki(der) => UnparsedPublicKey::new(params, der).verify(msg, sig).is_ok(),
            Key::RsaParts { n, e } => rsa_parts_verify(alg, n, e, msg, sig),
            _ => false,
        };
    }
    match (alg, key) {
        ("ES256", Key::Ec(Curve::P256, k)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, k)
                .verify(msg, sig)
                .is_ok()
        }
        ("ES384", Key::Ec(Curve::P384, k)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, k)
                .verify(msg, sig)
                .is_ok()
        }
        ("ES512", Key::Ec(Curve::P521, k)) => {
            UnparsedPublicKey::new(&signature::ECDSA_P521_SHA512_FIXED, k)
                .verify(msg, sig)
                .is_ok()
        }
        ("EdDSA", Key::Ed25519(k)) => UnparsedPublicKey::new(&signature::ED25519, ed25519_raw(k))
            .verify(msg, sig)
            .is_ok(),
        ("HS256" | "HS384" | "HS512", Key::Secret(secret)) => hmac_verify(alg, secret, msg, sig),
        _ => false,
    }
}

fn rsa_parts_verify(alg: &str, n: &[u8], e: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    let params: &signature::RsaParameters = match alg {
        "RS256" => &signature::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY,
        "RS384" => &signature::RSA_PKCS1_2048_8192_SHA384,
        "RS512" => &signature::RSA_PKCS1_1024_8192_SHA512_FOR_LEGACY_USE_ONLY,
        "PS256" => &signature::RSA_PSS_2048_8192_SHA256,
        "PS384" => &signature::RSA_PSS_2048_8192_SHA384,
        "PS512" => &signature::RSA_PSS_2048_8192_SHA512,
        _ => return false,
    };
    RsaPublicKeyComponents { n, e }
        .verify(params, msg, sig)
        .is_ok()
}

/// aws-lc-rs takes the raw 32-byte Ed25519 key; a DER SPKI ends with it.
fn ed25519_raw(k: &[u8]) -> &[u8] {
    if k.len() > 32 { &k[k.len() - 32..] } else { k }
}

/// HMAC with the hash named by `alg` (HS256/384/512).
pub fn hmac_sign(alg: &str, secret: &[u8], msg: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::hmac;
    let a = match alg {
        "HS256" => hmac::HMAC_SHA256,
        "HS384" => hmac::HMAC_SHA384,
        "HS512" => hmac::HMAC_SHA512,
        _ => return None,
    };
    Some(
        hmac::sign(&hmac::Key::new(a, secret), msg)
            .as_ref()
            .to_vec(),
    )
}

pub fn hmac_verify(alg: &str, secret: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    hmac_sign(alg, secret, msg).is_some_and(|mac| super::crypto::constant_time_eq(&mac, sig))
}

/// Sign `msg` with a private JWK for `alg` (the `io.jwt.encode_sign*` built-ins).
pub fn sign(jwk: &Json, alg: &str, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let rng = SystemRandom::new();
    match (alg, jwk.get("kty").and_then(Json::as_str)) {
        ("HS256" | "HS384" | "HS512", Some("oct")) => {
            let k = b64_field(jwk, "k")?;
            hmac_sign(alg, &k, msg).ok_or_else(|| anyhow::anyhow!("unknown JWS algorithm: {alg}"))
        }
        ("ES256" | "ES384" | "ES512", Some("EC")) => {
            let (curve, signing) = match alg {
                "ES256" => (Curve::P256, &signature::ECDSA_P256_SHA256_FIXED_SIGNING),
                "ES384" => (Curve::P384, &signature::ECDSA_P384_SHA384_FIXED_SIGNING),
                _ => (Curve::P521, &signature::ECDSA_P521_SHA512_FIXED_SIGNING),
            };
            let size = coord_size(curve);
            let d = left_pad(&b64_field(jwk, "d")?, size);
            let mut point = vec![4u8];
            point.extend(left_pad(&b64_field(jwk, "x")?, size));
            point.extend(left_pad(&b64_field(jwk, "y")?, size));
            let pair =
                signature::EcdsaKeyPair::from_private_key_and_public_key(signing, &d, &point)
                    .map_err(|e| anyhow::anyhow!("invalid EC private key: {e}"))?;
            let sig = pair
                .sign(&rng, msg)
                .map_err(|_| anyhow::anyhow!("failed to sign"))?;
            Ok(sig.as_ref().to_vec())
        }
        ("RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512", Some("RSA")) => {
            let der = rsa_private_der(jwk)?;
            let pair = signature::RsaKeyPair::from_der(&der)
                .map_err(|e| anyhow::anyhow!("invalid RSA private key: {e}"))?;
            let padding: &'static dyn signature::RsaEncoding = match alg {
                "RS256" => &signature::RSA_PKCS1_SHA256,
                "RS384" => &signature::RSA_PKCS1_SHA384,
                "RS512" => &signature::RSA_PKCS1_SHA512,
                "PS256" => &signature::RSA_PSS_SHA256,
                "PS384" => &signature::RSA_PSS_SHA384,
                _ => &signature::RSA_PSS_SHA512,
            };
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign(padding, &rng, msg, &mut sig)
                .map_err(|_| anyhow::anyhow!("failed to sign"))?;
            Ok(sig)
        }
        ("EdDSA", Some("OKP")) => {
            let d = b64_field(jwk, "d")?;
            let x = b64_field(jwk, "x")?;
            let pair = signature::Ed25519KeyPair::from_seed_and_public_key(&d, &x)
                .map_err(|e| anyhow::anyhow!("invalid Ed25519 private key: {e}"))?;
            let _ = pair.public_key();
            Ok(pair.sign(msg).as_ref().to_vec())
        }
        (alg, kty) => anyhow::bail!(
            "failed to sign: key type {} does not fit algorithm {alg}",
            kty.unwrap_or("(none)")
        ),
    }
}

/// Sign with a PEM private key (PKCS #8; or PKCS #1 `RSA PRIVATE KEY`, SEC1 `EC PRIVATE KEY`):
/// bundle signing (`arbiter build --signing-key`), as `opa build` takes keys.
pub fn sign_pem(pem: &str, alg: &str, msg: &[u8]) -> anyhow::Result<Vec<u8>> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| anyhow::anyhow!("not a PEM private key"))?;
    let der = block.contents;
    let rng = SystemRandom::new();
    match alg {
        "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" => {
            let pair = signature::RsaKeyPair::from_pkcs8(&der)
                .or_else(|_| signature::RsaKeyPair::from_der(&der))
                .map_err(|e| anyhow::anyhow!("invalid RSA private key: {e}"))?;
            let padding: &'static dyn signature::RsaEncoding = match alg {
                "RS256" => &signature::RSA_PKCS1_SHA256,
                "RS384" => &signature::RSA_PKCS1_SHA384,
                "RS512" => &signature::RSA_PKCS1_SHA512,
                "PS256" => &signature::RSA_PSS_SHA256,
                "PS384" => &signature::RSA_PSS_SHA384,
                _ => &signature::RSA_PSS_SHA512,
            };
            let mut sig = vec![0u8; pair.public_modulus_len()];
            pair.sign(padding, &rng, msg, &mut sig)
                .map_err(|_| anyhow::anyhow!("failed to sign"))?;
            Ok(sig)
        }
        "ES256" | "ES384" | "ES512" => {
            let fixed = match alg {
                "ES256" => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                "ES384" => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            };
            let pair = signature::EcdsaKeyPair::from_pkcs8(fixed, &der)
                .or_else(|_| signature::EcdsaKeyPair::from_private_key_der(fixed, &der))
                .map_err(|e| anyhow::anyhow!("invalid EC private key: {e}"))?;
            Ok(pair
                .sign(&rng, msg)
                .map_err(|_| anyhow::anyhow!("failed to sign"))?
                .as_ref()
                .to_vec())
        }
        "EdDSA" => {
            let pair = signature::Ed25519KeyPair::from_pkcs8(&der)
                .or_else(|_| signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der))
                .map_err(|e| anyhow::anyhow!("invalid Ed25519 private key: {e}"))?;
            Ok(pair.sign(msg).as_ref().to_vec())
        }
        other => anyhow::bail!("unsupported signing algorithm `{other}`"),
    }
}

fn uint(b: &[u8]) -> anyhow::Result<pkcs1::UintRef<'_>> {
    pkcs1::UintRef::new(b).map_err(|err| anyhow::anyhow!("invalid RSA private key: {err}"))
}

/// DER `RSAPrivateKey` (PKCS #1) from a private RSA JWK, encoded by the `pkcs1` crate.
fn rsa_private_der(jwk: &Json) -> anyhow::Result<Vec<u8>> {
    use pkcs1::der::Encode;
    let [n, e, d, p, q, dp, dq, qi] =
        ["n", "e", "d", "p", "q", "dp", "dq", "qi"].map(|name| b64_field(jwk, name));
    let (n, e, d, p, q, dp, dq, qi) = (n?, e?, d?, p?, q?, dp?, dq?, qi?);
    let key = pkcs1::RsaPrivateKey {
        modulus: uint(&n)?,
        public_exponent: uint(&e)?,
        private_exponent: uint(&d)?,
        prime1: uint(&p)?,
        prime2: uint(&q)?,
        exponent1: uint(&dp)?,
        exponent2: uint(&dq)?,
        coefficient: uint(&qi)?,
        other_prime_infos: None,
    };
    key.to_der()
        .map_err(|err| anyhow::anyhow!("invalid RSA private key: {err}"))
}

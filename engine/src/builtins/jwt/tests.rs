//! JWT verification with keys generated here: HS256, RS256, PS256 and ES256; valid and tampered,
//! expired and not yet valid, wrong audience and issuer; PEM certificates, PEM public keys and
//! JWK sets.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::{AsBigEndian, AsDer};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value as Json, json};

use crate::builtins::encoding::{base64_std_encode, base64url_encode_raw};
use crate::builtins::testutil::eval_with_input;

fn now() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn signing_input(header: &Json, payload: &Json) -> String {
    format!(
        "{}.{}",
        base64url_encode_raw(header.to_string().as_bytes()),
        base64url_encode_raw(payload.to_string().as_bytes())
    )
}

pub(crate) fn hs256(secret: &str, header: &Json, payload: &Json) -> String {
    let input = signing_input(header, payload);
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    let sig = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", base64url_encode_raw(sig.as_ref()))
}

fn rsa_token(
    pair: &RsaKeyPair,
    padding: &'static dyn signature::RsaEncoding,
    header: &Json,
    payload: &Json,
) -> String {
    let input = signing_input(header, payload);
    let mut sig = vec![0u8; pair.public_modulus_len()];
    pair.sign(padding, &SystemRandom::new(), input.as_bytes(), &mut sig)
        .unwrap();
    format!("{input}.{}", base64url_encode_raw(&sig))
}

fn es256_token(pair: &EcdsaKeyPair, header: &Json, payload: &Json) -> String {
    let input = signing_input(header, payload);
    let sig = pair.sign(&SystemRandom::new(), input.as_bytes()).unwrap();
    format!("{input}.{}", base64url_encode_raw(sig.as_ref()))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64_std_encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Flip one character of the payload segment.
fn tamper(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let payload = &parts[1];
    let claims: Json =
        serde_json::from_slice(&crate::builtins::encoding::base64url_decode(payload).unwrap())
            .unwrap();
    let mut claims = claims.as_object().unwrap().clone();
    claims.insert("sub".into(), json!("mallory"));
    parts[1] = base64url_encode_raw(Json::Object(claims).to_string().as_bytes());
    parts.join(".")
}

fn decode_verify(token: &str, constraints: Json) -> Json {
    eval_with_input(
        "io.jwt.decode_verify(input.token, input.constraints)",
        json!({"token": token, "constraints": constraints}),
    )
    .unwrap()
}

fn valid(result: &Json) -> bool {
    result[0].as_bool().unwrap()
}

fn verify(builtin: &str, token: &str, key: &str) -> bool {
    eval_with_input(
        &format!("{builtin}(input.token, input.key)"),
        json!({"token": token, "key": key}),
    )
    .unwrap()
    .as_bool()
    .unwrap()
}

#[test]
fn hs256_valid_tampered_and_claims() {
    let h = json!({"alg": "HS256", "typ": "JWT"});
    let claims = json!({"sub": "alice", "iss": "https://issuer.example", "aud": "orders", "exp": now() + 600, "nbf": now() - 10});
    let token = hs256("s3cret", &h, &claims);

    assert!(verify("io.jwt.verify_hs256", &token, "s3cret"));
    assert!(!verify("io.jwt.verify_hs256", &token, "wrong"));
    assert!(!verify("io.jwt.verify_hs256", &tamper(&token), "s3cret"));

    let ok = json!({"secret": "s3cret", "iss": "https://issuer.example", "aud": "orders"});
    let r = decode_verify(&token, ok.clone());
    assert!(valid(&r), "{r}");
    assert_eq!(r[1], h);
    assert_eq!(r[2]["sub"], "alice");

    assert!(!valid(&decode_verify(&tamper(&token), ok.clone())));
    assert!(!valid(&decode_verify(
        &token,
        json!({"secret": "other", "aud": "orders"})
    )));
    // Wrong issuer, wrong audience, and a token with an audience checked without one: all invalid,
    // as in OPA.
    assert!(!valid(&decode_verify(
        &token,
        json!({"secret": "s3cret", "iss": "https://evil.example", "aud": "orders"})
    )));
    assert!(!valid(&decode_verify(
        &token,
        json!({"secret": "s3cret", "aud": "payments"})
    )));
    assert!(!valid(&decode_verify(&token, json!({"secret": "s3cret"}))));
    // Invalid results carry empty header and payload.
    assert_eq!(
        decode_verify(&token, json!({"secret": "s3cret", "aud": "payments"})),
        json!([false, {}, {}])
    );
}

#[test]
fn expiry_and_not_before() {
    let h = json!({"alg": "HS256"});
    let expired = hs256("k", &h, &json!({"exp": now() - 60}));
    let future = hs256("k", &h, &json!({"nbf": now() + 3600}));
    let fine = hs256("k", &h, &json!({"exp": now() + 60, "nbf": now() - 60}));
    assert!(!valid(&decode_verify(&expired, json!({"secret": "k"}))));
    assert!(!valid(&decode_verify(&future, json!({"secret": "k"}))));
    assert!(valid(&decode_verify(&fine, json!({"secret": "k"}))));
    // The `time` constraint (nanoseconds) replaces the clock.
    let then = (now() - 120) * 1_000_000_000;
    assert!(valid(&decode_verify(
        &expired,
        json!({"secret": "k", "time": then})
    )));
    let later = (now() + 7200) * 1_000_000_000;
    assert!(valid(&decode_verify(
        &future,
        json!({"secret": "k", "time": later})
    )));
    // Non-numeric exp is an error.
    let bad = hs256("k", &h, &json!({"exp": "tomorrow"}));
    assert!(
        eval_with_input(
            "io.jwt.decode_verify(input.t, {\"secret\": \"k\"})",
            json!({"t": bad})
        )
        .unwrap_err()
        .to_string()
        .contains("exp value must be a number")
    );
}

#[test]
fn rs256_with_pem_public_key_and_jwks() {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let spki = pair.public_key().as_der().unwrap();
    let pem_key = pem("PUBLIC KEY", spki.as_ref());
    let n = base64url_encode_raw(
        pair.public_key()
            .modulus()
            .big_endian_without_leading_zero(),
    );
    let e = base64url_encode_raw(
        pair.public_key()
            .exponent()
            .big_endian_without_leading_zero(),
    );
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "other", "alg": "RS256", "n": "sXch", "e": "AQAB"},
        {"kty": "RSA", "kid": "k1", "alg": "RS256", "n": n, "e": e}
    ]})
    .to_string();

    let h = json!({"alg": "RS256", "typ": "JWT", "kid": "k1"});
    let claims = json!({"sub": "bob", "exp": now() + 600});
    let token = rsa_token(&pair, &signature::RSA_PKCS1_SHA256, &h, &claims);

    assert!(verify("io.jwt.verify_rs256", &token, &pem_key));
    assert!(verify("io.jwt.verify_rs256", &token, &jwks));
    assert!(!verify("io.jwt.verify_rs256", &tamper(&token), &pem_key));
    assert!(!verify("io.jwt.verify_rs384", &token, &pem_key));

    let r = decode_verify(&token, json!({"cert": pem_key}));
    assert!(valid(&r));
    assert_eq!(r[2]["sub"], "bob");
    assert!(valid(&decode_verify(
        &token,
        json!({"cert": jwks, "alg": "RS256"})
    )));
    assert!(!valid(&decode_verify(
        &token,
        json!({"cert": pem_key, "alg": "ES256"})
    )));
    assert!(!valid(&decode_verify(
        &tamper(&token),
        json!({"cert": pem_key})
    )));

    // Another key does not verify.
    let other = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let other_pem = pem("PUBLIC KEY", other.public_key().as_der().unwrap().as_ref());
    assert!(!verify("io.jwt.verify_rs256", &token, &other_pem));
    assert!(!valid(&decode_verify(&token, json!({"cert": other_pem}))));
}

#[test]
fn ps256() {
    let pair = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let pem_key = pem("PUBLIC KEY", pair.public_key().as_der().unwrap().as_ref());
    let token = rsa_token(
        &pair,
        &signature::RSA_PSS_SHA256,
        &json!({"alg": "PS256"}),
        &json!({"x": 1}),
    );
    assert!(verify("io.jwt.verify_ps256", &token, &pem_key));
    assert!(!verify("io.jwt.verify_ps256", &tamper(&token), &pem_key));
    assert!(valid(&decode_verify(&token, json!({"cert": pem_key}))));
}

#[test]
fn es256_with_certificate_and_jwk() {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["issuer.example".to_string()])
        .unwrap()
        .self_signed(&kp)
        .unwrap();
    let cert_pem = cert.pem();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &kp.serialize_der(),
    )
    .unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let jwk = json!({
        "kty": "EC", "crv": "P-256",
        "x": base64url_encode_raw(&point[1..33]),
        "y": base64url_encode_raw(&point[33..65]),
    })
    .to_string();

    let token = es256_token(
        &pair,
        &json!({"alg": "ES256"}),
        &json!({"iss": "me", "exp": now() + 60}),
    );
    assert!(verify("io.jwt.verify_es256", &token, &cert_pem));
    assert!(verify("io.jwt.verify_es256", &token, &jwk));
    assert!(!verify("io.jwt.verify_es256", &tamper(&token), &cert_pem));
    assert!(valid(&decode_verify(
        &token,
        json!({"cert": cert_pem, "iss": "me"})
    )));
    assert!(!valid(&decode_verify(
        &token,
        json!({"cert": cert_pem, "iss": "you"})
    )));

    let expired = es256_token(&pair, &json!({"alg": "ES256"}), &json!({"exp": now() - 1}));
    assert!(verify("io.jwt.verify_es256", &expired, &cert_pem));
    assert!(!valid(&decode_verify(&expired, json!({"cert": cert_pem}))));
}

#[test]
fn decode_matches_opa() {
    // From OPA's conformance suite (jwtbuiltins/simple).
    let r = eval_with_input(
        "io.jwt.decode(input.t)",
        json!({"t": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIwIiwiaXNzIjoib3BhIn0.XmVoLoHI3pxMtMO_WRONMSJzGUDP9pDjy8Jp0_tdRXY"}),
    )
    .unwrap();
    assert_eq!(
        r,
        json!([{"alg": "HS256", "typ": "JWT"}, {"iss": "opa", "sub": "0"}, "5e65682e81c8de9c4cb4c3bf59138d3122731940cff690e3cbc269d3fb5d4576"])
    );
    let err = eval_with_input("io.jwt.decode(input.t)", json!({"t": "abc"})).unwrap_err();
    assert!(
        err.to_string()
            .contains("encoded JWT had no period separators"),
        "{err}"
    );
}

#[test]
fn encode_sign_round_trips() {
    let jwk = json!({"kty": "oct", "k": base64url_encode_raw(b"hmac-key")});
    let token = eval_with_input(
        "io.jwt.encode_sign({\"alg\": \"HS256\", \"typ\": \"JWT\"}, {\"sub\": \"carol\"}, input.jwk)",
        json!({"jwk": jwk}),
    )
    .unwrap();
    let token = token.as_str().unwrap();
    assert!(verify("io.jwt.verify_hs256", token, "hmac-key"));

    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &kp.serialize_der(),
    )
    .unwrap();
    let point = pair.public_key().as_ref().to_vec();
    let d = pair.private_key().as_be_bytes().unwrap();
    let private = json!({
        "kty": "EC", "crv": "P-256",
        "x": base64url_encode_raw(&point[1..33]),
        "y": base64url_encode_raw(&point[33..65]),
        "d": base64url_encode_raw(d.as_ref()),
    });
    let token = eval_with_input(
        "io.jwt.encode_sign({\"alg\": \"ES256\"}, {\"sub\": \"dave\"}, input.jwk)",
        json!({"jwk": private}),
    )
    .unwrap();
    let public =
        json!({"kty": "EC", "crv": "P-256", "x": private["x"], "y": private["y"]}).to_string();
    let r = decode_verify(token.as_str().unwrap(), json!({"cert": public}));
    assert!(valid(&r), "{r}");
    assert_eq!(r[2]["sub"], "dave");
}

#[test]
fn output_argument_form_like_opa() {
    // `io.jwt.decode(t, [h, p, s])` binds the result to the last argument (vendored regorus,
    // patch 2).
    let token = hs256("k", &json!({"alg": "HS256"}), &json!({"sub": "ann"}));
    let mut engine = crate::rego::new_engine(&crate::rego::EngineOptions::default());
    engine
        .add_policy(
            "t.rego".into(),
            "package t\nsub := p.sub if { io.jwt.decode(input.token, [_, p, _]) }\nok if { io.jwt.verify_hs256(input.token, \"k\", true) }\n".into(),
        )
        .unwrap();
    engine.set_input(crate::value::from_json(&json!({"token": token})));
    assert_eq!(
        engine.eval_rule("data.t.sub".into()).unwrap(),
        regorus::Value::from("ann")
    );
    assert_eq!(
        engine.eval_rule("data.t.ok".into()).unwrap(),
        regorus::Value::Bool(true)
    );
}

/// The per-thread cache of decided tokens keeps every answer the uncached path gives: the
/// clock (and a `time` constraint) is applied on every call, other constraints are part of the
/// key, errors are never cached, and a full cache starts over.
#[test]
fn the_verification_cache_never_changes_an_answer() {
    use super::{CACHE_ENTRIES, decode_verify as direct};
    use regorus::Value;
    let value = |j: Json| crate::value::from_json(&j);
    let valid_direct = |token: &str, c: Json| -> anyhow::Result<bool> {
        let r = direct(&Value::from(token), &value(c))?;
        Ok(r[0] == Value::Bool(true))
    };
    let h = json!({"alg": "HS256"});
    let exp = now() + 60;
    let token = hs256("k", &h, &json!({"exp": exp, "aud": "orders"}));
    let at = |s: i64| json!({"secret": "k", "aud": "orders", "time": s * 1_000_000_000});
    // Before, after, before again: the cached entry never pins the clock.
    for _ in 0..2 {
        assert!(valid_direct(&token, at(exp - 1)).unwrap());
        assert!(!valid_direct(&token, at(exp)).unwrap());
    }
    assert!(valid_direct(&token, json!({"secret": "k", "aud": "orders"})).unwrap());
    // Other constraints are part of the key.
    assert!(!valid_direct(&token, json!({"secret": "other", "aud": "orders"})).unwrap());
    assert!(!valid_direct(&token, json!({"secret": "k", "aud": "payments"})).unwrap());
    assert!(valid_direct(&token, json!({"secret": "k", "aud": "orders"})).unwrap());
    // A bad `time` is an error on a cached token as on a new one.
    let bad_time = json!({"secret": "k", "aud": "orders", "time": "noon"});
    let e = valid_direct(&token, bad_time).unwrap_err().to_string();
    assert!(e.contains("time constraint"), "{e}");
    // Errors are not cached: a non-numeric exp fails every time.
    let bad = hs256("k", &h, &json!({"exp": "tomorrow"}));
    for _ in 0..2 {
        let e = valid_direct(&bad, json!({"secret": "k"})).unwrap_err();
        assert!(e.to_string().contains("exp value must be a number"));
    }
    // More tokens than the cache holds: it starts over, and answers stay right.
    let tokens: Vec<String> = (0..CACHE_ENTRIES + 10)
        .map(|i| hs256("k", &h, &json!({"exp": exp, "aud": "orders", "n": i})))
        .collect();
    for t in &tokens {
        assert!(valid_direct(t, at(exp - 1)).unwrap());
    }
    assert!(valid_direct(&tokens[0], at(exp - 1)).unwrap());
    assert!(!valid_direct(&tokens[0], at(exp + 1)).unwrap());
    assert!(!valid_direct(&tamper(&tokens[1]), at(exp - 1)).unwrap());
}

//! Every rule of the JWT-SVID standard, with keys generated here: each test changes one thing
//! in an otherwise valid token and expects that one reason.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair};
use serde_json::{Value as Json, json};

use super::*;
use crate::builtins::encoding::base64url_encode_raw;
use crate::identity::{IdentityOptions, IdentityOutcome, IdentitySource, resolve};
use crate::request::{AuthzRequest, HttpRequest, Peer};

const NOW: i64 = 1_800_000_000;

/// A trust domain's signing keys: one EC P-256 (`ec-1`) and one RSA (`rsa-1`).
struct Issuer {
    ec: EcdsaKeyPair,
    rsa: RsaKeyPair,
}

impl Issuer {
    fn new() -> Self {
        Self {
            ec: EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
            rsa: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
        }
    }

    /// The SPIFFE bundle: the two JWT keys and an X.509 key that must be skipped.
    fn bundle(&self) -> String {
        let point = self.ec.public_key().as_ref().to_vec();
        let n = self
            .rsa
            .public_key()
            .modulus()
            .big_endian_without_leading_zero();
        let e = self
            .rsa
            .public_key()
            .exponent()
            .big_endian_without_leading_zero();
        json!({
            "spiffe_sequence": 1,
            "keys": [
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA",
                 "x5c": ["AA"]},
                {"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "ec-1",
                 "x": base64url_encode_raw(&point[1..33]),
                 "y": base64url_encode_raw(&point[33..65])},
                {"use": "jwt-svid", "kty": "RSA", "kid": "rsa-1",
                 "n": base64url_encode_raw(n), "e": base64url_encode_raw(e)}
            ]
        })
        .to_string()
    }

    fn sign(&self, header: &Json, claims: &Json) -> String {
        let input = format!(
            "{}.{}",
            base64url_encode_raw(header.to_string().as_bytes()),
            base64url_encode_raw(claims.to_string().as_bytes())
        );
        let alg = header["alg"].as_str().unwrap_or("ES256");
        let sig = if alg.starts_with("ES") {
            self.ec
                .sign(&SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec()
        } else {
            let padding: &'static dyn signature::RsaEncoding = match alg {
                "PS256" => &signature::RSA_PSS_SHA256,
                _ => &signature::RSA_PKCS1_SHA256,
            };
            let mut sig = vec![0; self.rsa.public_modulus_len()];
            self.rsa
                .sign(padding, &SystemRandom::new(), input.as_bytes(), &mut sig)
                .unwrap();
            sig
        };
        format!("{input}.{}", base64url_encode_raw(&sig))
    }
}

fn claims() -> Json {
    json!({
        "sub": "spiffe://example.org/ns/shop/sa/frontend",
        "aud": ["orders"],
        "exp": NOW + 300,
        "iat": NOW - 10,
    })
}

fn es_header() -> Json {
    json!({"alg": "ES256", "kid": "ec-1", "typ": "JWT"})
}

struct Setup {
    example: Issuer,
    other: Issuer,
    opts: JwtSvidOptions,
}

fn setup() -> Setup {
    let (example, other) = (Issuer::new(), Issuer::new());
    let mut opts = JwtSvidOptions {
        audiences: vec!["orders".into()],
        header: "authorization".into(),
        ..JwtSvidOptions::default()
    };
    assert_eq!(opts.add_bundle("example.org", &example.bundle()), Ok(2));
    assert_eq!(opts.add_bundle("other.org", &other.bundle()), Ok(2));
    Setup {
        example,
        other,
        opts,
    }
}

fn with(mut c: Json, key: &str, v: Json) -> Json {
    c[key] = v;
    c
}

fn without(mut c: Json, key: &str) -> Json {
    if let Some(o) = c.as_object_mut() {
        o.remove(key);
    }
    c
}

fn refused(s: &Setup, token: &str, why: &str) {
    let e = validate(token, &s.opts, NOW).unwrap_err();
    assert!(e.contains(why), "expected `{why}`, got `{e}`");
}

#[test]
fn a_valid_token_names_its_subject_with_es_rs_and_ps_keys() {
    let s = setup();
    let (id, info) = validate(&s.example.sign(&es_header(), &claims()), &s.opts, NOW).unwrap();
    assert_eq!(id.as_str(), "spiffe://example.org/ns/shop/sa/frontend");
    assert_eq!(info.audience, vec!["orders".to_string()]);
    assert_eq!(info.key_id, "ec-1");
    assert_eq!(info.expires, "2027-01-15T08:05:00Z");
    assert_eq!(info.issued_at.as_deref(), Some("2027-01-15T07:59:50Z"));
    for alg in ["RS256", "PS256"] {
        let h = json!({"alg": alg, "kid": "rsa-1"});
        let token = s.example.sign(&h, &with(claims(), "aud", json!("orders")));
        let (_, info) = validate(&token, &s.opts, NOW).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(info.alg, alg);
    }
}

#[test]
fn alg_none_and_hmac_are_refused() {
    let s = setup();
    let c = claims().to_string();
    let none = format!(
        "{}.{}.",
        base64url_encode_raw(br#"{"alg":"none","kid":"ec-1"}"#),
        base64url_encode_raw(c.as_bytes())
    );
    refused(&s, &none, "`alg` is `none`");
    // An HS256 token "signed" with the public key's bytes (the classic confusion).
    let h = json!({"alg": "HS256", "kid": "ec-1"});
    let token = s
        .example
        .sign(&json!({"alg": "ES256", "kid": "ec-1"}), &claims());
    let (_, rest) = token.split_once('.').unwrap();
    let hs = format!("{}.{rest}", base64url_encode_raw(h.to_string().as_bytes()));
    refused(&s, &hs, "`alg` is `HS256`");
    let no_alg = s.example.sign(&without(es_header(), "alg"), &claims());
    refused(&s, &no_alg, "`alg` is ``");
}

#[test]
fn audience_and_expiry_are_required_and_checked() {
    let s = setup();
    let sign = |c: Json| s.example.sign(&es_header(), &c);
    refused(&s, &sign(without(claims(), "aud")), "no `aud` claim");
    refused(&s, &sign(without(claims(), "exp")), "no `exp` claim");
    refused(
        &s,
        &sign(with(claims(), "aud", json!(["billing"]))),
        "does not name this server",
    );
    refused(&s, &sign(with(claims(), "aud", json!([]))), "not a string");
    refused(&s, &sign(with(claims(), "exp", json!(NOW))), "expired at");
    refused(
        &s,
        &sign(with(claims(), "exp", json!("soon"))),
        "`exp` is not",
    );
    refused(
        &s,
        &sign(with(claims(), "nbf", json!(NOW + 60))),
        "not valid before",
    );
    // One audience among several is enough.
    assert!(
        validate(
            &sign(with(claims(), "aud", json!(["billing", "orders"]))),
            &s.opts,
            NOW
        )
        .is_ok()
    );
}

#[test]
fn keys_come_from_the_subjects_own_trust_domain() {
    let s = setup();
    // Unknown kid.
    let h = with(es_header(), "kid", json!("ec-9"));
    refused(
        &s,
        &s.example.sign(&h, &claims()),
        "key `ec-9` is not in the JWT bundle of `example.org`",
    );
    // Signed by other.org's key with the same kid: example.org's key does not verify it.
    refused(
        &s,
        &s.other.sign(&es_header(), &claims()),
        "the signature does not verify with key `ec-1` of `example.org`",
    );
    // other.org's key verifies other.org's subjects only.
    let theirs = with(claims(), "sub", json!("spiffe://other.org/ns/a/sa/b"));
    assert!(validate(&s.other.sign(&es_header(), &theirs), &s.opts, NOW).is_ok());
    // A trust domain without a JWT bundle.
    let stranger = with(claims(), "sub", json!("spiffe://stranger.org/ns/a/sa/b"));
    refused(
        &s,
        &s.example.sign(&es_header(), &stranger),
        "no JWT bundle for trust domain `stranger.org`",
    );
    // A tampered payload.
    let token = s.example.sign(&es_header(), &claims());
    let parts: Vec<&str> = token.split('.').collect();
    let evil = with(
        claims(),
        "sub",
        json!("spiffe://example.org/ns/shop/sa/admin"),
    );
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64url_encode_raw(evil.to_string().as_bytes()),
        parts[2]
    );
    refused(&s, &forged, "the signature does not verify");
}

#[test]
fn sub_must_be_a_workload_spiffe_id() {
    let s = setup();
    for (sub, why) in [
        (json!("frontend"), "is not a SPIFFE ID"),
        (json!("spiffe://example.org"), "is not a SPIFFE ID"),
        (json!("SPIFFE://example.org/a"), "is not a SPIFFE ID"),
        (json!(7), "no `sub` claim"),
    ] {
        refused(
            &s,
            &s.example.sign(&es_header(), &with(claims(), "sub", sub)),
            why,
        );
    }
}

#[test]
fn malformed_tokens_and_headers_are_refused() {
    let s = setup();
    refused(&s, "abc", "three dot-separated parts");
    refused(&s, "a.b.c.d", "three dot-separated parts");
    refused(&s, "!!.e30.AA", "header is not base64url");
    let h = |v: Json| s.example.sign(&v, &claims());
    refused(
        &s,
        &h(with(es_header(), "typ", json!("at+jwt"))),
        "`typ` is",
    );
    refused(&s, &h(with(es_header(), "crit", json!(["exp"]))), "`crit`");
    refused(&s, &h(without(es_header(), "kid")), "no `kid`");
    // Duplicate claims: the strict reader refuses them.
    let dup = format!(
        "{}.{}.AA",
        base64url_encode_raw(es_header().to_string().as_bytes()),
        base64url_encode_raw(br#"{"sub":"spiffe://example.org/a","sub":"spiffe://example.org/b"}"#)
    );
    refused(&s, &dup, "duplicate");
}

#[test]
fn bundles_hold_public_jwt_keys_with_ids() {
    let mut o = JwtSvidOptions::default();
    for td in ["Example.org", "example.org/ns"] {
        assert!(
            o.add_bundle(td, "{}")
                .unwrap_err()
                .contains("not a valid trust domain"),
            "{td}"
        );
    }
    assert!(
        o.add_bundle("example.org", "[]")
            .unwrap_err()
            .contains("no `keys`")
    );
    let e = o
        .add_bundle(
            "example.org",
            r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
        )
        .unwrap_err();
    assert!(e.contains("not a public key"), "{e}");
    let e = o
        .add_bundle(
            "example.org",
            r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#,
        )
        .unwrap_err();
    assert!(e.contains("no `kid`"), "{e}");
    let e = o
        .add_bundle(
            "example.org",
            r#"{"keys":[{"use":"x509-svid","kty":"EC"}]}"#,
        )
        .unwrap_err();
    assert!(e.contains("no JWT-SVID key"), "{e}");
}

fn request(headers: &[(&str, &str)], principal: &str) -> AuthzRequest {
    AuthzRequest {
        source: Some(Peer {
            principal: principal.into(),
            ..Peer::default()
        }),
        http: Some(HttpRequest {
            method: "GET".into(),
            path: "/".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..HttpRequest::default()
        }),
        ..AuthzRequest::default()
    }
}

#[test]
fn resolve_reads_the_bearer_token_only_without_an_mtls_identity() {
    let s = setup();
    let opts = IdentityOptions {
        jwt_svid: Some(s.opts.clone()),
        ..IdentityOptions::default()
    };
    let token = s.example.sign(&es_header(), &claims());
    let bearer = format!("Bearer {token}");
    let o = resolve(&request(&[("authorization", &bearer)], ""), &opts, NOW);
    let id = o.identity().unwrap();
    assert_eq!(id.source, IdentitySource::JwtSvid);
    let v = crate::value::to_json(&id.to_value());
    assert_eq!(v["source"], "jwt-svid");
    assert_eq!(v["jwt"]["audience"], json!(["orders"]));
    assert_eq!(v["jwt"]["key_id"], "ec-1");
    assert_eq!(v["svid"], Json::Null);
    // An mTLS identity is never replaced by a bearer token.
    let o = resolve(
        &request(
            &[("authorization", &bearer)],
            "spiffe://example.org/ns/a/sa/gw",
        ),
        &opts,
        NOW,
    );
    assert_eq!(o.identity().unwrap().source, IdentitySource::Principal);
    // Another credential scheme is not a JWT-SVID; a bad bearer token is an invalid identity.
    let o = resolve(&request(&[("authorization", "Basic YTpi")], ""), &opts, NOW);
    assert_eq!(o, IdentityOutcome::Absent);
    let o = resolve(&request(&[("authorization", "Bearer abc")], ""), &opts, NOW);
    assert!(
        matches!(o, IdentityOutcome::Invalid(ref e) if e.starts_with("JWT-SVID: ")),
        "{o:?}"
    );
    // Without JWT bundles the header is not read.
    let o = resolve(
        &request(&[("authorization", &bearer)], ""),
        &IdentityOptions::default(),
        NOW,
    );
    assert_eq!(o, IdentityOutcome::Absent);
    // A custom header takes the token with or without `Bearer `.
    let custom = IdentityOptions {
        jwt_svid: Some(JwtSvidOptions {
            header: "x-jwt-svid".into(),
            ..s.opts.clone()
        }),
        ..IdentityOptions::default()
    };
    for v in [token.clone(), bearer.clone()] {
        let o = resolve(&request(&[("x-jwt-svid", &v)], ""), &custom, NOW);
        assert!(o.identity().is_some(), "{o:?}");
    }
}

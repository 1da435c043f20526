//! JWT-SVIDs behind a real Envoy 1.40 (no mTLS between the caller and Envoy): the token in
//! `authorization: Bearer …` becomes `input.identity` (source `jwt-svid`) when it passes every
//! rule of the SPIFFE JWT-SVID standard, and each broken rule leaves the caller without an
//! identity, with the rule named in the decision event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use arbiter_conformance::envoy::{TempDir, request};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_conformance::istio_envoy::Signer;
use arbiter_ext_authz::decision_log::{DecisionLogConfig, LogTarget};
use serde_json::{Value as Json, json};

const POLICY: &str = r#"package envoy.authz

default allow := false

# The frontend's JWT-SVID opens /orders.
allow if {
	input.parsed_path[0] == "orders"
	input.identity.spiffe_id == "spiffe://example.org/ns/shop/sa/frontend"
	input.identity.source == "jwt-svid"
	"orders" in input.identity.jwt.audience
}

# Anyone who presents a valid JWT-SVID may read /whoami.
allow if {
	input.parsed_path[0] == "whoami"
	input.identity.source == "jwt-svid"
}
"#;

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn jwt_svids_identify_callers_through_envoy_and_every_broken_rule_is_refused() {
    let dir = TempDir::new("jwt-svid").unwrap();
    let (example, other) = (Signer::new(), Signer::new());
    std::fs::write(dir.0.join("example.jwks"), &example.jwks).unwrap();
    std::fs::write(dir.0.join("other.jwks"), &other.jwks).unwrap();
    std::fs::create_dir_all(dir.0.join("policy")).unwrap();
    std::fs::write(dir.0.join("policy/authz.rego"), POLICY).unwrap();
    let log = dir.0.join("decisions.log");
    let bundle = |td: &str, f: &str| format!("{td}={}", dir.0.join(f).display());
    let settings = arbiter_cli::serve::Args {
        policies: vec![dir.0.join("policy")],
        jwt_bundle: vec![
            bundle("example.org", "example.jwks"),
            bundle("other.org", "other.jwks"),
        ],
        jwt_audience: vec!["orders".into()],
        ..Default::default()
    }
    .settings()
    .unwrap();
    let authorizer = arbiter_cli::serve::authorizer(&settings).unwrap();
    let mut h = Harness::start(
        authorizer,
        loopback_config(Some(DecisionLogConfig::to(LogTarget::File(log.clone())))),
        |_| {},
    )
    .unwrap_or_else(|e| panic!("{e}"));

    let frontend = "spiffe://example.org/ns/shop/sa/frontend";
    let claims = |sub: &str, aud: Json, exp: i64| json!({"sub": sub, "aud": aud, "exp": exp});
    let good = claims(frontend, json!(["orders"]), now() + 300);
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","kid":"test"}"#),
        b64(good.to_string().as_bytes())
    );
    // An HS256 token keyed with the bundle's public key bytes (the classic key confusion).
    let hs256 = {
        let head = b64(br#"{"alg":"HS256","kid":"test"}"#);
        let body = b64(good.to_string().as_bytes());
        let input = format!("{head}.{body}");
        let sig = arbiter_engine::builtins::jose::hmac_sign(
            "HS256",
            example.jwks.as_bytes(),
            input.as_bytes(),
        )
        .unwrap();
        format!("{input}.{}", b64(&sig))
    };
    // (name, token, target, status, the identity's error or "" for a valid identity)
    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("valid", example.token(&good), "/orders", 200, ""),
        (
            "valid, another workload",
            example.token(&claims(
                "spiffe://example.org/ns/shop/sa/backend",
                json!("orders"),
                now() + 300,
            )),
            "/orders",
            403,
            "",
        ),
        (
            "other trust domain, its own key",
            other.token(&claims(
                "spiffe://other.org/ns/a/sa/b",
                json!("orders"),
                now() + 300,
            )),
            "/whoami",
            200,
            "",
        ),
        (
            "signed with another trust domain's key",
            other.token(&good),
            "/orders",
            403,
            "the signature does not verify with key `test` of `example.org`",
        ),
        (
            "expired",
            example.token(&claims(frontend, json!(["orders"]), now() - 1)),
            "/orders",
            403,
            "expired at",
        ),
        (
            "wrong audience",
            example.token(&claims(frontend, json!(["billing"]), now() + 300)),
            "/orders",
            403,
            "does not name this server",
        ),
        (
            "no audience",
            example.token(&json!({"sub": frontend, "exp": now() + 300})),
            "/orders",
            403,
            "no `aud` claim",
        ),
        (
            "no expiry",
            example.token(&json!({"sub": frontend, "aud": "orders"})),
            "/orders",
            403,
            "no `exp` claim",
        ),
        (
            "sub not a SPIFFE ID",
            example.token(&claims("frontend", json!("orders"), now() + 300)),
            "/whoami",
            403,
            "is not a SPIFFE ID",
        ),
        (
            "trust domain without a bundle",
            example.token(&claims(
                "spiffe://stranger.org/ns/a/sa/b",
                json!("orders"),
                now() + 300,
            )),
            "/whoami",
            403,
            "no JWT bundle for trust domain `stranger.org`",
        ),
        ("alg none", alg_none, "/orders", 403, "`alg` is `none`"),
        ("alg HS256", hs256, "/orders", 403, "`alg` is `HS256`"),
    ];
    for (name, token, target, status, _) in &cases {
        let auth = format!("Bearer {token}");
        let r = request(
            h.envoy.port,
            "GET",
            target,
            &[("authorization", auth.as_str()), ("x-case", name)],
            b"",
        )
        .unwrap_or_else(|e| panic!("{name}: {e}\n{}", h.envoy.log_text()));
        assert_eq!(r.status, *status, "{name}");
    }
    // Without a token there is no identity (and no error).
    let r = request(h.envoy.port, "GET", "/whoami", &[("x-case", "none")], b"").unwrap();
    assert_eq!(r.status, 403);

    h.stop_arbiter().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    let events = arbiter_conformance::harness::read_events(&log).unwrap();
    assert_eq!(events.len(), cases.len() + 1, "{text}");
    let event = |name: &str| {
        events
            .iter()
            .find(|e| e["input"]["attributes"]["request"]["http"]["headers"]["x-case"] == name)
            .unwrap_or_else(|| panic!("no event for {name}"))
    };
    for (name, _, _, _, error) in &cases {
        let e = event(name);
        if error.is_empty() {
            assert_eq!(e["identity"]["source"], "jwt-svid", "{name}: {e}");
            assert_eq!(
                e["input"]["identity"]["spiffe_id"], e["identity"]["spiffe_id"],
                "{name}"
            );
            assert_eq!(e["input"]["identity"]["jwt"]["key_id"], "test", "{name}");
        } else {
            let why = e["identity"]["error"].as_str().unwrap_or_default();
            assert!(
                why.starts_with("JWT-SVID: ") && why.contains(error),
                "{name}: expected `{error}`, got {e}"
            );
            assert!(e["input"].get("identity").is_none(), "{name}: {e}");
        }
    }
    assert_eq!(event("none")["identity"], Json::Null);
    // The token itself is masked in the log (`authorization` is masked by default).
    assert!(!text.contains(&example.token(&good)[..40]));
}

//! opa-envoy-plugin's fixtures (`../shared/conformance/opa-envoy`): the input document arbiter
//! builds for each CheckRequest equals the one a real opa-envoy built (captured in
//! `observed/`), and the example policies give the decisions OPA-Envoy gives. Each JSON
//! CheckRequest goes through the server's path: decoded into Envoy's protobuf message,
//! encoded to bytes and decoded again as the gRPC server decodes it, then converted by the
//! server's one converter.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::{InputOptions, build_input};
use arbiter_engine::value::to_json;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use serde_json::{Value as Json, json};

/// A JSON CheckRequest as the server receives it: Envoy's protobuf message, as bytes on the
/// wire, read by the server's reader.
fn over_the_wire(json: &Json) -> Result<arbiter_engine::request::AuthzRequest, String> {
    use prost::Message;
    let message = arbiter_ext_authz::protojson::check_request(json)?;
    let bytes = message.encode_to_vec();
    arbiter_ext_authz::wire::authz_request(&bytes).map_err(|e| e.to_string())
}

fn suite() -> PathBuf {
    arbiter_conformance::suite_dir("ARBITER_OPA_ENVOY_FIXTURES", "opa-envoy")
        .unwrap_or_else(|e| panic!("{e}"))
}

fn read_json(p: &Path) -> Json {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Every CheckRequest fixture with the input opa-envoy built for it.
fn fixtures() -> Vec<(String, Json, Json)> {
    let dir = suite();
    let mut out = Vec::new();
    let mut requests: Vec<(String, PathBuf)> =
        std::fs::read_dir(dir.join("extracted/check-requests"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
            .collect();
    requests.push((
        "spiffe-get-request".into(),
        dir.join("observed/spiffe-get-request.check-request.json"),
    ));
    requests.sort();
    for (name, path) in requests {
        let observed = dir.join(format!("observed/{name}.input.json"));
        out.push((name, read_json(&path), read_json(&observed)));
    }
    assert!(
        out.len() >= 8,
        "expected the opa-envoy fixtures, found {}",
        out.len()
    );
    out
}

#[test]
fn inputs_equal_what_opa_envoy_built() {
    for (name, request, observed) in fixtures() {
        let req = over_the_wire(&request).unwrap_or_else(|e| panic!("{name}: {e}"));
        let built = build_input(&req, &InputOptions::default());
        if observed.get("__error__").is_some() {
            // opa-envoy refused this request (malformed JSON body); arbiter refuses it too (in
            // strict mode an empty request target is refused first).
            let reason = built.expect_err(&name);
            let lenient = InputOptions {
                path_policy: arbiter_engine::path::PathPolicy::Lenient,
                ..InputOptions::default()
            };
            let lenient_reason = build_input(&req, &lenient).expect_err(&name);
            assert!(
                ["body_parse_error", "non_canonical_path"].contains(&reason.code()),
                "{name}: {reason}"
            );
            assert_eq!(lenient_reason.code(), "body_parse_error", "{name}");
            continue;
        }
        if req.http.as_ref().is_some_and(|h| h.path.is_empty()) {
            // A request target Envoy never sends for HTTP (only CONNECT has none): refused in
            // strict mode (adversarial case A13c), read as OPA-Envoy does in lenient mode.
            assert_eq!(
                built.as_ref().map(|_| ()).map_err(|r| r.code()),
                Err("non_canonical_path"),
                "{name}"
            );
            let lenient = InputOptions {
                path_policy: arbiter_engine::path::PathPolicy::Lenient,
                ..InputOptions::default()
            };
            let built = to_json(&build_input(&req, &lenient).unwrap().value);
            assert_eq!(
                built, observed,
                "{name} (lenient): differs from opa-envoy's"
            );
            continue;
        }
        let built = to_json(&built.unwrap_or_else(|e| panic!("{name}: {e}")).value);
        assert_eq!(
            built, observed,
            "{name}: arbiter's input differs from opa-envoy's"
        );
    }
}

/// The `policy.rego` of the ConfigMaps in a Kubernetes example, and the decision path its OPA
/// configuration names.
fn example_policy(file: &Path) -> (String, String) {
    let text = std::fs::read_to_string(file).unwrap();
    let mut policy = None;
    let mut path = "envoy/authz/allow".to_string();
    for doc in text.split("\n---") {
        let Ok(v) = yaml_serde::from_str::<Json>(doc) else {
            continue;
        };
        if let Some(p) = v.pointer("/data/policy.rego").and_then(Json::as_str) {
            policy = Some(p.to_string());
        }
        if let Some(conf) = v.pointer("/data/config.yaml").and_then(Json::as_str) {
            let c: Json = yaml_serde::from_str(conf).unwrap();
            if let Some(p) = c
                .pointer("/plugins/envoy_ext_authz_grpc/path")
                .and_then(Json::as_str)
            {
                path = p.to_string();
            }
        }
    }
    (
        policy.unwrap_or_else(|| panic!("{}: no policy.rego", file.display())),
        path,
    )
}

fn authorizer(policy: &str, path: &str) -> Authorizer {
    let mut s = PolicySources::default();
    s.add_rego("policy.rego", policy);
    let set =
        PolicySet::from_sources(&s, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    Authorizer::new(
        Arc::new(set),
        DataRef::parse(path).unwrap(),
        InputOptions::default(),
    )
}

/// The decision with the whole input document (as with a decision log), checked to be the one
/// made with only the parts the policy reads (as without one).
fn decide(a: &Authorizer, request: &Json) -> bool {
    let r = over_the_wire(request).unwrap();
    let whole = a.check(&r).decision;
    assert_eq!(whole, a.check_with(&r, false).decision, "{request}");
    whole.allowed
}

#[test]
fn istio_example_policy_decides_as_opa_envoy() {
    let (policy, path) = example_policy(&suite().join("examples/istio/quick_start.yaml"));
    assert_eq!(path, "istio/authz/allow");
    let a = authorizer(&policy, &path);
    // From the plugin's documented example: bob (admin) may GET /api/v1/products, alice
    // (guest) may not; requests without credentials are denied.
    let expected = [
        ("example-allowed-request", true),
        ("example-denied-request", false),
        ("example-allowed-request-parsed-path", false),
        ("spiffe-get-request", false),
        ("protomap-ext-authz-request", false),
    ];
    let all = fixtures();
    for (name, want) in expected {
        let (_, request, _) = all.iter().find(|(n, _, _)| n == name).unwrap();
        assert_eq!(decide(&a, request), want, "{name}");
    }
    // Its health rule: GET /health is public.
    let health = json!({"attributes": {"request": {"http": {"method": "GET", "path": "/health"}}}});
    assert!(decide(&a, &health));
}

/// An HS256 token signed with the quick start's key `secret`.
fn token(claims: &Json) -> String {
    use arbiter_engine::regorus::Value;
    let mut e = arbiter_engine::rego::new_engine(&arbiter_engine::rego::EngineOptions::default());
    e.add_policy(
        "t.rego".into(),
        "package t\nt := io.jwt.encode_sign({\"alg\": \"HS256\", \"typ\": \"JWT\"}, input, {\"kty\": \"oct\", \"k\": base64url.encode_no_pad(\"secret\")})".into(),
    )
    .unwrap();
    e.set_input(arbiter_engine::value::from_json(claims));
    match e.eval_rule("data.t.t".into()).unwrap() {
        Value::String(s) => s.to_string(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn quick_start_policy_decides_as_opa_envoy() {
    let dir = suite();
    let policy = std::fs::read_to_string(dir.join("extracted/quick_start-policy.rego")).unwrap();
    let (from_yaml, path) = example_policy(&dir.join("quick_start.yaml"));
    assert_eq!(policy.trim(), from_yaml.trim());
    // Its `import input.attributes.request.http as http_request` is followed: a check builds
    // the method, path and authorization header of `http`, not every header and field.
    let mut engine = arbiter_engine::regorus::Engine::new();
    engine
        .add_policy("quick_start.rego".into(), policy.clone())
        .unwrap();
    let reads = arbiter_engine::input::needs::RegoReads::of(engine.get_modules()).at(&[
        "envoy".to_string(),
        "authz".to_string(),
        "allow".to_string(),
    ]);
    let http = reads
        .get("attributes")
        .and_then(|n| n.get("request"))
        .and_then(|n| n.get("http"))
        .unwrap();
    assert!(!http.is_whole(), "{reads:?}");
    assert!(http.get("method").is_some() && http.get("path").is_some());
    assert!(
        http.get("headers")
            .is_some_and(|h| !h.is_whole() && h.get("authorization").is_some())
    );
    assert!(http.get("host").is_none() && reads.get("parsed_body").is_some());
    let a = authorizer(&policy, &path);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // The tutorial's users: alice is a guest, bob an admin; `sub` is the base64 of the name.
    let alice =
        token(&json!({"role": "guest", "sub": "YWxpY2U=", "nbf": now - 60, "exp": now + 3600}));
    let bob = token(&json!({"role": "admin", "sub": "Ym9i", "nbf": now - 60, "exp": now + 3600}));
    let expired =
        token(&json!({"role": "admin", "sub": "Ym9i", "nbf": now - 7200, "exp": now - 3600}));
    let req = |method: &str, path: &str, tok: &str, body: Option<&str>| {
        let mut headers = json!({"authorization": format!("Bearer {tok}")});
        let mut http = json!({"method": method, "path": path});
        if let Some(b) = body {
            headers["content-type"] = json!("application/json");
            http["body"] = json!(b);
        }
        http["headers"] = headers;
        json!({"attributes": {"request": {"http": http}}})
    };
    // As documented in OPA's Envoy tutorial.
    assert!(
        decide(&a, &req("GET", "/people", &alice, None)),
        "guest may list people"
    );
    assert!(
        !decide(
            &a,
            &req(
                "POST",
                "/people",
                &alice,
                Some(r#"{"firstname": "Charlie"}"#)
            )
        ),
        "guest may not create people"
    );
    assert!(
        decide(&a, &req("GET", "/people", &bob, None)),
        "admin may list people"
    );
    assert!(
        decide(
            &a,
            &req("POST", "/people", &bob, Some(r#"{"firstname": "Charlie"}"#))
        ),
        "admin may create others"
    );
    assert!(
        !decide(
            &a,
            &req("POST", "/people", &bob, Some(r#"{"firstname": "Bob"}"#))
        ),
        "admin may not create themself"
    );
    assert!(
        !decide(&a, &req("GET", "/people", &expired, None)),
        "expired token"
    );
    assert!(
        !decide(&a, &req("GET", "/people", "not.a.token", None)),
        "garbage token"
    );
    // The plugin's own fixtures carry no bearer token: all denied.
    for (name, request, _) in fixtures() {
        assert!(!decide(&a, &request), "{name}");
    }
}

//! Bundles both ways, against recorded OPA (issue 17): the bundles in
//! `conformance/fixtures/opa-bundles/` were built by real OPA 1.7.1 (`opa build`: plain, signed
//! HS256 and RS256, with roots) and by `arbiter build`, and each was served by real `opa run
//! --server` (which verifies signatures) and asked through the Data API; `expected.json` holds
//! its answers. Here arbiter loads every one of those bundles — OPA's and its own — and must give
//! the same revision, roots, data and decisions; and `arbiter build` must still make the bundles
//! OPA was recorded accepting. Re-record with `conformance/opa-bundles/record.sh` (needs `opa`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use arbiter_engine::bundle::{self, Signing, Verification};
use arbiter_engine::value::{from_json, to_json};
use arbiter_engine::{LoadOptions, PolicySet};
use serde_json::Value as Json;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/opa-bundles")
}

fn verification(kind: &str) -> Option<Verification> {
    let (algorithm, key) = match kind {
        "hs256" => ("HS256", "s3cret".to_string()),
        "rs256" => (
            "RS256",
            std::fs::read_to_string(dir().join("rs256.pub.pem")).unwrap(),
        ),
        _ => return None,
    };
    // What OPA's `--verification-key-id` defaults to, and the `kid` `opa build` writes.
    Some(Verification::single("default", algorithm, &key, ""))
}

/// `data.envoy.authz.allow` (or any query) as the Data API's `result`: `null` when undefined.
fn result(set: &PolicySet, query: &str, input: Option<&Json>) -> Json {
    let r = set.query(query, input.map(from_json)).unwrap();
    r.result
        .first()
        .and_then(|x| x.expressions.first())
        .map_or(Json::Null, |e| to_json(&e.value))
}

#[test]
fn bundles_built_by_opa_and_by_arbiter_load_and_decide_as_opa_answered() {
    let expected: Json =
        serde_json::from_str(&std::fs::read_to_string(dir().join("expected.json")).unwrap())
            .unwrap();
    let inputs: Vec<Json> = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("opa-bundles/inputs.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let bundles = expected["bundles"].as_object().unwrap();
    assert_eq!(bundles.len(), 8, "four built by OPA, four by arbiter");
    for (name, want) in bundles {
        let kind = want["verification"].as_str().unwrap_or("");
        let v = verification(kind);
        let b = bundle::load(&dir().join(name), v.as_ref())
            .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
        assert_eq!(b.manifest.revision, want["revision"], "{name}: revision");
        let roots = b
            .manifest
            .roots
            .clone()
            .unwrap_or_else(|| vec![String::new()]);
        assert_eq!(Json::from(roots), want["roots"], "{name}: roots");
        assert_eq!(b.signed, v.is_some(), "{name}: signed");
        let set = PolicySet::from_sources(&b.sources, &LoadOptions::default()).unwrap();
        assert_eq!(
            result(&set, "data.authz", None),
            want["data_authz"],
            "{name}: data"
        );
        for (input, answer) in inputs.iter().zip(want["allow"].as_array().unwrap()) {
            assert_eq!(
                &result(&set, "data.envoy.authz.allow", Some(input)),
                answer,
                "{name}: allow for {input}"
            );
        }
        // A signed bundle with the wrong key is refused.
        if let Some(v) = v {
            let mut wrong = v.clone();
            for k in wrong.keys.values_mut() {
                k.key = if kind == "hs256" {
                    "guess".into()
                } else {
                    rcgen_public_key()
                };
            }
            assert!(
                bundle::load(&dir().join(name), Some(&wrong)).is_err(),
                "{name} loaded with the wrong key"
            );
            // OPA's configuration names the key; the configured id wins over the `kid` the
            // signer wrote (`default`), as OPA chooses (issue 25, item 2).
            let key = v.keys["default"].clone();
            let named = Verification {
                key_id: "global_key".into(),
                keys: BTreeMap::from([("global_key".to_string(), key.clone())]),
                ..Verification::default()
            };
            bundle::load(&dir().join(name), Some(&named))
                .unwrap_or_else(|e| panic!("{name} with keyid global_key: {e}"));
            // Without a configured id, the `kid` names the key: `default` in what OPA signed
            // (not among these keys), none in what `arbiter build` signed without a key id.
            let unnamed = Verification {
                key_id: String::new(),
                ..named
            };
            let e = bundle::load(&dir().join(name), Some(&unnamed)).unwrap_err();
            let want = if name.starts_with("opa-") {
                "verification key corresponding to ID default not found"
            } else {
                "verification key ID is empty"
            };
            assert!(e.contains(want), "{name}: {e}");
        }
    }
}

/// Another RSA public key than the one the bundles were signed with.
fn rcgen_public_key() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .unwrap_or_else(|_| rcgen::KeyPair::generate().unwrap());
    key.public_key_pem()
}

/// `arbiter build` still makes, byte for byte in every file, the bundles OPA was recorded
/// accepting (the RS256 one is left out: its private key was thrown away after signing).
#[test]
fn arbiter_build_still_makes_the_bundles_opa_accepted() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("opa-bundles/src");
    let roots = vec!["envoy".to_string(), "authz".to_string()];
    let hs = Signing {
        algorithm: "HS256".into(),
        key: "s3cret".into(),
        key_id: None,
        scope: None,
    };
    for (name, revision, roots, signing) in [
        ("arbiter-plain.tar.gz", "arb-r1", None, None),
        ("arbiter-hs256.tar.gz", "arb-r2", None, Some(&hs)),
        (
            "arbiter-roots.tar.gz",
            "arb-r4",
            Some(roots.as_slice()),
            None,
        ),
    ] {
        let fresh = bundle::build(&src, revision, roots, signing).unwrap();
        let fresh: BTreeMap<String, Vec<u8>> = bundle::untar(&fresh).unwrap();
        let committed = bundle::untar(&std::fs::read(dir().join(name)).unwrap()).unwrap();
        assert_eq!(
            fresh.keys().collect::<Vec<_>>(),
            committed.keys().collect::<Vec<_>>(),
            "{name}: files"
        );
        for (path, bytes) in &committed {
            assert_eq!(
                fresh.get(path),
                Some(bytes),
                "{name}: {path} differs from the bundle OPA accepted; re-record with conformance/opa-bundles/record.sh"
            );
        }
    }
}

use std::collections::BTreeMap;

use super::*;
use crate::{DataRef, LoadOptions, PolicySet};

fn tmp(name: &str) -> crate::scratch::ScratchDir {
    crate::scratch::ScratchDir::new(&format!("arbiter-bundle-{}-{name}", std::process::id()))
}

/// A policy folder: a module under `example/`, data under `example/`, a CEL file, a test.
fn policy_dir(name: &str) -> crate::scratch::ScratchDir {
    let d = tmp(name);
    std::fs::create_dir_all(d.join("example")).unwrap();
    std::fs::write(
        d.join("example/authz.rego"),
        "package example.authz\n\ndefault allow := false\n\nallow if input.user in data.example.admins\n",
    )
    .unwrap();
    std::fs::write(d.join("example/data.json"), r#"{"admins": ["ann"]}"#).unwrap();
    std::fs::write(
        d.join("example/authz_test.rego"),
        "package example.authz_test\n\nimport data.example.authz\n\ntest_ann if authz.allow with input as {\"user\": \"ann\"}\n",
    )
    .unwrap();
    std::fs::write(d.join("notes.txt"), "not part of a bundle").unwrap();
    d
}

fn decide(sources: &PolicySources, user: &str) -> bool {
    let set = PolicySet::from_sources(sources, &LoadOptions::default()).unwrap();
    let v = set
        .evaluate(
            &DataRef::parse("example/authz/allow").unwrap(),
            crate::value::from_json(&serde_json::json!({"user": user})),
        )
        .unwrap();
    v == regorus::Value::Bool(true)
}

#[test]
fn build_then_load_like_opa_reads_it() {
    let dir = policy_dir("build");
    let roots = vec!["example".to_string()];
    let bytes = build(&dir, "rev-42", Some(&roots), None).unwrap();
    let files = untar(&bytes).unwrap();
    let names: Vec<&str> = files.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            ".manifest",
            "example/authz.rego",
            "example/authz_test.rego",
            "example/data.json"
        ]
    );
    // Entries are relative names, as `tar -czf` writes them (OPA reads both forms).
    let gz = flate2::read::GzDecoder::new(bytes.as_slice());
    let mut archive = tar::Archive::new(gz);
    let raw: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect();
    assert!(
        raw.iter()
            .all(|p| !p.starts_with('/') && !p.starts_with("./")),
        "{raw:?}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&files[".manifest"]).unwrap();
    assert_eq!(
        manifest,
        serde_json::json!({"revision": "rev-42", "roots": ["example"]})
    );

    let b = from_files(files, "b.tar.gz", None).unwrap();
    assert_eq!(b.manifest.revision, "rev-42");
    assert!(decide(&b.sources, "ann") && !decide(&b.sources, "bob"));
    let set = PolicySet::from_sources(&b.sources, &LoadOptions::default()).unwrap();
    assert_eq!(
        set.revision(),
        "rev-42",
        "the manifest revision names the policy set"
    );
    assert_eq!(b.sources.rego_tests.len(), 1);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn structured_files_hash_as_opa_does() {
    // OPA hashes data.json over its JSON with sorted keys, no whitespace, numbers as written
    // and no HTML escaping (bundle/hash.go); other files over their bytes.
    let data = br#"{ "b": 1, "a": [1.50, "x<y", {"d": null, "c": true}] }"#;
    let canonical = r#"{"a":[1.50,"x<y",{"c":true,"d":null}],"b":1}"#;
    let want = hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        canonical.as_bytes(),
    ));
    assert_eq!(file_hash("data.json", data).unwrap(), want);
    assert_eq!(file_hash("x/data.json", data).unwrap(), want);
    let rego = b"package x\n";
    assert_eq!(
        file_hash("x.rego", rego).unwrap(),
        hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, rego))
    );
    // Go escapes control characters as \u00XX, and U+2028.
    let mut out = Vec::new();
    go_string("a\u{8}\u{2028}\"", &mut out);
    assert_eq!(String::from_utf8(out).unwrap(), r#""a\u0008\u2028\"""#);
}

fn keys(alg: &'static rcgen::SignatureAlgorithm) -> (String, String) {
    let k = rcgen::KeyPair::generate_for(alg).unwrap();
    (k.serialize_pem(), k.public_key_pem())
}

#[test]
fn signed_bundles_verify_and_tampering_is_refused() {
    let dir = policy_dir("signed");
    let hs = (
        Signing {
            algorithm: "HS256".into(),
            key: "secret".into(),
            key_id: Some("k1".into()),
            scope: Some("write".into()),
        },
        Verification::single("k1", "HS256", "secret", "write"),
    );
    let (es_priv, es_pub) = keys(&rcgen::PKCS_ECDSA_P256_SHA256);
    let es = (
        Signing {
            algorithm: "ES256".into(),
            key: es_priv,
            key_id: None,
            scope: None,
        },
        Verification::single("", "ES256", &es_pub, ""),
    );
    let (rs_priv, rs_pub) = keys(&rcgen::PKCS_RSA_SHA256);
    let rs = (
        Signing {
            algorithm: "RS256".into(),
            key: rs_priv,
            key_id: Some("global".into()),
            scope: None,
        },
        Verification::single("global", "RS256", &rs_pub, ""),
    );
    for (signing, verification) in [hs, es, rs] {
        let alg = signing.algorithm.clone();
        let bytes = build(&dir, "r1", None, Some(&signing)).unwrap();
        let files = untar(&bytes).unwrap();
        let sig: serde_json::Value = serde_json::from_slice(&files[".signatures.json"]).unwrap();
        assert_eq!(sig["signatures"].as_array().unwrap().len(), 1, "{alg}");
        let ok = from_files(files.clone(), "b", Some(&verification)).unwrap();
        assert!(ok.signed && decide(&ok.sources, "ann"), "{alg}");

        let refuse = |files: BTreeMap<String, Vec<u8>>, v: &Verification, want: &str| {
            let e = from_files(files, "b", Some(v)).unwrap_err();
            assert!(e.contains(want), "{alg}: `{e}` lacks `{want}`");
        };
        // One changed byte in the data.
        let mut t = files.clone();
        t.insert(
            "example/data.json".into(),
            br#"{"admins": ["bob"]}"#.to_vec(),
        );
        refuse(t, &verification, "digest mismatch");
        // Whitespace alone is not a change (hashes are over the JSON).
        let mut t = files.clone();
        t.insert(
            "example/data.json".into(),
            br#"{ "admins" : [ "ann" ] }"#.to_vec(),
        );
        assert!(from_files(t, "b", Some(&verification)).is_ok(), "{alg}");
        // A file the signature does not list.
        let mut t = files.clone();
        t.insert(
            "example/extra.rego".into(),
            b"package example.extra\n".to_vec(),
        );
        refuse(t, &verification, "not included in bundle signature");
        // A listed file removed.
        let mut t = files.clone();
        t.remove("example/authz_test.rego");
        refuse(t, &verification, "not found in the target bundle");
        // Another key.
        let mut other = verification.clone();
        for k in other.keys.values_mut() {
            k.key = if alg == "HS256" {
                "other".into()
            } else {
                keys(if alg == "ES256" {
                    &rcgen::PKCS_ECDSA_P256_SHA256
                } else {
                    &rcgen::PKCS_RSA_SHA256
                })
                .1
            };
        }
        refuse(files.clone(), &other, "verification failed");
        // Unsigned, or signed without a key configured.
        let mut t = files.clone();
        t.remove(".signatures.json");
        refuse(t, &verification, "missing .signatures.json");
        assert!(
            from_files(files, "b", None)
                .unwrap_err()
                .contains("no verification key")
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn an_opa_built_bundle_loads() {
    // The layout `opa build -b` writes (OPA docs "Bundles" → "Bundle File Format"): data
    // merged into one root data.json, modules at their paths, the manifest, and a signature
    // whose payload lists every file with OPA's hash (written here the way OPA computes it).
    let data = br#"{"example":{"admins":["ann"]}}"#.to_vec();
    let module = b"package example.authz\n\nimport rego.v1\n\ndefault allow := false\n\nallow if input.user in data.example.admins\n".to_vec();
    let manifest = br#"{"revision":"opa-7","roots":["example"]}"#.to_vec();
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert("data.json".into(), data);
    files.insert("example/authz.rego".into(), module);
    files.insert(".manifest".into(), manifest);
    let listed: Vec<serde_json::Value> = files
        .iter()
        .map(|(n, b)| {
            serde_json::json!({"name": n, "hash": file_hash(n, b).unwrap(), "algorithm": "SHA-256"})
        })
        .collect();
    let header = b64url(br#"{"alg":"HS256","kid":"opa-key"}"#);
    let payload = b64url(
        serde_json::json!({"files": listed, "iat": 1_700_000_000, "iss": "JWTService"})
            .to_string()
            .as_bytes(),
    );
    let sig =
        jose::hmac_sign("HS256", b"s3cret", format!("{header}.{payload}").as_bytes()).unwrap();
    files.insert(
        ".signatures.json".into(),
        serde_json::to_vec(
            &serde_json::json!({"signatures": [format!("{header}.{payload}.{}", b64url(&sig))]}),
        )
        .unwrap(),
    );
    let v = Verification::single("opa-key", "HS256", "s3cret", "");
    let b = from_files(files, "opa.tar.gz", Some(&v)).unwrap();
    assert_eq!(b.manifest.revision, "opa-7");
    assert!(decide(&b.sources, "ann") && !decide(&b.sources, "bob"));
}

#[test]
fn roots_and_paths_are_enforced() {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    files.insert(
        ".manifest".into(),
        br#"{"revision":"r","roots":["example"]}"#.to_vec(),
    );
    files.insert("other/p.rego".into(), b"package other\nx := 1\n".to_vec());
    assert!(
        from_files(files.clone(), "b", None)
            .unwrap_err()
            .contains("do not permit 'other'")
    );
    files.remove("other/p.rego");
    files.insert("other/data.json".into(), br#"{"x": 1}"#.to_vec());
    assert!(
        from_files(files.clone(), "b", None)
            .unwrap_err()
            .contains("do not permit data at path '/other")
    );
    files.remove("other/data.json");
    files.insert("data.json".into(), br#"{"example": {"ok": 1}}"#.to_vec());
    assert!(
        from_files(files.clone(), "b", None).is_ok(),
        "data inside the roots through a parent"
    );
    files.insert(".manifest".into(), br#"{"roots":["a", "a/b"]}"#.to_vec());
    assert!(
        from_files(files.clone(), "b", None)
            .unwrap_err()
            .contains("overlapped roots")
    );
    assert!(clean("../etc/passwd").is_err() && clean("a/../b").is_err());
    assert_eq!(clean("/a/b.rego").unwrap(), "a/b.rego");
    assert!(untar(b"not a gzip").is_err());
}

#[test]
fn go_path_match_is_gos_filepath_match() {
    // Cases from Go's path/filepath match_test.go.
    for (pattern, name, want) in [
        ("abc", "abc", true),
        ("*", "abc", true),
        ("*c", "abc", true),
        ("a*", "a", true),
        ("a*", "abc", true),
        ("a*", "ab/c", false),
        ("a*/b", "abc/b", true),
        ("a*/b", "a/c/b", false),
        ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
        ("a*b?c*x", "abxbbxdbxebxczzx", true),
        ("a*b?c*x", "abxbbxdbxebxczzy", false),
        ("ab[c]", "abc", true),
        ("ab[b-d]", "abc", true),
        ("ab[e-g]", "abc", false),
        ("ab[^c]", "abc", false),
        ("ab[^b-d]", "abe", true),
        ("a\\*b", "a*b", true),
        ("a\\*b", "ab", false),
        ("a?b", "a/b", false),
        ("a*b", "a/b", false),
        ("*.json", "data.json", true),
        ("*.json", "x/data.json", false),
        ("*/*.json", "x/data.json", true),
        ("[", "a", false),
    ] {
        assert_eq!(go_path_match(pattern, name), want, "{pattern} ~ {name}");
    }
}

#[test]
fn excluded_files_load_unverified() {
    let dir = policy_dir("excluded");
    let signing = Signing {
        algorithm: "HS256".into(),
        key: "secret".into(),
        key_id: None,
        scope: None,
    };
    let bytes = build(&dir, "r1", None, Some(&signing)).unwrap();
    let mut files = untar(&bytes).unwrap();
    // A file added after signing: refused, unless an exclude pattern covers it.
    files.insert("example/extra.json".into(), br#"{"x": 1}"#.to_vec());
    let mut v = Verification::single("", "HS256", "secret", "");
    let e = from_files(files.clone(), "b", Some(&v)).unwrap_err();
    assert!(e.contains("not included in bundle signature"), "{e}");
    v.exclude_files = vec!["example/*.json".into()];
    // The pattern also covers a listed file, which then is not checked: a changed
    // example/data.json loads.
    files.insert(
        "example/data.json".into(),
        br#"{"admins": ["bob"]}"#.to_vec(),
    );
    let b = from_files(files, "b", Some(&v)).unwrap();
    assert!(decide(&b.sources, "bob"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bundles_served_together_claim_disjoint_roots() {
    let m = |roots: Option<&[&str]>| Manifest {
        roots: roots.map(|r| r.iter().map(|s| s.to_string()).collect()),
        ..Manifest::default()
    };
    let (authz, data, nested, all) = (
        m(Some(&["envoy/authz"])),
        m(Some(&["roles", "entitlements"])),
        m(Some(&["envoy"])),
        m(None),
    );
    check_disjoint_roots(&[("authz", &authz), ("data", &data)]).unwrap();
    check_disjoint_roots(&[("alone", &all)]).unwrap();
    assert_eq!(
        check_disjoint_roots(&[("authz", &authz), ("data", &data), ("base", &nested)]).unwrap_err(),
        "detected overlapping roots in manifests for these bundles: [authz, base] (envoy overlaps envoy/authz)"
    );
    assert_eq!(
        check_disjoint_roots(&[("a", &data), ("b", &data)]).unwrap_err(),
        "detected overlapping roots in manifests for these bundles: [a, b] (root entitlements is in multiple bundles, root roles is in multiple bundles)"
    );
    assert!(
        check_disjoint_roots(&[("authz", &authz), ("all", &all)])
            .unwrap_err()
            .contains("bundle(s) [all] specify empty root paths")
    );
}

/// Issue 18 item 7: one set of load limits, applied the same way by a folder, a bundle file, a
/// bundle folder and a bundle's bytes (as a download gives them); each refusal names the limit
/// and how to raise it. A large `data.json` used to be refused from a folder and accepted
/// from a bundle.
#[test]
fn every_loader_applies_the_same_load_limits() {
    use crate::limits::LoadLimits;
    let dir = policy_dir("limits");
    // 2,000 admins: a data file of about 20 KB.
    let admins: Vec<String> = (0..2000).map(|i| format!("user{i:05}")).collect();
    std::fs::write(
        dir.join("example/data.json"),
        serde_json::to_vec(&serde_json::json!({ "admins": admins })).unwrap(),
    )
    .unwrap();
    let data_len = std::fs::metadata(dir.join("example/data.json"))
        .unwrap()
        .len();
    let bytes = build(&dir, "r1", None, None).unwrap();
    let tar_dir = tmp("limits-tar");
    let tarball = tar_dir.join("bundle.tar.gz");
    std::fs::write(&tarball, &bytes).unwrap();

    type Loader<'a> = (
        &'a str,
        Box<dyn Fn(&LoadLimits) -> Result<PolicySources, String> + 'a>,
    );
    let loaders: Vec<Loader> = vec![
        (
            "folder",
            Box::new(|l: &LoadLimits| {
                PolicySources::discover_with(&[&dir], &[], l).map_err(|e| e.to_string())
            }),
        ),
        (
            "bundle file",
            Box::new(|l: &LoadLimits| {
                PolicySources::discover_with(&[&tarball], &[], l).map_err(|e| e.to_string())
            }),
        ),
        (
            "bundle folder",
            Box::new(|l: &LoadLimits| load_with(&dir, None, l).map(|b| b.sources)),
        ),
        (
            "bundle bytes",
            Box::new(|l: &LoadLimits| {
                from_files_with(untar_with(&bytes, l)?, "remote", None, l).map(|b| b.sources)
            }),
        ),
    ];
    let defaults = LoadLimits::default();
    for (name, load) in &loaders {
        let sources = load(&defaults).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(decide(&sources, "user01999"), "{name}");

        let small_data = LoadLimits {
            max_data_file_bytes: data_len - 1,
            ..defaults
        };
        let err = load(&small_data).map(|_| ()).unwrap_err();
        assert!(
            err.contains(&format!(
                "file is {data_len} bytes, over the limit of {} bytes for data files (raise it \
                 with --max-data-file-bytes or `limits: {{max_data_file_bytes: …}}` in the config)",
                data_len - 1
            )) && err.contains("data.json"),
            "{name}: {err}"
        );
        let raised = LoadLimits {
            max_data_file_bytes: data_len,
            ..defaults
        };
        assert!(load(&raised).is_ok(), "{name}");

        // Two Rego files (a module and its test): one is over a limit of one.
        let few_modules = LoadLimits {
            max_modules: 1,
            ..defaults
        };
        let err = load(&few_modules).map(|_| ()).unwrap_err();
        assert!(
            err.contains("2 policy files, over the limit of 1 (raise it with --max-modules"),
            "{name}: {err}"
        );

        let small_bundle = LoadLimits {
            max_bundle_bytes: data_len,
            ..defaults
        };
        match (*name, load(&small_bundle)) {
            // A folder of policies is not a bundle: its files are limited one by one.
            ("folder", r) => assert!(r.is_ok(), "{name}"),
            (_, r) => {
                let err = r.map(|_| ()).unwrap_err();
                assert!(
                    err.contains(&format!(
                        "the bundle is larger than {data_len} bytes uncompressed (raise it with \
                         --max-bundle-bytes"
                    )),
                    "{name}: {err}"
                );
            }
        }
    }
}

/// A bundle folder that is a git checkout: its hidden folders are not read, so they count
/// toward no limit (`arbiter build .` in a repository with a large `.git`).
#[test]
fn a_bundle_folder_skips_hidden_folders() {
    use crate::limits::LoadLimits;
    let dir = policy_dir("hidden");
    std::fs::create_dir_all(dir.join(".git/objects")).unwrap();
    std::fs::write(dir.join(".git/objects/pack"), vec![b'x'; 1 << 20]).unwrap();
    let limits = LoadLimits {
        max_bundle_bytes: 64 << 10,
        ..LoadLimits::default()
    };
    let files = read_dir_with(&dir, &limits).unwrap();
    assert!(
        files.keys().all(|k| !k.starts_with(".git")),
        "{:?}",
        files.keys()
    );
    assert!(files.contains_key("example/authz.rego"));
    assert!(build_with(&dir, "r", None, None, &limits).is_ok());
}

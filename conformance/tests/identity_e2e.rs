//! Workload identity through real Envoy with mTLS: a downstream listener that requires client
//! certificates from a test CA, Envoy → arbiter over mTLS with a caller allow-list, and SVIDs
//! generated here. Two SVIDs get two decisions from one policy; the principal rows of the
//! Rego/CEL decision table run through Envoy; a caller without an allowed identity gets no
//! `CheckResponse`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use arbiter_conformance::envoy::{EnvoyOptions, TempDir, request_tls, tls_client_config};
use arbiter_conformance::harness::{Harness, loopback_config};
use arbiter_conformance::pki::{Ca, Pair};
use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::tls::TlsSettings;

const ENVOY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/envoy";
const ROGUE_ID: &str = "spiffe://cluster.local/ns/default/sa/rogue";

struct Pki {
    _dir: TempDir,
    ca: Ca,
    envoy_listener: Pair,
    envoy_client: Pair,
    rogue_client: Pair,
    arbiter: Pair,
}

fn pki() -> Pki {
    let dir = TempDir::new("pki").unwrap();
    let ca = Ca::new(&dir.0, "cluster.local mesh CA").unwrap();
    let envoy_listener = ca
        .issue(
            "envoy-listener",
            Some("spiffe://cluster.local/ns/default/sa/products"),
            &["localhost"],
            &["127.0.0.1"],
        )
        .unwrap();
    let envoy_client = ca.issue("envoy-client", Some(ENVOY_ID), &[], &[]).unwrap();
    let rogue_client = ca.issue("rogue-client", Some(ROGUE_ID), &[], &[]).unwrap();
    let arbiter = ca
        .issue(
            "arbiter",
            Some("spiffe://cluster.local/ns/arbiter/sa/arbiter"),
            &["localhost"],
            &["127.0.0.1"],
        )
        .unwrap();
    Pki {
        _dir: dir,
        ca,
        envoy_listener,
        envoy_client,
        rogue_client,
        arbiter,
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn reference(keep_rego: bool, keep_cel: bool) -> Authorizer {
    let mut sources = PolicySources::discover(&[repo().join("policies")]).unwrap();
    if !keep_rego {
        sources.rego.clear();
    }
    if !keep_cel {
        sources.cel.clear();
    }
    let set = PolicySet::from_sources(&sources, &LoadOptions::default()).unwrap();
    Authorizer::new(
        Arc::new(set),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    )
}

/// Envoy: downstream mTLS (client certificates from the mesh CA required), and mTLS to arbiter
/// presenting `upstream_client`.
fn mtls(p: &Pki, upstream_client: &Pair) -> impl FnOnce(&mut EnvoyOptions) {
    let chain = arbiter_conformance::envoy::downstream_tls(
        &p.envoy_listener.cert,
        &p.envoy_listener.key,
        &p.ca.file,
        true,
    );
    let upstream = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          alpn_protocols: ["h2"]
          tls_certificates:
          - certificate_chain: {{filename: "{}"}}
            private_key: {{filename: "{}"}}
          validation_context:
            trusted_ca: {{filename: "{}"}}
"#,
        upstream_client.cert.display(),
        upstream_client.key.display(),
        p.ca.file.display()
    );
    move |o: &mut EnvoyOptions| {
        o.filter_chain_extra = chain;
        o.authz_cluster_extra = upstream;
    }
}

fn arbiter_tls(p: &Pki) -> TlsSettings {
    TlsSettings {
        cert: p.arbiter.cert.clone(),
        key: p.arbiter.key.clone(),
        client_ca: Some(p.ca.file.clone()),
        allowed_callers: vec!["spiffe://cluster.local/ns/istio-system/sa/*".into()],
    }
}

fn start(p: &Pki, authorizer: Authorizer, upstream_client: &Pair) -> Harness {
    let mut config = loopback_config(None);
    config.tls = Some(arbiter_tls(p));
    Harness::start(authorizer, config, mtls(p, upstream_client)).unwrap_or_else(|e| panic!("{e}"))
}

/// `curl` over mTLS with one SVID; the HTTP status. Fails (never skips) when curl is missing:
/// `.ci/run` installs it.
fn curl_status(
    port: u16,
    ca: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
    path: &str,
    header: &str,
) -> u16 {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .args(["-X", "POST", "-H", header])
        .arg(format!("https://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[derive(Debug, serde::Deserialize)]
struct Table {
    principals: BTreeMap<String, String>,
    cases: Vec<Case>,
}

#[derive(Debug, serde::Deserialize)]
struct Case {
    name: String,
    method: String,
    path: String,
    #[serde(default)]
    principal: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    expect: String,
}

#[test]
fn two_svids_two_decisions_and_the_table_through_envoy() {
    let p = pki();
    let table: Table = yaml_serde::from_str(
        &std::fs::read_to_string(repo().join("conformance/cases/differential/reference.yaml"))
            .unwrap(),
    )
    .unwrap();
    // One SVID per principal of the table.
    let mut svids: BTreeMap<String, Pair> = BTreeMap::new();
    for (i, c) in table
        .cases
        .iter()
        .filter_map(|c| c.principal.as_ref())
        .enumerate()
    {
        let id = table
            .principals
            .get(c)
            .cloned()
            .unwrap_or_else(|| c.clone());
        if svids.contains_key(&id) {
            continue;
        }
        svids.insert(
            id.clone(),
            p.ca.issue(&format!("client-{i}"), Some(&id), &[], &[])
                .unwrap(),
        );
    }
    for (name, rego, cel) in [
        ("rego", true, false),
        ("cel", false, true),
        ("both", true, true),
    ] {
        let h = start(&p, reference(rego, cel), &p.envoy_client);
        let client = |id: &str| {
            let s = &svids[id];
            tls_client_config(&p.ca.pem, Some((&s.cert_pem, &s.key_pem)), &[b"http/1.1"]).unwrap()
        };
        // One policy, one request, two SVIDs, two decisions.
        let frontend = table.principals["frontend"].clone();
        let products = table.principals["products"].clone();
        let tenant = [("x-tenant-id", "acme")];
        let r = request_tls(
            h.envoy.port,
            client(&frontend),
            "POST",
            "/api/v1/orders",
            &tenant,
        )
        .unwrap();
        assert_eq!(
            r.status,
            200,
            "{name}: frontend may order: {}\n{}",
            r.body_text(),
            h.envoy.log_text()
        );
        let r = request_tls(
            h.envoy.port,
            client(&products),
            "POST",
            "/api/v1/orders",
            &tenant,
        )
        .unwrap();
        assert_eq!(r.status, 403, "{name}: products may not order");
        // The same with curl, as an operator would try it.
        let curl = |id: &str| {
            let s = &svids[id];
            curl_status(
                h.envoy.port,
                &p.ca.file,
                &s.cert,
                &s.key,
                "/api/v1/orders",
                "x-tenant-id: acme",
            )
        };
        assert_eq!(curl(&frontend), 200, "{name}: curl as frontend");
        assert_eq!(curl(&products), 403, "{name}: curl as products");

        // Every row of the table that needs a caller identity.
        let mut run = 0;
        for c in table.cases.iter().filter(|c| c.principal.is_some()) {
            let id = table
                .principals
                .get(c.principal.as_ref().unwrap())
                .cloned()
                .unwrap_or_else(|| c.principal.clone().unwrap());
            let headers: Vec<(&str, &str)> = c
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = request_tls(h.envoy.port, client(&id), &c.method, &c.path, &headers)
                .unwrap_or_else(|e| panic!("{name}: {}: {e}", c.name));
            assert_eq!(
                r.status == 200,
                c.expect == "allow",
                "{name} through Envoy with mTLS: `{}` got {}",
                c.name,
                r.status
            );
            run += 1;
        }
        assert!(run >= 14, "{run}");
        assert_eq!(
            h.envoy.stat("http.ingress.ext_authz.error"),
            Some(0),
            "{name}: checks reached arbiter over mTLS"
        );
    }
}

#[test]
fn a_caller_without_an_allowed_identity_gets_no_check_response() {
    let p = pki();
    // Envoy presents an identity arbiter does not allow: every check fails at the TLS handshake,
    // and Envoy (failure_mode_allow: false) denies.
    let h = start(&p, reference(true, true), &p.rogue_client);
    let frontend =
        p.ca.issue(
            "frontend",
            Some("spiffe://cluster.local/ns/default/sa/frontend"),
            &[],
            &[],
        )
        .unwrap();
    let client = tls_client_config(
        &p.ca.pem,
        Some((&frontend.cert_pem, &frontend.key_pem)),
        &[b"http/1.1"],
    )
    .unwrap();
    let r = request_tls(h.envoy.port, client, "GET", "/public/x", &[]).unwrap();
    assert_eq!(
        r.status, 403,
        "a disallowed ext_authz caller must not get answers"
    );
    assert!(h.envoy.stat("http.ingress.ext_authz.error").unwrap_or(0) >= 1);

    // Directly: a rogue client completes its side of the handshake, then the server refuses it
    // and no byte of a response arrives.
    let grpc = h.arbiter.as_ref().unwrap().grpc_addr.unwrap();
    let config = tls_client_config(
        &p.ca.pem,
        Some((&p.rogue_client.cert_pem, &p.rogue_client.key_pem)),
        &[b"h2"],
    )
    .unwrap();
    let conn = rustls::ClientConnection::new(
        config,
        rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(grpc).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let mut buf = [0u8; 64];
    let got = tls.read(&mut buf);
    assert!(
        matches!(got, Err(_) | Ok(0)),
        "the rogue caller got data: {got:?}"
    );

    // Without a client certificate at all: refused too.
    let anonymous = tls_client_config(&p.ca.pem, None, &[b"h2"]).unwrap();
    let conn = rustls::ClientConnection::new(
        anonymous,
        rustls::pki_types::ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(grpc).unwrap();
    tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
    let got = tls.read(&mut buf);
    assert!(
        matches!(got, Err(_) | Ok(0)),
        "an anonymous caller got data: {got:?}"
    );
}

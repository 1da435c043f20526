//! TLS on arbiter's listeners: the certificate is re-read when its files change, new
//! handshakes get the new one, and an established connection keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use arbiter_engine::authorizer::Authorizer;
use arbiter_engine::input::InputOptions;
use arbiter_engine::record::InstanceLabels;
use arbiter_engine::{DataRef, LoadOptions, PolicySet, PolicySources};
use arbiter_ext_authz::tls::TlsSettings;
use arbiter_ext_authz::{ListenAddr, ServeOptions, ServerConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    params: rcgen::CertificateParams,
}

fn ca() -> Ca {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let cert = params.clone().self_signed(&key).unwrap();
    Ca { cert, key, params }
}

fn server_cert(ca: &Ca, cn: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn);
    let issuer = rcgen::Issuer::new(ca.params.clone(), &ca.key);
    (
        params.signed_by(&key, &issuer).unwrap().pem(),
        key.serialize_pem(),
    )
}

fn client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    // Full handshakes only: a resumed session would show the certificate it was made with.
    config.resumption = rustls::client::Resumption::disabled();
    Arc::new(config)
}

type Conn = rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>;

fn connect(port: u16, config: Arc<rustls::ClientConfig>) -> Conn {
    let conn = rustls::ClientConnection::new(
        config,
        ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    )
    .unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

fn peer_cn(c: &Conn) -> String {
    use x509_parser::prelude::FromDer;
    let der = c.conn.peer_certificates().unwrap()[0].clone();
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
    cert.subject()
        .iter_common_name()
        .next()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

/// One request on a kept-alive connection; returns the status code.
fn get_health(c: &mut Conn) -> u16 {
    c.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    loop {
        let n = c.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        assert!(n > 0, "connection closed");
    }
}

/// arbiter with TLS on both listeners (`cert`, `key`), requiring client certificates signed
/// by `client_ca` when given.
async fn start(
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    client_ca: Option<std::path::PathBuf>,
) -> arbiter_ext_authz::RunningServer {
    let mut s = PolicySources::default();
    s.add_rego("p.rego", "package envoy.authz\nallow := true\n");
    let authorizer = Authorizer::new(
        Arc::new(PolicySet::from_sources(&s, &LoadOptions::default()).unwrap()),
        DataRef::parse("envoy/authz/allow").unwrap(),
        InputOptions::default(),
    );
    arbiter_ext_authz::start(
        ServerConfig {
            grpc: ListenAddr::Tcp("127.0.0.1:0".into()),
            http: Some(ListenAddr::Tcp("127.0.0.1:0".into())),
            options: ServeOptions {
                dry_run: false,
                deadline: Duration::from_millis(50),
                labels: InstanceLabels {
                    id: "t".into(),
                    version: "t".into(),
                    extra: Default::default(),
                },
                api: Default::default(),
                grpc_duration_buckets: Vec::new(),
                active_config: serde_json::Value::Null,
            },
            workers: 1,
            queue: 8,
            decision_log: None,
            limits: Default::default(),
            ui: None,
            diagnostic: None,
            http_authz: None,
            otlp: None,
            tls: Some(TlsSettings {
                cert,
                key,
                client_ca,
                allowed_callers: Vec::new(),
            }),
        },
        authorizer,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_reload_without_dropping_connections() {
    let dir =
        arbiter_engine::scratch::ScratchDir::new(&format!("arbiter-tls-{}", std::process::id()));
    let ca = ca();
    let (cert_a, key_a) = server_cert(&ca, "first");
    let (cert_path, key_path) = (dir.join("tls.pem"), dir.join("tls.key"));
    std::fs::write(&cert_path, &cert_a).unwrap();
    std::fs::write(&key_path, &key_a).unwrap();

    let server = start(cert_path.clone(), key_path.clone(), None).await;
    let port = server.http_addr.unwrap().port();
    let config = client(&ca.cert.pem());

    let (cn, first_conn) = tokio::task::spawn_blocking({
        let config = config.clone();
        move || {
            let mut c = connect(port, config);
            assert_eq!(get_health(&mut c), 200);
            (peer_cn(&c), c)
        }
    })
    .await
    .unwrap();
    assert_eq!(cn, "first");

    // Rotate the files, as SPIRE does.
    let (cert_b, key_b) = server_cert(&ca, "second");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&key_path, &key_b).unwrap();
    std::fs::write(&cert_path, &cert_b).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let (cn, still_ok) = tokio::task::spawn_blocking(move || {
        // The reload happens on the next handshake.
        let mut c = connect(port, config.clone());
        let _ = get_health(&mut c);
        let mut c = connect(port, config);
        assert_eq!(get_health(&mut c), 200);
        let mut first = first_conn;
        (peer_cn(&c), get_health(&mut first))
    })
    .await
    .unwrap();
    assert_eq!(cn, "second", "new handshakes use the new certificate");
    assert_eq!(
        still_ok, 200,
        "the connection made before the rotation still works"
    );

    // A broken file keeps the last good certificate.
    std::fs::write(&cert_path, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let config = client(&ca.cert.pem());
    let cn = tokio::task::spawn_blocking(move || {
        let mut c = connect(port, config.clone());
        let _ = get_health(&mut c);
        let mut c = connect(port, config);
        assert_eq!(get_health(&mut c), 200);
        peer_cn(&c)
    })
    .await
    .unwrap();
    assert_eq!(cn, "second");
    server.shutdown().await.unwrap();
}

/// OPA's `services.*.tls.ca_cert` and `credentials.client_tls` (issue 25): a download from a
/// server that demands client certificates (arbiter's own HTTPS listener with a client CA)
/// succeeds with the configured certificate and fails without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_present_the_client_certificate_of_the_service() {
    use arbiter_ext_authz::fetch::{Fetched, get};
    use arbiter_ext_authz::service::{ServiceAuth, ServiceTls};
    let dir = arbiter_engine::scratch::ScratchDir::new(&format!(
        "arbiter-client-tls-{}",
        std::process::id()
    ));
    let ca = ca();
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_path = write("ca.pem", &ca.cert.pem());
    let (cert, key) = server_cert(&ca, "server");
    let (cert_path, key_path) = (write("tls.pem", &cert), write("tls.key", &key));
    let (client_cert, client_key) = server_cert(&ca, "client");
    let (client_cert, client_key) = (
        write("client.pem", &client_cert),
        write("client.key", &client_key),
    );
    let server = start(cert_path, key_path, Some(ca_path.clone())).await;
    let url = format!(
        "https://127.0.0.1:{}/health",
        server.http_addr.unwrap().port()
    );
    let with_cert = ServiceAuth {
        tls: ServiceTls {
            ca_cert: Some(ca_path.clone()),
            system_ca_required: false,
            client_cert: Some((client_cert, client_key)),
        },
        ..ServiceAuth::default()
    };
    let without_cert = ServiceAuth {
        tls: ServiceTls {
            ca_cert: Some(ca_path),
            ..ServiceTls::default()
        },
        ..ServiceAuth::default()
    };
    let (ok, refused) = tokio::task::spawn_blocking(move || {
        (
            get(&url, None, &with_cert, Duration::from_secs(5)),
            get(&url, None, &without_cert, Duration::from_secs(5)),
        )
    })
    .await
    .unwrap();
    match ok {
        Ok(Fetched::New { body, .. }) => {
            assert!(String::from_utf8_lossy(&body).contains("revision"));
        }
        other => panic!("with the client certificate: {other:?}"),
    }
    assert!(
        refused.is_err(),
        "without a client certificate: {refused:?}"
    );
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

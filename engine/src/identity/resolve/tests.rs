//! X.509-SVIDs and identity sources, with certificates generated here (rcgen).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

use super::*;
use crate::request::{HttpRequest, Peer};

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    params: CertificateParams,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.clone().self_signed(&key).unwrap();
    Ca { cert, key, params }
}

fn leaf(ca: &Ca, uris: &[&str], customize: impl FnOnce(&mut CertificateParams)) -> String {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "workload");
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    customize(&mut params);
    let issuer = Issuer::new(ca.params.clone(), &ca.key);
    params.signed_by(&key, &issuer).unwrap().pem()
}

fn url_encode(pem: &str) -> String {
    percent_encoding::utf8_percent_encode(pem, percent_encoding::NON_ALPHANUMERIC).to_string()
}

fn now() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap()
}

fn req_with(cert: Option<&str>, principal: &str, xfcc: Option<&str>) -> AuthzRequest {
    AuthzRequest {
        source: Some(Peer {
            principal: principal.into(),
            certificate: cert.map(url_encode).unwrap_or_default(),
            ..Peer::default()
        }),
        http: Some(HttpRequest {
            headers: xfcc
                .map(|x| vec![("x-forwarded-client-cert".to_string(), x.to_string())])
                .unwrap_or_default(),
            ..HttpRequest::default()
        }),
        ..AuthzRequest::default()
    }
}

fn invalid(o: IdentityOutcome) -> String {
    match o {
        IdentityOutcome::Invalid(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

const WEB: &str = "spiffe://example.org/ns/prod/sa/web";

#[test]
fn a_valid_svid_gives_an_identity() {
    let ca = ca("Example CA");
    let pem = leaf(&ca, &[WEB], |_| {});
    let o = resolve(
        &req_with(Some(&pem), WEB, None),
        &IdentityOptions::default(),
        now(),
    );
    let id = o.identity().expect("identity");
    assert_eq!(id.id.as_str(), WEB);
    assert_eq!(id.source, IdentitySource::Certificate);
    let svid = id.svid.as_ref().unwrap();
    assert_eq!(svid.fingerprint_sha256.len(), 64);
    let v = crate::value::to_json(&id.to_value());
    assert_eq!(v["trust_domain"], "example.org");
    assert_eq!(
        v["segments"],
        serde_json::json!(["ns", "prod", "sa", "web"])
    );
    assert_eq!(v["source"], "certificate");
    assert!(v["svid"]["not_after"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn svid_rules_are_enforced() {
    let ca = ca("Example CA");
    // reliability.md C4: two URI SANs, even with a valid principal.
    let two = leaf(&ca, &[WEB, "spiffe://example.org/ns/prod/sa/admin"], |_| {});
    let r = invalid(resolve(
        &req_with(Some(&two), WEB, None),
        &IdentityOptions::default(),
        now(),
    ));
    assert!(r.contains("2 URI SANs"), "{r}");
    // C5: no URI SAN, only a DNS name that looks like an identity.
    let dns = leaf(&ca, &[], |p| {
        p.subject_alt_names = vec![SanType::DnsName("web.prod.example.org".try_into().unwrap())];
    });
    assert!(
        invalid(resolve(
            &req_with(Some(&dns), "", None),
            &IdentityOptions::default(),
            now()
        ))
        .contains("no URI SAN")
    );
    // C6: a CA as leaf; a leaf with keyCertSign.
    let ca_leaf = leaf(&ca, &[WEB], |p| {
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained)
    });
    assert!(
        invalid(resolve(
            &req_with(Some(&ca_leaf), "", None),
            &IdentityOptions::default(),
            now()
        ))
        .contains("is a CA")
    );
    let signer = leaf(&ca, &[WEB], |p| {
        p.key_usages.push(KeyUsagePurpose::KeyCertSign)
    });
    assert!(
        invalid(resolve(
            &req_with(Some(&signer), "", None),
            &IdentityOptions::default(),
            now()
        ))
        .contains("may sign")
    );
    // A malformed ID in the URI SAN.
    let bad = leaf(&ca, &["spiffe://Example.org/ns/x"], |_| {});
    assert!(
        invalid(resolve(
            &req_with(Some(&bad), "", None),
            &IdentityOptions::default(),
            now()
        ))
        .contains("not a workload SPIFFE ID")
    );
    // Expired.
    let old = leaf(&ca, &[WEB], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    });
    assert!(
        invalid(resolve(
            &req_with(Some(&old), "", None),
            &IdentityOptions::default(),
            now()
        ))
        .contains("expired")
    );
    // Not a certificate.
    assert!(
        invalid(resolve(
            &req_with(Some("garbage"), WEB, None),
            &IdentityOptions::default(),
            now()
        ))
        .contains("peer certificate")
    );
}

#[test]
fn trust_bundles_per_trust_domain() {
    let example = ca("example.org CA");
    let evil = ca("evil.org CA");
    let mut opts = IdentityOptions::default();
    opts.add_bundle_pem("example.org", &example.cert.pem())
        .unwrap();
    opts.add_bundle_pem("evil.org", &evil.cert.pem()).unwrap();

    let good = leaf(&example, &[WEB], |_| {});
    assert!(
        resolve(&req_with(Some(&good), "", None), &opts, now())
            .identity()
            .is_some()
    );
    // Signed by another trust domain's CA: never verified across trust domains.
    let crossed = leaf(&evil, &[WEB], |_| {});
    assert!(
        invalid(resolve(&req_with(Some(&crossed), "", None), &opts, now()))
            .contains("does not chain")
    );
    // C8: a trust domain without a bundle.
    let mut only_example = IdentityOptions::default();
    only_example
        .add_bundle_pem("example.org", &example.cert.pem())
        .unwrap();
    let foreign = leaf(&evil, &["spiffe://evil.org/ns/prod/sa/web"], |_| {});
    assert!(
        invalid(resolve(
            &req_with(Some(&foreign), "", None),
            &only_example,
            now()
        ))
        .contains("no configured trust bundle")
    );
    assert!(
        invalid(resolve(
            &req_with(None, "spiffe://evil.org/ns/prod/sa/web", None),
            &only_example,
            now()
        ))
        .contains("no configured trust bundle")
    );
}

#[test]
fn principal_and_xfcc_sources() {
    let o = resolve(
        &req_with(None, WEB, None),
        &IdentityOptions::default(),
        now(),
    );
    assert_eq!(o.identity().unwrap().source, IdentitySource::Principal);
    // C7: Envoy's subject fallback is not a SPIFFE ID.
    let r = invalid(resolve(
        &req_with(None, "CN=spiffe://example.org/ns/prod/sa/frontend", None),
        &IdentityOptions::default(),
        now(),
    ));
    assert!(r.contains("not a SPIFFE ID"), "{r}");
    // Nothing at all.
    assert_eq!(
        resolve(
            &req_with(None, "", None),
            &IdentityOptions::default(),
            now()
        ),
        IdentityOutcome::Absent
    );

    // C1: XFCC is ignored unless a trusted hop is configured.
    let xfcc = format!("By=spiffe://example.org/ns/edge/sa/proxy;URI={WEB}");
    assert_eq!(
        resolve(
            &req_with(None, "", Some(&xfcc)),
            &IdentityOptions::default(),
            now()
        ),
        IdentityOutcome::Absent
    );
    let opts = IdentityOptions {
        trusted_xfcc_hop: Some(SpiffeId::parse("spiffe://example.org/ns/edge/sa/proxy").unwrap()),
        ..IdentityOptions::default()
    };
    let o = resolve(&req_with(None, "", Some(&xfcc)), &opts, now());
    assert_eq!(o.identity().unwrap().source, IdentitySource::Xfcc);
    assert_eq!(o.identity().unwrap().id.as_str(), WEB);
    // C2: only the element the trusted hop appended (the last) counts.
    let spoofed = format!(
        "By=spiffe://example.org/ns/edge/sa/proxy;URI=spiffe://example.org/ns/prod/sa/admin,By=spiffe://example.org/ns/edge/sa/proxy;URI={WEB}"
    );
    assert_eq!(
        resolve(&req_with(None, "", Some(&spoofed)), &opts, now())
            .identity()
            .unwrap()
            .id
            .as_str(),
        WEB
    );
    let appended_by_other = format!(
        "By=spiffe://example.org/ns/edge/sa/proxy;URI={WEB},By=spiffe://example.org/ns/x/sa/other;URI={WEB}"
    );
    assert!(
        invalid(resolve(
            &req_with(None, "", Some(&appended_by_other)),
            &opts,
            now()
        ))
        .contains("trusted hop")
    );
    // C3: a quoted Subject is not a URI.
    let quoted = r#"By=spiffe://example.org/ns/edge/sa/proxy;Subject="CN=a,URI=spiffe://example.org/ns/prod/sa/frontend""#;
    assert!(invalid(resolve(&req_with(None, "", Some(quoted)), &opts, now())).contains("no URI"));
}

/// The clock is read only to check a credential's validity period: a caller named by its
/// principal (Envoy's `source.principal`), or none, costs no clock reading; a peer
/// certificate is checked at the time read, and one outside its validity then is refused.
#[test]
fn the_clock_is_read_only_for_a_credential_with_a_validity_period() {
    let example = ca("example.org CA");
    let mut opts = IdentityOptions::default();
    opts.add_bundle_pem("example.org", &example.cert.pem())
        .unwrap();
    let reads = std::cell::Cell::new(0);
    let at = |t: i64| {
        let reads = &reads;
        move || {
            reads.set(reads.get() + 1);
            t
        }
    };
    let named = resolve_at(&req_with(None, WEB, None), &opts, at(now()));
    assert!(named.identity().is_some());
    let absent = resolve_at(&req_with(None, "", None), &opts, at(now()));
    assert!(absent.identity().is_none());
    assert_eq!(reads.get(), 0);
    let good = leaf(&example, &[WEB], |p| {
        p.not_before = rcgen::date_time_ymd(2000, 1, 1);
        p.not_after = rcgen::date_time_ymd(2100, 1, 1);
    });
    let valid = resolve_at(&req_with(Some(&good), "", None), &opts, at(now()));
    assert!(valid.identity().is_some());
    assert_eq!(reads.get(), 1);
    // The same certificate in 2101 (4,133,980,800 s): the time read is the time checked.
    let later = resolve_at(&req_with(Some(&good), "", None), &opts, at(4_133_980_800));
    assert!(later.identity().is_none());
    assert_eq!(reads.get(), 2);
}

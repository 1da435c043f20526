//! Certificates on the identity path, read in one place:
//! - [`spiffe_id_of`]: the SPIFFE ID of an X.509-SVID (its single URI SAN), used by the
//!   server's mTLS listener, forwarded peer certificates and the x509 built-ins alike;
//! - [`verify`]: chain verification by rustls-webpki (the verifier rustls itself uses for the
//!   listener), for forwarded certificates and `crypto.x509.parse_and_verify_certificates`.
//!   arbiter has no chain-building code of its own.

use std::time::Duration;

use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::aws_lc_rs as algs;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::SpiffeId;

/// The URI SANs of a certificate, in order.
pub fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Vec<&'a str> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The SPIFFE ID of an X.509-SVID: exactly one URI SAN, a workload SPIFFE ID (X.509-SVID
/// §2, "An X.509 SVID MUST contain exactly one URI SAN").
pub fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<SpiffeId, String> {
    match uri_sans(cert).as_slice() {
        [uri] => SpiffeId::parse_workload(uri).map_err(|e| {
            format!(
                "URI SAN `{}` is not a workload SPIFFE ID: {e}",
                uri.escape_default()
            )
        }),
        [] => Err("no URI SAN (an X.509-SVID has exactly one)".into()),
        uris => Err(format!(
            "{} URI SANs (an X.509-SVID has exactly one)",
            uris.len()
        )),
    }
}

/// [`spiffe_id_of`] a DER certificate.
pub fn spiffe_id_of_der(der: &[u8]) -> Result<SpiffeId, String> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("not a certificate: {e}"))?;
    spiffe_id_of(&cert)
}

/// What the leaf must be good for (its extended key usage, when it has one; RFC 5280
/// §4.2.1.12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    /// A caller's certificate (X.509-SVIDs presented by clients).
    ClientAuth,
    /// Go's default in `x509.Certificate.Verify`, which OPA's built-in uses.
    ServerAuth,
}

static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[
    algs::ECDSA_P256_SHA256,
    algs::ECDSA_P256_SHA384,
    algs::ECDSA_P384_SHA256,
    algs::ECDSA_P384_SHA384,
    algs::ECDSA_P521_SHA256,
    algs::ECDSA_P521_SHA384,
    algs::ECDSA_P521_SHA512,
    algs::ED25519,
    algs::RSA_PKCS1_2048_8192_SHA256,
    algs::RSA_PKCS1_2048_8192_SHA384,
    algs::RSA_PKCS1_2048_8192_SHA512,
    algs::RSA_PKCS1_3072_8192_SHA384,
    algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Verify that `leaf` chains through some of `intermediates` to one of `roots` at `now`
/// (seconds since the epoch): signatures, validity periods, CA basic constraints, path
/// lengths, name constraints and the extended key usage, all as rustls-webpki checks them.
/// Returns the chain's DER certificates, leaf first, root last.
pub fn verify(
    leaf: &[u8],
    intermediates: &[&[u8]],
    roots: &[&[u8]],
    now: i64,
    usage: Usage,
) -> Result<Vec<Vec<u8>>, String> {
    let leaf_der = CertificateDer::from(leaf);
    let ee = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| format!("leaf: {e}"))?;
    let root_ders: Vec<CertificateDer<'_>> =
        roots.iter().map(|r| CertificateDer::from(*r)).collect();
    let anchors = root_ders
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("trust anchor: {e}"))?;
    let inter: Vec<CertificateDer<'_>> = intermediates
        .iter()
        .map(|i| CertificateDer::from(*i))
        .collect();
    let secs = u64::try_from(now).map_err(|_| "the time is before 1970")?;
    let time = UnixTime::since_unix_epoch(Duration::from_secs(secs));
    let eku = match usage {
        Usage::ClientAuth => webpki::KeyUsage::client_auth(),
        Usage::ServerAuth => webpki::KeyUsage::server_auth(),
    };
    let path = ee
        .verify_for_usage(ALGORITHMS, &anchors, &inter, time, eku, None, None)
        .map_err(|e| e.to_string())?;
    let mut chain = vec![leaf.to_vec()];
    chain.extend(
        path.intermediate_certificates()
            .map(|c| c.der().as_ref().to_vec()),
    );
    // The anchor is one of `roots`: the one whose subject and key it holds.
    let anchor = path.anchor();
    if let Some(root) = root_ders.iter().zip(&anchors).find_map(|(der, a)| {
        (a.subject.as_ref() == anchor.subject.as_ref()
            && a.subject_public_key_info.as_ref() == anchor.subject_public_key_info.as_ref())
        .then_some(der)
    }) {
        chain.push(root.as_ref().to_vec());
    }
    Ok(chain)
}

/// Chains built here with rcgen. Each expectation names the rule it comes from (RFC 5280's
/// path validation, the X.509-SVID standard), not the code under test.
#[cfg(test)]
mod tests {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    use time::{Duration as Span, OffsetDateTime};

    use super::*;

    struct Ca {
        der: Vec<u8>,
        key: KeyPair,
        params: CertificateParams,
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    fn ca_params(name: &str, constraints: BasicConstraints) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(constraints);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    }

    fn root(constraints: BasicConstraints) -> Ca {
        let key = key();
        let params = ca_params("root", constraints);
        let der = params.clone().self_signed(&key).unwrap().der().to_vec();
        Ca { der, key, params }
    }

    fn issue(issuer: &Ca, params: CertificateParams) -> Ca {
        let key = key();
        let signer = Issuer::new(issuer.params.clone(), &issuer.key);
        let der = params
            .clone()
            .signed_by(&key, &signer)
            .unwrap()
            .der()
            .to_vec();
        Ca { der, key, params }
    }

    fn leaf_params(uris: &[&str]) -> CertificateParams {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, "workload");
        p.subject_alt_names = uris
            .iter()
            .map(|u| SanType::URI((*u).try_into().unwrap()))
            .collect();
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p
    }

    const WEB: &str = "spiffe://example.org/ns/prod/sa/web";

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    fn check(
        leaf: &Ca,
        intermediates: &[&Ca],
        root: &Ca,
        usage: Usage,
    ) -> Result<Vec<Vec<u8>>, String> {
        let inter: Vec<&[u8]> = intermediates.iter().map(|c| c.der.as_slice()).collect();
        verify(&leaf.der, &inter, &[&root.der], now(), usage)
    }

    #[test]
    fn a_chain_through_an_intermediate_verifies_leaf_first() {
        let r = root(BasicConstraints::Unconstrained);
        let i = issue(
            &r,
            ca_params("intermediate", BasicConstraints::Unconstrained),
        );
        let l = issue(&i, leaf_params(&[WEB]));
        let chain = check(&l, &[&i], &r, Usage::ClientAuth).unwrap();
        assert_eq!(chain, vec![l.der.clone(), i.der.clone(), r.der.clone()]);
        // Without the intermediate there is no path (RFC 5280 §6.1: every link is needed).
        assert!(check(&l, &[], &r, Usage::ClientAuth).is_err());
    }

    /// RFC 5280 §6.1.3 (a)(2): every certificate of the path must be valid at the time.
    #[test]
    fn an_intermediate_outside_its_validity_fails() {
        let r = root(BasicConstraints::Unconstrained);
        let mut expired = ca_params("expired", BasicConstraints::Unconstrained);
        expired.not_before = OffsetDateTime::now_utc() - Span::days(30);
        expired.not_after = OffsetDateTime::now_utc() - Span::days(1);
        let i = issue(&r, expired);
        let l = issue(&i, leaf_params(&[WEB]));
        assert!(check(&l, &[&i], &r, Usage::ClientAuth).is_err(), "expired");

        let mut early = ca_params("not yet", BasicConstraints::Unconstrained);
        early.not_before = OffsetDateTime::now_utc() + Span::days(1);
        early.not_after = OffsetDateTime::now_utc() + Span::days(30);
        let i = issue(&r, early);
        let l = issue(&i, leaf_params(&[WEB]));
        assert!(
            check(&l, &[&i], &r, Usage::ClientAuth).is_err(),
            "not yet valid"
        );
    }

    /// RFC 5280 §6.1.4 (k): an issuer must assert basicConstraints cA = true.
    #[test]
    fn a_non_ca_intermediate_fails() {
        let r = root(BasicConstraints::Unconstrained);
        let mut not_ca = ca_params("not a CA", BasicConstraints::Unconstrained);
        not_ca.is_ca = IsCa::ExplicitNoCa;
        let i = issue(&r, not_ca);
        let l = issue(&i, leaf_params(&[WEB]));
        assert!(check(&l, &[&i], &r, Usage::ClientAuth).is_err());
    }

    /// RFC 5280 §6.1.4 (l), (m): an intermediate with `pathLenConstraint: 0` allows no
    /// further CA below it. (A trust anchor's own constraints are not part of the path:
    /// RFC 5280 §6.1.1 (d) leaves them out, and webpki does not apply them.)
    #[test]
    fn a_path_length_constraint_is_enforced() {
        let r = root(BasicConstraints::Unconstrained);
        let i0 = issue(&r, ca_params("pathlen 0", BasicConstraints::Constrained(0)));
        let i1 = issue(&i0, ca_params("below", BasicConstraints::Unconstrained));
        let l = issue(&i1, leaf_params(&[WEB]));
        assert!(check(&l, &[&i0, &i1], &r, Usage::ClientAuth).is_err());
        // A leaf directly under the constrained intermediate is fine.
        let direct = issue(&i0, leaf_params(&[WEB]));
        assert!(check(&direct, &[&i0], &r, Usage::ClientAuth).is_ok());
    }

    /// RFC 5280 §4.2.1.12: a leaf whose extended key usage is server authentication only
    /// cannot authenticate a client.
    #[test]
    fn the_wrong_extended_key_usage_fails() {
        let r = root(BasicConstraints::Unconstrained);
        let mut p = leaf_params(&[WEB]);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let l = issue(&r, p);
        assert!(check(&l, &[], &r, Usage::ClientAuth).is_err());
        assert!(check(&l, &[], &r, Usage::ServerAuth).is_ok());
    }

    /// RFC 5280 §6.1.3 (a)(1): the signature must verify with the issuer's key, whatever
    /// names the certificate claims.
    #[test]
    fn a_leaf_signed_by_an_unrelated_key_fails() {
        let r = root(BasicConstraints::Unconstrained);
        // Same subject name as the real root, another key.
        let impostor = root(BasicConstraints::Unconstrained);
        let l = issue(&impostor, leaf_params(&[WEB]));
        assert!(check(&l, &[], &r, Usage::ClientAuth).is_err());
        assert!(check(&l, &[], &impostor, Usage::ClientAuth).is_ok());
    }

    /// X.509-SVID §2: exactly one URI SAN, and it is a SPIFFE ID (SPIFFE-ID §2: scheme
    /// `spiffe`, a lower-case trust domain, a path of non-empty segments).
    #[test]
    fn the_spiffe_id_is_the_single_uri_san() {
        let r = root(BasicConstraints::Unconstrained);
        let id = |uris: &[&str]| spiffe_id_of_der(&issue(&r, leaf_params(uris)).der);
        assert_eq!(id(&[WEB]).unwrap().as_str(), WEB);
        assert!(id(&[]).unwrap_err().contains("no URI SAN"));
        assert!(
            id(&[WEB, "spiffe://example.org/ns/prod/sa/other"])
                .unwrap_err()
                .contains("2 URI SANs")
        );
        for bad in [
            "https://example.org/ns/prod/sa/web",
            "spiffe://Example.org/ns/prod/sa/web",
            "spiffe://example.org",
            "spiffe://example.org/ns//sa/web",
            "spiffe://example.org/ns/prod/sa/web?x=1",
        ] {
            assert!(
                id(&[bad])
                    .unwrap_err()
                    .contains("is not a workload SPIFFE ID"),
                "{bad}"
            );
        }
    }
}

//! Who is calling: the caller's SPIFFE identity, from the peer certificate, Envoy's
//! `source.principal`, or a trusted hop's `x-forwarded-client-cert`, in that order.
//!
//! - **Certificate** (`attributes.source.certificate`, URL-encoded PEM, sent with Envoy's
//!   `include_peer_certificate: true`): it must be an X.509-SVID — exactly one URI SAN holding a
//!   workload SPIFFE ID, not a CA, no `keyCertSign`/`cRLSign`, valid now — and, when trust
//!   bundles are configured, chain to the bundle of *its own* trust domain (never another's).
//!   A certificate that is present but invalid gives no identity: the principal Envoy derived
//!   from the same certificate is not used instead.
//! - **Principal**: used only when no certificate was sent; it must be a workload SPIFFE ID
//!   (Envoy falls back to DNS SANs and the subject, which are not).
//! - **XFCC**: only when the operator names the trusted hop (`--trust-xfcc-by`), and then only
//!   the last element, which that hop appended, and only if its `By` is the trusted hop.
//! - **JWT-SVID**: only when JWT bundles are configured (`--jwt-bundle`) and nothing above
//!   identified the caller: the token in the configured header, validated as
//!   [`super::jwt_svid`] says. An mTLS identity is never replaced by a bearer token; a token
//!   that is present and invalid gives no identity (its reason goes into the record).

use std::collections::BTreeMap;

use regorus::Value;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::jwt_svid::{self, JwtSvidInfo, JwtSvidOptions};
use super::{SpiffeId, xfcc};
use crate::request::AuthzRequest;

/// Where an identity came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentitySource {
    Certificate,
    Principal,
    Xfcc,
    JwtSvid,
}

impl IdentitySource {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::Certificate => "certificate",
            IdentitySource::Principal => "principal",
            IdentitySource::Xfcc => "xfcc",
            IdentitySource::JwtSvid => "jwt-svid",
        }
    }
}

/// What the X.509-SVID said besides the ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SvidInfo {
    /// Hex serial number.
    pub serial: String,
    pub not_before: String,
    pub not_after: String,
    /// Hex SHA-256 of the DER certificate.
    pub fingerprint_sha256: String,
}

/// An established caller identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: SpiffeId,
    pub source: IdentitySource,
    pub svid: Option<SvidInfo>,
    /// What a JWT-SVID said besides the ID (source `jwt-svid`).
    pub jwt: Option<Box<JwtSvidInfo>>,
}

impl Identity {
    /// `input.identity`: `{spiffe_id, trust_domain, path, segments, source, svid}`, and `jwt`
    /// (`{audience, expires, issued_at, key_id, alg}`) for a JWT-SVID.
    pub fn to_value(&self) -> Value {
        let mut v = self.id.to_value();
        if let Ok(m) = v.as_object_mut() {
            m.insert(Value::from("source"), Value::from(self.source.as_str()));
            let svid = match &self.svid {
                None => Value::Null,
                Some(s) => {
                    let mut o = Value::new_object();
                    if let Ok(om) = o.as_object_mut() {
                        om.insert(Value::from("serial"), Value::from(s.serial.as_str()));
                        om.insert(
                            Value::from("not_before"),
                            Value::from(s.not_before.as_str()),
                        );
                        om.insert(Value::from("not_after"), Value::from(s.not_after.as_str()));
                        om.insert(
                            Value::from("fingerprint_sha256"),
                            Value::from(s.fingerprint_sha256.as_str()),
                        );
                    }
                    o
                }
            };
            m.insert(Value::from("svid"), svid);
            if let Some(j) = &self.jwt {
                let mut o = Value::new_object();
                if let Ok(om) = o.as_object_mut() {
                    om.insert(
                        Value::from("audience"),
                        Value::from(
                            j.audience
                                .iter()
                                .map(|a| Value::from(a.as_str()))
                                .collect::<Vec<_>>(),
                        ),
                    );
                    om.insert(Value::from("expires"), Value::from(j.expires.as_str()));
                    if let Some(iat) = &j.issued_at {
                        om.insert(Value::from("issued_at"), Value::from(iat.as_str()));
                    }
                    om.insert(Value::from("key_id"), Value::from(j.key_id.as_str()));
                    om.insert(Value::from("alg"), Value::from(j.alg.as_str()));
                }
                m.insert(Value::from("jwt"), o);
            }
        }
        v
    }
}

/// The result of resolving a caller's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdentityOutcome {
    Valid(Identity),
    /// Nothing identified the caller (no certificate, no principal, no trusted XFCC).
    Absent,
    /// Something claimed an identity and was refused; the reason goes into the decision record.
    Invalid(String),
}

impl IdentityOutcome {
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            IdentityOutcome::Valid(i) => Some(i),
            _ => None,
        }
    }

    /// The caller's identity as the policies see it (Rego's `input.identity`, CEL's
    /// `identity`, Istio's principals), and as a decision record's input holds it: none unless
    /// it was established.
    pub fn to_value(&self) -> Option<regorus::Value> {
        self.identity().map(Identity::to_value)
    }
}

/// How identities are established.
#[derive(Debug, Clone, Default)]
pub struct IdentityOptions {
    /// Trust bundles (DER certificates) per trust domain. When not empty, certificates must
    /// chain to the bundle of their own trust domain.
    pub trust_bundles: BTreeMap<String, Vec<Vec<u8>>>,
    /// The hop whose XFCC element is trusted (`--trust-xfcc-by`).
    pub trusted_xfcc_hop: Option<SpiffeId>,
    /// JWT-SVIDs (`--jwt-bundle`): read only when configured.
    pub jwt_svid: Option<JwtSvidOptions>,
}

impl IdentityOptions {
    /// Add a trust bundle (PEM certificates) for `trust_domain`.
    pub fn add_bundle_pem(&mut self, trust_domain: &str, pem: &str) -> Result<usize, String> {
        super::check_trust_domain(trust_domain)?;
        let ders = crate::builtins::x509::pem_certificates(pem.as_bytes());
        if ders.is_empty() {
            return Err("no CERTIFICATE block in the bundle".into());
        }
        for d in &ders {
            X509Certificate::from_der(d)
                .map_err(|e| format!("invalid certificate in the bundle: {e}"))?;
        }
        let n = ders.len();
        self.trust_bundles
            .entry(trust_domain.to_string())
            .or_default()
            .extend(ders);
        Ok(n)
    }
}

/// Resolve the caller's identity for `req` at `now` (seconds since the epoch).
pub fn resolve(req: &AuthzRequest, opts: &IdentityOptions, now: i64) -> IdentityOutcome {
    resolve_at(req, opts, || now)
}

/// [`resolve`], with the clock read only when a credential's validity period is checked (a
/// peer certificate or a JWT-SVID): a caller named by its principal, or none, costs no clock
/// reading.
pub fn resolve_at(
    req: &AuthzRequest,
    opts: &IdentityOptions,
    now: impl FnOnce() -> i64,
) -> IdentityOutcome {
    let source = req.source.as_ref();
    let certificate = source.map(|s| s.certificate.as_str()).unwrap_or("");
    if !certificate.is_empty() {
        return match svid_from_certificate(certificate, opts, now()) {
            Ok(i) => IdentityOutcome::Valid(i),
            Err(e) => IdentityOutcome::Invalid(format!("peer certificate: {e}")),
        };
    }
    let principal = source.map(|s| s.principal.as_str()).unwrap_or("");
    if !principal.is_empty() {
        return match SpiffeId::parse_workload(principal) {
            Ok(id) => {
                if !opts.trust_bundles.is_empty()
                    && !opts.trust_bundles.contains_key(id.trust_domain())
                {
                    return IdentityOutcome::Invalid(format!(
                        "principal `{principal}`: trust domain `{}` has no configured trust bundle",
                        id.trust_domain()
                    ));
                }
                IdentityOutcome::Valid(Identity {
                    id,
                    source: IdentitySource::Principal,
                    svid: None,
                    jwt: None,
                })
            }
            Err(e) => IdentityOutcome::Invalid(format!(
                "principal `{}` is not a SPIFFE ID: {e}",
                principal.escape_default()
            )),
        };
    }
    if let Some(hop) = &opts.trusted_xfcc_hop
        && let Some(header) = req
            .http
            .as_ref()
            .and_then(|h| h.header("x-forwarded-client-cert"))
    {
        return from_xfcc(&header, hop);
    }
    if let Some(j) = &opts.jwt_svid
        && let Some(value) = req.http.as_ref().and_then(|h| h.header(&j.header))
        && let Some(token) = j.token(&value)
    {
        return match jwt_svid::validate(token, j, now()) {
            Ok((id, info)) => IdentityOutcome::Valid(Identity {
                id,
                source: IdentitySource::JwtSvid,
                svid: None,
                jwt: Some(Box::new(info)),
            }),
            Err(e) => IdentityOutcome::Invalid(format!("JWT-SVID: {e}")),
        };
    }
    IdentityOutcome::Absent
}

fn from_xfcc(header: &str, hop: &SpiffeId) -> IdentityOutcome {
    let elements = match xfcc::parse(header) {
        Ok(e) => e,
        Err(e) => return IdentityOutcome::Invalid(format!("x-forwarded-client-cert: {e}")),
    };
    // The trusted hop appends its element last.
    let Some(last) = elements.last() else {
        return IdentityOutcome::Absent;
    };
    let by = last.get("by").map(Vec::as_slice).unwrap_or_default();
    if by.len() != 1 || by[0] != hop.as_str() {
        return IdentityOutcome::Invalid(format!(
            "x-forwarded-client-cert: the last element was not added by the trusted hop `{hop}`"
        ));
    }
    let uris = last.get("uri").map(Vec::as_slice).unwrap_or_default();
    match uris {
        [uri] => match SpiffeId::parse_workload(uri) {
            Ok(id) => IdentityOutcome::Valid(Identity {
                id,
                source: IdentitySource::Xfcc,
                svid: None,
                jwt: None,
            }),
            Err(e) => IdentityOutcome::Invalid(format!(
                "x-forwarded-client-cert: URI is not a SPIFFE ID: {e}"
            )),
        },
        [] => IdentityOutcome::Invalid(
            "x-forwarded-client-cert: the trusted hop's element has no URI".into(),
        ),
        _ => IdentityOutcome::Invalid(
            "x-forwarded-client-cert: the trusted hop's element has several URIs".into(),
        ),
    }
}

/// Parse and check an X.509-SVID from Envoy's URL-encoded PEM.
pub fn svid_from_certificate(
    url_encoded_pem: &str,
    opts: &IdentityOptions,
    now: i64,
) -> Result<Identity, String> {
    let pem_bytes = crate::path::percent_decode(url_encoded_pem).ok_or("invalid URL encoding")?;
    let ders = crate::builtins::x509::pem_certificates(&pem_bytes);
    let leaf_der = ders.first().ok_or("no PEM certificate")?;
    let (_, leaf) =
        X509Certificate::from_der(leaf_der).map_err(|e| format!("not a certificate: {e}"))?;
    let id = super::chain::spiffe_id_of(&leaf)?;
    if leaf.is_ca() {
        return Err("the certificate is a CA (an X.509-SVID leaf must not be)".into());
    }
    if let Ok(Some(ku)) = leaf.key_usage()
        && (ku.value.key_cert_sign() || ku.value.crl_sign())
    {
        return Err(
            "the certificate may sign certificates or CRLs (an X.509-SVID leaf must not)".into(),
        );
    }
    let validity = leaf.validity();
    if now < validity.not_before.timestamp() || now > validity.not_after.timestamp() {
        return Err("the certificate is expired or not yet valid".into());
    }
    if !opts.trust_bundles.is_empty() {
        let Some(bundle) = opts.trust_bundles.get(id.trust_domain()) else {
            return Err(format!(
                "trust domain `{}` has no configured trust bundle",
                id.trust_domain()
            ));
        };
        let roots: Vec<&[u8]> = bundle.iter().map(Vec::as_slice).collect();
        let intermediates: Vec<&[u8]> = ders[1..].iter().map(Vec::as_slice).collect();
        let usage = super::chain::Usage::ClientAuth;
        super::chain::verify(leaf_der, &intermediates, &roots, now, usage).map_err(|e| {
            format!(
                "does not chain to the `{}` trust bundle: {e}",
                id.trust_domain()
            )
        })?;
    }
    let fingerprint = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, leaf_der);
    let time = |t: &x509_parser::time::ASN1Time| {
        t.to_datetime()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Ok(Identity {
        id,
        source: IdentitySource::Certificate,
        svid: Some(SvidInfo {
            serial: leaf.raw_serial_as_string().replace(':', ""),
            not_before: time(&validity.not_before),
            not_after: time(&validity.not_after),
            fingerprint_sha256: hex::encode(fingerprint),
        }),
        jwt: None,
    })
}

#[cfg(test)]
mod tests;

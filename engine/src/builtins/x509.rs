//! `crypto.x509.parse_certificates` and `crypto.x509.parse_and_verify_certificates`.
//!
//! OPA returns Go's `x509.Certificate` as JSON (field names such as `Subject`, `DNSNames`,
//! `IsCA`, `URIs`), plus `URIStrings`. This module builds the same object from x509-parser's
//! parse: byte fields as base64, big integers as numbers, times as RFC 3339, `null` for absent
//! lists. Chains are verified by rustls-webpki through [`crate::identity::chain::verify`], as
//! forwarded peer certificates are.

use regorus::Value;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{DistributionPointName, GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::encoding::{base64_std_decode, base64_std_encode};
use super::{Registrar, string_arg};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("crypto.x509.parse_certificates", 1, |a| {
        let input = string_arg(a, 1)?;
        let ders = certificate_ders(input)?;
        // No bytes at all (`""`): Go's x509.ParseCertificates finds no certificate, no error.
        if ders.is_empty()
            && !input.contains("-----BEGIN")
            && base64_std_decode(input).is_ok_and(|b| b.is_empty())
        {
            return Ok(Value::new_array());
        }
        let certs = parse_all(&ders)?;
        Ok(Value::from(
            certs
                .iter()
                .map(|(der, c)| cert_value(der, c))
                .collect::<Vec<_>>(),
        ))
    });
    r.add("crypto.x509.parse_and_verify_certificates", 1, |a| {
        let input = string_arg(a, 1)?;
        let invalid = Value::from(vec![Value::Bool(false), Value::new_array()]);
        let Ok(ders) = certificate_ders(input) else {
            return Ok(invalid);
        };
        let Ok(certs) = parse_all(&ders) else {
            return Ok(invalid);
        };
        if certs.len() < 2 {
            return Ok(invalid);
        }
        // OPA: the first certificate is the root, the last the leaf, the rest intermediates.
        let root = ders[0].as_slice();
        let leaf = ders[ders.len() - 1].as_slice();
        let intermediates: Vec<&[u8]> = ders[1..ders.len() - 1].iter().map(Vec::as_slice).collect();
        let usage = crate::identity::chain::Usage::ServerAuth;
        match crate::identity::chain::verify(leaf, &intermediates, &[root], now_secs(), usage) {
            Ok(chain) => {
                let values = chain
                    .iter()
                    .filter_map(|der| {
                        certs
                            .iter()
                            .find(|(d, _)| d == der)
                            .map(|(d, c)| cert_value(d, c))
                    })
                    .collect::<Vec<_>>();
                Ok(Value::from(vec![Value::Bool(true), Value::from(values)]))
            }
            Err(_) => Ok(invalid),
        }
    });
}

fn now_secs() -> i64 {
    crate::clock::now_secs()
}

/// OPA's `getX509CertsFromString`: PEM text, base64 of PEM, or base64 of concatenated DER.
pub fn certificate_ders(input: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    if input.starts_with("-----BEGIN") {
        return Ok(pem_certificates(input.as_bytes()));
    }
    let bytes = base64_std_decode(input).map_err(|e| anyhow::anyhow!("{e}"))?;
    if bytes.starts_with(b"-----BEGIN") {
        return Ok(pem_certificates(&bytes));
    }
    split_der(&bytes)
}

/// Every `CERTIFICATE` block's DER, in order; other blocks are skipped.
pub fn pem_certificates(data: &[u8]) -> Vec<Vec<u8>> {
    pem_blocks(data)
        .into_iter()
        .filter(|pem| pem.label == "CERTIFICATE")
        .map(|pem| pem.contents)
        .collect()
}

/// Every PEM block of a text, in order, up to the first that does not parse.
pub fn pem_blocks(mut data: &[u8]) -> Vec<x509_parser::pem::Pem> {
    let mut out = Vec::new();
    while let Ok((rest, pem)) = x509_parser::pem::parse_x509_pem(data) {
        out.push(pem);
        if rest.len() >= data.len() {
            break;
        }
        data = rest;
    }
    out
}

/// Split concatenated DER certificates (each a SEQUENCE).
fn split_der(mut bytes: &[u8]) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (_, rest) = X509Certificate::from_der(bytes)
            .map(|(rest, c)| (c, rest))
            .map_err(|_| anyhow::anyhow!("x509: malformed certificate"))?;
        let len = bytes.len() - rest.len();
        out.push(bytes[..len].to_vec());
        bytes = rest;
    }
    Ok(out)
}

fn parse_all(ders: &[Vec<u8>]) -> anyhow::Result<Vec<(Vec<u8>, X509Certificate<'_>)>> {
    if ders.is_empty() {
        anyhow::bail!("x509: malformed certificate");
    }
    ders.iter()
        .map(|d| {
            X509Certificate::from_der(d)
                .map(|(_, c)| (d.clone(), c))
                .map_err(|_| anyhow::anyhow!("x509: malformed certificate"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Go's x509.Certificate as a Rego value.

fn obj(fields: Vec<(&str, Value)>) -> Value {
    let mut o = Value::new_object();
    if let Ok(m) = o.as_object_mut() {
        for (k, v) in fields {
            m.insert(Value::from(k), v);
        }
    }
    o
}

fn bytes(b: &[u8]) -> Value {
    Value::from(base64_std_encode(b))
}

fn strings_or_null(v: Vec<String>) -> Value {
    if v.is_empty() {
        Value::Null
    } else {
        Value::from(v.into_iter().map(Value::from).collect::<Vec<_>>())
    }
}

fn oid_arcs(oid: &x509_parser::der_parser::oid::Oid<'_>) -> Value {
    let arcs: Vec<Value> = oid
        .iter()
        .map(|it| it.map(Value::from).collect())
        .unwrap_or_default();
    Value::from(arcs)
}

fn big(decimal: &str) -> Value {
    Value::from_numeric_string(decimal).unwrap_or(Value::Null)
}

fn big_from_be(bytes: &[u8]) -> Value {
    big(&num_bigint::BigUint::from_bytes_be(bytes).to_string())
}

/// Go's `pkix.Name`.
fn name_value(name: &X509Name<'_>) -> Value {
    let mut country = Vec::new();
    let mut org = Vec::new();
    let mut ou = Vec::new();
    let mut locality = Vec::new();
    let mut province = Vec::new();
    let mut street = Vec::new();
    let mut postal = Vec::new();
    let mut serial = String::new();
    let mut cn = String::new();
    let mut names = Vec::new();
    for attr in name.iter_attributes() {
        let value = attr.as_str().map(str::to_string).unwrap_or_default();
        names.push(obj(vec![
            ("Type", oid_arcs(attr.attr_type())),
            ("Value", Value::from(value.clone())),
        ]));
        match attr.attr_type().to_id_string().as_str() {
            "2.5.4.6" => country.push(value),
            "2.5.4.10" => org.push(value),
            "2.5.4.11" => ou.push(value),
            "2.5.4.7" => locality.push(value),
            "2.5.4.8" => province.push(value),
            "2.5.4.9" => street.push(value),
            "2.5.4.17" => postal.push(value),
            "2.5.4.5" => serial = value,
            "2.5.4.3" => cn = value,
            _ => {}
        }
    }
    obj(vec![
        ("Country", strings_or_null(country)),
        ("Organization", strings_or_null(org)),
        ("OrganizationalUnit", strings_or_null(ou)),
        ("Locality", strings_or_null(locality)),
        ("Province", strings_or_null(province)),
        ("StreetAddress", strings_or_null(street)),
        ("PostalCode", strings_or_null(postal)),
        ("SerialNumber", Value::from(serial)),
        ("CommonName", Value::from(cn)),
        (
            "Names",
            if names.is_empty() {
                Value::Null
            } else {
                Value::from(names)
            },
        ),
        ("ExtraNames", Value::Null),
    ])
}

/// Go's `x509.SignatureAlgorithm` number for a signature algorithm OID.
fn go_signature_algorithm(cert: &X509Certificate<'_>) -> i64 {
    let alg = &cert.signature_algorithm;
    match alg.algorithm.to_id_string().as_str() {
        "1.2.840.113549.1.1.2" => 1,
        "1.2.840.113549.1.1.4" => 2,
        "1.2.840.113549.1.1.5" => 3,
        "1.2.840.113549.1.1.11" => 4,
        "1.2.840.113549.1.1.12" => 5,
        "1.2.840.113549.1.1.13" => 6,
        "1.2.840.10040.4.3" => 7,
        "2.16.840.1.101.3.4.3.2" => 8,
        "1.2.840.10045.4.1" => 9,
        "1.2.840.10045.4.3.2" => 10,
        "1.2.840.10045.4.3.3" => 11,
        "1.2.840.10045.4.3.4" => 12,
        "1.2.840.113549.1.1.10" => match pss_hash(cert) {
            Some(Hash::Sha256) => 13,
            Some(Hash::Sha384) => 14,
            Some(Hash::Sha512) => 15,
            None => 0,
        },
        "1.3.101.112" => 16,
        _ => 0,
    }
}

/// Go's `x509.PublicKeyAlgorithm` and `PublicKey`.
fn public_key_value(cert: &X509Certificate<'_>) -> (i64, Value) {
    use x509_parser::public_key::PublicKey;
    let spki = cert.public_key();
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => (
            1,
            obj(vec![
                ("N", big_from_be(rsa.modulus)),
                ("E", big_from_be(rsa.exponent)),
            ]),
        ),
        Ok(PublicKey::EC(point)) => {
            let data = point.data();
            let coords = data.get(1..).unwrap_or(&[]);
            let (x, y) = coords.split_at(coords.len() / 2);
            (
                3,
                obj(vec![
                    ("Curve", Value::new_object()),
                    ("X", big_from_be(x)),
                    ("Y", big_from_be(y)),
                ]),
            )
        }
        Ok(PublicKey::DSA(_)) => (2, Value::new_object()),
        _ if spki.algorithm.algorithm.to_id_string() == "1.3.101.112" => {
            (4, bytes(&spki.subject_public_key.data))
        }
        _ => (0, Value::Null),
    }
}

fn time_value(t: &x509_parser::time::ASN1Time) -> Value {
    let dt = t.to_datetime();
    Value::from(
        dt.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
    )
}

/// Go's `url.URL` for a URI SAN.
fn url_value(uri: &str) -> Value {
    let (scheme, rest) = match uri.split_once(':') {
        Some((s, r))
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
        {
            (s, r)
        }
        _ => ("", uri),
    };
    let (rest, fragment) = rest.split_once('#').unwrap_or((rest, ""));
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (host, path, opaque) = if let Some(after) = rest.strip_prefix("//") {
        let (host, path) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        (host, path, "")
    } else if !scheme.is_empty() && !rest.starts_with('/') {
        ("", "", rest)
    } else {
        ("", rest, "")
    };
    obj(vec![
        ("Scheme", Value::from(scheme.to_ascii_lowercase())),
        ("Opaque", Value::from(opaque)),
        ("User", Value::Null),
        ("Host", Value::from(host)),
        ("Path", Value::from(path)),
        ("RawPath", Value::from("")),
        ("OmitHost", Value::Bool(false)),
        ("ForceQuery", Value::Bool(false)),
        ("RawQuery", Value::from(query)),
        ("Fragment", Value::from(fragment)),
        ("RawFragment", Value::from("")),
    ])
}

fn ip_string(b: &[u8]) -> String {
    match b.len() {
        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            let ip = std::net::Ipv6Addr::from(a);
            match ip.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => ip.to_string(),
            }
        }
        _ => String::new(),
    }
}

/// Go's extended key usage numbers.
fn eku_number(oid: &str) -> Option<i64> {
    Some(match oid {
        "2.5.29.37.0" => 0,
        "1.3.6.1.5.5.7.3.1" => 1,
        "1.3.6.1.5.5.7.3.2" => 2,
        "1.3.6.1.5.5.7.3.3" => 3,
        "1.3.6.1.5.5.7.3.4" => 4,
        "1.3.6.1.5.5.7.3.5" => 5,
        "1.3.6.1.5.5.7.3.6" => 6,
        "1.3.6.1.5.5.7.3.7" => 7,
        "1.3.6.1.5.5.7.3.8" => 8,
        "1.3.6.1.5.5.7.3.9" => 9,
        "1.3.6.1.4.1.311.10.3.3" => 10,
        "2.16.840.1.113730.4.1" => 11,
        "1.3.6.1.4.1.311.2.1.22" => 12,
        "1.3.6.1.4.1.311.61.1.1" => 13,
        _ => return None,
    })
}

/// The OIDs in an ExtendedKeyUsage extension value (SEQUENCE OF OBJECT IDENTIFIER), in order.
fn eku_oids(value: &[u8]) -> Vec<String> {
    use x509_parser::der_parser::der::parse_der_oid;
    use x509_parser::der_parser::der::parse_der_sequence_of_v;
    parse_der_sequence_of_v(parse_der_oid)(value)
        .map(|(_, oids)| {
            oids.iter()
                .filter_map(|o| o.as_oid().ok().map(|o| o.to_id_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// The whole certificate object, as OPA returns it.
pub fn cert_value(der: &[u8], cert: &X509Certificate<'_>) -> Value {
    let tbs = &cert.tbs_certificate;
    let (pk_alg, pk) = public_key_value(cert);

    let mut key_usage = 0i64;
    let mut extensions = Vec::new();
    let mut unhandled_critical = Vec::new();
    let mut ext_key_usage = Vec::new();
    let mut unknown_eku = Vec::new();
    let mut basic_valid = false;
    let mut is_ca = false;
    let mut max_path_len = 0i64;
    let mut ski = Value::Null;
    let mut aki = Value::Null;
    let mut ocsp = Vec::new();
    let mut issuing_url = Vec::new();
    let mut dns = Vec::new();
    let mut email = Vec::new();
    let mut ips = Vec::new();
    let mut uris = Vec::new();
    let mut crl_points = Vec::new();
    let mut policy_ids = Vec::new();
    let mut permitted_dns = Vec::new();
    let mut excluded_dns = Vec::new();
    let mut permitted_email = Vec::new();
    let mut excluded_email = Vec::new();
    let mut permitted_uri = Vec::new();
    let mut excluded_uri = Vec::new();
    let mut permitted_dns_critical = false;
    let mut inhibit_any = 0i64;
    let mut inhibit_any_zero = false;
    let mut inhibit_mapping = 0i64;
    let mut inhibit_mapping_zero = false;
    let mut require_explicit = 0i64;
    let mut require_explicit_zero = false;

    for ext in tbs.extensions() {
        extensions.push(obj(vec![
            ("Id", oid_arcs(&ext.oid)),
            ("Critical", Value::Bool(ext.critical)),
            ("Value", bytes(ext.value)),
        ]));
        let handled = match ext.parsed_extension() {
            ParsedExtension::KeyUsage(ku) => {
                key_usage = i64::from(ku.flags);
                true
            }
            ParsedExtension::BasicConstraints(bc) => {
                basic_valid = true;
                is_ca = bc.ca;
                max_path_len = bc.path_len_constraint.map_or(-1, i64::from);
                true
            }
            ParsedExtension::SubjectKeyIdentifier(k) => {
                ski = bytes(k.0);
                true
            }
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    aki = bytes(k.0);
                }
                true
            }
            ParsedExtension::ExtendedKeyUsage(_) => {
                for oid in eku_oids(ext.value) {
                    match eku_number(&oid) {
                        Some(n) => ext_key_usage.push(Value::from(n)),
                        None => unknown_eku.push(Value::from(
                            oid.split('.')
                                .filter_map(|a| a.parse::<u64>().ok())
                                .map(Value::from)
                                .collect::<Vec<_>>(),
                        )),
                    }
                }
                true
            }
            ParsedExtension::SubjectAlternativeName(san) => {
                for n in &san.general_names {
                    match n {
                        GeneralName::DNSName(s) => dns.push(s.to_string()),
                        GeneralName::RFC822Name(s) => email.push(s.to_string()),
                        GeneralName::URI(s) => uris.push(s.to_string()),
                        GeneralName::IPAddress(b) => ips.push(ip_string(b)),
                        _ => {}
                    }
                }
                true
            }
            ParsedExtension::AuthorityInfoAccess(aia) => {
                for d in &aia.accessdescs {
                    if let GeneralName::URI(u) = d.access_location {
                        match d.access_method.to_id_string().as_str() {
                            "1.3.6.1.5.5.7.48.1" => ocsp.push(u.to_string()),
                            "1.3.6.1.5.5.7.48.2" => issuing_url.push(u.to_string()),
                            _ => {}
                        }
                    }
                }
                true
            }
            ParsedExtension::CRLDistributionPoints(points) => {
                for p in points.iter() {
                    if let Some(DistributionPointName::FullName(names)) = &p.distribution_point {
                        for n in names {
                            if let GeneralName::URI(u) = n {
                                crl_points.push(u.to_string());
                            }
                        }
                    }
                }
                true
            }
            ParsedExtension::CertificatePolicies(policies) => {
                for p in policies.iter() {
                    policy_ids.push(oid_arcs(&p.policy_id));
                }
                true
            }
            ParsedExtension::NameConstraints(nc) => {
                permitted_dns_critical = ext.critical;
                let collect =
                    |subtrees: &Option<Vec<x509_parser::extensions::GeneralSubtree<'_>>>,
                     d: &mut Vec<String>,
                     e: &mut Vec<String>,
                     u: &mut Vec<String>| {
                        for s in subtrees.iter().flatten() {
                            match &s.base {
                                GeneralName::DNSName(x) => d.push(x.to_string()),
                                GeneralName::RFC822Name(x) => e.push(x.to_string()),
                                GeneralName::URI(x) => u.push(x.to_string()),
                                _ => {}
                            }
                        }
                    };
                collect(
                    &nc.permitted_subtrees,
                    &mut permitted_dns,
                    &mut permitted_email,
                    &mut permitted_uri,
                );
                collect(
                    &nc.excluded_subtrees,
                    &mut excluded_dns,
                    &mut excluded_email,
                    &mut excluded_uri,
                );
                true
            }
            ParsedExtension::InhibitAnyPolicy(i) => {
                inhibit_any = i64::from(i.skip_certs);
                inhibit_any_zero = i.skip_certs == 0;
                true
            }
            ParsedExtension::PolicyConstraints(pc) => {
                if let Some(v) = pc.inhibit_policy_mapping {
                    inhibit_mapping = i64::from(v);
                    inhibit_mapping_zero = v == 0;
                }
                if let Some(v) = pc.require_explicit_policy {
                    require_explicit = i64::from(v);
                    require_explicit_zero = v == 0;
                }
                true
            }
            ParsedExtension::PolicyMappings(_) => true,
            _ => false,
        };
        if ext.critical && !handled {
            unhandled_critical.push(oid_arcs(&ext.oid));
        }
    }

    let uri_strings = strings_or_null(uris.clone());
    let uri_values = if uris.is_empty() {
        Value::Null
    } else {
        Value::from(uris.iter().map(|u| url_value(u)).collect::<Vec<_>>())
    };
    let list_or_null = |v: Vec<Value>| {
        if v.is_empty() {
            Value::Null
        } else {
            Value::from(v)
        }
    };
    let raw_spki = tbs.subject_pki.raw;

    obj(vec![
        ("Raw", bytes(der)),
        ("RawTBSCertificate", bytes(tbs.as_ref())),
        ("RawSubjectPublicKeyInfo", bytes(raw_spki)),
        ("RawSubject", bytes(tbs.subject.as_raw())),
        ("RawIssuer", bytes(tbs.issuer.as_raw())),
        ("Signature", bytes(&cert.signature_value.data)),
        (
            "SignatureAlgorithm",
            Value::from(go_signature_algorithm(cert)),
        ),
        ("PublicKeyAlgorithm", Value::from(pk_alg)),
        ("PublicKey", pk),
        ("Version", Value::from(i64::from(tbs.version.0) + 1)),
        ("SerialNumber", big(&tbs.serial.to_string())),
        ("Issuer", name_value(&tbs.issuer)),
        ("Subject", name_value(&tbs.subject)),
        ("NotBefore", time_value(&tbs.validity.not_before)),
        ("NotAfter", time_value(&tbs.validity.not_after)),
        ("KeyUsage", Value::from(key_usage)),
        ("Extensions", list_or_null(extensions)),
        ("ExtraExtensions", Value::Null),
        (
            "UnhandledCriticalExtensions",
            list_or_null(unhandled_critical),
        ),
        ("ExtKeyUsage", list_or_null(ext_key_usage)),
        ("UnknownExtKeyUsage", list_or_null(unknown_eku)),
        ("BasicConstraintsValid", Value::Bool(basic_valid)),
        ("IsCA", Value::Bool(is_ca)),
        ("MaxPathLen", Value::from(max_path_len)),
        (
            "MaxPathLenZero",
            Value::Bool(basic_valid && max_path_len == 0),
        ),
        ("SubjectKeyId", ski),
        ("AuthorityKeyId", aki),
        ("OCSPServer", strings_or_null(ocsp)),
        ("IssuingCertificateURL", strings_or_null(issuing_url)),
        ("DNSNames", strings_or_null(dns)),
        ("EmailAddresses", strings_or_null(email)),
        ("IPAddresses", strings_or_null(ips)),
        ("URIs", uri_values),
        (
            "PermittedDNSDomainsCritical",
            Value::Bool(permitted_dns_critical),
        ),
        ("PermittedDNSDomains", strings_or_null(permitted_dns)),
        ("ExcludedDNSDomains", strings_or_null(excluded_dns)),
        ("PermittedIPRanges", Value::Null),
        ("ExcludedIPRanges", Value::Null),
        ("PermittedEmailAddresses", strings_or_null(permitted_email)),
        ("ExcludedEmailAddresses", strings_or_null(excluded_email)),
        ("PermittedURIDomains", strings_or_null(permitted_uri)),
        ("ExcludedURIDomains", strings_or_null(excluded_uri)),
        ("CRLDistributionPoints", strings_or_null(crl_points)),
        ("PolicyIdentifiers", list_or_null(policy_ids.clone())),
        (
            "Policies",
            list_or_null(
                policy_ids
                    .iter()
                    .map(|arcs| {
                        let text: Vec<String> = arcs
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .map(|v| crate::value::to_json(v).to_string())
                                    .collect()
                            })
                            .unwrap_or_default();
                        Value::from(text.join("."))
                    })
                    .collect(),
            ),
        ),
        ("InhibitAnyPolicy", Value::from(inhibit_any)),
        ("InhibitAnyPolicyZero", Value::Bool(inhibit_any_zero)),
        ("InhibitPolicyMapping", Value::from(inhibit_mapping)),
        (
            "InhibitPolicyMappingZero",
            Value::Bool(inhibit_mapping_zero),
        ),
        ("RequireExplicitPolicy", Value::from(require_explicit)),
        (
            "RequireExplicitPolicyZero",
            Value::Bool(require_explicit_zero),
        ),
        ("PolicyMappings", Value::Null),
        ("URIStrings", uri_strings),
    ])
}

/// The hash of an RSASSA-PSS signature (Go numbers the PSS signature algorithms by it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

fn pss_hash(cert: &X509Certificate<'_>) -> Option<Hash> {
    // RSASSA-PSS-params: the hash algorithm is the first [0] field; absent means SHA-1.
    let params = cert.signature_algorithm.parameters.as_ref()?;
    let data = params.data;
    let contains = |oid_der: &[u8]| data.windows(oid_der.len()).any(|w| w == oid_der);
    // DER of the SHA-2 OIDs 2.16.840.1.101.3.4.2.{1,2,3}
    let sha = |n: u8| [0x60u8, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, n];
    if contains(&sha(1)) {
        Some(Hash::Sha256)
    } else if contains(&sha(2)) {
        Some(Hash::Sha384)
    } else if contains(&sha(3)) {
        Some(Hash::Sha512)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval_with_input;
    use serde_json::json;

    fn ca(name: &str) -> (rcgen::Certificate, rcgen::KeyPair, rcgen::CertificateParams) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.clone().self_signed(&kp).unwrap();
        (cert, kp, params)
    }

    fn leaf(issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>, uri: &str) -> rcgen::Certificate {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["svc.example".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::URI(uri.try_into().unwrap()));
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "svc");
        params.signed_by(&kp, issuer).unwrap()
    }

    #[test]
    fn parses_go_field_names() {
        let (root, root_kp, root_params) = ca("Test Root");
        let issuer = rcgen::Issuer::new(root_params, &root_kp);
        let l = leaf(&issuer, "spiffe://example.org/ns/prod/sa/web");
        let pem = format!("{}{}", l.pem(), root.pem());
        let r = eval_with_input(
            "crypto.x509.parse_certificates(input.pem)",
            json!({"pem": pem}),
        )
        .unwrap();
        assert_eq!(r.as_array().unwrap().len(), 2);
        let c = &r[0];
        assert_eq!(c["Subject"]["CommonName"], "svc");
        assert_eq!(c["Issuer"]["CommonName"], "Test Root");
        assert_eq!(c["DNSNames"], json!(["svc.example"]));
        assert_eq!(
            c["URIStrings"],
            json!(["spiffe://example.org/ns/prod/sa/web"])
        );
        assert_eq!(c["URIs"][0]["Scheme"], "spiffe");
        assert_eq!(c["URIs"][0]["Host"], "example.org");
        assert_eq!(c["URIs"][0]["Path"], "/ns/prod/sa/web");
        assert_eq!(c["IsCA"], false);
        assert_eq!(c["Version"], 3);
        assert_eq!(c["PublicKeyAlgorithm"], 3);
        assert_eq!(c["SignatureAlgorithm"], 10);
        assert_eq!(r[1]["IsCA"], true);
        assert_eq!(r[1]["BasicConstraintsValid"], true);
        assert_eq!(r[1]["MaxPathLen"], -1);
        assert_eq!(r[1]["URIStrings"], serde_json::Value::Null);
        assert_eq!(c["Subject"]["Names"][0]["Type"], json!([2, 5, 4, 3]));
        // The same certificates as base64 of the PEM text.
        let b64 = super::super::encoding::base64_std_encode(pem.as_bytes());
        let r2 =
            eval_with_input("crypto.x509.parse_certificates(input.b)", json!({"b": b64})).unwrap();
        assert_eq!(r, r2);
        assert!(
            eval_with_input(
                "crypto.x509.parse_certificates(\"bm90IGEgY2VydA==\")",
                json!({})
            )
            .is_err()
        );
    }

    #[test]
    fn verifies_chains_root_first() {
        let (root, root_kp, root_params) = ca("Root");
        let root_issuer = rcgen::Issuer::new(root_params, &root_kp);
        let l = leaf(&root_issuer, "spiffe://example.org/a");
        let good = format!("{}{}", root.pem(), l.pem());
        let r = eval_with_input(
            "crypto.x509.parse_and_verify_certificates(input.p)",
            json!({"p": good}),
        )
        .unwrap();
        assert_eq!(r[0], true);
        assert_eq!(r[1][0]["URIStrings"], json!(["spiffe://example.org/a"]));
        assert_eq!(r[1][1]["Subject"]["CommonName"], "Root");

        let (other, _, _) = ca("Other");
        let bad = format!("{}{}", other.pem(), l.pem());
        let r = eval_with_input(
            "crypto.x509.parse_and_verify_certificates(input.p)",
            json!({"p": bad}),
        )
        .unwrap();
        assert_eq!(r, json!([false, []]));
    }
}

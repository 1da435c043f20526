//! A test PKI: a CA for one trust domain, and X.509-SVIDs signed by it, written to files for
//! Envoy and arbiter.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and key, as PEM, and where they were written.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A certificate authority.
pub struct Ca {
    pub pem: String,
    pub file: PathBuf,
    key: KeyPair,
    params: CertificateParams,
    dir: PathBuf,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
    Ok(p)
}

impl Ca {
    /// A new CA whose files go into `dir`.
    pub fn new(dir: &Path, name: &str) -> Result<Ca, String> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .clone()
            .self_signed(&key)
            .map_err(|e| e.to_string())?;
        let pem = cert.pem();
        let file = write(dir, &format!("{}-ca.pem", slug(name)), &pem)?;
        Ok(Ca {
            pem,
            file,
            key,
            params,
            dir: dir.to_path_buf(),
        })
    }

    /// An X.509-SVID for `spiffe_id` (and `dns`/`ips`, for servers), written as
    /// `<file_stem>.pem` and `<file_stem>.key`.
    pub fn issue(
        &self,
        file_stem: &str,
        spiffe_id: Option<&str>,
        dns: &[&str],
        ips: &[&str],
    ) -> Result<Pair, String> {
        let key =
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(DnType::CommonName, file_stem);
        let mut sans = Vec::new();
        if let Some(id) = spiffe_id {
            sans.push(SanType::URI(id.try_into().map_err(|e| format!("{e}"))?));
        }
        for d in dns {
            sans.push(SanType::DnsName(
                (*d).try_into().map_err(|e| format!("{e}"))?,
            ));
        }
        for ip in ips {
            sans.push(SanType::IpAddress(ip.parse().map_err(|e| format!("{e}"))?));
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let issuer = Issuer::new(self.params.clone(), &self.key);
        let cert = params.signed_by(&key, &issuer).map_err(|e| e.to_string())?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        let cert_file = write(&self.dir, &format!("{file_stem}.pem"), &cert_pem)?;
        let key_file = write(&self.dir, &format!("{file_stem}.key"), &key_pem)?;
        Ok(Pair {
            cert_pem,
            key_pem,
            cert: cert_file,
            key: key_file,
        })
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

//! `crypto.x509.parse_rsa_private_key` (a JWK, as OPA writes it) and `crypto.parse_private_keys`
//! (Go's key structures as JSON): RSA keys in PKCS #1 (`RSA PRIVATE KEY`) and PKCS #8
//! (`PRIVATE KEY`) PEM blocks, read with a small DER reader.

use regorus::Value;

use super::encoding::{base64_std_decode, base64url_encode_raw};
use super::{Registrar, string_arg};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("crypto.x509.parse_rsa_private_key", 1, |a| {
        let input = string_arg(a, 1)?;
        let pem = if input.starts_with("-----BEGIN") {
            input.to_string()
        } else {
            let bytes = base64_std_decode(input).map_err(|e| anyhow::anyhow!("{e}"))?;
            let text = String::from_utf8_lossy(&bytes).into_owned();
            if !text.starts_with("-----BEGIN") {
                anyhow::bail!("illegal private key");
            }
            text
        };
        let key = pem_keys(&pem)
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("failed to parse PEM block containing the key"))??;
        let json = serde_json::json!({
            "kty": "RSA",
            "n": base64url_encode_raw(&key.n), "e": base64url_encode_raw(&key.e),
            "d": base64url_encode_raw(&key.d), "p": base64url_encode_raw(&key.p),
            "q": base64url_encode_raw(&key.q), "dp": base64url_encode_raw(&key.dp),
            "dq": base64url_encode_raw(&key.dq), "qi": base64url_encode_raw(&key.qi),
        });
        Ok(crate::value::from_json(&json))
    });
    r.add("crypto.parse_private_keys", 1, |a| {
        let input = string_arg(a, 1)?;
        if input.is_empty() {
            return Ok(Value::Null);
        }
        // Base64 of PEM is read too, as OPA does.
        let text = match base64_std_decode(input) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned(),
            Err(_) => input.to_string(),
        };
        let mut keys = Vec::new();
        for k in pem_keys(&text) {
            keys.push(go_rsa_key(&k?));
        }
        Ok(Value::from(keys))
    });
}

/// An RSA private key's integers, big-endian without leading zeros.
struct RsaKey {
    n: Vec<u8>,
    e: Vec<u8>,
    d: Vec<u8>,
    p: Vec<u8>,
    q: Vec<u8>,
    dp: Vec<u8>,
    dq: Vec<u8>,
    qi: Vec<u8>,
}

/// Every RSA private key block of a PEM text, in order (other blocks are skipped).
fn pem_keys(text: &str) -> Vec<anyhow::Result<RsaKey>> {
    super::x509::pem_blocks(text.as_bytes())
        .into_iter()
        .filter_map(|pem| match pem.label.as_str() {
            "RSA PRIVATE KEY" => Some(pkcs1(&pem.contents)),
            "PRIVATE KEY" => Some(pkcs8(&pem.contents)),
            _ => None,
        })
        .collect()
}

/// One DER element: its tag and contents; the rest after it.
fn der(input: &[u8]) -> anyhow::Result<(u8, &[u8], &[u8])> {
    let bad = || anyhow::anyhow!("x509: malformed private key");
    let (&tag, rest) = input.split_first().ok_or_else(bad)?;
    let (&first, mut rest) = rest.split_first().ok_or_else(bad)?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err(bad());
        }
        let (bytes, r) = rest.split_at(n);
        rest = r;
        bytes
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
    };
    if rest.len() < len {
        return Err(bad());
    }
    let (body, after) = rest.split_at(len);
    Ok((tag, body, after))
}

/// PKCS #1 `RSAPrivateKey`: version, n, e, d, p, q, dp, dq, qi.
fn pkcs1(bytes: &[u8]) -> anyhow::Result<RsaKey> {
    let (tag, mut body, _) = der(bytes)?;
    if tag != 0x30 {
        anyhow::bail!("x509: failed to parse private key");
    }
    let mut ints = Vec::new();
    while !body.is_empty() && ints.len() < 9 {
        let (tag, value, rest) = der(body)?;
        if tag != 0x02 {
            anyhow::bail!("x509: failed to parse private key");
        }
        let trimmed: Vec<u8> = value.iter().copied().skip_while(|b| *b == 0).collect();
        ints.push(trimmed);
        body = rest;
    }
    let [_, n, e, d, p, q, dp, dq, qi]: [Vec<u8>; 9] = ints
        .try_into()
        .map_err(|_| anyhow::anyhow!("x509: failed to parse private key"))?;
    Ok(RsaKey {
        n,
        e,
        d,
        p,
        q,
        dp,
        dq,
        qi,
    })
}

/// PKCS #8 `PrivateKeyInfo` holding an RSA key (algorithm rsaEncryption).
fn pkcs8(bytes: &[u8]) -> anyhow::Result<RsaKey> {
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    let (_, body, _) = der(bytes)?;
    let (_, _version, rest) = der(body)?;
    let (_, algorithm, rest) = der(rest)?;
    let (_, oid, _) = der(algorithm)?;
    if oid != RSA {
        anyhow::bail!("x509: PKCS#8 wrapping contained private key with unknown algorithm");
    }
    let (_, key, _) = der(rest)?;
    pkcs1(key)
}

/// A big-endian unsigned integer as a JSON number (Go's `big.Int` marshals so).
fn number(bytes: &[u8]) -> serde_json::Value {
    let n = num_bigint::BigUint::from_bytes_be(bytes);
    serde_json::from_str(&n.to_string()).unwrap_or(serde_json::Value::Null)
}

/// Go's `rsa.PrivateKey` as `encoding/json` writes it.
fn go_rsa_key(k: &RsaKey) -> Value {
    crate::value::from_json(&serde_json::json!({
        "N": number(&k.n),
        "E": number(&k.e),
        "D": number(&k.d),
        "Primes": [number(&k.p), number(&k.q)],
        "Precomputed": {
            "Dp": number(&k.dp),
            "Dq": number(&k.dq),
            "Qinv": number(&k.qi),
            "CRTValues": [],
        },
    }))
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    /// A 512-bit test key made for this test (`openssl genrsa -traditional 512`), and the same
    /// key in PKCS #8 (`openssl pkcs8 -topk8 -nocrypt`).
    const KEY: &str = "-----BEGIN RSA PRIVATE KEY-----\nMIIBOQIBAAJBAOKprk+x8/PnwMR89r41K/7o1e/2uvr0/QJK9SF2YKUSNdUlW6Z+\nE7uxU9jMVeY2fbKBG64Uz1WAhM1iC/LzjVsCAwEAAQJAYxrL436satXHHGKDRFFd\nZjyJ5j0cLkRWJ918ZuAqi6Gi67dELpgtB1nWEPVif2K0ghMiQO5XdA1c360Er8yk\nEQIhAPnadUH32YvJ3extqoTd7yT5ly302HWhrPZ7tvr3FuszAiEA6D0sDLq1i2Nu\nGV/BWDQti+gLCyRo+L1Z/lKUmCw6FTkCIFvEsEK9jOq6B0fac8H/XeG/xpY7kvGJ\no2SYxflhncpfAiBRQH214mj74Ii3pfHOO0soJMIgXte/Fvhya1ADwY18uQIgT76B\n4Azgotyo5GFh0sGlFqdbai2lExuq26gXN5XdLck=\n-----END RSA PRIVATE KEY-----";
    const KEY_PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIIBUwIBADANBgkqhkiG9w0BAQEFAASCAT0wggE5AgEAAkEA4qmuT7Hz8+fAxHz2\nvjUr/ujV7/a6+vT9Akr1IXZgpRI11SVbpn4Tu7FT2MxV5jZ9soEbrhTPVYCEzWIL\n8vONWwIDAQABAkBjGsvjfqxq1cccYoNEUV1mPInmPRwuRFYn3Xxm4CqLoaLrt0Qu\nmC0HWdYQ9WJ/YrSCEyJA7ld0DVzfrQSvzKQRAiEA+dp1QffZi8nd7G2qhN3vJPmX\nLfTYdaGs9nu2+vcW6zMCIQDoPSwMurWLY24ZX8FYNC2L6AsLJGj4vVn+UpSYLDoV\nOQIgW8SwQr2M6roHR9pzwf9d4b/GljuS8YmjZJjF+WGdyl8CIFFAfbXiaPvgiLel\n8c47SygkwiBe178W+HJrUAPBjXy5AiBPvoHgDOCi3KjkYWHSwaUWp1tqLaUTG6rb\nqBc3ld0tyQ==\n-----END PRIVATE KEY-----";
    /// `openssl rsa -noout -modulus`, base64url.
    const N: &str =
        "4qmuT7Hz8-fAxHz2vjUr_ujV7_a6-vT9Akr1IXZgpRI11SVbpn4Tu7FT2MxV5jZ9soEbrhTPVYCEzWIL8vONWw";

    #[test]
    fn rsa_keys_read_as_opa_reads_them() {
        let jwk = eval(&format!("crypto.x509.parse_rsa_private_key({KEY:?})")).unwrap();
        assert_eq!(jwk["kty"], json!("RSA"));
        assert_eq!(jwk["e"], json!("AQAB"));
        assert_eq!(jwk["n"], json!(N));
        assert_eq!(jwk.as_object().unwrap().len(), 9, "{jwk}");
        assert_eq!(
            eval(&format!("count(crypto.parse_private_keys({KEY:?}))")).unwrap(),
            json!(1)
        );
        let keys = eval(&format!("crypto.parse_private_keys({KEY_PKCS8:?})")).unwrap();
        assert_eq!(keys[0]["E"], json!(65537), "{keys}");
        assert_eq!(
            eval(r#"crypto.parse_private_keys("nope")"#).unwrap(),
            json!([])
        );
        assert_eq!(
            eval(r#"crypto.parse_private_keys("")"#).unwrap(),
            json!(null)
        );
        let e = eval(r#"crypto.x509.parse_rsa_private_key("invalid")"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("illegal base64"), "{e}");
    }
}

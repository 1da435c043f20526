//! `crypto.md5`, `crypto.sha1`, `crypto.sha256` and the `crypto.hmac.*` family: hex digests of
//! strings, as OPA computes them.

use aws_lc_rs::{digest, hmac};
use md5::{Digest, Md5};
use regorus::Value;

use super::{Registrar, string_arg};

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("crypto.md5", 1, |a| {
        let s = string_arg(a, 1)?;
        Ok(Value::from(hex::encode(Md5::digest(s.as_bytes()))))
    });
    r.add("crypto.sha1", 1, |a| {
        let s = string_arg(a, 1)?;
        Ok(hex_digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, s))
    });
    r.add("crypto.sha256", 1, |a| {
        let s = string_arg(a, 1)?;
        Ok(hex_digest(&digest::SHA256, s))
    });
    r.add("crypto.hmac.md5", 2, |a| {
        let x = string_arg(a, 1)?;
        let key = string_arg(a, 2)?;
        Ok(Value::from(hex::encode(hmac_md5(
            key.as_bytes(),
            x.as_bytes(),
        ))))
    });
    r.add("crypto.hmac.sha1", 2, |a| {
        hex_hmac(a, hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY)
    });
    r.add("crypto.hmac.sha256", 2, |a| hex_hmac(a, hmac::HMAC_SHA256));
    r.add("crypto.hmac.sha512", 2, |a| hex_hmac(a, hmac::HMAC_SHA512));
    r.add("crypto.hmac.equal", 2, |a| {
        let m1 = string_arg(a, 1)?;
        let m2 = string_arg(a, 2)?;
        Ok(Value::Bool(constant_time_eq(m1.as_bytes(), m2.as_bytes())))
    });
}

fn hex_digest(alg: &'static digest::Algorithm, s: &str) -> Value {
    Value::from(hex::encode(digest::digest(alg, s.as_bytes())))
}

fn hex_hmac(a: &[Value], alg: hmac::Algorithm) -> anyhow::Result<Value> {
    let x = string_arg(a, 1)?;
    let key = string_arg(a, 2)?;
    let k = hmac::Key::new(alg, key.as_bytes());
    Ok(Value::from(hex::encode(hmac::sign(&k, x.as_bytes()))))
}

/// HMAC-MD5 (RFC 2104); aws-lc-rs has no MD5 HMAC, so it is built from the md-5 digest.
fn hmac_md5(key: &[u8], msg: &[u8]) -> Vec<u8> {
    const BLOCK: usize = 64;
    let mut k = if key.len() > BLOCK {
        Md5::digest(key).to_vec()
    } else {
        key.to_vec()
    };
    k.resize(BLOCK, 0);
    let ipad: Vec<u8> = k.iter().map(|b| b ^ 0x36).collect();
    let opad: Vec<u8> = k.iter().map(|b| b ^ 0x5c).collect();
    let mut inner = Md5::new();
    inner.update(&ipad);
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Md5::new();
    outer.update(&opad);
    outer.update(inner);
    outer.finalize().to_vec()
}

/// Compare in time independent of the contents (not of the lengths), as Go's `hmac.Equal`:
/// MACs, bearer tokens and passwords. The one copy every crate uses (aws-lc's `CRYPTO_memcmp`).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;
    use serde_json::json;

    #[test]
    fn digests_match_known_values() {
        assert_eq!(
            eval(r#"crypto.md5("lorem ipsum")"#).unwrap(),
            json!("80a751fde577028640c419000e33eba6")
        );
        assert_eq!(
            eval(r#"crypto.sha256("lorem ipsum")"#).unwrap(),
            json!("5e2bf57d3f40c4b6df69daf1936cb766f832374b4fc0259a7cbff06e2f70f269")
        );
        // RFC 2202 test case 2.
        assert_eq!(
            eval(r#"crypto.hmac.md5("what do ya want for nothing?", "Jefe")"#).unwrap(),
            json!("750c783e6ab0b503eaa86e310a5db738")
        );
        // RFC 4231 test case 2.
        assert_eq!(
            eval(r#"crypto.hmac.sha256("what do ya want for nothing?", "Jefe")"#).unwrap(),
            json!("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
        assert_eq!(
            eval(r#"crypto.hmac.equal("ab", "ab")"#).unwrap(),
            json!(true)
        );
        assert_eq!(
            eval(r#"crypto.hmac.equal("ab", "ac")"#).unwrap(),
            json!(false)
        );
    }
}

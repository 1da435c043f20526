//! Base64 decoding with Go's rules and error messages, which OPA's results and errors expose
//! (`illegal base64 data at input byte 17`).

const STD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Decode padded base64 the way Go's `base64.StdEncoding`/`URLEncoding.DecodeString` does:
/// `\r` and `\n` are skipped; the error names the offset of the first bad byte.
fn go_decode(input: &str, alphabet: &[u8; 64]) -> Result<Vec<u8>, String> {
    let mut lookup = [0xffu8; 256];
    for (i, &c) in alphabet.iter().enumerate() {
        lookup[usize::from(c)] = u8::try_from(i).unwrap_or(0);
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    let mut quantum = [0u8; 4];
    let mut n = 0usize;
    let mut i = 0usize;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\r' || c == b'\n' {
            i += 1;
            continue;
        }
        if c == b'=' {
            // Padding: valid only at the end of a quantum of 2 or 3 symbols.
            match n {
                2 | 3 => {}
                _ => return Err(corrupt(i)),
            }
            let mut j = i + 1;
            if n == 2 {
                // needs a second '='
                while j < bytes.len() && (bytes[j] == b'\r' || bytes[j] == b'\n') {
                    j += 1;
                }
                if j >= bytes.len() || bytes[j] != b'=' {
                    return Err(corrupt(j.min(bytes.len())));
                }
                j += 1;
            }
            while j < bytes.len() && (bytes[j] == b'\r' || bytes[j] == b'\n') {
                j += 1;
            }
            if j < bytes.len() {
                return Err(corrupt(j));
            }
            flush(&quantum, n, &mut out);
            return Ok(out);
        }
        let v = lookup[usize::from(c)];
        if v == 0xff {
            return Err(corrupt(i));
        }
        quantum[n] = v;
        n += 1;
        if n == 4 {
            flush(&quantum, 4, &mut out);
            n = 0;
        }
        i += 1;
    }
    if n != 0 {
        return Err(corrupt(bytes.len().saturating_sub(n)));
    }
    Ok(out)
}

fn corrupt(at: usize) -> String {
    format!("illegal base64 data at input byte {at}")
}

fn flush(q: &[u8; 4], n: usize, out: &mut Vec<u8>) {
    let v = (u32::from(q[0]) << 18)
        | (u32::from(q[1]) << 12)
        | (u32::from(q[2]) << 6)
        | u32::from(q[3]);
    let b = v.to_be_bytes();
    match n {
        4 => out.extend_from_slice(&b[1..4]),
        3 => out.extend_from_slice(&b[1..3]),
        2 => out.push(b[1]),
        _ => {}
    }
}

/// OPA's `base64url.decode`: padding is added when missing (RFC 7515 appendix C), then Go's
/// padded URL decoding applies.
pub fn base64url_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut padded = s.to_string();
    if !s.ends_with('=') {
        match s.len() % 4 {
            0 => {}
            2 => padded.push_str("=="),
            3 => padded.push('='),
            _ => return Err(format!("illegal base64url string: {s}")),
        }
    }
    go_decode(&padded, URL)
}

/// Go's `base64.StdEncoding.DecodeString`.
pub fn base64_std_decode(s: &str) -> Result<Vec<u8>, String> {
    go_decode(s, STD)
}

/// Unpadded URL-safe encoding (JWT segments).
pub fn base64url_encode_raw(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Standard padded encoding (Go's `[]byte` JSON encoding).
pub fn base64_std_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_with_and_without_padding() {
        assert_eq!(base64url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert_eq!(base64url_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64url_decode("_-8").unwrap(), [0xff, 0xef]);
    }

    #[test]
    fn errors_name_the_offset_like_go() {
        assert_eq!(
            base64url_decode("eyJzdWIiOiIwIiwia/XNzIjoib3BhIn0").unwrap_err(),
            "illegal base64 data at input byte 17"
        );
        assert!(
            base64url_decode("abcde")
                .unwrap_err()
                .starts_with("illegal base64url string")
        );
    }
}

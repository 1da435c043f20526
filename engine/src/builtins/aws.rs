//! `providers.aws.sign_req`: an HTTP request signed with AWS Signature Version 4, as OPA signs
//! it (OPA's `internal/providers/aws.SignV4`): the same canonical request (OPA uses the URL's
//! escaped path as written, `""` for none, and its raw query), the same headers added (`host`,
//! `x-amz-date`, `x-amz-content-sha256` for S3 and Glacier, `x-amz-security-token` with a
//! session token) and OPA's operand errors. Nothing is sent: signing is pure computation.

use std::collections::BTreeMap;

use aws_lc_rs::{digest, hmac};
use regorus::Value;

use super::Registrar;

pub(super) fn register(r: &mut Registrar<'_>) {
    r.add("providers.aws.sign_req", 3, |a| {
        sign_req(&a[0], &a[1], &a[2])
    });
}

/// The keys `http.send` (and so a request to sign) may have.
const ALLOWED_KEYS: [&str; 28] = [
    "method",
    "url",
    "body",
    "enable_redirect",
    "force_json_decode",
    "force_yaml_decode",
    "headers",
    "raw_body",
    "tls_use_system_certs",
    "tls_ca_cert",
    "tls_ca_cert_file",
    "tls_ca_cert_env_variable",
    "tls_client_cert",
    "tls_client_cert_file",
    "tls_client_cert_env_variable",
    "tls_client_key",
    "tls_client_key_file",
    "tls_client_key_env_variable",
    "tls_insecure_skip_verify",
    "tls_server_name",
    "timeout",
    "cache",
    "force_cache",
    "force_cache_duration_seconds",
    "raise_error",
    "caching_mode",
    "max_retry_attempts",
    "cache_ignored_headers",
];

const REQUIRED_CONFIG: [&str; 4] = [
    "aws_access_key",
    "aws_region",
    "aws_secret_access_key",
    "aws_service",
];

/// A set of keys as OPA prints one: `{"a", "b"}`, sorted.
fn key_set<'a>(keys: impl IntoIterator<Item = &'a Value>) -> String {
    let mut keys: Vec<&Value> = keys.into_iter().collect();
    keys.sort();
    let shown: Vec<String> = keys
        .iter()
        .map(|k| match k {
            Value::String(s) => super::go_quote(s),
            other => crate::value::to_json(other).to_string(),
        })
        .collect();
    format!("{{{}}}", shown.join(", "))
}

/// Fails with `message: {"k", …}` when any of `keys` is `bad` (OPA's messages for missing
/// and ill-typed parameters).
fn refuse_keys(keys: &[&str], bad: impl Fn(&Value) -> bool, message: &str) -> anyhow::Result<()> {
    let refused: Vec<Value> = keys
        .iter()
        .map(|k| Value::from(*k))
        .filter(|k| bad(k))
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    anyhow::bail!("{message}: {}", key_set(&refused))
}

fn object(v: &Value, pos: usize) -> anyhow::Result<BTreeMap<Value, Value>> {
    match v {
        Value::Object(o) => Ok(o.iter().map(|(k, v)| (k.clone(), v.clone())).collect()),
        other => anyhow::bail!(
            "operand {pos} must be object but got {}",
            crate::decision::type_name(other)
        ),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.to_string(),
        _ => String::new(),
    }
}

fn sign_req(req: &Value, config: &Value, time_ns: &Value) -> anyhow::Result<Value> {
    let req_obj = &object(req, 1)?;
    // OPA names the configuration "operand 1" when it is not an object.
    let cfg = &object(config, 1)?;
    let key = |k: &str| Value::from(k);
    refuse_keys(
        &REQUIRED_CONFIG,
        |k| !cfg.contains_key(k),
        "operand 2 missing required AWS config parameters(s)",
    )?;
    refuse_keys(
        &REQUIRED_CONFIG,
        |k| !matches!(cfg.get(k), Some(Value::String(_))),
        "operand 2 invalid values for required AWS config parameters(s)",
    )?;
    let service = text(cfg.get(&key("aws_service")));
    let access_key = text(cfg.get(&key("aws_access_key")));
    let secret_key = text(cfg.get(&key("aws_secret_access_key")));
    let region = text(cfg.get(&key("aws_region")));
    let session_token = text(cfg.get(&key("aws_session_token")));

    let Value::Number(n) = time_ns else {
        anyhow::bail!(
            "operand 1 must be number but got {}",
            crate::decision::type_name(time_ns)
        );
    };
    // OPA reads the number's text as an int64 (`json.Number.Int64`): `-1e9` is not one.
    let ns = match n.kept_text() {
        Some(text) => text.parse::<i64>().ok(),
        None => n.as_i64(),
    };
    let Some(ns) = ns else {
        anyhow::bail!("operand 3 could not convert time_ns value into a unix timestamp");
    };

    let unknown: Vec<&Value> = req_obj
        .keys()
        .filter(|k| !matches!(k, Value::String(s) if ALLOWED_KEYS.contains(&s.as_ref())))
        .collect();
    if !unknown.is_empty() {
        anyhow::bail!(
            "operand 1 invalid request parameters(s): {}",
            key_set(unknown)
        );
    }
    refuse_keys(
        &["method", "url"],
        |k| !req_obj.contains_key(k),
        "operand 1 missing required request parameters(s)",
    )?;
    let headers = match req_obj.get(&key("headers")) {
        None => BTreeMap::new(),
        Some(h @ Value::Object(_)) => object(h, 0)?,
        Some(other) => anyhow::bail!(
            "operand 0 must be object but got {}",
            crate::decision::type_name(other)
        ),
    };
    refuse_keys(
        &["url", "method"],
        |k| !matches!(req_obj.get(k), Some(Value::String(_))),
        "operand 1 invalid values for required request parameters(s)",
    )?;
    let url = GoUrl::parse(&text(req_obj.get(&key("url"))))?;
    let method = text(req_obj.get(&key("method")));
    let body = match (req_obj.get(&key("raw_body")), req_obj.get(&key("body"))) {
        (Some(raw), _) => text(Some(raw)).into_bytes(),
        (None, Some(b)) => super::jwt::go_json(b).into_bytes(),
        (None, None) => Vec::new(),
    };
    let unsigned_payload = match cfg.get(&key("disable_payload_signing")) {
        None => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            anyhow::bail!("operand 2 invalid value for 'disable_payload_signing' in AWS config")
        }
    };

    // The request's own headers, values as strings (OPA's `objectToMap`).
    let given: BTreeMap<String, String> = headers
        .iter()
        .map(|(k, v)| (text(Some(k)), text(Some(v))))
        .collect();
    let (date, stamp) = timestamps(ns)?;
    let content_sha256 = if unsigned_payload {
        "UNSIGNED-PAYLOAD".to_string()
    } else {
        hex::encode(digest::digest(&digest::SHA256, &body))
    };
    let mut aws_headers: BTreeMap<String, String> = BTreeMap::new();
    aws_headers.insert("host".into(), url.host.clone());
    aws_headers.insert("x-amz-date".into(), stamp.clone());
    if service == "s3" || service == "glacier" {
        aws_headers.insert("x-amz-content-sha256".into(), content_sha256.clone());
    }
    if !session_token.is_empty() {
        aws_headers.insert("x-amz-security-token".into(), session_token);
    }
    let mut to_sign = aws_headers.clone();
    for (k, v) in &given {
        let lower = k.to_lowercase();
        if !matches!(
            lower.as_str(),
            "authorization" | "user-agent" | "x-amzn-trace-id"
        ) {
            to_sign.insert(lower, v.clone());
        }
    }
    let mut canonical = format!("{method}\n{}\n{}\n", url.escaped_path(), url.raw_query);
    for (k, v) in &to_sign {
        canonical.push_str(&format!("{k}:{v}\n"));
    }
    canonical.push('\n');
    let signed_headers = to_sign.keys().cloned().collect::<Vec<_>>().join(";");
    canonical.push_str(&signed_headers);
    canonical.push('\n');
    canonical.push_str(&content_sha256);

    let scope = format!("{date}/{region}/{service}/aws4_request");
    let to_sign_text = format!(
        "AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{}",
        hex::encode(digest::digest(&digest::SHA256, canonical.as_bytes()))
    );
    let mut signing_key = mac(format!("AWS4{secret_key}").as_bytes(), date.as_bytes());
    for part in [region.as_str(), service.as_str(), "aws4_request"] {
        signing_key = mac(&signing_key, part.as_bytes());
    }
    let signature = hex::encode(mac(&signing_key, to_sign_text.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={access_key}/{scope},SignedHeaders={signed_headers},Signature={signature}"
    );

    let mut out_headers: BTreeMap<Value, Value> = given
        .into_iter()
        .map(|(k, v)| (Value::from(k), Value::from(v)))
        .collect();
    out_headers.insert(Value::from("Authorization"), Value::from(authorization));
    for (k, v) in aws_headers {
        out_headers.insert(Value::from(k), Value::from(v));
    }
    let mut out = req_obj.clone();
    out.insert(Value::from("headers"), Value::from(out_headers));
    Ok(Value::from(out))
}

fn mac(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    hmac::sign(&key, msg).as_ref().to_vec()
}

/// The signing date (`20060102`) and time (`20060102T150405Z`) of a Unix time in nanoseconds.
fn timestamps(ns: i64) -> anyhow::Result<(String, String)> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ns)).map_err(|_| {
        anyhow::anyhow!("operand 3 could not convert time_ns value into a unix timestamp")
    })?;
    let date = format!("{:04}{:02}{:02}", t.year(), u8::from(t.month()), t.day());
    let stamp = format!("{date}T{:02}{:02}{:02}Z", t.hour(), t.minute(), t.second());
    Ok((date, stamp))
}

/// The parts of a URL Go's `url.Parse` gives that signing reads: the host (with its port), the
/// path as written and the raw query.
struct GoUrl {
    host: String,
    path: String,
    raw_query: String,
}

impl GoUrl {
    fn parse(raw: &str) -> anyhow::Result<GoUrl> {
        let without_fragment = raw.split_once('#').map_or(raw, |(a, _)| a);
        let (rest, raw_query) = match without_fragment.split_once('?') {
            Some((a, q)) => (a, q.to_string()),
            None => (without_fragment, String::new()),
        };
        let scheme_end = rest.find(':');
        let after_scheme = match scheme_end {
            Some(i)
                if i > 0
                    && rest[..i]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && rest.as_bytes()[0].is_ascii_alphabetic() =>
            {
                &rest[i + 1..]
            }
            Some(0) => anyhow::bail!("parse \"{raw}\": missing protocol scheme"),
            _ => rest,
        };
        let (host, path) = match after_scheme.strip_prefix("//") {
            Some(auth) => match auth.find('/') {
                Some(i) => (auth[..i].to_string(), auth[i..].to_string()),
                None => (auth.to_string(), String::new()),
            },
            None => (String::new(), after_scheme.to_string()),
        };
        // Go keeps a host's userinfo out of `Host`.
        let host = host
            .rsplit_once('@')
            .map_or(host.clone(), |(_, h)| h.to_string());
        Ok(GoUrl {
            host,
            path,
            raw_query,
        })
    }

    /// Go's `EscapedPath`: the path as written when Go accepts it as an escaping, else escaped.
    fn escaped_path(&self) -> String {
        let as_written = self
            .path
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.~!$&'()*+,;=:@[]/%".contains(&c));
        if as_written {
            return self.path.clone();
        }
        // Go's `url.URL.EscapedPath` keeps these sub-delimiters raw (OPA signs what Go sends).
        const GO_PATH: &percent_encoding::AsciiSet = &crate::path::UNRESERVED
            .remove(b'$')
            .remove(b'&')
            .remove(b'+')
            .remove(b',')
            .remove(b'/')
            .remove(b':')
            .remove(b';')
            .remove(b'=')
            .remove(b'@');
        percent_encoding::percent_encode(self.path.as_bytes(), GO_PATH).to_string()
    }
}

#[cfg(test)]
mod tests {
    use crate::builtins::testutil::eval;

    /// Recorded from OPA 1.7.1 (`opa eval`): a path to escape, a port and userinfo, a query and
    /// fragment, a session token, an ignored header, a non-string header value and a body Go
    /// escapes (`<&>`).
    #[test]
    fn signs_as_opa_signs() {
        let got = eval(
            r#"providers.aws.sign_req({"method": "POST", "url": "https://user@svc.example.com:8443/a b/c?x=1&y=2#frag", "headers": {"Content-Type": "application/json", "User-Agent": "ua", "n": 5}, "body": {"b": "<&>", "a": [1, 2]}}, {"aws_access_key": "AK", "aws_secret_access_key": "SK", "aws_service": "execute-api", "aws_region": "eu-west-1", "aws_session_token": "TOKEN"}, 1700000000123456789)"#,
        )
        .unwrap();
        assert_eq!(
            got["headers"],
            serde_json::json!({
                "Authorization": "AWS4-HMAC-SHA256 Credential=AK/20231114/eu-west-1/execute-api/aws4_request,SignedHeaders=content-type;host;n;x-amz-date;x-amz-security-token,Signature=3cc3fb153324d045d46235e5f808f79edc2ff2da06c3f296b9758fe3702cb457",
                "Content-Type": "application/json",
                "User-Agent": "ua",
                "host": "svc.example.com:8443",
                "n": "",
                "x-amz-date": "20231114T221320Z",
                "x-amz-security-token": "TOKEN"
            })
        );
        assert_eq!(
            got["url"],
            "https://user@svc.example.com:8443/a b/c?x=1&y=2#frag"
        );
    }

    #[test]
    fn operand_errors_are_opas() {
        let err = eval(r#"providers.aws.sign_req({"method": "GET"}, {"aws_access_key": "a"}, 0)"#)
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(
                "providers.aws.sign_req: operand 2 missing required AWS config parameters(s): {\"aws_region\", \"aws_secret_access_key\", \"aws_service\"}"
            ),
            "{err:#}"
        );
    }
}

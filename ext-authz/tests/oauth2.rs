//! OPA's `credentials.oauth2` client-credentials grant on bundle downloads (issue 25): the
//! token is asked from `token_url` with HTTP Basic client credentials and the scopes, sent as
//! a bearer token, and reused until it nears its expiry.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arbiter_ext_authz::fetch::{Fetched, get};
use arbiter_ext_authz::service::{OAuth2, ServiceAuth};

#[test]
fn a_token_is_asked_once_and_sent_on_every_download() {
    let requests: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    {
        let requests = requests.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
                let (mut auth, mut length) = (String::new(), 0usize);
                loop {
                    let mut h = String::new();
                    if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    match k.to_ascii_lowercase().as_str() {
                        "authorization" => auth = v.trim().to_string(),
                        "content-length" => length = v.trim().parse().unwrap(),
                        _ => {}
                    }
                }
                let mut body = vec![0u8; length];
                r.read_exact(&mut body).unwrap();
                let body = String::from_utf8(body).unwrap();
                requests
                    .lock()
                    .unwrap()
                    .push((target.clone(), auth.clone(), body.clone()));
                let reply = match target.as_str() {
                    // Basic base64("arbiter:s3cret").
                    "/token"
                        if auth == "Basic YXJiaXRlcjpzM2NyZXQ="
                            && body == "grant_type=client_credentials&scope=read+bundles" =>
                    {
                        let t =
                            r#"{"access_token":"tok-1","token_type":"bearer","expires_in":3600}"#;
                        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{t}", t.len())
                    }
                    "/bundle" if auth == "Bearer tok-1" => {
                        "HTTP/1.1 200 OK\r\netag: \"b\"\r\ncontent-length: 1\r\n\r\nB".into()
                    }
                    _ => "HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n".into(),
                };
                let _ = conn.write_all(reply.as_bytes());
            }
        });
    }
    let auth = ServiceAuth {
        oauth2: Some(OAuth2::new(
            format!("http://127.0.0.1:{port}/token"),
            "arbiter".into(),
            "s3cret".into(),
            vec!["read".into(), "bundles".into()],
        )),
        ..ServiceAuth::default()
    };
    let url = format!("http://127.0.0.1:{port}/bundle");
    for _ in 0..3 {
        match get(&url, None, &auth, Duration::from_secs(5)) {
            Ok(Fetched::New { body, .. }) => assert_eq!(body, b"B"),
            other => panic!("{other:?}: {:?}", requests.lock().unwrap()),
        }
    }
    let seen = requests.lock().unwrap().clone();
    let tokens = seen.iter().filter(|(t, _, _)| t == "/token").count();
    assert_eq!(tokens, 1, "the token is reused: {seen:?}");
    assert_eq!(seen.len(), 4);
    // A wrong secret: the token endpoint refuses, the download fails with its status.
    let wrong = ServiceAuth {
        oauth2: Some(OAuth2::new(
            format!("http://127.0.0.1:{port}/token"),
            "arbiter".into(),
            "guess".into(),
            vec!["read".into(), "bundles".into()],
        )),
        ..ServiceAuth::default()
    };
    let e = get(&url, None, &wrong, Duration::from_secs(5)).unwrap_err();
    assert!(e.contains("answered 401"), "{e}");
}

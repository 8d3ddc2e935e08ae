//! Credentials for the endpoint against real local servers: static headers from a variable and
//! a file, a bearer token file, OAuth2 client credentials from a token endpoint that issues
//! short-lived tokens and counts its requests, and a client certificate for an HTTPS endpoint
//! that requires one (a per-run CA). Files are rotated mid-run; no call may fail for it.

mod common;

use bytes::Bytes;
use connector_core::Settings;
use connector_core::headers::{HeaderFamily, HeaderSet};
use connector_core::invoker::{Invoker, Outcome};
use connector_core::telemetry::Metrics;
use connector_core::testkit::{Reply, Sink, unique};
use http_body_util::Full;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest a rotation may take to be picked up (the reload interval here is 100 ms).
const PICKUP: Duration = Duration::from_secs(10);

fn settings(url: &str, extra: &[(&str, &str)]) -> Settings {
    let mut env = vec![
        ("TOPIC", "in"),
        ("HTTP_ENDPOINT", url),
        ("MAX_RETRIES", "0"),
        ("CONTENT_TYPE", "text/plain"),
        ("HTTP_AUTH_RELOAD_INTERVAL", "100ms"),
    ];
    env.extend_from_slice(extra);
    Settings::from_env(&env).unwrap_or_else(|e| panic!("{e}"))
}

struct Caller {
    invoker: Invoker,
    headers: HeaderSet,
}

impl Caller {
    fn new(s: &Settings) -> Self {
        Self {
            invoker: Invoker::new(&s.common, &s.http, "auth-test", Arc::new(Metrics::new())),
            headers: HeaderSet::connector_defaults(HeaderFamily::Keda, &s.common),
        }
    }

    async fn call(&self) -> Outcome {
        self.invoker
            .invoke(&Bytes::from_static(b"hello"), &self.headers)
            .await
    }

    /// Calls until `done` holds for the endpoint's view, requiring every call to succeed.
    async fn call_until(&self, what: &str, done: impl Fn() -> bool) -> usize {
        let started = Instant::now();
        let mut calls = 0;
        while !done() {
            assert!(started.elapsed() < PICKUP, "{what}: not within {PICKUP:?}");
            let outcome = self.call().await;
            assert!(
                matches!(outcome, Outcome::Success(_)),
                "{what}: call {calls} failed: {outcome:?}"
            );
            calls += 1;
        }
        calls
    }
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}-{name}", unique("auth")));
    std::fs::write(&path, contents).unwrap();
    path
}

fn last_header(sink: &Sink, name: &str) -> Vec<String> {
    sink.requests()
        .last()
        .map(|r| {
            r.headers
                .get_all(name)
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn static_headers_reach_the_endpoint_and_a_changed_file_is_used() {
    let sink = Sink::start().await;
    let file = temp_file("headers", "# mounted Secret\nX-From-File: one\n");
    let path = file.to_string_lossy().into_owned();
    let s = settings(
        &sink.url("/fn"),
        &[
            ("HTTP_HEADERS", "X-Api-Key: k1\nX-Tenant: a\nX-Tenant: b"),
            ("HTTP_HEADERS_FILE", &path),
        ],
    );
    let caller = Caller::new(&s);
    assert!(matches!(caller.call().await, Outcome::Success(_)));
    assert_eq!(last_header(&sink, "x-api-key"), ["k1"]);
    assert_eq!(last_header(&sink, "x-tenant"), ["a", "b"]);
    assert_eq!(last_header(&sink, "x-from-file"), ["one"]);
    // The connector's own headers are still there.
    assert_eq!(last_header(&sink, "keda-topic"), ["in"]);

    std::fs::write(&file, "X-From-File: two\n").unwrap();
    caller
        .call_until("the changed headers file", || {
            last_header(&sink, "x-from-file") == ["two"]
        })
        .await;
    // A file that no longer parses keeps the last good headers.
    std::fs::write(&file, "not a header line\n").unwrap();
    for _ in 0..5 {
        assert!(matches!(caller.call().await, Outcome::Success(_)));
        assert_eq!(last_header(&sink, "x-from-file"), ["two"]);
    }
    std::fs::remove_file(&file).unwrap();
}

/// An endpoint answering 200 to the bearer tokens in `valid`, 401 to anything else.
async fn guarded_endpoint(valid: Arc<Mutex<HashSet<String>>>) -> Sink {
    let sink = Sink::start().await;
    sink.respond(move |r| {
        let token = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        match token {
            Some(t) if valid.lock().unwrap().contains(&t) => Reply::status(200).body("ok"),
            _ => Reply::status(401),
        }
    });
    sink
}

fn tokens(list: &[&str]) -> Arc<Mutex<HashSet<String>>> {
    Arc::new(Mutex::new(list.iter().map(|t| (*t).to_owned()).collect()))
}

#[tokio::test]
async fn a_rotated_bearer_token_file_is_used_without_a_failed_call() {
    let valid = tokens(&["old"]);
    let sink = guarded_endpoint(valid.clone()).await;
    let file = temp_file("token", "old\n");
    let path = file.to_string_lossy().into_owned();
    let s = settings(&sink.url("/fn"), &[("HTTP_BEARER_TOKEN_FILE", &path)]);
    let caller = Caller::new(&s);
    assert!(matches!(caller.call().await, Outcome::Success(_)));
    assert_eq!(last_header(&sink, "authorization"), ["Bearer old"]);

    // A projected token rotates: the new one is valid before the file changes, and the old one
    // stops being valid once the new one is in use.
    valid.lock().unwrap().insert("new".into());
    std::fs::write(&file, "new\n").unwrap();
    caller
        .call_until("the rotated token", || {
            last_header(&sink, "authorization") == ["Bearer new"]
        })
        .await;
    valid.lock().unwrap().remove("old");
    for _ in 0..5 {
        assert!(matches!(caller.call().await, Outcome::Success(_)));
    }
    std::fs::remove_file(&file).unwrap();
}

#[tokio::test]
async fn a_401_reads_the_token_file_again_at_once() {
    let valid = tokens(&["old"]);
    let sink = guarded_endpoint(valid.clone()).await;
    let file = temp_file("token", "old");
    let path = file.to_string_lossy().into_owned();
    // No periodic re-read within the test: only the 401 can make the connector look.
    let s = settings(
        &sink.url("/fn"),
        &[
            ("HTTP_BEARER_TOKEN_FILE", &path),
            ("HTTP_AUTH_RELOAD_INTERVAL", "1h"),
        ],
    );
    let caller = Caller::new(&s);
    assert!(matches!(caller.call().await, Outcome::Success(_)));
    *valid.lock().unwrap() = ["new".to_owned()].into();
    std::fs::write(&file, "new").unwrap();
    let Outcome::Success(_) = caller.call().await else {
        panic!("MAX_RETRIES=0: only the re-read after the 401 can make this call succeed");
    };
    let seen: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(seen, ["Bearer old", "Bearer old", "Bearer new"]);

    // A 401 that no re-read can fix is the function's answer, once.
    *valid.lock().unwrap() = HashSet::new();
    let Outcome::Failure(f) = caller.call().await else {
        panic!("no valid token");
    };
    assert_eq!(f.status.map(|s| s.as_u16()), Some(401));
    assert_eq!(sink.count(), 4, "not repeated when nothing changed");
    std::fs::remove_file(&file).unwrap();
}

/// A token endpoint for client `id` with secret `secret`: each grant is a new token, valid at
/// `valid` for `lifetime_s` seconds (as far as the token endpoint says; the guarded endpoint
/// decides what it accepts). Counts the grants.
struct TokenServer {
    sink: Sink,
    grants: Arc<AtomicUsize>,
}

async fn token_server(valid: Arc<Mutex<HashSet<String>>>, lifetime_s: u64) -> TokenServer {
    use base64::Engine as _;
    let sink = Sink::start().await;
    let grants = Arc::new(AtomicUsize::new(0));
    let counted = grants.clone();
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("connector:s3cret")
    );
    sink.respond(move |r| {
        let body = String::from_utf8_lossy(&r.body);
        let authorized = r
            .headers
            .get("authorization")
            .is_some_and(|v| v.to_str().unwrap() == expected);
        if !authorized {
            return Reply::status(401)
                .header("content-type", "application/json")
                .body(r#"{"error":"invalid_client","error_description":"unknown client"}"#);
        }
        assert!(body.contains("grant_type=client_credentials"), "{body}");
        assert!(body.contains("scope=orders.write+orders.read"), "{body}");
        let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("token-{n}");
        valid.lock().unwrap().insert(token.clone());
        Reply::status(200)
            .header("content-type", "application/json")
            .body(format!(
                r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":{lifetime_s}}}"#
            ))
    });
    TokenServer { sink, grants }
}

#[tokio::test]
async fn oauth2_tokens_are_cached_renewed_before_expiry_and_after_a_401() {
    let valid = tokens(&[]);
    let endpoint = guarded_endpoint(valid.clone()).await;
    let issuer = token_server(valid.clone(), 2).await;
    let secret = temp_file("client-secret", "s3cret\n");
    let token_url = issuer.sink.url("/oauth/token");
    let secret_path = secret.to_string_lossy().into_owned();
    let s = settings(
        &endpoint.url("/fn"),
        &[
            ("HTTP_OAUTH2_TOKEN_URL", &token_url),
            ("HTTP_OAUTH2_CLIENT_ID", "connector"),
            ("HTTP_OAUTH2_CLIENT_SECRET_FILE", &secret_path),
            ("HTTP_OAUTH2_SCOPES", "orders.write, orders.read"),
        ],
    );
    let caller = Arc::new(Caller::new(&s));
    // Concurrent calls share one grant.
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let c = caller.clone();
            tokio::spawn(async move { c.call().await })
        })
        .collect();
    for c in calls {
        assert!(matches!(c.await.unwrap(), Outcome::Success(_)));
    }
    assert_eq!(issuer.grants.load(Ordering::SeqCst), 1);
    assert_eq!(last_header(&endpoint, "authorization"), ["Bearer token-1"]);

    // Revoked early: the 401 fetches a new token and the call succeeds (MAX_RETRIES=0).
    valid.lock().unwrap().remove("token-1");
    assert!(matches!(caller.call().await, Outcome::Success(_)));
    assert_eq!(issuer.grants.load(Ordering::SeqCst), 2);
    assert_eq!(last_header(&endpoint, "authorization"), ["Bearer token-2"]);

    // Shortly before it expires (2 s, renewed at 1.8 s), a new one is fetched without a 401.
    // The token's lifetime is the scenario: its length is wall-clock time by definition.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let before = endpoint.count();
    assert!(matches!(caller.call().await, Outcome::Success(_)));
    assert_eq!(issuer.grants.load(Ordering::SeqCst), 3);
    assert_eq!(
        endpoint.count(),
        before + 1,
        "renewed before a 401, not after one"
    );

    // A wrong client secret: the call fails with the token endpoint's reason, and the
    // function is not called. The secret file is read at each grant: fixing it is enough.
    valid.lock().unwrap().clear();
    std::fs::write(&secret, "wrong").unwrap();
    let before = endpoint.count();
    let Outcome::Failure(f) = caller.call().await else {
        panic!("no token can be had");
    };
    assert_eq!(
        endpoint.count(),
        before + 1,
        "the call with the revoked token"
    );
    let error = f.last_error.unwrap_or_default();
    assert!(error.contains("invalid_client (unknown client)"), "{error}");
    assert!(
        !error.contains("wrong"),
        "the secret is never shown: {error}"
    );
    // The failure is remembered for a second: calls right after it fail at once, without
    // asking the token endpoint again.
    std::fs::write(&secret, "s3cret").unwrap();
    let asked = issuer.sink.count();
    assert!(matches!(caller.call().await, Outcome::Failure(_)));
    assert_eq!(issuer.sink.count(), asked, "the failure was remembered");
    // The memory's length is the scenario: wall-clock time by definition.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(matches!(caller.call().await, Outcome::Success(_)));
    assert_eq!(issuer.sink.count(), asked + 1);
    std::fs::remove_file(&secret).unwrap();
}

/// An HTTPS server requiring a client certificate; records the certificate of each connection
/// and closes every connection after one request, so each call shakes hands anew.
struct MutualTls {
    url: String,
    ca_file: PathBuf,
    presented: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn mutual_tls_server(server: rustls::ServerConfig) -> MutualTls {
    let presented: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let seen = presented.clone();
    let port = common::serve_https(server, move |cert| {
        seen.lock().unwrap().push(cert.unwrap_or_default().to_vec());
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"mtls ok")));
        response
            .headers_mut()
            .insert("connection", http::HeaderValue::from_static("close"));
        response
    })
    .await;
    MutualTls {
        url: format!("https://localhost:{port}/fn"),
        ca_file: PathBuf::new(),
        presented,
    }
}

#[tokio::test]
async fn a_client_certificate_is_presented_and_a_rotated_one_is_used_for_new_connections() {
    let (ca, ids) = common::mutual_ca(&["localhost"], &["connector-a", "connector-b"]);
    let mut server = mutual_tls_server(ca.server).await;
    server.ca_file = temp_file("ca.pem", &ca.pem);
    let ca_file = server.ca_file.to_string_lossy().into_owned();

    // Without a client certificate the endpoint refuses the handshake.
    let s = settings(&server.url, &[("HTTP_CA_FILE", &ca_file)]);
    let Outcome::Failure(f) = Caller::new(&s).call().await else {
        panic!("the endpoint requires a client certificate");
    };
    assert_eq!(f.status, None);

    let cert = temp_file("client.pem", &ids[0].cert_pem);
    let key = temp_file("client-key.pem", &ids[0].key_pem);
    let (cert_path, key_path) = (
        cert.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
    );
    let s = settings(
        &server.url,
        &[
            ("HTTP_CA_FILE", &ca_file),
            ("HTTP_CLIENT_CERT_FILE", &cert_path),
            ("HTTP_CLIENT_KEY_FILE", &key_path),
        ],
    );
    let caller = Caller::new(&s);
    let Outcome::Success(r) = caller.call().await else {
        panic!("the client certificate was given");
    };
    assert_eq!(&r.body[..], b"mtls ok");
    assert_eq!(server.presented.lock().unwrap().last(), Some(&ids[0].der));

    // Rotation writes the key first: until the certificate follows, the pair does not match
    // and the old one stays in use.
    std::fs::write(&key, &ids[1].key_pem).unwrap();
    for _ in 0..3 {
        assert!(matches!(caller.call().await, Outcome::Success(_)));
    }
    std::fs::write(&cert, &ids[1].cert_pem).unwrap();
    let presented = server.presented.clone();
    caller
        .call_until("the rotated client certificate", || {
            presented.lock().unwrap().last() == Some(&ids[1].der)
        })
        .await;
    for path in [&cert, &key, &server.ca_file] {
        std::fs::remove_file(path).unwrap();
    }
}

#[test]
fn bad_auth_variables_name_the_variable_and_never_show_a_secret() {
    let base = [
        ("TOPIC", "in"),
        ("HTTP_ENDPOINT", "http://127.0.0.1:1/fn"),
        ("MAX_RETRIES", "0"),
        ("CONTENT_TYPE", "text/plain"),
    ];
    let token = temp_file("token", "s3cret-token");
    let token_path = token.to_string_lossy().into_owned();
    let empty = temp_file("empty", "\n");
    let empty_path = empty.to_string_lossy().into_owned();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("HTTP_HEADERS", "X-Api-Key s3cret")],
            "HTTP_HEADERS: line 1 is not `Name: value`",
        ),
        (
            vec![("HTTP_BEARER_TOKEN_FILE", &empty_path)],
            "HTTP_BEARER_TOKEN_FILE: the file is empty",
        ),
        (
            vec![("HTTP_BEARER_TOKEN_FILE", "/nonexistent/token")],
            "HTTP_BEARER_TOKEN_FILE: cannot read \"/nonexistent/token\": No such file or directory (os error 2)",
        ),
        (
            vec![("HTTP_CLIENT_CERT_FILE", &token_path)],
            "HTTP_CLIENT_CERT_FILE: is set but HTTP_CLIENT_KEY_FILE is not",
        ),
        (
            vec![("HTTP_OAUTH2_CLIENT_ID", "c")],
            "HTTP_OAUTH2_CLIENT_ID: is set but HTTP_OAUTH2_TOKEN_URL is not",
        ),
        (
            vec![("HTTP_OAUTH2_TOKEN_URL", "http://127.0.0.1:1/token")],
            "environment variable not found: HTTP_OAUTH2_CLIENT_ID",
        ),
        (
            vec![
                ("HTTP_OAUTH2_TOKEN_URL", "http://127.0.0.1:1/token"),
                ("HTTP_OAUTH2_CLIENT_ID", "c"),
                ("HTTP_OAUTH2_CLIENT_SECRET_FILE", &token_path),
                ("HTTP_BEARER_TOKEN_FILE", &token_path),
            ],
            "HTTP_BEARER_TOKEN_FILE: cannot be combined with HTTP_OAUTH2_TOKEN_URL: both set Authorization",
        ),
        (
            vec![
                ("HTTP_BEARER_TOKEN_FILE", &token_path),
                ("HTTP_HEADERS", "Authorization: Basic s3cret"),
            ],
            "HTTP_HEADERS: sets Authorization, which HTTP_BEARER_TOKEN_FILE sets too",
        ),
    ];
    for (extra, says) in cases {
        let mut env = base.to_vec();
        env.extend(extra);
        let e = Settings::from_env(&env).unwrap_err().to_string();
        assert_eq!(e, says);
        assert!(!e.contains("s3cret"), "{e}");
    }
    for path in [token, empty] {
        std::fs::remove_file(path).unwrap();
    }
}

//! TLS to the function endpoint against a real HTTPS server whose certificate comes from a CA
//! the system does not know: rejected by default, accepted with `HTTP_CA_FILE`, and accepted
//! unverified only with the explicit `HTTP_TLS_INSECURE_SKIP_VERIFY`, which warns.
//!
//! And the way there through a real forward proxy on loopback (`HTTP_PROXY`, `HTTPS_PROXY`),
//! as the original's Go client went: absolute-form requests for http endpoints, a `CONNECT`
//! tunnel for https ones (TLS end to end), the proxy's credentials sent, loopback direct.

mod common;

use base64::Engine as _;
use bytes::Bytes;
use connector_core::Settings;
use connector_core::headers::{HeaderFamily, HeaderSet};
use connector_core::invoker::{Invoker, Outcome};
use connector_core::telemetry::Metrics;
use connector_core::testkit::{ForwardProxy, ProxiedRequest, Reply, Sink, unique};
use http_body_util::Full;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// An HTTPS server on 127.0.0.1 with a certificate from a fresh private CA.
struct PrivateTls {
    url: String,
    port: u16,
    ca_file: PathBuf,
    requests: Arc<AtomicUsize>,
}

async fn start() -> PrivateTls {
    start_for(&["127.0.0.1", "localhost"]).await
}

/// Like [`start`], with a certificate for `names`.
async fn start_for(names: &[&str]) -> PrivateTls {
    let ca = common::private_ca(names);
    let ca_file = std::env::temp_dir().join(format!("{}-ca.pem", unique("tls")));
    std::fs::write(&ca_file, &ca.pem).unwrap();
    let requests = Arc::new(AtomicUsize::new(0));
    let seen = requests.clone();
    let port = common::serve_https(ca.server, move |_| {
        seen.fetch_add(1, Ordering::SeqCst);
        hyper::Response::new(Full::new(Bytes::from_static(b"secure ok")))
    })
    .await;
    let url = format!("https://127.0.0.1:{port}/fission-function/secure");
    PrivateTls {
        url,
        port,
        ca_file,
        requests,
    }
}

fn settings(url: &str, extra: &[(&str, &str)]) -> Result<Settings, connector_core::ConfigError> {
    let mut env = vec![
        ("TOPIC", "in"),
        ("HTTP_ENDPOINT", url),
        ("MAX_RETRIES", "1"),
        ("CONTENT_TYPE", "text/plain"),
        ("RETRY_BACKOFF_BASE", "0"),
    ];
    env.extend_from_slice(extra);
    Settings::from_env(&env)
}

async fn call(s: &Settings) -> Outcome {
    let headers = HeaderSet::connector_defaults(HeaderFamily::Keda, &s.common);
    let invoker = Invoker::new(&s.common, &s.http, "tls-test", Arc::new(Metrics::new()));
    invoker
        .invoke(&Bytes::from_static(b"hello"), &headers)
        .await
}

#[tokio::test]
async fn untrusted_certificate_is_rejected_by_default() {
    let tls = start().await;
    let s = settings(&tls.url, &[]).unwrap();
    assert!(s.warnings.is_empty());
    let Outcome::Failure(f) = call(&s).await else {
        panic!("a certificate from an unknown CA must not be accepted");
    };
    assert_eq!(f.status, None);
    assert_eq!(f.attempts, 2, "retried like any transport error");
    let error = f.last_error.unwrap_or_default();
    assert!(error.contains("certificate"), "{error}");
    assert_eq!(
        tls.requests.load(Ordering::SeqCst),
        0,
        "no request got through"
    );
}

#[tokio::test]
async fn the_endpoints_ca_in_http_ca_file_is_trusted() {
    let tls = start().await;
    let ca = tls.ca_file.to_string_lossy().into_owned();
    let s = settings(&tls.url, &[("HTTP_CA_FILE", &ca)]).unwrap();
    assert!(s.warnings.is_empty());
    let Outcome::Success(r) = call(&s).await else {
        panic!("the CA was given");
    };
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"secure ok");
    assert_eq!(tls.requests.load(Ordering::SeqCst), 1);

    // Another private CA's file does not vouch for this server.
    let other = start().await;
    let s = settings(
        &tls.url,
        &[("HTTP_CA_FILE", &other.ca_file.to_string_lossy())],
    )
    .unwrap();
    assert!(matches!(call(&s).await, Outcome::Failure(_)));
}

#[tokio::test]
async fn skipping_verification_takes_the_explicit_flag_and_warns() {
    let tls = start().await;
    let s = settings(&tls.url, &[("HTTP_TLS_INSECURE_SKIP_VERIFY", "true")]).unwrap();
    assert_eq!(s.warnings.len(), 1);
    assert!(s.warnings[0].contains("HTTP_TLS_INSECURE_SKIP_VERIFY is on"));
    assert!(s.warnings[0].contains("NOT verified"));
    let Outcome::Success(r) = call(&s).await else {
        panic!("verification was skipped on request");
    };
    assert_eq!(r.status, 200);
}

#[test]
fn bad_tls_settings_name_the_variable() {
    let url = "https://127.0.0.1:1/f";
    let garbage = std::env::temp_dir().join(format!("{}-garbage.pem", unique("tls")));
    std::fs::write(&garbage, "not a certificate").unwrap();
    for (extra, var) in [
        (
            vec![("HTTP_CA_FILE", "/nonexistent/ca.pem")],
            "HTTP_CA_FILE",
        ),
        (
            vec![("HTTP_CA_FILE", garbage.to_str().unwrap())],
            "HTTP_CA_FILE",
        ),
        (
            vec![("HTTP_TLS_INSECURE_SKIP_VERIFY", "perhaps")],
            "HTTP_TLS_INSECURE_SKIP_VERIFY",
        ),
    ] {
        let e = settings(url, &extra).unwrap_err();
        assert_eq!(e.var(), var, "{e}");
        assert_eq!(e.to_string().lines().count(), 1);
    }
    let tls_ca = rcgen::CertifiedIssuer::self_signed(
        rcgen::CertificateParams::new(Vec::<String>::new()).unwrap(),
        rcgen::KeyPair::generate().unwrap(),
    )
    .unwrap();
    let ca = std::env::temp_dir().join(format!("{}-ca.pem", unique("tls")));
    std::fs::write(&ca, tls_ca.pem()).unwrap();
    let e = settings(
        url,
        &[
            ("HTTP_CA_FILE", ca.to_str().unwrap()),
            ("HTTP_TLS_INSECURE_SKIP_VERIFY", "true"),
        ],
    )
    .unwrap_err();
    assert_eq!(e.var(), "HTTP_TLS_INSECURE_SKIP_VERIFY", "{e}");
}

/// A plain-http endpoint through `HTTP_PROXY` (no scheme, credentials with an escaped `@`): the
/// request goes to the proxy in absolute form with `Proxy-Authorization` on it.
#[tokio::test]
async fn http_endpoint_goes_through_http_proxy_with_its_credentials() {
    let proxy = ForwardProxy::start().await;
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let endpoint = format!("http://function.test:{}/fn", sink.addr().port());
    let proxy_var = format!("user:p%40ss@{}", proxy.addr());
    let s = settings(
        &endpoint,
        &[
            ("HTTP_PROXY", &proxy_var),
            ("HTTPS_PROXY", "http://127.0.0.1:9"),
        ],
    )
    .unwrap();
    let Outcome::Success(r) = call(&s).await else {
        panic!("the call through the proxy failed");
    };
    assert_eq!(&r.body[..], b"hello");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:p@ss")
    );
    assert_eq!(
        proxy.seen(),
        vec![ProxiedRequest {
            method: "POST".into(),
            target: endpoint,
            authorization: Some(basic),
        }]
    );
    let got = sink.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/fn", "the proxy forwarded it in origin form");
    assert!(got[0].headers.get("proxy-authorization").is_none());
}

/// An https endpoint through `HTTPS_PROXY`: a `CONNECT` tunnel, then TLS with the endpoint
/// itself (its certificate verified, for its own name).
#[tokio::test]
async fn https_endpoint_is_tunnelled_through_https_proxy() {
    let proxy = ForwardProxy::start().await;
    let tls = start_for(&["function.test"]).await;
    let endpoint = format!("https://function.test:{}/fission-function/secure", tls.port);
    let proxy_var = format!("http://{}", proxy.addr());
    let ca = tls.ca_file.to_string_lossy().into_owned();
    let s = settings(
        &endpoint,
        &[
            ("HTTPS_PROXY", &proxy_var),
            ("HTTP_PROXY", "http://127.0.0.1:9"),
            ("HTTP_CA_FILE", &ca),
        ],
    )
    .unwrap();
    let Outcome::Success(r) = call(&s).await else {
        panic!("the call through the tunnel failed");
    };
    assert_eq!(&r.body[..], b"secure ok");
    assert_eq!(
        proxy.seen(),
        vec![ProxiedRequest {
            method: "CONNECT".into(),
            target: format!("function.test:{}", tls.port),
            authorization: None,
        }]
    );
    assert_eq!(tls.requests.load(Ordering::SeqCst), 1);
}

/// Go never proxies loopback endpoints, whatever the variables say; nor do we.
#[tokio::test]
async fn loopback_endpoints_are_not_proxied() {
    let proxy = ForwardProxy::start().await;
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let proxy_var = format!("http://{}", proxy.addr());
    for host in ["127.0.0.1", "localhost"] {
        let endpoint = format!("http://{host}:{}/fn", sink.addr().port());
        let s = settings(&endpoint, &[("HTTP_PROXY", &proxy_var)]).unwrap();
        assert!(matches!(call(&s).await, Outcome::Success(_)), "{host}");
    }
    assert_eq!(sink.count(), 2);
    assert!(proxy.seen().is_empty(), "{:?}", proxy.seen());
}

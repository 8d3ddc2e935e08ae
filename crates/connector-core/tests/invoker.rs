//! Contract tests of the HTTP invocation against a real in-process HTTP server.

use bytes::Bytes;
use connector_core::headers::{HeaderFamily, HeaderSet};
use connector_core::invoker::{Invoker, Outcome};
use connector_core::signing::RequestSigner;
use connector_core::telemetry::Metrics;
use connector_core::testkit::{Reply, Sink, settings};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn invoker(endpoint: &str, extra: &[(&str, &str)]) -> (Invoker, HeaderSet, Arc<Metrics>) {
    let mut env = vec![
        ("TOPIC", "in-q"),
        ("HTTP_ENDPOINT", endpoint),
        ("MAX_RETRIES", "2"),
        ("CONTENT_TYPE", "application/json"),
        ("RESPONSE_TOPIC", "resp-q"),
        ("SOURCE_NAME", "my-trigger"),
        ("RETRY_BACKOFF_BASE", "0"),
    ];
    env.extend_from_slice(extra);
    let s = settings(&env);
    let metrics = Arc::new(Metrics::new());
    let headers = HeaderSet::connector_defaults(HeaderFamily::Keda, &s.common);
    (
        Invoker::new(&s.common, &s.http, "test-agent/1", metrics.clone()),
        headers,
        metrics,
    )
}

fn failure(o: Outcome) -> connector_core::invoker::Failure {
    match o {
        Outcome::Failure(f) => f,
        Outcome::Success(r) => panic!("expected failure, got {}", r.status),
    }
}

#[tokio::test]
async fn sends_payload_and_every_contract_header() {
    let sink = Sink::start().await;
    let (inv, headers, _) = invoker(&sink.url("/fission-function/fn?x=1"), &[]);
    let payload = Bytes::from_static(b"\xff\x00binary \xe2\x82");
    let Outcome::Success(resp) = inv.invoke(&payload, &headers).await else {
        panic!("expected success")
    };
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, payload, "the default sink echoes the body");
    let reqs = sink.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.path, "/fission-function/fn?x=1");
    assert_eq!(r.body, payload, "payload bytes are sent verbatim");
    for (name, value) in [
        ("keda-topic", "in-q"),
        ("keda-response-topic", "resp-q"),
        ("keda-error-topic", ""),
        ("keda-source-name", "my-trigger"),
        ("content-type", "application/json"),
        ("content-length", "11"),
        ("accept-encoding", "gzip"),
        ("user-agent", "test-agent/1"),
    ] {
        let got: Vec<_> = r.headers.get_all(name).iter().collect();
        assert_eq!(got.len(), 1, "exactly one {name}");
        assert_eq!(got[0], value, "{name}");
    }
    assert!(r.headers.get("x-fission-auth-signature").is_none());
}

#[tokio::test]
async fn nats_family_names() {
    let sink = Sink::start().await;
    let s = settings(&[
        ("TOPIC", "subj"),
        ("HTTP_ENDPOINT", &sink.url("/")),
        ("MAX_RETRIES", "0"),
        ("CONTENT_TYPE", "text/plain"),
    ]);
    let inv = Invoker::new(&s.common, &s.http, "t", Arc::new(Metrics::new()));
    let headers = HeaderSet::connector_defaults(HeaderFamily::Nats, &s.common);
    inv.invoke(&Bytes::from_static(b"x"), &headers).await;
    let h = &sink.requests()[0].headers;
    for (k, v) in [
        ("topic", "subj"),
        ("resptopic", ""),
        ("errortopic", ""),
        ("source-name", "KEDAConnector"),
        ("content-type", "text/plain"),
    ] {
        assert_eq!(h.get(k).map(|v| v.to_str().unwrap()), Some(v), "{k}");
    }
    assert!(h.get("keda-topic").is_none());
}

#[tokio::test]
async fn inbound_headers_replace_defaults_case_insensitively() {
    let sink = Sink::start().await;
    let (inv, mut headers, _) = invoker(&sink.url("/"), &[]);
    headers.merge([
        ("content-type", "text/csv"),
        ("KEDA-Topic", "rec-topic"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
    ]);
    inv.invoke(&Bytes::from_static(b"x"), &headers).await;
    let h = &sink.requests()[0].headers;
    assert_eq!(h.get_all("content-type").iter().count(), 1);
    assert_eq!(h["content-type"], "text/csv");
    assert_eq!(h.get_all("keda-topic").iter().count(), 1);
    assert_eq!(h["keda-topic"], "rec-topic");
    assert_eq!(
        h["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
}

#[tokio::test]
async fn max_retries_plus_one_attempts_then_failure_with_last_status_and_body() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(500).body("boom"));
    let (inv, headers, metrics) = invoker(&sink.url("/"), &[]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!(sink.count(), 3);
    assert_eq!(f.attempts, 3);
    assert_eq!(f.status.map(|s| s.as_u16()), Some(500));
    assert_eq!(f.body, "boom");
    assert_eq!(metrics.retries.get(), 2);
}

#[tokio::test]
async fn negative_max_retries_means_one_attempt() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(503));
    let (inv, headers, _) = invoker(&sink.url("/"), &[("MAX_RETRIES", "-3")]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!((sink.count(), f.attempts), (1, 1));
}

#[tokio::test]
async fn succeeds_on_a_later_attempt() {
    let sink = Sink::start().await;
    let (inv, headers, _) = invoker(&sink.url("/"), &[]);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    sink.respond(move |_| {
        if c.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 2 {
            Reply::status(502)
        } else {
            Reply::status(201).body("made")
        }
    });
    let Outcome::Success(r) = inv.invoke(&Bytes::from_static(b"x"), &headers).await else {
        panic!("expected success on the third attempt")
    };
    assert_eq!((r.status.as_u16(), r.body.as_ref()), (201, &b"made"[..]));
    assert_eq!(sink.count(), 3);
}

#[tokio::test]
async fn final_300_is_a_failure() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(300).body("choices"));
    let (inv, headers, _) = invoker(&sink.url("/"), &[]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!(f.status.map(|s| s.as_u16()), Some(300));
    assert_eq!(sink.count(), 3);
}

#[tokio::test]
async fn retry_on_transient_fails_4xx_at_once_and_retries_429() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(400));
    let (inv, headers, _) = invoker(&sink.url("/"), &[("RETRY_ON", "transient")]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!((sink.count(), f.attempts), (1, 1));
    sink.respond(|_| Reply::status(429));
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!((sink.count(), f.attempts), (4, 3));
}

#[tokio::test]
async fn default_policy_retries_4xx_like_the_original() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(404));
    let (inv, headers, _) = invoker(&sink.url("/"), &[]);
    failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!(sink.count(), 3);
}

fn gaps(sink: &Sink) -> Vec<Duration> {
    let r = sink.requests();
    r.windows(2).map(|w| w[1].at - w[0].at).collect()
}

#[tokio::test]
async fn exponential_backoff_between_attempts() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(503));
    let (inv, headers, _) = invoker(
        &sink.url("/"),
        &[
            ("MAX_RETRIES", "3"),
            ("RETRY_BACKOFF_BASE", "40ms"),
            ("RETRY_BACKOFF_MAX", "1s"),
        ],
    );
    failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    let g = gaps(&sink);
    assert_eq!(g.len(), 3);
    // Jitter only adds (up to 100 %), so each gap is at least the doubled base.
    for (i, min) in [40u64, 80, 160].into_iter().enumerate() {
        assert!(g[i] >= Duration::from_millis(min), "gap {i} = {:?}", g[i]);
        assert!(
            g[i] < Duration::from_millis(min * 2 + 500),
            "gap {i} = {:?}",
            g[i]
        );
    }
}

#[tokio::test]
async fn retry_after_seconds_is_honoured_and_capped() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(503).header("Retry-After", "1"));
    let (inv, headers, _) = invoker(&sink.url("/"), &[("MAX_RETRIES", "1")]);
    failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert!(
        gaps(&sink)[0] >= Duration::from_secs(1),
        "{:?}",
        gaps(&sink)
    );

    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(429).header("Retry-After", "30"));
    let (inv, headers, _) = invoker(
        &sink.url("/"),
        &[("MAX_RETRIES", "1"), ("RETRY_AFTER_MAX", "200ms")],
    );
    failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    let g = gaps(&sink)[0];
    assert!(
        g >= Duration::from_millis(200) && g < Duration::from_secs(5),
        "{g:?}"
    );
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    let sink = Sink::start().await;
    sink.respond(|_| {
        let at = std::time::SystemTime::now() + Duration::from_secs(2);
        Reply::status(503).header("Retry-After", &httpdate::fmt_http_date(at))
    });
    let (inv, headers, _) = invoker(&sink.url("/"), &[("MAX_RETRIES", "1")]);
    failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    // HTTP-dates have one-second resolution: at least one second must have been waited.
    assert!(
        gaps(&sink)[0] >= Duration::from_millis(1000),
        "{:?}",
        gaps(&sink)
    );
}

#[tokio::test]
async fn per_attempt_timeout() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(200).delay(Duration::from_secs(30)));
    let (inv, headers, _) = invoker(
        &sink.url("/"),
        &[("MAX_RETRIES", "1"), ("HTTP_TIMEOUT", "150ms")],
    );
    let started = Instant::now();
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(f.status, None);
    assert_eq!(f.attempts, 2);
    assert!(f.last_error.unwrap().contains("timed out"));
    assert_eq!(sink.count(), 2);
}

#[tokio::test]
async fn unreachable_endpoint_is_a_failure_without_status() {
    // Bind then drop a listener: that port is now closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (inv, headers, _) = invoker(&format!("http://127.0.0.1:{port}/f"), &[]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!((f.status, f.attempts), (None, 3));
    let e = f.last_error.unwrap();
    assert!(e.to_lowercase().contains("refused"), "{e}");
}

#[tokio::test]
async fn failed_attempts_reuse_one_connection() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(404).body("not found <&>"));
    let (inv, headers, _) = invoker(&sink.url("/"), &[]);
    for _ in 0..5 {
        failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    }
    assert_eq!(sink.count(), 15);
    assert_eq!(
        sink.connections(),
        1,
        "every response body is drained, so the pooled connection is reused"
    );
}

#[tokio::test]
async fn gzip_responses_are_decoded() {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(br#"{"ok":"gzip"}"#).unwrap();
    let compressed = Bytes::from(gz.finish().unwrap());
    let sink = Sink::start().await;
    sink.respond(move |_| {
        Reply::status(200)
            .header("Content-Encoding", "gzip")
            .header("X-Golden-Resp", "gz")
            .body(compressed.clone())
    });
    let (inv, headers, _) = invoker(&sink.url("/"), &[]);
    let Outcome::Success(r) = inv.invoke(&Bytes::from_static(b"x"), &headers).await else {
        panic!()
    };
    assert_eq!(r.body.as_ref(), br#"{"ok":"gzip"}"#);
    assert!(r.headers.get("content-encoding").is_none());
    assert!(r.headers.get("content-length").is_none());
    assert_eq!(r.headers["x-golden-resp"], "gz");
}

#[tokio::test]
async fn requests_are_signed_when_the_fission_secret_is_set() {
    let sink = Sink::start().await;
    let secret = "router-master-secret-0123456789abcdef";
    let (inv, headers, _) = invoker(
        &sink.url("/fission-function/ns/fn?a=b"),
        &[("FISSION_INTERNAL_AUTH_SECRET", secret)],
    );
    inv.invoke(&Bytes::from_static(b"signed body"), &headers)
        .await;
    let r = &sink.requests()[0];
    let ts: i64 = r.headers["x-fission-auth-timestamp"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!((now - ts).abs() <= 60);
    let expected = RequestSigner::from_master(secret.as_bytes()).sign(
        "POST",
        "/fission-function/ns/fn?a=b",
        b"signed body",
        ts,
    );
    assert_eq!(r.headers["x-fission-auth-signature"], expected.as_str());
}

/// User information in `HTTP_ENDPOINT` is basic authentication, as Go's client sent it
/// (percent-decoded, `user:` without a password); a message's own Authorization header wins.
#[tokio::test]
async fn endpoint_user_information_is_basic_authentication() {
    use base64::Engine as _;
    let sink = Sink::start().await;
    let basic = |s: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    };
    let port = sink.addr().port();
    for (userinfo, expected) in [("fn%40x:s%3Acret", "fn@x:s:cret"), ("token", "token:")] {
        let (inv, headers, _) = invoker(&format!("http://{userinfo}@127.0.0.1:{port}/f"), &[]);
        inv.invoke(&Bytes::from_static(b"x"), &headers).await;
        let last = sink.requests().pop().unwrap();
        assert_eq!(last.headers["authorization"], basic(expected).as_str());
        assert_eq!(last.path, "/f");
    }
    let (inv, mut headers, _) = invoker(&format!("http://u:p@127.0.0.1:{port}/f"), &[]);
    headers.merge([("Authorization", "Bearer from-the-message")]);
    inv.invoke(&Bytes::from_static(b"x"), &headers).await;
    let last = sink.requests().pop().unwrap();
    assert_eq!(last.headers.get_all("authorization").iter().count(), 1);
    assert_eq!(last.headers["authorization"], "Bearer from-the-message");
}

/// Redirects are followed as Go's client followed them: 307/308 repeat the POST with its body,
/// 301/302/303 turn into a GET without one, at most 10 per attempt.
#[tokio::test]
async fn redirects_are_followed_as_the_original_followed_them() {
    let sink = Sink::start().await;
    sink.respond(|r| match r.path.as_str() {
        "/moved-temporarily" => Reply::status(307).header("Location", "/fn/"),
        "/moved-permanently" => Reply::status(308).header("Location", "fn/"),
        "/see-other" => Reply::status(303).header("Location", "/fn/"),
        "/fn/" => Reply::status(200).body(r.body.clone()),
        loop_path => {
            let n: u32 = loop_path.trim_start_matches("/loop").parse().unwrap_or(0);
            Reply::status(302).header("Location", &format!("/loop{}", n + 1))
        }
    });
    for path in ["/moved-temporarily", "/moved-permanently"] {
        let (inv, headers, _) = invoker(&sink.url(path), &[]);
        let Outcome::Success(r) = inv.invoke(&Bytes::from_static(b"payload"), &headers).await
        else {
            panic!("{path}: not followed");
        };
        assert_eq!(&r.body[..], b"payload", "{path}: the body is sent again");
    }
    let (inv, headers, _) = invoker(&sink.url("/see-other"), &[]);
    let Outcome::Success(r) = inv.invoke(&Bytes::from_static(b"payload"), &headers).await else {
        panic!("303 not followed");
    };
    assert!(
        r.body.is_empty(),
        "a 303 is followed with a GET without the body"
    );
    let get = sink.requests().into_iter().last().unwrap();
    assert_eq!(get.method, "GET");
    assert!(get.headers.get("content-length").is_none());
    let before = sink.count();
    let (inv, headers, _) = invoker(&sink.url("/loop0"), &[("MAX_RETRIES", "0")]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!(f.status, None);
    assert!(f.last_error.unwrap_or_default().contains("10 redirects"));
    assert_eq!(
        sink.count() - before,
        10,
        "Go's client sends 10 requests at most"
    );
}

/// Credentials stay with the endpoint: a redirect chain that leaves its domain loses the
/// message's Authorization for good (Go's sticky rule), the URL's credentials follow a
/// relative redirect, and only the endpoint itself gets the Fission signature. An empty
/// Location is no redirect.
#[tokio::test]
async fn redirects_keep_credentials_with_the_endpoint() {
    let sink = Sink::start().await;
    let port = sink.addr().port();
    sink.respond(move |r| match r.path.as_str() {
        "/start" => Reply::status(307).header("Location", &format!("http://localhost:{port}/away")),
        "/away" => Reply::status(307).header("Location", &format!("http://127.0.0.1:{port}/back")),
        "/relative" => Reply::status(307).header("Location", "/next"),
        "/empty" => Reply::status(302).header("Location", ""),
        _ => Reply::status(200),
    });
    let secret = [("FISSION_INTERNAL_AUTH_SECRET", "s3cret")];
    let (inv, mut headers, _) = invoker(&format!("http://127.0.0.1:{port}/start"), &secret);
    headers.merge([("Authorization", "Bearer from-the-message")]);
    assert!(matches!(
        inv.invoke(&Bytes::from_static(b"x"), &headers).await,
        Outcome::Success(_)
    ));
    let by_path = |path: &str| {
        sink.requests()
            .into_iter()
            .rfind(|r| r.path == path)
            .unwrap_or_else(|| panic!("no request to {path}"))
    };
    let start = by_path("/start");
    assert_eq!(start.headers["authorization"], "Bearer from-the-message");
    assert!(start.headers.get("x-fission-auth-signature").is_some());
    for (path, referer) in [
        ("/away", format!("http://127.0.0.1:{port}/start")),
        ("/back", format!("http://localhost:{port}/away")),
    ] {
        let r = by_path(path);
        assert!(
            r.headers.get("authorization").is_none(),
            "{path}: {:?}",
            r.headers
        );
        assert_eq!(r.headers["referer"], referer.as_str(), "{path}");
    }
    assert!(
        by_path("/away")
            .headers
            .get("x-fission-auth-signature")
            .is_none()
    );

    let (inv, headers, _) = invoker(&format!("http://u:p@127.0.0.1:{port}/relative"), &[]);
    assert!(matches!(
        inv.invoke(&Bytes::from_static(b"x"), &headers).await,
        Outcome::Success(_)
    ));
    assert_eq!(by_path("/next").headers["authorization"], "Basic dTpw");

    let (inv, headers, _) = invoker(&sink.url("/empty"), &[("MAX_RETRIES", "0")]);
    let f = failure(inv.invoke(&Bytes::from_static(b"x"), &headers).await);
    assert_eq!(f.status.map(|s| s.as_u16()), Some(302));
}

//! Golden tests: every RabbitMQ case captured from the Go original, replayed through the whole
//! core path (dispatcher → invoker → error document → publisher), compared byte for byte.
//!
//! The sink is a raw socket on the original's port 28592 that answers with the captured
//! response bytes, so `Host`, `HTTPEndpoint` and `ErrorString` match without substitution.

use connector_core::testkit::{Event, MemoryPublisher, MemorySource, settings};
use connector_core::{Destination, DispatchOptions, Engine, HeaderFamily, Message};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/golden")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("golden file {}: {e}", path.display()))
}

/// A raw HTTP/1.1 sink: records each request's bytes and replies with `reply` bytes.
#[derive(Clone, Default)]
struct RawSink {
    reply: Arc<Mutex<Vec<u8>>>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl RawSink {
    async fn start(port: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| {
                panic!("golden tests need 127.0.0.1:{port} (the original's sink port): {e}")
            });
        let sink = RawSink::default();
        let s = sink.clone();
        tokio::spawn(async move {
            loop {
                let (mut sock, _) = listener.accept().await.unwrap();
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Read one request: headers, then Content-Length bytes of body.
                        let head_end = loop {
                            if let Some(i) = find(&buf, b"\r\n\r\n") {
                                break i + 4;
                            }
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map(|v| v.trim().parse().unwrap())
                            .unwrap_or(0);
                        while buf.len() < head_end + len {
                            match sock.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let request: Vec<u8> = buf.drain(..head_end + len).collect();
                        s.requests.lock().unwrap().push(request);
                        let reply = s.reply.lock().unwrap().clone();
                        if sock.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        sink
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Request line, header lines (sorted, `User-Agent` dropped: not contract), body.
fn normalise(raw: &[u8]) -> (String, Vec<String>, Vec<u8>) {
    let split = find(raw, b"\r\n\r\n").expect("a complete request");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap().to_owned();
    let mut headers: Vec<String> = lines
        .filter(|l| !l.to_ascii_lowercase().starts_with("user-agent:"))
        .map(str::to_owned)
        .collect();
    headers.sort();
    (request_line, headers, raw[split + 4..].to_vec())
}

const CASES: &[(&str, bool)] = &[
    // (case, expected to succeed)
    ("rabbitmq-a-success", true),
    ("rabbitmq-e-gzip", true),
    ("rabbitmq-b-404", false),
    ("rabbitmq-c-unreachable", false),
    ("rabbitmq-d1-html-chars", false),
    ("rabbitmq-d2-u2028-tab-newline", false),
    ("rabbitmq-d3-invalid-utf8", false),
    ("rabbitmq-d4-empty", false),
    ("rabbitmq-d5-controls", false),
];

fn golden_settings(case: &str, extras: bool) -> connector_core::Settings {
    let port = if case == "rabbitmq-c-unreachable" {
        28599
    } else {
        28592
    };
    let endpoint = format!("http://127.0.0.1:{port}/fission-function/golden-fn");
    settings(&[
        ("TOPIC", "golden-in"),
        ("RESPONSE_TOPIC", "golden-resp"),
        ("ERROR_TOPIC", "golden-err"),
        ("MAX_RETRIES", "1"),
        ("CONTENT_TYPE", "application/json"),
        ("SOURCE_NAME", "golden-src"),
        ("HTTP_ENDPOINT", &endpoint),
        ("RETRY_BACKOFF_BASE", "0"),
        ("ERROR_DOC_EXTRAS", if extras { "true" } else { "false" }),
    ])
}

/// Runs one case through the engine; returns (published body, destination, requests sent).
async fn run_case(
    sink: &RawSink,
    case: &str,
    extras: bool,
) -> (Vec<u8>, Destination, Vec<Vec<u8>>) {
    if case != "rabbitmq-c-unreachable" {
        *sink.reply.lock().unwrap() = golden(&format!("{case}.sink-response.bin"));
    }
    sink.requests.lock().unwrap().clear();
    let engine = Engine::new(
        golden_settings(case, extras),
        HeaderFamily::Keda,
        DispatchOptions {
            max_in_flight: 1,
            lane_concurrency: 0,
            write_ahead: 0,
        },
        "golden-test",
    );
    let (mut source, feed, log) = MemorySource::new();
    let publisher = Arc::new(MemoryPublisher::new(log.clone()));
    feed.send(Message {
        payload: golden(&format!("{case}.input.bin")).into(),
        ..Default::default()
    })
    .unwrap();
    let e = engine.clone();
    let run = tokio::spawn(async move { e.dispatch(&mut source, &publisher).await });
    log.wait_for_settled(1, Duration::from_secs(10)).await;
    engine.shutdown().cancel();
    run.await.unwrap();
    let events = log.events();
    assert_eq!(
        events.len(),
        2,
        "{case}: one publish then one ack: {events:?}"
    );
    assert_eq!(
        events[1],
        Event::Acked(0),
        "{case}: acked after the publish"
    );
    let Event::Published {
        body, destination, ..
    } = &events[0]
    else {
        panic!("{case}: first event must be the publish: {events:?}")
    };
    (
        body.to_vec(),
        *destination,
        sink.requests.lock().unwrap().clone(),
    )
}

#[tokio::test]
async fn rabbitmq_cases_match_the_original_byte_for_byte() {
    let sink = RawSink::start(28592).await;
    for &(case, succeeds) in CASES {
        let (body, destination, requests) = run_case(&sink, case, false).await;
        if succeeds {
            assert_eq!(destination, Destination::Response, "{case}");
            assert_eq!(
                body,
                golden(&format!("{case}.response-message.body.bin")),
                "{case}: response body"
            );
        } else {
            assert_eq!(destination, Destination::Error, "{case}");
            let want = golden(&format!("{case}.error-message.body.bin"));
            assert_eq!(
                String::from_utf8_lossy(&body),
                String::from_utf8_lossy(&want),
                "{case}: error document"
            );
            assert_eq!(body, want, "{case}: error document bytes");
        }
        // The requests: same request line, same header lines (names in Go's canonical case),
        // same body. `unreachable` sent nothing.
        let expected_requests: Vec<Vec<u8>> = (1..)
            .map(|n| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("../../testdata/golden/{case}.request-{n}.bin"))
            })
            .take_while(|p| p.exists())
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(
            requests.len(),
            expected_requests.len(),
            "{case}: number of requests"
        );
        for (ours, theirs) in requests.iter().zip(&expected_requests) {
            assert_eq!(normalise(ours), normalise(theirs), "{case}: request");
        }
    }
}

#[tokio::test]
async fn extras_only_append_after_the_original_fields() {
    // The unreachable case sends nothing, so it needs no listening sink.
    let case = "rabbitmq-c-unreachable";
    let (body, _, requests) = run_case(&RawSink::default(), case, true).await;
    assert!(requests.is_empty());
    let want = golden(&format!("{case}.error-message.body.bin"));
    let prefix = &want[..want.len() - 1];
    assert!(body.starts_with(prefix), "original fields first, unchanged");
    let tail = String::from_utf8(body[prefix.len()..].to_vec()).unwrap();
    assert!(
        tail.starts_with(r#","ConnectorDetails":{"Attempts":2,"LastError":""#),
        "{tail}"
    );
    assert!(tail.to_lowercase().contains("refused"), "{tail}");
    assert!(tail.ends_with("}}"), "{tail}");
}

#[test]
fn extras_keep_non_utf8_payloads_recoverable() {
    use base64::Engine as _;
    use connector_core::error_doc::{ErrorDocument, Extras};
    use connector_core::headers::HeaderSet;
    let s = golden_settings("rabbitmq-d3-invalid-utf8", true);
    let headers = HeaderSet::connector_defaults(HeaderFamily::Keda, &s.common);
    let input = golden("rabbitmq-d3-invalid-utf8.input.bin");
    let doc = ErrorDocument {
        message: &input,
        http_endpoint: &s.common.http_endpoint,
        headers: &headers,
        response_body: b"not found <&>",
        status: Some(404),
        source_name: &s.common.source_name,
        extras: Some(Extras {
            attempts: 2,
            last_error: None,
        }),
        reason: None,
    }
    .encode();
    let want = golden("rabbitmq-d3-invalid-utf8.error-message.body.bin");
    assert!(doc.starts_with(&want[..want.len() - 1]));
    let v: serde_json::Value = serde_json::from_slice(&doc).expect("valid JSON");
    let b64 = v["ConnectorDetails"]["MessageBase64"].as_str().unwrap();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        input
    );
}

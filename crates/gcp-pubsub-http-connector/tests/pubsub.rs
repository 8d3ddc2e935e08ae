//! Integration tests against Google's Pub/Sub emulator (installed with the Google Cloud CLI;
//! `PUBSUB_EMULATOR_BIN` overrides its path), started per test on a free loopback port, with
//! the connector as a separate process. Setup and checks use the emulator's REST API.

use base64::Engine as _;
use connector_core::testkit::{
    Process, Reply, Sink, assert_config_error, free_port, with_overrides,
};
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_gcp-pubsub-http-connector");
const WAIT: Duration = Duration::from_secs(60);
const PROJECT: &str = "test-project";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

struct Emulator {
    _child: tokio::process::Child,
    port: u16,
}

impl Emulator {
    async fn start() -> Self {
        let bin = std::env::var("PUBSUB_EMULATOR_BIN").unwrap_or_else(|_| {
            "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator".into()
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "the Pub/Sub emulator is not installed at {bin}: it comes with the Google Cloud CLI \
             (component pubsub-emulator); set PUBSUB_EMULATOR_BIN to its launcher"
        );
        let port = free_port();
        let mut child = tokio::process::Command::new(&bin)
            .args(["--host=127.0.0.1", &format!("--port={port}")])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the Pub/Sub emulator");
        // It logs "Server started" (on stderr) once it listens.
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let ready = tokio::time::timeout(WAIT, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Server started") {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(ready, Ok(true), "the Pub/Sub emulator did not start");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::spawn(async move { while let Ok(Some(_)) = out.next_line().await {} });
        Self {
            _child: child,
            port,
        }
    }

    /// One REST call; returns (status, JSON body).
    async fn rest(&self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = body.to_string();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // Read exactly one response: the emulator keeps the connection open.
        let mut raw = Vec::new();
        let mut chunk = [0u8; 8192];
        let find = |h: &[u8], n: &[u8]| h.windows(n.len()).position(|w| w == n);
        let complete = |raw: &[u8]| -> Option<(u16, String)> {
            let end = find(raw, b"\r\n\r\n")?;
            let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
            let status = head.get(9..12)?.parse().ok()?;
            let rest = &raw[end + 4..];
            if head.contains("transfer-encoding: chunked") {
                let mut out = Vec::new();
                let mut r = rest;
                loop {
                    let line = find(r, b"\r\n")?;
                    let n = usize::from_str_radix(std::str::from_utf8(&r[..line]).ok()?.trim(), 16)
                        .ok()?;
                    if n == 0 {
                        return Some((status, String::from_utf8_lossy(&out).into_owned()));
                    }
                    let data = r.get(line + 2..line + 2 + n)?;
                    out.extend_from_slice(data);
                    r = r.get(line + 2 + n + 2..)?;
                }
            }
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap_or(0))
                .unwrap_or(0);
            (rest.len() >= len)
                .then(|| (status, String::from_utf8_lossy(&rest[..len]).into_owned()))
        };
        let (status, body) = loop {
            if let Some(done) = complete(&raw) {
                break done;
            }
            let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
                .await
                .expect("emulator answer")
                .unwrap();
            assert!(n > 0, "emulator closed the connection mid-response");
            raw.extend_from_slice(&chunk[..n]);
        };
        (status, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    async fn topic(&self, name: &str) {
        let (s, b) = self
            .rest(
                "PUT",
                &format!("/v1/projects/{PROJECT}/topics/{name}"),
                json!({}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    async fn subscription(&self, name: &str, topic: &str, ack_deadline: u32) {
        let (s, b) = self
            .rest(
                "PUT",
                &format!("/v1/projects/{PROJECT}/subscriptions/{name}"),
                json!({"topic": format!("projects/{PROJECT}/topics/{topic}"), "ackDeadlineSeconds": ack_deadline}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    async fn publish(&self, topic: &str, data: &[u8], attributes: &[(&str, &str)]) {
        let attrs: HashMap<&str, &str> = attributes.iter().copied().collect();
        let (s, b) = self
            .rest(
                "POST",
                &format!("/v1/projects/{PROJECT}/topics/{topic}:publish"),
                json!({"messages": [{"data": b64(data), "attributes": attrs}]}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }

    /// Pulls and acks until `done` holds; returns (data, attributes) of every message.
    async fn read_until(
        &self,
        subscription: &str,
        done: impl Fn(&[(Vec<u8>, HashMap<String, String>)]) -> bool,
    ) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut got = Vec::new();
        while !done(&got) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited on {subscription}: have {}",
                got.len()
            );
            // Synchronous pull waits (returnImmediately=false) until messages arrive.
            let (s, b) = self
                .rest(
                    "POST",
                    &format!("/v1/projects/{PROJECT}/subscriptions/{subscription}:pull"),
                    json!({"maxMessages": 100}),
                )
                .await;
            assert_eq!(s, 200, "{b}");
            let mut ack_ids = Vec::new();
            for m in b["receivedMessages"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                ack_ids.push(m["ackId"].as_str().unwrap().to_owned());
                let data = base64::engine::general_purpose::STANDARD
                    .decode(m["message"]["data"].as_str().unwrap_or(""))
                    .unwrap();
                let attrs: HashMap<String, String> =
                    serde_json::from_value(m["message"]["attributes"].clone()).unwrap_or_default();
                got.push((data, attrs));
            }
            if !ack_ids.is_empty() {
                self.rest(
                    "POST",
                    &format!("/v1/projects/{PROJECT}/subscriptions/{subscription}:acknowledge"),
                    json!({"ackIds": ack_ids}),
                )
                .await;
            }
        }
        got
    }

    async fn read(&self, subscription: &str, n: usize) -> Vec<(Vec<u8>, HashMap<String, String>)> {
        self.read_until(subscription, |g| g.len() >= n).await
    }
}

/// Source topic + subscription, response and error topics with a reader subscription each.
async fn setup(e: &Emulator, ack_deadline: u32) {
    for t in ["source", "responses", "errors"] {
        e.topic(t).await;
    }
    e.subscription("source-sub", "source", ack_deadline).await;
    e.subscription("resp-reader", "responses", 10).await;
    e.subscription("err-reader", "errors", 10).await;
}

fn env(e: &Emulator, sink: &Sink, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let v: Vec<(&'static str, String)> = vec![
        ("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{}", e.port)),
        ("PROJECT_ID", PROJECT.into()),
        ("SUBSCRIPTION_NAME", "source-sub".into()),
        ("TOPIC", "source".into()),
        ("RESPONSE_TOPIC", "responses".into()),
        ("ERROR_TOPIC", "errors".into()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
    ];
    with_overrides(v, extra)
}

/// Also the regression test for the original's hang after its first publish: many responses
/// must come out of one process.
#[tokio::test]
async fn every_message_answered_with_per_message_attributes() {
    let e = Emulator::start().await;
    setup(&e, 10).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&r.body);
        Reply::status(200).header("x-resp", "yes").body(body)
    });
    for i in 0..20 {
        let attr = format!("v{i}");
        e.publish(
            "source",
            format!("m{i}").as_bytes(),
            &[(&format!("x-only-{i}"), attr.as_str())],
        )
        .await;
    }
    let mut proc = Process::start(BIN, &env(&e, &sink, &[("MAX_IN_FLIGHT", "4")]));
    let got = e.read("resp-reader", 20).await;
    let bodies: HashSet<Vec<u8>> = got.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(
        bodies,
        (0..20).map(|i| format!("re:m{i}").into_bytes()).collect()
    );
    for (_, attrs) in &got {
        assert_eq!(
            attrs.get("X-Resp").map(String::as_str),
            Some("yes"),
            "response attributes from the HTTP response"
        );
    }
    for r in sink.requests() {
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        let i = &body[1..];
        let own: Vec<_> = r
            .headers
            .keys()
            .filter(|k| k.as_str().starts_with("x-only-"))
            .collect();
        assert_eq!(
            own.len(),
            1,
            "attributes do not accumulate across messages: {own:?}"
        );
        assert_eq!(
            r.headers[format!("x-only-{i}").as_str()],
            format!("v{i}").as_str()
        );
        assert_eq!(r.headers["keda-topic"], "source");
    }
    assert!(sink.max_in_flight() <= 4);
    proc.stop().await;
    assert_eq!(sink.count(), 20, "each message invoked once");
}

#[tokio::test]
async fn failures_go_to_the_error_topic_and_are_acked() {
    let e = Emulator::start().await;
    setup(&e, 10).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        if r.body.starts_with(b"bad") {
            Reply::status(500).body("nope")
        } else {
            Reply::status(200)
        }
    });
    e.publish("source", b"bad-1", &[]).await;
    e.publish("source", b"bad-2", &[]).await;
    let mut proc = Process::start(BIN, &env(&e, &sink, &[("MAX_RETRIES", "1")]));
    let errors = e.read("err-reader", 2).await;
    let mut messages = Vec::new();
    for (data, _) in &errors {
        let doc: Value = serde_json::from_slice(data).unwrap();
        assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 500);
        assert_eq!(doc["FunctionHTTPResponse"]["ResponseBody"], "nope");
        messages.push(
            doc["FunctionHTTPRequest"]["Message"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    messages.sort();
    assert_eq!(messages, ["bad-1", "bad-2"]);
    // Acked, not nacked: a nack would bring them straight back. A marker published now is the
    // next and last thing the function sees.
    e.publish("source", b"marker", &[]).await;
    e.read("resp-reader", 1).await;
    proc.stop().await;
    let bodies: Vec<_> = sink.requests().iter().map(|r| r.body.clone()).collect();
    assert_eq!(
        bodies.len(),
        5,
        "2 x 2 attempts, then the marker: {bodies:?}"
    );
    assert_eq!(bodies[4], "marker");
}

/// SIGTERM under load: every call already made is finished and its response published before
/// the process exits 0, and nothing new is started. (Redelivery of the rest to the next
/// process cannot be shown here: the emulator in this image, pubsub-emulator 0.8.20, stops
/// delivering on a subscription once any streaming-pull client has closed, Google's own
/// Python client included.)
#[tokio::test]
async fn sigterm_under_load_finishes_and_publishes_in_flight_work() {
    let e = Emulator::start().await;
    setup(&e, 60).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(300))
    });
    for i in 0..40 {
        e.publish("source", i.to_string().as_bytes(), &[]).await;
    }
    let mut proc = Process::start(BIN, &env(&e, &sink, &[("MAX_IN_FLIGHT", "4")]));
    sink.wait_for_requests(6, WAIT).await;
    proc.stop().await;
    let invoked: HashSet<Vec<u8>> = sink.requests().iter().map(|r| r.body.to_vec()).collect();
    assert!(invoked.len() < 40, "stopped under load");
    let answered: HashSet<Vec<u8>> = e
        .read("resp-reader", invoked.len())
        .await
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert_eq!(
        answered, invoked,
        "every started call was finished and published before exit"
    );
}

#[tokio::test]
async fn missing_destination_topic_exits_nonzero_naming_it() {
    let e = Emulator::start().await;
    setup(&e, 10).await;
    let sink = Sink::start().await;
    let mut proc = Process::start(BIN, &env(&e, &sink, &[("ERROR_TOPIC", "no-such-topic")]));
    proc.expect_exit(1, "ERROR_TOPIC: cannot use topic").await;
}

#[tokio::test]
async fn bad_env_values_exit_78_with_one_line_and_no_secret() {
    let secret = "-----BEGIN PRIVATE KEY-----s3cret";
    let base: Vec<(&str, String)> = vec![
        ("SUBSCRIPTION_NAME", "s".into()),
        ("PROJECT_ID", "p".into()),
        ("TOPIC", "t".into()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:9/f".into()),
        ("MAX_RETRIES", "1".into()),
        ("CONTENT_TYPE", "text/plain".into()),
    ];
    let bad_json = format!("{{\"private_key\":\"{secret}\"");
    let cases: &[(&str, Option<String>)] = &[
        ("SUBSCRIPTION_NAME", None),
        ("PROJECT_ID", None),
        ("GOOGLE_APPLICATION_CREDENTIALS", Some(bad_json.clone())),
        ("CREDENTIALS_FROM_ENV", Some(bad_json)),
        ("MAX_IN_FLIGHT", Some("0".into())),
    ];
    for (var, value) in cases {
        assert_config_error(BIN, &base, var, value.as_deref(), var, "s3cret");
    }
}

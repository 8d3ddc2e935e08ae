//! Integration tests against the real NATS server with JetStream at 127.0.0.1:4222 (or
//! `NATS_URL`), with the connector as a separate process. Start the server with
//! `nats-server -js -a 127.0.0.1 -p 4222 &` if these fail to connect.

use async_nats::jetstream::{self, consumer::pull, stream};
use connector_core::testkit::{Process, Reply, Sink, assert_config_error, unique, with_overrides};
use futures_lite::StreamExt;
use std::collections::HashSet;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_nats-jetstream-http-connector");
const WAIT: Duration = Duration::from_secs(60);

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A stream capturing `<p>.>` with subjects `<p>.in`, `<p>.resp`, `<p>.err`.
struct Setup {
    js: jetstream::Context,
    stream: String,
    input: String,
    response: String,
    error: String,
    consumer: String,
}

async fn setup() -> Setup {
    let url = nats_url();
    let client = async_nats::connect(&url).await.unwrap_or_else(|e| {
        panic!(
            "NATS is not reachable at {url}: {e}. Start it with \
             `nats-server -js -a 127.0.0.1 -p 4222 &` (or set NATS_URL)."
        )
    });
    let js = jetstream::new(client);
    let p = unique("t");
    js.create_stream(stream::Config {
        name: p.to_uppercase(),
        subjects: vec![format!("{p}.>")],
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating a JetStream stream failed (is JetStream on: -js?): {e}"));
    Setup {
        js,
        stream: p.to_uppercase(),
        input: format!("{p}.in"),
        response: format!("{p}.resp"),
        error: format!("{p}.err"),
        consumer: format!("{p}-durable"),
    }
}

impl Setup {
    async fn publish(&self, body: &str, headers: &[(&str, &str)]) {
        let mut h = async_nats::HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, *v);
        }
        self.js
            .publish_with_headers(self.input.clone(), h, body.to_owned().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Reads `n` messages of `subject` from the start of the stream.
    async fn read(&self, subject: &str, n: usize) -> Vec<async_nats::jetstream::Message> {
        self.read_until(subject, |got| got.len() >= n).await
    }

    async fn read_until(
        &self,
        subject: &str,
        done: impl Fn(&[async_nats::jetstream::Message]) -> bool,
    ) -> Vec<async_nats::jetstream::Message> {
        let stream = self.js.get_stream(&self.stream).await.unwrap();
        let consumer = stream
            .create_consumer(pull::Config {
                filter_subject: subject.to_owned(),
                ..Default::default()
            })
            .await
            .unwrap();
        let mut messages = consumer.messages().await.unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !done(&got) {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => {
                    m.ack().await.unwrap();
                    got.push(m);
                }
                Ok(other) => panic!("reading {subject}: {:?}", other.map(|r| r.map(|_| ()))),
                Err(_) => panic!("waited {WAIT:?} on {subject}: have {}", got.len()),
            }
        }
        got
    }

    /// (pending, ack pending) of the connector's durable consumer.
    async fn consumer_state(&self) -> (u64, usize) {
        let mut stream = self.js.get_stream(&self.stream).await.unwrap();
        let _ = stream.info().await;
        let info = stream.consumer_info(&self.consumer).await.unwrap();
        (info.num_pending, info.num_ack_pending)
    }
}

fn env(s: &Setup, sink: &Sink, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let v: Vec<(&'static str, String)> = vec![
        ("NATS_SERVER", nats_url()),
        ("TOPIC", s.input.clone()),
        ("RESPONSE_TOPIC", s.response.clone()),
        ("ERROR_TOPIC", s.error.clone()),
        ("CONSUMER", s.consumer.clone()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
    ];
    with_overrides(v, extra)
}

#[tokio::test]
async fn happy_path_with_nats_headers_both_ways() {
    let s = setup().await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&r.body);
        Reply::status(200).header("x-resp", "yes").body(body)
    });
    for i in 0..20 {
        s.publish(
            &format!("m{i}"),
            &[("Traceparent", "00-abc-01"), ("content-type", "text/csv")],
        )
        .await;
    }
    let mut proc = Process::start(BIN, &env(&s, &sink, &[("CONCURRENT", "4")]));
    let responses = s.read(&s.response, 20).await;
    let bodies: HashSet<String> = responses
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (0..20).map(|i| format!("re:m{i}")).collect());
    for m in &responses {
        let h = m.headers.as_ref().expect("response headers");
        assert_eq!(h.get("X-Resp").map(|v| v.as_str()), Some("yes"));
    }
    for r in sink.requests() {
        assert_eq!(r.headers["topic"], s.input.as_str());
        assert_eq!(r.headers["resptopic"], s.response.as_str());
        assert_eq!(r.headers["errortopic"], s.error.as_str());
        assert_eq!(r.headers["source-name"], "KEDAConnector");
        assert_eq!(r.headers.get_all("content-type").iter().count(), 1);
        assert_eq!(
            r.headers["content-type"], "text/csv",
            "message header replaces the default"
        );
        assert_eq!(r.headers["traceparent"], "00-abc-01");
        assert!(r.headers.get("keda-topic").is_none());
    }
    assert!(sink.max_in_flight() <= 4);
    proc.stop().await;
    assert_eq!(
        s.consumer_state().await,
        (0, 0),
        "nothing pending, nothing unacked"
    );
}

#[tokio::test]
async fn without_response_topic_success_is_acked() {
    let s = setup().await;
    let sink = Sink::start().await;
    for i in 0..5 {
        s.publish(&format!("{i}"), &[]).await;
    }
    let mut e = env(&s, &sink, &[]);
    e.retain(|(k, _)| *k != "RESPONSE_TOPIC");
    let mut proc = Process::start(BIN, &e);
    sink.wait_for_requests(5, WAIT).await;
    proc.stop().await;
    assert_eq!(
        s.consumer_state().await,
        (0, 0),
        "acked, not left for redelivery"
    );
    assert_eq!(sink.count(), 5);
}

#[tokio::test]
async fn failure_publishes_error_document_then_acks() {
    let s = setup().await;
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(422).body("invalid"));
    s.publish("bad-1", &[]).await;
    s.publish("bad-2", &[]).await;
    let mut proc = Process::start(BIN, &env(&s, &sink, &[("MAX_RETRIES", "1")]));
    let errors = s.read(&s.error, 2).await;
    let mut messages = Vec::new();
    for m in &errors {
        let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 422);
        assert_eq!(
            doc["FunctionHTTPRequest"]["Headers"]["Topic"][0],
            s.input.as_str()
        );
        assert_eq!(
            doc["FunctionHTTPRequest"]["Headers"]["RespTopic"][0],
            s.response.as_str()
        );
        messages.push(
            doc["FunctionHTTPRequest"]["Message"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    messages.sort();
    assert_eq!(messages, ["bad-1", "bad-2"]);
    assert_eq!(sink.count(), 4);
    proc.stop().await;
    assert_eq!(s.consumer_state().await, (0, 0));
}

#[tokio::test]
async fn slow_calls_are_kept_in_progress_not_redelivered() {
    let s = setup().await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(3500))
    });
    s.publish("slow", &[]).await;
    let mut proc = Process::start(
        BIN,
        &env(&s, &sink, &[("ACKWAIT", "1s"), ("CONCURRENT", "2")]),
    );
    s.read(&s.response, 1).await;
    proc.stop().await;
    assert_eq!(
        sink.count(),
        1,
        "in-progress acks kept the server from redelivering"
    );
    assert_eq!(s.consumer_state().await, (0, 0));
}

async fn interrupted_under_load(kill: bool) {
    let s = setup().await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(3))
    });
    let total = 150;
    for i in 0..total {
        s.publish(&i.to_string(), &[]).await;
    }
    let e = env(&s, &sink, &[("CONCURRENT", "4"), ("ACKWAIT", "2s")]);
    let mut first = Process::start(BIN, &e);
    sink.wait_for_requests(30, WAIT).await;
    if kill {
        first.kill().await;
    } else {
        first.stop().await;
    }
    assert!(sink.count() < total, "interrupted under load");
    let mut second = Process::start(BIN, &e);
    let got = s
        .read_until(&s.response, |got| {
            let set: HashSet<&[u8]> = got.iter().map(|m| m.payload.as_ref()).collect();
            set.len() >= total
        })
        .await;
    second.stop().await;
    let distinct: HashSet<&[u8]> = got.iter().map(|m| m.payload.as_ref()).collect();
    assert_eq!(distinct.len(), total, "nothing lost");
    assert_eq!(
        s.consumer_state().await,
        (0, 0),
        "the durable survived and is fully acked"
    );
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing_and_keeps_the_durable() {
    interrupted_under_load(false).await;
}

#[tokio::test]
async fn kill_9_under_load_loses_nothing() {
    interrupted_under_load(true).await;
}

#[tokio::test]
async fn subject_without_a_stream_exits_nonzero_naming_topic() {
    let s = setup().await;
    let sink = Sink::start().await;
    let mut proc = Process::start(BIN, &env(&s, &sink, &[("TOPIC", &unique("nostream.in"))]));
    proc.expect_exit(1, "TOPIC: no JetStream stream").await;
}

#[tokio::test]
async fn bad_env_values_exit_78_with_one_line_and_no_secret() {
    let secret = "n4ts-secret";
    let base: Vec<(&str, String)> = vec![
        ("NATS_SERVER", nats_url()),
        ("CONSUMER", "c".into()),
        ("TOPIC", "t.in".into()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:9/f".into()),
        ("MAX_RETRIES", "1".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("NATS_TOKEN", secret.into()),
    ];
    let cases: &[(&str, Option<String>)] = &[
        ("CONSUMER", None),
        ("ACKWAIT", Some("30".into())),
        ("CONCURRENT", Some("0".into())),
        ("CONCURRENT", Some("many".into())),
        ("NATS_SERVER", Some(format!("nats://u:{secret}@[::1"))),
        ("NATS_USERNAME", Some("alone".into())),
    ];
    for (var, value) in cases {
        // A username alone is reported as the missing password.
        let names = if *var == "NATS_USERNAME" {
            "NATS_PASSWORD"
        } else {
            var
        };
        assert_config_error(BIN, &base, var, value.as_deref(), names, secret);
    }
}

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
        let name = self.js.stream_by_subject(subject).await.unwrap();
        let stream = self.js.get_stream(name).await.unwrap();
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

/// At the default `CONCURRENT=1` the stream is handled in order, as by the original, and the
/// responses are published in that order too, though the next message is POSTed while the
/// previous response waits for its stream ack.
#[tokio::test]
async fn default_concurrency_keeps_the_stream_order_in_calls_and_responses() {
    let s = setup().await;
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let bodies: Vec<String> = (0..200).map(|i| format!("{i:03}")).collect();
    for b in &bodies {
        s.publish(b, &[]).await;
    }
    let mut proc = Process::start(BIN, &env(&s, &sink, &[]));
    let responses = s.read(&s.response, 200).await;
    drained(&s).await;
    proc.stop().await;
    let answered: Vec<String> = responses
        .iter()
        .map(|m| String::from_utf8(m.payload.to_vec()).unwrap())
        .collect();
    assert_eq!(answered, bodies, "responses in the stream's order");
    let called: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert_eq!(called, bodies, "calls in the stream's order");
    assert_eq!(sink.max_in_flight(), 1);
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

/// The push durable the original connector leaves behind, made as its library (nats.go's
/// legacy `js.Subscribe` with a durable name) makes it: a deliver subject, no deliver group,
/// explicit acks, filter `TOPIC`, deliver all. Then the original's work on it: the ten
/// messages `m0`…`m9` are pushed, `m0`…`m4` acknowledged, `m5` (and the rest) delivered and
/// not acknowledged, and the subscription gone with the pod. Returns the deliver subject.
async fn left_by_the_original(s: &Setup) -> String {
    use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, push};
    for i in 0..10 {
        s.publish(&format!("m{i}"), &[]).await;
    }
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    let deliver = format!("_INBOX.{}", unique("orig"));
    let client = s.js.client();
    let mut sub = client.subscribe(deliver.clone()).await.unwrap();
    stream
        .create_consumer(push::Config {
            durable_name: Some(s.consumer.clone()),
            deliver_subject: deliver.clone(),
            filter_subject: s.input.clone(),
            ack_policy: AckPolicy::Explicit,
            deliver_policy: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..10 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&m.payload[..], format!("m{i}").as_bytes());
        if i < 5 {
            client
                .publish(m.reply.unwrap(), "+ACK".into())
                .await
                .unwrap();
        }
    }
    sub.unsubscribe().await.unwrap();
    client.flush().await.unwrap();
    // The acks have landed once the ack floor shows them.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let info = stream.consumer_info(&s.consumer).await.unwrap();
        if info.ack_floor.stream_sequence == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acks not seen: {info:?}"
        );
        tokio::task::yield_now().await;
    }
    deliver
}

/// Waits until the durable has nothing pending and nothing unacknowledged.
async fn drained(s: &Setup) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while s.consumer_state().await != (0, 0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            s.consumer_state().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn bodies(sink: &Sink) -> Vec<String> {
    let mut b: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    b.sort();
    b
}

const AFTER_THE_FLOOR: [&str; 5] = ["m5", "m6", "m7", "m8", "m9"];

/// The swap: the push durable the original left keeps its position. Nothing acknowledged
/// before is delivered again, nothing unacknowledged is skipped, and the durable is a pull
/// durable of the same name afterwards.
#[tokio::test]
async fn push_durable_left_by_the_original_keeps_its_position() {
    let s = setup().await;
    left_by_the_original(&s).await;
    let sink = Sink::start().await;
    let mut proc = Process::start(BIN, &env(&s, &sink, &[]));
    s.read(&s.response, 5).await;
    drained(&s).await;
    assert_eq!(
        bodies(&sink),
        AFTER_THE_FLOOR,
        "exactly the unacknowledged ones"
    );
    proc.wait_log(
        "replaced the push durable left by the original connector",
        1,
    )
    .await;
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    let info = stream.consumer_info(&s.consumer).await.unwrap();
    assert!(info.config.deliver_subject.is_none(), "a pull durable now");
    // The position was written down for racing replicas: the marker starts at it.
    let marker = stream
        .consumer_info(nats_jetstream_http_connector::marker_name(&s.consumer))
        .await
        .expect("the position marker");
    assert_eq!(
        marker.config.deliver_policy,
        async_nats::jetstream::consumer::DeliverPolicy::ByStartSequence { start_sequence: 6 }
    );
    proc.stop().await;
}

/// Two replicas starting at once (a rolling update, KEDA scaling from zero) against the
/// original's push durable: one replacement, every unacknowledged message answered once,
/// neither replica stops.
#[tokio::test]
async fn two_replicas_racing_the_replacement_share_one_durable() {
    let s = setup().await;
    left_by_the_original(&s).await;
    let sink = Sink::start().await;
    let vars = env(&s, &sink, &[]);
    let mut a = Process::start(BIN, &vars);
    let mut b = Process::start(BIN, &vars);
    s.read(&s.response, 5).await;
    drained(&s).await;
    assert_eq!(bodies(&sink), AFTER_THE_FLOOR, "each answered once");
    for p in [&a, &b] {
        p.wait_log("\"consuming\"", 1).await;
        assert!(p.id().is_some(), "both replicas run: {}", p.logs());
    }
    // More work is shared by both through the one durable.
    for i in 10..30 {
        s.publish(&format!("m{i}"), &[]).await;
    }
    s.read(&s.response, 25).await;
    drained(&s).await;
    assert_eq!(sink.count(), 25);
    a.stop().await;
    b.stop().await;
}

/// The way back: `--restore-push` turns the pull durable into a push durable of the same name
/// after its ack floor, the shape the original binds to; a push subscriber then gets exactly
/// what arrived since this connector stopped.
#[tokio::test]
async fn restore_push_gives_the_original_its_durable_back_at_the_position() {
    let s = setup().await;
    left_by_the_original(&s).await;
    let sink = Sink::start().await;
    let vars = env(&s, &sink, &[]);
    let mut proc = Process::start(BIN, &vars);
    s.read(&s.response, 5).await;
    drained(&s).await;
    proc.stop().await;
    for i in 10..13 {
        s.publish(&format!("m{i}"), &[]).await;
    }
    let mut restore = Process::start_with_args(BIN, &["--restore-push"], &vars);
    restore
        .expect_exit(0, "the durable consumer is a push durable again")
        .await;
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    let info = stream.consumer_info(&s.consumer).await.unwrap();
    let deliver = info.config.deliver_subject.clone().expect("a push durable");
    assert_eq!(info.config.filter_subject, s.input);
    assert_eq!(
        info.config.ack_policy,
        async_nats::jetstream::consumer::AckPolicy::Explicit
    );
    let client = s.js.client();
    let mut sub = client.subscribe(deliver).await.unwrap();
    for i in 10..13 {
        let m = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            &m.payload[..],
            format!("m{i}").as_bytes(),
            "from the position on"
        );
        client
            .publish(m.reply.unwrap(), "+ACK".into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
    drained(&s).await;
}

/// A durable this connector would misuse is refused at start, naming the setting.
#[tokio::test]
async fn a_durable_on_another_subject_is_refused_naming_topic() {
    let s = setup().await;
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    stream
        .create_consumer(pull::Config {
            durable_name: Some(s.consumer.clone()),
            filter_subject: s.response.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    let sink = Sink::start().await;
    let mut proc = Process::start(BIN, &env(&s, &sink, &[]));
    proc.expect_exit(1, "TOPIC: the durable consumer").await;
}

/// A changed `ACKWAIT` in the manifest takes effect on the existing durable at the next start,
/// with nothing to delete by hand.
#[tokio::test]
async fn a_changed_ackwait_updates_the_durable() {
    let s = setup().await;
    let sink = Sink::start().await;
    let mut first = Process::start(BIN, &env(&s, &sink, &[("ACKWAIT", "30s")]));
    first.wait_log("\"consuming\"", 1).await;
    first.stop().await;
    let mut second = Process::start(BIN, &env(&s, &sink, &[("ACKWAIT", "45s")]));
    second
        .wait_log("updated the durable consumer's ack wait", 1)
        .await;
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    let info = stream.consumer_info(&s.consumer).await.unwrap();
    assert_eq!(info.config.ack_wait, Duration::from_secs(45));
    second.stop().await;
}

/// A response stream deleted while the connector runs does not turn into lost outcomes: the
/// message stays unacknowledged and is answered once a stream captures the subject again.
#[tokio::test]
async fn a_response_stream_deleted_while_running_loses_nothing() {
    let s = setup().await;
    let out = unique("out");
    let out_stream = stream::Config {
        name: out.to_uppercase(),
        subjects: vec![format!("{out}.>")],
        ..Default::default()
    };
    s.js.create_stream(out_stream.clone()).await.unwrap();
    let response = format!("{out}.resp");
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let mut proc = Process::start(BIN, &env(&s, &sink, &[("RESPONSE_TOPIC", &response)]));
    proc.wait_log("\"consuming\"", 1).await;
    s.js.delete_stream(&out.to_uppercase()).await.unwrap();
    s.publish("kept", &[]).await;
    sink.wait_for_requests(1, WAIT).await;
    proc.wait_log("writing the outcome failed", 1).await;
    let (_, ack_pending) = s.consumer_state().await;
    assert_eq!(
        ack_pending, 1,
        "not acknowledged while its outcome cannot be written"
    );
    s.js.create_stream(out_stream).await.unwrap();
    let got = s.read(&response, 1).await;
    assert_eq!(&got[0].payload[..], b"kept");
    drained(&s).await;
    proc.stop().await;
}

/// `--check` before the swap says what the first start will do with the original's push
/// durable, and changes nothing: the durable is still the push durable at its position, and no
/// position marker was written.
#[tokio::test]
async fn check_tells_what_the_swap_will_do_and_changes_nothing() {
    let s = setup().await;
    left_by_the_original(&s).await;
    let sink = Sink::start().await;
    let (code, text) = connector_core::testkit::run_once(BIN, &["--check"], &env(&s, &sink, &[]));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("ok")
            && l.contains("(CONSUMER)")
            && l.contains("replaces the push durable")
            && l.contains("stream sequence 6")),
        "{text}"
    );
    let stream = s.js.get_stream(&s.stream).await.unwrap();
    let info = stream.consumer_info(&s.consumer).await.unwrap();
    assert!(
        info.config.deliver_subject.is_some(),
        "still the push durable"
    );
    assert_eq!(info.ack_floor.stream_sequence, 5, "its position untouched");
    assert!(
        stream
            .consumer_info(nats_jetstream_http_connector::marker_name(&s.consumer))
            .await
            .is_err(),
        "no marker written"
    );
    assert_eq!(sink.count(), 0);
}

/// With `OTEL_EXPORTER_OTLP_ENDPOINT` set, each message's spans reach an OTLP receiver: a
/// consumer span continuing the trace the NATS message carries (or starting one), a client span
/// per HTTP attempt whose context the function receives as `traceparent`, and a producer span
/// whose context the response or error message carries; the log lines of a message name its
/// trace.
#[tokio::test(flavor = "multi_thread")]
async fn spans_follow_each_message_through_the_function_to_its_outcome() {
    use connector_core::testkit::otlp::{OtlpReceiver, parse_traceparent as trace_parent};
    let s = setup().await;
    let receiver = OtlpReceiver::start().await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        if r.body.starts_with(b"fail") {
            Reply::status(500)
        } else {
            let mut body = b"re:".to_vec();
            body.extend_from_slice(&r.body);
            Reply::status(200).body(body)
        }
    });
    // Bodies and the trace context they arrive with (`None`: none, or not a valid one).
    let mut sent: Vec<(String, Option<(String, String)>)> = Vec::new();
    for i in 0..12 {
        let body = if i % 4 == 3 {
            format!("fail{i}")
        } else {
            format!("m{i}")
        };
        let inbound =
            (i % 2 == 0).then(|| (format!("{:032x}", 0xabc0 + i), format!("{:016x}", 0x70 + i)));
        match &inbound {
            Some((trace, parent)) => {
                let tp = format!("00-{trace}-{parent}-01");
                s.publish(&body, &[("traceparent", tp.as_str())]).await;
            }
            None => s.publish(&body, &[]).await,
        }
        sent.push((body, inbound));
    }
    let endpoint = receiver.endpoint();
    let mut proc = Process::start(
        BIN,
        &env(
            &s,
            &sink,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("OTEL_SERVICE_NAME", "orders-connector"),
            ],
        ),
    );
    let responses = s.read(&s.response, 9).await;
    let errors = s.read(&s.error, 3).await;
    // Stopping flushes the spans still batched.
    proc.stop().await;
    let spans = receiver
        .wait_for("the spans of 12 messages", WAIT, |spans| spans.len() >= 36)
        .await;
    assert_eq!(spans.len(), 36, "3 spans a message: process, POST, send");
    let by_id = |id: &str| {
        spans
            .iter()
            .find(|s| s.span_id == id)
            .unwrap_or_else(|| panic!("no span {id} in {spans:#?}"))
    };
    // From each call to the function back to the message's process span.
    let mut process_of = std::collections::HashMap::new();
    for r in sink.requests() {
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        let (trace, span) = trace_parent(r.headers["traceparent"].to_str().unwrap());
        assert!(r.headers.get("tracestate").is_none(), "no empty tracestate");
        let post = by_id(&span);
        assert_eq!((post.name.as_str(), post.kind), ("POST", 3), "{post:?}");
        assert_eq!(post.trace_id, trace);
        assert_eq!(post.attribute("http.request.method"), Some("POST"));
        let status = if body.starts_with("fail") {
            "500"
        } else {
            "200"
        };
        assert_eq!(post.attribute("http.response.status_code"), Some(status));
        let process = by_id(&post.parent_span_id);
        assert_eq!(process.name, format!("process {}", s.input));
        assert_eq!(process.kind, 5, "consumer");
        assert_eq!(process.trace_id, trace);
        assert_eq!(process.service, "orders-connector");
        assert_eq!(process.attribute("messaging.system"), Some("nats"));
        assert_eq!(
            process.attribute("messaging.destination.name"),
            Some(s.input.as_str())
        );
        assert_eq!(
            process.attribute("messaging.operation.type"),
            Some("process")
        );
        let (_, inbound) = sent.iter().find(|(b, _)| *b == body).expect("a sent body");
        match inbound {
            Some((trace, parent)) => {
                assert_eq!(&process.trace_id, trace, "the message's trace continues");
                assert_eq!(&process.parent_span_id, parent);
            }
            None => assert_eq!(process.parent_span_id, "", "a new trace starts"),
        }
        assert_eq!(process.status, if status == "500" { 2 } else { 0 });
        process_of.insert(body, process.clone());
    }
    assert_eq!(process_of.len(), 12, "one call per message");
    // From each outcome message back to the same process span.
    for (m, outcome) in responses
        .iter()
        .map(|m| (m, "response"))
        .chain(errors.iter().map(|m| (m, "error")))
    {
        let headers = m.headers.as_ref().expect("outcome headers");
        let (trace, span) = trace_parent(headers.get("traceparent").expect("traceparent").as_str());
        let send = by_id(&span);
        assert_eq!(send.kind, 4, "producer: {send:?}");
        assert_eq!(send.trace_id, trace);
        assert_eq!(send.attribute("keda_connector.outcome"), Some(outcome));
        let body = if outcome == "response" {
            String::from_utf8(m.payload.to_vec()).unwrap()[3..].to_owned()
        } else {
            let doc: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            doc["FunctionHTTPRequest"]["Message"]
                .as_str()
                .unwrap()
                .to_owned()
        };
        let process = &process_of[&body];
        assert_eq!(send.parent_span_id, process.span_id, "{body}");
        assert_eq!(
            send.name,
            format!(
                "send {}",
                if outcome == "response" {
                    &s.response
                } else {
                    &s.error
                }
            )
        );
    }
    // The failure's log line carries its trace.
    let failed = &process_of["fail3"];
    let line = proc
        .logs()
        .lines()
        .find(|l| l.contains("function invocation failed") && l.contains(&failed.trace_id))
        .map(str::to_owned);
    assert!(
        line.is_some(),
        "no log line with trace {}:\n{}",
        failed.trace_id,
        proc.logs()
    );
}

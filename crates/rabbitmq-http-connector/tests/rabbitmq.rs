//! Integration tests against the real RabbitMQ broker (127.0.0.1:5672, guest/guest, or
//! `AMQP_URL`), with the connector running as a separate process.
//! Start the broker with `rabbitmq-server -detached` if these fail to connect.

use connector_core::testkit::{
    Process, Reply, Sink, assert_config_error, free_port, http_get as get, unique, with_overrides,
};
use futures_lite::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);
const BIN: &str = env!("CARGO_BIN_EXE_rabbitmq-http-connector");

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn broker() -> Channel {
    let url = amqp_url();
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {url}: {e}. Start it with `rabbitmq-server -detached` \
                 (or set AMQP_URL)."
            )
        });
    // The connection lives as long as the test process.
    let channel = conn.create_channel().await.unwrap();
    std::mem::forget(conn);
    channel
}

/// Source, response and error queues, deleted on drop.
struct Queues {
    ch: Channel,
    source: String,
    response: String,
    error: String,
}

impl Queues {
    async fn new(ch: &Channel) -> Self {
        let q = Self {
            ch: ch.clone(),
            source: unique("src"),
            response: unique("resp"),
            error: unique("err"),
        };
        for name in [&q.source, &q.response, &q.error] {
            ch.queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        }
        q
    }

    /// Messages ready in `queue` (not counting unacknowledged ones).
    async fn ready(&self, queue: &str) -> u32 {
        self.ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    async fn publish(&self, body: &[u8], props: BasicProperties) {
        self.ch
            .basic_publish(
                "".into(),
                self.source.as_str().into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Consumes `n` messages from `queue` (auto-ack); panics after `limit`.
    async fn take(&self, queue: &str, n: usize, limit: Duration) -> Vec<lapin::message::Delivery> {
        self.take_until(queue, limit, |got| got.len() >= n).await
    }

    /// Consumes from `queue` (auto-ack) until `done` holds for what was received.
    async fn take_until(
        &self,
        queue: &str,
        limit: Duration,
        done: impl Fn(&[lapin::message::Delivery]) -> bool,
    ) -> Vec<lapin::message::Delivery> {
        let mut consumer = self
            .ch
            .basic_consume(
                queue.into(),
                unique("test-consumer").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + limit;
        while !done(&got) {
            match tokio::time::timeout_at(deadline, consumer.next()).await {
                Ok(Some(Ok(d))) => got.push(d),
                Ok(other) => panic!("consumer ended: {other:?}"),
                Err(_) => panic!(
                    "waited {limit:?} on {queue}; got {} messages, condition not met",
                    got.len()
                ),
            }
        }
        self.ch
            .basic_cancel(consumer.tag(), Default::default())
            .await
            .unwrap();
        got
    }
}

impl Drop for Queues {
    fn drop(&mut self) {
        let ch = self.ch.clone();
        let names = [
            self.source.clone(),
            self.response.clone(),
            self.error.clone(),
        ];
        tokio::spawn(async move {
            for n in names {
                let _ = ch
                    .queue_delete(n.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        });
    }
}

fn env(q: &Queues, sink: &Sink, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let v: Vec<(&'static str, String)> = vec![
        ("HOST", amqp_url()),
        ("TOPIC", q.source.clone()),
        ("RESPONSE_TOPIC", q.response.clone()),
        ("ERROR_TOPIC", q.error.clone()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "1".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("SOURCE_NAME", "it-trigger".into()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
    ];
    with_overrides(v, extra)
}

#[tokio::test]
async fn happy_path_responses_byte_equal_with_properties_and_headers() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    // Even messages get a typed answer, odd ones an untyped one (then CONTENT_TYPE applies).
    sink.respond(|r| {
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&r.body);
        let even = r.headers["x-trace"].to_str().unwrap()[1..]
            .parse::<u32>()
            .unwrap()
            % 2
            == 0;
        let reply = Reply::status(200);
        if even {
            reply.header("Content-Type", "application/octet-stream")
        } else {
            reply
        }
        .body(body)
    });
    let n = 40;
    for i in 0..n {
        let mut headers = BTreeMap::new();
        headers.insert(
            "x-trace".into(),
            AMQPValue::LongString(format!("t{i}").into()),
        );
        headers.insert("x-number".into(), AMQPValue::LongInt(7));
        let props = BasicProperties::default()
            .with_correlation_id(format!("corr-{i}").into())
            .with_message_id(format!("mid-{i}").into())
            .with_reply_to("reply-q".into())
            .with_headers(FieldTable::from(headers));
        let mut body = format!("msg-{i}-").into_bytes();
        body.extend_from_slice(&[0xff, 0x00, 0xfe]);
        q.publish(&body, props).await;
    }
    let mut proc = Process::start(BIN, &env(&q, &sink, &[]));
    let responses = q.take(&q.response, n, WAIT).await;
    assert_eq!(responses.len(), n);
    let mut seen = HashMap::new();
    for d in &responses {
        let body = d.data.clone();
        assert!(
            body.starts_with(b"re:msg-") && body.ends_with(&[0xff, 0x00, 0xfe]),
            "{body:?}"
        );
        let i: usize = String::from_utf8_lossy(&body[7..body.len() - 3])
            .trim_end_matches('-')
            .parse()
            .unwrap();
        let p = &d.properties;
        // The response's type is the function's; CONTENT_TYPE when it sent none.
        let expected = if i.is_multiple_of(2) {
            "application/octet-stream"
        } else {
            "application/json"
        };
        assert_eq!(
            p.content_type().as_ref().map(|s| s.as_str()),
            Some(expected)
        );
        assert_eq!(*p.delivery_mode(), Some(2), "persistent");
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.to_string()),
            Some(format!("corr-{i}"))
        );
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(format!("mid-{i}"))
        );
        assert_eq!(
            p.reply_to().as_ref().map(|s| s.to_string()),
            Some("reply-q".to_owned())
        );
        // Without tracing the records carry no headers, as the original's.
        assert_eq!(p.headers(), &None);
        *seen.entry(i).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), n, "every message answered exactly once");
    // Requests carried the contract headers and the AMQP string headers.
    let reqs = sink.requests();
    assert_eq!(reqs.len(), n);
    for r in &reqs {
        assert_eq!(r.headers["keda-topic"], q.source.as_str());
        assert_eq!(r.headers["keda-response-topic"], q.response.as_str());
        assert_eq!(r.headers["keda-error-topic"], q.error.as_str());
        assert_eq!(r.headers["keda-source-name"], "it-trigger");
        assert_eq!(r.headers["content-type"], "application/json");
        assert!(r.headers["x-trace"].to_str().unwrap().starts_with('t'));
        assert!(
            r.headers.get("x-number").is_none(),
            "only text headers are forwarded"
        );
    }
    proc.stop().await;
    assert_eq!(q.ready(&q.source).await, 0, "nothing left or requeued");
    assert_eq!(q.ready(&q.error).await, 0);
}

/// The `traceparent` AMQP header of a delivery.
fn amqp_traceparent(d: &lapin::message::Delivery) -> String {
    let headers = d.properties.headers().as_ref().expect("AMQP headers");
    match headers.inner().get("traceparent") {
        Some(AMQPValue::LongString(v)) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        other => panic!("traceparent header: {other:?}"),
    }
}

/// With tracing on, the trace an AMQP message carries continues through the function call to
/// the response and the error document, whose AMQP headers carry the write's context.
#[tokio::test(flavor = "multi_thread")]
async fn amqp_trace_context_is_continued_into_the_outcomes() {
    use connector_core::testkit::otlp::{
        OtlpReceiver, PARENT_SPAN_ID, TRACE_ID, assert_outcome_continues_trace,
        fail_bad_echo_the_rest, inbound_traceparent,
    };
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let receiver = OtlpReceiver::start().await;
    let sink = Sink::start().await;
    fail_bad_echo_the_rest(&sink);
    for body in ["good", "bad"] {
        let mut headers = BTreeMap::new();
        headers.insert(
            "traceparent".into(),
            AMQPValue::LongString(inbound_traceparent().into()),
        );
        headers.insert("tracestate".into(), AMQPValue::LongString("k=v".into()));
        let props = BasicProperties::default().with_headers(FieldTable::from(headers));
        q.publish(body.as_bytes(), props).await;
    }
    let endpoint = receiver.endpoint();
    let mut proc = Process::start(
        BIN,
        &env(
            &q,
            &sink,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
                ("MAX_RETRIES", "0"),
            ],
        ),
    );
    let responses = q.take(&q.response, 1, WAIT).await;
    let errors = q.take(&q.error, 1, WAIT).await;
    proc.stop().await;
    let spans = receiver.wait_for_exactly(6, WAIT).await;
    for (d, outcome) in [(&responses[0], "response"), (&errors[0], "error")] {
        assert_outcome_continues_trace(&spans, &amqp_traceparent(d), outcome, "rabbitmq");
    }
    // The calls carried their attempt's context and the message's tracestate.
    for r in sink.requests() {
        let tp = r.headers["traceparent"].to_str().unwrap().to_owned();
        assert!(tp.starts_with(&format!("00-{TRACE_ID}-")), "{tp}");
        assert!(
            !tp.contains(PARENT_SPAN_ID),
            "the function's parent is the attempt: {tp}"
        );
        assert_eq!(r.headers["tracestate"], "k=v");
    }
}

#[tokio::test]
async fn persistent_failure_goes_to_error_queue_and_is_acked() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(500).body("down <&>"));
    for i in 0..5 {
        q.publish(
            format!("{{\"n\":{i}}}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    let mut proc = Process::start(BIN, &env(&q, &sink, &[]));
    let errors = q.take(&q.error, 5, WAIT).await;
    let endpoint = sink.url("/fission-function/fn");
    let mut ns = Vec::new();
    for d in &errors {
        let doc: serde_json::Value =
            serde_json::from_slice(&d.data).expect("error document is JSON");
        let req = &doc["FunctionHTTPRequest"];
        let resp = &doc["FunctionHTTPResponse"];
        assert_eq!(req["HTTPEndpoint"], endpoint.as_str());
        assert_eq!(req["Headers"]["KEDA-Topic"][0], q.source.as_str());
        assert_eq!(resp["StatusCode"], 500);
        assert_eq!(resp["ResponseBody"], "down <&>");
        assert_eq!(
            resp["ErrorString"],
            format!("request returned failure: 500. http_endpoint: {endpoint}, source: it-trigger")
        );
        assert_eq!(doc["ConnectorDetails"]["Attempts"], 2);
        let m: serde_json::Value = serde_json::from_str(req["Message"].as_str().unwrap()).unwrap();
        ns.push(m["n"].as_u64().unwrap());
        assert_eq!(
            d.properties.content_type().as_ref().map(|s| s.as_str()),
            Some("application/json")
        );
        // Go escaping on the wire.
        assert!(String::from_utf8_lossy(&d.data).contains(r"down \u003c\u0026\u003e"));
    }
    ns.sort();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    assert_eq!(sink.count(), 10, "MAX_RETRIES=1 → two attempts each");
    proc.stop().await;
    assert_eq!(
        q.ready(&q.source).await,
        0,
        "failed messages were acked, not held or requeued"
    );
    assert_eq!(q.ready(&q.response).await, 0);
}

#[tokio::test]
async fn error_document_through_the_broker_matches_the_golden_bytes() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    sink.respond(|_| {
        Reply::status(404)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body("not found <&>")
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden");
    let input = std::fs::read(root.join("rabbitmq-b-404.input.bin")).unwrap();
    let golden = std::fs::read(root.join("rabbitmq-b-404.error-message.body.bin")).unwrap();
    // The golden run used these names and port; substitute ours.
    let expected = String::from_utf8(golden)
        .unwrap()
        .replace("127.0.0.1:28592", &sink.addr().to_string())
        .replace("golden-in", &q.source)
        .replace("golden-resp", &q.response)
        .replace("golden-err", &q.error);
    q.publish(&input, BasicProperties::default()).await;
    let mut proc = Process::start(
        BIN,
        &env(
            &q,
            &sink,
            &[
                ("ERROR_DOC_EXTRAS", "false"),
                ("SOURCE_NAME", "golden-src"),
                ("HTTP_ENDPOINT", &sink.url("/fission-function/golden-fn")),
            ],
        ),
    );
    let got = q.take(&q.error, 1, WAIT).await;
    assert_eq!(String::from_utf8_lossy(&got[0].data), expected);
    proc.stop().await;
    assert_eq!(
        q.ready(&q.source).await,
        0,
        "acked after the error document was confirmed"
    );
}

#[tokio::test]
async fn without_destinations_everything_is_acked() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        if r.body.starts_with(b"bad") {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    });
    for i in 0..10 {
        let body = if i % 2 == 0 {
            format!("good{i}")
        } else {
            format!("bad{i}")
        };
        q.publish(body.as_bytes(), BasicProperties::default()).await;
    }
    let mut e = env(&q, &sink, &[("MAX_RETRIES", "0")]);
    e.retain(|(k, _)| *k != "RESPONSE_TOPIC" && *k != "ERROR_TOPIC");
    let mut proc = Process::start(BIN, &e);
    sink.wait_for_requests(10, WAIT).await;
    proc.stop().await;
    assert_eq!(
        sink.count(),
        10,
        "each message invoked once, none redelivered"
    );
    assert_eq!(q.ready(&q.source).await, 0);
    assert_eq!(q.ready(&q.response).await, 0);
    assert_eq!(q.ready(&q.error).await, 0);
}

#[tokio::test]
async fn never_more_than_concurrent_unacked() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    sink.set_gate(false);
    for i in 0..20 {
        q.publish(format!("m{i}").as_bytes(), BasicProperties::default())
            .await;
    }
    let mut proc = Process::start(BIN, &env(&q, &sink, &[("CONCURRENT", "3")]));
    sink.wait_for_in_flight(3, WAIT).await;
    // The prefetch bounds what the pod holds: CONCURRENT calls, and as many deliveries again
    // to start while earlier outcomes wait for their confirm. The broker hands them out
    // asynchronously, so wait for the queue to reach that depth; it must go no lower.
    let deadline = tokio::time::Instant::now() + WAIT;
    while q.ready(&q.source).await > 14 && tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
    assert_eq!(q.ready(&q.source).await, 14);
    assert_eq!(sink.count(), 3, "only CONCURRENT calls at once");
    sink.set_gate(true);
    q.take(&q.response, 20, WAIT).await;
    assert_eq!(sink.max_in_flight(), 3);
    proc.stop().await;
    assert_eq!(q.ready(&q.source).await, 0);
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(5))
    });
    let n = 300;
    for i in 0..n {
        q.publish(format!("{i}").as_bytes(), BasicProperties::default())
            .await;
    }
    let e = env(&q, &sink, &[("CONCURRENT", "5")]);
    let mut first = Process::start(BIN, &e);
    sink.wait_for_requests(60, WAIT).await;
    first.stop().await;
    let before_restart = sink.count();
    assert!(
        before_restart < n,
        "stopped under load ({before_restart} of {n} invoked)"
    );
    let mut second = Process::start(BIN, &e);
    let responses = q.take(&q.response, n, WAIT).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for d in &responses {
        *counts
            .entry(String::from_utf8(d.data.clone()).unwrap())
            .or_default() += 1;
    }
    for i in 0..n {
        assert!(counts.contains_key(&i.to_string()), "message {i} was lost");
    }
    second.stop().await;
    let extra = q.ready(&q.response).await as usize;
    let duplicates = responses.len() - counts.len() + extra;
    assert!(
        duplicates <= 5,
        "{duplicates} duplicates exceed the in-flight bound"
    );
    assert_eq!(q.ready(&q.source).await, 0);
}

/// A TCP proxy whose connections the test can cut, to simulate the broker dropping us, and
/// that can leave the next connections mute (accepted, never answered: the handshake of a
/// broker going down that never completes).
struct Proxy {
    port: u16,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    mute_next: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let mute_next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (c, mute) = (conns.clone(), mute_next.clone());
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = listener.accept().await.unwrap();
                let muted = mute
                    .fetch_update(
                        std::sync::atomic::Ordering::SeqCst,
                        std::sync::atomic::Ordering::SeqCst,
                        |n| n.checked_sub(1),
                    )
                    .is_ok();
                let handle = tokio::spawn(async move {
                    if muted {
                        // Holds the connection open and says nothing until cut.
                        std::future::pending::<()>().await;
                    }
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(handle);
            }
        });
        Self {
            port,
            conns,
            mute_next,
        }
    }

    /// Drops every open connection (both directions close).
    fn cut(&self) {
        for h in self.conns.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

#[tokio::test]
async fn reconnects_after_the_connection_is_cut() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let host = amqp_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port));
    let mut proc = Process::start(BIN, &env(&q, &sink, &[("HOST", &host)]));
    for i in 0..5 {
        q.publish(format!("a{i}").as_bytes(), BasicProperties::default())
            .await;
    }
    q.take(&q.response, 5, WAIT).await;
    proc.wait_log("\"consuming\"", 1).await;
    proxy.cut();
    proc.wait_log("reconnecting", 1).await;
    proc.wait_log("\"consuming\"", 2).await;
    for i in 0..5 {
        q.publish(format!("b{i}").as_bytes(), BasicProperties::default())
            .await;
    }
    // A response confirmed just before the cut may have lost its ack: the broker then
    // redelivers that message and it is answered again (at-least-once). Every b must arrive;
    // the only extras allowed are such a-redeliveries.
    let bodies = |got: &[lapin::message::Delivery]| -> Vec<String> {
        got.iter()
            .map(|d| String::from_utf8(d.data.clone()).unwrap())
            .collect()
    };
    let after = q
        .take_until(&q.response, WAIT, |got| {
            let b = bodies(got);
            (0..5).all(|i| b.contains(&format!("b{i}")))
        })
        .await;
    let extras: Vec<String> = bodies(&after)
        .into_iter()
        .filter(|b| b.starts_with('a'))
        .collect();
    assert!(
        extras.len() <= 5,
        "redeliveries exceed the in-flight bound: {extras:?}"
    );
    proc.stop().await;
    assert_eq!(q.ready(&q.source).await, 0);
}

/// After a session was lost, a handshake that never completes (lapin 4 never resolves one the
/// broker reset mid-way, as `rabbitmqctl stop_app` can) is given up at `connection_timeout`
/// and retried; at start it still stops the connector, as the original's failed dial did.
#[tokio::test]
async fn a_stalled_handshake_while_reconnecting_is_retried() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let host = format!(
        "{}?connection_timeout=1000",
        amqp_url().replace("127.0.0.1:5672", &format!("127.0.0.1:{}", proxy.port))
    );
    let mut proc = Process::start(BIN, &env(&q, &sink, &[("HOST", &host)]));
    proc.wait_log("\"consuming\"", 1).await;
    proxy
        .mute_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    proxy.cut();
    proc.wait_log("no AMQP handshake within 1s", 1).await;
    proc.wait_log("\"consuming\"", 2).await;
    q.publish(b"after", BasicProperties::default()).await;
    let got = q.take(&q.response, 1, WAIT).await;
    assert_eq!(got[0].data, b"after");
    proc.stop().await;

    // At start, the same stall is fatal.
    proxy
        .mute_next
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let mut proc = Process::start(BIN, &env(&q, &sink, &[("HOST", &host)]));
    proc.expect_exit(1, "no AMQP handshake within 1s").await;
}

#[tokio::test]
async fn missing_source_queue_exits_nonzero_naming_topic() {
    let sink = Sink::start().await;
    let e = vec![
        ("HOST", amqp_url()),
        ("TOPIC", unique("no-such-queue")),
        ("HTTP_ENDPOINT", sink.url("/")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "text/plain".into()),
    ];
    let mut proc = Process::start(BIN, &e);
    proc.expect_exit(1, "TOPIC: queue").await;
}

#[tokio::test]
async fn bad_env_values_exit_78_with_one_line_and_no_secret() {
    let secret = "pa55w0rd-do-not-print";
    let base = vec![
        ("HOST", format!("amqp://guest:{secret}@127.0.0.1:5672/%2f")),
        ("TOPIC", "q".to_owned()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:9/f".to_owned()),
        ("MAX_RETRIES", "1".to_owned()),
        ("CONTENT_TYPE", "text/plain".to_owned()),
    ];
    let cases: &[(&str, Option<String>)] = &[
        ("HOST", None),
        ("HOST", Some(format!("rabbit://guest:{secret}@h"))),
        ("HOST", Some(format!("amqp://guest:{secret}@h:notaport/"))),
        ("TOPIC", None),
        ("HTTP_ENDPOINT", Some("not a url".into())),
        ("MAX_RETRIES", Some("many".into())),
        ("CONTENT_TYPE", Some(String::new())),
        ("CONCURRENT", Some("0".into())),
        ("CONCURRENT", Some("-4".into())),
        ("CONCURRENT", Some("ten".into())),
        ("INCLUDE_UNACKED", Some("true".into())),
        ("HTTP_TIMEOUT", Some("5".into())),
        ("RETRY_ON", Some("sometimes".into())),
        ("ADMIN_ADDR", Some("everywhere".into())),
    ];
    for (var, value) in cases {
        assert_config_error(BIN, &base, var, value.as_deref(), var, secret);
    }
}

#[test]
fn version_flag() {
    let out = std::process::Command::new(BIN)
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    assert!(
        s.starts_with(&format!(
            "rabbitmq-http-connector {} (revision ",
            env!("CARGO_PKG_VERSION")
        )),
        "{s}"
    );
    let out = std::process::Command::new(BIN)
        .arg("--frobnicate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("metric {name} missing:\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn admin_endpoints_report_liveness_readiness_and_counts() {
    // Broker unreachable: alive (waiting is not wedged) but not ready.
    let sink = Sink::start().await;
    let admin = free_port();
    let closed = free_port();
    let mut down = Process::start(
        BIN,
        &[
            ("HOST", format!("amqp://guest:guest@127.0.0.1:{closed}/%2f")),
            ("TOPIC", "q".into()),
            ("HTTP_ENDPOINT", sink.url("/")),
            ("MAX_RETRIES", "0".into()),
            ("CONTENT_TYPE", "text/plain".into()),
            ("ADMIN_ADDR", format!("127.0.0.1:{admin}")),
        ],
    );
    down.wait_log("cannot connect to RabbitMQ", 1).await;
    assert_eq!(get(admin, "/healthz").await.0, 200);
    assert_eq!(get(admin, "/readyz").await.0, 503);
    down.stop().await;

    let ch = broker().await;
    let q = Queues::new(&ch).await;
    sink.respond(|r| {
        if r.body.starts_with(b"f") {
            Reply::status(422)
        } else {
            Reply::status(200)
        }
    });
    for body in ["ok1", "ok2", "ok3", "f1", "f2"] {
        q.publish(body.as_bytes(), BasicProperties::default()).await;
    }
    let admin = free_port();
    let mut proc = Process::start(
        BIN,
        &env(
            &q,
            &sink,
            &[
                ("ADMIN_ADDR", &format!("127.0.0.1:{admin}")),
                ("MAX_RETRIES", "2"),
            ],
        ),
    );
    proc.wait_log("\"consuming\"", 1).await;
    assert_eq!(get(admin, "/readyz").await.0, 200);
    q.take(&q.response, 3, WAIT).await;
    q.take(&q.error, 2, WAIT).await;
    let (status, text) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "keda_connector_messages_received_total"), 5.0);
    assert_eq!(
        metric(&text, "keda_connector_messages_succeeded_total"),
        3.0
    );
    assert_eq!(metric(&text, "keda_connector_messages_failed_total"), 2.0);
    assert_eq!(metric(&text, "keda_connector_http_retries_total"), 4.0);
    assert!(
        text.contains("keda_connector_http_request_duration_seconds_count{class=\"4xx\"} 6"),
        "{text}"
    );
    assert_eq!(get(admin, "/nope").await.0, 404);
    proc.stop().await;
    assert_eq!(q.ready(&q.source).await, 0);
}

#[tokio::test]
async fn unwritable_response_requeues_instead_of_losing_the_message() {
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    let mut proc = Process::start(BIN, &env(&q, &sink, &[]));
    proc.wait_log("\"consuming\"", 1).await;
    // The response queue disappears while the connector runs: responses become unroutable.
    ch.queue_delete(q.response.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    q.publish(b"keep me", BasicProperties::default()).await;
    proc.wait_log("writing the outcome failed", 1).await;
    proc.stop().await;
    assert!(sink.count() >= 1);
    assert_eq!(
        q.ready(&q.source).await,
        1,
        "the message is back in its queue, not acked away"
    );
}

/// The original binds no port, so a pod where something else already holds 8080 (a sidecar,
/// host networking, two connectors in one pod) must keep working after the swap: with
/// `ADMIN_ADDR` unset a taken default port costs the admin endpoints, not the connector. An
/// address the user chose is served or the start fails.
#[tokio::test]
async fn taken_default_admin_port_is_not_fatal_but_a_chosen_one_is() {
    // Whoever holds 0.0.0.0:8080 — this test or something else on the machine — it is taken.
    let _held = std::net::TcpListener::bind("0.0.0.0:8080");
    assert!(
        std::net::TcpListener::bind("0.0.0.0:8080").is_err(),
        "port 8080 should be taken now"
    );
    let ch = broker().await;
    let q = Queues::new(&ch).await;
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    q.publish(b"while 8080 is taken", BasicProperties::default())
        .await;
    // ADMIN_ADDR set to the empty string counts as unset (Process would otherwise add `off`).
    let mut proc = Process::start(BIN, &env(&q, &sink, &[("ADMIN_ADDR", "")]));
    proc.wait_log("the default admin port is not free", 1).await;
    let got = q.take(&q.response, 1, WAIT).await;
    assert_eq!(&got[0].data[..], b"while 8080 is taken");
    proc.stop().await;

    let mut chosen = Process::start(BIN, &env(&q, &sink, &[("ADMIN_ADDR", "0.0.0.0:8080")]));
    chosen.expect_exit(1, "cannot listen on ADMIN_ADDR").await;
}

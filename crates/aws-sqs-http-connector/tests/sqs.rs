//! Integration tests against the `moto` server (PyPI `moto[server]`; each test starts its own
//! on a free loopback port), with the connector as a separate process.

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName};
use connector_core::testkit::{Moto, Process, Reply, Sink, assert_config_error, with_overrides};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_aws-sqs-http-connector");
const WAIT: Duration = Duration::from_secs(60);

struct Sqs {
    moto: Moto,
    client: Client,
}

impl Sqs {
    async fn start() -> Self {
        let moto = Moto::start().await;
        let client = Client::new(&moto.sdk_config());
        Self { moto, client }
    }

    async fn queue(&self, name: &str, attrs: &[(QueueAttributeName, &str)]) -> String {
        let mut req = self.client.create_queue().queue_name(name);
        for (k, v) in attrs {
            req = req.attributes(k.clone(), *v);
        }
        req.send().await.expect("create queue").queue_url.unwrap()
    }

    async fn send(&self, url: &str, body: &str, attrs: &[(&str, &str)], group: Option<&str>) {
        let mut req = self.client.send_message().queue_url(url).message_body(body);
        for (k, v) in attrs {
            req = req.message_attributes(
                *k,
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(*v)
                    .build()
                    .unwrap(),
            );
        }
        if let Some(g) = group {
            req = req.message_group_id(g).message_deduplication_id(body);
        }
        req.send().await.expect("send");
    }

    /// Receives and deletes until `n` messages arrived; panics after `WAIT`.
    async fn take(&self, url: &str, n: usize) -> Vec<aws_sdk_sqs::types::Message> {
        let deadline = tokio::time::Instant::now() + WAIT;
        let mut got = Vec::new();
        while got.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited for {n} messages on {url}, got {}",
                got.len()
            );
            let out = self
                .client
                .receive_message()
                .queue_url(url)
                .max_number_of_messages(10)
                .wait_time_seconds(1)
                .message_attribute_names("All")
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .send()
                .await
                .expect("receive");
            for m in out.messages.unwrap_or_default() {
                self.client
                    .delete_message()
                    .queue_url(url)
                    .receipt_handle(m.receipt_handle().unwrap())
                    .send()
                    .await
                    .expect("delete");
                got.push(m);
            }
        }
        got
    }

    /// (visible, in flight) messages of a queue.
    async fn counts(&self, url: &str) -> (u64, u64) {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap();
        let a = out.attributes().unwrap();
        let get = |k: QueueAttributeName| a.get(&k).map(|v| v.parse().unwrap()).unwrap_or(0);
        (
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        )
    }
}

fn env(
    sqs: &Sqs,
    sink: &Sink,
    source_url: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let topic = source_url.rsplit('/').next().unwrap().to_owned();
    let mut v = sqs.moto.env();
    v.extend([
        ("QUEUE_URL", source_url.to_owned()),
        ("TOPIC", topic),
        ("RESPONSE_TOPIC", "responses".into()),
        ("ERROR_TOPIC", "errors".into()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
        ("WAIT_TIME_SECONDS", "1".into()),
    ]);
    with_overrides(v, extra)
}

fn attr(m: &aws_sdk_sqs::types::Message, name: &str) -> Option<String> {
    m.message_attributes()?
        .get(name)?
        .string_value()
        .map(str::to_owned)
}

#[tokio::test]
async fn attributes_both_ways_and_source_deleted() {
    let sqs = Sqs::start().await;
    let src = sqs.queue("in", &[]).await;
    let resp = sqs.queue("responses", &[]).await;
    sqs.queue("errors", &[]).await;
    let sink = Sink::start().await;
    sink.respond(|req| {
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&req.body);
        let mut reply = Reply::status(200)
            .header("Content-Type", "text/plain")
            .header("X-Answer", "42");
        // More headers than SQS allows attributes: the send must still succeed.
        for i in 0..12 {
            reply = reply.header(&format!("X-Extra-{i:02}"), "e");
        }
        if req.body == "binary" {
            body = vec![0xff, 0x00, 0x01];
        }
        reply.body(body)
    });
    sqs.send(&src, "one", &[("Trace", "t-1"), ("Tenant", "a")], None)
        .await;
    sqs.send(&src, "two", &[("Trace", "t-2")], None).await;
    sqs.send(&src, "binary", &[], None).await;
    let mut proc = Process::start(BIN, &env(&sqs, &sink, &src, &[]));
    let got = sqs.take(&resp, 3).await;
    let by_body: HashMap<String, &aws_sdk_sqs::types::Message> = got
        .iter()
        .map(|m| (m.body().unwrap().to_owned(), m))
        .collect();
    for (body, trace) in [("re:one", "t-1"), ("re:two", "t-2")] {
        let m = by_body
            .get(body)
            .unwrap_or_else(|| panic!("no {body}: {by_body:?}"));
        let attrs = m.message_attributes().unwrap();
        assert!(attrs.len() <= 10, "{attrs:?}");
        assert_eq!(attr(m, "Content-Type").as_deref(), Some("text/plain"));
        assert_eq!(attr(m, "X-Answer").as_deref(), Some("42"));
        assert!(attr(m, "Content-Length").is_none());
        let req = sink
            .requests()
            .into_iter()
            .find(|r| format!("re:{}", String::from_utf8_lossy(&r.body)) == body)
            .unwrap();
        assert_eq!(req.headers["trace"], trace, "message attribute forwarded");
        // Message attributes are headers; system attributes (SenderId, SentTimestamp,
        // ApproximateReceiveCount, ...) are not, as in the original.
        let mut names: Vec<&str> = req
            .headers
            .keys()
            .map(|k| k.as_str())
            .filter(|k| !["host", "content-length", "user-agent", "accept-encoding"].contains(k))
            .collect();
        names.sort_unstable();
        let mut expected = vec![
            "content-type",
            "keda-error-topic",
            "keda-response-topic",
            "keda-source-name",
            "keda-topic",
            "trace",
        ];
        if body == "re:one" {
            expected.push("tenant");
            expected.sort_unstable();
        }
        assert_eq!(names, expected, "request headers of {body}");
        assert_eq!(req.headers["keda-topic"], "in");
        assert_eq!(req.headers["keda-response-topic"], "responses");
    }
    // Attributes belong to their own message only (the original accumulated them).
    let two = sink
        .requests()
        .into_iter()
        .find(|r| r.body == "two")
        .unwrap();
    assert!(two.headers.get("tenant").is_none(), "{:?}", two.headers);
    // A body that is not SQS text arrives base64-encoded and says so.
    let bin = by_body.get("/wAB").expect("base64 of ff 00 01");
    assert_eq!(attr(bin, "Body-Encoding").as_deref(), Some("base64"));
    proc.stop().await;
    assert_eq!(sink.count(), 3);
    assert_eq!(
        sqs.counts(&src).await,
        (0, 0),
        "every source message deleted"
    );
}

/// With tracing on, the trace a message carries in its `traceparent` attribute continues
/// through the function call to the response and the error document, whose `traceparent`
/// attribute is the write's context.
#[tokio::test(flavor = "multi_thread")]
async fn sqs_trace_context_is_continued_into_the_outcomes() {
    use connector_core::testkit::otlp::{
        OtlpReceiver, assert_outcome_continues_trace, inbound_traceparent,
    };
    let sqs = Sqs::start().await;
    let src = sqs.queue("in", &[]).await;
    let resp = sqs.queue("responses", &[]).await;
    let errs = sqs.queue("errors", &[]).await;
    let receiver = OtlpReceiver::start().await;
    let sink = Sink::start().await;
    sink.respond(|req| {
        if req.body == "bad" {
            Reply::status(500)
        } else {
            Reply::status(200).body("fine")
        }
    });
    let tp = inbound_traceparent();
    for body in ["bad", "ok"] {
        sqs.send(&src, body, &[("traceparent", tp.as_str())], None)
            .await;
    }
    let endpoint = receiver.endpoint();
    let mut proc = Process::start(
        BIN,
        &env(
            &sqs,
            &sink,
            &src,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)],
        ),
    );
    let errors = sqs.take(&errs, 1).await;
    let responses = sqs.take(&resp, 1).await;
    proc.stop().await;
    let spans = receiver.wait_for_exactly(6, WAIT).await;
    for (m, outcome) in [(&responses[0], "response"), (&errors[0], "error")] {
        // The message had no tracestate: none is written (SQS refuses an empty attribute).
        assert_eq!(attr(m, "tracestate"), None, "{outcome}");
        let value = attr(m, "traceparent").expect("a traceparent attribute");
        assert_outcome_continues_trace(&spans, &value, outcome, "aws_sqs");
    }
}

#[tokio::test]
async fn failures_go_to_the_error_queue_and_the_source_is_deleted() {
    let sqs = Sqs::start().await;
    let src = sqs.queue("in", &[]).await;
    let resp = sqs.queue("responses", &[]).await;
    let errs = sqs.queue("errors", &[]).await;
    let sink = Sink::start().await;
    sink.respond(|req| {
        if req.body == "bad" {
            Reply::status(400).body("no <good>")
        } else {
            Reply::status(200).body("fine")
        }
    });
    for body in ["bad", "ok", "bad", "ok"] {
        sqs.send(&src, body, &[], None).await;
    }
    let mut proc = Process::start(BIN, &env(&sqs, &sink, &src, &[("MAX_RETRIES", "1")]));
    let errors = sqs.take(&errs, 2).await;
    for e in &errors {
        let doc: serde_json::Value = serde_json::from_str(e.body().unwrap()).unwrap();
        assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 400);
        assert_eq!(doc["FunctionHTTPResponse"]["ResponseBody"], "no <good>");
        assert_eq!(doc["FunctionHTTPRequest"]["Message"], "bad");
        assert_eq!(doc["FunctionHTTPRequest"]["Headers"]["KEDA-Topic"][0], "in");
        assert!(e.message_attributes().is_none_or(|a| a.is_empty()));
    }
    let responses = sqs.take(&resp, 2).await;
    assert!(responses.iter().all(|m| m.body() == Some("fine")));
    proc.stop().await;
    assert_eq!(
        sink.count(),
        2 * 2 + 2,
        "two attempts per failure, one per success"
    );
    assert_eq!(
        sqs.counts(&src).await,
        (0, 0),
        "failed messages deleted after the error document"
    );
    assert_eq!(
        sqs.counts(&errs).await,
        (0, 0),
        "exactly one error document each"
    );
}

#[tokio::test]
async fn fifo_groups_stay_in_order_and_outputs_keep_the_group() {
    let sqs = Sqs::start().await;
    let fifo = [(QueueAttributeName::FifoQueue, "true")];
    let src = sqs.queue("in.fifo", &fifo).await;
    let resp = sqs.queue("responses.fifo", &fifo).await;
    sqs.queue("errors.fifo", &fifo).await;
    let sink = Sink::start().await;
    // Uneven latencies: without per-group ordering later messages would overtake.
    sink.respond(|req| {
        let n: u64 = String::from_utf8_lossy(&req.body)
            .rsplit('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Reply::status(200)
            .body(req.body.clone())
            .delay(Duration::from_millis((7 - n % 7) * 15))
    });
    let groups = ["g1", "g2"];
    for i in 0..12 {
        for g in groups {
            sqs.send(&src, &format!("{g}-{i}"), &[], Some(g)).await;
        }
    }
    let mut proc = Process::start(
        BIN,
        &env(
            &sqs,
            &sink,
            &src,
            &[
                ("RESPONSE_TOPIC", "responses.fifo"),
                ("ERROR_TOPIC", "errors.fifo"),
                ("DELAY_SECONDS", "5"),
            ],
        ),
    );
    let got = sqs.take(&resp, 24).await;
    proc.stop().await;
    let mut posted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in sink.requests() {
        let body = String::from_utf8_lossy(&r.body).into_owned();
        let (g, n) = body.split_once('-').unwrap();
        posted
            .entry(g.to_owned())
            .or_default()
            .push(n.parse().unwrap());
    }
    for g in groups {
        assert_eq!(posted[g], (0..12).collect::<Vec<_>>(), "group {g} in order");
    }
    for m in &got {
        let group = &m.attributes().unwrap()[&MessageSystemAttributeName::MessageGroupId];
        assert!(
            m.body().unwrap().starts_with(group.as_str()),
            "response keeps the source group"
        );
    }
    assert_eq!(sqs.counts(&src).await, (0, 0));
}

#[tokio::test]
async fn slow_function_is_not_redelivered() {
    let sqs = Sqs::start().await;
    // Messages would reappear after 2 s; the function takes 5 s.
    let src = sqs
        .queue("in", &[(QueueAttributeName::VisibilityTimeout, "2")])
        .await;
    let resp = sqs.queue("responses", &[]).await;
    sqs.queue("errors", &[]).await;
    let sink = Sink::start().await;
    sink.respond(|req| {
        Reply::status(200)
            .body(req.body.clone())
            .delay(Duration::from_secs(5))
    });
    for body in ["a", "b", "c"] {
        sqs.send(&src, body, &[], None).await;
    }
    let mut proc = Process::start(BIN, &env(&sqs, &sink, &src, &[]));
    let got = sqs.take(&resp, 3).await;
    proc.stop().await;
    let bodies: HashSet<_> = got.iter().map(|m| m.body().unwrap().to_owned()).collect();
    assert_eq!(bodies.len(), 3);
    let requests = sink.requests();
    // Each invoked once: its visibility was extended while the function took 2.5 times the
    // queue's visibility timeout.
    assert_eq!(requests.len(), 3, "each message invoked once");
    assert_eq!(sqs.counts(&src).await, (0, 0));
    assert_eq!(sqs.counts(&resp).await, (0, 0), "no duplicate responses");
}

/// SIGTERM (or SIGKILL) while messages are in flight, then a restart: every message gets a
/// response; SIGTERM finishes what it started.
async fn stop_under_load_then_restart(kill: bool) {
    let sqs = Sqs::start().await;
    let src = sqs
        .queue("in", &[(QueueAttributeName::VisibilityTimeout, "3")])
        .await;
    let resp = sqs.queue("responses", &[]).await;
    sqs.queue("errors", &[]).await;
    let sink = Sink::start().await;
    sink.respond(|req| {
        Reply::status(200)
            .body(req.body.clone())
            .delay(Duration::from_millis(40))
    });
    let n = 60;
    for i in 0..n {
        sqs.send(&src, &format!("m{i}"), &[], None).await;
    }
    let e = env(&sqs, &sink, &src, &[("MAX_IN_FLIGHT", "5")]);
    let mut proc = Process::start(BIN, &e);
    sink.wait_for_requests(15, WAIT).await;
    if kill {
        proc.kill().await;
    } else {
        proc.stop().await;
        proc.wait_log("stopped", 1).await;
    }
    let mut proc = Process::start(BIN, &e);
    let want: HashSet<String> = (0..n).map(|i| format!("m{i}")).collect();
    // After a kill a message whose response was written but which was not yet deleted is
    // answered again (at least once), so n responses need not be n messages: read on until
    // every message has one.
    let mut bodies: HashSet<String> = HashSet::new();
    while bodies.len() < want.len() {
        let more = sqs.take(&resp, n - bodies.len()).await;
        bodies.extend(more.iter().map(|m| m.body().unwrap().to_owned()));
    }
    proc.stop().await;
    assert_eq!(bodies, want, "every message answered");
    assert_eq!(sqs.counts(&src).await, (0, 0));
    let dupes = sink.count() - n;
    if kill {
        assert!(dupes <= 5, "at most the in-flight bound is redone: {dupes}");
    } else {
        assert_eq!(dupes, 0, "a graceful stop redoes nothing");
    }
}

#[tokio::test]
async fn sigterm_under_load_then_restart_loses_nothing() {
    stop_under_load_then_restart(false).await;
}

#[tokio::test]
async fn sigkill_under_load_then_restart_loses_nothing() {
    stop_under_load_then_restart(true).await;
}

#[tokio::test]
async fn queues_by_name_and_missing_queue_named() {
    let sqs = Sqs::start().await;
    let src = sqs.queue("by-name", &[]).await;
    let resp = sqs.queue("by-name-out", &[]).await;
    let sink = Sink::start().await;
    sqs.send(&src, "x", &[], None).await;
    let mut base = env(&sqs, &sink, &src, &[("RESPONSE_TOPIC", "by-name-out")]);
    base.retain(|(k, _)| *k != "QUEUE_URL" && *k != "ERROR_TOPIC");
    let mut proc = Process::start(BIN, &base);
    let got = sqs.take(&resp, 1).await;
    assert_eq!(got[0].body(), Some("x"));
    proc.stop().await;

    let mut missing = Process::start(BIN, &with_overrides(base, &[("ERROR_TOPIC", "nope")]));
    missing.expect_exit(1, "ERROR_TOPIC").await;
}

#[test]
fn bad_env_values_exit_78_naming_the_variable() {
    let base: Vec<(&str, String)> = vec![
        ("TOPIC", "in".into()),
        ("QUEUE_URL", "http://127.0.0.1:1/123/in".into()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:1/".into()),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("AWS_SECRET_ACCESS_KEY", "very-secret-key".into()),
    ];
    let secret = "very-secret-key";
    for (var, value) in [
        ("QUEUE_URL", Some("sqs queue")),
        ("WAIT_TIME_SECONDS", Some("30")),
        ("VISIBILITY_TIMEOUT", Some("soon")),
        ("DELAY_SECONDS", Some("901")),
        ("MAX_IN_FLIGHT", Some("0")),
        ("AWS_ENDPOINT", Some("127.0.0.1:4566")),
        ("AWS_REGION", Some("eu/west")),
        ("RESPONSE_TOPIC", Some("ftp://x/y")),
        ("TOPIC", None),
    ] {
        assert_config_error(BIN, &base, var, value, var, secret);
    }
}

/// Credentials from the SDK's default chain rather than the environment: a shared credentials
/// file and a named profile, as a mounted secret would provide.
#[tokio::test]
async fn credentials_from_a_shared_profile_file() {
    let sqs = Sqs::start().await;
    let src = sqs.queue("in", &[]).await;
    let resp = sqs.queue("responses", &[]).await;
    let sink = Sink::start().await;
    sqs.send(&src, "via-profile", &[], None).await;
    let dir = std::env::temp_dir().join(format!("sqs-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("credentials");
    std::fs::write(
        &file,
        "[bench]\naws_access_key_id = profile-key\naws_secret_access_key = profile-secret\n",
    )
    .unwrap();
    let mut e = env(&sqs, &sink, &src, &[]);
    e.retain(|(k, _)| {
        !k.starts_with("AWS_ACCESS") && !k.starts_with("AWS_SECRET") && *k != "ERROR_TOPIC"
    });
    e.push(("AWS_PROFILE", "bench".into()));
    e.push(("AWS_SHARED_CREDENTIALS_FILE", file.display().to_string()));
    e.push(("AWS_CONFIG_FILE", dir.join("none").display().to_string()));
    let mut proc = Process::start(BIN, &e);
    let got = sqs.take(&resp, 1).await;
    proc.stop().await;
    assert_eq!(got[0].body(), Some("via-profile"));
    let seen = sink.requests();
    assert_eq!(seen.len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

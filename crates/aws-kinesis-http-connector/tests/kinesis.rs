//! Integration tests against the `moto` server (PyPI `moto[server]`; each test starts its own on
//! a free loopback port) for Kinesis and the DynamoDB checkpoint table, with the connector as a
//! separate process.

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::ShardIteratorType;
use connector_core::testkit::{Moto, Process, Reply, Sink, assert_config_error, with_overrides};
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_aws-kinesis-http-connector");
const WAIT: Duration = Duration::from_secs(60);
/// Explicit hash keys that land in the first and second of two shards.
const SHARD_KEYS: [&str; 2] = ["0", "170141183460469231731687303715884105728"];

struct Kinesis {
    moto: Moto,
    client: Client,
}

impl Kinesis {
    async fn start() -> Self {
        let moto = Moto::start().await;
        let client = Client::new(&moto.sdk_config());
        Self { moto, client }
    }

    async fn stream(&self, name: &str, shards: i32) {
        self.client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .expect("create stream");
    }

    /// Writes `data` to shard `shard` (0 or 1 of a two-shard stream) under `key`.
    async fn put(&self, stream: &str, shard: usize, key: &str, data: &str) {
        self.client
            .put_record()
            .stream_name(stream)
            .partition_key(key)
            .explicit_hash_key(SHARD_KEYS[shard])
            .data(Blob::new(data.as_bytes().to_vec()))
            .send()
            .await
            .expect("put record");
    }

    /// Every record of every shard of `stream`, as (partition key, data), once `n` are there.
    async fn read_all(&self, stream: &str, n: usize) -> Vec<(String, String)> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let mut got = Vec::new();
            let shards = self
                .client
                .list_shards()
                .stream_name(stream)
                .send()
                .await
                .unwrap()
                .shards
                .unwrap_or_default();
            for s in shards {
                let mut it = self
                    .client
                    .get_shard_iterator()
                    .stream_name(stream)
                    .shard_id(s.shard_id())
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .unwrap()
                    .shard_iterator;
                while let Some(i) = it {
                    let out = self
                        .client
                        .get_records()
                        .shard_iterator(i)
                        .send()
                        .await
                        .unwrap();
                    if out.records.is_empty() {
                        break;
                    }
                    for r in out.records {
                        got.push((
                            r.partition_key,
                            String::from_utf8(r.data.into_inner()).unwrap(),
                        ));
                    }
                    it = out.next_shard_iterator;
                }
            }
            if got.len() >= n {
                return got;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited for {n} records on {stream}, got {}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

fn env(k: &Kinesis, sink: &Sink, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut v = k.moto.env();
    v.extend([
        ("TOPIC", "events".to_owned()),
        ("RESPONSE_TOPIC", "responses".into()),
        ("ERROR_TOPIC", "errors".into()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
        ("WORKER_ID", "worker-a".into()),
        ("POLL_INTERVAL", "100ms".into()),
        ("CHECKPOINT_INTERVAL", "200ms".into()),
        ("SHARD_SYNC_INTERVAL", "500ms".into()),
        ("LEASE_DURATION", "3s".into()),
    ]);
    with_overrides(v, extra)
}

async fn streams(k: &Kinesis) {
    k.stream("events", 2).await;
    k.stream("responses", 1).await;
    k.stream("errors", 1).await;
}

fn body(r: &connector_core::testkit::Recorded) -> String {
    String::from_utf8(r.body.to_vec()).unwrap()
}

#[tokio::test]
async fn two_shards_in_order_with_responses_keyed_by_partition_key() {
    let k = Kinesis::start().await;
    streams(&k).await;
    let sink = Sink::start().await;
    // Uneven latencies: without per-shard ordering later records would overtake.
    sink.respond(|req| {
        let b = body(req);
        if b == "s1-4" {
            return Reply::status(422).body("rejected");
        }
        let n: u64 = b.rsplit('-').next().unwrap().parse().unwrap();
        Reply::status(200)
            .body(format!("re:{b}"))
            .delay(Duration::from_millis((5 - n % 5) * 20))
    });
    for i in 0..10 {
        for shard in 0..2 {
            k.put(
                "events",
                shard,
                &format!("key-{shard}"),
                &format!("s{shard}-{i}"),
            )
            .await;
        }
    }
    let mut proc = Process::start(BIN, &env(&k, &sink, &[]));
    let responses = k.read_all("responses", 19).await;
    let errors = k.read_all("errors", 1).await;
    proc.stop().await;

    let mut posted: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for r in sink.requests() {
        let b = body(&r);
        let (shard, n) = b.split_once('-').unwrap();
        posted
            .entry(shard.to_owned())
            .or_default()
            .push(n.parse().unwrap());
        assert_eq!(r.headers["keda-topic"], "events");
        assert_eq!(r.headers["keda-response-topic"], "responses");
    }
    for shard in ["s0", "s1"] {
        assert_eq!(
            posted[shard],
            (0..10).collect::<Vec<_>>(),
            "{shard} in order, once each"
        );
    }
    assert_eq!(responses.len(), 19, "{responses:?}");
    for (key, data) in &responses {
        let shard = &data[3..5];
        assert_eq!(
            key,
            &format!("key-{}", &shard[1..]),
            "response keyed by the source key"
        );
    }
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "key-1");
    let doc: serde_json::Value = serde_json::from_str(&errors[0].1).unwrap();
    assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 422);
    assert_eq!(doc["FunctionHTTPRequest"]["Message"], "s1-4");
}

#[tokio::test]
async fn restart_resumes_from_the_checkpoint_without_reprocessing() {
    let k = Kinesis::start().await;
    streams(&k).await;
    let sink = Sink::start().await;
    for i in 0..10 {
        k.put("events", i % 2, "k", &format!("old-{i}")).await;
    }
    let e = env(&k, &sink, &[]);
    let mut first = Process::start(BIN, &e);
    sink.wait_for_requests(10, WAIT).await;
    first.stop().await;
    assert!(first.logs().contains("lease released"), "{}", first.logs());

    let mut second = Process::start(BIN, &e);
    second.wait_log("lease taken", 2).await;
    for i in 0..6 {
        k.put("events", i % 2, "k", &format!("new-{i}")).await;
    }
    sink.wait_for_requests(16, WAIT).await;
    // Shards are read in order, so reprocessed old records would have come before the new ones.
    let bodies: Vec<String> = sink.requests().iter().map(body).collect();
    assert_eq!(bodies.len(), 16, "{bodies:?}");
    let distinct: HashSet<&String> = bodies.iter().collect();
    assert_eq!(distinct.len(), 16, "nothing processed twice: {bodies:?}");
    second.stop().await;
    assert_eq!(sink.count(), 16);
}

#[tokio::test]
async fn two_replicas_split_the_shards() {
    let k = Kinesis::start().await;
    streams(&k).await;
    let (sink_a, sink_b) = (Sink::start().await, Sink::start().await);
    let mut a = Process::start(BIN, &env(&k, &sink_a, &[]));
    a.wait_log("lease taken", 2).await;
    let mut b = Process::start(BIN, &env(&k, &sink_b, &[("WORKER_ID", "worker-b")]));
    b.wait_log("lease taken", 1).await;
    a.wait_log("lease lost", 1).await;
    for i in 0..10 {
        for shard in 0..2 {
            k.put("events", shard, "k", &format!("s{shard}-{i}")).await;
        }
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while sink_a.count() + sink_b.count() < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "20 records not delivered"
        );
        tokio::select! {
            () = sink_a.wait_for_requests(sink_a.count() + 1, WAIT) => {}
            () = sink_b.wait_for_requests(sink_b.count() + 1, WAIT) => {}
        }
    }
    let shards_of = |s: &Sink| -> HashSet<String> {
        s.requests()
            .iter()
            .map(|r| body(r)[..2].to_owned())
            .collect()
    };
    let (sa, sb) = (shards_of(&sink_a), shards_of(&sink_b));
    assert_eq!(sa.len(), 1, "replica a reads one shard: {sa:?}");
    assert_eq!(sb.len(), 1, "replica b reads one shard: {sb:?}");
    assert_ne!(sa, sb);
    a.stop().await;
    b.stop().await;
    assert_eq!(
        sink_a.count() + sink_b.count(),
        20,
        "no record read by both"
    );
}

#[tokio::test]
async fn missing_stream_is_named() {
    let k = Kinesis::start().await;
    k.stream("events", 1).await;
    let sink = Sink::start().await;
    let mut e = env(&k, &sink, &[]);
    e.retain(|(key, _)| *key != "ERROR_TOPIC");
    let mut proc = Process::start(BIN, &e);
    proc.expect_exit(1, "RESPONSE_TOPIC").await;
}

#[test]
fn bad_env_values_exit_78_naming_the_variable() {
    let base: Vec<(&str, String)> = vec![
        ("TOPIC", "events".into()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:1/".into()),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("AWS_SECRET_ACCESS_KEY", "very-secret-key".into()),
    ];
    for (var, value) in [
        ("TOPIC", Some("two words")),
        ("CHECKPOINT_TABLE", Some("x")),
        ("INITIAL_POSITION", Some("OLDEST")),
        ("LEASE_DURATION", Some("10")),
        ("SHARD_SYNC_INTERVAL", Some("1ms")),
        ("MAX_IN_FLIGHT", Some("100000")),
        ("AWS_ENDPOINT", Some("not a url")),
        ("HTTP_ENDPOINT", None),
    ] {
        assert_config_error(BIN, &base, var, value, var, "very-secret-key");
    }
}

const ALLOW_ALL: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
/// What the original connector's identity needed: Kinesis only.
const KINESIS_ONLY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kinesis:*","Resource":"*"}]}"#;
/// DynamoDB data actions, but no `CreateTable` (and the table does not exist yet).
const NO_CREATE_TABLE: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kinesis:*","dynamodb:DescribeTable","dynamodb:PutItem","dynamodb:UpdateItem","dynamodb:GetItem","dynamodb:Scan"],"Resource":"*"}]}"#;
const FULL_DYNAMODB: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kinesis:*","dynamodb:*"],"Resource":"*"}]}"#;

/// The swap with the original's identity (moto enforcing IAM): without DynamoDB permissions
/// the records are delivered with checkpoints in memory, as the original kept them, said in
/// one log line, on `/readyz` and in a metric; with them, persistent checkpoints as before.
#[tokio::test]
async fn an_identity_without_dynamodb_still_gets_its_records() {
    let mut k = Kinesis::start().await;
    streams(&k).await;
    let users = [
        ("kinesis-only", KINESIS_ONLY, "memory"),
        ("no-create-table", NO_CREATE_TABLE, "memory"),
        ("full-dynamodb", FULL_DYNAMODB, "dynamodb"),
    ];
    let mut keys = Vec::new();
    for (name, policy, _) in users {
        keys.push(k.moto.iam_user(name, policy).await);
    }
    let (admin_id, admin_secret) = k.moto.iam_user("test-admin", ALLOW_ALL).await;
    k.moto.enforce_iam().await;
    k.client = Client::new(&k.moto.sdk_config_as(&admin_id, &admin_secret));
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let mut answered = 0;
    for ((name, _, mode), (id, secret)) in users.iter().zip(&keys) {
        for shard in 0..2 {
            k.put("events", shard, name, &format!("{name}-{shard}"))
                .await;
        }
        let admin = connector_core::testkit::free_port();
        let mut vars = env(&k, &sink, &[]);
        vars.retain(|(key, _)| !key.starts_with("AWS_"));
        vars.extend(k.moto.env_as(id, secret));
        vars.push(("ADMIN_ADDR", format!("127.0.0.1:{admin}")));
        // The preflight says beforehand what the start will do with these permissions.
        let (code, report) = connector_core::testkit::run_once(BIN, &["--check"], &vars);
        assert_eq!(code, Some(0), "{name}: {report}");
        // Without DescribeTable it can tell; a missing table it can only announce.
        let expected = if *name == "kinesis-only" {
            "no dynamodb:DescribeTable"
        } else {
            "does not exist"
        };
        assert!(
            report.lines().any(|l| l.starts_with("warn")
                && l.contains("(CHECKPOINT_TABLE)")
                && l.contains(expected)),
            "{name}: {report}"
        );
        let mut proc = Process::start(BIN, &vars);
        proc.wait_log("\"ready\":true", 1).await;
        answered += 2;
        k.read_all("responses", answered).await;
        let in_memory = proc.logs().contains("checkpoints are kept in memory");
        assert_eq!(in_memory, *mode == "memory", "{name}: {}", proc.logs());
        let (status, ready) = connector_core::testkit::http_get(admin, "/readyz").await;
        assert_eq!(status, 200, "{name}");
        assert_eq!(
            ready.contains("checkpoints: in memory"),
            *mode == "memory",
            "{name}: {ready}"
        );
        let (_, metrics) = connector_core::testkit::http_get(admin, "/metrics").await;
        assert!(
            metrics.contains(&format!("keda_connector_mode{{checkpoints=\"{mode}\"}} 1")),
            "{name}: {metrics}"
        );
        proc.stop().await;
    }
    // With the table in place, the preflight sees the leases the last start wrote.
    let (id, secret) = &keys[2];
    let mut vars = env(&k, &sink, &[]);
    vars.retain(|(key, _)| !key.starts_with("AWS_"));
    vars.extend(k.moto.env_as(id, secret));
    let (_, report) = connector_core::testkit::run_once(BIN, &["--check"], &vars);
    assert!(
        report.lines().any(|l| l.starts_with("ok")
            && l.contains("(CHECKPOINT_TABLE)")
            && l.contains("shard leases")),
        "{report}"
    );
    assert!(
        sink.requests().len() >= 6,
        "every identity's records reached the function"
    );
}

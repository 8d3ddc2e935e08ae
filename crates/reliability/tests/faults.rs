//! The reliability suite, for every connector whose broker runs here (Kafka on librdkafka's mock
//! cluster, Redis, RabbitMQ and NATS JetStream on 127.0.0.1, SQS and Kinesis on `moto`, Pub/Sub
//! on Google's emulator), each connector a separate process:
//!
//! - SIGTERM at 20 random moments under load, restarting each time; then SIGKILL at 5: every
//!   message answered, none lost; at most what a replica holds redone per stop or kill
//!   (not Pub/Sub: see [`RESTARTABLE`]).
//! - The function down for 60 s (connection refused for 30 s, then 503 for 30 s): retried with
//!   backoff, every message answered once it is back, no error documents; and the same with the
//!   circuit breaker on at `MAX_RETRIES=3`, where the function sees only a handful of probes.
//! - A poison message (the function answers 400): exactly one error document, and the loop goes
//!   on; empty, binary (every byte value, not UTF-8) and large payloads arrive and come back
//!   byte for byte.
//!
//! Each test prints a summary line (`--nocapture`); docs/reliability.md quotes
//! them. The kill moments come from a seed printed with the results (`RELIABILITY_SEED` replays).

use broker_fixtures::Kind;
use connector_core::testkit::{Process, Reply, Sink, free_port};
use reliability::{
    Collector, IN_FLIGHT, KINDS, RESTARTABLE, WAIT, binary, each_kind, env, fixture, selected,
};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// xorshift64*, seeded from the clock unless `RELIABILITY_SEED` is set.
struct Rng(u64);

impl Rng {
    fn new() -> (Self, u64) {
        let seed = std::env::var("RELIABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
                    | 1
            });
        (Self(seed), seed)
    }

    fn between(&mut self, low: usize, high: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        low + (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % (high - low + 1) as u64) as usize
    }
}

/// Stops (`-TERM`) or kills (`-KILL`) the connector `kills` times at random moments while it
/// works through `total` messages, restarting it each time; then lets a last replica finish.
/// Returns the summary line.
async fn stop_repeatedly(kind: Kind, signal: &str, kills: usize, total: usize) -> String {
    let (total, most) = load(kind, total);
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    // Slow enough that every stop finds work in flight.
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(5))
    });
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| format!("{kind:?}-{i:06}").into_bytes())
        .collect();
    fx.publish(&payloads, 0, |_| {}).await.unwrap();
    let env = env(kind, &fx, &sink.url("/fn"), &[]);
    let bin = binary(kind);
    let (mut rng, seed) = Rng::new();
    let started = Instant::now();
    for _ in 0..kills {
        let mut p = Process::start(&bin, &env);
        p.wait_log(kind.consuming_log(), 1).await;
        let moment = sink.count() + rng.between(5, most);
        sink.wait_for_requests(moment, WAIT).await;
        if signal == "-TERM" {
            p.stop().await; // requires exit 0 after the drain
        } else {
            p.kill().await;
        }
    }
    let mut last = Process::start(&bin, &env);
    collector
        .wait_answered(&format!("{kind:?}: every message answered"), &payloads)
        .await;
    last.stop().await;
    fx.cleanup().await;

    let seen = collector.without_errors(&format!("{kind:?}"));
    assert_eq!(
        seen.responses.len(),
        total,
        "{kind:?}: responses to unknown payloads"
    );
    let mut per_body: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in sink.requests() {
        *per_body.entry(r.body.to_vec()).or_default() += 1;
    }
    let redone: usize = per_body.values().map(|n| n - 1).sum();
    // SIGTERM drains, so what a stop can redo is what a kill can: what the replica held.
    let bound = kills * kind.most_held(IN_FLIGHT);
    // A Kafka or Kinesis replica killed with -9 also redoes what it settled since its last
    // offset commit or checkpoint: that is their at-least-once, not an in-flight bound.
    if signal == "-TERM" || !matches!(kind, Kind::Kafka | Kind::Kinesis) {
        assert!(
            redone <= bound,
            "{kind:?}: {redone} messages invoked again after {kills} × {signal} (bound {bound}, seed {seed})"
        );
    }
    format!(
        "{kind:?}: {kills} × {} under load, {total} messages: 0 lost, {redone} invoked twice \
         (bound {bound}), {} response duplicates, {:.0} s (seed {seed})",
        if signal == "-TERM" {
            "SIGTERM"
        } else {
            "SIGKILL"
        },
        seen.responses.values().map(|n| n - 1).sum::<usize>(),
        started.elapsed().as_secs_f64()
    )
}

/// How many messages to queue, and the most answered before each stop. `moto`'s SQS re-reads
/// every queue attribute for each message it hands out, so a receive costs time in proportion
/// to the queue's depth (≈0.1 s per message at 1 500 deep): SQS runs a third of the load with
/// stops closer together, which still finds every replica busy.
fn load(kind: Kind, total: usize) -> (usize, usize) {
    match kind {
        Kind::Sqs => (total / 3, 15),
        _ => (total, 60),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_20_times_under_load_loses_nothing() {
    each_kind(&RESTARTABLE, |kind| {
        stop_repeatedly(kind, "-TERM", 20, 1500)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_5_times_under_load_loses_nothing() {
    each_kind(&RESTARTABLE, |kind| stop_repeatedly(kind, "-KILL", 5, 600)).await;
}

/// The function is down for `outage` (refused, then 503s for the second half) while messages
/// wait; they are all answered once it is back, with backed-off retries and no error documents.
/// With `breaker`, at the default `MAX_RETRIES` of Fission (3): the circuit breaker holds the
/// messages, and the function sees a handful of probes instead of every message's retries.
async fn function_outage(kind: Kind, outage: Duration, breaker: bool) -> String {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}/fn");
    let total = 40;
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| format!("{kind:?}-outage-{i}").into_bytes())
        .collect();
    fx.publish(&payloads, 0, |_| {}).await.unwrap();
    let retries: &[(&str, &str)] = if breaker {
        &[
            ("MAX_RETRIES", "3"),
            ("CIRCUIT_BREAKER_FAILURES", "5"),
            ("CIRCUIT_BREAKER_COOLOFF", "1s"),
            ("CIRCUIT_BREAKER_MAX_COOLOFF", "8s"),
        ]
    } else {
        &[
            ("MAX_RETRIES", "40"),
            ("RETRY_BACKOFF_BASE", "200ms"),
            ("RETRY_BACKOFF_MAX", "4s"),
        ]
    };
    let mut extra = retries.to_vec();
    // NATS would redeliver an unacknowledged message meanwhile: the wait is longer.
    extra.push(("ACKWAIT", "5m"));
    let env = env(kind, &fx, &endpoint, &extra);
    let env: Vec<(&str, String)> = env
        .into_iter()
        .filter(|(k, _)| kind == Kind::Nats || *k != "ACKWAIT")
        .collect();
    let started = Instant::now();
    let mut p = Process::start(&binary(kind), &env);
    p.wait_log(kind.consuming_log(), 1).await;
    // The outage is the scenario: its length is wall-clock time by definition.
    tokio::time::sleep(outage / 2).await;
    let sink = Sink::start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    sink.respond(|_| Reply::status(503).body("down for maintenance"));
    tokio::time::sleep(outage / 2).await;
    let unavailable = sink.count();
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    collector
        .wait_answered(
            &format!("{kind:?}: every message answered after the outage"),
            &payloads,
        )
        .await;
    p.stop().await;
    fx.cleanup().await;
    collector.without_errors(&format!("{kind:?}"));
    let elapsed = started.elapsed().as_secs_f64();
    if breaker {
        // Open since the refused half: one probe per cool-off (1, 2, 4, then 8 s).
        assert!(
            unavailable <= 10,
            "{kind:?}: {unavailable} requests while the function answered 503, with the circuit breaker"
        );
        return format!(
            "{kind:?}: function down {} s with CIRCUIT_BREAKER_FAILURES=5, MAX_RETRIES=3: \
             {total} messages, 0 lost, 0 error documents, {unavailable} requests (probes) in the \
             503 half, all answered {elapsed:.0} s after the start",
            outage.as_secs()
        );
    }
    // Without backoff each held message would have been retried thousands of times.
    let per_message = unavailable as f64 / IN_FLIGHT.min(total) as f64;
    assert!(
        per_message <= 30.0,
        "{kind:?}: {unavailable} requests while the function answered 503 ({per_message:.1} per held message)"
    );
    format!(
        "{kind:?}: function down {} s (refused, then 503): {total} messages, 0 lost, 0 error documents, \
         {unavailable} requests answered 503 ({per_message:.1} per held message), all answered {elapsed:.0} s after the start",
        outage.as_secs()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn function_down_for_60_s_loses_nothing() {
    // All brokers at once: the outage is wall-clock time.
    let outage = Duration::from_secs(60);
    // On one thread: the mock cluster in the Kafka fixture is not `Send`.
    let lines = tokio::task::LocalSet::new()
        .run_until(async {
            let mut all = tokio::task::JoinSet::new();
            for kind in selected(&KINDS) {
                all.spawn_local(function_outage(kind, outage, false));
                all.spawn_local(function_outage(kind, outage, true));
            }
            all.join_all().await
        })
        .await;
    for line in lines {
        eprintln!("reliability: {line}");
    }
}

/// A poison message among unusual payloads: exactly one error document (for the poison), the
/// others answered byte for byte, and a message published afterwards is still answered.
async fn poison_and_payloads(kind: Kind) -> String {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    sink.respond(|r| match &r.body[..] {
        b"poison" => Reply::status(400).body("cannot digest this"),
        body => Reply::status(200).body(body.to_vec()),
    });
    // Each broker's own limit: 10 MB for Redis and RabbitMQ, 1 MB for Kafka, NATS, Kinesis…
    let large = kind.max_payload();
    let binary_payload: Vec<u8> = (0..=255u8).rev().collect();
    // Bytes for most; text for SQS, whose bodies are text.
    let big: Vec<u8> = if kind.carries(&binary_payload) {
        (0..large).map(|i| (i % 251) as u8).collect()
    } else {
        (0..large).map(|i| b'a' + (i % 26) as u8).collect()
    };
    let unusual = [binary_payload, Vec::new(), big];
    let expected: Vec<Vec<u8>> = std::iter::once(b"first".to_vec())
        .chain(unusual.into_iter().filter(|p| kind.carries(p)))
        .collect();
    let mut payloads = expected.clone();
    payloads.insert(1, b"poison".to_vec());
    fx.publish(&payloads, 0, |_| {}).await.unwrap();
    let mut p = Process::start(&binary(kind), &env(kind, &fx, &sink.url("/fn"), &[]));
    collector
        .wait(
            &format!("{kind:?}: the good payloads answered and one error document"),
            |s| expected.iter().all(|p| s.responses.contains_key(p)) && !s.errors.is_empty(),
        )
        .await;
    fx.publish(&[b"after".to_vec()], payloads.len(), |_| {})
        .await
        .unwrap();
    collector
        .wait(
            &format!("{kind:?}: a message after the poison is answered"),
            |s| s.responses.contains_key(&b"after"[..]),
        )
        .await;
    p.stop().await;
    fx.cleanup().await;
    let seen = collector.snapshot();
    assert_eq!(seen.errors.len(), 1, "{kind:?}: exactly one error document");
    let doc = String::from_utf8_lossy(&seen.errors[0]);
    assert!(doc.contains(r#""Message":"poison""#), "{kind:?}: {doc}");
    assert!(
        doc.contains(r#""ResponseBody":"cannot digest this","StatusCode":400"#),
        "{kind:?}: {doc}"
    );
    for p in expected.iter().chain([&b"after".to_vec()]) {
        assert_eq!(
            seen.responses.get(p),
            Some(&1),
            "{kind:?}: answered once, byte for byte ({} bytes)",
            p.len()
        );
    }
    let sizes: Vec<usize> = sink.requests().iter().map(|r| r.body.len()).collect();
    assert!(
        sizes.contains(&large) && (sizes.contains(&0) || !kind.carries(&[])),
        "{kind:?}: sizes seen by the function {sizes:?}"
    );
    let kinds_of_payload = if kind.carries(&[]) {
        "empty, 256-byte binary (not UTF-8)"
    } else if kind.carries(&[0xff]) {
        "256-byte binary (not UTF-8; no empty messages on Pub/Sub)"
    } else {
        "UTF-8 text (SQS bodies are text)"
    };
    format!(
        "{kind:?}: poison → 1 error document, the loop went on; {kinds_of_payload} \
         and {} payloads answered byte for byte",
        if large >= 1024 * 1024 {
            format!("{} MB", large / 1024 / 1024)
        } else {
            format!("{} KB", large / 1024)
        }
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_message_and_unusual_payloads() {
    each_kind(&KINDS, poison_and_payloads).await;
}

/// Header values the function cannot be sent (not UTF-8; a line break) are left out, the message
/// is still delivered with its other headers, and the loop goes on — the original's request
/// failed on such a header (keda-connectors #93/#94).
async fn unusual_header_values(kind: Kind) -> String {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let headers: [(&str, &[u8]); 3] = [
        ("X-Text", b"plain"),
        ("X-Bytes", b"\xff\xfenot utf-8"),
        ("X-Lines", b"one\ntwo"),
    ];
    fx.publish_with_headers(b"with-headers", &headers)
        .await
        .unwrap();
    fx.publish(&[b"after-headers".to_vec()], 1, |_| {})
        .await
        .unwrap();
    let mut p = Process::start(&binary(kind), &env(kind, &fx, &sink.url("/fn"), &[]));
    let both = [b"with-headers".to_vec(), b"after-headers".to_vec()];
    collector
        .wait_answered(&format!("{kind:?}: both messages answered"), &both)
        .await;
    p.stop().await;
    fx.cleanup().await;
    collector.without_errors(&format!("{kind:?}"));
    let requests = sink.requests();
    let request = requests
        .iter()
        .find(|r| &r.body[..] == b"with-headers")
        .expect("the message with headers reached the function");
    assert_eq!(
        request.headers.get("x-text").map(|v| v.as_bytes()),
        Some(&b"plain"[..]),
        "{kind:?}: the text header is forwarded"
    );
    for left_out in ["x-bytes", "x-lines"] {
        assert!(
            request.headers.get(left_out).is_none(),
            "{kind:?}: {left_out} cannot be an HTTP header value: {:?}",
            request.headers.get(left_out)
        );
    }
    format!(
        "{kind:?}: a non-UTF-8 and a multi-line header value left out, the text header forwarded, \
         the message and the next answered"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn non_utf8_header_values_do_not_stop_the_message() {
    each_kind(
        &[Kind::Kafka, Kind::RabbitMq, Kind::Sqs],
        unusual_header_values,
    )
    .await;
}

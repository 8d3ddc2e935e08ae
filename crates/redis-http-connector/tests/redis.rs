//! Integration tests against the real Redis at 127.0.0.1:6379 (or `REDIS_URL`), with the
//! connector as a separate process. Start Redis with
//! `redis-server --daemonize yes --port 6379 --save ""` if these fail to connect.

use connector_core::testkit::{Process, Reply, Sink, assert_config_error, unique, with_overrides};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use std::collections::HashSet;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_redis-http-connector");
const WAIT: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis() -> MultiplexedConnection {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).unwrap();
    client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "Redis is not reachable at {url}: {e}. Start it with \
             `redis-server --daemonize yes --port 6379 --save \"\"` (or set REDIS_URL)."
            )
        })
}

struct Lists {
    source: String,
    response: String,
    error: String,
    consumer: String,
}

impl Lists {
    fn new() -> Self {
        Self {
            source: unique("src"),
            response: unique("resp"),
            error: unique("err"),
            consumer: unique("pod"),
        }
    }
    fn processing(&self, consumer: &str) -> String {
        redis_http_connector::processing_list(&self.source, consumer)
    }
}

/// Pops `n` items from `list`, blocking for each (event-driven); panics after `WAIT`.
async fn take(conn: &mut MultiplexedConnection, list: &str, n: usize) -> Vec<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited for {n} items on {list}, got {}",
            got.len()
        );
        let item: Option<(String, Vec<u8>)> = conn.blpop(list, 1.0).await.unwrap();
        if let Some((_, v)) = item {
            got.push(v);
        }
    }
    got
}

async fn len(conn: &mut MultiplexedConnection, list: &str) -> usize {
    conn.llen(list).await.unwrap()
}

fn env(l: &Lists, sink: &Sink, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let v: Vec<(&'static str, String)> = vec![
        (
            "ADDRESS",
            redis_url().trim_start_matches("redis://").to_owned(),
        ),
        ("TOPIC", l.source.clone()),
        ("RESPONSE_TOPIC", l.response.clone()),
        ("ERROR_TOPIC", l.error.clone()),
        ("HTTP_ENDPOINT", sink.url("/fission-function/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "application/json".into()),
        ("CONSUMER_ID", l.consumer.clone()),
        ("RETRY_BACKOFF_BASE", "10ms".into()),
    ];
    with_overrides(v, extra)
}

/// At the default in-flight bound of 1 the list is handled in order, as by the original, and
/// the responses come out in that order too, though the next call starts while the previous
/// outcome is still being written.
#[tokio::test]
async fn default_in_flight_keeps_the_list_order_in_calls_and_responses() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.respond(|req| Reply::status(200).body(req.body.clone()));
    let payloads: Vec<Vec<u8>> = (0..200).map(|i| format!("{i:03}").into_bytes()).collect();
    let _: usize = r.rpush(&l.source, &payloads).await.unwrap();
    let mut proc = Process::start(BIN, &env(&l, &sink, &[]));
    let got = take(&mut r, &l.response, 200).await;
    proc.stop().await;
    assert_eq!(got, payloads, "responses in the list's order");
    let called: Vec<Vec<u8>> = sink.requests().iter().map(|q| q.body.to_vec()).collect();
    assert_eq!(called, payloads, "calls in the list's order");
    assert_eq!(sink.max_in_flight(), 1);
}

#[tokio::test]
async fn happy_path_responses_byte_equal_and_nothing_left_behind() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.respond(|req| {
        let mut body = b"re:".to_vec();
        body.extend_from_slice(&req.body);
        Reply::status(200).body(body)
    });
    let payloads: Vec<Vec<u8>> = (0..30)
        .map(|i| {
            let mut p = format!("m{i}-").into_bytes();
            p.extend_from_slice(&[0xff, 0x00]);
            p
        })
        .collect();
    let _: usize = r.rpush(&l.source, &payloads).await.unwrap();
    let mut proc = Process::start(BIN, &env(&l, &sink, &[("MAX_IN_FLIGHT", "4")]));
    let got: HashSet<Vec<u8>> = take(&mut r, &l.response, 30).await.into_iter().collect();
    let want: HashSet<Vec<u8>> = payloads
        .iter()
        .map(|p| [b"re:".as_slice(), p].concat())
        .collect();
    assert_eq!(got, want);
    for req in sink.requests() {
        assert_eq!(req.headers["keda-topic"], l.source.as_str());
        assert_eq!(req.headers["keda-response-topic"], l.response.as_str());
        assert_eq!(req.headers["keda-error-topic"], l.error.as_str());
        assert_eq!(req.headers["content-type"], "application/json");
    }
    assert!(sink.max_in_flight() <= 4);
    proc.stop().await;
    assert_eq!(len(&mut r, &l.source).await, 0);
    assert_eq!(
        len(&mut r, &l.processing(&l.consumer)).await,
        0,
        "nothing left in processing"
    );
    assert_eq!(len(&mut r, &l.response).await, 0, "no duplicate responses");
    let hb: bool = r
        .exists(format!("{}:consumer:{}", l.source, l.consumer))
        .await
        .unwrap();
    assert!(!hb, "heartbeat removed on a clean stop");
}

#[tokio::test]
async fn failures_go_to_the_error_list() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(500).body("broken <&>"));
    let _: usize = r.rpush(&l.source, &["a", "b", "c"]).await.unwrap();
    let mut proc = Process::start(BIN, &env(&l, &sink, &[("MAX_RETRIES", "1")]));
    let errors = take(&mut r, &l.error, 3).await;
    let mut messages = Vec::new();
    for e in &errors {
        let doc: serde_json::Value = serde_json::from_slice(e).unwrap();
        assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 500);
        assert_eq!(doc["FunctionHTTPResponse"]["ResponseBody"], "broken <&>");
        assert_eq!(
            doc["FunctionHTTPRequest"]["Headers"]["KEDA-Topic"][0],
            l.source.as_str()
        );
        messages.push(
            doc["FunctionHTTPRequest"]["Message"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    messages.sort();
    assert_eq!(messages, ["a", "b", "c"]);
    assert_eq!(sink.count(), 6);
    proc.stop().await;
    assert_eq!(len(&mut r, &l.source).await, 0);
    assert_eq!(len(&mut r, &l.processing(&l.consumer)).await, 0);
    assert_eq!(len(&mut r, &l.response).await, 0);
}

#[tokio::test]
async fn without_destinations_messages_are_consumed_once() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.respond(|req| {
        if req.body == "bad" {
            Reply::status(400)
        } else {
            Reply::status(200)
        }
    });
    let _: usize = r.rpush(&l.source, &["ok", "bad", "ok2"]).await.unwrap();
    let mut e = env(&l, &sink, &[]);
    e.retain(|(k, _)| *k != "RESPONSE_TOPIC" && *k != "ERROR_TOPIC");
    let mut proc = Process::start(BIN, &e);
    sink.wait_for_requests(3, WAIT).await;
    proc.stop().await;
    assert_eq!(sink.count(), 3);
    assert_eq!(len(&mut r, &l.source).await, 0);
    assert_eq!(len(&mut r, &l.processing(&l.consumer)).await, 0);
}

#[tokio::test]
async fn sigterm_under_load_loses_nothing() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.respond(|req| {
        Reply::status(200)
            .body(req.body.clone())
            .delay(Duration::from_millis(3))
    });
    let total = 200;
    let payloads: Vec<String> = (0..total).map(|i| i.to_string()).collect();
    let _: usize = r.rpush(&l.source, &payloads).await.unwrap();
    let e = env(&l, &sink, &[("MAX_IN_FLIGHT", "4")]);
    let mut first = Process::start(BIN, &e);
    sink.wait_for_requests(40, WAIT).await;
    first.stop().await;
    assert!(sink.count() < total, "stopped under load");
    assert_eq!(
        len(&mut r, &l.processing(&l.consumer)).await,
        0,
        "a clean stop returns what it held"
    );
    let mut second = Process::start(BIN, &e);
    let got = take(&mut r, &l.response, total).await;
    second.stop().await;
    let distinct: HashSet<Vec<u8>> = got.into_iter().collect();
    assert_eq!(distinct.len(), total, "every message answered");
    assert_eq!(
        len(&mut r, &l.response).await,
        0,
        "no duplicates after a graceful stop"
    );
    assert_eq!(len(&mut r, &l.source).await, 0);
}

#[tokio::test]
async fn kill_9_then_restart_recovers_in_flight_messages() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.set_gate(false);
    let _: usize = r
        .rpush(&l.source, &["1", "2", "3", "4", "5", "6"])
        .await
        .unwrap();
    let e = env(&l, &sink, &[("MAX_IN_FLIGHT", "3")]);
    let mut first = Process::start(BIN, &e);
    sink.wait_for_in_flight(3, WAIT).await;
    first.kill().await;
    // The original would have lost these: they sit in the dead consumer's processing list.
    let held = len(&mut r, &l.processing(&l.consumer)).await;
    assert!(held >= 3, "{held} held in processing");
    sink.set_gate(true);
    let mut second = Process::start(BIN, &e);
    let got: HashSet<Vec<u8>> = take(&mut r, &l.response, 6).await.into_iter().collect();
    second.stop().await;
    let want: HashSet<Vec<u8>> = ["1", "2", "3", "4", "5", "6"]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
    assert_eq!(got, want);
    assert_eq!(len(&mut r, &l.processing(&l.consumer)).await, 0);
}

#[tokio::test]
async fn a_dead_consumers_messages_are_recovered_by_another() {
    let mut r = redis().await;
    let l = Lists::new();
    let sink = Sink::start().await;
    sink.set_gate(false);
    let _: usize = r.rpush(&l.source, &["x", "y"]).await.unwrap();
    let mut dead = Process::start(BIN, &env(&l, &sink, &[("MAX_IN_FLIGHT", "2")]));
    sink.wait_for_in_flight(2, WAIT).await;
    dead.kill().await;
    // Its heartbeat would expire after 30 s; expire it now.
    let _: () = r
        .del(format!("{}:consumer:{}", l.source, l.consumer))
        .await
        .unwrap();
    sink.set_gate(true);
    let other = unique("pod");
    let mut alive = Process::start(BIN, &env(&l, &sink, &[("CONSUMER_ID", &other)]));
    let got: HashSet<Vec<u8>> = take(&mut r, &l.response, 2).await.into_iter().collect();
    alive.stop().await;
    assert_eq!(got, [b"x".to_vec(), b"y".to_vec()].into_iter().collect());
    assert_eq!(len(&mut r, &l.processing(&l.consumer)).await, 0);
    assert!(
        alive
            .logs()
            .contains("recovered messages of a dead consumer")
    );
}

#[tokio::test]
async fn bad_env_values_exit_78_with_one_line_and_no_secret() {
    let secret = "r3dis-pa55";
    let base: Vec<(&str, String)> = vec![
        ("ADDRESS", "127.0.0.1:6379".into()),
        ("TOPIC", "t".into()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:9/f".into()),
        ("MAX_RETRIES", "1".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("PASSWORD_FROM_ENV", secret.into()),
    ];
    let cases: &[(&str, Option<String>)] = &[
        ("ADDRESS", None),
        ("ADDRESS", Some(format!("redis://u:{secret}@nohostport"))),
        ("DATABASE_INDEX", Some("minus one".into())),
        ("ENABLE_TLS", Some("yes please".into())),
        ("MAX_IN_FLIGHT", Some("0".into())),
        ("MAX_RETRIES", Some("x".into())),
    ];
    for (var, value) in cases {
        assert_config_error(BIN, &base, var, value.as_deref(), var, secret);
    }
}

//! The demo end to end, as `cargo xtask demo` runs it (here with the debug build): the mock
//! cluster needs nothing; Redis, RabbitMQ and NATS are the local ones the other tests use. The
//! connector binaries come from the same target directory (`cargo test --workspace` builds
//! them).

use std::process::Command;

const DEMO: &str = env!("CARGO_BIN_EXE_demo");

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(DEMO).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_demo(broker: &str, n: usize) {
    let live = 20;
    let (code, stdout, stderr) = run(&[
        "--broker",
        broker,
        "--messages",
        &n.to_string(),
        "--one-by-one",
        &live.to_string(),
    ]);
    assert_eq!(code, Some(0), "{broker}: {stdout}\n{stderr}");
    for needle in [
        format!("published  {n} messages"),
        format!(
            "function   {} requests: {} answered 200, the marked message 3 times",
            n + live + 2,
            n + live - 1
        ),
        format!("one by one {live} more"),
        format!("responses  {} read back from", n - 1),
        format!(
            "{} byte-identical to the message sent, 0 altered, 0 duplicated, 0 unknown",
            n - 1
        ),
        "errors     1 error document(s)".to_owned(),
        format!("\"Message\": \"{{\\\"id\\\":{},", n / 2),
        "\"StatusCode\": 500".to_owned(),
        format!("latency    backlog of {n} published at once, publish → response readable: p50 "),
        format!("one message at a time ({live}): p50 "),
        "SIGTERM → drained and exited with 0".to_owned(),
        "ok: every message answered exactly once".to_owned(),
    ] {
        assert!(
            stdout.contains(&needle),
            "{broker}: no {needle:?} in:\n{stdout}\n{stderr}"
        );
    }
}

#[test]
fn demo_on_the_embedded_kafka_mock_cluster() {
    assert_demo("kafka", 400);
}

#[test]
fn demo_on_the_local_redis_rabbitmq_and_nats() {
    for broker in ["redis", "rabbitmq", "nats"] {
        assert_demo(broker, 150);
    }
}

#[test]
fn demo_usage_errors() {
    let (code, _, stderr) = run(&["--broker", "mqtt"]);
    assert_eq!(code, Some(64));
    assert!(
        stderr.contains("--broker: expected kafka, redis, rabbitmq or nats, got \"mqtt\""),
        "{stderr}"
    );
    let (code, _, stderr) = run(&["--messages", "1"]);
    assert_eq!(code, Some(64), "{stderr}");
    let (code, _, stderr) = run(&["--connector-dir", "/nonexistent"]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("no connector binary at /nonexistent/kafka-http-connector"),
        "{stderr}"
    );
    let (code, stdout, _) = run(&["--help"]);
    assert_eq!(code, Some(0));
    assert!(stdout.starts_with("usage: demo"));
}

//! The broker goes away mid-load and comes back: the connector reports not-ready while it is
//! gone, reconnects, and every message is answered. Redis and NATS run as this test's own
//! servers (persistent: Redis with an fsync'd append-only file, JetStream on disk) so they can be
//! stopped and started; Kafka is librdkafka's mock cluster in this process, taken down (every
//! connection dropped, new ones refused) and brought back with its data; RabbitMQ is the local
//! one (`rabbitmqctl stop_app` / `start_app`; this test binary runs alone, as `cargo test` runs
//! binaries one after another). `RELIABILITY_KINDS` picks brokers.

use broker_fixtures::{Fixture, Kind};
use connector_core::testkit::{Process, Reply, Sink};
use reliability::{Collector, OwnServer, WAIT, binary, env, selected};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `rabbitmqctl stop_app`, and `start_app` again however the test ends.
struct RabbitStopped;

impl RabbitStopped {
    fn stop() -> Self {
        rabbitmqctl("stop_app");
        Self
    }
}

impl Drop for RabbitStopped {
    fn drop(&mut self) {
        rabbitmqctl("start_app");
    }
}

fn rabbitmqctl(command: &str) {
    let ok = Command::new("rabbitmqctl")
        .arg(command)
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "rabbitmqctl {command} failed (RabbitMQ must be the local server)"
    );
}

async fn broker_restart(kind: Kind) -> String {
    let mut server = match kind {
        Kind::Redis => Some(OwnServer::redis(None)),
        Kind::Nats => Some(OwnServer::nats(None)),
        _ => None,
    };
    let address = server.as_ref().map(OwnServer::address);
    let mut fx = Fixture::start_at(kind, address.as_deref())
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    // Slow enough that the load outlasts taking the broker down (rabbitmqctl takes seconds).
    sink.respond(|r| {
        Reply::status(200)
            .body(r.body.clone())
            .delay(Duration::from_millis(20))
    });
    let total = 1500;
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| format!("{kind:?}-restart-{i}").into_bytes())
        .collect();
    fx.publish(&payloads, 0, |_| {}).await.unwrap();
    let mut p = Process::start(&binary(kind), &env(kind, &fx, &sink.url("/fn"), &[]));
    p.wait_log(kind.consuming_log(), 1).await;
    sink.wait_for_requests(50, WAIT).await;

    let started = Instant::now();
    let rabbit = match kind {
        Kind::RabbitMq => Some(RabbitStopped::stop()),
        Kind::Kafka => {
            fx.set_kafka_up(false).unwrap();
            None
        }
        _ => {
            server.as_mut().expect("an own server").down();
            None
        }
    };
    // Readiness drops while the broker is gone.
    p.wait_log("\"ready\":false", 1).await;
    let answered_while_down = sink.count();
    // The outage is the scenario: its length is wall-clock time by definition.
    tokio::time::sleep(Duration::from_secs(3)).await;
    match kind {
        Kind::RabbitMq => drop(rabbit),
        Kind::Kafka => fx.set_kafka_up(true).unwrap(),
        _ => server.as_mut().expect("an own server").up(),
    }
    let outage = started.elapsed();
    let unanswered = collector.unanswered_after(&payloads, WAIT).await;
    if !unanswered.is_empty() {
        // Whether the connector or the reader of the destinations stalled is read off this:
        // the function's count, and the connector's own account of its reconnects.
        let logs = p.logs();
        let tail: Vec<&str> = logs.lines().rev().take(80).collect();
        panic!(
            "{kind:?}: {} of {total} messages unanswered {WAIT:?} after the restart; the \
             function was called {} times; the connector's last log lines:\n{}",
            unanswered.len(),
            sink.count(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // Ready again: the second "ready" of the run.
    p.wait_log("\"ready\":true", 2).await;
    p.stop().await;
    fx.cleanup().await;
    collector.without_errors(&format!("{kind:?}"));
    let redone = sink.count() - total;
    format!(
        "{kind:?}: broker down {:.1} s mid-load ({answered_while_down} of {total} sent to the function before): \
         not ready while down, reconnected, 0 lost, {redone} invoked twice",
        outage.as_secs_f64()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_restart_mid_load_loses_nothing() {
    for kind in selected(&[Kind::Redis, Kind::Nats, Kind::Kafka, Kind::RabbitMq]) {
        eprintln!("reliability: {}", broker_restart(kind).await);
    }
}

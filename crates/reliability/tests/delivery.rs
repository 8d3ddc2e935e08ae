//! The delivery rules against each real broker (docs/delivery.md): the metadata headers keep
//! their message id across a SIGKILL and restart, with the broker's delivery count where it
//! keeps one; `MAX_DELIVERIES` ends a message that takes its connector down every time; a
//! response over the destination's size limit becomes one error document and the source is
//! acknowledged; a message older than `MAX_MESSAGE_AGE` goes to the error destination uncalled.

use broker_fixtures::{Fixture, Kind};
use connector_core::testkit::{Process, Recorded, Reply, Sink};
use reliability::{Collector, RESTARTABLE, Seen, WAIT, binary, each_kind, env, fixture};

fn header(r: &Recorded, name: &str) -> String {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_owned()
}

/// The count the second delivery carries after a kill: the broker's where it counts
/// (RabbitMQ's classic queues only flag a redelivery, which reads as 2); the restarted
/// process's own count (1) where the broker keeps none.
fn second_count(kind: Kind) -> &'static str {
    match kind {
        Kind::Sqs | Kind::Nats | Kind::RabbitMq => "2",
        _ => "1",
    }
}

/// Whether the broker counts every delivery (so `MAX_DELIVERIES` sees a crash loop).
fn counts_every_delivery(kind: Kind) -> bool {
    matches!(kind, Kind::Sqs | Kind::Nats)
}

async fn metadata_across_kills(kind: Kind) -> String {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    // Every request is held: the connector is killed while its call is open.
    sink.set_gate(false);
    let env = env(
        kind,
        &fx,
        &sink.url("/fn"),
        &[("METADATA_HEADERS", "true"), ("MAX_DELIVERIES", "2")],
    );
    let payload = format!("{kind:?}-takes-its-connector-down").into_bytes();
    fx.publish(std::slice::from_ref(&payload), 0, |_| {})
        .await
        .unwrap();
    let mut p = Process::start(&binary(kind), &env);
    sink.wait_for_requests(1, WAIT).await;
    p.kill().await;
    let mut p = Process::start(&binary(kind), &env);
    sink.wait_for_requests(2, WAIT).await;
    let calls = sink.requests();
    let (first, second) = (&calls[0], &calls[1]);
    assert_eq!(first.body, payload);
    assert_eq!(second.body, payload);
    let id = header(first, "keda-message-id");
    assert_eq!(
        header(second, "keda-message-id"),
        id,
        "{kind:?}: the id is stable"
    );
    assert_eq!(header(first, "keda-delivery-count"), "1", "{kind:?}");
    assert_eq!(
        header(second, "keda-delivery-count"),
        second_count(kind),
        "{kind:?}"
    );
    assert_eq!(header(second, "keda-attempt"), "1", "{kind:?}");

    let ended = if counts_every_delivery(kind) {
        // Down again: the third delivery is over MAX_DELIVERIES=2 and is not called.
        p.kill().await;
        p = Process::start(&binary(kind), &env);
        collector
            .wait(&format!("{kind:?}: an error document"), |s| {
                !s.errors.is_empty()
            })
            .await;
        let seen = collector.snapshot();
        let doc: serde_json::Value = serde_json::from_slice(&seen.errors[0]).unwrap();
        assert_eq!(doc["ConnectorDetails"]["Reason"], "max-deliveries", "{doc}");
        assert_eq!(
            doc["FunctionHTTPRequest"]["Headers"]["Keda-Message-Id"][0],
            id.as_str(),
            "{doc}"
        );
        "the third delivery went to the error destination without a call (MAX_DELIVERIES=2)"
    } else {
        match kind {
            Kind::RabbitMq => {
                "a classic queue only flags a redelivery (count 2 at most; a quorum queue's \
                 x-delivery-count counts every one)"
            }
            _ => {
                "the broker keeps no count, so MAX_DELIVERIES cannot see deliveries across processes"
            }
        }
    };
    // The loop goes on, and the diverted message was acknowledged: it is not called again.
    sink.set_gate(true);
    let after = format!("{kind:?}-after").into_bytes();
    fx.publish(std::slice::from_ref(&after), 1, |_| {})
        .await
        .unwrap();
    collector
        .wait_answered(&format!("{kind:?}: a later message"), &[after])
        .await;
    p.stop().await;
    fx.cleanup().await;
    let calls_for_it = sink.requests().iter().filter(|r| r.body == payload).count();
    let expected = if counts_every_delivery(kind) { 2 } else { 3 };
    assert!(
        calls_for_it <= expected,
        "{kind:?}: called {calls_for_it} times"
    );
    format!(
        "{kind:?}: SIGKILL during the call, restart: same Keda-Message-Id, Keda-Delivery-Count \
         1 then {}; {ended}",
        second_count(kind)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metadata_headers_across_a_kill_and_max_deliveries() {
    each_kind(&RESTARTABLE, metadata_across_kills).await;
}

/// The largest record each destination takes here (Kafka's `message.max.bytes`, NATS's
/// `max_payload`, SQS's 1 MiB).
fn limit(kind: Kind) -> usize {
    match kind {
        Kind::Kafka => 1_000_000,
        Kind::Nats | Kind::Sqs => 1024 * 1024,
        _ => unreachable!("no size limit enforced here"),
    }
}

/// Publishes `payload` (id `id`), waits for its answer, stops the connector, and returns what
/// was read with its one error document.
async fn then_answered(
    kind: Kind,
    fx: &mut Fixture,
    collector: &Collector,
    p: &mut Process,
    payload: &[u8],
    id: usize,
) -> (Seen, serde_json::Value) {
    fx.publish(&[payload.to_vec()], id, |_| {}).await.unwrap();
    collector
        .wait_answered(&format!("{kind:?}: a message after"), &[payload.to_vec()])
        .await;
    p.stop().await;
    fx.cleanup().await;
    let seen = collector.snapshot();
    assert_eq!(seen.errors.len(), 1, "{kind:?}: one error document");
    let doc = serde_json::from_slice(&seen.errors[0]).unwrap();
    (seen, doc)
}

async fn oversize_response(kind: Kind) -> String {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    let size = limit(kind) + 64 * 1024;
    sink.respond(move |r| match &r.body[..] {
        b"big" => Reply::status(200).body(vec![b'x'; size]),
        body => Reply::status(200).body(body.to_vec()),
    });
    let payloads = [b"big".to_vec(), b"small".to_vec()];
    fx.publish(&payloads, 0, |_| {}).await.unwrap();
    let mut p = Process::start(&binary(kind), &env(kind, &fx, &sink.url("/fn"), &[]));
    collector
        .wait(
            &format!("{kind:?}: one error document and the small answer"),
            |s| !s.errors.is_empty() && s.responses.contains_key(&b"small"[..]),
        )
        .await;
    // A later message is answered: the loop goes on and nothing was requeued in between.
    let (seen, doc) = then_answered(kind, &mut fx, &collector, &mut p, b"later", 2).await;
    assert_eq!(
        doc["ConnectorDetails"]["Reason"], "response-rejected",
        "{doc}"
    );
    assert_eq!(doc["FunctionHTTPRequest"]["Message"], "big", "{doc}");
    assert_eq!(doc["FunctionHTTPResponse"]["StatusCode"], 200, "{doc}");
    assert!(!seen.responses.contains_key(&vec![b'x'; size]));
    let big_calls = sink
        .requests()
        .iter()
        .filter(|r| &r.body[..] == b"big")
        .count();
    assert_eq!(
        big_calls, 1,
        "{kind:?}: the function was called once for it"
    );
    format!(
        "{kind:?}: a {size}-byte response (limit {}) became 1 error document (Reason \
         response-rejected), the message was acknowledged, the loop went on",
        limit(kind)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn an_oversize_response_becomes_one_error_document() {
    each_kind(&[Kind::Kafka, Kind::Nats, Kind::Sqs], oversize_response).await;
}

/// A message older than `MAX_MESSAGE_AGE` (by the broker's timestamp) goes to the error
/// destination without a call; a fresh one is called, with the metadata headers.
async fn stale_message(kind: Kind) -> String {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    fx.publish(&[b"old".to_vec()], 0, |_| {}).await.unwrap();
    // Ageing is the scenario: the message must be older than MAX_MESSAGE_AGE when it is read.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let env = env(
        kind,
        &fx,
        &sink.url("/fn"),
        &[("MAX_MESSAGE_AGE", "2s"), ("METADATA_HEADERS", "true")],
    );
    let mut p = Process::start(&binary(kind), &env);
    collector
        .wait(
            &format!("{kind:?}: the stale message's error document"),
            |s| !s.errors.is_empty(),
        )
        .await;
    let (_, doc) = then_answered(kind, &mut fx, &collector, &mut p, b"fresh", 1).await;
    assert_eq!(
        doc["ConnectorDetails"]["Reason"], "max-message-age",
        "{doc}"
    );
    assert_eq!(doc["FunctionHTTPRequest"]["Message"], "old", "{doc}");
    let calls = sink.requests();
    assert_eq!(calls.len(), 1, "{kind:?}: only the fresh message is called");
    assert_eq!(&calls[0].body[..], b"fresh");
    assert!(!header(&calls[0], "keda-message-id").is_empty());
    assert_eq!(header(&calls[0], "keda-delivery-count"), "1", "{kind:?}");
    format!(
        "{kind:?}: a message 3 s old with MAX_MESSAGE_AGE=2s went to the error destination \
         without a call; a fresh one was called with Keda-Message-Id and Keda-Delivery-Count 1"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_messages_go_to_the_error_destination() {
    each_kind(
        &[
            Kind::Kafka,
            Kind::Nats,
            Kind::Sqs,
            Kind::Kinesis,
            Kind::PubSub,
        ],
        stale_message,
    )
    .await;
}

//! Dispatcher behaviour with an in-memory source and publisher and a real HTTP sink.

mod common;

use common::{Running, WAIT, engine, msg, run_until_settled, start_dispatch};

use connector_core::testkit::{Event, MemoryPublisher, MemorySource, Reply, Sink, settings};
use connector_core::{Destination, DispatchEnd, DispatchOptions, Engine, HeaderFamily, Message};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

fn unordered(n: usize) -> DispatchOptions {
    DispatchOptions {
        max_in_flight: n,
        lane_concurrency: 0,
        write_ahead: 0,
    }
}

#[tokio::test]
async fn never_holds_more_than_max_in_flight() {
    let sink = Sink::start().await;
    sink.set_gate(false);
    let engine = engine(&sink, unordered(3), &[]);
    let messages = (0..20).map(|i| msg(&i.to_string(), None)).collect();
    let Running { run, log, taken } = start_dispatch(&engine, messages, |_| {});
    sink.wait_for_in_flight(3, WAIT).await;
    // Held, not answered: the dispatcher must not have taken a fourth delivery.
    assert_eq!(taken.load(Ordering::SeqCst), 3);
    assert_eq!(engine.metrics().in_flight.get(), 3);
    sink.set_gate(true);
    log.wait_for_settled(20, WAIT).await;
    assert_eq!(sink.max_in_flight(), 3);
    let mut acked = log.acked();
    acked.sort();
    assert_eq!(acked, (0..20).collect::<Vec<_>>());
    engine.shutdown().cancel();
    assert_eq!(run.await.unwrap(), DispatchEnd::Shutdown);
    assert_eq!(engine.metrics().in_flight.get(), 0);
}

#[tokio::test]
async fn shutdown_drains_in_flight_and_takes_nothing_new() {
    let sink = Sink::start().await;
    sink.set_gate(false);
    let engine = engine(&sink, unordered(2), &[("DRAIN_TIMEOUT", "10s")]);
    let messages = (0..5).map(|i| msg(&i.to_string(), None)).collect();
    let Running { run, log, taken } = start_dispatch(&engine, messages, |_| {});
    sink.wait_for_in_flight(2, WAIT).await;
    engine.shutdown().cancel();
    // Let the held requests finish: the drain must wait for them and ack them.
    sink.set_gate(true);
    assert_eq!(run.await.unwrap(), DispatchEnd::Shutdown);
    let mut acked = log.acked();
    acked.sort();
    assert_eq!(acked, vec![0, 1]);
    assert_eq!(
        taken.load(Ordering::SeqCst),
        2,
        "nothing new taken after shutdown"
    );
    assert_eq!(sink.count(), 2);
}

#[tokio::test]
async fn drain_budget_leaves_unfinished_work_unacknowledged() {
    let sink = Sink::start().await;
    sink.set_gate(false);
    let engine = engine(&sink, unordered(2), &[("DRAIN_TIMEOUT", "200ms")]);
    let messages = (0..2).map(|i| msg(&i.to_string(), None)).collect();
    let Running { run, log, .. } = start_dispatch(&engine, messages, |_| {});
    sink.wait_for_in_flight(2, WAIT).await;
    engine.shutdown().cancel();
    assert_eq!(run.await.unwrap(), DispatchEnd::Shutdown);
    assert!(log.events().is_empty(), "nothing acked: {:?}", log.events());
    assert_eq!(engine.metrics().in_flight.get(), 0);
}

#[tokio::test]
async fn source_end_returns_for_reconnect() {
    let sink = Sink::start().await;
    let engine = engine(&sink, unordered(2), &[]);
    let (mut source, feed, log) = MemorySource::new();
    feed.send(msg("last", None)).unwrap();
    drop(feed);
    let publisher = Arc::new(MemoryPublisher::new(log.clone()));
    assert_eq!(
        engine.dispatch(&mut source, &publisher).await,
        DispatchEnd::SourceEnded
    );
    assert_eq!(
        log.acked(),
        vec![0],
        "in-flight work finished before returning"
    );
}

#[tokio::test]
async fn lanes_run_in_order_and_in_parallel() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(200).delay(Duration::from_millis(5)));
    let options = DispatchOptions {
        max_in_flight: 16,
        lane_concurrency: 1,
        write_ahead: 0,
    };
    let engine = engine(&sink, options, &[]);
    let messages = (0..10)
        .flat_map(|i| (0..4u64).map(move |lane| msg(&format!("{lane}:{i}"), Some(lane))))
        .collect();
    run_until_settled(&engine, messages, 40, |_| {}).await;
    let bodies: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    for lane in 0..4 {
        let seq: Vec<&String> = bodies
            .iter()
            .filter(|b| b.starts_with(&format!("{lane}:")))
            .collect();
        let want: Vec<String> = (0..10).map(|i| format!("{lane}:{i}")).collect();
        assert_eq!(seq, want.iter().collect::<Vec<_>>(), "lane {lane} in order");
    }
    assert!(sink.max_in_flight() > 1, "lanes ran in parallel");
    assert!(sink.max_in_flight() <= 4, "one at a time per lane");
}

/// Queues each write in the call, as Kafka's producer does, and holds it until released.
struct QueuingPublisher {
    queued: tokio::sync::watch::Sender<Vec<usize>>,
    release: tokio::sync::watch::Sender<bool>,
}

impl connector_core::Publisher<usize> for QueuingPublisher {
    fn publish(
        &self,
        record: connector_core::Outbound<'_, usize>,
    ) -> impl std::future::Future<Output = Result<(), connector_core::BoxError>> + Send {
        self.queued.send_modify(|q| q.push(*record.meta));
        let mut released = self.release.subscribe();
        async move {
            let _ = released.wait_for(|r| *r).await;
            Ok(())
        }
    }

    fn queues_in_call_order(&self) -> bool {
        true
    }
}

/// A dispatcher running in the background on `messages`, writing through a held
/// [`QueuingPublisher`].
fn start_queuing(engine: &Engine, messages: Vec<Message>) -> (Running, Arc<QueuingPublisher>) {
    let (mut source, feed, log) = MemorySource::new();
    for m in messages {
        feed.send(m).unwrap();
    }
    let taken = source.taken.clone();
    let publisher = Arc::new(QueuingPublisher {
        queued: tokio::sync::watch::channel(Vec::new()).0,
        release: tokio::sync::watch::channel(false).0,
    });
    let (p, e) = (publisher.clone(), engine.clone());
    let run = tokio::spawn(async move {
        let _feed = feed;
        e.dispatch(&mut source, &p).await
    });
    (Running { run, log, taken }, publisher)
}

/// Waits until `n` writes are queued with `publisher`.
async fn wait_queued(publisher: &QueuingPublisher, n: usize) {
    let mut queued = publisher.queued.subscribe();
    tokio::time::timeout(WAIT, queued.wait_for(|q| q.len() == n))
        .await
        .unwrap_or_else(|_| panic!("{n} outcomes queued"))
        .unwrap();
}

/// With a publisher that queues in call order, an ordered lane invokes its next message while
/// the earlier outcomes are still being written: in order, each acked only once its own write
/// is durable, and the in-flight bound still counts the ones being written.
#[tokio::test]
async fn an_ordered_lane_invokes_on_while_queued_outcomes_are_written() {
    let sink = Sink::start().await;
    let options = DispatchOptions {
        max_in_flight: 3,
        lane_concurrency: 1,
        write_ahead: 0,
    };
    let engine = engine(&sink, options, &[]);
    let messages = (0..6).map(|i| msg(&i.to_string(), Some(7))).collect();
    let (Running { run, log, taken }, publisher) = start_queuing(&engine, messages);
    // Three queued while none is durable.
    wait_queued(&publisher, 3).await;
    assert_eq!(*publisher.queued.borrow(), vec![0, 1, 2]);
    assert!(
        log.acked().is_empty(),
        "nothing acked before its write is durable"
    );
    assert_eq!(taken.load(Ordering::SeqCst), 3, "the in-flight bound holds");
    assert_eq!(sink.count(), 3);
    publisher.release.send_replace(true);
    log.wait_for_settled(6, WAIT).await;
    assert_eq!(*publisher.queued.borrow(), (0..6).collect::<Vec<_>>());
    let bodies: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, (0..6).map(|i| i.to_string()).collect::<Vec<_>>());
    let mut acked = log.acked();
    acked.sort();
    assert_eq!(acked, (0..6).collect::<Vec<_>>());
    engine.shutdown().cancel();
    assert_eq!(run.await.unwrap(), DispatchEnd::Shutdown);
    assert_eq!(engine.metrics().in_flight.get(), 0);
}

/// With a write-ahead, a call's slot goes to the next delivery while its outcome waits for the
/// broker: calls stay bounded by `max_in_flight`, outcomes being written by `write_ahead`, and
/// nothing is acked before its write is durable.
#[tokio::test]
async fn write_ahead_starts_the_next_call_while_outcomes_wait_for_the_broker() {
    let sink = Sink::start().await;
    let options = DispatchOptions {
        max_in_flight: 2,
        write_ahead: 2,
        ..DispatchOptions::default()
    };
    let engine = engine(&sink, options, &[]);
    let messages = (0..8).map(|i| msg(&i.to_string(), None)).collect();
    let (Running { run, log, taken }, publisher) = start_queuing(&engine, messages);
    // Two outcomes being written hold the write slots; two more calls have ended and wait for
    // one, holding the call slots: four taken, no fifth.
    sink.wait_for_requests(4, WAIT).await;
    wait_queued(&publisher, 2).await;
    assert_eq!(taken.load(Ordering::SeqCst), 4);
    assert!(
        log.acked().is_empty(),
        "nothing acked before its write is durable"
    );
    publisher.release.send_replace(true);
    log.wait_for_settled(8, WAIT).await;
    let mut acked = log.acked();
    acked.sort();
    assert_eq!(acked, (0..8).collect::<Vec<_>>());
    assert!(sink.max_in_flight() <= 2, "calls bounded by max_in_flight");
    engine.shutdown().cancel();
    assert_eq!(run.await.unwrap(), DispatchEnd::Shutdown);
    assert_eq!(engine.metrics().in_flight.get(), 0);
}

#[tokio::test]
async fn success_publishes_response_then_acks() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(200).header("X-Resp", "yes").body("answer"));
    let engine = engine(&sink, unordered(4), &[]);
    let log = run_until_settled(&engine, vec![msg("q", None)], 1, |_| {}).await;
    let events = log.events();
    let Event::Published {
        destination,
        topic,
        body,
        headers,
        ..
    } = &events[0]
    else {
        panic!("{events:?}")
    };
    assert_eq!(
        (*destination, topic.as_str(), body.as_ref()),
        (Destination::Response, "out", &b"answer"[..])
    );
    assert!(headers.contains(&("x-resp".to_owned(), "yes".to_owned())));
    assert_eq!(events[1], Event::Acked(0));
    assert_eq!(engine.metrics().succeeded.get(), 1);
}

#[tokio::test]
async fn failure_writes_error_document_then_acks() {
    let sink = Sink::start().await;
    sink.respond(|_| Reply::status(400).body("bad"));
    let engine = engine(&sink, unordered(4), &[]);
    let log = run_until_settled(
        &engine,
        vec![msg("poison", None), msg("fine", None)],
        2,
        |_| {},
    )
    .await;
    let events = log.events();
    let errors: Vec<serde_json::Value> = events
        .iter()
        .filter_map(|e| match e {
            Event::Published {
                destination: Destination::Error,
                topic,
                body,
                ..
            } => {
                assert_eq!(topic, "err");
                Some(serde_json::from_slice(body).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(errors.len(), 2, "one error document per failed message");
    assert_eq!(errors[0]["FunctionHTTPResponse"]["StatusCode"], 400);
    assert_eq!(errors[0]["FunctionHTTPResponse"]["ResponseBody"], "bad");
    let mut acked = log.acked();
    acked.sort();
    assert_eq!(
        acked,
        vec![0, 1],
        "the loop goes on and acks after the error write"
    );
    for id in [0, 1] {
        let published = events
            .iter()
            .position(|e| matches!(e, Event::Published { id: i, .. } if *i == id))
            .unwrap();
        let ack = events.iter().position(|e| *e == Event::Acked(id)).unwrap();
        assert!(published < ack, "error document is written before the ack");
    }
}

#[tokio::test]
async fn publish_failure_requeues_instead_of_acking() {
    let sink = Sink::start().await;
    let engine = engine(&sink, unordered(4), &[]);
    let log = run_until_settled(&engine, vec![msg("m", None)], 1, |p| {
        p.fail.store(true, Ordering::SeqCst)
    })
    .await;
    assert_eq!(log.events(), vec![Event::Requeued(0)]);
}

#[tokio::test]
async fn no_destinations_means_ack_without_publish() {
    let sink = Sink::start().await;
    sink.respond(|r| {
        if r.body == "bad" {
            Reply::status(500)
        } else {
            Reply::status(200)
        }
    });
    let url = sink.url("/");
    let engine = Engine::new(
        settings(&[
            ("TOPIC", "in"),
            ("HTTP_ENDPOINT", &url),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
        ]),
        HeaderFamily::Keda,
        unordered(2),
        "t",
    );
    let log = run_until_settled(&engine, vec![msg("ok", None), msg("bad", None)], 2, |_| {}).await;
    let mut events = log.events();
    events.sort_by_key(|e| format!("{e:?}"));
    assert_eq!(events, vec![Event::Acked(0), Event::Acked(1)]);
}

#[tokio::test]
async fn lane_concurrency_bounds_each_lane_without_ordering() {
    let sink = Sink::start().await;
    sink.set_gate(false);
    let options = DispatchOptions {
        max_in_flight: 50,
        lane_concurrency: 2,
        write_ahead: 0,
    };
    let engine = engine(&sink, options, &[]);
    // Two lanes of 10: at most 2 of each run at once.
    let messages = (0..10)
        .flat_map(|i| (0..2u64).map(move |lane| msg(&format!("{lane}:{i}"), Some(lane))))
        .collect();
    let Running { run, log, .. } = start_dispatch(&engine, messages, |_| {});
    sink.wait_for_in_flight(4, WAIT).await;
    let held: Vec<String> = sink
        .requests()
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert_eq!(held.iter().filter(|b| b.starts_with("0:")).count(), 2);
    assert_eq!(held.iter().filter(|b| b.starts_with("1:")).count(), 2);
    sink.set_gate(true);
    log.wait_for_settled(20, WAIT).await;
    assert_eq!(sink.max_in_flight(), 4);
    engine.shutdown().cancel();
    run.await.unwrap();
}

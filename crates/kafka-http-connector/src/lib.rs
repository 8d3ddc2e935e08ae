//! Kafka glue for `connector-core`: a consumer-group member as the [`Source`], an idempotent
//! `acks=all` producer as the [`Publisher`].
//!
//! Ack model: offsets are stored (`enable.auto.offset.store=false`) only for the contiguous
//! prefix of settled records of each partition (`connector_core::tracker`), and librdkafka commits the stored
//! offsets every second, on partition revoke and on close. Records of one partition are
//! processed in order (lane = partition) unless `PARTITION_CONCURRENCY` > 1. A record whose
//! outcome could not be written is handed back to this source and processed again; its offset
//! is not committed meanwhile.

mod config;

pub use config::{KafkaConfig, Sasl};

use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::headers::canonical_key;
use connector_core::telemetry::Health;
use connector_core::{
    Acknowledger, BoxError, Connector, Delivery, Destination, DispatchEnd, DispatchOptions, Engine,
    Lane, Message, Outbound, Publisher, Rejected, Source,
};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
/// Per partition: offsets read and not yet committed.
type OffsetTracker = connector_core::tracker::SettleTracker<i32, i64>;

/// The Kafka connector.
#[derive(Debug)]
pub struct KafkaConnector {
    config: KafkaConfig,
}

impl Connector for KafkaConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "kafka";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: KafkaConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        DispatchOptions {
            max_in_flight: self.config.max_in_flight,
            lane_concurrency: self.config.partition_concurrency,
            write_ahead: 0,
        }
    }

    async fn check(&self, engine: &Engine) -> Vec<Check> {
        let wanted: Vec<(&str, &str, String)> = engine
            .settings()
            .common
            .named_topics()
            .into_iter()
            .map(|(what, var, topic)| (what, var, topic.to_owned()))
            .collect();
        let mut c = client_config(&self.config);
        // A consumer that never subscribes joins no group: reading the group's committed
        // offsets (OffsetFetch) moves nothing.
        c.set("group.id", &self.config.group);
        apply_properties(&mut c, &self.config);
        let group = self.config.group.clone();
        let reset = self.config.offset_reset;
        let looked = tokio::task::spawn_blocking(move || -> Result<Vec<Check>, String> {
            let consumer: rdkafka::consumer::BaseConsumer =
                c.create().map_err(|e| e.to_string())?;
            let mut checks = Vec::new();
            let mut source_partitions = None;
            for (what, var, topic) in wanted {
                let metadata = consumer
                    .fetch_metadata(Some(&topic), Duration::from_secs(10))
                    .map_err(|e| format!("cannot reach the brokers: {e}"))?;
                let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
                    continue;
                };
                if t.error().is_some() {
                    checks.push(Check::fail(what, Some(var), format!("topic {topic:?} does not exist")));
                    continue;
                }
                let n = t.partitions().len();
                checks.push(Check::ok(what, Some(var), format!("topic {topic:?} with {n} partitions")));
                if var == "TOPIC" {
                    source_partitions = Some((topic.clone(), n));
                }
            }
            if let Some((topic, n)) = source_partitions {
                let mut tpl = TopicPartitionList::new();
                for p in 0..n as i32 {
                    tpl.add_partition(&topic, p);
                }
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(10))
                    .map_err(|e| format!("cannot read the group's committed offsets: {e}"))?;
                let with = committed
                    .elements()
                    .iter()
                    .filter(|e| matches!(e.offset(), rdkafka::Offset::Offset(_)))
                    .count();
                checks.push(if with > 0 {
                    Check::ok(
                        "consumer",
                        Some("CONSUMER_GROUP"),
                        format!("group {group:?} has committed offsets on {with} of {n} partitions: the first start goes on from them"),
                    )
                } else {
                    Check::ok(
                        "consumer",
                        Some("CONSUMER_GROUP"),
                        format!("group {group:?} has no committed offsets: the first start begins at the {reset} end (OFFSET_RESET_POLICY)"),
                    )
                });
            }
            Ok(checks)
        })
        .await;
        match looked {
            Ok(Ok(checks)) => {
                let mut all = vec![Check::ok("broker", Some("BOOTSTRAP_SERVERS"), "reachable")];
                all.extend(checks);
                all
            }
            Ok(Err(e)) => vec![Check::fail("broker", Some("BOOTSTRAP_SERVERS"), e)],
            Err(e) => vec![Check::fail(
                "broker",
                Some("BOOTSTRAP_SERVERS"),
                e.to_string(),
            )],
        }
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let config = self.config;
        if config.unsafe_ssl {
            tracing::warn!("UNSAFE_SSL=true: the broker's certificate is not verified");
        }
        let tracker = Arc::new(OffsetTracker::default());
        let events = || Events {
            health: engine.health().clone(),
        };
        let context = Context {
            tracker: tracker.clone(),
            events: events(),
        };
        let mut consumer_config = client_config(&config);
        consumer_config
            .set("group.id", &config.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", config.offset_reset)
            .set("enable.partition.eof", "false")
            // The Go original's sarama waits 10 s for a silent member before giving its
            // partitions to the others; librdkafka's own default is 45 s. A replica killed
            // without leaving the group (SIGKILL, a lost node) stalls its partitions that long,
            // so keep the original's (docs/deployment.md, "Scaling").
            .set("session.timeout.ms", "10000")
            // librdkafka prefetches up to 100 000 messages / 64 MB per partition by default;
            // the dispatcher holds at most MAX_IN_FLIGHT, so a few thousand are plenty, and
            // peak memory under load drops from ~58 MB to ~25 MB (`cargo xtask bench`).
            .set(
                "queued.min.messages",
                config.max_in_flight.max(1000).to_string(),
            )
            .set("queued.max.messages.kbytes", "4096");
        apply_properties(&mut consumer_config, &config);
        let consumer: Arc<StreamConsumer<Context>> =
            Arc::new(consumer_config.create_with_context(context)?);
        check_topics(&consumer, &engine).await?;
        consumer.subscribe(&[config.topic.as_str()])?;

        let mut producer_config = client_config(&config);
        producer_config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "60000")
            // Each outcome is awaited before its record settles: the default 5 ms linger is
            // added to every message (at in-flight 1, 57 instead of 78 msgs/s against a 10 ms
            // function); 1 ms keeps batching under load.
            .set("linger.ms", "1");
        apply_properties(&mut producer_config, &config);
        let producer: FutureProducer<Events> = producer_config.create_with_context(events())?;

        let (requeue_tx, requeue_rx) = mpsc::unbounded_channel();
        let mut source = KafkaSource {
            consumer: consumer.clone(),
            tracker,
            topic: Arc::from(config.topic.as_str()),
            key_header: config.key_header.clone(),
            requeue_tx,
            requeue_rx,
            health: engine.health().clone(),
        };
        let publisher = Arc::new(KafkaPublisher { producer });
        engine.health().set_ready(true);
        tracing::info!(topic = %config.topic, group = %config.group, "consuming");
        loop {
            match engine.dispatch(&mut source, &publisher).await {
                DispatchEnd::Shutdown => break,
                // This source handles broker errors itself and does not end.
                DispatchEnd::SourceEnded => continue,
            }
        }
        engine.health().set_ready(false);
        // Everything settled is stored; commit it now rather than waiting for the timer.
        match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
            Ok(()) => tracing::info!("final offsets committed"),
            Err(e) => tracing::debug!(error = %e, "final commit (nothing to commit?)"),
        }
        drop(source);
        drop(consumer);
        Ok(())
    }
}

/// A topic that does not exist is reported at start, naming its variable, rather than failing
/// every write a minute later. An unreachable broker is not an error here: the consumer keeps
/// retrying and readiness says so.
async fn check_topics(
    consumer: &Arc<StreamConsumer<Context>>,
    engine: &Engine,
) -> Result<(), BoxError> {
    for (_, var, topic) in engine.settings().common.named_topics() {
        let topic = topic.to_owned();
        let c = consumer.clone();
        let t = topic.clone();
        let metadata = tokio::task::spawn_blocking(move || {
            c.fetch_metadata(Some(&t), Duration::from_secs(10))
        })
        .await?;
        match metadata {
            Ok(m) => {
                let missing = m.topics().iter().any(|mt| {
                    mt.name() == topic
                        && matches!(
                            mt.error(),
                            Some(rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART)
                        )
                });
                if missing {
                    return Err(
                        format!("{var}: topic {topic:?} does not exist on the broker").into(),
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = %topic, "cannot read topic metadata yet");
                return Ok(());
            }
        }
    }
    Ok(())
}

fn client_config(config: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in config.client_properties() {
        c.set(k, v);
    }
    c.set_log_level(RDKafkaLogLevel::Warning);
    c
}

fn apply_properties(c: &mut ClientConfig, config: &KafkaConfig) {
    for (k, v) in &config.properties {
        c.set(k, v);
    }
}

/// librdkafka's logs and errors, for the consumer and the producer alike. The producer's own
/// poll thread delivers its errors at once, while the consumer's wait until it is polled — which
/// it is not while every in-flight slot waits on an outcome the producer cannot deliver.
struct Events {
    health: Arc<Health>,
}

impl ClientContext for Events {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        // KAFKA_PROPERTY_* go to both clients; each ignores the other's properties, which is
        // expected, not worth a warning at every start.
        if fac == "CONFWARN" && message.contains("will be ignored by this") {
            tracing::debug!(facility = fac, "librdkafka: {message}");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(facility = fac, "librdkafka: {message}"),
            _ => tracing::debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, "librdkafka: {reason}");
        // No broker reachable: not ready until records flow again.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.health.set_ready(false);
        }
    }
}

/// The consumer's context: [`Events`], plus rebalances (partitions that change hands start
/// afresh in the tracker).
struct Context {
    tracker: Arc<OffsetTracker>,
    events: Events,
}

impl ClientContext for Context {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.events.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.events.error(error, reason);
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

impl ConsumerContext for Context {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let p = partitions(tpl);
                tracing::info!(partitions = ?p, "partitions assigned");
                self.tracker.reset(&p);
                self.events.health.set_ready(true);
            }
            Rebalance::Revoke(tpl) => {
                let p = partitions(tpl);
                tracing::info!(partitions = ?p, "partitions revoked");
                self.tracker.reset(&p);
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance failed"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            // "No offset stored" is the quiet case of a timer commit with nothing new.
            if !e.to_string().contains("NoOffset") {
                tracing::warn!(error = %e, "offset commit failed");
            }
        }
    }
}

/// The consumer-group member.
struct KafkaSource {
    consumer: Arc<StreamConsumer<Context>>,
    tracker: Arc<OffsetTracker>,
    topic: Arc<str>,
    key_header: Option<String>,
    requeue_tx: mpsc::UnboundedSender<Delivery<(), KafkaAck>>,
    requeue_rx: mpsc::UnboundedReceiver<Delivery<(), KafkaAck>>,
    health: Arc<Health>,
}

impl Source for KafkaSource {
    type Meta = ();
    type Ack = KafkaAck;

    async fn next(&mut self) -> connector_core::dispatch::NextDelivery<Self> {
        let mut errors = 0u32;
        loop {
            // Records handed back (their outcome could not be written) go first.
            if let Ok(d) = self.requeue_rx.try_recv() {
                return Ok(Some(d));
            }
            let received = tokio::select! {
                d = self.requeue_rx.recv() => match d {
                    Some(d) => return Ok(Some(d)),
                    None => unreachable!("the source holds a sender"),
                },
                r = self.consumer.recv() => r,
            };
            let record = match received {
                Ok(record) => record,
                Err(e) => {
                    errors += 1;
                    self.health.set_ready(false);
                    let delay = Duration::from_millis(100 * u64::from(errors.min(50)));
                    tracing::warn!(error = %e, retry_in = ?delay, "consuming from Kafka failed");
                    tokio::time::sleep(delay).await;
                    continue;
                }
            };
            // A record arrived: connected (after an error, or after all brokers were down).
            self.health.set_ready(true);
            let partition = record.partition();
            let offset = record.offset();
            let key = record.key().map(bytes::Bytes::copy_from_slice);
            let mut headers = Vec::new();
            if let (Some(name), Some(k)) = (&self.key_header, record.key())
                && let Ok(k) = std::str::from_utf8(k)
            {
                headers.push((name.clone(), k.to_owned()));
            }
            if let Some(h) = record.headers() {
                // Text values only: the original dropped the others too (#93/#94).
                for header in h.iter() {
                    if let Some(Ok(v)) = header.value.map(std::str::from_utf8) {
                        headers.push((header.key.to_owned(), v.to_owned()));
                    }
                }
            }
            let payload = record
                .payload()
                .map(bytes::Bytes::copy_from_slice)
                .unwrap_or_default();
            self.tracker.received(&partition, offset as u64, offset);
            return Ok(Some(Delivery {
                message: Message {
                    payload,
                    headers,
                    key,
                    lane: Some(Lane(partition as u64)),
                    // Kafka keeps no delivery count; the engine counts what it sees.
                    id: Some(format!("{}/{partition}/{offset}", self.topic)),
                    delivery_count: None,
                    published_at: record
                        .timestamp()
                        .to_millis()
                        .and_then(|ms| u64::try_from(ms).ok())
                        .map(|ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)),
                },
                meta: (),
                ack: KafkaAck {
                    partition,
                    offset,
                    topic: self.topic.clone(),
                    tracker: self.tracker.clone(),
                    consumer: self.consumer.clone(),
                    requeue: self.requeue_tx.clone(),
                },
            }));
        }
    }

    async fn stop(&mut self) {
        // Nothing to do: not calling recv() stops consumption, and the partitions must stay
        // assigned until in-flight records are settled so their offsets can still be stored.
    }
}

/// Settles one record by storing its partition's new contiguous position.
pub struct KafkaAck {
    partition: i32,
    offset: i64,
    topic: Arc<str>,
    tracker: Arc<OffsetTracker>,
    consumer: Arc<StreamConsumer<Context>>,
    requeue: mpsc::UnboundedSender<Delivery<(), KafkaAck>>,
}

impl std::fmt::Debug for KafkaAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAck")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Acknowledger for KafkaAck {
    async fn ack(self) -> Result<(), BoxError> {
        let Some(last) = self.tracker.settled(&self.partition, self.offset as u64) else {
            return Ok(());
        };
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, self.partition, Offset::Offset(last + 1))?;
        if let Err(e) = self.consumer.store_offsets(&tpl) {
            // The partition was revoked meanwhile: its new owner resumes from the last commit.
            tracing::debug!(error = %e, partition = self.partition, "offset not stored");
        }
        Ok(())
    }

    async fn requeue(self, message: Message) -> Result<(), BoxError> {
        let requeue = self.requeue.clone();
        requeue
            .send(Delivery {
                message,
                meta: (),
                ack: self,
            })
            .map_err(|_| "the source has stopped; the record will be redelivered after restart")?;
        Ok(())
    }
}

/// Writes responses and error documents; resolves on the broker's delivery report.
struct KafkaPublisher {
    producer: FutureProducer<Events>,
}

/// A write the broker or the producer refuses for good becomes [`Rejected`]: retrying the same
/// record cannot succeed.
fn classify(e: KafkaError, size: usize) -> BoxError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    match e.rdkafka_error_code() {
        Some(Code::MessageSizeTooLarge) => Box::new(Rejected::too_large(
            size,
            "the topic's or the producer's message.max.bytes",
        )),
        Some(Code::TopicAuthorizationFailed | Code::ClusterAuthorizationFailed) => {
            Box::new(Rejected::refused(e.to_string()))
        }
        _ => Box::new(e),
    }
}

impl Publisher<()> for KafkaPublisher {
    /// The record is queued with the producer in this call (not on the future's first poll),
    /// which keeps what is queued in order per partition.
    fn publish(
        &self,
        record: Outbound<'_, ()>,
    ) -> impl std::future::Future<Output = Result<(), BoxError>> + Send {
        let mut out = FutureRecord::<[u8], [u8]>::to(record.topic).payload(&record.body[..]);
        // The source key keeps responses and errors in the source's partition order.
        if let Some(key) = &record.message.key {
            out = out.key(&key[..]);
        }
        let response_headers = match record.destination {
            Destination::Response => record.headers.len(),
            Destination::Error => 0,
        };
        if response_headers + record.trace_context.len() > 0 {
            let mut headers =
                OwnedHeaders::new_with_capacity(response_headers + record.trace_context.len());
            if record.destination == Destination::Response {
                // The write's trace context replaces one the function answered with.
                for (name, value) in record
                    .headers
                    .iter()
                    .filter(|(name, _)| !record.trace_context.contains_key(*name))
                {
                    headers = headers.insert(Header {
                        key: &canonical_key(name.as_str()),
                        value: Some(value.as_bytes()),
                    });
                }
            }
            // Only when tracing is on; W3C names, lower case, after the response's own.
            for (name, value) in record.trace_context {
                headers = headers.insert(Header {
                    key: name.as_str(),
                    value: Some(value.as_bytes()),
                });
            }
            out = out.headers(headers);
        }
        // A full queue is an error like any other failed write (the record is requeued): with
        // at most MAX_IN_FLIGHT outcomes outstanding it does not fill at librdkafka's defaults.
        let size = record.body.len();
        let queued = self.producer.send_result(out).map_err(|(e, _)| e);
        async move {
            let e = match queued {
                Ok(report) => match report.await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err((e, _))) => e,
                    Err(_cancelled) => {
                        return Err("the producer went away before the delivery report".into());
                    }
                },
                Err(e) => e,
            };
            Err(classify(e, size))
        }
    }

    fn queues_in_call_order(&self) -> bool {
        true
    }
}

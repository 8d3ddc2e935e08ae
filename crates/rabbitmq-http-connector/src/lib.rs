//! RabbitMQ glue for `connector-core`: a queue consumer as the [`Source`], publisher-confirmed
//! writes to the default exchange as the [`Publisher`], and reconnection.
//!
//! Ack model: `basic.ack` per delivery after the outcome is confirmed by the broker; at most
//! `CONCURRENT` calls at once, and prefetch (`basic.qos`) = 2 × `CONCURRENT` so the next calls
//! start while earlier outcomes wait for their confirm; unacknowledged deliveries never exceed
//! the prefetch. Whatever is not
//! acknowledged when the channel closes (shutdown, crash, lost connection) is requeued by the
//! broker.

mod config;

pub use config::RabbitConfig;

use connector_core::backoff::ReconnectBackoff;
use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::{
    Acknowledger, BoxError, ConnectError, Connector, Delivery, Destination, DispatchEnd,
    DispatchOptions, Engine, Message, Outbound, Publisher, Source,
};
use futures_lite::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connect, Connection, ConnectionProperties, Consumer,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio::sync::Notify;

/// The RabbitMQ connector.
#[derive(Debug)]
pub struct RabbitConnector {
    config: RabbitConfig,
}

impl Connector for RabbitConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "rabbitmq";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: RabbitConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        DispatchOptions {
            max_in_flight: self.config.concurrent as usize,
            lane_concurrency: 0,
            // While a response waits for its publisher confirm (a disk write for a persistent
            // message), the next delivery's call runs (`RabbitConfig::prefetch` allows for it).
            write_ahead: self.config.concurrent as usize,
        }
    }

    async fn check(&self, engine: &Engine) -> Vec<Check> {
        let connection = match connect(&self.config, None).await {
            Ok(c) => c,
            Err(ConnectError::Retry(e) | ConnectError::Fatal(e)) => {
                return vec![Check::fail(
                    "broker",
                    Some("HOST"),
                    format!("cannot connect: {e}"),
                )];
            }
        };
        let mut checks = vec![Check::ok(
            "broker",
            Some("HOST"),
            format!("connected, vhost {:?}", self.config.uri.vhost),
        )];
        for (var, queue) in queues(engine) {
            let what = match var {
                "TOPIC" => "source",
                "RESPONSE_TOPIC" => "responses",
                _ => "errors",
            };
            checks.push(match look_up(&connection, queue).await {
                Ok(Some(q)) => Check::ok(
                    what,
                    Some(var),
                    format!(
                        "queue {queue:?}: {} ready, {} consumers",
                        q.message_count(),
                        q.consumer_count()
                    ),
                ),
                Ok(None) => Check::fail(what, Some(var), format!("queue {queue:?} does not exist")),
                Err(e) => Check::fail(
                    what,
                    Some(var),
                    format!("cannot look at queue {queue:?}: {e}"),
                ),
            });
        }
        let _ = connection.close(200, "checked".into()).await;
        checks
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let mut backoff = ReconnectBackoff::default();
        let mut reconnecting = false;
        let stalls = AtomicU32::new(0);
        loop {
            let Some(mut session) = engine
                .connect("RabbitMQ", &mut backoff, || {
                    Session::open(&self.config, &engine, reconnecting.then_some(&stalls))
                })
                .await?
            else {
                return Ok(());
            };
            reconnecting = true;
            engine.health().set_ready(true);
            tracing::info!(queue = %self.config.queue, prefetch = self.config.prefetch(), "consuming");
            let end = engine
                .dispatch(&mut session.source, &session.publisher)
                .await;
            engine.health().set_ready(false);
            session.close().await;
            match end {
                DispatchEnd::Shutdown => return Ok(()),
                DispatchEnd::SourceEnded => {
                    tracing::warn!("RabbitMQ connection or channel lost; reconnecting")
                }
            }
        }
    }
}

/// Stalled handshakes in a row, while reconnecting, after which the connector stops anyway: each
/// leaves lapin's I/O thread behind (see `connect`), so they must not pile up.
const STALLS_IN_A_ROW: u32 = 3;

/// Opens the connection `HOST` names. `reconnecting`: after a session was lost, the count of
/// handshakes that stalled in a row (see below); `None` at start.
async fn connect(
    config: &RabbitConfig,
    reconnecting: Option<&AtomicU32>,
) -> Result<Connection, ConnectError> {
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("{} {}", RabbitConnector::NAME, config.queue).into());
    let runtime = lapin::runtime::default_runtime()?;
    // amqp091-go gives up on a connection attempt after `connection_timeout` (30 s unless
    // HOST says otherwise); lapin has no limit of its own, and a listener that accepts
    // but never speaks AMQP would hold the start forever.
    let limit = std::time::Duration::from_millis(
        config
            .uri
            .query
            .connection_timeout
            .filter(|&ms| ms > 0)
            .unwrap_or(30_000),
    );
    let connecting =
        config
            .uri
            .clone()
            .connect_with_config(properties, config.tls.clone(), runtime);
    // At start, fatal, as in the original (its dial failed and the process exited): a
    // listener that accepts but never speaks AMQP keeps lapin's I/O thread for the abandoned
    // handshake, so retrying could pile them up; a restarted pod starts clean.
    // When reconnecting, retried: a broker going down (`rabbitmqctl stop_app`) can accept a
    // connection and reset it mid-handshake, and lapin 4 then never resolves the handshake
    // (the resolver is dropped with the frame it could not send; its I/O thread does end on
    // the reset), so this deadline is what ends it; the broker coming back is worth the wait.
    // A peer that stays silent keeps the thread, hence the limit of `STALLS_IN_A_ROW`.
    let connected = tokio::time::timeout(limit, connecting).await.map_err(|_| {
        let e = format!("HOST: no AMQP handshake within {limit:?} (connection_timeout)");
        match reconnecting {
            Some(stalls) if stalls.fetch_add(1, Ordering::SeqCst) + 1 < STALLS_IN_A_ROW => {
                ConnectError::Retry(e.into())
            }
            Some(_) => ConnectError::Fatal(format!("{e}, {STALLS_IN_A_ROW} times in a row").into()),
            None => ConnectError::Fatal(e.into()),
        }
    })?;
    if let Some(stalls) = reconnecting {
        stalls.store(0, Ordering::SeqCst);
    }
    connected.map_err(ConnectError::from)
}

/// How long opening the channels and consumer of a session may take once connected: the broker
/// answers each step in milliseconds, and one that is alive but never answers (heartbeats do
/// not cover a missing reply) must not hold the connector forever.
const SESSION_SET_UP: std::time::Duration = std::time::Duration::from_secs(30);

/// How long closing a session may take: `close` waits for the broker's close-ok with
/// heartbeats already off.
const SESSION_CLOSE: std::time::Duration = std::time::Duration::from_secs(5);

/// The queues the connector uses, with their variables.
fn queues(engine: &Engine) -> Vec<(&'static str, &str)> {
    let common = &engine.settings().common;
    let mut wanted = vec![("TOPIC", common.topic.as_str())];
    wanted.extend(
        common
            .response_topic
            .as_deref()
            .map(|t| ("RESPONSE_TOPIC", t)),
    );
    wanted.extend(common.error_topic.as_deref().map(|t| ("ERROR_TOPIC", t)));
    wanted
}

/// A queue's state, or `None` when it does not exist; declares nothing.
async fn look_up(
    connection: &Connection,
    queue: &str,
) -> Result<Option<lapin::Queue>, lapin::Error> {
    // A failed passive declare closes its channel, so each look-up gets its own.
    let probe = connection.create_channel().await?;
    let declared = probe
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match declared {
        Ok(q) => {
            let _ = probe.close(200, "ok".into()).await;
            Ok(Some(q))
        }
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(e),
    }
}

/// One connection with its consuming and publishing channels.
struct Session {
    connection: Connection,
    source: RabbitSource,
    publisher: Arc<RabbitPublisher>,
}

impl Session {
    async fn open(
        config: &RabbitConfig,
        engine: &Engine,
        reconnecting: Option<&AtomicU32>,
    ) -> Result<Self, ConnectError> {
        let connection = connect(config, reconnecting).await?;
        match tokio::time::timeout(SESSION_SET_UP, Self::set_up(&connection, config, engine)).await
        {
            Ok(Ok((source, publisher))) => Ok(Self {
                connection,
                source,
                publisher,
            }),
            Ok(Err(e)) => {
                let _ =
                    tokio::time::timeout(SESSION_CLOSE, connection.close(200, "bye".into())).await;
                Err(e)
            }
            Err(_) => {
                let _ =
                    tokio::time::timeout(SESSION_CLOSE, connection.close(200, "bye".into())).await;
                Err(ConnectError::Retry(
                    format!(
                        "RabbitMQ did not answer opening the channels within {SESSION_SET_UP:?}"
                    )
                    .into(),
                ))
            }
        }
    }

    /// The consumer and the publisher on their own channels of `connection`.
    async fn set_up(
        connection: &Connection,
        config: &RabbitConfig,
        engine: &Engine,
    ) -> Result<(RabbitSource, Arc<RabbitPublisher>), ConnectError> {
        // The original never declares queues; neither do we. But a queue that does not exist
        // is reported at start rather than failing every message.
        for (var, queue) in queues(engine) {
            if look_up(connection, queue).await?.is_none() {
                return Err(ConnectError::Fatal(
                    format!("{var}: queue {queue:?} does not exist on the broker").into(),
                ));
            }
        }
        let common = &engine.settings().common;

        let consume = connection.create_channel().await?;
        consume
            .basic_qos(config.prefetch(), BasicQosOptions::default())
            .await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = consume
            .basic_consume(
                config.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let broken = Arc::new(Notify::new());
        Ok((
            RabbitSource {
                tag: consumer.tag(),
                consumer,
                channel: consume,
                publisher_broken: broken.clone(),
            },
            Arc::new(RabbitPublisher {
                channel: publish,
                content_type: common.content_type.as_str().into(),
                broken,
            }),
        ))
    }

    /// Closing the connection hands every unacknowledged delivery back to the queue.
    async fn close(self) {
        let closing = self.connection.close(200, "connector stopping".into());
        let _ = tokio::time::timeout(SESSION_CLOSE, closing).await;
    }
}

fn is_not_found(e: &lapin::Error) -> bool {
    // 404 NOT_FOUND is the reply code of a passive declare of a missing queue.
    e.to_string().contains("NOT_FOUND")
}

/// What the publisher copies from the source message onto responses and errors.
#[derive(Debug, Default)]
pub struct AmqpMeta {
    correlation_id: Option<ShortString>,
    message_id: Option<ShortString>,
    reply_to: Option<ShortString>,
}

/// The queue consumer.
struct RabbitSource {
    consumer: Consumer,
    channel: Channel,
    tag: ShortString,
    /// Fired by the publisher when its channel is gone: end this session so it is rebuilt,
    /// instead of consuming while every write fails.
    publisher_broken: Arc<Notify>,
}

impl Source for RabbitSource {
    type Meta = AmqpMeta;
    type Ack = RabbitAck;

    async fn next(&mut self) -> Result<Option<Delivery<AmqpMeta, RabbitAck>>, BoxError> {
        let next = tokio::select! {
            next = self.consumer.next() => next,
            () = self.publisher_broken.notified() => {
                tracing::warn!("the publishing channel is closed");
                return Ok(None);
            }
        };
        let delivery = match next {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "consumer error");
                return Ok(None);
            }
            None => return Ok(None),
        };
        let props = &delivery.properties;
        let headers = props
            .headers()
            .as_ref()
            .map(|table| {
                table
                    .inner()
                    .iter()
                    .filter_map(|(k, v)| Some((k.to_string(), text_value(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        let meta = AmqpMeta {
            correlation_id: props.correlation_id().clone(),
            message_id: props.message_id().clone(),
            reply_to: props.reply_to().clone(),
        };
        // A quorum queue counts earlier failed deliveries in `x-delivery-count`; a classic
        // queue only flags a redelivery, so 2 is a lower bound there.
        let returned = props.headers().as_ref().and_then(|table| {
            table.inner().iter().find_map(|(k, v)| {
                (k.as_str() == "x-delivery-count")
                    .then(|| amqp_count(v))
                    .flatten()
            })
        });
        let delivery_count = match returned {
            Some(n) => n.saturating_add(1),
            None if delivery.redelivered => 2,
            None => 1,
        };
        Ok(Some(Delivery {
            message: Message {
                payload: delivery.data.into(),
                headers,
                key: None,
                lane: None,
                id: props
                    .message_id()
                    .as_ref()
                    .map(|id| id.as_str().to_owned())
                    .filter(|id| !id.is_empty()),
                delivery_count: Some(delivery_count),
                published_at: props
                    .timestamp()
                    .map(|secs| std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
            },
            meta,
            ack: RabbitAck(delivery.acker),
        }))
    }

    async fn stop(&mut self) {
        if let Err(e) = self
            .channel
            .basic_cancel(self.tag.clone(), BasicCancelOptions::default())
            .await
        {
            tracing::debug!(error = %e, "basic.cancel failed");
        }
    }
}

/// AMQP header values that are text become HTTP headers; other types are not forwarded.
fn text_value(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A count in an AMQP table value (RabbitMQ writes `x-delivery-count` as a long long).
fn amqp_count(v: &AMQPValue) -> Option<u32> {
    let n: i64 = match v {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    u32::try_from(n).ok()
}

/// Settles one delivery on the channel it came from.
#[derive(Debug)]
pub struct RabbitAck(lapin::Acker);

impl Acknowledger for RabbitAck {
    async fn ack(self) -> Result<(), BoxError> {
        self.0.ack(BasicAckOptions::default()).await?;
        Ok(())
    }

    async fn requeue(self, _message: Message) -> Result<(), BoxError> {
        self.0
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await?;
        Ok(())
    }
}

/// Publishes to the default exchange, routing key = queue name, and waits for the confirm.
struct RabbitPublisher {
    channel: Channel,
    content_type: ShortString,
    broken: Arc<Notify>,
}

impl Publisher<AmqpMeta> for RabbitPublisher {
    async fn publish(&self, record: Outbound<'_, AmqpMeta>) -> Result<(), BoxError> {
        // A response carries the body the function sent, so it carries the type the function
        // gave it; CONTENT_TYPE (the original's choice for both) when the function gave none,
        // and for error documents. Persistent, and the source's correlation-id/message-id/
        // reply-to so replies can be matched.
        let content_type = match record.destination {
            Destination::Response => response_content_type(record.headers),
            Destination::Error => None,
        };
        let mut props = BasicProperties::default()
            .with_content_type(content_type.unwrap_or_else(|| self.content_type.clone()))
            .with_delivery_mode(2);
        if let Some(v) = &record.meta.correlation_id {
            props = props.with_correlation_id(v.clone());
        }
        if let Some(v) = &record.meta.message_id {
            props = props.with_message_id(v.clone());
        }
        if let Some(v) = &record.meta.reply_to {
            props = props.with_reply_to(v.clone());
        }
        // Only when tracing is on: the write's context as AMQP headers.
        if !record.trace_context.is_empty() {
            let mut table = lapin::types::FieldTable::default();
            for (name, value) in record.trace_context {
                table.insert(
                    name.as_str().into(),
                    lapin::types::AMQPValue::LongString(value.as_bytes().into()),
                );
            }
            props = props.with_headers(table);
        }
        let confirm = self.confirmed_publish(record, props).await;
        if confirm.is_err() && !self.channel.status().connected() {
            self.broken.notify_one();
        }
        confirm
    }
}

/// The function's `Content-Type`, when it sent one that fits an AMQP short string.
fn response_content_type(headers: &http::HeaderMap) -> Option<ShortString> {
    let value = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    (!value.is_empty() && value.len() <= 255).then(|| value.into())
}

impl RabbitPublisher {
    async fn confirmed_publish(
        &self,
        record: Outbound<'_, AmqpMeta>,
        props: BasicProperties,
    ) -> Result<(), BoxError> {
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                record.topic.into(),
                // mandatory: an unroutable write comes back instead of vanishing.
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &record.body,
                props,
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(format!(
                "the broker could not route the message to queue {:?}",
                record.topic
            )
            .into()),
            Confirmation::Nack(_) => Err("the broker refused the message (nack)".into()),
        }
    }
}

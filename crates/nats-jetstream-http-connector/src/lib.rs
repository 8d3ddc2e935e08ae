//! NATS JetStream glue for `connector-core`: a durable pull consumer as the [`Source`],
//! JetStream publishes (awaiting the stream's ack) as the [`Publisher`].
//!
//! Ack model: each message is acked after its outcome is stored; while it is being handled an
//! in-progress ack every half `ACKWAIT` keeps the server from redelivering it; a message whose
//! outcome could not be written is nak'ed for redelivery. Fixes over the original: success
//! without `RESPONSE_TOPIC` is acked (it was redelivered forever), SIGTERM drains and keeps the
//! durable consumer (SIGINT used to delete it), and user/password, token, nkey, credentials-file
//! and TLS authentication are available.

mod adopt;
mod config;

pub use adopt::{MARKER_INACTIVE, marker_name};
pub use config::NatsConfig;

use async_nats::jetstream::{self, AckKind, consumer::pull};
use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::headers::{HeaderFamily, canonical_key};
use connector_core::{
    Acknowledger, BoxError, Connector, Delivery, DispatchEnd, DispatchOptions, Engine, Message,
    Outbound, Publisher, Rejected, Source,
};
use futures_lite::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The NATS JetStream connector.
#[derive(Debug)]
pub struct NatsConnector {
    config: NatsConfig,
}

impl Connector for NatsConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "nats";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
    const HEADERS: HeaderFamily = HeaderFamily::Nats;

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: NatsConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        DispatchOptions {
            max_in_flight: self.config.concurrent,
            lane_concurrency: 0,
            // The next message is pulled and POSTed while the previous response waits for its
            // stream ack; the publish is queued first (`queues_in_call_order`), so CONCURRENT=1
            // keeps the stream's order.
            write_ahead: self.config.concurrent,
        }
    }

    async fn check(&self, engine: &Engine) -> Vec<Check> {
        let config = &self.config;
        let connected =
            async { Ok::<_, BoxError>(options(config).await?.connect(servers(config)).await?) };
        let client = match connected.await {
            Ok(c) => c,
            Err(e) => {
                return vec![Check::fail(
                    "broker",
                    Some("NATS_SERVER"),
                    format!("cannot connect: {e}"),
                )];
            }
        };
        let mut checks = vec![Check::ok("broker", Some("NATS_SERVER"), "connected")];
        let js = jetstream::new(client);
        let common = &engine.settings().common;
        for (what, var, subject) in [
            (
                "responses",
                "RESPONSE_TOPIC",
                common.response_topic.as_deref(),
            ),
            ("errors", "ERROR_TOPIC", common.error_topic.as_deref()),
        ] {
            if let Some(subject) = subject {
                checks.push(match js.stream_by_subject(subject).await {
                    Ok(stream) => Check::ok(
                        what,
                        Some(var),
                        format!("subject {subject:?} is captured by stream {stream:?}"),
                    ),
                    Err(_) => Check::fail(
                        what,
                        Some(var),
                        format!("no JetStream stream captures subject {subject:?}"),
                    ),
                });
            }
        }
        match stream_of(&js, config).await {
            Ok(mut stream) => {
                let name = stream
                    .info()
                    .await
                    .map(|i| i.config.name.clone())
                    .unwrap_or_default();
                checks.push(Check::ok(
                    "source",
                    Some("TOPIC"),
                    format!("subject {:?} is in stream {name:?}", config.subject),
                ));
                checks.push(adopt::preview(&stream, config).await);
            }
            Err(e) => {
                let text = e.to_string();
                let (variable, detail) = text.split_once(": ").unwrap_or(("TOPIC", &text));
                checks.push(Check::fail("source", Some(variable), detail));
            }
        }
        checks
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let config = self.config;
        let mut backoff = connector_core::backoff::ReconnectBackoff::default();
        let Some(client) = engine
            .connect("NATS", &mut backoff, || async {
                connect(&config, &engine)
                    .await
                    .map_err(connector_core::ConnectError::Retry)
            })
            .await?
        else {
            return Ok(());
        };
        let js = jetstream::new(client.clone());
        let consumer = consumer(&js, &config, &engine).await?;
        let ack_wait = consumer.cached_info().config.ack_wait;
        let publisher = Arc::new(NatsPublisher { js: js.clone() });
        loop {
            let messages = consumer
                .stream()
                .max_messages_per_batch(config.concurrent)
                .heartbeat(Duration::from_secs(5))
                .messages()
                .await;
            let messages = match messages {
                Ok(m) => m,
                Err(e) => {
                    engine.health().set_ready(false);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?delay, "cannot pull from the consumer");
                    if !engine.sleep_unless_shutdown(delay).await {
                        break;
                    }
                    continue;
                }
            };
            backoff.reset();
            engine.health().set_ready(true);
            tracing::info!(subject = %config.subject, consumer = %config.consumer, "consuming");
            let mut source = NatsSource {
                messages: Some(messages),
                ack_wait,
                health: engine.health().clone(),
            };
            if engine.dispatch(&mut source, &publisher).await == DispatchEnd::Shutdown {
                break;
            }
        }
        engine.health().set_ready(false);
        // Flush acks still buffered in the client before leaving; the durable consumer stays.
        if let Err(e) = client.flush().await {
            tracing::debug!(error = %e, "flush on shutdown");
        }
        Ok(())
    }
}

/// The connect options `NATS_*` ask for: authentication and TLS.
async fn options(config: &NatsConfig) -> Result<async_nats::ConnectOptions, BoxError> {
    let mut options = async_nats::ConnectOptions::new()
        .name(NatsConnector::NAME)
        .connection_timeout(Duration::from_secs(5))
        .require_tls(config.tls);
    if let Some((user, password)) = &config.user_password {
        options = options.user_and_password(user.clone(), password.expose().to_owned());
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_owned());
    }
    if let Some(seed) = &config.nkey {
        options = options.nkey(seed.expose().to_owned());
    }
    if let Some(path) = &config.credentials_file {
        options = options.credentials_file(path).await?;
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.into());
    }
    if let Some((cert, key)) = &config.client_cert {
        options = options.add_client_certificate(cert.into(), key.into());
    }
    Ok(options)
}

fn servers(config: &NatsConfig) -> Vec<async_nats::ServerAddr> {
    config
        .servers
        .expose()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

async fn connect(config: &NatsConfig, engine: &Engine) -> Result<async_nats::Client, BoxError> {
    let mut options = options(config).await?;
    let health = engine.health().clone();
    options = options.event_callback(move |event| {
        let health = health.clone();
        async move {
            match event {
                async_nats::Event::Disconnected => {
                    health.set_ready(false);
                    tracing::warn!("disconnected from NATS; reconnecting");
                }
                async_nats::Event::Connected => {
                    health.set_ready(true);
                    tracing::info!("connected to NATS");
                }
                other => tracing::debug!(event = %other, "NATS event"),
            }
        }
    });
    Ok(options.connect(servers(config)).await?)
}

/// `--restore-push`: the way back to the original connector. Replaces the pull durable
/// `CONSUMER` by a push durable of the same name at its position (see [`adopt`]'s module
/// documentation) and returns the stream sequence it starts at.
pub async fn restore_push(config: &NatsConfig) -> Result<u64, BoxError> {
    let client = options(config).await?.connect(servers(config)).await?;
    let js = jetstream::new(client.clone());
    let stream = stream_of(&js, config).await?;
    let start = adopt::restore_push(&stream, config).await?;
    client.flush().await?;
    Ok(start)
}

/// The stream holding `TOPIC`: `STREAM`, or the one that captures the subject.
async fn stream_of(
    js: &jetstream::Context,
    config: &NatsConfig,
) -> Result<jetstream::stream::Stream, BoxError> {
    let stream_name = match &config.stream {
        Some(s) => s.clone(),
        None => js.stream_by_subject(config.subject.as_str()).await.map_err(|e| {
            format!(
                "TOPIC: no JetStream stream captures subject {:?} ({e}); create one or set STREAM",
                config.subject
            )
        })?,
    };
    Ok(js
        .get_stream(&stream_name)
        .await
        .map_err(|e| format!("STREAM: cannot open stream {stream_name:?}: {e}"))?)
}

/// Binds the durable pull consumer, or creates it (deliver-all, explicit acks, `ACKWAIT`,
/// filtered on `TOPIC`) in the stream that captures `TOPIC`. Also checks that the response and
/// error subjects are captured by some stream, since JetStream publishes need one.
async fn consumer(
    js: &jetstream::Context,
    config: &NatsConfig,
    engine: &Engine,
) -> Result<jetstream::consumer::PullConsumer, BoxError> {
    let common = &engine.settings().common;
    for (var, subject) in [
        ("RESPONSE_TOPIC", common.response_topic.as_deref()),
        ("ERROR_TOPIC", common.error_topic.as_deref()),
    ] {
        if let Some(subject) = subject
            && js.stream_by_subject(subject).await.is_err()
        {
            return Err(format!(
                "{var}: no JetStream stream captures subject {subject:?}; create one or fix the name"
            )
            .into());
        }
    }
    let stream = stream_of(js, config).await?;
    adopt::bind(&stream, config).await
}

/// The pull stream.
struct NatsSource {
    messages: Option<pull::Stream>,
    ack_wait: Duration,
    health: Arc<connector_core::telemetry::Health>,
}

impl Source for NatsSource {
    type Meta = ();
    type Ack = NatsAck;

    async fn next(&mut self) -> connector_core::dispatch::NextDelivery<Self> {
        loop {
            let Some(messages) = self.messages.as_mut() else {
                return Ok(None);
            };
            let message = match messages.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Missed heartbeats and the like: the stream recovers by itself.
                    self.health.set_ready(false);
                    tracing::warn!(error = %e, "pulling messages failed");
                    continue;
                }
                None => return Ok(None),
            };
            self.health.set_ready(true);
            let headers = message
                .headers
                .as_ref()
                .map(|h| {
                    h.iter()
                        .flat_map(|(name, values)| {
                            values
                                .iter()
                                .map(move |v| (name.to_string(), v.as_str().to_owned()))
                        })
                        .collect()
                })
                .unwrap_or_default();
            let payload = message.payload.clone();
            let (id, delivery_count, published_at) = match message.info() {
                Ok(info) => (
                    Some(format!("{}/{}", info.stream, info.stream_sequence)),
                    u32::try_from(info.delivered).ok(),
                    Some(std::time::SystemTime::from(info.published)),
                ),
                Err(_) => (None, None, None),
            };
            let message = Arc::new(message);
            let progress = CancellationToken::new();
            // In-progress acks keep a slow call from being redelivered to another replica.
            // Not more often than every 100 ms, whatever the ack wait (it may be sub-second).
            tokio::spawn(keep_in_progress(
                message.clone(),
                (self.ack_wait / 2).max(Duration::from_millis(100)),
                progress.clone(),
            ));
            return Ok(Some(Delivery {
                message: Message {
                    payload,
                    headers,
                    id,
                    delivery_count,
                    published_at,
                    ..Default::default()
                },
                meta: (),
                ack: NatsAck { message, progress },
            }));
        }
    }

    async fn stop(&mut self) {
        // Dropping the pull stream stops fetching; buffered messages are redelivered after
        // ACKWAIT. The durable consumer itself is kept.
        self.messages = None;
    }
}

async fn keep_in_progress(
    message: Arc<jetstream::Message>,
    every: Duration,
    done: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = done.cancelled() => return,
        }
        if let Err(e) = message.ack_with(AckKind::Progress).await {
            tracing::debug!(error = %e, "in-progress ack failed");
        }
    }
}

/// Acks or naks one message.
pub struct NatsAck {
    message: Arc<jetstream::Message>,
    progress: CancellationToken,
}

impl std::fmt::Debug for NatsAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsAck { .. }")
    }
}

impl Acknowledger for NatsAck {
    async fn ack(self) -> Result<(), BoxError> {
        self.progress.cancel();
        self.message.ack().await
    }

    async fn requeue(self, _message: Message) -> Result<(), BoxError> {
        self.progress.cancel();
        self.message.ack_with(AckKind::Nak(None)).await
    }
}

/// JetStream publishes, resolved on the stream's ack.
struct NatsPublisher {
    js: jetstream::Context,
}

/// A message over the server's `max_payload` can never be published: [`Rejected`], so the
/// engine writes an error document instead of requeueing it forever.
fn write_error(e: async_nats::jetstream::context::PublishError, size: usize) -> BoxError {
    use async_nats::jetstream::context::PublishErrorKind;
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => {
            Box::new(Rejected::too_large(size, "the server's max_payload"))
        }
        _ => Box::new(e),
    }
}

impl Publisher<()> for NatsPublisher {
    async fn publish(&self, record: Outbound<'_, ()>) -> Result<(), BoxError> {
        let mut headers = async_nats::HeaderMap::new();
        // The write's trace context (below) replaces one the function answered with.
        for (name, value) in record
            .headers
            .iter()
            .filter(|(name, _)| !record.trace_context.contains_key(*name))
        {
            if let Ok(v) = value.to_str() {
                headers.append(canonical_key(name.as_str()).as_str(), v);
            }
        }
        // Only when tracing is on: the write's context, under the W3C names.
        for (name, value) in record.trace_context {
            if let Ok(v) = value.to_str() {
                headers.insert(name.as_str(), v);
            }
        }
        let size = record.body.len();
        let sent = if headers.is_empty() {
            self.js.publish(record.topic.to_owned(), record.body).await
        } else {
            self.js
                .publish_with_headers(record.topic.to_owned(), headers, record.body)
                .await
        };
        let ack = sent.map_err(|e| write_error(e, size))?;
        ack.await.map_err(|e| write_error(e, size))?;
        Ok(())
    }

    /// The first poll hands the publish to the client's command queue (after a permit from a
    /// FIFO semaphore), which writes in the order commands were queued.
    fn queues_in_call_order(&self) -> bool {
        true
    }
}

/// The whole of `nats-jetstream-http-connector --restore-push`: the connector's own
/// configuration from the environment (exit 78 when it is wrong), then [`restore_push`];
/// exit 0 once the push durable is in place, 1 if it cannot be.
pub fn restore_push_main() -> std::process::ExitCode {
    connector_core::app::run_task::<NatsConnector, _, _>(|_, connector| async move {
        let config = connector.config;
        match restore_push(&config).await {
            Ok(start) => {
                tracing::info!(
                    consumer = %config.consumer,
                    stream_sequence = start,
                    "the durable consumer is a push durable again, starting right after its last acknowledged message; the original connector can bind it now"
                );
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot restore the push durable");
                std::process::ExitCode::FAILURE
            }
        }
    })
}

//! Google Cloud Pub/Sub glue for `connector-core`: a streaming pull as the [`Source`] (flow
//! control = `MAX_IN_FLIGHT`, leases extended by the client while a message is in flight), one
//! long-lived publisher per destination topic as the [`Publisher`].
//!
//! Ack model: ack after the outcome is published (the publish future resolves with the message
//! id); nack when the outcome could not be written, so Pub/Sub redelivers at once. Fixes over the
//! original: it acked before publishing, never nacked failures (an hour-long hold), built a new
//! client per publish and **hung after its first publish**; attributes accumulated across
//! messages; response attributes came from the request.

mod config;

pub use config::{Credentials, PubSubConfig};

use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::headers::canonical_key;
use connector_core::{
    Acknowledger, BoxError, Connector, Delivery, Destination, DispatchEnd, DispatchOptions, Engine,
    Lane, Message, Outbound, Publisher, Rejected, Source,
};
use google_cloud_pubsub::client::{Publisher as PsPublisher, Subscriber, TopicAdmin};
use google_cloud_pubsub::subscriber::handler::Handler;
use google_cloud_pubsub::subscriber::{MessageStream, ShutdownBehavior};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// The Pub/Sub connector.
#[derive(Debug)]
pub struct PubSubConnector {
    config: PubSubConfig,
}

impl Connector for PubSubConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "gcp_pubsub";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: PubSubConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        DispatchOptions {
            max_in_flight: self.config.max_in_flight,
            // Messages with an ordering key run one at a time per key, in order.
            lane_concurrency: 1,
            write_ahead: 0,
        }
    }

    async fn check(&self, _engine: &Engine) -> Vec<Check> {
        let config = &self.config;
        if !config.check_topics {
            return vec![Check::warn(
                "broker",
                Some("PUBSUB_EMULATOR_HOST"),
                "the subscription and topics are looked at over REST, whose proxy rules differ from the data calls' for an emulator: not checked",
            )];
        }
        let (endpoint, credentials) = match client_options(&config.credentials) {
            Ok(o) => o,
            Err(e) => {
                return vec![Check::fail(
                    "broker",
                    Some("GOOGLE_APPLICATION_CREDENTIALS"),
                    e.to_string(),
                )];
            }
        };
        let mut topics = TopicAdmin::builder();
        let mut subscriptions = google_cloud_pubsub::client::SubscriptionAdmin::builder();
        if let Some(e) = &endpoint {
            topics = topics.with_endpoint(e.clone());
            subscriptions = subscriptions.with_endpoint(e.clone());
        }
        if let Some(c) = &credentials {
            topics = topics.with_credentials(c.clone());
            subscriptions = subscriptions.with_credentials(c.clone());
        }
        let (topics, subscriptions) = match (topics.build().await, subscriptions.build().await) {
            (Ok(t), Ok(s)) => (t, s),
            (Err(e), _) | (_, Err(e)) => {
                return vec![Check::fail(
                    "broker",
                    None,
                    format!("cannot make a Pub/Sub client: {e}"),
                )];
            }
        };
        let mut checks = Vec::new();
        checks.push(
            match subscriptions
                .get_subscription()
                .set_subscription(config.subscription.clone())
                .send()
                .await
            {
                Ok(s) => Check::ok(
                    "source",
                    Some("SUBSCRIPTION_NAME"),
                    format!(
                        "subscription {} on topic {}, ack deadline {} s",
                        config.subscription, s.topic, s.ack_deadline_seconds
                    ),
                ),
                Err(e) => Check::fail(
                    "source",
                    Some("SUBSCRIPTION_NAME"),
                    format!("subscription {}: {e}", config.subscription),
                ),
            },
        );
        for (what, var, topic) in [
            ("responses", "RESPONSE_TOPIC", &config.response_topic),
            ("errors", "ERROR_TOPIC", &config.error_topic),
        ] {
            let Some(topic) = topic else { continue };
            checks.push(match topics.get_topic().set_topic(topic.clone()).send().await {
                Ok(_) => Check::ok(what, Some(var), format!("topic {topic} exists")),
                Err(e)
                    if e.status().is_some_and(|s| {
                        s.code == google_cloud_gax::error::rpc::Code::PermissionDenied
                    }) =>
                {
                    Check::warn(what, Some(var), format!("topic {topic}: cannot be checked without pubsub.topics.get; publishing will tell"))
                }
                Err(e) => Check::fail(what, Some(var), format!("topic {topic}: {e}")),
            });
        }
        checks
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let config = self.config;
        let (endpoint, credentials) = client_options(&config.credentials)?;

        // Destination topics must exist; say so at start, naming the variable.
        let mut admin = TopicAdmin::builder();
        if let Some(e) = &endpoint {
            admin = admin.with_endpoint(e.clone());
        }
        if let Some(c) = &credentials {
            admin = admin.with_credentials(c.clone());
        }
        let admin = admin.build().await?;
        for (var, topic) in [
            ("RESPONSE_TOPIC", &config.response_topic),
            ("ERROR_TOPIC", &config.error_topic),
        ] {
            if let Some(topic) = topic
                && config.check_topics
                && let Err(e) = admin.get_topic().set_topic(topic.clone()).send().await
            {
                // The original only ever published, so an identity with the Publisher role
                // alone (no pubsub.topics.get) must keep working: it cannot be checked, and
                // the first publish will tell.
                let denied = e.status().is_some_and(|s| {
                    s.code == google_cloud_gax::error::rpc::Code::PermissionDenied
                });
                if denied {
                    tracing::warn!(variable = var, topic = %topic, "cannot check that the topic exists (no pubsub.topics.get permission); publishing will tell");
                    continue;
                }
                return Err(format!("{var}: cannot use topic {topic:?}: {e}").into());
            }
        }

        // The data calls take HTTPS_PROXY as the original's gRPC did; the client library
        // cannot, so a loopback forwarder carries them (connector_core::grpc_proxy).
        let forwarder = match &config.grpc_proxy {
            Some(proxy) => {
                let f = connector_core::grpc_proxy::GrpcForwarder::start(
                    config.grpc_target.clone(),
                    proxy.clone(),
                    connector_core::grpc_proxy::GrpcForwarder::native_roots(),
                )
                .await?;
                tracing::info!(proxy = proxy.var, target = %config.grpc_target, "Pub/Sub data calls go through the proxy");
                Some(f)
            }
            None => None,
        };
        let data_endpoint = forwarder
            .as_ref()
            .map(|f| f.endpoint())
            .or_else(|| endpoint.clone());
        let mut publishers = HashMap::new();
        for topic in [&config.response_topic, &config.error_topic]
            .into_iter()
            .flatten()
        {
            let mut b =
                PsPublisher::builder(topic.clone()).set_delay_threshold(std::time::Duration::ZERO);
            if let Some(e) = &data_endpoint {
                b = b.with_endpoint(e.clone());
            }
            if let Some(c) = &credentials {
                b = b.with_credentials(c.clone());
            }
            publishers.insert(topic.clone(), b.build().await?);
        }
        let publisher = Arc::new(PubSubPublisher {
            publishers,
            response_topic: config.response_topic.clone(),
            error_topic: config.error_topic.clone(),
        });

        let mut subscriber = Subscriber::builder();
        if let Some(e) = &data_endpoint {
            subscriber = subscriber.with_endpoint(e.clone());
        }
        if let Some(c) = &credentials {
            subscriber = subscriber.with_credentials(c.clone());
        }
        let subscriber = subscriber.build().await?;
        let mut backoff = connector_core::backoff::ReconnectBackoff::default();
        loop {
            let stream = subscriber
                .subscribe(config.subscription.clone())
                .set_max_outstanding_messages(config.max_in_flight as i64)
                // After our drain every delivered message is settled; whatever the client still
                // buffers goes straight back to the subscription for other replicas.
                .set_shutdown_behavior(ShutdownBehavior::NackImmediately)
                .build();
            engine.health().set_ready(true);
            tracing::info!(subscription = %config.subscription, "consuming");
            let mut source = PubSubSource {
                stream,
                health: engine.health().clone(),
                fatal: None,
            };
            let end = engine.dispatch(&mut source, &publisher).await;
            engine.health().set_ready(false);
            if let Some(fatal) = source.fatal.take() {
                return Err(fatal);
            }
            // Acks are sent in the background: wait until the ones still pending have been
            // delivered before the stream (and possibly the process) goes away.
            source.stream.shutdown_token().shutdown().await;
            drop(source);
            if end == DispatchEnd::Shutdown {
                break;
            }
            let delay = backoff.next_delay();
            tracing::warn!(retry_in = ?delay, "the streaming pull ended; reopening");
            if !engine.sleep_unless_shutdown(delay).await {
                break;
            }
        }
        for p in publisher.publishers.values() {
            p.flush().await;
        }
        Ok(())
    }
}

type ClientOptions = (
    Option<String>,
    Option<google_cloud_auth::credentials::Credentials>,
);

/// Endpoint override and credentials for every client; `None` means the library's default
/// (the global endpoint, Application Default Credentials).
fn client_options(credentials: &Credentials) -> Result<ClientOptions, BoxError> {
    use google_cloud_auth::credentials::{anonymous, service_account};
    Ok(match credentials {
        Credentials::Emulator(host) => (
            Some(format!("http://{host}")),
            Some(anonymous::Builder::new().build()),
        ),
        Credentials::ServiceAccount(json) => {
            let key: serde_json::Value = serde_json::from_str(json.expose())?;
            (None, Some(service_account::Builder::new(key).build()?))
        }
        Credentials::ApplicationDefault => (None, None),
    })
}

/// The streaming pull.
struct PubSubSource {
    stream: MessageStream,
    health: Arc<connector_core::telemetry::Health>,
    fatal: Option<BoxError>,
}

impl Source for PubSubSource {
    type Meta = ();
    type Ack = PubSubAck;

    async fn next(&mut self) -> connector_core::dispatch::NextDelivery<Self> {
        match self.stream.next().await {
            Some(Ok((message, handler))) => {
                self.health.set_ready(true);
                // Per message, never accumulated across messages as the original did.
                let headers = message.attributes.into_iter().collect();
                let lane = (!message.ordering_key.is_empty()).then(|| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    message.ordering_key.hash(&mut h);
                    Lane(h.finish())
                });
                // Pub/Sub counts attempts only on a subscription with a dead-letter policy;
                // elsewhere the engine counts what it sees.
                let delivery_count = handler
                    .delivery_attempt()
                    .and_then(|n| u32::try_from(n).ok());
                let published_at = message
                    .publish_time
                    .and_then(|t| std::time::SystemTime::try_from(t).ok());
                Ok(Some(Delivery {
                    message: Message {
                        payload: message.data,
                        headers,
                        key: None,
                        lane,
                        id: (!message.message_id.is_empty()).then_some(message.message_id),
                        delivery_count,
                        published_at,
                    },
                    meta: (),
                    ack: PubSubAck(handler),
                }))
            }
            Some(Err(e)) => {
                let text = e.to_string();
                if text.contains("NOT_FOUND")
                    || text.contains("NotFound")
                    || text.contains("not found")
                {
                    self.fatal = Some(format!("SUBSCRIPTION_NAME: {text}").into());
                } else {
                    tracing::warn!(error = %e, "streaming pull failed");
                }
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn stop(&mut self) {
        // Keep the stream: its lease loop must stay alive to send the acks of messages still
        // being drained. The dispatcher simply stops taking messages.
    }
}

/// Acks or nacks through the stream's lease manager.
pub struct PubSubAck(Handler);

impl std::fmt::Debug for PubSubAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PubSubAck { .. }")
    }
}

impl Acknowledger for PubSubAck {
    async fn ack(self) -> Result<(), BoxError> {
        self.0.ack();
        Ok(())
    }

    async fn requeue(self, _message: Message) -> Result<(), BoxError> {
        self.0.nack();
        Ok(())
    }
}

/// One long-lived publisher per destination topic.
struct PubSubPublisher {
    publishers: HashMap<String, PsPublisher>,
    response_topic: Option<String>,
    error_topic: Option<String>,
}

/// Pub/Sub attribute limits: at most 100, keys ≤ 256 bytes and not `goog*`, values ≤ 1024 bytes.
fn attributes(headers: &http::HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (name, value) in headers {
        let key = canonical_key(name.as_str());
        let Ok(value) = value.to_str() else { continue };
        if out.len() >= 100
            || key.len() > 256
            || value.len() > 1024
            || key.to_ascii_lowercase().starts_with("goog")
        {
            continue;
        }
        out.entry(key)
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(value);
            })
            .or_insert_with(|| value.to_owned());
    }
    out.retain(|_, v| v.len() <= 1024);
    out
}

/// The spelling the original stored `key` under (`KEDA-Topic`, not the wire's `Keda-Topic`).
fn stored_key(headers: &connector_core::headers::HeaderSet, key: &str) -> String {
    headers
        .sorted()
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map_or_else(|| key.to_owned(), |(k, _)| k.to_owned())
}

/// Pub/Sub's message size limit (data and attributes), as documented by Google.
const MAX_MESSAGE_BYTES: usize = 10 * 1000 * 1000;

/// A publish Pub/Sub refuses for good (too large, no permission on the topic) becomes
/// [`Rejected`]: the same message cannot be published later either.
fn write_error(e: google_cloud_pubsub::error::PublishError, size: usize) -> BoxError {
    use google_cloud_gax::error::rpc::Code;
    use google_cloud_pubsub::error::PublishError;
    let code = match &e {
        PublishError::Rpc(rpc) => rpc.status().map(|s| s.code),
        _ => None,
    };
    match code {
        Some(Code::InvalidArgument) if size > MAX_MESSAGE_BYTES => Box::new(Rejected::too_large(
            size,
            &format!("Pub/Sub's limit of {MAX_MESSAGE_BYTES} bytes"),
        )),
        Some(Code::InvalidArgument | Code::PermissionDenied) => {
            Box::new(Rejected::refused(e.to_string()))
        }
        _ => Box::new(e),
    }
}

impl Publisher<()> for PubSubPublisher {
    async fn publish(&self, record: Outbound<'_, ()>) -> Result<(), BoxError> {
        let topic = match record.destination {
            Destination::Response => self.response_topic.as_ref(),
            Destination::Error => self.error_topic.as_ref(),
        }
        .ok_or("no topic configured for this destination")?;
        let publisher = self
            .publishers
            .get(topic)
            .ok_or("no publisher for this topic")?;
        // A response carries the function's response headers; an error document the request's
        // headers (`KEDA-Topic`, ..., `Content-Type` and the message's own attributes), as the
        // original published it, so subscriptions filtering on them see it.
        let mut attributes: Vec<(String, String)> = match record.destination {
            Destination::Response => attributes(record.headers).into_iter().collect(),
            Destination::Error => attributes(&record.request_headers.to_header_map())
                .into_iter()
                .map(|(k, v)| (stored_key(record.request_headers, &k), v))
                .collect(),
        };
        // Only when tracing is on: the write's context replaces one the headers carried,
        // within Pub/Sub's 100 attributes.
        if !record.trace_context.is_empty() {
            attributes.retain(|(k, _)| {
                !record
                    .trace_context
                    .contains_key(k.to_ascii_lowercase().as_str())
            });
            attributes.truncate(100 - record.trace_context.len());
            for (name, value) in record.trace_context {
                if let Ok(value) = value.to_str() {
                    attributes.push((name.as_str().to_owned(), value.to_owned()));
                }
            }
        }
        let size = record.body.len();
        let message = google_cloud_pubsub::model::Message::new()
            .set_data(record.body)
            .set_attributes(attributes);
        publisher
            .publish(message)
            .await
            .map_err(|e| write_error(e, size))?;
        Ok(())
    }
}

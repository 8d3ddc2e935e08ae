//! AWS SQS glue for `connector-core`.
//!
//! A fetcher task long-polls the source queue for up to ten messages at a time, never holding
//! more than `MAX_IN_FLIGHT` received and unsettled. From the moment a message is received its
//! visibility timeout is extended in the background, so a slow function never lets it reappear
//! for another consumer. A message is deleted only after its response or error document was
//! sent; if that send fails it is made visible again at once. On shutdown, messages received but
//! not started are made visible again; started ones are finished within the drain budget.
//!
//! FIFO queues: the message group is the ordering lane; responses and errors keep the source's
//! group and get a deduplication id derived from the source message id.

mod config;

pub use config::{QueueRef, SqsConfig};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, MessageAttributeValue, MessageSystemAttributeName,
    QueueAttributeName,
};
use bytes::Bytes;
use connector_core::aws::{describe, write_error};
use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::headers::canonical_key;
use connector_core::telemetry::Health;
use connector_core::{
    Acknowledger, BoxError, ConnectError, Connector, Delivery, Destination, DispatchEnd,
    DispatchOptions, Engine, Lane, Message, Outbound, Publisher, Source,
};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken as Stop;
use tokio_util::task::AbortOnDropHandle;

/// Most messages one `ReceiveMessage` may return.
const BATCH: usize = 10;
/// Most message attributes one SQS message may carry.
const MAX_ATTRIBUTES: usize = 10;

/// The SQS connector.
#[derive(Debug)]
pub struct SqsConnector {
    config: SqsConfig,
}

impl Connector for SqsConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "aws_sqs";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: SqsConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        DispatchOptions {
            max_in_flight: self.config.max_in_flight,
            lane_concurrency: 1,
            write_ahead: 0,
        }
    }

    async fn check(&self, _engine: &Engine) -> Vec<Check> {
        let config = &self.config;
        let sdk = match config.aws.load_for_check().await {
            Ok(sdk) => sdk,
            Err(failed) => return vec![failed],
        };
        let client = Client::new(&sdk);
        let mut checks = Vec::new();
        let queues = [
            ("source", "TOPIC", Some(&config.source)),
            ("responses", "RESPONSE_TOPIC", config.response.as_ref()),
            ("errors", "ERROR_TOPIC", config.error.as_ref()),
        ];
        for (what, var, queue) in queues {
            let Some(queue) = queue else { continue };
            let looked = async {
                let url = resolve(&client, queue, var).await?;
                let waiting = attribute(
                    &client,
                    &url,
                    QueueAttributeName::ApproximateNumberOfMessages,
                    var,
                )
                .await?
                .unwrap_or_else(|| "?".to_owned());
                Ok::<_, ConnectError>(format!("queue {url}: about {waiting} messages waiting"))
            };
            checks.push(match looked.await {
                Ok(detail) => Check::ok(what, Some(var), detail),
                Err(ConnectError::Fatal(e) | ConnectError::Retry(e)) => {
                    Check::fail(what, Some(var), e.to_string())
                }
            });
        }
        checks
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let config = self.config;
        let sdk = config.aws.load().await?;
        let client = Client::new(&sdk);

        let mut backoff = connector_core::backoff::ReconnectBackoff::default();
        let resolved = engine
            .connect("SQS", &mut backoff, || resolve_queues(&client, &config))
            .await?;
        let Some(queues) = resolved else {
            return Ok(());
        };

        let stop = Stop::new();
        let permits = Arc::new(Semaphore::new(config.max_in_flight));
        let (tx, rx) = mpsc::unbounded_channel();
        let fetcher = tokio::spawn(fetch(
            Fetcher {
                client: client.clone(),
                url: queues.source.clone(),
                wait_time: config.wait_time,
                visibility: queues.visibility,
                request_visibility: config.visibility_timeout,
                permits,
                tx,
                stop: stop.clone(),
            },
            engine.health().clone(),
        ));
        let mut source = SqsSource {
            rx,
            stop,
            fetcher: Some(fetcher),
            client: client.clone(),
            url: queues.source.clone(),
        };
        let publisher = Arc::new(SqsPublisher {
            client,
            response: queues.response,
            error: queues.error,
            delay_seconds: config.delay_seconds,
            default_group: engine.settings().common.topic.clone(),
        });
        tracing::info!(queue = %queues.source, visibility_timeout = queues.visibility, "consuming");
        while engine.dispatch(&mut source, &publisher).await != DispatchEnd::Shutdown {}
        engine.health().set_ready(false);
        Ok(())
    }
}

/// A destination queue, resolved.
#[derive(Debug, Clone)]
struct Target {
    url: String,
    fifo: bool,
}

impl Target {
    fn new(url: String) -> Self {
        let fifo = url.ends_with(".fifo");
        Self { url, fifo }
    }
}

struct Queues {
    source: String,
    visibility: i32,
    response: Option<Target>,
    error: Option<Target>,
}

/// Turns names into URLs and reads the source's visibility timeout. A queue that does not exist
/// stops the connector with a message naming its variable.
async fn resolve_queues(client: &Client, config: &SqsConfig) -> Result<Queues, ConnectError> {
    let source = resolve(client, &config.source, "TOPIC/QUEUE_URL").await?;
    let response = match &config.response {
        Some(q) => Some(Target::new(resolve(client, q, "RESPONSE_TOPIC").await?)),
        None => None,
    };
    let error = match &config.error {
        Some(q) => Some(Target::new(resolve(client, q, "ERROR_TOPIC").await?)),
        None => None,
    };
    let queue_visibility = attribute(
        client,
        &source,
        QueueAttributeName::VisibilityTimeout,
        "TOPIC/QUEUE_URL",
    )
    .await?
    .and_then(|v| v.parse().ok())
    .unwrap_or(30);
    let destinations = [("RESPONSE_TOPIC", &response), ("ERROR_TOPIC", &error)];
    for (var, target) in destinations {
        let Some(target) = target else { continue };
        attribute(client, &target.url, QueueAttributeName::QueueArn, var).await?;
    }
    Ok(Queues {
        source,
        visibility: config.visibility_timeout.unwrap_or(queue_visibility),
        response,
        error,
    })
}

/// One attribute of the queue at `url`; a queue that does not exist is fatal, naming `var`.
async fn attribute(
    client: &Client,
    url: &str,
    name: QueueAttributeName,
    var: &str,
) -> Result<Option<String>, ConnectError> {
    let out = client
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(name.clone())
        .send()
        .await
        .map_err(|e| {
            let missing = e.as_service_error().map(|s| s.is_queue_does_not_exist());
            classify(describe(&e), missing, var)
        })?;
    Ok(out.attributes().and_then(|a| a.get(&name)).cloned())
}

async fn resolve(client: &Client, queue: &QueueRef, var: &str) -> Result<String, ConnectError> {
    match queue {
        QueueRef::Url(url) => Ok(url.clone()),
        QueueRef::Name(name) => client
            .get_queue_url()
            .queue_name(name)
            .send()
            .await
            .map_err(|e| {
                classify(
                    describe(&e),
                    e.as_service_error().map(|s| s.is_queue_does_not_exist()),
                    var,
                )
            })?
            .queue_url
            .ok_or_else(|| ConnectError::Retry(format!("no URL returned for queue {name}").into())),
    }
}

/// A missing queue is fatal and names its variable; anything else is worth retrying.
fn classify(text: String, missing: Option<bool>, var: &str) -> ConnectError {
    if missing == Some(true)
        || text.contains("NonExistentQueue")
        || text.contains("QueueDoesNotExist")
    {
        ConnectError::Fatal(format!("the queue named by {var} does not exist ({text})").into())
    } else {
        ConnectError::Retry(text.into())
    }
}

/// A message received, with its in-flight permit and its visibility keeper.
struct Received {
    message: aws_sdk_sqs::types::Message,
    permit: OwnedSemaphorePermit,
    keeper: Option<AbortOnDropHandle<()>>,
}

struct Fetcher {
    client: Client,
    url: String,
    wait_time: i32,
    /// The visibility timeout messages are received with (what the keeper renews).
    visibility: i32,
    /// `VISIBILITY_TIMEOUT`, sent with each receive when set.
    request_visibility: Option<i32>,
    permits: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Received>,
    stop: Stop,
}

/// Receives until stopped. A receive in progress when the stop comes is finished (it returns
/// within the long-poll wait), and what it brings is made visible again by [`SqsSource::stop`].
async fn fetch(f: Fetcher, health: Arc<Health>) {
    let mut backoff = connector_core::backoff::ReconnectBackoff::default();
    loop {
        let first = tokio::select! {
            p = f.permits.clone().acquire_owned() => p.expect("never closed"),
            () = f.stop.cancelled() => return,
        };
        let mut held = vec![first];
        while held.len() < BATCH {
            match f.permits.clone().try_acquire_owned() {
                Ok(p) => held.push(p),
                Err(_) => break,
            }
        }
        let received = f
            .client
            .receive_message()
            .queue_url(&f.url)
            .max_number_of_messages(held.len() as i32)
            .wait_time_seconds(f.wait_time)
            .set_visibility_timeout(f.request_visibility)
            .message_attribute_names("All")
            // Only the FIFO group (the ordering lane), the receive count and the sent time
            // (for the delivery rules): system attributes are not request headers in the
            // original, and SenderId is an AWS principal the function has no business seeing.
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await;
        match received {
            Ok(out) => {
                backoff.reset();
                health.set_ready(true);
                for message in out.messages.unwrap_or_default() {
                    let Some(permit) = held.pop() else {
                        tracing::warn!("the queue returned more messages than asked for");
                        break;
                    };
                    let keeper = message.receipt_handle().map(|handle| {
                        AbortOnDropHandle::new(tokio::spawn(keep_invisible(
                            f.client.clone(),
                            f.url.clone(),
                            handle.to_owned(),
                            f.visibility,
                        )))
                    });
                    let sent = f.tx.send(Received {
                        message,
                        permit,
                        keeper,
                    });
                    if sent.is_err() {
                        return;
                    }
                }
                if f.stop.is_cancelled() {
                    return;
                }
            }
            Err(e) => {
                health.set_ready(false);
                let delay = backoff.next_delay();
                tracing::warn!(error = %describe(&e), retry_in = ?delay, "receiving from SQS failed");
                drop(held);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = f.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Renews a message's visibility every half timeout until aborted (when it is settled).
async fn keep_invisible(client: Client, url: String, handle: String, timeout: i32) {
    if timeout <= 0 {
        return;
    }
    let period = Duration::from_millis(u64::from(timeout.unsigned_abs()) * 500);
    loop {
        tokio::time::sleep(period).await;
        let renewed = client
            .change_message_visibility()
            .queue_url(&url)
            .receipt_handle(&handle)
            .visibility_timeout(timeout)
            .send()
            .await;
        match renewed {
            Ok(_) => tracing::debug!("visibility extended"),
            Err(e) => {
                tracing::warn!(error = %describe(&e), "extending a message's visibility failed")
            }
        }
    }
}

/// Per-message context for the publisher.
#[derive(Debug)]
pub struct SqsMeta {
    message_id: String,
    group_id: Option<String>,
}

/// Hands over what the fetcher received.
struct SqsSource {
    rx: mpsc::UnboundedReceiver<Received>,
    stop: Stop,
    fetcher: Option<tokio::task::JoinHandle<()>>,
    client: Client,
    url: String,
}

impl Source for SqsSource {
    type Meta = SqsMeta;
    type Ack = SqsAck;

    async fn next(&mut self) -> connector_core::dispatch::NextDelivery<Self> {
        let Some(received) = self.rx.recv().await else {
            return Ok(None);
        };
        let Received {
            message: m,
            permit,
            keeper,
        } = received;
        let mut headers = Vec::new();
        let group_id = m
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .cloned();
        if let Some(attrs) = m.message_attributes() {
            let mut user: Vec<_> = attrs.iter().collect();
            user.sort_by(|a, b| a.0.cmp(b.0));
            for (name, value) in user {
                match value.string_value() {
                    Some(v) => headers.push((name.clone(), v.to_owned())),
                    None => {
                        tracing::debug!(attribute = %name, "binary message attribute not forwarded")
                    }
                }
            }
        }
        let lane = group_id.as_ref().map(|g| {
            let mut h = std::hash::DefaultHasher::new();
            g.hash(&mut h);
            Lane(h.finish())
        });
        let system = |name: MessageSystemAttributeName| {
            m.attributes()
                .and_then(|a| a.get(&name))
                .and_then(|v| v.parse::<u64>().ok())
        };
        let delivery_count = system(MessageSystemAttributeName::ApproximateReceiveCount)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX));
        let published_at = system(MessageSystemAttributeName::SentTimestamp)
            .map(|ms| std::time::UNIX_EPOCH + Duration::from_millis(ms));
        let payload = Bytes::from(m.body.unwrap_or_default());
        Ok(Some(Delivery {
            message: Message {
                payload,
                headers,
                key: None,
                lane,
                id: m.message_id.clone(),
                delivery_count,
                published_at,
            },
            meta: SqsMeta {
                message_id: m.message_id.unwrap_or_default(),
                group_id,
            },
            ack: SqsAck {
                client: self.client.clone(),
                url: self.url.clone(),
                handle: m.receipt_handle.unwrap_or_default(),
                _permit: permit,
                keeper,
            },
        }))
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(f) = self.fetcher.take() {
            let _ = f.await;
        }
        // Received but never started: visible again now rather than after the timeout.
        self.rx.close();
        let mut handles = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            if let Some(h) = r.message.receipt_handle {
                handles.push(h);
            }
        }
        for chunk in handles.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, h)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(h)
                        .visibility_timeout(0)
                        .build()
                        .ok()
                })
                .collect();
            let released = self
                .client
                .change_message_visibility_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await;
            match released {
                Ok(_) => tracing::info!(
                    released = chunk.len(),
                    "returned unstarted messages to the queue"
                ),
                Err(e) => {
                    tracing::warn!(error = %describe(&e), "returning unstarted messages failed; they reappear after the visibility timeout")
                }
            }
        }
    }
}

/// Deletes a settled message, or makes it visible again.
pub struct SqsAck {
    client: Client,
    url: String,
    handle: String,
    _permit: OwnedSemaphorePermit,
    keeper: Option<AbortOnDropHandle<()>>,
}

impl std::fmt::Debug for SqsAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqsAck { .. }")
    }
}

impl Acknowledger for SqsAck {
    async fn ack(self) -> Result<(), BoxError> {
        self.client
            .delete_message()
            .queue_url(&self.url)
            .receipt_handle(&self.handle)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        tracing::debug!("message deleted");
        Ok(())
    }

    async fn requeue(mut self, _message: Message) -> Result<(), BoxError> {
        // Stop renewing first, so a renewal cannot hide the message again right after this.
        drop(self.keeper.take());
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&self.handle)
            .visibility_timeout(0)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        Ok(())
    }
}

/// Sends responses and error documents.
struct SqsPublisher {
    client: Client,
    response: Option<Target>,
    error: Option<Target>,
    delay_seconds: i32,
    /// The message group of outputs on a FIFO queue when the source message has none.
    default_group: String,
}

/// SQS's largest message (body and attributes; 1 MiB since August 2025, 256 KiB before, and a
/// queue's `MaximumMessageSize` may be lower): a refused larger send is reported as too large.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

impl Publisher<SqsMeta> for SqsPublisher {
    async fn publish(&self, record: Outbound<'_, SqsMeta>) -> Result<(), BoxError> {
        let (target, suffix) = match record.destination {
            Destination::Response => (&self.response, "response"),
            Destination::Error => (&self.error, "error"),
        };
        let target = target.as_ref().ok_or("no destination queue configured")?;
        if record.body.is_empty() {
            // SQS cannot carry an empty message; a send would fail forever.
            tracing::info!(
                destination = suffix,
                "empty body: nothing sent to the queue"
            );
            return Ok(());
        }
        let (body, encoding) = match sqs_text(&record.body) {
            Some(text) => (text.to_owned(), None),
            None => {
                use base64::Engine as _;
                (
                    base64::engine::general_purpose::STANDARD.encode(&record.body),
                    Some("base64"),
                )
            }
        };
        let mut attributes = HashMap::new();
        if let Some(enc) = encoding {
            attributes.insert("Body-Encoding".to_owned(), string_attribute(enc));
        }
        // Only when tracing is on; before the response's headers, which yield to it when all
        // ten attributes would be taken.
        for (name, value) in record.trace_context {
            if let Ok(value) = value.to_str()
                && !value.is_empty()
            {
                attributes.insert(name.as_str().to_owned(), string_attribute(value));
            }
        }
        if record.destination == Destination::Response {
            for (name, value) in
                response_attributes(record.headers, MAX_ATTRIBUTES - attributes.len())
            {
                // The write's trace context replaces one the function answered with.
                if !record
                    .trace_context
                    .contains_key(name.to_ascii_lowercase().as_str())
                {
                    attributes.insert(name, string_attribute(&value));
                }
            }
        }
        let mut send = self
            .client
            .send_message()
            .queue_url(&target.url)
            .message_body(body)
            .set_message_attributes((!attributes.is_empty()).then_some(attributes));
        if target.fifo {
            // Per-message delays are not allowed on FIFO queues; the deduplication id makes a
            // send retried after an ambiguous failure (or a redelivered source) count once.
            let group = record
                .meta
                .group_id
                .as_deref()
                .unwrap_or(&self.default_group);
            send = send
                .message_group_id(group)
                .message_deduplication_id(format!("{}-{suffix}", record.meta.message_id));
        } else if self.delay_seconds > 0 {
            send = send.delay_seconds(self.delay_seconds);
        }
        let size = send.get_message_body().as_deref().map_or(0, str::len);
        send.send()
            .await
            .map_err(|e| write_error(&e, size, MAX_MESSAGE_BYTES))?;
        Ok(())
    }
}

fn string_attribute(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder()
        .data_type("String")
        .string_value(value)
        .build()
        .expect("data type is set")
}

/// The body as SQS text, if every character is one SQS accepts.
fn sqs_text(body: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(body).ok()?;
    text.chars().all(sqs_char).then_some(text)
}

fn sqs_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// HTTP response headers as SQS message attributes, within SQS's rules: at most `limit`, names
/// SQS accepts, non-empty values of SQS text, the last value of a repeated header (as the
/// original). `Content-Type` comes first; framing headers that describe the HTTP exchange
/// rather than the body are left out.
pub fn response_attributes(headers: &http::HeaderMap, limit: usize) -> Vec<(String, String)> {
    const SKIP: &[&str] = &[
        "connection",
        "content-length",
        "keep-alive",
        "transfer-encoding",
        "date",
    ];
    let mut out: Vec<(String, String)> = Vec::new();
    let mut names: Vec<&http::HeaderName> = headers.keys().collect();
    names.sort_by_key(|n| *n != http::header::CONTENT_TYPE);
    for name in names {
        if out.len() >= limit {
            break;
        }
        if SKIP.contains(&name.as_str()) {
            continue;
        }
        let Some(value) = headers.get_all(name).iter().next_back() else {
            continue;
        };
        let Ok(value) = value.to_str() else { continue };
        if value.is_empty() || !value.chars().all(sqs_char) {
            continue;
        }
        let key = canonical_key(name.as_str());
        if valid_attribute_name(&key) {
            out.push((key, value.to_owned()));
        }
    }
    out
}

fn valid_attribute_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_stay_within_sqs_rules() {
        let mut h = http::HeaderMap::new();
        for i in 0..15 {
            h.insert(
                http::HeaderName::from_bytes(format!("x-h{i:02}").as_bytes()).unwrap(),
                "v".parse().unwrap(),
            );
        }
        h.insert("x-empty", "".parse().unwrap());
        h.append("x-multi", "first".parse().unwrap());
        h.append("x-multi", "last".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("aws.reserved", "x".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let attrs = response_attributes(&h, 10);
        assert_eq!(attrs.len(), 10);
        assert_eq!(attrs[0], ("Content-Type".into(), "application/json".into()));
        assert!(
            attrs
                .iter()
                .all(|(k, v)| !v.is_empty() && k != "Content-Length" && !k.starts_with("Aws."))
        );
        let mut small = http::HeaderMap::new();
        small.append("x-multi", "first".parse().unwrap());
        small.append("x-multi", "last".parse().unwrap());
        assert_eq!(
            response_attributes(&small, 10),
            vec![("X-Multi".into(), "last".into())]
        );
    }

    #[test]
    fn binary_bodies_are_not_sqs_text() {
        assert_eq!(sqs_text(b"{\"a\":1}\n"), Some("{\"a\":1}\n"));
        assert_eq!(sqs_text(&[0xff, 0x00]), None);
        assert_eq!(sqs_text(b"a\x01b"), None);
    }
}

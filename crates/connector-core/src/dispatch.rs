//! The dispatch loop: pull from a [`Source`], invoke, hand the outcome to a [`Publisher`], and
//! only when that write is durable, settle the delivery.
//!
//! Invariants kept here so no connector has to:
//! - never more than `max_in_flight` deliveries held, whatever the backlog (plus at most
//!   `write_ahead` whose call has ended and whose outcome is being written);
//! - deliveries of one lane are invoked one at a time, in order, when ordering is on (with a
//!   publisher that queues writes in call order, the next is invoked while earlier outcomes are
//!   still being written: [`Publisher::queues_in_call_order`]);
//! - a delivery is acknowledged only after its response or error document was durably written
//!   (or there was no destination to write to); if the write fails it is requeued;
//! - on shutdown, stop pulling, let in-flight work finish within the drain budget, and leave
//!   whatever did not finish unacknowledged, so the broker delivers it again.

use crate::delivery::{
    DELIVERY_COUNT_HEADER, Diversion, MESSAGE_ID_HEADER, Rejected, derived_id, too_old,
    unwritable_delay,
};
use crate::engine::Engine;
use crate::error_doc::{ErrorDocument, Extras, Reason};
use crate::headers::HeaderSet;
use crate::invoker::{Failure, Outcome};
use crate::telemetry::traces::{MessageTrace, end_publish};
use bytes::Bytes;
use http::HeaderMap;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// A boxed error from broker code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An ordering lane: deliveries with the same lane are processed one at a time, in order.
/// Connectors with named lanes (shards, message groups) hash the name; a collision only
/// serialises two lanes together, it never reorders one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lane(pub u64);

/// The broker-neutral part of a delivery.
#[derive(Debug, Clone, Default)]
pub struct Message {
    /// The payload, POSTed byte for byte.
    pub payload: Bytes,
    /// Inbound headers/attributes to forward as HTTP headers (text values only).
    pub headers: Vec<(String, String)>,
    /// The record key, where the broker has one.
    pub key: Option<Bytes>,
    /// The ordering lane, where the broker has one.
    pub lane: Option<Lane>,
    /// The broker's id for the message, the same on every delivery (Kafka
    /// `topic/partition/offset`, SQS MessageId, ...). `None`: the engine derives one from
    /// `TOPIC` and the payload where it needs one (`METADATA_HEADERS`, `MAX_DELIVERIES`).
    pub id: Option<String>,
    /// How many times the broker has delivered the message, this delivery included, where the
    /// broker counts (a lower bound where it only flags a redelivery); `None` otherwise, and the
    /// engine counts what it sees itself.
    pub delivery_count: Option<u32>,
    /// When the broker took the message in, where it records that (for `MAX_MESSAGE_AGE`).
    pub published_at: Option<std::time::SystemTime>,
}

/// One message from a source, with the broker-specific context `M` its publisher needs and the
/// handle `A` that settles it.
#[derive(Debug)]
pub struct Delivery<M, A> {
    /// The message.
    pub message: Message,
    /// Broker-specific metadata (e.g. AMQP properties) for the publisher.
    pub meta: M,
    /// Settles the delivery.
    pub ack: A,
}

/// Settles one delivery with the broker.
pub trait Acknowledger: Send + 'static {
    /// The outcome is durable: the broker may forget the message.
    fn ack(self) -> impl Future<Output = Result<(), BoxError>> + Send;
    /// The outcome could not be written: the message must be delivered again. `message` is
    /// handed back for sources whose broker cannot redeliver a single message by itself (a
    /// Kafka partition only moves forward); others ignore it.
    fn requeue(self, message: Message) -> impl Future<Output = Result<(), BoxError>> + Send;
}

/// What [`Source::next`] resolves to.
pub type NextDelivery<S> =
    Result<Option<Delivery<<S as Source>::Meta, <S as Source>::Ack>>, BoxError>;

/// Where deliveries come from.
pub trait Source: Send {
    /// Broker-specific metadata carried to the publisher.
    type Meta: Send + Sync + 'static;
    /// The settle handle.
    type Ack: Acknowledger;

    /// The next delivery. `Ok(None)` means the source has ended (connection or channel lost,
    /// consumer cancelled): the dispatcher drains and returns, and the connector may reconnect.
    fn next(&mut self) -> impl Future<Output = NextDelivery<Self>> + Send;

    /// Stop the broker from sending more (e.g. `basic.cancel`). Called once, on shutdown.
    fn stop(&mut self) -> impl Future<Output = ()> + Send;
}

/// Which destination an [`Outbound`] record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// `RESPONSE_TOPIC`: the 2xx response body.
    Response,
    /// `ERROR_TOPIC`: the error document.
    Error,
}

/// A record to write to the response or error destination.
#[derive(Debug)]
pub struct Outbound<'a, M> {
    /// Response or error.
    pub destination: Destination,
    /// The topic/queue/stream/list name (`RESPONSE_TOPIC` or `ERROR_TOPIC`).
    pub topic: &'a str,
    /// The response body or the error document.
    pub body: Bytes,
    /// The HTTP response headers (empty for error documents).
    pub headers: &'a HeaderMap,
    /// The headers the request to the function carried, keys as the original stored them
    /// (`KEDA-Topic`, ..., and the message's own); the original published them as the
    /// attributes of a Pub/Sub error document.
    pub request_headers: &'a HeaderSet,
    /// The source message.
    pub message: &'a Message,
    /// The source message's broker metadata.
    pub meta: &'a M,
    /// The W3C Trace Context of the write (`traceparent`, `tracestate`) when tracing is on,
    /// for brokers whose records have headers or attributes; empty otherwise.
    pub trace_context: &'a HeaderMap,
}

/// Writes responses and error documents.
pub trait Publisher<M>: Send + Sync + 'static {
    /// Writes `record`; resolves only once the broker has durably accepted it.
    fn publish(&self, record: Outbound<'_, M>)
    -> impl Future<Output = Result<(), BoxError>> + Send;

    /// Whether `publish` has queued its write with the broker's client by the time its future
    /// is first polled, so that writes started one after another reach the broker in that order
    /// (Kafka's producer keeps the order of what it queued). An in-order lane then invokes its
    /// next delivery while earlier outcomes are still on their way instead of waiting a broker
    /// round trip per message; each delivery is still settled only once its own write is
    /// durable. `false` by default: the lane waits for each write.
    fn queues_in_call_order(&self) -> bool {
        false
    }
}

/// How a dispatch run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DispatchEnd {
    /// Shutdown was requested; in-flight work has been drained.
    Shutdown,
    /// The source ended (e.g. connection lost); the connector may reconnect and dispatch again.
    SourceEnded,
}

type Queued<M, A> = (Delivery<M, A>, OwnedSemaphorePermit);

/// Per lane: how many of its deliveries are running, and the ones waiting for a turn.
struct LaneState<M, A> {
    running: usize,
    waiting: VecDeque<Queued<M, A>>,
}

type LaneQueues<M, A> = Arc<Mutex<HashMap<Lane, LaneState<M, A>>>>;

impl Engine {
    /// Runs the loop until shutdown or until the source ends, then drains.
    pub async fn dispatch<S, P>(&self, source: &mut S, publisher: &Arc<P>) -> DispatchEnd
    where
        S: Source,
        P: Publisher<S::Meta>,
    {
        let permits = Arc::new(Semaphore::new(self.options().max_in_flight.max(1)));
        let write_ahead = self.options().write_ahead;
        let writes = (write_ahead > 0).then(|| Arc::new(Semaphore::new(write_ahead)));
        let lanes: LaneQueues<S::Meta, S::Ack> = Arc::default();
        let mut tasks = JoinSet::new();
        let shutdown = self.shutdown().clone();

        let end = loop {
            while let Some(done) = tasks.try_join_next() {
                log_task_end(done);
            }
            let permit = tokio::select! {
                biased;
                () = shutdown.cancelled() => break DispatchEnd::Shutdown,
                p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            };
            let next = tokio::select! {
                biased;
                () = shutdown.cancelled() => break DispatchEnd::Shutdown,
                next = source.next() => next,
            };
            let delivery = match next {
                Ok(Some(d)) => d,
                Ok(None) => break DispatchEnd::SourceEnded,
                Err(e) => {
                    tracing::error!(error = %e, "source failed");
                    break DispatchEnd::SourceEnded;
                }
            };
            self.metrics().received.inc();
            self.metrics().in_flight.inc();
            let limit = self.options().lane_concurrency;
            let lane = delivery.message.lane.filter(|_| limit > 0);
            let Some(lane) = lane else {
                let (engine, publisher, writes) = (self.clone(), publisher.clone(), writes.clone());
                tasks.spawn(async move {
                    let Some(writes) = writes else {
                        engine.handle(&*publisher, delivery).await;
                        drop(permit);
                        return;
                    };
                    let invoked = engine.invoke(delivery).await;
                    // The call's slot goes to the next delivery once this outcome has a write
                    // slot; with none free the call's slot is held (back-pressure).
                    let write = writes
                        .acquire_owned()
                        .await
                        .expect("the semaphore is never closed");
                    let mut settle = std::pin::pin!(engine.settle(&*publisher, invoked));
                    // Queued before the next call can start, so with one call at a time the
                    // outcomes reach the broker in the order of the calls.
                    let done = publisher.queues_in_call_order() && poll_once(settle.as_mut()).await;
                    drop(permit);
                    if !done {
                        settle.await;
                    }
                    drop(write);
                });
                continue;
            };
            {
                let mut map = lanes.lock().expect("lane map lock");
                let state = map.entry(lane).or_insert_with(|| LaneState {
                    running: 0,
                    waiting: VecDeque::new(),
                });
                if state.running >= limit {
                    state.waiting.push_back((delivery, permit));
                    continue;
                }
                state.running += 1;
            }
            // A lane worker runs its delivery, then takes the lane's next waiting one, so with
            // a limit of 1 a lane is processed strictly in order.
            let (engine, publisher, lanes) = (self.clone(), publisher.clone(), lanes.clone());
            tasks.spawn(async move {
                let pipelined = publisher.queues_in_call_order();
                // Outcomes still being written (pipelined lanes only); the worker ends after them,
                // so the drain waits for them too.
                let mut writing = JoinSet::new();
                let mut current = Some((delivery, permit));
                while let Some((delivery, permit)) = current.take() {
                    if pipelined {
                        while let Some(done) = writing.try_join_next() {
                            log_task_end(done);
                        }
                        let invoked = engine.invoke(delivery).await;
                        let (e, p) = (engine.clone(), publisher.clone());
                        let mut write = Box::pin(async move {
                            e.settle(&*p, invoked).await;
                            drop(permit);
                        });
                        // Its first poll queues the write, so the next outcome cannot overtake it.
                        if !poll_once(write.as_mut()).await {
                            writing.spawn(write);
                        }
                    } else {
                        engine.handle(&*publisher, delivery).await;
                        drop(permit);
                    }
                    let mut map = lanes.lock().expect("lane map lock");
                    let state = map.get_mut(&lane).expect("a running lane has an entry");
                    if engine.shutdown().is_cancelled() {
                        // Left unacknowledged: the broker delivers them again.
                        let left = state.waiting.len() as i64;
                        engine.metrics().in_flight.dec_by(left);
                        state.waiting.clear();
                    }
                    current = state.waiting.pop_front();
                    if current.is_none() {
                        state.running -= 1;
                        if state.running == 0 {
                            map.remove(&lane);
                        }
                    }
                }
                while let Some(done) = writing.join_next().await {
                    log_task_end(done);
                }
            });
        };

        if end == DispatchEnd::Shutdown {
            source.stop().await;
        }
        let budget = self.settings().dispatch.drain_timeout;
        let drained = tokio::time::timeout(budget, async {
            while let Some(done) = tasks.join_next().await {
                log_task_end(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                abandoned = tasks.len(),
                drain_timeout = ?budget,
                "drain budget exhausted; unfinished messages are left unacknowledged for redelivery"
            );
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            self.metrics().in_flight.set(0);
        }
        end
    }

    /// One delivery, start to settle.
    async fn handle<M, A, P>(&self, publisher: &P, delivery: Delivery<M, A>)
    where
        A: Acknowledger,
        P: Publisher<M>,
    {
        let invoked = self.invoke(delivery).await;
        self.settle(publisher, invoked).await;
    }

    /// Calls the function for one delivery (unless a delivery rule diverts it): what is to be
    /// written about it.
    async fn invoke<M, A>(&self, delivery: Delivery<M, A>) -> Invoked<M, A> {
        use tracing::Instrument as _;
        match self
            .traces()
            .message(&self.settings().common.topic, &delivery.message)
        {
            None => self.invoke_traced(delivery, None).await,
            Some(trace) => {
                let span = trace.log_span();
                self.invoke_traced(delivery, Some(trace))
                    .instrument(span)
                    .await
            }
        }
    }

    async fn invoke_traced<M, A>(
        &self,
        delivery: Delivery<M, A>,
        trace: Option<MessageTrace>,
    ) -> Invoked<M, A> {
        let Delivery { message, meta, ack } = delivery;
        let common = &self.settings().common;
        let rules = &self.settings().delivery;
        // The id and the count, only where a rule or the metadata headers need them: deriving
        // an id hashes the payload.
        let id = rules.counts_deliveries().then(|| {
            message
                .id
                .clone()
                .unwrap_or_else(|| derived_id(&common.topic, &message.payload))
        });
        let count = id.as_deref().map(|id| {
            self.counts()
                .delivered(id)
                .max(message.delivery_count.unwrap_or(0))
        });
        let mut headers = if message.headers.is_empty() {
            None
        } else {
            let mut h: HeaderSet = self.default_headers().clone();
            let skipped = h.merge(
                message
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            );
            if skipped > 0 {
                tracing::debug!(
                    skipped,
                    "inbound headers not valid in HTTP were not forwarded"
                );
            }
            Some(h)
        };
        if rules.metadata_headers
            && let (Some(id), Some(count)) = (&id, count)
        {
            let h = headers.get_or_insert_with(|| self.default_headers().clone());
            // A publisher's id that cannot be a header value (a RabbitMQ `message-id` with
            // non-ASCII bytes) is sent as the derived id, which is stable too.
            if !h.set(MESSAGE_ID_HEADER, id) {
                h.set(
                    MESSAGE_ID_HEADER,
                    &derived_id(&common.topic, &message.payload),
                );
            }
            h.set(DELIVERY_COUNT_HEADER, &count.to_string());
        }
        if let Some(ce) = &self.settings().http.cloudevents {
            let h = headers.get_or_insert_with(|| self.default_headers().clone());
            ce.apply(h, &message, message.id.as_deref());
        }
        let request_headers = headers.as_ref().unwrap_or(self.default_headers());
        let diversion = match (rules.max_deliveries, count) {
            (Some(max), Some(count)) if count > max => {
                Some(Diversion::MaxDeliveries { count, max })
            }
            _ => None,
        }
        .or_else(|| {
            too_old(
                message.published_at,
                rules.max_message_age,
                std::time::SystemTime::now(),
            )
        });
        let outcome = if let Some(diversion) = diversion {
            self.diverted(&diversion, id.as_deref());
            let failure = Failure {
                status: None,
                body: Bytes::new(),
                last_error: None,
                attempts: 0,
            };
            Written::Error(self.error_document(
                &message,
                request_headers,
                &failure,
                Some(&diversion),
            ))
        } else {
            match self
                .invoker()
                .invoke_traced(&message.payload, request_headers, trace.as_ref())
                .await
            {
                Outcome::Success(response) => {
                    self.metrics().succeeded.inc();
                    tracing::debug!(status = response.status.as_u16(), "function succeeded");
                    Written::Response {
                        status: response.status,
                        body: response.body,
                        headers: response.headers,
                    }
                }
                Outcome::Failure(failure) => {
                    self.metrics().failed.inc();
                    tracing::warn!(
                        status = failure.status.map(|s| s.as_u16()),
                        attempts = failure.attempts,
                        error = failure.last_error.as_deref(),
                        "function invocation failed"
                    );
                    Written::Error(self.error_document(&message, request_headers, &failure, None))
                }
            }
        };
        Invoked {
            message,
            meta,
            ack,
            headers,
            id,
            outcome,
            trace,
        }
    }

    /// The error document for `message`: the original's fields, our extras when on, and the
    /// reason when a rule rather than the call sent it here.
    fn error_document(
        &self,
        message: &Message,
        request_headers: &HeaderSet,
        failure: &Failure,
        reason: Option<&Diversion>,
    ) -> Bytes {
        let common = &self.settings().common;
        let detail = reason.map(Diversion::detail);
        let document = ErrorDocument {
            message: &message.payload,
            http_endpoint: &common.http_endpoint,
            headers: request_headers,
            response_body: &failure.body,
            status: failure.status.map(|s| s.as_u16()),
            source_name: &common.source_name,
            extras: self.settings().http.error_doc_extras.then_some(Extras {
                attempts: failure.attempts,
                last_error: failure.last_error.as_deref(),
            }),
            reason: reason.zip(detail.as_deref()).map(|(r, detail)| Reason {
                code: r.code(),
                detail,
            }),
        };
        Bytes::from(document.encode())
    }

    fn diverted(&self, diversion: &Diversion, id: Option<&str>) {
        self.metrics()
            .diverted
            .get_or_create(&vec![("reason", diversion.code())])
            .inc();
        tracing::warn!(
            reason = diversion.code(),
            detail = %diversion.detail(),
            message_id = id,
            "message goes to the error destination"
        );
    }

    /// Writes what the call produced, then settles the delivery: acknowledged once the write
    /// is durable; a response the destination refuses for good is replaced by an error document
    /// saying why; when nothing could be written the message is requeued, after a delay that
    /// grows each time the same message comes back unwritable.
    async fn settle<M, A, P>(&self, publisher: &P, invoked: Invoked<M, A>)
    where
        A: Acknowledger,
        P: Publisher<M>,
    {
        use tracing::Instrument as _;
        match invoked.trace.as_ref().map(MessageTrace::log_span) {
            None => self.settle_traced(publisher, invoked).await,
            Some(span) => {
                self.settle_traced(publisher, invoked)
                    .instrument(span)
                    .await
            }
        }
    }

    async fn settle_traced<M, A, P>(&self, publisher: &P, invoked: Invoked<M, A>)
    where
        A: Acknowledger,
        P: Publisher<M>,
    {
        let Invoked {
            message,
            meta,
            ack,
            headers,
            id,
            outcome,
            trace,
        } = invoked;
        let request_headers = headers.as_ref().unwrap_or(self.default_headers());
        let (mut destination, mut body, mut headers, status) = match outcome {
            Written::Response {
                status,
                body,
                headers,
            } => (Destination::Response, body, headers, Some(status)),
            Written::Error(body) => (Destination::Error, body, HeaderMap::new(), None),
        };
        // One write call site, so the publisher's future is compiled once per connector: a
        // response the destination refuses for good comes round again as its error document.
        let written = loop {
            let result = self
                .write(
                    publisher,
                    destination,
                    body.clone(),
                    std::mem::take(&mut headers),
                    request_headers,
                    &message,
                    &meta,
                    trace.as_ref(),
                )
                .await;
            match result {
                Err((Destination::Response, ref e)) if let Some(rejected) = Rejected::find(e) => {
                    let diversion = Diversion::ResponseRejected(rejected.reason.clone());
                    self.diverted(&diversion, id.as_deref().or(message.id.as_deref()));
                    let failure = Failure {
                        status,
                        // A response too large for its destination is too large to quote.
                        body: if rejected.too_large {
                            Bytes::new()
                        } else {
                            body
                        },
                        last_error: None,
                        attempts: 1,
                    };
                    destination = Destination::Error;
                    body =
                        self.error_document(&message, request_headers, &failure, Some(&diversion));
                }
                other => break other,
            }
        };
        let settled = match written {
            Ok(()) => {
                let result = ack.ack().await;
                if let Some(id) = id.as_deref().or(message.id.as_deref()) {
                    self.counts().forget(id);
                }
                ("ack", result)
            }
            Err((destination, e)) => {
                let destination = match destination {
                    Destination::Response => "response",
                    Destination::Error => "error",
                };
                self.metrics()
                    .publish_failures
                    .get_or_create(&vec![("destination", destination)])
                    .inc();
                self.metrics().unwritable.inc();
                let id = id
                    .or_else(|| message.id.clone())
                    .unwrap_or_else(|| derived_id(&self.settings().common.topic, &message.payload));
                let step = self.counts().unwritable(&id);
                let delay = unwritable_delay(step);
                tracing::warn!(
                    destination,
                    error = %e,
                    message_id = %id,
                    step,
                    retry_in = ?delay,
                    "writing the outcome failed; the message will be redelivered"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = self.shutdown().cancelled() => {}
                }
                ("requeue", ack.requeue(message).await)
            }
        };
        let (action, result) = settled;
        if let Some(trace) = trace {
            trace.end(match (action, &result, destination) {
                ("ack", Ok(()), Destination::Response) => None,
                ("ack", Ok(()), Destination::Error) => Some("ended in an error document"),
                _ => Some("not settled: the broker delivers it again"),
            });
        }
        let result_label = if result.is_ok() { "ok" } else { "error" };
        self.metrics()
            .settled
            .get_or_create(&vec![("action", action), ("result", result_label)])
            .inc();
        if let Err(e) = result {
            tracing::warn!(action, error = %e, "settling the delivery failed; the broker will redeliver it");
        }
        self.metrics().in_flight.dec();
    }

    /// One write to `destination`; done at once when that destination is not set.
    #[allow(clippy::too_many_arguments)]
    async fn write<M, P: Publisher<M>>(
        &self,
        publisher: &P,
        destination: Destination,
        body: Bytes,
        headers: HeaderMap,
        request_headers: &HeaderSet,
        message: &Message,
        meta: &M,
        trace: Option<&MessageTrace>,
    ) -> Result<(), (Destination, BoxError)> {
        let common = &self.settings().common;
        let topic = match destination {
            Destination::Response => common.response_topic.as_deref(),
            Destination::Error => common.error_topic.as_deref(),
        };
        match topic {
            Some(topic) => {
                let mut trace_context = HeaderMap::new();
                let span = trace.map(|t| {
                    t.publish(topic, destination == Destination::Error, &mut trace_context)
                });
                let result = publisher
                    .publish(Outbound {
                        destination,
                        topic,
                        body,
                        headers: &headers,
                        request_headers,
                        message,
                        meta,
                        trace_context: &trace_context,
                    })
                    .await;
                if let Some(span) = span {
                    end_publish(span, result.is_err());
                }
                result.map_err(|e| (destination, e))
            }
            None if destination == Destination::Error => {
                tracing::warn!("ERROR_TOPIC is not set; the error document is discarded");
                tracing::debug!(
                    document = %String::from_utf8_lossy(&body),
                    "discarded error document"
                );
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// A delivery whose function call has ended, on its way to be written and settled.
struct Invoked<M, A> {
    message: Message,
    meta: M,
    ack: A,
    /// The request's headers when the message added its own; `None`: the engine's defaults.
    headers: Option<HeaderSet>,
    /// The message's id, when a delivery rule needed it.
    id: Option<String>,
    outcome: Written,
    /// Its spans, when tracing is on.
    trace: Option<MessageTrace>,
}

/// What the call produced.
enum Written {
    /// A 2xx answer, for `RESPONSE_TOPIC`.
    Response {
        status: http::StatusCode,
        body: Bytes,
        headers: HeaderMap,
    },
    /// The error document, for `ERROR_TOPIC`.
    Error(Bytes),
}

/// Polls `write` once — for a publisher that [queues in call order](Publisher::queues_in_call_order),
/// that queues it — and says whether it has already finished (it must not be polled again then).
async fn poll_once<F: Future>(mut write: std::pin::Pin<&mut F>) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx).is_ready())).await
}

fn log_task_end(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a message task panicked; its message is left for redelivery");
    }
}

//! # connector-core
//!
//! The engine behind every KEDA HTTP connector in this workspace. A connector consumes messages
//! from one broker, POSTs each to one HTTP endpoint (usually a function behind the Fission
//! router), writes the HTTP response to a response destination or an error document to an error
//! destination, and only then acknowledges the message. This crate holds everything that is not
//! broker glue, so each connector crate is a `Source`, a `Publisher` and a ten-line `main`.
//!
//! ## The flow
//!
//! **config → source → dispatcher → invoker → publisher → settle**
//!
//! 1. [`config`]: the environment contract of the Go original (`TOPIC`, `HTTP_ENDPOINT`,
//!    `MAX_RETRIES`, `CONTENT_TYPE`, `RESPONSE_TOPIC`, `ERROR_TOPIC`, `SOURCE_NAME`) plus our
//!    knobs, parsed once from an [`config::Env`] lookup into [`config::Settings`]. Errors are
//!    typed, name the variable, and never echo a secret; the binary exits 78 with one line.
//! 2. [`dispatch::Source`] (per broker) yields [`dispatch::Delivery`]s: payload, headers, key,
//!    ordering [`dispatch::Lane`], broker metadata, and an [`dispatch::Acknowledger`].
//! 3. The dispatcher ([`engine::Engine::dispatch`]) holds at most `max_in_flight` deliveries,
//!    runs each lane in order when asked, and on shutdown stops pulling and drains within
//!    `DRAIN_TIMEOUT`.
//! 4. [`invoker::Invoker`] POSTs the payload with the header contract of [`headers`]
//!    (`Keda-Topic`, … or the NATS family; inbound headers replace defaults
//!    case-insensitively), `MAX_RETRIES + 1` attempts with exponential backoff and jitter,
//!    `Retry-After`, a per-attempt timeout; success is exactly 2xx. Requests are signed for
//!    Fission's internal router when `FISSION_INTERNAL_AUTH_SECRET` is set ([`signing`]).
//! 5. On success the body goes to `RESPONSE_TOPIC`; on failure the byte-compatible
//!    [`error_doc::ErrorDocument`] goes to `ERROR_TOPIC` — through the broker's
//!    [`dispatch::Publisher`], which resolves only once the write is durable.
//! 6. Settle: ack after a durable write (or when there is no destination); requeue if the write
//!    failed. Anything not acknowledged is delivered again by the broker.
//!
//! Off until their variables are set ([`config::DeliverySettings`]): the [`delivery`] rules
//! (metadata headers, `MAX_DELIVERIES`, `MAX_MESSAGE_AGE`, a response the destination refuses
//! for good — a publisher returns [`Rejected`] — becoming an error document), [`rate`]
//! (`MAX_RATE`) and the [`breaker`] (`CIRCUIT_BREAKER_FAILURES`).
//!
//! Around it: [`telemetry`] (JSON logs without payloads, Prometheus metrics, OpenTelemetry
//! spans of each message's path when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), [`admin`]
//! (`/metrics`, `/healthz`, `/readyz`) and [`app`] (`--version`, signals, exit codes).
//! [`tracker`] serves brokers whose position only moves forward (Kafka partitions, Kinesis
//! shards): it commits only the contiguous settled prefix. The `aws` feature adds `aws`, the AWS
//! SDK setup shared by the SQS and Kinesis connectors. The `scaler` feature adds `scaler`: a
//! KEDA external-push scaler (KEDA's gRPC `ExternalScaler`) for any source that implements its
//! `Backlog` trait, for brokers KEDA has no scaler for.
//!
//! ## Writing a connector
//!
//! Implement [`app::Connector`]: parse your variables in `from_env`, and in `run` connect,
//! build your `Source` and `Publisher`, and call [`engine::Engine::dispatch`] — again after a
//! reconnect when it returns [`dispatch::DispatchEnd::SourceEnded`]. Then
//! `fn main() -> ExitCode { connector_core::app::main::<MyConnector>() }`.
//!
//! A complete connector for a "broker" that is a list of payloads in an environment variable.
//! It runs here against the test sink of the `testkit` feature standing in for a function: the
//! sink answers `400` to `bad` and upper-cases everything else. Its `main` would be the one line
//! above; the example calls [`app::run`] with an explicit environment instead.
//!
//! ```
//! use connector_core::config::Vars;
//! use connector_core::dispatch::{NextDelivery, Outbound};
//! use connector_core::testkit::{Reply, Sink};
//! use connector_core::{Acknowledger, BoxError, ConfigError, Connector, Delivery, Destination};
//! use connector_core::{DispatchOptions, Engine, Env, Message, Publisher, Settings, Source};
//! use std::sync::{Arc, Mutex};
//!
//! /// Where outcomes end up: (destination, body). A real publisher writes to the broker.
//! type Written = Arc<Mutex<Vec<(Destination, String)>>>;
//!
//! struct ListConnector { items: Vec<String>, written: Written }
//!
//! impl Connector for ListConnector {
//!     const NAME: &'static str = "list-connector";
//!     const VERSION: &'static str = "0.1.0";
//!
//!     // Only this connector's own variables: TOPIC, HTTP_ENDPOINT, MAX_RETRIES, ... are
//!     // already parsed into `Settings`.
//!     fn from_env(env: &dyn Env, _: &Settings) -> Result<Self, ConfigError> {
//!         let items = Vars::new(env).required("LIST_ITEMS")?;
//!         Ok(Self { items: items.split(',').map(String::from).collect(), written: Written::default() })
//!     }
//!
//!     fn dispatch_options(&self) -> DispatchOptions {
//!         DispatchOptions { max_in_flight: 4, ..DispatchOptions::default() }
//!     }
//!
//!     // Connect (a real connector loops with `engine.connect` and a backoff), then dispatch.
//!     async fn run(self, engine: Engine) -> Result<(), BoxError> {
//!         let mut source = ListSource(self.items.into_iter());
//!         engine.health().set_ready(true);
//!         engine.dispatch(&mut source, &Arc::new(ListPublisher(self.written))).await;
//!         Ok(())
//!     }
//! }
//!
//! struct ListSource(std::vec::IntoIter<String>);
//!
//! impl Source for ListSource {
//!     type Meta = ();
//!     type Ack = ListAck;
//!     async fn next(&mut self) -> NextDelivery<Self> {
//!         // `None` ends the source: the dispatcher drains what is in flight and returns.
//!         Ok(self.0.next().map(|item| Delivery {
//!             message: Message { payload: item.into(), ..Message::default() },
//!             meta: (),
//!             ack: ListAck,
//!         }))
//!     }
//!     async fn stop(&mut self) {}
//! }
//!
//! /// Called only after the outcome was written: this is where a broker forgets the message.
//! struct ListAck;
//!
//! impl Acknowledger for ListAck {
//!     async fn ack(self) -> Result<(), BoxError> { Ok(()) }
//!     async fn requeue(self, _: Message) -> Result<(), BoxError> { Ok(()) }
//! }
//!
//! struct ListPublisher(Written);
//!
//! impl Publisher<()> for ListPublisher {
//!     async fn publish(&self, record: Outbound<'_, ()>) -> Result<(), BoxError> {
//!         let body = String::from_utf8_lossy(&record.body).into_owned();
//!         self.0.lock().unwrap().push((record.destination, body));
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() {
//! let sink = Sink::start().await;
//! sink.respond(|r| match &r.body[..] {
//!     b"bad" => Reply::status(400).body("no"),
//!     body => Reply::status(200).body(body.to_ascii_uppercase()),
//! });
//! let endpoint = sink.url("/fn");
//! let env = [
//!     ("TOPIC", "items"),
//!     ("HTTP_ENDPOINT", endpoint.as_str()),
//!     ("MAX_RETRIES", "2"),
//!     ("CONTENT_TYPE", "text/plain"),
//!     ("RESPONSE_TOPIC", "answers"),
//!     ("ERROR_TOPIC", "failures"),
//!     ("LIST_ITEMS", "a,bad,c"),
//! ];
//! let (settings, connector) = connector_core::app::configure::<ListConnector>(&env).unwrap();
//! let written = connector.written.clone();
//! let code = connector_core::app::run(connector, settings).await;
//! assert_eq!(code, std::process::ExitCode::SUCCESS);
//!
//! let mut written = written.lock().unwrap().clone();
//! written.sort_by(|a, b| a.1.cmp(&b.1));
//! assert_eq!(written.len(), 3);
//! assert_eq!(written[0], (Destination::Response, "A".to_owned()));
//! assert_eq!(written[1], (Destination::Response, "C".to_owned()));
//! // The error document, byte-compatible with the original's:
//! let (destination, document) = &written[2];
//! assert_eq!(*destination, Destination::Error);
//! assert!(document.starts_with(r#"{"FunctionHTTPRequest":{"Message":"bad","#), "{document}");
//! assert!(document.contains(r#""ResponseBody":"no","StatusCode":400,"#), "{document}");
//! # }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod app;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod breaker;
pub mod check;
pub mod cloudevents;
pub mod config;
pub mod delivery;
pub mod dispatch;
pub mod endpoint_auth;
pub mod engine;
pub mod error_doc;
#[cfg(feature = "grpc-proxy")]
pub mod grpc_proxy;
pub mod headers;
pub mod invoker;
pub mod proxy;
pub mod rate;
#[cfg(feature = "scaler")]
pub mod scaler;
pub mod signing;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tracker;

pub use app::{Connector, REVISION};
pub use config::{ConfigError, Env, Settings};
pub use delivery::Rejected;
pub use dispatch::{
    Acknowledger, BoxError, Delivery, Destination, DispatchEnd, Lane, Message, Outbound, Publisher,
    Source,
};
pub use engine::{ConnectError, DispatchOptions, Engine};
pub use headers::HeaderFamily;

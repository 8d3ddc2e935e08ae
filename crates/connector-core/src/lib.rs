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
//! Around it: [`telemetry`] (JSON logs without payloads, Prometheus metrics), [`admin`]
//! (`/metrics`, `/healthz`, `/readyz`) and [`app`] (`--version`, signals, exit codes).
//! [`tracker`] serves brokers whose position only moves forward (Kafka partitions, Kinesis
//! shards): it commits only the contiguous settled prefix. The `aws` feature adds `aws`, the AWS
//! SDK setup shared by the SQS and Kinesis connectors.
//!
//! ## Writing a connector
//!
//! Implement [`app::Connector`]: parse your variables in `from_env`, and in `run` connect,
//! build your `Source` and `Publisher`, and call [`engine::Engine::dispatch`] — again after a
//! reconnect when it returns [`dispatch::DispatchEnd::SourceEnded`]. Then
//! `fn main() -> ExitCode { connector_core::app::main::<MyConnector>() }`.

#![warn(missing_docs)]

pub mod admin;
pub mod app;
#[cfg(feature = "aws")]
pub mod aws;
pub mod backoff;
pub mod config;
pub mod dispatch;
pub mod engine;
pub mod error_doc;
pub mod headers;
pub mod invoker;
pub mod signing;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod tracker;

pub use app::{Connector, REVISION};
pub use config::{ConfigError, Env, Settings};
pub use dispatch::{
    Acknowledger, BoxError, Delivery, Destination, DispatchEnd, Lane, Message, Outbound, Publisher,
    Source,
};
pub use engine::{ConnectError, DispatchOptions, Engine};
pub use headers::HeaderFamily;

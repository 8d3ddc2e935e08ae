//! One instrumentation vocabulary for every connector: JSON logs, Prometheus metrics, and the
//! health state behind `/healthz` and `/readyz`.

use crate::config::LogLevel;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use std::sync::atomic::{AtomicBool, Ordering};

mod process;
pub mod traces;

/// Installs the process-wide JSON logger on stderr (one object per line, like the original's
/// zap logger). Broker client libraries are capped at `warn` unless the level is `trace`.
pub fn init_logging(level: LogLevel) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;
    let ours = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    let libraries = if level == LogLevel::Trace {
        LevelFilter::TRACE
    } else {
        ours.min(LevelFilter::WARN)
    };
    let filter = Targets::new()
        .with_default(ours)
        .with_target("lapin", libraries)
        .with_target("amq_protocol", libraries)
        .with_target("hyper", libraries)
        .with_target("hyper_util", libraries)
        .with_target("rustls", libraries)
        // The span exporter's own reports (a collector that cannot be reached, ...).
        .with_target("opentelemetry", libraries);
    let fmt = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        // The only spans are a traced message's (telemetry/traces.rs): its log lines carry
        // `span.trace_id` and `span.span_id`; without tracing no line has a `span` key.
        .with_current_span(true)
        .with_span_list(false)
        .with_writer(std::io::stderr);
    // A second call (tests running several connectors in one process) keeps the first logger.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

/// Label set of a family metric.
pub type Labels = Vec<(&'static str, &'static str)>;

/// Every metric a connector exports: its own under the `keda_connector_` prefix, and the
/// standard `process_*` series (CPU, memory, file descriptors, start time).
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// 1 with labels `connector`, `version` and `revision` (set by the binary at start).
    pub build_info: Family<Labels, Gauge>,
    /// 1 while the source is connected to its broker and consuming (what `/readyz` reports),
    /// else 0; follows [`Health::set_ready`].
    pub broker_connected: Gauge,
    /// Messages taken from the broker.
    pub received: Counter,
    /// Messages whose final HTTP attempt returned 2xx.
    pub succeeded: Counter,
    /// Messages that ended in an error document.
    pub failed: Counter,
    /// HTTP attempts after the first one.
    pub retries: Counter,
    /// Messages held by the dispatcher right now.
    pub in_flight: Gauge,
    /// Duration of each HTTP attempt, by `class` (`2xx`…`5xx`, `error`).
    pub http_duration: Family<Labels, Histogram>,
    /// Failed writes to the response or error destination, by `destination`.
    pub publish_failures: Family<Labels, Counter>,
    /// Settlements by `action` (`ack`, `requeue`) and `result` (`ok`, `error`).
    pub settled: Family<Labels, Counter>,
    /// Modes chosen at start, one label each (e.g. `checkpoints="memory"`), value 1.
    pub mode: Family<Labels, Gauge>,
    /// Messages sent to the error destination without calling the function, by `reason`
    /// (`max-deliveries`, `max-message-age`), or whose response the destination refused
    /// (`response-rejected`).
    pub diverted: Family<Labels, Counter>,
    /// Requeues of a message none of whose outcomes could be written (each backoff step).
    pub unwritable: Counter,
    /// 1 while the circuit breaker holds calls to the function, else 0.
    pub circuit_open: Gauge,
    /// Times the circuit breaker opened.
    pub circuit_opened: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(process::ProcessCollector));
        let registry = root.sub_registry_with_prefix("keda_connector");
        let received = Counter::default();
        let succeeded = Counter::default();
        let failed = Counter::default();
        let retries = Counter::default();
        let in_flight = Gauge::default();
        let http_duration = Family::<Labels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0,
            ])
        });
        let publish_failures = Family::<Labels, Counter>::default();
        let settled = Family::<Labels, Counter>::default();
        registry.register(
            "messages_received",
            "Messages taken from the broker",
            received.clone(),
        );
        registry.register(
            "messages_succeeded",
            "Messages whose HTTP call ended in 2xx",
            succeeded.clone(),
        );
        registry.register(
            "messages_failed",
            "Messages that ended in an error document",
            failed.clone(),
        );
        registry.register(
            "http_retries",
            "HTTP attempts after the first one",
            retries.clone(),
        );
        registry.register(
            "messages_in_flight",
            "Messages held by the dispatcher",
            in_flight.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Duration of each HTTP attempt",
            http_duration.clone(),
        );
        registry.register(
            "publish_failures",
            "Failed writes to the response or error destination",
            publish_failures.clone(),
        );
        registry.register(
            "messages_settled",
            "Acknowledgements and requeues sent to the broker",
            settled.clone(),
        );
        let mode = Family::<Labels, Gauge>::default();
        registry.register(
            "mode",
            "Operating modes chosen at start (label: what was chosen; value 1)",
            mode.clone(),
        );
        let diverted = Family::<Labels, Counter>::default();
        registry.register(
            "messages_diverted",
            "Messages written to the error destination by a delivery rule, by reason",
            diverted.clone(),
        );
        let unwritable = Counter::default();
        registry.register(
            "messages_unwritable",
            "Requeues of messages whose response and error document could not be written",
            unwritable.clone(),
        );
        let circuit_open = Gauge::default();
        registry.register(
            "circuit_open",
            "1 while the circuit breaker holds calls to the function",
            circuit_open.clone(),
        );
        let circuit_opened = Counter::default();
        registry.register(
            "circuit_opened",
            "Times the circuit breaker opened",
            circuit_opened.clone(),
        );
        // Series that only move when something goes wrong exist from the start at 0, so a
        // `rate()` over them (examples/monitoring/alerts.yml) sees the first failure.
        for destination in ["response", "error"] {
            let _ = publish_failures.get_or_create(&vec![("destination", destination)]);
        }
        for reason in crate::delivery::Diversion::CODES {
            let _ = diverted.get_or_create(&vec![("reason", reason)]);
        }
        let build_info = Family::<Labels, Gauge>::default();
        registry.register(
            "build_info",
            "The connector's name, version and git revision (value 1)",
            build_info.clone(),
        );
        let broker_connected = Gauge::default();
        registry.register(
            "broker_connected",
            "1 while the source is connected to its broker and consuming (as /readyz), else 0",
            broker_connected.clone(),
        );
        Self {
            registry: root,
            build_info,
            broker_connected,
            mode,
            diverted,
            unwritable,
            circuit_open,
            circuit_opened,
            received,
            succeeded,
            failed,
            retries,
            in_flight,
            http_duration,
            publish_failures,
            settled,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Liveness and readiness, shared between the dispatcher, the source and the admin server.
#[derive(Debug, Default)]
pub struct Health {
    alive: AtomicBool,
    ready: AtomicBool,
    notes: std::sync::Mutex<Vec<String>>,
    /// `keda_connector_broker_connected`, when the health belongs to an engine's metrics.
    connected: Option<Gauge>,
}

impl Health {
    /// Health whose readiness is also exported as [`Metrics::broker_connected`].
    pub fn reporting_to(metrics: &Metrics) -> Self {
        Self {
            connected: Some(metrics.broker_connected.clone()),
            ..Self::default()
        }
    }
    /// Marks the connector as running (or stopped).
    pub fn set_alive(&self, alive: bool) {
        self.alive.store(alive, Ordering::Relaxed);
    }
    /// Marks the source as connected and consuming (or not); each change is logged (`ready` /
    /// `not ready`), so an operator (or a test) sees when consumption starts and stops.
    pub fn set_ready(&self, ready: bool) {
        if let Some(gauge) = &self.connected {
            gauge.set(i64::from(ready));
        }
        if self.ready.swap(ready, Ordering::Relaxed) != ready {
            if ready {
                tracing::info!(ready, "ready");
            } else {
                tracing::info!(ready, "not ready");
            }
        }
    }
    /// Whether the dispatch loop is running.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
    /// Whether the source is connected and consuming.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
    /// Adds a line `/readyz` shows after its status: how the connector runs (e.g. checkpoints
    /// kept in memory for lack of a permission).
    pub fn add_note(&self, note: impl Into<String>) {
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(note.into());
    }
    /// The lines added with [`Health::add_note`].
    pub fn notes(&self) -> Vec<String> {
        self.notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

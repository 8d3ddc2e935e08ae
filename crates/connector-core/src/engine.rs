//! The shared state a connector runs with: settings, the invoker, default headers, telemetry
//! and the shutdown signal. Cheap to clone.

use crate::backoff::ReconnectBackoff;
use crate::config::Settings;
use crate::dispatch::BoxError;
use crate::headers::{HeaderFamily, HeaderSet};
use crate::invoker::Invoker;
use crate::telemetry::traces::Traces;
use crate::telemetry::{Health, Metrics};
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// How the dispatcher schedules deliveries; chosen by the connector.
#[derive(Debug, Clone, Copy)]
pub struct DispatchOptions {
    /// Most deliveries held at once (received and not yet settled).
    pub max_in_flight: usize,
    /// Most deliveries of one [`Lane`](crate::dispatch::Lane) running at once: `1` processes
    /// each lane strictly in order, `k > 1` runs up to `k` per lane unordered, `0` ignores lanes.
    pub lane_concurrency: usize,
    /// Deliveries outside lanes whose function call has ended and whose outcome is still being
    /// written, held besides the `max_in_flight` calls: the next call starts while the broker
    /// confirms the previous outcome, instead of each slot waiting a confirm round trip. `0`:
    /// a delivery holds its slot until it is settled. A source whose broker bounds unsettled
    /// deliveries (a prefetch) must allow `max_in_flight + write_ahead` for this to help.
    pub write_ahead: usize,
}

/// One delivery at a time, no lanes, no write-ahead; name the fields that differ and take the
/// rest from here (`..DispatchOptions::default()`), so fields added later need no change.
impl Default for DispatchOptions {
    fn default() -> Self {
        Self {
            max_in_flight: 1,
            lane_concurrency: 0,
            write_ahead: 0,
        }
    }
}

/// Everything a connector needs from the core, built once at start.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    settings: Settings,
    options: DispatchOptions,
    invoker: Invoker,
    defaults: HeaderSet,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
    counts: crate::delivery::DeliveryCounts,
    traces: std::sync::OnceLock<Traces>,
}

impl Engine {
    /// Builds the engine. `user_agent` identifies the connector to the endpoint.
    pub fn new(
        settings: Settings,
        family: HeaderFamily,
        options: DispatchOptions,
        user_agent: &str,
    ) -> Self {
        let metrics = Arc::new(Metrics::new());
        let invoker = Invoker::new(
            &settings.common,
            &settings.http,
            user_agent,
            metrics.clone(),
        )
        .with_delivery(&settings.delivery);
        let defaults = HeaderSet::connector_defaults(family, &settings.common);
        let health = Arc::new(Health::reporting_to(&metrics));
        Self {
            inner: Arc::new(Inner {
                settings,
                options,
                invoker,
                defaults,
                metrics,
                health,
                shutdown: CancellationToken::new(),
                counts: crate::delivery::DeliveryCounts::default(),
                traces: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Exports each message's spans through `traces` from now on (set once, before
    /// dispatching; a second call is ignored).
    pub fn set_traces(&self, traces: Traces) {
        let _ = self.inner.traces.set(traces);
    }

    /// The tracer ([`Traces::off`] until [`Engine::set_traces`]).
    pub fn traces(&self) -> &Traces {
        static OFF: Traces = Traces::off();
        self.inner.traces.get().unwrap_or(&OFF)
    }

    /// The parsed settings.
    pub fn settings(&self) -> &Settings {
        &self.inner.settings
    }
    /// The scheduling options.
    pub fn options(&self) -> DispatchOptions {
        self.inner.options
    }
    /// The HTTP invoker.
    pub fn invoker(&self) -> &Invoker {
        &self.inner.invoker
    }
    /// The connector's own request headers.
    pub fn default_headers(&self) -> &HeaderSet {
        &self.inner.defaults
    }
    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }
    /// Liveness/readiness; a source marks itself ready when connected and consuming.
    pub fn health(&self) -> &Arc<Health> {
        &self.inner.health
    }
    /// Deliveries and unwritable outcomes this process has counted per message.
    pub(crate) fn counts(&self) -> &crate::delivery::DeliveryCounts {
        &self.inner.counts
    }
    /// Fires on SIGTERM/SIGINT (or when a test cancels it).
    pub fn shutdown(&self) -> &CancellationToken {
        &self.inner.shutdown
    }

    /// Sleeps for `delay` unless shutdown comes first; returns `false` if it did.
    pub async fn sleep_unless_shutdown(&self, delay: std::time::Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            () = self.shutdown().cancelled() => false,
        }
    }
}

/// Why an attempt to reach the broker failed.
#[derive(Debug)]
pub enum ConnectError {
    /// Worth retrying: the broker is down, the network is cut, credentials are not ready yet.
    Retry(BoxError),
    /// Waiting will not fix it (a queue or topic that does not exist): the connector stops.
    Fatal(BoxError),
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for ConnectError {
    fn from(e: E) -> Self {
        Self::Retry(Box::new(e))
    }
}

impl Engine {
    /// Calls `attempt` until it succeeds, backing off (and logging, naming `broker`) between
    /// failures, and resets `backoff` on success. Returns `Ok(None)` when shutdown was requested
    /// first, and the error of a [`ConnectError::Fatal`] attempt.
    pub async fn connect<T, F, Fut>(
        &self,
        broker: &str,
        backoff: &mut ReconnectBackoff,
        mut attempt: F,
    ) -> Result<Option<T>, BoxError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ConnectError>>,
    {
        loop {
            let result = tokio::select! {
                r = attempt() => r,
                () = self.shutdown().cancelled() => return Ok(None),
            };
            match result {
                Ok(connected) => {
                    backoff.reset();
                    return Ok(Some(connected));
                }
                Err(ConnectError::Fatal(e)) => return Err(e),
                Err(ConnectError::Retry(e)) => {
                    let delay = backoff.next_delay();
                    tracing::error!(error = %e, retry_in = ?delay, "cannot connect to {broker}");
                    if !self.sleep_unless_shutdown(delay).await {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

//! The shared state a connector runs with: settings, the invoker, default headers, telemetry
//! and the shutdown signal. Cheap to clone.

use crate::config::Settings;
use crate::headers::{HeaderFamily, HeaderSet};
use crate::invoker::Invoker;
use crate::telemetry::{Health, Metrics};
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
        );
        let defaults = HeaderSet::connector_defaults(family, &settings.common);
        Self {
            inner: Arc::new(Inner {
                settings,
                options,
                invoker,
                defaults,
                metrics,
                health: Arc::new(Health::default()),
                shutdown: CancellationToken::new(),
            }),
        }
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

//! A KEDA external-push scaler for sources KEDA has no scaler for.
//!
//! KEDA's `external-push` trigger talks gRPC to a service implementing
//! `externalscaler.ExternalScaler` ([`proto`]). Here that service is backed by one [`Backlog`]:
//! the number of messages waiting or in flight at the source. It runs as its own small,
//! always-on Deployment next to the connector it scales (usually the connector's binary in
//! scaler mode, see [`main`]), so it can answer while the connector is scaled to zero.
//!
//! - `GetMetricSpec`: one metric, `backlog`, with the trigger's `targetBacklog` (messages per
//!   replica, default 100) as target; the HPA runs `ceil(backlog / targetBacklog)` replicas.
//! - `GetMetrics`: the backlog, counted when asked.
//! - `IsActive`: backlog > `activationBacklog` (default 0).
//! - `StreamIsActive`: sends the current state at once, then every change, checking every
//!   `SCALER_POLL_INTERVAL` (default 1 s). KEDA acts on a pushed `true` immediately instead of
//!   at its next polling interval, which is what makes scale-from-zero fast.
//!
//! Trigger metadata that is not a non-negative integer is rejected with `INVALID_ARGUMENT`
//! naming the key; a backlog that cannot be counted is `UNAVAILABLE` (KEDA keeps the current
//! scale). Environment: `SCALER_ADDR` (default `0.0.0.0:6000`), `SCALER_POLL_INTERVAL`,
//! `LOG_LEVEL`, plus whatever the [`Backlog`] reads.

use crate::config::{ConfigError, Env, LogLevel, ProcessEnv, Vars};
use crate::dispatch::BoxError;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Code generated from `proto/externalscaler.proto`: messages, the server trait
/// (`external_scaler_server`) and a client (`external_scaler_client`, for tests and tools).
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("externalscaler");
}

use proto::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use proto::{
    GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec,
    MetricValue, ScaledObjectRef,
};

/// The name of the one metric served.
pub const METRIC_NAME: &str = "backlog";
/// `targetBacklog` when the trigger metadata does not set it.
pub const DEFAULT_TARGET_BACKLOG: u64 = 100;

/// A source that can say how much work it holds.
pub trait Backlog: Sized + Send + Sync + 'static {
    /// Name for logs, `--version` and errors, e.g. `custom-connector`.
    const NAME: &'static str;

    /// Reads this source's variables (e.g. the database URL and `TOPIC`). Connecting belongs in
    /// [`Backlog::backlog`], so a broker that is down does not stop the scaler from starting.
    fn from_env(env: &dyn Env) -> Result<Self, ConfigError>;

    /// Messages waiting or in flight (not yet settled), counted now.
    fn backlog(&self) -> impl Future<Output = Result<u64, BoxError>> + Send;
}

/// Scaler-mode settings.
#[derive(Debug, Clone, Copy)]
pub struct ScalerSettings {
    /// `SCALER_ADDR`: the gRPC listen address.
    pub addr: SocketAddr,
    /// `SCALER_POLL_INTERVAL`: how often an open `StreamIsActive` counts the backlog.
    pub poll_interval: Duration,
    /// `LOG_LEVEL`.
    pub log_level: LogLevel,
}

impl ScalerSettings {
    /// Reads `SCALER_ADDR`, `SCALER_POLL_INTERVAL` and `LOG_LEVEL`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let addr = match vars.optional_trimmed("SCALER_ADDR") {
            None => SocketAddr::from(([0, 0, 0, 0], 6000)),
            Some(v) => v.parse().map_err(|_| {
                ConfigError::invalid("SCALER_ADDR", "host:port such as 0.0.0.0:6000", &v)
            })?,
        };
        let poll_interval = vars.duration("SCALER_POLL_INTERVAL", Duration::from_secs(1))?;
        if poll_interval.is_zero() {
            return Err(ConfigError::invalid(
                "SCALER_POLL_INTERVAL",
                "a positive duration such as 1s or 250ms",
                "0",
            ));
        }
        Ok(Self {
            addr,
            poll_interval,
            log_level: LogLevel::from_vars(&vars)?,
        })
    }
}

/// What one trigger asks for, from its `scalerMetadata`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Targets {
    target: u64,
    activation: u64,
}

impl Targets {
    fn parse(metadata: &HashMap<String, String>) -> Result<Self, Status> {
        let get = |key: &str, default: u64, min: u64| match metadata.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n >= min)
                .ok_or_else(|| {
                    let what = if min == 0 {
                        "a non-negative"
                    } else {
                        "a positive"
                    };
                    Status::invalid_argument(format!(
                        "scalerMetadata {key}: expected {what} integer, got {v:?}"
                    ))
                }),
        };
        Ok(Self {
            target: get("targetBacklog", DEFAULT_TARGET_BACKLOG, 1)?,
            activation: get("activationBacklog", 0, 0)?,
        })
    }
}

/// The gRPC service over one [`Backlog`].
#[derive(Debug)]
pub struct Scaler<B> {
    backlog: Arc<B>,
    poll_interval: Duration,
    shutdown: CancellationToken,
}

impl<B: Backlog> Scaler<B> {
    /// A service counting `backlog`; open streams end when `shutdown` is cancelled.
    pub fn new(backlog: B, poll_interval: Duration, shutdown: CancellationToken) -> Self {
        Self {
            backlog: Arc::new(backlog),
            poll_interval,
            shutdown,
        }
    }

    async fn count(&self) -> Result<u64, Status> {
        self.backlog.backlog().await.map_err(|e| {
            tracing::warn!(error = %e, "cannot count the backlog");
            Status::unavailable(format!("cannot count the backlog of {}: {e}", B::NAME))
        })
    }

    /// Serves on `listener` until `shutdown` is cancelled.
    pub async fn serve(self, listener: TcpListener) -> Result<(), BoxError> {
        let shutdown = self.shutdown.clone();
        tonic::transport::Server::builder()
            .serve_with_incoming_shutdown(
                ExternalScalerServer::new(self),
                tonic::transport::server::TcpIncoming::from(listener),
                shutdown.cancelled_owned(),
            )
            .await?;
        Ok(())
    }
}

#[tonic::async_trait]
impl<B: Backlog> ExternalScaler for Scaler<B> {
    async fn is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<IsActiveResponse>, Status> {
        let targets = Targets::parse(&request.get_ref().scaler_metadata)?;
        let backlog = self.count().await?;
        Ok(Response::new(IsActiveResponse {
            result: backlog > targets.activation,
        }))
    }

    type StreamIsActiveStream = ReceiverStream<Result<IsActiveResponse, Status>>;

    async fn stream_is_active(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<Self::StreamIsActiveStream>, Status> {
        let object = request.into_inner();
        let targets = Targets::parse(&object.scaler_metadata)?;
        let (tx, rx) = mpsc::channel(1);
        let (backlog, poll, shutdown) = (
            self.backlog.clone(),
            self.poll_interval,
            self.shutdown.clone(),
        );
        tracing::info!(scaled_object = %object.name, namespace = %object.namespace, "activation stream opened");
        tokio::spawn(async move {
            let mut sent = None;
            loop {
                match backlog.backlog().await {
                    Ok(n) => {
                        let active = n > targets.activation;
                        if sent != Some(active) {
                            tracing::debug!(backlog = n, active, "activation changed");
                            if tx
                                .send(Ok(IsActiveResponse { result: active }))
                                .await
                                .is_err()
                            {
                                break;
                            }
                            sent = Some(active);
                        }
                    }
                    // The last state sent stays true until the backlog can be counted again.
                    Err(e) => tracing::warn!(error = %e, "cannot count the backlog"),
                }
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tx.closed() => break,
                    () = tokio::time::sleep(poll) => {}
                }
            }
            tracing::info!(scaled_object = %object.name, "activation stream closed");
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn get_metric_spec(
        &self,
        request: Request<ScaledObjectRef>,
    ) -> Result<Response<GetMetricSpecResponse>, Status> {
        let targets = Targets::parse(&request.get_ref().scaler_metadata)?;
        Ok(Response::new(GetMetricSpecResponse {
            metric_specs: vec![MetricSpec {
                metric_name: METRIC_NAME.to_owned(),
                target_size: i64::try_from(targets.target).unwrap_or(i64::MAX),
                target_size_float: targets.target as f64,
            }],
        }))
    }

    async fn get_metrics(
        &self,
        request: Request<GetMetricsRequest>,
    ) -> Result<Response<GetMetricsResponse>, Status> {
        if let Some(object) = &request.get_ref().scaled_object_ref {
            Targets::parse(&object.scaler_metadata)?;
        }
        let backlog = self.count().await?;
        Ok(Response::new(GetMetricsResponse {
            metric_values: vec![MetricValue {
                metric_name: METRIC_NAME.to_owned(),
                metric_value: i64::try_from(backlog).unwrap_or(i64::MAX),
                metric_value_float: backlog as f64,
            }],
        }))
    }
}

/// The whole `main` of scaler mode: configuration (exit 78 with one line on an error), JSON
/// logs, signals (SIGTERM/SIGINT end open streams and stop), then serve until shutdown.
/// A connector binary usually enters it on its first argument, `scaler`.
pub fn main<B: Backlog>() -> ExitCode {
    let (settings, backlog) = match ScalerSettings::from_env(&ProcessEnv)
        .and_then(|s| Ok((s, B::from_env(&ProcessEnv)?)))
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{} scaler: configuration error: {e}", B::NAME);
            return ExitCode::from(crate::app::EXIT_CONFIG);
        }
    };
    crate::telemetry::init_logging(settings.log_level);
    crate::app::block_on(async move {
        let shutdown = CancellationToken::new();
        crate::app::spawn_signal_handler(shutdown.clone(), || {
            tracing::info!("shutdown requested; closing activation streams");
        });
        let listener = match TcpListener::bind(settings.addr).await {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(addr = %settings.addr, error = %e, "cannot listen on SCALER_ADDR");
                return ExitCode::from(crate::app::EXIT_FAILURE);
            }
        };
        tracing::info!(
            scaler = B::NAME,
            addr = %listener.local_addr().unwrap_or(settings.addr),
            poll_interval = ?settings.poll_interval,
            "scaler listening"
        );
        let scaler = Scaler::new(backlog, settings.poll_interval, shutdown);
        match scaler.serve(listener).await {
            Ok(()) => {
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "scaler failed");
                ExitCode::from(crate::app::EXIT_FAILURE)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn targets_default_and_parse() {
        let t = Targets::parse(&meta(&[("scalerAddress", "x:6000")])).unwrap();
        assert_eq!(
            t,
            Targets {
                target: DEFAULT_TARGET_BACKLOG,
                activation: 0
            }
        );
        let t = Targets::parse(&meta(&[
            ("targetBacklog", " 25 "),
            ("activationBacklog", "3"),
        ]))
        .unwrap();
        assert_eq!(
            t,
            Targets {
                target: 25,
                activation: 3
            }
        );
    }

    #[test]
    fn bad_targets_name_the_key() {
        for (key, value) in [
            ("targetBacklog", "0"),
            ("targetBacklog", "ten"),
            ("targetBacklog", "-1"),
            ("activationBacklog", "1.5"),
            ("activationBacklog", ""),
        ] {
            let err = Targets::parse(&meta(&[(key, value)])).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
            assert!(
                err.message()
                    .starts_with(&format!("scalerMetadata {key}: expected"))
            );
        }
    }

    #[test]
    fn settings_defaults_and_errors() {
        let s = ScalerSettings::from_env(&[("LOG_LEVEL", "debug")]).unwrap();
        assert_eq!(s.addr, SocketAddr::from(([0, 0, 0, 0], 6000)));
        assert_eq!(s.poll_interval, Duration::from_secs(1));
        assert_eq!(s.log_level, LogLevel::Debug);
        for (var, value) in [
            ("SCALER_ADDR", "6000"),
            ("SCALER_POLL_INTERVAL", "0s"),
            ("SCALER_POLL_INTERVAL", "soon"),
        ] {
            let err = ScalerSettings::from_env(&[(var, value)]).unwrap_err();
            assert_eq!(err.var(), var);
        }
    }
}

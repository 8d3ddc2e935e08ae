//! The binary side: `--version`, configuration errors as one line and exit code 78, logging,
//! signals, the admin listener, and the connector's run.

use crate::admin::AdminServer;
use crate::check::Check;
use crate::config::{ConfigError, Env, ProcessEnv, Settings};
use crate::dispatch::BoxError;
use crate::engine::{DispatchOptions, Engine};
use crate::headers::HeaderFamily;
use crate::telemetry::traces::Traces;
use std::future::Future;
use std::process::ExitCode;

/// The git revision this build came from (`unknown` outside a checkout).
pub const REVISION: &str = env!("KEDA_CONNECTOR_REVISION");

/// Exit code of a configuration error (`EX_CONFIG` from sysexits.h).
pub const EXIT_CONFIG: u8 = 78;
/// Exit code of an unexpected command-line argument (`EX_USAGE`).
pub const EXIT_USAGE: u8 = 64;
/// Exit code of a runtime failure.
pub const EXIT_FAILURE: u8 = 1;

/// A broker integration: its own configuration and how it runs on an [`Engine`].
pub trait Connector: Sized + Send + 'static {
    /// Binary name, e.g. `rabbitmq-http-connector`.
    const NAME: &'static str;
    /// Crate version.
    const VERSION: &'static str;
    /// Which request header names to send.
    const HEADERS: HeaderFamily = HeaderFamily::Keda;
    /// `messaging.system` on the connector's spans (OpenTelemetry's name for the broker, e.g.
    /// `kafka`, `rabbitmq`, `aws_sqs`, `gcp_pubsub`).
    const MESSAGING_SYSTEM: &'static str = Self::NAME;

    /// Reads the broker-specific variables (the common ones are already in `settings`).
    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError>;

    /// How the dispatcher should schedule deliveries.
    fn dispatch_options(&self) -> DispatchOptions;

    /// Connects, dispatches, reconnects as needed; returns after shutdown has been handled.
    fn run(self, engine: Engine) -> impl Future<Output = Result<(), BoxError>> + Send;

    /// `--check`: looks at the broker as the first start would find it — the source, the
    /// destinations, the consumer state it would bind and what it would do with it — without
    /// consuming, creating or moving anything. The configuration and `HTTP_ENDPOINT` are
    /// checked by the library; a connector without broker checks reports none.
    fn check(&self, engine: &Engine) -> impl Future<Output = Vec<Check>> + Send {
        let _ = engine;
        std::future::ready(Vec::new())
    }
}

/// Reads all configuration for `C` from `env`.
pub fn configure<C: Connector>(env: &dyn Env) -> Result<(Settings, C), ConfigError> {
    let settings = Settings::from_env(env)?;
    let connector = C::from_env(env, &settings)?;
    Ok((settings, connector))
}

/// The whole `main` of a connector binary.
pub fn main<C: Connector>() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    if let Some(arg) = args.next() {
        #[allow(clippy::print_stdout)]
        match arg.to_str() {
            Some("--version" | "-V") => {
                println!("{} {} (revision {REVISION})", C::NAME, C::VERSION);
                return ExitCode::SUCCESS;
            }
            Some("--check") => {
                let json = match args.next() {
                    None => false,
                    Some(a) if a == "--json" => true,
                    Some(other) => {
                        eprintln!(
                            "{}: unexpected argument {other:?} after --check (only --json)",
                            C::NAME
                        );
                        return ExitCode::from(EXIT_USAGE);
                    }
                };
                return check::<C>(json);
            }
            Some("--help" | "-h") => {
                println!(
                    "{} {}\n\nTakes no arguments: configuration is read from environment variables \
                     (TOPIC, HTTP_ENDPOINT, MAX_RETRIES, CONTENT_TYPE, ...); see docs/configuration.md in the repository.\n\
                     Options: --version, --help, --check [--json] (what a start with this \
                     environment would find, without consuming anything)",
                    C::NAME,
                    C::VERSION
                );
                return ExitCode::SUCCESS;
            }
            _ => {
                eprintln!(
                    "{}: unexpected argument {:?}; configuration comes from the environment (try --help)",
                    C::NAME,
                    arg
                );
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }

    run_task::<C, _, _>(|settings, connector| run(connector, settings))
}

/// `--check [--json]`: the configuration, the endpoint and the connector's broker checks,
/// reported on stdout; exit 0 when none failed, 1 when one did, 78 when the configuration is
/// refused.
fn check<C: Connector>(json: bool) -> ExitCode {
    if let Err(e) = configure::<C>(&ProcessEnv) {
        let line = Check::fail("configuration", Some(e.var()), e.to_string());
        crate::check::report(&[line], json);
        return ExitCode::from(EXIT_CONFIG);
    }
    run_task::<C, _, _>(move |settings, connector| async move {
        let mut checks = vec![Check::ok(
            "configuration",
            None,
            format!("accepted as a start would ({} {})", C::NAME, C::VERSION),
        )];
        checks.push(crate::check::endpoint(&settings).await);
        let options = connector.dispatch_options();
        let engine = Engine::new(
            settings,
            C::HEADERS,
            options,
            &format!("{}/{}", C::NAME, C::VERSION),
        );
        checks.extend(connector.check(&engine).await);
        if crate::check::report(&checks, json) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILURE)
        }
    })
}

/// Runs `task` the way a connector starts: the configuration read from the environment as a
/// normal start reads it (exit 78 with one line when it is wrong), JSON logs at `LOG_LEVEL`,
/// the TLS provider, a multi-threaded runtime. For the connector itself ([`main`]) and for
/// one-off tasks of a connector binary, such as a migration step.
pub fn run_task<C, F, Fut>(task: F) -> ExitCode
where
    C: Connector,
    F: FnOnce(Settings, C) -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let (settings, connector) = match configure::<C>(&ProcessEnv) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{}: configuration error: {e}", C::NAME);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::telemetry::init_logging(settings.log_level);
    // One process-wide TLS provider (ring) for every library that builds a rustls config from
    // the default, whatever crypto features the dependency graph happens to enable.
    let _ = rustls::crypto::ring::default_provider().install_default();
    block_on(task(settings, connector))
}

/// Runs `main` on a new multi-threaded runtime; exit 1 if the runtime cannot start.
pub(crate) fn block_on(main: impl Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(main),
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs a configured connector until shutdown; returns the process exit code.
pub async fn run<C: Connector>(connector: C, settings: Settings) -> ExitCode {
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    let options = connector.dispatch_options();
    let admin = settings.admin;
    let engine = Engine::new(
        settings,
        C::HEADERS,
        options,
        &format!("{}/{}", C::NAME, C::VERSION),
    );
    engine
        .metrics()
        .build_info
        .get_or_create(&vec![
            ("connector", C::NAME),
            ("version", C::VERSION),
            ("revision", REVISION),
        ])
        .set(1);
    let traces = match Traces::start(
        &engine.settings().traces,
        C::NAME,
        C::VERSION,
        C::MESSAGING_SYSTEM,
        &engine.settings().common.endpoint_uri,
    ) {
        Ok(traces) => traces,
        // Tracing is never a reason not to run (see TraceSettings::from_vars).
        Err(e) => {
            tracing::warn!(error = %e, "cannot set up the OTLP span exporter; spans are not exported");
            Traces::off()
        }
    };
    if traces.is_on() {
        tracing::info!("exporting spans over OTLP");
    }
    engine.set_traces(traces.clone());
    let drain_timeout = engine.settings().dispatch.drain_timeout;
    spawn_signal_handler(engine.shutdown().clone(), move || {
        tracing::info!(
            ?drain_timeout,
            "shutdown requested; draining in-flight messages"
        );
    });

    if let Some(addr) = admin.addr {
        match AdminServer::bind(addr).await {
            Ok(server) => {
                tracing::info!(addr = %server.addr().unwrap_or(addr), "admin listener up");
                tokio::spawn(server.serve(
                    engine.metrics().clone(),
                    engine.health().clone(),
                    engine.shutdown().clone(),
                ));
            }
            Err(e) if admin.explicit => {
                tracing::error!(addr = %addr, error = %e, "cannot listen on ADMIN_ADDR");
                return ExitCode::from(EXIT_FAILURE);
            }
            Err(e) => {
                tracing::warn!(
                    addr = %addr,
                    error = %e,
                    "the default admin port is not free; running without /metrics, /healthz and /readyz (set ADMIN_ADDR to choose a port, or to off)"
                );
            }
        }
    }

    let common = &engine.settings().common;
    tracing::info!(
        connector = C::NAME,
        version = C::VERSION,
        revision = REVISION,
        topic = %common.topic,
        response_topic = common.response_topic.as_deref().unwrap_or(""),
        error_topic = common.error_topic.as_deref().unwrap_or(""),
        attempts = engine.invoker().attempts(),
        max_in_flight = options.max_in_flight,
        "starting"
    );
    // Alive for the whole run, including while waiting for a broker: a liveness probe must not
    // restart a pod that is only waiting for its broker to come back.
    engine.health().set_alive(true);
    let result = connector.run(engine.clone()).await;
    engine.health().set_alive(false);
    engine.shutdown().cancel();
    if traces.is_on() {
        // Blocking: the exporter's thread sends the last batch through the runtime's tasks.
        let _ = tokio::task::spawn_blocking(move || {
            traces.shutdown(std::time::Duration::from_secs(5));
        })
        .await;
    }
    match result {
        Ok(()) => {
            tracing::info!("stopped");
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "connector failed");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// First SIGTERM/SIGINT: `on_first` (a log line) and `shutdown` is cancelled for a graceful
/// stop. A second one: exit at once.
pub(crate) fn spawn_signal_handler(
    shutdown: tokio_util::sync::CancellationToken,
    on_first: impl FnOnce() + Send + 'static,
) {
    use tokio::signal::unix::{SignalKind, signal};
    // Installed here, before this returns, not in the task: a task spawned on a busy runtime
    // may first run after a SIGTERM that, without a handler, would kill the process outright
    // (seen in CI: a connector stopped right after it connected exited by the signal).
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        on_first();
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::warn!("second signal; exiting without draining");
        std::process::exit(130);
    });
}

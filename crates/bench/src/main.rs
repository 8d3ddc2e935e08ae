//! `cargo xtask bench` runs this after building the connectors in release mode.
//!
//! For each broker and scenario: pre-publish N messages, start the connector (a release binary,
//! a separate process) against a built-in sink, and measure throughput from the first to the last
//! POST, cold start (process start to first POST), CPU seconds per 10 000 messages, peak RSS
//! (`VmHWM`), and, after the backlog, end-to-end latency of a paced live load. Next to each row
//! the limit measured in the same run: the bare HTTP hop (the connectors' own HTTP client,
//! POSTing to the same sink at the same concurrency, no broker), and for a slow sink the
//! Little's-law bound (in-flight ÷ latency).

mod brokers;
mod ceiling;
mod sink;

use brokers::{Broker, Setup};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    latency: Duration,
    in_flight: usize,
    messages: u64,
    live: bool,
    backlog: bool,
    /// Only the original's variables: the connector's own concurrency defaults, `MAX_RETRIES=3`.
    defaults: bool,
}

#[derive(Debug, Default, Clone)]
struct Row {
    broker: String,
    label: String,
    scenario: String,
    in_flight: usize,
    latency_ms: u64,
    messages: u64,
    msgs_per_s: f64,
    hop_msgs_per_s: f64,
    ceiling_msgs_per_s: Option<f64>,
    littles_bound: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    peak_rss_mb: f64,
    idle_rss_mb: Option<f64>,
    rss_range_mb: Option<(f64, f64)>,
    cpu_s_per_10k: f64,
    broker_cpu_s_per_10k: Option<f64>,
    cold_start_ms: f64,
    error: Option<String>,
}

struct Args {
    messages: u64,
    backlog: u64,
    brokers: Vec<Broker>,
    bin_dir: PathBuf,
    out: PathBuf,
    quick: bool,
    only: Option<String>,
    env: Vec<(String, String)>,
    compare: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        messages: 100_000,
        backlog: 1_000_000,
        brokers: Broker::ALL.to_vec(),
        bin_dir: PathBuf::from("target/release"),
        out: PathBuf::from("bench/results"),
        quick: false,
        only: None,
        env: Vec::new(),
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--messages" => {
                a.messages = value("--messages")?
                    .parse()
                    .map_err(|e| format!("--messages: {e}"))?
            }
            "--backlog" => {
                a.backlog = value("--backlog")?
                    .parse()
                    .map_err(|e| format!("--backlog: {e}"))?
            }
            "--brokers" => {
                let list = value("--brokers")?;
                a.brokers = list
                    .split(',')
                    .map(|b| {
                        Broker::ALL
                            .into_iter()
                            .find(|x| x.name() == b.trim())
                            .ok_or(format!(
                                "unknown broker {b:?} (rabbitmq, kafka, redis, nats, sqs)"
                            ))
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--bin-dir" => a.bin_dir = PathBuf::from(value("--bin-dir")?),
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--quick" => a.quick = true,
            "--only" => a.only = Some(value("--only")?),
            "--compare" => a.compare = Some(PathBuf::from(value("--compare")?)),
            "--env" => {
                let kv = value("--env")?;
                let (k, v) = kv.split_once('=').ok_or("--env takes NAME=VALUE")?;
                a.env.push((k.to_owned(), v.to_owned()));
            }
            "-h" | "--help" => {
                return Err(
                    "usage: bench [--messages N (100000)] [--backlog N (1000000, 0 = skip)] \
                     [--brokers rabbitmq,kafka,redis,nats,sqs] [--bin-dir target/release] \
                     [--out bench/results] [--quick] [--only <scenario substring>] \
                     [--env NAME=VALUE (extra connector variable, repeatable)] \
                     [--compare BASELINE.json (ratios against an earlier run)]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    Ok(a)
}

fn scenarios(args: &Args, broker: Broker) -> Vec<Scenario> {
    // The emulator is slow to load; its rows say so rather than pretend.
    let n = if broker == Broker::Sqs {
        args.messages.min(1_000)
    } else {
        args.messages
    };
    let ms = Duration::from_millis(10);
    let tuned = |name: String, latency, in_flight, messages| Scenario {
        name,
        latency,
        in_flight,
        messages,
        live: false,
        backlog: false,
        defaults: false,
    };
    // What a drop-in user runs: Fission sets only the original's variables (issue 22: 20 000
    // messages, MAX_RETRIES=3, every other setting at its default).
    let k = broker.default_concurrency();
    let cap = |c: u64| if args.quick { c / 5 } else { c };
    let mut v = vec![
        Scenario {
            defaults: true,
            ..tuned(
                "defaults, fast sink".into(),
                Duration::ZERO,
                k,
                n.min(cap(20_000)),
            )
        },
        Scenario {
            defaults: true,
            ..tuned(
                "defaults, 10 ms sink".into(),
                ms,
                k,
                n.min(cap(500 * k as u64)),
            )
        },
        tuned("idle".into(), Duration::ZERO, 100, 0),
        Scenario {
            live: true,
            ..tuned("fast sink".into(), Duration::ZERO, 100, n)
        },
    ];
    for (k, c) in [(1usize, 500u64), (10, 5_000), (100, 50_000)] {
        v.push(tuned(format!("10 ms sink x{k}"), ms, k, n.min(cap(c))));
    }
    if args.backlog > 0 && broker != Broker::Sqs {
        v.push(Scenario {
            backlog: true,
            ..tuned("backlog".into(), Duration::ZERO, 100, args.backlog)
        });
    }
    v
}

fn proc_status(pid: u32, field: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// CPU seconds used so far by every process of `broker` (see [`Broker::process`]).
fn broker_cpu_seconds(broker: Broker, ticks: f64) -> Option<f64> {
    let name = broker.process();
    let mut total = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let matches = comm.trim() == name
            || cmdline
                .split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(name) && !arg.is_empty());
        if matches && let Some(cpu) = cpu_seconds(pid, ticks) {
            *total.get_or_insert(0.0) += cpu;
        }
    }
    total
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some(sorted[i] as f64 / 1000.0)
}

fn rate(seen: &sink::Seen, n: u64) -> f64 {
    match *seen.first_last.lock().expect("lock") {
        Some((first, last)) if last > first => {
            (n.saturating_sub(1)) as f64 / (last - first).as_secs_f64()
        }
        _ => 0.0,
    }
}

/// The limit: the connectors' own HTTP client POSTing `n` payloads to a fresh sink with
/// `in_flight` at a time, no broker involved.
async fn bare_hop(latency: Duration, in_flight: usize, n: u64) -> f64 {
    let (url, seen) = sink::start(latency, 100).await;
    let settings = connector_core::testkit::settings(&[
        ("TOPIC", "hop"),
        ("HTTP_ENDPOINT", &url),
        ("MAX_RETRIES", "0"),
        ("CONTENT_TYPE", "application/json"),
    ]);
    let engine = connector_core::Engine::new(
        settings,
        connector_core::HeaderFamily::Keda,
        connector_core::DispatchOptions {
            max_in_flight: in_flight,
            lane_concurrency: 0,
            write_ahead: 0,
        },
        "bench/hop",
    );
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (engine, next) = (engine.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let seq = next.fetch_add(1, Ordering::SeqCst);
                if seq >= n {
                    return;
                }
                let body = bytes::Bytes::from(sink::payload(seq));
                let _ = engine
                    .invoker()
                    .invoke(&body, engine.default_headers())
                    .await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    rate(&seen, n)
}

/// The broker ceiling for a fast-sink scenario: the same backlog on a fresh set-up, drained by
/// [`ceiling::measure`]'s loop with no HTTP call.
async fn broker_ceiling(broker: Broker, sc: &Scenario) -> Result<Option<f64>, Error> {
    // Kafka's outcomes in flight are bounded by MAX_IN_FLIGHT (100 unset), not by the
    // one-partition lane that bounds its calls.
    let held = if sc.defaults && broker == Broker::Kafka {
        100
    } else {
        sc.in_flight
    };
    let setup = Setup::new(broker, Some(sc.in_flight)).await?;
    eprintln!(
        "bench: {} / {}: broker ceiling on {} messages",
        broker.name(),
        sc.name,
        sc.messages
    );
    setup.loader.publish(0, sc.messages).await?;
    let rate = ceiling::measure(broker, &setup, sc.messages, held).await;
    setup.loader.cleanup(&setup.env).await;
    rate
}

async fn run_one(args: &Args, broker: Broker, sc: &Scenario, ticks: f64) -> Result<Row, Error> {
    let setup = Setup::new(broker, (!sc.defaults).then_some(sc.in_flight)).await?;
    let (url, seen) = sink::start(sc.latency, 100).await;
    eprintln!(
        "bench: {} / {}: publishing {} messages",
        broker.name(),
        sc.name,
        sc.messages
    );
    setup.loader.publish(0, sc.messages).await?;
    let admin_port = connector_core::testkit::free_port();
    let mut env = setup.env.clone();
    env.extend([
        ("HTTP_ENDPOINT", url),
        (
            "MAX_RETRIES",
            if sc.defaults { "3" } else { "0" }.to_owned(),
        ),
        ("CONTENT_TYPE", "application/json".to_owned()),
        ("ADMIN_ADDR", format!("127.0.0.1:{admin_port}")),
        (
            "LOG_LEVEL",
            std::env::var("BENCH_LOG_LEVEL").unwrap_or_else(|_| "warn".to_owned()),
        ),
        ("DRAIN_TIMEOUT", "10s".to_owned()),
    ]);
    let extra = args.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    let bin = args.bin_dir.join(broker.binary());
    let started = Instant::now();
    let mut child = tokio::process::Command::new(&bin)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .envs(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start {}: {e} (build it with `cargo xtask bench`)",
                bin.display()
            )
        })?;
    let pid = child.id().ok_or("connector exited at once")?;
    let result = async {
        if sc.messages == 0 {
            return idle(broker, sc, pid, admin_port, started).await;
        }
        if !seen.wait_for(1, Duration::from_secs(60)).await {
            return Err::<Row, Error>("no POST within 60 s of start".into());
        }
        let first = seen
            .first_last
            .lock()
            .expect("lock")
            .map(|(f, _)| f)
            .expect("one POST");
        let cold = first.saturating_duration_since(started);
        let broker_cpu_before = broker_cpu_seconds(broker, ticks);
        // RSS over the drain, sampled: for the backlog scenario, flat or not.
        let range: Arc<std::sync::Mutex<Option<(f64, f64)>>> = Arc::default();
        let sampled = range.clone();
        let sampling = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(rss) = proc_status(pid, "VmRSS:") else {
                    return;
                };
                let mut r = sampled.lock().expect("lock");
                *r = Some(match *r {
                    None => (rss, rss),
                    Some((lo, hi)) => (lo.min(rss), hi.max(rss)),
                });
            }
        });
        let limit = Duration::from_secs(120 + sc.messages / 200);
        if !seen.wait_for(sc.messages, limit).await {
            return Err(format!(
                "only {} of {} messages arrived within {limit:?}",
                seen.count.load(Ordering::SeqCst),
                sc.messages
            )
            .into());
        }
        let msgs_per_s = rate(&seen, sc.messages);
        let broker_cpu = broker_cpu_before
            .zip(broker_cpu_seconds(broker, ticks))
            .map(|(before, after)| {
                (after - before) / sc.messages.saturating_sub(1).max(1) as f64 * 10_000.0
            });
        let cpu = cpu_seconds(pid, ticks).unwrap_or(0.0);
        let peak = proc_status(pid, "VmHWM:").unwrap_or(0.0);
        sampling.abort();
        let range = *range.lock().expect("lock");
        let (mut p50, mut p99, mut idle) = (None, None, None);
        if sc.live {
            // A paced live load (about 500 msgs/s in steps of 25) for end-to-end latency.
            seen.record.store(true, Ordering::SeqCst);
            let live = 1_000u64;
            for step in 0..(live / 25) {
                setup.loader.publish(sc.messages + step * 25, 25).await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if !seen
                .wait_for(sc.messages + live, Duration::from_secs(60))
                .await
            {
                return Err("the live load did not arrive".into());
            }
            let mut lat = seen.latencies.lock().expect("lock").clone();
            lat.sort_unstable();
            p50 = percentile(&lat, 0.50);
            p99 = percentile(&lat, 0.99);
            idle = proc_status(pid, "VmRSS:");
        }
        Ok(Row {
            broker: broker.name().into(),
            label: broker.label().into(),
            scenario: sc.name.clone(),
            in_flight: sc.in_flight,
            latency_ms: sc.latency.as_millis() as u64,
            messages: sc.messages,
            msgs_per_s,
            littles_bound: (!sc.latency.is_zero())
                .then(|| sc.in_flight as f64 / sc.latency.as_secs_f64()),
            p50_ms: p50,
            p99_ms: p99,
            peak_rss_mb: peak,
            idle_rss_mb: idle,
            rss_range_mb: range.filter(|_| sc.backlog),
            cpu_s_per_10k: cpu / sc.messages as f64 * 10_000.0,
            broker_cpu_s_per_10k: broker_cpu,
            cold_start_ms: cold.as_secs_f64() * 1000.0,
            ..Row::default()
        })
    }
    .await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    setup.loader.cleanup(&setup.env).await;
    result
}

/// Connected to an empty source: start to ready (`/readyz` 200), and RSS a second later.
async fn idle(
    broker: Broker,
    sc: &Scenario,
    pid: u32,
    port: u16,
    started: Instant,
) -> Result<Row, Error> {
    let deadline = started + Duration::from_secs(60);
    let ready = loop {
        if ready(port).await {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            return Err("/readyz never answered 200".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Row {
        broker: broker.name().into(),
        label: broker.label().into(),
        scenario: sc.name.clone(),
        in_flight: sc.in_flight,
        peak_rss_mb: proc_status(pid, "VmHWM:").unwrap_or(0.0),
        idle_rss_mb: proc_status(pid, "VmRSS:"),
        cold_start_ms: ready.as_secs_f64() * 1000.0,
        ..Row::default()
    })
}

async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.unwrap_or(0);
    buf[..n].starts_with(b"HTTP/1.1 200") || buf[..n].starts_with(b"HTTP/1.0 200")
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map_or("–".into(), |x| format!("{x:.digits$}"))
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| broker | scenario | msgs | msgs/s | bare hop msgs/s | % of hop | broker ceiling msgs/s | % of min(hop, ceiling) | Little's bound | % of bound | p50 ms | p99 ms | peak RSS MB | idle RSS MB | RSS min–max MB | CPU s / 10k | broker CPU s / 10k | cold start ms |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let broker = if r.label.is_empty() {
            r.broker.clone()
        } else {
            format!("{} ({})", r.broker, r.label)
        };
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "| {broker} | {} | {} | failed: {e} ||||||||||||||||\n",
                r.scenario, r.messages
            ));
            continue;
        }
        if r.messages == 0 {
            out.push_str(&format!(
                "| {broker} | {} | – | – | – | – | – | – | – | – | – | – | {:.1} | {} | – | – | – | {:.0} (to ready) |\n",
                r.scenario,
                r.peak_rss_mb,
                f(r.idle_rss_mb, 1),
                r.cold_start_ms,
            ));
            continue;
        }
        let pct_hop = (r.hop_msgs_per_s > 0.0).then(|| r.msgs_per_s / r.hop_msgs_per_s * 100.0);
        let pct_bound = r.littles_bound.map(|b| r.msgs_per_s / b * 100.0);
        let pct_limit = r
            .ceiling_msgs_per_s
            .map(|c| r.msgs_per_s / c.min(r.hop_msgs_per_s) * 100.0);
        out.push_str(&format!(
            "| {broker} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} | {:.3} | {} | {:.0} |\n",
            r.scenario,
            r.messages,
            r.msgs_per_s,
            r.hop_msgs_per_s,
            f(pct_hop, 0),
            f(r.ceiling_msgs_per_s, 0),
            f(pct_limit, 0),
            f(r.littles_bound, 0),
            f(pct_bound, 0),
            f(r.p50_ms, 1),
            f(r.p99_ms, 1),
            r.peak_rss_mb,
            f(r.idle_rss_mb, 1),
            r.rss_range_mb.map_or("–".into(), |(lo, hi)| format!("{lo:.1}–{hi:.1}")),
            r.cpu_s_per_10k,
            f(r.broker_cpu_s_per_10k, 3),
            r.cold_start_ms,
        ));
    }
    out
}

/// Each figure of this run divided by the same figure of `baseline` (a results JSON written by
/// an earlier run), per broker and scenario found in both: a change is judged by ratios on one
/// machine, not by absolute numbers.
fn compare(rows: &[Row], baseline: &serde_json::Value) -> String {
    let mut out = String::from(
        "| broker | scenario | msgs/s now ÷ then | CPU s / 10k now ÷ then | broker CPU now ÷ then | peak RSS now ÷ then |\n|---|---|---|---|---|---|\n",
    );
    let empty = Vec::new();
    let base = baseline["rows"].as_array().unwrap_or(&empty);
    let ratio = |now: Option<f64>, then: Option<f64>| match (now, then) {
        (Some(n), Some(t)) if t > 0.0 => format!("{:.2}", n / t),
        _ => "–".to_owned(),
    };
    for r in rows.iter().filter(|r| r.error.is_none()) {
        let Some(b) = base
            .iter()
            .find(|b| b["broker"] == r.broker.as_str() && b["scenario"] == r.scenario.as_str())
        else {
            continue;
        };
        let num = |k: &str| b[k].as_f64();
        let some = |v: f64| (v > 0.0).then_some(v);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.broker,
            r.scenario,
            ratio(some(r.msgs_per_s), num("msgs_per_s")),
            ratio(some(r.cpu_s_per_10k), num("cpu_s_per_10k")),
            ratio(r.broker_cpu_s_per_10k, num("broker_cpu_s_per_10k")),
            ratio(some(r.peak_rss_mb), num("peak_rss_mb")),
        ));
    }
    out
}

fn json(rows: &[Row], machine: &str) -> serde_json::Value {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "broker": r.broker, "label": r.label, "scenario": r.scenario,
                "in_flight": r.in_flight, "sink_latency_ms": r.latency_ms, "messages": r.messages,
                "msgs_per_s": r.msgs_per_s, "bare_hop_msgs_per_s": r.hop_msgs_per_s,
                "broker_ceiling_msgs_per_s": r.ceiling_msgs_per_s,
                "littles_bound_msgs_per_s": r.littles_bound, "p50_ms": r.p50_ms, "p99_ms": r.p99_ms,
                "peak_rss_mb": r.peak_rss_mb, "idle_rss_mb": r.idle_rss_mb,
                "rss_min_max_mb": r.rss_range_mb.map(|(a, b)| [a, b]),
                "cpu_s_per_10k": r.cpu_s_per_10k, "broker_cpu_s_per_10k": r.broker_cpu_s_per_10k, "cold_start_ms": r.cold_start_ms, "error": r.error,
            })
        })
        .collect();
    serde_json::json!({ "machine": machine, "rows": rows })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(64);
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ticks = clock_ticks();
    let machine = machine();
    eprintln!("bench: {machine}");
    let mut hops: HashMap<(u64, usize), f64> = HashMap::new();
    let mut rows = Vec::new();
    for &broker in &args.brokers {
        let wanted = |sc: &Scenario| args.only.as_deref().is_none_or(|o| sc.name.contains(o));
        for sc in scenarios(&args, broker).into_iter().filter(wanted) {
            let key = (sc.latency.as_millis() as u64, sc.in_flight);
            if sc.messages == 0 {
                // Nothing to compare with.
            } else if let std::collections::hash_map::Entry::Vacant(slot) = hops.entry(key) {
                let n = sc.messages.min(args.messages);
                eprintln!(
                    "bench: bare HTTP hop, sink {} ms, in-flight {}",
                    key.0, key.1
                );
                slot.insert(bare_hop(sc.latency, sc.in_flight, n).await);
            }
            let mut row = match run_one(&args, broker, &sc, ticks).await {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("bench: {} / {} failed: {e}", broker.name(), sc.name);
                    Row {
                        broker: broker.name().into(),
                        label: broker.label().into(),
                        scenario: sc.name.clone(),
                        messages: sc.messages,
                        error: Some(e.to_string()),
                        ..Row::default()
                    }
                }
            };
            row.hop_msgs_per_s = hops.get(&key).copied().unwrap_or(0.0);
            if row.error.is_none() && sc.latency.is_zero() && sc.messages > 0 && !sc.backlog {
                match broker_ceiling(broker, &sc).await {
                    Ok(c) => row.ceiling_msgs_per_s = c,
                    Err(e) => eprintln!(
                        "bench: {} / {}: no broker ceiling: {e}",
                        broker.name(),
                        sc.name
                    ),
                }
            }
            eprintln!(
                "{}",
                table(std::slice::from_ref(&row))
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            rows.push(row);
        }
    }
    let mut text = table(&rows);
    if let Some(path) = &args.compare {
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(baseline) => {
                text.push_str(&format!("\nCompared with {}:\n\n", path.display()));
                text.push_str(&compare(&rows, &baseline));
            }
            Err(e) => eprintln!("bench: cannot read --compare {}: {e}", path.display()),
        }
    }
    // The table is the program's output.
    #[allow(clippy::print_stdout)]
    {
        println!("Machine: {machine}\n\n{text}");
    }
    let _ = std::fs::create_dir_all(&args.out);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let json_path = args.out.join(format!("bench-{stamp}.json"));
    let md = format!("Machine: {machine}\n\n{text}");
    let written = std::fs::write(
        &json_path,
        serde_json::to_vec_pretty(&json(&rows, &machine)).unwrap_or_default(),
    )
    .and_then(|()| std::fs::write(args.out.join("latest.md"), md));
    if let Err(e) = written {
        eprintln!(
            "bench: cannot write results under {}: {e}",
            args.out.display()
        );
        return std::process::ExitCode::FAILURE;
    }
    eprintln!(
        "bench: wrote {} and {}",
        json_path.display(),
        args.out.join("latest.md").display()
    );
    if rows.iter().any(|r| r.error.is_some()) {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}

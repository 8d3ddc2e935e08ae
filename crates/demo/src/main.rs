//! `cargo xtask demo`: a connector's whole job in one command, with no broker to install.
//!
//! Starts a broker (by default librdkafka's mock cluster, in this process), a built-in echo
//! function, and the broker's connector binary (a separate process, as in production); publishes
//! messages with a progress bar, one of them marked so the function fails it; reads the
//! responses and the error document back from the broker; prints what arrived, the error
//! document and latency figures; stops the connector with SIGTERM and requires a clean exit.
//! Exits non-zero if anything was lost, duplicated or altered.

#![allow(clippy::print_stdout)]

use broker_fixtures::{Error, Fixture, Kind, now_us};
use connector_core::Destination;
use connector_core::testkit::{Process, Reply, Sink};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: demo [--broker kafka|redis|rabbitmq|nats] [--messages N] [--connector-dir DIR]

Publishes N messages (default 2000) to a broker, runs that broker's connector against a built-in
echo function that fails one marked message, reads the responses and the error document back, and
prints what happened. With --broker kafka (the default) nothing needs to be installed: librdkafka's
mock cluster runs inside the demo. The other brokers must be running on 127.0.0.1 at their standard
ports. The connector binary is taken from --connector-dir (default: next to this program).";

/// Marks the one message the echo function refuses.
const FAIL_MARK: &[u8] = br#""induce":"failure""#;
const MAX_RETRIES: u32 = 2;

struct Args {
    kind: Kind,
    messages: usize,
    live: usize,
    connector_dir: Option<PathBuf>,
}

fn parse_args() -> Result<Option<Args>, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        kind: Kind::Kafka,
        messages: 2000,
        live: 100,
        connector_dir: None,
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("broker") | Short('b') => {
                let v = parser.value()?.string()?;
                args.kind = Kind::parse(&v).ok_or_else(|| {
                    format!("--broker: expected kafka, redis, rabbitmq or nats, got {v:?}")
                })?;
            }
            Long("messages") | Short('n') => {
                args.messages = parser.value()?.parse()?;
                if args.messages < 2 {
                    return Err("--messages: at least 2 (one of them is failed on purpose)".into());
                }
            }
            Long("one-by-one") => args.live = parser.value()?.parse()?,
            Long("connector-dir") => args.connector_dir = Some(parser.value()?.into()),
            Long("help") | Short('h') => return Ok(None),
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(Some(args))
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("demo: {e}\n\n{USAGE}");
            return ExitCode::from(64);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn payload(id: usize, fail: bool) -> Vec<u8> {
    let mark = if fail { r#","induce":"failure""# } else { "" };
    format!(r#"{{"id":{id},"sent_us":{}{mark}}}"#, now_us()).into_bytes()
}

/// `(id, sent_us)` of a payload this demo made.
fn stamp(body: &[u8]) -> Option<(usize, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((v["id"].as_u64()? as usize, v["sent_us"].as_u64()?))
}

fn bar(multi: &MultiProgress, len: usize, prefix: &'static str) -> ProgressBar {
    let style =
        ProgressStyle::with_template("  {prefix:<10} [{bar:32}] {pos:>7}/{len} {per_sec:>12}")
            .expect("static template")
            .progress_chars("=> ");
    multi.add(
        ProgressBar::new(len as u64)
            .with_style(style)
            .with_prefix(prefix),
    )
}

fn ms(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

fn secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        ms(d.as_micros() as u64)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// What came back from the destinations.
#[derive(Default)]
struct Outcomes {
    responses: usize,
    altered: usize,
    duplicates: usize,
    unknown: usize,
    latencies_us: Vec<u64>,
    error_documents: Vec<Vec<u8>>,
    last_at: Option<Instant>,
}

async fn run(args: Args) -> Result<(), Error> {
    let dir = match args.connector_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
    };
    let binary = dir.join(args.kind.binary());
    if !binary.is_file() {
        return Err(format!(
            "no connector binary at {}; build it with `cargo build -p {}` (or run `cargo xtask demo`, which builds both)",
            binary.display(),
            args.kind.binary()
        )
        .into());
    }
    let n = args.messages;
    let fail_id = n / 2;
    let profile = if cfg!(debug_assertions) {
        "debug build; `cargo xtask demo` uses release"
    } else {
        "release build"
    };

    let mut demo = Fixture::start(args.kind).await?;
    let sink = Sink::start().await;
    sink.respond(|r| {
        if r.body.windows(FAIL_MARK.len()).any(|w| w == FAIL_MARK) {
            Reply::status(500).body("induced failure")
        } else {
            Reply::status(200)
                .header("content-type", "application/json")
                .body(r.body.clone())
        }
    });
    println!("keda-connectors demo ({profile})");
    println!("  broker     {}", demo.description);
    println!(
        "  function   built-in echo at {} (answers 500 to the message marked to fail)",
        sink.url("/fission-function/echo")
    );

    let mut env = demo.env.clone();
    env.extend([
        ("HTTP_ENDPOINT", sink.url("/fission-function/echo")),
        ("MAX_RETRIES", MAX_RETRIES.to_string()),
        ("CONTENT_TYPE", "application/json".to_owned()),
        ("SOURCE_NAME", "demo".to_owned()),
        ("RETRY_BACKOFF_BASE", "50ms".to_owned()),
    ]);
    let started = Instant::now();
    let mut connector = Process::start(&binary.to_string_lossy(), &env);
    connector.wait_log(args.kind.consuming_log(), 1).await;
    println!(
        "  connector  {} (pid {}) consuming after {} ms",
        args.kind.binary(),
        connector.id().unwrap_or(0),
        started.elapsed().as_millis()
    );
    println!();

    let multi = MultiProgress::new();
    let published_bar = bar(&multi, n, "published");
    let answered_bar = bar(&multi, n, "answered");
    let sent: Mutex<HashMap<usize, Vec<u8>>> = Mutex::default();
    let mut outcomes = demo.take_outcomes();
    let first_sent = Instant::now();
    let publish = async {
        for start in (0..n).step_by(500) {
            let chunk: Vec<Vec<u8>> = (start..(start + 500).min(n))
                .map(|id| payload(id, id == fail_id))
                .collect();
            sent.lock().expect("lock").extend(
                chunk
                    .iter()
                    .cloned()
                    .enumerate()
                    .map(|(i, p)| (start + i, p)),
            );
            demo.publish(&chunk, start, |n| published_bar.inc(n))
                .await?;
        }
        published_bar.finish();
        Ok::<_, Error>(first_sent.elapsed())
    };
    let read = async {
        let mut got = Outcomes::default();
        let mut seen = vec![false; n];
        while got.responses + got.error_documents.len() < n {
            let (destination, body, arrived_us) = outcomes.next().await?;
            answered_bar.inc(1);
            got.last_at = Some(Instant::now());
            if destination == Destination::Error {
                got.error_documents.push(body);
                continue;
            }
            got.responses += 1;
            let Some((id, sent_us)) = stamp(&body).filter(|(id, _)| *id < n) else {
                got.unknown += 1;
                continue;
            };
            if std::mem::replace(&mut seen[id], true) {
                got.duplicates += 1;
            }
            if sent.lock().expect("lock").get(&id) != Some(&body) {
                got.altered += 1;
            }
            got.latencies_us.push(arrived_us.saturating_sub(sent_us));
        }
        answered_bar.finish();
        Ok::<_, Error>(got)
    };
    let limit = Duration::from_secs(120 + n as u64 / 500);
    let (publish_time, mut got) =
        match tokio::time::timeout(limit, futures_lite::future::zip(publish, read)).await {
            Ok((p, r)) => (p?, r?),
            Err(_) => {
                return Err(format!(
                    "not every message came back within {limit:?}; the connector's log:\n{}",
                    connector.logs()
                )
                .into());
            }
        };
    let answer_time = got.last_at.map_or(Duration::ZERO, |t| t - first_sent);

    // Live: one message at a time, each awaited back before the next, so the figure is the
    // connector's own per-message latency rather than time spent queued behind a backlog.
    let live_bar = bar(&multi, args.live, "one by one");
    let live = async {
        let mut latencies = Vec::with_capacity(args.live);
        let mut wrong = 0;
        for id in n..n + args.live {
            let p = payload(id, false);
            let sent_us = stamp(&p).map_or(0, |(_, t)| t);
            demo.publish(std::slice::from_ref(&p), id, |n| live_bar.inc(n))
                .await?;
            let (destination, body, arrived_us) = outcomes.next().await?;
            if destination != Destination::Response || body != p {
                wrong += 1;
            }
            latencies.push(arrived_us.saturating_sub(sent_us));
        }
        live_bar.finish();
        Ok::<_, Error>((latencies, wrong))
    };
    let (mut live_latencies, live_wrong) = match tokio::time::timeout(limit, live).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(format!(
                    "the one-by-one messages did not come back within {limit:?}; the connector's log:\n{}",
                    connector.logs()
                )
                .into());
        }
    };

    let stopping = Instant::now();
    connector.signal("-TERM");
    let status = connector.wait_exit().await;
    let stop_time = stopping.elapsed();
    demo.cleanup().await;

    let requests = sink.requests();
    let failed_attempts = requests
        .iter()
        .filter(|r| r.body.windows(FAIL_MARK.len()).any(|w| w == FAIL_MARK))
        .count();
    println!();
    println!(
        "  published  {n} messages to {} in {}",
        demo.names[0],
        secs(publish_time)
    );
    println!(
        "  function   {} requests: {} answered 200, the marked message {failed_attempts} times \
         (1 + MAX_RETRIES={MAX_RETRIES}) with 500",
        requests.len(),
        requests.len() - failed_attempts
    );
    println!(
        "  one by one {} more, each published after the previous response came back",
        args.live
    );
    println!(
        "  responses  {} read back from {}: {} byte-identical to the message sent, {} altered, \
         {} duplicated, {} unknown",
        got.responses,
        demo.names[1],
        got.responses - got.altered - got.unknown,
        got.altered,
        got.duplicates,
        got.unknown
    );
    println!(
        "  errors     {} error document(s) on {}:",
        got.error_documents.len(),
        demo.names[2]
    );
    for doc in &got.error_documents {
        let pretty = serde_json::from_slice::<serde_json::Value>(doc)
            .and_then(|v| serde_json::to_string_pretty(&v))
            .unwrap_or_else(|_| String::from_utf8_lossy(doc).into_owned());
        for line in pretty.lines() {
            println!("             {line}");
        }
    }
    println!(
        "  latency    backlog of {n} published at once, publish → response readable: {}",
        percentiles(&mut got.latencies_us)
    );
    println!(
        "             one message at a time ({}): {}",
        args.live,
        percentiles(&mut live_latencies)
    );
    println!(
        "  throughput {n} messages answered in {} = {:.0} messages/s (publishing included)",
        secs(answer_time),
        n as f64 / answer_time.as_secs_f64().max(1e-6)
    );
    println!(
        "  shutdown   SIGTERM → drained and exited with {} in {} ms",
        status
            .code()
            .map_or("a signal".to_owned(), |c| c.to_string()),
        stop_time.as_millis()
    );

    let mut problems = Vec::new();
    if got.responses != n - 1 || got.duplicates + got.altered + got.unknown > 0 {
        problems.push(format!("expected {} distinct, unaltered responses", n - 1));
    }
    let error_ok =
        got.error_documents.len() == 1 && stamp_of_error(&got.error_documents[0]) == Some(fail_id);
    if !error_ok {
        problems.push("expected exactly one error document, for the marked message".to_owned());
    }
    if failed_attempts != 1 + MAX_RETRIES as usize {
        problems.push(format!(
            "the marked message was tried {failed_attempts} times, expected {}",
            1 + MAX_RETRIES
        ));
    }
    if live_wrong > 0 {
        problems.push(format!(
            "{live_wrong} one-by-one messages did not come back unaltered"
        ));
    }
    if status.code() != Some(0) {
        problems.push(format!(
            "the connector did not exit cleanly ({status}); its log:\n{}",
            connector.logs()
        ));
    }
    if problems.is_empty() {
        println!(
            "\nok: every message answered exactly once, the failure arrived as an error document, clean shutdown"
        );
        Ok(())
    } else {
        Err(problems.join("; ").into())
    }
}

/// "p50 … · p90 … · p99 … · max …" of latencies in µs.
fn percentiles(latencies: &mut [u64]) -> String {
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1));
        latencies.get(i).copied().unwrap_or(0)
    };
    format!(
        "p50 {} · p90 {} · p99 {} · max {}",
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(latencies.last().copied().unwrap_or(0))
    )
}

/// The id of the message an error document is about (its `FunctionHTTPRequest.Message`).
fn stamp_of_error(doc: &[u8]) -> Option<usize> {
    let v: serde_json::Value = serde_json::from_slice(doc).ok()?;
    let message = v["FunctionHTTPRequest"]["Message"].as_str()?;
    stamp(message.as_bytes()).map(|(id, _)| id)
}

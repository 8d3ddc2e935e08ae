//! A KEDA stand-in on one machine (`cargo xtask autoscale`, and the short profile in
//! `tests/scaling.rs`): it reads the metric KEDA's scaler for the broker reads
//! ([`broker_fixtures::Fixture::keda_metric`]), decides replicas as KEDA and the HPA would
//! ([`hpa`]), and starts connector processes or stops them with SIGTERM and a grace period
//! ([`fleet`]) while a load profile runs: idle at zero → burst → sustained rate (replicas
//! replaced one by one as nodes drain) → ramp down → idle until scaled to zero → one message
//! (activation). Then it counts: every message answered, what was invoked twice, per-partition
//! order for Kafka, how long scale-ins and the activation took; and, when asked, how
//! throughput grows with replicas on a sink with latency.

pub mod fleet;
pub mod hpa;

use crate::{Collector, WAIT};
use broker_fixtures::{Fixture, KINESIS_CHECKPOINT_INTERVAL, Kind};
use connector_core::testkit::{Reply, Sink};
use fleet::{Fleet, Stopped};
use hpa::{Hpa, Scaling};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// The load the run puts on the source.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Idle at zero replicas before anything is published.
    pub idle: Duration,
    /// Messages published at once.
    pub burst: usize,
    /// The sustained rate (msgs/s) and for how long.
    pub rate: usize,
    /// How long the sustained rate lasts.
    pub sustain: Duration,
    /// From the rate down to nothing, linearly.
    pub ramp: Duration,
    /// During the sustained rate, one replica is replaced this often (a node drained).
    pub churn: Option<Duration>,
}

/// Everything one run needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The broker.
    pub kind: Kind,
    /// The load.
    pub profile: Profile,
    /// The ScaledObject and HPA settings.
    pub scaling: Scaling,
    /// Each replica's in-flight limit during the profile.
    pub in_flight: usize,
    /// How long the function takes per message.
    pub sink_delay: Duration,
    /// Where the connector binaries are.
    pub bin_dir: PathBuf,
    /// Replica counts for the scaling-efficiency measurement (none: not measured).
    pub efficiency: Vec<usize>,
    /// How long each efficiency point is measured.
    pub efficiency_window: Duration,
    /// Print a progress line every second.
    pub progress: bool,
    /// Kafka on a tansu process rather than librdkafka's mock cluster in this process.
    pub kafka_on_tansu: bool,
    /// Extra connector variables (replacing the run's own).
    pub env: Vec<(&'static str, String)>,
}

impl Options {
    /// The short profile (CI: a minute or less per broker) or the full one (by hand).
    pub fn new(kind: Kind, full: bool, bin_dir: PathBuf) -> Self {
        // moto answers SQS at ≈ 30 msgs/s on this machine: a tenth of the load.
        let slow = kind == Kind::Sqs;
        let scale = |n: usize| if slow { (n / 10).max(1) } else { n };
        let secs = Duration::from_secs;
        let profile = if full {
            Profile {
                idle: secs(10),
                burst: scale(3000),
                rate: scale(300),
                sustain: secs(60),
                ramp: secs(20),
                churn: Some(secs(15)),
            }
        } else {
            Profile {
                idle: secs(2),
                burst: scale(400),
                rate: scale(150),
                sustain: secs(8),
                ramp: secs(3),
                churn: Some(secs(4)),
            }
        };
        let scaling = Scaling {
            // Kinesis scales on shards, one replica per two (KEDA's default shardCount).
            target: match kind {
                Kind::Kinesis => 2.0,
                _ => scale(50) as f64,
            },
            activation: 0.0,
            min: 0,
            max: 4,
            polling: if full {
                secs(2)
            } else {
                Duration::from_millis(500)
            },
            cooldown: if full { secs(20) } else { secs(3) },
            stabilization: if full { secs(20) } else { secs(3) },
            grace: secs(30),
        };
        Self {
            kind,
            profile,
            scaling,
            in_flight: 4,
            sink_delay: Duration::from_millis(20),
            bin_dir,
            efficiency: if full { vec![1, 2, 4] } else { Vec::new() },
            efficiency_window: secs(8),
            progress: full,
            kafka_on_tansu: false,
            env: Vec::new(),
        }
    }

    /// The source's partitions (Kafka) or shards (Kinesis): enough for every replica count
    /// the run uses (KEDA's Kafka scaler never asks for more replicas than partitions).
    fn partitions(&self) -> usize {
        let most = self.efficiency.iter().copied().max().unwrap_or(0);
        match self.kind {
            // Two replicas' worth of shards at the default two shards each.
            Kind::Kinesis => most.max(4),
            _ => most.max(self.scaling.max),
        }
    }
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// The broker.
    pub broker: String,
    /// Messages published.
    pub published: usize,
    /// Published messages without a response (must be 0).
    pub lost: usize,
    /// Error documents (must be 0: the function never fails here).
    pub errors: usize,
    /// Function calls beyond one per message.
    pub invoked_twice: usize,
    /// Responses beyond one per message.
    pub response_duplicates: usize,
    /// The most a replica may redo per stop, times the stops.
    pub duplicate_bound: usize,
    /// Messages of a Kafka partition whose first call came after a later offset's.
    pub out_of_order: usize,
    /// Replicas started.
    pub started: usize,
    /// The most replicas at once.
    pub peak: usize,
    /// Replicas stopped by SIGTERM that exited 0 within the grace period.
    pub graceful: usize,
    /// Replicas SIGKILLed after the grace period, or exiting non-zero.
    pub forced: usize,
    /// SIGTERM to exit: mean and longest.
    pub scale_in: (Duration, Duration),
    /// First message after zero replicas → its call (None where the broker's scaler never
    /// scales to zero).
    pub activation: Option<Duration>,
    /// Whether the run reached zero replicas after the load.
    pub reached_zero: bool,
    /// The polling interval, for reading the activation latency.
    pub polling: Duration,
    /// Throughput at N replicas (msgs/s), for the efficiency table.
    pub throughput: Vec<(usize, f64)>,
    /// The whole run.
    pub took: Duration,
    /// What went wrong, one line each (empty: the run passed).
    pub failures: Vec<String>,
}

impl Report {
    /// Scaling efficiency at each measured N: msgs/s at N ÷ (N × msgs/s at 1).
    pub fn efficiency(&self) -> Vec<(usize, f64, f64)> {
        let one = self
            .throughput
            .iter()
            .find(|(n, _)| *n == 1)
            .map(|(_, r)| *r);
        self.throughput
            .iter()
            .map(|(n, r)| (*n, *r, one.map_or(0.0, |o| r / (*n as f64 * o))))
            .collect()
    }

    /// One line for the test output and the docs.
    pub fn line(&self) -> String {
        let activation = self
            .activation
            .map_or("never scales to zero".to_owned(), |a| {
                format!("activation {} ms", a.as_millis())
            });
        format!(
            "{}: {} messages, {} lost, {} error documents, {} invoked twice (bound {}), {} \
             response duplicates, {} out of order; replicas: {} started, peak {}, {} stopped \
             gracefully, {} forced; scale-in mean {} ms, max {} ms; {activation}; {:.0} s",
            self.broker,
            self.published,
            self.lost,
            self.errors,
            self.invoked_twice,
            self.duplicate_bound,
            self.response_duplicates,
            self.out_of_order,
            self.started,
            self.peak,
            self.graceful,
            self.forced,
            self.scale_in.0.as_millis(),
            self.scale_in.1.as_millis(),
            self.took.as_secs_f64()
        )
    }

    /// The summary table (Markdown), one row per report.
    pub fn table(reports: &[Report]) -> String {
        let mut t = String::from(
            "| broker | messages | lost | invoked twice (bound) | out of order | replicas started / peak | \
             scale-in mean / max ms | forced stops | activation ms | msgs/s at N replicas (efficiency) |\n\
             |---|---|---|---|---|---|---|---|---|---|\n",
        );
        for r in reports {
            let eff: Vec<String> = r
                .efficiency()
                .iter()
                .map(|(n, rate, e)| format!("{n}: {rate:.0} ({:.0} %)", e * 100.0))
                .collect();
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} ({}) | {} | {} / {} | {} / {} | {} | {} | {} |",
                r.broker,
                r.published,
                r.lost,
                r.invoked_twice,
                r.duplicate_bound,
                r.out_of_order,
                r.started,
                r.peak,
                r.scale_in.0.as_millis(),
                r.scale_in.1.as_millis(),
                r.forced,
                r.activation
                    .map_or("–".to_owned(), |a| a.as_millis().to_string()),
                if eff.is_empty() {
                    "–".to_owned()
                } else {
                    eff.join(", ")
                }
            );
        }
        t
    }
}

/// The Kafka connector's `auto.commit.interval.ms`.
const KAFKA_COMMIT_INTERVAL: Duration = Duration::from_secs(1);

/// What the controller shows the run.
#[derive(Debug, Clone, Copy, Default)]
struct Status {
    /// Running replicas (the controller's count).
    replicas: usize,
    /// Running and terminating ones.
    alive: usize,
    metric: u64,
}

/// Runs the profile (and the efficiency measurement, if asked) against `opts.kind`.
pub async fn run(opts: &Options) -> Report {
    let started = Instant::now();
    let kind = opts.kind;
    let fx = if kind == Kind::Kafka && opts.kafka_on_tansu {
        Fixture::start_kafka_on_tansu(opts.partitions()).await
    } else {
        Fixture::start_partitioned(kind, opts.partitions()).await
    };
    let mut fx = fx.unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    let delay = opts.sink_delay;
    sink.respond(move |r| Reply::status(200).body(r.body.clone()).delay(delay));
    let binary = crate::binary_in(&opts.bin_dir, kind);
    let mut env = replica_env(kind, &fx, &sink.url("/fn"), opts.in_flight);
    for (k, v) in &opts.env {
        env.retain(|(name, _)| name != k);
        env.push((k, v.clone()));
    }
    let mut report = Report {
        broker: format!("{kind:?}"),
        polling: opts.scaling.polling,
        ..Report::default()
    };

    // The first rollout: durable consumers, groups and lease tables exist before the
    // controller takes over at zero, as they do for a deployment that has run before (KEDA's
    // NATS scaler reads a consumer that only the connector creates).
    let mut first = Fleet::new(binary.clone(), env.clone(), opts.scaling.grace);
    first.start().wait_log(kind.consuming_log(), 1).await;
    let stops = first.shut_down().await;

    let (status_tx, status) = watch::channel(Status::default());
    let (churn_tx, churn) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let progress = opts.progress.then(|| {
        let (sink, status) = (sink.clone(), status.clone());
        tokio::spawn(async move {
            let mut last = 0;
            let t0 = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = *status.borrow();
                let now = sink.count();
                eprintln!(
                    "autoscale: {kind:?} t={:>4.0}s replicas={} metric={} calls={} ({} msgs/s)",
                    t0.elapsed().as_secs_f64(),
                    s.replicas,
                    s.metric,
                    now,
                    now - last
                );
                last = now;
            }
        })
    });
    let mut load = Load {
        kind,
        fx: &fx,
        next: 0,
        published: Vec::new(),
    };
    // The controller and the load run side by side in this task (the Kafka mock cluster
    // inside the fixture cannot move between threads).
    let (fleet, ()) = tokio::join!(
        control(
            &fx,
            Fleet::new(binary.clone(), env.clone(), opts.scaling.grace),
            Hpa::new(opts.scaling.clone()),
            opts.profile.churn,
            status_tx,
            churn,
            stop,
        ),
        async {
            profile(
                opts,
                &mut load,
                &sink,
                &collector,
                status,
                churn_tx,
                &mut report,
            )
            .await;
            let _ = stop_tx.send(true);
        }
    );
    if let Some(p) = progress {
        p.abort();
    }
    report.started = fleet.started();
    report.peak = fleet.peak();
    let mut stopped = stops;
    stopped.extend(fleet.shut_down().await);
    let calls = sink.requests();
    count(
        &mut report,
        opts,
        &load.published,
        &collector,
        &calls,
        &stopped,
    );

    if !opts.efficiency.is_empty() {
        sink.forget_requests();
        for &n in &opts.efficiency {
            let rate = throughput(opts, &mut load, &binary, &env, &sink, &collector, n).await;
            report.throughput.push((n, rate));
        }
    }
    fx.cleanup().await;
    report.took = started.elapsed();
    report
}

/// The load profile against the running controller: idle, burst, sustained rate with churn,
/// ramp down, every message answered, then (where the scaler scales to zero) zero replicas
/// and one message to measure the activation.
async fn profile(
    opts: &Options,
    load: &mut Load<'_>,
    sink: &Sink,
    collector: &Collector,
    mut status: watch::Receiver<Status>,
    churn: watch::Sender<bool>,
    report: &mut Report,
) {
    let kind = opts.kind;
    let p = &opts.profile;
    let scales_to_zero = kind != Kind::Kinesis;
    // Idle at zero: nothing to read, nothing started (the idle time is the profile, not a
    // wait for an event).
    tokio::time::sleep(p.idle).await;
    if scales_to_zero && status.borrow().alive != 0 {
        report
            .failures
            .push("replicas started while the source was empty".into());
    }
    load.publish(p.burst).await;
    let _ = churn.send(p.churn.is_some());
    load.paced(p.rate, p.sustain, false).await;
    let _ = churn.send(false);
    load.paced(p.rate, p.ramp, true).await;
    let missing = collector.unanswered_after(&load.published, WAIT).await;
    if !missing.is_empty() {
        let shown: Vec<String> = missing
            .iter()
            .take(20)
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        report.failures.push(format!(
            "{} messages without a response {WAIT:?} after the last was published (first: {})",
            missing.len(),
            shown.join(", ")
        ));
        if kind == Kind::Kinesis {
            // Read the stream again from its start: a response there was passed over by the
            // live reader; one absent was never stored (moto gives two concurrent writes to a
            // shard one sequence number, and keeps one: docs/deployment.md).
            match load.fx.kinesis_responses_from_start().await {
                Ok(stored) => {
                    let stored: HashSet<&[u8]> = stored.iter().map(Vec::as_slice).collect();
                    let there = missing
                        .iter()
                        .filter(|m| stored.contains(m.as_slice()))
                        .count();
                    report.failures.push(format!(
                        "{there} of the {} are in the response stream when it is read again \
                         from its start",
                        missing.len()
                    ));
                }
                Err(e) => report
                    .failures
                    .push(format!("reading the response stream again: {e}")),
            }
        }
        return;
    }
    if !scales_to_zero {
        return;
    }
    // The guard `wait_for` returns holds the status's lock: dropped within the statement, or
    // the controller could not publish the next status.
    report.reached_zero = matches!(
        tokio::time::timeout(WAIT, status.wait_for(|s| s.alive == 0 && s.metric == 0)).await,
        Ok(Ok(_))
    );
    if !report.reached_zero {
        report
            .failures
            .push("never scaled to zero after the load".into());
        return;
    }
    let calls = sink.count();
    let sent = Instant::now();
    let single = load.publish(1).await.to_vec();
    sink.wait_for_requests(calls + 1, WAIT).await;
    report.activation = sink
        .requests()
        .iter()
        .find(|r| r.body.as_ref() == single[0].as_slice())
        .map(|r| r.at.duration_since(sent));
    collector
        .wait_answered(&format!("{kind:?}: the single message answered"), &single)
        .await;
}

/// The publishing side of the profile.
struct Load<'a> {
    kind: Kind,
    fx: &'a Fixture,
    /// The next message's number.
    next: usize,
    /// Every message published, in order.
    published: Vec<Vec<u8>>,
}

impl Load<'_> {
    /// Publishes `n` messages, each accepted by the broker before it returns.
    async fn publish(&mut self, n: usize) -> &[Vec<u8>] {
        let kind = self.kind;
        let batch: Vec<Vec<u8>> = (self.next..self.next + n)
            .map(|i| format!("{kind:?}-scale-{i:07}").into_bytes())
            .collect();
        self.fx
            .publish(&batch, self.next, |_| {})
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: publish: {e}"));
        self.next += n;
        let from = self.published.len();
        self.published.extend(batch);
        &self.published[from..]
    }

    /// Publishes at `rate` msgs/s (falling linearly to zero when `ramp`) for `length`, in
    /// tenth-of-a-second batches.
    async fn paced(&mut self, rate: usize, length: Duration, ramp: bool) {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut owed = 0.0;
        while start.elapsed() < length {
            tick.tick().await;
            let left = 1.0 - start.elapsed().as_secs_f64() / length.as_secs_f64();
            owed += rate as f64 / 10.0 * if ramp { left.max(0.0) } else { 1.0 };
            let n = owed as usize;
            owed -= n as f64;
            if n > 0 {
                self.publish(n).await;
            }
        }
    }
}

/// The controller: polls the metric, scales the fleet, replaces a replica every `churn`
/// while asked to; returns the fleet when told to stop.
async fn control(
    fx: &Fixture,
    mut fleet: Fleet,
    mut hpa: Hpa,
    churn_every: Option<Duration>,
    status: watch::Sender<Status>,
    churn: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
) -> Fleet {
    let mut poll = tokio::time::interval(hpa.scaling().polling);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_churn = Instant::now();
    let mut failing: Option<String> = None;
    while !*stop.borrow() {
        poll.tick().await;
        // A metric that cannot be read keeps the replicas as they are, as KEDA does.
        let metric = match fx.keda_metric().await {
            Ok(m) => m,
            Err(e) => {
                let e = e.to_string();
                if failing.as_ref() != Some(&e) {
                    eprintln!("autoscale: the metric cannot be read: {e}");
                    failing = Some(e);
                }
                continue;
            }
        };
        failing = None;
        let want = hpa.desired(Instant::now(), metric as f64, fleet.len());
        fleet.scale_to(want);
        if *churn.borrow() && !fleet.is_empty() {
            if churn_every.is_some_and(|every| last_churn.elapsed() >= every) {
                fleet.replace_oldest();
                last_churn = Instant::now();
            }
        } else {
            last_churn = Instant::now();
        }
        let _ = status.send(Status {
            replicas: fleet.len(),
            alive: fleet.alive(),
            metric,
        });
    }
    fleet
}

/// The connector's environment for a replica: the fixture's, less the fixed consumer names
/// the restart tests use (each pod here has its own `HOSTNAME`), the endpoint, the in-flight
/// limit (for Kafka only `MAX_IN_FLIGHT`: each partition stays in order), and the message id
/// header for the order check.
fn replica_env(
    kind: Kind,
    fx: &Fixture,
    endpoint: &str,
    in_flight: usize,
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = fx
        .env
        .iter()
        .filter(|(k, _)| !matches!(*k, "CONSUMER_ID" | "WORKER_ID"))
        .cloned()
        .collect();
    env.extend([
        ("HTTP_ENDPOINT", endpoint.to_owned()),
        ("MAX_RETRIES", "0".to_owned()),
        ("CONTENT_TYPE", "application/octet-stream".to_owned()),
        ("METADATA_HEADERS", "true".to_owned()),
    ]);
    match kind {
        Kind::Kafka => env.push(("MAX_IN_FLIGHT", in_flight.to_string())),
        _ => env.extend(kind.in_flight_env(in_flight)),
    }
    env
}

/// Counts what the run did into `report` and notes each failure.
fn count(
    report: &mut Report,
    opts: &Options,
    published: &[Vec<u8>],
    collector: &Collector,
    calls: &[connector_core::testkit::Recorded],
    stopped: &[Stopped],
) {
    let (kind, in_flight, sink_delay) = (opts.kind, opts.in_flight, opts.sink_delay);
    let seen = collector.snapshot();
    report.published = published.len();
    report.lost = published
        .iter()
        .filter(|p| !seen.responses.contains_key(*p))
        .count();
    report.errors = seen.errors.len();
    report.response_duplicates = seen.responses.values().map(|n| n - 1).sum();
    let mut per_body: HashMap<&[u8], usize> = HashMap::new();
    for c in calls {
        *per_body.entry(c.body.as_ref()).or_default() += 1;
    }
    report.invoked_twice = per_body.values().map(|n| n - 1).sum();
    report.forced = stopped
        .iter()
        .filter(|s| s.killed || s.code != Some(0))
        .count();
    report.graceful = stopped.len() - report.forced;
    // What one ownership change may redo. Every broker: what a stopped replica held. Kafka
    // and Kinesis also hand a partition or shard to its next owner at its last commit or
    // checkpoint, so a change redoes up to one interval of the fleet's throughput (with
    // Kafka's eager rebalancing, every member's partitions move at every change).
    let per_change = kind.most_held(in_flight) * report.peak.max(1);
    let interval = match kind {
        Kind::Kafka => Some(KAFKA_COMMIT_INTERVAL),
        Kind::Kinesis => Some(KINESIS_CHECKPOINT_INTERVAL),
        _ => None,
    };
    report.duplicate_bound = match interval {
        None => stopped.len() * kind.most_held(in_flight),
        Some(every) => {
            let fleet_rate = (report.peak * in_flight) as f64 / sink_delay.as_secs_f64();
            (report.started + stopped.len())
                * (per_change + (fleet_rate * every.as_secs_f64()).ceil() as usize)
        }
    };
    if !stopped.is_empty() {
        let total: Duration = stopped.iter().map(|s| s.took).sum();
        report.scale_in = (
            total / stopped.len() as u32,
            stopped.iter().map(|s| s.took).max().unwrap_or_default(),
        );
    }
    if kind == Kind::Kafka {
        report.out_of_order = out_of_order(calls);
    }
    if report.lost > 0 {
        // Called but not answered points at the response's write (or its reading back); never
        // called, at the source (a record skipped).
        let called = published
            .iter()
            .filter(|p| !seen.responses.contains_key(*p) && per_body.contains_key(p.as_slice()))
            .count();
        report.failures.push(format!(
            "{} messages without a response, {called} of them called by the function",
            report.lost
        ));
    }
    if report.errors > 0 {
        report
            .failures
            .push(format!("{} error documents", report.errors));
    }
    if report.invoked_twice > report.duplicate_bound {
        report.failures.push(format!(
            "{} calls redone, more than the bound {}",
            report.invoked_twice, report.duplicate_bound
        ));
    }
    if report.out_of_order > 0 {
        report.failures.push(format!(
            "{} Kafka messages called after a later offset of their partition",
            report.out_of_order
        ));
    }
    for s in stopped.iter().filter(|s| s.killed || s.code != Some(0)) {
        report.failures.push(format!(
            "{} {} {:?} after SIGTERM; its log:\n{}",
            s.name,
            if s.killed {
                "was killed after the grace period"
            } else {
                "exited with"
            },
            s.code,
            s.log.as_deref().unwrap_or("")
        ));
    }
}

/// Counts messages whose first call arrived after the first call of a higher offset of the same
/// partition (read from `Keda-Message-Id`, `topic/partition/offset`): a partition handed to a
/// new owner while the old one still calls, or an owner starting past unsettled offsets.
fn out_of_order(calls: &[connector_core::testkit::Recorded]) -> usize {
    let mut seen: HashSet<(String, u64)> = HashSet::new();
    let mut highest: HashMap<String, u64> = HashMap::new();
    let mut late = 0;
    for c in calls {
        let Some(id) = c
            .headers
            .get(connector_core::delivery::MESSAGE_ID_HEADER)
            .and_then(|v| v.to_str().ok())
        else {
            continue;
        };
        let Some((partition, offset)) = id
            .rsplit_once('/')
            .and_then(|(p, o)| Some((p.to_owned(), o.parse::<u64>().ok()?)))
        else {
            continue;
        };
        if !seen.insert((partition.clone(), offset)) {
            continue; // a repeat; its first call was counted
        }
        let top = highest.entry(partition).or_insert(offset);
        if offset < *top {
            late += 1;
        } else {
            *top = offset;
        }
    }
    late
}

/// Messages per second through `n` replicas started together on a backlog, in-flight 1 each
/// (so that one replica is bound by the function's latency, not by the machine), measured over
/// `opts.efficiency_window` once all of them consume. Every message is answered before it
/// returns.
async fn throughput(
    opts: &Options,
    load: &mut Load<'_>,
    binary: &str,
    env: &[(&'static str, String)],
    sink: &Sink,
    collector: &Collector,
    n: usize,
) -> f64 {
    let kind = opts.kind;
    let per_replica = 1.0 / opts.sink_delay.as_secs_f64();
    let warm = Duration::from_secs(3);
    let backlog =
        (per_replica * n as f64 * (opts.efficiency_window + warm).as_secs_f64() * 1.3) as usize;
    let payloads = load.publish(backlog).await.to_vec();
    let mut one = env.to_vec();
    one.retain(|(k, _)| !matches!(*k, "MAX_IN_FLIGHT" | "CONCURRENT" | "PARTITION_CONCURRENCY"));
    one.extend(kind.in_flight_env(1));
    let mut fleet = Fleet::new(binary.to_owned(), one, opts.scaling.grace);
    fleet.scale_to(n);
    // Every replica consuming, then a moment for the group or the leases to settle.
    fleet.wait_all_log(kind.consuming_log()).await;
    tokio::time::sleep(warm).await;
    let (c0, t0) = (sink.count(), Instant::now());
    tokio::time::sleep(opts.efficiency_window).await;
    let rate = (sink.count() - c0) as f64 / t0.elapsed().as_secs_f64();
    fleet.shut_down().await;
    // What the stopped replicas left is answered by one more before the next point.
    let mut rest = Fleet::new(binary.to_owned(), env.to_vec(), opts.scaling.grace);
    rest.start();
    collector
        .wait_answered(
            &format!("{kind:?}: the backlog of the {n}-replica point"),
            &payloads,
        )
        .await;
    rest.shut_down().await;
    if opts.progress {
        eprintln!("autoscale: {kind:?} {n} replicas: {rate:.0} msgs/s");
    }
    rate
}

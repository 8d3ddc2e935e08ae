//! AWS Kinesis glue for `connector-core`.
//!
//! A coordinator keeps this worker's share of the stream's shards: it lists shards (paginated)
//! at start and every `SHARD_SYNC_INTERVAL`, keeps one lease per shard in a DynamoDB table
//! ([`lease`]), takes free leases and steals towards an even split when replicas come and go,
//! renews what it holds, and writes each shard's checkpoint — the last record of the contiguous
//! settled prefix — every `CHECKPOINT_INTERVAL`, on shard end, and on shutdown, when it also
//! releases its leases so a restart resumes at once. A closed parent shard is read to its end
//! before its children are started.
//!
//! Each held shard has a reader: `GetRecords` in a loop (a pause only after an empty read),
//! records in order into the dispatcher, the shard as the ordering lane. Read errors back off and
//! retry; an expired iterator is renewed from the last record read. Nothing ends the process but
//! a signal.

pub mod config;
pub mod lease;

pub use config::{InitialPosition, KinesisConfig};

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use connector_core::aws::{describe, write_error};
use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::telemetry::Health;
use connector_core::tracker::SettleTracker;
use connector_core::{
    Acknowledger, BoxError, ConnectError, Connector, Delivery, DispatchEnd, DispatchOptions,
    Engine, Lane, Message, Outbound, Publisher, Source,
};
use lease::{Checkpoints, Lease, LeaseTable, Observer, SHARD_END};
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken as Stop;

/// Records per `GetRecords` (the API's maximum; a response is at most 10 MB). What the reader
/// cannot hand over yet waits in the reader, so losing the lease drops it unprocessed.
const GET_RECORDS_LIMIT: i32 = 10_000;

/// The Kinesis connector.
#[derive(Debug)]
pub struct KinesisConnector {
    config: KinesisConfig,
}

impl Connector for KinesisConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "aws_kinesis";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: KinesisConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        // The bound is per shard, kept by each reader; the dispatcher only keeps shards in order.
        DispatchOptions {
            max_in_flight: 1 << 20,
            lane_concurrency: 1,
            write_ahead: 0,
        }
    }

    async fn check(&self, engine: &Engine) -> Vec<Check> {
        let config = &self.config;
        let sdk = match config.aws.load_for_check().await {
            Ok(sdk) => sdk,
            Err(failed) => return vec![failed],
        };
        let kinesis = Client::new(&sdk);
        let mut checks = Vec::new();
        for (what, var, name) in engine.settings().common.named_topics() {
            checks.push(
                match kinesis
                    .describe_stream_summary()
                    .stream_name(name)
                    .send()
                    .await
                {
                    Ok(out) => Check::ok(
                        what,
                        Some(var),
                        format!(
                            "stream {name:?}: {} open shards",
                            out.stream_description_summary()
                                .map_or(0, |d| d.open_shard_count())
                        ),
                    ),
                    Err(e) => Check::fail(
                        what,
                        Some(var),
                        format!("stream {name:?}: {}", describe(&e)),
                    ),
                },
            );
        }
        let table = LeaseTable::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            &config.table,
            &config.application,
            &config.stream,
            &config.worker_id,
        );
        checks.push(table.inspect().await);
        checks
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let config = Arc::new(self.config);
        let sdk = config.aws.load().await?;
        let kinesis = Client::new(&sdk);
        let mut table = LeaseTable::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            &config.table,
            &config.application,
            &config.stream,
            &config.worker_id,
        );
        let mut backoff = connector_core::backoff::ReconnectBackoff::default();
        let ready = engine
            .connect("Kinesis", &mut backoff, || async {
                check_streams(&kinesis, engine.settings()).await?;
                table.ensure_table().await
            })
            .await?;
        let Some(checkpoints) = ready else {
            return Ok(());
        };
        let mode = match checkpoints {
            Checkpoints::Persistent => "dynamodb",
            Checkpoints::InMemory(reason) => {
                tracing::warn!(
                    table = %config.table,
                    reason = %reason,
                    "no access to CHECKPOINT_TABLE: checkpoints are kept in memory, as the original connector kept them — a restart reads each shard again from INITIAL_POSITION, and every replica reads every shard; for persistent checkpoints and shard leases grant dynamodb:DescribeTable, CreateTable (or create the table, hash key lease_key, a string), PutItem, UpdateItem and Scan on it (picked up at the next start)"
                );
                engine.health().add_note(format!(
                    "checkpoints: in memory (no access to {})",
                    config.table
                ));
                table = table.in_memory();
                "memory"
            }
        };
        engine
            .metrics()
            .mode
            .get_or_create(&vec![("checkpoints", mode)])
            .set(1);

        let (tx, rx) = mpsc::unbounded_channel();
        let (requeue_tx, requeue_rx) = mpsc::unbounded_channel();
        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let readers = Stop::new();
        let shared = Arc::new(Shared::default());
        let coordinator = Coordinator {
            table,
            kinesis: kinesis.clone(),
            config: config.clone(),
            shared: shared.clone(),
            held: HashMap::new(),
            observer: Observer::default(),
            ended: HashSet::new(),
            ended_tx,
            tx,
            requeue_tx,
            readers: readers.clone(),
            health: engine.health().clone(),
        };
        let coordinator_stop = Stop::new();
        let coordinating = tokio::spawn(coordinator.run(ended_rx, coordinator_stop.clone()));
        let mut source = KinesisSource {
            rx,
            requeue_rx,
            readers,
        };
        let publisher = Arc::new(KinesisPublisher { client: kinesis });
        tracing::info!(stream = %config.stream, table = %config.table, worker = %config.worker_id, "consuming");
        while engine.dispatch(&mut source, &publisher).await != DispatchEnd::Shutdown {}
        engine.health().set_ready(false);
        // Everything started has settled (or was abandoned at the drain budget): write the final
        // checkpoints and hand the leases back.
        coordinator_stop.cancel();
        let _ = coordinating.await;
        Ok(())
    }
}

/// The source and destination streams must exist; a missing one names its variable.
async fn check_streams(client: &Client, settings: &Settings) -> Result<(), ConnectError> {
    for (_, var, name) in settings.common.named_topics() {
        match client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                return Err(ConnectError::Fatal(
                    format!("the stream named by {var} ({name}) does not exist").into(),
                ));
            }
            Err(e) => return Err(ConnectError::Retry(describe(&e).into())),
        }
    }
    Ok(())
}

/// One reading of a shard: the shard and the reader's generation. A shard lost and taken
/// again in the same process gets a new reader; acks of the old one's records must not settle
/// the new one's, whose positions restart at 1 (they moved the checkpoint past records the
/// new reader had not handed over yet — `cargo xtask autoscale`, docs/deployment.md).
type Reading = (Arc<str>, u64);

/// Settlement state shared by acks and the coordinator.
#[derive(Debug, Default)]
struct Shared {
    /// Per reading: records read (by local position) and their sequence numbers.
    tracker: SettleTracker<Reading, String>,
    /// Per reading: the newest settled sequence number not yet written.
    pending: Mutex<HashMap<Reading, String>>,
    /// The next reader's generation.
    generation: std::sync::atomic::AtomicU64,
}

type KinesisDelivery = Delivery<(), KinesisAck>;

/// Where a reader starts.
#[derive(Debug, Clone)]
enum Start {
    TrimHorizon,
    AtTimestamp(i64),
    After(String),
}

/// A shard this worker holds.
struct Held {
    counter: i64,
    stop: Stop,
    /// The generation of the reader reading it.
    generation: u64,
}

struct Coordinator {
    table: LeaseTable,
    kinesis: Client,
    config: Arc<KinesisConfig>,
    shared: Arc<Shared>,
    held: HashMap<String, Held>,
    observer: Observer,
    /// Shards whose reader reached the end, waiting for their records to settle.
    ended: HashSet<String>,
    ended_tx: mpsc::UnboundedSender<String>,
    tx: mpsc::UnboundedSender<KinesisDelivery>,
    requeue_tx: mpsc::UnboundedSender<KinesisDelivery>,
    readers: Stop,
    health: Arc<Health>,
}

impl Coordinator {
    async fn run(mut self, mut ended_rx: mpsc::UnboundedReceiver<String>, stop: Stop) {
        let mut renew = tokio::time::interval(self.config.lease_duration / 3);
        let mut sync = tokio::time::interval(self.config.shard_sync_interval);
        let mut flush = tokio::time::interval(self.config.checkpoint_interval);
        for i in [&mut renew, &mut sync, &mut flush] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = renew.tick() => self.renew().await,
                _ = sync.tick() => if !self.readers.is_cancelled() { self.sync().await },
                _ = flush.tick() => {
                    self.flush().await;
                    if self.finish_ended().await && !self.readers.is_cancelled() {
                        // Children of a finished shard can start now.
                        self.sync().await;
                    }
                }
                Some(shard) = ended_rx.recv() => { self.ended.insert(shard); }
            }
        }
        self.flush().await;
        self.finish_ended().await;
        for shard in std::mem::take(&mut self.held).into_keys() {
            match self.table.release(&shard).await {
                Ok(()) => tracing::info!(shard = %shard, "lease released"),
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "releasing a lease failed; it expires instead")
                }
            }
        }
    }

    async fn list_shards(&self) -> Result<Vec<aws_sdk_kinesis::types::Shard>, BoxError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                // A continuation request must not name the stream.
                Some(t) => self.kinesis.list_shards().next_token(t),
                None => self.kinesis.list_shards().stream_name(&self.config.stream),
            };
            let out = req.send().await.map_err(|e| describe(&e))?;
            shards.extend(out.shards.unwrap_or_default());
            token = out.next_token;
            if token.is_none() {
                return Ok(shards);
            }
        }
    }

    /// Lists shards, creates missing leases, and takes this worker's share.
    async fn sync(&mut self) {
        if let Err(e) = self.try_sync().await {
            tracing::warn!(error = %e, "shard sync failed; retrying at the next interval");
        }
    }

    async fn try_sync(&mut self) -> Result<(), BoxError> {
        let shards = self.list_shards().await?;
        let mut leases = self.table.scan().await?;
        let known: HashSet<&str> = leases.iter().map(|l| l.shard.as_str()).collect();
        let now_ms = now_ms();
        let mut created = false;
        for shard in &shards {
            if known.contains(shard.shard_id()) {
                continue;
            }
            let parents: Vec<String> = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
                .into_iter()
                .flatten()
                .map(str::to_owned)
                .collect();
            self.table
                .create(shard.shard_id(), &parents, now_ms)
                .await?;
            created = true;
        }
        if created {
            leases = self.table.scan().await?;
        }
        let held: HashSet<String> = self.held.keys().cloned().collect();
        let free = self.observer.expired(
            &leases,
            self.table.worker(),
            &held,
            self.config.lease_duration,
            std::time::Instant::now(),
        );
        let by_shard: HashMap<&str, &Lease> =
            leases.iter().map(|l| (l.shard.as_str(), l)).collect();
        for shard in lease::plan(&leases, &free, self.table.worker(), &held) {
            let seen = by_shard[shard.as_str()];
            match self.table.take(seen).await? {
                Some(taken) => {
                    let stolen = seen
                        .owner
                        .as_deref()
                        .filter(|o| *o != self.table.worker() && !free.contains(&shard));
                    tracing::info!(shard = %shard, checkpoint = taken.checkpoint.as_deref().unwrap_or(""), from = stolen.unwrap_or(""), "lease taken");
                    self.start_reader(taken);
                }
                None => {
                    tracing::debug!(shard = %shard, "lease changed hands before it could be taken")
                }
            }
        }
        self.health.set_ready(true);
        Ok(())
    }

    fn start_reader(&mut self, lease: Lease) {
        let start = match &lease.checkpoint {
            Some(seq) => Start::After(seq.clone()),
            // Children of a reshard start at their beginning: their parents were read to the end.
            None if !lease.parents.is_empty() => Start::TrimHorizon,
            None => match self.config.initial_position {
                InitialPosition::TrimHorizon => Start::TrimHorizon,
                InitialPosition::Latest => Start::AtTimestamp(lease.created_ms),
            },
        };
        let shard: Arc<str> = Arc::from(lease.shard.as_str());
        // A reader of this shard still running here (its lease taken from this worker and back
        // before this worker noticed) stops: one reader per shard.
        if let Some(old) = self.held.remove(&lease.shard) {
            old.stop.cancel();
        }
        let generation = self
            .shared
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stop = self.readers.child_token();
        let reader = Reader {
            client: self.kinesis.clone(),
            stream: self.config.stream.clone(),
            shard: shard.clone(),
            generation,
            permits: Arc::new(Semaphore::new(self.config.max_in_flight)),
            limit: GET_RECORDS_LIMIT,
            poll: self.config.poll_interval,
            shared: self.shared.clone(),
            tx: self.tx.clone(),
            requeue_tx: self.requeue_tx.clone(),
            ended_tx: self.ended_tx.clone(),
            stop: stop.clone(),
        };
        tokio::spawn(reader.run(start));
        self.held.insert(
            lease.shard,
            Held {
                counter: lease.counter,
                stop,
                generation,
            },
        );
    }

    fn lost(&mut self, shard: &str) {
        if let Some(h) = self.held.remove(shard) {
            h.stop.cancel();
            let key: Reading = (Arc::from(shard), h.generation);
            self.shared.tracker.reset([&key]);
            self.shared
                .pending
                .lock()
                .expect("pending lock")
                .remove(&key);
        }
        self.ended.remove(shard);
        tracing::warn!(
            shard,
            "lease lost to another worker; stopped reading the shard"
        );
    }

    async fn renew(&mut self) {
        let shards: Vec<(String, i64)> = self
            .held
            .iter()
            .map(|(s, h)| (s.clone(), h.counter))
            .collect();
        for (shard, counter) in shards {
            match self.table.renew(&shard, counter).await {
                Ok(Some(c)) => {
                    if let Some(h) = self.held.get_mut(&shard) {
                        h.counter = c;
                    }
                }
                Ok(None) => self.lost(&shard),
                Err(e) => tracing::warn!(shard = %shard, error = %e, "renewing a lease failed"),
            }
        }
    }

    /// Writes the settled positions.
    async fn flush(&mut self) {
        let pending = std::mem::take(&mut *self.shared.pending.lock().expect("pending lock"));
        for ((shard, generation), sequence) in pending {
            // Only the current reader's progress: an earlier reader of the shard is gone.
            if self.held.get(&*shard).map(|h| h.generation) != Some(generation) {
                continue;
            }
            match self.table.checkpoint(&shard, &sequence).await {
                Ok(true) => tracing::debug!(shard = %shard, "checkpoint written"),
                Ok(false) => self.lost(&shard),
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "writing a checkpoint failed; retrying");
                    // Keep it unless a newer one arrived meanwhile.
                    self.shared
                        .pending
                        .lock()
                        .expect("pending lock")
                        .entry((shard, generation))
                        .or_insert(sequence);
                }
            }
        }
    }

    /// Marks ended shards whose records have all settled as finished and lets them go. Returns
    /// whether one finished.
    async fn finish_ended(&mut self) -> bool {
        let mut finished = false;
        let ended: Vec<String> = self.ended.iter().cloned().collect();
        for shard in ended {
            let Some(generation) = self.held.get(&shard).map(|h| h.generation) else {
                continue;
            };
            let key: Reading = (Arc::from(shard.as_str()), generation);
            let idle = self.shared.tracker.outstanding(&key) == 0
                && !self
                    .shared
                    .pending
                    .lock()
                    .expect("pending lock")
                    .contains_key(&key);
            if !idle || !self.held.contains_key(&shard) {
                continue;
            }
            match self.table.checkpoint(&shard, SHARD_END).await {
                Ok(true) => {
                    let _ = self.table.release(&shard).await;
                    self.held.remove(&shard);
                    self.ended.remove(&shard);
                    tracing::info!(shard = %shard, "shard finished");
                    finished = true;
                }
                Ok(false) => self.lost(&shard),
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "marking a shard finished failed")
                }
            }
        }
        finished
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Reads one shard in order until stopped or until the shard ends.
struct Reader {
    client: Client,
    stream: String,
    shard: Arc<str>,
    /// This reader's generation (see [`Reading`]).
    generation: u64,
    permits: Arc<Semaphore>,
    limit: i32,
    poll: Duration,
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<KinesisDelivery>,
    requeue_tx: mpsc::UnboundedSender<KinesisDelivery>,
    ended_tx: mpsc::UnboundedSender<String>,
    stop: Stop,
}

impl Reader {
    async fn iterator(&self, start: &Start) -> Result<Option<String>, BoxError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&*self.shard);
        let req = match start {
            Start::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Start::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            Start::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        Ok(req.send().await.map_err(|e| describe(&e))?.shard_iterator)
    }

    async fn run(self, start: Start) {
        let mut backoff = connector_core::backoff::ReconnectBackoff::new(
            Duration::from_millis(200),
            Duration::from_secs(30),
        );
        let mut position = start;
        let mut index: u64 = 0;
        let mut iterator: Option<String> = None;
        while !self.stop.is_cancelled() {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(&position).await {
                    Ok(Some(it)) => it,
                    Ok(None) => {
                        let _ = self.ended_tx.send(self.shard.to_string());
                        return;
                    }
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(shard = %self.shard, error = %e, retry_in = ?delay, "getting a shard iterator failed");
                        if !self.pause(delay).await {
                            return;
                        }
                        continue;
                    }
                },
            };
            let out = match self
                .client
                .get_records()
                .shard_iterator(&it)
                .limit(self.limit)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let expired = e
                        .as_service_error()
                        .is_some_and(|s| s.is_expired_iterator_exception());
                    if expired {
                        // Continue after the last record read.
                        tracing::debug!(shard = %self.shard, "shard iterator expired; renewing it");
                        continue;
                    }
                    let delay = backoff.next_delay();
                    tracing::warn!(shard = %self.shard, error = %describe(&e), retry_in = ?delay, "reading the shard failed");
                    iterator = Some(it);
                    if !self.pause(delay).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            let empty = out.records.is_empty();
            for record in out.records {
                let permit = tokio::select! {
                    p = self.permits.clone().acquire_owned() => p.expect("never closed"),
                    // Not handed over: read again from the checkpoint by whoever holds the shard.
                    () = self.stop.cancelled() => return,
                };
                let sequence = record.sequence_number;
                let published_at = record
                    .approximate_arrival_timestamp
                    .and_then(|t| std::time::SystemTime::try_from(t).ok());
                index += 1;
                self.shared.tracker.received(
                    &(self.shard.clone(), self.generation),
                    index,
                    sequence.clone(),
                );
                let delivery = Delivery {
                    message: Message {
                        payload: Bytes::from(record.data.into_inner()),
                        headers: Vec::new(),
                        key: Some(Bytes::from(record.partition_key)),
                        lane: Some(lane(&self.shard)),
                        // Kinesis keeps no delivery count; the engine counts what it sees.
                        id: Some(sequence.clone()),
                        delivery_count: None,
                        published_at,
                    },
                    meta: (),
                    ack: KinesisAck {
                        reading: (self.shard.clone(), self.generation),
                        position: index,
                        shared: self.shared.clone(),
                        requeue: self.requeue_tx.clone(),
                        _permit: permit,
                    },
                };
                if self.tx.send(delivery).is_err() {
                    return;
                }
                position = Start::After(sequence);
            }
            match out.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    tracing::info!(shard = %self.shard, "reached the end of a closed shard");
                    let _ = self.ended_tx.send(self.shard.to_string());
                    return;
                }
            }
            if empty && !self.pause(self.poll).await {
                return;
            }
        }
    }

    /// Sleeps unless stopped; `false` if stopped.
    async fn pause(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            () = self.stop.cancelled() => false,
        }
    }
}

fn lane(shard: &str) -> Lane {
    let mut h = std::hash::DefaultHasher::new();
    shard.hash(&mut h);
    Lane(h.finish())
}

/// Hands over what the readers read, requeued records first.
struct KinesisSource {
    rx: mpsc::UnboundedReceiver<KinesisDelivery>,
    requeue_rx: mpsc::UnboundedReceiver<KinesisDelivery>,
    readers: Stop,
}

impl Source for KinesisSource {
    type Meta = ();
    type Ack = KinesisAck;

    async fn next(&mut self) -> connector_core::dispatch::NextDelivery<Self> {
        if let Ok(d) = self.requeue_rx.try_recv() {
            return Ok(Some(d));
        }
        tokio::select! {
            biased;
            Some(d) = self.requeue_rx.recv() => Ok(Some(d)),
            d = self.rx.recv() => Ok(d),
        }
    }

    async fn stop(&mut self) {
        self.readers.cancel();
    }
}

/// Settles one record: its shard's checkpoint may advance.
pub struct KinesisAck {
    reading: Reading,
    position: u64,
    shared: Arc<Shared>,
    requeue: mpsc::UnboundedSender<KinesisDelivery>,
    _permit: OwnedSemaphorePermit,
}

impl std::fmt::Debug for KinesisAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KinesisAck")
            .field("shard", &self.reading.0)
            .field("generation", &self.reading.1)
            .field("position", &self.position)
            .finish()
    }
}

impl Acknowledger for KinesisAck {
    async fn ack(self) -> Result<(), BoxError> {
        if let Some(sequence) = self.shared.tracker.settled(&self.reading, self.position) {
            self.shared
                .pending
                .lock()
                .expect("pending lock")
                .insert(self.reading.clone(), sequence);
        }
        Ok(())
    }

    async fn requeue(self, message: Message) -> Result<(), BoxError> {
        // A shard only moves forward: the record goes round again, and the checkpoint cannot
        // pass it until it settles.
        let requeue = self.requeue.clone();
        requeue
            .send(Delivery {
                message,
                meta: (),
                ack: self,
            })
            .map_err(|_| "shutting down".into())
    }
}

/// Kinesis's record size limit (data and partition key), as documented by AWS.
const MAX_RECORD_BYTES: usize = 1024 * 1024;

/// Writes responses and error documents as records keyed by the source's partition key.
struct KinesisPublisher {
    client: Client,
}

impl Publisher<()> for KinesisPublisher {
    async fn publish(&self, record: Outbound<'_, ()>) -> Result<(), BoxError> {
        let key = record
            .message
            .key
            .as_ref()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_else(|| "keda-connector".to_owned());
        let size = record.body.len() + key.len();
        let written = self
            .client
            .put_record()
            .stream_name(record.topic)
            .partition_key(key)
            .data(Blob::new(record.body.to_vec()))
            .send()
            .await
            .map_err(|e| write_error(&e, size, MAX_RECORD_BYTES))?;
        // Where each outcome went, for tracing a record the stream does not have
        // (docs/deployment.md, the Kinesis finding of "Scaling with KEDA").
        tracing::debug!(
            stream = record.topic,
            shard = written.shard_id(),
            sequence = written.sequence_number(),
            "record written"
        );
        Ok(())
    }
}

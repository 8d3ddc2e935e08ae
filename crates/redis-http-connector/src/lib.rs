//! Redis glue for `connector-core`: a reliable list queue.
//!
//! Each message is moved atomically (`BLMOVE`) from the source list `TOPIC` into this
//! consumer's processing list, handled, its outcome `RPUSH`ed to the response or error list, and
//! only then removed from the processing list (`LREM`). Nothing is lost when the process dies:
//! whatever is left in a processing list goes back to the head of the source list — at start
//! for this consumer's own list, and for any consumer whose heartbeat key has expired, by every
//! consumer at start and periodically. A move whose reply is lost (Redis went away as it
//! answered) leaves a message in the processing list that nobody holds: after every failed
//! read the fetcher compares the list with what it holds and takes such messages up. (The
//! original popped with `BLPOP` and lost in-flight messages on a crash.)

mod config;

pub use config::{RedisConfig, processing_list};

use bytes::Bytes;
use connector_core::check::Check;
use connector_core::config::{ConfigError, Env, Settings};
use connector_core::telemetry::Health;
use connector_core::{
    Acknowledger, BoxError, Connector, Delivery, DispatchOptions, Engine, Message, Outbound,
    Publisher, Source,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Direction};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken as Stop;

/// How long one `BLMOVE` blocks; bounds how quickly the fetcher notices shutdown.
const BLOCK: f64 = 1.0;
/// A consumer whose heartbeat key is older than this is presumed dead.
const HEARTBEAT_TTL: Duration = Duration::from_secs(30);
/// How often the heartbeat is renewed and orphaned processing lists are swept.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);

/// The Redis connector.
#[derive(Debug)]
pub struct RedisConnector {
    config: RedisConfig,
}

impl Connector for RedisConnector {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "redis";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        Ok(Self {
            config: RedisConfig::from_env(env, settings)?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        DispatchOptions {
            max_in_flight: self.config.max_in_flight,
            lane_concurrency: 0,
            // The next call starts while the outcome's RPUSH and LREM make their round trips;
            // the RPUSH is queued first (`queues_in_call_order`), so MAX_IN_FLIGHT=1 keeps the
            // responses in the list's order.
            write_ahead: self.config.max_in_flight,
        }
    }

    async fn check(&self, engine: &Engine) -> Vec<Check> {
        let config = &self.config;
        let connected = async {
            let client = redis::Client::open(config.url.expose())?;
            let mut conn = client.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<()>(&mut conn).await?;
            Ok::<_, redis::RedisError>(conn)
        };
        let mut conn = match tokio::time::timeout(Duration::from_secs(10), connected).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                return vec![Check::fail(
                    "broker",
                    Some("ADDRESS"),
                    format!("cannot connect: {e}"),
                )];
            }
            Err(_) => {
                return vec![Check::fail(
                    "broker",
                    Some("ADDRESS"),
                    "no answer within 10 s",
                )];
            }
        };
        let mut checks = vec![Check::ok(
            "broker",
            Some("ADDRESS"),
            "connected (PING answered)",
        )];
        for (what, var, key) in engine.settings().common.named_topics() {
            let kind: redis::RedisResult<String> =
                redis::cmd("TYPE").arg(key).query_async(&mut conn).await;
            checks.push(match kind.as_deref() {
                Ok("list") => {
                    let len: u64 = conn.llen(key).await.unwrap_or(0);
                    Check::ok(what, Some(var), format!("list {key:?} with {len} entries"))
                }
                // Lists exist only while they hold something; the first push creates them.
                Ok("none") => Check::ok(what, Some(var), format!("list {key:?} is empty")),
                Ok(other) => {
                    Check::fail(what, Some(var), format!("{key:?} is a {other}, not a list"))
                }
                Err(e) => Check::fail(what, Some(var), format!("cannot look at {key:?}: {e}")),
            });
        }
        let own = config.processing_list();
        let held: u64 = conn.llen(&own).await.unwrap_or(0);
        checks.push(if held > 0 {
            Check::warn(
                "consumer",
                Some("CONSUMER_ID"),
                format!("{held} messages of an earlier run of this consumer wait in {own:?}; the first start returns them to TOPIC"),
            )
        } else {
            Check::ok(
                "consumer",
                Some("CONSUMER_ID"),
                format!("consumer {:?}: nothing left from an earlier run", config.consumer_id),
            )
        });
        checks
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let config = Arc::new(self.config);
        if config.unverified_tls {
            tracing::warn!("UNSAFE_SSL=true: the Redis server's certificate is not verified");
        }
        let client = redis::Client::open(config.url.expose())?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(BLOCK as u64 + 10)))
            .set_max_delay(Duration::from_secs(10));
        // Two connections: a blocking BLMOVE would stall every other command on a shared one.
        let mut backoff = connector_core::backoff::ReconnectBackoff::default();
        let connected = engine
            .connect("Redis", &mut backoff, || async {
                let a = client
                    .get_connection_manager_with_config(manager_config.clone())
                    .await?;
                let b = client
                    .get_connection_manager_with_config(manager_config.clone())
                    .await?;
                Ok((a, b))
            })
            .await?;
        let Some((blocking, commands)) = connected else {
            return Ok(());
        };

        let mut conn = commands.clone();
        heartbeat(&mut conn, &config).await?;
        let own = config.processing_list();
        let returned = return_to_source(&mut conn, &own, &config.list).await?;
        if returned > 0 {
            tracing::warn!(returned, list = %own, "returned unfinished messages of a previous run");
        }
        recover_orphans(&mut conn, &config).await;

        let stop = Stop::new();
        let upkeep = tokio::spawn(upkeep(
            commands.clone(),
            config.clone(),
            stop.clone(),
            engine.health().clone(),
        ));
        let (tx, rx) = mpsc::channel(1);
        let held = Arc::new(Held::default());
        let fetcher = tokio::spawn(fetch(
            blocking,
            config.clone(),
            Handover {
                tx,
                held: held.clone(),
                stop: stop.clone(),
            },
            engine.health().clone(),
        ));
        let mut source = RedisSource {
            rx,
            stop: stop.clone(),
            fetcher: Some(fetcher),
            commands: commands.clone(),
            config: config.clone(),
            health: engine.health().clone(),
            held,
        };
        let publisher = Arc::new(RedisPublisher {
            conn: commands.clone(),
        });
        engine.health().set_ready(true);
        tracing::info!(list = %config.list, processing = %own, "consuming");
        while engine.dispatch(&mut source, &publisher).await
            != connector_core::DispatchEnd::Shutdown
        {}
        engine.health().set_ready(false);
        stop.cancel();
        let _ = upkeep.await;
        // Whatever is still in the processing list was not finished (the drain budget ran out,
        // or the fetcher took one more): hand it back for another consumer.
        let returned = return_to_source(&mut conn, &own, &config.list).await?;
        if returned > 0 {
            tracing::warn!(returned, "returned unfinished messages to the source list");
        }
        let _: Result<(), _> = conn.del(config.heartbeat_key()).await;
        Ok(())
    }
}

async fn heartbeat(conn: &mut ConnectionManager, config: &RedisConfig) -> redis::RedisResult<()> {
    conn.pset_ex(
        config.heartbeat_key(),
        "alive",
        HEARTBEAT_TTL.as_millis() as u64,
    )
    .await
}

/// Moves everything from `from` back to the head of `to`, oldest first at the head, so the
/// original order is kept. Returns how many moved.
async fn return_to_source(
    conn: &mut ConnectionManager,
    from: &str,
    to: &str,
) -> redis::RedisResult<usize> {
    let mut moved = 0;
    loop {
        let item: Option<Vec<u8>> = conn
            .lmove(from, to, Direction::Right, Direction::Left)
            .await?;
        if item.is_none() {
            return Ok(moved);
        }
        moved += 1;
    }
}

/// Returns the processing lists of consumers whose heartbeat has expired.
async fn recover_orphans(conn: &mut ConnectionManager, config: &RedisConfig) {
    let pattern = processing_list(&config.list, "*");
    let prefix = processing_list(&config.list, "");
    let lists: Vec<String> = match conn.scan_match::<_, String>(&pattern).await {
        Ok(mut iter) => {
            let mut v = Vec::new();
            while let Some(item) = iter.next_item().await {
                if let Ok(name) = item {
                    v.push(name);
                }
            }
            v
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot scan for orphaned processing lists");
            return;
        }
    };
    for list in lists {
        let Some(consumer) = list.strip_prefix(&prefix) else {
            continue;
        };
        if consumer == config.consumer_id {
            continue;
        }
        let alive: bool = conn
            .exists(format!("{}:consumer:{consumer}", config.list))
            .await
            .unwrap_or(true);
        if alive {
            continue;
        }
        match return_to_source(conn, &list, &config.list).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                returned = n,
                consumer,
                "recovered messages of a dead consumer"
            ),
            Err(e) => {
                tracing::warn!(error = %e, consumer, "recovering a dead consumer's messages failed")
            }
        }
    }
}

/// Renews the heartbeat and sweeps orphans until stopped.
async fn upkeep(
    mut conn: ConnectionManager,
    config: Arc<RedisConfig>,
    stop: Stop,
    health: Arc<Health>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            () = stop.cancelled() => return,
        }
        // Also the readiness probe of a consumer whose messages are all with the function
        // (nothing else talks to Redis then).
        match heartbeat(&mut conn, &config).await {
            Ok(()) => health.set_ready(true),
            Err(e) => {
                health.set_ready(false);
                tracing::warn!(error = %e, "heartbeat failed");
            }
        }
        recover_orphans(&mut conn, &config).await;
    }
}

/// The messages of this consumer's processing list that it holds (handed over, not yet
/// settled), by value and count: what the list holds beyond them nobody is working on.
#[derive(Debug, Default)]
struct Held(Mutex<HashMap<Bytes, usize>>);

impl Held {
    fn add(&self, item: &Bytes) {
        *self
            .0
            .lock()
            .expect("lock")
            .entry(item.clone())
            .or_default() += 1;
    }

    /// Called after the message left the processing list (so a comparison in between sees it
    /// held, or gone from the list, never unclaimed).
    fn remove(&self, item: &Bytes) {
        let mut held = self.0.lock().expect("lock");
        if let Some(n) = held.get_mut(item) {
            *n -= 1;
            if *n == 0 {
                held.remove(item);
            }
        }
    }

    /// The entries of `list` beyond what is held.
    fn unclaimed(&self, list: Vec<Bytes>) -> Vec<Bytes> {
        let mut left = self.0.lock().expect("lock").clone();
        list.into_iter()
            .filter(|item| match left.get_mut(item) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    false
                }
                _ => true,
            })
            .collect()
    }
}

/// Where the fetcher hands messages over.
struct Handover {
    tx: mpsc::Sender<Bytes>,
    held: Arc<Held>,
    stop: Stop,
}

impl Handover {
    /// Hands `items` over; false once stopped (what was not handed over stays in the
    /// processing list and is returned to the source after the drain).
    async fn send(&self, items: Vec<Bytes>) -> bool {
        for item in items {
            self.held.add(&item);
            tokio::select! {
                sent = self.tx.send(item) => if sent.is_err() { return false },
                () = self.stop.cancelled() => return false,
            }
        }
        true
    }
}

/// Moves messages into the processing list and hands them over, one at a time. Runs as its own
/// task so that a shutdown never abandons a `BLMOVE` half-way: it finishes the current one and
/// stops, and the caller then returns what is left in the processing list.
async fn fetch(
    mut conn: ConnectionManager,
    config: Arc<RedisConfig>,
    out: Handover,
    health: Arc<Health>,
) {
    let processing = config.processing_list();
    let mut backoff = connector_core::backoff::ReconnectBackoff::default();
    let max_extra = config.max_in_flight.clamp(1, 100) - 1;
    let mut extra = 0;
    // After a failed read: a move may have happened whose reply was lost.
    let mut check_unclaimed = false;
    while !out.stop.is_cancelled() {
        if check_unclaimed {
            let listed: redis::RedisResult<Vec<Vec<u8>>> = conn.lrange(&processing, 0, -1).await;
            if let Ok(listed) = listed {
                check_unclaimed = false;
                let unclaimed = out
                    .held
                    .unclaimed(listed.into_iter().map(Bytes::from).collect());
                if !unclaimed.is_empty() {
                    tracing::warn!(
                        count = unclaimed.len(),
                        "taking up messages moved by a read whose reply was lost"
                    );
                    if !out.send(unclaimed).await {
                        return;
                    }
                }
            }
        }
        let moved: redis::RedisResult<Option<Vec<u8>>> = conn
            .blmove(
                &config.list,
                &processing,
                Direction::Left,
                Direction::Right,
                BLOCK,
            )
            .await;
        match moved {
            Ok(Some(item)) => {
                backoff.reset();
                health.set_ready(true);
                // With a backlog, one blocking move per message makes the fetcher a round trip
                // per message; move more in one pipelined round trip, as many as the last batch
                // suggests (doubling while the list keeps up), never more than the in-flight
                // bound. With MAX_IN_FLIGHT=1 (in order) nothing changes.
                let mut batch = vec![Bytes::from(item)];
                if extra > 0 {
                    let mut pipe = redis::pipe();
                    for _ in 0..extra {
                        pipe.lmove(&config.list, &processing, Direction::Left, Direction::Right);
                    }
                    let more: redis::RedisResult<Vec<Option<Vec<u8>>>> =
                        pipe.query_async(&mut conn).await;
                    match more {
                        Ok(more) => {
                            let full = more.iter().all(Option::is_some);
                            batch.extend(more.into_iter().flatten().map(Bytes::from));
                            extra = if full {
                                (extra * 2).min(max_extra)
                            } else {
                                1.min(max_extra)
                            };
                        }
                        Err(_) => check_unclaimed = true,
                    }
                } else {
                    extra = 1.min(max_extra);
                }
                if !out.send(batch).await {
                    return;
                }
            }
            Ok(None) => health.set_ready(true),
            Err(e) => {
                health.set_ready(false);
                check_unclaimed = true;
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "reading from Redis failed");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = out.stop.cancelled() => return,
                }
            }
        }
    }
}

/// Hands over what the fetcher moved.
struct RedisSource {
    rx: mpsc::Receiver<Bytes>,
    stop: Stop,
    fetcher: Option<tokio::task::JoinHandle<()>>,
    commands: ConnectionManager,
    config: Arc<RedisConfig>,
    health: Arc<Health>,
    held: Arc<Held>,
}

impl Source for RedisSource {
    type Meta = ();
    type Ack = RedisAck;

    async fn next(&mut self) -> connector_core::dispatch::NextDelivery<Self> {
        let Some(payload) = self.rx.recv().await else {
            return Ok(None);
        };
        Ok(Some(Delivery {
            message: Message {
                payload: payload.clone(),
                ..Default::default()
            },
            meta: (),
            ack: RedisAck {
                payload,
                conn: self.commands.clone(),
                config: self.config.clone(),
                health: self.health.clone(),
                held: self.held.clone(),
            },
        }))
    }

    async fn stop(&mut self) {
        self.stop.cancel();
        if let Some(f) = self.fetcher.take() {
            let _ = f.await;
        }
    }
}

/// Removes a finished message from the processing list.
pub struct RedisAck {
    payload: Bytes,
    conn: ConnectionManager,
    config: Arc<RedisConfig>,
    health: Arc<Health>,
    held: Arc<Held>,
}

impl std::fmt::Debug for RedisAck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisAck { .. }")
    }
}

impl Acknowledger for RedisAck {
    async fn ack(self) -> Result<(), BoxError> {
        let list = self.config.processing_list();
        let removed = until_done(
            &self.health,
            "removing a finished message from the processing list",
            || {
                let mut conn = self.conn.clone();
                let (list, payload) = (list.clone(), self.payload.clone());
                async move {
                    conn.lrem::<_, _, usize>(list, 1, &payload[..])
                        .await
                        .map(drop)
                }
            },
        )
        .await;
        // Still in the list if that failed: the next comparison takes it up again.
        self.held.remove(&self.payload);
        removed
    }

    async fn requeue(self, _message: Message) -> Result<(), BoxError> {
        // Back to the head of the source list, atomically with leaving the processing list.
        let list = self.config.processing_list();
        let returned = until_done(
            &self.health,
            "returning a message to the source list",
            || {
                let mut conn = self.conn.clone();
                let (list, source, payload) =
                    (list.clone(), self.config.list.clone(), self.payload.clone());
                async move {
                    redis::pipe()
                        .atomic()
                        .lrem(list, 1, &payload[..])
                        .ignore()
                        .lpush(source, &payload[..])
                        .ignore()
                        .query_async::<()>(&mut conn)
                        .await
                }
            },
        )
        .await;
        self.held.remove(&self.payload);
        returned
    }
}

/// How long a settle keeps retrying through a Redis outage.
const SETTLE_RETRY_LIMIT: Duration = Duration::from_secs(300);

/// Runs `op` until it succeeds (or [`SETTLE_RETRY_LIMIT`] passes). The processing list is this
/// connector's own redelivery: a settle lost to an outage would leave the message there, not
/// redelivered until this process exits, so the settle waits for Redis to come back instead.
/// Readiness is off while it retries (the fetcher turns it on again once Redis answers).
async fn until_done<F, Fut>(health: &Health, what: &str, mut op: F) -> Result<(), BoxError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<()>>,
{
    let mut backoff = connector_core::backoff::ReconnectBackoff::default();
    let deadline = tokio::time::Instant::now() + SETTLE_RETRY_LIMIT;
    loop {
        match op().await {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                health.set_ready(false);
                let delay = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?delay, "{what} failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// `RPUSH`es responses and error documents.
struct RedisPublisher {
    conn: ConnectionManager,
}

impl Publisher<()> for RedisPublisher {
    async fn publish(&self, record: Outbound<'_, ()>) -> Result<(), BoxError> {
        let mut conn = self.conn.clone();
        let _: usize = conn.rpush(record.topic, &record.body[..]).await?;
        Ok(())
    }

    /// The first poll hands the `RPUSH` to the connection's queue, which writes commands in the
    /// order they were queued (while connected; during a reconnect every write fails and is
    /// retried anyway).
    fn queues_in_call_order(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unclaimed_is_what_the_list_holds_beyond_the_held_copies() {
        let held = Held::default();
        let (a, b) = (Bytes::from_static(b"a"), Bytes::from_static(b"b"));
        held.add(&a);
        held.add(&b);
        held.add(&b);
        held.remove(&b);
        let list = vec![a.clone(), b.clone(), b.clone(), Bytes::from_static(b"c")];
        assert_eq!(
            held.unclaimed(list),
            vec![b.clone(), Bytes::from_static(b"c")]
        );
        // Settled and gone from the list: nothing unclaimed, nothing negative.
        held.remove(&a);
        held.remove(&a);
        assert_eq!(held.unclaimed(vec![b.clone()]), Vec::<Bytes>::new());
    }
}

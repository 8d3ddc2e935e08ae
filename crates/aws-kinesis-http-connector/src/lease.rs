//! Shard leases and checkpoints in DynamoDB, in the manner of the Kinesis Client Library: one
//! item per (application, stream, shard) with its owner, a counter the owner increments on every
//! renewal, and the last settled sequence number. A lease is taken over only when its counter has
//! not moved for a lease duration as seen by the taker's own clock, so worker clocks need not
//! agree. Every write is conditional, so a worker that lost a lease can no longer checkpoint it.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use connector_core::aws::describe;
use connector_core::{BoxError, ConnectError};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The checkpoint of a shard whose records have all been settled.
pub const SHARD_END: &str = "SHARD_END";

const KEY: &str = "lease_key";

/// One shard's lease item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The shard id.
    pub shard: String,
    /// Who holds it, if anyone.
    pub owner: Option<String>,
    /// Incremented by every take, renewal and release.
    pub counter: i64,
    /// The last settled sequence number, or [`SHARD_END`].
    pub checkpoint: Option<String>,
    /// Parent shards (a split has one, a merge two).
    pub parents: Vec<String>,
    /// When the lease was created (ms since the epoch): where `LATEST` starts.
    pub created_ms: i64,
}

impl Lease {
    /// Every record of the shard has been settled.
    pub fn finished(&self) -> bool {
        self.checkpoint.as_deref() == Some(SHARD_END)
    }
}

/// The lease items of one application and stream.
#[derive(Debug, Clone)]
pub struct LeaseTable {
    client: Client,
    table: String,
    prefix: String,
    worker: String,
    /// The leases when the table cannot be used: this process's own, in memory (what the
    /// original had), so this worker holds every shard and starts each at `INITIAL_POSITION`.
    memory: Option<Arc<Mutex<BTreeMap<String, Lease>>>>,
}

/// Where checkpoints live, as decided at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoints {
    /// In `CHECKPOINT_TABLE`: kept across restarts, shards leased between replicas.
    Persistent,
    /// In memory, because the table cannot be used (the reason, for the log).
    InMemory(String),
}

/// DynamoDB's refusal for lack of permission: `AccessDeniedException` (AWS answers 400 with
/// it), or a bare 403 (what a proxy or an emulator enforcing IAM may answer).
fn is_access_denied<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    match e {
        aws_sdk_dynamodb::error::SdkError::ServiceError(s) => {
            matches!(
                s.err().code(),
                Some("AccessDeniedException" | "UnrecognizedClientException")
            ) || s.raw().status().as_u16() == 403
        }
        _ => false,
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn is_condition_failure<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(e: &E) -> bool {
    e.code() == Some("ConditionalCheckFailedException")
}

impl LeaseTable {
    /// Leases of `stream` for `application`, held as `worker`.
    pub fn new(client: Client, table: &str, application: &str, stream: &str, worker: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
            prefix: format!("{application}/{stream}/"),
            worker: worker.to_owned(),
            memory: None,
        }
    }

    /// The same leases kept in this process's memory instead of the table.
    pub fn in_memory(self) -> Self {
        Self {
            memory: Some(Arc::default()),
            ..self
        }
    }

    /// Runs `f` on the in-memory leases, when that is where they are.
    fn with_memory<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Lease>) -> T) -> Option<T> {
        let memory = self.memory.as_ref()?;
        let mut leases = memory
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Some(f(&mut leases))
    }

    /// This worker's id.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    fn key(&self, shard: &str) -> AttributeValue {
        s(&format!("{}{shard}", self.prefix))
    }

    /// Creates the table (on-demand capacity) unless it exists, waits until it is active, and
    /// checks that its items can be read. Without the permissions for that, the checkpoints are
    /// kept in memory, as the original kept them: an identity made for the original has no
    /// DynamoDB permission at all.
    pub async fn ensure_table(&self) -> Result<Checkpoints, ConnectError> {
        let denied = |action: &str, e: &dyn std::fmt::Display| {
            Ok(Checkpoints::InMemory(format!(
                "{action} on {}: {e}",
                self.table
            )))
        };
        let described = self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await;
        match described {
            Ok(_) => {}
            Err(e) if is_access_denied(&e) => {
                return denied("dynamodb:DescribeTable", &describe(&e));
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                tracing::info!(table = %self.table, "creating the checkpoint table");
                let created = self
                    .client
                    .create_table()
                    .table_name(&self.table)
                    .billing_mode(BillingMode::PayPerRequest)
                    .attribute_definitions(
                        AttributeDefinition::builder()
                            .attribute_name(KEY)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .expect("complete"),
                    )
                    .key_schema(
                        KeySchemaElement::builder()
                            .attribute_name(KEY)
                            .key_type(KeyType::Hash)
                            .build()
                            .expect("complete"),
                    )
                    .send()
                    .await;
                if let Err(e) = created {
                    if is_access_denied(&e) {
                        return denied("dynamodb:CreateTable", &describe(&e));
                    }
                    // Another replica may have created it at the same moment.
                    let raced = e
                        .as_service_error()
                        .is_some_and(|s| s.is_resource_in_use_exception());
                    if !raced {
                        return Err(ConnectError::Retry(
                            format!(
                                "cannot create CHECKPOINT_TABLE {}: {}",
                                self.table,
                                describe(&e)
                            )
                            .into(),
                        ));
                    }
                }
            }
            Err(e) => {
                return Err(ConnectError::Retry(
                    format!(
                        "cannot read CHECKPOINT_TABLE {}: {}",
                        self.table,
                        describe(&e)
                    )
                    .into(),
                ));
            }
        }
        use aws_sdk_dynamodb::client::Waiters;
        self.client
            .wait_until_table_exists()
            .table_name(&self.table)
            .wait(Duration::from_secs(120))
            .await
            .map_err(|e| {
                ConnectError::Retry(
                    format!("CHECKPOINT_TABLE {} is not active: {e}", self.table).into(),
                )
            })?;
        // Describing is not using: the items must be readable too.
        let probe = self
            .client
            .scan()
            .table_name(&self.table)
            .limit(1)
            .send()
            .await;
        match probe {
            Ok(_) => Ok(Checkpoints::Persistent),
            Err(e) if is_access_denied(&e) => denied("dynamodb:Scan", &describe(&e)),
            Err(e) => Err(ConnectError::Retry(
                format!(
                    "cannot read CHECKPOINT_TABLE {}: {}",
                    self.table,
                    describe(&e)
                )
                .into(),
            )),
        }
    }

    /// What [`LeaseTable::ensure_table`] would find, for `--check`: creates nothing.
    pub async fn inspect(&self) -> connector_core::check::Check {
        use connector_core::check::Check;
        let var = Some("CHECKPOINT_TABLE");
        let memory = |action: &str, e: String| {
            Check::warn(
                "checkpoints",
                var,
                format!(
                    "no {action} on {}: checkpoints would be kept in memory, as the original kept them ({e})",
                    self.table
                ),
            )
        };
        match self
            .client
            .describe_table()
            .table_name(&self.table)
            .send()
            .await
        {
            Ok(_) => {}
            Err(e) if is_access_denied(&e) => {
                return memory("dynamodb:DescribeTable", describe(&e));
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_not_found_exception()) =>
            {
                // Whether CreateTable is allowed cannot be seen without creating it.
                return Check::warn(
                    "checkpoints",
                    var,
                    format!(
                        "table {} does not exist: the first start creates it where dynamodb:CreateTable is allowed, else keeps checkpoints in memory",
                        self.table
                    ),
                );
            }
            Err(e) => {
                return Check::fail(
                    "checkpoints",
                    var,
                    format!("cannot read table {}: {}", self.table, describe(&e)),
                );
            }
        }
        match self.scan().await {
            Ok(leases) => Check::ok(
                "checkpoints",
                var,
                format!(
                    "table {}: {} shard leases of this trigger; the first start goes on from their checkpoints",
                    self.table,
                    leases.len()
                ),
            ),
            Err(e) => memory("dynamodb:Scan", e.to_string()),
        }
    }

    /// Creates the lease of a shard unless it exists.
    pub async fn create(
        &self,
        shard: &str,
        parents: &[String],
        now_ms: i64,
    ) -> Result<(), BoxError> {
        if let Some(()) = self.with_memory(|leases| {
            leases.entry(shard.to_owned()).or_insert_with(|| Lease {
                shard: shard.to_owned(),
                owner: None,
                counter: 0,
                checkpoint: None,
                parents: parents.to_vec(),
                created_ms: now_ms,
            });
        }) {
            return Ok(());
        }
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, self.key(shard))
            .item("shard_id", s(shard))
            .item("lease_counter", n(0))
            .item("created_ms", n(now_ms))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY);
        if !parents.is_empty() {
            put = put.item("parents", AttributeValue::Ss(parents.to_vec()));
        }
        match put.send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(()),
            Err(e) => Err(describe(&e).into()),
        }
    }

    /// Every lease of this application and stream.
    pub async fn scan(&self) -> Result<Vec<Lease>, BoxError> {
        if let Some(leases) = self.with_memory(|leases| leases.values().cloned().collect()) {
            return Ok(leases);
        }
        let mut leases = Vec::new();
        let mut start = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(#k, :p)")
                .expression_attribute_names("#k", KEY)
                .expression_attribute_values(":p", s(&self.prefix))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            leases.extend(out.items().iter().filter_map(parse));
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(leases);
            }
        }
    }

    /// Takes `seen` if nobody changed it since it was read; returns the lease as now held.
    pub async fn take(&self, seen: &Lease) -> Result<Option<Lease>, BoxError> {
        if let Some(taken) = self.with_memory(|leases| {
            let lease = leases.get_mut(&seen.shard)?;
            (lease.counter == seen.counter).then(|| {
                lease.owner = Some(self.worker.clone());
                lease.counter += 1;
                lease.clone()
            })
        }) {
            return Ok(taken);
        }
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, self.key(&seen.shard))
            .update_expression("SET #o = :me, #c = #c + :one")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seen", n(seen.counter))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew);
        update = update.condition_expression("#c = :seen");
        match update.send().await {
            Ok(out) => Ok(out.attributes.as_ref().and_then(parse)),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(None),
            Err(e) => Err(describe(&e).into()),
        }
    }

    /// Renews a held lease; returns the new counter, or `None` when it was taken by another.
    pub async fn renew(&self, shard: &str, counter: i64) -> Result<Option<i64>, BoxError> {
        if let Some(renewed) = self.with_memory(|leases| {
            let lease = leases.get_mut(shard)?;
            (lease.owner.as_deref() == Some(&self.worker) && lease.counter == counter).then(|| {
                lease.counter += 1;
                lease.counter
            })
        }) {
            return Ok(renewed);
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, self.key(shard))
            .update_expression("SET #c = #c + :one")
            .condition_expression("#o = :me AND #c = :held")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":held", n(counter))
            .send()
            .await;
        match out {
            Ok(_) => Ok(Some(counter + 1)),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(None),
            Err(e) => Err(describe(&e).into()),
        }
    }

    /// Writes a checkpoint of a held lease; `false` when the lease is no longer ours.
    pub async fn checkpoint(&self, shard: &str, sequence: &str) -> Result<bool, BoxError> {
        if let Some(written) = self.with_memory(|leases| match leases.get_mut(shard) {
            Some(lease) if lease.owner.as_deref() == Some(&self.worker) => {
                lease.checkpoint = Some(sequence.to_owned());
                true
            }
            _ => false,
        }) {
            return Ok(written);
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, self.key(shard))
            .update_expression("SET #p = :seq")
            .condition_expression("#o = :me")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#p", "checkpoint")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":seq", s(sequence))
            .send()
            .await;
        match out {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(false),
            Err(e) => Err(describe(&e).into()),
        }
    }

    /// Gives a held lease up so another worker (or this one, restarted) can take it at once.
    pub async fn release(&self, shard: &str) -> Result<(), BoxError> {
        if let Some(()) = self.with_memory(|leases| {
            if let Some(lease) = leases.get_mut(shard)
                && lease.owner.as_deref() == Some(&self.worker)
            {
                lease.owner = None;
                lease.counter += 1;
            }
        }) {
            return Ok(());
        }
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(KEY, self.key(shard))
            .update_expression("REMOVE #o SET #c = #c + :one")
            .condition_expression("#o = :me")
            .expression_attribute_names("#o", "lease_owner")
            .expression_attribute_names("#c", "lease_counter")
            .expression_attribute_values(":me", s(&self.worker))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match out {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(is_condition_failure) => Ok(()),
            Err(e) => Err(describe(&e).into()),
        }
    }
}

fn parse(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let text = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let num = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
    };
    Some(Lease {
        shard: text("shard_id")?,
        owner: text("lease_owner"),
        counter: num("lease_counter").unwrap_or(0),
        checkpoint: text("checkpoint"),
        parents: item
            .get("parents")
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
        created_ms: num("created_ms").unwrap_or(0),
    })
}

/// Remembers when each lease's (owner, counter) last changed, by this worker's clock.
#[derive(Debug, Default)]
pub struct Observer {
    seen: HashMap<String, (Option<String>, i64, Instant)>,
}

impl Observer {
    /// Records a scan; returns the shards whose lease is free to take: unowned, or not renewed
    /// for `duration`, or held under this worker's id by an earlier run of it.
    pub fn expired(
        &mut self,
        leases: &[Lease],
        me: &str,
        held: &HashSet<String>,
        duration: Duration,
        now: Instant,
    ) -> HashSet<String> {
        let mut free = HashSet::new();
        for l in leases {
            let entry = self
                .seen
                .entry(l.shard.clone())
                .or_insert_with(|| (l.owner.clone(), l.counter, now));
            if entry.0 != l.owner || entry.1 != l.counter {
                *entry = (l.owner.clone(), l.counter, now);
            }
            let stale = now.duration_since(entry.2) >= duration;
            let ours_from_before = l.owner.as_deref() == Some(me) && !held.contains(&l.shard);
            if l.owner.is_none() || ours_from_before || (l.owner.as_deref() != Some(me) && stale) {
                free.insert(l.shard.clone());
            }
        }
        free
    }
}

/// Which leases to take this round. A shard is eligible once its parents are finished (or gone
/// from the stream), so a closed parent is always read to its end before its children. Each
/// worker aims at an even share: it takes free leases up to that share, and, when none are
/// free, steals one from the busiest worker holding more than its share.
pub fn plan(
    leases: &[Lease],
    free: &HashSet<String>,
    me: &str,
    held: &HashSet<String>,
) -> Vec<String> {
    let by_shard: HashMap<&str, &Lease> = leases.iter().map(|l| (l.shard.as_str(), l)).collect();
    let eligible: Vec<&Lease> = leases
        .iter()
        .filter(|l| !l.finished())
        .filter(|l| {
            l.parents.iter().all(|p| {
                by_shard
                    .get(p.as_str())
                    .is_none_or(|parent| parent.finished())
            })
        })
        .collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let mut load: BTreeMap<&str, usize> = BTreeMap::new();
    load.insert(me, 0);
    for l in &eligible {
        if held.contains(&l.shard) {
            *load.entry(me).or_default() += 1;
        } else if let Some(owner) = l.owner.as_deref().filter(|_| !free.contains(&l.shard)) {
            *load.entry(owner).or_default() += 1;
        }
    }
    let target = eligible.len().div_ceil(load.len());
    let mine = load[me];
    if mine >= target {
        return Vec::new();
    }
    let mut take: Vec<String> = eligible
        .iter()
        .filter(|l| free.contains(&l.shard) && !held.contains(&l.shard))
        .map(|l| l.shard.clone())
        .take(target - mine)
        .collect();
    if take.is_empty() {
        let busiest = load
            .iter()
            .filter(|(w, _)| **w != me)
            .max_by_key(|(_, c)| **c)
            .filter(|(_, c)| **c > target);
        if let Some((victim, _)) = busiest {
            take.extend(
                eligible
                    .iter()
                    // Not one counted as this worker's own: a shard taken from it that it has
                    // not noticed yet is not stolen back (two readers of one shard here).
                    .filter(|l| l.owner.as_deref() == Some(victim) && !held.contains(&l.shard))
                    .map(|l| l.shard.clone())
                    .next_back(),
            );
        }
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(
        shard: &str,
        owner: Option<&str>,
        checkpoint: Option<&str>,
        parents: &[&str],
    ) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(Into::into),
            counter: 1,
            checkpoint: checkpoint.map(Into::into),
            parents: parents.iter().map(|p| (*p).into()).collect(),
            created_ms: 0,
        }
    }

    fn set(v: &[&str]) -> HashSet<String> {
        v.iter().map(|s| (*s).into()).collect()
    }

    #[test]
    fn a_lone_worker_takes_every_free_shard() {
        let leases = [lease("s0", None, None, &[]), lease("s1", None, None, &[])];
        assert_eq!(
            plan(&leases, &set(&["s0", "s1"]), "a", &set(&[])),
            ["s0", "s1"]
        );
    }

    #[test]
    fn children_wait_for_their_parent() {
        let leases = [
            lease("p", None, Some("42"), &[]),
            lease("c1", None, None, &["p"]),
            lease("c2", None, None, &["p"]),
        ];
        let free = set(&["p", "c1", "c2"]);
        assert_eq!(plan(&leases, &free, "a", &set(&[])), ["p"]);
        let done = [
            lease("p", None, Some(SHARD_END), &[]),
            lease("c1", None, None, &["p"]),
            lease("c2", None, None, &["p"]),
        ];
        assert_eq!(plan(&done, &free, "a", &set(&[])), ["c1", "c2"]);
        // A parent gone from the stream (past retention) does not block.
        let orphan = [lease("c1", None, None, &["gone"])];
        assert_eq!(plan(&orphan, &set(&["c1"]), "a", &set(&[])), ["c1"]);
    }

    #[test]
    fn a_second_worker_steals_its_share() {
        let leases = [
            lease("s0", Some("a"), None, &[]),
            lease("s1", Some("a"), None, &[]),
        ];
        assert_eq!(plan(&leases, &set(&[]), "b", &set(&[])), ["s1"]);
        // The holder, seeing the other worker, does not take more than its share back.
        let split = [
            lease("s0", Some("a"), None, &[]),
            lease("s1", Some("b"), None, &[]),
        ];
        assert!(plan(&split, &set(&[]), "a", &set(&["s0"])).is_empty());
        assert!(plan(&split, &set(&[]), "b", &set(&["s1"])).is_empty());
    }

    #[test]
    fn a_shard_taken_from_this_worker_is_not_stolen_back_before_it_notices() {
        // b still reads s0, which a has just taken from it: b counts s0 as its own and steals
        // one of a's others, never s0 (that would start a second reader of s0 in b).
        let leases = [
            lease("s1", Some("a"), None, &[]),
            lease("s2", Some("a"), None, &[]),
            lease("s3", Some("a"), None, &[]),
            lease("s4", Some("a"), None, &[]),
            lease("s5", Some("a"), None, &[]),
            lease("s0", Some("a"), None, &[]),
        ];
        assert_eq!(plan(&leases, &set(&[]), "b", &set(&["s0"])), ["s5"]);
    }

    #[test]
    fn expiry_is_judged_by_the_local_clock() {
        let mut o = Observer::default();
        let t0 = Instant::now();
        let d = Duration::from_secs(10);
        let leases = vec![
            lease("s0", Some("dead"), None, &[]),
            lease("s1", Some("me"), None, &[]),
        ];
        // s1 is ours from an earlier run (not held now): free at once.
        assert_eq!(o.expired(&leases, "me", &set(&[]), d, t0), set(&["s1"]));
        assert_eq!(
            o.expired(&leases, "me", &set(&["s1"]), d, t0 + d),
            set(&["s0"])
        );
        let mut renewed = leases.clone();
        renewed[0].counter += 1;
        assert!(
            o.expired(&renewed, "me", &set(&["s1"]), d, t0 + d * 2)
                .is_empty()
        );
    }
}

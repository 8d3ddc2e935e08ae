//! A complete connector for a broker this project does not ship: a PostgreSQL table used as a
//! queue. Rows of `TOPIC` are claimed with `FOR UPDATE SKIP LOCKED` (replicas never take the
//! same row), POSTed, and deleted only once their response or error document is inserted into
//! `RESPONSE_TOPIC` / `ERROR_TOPIC`. A claim is a lease: a row whose replica died (or did not
//! finish it within `DRAIN_TIMEOUT`) is claimed again after `CLAIM_TIMEOUT`. Configuration,
//! retries, draining, metrics, `/readyz` and the HTTP contract come from `connector-core`.
//!
//! Tables: see `schema.sql`. Variables: the common ones (`TOPIC`, `HTTP_ENDPOINT`, ...),
//! `DATABASE_URL`, `MAX_IN_FLIGHT` (10), `CLAIM_TIMEOUT` (60s), `POLL_INTERVAL` (500ms).
//! `custom-connector scaler` runs the KEDA external-push scaler for the table instead
//! (`backlog.rs`).

mod backlog;

use connector_core::backoff::ReconnectBackoff;
use connector_core::config::{Secret, Vars};
use connector_core::dispatch::{Acknowledger, NextDelivery, Outbound, Publisher, Source};
use connector_core::{BoxError, ConfigError, Connector, Delivery, DispatchEnd, DispatchOptions};
use connector_core::{Engine, Env, Message, Settings};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

#[derive(Debug)]
struct PgQueue {
    url: Secret,
    max_in_flight: usize,
    claim: Duration,
    poll: Duration,
}

impl Connector for PgQueue {
    const NAME: &'static str = env!("CARGO_PKG_NAME");
    const MESSAGING_SYSTEM: &'static str = "postgresql";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    fn from_env(env: &dyn Env, _: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        Ok(Self {
            url: Secret::new(vars.required("DATABASE_URL")?),
            max_in_flight: vars.int_in_range("MAX_IN_FLIGHT", 10, 1, 1000)? as usize,
            claim: vars.duration("CLAIM_TIMEOUT", Duration::from_secs(60))?,
            poll: vars.duration("POLL_INTERVAL", Duration::from_millis(500))?,
        })
    }

    fn dispatch_options(&self) -> DispatchOptions {
        let max_in_flight = self.max_in_flight;
        DispatchOptions {
            max_in_flight,
            ..DispatchOptions::default()
        }
    }

    async fn run(self, engine: Engine) -> Result<(), BoxError> {
        let mut backoff = ReconnectBackoff::default();
        let connect = || async {
            let (client, connection) = tokio_postgres::connect(self.url.expose(), NoTls).await?;
            tokio::spawn(connection);
            Ok(Arc::new(client))
        };
        while let Some(db) = engine.connect("PostgreSQL", &mut backoff, connect).await? {
            let table = ident(&engine.settings().common.topic);
            let (claim, poll, engine2) = (self.claim, self.poll, engine.clone());
            let mut source = PgSource {
                db: db.clone(),
                table,
                claim,
                poll,
                engine: engine2,
            };
            engine.health().set_ready(true);
            let end = engine
                .dispatch(&mut source, &Arc::new(PgPublisher(db)))
                .await;
            engine.health().set_ready(false);
            if end == DispatchEnd::Shutdown
                || !engine.sleep_unless_shutdown(backoff.next_delay()).await
            {
                break;
            }
        }
        Ok(())
    }
}

/// Table names come from the environment: quoted, they cannot change the SQL around them.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

struct PgSource {
    db: Arc<Client>,
    table: String,
    claim: Duration,
    poll: Duration,
    engine: Engine,
}

impl Source for PgSource {
    type Meta = ();
    type Ack = PgAck;

    async fn next(&mut self) -> NextDelivery<Self> {
        let t = &self.table;
        let sql = format!(
            "UPDATE {t} SET claimed_until = now() + make_interval(secs => $1) WHERE id = \
             (SELECT id FROM {t} WHERE claimed_until IS NULL OR claimed_until < now() \
             ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1) RETURNING id, payload"
        );
        loop {
            if let Some(row) = self
                .db
                .query_opt(&sql, &[&self.claim.as_secs_f64()])
                .await?
            {
                let payload: Vec<u8> = row.get(1);
                let message = Message {
                    payload: payload.into(),
                    ..Message::default()
                };
                let (db, table) = (self.db.clone(), self.table.clone());
                return Ok(Some(Delivery {
                    message,
                    meta: (),
                    ack: PgAck {
                        db,
                        table,
                        id: row.get(0),
                    },
                }));
            }
            if !self.engine.sleep_unless_shutdown(self.poll).await {
                return Ok(None);
            }
        }
    }

    async fn stop(&mut self) {}
}

struct PgAck {
    db: Arc<Client>,
    table: String,
    id: i64,
}

impl Acknowledger for PgAck {
    async fn ack(self) -> Result<(), BoxError> {
        let sql = format!("DELETE FROM {} WHERE id = $1", self.table);
        self.db.execute(&sql, &[&self.id]).await?;
        Ok(())
    }

    async fn requeue(self, _: Message) -> Result<(), BoxError> {
        let sql = format!(
            "UPDATE {} SET claimed_until = NULL WHERE id = $1",
            self.table
        );
        self.db.execute(&sql, &[&self.id]).await?;
        Ok(())
    }
}

struct PgPublisher(Arc<Client>);

impl Publisher<()> for PgPublisher {
    /// An INSERT outside a transaction has committed (is durable) when it returns.
    async fn publish(&self, record: Outbound<'_, ()>) -> Result<(), BoxError> {
        let sql = format!("INSERT INTO {} (payload) VALUES ($1)", ident(record.topic));
        self.0.execute(&sql, &[&record.body.as_ref()]).await?;
        Ok(())
    }
}

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|a| a == "scaler") {
        return connector_core::scaler::main::<backlog::PgBacklog>();
    }
    connector_core::app::main::<PgQueue>()
}

//! Scaler mode (`custom-connector scaler`): the source table's row count is the backlog KEDA's
//! external-push trigger scales on. Every row in it is unsettled (settled rows are deleted), so
//! the count is waiting plus in-flight work. Variables: `DATABASE_URL`, `TOPIC`, and the
//! scaler's own (`SCALER_ADDR`, `SCALER_POLL_INTERVAL`).

use connector_core::config::{Secret, Vars};
use connector_core::scaler::Backlog;
use connector_core::{BoxError, ConfigError, Env};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

pub struct PgBacklog {
    url: Secret,
    table: String,
    /// Connected on first use and again after a lost connection, so the scaler starts (and
    /// answers UNAVAILABLE) while the database is down.
    db: Mutex<Option<Client>>,
}

impl Backlog for PgBacklog {
    const NAME: &'static str = env!("CARGO_PKG_NAME");

    fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        Ok(Self {
            url: Secret::new(vars.required("DATABASE_URL")?),
            table: crate::ident(&vars.required("TOPIC")?),
            db: Mutex::new(None),
        })
    }

    async fn backlog(&self) -> Result<u64, BoxError> {
        let mut db = self.db.lock().await;
        let client = match db.take() {
            Some(client) if !client.is_closed() => client,
            _ => {
                let (client, connection) =
                    tokio_postgres::connect(self.url.expose(), NoTls).await?;
                tokio::spawn(connection);
                client
            }
        };
        let sql = format!("SELECT count(*) FROM {}", self.table);
        let count: i64 = client.query_one(&sql, &[]).await?.get(0);
        *db = Some(client);
        Ok(count.try_into().unwrap_or(0))
    }
}

//! NATS JetStream's variables on top of the common contract (reference §2.6), plus the
//! authentication options the original lacked.

use connector_core::config::{ConfigError, Env, Secret, Settings, Vars};
use std::time::Duration;

/// Everything the JetStream connector reads besides the common variables.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// `NATS_SERVER`: one URL or a comma-separated list (may carry user:password).
    pub servers: Secret,
    /// `CONSUMER`: the durable consumer (the one KEDA's JetStream scaler watches).
    pub consumer: String,
    /// `STREAM`: the stream holding `TOPIC`; found by subject when unset.
    pub stream: Option<String>,
    /// The subject consumed, `TOPIC`.
    pub subject: String,
    /// `ACKWAIT`: how long the server waits for an ack before redelivering.
    pub ack_wait: Duration,
    /// `CONCURRENT`: messages processed at once.
    pub concurrent: usize,
    /// `NATS_USERNAME` / `NATS_PASSWORD`.
    pub user_password: Option<(String, Secret)>,
    /// `NATS_TOKEN`.
    pub token: Option<Secret>,
    /// `NATS_NKEY`: an nkey seed.
    pub nkey: Option<Secret>,
    /// `NATS_CREDENTIALS_FILE`: a `.creds` file path.
    pub credentials_file: Option<String>,
    /// `NATS_TLS`: require TLS.
    pub tls: bool,
    /// `NATS_CA_FILE`: CA certificates (PEM file) that verify the server.
    pub ca_file: Option<String>,
    /// `NATS_CERT_FILE` + `NATS_KEY_FILE`: client certificate.
    pub client_cert: Option<(String, String)>,
}

impl NatsConfig {
    /// Parses and validates.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let servers = vars
            .optional_trimmed("NATS_SERVER")
            .unwrap_or_else(|| "nats://127.0.0.1:4222".to_owned());
        for server in servers.split(',') {
            if server.trim().parse::<async_nats::ServerAddr>().is_err() {
                return Err(ConfigError::invalid_secret(
                    "NATS_SERVER",
                    "nats://host:port (or tls://), comma-separated for several",
                ));
            }
        }
        let consumer = vars.optional_trimmed("CONSUMER").ok_or_else(|| {
            // The original fell back to an ephemeral consumer, which re-reads the whole stream
            // on every start and is invisible to KEDA.
            ConfigError::missing("CONSUMER")
        })?;
        if consumer.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError::invalid(
                "CONSUMER",
                "a durable name without '.', '*', '>' or spaces",
                &consumer,
            ));
        }
        let ack_wait = vars.duration("ACKWAIT", Duration::from_secs(30))?;
        if ack_wait < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "ACKWAIT",
                "a duration of at least 1s such as 30s or 2m",
                &format!("{ack_wait:?}"),
            ));
        }
        let user = vars.optional_trimmed("NATS_USERNAME");
        let password = vars.optional_trimmed("NATS_PASSWORD").map(Secret::new);
        let user_password = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            (Some(_), None) => return Err(ConfigError::missing("NATS_PASSWORD")),
            (None, Some(_)) => return Err(ConfigError::missing("NATS_USERNAME")),
        };
        let cert = vars.optional_trimmed("NATS_CERT_FILE");
        let key = vars.optional_trimmed("NATS_KEY_FILE");
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::conflict(
                    "NATS_CERT_FILE",
                    "NATS_CERT_FILE and NATS_KEY_FILE must be given together",
                ));
            }
        };
        let credentials_file = vars.optional_trimmed("NATS_CREDENTIALS_FILE");
        for (var, path) in [
            ("NATS_CREDENTIALS_FILE", credentials_file.as_deref()),
            (
                "NATS_CA_FILE",
                vars.optional_trimmed("NATS_CA_FILE").as_deref(),
            ),
        ] {
            if let Some(p) = path
                && !std::path::Path::new(p).is_file()
            {
                return Err(ConfigError::invalid(var, "the path of a readable file", p));
            }
        }
        Ok(Self {
            servers: Secret::new(servers),
            consumer,
            stream: vars.optional_trimmed("STREAM"),
            subject: settings.common.topic.clone(),
            ack_wait,
            concurrent: vars.int_in_range("CONCURRENT", 1, 1, 10_000)? as usize,
            user_password,
            token: vars.optional_trimmed("NATS_TOKEN").map(Secret::new),
            nkey: match vars.optional_trimmed("NATS_NKEY") {
                // Checked now, so a bad seed is a configuration error and not a failed connect
                // loop; the message never shows the seed.
                Some(seed) if nkeys::KeyPair::from_seed(&seed).is_err() => {
                    return Err(ConfigError::invalid_secret(
                        "NATS_NKEY",
                        "an nkey user seed (SU…, 58 characters)",
                    ));
                }
                seed => seed.map(Secret::new),
            },
            credentials_file,
            tls: vars.bool("NATS_TLS", false)?,
            ca_file: vars.optional_trimmed("NATS_CA_FILE"),
            client_cert,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[(&str, &str)]) -> Result<NatsConfig, ConfigError> {
        let mut env = vec![
            ("TOPIC", "orders.created"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
            ("CONSUMER", "orders"),
        ];
        env.extend_from_slice(extra);
        let settings = Settings::from_env(&env)?;
        NatsConfig::from_env(&env, &settings)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.servers.expose(), "nats://127.0.0.1:4222");
        assert_eq!((c.ack_wait, c.concurrent), (Duration::from_secs(30), 1));
        assert_eq!(c.subject, "orders.created");
        let c = parse(&[
            ("ACKWAIT", "1m30s"),
            ("CONCURRENT", "8"),
            ("STREAM", "ORDERS"),
        ])
        .unwrap();
        assert_eq!((c.ack_wait, c.concurrent), (Duration::from_secs(90), 8));
        assert_eq!(c.stream.as_deref(), Some("ORDERS"));
    }

    #[test]
    fn errors() {
        for (extra, var) in [
            (vec![("CONSUMER", "")], "CONSUMER"),
            (vec![("CONSUMER", "a.b")], "CONSUMER"),
            (vec![("ACKWAIT", "30")], "ACKWAIT"),
            (vec![("ACKWAIT", "10ms")], "ACKWAIT"),
            (vec![("CONCURRENT", "0")], "CONCURRENT"),
            (vec![("NATS_SERVER", "::::")], "NATS_SERVER"),
            (vec![("NATS_USERNAME", "u")], "NATS_PASSWORD"),
            (vec![("NATS_KEY_FILE", "/k")], "NATS_CERT_FILE"),
            (
                vec![("NATS_CREDENTIALS_FILE", "/no/such.creds")],
                "NATS_CREDENTIALS_FILE",
            ),
        ] {
            assert_eq!(parse(&extra).unwrap_err().var(), var, "{extra:?}");
        }
    }
}

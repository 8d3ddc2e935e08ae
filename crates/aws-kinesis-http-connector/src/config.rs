//! Kinesis's variables on top of the common contract (reference §2.4) and the AWS ones (§1.6).

use connector_core::aws::AwsSettings;
use connector_core::config::{ConfigError, Env, Settings, Vars};
use std::time::Duration;

/// Where a shard with no checkpoint starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitialPosition {
    /// The oldest record still retained (default: a scale-from-zero start must not skip the
    /// records that made KEDA start it).
    TrimHorizon,
    /// Records written after the shard's lease was first created.
    Latest,
}

/// Everything the Kinesis connector reads besides the common variables.
#[derive(Debug, Clone)]
pub struct KinesisConfig {
    /// Region and endpoint overrides.
    pub aws: AwsSettings,
    /// The source stream, `TOPIC`.
    pub stream: String,
    /// `CHECKPOINT_TABLE`: the DynamoDB table of leases and checkpoints (created if absent).
    pub table: String,
    /// `SOURCE_NAME`: the consuming application; leases are per application and stream.
    pub application: String,
    /// `WORKER_ID` (default `HOSTNAME`, the pod name): who holds a lease.
    pub worker_id: String,
    /// `INITIAL_POSITION`: `TRIM_HORIZON` (default) or `LATEST`.
    pub initial_position: InitialPosition,
    /// `LEASE_DURATION`: a lease not renewed for this long may be taken over (default 10s).
    pub lease_duration: Duration,
    /// `SHARD_SYNC_INTERVAL`: how often shards and leases are rebalanced (default 10s).
    pub shard_sync_interval: Duration,
    /// `POLL_INTERVAL`: pause after an empty `GetRecords` (default 1s; Kinesis allows five
    /// reads per shard per second).
    pub poll_interval: Duration,
    /// `CHECKPOINT_INTERVAL`: how often settled positions are written (default 1s).
    pub checkpoint_interval: Duration,
    /// `MAX_IN_FLIGHT`: records handed to the dispatcher and not yet settled, per shard
    /// (default 100): also the most a shard can redo after its lease moves.
    pub max_in_flight: usize,
}

impl KinesisConfig {
    /// Parses and validates.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let aws = AwsSettings::from_env(env)?;
        let common = &settings.common;
        check_name("TOPIC", &common.topic, 1, 128, "a stream name")?;
        for (var, value) in [
            ("RESPONSE_TOPIC", &common.response_topic),
            ("ERROR_TOPIC", &common.error_topic),
        ] {
            if let Some(v) = value {
                check_name(var, v, 1, 128, "a stream name")?;
            }
        }
        let table = vars
            .optional_trimmed("CHECKPOINT_TABLE")
            .unwrap_or_else(|| "keda-connector-checkpoints".to_owned());
        check_name("CHECKPOINT_TABLE", &table, 3, 255, "a DynamoDB table name")?;
        let worker_id = vars
            .optional_trimmed("WORKER_ID")
            .or_else(|| vars.optional_trimmed("HOSTNAME"))
            .unwrap_or_else(random_id);
        let initial_position = vars.choice(
            "INITIAL_POSITION",
            InitialPosition::TrimHorizon,
            &[
                ("TRIM_HORIZON", InitialPosition::TrimHorizon),
                ("LATEST", InitialPosition::Latest),
            ],
        )?;
        let at_least = |var: &str, d: Duration, min: Duration| {
            if d < min {
                Err(ConfigError::invalid(
                    var,
                    format!("a duration of at least {min:?}"),
                    &format!("{d:?}"),
                ))
            } else {
                Ok(d)
            }
        };
        let lease_duration = at_least(
            "LEASE_DURATION",
            vars.duration("LEASE_DURATION", Duration::from_secs(10))?,
            Duration::from_secs(1),
        )?;
        let ms = Duration::from_millis(100);
        Ok(Self {
            aws,
            stream: common.topic.clone(),
            table,
            application: common.source_name.clone(),
            worker_id,
            initial_position,
            lease_duration,
            shard_sync_interval: at_least(
                "SHARD_SYNC_INTERVAL",
                vars.duration("SHARD_SYNC_INTERVAL", Duration::from_secs(10))?,
                ms,
            )?,
            poll_interval: at_least(
                "POLL_INTERVAL",
                vars.duration("POLL_INTERVAL", Duration::from_secs(1))?,
                ms,
            )?,
            checkpoint_interval: at_least(
                "CHECKPOINT_INTERVAL",
                vars.duration("CHECKPOINT_INTERVAL", Duration::from_secs(1))?,
                ms,
            )?,
            max_in_flight: vars.int_in_range("MAX_IN_FLIGHT", 100, 1, 10_000)? as usize,
        })
    }
}

fn check_name(
    var: &str,
    value: &str,
    min: usize,
    max: usize,
    what: &str,
) -> Result<(), ConfigError> {
    let ok = (min..=max).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            var,
            format!("{what} ({min}-{max} letters, digits, _ . -)"),
            value,
        ))
    }
}

fn random_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    format!("worker-{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<KinesisConfig, ConfigError> {
        let mut env = vec![
            ("TOPIC", "orders"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
        ];
        env.extend_from_slice(pairs);
        let settings = Settings::from_env(&env)?;
        KinesisConfig::from_env(&env, &settings)
    }

    #[test]
    fn defaults() {
        let c = parse(&[("HOSTNAME", "pod-1")]).unwrap();
        assert_eq!(c.stream, "orders");
        assert_eq!(c.table, "keda-connector-checkpoints");
        assert_eq!(c.application, "KEDAConnector");
        assert_eq!(c.worker_id, "pod-1");
        assert_eq!(c.initial_position, InitialPosition::TrimHorizon);
        assert_eq!(c.lease_duration, Duration::from_secs(10));
        assert_eq!(c.max_in_flight, 100);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("TOPIC", "a stream"),
            ("RESPONSE_TOPIC", "x/y"),
            ("CHECKPOINT_TABLE", "ab"),
            ("INITIAL_POSITION", "EARLIEST"),
            ("LEASE_DURATION", "500ms"),
            ("POLL_INTERVAL", "soon"),
            ("MAX_IN_FLIGHT", "0"),
        ] {
            let e = parse(&[(var, value)]).unwrap_err();
            assert_eq!(e.var(), var, "{e}");
        }
    }
}

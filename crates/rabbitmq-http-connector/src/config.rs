//! RabbitMQ's variables on top of the common contract (reference §2.2).

use connector_core::config::{ConfigError, Env, Settings, Vars};
use lapin::uri::AMQPUri;

/// What the RabbitMQ connector reads besides the common variables.
#[derive(Clone)]
pub struct RabbitConfig {
    /// `HOST`: the AMQP URI (holds the password: never logged or echoed).
    pub uri: String,
    /// The source queue, `TOPIC`.
    pub queue: String,
    /// `CONCURRENT`: prefetch (`basic.qos`) and in-flight bound.
    pub concurrent: u16,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("uri", &"<redacted>")
            .field("queue", &self.queue)
            .field("concurrent", &self.concurrent)
            .finish()
    }
}

/// The frame size proposed to the broker unless `HOST` names one.
pub const FRAME_MAX: u32 = 32_768;

impl RabbitConfig {
    /// Parses and validates; `settings` carries the already-parsed common variables.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        if vars.bool("INCLUDE_UNACKED", false)? {
            return Err(ConfigError::conflict(
                "INCLUDE_UNACKED",
                "only amqp protocol host is supported (true selects the KEDA scaler's HTTP API mode)",
            ));
        }
        let uri = vars.required("HOST")?.trim().to_owned();
        const EXPECTED: &str =
            "an AMQP URI such as amqp://user:password@host:5672/vhost (amqp:// or amqps://)";
        if !(uri.starts_with("amqp://") || uri.starts_with("amqps://")) {
            return Err(ConfigError::invalid_secret("HOST", EXPECTED));
        }
        let parsed = uri
            .parse::<AMQPUri>()
            .map_err(|_| ConfigError::invalid_secret("HOST", EXPECTED))?;
        // lapin keeps 32 frames of send and of receive buffer, zero-filled, so RabbitMQ's default
        // 128 KiB frame_max costs 8 MiB resident per connection; 32 KiB costs 2 MiB (idle RSS
        // 14.2 -> 8.5 MB in `cargo xtask bench`). Larger messages simply span more frames.
        // A frame_max in HOST is kept.
        let uri = if parsed.query.frame_max.is_some() {
            uri
        } else {
            let sep = if uri.contains('?') { '&' } else { '?' };
            format!("{uri}{sep}frame_max={FRAME_MAX}")
        };
        let concurrent = vars.int_in_range("CONCURRENT", 10, 1, i64::from(u16::MAX))? as u16;
        Ok(Self {
            uri,
            queue: settings.common.topic.clone(),
            concurrent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[(&str, &str)]) -> Result<RabbitConfig, ConfigError> {
        let mut env = vec![
            ("TOPIC", "q"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
            ("HOST", "amqp://guest:guest@127.0.0.1:5672/%2f"),
        ];
        env.extend_from_slice(extra);
        let settings = Settings::from_env(&env)?;
        RabbitConfig::from_env(&env, &settings)
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.queue.as_str(), c.concurrent), ("q", 10));
        assert!(!format!("{c:?}").contains("guest"));
        assert!(c.uri.ends_with("/%2f?frame_max=32768"));
        let own = parse(&[("HOST", "amqp://h/v?heartbeat=5&frame_max=8192")]).unwrap();
        assert_eq!(own.uri, "amqp://h/v?heartbeat=5&frame_max=8192");
        let other = parse(&[("HOST", "amqp://h/v?heartbeat=5")]).unwrap();
        assert_eq!(other.uri, "amqp://h/v?heartbeat=5&frame_max=32768");
        assert_eq!(parse(&[("CONCURRENT", " 3 ")]).unwrap().concurrent, 3);
        for bad in ["0", "-1", "ten", "70000"] {
            assert_eq!(
                parse(&[("CONCURRENT", bad)]).unwrap_err().var(),
                "CONCURRENT"
            );
        }
        assert_eq!(
            parse(&[("INCLUDE_UNACKED", "true")]).unwrap_err().var(),
            "INCLUDE_UNACKED"
        );
        let e = parse(&[("HOST", "http://guest:s3cret@h/")]).unwrap_err();
        assert_eq!(e.var(), "HOST");
        assert!(!e.to_string().contains("s3cret"));
        assert_eq!(
            parse(&[("HOST", "")]).unwrap_err().to_string(),
            "environment variable not found: HOST"
        );
    }
}

//! Redis's variables on top of the common contract (reference §2.8).

use connector_core::config::{ConfigError, Env, Secret, Settings, Vars};

/// Everything the Redis connector reads besides the common variables.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// The connection URL built from `ADDRESS` and the other variables (holds the password).
    pub url: Secret,
    /// The source list, `TOPIC`.
    pub list: String,
    /// `CONSUMER_ID`: names this consumer's processing list (default: `HOSTNAME`, the pod name).
    pub consumer_id: String,
    /// `MAX_IN_FLIGHT`: messages processed at once (default 1, as the original).
    pub max_in_flight: usize,
    /// `UNSAFE_SSL` with TLS: the server's certificate is not verified.
    pub unverified_tls: bool,
}

impl RedisConfig {
    /// Parses and validates.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let address = vars
            .optional_trimmed("ADDRESS")
            .ok_or_else(|| ConfigError::missing("ADDRESS"))?;
        // The original used PASSWORD_FROM_ENV's value as the password itself; keep that, and
        // also accept PASSWORD (what a Fission secret key `password` becomes).
        // Only a line ending is dropped (a Secret made from a file); spaces may be part of a
        // password, and the original sent them.
        let password_var = |var: &str| {
            vars.optional(var)
                .map(|p| p.trim_end_matches(['\r', '\n']).to_owned())
                .filter(|p| !p.is_empty())
        };
        let password = password_var("PASSWORD_FROM_ENV").or_else(|| password_var("PASSWORD"));
        let username = vars.optional_trimmed("USERNAME");
        let db = vars.int_in_range("DATABASE_INDEX", 0, 0, 1_000_000)?;
        let tls_flag = vars.bool("ENABLE_TLS", false)?;
        let unsafe_ssl = vars.bool("UNSAFE_SSL", false)?;

        const EXPECTED: &str = "host:port, or a redis:// or rediss:// URL";
        let (tls, host_port) = if let Some(rest) = address.strip_prefix("rediss://") {
            (true, rest)
        } else if let Some(rest) = address.strip_prefix("redis://") {
            (tls_flag, rest)
        } else if address.contains("://") {
            return Err(ConfigError::invalid_secret("ADDRESS", EXPECTED));
        } else {
            (tls_flag, address.as_str())
        };
        // A URL may carry its own credentials and database; variables given explicitly win.
        let (url_auth, rest) = match host_port.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, host_port),
        };
        let (host, url_db) = match rest.split_once('/') {
            Some((h, d)) => (h, Some(d)),
            None => (rest, None),
        };
        let Some((name, port)) = host
            .rsplit_once(':')
            .filter(|(_, p)| p.parse::<u16>().is_ok())
        else {
            return Err(ConfigError::invalid_secret("ADDRESS", EXPECTED));
        };
        // Go's dialer reaches this machine for an empty or unspecified host (`:6379`,
        // `0.0.0.0:6379`); the Redis client refuses both, so name the loopback address.
        let name = match name {
            "" | "0.0.0.0" => "127.0.0.1",
            "[::]" => "[::1]",
            other => other,
        };
        let host = format!("{name}:{port}");
        let db = match url_db.filter(|d| !d.is_empty()) {
            Some(d) if vars.optional_trimmed("DATABASE_INDEX").is_none() => d
                .parse::<i64>()
                .map_err(|_| ConfigError::invalid_secret("ADDRESS", EXPECTED))?,
            _ => db,
        };
        let auth = match (username, password) {
            (u, Some(p)) => format!("{}:{}@", encode(u.as_deref().unwrap_or("")), encode(&p)),
            (Some(u), None) => format!("{}@", encode(&u)),
            (None, None) => url_auth.map(|a| format!("{a}@")).unwrap_or_default(),
        };
        let scheme = if tls { "rediss" } else { "redis" };
        let insecure = if tls && unsafe_ssl { "#insecure" } else { "" };
        let url = format!("{scheme}://{auth}{host}/{db}{insecure}");

        // The pod name is the default; an error names whichever variable the value came from.
        let (source, consumer_id) = match vars.optional_trimmed("CONSUMER_ID") {
            Some(id) => ("CONSUMER_ID", id),
            None => (
                "HOSTNAME",
                vars.optional_trimmed("HOSTNAME").unwrap_or_else(random_id),
            ),
        };
        if consumer_id.contains(char::is_whitespace) {
            return Err(ConfigError::invalid(
                source,
                "a consumer name without spaces (CONSUMER_ID, default HOSTNAME)",
                &consumer_id,
            ));
        }
        Ok(Self {
            url: Secret::new(url),
            list: settings.common.topic.clone(),
            consumer_id,
            max_in_flight: vars.int_in_range("MAX_IN_FLIGHT", 1, 1, 10_000)? as usize,
            unverified_tls: tls && unsafe_ssl,
        })
    }

    /// This consumer's processing list: where a message waits while it is being handled.
    pub fn processing_list(&self) -> String {
        processing_list(&self.list, &self.consumer_id)
    }

    /// The key whose presence says this consumer is alive.
    pub fn heartbeat_key(&self) -> String {
        format!("{}:consumer:{}", self.list, self.consumer_id)
    }
}

/// `{list}:processing:{consumer}`.
pub fn processing_list(list: &str, consumer: &str) -> String {
    format!("{list}:processing:{consumer}")
}

/// Percent-encodes everything but RFC 3986 unreserved characters (user and password in a URL).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn random_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("c{:x}{:x}", std::process::id(), nanos & 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[(&str, &str)]) -> Result<RedisConfig, ConfigError> {
        let mut env = vec![
            ("TOPIC", "jobs"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
            ("ADDRESS", "127.0.0.1:6379"),
            ("HOSTNAME", "pod-1"),
        ];
        env.extend_from_slice(extra);
        let settings = Settings::from_env(&env)?;
        RedisConfig::from_env(&env, &settings)
    }

    #[test]
    fn urls() {
        assert_eq!(parse(&[]).unwrap().url.expose(), "redis://127.0.0.1:6379/0");
        let c = parse(&[
            ("PASSWORD_FROM_ENV", "p@ss word"),
            ("USERNAME", "app"),
            ("DATABASE_INDEX", "3"),
        ])
        .unwrap();
        assert_eq!(c.url.expose(), "redis://app:p%40ss%20word@127.0.0.1:6379/3");
        assert!(!format!("{c:?}").contains("ss%20word"));
        let c = parse(&[("ADDRESS", "rediss://h:6380/2"), ("UNSAFE_SSL", "true")]).unwrap();
        assert_eq!(c.url.expose(), "rediss://h:6380/2#insecure");
        let c = parse(&[("ENABLE_TLS", "true"), ("PASSWORD", "x")]).unwrap();
        assert_eq!(c.url.expose(), "rediss://:x@127.0.0.1:6379/0");
        assert_eq!(c.processing_list(), "jobs:processing:pod-1");
    }

    #[test]
    fn errors() {
        for (extra, var) in [
            (vec![("ADDRESS", "")], "ADDRESS"),
            (vec![("ADDRESS", "localhost")], "ADDRESS"),
            (vec![("ADDRESS", "http://h:1")], "ADDRESS"),
            (vec![("DATABASE_INDEX", "-1")], "DATABASE_INDEX"),
            (vec![("ENABLE_TLS", "sure")], "ENABLE_TLS"),
            (vec![("MAX_IN_FLIGHT", "0")], "MAX_IN_FLIGHT"),
            (vec![("CONSUMER_ID", "a b")], "CONSUMER_ID"),
        ] {
            assert_eq!(parse(&extra).unwrap_err().var(), var, "{extra:?}");
        }
    }
}

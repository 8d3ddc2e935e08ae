//! Kafka's variables on top of the common contract (reference §2.1), with the original's
//! defects fixed: KEDA's `SASL=none` and `TLS=disable|true|false` are accepted, values from
//! secrets are trimmed, and a `CA` is used to verify the broker (`UNSAFE_SSL=true` is the only
//! way to skip verification).

use connector_core::config::{ConfigError, Env, Secret, Settings, Vars};

/// Prefix of variables passed through to librdkafka: `KAFKA_PROPERTY_FETCH_MAX_BYTES=1048576`
/// sets `fetch.max.bytes` (lower-cased, `_` → `.`).
pub const PROPERTY_PREFIX: &str = "KAFKA_PROPERTY_";

/// Header carrying the record key to the function (proposed in fission/fission#2102).
pub const DEFAULT_KEY_HEADER: &str = "X-Fission-Mqtrigger-MessageKey";

/// SASL mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sasl {
    /// No SASL.
    None,
    /// SASL/PLAIN.
    Plain,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// SCRAM-SHA-512.
    ScramSha512,
}

/// Everything the Kafka connector reads besides the common variables.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// `BOOTSTRAP_SERVERS` (or the deprecated `BROKER_LIST`), entries trimmed.
    pub brokers: Vec<String>,
    /// `CONSUMER_GROUP`.
    pub group: String,
    /// `TOPIC`.
    pub topic: String,
    /// `OFFSET_RESET_POLICY`: `earliest` or `latest`.
    pub offset_reset: &'static str,
    /// `SASL` with `USERNAME`/`PASSWORD`.
    pub sasl: Sasl,
    /// `USERNAME`.
    pub username: Option<String>,
    /// `PASSWORD`.
    pub password: Option<Secret>,
    /// `TLS`.
    pub tls: bool,
    /// `CA` (PEM text).
    pub ca: Option<String>,
    /// `CERT` (PEM text).
    pub cert: Option<String>,
    /// `KEY` (PEM text).
    pub key: Option<Secret>,
    /// `KEY_PASSWORD`.
    pub key_password: Option<Secret>,
    /// `UNSAFE_SSL=true`: do not verify the broker's certificate.
    pub unsafe_ssl: bool,
    /// `MAX_IN_FLIGHT`: records held at once across partitions.
    pub max_in_flight: usize,
    /// `PARTITION_CONCURRENCY`: 1 = each partition strictly in order (default); k > 1 = up to
    /// k records of a partition at once, unordered.
    pub partition_concurrency: usize,
    /// `MESSAGE_KEY_HEADER`: header that carries a UTF-8 record key; `None` = not sent.
    pub key_header: Option<String>,
    /// `KAFKA_PROPERTY_*` pass-through, as librdkafka (name, value).
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Parses and validates.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let list = |raw: String| -> Vec<String> {
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (var, brokers) = match (
            vars.optional_trimmed("BOOTSTRAP_SERVERS"),
            vars.optional_trimmed("BROKER_LIST"),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::conflict(
                    "BOOTSTRAP_SERVERS",
                    "cannot be combined with BROKER_LIST (deprecated; KEDA's brokerList): set only one",
                ));
            }
            (Some(b), None) => ("BOOTSTRAP_SERVERS", list(b)),
            (None, Some(b)) => ("BROKER_LIST", list(b)),
            (None, None) => return Err(ConfigError::missing("BOOTSTRAP_SERVERS")),
        };
        if brokers.is_empty() {
            return Err(ConfigError::missing("BOOTSTRAP_SERVERS"));
        }
        // An entry that can never be dialled (a scheme, spaces or `;` inside, a port that is no
        // number) made the original exit at start ("run out of available brokers"); here it would
        // only leave the connector never ready, so it is refused, naming the variable. A host
        // without a port is librdkafka's 9092.
        for entry in &brokers {
            let port_ok = entry
                .rsplit_once(':')
                .is_none_or(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if entry.contains("://")
                || entry.contains(char::is_whitespace)
                || entry.contains(';')
                || !port_ok
            {
                return Err(ConfigError::invalid(
                    var,
                    "comma-separated host:port entries such as kafka-0:9092,kafka-1:9092",
                    entry,
                ));
            }
        }
        // Verbatim, as the original: a group name is an identity, and " grp" is not "grp" to
        // the broker (trimming would join another group and lose the committed offsets).
        let group = vars
            .optional("CONSUMER_GROUP")
            .ok_or_else(|| ConfigError::missing("CONSUMER_GROUP"))?;
        let offset_reset = vars.choice(
            "OFFSET_RESET_POLICY",
            "latest",
            &[("earliest", "earliest"), ("latest", "latest")],
        )?;
        let sasl = vars.choice(
            "SASL",
            Sasl::None,
            &[
                ("none", Sasl::None),
                ("plaintext", Sasl::Plain),
                ("scram_sha256", Sasl::ScramSha256),
                ("scram_sha512", Sasl::ScramSha512),
            ],
        )?;
        let username = vars.optional_trimmed("USERNAME");
        let password = vars.optional_trimmed("PASSWORD").map(Secret::new);
        if sasl != Sasl::None {
            if username.is_none() {
                return Err(ConfigError::missing("USERNAME"));
            }
            if password.is_none() {
                return Err(ConfigError::missing("PASSWORD"));
            }
        }
        // The original turned TLS on for exactly `enable` and left it off for anything else
        // (`disable`, `disabled`, `no`, ...); `true` is KEDA's spelling of on and is on here.
        let tls = vars
            .optional_trimmed("TLS")
            .is_some_and(|v| v.eq_ignore_ascii_case("enable") || v.eq_ignore_ascii_case("true"));
        let pem = |var: &str, secret: bool| -> Result<Option<String>, ConfigError> {
            match vars.optional_trimmed(var) {
                None => Ok(None),
                Some(v) if v.contains("-----BEGIN ") => Ok(Some(v)),
                Some(v) if secret => {
                    let _ = v;
                    Err(ConfigError::invalid_secret(
                        var,
                        "PEM text (-----BEGIN ...)",
                    ))
                }
                Some(v) => Err(ConfigError::invalid(var, "PEM text (-----BEGIN ...)", &v)),
            }
        };
        let (ca, cert, key) = if tls {
            (pem("CA", false)?, pem("CERT", false)?, pem("KEY", true)?)
        } else {
            (None, None, None)
        };
        if cert.is_some() != key.is_some() {
            return Err(ConfigError::conflict(
                "CERT",
                "CERT and KEY must be given together",
            ));
        }
        let max_in_flight = vars.int_in_range("MAX_IN_FLIGHT", 100, 1, 100_000)? as usize;
        let partition_concurrency =
            vars.int_in_range("PARTITION_CONCURRENCY", 1, 1, 100_000)? as usize;
        let key_header = match vars.optional_trimmed("MESSAGE_KEY_HEADER") {
            None => Some(DEFAULT_KEY_HEADER.to_owned()),
            Some(v) if v.eq_ignore_ascii_case("off") => None,
            Some(v) => {
                if http::HeaderName::from_bytes(v.as_bytes()).is_err() {
                    return Err(ConfigError::invalid(
                        "MESSAGE_KEY_HEADER",
                        "an HTTP header name, or off",
                        &v,
                    ));
                }
                Some(v)
            }
        };
        let properties = vars
            .with_prefix(PROPERTY_PREFIX)
            .into_iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| {
                (
                    k[PROPERTY_PREFIX.len()..]
                        .to_ascii_lowercase()
                        .replace('_', "."),
                    v,
                )
            })
            .collect();
        Ok(Self {
            brokers,
            group,
            topic: settings.common.topic.clone(),
            offset_reset,
            sasl,
            username,
            password,
            tls,
            ca,
            cert,
            key: key.map(Secret::new),
            key_password: vars.optional("KEY_PASSWORD").map(Secret::new),
            unsafe_ssl: vars.bool("UNSAFE_SSL", false)?,
            max_in_flight,
            partition_concurrency,
            key_header,
            properties,
        })
    }

    /// librdkafka properties shared by the consumer and the producer (connection and security).
    pub fn client_properties(&self) -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> =
            vec![("bootstrap.servers".into(), self.brokers.join(","))];
        let protocol = match (self.tls, self.sasl != Sasl::None) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        p.push(("security.protocol".into(), protocol.into()));
        let mechanism = match self.sasl {
            Sasl::None => None,
            Sasl::Plain => Some("PLAIN"),
            Sasl::ScramSha256 => Some("SCRAM-SHA-256"),
            Sasl::ScramSha512 => Some("SCRAM-SHA-512"),
        };
        if let Some(m) = mechanism {
            p.push(("sasl.mechanisms".into(), m.into()));
            p.push((
                "sasl.username".into(),
                self.username.clone().unwrap_or_default(),
            ));
            p.push((
                "sasl.password".into(),
                self.password
                    .as_ref()
                    .map(|s| s.expose().to_owned())
                    .unwrap_or_default(),
            ));
        }
        if self.tls {
            if let Some(ca) = &self.ca {
                p.push(("ssl.ca.pem".into(), ca.clone()));
            }
            if let Some(cert) = &self.cert {
                p.push(("ssl.certificate.pem".into(), cert.clone()));
            }
            if let Some(key) = &self.key {
                p.push(("ssl.key.pem".into(), key.expose().to_owned()));
            }
            if let Some(pw) = &self.key_password {
                p.push(("ssl.key.password".into(), pw.expose().to_owned()));
            }
            if self.unsafe_ssl {
                p.push(("enable.ssl.certificate.verification".into(), "false".into()));
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[(&str, &str)]) -> Result<KafkaConfig, ConfigError> {
        let mut env = vec![
            ("TOPIC", "t"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
            ("BOOTSTRAP_SERVERS", " a:9092 , b:9092,"),
            ("CONSUMER_GROUP", "g"),
        ];
        env.extend_from_slice(extra);
        let settings = Settings::from_env(&env)?;
        KafkaConfig::from_env(&env, &settings)
    }

    fn prop(c: &KafkaConfig, name: &str) -> Option<String> {
        c.client_properties()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.brokers, ["a:9092", "b:9092"]);
        assert_eq!(
            (c.offset_reset, c.sasl, c.tls),
            ("latest", Sasl::None, false)
        );
        assert_eq!((c.max_in_flight, c.partition_concurrency), (100, 1));
        assert_eq!(c.key_header.as_deref(), Some(DEFAULT_KEY_HEADER));
        assert_eq!(prop(&c, "security.protocol").as_deref(), Some("plaintext"));
    }

    #[test]
    fn keda_values_and_trimming() {
        let c = parse(&[
            ("SASL", "scram_sha512\n"),
            ("USERNAME", "u "),
            ("PASSWORD", "p\n"),
            ("TLS", "enable"),
            ("OFFSET_RESET_POLICY", "earliest"),
        ])
        .unwrap();
        assert_eq!(c.sasl, Sasl::ScramSha512);
        assert_eq!(prop(&c, "security.protocol").as_deref(), Some("sasl_ssl"));
        assert_eq!(
            prop(&c, "sasl.mechanisms").as_deref(),
            Some("SCRAM-SHA-512")
        );
        assert_eq!(prop(&c, "sasl.password").as_deref(), Some("p"));
        assert_eq!(parse(&[("SASL", "none")]).unwrap().sasl, Sasl::None);
        assert!(!parse(&[("TLS", "disable")]).unwrap().tls);
        assert!(parse(&[("TLS", "true")]).unwrap().tls);
        for off in ["disabled", "no", "off", "0", "yes please"] {
            assert!(!parse(&[("TLS", off)]).unwrap().tls, "{off}");
        }
        assert_eq!(
            parse(&[("CONSUMER_GROUP", " grp")]).unwrap().group,
            " grp",
            "the group name is used verbatim"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        for (extra, var) in [
            (vec![("BROKER_LIST", "x:1")], "BOOTSTRAP_SERVERS"),
            (vec![("BOOTSTRAP_SERVERS", " , ")], "BOOTSTRAP_SERVERS"),
            (
                vec![("BOOTSTRAP_SERVERS", "SSL://k:9093")],
                "BOOTSTRAP_SERVERS",
            ),
            (
                vec![("BOOTSTRAP_SERVERS", "a:9092 b:9092")],
                "BOOTSTRAP_SERVERS",
            ),
            (
                vec![("BOOTSTRAP_SERVERS", "a:9092;b:9092")],
                "BOOTSTRAP_SERVERS",
            ),
            (
                vec![("BOOTSTRAP_SERVERS", "a:http9092")],
                "BOOTSTRAP_SERVERS",
            ),
            (vec![("CONSUMER_GROUP", "")], "CONSUMER_GROUP"),
            (
                vec![("OFFSET_RESET_POLICY", "oldest")],
                "OFFSET_RESET_POLICY",
            ),
            (vec![("SASL", "gssapi")], "SASL"),
            (vec![("SASL", "plaintext")], "USERNAME"),
            (vec![("SASL", "plaintext"), ("USERNAME", "u")], "PASSWORD"),
            (vec![("TLS", "enable"), ("CA", "not pem")], "CA"),
            (
                vec![("TLS", "enable"), ("KEY", "-----BEGIN PRIVATE KEY-----")],
                "CERT",
            ),
            (vec![("MAX_IN_FLIGHT", "0")], "MAX_IN_FLIGHT"),
            (
                vec![("PARTITION_CONCURRENCY", "x")],
                "PARTITION_CONCURRENCY",
            ),
            (
                vec![("MESSAGE_KEY_HEADER", "bad header")],
                "MESSAGE_KEY_HEADER",
            ),
        ] {
            let e = parse(&extra).unwrap_err();
            assert_eq!(e.var(), var, "{extra:?}: {e}");
        }
        let e = parse(&[
            ("TLS", "enable"),
            ("KEY", "s3cret-key-bytes"),
            ("CERT", "-----BEGIN C"),
        ])
        .unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
    }

    #[test]
    fn broker_list_fallback_and_passthrough() {
        let mut env = vec![
            ("TOPIC", "t"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
            ("BROKER_LIST", "old:9092"),
            ("CONSUMER_GROUP", "g"),
        ];
        env.push(("KAFKA_PROPERTY_FETCH_MAX_BYTES", "1048576"));
        let s = Settings::from_env(&env).unwrap();
        let c = KafkaConfig::from_env(&env, &s).unwrap();
        assert_eq!(c.brokers, ["old:9092"]);
        assert_eq!(
            c.properties,
            [("fetch.max.bytes".to_owned(), "1048576".to_owned())]
        );
    }
}

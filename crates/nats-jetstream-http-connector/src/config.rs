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
        let (servers, url_auth) = parse_servers(vars.optional_trimmed("NATS_SERVER").as_deref())?;
        // Required by the original too (nats.go: "consumer name is required").
        let consumer = vars
            .optional_trimmed("CONSUMER")
            .ok_or_else(|| ConfigError::missing("CONSUMER"))?;
        if consumer.contains(['.', '*', '>', ' ']) {
            return Err(ConfigError::invalid(
                "CONSUMER",
                "a durable name without '.', '*', '>' or spaces",
                &consumer,
            ));
        }
        // `0` left the ack wait to the server (30 s) in the original; sub-second values were
        // taken as given.
        let ack_wait = match vars.duration("ACKWAIT", Duration::from_secs(30))? {
            d if d.is_zero() => Duration::from_secs(30),
            d => d,
        };
        let user = vars.optional_trimmed("NATS_USERNAME");
        let password = vars.optional_trimmed("NATS_PASSWORD").map(Secret::new);
        let mut token = vars.optional_trimmed("NATS_TOKEN").map(Secret::new);
        let user_password = match (user, password) {
            (Some(u), Some(p)) => Some((u, p)),
            // nats.go authenticated with what the server URL carries (the original's only way
            // to authenticate); async-nats ignores it, so it is passed on explicitly.
            (None, None) => match url_auth {
                Some(UrlAuth::UserPassword(u, p)) => Some((u, p)),
                Some(UrlAuth::Token(t)) => {
                    token.get_or_insert(t);
                    None
                }
                None => None,
            },
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
            servers,
            consumer,
            stream: vars.optional_trimmed("STREAM"),
            subject: settings.common.topic.clone(),
            ack_wait,
            concurrent: vars.int_in_range("CONCURRENT", 1, 1, 10_000)? as usize,
            user_password,
            token,
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

/// Credentials carried by a server URL: `user:password@` or a lone `token@` (nats.go's reading).
#[derive(Debug)]
enum UrlAuth {
    UserPassword(String, Secret),
    Token(Secret),
}

/// `NATS_SERVER` as nats.go's `Connect` reads it: comma-separated URLs, each trimmed, empty
/// entries skipped (none left = the default `nats://127.0.0.1:4222`), no scheme = `nats://`,
/// `tcp://` = `nats://`; credentials from the first URL that has some.
fn parse_servers(value: Option<&str>) -> Result<(Secret, Option<UrlAuth>), ConfigError> {
    let bad = || {
        ConfigError::invalid_secret(
            "NATS_SERVER",
            "nats://host:port (or tls://), comma-separated for several",
        )
    };
    let mut servers = Vec::new();
    let mut auth = None;
    for entry in value.unwrap_or_default().split(',').map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        let entry = match entry.get(..6) {
            Some(scheme) if scheme.eq_ignore_ascii_case("tcp://") => {
                format!("nats://{}", &entry[6..])
            }
            _ => entry.to_owned(),
        };
        let addr = entry.parse::<async_nats::ServerAddr>().map_err(|_| bad())?;
        if addr.is_websocket() {
            return Err(bad());
        }
        if auth.is_none() && addr.has_user_pass() {
            let url = addr.clone().into_inner();
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8()
                    .map(|d| d.into_owned())
                    .map_err(|_| bad())
            };
            let user = decode(url.username())?;
            // `user:@host` is a user with an empty password to nats.go, not a token; the
            // parsed URL cannot tell the two apart, the text can.
            let colon = entry
                .split_once("://")
                .map_or(entry.as_str(), |(_, rest)| rest)
                .rsplit_once('@')
                .is_some_and(|(info, _)| info.contains(':'));
            auth = Some(match url.password() {
                Some(p) => UrlAuth::UserPassword(user, Secret::new(decode(p)?)),
                None if colon => UrlAuth::UserPassword(user, Secret::new(String::new())),
                None => UrlAuth::Token(Secret::new(user)),
            });
        }
        servers.push(entry);
    }
    if servers.is_empty() {
        servers.push("nats://127.0.0.1:4222".to_owned());
    }
    Ok((Secret::new(servers.join(",")), auth))
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
            (vec![("ACKWAIT", "-1s")], "ACKWAIT"),
            (vec![("NATS_SERVER", "ws://127.0.0.1:4222")], "NATS_SERVER"),
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

    /// NATS_SERVER forms as nats.go read them, and the credentials they carry.
    #[test]
    fn server_forms_as_the_original() {
        for (value, servers) in [
            (" nats://a:4222\n", "nats://a:4222"),
            ("a:4222, b:4222", "a:4222,b:4222"),
            ("nats://a:4222,", "nats://a:4222"),
            (",", "nats://127.0.0.1:4222"),
            ("TCP://a:4222", "nats://a:4222"),
        ] {
            let c = parse(&[("NATS_SERVER", value)]).unwrap();
            assert_eq!(c.servers.expose(), servers, "{value:?}");
        }
        let c = parse(&[("NATS_SERVER", "nats://al%40ice:p%3Ass@a:4222")]).unwrap();
        let (user, password) = c.user_password.clone().unwrap();
        assert_eq!((user.as_str(), password.expose()), ("al@ice", "p:ss"));
        assert!(!format!("{c:?}").contains("p:ss"));
        let c = parse(&[("NATS_SERVER", "nats://s3cret-token@a:4222")]).unwrap();
        assert_eq!(c.token.unwrap().expose(), "s3cret-token");
        let c = parse(&[("NATS_SERVER", "nats://alice:@a:4222")]).unwrap();
        assert_eq!(c.user_password.unwrap().0, "alice");
        // Variables given explicitly win over the URL.
        let c = parse(&[
            ("NATS_SERVER", "nats://x:y@a:4222"),
            ("NATS_USERNAME", "u"),
            ("NATS_PASSWORD", "p"),
        ])
        .unwrap();
        assert_eq!(c.user_password.unwrap().0, "u");
        assert_eq!(
            parse(&[("ACKWAIT", "0")]).unwrap().ack_wait,
            Duration::from_secs(30)
        );
        assert_eq!(
            parse(&[("ACKWAIT", "500ms")]).unwrap().ack_wait,
            Duration::from_millis(500)
        );
    }
}

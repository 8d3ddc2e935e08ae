//! RabbitMQ's variables on top of the common contract (reference §2.2).

use connector_core::config::{ConfigError, Env, Settings, Vars};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};

/// What the RabbitMQ connector reads besides the common variables.
#[derive(Clone)]
pub struct RabbitConfig {
    /// `HOST`, parsed the way the original's AMQP library reads it (holds the password: never
    /// logged or echoed).
    pub uri: AMQPUri,
    /// TLS material named by `HOST`'s `cacertfile`, `certfile` and `keyfile` parameters.
    pub tls: OwnedTLSConfig,
    /// The source queue, `TOPIC`.
    pub queue: String,
    /// `CONCURRENT`: calls at once; twice that is the prefetch (`basic.qos`), up to its limit
    /// of 65535.
    pub concurrent: u32,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("uri", &"<redacted>")
            .field("vhost", &self.uri.vhost)
            .field("queue", &self.queue)
            .field("concurrent", &self.concurrent)
            .finish()
    }
}

impl RabbitConfig {
    /// The prefetch count for `basic.qos`: `CONCURRENT` calls plus as many outcomes waiting for
    /// their confirm (the dispatcher's write-ahead), within AMQP's 16 bits.
    pub fn prefetch(&self) -> u16 {
        u16::try_from(self.concurrent.saturating_mul(2)).unwrap_or(u16::MAX)
    }
}

/// The frame size proposed to the broker unless `HOST` names one.
pub const FRAME_MAX: u32 = 32_768;

const HOST_EXPECTED: &str =
    "an AMQP URI such as amqp://user:password@host:5672/vhost (amqp:// or amqps://)";

impl RabbitConfig {
    /// Parses and validates; `settings` carries the already-parsed common variables.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        // The original refused exactly `true` and ignored every other value.
        if vars
            .optional_trimmed("INCLUDE_UNACKED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Err(ConfigError::conflict(
                "INCLUDE_UNACKED",
                "only amqp protocol host is supported (true selects the KEDA scaler's HTTP API mode)",
            ));
        }
        let host = vars.required("HOST")?;
        let (mut uri, files) = parse_amqp_uri(host.trim()).map_err(|what| {
            ConfigError::invalid_secret("HOST", format!("{HOST_EXPECTED}; {what}"))
        })?;
        // lapin keeps 32 frames of send and of receive buffer, zero-filled, so RabbitMQ's default
        // 128 KiB frame_max costs 8 MiB resident per connection; 32 KiB costs 2 MiB (idle RSS
        // 14.2 -> 8.5 MB in `cargo xtask bench`). Larger messages simply span more frames.
        // A frame_max in HOST is kept.
        uri.query.frame_max.get_or_insert(FRAME_MAX);
        // amqp091-go proposes a 10 s heartbeat unless HOST names one; a dead peer is noticed
        // as soon as with the original.
        uri.query.heartbeat.get_or_insert(10);
        // The TLS files only matter to amqps, as in the original (which never opened them for
        // amqp://).
        let tls = if uri.scheme == AMQPScheme::AMQPS {
            files.load()?
        } else {
            OwnedTLSConfig::default()
        };
        // The original took any positive number; AMQP's prefetch stops at 65535 (see
        // `prefetch`), the in-flight bound does not.
        let concurrent = vars.int_in_range("CONCURRENT", 10, 1, 1_000_000)? as u32;
        Ok(Self {
            uri,
            tls,
            queue: settings.common.topic.clone(),
            concurrent,
        })
    }
}

/// The TLS files an `amqps` URI names in its query (`cacertfile`, `certfile`, `keyfile`).
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsFiles {
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
}

impl TlsFiles {
    fn load(&self) -> Result<OwnedTLSConfig, ConfigError> {
        let read = |param: &str, path: &str| {
            std::fs::read(path).map_err(|e| {
                ConfigError::invalid(
                    "HOST",
                    format!("a readable file in its {param} parameter ({e})"),
                    path,
                )
            })
        };
        let cert_chain = match &self.ca {
            Some(path) => Some(String::from_utf8(read("cacertfile", path)?).map_err(|_| {
                ConfigError::invalid("HOST", "a PEM file in its cacertfile parameter", path)
            })?),
            None => None,
        };
        let identity = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read("certfile", cert)?,
                key: read("keyfile", key)?,
            }),
            // Half a pair: the original sent no client certificate; neither do we.
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }
}

/// Reads an AMQP URI with the rules of the original's AMQP library (amqp091-go's `ParseURI`),
/// not lapin's, because users' `HOST` values were written for the original:
/// - an empty path and a lone `/` both mean the default vhost `/`; `/%2f` is `/`, `/name` is
///   `name` (lapin reads a lone `/` as the empty vhost, which RabbitMQ refuses);
/// - the scheme is case-insensitive, the port defaults to 5672 (`amqp`) or 5671 (`amqps`),
///   missing user or password default to `guest`, an IP-literal host is used as given
///   (lapin falls back to `localhost` for anything that is not a domain name);
/// - query parameters: `heartbeat` (seconds), `connection_timeout` (ms), `channel_max`,
///   `frame_max`, `auth_mechanism`, and the TLS files `cacertfile`, `certfile`, `keyfile`.
///
/// The error says what is wrong without quoting the URI (it holds the password).
fn parse_amqp_uri(s: &str) -> Result<(AMQPUri, TlsFiles), String> {
    if s.contains(char::is_whitespace) {
        return Err("it must not contain whitespace".into());
    }
    let url = url::Url::parse(s).map_err(|e| format!("it is not a URI ({e})"))?;
    let scheme = match url.scheme() {
        "amqp" => AMQPScheme::AMQP,
        "amqps" => AMQPScheme::AMQPS,
        _ => return Err("the scheme must be amqp or amqps".into()),
    };
    if url.cannot_be_a_base() {
        return Err("it must start with amqp:// or amqps://".into());
    }
    let decode = |part: &str, what: &str| {
        percent_decode(part).ok_or_else(|| format!("its {what} is not valid percent-encoded UTF-8"))
    };
    let host = match url.host_str() {
        None | Some("") => "localhost".to_owned(),
        // IPv6 literals come bracketed; the socket address wants them bare.
        Some(h) => decode(h.trim_start_matches('[').trim_end_matches(']'), "host")?,
    };
    let port = url.port().unwrap_or(match scheme {
        AMQPScheme::AMQP => 5672,
        AMQPScheme::AMQPS => 5671,
    });
    // amqp091-go sets the user whenever the URI has user information (even an empty one) and
    // keeps the default password unless one is given.
    let has_userinfo = s
        .split_once("://")
        .map(|(_, rest)| {
            rest.split(['/', '?', '#'])
                .next()
                .unwrap_or("")
                .contains('@')
        })
        .unwrap_or(false);
    let username = if has_userinfo {
        decode(url.username(), "user name")?
    } else {
        "guest".to_owned()
    };
    let password = match url.password() {
        Some(p) => decode(p, "password")?,
        None => "guest".to_owned(),
    };
    let path = url.path();
    let vhost = if path.len() <= 1 {
        "/".to_owned()
    } else {
        decode(&path[1..], "vhost")?
    };
    let mut query = AMQPQueryString::default();
    let mut files = TlsFiles::default();
    for (key, value) in url.query_pairs() {
        // Like Go's `url.Values.Get`, the first occurrence of a parameter counts.
        let bad = |what: &str| format!("its {key} parameter must be {what}");
        match key.as_ref() {
            "heartbeat" if query.heartbeat.is_none() => {
                query.heartbeat = Some(value.parse().map_err(|_| bad("a number of seconds"))?)
            }
            "connection_timeout" if query.connection_timeout.is_none() => {
                query.connection_timeout =
                    Some(value.parse().map_err(|_| bad("a number of milliseconds"))?)
            }
            "channel_max" if query.channel_max.is_none() => {
                query.channel_max = Some(value.parse().map_err(|_| bad("a number up to 65535"))?)
            }
            "frame_max" if query.frame_max.is_none() => {
                query.frame_max = Some(value.parse().map_err(|_| bad("a number of bytes"))?)
            }
            "auth_mechanism" if query.auth_mechanism.is_none() => {
                query.auth_mechanism = Some(
                    value
                        .parse()
                        .map_err(|_| bad("PLAIN, AMQPLAIN or EXTERNAL"))?,
                )
            }
            "cacertfile" if files.ca.is_none() => files.ca = Some(value.into_owned()),
            "certfile" if files.cert.is_none() => files.cert = Some(value.into_owned()),
            "keyfile" if files.key.is_none() => files.key = Some(value.into_owned()),
            _ => {}
        }
    }
    // Go's url.Values keeps empty values; an empty file parameter names no file.
    for f in [&mut files.ca, &mut files.cert, &mut files.key] {
        if f.as_deref() == Some("") {
            *f = None;
        }
    }
    let uri = AMQPUri {
        scheme,
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo { username, password },
            host,
            port,
        },
        vhost,
        query,
    };
    Ok((uri, files))
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(std::borrow::Cow::into_owned)
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

    fn uri(host: &str) -> AMQPUri {
        parse(&[("HOST", host)]).unwrap().uri
    }

    #[test]
    fn defaults_and_validation() {
        let c = parse(&[]).unwrap();
        assert_eq!((c.queue.as_str(), c.concurrent), ("q", 10));
        assert!(!format!("{c:?}").contains("guest"));
        assert_eq!(c.uri.vhost, "/");
        assert_eq!(c.uri.query.frame_max, Some(FRAME_MAX));
        let own = uri("amqp://h/v?heartbeat=5&frame_max=8192");
        assert_eq!(
            (own.query.heartbeat, own.query.frame_max),
            (Some(5), Some(8192))
        );
        let three = parse(&[("CONCURRENT", " 3 ")]).unwrap();
        assert_eq!((three.concurrent, three.prefetch()), (3, 6));
        let many = parse(&[("CONCURRENT", "100000")]).unwrap();
        assert_eq!((many.concurrent, many.prefetch()), (100_000, u16::MAX));
        for bad in ["0", "-1", "ten", "2000000"] {
            assert_eq!(
                parse(&[("CONCURRENT", bad)]).unwrap_err().var(),
                "CONCURRENT"
            );
        }
        assert_eq!(
            parse(&[("INCLUDE_UNACKED", "true")]).unwrap_err().var(),
            "INCLUDE_UNACKED"
        );
        for bad in [
            "http://guest:s3cret@h/",
            "amqp://guest:s3cret@h/?heartbeat=x",
            "amqp://guest:s3cret@h:99999/",
            "amqp://guest:s3cret@h/a b",
            "amqps://guest:s3cret@h/?certfile=/nonexistent&keyfile=/nonexistent",
            "amqps://guest:s3cret@h/?cacertfile=/nonexistent",
        ] {
            let e = parse(&[("HOST", bad)]).unwrap_err();
            assert_eq!(e.var(), "HOST", "{bad}");
            assert!(!e.to_string().contains("s3cret"), "{e}");
        }
        assert_eq!(
            parse(&[("HOST", "")]).unwrap_err().to_string(),
            "environment variable not found: HOST"
        );
    }

    /// The vhost, host, port and user each form of `HOST` means to the original's AMQP library
    /// (amqp091-go `ParseURI`).
    #[test]
    fn host_forms_mean_what_they_meant_to_the_original() {
        let cases: &[(&str, &str, &str, u16, &str, &str)] = &[
            ("amqp://u:p@rabbit:5672/", "/", "rabbit", 5672, "u", "p"),
            ("amqp://u:p@rabbit:5672", "/", "rabbit", 5672, "u", "p"),
            ("amqp://u:p@rabbit:5672/%2f", "/", "rabbit", 5672, "u", "p"),
            ("amqp://u:p@rabbit:5672/%2F", "/", "rabbit", 5672, "u", "p"),
            (
                "amqp://u:p@rabbit/orders",
                "orders",
                "rabbit",
                5672,
                "u",
                "p",
            ),
            ("amqp://u:p@rabbit/a%2Fb", "a/b", "rabbit", 5672, "u", "p"),
            ("amqp://u:p@rabbit//", "/", "rabbit", 5672, "u", "p"),
            ("amqps://u:p@rabbit/", "/", "rabbit", 5671, "u", "p"),
            ("AMQP://u:p@Rabbit/", "/", "Rabbit", 5672, "u", "p"),
            ("amqp://rabbit/", "/", "rabbit", 5672, "guest", "guest"),
            ("amqp://u@rabbit/", "/", "rabbit", 5672, "u", "guest"),
            (
                "amqp://u%40x:p%3Aw%2F@rabbit/",
                "/",
                "rabbit",
                5672,
                "u@x",
                "p:w/",
            ),
            ("amqp://u:p@10.1.2.3:5673/", "/", "10.1.2.3", 5673, "u", "p"),
            ("amqp://u:p@[::1]:5672/", "/", "::1", 5672, "u", "p"),
            ("amqp://", "/", "localhost", 5672, "guest", "guest"),
        ];
        for (host, vhost, h, port, user, password) in cases {
            let u = uri(host);
            assert_eq!(u.vhost, *vhost, "{host}");
            assert_eq!(u.authority.host, *h, "{host}");
            assert_eq!(u.authority.port, *port, "{host}");
            assert_eq!(u.authority.userinfo.username, *user, "{host}");
            assert_eq!(u.authority.userinfo.password, *password, "{host}");
        }
        // A value from a Secret with a trailing newline is trimmed.
        assert_eq!(uri("amqp://u:p@rabbit:5672/\n").vhost, "/");
        assert!(parse(&[("HOST", "amqp://u:p@rabbit/?cacertfile=")]).is_ok());
        // Files named for a plain amqp:// connection are never opened, as in the original.
        assert!(parse(&[("HOST", "amqp://u:p@rabbit/?cacertfile=/nonexistent")]).is_ok());
        for v in ["false", "1", "yes", "junk"] {
            assert!(parse(&[("INCLUDE_UNACKED", v)]).is_ok(), "{v}");
        }
        assert_eq!(uri("amqp://u:p@rabbit/").query.heartbeat, Some(10));
    }
}

//! The environment contract: the original's common variables plus our additive knobs, parsed
//! once at start into typed settings.
//!
//! Every variable is documented in docs/configuration.md; keep the two in step.

mod delivery;
mod env;
mod error;
mod vars;

pub use delivery::{BreakerSettings, DeliverySettings};
pub use env::{Env, ProcessEnv};
pub use error::ConfigError;
pub use vars::{Vars, parse_go_duration, parse_go_int};

use http::{HeaderValue, Uri};
use std::net::SocketAddr;
use std::time::Duration;

/// The default of `SOURCE_NAME`, as in the original.
pub const DEFAULT_SOURCE_NAME: &str = "KEDAConnector";

/// The variables every original connector reads (`common/util.go` upstream).
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// `TOPIC`: the source queue/topic/stream/list.
    pub topic: String,
    /// `HTTP_ENDPOINT`, exactly as given (it is echoed in error documents).
    pub http_endpoint: String,
    /// `HTTP_ENDPOINT`, parsed.
    pub endpoint_uri: Uri,
    /// `MAX_RETRIES` as given (after trimming); may be negative.
    pub max_retries: i64,
    /// `CONTENT_TYPE`: the request `Content-Type`, also used by some brokers' outputs.
    pub content_type: String,
    /// `RESPONSE_TOPIC`; `None` means responses are discarded.
    pub response_topic: Option<String>,
    /// `ERROR_TOPIC`; `None` means error documents are only logged.
    pub error_topic: Option<String>,
    /// `SOURCE_NAME` (default `KEDAConnector`).
    pub source_name: String,
}

impl CommonConfig {
    /// The source and the destinations that are set, each with the role a check reports it
    /// under and the variable it came from: `("source", "TOPIC", …)`, then `("responses",
    /// "RESPONSE_TOPIC", …)` and `("errors", "ERROR_TOPIC", …)` when set.
    pub fn named_topics(&self) -> Vec<(&'static str, &'static str, &str)> {
        let mut named = vec![("source", "TOPIC", self.topic.as_str())];
        if let Some(t) = &self.response_topic {
            named.push(("responses", "RESPONSE_TOPIC", t.as_str()));
        }
        if let Some(t) = &self.error_topic {
            named.push(("errors", "ERROR_TOPIC", t.as_str()));
        }
        named
    }

    /// Total HTTP attempts per message: `MAX_RETRIES + 1`, and 1 when `MAX_RETRIES` is negative
    /// (the original sent no request at all then, a defect).
    pub fn attempts(&self) -> u32 {
        if self.max_retries < 0 {
            1
        } else {
            u32::try_from(self.max_retries)
                .unwrap_or(u32::MAX - 1)
                .saturating_add(1)
        }
    }
}

/// Which failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Every non-2xx status and every transport error (the original's behaviour; default).
    All,
    /// Only 5xx, 429, 408 and transport errors; other statuses fail at once.
    Transient,
}

/// Our HTTP knobs (all new; none existed in the original).
#[derive(Clone)]
pub struct HttpSettings {
    /// `HTTP_TIMEOUT`: limit for one attempt (request and whole response body); `None` = no limit.
    pub timeout: Option<Duration>,
    /// `RETRY_BACKOFF_BASE`: first delay between attempts; doubles each time, with jitter.
    pub backoff_base: Duration,
    /// `RETRY_BACKOFF_MAX`: cap of the exponential delay.
    pub backoff_max: Duration,
    /// `RETRY_ON`: which failures are retried.
    pub retry_on: RetryOn,
    /// `RETRY_AFTER_MAX`: cap on a server's `Retry-After`; zero ignores the header.
    pub retry_after_max: Duration,
    /// `ERROR_DOC_EXTRAS`: append our extra fields to error documents.
    pub error_doc_extras: bool,
    /// `FISSION_INTERNAL_AUTH_SECRET`: sign requests for Fission's internal router listener.
    pub auth_secret: Option<Secret>,
    /// `HTTP_CA_FILE`: CA certificates (PEM) trusted for an https endpoint besides the system's
    /// (for a function behind a private CA).
    pub ca_certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// `HTTP_TLS_INSECURE_SKIP_VERIFY`: accept any certificate from the endpoint. Off by
    /// default; a warning is logged at start when on.
    pub insecure_skip_verify: bool,
    /// Which proxy carries a call (`HTTP_PROXY`/`HTTPS_PROXY`/`NO_PROXY`, Go's rules).
    pub proxy: crate::proxy::ProxyRules,
    /// Credentials for the endpoint (`HTTP_HEADERS`, `HTTP_BEARER_TOKEN_FILE`, mutual TLS,
    /// OAuth2); empty unless one of their variables is set.
    pub auth: crate::endpoint_auth::AuthSettings,
    /// `HTTP_FORMAT=cloudevents`: calls as CloudEvents (binary content mode); `None` = the
    /// original's plain POST.
    pub cloudevents: Option<crate::cloudevents::CloudEventsSettings>,
}

impl std::fmt::Debug for HttpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpSettings")
            .field("timeout", &self.timeout)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("retry_on", &self.retry_on)
            .field("retry_after_max", &self.retry_after_max)
            .field("error_doc_extras", &self.error_doc_extras)
            .field("auth_secret", &self.auth_secret)
            .field("ca_certs", &self.ca_certs.len())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("proxy", &self.proxy)
            .field("auth", &self.auth)
            .field("cloudevents", &self.cloudevents)
            .finish()
    }
}

/// The certificates of the PEM file `path` named by `var`: at least one, all parseable.
pub fn read_ca_file(
    var: &str,
    path: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::pem::PemObject;
    let expected = "a readable PEM file with at least one CA certificate";
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|_| ConfigError::invalid(var, expected, path))?;
    if certs.is_empty() {
        return Err(ConfigError::invalid(var, expected, path));
    }
    Ok(certs)
}

/// A secret value: `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The secret itself; call only where it is used, never to log.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Dispatcher knobs.
#[derive(Debug, Clone, Copy)]
pub struct DispatchSettings {
    /// `DRAIN_TIMEOUT`: after SIGTERM, how long in-flight messages may take to finish.
    pub drain_timeout: Duration,
}

/// `ADMIN_ADDR`: where `/metrics`, `/healthz` and `/readyz` are served; `None` = disabled.
#[derive(Debug, Clone, Copy)]
pub struct AdminSettings {
    /// The listen address.
    pub addr: Option<SocketAddr>,
    /// Whether `ADMIN_ADDR` was set. The default port is a convenience the original never
    /// had (it bound no port), so when it is taken the connector runs without the admin
    /// endpoints; an address the user asked for must be served or the start fails.
    pub explicit: bool,
}

/// `LOG_LEVEL`: minimum level of the JSON logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    Info,
    /// Per-message lines (still without payloads).
    Debug,
    /// Everything, including library internals.
    Trace,
}

impl LogLevel {
    /// Parses `LOG_LEVEL` (`error`, `warn`, `info`, `debug`, `trace`; default `info`).
    pub fn from_vars(vars: &Vars<'_>) -> Result<Self, ConfigError> {
        vars.choice(
            "LOG_LEVEL",
            Self::Info,
            &[
                ("error", Self::Error),
                ("warn", Self::Warn),
                ("info", Self::Info),
                ("debug", Self::Debug),
                ("trace", Self::Trace),
            ],
        )
    }
}

/// Everything `connector-core` reads from the environment.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The original's common variables.
    pub common: CommonConfig,
    /// HTTP invocation knobs.
    pub http: HttpSettings,
    /// Dispatcher knobs.
    pub dispatch: DispatchSettings,
    /// Delivery metadata, caps and back-pressure toward the function.
    pub delivery: DeliverySettings,
    /// Admin endpoint.
    pub admin: AdminSettings,
    /// Log level.
    pub log_level: LogLevel,
    /// OpenTelemetry span export (the standard `OTEL_*` variables).
    pub traces: crate::telemetry::traces::TraceSettings,
    /// Things worth a warning once logging is up (e.g. a negative `MAX_RETRIES`).
    pub warnings: Vec<String>,
}

impl Settings {
    /// Parses everything, checking the required variables in the original's order
    /// (`TOPIC`, `HTTP_ENDPOINT`, `MAX_RETRIES`, `CONTENT_TYPE`) so the first error matches.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let mut warnings = Vec::new();

        let topic = vars.required("TOPIC")?;
        let http_endpoint = vars.required("HTTP_ENDPOINT")?;
        let endpoint_uri = parse_endpoint(&http_endpoint)?;
        let raw_retries = vars.required("MAX_RETRIES")?;
        let max_retries = parse_go_int(raw_retries.trim()).ok_or_else(|| {
            ConfigError::invalid("MAX_RETRIES", "an integer such as 3", &raw_retries)
        })?;
        if max_retries < 0 {
            warnings.push(format!(
                "MAX_RETRIES is {max_retries}; making exactly one attempt per message"
            ));
        }
        let content_type = vars.required("CONTENT_TYPE")?;
        let response_topic = vars.optional("RESPONSE_TOPIC");
        let error_topic = vars.optional("ERROR_TOPIC");
        let source_name = vars
            .optional("SOURCE_NAME")
            .unwrap_or_else(|| DEFAULT_SOURCE_NAME.to_owned());

        // These values travel as HTTP header values; refuse at start what could never be sent,
        // rather than failing every message.
        for (var, value) in [
            ("TOPIC", Some(&topic)),
            ("CONTENT_TYPE", Some(&content_type)),
            ("RESPONSE_TOPIC", response_topic.as_ref()),
            ("ERROR_TOPIC", error_topic.as_ref()),
            ("SOURCE_NAME", Some(&source_name)),
        ] {
            if let Some(v) = value
                && HeaderValue::from_str(v).is_err()
            {
                return Err(ConfigError::invalid(
                    var,
                    "text without control characters (it is sent as an HTTP header)",
                    v,
                ));
            }
        }

        let common = CommonConfig {
            topic,
            http_endpoint,
            endpoint_uri,
            max_retries,
            content_type,
            response_topic,
            error_topic,
            source_name,
        };

        let timeout = vars.duration("HTTP_TIMEOUT", Duration::from_secs(300))?;
        let backoff_base = vars.duration("RETRY_BACKOFF_BASE", Duration::from_millis(100))?;
        let backoff_max = vars.duration("RETRY_BACKOFF_MAX", Duration::from_secs(10))?;
        if backoff_max < backoff_base {
            return Err(ConfigError::conflict(
                "RETRY_BACKOFF_MAX",
                "must not be smaller than RETRY_BACKOFF_BASE",
            ));
        }
        let http = HttpSettings {
            timeout: (!timeout.is_zero()).then_some(timeout),
            backoff_base,
            backoff_max,
            retry_on: vars.choice(
                "RETRY_ON",
                RetryOn::All,
                &[("all", RetryOn::All), ("transient", RetryOn::Transient)],
            )?,
            retry_after_max: vars.duration("RETRY_AFTER_MAX", Duration::from_secs(60))?,
            error_doc_extras: vars.bool("ERROR_DOC_EXTRAS", true)?,
            auth_secret: vars.optional("FISSION_INTERNAL_AUTH_SECRET").map(Secret),
            ca_certs: match vars.optional_trimmed("HTTP_CA_FILE") {
                Some(path) => read_ca_file("HTTP_CA_FILE", &path)?,
                None => Vec::new(),
            },
            insecure_skip_verify: vars.bool("HTTP_TLS_INSECURE_SKIP_VERIFY", false)?,
            proxy: crate::proxy::ProxyRules::from_env(env, &common.endpoint_uri, &mut warnings)?,
            auth: crate::endpoint_auth::AuthSettings::from_vars(&vars)?,
            cloudevents: crate::cloudevents::CloudEventsSettings::from_vars(
                &vars,
                &common.source_name,
                &common.topic,
            )?,
        };
        if http.insecure_skip_verify {
            if !http.ca_certs.is_empty() {
                return Err(ConfigError::conflict(
                    "HTTP_TLS_INSECURE_SKIP_VERIFY",
                    "cannot be combined with HTTP_CA_FILE (give the CA, or skip verification)",
                ));
            }
            warnings.push(
                "HTTP_TLS_INSECURE_SKIP_VERIFY is on: the endpoint's TLS certificate is NOT \
                 verified, so anyone on the network path can read and change requests and \
                 responses; give its CA in HTTP_CA_FILE instead"
                    .to_owned(),
            );
        }

        let dispatch = DispatchSettings {
            drain_timeout: vars.duration("DRAIN_TIMEOUT", Duration::from_secs(25))?,
        };

        let delivery = DeliverySettings::from_vars(&vars)?;

        let admin = AdminSettings {
            explicit: vars.optional_trimmed("ADMIN_ADDR").is_some(),
            addr: match vars.optional_trimmed("ADMIN_ADDR") {
                None => Some(SocketAddr::from(([0, 0, 0, 0], 8080))),
                Some(v) if v.eq_ignore_ascii_case("off") => None,
                Some(v) => Some(v.parse().map_err(|_| {
                    ConfigError::invalid("ADMIN_ADDR", "host:port such as 0.0.0.0:8080, or off", &v)
                })?),
            },
        };

        let log_level = LogLevel::from_vars(&vars)?;
        let traces = crate::telemetry::traces::TraceSettings::from_vars(&vars, &mut warnings);

        Ok(Self {
            common,
            http,
            dispatch,
            delivery,
            admin,
            log_level,
            traces,
            warnings,
        })
    }
}

fn parse_endpoint(raw: &str) -> Result<Uri, ConfigError> {
    const EXPECTED: &str = "an absolute http:// or https:// URL";
    // A URL with user-info may carry a password: never echo it.
    let bad = || {
        if raw.contains('@') {
            ConfigError::invalid_secret("HTTP_ENDPOINT", EXPECTED)
        } else {
            ConfigError::invalid("HTTP_ENDPOINT", EXPECTED, raw)
        }
    };
    let uri: Uri = raw.parse().map_err(|_| bad())?;
    // `http::Uri` takes any text after the host's colon and then has no port, so the call
    // would silently go to port 80; Go refused such a URL (every message failed).
    let host_port = uri
        .authority()
        .map(|a| a.as_str().rsplit_once('@').map_or(a.as_str(), |(_, h)| h))
        .unwrap_or_default();
    let after_host = host_port
        .rsplit_once(']')
        .map_or(host_port, |(_, rest)| rest);
    let bad_port = after_host
        .split_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.parse::<u16>().is_err());
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.authority().is_some() && !bad_port => Ok(uri),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("TOPIC", "in"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:8888/fission-function/fn"),
            ("MAX_RETRIES", "3"),
            ("CONTENT_TYPE", "application/json"),
        ]
    }

    fn with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
        let mut v = base();
        v.extend_from_slice(extra);
        v
    }

    #[test]
    fn defaults() {
        let s = Settings::from_env(&base()).unwrap();
        assert_eq!(s.common.source_name, "KEDAConnector");
        assert_eq!(s.common.response_topic, None);
        assert_eq!(s.common.error_topic, None);
        assert_eq!(s.common.attempts(), 4);
        assert_eq!(s.http.retry_on, RetryOn::All);
        assert_eq!(s.http.timeout, Some(Duration::from_secs(300)));
        assert_eq!(s.dispatch.drain_timeout, Duration::from_secs(25));
        assert_eq!(s.admin.addr, Some("0.0.0.0:8080".parse().unwrap()));
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn required_in_original_order() {
        let e = Settings::from_env(&Vec::<(&str, &str)>::new()).unwrap_err();
        assert_eq!(e.to_string(), "environment variable not found: TOPIC");
        let e = Settings::from_env(&[("TOPIC", "t"), ("HTTP_ENDPOINT", "")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable not found: HTTP_ENDPOINT"
        );
        let mut v = base();
        v.retain(|(k, _)| *k != "CONTENT_TYPE");
        let e = Settings::from_env(&v).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment variable not found: CONTENT_TYPE"
        );
    }

    #[test]
    fn max_retries_forms() {
        for (raw, attempts) in [(" 2 \n", 3), ("0", 1), ("0x2", 3), ("-5", 1)] {
            let s = Settings::from_env(&with(&[("MAX_RETRIES", raw)])).unwrap();
            assert_eq!(s.common.attempts(), attempts, "{raw:?}");
        }
        let s = Settings::from_env(&with(&[("MAX_RETRIES", "-1")])).unwrap();
        assert_eq!(s.warnings.len(), 1);
        let e = Settings::from_env(&with(&[("MAX_RETRIES", "three")])).unwrap_err();
        assert_eq!(e.var(), "MAX_RETRIES");
        assert!(e.to_string().contains("\"three\""), "{e}");
    }

    #[test]
    fn last_duplicate_wins() {
        let s = Settings::from_env(&with(&[("TOPIC", "second")])).unwrap();
        assert_eq!(s.common.topic, "second");
    }

    #[test]
    fn bad_endpoint_is_named_and_secret_userinfo_hidden() {
        let e = Settings::from_env(&with(&[("HTTP_ENDPOINT", "router/fn")])).unwrap_err();
        assert_eq!(e.var(), "HTTP_ENDPOINT");
        let e = Settings::from_env(&with(&[("HTTP_ENDPOINT", "ftp://u:hunter2@h/x")])).unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        // A port that is no port would otherwise mean port 80.
        for bad in [
            "http://h:abc/fn",
            "http://h:99999/fn",
            "http://u:p@[::1]:x/",
        ] {
            let e = Settings::from_env(&with(&[("HTTP_ENDPOINT", bad)])).unwrap_err();
            assert_eq!(e.var(), "HTTP_ENDPOINT", "{bad}");
        }
        for good in [
            "http://h:/fn",
            "http://[::1]:8888/fn",
            "HTTP://Router.Fission/fn",
            "http://u:p@router:8888/fn",
            "http://router-internal.fission:8889/fission-function/ns/fn:alias",
        ] {
            assert!(
                Settings::from_env(&with(&[("HTTP_ENDPOINT", good)])).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn knobs() {
        let s = Settings::from_env(&with(&[
            ("HTTP_TIMEOUT", "0"),
            ("RETRY_ON", "Transient"),
            ("ADMIN_ADDR", "off"),
            ("LOG_LEVEL", "debug"),
            ("ERROR_DOC_EXTRAS", "false"),
        ]))
        .unwrap();
        assert_eq!(s.http.timeout, None);
        assert_eq!(s.http.retry_on, RetryOn::Transient);
        assert_eq!(s.admin.addr, None);
        assert_eq!(s.log_level, LogLevel::Debug);
        assert!(!s.http.error_doc_extras);
        for (var, val) in [
            ("HTTP_TIMEOUT", "10"),
            ("RETRY_ON", "some"),
            ("ADMIN_ADDR", "nowhere"),
            ("LOG_LEVEL", "loud"),
            ("DRAIN_TIMEOUT", "-1s"),
            ("ERROR_DOC_EXTRAS", "maybe"),
        ] {
            let e = Settings::from_env(&with(&[(var, val)])).unwrap_err();
            assert_eq!(e.var(), var);
            assert!(!e.to_string().contains('\n'));
        }
    }

    #[test]
    fn secret_is_not_debug_printed() {
        let s =
            Settings::from_env(&with(&[("FISSION_INTERNAL_AUTH_SECRET", "s3cr3t-value")])).unwrap();
        assert!(!format!("{s:?}").contains("s3cr3t-value"));
        assert_eq!(s.http.auth_secret.unwrap().expose(), "s3cr3t-value");
    }

    #[test]
    fn header_unsafe_values_refused() {
        let e = Settings::from_env(&with(&[("SOURCE_NAME", "a\nb")])).unwrap_err();
        assert_eq!(e.var(), "SOURCE_NAME");
    }
}

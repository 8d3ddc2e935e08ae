//! Pub/Sub's variables on top of the common contract (reference §2.5).
//!
//! Credentials, first match wins:
//! 1. `PUBSUB_EMULATOR_HOST` → the emulator at that `host:port`, no credentials.
//! 2. `GOOGLE_APPLICATION_CREDENTIALS` → service-account JSON *content* (what Fission puts there,
//!    and what the original read), or, if it does not start with `{`, a file path (Google's
//!    convention).
//! 3. `CREDENTIALS_FROM_ENV` → JSON content (the original), or the *name* of a variable holding
//!    the content or a path (KEDA's meaning), or a path.
//! 4. Otherwise Application Default Credentials (workload identity, metadata server).

use connector_core::config::{ConfigError, Env, Secret, Settings, Vars};

/// Where credentials come from.
#[derive(Debug, Clone)]
pub enum Credentials {
    /// The Pub/Sub emulator at `host:port`, without authentication.
    Emulator(String),
    /// A service-account key (JSON text).
    ServiceAccount(Secret),
    /// Application Default Credentials.
    ApplicationDefault,
}

/// Everything the Pub/Sub connector reads besides the common variables.
#[derive(Debug, Clone)]
pub struct PubSubConfig {
    /// `projects/P/subscriptions/S`.
    pub subscription: String,
    /// `projects/P/topics/T` for `RESPONSE_TOPIC`.
    pub response_topic: Option<String>,
    /// `projects/P/topics/T` for `ERROR_TOPIC`.
    pub error_topic: Option<String>,
    /// How to authenticate.
    pub credentials: Credentials,
    /// `MAX_IN_FLIGHT`: messages held at once (also the stream's flow control).
    pub max_in_flight: usize,
    /// Whether the destination topics can be checked at start. The check is a REST call,
    /// whose HTTP client takes `HTTP_PROXY` for an emulator (`HTTPS_PROXY` for the data calls,
    /// as the original's gRPC) and proxies loopback too, where Go never does; with an emulator
    /// and a proxy set it is left out.
    pub check_topics: bool,
    /// Where the data calls (gRPC) go: the emulator, or Google's global endpoint.
    pub grpc_target: http::Uri,
    /// The proxy the original's gRPC would have taken to `grpc_target` (`HTTPS_PROXY` unless
    /// `NO_PROXY` or loopback exempt it); `None` to go direct.
    pub grpc_proxy: Option<connector_core::proxy::Proxy>,
}

impl PubSubConfig {
    /// Parses and validates.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let subscription = vars
            .optional_trimmed("SUBSCRIPTION_NAME")
            .ok_or_else(|| ConfigError::missing("SUBSCRIPTION_NAME"))?;
        let credentials = credentials(&vars, env)?;
        // `*detect-project-id*` is the Go client's way of saying "the project of the
        // credentials"; so it means here.
        let project = vars
            .optional_trimmed("PROJECT_ID")
            .filter(|p| p != "*detect-project-id*")
            .or_else(|| match &credentials {
                Credentials::ServiceAccount(json) => project_of(json.expose()),
                _ => None,
            });
        let subscription = full_name(&subscription, "subscriptions", project.as_deref())
            .ok_or_else(|| ConfigError::missing("PROJECT_ID"))?;
        let project_of_subscription = subscription.split('/').nth(1).map(str::to_owned);
        let project = project.or(project_of_subscription);
        let topic = |t: &Option<String>| -> Option<String> {
            t.as_deref()
                .and_then(|t| full_name(t, "topics", project.as_deref()))
        };
        let emulator = matches!(credentials, Credentials::Emulator(_));
        let proxy_set = ["HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"]
            .iter()
            .any(|v| vars.optional(v).is_some());
        let grpc_target = match &credentials {
            Credentials::Emulator(host) => format!("http://{host}").parse().map_err(|_| {
                ConfigError::invalid(
                    "PUBSUB_EMULATOR_HOST",
                    "host:port such as 127.0.0.1:8085",
                    host,
                )
            })?,
            _ => http::Uri::from_static("https://pubsub.googleapis.com"),
        };
        let rules = connector_core::proxy::ProxyRules::grpc_from_env(env);
        Ok(Self {
            check_topics: !(emulator && proxy_set),
            grpc_proxy: connector_core::grpc_proxy::proxy_for(&grpc_target, &rules),
            grpc_target,
            response_topic: topic(&settings.common.response_topic),
            error_topic: topic(&settings.common.error_topic),
            subscription,
            credentials,
            max_in_flight: vars.int_in_range("MAX_IN_FLIGHT", 1, 1, 10_000)? as usize,
        })
    }
}

/// `name` if it is already `projects/…/{kind}/…`, else `projects/{project}/{kind}/{name}`.
fn full_name(name: &str, kind: &str, project: Option<&str>) -> Option<String> {
    if name.starts_with("projects/") {
        return Some(name.to_owned());
    }
    project.map(|p| format!("projects/{p}/{kind}/{name}"))
}

fn project_of(json: &str) -> Option<String> {
    serde_json::from_str::<serde_json::Value>(json)
        .ok()?
        .get("project_id")?
        .as_str()
        .map(str::to_owned)
}

const KEY_EXPECTED: &str = "service-account JSON, or the path of a file holding it";

/// JSON content as is; anything else is read as a file path.
fn key_from(var: &str, value: &str) -> Result<Secret, ConfigError> {
    let text = if value.trim_start().starts_with('{') {
        value.to_owned()
    } else {
        std::fs::read_to_string(value.trim())
            .map_err(|_| ConfigError::invalid_secret(var, KEY_EXPECTED))?
    };
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) if v.get("type").is_some() => Ok(Secret::new(text)),
        _ => Err(ConfigError::invalid_secret(var, KEY_EXPECTED)),
    }
}

fn credentials(vars: &Vars<'_>, env: &dyn Env) -> Result<Credentials, ConfigError> {
    if let Some(value) = vars.optional_trimmed("PUBSUB_EMULATOR_HOST") {
        // Go's client hands the value to gRPC as a target, so `dns:///host:port` (and
        // `passthrough:///`) worked there too.
        let host = ["dns:///", "passthrough:///"]
            .iter()
            .find_map(|scheme| value.strip_prefix(scheme))
            .unwrap_or(&value)
            .to_owned();
        let valid = host.rsplit_once(':').is_some_and(|(h, port)| {
            !h.is_empty() && !h.contains(['/', ' ']) && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(ConfigError::invalid(
                "PUBSUB_EMULATOR_HOST",
                "host:port such as 127.0.0.1:8085",
                &value,
            ));
        }
        return Ok(Credentials::Emulator(host));
    }
    if let Some(v) = vars.optional("GOOGLE_APPLICATION_CREDENTIALS") {
        return key_from("GOOGLE_APPLICATION_CREDENTIALS", &v).map(Credentials::ServiceAccount);
    }
    if let Some(v) = vars.optional("CREDENTIALS_FROM_ENV") {
        if v.trim_start().starts_with('{') {
            return key_from("CREDENTIALS_FROM_ENV", &v).map(Credentials::ServiceAccount);
        }
        // KEDA's meaning: the name of the variable that holds the key.
        let name = v.trim();
        if let Some(inner) = env.get(name).filter(|s| !s.is_empty()) {
            return key_from(name, &inner).map(Credentials::ServiceAccount);
        }
        return key_from("CREDENTIALS_FROM_ENV", name).map(Credentials::ServiceAccount);
    }
    Ok(Credentials::ApplicationDefault)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        r#"{"type":"service_account","project_id":"from-key","private_key":"s3cret"}"#;

    fn parse(extra: &[(&str, &str)]) -> Result<PubSubConfig, ConfigError> {
        let mut env = vec![
            ("TOPIC", "t"),
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
            ("SUBSCRIPTION_NAME", "sub"),
            ("RESPONSE_TOPIC", "resp"),
        ];
        env.extend_from_slice(extra);
        let settings = Settings::from_env(&env)?;
        PubSubConfig::from_env(&env, &settings)
    }

    #[test]
    fn names_and_credentials() {
        let c = parse(&[
            ("PROJECT_ID", "p1"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
        ])
        .unwrap();
        assert_eq!(c.subscription, "projects/p1/subscriptions/sub");
        assert_eq!(c.response_topic.as_deref(), Some("projects/p1/topics/resp"));
        assert!(matches!(c.credentials, Credentials::Emulator(ref h) if h == "127.0.0.1:8085"));
        // Fission's shape: the JSON content in GOOGLE_APPLICATION_CREDENTIALS.
        let c = parse(&[("GOOGLE_APPLICATION_CREDENTIALS", KEY)]).unwrap();
        assert_eq!(c.subscription, "projects/from-key/subscriptions/sub");
        // The Go client's sentinel for "the project of the credentials".
        let c = parse(&[
            ("GOOGLE_APPLICATION_CREDENTIALS", KEY),
            ("PROJECT_ID", "*detect-project-id*"),
        ])
        .unwrap();
        assert_eq!(c.subscription, "projects/from-key/subscriptions/sub");
        assert!(!format!("{c:?}").contains("s3cret"));
        // KEDA's shape: CREDENTIALS_FROM_ENV names the variable.
        let c = parse(&[("CREDENTIALS_FROM_ENV", "GoogleKey"), ("GoogleKey", KEY)]).unwrap();
        assert!(matches!(c.credentials, Credentials::ServiceAccount(_)));
        let c = parse(&[("SUBSCRIPTION_NAME", "projects/x/subscriptions/s")]).unwrap();
        assert!(matches!(c.credentials, Credentials::ApplicationDefault));
        assert_eq!(c.response_topic.as_deref(), Some("projects/x/topics/resp"));
    }

    /// The data calls' proxy is the original gRPC's: `HTTPS_PROXY` (never `HTTP_PROXY`) for
    /// Google and for an emulator that is not loopback, `NO_PROXY` honoured.
    #[test]
    fn data_calls_take_the_proxy_grpc_go_took() {
        let with_project = |extra: &[(&'static str, &'static str)]| {
            parse(&[extra, &[("PROJECT_ID", "p1")]].concat())
        };
        let via = |extra: &[(&'static str, &'static str)]| {
            with_project(extra).unwrap().grpc_proxy.map(|p| p.var)
        };
        let https = ("HTTPS_PROXY", "proxy.example:3128");
        let http = ("HTTP_PROXY", "other.example:3128");
        let key = ("GOOGLE_APPLICATION_CREDENTIALS", KEY);
        assert_eq!(via(&[key, https, http]), Some("HTTPS_PROXY"));
        assert_eq!(via(&[key, http]), None);
        assert_eq!(via(&[key, https, ("NO_PROXY", ".googleapis.com")]), None);
        let named = ("PUBSUB_EMULATOR_HOST", "emulator.example:8085");
        assert_eq!(via(&[named, https]), Some("HTTPS_PROXY"));
        assert_eq!(
            via(&[named, https, ("NO_PROXY", "emulator.example:8085")]),
            None
        );
        assert_eq!(
            via(&[("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"), https]),
            None
        );
        assert_eq!(
            via(&[("PUBSUB_EMULATOR_HOST", "localhost:8085"), https]),
            None
        );
        let c = with_project(&[named, https]).unwrap();
        assert_eq!(c.grpc_target, "http://emulator.example:8085/");
        assert!(
            !c.check_topics,
            "REST would take HTTP_PROXY rules for an emulator"
        );
        let c = with_project(&[key, https]).unwrap();
        assert_eq!(c.grpc_target, "https://pubsub.googleapis.com/");
        assert!(c.check_topics);
        // grpc-go took an https:// proxy URL as a clear-text CONNECT proxy; so do the data calls.
        assert_eq!(
            via(&[key, ("HTTPS_PROXY", "https://proxy.example:3128")]),
            Some("HTTPS_PROXY")
        );
    }

    #[test]
    fn errors() {
        assert_eq!(
            parse(&[("SUBSCRIPTION_NAME", "")]).unwrap_err().var(),
            "SUBSCRIPTION_NAME"
        );
        assert_eq!(parse(&[]).unwrap_err().var(), "PROJECT_ID");
        let e = parse(&[(
            "GOOGLE_APPLICATION_CREDENTIALS",
            "{\"private_key\":\"s3cret\"",
        )])
        .unwrap_err();
        assert_eq!(e.var(), "GOOGLE_APPLICATION_CREDENTIALS");
        assert!(!e.to_string().contains("s3cret"));
        let e = parse(&[("GOOGLE_APPLICATION_CREDENTIALS", "/no/such/key.json")]).unwrap_err();
        assert_eq!(e.var(), "GOOGLE_APPLICATION_CREDENTIALS");
        assert_eq!(
            parse(&[("PROJECT_ID", "p"), ("MAX_IN_FLIGHT", "0")])
                .unwrap_err()
                .var(),
            "MAX_IN_FLIGHT"
        );
    }
}

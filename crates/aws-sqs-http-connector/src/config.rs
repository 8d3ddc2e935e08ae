//! SQS's variables on top of the common contract (reference §2.3) and the AWS ones (§1.6).

use connector_core::aws::AwsSettings;
use connector_core::config::{ConfigError, Env, Settings, Vars};

/// A queue as configured: a full URL, or a name looked up with `GetQueueUrl` at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueRef {
    /// A full queue URL.
    Url(String),
    /// A queue name in the configured account and region.
    Name(String),
}

/// Everything the SQS connector reads besides the common variables.
#[derive(Debug, Clone)]
pub struct SqsConfig {
    /// Region and endpoint overrides.
    pub aws: AwsSettings,
    /// The source queue: `QUEUE_URL`, else `TOPIC`.
    pub source: QueueRef,
    /// Where responses go (`RESPONSE_TOPIC`).
    pub response: Option<QueueRef>,
    /// Where error documents go (`ERROR_TOPIC`).
    pub error: Option<QueueRef>,
    /// `WAIT_TIME_SECONDS`: long-poll wait of one receive (0–20, default 5 as the original).
    pub wait_time: i32,
    /// `VISIBILITY_TIMEOUT`: seconds a received message stays hidden; default: the queue's.
    pub visibility_timeout: Option<i32>,
    /// `DELAY_SECONDS`: delay of responses and error documents on standard queues (0–900,
    /// default 0; the original always used 10).
    pub delay_seconds: i32,
    /// `MAX_IN_FLIGHT`: messages held at once, received and not yet settled (default 10).
    pub max_in_flight: usize,
}

impl SqsConfig {
    /// Parses and validates.
    pub fn from_env(env: &dyn Env, settings: &Settings) -> Result<Self, ConfigError> {
        let vars = Vars::new(env);
        let aws = AwsSettings::from_env(env)?;
        let common = &settings.common;
        let queue_url = vars.optional_trimmed("QUEUE_URL");
        // The original's rule: strip a trailing TOPIC from QUEUE_URL, then resolve TOPIC,
        // RESPONSE_TOPIC and ERROR_TOPIC against what is left (RFC 3986), so names become
        // sibling queue URLs and full URLs stay as they are. The source is TOPIC so resolved,
        // not QUEUE_URL itself: an account base such as `.../000000000000/` with TOPIC a queue
        // name (the original's own test set-up) consumes that queue. Where TOPIC *is*
        // QUEUE_URL, QUEUE_URL is the base (the original's empty base lost every output).
        // Without QUEUE_URL, names are looked up at start.
        let base = match &queue_url {
            Some(url) => {
                let parsed = parse_http_url(url)
                    .ok_or_else(|| ConfigError::invalid("QUEUE_URL", QUEUE_URL_EXPECTED, url))?;
                let base_text = url.strip_suffix(common.topic.as_str()).unwrap_or(url);
                Some(url::Url::parse(base_text).unwrap_or(parsed))
            }
            None => None,
        };
        let resolve = |var: &str, value: &str| match &base {
            Some(base) => base
                .join(value)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(|u| QueueRef::Url(u.to_string()))
                .ok_or_else(|| ConfigError::invalid(var, "a queue name or a queue URL", value)),
            None => queue_ref(var, value),
        };
        let source = resolve("TOPIC", &common.topic)?;
        let response = common
            .response_topic
            .as_deref()
            .map(|t| resolve("RESPONSE_TOPIC", t))
            .transpose()?;
        let error = common
            .error_topic
            .as_deref()
            .map(|t| resolve("ERROR_TOPIC", t))
            .transpose()?;
        let visibility_timeout = match vars.optional_trimmed("VISIBILITY_TIMEOUT") {
            None => None,
            Some(_) => Some(vars.int_in_range("VISIBILITY_TIMEOUT", 30, 1, 43_200)? as i32),
        };
        Ok(Self {
            aws,
            source,
            response,
            error,
            wait_time: vars.int_in_range("WAIT_TIME_SECONDS", 5, 0, 20)? as i32,
            visibility_timeout,
            delay_seconds: vars.int_in_range("DELAY_SECONDS", 0, 0, 900)? as i32,
            max_in_flight: vars.int_in_range("MAX_IN_FLIGHT", 10, 1, 10_000)? as usize,
        })
    }
}

const QUEUE_URL_EXPECTED: &str =
    "a queue URL such as https://sqs.us-east-1.amazonaws.com/123456789012/my-queue";

fn parse_http_url(s: &str) -> Option<url::Url> {
    url::Url::parse(s)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

/// Without `QUEUE_URL`: a full URL is used as it is, anything else must be a queue name.
fn queue_ref(var: &str, value: &str) -> Result<QueueRef, ConfigError> {
    if value.contains("://") {
        return parse_http_url(value)
            .map(|u| QueueRef::Url(u.to_string()))
            .ok_or_else(|| ConfigError::invalid(var, "a queue name or a queue URL", value));
    }
    let valid = !value.is_empty()
        && value.len() <= 80
        && value
            .strip_suffix(".fifo")
            .unwrap_or(value)
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(QueueRef::Name(value.to_owned()))
    } else {
        Err(ConfigError::invalid(
            var,
            "a queue name (letters, digits, - and _, up to 80, optionally ending in .fifo) or a queue URL",
            value,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> Result<SqsConfig, ConfigError> {
        let mut env = vec![
            ("HTTP_ENDPOINT", "http://127.0.0.1:1/f"),
            ("MAX_RETRIES", "0"),
            ("CONTENT_TYPE", "text/plain"),
        ];
        env.extend_from_slice(pairs);
        let env: Vec<(&str, &str)> = env;
        let settings = Settings::from_env(&env)?;
        SqsConfig::from_env(&env, &settings)
    }

    fn url(s: &str) -> QueueRef {
        QueueRef::Url(s.into())
    }

    #[test]
    fn names_resolve_against_queue_url_as_the_original() {
        let c = parse(&[
            ("TOPIC", "in"),
            ("QUEUE_URL", "https://sqs.eu-west-1.amazonaws.com/123/in"),
            ("RESPONSE_TOPIC", "out"),
            (
                "ERROR_TOPIC",
                "https://sqs.eu-west-1.amazonaws.com/999/errors",
            ),
        ])
        .unwrap();
        assert_eq!(c.source, url("https://sqs.eu-west-1.amazonaws.com/123/in"));
        assert_eq!(
            c.response,
            Some(url("https://sqs.eu-west-1.amazonaws.com/123/out"))
        );
        assert_eq!(
            c.error,
            Some(url("https://sqs.eu-west-1.amazonaws.com/999/errors"))
        );
        assert_eq!((c.wait_time, c.delay_seconds, c.max_in_flight), (5, 0, 10));
        assert_eq!(c.visibility_timeout, None);
    }

    #[test]
    fn base_ending_in_a_slash_works() {
        let c = parse(&[
            ("TOPIC", "in"),
            ("QUEUE_URL", "http://localhost:4566/000000000000/"),
            ("RESPONSE_TOPIC", "out.fifo"),
        ])
        .unwrap();
        assert_eq!(c.source, url("http://localhost:4566/000000000000/in"));
        assert_eq!(
            c.response,
            Some(url("http://localhost:4566/000000000000/out.fifo"))
        );
    }

    /// The source queue each (QUEUE_URL, TOPIC) pair meant to the original: TOPIC resolved
    /// against QUEUE_URL less a trailing TOPIC.
    #[test]
    fn the_source_is_topic_resolved_against_queue_url() {
        let b = "http://127.0.0.1:4566/123456789012";
        for (queue_url, topic, source) in [
            (format!("{b}/in"), "in".to_owned(), format!("{b}/in")),
            (format!("{b}/"), "in".to_owned(), format!("{b}/in")),
            (format!("{b}/other"), "in".to_owned(), format!("{b}/in")),
            (
                format!("{b}/myqueue"),
                "queue".to_owned(),
                format!("{b}/queue"),
            ),
            (format!("{b}/a"), format!("{b}/b"), format!("{b}/b")),
            (format!("{b}/in"), format!("{b}/in"), format!("{b}/in")),
            (
                b.to_owned(),
                "in".to_owned(),
                "http://127.0.0.1:4566/in".to_owned(),
            ),
        ] {
            let c = parse(&[("TOPIC", &topic), ("QUEUE_URL", &queue_url)]).unwrap();
            assert_eq!(
                c.source,
                url(&source),
                "QUEUE_URL={queue_url} TOPIC={topic}"
            );
        }
    }

    #[test]
    fn without_queue_url_names_are_looked_up() {
        let c = parse(&[("TOPIC", "in"), ("RESPONSE_TOPIC", "out")]).unwrap();
        assert_eq!(c.source, QueueRef::Name("in".into()));
        assert_eq!(c.response, Some(QueueRef::Name("out".into())));
        assert!(parse(&[("TOPIC", "bad name")]).is_err());
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (var, value) in [
            ("QUEUE_URL", "not a url"),
            ("WAIT_TIME_SECONDS", "21"),
            ("VISIBILITY_TIMEOUT", "0"),
            ("DELAY_SECONDS", "-1"),
            ("MAX_IN_FLIGHT", "0"),
            ("AWS_ENDPOINT", "localhost:4566"),
            ("AWS_REGION", "us east"),
        ] {
            let e = parse(&[("TOPIC", "in"), (var, value)]).unwrap_err();
            assert_eq!(e.var(), var, "{e}");
        }
    }
}

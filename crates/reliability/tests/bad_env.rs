//! Every variable every connector reads, with malformed values: each is either accepted (free
//! text such as a topic name) or rejected with one line naming the variable — and no secret of
//! the configuration ever appears in the message. The variables are discovered by recording what
//! each connector's parser asks for, so a new variable is covered the day it is added; one that
//! accepts every malformed value must be listed as free text here.

use connector_core::app::{Connector, configure};
use connector_core::config::{ConfigError, Env};
use connector_core::testkit::RecordingEnv;
use std::collections::{BTreeMap, BTreeSet};

/// Values that are wrong for most typed variables; the last one is distinctive, so an echo of
/// it cannot be a coincidence.
const MALFORMED: &[&str] = &[
    "",
    " ",
    "x",
    "-1",
    "0",
    "1.5",
    "99999999999999999999",
    "10 parsecs",
    "http//no-scheme",
    "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----",
    "Q7-echo-canary-Q7",
];
const CANARY: &str = "Q7-echo-canary-Q7";

/// Variables whose value must never be shown (substrings of the name).
const SECRET_NAMES: &[&str] = &[
    "PASSWORD",
    "SECRET",
    "TOKEN",
    "NKEY",
    "CREDENTIALS",
    "KEY",
    // `Name: value` lines whose values are API keys.
    "HTTP_HEADERS",
];

struct Case {
    connector: &'static str,
    check: fn(&dyn Env) -> Result<(), ConfigError>,
    base: &'static [(&'static str, &'static str)],
    /// Variables any text is valid for.
    free_text: &'static [&'static str],
}

fn check<C: Connector>(env: &dyn Env) -> Result<(), ConfigError> {
    configure::<C>(env).map(|_| ())
}

const COMMON: &[(&str, &str)] = &[
    ("TOPIC", "orders"),
    ("HTTP_ENDPOINT", "http://127.0.0.1:9/fn"),
    ("MAX_RETRIES", "2"),
    ("CONTENT_TYPE", "application/json"),
    ("FISSION_INTERNAL_AUTH_SECRET", "S3CRET-fission-router-key"),
];

/// Free text in every connector: names and labels.
const COMMON_FREE: &[&str] = &[
    "TOPIC",
    "RESPONSE_TOPIC",
    "ERROR_TOPIC",
    "SOURCE_NAME",
    "CONTENT_TYPE",
    "FISSION_INTERNAL_AUTH_SECRET",
    // Read by the AWS SDK or by us only to pass on; validated by the SDK.
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    // Passed on to the AWS SDK as keys (the older names Go's SDK reads).
    "AWS_ACCESS_KEY_ID",
    "AWS_ACCESS_KEY",
    "AWS_ENDPOINT",
    "HOSTNAME",
    // Go's client ignores a proxy value it cannot use (a warning says so here), and NO_PROXY
    // entries it cannot read match nothing; REQUEST_METHOD only counts when a proxy applies.
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
    // OpenTelemetry's variables never stop a start (the original ignored them): what cannot be
    // used is a warning and tracing stays off.
    "OTEL_SDK_DISABLED",
    "OTEL_SERVICE_NAME",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
];

const CASES: &[Case] = &[
    Case {
        connector: "rabbitmq",
        check: check::<rabbitmq_http_connector::RabbitConnector>,
        base: &[("HOST", "amqp://app:S3CRET-rabbit-pw@127.0.0.1:5672/%2f")],
        // Only `true` is refused, as in the original; every other value means the AMQP mode.
        free_text: &["INCLUDE_UNACKED"],
    },
    Case {
        connector: "kafka",
        check: check::<kafka_http_connector::KafkaConnector>,
        base: &[
            ("BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
            ("CONSUMER_GROUP", "g"),
            ("SASL", "plaintext"),
            ("USERNAME", "app"),
            ("PASSWORD", "S3CRET-kafka-pw"),
        ],
        free_text: &[
            "CONSUMER_GROUP",
            "USERNAME",
            "PASSWORD",
            "KEY_PASSWORD",
            "MESSAGE_KEY_HEADER",
            // `enable`/`true` turn TLS on; anything else is off, as in the original.
            "TLS",
        ],
    },
    Case {
        connector: "redis",
        check: check::<redis_http_connector::RedisConnector>,
        base: &[
            ("ADDRESS", "127.0.0.1:6379"),
            ("USERNAME", "app"),
            ("PASSWORD", "S3CRET-redis-pw"),
        ],
        free_text: &["USERNAME", "PASSWORD", "PASSWORD_FROM_ENV"],
    },
    Case {
        connector: "nats-jetstream",
        check: check::<nats_jetstream_http_connector::NatsConnector>,
        base: &[
            ("NATS_SERVER", "nats://127.0.0.1:4222"),
            ("CONSUMER", "orders-worker"),
            ("NATS_USERNAME", "app"),
            ("NATS_PASSWORD", "S3CRET-nats-pw"),
        ],
        free_text: &["NATS_USERNAME", "NATS_PASSWORD", "NATS_TOKEN", "STREAM"],
    },
    Case {
        connector: "aws-sqs",
        check: check::<aws_sqs_http_connector::SqsConnector>,
        base: &[
            (
                "QUEUE_URL",
                "https://sqs.us-east-1.amazonaws.com/123456789012/orders",
            ),
            ("AWS_REGION", "us-east-1"),
        ],
        free_text: &[],
    },
    Case {
        connector: "aws-kinesis",
        check: check::<aws_kinesis_http_connector::KinesisConnector>,
        base: &[("AWS_REGION", "us-east-1")],
        free_text: &["CHECKPOINT_TABLE", "WORKER_ID"],
    },
    Case {
        connector: "gcp-pubsub",
        check: check::<gcp_pubsub_http_connector::PubSubConnector>,
        base: &[
            ("PROJECT_ID", "my-project"),
            ("SUBSCRIPTION_NAME", "orders-sub"),
            ("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085"),
        ],
        free_text: &["PROJECT_ID", "SUBSCRIPTION_NAME"],
    },
    Case {
        connector: "gcp-pubsub (service-account JSON, Fission's shape)",
        check: check::<gcp_pubsub_http_connector::PubSubConnector>,
        base: &[
            ("SUBSCRIPTION_NAME", "orders-sub"),
            (
                "GOOGLE_APPLICATION_CREDENTIALS",
                r#"{"type":"service_account","project_id":"p","private_key":"S3CRET-gcp-private-key"}"#,
            ),
        ],
        free_text: &["PROJECT_ID", "SUBSCRIPTION_NAME"],
    },
    Case {
        connector: "gcp-pubsub (CREDENTIALS_FROM_ENV)",
        check: check::<gcp_pubsub_http_connector::PubSubConnector>,
        base: &[
            ("SUBSCRIPTION_NAME", "orders-sub"),
            (
                "CREDENTIALS_FROM_ENV",
                r#"{"type":"service_account","project_id":"p","private_key":"S3CRET-gcp-env-key"}"#,
            ),
        ],
        free_text: &["PROJECT_ID", "SUBSCRIPTION_NAME"],
    },
];

/// The `S3CRET…` tokens in `value` (a password inside a URI or a key inside JSON).
fn secret_tokens(value: &str) -> Vec<String> {
    value
        .match_indices("S3CRET")
        .map(|(i, _)| {
            value[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect()
        })
        .collect()
}

fn env(case: &Case) -> BTreeMap<String, String> {
    COMMON
        .iter()
        .chain(case.base)
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A variable holding a secret itself (paths to secret files are not secrets; the AMQP URI
/// carries a password).
fn is_secret(var: &str) -> bool {
    let path = var.ends_with("_FILE") || var == "GOOGLE_APPLICATION_CREDENTIALS";
    (SECRET_NAMES.iter().any(|s| var.contains(s)) && !path) || var == "HOST"
}

#[test]
fn every_variable_of_every_connector_rejects_malformed_values_by_name() {
    let mut report = Vec::new();
    for case in CASES {
        let base = env(case);
        let secrets: Vec<String> = base.values().flat_map(|v| secret_tokens(v)).collect();
        assert!(
            !secrets.is_empty(),
            "{}: the base holds secrets",
            case.connector
        );

        // What the parser asks for, with the valid base.
        let recording = RecordingEnv::new(base.clone());
        (case.check)(&recording)
            .unwrap_or_else(|e| panic!("{}: the valid base is refused: {e}", case.connector));
        let read = recording.into_read();
        assert!(
            read.len() >= 15,
            "{}: only {} variables read",
            case.connector,
            read.len()
        );

        let mut free = Vec::new();
        for var in &read {
            let mut rejected = 0;
            for value in MALFORMED {
                let mut vars = base.clone();
                vars.insert(var.clone(), (*value).to_owned());
                let env = RecordingEnv::new(vars);
                let Err(e) = (case.check)(&env) else { continue };
                rejected += 1;
                let line = e.to_string();
                let what = format!("{} {var}={value:?}", case.connector);
                assert_eq!(line.lines().count(), 1, "{what}: one line: {line}");
                // An empty value is an unset variable: the error may then be about what is
                // missing instead (e.g. PROJECT_ID once no credentials name the project).
                assert!(
                    line.contains(var.as_str()) || value.trim().is_empty(),
                    "{what}: names the variable: {line}"
                );
                for secret in &secrets {
                    assert!(
                        !line.contains(secret.as_str()),
                        "{what}: echoes a secret: {line}"
                    );
                    assert!(
                        !format!("{e:?}").contains(secret.as_str()),
                        "{what}: Debug echoes a secret"
                    );
                }
                if is_secret(var) {
                    assert!(
                        !line.contains(CANARY),
                        "{what}: echoes the secret value: {line}"
                    );
                }
            }
            if rejected == 0 {
                free.push(var.clone());
            }
        }
        // Prefix pass-through groups are read with keys(), not per name.
        let expected: BTreeSet<&str> = COMMON_FREE.iter().chain(case.free_text).copied().collect();
        for var in &free {
            assert!(
                expected.contains(var.as_str()),
                "{}: {var} accepts every malformed value; validate it, or list it as free text",
                case.connector
            );
        }
        report.push(format!(
            "{}: {} variables × {} malformed values, {} free text",
            case.connector,
            read.len(),
            MALFORMED.len(),
            free.len()
        ));
    }
    eprintln!("bad env: {}", report.join("; "));
}

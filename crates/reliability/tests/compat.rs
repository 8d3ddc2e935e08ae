//! Drop-in compatibility: the forms of each variable that the Go original accepts (decided by
//! its code and by the library it hands the value to — amqp091-go, sarama, go-redis, nats.go,
//! the AWS SDK, the Pub/Sub client), each given to the real connector binary against the real
//! broker. A form the original accepts must deliver a message through the place it meant (the
//! vhost, database, queue, stream, server); a form the original also refuses must stop ours
//! with one line naming the variable. docs/compatibility.md lists the same forms.
//!
//! Every kind runs as its own test, so the brokers are exercised in parallel.

use broker_fixtures::{Fixture, Kind};
use connector_core::testkit::{ForwardProxy, Process, Reply, Sink};
use reliability::{Collector, binary, env, fixture};

/// What a form must do.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Start, consume from the intended source and answer a message.
    Delivers,
    /// Stop at start with exit 78 and one line naming this variable.
    Refuses(&'static str),
    /// Stop at start with this exit code and a log line containing this text (a broker-side
    /// refusal, e.g. a queue missing in the vhost the form names).
    Exits(i32, &'static str),
}

/// One form: variables set (an empty value unsets), what the original made of it, and what
/// ours must do.
struct Form {
    set: Vec<(&'static str, String)>,
    meaning: &'static str,
    expect: Expect,
}

fn form(set: &[(&'static str, &str)], meaning: &'static str, expect: Expect) -> Form {
    Form {
        set: set.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        meaning,
        expect,
    }
}

/// The fixture's value of `var`.
fn value(fx: &Fixture, var: &str) -> String {
    fx.env
        .iter()
        .rev()
        .find(|(k, _)| *k == var)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("the fixture sets no {var}"))
}

/// Runs each form against `fx` (whose destinations `collector` reads), one connector at a time.
async fn check_forms(kind: Kind, fx: &Fixture, collector: &Collector, forms: &[Form]) {
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    for (i, f) in forms.iter().enumerate() {
        let what = format!("{kind:?} form {i} ({}): {:?}", f.meaning, f.set);
        let extra: Vec<(&'static str, &str)> =
            f.set.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut vars = env(kind, fx, &sink.url("/fn"), &extra);
        vars.retain(|(_, v)| !v.is_empty());
        match f.expect {
            Expect::Delivers => {
                let payload = format!("compat-{kind:?}-{i}").into_bytes();
                fx.publish(std::slice::from_ref(&payload), 1, |_| {})
                    .await
                    .unwrap_or_else(|e| panic!("{what}: publishing: {e}"));
                let mut p = Process::start(&binary(kind), &vars);
                let wanted = [payload];
                tokio::select! {
                    () = collector.wait_answered(&what, &wanted) => {}
                    status = p.wait_exit() => {
                        panic!("{what}: exited ({status}) before answering; logs:\n{}", p.logs())
                    }
                }
                p.stop().await;
            }
            Expect::Refuses(var) => {
                let mut p = Process::start(&binary(kind), &vars);
                let status = p.wait_exit().await;
                let logs = p.logs();
                assert_eq!(status.code(), Some(78), "{what}: exit code; logs:\n{logs}");
                assert_eq!(logs.lines().count(), 1, "{what}: one line: {logs}");
                assert!(logs.contains(var), "{what}: names {var}: {logs}");
            }
            Expect::Exits(code, needle) => {
                let mut p = Process::start(&binary(kind), &vars);
                p.expect_exit(code, needle).await;
            }
        }
    }
    let seen = collector.without_errors(&format!("{kind:?}"));
    assert!(
        seen.responses.values().all(|n| *n == 1),
        "{kind:?}: {seen:?}"
    );
    eprintln!("compat: {kind:?}: {} forms checked", forms.len());
}

async fn run(kind: Kind, forms: impl FnOnce(&Fixture) -> Vec<Form>) {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let forms = forms(&fx);
    check_forms(kind, &fx, &collector, &forms).await;
    fx.cleanup().await;
}

/// The common variables' forms are the same code in every connector; Redis runs them.
fn common_forms(fx: &Fixture) -> Vec<Form> {
    let _ = fx;
    vec![
        form(
            &[("MAX_RETRIES", " 0x2\n")],
            "Go integer syntax, whitespace trimmed",
            Expect::Delivers,
        ),
        form(
            &[("MAX_RETRIES", "1_0")],
            "digit separators",
            Expect::Delivers,
        ),
        form(
            &[("MAX_RETRIES", "three")],
            "not a number",
            Expect::Refuses("MAX_RETRIES"),
        ),
        form(
            &[("MAX_RETRIES", "++1")],
            "a second sign",
            Expect::Refuses("MAX_RETRIES"),
        ),
        form(
            &[("SOURCE_NAME", "")],
            "empty = KEDAConnector",
            Expect::Delivers,
        ),
        form(
            &[("HTTP_ENDPOINT", "")],
            "required",
            Expect::Refuses("HTTP_ENDPOINT"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_forms_the_original_accepts() {
    run(Kind::Redis, |fx| {
        let mut forms = common_forms(fx);
        let address = value(fx, "ADDRESS");
        let port = address.rsplit(':').next().unwrap().to_owned();
        forms.extend([
            form(&[("ADDRESS", &address)], "host:port", Expect::Delivers),
            form(
                &[("ADDRESS", &format!("localhost:{port}"))],
                "a host name",
                Expect::Delivers,
            ),
            form(
                &[("ADDRESS", &format!(" {address}\n"))],
                "from a Secret, with a newline",
                Expect::Delivers,
            ),
            form(
                &[("ADDRESS", &format!(":{port}"))],
                "no host: this machine (Go's dialer)",
                Expect::Delivers,
            ),
            form(
                &[("ADDRESS", &format!("0.0.0.0:{port}"))],
                "the unspecified address: this machine (Go's dialer)",
                Expect::Delivers,
            ),
            form(
                &[("ADDRESS", &format!("redis://{address}/0"))],
                "a redis:// URL (ours; the original could not connect)",
                Expect::Delivers,
            ),
            form(
                &[("PASSWORD_FROM_ENV", "")],
                "no password",
                Expect::Delivers,
            ),
            form(&[("ADDRESS", "")], "required", Expect::Refuses("ADDRESS")),
        ]);
        forms
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_forms_the_original_accepts() {
    // A vhost of its own, holding none of the fixture's queues: a HOST naming it must reach it
    // (and find no source queue there), where one naming `/` finds the queues.
    let vhost = "keda-compat";
    for args in [
        vec!["add_vhost", vhost],
        vec!["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
    ] {
        let out = std::process::Command::new("rabbitmqctl")
            .args(&args)
            .output()
            .expect("rabbitmqctl (comes with rabbitmq-server) is needed to add a vhost");
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() || text.contains("already exists"),
            "rabbitmqctl {args:?}: {text}"
        );
    }
    run(Kind::RabbitMq, |_| {
        let g = "guest:guest@127.0.0.1";
        vec![
            form(
                &[("HOST", &format!("amqp://{g}:5672/"))],
                "a trailing slash: the default vhost /",
                Expect::Delivers,
            ),
            form(
                &[("HOST", &format!("amqp://{g}:5672"))],
                "no path: the default vhost /",
                Expect::Delivers,
            ),
            form(
                &[("HOST", &format!("amqp://{g}:5672/%2f"))],
                "/%2f: the vhost /",
                Expect::Delivers,
            ),
            form(
                &[("HOST", &format!("AMQP://{g}/"))],
                "scheme in capitals, default port 5672",
                Expect::Delivers,
            ),
            form(
                &[("HOST", "amqp://127.0.0.1/")],
                "no user: guest/guest",
                Expect::Delivers,
            ),
            form(
                &[("HOST", "amqp://guest@127.0.0.1/")],
                "no password: guest",
                Expect::Delivers,
            ),
            form(
                &[("HOST", &format!("amqp://{g}:5672/%2f\n"))],
                "from a Secret, with a newline",
                Expect::Delivers,
            ),
            form(
                &[("HOST", "amqp://guest:guest@localhost:5672/")],
                "a host name",
                Expect::Delivers,
            ),
            form(
                &[(
                    "HOST",
                    &format!("amqp://{g}:5672/?heartbeat=10&connection_timeout=5000"),
                )],
                "query parameters",
                Expect::Delivers,
            ),
            form(
                &[("HOST", &format!("amqp://{g}:5672/{vhost}"))],
                "a named vhost: the queue is looked for there",
                Expect::Exits(1, "does not exist"),
            ),
            form(&[("CONCURRENT", " 5")], "trimmed", Expect::Delivers),
            form(
                &[("INCLUDE_UNACKED", "false")],
                "the AMQP mode",
                Expect::Delivers,
            ),
            form(
                &[("INCLUDE_UNACKED", "1")],
                "only `true` is refused",
                Expect::Delivers,
            ),
            form(
                &[("INCLUDE_UNACKED", "true")],
                "the HTTP API mode, refused by the original too",
                Expect::Refuses("INCLUDE_UNACKED"),
            ),
            form(
                &[("HOST", "http://guest:guest@127.0.0.1:5672/")],
                "not AMQP",
                Expect::Refuses("HOST"),
            ),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nats_forms_the_original_accepts() {
    run(Kind::Nats, |fx| {
        let server = value(fx, "NATS_SERVER");
        let hostport = server.trim_start_matches("nats://").to_owned();
        vec![
            form(
                &[("NATS_SERVER", &server)],
                "a nats:// URL",
                Expect::Delivers,
            ),
            form(&[("NATS_SERVER", &hostport)], "no scheme", Expect::Delivers),
            form(
                &[("NATS_SERVER", "")],
                "unset: nats://127.0.0.1:4222",
                Expect::Delivers,
            ),
            form(
                &[("NATS_SERVER", "localhost")],
                "no port: 4222",
                Expect::Delivers,
            ),
            form(
                &[("NATS_SERVER", &format!("{server}, {server}"))],
                "a list, with a space after the comma",
                Expect::Delivers,
            ),
            form(
                &[("NATS_SERVER", &format!("{server},"))],
                "a trailing comma",
                Expect::Delivers,
            ),
            form(
                &[("NATS_SERVER", &format!("tcp://{hostport}"))],
                "tcp:// (plain NATS to nats.go)",
                Expect::Delivers,
            ),
            form(
                &[("NATS_SERVER", &format!(" {server}\n"))],
                "from a Secret, with a newline",
                Expect::Delivers,
            ),
            form(&[("ACKWAIT", "1m30s")], "a Go duration", Expect::Delivers),
            form(&[("CONCURRENT", "2")], "two at once", Expect::Delivers),
            form(&[("CONSUMER", "")], "required", Expect::Refuses("CONSUMER")),
            form(&[("ACKWAIT", "30")], "no unit", Expect::Refuses("ACKWAIT")),
        ]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_forms_the_original_accepts() {
    run(Kind::Kafka, |fx| {
        let bs = value(fx, "BOOTSTRAP_SERVERS");
        vec![
            form(
                &[("BOOTSTRAP_SERVERS", &format!(" {bs} ,"))],
                "spaces and a trailing comma",
                Expect::Delivers,
            ),
            form(
                &[("BOOTSTRAP_SERVERS", ""), ("BROKER_LIST", &bs)],
                "the older BROKER_LIST",
                Expect::Delivers,
            ),
            form(
                &[("OFFSET_RESET_POLICY", "Earliest")],
                "any case",
                Expect::Delivers,
            ),
            form(&[("SASL", "none")], "KEDA's default", Expect::Delivers),
            form(&[("TLS", "disable")], "KEDA's off", Expect::Delivers),
            form(
                &[("TLS", "disabled")],
                "anything but enable is off",
                Expect::Delivers,
            ),
            form(&[("UNSAFE_SSL", "f")], "Go's ParseBool", Expect::Delivers),
            form(
                &[("BOOTSTRAP_SERVERS", ""), ("BROKER_LIST", "")],
                "required",
                Expect::Refuses("BOOTSTRAP_SERVERS"),
            ),
            form(
                &[("SASL", "gssapi")],
                "refused by the original too",
                Expect::Refuses("SASL"),
            ),
        ]
    })
    .await;
}

/// Proxy variables that point nowhere: broker traffic to loopback must never use them (Go's
/// rule), so a connector that honoured them wrongly could not start.
const DEAD_PROXIES: [(&str, &str); 2] = [
    ("HTTP_PROXY", "http://127.0.0.1:9"),
    ("HTTPS_PROXY", "http://127.0.0.1:9"),
];

#[tokio::test(flavor = "multi_thread")]
async fn sqs_forms_the_original_accepts() {
    // AWS calls to a name that is not loopback go through HTTP_PROXY, as Go's SDK sent them.
    let proxy = ForwardProxy::start().await;
    let proxy_url = format!("http://{}", proxy.addr());
    run(Kind::Sqs, |fx| {
        let queue_url = value(fx, "QUEUE_URL");
        let topic = value(fx, "TOPIC");
        let base = queue_url.strip_suffix(&topic).unwrap().to_owned();
        let endpoint = value(fx, "AWS_ENDPOINT");
        vec![
            form(
                &[("QUEUE_URL", &queue_url)],
                "the queue's URL",
                Expect::Delivers,
            ),
            form(
                &[("QUEUE_URL", &base)],
                "the account's base URL, TOPIC a name (the original's own test set-up)",
                Expect::Delivers,
            ),
            form(
                &[("QUEUE_URL", &format!("{base}some-other-queue"))],
                "another queue's URL: TOPIC is resolved against it",
                Expect::Delivers,
            ),
            form(
                &[("QUEUE_URL", &base), ("TOPIC", &queue_url)],
                "TOPIC a full URL",
                Expect::Delivers,
            ),
            form(
                &[("AWS_ENDPOINT", &format!("{endpoint}/"))],
                "an endpoint with a trailing slash",
                Expect::Delivers,
            ),
            form(
                &[("AWS_REGION", " us-east-1\n")],
                "from a Secret, with a newline",
                Expect::Delivers,
            ),
            form(
                &[("AWS_REGION", " "), ("AWS_DEFAULT_REGION", "us-east-1")],
                "a blank AWS_REGION: AWS_DEFAULT_REGION",
                Expect::Delivers,
            ),
            form(
                &DEAD_PROXIES,
                "proxies set, loopback endpoint: direct",
                Expect::Delivers,
            ),
            form(
                &[
                    (
                        "AWS_ENDPOINT",
                        &endpoint.replace("127.0.0.1", "aws-endpoint.test"),
                    ),
                    ("HTTP_PROXY", &proxy_url),
                ],
                "a named endpoint through HTTP_PROXY",
                Expect::Delivers,
            ),
            form(
                &[
                    ("AWS_ACCESS_KEY_ID", ""),
                    ("AWS_SECRET_ACCESS_KEY", ""),
                    ("AWS_ACCESS_KEY", "testing"),
                    ("AWS_SECRET_KEY", "testing"),
                ],
                "keys under the older names Go's SDK reads",
                Expect::Delivers,
            ),
        ]
    })
    .await;
    assert!(
        proxy
            .seen()
            .iter()
            .any(|r| r.target.contains("aws-endpoint.test")),
        "the named endpoint's calls went through the proxy: {:?}",
        proxy.seen()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kinesis_forms_the_original_accepts() {
    run(Kind::Kinesis, |fx| {
        let endpoint = value(fx, "AWS_ENDPOINT");
        vec![
            form(&[], "the stream by name", Expect::Delivers),
            form(
                &[("AWS_ENDPOINT", &format!("{endpoint}/"))],
                "an endpoint with a trailing slash",
                Expect::Delivers,
            ),
            form(
                &DEAD_PROXIES,
                "proxies set, loopback endpoint: direct",
                Expect::Delivers,
            ),
            form(
                &[("TOPIC", "no-such-stream")],
                "a stream that does not exist",
                Expect::Exits(1, "TOPIC"),
            ),
        ]
    })
    .await;
}

/// The emulator serves a subscription to one streaming-pull client only (see
/// `reliability::RESTARTABLE`), so each delivering form gets a fixture of its own.
#[tokio::test(flavor = "multi_thread")]
async fn pubsub_forms_the_original_accepts() {
    let full = |fx: &Fixture| {
        format!(
            "projects/{}/subscriptions/{}",
            value(fx, "PROJECT_ID"),
            value(fx, "SUBSCRIPTION_NAME")
        )
    };
    run(Kind::PubSub, |fx| {
        vec![form(
            &[("SUBSCRIPTION_NAME", &full(fx)), ("PROJECT_ID", "")],
            "a full subscription name",
            Expect::Delivers,
        )]
    })
    .await;
    run(Kind::PubSub, |fx| {
        let host = value(fx, "PUBSUB_EMULATOR_HOST");
        vec![
            form(
                &[("PUBSUB_EMULATOR_HOST", &format!("dns:///{host}"))],
                "a gRPC target, as Go's client takes it",
                Expect::Delivers,
            ),
            form(
                &[("SUBSCRIPTION_NAME", "")],
                "required",
                Expect::Refuses("SUBSCRIPTION_NAME"),
            ),
        ]
    })
    .await;
    run(Kind::PubSub, |_| {
        vec![form(
            &DEAD_PROXIES,
            "proxies set, emulator on loopback: direct",
            Expect::Delivers,
        )]
    })
    .await;
}

//! `--check` against every broker: with a healthy set-up it reports what the first start would
//! find and exits 0, and it takes nothing — the message published before the check is the one
//! the connector answers afterwards; with the source missing or the endpoint closed it exits 1
//! with a line naming the variable.

use broker_fixtures::Kind;
use connector_core::testkit::{Reply, Sink, free_port, run_once};
use reliability::{Collector, KINDS, binary, env, fixture, selected};

/// Runs `binary --check` (with `--json` when asked) and returns (exit code, stdout).
fn check(kind: Kind, vars: &[(&'static str, String)], json: bool) -> (Option<i32>, String) {
    let args: &[&str] = if json {
        &["--check", "--json"]
    } else {
        &["--check"]
    };
    run_once(&binary(kind), args, vars)
}

async fn check_kind(kind: Kind) {
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let payload = format!("published before the check ({kind:?})").into_bytes();
    fx.publish(std::slice::from_ref(&payload), 1, |_| {})
        .await
        .unwrap();
    let vars = env(kind, &fx, &sink.url("/fn"), &[]);

    let (code, out) = check(kind, &vars, false);
    assert_eq!(code, Some(0), "{kind:?}: healthy set-up:\n{out}");
    for what in ["configuration", "endpoint (HTTP_ENDPOINT)", "source"] {
        assert!(
            out.lines().any(|l| l.starts_with("ok") && l.contains(what)),
            "{kind:?}: an ok line for {what}:\n{out}"
        );
    }
    assert!(!out.contains("fail"), "{kind:?}:\n{out}");
    assert_eq!(
        sink.count(),
        0,
        "{kind:?}: a check never calls the function"
    );

    let (code, json) = check(kind, &vars, true);
    assert_eq!(code, Some(0));
    let doc: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON document");
    assert_eq!(doc["ok"], true, "{json}");
    assert!(doc["checks"].as_array().is_some_and(|c| c.len() >= 3));

    // Nothing was taken: the connector answers the message published before the checks.
    let mut p = connector_core::testkit::Process::start(&binary(kind), &vars);
    collector
        .wait_answered(&format!("{kind:?}: answered after the check"), &[payload])
        .await;
    p.stop().await;
    fx.cleanup().await;

    // A closed endpoint: named, exit 1.
    let closed = format!("http://127.0.0.1:{}/fn", free_port());
    let vars = env(kind, &fx, &closed, &[]);
    let (code, out) = check(kind, &vars, false);
    assert_eq!(code, Some(1), "{kind:?}:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("fail") && l.contains("(HTTP_ENDPOINT)")),
        "{kind:?}:\n{out}"
    );
    eprintln!("check: {kind:?}:\n{}", out.trim_end());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_reports_the_set_up_and_takes_nothing() {
    for kind in selected(&KINDS) {
        check_kind(kind).await;
    }
}

/// A source that does not exist fails the check, naming its variable. (Not Redis: a list
/// exists only while it holds something, so a missing one is an empty one.)
#[tokio::test(flavor = "multi_thread")]
async fn check_names_a_missing_source() {
    for kind in selected(&KINDS) {
        if kind == Kind::Redis {
            continue;
        }
        let fx = fixture(kind).await;
        let sink = Sink::start().await;
        let missing: &[(&'static str, &str)] = match kind {
            Kind::PubSub => &[("SUBSCRIPTION_NAME", "no-such-subscription")],
            Kind::Sqs => &[("QUEUE_URL", ""), ("TOPIC", "no-such-queue")],
            Kind::Nats => &[("TOPIC", "no-such-subject.in")],
            _ => &[("TOPIC", "no-such-source")],
        };
        let mut vars = env(kind, &fx, &sink.url("/fn"), missing);
        vars.retain(|(_, v)| !v.is_empty());
        let (code, out) = check(kind, &vars, false);
        let var = missing.last().map(|(k, _)| *k).unwrap_or("TOPIC");
        assert_eq!(code, Some(1), "{kind:?}:\n{out}");
        assert!(
            out.lines()
                .any(|l| l.starts_with("fail") && l.contains(&format!("({var})"))),
            "{kind:?}: a failed line naming {var}:\n{out}"
        );
        fx.cleanup().await;
    }
}

//! The custom connector against the local PostgreSQL (127.0.0.1:5432, database `test`, trust
//! auth; override with `PG_URL`), invoked through the real binary.

use connector_core::scaler::proto::external_scaler_client::ExternalScalerClient;
use connector_core::scaler::proto::{GetMetricsRequest, ScaledObjectRef};
use connector_core::testkit::{Process, Reply, Sink, assert_config_error, free_port, unique};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

const BIN: &str = env!("CARGO_BIN_EXE_custom-connector");

fn url() -> String {
    std::env::var("PG_URL")
        .unwrap_or_else(|_| "host=127.0.0.1 port=5432 user=postgres dbname=test".to_owned())
}

async fn db() -> Client {
    let (client, conn) = tokio_postgres::connect(&url(), NoTls)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is not reachable at {} ({e}); start it with: \
             pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
                url()
            )
        });
    tokio::spawn(conn);
    client
}

/// Source, response and error tables with names no other run uses.
async fn tables(db: &Client) -> [String; 3] {
    let base = unique("pgq").replace('-', "_");
    let names = [base.clone(), format!("{base}_out"), format!("{base}_err")];
    let sql = format!(
        "CREATE TABLE {0} (id bigserial PRIMARY KEY, payload bytea NOT NULL, claimed_until timestamptz);
         CREATE TABLE {1} (id bigserial PRIMARY KEY, payload bytea NOT NULL);
         CREATE TABLE {2} (id bigserial PRIMARY KEY, payload bytea NOT NULL);",
        names[0], names[1], names[2]
    );
    db.batch_execute(&sql).await.unwrap();
    names
}

async fn payloads(db: &Client, table: &str) -> Vec<Vec<u8>> {
    let rows = db
        .query(&format!("SELECT payload FROM {table} ORDER BY id"), &[])
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

async fn count(db: &Client, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

/// Polls the database (the only observer of the outcome) until `done`, for at most 60 s.
async fn until(db: &Client, out: &str, err: &str, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(db, out).await + count(db, err).await < total {
        assert!(
            Instant::now() < deadline,
            "not every row was answered in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env(
    sink: &Sink,
    [src, out, err]: &[String; 3],
    extra: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("TOPIC", src.clone()),
        ("RESPONSE_TOPIC", out.clone()),
        ("ERROR_TOPIC", err.clone()),
        ("HTTP_ENDPOINT", sink.url("/fn")),
        ("MAX_RETRIES", "0".to_owned()),
        ("CONTENT_TYPE", "application/octet-stream".to_owned()),
        ("DATABASE_URL", url()),
        ("POLL_INTERVAL", "50ms".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    env
}

#[tokio::test(flavor = "multi_thread")]
async fn every_row_answered_once_then_deleted() {
    let db = db().await;
    let t = tables(&db).await;
    let sink = Sink::start().await;
    // Upper-cases the body; refuses the poison row.
    sink.respond(|r| match r.body.as_ref() {
        b"poison" => Reply::status(400).body("no"),
        // Slow enough that rows overlap, so concurrency is visible at the sink.
        b => Reply::status(200)
            .body(b.to_ascii_uppercase())
            .delay(Duration::from_millis(30)),
    });
    let mut sent = Vec::new();
    for i in 0..40 {
        let p = if i == 17 {
            b"poison".to_vec()
        } else {
            format!("row-{i}").into_bytes()
        };
        db.execute(
            &format!("INSERT INTO {} (payload) VALUES ($1)", t[0]),
            &[&p],
        )
        .await
        .unwrap();
        sent.push(p);
    }
    let mut proc = Process::start(BIN, &env(&sink, &t, &[("MAX_IN_FLIGHT", "8")]));
    until(&db, &t[1], &t[2], 40).await;

    let mut responses = payloads(&db, &t[1]).await;
    responses.sort();
    let mut expected: Vec<Vec<u8>> = sent
        .iter()
        .filter(|p| *p != b"poison")
        .map(|p| p.to_ascii_uppercase())
        .collect();
    expected.sort();
    assert_eq!(responses, expected, "one response per row, byte for byte");
    let errors = payloads(&db, &t[2]).await;
    assert_eq!(errors.len(), 1, "exactly one error document");
    let doc = String::from_utf8(errors[0].clone()).unwrap();
    assert!(
        doc.contains("\"Payload\":\"poison\"") || doc.contains("poison"),
        "{doc}"
    );
    assert_eq!(count(&db, &t[0]).await, 0, "settled rows are deleted");
    let mut bodies: Vec<Vec<u8>> = sink.requests().iter().map(|r| r.body.to_vec()).collect();
    bodies.sort();
    sent.sort();
    assert_eq!(bodies, sent, "each row POSTed exactly once");
    assert!(sink.max_in_flight() > 1, "rows are handled concurrently");
    proc.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_of_a_killed_replica_come_back_after_the_claim_timeout() {
    let db = db().await;
    let t = tables(&db).await;
    let sink = Sink::start().await;
    sink.set_gate(false); // requests wait: the rows are claimed and unanswered
    for i in 0..5 {
        let p = format!("row-{i}").into_bytes();
        db.execute(
            &format!("INSERT INTO {} (payload) VALUES ($1)", t[0]),
            &[&p],
        )
        .await
        .unwrap();
    }
    let claim = [("CLAIM_TIMEOUT", "2s"), ("MAX_IN_FLIGHT", "5")];
    let mut first = Process::start(BIN, &env(&sink, &t, &claim));
    let deadline = Instant::now() + Duration::from_secs(30);
    while sink.in_flight() < 5 {
        assert!(
            Instant::now() < deadline,
            "the first replica did not claim every row"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    first.kill().await;
    sink.set_gate(true);
    let mut second = Process::start(BIN, &env(&sink, &t, &claim));
    until(&db, &t[1], &t[2], 5).await;
    assert_eq!(
        count(&db, &t[1]).await,
        5,
        "all five answered by the second replica"
    );
    assert_eq!(count(&db, &t[0]).await, 0);
    second.stop().await;
}

#[test]
fn bad_configuration_is_one_line_without_the_password() {
    let base: Vec<(&str, String)> = vec![
        ("TOPIC", "t".to_owned()),
        ("HTTP_ENDPOINT", "http://127.0.0.1:1/f".to_owned()),
        ("MAX_RETRIES", "0".to_owned()),
        ("CONTENT_TYPE", "text/plain".to_owned()),
        (
            "DATABASE_URL",
            "postgres://u:s3cret-pw@127.0.0.1/test".to_owned(),
        ),
    ];
    assert_config_error(
        BIN,
        &base,
        "DATABASE_URL",
        None,
        "DATABASE_URL",
        "s3cret-pw",
    );
    assert_config_error(
        BIN,
        &base,
        "MAX_IN_FLIGHT",
        Some("0"),
        "MAX_IN_FLIGHT",
        "s3cret-pw",
    );
    assert_config_error(
        BIN,
        &base,
        "CLAIM_TIMEOUT",
        Some("soon"),
        "CLAIM_TIMEOUT",
        "s3cret-pw",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scaler_pushes_activation_when_rows_arrive_and_when_they_are_drained() {
    let db = db().await;
    let t = tables(&db).await;
    let port = free_port();
    let mut scaler = Process::start_with_args(
        BIN,
        &["scaler"],
        &[
            ("DATABASE_URL", url()),
            ("TOPIC", t[0].clone()),
            ("SCALER_ADDR", format!("127.0.0.1:{port}")),
            ("SCALER_POLL_INTERVAL", "100ms".to_owned()),
        ],
    );
    scaler.wait_log("scaler listening", 1).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ExternalScalerClient::new(channel);
    let object = ScaledObjectRef {
        name: "pg-queue".into(),
        namespace: "default".into(),
        scaler_metadata: [
            ("scalerAddress", format!("127.0.0.1:{port}")),
            ("targetBacklog", "10".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
    };
    let spec = client.get_metric_spec(object.clone()).await.unwrap();
    let spec = &spec.get_ref().metric_specs[0];
    assert_eq!(
        (spec.metric_name.as_str(), spec.target_size),
        ("backlog", 10)
    );
    let metrics = async |client: &mut ExternalScalerClient<_>| {
        let request = GetMetricsRequest {
            scaled_object_ref: Some(object.clone()),
            metric_name: "backlog".into(),
        };
        client
            .get_metrics(request)
            .await
            .unwrap()
            .into_inner()
            .metric_values[0]
            .metric_value
    };

    let mut stream = client
        .stream_is_active(object.clone())
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .expect("a push within 30 s")
            .expect("stream healthy")
            .map(|r| r.result)
    };
    assert_eq!(
        next().await,
        Some(false),
        "empty table: inactive, sent at once"
    );
    for i in 0..25 {
        db.execute(
            &format!("INSERT INTO {} (payload) VALUES ($1)", t[0]),
            &[&format!("row-{i}").into_bytes()],
        )
        .await
        .unwrap();
    }
    assert_eq!(next().await, Some(true), "rows arrived: activation pushed");
    assert_eq!(metrics(&mut client).await, 25);
    assert!(
        client
            .is_active(object.clone())
            .await
            .unwrap()
            .into_inner()
            .result
    );

    let sink = Sink::start().await;
    let mut connector = Process::start(BIN, &env(&sink, &t, &[]));
    assert_eq!(next().await, Some(false), "drained: deactivation pushed");
    assert_eq!(
        count(&db, &t[1]).await,
        25,
        "every row answered before the backlog hit 0"
    );
    assert_eq!(metrics(&mut client).await, 0);
    connector.stop().await;

    scaler.stop().await;
    assert_eq!(next().await, None, "SIGTERM ends the stream cleanly");
}

#[test]
fn scaler_mode_bad_configuration_is_one_line_without_the_password() {
    let run = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(BIN)
            .arg("scaler")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(78), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("custom-connector scaler: configuration error:"));
        assert!(!stderr.contains("s3cret-pw"), "{stderr}");
        stderr
    };
    let url = ("DATABASE_URL", "postgres://u:s3cret-pw@127.0.0.1/test");
    assert!(run(&[("TOPIC", "t")]).contains("DATABASE_URL"));
    assert!(run(&[url]).contains("TOPIC"));
    assert!(run(&[url, ("TOPIC", "t"), ("SCALER_ADDR", "6000")]).contains("SCALER_ADDR"));
    let poll = [url, ("TOPIC", "t"), ("SCALER_POLL_INTERVAL", "often")];
    assert!(run(&poll).contains("SCALER_POLL_INTERVAL"));
}

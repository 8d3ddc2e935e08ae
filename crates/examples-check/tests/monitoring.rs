//! Keeps `examples/monitoring/` honest:
//! - `promtool check rules` and `promtool test rules` pass over the alert rules, and every alert
//!   has a unit test where it fires and one where it does not;
//! - a real Prometheus (Debian's `prometheus` package) scrapes a running Redis connector's
//!   `/metrics`; the test reads the series back through Prometheus' HTTP API (message counts,
//!   build info, broker connection, process metrics), the alert rules loaded into that
//!   Prometheus evaluate without error, and every dashboard query runs and finds data;
//! - the dashboard and the alert rules only name metrics the running connector exports.

use broker_fixtures::Kind;
use connector_core::testkit::{Process, Reply, Sink, free_port, http_get, unique};
use reliability::{Collector, binary, env, fixture};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use yaml_rust2::{Yaml, YamlLoader};

/// How long Prometheus may take to show what the connector did (it scrapes every second).
const SCRAPED: Duration = Duration::from_secs(60);

fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/monitoring")
}

/// A Prometheus tool, or a failure saying how to install it.
fn prometheus_tool(name: &str) -> Command {
    let found = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(name).is_file()));
    assert!(
        found,
        "{name} not found on PATH: `cargo xtask setup` installs it (Debian: apt-get install prometheus)"
    );
    Command::new(name)
}

fn promtool(args: &[&str]) {
    let out = prometheus_tool("promtool")
        .current_dir(monitoring_dir())
        .args(args)
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {}:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn yaml(file: &str) -> Yaml {
    let text = std::fs::read_to_string(monitoring_dir().join(file)).expect(file);
    YamlLoader::load_from_str(&text)
        .expect(file)
        .into_iter()
        .next()
        .expect(file)
}

fn alerts() -> Vec<(String, String)> {
    let rules = yaml("alerts.yml");
    let mut out = Vec::new();
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            out.push((
                rule["alert"].as_str().expect("alert name").to_owned(),
                rule["expr"].as_str().expect("expr").to_owned(),
            ));
        }
    }
    out
}

#[test]
fn promtool_checks_and_unit_tests_the_alert_rules() {
    promtool(&["check", "rules", "alerts.yml"]);
    promtool(&["test", "rules", "alerts.test.yml"]);
    // Each alert is tested both ways: a case where it fires, and one where it must not.
    let tests = yaml("alerts.test.yml");
    let mut fires = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for test in tests["tests"].as_vec().expect("tests") {
        for case in test["alert_rule_test"].as_vec().expect("alert_rule_test") {
            let name = case["alertname"].as_str().expect("alertname").to_owned();
            if case["exp_alerts"].as_vec().is_some_and(|a| a.is_empty()) {
                quiet.insert(name);
            } else {
                fires.insert(name);
            }
        }
    }
    for (alert, _) in alerts() {
        assert!(fires.contains(&alert), "no test where {alert} fires");
        assert!(quiet.contains(&alert), "no test where {alert} stays quiet");
    }
}

/// The metric names a `/metrics` text exposes: its samples, and what its `# TYPE` lines
/// declare (a family that has no sample yet, e.g. no publish failure so far, is still exported).
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|s| format!("{name}{s}")));
        } else if !line.starts_with('#')
            && let Some(name) = line.split(['{', ' ']).next().filter(|n| !n.is_empty())
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// The connector's metric names a PromQL expression uses.
fn names_in(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("keda_connector_") || t.starts_with("process_"))
        .map(str::to_owned)
        .collect()
}

/// Every query of the dashboard, with Grafana's variables replaced by what selects everything.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(monitoring_dir().join("dashboard.json")).expect("dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().expect("expr");
            out.push((
                panel["title"].as_str().expect("title").to_owned(),
                expr.replace("$__rate_interval", "1m")
                    .replace("$job", ".*")
                    .replace("$instance", ".*"),
            ));
        }
    }
    assert!(!out.is_empty(), "the dashboard has queries");
    out
}

fn encode(query: &str) -> String {
    percent_encoding::utf8_percent_encode(query, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// `GET /api/v1/<path>` of the Prometheus on `port`; the `data` of a successful answer.
async fn api(port: u16, path: &str) -> Value {
    let (status, body) = http_get(port, &format!("/api/v1/{path}")).await;
    let answer: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET /api/v1/{path}: {status} {e}: {body}"));
    assert_eq!(answer["status"], "success", "GET /api/v1/{path}: {body}");
    answer["data"].clone()
}

/// An instant query's samples as (labels, value).
async fn query(port: u16, promql: &str) -> Vec<(Value, f64)> {
    let data = api(port, &format!("query?query={}", encode(promql))).await;
    data["result"]
        .as_array()
        .expect("vector result")
        .iter()
        .map(|s| {
            let value = s["value"][1].as_str().expect("sample value");
            (s["metric"].clone(), value.parse().expect("a number"))
        })
        .collect()
}

/// Queries until `done` holds for the samples, for at most [`SCRAPED`].
async fn wait_query(
    port: u16,
    promql: &str,
    done: impl Fn(&[(Value, f64)]) -> bool,
) -> Vec<(Value, f64)> {
    let start = Instant::now();
    loop {
        let samples = query(port, promql).await;
        if done(&samples) {
            return samples;
        }
        assert!(
            start.elapsed() < SCRAPED,
            "Prometheus still answers {promql} with {samples:?} after {SCRAPED:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn single(samples: &[(Value, f64)]) -> Option<f64> {
    match samples {
        [(_, v)] => Some(*v),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_scrapes_a_running_connector() {
    let kind = Kind::Redis;
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    // Every fifth message fails, so the failure series move too.
    sink.respond(|r| {
        if r.body.ends_with(b"0") || r.body.ends_with(b"5") {
            Reply::status(500)
        } else {
            Reply::status(200).body(r.body.clone())
        }
    });
    let total = 30;
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| format!("monitoring-{i}").into_bytes())
        .collect();

    // Prometheus first, scraping the connector's admin port (as examples/*/connector.yaml
    // exposes it) before the connector listens there.
    let admin = free_port();
    let dir = std::env::temp_dir().join(unique("prometheus"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: connector\n    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n",
            monitoring_dir().join("alerts.yml").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut prometheus = Process::start_with_args(
        prometheus_tool("prometheus")
            .get_program()
            .to_str()
            .unwrap(),
        &[
            &format!("--config.file={}", config.display()),
            &format!("--storage.tsdb.path={}", dir.join("data").display()),
            &format!("--web.listen-address=127.0.0.1:{port}"),
        ],
        &[],
    );
    prometheus
        .wait_log("Server is ready to receive web requests", 1)
        .await;

    let mut connector = Process::start(
        &binary(kind),
        &env(
            kind,
            &fx,
            &sink.url("/fn"),
            &[("ADMIN_ADDR", &format!("127.0.0.1:{admin}"))],
        ),
    );
    // Half the messages, then the other half once Prometheus has seen the first: the counters
    // then move within every rate window the dashboard and the rules use.
    fx.publish(&payloads[..15], 0, |_| {}).await.unwrap();
    wait_query(
        port,
        "keda_connector_messages_received_total{job=\"connector\"}",
        |s| single(s) == Some(15.0),
    )
    .await;
    fx.publish(&payloads[15..], 15, |_| {}).await.unwrap();
    collector
        .wait("24 responses and 6 error documents", |s| {
            s.responses.len() == 24 && s.errors.len() == 6
        })
        .await;

    let counted = |name: &str, want: f64| {
        let promql = format!("{name}{{job=\"connector\"}}");
        async move {
            wait_query(port, &promql, |s| single(s) == Some(want)).await;
        }
    };
    counted("keda_connector_messages_received_total", 30.0).await;
    counted("keda_connector_messages_succeeded_total", 24.0).await;
    counted("keda_connector_messages_failed_total", 6.0).await;
    counted("keda_connector_broker_connected", 1.0).await;
    let settled = wait_query(
        port,
        "sum(keda_connector_messages_settled_total{job=\"connector\",action=\"ack\",result=\"ok\"})",
        |s| single(s) == Some(30.0),
    )
    .await;
    assert_eq!(single(&settled), Some(30.0));
    let build = query(port, "keda_connector_build_info").await;
    assert_eq!(build.len(), 1, "{build:?}");
    assert_eq!(build[0].0["connector"], "redis-http-connector");
    assert_eq!(build[0].0["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        build[0].0["revision"]
            .as_str()
            .is_some_and(|r| !r.is_empty())
    );
    for (series, least) in [
        ("process_resident_memory_bytes", 1e6),
        ("process_virtual_memory_bytes", 1e6),
        ("process_open_fds", 3.0),
        ("process_max_fds", 64.0),
        ("process_start_time_seconds", 1.7e9),
    ] {
        let samples = query(port, series).await;
        assert!(
            single(&samples).is_some_and(|v| v >= least),
            "{series}: {samples:?}"
        );
    }
    let cpu = query(port, "process_cpu_seconds_total").await;
    assert!(single(&cpu).is_some_and(|v| v > 0.0), "{cpu:?}");

    // Every dashboard query runs, its values are numbers (a ratio over an empty window would be
    // NaN), and every panel shows data (a panel may also graph series that only appear when
    // something goes wrong, e.g. diverted messages).
    let queries = dashboard_queries();
    let mut panels: Vec<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    panels.dedup();
    for title in panels {
        let start = Instant::now();
        loop {
            let mut shown = false;
            for (_, promql) in queries.iter().filter(|(t, _)| t == title) {
                let samples = query(port, promql).await;
                assert!(
                    samples.iter().all(|(_, v)| v.is_finite()),
                    "{title}: {promql}: {samples:?}"
                );
                shown |= !samples.is_empty();
            }
            if shown {
                break;
            }
            assert!(start.elapsed() < SCRAPED, "panel {title:?} shows no data");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // The alert rules evaluate against the real series without error, and none fires for a
    // connector that is fine (KedaConnectorFunctionFailing needs 10 minutes).
    let start = Instant::now();
    loop {
        let groups = api(port, "rules").await;
        let rules: Vec<Value> = groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert_eq!(rules.len(), alerts().len(), "{groups}");
        let evaluated = rules.iter().all(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_some_and(|t| !t.starts_with("0001"))
        });
        if evaluated {
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "{rule}");
                assert_ne!(rule["state"], "firing", "{rule}");
            }
            break;
        }
        assert!(start.elapsed() < SCRAPED, "rules not evaluated: {groups}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // What the dashboard and the rules name, the connector exports.
    let (status, exposition) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let exported = exported_names(&exposition);
    let mut used = BTreeSet::new();
    for (_, promql) in dashboard_queries() {
        used.extend(names_in(&promql));
    }
    for (_, expr) in alerts() {
        used.extend(names_in(&expr));
    }
    // `keda_connector_mode` only exists where a connector chose something at start (Kinesis:
    // where checkpoints are kept); crates/aws-kinesis-http-connector/tests checks it there.
    used.remove("keda_connector_mode");
    let missing: Vec<&String> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "not exported: {missing:?}\n{exposition}"
    );

    connector.stop().await;
    prometheus.stop().await;
    fx.cleanup().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn names_are_read_from_promql_and_from_the_exposition() {
    assert_eq!(
        names_in("sum by (le) (rate(keda_connector_x_bucket{job=~\"a\"}[1m])) / process_open_fds"),
        BTreeSet::from([
            "keda_connector_x_bucket".to_owned(),
            "process_open_fds".to_owned()
        ])
    );
    let exposition = "# TYPE keda_connector_a counter\n# TYPE keda_connector_h histogram\n\
                      keda_connector_g{x=\"1\"} 2\n# EOF\n";
    let names = exported_names(exposition);
    for n in [
        "keda_connector_a_total",
        "keda_connector_h_bucket",
        "keda_connector_h_count",
        "keda_connector_g",
    ] {
        assert!(names.contains(n), "{n}: {names:?}");
    }
}

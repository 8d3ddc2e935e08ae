//! A connector process calling an endpoint that wants a bearer token, while the token file is
//! rotated under load (as a projected service-account token or a Vault agent rotates it): every
//! message is answered, none becomes an error document, and the new token is in use. The
//! variables' own behaviour (OAuth2, mutual TLS, headers) is tested against real servers in
//! `crates/connector-core/tests/endpoint_auth.rs`.

use broker_fixtures::Kind;
use connector_core::testkit::{Process, Reply, Sink, unique};
use reliability::{Collector, WAIT, binary, env, fixture};
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn a_token_file_rotated_under_load_fails_no_message() {
    let kind = Kind::Redis;
    let mut fx = fixture(kind).await;
    let collector = Collector::start(fx.take_outcomes());
    let valid: Arc<Mutex<HashSet<String>>> = Arc::new(Mutex::new(["old".to_owned()].into()));
    let sink = Sink::start().await;
    let accepted = valid.clone();
    let refused = Arc::new(AtomicUsize::new(0));
    let counted = refused.clone();
    sink.respond(move |r| {
        let token = r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let mut valid = accepted.lock().unwrap();
        // The old token stops being valid the moment the new one is seen: calls already on
        // their way with the old one are refused.
        if token == Some("new") {
            valid.remove("old");
        }
        match token {
            Some(t) if valid.contains(t) => Reply::status(200)
                .body(r.body.clone())
                .delay(Duration::from_millis(5)),
            _ => {
                counted.fetch_add(1, Ordering::SeqCst);
                Reply::status(401)
            }
        }
    });
    let token = std::env::temp_dir().join(unique("bearer-token"));
    std::fs::write(&token, "old\n").unwrap();
    let total = 600;
    let payloads: Vec<Vec<u8>> = (0..total)
        .map(|i| format!("auth-{i}").into_bytes())
        .collect();
    fx.publish(&payloads, 0, |_| {}).await.unwrap();
    let path = token.to_string_lossy().into_owned();
    let mut p = Process::start(
        &binary(kind),
        &env(
            kind,
            &fx,
            &sink.url("/fn"),
            &[
                ("HTTP_BEARER_TOKEN_FILE", &path),
                ("HTTP_AUTH_RELOAD_INTERVAL", "200ms"),
            ],
        ),
    );
    sink.wait_for_requests(50, WAIT).await;
    // The new token is valid before the file changes.
    valid.lock().unwrap().insert("new".into());
    std::fs::write(&token, "new\n").unwrap();
    sink.wait_for_request("a call with the rotated token", WAIT, |r| {
        r.headers
            .get("authorization")
            .is_some_and(|v| v == "Bearer new")
    })
    .await;
    let answered_before = sink.count();
    collector
        .wait_answered("every message answered across the rotation", &payloads)
        .await;
    p.stop().await;
    fx.cleanup().await;
    collector.without_errors("the token rotation");
    let refused = refused.load(Ordering::SeqCst);
    assert!(
        answered_before < total,
        "the rotation happened mid-run ({answered_before} of {total} called before)"
    );
    std::fs::remove_file(&token).unwrap();
    eprintln!(
        "reliability: Redis: bearer token file rotated after {answered_before} of {total} calls \
         ({refused} later calls with the old token refused and sent again); all {total} \
         answered, 0 error documents"
    );
}

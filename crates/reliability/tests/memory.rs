//! Memory stays flat while a large backlog drains: the Redis connector against the local Redis,
//! the function answering at once, the connector's resident set sampled every second. Every
//! message is counted at the function and in the response list.
//!
//! CI drains 200 000 messages (about 2 minutes with the debug build); `RELIABILITY_SOAK=1` drains
//! the 1 000 000 of the soak run (about 11 minutes), as docs/reliability.md reports.

use connector_core::testkit::{Process, Sink, unique};
use redis::AsyncCommands;
use reliability::binary;
use std::time::{Duration, Instant};

/// The backlog: the short profile unless `RELIABILITY_SOAK` is set. The short one still shows a
/// leak of 100 bytes per message: 170 000 messages drain after the early window, 17 MB against
/// the 8 MB allowed below.
fn backlog() -> usize {
    if std::env::var_os("RELIABILITY_SOAK").is_some_and(|v| !v.is_empty() && v != "0") {
        1_000_000
    } else {
        200_000
    }
}
/// How much the resident set may grow in the second half of the drain over its peak while the
/// first 5–15 % drained (allocator noise, not growth with the backlog).
const FLAT_MB: f64 = 8.0;

/// `VmRSS` of `pid` in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_stays_flat_while_a_large_backlog_drains() {
    let backlog = backlog();
    let client = redis::Client::open("redis://127.0.0.1:6379").unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis is not reachable at 127.0.0.1:6379; start it with: redis-server --daemonize yes --port 6379 --save \"\"");
    let list = unique("memory");
    let (responses, errors) = (format!("{list}-responses"), format!("{list}-errors"));
    for chunk in (0..backlog).collect::<Vec<_>>().chunks(10_000) {
        let mut pipe = redis::pipe();
        for i in chunk {
            pipe.rpush(&list, format!("m{i:07}")).ignore();
        }
        pipe.query_async::<()>(&mut conn).await.unwrap();
    }

    let sink = Sink::start().await;
    sink.forget_requests();
    let env: Vec<(&str, String)> = vec![
        ("ADDRESS", "127.0.0.1:6379".into()),
        ("TOPIC", list.clone()),
        ("RESPONSE_TOPIC", responses.clone()),
        ("ERROR_TOPIC", errors.clone()),
        ("CONSUMER_ID", format!("{list}-pod")),
        ("HTTP_ENDPOINT", sink.url("/fn")),
        ("MAX_RETRIES", "0".into()),
        ("CONTENT_TYPE", "text/plain".into()),
        ("MAX_IN_FLIGHT", "8".into()),
    ];
    let started = Instant::now();
    let mut p = Process::start(&binary(broker_fixtures::Kind::Redis), &env);
    let pid = p.id().expect("running");
    // (share of the backlog answered, RSS in MB), once a second: the samples are the
    // measurement, not a synchronisation.
    let mut samples: Vec<(f64, f64)> = Vec::new();
    let deadline = started + Duration::from_secs(1200);
    loop {
        let answered: usize = conn.llen(&responses).await.unwrap();
        if let Some(rss) = rss_mb(pid) {
            samples.push((answered as f64 / backlog as f64, rss));
        }
        if answered >= backlog {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{answered} of {backlog} answered after {:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drained = started.elapsed();
    p.stop().await;

    let left: usize = conn.llen(&list).await.unwrap();
    let failed: usize = conn.llen(&errors).await.unwrap();
    let answered: usize = conn.llen(&responses).await.unwrap();
    let _: () = conn.del(&[&list, &responses, &errors]).await.unwrap();
    assert_eq!(
        (answered, failed, left, sink.count()),
        (backlog, 0, 0, backlog),
        "(responses, error documents, left in the source, function calls)"
    );
    let peak = |from: f64, to: f64| {
        samples
            .iter()
            .filter(|(share, _)| (from..to).contains(share))
            .map(|(_, rss)| *rss)
            .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))))
    };
    let early = peak(0.05, 0.15).expect("samples while 5–15 % drained");
    let late = peak(0.5, 1.01).expect("samples in the second half");
    let low = samples.iter().map(|s| s.1).fold(f64::MAX, f64::min);
    eprintln!(
        "reliability: Redis: {backlog} message backlog drained in {:.0} s ({} samples): RSS {low:.1}–{:.1} MB, peak {early:.1} MB at 5–15 %, {late:.1} MB in the second half",
        drained.as_secs_f64(),
        samples.len(),
        samples.iter().map(|s| s.1).fold(0.0, f64::max),
    );
    assert!(
        late <= early + FLAT_MB,
        "RSS grew with the drain: {early:.1} MB at 5–15 %, {late:.1} MB in the second half"
    );
}

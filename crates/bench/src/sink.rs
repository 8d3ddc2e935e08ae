//! The benchmark's HTTP sink: answers every POST after a fixed latency with a body of a fixed
//! size, and keeps only counters and latencies (never the requests), so a million messages cost
//! a few megabytes.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// What the sink has seen.
#[derive(Debug, Default)]
pub struct Seen {
    /// Requests answered.
    pub count: AtomicU64,
    /// Arrival of the first and the latest request.
    pub first_last: Mutex<Option<(Instant, Instant)>>,
    /// Publish-to-arrival latencies (µs) of requests whose payload carries `"ts"`, when
    /// recording is on.
    pub latencies: Mutex<Vec<u64>>,
    /// Whether to record latencies.
    pub record: std::sync::atomic::AtomicBool,
    notify: Notify,
}

impl Seen {
    /// Waits until `n` requests were answered, or `limit` passes; returns whether they were.
    pub async fn wait_for(&self, n: u64, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.notify.notified();
            if self.count.load(Ordering::SeqCst) >= n {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.count.load(Ordering::SeqCst) >= n;
            }
        }
    }
}

/// Microseconds since the epoch: the clock payloads are stamped with.
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn stamp(body: &[u8]) -> Option<u64> {
    // Payloads start with {"ts":<µs>,
    let text = std::str::from_utf8(body.get(..40).unwrap_or(body)).ok()?;
    let rest = text.strip_prefix("{\"ts\":")?;
    let end = rest.find(',')?;
    rest[..end].parse().ok()
}

/// Starts a sink on 127.0.0.1; returns its URL and its counters.
pub async fn start(latency: Duration, response_size: usize) -> (String, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let addr: SocketAddr = listener.local_addr().expect("sink address");
    let seen = Arc::new(Seen::default());
    let body = Bytes::from(vec![b'r'; response_size]);
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let (s, body) = (s.clone(), body.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
                    let (s, body) = (s.clone(), body.clone());
                    async move {
                        let payload = req.into_body().collect().await.map(|b| b.to_bytes());
                        let arrived = Instant::now();
                        if s.record.load(Ordering::Relaxed)
                            && let Some(ts) = payload.as_ref().ok().and_then(|p| stamp(p))
                        {
                            let lat = now_us().saturating_sub(ts);
                            s.latencies.lock().expect("lock").push(lat);
                        }
                        if !latency.is_zero() {
                            tokio::time::sleep(latency).await;
                        }
                        {
                            let mut fl = s.first_last.lock().expect("lock");
                            match fl.as_mut() {
                                Some((_, last)) => *last = arrived,
                                None => *fl = Some((arrived, arrived)),
                            }
                        }
                        s.count.fetch_add(1, Ordering::SeqCst);
                        s.notify.notify_waiters();
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://{addr}/bench"), seen)
}

/// The same ~100-byte JSON payload shape every loader sends: `{"ts":<µs>,"seq":<n>,"pad":"…"}`.
pub fn payload(seq: u64) -> Vec<u8> {
    let head = format!("{{\"ts\":{},\"seq\":{seq},\"pad\":\"", now_us());
    let pad = 100usize.saturating_sub(head.len() + 2);
    let mut v = head.into_bytes();
    v.extend(std::iter::repeat_n(b'x', pad));
    v.extend_from_slice(b"\"}");
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn payloads_carry_their_stamp() {
        let p = super::payload(7);
        assert_eq!(p.len(), 100);
        let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(super::stamp(&p), v["ts"].as_u64());
    }
}

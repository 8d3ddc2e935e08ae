//! An OTLP/gRPC trace receiver on loopback (the collector's `TraceService`), so a test can
//! check the spans a connector exports: ids, parent links, names, kinds and attributes.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// One received span, ids in lowercase hex as in `traceparent`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedSpan {
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; empty for a root span.
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// OTLP `SpanKind`: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    /// The resource's `service.name`.
    pub service: String,
}

impl ReceivedSpan {
    /// The value of attribute `key`.
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Debug, Default)]
struct Received {
    spans: Mutex<Vec<ReceivedSpan>>,
    arrived: Notify,
}

/// The service side: shares [`Received`] with the [`OtlpReceiver`].
#[derive(Debug)]
struct Collector(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = Vec::new();
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .map(|kv| text(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    out.push(ReceivedSpan {
                        trace_id: hex::encode(&span.trace_id),
                        span_id: hex::encode(&span.span_id),
                        parent_span_id: hex::encode(&span.parent_span_id),
                        name: span.name,
                        kind: span.kind,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
                                )
                            })
                            .collect(),
                        status: span.status.map_or(0, |s| s.code),
                        service: service.clone(),
                    });
                }
            }
        }
        self.0.spans.lock().expect("spans").extend(out);
        self.0.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    addr: std::net::SocketAddr,
    received: Arc<Received>,
    _server: tokio_util::task::AbortOnDropHandle<()>,
}

impl OtlpReceiver {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local address");
        let received = Arc::new(Received::default());
        let service = TraceServiceServer::new(Collector(received.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await;
        });
        Self {
            addr,
            received,
            _server: tokio_util::task::AbortOnDropHandle::new(server),
        }
    }

    /// `http://127.0.0.1:<port>`, for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().expect("spans").clone()
    }

    /// Waits for `n` spans and requires no more than `n` (one process, one POST and one send
    /// span a message, with no retries).
    pub async fn wait_for_exactly(&self, n: usize, limit: Duration) -> Vec<ReceivedSpan> {
        let spans = self
            .wait_for(&format!("{n} spans"), limit, |s| s.len() >= n)
            .await;
        assert_eq!(spans.len(), n, "{spans:#?}");
        spans
    }

    /// Waits until `done` holds for the spans received, for at most `limit`; panics with what
    /// arrived otherwise.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.received.arrived.notified();
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "{what}: not within {limit:?}; {} spans received: {:#?}",
                    spans.len(),
                    spans
                );
            }
        }
    }
}

/// The trace id the propagation tests put on their messages.
pub const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// The span id (the publisher's) the propagation tests put on their messages.
pub const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// `traceparent` for a message in [`TRACE_ID`] under [`PARENT_SPAN_ID`], sampled.
pub fn inbound_traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
}

/// A `traceparent` value as (trace id, span id); panics on anything but version 00.
pub fn parse_traceparent(value: &str) -> (String, String) {
    let parts: Vec<&str> = value.split('-').collect();
    assert!(
        parts.len() == 4 && parts[0] == "00",
        "not a version-00 traceparent: {value}"
    );
    (parts[1].to_owned(), parts[2].to_owned())
}

/// Asserts the chain of one outcome record whose `traceparent` is `traceparent`: it is a send
/// span of the message's trace ([`TRACE_ID`]) for `outcome` (`response` or `error`) on broker
/// `system`, whose parent is the message's process span, whose parent is the publisher's
/// [`PARENT_SPAN_ID`].
pub fn assert_outcome_continues_trace(
    spans: &[ReceivedSpan],
    traceparent: &str,
    outcome: &str,
    system: &str,
) {
    let (trace, span_id) = parse_traceparent(traceparent);
    assert_eq!(
        trace, TRACE_ID,
        "the message's trace continues to its {outcome}"
    );
    let find = |id: &str| {
        spans
            .iter()
            .find(|s| s.span_id == id)
            .unwrap_or_else(|| panic!("no span {id} among {spans:#?}"))
    };
    let send = find(&span_id);
    assert_eq!(send.kind, 4, "a producer span: {send:?}");
    assert_eq!(send.attribute("keda_connector.outcome"), Some(outcome));
    assert_eq!(send.attribute("messaging.system"), Some(system));
    let process = find(&send.parent_span_id);
    assert_eq!(process.kind, 5, "a consumer span: {process:?}");
    assert_eq!(process.parent_span_id, PARENT_SPAN_ID);
    assert_eq!(process.attribute("messaging.system"), Some(system));
}

/// The function of the propagation tests: 500 for a body starting with `bad` (an error
/// document), else 200 echoing the body (a response).
pub fn fail_bad_echo_the_rest(sink: &super::Sink) {
    sink.respond(|r| {
        if r.body.starts_with(b"bad") {
            super::Reply::status(500)
        } else {
            super::Reply::status(200).body(r.body.clone())
        }
    });
}

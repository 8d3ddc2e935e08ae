//! OpenTelemetry tracing of each message's path: a `process` span for its life in the
//! connector (continuing the W3C Trace Context the message carries), a child span per HTTP
//! attempt (whose context goes to the function as `traceparent`), and one for the write of its
//! outcome (whose context goes into the response or error message's headers where the broker
//! has headers). Spans go over OTLP/gRPC to `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); the exporter and the SDK read the other standard
//! `OTEL_*` variables themselves (headers, timeout, compression, sampler, service name,
//! resource attributes). With neither endpoint set nothing is created per message and no
//! header is added: requests stay byte-identical.

use crate::config::Vars;
use crate::dispatch::Message;
use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::Arc;

/// Whether and where spans are exported, from the standard variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceSettings {
    /// The OTLP/gRPC endpoint (`http://collector:4317`); `None`: tracing is off.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`; the connector's name when unset.
    pub service_name: Option<String>,
}

impl TraceSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else `OTEL_EXPORTER_OTLP_ENDPOINT` (empty = unset,
    /// as the OpenTelemetry specification says); off when `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`.
    ///
    /// Never an error: the original ignored these variables, so a pod environment that sets
    /// them for other containers (an operator injecting them everywhere) must not stop the
    /// swap. What cannot be used is a warning (without the value) and tracing stays off, as
    /// the specification asks of SDKs.
    pub fn from_vars(vars: &Vars<'_>, warnings: &mut Vec<String>) -> Self {
        let disabled = vars
            .optional_trimmed("OTEL_SDK_DISABLED")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let service_name = vars
            .optional_trimmed("OTEL_SERVICE_NAME")
            .filter(|v| !v.is_empty());
        let off = Self {
            endpoint: None,
            service_name: service_name.clone(),
        };
        let exporter = vars
            .optional_trimmed("OTEL_TRACES_EXPORTER")
            .filter(|v| !v.is_empty());
        match exporter.as_deref() {
            None | Some("otlp") => {}
            Some("none") => return off,
            Some(_) => {
                warnings.push(
                    "OTEL_TRACES_EXPORTER: only otlp (or none) is supported; spans are not \
                     exported"
                        .to_owned(),
                );
                return off;
            }
        }
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .into_iter()
        .find_map(|var| {
            vars.optional_trimmed(var)
                .filter(|v| !v.is_empty())
                .map(|v| (var, v))
        });
        let Some((var, value)) = endpoint else {
            return off;
        };
        if disabled {
            return off;
        }
        // Only gRPC is built in: sending it to an http/protobuf port (4318) would fail on
        // every export, unseen.
        for protocol in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(p) = vars.optional_trimmed(protocol).filter(|v| !v.is_empty()) {
                if p != "grpc" {
                    warnings.push(format!(
                        "{protocol}: only grpc is supported (point the endpoint at the \
                         collector's OTLP/gRPC port, usually 4317); spans are not exported"
                    ));
                    return off;
                }
                break;
            }
        }
        match check_endpoint(&value) {
            Ok(()) => Self {
                endpoint: Some(value),
                service_name,
            },
            Err(expected) => {
                warnings.push(format!("{var}: {expected}; spans are not exported"));
                off
            }
        }
    }
}

/// An `http://host[:port]` gRPC endpoint. `https` would need the exporter's TLS stack, which the
/// images do not carry (see docs/configuration.md, "Tracing"): a collector agent next to the
/// connector is the usual set-up.
fn check_endpoint(value: &str) -> Result<(), &'static str> {
    let expected = "expected an OTLP/gRPC endpoint such as http://otel-collector:4317";
    let uri: http::Uri = value.parse().map_err(|_| expected)?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(host)) if !host.is_empty() => Ok(()),
        (Some("https"), Some(_)) => Err(
            "expected an http:// endpoint (this build exports without TLS: send to a collector \
             agent over http://)",
        ),
        _ => Err(expected),
    }
}

/// The engine's tracer: off (nothing per message) or exporting.
#[derive(Debug, Clone, Default)]
pub struct Traces(Option<Arc<Exporting>>);

#[derive(Debug)]
struct Exporting {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// `messaging.system`.
    system: &'static str,
    /// The endpoint's attributes, without user information or query (they can hold secrets).
    server_address: String,
    server_port: Option<u16>,
    url: String,
}

/// Error building the exporter.
pub type TraceSetupError = opentelemetry_otlp::ExporterBuildError;

impl Traces {
    /// No tracing.
    pub const fn off() -> Self {
        Self(None)
    }

    /// Exports to `settings.endpoint` when set. Must run inside the Tokio runtime (the gRPC
    /// channel's tasks live there). `service` names the service unless `OTEL_SERVICE_NAME`
    /// does; `system` is `messaging.system` (`kafka`, `rabbitmq`, ...); `endpoint` is
    /// `HTTP_ENDPOINT`.
    pub fn start(
        settings: &TraceSettings,
        service: &'static str,
        version: &'static str,
        system: &'static str,
        endpoint: &http::Uri,
    ) -> Result<Self, TraceSetupError> {
        use opentelemetry_otlp::WithExportConfig;
        let Some(target) = &settings.endpoint else {
            return Ok(Self::off());
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(target)
            .build()?;
        // The resource builder also reads OTEL_RESOURCE_ATTRIBUTES.
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(
                settings
                    .service_name
                    .clone()
                    .unwrap_or_else(|| service.to_owned()),
            )
            .with_attribute(KeyValue::new("service.version", version))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer(service);
        let url = format!(
            "{}://{}{}",
            endpoint.scheme_str().unwrap_or("http"),
            endpoint
                .authority()
                .map(|a| a.as_str().rsplit('@').next().unwrap_or_default())
                .unwrap_or_default(),
            endpoint.path()
        );
        Ok(Self(Some(Arc::new(Exporting {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            system,
            server_address: endpoint.host().unwrap_or_default().to_owned(),
            server_port: endpoint.port_u16(),
            url,
        }))))
    }

    /// Whether spans are exported.
    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Sends what is still buffered and stops the exporter (at exit; blocks up to `limit`).
    pub fn shutdown(&self, limit: std::time::Duration) {
        if let Some(e) = &self.0
            && let Err(err) = e.provider.shutdown_with_timeout(limit)
        {
            tracing::warn!(error = %err, "flushing the last spans failed");
        }
    }

    /// The `process` span of a message taken from `topic`, continuing the trace its headers
    /// carry; `None` when tracing is off.
    pub(crate) fn message(&self, topic: &str, message: &Message) -> Option<MessageTrace> {
        let e = self.0.as_ref()?;
        let parent = e.propagator.extract(&MessageHeaders(&message.headers));
        let mut attributes = vec![
            KeyValue::new("messaging.system", e.system),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new(
                "messaging.message.body.size",
                i64::try_from(message.payload.len()).unwrap_or(i64::MAX),
            ),
        ];
        if let Some(id) = &message.id {
            attributes.push(KeyValue::new("messaging.message.id", id.clone()));
        }
        if let Some(count) = message.delivery_count {
            attributes.push(KeyValue::new(
                "messaging.message.delivery_count",
                i64::from(count),
            ));
        }
        let span = e
            .tracer
            .span_builder(format!("process {topic}"))
            .with_kind(SpanKind::Consumer)
            .with_attributes(attributes)
            .start_with_context(&e.tracer, &parent);
        Some(MessageTrace {
            exporting: e.clone(),
            cx: parent.with_span(span),
        })
    }
}

/// One message's trace: its `process` span, parent of its HTTP attempts and outcome write.
#[derive(Debug)]
pub(crate) struct MessageTrace {
    exporting: Arc<Exporting>,
    cx: Context,
}

impl MessageTrace {
    /// A span for the log lines of this message: JSON log lines inside it carry
    /// `span.trace_id` and `span.span_id`.
    pub(crate) fn log_span(&self) -> tracing::Span {
        let sc = self.cx.span().span_context().clone();
        // At ERROR level so that it exists whatever LOG_LEVEL lets through: the lines that most
        // need the trace are warnings and errors.
        tracing::error_span!(
            "message",
            trace_id = %sc.trace_id(),
            span_id = %sc.span_id()
        )
    }

    /// Starts the span of HTTP attempt `attempt` (1-based) and puts its context into `headers`
    /// (replacing a `traceparent` the message brought along: the function's parent is this
    /// attempt).
    pub(crate) fn http_attempt(&self, attempt: u32, headers: &mut HeaderMap) -> AttemptSpan {
        let e = &self.exporting;
        let mut attributes = vec![
            KeyValue::new("http.request.method", "POST"),
            KeyValue::new("server.address", e.server_address.clone()),
            KeyValue::new("url.full", e.url.clone()),
        ];
        if let Some(port) = e.server_port {
            attributes.push(KeyValue::new("server.port", i64::from(port)));
        }
        if attempt > 1 {
            attributes.push(KeyValue::new(
                "http.request.resend_count",
                i64::from(attempt - 1),
            ));
        }
        let span = e
            .tracer
            .span_builder("POST")
            .with_kind(SpanKind::Client)
            .with_attributes(attributes)
            .start_with_context(&e.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        headers.remove("tracestate");
        e.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        AttemptSpan(cx)
    }

    /// Starts the span of the write of the outcome to `topic` and puts its context into
    /// `headers` (which the broker's publisher writes with the record, where it has headers).
    pub(crate) fn publish(&self, topic: &str, error: bool, headers: &mut HeaderMap) -> Context {
        let e = &self.exporting;
        let span = e
            .tracer
            .span_builder(format!("send {topic}"))
            .with_kind(SpanKind::Producer)
            .with_attributes([
                KeyValue::new("messaging.system", e.system),
                KeyValue::new("messaging.destination.name", topic.to_owned()),
                KeyValue::new("messaging.operation.type", "send"),
                KeyValue::new("messaging.operation.name", "send"),
                KeyValue::new(
                    "keda_connector.outcome",
                    if error { "error" } else { "response" },
                ),
            ])
            .start_with_context(&e.tracer, &self.cx);
        let cx = self.cx.with_span(span);
        headers.remove("tracestate");
        e.propagator
            .inject_context(&cx, &mut HeaderInjector(headers));
        cx
    }

    /// Ends the `process` span: an error when the message ended in an error document
    /// (`error`) or could not be settled.
    pub(crate) fn end(self, error: Option<&'static str>) {
        let span = self.cx.span();
        if let Some(description) = error {
            span.set_status(Status::error(description));
        }
        span.end();
    }
}

/// An HTTP attempt's span; ends when [`AttemptSpan::finish`] is called.
#[derive(Debug)]
pub(crate) struct AttemptSpan(Context);

impl AttemptSpan {
    /// Records the answer (`Some(status)`) or the transport failure, and ends the span.
    pub(crate) fn finish(self, status: Option<http::StatusCode>) {
        let span = self.0.span();
        match status {
            Some(status) => {
                span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status.as_u16()),
                ));
                if !status.is_success() {
                    span.set_attribute(KeyValue::new("error.type", status.as_str().to_owned()));
                    span.set_status(Status::error(""));
                }
            }
            None => {
                span.set_attribute(KeyValue::new("error.type", "transport"));
                span.set_status(Status::error(""));
            }
        }
        span.end();
    }
}

/// Marks a publish span failed (or not) and ends it.
pub(crate) fn end_publish(cx: Context, failed: bool) {
    let span = cx.span();
    if failed {
        span.set_status(Status::error("the broker did not accept the write"));
    }
    span.end();
}

/// A message's headers as the propagator reads them (names compared case-insensitively: AMQP
/// and SQS keep the publisher's case).
struct MessageHeaders<'a>(&'a [(String, String)]);

impl Extractor for MessageHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator sets `tracestate` even when the trace has none: an empty header or
        // attribute is noise, and SQS refuses an empty attribute value.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> (TraceSettings, Vec<String>) {
        let env = pairs.to_vec();
        let mut warnings = Vec::new();
        let s = TraceSettings::from_vars(&Vars::new(&env), &mut warnings);
        (s, warnings)
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert_eq!(settings(&[]), (TraceSettings::default(), vec![]));
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "")]).0.endpoint,
            None
        );
        let on = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]);
        assert_eq!(on.0.endpoint.as_deref(), Some("http://collector:4317"));
        assert!(on.1.is_empty());
        let traces_first = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317"),
        ]);
        assert_eq!(traces_first.0.endpoint.as_deref(), Some("http://b:4317"));
        for off in [
            ("OTEL_SDK_DISABLED", "TRUE"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"), off]);
            assert_eq!(s, (TraceSettings::default(), vec![]), "{off:?}");
        }
    }

    #[test]
    fn a_protocol_other_than_grpc_is_a_warning_and_no_tracing() {
        let (s, warnings) = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(s.endpoint, None);
        assert!(
            warnings[0].starts_with("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{warnings:?}"
        );
        let (s, warnings) = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(s.endpoint.as_deref(), Some("http://collector:4317"));
        assert!(
            warnings.is_empty(),
            "the traces variable wins: {warnings:?}"
        );
    }

    #[test]
    fn an_empty_value_is_not_injected() {
        let mut headers = HeaderMap::new();
        let mut injector = HeaderInjector(&mut headers);
        injector.set("tracestate", String::new());
        injector.set("traceparent", "00-1-2-01".to_owned());
        assert!(headers.get("tracestate").is_none());
        assert_eq!(headers["traceparent"], "00-1-2-01");
    }

    /// What the original ignored cannot stop a start: a warning naming the variable (never
    /// its value, which may hold credentials) and no tracing.
    #[test]
    fn an_unusable_endpoint_or_exporter_is_a_warning_naming_its_variable() {
        for (var, value) in [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "tempo:4317"),
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://user:S3CRET@collector:4317",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "not a url"),
            ("OTEL_TRACES_EXPORTER", "zipkin"),
        ] {
            let mut env = vec![(var, value)];
            if var != "OTEL_EXPORTER_OTLP_ENDPOINT" {
                env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ok:4317"));
            }
            let (s, warnings) = settings(&env);
            assert_eq!(s.endpoint, None, "{var}={value}");
            assert_eq!(warnings.len(), 1, "{warnings:?}");
            assert!(warnings[0].starts_with(var), "{warnings:?}");
            assert!(!warnings[0].contains(value), "{warnings:?}");
        }
    }
}

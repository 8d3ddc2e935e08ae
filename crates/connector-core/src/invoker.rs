//! One HTTP POST per message, with the upstream contract and the fixes of §6.2: `MAX_RETRIES + 1`
//! attempts, exponential backoff with jitter, `Retry-After`, a per-attempt timeout, success =
//! exactly 2xx, every response body read to the end (so pooled connections are reused, never
//! leaked), gzip bodies decoded as Go's client did, optional request signing.

use crate::config::{CommonConfig, HttpSettings, RetryOn};
use crate::endpoint_auth::Credentials;
use crate::headers::HeaderSet;
use crate::proxy::{ProxyConnector, ProxyKind};
use crate::signing::{RequestSigner, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use crate::telemetry::Metrics;
use crate::telemetry::traces::MessageTrace;
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

type HttpsClient = Client<hyper_rustls::HttpsConnector<ProxyConnector>, Full<Bytes>>;

/// A 2xx answer from the endpoint.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    /// The status (always 2xx).
    pub status: StatusCode,
    /// Response headers (after gzip decoding, `Content-Encoding`/`Content-Length` are removed,
    /// as Go's client did).
    pub headers: HeaderMap,
    /// The whole (decoded) body.
    pub body: Bytes,
}

/// The end of the retry loop without a 2xx.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Status of the final attempt; `None` when it got no response (transport error, timeout).
    pub status: Option<StatusCode>,
    /// Body of the final response (empty when there was none).
    pub body: Bytes,
    /// The transport error of the final attempt, when that is how it ended.
    pub last_error: Option<String>,
    /// How many attempts were made.
    pub attempts: u32,
}

/// What became of one message's HTTP call.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// A 2xx response.
    Success(HttpResponse),
    /// No 2xx within the allowed attempts.
    Failure(Failure),
}

/// One attempt's result before classification.
enum Attempt {
    Response {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    Transport(String),
}

/// Sends messages to `HTTP_ENDPOINT`. Cheap to share: one keep-alive pool for the process.
#[derive(Debug)]
pub struct Invoker {
    client: HttpsClient,
    proxy_rules: Arc<crate::proxy::ProxyRules>,
    /// `Authorization: Basic` from user information in `HTTP_ENDPOINT`, as Go's client sent it.
    endpoint_auth: Option<HeaderValue>,
    endpoint: Uri,
    attempts: u32,
    settings: HttpSettings,
    signer: Option<RequestSigner>,
    user_agent: HeaderValue,
    metrics: Arc<Metrics>,
    /// `MAX_RATE`.
    rate: Option<crate::rate::RateLimiter>,
    /// `CIRCUIT_BREAKER_FAILURES`.
    breaker: Option<crate::breaker::CircuitBreaker>,
    /// `METADATA_HEADERS`: number each call in `Keda-Attempt`.
    attempt_header: bool,
    /// `HTTP_HEADERS`, `HTTP_BEARER_TOKEN_FILE`, `HTTP_OAUTH2_*`.
    auth: Option<crate::endpoint_auth::EndpointAuth>,
}

impl Invoker {
    /// Builds the client: HTTP/1.1 with a keep-alive pool, https through rustls verifying
    /// against the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR` are honoured) and
    /// `HTTP_CA_FILE`; without verification only when `HTTP_TLS_INSECURE_SKIP_VERIFY` is on.
    pub fn new(
        common: &CommonConfig,
        settings: &HttpSettings,
        user_agent: &str,
        metrics: Arc<Metrics>,
    ) -> Self {
        let proxy_rules = Arc::new(settings.proxy.clone());
        if let Some(proxy) = settings.proxy.for_uri(&common.endpoint_uri) {
            tracing::info!(
                proxy = %proxy.uri,
                from = proxy.var,
                "calls to HTTP_ENDPOINT go through a proxy"
            );
        }
        let https = connector(common, settings, proxy_rules.clone());
        let client = Client::builder(TokioExecutor::new())
            // The original's Go client wrote canonical names (`Keda-Topic`); so do we.
            .http1_title_case_headers(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Self {
            auth: crate::endpoint_auth::EndpointAuth::new(&settings.auth, client.clone()),
            client,
            proxy_rules,
            endpoint_auth: endpoint_basic_auth(&common.endpoint_uri),
            endpoint: common.endpoint_uri.clone(),
            attempts: common.attempts(),
            settings: settings.clone(),
            signer: settings
                .auth_secret
                .as_ref()
                .map(|s| RequestSigner::from_master(s.expose().as_bytes())),
            user_agent: HeaderValue::from_str(user_agent)
                .unwrap_or_else(|_| HeaderValue::from_static("keda-connector")),
            metrics,
            rate: None,
            breaker: None,
            attempt_header: false,
        }
    }

    /// Adds what [`DeliverySettings`](crate::config::DeliverySettings) asks of the calls: a
    /// rate limit, a circuit breaker, the `Keda-Attempt` header.
    pub fn with_delivery(mut self, delivery: &crate::config::DeliverySettings) -> Self {
        self.rate = delivery.max_rate.map(crate::rate::RateLimiter::new);
        self.breaker = delivery
            .breaker
            .map(|b| crate::breaker::CircuitBreaker::new(b, self.metrics.clone()));
        self.attempt_header = delivery.metadata_headers;
        self
    }

    /// Total attempts per message.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// POSTs `payload` with `headers` until a 2xx or the attempts run out. Never panics; never
    /// logs the payload.
    pub async fn invoke(&self, payload: &Bytes, headers: &HeaderSet) -> Outcome {
        self.invoke_traced(payload, headers, None).await
    }

    /// [`Invoker::invoke`], with a span per attempt under `trace` whose context the request
    /// carries as `traceparent`.
    pub(crate) async fn invoke_traced(
        &self,
        payload: &Bytes,
        headers: &HeaderSet,
        trace: Option<&MessageTrace>,
    ) -> Outcome {
        let wire_headers = headers.to_header_map();
        let mut delays = ExponentialBuilder::new()
            .with_min_delay(self.settings.backoff_base)
            .with_max_delay(self.settings.backoff_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build();
        let mut attempt_no = 0;
        let mut calls: u32 = 0;
        loop {
            attempt_no += 1;
            let pass = match &self.breaker {
                Some(b) => Some(b.admit().await),
                None => None,
            };
            if let Some(rate) = &self.rate {
                rate.acquire().await;
            }
            calls = calls.saturating_add(1);
            let numbered;
            let mut span = None;
            let headers_now = if self.attempt_header || trace.is_some() {
                let mut h = wire_headers.clone();
                if self.attempt_header {
                    h.insert(crate::delivery::ATTEMPT_HEADER, HeaderValue::from(calls));
                }
                if let Some(trace) = trace {
                    span = Some(trace.http_attempt(calls, &mut h));
                }
                numbered = h;
                &numbered
            } else {
                &wire_headers
            };
            let started = Instant::now();
            let result = self.attempt(payload, headers_now).await;
            if let Some(span) = span {
                span.finish(match &result {
                    Attempt::Response { status, .. } => Some(*status),
                    Attempt::Transport(_) => None,
                });
            }
            let class = match &result {
                Attempt::Response { status, .. } => status_class(*status),
                Attempt::Transport(_) => "error",
            };
            // Only a function that is down or overloaded trips the breaker; a 4xx is an answer.
            let answered = matches!(&result, Attempt::Response { status, .. }
                if !status.is_server_error() && *status != StatusCode::TOO_MANY_REQUESTS);
            let held = pass.is_some_and(|p| p.record(answered));
            self.metrics
                .http_duration
                .get_or_create(&vec![("class", class)])
                .observe(started.elapsed().as_secs_f64());

            let (failure, retryable, retry_after) = match result {
                Attempt::Response {
                    status,
                    headers,
                    body,
                } => {
                    if status.is_success() {
                        return Outcome::Success(HttpResponse {
                            status,
                            headers,
                            body,
                        });
                    }
                    let failure = Failure {
                        status: Some(status),
                        body,
                        last_error: None,
                        attempts: attempt_no,
                    };
                    (failure, self.retryable(status), retry_after(&headers))
                }
                Attempt::Transport(e) => {
                    tracing::warn!(
                        attempt = attempt_no,
                        error = %e,
                        http_endpoint = %self.endpoint,
                        "sending function invocation request failed"
                    );
                    let failure = Failure {
                        status: None,
                        body: Bytes::new(),
                        last_error: Some(e),
                        attempts: attempt_no,
                    };
                    (failure, true, None)
                }
            };
            if held {
                // The circuit is open: the message waits for it (in `admit`) with its retries
                // intact.
                attempt_no -= 1;
                continue;
            }
            if !retryable || attempt_no >= self.attempts {
                return Outcome::Failure(failure);
            }
            self.metrics.retries.inc();
            let backoff = delays.next().unwrap_or(self.settings.backoff_max);
            let honoured = retry_after
                .filter(|_| !self.settings.retry_after_max.is_zero())
                .map(|d| d.min(self.settings.retry_after_max))
                .unwrap_or_default();
            let delay = backoff.max(honoured);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
    }

    fn retryable(&self, status: StatusCode) -> bool {
        match self.settings.retry_on {
            RetryOn::All => true,
            RetryOn::Transient => {
                status.is_server_error()
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status == StatusCode::REQUEST_TIMEOUT
            }
        }
    }

    /// One request for one hop of an attempt: `hop` 0 is the call to `HTTP_ENDPOINT`, later
    /// ones follow redirects.
    fn request(
        &self,
        hop: &Hop,
        headers: &HeaderMap,
        credentials: &Credentials,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(hop.body.clone()));
        *req.method_mut() = hop.method.clone();
        *req.uri_mut() = hop.uri.clone();
        let h = req.headers_mut();
        h.clone_from(headers);
        if hop.cross_domain {
            // Go drops credentials once a redirect chain has left the endpoint's domain, for
            // the rest of the chain.
            for name in [
                header::AUTHORIZATION,
                header::WWW_AUTHENTICATE,
                header::COOKIE,
                header::PROXY_AUTHORIZATION,
                header::PROXY_AUTHENTICATE,
            ] {
                h.remove(name);
            }
            h.remove("cookie2");
        } else {
            credentials.apply(h);
        }
        if let Some(referer) = &hop.referer {
            h.insert(header::REFERER, referer.clone());
        }
        h.insert(header::USER_AGENT, self.user_agent.clone());
        h.insert(header::ACCEPT_ENCODING, HeaderValue::from_static("gzip"));
        if hop.method == Method::POST {
            // hyper omits `Content-Length: 0` on an empty POST; Go sent it and some servers
            // insist.
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(hop.body.len()));
        }
        // A plain-http call through an HTTP proxy: the proxy's credentials ride on the request
        // (for https they go with the CONNECT, never to the endpoint).
        if hop.uri.scheme_str() != Some("https")
            && let Some(proxy) = self.proxy_rules.for_uri(&hop.uri)
            && proxy.kind == ProxyKind::Http
            && let Some(auth) = proxy.basic_auth()
        {
            h.insert(header::PROXY_AUTHORIZATION, auth);
        }
        // Credentials in the URL of this hop (the endpoint's, kept by a relative redirect), as
        // Go's client added them to each request; a message's own Authorization header wins.
        if !h.contains_key(header::AUTHORIZATION)
            && let Some(auth) = if hop.number == 0 {
                self.endpoint_auth.clone()
            } else {
                endpoint_basic_auth(&hop.uri)
            }
        {
            h.insert(header::AUTHORIZATION, auth);
        }
        // Signed only for the endpoint itself: the signature does not cover the host, so a
        // redirect elsewhere (a function's own answer) must never be handed one.
        if let Some(signer) = &self.signer
            && same_origin(&hop.uri, &self.endpoint)
        {
            let request_uri = request_uri(&hop.uri);
            let (ts, sig) = signer.header_values(hop.method.as_str(), &request_uri, &hop.body);
            h.insert(TIMESTAMP_HEADER, ts);
            h.insert(SIGNATURE_HEADER, sig);
        }
        req
    }

    async fn attempt(&self, payload: &Bytes, headers: &HeaderMap) -> Attempt {
        let mut credentials = Credentials::default();
        if let Some(auth) = &self.auth {
            match auth.credentials().await {
                Ok(c) => credentials = c,
                Err(e) => return Attempt::Transport(e),
            }
        }
        let first = self.exchange(payload, headers, &credentials).await;
        // A refused credential that could be renewed (a new OAuth2 token, a rotated file read
        // now) is tried once more within the same attempt: the rotation is not the function's
        // failure.
        match (&self.auth, &first) {
            (Some(auth), Attempt::Response { status, .. })
                if *status == StatusCode::UNAUTHORIZED && auth.refused(&credentials).await =>
            {
                match auth.credentials().await {
                    Ok(c) => credentials = c,
                    Err(e) => return Attempt::Transport(e),
                }
                self.exchange(payload, headers, &credentials).await
            }
            _ => first,
        }
    }

    /// One exchange with the endpoint (following redirects) within `HTTP_TIMEOUT`.
    async fn exchange(
        &self,
        payload: &Bytes,
        headers: &HeaderMap,
        credentials: &Credentials,
    ) -> Attempt {
        let exchange = async {
            let mut hop = Hop {
                number: 0,
                method: Method::POST,
                uri: self.endpoint.clone(),
                body: payload.clone(),
                cross_domain: false,
                referer: None,
            };
            loop {
                let response = self
                    .client
                    .request(self.request(&hop, headers, credentials))
                    .await
                    .map_err(|e| error_chain(&e))?;
                let (parts, body) = response.into_parts();
                // Read every body to the end, success or not: a body left unread pins its
                // connection (the original leaked one per failed attempt).
                let body = body
                    .collect()
                    .await
                    .map_err(|e| format!("reading response body: {}", error_chain(&e)))?
                    .to_bytes();
                match hop.redirected(&parts, &self.endpoint)? {
                    // Go's client sends at most 10 requests per call.
                    Some(next) if next.number >= MAX_REDIRECTS => {
                        return Err(format!("stopped after {MAX_REDIRECTS} redirects"));
                    }
                    Some(next) => hop = next,
                    None => return Ok::<_, String>((parts, body)),
                }
            }
        };
        let result = match self.settings.timeout {
            Some(limit) => match tokio::time::timeout(limit, exchange).await {
                Ok(r) => r,
                Err(_) => Err(format!("timed out after {limit:?} (HTTP_TIMEOUT)")),
            },
            None => exchange.await,
        };
        match result {
            Err(e) => Attempt::Transport(e),
            Ok((mut parts, body)) => {
                let body = match decode_gzip(&mut parts.headers, body) {
                    Ok(b) => b,
                    Err(e) => return Attempt::Transport(e),
                };
                Attempt::Response {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                }
            }
        }
    }
}

/// Redirects followed per attempt, as Go's client (`stopped after 10 redirects`).
const MAX_REDIRECTS: u32 = 10;

/// One request of an attempt.
struct Hop {
    number: u32,
    method: Method,
    uri: Uri,
    body: Bytes,
    /// Whether the chain has left the endpoint's domain (sticky, as in Go).
    cross_domain: bool,
    referer: Option<HeaderValue>,
}

impl Hop {
    /// The next hop when `response` redirects, by Go's client rules: 307 and 308 repeat the
    /// request with its body; 301, 302 and 303 become a GET without one; no or an empty
    /// `Location`, no redirect; a `Location` that is no URL, an error.
    fn redirected(
        &self,
        response: &http::response::Parts,
        endpoint: &Uri,
    ) -> Result<Option<Hop>, String> {
        let keep_body = match response.status.as_u16() {
            307 | 308 => true,
            301..=303 => false,
            _ => return Ok(None),
        };
        let Some(location) = response
            .headers
            .get(header::LOCATION)
            .filter(|l| !l.is_empty())
        else {
            return Ok(None);
        };
        let uri = location
            .to_str()
            .ok()
            .and_then(|l| resolve(&self.uri, l))
            .ok_or_else(|| format!("failed to parse Location header {location:?}"))?;
        let (method, body) = if keep_body {
            (self.method.clone(), self.body.clone())
        } else {
            (Method::GET, Bytes::new())
        };
        let leaves = match (endpoint.host(), uri.host()) {
            (Some(from), Some(to)) => !same_domain(from, to),
            _ => true,
        };
        // Go's Referer: the previous URL without credentials or fragment, and none from
        // https to http.
        let referer = (self.uri.scheme_str() != Some("https") || uri.scheme_str() == Some("https"))
            .then(|| HeaderValue::from_str(&without_userinfo(&self.uri)).ok())
            .flatten();
        Ok(Some(Hop {
            number: self.number + 1,
            method,
            uri,
            body,
            cross_domain: self.cross_domain || leaves,
            referer,
        }))
    }
}

/// `uri` as text without user information.
fn without_userinfo(uri: &Uri) -> String {
    let authority = uri.authority().map_or("", |a| a.as_str());
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    format!(
        "{}://{host}{}",
        uri.scheme_str().unwrap_or("http"),
        request_uri(uri)
    )
}

/// `reference` resolved against `base` by RFC 3986 §5.2 (what Go's `URL.ResolveReference`
/// does), fragment dropped. Written out rather than taken from the `url` crate, which would
/// add its IDNA tables to every image for this one use.
fn resolve(base: &Uri, reference: &str) -> Option<Uri> {
    let reference = reference.split_once('#').map_or(reference, |(r, _)| r);
    let (reference, query) = match reference.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (reference, None),
    };
    let has_scheme = reference.split_once(':').is_some_and(|(scheme, _)| {
        scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    });
    let (scheme, authority, path, query) = if has_scheme {
        let (scheme, rest) = reference.split_once(':')?;
        let rest = rest.strip_prefix("//")?;
        let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
        (
            scheme.to_owned(),
            authority.to_owned(),
            remove_dot_segments(path),
            query,
        )
    } else {
        let scheme = base.scheme_str()?.to_owned();
        if let Some(rest) = reference.strip_prefix("//") {
            let (authority, path) = rest.find('/').map_or((rest, ""), |i| rest.split_at(i));
            (
                scheme,
                authority.to_owned(),
                remove_dot_segments(path),
                query,
            )
        } else {
            let authority = base.authority()?.as_str().to_owned();
            if reference.is_empty() {
                (
                    scheme,
                    authority,
                    base.path().to_owned(),
                    query.or(base.query()),
                )
            } else if reference.starts_with('/') {
                (scheme, authority, remove_dot_segments(reference), query)
            } else {
                let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
                let merged = format!("{dir}/{reference}");
                (scheme, authority, remove_dot_segments(&merged), query)
            }
        }
    };
    let path = if path.is_empty() { "/" } else { path.as_str() };
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    format!("{scheme}://{authority}{path}{query}").parse().ok()
}

/// RFC 3986 §5.2.4.
fn remove_dot_segments(path: &str) -> String {
    let mut output: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.split('/').collect();
    for (i, segment) in segments.iter().enumerate() {
        let last = i == segments.len() - 1;
        match *segment {
            "." => {
                if last {
                    output.push("");
                }
            }
            ".." => {
                if output.len() > 1 {
                    output.pop();
                }
                if last {
                    output.push("");
                }
            }
            s => output.push(s),
        }
    }
    let joined = output.join("/");
    if path.starts_with('/') && !joined.starts_with('/') {
        format!("/{joined}")
    } else {
        joined
    }
}

/// Go's rule for keeping credentials: the same host, or a subdomain of the original one.
fn same_domain(original: &str, next: &str) -> bool {
    let (original, next) = (original.to_ascii_lowercase(), next.to_ascii_lowercase());
    next == original || next.ends_with(&format!(".{original}"))
}

/// Same scheme, host and port.
fn same_origin(a: &Uri, b: &Uri) -> bool {
    let port = |u: &Uri| {
        u.port_u16().unwrap_or(if u.scheme_str() == Some("https") {
            443
        } else {
            80
        })
    };
    a.scheme_str() == b.scheme_str()
        && a.host().map(str::to_ascii_lowercase) == b.host().map(str::to_ascii_lowercase)
        && port(a) == port(b)
}

/// The request URI of `uri` as a server sees it: path and query.
fn request_uri(uri: &Uri) -> String {
    match uri.query() {
        Some(q) => format!("{}?{q}", uri.path()),
        None => uri.path().to_owned(),
    }
}

/// What opens connections to the endpoint: TCP (through the proxy the rules pick), then TLS
/// for https, verified against the system's roots (`SSL_CERT_FILE`/`SSL_CERT_DIR`) and
/// `HTTP_CA_FILE`, or not at all with `HTTP_TLS_INSECURE_SKIP_VERIFY`. Used by the invoker,
/// and by `--check` to connect and handshake without sending a request.
pub fn connector(
    common: &CommonConfig,
    settings: &HttpSettings,
    proxy_rules: Arc<crate::proxy::ProxyRules>,
) -> hyper_rustls::HttpsConnector<ProxyConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let tls = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        let (added, _ignored) = roots.add_parsable_certificates(native.certs);
        let (own, _) = roots.add_parsable_certificates(settings.ca_certs.iter().cloned());
        if added + own == 0 && common.endpoint_uri.scheme_str() == Some("https") {
            tracing::warn!(
                "no CA certificates found on this system and no HTTP_CA_FILE; https endpoints will fail verification"
            );
        }
        builder.with_root_certificates(roots)
    };
    let tls = match settings.auth.client_cert() {
        Some(cert) => {
            let mut tls = tls.with_client_cert_resolver(cert);
            // A resumed TLS session keeps the identity it was first established with: a
            // rotated certificate would never be presented to a server that resumes.
            tls.resumption = rustls::client::Resumption::disabled();
            tls
        }
        None => tls.with_no_client_auth(),
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(ProxyConnector::new(http, proxy_rules))
}

/// `Basic base64(user:password)` for an endpoint URL with user information (percent-decoded;
/// `user:` without a password), the header Go's client added for such a URL.
fn endpoint_basic_auth(uri: &Uri) -> Option<HeaderValue> {
    let (user, password) = crate::proxy::userinfo(uri.authority()?.as_str())?;
    crate::proxy::basic_auth(&user, &password)
}

/// Go's client asked for gzip itself and decoded it transparently, dropping the encoding and
/// length headers; the response topic received the decoded body. Keep that.
fn decode_gzip(headers: &mut HeaderMap, body: Bytes) -> Result<Bytes, String> {
    let gzip = headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    if !gzip {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::MultiGzDecoder::new(&body[..])
        .read_to_end(&mut out)
        .map_err(|e| format!("decoding gzip response body: {e}"))?;
    headers.remove(header::CONTENT_ENCODING);
    headers.remove(header::CONTENT_LENGTH);
    Ok(Bytes::from(out))
}

/// `Retry-After` as seconds or an HTTP-date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(SystemTime::now()).unwrap_or_default())
}

fn status_class(status: StatusCode) -> &'static str {
    match status.as_u16() {
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// An error with its causes, one line: hyper's top-level errors alone say little
/// ("client error (Connect)").
/// An error with its sources, `outer: inner: innermost`.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Go's `URL.ResolveReference` results for the Location forms a function may send.
    #[test]
    fn locations_resolve_as_go_resolves_them() {
        let base: Uri = "http://u:p@router:8888/fission-function/fn?x=1"
            .parse()
            .unwrap();
        for (location, expected) in [
            ("/other", "http://u:p@router:8888/other"),
            ("fn/", "http://u:p@router:8888/fission-function/fn/"),
            (
                "?page=2",
                "http://u:p@router:8888/fission-function/fn?page=2",
            ),
            ("#frag", "http://u:p@router:8888/fission-function/fn?x=1"),
            ("../x", "http://u:p@router:8888/x"),
            ("/a/../b/./c", "http://u:p@router:8888/b/c"),
            ("//elsewhere:9/y", "http://elsewhere:9/y"),
            ("https://secure.example/z?q", "https://secure.example/z?q"),
            ("/..", "http://u:p@router:8888/"),
        ] {
            assert_eq!(
                resolve(&base, location).map(|u| u.to_string()).as_deref(),
                Some(expected),
                "{location}"
            );
        }
        assert!(same_domain("router.fission", "a.router.fission"));
        assert!(!same_domain("router.fission", "evilrouter.fission"));
        assert_eq!(
            without_userinfo(&base),
            "http://router:8888/fission-function/fn?x=1"
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = SystemTime::now() + Duration::from_secs(120);
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static("Mon, 01 Jan 2024 00:00:00 GMT"),
        );
        assert_eq!(retry_after(&h), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}

/// `HTTP_TLS_INSECURE_SKIP_VERIFY`: any certificate is accepted; handshake signatures are still
/// checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

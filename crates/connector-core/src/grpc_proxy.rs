//! gRPC through the proxy the original's gRPC would use, for client libraries that dial their
//! own connections and take no proxy setting.
//!
//! The original's gRPC (grpc-go) sends a call to any address that is not loopback through
//! `HTTPS_PROXY` — whatever the target's scheme, asking Go's `http.ProxyFromEnvironment` about
//! `https://host:port`, so `NO_PROXY` applies — in a `CONNECT` tunnel. google-cloud-pubsub's
//! tonic channel connects straight to its endpoint and has no hook for a proxy, so in a cluster
//! whose egress goes through a proxy it could not reach Google at all (docs/compatibility.md,
//! broker traffic). A [`GrpcForwarder`] listens on 127.0.0.1 for such a client's HTTP/2 calls in
//! clear text and sends each on to the real target inside the tunnel, over TLS verified
//! against the target's name (or in clear text to a clear-text target such as an emulator).
//! Requests, responses and trailers pass unchanged except for the URL's scheme and authority.

use crate::proxy::{Proxy, ProxyConnector, ProxyRules};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

type Upstream = Client<hyper_rustls::HttpsConnector<ProxyConnector>, Incoming>;
type Body = Either<Incoming, Empty<Bytes>>;

/// The proxy grpc-go would take for `target` (`http://host:port` or `https://host[:port]`)
/// under `rules` (read with [`ProxyRules::grpc_from_env`]): `HTTPS_PROXY` unless `NO_PROXY` or
/// the loopback rule exempt it; `None` to go direct.
pub fn proxy_for(target: &Uri, rules: &ProxyRules) -> Option<Proxy> {
    let host = target.host()?;
    let port = target
        .port_u16()
        .unwrap_or(if target.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let asked: Uri = format!("https://{host}:{port}/").parse().ok()?;
    rules.for_uri(&asked).cloned()
}

/// A loopback listener that carries a gRPC client's calls to one target through a proxy.
/// Stops listening when dropped.
#[derive(Debug)]
pub struct GrpcForwarder {
    addr: SocketAddr,
    accept: tokio::task::JoinHandle<()>,
}

impl GrpcForwarder {
    /// Starts forwarding to `target` (scheme and authority; any path is ignored) through
    /// `proxy`, verifying a TLS target against `roots`.
    pub async fn start(
        target: Uri,
        proxy: Proxy,
        roots: rustls::RootCertStore,
    ) -> std::io::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http2()
            .wrap_connector(ProxyConnector::tunnel(http, proxy));
        let upstream: Upstream = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(connector);
        let target = Arc::new(target);

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let upstream = upstream.clone();
                let target = target.clone();
                let service = hyper::service::service_fn(move |request| {
                    forward(upstream.clone(), target.clone(), request)
                });
                tokio::spawn(async move {
                    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                    if let Err(e) = served {
                        tracing::debug!(error = %e, "gRPC forwarder: a client connection ended");
                    }
                });
            }
        });
        Ok(Self { addr, accept })
    }

    /// The endpoint to give the client instead of the target: `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The system's CA certificates, as tonic's `tls-native-roots` would load them (honouring
    /// `SSL_CERT_FILE`/`SSL_CERT_DIR`).
    pub fn native_roots() -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        roots
    }
}

impl Drop for GrpcForwarder {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(
    upstream: Upstream,
    target: Arc<Uri>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = request.into_parts();
    let mut uri = (*target).clone().into_parts();
    uri.path_and_query = parts.uri.path_and_query().cloned();
    parts.uri = match Uri::from_parts(uri) {
        Ok(u) => u,
        Err(_) => return Ok(unavailable("the call names no path")),
    };
    match upstream.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(Either::Left)),
        Err(e) => {
            // A gRPC status the client's retry policy understands, not a broken stream.
            tracing::warn!(error = %e, "gRPC forwarder: cannot reach the target through the proxy");
            Ok(unavailable(
                "cannot reach the service through the proxy (HTTPS_PROXY)",
            ))
        }
    }
}

/// A trailers-only gRPC answer with status UNAVAILABLE (14).
fn unavailable(message: &'static str) -> Response<Body> {
    let mut response = Response::new(Either::Right(Empty::new()));
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from_static("14"));
    headers.insert("grpc-message", HeaderValue::from_static(message));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(vars: &[(&str, &str)]) -> ProxyRules {
        ProxyRules::grpc_from_env(&vars)
    }

    #[test]
    fn takes_https_proxy_for_every_target_as_grpc_go() {
        let r = rules(&[
            ("HTTPS_PROXY", "proxy.example:3128"),
            ("HTTP_PROXY", "other.example:3128"),
            ("NO_PROXY", "internal.example,emulator.example:9000"),
        ]);
        let via = |t: &'static str| proxy_for(&Uri::from_static(t), &r).map(|p| p.uri.to_string());
        let https = Some("http://proxy.example:3128/".to_owned());
        assert_eq!(via("https://pubsub.googleapis.com"), https);
        // A clear-text target still goes through HTTPS_PROXY, never HTTP_PROXY.
        assert_eq!(via("http://emulator.example:8085"), https);
        assert_eq!(via("http://emulator.example:9000"), None);
        assert_eq!(via("http://pubsub.internal.example:8085"), None);
        assert_eq!(via("http://localhost:8085"), None);
        assert_eq!(via("http://127.0.0.1:8085"), None);
        assert_eq!(via("http://[::1]:8085"), None);
        let only_http = rules(&[("HTTP_PROXY", "proxy.example:3128")]);
        assert!(
            proxy_for(
                &Uri::from_static("http://emulator.example:8085"),
                &only_http
            )
            .is_none()
        );
        // grpc-go sends a clear-text CONNECT to an https:// proxy's host:port too.
        let tls_proxy = rules(&[("HTTPS_PROXY", "HTTPS://u:p@proxy.example:3129")]);
        let p = proxy_for(
            &Uri::from_static("https://pubsub.googleapis.com"),
            &tls_proxy,
        )
        .expect("proxied");
        assert_eq!(p.uri, "http://proxy.example:3129/");
        assert_eq!(p.credentials, Some(("u".to_owned(), "p".to_owned())));
    }
}

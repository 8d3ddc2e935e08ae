//! The gRPC forwarder against real servers on loopback: a clear-text HTTP/2 call made to it
//! arrives at an HTTP/2-over-TLS server (certificate from a per-run CA, for a name that is not
//! loopback) through a real forward proxy's `CONNECT` tunnel, with its path, headers, body and
//! trailers; with the proxy down the client gets gRPC status UNAVAILABLE rather than a broken
//! stream.

mod common;

use bytes::Bytes;
use connector_core::grpc_proxy::{GrpcForwarder, proxy_for};
use connector_core::proxy::ProxyRules;
use connector_core::testkit::{ForwardProxy, ProxiedRequest};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::sync::Arc;

/// An HTTP/2 server over TLS on 127.0.0.1 for the name `pubsub.test`, echoing the request body
/// with the authority and path it saw as headers and a `grpc-status: 0` trailer.
async fn tls_h2_server() -> (u16, rustls::RootCertStore) {
    let ca = common::private_ca(&["pubsub.test"]);
    let (roots, mut server) = (ca.roots, ca.server);
    server.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let authority = req
                            .uri()
                            .authority()
                            .map(|a| a.to_string())
                            .unwrap_or_default();
                        let path = req.uri().path().to_owned();
                        let auth = req.headers().get("authorization").cloned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        let body = Full::new(body).with_trailers(async { Some(Ok(trailers)) });
                        let mut response = Response::builder()
                            .header("content-type", "application/grpc")
                            .header("x-authority", authority)
                            .header("x-path", path);
                        if let Some(a) = auth {
                            response = response.header("x-authorization", a);
                        }
                        Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (port, roots)
}

fn grpc_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

fn rules(proxy: &str) -> ProxyRules {
    ProxyRules::grpc_from_env(&[("HTTPS_PROXY", proxy)])
}

#[tokio::test]
async fn a_clear_text_call_reaches_a_tls_target_through_the_proxy_tunnel() {
    let (port, roots) = tls_h2_server().await;
    let proxy = ForwardProxy::start().await;
    let target: Uri = format!("https://pubsub.test:{port}").parse().unwrap();
    let via = proxy_for(&target, &rules(&proxy.addr().to_string())).expect("proxied");
    let forwarder = GrpcForwarder::start(target, via, roots).await.unwrap();

    let request = Request::post(format!(
        "{}/google.pubsub.v1.Publisher/Publish",
        forwarder.endpoint()
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("authorization", "Bearer t0ken")
    .body(Full::new(Bytes::from_static(b"\0\0\0\0\x03abc")))
    .unwrap();
    let response = grpc_client().request(request).await.unwrap();
    assert_eq!(
        response.headers()["x-authority"],
        format!("pubsub.test:{port}").as_str()
    );
    assert_eq!(
        response.headers()["x-path"],
        "/google.pubsub.v1.Publisher/Publish"
    );
    assert_eq!(response.headers()["x-authorization"], "Bearer t0ken");
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(&collected.to_bytes()[..], b"\0\0\0\0\x03abc");
    assert_eq!(
        proxy.seen(),
        vec![ProxiedRequest {
            method: "CONNECT".into(),
            target: format!("pubsub.test:{port}"),
            authorization: None,
        }]
    );
}

#[tokio::test]
async fn a_proxy_that_cannot_be_reached_gives_grpc_unavailable() {
    let (port, roots) = tls_h2_server().await;
    // A port nothing listens on: bind one, then free it.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let target: Uri = format!("https://pubsub.test:{port}").parse().unwrap();
    let via = proxy_for(&target, &rules(&dead.to_string())).expect("proxied");
    let forwarder = GrpcForwarder::start(target, via, roots).await.unwrap();
    let request = Request::post(format!("{}/any/Method", forwarder.endpoint()))
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = grpc_client().request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["grpc-status"], "14");
}

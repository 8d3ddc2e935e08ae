//! Set-up shared by this crate's integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use bytes::Bytes;
use connector_core::testkit::{EventLog, MemoryPublisher, MemorySource, Sink, settings};
use connector_core::{DispatchEnd, DispatchOptions, Engine, HeaderFamily, Lane, Message};
use std::sync::Arc;
use std::time::Duration;

/// A fresh private CA (one the system does not know) and a server configuration presenting a
/// certificate it issued for `names`.
pub struct PrivateCa {
    /// The CA certificate, PEM (for `HTTP_CA_FILE`).
    pub pem: String,
    /// The CA as the only root of a client's store.
    pub roots: rustls::RootCertStore,
    /// A TLS server configuration with the issued certificate.
    pub server: rustls::ServerConfig,
}

/// A new self-signed CA named `name`.
fn new_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A server certificate for `names` issued by `ca`, with its key.
fn server_cert(
    names: &[&str],
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
) -> (rcgen::Certificate, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, ca)
            .unwrap();
    (cert, key)
}

/// Issues a server certificate for `names` from a new private CA.
pub fn private_ca(names: &[&str]) -> PrivateCa {
    issue("test private CA", names, None).0
}

/// A new CA named `name`, a server configuration presenting a certificate it issued for
/// `names`, and with `clients`, a client identity per common name, the server then requiring
/// a client certificate from that CA.
fn issue(name: &str, names: &[&str], clients: Option<&[&str]>) -> (PrivateCa, Vec<ClientIdentity>) {
    let ca = new_ca(name);
    let (cert, key) = server_cert(names, &ca);
    let identities = clients
        .unwrap_or_default()
        .iter()
        .map(|cn| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, *cn);
            params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let cert = params.signed_by(&key, &ca).unwrap();
            ClientIdentity {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().to_vec(),
            }
        })
        .collect();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        None => builder.with_no_client_auth(),
        Some(_) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                provider,
            )
            .build()
            .unwrap(),
        ),
    };
    let server = builder
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (
        PrivateCa {
            pem: ca.pem(),
            roots,
            server,
        },
        identities,
    )
}

/// Serves HTTPS on 127.0.0.1 with `server`: each request is answered by `respond`, given the
/// client certificate of its connection (DER) if one was presented. A client that refuses the
/// server's certificate, or is refused, ends its connection in the handshake. Returns the port.
pub async fn serve_https<F>(server: rustls::ServerConfig, respond: F) -> u16
where
    F: Fn(Option<&[u8]>) -> hyper::Response<http_body_util::Full<Bytes>>
        + Clone
        + Send
        + Sync
        + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (acceptor, respond) = (acceptor.clone(), respond.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let cert: Option<Vec<u8>> =
                    tls.get_ref().1.peer_certificates().map(|c| c[0].to_vec());
                let service = hyper::service::service_fn(move |_req| {
                    let response = respond(cert.as_deref());
                    async move { Ok::<_, std::convert::Infallible>(response) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    port
}

/// The dispatcher tests' longest wait.
pub const WAIT: Duration = Duration::from_secs(20);

/// An engine calling `sink`, with `RESPONSE_TOPIC=out`, `ERROR_TOPIC=err`, no retries, and `extra`.
pub fn engine(sink: &Sink, options: DispatchOptions, extra: &[(&str, &str)]) -> Engine {
    let url = sink.url("/fn");
    let mut env = vec![
        ("TOPIC", "in"),
        ("HTTP_ENDPOINT", url.as_str()),
        ("MAX_RETRIES", "0"),
        ("CONTENT_TYPE", "text/plain"),
        ("RESPONSE_TOPIC", "out"),
        ("ERROR_TOPIC", "err"),
        ("RETRY_BACKOFF_BASE", "0"),
    ];
    env.extend_from_slice(extra);
    Engine::new(settings(&env), HeaderFamily::Keda, options, "dispatch-test")
}

/// A message with `body`, on `lane` if given.
pub fn msg(body: &str, lane: Option<u64>) -> Message {
    Message {
        payload: Bytes::from(body.to_owned()),
        lane: lane.map(Lane),
        ..Default::default()
    }
}

/// A dispatcher running in the background on a [`MemorySource`].
pub struct Running {
    /// The dispatch task.
    pub run: tokio::task::JoinHandle<DispatchEnd>,
    /// What happened to the deliveries.
    pub log: Arc<EventLog>,
    /// How many deliveries the dispatcher took.
    pub taken: Arc<std::sync::atomic::AtomicUsize>,
}

/// Starts dispatching `messages` (the feed stays open).
pub fn start_dispatch(
    engine: &Engine,
    messages: Vec<Message>,
    configure: impl FnOnce(&MemoryPublisher),
) -> Running {
    let (mut source, feed, log) = MemorySource::new();
    for m in messages {
        feed.send(m).unwrap();
    }
    let taken = source.taken.clone();
    let publisher = Arc::new(MemoryPublisher::new(log.clone()));
    configure(&publisher);
    let e = engine.clone();
    // The feed stays open so the source does not end on its own.
    let run = tokio::spawn(async move {
        let _feed = feed;
        e.dispatch(&mut source, &publisher).await
    });
    Running { run, log, taken }
}

/// Feeds `messages`, runs the dispatcher until `settle` deliveries are settled, then shuts it
/// down; returns the event log.
pub async fn run_until_settled(
    engine: &Engine,
    messages: Vec<Message>,
    settle: usize,
    configure: impl FnOnce(&MemoryPublisher),
) -> Arc<EventLog> {
    let Running { run, log, .. } = start_dispatch(engine, messages, configure);
    log.wait_for_settled(settle, WAIT).await;
    engine.shutdown().cancel();
    assert_eq!(run.await.unwrap(), DispatchEnd::Shutdown);
    log
}

/// A client certificate with its key, PEM, and the certificate's DER (what the server sees).
pub struct ClientIdentity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM.
    pub key_pem: String,
    /// The certificate as the server receives it.
    pub der: Vec<u8>,
}

/// A fresh private CA, a server configuration for `names` that *requires* a client certificate
/// from that CA, and one client identity per entry of `clients` (used as the common name).
pub fn mutual_ca(names: &[&str], clients: &[&str]) -> (PrivateCa, Vec<ClientIdentity>) {
    issue("test mutual-TLS CA", names, Some(clients))
}

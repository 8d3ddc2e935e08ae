//! A broker whose certificate does not chain to a trusted CA is refused; given the CA, the
//! connector connects and answers a message; the only way around verification is an explicit
//! flag, which logs a warning. NATS (`NATS_CA_FILE`), Redis (`SSL_CERT_FILE`, the CA bundle
//! its TLS stack reads; `UNSAFE_SSL`) and RabbitMQ (`SSL_CERT_FILE`; no skip flag) run as this
//! test's own TLS servers with a CA generated per run. Kafka's mock cluster has no TLS.

use broker_fixtures::{Fixture, Kind};
use connector_core::testkit::{Process, Reply, Sink, unique};
use reliability::{Collector, OwnServer, ServerTls, binary, env};
use std::path::PathBuf;

/// A CA and a server certificate for 127.0.0.1 issued by it, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn generate() -> Self {
        let dir = std::env::temp_dir().join(unique("broker-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "broker test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
        Self { dir }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Untrusted: refused, nothing consumed. With the CA in `ca_variable`: the message answered.
/// With `skip_flag` (if the connector has one) and no CA: connected, with a warning.
async fn refused_unless_trusted(
    kind: Kind,
    ca_variable: &'static str,
    skip_flag: Option<&'static str>,
) -> String {
    let pki = Pki::generate();
    let (cert, key) = (pki.file("server.pem"), pki.file("server.key"));
    let tls = ServerTls {
        cert: &cert,
        key: &key,
    };
    let server = match kind {
        Kind::Nats => OwnServer::nats(Some(tls)),
        Kind::RabbitMq => OwnServer::rabbitmq_tls(tls),
        _ => OwnServer::redis(Some(tls)),
    };
    let mut fx = Fixture::start_tls(kind, &server.address(), &pki.ca())
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    let collector = Collector::start(fx.take_outcomes());
    let sink = Sink::start().await;
    sink.respond(|r| Reply::status(200).body(r.body.clone()));
    let payloads = vec![b"over TLS".to_vec(), b"over TLS, unverified".to_vec()];
    fx.publish(&payloads[..1], 0, |_| {}).await.unwrap();
    let bin = binary(kind);

    let mut untrusted = Process::start(&bin, &env(kind, &fx, &sink.url("/fn"), &[]));
    untrusted.wait_log("invalid peer certificate", 1).await;
    untrusted.stop().await;
    assert!(
        !untrusted.logs().contains("\"ready\":true"),
        "{kind:?}: ready with an untrusted certificate:\n{}",
        untrusted.logs()
    );
    assert_eq!(
        sink.count(),
        0,
        "{kind:?}: consumed over an untrusted connection"
    );

    let ca = pki.ca().to_string_lossy().into_owned();
    let mut trusted = Process::start(
        &bin,
        &env(kind, &fx, &sink.url("/fn"), &[(ca_variable, &ca)]),
    );
    collector
        .wait_answered(&format!("{kind:?}: answered over TLS"), &payloads[..1])
        .await;
    trusted.stop().await;
    assert!(
        !trusted.logs().contains("certificate"),
        "{kind:?}:\n{}",
        trusted.logs()
    );

    let mut line = format!(
        "{kind:?}: untrusted certificate refused (\"invalid peer certificate\", never ready, nothing consumed); with {ca_variable} the message answered byte for byte"
    );
    if let Some(flag) = skip_flag {
        fx.publish(&payloads[1..], 1, |_| {}).await.unwrap();
        let mut unverified =
            Process::start(&bin, &env(kind, &fx, &sink.url("/fn"), &[(flag, "true")]));
        collector
            .wait_answered(&format!("{kind:?}: answered with {flag}"), &payloads)
            .await;
        unverified.stop().await;
        let warned = unverified
            .logs()
            .lines()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains(flag));
        assert!(
            warned,
            "{kind:?}: {flag} without a warning:\n{}",
            unverified.logs()
        );
        line.push_str(&format!("; {flag}=true connects and logs a warning"));
    }
    fx.cleanup().await;
    collector.without_errors(&format!("{kind:?}"));
    line
}

#[tokio::test(flavor = "multi_thread")]
async fn untrusted_broker_certificate_is_refused_unless_its_ca_is_given() {
    let lines = [
        refused_unless_trusted(Kind::Nats, "NATS_CA_FILE", None).await,
        refused_unless_trusted(Kind::Redis, "SSL_CERT_FILE", Some("UNSAFE_SSL")).await,
        refused_unless_trusted(Kind::RabbitMq, "SSL_CERT_FILE", None).await,
    ];
    for line in lines {
        eprintln!("reliability: {line}");
    }
}

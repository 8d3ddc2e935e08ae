//! Set-up shared by this crate's integration tests.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::sync::Arc;

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

/// Issues a server certificate for `names` from a new private CA.
pub fn private_ca(names: &[&str]) -> PrivateCa {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "test private CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    PrivateCa {
        pem: ca.pem(),
        roots,
        server,
    }
}

//! `HTTP_CLIENT_CERT_FILE` / `HTTP_CLIENT_KEY_FILE`: the certificate a mutual-TLS endpoint asks
//! for, re-read when cert-manager (or anything else) rotates the files.
//!
//! A TLS connection presents a certificate once, in its handshake: after a rotation, new
//! connections present the new one while pooled connections keep the one they started with.

use super::watched::Watched;
use rustls::SignatureScheme;
use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::Arc;

/// The client certificate for the endpoint's TLS handshakes.
#[derive(Debug, Clone)]
pub struct ClientCert {
    current: Watched<Arc<CertifiedKey>>,
}

impl ClientCert {
    /// Reads the certificate chain and its private key (PEM files); fails, without the key's
    /// contents, when either does not parse or they do not belong together.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Self, String> {
        Ok(Self {
            current: Watched::load("HTTP_CLIENT_CERT_FILE", vec![cert, key], parse)?,
        })
    }

    /// Re-reads both files every `every` while this lives.
    pub(crate) fn spawn_reload(&self, every: std::time::Duration) {
        self.current.spawn_reload(every);
    }
}

fn parse(raw: &[Vec<u8>]) -> Result<Arc<CertifiedKey>, String> {
    let chain = CertificateDer::pem_slice_iter(&raw[0])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| "not a PEM certificate chain".to_owned())?;
    if chain.is_empty() {
        return Err("no certificate in the file".into());
    }
    let key = PrivateKeyDer::from_pem_slice(&raw[1])
        .map_err(|_| "HTTP_CLIENT_KEY_FILE is not a PEM private key".to_owned())?;
    let provider = rustls::crypto::ring::default_provider();
    // `from_der` also checks that the key is the certificate's: mid-rotation, one file can be
    // new and the other old, and that pair is refused until both are.
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| format!("HTTP_CLIENT_KEY_FILE is not the key of this certificate ({e})"))
}

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some((*self.current.get()).clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

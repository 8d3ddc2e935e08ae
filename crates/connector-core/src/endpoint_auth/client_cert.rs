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
    /// Reads the certificate chain and its private key (PEM files); fails, naming the variable
    /// of the file at fault and without the key's contents, when either cannot be read or
    /// parsed, or they do not belong together.
    pub fn load(cert: PathBuf, key: PathBuf) -> Result<Self, (&'static str, String)> {
        let read = |var, path: &PathBuf| {
            std::fs::read(path).map_err(|e| (var, format!("cannot read {path:?}: {e}")))
        };
        parse_pair(&[read(CERT, &cert)?, read(KEY, &key)?])?;
        Watched::load(CERT, vec![cert, key], parse)
            .map(|current| Self { current })
            .map_err(|e| (CERT, e))
    }

    /// Re-reads both files every `every` while this lives.
    pub(crate) fn spawn_reload(&self, every: std::time::Duration) {
        self.current.spawn_reload(every);
    }
}

const CERT: &str = "HTTP_CLIENT_CERT_FILE";
const KEY: &str = "HTTP_CLIENT_KEY_FILE";

/// [`parse_pair`] for the reloads, whose warnings name the variable in the text.
fn parse(raw: &[Vec<u8>]) -> Result<Arc<CertifiedKey>, String> {
    parse_pair(raw).map_err(|(var, e)| format!("{var}: {e}"))
}

/// The certified key from the certificate file's and the key file's contents; an error names
/// the variable of the file at fault.
fn parse_pair(raw: &[Vec<u8>]) -> Result<Arc<CertifiedKey>, (&'static str, String)> {
    let chain = CertificateDer::pem_slice_iter(&raw[0])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| (CERT, "not a PEM certificate chain".to_owned()))?;
    if chain.is_empty() {
        return Err((CERT, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(&raw[1])
        .map_err(|_| (KEY, "not a PEM private key".to_owned()))?;
    let provider = rustls::crypto::ring::default_provider();
    // `from_der` also checks that the key is the certificate's: mid-rotation, one file can be
    // new and the other old, and that pair is refused until both are.
    CertifiedKey::from_der(chain, key, &provider)
        .map(Arc::new)
        .map_err(|e| {
            (
                KEY,
                format!("not the key of HTTP_CLIENT_CERT_FILE's certificate ({e})"),
            )
        })
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

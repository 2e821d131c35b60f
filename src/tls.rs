//! TLS on the one port (`--tls-cert`, `--tls-key`), and client certificates
//! (`--tls-client-ca`): rustls with the ring provider, no OpenSSL.
//!
//! ALPN offers `h2` and `http/1.1`, so gRPC, gRPC-Web, HTTP/JSON and the
//! WebSocket keep sharing the port exactly as in plaintext (the connection
//! server tells HTTP/2 from HTTP/1.1 by the preface either way).
//!
//! The files are re-read on SIGHUP ([`Tls::reload`]): new connections get the
//! new certificate, open ones keep theirs, and a reload that fails (a key
//! that does not match, a half-written file) keeps the old configuration.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use rustls::{
    pki_types::{
        pem::{self, PemObject},
        CertificateDer, PrivateKeyDer,
    },
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio_rustls::TlsAcceptor;
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// The files TLS is configured from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// The server's TLS configuration, swapped whole on reload.
pub struct Tls {
    files: TlsFiles,
    current: RwLock<TlsAcceptor>,
}

/// Who a verified client certificate names (see [`peer_identity`]); put
/// on each request of the connection as an extension.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerIdentity(pub Arc<str>);

impl Tls {
    /// # Errors
    /// A file that cannot be read, or is not what it should be.
    pub fn load(files: TlsFiles) -> Result<Tls, String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&files)?));
        Ok(Tls {
            files,
            current: RwLock::new(acceptor),
        })
    }

    /// The acceptor for a new connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Re-reads the certificate, key and client CA.
    ///
    /// # Errors
    /// As [`Tls::load`]; the configuration in use is then kept.
    pub fn reload(&self) -> Result<(), String> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(&self.files)?));
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = acceptor;
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_cert(&self) -> bool {
        self.files.client_ca.is_some()
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = read_certs(&files.cert, "--tls-cert")?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {:?} holds no certificate", files.cert));
    }
    let key = read_key(&files.key)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(path, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|e| format!("--tls-client-ca {path:?}: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("--tls-client-ca {path:?}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        format!("--tls-cert/--tls-key: {e} (does the key belong to the certificate?)")
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// Every certificate in a PEM file.
///
/// # Errors
/// An unreadable file or bad PEM.
pub fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {flag} {path:?}: {e}"))?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{flag} {path:?} is not PEM: {}", pem_why(e)))
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read --tls-key {path:?}: {e}"))?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => {
            format!("--tls-key {path:?} holds no private key (PKCS#8, PKCS#1 or SEC1)")
        }
        e => format!("--tls-key {path:?} is not PEM: {}", pem_why(e)),
    })
}

/// A PEM parse error with the offending line as text: the parser's own
/// message shows it as a list of byte values.
fn pem_why(e: pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => {
            let label = String::from_utf8_lossy(&end_marker);
            format!("the {label} section has no -----END {label}----- line")
        }
        pem::Error::IllegalSectionStart { line } => {
            format!("bad section start {:?}", String::from_utf8_lossy(&line))
        }
        e => e.to_string(),
    }
}

/// The identity a client certificate names: its first URI SAN (a SPIFFE id
/// such as `spiffe://example.org/ns/app/sa/web`), else its first DNS SAN,
/// else its subject's common name. `None` when it names nothing usable.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Option<PeerIdentity> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| san.value.general_names.clone())
        .unwrap_or_default();
    let uri = names.iter().find_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let dns = names.iter().find_map(|n| match n {
        GeneralName::DNSName(d) => Some(*d),
        _ => None,
    });
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
    };
    uri.or(dns)
        .or_else(cn)
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .map(|id| PeerIdentity(id.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_pem_is_refused_with_the_file_and_the_fault_in_words() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.pem");
        std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
        let e = read_certs(&path, "--tls-cert").unwrap_err();
        assert!(
            e.starts_with("--tls-cert ")
                && e.contains(
                    "is not PEM: the CERTIFICATE section has no -----END CERTIFICATE----- line"
                ),
            "{e}"
        );
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let e = read_certs(&path, "--tls-cert").unwrap_err();
        assert!(e.contains("is not PEM: base64"), "{e}");
        std::fs::write(&path, "no PEM here\n").unwrap();
        assert_eq!(read_certs(&path, "--tls-cert").unwrap(), []);
        let e = read_key(&path).unwrap_err();
        assert!(e.contains("holds no private key"), "{e}");
    }
}

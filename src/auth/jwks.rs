//! JWKS documents: parsing one into keys by `kid`, and fetching one from an
//! identity provider's HTTPS endpoint (`--jwks-url`).
//!
//! The fetch is a plain HTTP/1.1 GET over rustls (hyper's client connection;
//! no general HTTP client is needed for one URL). It trusts the public web
//! roots, or only the CAs in `--jwks-ca-file` (an internal identity
//! provider, or a test's). A document is at most [`MAX_DOCUMENT`] bytes and
//! a fetch takes at most [`FETCH_TIMEOUT`].

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::{body::Bytes, Uri};
use jsonwebtoken::{
    jwk::{AlgorithmParameters, JwkSet},
    Algorithm, AlgorithmFamily, DecodingKey,
};
use rustls::{pki_types::ServerName, ClientConfig, RootCertStore};

/// Keys by `kid`, each with the algorithms it may verify.
pub type KeyMap = HashMap<String, (DecodingKey, Vec<Algorithm>)>;

/// The largest JWKS document accepted (real ones are a few KiB).
const MAX_DOCUMENT: usize = 1 << 20;
/// How long one fetch (connect, handshake, request, body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The public keys of a JWKS document that have a `kid`. `what` names the
/// source in errors.
///
/// # Errors
/// Not a JWKS document, a key that cannot be used, or no usable key.
pub fn parse(doc: &[u8], what: &str) -> Result<KeyMap, String> {
    let set: JwkSet =
        serde_json::from_slice(doc).map_err(|e| format!("{what}: not a JWKS document: {e}"))?;
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = jwk.common.key_id.clone() else {
            continue; // unreachable by `kid`
        };
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            // Shared secrets do not belong in a published key set; skip
            // them and kinds this version does not know.
            _ => continue,
        };
        let algs = match jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse().ok())
        {
            Some(alg) if family.algorithms().contains(&alg) => vec![alg],
            _ => family.algorithms().to_vec(),
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("{what}: key {kid:?}: {e}"))?;
        keys.insert(kid, (key, algs));
    }
    if keys.is_empty() {
        return Err(format!("{what}: no public key with a `kid`"));
    }
    Ok(keys)
}

/// Fetches one JWKS URL.
pub struct Fetcher {
    url: Uri,
    tls: Arc<ClientConfig>,
}

impl Fetcher {
    /// # Errors
    /// Not an `https://` URL, or an unreadable `ca_file`.
    pub fn new(url: &str, ca_file: Option<&Path>) -> Result<Fetcher, String> {
        let url: Uri = url
            .parse()
            .map_err(|e| format!("--jwks-url {url:?}: {e}"))?;
        if url.scheme_str() != Some("https") || url.host().is_none() {
            return Err(format!(
                "--jwks-url {url}: must be an https:// URL (keys fetched in plaintext could be replaced on the way)"
            ));
        }
        let mut roots = RootCertStore::empty();
        match ca_file {
            Some(path) => {
                for cert in crate::tls::read_certs(path, "--jwks-ca-file")? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--jwks-ca-file {path:?}: {e}"))?;
                }
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let mut tls =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("TLS: {e}"))?
                .with_root_certificates(roots)
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Fetcher {
            url,
            tls: Arc::new(tls),
        })
    }

    /// The URL, for logs.
    pub fn url(&self) -> &Uri {
        &self.url
    }

    /// Fetches and parses the document.
    ///
    /// # Errors
    /// Unreachable, not 200, too big, too slow, or not a usable JWKS.
    pub async fn fetch(&self) -> Result<KeyMap, String> {
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get())
            .await
            .map_err(|_| format!("{}: no answer in {FETCH_TIMEOUT:?}", self.url))??;
        parse(&body, &format!("--jwks-url {}", self.url))
    }

    async fn get(&self) -> Result<Bytes, String> {
        let url = &self.url;
        let fail = |e: &dyn std::fmt::Display| format!("{url}: {e}");
        let host = url.host().unwrap_or_default();
        // An IPv6 literal comes bracketed in a URL, bare everywhere else.
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(443);
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| fail(&e))?;
        let name = ServerName::try_from(bare.to_owned()).map_err(|e| fail(&e))?;
        let stream = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(name, tcp)
            .await
            .map_err(|e| fail(&e))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| fail(&e))?;
        // The connection task ends with the response (or with this future,
        // when the timeout drops it).
        let conn = tokio::spawn(conn);
        let _abort = AbortOnDrop(conn);
        let request = hyper::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(
                hyper::header::HOST,
                url.authority().map_or(host, |a| a.as_str()),
            )
            .header(hyper::header::ACCEPT, "application/json")
            .header(hyper::header::USER_AGENT, "chat")
            .body(Empty::<Bytes>::new())
            .map_err(|e| fail(&e))?;
        let response = sender.send_request(request).await.map_err(|e| fail(&e))?;
        if response.status() != hyper::StatusCode::OK {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        Ok(Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| fail(&format!("reading the document: {e}")))?
            .to_bytes())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<Result<(), hyper::Error>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! A test CA made at test time (rcgen), the certificates it signs, and
//! clients that speak TLS to the server: a tonic channel, raw HTTP/1.1
//! requests (JSON, gRPC-Web) and a WebSocket, all over rustls.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer, ServerName},
    ClientConfig, RootCertStore,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Channel;

/// A CA whose files live in a test dir.
pub struct Ca {
    dir: PathBuf,
    /// The CA certificate (PEM), to trust.
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its key, as PEM files.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What a client certificate names.
pub enum Name<'a> {
    /// A URI SAN (e.g. a SPIFFE id) and a DNS SAN.
    UriAndDns(&'a str, &'a str),
    /// Only a DNS SAN.
    Dns(&'a str),
    /// Only a subject common name.
    Cn(&'a str),
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca {
            dir: dir.to_owned(),
            cert: path,
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, file: &str, mut params: CertificateParams) -> Pair {
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let pair = Pair {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&pair.cert, cert.pem()).unwrap();
        std::fs::write(&pair.key, key.serialize_pem()).unwrap();
        pair
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn server(&self, file: &str) -> Pair {
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(file, params)
    }

    /// A client certificate naming `name`.
    pub fn client(&self, file: &str, name: Name<'_>) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        match name {
            Name::UriAndDns(uri, dns) => {
                params.subject_alt_names = vec![
                    SanType::DnsName(dns.try_into().unwrap()),
                    SanType::URI(uri.try_into().unwrap()),
                ];
                params
                    .distinguished_name
                    .push(DnType::CommonName, "not-the-identity");
            }
            Name::Dns(dns) => {
                params.subject_alt_names = vec![SanType::DnsName(dns.try_into().unwrap())];
                params
                    .distinguished_name
                    .push(DnType::CommonName, "not-the-identity");
            }
            Name::Cn(cn) => params.distinguished_name.push(DnType::CommonName, cn),
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(file, params)
    }
}

/// A rustls client trusting `ca`, presenting `client` if given, offering
/// `alpn`.
pub fn client_config(ca: &Path, client: Option<&Pair>, alpn: &[&str]) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(pair) => {
            let pem = std::fs::read(&pair.cert).unwrap();
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(&std::fs::read(&pair.key).unwrap()).unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr` as `localhost`.
pub async fn connect(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
}

/// A gRPC channel over TLS (h2 by ALPN).
pub async fn channel(addr: SocketAddr, config: Arc<ClientConfig>) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("http://localhost:{}", addr.port()))
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let config = config.clone();
            async move {
                connect(addr, config)
                    .await
                    .map(hyper_util::rt::TokioIo::new)
            }
        }))
        .await
        .map_err(|e| format!("{e:?}"))
}

/// One HTTP/1.1 request over TLS: the status, the headers and the body.
pub async fn request(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    request: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
) -> (
    hyper::StatusCode,
    hyper::HeaderMap,
    hyper::HeaderMap,
    hyper::body::Bytes,
) {
    use http_body_util::BodyExt;
    let stream = connect(addr, config).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (parts.status, parts.headers, trailers, collected.to_bytes())
}

/// An EC P-256 signing key with a `kid`: signs ES256 tokens and is
/// published as a JWK.
pub struct JwtKey {
    pub kid: String,
    key: KeyPair,
}

impl JwtKey {
    pub fn new(kid: &str) -> JwtKey {
        JwtKey {
            kid: kid.to_owned(),
            key: KeyPair::generate().unwrap(),
        }
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> serde_json::Value {
        use base64::Engine;
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        // An uncompressed point: 0x04, x, y.
        let point = self.key.public_key_raw();
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        })
    }

    /// An ES256 token with `kid` for `sub`, valid for an hour.
    pub fn token(&self, sub: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(
            &header,
            &serde_json::json!({"sub": sub, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    }
}

/// A JWKS document of `keys`.
pub fn jwks(keys: &[&JwtKey]) -> String {
    serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() }).to_string()
}

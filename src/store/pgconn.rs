//! Connecting to PostgreSQL: the store URL (or libpq `key=value` string),
//! its `sslmode` as libpq means it, the password, and the pool.
//!
//! tokio-postgres understands `sslmode` disable/prefer/require only, and
//! verifies nothing itself; the TLS connector (rustls) does. So the TLS
//! parameters are taken out of the string here and turned into a rustls
//! configuration with libpq's meaning:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (default) | if the server offers it | no |
//! | `require` | always | no |
//! | `verify-ca` | always | chain to a trusted root |
//! | `verify-full` | always | chain and host name |
//!
//! Trusted roots: the PEM file in `sslrootcert` if set, else the Mozilla
//! roots (webpki-roots), as managed databases use public CAs.

use std::{sync::Arc, time::Duration};

use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    pki_types::{CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{Result, StoreError};

/// How to reach the database, as configured (see `Config`).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://…` or `host=… dbname=…`; may hold the password.
    pub url: String,
    /// Used when the URL has no password (`--store-password-file`, `PGPASSWORD`).
    pub password: Option<String>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// Longest a statement may run (also bounds waits for row locks).
    pub statement_timeout: Duration,
    /// Most messages in one transaction.
    pub batch_max: usize,
    /// How long startup keeps retrying an unreachable database.
    pub connect_timeout: Duration,
    /// A separate URL for the LISTEN connection (poolers in transaction
    /// mode and standbys cannot LISTEN); `None`: the store URL.
    pub listen_url: Option<String>,
}

impl std::fmt::Debug for PgOptions {
    /// Never the URL's password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("batch_max", &self.batch_max)
            .finish_non_exhaustive()
    }
}

/// A parsed connection: the driver's config and the TLS connector for it.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl Target {
    /// Parses `url` (a URL or a libpq `key=value` string).
    ///
    /// # Errors
    /// `StoreError::Config` for what the driver or this parser refuses, or
    /// an unreadable `sslrootcert`; the message never holds the password.
    pub fn parse(url: &str, password: Option<&str>, statement_timeout: Duration) -> Result<Target> {
        let (rest, sslmode, rootcert) = split_tls_params(url);
        let mut config: tokio_postgres::Config = rest.parse().map_err(|e| {
            StoreError::Config(format!("cannot parse the store URL {}: {e}", redact(url)))
        })?;
        if config.get_password().is_none() {
            if let Some(p) = password {
                config.password(p);
            }
        }
        let verify = match sslmode.as_deref().unwrap_or("prefer") {
            "disable" => {
                config.ssl_mode(SslMode::Disable);
                Verify::Nothing
            }
            "allow" | "prefer" => {
                config.ssl_mode(SslMode::Prefer);
                Verify::Nothing
            }
            "require" => {
                config.ssl_mode(SslMode::Require);
                Verify::Nothing
            }
            "verify-ca" => {
                config.ssl_mode(SslMode::Require);
                Verify::Chain
            }
            "verify-full" => {
                config.ssl_mode(SslMode::Require);
                Verify::Full
            }
            other => {
                return Err(StoreError::Config(format!(
                    "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
                )))
            }
        };
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // After the URL's own `options`, so that this one wins.
        let options = format!(
            "{} -c statement_timeout={}",
            config.get_options().unwrap_or_default(),
            statement_timeout.as_millis().max(1)
        );
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(10))
            .options(options.trim_start());
        if config.get_application_name().is_none() {
            config.application_name("chat");
        }
        let tls = MakeRustlsConnect::new(tls_config(verify, rootcert.as_deref())?);
        Ok(Target { config, tls })
    }
}

#[derive(Clone, Copy)]
enum Verify {
    Nothing,
    Chain,
    Full,
}

fn tls_config(verify: Verify, rootcert: Option<&str>) -> Result<ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Config(format!("TLS: {e}")))?;
    let mut roots = RootCertStore::empty();
    match rootcert {
        Some(path) => {
            let certs = crate::tls::read_certs(std::path::Path::new(path), "sslrootcert")
                .map_err(StoreError::Config)?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| StoreError::Config(format!("sslrootcert {path:?}: {e}")))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots.clone()),
        provider,
    )
    .build()
    .map_err(|e| StoreError::Config(format!("TLS roots: {e}")))?;
    Ok(match verify {
        Verify::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        mode => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Lenient {
                webpki,
                check_chain: matches!(mode, Verify::Chain),
            }))
            .with_no_client_auth(),
    })
}

/// libpq's `require` (encrypt, trust anything) and `verify-ca` (trust the
/// chain, not the name), which rustls does not offer by itself. Handshake
/// signatures are always checked.
#[derive(Debug)]
struct Lenient {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    check_chain: bool,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !self.check_chain {
            return Ok(ServerCertVerified::assertion());
        }
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL's query or a `key=value`
/// string: (the rest, sslmode, sslrootcert).
fn split_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let (mut mode, mut root) = (None, None);
    let mut take = |key: &str, value: &str| match key {
        "sslmode" => {
            mode = Some(value.to_owned());
            true
        }
        "sslrootcert" => {
            root = Some(value.to_owned());
            true
        }
        _ => false,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|kv| {
                        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                        !take(k, &percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
            None => url.to_owned(),
        }
    } else {
        url.split_whitespace()
            .filter(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                !take(k.trim(), v.trim().trim_matches('\''))
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    (rest, mode, root)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The URL or `key=value` string with every password replaced by `***`,
/// for logs and errors: the URL's user info, a `password` query
/// parameter, a `password` key (quoted or not).
pub fn redact(url: &str) -> String {
    if let Some(rest) = url
        .strip_prefix("postgres://")
        .map(|r| ("postgres://", r))
        .or_else(|| {
            url.strip_prefix("postgresql://")
                .map(|r| ("postgresql://", r))
        })
    {
        let (scheme, rest) = rest;
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (rest, None),
        };
        // The user info ends at the last '@' (a password may hold '/').
        let authority = match before_query.rfind('@') {
            Some(at) => {
                let (info, host) = before_query.split_at(at);
                match info.split_once(':') {
                    Some((user, _)) => format!("{user}:***{host}"),
                    None => before_query.to_owned(),
                }
            }
            None => before_query.to_owned(),
        };
        let query = query.map(|q| {
            q.split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect::<Vec<_>>()
                .join("&")
        });
        return match query {
            Some(q) => format!("{scheme}{authority}?{q}"),
            None => format!("{scheme}{authority}"),
        };
    }
    // libpq key=value: `key = value`, values optionally 'quoted' with \' escapes.
    let mut out = String::new();
    let mut rest = url.trim_start();
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace())
            .unwrap_or(rest.len());
        let key = &rest[..key_end];
        rest = rest[key_end..].trim_start();
        let Some(after_eq) = rest.strip_prefix('=') else {
            // Not key=value: keep the word as it is.
            out.push_str(key);
            out.push(' ');
            continue;
        };
        rest = after_eq.trim_start();
        let value_len = if rest.starts_with('\'') {
            let mut escaped = false;
            rest.char_indices()
                .skip(1)
                .find(|&(_, c)| {
                    let end = c == '\'' && !escaped;
                    escaped = c == '\\' && !escaped;
                    end
                })
                .map_or(rest.len(), |(i, _)| i + 1)
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        let value = &rest[..value_len];
        rest = rest[value_len..].trim_start();
        if key == "password" {
            out.push_str("password=***");
        } else {
            out.push_str(&format!("{key}={value}"));
        }
        out.push(' ');
    }
    out.trim_end().to_owned()
}

/// A pool of `size` connections to `target`; connections are made on demand.
pub fn pool(target: &Target, size: usize, wait: Duration) -> Result<deadpool_postgres::Pool> {
    let manager = deadpool_postgres::Manager::from_config(
        target.config.clone(),
        target.tls.clone(),
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    deadpool_postgres::Pool::builder(manager)
        .max_size(size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(wait))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| StoreError::Config(format!("connection pool: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_either_form() {
        let (rest, mode, root) =
            split_tls_params("postgres://u:p@h:5432/db?sslmode=verify-full&application_name=x");
        assert_eq!(rest, "postgres://u:p@h:5432/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root, None);
        let (rest, mode, root) =
            split_tls_params("host=h dbname=db sslmode=verify-ca sslrootcert=/etc/ca%20x.pem");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(mode.as_deref(), Some("verify-ca"));
        assert_eq!(root.as_deref(), Some("/etc/ca%20x.pem"));
        let (rest, _, root) = split_tls_params("postgresql://h/db?sslrootcert=%2Fca.pem");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(root.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn passwords_never_reach_a_log() {
        assert_eq!(
            redact("postgres://ann:s3cret@db:5432/chat?sslmode=require"),
            "postgres://ann:***@db:5432/chat?sslmode=require"
        );
        assert_eq!(redact("postgres://ann@db/chat"), "postgres://ann@db/chat");
        assert_eq!(
            redact("host=db password=s3cret user=ann"),
            "host=db password=*** user=ann"
        );
        assert_eq!(
            redact("host=db password = 'a b\\' c' user=ann"),
            "host=db password=*** user=ann"
        );
        assert_eq!(
            redact("postgres://ann:pa/ss@db/chat"),
            "postgres://ann:***@db/chat"
        );
        assert_eq!(
            redact("postgresql://db/chat?user=ann&password=s3cret&sslmode=require"),
            "postgresql://db/chat?user=ann&password=***&sslmode=require"
        );
        assert_eq!(percent_decode("%aé%2F%"), "%aé/%");
        let err = Target::parse(
            "postgres://ann:s3cret@db/chat?sslmode=bogus",
            None,
            Duration::from_secs(5),
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("s3cret"), "{err}");
        let err = Target::parse(
            "postgres://ann:s3cret@db:notaport/chat",
            None,
            Duration::from_secs(5),
        )
        .err()
        .unwrap();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }
}

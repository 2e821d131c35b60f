//! Who is calling: the identity of a request, from a JWT (`--auth jwt`), a
//! header set by a trusted sidecar (`--auth header`), a client certificate
//! (`--auth mtls`), or nobody (`--auth none`, the embedded quick start). The rules that use it live in the chat
//! logic (`chat::Caller`); this module only verifies.
//!
//! JWT verification is jsonwebtoken's; what this module decides is which
//! keys and algorithms to trust. Only the algorithms of the configured key's
//! family are accepted, so a token with `alg: none`, or an HS256 token
//! signed with an RSA or EC *public* key as its secret, is refused. `exp` is
//! required, `nbf` honoured, with `--jwt-leeway` seconds (default 5, not the
//! library's 60).
//!
//! Keys come from a file (re-read on SIGHUP, see [`Auth::reload`]) or an
//! identity provider's JWKS URL ([`jwks`]): fetched at startup, every
//! `--jwks-refresh`, and when a token names a `kid` the set lacks (at most
//! once per `--jwks-refresh-min`).

pub mod jwks;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{errors::ErrorKind, Algorithm, AlgorithmFamily, DecodingKey, Validation};

use crate::{error::Error, tls::PeerIdentity};

/// A verified caller.
#[derive(Clone, Debug, PartialEq)]
pub struct Identity {
    /// The user the caller is (the token's `sub`, or `--jwt-user-claim`).
    pub user: String,
    /// A service acting for users (its token has `--jwt-service-scope`): it
    /// may create, send and read as anyone.
    pub service: bool,
    /// When the credential stops being valid (unix seconds): open streams
    /// end then.
    pub expires_at: Option<u64>,
}

/// How requests are authenticated (see the module docs).
pub enum Auth {
    None,
    Jwt(Box<Jwt>),
    /// The identity is this header's value, set by a trusted sidecar.
    Header(String),
    /// The identity is the verified client certificate's (see
    /// [`crate::tls::peer_identity`]).
    Mtls,
}

/// A JWT verifier: its keys and checks.
pub struct Jwt {
    source: KeySource,
    /// Swapped whole by a reload or a refresh.
    keys: RwLock<Arc<Keys>>,
    /// When the key set was last fetched from `--jwks-url`; held across a
    /// fetch, so that concurrent tokens with an unknown `kid` share one.
    fetched: tokio::sync::Mutex<Instant>,
    /// Issuer, audience, leeway; `algorithms` is set per key.
    validation: Validation,
    user_claim: String,
    service_scope: Option<String>,
}

/// Where the keys come from (and are re-read from).
enum KeySource {
    Secret(PathBuf),
    PublicKey(PathBuf),
    JwksFile(PathBuf),
    JwksUrl {
        fetcher: jwks::Fetcher,
        /// How often the set is fetched anyway.
        every: Duration,
        /// The least time between two fetches for unknown `kid`s.
        min_interval: Duration,
    },
}

enum Keys {
    /// One key (a secret or a PEM public key) and its family's algorithms.
    One(DecodingKey, Vec<Algorithm>),
    /// A JWKS document: the token's `kid` picks the key.
    Set(jwks::KeyMap),
}

/// What `--auth jwt` is configured with.
pub struct JwtOptions<'a> {
    pub secret_file: Option<&'a Path>,
    pub public_key_file: Option<&'a Path>,
    pub jwks_file: Option<&'a Path>,
    pub jwks_url: Option<&'a str>,
    pub jwks_ca_file: Option<&'a Path>,
    pub jwks_refresh: Duration,
    pub jwks_refresh_min: Duration,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway: Duration,
    pub user_claim: &'a str,
    pub service_scope: Option<&'a str>,
}

/// How many times startup tries `--jwks-url` before giving up.
const STARTUP_FETCHES: u32 = 3;

impl Jwt {
    /// Reads (or fetches) the keys.
    ///
    /// # Errors
    /// Not exactly one key source, or a key that cannot be read, fetched or
    /// parsed.
    pub async fn new(o: &JwtOptions<'_>) -> Result<Jwt, String> {
        let source = match (o.secret_file, o.public_key_file, o.jwks_file, o.jwks_url) {
            (Some(p), None, None, None) => KeySource::Secret(p.into()),
            (None, Some(p), None, None) => KeySource::PublicKey(p.into()),
            (None, None, Some(p), None) => KeySource::JwksFile(p.into()),
            (None, None, None, Some(url)) => KeySource::JwksUrl {
                fetcher: jwks::Fetcher::new(url, o.jwks_ca_file)?,
                every: o.jwks_refresh.max(Duration::from_secs(1)),
                min_interval: o.jwks_refresh_min,
            },
            _ => {
                return Err("--auth jwt needs exactly one of --jwt-secret-file, \
                     --jwt-public-key-file, --jwks-file, --jwks-url"
                    .into())
            }
        };
        let keys = match &source {
            KeySource::JwksUrl { fetcher, .. } => {
                let mut attempt = 1;
                loop {
                    match fetcher.fetch().await {
                        Ok(keys) => break Keys::Set(keys),
                        Err(e) if attempt < STARTUP_FETCHES => {
                            tracing::warn!("cannot fetch the JWKS (attempt {attempt}): {e}");
                            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                            attempt += 1;
                        }
                        Err(e) => return Err(format!("cannot fetch the JWKS: {e}")),
                    }
                }
            }
            source => source.read()?,
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = o.leeway.as_secs();
        validation.validate_nbf = true;
        // A configured audience or issuer is required, not only checked
        // when present: else a token minted for any application of the
        // identity provider, without `aud`, would pass.
        let mut required = vec!["exp"];
        required.extend(o.audience.map(|_| "aud"));
        required.extend(o.issuer.map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        validation.validate_aud = o.audience.is_some();
        if let Some(aud) = o.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = o.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Jwt {
            source,
            keys: RwLock::new(Arc::new(keys)),
            fetched: tokio::sync::Mutex::new(Instant::now()),
            validation,
            user_claim: o.user_claim.to_owned(),
            service_scope: o.service_scope.map(str::to_owned),
        })
    }

    fn keys(&self) -> Arc<Keys> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_keys(&self, keys: Keys) {
        *self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(keys);
    }

    /// Re-reads the key file, or fetches the key set again (SIGHUP).
    ///
    /// # Errors
    /// As [`Jwt::new`]; the keys in use are then kept.
    pub async fn reload(&self) -> Result<(), String> {
        let keys = match &self.source {
            KeySource::JwksUrl { fetcher, .. } => {
                let mut fetched = self.fetched.lock().await;
                *fetched = Instant::now();
                Keys::Set(fetcher.fetch().await?)
            }
            source => source.read()?,
        };
        self.set_keys(keys);
        Ok(())
    }

    /// With `--jwks-url`: how often the key set is fetched anyway.
    pub fn refresh_every(&self) -> Option<Duration> {
        match &self.source {
            KeySource::JwksUrl { every, .. } => Some(*every),
            _ => None,
        }
    }

    /// A token named a `kid` the set does not have: the provider may have
    /// rotated its keys. Fetches the set again unless that was done less
    /// than `--jwks-refresh-min` ago (so a flood of made-up `kid`s costs the
    /// provider one request per interval).
    async fn refresh_for_unknown_kid(&self) {
        let KeySource::JwksUrl {
            fetcher,
            min_interval,
            ..
        } = &self.source
        else {
            return;
        };
        let mut fetched = self.fetched.lock().await;
        if fetched.elapsed() < *min_interval {
            return;
        }
        *fetched = Instant::now();
        match fetcher.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %fetcher.url(), keys = keys.len(), "JWKS fetched for an unknown kid");
                self.set_keys(Keys::Set(keys));
            }
            Err(e) => tracing::warn!("cannot fetch the JWKS: {e}; keeping the keys in use"),
        }
    }

    /// The identity a token proves.
    ///
    /// # Errors
    /// `Unauthenticated` (`chat.Auth.InvalidToken`) saying which check failed.
    pub async fn verify(&self, token: &str) -> Result<Identity, Error> {
        let invalid = |why: &str| Error::Unauthenticated("chat.Auth.InvalidToken", why.into());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the bearer token is not a JWT a server can accept"))?;
        // RFC 7515 4.1.11: extensions marked critical must be understood,
        // and this server understands none.
        if header.crit.is_some() {
            return Err(invalid(
                "the token's header marks extensions as critical (crit), which this server does not support",
            ));
        }
        let mut keys = self.keys();
        if let (Keys::Set(set), Some(kid)) = (&*keys, &header.kid) {
            if !set.contains_key(kid) {
                self.refresh_for_unknown_kid().await;
                keys = self.keys();
            }
        }
        let (key, algorithms) = match &*keys {
            Keys::One(key, algs) => (key, algs),
            Keys::Set(set) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("the token names no key (kid)"))?;
                let (key, algs) = set
                    .get(kid)
                    .ok_or_else(|| invalid("the token's key (kid) is not in the key set"))?;
                (key, algs)
            }
        };
        let mut validation = self.validation.clone();
        validation.algorithms.clone_from(algorithms);
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            key,
            &validation,
        )
        .map_err(|e| {
            if let ErrorKind::MissingRequiredClaim(claim) = e.kind() {
                return Error::Unauthenticated(
                    "chat.Auth.InvalidToken",
                    match claim.as_str() {
                        "exp" => "the token has no expiry (exp)".into(),
                        "aud" => "the token has no audience (aud); this server requires one".into(),
                        "iss" => "the token has no issuer (iss); this server requires one".into(),
                        other => format!("the token has no {other:?} claim"),
                    },
                );
            }
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::InvalidAlgorithm => {
                    "the token's algorithm does not fit the server's key"
                }
                ErrorKind::InvalidIssuer => "the token's issuer (iss) is not the expected one",
                ErrorKind::InvalidAudience => "the token's audience (aud) is not this service",
                _ => "the bearer token is malformed",
            })
        })?;
        let claims = data.claims;
        let user = claims
            .get(&self.user_claim)
            .and_then(|v| v.as_str())
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                Error::Unauthenticated(
                    "chat.Auth.InvalidToken",
                    format!(
                        "the token has no {:?} claim naming the user",
                        self.user_claim
                    ),
                )
            })?;
        let service = self.service_scope.as_deref().is_some_and(|wanted| {
            claims
                .get("scope")
                .and_then(|s| s.as_str())
                .is_some_and(|s| s.split(' ').any(|scope| scope == wanted))
        });
        Ok(Identity {
            user: user.to_owned(),
            service,
            expires_at: claims.get("exp").and_then(expiry),
        })
    }
}

/// A token's `exp` as whole unix seconds. A NumericDate may have a
/// fraction (RFC 7519 2): rounded up, so that a stream ends no earlier than
/// the token does (and, past the clock's range, never).
fn expiry(exp: &serde_json::Value) -> Option<u64> {
    exp.as_u64().or_else(|| {
        exp.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            // `as` saturates at u64::MAX.
            .map(|f| f.ceil() as u64)
    })
}

impl KeySource {
    /// Reads a file source.
    fn read(&self) -> Result<Keys, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {p:?}: {e}"));
        match self {
            KeySource::Secret(path) => {
                let secret = read(path)?;
                let secret = secret.trim_ascii_end();
                if secret.len() < 32 {
                    return Err("--jwt-secret-file: an HS256 secret needs 32 bytes or more".into());
                }
                Ok(Keys::One(
                    DecodingKey::from_secret(secret),
                    AlgorithmFamily::Hmac.algorithms().to_vec(),
                ))
            }
            KeySource::PublicKey(path) => {
                let (key, family) = public_key(&read(path)?)
                    .ok_or("--jwt-public-key-file: not a PEM RSA, EC or Ed25519 public key")?;
                Ok(Keys::One(key, family.algorithms().to_vec()))
            }
            KeySource::JwksFile(path) => Ok(Keys::Set(jwks::parse(&read(path)?, "--jwks-file")?)),
            KeySource::JwksUrl { fetcher, .. } => {
                Err(format!("{} is fetched, not read", fetcher.url()))
            }
        }
    }
}

/// A PEM public key and the family of algorithms it verifies.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, AlgorithmFamily)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((k, AlgorithmFamily::Rsa));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((k, AlgorithmFamily::Ec));
    }
    DecodingKey::from_ed_pem(pem)
        .ok()
        .map(|k| (k, AlgorithmFamily::Ed))
}

impl Auth {
    /// The caller of a request, from its headers (`get` reads every value
    /// of one by its lower-case name, in order); `token` is a bearer token
    /// found elsewhere (the WebSocket's subprotocols or query). `None` when
    /// auth is off.
    ///
    /// # Errors
    /// `Unauthenticated`: no credential, one that does not verify, or the
    /// credential's header more than once.
    pub async fn identify<'a>(
        &self,
        get: impl Fn(&str) -> Vec<&'a str>,
        token: Option<&str>,
        peer: Option<&PeerIdentity>,
    ) -> Result<Option<Identity>, Error> {
        // Two copies of the header that names the caller are two claims:
        // which one a sidecar meant cannot be told (it should have replaced
        // the client's, not appended to it), so neither is believed.
        let one = |name: &str| -> Result<Option<&'a str>, Error> {
            match get(name)[..] {
                [] => Ok(None),
                [value] => Ok(Some(value)),
                _ => Err(Error::Unauthenticated(
                    "chat.Auth.DuplicateHeader",
                    format!(
                        "the {name} header is present more than once; send it exactly once \
                         (a proxy must replace a client's copy, not add another)"
                    ),
                )),
            }
        };
        match self {
            Auth::None => Ok(None),
            Auth::Header(name) => match one(name)?.map(str::trim).filter(|v| !v.is_empty()) {
                Some(user) => Ok(Some(Identity {
                    user: user.to_owned(),
                    service: false,
                    expires_at: None,
                })),
                None => Err(Error::Unauthenticated(
                    "chat.Auth.MissingToken",
                    format!("the {name} header naming the caller is missing"),
                )),
            },
            Auth::Mtls => match peer {
                Some(PeerIdentity(id)) => Ok(Some(Identity {
                    user: id.to_string(),
                    service: false,
                    expires_at: None,
                })),
                None => Err(Error::Unauthenticated(
                    "chat.Auth.MissingToken",
                    "the client certificate names no identity (URI or DNS SAN, or CN)".into(),
                )),
            },
            Auth::Jwt(jwt) => {
                let bearer = one("authorization")?.and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                });
                match bearer.or(token) {
                    Some(token) => jwt.verify(token).await.map(Some),
                    None => Err(Error::Unauthenticated(
                        "chat.Auth.MissingToken",
                        "send `authorization: Bearer <token>`".into(),
                    )),
                }
            }
        }
    }

    /// Re-reads what the credentials are checked against (SIGHUP): the JWT
    /// key file, or the JWKS URL. Nothing for the other modes.
    ///
    /// # Errors
    /// The new keys cannot be read; the old ones stay in use.
    pub async fn reload(&self) -> Result<(), String> {
        match self {
            Auth::Jwt(jwt) => jwt.reload().await,
            _ => Ok(()),
        }
    }

    /// Fetches `--jwks-url` every `--jwks-refresh` until dropped (a failed
    /// fetch keeps the keys in use). Pending forever for other sources.
    pub async fn refresh_keys(&self) {
        let Some(every) = (match self {
            Auth::Jwt(jwt) => jwt.refresh_every(),
            _ => None,
        }) else {
            return std::future::pending().await;
        };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.reload().await {
                tracing::warn!("cannot refresh the JWKS: {e}; keeping the keys in use");
            }
        }
    }
}

impl Identity {
    /// How long until the credential expires (zero if it has).
    pub fn expires_in(&self) -> Option<Duration> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
        self.expires_at
            .map(|exp| Duration::from_secs(exp.saturating_sub(now)))
    }
}

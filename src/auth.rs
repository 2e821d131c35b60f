//! Who is calling: the identity of a request, from a JWT (`--auth jwt`), a
//! header set by a trusted sidecar (`--auth header`), or nobody (`--auth
//! none`, the embedded quick start). The rules that use it live in the chat
//! logic (`chat::Caller`); this module only verifies.
//!
//! JWT verification is jsonwebtoken's; what this module decides is which
//! keys and algorithms to trust. Only the algorithms of the configured key's
//! family are accepted, so a token with `alg: none`, or an HS256 token
//! signed with an RSA or EC *public* key as its secret, is refused. `exp` is
//! required, `nbf` honoured, with `--jwt-leeway` seconds (default 5, not the
//! library's 60).

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{
    errors::ErrorKind,
    jwk::{AlgorithmParameters, JwkSet},
    Algorithm, AlgorithmFamily, DecodingKey, Validation,
};

use crate::error::Error;

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
}

/// A JWT verifier: its keys and checks.
pub struct Jwt {
    keys: Keys,
    /// Issuer, audience, leeway; `algorithms` is set per key.
    validation: Validation,
    user_claim: String,
    service_scope: Option<String>,
}

enum Keys {
    /// One key (a secret or a PEM public key) and its family's algorithms.
    One(DecodingKey, Vec<Algorithm>),
    /// A JWKS document: the token's `kid` picks the key.
    Set(HashMap<String, (DecodingKey, Vec<Algorithm>)>),
}

/// What `--auth jwt` is configured with.
pub struct JwtOptions<'a> {
    pub secret_file: Option<&'a Path>,
    pub public_key_file: Option<&'a Path>,
    pub jwks_file: Option<&'a Path>,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub leeway: Duration,
    pub user_claim: &'a str,
    pub service_scope: Option<&'a str>,
}

impl Jwt {
    /// # Errors
    /// Not exactly one key source, or a key that cannot be read or parsed.
    pub fn new(o: &JwtOptions<'_>) -> Result<Jwt, String> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {p:?}: {e}"));
        let keys = match (o.secret_file, o.public_key_file, o.jwks_file) {
            (Some(secret), None, None) => {
                let secret = read(secret)?;
                let secret = secret.trim_ascii_end();
                if secret.len() < 32 {
                    return Err("--jwt-secret-file: an HS256 secret needs 32 bytes or more".into());
                }
                Keys::One(
                    DecodingKey::from_secret(secret),
                    AlgorithmFamily::Hmac.algorithms().to_vec(),
                )
            }
            (None, Some(public), None) => {
                let (key, family) = public_key(&read(public)?)
                    .ok_or("--jwt-public-key-file: not a PEM RSA, EC or Ed25519 public key")?;
                Keys::One(key, family.algorithms().to_vec())
            }
            (None, None, Some(jwks)) => {
                let set: JwkSet = serde_json::from_slice(&read(jwks)?)
                    .map_err(|e| format!("--jwks-file: not a JWKS document: {e}"))?;
                let mut keys = HashMap::new();
                for jwk in &set.keys {
                    let Some(kid) = jwk.common.key_id.clone() else {
                        continue; // unreachable by `kid`
                    };
                    let family = match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
                        AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
                        AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
                        // Shared secrets do not belong in a published key
                        // set; skip them and kinds this version does not know.
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
                    let key = DecodingKey::from_jwk(jwk)
                        .map_err(|e| format!("--jwks-file: key {kid:?}: {e}"))?;
                    keys.insert(kid, (key, algs));
                }
                if keys.is_empty() {
                    return Err("--jwks-file: no public key with a `kid`".into());
                }
                Keys::Set(keys)
            }
            _ => {
                return Err("--auth jwt needs exactly one of --jwt-secret-file, \
                     --jwt-public-key-file, --jwks-file"
                    .into())
            }
        };
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = o.leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_aud = o.audience.is_some();
        if let Some(aud) = o.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = o.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Jwt {
            keys,
            validation,
            user_claim: o.user_claim.to_owned(),
            service_scope: o.service_scope.map(str::to_owned),
        })
    }

    /// The identity a token proves.
    ///
    /// # Errors
    /// `Unauthenticated` (`chat.Auth.InvalidToken`) saying which check failed.
    pub fn verify(&self, token: &str) -> Result<Identity, Error> {
        let invalid = |why: &str| Error::Unauthenticated("chat.Auth.InvalidToken", why.into());
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the bearer token is not a JWT a server can accept"))?;
        let (key, algorithms) = match &self.keys {
            Keys::One(key, algs) => (key, algs),
            Keys::Set(keys) => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| invalid("the token names no key (kid)"))?;
                let (key, algs) = keys
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
            invalid(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired",
                ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
                ErrorKind::InvalidSignature => "the token's signature does not verify",
                ErrorKind::InvalidAlgorithm => {
                    "the token's algorithm does not fit the server's key"
                }
                ErrorKind::InvalidIssuer => "the token's issuer (iss) is not the expected one",
                ErrorKind::InvalidAudience => "the token's audience (aud) is not this service",
                ErrorKind::MissingRequiredClaim(_) => "the token has no expiry (exp)",
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
            expires_at: claims.get("exp").and_then(|e| e.as_u64()),
        })
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
    /// The caller of a request, from its headers (`get` reads one by its
    /// lower-case name); `token` is a bearer token found elsewhere (the
    /// WebSocket's subprotocols or query). `None` when auth is off.
    ///
    /// # Errors
    /// `Unauthenticated`: no credential, or one that does not verify.
    pub fn identify<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
        token: Option<&str>,
    ) -> Result<Option<Identity>, Error> {
        match self {
            Auth::None => Ok(None),
            Auth::Header(name) => match get(name).map(str::trim).filter(|v| !v.is_empty()) {
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
            Auth::Jwt(jwt) => {
                let bearer = get("authorization").and_then(|v| {
                    let (scheme, token) = v.trim().split_once(' ')?;
                    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
                });
                match bearer.or(token) {
                    Some(token) => jwt.verify(token).map(Some),
                    None => Err(Error::Unauthenticated(
                        "chat.Auth.MissingToken",
                        "send `authorization: Bearer <token>`".into(),
                    )),
                }
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

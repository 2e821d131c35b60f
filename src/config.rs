//! Configuration: every setting is a flag with a `CHAT_*` environment
//! variable. `chat --help` is the reference; the README's table matches it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, Subcommand, ValueEnum};

use crate::{chat::Limits, store::pgconn::PgOptions};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "chat",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("CHAT_GIT_COMMIT"), ")"),
    about = "A gRPC chat service: an embedded sled store by default, or any number of replicas on PostgreSQL."
)]
pub struct Config {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Address to serve gRPC on.
    #[arg(
        long,
        env = "CHAT_LISTEN",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub listen: SocketAddr,

    /// Where chats are stored: `sled` (the embedded store in --data-dir), a
    /// directory (a sled store there), or a PostgreSQL URL
    /// (`postgres://user@host:5432/db?sslmode=verify-full`) or libpq
    /// `key=value` string, shared by every replica.
    #[arg(
        long,
        env = "CHAT_STORE",
        default_value = "sled",
        hide_env_values = true,
        global = true
    )]
    pub store: Secret,

    /// A file holding the database password (used when the URL has none;
    /// else `PGPASSWORD`).
    #[arg(long, env = "CHAT_STORE_PASSWORD_FILE", global = true)]
    pub store_password_file: Option<PathBuf>,

    /// Directory of the sled store (created if missing; one server per
    /// directory). Not used with a PostgreSQL store.
    #[arg(
        long,
        env = "CHAT_DATA_DIR",
        default_value = "./chat-data",
        global = true
    )]
    pub data_dir: PathBuf,

    /// Connections to PostgreSQL per replica.
    #[arg(long, env = "CHAT_PG_POOL_SIZE", default_value_t = 16, global = true)]
    pub pg_pool_size: usize,

    /// Seconds a database statement may run (or wait for a lock, or for a
    /// pool connection) before the call fails with UNAVAILABLE.
    #[arg(
        long,
        env = "CHAT_PG_STATEMENT_TIMEOUT",
        default_value_t = 5,
        global = true
    )]
    pub pg_statement_timeout: u64,

    /// Most messages in one database transaction (group commit).
    #[arg(long, env = "CHAT_PG_BATCH_MAX", default_value_t = 1024, global = true)]
    pub pg_batch_max: usize,

    /// Seconds startup keeps retrying an unreachable database before it gives up.
    #[arg(
        long,
        env = "CHAT_PG_CONNECT_TIMEOUT",
        default_value_t = 60,
        global = true
    )]
    pub pg_connect_timeout: u64,

    /// A separate URL for the LISTEN connection that carries wake-ups
    /// between replicas (default: the store URL), e.g. straight to the
    /// primary when the store URL goes through a (session-mode) pooler.
    #[arg(
        long,
        env = "CHAT_PG_LISTEN_URL",
        hide_env_values = true,
        global = true
    )]
    pub pg_listen_url: Option<Secret>,

    /// MiB for the embedded store's page cache (sled; unused with
    /// PostgreSQL), above a floor this cannot lower: each of sled's 256
    /// cache shards keeps the tree node it used last (up to 16 messages),
    /// ≈ 4,096 × the message size in all (README, "Memory").
    #[arg(long, env = "CHAT_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,

    /// Largest subject + text of one message, in bytes.
    #[arg(long, env = "CHAT_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,

    /// Largest user id or client id, in bytes.
    #[arg(long, env = "CHAT_MAX_ID_BYTES", default_value_t = 128)]
    pub max_id_bytes: usize,

    /// Most user ids in one New (members of one chat).
    #[arg(long, env = "CHAT_MAX_MEMBERS", default_value_t = 256)]
    pub max_members: usize,

    /// History's default page size, and the largest page it returns.
    #[arg(long, env = "CHAT_HISTORY_PAGE", default_value_t = 1000)]
    pub history_page: u32,

    /// Most messages a Connect stream takes at once from the store or the
    /// in-memory window (its buffer; a stream holds no other queue).
    #[arg(long, env = "CHAT_STREAM_BUFFER", default_value_t = 64)]
    pub stream_buffer: usize,

    /// ...and at most this many bytes of them (but for the first): what a
    /// stream that stops reading can pin.
    #[arg(long, env = "CHAT_STREAM_BUFFER_BYTES", default_value_t = 1 << 20)]
    pub stream_buffer_bytes: usize,

    /// Most bytes of one History page as encoded on the wire (protobuf or
    /// JSON; but for the first message): a longer page is cut, keeping the
    /// end next to the cursor, with has_more set.
    #[arg(long, env = "CHAT_HISTORY_PAGE_BYTES", default_value_t = 1 << 20)]
    pub history_page_bytes: usize,

    /// MiB of memory for what clients make the server hold (stream
    /// batches, History pages being sent, recent windows); past it, reads
    /// wait for room.
    #[arg(long, env = "CHAT_MEMORY_BUDGET_MB", default_value_t = 256)]
    pub memory_budget_mb: usize,

    /// Seconds a read waits for room in the memory budget before it is
    /// refused with RESOURCE_EXHAUSTED chat.Busy.
    #[arg(long, env = "CHAT_BUDGET_WAIT", default_value_t = 10)]
    pub budget_wait: u64,

    /// Writes a second per caller (its verified identity, else its
    /// address): Send calls, messages on Connect streams, Edit, Delete,
    /// MarkRead and Typing, all from one budget, with bursts of twice as
    /// many; past it, RESOURCE_EXHAUSTED chat.RateLimited (HTTP 429 with
    /// Retry-After). Per replica. 0: no limit.
    #[arg(long, env = "CHAT_RATE_LIMIT_SEND", default_value_t = 0.0)]
    pub rate_limit_send: f64,

    /// New chats a minute per caller, with bursts of twice as many; as
    /// --rate-limit-send. 0: no limit.
    #[arg(long, env = "CHAT_RATE_LIMIT_NEW", default_value_t = 0.0)]
    pub rate_limit_new: f64,

    /// Reads a second per caller, as --rate-limit-send but a budget of its
    /// own: History, ListChats, ReadState and Presence, so that one caller
    /// looping them cannot starve the others. 0: no limit.
    #[arg(long, env = "CHAT_RATE_LIMIT_READ", default_value_t = 200.0)]
    pub rate_limit_read: f64,

    /// Track who is present in each chat (a member with a Connect stream
    /// open): join and leave events, the Presence RPC, heartbeats between
    /// replicas. `--presence=false` turns it off.
    #[arg(long, env = "CHAT_PRESENCE", default_value_t = true, action = clap::ArgAction::Set)]
    pub presence: bool,

    /// Seconds a replica keeps another replica's users present without
    /// hearing of them (replicas repeat who is present every third of it):
    /// the longest a dead replica's users stay present.
    #[arg(long, env = "CHAT_PRESENCE_TTL", default_value_t = 30)]
    pub presence_ttl: u64,

    /// Serve the web client (a chat in the browser) at `/` on --listen.
    /// `--web-ui=false` turns it off.
    #[arg(long, env = "CHAT_WEB_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub web_ui: bool,

    /// Relay typing signals (the Typing RPC). `--typing=false` turns it off.
    #[arg(long, env = "CHAT_TYPING", default_value_t = true, action = clap::ArgAction::Set)]
    pub typing: bool,

    /// Seconds between HTTP/2 keepalive pings, so half-open clients are noticed (0: off).
    #[arg(long, env = "CHAT_KEEPALIVE_INTERVAL", default_value_t = 30)]
    pub keepalive_interval: u64,

    /// Seconds to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "CHAT_KEEPALIVE_TIMEOUT", default_value_t = 10)]
    pub keepalive_timeout: u64,

    /// Most concurrent streams (calls) on one HTTP/2 connection.
    #[arg(long, env = "CHAT_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

    /// Most client connections open at once (WebSockets included); past
    /// it, new ones are closed at once. 0: what the descriptor limit
    /// allows, less room for the store and the other ports.
    #[arg(long, env = "CHAT_MAX_CONNECTIONS", default_value_t = 0)]
    pub max_connections: usize,

    /// Seconds a new connection has for its TLS handshake and its first
    /// request (and an HTTP/1 request for its headers).
    #[arg(long, env = "CHAT_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub handshake_timeout: u64,

    /// Seconds a connection with no call open may stay (0: forever). An
    /// open Connect stream is a call: quiet listeners stay.
    #[arg(long, env = "CHAT_IDLE_TIMEOUT", default_value_t = 300)]
    pub idle_timeout: u64,

    /// Seconds to wait on SIGTERM/SIGINT for in-flight calls before exiting anyway.
    #[arg(long, env = "CHAT_DRAIN_TIMEOUT", default_value_t = 10)]
    pub drain_timeout: u64,

    /// Log format on stderr.
    #[arg(long, env = "CHAT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Browser origins allowed to call the HTTP/JSON and gRPC-Web interface
    /// (CORS), comma-separated, e.g. `https://app.example.com`; `*` for any.
    /// Default: none.
    #[arg(long, env = "CHAT_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// How callers are identified: `none` (anyone may act as any user: for
    /// the embedded quick start), `jwt` (a bearer token on every call),
    /// `header` (a trusted sidecar's header, see --auth-header) or `mtls`
    /// (the client certificate, see --tls-client-ca).
    #[arg(long, env = "CHAT_AUTH", value_enum, default_value_t = AuthMode::None, global = true)]
    pub auth: AuthMode,

    /// With --auth header: the header a trusted sidecar sets to the caller's
    /// identity (e.g. x-user-id). Only safe if nothing but the sidecar can
    /// reach --listen.
    #[arg(long, env = "CHAT_AUTH_HEADER", global = true)]
    pub auth_header: Option<String>,

    /// With --auth jwt: a file holding the HS256 shared secret (32 bytes or more).
    #[arg(long, env = "CHAT_JWT_SECRET_FILE", global = true)]
    pub jwt_secret_file: Option<PathBuf>,

    /// With --auth jwt: a PEM public key (RSA: RS/PS256..512, EC: ES256/384, Ed25519: EdDSA).
    #[arg(long, env = "CHAT_JWT_PUBLIC_KEY_FILE", global = true)]
    pub jwt_public_key_file: Option<PathBuf>,

    /// With --auth jwt: a JWKS document; the token's `kid` picks the key.
    #[arg(long, env = "CHAT_JWKS_FILE", global = true)]
    pub jwks_file: Option<PathBuf>,

    /// With --auth jwt: an identity provider's JWKS endpoint (https://),
    /// fetched at startup, every --jwks-refresh seconds, and when a token
    /// names an unknown `kid`.
    #[arg(long, env = "CHAT_JWKS_URL", global = true)]
    pub jwks_url: Option<String>,

    /// With --jwks-url: trust only the CA certificates in this PEM file
    /// (default: the public web roots).
    #[arg(long, env = "CHAT_JWKS_CA_FILE", global = true)]
    pub jwks_ca_file: Option<PathBuf>,

    /// With --jwks-url: seconds between fetches of the key set.
    #[arg(long, env = "CHAT_JWKS_REFRESH", default_value_t = 300, global = true)]
    pub jwks_refresh: u64,

    /// With --jwks-url: the fewest seconds between two fetches caused by
    /// tokens naming an unknown `kid` (a rate limit on the provider).
    #[arg(
        long,
        env = "CHAT_JWKS_REFRESH_MIN",
        default_value_t = 30,
        global = true
    )]
    pub jwks_refresh_min: u64,

    /// With --auth jwt: the required `iss`.
    #[arg(long, env = "CHAT_JWT_ISSUER", global = true)]
    pub jwt_issuer: Option<String>,

    /// With --auth jwt: the required `aud`.
    #[arg(long, env = "CHAT_JWT_AUDIENCE", global = true)]
    pub jwt_audience: Option<String>,

    /// With --auth jwt: seconds of clock skew allowed for `exp` and `nbf`.
    #[arg(long, env = "CHAT_JWT_LEEWAY", default_value_t = 5, global = true)]
    pub jwt_leeway: u64,

    /// With --auth jwt: the claim naming the user.
    #[arg(
        long,
        env = "CHAT_JWT_USER_CLAIM",
        default_value = "sub",
        global = true
    )]
    pub jwt_user_claim: String,

    /// With --auth jwt: a `scope` value that makes the caller a service,
    /// which may act for any user (e.g. chat:service).
    #[arg(long, env = "CHAT_JWT_SERVICE_SCOPE", global = true)]
    pub jwt_service_scope: Option<String>,

    /// A PEM certificate chain: serve TLS (h2 and http/1.1 by ALPN) on
    /// --listen. Re-read with the key on SIGHUP.
    #[arg(long, env = "CHAT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "CHAT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// A PEM file of CA certificates: every client must present a
    /// certificate one of them signed (mutual TLS; see --auth mtls).
    #[arg(long, env = "CHAT_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address to serve only grpc.health.v1 on, in plaintext (for
    /// Kubernetes' gRPC probes, which cannot speak TLS). Off when unset.
    #[arg(long, env = "CHAT_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,

    /// Address to serve Prometheus metrics on, at /metrics (off when unset).
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// A setting that may hold a password (a database URL): its `Debug` hides
/// the password, so printing a `Config` never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", crate::store::pgconn::redact(&self.0))
    }
}

/// What to do instead of serving.
#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Applies pending schema migrations to a PostgreSQL store (the server
    /// also does this at startup).
    Migrate {
        /// Only report the schema version and pending migrations; change nothing.
        #[arg(long)]
        check: bool,
    },
    /// Writes every chat and message of the store to stdout as JSON lines.
    Export,
    /// Reads JSON lines (from `export`) from stdin into the store, keeping
    /// every id, seq and dedupe key; what is already there is left as is.
    Import,
}

/// The store a [`Config`] names.
#[derive(Clone, Debug)]
pub enum StoreSpec {
    Sled(PathBuf),
    Postgres(PgOptions),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    None,
    Jwt,
    Header,
    Mtls,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Config {
    /// The defaults, for a server storing its data in `data_dir`.
    pub fn with_data_dir(data_dir: impl Into<PathBuf>) -> Config {
        let mut config = Config::parse_from(["chat"]);
        config.data_dir = data_dir.into();
        config
    }

    /// The store to open.
    ///
    /// # Errors
    /// An unreadable `--store-password-file`.
    pub fn store_spec(&self) -> Result<StoreSpec, String> {
        let store = self.store.0.trim();
        let is_pg = store.starts_with("postgres://")
            || store.starts_with("postgresql://")
            || store.contains('=');
        if !is_pg {
            return Ok(StoreSpec::Sled(match store {
                "" | "sled" => self.data_dir.clone(),
                dir => PathBuf::from(dir),
            }));
        }
        let password = match &self.store_password_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read --store-password-file {path:?}: {e}"))?
                    .trim_end_matches(['\r', '\n'])
                    .to_owned(),
            ),
            None => std::env::var("PGPASSWORD").ok(),
        };
        Ok(StoreSpec::Postgres(PgOptions {
            url: store.to_owned(),
            password,
            pool_size: self.pg_pool_size,
            statement_timeout: Duration::from_secs(self.pg_statement_timeout.max(1)),
            batch_max: self.pg_batch_max.max(1),
            connect_timeout: Duration::from_secs(self.pg_connect_timeout),
            listen_url: self.pg_listen_url.as_ref().map(|s| s.0.clone()),
        }))
    }

    /// TLS, when --tls-cert is set.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            client_ca: self.tls_client_ca.clone(),
        })
    }

    /// The authenticator the flags describe (with --jwks-url, after the
    /// first fetch of the key set).
    ///
    /// # Errors
    /// A mode without what it needs, or a key that cannot be read.
    pub async fn auth(&self) -> Result<crate::auth::Auth, String> {
        use crate::auth::{Auth, Jwt, JwtOptions};
        Ok(match self.auth {
            AuthMode::None => Auth::None,
            AuthMode::Header => Auth::Header(
                self.auth_header
                    .as_deref()
                    .map(|h| h.trim().to_ascii_lowercase())
                    .filter(|h| !h.is_empty())
                    .ok_or("--auth header needs --auth-header NAME (e.g. x-user-id)")?,
            ),
            AuthMode::Mtls => {
                if self.tls_client_ca.is_none() {
                    return Err(
                        "--auth mtls needs --tls-cert, --tls-key and --tls-client-ca".into(),
                    );
                }
                Auth::Mtls
            }
            AuthMode::Jwt => Auth::Jwt(Box::new(
                Jwt::new(&JwtOptions {
                    secret_file: self.jwt_secret_file.as_deref(),
                    public_key_file: self.jwt_public_key_file.as_deref(),
                    jwks_file: self.jwks_file.as_deref(),
                    jwks_url: self.jwks_url.as_deref(),
                    jwks_ca_file: self.jwks_ca_file.as_deref(),
                    jwks_refresh: Duration::from_secs(self.jwks_refresh),
                    jwks_refresh_min: Duration::from_secs(self.jwks_refresh_min),
                    issuer: self.jwt_issuer.as_deref(),
                    audience: self.jwt_audience.as_deref(),
                    leeway: Duration::from_secs(self.jwt_leeway),
                    user_claim: &self.jwt_user_claim,
                    service_scope: self.jwt_service_scope.as_deref(),
                })
                .await?,
            )),
        })
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_id_bytes: self.max_id_bytes,
            max_members: self.max_members,
            history_page: self.history_page.max(1),
            stream_buffer: self.stream_buffer.max(1),
            stream_buffer_bytes: self.stream_buffer_bytes.max(1),
            history_page_bytes: self.history_page_bytes.max(1),
            memory_budget: self.memory_budget_mb.max(1) << 20,
            budget_wait: Duration::from_secs(self.budget_wait),
            rate_limit_send: self.rate_limit_send.max(0.0),
            rate_limit_new: self.rate_limit_new.max(0.0),
            rate_limit_read: self.rate_limit_read.max(0.0),
            presence: self.presence,
            presence_ttl: Duration::from_secs(self.presence_ttl.max(3)),
            typing: self.typing,
        }
    }

    /// How connections are limited; `fd_limit` is the descriptor limit
    /// the default `--max-connections` is derived from.
    pub fn connection_limits(&self, fd_limit: u64) -> crate::conn::Limits {
        let derived = fd_limit
            .saturating_sub(crate::conn::FD_HEADROOM + 2 * self.pg_pool_size as u64)
            .max(16) as usize;
        crate::conn::Limits {
            max_connections: match self.max_connections {
                0 => derived,
                n => n,
            },
            handshake_timeout: Duration::from_secs(self.handshake_timeout.max(1)),
            idle_timeout: (self.idle_timeout > 0).then(|| Duration::from_secs(self.idle_timeout)),
        }
    }

    /// `None` when keepalive is off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval > 0).then(|| Duration::from_secs(self.keepalive_interval))
    }

    /// The largest JSON request body or WebSocket message accepted: a
    /// full-size message in its longest spelling (JSON escapes such as
    /// `\u0001` make a byte six), plus room for the field names.
    pub fn max_json_bytes(&self) -> usize {
        6 * self.max_decoding_bytes() + 4096
    }

    /// The largest gRPC message the server decodes: a full-size Send or a
    /// New with the most members and longest ids, plus room for framing.
    pub fn max_decoding_bytes(&self) -> usize {
        let send = self.max_message_bytes + 3 * self.max_id_bytes + 64;
        let new = self.max_members * (self.max_id_bytes + 4);
        send.max(new) + 1024
    }
}

//! Configuration: every setting is a flag with a `CHAT_*` environment
//! variable. `chat --help` is the reference; the README's table matches it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};

use crate::chat::Limits;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "chat",
    version,
    about = "A gRPC chat service with an embedded sled store."
)]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "CHAT_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the sled store (created if missing; one server per directory).
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./chat-data")]
    pub data_dir: PathBuf,

    /// Memory for the store's page cache, in MiB (the rest stays on disk).
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

    /// Seconds between HTTP/2 keepalive pings, so half-open clients are noticed (0: off).
    #[arg(long, env = "CHAT_KEEPALIVE_INTERVAL", default_value_t = 30)]
    pub keepalive_interval: u64,

    /// Seconds to wait for a keepalive ping's answer before closing the connection.
    #[arg(long, env = "CHAT_KEEPALIVE_TIMEOUT", default_value_t = 10)]
    pub keepalive_timeout: u64,

    /// Most concurrent streams (calls) on one HTTP/2 connection.
    #[arg(long, env = "CHAT_MAX_CONCURRENT_STREAMS", default_value_t = 1024)]
    pub max_concurrent_streams: u32,

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

    /// Address to serve Prometheus metrics on, at /metrics (off when unset).
    #[arg(long, env = "CHAT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
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

    pub fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_id_bytes: self.max_id_bytes,
            max_members: self.max_members,
            history_page: self.history_page.max(1),
            stream_buffer: self.stream_buffer.max(1),
        }
    }

    /// `None` when keepalive is off.
    pub fn keepalive_interval(&self) -> Option<Duration> {
        (self.keepalive_interval > 0).then(|| Duration::from_secs(self.keepalive_interval))
    }

    /// The largest gRPC message the server decodes: a full-size Send or a
    /// New with the most members and longest ids, plus room for framing.
    pub fn max_decoding_bytes(&self) -> usize {
        let send = self.max_message_bytes + 3 * self.max_id_bytes + 64;
        let new = self.max_members * (self.max_id_bytes + 4);
        send.max(new) + 1024
    }
}

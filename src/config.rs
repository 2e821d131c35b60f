//! Configuration: every setting is a flag with a `CHAT_*` environment
//! variable. `chat --help` is the reference; the README's table matches it.

use std::{net::SocketAddr, path::PathBuf};

use clap::Parser;

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
        }
    }

    /// The largest gRPC message the server decodes: a full-size Send or a
    /// New with the most members and longest ids, plus room for framing.
    pub fn max_decoding_bytes(&self) -> usize {
        let send = self.max_message_bytes + 3 * self.max_id_bytes + 64;
        let new = self.max_members * (self.max_id_bytes + 4);
        send.max(new) + 1024
    }
}

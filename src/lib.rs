//! A gRPC chat service with an embedded sled store.
//!
//! # Module map
//! - [`pb`]: the generated protobuf messages and tonic service (the wire).
//! - [`grpc`]: the gRPC handlers; they convert, call [`chat`], convert back,
//!   and map [`error::Error`] to a gRPC status in one place.
//! - [`chat`]: the chat logic: validation, idempotency, seq allocation, group
//!   commit and live fan-out. Plain Rust.
//! - [`store`]: the sled store and its key layout. Plain Rust.
//! - [`metrics`]: counters and histograms, as Prometheus text.
//! - [`config`]: flags and `CHAT_*` environment variables.
//!
//! The binary (`src/main.rs`) only parses the config, sets up logging, binds
//! the listener and calls [`run`]; tests call [`run`] directly.

pub mod chat;
pub mod config;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod store;

/// Generated from `proto/chat.proto`.
// The `New` RPC becomes a trait method `new(&self, ..)`, which clippy takes
// for a constructor.
#[allow(clippy::wrong_self_convention, clippy::new_ret_no_self)]
pub mod pb {
    tonic::include_proto!("chat");
    // The client, generated apart so that `New` is `new_chat` (see build.rs).
    include!(concat!(env!("OUT_DIR"), "/chat.Chat.rs"));

    /// The encoded file descriptor set of `chat.proto`, with its comments.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/chat_descriptor.bin"));
}

use std::future::Future;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

pub use config::Config;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "cannot open the data dir {dir:?}: {source} \
         (is another chat server using it? is it a chat data dir?)"
    )]
    Open {
        dir: std::path::PathBuf,
        source: store::StoreError,
    },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("final flush of the store failed: {0}")]
    Flush(store::StoreError),
}

/// An opened server: the store is open (and locked) and the chat logic is
/// running; [`Server::serve`] then serves it. Split from [`run`] so that a
/// caller can fail fast on a bad data dir and keep a [`chat::Chats`] handle.
pub struct Server {
    config: Config,
    store: store::Store,
    chats: chat::Chats,
    committer: chat::Committer,
}

impl Server {
    /// Opens the store in `config.data_dir` and starts the chat logic.
    ///
    /// # Errors
    /// When the data dir cannot be opened (locked by another server, not a
    /// sled database, corrupt).
    pub fn open(config: Config) -> Result<Server, RunError> {
        let store = store::Store::open(&config.data_dir).map_err(|source| RunError::Open {
            dir: config.data_dir.clone(),
            source,
        })?;
        let (chats, committer) = chat::Chats::start(store.clone(), config.limits());
        Ok(Server {
            config,
            store,
            chats,
            committer,
        })
    }

    /// A handle to the running chat logic (for stats, or in-process use).
    pub fn chats(&self) -> chat::Chats {
        self.chats.clone()
    }

    /// Serves on `listener` until `shutdown` completes, then ends every live
    /// stream, lets in-flight calls finish and flushes the store.
    ///
    /// # Errors
    /// When the server fails or the last flush fails.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), RunError> {
        let Server {
            config,
            store,
            chats,
            committer,
        } = self;
        let service = pb::chat_server::ChatServer::new(grpc::ChatService::new(chats.clone()))
            .max_decoding_message_size(config.max_decoding_bytes());
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, data_dir = ?config.data_dir, "serving");
        }
        // No Nagle: small responses (acks, echoes) must not wait for the
        // client's delayed ACK.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let closing = chats.clone();
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                shutdown.await;
                tracing::info!("shutting down: ending live streams, finishing in-flight calls");
                closing.close_streams();
            })
            .await?;
        committer.stop().await;
        store.flush().await.map_err(RunError::Flush)?;
        tracing::info!("stopped; store flushed");
        Ok(())
    }
}

/// Opens the store and serves until `shutdown` completes: [`Server::open`]
/// then [`Server::serve`].
///
/// # Errors
/// As [`Server::open`] and [`Server::serve`].
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    Server::open(config)?.serve(listener, shutdown).await
}

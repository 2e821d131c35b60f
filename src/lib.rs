//! A gRPC chat service with an embedded sled store.
//!
//! # Module map
//! - [`pb`]: the generated protobuf messages and tonic service (the wire).
//! - [`codec`]: prost with INVALID_ARGUMENT for undecodable requests.
//! - [`grpc`]: the gRPC handlers; they convert, call [`chat`], convert back,
//!   and map [`error::Error`] to a gRPC status in one place.
//! - [`chat`]: the chat logic: validation, idempotency, seq allocation, group
//!   commit and live fan-out. Plain Rust.
//! - [`store`]: the sled store and its key layout. Plain Rust.
//! - [`health`]: `grpc.health.v1.Health`, NOT_SERVING once shutdown begins.
//! - [`metrics`]: counters and histograms, as Prometheus text.
//! - [`config`]: flags and `CHAT_*` environment variables.
//!
//! The binary (`src/main.rs`) only parses the config, sets up logging, binds
//! the listener and calls [`run`]; tests call [`run`] directly.

pub mod chat;
pub mod codec;
pub mod config;
pub mod error;
pub mod grpc;
pub mod health;
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

use std::{future::Future, time::Duration};

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
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(tonic_reflection::server::Error),
}

/// An opened server: the store is open (and locked), the chat logic is
/// running and the metrics address is bound; [`Server::serve`] then serves.
/// Split from [`run`] so that a caller fails fast on a bad data dir or
/// address, and can keep a [`chat::Chats`] handle.
pub struct Server {
    config: Config,
    store: store::Store,
    chats: chat::Chats,
    committer: chat::Committer,
    metrics_listener: Option<std::net::TcpListener>,
}

impl Server {
    /// Opens the store in `config.data_dir`, starts the chat logic and binds
    /// `config.metrics_listen`.
    ///
    /// # Errors
    /// When the data dir cannot be opened (locked by another server, not a
    /// sled database, corrupt), or the metrics address cannot be bound.
    pub fn open(config: Config) -> Result<Server, RunError> {
        let store = store::Store::open(&config.data_dir).map_err(|source| RunError::Open {
            dir: config.data_dir.clone(),
            source,
        })?;
        let metrics_listener = config
            .metrics_listen
            .map(|addr| {
                let l = std::net::TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Ok(l)
            })
            .transpose()
            .map_err(RunError::Metrics)?;
        let (chats, committer) = chat::Chats::start(store.clone(), config.limits());
        Ok(Server {
            config,
            store,
            chats,
            committer,
            metrics_listener,
        })
    }

    /// A handle to the running chat logic (for stats, or in-process use).
    pub fn chats(&self) -> chat::Chats {
        self.chats.clone()
    }

    /// Where /metrics is served, if it is.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics_listener.as_ref()?.local_addr().ok()
    }

    /// Serves on `listener` until `shutdown` completes. Then: health goes
    /// NOT_SERVING, the listener closes, every Connect stream ends with
    /// UNAVAILABLE, in-flight calls finish (for at most the drain timeout),
    /// and the store is flushed.
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
            metrics_listener,
        } = self;

        let health = tonic_health::pb::health_server::HealthServer::new(
            health::HealthService::new(chats.closing()),
        );
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                // google.rpc.ErrorInfo, so grpcurl can show error details.
                .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection().build_v1().map_err(RunError::Reflection)?;
        // grpcurl before 1.9 speaks only v1alpha.
        let reflection_v1alpha = reflection().build_v1alpha().map_err(RunError::Reflection)?;

        let service = pb::chat_server::ChatServer::new(grpc::ChatService::new(chats.clone()))
            .max_decoding_message_size(config.max_decoding_bytes());
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, data_dir = ?config.data_dir, "serving gRPC");
        }
        let metrics_server = metrics_listener
            .map(|l| {
                let l = TcpListener::from_std(l)?;
                tracing::info!(addr = %l.local_addr()?, "serving metrics at /metrics");
                Ok::<_, std::io::Error>(tokio::spawn(serve_metrics(l, chats.metrics().clone())))
            })
            .transpose()
            .map_err(RunError::Metrics)?;

        // No Nagle: small responses (acks, echoes) must not wait for the
        // client's delayed ACK.
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
        let closing = chats.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!(
                "shutting down: NOT_SERVING, ending live streams, finishing in-flight calls"
            );
            // Health turns NOT_SERVING with the same flag.
            closing.close_streams();
            let _ = draining.send(());
        };
        let server = tonic::transport::Server::builder()
            .http2_keepalive_interval(config.keepalive_interval())
            .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_timeout)))
            .max_concurrent_streams(Some(config.max_concurrent_streams))
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, signal);
        let drain_timeout = async {
            match drain_started.await {
                Ok(()) => tokio::time::sleep(Duration::from_secs(config.drain_timeout)).await,
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = server => served?,
            () = drain_timeout => tracing::warn!(
                timeout_secs = config.drain_timeout,
                "drain timeout: closing the calls still open"
            ),
        }
        if let Some(task) = metrics_server {
            task.abort();
        }
        // Every acknowledged message was flushed before its ack; this answers
        // (or refuses) whatever is still queued, then flushes once more.
        committer.stop().await;
        store.flush().await.map_err(RunError::Flush)?;
        tracing::info!("stopped; store flushed");
        Ok(())
    }
}

/// Serves `GET /metrics` (Prometheus text) until aborted.
async fn serve_metrics(listener: TcpListener, metrics: std::sync::Arc<metrics::Metrics>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }
        }),
    );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!("metrics server failed: {e}");
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

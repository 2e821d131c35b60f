//! The server: the wiring of the store, the chat logic and the wire layer
//! onto one listener and its side ports, and the drain at shutdown.
//!
//! [`Server::open`] opens what can fail fast (the store, the side ports);
//! [`Server::serve`] builds the routes ([`routes`]), starts the side ports
//! ([`side_ports`]), accepts connections until shutdown, then drains
//! ([`drain`]): NOT_SERVING, live streams ended, in-flight calls finished,
//! the store flushed.

use std::{future::Future, sync::Arc, time::Duration};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tower::Layer as _;

use crate::{
    auth, chat,
    config::{Config, StoreSpec},
    conn, metrics, pb,
    store::{self, Backend as _},
    tls, wire,
};

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
    #[error("cannot open the store: {0}")]
    Store(String),
    #[error("authentication: {0}")]
    Auth(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot serve health on --health-listen: {0}")]
    Health(std::io::Error),
    #[error("invalid --cors-origins: {0}")]
    Cors(String),
    #[error("{0}")]
    StoreBroken(String),
    #[error("final flush of the store failed: {0}")]
    Flush(store::StoreError),
    #[error("cannot serve metrics: {0}")]
    Metrics(std::io::Error),
    #[error("cannot build the reflection service: {0}")]
    Reflection(tonic_reflection::server::Error),
}

/// An opened server: the store is open (and locked, or migrated), the chat
/// logic is running and the metrics address is bound; [`Server::serve`]
/// then serves. Split from [`run`] so that a caller fails fast on a bad
/// store or address, and can keep a [`chat::Chats`] handle.
pub struct Server {
    config: Config,
    spec: StoreSpec,
    store: store::Store,
    chats: chat::Chats,
    committer: chat::Committer,
    /// With a shared database: the wake-ups from other replicas.
    replicas: Option<(store::bus::Listener, chat::Follower)>,
    metrics_listener: Option<std::net::TcpListener>,
    health_listener: Option<std::net::TcpListener>,
    auth: Arc<auth::Auth>,
    tls: Option<Arc<tls::Tls>>,
}

/// Binds a side port (metrics, health) before the store opens, so a taken
/// address fails startup at once.
fn bind_side(addr: Option<std::net::SocketAddr>) -> std::io::Result<Option<std::net::TcpListener>> {
    addr.map(|addr| {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .transpose()
}

/// Opens the store a config names: the sled directory, or the database
/// (retrying while it is unreachable, then migrating its schema).
///
/// # Errors
/// When the store cannot be opened.
pub async fn open_store(config: &Config, spec: &StoreSpec) -> Result<store::Store, RunError> {
    match spec {
        StoreSpec::Sled(dir) => store::sled::SledStore::open(dir, config.cache_mb << 20)
            .map(store::Store::Sled)
            .map_err(|source| RunError::Open {
                dir: dir.clone(),
                source,
            }),
        StoreSpec::Postgres(opts) => store::postgres::PgStore::connect(opts)
            .await
            .map(store::Store::Postgres)
            .map_err(|e| RunError::Store(e.to_string())),
    }
}

impl Server {
    /// Opens the store, starts the chat logic (and, on a shared database,
    /// follows the other replicas) and binds `config.metrics_listen`.
    ///
    /// # Errors
    /// When the store cannot be opened (a sled dir locked by another server,
    /// not a sled database, corrupt; a database unreachable for longer than
    /// `--pg-connect-timeout`), or the metrics address cannot be bound.
    pub async fn open(config: Config) -> Result<Server, RunError> {
        let spec = config.store_spec().map_err(RunError::Store)?;
        let tls = config
            .tls_files()
            .map(|files| tls::Tls::load(files).map(Arc::new))
            .transpose()
            .map_err(RunError::Tls)?;
        let auth = Arc::new(config.auth().await.map_err(RunError::Auth)?);
        let metrics_listener = bind_side(config.metrics_listen).map_err(RunError::Metrics)?;
        let health_listener = bind_side(config.health_listen).map_err(RunError::Health)?;
        let store = open_store(&config, &spec).await?;
        let (chats, committer) = chat::Chats::start(store.clone(), config.limits());
        let replicas = match &spec {
            StoreSpec::Postgres(opts) => {
                let url = opts.listen_url.as_deref().unwrap_or(&opts.url);
                let target = store::pgconn::Target::parse(
                    url,
                    opts.password.as_deref(),
                    opts.statement_timeout,
                )
                .map_err(|e| RunError::Store(format!("--pg-listen-url: {e}")))?;
                let (wakes, heard) = tokio::sync::mpsc::unbounded_channel();
                let listener = store::bus::Listener::start(target, wakes, chats.metrics().clone());
                Some((listener, chats.follow(heard)))
            }
            StoreSpec::Sled(_) => None,
        };
        Ok(Server {
            config,
            spec,
            store,
            chats,
            committer,
            replicas,
            metrics_listener,
            health_listener,
            auth,
            tls,
        })
    }

    /// A handle to the running chat logic (for stats, or in-process use).
    pub fn chats(&self) -> chat::Chats {
        self.chats.clone()
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
            spec,
            store,
            chats,
            committer,
            replicas,
            metrics_listener,
            health_listener,
            auth,
            tls,
        } = self;
        // Everything that can fail before serving, in one place: if it does,
        // the tasks `open` started are stopped before the error is returned.
        let built = (|| {
            warn_if_open(&listener, &auth, &config);
            let app = routes(&config, &chats, &auth)?;
            log_serving(&listener, tls.as_deref(), &spec, &config);
            let side = side_ports(health_listener, metrics_listener, &chats)?;
            Ok((app, side))
        })();
        let (app, side) = match built {
            Ok(built) => built,
            Err(e) => {
                committer.stop().await;
                if let Some((listener, follower)) = replicas {
                    listener.stop().await;
                    follower.stop().await;
                }
                return Err(e);
            }
        };
        let store_watch = chats.watch_store();

        // HTTP/2 (gRPC, h2c) and HTTP/1.1 (JSON, WebSocket upgrades, gRPC-Web)
        // on each connection.
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(config.handshake_timeout.max(1)));
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(config.keepalive_interval())
            .keep_alive_timeout(Duration::from_secs(config.keepalive_timeout))
            .max_concurrent_streams(config.max_concurrent_streams);
        let connections = hyper_util::server::graceful::GracefulShutdown::new();
        // SIGHUP re-reads the certificate and the JWT keys; `--jwks-url`
        // is fetched again every `--jwks-refresh`. Both end with serving.
        let reloader = tokio::spawn(reload_on_sighup(tls.clone(), auth.clone()));
        let refresher = tokio::spawn({
            let auth = auth.clone();
            async move { auth.refresh_keys().await }
        });
        let limits = config.connection_limits(conn::raise_fd_limit());
        tracing::debug!(?limits, "connection limits");
        let acceptor = conn::Acceptor {
            app,
            tls,
            builder,
            limits,
            metrics: chats.metrics().clone(),
        };
        // A store that cannot recover in place ends serving too: better a
        // restart by the orchestrator than "SERVING but every write fails".
        let mut broken = chats.broken();
        let stop = async {
            tokio::select! {
                () = shutdown => {}
                _ = broken.wait_for(Option::is_some) => {}
            }
        };
        acceptor.run(&listener, &connections, stop).await;
        reloader.abort();
        refresher.abort();
        drop(listener);
        let running = Running {
            chats,
            committer,
            replicas,
            store,
            store_watch,
            side,
        };
        drain(
            running,
            connections,
            Duration::from_secs(config.drain_timeout),
        )
        .await
    }
}

/// What runs while serving, for [`drain`] to stop.
struct Running {
    chats: chat::Chats,
    committer: chat::Committer,
    replicas: Option<(store::bus::Listener, chat::Follower)>,
    store: store::Store,
    store_watch: tokio::task::JoinHandle<()>,
    /// The health and metrics servers on their side ports.
    side: [Option<tokio::task::JoinHandle<()>>; 2],
}

/// Once the listener is closed: health goes NOT_SERVING, every Connect
/// stream ends with UNAVAILABLE, in-flight calls finish (for at most
/// `timeout`), the committer answers what is queued, and the store is
/// flushed. A store that broke ends it early with its reason.
async fn drain(
    running: Running,
    connections: hyper_util::server::graceful::GracefulShutdown,
    timeout: Duration,
) -> Result<(), RunError> {
    let Running {
        chats,
        committer,
        replicas,
        store,
        store_watch,
        side,
    } = running;
    let broken = chats.broken().borrow().clone();
    if let Some(why) = &broken {
        tracing::error!("{why}");
    }
    tracing::info!("shutting down: NOT_SERVING, ending live streams, finishing in-flight calls");
    // Health turns NOT_SERVING with the same flag.
    chats.close_streams();
    tokio::select! {
        () = connections.shutdown() => {}
        () = tokio::time::sleep(timeout) => tracing::warn!(
            timeout_secs = timeout.as_secs(),
            "drain timeout: closing the calls still open"
        ),
    }
    for task in side.into_iter().flatten() {
        task.abort();
    }
    // Every acknowledged message was flushed before its ack; this answers
    // (or refuses) whatever is still queued, then flushes once more.
    let wind_down = async {
        committer.stop().await;
        if let Some((listener, follower)) = replicas {
            listener.stop().await;
            follower.stop().await;
        }
        let _ = store_watch.await;
    };
    if let Some(why) = broken {
        // A broken store may never answer that last flush: give it a
        // moment, then go (nothing acknowledged depends on it).
        let _ = tokio::time::timeout(Duration::from_secs(5), wind_down).await;
        return Err(RunError::StoreBroken(why));
    }
    wind_down.await;
    store.flush().await.map_err(RunError::Flush)?;
    tracing::info!("stopped; store flushed");
    Ok(())
}

/// Warns of a listener anyone may reach with an identity they choose.
fn warn_if_open(listener: &TcpListener, auth: &auth::Auth, config: &Config) {
    let loopback = listener.local_addr().is_ok_and(|a| a.ip().is_loopback());
    match auth {
        auth::Auth::None if !loopback => tracing::warn!(
            "--auth none on a non-loopback address: anyone who can reach it may read any chat \
             and send as anyone; use --auth jwt or --auth header"
        ),
        auth::Auth::Header(_) if !loopback => tracing::warn!(
            "--auth header on a non-loopback address: whoever reaches the port directly, \
             past the sidecar, names themselves; listen on loopback behind the sidecar"
        ),
        auth::Auth::Jwt(_) if config.jwt_audience.is_none() => tracing::warn!(
            "--auth jwt without --jwt-audience: a token the key set verifies is accepted \
             whichever application it was minted for; set --jwt-audience"
        ),
        _ => {}
    }
}

/// `grpc.health.v1.Health`, following the chat logic's readiness.
fn health(
    chats: &chat::Chats,
) -> tonic_health::pb::health_server::HealthServer<wire::health::HealthService> {
    tonic_health::pb::health_server::HealthServer::new(wire::health::HealthService::new(
        chats.closing(),
        chats.ready(),
    ))
}

/// Everything the main port serves: gRPC (and gRPC-Web, for browser
/// clients of the unary RPCs), health, reflection and the HTTP/JSON
/// interface, told apart by path.
fn routes(
    config: &Config,
    chats: &chat::Chats,
    auth: &Arc<auth::Auth>,
) -> Result<axum::Router, RunError> {
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
    let service =
        pb::chat_server::ChatServer::new(wire::grpc::ChatService::new(chats.clone(), auth.clone()))
            .max_decoding_message_size(config.max_decoding_bytes());
    let web = tonic_web::GrpcWebLayer::new();
    let grpc_routes = tonic::service::Routes::new(web.layer(health(chats)))
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(web.layer(service))
        .into_axum_router();
    let mut app = grpc_routes
        // JSON is bigger than protobuf for the same message (names,
        // escapes): room for a full-size message in any spelling.
        .merge(wire::http::router(
            chats.clone(),
            auth.clone(),
            wire::http::Options {
                max_body: config.max_json_bytes(),
                keepalive: config
                    .keepalive_interval()
                    .map(|every| (every, Duration::from_secs(config.keepalive_timeout))),
                origins: config.cors_origins.clone(),
                web_ui: config.web_ui,
            },
        ))
        .fallback(wire::http::fallback)
        .layer(axum::middleware::map_response(wire::lease::keep_leases))
        .layer(axum::middleware::map_response(
            wire::grpc::request_too_large,
        ));
    if !config.cors_origins.is_empty() {
        app = app.layer(wire::http::cors(&config.cors_origins).map_err(RunError::Cors)?);
    }
    Ok(app)
}

/// Says where it serves, with TLS or not, on which store.
fn log_serving(listener: &TcpListener, tls: Option<&tls::Tls>, spec: &StoreSpec, config: &Config) {
    let Ok(addr) = listener.local_addr() else {
        return;
    };
    let tls = match tls {
        None => "off",
        Some(tls) if tls.requires_client_cert() => "on, client certificates required",
        Some(_) => "on",
    };
    match spec {
        StoreSpec::Postgres(opts) => {
            tracing::info!(%addr, tls, store = %store::pgconn::redact(&opts.url), "serving gRPC")
        }
        StoreSpec::Sled(dir) => {
            tracing::info!(%addr, tls, data_dir = ?dir, "serving gRPC")
        }
    }
    if config.web_ui {
        let scheme = if tls == "off" { "http" } else { "https" };
        let url = format!("{scheme}://{}/", web_address(addr));
        tracing::info!(%url, "the web client: open it in a browser");
    }
}

/// Starts the side ports bound at open: plaintext health
/// (`--health-listen`) and metrics (`--metrics-listen`); aborted by [`drain`].
fn side_ports(
    health_listener: Option<std::net::TcpListener>,
    metrics_listener: Option<std::net::TcpListener>,
    chats: &chat::Chats,
) -> Result<[Option<tokio::task::JoinHandle<()>>; 2], RunError> {
    let health_server = health_listener
        .map(|l| {
            let l = TcpListener::from_std(l)?;
            tracing::info!(addr = %l.local_addr()?, "serving grpc.health.v1 in plaintext");
            let routes = tonic::service::Routes::new(health(chats)).into_axum_router();
            Ok::<_, std::io::Error>(tokio::spawn(async move {
                if let Err(e) = axum::serve(l, routes).await {
                    tracing::error!("health server failed: {e}");
                }
            }))
        })
        .transpose()
        .map_err(RunError::Health)?;
    let metrics_server = metrics_listener
        .map(|l| {
            let l = TcpListener::from_std(l)?;
            tracing::info!(addr = %l.local_addr()?, "serving metrics at /metrics");
            Ok::<_, std::io::Error>(tokio::spawn(serve_metrics(l, chats.metrics().clone())))
        })
        .transpose()
        .map_err(RunError::Metrics)?;
    Ok([health_server, metrics_server])
}

/// Re-reads the TLS files and the JWT keys on every SIGHUP, until aborted.
/// A reload that fails keeps what is in use, and says why.
async fn reload_on_sighup(tls: Option<Arc<tls::Tls>>, auth: Arc<auth::Auth>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => return tracing::warn!("cannot watch SIGHUP: {e}"),
        };
        while hangups.recv().await.is_some() {
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded"),
                    Err(e) => tracing::error!(
                        "SIGHUP: TLS reload failed, keeping the old certificate: {e}"
                    ),
                }
            }
            if matches!(*auth, auth::Auth::Jwt(_)) {
                match auth.reload().await {
                    Ok(()) => tracing::info!("SIGHUP: JWT keys reloaded"),
                    Err(e) => {
                        tracing::error!("SIGHUP: JWT key reload failed, keeping the old keys: {e}")
                    }
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (tls, auth);
}

/// Serves `GET /metrics` (Prometheus text) until aborted.
async fn serve_metrics(listener: TcpListener, metrics: std::sync::Arc<metrics::Metrics>) {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([("content-type", metrics::CONTENT_TYPE)], metrics.render()) }
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
    Server::open(config).await?.serve(listener, shutdown).await
}

/// The address to show for the web client: a wildcard listen address is
/// reached as localhost on this machine.
fn web_address(addr: std::net::SocketAddr) -> String {
    match addr.ip().is_unspecified() || addr.ip().is_loopback() {
        true => format!("localhost:{}", addr.port()),
        false => addr.to_string(),
    }
}

//! Connections on the one port: accepting them, TLS, and the limits that
//! keep a hostile or careless client from holding them.
//!
//! - At most `--max-connections` at once (by default what the descriptor
//!   limit allows, with room left for the store, the metrics port and the
//!   logs); past it, a new connection is closed at once, counted, and
//!   logged at most every few seconds. A WebSocket counts until it closes.
//! - `--handshake-timeout`: the TLS handshake and the first request must
//!   come within it (a client that sends a byte every few seconds gets no
//!   further), so do the headers of every HTTP/1 request.
//! - `--idle-timeout`: a connection with no call open for that long is
//!   closed. An open call — a quiet Connect stream that only listens — keeps
//!   its connection; HTTP/2 keepalive watches those.
//! - Accept errors (out of descriptors, say) back off and are logged at
//!   most every few seconds.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    http::{Request, Response},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto::Builder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
};

use crate::{metrics::Metrics, tls};

/// How connections are limited (see the module docs).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// `None`: idle connections stay.
    pub idle_timeout: Option<Duration>,
}

/// How often a refusal or an accept error is logged at most.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Descriptors kept free for everything that is not a client connection:
/// the store (files, database connections), the metrics and health ports,
/// the logs.
pub const FD_HEADROOM: u64 = 128;

/// Raises the soft limit on open descriptors to the hard one and returns
/// it, so that the default `--max-connections` is as high as the system
/// allows.
pub fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    // SAFETY: getrlimit/setrlimit only read and write the struct given.
    unsafe {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    limit.rlim_cur = limit.rlim_max;
                }
            }
            return limit.rlim_cur;
        }
    }
    1024
}

/// What every connection is served with.
pub struct Acceptor {
    pub app: axum::Router,
    pub tls: Option<Arc<tls::Tls>>,
    pub builder: Builder<TokioExecutor>,
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
}

impl Acceptor {
    /// Accepts connections on `listener` and serves each until `shutdown`;
    /// `connections` tracks them for the drain.
    pub async fn run(
        self,
        listener: &TcpListener,
        connections: &GracefulShutdown,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections.max(1)));
        let mut refusals = Throttled::default();
        let mut failures = Throttled::default();
        let mut backoff = Duration::from_millis(10);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (tcp, addr) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((tcp, addr)) => {
                        backoff = Duration::from_millis(10);
                        (tcp, addr)
                    }
                    Err(e) => {
                        // Out of descriptors, say: back off, keep serving the others.
                        failures.log(|n| tracing::warn!(failures = n, "accept failed: {e}"));
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                        continue;
                    }
                },
                () = &mut shutdown => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                self.metrics.connections_refused.inc();
                refusals.log(|n| {
                    tracing::warn!(
                        refused = n,
                        max = self.limits.max_connections,
                        "--max-connections reached: closing new connections"
                    )
                });
                drop(tcp);
                continue;
            };
            // No Nagle: small responses (acks, echoes) must not wait for the
            // client's delayed ACK.
            let _ = tcp.set_nodelay(true);
            let conn = Connection {
                app: self.app.clone(),
                builder: self.builder.clone(),
                limits: self.limits.clone(),
                metrics: self.metrics.clone(),
                watcher: connections.watcher(),
                addr: PeerAddr(addr.ip()),
            };
            let tls = self.tls.as_ref().map(|t| t.acceptor());
            tokio::spawn(conn.run(tcp, tls, slot));
        }
    }
}

/// What one connection's task needs.
struct Connection {
    app: axum::Router,
    builder: Builder<TokioExecutor>,
    limits: Limits,
    metrics: Arc<Metrics>,
    watcher: hyper_util::server::graceful::Watcher,
    addr: PeerAddr,
}

/// The client's address, on every request of its connection (rate limits
/// count callers without an identity by it).
#[derive(Clone, Copy, Debug)]
pub struct PeerAddr(pub std::net::IpAddr);

impl Connection {
    async fn run(
        self,
        tcp: TcpStream,
        tls: Option<tokio_rustls::TlsAcceptor>,
        slot: OwnedSemaphorePermit,
    ) {
        let open = Open::new(slot, self.metrics.clone());
        let activity = Arc::new(Activity::new());
        let Some(tls) = tls else {
            let io = Counted {
                io: tcp,
                _open: open,
            };
            return self.serve(io, None, activity).await;
        };
        // The handshake runs in the connection's task, so a client that
        // never finishes it holds up no one else.
        let stream =
            match tokio::time::timeout(self.limits.handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return tracing::debug!("TLS handshake failed: {e}"),
                Err(_) => {
                    self.metrics.connections_timed_out_handshake.inc();
                    return tracing::debug!("TLS handshake timed out");
                }
            };
        // Who the client certificate (if any) names, on every request.
        let peer = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(tls::peer_identity);
        let io = Counted {
            io: stream,
            _open: open,
        };
        self.serve(io, peer, activity).await
    }

    async fn serve<I>(self, io: I, peer: Option<tls::PeerIdentity>, activity: Arc<Activity>)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let tracked = Tracked {
            inner: self.app,
            activity: activity.clone(),
            peer,
            addr: self.addr,
        };
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(tracked));
        let conn = self.watcher.watch(conn.into_owned());
        tokio::select! {
            ended = conn => if let Err(e) = ended {
                tracing::debug!("connection ended: {e}");
            },
            why = activity.idle(&self.limits) => {
                let counter = match why {
                    Idle::NoRequest => &self.metrics.connections_timed_out_handshake,
                    Idle::NoCall => &self.metrics.connections_timed_out_idle,
                };
                counter.inc();
                tracing::debug!(?why, "closing an idle connection");
            }
        }
    }
}

/// Logs at most once per [`LOG_EVERY`], with how many happened since.
#[derive(Default)]
struct Throttled {
    last: Option<Instant>,
    since: u64,
}

impl Throttled {
    fn log(&mut self, log: impl FnOnce(u64)) {
        self.since += 1;
        if self.last.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            log(self.since);
            self.last = Some(Instant::now());
            self.since = 0;
        }
    }
}

/// An open connection: holds its slot and the `chat_connections_open`
/// gauge until dropped with the socket.
struct Open {
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Open {
    fn new(slot: OwnedSemaphorePermit, metrics: Arc<Metrics>) -> Open {
        metrics.connections_open.inc();
        Open {
            _slot: slot,
            metrics,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

/// A socket that holds its connection's slot: it outlives the HTTP
/// connection when a WebSocket takes it over, and the slot goes with it.
struct Counted<I> {
    io: I,
    _open: Open,
}

impl<I: AsyncRead + Unpin> AsyncRead for Counted<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Counted<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The calls of one connection: how many are open, and when the last one
/// began or ended.
struct Activity {
    open: AtomicUsize,
    /// Requests seen so far (0: still waiting for the first).
    requests: AtomicU64,
    started: Instant,
    /// Milliseconds after `started` of the last change.
    last_ms: AtomicU64,
}

/// Why an idle connection was closed.
#[derive(Debug)]
enum Idle {
    /// No request within the handshake timeout.
    NoRequest,
    /// No call open for the idle timeout.
    NoCall,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            open: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms
            .store(self.started.elapsed().as_millis() as u64, Relaxed);
    }

    fn begin(&self) {
        self.requests.fetch_add(1, Relaxed);
        self.open.fetch_add(1, Relaxed);
        self.touch();
    }

    fn end(&self) {
        self.open.fetch_sub(1, Relaxed);
        self.touch();
    }

    /// Completes when the connection has been idle too long: no first
    /// request within the handshake timeout, or no call open for the idle
    /// timeout. Checks a few times per timeout; never completes while a
    /// call is open.
    async fn idle(&self, limits: &Limits) -> Idle {
        loop {
            let (limit, why) = match self.requests.load(Relaxed) {
                0 => (limits.handshake_timeout, Idle::NoRequest),
                _ => match limits.idle_timeout {
                    Some(t) => (t, Idle::NoCall),
                    None => return std::future::pending().await,
                },
            };
            let quiet = self
                .started
                .elapsed()
                .saturating_sub(Duration::from_millis(self.last_ms.load(Relaxed)));
            if self.open.load(Relaxed) == 0 && quiet >= limit {
                return why;
            }
            let check = limit
                .saturating_sub(quiet)
                .max(limit / 4)
                .max(Duration::from_millis(50));
            tokio::time::sleep(check).await;
        }
    }
}

/// The service of one connection: counts its calls (each lasts until its
/// response body is done or dropped) and tags requests with the client's
/// address and its certificate's identity.
#[derive(Clone)]
struct Tracked {
    inner: axum::Router,
    activity: Arc<Activity>,
    peer: Option<tls::PeerIdentity>,
    addr: PeerAddr,
}

impl<B> tower::Service<Request<B>> for Tracked
where
    B: axum::body::HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<Response<Body>, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        <axum::Router as tower::Service<Request<Body>>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mut req = req.map(Body::new);
        if let Some(peer) = &self.peer {
            req.extensions_mut().insert(peer.clone());
        }
        req.extensions_mut().insert(self.addr);
        self.activity.begin();
        let call = Call(self.activity.clone());
        let response = tower::Service::call(&mut self.inner, req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|body| Body::new(CallBody { body, _call: call })))
        })
    }
}

/// An open call: ends when dropped (with its response body, or with the
/// request if it never got one).
struct Call(Arc<Activity>);

impl Drop for Call {
    fn drop(&mut self) {
        self.0.end();
    }
}

struct CallBody {
    body: Body,
    _call: Call,
}

impl axum::body::HttpBody for CallBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

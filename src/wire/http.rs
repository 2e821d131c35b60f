//! The original service's HTTP/JSON interface, for browsers and anything
//! that cannot speak gRPC: `POST /chat/Chat/{New,History,Send}` with proto3
//! JSON bodies, and Connect as a WebSocket at `GET /chat/Chat/Connect`.
//! Same port and same [`Chats`] calls as gRPC: no rule lives here, only
//! conversion, and the one mapping of [`Error`] to an HTTP error body.

use std::{
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::{Body, Bytes},
    extract::{
        rejection::QueryRejection,
        ws::{
            rejection::WebSocketUpgradeRejection, CloseFrame, Message as WsMessage, WebSocket,
            WebSocketUpgrade,
        },
        Extension, Query, State,
    },
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use serde::de::DeserializeOwned;

use super::{
    calls::{self, Call, Encoding, NamesChat},
    convert::{draft, to_wire_in, wants_events},
    lease::HeldLease,
    observe::{code_of, finished, identify},
};
use crate::{
    auth::{Auth, Identity},
    chat::{
        budget::Lease,
        rate::{Action, Who},
        Chats, Subscription,
    },
    conn::PeerAddr,
    error::Error,
    pb,
    tls::PeerIdentity,
};

#[derive(Clone)]
struct Http {
    chats: Chats,
    auth: Arc<Auth>,
    /// Largest request body, and largest WebSocket message, accepted.
    max_body: usize,
    /// WebSocket pings: how often, and how long an answer may take.
    keepalive: Option<(Duration, Duration)>,
    /// Browser origins allowed besides the service's own (`--cors-origins`).
    origins: Arc<Vec<String>>,
}

/// How the HTTP/JSON interface is set up.
pub struct Options {
    /// The largest request body and WebSocket message accepted.
    pub max_body: usize,
    /// (interval, timeout) of WebSocket pings: clients that stop answering
    /// are closed.
    pub keepalive: Option<(Duration, Duration)>,
    /// Browser origins allowed to open a WebSocket besides the service's
    /// own (`--cors-origins`; `*` for any, `null` for pages opened from disk).
    pub origins: Vec<String>,
    /// Serve the web client at `/` (`--web-ui`).
    pub web_ui: bool,
}

/// The HTTP/JSON routes, to be merged with the gRPC ones.
pub fn router(chats: Chats, auth: Arc<Auth>, options: Options) -> Router {
    let web = options.web_ui;
    let router = unary_routes(Router::new())
        .route("/chat/Chat/Connect", get(connect))
        .route("/openapi.json", get(openapi));
    let router = if web {
        super::web::routes(router)
    } else {
        router
    };
    router.with_state(Http {
        chats,
        auth,
        max_body: options.max_body,
        keepalive: options.keepalive,
        origins: Arc::new(options.origins),
    })
}

/// Whether a WebSocket may be opened from the page whose `Origin` the
/// browser sent: no `Origin` (not a browser), the service's own (its
/// `Host`), or one listed in `--cors-origins`. Anything else would let any
/// web page a user visits read and post to a chat server on their network
/// (cross-site WebSocket hijacking): browsers do not apply CORS to
/// WebSockets, so the server must.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim();
    if allowed
        .iter()
        .any(|a| a == "*" || a.trim().eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let authority = origin.split_once("://").map(|(_, rest)| rest);
    matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h.trim()))
}

/// The subprotocol a browser's WebSocket offers, with `bearer.<token>`
/// beside it (browsers cannot set headers on a WebSocket).
const WS_PROTOCOL: &str = "chat.v1";

impl Http {
    /// The verified caller of a request (see [`identify`]).
    async fn caller(
        &self,
        headers: &HeaderMap,
        token: Option<&str>,
        peer: Option<&PeerIdentity>,
    ) -> Result<Option<Identity>, Error> {
        identify(
            &self.auth,
            self.chats.metrics(),
            |name| {
                headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect()
            },
            token,
            peer,
        )
        .await
    }
}

/// The OpenAPI 3.1 document of this interface (api/openapi.json; the
/// `contract` tests keep it in step with the proto).
pub const OPENAPI: &str = include_str!("../../api/openapi.json");

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

/// Any other path: a JSON 404 for HTTP callers, UNIMPLEMENTED for gRPC ones.
pub async fn fallback(headers: HeaderMap) -> Response {
    let is_grpc = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if is_grpc {
        return tonic::Status::unimplemented("no such method").into_http();
    }
    let detail = format!("no such endpoint; see README ({})", calls::routes());
    error_body(StatusCode::NOT_FOUND, "chat.NotFound", &detail)
}

/// A route and a handler per row of [`calls::unary_rpcs!`], each running
/// its function in [`calls`] through [`handle`].
macro_rules! json_calls {
    ($($name:ident $f:ident $req:ident $resp:ident $limit:expr,)*) => {
        $(
            async fn $f(
                State(http): State<Http>,
                peer: Option<Extension<PeerIdentity>>,
                addr: Option<Extension<PeerAddr>>,
                headers: HeaderMap,
                body: Body,
            ) -> Response {
                let method = stringify!($name);
                handle(
                    &http,
                    method,
                    peer.map(|Extension(p)| p),
                    addr.map(|Extension(a)| a.0),
                    headers,
                    body,
                    |http, req: pb::$req, caller, who| async move {
                        if let Some(action) = calls::limited_as(method) {
                            http.chats.admit(action, &who)?;
                        }
                        let mut call = Call::new(&http.chats, caller.as_ref(), Encoding::Json);
                        let resp = calls::$f(&mut call, req).await?;
                        Ok((resp, call.lease))
                    },
                )
                .await
            }
        )*

        /// `POST /chat/Chat/{name}` for every unary RPC.
        fn unary_routes(router: Router<Http>) -> Router<Http> {
            router$(.route(concat!("/chat/Chat/", stringify!($name)), post($f)))*
        }
    };
}
calls::unary_rpcs!(json_calls);

/// Checks the content type and size, parses the JSON body, calls, and
/// answers JSON; counts and logs the call like its gRPC twin.
async fn handle<Req, Resp, F, Fut>(
    http: &Http,
    method: &'static str,
    peer: Option<PeerIdentity>,
    addr: Option<IpAddr>,
    headers: HeaderMap,
    body: Body,
    call: F,
) -> Response
where
    Req: DeserializeOwned + NamesChat,
    Resp: serde::Serialize + NamesChat,
    F: FnOnce(Http, Req, Option<Identity>, Who) -> Fut,
    Fut: std::future::Future<Output = Result<(Resp, Option<Lease>), Error>>,
{
    let started = Instant::now();
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !json {
        let latency = started.elapsed();
        finished(
            http.chats.metrics(),
            method,
            "",
            tonic::Code::InvalidArgument,
            latency,
            None,
        );
        return error_body(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "chat.UnsupportedMediaType",
            "send the body as JSON with Content-Type: application/json",
        );
    }
    // For the log line: the chat the request names, once it is parsed.
    let mut chat_id = String::new();
    let result = async {
        let caller = http.caller(&headers, None, peer.as_ref()).await?;
        let bytes: Bytes = axum::body::to_bytes(body, http.max_body)
            .await
            .map_err(|_| {
                Error::RequestTooLarge(format!(
                    "the request body is over the limit of {} bytes",
                    http.max_body
                ))
            })?;
        let req: Req = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(
                "chat.InvalidJSON",
                format!("the body is not a valid {method} request: {e}"),
            )
        })?;
        req.chat_id().clone_into(&mut chat_id);
        let who = Who::of(caller.as_ref(), addr);
        call(http.clone(), req, caller, who).await
    }
    .await;
    let code = result.as_ref().err().map_or(tonic::Code::Ok, code_of);
    let chat_id = match &result {
        Ok((resp, _)) if chat_id.is_empty() => resp.chat_id(),
        _ => &chat_id,
    };
    finished(
        http.chats.metrics(),
        method,
        chat_id,
        code,
        started.elapsed(),
        None,
    );
    match result {
        Ok((resp, lease)) => match serde_json::to_vec(&resp) {
            Ok(body) => {
                let mut resp = ([(header::CONTENT_TYPE, "application/json")], body).into_response();
                if let Some(lease) = lease {
                    resp.extensions_mut().insert(HeldLease::new(lease));
                }
                resp
            }
            Err(e) => error_response(&Error::Unavailable(format!(
                "cannot encode the response: {e}"
            ))),
        },
        Err(e) => error_response(&e),
    }
}

/// Query of `GET /chat/Chat/Connect`.
#[derive(serde::Deserialize)]
struct ConnectQuery {
    #[serde(default, alias = "chatId")]
    chat_id: String,
    #[serde(default, alias = "userId")]
    user_id: String,
    #[serde(default, alias = "sinceSeq")]
    since_seq: Option<String>,
    /// A bearer token, for clients that can set neither a header nor
    /// subprotocols (proxies may log query strings: prefer those).
    #[serde(default)]
    access_token: Option<String>,
    /// `all`: also edits, deletions, read, typing and presence events.
    #[serde(default)]
    events: String,
}

/// Connect over WebSocket: refused with an HTTP error before the upgrade,
/// like the gRPC stream; then JSON text frames both ways, with the same
/// semantics (echo, catch-up, bounded memory, ended at shutdown).
async fn connect(
    State(http): State<Http>,
    peer: Option<Extension<PeerIdentity>>,
    addr: Option<Extension<PeerAddr>>,
    headers: HeaderMap,
    query: Result<Query<ConnectQuery>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(Query(q)) = query else {
        return error_response(&Error::Invalid(
            "chat.Connect.InvalidQuery",
            "the query must be chat_id=…&user_id=…[&since_seq=N]".into(),
        ));
    };
    let since = match q.since_seq.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(s) => match s.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return error_response(&Error::Invalid(
                    "chat.Connect.InvalidSinceSeq",
                    format!("since_seq must be a seq number (0 or more), not {s:?}"),
                ))
            }
        },
    };
    if !origin_allowed(&headers, &http.origins) {
        return error_response(&Error::PermissionDenied(
            "chat.Connect.ForbiddenOrigin",
            "WebSockets are accepted from the service's own pages and from --cors-origins only"
                .into(),
        ));
    }
    // The token: `Authorization`, else a `bearer.<token>` subprotocol, else the query.
    let offered = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let token = offered
        .split(',')
        .find_map(|p| p.trim().strip_prefix("bearer."))
        .or(q.access_token.as_deref());
    let subscribed = async {
        let peer = peer.as_ref().map(|Extension(p)| p);
        let caller = http.caller(&headers, token, peer).await?;
        let who = Who::of(caller.as_ref(), addr.map(|Extension(a)| a.0));
        let events = wants_events(&q.events)?;
        http.chats
            .subscribe(&q.chat_id, &q.user_id, since, events, caller.as_ref())
            .await
            .map(|sub| (sub, who))
    };
    let (sub, who) = match subscribed.await {
        Ok(opened) => opened,
        Err(e) => return error_response(&e),
    };
    let Ok(ws) = ws else {
        return error_body(
            StatusCode::UPGRADE_REQUIRED,
            "chat.Connect.NotWebSocket",
            "connect with a WebSocket client",
        );
    };
    let metrics = http.chats.metrics().clone();
    let keepalive = http.keepalive;
    let chats = http.chats.clone();
    // Browsers fail the handshake unless one offered protocol is chosen.
    // No message or frame longer than the longest valid one (tungstenite's
    // default would let a client make the server buffer 64 MiB), and at
    // most one message waiting to be written.
    ws.protocols([WS_PROTOCOL])
        .max_message_size(http.max_body)
        .max_frame_size(http.max_body)
        .max_write_buffer_size(WS_WRITE_BUFFER + http.max_body)
        .write_buffer_size(WS_WRITE_BUFFER)
        .on_upgrade(move |socket| async move {
            let started = Instant::now();
            let code = pump(socket, sub, (chats, who), keepalive).await;
            finished(
                &metrics,
                "Connect",
                &q.chat_id,
                code,
                started.elapsed(),
                None,
            );
        })
}

/// Bytes a WebSocket gathers before it writes them out.
const WS_WRITE_BUFFER: usize = 128 * 1024;

/// Runs one WebSocket until either side ends it; returns how it ended.
/// Each message the client sends counts against `limit`'s rate limit for
/// its caller. With `keepalive` (interval, timeout), the client is pinged every
/// interval and the socket closed when nothing (a pong, a message) has come
/// for interval + timeout, or when one write has not gone out in that time:
/// a vanished client does not hold a socket and a stream open.
async fn pump(
    mut socket: WebSocket,
    mut sub: Subscription,
    (chats, who): (Chats, Who),
    keepalive: Option<(Duration, Duration)>,
) -> tonic::Code {
    let chat_id = sub.chat_id().to_string();
    let patience = keepalive.map_or(Duration::MAX, |(every, timeout)| every + timeout);
    let mut pings = keepalive.map(|(every, _)| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                heard = tokio::time::Instant::now();
                match incoming {
                    Some(Ok(WsMessage::Text(text))) => {
                        let sent = match serde_json::from_str::<pb::Message>(&text) {
                            Ok(msg) => match chats.admit(Action::Send, &who) {
                                Ok(()) => sub.send(draft(msg)).await.map(|_| ()),
                                Err(e) => Err(e),
                            },
                            Err(e) => Err(Error::Invalid("chat.InvalidJSON", format!("a frame is not a valid Message: {e}"))),
                        };
                        if let Err(e) = sent {
                            close(&mut socket, &e).await;
                            return code_of(&e);
                        }
                    }
                    Some(Ok(WsMessage::Binary(_))) => {
                        let e = Error::Invalid("chat.Connect.BinaryFrame", "send messages as JSON text frames".into());
                        close(&mut socket, &e).await;
                        return code_of(&e);
                    }
                    Some(Ok(WsMessage::Close(_))) | None | Some(Err(_)) => return tonic::Code::Ok,
                    Some(Ok(_)) => {} // ping/pong: answered by the library
                }
            }
            batch = sub.next_batch() => match batch {
                Ok(batch) => {
                    for msg in batch {
                        let wire = to_wire_in(&msg, &chat_id);
                        let json = serde_json::to_string(&wire).unwrap_or_default();
                        let send = socket.send(WsMessage::Text(json.into()));
                        match tokio::time::timeout(patience, send).await {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return tonic::Code::Cancelled,
                            Err(_) => return timed_out(),
                        }
                    }
                }
                Err(e) => {
                    close(&mut socket, &e).await;
                    return code_of(&e);
                }
            },
            _ = async { pings.as_mut().unwrap().tick().await }, if pings.is_some() => {
                if heard.elapsed() >= patience {
                    return timed_out();
                }
                let ping = socket.send(WsMessage::Ping(Bytes::new()));
                if !matches!(tokio::time::timeout(patience, ping).await, Ok(Ok(()))) {
                    return timed_out();
                }
            }
        }
    }
}

/// A WebSocket client that stopped answering.
fn timed_out() -> tonic::Code {
    tracing::debug!("closing a WebSocket whose client stopped answering");
    tonic::Code::DeadlineExceeded
}

/// Ends a WebSocket with a close frame whose reason is the JSON error body
/// (trimmed to fit a close frame), with the code from the error table.
async fn close(socket: &mut WebSocket, e: &Error) {
    let code = e.wire().ws_close;
    let mut reason = serde_json::json!({"id": e.id(), "detail": e.detail()}).to_string();
    // A close reason is at most 123 bytes: past that, the id alone.
    if reason.len() > 123 {
        reason = serde_json::json!({"id": e.id()}).to_string();
    }
    let _ = socket
        .send(WsMessage::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

/// CORS for the configured browser origins (`*`: any).
///
/// # Errors
/// An origin that is not a valid header value.
pub fn cors(origins: &[String]) -> Result<tower_http::cors::CorsLayer, String> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        let list = origins
            .iter()
            .map(|o| {
                o.trim()
                    .parse()
                    .map_err(|_| format!("{o:?} is not an origin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(list)
    };
    Ok(CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([axum::http::Method::GET, axum::http::Method::POST])
        .allow_headers(Any)
        .expose_headers([
            "grpc-status".parse().unwrap_or(header::CONTENT_TYPE),
            "grpc-message".parse().unwrap_or(header::CONTENT_TYPE),
        ]))
}

/// The one mapping of a domain error to the original service's JSON error
/// shape and HTTP status.
fn error_response(e: &Error) -> Response {
    let status = StatusCode::from_u16(e.wire().http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = error_body(status, e.id(), &e.detail());
    if let Some(wait) = e.retry_after() {
        // Whole seconds, rounded up: never invite a retry that is too early.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs.max(1)));
    }
    if let Error::Unauthenticated(id, _) = e {
        let challenge = match *id {
            "chat.Auth.MissingToken" => "Bearer",
            _ => "Bearer error=\"invalid_token\"",
        };
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static(challenge),
        );
    }
    response
}

fn error_body(status: StatusCode, id: &str, detail: &str) -> Response {
    let body = serde_json::json!({
        "id": id,
        "code": status.as_u16(),
        "detail": detail,
        "status": status.canonical_reason().unwrap_or(""),
    });
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

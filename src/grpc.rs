//! The gRPC wire layer: handlers that convert, call [`Chats`] and convert
//! back, count and log each call, and the one mapping of [`Error`] to [`Status`].

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio_stream::Stream;
use tonic::{metadata::MetadataMap, Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    auth::{Auth, Identity},
    calls::{self, NamesChat},
    chat::{
        rate::{Action, Who},
        Chats, Draft, Subscription,
    },
    conn::PeerAddr,
    error::Error,
    http::HeldLease,
    metrics::Metrics,
    model::{Message, View},
    pb,
    tls::PeerIdentity,
};

/// The `chat.Chat` service.
pub struct ChatService {
    chats: Chats,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
}

impl ChatService {
    pub fn new(chats: Chats, auth: Arc<Auth>) -> Self {
        let metrics = chats.metrics().clone();
        ChatService {
            chats,
            auth,
            metrics,
        }
    }

    /// The verified caller of a call (see [`identify`]).
    async fn caller<T>(&self, request: &Request<T>) -> Result<Option<Identity>, Error> {
        let md = request.metadata();
        identify(
            &self.auth,
            &self.metrics,
            |name| {
                md.get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect()
            },
            None,
            request.extensions().get::<PeerIdentity>(),
        )
        .await
    }

    /// Runs one of the unary calls in [`crate::calls`] with the verified
    /// caller, counted against its rate limit if it has one.
    async fn unary<Req, Resp, F, Fut>(
        &self,
        method: &'static str,
        request: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: NamesChat,
        Resp: NamesChat,
        F: FnOnce(Chats, Req, Option<Identity>) -> Fut,
        Fut: Future<Output = Result<Resp, Error>>,
    {
        let chat_id = request.get_ref().chat_id().to_owned();
        self.observe(method, &chat_id, async {
            let caller = self.caller(&request).await?;
            if let Some(action) = calls::limited_as(method) {
                self.chats
                    .admit(action, &rate_key(&request, caller.as_ref()))?;
            }
            call(self.chats.clone(), request.into_inner(), caller).await
        })
        .await
    }

    /// Runs a unary call, then counts and logs it with the chat its
    /// request names (`chat_id`), or else the one its response names.
    async fn observe<T: NamesChat>(
        &self,
        method: &'static str,
        chat_id: &str,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await.map_err(Status::from);
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        let chat_id = match &result {
            Ok(resp) if chat_id.is_empty() => resp.chat_id(),
            _ => chat_id,
        };
        finished(
            &self.metrics,
            method,
            chat_id,
            code,
            started.elapsed(),
            result.as_ref().err(),
        );
        result.map(Response::new)
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl pb::chat_server::Chat for ChatService {
    async fn new(
        &self,
        request: Request<pb::NewRequest>,
    ) -> Result<Response<pb::NewResponse>, Status> {
        self.observe("New", "", async {
            let caller = self.caller(&request).await?;
            self.chats
                .admit(Action::New, &rate_key(&request, caller.as_ref()))?;
            let chat = self
                .chats
                .new_chat(request.into_inner().user_ids, caller.as_ref())
                .await?;
            Ok(pb::NewResponse {
                chat_id: chat.to_string(),
            })
        })
        .await
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let caller = self.caller(&request).await;
        let who = rate_key(&request, caller.as_ref().ok().and_then(Option::as_ref));
        let req = request.into_inner();
        let mut lease = None;
        let mut response = self
            .observe("History", &req.chat_id, async {
                let caller = caller?;
                self.chats.admit(Action::Read, &who)?;
                let mut page = self
                    .chats
                    .history(
                        &req.chat_id,
                        req.limit,
                        req.before_seq,
                        req.after_seq,
                        view(&req),
                        caller.as_ref(),
                    )
                    .await?;
                page.fit(wire_len);
                let resp = pb::HistoryResponse {
                    messages: page_to_wire(std::mem::take(&mut page.messages)),
                    has_more: page.has_more,
                };
                lease = Some(page.into_lease());
                Ok(resp)
            })
            .await?;
        // Held until the page has been sent (see `http::keep_leases`).
        if let Some(lease) = lease {
            response.extensions_mut().insert(HeldLease::new(lease));
        }
        Ok(response)
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let caller = self.caller(&request).await;
        let addr = peer_addr(&request);
        let req = request.into_inner();
        // Tests only (never in a normal build): a request that panics, to
        // prove one failing request cannot take down the server.
        #[cfg(feature = "fault-injection")]
        if req.text == "fault-injection: panic" {
            panic!("injected panic");
        }
        let chat_id = req.chat_id.clone();
        self.observe("Send", &chat_id, async {
            let caller = caller?;
            self.chats
                .admit(Action::Send, &Who::of(caller.as_ref(), addr))?;
            let msg = self.chats.send(req.into(), caller.as_ref()).await?;
            Ok(pb::SendResponse {
                message: Some(to_wire(&msg)),
            })
        })
        .await
    }

    async fn list_chats(
        &self,
        request: Request<pb::ListChatsRequest>,
    ) -> Result<Response<pb::ListChatsResponse>, Status> {
        self.unary("ListChats", request, |chats, req, caller| async move {
            calls::list_chats(&chats, req, caller.as_ref()).await
        })
        .await
    }

    async fn mark_read(
        &self,
        request: Request<pb::MarkReadRequest>,
    ) -> Result<Response<pb::MarkReadResponse>, Status> {
        self.unary("MarkRead", request, |chats, req, caller| async move {
            calls::mark_read(&chats, req, caller.as_ref()).await
        })
        .await
    }

    async fn read_state(
        &self,
        request: Request<pb::ReadStateRequest>,
    ) -> Result<Response<pb::ReadStateResponse>, Status> {
        self.unary("ReadState", request, |chats, req, caller| async move {
            calls::read_state(&chats, req, caller.as_ref()).await
        })
        .await
    }

    async fn edit(
        &self,
        request: Request<pb::EditRequest>,
    ) -> Result<Response<pb::EditResponse>, Status> {
        self.unary("Edit", request, |chats, req, caller| async move {
            calls::edit(&chats, req, caller.as_ref()).await
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        self.unary("Delete", request, |chats, req, caller| async move {
            calls::delete(&chats, req, caller.as_ref()).await
        })
        .await
    }

    async fn presence(
        &self,
        request: Request<pb::PresenceRequest>,
    ) -> Result<Response<pb::PresenceResponse>, Status> {
        self.unary("Presence", request, |chats, req, caller| async move {
            calls::presence(&chats, req, caller.as_ref()).await
        })
        .await
    }

    async fn typing(
        &self,
        request: Request<pb::TypingRequest>,
    ) -> Result<Response<pb::TypingResponse>, Status> {
        self.unary("Typing", request, |chats, req, caller| async move {
            calls::typing(&chats, req, caller.as_ref()).await
        })
        .await
    }

    type ConnectStream = ConnectStream;

    /// See `Connect` in the proto. The response stream is one generator,
    /// owned by the call: it is dropped, with everything it holds, as soon as
    /// the client goes away, and it ends itself on an invalid message, on
    /// shutdown, or after the client half-closes and has been sent every
    /// message stored up to then.
    async fn connect(
        &self,
        request: Request<Streaming<pb::Message>>,
    ) -> Result<Response<ConnectStream>, Status> {
        let chat_id = metadata(request.metadata(), "chat-id").unwrap_or_default();
        let (mut sub, who) = match self.subscribe(&request).await {
            Ok(opened) => opened,
            Err(e) => {
                let status = Status::from(e);
                let code = status.code();
                finished(
                    &self.metrics,
                    "Connect",
                    &chat_id,
                    code,
                    Duration::ZERO,
                    Some(&status),
                );
                return Err(status);
            }
        };
        tracing::debug!(chat_id, "Connect stream opened");
        let mut inbound = request.into_inner();
        let mut end = StreamEnd {
            metrics: self.metrics.clone(),
            chat_id,
            started: Instant::now(),
            code: Code::Cancelled,
        };
        let wire_chat_id = sub.chat_id().to_string();
        let chats = self.chats.clone();
        let out = async_stream::stream! {
            // After the client half-closes: the durable seq to deliver up to before ending.
            let mut end_at: Option<u64> = None;
            loop {
                if end_at.is_some_and(|end| sub.delivered() >= end) {
                    end.set(Code::Ok);
                    break;
                }
                let event = tokio::select! {
                    inbound = inbound.message(), if end_at.is_none() => Event::Inbound(inbound),
                    batch = sub.next_batch() => Event::Batch(batch),
                };
                let failed = match event {
                    Event::Inbound(Ok(Some(msg))) => {
                        let sent = match chats.admit(Action::Send, &who) {
                            Ok(()) => sub.send(draft(msg)).await,
                            Err(e) => Err(e),
                        };
                        sent.err().map(Status::from)
                    }
                    Event::Inbound(Ok(None)) => {
                        end_at = Some(sub.durable());
                        None
                    }
                    Event::Inbound(Err(status)) => Some(over_limit(&status).map_or(status, Status::from)),
                    Event::Batch(Ok(batch)) => {
                        for msg in batch {
                            yield Ok(to_wire_in(&msg, &wire_chat_id));
                        }
                        None
                    }
                    Event::Batch(Err(e)) => Some(Status::from(e)),
                };
                if let Some(status) = failed {
                    end.set(status.code());
                    yield Err(status);
                    break;
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
}

impl ChatService {
    /// Opens the subscription a Connect call asks for in its metadata;
    /// with whom the messages the client sends on it count against.
    async fn subscribe<T>(&self, request: &Request<T>) -> Result<(Subscription, Who), Error> {
        let caller = self.caller(request).await?;
        let who = rate_key(request, caller.as_ref());
        let md = request.metadata();
        let since_seq = match metadata(md, "since-seq")? {
            s if s.is_empty() => None,
            s => Some(s.trim().parse::<u64>().map_err(|_| {
                Error::Invalid(
                    "chat.Connect.InvalidSinceSeq",
                    format!("since-seq must be a seq number (0 or more), not {s:?}"),
                )
            })?),
        };
        let events = wants_events(&metadata(md, "events")?)?;
        self.chats
            .subscribe(
                &metadata(md, "chat-id")?,
                &user_id(md)?,
                since_seq,
                events,
                caller.as_ref(),
            )
            .await
            .map(|sub| (sub, who))
    }
}

/// Whether a Connect stream opts in to events: `events: all` (gRPC
/// metadata) or `events=all` (WebSocket query); empty or `none`: no.
///
/// # Errors
/// `Invalid` for anything else.
pub(crate) fn wants_events(value: &str) -> Result<bool, Error> {
    match value.trim() {
        "" | "none" => Ok(false),
        "all" => Ok(true),
        other => Err(Error::Invalid(
            "chat.Connect.InvalidEvents",
            format!(
                "events must be \"all\" (or left out), not {}",
                crate::chat::shown(other)
            ),
        )),
    }
}

/// The client's address (see [`PeerAddr`]).
fn peer_addr<T>(request: &Request<T>) -> Option<std::net::IpAddr> {
    request.extensions().get::<PeerAddr>().map(|a| a.0)
}

/// Whom a call counts against for rate limits.
fn rate_key<T>(request: &Request<T>, caller: Option<&Identity>) -> Who {
    Who::of(caller, peer_addr(request))
}

/// Counts and logs a Connect stream when it ends, however it ends: if the
/// client goes away the stream is dropped mid-way and the code stays CANCELLED.
struct StreamEnd {
    metrics: Arc<Metrics>,
    chat_id: String,
    started: Instant,
    code: Code,
}

impl StreamEnd {
    fn set(&mut self, code: Code) {
        self.code = code;
    }
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        let latency = self.started.elapsed();
        finished(
            &self.metrics,
            "Connect",
            &self.chat_id,
            self.code,
            latency,
            None,
        );
    }
}

enum Event {
    Inbound(Result<Option<pb::Message>, Status>),
    Batch(crate::error::Result<Vec<Arc<Message>>>),
}

/// The verified caller of a request over any wire: `get` reads a header
/// (gRPC metadata) by its lower-case name; `token` is a bearer token found
/// elsewhere (a WebSocket's subprotocols or query); `peer` is who the
/// connection's client certificate names. Refusals are counted by
/// reason; no token ever reaches a log or a metric.
///
/// # Errors
/// `Unauthenticated` when auth is on and the credential is missing or bad.
pub(crate) async fn identify<'a>(
    auth: &Auth,
    metrics: &Metrics,
    get: impl Fn(&str) -> Vec<&'a str>,
    token: Option<&str>,
    peer: Option<&PeerIdentity>,
) -> Result<Option<Identity>, Error> {
    let result = auth.identify(get, token, peer).await;
    if let Err(e) = &result {
        let counter = match e.id() {
            "chat.Auth.MissingToken" => &metrics.auth_missing,
            _ => &metrics.auth_invalid,
        };
        counter.inc();
    }
    result
}

/// Counts and logs one finished RPC: one line, at debug when OK or when the
/// client went away, info for a refused request, error for a server failure.
/// Never logs message text.
pub(crate) fn finished(
    metrics: &Metrics,
    method: &'static str,
    chat_id: &str,
    code: Code,
    latency: Duration,
    err: Option<&Status>,
) {
    let code_name = code_name(code);
    metrics.rpc(method, code_name, latency);
    // A client's chat id, however long, is logged by its start only.
    let chat_id = match chat_id.char_indices().nth(64) {
        Some((cut, _)) => &chat_id[..cut],
        None => chat_id,
    };
    let latency_us = latency.as_micros() as u64;
    let error = err.map_or("", Status::message);
    match code {
        Code::Ok | Code::Cancelled => {
            tracing::debug!(method, code = code_name, latency_us, chat_id, "rpc")
        }
        Code::Internal | Code::Unknown | Code::DataLoss => {
            tracing::error!(method, code = code_name, latency_us, chat_id, error, "rpc")
        }
        _ => tracing::info!(method, code = code_name, latency_us, chat_id, error, "rpc"),
    }
}

/// A text metadata value; absent reads as empty.
fn metadata(md: &MetadataMap, key: &'static str) -> Result<String, Error> {
    match md.get(key) {
        None => Ok(String::new()),
        Some(v) => v.to_str().map(str::to_owned).map_err(|_| {
            Error::Invalid(
                "chat.Connect.InvalidMetadata",
                format!("the {key} metadata must be printable ASCII"),
            )
        }),
    }
}

/// The stream's user: `user-id`, or `user-id-bin` (binary metadata, which
/// gRPC base64-encodes on the wire) for ids that are not ASCII, such as
/// "José": metadata values must be printable ASCII.
fn user_id(md: &MetadataMap) -> Result<String, Error> {
    let text = metadata(md, "user-id")?;
    match md.get_bin("user-id-bin") {
        Some(bin) if text.is_empty() => {
            let bytes = bin.to_bytes().map_err(|_| {
                Error::Invalid(
                    "chat.Connect.InvalidMetadata",
                    "the user-id-bin metadata is not valid base64".into(),
                )
            })?;
            String::from_utf8(bytes.to_vec()).map_err(|_| {
                Error::Invalid(
                    "chat.Connect.InvalidMetadata",
                    "the user-id-bin metadata must be UTF-8".into(),
                )
            })
        }
        Some(_) => Err(Error::Invalid(
            "chat.Connect.InvalidMetadata",
            "set user-id or user-id-bin, not both".into(),
        )),
        None => Ok(text),
    }
}

/// tonic refuses a request message over the decoding limit with
/// OUT_OF_RANGE before any handler runs; gRPC's convention for a message
/// over the receive limit (grpc-go, grpc-java, grpc-core) is
/// RESOURCE_EXHAUSTED, and ours is `chat.RequestTooLarge`.
fn over_limit(status: &Status) -> Option<Error> {
    let tonic_says = "Error, decoded message length too large: ";
    let found = status.message().strip_prefix(tonic_says)?;
    (status.code() == Code::OutOfRange).then(|| {
        Error::RequestTooLarge(format!(
            "the request message is over the server's limit ({found}); \
             see --max-message-bytes"
        ))
    })
}

/// Rewrites tonic's refusal of an oversized request (a trailers-only
/// response, before any handler) as [`over_limit`] says, for every gRPC
/// and gRPC-Web call.
pub async fn request_too_large(response: axum::response::Response) -> axum::response::Response {
    match Status::from_header_map(response.headers()).and_then(|s| over_limit(&s)) {
        None => response,
        Some(e) => {
            let (mut parts, _) = response.into_parts();
            let status = Status::from(e);
            parts.headers.remove("grpc-status");
            parts.headers.remove("grpc-message");
            parts.headers.remove("grpc-status-details-bin");
            if status.add_header(&mut parts.headers).is_err() {
                return Status::resource_exhausted("chat.RequestTooLarge").into_http();
            }
            axum::response::Response::from_parts(parts, axum::body::Body::empty())
        }
    }
}

/// The gRPC code of a domain error (also the label HTTP calls are counted under).
pub(crate) fn code_of(e: &Error) -> Code {
    e.wire().grpc
}

/// The canonical name of a gRPC code, as in the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<pb::SendRequest> for Draft {
    fn from(req: pb::SendRequest) -> Draft {
        Draft {
            client_id: req.client_id,
            chat_id: req.chat_id,
            user_id: req.user_id,
            subject: req.subject,
            text: req.text,
        }
    }
}

pub(crate) fn draft(msg: pb::Message) -> Draft {
    Draft {
        client_id: msg.client_id,
        chat_id: msg.chat_id,
        user_id: msg.user_id,
        subject: msg.subject,
        text: msg.text,
    }
}

/// A History page on the wire: moves the strings, and formats the chat id
/// once for the page (every message of a page is of one chat).
pub(crate) fn page_to_wire(messages: Vec<Message>) -> Vec<pb::Message> {
    let chat_id = messages
        .first()
        .map(|m| m.chat.to_string())
        .unwrap_or_default();
    messages
        .into_iter()
        .map(|m| pb::Message {
            id: m.id,
            client_id: m.client_id,
            chat_id: chat_id.clone(),
            user_id: m.user_id,
            sent_at: m.sent_at,
            subject: m.subject,
            text: m.text,
            seq: m.seq,
            kind: m.kind.number(),
            target_seq: m.target,
            edited_at: m.edited_at,
            deleted: m.deleted,
        })
        .collect()
}

/// What of the log a History request asks for.
pub(crate) fn view(req: &pb::HistoryRequest) -> View {
    View {
        events: req.include_events,
        deleted: req.include_deleted,
    }
}

/// The protobuf size of a message in a History page (the chat id is a UUID).
fn wire_len(m: &Message) -> usize {
    use prost::encoding::encoded_len_varint as varint;
    let field = |len: usize| {
        if len == 0 {
            0
        } else {
            1 + varint(len as u64) as usize + len
        }
    };
    let len = field(m.id.len())
        + field(m.client_id.len())
        + field(36)
        + field(m.user_id.len())
        + 1
        + varint(m.sent_at as u64) as usize
        + field(m.subject.len())
        + field(m.text.len())
        + 1
        + varint(m.seq) as usize
        + (m.kind.number() != 0) as usize * 2
        + (m.target != 0) as usize * (1 + varint(m.target))
        + (m.edited_at != 0) as usize * (1 + varint(m.edited_at as u64))
        + m.deleted as usize * 2;
    field(len)
}

pub(crate) fn to_wire(msg: &Message) -> pb::Message {
    to_wire_in(msg, &msg.chat.to_string())
}

/// A message of the chat whose id, formatted, is `chat_id`: a live stream
/// formats it once, not once per delivery.
pub(crate) fn to_wire_in(msg: &Message, chat_id: &str) -> pb::Message {
    pb::Message {
        id: msg.id.clone(),
        client_id: msg.client_id.clone(),
        chat_id: chat_id.to_owned(),
        user_id: msg.user_id.clone(),
        sent_at: msg.sent_at,
        subject: msg.subject.clone(),
        text: msg.text.clone(),
        seq: msg.seq,
        kind: msg.kind.number(),
        target_seq: msg.target,
        edited_at: msg.edited_at,
        deleted: msg.deleted,
    }
}

/// The one place a domain error becomes a gRPC status: the code, the
/// message (`"{id}: {detail}"`) and a `google.rpc.ErrorInfo` whose reason is
/// the error id, so generated clients can branch without parsing text.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = code_of(&e);
        if let Error::Store(cause) = &e {
            tracing::error!(error = %cause, "request failed in the store");
        }
        let mut details = ErrorDetails::with_error_info(e.id(), "chat", HashMap::new());
        if let Some(wait) = e.retry_after() {
            details.set_retry_info(Some(wait));
        }
        Status::with_error_details(code, e.to_string(), details)
    }
}

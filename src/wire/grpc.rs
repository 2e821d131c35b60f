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

use super::{
    calls::{self, Call, Encoding, NamesChat},
    convert::{draft, to_wire_in, wants_events},
    lease::HeldLease,
    observe::{code_of, finished, identify},
};
use crate::{
    auth::{Auth, Identity},
    chat::{
        rate::{Action, Who},
        Chats, Subscription,
    },
    conn::PeerAddr,
    error::Error,
    metrics::Metrics,
    model::Message,
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

/// The `chat.Chat` service: a handler per row of [`calls::unary_rpcs!`],
/// each running its function in [`calls`] with the verified caller, counted
/// against its rate limit, and Connect.
macro_rules! grpc_service {
    ($($name:ident $f:ident $req:ident $resp:ident $limit:expr,)*) => {
        #[tonic::async_trait]
        impl pb::chat_server::Chat for ChatService {
            $(
                async fn $f(
                    &self,
                    request: Request<pb::$req>,
                ) -> Result<Response<pb::$resp>, Status> {
                    let method = stringify!($name);
                    let chat_id = request.get_ref().chat_id().to_owned();
                    let mut lease = None;
                    let mut response = self
                        .observe(method, &chat_id, async {
                            let caller = self.caller(&request).await?;
                            if let Some(action) = calls::limited_as(method) {
                                self.chats
                                    .admit(action, &rate_key(&request, caller.as_ref()))?;
                            }
                            let mut call =
                                Call::new(&self.chats, caller.as_ref(), Encoding::Protobuf);
                            let resp = calls::$f(&mut call, request.into_inner()).await?;
                            lease = call.lease;
                            Ok(resp)
                        })
                        .await?;
                    // Held until the body has been sent (see `lease::keep_leases`).
                    if let Some(lease) = lease {
                        response.extensions_mut().insert(HeldLease::new(lease));
                    }
                    Ok(response)
                }
            )*

            type ConnectStream = ConnectStream;

            async fn connect(
                &self,
                request: Request<Streaming<pb::Message>>,
            ) -> Result<Response<ConnectStream>, Status> {
                self.connect_stream(request).await
            }
        }
    };
}
calls::unary_rpcs!(grpc_service);

impl ChatService {
    /// See `Connect` in the proto. The response stream is one generator,
    /// owned by the call: it is dropped, with everything it holds, as soon as
    /// the client goes away, and it ends itself on an invalid message, on
    /// shutdown, or after the client half-closes and has been sent every
    /// message stored up to then.
    async fn connect_stream(
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

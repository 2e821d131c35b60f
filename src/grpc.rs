//! The gRPC wire layer: handlers that convert, call [`Chats`] and convert
//! back, and the one mapping of [`Error`] to [`Status`].

use std::{collections::HashMap, pin::Pin};

use tokio_stream::Stream;
use tonic::{metadata::MetadataMap, Code, Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, StatusExt};

use crate::{
    chat::{Chats, Draft},
    error::Error,
    pb, store,
};

/// The `chat.Chat` service.
pub struct ChatService {
    chats: Chats,
}

impl ChatService {
    pub fn new(chats: Chats) -> Self {
        ChatService { chats }
    }
}

type ConnectStream = Pin<Box<dyn Stream<Item = Result<pb::Message, Status>> + Send>>;

#[tonic::async_trait]
impl pb::chat_server::Chat for ChatService {
    async fn new(
        &self,
        request: Request<pb::NewRequest>,
    ) -> Result<Response<pb::NewResponse>, Status> {
        let chat = self.chats.new_chat(request.into_inner().user_ids).await?;
        Ok(Response::new(pb::NewResponse {
            chat_id: chat.to_string(),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let req = request.into_inner();
        let page = self
            .chats
            .history(&req.chat_id, req.limit, req.before_seq, req.after_seq)?;
        Ok(Response::new(pb::HistoryResponse {
            messages: page.messages.iter().map(to_wire).collect(),
            has_more: page.has_more,
        }))
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = request.into_inner();
        let msg = self
            .chats
            .send(Draft {
                client_id: req.client_id,
                chat_id: req.chat_id,
                user_id: req.user_id,
                subject: req.subject,
                text: req.text,
            })
            .await?;
        Ok(Response::new(pb::SendResponse {
            message: Some(to_wire(&msg)),
        }))
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
        let md = request.metadata();
        let chat_id = metadata(md, "chat-id")?;
        let user_id = metadata(md, "user-id")?;
        let since_seq = match metadata(md, "since-seq")? {
            s if s.is_empty() => None,
            s => Some(s.trim().parse::<u64>().map_err(|_| {
                Status::from(Error::Invalid(
                    "chat.Connect.InvalidSinceSeq",
                    format!("since-seq must be a seq number (0 or more), not {s:?}"),
                ))
            })?),
        };
        let mut sub = self.chats.subscribe(&chat_id, &user_id, since_seq)?;
        let mut inbound = request.into_inner();
        let out = async_stream::stream! {
            // After the client half-closes: the durable seq to deliver up to before ending.
            let mut end_at: Option<u64> = None;
            loop {
                if end_at.is_some_and(|end| sub.delivered() >= end) {
                    break;
                }
                let event = tokio::select! {
                    inbound = inbound.message(), if end_at.is_none() => Event::Inbound(inbound),
                    batch = sub.next_batch() => Event::Batch(batch),
                };
                match event {
                    Event::Inbound(Ok(Some(msg))) => {
                        if let Err(e) = sub.send(draft(msg)).await {
                            yield Err(e.into());
                            break;
                        }
                    }
                    Event::Inbound(Ok(None)) => end_at = Some(sub.durable()),
                    Event::Inbound(Err(status)) => {
                        yield Err(status);
                        break;
                    }
                    Event::Batch(Ok(batch)) => {
                        for msg in batch {
                            yield Ok(to_wire(&msg));
                        }
                    }
                    Event::Batch(Err(e)) => {
                        yield Err(e.into());
                        break;
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(out)))
    }
}

enum Event {
    Inbound(Result<Option<pb::Message>, Status>),
    Batch(crate::error::Result<Vec<std::sync::Arc<store::Message>>>),
}

/// A text metadata value; absent reads as empty.
fn metadata(md: &MetadataMap, key: &'static str) -> Result<String, Status> {
    match md.get(key) {
        None => Ok(String::new()),
        Some(v) => v.to_str().map(str::to_owned).map_err(|_| {
            Status::invalid_argument(format!(
                "chat.Connect.InvalidMetadata: the {key} metadata must be printable ASCII"
            ))
        }),
    }
}

fn draft(msg: pb::Message) -> Draft {
    Draft {
        client_id: msg.client_id,
        chat_id: msg.chat_id,
        user_id: msg.user_id,
        subject: msg.subject,
        text: msg.text,
    }
}

fn to_wire(msg: &store::Message) -> pb::Message {
    pb::Message {
        id: msg.id.clone(),
        client_id: msg.client_id.clone(),
        chat_id: msg.chat_id().to_string(),
        user_id: msg.user_id.clone(),
        sent_at: msg.sent_at,
        subject: msg.subject.clone(),
        text: msg.text.clone(),
        seq: msg.seq,
    }
}

/// The one place a domain error becomes a gRPC status: the code, the
/// message (`"{id}: {detail}"`) and a `google.rpc.ErrorInfo` whose reason is
/// the error id, so generated clients can branch without parsing text.
impl From<Error> for Status {
    fn from(e: Error) -> Status {
        let code = match &e {
            Error::Invalid(..) | Error::TooLarge(..) => Code::InvalidArgument,
            Error::NotFound(..) => Code::NotFound,
            Error::PermissionDenied(..) => Code::PermissionDenied,
            Error::AlreadyExists(..) => Code::AlreadyExists,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Store(_) => Code::Internal,
        };
        if code == Code::Internal {
            tracing::error!(error = %e, "request failed in the store");
        }
        Status::with_error_details(
            code,
            e.to_string(),
            ErrorDetails::with_error_info(e.id(), "chat", HashMap::new()),
        )
    }
}

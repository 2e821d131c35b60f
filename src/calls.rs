//! The unary RPCs that came with the inbox, read state, edits and presence,
//! as one function each from the protobuf request to the protobuf response,
//! shared by the gRPC handlers and the HTTP/JSON routes (which only add
//! their own framing, counting and error mapping).

use crate::{
    chat::{Change, Changed, Chats},
    error::Error,
    grpc::to_wire,
    model::InboxEntry,
    pb,
};

type Caller<'a> = Option<&'a crate::auth::Identity>;

/// The rate limit a call counts against: the ones that write (an edit or a
/// delete is a log entry like a message; a read position or a typing signal
/// a write or a notification) count as Sends; the ones that read the
/// store, as reads.
pub(crate) fn limited_as(method: &str) -> Option<crate::chat::rate::Action> {
    use crate::chat::rate::Action;
    match method {
        "Edit" | "Delete" | "MarkRead" | "Typing" => Some(Action::Send),
        "History" | "ListChats" | "ReadState" | "Presence" => Some(Action::Read),
        _ => None,
    }
}

/// The chat a request names, or that New's response names: the `chat_id`
/// of the call's log line, over gRPC and HTTP alike. Empty for what names
/// no chat (ListChats; a New that was refused).
pub(crate) trait NamesChat {
    fn chat_id(&self) -> &str {
        ""
    }
}

macro_rules! names_chat {
    (by chat_id: $($with:ident),*; none: $($without:ident),*;) => {
        $(impl NamesChat for pb::$with {
            fn chat_id(&self) -> &str {
                &self.chat_id
            }
        })*
        $(impl NamesChat for pb::$without {})*
    };
}

names_chat! {
    by chat_id: HistoryRequest, SendRequest, MarkReadRequest, ReadStateRequest, EditRequest,
        DeleteRequest, PresenceRequest, TypingRequest, NewResponse;
    none: NewRequest, ListChatsRequest, HistoryResponse, SendResponse, ListChatsResponse,
        MarkReadResponse, ReadStateResponse, EditResponse, DeleteResponse, PresenceResponse,
        TypingResponse;
}

pub(crate) async fn list_chats(
    chats: &Chats,
    req: pb::ListChatsRequest,
    caller: Caller<'_>,
) -> Result<pb::ListChatsResponse, Error> {
    let inbox = chats
        .list_chats(&req.user_id, req.limit, &req.cursor, caller)
        .await?;
    Ok(pb::ListChatsResponse {
        chats: inbox.chats.into_iter().map(summary).collect(),
        next_cursor: inbox.next_cursor,
    })
}

fn summary(entry: InboxEntry) -> pb::ChatSummary {
    pb::ChatSummary {
        chat_id: entry.chat.to_string(),
        user_ids: entry.members,
        last_message: entry.last_message.as_ref().map(to_wire),
        last_seq: entry.last_seq,
        unread: entry.unread,
        read_seq: entry.read_seq,
        last_active_at: entry.active_us / 1_000_000,
    }
}

pub(crate) async fn mark_read(
    chats: &Chats,
    req: pb::MarkReadRequest,
    caller: Caller<'_>,
) -> Result<pb::MarkReadResponse, Error> {
    let (mark, unread) = chats
        .mark_read(&req.chat_id, &req.user_id, req.seq, caller)
        .await?;
    Ok(pb::MarkReadResponse {
        read_seq: mark.seq,
        unread,
    })
}

pub(crate) async fn read_state(
    chats: &Chats,
    req: pb::ReadStateRequest,
    caller: Caller<'_>,
) -> Result<pb::ReadStateResponse, Error> {
    let marks = chats.read_state(&req.chat_id, caller).await?;
    Ok(pb::ReadStateResponse {
        positions: marks
            .into_iter()
            .map(|(user_id, mark)| pb::ReadPosition {
                user_id,
                read_seq: mark.seq,
            })
            .collect(),
    })
}

pub(crate) async fn edit(
    chats: &Chats,
    req: pb::EditRequest,
    caller: Caller<'_>,
) -> Result<pb::EditResponse, Error> {
    let change = Change {
        client_id: req.client_id,
        chat_id: req.chat_id,
        user_id: req.user_id,
        seq: req.seq,
        subject: req.subject,
        text: req.text,
    };
    let Changed { message, event_seq } = chats.edit(change, caller).await?;
    Ok(pb::EditResponse {
        message: Some(to_wire(&message)),
        event_seq,
    })
}

pub(crate) async fn delete(
    chats: &Chats,
    req: pb::DeleteRequest,
    caller: Caller<'_>,
) -> Result<pb::DeleteResponse, Error> {
    let change = Change {
        client_id: req.client_id,
        chat_id: req.chat_id,
        user_id: req.user_id,
        seq: req.seq,
        ..Change::default()
    };
    let Changed { message, event_seq } = chats.delete(change, caller).await?;
    Ok(pb::DeleteResponse {
        message: Some(to_wire(&message)),
        event_seq,
    })
}

pub(crate) async fn presence(
    chats: &Chats,
    req: pb::PresenceRequest,
    caller: Caller<'_>,
) -> Result<pb::PresenceResponse, Error> {
    Ok(pb::PresenceResponse {
        user_ids: chats.presence(&req.chat_id, caller).await?,
    })
}

pub(crate) async fn typing(
    chats: &Chats,
    req: pb::TypingRequest,
    caller: Caller<'_>,
) -> Result<pb::TypingResponse, Error> {
    chats.typing(&req.chat_id, &req.user_id, caller).await?;
    Ok(pb::TypingResponse {})
}

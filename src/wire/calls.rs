//! Every unary RPC, as one function from the protobuf request to the
//! protobuf response, shared by gRPC (and gRPC-Web) and HTTP/JSON, which
//! only add their own framing, counting and error mapping; and
//! [`unary_rpcs!`], the one table of them, from which both transports
//! generate their handlers and routes, and this module the rate-limit class
//! and the list of routes.
//!
//! Adding a unary RPC: the proto, one function here, one row in the table
//! (plus the store methods, tests and docs it needs).

use crate::{
    auth::Identity,
    chat::{budget::Lease, rate::Action, Change, Changed, Chats},
    error::Error,
    pb,
};

use super::convert::{json_len, page_to_wire, summary, to_wire, view, wire_len};

/// The unary RPCs, one row each: the proto's name, the function here (also
/// the name tonic gives the handler), the request and response messages,
/// and the rate limit the call counts against. The ones that write (an edit
/// or a delete is a log entry like a message; a read position or a typing
/// signal a write or a notification) count as Sends; the ones that read the
/// store, as reads. `$then` is a macro that takes the rows.
macro_rules! unary_rpcs {
    ($then:ident) => {
        $then! {
            New       new        NewRequest        NewResponse        Some(Action::New),
            History   history    HistoryRequest    HistoryResponse    Some(Action::Read),
            Send      send       SendRequest       SendResponse       Some(Action::Send),
            ListChats list_chats ListChatsRequest  ListChatsResponse  Some(Action::Read),
            MarkRead  mark_read  MarkReadRequest   MarkReadResponse   Some(Action::Send),
            ReadState read_state ReadStateRequest  ReadStateResponse  Some(Action::Read),
            Edit      edit       EditRequest       EditResponse       Some(Action::Send),
            Delete    delete     DeleteRequest     DeleteResponse     Some(Action::Send),
            Presence  presence   PresenceRequest   PresenceResponse   Some(Action::Read),
            Typing    typing     TypingRequest     TypingResponse     Some(Action::Send),
        }
    };
}
pub(crate) use unary_rpcs;

macro_rules! table {
    ($($name:ident $f:ident $req:ident $resp:ident $limit:expr,)*) => {
        /// Each unary RPC's name and the rate limit it counts against.
        const LIMITS: &[(&str, Option<Action>)] = &[$((stringify!($name), $limit)),*];
    };
}
unary_rpcs!(table);

/// The rate limit a unary call counts against (see [`unary_rpcs!`]).
pub(crate) fn limited_as(method: &str) -> Option<Action> {
    LIMITS
        .iter()
        .find(|(name, _)| *name == method)
        .and_then(|(_, limit)| *limit)
}

/// The HTTP/JSON paths, for a caller who asked for one that does not exist.
pub(crate) fn routes() -> String {
    let unary: Vec<&str> = LIMITS.iter().map(|(name, _)| *name).collect();
    format!(
        "POST /chat/Chat/{}; GET /chat/Chat/Connect",
        unary.join(", /")
    )
}

/// How a response goes on the wire, which is how a History page is cut
/// to its size in bytes.
#[derive(Clone, Copy)]
pub(crate) enum Encoding {
    Protobuf,
    Json,
}

/// One unary call in progress: what every function here is given.
pub(crate) struct Call<'a> {
    pub(crate) chats: &'a Chats,
    /// The verified caller (none with `--auth none`).
    pub(crate) caller: Option<&'a Identity>,
    pub(crate) encoding: Encoding,
    /// Memory the response holds, given back once it has been sent (see
    /// [`super::lease`]).
    pub(crate) lease: Option<Lease>,
}

impl<'a> Call<'a> {
    pub(crate) fn new(chats: &'a Chats, caller: Option<&'a Identity>, encoding: Encoding) -> Self {
        Call {
            chats,
            caller,
            encoding,
            lease: None,
        }
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

pub(crate) async fn new(
    call: &mut Call<'_>,
    req: pb::NewRequest,
) -> Result<pb::NewResponse, Error> {
    let chat = call.chats.new_chat(req.user_ids, call.caller).await?;
    Ok(pb::NewResponse {
        chat_id: chat.to_string(),
    })
}

/// A page cut to its encoded size, and held against the memory budget
/// until it has been sent.
pub(crate) async fn history(
    call: &mut Call<'_>,
    req: pb::HistoryRequest,
) -> Result<pb::HistoryResponse, Error> {
    let mut page = call
        .chats
        .history(
            &req.chat_id,
            req.limit,
            req.before_seq,
            req.after_seq,
            view(&req),
            call.caller,
        )
        .await?;
    match call.encoding {
        Encoding::Protobuf => page.fit(wire_len),
        Encoding::Json => page.fit(json_len),
    }
    let resp = pb::HistoryResponse {
        messages: page_to_wire(std::mem::take(&mut page.messages)),
        has_more: page.has_more,
    };
    call.lease = Some(page.into_lease());
    Ok(resp)
}

pub(crate) async fn send(
    call: &mut Call<'_>,
    req: pb::SendRequest,
) -> Result<pb::SendResponse, Error> {
    // Tests only (never in a normal build): a request that panics, to
    // prove one failing request cannot take down the server.
    #[cfg(feature = "fault-injection")]
    if req.text == "fault-injection: panic" {
        panic!("injected panic");
    }
    let msg = call.chats.send(req.into(), call.caller).await?;
    Ok(pb::SendResponse {
        message: Some(to_wire(&msg)),
    })
}

pub(crate) async fn list_chats(
    call: &mut Call<'_>,
    req: pb::ListChatsRequest,
) -> Result<pb::ListChatsResponse, Error> {
    let inbox = call
        .chats
        .list_chats(&req.user_id, req.limit, &req.cursor, call.caller)
        .await?;
    Ok(pb::ListChatsResponse {
        chats: inbox.chats.into_iter().map(summary).collect(),
        next_cursor: inbox.next_cursor,
    })
}

pub(crate) async fn mark_read(
    call: &mut Call<'_>,
    req: pb::MarkReadRequest,
) -> Result<pb::MarkReadResponse, Error> {
    let (mark, unread) = call
        .chats
        .mark_read(&req.chat_id, &req.user_id, req.seq, call.caller)
        .await?;
    Ok(pb::MarkReadResponse {
        read_seq: mark.seq,
        unread,
    })
}

pub(crate) async fn read_state(
    call: &mut Call<'_>,
    req: pb::ReadStateRequest,
) -> Result<pb::ReadStateResponse, Error> {
    let marks = call.chats.read_state(&req.chat_id, call.caller).await?;
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
    call: &mut Call<'_>,
    req: pb::EditRequest,
) -> Result<pb::EditResponse, Error> {
    let change = Change {
        client_id: req.client_id,
        chat_id: req.chat_id,
        user_id: req.user_id,
        seq: req.seq,
        subject: req.subject,
        text: req.text,
    };
    let Changed { message, event_seq } = call.chats.edit(change, call.caller).await?;
    Ok(pb::EditResponse {
        message: Some(to_wire(&message)),
        event_seq,
    })
}

pub(crate) async fn delete(
    call: &mut Call<'_>,
    req: pb::DeleteRequest,
) -> Result<pb::DeleteResponse, Error> {
    let change = Change {
        client_id: req.client_id,
        chat_id: req.chat_id,
        user_id: req.user_id,
        seq: req.seq,
        ..Change::default()
    };
    let Changed { message, event_seq } = call.chats.delete(change, call.caller).await?;
    Ok(pb::DeleteResponse {
        message: Some(to_wire(&message)),
        event_seq,
    })
}

pub(crate) async fn presence(
    call: &mut Call<'_>,
    req: pb::PresenceRequest,
) -> Result<pb::PresenceResponse, Error> {
    Ok(pb::PresenceResponse {
        user_ids: call.chats.presence(&req.chat_id, call.caller).await?,
    })
}

pub(crate) async fn typing(
    call: &mut Call<'_>,
    req: pb::TypingRequest,
) -> Result<pb::TypingResponse, Error> {
    call.chats
        .typing(&req.chat_id, &req.user_id, call.caller)
        .await?;
    Ok(pb::TypingResponse {})
}

//! Between the model and the wire, once for every transport: protobuf
//! messages from the domain's and back, and what a wire value means.

use crate::{
    chat::Draft,
    error::Error,
    model::{InboxEntry, Message, View},
    pb,
};

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
pub(crate) fn wire_len(m: &Message) -> usize {
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

/// The JSON size of a message in a History page, as the HTTP/JSON interface
/// sends it: escapes can make it far longer than the text.
pub(crate) fn json_len(m: &Message) -> usize {
    serde_json::to_vec(&to_wire(m)).map_or(m.weight(), |json| json.len() + 1)
}

/// A chat of a user's inbox, as `ListChats` answers it.
pub(crate) fn summary(entry: InboxEntry) -> pb::ChatSummary {
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

//! The rules for ids clients choose or send back: which characters an id
//! may hold, how a chat id is spelled, and how an id is shown in errors and
//! logs (never whole when it is long).

use uuid::Uuid;

use super::{invalid, Limits};
use crate::error::{Error, Result};

/// Characters no id may hold: C0 and C1 controls (NUL; escapes that move
/// a terminal's cursor or recolour it) and the bidi overrides, embeddings,
/// isolates and marks that make an id display in another order than it is
/// stored (`U+202E`: "ann" that shows as someone else). Ids are shown to
/// every reader of a chat.
pub(super) fn forbidden_in_id(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
        )
}

pub(super) fn forbidden_why(c: char) -> String {
    format!(
        "an id must not contain control or bidirectional-override characters (found U+{:04X})",
        c as u32
    )
}

/// The error ids of one RPC's chat_id checks.
#[derive(Clone, Copy)]
pub(crate) struct ChatIdErrors {
    pub(super) not_found: &'static str,
    too_long: &'static str,
}

pub(crate) const SEND_IDS: ChatIdErrors = ChatIdErrors {
    not_found: "chat.Send.InvalidChatID",
    too_long: "chat.Send.ChatIDTooLong",
};
pub(crate) const HISTORY_IDS: ChatIdErrors = ChatIdErrors {
    not_found: "chat.History.InvalidChatID",
    too_long: "chat.History.ChatIDTooLong",
};
pub(crate) const CONNECT_IDS: ChatIdErrors = ChatIdErrors {
    not_found: "chat.Connect.InvalidChatID",
    too_long: "chat.Connect.ChatIDTooLong",
};

/// The chat_id checks of the RPCs that came with events and read state.
macro_rules! chat_id_errors {
    ($($name:ident = $rpc:literal;)*) => {$(
        pub(crate) const $name: ChatIdErrors = ChatIdErrors {
            not_found: concat!("chat.", $rpc, ".InvalidChatID"),
            too_long: concat!("chat.", $rpc, ".ChatIDTooLong"),
        };
    )*};
}
chat_id_errors! {
    EDIT_IDS = "Edit";
    DELETE_IDS = "Delete";
    MARK_READ_IDS = "MarkRead";
    READ_STATE_IDS = "ReadState";
    PRESENCE_IDS = "Presence";
    TYPING_IDS = "Typing";
}

/// The longest chat id looked at (a UUID is 36 characters).
const MAX_CHAT_ID: usize = 64;

/// A chat id as New hands it out: the hyphenated UUID, in lower case or
/// upper case (some platforms print UUIDs in capitals). Other spellings
/// that a UUID parser would take (`{…}`, `urn:uuid:…`, no hyphens) name no
/// chat, on every backend alike.
pub(super) fn parse_chat_id(errors: ChatIdErrors, chat_id: &str) -> Result<Uuid> {
    if chat_id.len() > MAX_CHAT_ID {
        return Err(invalid(
            errors.too_long,
            format!(
                "chat_id is {} bytes; a chat id is a UUID of 36 characters",
                chat_id.len()
            ),
        ));
    }
    // 36 characters: only the hyphenated form parses.
    (chat_id.len() == 36)
        .then(|| Uuid::try_parse(chat_id).ok())
        .flatten()
        .ok_or_else(|| {
            Error::NotFound(
                errors.not_found,
                format!("no chat with id {}; create one with New", shown(chat_id)),
            )
        })
}

/// An id as error messages and logs show it: quoted, and no more than its
/// first 40 characters, so that a huge id is never echoed whole.
pub(crate) fn shown(id: &str) -> String {
    const SHOWN: usize = 40;
    match id.char_indices().nth(SHOWN) {
        None => format!("{id:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &id[..cut], id.len()),
    }
}

pub(super) fn check_id(
    error_id: &'static str,
    field: &str,
    id: &str,
    limits: &Limits,
) -> Result<()> {
    if id.is_empty() {
        return Err(invalid(
            error_id,
            format!("{field}: an id must not be empty"),
        ));
    }
    if let Some(c) = id.chars().find(|&c| forbidden_in_id(c)) {
        return Err(invalid(error_id, format!("{field}: {}", forbidden_why(c))));
    }
    if id.len() > limits.max_id_bytes {
        return Err(Error::TooLarge(
            error_id,
            format!(
                "{field}: an id is {} bytes; the limit is {}",
                id.len(),
                limits.max_id_bytes
            ),
        ));
    }
    Ok(())
}

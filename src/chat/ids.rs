//! The rules for ids clients choose or send back: which characters an id
//! may hold, how a chat id is spelled, and how an id is shown in errors and
//! logs (never whole when it is long).

use uuid::Uuid;

use super::{invalid, Limits};
use crate::error::{Error, Result};

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt of
/// Unicode 16): characters a renderer draws as nothing.
/// In an id they make a second id that reads exactly as the first ("ann"
/// and "ann" + U+200B). The list includes the bidi embeddings, overrides,
/// isolates and marks, which make an id display in another order than it
/// is stored (U+202E), and the joiners and variation selectors, so an id
/// cannot hold an emoji sequence built with them.
const INVISIBLE: &[(char, char)] = &[
    ('\u{00AD}', '\u{00AD}'),
    ('\u{034F}', '\u{034F}'),
    ('\u{061C}', '\u{061C}'),
    ('\u{115F}', '\u{1160}'),
    ('\u{17B4}', '\u{17B5}'),
    ('\u{180B}', '\u{180F}'),
    ('\u{200B}', '\u{200F}'),
    ('\u{202A}', '\u{202E}'),
    ('\u{2060}', '\u{206F}'),
    ('\u{3164}', '\u{3164}'),
    ('\u{FE00}', '\u{FE0F}'),
    ('\u{FEFF}', '\u{FEFF}'),
    ('\u{FFA0}', '\u{FFA0}'),
    ('\u{FFF0}', '\u{FFF8}'),
    ('\u{1BCA0}', '\u{1BCA3}'),
    ('\u{1D173}', '\u{1D17A}'),
    ('\u{E0000}', '\u{E0FFF}'),
];

/// Why an id can't be used, or `None` if it can. Ids are shown to every
/// reader of a chat, so an id must look like itself: no C0 or C1 controls
/// (NUL; escapes that move a terminal's cursor or recolour it), nothing
/// invisible (`INVISIBLE`), and no combining mark first: with nothing of
/// its own to sit on, U+0301 would put its accent on whatever is drawn
/// before the id (a quote, a colon), or on nothing.
pub(super) fn id_fault(id: &str) -> Option<String> {
    use unicode_properties::{GeneralCategoryGroup, UnicodeGeneralCategory};
    let first_is_mark = id
        .chars()
        .next()
        .filter(|c| c.general_category_group() == GeneralCategoryGroup::Mark);
    if let Some(c) = first_is_mark {
        return Some(format!(
            "an id must not start with a combining mark (found U+{:04X}); \
             put the letter it belongs to before it, or remove it",
            c as u32
        ));
    }
    let (at, c) = id.char_indices().find(|&(_, c)| {
        c.is_control() || INVISIBLE.iter().any(|&(lo, hi)| (lo..=hi).contains(&c))
    })?;
    let what = if c.is_control() {
        "a control character"
    } else {
        "an invisible or bidirectional-formatting character"
    };
    Some(format!(
        "an id must not contain {what} (found U+{:04X} at byte {at}); remove it",
        c as u32
    ))
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
    if let Some(why) = id_fault(id) {
        return Err(invalid(error_id, format!("{field}: {why}")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_and_a_leading_combining_mark_are_faults_named_by_code_point() {
        for (id, code_point) in [
            ("ann\u{200B}", "U+200B"),
            ("\u{FEFF}ann", "U+FEFF"),
            ("an\u{00AD}n", "U+00AD"),
            ("ann\u{2060}", "U+2060"),
            ("ann\u{FE0F}", "U+FE0F"),
            ("ann\u{E0041}", "U+E0041"),
            ("ann\u{1D173}", "U+1D173"),
            ("bob\u{202E}nna", "U+202E"),
            ("ann\u{1b}[31m", "U+001B"),
            ("\u{0301}ann", "U+0301"),
            ("\u{20DD}ann", "U+20DD"),
            ("\u{0903}ann", "U+0903"),
        ] {
            let why = id_fault(id).unwrap_or_else(|| panic!("{id:?} was accepted"));
            assert!(why.contains(code_point), "{id:?}: {why}");
        }
        assert!(id_fault("\u{0301}ann").unwrap().contains("combining mark"));
        assert!(id_fault("ann\u{200B}").unwrap().contains("invisible"));
    }

    #[test]
    fn letters_of_any_script_and_marks_on_them_are_ids() {
        for id in [
            "ann",
            "José",
            "Jose\u{0301}",
            "مريم",
            "हिन्दी",
            "김민준",
            "ann smith",
            "😀",
            "",
        ] {
            assert_eq!(id_fault(id), None, "{id:?}");
        }
    }

    #[test]
    fn the_invisible_table_is_sorted_and_disjoint() {
        assert!(INVISIBLE.iter().all(|(lo, hi)| lo <= hi));
        assert!(INVISIBLE.windows(2).all(|w| w[0].1 < w[1].0));
    }
}

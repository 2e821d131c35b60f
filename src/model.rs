//! The domain types every layer shares: what a chat and a message are,
//! apart from how a backend stores them or a wire carries them.

use uuid::Uuid;

/// A stored message, as the stores hand it out and the chat logic publishes it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Message {
    /// Server-assigned UUID, as text.
    pub id: String,
    pub client_id: String,
    pub chat: Uuid,
    pub user_id: String,
    /// Unix seconds.
    pub sent_at: i64,
    pub subject: String,
    pub text: String,
    /// 1, 2, 3, … per chat, assigned by the store, over the chat's log
    /// (messages and their edit and delete events); 0 on signals.
    pub seq: u64,
    /// What this entry is (see `Kind` in the proto).
    pub kind: Kind,
    /// An edit or delete event: the seq of its message. A read signal:
    /// the seq read up to.
    pub target: u64,
    /// A message: when last edited, unix seconds (0: never).
    pub edited_at: i64,
    /// A deleted message (its subject and text are gone), or an edit of one.
    pub deleted: bool,
    /// How many messages (not events) the chat's log holds up to and
    /// including this entry: unread counts are differences of it.
    pub n: u64,
    /// When it was stored, in microseconds (orders the inbox).
    pub at_us: i64,
    /// Once its subject and text have changed (an edit, a delete): a digest
    /// of the ones first stored, so that a retry of the original request is
    /// still recognised as a retry ([`Message::same_content`]).
    pub original: Vec<u8>,
}

/// What a log entry or a live signal is. The first three are stored in a
/// chat's log with a seq; the others are only ever live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Kind {
    #[default]
    Message,
    Edit,
    Delete,
    Read,
    Typing,
    Join,
    Leave,
}

impl Kind {
    /// The number stored and sent on the wire (`Message.Kind` in the proto).
    pub fn number(self) -> i32 {
        match self {
            Kind::Message => 0,
            Kind::Edit => 1,
            Kind::Delete => 2,
            Kind::Read => 3,
            Kind::Typing => 4,
            Kind::Join => 5,
            Kind::Leave => 6,
        }
    }

    /// The stored kind of a stored number; anything else reads as a
    /// message (only this code writes them).
    pub fn stored(n: i32) -> Kind {
        match n {
            1 => Kind::Edit,
            2 => Kind::Delete,
            _ => Kind::Message,
        }
    }
}

/// The digest of a subject and text, as kept in [`Message::original`]:
/// salted with the entry's id, so that a deleted short text cannot be
/// found by hashing guesses once for every store.
pub fn content_digest(id: &str, subject: &str, text: &str) -> Vec<u8> {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(&(id.len() as u64).to_be_bytes());
    ctx.update(id.as_bytes());
    ctx.update(&(subject.len() as u64).to_be_bytes());
    ctx.update(subject.as_bytes());
    ctx.update(text.as_bytes());
    ctx.finish().as_ref().to_vec()
}

impl Message {
    /// Whether a retry asking for `subject` and `text` asks for what this
    /// entry was first stored with (its content may have changed since).
    pub fn same_content(&self, subject: &str, text: &str) -> bool {
        match self.original.is_empty() {
            true => self.subject == subject && self.text == text,
            false => self.original == content_digest(&self.id, subject, text),
        }
    }

    /// Whether a view shows this entry: messages only unless `events`,
    /// tombstones only if `deleted`.
    pub fn shown(&self, view: View) -> bool {
        (self.kind == Kind::Message || view.events) && (!self.deleted || view.deleted)
    }

    /// What holding the message costs, roughly, in bytes: its strings and a
    /// fixed overhead. Pages, stream batches and the memory budget are
    /// measured in it; `store::postgres` computes the same in SQL.
    pub fn weight(&self) -> usize {
        self.subject.len() + self.text.len() + self.client_id.len() + self.user_id.len() + 64
    }
}

/// Takes messages while the weight before each is under `max_bytes`: the
/// first always, so that a reader always progresses.
pub fn within_bytes(max_bytes: usize) -> impl FnMut(&Message) -> bool {
    let mut taken = 0usize;
    move |m| {
        let fits = taken == 0 || taken + m.weight() <= max_bytes;
        taken += m.weight();
        fits
    }
}

/// What a reader asked to see of a chat's log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Edit and delete events too, at their seqs.
    pub events: bool,
    /// Deleted messages too, as tombstones.
    pub deleted: bool,
}

impl View {
    /// What a client built from the original proto sees: messages, no tombstones.
    pub const MESSAGES: View = View {
        events: false,
        deleted: false,
    };
    /// Everything in the log.
    pub const ALL: View = View {
        events: true,
        deleted: true,
    };
}

/// A chat in a user's inbox (see `ListChats` in the proto).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InboxEntry {
    pub chat: Uuid,
    pub members: Vec<String>,
    /// The newest message that is not deleted.
    pub last_message: Option<Message>,
    pub last_seq: u64,
    pub unread: u64,
    pub read_seq: u64,
    /// Microseconds: creation, or the last entry of its log.
    pub active_us: i64,
}

/// A user's read position in a chat.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadMark {
    /// The seq read up to.
    pub seq: u64,
    /// The chat's message count at that seq ([`Message::n`]).
    pub n: u64,
}

/// What [`crate::store::Backend::mark_read`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marked {
    /// The read position now (never lower than before).
    pub mark: ReadMark,
    /// The messages after it that are not deleted.
    pub unread: u64,
    /// Whether the position moved forward.
    pub moved: bool,
    /// In an open chat the user has not posted to: the position is kept
    /// but shown to nobody (no inbox entry, no ReadState, no read event).
    pub reader_only: bool,
}

/// Why a store refused an edit or a delete (checked where the message is
/// locked, so that it holds when the event is stored).
#[derive(Clone, Debug, PartialEq)]
pub enum Refusal {
    /// No message at that seq (or it is an event).
    NoSuchMessage,
    /// The message is someone else's: its sender.
    NotTheSender(String),
    /// An edit of a deleted message.
    Deleted,
    /// An edit of a message edited [`MAX_EDITS`] times already.
    TooManyEdits,
}

/// The most edits of one message (each is a log entry, and a delete clears them all).
pub const MAX_EDITS: usize = 1000;

/// A stored chat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChatRecord {
    /// Sorted and deduplicated. Empty: an open chat anyone may post to.
    pub members: Vec<String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Microseconds (orders the inbox until the first message).
    pub created_us: i64,
}

/// A message on its way into a store: everything but the seq, which the
/// store assigns when it appends.
#[derive(Clone, Debug)]
pub struct Append {
    /// `seq` is ignored (the store assigns it).
    pub message: Message,
    /// The client chose the client_id: a retry with the same
    /// (chat, user, client_id) must return the stored message.
    pub dedupe: bool,
}

/// What a store did with an [`Append`] once it is durable.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// Stored now, under a new seq.
    Stored(Message),
    /// An edit or delete event stored now, and its message as it is now.
    Event {
        event: Message,
        target: Box<Message>,
    },
    /// An edit or delete the store refused; nothing was stored.
    Refused(Refusal),
    /// The (chat, user, client_id) was already stored: that message,
    /// untouched, and whether its subject and text are the ones asked for
    /// (a retry) or not (the client_id reused for something else).
    Existing { stored: Message, same: bool },
}

/// The canonical key of a member set: sorted, deduplicated ids, each
/// length-prefixed so that no two sets share a key (unlike joining with "-").
/// `members` must already be sorted and deduplicated, each id under 64 KiB.
pub fn member_set_key(members: &[String]) -> Vec<u8> {
    let mut key = Vec::with_capacity(members.iter().map(|m| m.len() + 2).sum());
    for m in members {
        key.extend_from_slice(&(m.len() as u16).to_be_bytes());
        key.extend_from_slice(m.as_bytes());
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_set_keys_are_unambiguous() {
        let a = member_set_key(&["a-b".into(), "c".into()]);
        let b = member_set_key(&["a".into(), "b-c".into()]);
        assert_ne!(a, b);
    }
}

//! The sled backend's values: what is stored under each key, as protobuf
//! (prost) messages, so that fields can be added without rewriting old data.

use uuid::Uuid;

use crate::model::{ChatRecord, Kind, Message};

/// A message as stored under its `M` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageValue {
    /// Server-assigned UUID, as text.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub client_id: String,
    /// Redundant with the key; kept so a value is self-describing.
    #[prost(bytes = "vec", tag = "3")]
    pub chat: Vec<u8>,
    #[prost(string, tag = "4")]
    pub user_id: String,
    /// Unix seconds.
    #[prost(int64, tag = "5")]
    pub sent_at: i64,
    #[prost(string, tag = "6")]
    pub subject: String,
    #[prost(string, tag = "7")]
    pub text: String,
    #[prost(uint64, tag = "8")]
    pub seq: u64,
    /// [`Kind::number`]; 0 (a message) in every value written before events.
    #[prost(int32, tag = "9")]
    pub kind: i32,
    #[prost(uint64, tag = "10")]
    pub target: u64,
    #[prost(int64, tag = "11")]
    pub edited_at: i64,
    #[prost(bool, tag = "12")]
    pub deleted: bool,
    /// 0 in values written before it existed: then every entry was a
    /// message, so it is the seq.
    #[prost(uint64, tag = "13")]
    pub n: u64,
    /// 0 in values written before it existed: then `sent_at` in µs.
    #[prost(int64, tag = "14")]
    pub at_us: i64,
    #[prost(bytes = "vec", tag = "15")]
    pub original: Vec<u8>,
    /// A message: the seqs of its edit events (a delete clears them too).
    #[prost(uint64, repeated, tag = "16")]
    pub edits: Vec<u64>,
}

impl From<&Message> for MessageValue {
    fn from(m: &Message) -> Self {
        MessageValue {
            id: m.id.clone(),
            client_id: m.client_id.clone(),
            chat: m.chat.as_bytes().to_vec(),
            user_id: m.user_id.clone(),
            sent_at: m.sent_at,
            subject: m.subject.clone(),
            text: m.text.clone(),
            seq: m.seq,
            kind: m.kind.number(),
            target: m.target,
            edited_at: m.edited_at,
            deleted: m.deleted,
            n: m.n,
            at_us: m.at_us,
            original: m.original.clone(),
            edits: Vec::new(),
        }
    }
}

impl From<MessageValue> for Message {
    fn from(v: MessageValue) -> Self {
        Message {
            id: v.id,
            client_id: v.client_id,
            // The store only ever writes 16-byte ids.
            chat: Uuid::from_slice(&v.chat).unwrap_or_default(),
            user_id: v.user_id,
            sent_at: v.sent_at,
            subject: v.subject,
            text: v.text,
            seq: v.seq,
            kind: Kind::stored(v.kind),
            target: v.target,
            edited_at: v.edited_at,
            deleted: v.deleted,
            n: if v.n == 0 && v.kind == 0 { v.seq } else { v.n },
            at_us: if v.at_us == 0 {
                v.sent_at.saturating_mul(1_000_000)
            } else {
                v.at_us
            },
            original: v.original,
        }
    }
}

/// A user's read position in a chat, under its `I` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadValue {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The chat's message count at `seq`.
    #[prost(uint64, tag = "2")]
    pub n: u64,
    /// In an open chat, the position of a user who has only read it
    /// (MarkRead) and never posted: kept, but it puts the chat in no
    /// inbox and the user in no ReadState until they post.
    #[prost(bool, tag = "3")]
    pub reader_only: bool,
}

/// A chat's counters, under its `A` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActivityValue {
    #[prost(uint64, tag = "1")]
    pub last_seq: u64,
    /// Messages in the log ([`Message::n`] of the last entry).
    #[prost(uint64, tag = "2")]
    pub n: u64,
    /// Creation or the last entry, in µs.
    #[prost(int64, tag = "3")]
    pub active_us: i64,
    /// The newest message's seq (0: none).
    #[prost(uint64, tag = "4")]
    pub last_message: u64,
}

/// A chat as stored under its `C` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChatValue {
    /// Sorted and deduplicated. Empty: an open chat anyone may post to.
    #[prost(string, repeated, tag = "1")]
    pub members: Vec<String>,
    /// Unix seconds.
    #[prost(int64, tag = "2")]
    pub created_at: i64,
    #[prost(int64, tag = "3")]
    pub created_us: i64,
}

impl From<ChatValue> for ChatRecord {
    fn from(v: ChatValue) -> Self {
        ChatRecord {
            members: v.members,
            created_at: v.created_at,
            created_us: if v.created_us == 0 {
                v.created_at.saturating_mul(1_000_000)
            } else {
                v.created_us
            },
        }
    }
}

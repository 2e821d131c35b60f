//! The sled store: chats, messages and idempotency keys. Plain Rust; knows
//! nothing of gRPC.
//!
//! # Key layout
//!
//! Everything lives in sled's default tree. The first byte of a key says what
//! it is; integers are big-endian so that byte order is numeric order.
//!
//! | key | value | why this order |
//! |---|---|---|
//! | `C` chat(16) | [`ChatRecord`] | point lookup by chat id |
//! | `M` chat(16) seq(8) | [`Message`] | one chat's messages are one contiguous range, in seq order: History pages and catch-up are range scans, the last seq is one `next_back` |
//! | `D` chat(16) user_len(2) user client_id | seq(8) | idempotency: (chat, user, client_id) to the stored seq; the length prefix makes (user, client_id) unambiguous |
//! | `U` members key | chat(16) | New's idempotency: the canonical member set (sorted, deduplicated, each id `len(2) bytes`) to its chat |
//!
//! `chat(16)` is the chat's UUID in its 16 raw bytes. Values are protobuf
//! encodings (prost) of the record types below, so new fields can be added
//! without rewriting old data, and decoding garbage is an error, not a panic.
//!
//! # Why a message and its idempotency key are two plain inserts
//! A sled `Batch` would make them atomic, but `apply_batch` takes sled's
//! global write lock and made the append path ten times slower (measured
//! with chat-bench scenario 2). Instead [`Store::claim`] writes the `D` key
//! first (one compare-and-swap that also tells whether it existed), then
//! [`Store::append`] the message, and sled recovers a prefix of its log. So a
//! crash leaves either both, or only the `D` key, pointing at a seq that has
//! no message or, after restart, another message. A `D` key is only believed
//! when the message it points to has the same user and client_id; a stale
//! one is claimed anew. A message never exists without its key, so a retry
//! never stores a duplicate.

use std::path::Path;

use prost::Message as _;
use uuid::Uuid;

const CHAT: u8 = b'C';
const MESSAGE: u8 = b'M';
const DEDUPE: u8 = b'D';
const MEMBERS: u8 = b'U';

/// A stored message, as the store keeps it and the chat logic hands it out.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
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
}

impl Message {
    /// The chat id as a UUID (the store only ever writes 16-byte ids).
    pub fn chat_id(&self) -> Uuid {
        Uuid::from_slice(&self.chat).unwrap_or_default()
    }
}

/// A stored chat.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChatRecord {
    /// Sorted and deduplicated. Empty: an open chat anyone may post to.
    #[prost(string, repeated, tag = "1")]
    pub members: Vec<String>,
    /// Unix seconds.
    #[prost(int64, tag = "2")]
    pub created_at: i64,
}

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt value under key {key:?}: {source}")]
    Corrupt {
        key: Vec<u8>,
        source: prost::DecodeError,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Handle to the store. Cloning is cheap: sled's `Db` is reference-counted.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
}

impl Store {
    /// Opens (or creates) the store in `dir`, with at most `cache_bytes`
    /// of sled's page cache in memory.
    ///
    /// # Errors
    /// When sled cannot open the directory: another process holds it, it is
    /// not a sled database, or it is corrupt.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        Ok(Store { db })
    }

    /// Makes every write so far durable. Callers batch: one flush covers
    /// every write that happened before it started.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        let key = chat_key(chat);
        self.db.get(key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// The chat created for exactly this member set, if any.
    pub fn chat_for_members(&self, members_key: &[u8]) -> Result<Option<Uuid>> {
        Ok(self
            .db
            .get(members_key)?
            .and_then(|v| Uuid::from_slice(&v).ok()))
    }

    /// Stores a new chat and, for a members-only chat, its member-set key, atomically.
    pub fn insert_chat(
        &self,
        chat: &Uuid,
        record: &ChatRecord,
        members_key: Option<&[u8]>,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        batch.insert(&chat_key(chat)[..], record.encode_to_vec());
        if let Some(key) = members_key {
            batch.insert(key, &chat.as_bytes()[..]);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// The highest seq stored in the chat (0 for none).
    pub fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        let prefix = message_prefix(chat);
        match self.db.scan_prefix(prefix).next_back() {
            Some(entry) => Ok(seq_of_key(&entry?.0)),
            None => Ok(0),
        }
    }

    /// Claims the idempotency key (chat, user, client_id) for a message
    /// about to be appended at `seq`, or returns the message already stored
    /// under it. A key left stale by a crash (see the module docs) is
    /// claimed anew. The caller serializes appends to the chat.
    pub fn claim(
        &self,
        chat: &Uuid,
        user_id: &str,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<Message>> {
        let key = dedupe_key(chat, user_id, client_id);
        let new = seq.to_be_bytes();
        let Err(taken) = self
            .db
            .compare_and_swap(&key, None::<&[u8]>, Some(&new[..]))?
        else {
            return Ok(None);
        };
        let stored = match taken.current {
            Some(old) => self
                .message(chat, seq_of_value(&old))?
                .filter(|m| m.user_id == user_id && m.client_id == client_id),
            None => None,
        };
        if stored.is_none() {
            self.db.insert(key, &new[..])?;
        }
        Ok(stored)
    }

    pub fn message(&self, chat: &Uuid, seq: u64) -> Result<Option<Message>> {
        let key = message_key(chat, seq);
        self.db.get(key)?.map(|v| decode(&key, &v)).transpose()
    }

    /// Writes a message; if it has an idempotency key, [`Store::claim`] it
    /// first. Not yet durable: see [`Store::flush`].
    pub fn append(&self, msg: &Message) -> Result<()> {
        self.db
            .insert(message_key(&msg.chat_id(), msg.seq), msg.encode_to_vec())?;
        Ok(())
    }

    /// Messages with `first <= seq <= last`, oldest first, at most `limit`.
    /// Seqs are gap-free, so this is point lookups of known keys: in sled
    /// 0.34 that is cheaper than its range iterator, which copies a tree
    /// node per step (measured with chat-bench scenario 4).
    pub fn range(&self, chat: &Uuid, first: u64, last: u64, limit: usize) -> Result<Vec<Message>> {
        let mut page = Vec::new();
        let mut seq = first;
        while seq <= last && page.len() < limit {
            let key = message_key(chat, seq);
            match self.db.get(key)? {
                Some(v) => page.push(decode(&key, &v)?),
                // Past the end (or a hole that a crash left): stop here.
                None => break,
            }
            seq += 1;
        }
        Ok(page)
    }
}

/// The canonical key of a member set: sorted, deduplicated ids, each
/// length-prefixed so that no two sets share a key (unlike joining with "-").
/// `members` must already be sorted and deduplicated, each id under 64 KiB.
pub fn members_key(members: &[String]) -> Vec<u8> {
    let mut key = vec![MEMBERS];
    for m in members {
        key.extend_from_slice(&(m.len() as u16).to_be_bytes());
        key.extend_from_slice(m.as_bytes());
    }
    key
}

fn chat_key(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = CHAT;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

fn message_prefix(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = MESSAGE;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

fn message_key(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = [0; 25];
    key[..17].copy_from_slice(&message_prefix(chat));
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn dedupe_key(chat: &Uuid, user_id: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(19 + user_id.len() + client_id.len());
    key.push(DEDUPE);
    key.extend_from_slice(chat.as_bytes());
    key.extend_from_slice(&(user_id.len() as u16).to_be_bytes());
    key.extend_from_slice(user_id.as_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

/// The seq in the last 8 bytes of a message key.
fn seq_of_key(key: &[u8]) -> u64 {
    seq_of_value(&key[key.len().saturating_sub(8)..])
}

/// A big-endian u64; anything that is not 8 bytes reads as 0 (never written).
fn seq_of_value(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn decode<T: prost::Message + Default>(key: &[u8], value: &[u8]) -> Result<T> {
    T::decode(value).map_err(|source| StoreError::Corrupt {
        key: key.to_vec(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(chat: &Uuid, seq: u64, client_id: &str) -> Message {
        Message {
            id: Uuid::new_v4().to_string(),
            client_id: client_id.into(),
            chat: chat.as_bytes().to_vec(),
            user_id: "ann".into(),
            sent_at: 1,
            subject: String::new(),
            text: format!("m{seq}"),
            seq,
        }
    }

    #[test]
    fn member_keys_are_unambiguous() {
        let a = members_key(&["a-b".into(), "c".into()]);
        let b = members_key(&["a".into(), "b-c".into()]);
        assert_ne!(a, b);
    }

    #[test]
    fn one_chats_messages_are_a_contiguous_range_in_seq_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // Past 255 and 256: big-endian keys keep numeric order, so the
        // last key under the chat's prefix is its last seq.
        for seq in 1..=300 {
            store.append(&msg(&a, seq, "")).unwrap();
            if seq <= 10 {
                store.append(&msg(&b, seq, "")).unwrap();
            }
        }
        let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.range(&a, 254, 258, 100).unwrap()),
            [254, 255, 256, 257, 258]
        );
        assert_eq!(
            seqs(store.range(&a, 299, u64::MAX, 100).unwrap()),
            [299, 300]
        );
        assert_eq!(seqs(store.range(&a, 1, 300, 3).unwrap()), [1, 2, 3]);
        assert_eq!(
            seqs(store.range(&b, 9, 20, 100).unwrap()),
            [9, 10],
            "no other chat's messages"
        );
        assert_eq!(store.last_seq(&a).unwrap(), 300);
        assert_eq!(store.last_seq(&b).unwrap(), 10);
        assert_eq!(store.last_seq(&Uuid::new_v4()).unwrap(), 0);
    }

    /// Claims and appends as `Chats::send` does.
    fn send(store: &Store, chat: &Uuid, seq: u64, client_id: &str) -> Option<u64> {
        if let Some(stored) = store.claim(chat, "ann", client_id, seq).unwrap() {
            return Some(stored.seq);
        }
        store.append(&msg(chat, seq, client_id)).unwrap();
        None
    }

    #[test]
    fn a_claimed_key_returns_its_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let chat = Uuid::new_v4();
        assert_eq!(send(&store, &chat, 1, "c1"), None);
        assert_eq!(send(&store, &chat, 2, "c1"), Some(1));
        // (user, client_id) is unambiguous: "an" + "nc1" is another key.
        assert!(store.claim(&chat, "an", "nc1", 2).unwrap().is_none());
    }

    #[test]
    fn a_dedupe_key_left_without_its_message_is_claimed_anew() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let chat = Uuid::new_v4();
        // As a crash between the two writes leaves it: the key, no message.
        assert!(store.claim(&chat, "ann", "c1", 1).unwrap().is_none());
        // After restart seq 1 goes to another message...
        assert_eq!(send(&store, &chat, 1, "other"), None);
        // ...and the retry of c1 is stored anew, once.
        assert_eq!(send(&store, &chat, 2, "c1"), None);
        assert_eq!(send(&store, &chat, 3, "c1"), Some(2));
    }

    #[test]
    fn a_corrupt_value_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let chat = Uuid::new_v4();
        store
            .db
            .insert(message_key(&chat, 1), &[0xff, 0xff][..])
            .unwrap();
        assert!(matches!(
            store.message(&chat, 1),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Fuzz: whatever bytes end up under the store's keys (a corrupt or
    /// foreign data dir), reading them is an error or a value, never a panic.
    /// `PROPTEST_CASES` sets how many cases (default 256).
    #[test]
    fn decoding_any_stored_bytes_never_panics() {
        use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let mut runner = TestRunner::new(ProptestConfig::default());
        let inputs = (vec(any::<u8>(), 0..300), vec(any::<u8>(), 0..12));
        runner
            .run(&inputs, |(value, tail)| {
                let chat = Uuid::new_v4();
                let db = &store.db;
                db.insert(message_key(&chat, 1), value.clone()).unwrap();
                db.insert(chat_key(&chat), value.clone()).unwrap();
                // Keys of odd lengths under the chat's prefixes.
                let mut odd = message_prefix(&chat).to_vec();
                odd.extend_from_slice(&tail);
                db.insert(odd, value.clone()).unwrap();
                let mut dedupe = dedupe_key(&chat, "ann", "c");
                db.insert(&dedupe, value.clone()).unwrap();
                dedupe.truncate(dedupe.len().min(tail.len()));
                let _ = store.chat(&chat);
                let _ = store.range(&chat, 0, u64::MAX, 10);
                let _ = store.last_seq(&chat);
                let _ = store.claim(&chat, "ann", "c", 2);
                // What decodes re-encodes to the same value.
                if let Ok(Some(m)) = store.message(&chat, 1) {
                    prop_assert_eq!(Message::decode(&*m.encode_to_vec()).unwrap(), m);
                }
                Ok(())
            })
            .unwrap();
    }
}

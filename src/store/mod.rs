//! The storage boundary: one [`Store`] with a backend behind it, so that the
//! chat logic never knows which one it has. Plain Rust; knows nothing of gRPC.
//!
//! - [`sled`](mod@sled): the embedded default, one process per directory.
//! - [`postgres`]: any number of replicas sharing one PostgreSQL database.
//! - [`bus`]: wake-ups between replicas ("chat X has messages up to seq N").
//!
//! Each backend owns its schema, member-set uniqueness, idempotency protocol
//! and seq allocation. What every backend guarantees:
//! - a chat's seqs are 1, 2, 3, … with no gap, each message stored once per
//!   (chat, user, client_id);
//! - [`Store::commit`] returns only once what it reports stored is durable;
//! - reads return only durable messages, and a read that returns seq N
//!   could also return every seq below N (no gap that later heals).
//!
//! Writes go in two steps so that each backend can batch the way it is fast:
//! [`Store::stage`] in the sender's task (sled writes the message there; the
//! database backend defers everything), then [`Store::commit`] for a whole
//! group (one sled flush; one PostgreSQL transaction).

pub mod bus;
pub mod pgconn;
pub mod postgres;
pub mod sled;

use std::sync::{Mutex, MutexGuard};

use uuid::Uuid;

use crate::model::{
    Append, ChatRecord, InboxEntry, Marked, Message, Outcome, ReadMark, Refusal, View,
};

/// What can go wrong in a store. Every variant is worth a retry by the
/// client (the chat logic answers UNAVAILABLE), except that a corrupt value
/// stays corrupt.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] ::sled::Error),
    #[error("corrupt value under key {key:?}: {source}")]
    Corrupt {
        key: Vec<u8>,
        source: prost::DecodeError,
    },
    #[error("database: {0}")]
    Postgres(String),
    /// A write failed (a full disk, say) and the store has not taken one
    /// since: refused at once rather than tried again.
    #[error("the store refuses writes since one failed ({0}); retry later")]
    Failing(&'static str),
    /// The store is configured wrong (a bad URL, an unreadable certificate):
    /// only at startup.
    #[error("{0}")]
    Config(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// One History page, oldest first.
#[derive(Debug)]
pub struct Page {
    pub messages: Vec<Message>,
    /// More messages exist in the paging direction.
    pub has_more: bool,
}

/// A message between [`Store::stage`] and [`Store::commit`].
#[derive(Debug)]
pub enum Staged {
    /// Written under its seq, not yet durable (sled).
    Written(Message),
    /// Its idempotency key was already stored: that message, and whether
    /// the content asked for is the same (sled).
    Existing { stored: Message, same: bool },
    /// Nothing done yet: the commit appends it (PostgreSQL).
    Deferred(Append),
    /// An edit or delete event written under its seq with its message
    /// rewritten, not yet durable (sled).
    Event {
        event: Message,
        target: Box<Message>,
        /// The seqs of the entries it rewrites (its message, a delete's
        /// edits), which become visible once it is durable.
        rewritten: Vec<u64>,
    },
    /// An edit or delete refused; nothing written (sled).
    Refused(Refusal),
}

/// What [`Store::commit`] made of a group: the outcomes of the messages it
/// made durable, in order (a prefix of the group), and, if it stopped before
/// the end, why: the rest may be retried.
pub struct Committed {
    pub outcomes: Vec<Outcome>,
    pub failed: Option<StoreError>,
}

/// The store, whichever backend. Cloning is cheap: every backend is a
/// handle around shared state.
#[derive(Clone)]
pub enum Store {
    Sled(sled::SledStore),
    Postgres(postgres::PgStore),
}

impl Store {
    /// The chat, if it exists.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        match self {
            Store::Sled(s) => s.chat(chat),
            Store::Postgres(p) => p.chat(chat).await,
        }
    }

    /// The chat of `record.members`: `id` is used if the set has no chat yet
    /// (always, for an open chat with no members). Durable once a
    /// [`Store::commit`] that starts after it returns.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn create_chat(&self, id: Uuid, record: &ChatRecord) -> Result<Uuid> {
        match self {
            Store::Sled(s) => s.create_chat(id, record).inspect_err(|_| s.write_failed()),
            Store::Postgres(p) => p.create_chat(id, record).await,
        }
    }

    /// First step of an append, in the sender's task (see the module docs).
    ///
    /// # Errors
    /// When the store cannot be written.
    pub fn stage(&self, append: Append) -> Result<Staged> {
        match self {
            Store::Sled(s) => s.stage(append).inspect_err(|_| s.write_failed()),
            Store::Postgres(_) => Ok(Staged::Deferred(append)),
        }
    }

    /// Makes a group of staged messages durable, and everything staged or
    /// created before it started; one outcome per durable message, in
    /// order. What it could not make durable (see [`Committed::failed`])
    /// may be retried, with its client_id so that nothing is stored twice.
    pub async fn commit(&self, batch: Vec<Staged>) -> Committed {
        match self {
            Store::Sled(s) => match s.commit(batch).await {
                Ok(outcomes) => Committed {
                    outcomes,
                    failed: None,
                },
                Err(e) => {
                    s.write_failed();
                    Committed {
                        outcomes: Vec::new(),
                        failed: Some(e),
                    }
                }
            },
            Store::Postgres(p) => p.commit(batch).await,
        }
    }

    /// The chat's highest durable seq (0 for none or an unknown chat).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        match self {
            Store::Sled(s) => s.last_seq(chat),
            Store::Postgres(p) => p.last_seq(chat).await,
        }
    }

    /// The highest durable seq of each of `chats` that exists.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn last_seqs(&self, chats: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        match self {
            Store::Sled(s) => chats.iter().map(|c| Ok((*c, s.last_seq(c)?))).collect(),
            Store::Postgres(p) => p.last_seqs(chats).await,
        }
    }

    /// Durable messages with `first <= seq <= last`, oldest first, at most
    /// `limit` and (but for the first) `max_bytes` of [`Message::weight`].
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>> {
        match self {
            Store::Sled(s) => s.read(chat, first, last, limit, max_bytes),
            Store::Postgres(p) => p.read(chat, first, last, limit, max_bytes).await,
        }
    }

    /// One History page of at most `limit` entries that `view` shows and
    /// `max_bytes` (as [`Store::read`]): with `after`, the first ones after
    /// it; else the newest ones, before `before` if set. Oldest first
    /// either way.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn page(
        &self,
        chat: &Uuid,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
        view: View,
    ) -> Result<Page> {
        match self {
            Store::Sled(s) => s.page(chat, before, after, limit, max_bytes, view),
            Store::Postgres(p) => p.page(chat, before, after, limit, max_bytes, view).await,
        }
    }

    /// Up to `limit` of `user`'s chats, most recently active first, after
    /// the cursor (active µs, chat) of the last one of the previous page.
    /// Costs the page, whatever the inbox's size: both stores keep each
    /// user's chats in this order, moving a chat's entries (one per
    /// member) once per commit group that makes it active.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        match self {
            Store::Sled(s) => s.inbox(user, after, limit),
            Store::Postgres(p) => p.inbox(user, after, limit).await,
        }
    }

    /// Moves `user`'s read position in `chat` forward to `seq`, capped to
    /// the chat's last durable seq (see [`Marked`]). Durable when it
    /// returns on PostgreSQL, with the next commit on sled.
    ///
    /// # Errors
    /// When the store cannot be written.
    pub async fn mark_read(&self, user: &str, chat: &Uuid, seq: u64) -> Result<Marked> {
        match self {
            Store::Sled(s) => s
                .mark_read(user, chat, seq)
                .inspect_err(|_| s.write_failed()),
            Store::Postgres(p) => p.mark_read(user, chat, seq).await,
        }
    }

    /// The read positions of `users` in `chat` (of its posters if none
    /// are given), at most `limit`.
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, ReadMark)>> {
        match self {
            Store::Sled(s) => s.read_marks(chat, users, limit),
            Store::Postgres(p) => p.read_marks(chat, users, limit).await,
        }
    }

    /// Up to `limit` chats with ids after `after`, in id order (export).
    ///
    /// # Errors
    /// When the store cannot be read.
    pub async fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, ChatRecord)>> {
        match self {
            Store::Sled(s) => s.chats_after(after, limit),
            Store::Postgres(p) => p.chats_after(after, limit).await,
        }
    }

    /// Stores a chat under its own id unless it exists (import).
    ///
    /// # Errors
    /// When its member set already belongs to another chat, or the store fails.
    pub async fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        match self {
            Store::Sled(s) => s.import_chat(id, record),
            Store::Postgres(p) => p.import_chat(id, record).await,
        }
    }

    /// Stores messages of one chat under their own seqs, each unless that
    /// seq is taken (import); the chat's seq continues after the highest.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn import_messages(&self, messages: Vec<Message>) -> Result<()> {
        match self {
            Store::Sled(s) => s.import_messages(messages),
            Store::Postgres(p) => p.import_messages(messages).await,
        }
    }

    /// Tells the other replicas of a live signal (nothing to do on sled:
    /// one process).
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn notify(&self, signal: &Message) -> Result<()> {
        match self {
            Store::Sled(_) => Ok(()),
            Store::Postgres(p) => p.notify(signal).await,
        }
    }

    /// Tells the other replicas who is present on this one.
    ///
    /// # Errors
    /// When the database cannot be reached.
    pub async fn heartbeat(&self, present: &[(Uuid, String)]) -> Result<()> {
        match self {
            Store::Sled(_) => Ok(()),
            Store::Postgres(p) => p.heartbeat(present).await,
        }
    }

    /// This replica's id on the bus (0 on sled).
    pub fn replica(&self) -> u64 {
        match self {
            Store::Sled(_) => 0,
            Store::Postgres(p) => p.replica(),
        }
    }

    /// Makes everything written so far durable (at shutdown).
    ///
    /// # Errors
    /// When the last flush fails.
    pub async fn flush(&self) -> Result<()> {
        match self {
            Store::Sled(s) => s.flush().await,
            // Every transaction was durable when it committed.
            Store::Postgres(_) => Ok(()),
        }
    }

    /// Whether the store can serve right now (readiness).
    /// Why the store cannot recover without a restart, if so (see
    /// [`sled::SledStore::broken`]); PostgreSQL reconnects by itself.
    pub fn broken(&self) -> Option<String> {
        match self {
            Store::Sled(s) => s.broken(),
            Store::Postgres(_) => None,
        }
    }

    pub async fn ping(&self) -> bool {
        match self {
            Store::Sled(s) => s.ping().await,
            Store::Postgres(p) => p.ping().await,
        }
    }
}

/// Locks a std mutex. A poisoned lock means a panic while it was held; the
/// data it guards is still consistent (every critical section writes the
/// store first and memory last), so carry on rather than fail every request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

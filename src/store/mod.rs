//! The storage boundary: the [`Backend`] contract, and one [`Store`] with a
//! backend behind it, so that the chat logic never knows which one it has.
//! Plain Rust; knows nothing of gRPC.
//!
//! - [`sled`](mod@sled): the embedded default, one process per directory.
//! - [`postgres`]: any number of replicas sharing one PostgreSQL database.
//! - [`bus`]: wake-ups between replicas ("chat X has messages up to seq N").
//!
//! Each backend owns its schema, member-set uniqueness, idempotency protocol
//! and seq allocation. What every backend guarantees:
//! - a chat's seqs are 1, 2, 3, … with no gap, each message stored once per
//!   (chat, user, client_id);
//! - [`Backend::commit`] returns only once what it reports stored is durable;
//! - reads return only durable messages, and a read that returns seq N
//!   could also return every seq below N (no gap that later heals).
//!
//! Writes go in two steps so that each backend can batch the way it is fast:
//! [`Backend::stage`] in the sender's task (sled writes the message there; the
//! database backend defers everything), then [`Backend::commit`] for a whole
//! group (one sled flush; one PostgreSQL transaction).

pub mod bus;
pub mod pgconn;
pub mod postgres;
pub mod sled;

use std::{
    future::Future,
    sync::{Mutex, MutexGuard},
};

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

/// A message between [`Backend::stage`] and [`Backend::commit`].
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

/// What [`Backend::commit`] made of a group: the outcomes of the messages it
/// made durable, in order (a prefix of the group), and, if it stopped before
/// the end, why: the rest may be retried.
pub struct Committed {
    pub outcomes: Vec<Outcome>,
    pub failed: Option<StoreError>,
}

/// The store contract: what every backend does and guarantees (see the
/// module docs), async where either backend needs it. Each backend
/// implements it, [`Store`] dispatches to the one configured, and
/// `tests/store_contract.rs` runs one suite against both.
///
/// [`Backend::commit`] is called by one task at a time (the chat logic's
/// committer); everything else may be called from any number of tasks.
pub trait Backend: Clone + Send + Sync + 'static {
    /// The chat, if it exists.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn chat(&self, chat: &Uuid) -> impl Future<Output = Result<Option<ChatRecord>>> + Send;

    /// The chat of `record.members`: `id` is used if the set has no chat yet
    /// (always, for an open chat with no members). Durable once a
    /// [`Backend::commit`] that starts after it returns.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn create_chat(
        &self,
        id: Uuid,
        record: &ChatRecord,
    ) -> impl Future<Output = Result<Uuid>> + Send;

    /// First step of an append, in the sender's task (see the module docs).
    ///
    /// # Errors
    /// When the store cannot be written.
    fn stage(&self, append: Append) -> Result<Staged>;

    /// Makes a group of staged messages durable, and everything staged or
    /// created before it started; one outcome per durable message, in
    /// order. What it could not make durable (see [`Committed::failed`])
    /// may be retried, with its client_id so that nothing is stored twice.
    fn commit(&self, batch: Vec<Staged>) -> impl Future<Output = Committed> + Send;

    /// The chat's highest durable seq (0 for none or an unknown chat).
    ///
    /// # Errors
    /// When the store cannot be read.
    fn last_seq(&self, chat: &Uuid) -> impl Future<Output = Result<u64>> + Send;

    /// The highest durable seq of each of `chats` that exists.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn last_seqs(&self, chats: &[Uuid]) -> impl Future<Output = Result<Vec<(Uuid, u64)>>> + Send;

    /// Durable messages with `first <= seq <= last`, oldest first, at most
    /// `limit` and (but for the first) `max_bytes` of [`Message::weight`].
    ///
    /// # Errors
    /// When the store cannot be read.
    fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> impl Future<Output = Result<Vec<Message>>> + Send;

    /// One History page of at most `limit` entries that `view` shows and
    /// `max_bytes` (as [`Backend::read`]): with `after`, the first ones after
    /// it; else the newest ones, before `before` if set. Oldest first
    /// either way.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn page(
        &self,
        chat: &Uuid,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
        view: View,
    ) -> impl Future<Output = Result<Page>> + Send;

    /// Up to `limit` of `user`'s chats, most recently active first, after
    /// the cursor (active µs, chat) of the last one of the previous page.
    /// Costs the page, whatever the inbox's size: both stores keep each
    /// user's chats in this order, moving a chat's entries (one per
    /// member) once per commit group that makes it active.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<InboxEntry>>> + Send;

    /// Moves `user`'s read position in `chat` forward to `seq`, capped to
    /// the chat's last durable seq (see [`Marked`]). Durable when it
    /// returns on PostgreSQL, with the next commit on sled.
    ///
    /// # Errors
    /// When the store cannot be written.
    fn mark_read(
        &self,
        user: &str,
        chat: &Uuid,
        seq: u64,
    ) -> impl Future<Output = Result<Marked>> + Send;

    /// The read positions of `users` in `chat` (of its posters if none
    /// are given), at most `limit`.
    ///
    /// # Errors
    /// When the store cannot be read.
    fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(String, ReadMark)>>> + Send;

    /// Up to `limit` chats with ids after `after`, in id order (export).
    ///
    /// # Errors
    /// When the store cannot be read.
    fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(Uuid, ChatRecord)>>> + Send;

    /// Stores a chat under its own id unless it exists (import).
    ///
    /// # Errors
    /// When its member set already belongs to another chat, or the store fails.
    fn import_chat(&self, id: Uuid, record: &ChatRecord)
        -> impl Future<Output = Result<()>> + Send;

    /// Stores messages of one chat under their own seqs, each unless that
    /// seq is taken (import); the chat's seq continues after the highest.
    ///
    /// # Errors
    /// When the store fails.
    fn import_messages(&self, messages: Vec<Message>) -> impl Future<Output = Result<()>> + Send;

    /// Tells the other replicas of a live signal (nothing to do with one
    /// process).
    ///
    /// # Errors
    /// When the database cannot be reached.
    fn notify(&self, signal: &Message) -> impl Future<Output = Result<()>> + Send;

    /// Tells the other replicas who is present on this one.
    ///
    /// # Errors
    /// When the database cannot be reached.
    fn heartbeat(&self, present: &[(Uuid, String)]) -> impl Future<Output = Result<()>> + Send;

    /// This replica's id on the bus (0 with one process).
    fn replica(&self) -> u64;

    /// Makes everything written so far durable (at shutdown).
    ///
    /// # Errors
    /// When the last flush fails.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send;

    /// Why the store cannot recover without a restart, if so (see
    /// [`sled::SledStore::broken`]); PostgreSQL reconnects by itself.
    fn broken(&self) -> Option<String>;

    /// Whether the store can serve right now (readiness).
    fn ping(&self) -> impl Future<Output = bool> + Send;
}

/// The store, whichever backend: an enum over the [`Backend`]s, so that
/// dispatch is a match, not a virtual call. Cloning is cheap: every
/// backend is a handle around shared state.
#[derive(Clone)]
pub enum Store {
    Sled(sled::SledStore),
    Postgres(postgres::PgStore),
}

/// `$call` on whichever backend `$store` holds, as `$b`.
macro_rules! dispatch {
    ($store:expr, $b:ident => $call:expr) => {
        match $store {
            Store::Sled($b) => $call,
            Store::Postgres($b) => $call,
        }
    };
}

impl Backend for Store {
    async fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        dispatch!(self, b => Backend::chat(b, chat).await)
    }

    async fn create_chat(&self, id: Uuid, record: &ChatRecord) -> Result<Uuid> {
        dispatch!(self, b => Backend::create_chat(b, id, record).await)
    }

    fn stage(&self, append: Append) -> Result<Staged> {
        dispatch!(self, b => Backend::stage(b, append))
    }

    async fn commit(&self, batch: Vec<Staged>) -> Committed {
        dispatch!(self, b => Backend::commit(b, batch).await)
    }

    async fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        dispatch!(self, b => Backend::last_seq(b, chat).await)
    }

    async fn last_seqs(&self, chats: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        dispatch!(self, b => Backend::last_seqs(b, chats).await)
    }

    async fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>> {
        dispatch!(self, b => Backend::read(b, chat, first, last, limit, max_bytes).await)
    }

    async fn page(
        &self,
        chat: &Uuid,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
        view: View,
    ) -> Result<Page> {
        dispatch!(self, b => Backend::page(b, chat, before, after, limit, max_bytes, view).await)
    }

    async fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        dispatch!(self, b => Backend::inbox(b, user, after, limit).await)
    }

    async fn mark_read(&self, user: &str, chat: &Uuid, seq: u64) -> Result<Marked> {
        dispatch!(self, b => Backend::mark_read(b, user, chat, seq).await)
    }

    async fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, ReadMark)>> {
        dispatch!(self, b => Backend::read_marks(b, chat, users, limit).await)
    }

    async fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, ChatRecord)>> {
        dispatch!(self, b => Backend::chats_after(b, after, limit).await)
    }

    async fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        dispatch!(self, b => Backend::import_chat(b, id, record).await)
    }

    async fn import_messages(&self, messages: Vec<Message>) -> Result<()> {
        dispatch!(self, b => Backend::import_messages(b, messages).await)
    }

    async fn notify(&self, signal: &Message) -> Result<()> {
        dispatch!(self, b => Backend::notify(b, signal).await)
    }

    async fn heartbeat(&self, present: &[(Uuid, String)]) -> Result<()> {
        dispatch!(self, b => Backend::heartbeat(b, present).await)
    }

    fn replica(&self) -> u64 {
        dispatch!(self, b => Backend::replica(b))
    }

    async fn flush(&self) -> Result<()> {
        dispatch!(self, b => Backend::flush(b).await)
    }

    fn broken(&self) -> Option<String> {
        dispatch!(self, b => Backend::broken(b))
    }

    async fn ping(&self) -> bool {
        dispatch!(self, b => Backend::ping(b).await)
    }
}

/// Locks a std mutex. A poisoned lock means a panic while it was held; the
/// data it guards is still consistent (every critical section writes the
/// store first and memory last), so carry on rather than fail every request.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

//! The PostgreSQL backend: any number of identical replicas share one
//! database, which is the only source of truth. No replica allocates a seq
//! or believes a message durable on its own: the database does both.
//!
//! # Schema
//!
//! Tables `chats` (one counter row per chat), `member_sets` (New's
//! idempotency), `messages` (the log: messages and their events, keyed by
//! (chat_id, seq)) and `chat_members` (the inbox and read positions),
//! written once, as SQL with the reason for each column and index, in
//! [`MIGRATIONS`].
//!
//! Rows are written per group and per chat, never per recipient but for
//! the inbox order: a group moves each chat's counters once, each
//! sender's read position once, and each member's copy of the chat's
//! `active_us` once (so that a page of a user's inbox is read in order
//! from an index, not sorted out of all their chats);
//! an unread count is `chats.n - chat_members.read_n`, less the deleted
//! messages after `read_seq` (a range of `messages_deleted`, usually
//! empty: a delete writes no row per recipient either). Edits and deletes
//! run in a transaction of their own ([`PgStore::commit`] keeps the
//! group's order), holding the chat's counter row like a group.
//!
//! # One transaction per group of sends
//! [`PgStore::commit`] appends a whole group of messages, across chats, in
//! one transaction (group commit: one WAL flush for all of them):
//! 1. lock the counter rows of the group's chats, in chat-id order so that
//!    two replicas' groups never deadlock, and — pipelined behind it, so it
//!    runs after the locks are held and sees every send committed before —
//!    look up the group's idempotency keys;
//! 2. in memory: a found key answers with the stored message; every other
//!    message takes the next seq of its chat;
//! 3. insert the messages, move the counter rows, notify the other
//!    replicas ([`super::bus`]; one notification per group, not per
//!    message) and commit, pipelined: two round trips in all.
//!
//! The counter row stays locked from seq allocation to commit, so seqs
//! commit in order: whoever can read seq N can read every seq below it
//! (readers never see a gap that later heals), and a deduplicated or failed
//! send burns no number. The unique index makes a duplicate impossible even
//! if the lookup were wrong.

mod append;
mod events;
mod inbox;
mod read;
mod schema;
mod transfer;

use std::time::Duration;

use uuid::Uuid;

pub use schema::{SchemaStatus, MIGRATIONS};

use super::{
    bus,
    pgconn::{self, PgOptions, Target},
    Backend, Committed, Page, Result, Staged, StoreError,
};
use crate::model::{Append, ChatRecord, InboxEntry, Kind, Marked, Message, ReadMark, View};
use tokio_postgres::Row;

/// The columns of a message row, in the order [`message`] reads them.
pub(super) const MESSAGE_COLUMNS: &str =
    "chat_id, seq, id, user_id, client_id, sent_at, subject, text, \
     kind, target_seq, edited_at, deleted, n, original";

/// The preview columns of an inbox row: [`MESSAGE_COLUMNS`] of `p`.
pub(super) const PREVIEW_COLUMNS: &str =
    "p.chat_id, p.seq, p.id, p.user_id, p.client_id, p.sent_at, \
     p.subject, p.text, p.kind, p.target_seq, p.edited_at, p.deleted, p.n, p.original";

/// The columns a group inserts for a message (the rest keep their defaults).
pub(super) const INSERT_COLUMNS: &str =
    "chat_id, seq, id, user_id, client_id, sent_at, subject, text, \
     kind, target_seq, edited_at, deleted, n, original";

/// A query for the log entries `filter` selects in `order`, at most `limit`
/// of them and, but for the first, at most `max_bytes` of weight (the
/// running sum of `model::Message::weight`, computed here in SQL), so
/// that a page of large messages is cut in the database, not after it has
/// been sent over. The window runs in index order under the LIMIT: no more
/// than `limit` rows are read. Each row also carries how many the LIMIT
/// let through (`taken`), so a caller knows whether the byte cut dropped any.
pub(super) fn within_bytes(filter: &str, order: &str, limit: &str, max_bytes: &str) -> String {
    format!(
        "SELECT {MESSAGE_COLUMNS}, taken FROM (
           SELECT {MESSAGE_COLUMNS}, w, sum(w) OVER (ORDER BY {order}) AS upto,
                  count(*) OVER () AS taken FROM (
             SELECT {MESSAGE_COLUMNS}, octet_length(subject) + octet_length(text)
                    + octet_length(client_id) + octet_length(user_id) + 64 AS w
             FROM messages WHERE {filter} ORDER BY {order} LIMIT {limit}
           ) limited
         ) measured
         WHERE upto = w OR upto <= {max_bytes} ORDER BY {order}"
    )
}

/// The condition that selects what `view` shows, as literals so that the
/// planner can use the partial index of the default view.
pub(super) fn shown(view: View) -> &'static str {
    match (view.events, view.deleted) {
        (false, false) => " AND kind = 0 AND NOT deleted",
        (false, true) => " AND kind = 0",
        (true, false) => " AND NOT deleted",
        (true, true) => "",
    }
}

/// Handle to the database. Cloning is cheap (the pool is reference-counted).
#[derive(Clone)]
pub struct PgStore {
    pool: deadpool_postgres::Pool,
    batch_max: usize,
    /// This replica's id on the bus (random), so that it skips its own signals.
    replica: u64,
}

impl PgStore {
    /// Connects (retrying with backoff for `connect_timeout` while the
    /// database is unreachable, and saying so in the log), then applies any
    /// pending migration.
    ///
    /// # Errors
    /// A bad URL at once; an unreachable database after `connect_timeout`;
    /// a failed migration.
    pub async fn connect(opts: &PgOptions) -> Result<PgStore> {
        let target = Target::parse(&opts.url, opts.password.as_deref(), opts.statement_timeout)?;
        let pool = pgconn::pool(&target, opts.pool_size, opts.statement_timeout)?;
        let store = PgStore {
            pool,
            batch_max: opts.batch_max.max(1),
            replica: rand_replica(),
        };
        let deadline = tokio::time::Instant::now() + opts.connect_timeout;
        let mut backoff = Duration::from_millis(100);
        loop {
            match store.migrate(true).await {
                Ok(status) => {
                    tracing::info!(schema_version = status.version, "database ready");
                    return Ok(store);
                }
                Err(e) if is_unreachable(&e) && tokio::time::Instant::now() < deadline => {
                    tracing::warn!(
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        "database unreachable; retrying"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(e) if is_unreachable(&e) => {
                    return Err(StoreError::Postgres(format!(
                        "database still unreachable after {} s (--pg-connect-timeout): {e}",
                        opts.connect_timeout.as_secs()
                    )))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Connects once, without migrating (for `chat migrate --check`).
    ///
    /// # Errors
    /// A bad URL.
    pub fn lazy(opts: &PgOptions) -> Result<PgStore> {
        let target = Target::parse(&opts.url, opts.password.as_deref(), opts.statement_timeout)?;
        Ok(PgStore {
            pool: pgconn::pool(&target, opts.pool_size, opts.statement_timeout)?,
            batch_max: opts.batch_max.max(1),
            replica: rand_replica(),
        })
    }

    /// This replica's id on the bus.
    pub fn replica(&self) -> u64 {
        self.replica
    }

    /// Tells the other replicas of a live signal (one NOTIFY, in no
    /// message transaction).
    pub async fn notify(&self, signal: &Message) -> Result<()> {
        let client = self.pool.get().await?;
        let stmt = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
        client
            .query(
                &stmt,
                &[&bus::SIGNALS, &bus::encode_signal(self.replica, signal)],
            )
            .await?;
        Ok(())
    }

    /// Tells the other replicas who is present on this one (chunked
    /// notifications, in no message transaction).
    pub async fn heartbeat(&self, present: &[(Uuid, String)]) -> Result<()> {
        let payloads = bus::encode_heartbeat(self.replica, present);
        if payloads.is_empty() {
            return Ok(());
        }
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
            .await?;
        client.query(&stmt, &[&bus::PRESENCE, &payloads]).await?;
        Ok(())
    }

    /// Whether a connection answers within two seconds.
    pub async fn ping(&self) -> bool {
        let check = async {
            let client = self.pool.get().await?;
            client.simple_query("SELECT 1").await?;
            Ok::<_, StoreError>(())
        };
        matches!(
            tokio::time::timeout(Duration::from_secs(2), check).await,
            Ok(Ok(()))
        )
    }
}

/// The contract, on PostgreSQL: the database does the work, so staging
/// defers everything to the commit; every transaction is durable when it
/// commits, so there is nothing to flush.
impl Backend for PgStore {
    async fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        PgStore::chat(self, chat).await
    }

    async fn create_chat(&self, id: Uuid, record: &ChatRecord) -> Result<Uuid> {
        PgStore::create_chat(self, id, record).await
    }

    fn stage(&self, append: Append) -> Result<Staged> {
        Ok(Staged::Deferred(append))
    }

    async fn commit(&self, batch: Vec<Staged>) -> Committed {
        PgStore::commit(self, batch).await
    }

    async fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        PgStore::last_seq(self, chat).await
    }

    async fn last_seqs(&self, chats: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        PgStore::last_seqs(self, chats).await
    }

    async fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>> {
        PgStore::read(self, chat, first, last, limit, max_bytes).await
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
        PgStore::page(self, chat, before, after, limit, max_bytes, view).await
    }

    async fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        PgStore::inbox(self, user, after, limit).await
    }

    async fn mark_read(&self, user: &str, chat: &Uuid, seq: u64) -> Result<Marked> {
        PgStore::mark_read(self, user, chat, seq).await
    }

    async fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, ReadMark)>> {
        PgStore::read_marks(self, chat, users, limit).await
    }

    async fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, ChatRecord)>> {
        PgStore::chats_after(self, after, limit).await
    }

    async fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        PgStore::import_chat(self, id, record).await
    }

    async fn import_messages(&self, messages: Vec<Message>) -> Result<()> {
        PgStore::import_messages(self, messages).await
    }

    async fn notify(&self, signal: &Message) -> Result<()> {
        PgStore::notify(self, signal).await
    }

    async fn heartbeat(&self, present: &[(Uuid, String)]) -> Result<()> {
        PgStore::heartbeat(self, present).await
    }

    fn replica(&self) -> u64 {
        PgStore::replica(self)
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Reconnects by itself: never broken for good.
    fn broken(&self) -> Option<String> {
        None
    }

    async fn ping(&self) -> bool {
        PgStore::ping(self).await
    }
}

/// A random replica id.
fn rand_replica() -> u64 {
    let id = Uuid::new_v4();
    u64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap_or_default())
}

/// A seq as a bigint (seqs never reach 2^63; larger cursors mean "the end").
pub(super) fn db_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A limit as a BIGINT: "no limit" (`usize::MAX`) stays the largest one
/// rather than wrapping to a negative LIMIT that PostgreSQL refuses.
pub(super) fn db_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row of [`MESSAGE_COLUMNS`].
pub(super) fn message(row: &Row) -> Message {
    message_at(row, 0)
}

/// The [`MESSAGE_COLUMNS`] of a row, from column `at` on.
pub(super) fn message_at(row: &Row, at: usize) -> Message {
    let sent_at: i64 = row.get(at + 5);
    Message {
        chat: row.get(at),
        seq: row.get::<_, i64>(at + 1) as u64,
        id: row.get(at + 2),
        user_id: row.get(at + 3),
        client_id: row.get(at + 4),
        sent_at,
        subject: row.get(at + 6),
        text: row.get(at + 7),
        kind: Kind::stored(row.get::<_, i16>(at + 8).into()),
        target: row.get::<_, i64>(at + 9) as u64,
        edited_at: row.get(at + 10),
        deleted: row.get(at + 11),
        n: row.get::<_, i64>(at + 12) as u64,
        at_us: sent_at.saturating_mul(1_000_000),
        original: row.get::<_, Option<Vec<u8>>>(at + 13).unwrap_or_default(),
    }
}

/// Whether an error means "not reachable now" (worth retrying at startup)
/// rather than a refusal (bad password, missing database) that will not heal.
fn is_unreachable(e: &StoreError) -> bool {
    match e {
        StoreError::Postgres(msg) => {
            !msg.contains("password authentication failed")
                && !msg.contains("does not exist")
                && !msg.contains("no pg_hba.conf entry")
                && !msg.contains("invalid peer certificate")
                && !msg.contains("permission denied")
        }
        _ => false,
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => StoreError::Postgres(format!("{}: {}", db.code().code(), db.message())),
            None => {
                // The driver's message alone says "error performing TLS
                // handshake"; the cause (which certificate check) is below.
                let mut msg = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(cause) = source {
                    msg.push_str(&format!(": {cause}"));
                    source = cause.source();
                }
                StoreError::Postgres(msg)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => StoreError::Postgres(format!("no database connection: {e}")),
        }
    }
}

//! The PostgreSQL backend: any number of identical replicas share one
//! database, which is the only source of truth. No replica allocates a seq
//! or believes a message durable on its own: the database does both.
//!
//! # Schema (migration 1)
//!
//! ```sql
//! CREATE TABLE chats (
//!     chat_id    uuid PRIMARY KEY,
//!     members    text[] NOT NULL,          -- sorted; empty: an open chat
//!     created_at bigint NOT NULL,          -- unix seconds
//!     last_seq   bigint NOT NULL DEFAULT 0 -- the counter row: the chat's last committed seq
//! ) WITH (fillfactor = 50);  -- room on each page, so that counter updates stay HOT
//! CREATE TABLE member_sets (               -- New's idempotency
//!     members_digest bytea PRIMARY KEY,    -- sha256 of the canonical member-set key
//!     chat_id        uuid NOT NULL
//! );
//! CREATE TABLE messages (
//!     chat_id uuid NOT NULL, seq bigint NOT NULL,
//!     id text NOT NULL, user_id text NOT NULL, client_id text NOT NULL,
//!     sent_at bigint NOT NULL, subject text NOT NULL, text text NOT NULL,
//!     PRIMARY KEY (chat_id, seq)           -- History pages and catch-up: one index range
//! );
//! CREATE UNIQUE INDEX messages_dedupe ON messages (chat_id, user_id, client_id);
//! CREATE TABLE chat_schema (version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
//! ```
//!
//! Every key of per-chat data starts with `chat_id`, so `chats` and
//! `messages` can be distributed by it (Citus, or hash partitions) without a
//! redesign; `member_sets` is keyed by its digest and can be distributed by
//! that. A member-set key can be 32 KiB (256 ids of 128 bytes), past a btree
//! entry's limit, hence the digest.
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

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use futures_util::future::{try_join3, try_join4};
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

use super::{
    bus,
    pgconn::{self, PgOptions, Target},
    Committed, Page, Result, Staged, StoreError,
};
use crate::model::{member_set_key, Append, ChatRecord, Message, Outcome};

/// The schema's migrations, in order. Expand-then-contract: a migration only
/// adds (tables, nullable columns, indexes), so replicas of this version and
/// the previous one can share the schema during a rolling upgrade; what a
/// later version stops using is dropped a release after.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[(
    1,
    "chats, member sets, messages",
    "CREATE TABLE chats (
        chat_id uuid PRIMARY KEY,
        members text[] NOT NULL,
        created_at bigint NOT NULL,
        last_seq bigint NOT NULL DEFAULT 0
    ) WITH (fillfactor = 50);
    CREATE TABLE member_sets (
        members_digest bytea PRIMARY KEY,
        chat_id uuid NOT NULL
    );
    CREATE TABLE messages (
        chat_id uuid NOT NULL,
        seq bigint NOT NULL,
        id text NOT NULL,
        user_id text NOT NULL,
        client_id text NOT NULL,
        sent_at bigint NOT NULL,
        subject text NOT NULL,
        text text NOT NULL,
        PRIMARY KEY (chat_id, seq)
    );
    CREATE UNIQUE INDEX messages_dedupe ON messages (chat_id, user_id, client_id);",
)];

/// Held while migrating, so that replicas starting at once do not race.
const MIGRATION_LOCK: i64 = 0x6368_6174_5f6d_6967; // "chat_mig"

/// The columns of a message row, in the order [`message`] reads them.
const MESSAGE_COLUMNS: &str = "chat_id, seq, id, user_id, client_id, sent_at, subject, text";

/// A query for the messages `filter` selects in `order`, at most `limit`
/// of them and, but for the first, at most `max_bytes` of weight (the
/// running sum of `model::Message::weight`, computed here in SQL), so
/// that a page of large messages is cut in the database, not after it has
/// been sent over. The window runs in index order under the LIMIT: no more
/// than `limit` rows are read.
fn within_bytes(filter: &str, order: &str, limit: &str, max_bytes: &str) -> String {
    format!(
        "SELECT {MESSAGE_COLUMNS} FROM (
           SELECT {MESSAGE_COLUMNS}, w, sum(w) OVER (ORDER BY {order}) AS upto FROM (
             SELECT {MESSAGE_COLUMNS}, octet_length(subject) + octet_length(text)
                    + octet_length(client_id) + octet_length(user_id) + 64 AS w
             FROM messages WHERE {filter} ORDER BY {order} LIMIT {limit}
           ) limited
         ) measured
         WHERE upto = w OR upto <= {max_bytes} ORDER BY {order}"
    )
}

/// Handle to the database. Cloning is cheap (the pool is reference-counted).
#[derive(Clone)]
pub struct PgStore {
    pool: deadpool_postgres::Pool,
    batch_max: usize,
}

/// The schema's state, for `chat migrate`.
#[derive(Debug)]
pub struct SchemaStatus {
    /// Highest applied version (0: an empty database).
    pub version: i32,
    /// Migrations this binary knows and the database lacks.
    pub pending: Vec<(i32, &'static str)>,
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
        })
    }

    /// The schema version and pending migrations; with `apply`, applies them
    /// first, under an advisory lock so that concurrent starts take turns.
    ///
    /// # Errors
    /// When the database cannot be reached or a migration fails (then that
    /// migration is rolled back and the next start tries again).
    pub async fn migrate(&self, apply: bool) -> Result<SchemaStatus> {
        let mut client = self.pool.get().await?;
        if apply {
            // A migration may build an index on a big table: no statement
            // timeout for this session while it migrates.
            client.batch_execute("SET statement_timeout = 0").await?;
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
                .await?;
        }
        let result = async {
            let exists: bool = client
                .query_one("SELECT to_regclass('chat_schema') IS NOT NULL", &[])
                .await?
                .get(0);
            if !exists && apply {
                client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS chat_schema (
                            version int PRIMARY KEY,
                            name text NOT NULL,
                            applied_at timestamptz NOT NULL DEFAULT now())",
                    )
                    .await?;
            }
            let applied: Vec<i32> = if exists || apply {
                client
                    .query("SELECT version FROM chat_schema ORDER BY version", &[])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect()
            } else {
                Vec::new()
            };
            let mut version = applied.iter().copied().max().unwrap_or(0);
            let mut pending: Vec<(i32, &'static str)> = MIGRATIONS
                .iter()
                .filter(|(v, _, _)| !applied.contains(v))
                .map(|&(v, name, _)| (v, name))
                .collect();
            if apply {
                for &(v, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| !applied.contains(v)) {
                    let tx = client.transaction().await?;
                    tx.batch_execute(sql).await?;
                    tx.execute(
                        "INSERT INTO chat_schema (version, name) VALUES ($1, $2)",
                        &[&v, &name],
                    )
                    .await?;
                    tx.commit().await?;
                    tracing::info!(version = v, name, "applied migration");
                    version = version.max(v);
                }
                pending.clear();
            }
            Ok::<_, StoreError>(SchemaStatus { version, pending })
        }
        .await;
        if apply {
            // Also released if the connection drops.
            let _ = client
                .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
                .await;
            let _ = client.batch_execute("RESET statement_timeout").await;
        }
        result
    }

    pub async fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT members, created_at FROM chats WHERE chat_id = $1")
            .await?;
        Ok(client
            .query_opt(&stmt, &[chat])
            .await?
            .map(|row| ChatRecord {
                members: row.get(0),
                created_at: row.get(1),
            }))
    }

    /// See [`super::Store::create_chat`]: durable when it returns. One chat
    /// per member set, across replicas: the set's digest is a primary key,
    /// and a concurrent insert of the same set waits for the first and then
    /// finds it.
    pub async fn create_chat(&self, id: Uuid, record: &ChatRecord) -> Result<Uuid> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        if !record.members.is_empty() {
            let key = member_set_key(&record.members);
            let inserted = tx
                .query_opt(
                    "INSERT INTO member_sets (members_digest, chat_id) VALUES (sha256($1), $2)
                     ON CONFLICT (members_digest) DO NOTHING RETURNING chat_id",
                    &[&key, &id],
                )
                .await?;
            if inserted.is_none() {
                let existing: Uuid = tx
                    .query_one(
                        "SELECT chat_id FROM member_sets WHERE members_digest = sha256($1)",
                        &[&key],
                    )
                    .await?
                    .get(0);
                tx.commit().await?;
                return Ok(existing);
            }
        }
        tx.execute(
            "INSERT INTO chats (chat_id, members, created_at) VALUES ($1, $2, $3)",
            &[&id, &record.members, &record.created_at],
        )
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Appends a group of messages in transactions of at most `batch_max`
    /// (see the module docs), stopping at the first that fails: the
    /// outcomes of those before it stand.
    pub async fn commit(&self, batch: Vec<Staged>) -> Committed {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut appends = Vec::with_capacity(batch.len());
        for staged in batch {
            match staged {
                Staged::Deferred(a) => appends.push(a),
                // Not made by this backend's stage.
                Staged::Written(m) | Staged::Existing { stored: m, .. } => {
                    return Committed {
                        outcomes,
                        failed: Some(StoreError::Postgres(format!(
                            "message {} was staged by another backend",
                            m.id
                        ))),
                    }
                }
            }
        }
        let mut rest = appends.into_iter().peekable();
        while rest.peek().is_some() {
            let group: Vec<Append> = rest.by_ref().take(self.batch_max).collect();
            match self.commit_group(group).await {
                Ok(done) => outcomes.extend(done),
                Err(e) => {
                    return Committed {
                        outcomes,
                        failed: Some(e),
                    }
                }
            }
        }
        Committed {
            outcomes,
            failed: None,
        }
    }

    async fn commit_group(&self, appends: Vec<Append>) -> Result<Vec<Outcome>> {
        let client = self.pool.get().await?;
        let statements = GroupStatements {
            lock: client
                .prepare_cached(
                    "SELECT chat_id, last_seq FROM chats WHERE chat_id = ANY($1)
                     ORDER BY chat_id FOR UPDATE",
                )
                .await?,
            find: client
                .prepare_cached(&format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE (chat_id, user_id, client_id) IN
                       (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]))"
                ))
                .await?,
            insert: client.prepare_cached(&insert_messages()).await?,
            bump: client
                .prepare_cached(
                    "UPDATE chats SET last_seq = v.last
                     FROM unnest($1::uuid[], $2::int8[]) AS v(chat_id, last)
                     WHERE chats.chat_id = v.chat_id",
                )
                .await?,
            notify: client
                .prepare_cached("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
                .await?,
        };
        let result = append_group(&client, &statements, appends).await;
        if result.is_err() {
            // The connection goes back to the pool: not inside a transaction.
            // (A broken one fails here too and is then dropped by the pool.)
            let _ = client.batch_execute("ROLLBACK").await;
        }
        result
    }

    pub async fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        Ok(self
            .last_seqs(std::slice::from_ref(chat))
            .await?
            .first()
            .map_or(0, |&(_, s)| s))
    }

    /// The last committed seq of each of `chats` that exists.
    pub async fn last_seqs(&self, chats: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached("SELECT chat_id, last_seq FROM chats WHERE chat_id = ANY($1)")
            .await?;
        Ok(client
            .query(&stmt, &[&chats])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get::<_, i64>(1) as u64))
            .collect())
    }

    /// Committed messages with `first <= seq <= last`, at most `limit`.
    pub async fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&within_bytes(
                "chat_id = $1 AND seq >= $2 AND seq <= $3",
                "seq",
                "$4",
                "$5",
            ))
            .await?;
        let rows = client
            .query(
                &stmt,
                &[
                    chat,
                    &db_seq(first),
                    &db_seq(last),
                    &(limit as i64),
                    &(max_bytes as i64),
                ],
            )
            .await?;
        Ok(rows.iter().map(message).collect())
    }

    /// See [`super::Store::page`]. Reads what is committed, whichever
    /// replica wrote it: a Send acknowledged by one replica is in the next
    /// History page of every other.
    pub async fn page(
        &self,
        chat: &Uuid,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Page> {
        let client = self.pool.get().await?;
        let max_bytes = max_bytes as i64;
        match after {
            Some(after) => {
                let stmt = client
                    .prepare_cached(&within_bytes(
                        "chat_id = $1 AND seq > $2",
                        "seq",
                        "$3",
                        "$4",
                    ))
                    .await?;
                let rows = client
                    .query(&stmt, &[chat, &db_seq(after), &(limit as i64), &max_bytes])
                    .await?;
                let messages: Vec<Message> = rows.iter().map(message).collect();
                // Whether anything follows the page.
                let has_more = match messages.last() {
                    Some(last) => {
                        let stmt = client
                            .prepare_cached("SELECT last_seq FROM chats WHERE chat_id = $1")
                            .await?;
                        let row = client.query_opt(&stmt, &[chat]).await?;
                        row.is_some_and(|r| r.get::<_, i64>(0) > db_seq(last.seq))
                    }
                    None => false,
                };
                Ok(Page { messages, has_more })
            }
            None => {
                let stmt = client
                    .prepare_cached(&within_bytes(
                        "chat_id = $1 AND seq < $2",
                        "seq DESC",
                        "$3",
                        "$4",
                    ))
                    .await?;
                let before = before.map_or(i64::MAX, db_seq);
                let rows = client
                    .query(&stmt, &[chat, &before, &(limit as i64), &max_bytes])
                    .await?;
                let messages: Vec<Message> = rows.iter().rev().map(message).collect();
                // Seqs are gap-free from 1.
                let has_more = messages.first().is_some_and(|m| m.seq > 1);
                Ok(Page { messages, has_more })
            }
        }
    }

    pub async fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, ChatRecord)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT chat_id, members, created_at FROM chats
                 WHERE $1::uuid IS NULL OR chat_id > $1 ORDER BY chat_id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    ChatRecord {
                        members: r.get(1),
                        created_at: r.get(2),
                    },
                )
            })
            .collect())
    }

    pub async fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO chats (chat_id, members, created_at) VALUES ($1, $2, $3)
             ON CONFLICT (chat_id) DO NOTHING",
            &[&id, &record.members, &record.created_at],
        )
        .await?;
        if !record.members.is_empty() {
            let key = member_set_key(&record.members);
            let owner: Uuid = tx
                .query_one(
                    "WITH ins AS (
                        INSERT INTO member_sets (members_digest, chat_id) VALUES (sha256($1), $2)
                        ON CONFLICT (members_digest) DO NOTHING RETURNING chat_id)
                     SELECT chat_id FROM ins
                     UNION ALL SELECT chat_id FROM member_sets WHERE members_digest = sha256($1)
                     LIMIT 1",
                    &[&key, &id],
                )
                .await?
                .get(0);
            if owner != id {
                return Err(StoreError::Config(format!(
                    "chat {id}: its member set already belongs to chat {owner}"
                )));
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn import_messages(&self, messages: Vec<Message>) -> Result<()> {
        let Some(chat) = messages.first().map(|m| m.chat) else {
            return Ok(());
        };
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        // Live replicas append to this chat too: hold its counter row.
        tx.query(
            "SELECT 1 FROM chats WHERE chat_id = $1 FOR UPDATE",
            &[&chat],
        )
        .await?;
        let out: Vec<Outcome> = messages.into_iter().map(Outcome::Stored).collect();
        let rows = Rows::of(&out);
        tx.execute(
            &format!("{} ON CONFLICT DO NOTHING", insert_messages()),
            &rows.params(),
        )
        .await?;
        let last: i64 = tx
            .query_one(
                "UPDATE chats SET last_seq = GREATEST(last_seq,
                    (SELECT coalesce(max(seq), 0) FROM messages WHERE chat_id = $1))
                 WHERE chat_id = $1 RETURNING last_seq",
                &[&chat],
            )
            .await?
            .get(0);
        let wake = bus::encode(std::iter::once((&chat, last as u64)));
        tx.query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            &[&bus::CHANNEL, &wake],
        )
        .await?;
        tx.commit().await?;
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

/// The statements of [`PgStore::commit`], prepared once per connection.
struct GroupStatements {
    lock: Statement,
    find: Statement,
    insert: Statement,
    bump: Statement,
    notify: Statement,
}

/// One group in one transaction, in two round trips: `BEGIN`, the counter
/// row locks and the idempotency lookup are pipelined (each runs after the
/// one before, on the server); then the inserts, the counter updates, the
/// notification and `COMMIT`. Fewer round trips is a shorter time holding
/// the counter rows, which is what other replicas writing to the same
/// chats wait for. Pipelining `COMMIT` behind statements whose results are
/// still unknown is safe: if one fails, the transaction is aborted (its
/// `COMMIT` only rolls back) and the error is returned.
async fn append_group(
    client: &tokio_postgres::Client,
    st: &GroupStatements,
    appends: Vec<Append>,
) -> Result<Vec<Outcome>> {
    let mut chats: Vec<Uuid> = appends.iter().map(|a| a.message.chat).collect();
    chats.sort_unstable();
    chats.dedup();
    let keyed = appends.iter().filter(|a| a.dedupe).map(|a| &a.message);
    let key_chats: Vec<Uuid> = keyed.clone().map(|m| m.chat).collect();
    let key_users: Vec<&str> = keyed.clone().map(|m| m.user_id.as_str()).collect();
    let key_clients: Vec<&str> = keyed.map(|m| m.client_id.as_str()).collect();
    let ((), locked, found) = try_join3(
        client.batch_execute("BEGIN"),
        client.query(&st.lock, &[&chats]),
        client.query(&st.find, &[&key_chats, &key_users, &key_clients]),
    )
    .await?;

    let mut last: HashMap<Uuid, i64> = locked.iter().map(|r| (r.get(0), r.get(1))).collect();
    let mut stored: HashMap<(Uuid, String, String), Message> = HashMap::new();
    for row in &found {
        let m = message(row);
        stored.insert((m.chat, m.user_id.clone(), m.client_id.clone()), m);
    }
    let mut out = Vec::with_capacity(appends.len());
    for Append {
        mut message,
        dedupe,
    } in appends
    {
        if dedupe {
            let key = (
                message.chat,
                message.user_id.clone(),
                message.client_id.clone(),
            );
            if let Some(m) = stored.get(&key) {
                let same = m.subject == message.subject && m.text == message.text;
                out.push(Outcome::Existing {
                    stored: m.clone(),
                    same,
                });
                continue;
            }
            // A twin later in this same group finds this one.
            message.seq = next_seq(&mut last, &message.chat)?;
            stored.insert(key, message.clone());
        } else {
            message.seq = next_seq(&mut last, &message.chat)?;
        }
        out.push(Outcome::Stored(message));
    }
    let rows = Rows::of(&out);
    if rows.chat.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(out);
    }
    let touched: HashSet<&Uuid> = rows.chat.iter().collect();
    let (chat_ids, lasts): (Vec<Uuid>, Vec<i64>) = chats
        .iter()
        .filter(|c| touched.contains(c))
        .map(|c| (*c, last[c]))
        .unzip();
    let wake = bus::encode(chat_ids.iter().zip(lasts.iter().map(|&s| s as u64)));
    try_join4(
        client.execute(&st.insert, &rows.params()),
        client.execute(&st.bump, &[&chat_ids, &lasts]),
        // Delivered to listeners only if and when this commits.
        client.query(&st.notify, &[&bus::CHANNEL, &wake]),
        client.batch_execute("COMMIT"),
    )
    .await?;
    Ok(out)
}

/// Columns of the messages being inserted, one array each (for `unnest`),
/// borrowed from the outcomes.
#[derive(Default)]
struct Rows<'a> {
    chat: Vec<Uuid>,
    seq: Vec<i64>,
    id: Vec<&'a str>,
    user: Vec<&'a str>,
    client: Vec<&'a str>,
    sent_at: Vec<i64>,
    subject: Vec<&'a str>,
    text: Vec<&'a str>,
}

/// Inserts the rows of a [`Rows`] (its [`Rows::params`]).
fn insert_messages() -> String {
    format!(
        "INSERT INTO messages ({MESSAGE_COLUMNS})
         SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[],
                              $5::text[], $6::int8[], $7::text[], $8::text[])"
    )
}

impl<'a> Rows<'a> {
    /// The parameters of [`insert_messages`].
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 8] {
        [
            &self.chat,
            &self.seq,
            &self.id,
            &self.user,
            &self.client,
            &self.sent_at,
            &self.subject,
            &self.text,
        ]
    }

    fn of(out: &'a [Outcome]) -> Rows<'a> {
        let mut rows = Rows::default();
        for m in out.iter().filter_map(|o| match o {
            Outcome::Stored(m) => Some(m),
            Outcome::Existing { .. } => None,
        }) {
            rows.chat.push(m.chat);
            rows.seq.push(m.seq as i64);
            rows.id.push(&m.id);
            rows.user.push(&m.user_id);
            rows.client.push(&m.client_id);
            rows.sent_at.push(m.sent_at);
            rows.subject.push(&m.subject);
            rows.text.push(&m.text);
        }
        rows
    }
}

fn next_seq(last: &mut HashMap<Uuid, i64>, chat: &Uuid) -> Result<u64> {
    let seq = last
        .get_mut(chat)
        .ok_or_else(|| StoreError::Postgres(format!("chat {chat} has no counter row")))?;
    *seq += 1;
    Ok(*seq as u64)
}

/// A seq as a bigint (seqs never reach 2^63; larger cursors mean "the end").
fn db_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A row of [`MESSAGE_COLUMNS`].
fn message(row: &Row) -> Message {
    Message {
        chat: row.get(0),
        seq: row.get::<_, i64>(1) as u64,
        id: row.get(2),
        user_id: row.get(3),
        client_id: row.get(4),
        sent_at: row.get(5),
        subject: row.get(6),
        text: row.get(7),
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

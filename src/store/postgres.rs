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
//! # Schema (migration 2: events, read state, inbox)
//!
//! ```sql
//! ALTER TABLE messages                     -- the log: messages and their edit/delete events
//!     ADD kind smallint NOT NULL DEFAULT 0,       -- 0 message, 1 edit, 2 delete
//!     ADD target_seq bigint NOT NULL DEFAULT 0,   -- an event's message
//!     ADD edited_at bigint NOT NULL DEFAULT 0,
//!     ADD deleted boolean NOT NULL DEFAULT false, -- subject and text cleared
//!     ADD n bigint NOT NULL DEFAULT 0,            -- messages up to this entry (unread counts)
//!     ADD original bytea;                         -- digest of the first content, once changed
//! CREATE INDEX messages_events ON messages (chat_id, target_seq) WHERE kind <> 0;  -- a delete finds its edits
//! CREATE INDEX messages_shown ON messages (chat_id, seq) WHERE kind = 0 AND NOT deleted; -- History's default view, previews
//! ALTER TABLE chats
//!     ADD n bigint NOT NULL DEFAULT 0,            -- messages in the log
//!     ADD active_us bigint NOT NULL DEFAULT 0,    -- creation or last entry: inbox order
//!     ADD last_message bigint NOT NULL DEFAULT 0; -- the newest message's seq
//! CREATE TABLE chat_members (              -- the inbox and read positions
//!     user_id text NOT NULL, chat_id uuid NOT NULL,
//!     read_seq bigint NOT NULL DEFAULT 0, read_n bigint NOT NULL DEFAULT 0,
//!     PRIMARY KEY (user_id, chat_id)       -- one user's chats: one index range
//! );
//! CREATE INDEX chat_members_chat ON chat_members (chat_id, user_id);  -- ReadState
//! ```
//!
//! # Schema (migration 3: unread counts without deleted messages; readers of open chats)
//!
//! ```sql
//! CREATE INDEX messages_deleted ON messages (chat_id, seq) WHERE kind = 0 AND deleted;
//! ALTER TABLE chat_members                 -- an open chat's reader who never posted:
//!     ADD reader_only boolean NOT NULL DEFAULT false;  -- in no inbox, no ReadState
//! ```
//!
//! # Schema (migration 4: an inbox page costs the page)
//!
//! ```sql
//! ALTER TABLE chat_members                 -- the chat's active_us, copied: inbox order
//!     ADD active_us bigint NOT NULL DEFAULT 0;
//! CREATE INDEX chat_members_inbox ON chat_members (user_id, active_us, chat_id)
//!     WHERE NOT reader_only;               -- a ListChats page: one backward index range
//! ```
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

use std::{collections::HashMap, time::Duration};

use futures_util::future::{try_join3, try_join5};
use tokio_postgres::{Row, Statement};
use uuid::Uuid;

use super::{
    bus,
    pgconn::{self, PgOptions, Target},
    Backend, Committed, Page, Result, Staged, StoreError,
};
use crate::model::{
    content_digest, member_set_key, Append, ChatRecord, InboxEntry, Kind, Marked, Message, Outcome,
    ReadMark, Refusal, View,
};

/// The schema's migrations, in order. (Migration 2 needs the replicas of
/// the version before it stopped: they keep no counts and would serve
/// events as messages.) Expand-then-contract: a migration only
/// adds (tables, nullable columns, indexes), so replicas of this version and
/// the previous one can share the schema during a rolling upgrade; what a
/// later version stops using is dropped a release after.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (
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
    ),
    (
        2,
        "events, read state, inbox",
        "ALTER TABLE messages
        ADD kind smallint NOT NULL DEFAULT 0,
        ADD target_seq bigint NOT NULL DEFAULT 0,
        ADD edited_at bigint NOT NULL DEFAULT 0,
        ADD deleted boolean NOT NULL DEFAULT false,
        ADD n bigint NOT NULL DEFAULT 0,
        ADD original bytea;
    -- Before events every entry was a message: the count is the seq.
    UPDATE messages SET n = seq;
    CREATE INDEX messages_events ON messages (chat_id, target_seq) WHERE kind <> 0;
    CREATE INDEX messages_shown ON messages (chat_id, seq) WHERE kind = 0 AND NOT deleted;
    ALTER TABLE chats
        ADD n bigint NOT NULL DEFAULT 0,
        ADD active_us bigint NOT NULL DEFAULT 0,
        ADD last_message bigint NOT NULL DEFAULT 0;
    UPDATE chats SET n = last_seq, last_message = last_seq,
        active_us = 1000000 * greatest(created_at, coalesce(
            (SELECT sent_at FROM messages m WHERE m.chat_id = chats.chat_id AND m.seq = chats.last_seq), 0));
    CREATE TABLE chat_members (
        user_id text NOT NULL,
        chat_id uuid NOT NULL,
        read_seq bigint NOT NULL DEFAULT 0,
        read_n bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, chat_id)
    );
    CREATE INDEX chat_members_chat ON chat_members (chat_id, user_id);
    INSERT INTO chat_members (user_id, chat_id)
        SELECT unnest(members), chat_id FROM chats WHERE members <> '{}';
    INSERT INTO chat_members (user_id, chat_id)
        SELECT DISTINCT m.user_id, m.chat_id FROM messages m JOIN chats c USING (chat_id)
        WHERE c.members = '{}'
        ON CONFLICT DO NOTHING;",
    ),
    (
        3,
        "unread counts leave out deleted messages",
        "CREATE INDEX messages_deleted ON messages (chat_id, seq) WHERE kind = 0 AND deleted;
    ALTER TABLE chat_members ADD reader_only boolean NOT NULL DEFAULT false;
    UPDATE chat_members SET reader_only = true FROM chats c
        WHERE c.chat_id = chat_members.chat_id AND c.members = '{}'
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = chat_members.chat_id
                          AND m.user_id = chat_members.user_id AND m.kind = 0);",
    ),
    (
        4,
        "an inbox page costs the page",
        "ALTER TABLE chat_members ADD active_us bigint NOT NULL DEFAULT 0;
    UPDATE chat_members SET active_us = c.active_us FROM chats c
        WHERE c.chat_id = chat_members.chat_id;
    CREATE INDEX chat_members_inbox ON chat_members (user_id, active_us, chat_id)
        WHERE NOT reader_only;",
    ),
];

/// Held while migrating, so that replicas starting at once do not race.
const MIGRATION_LOCK: i64 = 0x6368_6174_5f6d_6967; // "chat_mig"

/// The columns of a message row, in the order [`message`] reads them.
const MESSAGE_COLUMNS: &str = "chat_id, seq, id, user_id, client_id, sent_at, subject, text, \
     kind, target_seq, edited_at, deleted, n, original";

/// The preview columns of an inbox row: [`MESSAGE_COLUMNS`] of `p`.
const PREVIEW_COLUMNS: &str = "p.chat_id, p.seq, p.id, p.user_id, p.client_id, p.sent_at, \
     p.subject, p.text, p.kind, p.target_seq, p.edited_at, p.deleted, p.n, p.original";

/// The columns a group inserts for a message (the rest keep their defaults).
const INSERT_COLUMNS: &str = "chat_id, seq, id, user_id, client_id, sent_at, subject, text, \
     kind, target_seq, edited_at, deleted, n, original";

/// A query for the log entries `filter` selects in `order`, at most `limit`
/// of them and, but for the first, at most `max_bytes` of weight (the
/// running sum of `model::Message::weight`, computed here in SQL), so
/// that a page of large messages is cut in the database, not after it has
/// been sent over. The window runs in index order under the LIMIT: no more
/// than `limit` rows are read. Each row also carries how many the LIMIT
/// let through (`taken`), so a caller knows whether the byte cut dropped any.
fn within_bytes(filter: &str, order: &str, limit: &str, max_bytes: &str) -> String {
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
fn shown(view: View) -> &'static str {
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
                created_us: row.get::<_, i64>(1).saturating_mul(1_000_000),
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
            "INSERT INTO chats (chat_id, members, created_at, active_us) VALUES ($1, $2, $3, $4)",
            &[&id, &record.members, &record.created_at, &record.created_us],
        )
        .await?;
        tx.execute(
            "INSERT INTO chat_members (user_id, chat_id, active_us)
             SELECT unnest($1::text[]), $2, $3",
            &[&record.members, &id, &record.created_us],
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
                Staged::Written(m)
                | Staged::Existing { stored: m, .. }
                | Staged::Event { event: m, .. } => {
                    return Committed {
                        outcomes,
                        failed: Some(StoreError::Postgres(format!(
                            "message {} was staged by another backend",
                            m.id
                        ))),
                    }
                }
                Staged::Refused(why) => outcomes.push(Outcome::Refused(why)),
            }
        }
        let mut rest = appends.into_iter().peekable();
        while let Some(next) = rest.peek() {
            // Messages in groups; an edit or delete, in order, on its own.
            let done = match next.message.kind {
                Kind::Message => {
                    let mut group = Vec::new();
                    while let Some(a) = rest.next_if(|a| a.message.kind == Kind::Message) {
                        group.push(a);
                        if group.len() == self.batch_max {
                            break;
                        }
                    }
                    self.commit_group(group).await
                }
                _ => match rest.next() {
                    Some(event) => self.commit_event(event).await.map(|o| vec![o]),
                    None => Ok(Vec::new()),
                },
            };
            match done {
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
                    "SELECT chat_id, last_seq, n FROM chats WHERE chat_id = ANY($1)
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
                    "WITH v AS (SELECT * FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::int8[])
                                  AS v(chat_id, last, n, at)),
                     counters AS (UPDATE chats SET last_seq = v.last, n = v.n, active_us = v.at,
                                    last_message = v.last
                                  FROM v WHERE chats.chat_id = v.chat_id)
                     UPDATE chat_members m SET active_us = v.at FROM v
                     WHERE m.chat_id = v.chat_id AND NOT m.reader_only AND m.active_us <> v.at",
                )
                .await?,
            read: client
                .prepare_cached(
                    "INSERT INTO chat_members (user_id, chat_id, read_seq, read_n, active_us)
                     SELECT * FROM unnest($1::text[], $2::uuid[], $3::int8[], $4::int8[], $5::int8[])
                     ON CONFLICT (user_id, chat_id) DO UPDATE
                     SET read_seq = greatest(chat_members.read_seq, EXCLUDED.read_seq),
                         read_n = CASE WHEN chat_members.read_seq < EXCLUDED.read_seq
                                  THEN EXCLUDED.read_n ELSE chat_members.read_n END,
                         reader_only = false, active_us = EXCLUDED.active_us
                     WHERE chat_members.read_seq < EXCLUDED.read_seq OR chat_members.reader_only",
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

    /// Committed log entries with `first <= seq <= last`, at most `limit`.
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
                    &db_count(limit),
                    &db_count(max_bytes),
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
        view: View,
    ) -> Result<Page> {
        let client = self.pool.get().await?;
        let (filter, order, cursor) = match after {
            Some(after) => ("chat_id = $1 AND seq > $2", "seq", db_seq(after)),
            None => (
                "chat_id = $1 AND seq < $2",
                "seq DESC",
                before.map_or(i64::MAX, db_seq),
            ),
        };
        let stmt = client
            .prepare_cached(&within_bytes(
                &format!("{filter}{}", shown(view)),
                order,
                "$3",
                "$4",
            ))
            .await?;
        // One more than the page: whether more follow.
        let rows = client
            .query(
                &stmt,
                &[
                    chat,
                    &cursor,
                    &db_count(limit.saturating_add(1)),
                    &db_count(max_bytes),
                ],
            )
            .await?;
        let taken = rows.first().map_or(0, |r| r.get::<_, i64>(14) as usize);
        let mut messages: Vec<Message> = rows.iter().take(limit).map(message).collect();
        let has_more = taken > messages.len();
        if after.is_none() {
            messages.reverse();
        }
        Ok(Page { messages, has_more })
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
                &[&after, &db_count(limit)],
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
                        created_us: r.get::<_, i64>(2).saturating_mul(1_000_000),
                    },
                )
            })
            .collect())
    }

    pub async fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO chats (chat_id, members, created_at, active_us) VALUES ($1, $2, $3, $4)
             ON CONFLICT (chat_id) DO NOTHING",
            &[&id, &record.members, &record.created_at, &record.created_us],
        )
        .await?;
        tx.execute(
            "INSERT INTO chat_members (user_id, chat_id, active_us)
             SELECT unnest($1::text[]), $2, $3
             ON CONFLICT DO NOTHING",
            &[&record.members, &id, &record.created_us],
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
        // An open chat's posters have it in their inbox.
        tx.execute(
            "INSERT INTO chat_members (user_id, chat_id)
             SELECT DISTINCT m.user_id, m.chat_id FROM messages m JOIN chats c USING (chat_id)
             WHERE m.chat_id = $1 AND c.members = '{}' AND m.kind = 0
             ON CONFLICT DO NOTHING",
            &[&chat],
        )
        .await?;
        let last: i64 = tx
            .query_one(
                "UPDATE chats SET last_seq = greatest(last_seq, s.last), n = greatest(chats.n, s.n),
                    last_message = greatest(last_message, s.newest),
                    active_us = greatest(active_us, s.at)
                 FROM (SELECT coalesce(max(seq), 0) AS last, coalesce(max(n), 0) AS n,
                              coalesce(max(seq) FILTER (WHERE kind = 0), 0) AS newest,
                              coalesce(max(sent_at), 0) * 1000000 AS at
                       FROM messages WHERE chat_id = $1) s
                 WHERE chat_id = $1 RETURNING last_seq",
                &[&chat],
            )
            .await?
            .get(0);
        tx.execute(
            "UPDATE chat_members m SET active_us = c.active_us FROM chats c
             WHERE c.chat_id = $1 AND m.chat_id = $1 AND m.active_us <> c.active_us",
            &[&chat],
        )
        .await?;
        let wake = bus::encode(std::iter::once((&chat, last as u64)));
        tx.query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            &[&bus::CHANNEL, &wake],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Stores an edit or delete event and rewrites its message, in a
    /// transaction of its own that holds the chat's counter row (so its seq
    /// commits in order with the groups); or refuses it, storing nothing.
    async fn commit_event(&self, append: Append) -> Result<Outcome> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let Append {
            message: mut event,
            dedupe,
        } = append;
        let chat = event.chat;
        let counters = tx
            .query_opt(
                "SELECT last_seq, n FROM chats WHERE chat_id = $1 FOR UPDATE",
                &[&chat],
            )
            .await?
            .ok_or_else(|| StoreError::Postgres(format!("chat {chat} has no counter row")))?;
        if dedupe {
            let found = tx
                .query_opt(
                    &format!(
                        "SELECT {MESSAGE_COLUMNS} FROM messages
                         WHERE chat_id = $1 AND user_id = $2 AND client_id = $3"
                    ),
                    &[&chat, &event.user_id, &event.client_id],
                )
                .await?;
            if let Some(row) = found {
                let stored = message(&row);
                let same = stored.kind == event.kind
                    && stored.target == event.target
                    && stored.same_content(&event.subject, &event.text);
                tx.commit().await?;
                return Ok(Outcome::Existing { stored, same });
            }
        }
        let target_seq = db_seq(event.target);
        let target = tx
            .query_opt(
                &format!(
                    "SELECT {MESSAGE_COLUMNS} FROM messages
                     WHERE chat_id = $1 AND seq = $2 AND kind = 0 FOR UPDATE"
                ),
                &[&chat, &target_seq],
            )
            .await?
            .map(|r| message(&r));
        let edits: i64 = match event.kind {
            Kind::Edit => tx
                .query_one(
                    "SELECT count(*) FROM messages
                     WHERE chat_id = $1 AND target_seq = $2 AND kind = 1",
                    &[&chat, &target_seq],
                )
                .await?
                .get(0),
            _ => 0,
        };
        let refused = match &target {
            None => Some(Refusal::NoSuchMessage),
            Some(t) if t.user_id != event.user_id => Some(Refusal::NotTheSender(t.user_id.clone())),
            Some(t) if t.deleted && event.kind == Kind::Edit => Some(Refusal::Deleted),
            Some(_) if edits >= crate::model::MAX_EDITS as i64 => Some(Refusal::TooManyEdits),
            Some(_) => None,
        };
        if let Some(why) = refused {
            tx.rollback().await?;
            return Ok(Outcome::Refused(why));
        }
        let Some(mut target) = target else {
            return Ok(Outcome::Refused(Refusal::NoSuchMessage));
        };
        event.seq = counters.get::<_, i64>(0) as u64 + 1;
        event.n = counters.get::<_, i64>(1) as u64;
        if target.original.is_empty() {
            target.original = content_digest(&target.id, &target.subject, &target.text);
        }
        match event.kind {
            Kind::Edit => {
                target.subject.clone_from(&event.subject);
                target.text.clone_from(&event.text);
                target.edited_at = event.sent_at;
            }
            _ => {
                target.subject.clear();
                target.text.clear();
                target.deleted = true;
                // Its edits' text goes too; their digests stay for retries
                // (the same digest as `content_digest`, computed here).
                tx.execute(
                    "UPDATE messages SET original = coalesce(original, sha256(
                        int8send(octet_length(id)::int8) || convert_to(id, 'UTF8')
                        || int8send(octet_length(subject)::int8) || convert_to(subject, 'UTF8')
                        || convert_to(text, 'UTF8'))),
                        subject = '', text = '', deleted = true
                     WHERE chat_id = $1 AND target_seq = $2 AND kind <> 0",
                    &[&chat, &target_seq],
                )
                .await?;
            }
        }
        let out = [Outcome::Stored(event)];
        let rows = Rows::of(&out);
        tx.execute(&insert_messages(), &rows.params()).await?;
        let [Outcome::Stored(event)] = out else {
            unreachable!("built above")
        };
        tx.execute(
            "UPDATE messages SET subject = $3, text = $4, edited_at = $5, deleted = $6,
                original = $7
             WHERE chat_id = $1 AND seq = $2",
            &[
                &chat,
                &target_seq,
                &target.subject,
                &target.text,
                &target.edited_at,
                &target.deleted,
                &target.original,
            ],
        )
        .await?;
        tx.execute(
            "WITH counters AS (UPDATE chats SET last_seq = $2, active_us = $3 WHERE chat_id = $1)
             UPDATE chat_members SET active_us = $3
             WHERE chat_id = $1 AND NOT reader_only AND active_us <> $3",
            &[&chat, &(event.seq as i64), &event.at_us],
        )
        .await?;
        let wake = bus::encode(std::iter::once((&chat, event.seq)));
        tx.query(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p",
            &[&bus::CHANNEL, &wake],
        )
        .await?;
        tx.commit().await?;
        Ok(Outcome::Event {
            event,
            target: Box::new(target),
        })
    }

    /// `user`'s inbox (see [`super::Store::inbox`]): one backward range of
    /// `chat_members_inbox` as long as the page, joined to the chats'
    /// counter rows, the page's previews from the partial index of shown
    /// messages.
    pub async fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        let client = self.pool.get().await?;
        let stmt = client
            .prepare_cached(&format!(
                "SELECT page.chat_id, page.members, page.last_seq,
                        page.unread - (SELECT count(*) FROM messages d
                          WHERE d.chat_id = page.chat_id AND d.kind = 0 AND d.deleted
                            AND d.seq > page.read_seq),
                        page.read_seq, page.active_us, page.last_message, {PREVIEW_COLUMNS} FROM (
                   SELECT c.chat_id, c.members, c.last_seq, c.n - m.read_n AS unread, m.read_seq,
                          m.active_us, c.last_message
                   FROM chat_members m JOIN chats c ON c.chat_id = m.chat_id
                   WHERE m.user_id = $1 AND NOT m.reader_only AND (m.active_us, m.chat_id) < ($2, $3)
                   ORDER BY m.active_us DESC, m.chat_id DESC LIMIT $4
                 ) page
                 LEFT JOIN LATERAL (
                   SELECT {MESSAGE_COLUMNS} FROM messages
                   WHERE chat_id = page.chat_id AND kind = 0 AND NOT deleted
                     AND seq <= page.last_message
                   ORDER BY seq DESC LIMIT 1
                 ) p ON true
                 ORDER BY page.active_us DESC, page.chat_id DESC"
            ))
            .await?;
        // No cursor: after the last possible key.
        let (at, chat) = after.unwrap_or((i64::MAX, Uuid::max()));
        let rows = client
            .query(&stmt, &[&user, &at, &chat, &db_count(limit)])
            .await?;
        Ok(rows
            .iter()
            .map(|r| InboxEntry {
                chat: r.get(0),
                members: r.get(1),
                last_seq: r.get::<_, i64>(2) as u64,
                unread: r.get::<_, i64>(3).max(0) as u64,
                read_seq: r.get::<_, i64>(4) as u64,
                active_us: r.get(5),
                last_message: r.get::<_, Option<Uuid>>(7).map(|_| message_at(r, 7)),
            })
            .collect())
    }

    /// Moves `user`'s read position in `chat` forward to `seq` (capped to
    /// the chat's last).
    pub async fn mark_read(&self, user: &str, chat: &Uuid, seq: u64) -> Result<Marked> {
        let client = self.pool.get().await?;
        let row = client
            .query_opt(
                &format!(
                    "WITH c AS (SELECT least($3, last_seq) AS seq FROM chats WHERE chat_id = $2),
                 mark AS (SELECT c.seq, coalesce((SELECT n FROM messages
                            WHERE chat_id = $2 AND seq <= c.seq ORDER BY seq DESC LIMIT 1), 0) AS n
                          FROM c),
                 up AS (INSERT INTO chat_members (user_id, chat_id, read_seq, read_n, reader_only,
                                                  active_us)
                        SELECT $1, $2, seq, n,
                               (SELECT members = '{{}}' FROM chats WHERE chat_id = $2),
                               (SELECT active_us FROM chats WHERE chat_id = $2) FROM mark
                        ON CONFLICT (user_id, chat_id) DO UPDATE
                        SET read_seq = EXCLUDED.read_seq, read_n = EXCLUDED.read_n
                        WHERE chat_members.read_seq < EXCLUDED.read_seq
                        RETURNING read_seq, read_n, reader_only)
                 SELECT read_seq, read_n, {UNREAD}, true, reader_only FROM up AS pos"
                ),
                &[&user, chat, &db_seq(seq)],
            )
            .await?;
        // Not moved: the position as it is now, read by a statement of its
        // own. The one above reads from its snapshot, which a MarkRead that
        // moved the position meanwhile is not in (its row lock made the
        // update above wait, then skip): reported from there, an answer
        // could name a position older than the one asked for.
        let row = match row {
            Some(row) => row,
            None => {
                client
                    .query_one(
                        &format!(
                            "SELECT read_seq, read_n, {UNREAD}, false, reader_only
                             FROM chat_members AS pos WHERE user_id = $1 AND chat_id = $2"
                        ),
                        &[&user, chat],
                    )
                    .await?
            }
        };
        let mark = ReadMark {
            seq: row.get::<_, i64>(0) as u64,
            n: row.get::<_, i64>(1) as u64,
        };
        Ok(Marked {
            mark,
            unread: row.get::<_, i64>(2).max(0) as u64,
            // A first row at 0 is no move.
            moved: row.get::<_, bool>(3) && mark.seq > 0,
            reader_only: row.get(4),
        })
    }

    /// The read positions of `users` in `chat`, or, with none given, of
    /// everyone with one (an open chat's posters), at most `limit`.
    pub async fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, ReadMark)>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT user_id, read_seq, read_n FROM chat_members
                 WHERE chat_id = $1 AND NOT reader_only
                   AND (cardinality($2::text[]) = 0 OR user_id = ANY($2))
                 ORDER BY user_id LIMIT $3",
                &[chat, &users, &db_count(limit)],
            )
            .await?;
        let mut found: HashMap<String, ReadMark> = rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    ReadMark {
                        seq: r.get::<_, i64>(1) as u64,
                        n: r.get::<_, i64>(2) as u64,
                    },
                )
            })
            .collect();
        if users.is_empty() {
            let mut all: Vec<(String, ReadMark)> = found.into_iter().collect();
            all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            return Ok(all);
        }
        Ok(users
            .iter()
            .take(limit)
            .map(|u| (u.clone(), found.remove(u).unwrap_or_default()))
            .collect())
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

/// The statements of [`PgStore::commit`], prepared once per connection.
struct GroupStatements {
    lock: Statement,
    find: Statement,
    insert: Statement,
    bump: Statement,
    read: Statement,
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

    // Per chat: its last seq and message count.
    let mut last: HashMap<Uuid, (i64, i64)> = locked
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
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
                let same = m.kind == message.kind
                    && m.target == message.target
                    && m.same_content(&message.subject, &message.text);
                out.push(Outcome::Existing {
                    stored: m.clone(),
                    same,
                });
                continue;
            }
            (message.seq, message.n) = next_seq(&mut last, &message.chat)?;
            // A twin later in this same group finds this one.
            stored.insert(key, message.clone());
        } else {
            (message.seq, message.n) = next_seq(&mut last, &message.chat)?;
        }
        out.push(Outcome::Stored(message));
    }
    let rows = Rows::of(&out);
    if rows.chat.is_empty() {
        client.batch_execute("COMMIT").await?;
        return Ok(out);
    }
    // Each chat's counters and each sender's read position, once per group.
    let mut active: HashMap<Uuid, i64> = HashMap::new();
    let mut read: std::collections::BTreeMap<(Uuid, &str), (i64, i64)> = Default::default();
    for o in &out {
        if let Outcome::Stored(m) = o {
            active.insert(m.chat, m.at_us);
            read.insert((m.chat, &m.user_id), (m.seq as i64, m.n as i64));
        }
    }
    let mut bumped = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for c in chats.iter().filter(|c| active.contains_key(c)) {
        bumped.0.push(*c);
        bumped.1.push(last[c].0);
        bumped.2.push(last[c].1);
        bumped.3.push(active[c]);
    }
    let mut marks = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((chat, user), (seq, n)) in read {
        marks.0.push(user);
        marks.1.push(chat);
        marks.2.push(seq);
        marks.3.push(n);
        marks.4.push(active[&chat]);
    }
    let wake = bus::encode(bumped.0.iter().zip(bumped.1.iter().map(|&s| s as u64)));
    try_join5(
        client.execute(&st.insert, &rows.params()),
        client.execute(&st.bump, &[&bumped.0, &bumped.1, &bumped.2, &bumped.3]),
        client.execute(
            &st.read,
            &[&marks.0, &marks.1, &marks.2, &marks.3, &marks.4],
        ),
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
    kind: Vec<i16>,
    target: Vec<i64>,
    edited_at: Vec<i64>,
    deleted: Vec<bool>,
    n: Vec<i64>,
    original: Vec<Option<&'a [u8]>>,
}

/// Inserts the rows of a [`Rows`] (its [`Rows::params`]).
fn insert_messages() -> String {
    format!(
        "INSERT INTO messages ({INSERT_COLUMNS})
         SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[],
                              $5::text[], $6::int8[], $7::text[], $8::text[],
                              $9::int2[], $10::int8[], $11::int8[], $12::bool[], $13::int8[],
                              $14::bytea[])"
    )
}

impl<'a> Rows<'a> {
    /// The parameters of [`insert_messages`].
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 14] {
        [
            &self.chat,
            &self.seq,
            &self.id,
            &self.user,
            &self.client,
            &self.sent_at,
            &self.subject,
            &self.text,
            &self.kind,
            &self.target,
            &self.edited_at,
            &self.deleted,
            &self.n,
            &self.original,
        ]
    }

    fn of(out: &'a [Outcome]) -> Rows<'a> {
        let mut rows = Rows::default();
        for m in out.iter().filter_map(|o| match o {
            Outcome::Stored(m) => Some(m),
            _ => None,
        }) {
            rows.chat.push(m.chat);
            rows.seq.push(m.seq as i64);
            rows.id.push(&m.id);
            rows.user.push(&m.user_id);
            rows.client.push(&m.client_id);
            rows.sent_at.push(m.sent_at);
            rows.subject.push(&m.subject);
            rows.text.push(&m.text);
            rows.kind.push(m.kind.number() as i16);
            rows.target.push(m.target as i64);
            rows.edited_at.push(m.edited_at);
            rows.deleted.push(m.deleted);
            rows.n.push(m.n as i64);
            rows.original
                .push((!m.original.is_empty()).then_some(m.original.as_slice()));
        }
        rows
    }
}

/// The next seq of `chat` and its message count with one more message.
fn next_seq(last: &mut HashMap<Uuid, (i64, i64)>, chat: &Uuid) -> Result<(u64, u64)> {
    let (seq, n) = last
        .get_mut(chat)
        .ok_or_else(|| StoreError::Postgres(format!("chat {chat} has no counter row")))?;
    *seq += 1;
    *n += 1;
    Ok((*seq as u64, *n as u64))
}

/// A random replica id.
fn rand_replica() -> u64 {
    let id = Uuid::new_v4();
    u64::from_be_bytes(id.as_bytes()[..8].try_into().unwrap_or_default())
}

/// A seq as a bigint (seqs never reach 2^63; larger cursors mean "the end").
fn db_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// A limit as a BIGINT: "no limit" (`usize::MAX`) stays the largest one
/// rather than wrapping to a negative LIMIT that PostgreSQL refuses.
fn db_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A row of [`MESSAGE_COLUMNS`].
fn message(row: &Row) -> Message {
    message_at(row, 0)
}

/// The [`MESSAGE_COLUMNS`] of a row, from column `at` on.
fn message_at(row: &Row, at: usize) -> Message {
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

/// A position's unread count, as [`PgStore::mark_read`] reports it: the
/// chat's messages after the position (`pos`) that are not deleted.
const UNREAD: &str = "(SELECT n FROM chats WHERE chat_id = $2) - pos.read_n
     - (SELECT count(*) FROM messages
        WHERE chat_id = $2 AND kind = 0 AND deleted AND seq > pos.read_seq)";

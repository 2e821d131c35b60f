//! The PostgreSQL schema, written once: the migrations in order, each
//! table, column and index with why it is there, and `chat migrate`.

use super::PgStore;
use crate::store::{Result, StoreError};

/// The schema's migrations, in order: the one place the schema is written
/// (`chat_schema`, the applied versions, is made by [`PgStore::migrate`]).
/// Every key of per-chat data starts with `chat_id`, so `chats` and
/// `messages` can be distributed by it (Citus, or hash partitions) without
/// a redesign; `member_sets` is keyed by its digest and can be distributed
/// by that. A member-set key can be 32 KiB (256 ids of 128 bytes), past a
/// btree entry's limit, hence the digest. (Migration 2 needs the replicas of
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
        members text[] NOT NULL,             -- sorted; empty: an open chat
        created_at bigint NOT NULL,          -- unix seconds
        last_seq bigint NOT NULL DEFAULT 0   -- the counter row: the chat's last committed seq
    ) WITH (fillfactor = 50);                -- room on each page: counter updates stay HOT
    CREATE TABLE member_sets (               -- New's idempotency
        members_digest bytea PRIMARY KEY,    -- sha256 of the canonical member-set key
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
        PRIMARY KEY (chat_id, seq)           -- History pages and catch-up: one index range
    );
    -- Send's idempotency, and no duplicate even if a lookup were wrong.
    CREATE UNIQUE INDEX messages_dedupe ON messages (chat_id, user_id, client_id);",
    ),
    (
        2,
        "events, read state, inbox",
        "-- The log: messages and their edit and delete events, one seq for both.
    ALTER TABLE messages
        ADD kind smallint NOT NULL DEFAULT 0,        -- 0 message, 1 edit, 2 delete
        ADD target_seq bigint NOT NULL DEFAULT 0,    -- an event's message
        ADD edited_at bigint NOT NULL DEFAULT 0,
        ADD deleted boolean NOT NULL DEFAULT false,  -- subject and text cleared
        ADD n bigint NOT NULL DEFAULT 0,             -- messages up to this entry (unread counts)
        ADD original bytea;                          -- digest of the first content, once changed
    -- Before events every entry was a message: the count is the seq.
    UPDATE messages SET n = seq;
    -- A delete finds its message's edits.
    CREATE INDEX messages_events ON messages (chat_id, target_seq) WHERE kind <> 0;
    -- History's default view, and inbox previews.
    CREATE INDEX messages_shown ON messages (chat_id, seq) WHERE kind = 0 AND NOT deleted;
    ALTER TABLE chats
        ADD n bigint NOT NULL DEFAULT 0,             -- messages in the log
        ADD active_us bigint NOT NULL DEFAULT 0,     -- creation or last entry: inbox order
        ADD last_message bigint NOT NULL DEFAULT 0;  -- the newest message's seq
    UPDATE chats SET n = last_seq, last_message = last_seq,
        active_us = 1000000 * greatest(created_at, coalesce(
            (SELECT sent_at FROM messages m WHERE m.chat_id = chats.chat_id AND m.seq = chats.last_seq), 0));
    CREATE TABLE chat_members (              -- the inbox and read positions
        user_id text NOT NULL,
        chat_id uuid NOT NULL,
        read_seq bigint NOT NULL DEFAULT 0,
        read_n bigint NOT NULL DEFAULT 0,    -- the entry's n at read_seq
        PRIMARY KEY (user_id, chat_id)       -- one user's chats: one index range
    );
    CREATE INDEX chat_members_chat ON chat_members (chat_id, user_id);  -- ReadState
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
        "-- Unread counts leave out the deleted messages after a read position:
    -- a range of this index, usually empty (no write per recipient).
    CREATE INDEX messages_deleted ON messages (chat_id, seq) WHERE kind = 0 AND deleted;
    -- An open chat's reader who never posted: in no inbox, no ReadState.
    ALTER TABLE chat_members ADD reader_only boolean NOT NULL DEFAULT false;
    UPDATE chat_members SET reader_only = true FROM chats c
        WHERE c.chat_id = chat_members.chat_id AND c.members = '{}'
          AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.chat_id = chat_members.chat_id
                          AND m.user_id = chat_members.user_id AND m.kind = 0);",
    ),
    (
        4,
        "an inbox page costs the page",
        "-- The chat's active_us, copied to each member: inbox order.
    ALTER TABLE chat_members ADD active_us bigint NOT NULL DEFAULT 0;
    UPDATE chat_members SET active_us = c.active_us FROM chats c
        WHERE c.chat_id = chat_members.chat_id;
    -- A ListChats page: one backward index range.
    CREATE INDEX chat_members_inbox ON chat_members (user_id, active_us, chat_id)
        WHERE NOT reader_only;",
    ),
];

/// Held while migrating, so that replicas starting at once do not race.
const MIGRATION_LOCK: i64 = 0x6368_6174_5f6d_6967; // "chat_mig"

/// The schema's state, for `chat migrate`.
#[derive(Debug)]
pub struct SchemaStatus {
    /// Highest applied version (0: an empty database).
    pub version: i32,
    /// Migrations this binary knows and the database lacks.
    pub pending: Vec<(i32, &'static str)>,
}

impl PgStore {
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
}

//! Writing: chats, and groups of sends in one transaction each (see the
//! module docs of `store::postgres`).

use std::collections::HashMap;

use futures_util::future::{try_join3, try_join5};
use tokio_postgres::Statement;
use uuid::Uuid;

use super::{message, PgStore, INSERT_COLUMNS, MESSAGE_COLUMNS};
use crate::{
    model::{member_set_key, Append, ChatRecord, Kind, Message, Outcome},
    store::{bus, Committed, Result, Staged, StoreError},
};

impl PgStore {
    /// See [`crate::store::Backend::create_chat`]: durable when it returns. One chat
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

    pub(super) async fn commit_group(&self, appends: Vec<Append>) -> Result<Vec<Outcome>> {
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
}

/// The statements of [`PgStore::commit`], prepared once per connection.
pub(super) struct GroupStatements {
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
pub(super) async fn append_group(
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
pub(super) struct Rows<'a> {
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
pub(super) fn insert_messages() -> String {
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
    pub(super) fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 14] {
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

    pub(super) fn of(out: &'a [Outcome]) -> Rows<'a> {
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
pub(super) fn next_seq(last: &mut HashMap<Uuid, (i64, i64)>, chat: &Uuid) -> Result<(u64, u64)> {
    let (seq, n) = last
        .get_mut(chat)
        .ok_or_else(|| StoreError::Postgres(format!("chat {chat} has no counter row")))?;
    *seq += 1;
    *n += 1;
    Ok((*seq as u64, *n as u64))
}

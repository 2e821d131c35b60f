//! Export and import: chats in id order, entries under their own ids and
//! seqs.

use uuid::Uuid;

use super::{
    append::{insert_messages, Rows},
    db_count, PgStore,
};
use crate::{
    model::{member_set_key, ChatRecord, Message, Outcome},
    store::{bus, Result, StoreError},
};

impl PgStore {
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
}

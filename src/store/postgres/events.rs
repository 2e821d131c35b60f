//! Edits and deletes: an event in the log and the rewrite of its message,
//! in one transaction holding the chat's counter row.

use super::{
    append::{insert_messages, Rows},
    db_seq, message, PgStore, MESSAGE_COLUMNS,
};
use crate::{
    model::{content_digest, Append, Kind, Outcome, Refusal},
    store::{bus, Result, StoreError},
};

impl PgStore {
    /// Stores an edit or delete event and rewrites its message, in a
    /// transaction of its own that holds the chat's counter row (so its seq
    /// commits in order with the groups); or refuses it, storing nothing.
    pub(super) async fn commit_event(&self, append: Append) -> Result<Outcome> {
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
}

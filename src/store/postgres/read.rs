//! Reading: chats, last seqs, ranges of the log and History pages (cut by
//! bytes in the database).

use uuid::Uuid;

use super::{db_count, db_seq, message, shown, within_bytes, PgStore};
use crate::{
    model::{ChatRecord, Message, View},
    store::{Page, Result},
};

impl PgStore {
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

    /// See [`crate::store::Backend::page`]. Reads what is committed, whichever
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
}

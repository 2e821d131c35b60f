//! The inbox and read positions: a page of a user's chats read in order
//! from an index; unread counts with no write per recipient.

use std::collections::HashMap;

use uuid::Uuid;

use super::{db_count, db_seq, message_at, PgStore, MESSAGE_COLUMNS, PREVIEW_COLUMNS};
use crate::{
    model::{InboxEntry, Marked, ReadMark},
    store::Result,
};

impl PgStore {
    /// `user`'s inbox (see [`crate::store::Backend::inbox`]): one backward range of
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
}

/// A position's unread count, as [`PgStore::mark_read`] reports it: the
/// chat's messages after the position (`pos`) that are not deleted.
const UNREAD: &str = "(SELECT n FROM chats WHERE chat_id = $2) - pos.read_n
     - (SELECT count(*) FROM messages
        WHERE chat_id = $2 AND kind = 0 AND deleted AND seq > pos.read_seq)";

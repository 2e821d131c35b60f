//! The inbox and read state: a user's chats, most recently active first,
//! with unread counts derived from the chat's message count, the user's
//! read position and the deletions after it (no write per recipient per
//! message or delete; the order moves once per member per commit group),
//! and read receipts.

use crate::store::Backend as _;
use std::sync::Arc;

use uuid::Uuid;

use super::{acting_as, check_id, ids, invalid, wait_commit, Caller, Chats};
use crate::{
    error::Result,
    model::{InboxEntry, Kind, Message, ReadMark},
};

/// ListChats' default page.
const INBOX_PAGE: u32 = 50;
/// ...and its largest.
const INBOX_PAGE_MAX: u32 = 500;
/// The most read positions ReadState returns (a chat has at most
/// --max-members members; an open chat may have many more posters).
const READ_STATE_MAX: usize = 1000;

/// One page of a user's inbox.
#[derive(Debug)]
pub struct Inbox {
    pub chats: Vec<InboxEntry>,
    /// Empty on the last page.
    pub next_cursor: String,
}

impl Chats {
    /// One page of `user_id`'s chats (see `ListChats` in the proto).
    ///
    /// # Errors
    /// `Invalid` for a missing or bad user id or cursor,
    /// `PermissionDenied` for another user's inbox, `Store`.
    pub async fn list_chats(
        &self,
        user_id: &str,
        limit: u32,
        cursor: &str,
        caller: Caller<'_>,
    ) -> Result<Inbox> {
        let user = acting_as(caller, user_id, "ListChats", "chat.ListChats.WrongUser")?;
        if user.is_empty() {
            return Err(invalid(
                "chat.ListChats.MissingUserID",
                "user_id is required",
            ));
        }
        check_id(
            "chat.ListChats.InvalidUserID",
            "user_id",
            &user,
            &self.shared.limits,
        )?;
        let after = match cursor {
            "" => None,
            c => Some(parse_cursor(c).ok_or_else(|| {
                invalid(
                    "chat.ListChats.InvalidCursor",
                    "cursor must be the next_cursor of a ListChats response",
                )
            })?),
        };
        let limit = match limit {
            0 => INBOX_PAGE,
            n => n.min(INBOX_PAGE_MAX),
        } as usize;
        let mut chats = self.shared.store.inbox(&user, after, limit + 1).await?;
        let next_cursor = match chats.len() > limit {
            true => {
                chats.truncate(limit);
                chats
                    .last()
                    .map(|c| format!("{}.{}", c.active_us, c.chat))
                    .unwrap_or_default()
            }
            false => String::new(),
        };
        Ok(Inbox { chats, next_cursor })
    }

    /// Moves `user_id`'s read position in a chat forward (see `MarkRead` in
    /// the proto); the position now and the messages after it. Durable
    /// before it returns; a position that moved reaches the chat's event
    /// streams as a read signal.
    ///
    /// # Errors
    /// `Invalid`, `NotFound`, `PermissionDenied`, `Store`.
    pub async fn mark_read(
        &self,
        chat_id: &str,
        user_id: &str,
        seq: u64,
        caller: Caller<'_>,
    ) -> Result<(ReadMark, u64)> {
        let user = acting_as(caller, user_id, "MarkRead", "chat.MarkRead.WrongUser")?;
        if chat_id.is_empty() {
            return Err(invalid(
                "chat.MarkRead.MissingChatID",
                "chat_id is required",
            ));
        }
        if user.is_empty() {
            return Err(invalid(
                "chat.MarkRead.MissingUserID",
                "user_id is required",
            ));
        }
        check_id(
            "chat.MarkRead.InvalidUserID",
            "user_id",
            &user,
            &self.shared.limits,
        )?;
        let chat = self.chat(ids::MARK_READ_IDS, chat_id).await?;
        chat.check_member("chat.MarkRead.NotAMember", &user)?;
        let marked = self.shared.store.mark_read(&user, &chat.id, seq).await?;
        let mark = marked.mark;
        // Durable before acknowledged (sled makes it so with the next flush).
        wait_commit(self.queue_commit(None)).await?;
        // A reader of an open chat who never posted is exposed to nobody.
        if marked.moved && !marked.reader_only {
            self.signal(
                &chat,
                Message {
                    chat: chat.id,
                    user_id: user,
                    kind: Kind::Read,
                    target: mark.seq,
                    sent_at: super::now(),
                    ..Message::default()
                },
            )
            .await;
        }
        Ok((mark, marked.unread))
    }

    /// How far each member has read a chat (see `ReadState` in the proto).
    ///
    /// # Errors
    /// `Invalid`, `NotFound`, `PermissionDenied` (a verified caller who is
    /// not a member), `Store`.
    pub async fn read_state(
        &self,
        chat_id: &str,
        caller: Caller<'_>,
    ) -> Result<Vec<(String, ReadMark)>> {
        if chat_id.is_empty() {
            return Err(invalid(
                "chat.ReadState.MissingChatID",
                "chat_id is required",
            ));
        }
        let chat = self.chat(ids::READ_STATE_IDS, chat_id).await?;
        if let Some(who) = caller.filter(|w| !w.service) {
            chat.check_member("chat.ReadState.NotAMember", &who.user)?;
        }
        Ok(self
            .shared
            .store
            .read_marks(&chat.id, &chat.members, READ_STATE_MAX)
            .await?)
    }

    /// Hands a live signal (read, typing, presence) to this replica's
    /// event streams of the chat and to the other replicas.
    pub(super) async fn signal(&self, chat: &Arc<super::fanout::ChatState>, signal: Message) {
        let signal = Arc::new(signal);
        chat.signal(signal.clone());
        if let Err(e) = self.shared.store.notify(&signal).await {
            tracing::warn!(error = %e, "cannot tell other replicas of a signal");
        }
    }
}

/// The (active µs, chat) of a cursor.
fn parse_cursor(cursor: &str) -> Option<(i64, Uuid)> {
    let (at, chat) = cursor.split_once('.')?;
    Some((at.parse().ok()?, Uuid::try_parse(chat).ok()?))
}

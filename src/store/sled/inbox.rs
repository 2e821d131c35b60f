//! The inbox: each user's chats in activity order (`O` keys), read
//! positions (`I`), posters of open chats (`P`) and the chats' counters
//! (`A`, cached in memory), so that unread counts cost no write per
//! recipient.

use prost::Message as _;
use uuid::Uuid;

use super::{
    keys::*,
    values::{ActivityValue, ReadValue},
    SledStore, COUNTERS_CACHED, PREVIEW_LOOKBACK,
};
use crate::{
    model::{InboxEntry, Marked, Message, ReadMark, View},
    store::{lock, Result},
};

impl SledStore {
    /// Raises `user`'s read position in `chat` to `mark` (never lowers
    /// it); the position before, if the user had one.
    pub(super) fn raise_read(
        &self,
        user: &str,
        chat: &Uuid,
        mark: ReadMark,
        how: Raise,
    ) -> Result<Option<ReadValue>> {
        let key = inbox_key(user, chat);
        let old = self.inbox.fetch_and_update(&key, |old| {
            let mut now = match old {
                Some(v) => ReadValue::decode(v).unwrap_or_default(),
                None => ReadValue {
                    reader_only: how == Raise::Read { open: true },
                    ..ReadValue::default()
                },
            };
            if mark.seq > now.seq {
                (now.seq, now.n) = (mark.seq, mark.n);
            }
            if how == Raise::Post {
                now.reader_only = false;
            }
            Some(now.encode_to_vec())
        })?;
        old.map(|v| decode::<ReadValue>(&key, &v)).transpose()
    }

    /// `user`'s read position in `chat` (zero if none).
    pub(super) fn read_mark(&self, user: &str, chat: &Uuid) -> Result<ReadMark> {
        let key = inbox_key(user, chat);
        Ok(self
            .inbox
            .get(&key)?
            .map(|v| decode::<ReadValue>(&key, &v))
            .transpose()?
            .map(|v| ReadMark { seq: v.seq, n: v.n })
            .unwrap_or_default())
    }

    /// Moves `user`'s read position in `chat` forward to `seq` (capped to
    /// the durable end); the position now. Durable with the next commit.
    pub fn mark_read(&self, user: &str, chat: &Uuid, seq: u64) -> Result<Marked> {
        self.check_writable()?;
        let seq = seq.min(self.last_seq(chat)?);
        let n = match seq {
            0 => 0,
            seq => self.message(chat, seq)?.map_or(0, |m| m.n),
        };
        let open = self.chat(chat)?.is_some_and(|c| c.members.is_empty());
        let before = self.raise_read(user, chat, ReadMark { seq, n }, Raise::Read { open })?;
        let (mark, moved) = match &before {
            Some(b) if b.seq >= seq => (ReadMark { seq: b.seq, n: b.n }, false),
            _ => (ReadMark { seq, n }, seq > 0),
        };
        let unread = self.unread(
            chat,
            self.activity(chat)?.n,
            &ReadValue {
                seq: mark.seq,
                n: mark.n,
                reader_only: false,
            },
        )?;
        Ok(Marked {
            mark,
            unread,
            moved,
            reader_only: before.map_or(open, |b| b.reader_only),
        })
    }

    /// The read positions of `users` in `chat`, or, with none given, of
    /// everyone who has posted to it (an open chat), at most `limit`.
    pub fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, ReadMark)>> {
        let mut out = Vec::new();
        if users.is_empty() {
            for entry in self.inbox.scan_prefix(poster_prefix(chat)).take(limit) {
                let (key, _) = entry?;
                let user = String::from_utf8_lossy(&key[17..]).into_owned();
                let mark = self.read_mark(&user, chat)?;
                out.push((user, mark));
            }
        } else {
            for user in users.iter().take(limit) {
                out.push((user.clone(), self.read_mark(user, chat)?));
            }
        }
        Ok(out)
    }

    /// The chat's counters as its `A` key holds them.
    pub(super) fn counters(&self, chat: &Uuid) -> Result<ActivityValue> {
        if let Some(a) = lock(&self.counters).get(chat).cloned() {
            return Ok(a);
        }
        let key = activity_key(chat);
        let a = self
            .inbox
            .get(key)?
            .map(|v| decode::<ActivityValue>(&key, &v))
            .transpose()?
            .unwrap_or_default();
        self.remember(chat, &a);
        Ok(a)
    }

    /// Writes a chat's `A` key (`was` is what it held), moving its `O`
    /// keys if its activity moved (or writing them all, with `every_key`).
    /// New keys first, then the `A` key, then the old keys go: sled
    /// recovers a prefix of its writes, so a crash leaves at worst a key
    /// that does not match the `A` key, which the inbox skips. The caller
    /// holds `order_lock` to write, taken before any chat's seq lock (as
    /// the inbox takes it to read).
    pub(super) fn set_counters(
        &self,
        chat: &Uuid,
        was: &ActivityValue,
        now: &ActivityValue,
        every_key: bool,
    ) -> Result<()> {
        let moved = now.active_us != was.active_us;
        let listers = match moved || every_key {
            true => self.listers(chat)?,
            false => Vec::new(),
        };
        for user in &listers {
            self.inbox
                .insert(order_key(user, now.active_us, chat), &[][..])?;
        }
        self.inbox.insert(activity_key(chat), now.encode_to_vec())?;
        self.remember(chat, now);
        if moved {
            for user in &listers {
                self.inbox.remove(order_key(user, was.active_us, chat))?;
            }
        }
        Ok(())
    }

    /// Whose inbox holds the chat: its members, or an open chat's posters.
    pub(super) fn listers(&self, chat: &Uuid) -> Result<Vec<String>> {
        let members = self.chat(chat)?.map(|c| c.members).unwrap_or_default();
        if !members.is_empty() {
            return Ok(members);
        }
        let mut posters = Vec::new();
        for entry in self.inbox.scan_prefix(poster_prefix(chat)) {
            let (key, _) = entry?;
            posters.push(String::from_utf8_lossy(&key[17..]).into_owned());
        }
        Ok(posters)
    }

    /// The chat's counters as far as they are durable.
    pub(super) fn activity(&self, chat: &Uuid) -> Result<ActivityValue> {
        let mut a = self.counters(chat)?;
        // Written just before the flush that makes its group durable: while
        // that flush runs, count only what is durable. (A chat with writes
        // in flight has its seqs in memory; any other's counters are durable.)
        let in_flight = lock(&self.seqs).chats.get(chat).cloned();
        let Some(durable) = in_flight.map(|s| lock(&s).durable) else {
            return Ok(a);
        };
        if a.last_seq > durable {
            if let Some(last) = self.message(chat, durable)? {
                a.n = last.n;
                a.active_us = last.at_us;
            }
            a.last_seq = durable;
            a.last_message = a.last_message.min(durable);
        }
        Ok(a)
    }

    /// Keeps a chat's counters in memory as its `A` key now holds them.
    pub(super) fn remember(&self, chat: &Uuid, a: &ActivityValue) {
        let mut counters = lock(&self.counters);
        if counters.len() >= COUNTERS_CACHED && !counters.contains_key(chat) {
            // A cache: starting over is always correct.
            counters.clear();
        }
        counters.insert(*chat, a.clone());
    }

    /// `user`'s inbox (see [`crate::store::Backend::inbox`]): a reverse scan of
    /// the user's `O` keys from the cursor, as long as the page.
    pub fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        let _order = self.order_lock.read().unwrap_or_else(|e| e.into_inner());
        let prefix = order_prefix(user);
        let end = match after {
            Some((active, chat)) => order_key(user, active, &chat),
            None => [&prefix[..], &[0xff; 25]].concat(),
        };
        let mut out = Vec::with_capacity(limit.min(1024));
        for entry in self.inbox.range(prefix.clone()..end).rev() {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry?;
            let Some((active, chat)) = parse_order_key(&key[prefix.len()..]) else {
                continue;
            };
            if self.counters(&chat)?.active_us != active {
                continue; // left by a crash while the chat's keys moved
            }
            let key = inbox_key(user, &chat);
            let Some(read) = self.inbox.get(&key)? else {
                continue;
            };
            let read = decode::<ReadValue>(&key, &read)?;
            if read.reader_only {
                continue; // an open chat they have only read
            }
            // Entries of a chat whose creation a crash cut short.
            let Some(record) = self.chat(&chat)? else {
                continue;
            };
            let a = self.activity(&chat)?;
            out.push(InboxEntry {
                chat,
                members: record.members,
                last_message: self.preview(&chat, a.last_message)?,
                last_seq: a.last_seq,
                unread: self.unread(&chat, a.n, &read)?,
                read_seq: read.seq,
                // The key's: the page's order and its cursor.
                active_us: active,
            });
        }
        Ok(out)
    }

    /// The messages after a read position that are not deleted: the
    /// chat's message count less the count at the position, less the
    /// deleted ones after it (a range of `X` keys, usually empty).
    pub(super) fn unread(&self, chat: &Uuid, messages: u64, read: &ReadValue) -> Result<u64> {
        let from = gone_key(chat, read.seq.saturating_add(1));
        let to = gone_key(chat, u64::MAX);
        let mut deleted = 0;
        for entry in self.db.range(from..=to) {
            entry?;
            deleted += 1;
        }
        Ok(messages.saturating_sub(read.n).saturating_sub(deleted))
    }

    /// The newest message at or before `seq` that is not deleted, looking
    /// back at most [`PREVIEW_LOOKBACK`] entries.
    pub(super) fn preview(&self, chat: &Uuid, seq: u64) -> Result<Option<Message>> {
        let first = seq.saturating_sub(PREVIEW_LOOKBACK).max(1);
        for seq in (first..=seq).rev() {
            if let Some(m) = self.message(chat, seq)? {
                if m.shown(View::MESSAGES) {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }
}

/// What moves a read position (see [`SledStore::raise_read`]).
#[derive(Clone, Copy, PartialEq)]
pub(super) enum Raise {
    /// The user posted: the chat is theirs (in their inbox) from now on.
    Post,
    /// MarkRead, in an open chat or not.
    Read { open: bool },
}

//! Reading: every read stops at the chat's durable seq, so nothing a
//! crash could lose is shown.

use uuid::Uuid;

use super::{keys::*, values::MessageValue, SledStore};
use crate::{
    model::{Message, View},
    store::{lock, Page, Result},
};

impl SledStore {
    /// The highest durable seq of the chat (0 for none).
    pub fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        if let Some(s) = lock(&self.seqs).chats.get(chat) {
            return Ok(lock(s).durable);
        }
        self.stored_last_seq(chat)
    }

    /// The highest seq written to the chat, durable or not.
    pub(super) fn stored_last_seq(&self, chat: &Uuid) -> Result<u64> {
        let prefix = message_prefix(chat);
        match self.db.scan_prefix(prefix).next_back() {
            Some(entry) => Ok(seq_of_key(&entry?.0)),
            None => Ok(0),
        }
    }

    pub(super) fn message(&self, chat: &Uuid, seq: u64) -> Result<Option<Message>> {
        let key = message_key(chat, seq);
        Ok(self
            .db
            .get(key)?
            .map(|v| decode::<MessageValue>(&key, &v))
            .transpose()?
            .map(Message::from))
    }

    /// Durable messages with `first <= seq <= last`, oldest first, at most
    /// `limit`. Seqs are gap-free, so this is point lookups of known keys: in
    /// sled 0.34 that is cheaper than its range iterator, which copies a tree
    /// node per step (measured with chat-bench scenario 4).
    pub fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>> {
        let last = last.min(self.last_seq(chat)?);
        Ok(self
            .read_known(chat, first..=last, limit, max_bytes, false, View::ALL)?
            .0)
    }

    /// As [`SledStore::read`], for a range already known durable, of the
    /// entries `view` shows; with `newest`, the end of the range is kept
    /// when the limits cut it. Also whether more such entries are in the
    /// range past the ones returned.
    pub(super) fn read_known(
        &self,
        chat: &Uuid,
        seqs: std::ops::RangeInclusive<u64>,
        limit: usize,
        max_bytes: usize,
        newest: bool,
        view: View,
    ) -> Result<(Vec<Message>, bool)> {
        let mut page = Vec::new();
        let mut fits = crate::model::within_bytes(max_bytes);
        let order: Box<dyn Iterator<Item = u64>> = match newest {
            true => Box::new(seqs.rev()),
            false => Box::new(seqs),
        };
        let mut more = false;
        for seq in order {
            let key = message_key(chat, seq);
            let Some(v) = self.db.get(key)? else {
                // Past the end (or a hole that a crash left): stop here.
                break;
            };
            let msg: Message = decode::<MessageValue>(&key, &v)?.into();
            if !msg.shown(view) {
                continue;
            }
            if page.len() >= limit || !fits(&msg) {
                more = true;
                break;
            }
            page.push(msg);
        }
        if newest {
            page.reverse();
        }
        Ok((page, more))
    }

    /// One History page (see [`crate::store::Backend::page`]).
    pub fn page(
        &self,
        chat: &Uuid,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
        view: View,
    ) -> Result<Page> {
        let durable = self.last_seq(chat)?;
        let (messages, has_more) = match after {
            Some(after) => {
                let first = after.saturating_add(1);
                self.read_known(chat, first..=durable, limit, max_bytes, false, view)?
            }
            None => {
                // Seqs are gap-free 1..=durable: the newest first, back to 1.
                let last = before.map_or(durable, |b| durable.min(b.saturating_sub(1)));
                self.read_known(chat, 1..=last, limit, max_bytes, true, view)?
            }
        };
        Ok(Page { messages, has_more })
    }
}

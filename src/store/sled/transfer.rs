//! Export and import: chats in id order, and entries stored under their
//! own ids and seqs.

use prost::Message as _;
use uuid::Uuid;

use super::{
    keys::*,
    values::{ActivityValue, ChatValue, MessageValue, ReadValue},
    SledStore,
};
use crate::{
    model::{ChatRecord, Kind, Message},
    store::{lock, Result, StoreError},
};

impl SledStore {
    pub fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, ChatRecord)>> {
        let start = match after {
            // The smallest key after the chat's own.
            Some(chat) => [&chat_key(&chat)[..], &[0]].concat(),
            None => vec![CHAT],
        };
        let mut out = Vec::new();
        for entry in self.db.range(start..) {
            let (key, value) = entry?;
            if key.first() != Some(&CHAT) || out.len() >= limit {
                break;
            }
            let Ok(id) = Uuid::from_slice(&key[1..]) else {
                continue;
            };
            out.push((id, decode::<ChatValue>(&key, &value)?.into()));
        }
        Ok(out)
    }

    pub fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        if self.db.contains_key(chat_key(&id))? {
            return Ok(());
        }
        let key = (!record.members.is_empty()).then(|| members_key(&record.members));
        if let Some(key) = &key {
            let _one_at_a_time = lock(&self.new_lock);
            if let Some(other) = self.db.get(key)?.and_then(|v| Uuid::from_slice(&v).ok()) {
                return Err(StoreError::Config(format!(
                    "chat {id}: its member set already belongs to chat {other}"
                )));
            }
            return self.insert_chat(&id, record, Some(key));
        }
        self.insert_chat(&id, record, None)
    }

    pub fn import_messages(&self, messages: Vec<Message>) -> Result<()> {
        let mut chats = std::collections::HashSet::new();
        // Whether the chat of the messages so far is open (an import's
        // messages come chat by chat).
        let mut open = false;
        for m in messages {
            if self.db.contains_key(message_key(&m.chat, m.seq))? {
                continue;
            }
            // Key first, as `stage` does: a message never exists without it.
            self.db.insert(
                dedupe_key(&m.chat, &m.user_id, &m.client_id),
                &m.seq.to_be_bytes()[..],
            )?;
            self.db.insert(
                message_key(&m.chat, m.seq),
                MessageValue::from(&m).encode_to_vec(),
            )?;
            if m.kind == Kind::Message && m.deleted {
                self.db.insert(gone_key(&m.chat, m.seq), &[][..])?;
            }
            if m.kind == Kind::Edit {
                // Its message lists it, so that a delete clears it too.
                let key = message_key(&m.chat, m.target);
                if let Some(v) = self.db.get(key)? {
                    let mut target = decode::<MessageValue>(&key, &v)?;
                    target.edits.push(m.seq);
                    self.db.insert(key, target.encode_to_vec())?;
                }
            }
            if !chats.contains(&m.chat) {
                open = self.chat(&m.chat)?.is_some_and(|c| c.members.is_empty());
            }
            if open && m.kind == Kind::Message {
                // An open chat's posters have it in their inbox.
                let key = inbox_key(&m.user_id, &m.chat);
                if !self.inbox.contains_key(&key)? {
                    self.inbox
                        .insert(key, ReadValue::default().encode_to_vec())?;
                    self.inbox
                        .insert(poster_key(&m.chat, &m.user_id), &[][..])?;
                }
            }
            chats.insert(m.chat);
        }
        for chat in chats {
            // Seqs and counters are read from the log again.
            lock(&self.seqs).chats.remove(&chat);
            let last = self.stored_last_seq(&chat)?;
            if let Some(newest) = self.message(&chat, last)? {
                let a = ActivityValue {
                    last_seq: last,
                    n: newest.n,
                    active_us: newest.at_us,
                    last_message: last,
                };
                // Posters added above have no `O` key yet: all written.
                let _order = self.order_lock.write().unwrap_or_else(|e| e.into_inner());
                self.set_counters(&chat, &self.counters(&chat)?, &a, true)?;
            }
        }
        Ok(())
    }
}

//! Writing: chats, and appends in two steps (staged in the sender's task
//! under the chat's append lock, made durable by one flush per group), with
//! the rewrites of edits and deletes settled in seq order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use prost::Message as _;
use uuid::Uuid;

use super::{
    inbox::Raise,
    keys::*,
    values::{ActivityValue, ChatValue, MessageValue, ReadValue},
    ChatSeqs, SledStore, SWEEP_AT,
};
use crate::{
    model::{content_digest, Append, ChatRecord, Kind, Message, Outcome, ReadMark, Refusal},
    store::{lock, Result, Staged, StoreError},
};

impl SledStore {
    pub fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        let key = chat_key(chat);
        Ok(self
            .db
            .get(key)?
            .map(|v| decode::<ChatValue>(&key, &v))
            .transpose()?
            .map(ChatRecord::from))
    }

    /// The chat of `record.members` (a new one if the set has none yet, or
    /// for an open chat). Durable only after the next [`SledStore::commit`].
    pub fn create_chat(&self, id: Uuid, record: &ChatRecord) -> Result<Uuid> {
        self.check_writable()?;
        if record.members.is_empty() {
            self.insert_chat(&id, record, None)?;
            return Ok(id);
        }
        let key = members_key(&record.members);
        let _one_at_a_time = lock(&self.new_lock);
        if let Some(chat) = self.db.get(&key)?.and_then(|v| Uuid::from_slice(&v).ok()) {
            return Ok(chat);
        }
        self.insert_chat(&id, record, Some(&key))?;
        Ok(id)
    }

    pub(super) fn insert_chat(
        &self,
        chat: &Uuid,
        record: &ChatRecord,
        members_key: Option<&[u8]>,
    ) -> Result<()> {
        let value = ChatValue {
            members: record.members.clone(),
            created_at: record.created_at,
            created_us: record.created_us,
        };
        // The inbox entries first: a crash in between leaves entries of no
        // chat, which the inbox skips, never a chat missing from an inbox.
        let mut inbox = sled::Batch::default();
        for user in &record.members {
            inbox.insert(inbox_key(user, chat), ReadValue::default().encode_to_vec());
            inbox.insert(order_key(user, record.created_us, chat), &[][..]);
        }
        let activity = ActivityValue {
            active_us: record.created_us,
            ..ActivityValue::default()
        };
        inbox.insert(&activity_key(chat)[..], activity.encode_to_vec());
        self.inbox.apply_batch(inbox)?;
        self.remember(chat, &activity);
        let mut batch = sled::Batch::default();
        batch.insert(&chat_key(chat)[..], value.encode_to_vec());
        if let Some(key) = members_key {
            batch.insert(key, &chat.as_bytes()[..]);
        }
        self.db.apply_batch(batch)?;
        Ok(())
    }

    /// The chat's seq state, loaded from the store on first use.
    pub(super) fn chat_seqs(&self, chat: &Uuid) -> Result<Arc<Mutex<ChatSeqs>>> {
        let mut seqs = lock(&self.seqs);
        if let Some(s) = seqs.chats.get(chat) {
            return Ok(s.clone());
        }
        // Nothing of this chat is in flight (an in-flight message keeps its
        // state), so what the store holds is durable.
        let last = self.stored_last_seq(chat)?;
        let messages = match last {
            0 => 0,
            seq => self.message(chat, seq)?.map_or(0, |m| m.n),
        };
        let key = activity_key(chat);
        let counters = match self.inbox.get(key)? {
            Some(v) => decode::<ActivityValue>(&key, &v)?,
            None => ActivityValue::default(),
        };
        let state = Arc::new(Mutex::new(ChatSeqs {
            written: last,
            durable: last,
            messages,
            counters,
        }));
        if seqs.chats.len() >= seqs.sweep_at {
            // Forget chats with nothing in flight that nobody holds; grow
            // the threshold so a map full of busy chats is not swept per insert.
            seqs.chats.retain(|_, s| {
                Arc::strong_count(s) > 1 || {
                    let s = lock(s);
                    s.written != s.durable
                }
            });
            seqs.sweep_at = SWEEP_AT.max(seqs.chats.len() * 2);
        }
        seqs.chats.insert(*chat, state.clone());
        Ok(state)
    }

    /// Writes a message under the next seq of its chat (or finds the one
    /// already stored under its idempotency key). Not yet durable.
    pub fn stage(&self, append: Append) -> Result<Staged> {
        self.check_writable()?;
        let Append {
            message: mut msg,
            dedupe,
        } = append;
        let state = self.chat_seqs(&msg.chat)?;
        let mut seqs = lock(&state);
        let seq = seqs.written + 1;
        if dedupe {
            if let Some(stored) = self.claim(&msg.chat, &msg.user_id, &msg.client_id, seq)? {
                let same = stored.kind == msg.kind
                    && stored.target == msg.target
                    && stored.same_content(&msg.subject, &msg.text);
                return Ok(Staged::Existing { stored, same });
            }
        }
        msg.seq = seq;
        if msg.kind != Kind::Message {
            let key = dedupe.then(|| dedupe_key(&msg.chat, &msg.user_id, &msg.client_id));
            let staged = self.stage_event(msg, seqs.messages)?;
            match (&staged, key) {
                (Staged::Event { .. }, _) => seqs.written = seq,
                // Nothing stored: the idempotency key claimed for it goes.
                (_, Some(key)) => {
                    self.db.remove(key)?;
                }
                _ => {}
            }
            return Ok(staged);
        }
        msg.n = seqs.messages + 1;
        self.db.insert(
            message_key(&msg.chat, seq),
            MessageValue::from(&msg).encode_to_vec(),
        )?;
        seqs.written = seq;
        seqs.messages = msg.n;
        Ok(Staged::Written(msg))
    }

    /// Stores an edit or delete event under its seq and rewrites its
    /// message, in one batch; or refuses it. The caller holds the chat's
    /// append lock, so the message cannot change in between.
    pub(super) fn stage_event(&self, mut event: Message, messages: u64) -> Result<Staged> {
        let Some(mut target) = self.current(&event.chat, event.target)? else {
            return Ok(Staged::Refused(Refusal::NoSuchMessage));
        };
        if target.kind != Kind::Message.number() {
            return Ok(Staged::Refused(Refusal::NoSuchMessage));
        }
        if target.user_id != event.user_id {
            let sender = target.user_id.clone();
            return Ok(Staged::Refused(Refusal::NotTheSender(sender)));
        }
        if target.deleted && event.kind == Kind::Edit {
            return Ok(Staged::Refused(Refusal::Deleted));
        }
        if event.kind == Kind::Edit && target.edits.len() >= crate::model::MAX_EDITS {
            return Ok(Staged::Refused(Refusal::TooManyEdits));
        }
        event.n = messages;
        if target.original.is_empty() {
            target.original = content_digest(&target.id, &target.subject, &target.text);
        }
        let (chat, at) = (event.chat, event.seq);
        let mut batch = sled::Batch::default();
        let mut rewritten = vec![event.target];
        match event.kind {
            Kind::Edit => {
                target.subject.clone_from(&event.subject);
                target.text.clone_from(&event.text);
                target.edited_at = event.sent_at;
                target.edits.push(event.seq);
            }
            _ => {
                target.subject.clear();
                target.text.clear();
                target.deleted = true;
                for seq in std::mem::take(&mut target.edits) {
                    if let Some(mut edit) = self.current(&chat, seq)? {
                        if edit.original.is_empty() {
                            edit.original = content_digest(&edit.id, &edit.subject, &edit.text);
                        }
                        edit.subject.clear();
                        edit.text.clear();
                        edit.deleted = true;
                        batch.insert(&pending_key(&chat, seq, at)[..], edit.encode_to_vec());
                        rewritten.push(seq);
                    }
                }
            }
        }
        batch.insert(
            &pending_key(&chat, event.target, at)[..],
            target.encode_to_vec(),
        );
        batch.insert(
            &message_key(&chat, at)[..],
            MessageValue::from(&event).encode_to_vec(),
        );
        self.db.apply_batch(batch)?;
        Ok(Staged::Event {
            event,
            target: Box::new(target.into()),
            rewritten,
        })
    }

    /// An entry as the next change must see it: its newest pending
    /// rewrite (see the module docs), else the stored value.
    pub(super) fn current(&self, chat: &Uuid, seq: u64) -> Result<Option<MessageValue>> {
        if seq == 0 {
            return Ok(None);
        }
        if let Some(entry) = self.db.scan_prefix(pending_prefix(chat, seq)).next_back() {
            let (key, value) = entry?;
            return decode::<MessageValue>(&key, &value).map(Some);
        }
        let key = message_key(chat, seq);
        self.db
            .get(key)?
            .map(|v| decode::<MessageValue>(&key, &v))
            .transpose()
    }

    /// Puts the rewrites of the change at seq `at` over the entries they
    /// rewrite, once the change is durable (each in one batch with the
    /// removal of its pending keys, so a crash leaves one or the other).
    ///
    /// Changes are settled in the order their commit answers come, which
    /// need not be seq order (a sender takes its queue place after it
    /// leaves the chat's append lock). So an entry takes the newest of its
    /// rewrites by changes up to `at` (all durable: staged before `at`),
    /// and those go; a rewrite by a newer change stays pending, and an
    /// older change settled later finds nothing left to do. An entry thus
    /// only ever moves forward in seq order, and [`SledStore::current`]
    /// (the newest pending rewrite) is always built on every change before it.
    pub(super) fn settle(&self, chat: &Uuid, at: u64, rewritten: &[u64]) -> Result<()> {
        for &seq in rewritten {
            let mut batch = sled::Batch::default();
            let mut newest = None;
            for entry in self.db.scan_prefix(pending_prefix(chat, seq)) {
                let (key, value) = entry?;
                if key.len() != 33 || seq_of_value(&key[25..]) > at {
                    break; // in `at` order: the rest are newer changes
                }
                batch.remove(key);
                newest = Some(value);
            }
            if let Some(value) = newest {
                if is_deleted_message(&value) {
                    batch.insert(&gone_key(chat, seq)[..], &[][..]);
                }
                batch.insert(&message_key(chat, seq)[..], value);
                self.db.apply_batch(batch)?;
            }
        }
        Ok(())
    }

    /// The seqs of the entries the change at `at` still has pending rewrites of.
    pub(super) fn pending_of(&self, chat: &Uuid, at: u64) -> Result<Vec<u64>> {
        let mut prefix = [0; 17];
        prefix[0] = PENDING;
        prefix[1..].copy_from_slice(chat.as_bytes());
        let mut seqs = Vec::new();
        for entry in self.db.scan_prefix(prefix) {
            let (key, _) = entry?;
            if key.len() == 33 && seq_of_value(&key[25..]) == at {
                seqs.push(seq_of_value(&key[17..25]));
            }
        }
        Ok(seqs)
    }

    /// Settles every rewrite a crash left pending (at open): they were
    /// flushed with their change, which may have been acknowledged.
    pub(super) fn settle_all(&self) -> Result<()> {
        let mut settled = 0;
        for entry in self.db.scan_prefix([PENDING]) {
            let (key, value) = entry?;
            if key.len() != 33 {
                continue;
            }
            let Ok(chat) = Uuid::from_slice(&key[1..17]) else {
                continue;
            };
            let seq = seq_of_value(&key[17..25]);
            let mut batch = sled::Batch::default();
            if is_deleted_message(&value) {
                batch.insert(&gone_key(&chat, seq)[..], &[][..]);
            }
            batch.insert(&message_key(&chat, seq)[..], value);
            batch.remove(key);
            self.db.apply_batch(batch)?;
            settled += 1;
        }
        if settled > 0 {
            self.db.flush()?;
            tracing::info!(settled, "settled edits and deletions a crash left pending");
        }
        Ok(())
    }

    /// One flush makes everything staged so far durable (group commit),
    /// with the group's counters: per chat its activity, per sender its
    /// read position (one write each per group, not per message or recipient).
    pub async fn commit(&self, batch: Vec<Staged>) -> Result<Vec<Outcome>> {
        let mut out = Vec::with_capacity(batch.len());
        // The highest seq written per chat: one durable-seq update per chat.
        let mut durable: HashMap<Uuid, u64> = HashMap::new();
        let mut activity: HashMap<Uuid, ActivityValue> = HashMap::new();
        let mut read: HashMap<(Uuid, &str), ReadMark> = HashMap::new();
        for staged in &batch {
            let entry = match staged {
                Staged::Written(m) | Staged::Event { event: m, .. } => m,
                _ => continue,
            };
            let a = activity.entry(entry.chat).or_default();
            if entry.seq > a.last_seq {
                a.last_seq = entry.seq;
                a.n = entry.n;
                a.active_us = entry.at_us;
            }
            if entry.kind == Kind::Message {
                a.last_message = a.last_message.max(entry.seq);
                let r = read.entry((entry.chat, &entry.user_id)).or_default();
                if entry.seq > r.seq {
                    *r = ReadMark {
                        seq: entry.seq,
                        n: entry.n,
                    };
                }
            }
        }
        // Blind writes (no read first): this task is their only writer,
        // and it keeps the last one written in memory. A group may hold
        // lower seqs than the one before (a sender staged before another
        // but queued after it): counters only move forward.
        let order = self.order_lock.write().unwrap_or_else(|e| e.into_inner());
        for (chat, a) in activity {
            let state = self.chat_seqs(&chat)?;
            let mut seqs = lock(&state);
            let mut now = seqs.counters.clone();
            if a.last_seq > now.last_seq {
                (now.last_seq, now.n, now.active_us) = (a.last_seq, a.n, a.active_us);
            }
            now.last_message = now.last_message.max(a.last_message);
            if now != seqs.counters {
                self.set_counters(&chat, &seqs.counters, &now, false)?;
                seqs.counters = now;
            }
        }
        drop(order);
        for ((chat, user), mark) in read {
            let before = self.raise_read(user, &chat, mark, Raise::Post)?;
            if before.is_none_or(|b| b.reader_only) {
                // A first post: to an open chat (members have theirs from New).
                self.inbox.insert(poster_key(&chat, user), &[][..])?;
                let active = self.counters(&chat)?.active_us;
                self.inbox.insert(order_key(user, active, &chat), &[][..])?;
            }
        }
        self.flush().await?;
        for staged in batch {
            out.push(match staged {
                Staged::Written(msg) => {
                    let d = durable.entry(msg.chat).or_default();
                    *d = (*d).max(msg.seq);
                    Outcome::Stored(msg)
                }
                Staged::Event {
                    event,
                    target,
                    rewritten,
                } => {
                    let d = durable.entry(event.chat).or_default();
                    *d = (*d).max(event.seq);
                    self.settle(&event.chat, event.seq, &rewritten)?;
                    Outcome::Event { event, target }
                }
                Staged::Refused(why) => Outcome::Refused(why),
                Staged::Existing { stored, same } => {
                    // Written before this flush (maybe by a send whose own
                    // flush failed): durable now, and so is all before it.
                    let d = durable.entry(stored.chat).or_default();
                    *d = (*d).max(stored.seq);
                    if stored.kind != Kind::Message {
                        // A change whose first commit failed: its rewrites too.
                        let rewritten = self.pending_of(&stored.chat, stored.seq)?;
                        self.settle(&stored.chat, stored.seq, &rewritten)?;
                    }
                    Outcome::Existing { stored, same }
                }
                Staged::Deferred(a) => {
                    return Err(StoreError::Config(format!(
                        "message {} was staged by another backend",
                        a.message.id
                    )))
                }
            });
        }
        let seqs = lock(&self.seqs);
        for (chat, seq) in durable {
            if let Some(state) = seqs.chats.get(&chat) {
                let mut s = lock(state);
                s.durable = s.durable.max(seq);
            }
        }
        Ok(out)
    }

    /// Claims the idempotency key (chat, user, client_id) for a message
    /// about to be appended at `seq`, or returns the message already stored
    /// under it. A key left stale by a crash (see the module docs) is
    /// claimed anew. The caller holds the chat's append lock.
    pub(super) fn claim(
        &self,
        chat: &Uuid,
        user_id: &str,
        client_id: &str,
        seq: u64,
    ) -> Result<Option<Message>> {
        let key = dedupe_key(chat, user_id, client_id);
        let new = seq.to_be_bytes();
        let Err(taken) = self
            .db
            .compare_and_swap(&key, None::<&[u8]>, Some(&new[..]))?
        else {
            return Ok(None);
        };
        let stored = match taken.current {
            Some(old) => self
                .message(chat, seq_of_value(&old))?
                .filter(|m| m.user_id == user_id && m.client_id == client_id),
            None => None,
        };
        if stored.is_none() {
            self.db.insert(key, &new[..])?;
        }
        Ok(stored)
    }
}

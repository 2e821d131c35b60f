//! Upgrades of data written by older layouts (the `V` key), once, at open.

use prost::Message as _;
use uuid::Uuid;

use super::{
    keys::*,
    values::{ActivityValue, ChatValue, ReadValue},
    SledStore, LAYOUT, VERSION,
};
use crate::{model::ChatRecord, store::Result};

impl SledStore {
    /// Writes the `I`, `P` and `A` keys of chats stored before they existed
    /// (layout 1), once: members' inbox entries, open chats' posters (from
    /// their idempotency keys) and every chat's counters.
    pub(super) fn upgrade(&self) -> Result<()> {
        let version = self.db.get(VERSION)?.map(|v| seq_of_value(&v) as u32);
        if version.is_some_and(|v| v >= LAYOUT) {
            return Ok(());
        }
        if version.is_none_or(|v| v < 2) {
            self.upgrade_to_2()?;
        }
        if version.is_none_or(|v| v < 3) {
            // The `X` keys of the messages deleted before they existed.
            for entry in self.db.scan_prefix([MESSAGE]) {
                let (key, value) = entry?;
                if key.len() == 25 && is_deleted_message(&value) {
                    let chat = Uuid::from_slice(&key[1..17]).unwrap_or_default();
                    self.db.insert(gone_key(&chat, seq_of_key(&key)), &[][..])?;
                }
            }
        }
        // Layout 4: the `O` keys of every inbox entry.
        for entry in self.inbox.scan_prefix([INBOX]) {
            let (key, value) = entry?;
            let Some(user_len) = key
                .get(1..3)
                .map(|l| u16::from_be_bytes([l[0], l[1]]) as usize)
            else {
                continue;
            };
            let (Some(user), Ok(chat)) = (
                key.get(3..3 + user_len),
                Uuid::from_slice(key.get(3 + user_len..).unwrap_or_default()),
            ) else {
                continue;
            };
            if decode::<ReadValue>(&key, &value)?.reader_only {
                continue;
            }
            let user = String::from_utf8_lossy(user);
            let active = self.counters(&chat)?.active_us;
            self.inbox
                .insert(order_key(&user, active, &chat), &[][..])?;
        }
        self.db
            .insert(VERSION, &u64::from(LAYOUT).to_be_bytes()[..])?;
        self.db.flush()?;
        Ok(())
    }

    /// Layout 2: the `I`, `P` and `A` keys of chats stored before they
    /// existed (layout 1).
    pub(super) fn upgrade_to_2(&self) -> Result<()> {
        let mut open = std::collections::HashSet::new();
        for entry in self.db.scan_prefix([CHAT]) {
            let (key, value) = entry?;
            let Ok(chat) = Uuid::from_slice(&key[1..]) else {
                continue;
            };
            let record = ChatRecord::from(decode::<ChatValue>(&key, &value)?);
            for user in &record.members {
                let key = inbox_key(user, &chat);
                if !self.inbox.contains_key(&key)? {
                    self.inbox
                        .insert(key, ReadValue::default().encode_to_vec())?;
                }
            }
            if record.members.is_empty() {
                open.insert(chat);
            }
            let last = self.stored_last_seq(&chat)?;
            let newest = match last {
                0 => None,
                seq => self.message(&chat, seq)?,
            };
            let a = ActivityValue {
                last_seq: last,
                n: newest.as_ref().map_or(0, |m| m.n),
                active_us: newest.map_or(record.created_us, |m| m.at_us),
                last_message: last,
            };
            self.inbox.insert(activity_key(&chat), a.encode_to_vec())?;
        }
        for entry in self.db.scan_prefix([DEDUPE]) {
            let (key, _) = entry?;
            let Some((chat, user)) = parse_dedupe_key(&key) else {
                continue;
            };
            if open.contains(&chat) {
                let key = inbox_key(&user, &chat);
                if !self.inbox.contains_key(&key)? {
                    self.inbox
                        .insert(key, ReadValue::default().encode_to_vec())?;
                }
                self.inbox.insert(poster_key(&chat, &user), &[][..])?;
            }
        }
        Ok(())
    }
}

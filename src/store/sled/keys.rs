//! The sled backend's keys: the first byte of each, and how each is
//! built and read back (the layout is in the module docs of `store::sled`).

use prost::Message as _;
use uuid::Uuid;

use super::values::MessageValue;
use crate::{
    model::{member_set_key, Kind},
    store::{Result, StoreError},
};

pub(super) const CHAT: u8 = b'C';
pub(super) const MESSAGE: u8 = b'M';
pub(super) const DEDUPE: u8 = b'D';
pub(super) const MEMBERS: u8 = b'U';
pub(super) const PENDING: u8 = b'Q';
pub(super) const GONE: u8 = b'X';
pub(super) const INBOX: u8 = b'I';
pub(super) const POSTER: u8 = b'P';
pub(super) const ACTIVITY: u8 = b'A';
pub(super) const ORDER: u8 = b'O';

/// The `X` key of the deleted message at `seq`.
pub(super) fn gone_key(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = message_key(chat, seq);
    key[0] = GONE;
    key
}

/// Whether a stored entry is a deleted message (not an event).
pub(super) fn is_deleted_message(value: &[u8]) -> bool {
    MessageValue::decode(value).is_ok_and(|v| v.deleted && v.kind == Kind::Message.number())
}

/// The `Q` keys rewriting the entry at `seq`.
pub(super) fn pending_prefix(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = message_key(chat, seq);
    key[0] = PENDING;
    key
}

/// The `Q` key of the rewrite of the entry at `seq` by the change at `at`.
pub(super) fn pending_key(chat: &Uuid, seq: u64, at: u64) -> [u8; 33] {
    let mut key = [0; 33];
    key[..25].copy_from_slice(&pending_prefix(chat, seq));
    key[25..].copy_from_slice(&at.to_be_bytes());
    key
}

/// The prefix of a user's `I` keys.
pub(super) fn inbox_prefix(user: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + user.len() + 16);
    key.push(INBOX);
    key.extend_from_slice(&(user.len() as u16).to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key
}

pub(super) fn inbox_key(user: &str, chat: &Uuid) -> Vec<u8> {
    let mut key = inbox_prefix(user);
    key.extend_from_slice(chat.as_bytes());
    key
}

/// The prefix of a user's `O` keys.
pub(super) fn order_prefix(user: &str) -> Vec<u8> {
    let mut key = inbox_prefix(user);
    key[0] = ORDER;
    key
}

/// A user's `O` key of a chat active at `active` µs.
pub(super) fn order_key(user: &str, active: i64, chat: &Uuid) -> Vec<u8> {
    let mut key = order_prefix(user);
    key.extend_from_slice(&((active as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(chat.as_bytes());
    key
}

/// The (active, chat) of an `O` key's part after the user's prefix.
pub(super) fn parse_order_key(rest: &[u8]) -> Option<(i64, Uuid)> {
    let active = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) ^ (1 << 63);
    Some((active as i64, Uuid::from_slice(rest.get(8..)?).ok()?))
}

pub(super) fn poster_prefix(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = POSTER;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

pub(super) fn poster_key(chat: &Uuid, user: &str) -> Vec<u8> {
    [&poster_prefix(chat)[..], user.as_bytes()].concat()
}

pub(super) fn activity_key(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = ACTIVITY;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

/// The chat and user of a `D` key.
pub(super) fn parse_dedupe_key(key: &[u8]) -> Option<(Uuid, String)> {
    let chat = Uuid::from_slice(key.get(1..17)?).ok()?;
    let len = u16::from_be_bytes(key.get(17..19)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(key.get(19..19 + len)?).ok()?;
    Some((chat, user.to_owned()))
}

/// The `U` key of a member set.
pub(super) fn members_key(members: &[String]) -> Vec<u8> {
    let mut key = vec![MEMBERS];
    key.extend_from_slice(&member_set_key(members));
    key
}

pub(super) fn chat_key(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = CHAT;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

pub(super) fn message_prefix(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = MESSAGE;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

pub(super) fn message_key(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = [0; 25];
    key[..17].copy_from_slice(&message_prefix(chat));
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

pub(super) fn dedupe_key(chat: &Uuid, user_id: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(19 + user_id.len() + client_id.len());
    key.push(DEDUPE);
    key.extend_from_slice(chat.as_bytes());
    key.extend_from_slice(&(user_id.len() as u16).to_be_bytes());
    key.extend_from_slice(user_id.as_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

/// The seq in the last 8 bytes of a message key.
pub(super) fn seq_of_key(key: &[u8]) -> u64 {
    seq_of_value(&key[key.len().saturating_sub(8)..])
}

/// A big-endian u64; anything that is not 8 bytes reads as 0 (never written).
pub(super) fn seq_of_value(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub(super) fn decode<T: prost::Message + Default>(key: &[u8], value: &[u8]) -> Result<T> {
    T::decode(value).map_err(|source| StoreError::Corrupt {
        key: key.to_vec(),
        source,
    })
}

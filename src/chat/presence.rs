//! Presence and typing: live state, never stored and never written inside
//! a message transaction.
//!
//! A member is present in a chat while one of their Connect streams to it
//! is open, on any replica. Each replica counts its own streams; the first
//! one a user opens and the last one they close are a join and a leave,
//! told to this replica's event streams and, over the bus, to the others.
//! Every third of `--presence-ttl` a replica repeats who is present on it
//! (in chunked notifications: no row, no message per user), and a replica
//! forgets another's users `--presence-ttl` after it last heard of them: a
//! replica that dies takes its users' presence with it within that time.
//!
//! Typing is a signal at most once per user and chat every [`TYPING_EVERY`].

use crate::store::Backend as _;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;
use uuid::Uuid;

use super::{acting_as, check_id, fanout::ChatState, ids, invalid, Caller, Chats};
use crate::{
    error::{Error, Result},
    model::{Kind, Message},
    store::lock,
};

/// At most one typing signal per user and chat this often.
const TYPING_EVERY: Duration = Duration::from_secs(3);

/// Who is present where, as this replica knows it.
#[derive(Default)]
pub(super) struct Presence {
    /// Per chat and user: this replica's open streams.
    local: HashMap<Uuid, HashMap<String, usize>>,
    /// Per chat and user: the other replicas that have them, until when.
    remote: HashMap<Uuid, HashMap<String, HashMap<u64, Instant>>>,
    /// When each user last typed in each chat (swept when it doubles).
    typed: HashMap<(Uuid, String), Instant>,
    typed_sweep_at: usize,
}

impl Presence {
    fn here(&self, chat: &Uuid, user: &str) -> bool {
        self.local.get(chat).is_some_and(|u| u.contains_key(user))
    }

    fn elsewhere(&self, chat: &Uuid, user: &str) -> bool {
        self.remote
            .get(chat)
            .and_then(|u| u.get(user))
            .is_some_and(|r| !r.is_empty())
    }

    fn anywhere(&self, chat: &Uuid, user: &str) -> bool {
        self.here(chat, user) || self.elsewhere(chat, user)
    }
}

/// Presence and typing state and switches, shared by every clone of [`Chats`].
pub(super) struct PresenceState {
    pub(super) presence_on: bool,
    pub(super) typing_on: bool,
    /// How long another replica's users stay present unheard of.
    pub(super) ttl: Duration,
    pub(super) state: Mutex<Presence>,
}

impl PresenceState {
    pub(super) fn new(presence_on: bool, typing_on: bool, ttl: Duration) -> PresenceState {
        PresenceState {
            presence_on,
            typing_on,
            ttl,
            state: Mutex::new(Presence {
                typed_sweep_at: 1024,
                ..Presence::default()
            }),
        }
    }
}

/// Held by a stream while it counts towards its user's presence; the
/// drop is the stream closing.
pub struct Present {
    chats: Chats,
    chat: Arc<ChatState>,
    user: String,
}

impl Drop for Present {
    fn drop(&mut self) {
        let left = {
            let mut p = lock(&self.chats.shared.presence.state);
            let users = p.local.entry(self.chat.id).or_default();
            let count = users.entry(self.user.clone()).or_default();
            *count = count.saturating_sub(1);
            let last = *count == 0;
            if last {
                users.remove(&self.user);
                if users.is_empty() {
                    p.local.remove(&self.chat.id);
                }
            }
            last.then(|| !p.elsewhere(&self.chat.id, &self.user))
        };
        if let Some(gone) = left {
            let signal = presence_signal(self.chat.id, &self.user, Kind::Leave);
            if gone {
                self.chat.signal(Arc::new(signal.clone()));
            }
            // The other replicas decide for themselves; told from a task
            // because a drop cannot wait for the database.
            let chats = self.chats.clone();
            tokio::spawn(async move { chats.tell_others(&signal).await });
        }
    }
}

fn presence_signal(chat: Uuid, user: &str, kind: Kind) -> Message {
    Message {
        chat,
        user_id: user.to_owned(),
        kind,
        sent_at: super::now(),
        ..Message::default()
    }
}

impl Chats {
    /// Counts a stream of `user` in `chat` as presence (with `--presence`),
    /// signalling a join if it is the user's first anywhere.
    pub(super) async fn join(&self, chat: &Arc<ChatState>, user: &str) -> Option<Present> {
        if !self.shared.presence.presence_on {
            return None;
        }
        let first = {
            let mut p = lock(&self.shared.presence.state);
            let was_anywhere = p.anywhere(&chat.id, user);
            let count = p
                .local
                .entry(chat.id)
                .or_default()
                .entry(user.to_owned())
                .or_default();
            *count += 1;
            (*count == 1).then_some(!was_anywhere)
        };
        if let Some(new) = first {
            let signal = presence_signal(chat.id, user, Kind::Join);
            if new {
                chat.signal(Arc::new(signal.clone()));
            }
            self.tell_others(&signal).await;
        }
        Some(Present {
            chats: self.clone(),
            chat: chat.clone(),
            user: user.to_owned(),
        })
    }

    async fn tell_others(&self, signal: &Message) {
        if let Err(e) = self.shared.store.notify(signal).await {
            tracing::warn!(error = %e, "cannot tell other replicas of a presence change");
        }
    }

    /// Who is present in a chat now, sorted (see `Presence` in the proto).
    ///
    /// # Errors
    /// `FailedPrecondition` with `--presence=false`; `Invalid`,
    /// `NotFound`, `PermissionDenied` for a verified non-member.
    pub async fn presence(&self, chat_id: &str, caller: Caller<'_>) -> Result<Vec<String>> {
        if !self.shared.presence.presence_on {
            return Err(Error::FailedPrecondition(
                "chat.Presence.Disabled",
                "this server runs with --presence=false".into(),
            ));
        }
        if chat_id.is_empty() {
            return Err(invalid(
                "chat.Presence.MissingChatID",
                "chat_id is required",
            ));
        }
        let chat = self.chat(ids::PRESENCE_IDS, chat_id).await?;
        if let Some(who) = caller.filter(|w| !w.service) {
            chat.check_member("chat.Presence.NotAMember", &who.user)?;
        }
        let now = Instant::now();
        let p = lock(&self.shared.presence.state);
        let mut users: Vec<String> = p
            .local
            .get(&chat.id)
            .into_iter()
            .flat_map(|u| u.keys().cloned())
            .collect();
        if let Some(remote) = p.remote.get(&chat.id) {
            users.extend(
                remote
                    .iter()
                    .filter(|(_, r)| r.values().any(|&until| until > now))
                    .map(|(u, _)| u.clone()),
            );
        }
        users.sort_unstable();
        users.dedup();
        Ok(users)
    }

    /// Shows `user_id` as typing to the chat's event streams, at most once
    /// every [`TYPING_EVERY`] (see `Typing` in the proto).
    ///
    /// # Errors
    /// `FailedPrecondition` with `--typing=false`; `Invalid`, `NotFound`,
    /// `PermissionDenied`.
    pub async fn typing(&self, chat_id: &str, user_id: &str, caller: Caller<'_>) -> Result<()> {
        if !self.shared.presence.typing_on {
            return Err(Error::FailedPrecondition(
                "chat.Typing.Disabled",
                "this server runs with --typing=false".into(),
            ));
        }
        let user = acting_as(caller, user_id, "Typing", "chat.Typing.WrongUser")?;
        if chat_id.is_empty() {
            return Err(invalid("chat.Typing.MissingChatID", "chat_id is required"));
        }
        if user.is_empty() {
            return Err(invalid("chat.Typing.MissingUserID", "user_id is required"));
        }
        check_id(
            "chat.Typing.InvalidUserID",
            "user_id",
            &user,
            &self.shared.limits,
        )?;
        let chat = self.chat(ids::TYPING_IDS, chat_id).await?;
        chat.check_member("chat.Typing.NotAMember", &user)?;
        let now = Instant::now();
        let due = {
            let mut p = lock(&self.shared.presence.state);
            if p.typed.len() >= p.typed_sweep_at {
                p.typed
                    .retain(|_, at| now.duration_since(*at) < TYPING_EVERY);
                p.typed_sweep_at = 1024.max(p.typed.len() * 2);
            }
            let key = (chat.id, user.clone());
            match p.typed.get(&key) {
                Some(at) if now.duration_since(*at) < TYPING_EVERY => false,
                _ => {
                    p.typed.insert(key, now);
                    true
                }
            }
        };
        if due {
            self.signal(&chat, presence_signal(chat.id, &user, Kind::Typing))
                .await;
        }
        Ok(())
    }

    /// Another replica's join, leave or heartbeat entry for (chat, user):
    /// updates what this replica believes, and tells its streams of a
    /// change they have not seen.
    pub(super) fn remote_presence(&self, replica: u64, signal: &Message) {
        let state = lock(&self.shared.live).chats.get(&signal.chat).cloned();
        let forward = {
            let mut p = lock(&self.shared.presence.state);
            let was = p.anywhere(&signal.chat, &signal.user_id);
            let users = p.remote.entry(signal.chat).or_default();
            match signal.kind {
                Kind::Leave => {
                    if let Some(replicas) = users.get_mut(&signal.user_id) {
                        replicas.remove(&replica);
                        if replicas.is_empty() {
                            users.remove(&signal.user_id);
                        }
                    }
                    if users.is_empty() {
                        p.remote.remove(&signal.chat);
                    }
                }
                _ => {
                    users
                        .entry(signal.user_id.clone())
                        .or_default()
                        .insert(replica, Instant::now() + self.shared.presence.ttl);
                }
            }
            was != p.anywhere(&signal.chat, &signal.user_id)
        };
        if let (true, Some(state)) = (forward, state) {
            let kind = match signal.kind {
                Kind::Leave => Kind::Leave,
                _ => Kind::Join,
            };
            state.signal(Arc::new(presence_signal(
                signal.chat,
                &signal.user_id,
                kind,
            )));
        }
    }

    /// How often this replica repeats who is present on it.
    pub(super) fn heartbeat_every(&self) -> Duration {
        self.shared.presence.ttl / 3
    }

    /// Every [`Chats::heartbeat_every`]: repeats this replica's present
    /// users to the others, and forgets (with a leave) other replicas'
    /// users not heard of for the TTL.
    pub(super) async fn heartbeat(&self) {
        if !self.shared.presence.presence_on {
            return;
        }
        let now = Instant::now();
        let (here, expired) = {
            let mut p = lock(&self.shared.presence.state);
            let here: Vec<(Uuid, String)> = p
                .local
                .iter()
                .flat_map(|(c, users)| users.keys().map(|u| (*c, u.clone())))
                .collect();
            let mut expired = Vec::new();
            for (chat, users) in p.remote.iter_mut() {
                users.retain(|user, replicas| {
                    replicas.retain(|_, until| *until > now);
                    if replicas.is_empty() {
                        expired.push((*chat, user.clone()));
                    }
                    !replicas.is_empty()
                });
            }
            p.remote.retain(|_, users| !users.is_empty());
            expired.retain(|(c, u)| !p.here(c, u));
            (here, expired)
        };
        for (chat, user) in expired {
            let state = lock(&self.shared.live).chats.get(&chat).cloned();
            if let Some(state) = state {
                state.signal(Arc::new(presence_signal(chat, &user, Kind::Leave)));
            }
        }
        if let Err(e) = self.shared.store.heartbeat(&here).await {
            tracing::warn!(error = %e, "cannot tell other replicas who is present here");
        }
    }
}

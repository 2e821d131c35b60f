//! The chat logic: validation, idempotency, group commit and live fan-out.
//! Plain Rust over a [`Store`], whichever backend; knows nothing of gRPC, so
//! the gRPC handlers, the Connect stream and any other front end share one
//! path.
//!
//! # How a message travels
//! 1. [`Chats::send`] validates it and stages it in the store
//!    ([`Store::stage`]: sled writes it under the next seq right away; the
//!    database backend defers everything to the commit), then queues it on
//!    the committer and waits.
//! 2. The committer task hands everything queued to [`Store::commit`] at
//!    once (group commit: one sled flush, or one PostgreSQL transaction, for
//!    many sends; it first yields so that requests ready to run can join the
//!    group). The store answers each message: stored under a new seq, or
//!    already stored under its idempotency key.
//! 3. In queue order the committer publishes each new message (raises its
//!    chat's durable seq, puts it in the chat's recent window) and answers
//!    the waiting senders.
//! 4. Messages committed by other replicas arrive as wake-ups from the bus
//!    ([`Chats::follow`]): the follower reads them from the store once and
//!    publishes them the same way.
//! 5. Readers (History, [`Subscription`]) only see what the store reports
//!    durable, so nothing a crash could lose is shown to anyone.

use crate::store::Backend as _;
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::{
    auth::Identity,
    error::{Error, Result},
    metrics::Metrics,
    model::{Append, ChatRecord, Message, View},
    store::{lock, Store},
};

pub mod budget;
mod commit;
mod events;
mod fanout;
mod history;
mod ids;
mod inbox;
mod presence;
pub mod rate;

use budget::Budget;
pub use commit::Committer;
use commit::{commit_loop, wait_commit, Answer, Commit};
pub use events::{Change, Changed};
use fanout::{ChatState, Recent};
pub use fanout::{Follower, Subscription};
pub use history::HistoryPage;
use ids::{check_id, id_fault, parse_chat_id, ChatIdErrors, CONNECT_IDS, SEND_IDS};
pub(crate) use ids::{shown, HISTORY_IDS};
pub use inbox::Inbox;
pub use presence::Present;

/// The verified caller of a request (`None` with `--auth none`).
pub type Caller<'a> = Option<&'a Identity>;

/// Size limits, all configurable (see `Config`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Subject plus text, in bytes.
    pub max_message_bytes: usize,
    /// Any id a client chooses: user ids and client ids.
    pub max_id_bytes: usize,
    /// User ids in one New.
    pub max_members: usize,
    /// History's default and largest page.
    pub history_page: u32,
    /// Most messages a subscription hands out at once.
    pub stream_buffer: usize,
    /// ...and at most this many bytes of them (but for the first).
    pub stream_buffer_bytes: usize,
    /// Most bytes of one History page (but for the first message).
    pub history_page_bytes: usize,
    /// The memory budget for what clients make the server hold (see [`budget`]).
    pub memory_budget: usize,
    /// How long a read waits for room in the budget before `chat.Busy`.
    pub budget_wait: std::time::Duration,
    /// Sends a second per caller (0: no limit).
    pub rate_limit_send: f64,
    /// New chats a minute per caller (0: no limit).
    pub rate_limit_new: f64,
    /// Reads (History, ListChats, ReadState, Presence) a second per caller; 0: none.
    pub rate_limit_read: f64,
    /// Track who is present (`--presence`).
    pub presence: bool,
    /// How long another replica's users stay present unheard of.
    pub presence_ttl: Duration,
    /// Relay typing signals (`--typing`).
    pub typing: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_id_bytes: 128,
            max_members: 256,
            history_page: 1000,
            stream_buffer: 64,
            stream_buffer_bytes: 1 << 20,
            history_page_bytes: 1 << 20,
            memory_budget: 256 << 20,
            budget_wait: std::time::Duration::from_secs(10),
            rate_limit_send: 0.0,
            rate_limit_new: 0.0,
            rate_limit_read: 0.0,
            presence: true,
            presence_ttl: Duration::from_secs(30),
            typing: true,
        }
    }
}

/// A message as a client submits it, before the server gives it id, seq and time.
#[derive(Clone, Debug, Default)]
pub struct Draft {
    pub client_id: String,
    pub chat_id: String,
    pub user_id: String,
    pub subject: String,
    pub text: String,
}

/// Idle chat states are swept from memory once there are this many.
const SWEEP_AT: usize = 4096;
/// Handle to the chat logic. Cloning is cheap (an `Arc`); every clone shares
/// the store, the in-memory chat states and the committer.
#[derive(Clone)]
pub struct Chats {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    limits: Limits,
    /// In-memory state of recently used chats. At most one per chat: it is
    /// created and removed only under this lock.
    live: Mutex<Live>,
    commits: mpsc::UnboundedSender<Commit>,
    /// Set to true when live streams must end (shutdown).
    closing: watch::Sender<bool>,
    /// Whether the store answers (readiness); kept by [`Chats::watch_store`].
    ready: watch::Sender<bool>,
    /// Set when the store cannot recover without a restart: the server
    /// then stops and exits non-zero (see [`Chats::broken`]).
    broken: watch::Sender<Option<String>>,
    metrics: Arc<Metrics>,
    /// What stream batches, pages being sent and windows may hold.
    budget: Budget,
    rate: rate::RateLimits,
    presence: presence::PresenceState,
}

struct Live {
    chats: HashMap<Uuid, Arc<ChatState>>,
    sweep_at: usize,
}

impl Chats {
    /// Starts the chat logic over `store`, spawning the committer task; the
    /// returned [`Committer`] owns it and stops it.
    pub fn start(store: Store, limits: Limits) -> (Chats, Committer) {
        let (commits, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let metrics = Arc::new(Metrics::default());
        let budget = Budget::new(limits.memory_budget, limits.budget_wait, metrics.clone());
        let rate = rate::RateLimits::new(
            limits.rate_limit_send,
            limits.rate_limit_new,
            limits.rate_limit_read,
        );
        let presence =
            presence::PresenceState::new(limits.presence, limits.typing, limits.presence_ttl);
        let shared = Arc::new(Shared {
            store,
            limits,
            live: Mutex::new(Live {
                chats: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
            commits,
            closing: watch::Sender::new(false),
            ready: watch::Sender::new(true),
            broken: watch::Sender::new(None),
            metrics,
            budget,
            rate,
            presence,
        });
        let task = tokio::spawn(commit_loop(
            shared.store.clone(),
            rx,
            stopped,
            shared.metrics.clone(),
            shared.budget.clone(),
        ));
        (Chats { shared }, Committer { stop, task })
    }

    /// Counts a Send or a New against `who`'s rate limit; the wire layer
    /// calls it before the call itself (a Connect stream, for each message).
    ///
    /// # Errors
    /// `RateLimited` when `who` is over its limit.
    pub fn admit(&self, action: rate::Action, who: &rate::Who) -> Result<()> {
        let admitted = self.shared.rate.admit(action, who);
        if admitted.is_err() {
            let counter = match action {
                rate::Action::Send => &self.shared.metrics.rate_limited_send,
                rate::Action::New => &self.shared.metrics.rate_limited_new,
                rate::Action::Read => &self.shared.metrics.rate_limited_read,
            };
            counter.inc();
        }
        admitted
    }

    /// The service's counters, shared with the wire layer.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The chat for `user_ids` (see `New` in the proto): the same set always
    /// gets the same chat; no users makes a new open chat. A verified
    /// `caller` must be one of the users (unless it is a service).
    ///
    /// # Errors
    /// `Invalid`/`TooLarge` for bad ids or too many users;
    /// `PermissionDenied` for a caller not among them; `Store`.
    pub async fn new_chat(&self, user_ids: Vec<String>, caller: Caller<'_>) -> Result<Uuid> {
        if let Some(who) = caller {
            if who.service && !user_ids.is_empty() && !user_ids.contains(&who.user) {
                acting_for(who, "New", &user_ids.join(","));
            } else if !user_ids.is_empty() && !user_ids.contains(&who.user) {
                return Err(Error::PermissionDenied(
                    "chat.New.NotAMember",
                    format!(
                        "user {} may only create chats it is a member of",
                        shown(&who.user)
                    ),
                ));
            }
        }
        let limits = &self.shared.limits;
        if user_ids.len() > limits.max_members {
            return Err(Error::TooLarge(
                "chat.New.TooManyUsers",
                format!(
                    "{} user_ids given; a chat has at most {}",
                    user_ids.len(),
                    limits.max_members
                ),
            ));
        }
        for id in &user_ids {
            check_id("chat.New.InvalidUserID", "user_ids", id, limits)?;
        }
        let mut members = user_ids;
        members.sort_unstable();
        members.dedup();
        let created_us = now_us();
        let record = ChatRecord {
            members,
            created_at: created_us / 1_000_000,
            created_us,
        };
        let chat = self
            .shared
            .store
            .create_chat(Uuid::new_v4(), &record)
            .await?;
        // Also for an existing chat: it may have been created a moment ago
        // by a concurrent call whose commit has not finished yet.
        wait_commit(self.queue_commit(None)).await?;
        Ok(chat)
    }

    /// Stores a message and returns it once durable; a retry of a stored
    /// (chat, user, client_id) returns the stored message instead.
    ///
    /// # Errors
    /// `Invalid`/`TooLarge` for a bad draft, `NotFound` for an unknown chat,
    /// `PermissionDenied` for a non-member, `AlreadyExists` for a client_id
    /// reused with other content, `Store`/`Unavailable` if it could not be
    /// made durable (retry with the same client_id). With a verified
    /// `caller`, an empty user_id is the caller, and another user's is
    /// `PermissionDenied` (unless the caller is a service).
    pub async fn send(&self, mut draft: Draft, caller: Caller<'_>) -> Result<Arc<Message>> {
        if let Some(who) = caller {
            if draft.user_id.is_empty() {
                draft.user_id.clone_from(&who.user);
            } else if who.service && draft.user_id != who.user {
                acting_for(who, "Send", &draft.user_id);
            } else if draft.user_id != who.user {
                return Err(Error::PermissionDenied(
                    "chat.Send.WrongUser",
                    format!(
                        "user {} may not send as {}; leave user_id empty or set it to yourself",
                        shown(&who.user),
                        shown(&draft.user_id)
                    ),
                ));
            }
        }
        let limits = &self.shared.limits;
        if draft.chat_id.is_empty() {
            return Err(invalid("chat.Send.MissingChatID", "chat_id is required"));
        }
        if draft.user_id.is_empty() {
            return Err(invalid("chat.Send.MissingUserID", "user_id is required"));
        }
        if draft.text.is_empty() {
            return Err(invalid("chat.Send.MissingText", "text is required"));
        }
        check_id("chat.Send.InvalidUserID", "user_id", &draft.user_id, limits)?;
        if draft.client_id.len() > limits.max_id_bytes {
            return Err(Error::TooLarge(
                "chat.Send.InvalidClientID",
                format!(
                    "client_id is {} bytes; the limit is {}",
                    draft.client_id.len(),
                    limits.max_id_bytes
                ),
            ));
        }
        let size = draft.subject.len() + draft.text.len();
        if size > limits.max_message_bytes {
            return Err(Error::TooLarge(
                "chat.Send.TooLarge",
                format!(
                    "subject and text are {size} bytes; the limit is {}",
                    limits.max_message_bytes
                ),
            ));
        }
        // No store keeps NUL in text (PostgreSQL refuses it), so no store
        // gets one: the same message is valid on every backend.
        if let Some(why) = id_fault(&draft.client_id) {
            return Err(invalid(
                "chat.Send.InvalidClientID",
                format!("client_id: {why}"),
            ));
        }
        if draft.subject.contains('\0') || draft.text.contains('\0') {
            return Err(invalid(
                "chat.Send.InvalidText",
                "subject and text must not contain NUL characters",
            ));
        }
        let chat = self.chat(SEND_IDS, &draft.chat_id).await?;
        chat.check_member("chat.Send.NotAMember", &draft.user_id)?;

        let dedupe = !draft.client_id.is_empty();
        let append = Append {
            message: Message {
                id: Uuid::new_v4().to_string(),
                client_id: if dedupe {
                    draft.client_id
                } else {
                    Uuid::new_v4().to_string()
                },
                chat: chat.id,
                user_id: draft.user_id,
                sent_at: now(),
                subject: draft.subject,
                text: draft.text,
                at_us: now_us(),
                ..Message::default()
            },
            dedupe,
        };
        let staged = self.shared.store.stage(append)?;
        match wait_commit(self.queue_commit(Some((staged, chat)))).await? {
            Answer::Stored(msg) => Ok(msg),
            Answer::Existing { stored, same } => {
                if !same {
                    return Err(Error::AlreadyExists(
                        "chat.Send.ClientIDReused",
                        format!(
                            "client_id {:?} was already used by this user in this chat for a \
                             message with a different subject or text; use a new client_id",
                            stored.client_id
                        ),
                    ));
                }
                self.shared.metrics.idempotent_replays.inc();
                Ok(Arc::new(stored))
            }
            Answer::Durable | Answer::Event { .. } | Answer::Refused(_) => Err(Error::Unavailable(
                "the message was not committed; retry with the same client_id".into(),
            )),
        }
    }

    /// Opens a live feed of a chat for `user_id`: every durable message with
    /// seq > `since_seq`, or, without it, every message stored from now on.
    /// With a verified `caller`, an empty `user_id` is the caller, another
    /// user's is `PermissionDenied` (unless a service), and the feed ends
    /// with `Unauthenticated` when the caller's credential expires.
    ///
    /// # Errors
    /// `Invalid` for missing ids, `NotFound`, `PermissionDenied`, `Store`.
    pub async fn subscribe(
        &self,
        chat_id: &str,
        user_id: &str,
        since_seq: Option<u64>,
        events: bool,
        caller: Caller<'_>,
    ) -> Result<Subscription> {
        let user_id = match caller {
            Some(who) if user_id.is_empty() => who.user.as_str(),
            Some(who) if user_id != who.user && who.service => {
                acting_for(who, "Connect", user_id);
                user_id
            }
            Some(who) if user_id != who.user && !who.service => {
                return Err(Error::PermissionDenied(
                    "chat.Connect.WrongUser",
                    format!(
                        "user {} may not follow a chat as {}; leave user-id out or set it to yourself",
                        shown(&who.user),
                        shown(user_id)
                    ),
                ))
            }
            _ => user_id,
        };
        if chat_id.is_empty() {
            return Err(invalid(
                "chat.Connect.MissingChatID",
                "the chat-id metadata is required",
            ));
        }
        if user_id.is_empty() {
            return Err(invalid(
                "chat.Connect.MissingUserID",
                "the user-id metadata is required",
            ));
        }
        check_id(
            "chat.Connect.InvalidUserID",
            "user-id",
            user_id,
            &self.shared.limits,
        )?;
        let chat = self.chat(CONNECT_IDS, chat_id).await?;
        chat.check_member("chat.Connect.NotAMember", user_id)?;
        // Subscribe before reading the durable seq: whatever is published
        // after this point is seen by `durable`, so nothing falls in between.
        let durable = chat.durable.subscribe();
        // Another replica may have committed more than this one has heard
        // of, edits and deletions among it: bring the window up to the
        // store (revising what they changed) before serving from it, so
        // that a catch-up never hands out what the store has superseded.
        let stored = self.shared.store.last_seq(&chat.id).await?;
        Box::pin(self.catch_up(&chat, stored)).await?;
        let last = *durable.borrow();
        if let Some(since) = since_seq.filter(|&s| s > last) {
            return Err(Error::OutOfRange(
                "chat.Connect.SinceSeqAhead",
                format!(
                    "since-seq {since} is beyond the chat's last seq, {last}; \
                     resume from a seq you have received (or leave it out for new messages only)"
                ),
            ));
        }
        let next = since_seq.unwrap_or(last).saturating_add(1);
        // Listening before joining: the stream sees its own user's join.
        let signals = events.then(|| chat.signals());
        let present = self.join(&chat, user_id).await;
        // A credential valid for longer than the clock can count (exp
        // 2^64-1, say) never ends the stream.
        let expires = caller
            .and_then(Identity::expires_in)
            .and_then(|d| tokio::time::Instant::now().checked_add(d));
        // Counted from here; the stream's `Drop` uncounts it, whatever ends it.
        self.shared.metrics.streams_open.inc();
        Ok(Subscription {
            chats: self.clone(),
            user_id: user_id.to_owned(),
            next,
            durable,
            closing: self.shared.closing.subscribe(),
            expires,
            lease: None,
            view: if events { View::ALL } else { View::MESSAGES },
            signals,
            _present: present,
            chat,
        })
    }

    /// True once shutdown has begun; health reports NOT_SERVING from then on.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.shared.closing.subscribe()
    }

    /// Why the store cannot recover without a restart, once that is known
    /// (a full disk that sled does not recover from in place).
    pub fn broken(&self) -> watch::Receiver<Option<String>> {
        self.shared.broken.subscribe()
    }

    /// Whether the store answers: readiness for `chat.Chat`.
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.shared.ready.subscribe()
    }

    /// Ends every live subscription with `Unavailable` (shutdown), and any
    /// opened from now on.
    pub fn close_streams(&self) {
        self.shared.closing.send_replace(true);
    }

    /// The in-memory state of a chat, loaded from the store on first use.
    async fn chat(&self, errors: ChatIdErrors, chat_id: &str) -> Result<Arc<ChatState>> {
        let id = parse_chat_id(errors, chat_id)?;
        let not_found = || {
            Error::NotFound(
                errors.not_found,
                format!("no chat with id {}; create one with New", shown(chat_id)),
            )
        };
        if let Some(state) = lock(&self.shared.live).chats.get(&id) {
            return Ok(state.clone());
        }
        // Boxed: the store's futures are large (a database round trip) and
        // rare (a cache miss); every Send and Connect stream carries this one.
        let load = Box::pin(async {
            let store = &self.shared.store;
            let record = store.chat(&id).await?.ok_or_else(not_found)?;
            Ok::<_, Error>((record, store.last_seq(&id).await?))
        });
        let (record, last) = load.await?;
        let mut live = lock(&self.shared.live);
        // Loaded meanwhile by a concurrent call: keep that one.
        if let Some(state) = live.chats.get(&id) {
            return Ok(state.clone());
        }
        let state = Arc::new(ChatState {
            id,
            members: record.members,
            durable: watch::Sender::new(last),
            recent: Mutex::new(Recent::new(self.shared.budget.empty())),
            signals: Mutex::new(None),
        });
        if live.chats.len() >= live.sweep_at {
            // Forget chats nobody holds; grow the threshold so that a map
            // full of busy chats is not swept on every insert.
            live.chats.retain(|_, s| Arc::strong_count(s) > 1);
            live.sweep_at = SWEEP_AT.max(live.chats.len() * 2);
        }
        live.chats.insert(id, state.clone());
        Ok(state)
    }

    /// Keeps [`Chats::ready`] up to date by pinging the store every second,
    /// and drops the recent windows that have been idle for a while (their
    /// memory is budgeted, and their streams have read them long ago),
    /// until `closing`. Returns the task (it ends by itself at shutdown).
    pub fn watch_store(&self) -> tokio::task::JoinHandle<()> {
        let chats = self.clone();
        tokio::spawn(async move {
            let mut closing = chats.closing();
            let mut swept = tokio::time::Instant::now();
            let mut trimmed_at = 0;
            loop {
                let used = chats.shared.budget.in_use();
                if used + TRIM_AFTER_FREEING < trimmed_at {
                    release_freed_memory();
                }
                if used > trimmed_at || used + TRIM_AFTER_FREEING < trimmed_at {
                    trimmed_at = used;
                }
                if swept.elapsed() >= fanout::RECENT_IDLE / 4 {
                    swept = tokio::time::Instant::now();
                    let states: Vec<_> = lock(&chats.shared.live).chats.values().cloned().collect();
                    for state in states {
                        let mut recent = lock(&state.recent);
                        if recent.idle() {
                            recent.clear();
                        }
                    }
                }
                let up = chats.shared.store.ping().await;
                chats.shared.metrics.store_up.set(up as i64);
                if let Some(why) = chats.shared.store.broken() {
                    chats.shared.broken.send_replace(Some(why));
                }
                let was = chats.shared.ready.send_replace(up);
                if was != up {
                    match up {
                        true => tracing::info!("the store answers again: serving"),
                        false => {
                            tracing::warn!("the store does not answer: NOT_SERVING for chat.Chat")
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = closing.wait_for(|c| *c) => return,
                }
            }
        })
    }
}

/// When this much of the memory budget has been given back since the
/// last high point, freed memory is handed back to the operating system.
const TRIM_AFTER_FREEING: usize = 32 << 20;

/// Hands memory the allocator keeps after it was freed back to the
/// operating system. glibc's malloc keeps freed pages of its arenas, so
/// without this the RSS of a server that once held its whole memory budget
/// for stalled clients would stay there after they left.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn invalid(id: &'static str, detail: impl Into<String>) -> Error {
    Error::Invalid(id, detail.into())
}

/// Logs a service acting for a user (or reading a chat it is not in), so
/// that what a service did is traceable to it.
fn acting_for(service: &Identity, method: &str, on_behalf_of: &str) {
    tracing::info!(
        method,
        service = %service.user,
        on_behalf_of,
        "a service acting for a user"
    );
}

/// Who a request acts as: `user_id`, or the verified caller when it is
/// empty. A caller may act as itself only, unless it is a service (logged).
///
/// # Errors
/// `PermissionDenied` (`wrong_user`) for a user acting as another.
fn acting_as(
    caller: Caller<'_>,
    user_id: &str,
    method: &str,
    wrong_user: &'static str,
) -> Result<String> {
    match caller {
        Some(who) if user_id.is_empty() => Ok(who.user.clone()),
        Some(who) if user_id != who.user && who.service => {
            acting_for(who, method, user_id);
            Ok(user_id.to_owned())
        }
        Some(who) if user_id != who.user => Err(Error::PermissionDenied(
            wrong_user,
            format!(
                "user {} may not act as {}; leave user_id empty or set it to yourself",
                shown(&who.user),
                shown(user_id)
            ),
        )),
        _ => Ok(user_id.to_owned()),
    }
}

/// Now, in microseconds since the epoch.
fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{prelude::*, test_runner::TestRunner};

    /// A runtime, the data dir, the chat logic and its committer (which
    /// stops when dropped, so the caller keeps it).
    fn open(limits: Limits) -> (tokio::runtime::Runtime, tempfile::TempDir, Chats, Committer) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let store = Store::Sled(crate::store::sled::SledStore::open(dir.path(), 64 << 20).unwrap());
        let (chats, committer) = rt.block_on(async { Chats::start(store, limits) });
        (rt, dir, chats, committer)
    }

    fn stored(rt: &tokio::runtime::Runtime, chats: &Chats, chat: &str) -> usize {
        rt.block_on(chats.history(chat, 0, None, None, View::MESSAGES, None))
            .map_or(0, |p| p.messages.len())
    }

    /// Fuzz: any draft is either stored (and then it was valid) or refused
    /// with a client error that changed nothing; never a panic, never
    /// accepted garbage. `PROPTEST_CASES` sets how many cases.
    #[test]
    fn any_draft_is_stored_when_valid_and_refused_cleanly_when_not() {
        let limits = Limits {
            max_message_bytes: 64,
            max_id_bytes: 8,
            max_members: 4,
            history_page: 1000,
            stream_buffer: 4,
            ..Limits::default()
        };
        let (rt, _dir, chats, _committer) = open(limits.clone());
        let open_chat = rt
            .block_on(chats.new_chat(vec![], None))
            .unwrap()
            .to_string();
        let members = vec!["ann".to_string(), "bob".to_string()];
        let member_chat = rt
            .block_on(chats.new_chat(members.clone(), None))
            .unwrap()
            .to_string();
        let ids = prop_oneof![
            Just("ann".to_string()),
            Just("bob".to_string()),
            Just("eve".to_string()),
            ".{0,10}"
        ];
        let inputs = (0..4usize, ids.clone(), ids, ".{0,40}", ".{0,70}", ".{0,40}");
        let mut runner = TestRunner::new(ProptestConfig::default());
        runner
            .run(
                &inputs,
                |(which, user_id, client_id, subject, text, junk)| {
                    let chat_id = match which {
                        0 => open_chat.clone(),
                        1 => member_chat.clone(),
                        2 => Uuid::new_v4().to_string(),
                        _ => junk,
                    };
                    let before = stored(&rt, &chats, &chat_id);
                    let draft = Draft {
                        client_id: client_id.clone(),
                        chat_id: chat_id.clone(),
                        user_id: user_id.clone(),
                        subject: subject.clone(),
                        text: text.clone(),
                    };
                    let result = rt.block_on(chats.send(draft, None));
                    let after = stored(&rt, &chats, &chat_id);
                    match result {
                        Ok(m) => {
                            prop_assert!(which < 2, "stored in a chat that does not exist");
                            prop_assert!(!user_id.is_empty() && user_id.len() <= 8);
                            prop_assert!(!text.is_empty() && subject.len() + text.len() <= 64);
                            prop_assert!(client_id.len() <= 8);
                            prop_assert!(
                                which == 0 || members.contains(&user_id),
                                "non-member stored"
                            );
                            prop_assert_eq!(
                                (&m.text, &m.subject, &m.user_id),
                                (&text, &subject, &user_id)
                            );
                            prop_assert!(
                                after == before + 1 || (after == before && !client_id.is_empty())
                            );
                            prop_assert!(m.seq as usize <= after);
                        }
                        Err(e) => {
                            prop_assert_eq!(after, before, "a refused send changed nothing");
                            prop_assert!(
                                !matches!(e, Error::Store(_) | Error::Unavailable(_)),
                                "client input is a client error: {}",
                                e
                            );
                            prop_assert!(e.to_string().starts_with("chat."), "{}", e);
                        }
                    }
                    Ok(())
                },
            )
            .unwrap();
    }

    /// Fuzz: New with any user ids gives a chat or a clear refusal.
    #[test]
    fn any_new_is_a_chat_or_a_clear_refusal() {
        let limits = Limits {
            max_id_bytes: 8,
            max_members: 4,
            ..Limits::default()
        };
        let (rt, _dir, chats, _committer) = open(limits);
        let mut runner = TestRunner::new(ProptestConfig::default());
        runner
            .run(&proptest::collection::vec(".{0,10}", 0..6), |user_ids| {
                let valid = user_ids.len() <= 4
                    && user_ids.iter().all(|u| {
                        !u.is_empty()
                            && u.len() <= 8
                            // Which characters: ids.rs's tests.
                            && id_fault(u).is_none()
                    });
                match rt.block_on(chats.new_chat(user_ids.clone(), None)) {
                    Ok(chat) => {
                        prop_assert!(valid);
                        if !user_ids.is_empty() {
                            let mut reversed = user_ids.clone();
                            reversed.reverse();
                            prop_assert_eq!(
                                rt.block_on(chats.new_chat(reversed, None)).unwrap(),
                                chat
                            );
                        }
                    }
                    Err(e) => {
                        prop_assert!(!valid);
                        prop_assert!(
                            matches!(e, Error::Invalid(..) | Error::TooLarge(..)),
                            "{}",
                            e
                        );
                    }
                }
                Ok(())
            })
            .unwrap();
    }
}

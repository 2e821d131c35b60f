//! The chat logic: validation, idempotency, seq allocation, group commit and
//! live fan-out. Plain Rust over [`Store`]; knows nothing of gRPC, so the
//! gRPC handlers, the Connect stream and any other front end share one path.
//!
//! # How a message travels
//! 1. [`Chats::send`] validates it and takes the chat's append lock (a std
//!    mutex, never held across an `.await`). Under the lock: seq = last + 1,
//!    the idempotency key claimed for it (one compare-and-swap, which also
//!    finds a retry), then the message written. So no duplicate and no gap,
//!    whatever the concurrency (and a crash between the two writes is safe:
//!    see the store's docs).
//! 2. Still under the lock it queues itself on the committer, so the queue is
//!    in seq order per chat, then waits.
//! 3. The committer task flushes sled once for everything queued (group
//!    commit: concurrent sends share one fsync; it first yields so that
//!    requests ready to run can join the group), then, in queue order, raises
//!    each chat's durable seq, puts the message in the chat's recent ring,
//!    and answers the waiting senders.
//! 4. Readers (History, [`Subscription`]) only ever see seqs up to the
//!    durable seq, so nothing a crash could lose is shown to anyone.

use std::{
    collections::{HashMap, VecDeque},
    sync::{atomic::Ordering::Relaxed, Arc, Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::{
    error::{Error, Result},
    metrics::Metrics,
    store::{self, ChatRecord, Message, Store},
};

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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_id_bytes: 128,
            max_members: 256,
            history_page: 1000,
            stream_buffer: 64,
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

/// One page of History.
#[derive(Debug)]
pub struct Page {
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// Messages kept in memory per chat for live streams, so that a stream that
/// keeps up never reads the store. Older ones are read from the store.
const RECENT: usize = 256;
/// ...and at most this many bytes of subject and text, so that large
/// messages cannot make the window big (256 × 64 KiB would be 16 MiB a chat).
const RECENT_BYTES: usize = 1 << 20;
/// How many times the committer yields to let ready requests join a group
/// before it flushes (while more keep arriving).
const GATHER_YIELDS: usize = 4;
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
    /// Serializes New for member sets, so that one set gets one chat.
    new_lock: Mutex<()>,
    commits: mpsc::UnboundedSender<Commit>,
    /// Set to true when live streams must end (shutdown).
    closing: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

struct Live {
    chats: HashMap<Uuid, Arc<ChatState>>,
    sweep_at: usize,
}

/// In-memory state of one chat.
struct ChatState {
    id: Uuid,
    /// Sorted; empty for an open chat.
    members: Vec<String>,
    /// The append lock, guarding the last seq written to sled (durable or not).
    last_seq: Mutex<u64>,
    /// The last seq that is durable and published. Live streams wait on it.
    durable: watch::Sender<u64>,
    /// The newest durable messages, contiguous in seq, while streams are open.
    recent: Mutex<Recent>,
}

/// The in-memory window of a chat's newest durable messages.
#[derive(Default)]
struct Recent {
    messages: VecDeque<Arc<Message>>,
    /// Subject and text bytes in `messages`.
    bytes: usize,
}

impl Recent {
    fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    /// Appends, dropping the oldest past [`RECENT`] messages or [`RECENT_BYTES`].
    fn push(&mut self, msg: Arc<Message>) {
        self.bytes += msg.subject.len() + msg.text.len();
        self.messages.push_back(msg);
        while self.messages.len() > RECENT || (self.bytes > RECENT_BYTES && self.messages.len() > 1)
        {
            if let Some(old) = self.messages.pop_front() {
                self.bytes -= old.subject.len() + old.text.len();
            }
        }
    }
}

/// A queued request for durability: answered after the next flush.
struct Commit {
    done: oneshot::Sender<Result<(), String>>,
    /// A newly written message to publish once durable (none for a retry).
    publish: Option<(Arc<ChatState>, Arc<Message>)>,
}

impl Chats {
    /// Starts the chat logic over `store`, spawning the committer task; the
    /// returned [`Committer`] owns it and stops it.
    pub fn start(store: Store, limits: Limits) -> (Chats, Committer) {
        let (commits, rx) = mpsc::unbounded_channel();
        let (stop, stopped) = oneshot::channel();
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(commit_loop(store.clone(), rx, stopped, metrics.clone()));
        let shared = Arc::new(Shared {
            store,
            limits,
            live: Mutex::new(Live {
                chats: HashMap::new(),
                sweep_at: SWEEP_AT,
            }),
            new_lock: Mutex::new(()),
            commits,
            closing: watch::Sender::new(false),
            metrics,
        });
        (Chats { shared }, Committer { stop, task })
    }

    /// The service's counters, shared with the wire layer.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// The chat for `user_ids` (see `New` in the proto): the same set always
    /// gets the same chat; no users makes a new open chat.
    ///
    /// # Errors
    /// `Invalid`/`TooLarge` for bad ids or too many users; `Store`.
    pub async fn new_chat(&self, user_ids: Vec<String>) -> Result<Uuid> {
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
        let record = ChatRecord {
            members,
            created_at: now(),
        };
        let store = &self.shared.store;
        let chat = if record.members.is_empty() {
            let chat = Uuid::new_v4();
            store.insert_chat(&chat, &record, None)?;
            chat
        } else {
            let key = store::members_key(&record.members);
            let _one_at_a_time = lock(&self.shared.new_lock);
            match store.chat_for_members(&key)? {
                Some(chat) => chat,
                None => {
                    let chat = Uuid::new_v4();
                    store.insert_chat(&chat, &record, Some(&key))?;
                    chat
                }
            }
        };
        // Also for an existing chat: it may have been created a moment ago
        // by a concurrent call whose flush has not finished yet.
        self.durable(None).await?;
        Ok(chat)
    }

    /// Stores a message and returns it once durable; a retry of a stored
    /// (chat, user, client_id) returns the stored message instead.
    ///
    /// # Errors
    /// `Invalid`/`TooLarge` for a bad draft, `NotFound` for an unknown chat,
    /// `PermissionDenied` for a non-member, `AlreadyExists` for a client_id
    /// reused with other content, `Store`/`Unavailable` if it could not be
    /// made durable (retry with the same client_id).
    pub async fn send(&self, draft: Draft) -> Result<Arc<Message>> {
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
        let chat = self.chat("chat.Send.InvalidChatID", &draft.chat_id)?;
        chat.check_member("chat.Send.NotAMember", &draft.user_id)?;

        let store = &self.shared.store;
        let dedupe = !draft.client_id.is_empty();
        let (msg, committed) = {
            let mut last_seq = lock(&chat.last_seq);
            let seq = *last_seq + 1;
            let existing = match dedupe {
                true => store.claim(&chat.id, &draft.user_id, &draft.client_id, seq)?,
                false => None,
            };
            let (msg, publish) = match existing {
                Some(stored) => {
                    if stored.subject != draft.subject || stored.text != draft.text {
                        return Err(Error::AlreadyExists(
                            "chat.Send.ClientIDReused",
                            format!(
                                "client_id {:?} was already used by this user in this chat for a \
                                 message with a different subject or text; use a new client_id",
                                draft.client_id
                            ),
                        ));
                    }
                    self.shared.metrics.idempotent_replays.fetch_add(1, Relaxed);
                    (Arc::new(stored), None)
                }
                None => {
                    let msg = Arc::new(Message {
                        id: Uuid::new_v4().to_string(),
                        client_id: if dedupe {
                            draft.client_id
                        } else {
                            Uuid::new_v4().to_string()
                        },
                        chat: chat.id.as_bytes().to_vec(),
                        user_id: draft.user_id,
                        sent_at: now(),
                        subject: draft.subject,
                        text: draft.text,
                        seq,
                    });
                    store.append(&msg)?;
                    *last_seq = msg.seq;
                    (msg.clone(), Some((chat.clone(), msg)))
                }
            };
            // Queue while still holding the append lock: the committer then
            // sees each chat's messages in seq order.
            (msg, self.queue_commit(publish))
        };
        wait_commit(committed).await?;
        Ok(msg)
    }

    /// One page of a chat's history (see `History` in the proto).
    ///
    /// # Errors
    /// `Invalid` for a missing chat id or both cursors, `NotFound`, `Store`.
    pub fn history(
        &self,
        chat_id: &str,
        limit: u32,
        before_seq: Option<u64>,
        after_seq: Option<u64>,
    ) -> Result<Page> {
        if chat_id.is_empty() {
            return Err(invalid("chat.History.MissingChatID", "chat_id is required"));
        }
        let chat = self.chat("chat.History.InvalidChatID", chat_id)?;
        let page = self.shared.limits.history_page;
        let limit = if limit == 0 || limit > page {
            page
        } else {
            limit
        } as usize;
        let durable = *chat.durable.borrow();
        let store = &self.shared.store;
        match (before_seq, after_seq) {
            (Some(_), Some(_)) => Err(invalid(
                "chat.History.InvalidCursor",
                "set before_seq or after_seq, not both",
            )),
            (None, Some(after)) => {
                let messages = store.range(&chat.id, after.saturating_add(1), durable, limit)?;
                let has_more = messages.last().is_some_and(|m| m.seq < durable);
                Ok(Page { messages, has_more })
            }
            (before, None) => {
                // Seqs are gap-free 1..=durable, so the page's first seq is known.
                let last = before.map_or(durable, |b| durable.min(b.saturating_sub(1)));
                let first = last.saturating_sub(limit as u64 - 1).max(1);
                let messages = store.range(&chat.id, first, last, limit)?;
                let has_more = messages.first().is_some_and(|m| m.seq > 1);
                Ok(Page { messages, has_more })
            }
        }
    }

    /// Opens a live feed of a chat for `user_id`: every durable message with
    /// seq > `since_seq`, or, without it, every message stored from now on.
    ///
    /// # Errors
    /// `Invalid` for missing ids, `NotFound`, `PermissionDenied`, `Store`.
    pub fn subscribe(
        &self,
        chat_id: &str,
        user_id: &str,
        since_seq: Option<u64>,
    ) -> Result<Subscription> {
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
        let chat = self.chat("chat.Connect.InvalidChatID", chat_id)?;
        chat.check_member("chat.Connect.NotAMember", user_id)?;
        // Subscribe before reading the durable seq: whatever is published
        // after this point is seen by `durable`, so nothing falls in between.
        let durable = chat.durable.subscribe();
        let next = since_seq.unwrap_or(*durable.borrow()).saturating_add(1);
        self.shared.metrics.streams_open.fetch_add(1, Relaxed);
        Ok(Subscription {
            chats: self.clone(),
            chat,
            user_id: user_id.to_owned(),
            next,
            durable,
            closing: self.shared.closing.subscribe(),
        })
    }

    /// True once shutdown has begun; health reports NOT_SERVING from then on.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.shared.closing.subscribe()
    }

    /// Ends every live subscription with `Unavailable` (shutdown), and any
    /// opened from now on.
    pub fn close_streams(&self) {
        self.shared.closing.send_replace(true);
    }

    /// The in-memory state of a chat, loaded from the store on first use.
    fn chat(&self, error_id: &'static str, chat_id: &str) -> Result<Arc<ChatState>> {
        let not_found = || {
            Error::NotFound(
                error_id,
                format!("no chat with id {chat_id:?}; create one with New"),
            )
        };
        let id = Uuid::try_parse(chat_id).map_err(|_| not_found())?;
        let mut live = lock(&self.shared.live);
        if let Some(state) = live.chats.get(&id) {
            return Ok(state.clone());
        }
        let store = &self.shared.store;
        let record = store.chat(&id)?.ok_or_else(not_found)?;
        // Nothing of this chat is in flight (an in-flight message keeps its
        // state alive in the committer queue), so what the store holds is durable.
        let last = store.last_seq(&id)?;
        let state = Arc::new(ChatState {
            id,
            members: record.members,
            last_seq: Mutex::new(last),
            durable: watch::Sender::new(last),
            recent: Mutex::new(Recent::default()),
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

    fn queue_commit(
        &self,
        publish: Option<(Arc<ChatState>, Arc<Message>)>,
    ) -> oneshot::Receiver<Result<(), String>> {
        let (done, rx) = oneshot::channel();
        // A send error means the committer is gone; the dropped `done` then
        // reports it to `wait_commit`.
        let _ = self.shared.commits.send(Commit { done, publish });
        rx
    }

    /// Waits until everything written before this call is durable.
    async fn durable(&self, publish: Option<(Arc<ChatState>, Arc<Message>)>) -> Result<()> {
        wait_commit(self.queue_commit(publish)).await
    }
}

async fn wait_commit(rx: oneshot::Receiver<Result<(), String>>) -> Result<()> {
    match rx.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::Unavailable(format!(
            "the store could not make the write durable ({e}); retry with the same client_id"
        ))),
        Err(_) => Err(Error::Unavailable(
            "the server is shutting down; retry with the same client_id".into(),
        )),
    }
}

/// Owner of the committer task.
pub struct Committer {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Committer {
    /// Answers everything already queued (after a last flush), refuses what
    /// comes later with `Unavailable`, and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The committer: one flush for everything queued while the previous flush
/// ran, then publish and answer in queue order. On `stop` it closes the
/// queue and drains it.
async fn commit_loop(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Commit>,
    mut stop: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::new();
    let mut stopping = false;
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, 4096) => n,
            _ = &mut stop, if !stopping => {
                stopping = true;
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        // Let the requests that are ready to run append first, so that this
        // flush covers them too: bigger groups, fewer fsyncs.
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
            if rx.is_empty() {
                break;
            }
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
        }
        let started = Instant::now();
        let flushed = store.flush().await.map_err(|e| e.to_string());
        metrics.flush_latency.observe(started.elapsed());
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "flush failed; senders are told to retry");
        }
        for commit in batch.drain(..) {
            if let (Ok(()), Some((chat, msg))) = (&flushed, commit.publish) {
                chat.publish(msg);
                metrics.messages_stored.fetch_add(1, Relaxed);
            }
            let _ = commit.done.send(flushed.clone());
        }
    }
}

impl ChatState {
    fn check_member(&self, error_id: &'static str, user_id: &str) -> Result<()> {
        if self.members.is_empty()
            || self
                .members
                .binary_search_by(|m| m.as_str().cmp(user_id))
                .is_ok()
        {
            Ok(())
        } else {
            Err(Error::PermissionDenied(
                error_id,
                format!("user {user_id:?} is not a member of chat {}", self.id),
            ))
        }
    }

    /// Makes a durable message visible to readers and live streams.
    fn publish(&self, msg: Arc<Message>) {
        let seq = msg.seq;
        {
            let mut recent = lock(&self.recent);
            let contiguous = recent.messages.back().is_none_or(|m| m.seq + 1 == seq);
            if self.durable.receiver_count() == 0 || !contiguous {
                // No stream to serve (the ring is dropped with the last
                // stream), or a hole after a failed flush: start over.
                recent.clear();
            }
            if self.durable.receiver_count() > 0 {
                recent.push(msg);
            }
        }
        self.durable.send_if_modified(|durable| {
            let newer = seq > *durable;
            if newer {
                *durable = seq;
            }
            newer
        });
    }
}

/// A live feed of one chat for one user (the core of Connect). Pull-based:
/// it holds no queue, only the next seq it wants, so a reader that falls
/// behind costs nothing and later catches up from the store, with no gap,
/// while writers never wait for it.
pub struct Subscription {
    chats: Chats,
    chat: Arc<ChatState>,
    user_id: String,
    next: u64,
    durable: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
}

impl Subscription {
    /// The next messages, in seq order, each exactly once; waits while there
    /// are none. Cancel-safe: nothing is consumed until it returns.
    ///
    /// # Errors
    /// `Unavailable` when the server is shutting down; `Store`.
    pub async fn next_batch(&mut self) -> Result<Vec<Arc<Message>>> {
        loop {
            if *self.closing.borrow_and_update() {
                return Err(Error::Unavailable(format!(
                    "the server is shutting down; reconnect with since-seq: {}",
                    self.next - 1
                )));
            }
            let durable = *self.durable.borrow_and_update();
            if self.next <= durable {
                let batch = self.read(durable)?;
                if let Some(last) = batch.last() {
                    self.next = last.seq + 1;
                }
                return Ok(batch);
            }
            tokio::select! {
                // The sender lives in the chat state we hold: never closed.
                _ = self.durable.changed() => {}
                _ = self.closing.changed() => {}
            }
        }
    }

    /// The chat this feed follows.
    pub fn chat_id(&self) -> Uuid {
        self.chat.id
    }

    /// The last seq handed out (or the `since_seq` it started after).
    pub fn delivered(&self) -> u64 {
        self.next - 1
    }

    /// The chat's durable seq right now.
    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// Sends a message on behalf of this stream's user, exactly like `Send`.
    ///
    /// # Errors
    /// As [`Chats::send`]; `Invalid` if the draft names another chat or user.
    pub async fn send(&self, mut draft: Draft) -> Result<Arc<Message>> {
        let chat_id = self.chat.id.to_string();
        if !draft.chat_id.is_empty() && draft.chat_id != chat_id {
            return Err(invalid(
                "chat.Connect.WrongChatID",
                format!(
                    "this stream is for chat {chat_id}, the message names {:?}",
                    draft.chat_id
                ),
            ));
        }
        if !draft.user_id.is_empty() && draft.user_id != self.user_id {
            return Err(invalid(
                "chat.Connect.WrongUserID",
                format!(
                    "this stream is for user {:?}, the message names {:?}",
                    self.user_id, draft.user_id
                ),
            ));
        }
        draft.chat_id = chat_id;
        draft.user_id.clone_from(&self.user_id);
        self.chats.send(draft).await
    }

    /// Messages `self.next..=durable`, at most `stream_buffer`: from the
    /// recent ring when it has them, else from the store.
    fn read(&self, durable: u64) -> Result<Vec<Arc<Message>>> {
        let buffer = self.chats.shared.limits.stream_buffer as u64;
        let want = (durable - self.next + 1).min(buffer) as usize;
        {
            let recent = &lock(&self.chat.recent).messages;
            if let Some(first) = recent.front() {
                if first.seq <= self.next {
                    let skip = (self.next - first.seq) as usize;
                    if skip < recent.len() {
                        return Ok(recent.iter().skip(skip).take(want).cloned().collect());
                    }
                } else {
                    self.chats
                        .shared
                        .metrics
                        .lagging_reads
                        .fetch_add(1, Relaxed);
                }
            }
        }
        let last = self.next + want as u64 - 1;
        Ok(self
            .chats
            .shared
            .store
            .range(&self.chat.id, self.next, last, want)?
            .into_iter()
            .map(Arc::new)
            .collect())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.chats.shared.metrics.streams_open.fetch_sub(1, Relaxed);
    }
}

fn invalid(id: &'static str, detail: impl Into<String>) -> Error {
    Error::Invalid(id, detail.into())
}

fn check_id(error_id: &'static str, field: &str, id: &str, limits: &Limits) -> Result<()> {
    if id.is_empty() {
        return Err(invalid(
            error_id,
            format!("{field}: an id must not be empty"),
        ));
    }
    if id.len() > limits.max_id_bytes {
        return Err(Error::TooLarge(
            error_id,
            format!(
                "{field}: an id is {} bytes; the limit is {}",
                id.len(),
                limits.max_id_bytes
            ),
        ));
    }
    Ok(())
}

/// Locks a std mutex. A poisoned lock means a panic while it was held; the
/// data it guards is still consistent (every critical section here writes
/// sled first and memory last), so carry on rather than fail every request.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
        let store = Store::open(dir.path(), 64 << 20).unwrap();
        let (chats, committer) = rt.block_on(async { Chats::start(store, limits) });
        (rt, dir, chats, committer)
    }

    fn stored(chats: &Chats, chat: &str) -> usize {
        chats
            .history(chat, 0, None, None)
            .map_or(0, |p| p.messages.len())
    }

    #[test]
    fn the_recent_window_is_bounded_by_count_and_bytes() {
        let msg = |seq, len| {
            Arc::new(Message {
                seq,
                text: "x".repeat(len),
                ..Message::default()
            })
        };
        let mut recent = Recent::default();
        for seq in 1..=1000 {
            recent.push(msg(seq, 10));
        }
        assert_eq!(recent.messages.len(), RECENT);
        assert_eq!(
            recent.messages.front().map(|m| m.seq),
            Some(1000 - RECENT as u64 + 1)
        );
        for seq in 1001..=1100 {
            recent.push(msg(seq, 64 * 1024));
        }
        assert!(recent.bytes <= RECENT_BYTES, "{}", recent.bytes);
        assert_eq!(
            recent.bytes,
            recent.messages.iter().map(|m| m.text.len()).sum::<usize>()
        );
        assert_eq!(
            recent.messages.back().map(|m| m.seq),
            Some(1100),
            "the newest is kept"
        );
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
        };
        let (rt, _dir, chats, _committer) = open(limits.clone());
        let open_chat = rt.block_on(chats.new_chat(vec![])).unwrap().to_string();
        let members = vec!["ann".to_string(), "bob".to_string()];
        let member_chat = rt
            .block_on(chats.new_chat(members.clone()))
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
                    let before = stored(&chats, &chat_id);
                    let draft = Draft {
                        client_id: client_id.clone(),
                        chat_id: chat_id.clone(),
                        user_id: user_id.clone(),
                        subject: subject.clone(),
                        text: text.clone(),
                    };
                    let result = rt.block_on(chats.send(draft));
                    let after = stored(&chats, &chat_id);
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
                let valid =
                    user_ids.len() <= 4 && user_ids.iter().all(|u| !u.is_empty() && u.len() <= 8);
                match rt.block_on(chats.new_chat(user_ids.clone())) {
                    Ok(chat) => {
                        prop_assert!(valid);
                        if !user_ids.is_empty() {
                            let mut reversed = user_ids.clone();
                            reversed.reverse();
                            prop_assert_eq!(rt.block_on(chats.new_chat(reversed)).unwrap(), chat);
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

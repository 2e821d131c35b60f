//! Live fan-out: each chat's durable seq and window of recent messages, the
//! subscriptions that read them, and the follower that brings in what other
//! replicas commit.

use crate::store::Backend as _;
use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use uuid::Uuid;

use super::{
    budget::{Budget, Lease},
    invalid, Chats, Draft,
};
use crate::{
    error::{Error, Result},
    model::{Kind, Message, View},
    store::{bus::Wake, lock},
};

/// Messages kept in memory per chat for live streams, so that a stream that
/// keeps up never reads the store. Older ones are read from the store.
const RECENT: usize = 256;
/// ...and at most this many bytes (of [`Message::weight`]), so that large
/// messages cannot make the window big (256 × 64 KiB would be 16 MiB a
/// chat). Every window's bytes are also leased from the memory budget.
const RECENT_BYTES: usize = 1 << 20;
/// A window with nothing new for this long is dropped (its streams have
/// long read it; a late one reads the store).
pub(super) const RECENT_IDLE: Duration = Duration::from_secs(60);
/// How often followed chats are compared with the store, in case a wake-up
/// from another replica was lost.
const RESYNC_EVERY: Duration = Duration::from_secs(2);

/// In-memory state of one chat.
pub(super) struct ChatState {
    pub(super) id: Uuid,
    /// Sorted; empty for an open chat.
    pub(super) members: Vec<String>,
    /// The last seq known durable and published. Live streams wait on it.
    pub(super) durable: watch::Sender<u64>,
    /// The newest durable messages, contiguous in seq, while streams are open.
    pub(super) recent: Mutex<Recent>,
    /// Live signals (read, typing, presence) for the streams that opted in
    /// to events; made when the first such stream opens.
    pub(super) signals: Mutex<Option<broadcast::Sender<Arc<Message>>>>,
}

/// Signals a slow event stream may fall behind by before it misses some
/// (they are ephemeral: a reconnecting client reads state back).
const SIGNALS: usize = 64;

/// The in-memory window of a chat's newest durable messages.
pub(super) struct Recent {
    messages: VecDeque<Arc<Message>>,
    /// The weight of `messages`, leased from the memory budget.
    lease: Lease,
    /// When the last message came in.
    touched: Option<tokio::time::Instant>,
    /// Per message in the window that was edited or deleted: the seq of
    /// the change its version there reflects, so that versions arriving out
    /// of order (two commit groups, or this replica's commit and the bus)
    /// never replace a newer one.
    revised: HashMap<u64, u64>,
}

impl Recent {
    pub(super) fn new(lease: Lease) -> Recent {
        Recent {
            messages: VecDeque::new(),
            lease,
            touched: None,
            revised: HashMap::new(),
        }
    }

    pub(super) fn clear(&mut self) {
        self.messages.clear();
        self.revised.clear();
        self.lease.shrink_to(0);
        self.touched = None;
    }

    /// Whether nothing came in for [`RECENT_IDLE`].
    pub(super) fn idle(&self) -> bool {
        self.touched.is_some_and(|t| t.elapsed() >= RECENT_IDLE)
    }

    /// Appends, dropping the oldest past [`RECENT`] messages or
    /// [`RECENT_BYTES`]. With no room in the budget the window is dropped
    /// instead (it is a cache: streams read the store).
    fn push(&mut self, msg: Arc<Message>, budget: &Budget) {
        if !budget.grow(&mut self.lease, msg.weight()) {
            self.clear();
            return;
        }
        self.messages.push_back(msg);
        self.touched = Some(tokio::time::Instant::now());
        let mut bytes = self.lease.bytes();
        while self.messages.len() > RECENT || (bytes > RECENT_BYTES && self.messages.len() > 1) {
            if let Some(old) = self.messages.pop_front() {
                bytes -= old.weight();
                self.revised.remove(&old.seq);
            }
        }
        self.lease.shrink_to(bytes);
    }
}

impl ChatState {
    pub(super) fn check_member(&self, error_id: &'static str, user_id: &str) -> Result<()> {
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
                format!(
                    "user {} is not a member of chat {}",
                    super::shown(user_id),
                    self.id
                ),
            ))
        }
    }

    /// Puts a durable message in the recent window, if streams are open.
    /// Messages may come twice (this replica's commit and the bus) and out
    /// of order (two commit paths): the window only ever holds a contiguous
    /// run of seqs, and starts over when a message does not follow it.
    pub(super) fn publish(&self, msg: Arc<Message>, budget: &Budget) {
        let mut recent = lock(&self.recent);
        let back = recent.messages.back().map(|m| m.seq);
        if back.is_some_and(|b| msg.seq <= b) {
            return; // already there, or older than the window
        }
        if self.durable.receiver_count() == 0 || back.is_some_and(|b| b + 1 != msg.seq) {
            // No stream to serve (the window is dropped with the last
            // stream), or a hole: start over.
            recent.clear();
        }
        if self.durable.receiver_count() > 0 {
            recent.push(msg, budget);
        }
    }

    /// Hands a signal to the chat's event streams on this replica, if any.
    pub(super) fn signal(&self, signal: Arc<Message>) {
        if let Some(tx) = lock(&self.signals).as_ref() {
            let _ = tx.send(signal);
        }
    }

    /// A receiver of the chat's signals.
    pub(super) fn signals(&self) -> broadcast::Receiver<Arc<Message>> {
        lock(&self.signals)
            .get_or_insert_with(|| broadcast::Sender::new(SIGNALS))
            .subscribe()
    }

    /// Puts the new version of an edited or deleted message in the recent
    /// window, if it holds the message, so that streams reading from the
    /// window see what the store would return. `at` is the seq of the
    /// change that version includes (at least): an older version than the
    /// one in the window is ignored.
    pub(super) fn revise(&self, message: &Message, at: u64) {
        let mut recent = lock(&self.recent);
        let Some(front) = recent.messages.front().map(|m| m.seq) else {
            return;
        };
        let Some(i) = message.seq.checked_sub(front) else {
            return;
        };
        if recent
            .messages
            .get(i as usize)
            .is_none_or(|slot| slot.seq != message.seq)
        {
            return;
        }
        if recent.revised.get(&message.seq).is_some_and(|&v| v >= at) {
            return;
        }
        recent.revised.insert(message.seq, at);
        recent.messages[i as usize] = Arc::new(message.clone());
    }

    /// Raises the durable seq (never lowers it), waking live streams. Every
    /// seq up to it must be durable: a store commits a chat's seqs in order.
    pub(super) fn advance(&self, seq: u64) {
        self.durable.send_if_modified(|durable| {
            let newer = seq > *durable;
            if newer {
                *durable = seq;
            }
            newer
        });
    }
}

impl Chats {
    /// Follows other replicas: reads what `wakes` announce and publishes it
    /// to this replica's streams, and compares every followed chat with the
    /// store on [`Wake::Resync`] and every few seconds. The returned
    /// [`Follower`] owns the task.
    pub fn follow(&self, wakes: mpsc::UnboundedReceiver<Wake>) -> Follower {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(follow_loop(self.clone(), wakes, stopped));
        Follower { stop, task }
    }

    /// Hands a signal from another replica to this one's streams of its
    /// chat (if this replica has the chat in memory, it may have streams).
    fn remote_signal(&self, signal: Message) {
        let state = lock(&self.shared.live).chats.get(&signal.chat).cloned();
        if let Some(state) = state {
            state.signal(Arc::new(signal));
        }
    }

    /// Reads what other replicas committed to `chat` up to `seq`, and publishes it.
    ///
    /// A wake-up is a hint, not a fact (anyone who can NOTIFY can send one):
    /// the durable seq only moves as far as the store confirms.
    pub(super) async fn catch_up(&self, state: &Arc<ChatState>, seq: u64) -> Result<()> {
        let durable = *state.durable.borrow();
        if seq <= durable {
            return Ok(());
        }
        let store = &self.shared.store;
        if state.durable.receiver_count() == 0 || seq - durable > RECENT as u64 {
            // Nobody to serve from memory, or too much for the window:
            // streams read the store themselves (the window may hold
            // messages edited or deleted in what was skipped).
            lock(&state.recent).clear();
            state.advance(seq.min(store.last_seq(&state.id).await?));
            return Ok(());
        }
        let messages = store
            .read(&state.id, durable + 1, seq, RECENT, RECENT_BYTES)
            .await?;
        for msg in messages {
            let seq = msg.seq;
            if matches!(msg.kind, Kind::Edit | Kind::Delete) {
                // The message as it is now, for streams reading the window.
                let target = store.read(&state.id, msg.target, msg.target, 1, usize::MAX);
                if let Some(now) = target.await?.first() {
                    // Read after `seq` was committed: includes every change up to it.
                    state.revise(now, seq);
                }
            }
            state.publish(Arc::new(msg), &self.shared.budget);
            state.advance(seq);
        }
        Ok(())
    }
}

/// Owner of the follower task (see [`Chats::follow`]).
pub struct Follower {
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Follower {
    /// Stops following and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn follow_loop(
    chats: Chats,
    mut wakes: mpsc::UnboundedReceiver<Wake>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut timer = tokio::time::interval(RESYNC_EVERY);
    timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval(chats.heartbeat_every());
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut received = Vec::new();
    loop {
        let mut resync = false;
        tokio::select! {
            n = wakes.recv_many(&mut received, 4096) => if n == 0 { return },
            _ = timer.tick() => resync = true,
            _ = heartbeat.tick() => {
                chats.heartbeat().await;
                continue;
            }
            _ = &mut stop => return,
        }
        // Newest seq per chat: many wake-ups for one chat cost one read.
        let mut wanted: HashMap<Uuid, u64> = HashMap::new();
        for wake in received.drain(..) {
            match wake {
                Wake::Chat(chat, seq) => {
                    chats.shared.metrics.bus_wakeups.inc();
                    let w = wanted.entry(chat).or_default();
                    *w = (*w).max(seq);
                }
                Wake::Resync => resync = true,
                Wake::Signal(replica, signal) if replica != chats.shared.store.replica() => {
                    match signal.kind {
                        Kind::Join | Kind::Leave => chats.remote_presence(replica, &signal),
                        _ => chats.remote_signal(signal),
                    }
                }
                // This replica's own, heard back.
                Wake::Signal(..) => {}
            }
        }
        let followed: Vec<Arc<ChatState>> = {
            let live = lock(&chats.shared.live);
            if resync {
                // Only chats with live streams: History and new streams
                // read the store's own last seq.
                live.chats
                    .values()
                    .filter(|s| s.durable.receiver_count() > 0)
                    .cloned()
                    .collect()
            } else {
                wanted
                    .keys()
                    .filter_map(|c| live.chats.get(c).cloned())
                    .collect()
            }
        };
        if resync && !followed.is_empty() {
            let ids: Vec<Uuid> = followed.iter().map(|s| s.id).collect();
            match chats.shared.store.last_seqs(&ids).await {
                Ok(seqs) => {
                    for (chat, seq) in seqs {
                        let w = wanted.entry(chat).or_default();
                        *w = (*w).max(seq);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot compare live chats with the store"),
            }
        }
        for state in followed {
            if let Some(&seq) = wanted.get(&state.id) {
                if let Err(e) = chats.catch_up(&state, seq).await {
                    tracing::warn!(error = %e, chat_id = %state.id, "cannot read new messages");
                }
            }
        }
    }
}

/// A live feed of one chat for one user (the core of Connect). Pull-based:
/// it holds no queue, only the next seq it wants, so a reader that falls
/// behind costs nothing and later catches up from the store, with no gap,
/// while writers never wait for it.
pub struct Subscription {
    pub(super) chats: Chats,
    pub(super) chat: Arc<ChatState>,
    pub(super) user_id: String,
    pub(super) next: u64,
    pub(super) durable: watch::Receiver<u64>,
    pub(super) closing: watch::Receiver<bool>,
    /// When the caller's credential expires: the feed ends then.
    pub(super) expires: Option<tokio::time::Instant>,
    /// The memory budget's lease on the last batch handed out, which the
    /// caller may still hold (a client that stops reading pins it); given
    /// back when the next batch is asked for.
    pub(super) lease: Option<Lease>,
    /// What of the log it hands out: messages only, or (opted in) events
    /// and tombstones too.
    pub(super) view: View,
    /// The chat's live signals, for a stream that opted in to events.
    pub(super) signals: Option<broadcast::Receiver<Arc<Message>>>,
    /// Counts the stream towards its user's presence (with `--presence`)
    /// until it is dropped.
    pub(super) _present: Option<super::Present>,
}

impl Subscription {
    /// The next messages, in seq order, each exactly once; waits while there
    /// are none. Empty when all it read is hidden from this stream's view
    /// (events, tombstones), so that [`Subscription::delivered`] moves on. At most `--stream-buffer` messages and
    /// `--stream-buffer-bytes` (but for the first), leased from the memory
    /// budget until the next call. Cancel-safe: nothing is consumed until
    /// it returns.
    ///
    /// # Errors
    /// `Unavailable` when the server is shutting down; `Busy` when the
    /// memory budget stays spent; `Store`.
    pub async fn next_batch(&mut self) -> Result<Vec<Arc<Message>>> {
        // The caller asks for more: it is done with the last batch.
        self.lease = None;
        loop {
            if *self.closing.borrow_and_update() {
                return Err(Error::Unavailable(format!(
                    "the server is shutting down; reconnect with since-seq: {}",
                    self.next - 1
                )));
            }
            if self
                .expires
                .is_some_and(|e| e <= tokio::time::Instant::now())
            {
                return Err(Error::Unauthenticated(
                    "chat.Auth.InvalidToken",
                    format!(
                        "the token has expired; reconnect with a fresh one and since-seq: {}",
                        self.next - 1
                    ),
                ));
            }
            let durable = *self.durable.borrow_and_update();
            if self.next <= durable {
                let (mut batch, lease) = self.read(durable).await?;
                if let Some(last) = batch.last() {
                    self.next = last.seq + 1;
                    batch.retain(|m| m.shown(self.view));
                    // Possibly empty (only entries this stream does not
                    // show): the caller still learns how far it got, which
                    // a half-closed call waits for.
                    self.lease = Some(lease);
                    return Ok(batch);
                }
                // The store could not yet return what the watermark promises
                // (a read replica behind, say): wait for the next change.
            }
            let expires = self.expires;
            let signals = self.signals.as_mut();
            tokio::select! {
                // The sender lives in the chat state we hold: never closed.
                _ = self.durable.changed() => {}
                _ = self.closing.changed() => {}
                // Checked at the top of the loop.
                () = tokio::time::sleep_until(expires.unwrap_or_else(far_future)), if expires.is_some() => {}
                signal = next_signal(signals) => {
                    if let Some(signal) = signal {
                        return Ok(vec![signal]);
                    }
                }
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
                    "this stream is for chat {chat_id}, the message names {}",
                    super::shown(&draft.chat_id)
                ),
            ));
        }
        if !draft.user_id.is_empty() && draft.user_id != self.user_id {
            return Err(invalid(
                "chat.Connect.WrongUserID",
                format!(
                    "this stream is for user {}, the message names {}",
                    super::shown(&self.user_id),
                    super::shown(&draft.user_id)
                ),
            ));
        }
        draft.chat_id = chat_id;
        draft.user_id.clone_from(&self.user_id);
        // The stream's user was checked against the caller when it opened.
        self.chats.send(draft, None).await
    }

    /// Messages `self.next..=durable`, at most `stream_buffer` and
    /// `stream_buffer_bytes`, and their lease: from the recent window when
    /// it has them, else from the store.
    async fn read(&self, durable: u64) -> Result<(Vec<Arc<Message>>, Lease)> {
        let shared = &self.chats.shared;
        let (count, bytes) = (
            shared.limits.stream_buffer as u64,
            shared.limits.stream_buffer_bytes,
        );
        let want = (durable - self.next + 1).min(count) as usize;
        let from_window = {
            let recent = &lock(&self.chat.recent).messages;
            match recent.front() {
                Some(first) if first.seq <= self.next => {
                    let skip = (self.next - first.seq) as usize;
                    let mut fits = crate::model::within_bytes(bytes);
                    (skip < recent.len()).then(|| {
                        recent
                            .iter()
                            .skip(skip)
                            .take(want)
                            .take_while(|m| fits(m))
                            .cloned()
                            .collect::<Vec<_>>()
                    })
                }
                Some(_) => {
                    shared.metrics.lagging_reads.inc();
                    None
                }
                None => None,
            }
        };
        if let Some(batch) = from_window {
            // Already in memory; leased again because a stalled client
            // keeps it alive after the window has moved on.
            let weight = batch.iter().map(|m| m.weight()).sum();
            let lease = shared.budget.lease_for_stream(weight).await?;
            return Ok((batch, lease));
        }
        // From the store: room for a full batch first, then only what came.
        let mut lease = shared.budget.lease_for_stream(bytes).await?;
        let last = self.next + want as u64 - 1;
        // Boxed: a database read is a large future, and an idle stream
        // should not carry its space (this one is made only when reading).
        let read = Box::pin(
            shared
                .store
                .read(&self.chat.id, self.next, last, want, lease.bytes()),
        );
        let batch: Vec<Arc<Message>> = read.await?.into_iter().map(Arc::new).collect();
        lease.shrink_to(batch.iter().map(|m| m.weight()).sum());
        Ok((batch, lease))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.chats.shared.metrics.streams_open.dec();
        // The last stream of the chat: nobody needs its window any more.
        // (A stream opening meanwhile finds it empty and reads the store.)
        if self.chat.durable.receiver_count() <= 1 {
            lock(&self.chat.recent).clear();
        }
    }
}

/// The next signal of the chat; never resolves without a receiver. A stream that fell behind skips what it
/// missed: signals are ephemeral.
async fn next_signal(rx: Option<&mut broadcast::Receiver<Arc<Message>>>) -> Option<Arc<Message>> {
    let Some(rx) = rx else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(signal) => return Some(signal),
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            // The sender lives in the chat state the stream holds.
            Err(broadcast::error::RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// An instant no stream lives to see (for a `select!` arm that is off).
fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recent_window_is_bounded_by_count_bytes_and_the_budget() {
        let msg = |seq, len| {
            Arc::new(Message {
                seq,
                text: "x".repeat(len),
                ..Message::default()
            })
        };
        let metrics = Arc::new(crate::metrics::Metrics::default());
        let budget = Budget::new(64 << 20, Duration::from_millis(10), metrics);
        let mut recent = Recent::new(budget.empty());
        for seq in 1..=1000 {
            recent.push(msg(seq, 10), &budget);
        }
        assert_eq!(recent.messages.len(), RECENT);
        assert_eq!(
            recent.messages.front().map(|m| m.seq),
            Some(1000 - RECENT as u64 + 1)
        );
        for seq in 1001..=1100 {
            recent.push(msg(seq, 64 * 1024), &budget);
        }
        let weight: usize = recent.messages.iter().map(|m| m.weight()).sum();
        assert!(weight <= RECENT_BYTES, "{weight}");
        assert_eq!(
            recent.lease.bytes(),
            weight,
            "the lease is the window's weight"
        );
        assert_eq!(budget.in_use(), weight);
        assert_eq!(
            recent.messages.back().map(|m| m.seq),
            Some(1100),
            "the newest is kept"
        );
        // No room in the budget: the window goes, and gives its bytes back.
        let _rest = budget.try_lease((64 << 20) - budget.in_use()).unwrap();
        recent.push(msg(1101, 10), &budget);
        assert!(recent.messages.is_empty());
        assert_eq!(recent.lease.bytes(), 0);
    }
}

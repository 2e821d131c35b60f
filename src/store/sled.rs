//! The sled backend: the embedded default. One process owns one directory.
//!
//! # Key layout
//!
//! Everything lives in sled's default tree but the inbox keys (`I`, `P`,
//! `A`, `O`), which have a tree of their own, `inbox` (one log and one
//! flush for both). The first byte of a key says what
//! it is; integers are big-endian so that byte order is numeric order.
//!
//! | key | value | why this order |
//! |---|---|---|
//! | `C` chat(16) | [`ChatValue`] | point lookup by chat id |
//! | `M` chat(16) seq(8) | [`MessageValue`] | one chat's messages are one contiguous range, in seq order: History pages and catch-up are range scans, the last seq is one `next_back` |
//! | `D` chat(16) user_len(2) user client_id | seq(8) | idempotency: (chat, user, client_id) to the stored seq; the length prefix makes (user, client_id) unambiguous |
//! | `U` members key | chat(16) | New's idempotency: the canonical member set ([`member_set_key`]) to its chat |
//! | `I` user_len(2) user chat(16) | [`ReadValue`] | the inbox: one user's chats are one range (members from New, open-chat posters from their first Send), with the user's read position; written per commit group, not per message |
//! | `P` chat(16) user | empty | who has posted to an open chat (ReadState lists their read positions) |
//! | `A` chat(16) | [`ActivityValue`] | the chat's counters for the inbox: last seq, message count, last activity; one write per chat per commit group, so unread counts cost no write per recipient |
//! | `O` user_len(2) user active(8) chat(16) | empty | the inbox in its order, newest last: a ListChats page is one reverse range scan as long as the page, whatever the inbox's size. `active` is the chat's `A` active_us (sign bit flipped, so that byte order is numeric order); a chat's keys move (one per member, or per poster of an open chat) when its activity does, once per commit group |
//! | `V` | layout version (u32) | 2: the `I`, `P` and `A` keys exist for every chat; 3: and the `X` keys for every deleted message; 4: and the `O` keys of every inbox entry (each written from the rest on first open) |
//! | `Q` chat(16) seq(8) at(8) | [`MessageValue`] | an edit's or delete's rewrite of the entry at `seq`, by the change at seq `at`, until that change is durable (see below) |
//! | `X` chat(16) seq(8) | empty | a deleted message, once its delete is durable (written with the rewrite that clears it): unread counts leave out the deleted messages after a read position by counting a range of these, with no write per recipient |
//! | `H` | 66 KiB of zeros, removed at once | the write probe of readiness after a failed write ([`SledStore::ping`]); no other key starts with `H` |
//!
//! A chat's log under `M` holds messages and their edit and delete events
//! (one gap-free seq for both). An edit rewrites its message in place (and
//! lists the event's seq in it); a delete clears the message's subject and
//! text and those of its edits. Older copies of the node stay in sled's log
//! until it reuses the space, at no set time (README, "Deleting for good").
//! The message is already durable and readable, so its rewrite must not
//! show before the change is durable: the change's entry and its rewrites
//! (under `Q` keys) go in one batch (rare, so sled's global batch lock is
//! fine); after the flush that makes them durable, each rewrite moves over
//! its entry, in one batch with the removal of its `Q` key. A crash between
//! leaves the `Q` key, which the next open settles. A change staged while
//! another's rewrite is pending builds on that rewrite.
//!
//! `chat(16)` is the chat's UUID in its 16 raw bytes. Values are protobuf
//! encodings (prost) of the value types below, so new fields can be added
//! without rewriting old data, and decoding garbage is an error, not a panic.
//!
//! # Durable once flushed
//! A sled write is visible at once but durable only after the next flush. So
//! this backend allocates seqs itself ([`SledStore::stage`] writes the
//! message under the chat's append lock, in the caller's task), and
//! [`SledStore::commit`] is one flush for everything staged so far (group
//! commit), after which the chat's durable seq moves up. Every read is
//! bounded by the durable seq: nothing a crash could lose is shown.
//!
//! # Why a message and its idempotency key are two plain inserts
//! A sled `Batch` would make them atomic, but `apply_batch` takes sled's
//! global write lock and made the append path ten times slower (measured
//! with chat-bench scenario 2). Instead the `D` key is written first (one
//! compare-and-swap that also tells whether it existed), then the message,
//! and sled recovers a prefix of its log. So a crash leaves either both, or
//! only the `D` key, pointing at a seq that has no message or, after
//! restart, another message. A `D` key is only believed when the message it
//! points to has the same user and client_id; a stale one is claimed anew. A
//! message never exists without its key, so a retry never stores a duplicate.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use prost::Message as _;
use uuid::Uuid;

use super::{lock, Backend, Committed, Page, Result, Staged, StoreError};
use crate::model::{
    content_digest, member_set_key, Append, ChatRecord, InboxEntry, Kind, Marked, Message, Outcome,
    ReadMark, Refusal, View,
};

const CHAT: u8 = b'C';
const MESSAGE: u8 = b'M';
const DEDUPE: u8 = b'D';
const MEMBERS: u8 = b'U';
const PENDING: u8 = b'Q';
const GONE: u8 = b'X';
const INBOX: u8 = b'I';
const POSTER: u8 = b'P';
const ACTIVITY: u8 = b'A';
const ORDER: u8 = b'O';
const VERSION: &[u8] = b"V";
/// Chats whose counters are kept in memory (about 100 bytes each).
const COUNTERS_CACHED: usize = 1 << 17;
/// The tree of the `I`, `P` and `A` keys.
const INBOX_TREE: &str = "inbox";
/// The key layout this code writes (see the module docs).
const LAYOUT: u32 = 4;
/// How far back an inbox preview looks for a message that is not deleted.
const PREVIEW_LOOKBACK: u64 = 64;
const PROBE: &[u8] = b"H";
/// The size of the probe: a full-size message and its keys.
const PROBE_BYTES: usize = 66 * 1024;
/// Free space needed before writes are tried again after a failed one.
const FREE_TO_RESUME: u64 = 16 << 20;
/// Probes that fail with room on the disk before the store is given up.
const STUCK_PROBES: u32 = 3;

/// Bytes free for unprivileged writers on the filesystem of `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `path` is a NUL-terminated string and `stat` a buffer of the
    // right type, which statvfs fills on success.
    let stat = unsafe {
        if libc::statvfs(path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    Some(stat.f_bavail as u64 * stat.f_frsize as u64)
}
/// Seq states of chats with nothing in flight are forgotten past this many.
const SWEEP_AT: usize = 4096;

/// A message as stored under its `M` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MessageValue {
    /// Server-assigned UUID, as text.
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub client_id: String,
    /// Redundant with the key; kept so a value is self-describing.
    #[prost(bytes = "vec", tag = "3")]
    pub chat: Vec<u8>,
    #[prost(string, tag = "4")]
    pub user_id: String,
    /// Unix seconds.
    #[prost(int64, tag = "5")]
    pub sent_at: i64,
    #[prost(string, tag = "6")]
    pub subject: String,
    #[prost(string, tag = "7")]
    pub text: String,
    #[prost(uint64, tag = "8")]
    pub seq: u64,
    /// [`Kind::number`]; 0 (a message) in every value written before events.
    #[prost(int32, tag = "9")]
    pub kind: i32,
    #[prost(uint64, tag = "10")]
    pub target: u64,
    #[prost(int64, tag = "11")]
    pub edited_at: i64,
    #[prost(bool, tag = "12")]
    pub deleted: bool,
    /// 0 in values written before it existed: then every entry was a
    /// message, so it is the seq.
    #[prost(uint64, tag = "13")]
    pub n: u64,
    /// 0 in values written before it existed: then `sent_at` in µs.
    #[prost(int64, tag = "14")]
    pub at_us: i64,
    #[prost(bytes = "vec", tag = "15")]
    pub original: Vec<u8>,
    /// A message: the seqs of its edit events (a delete clears them too).
    #[prost(uint64, repeated, tag = "16")]
    pub edits: Vec<u64>,
}

impl From<&Message> for MessageValue {
    fn from(m: &Message) -> Self {
        MessageValue {
            id: m.id.clone(),
            client_id: m.client_id.clone(),
            chat: m.chat.as_bytes().to_vec(),
            user_id: m.user_id.clone(),
            sent_at: m.sent_at,
            subject: m.subject.clone(),
            text: m.text.clone(),
            seq: m.seq,
            kind: m.kind.number(),
            target: m.target,
            edited_at: m.edited_at,
            deleted: m.deleted,
            n: m.n,
            at_us: m.at_us,
            original: m.original.clone(),
            edits: Vec::new(),
        }
    }
}

impl From<MessageValue> for Message {
    fn from(v: MessageValue) -> Self {
        Message {
            id: v.id,
            client_id: v.client_id,
            // The store only ever writes 16-byte ids.
            chat: Uuid::from_slice(&v.chat).unwrap_or_default(),
            user_id: v.user_id,
            sent_at: v.sent_at,
            subject: v.subject,
            text: v.text,
            seq: v.seq,
            kind: Kind::stored(v.kind),
            target: v.target,
            edited_at: v.edited_at,
            deleted: v.deleted,
            n: if v.n == 0 && v.kind == 0 { v.seq } else { v.n },
            at_us: if v.at_us == 0 {
                v.sent_at.saturating_mul(1_000_000)
            } else {
                v.at_us
            },
            original: v.original,
        }
    }
}

/// A user's read position in a chat, under its `I` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadValue {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// The chat's message count at `seq`.
    #[prost(uint64, tag = "2")]
    pub n: u64,
    /// In an open chat, the position of a user who has only read it
    /// (MarkRead) and never posted: kept, but it puts the chat in no
    /// inbox and the user in no ReadState until they post.
    #[prost(bool, tag = "3")]
    pub reader_only: bool,
}

/// A chat's counters, under its `A` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ActivityValue {
    #[prost(uint64, tag = "1")]
    pub last_seq: u64,
    /// Messages in the log ([`Message::n`] of the last entry).
    #[prost(uint64, tag = "2")]
    pub n: u64,
    /// Creation or the last entry, in µs.
    #[prost(int64, tag = "3")]
    pub active_us: i64,
    /// The newest message's seq (0: none).
    #[prost(uint64, tag = "4")]
    pub last_message: u64,
}

/// A chat as stored under its `C` key.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChatValue {
    /// Sorted and deduplicated. Empty: an open chat anyone may post to.
    #[prost(string, repeated, tag = "1")]
    pub members: Vec<String>,
    /// Unix seconds.
    #[prost(int64, tag = "2")]
    pub created_at: i64,
    #[prost(int64, tag = "3")]
    pub created_us: i64,
}

impl From<ChatValue> for ChatRecord {
    fn from(v: ChatValue) -> Self {
        ChatRecord {
            members: v.members,
            created_at: v.created_at,
            created_us: if v.created_us == 0 {
                v.created_at.saturating_mul(1_000_000)
            } else {
                v.created_us
            },
        }
    }
}

/// Handle to the sled store. Cloning is cheap (sled's `Db` and an `Arc`).
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    /// The `I`, `P` and `A` keys, in a tree of their own: small, so that
    /// the inbox's many point reads and its range scan stay shallow.
    inbox: sled::Tree,
    /// Chats' counters as their `A` keys hold them (written through by the
    /// committer), so that an inbox of thousands of chats reads one range
    /// of `I` keys and memory; at most [`COUNTERS_CACHED`] chats.
    counters: Arc<Mutex<HashMap<Uuid, ActivityValue>>>,
    /// Per chat being written to: the append lock and the durable seq.
    seqs: Arc<Mutex<Seqs>>,
    /// Serializes New for member sets, so that one set gets one chat.
    new_lock: Arc<Mutex<()>>,
    /// Held to write while a chat's `O` keys move (new keys, its `A` key,
    /// old keys removed) and to read while an inbox page is read, so that
    /// a page never sees a chat at both places or at neither.
    order_lock: Arc<std::sync::RwLock<()>>,
    /// A write or flush failed (a full disk, say) and no probe has
    /// succeeded since: readiness is off until one does.
    failing: Arc<std::sync::atomic::AtomicBool>,
    /// The directory, to ask its filesystem for free space.
    dir: Arc<std::path::PathBuf>,
    /// Probes in a row that failed although the disk had room.
    stuck: Arc<std::sync::atomic::AtomicU32>,
}

struct Seqs {
    chats: HashMap<Uuid, Arc<Mutex<ChatSeqs>>>,
    sweep_at: usize,
}

/// One chat's seqs while it is being written to.
struct ChatSeqs {
    /// The last seq written (durable or not): the next message gets one more.
    written: u64,
    /// The last seq known flushed: reads stop here.
    durable: u64,
    /// Messages in the log up to `written` ([`Message::n`]).
    messages: u64,
    /// The chat's counters as its `A` key holds them: the committer, the
    /// only writer of `A` keys once a chat exists, writes them blind from here.
    counters: ActivityValue,
}

impl SledStore {
    /// Opens (or creates) the store in `dir`, with at most `cache_bytes`
    /// of sled's page cache in memory.
    ///
    /// # Errors
    /// When sled cannot open the directory: another process holds it, it is
    /// not a sled database, or it is corrupt.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStore> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        let store = SledStore {
            inbox: db.open_tree(INBOX_TREE)?,
            counters: Arc::new(Mutex::new(HashMap::new())),
            db,
            seqs: Arc::new(Mutex::new(Seqs {
                chats: HashMap::new(),
                sweep_at: SWEEP_AT,
            })),
            new_lock: Arc::new(Mutex::new(())),
            order_lock: Arc::default(),
            failing: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            dir: Arc::new(dir.to_owned()),
            stuck: Arc::new(std::sync::atomic::AtomicU32::new(0)),
        };
        store.settle_all()?;
        store.upgrade()?;
        Ok(store)
    }

    /// Refuses at once while a failed write has not been followed by a
    /// successful probe: a store out of space would otherwise be asked (and
    /// may block a thread) for every retry.
    fn check_writable(&self) -> Result<()> {
        match self.failing.load(std::sync::atomic::Ordering::Relaxed) {
            true => Err(StoreError::Failing(
                "no room on its disk, or another write error",
            )),
            false => Ok(()),
        }
    }

    /// Notes that a write failed: [`SledStore::ping`] probes from now on.
    pub fn write_failed(&self) {
        self.failing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the store takes writes. After a failed write: only once its
    /// filesystem has [`FREE_TO_RESUME`] bytes free again and a probe — a
    /// write under [`PROBE`] as large as the largest message, and a flush —
    /// succeeds. So readiness comes back by itself when the disk has room,
    /// and not while a few small writes would still squeeze in.
    pub async fn ping(&self) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.failing.load(Relaxed) {
            return true;
        }
        if self.broken().is_some()
            || free_bytes(&self.dir).is_some_and(|free| free < FREE_TO_RESUME)
        {
            return false;
        }
        // On a blocking thread: a store in trouble may block a write for
        // long (or for good), and must not take a runtime thread with it.
        // Not answering in time is a failed probe too.
        let db = self.db.clone();
        let probe = tokio::task::spawn_blocking(move || {
            db.insert(PROBE, vec![0u8; PROBE_BYTES])?;
            db.flush()?;
            db.remove(PROBE)?;
            db.flush().map(|_| ())
        });
        let ok = matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), probe).await,
            Ok(Ok(Ok(())))
        );
        if ok {
            self.failing.store(false, Relaxed);
            self.stuck.store(0, Relaxed);
        } else {
            self.stuck.fetch_add(1, Relaxed);
        }
        ok
    }

    /// Why the store cannot recover by itself, if it cannot: sled does not
    /// take writes again after a failed one (a full disk) even once the
    /// disk has room, until it is reopened. Then the way back is a restart,
    /// which loses nothing acknowledged (every acknowledged message was
    /// flushed before its answer).
    pub fn broken(&self) -> Option<String> {
        (self.stuck.load(std::sync::atomic::Ordering::Relaxed) >= STUCK_PROBES).then(|| {
            format!(
                "the store at {:?} still refuses writes although its disk has room again \
                 (sled does not recover in place after a failed write); exiting so that \
                 the service is restarted — nothing acknowledged is lost",
                self.dir
            )
        })
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<()> {
        self.db.flush_async().await?;
        Ok(())
    }

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

    fn insert_chat(
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
    fn chat_seqs(&self, chat: &Uuid) -> Result<Arc<Mutex<ChatSeqs>>> {
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
    fn stage_event(&self, mut event: Message, messages: u64) -> Result<Staged> {
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
    fn current(&self, chat: &Uuid, seq: u64) -> Result<Option<MessageValue>> {
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
    fn settle(&self, chat: &Uuid, at: u64, rewritten: &[u64]) -> Result<()> {
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
    fn pending_of(&self, chat: &Uuid, at: u64) -> Result<Vec<u64>> {
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
    fn settle_all(&self) -> Result<()> {
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

    /// The highest durable seq of the chat (0 for none).
    pub fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        if let Some(s) = lock(&self.seqs).chats.get(chat) {
            return Ok(lock(s).durable);
        }
        self.stored_last_seq(chat)
    }

    /// The highest seq written to the chat, durable or not.
    fn stored_last_seq(&self, chat: &Uuid) -> Result<u64> {
        let prefix = message_prefix(chat);
        match self.db.scan_prefix(prefix).next_back() {
            Some(entry) => Ok(seq_of_key(&entry?.0)),
            None => Ok(0),
        }
    }

    /// Claims the idempotency key (chat, user, client_id) for a message
    /// about to be appended at `seq`, or returns the message already stored
    /// under it. A key left stale by a crash (see the module docs) is
    /// claimed anew. The caller holds the chat's append lock.
    fn claim(
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

    fn message(&self, chat: &Uuid, seq: u64) -> Result<Option<Message>> {
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
    fn read_known(
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

    /// One History page (see [`super::Store::page`]).
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

    /// Raises `user`'s read position in `chat` to `mark` (never lowers
    /// it); the position before, if the user had one.
    fn raise_read(
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
    fn read_mark(&self, user: &str, chat: &Uuid) -> Result<ReadMark> {
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
    fn counters(&self, chat: &Uuid) -> Result<ActivityValue> {
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
    fn set_counters(
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
    fn listers(&self, chat: &Uuid) -> Result<Vec<String>> {
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
    fn activity(&self, chat: &Uuid) -> Result<ActivityValue> {
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
    fn remember(&self, chat: &Uuid, a: &ActivityValue) {
        let mut counters = lock(&self.counters);
        if counters.len() >= COUNTERS_CACHED && !counters.contains_key(chat) {
            // A cache: starting over is always correct.
            counters.clear();
        }
        counters.insert(*chat, a.clone());
    }

    /// `user`'s inbox (see [`super::Store::inbox`]): a reverse scan of
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
    fn unread(&self, chat: &Uuid, messages: u64, read: &ReadValue) -> Result<u64> {
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
    fn preview(&self, chat: &Uuid, seq: u64) -> Result<Option<Message>> {
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

    /// Writes the `I`, `P` and `A` keys of chats stored before they existed
    /// (layout 1), once: members' inbox entries, open chats' posters (from
    /// their idempotency keys) and every chat's counters.
    fn upgrade(&self) -> Result<()> {
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
    fn upgrade_to_2(&self) -> Result<()> {
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

/// The contract, on sled: its own methods, with the policy after a failed
/// write (refuse writes until a probe succeeds, see [`SledStore::ping`]).
impl Backend for SledStore {
    async fn chat(&self, chat: &Uuid) -> Result<Option<ChatRecord>> {
        SledStore::chat(self, chat)
    }

    async fn create_chat(&self, id: Uuid, record: &ChatRecord) -> Result<Uuid> {
        SledStore::create_chat(self, id, record).inspect_err(|_| self.write_failed())
    }

    fn stage(&self, append: Append) -> Result<Staged> {
        SledStore::stage(self, append).inspect_err(|_| self.write_failed())
    }

    async fn commit(&self, batch: Vec<Staged>) -> Committed {
        match SledStore::commit(self, batch).await {
            Ok(outcomes) => Committed {
                outcomes,
                failed: None,
            },
            Err(e) => {
                self.write_failed();
                Committed {
                    outcomes: Vec::new(),
                    failed: Some(e),
                }
            }
        }
    }

    async fn last_seq(&self, chat: &Uuid) -> Result<u64> {
        SledStore::last_seq(self, chat)
    }

    async fn last_seqs(&self, chats: &[Uuid]) -> Result<Vec<(Uuid, u64)>> {
        let mut seqs = Vec::with_capacity(chats.len());
        for c in chats {
            if self.db.contains_key(chat_key(c))? {
                seqs.push((*c, SledStore::last_seq(self, c)?));
            }
        }
        Ok(seqs)
    }

    async fn read(
        &self,
        chat: &Uuid,
        first: u64,
        last: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<Message>> {
        SledStore::read(self, chat, first, last, limit, max_bytes)
    }

    async fn page(
        &self,
        chat: &Uuid,
        before: Option<u64>,
        after: Option<u64>,
        limit: usize,
        max_bytes: usize,
        view: View,
    ) -> Result<Page> {
        SledStore::page(self, chat, before, after, limit, max_bytes, view)
    }

    async fn inbox(
        &self,
        user: &str,
        after: Option<(i64, Uuid)>,
        limit: usize,
    ) -> Result<Vec<InboxEntry>> {
        SledStore::inbox(self, user, after, limit)
    }

    async fn mark_read(&self, user: &str, chat: &Uuid, seq: u64) -> Result<Marked> {
        SledStore::mark_read(self, user, chat, seq).inspect_err(|_| self.write_failed())
    }

    async fn read_marks(
        &self,
        chat: &Uuid,
        users: &[String],
        limit: usize,
    ) -> Result<Vec<(String, ReadMark)>> {
        SledStore::read_marks(self, chat, users, limit)
    }

    async fn chats_after(
        &self,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Uuid, ChatRecord)>> {
        SledStore::chats_after(self, after, limit)
    }

    async fn import_chat(&self, id: Uuid, record: &ChatRecord) -> Result<()> {
        SledStore::import_chat(self, id, record)
    }

    async fn import_messages(&self, messages: Vec<Message>) -> Result<()> {
        SledStore::import_messages(self, messages)
    }

    /// One process: nobody to tell.
    async fn notify(&self, _signal: &Message) -> Result<()> {
        Ok(())
    }

    async fn heartbeat(&self, _present: &[(Uuid, String)]) -> Result<()> {
        Ok(())
    }

    fn replica(&self) -> u64 {
        0
    }

    async fn flush(&self) -> Result<()> {
        SledStore::flush(self).await
    }

    fn broken(&self) -> Option<String> {
        SledStore::broken(self)
    }

    async fn ping(&self) -> bool {
        SledStore::ping(self).await
    }
}

/// What moves a read position (see [`SledStore::raise_read`]).
#[derive(Clone, Copy, PartialEq)]
enum Raise {
    /// The user posted: the chat is theirs (in their inbox) from now on.
    Post,
    /// MarkRead, in an open chat or not.
    Read { open: bool },
}

/// The `X` key of the deleted message at `seq`.
fn gone_key(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = message_key(chat, seq);
    key[0] = GONE;
    key
}

/// Whether a stored entry is a deleted message (not an event).
fn is_deleted_message(value: &[u8]) -> bool {
    MessageValue::decode(value).is_ok_and(|v| v.deleted && v.kind == Kind::Message.number())
}

/// The `Q` keys rewriting the entry at `seq`.
fn pending_prefix(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = message_key(chat, seq);
    key[0] = PENDING;
    key
}

/// The `Q` key of the rewrite of the entry at `seq` by the change at `at`.
fn pending_key(chat: &Uuid, seq: u64, at: u64) -> [u8; 33] {
    let mut key = [0; 33];
    key[..25].copy_from_slice(&pending_prefix(chat, seq));
    key[25..].copy_from_slice(&at.to_be_bytes());
    key
}

/// The prefix of a user's `I` keys.
fn inbox_prefix(user: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + user.len() + 16);
    key.push(INBOX);
    key.extend_from_slice(&(user.len() as u16).to_be_bytes());
    key.extend_from_slice(user.as_bytes());
    key
}

fn inbox_key(user: &str, chat: &Uuid) -> Vec<u8> {
    let mut key = inbox_prefix(user);
    key.extend_from_slice(chat.as_bytes());
    key
}

/// The prefix of a user's `O` keys.
fn order_prefix(user: &str) -> Vec<u8> {
    let mut key = inbox_prefix(user);
    key[0] = ORDER;
    key
}

/// A user's `O` key of a chat active at `active` µs.
fn order_key(user: &str, active: i64, chat: &Uuid) -> Vec<u8> {
    let mut key = order_prefix(user);
    key.extend_from_slice(&((active as u64) ^ (1 << 63)).to_be_bytes());
    key.extend_from_slice(chat.as_bytes());
    key
}

/// The (active, chat) of an `O` key's part after the user's prefix.
fn parse_order_key(rest: &[u8]) -> Option<(i64, Uuid)> {
    let active = u64::from_be_bytes(rest.get(..8)?.try_into().ok()?) ^ (1 << 63);
    Some((active as i64, Uuid::from_slice(rest.get(8..)?).ok()?))
}

fn poster_prefix(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = POSTER;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

fn poster_key(chat: &Uuid, user: &str) -> Vec<u8> {
    [&poster_prefix(chat)[..], user.as_bytes()].concat()
}

fn activity_key(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = ACTIVITY;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

/// The chat and user of a `D` key.
fn parse_dedupe_key(key: &[u8]) -> Option<(Uuid, String)> {
    let chat = Uuid::from_slice(key.get(1..17)?).ok()?;
    let len = u16::from_be_bytes(key.get(17..19)?.try_into().ok()?) as usize;
    let user = std::str::from_utf8(key.get(19..19 + len)?).ok()?;
    Some((chat, user.to_owned()))
}

/// The `U` key of a member set.
fn members_key(members: &[String]) -> Vec<u8> {
    let mut key = vec![MEMBERS];
    key.extend_from_slice(&member_set_key(members));
    key
}

fn chat_key(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = CHAT;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

fn message_prefix(chat: &Uuid) -> [u8; 17] {
    let mut key = [0; 17];
    key[0] = MESSAGE;
    key[1..].copy_from_slice(chat.as_bytes());
    key
}

fn message_key(chat: &Uuid, seq: u64) -> [u8; 25] {
    let mut key = [0; 25];
    key[..17].copy_from_slice(&message_prefix(chat));
    key[17..].copy_from_slice(&seq.to_be_bytes());
    key
}

fn dedupe_key(chat: &Uuid, user_id: &str, client_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(19 + user_id.len() + client_id.len());
    key.push(DEDUPE);
    key.extend_from_slice(chat.as_bytes());
    key.extend_from_slice(&(user_id.len() as u16).to_be_bytes());
    key.extend_from_slice(user_id.as_bytes());
    key.extend_from_slice(client_id.as_bytes());
    key
}

/// The seq in the last 8 bytes of a message key.
fn seq_of_key(key: &[u8]) -> u64 {
    seq_of_value(&key[key.len().saturating_sub(8)..])
}

/// A big-endian u64; anything that is not 8 bytes reads as 0 (never written).
fn seq_of_value(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

fn decode<T: prost::Message + Default>(key: &[u8], value: &[u8]) -> Result<T> {
    T::decode(value).map_err(|source| StoreError::Corrupt {
        key: key.to_vec(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open() -> (tempfile::TempDir, SledStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path(), 64 << 20).unwrap();
        (dir, store)
    }

    fn append(chat: &Uuid, client_id: &str) -> Append {
        Append {
            message: Message {
                id: Uuid::new_v4().to_string(),
                client_id: client_id.into(),
                chat: *chat,
                user_id: "ann".into(),
                sent_at: 1,
                subject: String::new(),
                text: format!("from {client_id}"),
                ..Message::default()
            },
            dedupe: !client_id.is_empty(),
        }
    }

    /// Stages and commits one message as the chat logic does; its seq, and
    /// whether it was already stored.
    async fn send(store: &SledStore, chat: &Uuid, client_id: &str) -> (u64, bool) {
        let staged = store.stage(append(chat, client_id)).unwrap();
        match store.commit(vec![staged]).await.unwrap().pop().unwrap() {
            Outcome::Stored(m) => (m.seq, false),
            Outcome::Existing { stored, .. } => (stored.seq, true),
            other => panic!("a message staged as {other:?}"),
        }
    }

    #[tokio::test]
    async fn one_chats_messages_are_a_contiguous_range_in_seq_order() {
        let (_dir, store) = open();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        // Past 255 and 256: big-endian keys keep numeric order, so the
        // last key under the chat's prefix is its last seq.
        for seq in 1..=300 {
            store.stage(append(&a, "")).unwrap();
            if seq <= 10 {
                store.stage(append(&b, "")).unwrap();
            }
        }
        assert_eq!(
            store.read(&a, 1, 300, 10, usize::MAX).unwrap(),
            [],
            "nothing before the flush"
        );
        store.commit(vec![]).await.unwrap();
        // The flush made them durable, but only a commit that carried them
        // moves the durable seq: a fresh handle reads them from disk.
        let store = SledStore {
            seqs: Arc::new(Mutex::new(Seqs {
                chats: HashMap::new(),
                sweep_at: SWEEP_AT,
            })),
            ..store
        };
        let seqs = |v: Vec<Message>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(store.read(&a, 254, 258, 100, usize::MAX).unwrap()),
            [254, 255, 256, 257, 258]
        );
        assert_eq!(
            seqs(store.read(&a, 299, u64::MAX, 100, usize::MAX).unwrap()),
            [299, 300]
        );
        assert_eq!(
            seqs(store.read(&a, 1, 300, 3, usize::MAX).unwrap()),
            [1, 2, 3]
        );
        assert_eq!(
            seqs(store.read(&b, 9, 20, 100, usize::MAX).unwrap()),
            [9, 10],
            "no other chat's messages"
        );
        assert_eq!(store.last_seq(&a).unwrap(), 300);
        assert_eq!(store.last_seq(&b).unwrap(), 10);
        assert_eq!(store.last_seq(&Uuid::new_v4()).unwrap(), 0);
    }

    #[tokio::test]
    async fn a_claimed_key_returns_its_message() {
        let (_dir, store) = open();
        let chat = Uuid::new_v4();
        assert_eq!(send(&store, &chat, "c1").await, (1, false));
        assert_eq!(send(&store, &chat, "c1").await, (1, true));
        // (user, client_id) is unambiguous: "an" + "nc1" is another key.
        assert!(store.claim(&chat, "an", "nc1", 2).unwrap().is_none());
    }

    #[tokio::test]
    async fn a_dedupe_key_left_without_its_message_is_claimed_anew() {
        let (_dir, store) = open();
        let chat = Uuid::new_v4();
        // As a crash between the two writes leaves it: the key, no message.
        assert!(store.claim(&chat, "ann", "c1", 1).unwrap().is_none());
        // After restart seq 1 goes to another message...
        assert_eq!(send(&store, &chat, "other").await, (1, false));
        // ...and the retry of c1 is stored anew, once.
        assert_eq!(send(&store, &chat, "c1").await, (2, false));
        assert_eq!(send(&store, &chat, "c1").await, (2, true));
    }

    #[tokio::test]
    async fn an_edit_shows_only_once_durable_and_a_crash_before_it_settles_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let chat = Uuid::new_v4();
        {
            let store = SledStore::open(dir.path(), 64 << 20).unwrap();
            send(&store, &chat, "c1").await;
            let mut edit = append(&chat, "e1");
            edit.message.kind = Kind::Edit;
            edit.message.target = 1;
            edit.message.text = "edited".into();
            let staged = store.stage(edit).unwrap();
            let text = |store: &SledStore| {
                store.read(&chat, 1, 1, 1, usize::MAX).unwrap()[0]
                    .text
                    .clone()
            };
            assert_eq!(
                text(&store),
                "from c1",
                "not before the flush that makes it durable"
            );
            // Flushed, but the process dies before the rewrite settles.
            store.flush().await.unwrap();
            drop(staged);
        }
        let store = SledStore::open(dir.path(), 64 << 20).unwrap();
        let now = store.read(&chat, 1, 2, 2, usize::MAX).unwrap();
        assert_eq!((now[0].text.as_str(), now[1].kind), ("edited", Kind::Edit));
        assert!(
            store.db.scan_prefix([PENDING]).next().is_none(),
            "settled at open"
        );
    }

    #[test]
    fn a_corrupt_value_is_an_error_not_a_panic() {
        let (_dir, store) = open();
        let chat = Uuid::new_v4();
        store
            .db
            .insert(message_key(&chat, 1), &[0xff, 0xff][..])
            .unwrap();
        assert!(matches!(
            store.message(&chat, 1),
            Err(StoreError::Corrupt { .. })
        ));
    }

    /// Fuzz: whatever bytes end up under the store's keys (a corrupt or
    /// foreign data dir), reading them is an error or a value, never a panic.
    /// `PROPTEST_CASES` sets how many cases (default 256).
    #[test]
    fn decoding_any_stored_bytes_never_panics() {
        use proptest::{collection::vec, prelude::*, test_runner::TestRunner};
        let (_dir, store) = open();
        let mut runner = TestRunner::new(ProptestConfig::default());
        let inputs = (vec(any::<u8>(), 0..300), vec(any::<u8>(), 0..12));
        runner
            .run(&inputs, |(value, tail)| {
                let chat = Uuid::new_v4();
                let db = &store.db;
                db.insert(message_key(&chat, 1), value.clone()).unwrap();
                db.insert(chat_key(&chat), value.clone()).unwrap();
                // Keys of odd lengths under the chat's prefixes.
                let mut odd = message_prefix(&chat).to_vec();
                odd.extend_from_slice(&tail);
                db.insert(odd, value.clone()).unwrap();
                let mut dedupe = dedupe_key(&chat, "ann", "c");
                db.insert(&dedupe, value.clone()).unwrap();
                dedupe.truncate(dedupe.len().min(tail.len()));
                let _ = store.chat(&chat);
                let _ = store.read(&chat, 0, u64::MAX, 10, usize::MAX);
                let _ = store.last_seq(&chat);
                let _ = store.claim(&chat, "ann", "c", 2);
                // What decodes re-encodes to the same value.
                if let Ok(Some(m)) = store.message(&chat, 1) {
                    let v = MessageValue::from(&m);
                    prop_assert_eq!(MessageValue::decode(&*v.encode_to_vec()).unwrap(), v);
                }
                Ok(())
            })
            .unwrap();
    }
}

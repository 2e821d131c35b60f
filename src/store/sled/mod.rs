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
//! | `U` members key | chat(16) | New's idempotency: the canonical member set ([`member_set_key`](crate::model::member_set_key)) to its chat |
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

mod append;
mod inbox;
mod keys;
mod read;
mod transfer;
mod upgrade;
mod values;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, Mutex},
};

use uuid::Uuid;

pub use values::{ActivityValue, ChatValue, MessageValue, ReadValue};

use super::{Backend, Committed, Page, Result, Staged, StoreError};
use crate::model::{Append, ChatRecord, InboxEntry, Marked, Message, ReadMark, View};
use keys::*;

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

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::model::{Kind, Outcome};

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

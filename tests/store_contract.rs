//! The store contract ([`chat::store::Backend`]), tested once and run on
//! both backends: sled in a temp dir, PostgreSQL in a database of its own
//! on the test cluster (`CHAT_TEST_PG_URL`; without it the PostgreSQL half
//! fails, it does not skip). Each property is a function generic over the
//! backend; `contract!` runs it on each.
//!
//! Writes go as the chat logic sends them: staged in the writer's task,
//! committed in groups by one committer task ([`Committer`]), in whatever
//! order they reach it, which is how the concurrency properties get their
//! interleavings.

mod common;

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use chat::{
    model::{Append, ChatRecord, Kind, Message, Outcome, Refusal, View, MAX_EDITS},
    store::{postgres::PgStore, Backend, Store},
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

/// Runs each named property on sled and on PostgreSQL.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = chat::store::sled::SledStore::open(dir.path(), 8 << 20).unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    super::$name(super::postgres(dir.path()).await).await;
                }
            )*
        }
    };
}

contract!(
    appends_take_gap_free_seqs_and_a_retry_returns_the_stored_message,
    history_pages_by_count_and_by_bytes_in_both_directions,
    an_edit_rewrites_its_message_and_a_delete_scrubs_it_and_its_edits,
    a_change_is_refused_for_no_message_another_sender_or_a_deleted_one,
    the_inbox_counts_unread_messages_leaving_out_deleted_ones,
    read_positions_only_move_forward_and_are_capped_at_the_end,
    an_export_imports_under_the_same_ids_and_seqs_continue,
    a_member_set_has_one_chat_and_an_open_chat_is_always_new,
    concurrent_sends_with_one_client_id_store_one_message,
    concurrent_sends_to_one_chat_take_every_seq_once,
    concurrent_edits_and_a_delete_apply_in_seq_order,
    concurrent_edits_stop_exactly_at_the_edit_limit,
    concurrent_mark_reads_only_move_forward,
);

/// A PostgreSQL store on a database of its own for `dir`.
async fn postgres(dir: &std::path::Path) -> PgStore {
    let mut config = chat::Config::with_data_dir(dir);
    config.store = chat::config::Secret(common::pg_database(dir).await);
    let spec = config.store_spec().unwrap();
    match chat::open_store(&config, &spec).await.unwrap() {
        Store::Postgres(p) => p,
        Store::Sled(_) => unreachable!("a postgres:// URL"),
    }
}

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

/// A message from `user` with its client_id.
fn message(chat: Uuid, user: &str, client_id: &str, text: &str) -> Append {
    let at_us = now_us();
    Append {
        message: Message {
            id: Uuid::new_v4().to_string(),
            client_id: client_id.into(),
            chat,
            user_id: user.into(),
            sent_at: at_us / 1_000_000,
            text: text.into(),
            at_us,
            ..Message::default()
        },
        dedupe: true,
    }
}

/// An edit (with `text`) or a delete (`kind`) of the message at `target`.
fn change(chat: Uuid, user: &str, client_id: &str, kind: Kind, target: u64, text: &str) -> Append {
    let mut a = message(chat, user, client_id, text);
    a.message.kind = kind;
    a.message.target = target;
    a
}

/// The chat logic's committer, reduced to what the contract needs: one
/// task committing whatever staged writes have arrived, as one group.
#[derive(Clone)]
struct Committer<B> {
    store: B,
    tx: mpsc::UnboundedSender<(chat::store::Staged, oneshot::Sender<Outcome>)>,
}

impl<B: Backend> Committer<B> {
    fn start(store: B) -> Committer<B> {
        let (tx, mut rx) =
            mpsc::unbounded_channel::<(chat::store::Staged, oneshot::Sender<Outcome>)>();
        let committing = store.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut group = vec![first];
                while let Ok(next) = rx.try_recv() {
                    group.push(next);
                }
                let (staged, replies): (Vec<_>, Vec<_>) = group.into_iter().unzip();
                let committed = committing.commit(staged).await;
                assert!(committed.failed.is_none(), "{:?}", committed.failed);
                for (outcome, reply) in committed.outcomes.into_iter().zip(replies) {
                    let _ = reply.send(outcome);
                }
            }
        });
        Committer { store, tx }
    }

    /// Stages in this task, then waits for the committer's answer.
    async fn append(&self, append: Append) -> Outcome {
        let staged = self.store.stage(append).unwrap();
        let (reply, answer) = oneshot::channel();
        self.tx.send((staged, reply)).unwrap();
        answer.await.expect("committed")
    }

    /// A message's seq once stored.
    async fn send(&self, chat: Uuid, user: &str, client_id: &str, text: &str) -> u64 {
        match self.append(message(chat, user, client_id, text)).await {
            Outcome::Stored(m) => m.seq,
            other => panic!("not stored: {other:?}"),
        }
    }
}

async fn new_chat<B: Backend>(store: &B, members: &[&str]) -> Uuid {
    let mut members: Vec<String> = members.iter().map(|m| m.to_string()).collect();
    members.sort();
    let record = ChatRecord {
        members,
        created_at: now_us() / 1_000_000,
        created_us: now_us(),
    };
    store.create_chat(Uuid::new_v4(), &record).await.unwrap()
}

/// Every entry of the chat, events included, oldest first.
async fn log<B: Backend>(store: &B, chat: Uuid) -> Vec<Message> {
    store
        .read(&chat, 1, u64::MAX, usize::MAX, usize::MAX)
        .await
        .unwrap()
}

async fn appends_take_gap_free_seqs_and_a_retry_returns_the_stored_message<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    for i in 1..=10u64 {
        assert_eq!(c.send(chat, "ann", &format!("a{i}"), "hi").await, i);
    }
    assert_eq!(store.last_seq(&chat).await.unwrap(), 10);
    match c.append(message(chat, "ann", "a3", "hi")).await {
        Outcome::Existing { stored, same } => assert_eq!((stored.seq, same), (3, true)),
        other => panic!("a retry: {other:?}"),
    }
    match c.append(message(chat, "ann", "a3", "something else")).await {
        Outcome::Existing { stored, same } => {
            assert_eq!((stored.seq, same, stored.text.as_str()), (3, false, "hi"))
        }
        other => panic!("a reused client_id: {other:?}"),
    }
    // Another sender's client_id is another key.
    assert_eq!(c.send(chat, "bob", "a3", "hi").await, 11);
    let seqs: Vec<u64> = log(&store, chat).await.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=11).collect::<Vec<_>>());
    let unknown = Uuid::new_v4();
    assert_eq!(store.last_seq(&unknown).await.unwrap(), 0);
    assert_eq!(
        store.last_seqs(&[chat, unknown]).await.unwrap(),
        [(chat, 11)],
        "only chats that exist"
    );
}

async fn history_pages_by_count_and_by_bytes_in_both_directions<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &[]).await;
    for i in 1..=20u64 {
        c.send(chat, "ann", &format!("m{i}"), &"x".repeat(100 * i as usize))
            .await;
    }
    let seqs = |p: &chat::store::Page| p.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = store
        .page(&chat, None, None, 5, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!(
        (seqs(&newest), newest.has_more),
        ((16..=20).collect(), true)
    );
    let before = store
        .page(&chat, Some(16), None, 5, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!(seqs(&before), (11..=15).collect::<Vec<_>>());
    let first = store
        .page(&chat, None, Some(0), 5, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!((seqs(&first), first.has_more), ((1..=5).collect(), true));
    let last = store
        .page(&chat, None, Some(15), 50, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!((seqs(&last), last.has_more), ((16..=20).collect(), false));
    // By bytes: as many as fit, and always at least one.
    let stored = log(&store, chat).await;
    let fit = store
        .page(
            &chat,
            None,
            Some(0),
            50,
            stored[..3].iter().map(Message::weight).sum(),
            View::MESSAGES,
        )
        .await
        .unwrap();
    assert_eq!((seqs(&fit), fit.has_more), (vec![1, 2, 3], true));
    let one = store
        .page(&chat, None, None, 50, 1, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!(seqs(&one), [20]);
    let read = store.read(&chat, 4, 9, 3, usize::MAX).await.unwrap();
    assert_eq!(read.iter().map(|m| m.seq).collect::<Vec<_>>(), [4, 5, 6]);
}

async fn an_edit_rewrites_its_message_and_a_delete_scrubs_it_and_its_edits<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    let seq = c.send(chat, "ann", "a1", "first").await;
    for (i, text) in ["second", "third"].into_iter().enumerate() {
        match c
            .append(change(chat, "ann", &format!("e{i}"), Kind::Edit, seq, text))
            .await
        {
            Outcome::Event { event, target } => {
                assert_eq!((event.kind, event.target), (Kind::Edit, seq));
                assert_eq!(target.text, text);
            }
            other => panic!("an edit: {other:?}"),
        }
    }
    let shown = store
        .page(&chat, None, None, 10, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!(shown.messages.len(), 1, "events are not messages");
    assert_eq!(shown.messages[0].text, "third");
    assert!(shown.messages[0].edited_at > 0);
    match c
        .append(change(chat, "ann", "d1", Kind::Delete, seq, ""))
        .await
    {
        Outcome::Event { target, .. } => assert!(target.deleted && target.text.is_empty()),
        other => panic!("a delete: {other:?}"),
    }
    let entries = log(&store, chat).await;
    assert_eq!(entries.len(), 4, "the message, two edits, the delete");
    for m in &entries {
        assert!(m.text.is_empty() && m.subject.is_empty(), "scrubbed: {m:?}");
    }
    assert!(entries[0].deleted);
    let shown = store
        .page(&chat, None, None, 10, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert!(shown.messages.is_empty(), "a deleted message is not shown");
    // A retried delete is the stored one, not a second.
    assert!(matches!(
        c.append(change(chat, "ann", "d1", Kind::Delete, seq, ""))
            .await,
        Outcome::Existing { same: true, .. }
    ));
    assert_eq!(store.last_seq(&chat).await.unwrap(), 4);
}

async fn a_change_is_refused_for_no_message_another_sender_or_a_deleted_one<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    let seq = c.send(chat, "ann", "a1", "hers").await;
    let refused = |o: Outcome| match o {
        Outcome::Refused(why) => why,
        other => panic!("not refused: {other:?}"),
    };
    let why = refused(
        c.append(change(chat, "bob", "b1", Kind::Edit, seq, "mine"))
            .await,
    );
    assert_eq!(why, Refusal::NotTheSender("ann".into()));
    let why = refused(
        c.append(change(chat, "ann", "a2", Kind::Edit, 99, "x"))
            .await,
    );
    assert_eq!(why, Refusal::NoSuchMessage);
    c.append(change(chat, "ann", "a3", Kind::Delete, seq, ""))
        .await;
    let why = refused(
        c.append(change(chat, "ann", "a4", Kind::Edit, seq, "x"))
            .await,
    );
    assert_eq!(why, Refusal::Deleted);
    // An event is not a message to change.
    let why = refused(
        c.append(change(chat, "ann", "a5", Kind::Edit, 2, "x"))
            .await,
    );
    assert_eq!(why, Refusal::NoSuchMessage);
    assert_eq!(store.last_seq(&chat).await.unwrap(), 2, "nothing stored");
}

async fn the_inbox_counts_unread_messages_leaving_out_deleted_ones<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let older = new_chat(&store, &["ann", "cid"]).await;
    let chat = new_chat(&store, &["ann", "bob"]).await;
    for i in 1..=3 {
        c.send(chat, "bob", &format!("b{i}"), &format!("message {i}"))
            .await;
    }
    let inbox = store.inbox("ann", None, 10).await.unwrap();
    let ids: Vec<Uuid> = inbox.iter().map(|e| e.chat).collect();
    assert_eq!(ids, [chat, older], "most recently active first");
    let e = &inbox[0];
    assert_eq!((e.unread, e.read_seq, e.last_seq), (3, 0, 3));
    assert_eq!(e.last_message.as_ref().unwrap().text, "message 3");
    assert_eq!(e.members, ["ann", "bob"]);
    // The sender has read their own.
    let bobs = store.inbox("bob", None, 10).await.unwrap();
    assert_eq!((bobs[0].unread, bobs[0].read_seq), (0, 3));
    // Deleting the last message: out of the count and of the preview.
    c.append(change(chat, "bob", "d3", Kind::Delete, 3, ""))
        .await;
    let e = &store.inbox("ann", None, 10).await.unwrap()[0];
    assert_eq!((e.unread, e.last_seq), (2, 4));
    assert_eq!(e.last_message.as_ref().unwrap().text, "message 2");
    let marked = store.mark_read("ann", &chat, 1).await.unwrap();
    assert_eq!((marked.mark.seq, marked.unread, marked.moved), (1, 1, true));
    // Paging by cursor: the next page starts after the last entry.
    let first = store.inbox("ann", None, 1).await.unwrap();
    let cursor = (first[0].active_us, first[0].chat);
    let next = store.inbox("ann", Some(cursor), 10).await.unwrap();
    assert_eq!(next.iter().map(|e| e.chat).collect::<Vec<_>>(), [older]);
    assert!(store.inbox("nobody", None, 10).await.unwrap().is_empty());
}

async fn read_positions_only_move_forward_and_are_capped_at_the_end<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    for i in 1..=4 {
        c.send(chat, "bob", &format!("b{i}"), "x").await;
    }
    let m = store.mark_read("ann", &chat, 3).await.unwrap();
    assert_eq!((m.mark.seq, m.unread, m.moved), (3, 1, true));
    let m = store.mark_read("ann", &chat, 2).await.unwrap();
    assert_eq!((m.mark.seq, m.unread, m.moved), (3, 1, false));
    let m = store.mark_read("ann", &chat, 1000).await.unwrap();
    assert_eq!((m.mark.seq, m.unread, m.moved), (4, 0, true));
    let users = vec!["ann".to_string(), "bob".to_string()];
    let marks = store.read_marks(&chat, &users, 10).await.unwrap();
    let seqs: Vec<(&str, u64)> = marks.iter().map(|(u, m)| (u.as_str(), m.seq)).collect();
    assert_eq!(seqs, [("ann", 4), ("bob", 4)]);
    // An open chat: its posters' positions, and nobody who only read.
    let open = new_chat(&store, &[]).await;
    c.send(open, "cid", "c1", "x").await;
    store.mark_read("eve", &open, 1).await.unwrap();
    let marks = store.read_marks(&open, &[], 10).await.unwrap();
    assert_eq!(
        marks.iter().map(|(u, _)| u.as_str()).collect::<Vec<_>>(),
        ["cid"]
    );
    assert!(store.inbox("eve", None, 10).await.unwrap().is_empty());
}

async fn an_export_imports_under_the_same_ids_and_seqs_continue<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    for i in 1..=3 {
        c.send(chat, "ann", &format!("a{i}"), &format!("message {i}"))
            .await;
    }
    c.append(change(chat, "ann", "e1", Kind::Edit, 2, "edited"))
        .await;
    let exported = store.chats_after(None, 100).await.unwrap();
    let (_, record) = exported.iter().find(|(id, _)| *id == chat).unwrap();
    let messages = log(&store, chat).await;

    // Into another chat id of the same store: a member set has one chat.
    let copy = Uuid::new_v4();
    assert!(store.import_chat(copy, record).await.is_err());
    // An open chat's copy imports under its own id, entries and all.
    let open_record = ChatRecord {
        members: Vec::new(),
        ..record.clone()
    };
    store.import_chat(copy, &open_record).await.unwrap();
    let copied: Vec<Message> = messages
        .iter()
        .map(|m| Message {
            chat: copy,
            ..m.clone()
        })
        .collect();
    store.import_messages(copied.clone()).await.unwrap();
    // Twice changes nothing.
    store.import_chat(copy, &open_record).await.unwrap();
    store.import_messages(copied).await.unwrap();
    let imported = log(&store, copy).await;
    let texts = |ms: &[Message]| {
        ms.iter()
            .map(|m| (m.seq, m.kind, m.text.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&imported), texts(&messages));
    assert_eq!(
        c.send(copy, "ann", "after", "next").await,
        5,
        "seq continues"
    );
    // The retry of an imported message is still a retry.
    assert!(matches!(
        c.append(message(copy, "ann", "a1", "message 1")).await,
        Outcome::Existing { .. }
    ));
    let ids: Vec<Uuid> = store
        .chats_after(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert!(ids.contains(&chat) && ids.contains(&copy));
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in id order");
}

async fn a_member_set_has_one_chat_and_an_open_chat_is_always_new<B: Backend>(store: B) {
    let a = new_chat(&store, &["ann", "bob"]).await;
    let b = new_chat(&store, &["bob", "ann"]).await;
    assert_eq!(a, b);
    let record = store.chat(&a).await.unwrap().unwrap();
    assert_eq!(record.members, ["ann", "bob"]);
    assert_ne!(new_chat(&store, &[]).await, new_chat(&store, &[]).await);
    assert!(store.chat(&Uuid::new_v4()).await.unwrap().is_none());
    // Concurrently: still one chat for one set.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { new_chat(&store, &["cid", "dan"]).await })
        })
        .collect();
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

async fn concurrent_sends_with_one_client_id_store_one_message<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    for trial in 0..10 {
        let chat = new_chat(&store, &[]).await;
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(async move { c.append(message(chat, "ann", "once", "hello")).await })
            })
            .collect();
        let mut stored = 0;
        for t in tasks {
            match t.await.unwrap() {
                Outcome::Stored(m) => {
                    assert_eq!(m.seq, 1);
                    stored += 1;
                }
                Outcome::Existing { stored: m, same } => assert!(same && m.seq == 1),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(stored, 1, "trial {trial}");
        assert_eq!(log(&store, chat).await.len(), 1, "trial {trial}");
    }
}

async fn concurrent_sends_to_one_chat_take_every_seq_once<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &[]).await;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let c = c.clone();
            tokio::spawn(async move { c.send(chat, "ann", &format!("m{i}"), "x").await })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
    let stored: Vec<u64> = log(&store, chat).await.iter().map(|m| m.seq).collect();
    assert_eq!(stored, seqs);
}

/// Issue 23's first finding, at the store: edits and a delete of one
/// message at once. Whatever order their commits come back in, the delete
/// stays, every edit's text is scrubbed, and the log agrees with itself.
async fn concurrent_edits_and_a_delete_apply_in_seq_order<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    for trial in 0..30 {
        let seq = c.send(chat, "ann", &format!("m{trial}"), "original").await;
        let tasks: Vec<_> = (0..7)
            .map(|i| {
                let c = c.clone();
                let (kind, text) = match i {
                    3 => (Kind::Delete, String::new()),
                    _ => (Kind::Edit, format!("edit {i}")),
                };
                let id = format!("t{trial}-{i}");
                tokio::spawn(
                    async move { c.append(change(chat, "ann", &id, kind, seq, &text)).await },
                )
            })
            .collect();
        let mut deleted_at = None;
        for t in tasks {
            match t.await.unwrap() {
                Outcome::Event { event, .. } if event.kind == Kind::Delete => {
                    deleted_at = Some(event.seq)
                }
                Outcome::Event { .. } | Outcome::Refused(Refusal::Deleted) => {}
                other => panic!("trial {trial}: {other:?}"),
            }
        }
        let deleted_at = deleted_at.expect("the delete is stored");
        let entries = store
            .read(&chat, seq, u64::MAX, usize::MAX, usize::MAX)
            .await
            .unwrap();
        assert!(entries[0].deleted, "trial {trial}: the delete stays");
        for e in &entries {
            assert!(e.text.is_empty(), "trial {trial}: not scrubbed: {e:?}");
            if e.kind == Kind::Edit {
                assert!(
                    e.seq < deleted_at,
                    "trial {trial}: an edit after the delete"
                );
            }
        }
    }
}

/// The edit limit counts exactly, however many edits race for the last slots.
async fn concurrent_edits_stop_exactly_at_the_edit_limit<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    let seq = c.send(chat, "ann", "m", "original").await;
    let extra = 50;
    let done = Arc::new(tokio::sync::Semaphore::new(64));
    let tasks: Vec<_> = (0..MAX_EDITS + extra)
        .map(|i| {
            let (c, done) = (c.clone(), done.clone());
            tokio::spawn(async move {
                let _slot = done.acquire().await.unwrap();
                c.append(change(
                    chat,
                    "ann",
                    &format!("e{i}"),
                    Kind::Edit,
                    seq,
                    &format!("{i}"),
                ))
                .await
            })
        })
        .collect();
    let (mut stored, mut refused) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Outcome::Event { .. } => stored += 1,
            Outcome::Refused(Refusal::TooManyEdits) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((stored, refused), (MAX_EDITS, extra));
    let newest = log(&store, chat).await.pop().unwrap();
    let shown = store
        .page(&chat, None, None, 1, usize::MAX, View::MESSAGES)
        .await
        .unwrap();
    assert_eq!(shown.messages[0].text, newest.text, "the newest edit shows");
}

async fn concurrent_mark_reads_only_move_forward<B: Backend>(store: B) {
    let c = Committer::start(store.clone());
    let chat = new_chat(&store, &["ann", "bob"]).await;
    for i in 1..=40 {
        c.send(chat, "bob", &format!("b{i}"), "x").await;
    }
    let tasks: Vec<_> = (0..64u64)
        .map(|i| {
            let store = store.clone();
            // Every position from 1 to 40, in a scrambled order, twice over.
            let seq = (i * 17) % 40 + 1;
            tokio::spawn(async move { (seq, store.mark_read("ann", &chat, seq).await.unwrap()) })
        })
        .collect();
    for t in tasks {
        let (asked, marked) = t.await.unwrap();
        assert!(marked.mark.seq >= asked, "{asked} -> {:?}", marked.mark);
        assert_eq!(marked.unread, 40 - marked.mark.seq);
    }
    let marks = store
        .read_marks(&chat, &["ann".to_string()], 1)
        .await
        .unwrap();
    assert_eq!(marks[0].1.seq, 40, "the highest asked for");
}

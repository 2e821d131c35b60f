//! The chat features beyond the original four RPCs — edits and deletions
//! as events in the chat's sequence, read state and unread counts, the
//! inbox, presence and typing — against the real server, on whichever
//! store `CHAT_TEST_STORE` names (scripts/test runs both).

mod common;

use std::time::Duration;

use chat::pb;
use common::*;
use tonic::{Code, Streaming};

const EDIT: i32 = pb::message::Kind::Edit as i32;
const DELETE: i32 = pb::message::Kind::Delete as i32;
const READ: i32 = pb::message::Kind::Read as i32;
const TYPING: i32 = pb::message::Kind::Typing as i32;
const JOIN: i32 = pb::message::Kind::Join as i32;
const LEAVE: i32 = pb::message::Kind::Leave as i32;

fn edit_req(chat: &str, user: &str, client_id: &str, seq: u64, text: &str) -> pb::EditRequest {
    pb::EditRequest {
        client_id: client_id.into(),
        chat_id: chat.into(),
        user_id: user.into(),
        seq,
        subject: String::new(),
        text: text.into(),
    }
}

fn delete_req(chat: &str, user: &str, client_id: &str, seq: u64) -> pb::DeleteRequest {
    pb::DeleteRequest {
        client_id: client_id.into(),
        chat_id: chat.into(),
        user_id: user.into(),
        seq,
    }
}

async fn history(
    c: &mut Client,
    chat: &str,
    limit: u32,
    before: Option<u64>,
    deleted: bool,
    events: bool,
) -> (Vec<pb::Message>, bool) {
    let page = c
        .history(pb::HistoryRequest {
            chat_id: chat.into(),
            limit,
            before_seq: before,
            include_deleted: deleted,
            include_events: events,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (page.messages, page.has_more)
}

fn seqs(msgs: &[pb::Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

/// A Connect stream; with `events`, opted in to events.
async fn open(
    c: &mut Client,
    chat: &str,
    user: &str,
    since: Option<&str>,
    events: bool,
) -> (
    tokio::sync::mpsc::Sender<pb::Message>,
    Streaming<pb::Message>,
) {
    let (tx, mut req) = connect_request(chat, user, since);
    if events {
        req.metadata_mut().insert("events", "all".parse().unwrap());
    }
    (tx, c.connect(req).await.unwrap().into_inner())
}

async fn next(rx: &mut Streaming<pb::Message>) -> pb::Message {
    tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream is still open")
}

/// The next entry of the given kind, skipping others (presence joins of
/// streams the test opened, say).
async fn next_of(rx: &mut Streaming<pb::Message>, kind: i32) -> pb::Message {
    loop {
        let m = next(rx).await;
        if m.kind == kind {
            return m;
        }
    }
}

async fn assert_quiet(rx: &mut Streaming<pb::Message>) {
    let got = tokio::time::timeout(Duration::from_millis(300), rx.message()).await;
    assert!(got.is_err(), "unexpected: {got:?}");
}

#[tokio::test]
async fn edits_and_deletes_keep_id_and_seq_and_history_shows_what_is_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let m1 = send(&mut c, &chat, "ann", "a1", "first").await;
    let m2 = send(&mut c, &chat, "ann", "a2", "secnod").await;
    let m3 = send(&mut c, &chat, "bob", "b1", "oops").await;

    let edited = c
        .edit(edit_req(&chat, "ann", "e1", 2, "second"))
        .await
        .unwrap()
        .into_inner();
    let now = edited.message.unwrap();
    assert_eq!((now.id.as_str(), now.seq), (m2.id.as_str(), 2));
    assert_eq!((now.text.as_str(), now.kind), ("second", 0));
    assert!(now.edited_at > 0);
    assert_eq!(edited.event_seq, 4, "an edit is the next seq of the chat");

    let deleted = c
        .delete(delete_req(&chat, "bob", "d1", 3))
        .await
        .unwrap()
        .into_inner();
    let tomb = deleted.message.unwrap();
    assert_eq!((tomb.id.as_str(), tomb.seq), (m3.id.as_str(), 3));
    assert!(tomb.deleted && tomb.text.is_empty());
    assert_eq!(deleted.event_seq, 5);

    // What an old client sees: the messages as they are now, no tombstone, no event.
    let (page, more) = history(&mut c, &chat, 0, None, false, false).await;
    assert_eq!(seqs(&page), [1, 2]);
    assert!(!more);
    assert_eq!(page[0], m1);
    assert_eq!(page[1].text, "second");
    // limit and has_more count what is returned.
    let (page, more) = history(&mut c, &chat, 1, None, false, false).await;
    assert_eq!((seqs(&page), more), (vec![2], true));
    let (page, more) = history(&mut c, &chat, 1, Some(2), false, false).await;
    assert_eq!((seqs(&page), more), (vec![1], false));
    // Tombstones on request.
    let (page, _) = history(&mut c, &chat, 0, None, true, false).await;
    assert_eq!(seqs(&page), [1, 2, 3]);
    assert!(page[2].deleted && page[2].text.is_empty() && page[2].subject.is_empty());
    // Events on request: the whole log, gap-free.
    let (page, _) = history(&mut c, &chat, 0, None, true, true).await;
    assert_eq!(seqs(&page), [1, 2, 3, 4, 5]);
    assert_eq!((page[3].kind, page[3].target_seq), (EDIT, 2));
    assert_eq!(
        (page[3].text.as_str(), page[3].user_id.as_str()),
        ("second", "ann")
    );
    assert_eq!((page[4].kind, page[4].target_seq), (DELETE, 3));
    let (page, more) = history(&mut c, &chat, 2, None, false, true).await;
    assert_eq!((seqs(&page), more), (vec![4, 5], true));
    server.stop().await;
}

#[tokio::test]
async fn only_the_sender_may_change_a_message_and_refused_changes_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    send(&mut c, &chat, "ann", "a1", "mine").await;
    send(&mut c, &chat, "ann", "a2", "gone soon").await;
    c.delete(delete_req(&chat, "ann", "d1", 2)).await.unwrap();
    let before = history(&mut c, &chat, 0, None, true, true).await.0;
    assert_eq!(seqs(&before), [1, 2, 3]);

    let cases: Vec<(pb::EditRequest, Code, &str)> = vec![
        (
            edit_req(&chat, "bob", "x1", 1, "hijacked"),
            Code::PermissionDenied,
            "chat.Edit.NotTheSender",
        ),
        (
            edit_req(&chat, "eve", "x2", 1, "hijacked"),
            Code::PermissionDenied,
            "chat.Edit.NotAMember",
        ),
        (
            edit_req(&chat, "ann", "x3", 99, "nothing there"),
            Code::NotFound,
            "chat.Edit.NoSuchMessage",
        ),
        (
            edit_req(&chat, "ann", "x4", 3, "an event is no message"),
            Code::NotFound,
            "chat.Edit.NoSuchMessage",
        ),
        (
            edit_req(&chat, "ann", "x5", 2, "back from the dead"),
            Code::FailedPrecondition,
            "chat.Edit.Deleted",
        ),
        (
            edit_req(&chat, "ann", "x6", 0, "which?"),
            Code::InvalidArgument,
            "chat.Edit.MissingSeq",
        ),
        (
            edit_req(&chat, "ann", "x7", 1, ""),
            Code::InvalidArgument,
            "chat.Edit.MissingText",
        ),
        (
            edit_req(&chat, "", "x8", 1, "who?"),
            Code::InvalidArgument,
            "chat.Edit.MissingUserID",
        ),
        (
            edit_req("", "ann", "x9", 1, "where?"),
            Code::InvalidArgument,
            "chat.Edit.MissingChatID",
        ),
        (
            edit_req(&uuid::Uuid::new_v4().to_string(), "ann", "x10", 1, "?"),
            Code::NotFound,
            "chat.Edit.InvalidChatID",
        ),
        // A client_id already used for a Send.
        (
            edit_req(&chat, "ann", "a1", 1, "reused key"),
            Code::AlreadyExists,
            "chat.Edit.ClientIDReused",
        ),
    ];
    for (req, code, id) in cases {
        let e = c.edit(req).await.unwrap_err();
        assert_error(&e, code, id);
    }
    let e = c
        .delete(delete_req(&chat, "bob", "y1", 1))
        .await
        .unwrap_err();
    assert_error(&e, Code::PermissionDenied, "chat.Delete.NotTheSender");
    let e = c
        .delete(delete_req(&chat, "ann", "y2", 7))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "chat.Delete.NoSuchMessage");
    assert_eq!(history(&mut c, &chat, 0, None, true, true).await.0, before);
    // A refused change left its client_id free for a valid one.
    c.edit(edit_req(&chat, "ann", "x3", 1, "mine, fixed"))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn changes_are_idempotent_and_a_retried_send_returns_the_message_as_it_is_now() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let sent = send(&mut c, &chat, "ann", "a1", "helo").await;
    let first = c
        .edit(edit_req(&chat, "ann", "e1", 1, "hello"))
        .await
        .unwrap()
        .into_inner();
    let again = c
        .edit(edit_req(&chat, "ann", "e1", 1, "hello"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again, first, "a retried edit stores nothing new");
    let e = c
        .edit(edit_req(&chat, "ann", "e1", 1, "other"))
        .await
        .unwrap_err();
    assert_error(&e, Code::AlreadyExists, "chat.Edit.ClientIDReused");
    // The original Send, retried after the edit: the message as it is now.
    let retried = send(&mut c, &chat, "ann", "a1", "helo").await;
    assert_eq!(
        (retried.id.as_str(), retried.text.as_str()),
        (sent.id.as_str(), "hello")
    );
    let e = c
        .send(send_req(&chat, "ann", "a1", "something else"))
        .await
        .unwrap_err();
    assert_error(&e, Code::AlreadyExists, "chat.Send.ClientIDReused");

    let gone = c
        .delete(delete_req(&chat, "ann", "d1", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.delete(delete_req(&chat, "ann", "d1", 1))
            .await
            .unwrap()
            .into_inner(),
        gone
    );
    // After the delete, each original request is still a retry.
    let retried = send(&mut c, &chat, "ann", "a1", "helo").await;
    assert!(retried.deleted && retried.text.is_empty());
    let edit_again = c
        .edit(edit_req(&chat, "ann", "e1", 1, "hello"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(edit_again.event_seq, first.event_seq);
    assert!(edit_again.message.unwrap().deleted);
    // Deleting again with another client_id is no error.
    c.delete(delete_req(&chat, "ann", "d2", 1)).await.unwrap();
    let log = history(&mut c, &chat, 0, None, true, true).await.0;
    assert_eq!(
        seqs(&log),
        [1, 2, 3, 4],
        "one edit, two deletes: nothing stored twice"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_messages_text_is_removed_from_storage() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "a1", "my password is hunter2").await;
    c.edit(edit_req(&chat, "ann", "e1", 1, "my password is hunter3"))
        .await
        .unwrap();
    c.delete(delete_req(&chat, "ann", "d1", 1)).await.unwrap();
    let log = history(&mut c, &chat, 0, None, true, true).await.0;
    assert!(log.iter().all(|m| m.text.is_empty()), "{log:?}");
    server.stop().await;
    // The stored values themselves, not only what is shown.
    match pg_url(dir.path()).await {
        Some(url) => {
            let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let n: i64 = db
                .query_one(
                    "SELECT count(*) FROM messages WHERE text LIKE '%hunter%'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(n, 0);
        }
        None => {
            let db = sled::open(dir.path()).unwrap();
            for entry in db.iter() {
                let (_, value) = entry.unwrap();
                let found = value.windows(6).any(|w| w == b"hunter");
                assert!(!found, "a stored value still holds the text");
            }
        }
    }
}

#[tokio::test]
async fn event_streams_get_changes_and_signals_in_order_and_a_resume_replays_changes_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let (_tx, mut old) = open(&mut c, &chat, "bob", None, false).await;
    let (_etx, mut ev) = open(&mut c, &chat, "bob", None, true).await;
    send(&mut c, &chat, "ann", "a1", "one").await;
    send(&mut c, &chat, "ann", "a2", "two").await;
    c.edit(edit_req(&chat, "ann", "e1", 1, "ONE"))
        .await
        .unwrap();
    c.delete(delete_req(&chat, "ann", "d1", 2)).await.unwrap();
    send(&mut c, &chat, "ann", "a3", "three").await;

    // The old client's view: messages only, a hole where events are.
    let got = [
        next(&mut old).await,
        next(&mut old).await,
        next(&mut old).await,
    ];
    assert_eq!(seqs(&got), [1, 2, 5]);
    assert!(got.iter().all(|m| m.kind == 0));
    assert_quiet(&mut old).await;

    // The event stream: everything in the log, in order.
    let mut log = Vec::new();
    while log.len() < 5 {
        let m = next(&mut ev).await;
        if m.seq > 0 {
            log.push(m);
        }
    }
    assert_eq!(seqs(&log), [1, 2, 3, 4, 5]);
    assert_eq!(
        (log[2].kind, log[2].target_seq, log[2].text.as_str()),
        (EDIT, 1, "ONE")
    );
    assert_eq!((log[3].kind, log[3].target_seq), (DELETE, 2));

    // A resume from seq 1 replays each change once; the deleted message
    // comes as a tombstone, the edited one as it is now.
    let (_rtx, mut resumed) = open(&mut c, &chat, "bob", Some("0"), true).await;
    let mut replay = Vec::new();
    while replay.len() < 5 {
        let m = next(&mut resumed).await;
        if m.seq > 0 {
            replay.push(m);
        }
    }
    assert_eq!(seqs(&replay), [1, 2, 3, 4, 5]);
    assert_eq!(replay[0].text, "ONE");
    assert!(replay[1].deleted && replay[1].text.is_empty());
    // An old client resuming does not see the deleted message at all.
    let (_otx, mut old_resumed) = open(&mut c, &chat, "bob", Some("0"), false).await;
    let got = [next(&mut old_resumed).await, next(&mut old_resumed).await];
    assert_eq!(seqs(&got), [1, 5]);
    assert_eq!(got[0].text, "ONE");

    // Read positions and typing reach event streams, not old ones.
    let marked = c
        .mark_read(pb::MarkReadRequest {
            chat_id: chat.clone(),
            user_id: "ann".into(),
            seq: 4,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        marked.read_seq, 5,
        "her own send at 5 already moved it there"
    );
    c.mark_read(pb::MarkReadRequest {
        chat_id: chat.clone(),
        user_id: "bob".into(),
        seq: 4,
    })
    .await
    .unwrap();
    let read = next_of(&mut ev, READ).await;
    assert_eq!(
        (read.user_id.as_str(), read.target_seq, read.seq),
        ("bob", 4, 0)
    );
    let typing = pb::TypingRequest {
        chat_id: chat.clone(),
        user_id: "ann".into(),
    };
    c.typing(typing.clone()).await.unwrap();
    c.typing(typing.clone()).await.unwrap();
    let t = next_of(&mut ev, TYPING).await;
    assert_eq!(t.user_id, "ann");
    // At most one typing signal every 3 s: the second call sent nothing.
    let got = tokio::time::timeout(Duration::from_millis(500), next_of(&mut ev, TYPING)).await;
    assert!(got.is_err(), "a second typing signal within 3 s: {got:?}");
    assert_quiet(&mut old).await;
    server.stop().await;
}

#[tokio::test]
async fn a_stream_may_only_opt_in_with_events_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let (_tx, mut req) = connect_request(&chat, "ann", None);
    req.metadata_mut().insert("events", "some".parse().unwrap());
    let e = c.connect(req).await.unwrap_err();
    assert_error(&e, Code::InvalidArgument, "chat.Connect.InvalidEvents");
    server.stop().await;
}

#[tokio::test]
async fn the_inbox_lists_a_users_chats_most_recently_active_first_with_unread_counts() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let a = new_chat(&mut c, &["ann", "bob"]).await;
    let b = new_chat(&mut c, &["ann", "cid"]).await;
    let open_chat = new_chat(&mut c, &[]).await;
    let inbox = |c: &mut Client, user: &str, limit: u32, cursor: &str| {
        let req = pb::ListChatsRequest {
            user_id: user.into(),
            limit,
            cursor: cursor.into(),
        };
        let mut c = c.clone();
        async move { c.list_chats(req).await.map(|r| r.into_inner()) }
    };
    let ids = |r: &pb::ListChatsResponse| {
        r.chats
            .iter()
            .map(|s| s.chat_id.clone())
            .collect::<Vec<_>>()
    };

    // Newest first: b was created after a; the open chat is not hers yet.
    let first = inbox(&mut c, "ann", 0, "").await.unwrap();
    assert_eq!(ids(&first), [b.clone(), a.clone()]);
    assert_eq!(first.chats[0].user_ids, ["ann", "cid"]);
    assert!(first.chats[0].last_message.is_none() && first.chats[0].unread == 0);

    // A message moves a chat to the top and counts as unread for the others.
    send(&mut c, &a, "bob", "b1", "hi ann").await;
    send(&mut c, &a, "bob", "b2", "are you there?").await;
    let now = inbox(&mut c, "ann", 0, "").await.unwrap();
    assert_eq!(ids(&now), [a.clone(), b.clone()]);
    let top = &now.chats[0];
    assert_eq!((top.unread, top.read_seq, top.last_seq), (2, 0, 2));
    assert_eq!(top.last_message.as_ref().unwrap().text, "are you there?");
    // The sender's own messages are read.
    let bobs = inbox(&mut c, "bob", 0, "").await.unwrap();
    assert_eq!((bobs.chats[0].unread, bobs.chats[0].read_seq), (0, 2));

    // Posting to an open chat puts it in the poster's inbox, at the top.
    send(&mut c, &open_chat, "ann", "o1", "hello world").await;
    let now = inbox(&mut c, "ann", 0, "").await.unwrap();
    assert_eq!(ids(&now), [open_chat.clone(), a.clone(), b.clone()]);

    // Reading moves forward only; counts follow.
    let mark = |seq| pb::MarkReadRequest {
        chat_id: a.clone(),
        user_id: "ann".into(),
        seq,
    };
    let r = c.mark_read(mark(1)).await.unwrap().into_inner();
    assert_eq!((r.read_seq, r.unread), (1, 1));
    let r = c.mark_read(mark(0)).await.unwrap().into_inner();
    assert_eq!((r.read_seq, r.unread), (1, 1), "a lower seq is a no-op");
    let r = c.mark_read(mark(1000)).await.unwrap().into_inner();
    assert_eq!(
        (r.read_seq, r.unread),
        (2, 0),
        "capped to the chat's last seq"
    );
    // Read receipts: every member's position.
    let state = c
        .read_state(pb::ReadStateRequest { chat_id: a.clone() })
        .await
        .unwrap()
        .into_inner();
    let positions: Vec<(&str, u64)> = state
        .positions
        .iter()
        .map(|p| (p.user_id.as_str(), p.read_seq))
        .collect();
    assert_eq!(positions, [("ann", 2), ("bob", 2)]);
    // An edit is no unread message, and a deleted one leaves the preview.
    c.edit(edit_req(&a, "bob", "e1", 2, "still there?"))
        .await
        .unwrap();
    let top = inbox(&mut c, "ann", 1, "").await.unwrap();
    assert_eq!(top.chats[0].chat_id, a);
    assert_eq!(top.chats[0].unread, 0);
    assert_eq!(
        top.chats[0].last_message.as_ref().unwrap().text,
        "still there?"
    );
    c.delete(delete_req(&a, "bob", "d1", 2)).await.unwrap();
    let top = inbox(&mut c, "ann", 1, "").await.unwrap();
    assert_eq!(top.chats[0].last_message.as_ref().unwrap().text, "hi ann");

    // Pages: limit and the cursor walk the inbox once.
    let p1 = inbox(&mut c, "ann", 2, "").await.unwrap();
    assert_eq!(p1.chats.len(), 2);
    assert!(!p1.next_cursor.is_empty());
    let p2 = inbox(&mut c, "ann", 2, &p1.next_cursor).await.unwrap();
    assert_eq!(ids(&p2), [b]);
    assert!(p2.next_cursor.is_empty());
    let e = inbox(&mut c, "ann", 2, "not-a-cursor").await.unwrap_err();
    assert_error(&e, Code::InvalidArgument, "chat.ListChats.InvalidCursor");
    let e = inbox(&mut c, "", 0, "").await.unwrap_err();
    assert_error(&e, Code::InvalidArgument, "chat.ListChats.MissingUserID");
    let e = c
        .mark_read(pb::MarkReadRequest {
            chat_id: a.clone(),
            user_id: "eve".into(),
            seq: 1,
        })
        .await
        .unwrap_err();
    assert_error(&e, Code::PermissionDenied, "chat.MarkRead.NotAMember");
    // An unknown user has an empty inbox.
    assert!(inbox(&mut c, "nobody", 0, "")
        .await
        .unwrap()
        .chats
        .is_empty());
    server.stop().await;
}

#[tokio::test]
async fn read_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    for i in 0..3 {
        send(&mut c, &chat, "bob", &format!("b{i}"), "hi").await;
    }
    c.mark_read(pb::MarkReadRequest {
        chat_id: chat.clone(),
        user_id: "ann".into(),
        seq: 2,
    })
    .await
    .unwrap();
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let inbox = c
        .list_chats(pb::ListChatsRequest {
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((inbox.chats[0].read_seq, inbox.chats[0].unread), (2, 1));
    server.stop().await;
}

#[tokio::test]
async fn presence_follows_open_streams_with_join_and_leave_events() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let presence = |c: &mut Client| {
        let mut c = c.clone();
        let chat = chat.clone();
        async move {
            c.presence(pb::PresenceRequest { chat_id: chat })
                .await
                .unwrap()
                .into_inner()
                .user_ids
        }
    };
    assert!(presence(&mut c).await.is_empty());
    let (_btx, mut bob) = open(&mut c, &chat, "bob", None, true).await;
    let joined = next_of(&mut bob, JOIN).await;
    assert_eq!(joined.user_id, "bob", "a stream sees its own user join");
    let (atx, ann) = open(&mut c, &chat, "ann", None, false).await;
    let joined = next_of(&mut bob, JOIN).await;
    assert_eq!(joined.user_id, "ann");
    assert_eq!(presence(&mut c).await, ["ann", "bob"]);
    // A second stream of ann's is no second join; closing one is no leave.
    let (atx2, ann2) = open(&mut c, &chat, "ann", None, false).await;
    drop((atx, ann));
    assert_eq!(presence(&mut c).await, ["ann", "bob"]);
    drop((atx2, ann2));
    let left = next_of(&mut bob, LEAVE).await;
    assert_eq!(left.user_id, "ann");
    let got = tokio::time::timeout(Duration::from_millis(300), next_of(&mut bob, JOIN)).await;
    assert!(
        got.is_err(),
        "ann's second stream made a second join: {got:?}"
    );
    wait_until_async(|| {
        let mut c = c.clone();
        let chat = chat.clone();
        async move {
            c.presence(pb::PresenceRequest { chat_id: chat })
                .await
                .unwrap()
                .into_inner()
                .user_ids
                == ["bob"]
        }
    })
    .await;
    server.stop().await;
}

#[tokio::test]
async fn presence_and_typing_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.presence = false;
    config.typing = false;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let (_tx, mut bob) = open(&mut c, &chat, "bob", None, true).await;
    let (_atx, _ann) = open(&mut c, &chat, "ann", None, false).await;
    let e = c
        .presence(pb::PresenceRequest {
            chat_id: chat.clone(),
        })
        .await
        .unwrap_err();
    assert_error(&e, Code::FailedPrecondition, "chat.Presence.Disabled");
    let e = c
        .typing(pb::TypingRequest {
            chat_id: chat.clone(),
            user_id: "ann".into(),
        })
        .await
        .unwrap_err();
    assert_error(&e, Code::FailedPrecondition, "chat.Typing.Disabled");
    // No join, no typing: the event stream stays quiet.
    assert_quiet(&mut bob).await;
    server.stop().await;
}

/// Waits (up to 10 s) until an async condition holds.
async fn wait_until_async<F, Fut>(cond: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_sled_store_of_layout_1_gets_its_inboxes_and_counters_on_first_open() {
    let dir = tempfile::tempdir().unwrap();
    // sled in both passes: this is about sled's key layout.
    let server = TestServer::start_with(chat::Config::with_data_dir(dir.path())).await;
    let mut c = server.client().await;
    let pair = new_chat(&mut c, &["ann", "bob"]).await;
    let open_chat = new_chat(&mut c, &[]).await;
    send(&mut c, &pair, "bob", "b1", "one").await;
    send(&mut c, &pair, "bob", "b2", "two").await;
    send(&mut c, &open_chat, "cid", "c1", "open one").await;
    server.stop().await;
    {
        // What layout 1 had: no inbox, poster, counter or version keys.
        let db = sled::open(dir.path()).unwrap();
        db.drop_tree("inbox").unwrap();
        db.remove("V").unwrap();
        db.flush().unwrap();
    }
    let server = TestServer::start_with(chat::Config::with_data_dir(dir.path())).await;
    let mut c = server.client().await;
    let list = |user: &str| pb::ListChatsRequest {
        user_id: user.into(),
        ..Default::default()
    };
    let ann = c.list_chats(list("ann")).await.unwrap().into_inner();
    assert_eq!(ann.chats.len(), 1);
    assert_eq!(
        (ann.chats[0].chat_id.as_str(), ann.chats[0].unread),
        (pair.as_str(), 2)
    );
    assert_eq!(ann.chats[0].last_message.as_ref().unwrap().text, "two");
    let cid = c.list_chats(list("cid")).await.unwrap().into_inner();
    assert_eq!(cid.chats[0].chat_id, open_chat);
    let readers = c
        .read_state(pb::ReadStateRequest {
            chat_id: open_chat.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(readers.positions.len(), 1, "the open chat's poster");
    server.stop().await;
}

#[tokio::test]
async fn a_half_closed_old_stream_ends_when_the_chat_ends_in_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "a1", "one").await;
    c.edit(edit_req(&chat, "ann", "e1", 1, "ONE"))
        .await
        .unwrap();
    // A stream without events, from the start: it gets message 1, then the
    // client half-closes; the edit at seq 2 is the chat's last entry.
    let (tx, mut rx) = open(&mut c, &chat, "bob", Some("0"), false).await;
    assert_eq!(next(&mut rx).await.text, "ONE");
    drop(tx);
    let end = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("the call ends after the half-close");
    assert!(matches!(end, Ok(None)), "{end:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_change_id_reused_for_another_message_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "a1", "one").await;
    send(&mut c, &chat, "ann", "a2", "two").await;
    c.delete(delete_req(&chat, "ann", "d1", 1)).await.unwrap();
    let e = c
        .delete(delete_req(&chat, "ann", "d1", 2))
        .await
        .unwrap_err();
    assert_error(&e, Code::AlreadyExists, "chat.Delete.ClientIDReused");
    c.edit(edit_req(&chat, "ann", "e1", 2, "same text"))
        .await
        .unwrap();
    let e = c
        .edit(edit_req(&chat, "ann", "e1", 1, "same text"))
        .await
        .unwrap_err();
    assert_error(&e, Code::AlreadyExists, "chat.Edit.ClientIDReused");
    assert_eq!(all_messages(&mut c, &chat).await[0].text, "same text");
    server.stop().await;
}

#[tokio::test]
async fn edits_and_typing_count_against_the_send_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    // One token, back after 10 s: the Send takes it, nothing else may write.
    config.rate_limit_send = 0.1;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "a1", "one").await;
    let e = c
        .edit(edit_req(&chat, "ann", "e1", 1, "ONE"))
        .await
        .unwrap_err();
    assert_error(&e, Code::ResourceExhausted, "chat.RateLimited");
    let e = c
        .typing(pb::TypingRequest {
            chat_id: chat.clone(),
            user_id: "ann".into(),
        })
        .await
        .unwrap_err();
    assert_error(&e, Code::ResourceExhausted, "chat.RateLimited");
    let e = c
        .delete(delete_req(&chat, "ann", "d1", 1))
        .await
        .unwrap_err();
    assert_error(&e, Code::ResourceExhausted, "chat.RateLimited");
    let stored = all_messages(&mut c, &chat).await;
    assert_eq!(
        (stored.len(), stored[0].text.as_str()),
        (1, "one"),
        "refused: nothing changed"
    );
    server.stop().await;
}

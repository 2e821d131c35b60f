//! What the inbox and read state count and show, on whichever store
//! `CHAT_TEST_STORE` names (scripts/test runs both): unread counts leave
//! out deleted messages, and reading an open chat exposes nobody.

mod common;

use std::time::Duration;

use chat::pb;
use common::*;

fn inbox(user: &str) -> pb::ListChatsRequest {
    pb::ListChatsRequest {
        user_id: user.into(),
        ..Default::default()
    }
}

fn mark(chat: &str, user: &str, seq: u64) -> pb::MarkReadRequest {
    pb::MarkReadRequest {
        chat_id: chat.into(),
        user_id: user.into(),
        seq,
    }
}

fn delete(chat: &str, user: &str, seq: u64) -> pb::DeleteRequest {
    pb::DeleteRequest {
        client_id: format!("del-{seq}"),
        chat_id: chat.into(),
        user_id: user.into(),
        seq,
    }
}

/// `user`'s unread count in `chat` as ListChats shows it.
async fn unread(c: &mut Client, user: &str, chat: &str) -> u64 {
    let list = c.list_chats(inbox(user)).await.unwrap().into_inner();
    list.chats
        .iter()
        .find(|s| s.chat_id == chat)
        .unwrap_or_else(|| panic!("{chat} not in {user}'s inbox: {list:?}"))
        .unread
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_leave_out_deleted_messages() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    for i in 1..=4 {
        send(
            &mut c,
            &chat,
            "bob",
            &format!("b{i}"),
            &format!("message {i}"),
        )
        .await;
    }
    assert_eq!(unread(&mut c, "ann", &chat).await, 4);
    let r = c
        .mark_read(mark(&chat, "ann", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread), (1, 3));
    // One before the read position (read already), one after it.
    c.delete(delete(&chat, "bob", 1)).await.unwrap();
    c.delete(delete(&chat, "bob", 3)).await.unwrap();
    assert_eq!(unread(&mut c, "ann", &chat).await, 2);
    let r = c
        .mark_read(mark(&chat, "ann", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread), (1, 2), "MarkRead counts alike");
    c.delete(delete(&chat, "bob", 2)).await.unwrap();
    c.delete(delete(&chat, "bob", 4)).await.unwrap();
    assert_eq!(
        unread(&mut c, "ann", &chat).await,
        0,
        "nothing left to read"
    );
    // A later message counts; the counts survive a restart.
    send(&mut c, &chat, "bob", "b5", "message 5").await;
    assert_eq!(unread(&mut c, "ann", &chat).await, 1);
    server.stop().await;
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    assert_eq!(unread(&mut c, "ann", &chat).await, 1);
    assert_eq!(unread(&mut c, "bob", &chat).await, 0, "the sender's own");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_an_open_chat_exposes_nobody_who_has_not_posted() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let open = new_chat(&mut c, &[]).await;
    send(&mut c, &open, "cid", "c1", "hello, anyone").await;
    // A stream that gets events: it must hear of posters' reads only.
    let (_tx, mut req) = connect_request(&open, "cid", None);
    req.metadata_mut().insert("events", "all".parse().unwrap());
    let mut events = c.connect(req).await.unwrap().into_inner();

    let r = c
        .mark_read(mark(&open, "eve", 1))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread), (1, 0), "kept for her");
    let eves = c.list_chats(inbox("eve")).await.unwrap().into_inner();
    assert!(eves.chats.is_empty(), "a reader's inbox: {eves:?}");
    let readers = |c: &mut Client| {
        let mut c = c.clone();
        let req = pb::ReadStateRequest {
            chat_id: open.clone(),
        };
        async move {
            let state = c.read_state(req).await.unwrap().into_inner();
            state
                .positions
                .into_iter()
                .map(|p| p.user_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(readers(&mut c).await, ["cid"]);
    let heard = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let m = events.message().await.unwrap().unwrap();
            if m.kind == pb::message::Kind::Read as i32 {
                return m;
            }
        }
    })
    .await;
    assert!(heard.is_err(), "a reader's read event: {heard:?}");

    // Once she posts, the chat is hers: listed, in ReadState, her reads heard.
    send(&mut c, &open, "eve", "e1", "hi cid").await;
    let eves = c.list_chats(inbox("eve")).await.unwrap().into_inner();
    assert_eq!(eves.chats.len(), 1);
    assert_eq!((eves.chats[0].read_seq, eves.chats[0].unread), (2, 0));
    assert_eq!(readers(&mut c).await, ["cid", "eve"]);
    server.stop().await;
}

/// sled only: a store of layout 2 (before the `X` keys) gets them on its
/// first open, so that messages deleted before count as deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_of_layout_2_counts_its_deleted_messages_after_the_upgrade() {
    let dir = tempfile::tempdir().unwrap();
    let config = || chat::Config::with_data_dir(dir.path());
    let server = TestServer::start_with(config()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    for i in 1..=3 {
        send(&mut c, &chat, "bob", &format!("b{i}"), "x").await;
    }
    c.delete(delete(&chat, "bob", 2)).await.unwrap();
    assert_eq!(unread(&mut c, "ann", &chat).await, 2);
    server.stop().await;
    {
        let db = sled::open(dir.path()).unwrap();
        let gone: Vec<_> = db.scan_prefix(b"X").keys().map(|k| k.unwrap()).collect();
        assert_eq!(gone.len(), 1, "one deleted message");
        for key in gone {
            db.remove(key).unwrap();
        }
        db.insert("V", &2u64.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let server = TestServer::start_with(config()).await;
    let mut c = server.client().await;
    assert_eq!(unread(&mut c, "ann", &chat).await, 2);
    server.stop().await;
}

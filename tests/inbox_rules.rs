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

/// Every chat of `user`'s inbox, walked page by page through the cursors.
async fn walk(c: &mut Client, user: &str, page: u32) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = c
            .list_chats(pb::ListChatsRequest {
                user_id: user.into(),
                limit: page,
                cursor: cursor.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.chats.len() <= page as usize, "a page longer than asked");
        out.extend(r.chats.into_iter().map(|s| s.chat_id));
        if r.next_cursor.is_empty() {
            return out;
        }
        cursor = r.next_cursor;
    }
}

/// The inbox is kept in its order as chats become active (a message, an
/// edit, a delete, a first post to an open chat), rather than sorted at
/// read time: every page walk lists each chat once, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbox_pages_follow_every_kind_of_activity_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    // Newest first: the expected order, kept as the operations happen.
    let mut expected: Vec<String> = Vec::new();
    let touch = |expected: &mut Vec<String>, chat: &str| {
        expected.retain(|c| c != chat);
        expected.insert(0, chat.to_owned());
    };
    let mut chats = Vec::new();
    for i in 0..23 {
        let chat = new_chat(&mut c, &["ann", &format!("peer{i}")]).await;
        touch(&mut expected, &chat);
        chats.push(chat);
    }
    let read_only = new_chat(&mut c, &[]).await;
    send(&mut c, &read_only, "zed", "z1", "not ann's").await;
    c.mark_read(mark(&read_only, "ann", 1)).await.unwrap();
    let posted = new_chat(&mut c, &[]).await;
    send(&mut c, &posted, "zed", "z1", "before ann").await;
    assert_eq!(walk(&mut c, "ann", 5).await, expected);

    // A deterministic shuffle of activity over the chats.
    let mut seqs = vec![0u64; chats.len()];
    for step in 0..60usize {
        let i = (step * 7 + step / 3) % chats.len();
        let chat = chats[i].clone();
        let peer = format!("peer{i}");
        match step % 5 {
            3 if seqs[i] > 0 => {
                let r = c
                    .edit(pb::EditRequest {
                        client_id: format!("e{step}"),
                        chat_id: chat.clone(),
                        user_id: peer.clone(),
                        seq: seqs[i],
                        subject: String::new(),
                        text: format!("edited at {step}"),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                assert!(r.event_seq > seqs[i]);
            }
            4 if seqs[i] > 0 => {
                let mut d = delete(&chat, &peer, seqs[i]);
                d.client_id = format!("d{step}");
                c.delete(d).await.unwrap();
                seqs[i] = 0;
            }
            _ => {
                seqs[i] = send(&mut c, &chat, &peer, &format!("s{step}"), "hi")
                    .await
                    .seq;
            }
        }
        touch(&mut expected, &chat);
        if step == 30 {
            // Ann's first post to the open chat: hers from now on.
            send(&mut c, &posted, "ann", "a1", "hello").await;
            touch(&mut expected, &posted);
        }
        if step % 10 == 9 {
            for page in [1, 4, 50] {
                assert_eq!(walk(&mut c, "ann", page).await, expected, "step {step}");
            }
        }
    }
    assert!(!expected.contains(&read_only), "she only read that one");
    server.stop().await;
}

/// sled only: a store of layout 3 (before the inbox-order `O` keys) gets
/// them on first open, and a key left behind by a crash while a chat's
/// keys moved (its activity no longer matches) is not listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sled_store_of_layout_3_gets_its_inbox_order_and_ignores_stale_order_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = || chat::Config::with_data_dir(dir.path());
    let server = TestServer::start_with(config()).await;
    let mut c = server.client().await;
    let mut chats = Vec::new();
    for peer in ["bob", "cid", "dan"] {
        chats.push(new_chat(&mut c, &["ann", peer]).await);
    }
    send(&mut c, &chats[0], "bob", "b1", "first").await;
    let before = walk(&mut c, "ann", 2).await;
    assert_eq!(before, [chats[0].as_str(), &chats[2], &chats[1]]);
    server.stop().await;
    {
        let db = sled::open(dir.path()).unwrap();
        let inbox = db.open_tree("inbox").unwrap();
        let order: Vec<_> = inbox.scan_prefix(b"O").keys().map(|k| k.unwrap()).collect();
        assert_eq!(order.len(), 6, "one per member and chat");
        for key in order {
            inbox.remove(key).unwrap();
        }
        db.insert("V", &3u64.to_be_bytes()[..]).unwrap();
        db.flush().unwrap();
    }
    let server = TestServer::start_with(config()).await;
    let mut c = server.client().await;
    assert_eq!(walk(&mut c, "ann", 2).await, before);
    server.stop().await;
    {
        // As a crash between writing a chat's new keys and removing its
        // old ones leaves it: ann's key of chats[1] at an older time too.
        let db = sled::open(dir.path()).unwrap();
        let inbox = db.open_tree("inbox").unwrap();
        let prefix = [&b"O\0\x03ann"[..]].concat();
        let keys: Vec<_> = inbox
            .scan_prefix(&prefix)
            .keys()
            .map(|k| k.unwrap())
            .collect();
        assert_eq!(keys.len(), 3);
        let chat1 = uuid::Uuid::parse_str(&chats[1]).unwrap();
        let key = keys.iter().find(|k| k.ends_with(chat1.as_bytes())).unwrap();
        let mut stale = key.to_vec();
        let at = prefix.len();
        stale[at..at + 8].copy_from_slice(&(1u64 << 63 | 5).to_be_bytes());
        inbox.insert(stale, &[][..]).unwrap();
        db.flush().unwrap();
    }
    let server = TestServer::start_with(config()).await;
    let mut c = server.client().await;
    assert_eq!(walk(&mut c, "ann", 2).await, before);
    assert_eq!(walk(&mut c, "ann", 50).await, before);
    server.stop().await;
}

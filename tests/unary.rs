//! New, Send and History against the real server over gRPC.

mod common;

use std::collections::HashSet;

use chat::pb;
use common::*;
use tonic::Code;

#[tokio::test]
async fn new_returns_one_chat_per_user_set_whatever_the_order_or_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let a = new_chat(&mut c, &["ann", "bob"]).await;
    assert_eq!(new_chat(&mut c, &["bob", "ann"]).await, a);
    assert_eq!(new_chat(&mut c, &["bob", "ann", "bob"]).await, a);
    assert_ne!(new_chat(&mut c, &["ann", "bob", "cid"]).await, a);
    // "a-b" + "c" must not be confused with "a" + "b-c" (the original joined with "-").
    assert_ne!(
        new_chat(&mut c, &["a-b", "c"]).await,
        new_chat(&mut c, &["a", "b-c"]).await
    );
    server.stop().await;
}

#[tokio::test]
async fn concurrent_new_calls_for_one_user_set_agree_on_the_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut calls = Vec::new();
    for i in 0..32 {
        let mut c = server.client().await;
        calls.push(tokio::spawn(async move {
            let users: &[&str] = if i % 2 == 0 {
                &["x", "y", "z"]
            } else {
                &["z", "y", "x", "x"]
            };
            new_chat(&mut c, users).await
        }));
    }
    let mut ids = HashSet::new();
    for call in calls {
        ids.insert(call.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    server.stop().await;
}

#[tokio::test]
async fn new_without_users_makes_a_fresh_open_chat_anyone_can_post_to() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let a = new_chat(&mut c, &[]).await;
    let b = new_chat(&mut c, &[]).await;
    assert_ne!(a, b);
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "chat ids are UUIDs: {a}");
    let m = send(&mut c, &a, "anyone", "c1", "hello").await;
    assert_eq!(m.seq, 1);
    server.stop().await;
}

#[tokio::test]
async fn new_rejects_empty_oversized_or_too_many_user_ids() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let call = |users: Vec<String>| {
        let mut c = c.clone();
        async move {
            c.new_chat(pb::NewRequest { user_ids: users })
                .await
                .unwrap_err()
        }
    };
    let e = call(vec!["ann".into(), String::new()]).await;
    assert_error(&e, Code::InvalidArgument, "chat.New.InvalidUserID");
    let e = call(vec!["x".repeat(129)]).await;
    assert_error(&e, Code::InvalidArgument, "chat.New.InvalidUserID");
    let e = call((0..257).map(|i| i.to_string()).collect()).await;
    assert_error(&e, Code::InvalidArgument, "chat.New.TooManyUsers");
    // The largest allowed New fits in the decoding limit.
    let most: Vec<String> = (0..256).map(|i| format!("{i:0>128}")).collect();
    c.new_chat(pb::NewRequest { user_ids: most }).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn send_returns_the_stored_message_with_id_seq_and_sent_at() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let m = c
        .send(pb::SendRequest {
            client_id: "c1".into(),
            chat_id: chat.clone(),
            user_id: "ann".into(),
            subject: "hi".into(),
            text: "hello bob".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert!(uuid::Uuid::parse_str(&m.id).is_ok());
    assert_eq!(
        (m.seq, m.chat_id.as_str(), m.user_id.as_str()),
        (1, chat.as_str(), "ann")
    );
    assert_eq!(
        (m.client_id.as_str(), m.subject.as_str(), m.text.as_str()),
        ("c1", "hi", "hello bob")
    );
    assert!(
        m.sent_at >= before && m.sent_at <= before + 5,
        "{}",
        m.sent_at
    );
    assert_eq!(send(&mut c, &chat, "bob", "c1", "hi ann").await.seq, 2);
    server.stop().await;
}

#[tokio::test]
async fn invalid_sends_get_a_clear_error_and_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let missing = uuid::Uuid::new_v4().to_string();
    let big = "x".repeat(64 * 1024 + 1);
    let cases: Vec<(pb::SendRequest, Code, &str)> = vec![
        (
            send_req("", "ann", "c", "t"),
            Code::InvalidArgument,
            "chat.Send.MissingChatID",
        ),
        (
            send_req(&chat, "", "c", "t"),
            Code::InvalidArgument,
            "chat.Send.MissingUserID",
        ),
        (
            send_req(&chat, "ann", "c", ""),
            Code::InvalidArgument,
            "chat.Send.MissingText",
        ),
        (
            send_req(&missing, "ann", "c", "t"),
            Code::NotFound,
            "chat.Send.InvalidChatID",
        ),
        (
            send_req("not-a-uuid", "ann", "c", "t"),
            Code::NotFound,
            "chat.Send.InvalidChatID",
        ),
        (
            send_req(&chat, "eve", "c", "t"),
            Code::PermissionDenied,
            "chat.Send.NotAMember",
        ),
        // NUL: valid UTF-8 and protobuf, but no store keeps it in text.
        (
            send_req(&chat, "ann", "c", "a\0b"),
            Code::InvalidArgument,
            "chat.Send.InvalidText",
        ),
        (
            send_req(&chat, "ann", "c\0", "t"),
            Code::InvalidArgument,
            "chat.Send.InvalidClientID",
        ),
        (
            send_req(&chat, "a\0nn", "c", "t"),
            Code::InvalidArgument,
            "chat.Send.InvalidUserID",
        ),
        (
            send_req(&chat, "ann", "c", &big),
            Code::InvalidArgument,
            "chat.Send.TooLarge",
        ),
        (
            send_req(&chat, &"u".repeat(129), "c", "t"),
            Code::InvalidArgument,
            "chat.Send.InvalidUserID",
        ),
        (
            send_req(&chat, "ann", &"c".repeat(129), "t"),
            Code::InvalidArgument,
            "chat.Send.InvalidClientID",
        ),
    ];
    for (req, code, id) in cases {
        let e = c.send(req).await.unwrap_err();
        assert_error(&e, code, id);
    }
    let mut subject_too = send_req(&chat, "ann", "c", &"x".repeat(60 * 1024));
    subject_too.subject = "s".repeat(5 * 1024);
    assert_error(
        &c.send(subject_too).await.unwrap_err(),
        Code::InvalidArgument,
        "chat.Send.TooLarge",
    );
    assert!(all_messages(&mut c, &chat).await.is_empty());
    // None of the refused client_ids was remembered: the same key now works.
    assert_eq!(send(&mut c, &chat, "ann", "c", "t").await.seq, 1);
    server.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_identical_sends_store_one_message_and_answer_alike() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut calls = Vec::new();
    for _ in 0..50 {
        let mut c = server.client().await;
        let chat = chat.clone();
        calls.push(tokio::spawn(async move {
            send(&mut c, &chat, "ann", "same", "once").await
        }));
    }
    let mut answers = Vec::new();
    for call in calls {
        answers.push(call.await.unwrap());
    }
    assert!(
        answers.iter().all(|m| *m == answers[0]),
        "all 50 answers are the same message"
    );
    assert_eq!(all_messages(&mut c, &chat).await, vec![answers[0].clone()]);
    server.stop().await;
}

#[tokio::test]
async fn send_retry_with_same_client_id_stores_once_and_mismatch_is_already_exists() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let first = send(&mut c, &chat, "ann", "k1", "hello").await;
    assert_eq!(send(&mut c, &chat, "ann", "k1", "hello").await, first);
    let e = c
        .send(send_req(&chat, "ann", "k1", "changed"))
        .await
        .unwrap_err();
    assert_error(&e, Code::AlreadyExists, "chat.Send.ClientIDReused");
    // The key is per user: bob may use the same client_id.
    assert_eq!(send(&mut c, &chat, "bob", "k1", "changed").await.seq, 2);
    assert_eq!(all_messages(&mut c, &chat).await.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn an_empty_client_id_gets_a_server_id_and_no_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let a = send(&mut c, &chat, "ann", "", "same").await;
    let b = send(&mut c, &chat, "ann", "", "same").await;
    assert_eq!((a.seq, b.seq), (1, 2));
    assert!(!a.client_id.is_empty() && a.client_id != b.client_id);
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_messages_come_back_in_order_with_seq_1_to_1000() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    // Eight concurrent writers: seq must still be gap-free.
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = server.client().await;
        let chat = chat.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..125 {
                send(
                    &mut c,
                    &chat,
                    "ann",
                    &format!("{w}-{i}"),
                    &format!("{w}-{i}"),
                )
                .await;
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = all_messages(&mut c, &chat).await;
    assert_eq!(
        all.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=1000).collect::<Vec<_>>()
    );
    // Each writer's messages are in its own send order.
    for w in 0..8 {
        let mine: Vec<_> = all
            .iter()
            .filter(|m| m.text.starts_with(&format!("{w}-")))
            .map(|m| m.text.clone())
            .collect();
        assert_eq!(
            mine,
            (0..125).map(|i| format!("{w}-{i}")).collect::<Vec<_>>()
        );
    }
    server.stop().await;
}

async fn page(
    c: &mut Client,
    chat: &str,
    limit: u32,
    before: Option<u64>,
    after: Option<u64>,
) -> (Vec<u64>, bool) {
    let p = c
        .history(pb::HistoryRequest {
            chat_id: chat.into(),
            limit,
            before_seq: before,
            after_seq: after,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    (p.messages.iter().map(|m| m.seq).collect(), p.has_more)
}

#[tokio::test]
async fn history_pages_newest_backwards_and_forwards() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.history_page = 20;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    assert_eq!(page(&mut c, &chat, 0, None, None).await, (vec![], false));
    for i in 1..=50 {
        send(&mut c, &chat, "ann", &i.to_string(), "m").await;
    }
    // No cursor: the newest `limit`, oldest first.
    assert_eq!(
        page(&mut c, &chat, 5, None, None).await,
        ((46..=50).collect(), true)
    );
    // limit 0 is the default page; a larger limit is capped to it.
    assert_eq!(
        page(&mut c, &chat, 0, None, None).await,
        ((31..=50).collect(), true)
    );
    assert_eq!(
        page(&mut c, &chat, 500, None, None).await,
        ((31..=50).collect(), true)
    );
    // before_seq pages backwards; the last page says no more.
    assert_eq!(
        page(&mut c, &chat, 5, Some(46), None).await,
        ((41..=45).collect(), true)
    );
    assert_eq!(
        page(&mut c, &chat, 5, Some(4), None).await,
        ((1..=3).collect(), false)
    );
    assert_eq!(page(&mut c, &chat, 5, Some(1), None).await, (vec![], false));
    assert_eq!(
        page(&mut c, &chat, 5, Some(1000), None).await,
        ((46..=50).collect(), true)
    );
    // after_seq pages forwards; 0 starts at the first message.
    assert_eq!(
        page(&mut c, &chat, 5, None, Some(0)).await,
        ((1..=5).collect(), true)
    );
    assert_eq!(
        page(&mut c, &chat, 5, None, Some(45)).await,
        ((46..=50).collect(), false)
    );
    assert_eq!(
        page(&mut c, &chat, 5, None, Some(47)).await,
        ((48..=50).collect(), false)
    );
    assert_eq!(
        page(&mut c, &chat, 5, None, Some(50)).await,
        (vec![], false)
    );
    assert_eq!(all_messages(&mut c, &chat).await.len(), 50);
    server.stop().await;
}

#[tokio::test]
async fn history_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let req = |chat_id: &str, before, after| pb::HistoryRequest {
        chat_id: chat_id.into(),
        limit: 0,
        before_seq: before,
        after_seq: after,
        ..Default::default()
    };
    let e = c.history(req("", None, None)).await.unwrap_err();
    assert_error(&e, Code::InvalidArgument, "chat.History.MissingChatID");
    let e = c
        .history(req(&uuid::Uuid::new_v4().to_string(), None, None))
        .await
        .unwrap_err();
    assert_error(&e, Code::NotFound, "chat.History.InvalidChatID");
    let e = c.history(req(&chat, Some(5), Some(1))).await.unwrap_err();
    assert_error(&e, Code::InvalidArgument, "chat.History.InvalidCursor");
    server.stop().await;
}

#[tokio::test]
async fn a_restart_keeps_chats_members_messages_seq_and_dedupe() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let first = send(&mut c, &chat, "ann", "k1", "one").await;
    send(&mut c, &chat, "bob", "k2", "two").await;
    server.stop().await;

    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    assert_eq!(
        new_chat(&mut c, &["bob", "ann"]).await,
        chat,
        "same set, same chat"
    );
    assert_eq!(
        send(&mut c, &chat, "ann", "k1", "one").await,
        first,
        "dedupe survives"
    );
    let e = c.send(send_req(&chat, "eve", "k3", "x")).await.unwrap_err();
    assert_error(&e, Code::PermissionDenied, "chat.Send.NotAMember");
    assert_eq!(
        send(&mut c, &chat, "ann", "k3", "three").await.seq,
        3,
        "seq continues"
    );
    let texts: Vec<_> = all_messages(&mut c, &chat)
        .await
        .into_iter()
        .map(|m| m.text)
        .collect();
    assert_eq!(texts, ["one", "two", "three"]);
    server.stop().await;
}

//! Edits and deletes of one message racing each other, on whichever store
//! `CHAT_TEST_STORE` names (scripts/test runs both). Changes to a message
//! apply in seq order whatever the interleaving: its text is its newest
//! edit's, an acknowledged Delete is never undone, a delete scrubs every
//! edit, the edit limit is exact, and streams serve what History serves.
//!
//! Before the fix, on the embedded store: 6 edits and a delete at once
//! undid an acknowledged delete in 4–11 of 60 trials; 50 edits then a
//! delete left edit text in 6 of 8; 1,000 concurrent edits let 23–67 more
//! through. These run 40, 8 and 1 trials per test run.

mod common;

use std::time::Duration;

use chat::pb;
use common::*;
use tonic::Code;

const EDIT: i32 = pb::message::Kind::Edit as i32;
const MAX_EDITS: usize = 1000;

fn edit(chat: &str, client_id: String, text: String) -> pb::EditRequest {
    pb::EditRequest {
        client_id,
        chat_id: chat.into(),
        user_id: "ann".into(),
        seq: 1,
        subject: String::new(),
        text,
    }
}

fn delete(chat: &str, client_id: &str) -> pb::DeleteRequest {
    pb::DeleteRequest {
        client_id: client_id.into(),
        chat_id: chat.into(),
        user_id: "ann".into(),
        seq: 1,
    }
}

/// The whole log of a chat: messages, tombstones and events, paging
/// forward (a page holds at most the server's page size).
async fn log(c: &mut Client, chat: &str) -> Vec<pb::Message> {
    let mut all: Vec<pb::Message> = Vec::new();
    loop {
        let page = c
            .history(pb::HistoryRequest {
                chat_id: chat.into(),
                after_seq: Some(all.last().map_or(0, |m| m.seq)),
                include_deleted: true,
                include_events: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// What a catch-up from seq 0 with events hands out, up to `last`.
async fn catch_up(c: &mut Client, chat: &str, last: u64) -> Vec<pb::Message> {
    let (_tx, mut req) = connect_request(chat, "ann", Some("0"));
    req.metadata_mut().insert("events", "all".parse().unwrap());
    let mut rx = c.connect(req).await.unwrap().into_inner();
    let mut got = Vec::new();
    while got.last().is_none_or(|m: &pb::Message| m.seq < last) {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .expect("the catch-up within 10 s")
            .unwrap()
            .unwrap();
        if m.seq > 0 {
            got.push(m);
        }
    }
    got
}

/// Checks the properties of one trial's log: the message is its last
/// change's result (in seq order), a delete scrubbed every edit, and a
/// catch-up through a stream (served from the recent window) agrees.
async fn check(c: &mut Client, chat: &str, deleted: bool) {
    let log = log(c, chat).await;
    let message = &log[0];
    let edits: Vec<&pb::Message> = log.iter().filter(|m| m.kind == EDIT).collect();
    if deleted {
        assert!(
            message.deleted,
            "an acknowledged delete was undone: {log:?}"
        );
        assert!(message.text.is_empty(), "{log:?}");
        for e in &edits {
            assert!(e.text.is_empty(), "an edit kept its text: {log:?}");
        }
    } else if let Some(newest) = edits.last() {
        assert_eq!(
            message.text, newest.text,
            "the message is not its newest edit's: {log:?}"
        );
    }
    let last = log.last().unwrap().seq;
    let streamed = catch_up(c, chat, last).await;
    assert_eq!(
        streamed.iter().find(|m| m.seq == 1),
        Some(message),
        "a stream served another version than History"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_edits_and_a_delete_apply_in_seq_order_and_the_delete_stays() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    for trial in 0..40 {
        let chat = new_chat(&mut c, &[]).await;
        send(&mut c, &chat, "ann", "m", "the original").await;
        // A stream open meanwhile: the chat's recent window is in use.
        let (_tx, req) = connect_request(&chat, "ann", Some("0"));
        let _stream = c.connect(req).await.unwrap().into_inner();
        let mut tasks = Vec::new();
        for i in 0..6 {
            let (mut c, chat) = (c.clone(), chat.clone());
            tasks.push(tokio::spawn(async move {
                let r = c
                    .edit(edit(&chat, format!("e{i}"), format!("edit {i}")))
                    .await;
                r.map(|_| ()).map_err(|e| e.code())
            }));
        }
        let (mut dc, dchat) = (c.clone(), chat.clone());
        let deleted = tokio::spawn(async move { dc.delete(delete(&dchat, "d")).await });
        for t in tasks {
            match t.await.unwrap() {
                Ok(()) | Err(Code::FailedPrecondition) => {}
                Err(code) => panic!("trial {trial}: an edit failed with {code:?}"),
            }
        }
        deleted.await.unwrap().expect("the delete is acknowledged");
        check(&mut c, &chat, true).await;
    }
    // Two edits are enough for the race; the newest is the message's text.
    for _ in 0..40 {
        let chat = new_chat(&mut c, &[]).await;
        send(&mut c, &chat, "ann", "m", "the original").await;
        let (mut a, mut b) = (c.clone(), c.clone());
        let (x, y) = tokio::join!(
            a.edit(edit(&chat, "a".into(), "from a".into())),
            b.edit(edit(&chat, "b".into(), "from b".into()))
        );
        x.unwrap();
        y.unwrap();
        check(&mut c, &chat, false).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_delete_after_many_concurrent_edits_scrubs_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    for _ in 0..8 {
        let chat = new_chat(&mut c, &[]).await;
        send(&mut c, &chat, "ann", "m", "the original").await;
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let (mut c, chat) = (c.clone(), chat.clone());
                tokio::spawn(async move {
                    c.edit(edit(&chat, format!("e{i}"), format!("secret {i}")))
                        .await
                        .unwrap();
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        c.delete(delete(&chat, "d")).await.unwrap();
        check(&mut c, &chat, true).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_edit_limit_is_exact_under_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "m", "the original").await;
    let tasks: Vec<_> = (0..MAX_EDITS + 50)
        .map(|i| {
            let (mut c, chat) = (c.clone(), chat.clone());
            tokio::spawn(async move {
                c.edit(edit(&chat, format!("e{i}"), format!("edit {i}")))
                    .await
                    .map(|_| ())
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => accepted += 1,
            Err(e) => assert_error(&e, Code::FailedPrecondition, "chat.Edit.TooManyEdits"),
        }
    }
    assert_eq!(accepted, MAX_EDITS);
    let err = c
        .edit(edit(&chat, "late".into(), "one too many".into()))
        .await
        .unwrap_err();
    assert_error(&err, Code::FailedPrecondition, "chat.Edit.TooManyEdits");
    let edits = log(&mut c, &chat)
        .await
        .into_iter()
        .filter(|m| m.kind == EDIT)
        .count();
    assert_eq!(edits, MAX_EDITS);
    check(&mut c, &chat, false).await;
    server.stop().await;
}

//! `--rate-limit-read`: History, ListChats, ReadState and Presence share a
//! per-caller budget of their own, so that one caller looping them cannot
//! starve the others, and writes are not counted against it. On whichever
//! store `CHAT_TEST_STORE` names.

mod common;

use chat::pb;
use common::*;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_past_their_own_rate_limit_are_refused_and_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.rate_limit_read = 5.0; // bursts of 10
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    // Every read RPC draws on the one budget.
    let mut refused = None;
    for i in 0..40 {
        let result = match i % 4 {
            0 => c
                .history(pb::HistoryRequest {
                    chat_id: chat.clone(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            1 => c
                .list_chats(pb::ListChatsRequest {
                    user_id: "ann".into(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            2 => c
                .read_state(pb::ReadStateRequest {
                    chat_id: chat.clone(),
                })
                .await
                .map(|_| ()),
            _ => c
                .presence(pb::PresenceRequest {
                    chat_id: chat.clone(),
                })
                .await
                .map(|_| ()),
        };
        if let Err(e) = result {
            refused = Some((i, e));
            break;
        }
    }
    let (at, err) = refused.expect("40 reads at once pass a limit of 5 a second");
    assert!(
        at >= 10,
        "the burst is twice the rate: refused at read {at}"
    );
    assert_error(&err, Code::ResourceExhausted, "chat.RateLimited");
    assert!(err.message().contains("reads"), "{err:?}");
    // Writes have their own budget (off here).
    send(&mut c, &chat, "ann", "w1", "still sending").await;
    // HTTP/JSON: 429 with Retry-After.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/History", server.addr))
        .header("content-type", "application/json")
        .body(format!(r#"{{"chat_id": "{chat}"}}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(server.chats.metrics().rate_limited_read.get() >= 2);
    // A token comes back within a fifth of a second.
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    c.history(pb::HistoryRequest {
        chat_id: chat.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    server.stop().await;
}

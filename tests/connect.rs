//! Connect, the live bidirectional stream, against the real server.

mod common;

use std::time::Duration;

use chat::pb;
use common::*;
use tokio::sync::mpsc;
use tonic::{Code, Status, Streaming};

/// An open Connect call: `tx` sends on it (drop it to half-close), `rx` receives.
struct Stream {
    tx: mpsc::Sender<pb::Message>,
    rx: Streaming<pb::Message>,
}

async fn open(
    client: &mut Client,
    chat: &str,
    user: &str,
    since: Option<&str>,
) -> Result<Stream, Status> {
    let (tx, req) = connect_request(chat, user, since);
    let rx = client.connect(req).await?.into_inner();
    Ok(Stream { tx, rx })
}

impl Stream {
    async fn say(&self, client_id: &str, text: &str) {
        let msg = pb::Message {
            client_id: client_id.into(),
            text: text.into(),
            ..Default::default()
        };
        self.tx.send(msg).await.unwrap();
    }

    /// The next message; fails the test if none comes within 10 s.
    async fn next(&mut self) -> pb::Message {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the stream is still open")
    }

    async fn next_n(&mut self, n: usize) -> Vec<pb::Message> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(self.next().await);
        }
        v
    }

    /// Asserts nothing more arrives within a short while.
    async fn assert_quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(200), self.rx.message()).await;
        assert!(got.is_err(), "unexpected: {got:?}");
    }
}

fn seqs(msgs: &[pb::Message]) -> Vec<u64> {
    msgs.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn two_users_chat_over_connect_and_both_see_everything_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut ann = open(&mut c, &chat, "ann", None).await.unwrap();
    let mut bob = open(&mut c, &chat, "bob", None).await.unwrap();
    ann.say("a1", "hi bob").await;
    let echo = ann.next().await;
    // The echo carries what the sender needs to replace its local copy.
    assert_eq!(
        (
            echo.seq,
            echo.client_id.as_str(),
            echo.user_id.as_str(),
            echo.chat_id.as_str()
        ),
        (1, "a1", "ann", chat.as_str())
    );
    assert!(!echo.id.is_empty() && echo.sent_at > 0);
    assert_eq!(bob.next().await, echo);
    bob.say("b1", "hi ann").await;
    let reply = bob.next().await;
    assert_eq!((reply.seq, reply.text.as_str()), (2, "hi ann"));
    assert_eq!(ann.next().await, reply);
    assert_eq!(all_messages(&mut c, &chat).await, vec![echo, reply]);
    server.stop().await;
}

#[tokio::test]
async fn a_send_reaches_every_stream_of_its_chat_and_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let other = new_chat(&mut c, &[]).await;
    let mut streams = Vec::new();
    for user in ["ann", "bob", "cid"] {
        streams.push(open(&mut c, &chat, user, None).await.unwrap());
    }
    let mut elsewhere = open(&mut c, &other, "ann", None).await.unwrap();
    let sent = send(&mut c, &chat, "dan", "d1", "to all").await;
    for s in &mut streams {
        assert_eq!(s.next().await, sent);
    }
    elsewhere.assert_quiet().await;
    server.stop().await;
}

#[tokio::test]
async fn two_streams_of_one_user_both_receive_everything() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut phone = open(&mut c, &chat, "ann", None).await.unwrap();
    let mut laptop = open(&mut server.client().await, &chat, "ann", None)
        .await
        .unwrap();
    phone.say("p1", "from phone").await;
    send(&mut c, &chat, "bob", "b1", "from bob").await;
    let on_phone = phone.next_n(2).await;
    assert_eq!(seqs(&on_phone), [1, 2]);
    assert_eq!(laptop.next_n(2).await, on_phone);
    server.stop().await;
}

#[tokio::test]
async fn without_since_seq_only_new_messages_and_since_seq_0_replays_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    for i in 1..=3 {
        send(&mut c, &chat, "ann", &i.to_string(), "old").await;
    }
    let mut live = open(&mut c, &chat, "bob", None).await.unwrap();
    let mut all = open(&mut c, &chat, "bob", Some("0")).await.unwrap();
    let mut tail = open(&mut c, &chat, "bob", Some("2")).await.unwrap();
    send(&mut c, &chat, "ann", "4", "new").await;
    assert_eq!(seqs(&[live.next().await]), [4]);
    assert_eq!(seqs(&all.next_n(4).await), [1, 2, 3, 4]);
    assert_eq!(seqs(&tail.next_n(2).await), [3, 4]);
    server.stop().await;
}

/// The switch from replay to live must neither lose nor repeat a message
/// while a writer sends at full speed; repeated to catch unlucky timings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_seq_replay_then_live_has_no_gap_and_no_duplicate_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    for run in 0..20u64 {
        let mut c = server.client().await;
        let chat = new_chat(&mut c, &[]).await;
        const TOTAL: u64 = 300;
        let writer = {
            let mut c = server.client().await;
            let chat = chat.clone();
            tokio::spawn(async move {
                for i in 0..TOTAL {
                    send(&mut c, &chat, "w", &i.to_string(), "load").await;
                }
            })
        };
        // Join at a different point each run, mid-stream.
        let since = loop {
            let page = c
                .history(pb::HistoryRequest {
                    chat_id: chat.clone(),
                    limit: 1,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner();
            let last = page.messages.last().map_or(0, |m| m.seq);
            if last >= run * 10 {
                break last.saturating_sub(run % 3);
            }
            tokio::task::yield_now().await;
        };
        let mut s = open(&mut c, &chat, "r", Some(&since.to_string()))
            .await
            .unwrap();
        let got = s.next_n((TOTAL - since) as usize).await;
        assert_eq!(
            seqs(&got),
            (since + 1..=TOTAL).collect::<Vec<_>>(),
            "run {run} since {since}"
        );
        writer.await.unwrap();
        s.assert_quiet().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn refused_streams_get_a_clear_error_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let unknown = uuid::Uuid::new_v4().to_string();
    let cases = [
        (
            "",
            "ann",
            None,
            Code::InvalidArgument,
            "chat.Connect.MissingChatID",
        ),
        (
            chat.as_str(),
            "",
            None,
            Code::InvalidArgument,
            "chat.Connect.MissingUserID",
        ),
        (
            unknown.as_str(),
            "ann",
            None,
            Code::NotFound,
            "chat.Connect.InvalidChatID",
        ),
        (
            chat.as_str(),
            "eve",
            None,
            Code::PermissionDenied,
            "chat.Connect.NotAMember",
        ),
        (
            chat.as_str(),
            "ann",
            Some("-1"),
            Code::InvalidArgument,
            "chat.Connect.InvalidSinceSeq",
        ),
        (
            chat.as_str(),
            "ann",
            Some("latest"),
            Code::InvalidArgument,
            "chat.Connect.InvalidSinceSeq",
        ),
    ];
    for (chat_id, user, since, code, id) in cases {
        let err = open(&mut c, chat_id, user, since)
            .await
            .err()
            .expect("refused");
        assert_error(&err, code, id);
    }
    assert_eq!(server.chats.metrics().streams_open.get(), 0);
    server.stop().await;
}

#[tokio::test]
async fn an_invalid_message_ends_the_stream_and_earlier_ones_stay_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut ann = open(&mut c, &chat, "ann", None).await.unwrap();
    ann.say("a1", "fine").await;
    assert_eq!(ann.next().await.seq, 1);
    ann.say("a2", "").await;
    let err = ann.rx.message().await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Send.MissingText");
    assert_eq!(seqs(&all_messages(&mut c, &chat).await), [1]);

    // Same rules as Send: idempotent on client_id (one message, echoed once).
    let mut bob = open(&mut c, &chat, "bob", None).await.unwrap();
    bob.say("b1", "once").await;
    bob.say("b1", "once").await;
    assert_eq!(bob.next().await.seq, 2);
    bob.assert_quiet().await;
    bob.say("b1", "other text").await;
    let err = bob.rx.message().await.unwrap_err();
    assert_error(&err, Code::AlreadyExists, "chat.Send.ClientIDReused");
    assert_eq!(seqs(&all_messages(&mut c, &chat).await), [1, 2]);
    server.stop().await;
}

#[tokio::test]
async fn a_message_naming_another_chat_or_user_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let other = new_chat(&mut c, &["ann", "eve"]).await;
    let cases = [
        (other.as_str(), "", "chat.Connect.WrongChatID"),
        ("", "bob", "chat.Connect.WrongUserID"),
    ];
    for (chat_id, user_id, id) in cases {
        let mut s = open(&mut c, &chat, "ann", None).await.unwrap();
        let msg = pb::Message {
            chat_id: chat_id.into(),
            user_id: user_id.into(),
            text: "sneaky".into(),
            ..Default::default()
        };
        s.tx.send(msg).await.unwrap();
        assert_error(
            &s.rx.message().await.unwrap_err(),
            Code::InvalidArgument,
            id,
        );
    }
    // Naming its own chat and user explicitly is fine.
    let mut s = open(&mut c, &chat, "ann", None).await.unwrap();
    let msg = pb::Message {
        chat_id: chat.clone(),
        user_id: "ann".into(),
        text: "ok".into(),
        ..Default::default()
    };
    s.tx.send(msg).await.unwrap();
    assert_eq!(s.next().await.seq, 1);
    assert!(all_messages(&mut c, &other).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn half_close_ends_the_call_once_everything_so_far_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "1", "before").await;
    let Stream { tx, mut rx } = open(&mut c, &chat, "bob", Some("0")).await.unwrap();
    for i in 0..3 {
        let msg = pb::Message {
            client_id: format!("b{i}"),
            text: "x".into(),
            ..Default::default()
        };
        tx.send(msg).await.unwrap();
    }
    drop(tx);
    let mut got = Vec::new();
    while let Some(m) = rx.message().await.unwrap() {
        got.push(m);
    }
    assert_eq!(seqs(&got), [1, 2, 3, 4], "ended with OK after everything");
    server.stop().await;
}

/// A stream whose client never reads, while others chat at full speed: the
/// others get everything, and the slow one, once it reads, gets every
/// message in order from the store: the server keeps no queue for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_slows_no_one_and_later_catches_up_without_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    // Its own connection, as a real slow client would have.
    let mut slow = open(&mut server.client().await, &chat, "slow", None)
        .await
        .unwrap();
    let mut fast = open(&mut c, &chat, "fast", None).await.unwrap();
    const TOTAL: usize = 3000;
    let text = "x".repeat(4096); // 12 MB in all: far beyond the HTTP/2 windows
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut c = server.client().await;
        let (chat, text) = (chat.clone(), text.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..TOTAL / 4 {
                send(&mut c, &chat, "w", &format!("{w}-{i}"), &text).await;
            }
        }));
    }
    let got = fast.next_n(TOTAL).await;
    assert_eq!(seqs(&got), (1..=TOTAL as u64).collect::<Vec<_>>());
    for w in writers {
        w.await.unwrap();
    }
    let lagging_before = server.chats.metrics().lagging_reads.get();
    let caught_up = slow.next_n(TOTAL).await;
    assert_eq!(seqs(&caught_up), (1..=TOTAL as u64).collect::<Vec<_>>());
    assert!(
        server.chats.metrics().lagging_reads.get() > lagging_before,
        "the slow stream fell behind the in-memory window and read the store"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_frees_its_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let open_streams = || server.chats.metrics().streams_open.get();
    let mut streams = Vec::new();
    for _ in 0..10 {
        streams.push(
            open(&mut server.client().await, &chat, "ann", None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(open_streams(), 10);
    streams.truncate(5); // cancel five calls
    wait_until(|| open_streams() == 5).await;
    drop(streams); // and the rest, with their connections
    wait_until(|| open_streams() == 0).await;
    // The chat still works for whoever comes next.
    let mut s = open(&mut c, &chat, "bob", None).await.unwrap();
    send(&mut c, &chat, "ann", "1", "still here").await;
    assert_eq!(s.next().await.seq, 1);
    server.stop().await;
}

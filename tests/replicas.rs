//! Several real `chat` processes on one PostgreSQL database: whichever
//! replica a call lands on, the guarantees of one node hold. Needs the test
//! cluster (`CHAT_TEST_PG_URL`, started by scripts/test) in every pass.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chat::pb;
use common::*;
use tonic::Code;

/// `n` replicas of the real binary on the database of `dir`, with metrics.
async fn replicas(dir: &std::path::Path, n: usize) -> Vec<Binary> {
    let url = pg_database(dir).await;
    let mut out = Vec::new();
    for _ in 0..n {
        let args = ["--store", &url, "--metrics-listen", "127.0.0.1:0"];
        out.push(Binary::start(dir, &args).await);
    }
    out
}

/// One value of a replica's metrics.
async fn metric(replica: &Binary, name: &str) -> f64 {
    let text = http_get(replica.metrics_addr.unwrap(), "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Receives `n` messages from a stream (10 s at most for each).
async fn receive(rx: &mut tonic::Streaming<pb::Message>, n: usize) -> Vec<pb::Message> {
    let mut got = Vec::new();
    while got.len() < n {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages arrived", got.len()))
            .unwrap()
            .unwrap();
        got.push(m);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_on_one_replica_reaches_streams_on_the_others_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicas(dir.path(), 3).await;
    let mut a = r[0].client().await;
    let chat = new_chat(&mut a, &["ann", "bob", "cat"]).await;
    send(
        &mut a,
        &chat,
        "ann",
        "before",
        "sent before the streams opened",
    )
    .await;

    let mut streams = Vec::new();
    for (replica, user) in [(&r[1], "bob"), (&r[2], "cat")] {
        let mut c = replica.client().await;
        let (tx, req) = connect_request(&chat, user, Some("0"));
        streams.push((tx, c.connect(req).await.unwrap().into_inner()));
    }
    // From A, and from a third client on C: both reach both streams.
    let mut c = r[2].client().await;
    for i in 0..100 {
        send(
            &mut a,
            &chat,
            "ann",
            &format!("a{i}"),
            &format!("from A {i}"),
        )
        .await;
        if i % 10 == 0 {
            send(
                &mut c,
                &chat,
                "cat",
                &format!("c{i}"),
                &format!("from C {i}"),
            )
            .await;
        }
    }
    let stored = all_messages(&mut a, &chat).await;
    assert_eq!(stored.len(), 111);
    for (_tx, rx) in &mut streams {
        let got = receive(rx, stored.len()).await;
        assert_eq!(got, stored, "every message once, in seq order, as stored");
        // ...and nothing more.
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.message())
                .await
                .is_err(),
            "no duplicate after the last message"
        );
    }
    // The streams were woken by the bus (not only by the slow resync).
    for replica in &r[1..] {
        assert_eq!(metric(replica, "chat_bus_connected").await, 1.0);
        assert!(metric(replica, "chat_bus_wakeups_total").await > 0.0);
    }
    // History is the same on every replica.
    for replica in &r {
        let mut c = replica.client().await;
        assert_eq!(all_messages(&mut c, &chat).await, stored);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_and_identical_sends_on_three_replicas_at_once_agree() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicas(dir.path(), 3).await;
    let mut clients = Vec::new();
    for replica in &r {
        clients.push(replica.client().await);
    }
    // New for one user set, concurrently on every replica: one chat.
    let news = clients.iter().map(|c| {
        let mut c = c.clone();
        tokio::spawn(async move { new_chat(&mut c, &["zoe", "yan", "xia"]).await })
    });
    let mut ids = HashSet::new();
    for n in news {
        ids.insert(n.await.unwrap());
    }
    assert_eq!(ids.len(), 1, "one chat per user set across replicas");
    let chat = ids.into_iter().next().unwrap();

    // The same Send on all three at once, 30 times: stored once each, and
    // all three get the same message back.
    for i in 0..30 {
        let sends = clients.iter().map(|c| {
            let (mut c, chat) = (c.clone(), chat.clone());
            tokio::spawn(async move {
                send(&mut c, &chat, "zoe", &format!("k{i}"), &format!("text {i}")).await
            })
        });
        let mut answers = Vec::new();
        for s in sends {
            answers.push(s.await.unwrap());
        }
        assert!(answers.iter().all(|m| *m == answers[0]), "{answers:?}");
        assert_eq!(answers[0].seq, i + 1, "no seq burnt by the duplicates");
    }
    let stored = all_messages(&mut clients[1], &chat).await;
    assert_eq!(stored.len(), 30);
    // A mismatched retry on another replica is ALREADY_EXISTS.
    let err = clients[2]
        .send(send_req(&chat, "zoe", "k0", "other text"))
        .await
        .unwrap_err();
    assert_error(&err, Code::AlreadyExists, "chat.Send.ClientIDReused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_times_sixteen_clients_keep_seq_gap_free() {
    let dir = tempfile::tempdir().unwrap();
    let r = replicas(dir.path(), 3).await;
    let mut c = r[0].client().await;
    let chat = new_chat(&mut c, &[]).await;
    let mut tasks = Vec::new();
    for (n, replica) in r.iter().enumerate() {
        let channel = replica.channel().await;
        for w in 0..16 {
            let (channel, chat) = (channel.clone(), chat.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = pb::chat_client::ChatClient::new(channel);
                let mut acked = Vec::new();
                for i in 0..25 {
                    let id = format!("r{n}-w{w}-{i}");
                    acked.push(send(&mut c, &chat, "ann", &id, &id).await);
                }
                acked
            }));
        }
    }
    let mut acked = HashMap::new();
    for t in tasks {
        for m in t.await.unwrap() {
            acked.insert(m.client_id.clone(), m);
        }
    }
    let stored = all_messages(&mut c, &chat).await;
    assert_eq!(stored.len(), 3 * 16 * 25);
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=1200).collect::<Vec<u64>>(),
        "gap-free, no repeat"
    );
    for m in &stored {
        assert_eq!(acked.get(&m.client_id), Some(m), "stored as acknowledged");
    }
}

/// Writers on two replicas; a stream on the first. The first is killed with
/// SIGKILL mid-traffic; the stream resumes on the second with since-seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_replica_under_load_loses_nothing_and_streams_resume_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = replicas(dir.path(), 2).await;
    let mut b = r[1].client().await;
    let chat = new_chat(&mut b, &[]).await;
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let mut writers = Vec::new();
    for (n, replica) in r.iter().enumerate() {
        let (mut c, chat, acked) = (replica.client().await, chat.clone(), acked.clone());
        writers.push(tokio::spawn(async move {
            for i in 0..400 {
                let id = format!("r{n}-{i}");
                match c.send(send_req(&chat, "ann", &id, &id)).await {
                    Ok(r) => {
                        acked
                            .lock()
                            .unwrap()
                            .insert(id, r.into_inner().message.unwrap());
                    }
                    Err(_) if n == 0 => return, // its replica was killed
                    Err(e) => panic!("the surviving replica failed: {e:?}"),
                }
            }
        }));
    }
    let mut a = r[0].client().await;
    let (_tx, req) = connect_request(&chat, "reader", Some("0"));
    let mut rx = a.connect(req).await.unwrap().into_inner();
    let mut got: Vec<pb::Message> = receive(&mut rx, 50).await;

    r[0].signal("-KILL");
    let _ = r[0].child.wait().await;
    while let Ok(Some(m)) = rx.message().await {
        got.push(m);
    }
    // Resume on the survivor from the last seq received.
    let since = got.last().unwrap().seq.to_string();
    let (_tx2, req) = connect_request(&chat, "reader", Some(&since));
    let mut rx = b.connect(req).await.unwrap().into_inner();
    for w in writers {
        w.await.unwrap();
    }
    let stored = all_messages(&mut b, &chat).await;
    let rest = receive(&mut rx, stored.len() - got.len()).await;
    got.extend(rest);
    assert_eq!(got, stored, "no gap and no duplicate across the switch");
    let acked = acked.lock().unwrap();
    let stored_ids: HashSet<&str> = stored.iter().map(|m| m.client_id.as_str()).collect();
    for (id, m) in acked.iter() {
        assert!(
            stored_ids.contains(id.as_str()),
            "acknowledged message lost: {m:?}"
        );
    }
    assert_eq!(
        acked.keys().filter(|k| k.starts_with("r1-")).count(),
        400,
        "every send on the survivor acknowledged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_members_only_rules_hold_across_replicas_over_tls() {
    use common::pki::{self, Ca, JwtKey};
    let dir = tempfile::tempdir().unwrap();
    let url = pg_database(dir.path()).await;
    let ca = Ca::new(dir.path(), "server");
    let pair = ca.server("server");
    let key = JwtKey::new("k1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, pki::jwks(&[&key])).unwrap();
    let mut r = Vec::new();
    for _ in 0..2 {
        let args = [
            "--store",
            &url,
            "--tls-cert",
            pair.cert.to_str().unwrap(),
            "--tls-key",
            pair.key.to_str().unwrap(),
            "--auth",
            "jwt",
            "--jwks-file",
            jwks.to_str().unwrap(),
        ];
        r.push(Binary::start(dir.path(), &args).await);
    }
    let client = |b: &Binary| {
        let config = pki::client_config(&ca.cert, None, &["h2"]);
        let addr = b.addr;
        async move { pb::chat_client::ChatClient::new(pki::channel(addr, config).await.unwrap()) }
    };
    fn signed<T>(key: &JwtKey, user: &str, mut req: tonic::Request<T>) -> tonic::Request<T> {
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", key.token(user)).parse().unwrap(),
        );
        req
    }
    let (mut a, mut b) = (client(&r[0]).await, client(&r[1]).await);
    let chat = a
        .new_chat(signed(
            &key,
            "ann",
            tonic::Request::new(pb::NewRequest {
                user_ids: vec!["ann".into(), "bob".into()],
            }),
        ))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    // Bob follows on replica b; eve, an outsider, is refused there.
    let (_tx, req) = connect_request(&chat, "", Some("0"));
    let mut bob_stream = b
        .connect(signed(&key, "bob", req))
        .await
        .unwrap()
        .into_inner();
    let (_eve_tx, req) = connect_request(&chat, "", Some("0"));
    let err = b.connect(signed(&key, "eve", req)).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Connect.NotAMember");
    let history = pb::HistoryRequest {
        chat_id: chat.clone(),
        ..Default::default()
    };
    let err = b
        .history(signed(&key, "eve", tonic::Request::new(history.clone())))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.History.NotAMember");
    // Ann sends on a; bob's stream on b gets it. Ann posing as bob on b is refused.
    a.send(signed(
        &key,
        "ann",
        tonic::Request::new(send_req(&chat, "", "a1", "hi")),
    ))
    .await
    .unwrap();
    let err = b
        .send(signed(
            &key,
            "ann",
            tonic::Request::new(send_req(&chat, "bob", "a2", "as bob")),
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Send.WrongUser");
    let got = receive(&mut bob_stream, 1).await;
    assert_eq!(
        (got[0].user_id.as_str(), got[0].text.as_str()),
        ("ann", "hi")
    );
    let page = b
        .history(signed(&key, "bob", tonic::Request::new(history)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        page.messages.len(),
        1,
        "the impostor's message was not stored"
    );
}

/// The next entry of `kind` on an event stream (10 s at most), skipping others.
async fn next_of(rx: &mut tonic::Streaming<pb::Message>, kind: pb::message::Kind) -> pb::Message {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.message())
            .await
            .unwrap_or_else(|_| panic!("no {kind:?} within 10 s"))
            .unwrap()
            .unwrap();
        if m.kind == kind as i32 {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_presence_typing_and_reads_reach_event_streams_on_other_replicas() {
    use pb::message::Kind;
    let dir = tempfile::tempdir().unwrap();
    let url = pg_database(dir.path()).await;
    let mut r = Vec::new();
    for _ in 0..2 {
        // A short presence TTL, so that a dead replica's users go quickly.
        let args = ["--store", &url, "--presence-ttl", "3"];
        r.push(Binary::start(dir.path(), &args).await);
    }
    let (mut a, mut b) = (r[0].client().await, r[1].client().await);
    let chat = new_chat(&mut a, &["ann", "bob"]).await;
    let (_btx, mut req) = connect_request(&chat, "bob", None);
    req.metadata_mut().insert("events", "all".parse().unwrap());
    let mut bob = b.connect(req).await.unwrap().into_inner();
    assert_eq!(next_of(&mut bob, Kind::Join).await.user_id, "bob");

    // Changes made on A arrive on B in the log's order.
    send(&mut a, &chat, "ann", "a1", "helo").await;
    a.edit(pb::EditRequest {
        client_id: "e1".into(),
        chat_id: chat.clone(),
        user_id: "ann".into(),
        seq: 1,
        text: "hello".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    a.delete(pb::DeleteRequest {
        client_id: "d1".into(),
        chat_id: chat.clone(),
        user_id: "ann".into(),
        seq: 1,
    })
    .await
    .unwrap();
    let log = receive(&mut bob, 3).await;
    let kinds: Vec<(u64, i32)> = log.iter().map(|m| (m.seq, m.kind)).collect();
    assert_eq!(
        kinds,
        [(1, 0), (2, Kind::Edit as i32), (3, Kind::Delete as i32)]
    );

    // Ann comes online on A: bob on B sees her join, and B's Presence lists her.
    let (_atx, req) = connect_request(&chat, "ann", None);
    let _ann = a.connect(req).await.unwrap().into_inner();
    assert_eq!(next_of(&mut bob, Kind::Join).await.user_id, "ann");
    let present = |b: &mut Client| {
        let (mut b, chat) = (b.clone(), chat.clone());
        async move {
            b.presence(pb::PresenceRequest { chat_id: chat })
                .await
                .unwrap()
                .into_inner()
                .user_ids
        }
    };
    assert_eq!(present(&mut b).await, ["ann", "bob"]);
    // Typing and reading on A reach B.
    a.typing(pb::TypingRequest {
        chat_id: chat.clone(),
        user_id: "ann".into(),
    })
    .await
    .unwrap();
    assert_eq!(next_of(&mut bob, Kind::Typing).await.user_id, "ann");
    a.mark_read(pb::MarkReadRequest {
        chat_id: chat.clone(),
        user_id: "bob".into(),
        seq: 3,
    })
    .await
    .unwrap();
    let read = next_of(&mut bob, Kind::Read).await;
    assert_eq!((read.user_id.as_str(), read.target_seq), ("bob", 3));

    // A dies without a word: within its TTL, ann leaves on B.
    r[0].signal("-KILL");
    let _ = r[0].child.wait().await;
    let left = next_of(&mut bob, Kind::Leave).await;
    assert_eq!(left.user_id, "ann");
    assert_eq!(present(&mut b).await, ["bob"]);
}

/// A catch-up on one replica right after another replica edited or
/// deleted a message that the first still had in its recent window used
/// to serve the old text (and a plain stream kept a deleted message's text
/// for ever): the window is brought up to the store before it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_on_another_replica_never_serves_superseded_text() {
    use pb::message::Kind;
    let dir = tempfile::tempdir().unwrap();
    let r = replicas(dir.path(), 2).await;
    let (mut a, mut b) = (r[0].client().await, r[1].client().await);
    let chat = new_chat(&mut a, &["ann", "bob"]).await;
    // B keeps a stream open: its window holds what it delivered.
    let (_btx, req) = connect_request(&chat, "bob", None);
    let mut live = b.connect(req).await.unwrap().into_inner();
    for trial in 0..30 {
        let sent = send(&mut a, &chat, "ann", &format!("m{trial}"), "before").await;
        let seq = sent.seq;
        assert_eq!(receive(&mut live, 1).await[0].seq, seq);
        let since = (seq - 1).to_string();
        if trial % 2 == 0 {
            a.edit(pb::EditRequest {
                client_id: format!("e{trial}"),
                chat_id: chat.clone(),
                user_id: "ann".into(),
                seq,
                subject: String::new(),
                text: "after".into(),
            })
            .await
            .unwrap();
            for events in [false, true] {
                let (_tx, mut req) = connect_request(&chat, "bob", Some(&since));
                if events {
                    req.metadata_mut().insert("events", "all".parse().unwrap());
                }
                let mut rx = b.connect(req).await.unwrap().into_inner();
                let first = first_entry(&mut rx).await;
                assert_eq!(first.seq, seq, "trial {trial}");
                assert_eq!(first.text, "after", "trial {trial}: pre-edit text served");
            }
        } else {
            a.delete(pb::DeleteRequest {
                client_id: format!("d{trial}"),
                chat_id: chat.clone(),
                user_id: "ann".into(),
                seq,
            })
            .await
            .unwrap();
            let (_tx, mut req) = connect_request(&chat, "bob", Some(&since));
            req.metadata_mut().insert("events", "all".parse().unwrap());
            let mut rx = b.connect(req).await.unwrap().into_inner();
            let first = first_entry(&mut rx).await;
            assert_eq!(first.seq, seq, "trial {trial}");
            assert!(
                first.deleted && first.text.is_empty(),
                "trial {trial}: a deleted message's text served: {first:?}"
            );
            // A plain stream never shows the deleted message: the first it
            // gets is the next one.
            let (_tx, req) = connect_request(&chat, "bob", Some(&since));
            let mut plain = b.connect(req).await.unwrap().into_inner();
            let next = send(&mut a, &chat, "ann", &format!("n{trial}"), "next").await;
            let got = receive(&mut plain, 1).await.remove(0);
            assert_eq!(
                (got.seq, got.text.as_str()),
                (next.seq, "next"),
                "trial {trial}: a deleted message reached a plain stream"
            );
            assert_eq!(receive(&mut live, 1).await[0].kind, Kind::Message as i32);
        }
    }
}

/// The first entry of the log a stream hands out (skipping live signals,
/// which have no seq: its own join, say).
async fn first_entry(rx: &mut tonic::Streaming<pb::Message>) -> pb::Message {
    loop {
        let m = receive(rx, 1).await.remove(0);
        if m.seq > 0 {
            return m;
        }
    }
}

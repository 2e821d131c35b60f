//! The crash harness: the real release binary, SIGKILLed at random moments
//! under Send and Connect traffic, restarted on the same data dir, checked.
//!
//! Every cycle checks that every acknowledged message is stored exactly once
//! with what the client was told (id, seq, text), that seq is gap-free 1..n
//! in every chat, that History and Connect `since-seq: 0` agree, and that
//! chats and memberships are intact. Sends that were never acknowledged are
//! retried with their client_id after the restart: each must end up stored
//! exactly once.
//!
//! CI runs 20 cycles; `CHAT_CRASH_CYCLES=200` runs the long version, and
//! `CHAT_CRASH_SEED` replays a run (the seed is printed).

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chat::pb;
use common::*;
use tonic::Code;

/// A send as a writer made it: enough to retry it and to check it.
#[derive(Clone, Debug)]
struct Attempt {
    chat: String,
    user: String,
    client_id: String,
    text: String,
}

#[derive(Clone, Default)]
struct Ledger {
    attempted: HashMap<String, Attempt>,
    /// client_id -> the message as acknowledged.
    acked: HashMap<String, pb::Message>,
}

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

const MEMBERS: [&str; 5] = ["w0", "w1", "w2", "w3", "streamer"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_messages_survive_sigkill_exactly_once() {
    let cycles: usize = std::env::var("CHAT_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let seed: u64 = std::env::var("CHAT_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash harness: {cycles} cycles, CHAT_CRASH_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut chats: Vec<String> = Vec::new();
    let mut checked = 0usize;
    let mut retried = 0usize;

    for cycle in 0..=cycles {
        let mut bin = Binary::start(dir.path(), &[]).await;
        let mut c = bin.client().await;
        if chats.is_empty() {
            chats.push(new_chat(&mut c, &MEMBERS).await);
            chats.push(new_chat(&mut c, &[]).await);
            chats.push(new_chat(&mut c, &[]).await);
        }
        let snapshot = ledger.lock().unwrap().clone();
        checked += verify(&mut c, &bin, &chats, &snapshot).await;

        // Retry every send that was never acknowledged, with its client_id.
        let pending: Vec<Attempt> = {
            let l = ledger.lock().unwrap();
            l.attempted
                .values()
                .filter(|a| !l.acked.contains_key(&a.client_id))
                .cloned()
                .collect()
        };
        for a in pending {
            let m = send(&mut c, &a.chat, &a.user, &a.client_id, &a.text).await;
            ledger.lock().unwrap().acked.insert(a.client_id.clone(), m);
            retried += 1;
        }
        let snapshot = ledger.lock().unwrap().clone();
        checked += verify(&mut c, &bin, &chats, &snapshot).await;
        if cycle == cycles {
            break;
        }

        // Traffic: four Send writers and one Connect writer, until the kill.
        let mut writers = Vec::new();
        for w in 0..4 {
            let mut c = bin.client().await;
            let (ledger, chats) = (ledger.clone(), chats.clone());
            writers.push(tokio::spawn(async move {
                for i in 0.. {
                    let a = Attempt {
                        chat: chats[i % chats.len()].clone(),
                        user: format!("w{w}"),
                        client_id: format!("{cycle}-w{w}-{i}"),
                        text: format!("message {i} of writer {w} in cycle {cycle}"),
                    };
                    ledger
                        .lock()
                        .unwrap()
                        .attempted
                        .insert(a.client_id.clone(), a.clone());
                    match c
                        .send(send_req(&a.chat, &a.user, &a.client_id, &a.text))
                        .await
                    {
                        Ok(r) => {
                            ledger
                                .lock()
                                .unwrap()
                                .acked
                                .insert(a.client_id, r.into_inner().message.unwrap());
                        }
                        Err(_) => return, // the server is gone
                    }
                }
            }));
        }
        {
            let mut c = bin.client().await;
            let (ledger, chat) = (ledger.clone(), chats[0].clone());
            writers.push(tokio::spawn(async move {
                let (tx, req) = connect_request(&chat, "streamer", None);
                let Ok(resp) = c.connect(req).await else {
                    return;
                };
                let mut rx = resp.into_inner();
                let sender = {
                    let ledger = ledger.clone();
                    tokio::spawn(async move {
                        for i in 0.. {
                            let a = Attempt {
                                chat: chat.clone(),
                                user: "streamer".into(),
                                client_id: format!("{cycle}-s-{i}"),
                                text: format!("streamed {i} in cycle {cycle}"),
                            };
                            ledger
                                .lock()
                                .unwrap()
                                .attempted
                                .insert(a.client_id.clone(), a.clone());
                            let msg = pb::Message {
                                client_id: a.client_id,
                                text: a.text,
                                ..Default::default()
                            };
                            if tx.send(msg).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_micros(200)).await;
                        }
                    })
                };
                // The echo of our own message is its acknowledgement.
                while let Ok(Some(m)) = rx.message().await {
                    if m.user_id == "streamer" {
                        ledger.lock().unwrap().acked.insert(m.client_id.clone(), m);
                    }
                }
                sender.abort();
            }));
        }
        tokio::time::sleep(Duration::from_millis(20 + rng.below(200))).await;
        bin.signal("-KILL");
        let _ = bin.child.wait().await;
        for w in writers {
            let _ = w.await;
        }
    }
    let l = ledger.lock().unwrap();
    println!(
        "crash harness: {cycles} kill cycles survived; {} messages acknowledged, {checked} acknowledged-message checks, \
         {retried} unacknowledged sends retried and stored exactly once; 0 anomalies",
        l.acked.len()
    );
    assert_eq!(
        l.acked.len(),
        l.attempted.len(),
        "every attempted send ends up acknowledged"
    );
}

/// Checks the whole store against the ledger; returns the acknowledged
/// messages it checked.
async fn verify(c: &mut Client, bin: &Binary, chats: &[String], ledger: &Ledger) -> usize {
    let mut checked = 0;
    let mut seen = HashSet::new();
    for chat in chats {
        let stored = all_messages(c, chat).await;
        let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=stored.len() as u64).collect::<Vec<_>>(),
            "gap-free seq in {chat}"
        );
        for m in &stored {
            assert!(
                seen.insert(m.client_id.clone()),
                "client_id {} stored twice",
                m.client_id
            );
            if let Some(acked) = ledger.acked.get(&m.client_id) {
                assert_eq!(m, acked, "stored as acknowledged");
                checked += 1;
            } else {
                assert!(
                    ledger.attempted.contains_key(&m.client_id),
                    "nothing stored that nobody sent: {m:?}"
                );
            }
        }
        // Connect since-seq 0 replays exactly what History shows.
        let (_tx, req) = connect_request(chat, "streamer", Some("0"));
        let mut rx = c.connect(req).await.unwrap().into_inner();
        let mut replayed = Vec::new();
        while replayed.len() < stored.len() {
            replayed.push(
                tokio::time::timeout(Duration::from_secs(10), rx.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            replayed, stored,
            "Connect since-seq 0 agrees with History in {chat}"
        );
    }
    for (client_id, m) in &ledger.acked {
        assert!(
            seen.contains(client_id),
            "acknowledged message lost: {m:?}\n{}",
            bin.log_text()
        );
    }
    // Chats and memberships are intact.
    assert_eq!(
        new_chat(c, &MEMBERS).await,
        chats[0],
        "same members, same chat"
    );
    let err = c
        .send(send_req(&chats[0], "outsider", "x", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    checked
}

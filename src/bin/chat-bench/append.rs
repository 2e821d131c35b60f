//! Scenario 2: the store append path in-process (no gRPC), against raw
//! sled inserts and a flush with the same group-commit batching.

use super::*;

impl Bench {
    /// 2: the store append path in-process (no gRPC), against raw sled
    /// insert + flush_async with the same group-commit batching.
    pub(crate) async fn scenario2(&mut self) -> Result<(), BoxError> {
        const CONC: usize = 64;
        let text = "hello, a short chat message".to_string();
        // Ceiling: raw sled, same concurrency, same group commit. The second
        // figure writes two keys per message as the store does (the message
        // and its idempotency key), to show what sled itself costs.
        // The ceiling: as many inserts per message as the store makes.
        let mut raw_rate = 0.0;
        for (inserts, case) in [
            (1, "raw sled insert + group flush c=64"),
            (2, "raw sled 2 inserts/msg + group flush"),
        ] {
            let raw = raw_sled(self.secs, inserts).await?;
            if inserts == 2 {
                raw_rate = raw.rate();
            }
            let mut r = row(2, case, "msgs/s", raw.rate(), "msgs/s");
            r.extra.insert("p50_us", raw.p50_us);
            self.report.add(r);
        }

        let dir = TempDir::new()?;
        let server = chat::Server::open(chat::Config::with_data_dir(dir.path())).await?;
        let chats = server.chats();
        let chat = chats.new_chat(vec![], None).await?.to_string();
        let stats = load(CONC, self.secs, move |w, i| {
            let (chats, chat, text) = (chats.clone(), chat.clone(), text.clone());
            async move {
                chats
                    .send(
                        Draft {
                            client_id: format!("{w}-{i}"),
                            chat_id: chat,
                            user_id: "bench".into(),
                            subject: String::new(),
                            text,
                        },
                        None,
                    )
                    .await?;
                Ok(())
            }
        })
        .await;
        drop(server);
        let mut r = row(
            2,
            "Chats::send in-process c=64",
            "msgs/s",
            stats.rate(),
            "msgs/s",
        );
        r.ceiling = Some(raw_rate);
        r.target = Some((
            "ratio >= 0.9 of the same inserts".into(),
            stats.rate() / raw_rate >= 0.9,
        ));
        r.extra.insert("p50_us", stats.p50_us);
        self.report.add(r);
        Ok(())
    }
}

/// Raw sled at concurrency 64: `inserts` inserts of a message-sized value
/// per message, then a wait for a group flush gathered as the committer does.
async fn raw_sled(secs: f64, inserts: usize) -> Result<Stats, BoxError> {
    let dir = TempDir::new()?;
    let db = sled::open(dir.path())?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<()>>();
    let flusher_db = db.clone();
    let flusher = tokio::spawn(async move {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 4096).await > 0 {
            for _ in 0..4 {
                tokio::task::yield_now().await;
                if rx.is_empty() {
                    break;
                }
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
            }
            let _ = flusher_db.flush_async().await;
            for done in batch.drain(..) {
                let _ = done.send(());
            }
        }
    });
    let value = prost::Message::encode_to_vec(&chat::store::sled::MessageValue {
        id: uuid::Uuid::new_v4().to_string(),
        client_id: "0-0-0".into(),
        chat: vec![0; 16],
        user_id: "bench".into(),
        sent_at: 1,
        subject: String::new(),
        text: "hello, a short chat message".into(),
        seq: 1,
        ..Default::default()
    });
    let seq = Arc::new(AtomicU64::new(0));
    let stats = {
        let (db, tx) = (db.clone(), tx.clone());
        load(64, secs, move |_, _| {
            let (db, tx, value) = (db.clone(), tx.clone(), value.clone());
            let n = seq.fetch_add(1, Relaxed);
            async move {
                for i in 0..inserts {
                    let mut key = vec![b'M' + i as u8; 17];
                    key.extend_from_slice(&n.to_be_bytes());
                    db.insert(key, value.clone())?;
                }
                let (done, wait) = tokio::sync::oneshot::channel();
                tx.send(done).map_err(|_| "flusher gone")?;
                wait.await?;
                Ok(())
            }
        })
        .await
    };
    drop(tx);
    let _ = flusher.await;
    Ok(stats)
}

//! Scenario 6: a restart with 1,000,000 stored messages: time from
//! process start to SERVING.

use super::*;

/// 6: restart with 1,000,000 stored messages: time from process start to SERVING.
pub(crate) async fn scenario6(
    report: &mut Report,
    bin: &Path,
    quick: bool,
    pin: bool,
) -> Result<(), BoxError> {
    let total: u64 = if quick { 100_000 } else { 1_000_000 };
    let dir = TempDir::new()?;
    let loaded = Instant::now();
    {
        let store = SledStore::open(dir.path(), 256 << 20)?;
        let chats: Vec<uuid::Uuid> = (0..100).map(|_| uuid::Uuid::new_v4()).collect();
        for chat in &chats {
            store.create_chat(
                *chat,
                &chat::model::ChatRecord {
                    members: vec![],
                    created_at: 1,
                    created_us: 1_000_000,
                },
            )?;
        }
        // As `chat import` writes them: each message with its dedupe key.
        let mut batch = Vec::new();
        for i in 0..total {
            let chat = chats[(i % 100) as usize];
            batch.push(chat::model::Message {
                id: uuid::Uuid::new_v4().to_string(),
                client_id: format!("c{i}"),
                chat,
                user_id: "loader".into(),
                sent_at: 1,
                subject: String::new(),
                text: format!("stored message number {i}"),
                seq: i / 100 + 1,
                ..Default::default()
            });
            if batch.len() == 10_000 {
                store.import_messages(std::mem::take(&mut batch))?;
            }
        }
        store.import_messages(batch)?;
        store.flush().await?;
    }
    let load_secs = loaded.elapsed().as_secs_f64();
    let started = Instant::now();
    let server = ServerProc::start(bin, dir.path(), pin).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))?
        .connect()
        .await?;
    let mut health = HealthClient::new(channel);
    loop {
        if let Ok(r) = health
            .check(HealthCheckRequest {
                service: "chat.Chat".into(),
            })
            .await
        {
            if r.into_inner().status == 1 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut r = row(
        6,
        format!("restart with {total} stored messages"),
        "time to SERVING",
        secs * 1000.0,
        "ms",
    );
    r.target = Some(("<= 1 s".into(), secs <= 1.0));
    r.extra.insert("load_secs", load_secs);
    report.add(r);
    server.stop().await;
    Ok(())
}

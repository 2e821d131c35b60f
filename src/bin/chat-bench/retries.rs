//! Scenario 7: a retry storm: 64 clients send the same client_ids.

use super::*;

impl Bench {
    /// 7: a retry storm: 64 clients send the same client_ids.
    pub(crate) async fn scenario7(&mut self) -> Result<(), BoxError> {
        let ceiling = self.unary64().await;
        let keys: u64 = if self.quick { 200 } else { 2_000 };
        let mut c = self.client(0);
        let chat = new_chat(&mut c).await?;
        let clients: Vec<_> = (0..64).map(|w| self.client(w)).collect();
        let started = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..64u64 {
            let (mut c, chat) = (clients[w as usize].clone(), chat.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut lat) = (0u64, Vec::new());
                for i in 0..keys {
                    // Each client walks the keys from its own starting point.
                    let k = (i * 7 + w * 31) % keys;
                    let t = Instant::now();
                    if c.send(send_req(
                        &chat,
                        "storm",
                        format!("key-{k}"),
                        format!("text {k}"),
                    ))
                    .await
                    .is_ok()
                    {
                        ok += 1;
                        lat.push(t.elapsed().as_micros() as u32);
                    }
                }
                (ok, lat)
            }));
        }
        let (mut ok, mut lat) = (0, Vec::new());
        for t in tasks {
            let (o, l) = t.await?;
            ok += o;
            lat.extend(l);
        }
        let stats = Stats::from_latencies(lat, 64 * keys - ok, started.elapsed().as_secs_f64());
        let mut stored = 0u64;
        let mut after = 0;
        loop {
            let page = c
                .history(pb::HistoryRequest {
                    chat_id: chat.clone(),
                    limit: 1000,
                    before_seq: None,
                    after_seq: Some(after),
                    ..Default::default()
                })
                .await?
                .into_inner();
            stored += page.messages.len() as u64;
            after = page.messages.last().map_or(after, |m| m.seq);
            if !page.has_more {
                break;
            }
        }
        let mut r = row(
            7,
            format!("retry storm, 64 clients x {keys} keys"),
            "sends/s",
            stats.rate(),
            "req/s",
        );
        r.ceiling = Some(ceiling);
        r.target = Some((
            format!("stored == {keys}, ratio >= 0.5"),
            stored == keys && stats.rate() / ceiling >= 0.5,
        ));
        r.extra.insert("stored", stored as f64);
        r.extra.insert("acked", ok as f64);
        r.extra.insert("p99_us", stats.p99_us);
        self.report.add(r);
        Ok(())
    }
}

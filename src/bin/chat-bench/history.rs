//! Scenario 4: History pages of 100 from a chat of 100,000 messages.

use super::*;

impl Bench {
    /// 4: History pages of 100 from a chat of 100,000 messages.
    pub(crate) async fn scenario4(&mut self) -> Result<(), BoxError> {
        let ceiling = self.unary1_p50().await;
        let total: u64 = if self.quick { 10_000 } else { 100_000 };
        let mut c = self.client(0);
        let chat = new_chat(&mut c).await?;
        let next = Arc::new(AtomicU64::new(0));
        let mut fill = Vec::new();
        for w in 0..64 {
            let (mut c, chat, next) = (self.client(w), chat.clone(), next.clone());
            fill.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= total {
                        return Ok::<_, tonic::Status>(());
                    }
                    c.send(send_req(
                        &chat,
                        "filler",
                        i.to_string(),
                        format!("history message {i}"),
                    ))
                    .await?;
                }
            }));
        }
        for f in fill {
            f.await??;
        }
        for (label, before) in [
            ("newest page", None),
            ("before_seq deep in the past", Some(total / 10)),
        ] {
            let (c, chat) = (self.client(0), chat.clone());
            let stats = load(1, self.secs, move |_, _| {
                let (mut c, chat) = (c.clone(), chat.clone());
                async move {
                    let page = c
                        .history(pb::HistoryRequest {
                            chat_id: chat,
                            limit: 100,
                            before_seq: before,
                            after_seq: None,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    if page.messages.len() != 100 {
                        return Err("short page".into());
                    }
                    Ok(())
                }
            })
            .await;
            let mut r = row(
                4,
                format!("History 100 of {total}, {label}"),
                "p50 latency",
                stats.p50_us,
                "us",
            );
            r.ceiling = Some(ceiling);
            r.target = Some((
                "p50 <= 2x empty unary".into(),
                stats.p50_us <= 2.0 * ceiling,
            ));
            r.extra.insert("p99_us", stats.p99_us);
            r.extra.insert("errors", stats.errors as f64);
            self.report.add(r);
        }
        Ok(())
    }
}

//! Scenario 5: idle Connect streams: server RSS per stream.

use super::*;

impl Bench {
    /// 5: idle Connect streams: server RSS per stream.
    pub(crate) async fn scenario5(&mut self) -> Result<(), BoxError> {
        let n: usize = if self.quick { 2_000 } else { 10_000 };
        let mut c = self.client(0);
        let chat = new_chat(&mut c).await?;
        // Own connections, 1,000 streams each (under --max-concurrent-streams 2000).
        let channels = self.server.channels(n.div_ceil(1000)).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = self.server.rss_kib();
        let opened = Arc::new(Mutex::new(Vec::new()));
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::new();
        for s in 0..n {
            let mut c = pb::chat_client::ChatClient::new(channels[s % channels.len()].clone());
            let (chat, opened, sem) = (chat.clone(), opened.clone(), sem.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = sem.acquire().await;
                let (keep, outbox) = tokio::sync::mpsc::channel::<pb::Message>(1);
                let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbox));
                req.metadata_mut().insert("chat-id", chat.parse().unwrap());
                req.metadata_mut()
                    .insert("user-id", "idle".parse().unwrap());
                if let Ok(resp) = c.connect(req).await {
                    opened.lock().unwrap().push((keep, resp.into_inner()));
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = self.server.rss_kib();
        let open = opened.lock().unwrap().len();
        // They are live: one message reaches a stream.
        c.send(send_req(&chat, "w", "ping".into(), "ping".into()))
            .await?;
        let got = {
            let mut streams = std::mem::take(&mut *opened.lock().unwrap());
            let first = &mut streams[0].1;
            let m = tokio::time::timeout(Duration::from_secs(10), first.message()).await;
            drop(streams);
            matches!(m, Ok(Ok(Some(_))))
        };
        let per_stream = (after.saturating_sub(before)) as f64 / open.max(1) as f64;
        let mut r = row(
            5,
            format!("{open} idle Connect streams"),
            "server RSS/stream",
            per_stream,
            "KiB",
        );
        r.target = Some(("<= 32 KiB".into(), per_stream <= 32.0 && open == n && got));
        r.extra.insert("rss_before_kib", before as f64);
        r.extra.insert("rss_after_kib", after as f64);
        r.extra.insert("streams_open", open as f64);
        self.report.add(r);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut r = row(
            5,
            "after the streams closed",
            "server RSS",
            self.server.rss_kib() as f64,
            "KiB",
        );
        r.extra.insert("rss_peak_kib", after as f64);
        self.report.add(r);
        Ok(())
    }
}

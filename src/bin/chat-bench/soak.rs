//! Scenario 8: a soak: 1,000 open streams and a steady Send load; server
//! RSS over time, and descriptors and streams back to baseline after.

use super::*;

impl Bench {
    /// 8: soak: 1,000 open streams plus a steady Send load; server RSS over
    /// time after warm-up, and descriptors and streams back to baseline
    /// once the clients leave.
    pub(crate) async fn scenario8(&mut self) -> Result<(), BoxError> {
        let secs = if self.quick { 5.0 } else { 300.0 };
        let fds_before = self.server.fds();
        let mut c = self.client(0);
        let chat = new_chat(&mut c).await?;
        let channels = self.server.channels(2).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut readers = Vec::new();
        for s in 0..1000 {
            let mut c = pb::chat_client::ChatClient::new(channels[s % 2].clone());
            let (keep, outbox) = tokio::sync::mpsc::channel::<pb::Message>(1);
            let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbox));
            req.metadata_mut().insert("chat-id", chat.parse()?);
            req.metadata_mut().insert("user-id", "soak".parse()?);
            let mut rx = c.connect(req).await?.into_inner();
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let _keep = keep;
                while !stop.load(Relaxed) {
                    if !matches!(rx.message().await, Ok(Some(_))) {
                        break;
                    }
                }
            }));
        }
        // Senders: 8 at a time, each pausing 5 ms between sends (a steady load).
        let mut senders = Vec::new();
        for w in 0..8 {
            let (mut c, chat, stop) = (self.client(w), chat.clone(), stop.clone());
            senders.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Relaxed) {
                    let _ = c
                        .send(send_req(
                            &chat,
                            "soak",
                            format!("{w}-{i}"),
                            "soak message".into(),
                        ))
                        .await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                i
            }));
        }
        let started = Instant::now();
        let mut samples = Vec::new();
        while started.elapsed().as_secs_f64() < secs {
            tokio::time::sleep(Duration::from_secs_f64(secs / 10.0)).await;
            samples.push(self.server.rss_kib());
        }
        stop.store(true, Relaxed);
        let mut sent = 0;
        for s in senders {
            sent += s.await?;
        }
        for r in &readers {
            r.abort();
        }
        drop(readers);
        drop(channels);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fds_after = self.server.fds();
        // After warm-up (the first sample), memory is flat if the last
        // sample is within 10% of the warm-up one.
        let warm = samples.first().copied().unwrap_or(0) as f64;
        let last = samples.last().copied().unwrap_or(0) as f64;
        let growth = (last - warm) / warm.max(1.0) * 100.0;
        let mut r = row(
            8,
            format!("soak {secs:.0} s, 1000 streams + Send"),
            "RSS growth after warm-up",
            growth,
            "%",
        );
        r.target = Some((
            "flat (< 10%), fds back".into(),
            growth < 10.0 && fds_after <= fds_before + 2,
        ));
        r.extra.insert("messages_sent", sent as f64);
        r.extra.insert("fds_before", fds_before as f64);
        r.extra.insert("fds_after", fds_after as f64);
        r.extra.insert("rss_warm_kib", warm);
        r.extra.insert("rss_last_kib", last);
        r.extra.insert(
            "rss_max_kib",
            samples.iter().copied().max().unwrap_or(0) as f64,
        );
        self.report.add(r);
        println!(
            "    RSS samples (KiB, every {:.1} s): {samples:?}; fds {fds_before} -> {fds_after}",
            secs / 10.0
        );
        Ok(())
    }
}

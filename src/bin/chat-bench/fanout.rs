//! Scenario 3: fan-out to 100 and 1,000 Connect streams of one chat, with
//! steady senders.

use super::*;

impl Bench {
    /// 3: fan-out to 100 and 1,000 Connect streams of one chat, steady senders.
    pub(crate) async fn scenario3(&mut self) -> Result<(), BoxError> {
        let ceiling = self.unary64().await;
        let epoch = Instant::now();
        for n in [100usize, 1000] {
            let mut c = self.client(0);
            let chat = new_chat(&mut c).await?;
            let deliveries = Arc::new(AtomicU64::new(0));
            let measuring = Arc::new(AtomicBool::new(false));
            let latencies = Arc::new(Mutex::new(Vec::<u32>::new()));
            let mut streams = Vec::new();
            for s in 0..n {
                let mut c = self.client(s);
                let (_keep, outbox) = tokio::sync::mpsc::channel::<pb::Message>(1);
                let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbox));
                req.metadata_mut().insert("chat-id", chat.parse()?);
                req.metadata_mut().insert("user-id", "reader".parse()?);
                let mut rx = c.connect(req).await?.into_inner();
                let (deliveries, measuring, latencies) =
                    (deliveries.clone(), measuring.clone(), latencies.clone());
                streams.push(tokio::spawn(async move {
                    let _keep = _keep;
                    let mut lat = Vec::new();
                    while let Ok(Some(m)) = rx.message().await {
                        if measuring.load(Relaxed) {
                            deliveries.fetch_add(1, Relaxed);
                            if let Ok(sent_ns) = m.text.parse::<u64>() {
                                let now = epoch.elapsed().as_nanos() as u64;
                                lat.push((now.saturating_sub(sent_ns) / 1000) as u32);
                            }
                        }
                        if m.text == "stop" {
                            break;
                        }
                    }
                    latencies.lock().unwrap().extend(lat);
                }));
            }
            // Steady senders: 4 at a time, each as fast as its acks come back.
            measuring.store(true, Relaxed);
            let started = Instant::now();
            let clients: Vec<_> = (0..4).map(|w| self.client(w)).collect();
            let chat2 = chat.clone();
            let sent = load(4, self.secs, move |w, i| {
                let mut c = clients[w].clone();
                let chat = chat2.clone();
                async move {
                    let now = epoch.elapsed().as_nanos() as u64;
                    c.send(send_req(
                        &chat,
                        "sender",
                        format!("{w}-{i}"),
                        now.to_string(),
                    ))
                    .await?;
                    Ok(())
                }
            })
            .await;
            // Every stream ends on "stop" once it has everything before it.
            c.send(send_req(&chat, "sender", "stop".into(), "stop".into()))
                .await?;
            for s in streams {
                let _ = tokio::time::timeout(Duration::from_secs(60), s).await;
            }
            let secs = started.elapsed().as_secs_f64();
            let stats =
                Stats::from_latencies(std::mem::take(&mut latencies.lock().unwrap()), 0, secs);
            let rate = deliveries.load(Relaxed) as f64 / secs;
            let mut r = row(
                3,
                format!("fan-out, {n} streams"),
                "deliveries/s",
                rate,
                "deliv/s",
            );
            r.ceiling = Some(ceiling);
            r.target = Some(("ratio >= 3".into(), rate / ceiling >= 3.0));
            r.extra.insert("messages_sent", sent.ops as f64);
            r.extra
                .insert("deliveries", deliveries.load(Relaxed) as f64);
            r.extra.insert("p50_us", stats.p50_us);
            r.extra.insert("p99_us", stats.p99_us);
            self.report.add(r);
            let mut r = row(
                3,
                format!("fan-out, {n} streams"),
                "send->receive p99",
                stats.p99_us / 1000.0,
                "ms",
            );
            r.extra.insert("p50_ms", stats.p50_us / 1000.0);
            if n == 1000 {
                r.target = Some(("p99 < 50 ms".into(), stats.p99_us < 50_000.0));
            }
            self.report.add(r);
        }
        Ok(())
    }
}

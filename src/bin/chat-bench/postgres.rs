//! Scenario 9: the PostgreSQL store. A throwaway cluster (scripts/pg-cluster)
//! and the replicas share CPU 0; the load generator, and the ceiling's
//! driver, run on CPU 1.
//!
//! The ceiling is the transaction a Send boils down to, driven straight at
//! the database with no RPC: bump the chat's counter row and insert the
//! message, one message per transaction, 64 connections. Batching is what
//! makes a database fast, so the Send figures are compared with it (target:
//! ≥ 8× at concurrency 64 in one chat); the 32-messages-per-transaction
//! figures show what batching alone buys. The inbox rows are scenario
//! 12's ([`super::inbox`]) on one replica.

use super::*;

use tokio_postgres::NoTls;

/// The cluster, stopped and removed on drop.
struct Cluster {
    dir: TempDir,
    url: String,
    script: PathBuf,
}

impl Cluster {
    async fn start(script: &Path, pin: bool) -> Result<Cluster, BoxError> {
        let dir = TempDir::new()?;
        let mut cmd = if pin {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", "0"]).arg(script);
            c
        } else {
            tokio::process::Command::new(script)
        };
        let out = cmd.arg("start").arg(dir.path()).output().await?;
        if !out.status.success() {
            return Err(format!(
                "{} start failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let env = String::from_utf8(out.stdout)?;
        let url = env
            .lines()
            .find_map(|l| {
                l.strip_prefix("export CHAT_TEST_PG_URL='")?
                    .strip_suffix('\'')
            })
            .ok_or("no URL from the cluster script")?
            .to_owned();
        Ok(Cluster {
            dir,
            url,
            script: script.to_owned(),
        })
    }

    /// A new database on the cluster, with the chat schema; its URL.
    async fn database(&self, name: &str) -> Result<String, BoxError> {
        let (client, conn) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        let url = self.url.replace("/postgres?", &format!("/{name}?"));
        let config = chat::Config::parse_from(["chat", "--store", &url]);
        chat::open_store(&config, &config.store_spec()?).await?;
        Ok(url)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(&self.script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// `n` chats created straight in the database (the ceiling's chats).
async fn ceiling_chats(
    client: &tokio_postgres::Client,
    n: usize,
) -> Result<Vec<uuid::Uuid>, BoxError> {
    let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::new_v4()).collect();
    client
        .execute(
            "INSERT INTO chats (chat_id, members, created_at) SELECT id, '{}', 1 FROM unnest($1::uuid[]) id",
            &[&ids],
        )
        .await?;
    Ok(ids)
}

/// The ceiling: `per_tx` messages per transaction (counter row bumped by
/// `per_tx`, rows inserted), 64 connections of this process. The fastest
/// form of it: one prepared statement in autocommit, so one round trip per
/// transaction (a Send's transaction needs two: its lookup must see the
/// locked rows).
async fn ceiling(url: &str, chats: usize, per_tx: i64, secs: f64) -> Result<Stats, BoxError> {
    let mut conns = Vec::new();
    for _ in 0..64 {
        let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(conn);
        let append = client
            .prepare(
                "WITH bump AS (
                    UPDATE chats SET last_seq = last_seq + $2 WHERE chat_id = $1 RETURNING last_seq)
                 INSERT INTO messages (chat_id, seq, id, user_id, client_id, sent_at, subject, text)
                 SELECT $1, bump.last_seq - $2 + g, gen_random_uuid()::text, 'bench',
                        gen_random_uuid()::text, 1, '', 'hello, a short chat message'
                 FROM bump, generate_series(1, $2::int8) g",
            )
            .await?;
        conns.push(Arc::new((client, append)));
    }
    let chats = Arc::new(ceiling_chats(&conns[0].0, chats).await?);
    let stats = load(64, secs, move |w, i| {
        let conn = conns[w].clone();
        let chat = chats[(w + i as usize * 7) % chats.len()];
        async move {
            let (client, append) = &*conn;
            client.execute(append, &[&chat, &per_tx]).await?;
            Ok(())
        }
    })
    .await;
    // Rates in messages: each call committed `per_tx` of them.
    Ok(Stats {
        ops: stats.ops * per_tx as u64,
        ..stats
    })
}

/// Sends at concurrency 64 through `servers`' channels to `chats`.
async fn sends(channels: &[Channel], chats: Arc<Vec<String>>, secs: f64, run: u64) -> Stats {
    let clients: Vec<Client> = channels
        .iter()
        .map(|c| pb::chat_client::ChatClient::new(c.clone()))
        .collect();
    load(64, secs, move |w, i| {
        let mut c = clients[w % clients.len()].clone();
        let chat = chats[(w + i as usize * 7) % chats.len()].clone();
        async move {
            c.send(send_req(
                &chat,
                "bench",
                format!("{run}-{w}-{i}"),
                "hello, a short chat message".into(),
            ))
            .await?;
            Ok(())
        }
    })
    .await
}

/// 9: Send through 1 and 3 replicas on one database, cross-replica fan-out,
/// against the database's own one-message-per-transaction ceiling.
pub async fn scenario9(
    report: &mut Report,
    bin: &Path,
    script: &Path,
    quick: bool,
    pin: bool,
) -> Result<(), BoxError> {
    let secs = if quick { 1.0 } else { 5.0 };
    let cluster = Cluster::start(script, pin).await?;

    let url = cluster.database("ceiling").await?;
    let mut ceilings = BTreeMap::new();
    for (per_tx, label) in [(1i64, "1 msg/tx"), (32, "32 msgs/tx")] {
        for chats in [1usize, 1000] {
            let stats = ceiling(&url, chats, per_tx, secs).await?;
            let mut r = row(
                9,
                format!("database direct, {label}, {chats} chat(s) c=64"),
                "msgs/s",
                stats.rate(),
                "msgs/s",
            );
            r.extra.insert("p50_us", stats.p50_us);
            report.add(r);
            if per_tx == 1 {
                ceilings.insert(chats, stats.rate());
            }
        }
    }

    for replicas in [1usize, 3] {
        let url = cluster.database(&format!("replicas{replicas}")).await?;
        let mut servers = Vec::new();
        for _ in 0..replicas {
            let args = ["--store", url.as_str(), "--pg-pool-size", "16"];
            servers.push(ServerProc::start_args(bin, &args, pin).await?);
        }
        let mut channels = Vec::new();
        for s in &servers {
            channels.extend(s.channels(8 / replicas.max(1) + 1).await?);
        }
        let mut c = pb::chat_client::ChatClient::new(channels[0].clone());
        let one = vec![new_chat(&mut c).await?];
        let mut many = Vec::new();
        for _ in 0..1000 {
            many.push(new_chat(&mut c).await?);
        }
        for (label, chats, n) in [("1 chat", one, 1usize), ("1000 chats", many, 1000)] {
            let stats = sends(
                &channels,
                Arc::new(chats),
                secs,
                replicas as u64 * 10 + n as u64,
            )
            .await;
            let mut r = row(
                9,
                format!("Send c=64 via {replicas} replica(s), {label}"),
                "msgs/s",
                stats.rate(),
                "msgs/s",
            );
            let ceiling = ceilings[&n];
            r.ceiling = Some(ceiling);
            if replicas == 1 && n == 1 {
                r.target = Some(("ratio >= 8".into(), stats.rate() / ceiling >= 8.0));
            }
            r.extra.insert("p50_us", stats.p50_us);
            r.extra.insert("p99_us", stats.p99_us);
            r.extra.insert("errors", stats.errors as f64);
            report.add(r);
        }
        if replicas == 3 {
            fan_out(report, &servers, secs).await?;
        } else {
            let clients: Vec<Client> = channels
                .iter()
                .map(|c| pb::chat_client::ChatClient::new(c.clone()))
                .collect();
            super::inbox::inbox_rows(report, 9, "PostgreSQL", &clients, secs).await?;
        }
        for s in servers {
            s.stop().await;
        }
    }
    drop(cluster);
    Ok(())
}

/// 100 Connect streams on replica B; one sender on replica A at c=1: the
/// time from Send to delivery on the other replica.
async fn fan_out(report: &mut Report, servers: &[ServerProc], secs: f64) -> Result<(), BoxError> {
    const STREAMS: usize = 100;
    let a = servers[0].channels(1).await?;
    let b = servers[1].channels(4).await?;
    let mut c = pb::chat_client::ChatClient::new(a[0].clone());
    let chat = new_chat(&mut c).await?;
    let started = Instant::now();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for s in 0..STREAMS {
        let mut cb = pb::chat_client::ChatClient::new(b[s % b.len()].clone());
        let (_tx, outbox) = tokio::sync::mpsc::channel::<pb::Message>(1);
        let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbox));
        req.metadata_mut().insert("chat-id", chat.parse()?);
        req.metadata_mut().insert("user-id", "reader".parse()?);
        let mut rx = cb.connect(req).await?.into_inner();
        let (latencies, delivered) = (latencies.clone(), delivered.clone());
        readers.push(tokio::spawn(async move {
            let _keep_open = _tx;
            while let Ok(Some(m)) = rx.message().await {
                let sent: u64 = m.text.parse().unwrap_or(0);
                let now = started.elapsed().as_micros() as u64;
                if s == 0 {
                    latencies
                        .lock()
                        .unwrap()
                        .push(now.saturating_sub(sent) as u32);
                }
                delivered.fetch_add(1, Relaxed);
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut i = 0u64;
    while Instant::now() < deadline {
        let text = started.elapsed().as_micros().to_string();
        c.send(send_req(&chat, "bench", format!("f{i}"), text))
            .await?;
        i += 1;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for r in readers {
        r.abort();
    }
    let lat = std::mem::take(&mut *latencies.lock().unwrap());
    let stats = Stats::from_latencies(lat, 0, secs);
    let mut r = row(
        9,
        format!("cross-replica: send on A, {STREAMS} streams on B"),
        "send->receive p99",
        stats.p99_us / 1000.0,
        "ms",
    );
    r.target = Some(("p99 < 50 ms".into(), stats.p99_us < 50_000.0));
    r.extra.insert("p50_ms", stats.p50_us / 1000.0);
    r.extra.insert("messages_sent", i as f64);
    r.extra.insert("deliveries", delivered.load(Relaxed) as f64);
    report.add(r);
    Ok(())
}

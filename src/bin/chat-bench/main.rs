//! chat-bench: measures every hot path of the chat service against a ceiling
//! measured in the same run, on the same machine, with the same setup.
//!
//! It starts the release server (`chat`, next to this binary) on a temp data
//! dir, pinned to CPU 0 while the load generator runs on CPU 1 (`taskset`,
//! when the machine has two CPUs or more), runs the scenarios, prints one
//! table and writes the figures as JSON. `--quick` runs each scenario for
//! about a second (CI runs it so the tool never rots); the default is the
//! full run. Ratios, not absolute numbers, are what compare across runs.
//! Scenario 9 ([`postgres`]) measures the PostgreSQL store on a throwaway
//! cluster it starts with `scripts/pg-cluster`; scenario 10 ([`abuse`])
//! what hostile clients can make the server hold; scenario 12 ([`inbox`])
//! a ListChats page of a user in 1,000 to 100,000 chats.

mod abuse;
mod inbox;
mod postgres;
mod redis;
mod report;

use report::{row, Report};

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use chat::{chat::Draft, pb, store::sled::SledStore};
use clap::Parser;
use tokio::io::AsyncBufReadExt;
use tonic::{transport::Channel, Request};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

type Client = pb::chat_client::ChatClient<Channel>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(
    name = "chat-bench",
    about = "Benchmarks the chat service against ceilings measured in the same run."
)]
struct Args {
    /// Short scenarios (seconds in all), as CI runs them.
    #[arg(long)]
    quick: bool,
    /// Scenarios to run, e.g. `1,3,5` (default: all).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<u32>,
    /// Where to write the figures as JSON.
    #[arg(long, default_value = "chat-bench.json")]
    json: PathBuf,
    /// Do not pin the server and the load generator to separate CPUs.
    #[arg(long)]
    no_pin: bool,
    /// The server binary (default: `chat` next to this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Runs everything this many times and prints each figure's median
    /// (judge figures on the median of three runs: the machine is noisy).
    #[arg(long, default_value_t = 1)]
    repeat: u32,
    /// The script that starts a throwaway PostgreSQL cluster (scenario 9).
    #[arg(long, default_value = "scripts/pg-cluster")]
    pg_cluster: PathBuf,
}

/// Latency and throughput of one measured load.
#[derive(Clone, Debug, Default)]
struct Stats {
    ops: u64,
    errors: u64,
    secs: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Stats {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.secs
    }

    fn from_latencies(mut lat: Vec<u32>, errors: u64, secs: f64) -> Stats {
        lat.sort_unstable();
        let pct = |p: f64| {
            if lat.is_empty() {
                0.0
            } else {
                lat[((lat.len() - 1) as f64 * p) as usize] as f64
            }
        };
        Stats {
            ops: lat.len() as u64,
            errors,
            secs,
            p50_us: pct(0.5),
            p99_us: pct(0.99),
        }
    }
}

/// The server under test: the real release binary as a child process.
struct ServerProc {
    child: tokio::process::Child,
    addr: SocketAddr,
    pid: u32,
}

impl ServerProc {
    async fn start(bin: &Path, dir: &Path, pin: bool) -> Result<ServerProc, BoxError> {
        let dir = dir.to_str().ok_or("a data dir that is not UTF-8")?;
        ServerProc::start_args(bin, &["--data-dir", dir], pin).await
    }

    /// Starts the server with `args` after the common ones (store, data dir).
    async fn start_args(bin: &Path, args: &[&str], pin: bool) -> Result<ServerProc, BoxError> {
        let mut cmd = if pin {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", "0"]).arg(bin);
            c
        } else {
            tokio::process::Command::new(bin)
        };
        let mut child = cmd
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--max-concurrent-streams",
                "2000",
            ])
            .args(args)
            // Scenarios measure throughput, not the per-caller read limit
            // (a flag in `args` still overrides this).
            .env("CHAT_RATE_LIMIT_READ", "0")
            .env("RUST_LOG", "warn,chat=info")
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or("server exited")?;
        let mut lines = tokio::io::BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
        let addr = loop {
            let line = lines
                .next_line()
                .await?
                .ok_or("the server exited before serving")?;
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "serving gRPC" {
                break v["fields"]["addr"].as_str().ok_or("no addr")?.parse()?;
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(ServerProc { child, addr, pid })
    }

    async fn channels(&self, n: usize) -> Result<Vec<Channel>, BoxError> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))?
                    .tcp_nodelay(true)
                    .connect()
                    .await?,
            );
        }
        Ok(v)
    }

    /// Open file descriptors of the server.
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid)).map_or(0, |d| d.count())
    }

    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

/// Runs `concurrency` workers calling `call(worker, i)` in a loop for `secs`;
/// latency of every successful call.
async fn load<F, Fut>(concurrency: usize, secs: f64, call: F) -> Stats
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), BoxError>> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let call = call.clone();
        workers.push(tokio::spawn(async move {
            let (mut lat, mut errors) = (Vec::new(), 0u64);
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                match call(w, i).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u32),
                    Err(_) => errors += 1,
                }
                i += 1;
            }
            (lat, errors)
        }));
    }
    let (mut lat, mut errors) = (Vec::new(), 0);
    for w in workers {
        let (l, e) = w.await.unwrap_or_default();
        lat.extend(l);
        errors += e;
    }
    Stats::from_latencies(lat, errors, started.elapsed().as_secs_f64())
}

fn send_req(chat: &str, user: &str, client_id: String, text: String) -> pb::SendRequest {
    pb::SendRequest {
        client_id,
        chat_id: chat.into(),
        user_id: user.into(),
        subject: String::new(),
        text,
    }
}

async fn new_chat(c: &mut Client) -> Result<String, BoxError> {
    Ok(c.new_chat(pb::NewRequest { user_ids: vec![] })
        .await?
        .into_inner()
        .chat_id)
}

struct Bench {
    quick: bool,
    secs: f64,
    server: ServerProc,
    channels: Vec<Channel>,
    report: Report,
    /// Empty unary (Health/Check) at concurrency 64: req/s and p50 at concurrency 1.
    unary64: Option<f64>,
    unary1_p50: Option<f64>,
    /// Whether servers go on CPU 0 and load generators on CPU 1.
    pin: bool,
}

impl Bench {
    /// 12: see [`inbox`].
    async fn scenario12(&mut self) -> Result<(), BoxError> {
        let clients: Vec<Client> = (0..self.channels.len()).map(|w| self.client(w)).collect();
        inbox::inbox_rows(&mut self.report, 12, "sled", &clients, self.secs).await
    }

    fn client(&self, w: usize) -> Client {
        pb::chat_client::ChatClient::new(self.channels[w % self.channels.len()].clone())
    }

    async fn health_load(&self, concurrency: usize) -> Stats {
        let clients: Vec<_> = self
            .channels
            .iter()
            .map(|c| HealthClient::new(c.clone()))
            .collect();
        load(concurrency, self.secs, move |w, _| {
            let mut h = clients[w % clients.len()].clone();
            async move {
                h.check(HealthCheckRequest {
                    service: String::new(),
                })
                .await?;
                Ok(())
            }
        })
        .await
    }

    async fn unary64(&mut self) -> f64 {
        if self.unary64.is_none() {
            self.unary64 = Some(self.health_load(64).await.rate());
        }
        self.unary64.unwrap_or(1.0)
    }

    async fn unary1_p50(&mut self) -> f64 {
        if self.unary1_p50.is_none() {
            self.unary1_p50 = Some(self.health_load(1).await.p50_us);
        }
        self.unary1_p50.unwrap_or(1.0)
    }

    /// Unary Sends from `conc` workers for the scenario's time, spread over
    /// `chats`; `tag` keeps client_ids apart from other loads'.
    async fn send_load(
        &self,
        conc: usize,
        chats: Arc<Vec<String>>,
        tag: String,
        text: &'static str,
    ) -> Stats {
        let clients: Vec<_> = (0..self.channels.len()).map(|w| self.client(w)).collect();
        load(conc, self.secs, move |w, i| {
            let mut c = clients[w % clients.len()].clone();
            let chat = chats[(w + i as usize * 7) % chats.len()].clone();
            let client_id = format!("{tag}-{w}-{i}");
            async move {
                c.send(send_req(&chat, "bench", client_id, text.into()))
                    .await?;
                Ok(())
            }
        })
        .await
    }

    /// 1: unary Send at 1/16/64/256 in 1 chat and in 1,000 chats, against Health/Check.
    async fn scenario1(&mut self) -> Result<(), BoxError> {
        let mut c = self.client(0);
        let one = new_chat(&mut c).await?;
        let mut many = Vec::new();
        for _ in 0..1000 {
            many.push(new_chat(&mut c).await?);
        }
        let many = Arc::new(many);
        let run = Arc::new(AtomicU64::new(0));
        for conc in [1usize, 16, 64, 256] {
            let ceiling = self.health_load(conc).await;
            if conc == 64 {
                self.unary64 = Some(ceiling.rate());
            }
            if conc == 1 {
                self.unary1_p50 = Some(ceiling.p50_us);
            }
            let mut r = row(
                1,
                format!("empty unary (Health/Check) c={conc}"),
                "req/s",
                ceiling.rate(),
                "req/s",
            );
            r.extra.insert("p50_us", ceiling.p50_us);
            r.extra.insert("p99_us", ceiling.p99_us);
            self.report.add(r);
            for (label, chats) in [
                ("1 chat", Arc::new(vec![one.clone()])),
                ("1000 chats", many.clone()),
            ] {
                let tag = run.fetch_add(1, Relaxed).to_string();
                let stats = self
                    .send_load(conc, chats, tag, "hello, a short chat message")
                    .await;
                let mut r = row(
                    1,
                    format!("Send c={conc}, {label}"),
                    "msgs/s",
                    stats.rate(),
                    "msgs/s",
                );
                r.ceiling = Some(ceiling.rate());
                if conc >= 64 {
                    let ratio = stats.rate() / ceiling.rate();
                    r.target = Some(("ratio >= 0.5".into(), ratio >= 0.5));
                }
                r.extra.insert("p50_us", stats.p50_us);
                r.extra.insert("p99_us", stats.p99_us);
                r.extra.insert("errors", stats.errors as f64);
                self.report.add(r);
            }
        }
        Ok(())
    }

    /// 2: the store append path in-process (no gRPC), against raw sled
    /// insert + flush_async with the same group-commit batching.
    async fn scenario2(&mut self) -> Result<(), BoxError> {
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

    /// 3: fan-out to 100 and 1,000 Connect streams of one chat, steady senders.
    async fn scenario3(&mut self) -> Result<(), BoxError> {
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

    /// 4: History pages of 100 from a chat of 100,000 messages.
    async fn scenario4(&mut self) -> Result<(), BoxError> {
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

    /// 5: idle Connect streams: server RSS per stream.
    async fn scenario5(&mut self) -> Result<(), BoxError> {
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

    /// 8: soak: 1,000 open streams plus a steady Send load; server RSS over
    /// time after warm-up, and descriptors and streams back to baseline
    /// once the clients leave.
    async fn scenario8(&mut self) -> Result<(), BoxError> {
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

    /// 7: a retry storm: 64 clients send the same client_ids.
    async fn scenario7(&mut self) -> Result<(), BoxError> {
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

/// 6: restart with 1,000,000 stored messages: time from process start to SERVING.
async fn scenario6(
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

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> std::io::Result<TempDir> {
        let dir = std::env::temp_dir().join(format!("chat-bench-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pins this process (every thread it will have) to `cpu`.
fn pin_self(cpu: &str) -> bool {
    std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cpu, &std::process::id().to_string()])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One run of the wanted scenarios.
async fn run_once(args: &Args, bin: &Path, pin: bool) -> Result<Report, BoxError> {
    let wanted = |n: u32| args.scenarios.is_empty() || args.scenarios.contains(&n);
    let mut report = Report::default();
    let dir = TempDir::new()?;
    let server = ServerProc::start(bin, dir.path(), pin).await?;
    let channels = server.channels(8).await?;
    let mut bench = Bench {
        quick: args.quick,
        secs: if args.quick { 0.5 } else { 5.0 },
        server,
        channels,
        report,
        unary64: None,
        unary1_p50: None,
        pin,
    };
    type Scenario =
        for<'a> fn(
            &'a mut Bench,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<(), BoxError>> + 'a>>;
    let scenarios: [(u32, Scenario); 9] = [
        (1, |b| Box::pin(b.scenario1())),
        (2, |b| Box::pin(b.scenario2())),
        (3, |b| Box::pin(b.scenario3())),
        (4, |b| Box::pin(b.scenario4())),
        (5, |b| Box::pin(b.scenario5())),
        (7, |b| Box::pin(b.scenario7())),
        (11, |b| Box::pin(b.scenario11())),
        (12, |b| Box::pin(b.scenario12())),
        (8, |b| Box::pin(b.scenario8())),
    ];
    for (n, run) in scenarios {
        if wanted(n) {
            run(&mut bench)
                .await
                .map_err(|e| format!("scenario {n}: {e}"))?;
        }
    }
    bench.server.stop().await;
    report = bench.report;
    if wanted(6) {
        scenario6(&mut report, bin, args.quick, pin)
            .await
            .map_err(|e| format!("scenario 6: {e}"))?;
    }
    if wanted(10) {
        abuse::scenario10(&mut report, bin, args.quick, pin)
            .await
            .map_err(|e| format!("scenario 10: {e}"))?;
    }
    if wanted(9) {
        postgres::scenario9(&mut report, bin, &args.pg_cluster, args.quick, pin)
            .await
            .map_err(|e| format!("scenario 9: {e}"))?;
    }
    Ok(report)
}

/// The server's allocator, so that the in-process scenario measures what
/// the server does.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = !args.no_pin && cpus >= 2 && pin_self("1");
    let setup = if pin {
        "server pinned to CPU 0 (taskset -c 0), load generator to CPU 1; ceilings measured the same way".to_string()
    } else {
        format!("no pinning; server and load generator share {cpus} CPUs")
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(if pin { 1 } else { cpus })
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("chat"),
        };
        println!(
            "chat-bench ({} mode): {setup}",
            if args.quick { "quick" } else { "full" }
        );
        let repeat = args.repeat.max(1);
        let mut runs = Vec::new();
        for n in 1..=repeat {
            if repeat > 1 {
                println!("run {n} of {repeat}");
            }
            report::print_header();
            runs.push(run_once(&args, &bin, pin).await?);
        }
        let json = if repeat > 1 {
            let median = Report::median(&runs);
            println!("median of {repeat} runs (ratios: the median of each run's own ratio)");
            median.print();
            serde_json::json!({
                "setup": setup, "quick": args.quick, "repeat": repeat,
                "rows": median.rows_json(),
                "runs": runs.iter().map(Report::rows_json).collect::<Vec<_>>(),
            })
        } else {
            serde_json::json!({ "setup": setup, "quick": args.quick, "rows": runs[0].rows_json() })
        };
        std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)?;
        println!("figures written to {}", args.json.display());
        Ok(())
    })
}

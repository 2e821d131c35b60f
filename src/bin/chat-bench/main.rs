//! chat-bench: measures every hot path of the chat service against a ceiling
//! measured in the same run, on the same machine, with the same setup.
//!
//! It starts the release server (`chat`, next to this binary) on a temp data
//! dir, pinned to CPU 0 while the load generator runs on CPU 1 (`taskset`,
//! when the machine has two CPUs or more), runs the scenarios, prints one
//! table and writes the figures as JSON. `--quick` runs each scenario for
//! about a second (CI runs it so the tool never rots); the default is the
//! full run. Ratios, not absolute numbers, are what compare across runs.
//! One module per scenario, this file the runner (servers, loads, the
//! ceilings) and [`report`] the table: 1 [`send`], 2 [`append`], 3
//! [`fanout`], 4 [`history`], 5 [`idle`], 6 [`restart`], 7 [`retries`], 8
//! [`soak`], 9 [`postgres`] (the PostgreSQL store on a throwaway cluster
//! it starts with `scripts/pg-cluster`), 10 [`abuse`] (what hostile clients
//! can make the server hold), 11 [`redis`] (the Redis Streams peer), 12
//! [`inbox`] (a ListChats page of a user in 1,000 to 100,000 chats).

mod abuse;
mod append;
mod fanout;
mod history;
mod idle;
mod inbox;
mod postgres;
mod redis;
mod report;
mod restart;
mod retries;
mod send;
mod soak;

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
    /// Where to write the figures as JSON (under target/, with the build).
    #[arg(long, default_value = "target/chat-bench.json")]
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
        restart::scenario6(&mut report, bin, args.quick, pin)
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
        if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&args.json, serde_json::to_string_pretty(&json)?)?;
        println!("figures written to {}", args.json.display());
        Ok(())
    })
}

//! Scenario 11: the peer a user would pick instead for a durable chat log,
//! Redis Streams with every append fsynced (`appendfsync always`), beside
//! our Send at the same concurrencies, on the same machine, pinned the same
//! way (the Redis server on CPU 0 like ours, `redis-benchmark` on CPU 1
//! like our load generator).
//!
//! Needs `redis-server` and `redis-benchmark` (Debian's `redis-server` and
//! `redis-tools`); without them the scenario says so and measures nothing.
//! The tests never need Redis.

use super::*;

/// The append a chat message is, as Redis Streams does it.
const XADD: [&str; 9] = [
    "XADD",
    "chat:1",
    "*",
    "user_id",
    "alice",
    "client_id",
    "abc",
    "text",
    "hello world message",
];

/// A throwaway `redis-server` in a temp dir on a free loopback port.
struct Redis {
    child: tokio::process::Child,
    port: u16,
    _dir: TempDir,
}

impl Redis {
    async fn start(pin: bool) -> Result<Redis, BoxError> {
        let dir = TempDir::new()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut cmd = pinned("redis-server", pin.then_some("0"));
        cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .arg("--dir")
            .arg(dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", "", "--daemonize", "no", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        let redis = Redis {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !redis.pong().await {
            if Instant::now() > deadline {
                return Err("redis-server did not answer PING within 10 s".into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(redis)
    }

    async fn pong(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// `redis-benchmark` running the XADD `n` times at `concurrency`:
    /// appends/s, p50 and p99 in µs.
    async fn xadd(&self, concurrency: usize, n: u64, pin: bool) -> Result<Stats, BoxError> {
        let mut cmd = pinned("redis-benchmark", pin.then_some("1"));
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-c",
                &concurrency.to_string(),
                "-n",
                &n.to_string(),
                "--csv",
            ])
            .args(XADD);
        let out = cmd.output().await?;
        if !out.status.success() {
            return Err(format!(
                "redis-benchmark failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let last = text
            .lines()
            .rev()
            .find(|l| l.starts_with("\"XADD"))
            .ok_or_else(|| format!("no XADD line in redis-benchmark's output: {text}"))?;
        // Read from the right: the test name may hold commas.
        let fields: Vec<f64> = last
            .rsplitn(8, ',')
            .take(7)
            .map(|f| f.trim_matches('"').parse().unwrap_or(f64::NAN))
            .collect();
        // rsplitn yields max, p99, p95, p50, min, avg, rps.
        let rps = fields[6];
        Ok(Stats {
            ops: n,
            errors: 0,
            secs: n as f64 / rps,
            p50_us: fields[3] * 1000.0,
            p99_us: fields[1] * 1000.0,
        })
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// `program`, pinned to `cpu` with taskset when given.
fn pinned(program: &str, cpu: Option<&str>) -> tokio::process::Command {
    match cpu {
        Some(cpu) => {
            let mut c = tokio::process::Command::new("taskset");
            c.args(["-c", cpu, program]);
            c
        }
        None => tokio::process::Command::new(program),
    }
}

fn installed(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

impl Bench {
    /// 11: Send (1 chat) and Redis XADD with `appendfsync always` at
    /// 1/16/64/256, each with the empty unary of the same concurrency.
    pub async fn scenario11(&mut self) -> Result<(), BoxError> {
        let pin = self.pin;
        if !installed("redis-server") || !installed("redis-benchmark") {
            println!(
                "11  skipped: redis-server and redis-benchmark are not installed \
                 (apt-get install redis-server redis-tools)"
            );
            return Ok(());
        }
        let redis = Redis::start(pin).await?;
        let mut c = self.client(0);
        let chat = Arc::new(vec![new_chat(&mut c).await?]);
        for conc in [1usize, 16, 64, 256] {
            let unary = self.health_load(conc).await;
            let send = self
                .send_load(
                    conc,
                    chat.clone(),
                    format!("r{conc}"),
                    "hello world message",
                )
                .await;
            // About as long as the Send load ran, at the rate Send reached.
            let n = ((send.rate().max(1000.0) * self.secs) as u64).max(1000);
            let xadd = redis.xadd(conc, n, pin).await?;
            let mut r = row(
                11,
                format!("Redis XADD c={conc}, appendfsync always"),
                "appends/s",
                xadd.rate(),
                "ops/s",
            );
            r.extra.insert("p50_us", xadd.p50_us);
            r.extra.insert("p99_us", xadd.p99_us);
            self.report.add(r);
            let mut r = row(
                11,
                format!("Send c={conc}, 1 chat, vs Redis"),
                "msgs/s",
                send.rate(),
                "msgs/s",
            );
            r.ceiling = Some(xadd.rate());
            r.extra.insert("p50_us", send.p50_us);
            r.extra.insert("p99_us", send.p99_us);
            r.extra.insert("errors", send.errors as f64);
            self.report.add(r);
            let mut r = row(
                11,
                format!("Send c={conc}, 1 chat, vs empty unary"),
                "msgs/s",
                send.rate(),
                "msgs/s",
            );
            r.ceiling = Some(unary.rate());
            self.report.add(r);
        }
        redis.stop().await;
        Ok(())
    }
}

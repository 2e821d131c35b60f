//! Starts the real server in-process on `127.0.0.1:0` with a temp data dir,
//! and connects the generated client to it.
//!
//! The backend is chosen by the environment, so that every test runs on
//! both (`scripts/test` runs the suite twice): `CHAT_TEST_STORE=postgres`
//! with `CHAT_TEST_PG_URL`, the URL of a throwaway PostgreSQL cluster, gives
//! each test dir its own database there (the same dir, the same database:
//! a restart finds its data); otherwise the sled store in the test dir.
#![allow(dead_code)] // each test binary uses a different part of this

pub mod browser;
pub mod pki;

use std::{net::SocketAddr, path::Path};

use chat::{pb, Config};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

pub type Client = pb::chat_client::ChatClient<Channel>;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The running chat logic, for what only the server can see.
    pub chats: chat::chat::Chats,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), chat::RunError>>>,
}

/// The PostgreSQL URL of `dir`'s own database when the tests run on
/// PostgreSQL (created on first use), else `None`.
pub async fn pg_url(dir: &Path) -> Option<String> {
    match std::env::var("CHAT_TEST_STORE").as_deref() {
        Ok("postgres") => {}
        Ok("sled") | Err(_) => return None,
        Ok(other) => panic!("CHAT_TEST_STORE={other}: use sled or postgres"),
    }
    Some(pg_database(dir).await)
}

/// The URL of the throwaway test cluster (superuser). Tests of replicas
/// need it in every pass: without it they fail, they do not skip.
pub fn pg_admin() -> String {
    std::env::var("CHAT_TEST_PG_URL").expect(
        "CHAT_TEST_PG_URL must name a throwaway PostgreSQL cluster (scripts/test starts one)",
    )
}

/// The URL of `dir`'s own database on the test cluster, created on first use.
pub async fn pg_database(dir: &Path) -> String {
    let admin = pg_admin();
    let name = db_name(dir);
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("the test cluster answers");
    tokio::spawn(conn);
    match client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
    {
        Ok(()) => {}
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
        Err(e) => panic!("cannot create the test database: {e}"),
    }
    with_database(&admin, &name)
}

/// A database name for a test dir: stable for the dir, unique per test.
pub fn db_name(dir: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    format!("t_{:016x}", h.finish())
}

/// `admin` (a `postgres://…/db` URL) with another database.
pub fn with_database(admin: &str, name: &str) -> String {
    let (base, query) = admin.split_once('?').unwrap_or((admin, ""));
    let host = base.rsplit_once('/').map_or(base, |(h, _)| h);
    let url = format!("{host}/{name}");
    if query.is_empty() {
        url
    } else {
        format!("{url}?{query}")
    }
}

/// The default config for `dir`: its sled store, or its database.
pub async fn test_config(dir: &Path) -> Config {
    let mut config = Config::with_data_dir(dir);
    // Tests read as fast as they can from one address; the read limit has
    // a test of its own.
    config.rate_limit_read = 0.0;
    if let Some(url) = pg_url(dir).await {
        config.store = chat::config::Secret(url);
    }
    config
}

impl TestServer {
    /// A server with default settings on `dir` (see [`test_config`]).
    pub async fn start(dir: &Path) -> TestServer {
        TestServer::start_with(test_config(dir).await).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        TestServer::serve(chat::Server::open(config).await.unwrap()).await
    }

    /// Serves an opened server on `127.0.0.1:0`.
    pub async fn serve(server: chat::Server) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let chats = server.chats();
        let task = tokio::spawn(server.serve(listener, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            chats,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn client(&self) -> Client {
        pb::chat_client::ChatClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        channel_to(self.addr).await
    }

    /// Graceful stop; returns once the store is flushed and closed.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

pub async fn channel_to(addr: SocketAddr) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A Connect request for `chat` as `user` (with `since-seq` if given), and
/// the sender of the messages the client sends on it (drop it to half-close).
pub fn connect_request(
    chat: &str,
    user: &str,
    since: Option<&str>,
) -> (
    tokio::sync::mpsc::Sender<pb::Message>,
    tonic::Request<tokio_stream::wrappers::ReceiverStream<pb::Message>>,
) {
    let (tx, outbox) = tokio::sync::mpsc::channel(64);
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(outbox));
    let md = req.metadata_mut();
    if !chat.is_empty() {
        md.insert("chat-id", chat.parse().unwrap());
    }
    if !user.is_empty() {
        md.insert("user-id", user.parse().unwrap());
    }
    if let Some(since) = since {
        md.insert("since-seq", since.parse().unwrap());
    }
    (tx, req)
}

/// `req` with `authorization: Bearer <token>`.
pub fn bearer<T>(token: &str, req: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(req);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub async fn new_chat(client: &mut Client, users: &[&str]) -> String {
    client
        .new_chat(pb::NewRequest {
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        })
        .await
        .unwrap()
        .into_inner()
        .chat_id
}

pub fn send_req(chat_id: &str, user: &str, client_id: &str, text: &str) -> pb::SendRequest {
    pb::SendRequest {
        client_id: client_id.into(),
        chat_id: chat_id.into(),
        user_id: user.into(),
        subject: String::new(),
        text: text.into(),
    }
}

pub async fn send(
    client: &mut Client,
    chat_id: &str,
    user: &str,
    client_id: &str,
    text: &str,
) -> pb::Message {
    client
        .send(send_req(chat_id, user, client_id, text))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap()
}

/// Every message of a chat, oldest first, paging forward from the start.
pub async fn all_messages(client: &mut Client, chat_id: &str) -> Vec<pb::Message> {
    let mut all = Vec::new();
    loop {
        let page = client
            .history(pb::HistoryRequest {
                chat_id: chat_id.into(),
                after_seq: Some(all.last().map_or(0, |m: &pb::Message| m.seq)),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        all.extend(page.messages);
        if !page.has_more {
            return all;
        }
    }
}

/// Asserts a status's code and that its message starts with the error id,
/// and that the ErrorInfo detail carries the same id.
pub fn assert_error(status: &tonic::Status, code: tonic::Code, id: &str) {
    use tonic_types::StatusExt;
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().starts_with(&format!("{id}: ")),
        "message {:?} should start with {id}",
        status.message()
    );
    let info = status
        .get_details_error_info()
        .expect("an ErrorInfo detail");
    assert_eq!(info.reason, id);
    assert_eq!(info.domain, "chat");
}

/// The real `chat` binary, started as a child process on `127.0.0.1:0` with
/// JSON logs; its addresses are read off its log.
pub struct Binary {
    pub child: tokio::process::Child,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub health_addr: Option<SocketAddr>,
    /// Every log line so far (stderr is drained so the child never blocks).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub async fn start(dir: &Path, extra: &[&str]) -> Binary {
        Binary::try_start(dir, extra)
            .await
            .unwrap_or_else(|log| panic!("chat did not start:\n{log}"))
    }

    /// Starts the binary; `Err` holds its log if it exits before serving.
    pub async fn try_start(dir: &Path, extra: &[&str]) -> Result<Binary, String> {
        Binary::try_start_on(dir, "127.0.0.1:0", extra).await
    }

    /// Starts the binary listening on `listen` (a restart on the same
    /// address, for clients that reconnect by themselves).
    pub async fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> Binary {
        Binary::try_start_on(dir, listen, extra)
            .await
            .unwrap_or_else(|log| panic!("chat did not start:\n{log}"))
    }

    pub async fn try_start_on(dir: &Path, listen: &str, extra: &[&str]) -> Result<Binary, String> {
        use tokio::io::AsyncBufReadExt;
        // Unless the test names its store itself.
        let store = match extra.contains(&"--store") {
            true => None,
            false => pg_url(dir).await.map(|url| vec!["--store".to_owned(), url]),
        };
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
            .args(["--listen", listen, "--log-format", "json", "--data-dir"])
            .arg(dir)
            .args(store.unwrap_or_default())
            .args(extra)
            .env("RUST_LOG", "info")
            // As `test_config`: a flag in `extra` still sets one.
            .env("CHAT_RATE_LIMIT_READ", "0")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let wants_metrics = extra.contains(&"--metrics-listen");
        let wants_health = extra.contains(&"--health-listen");
        let (mut addr, mut metrics_addr, mut health_addr) = (None, None, None);
        while addr.is_none()
            || (wants_metrics && metrics_addr.is_none())
            || (wants_health && health_addr.is_none())
        {
            let line = tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line())
                .await
                .expect("chat logs within 30 s")
                .unwrap();
            let Some(line) = line else {
                return Err(log.lock().unwrap().join("\n"));
            };
            log.lock().unwrap().push(line.clone());
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
            let found = v["fields"]["addr"].as_str().and_then(|a| a.parse().ok());
            match v["fields"]["message"].as_str() {
                Some("serving gRPC") => addr = found,
                Some("serving metrics at /metrics") => metrics_addr = found,
                Some("serving grpc.health.v1 in plaintext") => health_addr = found,
                _ => {}
            }
        }
        let sink = log.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Binary {
            child,
            addr: addr.unwrap(),
            metrics_addr,
            health_addr,
            log,
        })
    }

    pub async fn client(&self) -> Client {
        pb::chat_client::ChatClient::new(self.channel().await)
    }

    pub async fn channel(&self) -> Channel {
        channel_to(self.addr).await
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

/// Runs the binary with `args` (and `stdin`); its stdout, or its stderr as the error.
pub fn chat_cmd(args: &[&str], stdin: &[u8]) -> Result<String, String> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

/// Waits (at most 10 s) until `cond` holds.
pub async fn wait_until(cond: impl Fn() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}

/// A WebSocket client connection.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// GET `path` over HTTP/1.1 with a plain TCP socket; returns the whole response.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

//! Starts the real server in-process on `127.0.0.1:0` with a temp data dir,
//! and connects the generated client to it.
#![allow(dead_code)] // each test binary uses a different part of this

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

impl TestServer {
    /// A server with default settings on `dir`.
    pub async fn start(dir: &Path) -> TestServer {
        TestServer::start_with(Config::with_data_dir(dir)).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = chat::Server::open(config).unwrap();
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
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--data-dir",
            ])
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let wants_metrics = extra.contains(&"--metrics-listen");
        let (mut addr, mut metrics_addr) = (None, None);
        while addr.is_none() || (wants_metrics && metrics_addr.is_none()) {
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

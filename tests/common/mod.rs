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
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Graceful stop; returns once the store is flushed and closed.
    pub async fn stop(mut self) {
        self.stop.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
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

//! Hostile clients against the real binary: what one client can make the
//! server hold is bounded (stalled streams, stalled History, WebSocket
//! messages, vanished WebSocket clients), and everyone else keeps being
//! served. Memory is read from the server's /proc status. Runs on both
//! stores.

mod common;

use std::time::Duration;

use chat::pb;
use common::*;
use futures_util::StreamExt;
use tonic::Code;

/// The server's resident memory, in KiB.
fn rss_kib(server: &Binary) -> u64 {
    let pid = server.child.id().expect("running");
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// One value of the server's metrics.
async fn metric(server: &Binary, name: &str) -> f64 {
    let text = http_get(server.metrics_addr.unwrap(), "/metrics").await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// A gRPC call whose response is never read: a raw HTTP/2 connection with
/// a small flow-control window that is never replenished. Keep what it
/// returns to keep the call stalled.
async fn stalled_call(
    addr: std::net::SocketAddr,
    path: &str,
    request: impl prost::Message,
) -> impl Drop {
    use http_body_util::Full;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let body = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(hyper::body::Bytes::from(framed)))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    /// The response (held, never read) and the connection's task.
    struct Stalled {
        _response: hyper::Response<hyper::body::Incoming>,
        conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    }
    impl Drop for Stalled {
        fn drop(&mut self) {
            self.conn.abort();
        }
    }
    Stalled {
        _response: response,
        conn,
    }
}

/// A chat of `n` messages of `size` bytes each.
async fn big_chat(c: &mut Client, n: usize, size: usize) -> String {
    let chat = new_chat(c, &[]).await;
    let text = "x".repeat(size);
    let sends = (0..n).map(|i| {
        let mut c = c.clone();
        let req = send_req(&chat, "filler", &format!("f{i}"), &text);
        async move { c.send(req).await.map(|_| ()) }
    });
    let results = futures_util::stream::iter(sends)
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    assert!(results.iter().all(Result::is_ok));
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_catch_up_streams_and_history_stay_within_the_memory_budget() {
    let dir = tempfile::tempdir().unwrap();
    let server = Binary::start(
        dir.path(),
        &[
            "--memory-budget-mb",
            "32",
            "--budget-wait",
            "2",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let mut c = server.client().await;
    // 20 MB of history: each stream's batch is 1 MiB (16 of these).
    let chat = big_chat(&mut c, 320, 63 * 1024).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = rss_kib(&server);

    // 60 streams from the start on one connection whose client never reads
    // (tonic grants more flow-control window only as the app reads), and
    // gRPC History calls whose responses are never read.
    let stalled = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .initial_stream_window_size(64 * 1024)
        // Room on the connection for every stream's window: each stalls on its own.
        .initial_connection_window_size(16 << 20)
        .connect()
        .await
        .unwrap();
    let mut streams = Vec::new();
    for _ in 0..60 {
        let (tx, req) = connect_request(&chat, "reader", Some("0"));
        let mut s = pb::chat_client::ChatClient::new(stalled.clone());
        streams.push((tx, s.connect(req).await.unwrap().into_inner()));
    }
    let mut pages = Vec::new();
    for _ in 0..8 {
        let history = pb::HistoryRequest {
            chat_id: chat.clone(),
            ..Default::default()
        };
        pages.push(stalled_call(server.addr, "/chat.Chat/History", history).await);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = metric(&server, "chat_memory_budget_used_bytes").await;
    assert!(used <= (32 << 20) as f64, "the budget holds: {used}");

    // Everyone else is served meanwhile: Send, a small History page, a
    // stream of new messages.
    let mut other = server.client().await;
    let (_tx, req) = connect_request(&chat, "watcher", None);
    let mut live = other.connect(req).await.unwrap().into_inner();
    send(&mut other, &chat, "ann", "live", "still served").await;
    let got = tokio::time::timeout(Duration::from_secs(10), live.message())
        .await
        .expect("a live stream still gets new messages")
        .unwrap()
        .unwrap();
    assert_eq!(got.text, "still served");
    let page = other
        .history(pb::HistoryRequest {
            chat_id: chat.clone(),
            limit: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.messages.len(), 3);
    let grown = rss_kib(&server).saturating_sub(idle);
    // 60 × 4 MiB batches and 8 pages of 20 MB before the budget existed.
    assert!(
        grown < 96 * 1024,
        "server RSS grew by {grown} KiB with a 32 MiB budget"
    );

    // The streams that found no room were refused, saying why.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut busy = 0;
    for (_, s) in &mut streams {
        let first = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("every stream answers once read");
        if let Err(status) = first {
            assert_error(&status, Code::ResourceExhausted, "chat.Busy");
            busy += 1;
        }
    }
    assert!(busy > 0, "60 MiB of batches cannot all fit in 24 MiB");
    assert!(metric(&server, "chat_memory_budget_refusals_total").await >= busy as f64);
    drop((streams, pages));
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Room again; a default History page is cut by bytes, keeping the newest.
    let page = other
        .history(pb::HistoryRequest {
            chat_id: chat.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        page.has_more && page.messages.len() < 20,
        "{}",
        page.messages.len()
    );
    assert_eq!(page.messages.last().unwrap().seq, 321);

    let used = metric(&server, "chat_memory_budget_used_bytes").await;
    assert!(
        used < (2 << 20) as f64,
        "given back when the clients go: {used}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_are_cut_by_bytes_on_each_wire_keeping_the_end_next_to_the_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.history_page_bytes = 256 * 1024;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = big_chat(&mut c, 40, 30 * 1024).await;
    let history = |before: Option<u64>, after: Option<u64>| pb::HistoryRequest {
        chat_id: chat.clone(),
        before_seq: before,
        after_seq: after,
        ..Default::default()
    };
    let seqs = |page: &pb::HistoryResponse| page.messages.iter().map(|m| m.seq).collect::<Vec<_>>();
    let newest = c.history(history(None, None)).await.unwrap().into_inner();
    assert!(newest.has_more);
    assert_eq!(
        seqs(&newest),
        (33..=40).collect::<Vec<_>>(),
        "8 × 30 KiB fit in 256 KiB"
    );
    let older = c
        .history(history(Some(33), None))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&older), (25..=32).collect::<Vec<_>>());
    let forward = c
        .history(history(None, Some(0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&forward), (1..=8).collect::<Vec<_>>());
    assert!(forward.has_more);
    let last = c
        .history(history(None, Some(36)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(seqs(&last), [37, 38, 39, 40]);
    assert!(!last.has_more);

    // JSON: text of control characters is six bytes a character when
    // escaped; the page is cut by its JSON size, and a full-size message so
    // spelled is accepted.
    let escaped = "\u{1}".repeat(60 * 1024);
    let body =
        serde_json::json!({"chat_id": chat, "user_id": "ann", "client_id": "e1", "text": escaped});
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/Send", server.addr))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/History", server.addr))
        .header("content-type", "application/json")
        .body(serde_json::json!({"chat_id": chat}).to_string())
        .send()
        .await
        .unwrap();
    let text = resp.text().await.unwrap();
    assert!(text.len() < 600 * 1024, "{} bytes", text.len());
    let page: serde_json::Value = serde_json::from_str(&text).unwrap();
    let messages = page["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "one 360 KiB message is the whole page");
    assert_eq!(messages[0]["seq"], "41");
    assert_eq!(page["has_more"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_messages_are_bounded_and_vanished_clients_are_closed() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::{protocol::WebSocketConfig, Message as Ws};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.keepalive_interval = 1;
    config.keepalive_timeout = 1;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let url = format!(
        "ws://{}/chat/Chat/Connect?chat_id={chat}&user_id=ann",
        server.addr
    );
    // A message far above the longest valid one ends the socket; nothing is stored.
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let huge = serde_json::json!({"client_id": "h", "text": "x".repeat(4 << 20)}).to_string();
    let _ = ws.send(Ws::Text(huge.into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Ws::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "an oversized message ends the socket");
    assert!(all_messages(&mut c, &chat).await.is_empty());

    // A client that stops answering pings is closed after interval + timeout.
    let open = || server.chats.metrics().streams_open.get();
    let before = open();
    let mut quiet_config = WebSocketConfig::default();
    quiet_config.max_message_size = None;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (quiet, _) = tokio_tungstenite::client_async_with_config(&url, tcp, Some(quiet_config))
        .await
        .unwrap();
    wait_until(|| open() == before + 1).await;
    // Never polled again: pings go unanswered.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(open(), before, "the vanished client's stream was closed");
    drop(quiet);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_window_is_freed_when_its_last_stream_goes() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let used = || server.chats.metrics().budget_used.get();
    let mut streams = Vec::new();
    for i in 0..20 {
        let chat = new_chat(&mut c, &[]).await;
        let (tx, req) = connect_request(&chat, "ann", None);
        let rx = c.connect(req).await.unwrap().into_inner();
        for j in 0..4 {
            send(
                &mut c,
                &chat,
                "ann",
                &format!("{i}-{j}"),
                &"y".repeat(60 * 1024),
            )
            .await;
        }
        streams.push((tx, rx));
    }
    assert!(
        used() >= 20 * 4 * 60 * 1024,
        "the windows hold the messages"
    );
    for (_, rx) in &mut streams {
        for _ in 0..4 {
            rx.message().await.unwrap().unwrap();
        }
    }
    drop(streams);
    wait_until(|| used() == 0).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_cannot_get_room_is_refused_with_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.memory_budget_mb = 1;
    config.budget_wait = 1;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = big_chat(&mut c, 12, 60 * 1024).await;
    // A History lease is a whole page (1 MiB): one stalled page fills the budget.
    let history = pb::HistoryRequest {
        chat_id: chat.clone(),
        ..Default::default()
    };
    let call = stalled_call(server.addr, "/chat.Chat/History", history).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let held = server.chats.metrics().budget_used.get();
    assert!(
        held > 700 * 1024,
        "the stalled page holds its lease: {held}"
    );
    let err = c
        .history(pb::HistoryRequest {
            chat_id: chat.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "chat.Busy");
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/History", server.addr))
        .header("content-type", "application/json")
        .body(serde_json::json!({"chat_id": chat}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    drop(call);
    // Room again once the stalled call is gone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.history(pb::HistoryRequest {
        chat_id: chat,
        ..Default::default()
    })
    .await
    .unwrap();
    server.stop().await;
}

/// Whether the server closes `s` within `within` (reads until EOF or an error).
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_quiet_streams_stay() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.handshake_timeout = 1;
    config.idle_timeout = 2;
    let server = TestServer::start_with(config).await;
    let connect = || tokio::net::TcpStream::connect(server.addr);

    // Nothing at all, one byte of a preface, headers a byte at a time.
    let mut silent = connect().await.unwrap();
    let mut one_byte = connect().await.unwrap();
    one_byte.write_all(b"P").await.unwrap();
    let mut slowloris = connect().await.unwrap();
    slowloris
        .write_all(b"POST /chat/Chat/New HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let drip = tokio::spawn(async move {
        for _ in 0..20 {
            if slowloris.write_all(b"X").await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        closed_within(&mut slowloris, Duration::from_millis(10)).await
    });
    for s in [&mut silent, &mut one_byte] {
        assert!(
            closed_within(s, Duration::from_secs(5)).await,
            "closed after the handshake timeout"
        );
    }
    assert!(drip.await.unwrap(), "a dripping request is cut off");

    // A keep-alive connection whose last call is over is closed when idle...
    let mut kept = connect().await.unwrap();
    let body = "{}";
    kept.write_all(
        format!(
            "POST /chat/Chat/New HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        closed_within(&mut kept, Duration::from_secs(6)).await,
        "an idle HTTP/1 connection is closed (waiting for the next request's headers)"
    );
    // ...and so is an HTTP/2 one, after --idle-timeout.
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let conn = tokio::spawn(conn);
    let resp = h2
        .send_request(
            hyper::Request::get(format!("http://{}/nowhere", server.addr))
                .body(http_body_util::Empty::<hyper::body::Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is closed");
    // ...but a quiet Connect stream is a call: its connection stays.
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let (_tx, req) = connect_request(&chat, "ann", None);
    let mut quiet = c.connect(req).await.unwrap().into_inner();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut other = server.client().await;
    send(&mut other, &chat, "bob", "b1", "still there?").await;
    let got = tokio::time::timeout(Duration::from_secs(5), quiet.message())
        .await
        .expect("the quiet stream is still open")
        .unwrap()
        .unwrap();
    assert_eq!(got.text, "still there?");
    let m = server.chats.metrics();
    assert!(m.connections_timed_out_handshake.get() >= 2);
    assert!(m.connections_timed_out_idle.get() >= 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_are_closed_at_once_and_served_after_others_leave() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.max_connections = 10;
    let server = TestServer::start_with(config).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    let open = || server.chats.metrics().connections_open.get();
    wait_until(|| open() == 10).await;
    let mut extra = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(
        closed_within(&mut extra, Duration::from_secs(2)).await,
        "the 11th connection is closed at once"
    );
    assert!(server.chats.metrics().connections_refused.get() >= 1);
    held.truncate(5);
    wait_until(|| open() == 5).await;
    let mut c = server.client().await;
    new_chat(&mut c, &[]).await;
    drop(held);
    server.stop().await;
}

/// `req` as `user`, for a server with `--auth header --auth-header x-user-id`.
fn as_user<T>(user: &str, req: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(req);
    req.metadata_mut()
        .insert("x-user-id", user.parse().unwrap());
    req
}

/// How long a refusal says to wait (its `google.rpc.RetryInfo`).
fn retry_delay(status: &tonic::Status) -> Duration {
    use tonic_types::StatusExt;
    status
        .get_details_retry_info()
        .and_then(|r| r.retry_delay)
        .expect("a RetryInfo detail with a delay")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_over_their_rate_limit_are_refused_with_the_wait_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.auth = chat::config::AuthMode::Header;
    config.auth_header = Some("x-user-id".into());
    config.rate_limit_send = 5.0;
    config.rate_limit_new = 3.0;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let started = std::time::Instant::now();
    let chat = c
        .new_chat(as_user(
            "ann",
            pb::NewRequest {
                user_ids: vec!["ann".into(), "bob".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .chat_id;

    // Sends: a burst of twice the rate, then refusals that say how long to wait.
    let mut admitted = 0u32;
    let refused = loop {
        let req = send_req(&chat, "ann", &format!("m{admitted}"), "hi");
        match c.send(as_user("ann", req)).await {
            Ok(_) => admitted += 1,
            Err(status) => break status,
        }
        assert!(admitted < 1000, "never refused");
    };
    let elapsed = started.elapsed().as_secs_f64();
    assert_error(&refused, Code::ResourceExhausted, "chat.RateLimited");
    assert!(
        admitted >= 10 && f64::from(admitted) <= 10.0 + 5.0 * elapsed + 1.0,
        "{admitted} sends admitted in {elapsed:.2} s at 5/s with a burst of 10"
    );
    let wait = retry_delay(&refused);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_millis(200),
        "{wait:?}"
    );
    // The refused message was not stored; another caller is not limited.
    let stored = c
        .history(as_user(
            "ann",
            pb::HistoryRequest {
                chat_id: chat.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(
        stored.len(),
        admitted as usize,
        "only the admitted sends are stored"
    );
    c.send(as_user("bob", send_req(&chat, "bob", "b1", "hello")))
        .await
        .unwrap();

    // Over HTTP: 429 with Retry-After in whole seconds and the error id.
    let http = reqwest::Client::new();
    let resp = loop {
        let resp = http
            .post(format!("http://{}/chat/Chat/Send", server.addr))
            .header("content-type", "application/json")
            .header("x-user-id", "ann")
            .body(
                serde_json::json!({"chat_id": chat, "user_id": "ann", "client_id": "h", "text": "x"})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            break resp;
        }
    };
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: serde_json::Value = serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
    assert_eq!(body["id"], "chat.RateLimited");

    // Messages sent on a Connect stream count too: the stream ends with the
    // refusal, on gRPC and on a WebSocket (close 1013, try again later).
    let (tx, mut req) = connect_request(&chat, "ann", None);
    req.metadata_mut()
        .insert("x-user-id", "ann".parse().unwrap());
    let mut stream = c.connect(req).await.unwrap().into_inner();
    for i in 0..50 {
        let msg = pb::Message {
            client_id: format!("s{i}"),
            text: "on a stream".into(),
            ..Default::default()
        };
        if tx.send(msg).await.is_err() {
            break;
        }
    }
    let ended = loop {
        match stream.next().await {
            Some(Ok(_)) => {}
            Some(Err(status)) => break status,
            None => panic!("the stream ended without the refusal"),
        }
    };
    assert_error(&ended, Code::ResourceExhausted, "chat.RateLimited");
    {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Message as Ws};
        let url = format!(
            "ws://{}/chat/Chat/Connect?chat_id={chat}&user_id=ann",
            server.addr
        );
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("x-user-id", "ann".parse().unwrap());
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        for i in 0..50 {
            let frame = serde_json::json!({"client_id": format!("w{i}"), "text": "ws"});
            if ws.send(Ws::Text(frame.to_string().into())).await.is_err() {
                break;
            }
        }
        let close = loop {
            match ws.next().await {
                Some(Ok(Ws::Close(frame))) => break frame.expect("a close frame"),
                Some(Ok(_)) => {}
                other => panic!("the socket ended without a close frame: {other:?}"),
            }
        };
        assert_eq!(u16::from(close.code), 1013);
        let reason: serde_json::Value = serde_json::from_str(close.reason.as_str()).unwrap();
        assert_eq!(reason["id"], "chat.RateLimited", "{close:?}");
    }

    // After the wait it says, the caller is served again.
    let refused = c
        .send(as_user("ann", send_req(&chat, "ann", "late", "x")))
        .await
        .unwrap_err();
    tokio::time::sleep(retry_delay(&refused)).await;
    c.send(as_user("ann", send_req(&chat, "ann", "late", "x")))
        .await
        .unwrap();

    // New: 3 a minute, a burst of 6 (the first chat above was one of them).
    let mut created = 1u32;
    let refused = loop {
        let req = pb::NewRequest {
            user_ids: vec!["ann".into(), format!("friend{created}")],
        };
        match c.new_chat(as_user("ann", req)).await {
            Ok(_) => created += 1,
            Err(status) => break status,
        }
        assert!(created < 1000, "never refused");
    };
    let elapsed = started.elapsed().as_secs_f64();
    assert_error(&refused, Code::ResourceExhausted, "chat.RateLimited");
    assert!(
        created >= 6 && f64::from(created) <= 6.0 + elapsed / 20.0 + 1.0,
        "{created} chats in {elapsed:.1} s at 3/min with a burst of 6"
    );
    let wait = retry_delay(&refused);
    assert!(
        wait > Duration::ZERO && wait <= Duration::from_secs(20),
        "{wait:?}"
    );
    let resp = http
        .post(format!("http://{}/chat/Chat/New", server.addr))
        .header("content-type", "application/json")
        .header("x-user-id", "ann")
        .body(r#"{"user_ids": ["ann", "zed"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&secs), "Retry-After: {secs}");
    // bob has his own allowance.
    c.new_chat(as_user(
        "bob",
        pb::NewRequest {
            user_ids: vec!["bob".into(), "zed".into()],
        },
    ))
    .await
    .unwrap();
    let metrics = server.chats.metrics();
    assert!(metrics.rate_limited_send.get() >= 4);
    assert!(metrics.rate_limited_new.get() >= 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_identity_callers_are_rate_limited_by_their_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.rate_limit_send = 2.0;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let send_from = |local: &str| {
        let client = reqwest::Client::builder()
            .local_address(local.parse::<std::net::IpAddr>().unwrap())
            .build()
            .unwrap();
        let url = format!("http://{}/chat/Chat/Send", server.addr);
        let body = serde_json::json!({"chat_id": chat, "user_id": "ann", "text": "x"}).to_string();
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let mut admitted = 0;
    while send_from("127.0.0.1").await == 200 {
        admitted += 1;
        assert!(admitted < 1000, "never refused");
    }
    assert!(admitted >= 4, "a burst of twice the rate: {admitted}");
    assert_eq!(send_from("127.0.0.1").await, 429);
    // Another address (all of 127/8 is loopback) has its own allowance.
    assert_eq!(send_from("127.0.0.2").await, 200);
    server.stop().await;
}

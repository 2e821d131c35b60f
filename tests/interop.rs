//! Clients in other languages against the real server: Python grpcio, with
//! stubs generated from `proto/chat.proto` at test time, and the Node.js
//! client of `examples/node` (@grpc/grpc-js, generated from the proto when
//! it starts). Fails (never skips) when python3, grpcio, grpcio-tools, node
//! or the example's node_modules are missing: `scripts/test` installs them.

mod common;

use common::TestServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_drives_every_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/interop.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(server.addr.to_string())
        .output()
        .await
        .expect("python3 must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "python interop failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_client_sends_retries_pages_and_resumes_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/node");
    assert!(
        std::path::Path::new(example)
            .join("node_modules/@grpc/grpc-js")
            .is_dir(),
        "run `npm install --no-package-lock` in examples/node (scripts/test does)"
    );
    let run = tokio::process::Command::new("node")
        .arg("client.js")
        .arg(server.addr.to_string())
        .current_dir(example)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), run)
        .await
        .expect("the Node client finishes within a minute")
        .expect("node must be installed (scripts/test needs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Node client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // What it saw, from its own report: seq 1..5 paged, 1..6 streamed, 5..7 resumed.
    let seen: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(seen["history_seqs"], serde_json::json!([1, 2, 3, 4, 5]));
    assert_eq!(
        seen["streamed"],
        serde_json::json!(["1", "2", "3", "4", "5", "6"])
    );
    assert_eq!(seen["resumed"], serde_json::json!(["5", "6", "7"]));
    server.stop().await;
}

/// A client generated from the original contract sees a chat with edits
/// and deletions exactly as it always saw chats: messages only, as they
/// are now, no tombstone, no event on its stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_client_sees_only_messages_as_they_are_now() {
    use chat::pb;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = common::new_chat(&mut c, &["ann", "bob"]).await;
    for (i, text) in ["one", "twoo", "three"].iter().enumerate() {
        common::send(&mut c, &chat, "bob", &format!("b{i}"), text).await;
    }
    c.edit(pb::EditRequest {
        client_id: "e1".into(),
        chat_id: chat.clone(),
        user_id: "bob".into(),
        seq: 2,
        text: "two".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    c.delete(pb::DeleteRequest {
        client_id: "d1".into(),
        chat_id: chat.clone(),
        user_id: "bob".into(),
        seq: 3,
    })
    .await
    .unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/old_client.py");
    let out = tokio::process::Command::new("python3")
        .arg(script)
        .arg(server.addr.to_string())
        .arg(&chat)
        .arg(r#"["one", "two"]"#)
        .output()
        .await
        .expect("python3 must be installed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "the old client saw something new:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

//! A non-Rust client: Python grpcio, with stubs generated from
//! `proto/chat.proto` at test time, against the real server. Fails (never
//! skips) when python3, grpcio or grpcio-tools is missing: `.ci/run` installs them.

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

//! The embedded store on a full disk (a small tmpfs mounted for the test;
//! CI runs as root): writes are UNAVAILABLE `chat.Store`, readiness goes
//! NOT_SERVING while liveness stays SERVING, nothing acknowledged is lost,
//! and when space returns the service writes again by itself.

mod common;

use std::{path::PathBuf, time::Duration};

use common::*;
use tonic::Code;
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

/// A tmpfs of `mib` MiB, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf, mib: u32) -> Tmpfs {
        assert!(
            unsafe_is_root(),
            "mounting a tmpfs needs root (CI runs as root)"
        );
        std::fs::create_dir_all(&at).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&at)
            .status()
            .unwrap();
        assert!(status.success(), "mount tmpfs");
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn unsafe_is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

async fn health(channel: tonic::transport::Channel, service: &str) -> i32 {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map_or(-1, |r| r.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_unavailable_and_not_ready_and_writes_resume_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(dir.path().join("mnt"), 64);
    let data = mnt.0.join("data");
    let filler = mnt.0.join("filler");
    // Most of the disk taken by something else.
    std::fs::write(&filler, vec![7u8; 48 << 20]).unwrap();
    let server = Binary::start(dir.path(), &["--store", data.to_str().unwrap()]).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let text = "z".repeat(60 * 1024);
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..1000 {
        match c
            .send(send_req(&chat, "ann", &format!("c{i}"), &text))
            .await
        {
            Ok(r) => acked.push(r.into_inner().message.unwrap().seq),
            Err(status) => {
                refused = Some((i, status));
                break;
            }
        }
    }
    let (failed_at, status) = refused.expect("the disk fills up");
    assert_error(&status, Code::Unavailable, "chat.Store");
    assert!(!acked.is_empty());
    // Not ready (a load balancer sends calls elsewhere), but alive (a
    // liveness probe must not kill a process that will recover).
    let channel = server.channel().await;
    let mut ready = 1;
    for _ in 0..50 {
        ready = health(channel.clone(), "chat.Chat").await;
        if ready == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        ready,
        2,
        "chat.Chat is NOT_SERVING while the disk is full:\n{}",
        server.log_text()
    );
    assert_eq!(
        health(channel.clone(), "").await,
        1,
        "liveness stays SERVING"
    );
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/Send", server.addr))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"chat_id": chat, "user_id": "ann", "client_id": "h1", "text": "x"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    // Space returns. sled does not take writes again in place after a
    // failed one, so the service says why and exits non-zero (for the
    // orchestrator to restart it) rather than stay "SERVING but every write
    // fails"; should sled ever recover in place, SERVING again is as good.
    std::fs::remove_file(&filler).unwrap();
    let mut server = server;
    let mut recovered = false;
    let mut exit = None;
    for _ in 0..600 {
        if let Ok(Some(status)) = server.child.try_wait() {
            exit = Some(status);
            break;
        }
        if health(channel.clone(), "chat.Chat").await == 1 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !recovered {
        let status = exit.unwrap_or_else(|| {
            panic!(
                "SERVING again, or an exit, once the disk has room:\n{}",
                server.log_text()
            )
        });
        assert!(!status.success(), "a non-zero exit");
        wait_until(|| {
            server
                .log_text()
                .contains("still refuses writes although its disk has room")
        })
        .await;
        drop(server);
        server = Binary::start(dir.path(), &["--store", data.to_str().unwrap()]).await;
        c = server.client().await;
    }
    // The refused send, retried, is stored once; everything acknowledged is there.
    let retried = send(&mut c, &chat, "ann", &format!("c{failed_at}"), &text).await;
    let again = send(&mut c, &chat, "ann", &format!("c{failed_at}"), &text).await;
    assert_eq!(retried.seq, again.seq, "stored once");
    let all = all_messages(&mut c, &chat).await;
    let stored: Vec<u64> = all.iter().map(|m| m.seq).collect();
    for seq in &acked {
        assert!(stored.contains(seq), "acknowledged seq {seq} is there");
    }
    let mut ids: Vec<&str> = all.iter().map(|m| m.client_id.as_str()).collect();
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "no client_id stored twice");
    assert_eq!(health(server.channel().await, "chat.Chat").await, 1);
}

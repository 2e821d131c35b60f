//! PostgreSQL itself failing under the replicas: stopped with
//! `pg_ctl -m immediate`, or killed with SIGKILL, under load and started
//! again, and a database that never comes up. These tests stop the shared test cluster,
//! so they live in their own test binary (cargo runs binaries one at a time)
//! and run one after another.

mod common;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use chat::pb;
use common::*;
use tokio::sync::Mutex as AsyncMutex;
use tonic::Code;
use tonic_health::pb::{
    health_check_response::ServingStatus, health_client::HealthClient, HealthCheckRequest,
};

/// One test at a time: they stop the cluster.
static CLUSTER: AsyncMutex<()> = AsyncMutex::const_new(());

/// Runs the cluster's control script (`CHAT_TEST_PG_CTL stop|kill|start`).
fn pg_ctl(action: &str) {
    let ctl = std::env::var("CHAT_TEST_PG_CTL")
        .expect("CHAT_TEST_PG_CTL must name the test cluster's control script (scripts/test)");
    let status = std::process::Command::new(ctl)
        .arg(action)
        .status()
        .unwrap();
    assert!(status.success(), "pg_ctl {action}");
}

async fn health(replica: &Binary, service: &str) -> ServingStatus {
    let mut h = HealthClient::new(replica.channel().await);
    let status = h
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    ServingStatus::try_from(status).unwrap()
}

async fn wait_for_health(replica: &Binary, service: &str, want: ServingStatus) {
    for _ in 0..300 {
        if health(replica, service).await == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{service:?} never became {want:?}\n{}", replica.log_text());
}

/// Sends messages until `stop`, each retried with its client_id until it is
/// acknowledged (as a client should on UNAVAILABLE); records the answers.
async fn writer(
    mut c: Client,
    chat: String,
    name: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<HashMap<String, pb::Message>>>,
    refusals: Arc<Mutex<Vec<tonic::Status>>>,
) -> usize {
    let mut sent = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let id = format!("{name}-{sent}");
        sent += 1;
        loop {
            match c.send(send_req(&chat, "ann", &id, &id)).await {
                Ok(r) => {
                    acked
                        .lock()
                        .unwrap()
                        .insert(id, r.into_inner().message.unwrap());
                    break;
                }
                Err(status) => {
                    refusals.lock().unwrap().push(status);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restarts_under_load_are_survived_without_losing_an_acknowledged_message() {
    let _one = CLUSTER.lock().await;
    let cycles: usize = std::env::var("CHAT_PG_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let dir = tempfile::tempdir().unwrap();
    let url = pg_database(dir.path()).await;
    let args = ["--store", &url, "--pg-statement-timeout", "2"];
    let a = Binary::start(dir.path(), &args).await;
    let b = Binary::start(dir.path(), &args).await;
    let mut ca = a.client().await;
    let chat = new_chat(&mut ca, &[]).await;

    let acked = Arc::new(Mutex::new(HashMap::new()));
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for (n, replica) in [&a, &b, &a, &b].into_iter().enumerate() {
        writers.push(tokio::spawn(writer(
            replica.client().await,
            chat.clone(),
            format!("w{n}"),
            stop.clone(),
            acked.clone(),
            refusals.clone(),
        )));
    }
    for cycle in 0..cycles {
        let before = acked.lock().unwrap().len();
        for _ in 0..300 {
            if acked.lock().unwrap().len() >= before + 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = acked.lock().unwrap().len();
        assert!(
            now >= before + 100,
            "cycle {cycle}: writers stalled at {now} acknowledged\n{}\n{:?}",
            a.log_text(),
            refusals.lock().unwrap().last()
        );
        // A fast shutdown that skips the checkpoint, then kill -9 of every
        // database process: both recover from the WAL at the next start.
        pg_ctl(if cycle % 2 == 0 { "stop" } else { "kill" });
        // Readiness goes, liveness stays: the process is fine.
        wait_for_health(&a, "chat.Chat", ServingStatus::NotServing).await;
        assert_eq!(health(&b, "").await, ServingStatus::Serving);
        // A call while it is down: UNAVAILABLE with a chat error id.
        let err = ca
            .history(pb::HistoryRequest {
                chat_id: chat.clone(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        assert!(err.message().starts_with("chat."), "{err:?}");

        // A replica started while the database is down waits for it.
        let late = if cycle == 0 {
            let dir = dir.path().to_owned();
            let url = url.clone();
            Some(tokio::spawn(async move {
                Binary::start(&dir, &["--store", &url, "--pg-connect-timeout", "60"]).await
            }))
        } else {
            None
        };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        pg_ctl("start");
        wait_for_health(&a, "chat.Chat", ServingStatus::Serving).await;
        wait_for_health(&b, "chat.Chat", ServingStatus::Serving).await;
        if let Some(late) = late {
            let c = late.await.unwrap();
            assert!(
                c.log_text().contains("database unreachable; retrying"),
                "{}",
                c.log_text()
            );
            let mut cc = c.client().await;
            send(
                &mut cc,
                &chat,
                "ann",
                "from-late",
                "the late replica serves",
            )
            .await;
        }
    }
    let before = acked.lock().unwrap().len();
    wait_until(|| acked.lock().unwrap().len() >= before + 100).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut attempted = 0;
    for w in writers {
        attempted += w.await.unwrap();
    }

    let stored = all_messages(&mut ca, &chat).await;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(
        seqs,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "gap-free"
    );
    let ids: HashSet<&str> = stored.iter().map(|m| m.client_id.as_str()).collect();
    assert_eq!(ids.len(), stored.len(), "no client_id stored twice");
    let acked = acked.lock().unwrap().clone();
    for (id, m) in acked.iter() {
        let s = stored.iter().find(|s| s.client_id == *id);
        assert_eq!(s, Some(m), "acknowledged message lost or changed");
    }
    assert_eq!(
        acked.len(),
        attempted,
        "every send was acknowledged in the end"
    );
    let refusals = refusals.lock().unwrap().clone();
    assert!(!refusals.is_empty(), "the outage was seen by the writers");
    for r in refusals.iter() {
        assert_eq!(
            r.code(),
            Code::Unavailable,
            "only retryable refusals: {r:?}"
        );
    }
    // Streams on both replicas replay exactly what History shows.
    for replica in [&a, &b] {
        let mut c = replica.client().await;
        let (_tx, req) = connect_request(&chat, "reader", Some("0"));
        let mut rx = c.connect(req).await.unwrap().into_inner();
        let mut got = Vec::new();
        while got.len() < stored.len() {
            got.push(
                tokio::time::timeout(Duration::from_secs(10), rx.message())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(got, stored);
    }
    println!(
        "{cycles} database restarts: {} messages acknowledged, {} refusals (all UNAVAILABLE), 0 lost",
        acked.len(),
        refusals.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_gives_up_with_a_clear_error_when_the_database_stays_unreachable() {
    let _one = CLUSTER.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Port 9 (discard) on loopback: nothing listens there.
    let log = Binary::try_start(
        dir.path(),
        &[
            "--store",
            "postgres://ann:s3cret@127.0.0.1:9/chat?sslmode=disable",
            "--pg-connect-timeout",
            "2",
        ],
    )
    .await
    .err()
    .expect("no database: the server must not start");
    assert!(log.contains("database unreachable; retrying"), "{log}");
    assert!(log.contains("--pg-connect-timeout"), "{log}");
    assert!(
        !log.contains("s3cret"),
        "the password is never logged: {log}"
    );
}

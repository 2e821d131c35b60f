//! Moving a deployment: `chat export` from the embedded store, `chat
//! import` into PostgreSQL, keeping every id, seq, member set and dedupe
//! key; and `chat migrate [--check]`.

mod common;

use std::{io::Write, process::Stdio};

use common::*;

/// Runs the binary with `args` (and `stdin`); its stdout, or its stderr as the error.
fn chat_cmd(args: &[&str], stdin: &[u8]) -> Result<String, String> {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    match out.status.success() {
        true => Ok(String::from_utf8(out.stdout).unwrap()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_moves_a_sled_deployment_to_postgres_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let sled_dir = dir.path().join("sled");
    let sled_dir_s = sled_dir.to_str().unwrap();
    let bin = Binary::start(&sled_dir, &["--store", "sled"]).await;
    let mut c = bin.client().await;
    let pair = new_chat(&mut c, &["ann", "bob"]).await;
    let open = new_chat(&mut c, &[]).await;
    let mut sent = Vec::new();
    for i in 0..1500 {
        let chat = if i % 3 == 0 { &open } else { &pair };
        let user = if i % 2 == 0 { "ann" } else { "bob" };
        sent.push(
            send(
                &mut c,
                chat,
                user,
                &format!("c{i}"),
                &format!("message {i}"),
            )
            .await,
        );
    }
    bin.signal("-TERM");
    let mut bin = bin;
    bin.child.wait().await.unwrap();

    let exported = chat_cmd(&["export", "--store", sled_dir_s], b"").unwrap();
    assert_eq!(exported.lines().count(), 2 + 1500);
    let pg = pg_database(dir.path()).await;
    chat_cmd(&["import", "--store", &pg], exported.as_bytes()).unwrap();
    // Twice: nothing changes the second time.
    chat_cmd(&["import", "--store", &pg], exported.as_bytes()).unwrap();
    let from_pg = chat_cmd(&["export", "--store", &pg], b"").unwrap();
    assert_eq!(
        from_pg, exported,
        "the same chats and messages, byte for byte"
    );

    // A replica on the database carries on where sled stopped.
    let replica = Binary::start(dir.path(), &["--store", &pg]).await;
    let mut c = replica.client().await;
    assert_eq!(
        new_chat(&mut c, &["bob", "ann"]).await,
        pair,
        "same member set, same chat"
    );
    let again = send(&mut c, &pair, "bob", "c1", "message 1").await;
    assert_eq!(
        again, sent[1],
        "a retry of an old send returns the original"
    );
    let next = send(&mut c, &pair, "ann", "new", "after the move").await;
    assert_eq!(next.seq, 1001, "seq continues with no gap");
    let err = c.send(send_req(&pair, "eve", "x", "x")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "membership kept");
    assert_eq!(all_messages(&mut c, &open).await.len(), 500);

    // A line that is not an export: a clear error with its line number.
    let err = chat_cmd(&["import", "--store", &pg], b"{\"chat\": 1}\n").unwrap_err();
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_check_changes_nothing_and_migrate_applies_the_schema() {
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_database(dir.path()).await;
    let check = chat_cmd(&["migrate", "--check", "--store", &pg], b"").unwrap();
    assert!(check.contains("schema version: 0"), "{check}");
    assert!(check.contains("1: chats, member sets, messages"), "{check}");
    let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(tables(&client).await, 0, "--check changed nothing");
    let applied = chat_cmd(&["migrate", "--store", &pg], b"").unwrap();
    assert!(applied.contains("schema version: 1"), "{applied}");
    assert!(applied.contains("pending migrations: none"), "{applied}");
    assert_eq!(
        tables(&client).await,
        4,
        "chats, member_sets, messages, chat_schema"
    );
    let check = chat_cmd(&["migrate", "--check", "--store", &pg], b"").unwrap();
    assert!(
        check.contains("schema version: 1") && check.contains("none"),
        "{check}"
    );
    // Replicas starting at once take turns on the migration lock.
    let dir2 = tempfile::tempdir().unwrap();
    let pg2 = pg_database(dir2.path()).await;
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let (d, pg2) = (dir2.path().to_owned(), pg2.clone());
            tokio::spawn(async move { Binary::start(&d, &["--store", &pg2]).await })
        })
        .collect();
    for s in starts {
        s.await.unwrap();
    }
    let out = chat_cmd(&["migrate", "--check", "--store", &pg2], b"").unwrap();
    assert!(out.contains("schema version: 1"), "{out}");
}

/// Tables in the public schema.
async fn tables(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

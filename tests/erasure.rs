//! Deleting for good: what an operator does when a deleted message's text
//! must be gone from the disk, not only from every answer (README,
//! "Deleting for good"). A Delete clears the text in the live data at once,
//! but older copies stay in the store's files for a while: sled's log
//! segments until they are reused, PostgreSQL's dead row versions until
//! VACUUM. These tests write a unique marker, delete it, run the documented
//! procedure and read every byte of what is left for the marker.
//!
//! The PostgreSQL test needs the test cluster (`CHAT_TEST_PG_URL`, started
//! by scripts/test) in every pass: without it it fails, it does not skip.

mod common;

use std::path::Path;

use chat::{pb, Config};
use common::*;

/// A text found nowhere but where a test put it.
fn marker(what: &str) -> String {
    format!("{what}-{}", uuid::Uuid::new_v4().simple())
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Every file under `dir`, with its contents.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        match path.is_dir() {
            true => out.extend(files(&path)),
            false => out.push((path.clone(), std::fs::read(&path).unwrap())),
        }
    }
    out
}

/// A Send whose subject and text begin with `marker` (the subject stays
/// short, the text is `padding` longer).
fn marked(chat: &str, user: &str, marker: &str, padding: &str) -> pb::SendRequest {
    let mut req = send_req(chat, user, user, &format!("{marker} text {padding}"));
    req.subject = format!("{marker} subject");
    req
}

/// Sends a message marked `gone`, edits it (again with `gone`), sends one
/// marked `kept`, then deletes the first. Returns the chat.
async fn send_edit_delete(c: &mut Client, gone: &str, kept: &str, padding: &str) -> String {
    let chat = new_chat(c, &["ann", "bob"]).await;
    c.send(marked(&chat, "ann", gone, padding)).await.unwrap();
    c.edit(pb::EditRequest {
        client_id: "e1".into(),
        chat_id: chat.clone(),
        user_id: "ann".into(),
        seq: 1,
        subject: format!("{gone} subject, edited"),
        text: format!("{gone} edited {padding}"),
    })
    .await
    .unwrap();
    c.send(marked(&chat, "bob", kept, padding)).await.unwrap();
    c.delete(pb::DeleteRequest {
        client_id: "d1".into(),
        chat_id: chat.clone(),
        user_id: "ann".into(),
        seq: 1,
    })
    .await
    .unwrap();
    chat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_into_a_fresh_directory_leave_no_trace_of_deleted_text_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let (old, fresh) = (dir.path().join("old"), dir.path().join("fresh"));
    let (gone, kept) = (marker("gone"), marker("kept"));
    let server = TestServer::start_with(Config::with_data_dir(&old)).await;
    let mut c = server.client().await;
    let chat = send_edit_delete(&mut c, &gone, &kept, "").await;
    server.stop().await;
    // The old directory may or may not still hold the text (it depends on
    // when sled reuses the segment): not asserted, only reported.
    let stale = files(&old).iter().any(|(_, bytes)| contains(bytes, &gone));
    eprintln!("the old directory still holds the deleted text: {stale}");

    let export = chat_cmd(&["export", "--store", old.to_str().unwrap()], b"").unwrap();
    assert!(!export.contains(&gone), "the export holds the deleted text");
    assert!(export.contains(&kept));
    chat_cmd(
        &["import", "--store", fresh.to_str().unwrap()],
        export.as_bytes(),
    )
    .unwrap();
    let written = files(&fresh);
    for (path, bytes) in &written {
        assert!(
            !contains(bytes, &gone),
            "{} holds the deleted text",
            path.display()
        );
    }
    // The search can see text at all: the message that was kept is there.
    assert!(written.iter().any(|(_, bytes)| contains(bytes, &kept)));

    // The fresh directory is the deployment: the chat, its tombstone and the
    // idempotency of the deleted message's original Send came along.
    let server = TestServer::start_with(Config::with_data_dir(&fresh)).await;
    let mut c = server.client().await;
    let page = c
        .history(pb::HistoryRequest {
            chat_id: chat.clone(),
            include_deleted: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(page.len(), 2);
    assert!(page[0].deleted && page[0].text.is_empty());
    assert!(page[1].text.starts_with(&kept));
    let retry = c.send(marked(&chat, "ann", &gone, "")).await.unwrap();
    let retried = retry.into_inner().message.unwrap();
    assert!(retried.deleted, "a retry of the deleted Send stays a retry");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vacuum_full_removes_deleted_text_from_the_postgres_table_files() {
    let dir = tempfile::tempdir().unwrap();
    // The test database's URL as the cluster's superuser, who may read the
    // table's files (pg_read_binary_file) and run CHECKPOINT.
    let url = pg_database(dir.path()).await;
    let (gone, kept) = (marker("gone"), marker("kept"));
    let mut config = Config::with_data_dir(dir.path());
    config.store = chat::config::Secret(url.clone());
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    // Long, incompressible texts, so that PostgreSQL moves them out of the
    // row into the table's TOAST table (the subjects stay in the row): both
    // files are read.
    send_edit_delete(&mut c, &gone, &kept, &incompressible(3000)).await;
    server.stop().await;

    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let table_files = || async {
        // Written out first: the files lag behind the shared buffers.
        db.batch_execute("CHECKPOINT").await.unwrap();
        let mut bytes = Vec::new();
        for row in db
            .query(
                "SELECT pg_read_binary_file(pg_relation_filepath(oid))
                 FROM pg_class
                 WHERE oid = 'messages'::regclass
                    OR oid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'messages'::regclass)",
                &[],
            )
            .await
            .unwrap()
        {
            bytes.extend(row.get::<_, Vec<u8>>(0));
        }
        bytes
    };
    // The dead row versions still hold it: what the README warns of, and
    // proof that the search below would find it.
    assert!(contains(&table_files().await, &gone));

    db.batch_execute("VACUUM FULL messages").await.unwrap();
    let after = table_files().await;
    assert!(!contains(&after, &gone), "the table still holds the text");
    assert!(contains(&after, &kept));
}

/// `n` characters that no compressor shrinks by much.
fn incompressible(n: usize) -> String {
    let mut out = String::new();
    while out.chars().count() < n {
        for pair in uuid::Uuid::new_v4().as_bytes().chunks(2) {
            let code = 0x4e00 + u32::from(u16::from_be_bytes([pair[0], pair[1]]) % 0x5000);
            out.push(char::from_u32(code).unwrap());
        }
    }
    out
}

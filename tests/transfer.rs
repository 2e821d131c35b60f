//! Moving a deployment: `chat export` from the embedded store, `chat
//! import` into PostgreSQL, keeping every id, seq, member set and dedupe
//! key; and `chat migrate [--check]`.

mod common;

use chat::pb;
use common::*;

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
    // An edit and a delete: events in the log, and changed messages.
    let change = |seq, text: &str| pb::EditRequest {
        client_id: format!("e{seq}"),
        chat_id: pair.clone(),
        user_id: "ann".into(),
        seq,
        text: text.into(),
        ..Default::default()
    };
    c.edit(change(2, "message 2, edited")).await.unwrap();
    c.delete(pb::DeleteRequest {
        client_id: "d3".into(),
        chat_id: pair.clone(),
        user_id: "ann".into(),
        seq: 3,
    })
    .await
    .unwrap();
    let log = |c: &mut Client| {
        let mut c = c.clone();
        let pair = pair.clone();
        async move {
            c.history(pb::HistoryRequest {
                chat_id: pair,
                before_seq: Some(5),
                include_deleted: true,
                include_events: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .messages
        }
    };
    let before_move = log(&mut c).await;
    bin.signal("-TERM");
    let mut bin = bin;
    bin.child.wait().await.unwrap();

    let exported = chat_cmd(&["export", "--store", sled_dir_s], b"").unwrap();
    assert_eq!(exported.lines().count(), 2 + 1500 + 2);
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
    assert_eq!(
        log(&mut c).await,
        before_move,
        "edits and deletions moved too"
    );
    // Inboxes came along: members have their chat, the open chat's posters theirs.
    for user in ["ann", "bob"] {
        let inbox = c
            .list_chats(pb::ListChatsRequest {
                user_id: user.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let mut chats: Vec<String> = inbox.chats.into_iter().map(|s| s.chat_id).collect();
        chats.sort();
        let mut want = vec![pair.clone(), open.clone()];
        want.sort();
        assert_eq!(chats, want, "{user}'s inbox after the move");
    }
    // The original send of the edited message is still a retry.
    let retried = send(&mut c, &pair, "ann", "c2", "message 2").await;
    assert_eq!(retried.text, "message 2, edited");
    let next = send(&mut c, &pair, "ann", "new", "after the move").await;
    assert_eq!(next.seq, 1003, "seq continues with no gap");
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
    assert!(check.contains("2: events, read state, inbox"), "{check}");
    assert!(
        check.contains("3: unread counts leave out deleted messages"),
        "{check}"
    );
    assert!(check.contains("4: an inbox page costs the page"), "{check}");
    let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    assert_eq!(tables(&client).await, 0, "--check changed nothing");
    let applied = chat_cmd(&["migrate", "--store", &pg], b"").unwrap();
    let latest = format!(
        "schema version: {}",
        chat::store::postgres::MIGRATIONS.len()
    );
    assert!(applied.contains(&latest), "{applied}");
    assert!(applied.contains("pending migrations: none"), "{applied}");
    assert_eq!(
        tables(&client).await,
        5,
        "chats, member_sets, messages, chat_members, chat_schema"
    );
    let check = chat_cmd(&["migrate", "--check", "--store", &pg], b"").unwrap();
    assert!(check.contains(&latest) && check.contains("none"), "{check}");
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
    assert!(out.contains(&latest), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_1_is_upgraded_with_inboxes_and_counts_from_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_database(dir.path()).await;
    let (db, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // Schema 1 as the previous release left it, with its data.
    let (_, name, sql) = chat::store::postgres::MIGRATIONS[0];
    db.batch_execute(&format!(
        "CREATE TABLE chat_schema (version int PRIMARY KEY, name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now());
         {sql};
         INSERT INTO chat_schema (version, name) VALUES (1, '{name}');"
    ))
    .await
    .unwrap();
    let (pair, open) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    db.execute(
        "INSERT INTO chats (chat_id, members, created_at, last_seq) VALUES
            ($1, '{ann,bob}', 1700000000, 3), ($2, '{}', 1700000001, 2)",
        &[&pair, &open],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO messages (chat_id, seq, id, user_id, client_id, sent_at, subject, text)
         VALUES ($1, 1, 'm1', 'bob', 'b1', 1700000010, '', 'one'),
                ($1, 2, 'm2', 'bob', 'b2', 1700000011, '', 'two'),
                ($1, 3, 'm3', 'ann', 'a1', 1700000012, '', 'three'),
                ($2, 1, 'm4', 'cid', 'c1', 1700000020, '', 'open one'),
                ($2, 2, 'm5', 'cid', 'c2', 1700000021, '', 'open two')",
        &[&pair, &open],
    )
    .await
    .unwrap();

    let bin = Binary::start(dir.path(), &["--store", &pg]).await;
    let mut c = bin.client().await;
    let inbox = |user: &str| pb::ListChatsRequest {
        user_id: user.into(),
        ..Default::default()
    };
    let ann = c.list_chats(inbox("ann")).await.unwrap().into_inner();
    assert_eq!(ann.chats.len(), 1);
    let entry = &ann.chats[0];
    assert_eq!(entry.chat_id, pair.to_string());
    assert_eq!((entry.last_seq, entry.unread), (3, 3));
    assert_eq!(entry.last_message.as_ref().unwrap().text, "three");
    assert_eq!(entry.last_active_at, 1700000012);
    // The open chat's poster has it in their inbox.
    let cid = c.list_chats(inbox("cid")).await.unwrap().into_inner();
    assert_eq!(cid.chats[0].chat_id, open.to_string());
    assert_eq!(cid.chats[0].unread, 2);
    // New entries count on from the old ones.
    send(&mut c, &pair.to_string(), "bob", "b3", "four").await;
    let r = c
        .mark_read(pb::MarkReadRequest {
            chat_id: pair.to_string(),
            user_id: "ann".into(),
            seq: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.read_seq, r.unread), (2, 2));
    // Old messages can be edited like new ones.
    c.edit(pb::EditRequest {
        client_id: "e1".into(),
        chat_id: pair.to_string(),
        user_id: "bob".into(),
        seq: 1,
        text: "ONE".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(all_messages(&mut c, &pair.to_string()).await[0].text, "ONE");
}

/// Migration 3: unread counts of data stored before it leave out its
/// deleted messages, and an open chat's readers who never posted (whom
/// MarkRead used to list) are listed nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_schema_2_counts_deleted_messages_and_hides_readers_after_migration_3() {
    let dir = tempfile::tempdir().unwrap();
    let pg = pg_database(dir.path()).await;
    let (db, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut schema = String::from(
        "CREATE TABLE chat_schema (version int PRIMARY KEY, name text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now());",
    );
    for (version, name, sql) in &chat::store::postgres::MIGRATIONS[..2] {
        schema.push_str(&format!(
            "{sql}; INSERT INTO chat_schema (version, name) VALUES ({version}, '{name}');"
        ));
    }
    db.batch_execute(&schema).await.unwrap();
    let (pair, open) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    db.execute(
        "INSERT INTO chats (chat_id, members, created_at, last_seq, n, active_us, last_message)
         VALUES ($1, '{ann,bob}', 1700000000, 4, 3, 1700000013000000, 3),
                ($2, '{}', 1700000001, 1, 1, 1700000020000000, 1)",
        &[&pair, &open],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO messages (chat_id, seq, id, user_id, client_id, sent_at, subject, text,
                               kind, target_seq, deleted, n)
         VALUES ($1, 1, 'm1', 'bob', 'b1', 1700000010, '', 'one', 0, 0, false, 1),
                ($1, 2, 'm2', 'bob', 'b2', 1700000011, '', '', 0, 0, true, 2),
                ($1, 3, 'm3', 'bob', 'b3', 1700000012, '', 'three', 0, 0, false, 3),
                ($1, 4, 'm4', 'bob', 'd2', 1700000013, '', '', 2, 2, false, 3),
                ($2, 1, 'm5', 'cid', 'c1', 1700000020, '', 'open one', 0, 0, false, 1)",
        &[&pair, &open],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO chat_members (user_id, chat_id, read_seq, read_n)
         VALUES ('ann', $1, 0, 0), ('bob', $1, 3, 3), ('cid', $2, 1, 1), ('eve', $2, 1, 1)",
        &[&pair, &open],
    )
    .await
    .unwrap();

    let bin = Binary::start(dir.path(), &["--store", &pg]).await;
    let mut c = bin.client().await;
    let inbox = |user: &str| pb::ListChatsRequest {
        user_id: user.into(),
        ..Default::default()
    };
    let ann = c.list_chats(inbox("ann")).await.unwrap().into_inner();
    assert_eq!(ann.chats[0].unread, 2, "the deleted message is not unread");
    let eve = c.list_chats(inbox("eve")).await.unwrap().into_inner();
    assert!(eve.chats.is_empty(), "a reader who never posted: {eve:?}");
    let state = c
        .read_state(pb::ReadStateRequest {
            chat_id: open.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    let users: Vec<_> = state.positions.iter().map(|p| p.user_id.as_str()).collect();
    assert_eq!(users, ["cid"]);
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

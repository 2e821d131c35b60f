//! How a replica reaches its database: TLS as the URL's `sslmode` says
//! (verified against `sslrootcert`), and the password from the URL,
//! `--store-password-file` or `PGPASSWORD`, never printed. The test cluster
//! (scripts/pg-cluster) has TLS on, with a certificate for `localhost` only,
//! and a role `chat_pw` that must give a password.

mod common;

use common::*;

/// The URL of `dir`'s database with another host, user and query.
async fn url(dir: &std::path::Path, userinfo: &str, host: &str, query: &str) -> String {
    let db = pg_database(dir).await;
    let port = db.split(':').nth(2).unwrap().split('/').next().unwrap();
    let name = db.rsplit('/').next().unwrap().split('?').next().unwrap();
    format!("postgres://{userinfo}@{host}:{port}/{name}?{query}")
}

/// Whether the replicas' connections to `dir`'s database use TLS.
async fn replica_connections_use_tls(dir: &std::path::Path) -> Vec<bool> {
    let (client, conn) = tokio_postgres::connect(&pg_admin(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.application_name = 'chat' AND a.datname = $1",
            &[&db_name(dir)],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A CA file the test cluster made (see scripts/pg-cluster).
fn ca_file(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| panic!("{var} must be set (scripts/test sets it)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_verify_full_checks_the_chain_and_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = ca_file("CHAT_TEST_PG_CA");
    // The right CA and the certificate's name: TLS, and it serves.
    let good = ca_url(dir.path(), "verify-full", "localhost", &ca).await;
    let bin = Binary::start(dir.path(), &["--store", &good]).await;
    let mut c = bin.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "1", "over TLS").await;
    let tls = replica_connections_use_tls(dir.path()).await;
    assert!(!tls.is_empty() && tls.iter().all(|t| *t), "{tls:?}");
    drop(bin);

    // Another CA: refused.
    let other = ca_url(
        dir.path(),
        "verify-full",
        "localhost",
        &ca_file("CHAT_TEST_PG_OTHER_CA"),
    )
    .await;
    let log = Binary::try_start(
        dir.path(),
        &["--store", &other, "--pg-connect-timeout", "1"],
    )
    .await
    .err()
    .expect("a certificate from an unknown CA is refused");
    assert!(log.contains("certificate"), "{log}");

    // The right CA but not the certificate's name: verify-full refuses,
    // verify-ca (chain only) accepts.
    let by_ip = ca_url(dir.path(), "verify-full", "127.0.0.1", &ca).await;
    let log = Binary::try_start(
        dir.path(),
        &["--store", &by_ip, "--pg-connect-timeout", "1"],
    )
    .await
    .err()
    .expect("a certificate for another name is refused by verify-full");
    assert!(log.contains("certificate"), "{log}");
    let chain_only = ca_url(dir.path(), "verify-ca", "127.0.0.1", &ca).await;
    Binary::start(dir.path(), &["--store", &chain_only]).await;
}

async fn ca_url(dir: &std::path::Path, mode: &str, host: &str, ca: &str) -> String {
    url(
        dir,
        "postgres",
        host,
        &format!("sslmode={mode}&sslrootcert={ca}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_encrypts_and_disable_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let require = url(dir.path(), "postgres", "127.0.0.1", "sslmode=require").await;
    let bin = Binary::start(dir.path(), &["--store", &require]).await;
    let tls = replica_connections_use_tls(dir.path()).await;
    assert!(!tls.is_empty() && tls.iter().all(|t| *t), "{tls:?}");
    drop(bin);
    // Wait for the server to see those connections go.
    for _ in 0..100 {
        if replica_connections_use_tls(dir.path()).await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let disable = url(dir.path(), "postgres", "127.0.0.1", "sslmode=disable").await;
    let _bin = Binary::start(dir.path(), &["--store", &disable]).await;
    let tls = replica_connections_use_tls(dir.path()).await;
    assert!(!tls.is_empty() && tls.iter().all(|t| !*t), "{tls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_comes_from_the_url_a_file_or_pgpassword_and_is_never_printed() {
    let dir = tempfile::tempdir().unwrap();
    let secret = format!("pw-{}", uuid::Uuid::new_v4().simple());
    {
        let (client, conn) = tokio_postgres::connect(&pg_admin(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        let db = db_name(dir.path());
        pg_database(dir.path()).await;
        // One role for the whole cluster: whichever test set it last, set it now.
        let _ = client.batch_execute("CREATE ROLE chat_pw LOGIN").await;
        client
            .batch_execute(&format!(
                "ALTER ROLE chat_pw PASSWORD '{secret}'; ALTER DATABASE {db} OWNER TO chat_pw"
            ))
            .await
            .unwrap();
    }
    let no_password = url(dir.path(), "chat_pw", "127.0.0.1", "sslmode=disable").await;
    // In the URL.
    let in_url = url(
        dir.path(),
        &format!("chat_pw:{secret}"),
        "127.0.0.1",
        "sslmode=disable",
    )
    .await;
    let bin = Binary::start(dir.path(), &["--store", &in_url]).await;
    assert!(!bin.log_text().contains(&secret), "{}", bin.log_text());
    drop(bin);
    // In a file.
    let file = dir.path().join("pw");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let file = file.to_str().unwrap();
    let bin = Binary::start(
        dir.path(),
        &["--store", &no_password, "--store-password-file", file],
    )
    .await;
    assert!(!bin.log_text().contains(&secret));
    drop(bin);
    // In PGPASSWORD (the binary inherits the test's environment).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .args(["migrate", "--check", "--store", &no_password])
        .env("PGPASSWORD", &secret)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A wrong one: refused at once (not retried as if unreachable), and
    // neither password is printed, nor does --help show the store's value.
    let wrong = url(
        dir.path(),
        "chat_pw:wrong-pw",
        "127.0.0.1",
        "sslmode=disable",
    )
    .await;
    let log = Binary::try_start(dir.path(), &["--store", &wrong])
        .await
        .err()
        .expect("a wrong password is refused");
    assert!(log.contains("password authentication failed"), "{log}");
    assert!(!log.contains("wrong-pw") && !log.contains(&secret), "{log}");
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_chat"))
        .arg("--help")
        .env("CHAT_STORE", &in_url)
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--store") && !help.contains(&secret),
        "{help}"
    );
}

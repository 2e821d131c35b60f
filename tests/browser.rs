//! End to end in a real browser: headless Chromium pages load
//! `examples/chat.html`, chat with each other through the WebSocket, and the
//! test reads the messages off the pages. Chromium is driven over the
//! DevTools protocol with the WebSocket client the other tests use.
//! Fails, never skips, when Chromium is missing (`.ci/run` installs it).
//!
//! Every page counts its WebSockets in `window.__ws` (made, opened, close
//! codes; installed before the page's own script runs), so a test can tell
//! "never opened" and "did not reconnect" from a page that merely is not
//! open at the moment it is looked at.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat::{config::AuthMode, pb};
use common::{browser::Browser, *};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

/// The example page for `chat` on `server`; `rest` is appended (more of the
/// query, and/or a `#token=` fragment).
fn page_url(server: &TestServer, chat: &str, rest: &str) -> String {
    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat.html");
    format!("file://{page}?server={}&chat_id={chat}{rest}", server.addr)
}

const TEXTS: &str =
    "Array.from(document.querySelectorAll('#messages li')).map(li => li.textContent)";

/// Types `text` into a page and presses Send.
fn say(text: &str) -> String {
    format!(
        "document.getElementById('text').value = {text:?}; document.getElementById('send').click(); true"
    )
}

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub` that expires at `exp`.
fn token(sub: &str, exp: u64) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({ "sub": sub, "exp": exp }),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

/// A token for `sub` good for an hour.
fn user(sub: &str) -> String {
    token(sub, now() + 3600)
}

/// A server with `--auth jwt --jwt-secret-file` (the secret in `dir`).
async fn jwt_server(dir: &std::path::Path) -> TestServer {
    let secret = dir.join("jwt-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = test_config(dir).await;
    config.auth = AuthMode::Jwt;
    config.jwt_secret_file = Some(secret);
    // The pages are opened from disk: their origin is `null`.
    config.cors_origins = vec!["null".into()];
    TestServer::start_with(config).await
}

/// A new chat of `users`, created by the first of them.
async fn new_chat_as(c: &mut Client, users: &[&str]) -> String {
    let req = pb::NewRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
    };
    c.new_chat(bearer(&user(users[0]), req))
        .await
        .unwrap()
        .into_inner()
        .chat_id
}

/// What the server stored in `chat`, as "user:text", read as `reader`.
async fn stored_as(c: &mut Client, reader: &str, chat: &str) -> Vec<String> {
    let req = pb::HistoryRequest {
        chat_id: chat.into(),
        after_seq: Some(0),
        ..Default::default()
    };
    let page = c
        .history(bearer(&user(reader), req))
        .await
        .unwrap()
        .into_inner();
    assert!(!page.has_more);
    page.messages
        .into_iter()
        .map(|m| format!("{}:{}", m.user_id, m.text))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_chat_through_the_example_page() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    // The page is opened from disk: its origin is `null`.
    config.cors_origins = vec!["null".into()];
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;

    let url = |user: &str| page_url(&server, &chat, &format!("&user_id={user}"));
    let ann = cdp.open_page(&url("ann")).await;
    let bob = cdp.open_page(&url("bob")).await;
    for page in [&ann, &bob] {
        cdp.wait_for(page, "document.body.dataset.state === 'open'")
            .await;
    }
    cdp.eval(&ann, &say("hello bob")).await;
    cdp.wait_for(
        &bob,
        "document.querySelectorAll('#messages li').length === 1",
    )
    .await;
    cdp.eval(&bob, &say("hi ann")).await;
    for page in [&ann, &bob] {
        cdp.wait_for(
            page,
            "document.querySelectorAll('#messages li').length === 2",
        )
        .await;
    }
    let on_ann = cdp.eval(&ann, TEXTS).await;
    let on_bob = cdp.eval(&bob, TEXTS).await;
    assert_eq!(on_ann, json!(["ann:hello bob", "bob:hi ann"]));
    assert_eq!(on_bob, on_ann, "both pages show the same chat");
    // And the server stored exactly that.
    let stored: Vec<String> = all_messages(&mut c, &chat)
        .await
        .into_iter()
        .map(|m| format!("{}:{}", m.user_id, m.text))
        .collect();
    assert_eq!(json!(stored), on_ann);

    browser.stop().await;
    server.stop().await;
}

/// With `--auth jwt`: pages given only a token (in the fragment, no
/// user_id) chat as the token's subjects; an outsider's page and a page
/// with an expired token are refused at the handshake, never open, and
/// keep retrying (a refusal looks like an unreachable server to a page).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_with_only_a_token_chat_as_its_subject_and_outsiders_and_expired_tokens_never_open() {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat_as(&mut c, &["ann", "bob"]).await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    let url = |token: &str| page_url(&server, &chat, &format!("#token={token}"));

    let ann = cdp.open_page(&url(&user("ann"))).await;
    let bob = cdp.open_page(&url(&user("bob"))).await;
    for page in [&ann, &bob] {
        cdp.wait_for(page, "document.body.dataset.state === 'open'")
            .await;
    }
    // "me" is the token's subject (display only).
    assert_eq!(
        cdp.eval(&ann, "document.getElementById('me').textContent")
            .await,
        "ann"
    );
    cdp.eval(&ann, &say("hello bob")).await;
    cdp.wait_for(
        &bob,
        "document.querySelectorAll('#messages li').length === 1",
    )
    .await;
    cdp.eval(&bob, &say("hi ann")).await;
    for page in [&ann, &bob] {
        cdp.wait_for(
            page,
            "document.querySelectorAll('#messages li').length === 2",
        )
        .await;
    }
    let on_ann = cdp.eval(&ann, TEXTS).await;
    assert_eq!(on_ann, json!(["ann:hello bob", "bob:hi ann"]));
    assert_eq!(cdp.eval(&bob, TEXTS).await, on_ann);

    // Eve's token is valid but she is not a member (403 at the handshake);
    // ann's expired one (exp past the server's 5 s leeway) is refused (401).
    let eve = cdp.open_page(&url(&user("eve"))).await;
    let expired = cdp.open_page(&url(&token("ann", now() - 60))).await;
    for (name, page) in [("eve", &eve), ("expired", &expired)] {
        // A refused handshake is retried after 1 s: wait for the retry
        // (not a fixed time: a loaded machine is slow).
        cdp.wait_for(page, "window.__ws && window.__ws.made >= 2")
            .await;
        cdp.eval(page, &say("let me in")).await;
        let seen = cdp.eval(page, "window.__ws").await;
        assert_eq!(seen["opened"], 0, "{name}'s page never opens: {seen}");
        assert!(
            seen["made"].as_u64().unwrap() >= 2,
            "{name}'s page retries: {seen}"
        );
        assert!(
            seen["closes"].as_array().unwrap().iter().all(|c| c == 1006),
            "a refused handshake is a 1006 to a page: {seen}"
        );
        let state = cdp.eval(page, "document.body.dataset.state").await;
        assert_eq!(state, "unreachable", "{name}");
        assert_eq!(cdp.eval(page, TEXTS).await, json!([]), "{name}");
    }

    // The server stored what ann and bob said, as them, and nothing else.
    assert_eq!(json!(stored_as(&mut c, "ann", &chat).await), on_ann);

    browser.stop().await;
    server.stop().await;
}

/// A token that expires while the page is open: the server closes the
/// WebSocket with 4401, and the page says so and does not reconnect with
/// the same token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_whose_token_expires_stops_and_asks_for_a_fresh_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat_as(&mut c, &["ann"]).await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;

    let short = token("ann", now() + 4);
    let ann = cdp
        .open_page(&page_url(&server, &chat, &format!("#token={short}")))
        .await;
    cdp.wait_for(&ann, "window.__ws && window.__ws.opened === 1")
        .await;
    cdp.wait_for(&ann, "document.body.dataset.state === 'unauthenticated'")
        .await;
    let status = cdp
        .eval(&ann, "document.getElementById('status').textContent")
        .await;
    assert!(
        status.as_str().unwrap().contains("fresh"),
        "tells the user what to do: {status}"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let seen = cdp.eval(&ann, "window.__ws").await;
    assert_eq!(
        seen,
        json!({"made": 1, "opened": 1, "closes": [4401]}),
        "no reconnect after 4401"
    );
    assert_eq!(
        cdp.eval(&ann, "document.body.dataset.state").await,
        "unauthenticated"
    );

    browser.stop().await;
    server.stop().await;
}

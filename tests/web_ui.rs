//! The web client the service serves at `/` (web/), in headless Chromium:
//! two windows chat both ways; a long chat opens at its newest page and
//! scrolls back to its first message; a reload shows the same history; a
//! server killed or restarted under an open page loses and repeats
//! nothing, and a message typed while it was down is delivered once; text
//! is never HTML; edits, deletions, unread badges, typing and presence.
//! Screenshots of the main states go to target/screenshots/ (look at them).
//! Fails, never skips, when Chromium is missing (`.ci/run` installs it).

mod common;

use std::time::Duration;

use chat::pb;
use common::{browser::Browser, *};
use serde_json::{json, Value};

/// The page's messages as "user:text", in the order shown.
const SHOWN: &str = "Array.from(document.querySelectorAll('#messages li')).map(li => li.dataset.user + ':' + li.querySelector('.bubble').textContent)";

/// Types `text` into the composer and presses Enter.
fn say(text: &str) -> String {
    format!(
        "(() => {{ const t = document.getElementById('text'); t.value = {text:?};
           t.dispatchEvent(new KeyboardEvent('keydown', {{key: 'Enter', bubbles: true}})); return true; }})()"
    )
}

fn shown_count(n: usize) -> String {
    format!("document.querySelectorAll('#messages li').length === {n}")
}

fn url(addr: std::net::SocketAddr, fragment: &str) -> String {
    format!("http://{addr}/#{fragment}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_windows_chat_both_ways_and_text_is_never_html() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    let ann = cdp
        .open_page(&url(server.addr, &format!("user=ann&chat={chat}")))
        .await;
    let bob = cdp
        .open_page(&url(server.addr, &format!("user=bob&chat={chat}")))
        .await;
    for page in [&ann, &bob] {
        cdp.wait_for(page, "document.body.dataset.state === 'open'")
            .await;
    }
    cdp.eval(&ann, &say("hello bob")).await;
    cdp.wait_for(&bob, &shown_count(1)).await;
    cdp.eval(
        &bob,
        &say("hi ann <script>window.__pwned = 1</script><b>bold</b>"),
    )
    .await;
    for page in [&ann, &bob] {
        cdp.wait_for(page, &shown_count(2)).await;
        cdp.wait_for(
            page,
            "document.querySelectorAll('#messages li.pending').length === 0",
        )
        .await;
    }
    let on_ann = cdp.eval(&ann, SHOWN).await;
    assert_eq!(
        on_ann,
        json!([
            "ann:hello bob",
            "bob:hi ann <script>window.__pwned = 1</script><b>bold</b>"
        ])
    );
    assert_eq!(
        cdp.eval(&bob, SHOWN).await,
        on_ann,
        "both windows show the same chat"
    );
    for page in [&ann, &bob] {
        assert_eq!(cdp.eval(page, "window.__pwned === undefined && !document.querySelector('#messages b, #messages script')").await, true, "text is text");
    }
    // The sender sees its own on the other side, marked sent; the composer keeps focus.
    assert_eq!(
        cdp.eval(
            &ann,
            "document.querySelector('#messages li').classList.contains('mine')"
        )
        .await,
        true
    );
    assert_eq!(
        cdp.eval(&ann, "document.querySelector('#messages li').dataset.state")
            .await,
        "sent"
    );
    assert_eq!(cdp.eval(&ann, "document.activeElement.id").await, "text");
    // Shift+Enter is a new line, not a send.
    cdp.eval(&ann, "(() => { const t = document.getElementById('text'); t.value = 'line 1'; t.dispatchEvent(new KeyboardEvent('keydown', {key: 'Enter', shiftKey: true, bubbles: true})); return true; })()").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        cdp.eval(&ann, "document.querySelectorAll('#messages li').length")
            .await,
        2
    );
    let stored: Vec<String> = all_messages(&mut c, &chat)
        .await
        .into_iter()
        .map(|m| format!("{}:{}", m.user_id, m.text))
        .collect();
    assert_eq!(
        json!(stored),
        on_ann,
        "the server stored exactly what the pages show"
    );
    cdp.screenshot(&ann, "web-ui-chat").await;
    // A phone-sized window stays readable: nothing wider than the screen.
    cdp.resize(&bob, 390, 844).await;
    cdp.eval(&bob, &say(&"a-very-long-word-without-any-space-".repeat(8)))
        .await;
    cdp.wait_for(&bob, &shown_count(3)).await;
    assert_eq!(
        cdp.eval(&bob, "document.documentElement.scrollWidth <= 390")
            .await,
        true
    );
    cdp.screenshot(&bob, "web-ui-phone").await;
    browser.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_chat_opens_at_its_newest_page_and_scrolls_back_to_its_first_message() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    for i in 1..=250 {
        let user = if i % 3 == 0 { "ann" } else { "bob" };
        send(&mut c, &chat, user, &format!("c{i}"), &format!("m{i}")).await;
    }
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    let page = cdp
        .open_page(&url(server.addr, &format!("user=ann&chat={chat}")))
        .await;
    cdp.wait_for(&page, &shown_count(50)).await;
    let last = "document.querySelector('#messages li:last-child .bubble').textContent";
    assert_eq!(cdp.eval(&page, last).await, "m250");
    // Opened scrolled to the bottom, once the layout has settled (the
    // header fills in after the page; the page follows it down).
    cdp.wait_for(
        &page,
        "(() => { const s = document.getElementById('scroller'); return s.scrollHeight - s.scrollTop - s.clientHeight < 5; })()",
    )
    .await;
    cdp.screenshot(&page, "web-ui-long-chat").await;
    // Scrolling up loads older pages, keeping the message in view in place.
    for _ in 0..20 {
        if cdp.eval(&page, &shown_count(250)).await == json!(true) {
            break;
        }
        let before = cdp
            .eval(&page, "document.querySelector('#messages li').dataset.seq")
            .await;
        cdp.eval(&page, "(() => { const s = document.getElementById('scroller'); s.scrollTop = 0; s.dispatchEvent(new Event('scroll')); return true; })()").await;
        cdp.wait_for(
            &page,
            &format!("document.querySelector('#messages li').dataset.seq !== {before}"),
        )
        .await;
        let kept = cdp
            .eval(&page, "document.getElementById('scroller').scrollTop > 0")
            .await;
        assert_eq!(
            kept, true,
            "the reader's place is kept, not jumped to the top"
        );
    }
    let texts = cdp
        .eval(
            &page,
            "Array.from(document.querySelectorAll('#messages .bubble')).map(b => b.textContent)",
        )
        .await;
    let want: Vec<String> = (1..=250).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, json!(want), "every message once, in order");
    assert_eq!(
        cdp.eval(
            &page,
            "document.getElementById('history-status').textContent"
        )
        .await,
        "The beginning of the chat"
    );
    // Consecutive messages by one sender are grouped: only the first shows the sender.
    let firsts = cdp
        .eval(
            &page,
            "document.querySelectorAll('#messages li.first').length",
        )
        .await;
    assert!(firsts.as_u64().unwrap() < 250, "{firsts}");
    // A reload shows the same history: the newest page again.
    cdp.call("Page.reload", json!({}), Some(&page)).await;
    cdp.wait_for(&page, &shown_count(50)).await;
    assert_eq!(cdp.eval(&page, last).await, "m250");
    assert_eq!(
        cdp.eval(
            &page,
            "document.querySelector('#messages li .bubble').textContent"
        )
        .await,
        "m201"
    );
    browser.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_or_restarted_under_an_open_page_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // A fixed address, so that the page finds the restarted server.
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let server = Binary::start_on(dir.path(), &listen, &[]).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    send(&mut c, &chat, "bob", "b0", "before").await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    let page = cdp
        .open_page(&url(server.addr, &format!("user=ann&chat={chat}")))
        .await;
    cdp.wait_for(&page, "document.body.dataset.state === 'open'")
        .await;
    cdp.wait_for(&page, &shown_count(1)).await;

    // kill -9: the page notices, and a message typed meanwhile waits.
    server.signal("-KILL");
    let mut server = server;
    let _ = server.child.wait().await;
    cdp.wait_for(&page, "document.body.dataset.state === 'closed'")
        .await;
    cdp.eval(&page, &say("typed while the server was down"))
        .await;
    cdp.wait_for(
        &page,
        "document.querySelectorAll('#messages li.pending').length === 1",
    )
    .await;
    cdp.screenshot(&page, "web-ui-disconnected").await;
    let server = Binary::start_on(dir.path(), &listen, &[]).await;
    let mut c = server.client().await;
    for i in 1..=3 {
        send(
            &mut c,
            &chat,
            "bob",
            &format!("b{i}"),
            &format!("after restart {i}"),
        )
        .await;
    }
    cdp.wait_for(&page, "document.body.dataset.state === 'open'")
        .await;
    cdp.wait_for(&page, &shown_count(5)).await;
    cdp.wait_for(
        &page,
        "document.querySelectorAll('#messages li.pending').length === 0",
    )
    .await;

    // A graceful restart (SIGTERM: close code 1012) is survived too.
    server.signal("-TERM");
    let mut server = server;
    let _ = server.child.wait().await;
    let server = Binary::start_on(dir.path(), &listen, &[]).await;
    let mut c = server.client().await;
    send(&mut c, &chat, "bob", "b4", "after the second restart").await;
    cdp.wait_for(&page, &shown_count(6)).await;
    let closes = cdp.eval(&page, "window.__ws.closes").await;
    assert!(
        closes.as_array().unwrap().contains(&json!(1012)),
        "{closes}"
    );

    // Each message once, in seq order, as stored.
    let stored: Vec<Value> = all_messages(&mut c, &chat)
        .await
        .into_iter()
        .map(|m| json!(format!("{}:{}", m.user_id, m.text)))
        .collect();
    assert_eq!(stored.len(), 6, "the typed message stored once: {stored:?}");
    assert_eq!(cdp.eval(&page, SHOWN).await, json!(stored));
    browser.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_unread_badges_edits_deletions_typing_and_who_is_online() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    let ann = cdp
        .open_page(&url(server.addr, &format!("user=ann&chat={chat}")))
        .await;
    cdp.wait_for(&ann, "document.body.dataset.state === 'open'")
        .await;
    cdp.eval(&ann, &say("helo bob")).await;
    cdp.eval(&ann, &say("are you there?")).await;
    cdp.wait_for(
        &ann,
        "document.querySelectorAll('#messages li[data-state=sent]').length === 2",
    )
    .await;

    // bob's start screen: the chat, with two unread.
    let bob = cdp.open_page(&url(server.addr, "user=bob")).await;
    cdp.wait_for(
        &bob,
        &format!("!!document.querySelector('#inbox li[data-chat=\"{chat}\"] .badge')"),
    )
    .await;
    assert_eq!(
        cdp.eval(&bob, "document.querySelector('#inbox .badge').textContent")
            .await,
        "2"
    );
    assert_eq!(
        cdp.eval(
            &bob,
            "document.querySelector('#inbox .preview').textContent"
        )
        .await,
        "ann: are you there?"
    );
    cdp.screenshot(&bob, "web-ui-inbox").await;
    // Opening it reads it: back on the start screen, no badge.
    cdp.eval(
        &bob,
        &format!("document.querySelector('#inbox li[data-chat=\"{chat}\"] a').click(); true"),
    )
    .await;
    cdp.wait_for(&bob, &shown_count(2)).await;
    cdp.wait_for(
        &ann,
        "document.getElementById('present').textContent === 'online: bob'",
    )
    .await;
    cdp.wait_for(
        &ann,
        "document.querySelector('#messages li:last-child .state').textContent === 'read'",
    )
    .await;

    // ann fixes her typo; bob sees the new text, marked edited.
    cdp.eval(
        &ann,
        "document.querySelector('#messages li .edit').click(); true",
    )
    .await;
    cdp.eval(&ann, &say("hello bob")).await;
    cdp.wait_for(
        &bob,
        "document.querySelector('#messages li .bubble').textContent === 'hello bob'",
    )
    .await;
    assert_eq!(
        cdp.eval(
            &bob,
            "document.querySelector('#messages li .edited').textContent"
        )
        .await,
        "(edited)"
    );
    // ann takes back her second message; it goes from bob's page.
    cdp.eval(
        &ann,
        "document.querySelector('#messages li:last-child .delete').click(); true",
    )
    .await;
    cdp.wait_for(&bob, &shown_count(1)).await;
    // ann types: bob sees it.
    cdp.eval(&ann, "(() => { const t = document.getElementById('text'); t.value = 'h'; t.dispatchEvent(new Event('input')); return true; })()").await;
    cdp.wait_for(
        &bob,
        "document.getElementById('typing').textContent === 'ann is typing…'",
    )
    .await;
    cdp.screenshot(&bob, "web-ui-typing").await;
    // The server agrees: one message, edited; the other deleted.
    let stored = all_messages(&mut c, &chat).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].text.as_str(), stored[0].edited_at > 0),
        ("hello bob", true)
    );
    cdp.eval(&bob, "location.hash = 'user=bob'; true").await;
    cdp.wait_for(
        &bob,
        &format!("!!document.querySelector('#inbox li[data-chat=\"{chat}\"]')"),
    )
    .await;
    assert_eq!(
        cdp.eval(&bob, "document.querySelectorAll('#inbox .badge').length")
            .await,
        0,
        "read: no badge"
    );
    browser.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_send_is_marked_failed_with_its_error_and_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.max_message_bytes = 20;
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann"]).await;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    let page = cdp
        .open_page(&url(server.addr, &format!("user=ann&chat={chat}")))
        .await;
    cdp.wait_for(&page, "document.body.dataset.state === 'open'")
        .await;
    cdp.eval(&page, &say("this message is far too long for this server"))
        .await;
    cdp.wait_for(
        &page,
        "document.querySelectorAll('#messages li.failed').length === 1",
    )
    .await;
    let why = cdp
        .eval(
            &page,
            "document.querySelector('#messages li.failed .state').textContent",
        )
        .await;
    assert!(
        why.as_str().unwrap().contains("chat.Send.TooLarge"),
        "{why}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        all_messages(&mut c, &chat).await.is_empty(),
        "nothing stored, nothing retried"
    );
    assert_eq!(
        server
            .chats
            .metrics()
            .render()
            .matches("method=\"Send\",code=\"INVALID_ARGUMENT\"} 1")
            .count(),
        1,
        "sent once, not retried"
    );
    cdp.screenshot(&page, "web-ui-failed").await;
    browser.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_jwt_the_page_asks_for_a_token_and_then_chats_as_its_subject() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    let key = b"a-test-secret-of-at-least-32-bytes!!";
    std::fs::write(&secret, key).unwrap();
    let mut config = test_config(dir.path()).await;
    config.auth = chat::config::AuthMode::Jwt;
    config.jwt_secret_file = Some(secret);
    let server = TestServer::start_with(config).await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "ann", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(key),
    )
    .unwrap();
    let mut c = server.client().await;
    let chat = c
        .new_chat(bearer(
            &token,
            pb::NewRequest {
                user_ids: vec!["ann".into()],
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let mut browser = Browser::start().await;
    let cdp = &mut browser.cdp;
    // No token: the start screen asks for one.
    let page = cdp
        .open_page(&url(server.addr, &format!("user=ann&chat={chat}")))
        .await;
    cdp.wait_for(&page, "document.getElementById('token-box').open === true")
        .await;
    let error = cdp
        .eval(&page, "document.getElementById('start-error').textContent")
        .await;
    assert!(
        error.as_str().unwrap().contains("chat.Auth.MissingToken"),
        "{error}"
    );
    // With it: the chat, as the token's subject.
    cdp.eval(
        &page,
        &format!("location.hash = 'token={token}&chat={chat}'; true"),
    )
    .await;
    cdp.wait_for(&page, "document.body.dataset.state === 'open'")
        .await;
    cdp.eval(&page, &say("signed in")).await;
    cdp.wait_for(
        &page,
        "document.querySelectorAll('#messages li[data-state=sent]').length === 1",
    )
    .await;
    assert_eq!(
        cdp.eval(&page, "document.getElementById('who').textContent")
            .await,
        "as ann"
    );
    browser.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_web_client_is_served_at_the_root_unless_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let page = reqwest::get(format!("http://{}/", server.addr))
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert!(page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'self'"));
    assert!(page.text().await.unwrap().contains("app.js"));
    let js = reqwest::get(format!("http://{}/app.js", server.addr))
        .await
        .unwrap();
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.web_ui = false;
    let server = TestServer::start_with(config).await;
    let page = reqwest::get(format!("http://{}/", server.addr))
        .await
        .unwrap();
    assert_eq!(page.status(), 404);
    server.stop().await;
}

//! End to end in a real browser: two headless Chromium pages load
//! `examples/chat.html`, chat with each other through the WebSocket, and the
//! test reads the messages off the pages. Chromium is driven over the
//! DevTools protocol with the WebSocket client the other tests use.
//! Fails, never skips, when Chromium is missing (`.ci/run` installs it).

mod common;

use std::{process::Stdio, time::Duration};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message as Ws;

/// A DevTools protocol connection to the browser.
struct Cdp {
    ws: WsStream,
    next_id: u64,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Ws::Text(msg.to_string().into()))
            .await
            .unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("DevTools answers")
                .unwrap()
                .unwrap();
            let Ws::Text(text) = frame else { continue };
            let v: Value = serde_json::from_str(&text).unwrap();
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates `expr` in a page and returns its value.
    async fn eval(&mut self, session: &str, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
                Some(session),
            )
            .await;
        r["result"]["value"].clone()
    }

    /// Waits until `expr` is true in the page.
    async fn wait_for(&mut self, session: &str, expr: &str) {
        for _ in 0..400 {
            if self.eval(session, expr).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("not true within 10 s: {expr}");
    }

    async fn open_page(&mut self, url: &str) -> String {
        let target = self
            .call("Target.createTarget", json!({"url": url}), None)
            .await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                None,
            )
            .await;
        attached["sessionId"].as_str().unwrap().to_owned()
    }
}

const TEXTS: &str =
    "Array.from(document.querySelectorAll('#messages li')).map(li => li.textContent)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_pages_chat_through_the_example_page() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;

    let profile = tempfile::tempdir().unwrap();
    let mut browser = tokio::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--remote-debugging-port=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium must be installed (.ci/run installs Debian's chromium)");
    let mut lines = tokio::io::BufReader::new(browser.stderr.take().unwrap()).lines();
    let endpoint = loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("chromium starts within 30 s")
            .unwrap()
            .expect("chromium exited before listening");
        if let Some(at) = line.find("ws://") {
            break line[at..].trim().to_owned();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let (ws, _) = tokio_tungstenite::connect_async(&endpoint).await.unwrap();
    let mut cdp = Cdp { ws, next_id: 0 };

    let page = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/chat.html");
    let url = |user: &str| {
        format!(
            "file://{page}?server={}&chat_id={chat}&user_id={user}",
            server.addr
        )
    };
    let ann = cdp.open_page(&url("ann")).await;
    let bob = cdp.open_page(&url("bob")).await;
    for page in [&ann, &bob] {
        cdp.wait_for(page, "document.body.dataset.state === 'open'")
            .await;
    }
    let say = |text: &str| {
        format!("document.getElementById('text').value = {text:?}; document.getElementById('send').click(); true")
    };
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

    let _ = browser.kill().await;
    server.stop().await;
}

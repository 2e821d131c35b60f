//! Broken and hostile input: each gets a clear error, changes nothing, and
//! leaves the server serving everyone else.

mod common;

use chat::pb;
use common::*;
use tonic::{codegen::http::uri::PathAndQuery, Code, Request};

/// SendRequest's fields as raw bytes, so a test can send what a real
/// client library would refuse to: strings that are not UTF-8.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSend {
    #[prost(bytes = "vec", tag = "1")]
    client_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    chat_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    user_id: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    subject: Vec<u8>,
    #[prost(bytes = "vec", tag = "5")]
    text: Vec<u8>,
}

async fn raw_send(server: &TestServer, req: RawSend) -> Result<pb::SendResponse, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<RawSend, pb::SendResponse>::default();
    grpc.unary(
        Request::new(req),
        PathAndQuery::from_static("/chat.Chat/Send"),
        codec,
    )
    .await
    .map(|r| r.into_inner())
}

#[tokio::test]
async fn invalid_utf8_in_any_string_field_is_invalid_argument_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let valid = RawSend {
        client_id: b"c1".to_vec(),
        chat_id: chat.as_bytes().to_vec(),
        user_id: b"ann".to_vec(),
        subject: b"s".to_vec(),
        text: b"t".to_vec(),
    };
    let bad = vec![b'o', b'k', 0xff, 0xfe];
    for field in 0..5 {
        let mut req = valid.clone();
        let fields = [
            &mut req.client_id,
            &mut req.chat_id,
            &mut req.user_id,
            &mut req.subject,
            &mut req.text,
        ];
        if let Some(target) = fields.into_iter().nth(field) {
            *target = bad.clone();
        }
        let err = raw_send(&server, req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "field {field}: {err:?}");
        assert!(
            err.message().starts_with("chat.InvalidMessage: "),
            "{err:?}"
        );
        assert!(err.message().contains("UTF-8"), "says what to fix: {err:?}");
    }
    assert!(all_messages(&mut c, &chat).await.is_empty());
    // The same request with valid strings is fine.
    assert_eq!(
        raw_send(&server, valid).await.unwrap().message.unwrap().seq,
        1
    );
    server.stop().await;
}

/// SendRequest's client_id as a number: the wrong protobuf wire type.
#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    #[prost(uint64, tag = "1")]
    client_id: u64,
}

#[tokio::test]
async fn a_request_of_the_wrong_shape_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let codec = tonic_prost::ProstCodec::<WrongWireType, pb::SendResponse>::default();
    let req = Request::new(WrongWireType { client_id: 42 });
    let err = grpc
        .unary(req, PathAndQuery::from_static("/chat.Chat/Send"), codec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().starts_with("chat.InvalidMessage: "),
        "{err:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_request_above_the_decoding_limit_is_resource_exhausted_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let huge = "x".repeat(4 * 1024 * 1024);
    let err = c
        .send(send_req(&chat, "ann", "c1", &huge))
        .await
        .unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "chat.RequestTooLarge");
    assert!(err.message().contains("limit"), "{}", err.message());
    // The same on a Connect stream...
    let (tx, req) = connect_request(&chat, "ann", None);
    let mut stream = c.connect(req).await.unwrap().into_inner();
    tx.send(pb::Message {
        client_id: "c2".into(),
        text: huge.clone(),
        ..Default::default()
    })
    .await
    .unwrap();
    let err = stream.message().await.unwrap_err();
    assert_error(&err, Code::ResourceExhausted, "chat.RequestTooLarge");
    // ...and as JSON: 413 with the same id.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/chat/Chat/Send", server.addr))
        .header("content-type", "application/json")
        .body(
            serde_json::json!({"chat_id": chat, "user_id": "ann", "client_id": "c3", "text": huge})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["id"], "chat.RequestTooLarge");
    // A message that decodes but is over --max-message-bytes stays INVALID_ARGUMENT.
    let err = c
        .send(send_req(&chat, "ann", "c4", &"y".repeat(65 * 1024)))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Send.TooLarge");
    assert!(all_messages(&mut c, &chat).await.is_empty());
    assert_eq!(
        send(&mut c, &chat, "ann", "c1", "small").await.seq,
        1,
        "still serving"
    );
    server.stop().await;
}

#[tokio::test]
async fn connect_metadata_that_is_not_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let (_tx, mut req) = connect_request(&chat, "", None);
    let binary = tonic::metadata::MetadataValue::try_from(&[b'a', 0xff][..]).unwrap();
    req.metadata_mut().insert("user-id", binary);
    let err = c.connect(req).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Connect.InvalidMetadata");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_opened_and_abandoned_are_all_freed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let channels = [server.channel().await, server.channel().await];
    let mut abandoned = Vec::new();
    for i in 0..1000 {
        let mut client = pb::chat_client::ChatClient::new(channels[i % 2].clone());
        let (tx, req) = connect_request(&chat, "ghost", Some("0"));
        abandoned.push((tx, client.connect(req).await.unwrap()));
    }
    assert_eq!(server.chats.metrics().streams_open.get(), 1000);
    for i in 0..50 {
        send(&mut c, &chat, "ann", &i.to_string(), "nobody reads this").await;
    }
    drop(abandoned);
    drop(channels);
    wait_until(|| server.chats.metrics().streams_open.get() == 0).await;
    assert_eq!(
        send(&mut c, &chat, "ann", "last", "still serving")
            .await
            .seq,
        51
    );
    server.stop().await;
}

/// New, retried while UNAVAILABLE, as clients are told to: on PostgreSQL a
/// flood can wait longer than --pg-statement-timeout for a pooled
/// connection on a loaded machine. Anything else fails the test.
async fn new_chat_retrying(c: &mut Client, users: &[&str]) -> String {
    for _ in 0..20 {
        let req = pb::NewRequest {
            user_ids: users.iter().map(|u| u.to_string()).collect(),
        };
        match c.new_chat(req).await {
            Ok(r) => return r.into_inner().chat_id,
            Err(e) if e.code() == Code::Unavailable => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await
            }
            Err(e) => panic!("{e:?}"),
        }
    }
    panic!("New stayed UNAVAILABLE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_new_calls_is_served_and_one_set_still_gets_one_chat() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut calls = Vec::new();
    for i in 0..64 {
        let mut c = server.client().await;
        calls.push(tokio::spawn(async move {
            let mut open = Vec::new();
            let mut same = Vec::new();
            for _ in 0..30 {
                open.push(new_chat_retrying(&mut c, &[]).await);
                same.push(
                    new_chat_retrying(&mut c, if i % 2 == 0 { &["p", "q"] } else { &["q", "p"] })
                        .await,
                );
            }
            (open, same)
        }));
    }
    let (mut open, mut same) = (Vec::new(), Vec::new());
    for call in calls {
        let (o, s) = call.await.unwrap();
        open.extend(o);
        same.extend(s);
    }
    let n = open.len();
    open.sort();
    open.dedup();
    assert_eq!(open.len(), n, "every open chat is new");
    same.sort();
    same.dedup();
    assert_eq!(same.len(), 1, "one set, one chat");
    server.stop().await;
}

/// One request that panics (a hook compiled only with the
/// `fault-injection` feature, which `scripts/test` enables) fails alone:
/// the server, its other calls and its open streams carry on.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_request_fails_alone_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let (_tx, req) = connect_request(&chat, "watcher", None);
    let mut stream = c.connect(req).await.unwrap().into_inner();
    let err = c
        .send(send_req(&chat, "ann", "boom", "fault-injection: panic"))
        .await
        .unwrap_err();
    assert_ne!(err.code(), Code::Ok);
    let m = send(&mut c, &chat, "ann", "after", "still here").await;
    assert_eq!(m.seq, 1, "the panicking request stored nothing");
    assert_eq!(
        stream.message().await.unwrap().unwrap(),
        m,
        "the open stream still works"
    );
    server.stop().await;
}

#[tokio::test]
async fn chat_ids_are_uuids_as_new_spells_them_and_long_ones_are_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "c1", "hi").await;
    let history = |id: &str| pb::HistoryRequest {
        chat_id: id.into(),
        ..Default::default()
    };
    // Upper case is the same chat.
    let page = c.history(history(&chat.to_uppercase())).await.unwrap();
    assert_eq!(page.into_inner().messages.len(), 1);
    // Other spellings a UUID parser would take name no chat.
    let simple = chat.replace('-', "");
    for other in [
        format!("{{{chat}}}"),
        format!("urn:uuid:{chat}"),
        simple,
        "not-a-chat".to_string(),
    ] {
        let err = c.history(history(&other)).await.unwrap_err();
        assert_error(&err, Code::NotFound, "chat.History.InvalidChatID");
    }
    // 8,000 characters: refused before any lookup, echoed by a short prefix only.
    let long = "x".repeat(8000);
    let err = c.history(history(&long)).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.History.ChatIDTooLong");
    assert!(err.message().len() < 200, "{} bytes", err.message().len());
    let err = c
        .send(send_req(&long, "ann", "c2", "hi"))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Send.ChatIDTooLong");
    let (_tx, req) = connect_request(&long, "ann", None);
    let err = c.connect(req).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Connect.ChatIDTooLong");
    // 60 characters that are no UUID: NOT_FOUND, with a prefix of the id.
    let err = c.history(history(&"y".repeat(60))).await.unwrap_err();
    assert_error(&err, Code::NotFound, "chat.History.InvalidChatID");
    assert!(
        !err.message().contains(&"y".repeat(60)),
        "{}",
        err.message()
    );
    server.stop().await;
}

#[tokio::test]
async fn since_seq_beyond_the_chat_is_out_of_range_and_says_the_last_seq() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    send(&mut c, &chat, "ann", "c1", "one").await;
    send(&mut c, &chat, "ann", "c2", "two").await;
    let (_tx, req) = connect_request(&chat, "ann", Some("3"));
    let err = c.connect(req).await.unwrap_err();
    assert_error(&err, Code::OutOfRange, "chat.Connect.SinceSeqAhead");
    assert!(err.message().contains("last seq, 2"), "{}", err.message());
    // The end itself is fine: nothing yet, then what comes.
    let (_tx, req) = connect_request(&chat, "ann", Some("2"));
    let mut stream = c.connect(req).await.unwrap().into_inner();
    send(&mut c, &chat, "ann", "c3", "three").await;
    assert_eq!(stream.message().await.unwrap().unwrap().seq, 3);
    let ws = tokio_tungstenite::connect_async(format!(
        "ws://{}/chat/Chat/Connect?chat_id={chat}&user_id=ann&since_seq=9",
        server.addr
    ))
    .await;
    match ws {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 400),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
    server.stop().await;
}

#[tokio::test]
async fn ids_with_control_or_bidi_override_characters_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    for bad in [
        "ann\u{1b}[31m",
        "bob\u{202e}nna",
        "eve\u{2066}x",
        "\u{85}x",
        "a\u{7f}",
    ] {
        let err = c
            .new_chat(pb::NewRequest {
                user_ids: vec![bad.into()],
            })
            .await
            .unwrap_err();
        assert_error(&err, Code::InvalidArgument, "chat.New.InvalidUserID");
        let err = c.send(send_req(&chat, bad, "c1", "hi")).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "chat.Send.InvalidUserID");
        let err = c.send(send_req(&chat, "ann", bad, "hi")).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "chat.Send.InvalidClientID");
        let mut req = connect_request(&chat, "", None).1;
        req.metadata_mut().insert_bin(
            "user-id-bin",
            tonic::metadata::MetadataValue::from_bytes(bad.as_bytes()),
        );
        let err = c.connect(req).await.unwrap_err();
        assert_error(&err, Code::InvalidArgument, "chat.Connect.InvalidUserID");
    }
    assert!(all_messages(&mut c, &chat).await.is_empty());
    // Letters of any script are ids like any other.
    send(&mut c, &chat, "José", "c1", "olá").await;
    send(&mut c, &chat, "مريم", "c2", "مرحبا").await;
    server.stop().await;
}

#[tokio::test]
async fn ids_with_invisible_characters_or_a_leading_combining_mark_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["ann"]).await;
    // "ann" + U+200B renders as "ann" and would be a second ann.
    let err = c
        .new_chat(pb::NewRequest {
            user_ids: vec!["ann".into(), "ann\u{200b}".into()],
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.New.InvalidUserID");
    assert!(err.message().contains("U+200B"), "{}", err.message());
    let err = c
        .send(send_req(&chat, "ann", "c\u{feff}1", "hi"))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Send.InvalidClientID");
    assert!(err.message().contains("U+FEFF"), "{}", err.message());
    let err = c
        .new_chat(pb::NewRequest {
            user_ids: vec!["\u{301}ann".into()],
        })
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.New.InvalidUserID");
    assert!(
        err.message().contains("U+0301") && err.message().contains("combining mark"),
        "{}",
        err.message()
    );
    let err = c
        .send(send_req(&chat, "\u{301}ann", "c2", "hi"))
        .await
        .unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Send.InvalidUserID");
    // Nothing stored: no message, and ann is in no chat but the first.
    assert!(all_messages(&mut c, &chat).await.is_empty());
    let inbox = c
        .list_chats(pb::ListChatsRequest {
            user_id: "ann".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let chats: Vec<_> = inbox.chats.iter().map(|s| s.chat_id.as_str()).collect();
    assert_eq!(chats, [chat.as_str()]);
    // A mark after its letter is part of a name.
    send(&mut c, &chat, "ann", "c3", "hi").await;
    new_chat(&mut c, &["Jose\u{301}"]).await;
    server.stop().await;
}

#[tokio::test]
async fn non_ascii_users_connect_with_user_id_bin() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &["José", "ann"]).await;
    let (tx, mut req) = connect_request(&chat, "", Some("0"));
    req.metadata_mut().insert_bin(
        "user-id-bin",
        tonic::metadata::MetadataValue::from_bytes("José".as_bytes()),
    );
    let mut stream = c.connect(req).await.unwrap().into_inner();
    tx.send(pb::Message {
        client_id: "j1".into(),
        text: "olá".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let echo = stream.message().await.unwrap().unwrap();
    assert_eq!((echo.user_id.as_str(), echo.text.as_str()), ("José", "olá"));
    // Both spellings at once is ambiguous.
    let (_tx, mut req) = connect_request(&chat, "ann", None);
    req.metadata_mut().insert_bin(
        "user-id-bin",
        tonic::metadata::MetadataValue::from_bytes("José".as_bytes()),
    );
    let err = c.connect(req).await.unwrap_err();
    assert_error(&err, Code::InvalidArgument, "chat.Connect.InvalidMetadata");
    server.stop().await;
}

#[tokio::test]
async fn websockets_are_accepted_from_the_services_own_pages_and_cors_origins_only() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path()).await;
    config.cors_origins = vec!["https://app.example".into()];
    let server = TestServer::start_with(config).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let url = format!(
        "ws://{}/chat/Chat/Connect?chat_id={chat}&user_id=ann",
        server.addr
    );
    let open = |origin: Option<String>| {
        let mut req = url.clone().into_client_request().unwrap();
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", HeaderValue::from_str(&o).unwrap());
        }
        tokio_tungstenite::connect_async(req)
    };
    assert!(open(None).await.is_ok(), "no Origin: not a browser");
    assert!(
        open(Some(format!("http://{}", server.addr))).await.is_ok(),
        "the service's own page"
    );
    assert!(
        open(Some("https://app.example".into())).await.is_ok(),
        "listed"
    );
    for foreign in ["https://evil.example", "null"] {
        match open(Some(foreign.into())).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), 403, "{foreign}")
            }
            other => panic!("{foreign}: expected 403, got {:?}", other.map(|_| ())),
        }
    }
    server.stop().await;
}

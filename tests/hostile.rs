//! Broken and hostile input: each gets a clear error, changes nothing, and
//! leaves the server serving everyone else.

mod common;

use std::sync::atomic::Ordering::Relaxed;

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
async fn a_frame_above_the_decoding_limit_is_refused_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path()).await;
    let mut c = server.client().await;
    let chat = new_chat(&mut c, &[]).await;
    let huge = "x".repeat(4 * 1024 * 1024);
    let err = c
        .send(send_req(&chat, "ann", "c1", &huge))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
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
    assert_eq!(server.chats.metrics().streams_open.load(Relaxed), 1000);
    for i in 0..50 {
        send(&mut c, &chat, "ann", &i.to_string(), "nobody reads this").await;
    }
    drop(abandoned);
    drop(channels);
    wait_until(|| server.chats.metrics().streams_open.load(Relaxed) == 0).await;
    assert_eq!(
        send(&mut c, &chat, "ann", "last", "still serving")
            .await
            .seq,
        51
    );
    server.stop().await;
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
                open.push(new_chat(&mut c, &[]).await);
                same.push(
                    new_chat(&mut c, if i % 2 == 0 { &["p", "q"] } else { &["q", "p"] }).await,
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

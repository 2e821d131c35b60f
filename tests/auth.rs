//! Verified callers: `--auth jwt` (tokens minted here with jsonwebtoken,
//! keys made at test time) and `--auth header`, over gRPC, HTTP/JSON and the
//! WebSocket; members, outsiders and impostors on every RPC. Runs on both
//! stores (the token check is stateless).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chat::{config::AuthMode, pb};
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tonic::{Code, Request};

const SECRET: &[u8] = b"a-test-secret-of-at-least-32-bytes!!";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token with these claims (exp in an hour unless given).
fn token(claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

fn user(sub: &str) -> String {
    token(json!({ "sub": sub }))
}

/// A server with `--auth jwt --jwt-secret-file` (and `tweak` applied).
async fn jwt_server(dir: &std::path::Path, tweak: impl FnOnce(&mut chat::Config)) -> TestServer {
    let secret = dir.join("jwt-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let mut config = test_config(dir).await;
    config.auth = AuthMode::Jwt;
    config.jwt_secret_file = Some(secret);
    tweak(&mut config);
    TestServer::start_with(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_outsiders_and_impostors_on_every_grpc_call() {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path(), |c| {
        c.jwt_service_scope = Some("chat:service".into())
    })
    .await;
    let mut c = server.client().await;
    let (ann, bob, eve) = (user("ann"), user("bob"), user("eve"));
    let new = |t: &str, users: &[&str]| {
        bearer(
            t,
            pb::NewRequest {
                user_ids: users.iter().map(|u| u.to_string()).collect(),
            },
        )
    };

    // New: only for a set you are in.
    let chat = c
        .new_chat(new(&ann, &["ann", "bob"]))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let err = c.new_chat(new(&ann, &["bob", "cat"])).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.New.NotAMember");
    let err = c
        .new_chat(Request::new(pb::NewRequest::default()))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.MissingToken");

    // Send: as yourself (user_id may be left out), never as another.
    let sent = c
        .send(bearer(&ann, send_req(&chat, "", "c1", "hi bob")))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(sent.user_id, "ann");
    let err = c
        .send(bearer(&ann, send_req(&chat, "bob", "c2", "I am bob")))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Send.WrongUser");
    let err = c
        .send(bearer(&eve, send_req(&chat, "", "c3", "let me in")))
        .await
        .unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Send.NotAMember");

    // History: members only.
    let history = |t: &str| {
        bearer(
            t,
            pb::HistoryRequest {
                chat_id: chat.clone(),
                ..Default::default()
            },
        )
    };
    assert_eq!(
        c.history(history(&bob))
            .await
            .unwrap()
            .into_inner()
            .messages
            .len(),
        1
    );
    let err = c.history(history(&eve)).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.History.NotAMember");

    // Connect: user-id may be left out (then it is the caller); never another's.
    let connect = |t: &str, user: &str| {
        let (tx, req) = connect_request(&chat, user, Some("0"));
        let mut req = req;
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
        (tx, req)
    };
    let (_tx, req) = connect(&bob, "");
    let mut rx = c.connect(req).await.unwrap().into_inner();
    assert_eq!(rx.message().await.unwrap().unwrap().text, "hi bob");
    let (_tx, req) = connect(&ann, "bob");
    let err = c.connect(req).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Connect.WrongUser");
    let (_tx, req) = connect(&eve, "");
    let err = c.connect(req).await.unwrap_err();
    assert_error(&err, Code::PermissionDenied, "chat.Connect.NotAMember");

    // A service may act for anyone.
    let service = token(json!({"sub": "backend", "scope": "openid chat:service"}));
    let m = c
        .send(bearer(
            &service,
            send_req(&chat, "bob", "s1", "on bob's behalf"),
        ))
        .await
        .unwrap()
        .into_inner()
        .message
        .unwrap();
    assert_eq!(m.user_id, "bob");
    assert_eq!(
        c.history(history(&service))
            .await
            .unwrap()
            .into_inner()
            .messages
            .len(),
        2
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_and_say_which_check_failed() {
    let dir = tempfile::tempdir().unwrap();
    // An EC key made now: the server trusts its public half only.
    let key = rcgen::KeyPair::generate().unwrap();
    let public = dir.path().join("jwt.pub.pem");
    std::fs::write(&public, key.public_key_pem()).unwrap();
    let server = jwt_server(dir.path(), |c| {
        c.jwt_secret_file = None;
        c.jwt_public_key_file = Some(public.clone());
        c.jwt_issuer = Some("https://idp.test".into());
        c.jwt_audience = Some("chat".into());
    })
    .await;
    let es = |claims: Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::ES256),
            &claims,
            &EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
        )
        .unwrap()
    };
    let good = json!({"sub": "ann", "iss": "https://idp.test", "aud": "chat", "exp": now() + 600});
    let with = |k: &str, v: Value| {
        let mut c = good.clone();
        c[k] = v;
        c
    };
    let other_key = rcgen::KeyPair::generate().unwrap();
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::ES256),
        &good,
        &EncodingKey::from_ec_pem(other_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    // HS256 "signed" with the server's public key as the secret: key confusion.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good,
        &EncodingKey::from_secret(key.public_key_pem().as_bytes()),
    )
    .unwrap();
    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let alg_none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&good)
    );
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let cases = [
        (es(with("exp", json!(now() - 60))), "expired"),
        (es(with("nbf", json!(now() + 600))), "not valid yet"),
        (forged, "signature"),
        (es(with("iss", json!("https://evil.test"))), "issuer"),
        (es(with("aud", json!("another-service"))), "audience"),
        (confused, "algorithm"),
        (alg_none, "not a JWT"),
        (es(no_exp), "expiry"),
        (es(with("sub", json!(""))), "claim naming the user"),
        ("garbage".to_string(), "not a JWT"),
    ];
    let mut c = server.client().await;
    assert!(c
        .new_chat(bearer(&es(good.clone()), pb::NewRequest::default()))
        .await
        .is_ok());
    for (bad, why) in cases {
        let err = c
            .new_chat(bearer(&bad, pb::NewRequest::default()))
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
        assert!(err.message().contains(why), "{why}: {err:?}");
        assert!(!err.message().contains(&bad), "the token is never echoed");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_websocket_take_the_token_from_a_header_a_subprotocol_or_the_query() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path(), |_| {}).await;
    let (ann, bob, eve) = (user("ann"), user("bob"), user("eve"));
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut req = reqwest::Client::new()
            .post(format!("http://{}/chat/Chat/{path}", server.addr))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        req.send()
    };
    let resp = post("New", None, json!({})).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");
    let resp = post("New", Some("nonsense"), json!({})).await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let body: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body["id"], "chat.Auth.InvalidToken");
    let resp = post("New", Some(&ann), json!({"user_ids": ["ann", "bob"]}))
        .await
        .unwrap();
    let json = |text: String| serde_json::from_str::<Value>(&text).unwrap();
    let chat = json(resp.text().await.unwrap())["chat_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = post("Send", Some(&ann), json!({"chat_id": chat, "text": "hi"}))
        .await
        .unwrap();
    assert_eq!(
        json(resp.text().await.unwrap())["message"]["user_id"],
        "ann"
    );
    let resp = post(
        "Send",
        Some(&ann),
        json!({"chat_id": chat, "user_id": "bob", "text": "x"}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 403);
    let resp = post("History", Some(&eve), json!({"chat_id": chat}))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 403);

    let url = |query: &str| {
        format!(
            "ws://{}/chat/Chat/Connect?chat_id={chat}{query}",
            server.addr
        )
    };
    // The header...
    let mut req = url("&since_seq=0").into_client_request().unwrap();
    req.headers_mut().insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {bob}")).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .expect("the stream replays the chat")
        .unwrap()
        .unwrap();
    let first: Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(first["text"], "hi");
    // ...a subprotocol, as a browser sends it (the server picks chat.v1)...
    let mut req = url("&since_seq=0").into_client_request().unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("chat.v1, bearer.{bob}")).unwrap(),
    );
    let (_ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat.v1");
    // ...or the query.
    tokio_tungstenite::connect_async(url(&format!("&since_seq=0&access_token={bob}")))
        .await
        .unwrap();
    // Refusals before the upgrade: 401 without a token, 403 for an outsider.
    for (query, status) in [(String::new(), 401), (format!("&access_token={eve}"), 403)] {
        match tokio_tungstenite::connect_async(url(&query))
            .await
            .unwrap_err()
        {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status().as_u16(), status, "{query}")
            }
            other => panic!("{other:?}"),
        }
    }
    drop(ws);
    server.stop().await;
}

/// Opens a stream with a token expiring at `exp` (a JSON number) and
/// returns how it ended, within 10 s.
async fn stream_end_with_exp(exp: Value) -> tonic::Status {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path(), |c| c.jwt_leeway = 0).await;
    let mut c = server.client().await;
    let chat = c
        .new_chat(bearer(&user("ann"), pb::NewRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let short = token(json!({"sub": "ann", "exp": exp}));
    let (_tx, mut req) = connect_request(&chat, "", None);
    req.metadata_mut()
        .insert("authorization", format!("Bearer {short}").parse().unwrap());
    let mut rx = c.connect(req).await.unwrap().into_inner();
    let err = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .expect("the stream ends once the token expires")
        .unwrap_err();
    server.stop().await;
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_stream_ends_unauthenticated_when_its_token_expires() {
    let err = stream_end_with_exp(json!(now() + 2)).await;
    assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
    assert!(err.message().contains("since-seq"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_mode_takes_the_identity_from_the_sidecar_header_and_tokens_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        dir.path(),
        &["--auth", "header", "--auth-header", "X-User-Id"],
    )
    .await;
    let mut c = bin.client().await;
    fn as_ann<T>(req: T) -> Request<T> {
        let mut req = Request::new(req);
        req.metadata_mut()
            .insert("x-user-id", "ann".parse().unwrap());
        req
    }
    let chat = c
        .new_chat(as_ann(pb::NewRequest {
            user_ids: vec!["ann".into(), "bob".into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let m = c
        .send(as_ann(send_req(&chat, "", "h1", "from the sidecar's ann")))
        .await
        .unwrap();
    assert_eq!(m.into_inner().message.unwrap().user_id, "ann");
    let err = c
        .send(Request::new(send_req(&chat, "ann", "h2", "no header")))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.MissingToken");

    // A JWT server's log after good and bad tokens holds none of them.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let jwt_dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        jwt_dir.path(),
        &[
            "--auth",
            "jwt",
            "--jwt-secret-file",
            secret.to_str().unwrap(),
            "--jwt-service-scope",
            "chat:service",
        ],
    )
    .await;
    let mut c = bin.client().await;
    let (good, expired) = (
        user("ann"),
        token(json!({"sub": "ann", "exp": now() - 100})),
    );
    let open = c
        .new_chat(bearer(&good, pb::NewRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let service = token(json!({"sub": "backend", "scope": "chat:service"}));
    c.send(bearer(&service, send_req(&open, "bob", "s", "for bob")))
        .await
        .unwrap();
    c.new_chat(bearer(&expired, pb::NewRequest::default()))
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = bin.log_text();
    assert!(
        log.contains("chat.Auth.InvalidToken"),
        "refusals are logged: {log}"
    );
    assert!(
        log.contains("a service acting for a user") && log.contains("\"service\":\"backend\""),
        "a service's acts are logged with its identity: {log}"
    );
    for t in [&good, &expired, &service] {
        assert!(!log.contains(t.as_str()), "a token in the log: {log}");
        let signature = t.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token's signature in the log");
    }
}

/// The probe's finding: with `--jwt-audience` / `--jwt-issuer` set, a token
/// without the claim at all used to pass (only a wrong value was refused),
/// and a missing claim was reported as a missing expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_audience_or_issuer_is_required_and_a_missing_one_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path(), |c| {
        c.jwt_issuer = Some("https://idp.test".into());
        c.jwt_audience = Some("chat".into());
    })
    .await;
    let mut c = server.client().await;
    let good = json!({"sub": "ann", "iss": "https://idp.test", "aud": "chat"});
    c.new_chat(bearer(&token(good.clone()), pb::NewRequest::default()))
        .await
        .unwrap();
    for (claim, why) in [("aud", "no audience (aud)"), ("iss", "no issuer (iss)")] {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(claim);
        let err = c
            .new_chat(bearer(&token(claims), pb::NewRequest::default()))
            .await
            .unwrap_err();
        assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
        assert!(err.message().contains(why), "{claim}: {err:?}");
    }
    server.stop().await;

    // Without an audience, the server says at startup what that accepts.
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let bin_dir = tempfile::tempdir().unwrap();
    let args = [
        "--auth",
        "jwt",
        "--jwt-secret-file",
        secret.to_str().unwrap(),
    ];
    let bin = Binary::start(bin_dir.path(), &args).await;
    wait_until(|| bin.log_text().contains("without --jwt-audience")).await;
    drop(bin);
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        bin_dir.path(),
        &[&args[..], &["--jwt-audience", "chat"]].concat(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bin.log_text().contains("without --jwt-audience"));
}

/// RFC 7515 4.1.11: a `crit` header naming an extension the server does
/// not understand must be rejected (this server understands none).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_critical_extensions_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path(), |_| {}).await;
    let mut c = server.client().await;
    let mut header = Header::new(Algorithm::HS256);
    header.crit = Some(vec!["http://example.test/must-understand".into()]);
    header
        .extras
        .insert("http://example.test/must-understand", true);
    let crit = jsonwebtoken::encode(
        &header,
        &json!({"sub": "ann", "exp": now() + 600}),
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap();
    let err = c
        .new_chat(bearer(&crit, pb::NewRequest::default()))
        .await
        .unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
    assert!(err.message().contains("crit"), "{err:?}");
    server.stop().await;
}

/// An `exp` with a fraction is a valid NumericDate (RFC 7519 2): the
/// stream it opens ends when it expires, as with a whole `exp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_when_a_fractional_exp_passes() {
    let err = stream_end_with_exp(json!(now() as f64 + 2.5)).await;
    assert_error(&err, Code::Unauthenticated, "chat.Auth.InvalidToken");
}

/// An `exp` past what the clock can count (2^64-1) used to panic the
/// Connect handler and leave the open-streams gauge counting a stream that
/// was gone: the stream works, and the gauge follows its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_valid_for_ever_opens_a_stream_and_the_gauge_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = jwt_server(dir.path(), |_| {}).await;
    let mut c = server.client().await;
    let forever = token(json!({"sub": "ann", "exp": u64::MAX}));
    let chat = c
        .new_chat(bearer(&forever, pb::NewRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .chat_id;
    let (tx, mut req) = connect_request(&chat, "", Some("0"));
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {forever}").parse().unwrap(),
    );
    let mut rx = c.connect(req).await.unwrap().into_inner();
    c.send(bearer(&forever, send_req(&chat, "", "f1", "still here")))
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got.text, "still here");
    assert_eq!(server.chats.metrics().streams_open.get(), 1);
    drop((tx, rx)); // the call is cancelled
    wait_until(|| server.chats.metrics().streams_open.get() == 0).await;
    server.stop().await;
}

/// With `--auth header`, a request carrying the identity header twice
/// (a client's copy the sidecar appended to) used to be the first copy's
/// user: now refused, over gRPC and HTTP/1, as are two bearer tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_copies_of_the_identity_header_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bin = Binary::start(
        dir.path(),
        &["--auth", "header", "--auth-header", "x-user-id"],
    )
    .await;
    let mut c = bin.client().await;
    let mut req = Request::new(pb::NewRequest::default());
    req.metadata_mut()
        .append("x-user-id", "ann".parse().unwrap());
    req.metadata_mut()
        .append("x-user-id", "mallory".parse().unwrap());
    let err = c.new_chat(req).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.DuplicateHeader");
    assert!(err.message().contains("x-user-id"), "{err:?}");

    let http = reqwest::Client::new();
    let url = format!("http://{}/chat/Chat/New", bin.addr);
    let refused = http
        .post(&url)
        .header("x-user-id", "ann")
        .header("x-user-id", "mallory")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let body = refused.text().await.unwrap();
    assert!(body.contains("chat.Auth.DuplicateHeader"), "{body}");
    let one = http
        .post(&url)
        .header("x-user-id", "ann")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(one.status(), 200, "{:?}", one.text().await);

    // Loopback is where a header-mode server belongs; elsewhere it warns.
    assert!(!bin.log_text().contains("--auth header on a non-loopback"));
    let dir = tempfile::tempdir().unwrap();
    let wide = Binary::start_on(
        dir.path(),
        "0.0.0.0:0",
        &["--auth", "header", "--auth-header", "x-user-id"],
    )
    .await;
    wait_until(|| wide.log_text().contains("--auth header on a non-loopback")).await;

    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let jwt_dir = tempfile::tempdir().unwrap();
    let jwt = TestServer::start_with({
        let mut config = test_config(jwt_dir.path()).await;
        config.auth = AuthMode::Jwt;
        config.jwt_secret_file = Some(secret);
        config
    })
    .await;
    let mut c = jwt.client().await;
    let mut req = Request::new(pb::NewRequest::default());
    for who in ["ann", "bob"] {
        req.metadata_mut().append(
            "authorization",
            format!("Bearer {}", user(who)).parse().unwrap(),
        );
    }
    let err = c.new_chat(req).await.unwrap_err();
    assert_error(&err, Code::Unauthenticated, "chat.Auth.DuplicateHeader");
    jwt.stop().await;
}

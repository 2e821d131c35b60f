//! The wire contract, checked by buf (buf.yaml): proto/chat.proto passes
//! `buf lint` and `buf breaking` against both baselines in proto/compat, and
//! each kind of breaking change — a field renumbered, retyped, renamed or
//! removed, an RPC removed — makes `buf breaking` fail, so the check can
//! fail. buf comes from `CHAT_TEST_BUF` (scripts/test installs a pinned one
//! with npm) or the PATH; without it these tests fail, they do not skip.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

fn buf() -> PathBuf {
    if let Some(path) = std::env::var_os("CHAT_TEST_BUF") {
        return path.into();
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("buf"))
            .find(|b| b.is_file())
    });
    on_path.expect(
        "buf is needed: run scripts/test (it installs the pinned @bufbuild/buf with npm), \
         or set CHAT_TEST_BUF to a buf binary",
    )
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(dir: &Path, args: &[&str]) -> Output {
    Command::new(buf())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("buf runs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `buf breaking` of `proto` (the text of a chat.proto) against `baseline`,
/// with the repository's breaking rules.
fn breaking(proto: &str, baseline: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("chat.proto"), proto).unwrap();
    let rules = std::fs::read_to_string(repo().join("buf.yaml")).unwrap();
    let breaking_rules = &rules[rules
        .find("breaking:")
        .expect("buf.yaml has breaking rules")..];
    std::fs::write(
        dir.path().join("buf.yaml"),
        format!("version: v2\n{breaking_rules}"),
    )
    .unwrap();
    let against = repo().join(baseline);
    run(
        dir.path(),
        &["breaking", ".", "--against", against.to_str().unwrap()],
    )
}

fn chat_proto() -> String {
    std::fs::read_to_string(repo().join("proto/chat.proto")).unwrap()
}

#[test]
fn the_proto_passes_buf_lint_and_keeps_both_baselines() {
    let out = run(repo(), &["lint"]);
    assert!(out.status.success(), "buf lint:\n{}", text(&out));
    for baseline in ["proto/compat/original.proto", "proto/compat/released.proto"] {
        let out = run(repo(), &["breaking", "proto", "--against", baseline]);
        assert!(out.status.success(), "against {baseline}:\n{}", text(&out));
        // The same check through this test's own setup passes too, so the
        // failures below are the edits' doing.
        let out = breaking(&chat_proto(), baseline);
        assert!(out.status.success(), "against {baseline}:\n{}", text(&out));
    }
}

#[test]
fn buf_breaking_fails_when_a_field_or_an_rpc_of_the_original_contract_changes() {
    let proto = chat_proto();
    let edits = [
        ("renumbered", "string text = 7;", "string text = 17;"),
        ("retyped", "int64 sent_at = 5;", "string sent_at = 5;"),
        ("renamed", "string client_id = 1;", "string client_key = 1;"),
        ("removed", "repeated string user_ids = 1;", ""),
    ];
    for (what, from, to) in edits {
        assert!(proto.contains(from), "chat.proto no longer has {from:?}");
        let out = breaking(&proto.replacen(from, to, 1), "proto/compat/original.proto");
        assert!(
            !out.status.success(),
            "a {what} field ({from:?} -> {to:?}) passed buf breaking"
        );
    }
    // An RPC removed: the whole `rpc History(...)` declaration, up to its end.
    let start = proto
        .find("  rpc History(")
        .expect("chat.proto has rpc History");
    let end = start + proto[start..].find("{}").expect("rpc History ends with {}") + 2;
    let without = format!("{}{}", &proto[..start], &proto[end..]);
    for baseline in ["proto/compat/original.proto", "proto/compat/released.proto"] {
        let out = breaking(&without, baseline);
        assert!(
            !out.status.success(),
            "removing rpc History passed buf breaking against {baseline}"
        );
        assert!(text(&out).contains("History"), "{}", text(&out));
    }
}

#[test]
fn the_released_baseline_is_a_snapshot_of_chat_proto_with_its_header() {
    // Not a requirement that they be equal (the proto may grow after a
    // release), only that the snapshot is a proto of the same service.
    let released = std::fs::read_to_string(repo().join("proto/compat/released.proto")).unwrap();
    assert!(released.starts_with("// A snapshot of proto/chat.proto as last released"));
    assert!(released.contains("package chat;") && released.contains("service Chat {"));
}

/// The OpenAPI document (api/openapi.json, served at /openapi.json) names
/// every RPC of the HTTP/JSON interface and every field of its messages, as
/// the proto declares them: a field or an RPC added to the proto without
/// the document fails here.
#[test]
fn the_openapi_document_has_every_rpc_and_field_of_the_proto() {
    use prost::Message as _;
    let doc: serde_json::Value = serde_json::from_str(chat::OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let on_disk = std::fs::read_to_string(repo().join("api/openapi.json")).unwrap();
    assert_eq!(on_disk, chat::OPENAPI, "the served document is the file");
    let set = prost_types::FileDescriptorSet::decode(chat::pb::FILE_DESCRIPTOR_SET).unwrap();
    let file = set
        .file
        .iter()
        .find(|f| f.package() == "chat")
        .expect("chat.proto in the descriptor set");
    let message = |name: &str| {
        file.message_type
            .iter()
            .find(|m| m.name() == name)
            .unwrap_or_else(|| panic!("no message {name} in chat.proto"))
    };
    let schemas = &doc["components"]["schemas"];
    let mut checked = Vec::new();
    let mut check_message = |name: &str| {
        let schema = &schemas[name];
        assert!(schema.is_object(), "no schema {name} in api/openapi.json");
        for field in &message(name).field {
            assert!(
                schema["properties"][field.name()].is_object(),
                "api/openapi.json: schema {name} has no property {} (proto field {})",
                field.name(),
                field.number()
            );
        }
        checked.push(name.to_owned());
    };
    let service = file.service.iter().find(|s| s.name() == "Chat").unwrap();
    for method in &service.method {
        let short = |t: &str| t.trim_start_matches(".chat.").to_owned();
        let (input, output) = (short(method.input_type()), short(method.output_type()));
        check_message(&input);
        check_message(&output);
        if method.client_streaming() || method.server_streaming() {
            // Streams are WebSockets over HTTP: described in words.
            let words = doc["info"]["description"].as_str().unwrap();
            assert!(
                words.contains(&format!("/chat/Chat/{}", method.name())),
                "api/openapi.json does not describe the {} WebSocket",
                method.name()
            );
            continue;
        }
        let path = &doc["paths"][format!("/chat/Chat/{}", method.name())]["post"];
        assert!(
            path.is_object(),
            "api/openapi.json has no POST /chat/Chat/{}",
            method.name()
        );
        assert_eq!(path["operationId"], method.name());
        let schema_of =
            |v: &serde_json::Value| v["content"]["application/json"]["schema"]["$ref"].clone();
        assert_eq!(
            schema_of(&path["requestBody"]),
            format!("#/components/schemas/{input}")
        );
        assert_eq!(
            schema_of(&path["responses"]["200"]),
            format!("#/components/schemas/{output}")
        );
    }
    check_message("Message");
    check_message("ChatSummary");
    check_message("ReadPosition");
    assert!(checked.len() >= 24, "{checked:?}");
}

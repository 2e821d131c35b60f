//! Compiles `proto/chat.proto` with protox (pure Rust, so no system `protoc` is
//! needed) and generates the prost messages and tonic service code from it.
//! The encoded descriptor set is written to `$OUT_DIR/chat_descriptor.bin` for
//! server reflection; it keeps the source comments so `grpcurl describe` shows them.
//! pbjson-build generates the serde code (`chat.serde.rs`) for HTTP/JSON.

use std::{env, fs, path::PathBuf};

use protox::prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    git_commit();
    let fds = protox::compile(["chat.proto"], ["proto"])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor = fds.encode_to_vec();
    fs::write(out_dir.join("chat_descriptor.bin"), &descriptor)?;
    // serde for the HTTP/JSON interface: proto3 JSON, proto field names on
    // output (as the original service's examples), either name on input.
    pbjson_build::Builder::new()
        .register_descriptors(&descriptor)?
        .preserve_proto_field_names()
        .build(&[".chat"])?;

    // The client is generated separately: tonic names client methods after
    // the RPCs, and `New` would collide with the client's `new(inner)`
    // constructor (and `Connect` with `connect(dst)`, hence no transport
    // helpers). The manual builder lets the Rust name differ from the route.
    let service = fds
        .file
        .iter()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "Chat")
        .ok_or("chat.proto has no service Chat")?;
    let mut client = tonic_build::manual::Service::builder()
        .name("Chat")
        .package("chat");
    for m in &service.method {
        let rust_name = match m.name() {
            "New" => "new_chat".to_owned(),
            other => snake_case(other),
        };
        let mut method = tonic_build::manual::Method::builder()
            .name(rust_name)
            .route_name(m.name())
            .input_type(format!(
                "crate::pb{}",
                m.input_type().replace(".chat.", "::")
            ))
            .output_type(format!(
                "crate::pb{}",
                m.output_type().replace(".chat.", "::")
            ))
            .codec_path("tonic_prost::ProstCodec");
        if m.client_streaming() {
            method = method.client_streaming();
        }
        if m.server_streaming() {
            method = method.server_streaming();
        }
        client = client.method(method.build());
    }
    tonic_build::manual::Builder::new()
        .build_server(false)
        .build_transport(false)
        .compile(&[client.build()]);

    tonic_prost_build::configure()
        .build_client(false)
        // Decode errors as INVALID_ARGUMENT, smaller buffers: see src/wire/codec.rs.
        .codec_path("crate::wire::codec::ChatCodec")
        .compile_fds(fds)?;
    Ok(())
}

/// `CHAT_GIT_COMMIT`: the commit the binary is built from, for `chat
/// --version` ("unknown" outside a git checkout, e.g. from a source tarball).
fn git_commit() {
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=CHAT_GIT_COMMIT={commit}");
    // A new commit moves the checked-out branch's ref (or HEAD itself when
    // detached). Only that branch's: watching every branch would rebuild
    // the crate whenever another worktree of the repository commits.
    let head = std::fs::read_to_string(".git/HEAD").unwrap_or_default();
    let branch = head
        .strip_prefix("ref: ")
        .map(|r| format!(".git/{}", r.trim()));
    for path in [
        Some(".git/HEAD".to_owned()),
        branch,
        Some(".git/packed-refs".into()),
    ]
    .into_iter()
    .flatten()
    {
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// `ListChats` as `list_chats`: the Rust name of a client method.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

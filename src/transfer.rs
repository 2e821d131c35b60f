//! Maintenance commands: `chat migrate [--check]`, `chat export` and
//! `chat import`, which move a deployment from one store to another (sled to
//! PostgreSQL, say) as JSON lines, keeping every chat id, member set,
//! message id, seq, sent_at and idempotency key (user_id + client_id).
//!
//! The format, one object per line, each chat before its messages:
//! ```text
//! {"chat":{"chat_id":"…","members":["ann","bob"],"created_at":1795…}}
//! {"message":{"chat_id":"…","seq":1,"id":"…","user_id":"ann","client_id":"c-1","sent_at":1795…,"subject":"","text":"hi"}}
//! ```
//! Import leaves what is already stored as it is, so running it twice
//! changes nothing the second time.

use crate::store::Backend as _;
use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    config::{Command, StoreSpec},
    model::{ChatRecord, Message},
    store::{postgres::PgStore, Store, StoreError},
    Config,
};

/// Messages read or written per round trip.
const CHUNK: usize = 1000;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Line {
    Chat(ChatLine),
    Message(MessageLine),
}

#[derive(Serialize, Deserialize)]
struct ChatLine {
    chat_id: Uuid,
    members: Vec<String>,
    created_at: i64,
}

#[derive(Serialize, Deserialize)]
struct MessageLine {
    chat_id: Uuid,
    seq: u64,
    id: String,
    user_id: String,
    client_id: String,
    sent_at: i64,
    subject: String,
    text: String,
    /// An edit (1) or delete (2) event; absent for a message.
    #[serde(default, skip_serializing_if = "is_zero")]
    kind: i32,
    /// An event's message.
    #[serde(default, skip_serializing_if = "is_zero")]
    target_seq: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    edited_at: i64,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    deleted: bool,
    /// Hex digest of the first subject and text, once changed (so that a
    /// retry of the original request stays a retry after the move).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    original: String,
}

fn is_zero<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Runs a maintenance command against the configured store.
///
/// # Errors
/// A store that cannot be opened or written, or a malformed input line
/// (with its line number).
pub async fn command(config: &Config, command: Command) -> Result<(), String> {
    match command {
        Command::Migrate { check } => migrate(config, check).await,
        Command::Export => {
            let store = open(config).await?;
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let (chats, messages) = export(&store, &mut out).await?;
            out.flush().map_err(|e| e.to_string())?;
            tracing::info!(chats, messages, "exported");
            Ok(())
        }
        Command::Import => {
            let store = open(config).await?;
            let stdin = std::io::stdin();
            let (chats, messages) = import(&store, stdin.lock()).await?;
            store.flush().await.map_err(|e| e.to_string())?;
            tracing::info!(chats, messages, "imported (already present: left as is)");
            Ok(())
        }
    }
}

async fn open(config: &Config) -> Result<Store, String> {
    let spec = config.store_spec()?;
    crate::open_store(config, &spec)
        .await
        .map_err(|e| e.to_string())
}

async fn migrate(config: &Config, check: bool) -> Result<(), String> {
    let opts = match config.store_spec()? {
        StoreSpec::Postgres(opts) => opts,
        StoreSpec::Sled(_) => {
            println!("the sled store has no schema to migrate");
            return Ok(());
        }
    };
    let store = PgStore::lazy(&opts).map_err(|e| e.to_string())?;
    let status = store.migrate(!check).await.map_err(|e| e.to_string())?;
    println!("schema version: {}", status.version);
    if status.pending.is_empty() {
        println!("pending migrations: none");
    } else {
        println!("pending migrations:");
        for (v, name) in &status.pending {
            println!("  {v}: {name}");
        }
    }
    Ok(())
}

/// Writes every chat and its messages; returns (chats, messages) written.
async fn export(store: &Store, out: &mut impl Write) -> Result<(u64, u64), String> {
    let (mut chats, mut messages) = (0, 0);
    let mut after = None;
    loop {
        let page = store
            .chats_after(after, CHUNK)
            .await
            .map_err(|e| e.to_string())?;
        let Some((last, _)) = page.last() else {
            return Ok((chats, messages));
        };
        after = Some(*last);
        for (chat_id, record) in page {
            write_line(
                out,
                &Line::Chat(ChatLine {
                    chat_id,
                    members: record.members,
                    created_at: record.created_at,
                }),
            )?;
            chats += 1;
            let mut next = 1;
            loop {
                let batch = store
                    .read(&chat_id, next, u64::MAX, CHUNK, usize::MAX)
                    .await
                    .map_err(|e| e.to_string())?;
                let Some(last) = batch.last() else { break };
                next = last.seq + 1;
                for m in batch {
                    write_line(
                        out,
                        &Line::Message(MessageLine {
                            chat_id,
                            seq: m.seq,
                            id: m.id,
                            user_id: m.user_id,
                            client_id: m.client_id,
                            sent_at: m.sent_at,
                            subject: m.subject,
                            text: m.text,
                            kind: m.kind.number(),
                            target_seq: m.target,
                            edited_at: m.edited_at,
                            deleted: m.deleted,
                            original: hex(&m.original),
                        }),
                    )?;
                    messages += 1;
                }
            }
        }
    }
}

fn write_line(out: &mut impl Write, line: &Line) -> Result<(), String> {
    serde_json::to_writer(&mut *out, line).map_err(|e| e.to_string())?;
    out.write_all(b"\n").map_err(|e| e.to_string())
}

/// Reads an export; returns (chats, messages) read. Messages are written in
/// chunks per chat, in the order read.
async fn import(store: &Store, input: impl BufRead) -> Result<(u64, u64), String> {
    let (mut chats, mut messages) = (0, 0);
    let mut pending: Vec<Message> = Vec::new();
    // The seq each chat's next message must have: an export's seqs are
    // 1, 2, 3, … per chat, and a gap would stall every stream at it.
    let mut next_seq: std::collections::HashMap<Uuid, u64> = std::collections::HashMap::new();
    // Messages so far per chat: each entry's count (`Message::n`).
    let mut counts: std::collections::HashMap<Uuid, u64> = std::collections::HashMap::new();
    for (n, line) in input.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", n + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let parsed: Line =
            serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", n + 1))?;
        let flush_first = match &parsed {
            Line::Chat(_) => true,
            Line::Message(m) => {
                pending.len() >= CHUNK || pending.last().is_some_and(|p| p.chat != m.chat_id)
            }
        };
        if flush_first && !pending.is_empty() {
            store
                .import_messages(std::mem::take(&mut pending))
                .await
                .map_err(|e| format!("before line {}: {e}", n + 1))?;
        }
        match parsed {
            Line::Chat(c) => {
                next_seq.insert(c.chat_id, 1);
                let mut members = c.members;
                members.sort_unstable();
                members.dedup();
                store
                    .import_chat(
                        c.chat_id,
                        &ChatRecord {
                            members,
                            created_at: c.created_at,
                            created_us: c.created_at.saturating_mul(1_000_000),
                        },
                    )
                    .await
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                chats += 1;
            }
            Line::Message(m) => {
                let Some(expected) = next_seq.get_mut(&m.chat_id) else {
                    return Err(format!(
                        "line {}: a message of chat {} before that chat's line",
                        n + 1,
                        m.chat_id
                    ));
                };
                if m.seq != *expected {
                    return Err(format!(
                        "line {}: chat {} has seq {} where {} was expected: an export's \
                         seqs are 1, 2, 3, … per chat, after the chat's line",
                        n + 1,
                        m.chat_id,
                        m.seq,
                        expected
                    ));
                }
                *expected += 1;
                let kind = crate::model::Kind::stored(m.kind);
                let count = counts.entry(m.chat_id).or_default();
                if kind == crate::model::Kind::Message {
                    *count += 1;
                }
                let original = unhex(&m.original)
                    .ok_or_else(|| format!("line {}: original is not hex", n + 1))?;
                pending.push(Message {
                    id: m.id,
                    client_id: m.client_id,
                    chat: m.chat_id,
                    user_id: m.user_id,
                    sent_at: m.sent_at,
                    subject: m.subject,
                    text: m.text,
                    seq: m.seq,
                    kind,
                    target: m.target_seq,
                    edited_at: m.edited_at,
                    deleted: m.deleted,
                    n: *count,
                    at_us: m.sent_at.saturating_mul(1_000_000),
                    original,
                });
                messages += 1;
            }
        }
    }
    if !pending.is_empty() {
        store
            .import_messages(pending)
            .await
            .map_err(|e: StoreError| e.to_string())?;
    }
    Ok((chats, messages))
}

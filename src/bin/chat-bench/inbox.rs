//! Scenario 12: the inbox at scale. One user in 1,000, then 10,000, then
//! 100,000 chats, each with a message from the other member; how long
//! ListChats takes for the first page at each size. The ceiling is the
//! page at 1,000 chats: a page should cost what it holds, not what the
//! inbox holds (target: p50 at 100,000 ≤ 2× p50 at 1,000). Scenario 9 runs
//! the same on PostgreSQL.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use chat::pb;

use super::{load, report::row, send_req, BoxError, Client, Report};

/// The inbox sizes measured, in order (each fill adds to the one before).
pub const SIZES: [u64; 3] = [1_000, 10_000, 100_000];
/// The page asked for.
const PAGE: u32 = 50;

/// Fills `inbox`'s chats to each of [`SIZES`] in turn through `clients`
/// (64 at once), adding a row per size to `report` under `scenario`.
pub async fn inbox_rows(
    report: &mut Report,
    scenario: u32,
    store: &str,
    clients: &[Client],
    secs: f64,
) -> Result<(), BoxError> {
    let next = Arc::new(AtomicU64::new(0));
    let mut smallest = None;
    for size in SIZES {
        let mut fill = Vec::new();
        for w in 0..64 {
            let (mut c, next) = (clients[w % clients.len()].clone(), next.clone());
            fill.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= size {
                        return Ok::<_, tonic::Status>(());
                    }
                    let peer = format!("peer{i}");
                    let chat = c
                        .new_chat(pb::NewRequest {
                            user_ids: vec!["inbox".into(), peer.clone()],
                        })
                        .await?
                        .into_inner()
                        .chat_id;
                    c.send(send_req(&chat, &peer, "hi".into(), format!("hello {i}")))
                        .await?;
                }
            }));
        }
        for f in fill {
            f.await??;
        }
        next.store(size, Relaxed);
        let c = clients[0].clone();
        let stats = load(1, secs.max(2.0), move |_, _| {
            let mut c = c.clone();
            async move {
                let inbox = c
                    .list_chats(pb::ListChatsRequest {
                        user_id: "inbox".into(),
                        limit: PAGE,
                        cursor: String::new(),
                    })
                    .await?
                    .into_inner();
                if inbox.chats.len() != PAGE as usize || inbox.chats[0].unread != 1 {
                    return Err("not a full page of unread chats".into());
                }
                Ok(())
            }
        })
        .await;
        let mut r = row(
            scenario,
            format!("{store}: ListChats first {PAGE} of {size} chats"),
            "p50 latency",
            stats.p50_us,
            "us",
        );
        let first = *smallest.get_or_insert(stats.p50_us);
        if size != SIZES[0] {
            r.ceiling = Some(first);
        }
        if size == SIZES[SIZES.len() - 1] {
            r.target = Some((
                format!("p50 <= 2x p50 at {}", SIZES[0]),
                stats.p50_us <= 2.0 * first,
            ));
        }
        r.extra.insert("p99_us", stats.p99_us);
        r.extra.insert("errors", stats.errors as f64);
        report.add(r);
    }
    Ok(())
}

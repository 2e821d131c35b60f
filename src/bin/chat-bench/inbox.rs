//! Scenario 12: the inbox at scale. One user in 10,000 chats, each with a
//! message from the other member; how long ListChats takes for the first
//! page (the target: under 10 ms), against an empty unary call.

use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Arc,
};

use chat::pb;

use super::{load, report::row, send_req, Bench, BoxError};

/// Chats the user is in.
const CHATS: u64 = 10_000;
/// The page asked for.
const PAGE: u32 = 50;

impl Bench {
    pub(super) async fn scenario12(&mut self) -> Result<(), BoxError> {
        let ceiling = self.unary1_p50().await;
        let next = Arc::new(AtomicU64::new(0));
        let mut fill = Vec::new();
        for w in 0..64 {
            let (mut c, next) = (self.client(w), next.clone());
            fill.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Relaxed);
                    if i >= CHATS {
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
        let c = self.client(0);
        let stats = load(1, self.secs.max(2.0), move |_, _| {
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
            12,
            format!("ListChats first {PAGE} of {CHATS} chats"),
            "p50 latency",
            stats.p50_us,
            "us",
        );
        r.ceiling = Some(ceiling);
        r.target = Some(("p50 < 10 ms".into(), stats.p50_us < 10_000.0));
        r.extra.insert("p99_us", stats.p99_us);
        r.extra.insert("errors", stats.errors as f64);
        self.report.add(r);
        Ok(())
    }
}

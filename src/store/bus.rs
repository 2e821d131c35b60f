//! Wake-ups between replicas: "chat X has messages up to seq N". The
//! database stays the source of truth; a wake-up only tells a replica to
//! read rows it has not seen. Carried by PostgreSQL `LISTEN/NOTIFY` (no
//! extra server); another bus (NATS, say) would implement the same
//! [`Wake`]s.
//!
//! What NOTIFY costs and guarantees, and how this module lives with it:
//! - a transaction that notified takes a global lock at commit: one
//!   notification per committed group of sends, never one per message;
//! - payloads stay under 8,000 bytes: ids and seqs only, chunked;
//! - a notification is delivered only if its transaction commits, and only
//!   to listeners connected then: after a reconnect the listener sends
//!   [`Wake::Resync`], and the chat logic also resyncs on a slow timer, so a
//!   lost notification delays a message and never loses it.

use std::{sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::AsyncMessage;
use uuid::Uuid;

use super::pgconn::Target;
use crate::{
    metrics::Metrics,
    model::{Kind, Message},
};

/// The NOTIFY channel of committed messages.
pub const CHANNEL: &str = "chat_messages";
/// The NOTIFY channel of presence heartbeats: who is present on a replica.
pub const PRESENCE: &str = "chat_presence";

/// Heartbeat payloads: the replica id, then `chat user` per line (user ids
/// hold no control characters), as many as stay under the payload limit.
pub fn encode_heartbeat(replica: u64, present: &[(Uuid, String)]) -> Vec<String> {
    let mut out = Vec::new();
    let mut payload = String::new();
    for (chat, user) in present {
        let line = format!("\n{chat} {user}");
        if !payload.is_empty() && payload.len() + line.len() > PAYLOAD_MAX {
            out.push(std::mem::take(&mut payload));
        }
        if payload.is_empty() {
            payload = replica.to_string();
        }
        payload.push_str(&line);
    }
    if !payload.is_empty() {
        out.push(payload);
    }
    out
}

/// The replica and (chat, user) entries of a heartbeat payload, as joins.
pub fn decode_heartbeat(payload: &str) -> Option<(u64, Vec<Message>)> {
    let mut lines = payload.split('\n');
    let replica = lines.next()?.parse().ok()?;
    let joins = lines
        .filter_map(|line| {
            let (chat, user) = line.split_once(' ')?;
            Some(Message {
                chat: Uuid::try_parse(chat).ok()?,
                user_id: user.to_owned(),
                kind: Kind::Join,
                ..Message::default()
            })
        })
        .collect();
    Some((replica, joins))
}

/// The NOTIFY channel of live signals (read, typing, presence): never
/// stored, one notification each, outside any message transaction.
pub const SIGNALS: &str = "chat_signals";
/// Payload bytes per notification, under PostgreSQL's 8,000.
const PAYLOAD_MAX: usize = 7_000;

/// What a replica learns from the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Wake {
    /// The chat has committed messages up to this seq.
    Chat(Uuid, u64),
    /// Anything may have been missed: compare every followed chat with the store.
    Resync,
    /// A live signal from the replica with this id.
    Signal(u64, Message),
}

/// A signal's payload: `"replica chat kind target user"` (the user id last:
/// it may hold spaces).
pub fn encode_signal(replica: u64, signal: &Message) -> String {
    format!(
        "{replica} {} {} {} {}",
        signal.chat,
        signal.kind.number(),
        signal.target,
        signal.user_id
    )
}

/// The replica and signal of a payload; `None` if it is malformed.
pub fn decode_signal(payload: &str) -> Option<(u64, Message)> {
    let mut parts = payload.splitn(5, ' ');
    let replica = parts.next()?.parse().ok()?;
    let chat = Uuid::try_parse(parts.next()?).ok()?;
    let kind = match parts.next()?.parse().ok()? {
        3 => Kind::Read,
        4 => Kind::Typing,
        5 => Kind::Join,
        6 => Kind::Leave,
        _ => return None,
    };
    let target = parts.next()?.parse().ok()?;
    let user_id = parts.next()?.to_owned();
    let sent_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    Some((
        replica,
        Message {
            chat,
            kind,
            target,
            user_id,
            sent_at,
            ..Message::default()
        },
    ))
}

/// Payloads for a group's (chat, last seq) pairs: `"chat:seq chat:seq …"`,
/// as many as needed to stay under the payload limit.
pub fn encode<'a>(pairs: impl Iterator<Item = (&'a Uuid, u64)>) -> Vec<String> {
    let mut out = vec![String::new()];
    for (chat, seq) in pairs {
        let item = format!("{chat}:{seq}");
        let last = out.last_mut().expect("never empty");
        if !last.is_empty() && last.len() + 1 + item.len() > PAYLOAD_MAX {
            out.push(item);
        } else {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(&item);
        }
    }
    out.retain(|p| !p.is_empty());
    out
}

/// The pairs of a payload; anything malformed is skipped (a resync covers it).
pub fn decode(payload: &str) -> impl Iterator<Item = (Uuid, u64)> + '_ {
    payload.split(' ').filter_map(|item| {
        let (chat, seq) = item.split_once(':')?;
        Some((Uuid::try_parse(chat).ok()?, seq.parse().ok()?))
    })
}

/// Owner of the listener task.
pub struct Listener {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Listener {
    /// Starts listening on `target` (its own connection, outside the pool),
    /// sending what it hears to `wakes`; `chat_bus_connected` follows the connection.
    pub fn start(
        target: Target,
        wakes: mpsc::UnboundedSender<Wake>,
        metrics: Arc<Metrics>,
    ) -> Listener {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(listen(target, wakes, metrics, stopped));
        Listener { stop, task }
    }

    /// Stops listening and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

async fn listen(
    target: Target,
    wakes: mpsc::UnboundedSender<Wake>,
    metrics: Arc<Metrics>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let session = async {
            let (client, mut conn) = target.config.connect(target.tls.clone()).await?;
            let forward = wakes.clone();
            // Drives the connection: query replies and notifications both
            // arrive through it.
            let driver = tokio::spawn(async move {
                let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
                while let Some(m) = messages.next().await {
                    match m? {
                        AsyncMessage::Notification(n) if n.channel() == PRESENCE => {
                            if let Some((replica, joins)) = decode_heartbeat(n.payload()) {
                                for join in joins {
                                    let _ = forward.send(Wake::Signal(replica, join));
                                }
                            }
                        }
                        AsyncMessage::Notification(n) if n.channel() == SIGNALS => {
                            if let Some((replica, signal)) = decode_signal(n.payload()) {
                                let _ = forward.send(Wake::Signal(replica, signal));
                            }
                        }
                        AsyncMessage::Notification(n) => {
                            for (chat, seq) in decode(n.payload()) {
                                let _ = forward.send(Wake::Chat(chat, seq));
                            }
                        }
                        _ => {}
                    }
                }
                Ok::<_, tokio_postgres::Error>(())
            });
            client
                .batch_execute(&format!(
                    "LISTEN {CHANNEL}; LISTEN {SIGNALS}; LISTEN {PRESENCE}"
                ))
                .await?;
            metrics.bus_connected.set(1);
            tracing::info!("listening for other replicas' messages");
            // Whatever was committed while not listening.
            let _ = wakes.send(Wake::Resync);
            let ended = driver.await;
            drop(client);
            match ended {
                Ok(result) => result,
                Err(e) => {
                    tracing::error!("listener task failed: {e}");
                    Ok(())
                }
            }
        };
        let ended = tokio::select! {
            ended = session => ended,
            _ = &mut stop => return,
        };
        // `set` returns the value before.
        if metrics.bus_connected.set(0) == 1 {
            backoff = Duration::from_millis(100);
        }
        match ended {
            Ok(()) => tracing::warn!("the listening connection closed; reconnecting"),
            Err(e) => tracing::warn!(
                error = %super::StoreError::from(e),
                retry_in_ms = backoff.as_millis() as u64,
                "cannot listen for other replicas' messages; retrying"
            ),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = &mut stop => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_stay_under_the_limit_and_decode_to_what_was_encoded() {
        let chats: Vec<(Uuid, u64)> = (0..1000).map(|i| (Uuid::new_v4(), i * 1_000_003)).collect();
        let payloads = encode(chats.iter().map(|(c, s)| (c, *s)));
        assert!(payloads.len() > 1);
        assert!(payloads.iter().all(|p| p.len() <= PAYLOAD_MAX));
        let back: Vec<(Uuid, u64)> = payloads.iter().flat_map(|p| decode(p)).collect();
        assert_eq!(back, chats);
        assert_eq!(decode("junk x:1 :").count(), 0);
        assert!(encode(std::iter::empty()).is_empty());
    }
}

//! Group commit: senders queue what they staged; one task hands everything
//! queued to the store at once, then publishes and answers in queue order.

use crate::store::Backend as _;
use std::{sync::Arc, time::Instant};

use tokio::sync::{mpsc, oneshot};

use super::budget::Budget;
use super::{fanout::ChatState, Chats};
use crate::{
    error::{Error, Result},
    metrics::Metrics,
    model::{Message, Outcome, Refusal},
    store::{Committed, Staged, Store},
};

/// How many times the committer yields to let ready requests join a group
/// before it commits (while more keep arriving).
const GATHER_YIELDS: usize = 4;

/// A queued request for durability: answered after the next commit.
pub(super) struct Commit {
    /// A message to commit and its chat; none for a barrier (New on a
    /// backend whose writes become durable with the next commit).
    pub(super) staged: Option<(Staged, Arc<ChatState>)>,
    pub(super) done: oneshot::Sender<Result<Answer, String>>,
}

/// What the committer tells a waiting request once its commit is done.
pub(super) enum Answer {
    /// Stored and published (the same `Arc` the live streams got).
    Stored(Arc<Message>),
    /// Already stored under its idempotency key (see [`Outcome::Existing`]).
    Existing { stored: Message, same: bool },
    /// An edit or delete stored and published, and its message as it is now.
    Event {
        event: Arc<Message>,
        target: Message,
    },
    /// An edit or delete the store refused.
    Refused(Refusal),
    /// A barrier: everything before it is durable.
    Durable,
}

impl Chats {
    pub(super) fn queue_commit(
        &self,
        staged: Option<(Staged, Arc<ChatState>)>,
    ) -> oneshot::Receiver<Result<Answer, String>> {
        let (done, rx) = oneshot::channel();
        // A send error means the committer is gone; the dropped `done` then
        // reports it to `wait_commit`.
        let _ = self.shared.commits.send(Commit { staged, done });
        rx
    }
}

pub(super) async fn wait_commit(rx: oneshot::Receiver<Result<Answer, String>>) -> Result<Answer> {
    match rx.await {
        Ok(Ok(outcome)) => Ok(outcome),
        Ok(Err(e)) => Err(Error::Unavailable(format!(
            "the store could not make the write durable ({e}); retry with the same client_id"
        ))),
        Err(_) => Err(Error::Unavailable(
            "the server is shutting down; retry with the same client_id".into(),
        )),
    }
}

/// Owner of the committer task.
pub struct Committer {
    pub(super) stop: oneshot::Sender<()>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

impl Committer {
    /// Answers everything already queued (after a last commit), refuses what
    /// comes later with `Unavailable`, and waits for the task to end.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// The committer: one commit for everything queued while the previous one
/// ran, then publish and answer in queue order. On `stop` it closes the
/// queue and drains it.
pub(super) async fn commit_loop(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Commit>,
    mut stop: oneshot::Receiver<()>,
    metrics: Arc<Metrics>,
    budget: Budget,
) {
    let mut batch = Vec::new();
    let mut stopping = false;
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, 4096) => n,
            _ = &mut stop, if !stopping => {
                stopping = true;
                rx.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        // Let the requests that are ready to run stage first, so that this
        // commit covers them too: bigger groups, fewer fsyncs.
        for _ in 0..GATHER_YIELDS {
            tokio::task::yield_now().await;
            if rx.is_empty() {
                break;
            }
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
        }
        let mut states = Vec::new();
        let mut staged = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        for commit in batch.drain(..) {
            let has = commit.staged.is_some();
            if let Some((s, state)) = commit.staged {
                staged.push(s);
                states.push(state);
            }
            answers.push((has, commit.done));
        }
        let started = Instant::now();
        let Committed { outcomes, failed } = store.commit(staged).await;
        metrics.flushed(started.elapsed());
        let failed = failed.map(|e| e.to_string());
        if let Some(e) = &failed {
            tracing::error!(
                error = %e,
                committed = outcomes.len(),
                "commit failed; the senders of what it did not commit are told to retry"
            );
        }
        // What the store made durable is answered as such, even if a later
        // part of the group failed: its senders must not retry it.
        let mut outcomes = outcomes.into_iter().zip(states);
        for (has, done) in answers {
            let answer = match (has, if has { outcomes.next() } else { None }) {
                (true, Some((Outcome::Stored(msg), state))) => {
                    let msg = Arc::new(msg);
                    let seq = msg.seq;
                    state.publish(msg.clone(), &budget);
                    state.advance(seq);
                    metrics.messages_stored.inc();
                    Ok(Answer::Stored(msg))
                }
                (true, Some((Outcome::Event { event, target }, state))) => {
                    let event = Arc::new(event);
                    let seq = event.seq;
                    state.revise(&target, seq);
                    state.publish(event.clone(), &budget);
                    state.advance(seq);
                    Ok(Answer::Event {
                        event,
                        target: *target,
                    })
                }
                (true, Some((Outcome::Refused(why), _))) => Ok(Answer::Refused(why)),
                (true, Some((Outcome::Existing { stored, same }, _))) => {
                    Ok(Answer::Existing { stored, same })
                }
                // A barrier: durable if the whole commit was.
                (false, _) if failed.is_none() => Ok(Answer::Durable),
                _ => Err(failed.clone().unwrap_or_else(|| "not committed".into())),
            };
            let _ = done.send(answer);
        }
    }
}

//! One memory budget (`--memory-budget-mb`) for what clients can make the
//! server hold: the batch each Connect stream is delivering, History pages
//! on their way out, and the chats' recent windows.
//!
//! A client that stops reading pins what it was sent (a stalled stream
//! holds its batch, a stalled History its page), so every such byte is
//! leased from the budget first. Streams may hold at most
//! [`STREAM_SHARE`] of it between them, so that stalled streams cannot
//! starve History. When the budget is spent, readers wait for
//! room (back-pressure) and after `--budget-wait` are refused with
//! RESOURCE_EXHAUSTED `chat.Busy`; windows, which are only a cache, are
//! dropped instead of waiting. Memory held for clients never grows past the
//! budget, whatever they do.

use std::{sync::Arc, time::Duration};

use tokio::sync::Semaphore;

use crate::{error::Error, metrics::Metrics};

/// The budget; cloning shares it.
#[derive(Clone)]
pub struct Budget {
    inner: Arc<Inner>,
}

/// The part of the budget (in quarters) that Connect streams may hold.
const STREAM_SHARE: usize = 3;

struct Inner {
    room: Semaphore,
    /// The streams' share of `room`, taken before it.
    streams: Semaphore,
    total: usize,
    wait: Duration,
    metrics: Arc<Metrics>,
}

impl Inner {
    fn give_back(&self, bytes: usize, stream: bool) {
        self.room.add_permits(bytes);
        if stream {
            self.streams.add_permits(bytes);
        }
        self.count();
    }

    fn stream_total(&self) -> usize {
        (self.total / 4 * STREAM_SHARE).max(1)
    }

    /// Keeps the `chat_memory_budget_used_bytes` gauge current.
    fn count(&self) {
        let used = self.total - self.room.available_permits();
        self.metrics.budget_used.set(used as i64);
    }
}

/// Bytes taken from the budget, given back when dropped.
pub struct Lease {
    budget: Arc<Inner>,
    bytes: usize,
    /// Also taken from the streams' share.
    stream: bool,
}

impl Budget {
    pub fn new(total: usize, wait: Duration, metrics: Arc<Metrics>) -> Budget {
        // One acquire takes at most u32::MAX permits.
        let total = total.clamp(1, u32::MAX as usize);
        metrics.budget_bytes.set(total as i64);
        Budget {
            inner: Arc::new(Inner {
                room: Semaphore::new(total),
                streams: Semaphore::new((total / 4 * STREAM_SHARE).max(1)),
                total,
                wait,
                metrics,
            }),
        }
    }

    /// A lease of `bytes` (all of the budget at most, so that one thing
    /// bigger than the whole budget can still go, alone), waiting for room
    /// for up to `--budget-wait`.
    ///
    /// # Errors
    /// `Busy` when there was no room in time.
    pub async fn lease(&self, bytes: usize) -> Result<Lease, Error> {
        self.take(bytes, false).await
    }

    /// As [`Budget::lease`], for a Connect stream's batch: also taken from
    /// the streams' share.
    ///
    /// # Errors
    /// `Busy` when there was no room in time.
    pub async fn lease_for_stream(&self, bytes: usize) -> Result<Lease, Error> {
        self.take(bytes, true).await
    }

    async fn take(&self, bytes: usize, stream: bool) -> Result<Lease, Error> {
        let inner = &self.inner;
        let bytes = match stream {
            true => bytes.min(inner.stream_total()),
            false => bytes.min(inner.total),
        };
        let now = |sem: &Semaphore| {
            sem.try_acquire_many(bytes as u32)
                .map(tokio::sync::SemaphorePermit::forget)
                .is_ok()
        };
        let has_share = stream && now(&inner.streams);
        if (!stream || has_share) && now(&inner.room) {
            return Ok(self.leased(bytes, stream));
        }
        inner.metrics.budget_waits.inc();
        self.wait(bytes, stream, has_share).await
    }

    /// Waits for `bytes`: of the streams' share first for a `stream` that
    /// does not have it yet, then of the whole budget.
    async fn wait(&self, bytes: usize, stream: bool, mut has_share: bool) -> Result<Lease, Error> {
        let inner = &self.inner;
        let waited = tokio::time::timeout(inner.wait, async {
            if stream && !has_share {
                inner
                    .streams
                    .acquire_many(bytes as u32)
                    .await
                    .ok()?
                    .forget();
                has_share = true;
            }
            inner.room.acquire_many(bytes as u32).await.ok()?.forget();
            Some(())
        })
        .await;
        if let Ok(Some(())) = waited {
            return Ok(self.leased(bytes, stream));
        }
        // Timed out (the semaphores are never closed).
        if has_share {
            inner.streams.add_permits(bytes);
        }
        inner.metrics.budget_refusals.inc();
        Err(Error::Busy(format!(
            "the server's memory budget for responses ({} MiB) stayed spent for {:?}; retry later",
            inner.total >> 20,
            inner.wait
        )))
    }

    /// A lease of `bytes` if there is room now.
    pub fn try_lease(&self, bytes: usize) -> Option<Lease> {
        let bytes = bytes.min(self.inner.total);
        let permit = self.inner.room.try_acquire_many(bytes as u32).ok()?;
        permit.forget();
        Some(self.leased(bytes, false))
    }

    /// An empty lease, to grow with [`Budget::grow`].
    pub fn empty(&self) -> Lease {
        self.leased(0, false)
    }

    /// Adds `bytes` to `lease` if there is room now.
    pub fn grow(&self, lease: &mut Lease, bytes: usize) -> bool {
        match self.try_lease(bytes) {
            Some(mut more) if !lease.stream => {
                lease.bytes += std::mem::take(&mut more.bytes);
                true
            }
            _ => false,
        }
    }

    /// Bytes leased right now.
    pub fn in_use(&self) -> usize {
        self.inner.total - self.inner.room.available_permits()
    }

    fn leased(&self, bytes: usize, stream: bool) -> Lease {
        self.inner.count();
        Lease {
            budget: self.inner.clone(),
            bytes,
            stream,
        }
    }
}

impl Lease {
    /// Gives back all but `bytes`.
    pub fn shrink_to(&mut self, bytes: usize) {
        if bytes < self.bytes {
            self.budget.give_back(self.bytes - bytes, self.stream);
            self.bytes = bytes;
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.give_back(self.bytes, self.stream);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leases_wait_for_room_then_refuse_and_give_back_what_they_took() {
        let metrics = Arc::new(Metrics::default());
        let budget = Budget::new(1000, Duration::from_millis(50), metrics.clone());
        let mut a = budget.lease(600).await.unwrap();
        assert!(budget.try_lease(500).is_none());
        let err = budget.lease(500).await.err().unwrap();
        assert_eq!(err.id(), "chat.Busy");
        assert_eq!(metrics.budget_refusals.get(), 1);
        a.shrink_to(100);
        assert_eq!(budget.in_use(), 100);
        let b = budget.lease(900).await.unwrap();
        drop((a, b));
        assert_eq!(budget.in_use(), 0);
        // More than the whole budget: all of it, alone.
        let all = budget.lease(5000).await.unwrap();
        assert_eq!(all.bytes(), 1000);
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.lease(10).await.map(|l| l.bytes()) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(all);
        assert_eq!(
            waiter.await.unwrap().unwrap(),
            10,
            "room given back wakes a waiter"
        );
        let mut window = budget.empty();
        assert!(budget.grow(&mut window, 400));
        assert!(!budget.grow(&mut window, 700));
        assert_eq!(budget.in_use(), 400);
        drop(window);
        // Streams hold three quarters at most: the rest stays for pages.
        let streams = budget.lease_for_stream(1000).await.unwrap();
        assert_eq!(streams.bytes(), 750);
        let err = budget.lease_for_stream(10).await.err().unwrap();
        assert_eq!(err.id(), "chat.Busy");
        let page = budget.lease(250).await.unwrap();
        drop((streams, page));
        assert_eq!(budget.in_use(), 0);
        let _s = budget.lease_for_stream(10).await.unwrap();
    }
}

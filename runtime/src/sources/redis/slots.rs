//! Backpressure: a job holds one of the node's `worker.concurrency` slots
//! from the moment it is read until it is settled (and, while it runs, one
//! of its tenant's slots: `crate::dispatch`). The reader asks Redis only for as
//! many entries as there are free node slots; when none is free it does not
//! read at all and the backlog stays in Redis, where other workers can take it.
//!
//! A job whose tenant has no slot free waits *parked*: it gives its node
//! slot back, so one tenant's waiting jobs cannot fill the node while other
//! tenants' could run. At most `worker.concurrency` jobs park at once (past
//! that, a waiting job keeps its node slot and reading slows down), so a
//! node never takes far more entries from Redis than it can run.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The node's job slots.
pub struct Slots {
    node: Arc<Semaphore>,
    parking: Arc<Semaphore>,
}

impl Slots {
    /// `capacity` node slots.
    pub fn new(capacity: usize) -> Slots {
        Slots {
            node: Arc::new(Semaphore::new(capacity)),
            parking: Arc::new(Semaphore::new(capacity)),
        }
    }

    /// Wait until at least one node slot is free and return how many are;
    /// `None` when `stop` fires first. Nothing is taken: the reader must
    /// not hold slots while it blocks on Redis, or the reclaim sweep could
    /// never take one.
    pub async fn wait_free(&self, stop: &CancellationToken) -> Option<usize> {
        let permit = tokio::select! {
            _ = stop.cancelled() => return None,
            permit = self.node.acquire() => permit.expect("slot semaphore is never closed"),
        };
        drop(permit);
        Some(self.node.available_permits().max(1))
    }

    /// Wait for a node slot; `None` when `stop` fires first.
    pub async fn reserve(&self, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = stop.cancelled() => None,
            permit = Arc::clone(&self.node).acquire_owned() => Some(permit.expect("slot semaphore is never closed")),
        }
    }

    /// A place to wait parked (without a node slot), if there is one now.
    pub fn try_park(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.parking).try_acquire_owned().ok()
    }

    /// A free node slot, if there is one now.
    pub fn try_reserve(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.node).try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_hands_out_only_free_slots() {
        let slots = Slots::new(3);
        let stop = CancellationToken::new();
        assert_eq!(slots.wait_free(&stop).await, Some(3));
        let first = slots.try_reserve().unwrap();
        let _second = slots.reserve(&stop).await.unwrap();
        assert_eq!(slots.wait_free(&stop).await, Some(1));
        let _third = slots.try_reserve().unwrap();
        assert!(slots.try_reserve().is_none());
        stop.cancel();
        assert_eq!(
            slots.wait_free(&stop).await,
            None,
            "a full node waits, and stop ends the wait"
        );
        assert!(slots.reserve(&stop).await.is_none());
        drop(first);
        assert_eq!(slots.wait_free(&CancellationToken::new()).await, Some(1));
    }
}

//! Per-tenant job slots: a tenant's policy allows it `max_in_flight` jobs
//! running at once on this node, whatever source they came from. A job
//! holds its tenant's slot while it runs; the next one waits for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Each tenant's running-job slots.
#[derive(Default)]
pub struct TenantSlots {
    tenants: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl TenantSlots {
    /// Wait for a slot of `tenant`, whose policy allows `limit` jobs at once;
    /// `None` when `stop` fires first.
    pub async fn take(&self, tenant: &str, limit: u32, stop: &CancellationToken) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut tenants = self.tenants.lock().expect("tenant slots poisoned");
            match tenants.get(tenant) {
                Some(semaphore) => Arc::clone(semaphore),
                None => {
                    // A tenant new to the map: first forget those with
                    // nothing running, so producer-chosen tenant names
                    // cannot grow it without bound.
                    tenants.retain(|_, semaphore| {
                        Arc::strong_count(semaphore) > 1 || semaphore.available_permits() < limit as usize
                    });
                    let semaphore = Arc::new(Semaphore::new(limit as usize));
                    tenants.insert(tenant.to_string(), Arc::clone(&semaphore));
                    semaphore
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => None,
            permit = semaphore.acquire_owned() => Some(permit.expect("tenant semaphore is never closed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tenants_are_capped_separately() {
        let slots = TenantSlots::default();
        let stop = CancellationToken::new();
        let first = slots.take("acme", 1, &stop).await.unwrap();
        let other = slots.take("globex", 1, &stop).await;
        assert!(other.is_some(), "another tenant is not held up");
        let waiting = slots.take("acme", 1, &stop);
        tokio::pin!(waiting);
        assert!(poll_once(&mut waiting).await.is_none(), "acme's second job waits");
        drop(first);
        assert!(waiting.await.is_some());
        let held = slots.take("acme", 1, &stop).await;
        for n in 0..100 {
            drop(slots.take(&format!("passing-{n}"), 1, &stop).await);
        }
        assert!(
            slots.tenants.lock().unwrap().len() <= 3,
            "idle tenants are forgotten: the map stays bounded"
        );
        stop.cancel();
        assert!(slots.take("acme", 1, &stop).await.is_none(), "stop ends the wait");
        drop(held);
    }

    /// Poll a future once; `None` if it is not ready.
    async fn poll_once<F: Future + Unpin>(future: &mut F) -> Option<F::Output> {
        tokio::select! {
            biased;
            output = future => Some(output),
            _ = tokio::task::yield_now() => None,
        }
    }
}

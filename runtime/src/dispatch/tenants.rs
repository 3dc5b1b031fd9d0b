//! Per-tenant job slots: how many of the node's `worker.concurrency` slots
//! each tenant's jobs may hold at once, whatever source they came from.
//!
//! A tenant whose policy sets `max_in_flight` gets exactly that. One that
//! does not gets a fair share: while other tenants have jobs running or
//! waiting here, no new start past its share — the node's slots divided by
//! the tenants that want them — and, once another tenant has had a job here
//! in the last [`RECENT`], never the node's last slot (jobs are not
//! pre-empted, so a tenant that took them all would shut the others out for
//! as long as its jobs run). A node that only ever serves one tenant keeps
//! every slot for it. A job holds its tenant's slot until its outcome is settled; every
//! release wakes the waiters to look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What one tenant holds and wants on this node.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    running: usize,
    waiting: usize,
}

impl Usage {
    fn idle(self) -> bool {
        self.running == 0 && self.waiting == 0
    }
}

/// How long a tenant that had a job here counts as one of the node's.
pub const RECENT: Duration = Duration::from_secs(60);

/// Tenants remembered as recent at most (the oldest are forgotten first).
const MAX_RECENT: usize = 64;

struct Shared {
    node_slots: usize,
    tenants: Mutex<HashMap<String, Usage>>,
    /// When each tenant last asked for a slot.
    seen: Mutex<HashMap<String, Instant>>,
    changed: Notify,
}

impl Shared {
    /// Change `tenant`'s usage; forget it once idle (producer-chosen tenant
    /// names cannot grow the map); wake the waiters when it gave something up.
    fn update(&self, tenant: &str, change: impl FnOnce(&mut Usage)) {
        let mut tenants = self.tenants.lock().expect("tenant slots poisoned");
        if let Some(usage) = tenants.get_mut(tenant) {
            change(usage);
            if usage.idle() {
                tenants.remove(tenant);
            }
        }
        drop(tenants);
        self.changed.notify_waiters();
    }

    /// Note that `tenant` asks for a slot now; whether another tenant did
    /// within [`RECENT`].
    fn seen(&self, tenant: &str) -> bool {
        let now = Instant::now();
        let mut seen = self.seen.lock().expect("tenant slots poisoned");
        if let Some(at) = seen.get_mut(tenant) {
            *at = now;
        } else {
            if seen.len() >= MAX_RECENT {
                seen.retain(|_, at| now.duration_since(*at) < RECENT);
            }
            if seen.len() >= MAX_RECENT
                && let Some(oldest) = seen.iter().min_by_key(|(_, at)| **at).map(|(name, _)| name.clone())
            {
                seen.remove(&oldest);
            }
            seen.insert(tenant.to_string(), now);
        }
        seen.iter()
            .any(|(name, at)| name != tenant && now.duration_since(*at) < RECENT)
    }

    /// How many jobs `tenant` may have running now; `others_recent`:
    /// whether another tenant had a job here lately.
    fn limit(
        &self,
        tenants: &HashMap<String, Usage>,
        tenant: &str,
        configured: Option<u32>,
        others_recent: bool,
    ) -> usize {
        if let Some(configured) = configured {
            return configured as usize;
        }
        let others = tenants
            .iter()
            .filter(|(name, usage)| name.as_str() != tenant && !usage.idle())
            .count();
        let share = self.node_slots.div_ceil(others + 1);
        let most = if others_recent {
            self.node_slots - 1
        } else {
            self.node_slots
        };
        share.min(most).max(1)
    }
}

/// Each tenant's share of the node's job slots.
#[derive(Clone)]
pub struct TenantSlots(Arc<Shared>);

/// One running job's hold on its tenant's share; given back on drop.
pub struct TenantSlot {
    slots: Arc<Shared>,
    tenant: String,
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        self.slots.update(&self.tenant, |usage| usage.running -= 1);
    }
}

/// A job counted as waiting for its tenant's slot until this is dropped.
struct Waiting<'a> {
    slots: &'a Shared,
    tenant: &'a str,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.slots.update(self.tenant, |usage| usage.waiting -= 1);
    }
}

impl TenantSlots {
    /// Shares of a node with `node_slots` job slots.
    pub fn new(node_slots: usize) -> TenantSlots {
        TenantSlots(Arc::new(Shared {
            node_slots: node_slots.max(1),
            tenants: Mutex::default(),
            seen: Mutex::default(),
            changed: Notify::new(),
        }))
    }

    /// A slot of `tenant` now, if its share has room (`configured`: its
    /// policy's `max_in_flight`, if set).
    pub fn try_take(&self, tenant: &str, configured: Option<u32>) -> Option<TenantSlot> {
        let others_recent = self.0.seen(tenant);
        let mut tenants = self.0.tenants.lock().expect("tenant slots poisoned");
        let limit = self.0.limit(&tenants, tenant, configured, others_recent);
        match tenants.get_mut(tenant) {
            Some(usage) if usage.running >= limit => return None,
            None if limit == 0 => return None,
            Some(usage) => usage.running += 1,
            None => {
                tenants.insert(tenant.to_string(), Usage { running: 1, waiting: 0 });
            }
        }
        Some(TenantSlot {
            slots: Arc::clone(&self.0),
            tenant: tenant.to_string(),
        })
    }

    /// Wait for a slot of `tenant`; `None` when `stop` fires first.
    pub async fn take(&self, tenant: &str, configured: Option<u32>, stop: &CancellationToken) -> Option<TenantSlot> {
        if let Some(slot) = self.try_take(tenant, configured) {
            return Some(slot);
        }
        let mut waiting: Option<Waiting<'_>> = None;
        loop {
            // Registered before looking, so no release is missed between
            // the look and the wait.
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(slot) = self.try_take(tenant, configured) {
                drop(waiting);
                return Some(slot);
            }
            if waiting.is_none() {
                let mut tenants = self.0.tenants.lock().expect("tenant slots poisoned");
                tenants.entry(tenant.to_string()).or_default().waiting += 1;
                drop(tenants);
                waiting = Some(Waiting { slots: &self.0, tenant });
                // Others' shares just shrank; that changes no running job.
                continue;
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = &mut changed => {}
            }
        }
    }

    /// How many jobs of `tenant` hold a slot now.
    pub fn running(&self, tenant: &str) -> usize {
        let tenants = self.0.tenants.lock().expect("tenant slots poisoned");
        tenants.get(tenant).map_or(0, |usage| usage.running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn configured_tenants_are_capped_separately() {
        let slots = TenantSlots::new(8);
        let stop = CancellationToken::new();
        let first = slots.take("acme", Some(1), &stop).await.unwrap();
        let other = slots.take("globex", Some(1), &stop).await;
        assert!(other.is_some(), "another tenant is not held up");
        let waiting = slots.take("acme", Some(1), &stop);
        tokio::pin!(waiting);
        assert!(poll_once(&mut waiting).await.is_none(), "acme's second job waits");
        drop(first);
        assert!(waiting.await.is_some());
        for n in 0..100 {
            drop(slots.take(&format!("passing-{n}"), Some(1), &stop).await);
        }
        assert!(
            slots.0.tenants.lock().unwrap().len() <= 2,
            "idle tenants are forgotten: the map stays bounded"
        );
        assert!(slots.0.seen.lock().unwrap().len() <= MAX_RECENT, "so are the ones seen");
        let held = slots.take("acme", Some(1), &stop).await;
        stop.cancel();
        assert!(slots.take("acme", Some(1), &stop).await.is_none(), "stop ends the wait");
        drop(held);
        drop(other);
        assert!(
            slots.0.tenants.lock().unwrap().is_empty(),
            "a stopped wait is not left counted"
        );
    }

    #[tokio::test]
    async fn a_tenant_alone_on_its_node_may_use_every_slot() {
        let slots = TenantSlots::new(2);
        let held: Vec<TenantSlot> = (0..2).map(|_| slots.try_take("solo", None).unwrap()).collect();
        assert!(slots.try_take("solo", None).is_none());
        drop(held);
    }

    #[tokio::test]
    async fn with_other_tenants_about_an_unconfigured_one_never_takes_the_last_slot() {
        let slots = TenantSlots::new(8);
        drop(slots.try_take("victim", None));
        let held: Vec<TenantSlot> = (0..7).map(|_| slots.try_take("spinner", None).unwrap()).collect();
        assert!(
            slots.try_take("spinner", None).is_none(),
            "the eighth slot is kept back"
        );
        let victim = slots.try_take("victim", None);
        assert!(victim.is_some(), "another tenant gets the slot kept back");
        assert_eq!(slots.running("spinner"), 7);
        drop(held);
        assert_eq!(slots.running("spinner"), 0);
    }

    #[tokio::test]
    async fn while_others_want_slots_a_tenant_starts_no_more_than_its_share() {
        let slots = TenantSlots::new(8);
        let stop = CancellationToken::new();
        drop(slots.try_take("victim", None));
        let mut spinner: Vec<TenantSlot> = (0..6).map(|_| slots.try_take("spinner", None).unwrap()).collect();
        let victim = slots.try_take("victim", None).unwrap();
        assert!(
            slots.try_take("spinner", None).is_none(),
            "with the victim running, the spinner's share is 4 and it holds 6"
        );
        // The spinner's jobs end one by one; it starts again only under its share.
        spinner.truncate(4);
        assert!(slots.try_take("spinner", None).is_none());
        spinner.truncate(3);
        spinner.push(slots.take("spinner", None, &stop).await.unwrap());
        assert!(slots.try_take("spinner", None).is_none());
        drop(victim);
        assert!(
            slots.try_take("spinner", None).is_some(),
            "once the victim is gone, the spinner may use more again"
        );
    }

    #[tokio::test]
    async fn a_waiter_is_woken_when_a_slot_is_given_back() {
        let slots = TenantSlots::new(2);
        let stop = CancellationToken::new();
        drop(slots.try_take("other", None));
        let only = slots.try_take("solo", None).unwrap();
        assert!(slots.try_take("solo", None).is_none(), "two slots: one kept back");
        let waiter = tokio::spawn({
            let slots = slots.clone();
            let stop = stop.clone();
            async move { slots.take("solo", None, &stop).await.is_some() }
        });
        tokio::task::yield_now().await;
        drop(only);
        assert!(waiter.await.unwrap());
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

//! The waiting room of one upstream: a fair queue of requests that are over the limit.
//! Pure data structure; the caller ([`super::controller`]) owns locking and time.
//!
//! Order of service:
//! 1. **Classes** by smooth weighted round robin (nginx's SWRR): with weights 4:1, four
//!    interactive requests leave for each long run, so cheap calls never wait behind a
//!    pile of runs, and runs are never starved. A class can be held back (`eligible`), which
//!    the controller uses to keep headroom for interactive traffic.
//! 2. **Tenants** (Dify apps) round robin inside a class: one app flooding at 10× capacity
//!    gets one turn like an app sending one request — the others' requests wait for at most
//!    one slot per active tenant, not behind the flood.
//! 3. **Within a tenant** FIFO, or LIFO when the caller says the queue is standing (adaptive
//!    LIFO): under sustained overload the newest request, whose client is still patient, is
//!    served while the oldest ones, whose clients are about to give up, age out.
//!
//! When the queue is full, room is made by evicting from the tenant with the most queued
//! requests, so a flood cannot lock everyone else out of the queue.

use std::collections::{HashMap, VecDeque};

use tokio::time::Instant;

/// Identifies a tenant (a hashed app key).
pub type TenantId = u64;

/// One waiting request.
#[derive(Debug)]
pub struct Entry<T> {
    /// Unique id (for cancellation).
    pub id: u64,
    /// Tenant.
    pub tenant: TenantId,
    /// Class index.
    pub class: usize,
    /// When it joined the queue.
    pub enqueued: Instant,
    /// The caller's payload (the waiter's wake-up channel).
    pub payload: T,
}

#[derive(Debug)]
struct ClassQueue<T> {
    weight: i64,
    current: i64,
    tenants: HashMap<TenantId, VecDeque<Entry<T>>>,
    ring: VecDeque<TenantId>,
    len: usize,
}

impl<T> ClassQueue<T> {
    fn new(weight: u32) -> Self {
        ClassQueue {
            weight: i64::from(weight.max(1)),
            current: 0,
            tenants: HashMap::new(),
            ring: VecDeque::new(),
            len: 0,
        }
    }
}

/// The fair queue.
#[derive(Debug)]
pub struct FairQueue<T> {
    classes: Vec<ClassQueue<T>>,
    per_tenant: HashMap<TenantId, usize>,
    len: usize,
}

impl<T> FairQueue<T> {
    /// A queue with one sub-queue per class, weighted by `weights`.
    pub fn new(weights: &[u32]) -> Self {
        // At least one class: an arrival of an unknown class goes to the last one.
        let weights = if weights.is_empty() { &[1][..] } else { weights };
        FairQueue {
            classes: weights.iter().map(|w| ClassQueue::new(*w)).collect(),
            per_tenant: HashMap::new(),
            len: 0,
        }
    }

    /// Updates class weights (config reload); the number of classes may change.
    pub fn set_weights(&mut self, weights: &[u32]) {
        for (i, w) in weights.iter().enumerate() {
            match self.classes.get_mut(i) {
                Some(class) => class.weight = i64::from((*w).max(1)),
                None => self.classes.push(ClassQueue::new(*w)),
            }
        }
    }

    /// Waiting requests in total.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Waiting requests of class `class`.
    pub fn class_len(&self, class: usize) -> usize {
        self.classes.get(class).map_or(0, |c| c.len)
    }

    /// Tenants with requests waiting in class `class`.
    pub fn class_tenants(&self, class: usize) -> usize {
        self.classes.get(class).map_or(0, |c| c.ring.len())
    }

    /// Waiting requests of `tenant` in class `class`.
    pub fn tenant_class_len(&self, tenant: TenantId, class: usize) -> usize {
        self.classes.get(class).and_then(|c| c.tenants.get(&tenant)).map_or(0, VecDeque::len)
    }

    /// Waiting requests of `tenant`.
    pub fn tenant_len(&self, tenant: TenantId) -> usize {
        self.per_tenant.get(&tenant).copied().unwrap_or(0)
    }

    /// The tenants with the most waiting requests, most first (at most `n`).
    pub fn top_tenants(&self, n: usize) -> Vec<(TenantId, usize)> {
        let mut all: Vec<(TenantId, usize)> = self.per_tenant.iter().map(|(t, n)| (*t, *n)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        all.truncate(n);
        all
    }

    /// When the longest-waiting request of class `class` joined, if any waits.
    pub fn oldest_of_class(&self, class: usize) -> Option<Instant> {
        self.classes.get(class)?.tenants.values().filter_map(|q| q.front().map(|e| e.enqueued)).min()
    }

    /// When the longest-waiting request joined, if any waits.
    pub fn oldest(&self) -> Option<Instant> {
        self.classes
            .iter()
            .flat_map(|c| c.tenants.values())
            .filter_map(|q| q.front().map(|e| e.enqueued))
            .min()
    }

    /// Adds a request at the back of its tenant's line.
    pub fn push(&mut self, entry: Entry<T>) {
        let Some(class) = self.classes.get_mut(entry.class) else {
            // Unknown class index: treat as the last class rather than lose the request.
            let last = self.classes.len().saturating_sub(1);
            return self.push(Entry { class: last, ..entry });
        };
        let tenant = entry.tenant;
        let line = class.tenants.entry(tenant).or_default();
        if line.is_empty() {
            class.ring.push_back(tenant);
        }
        line.push_back(entry);
        class.len += 1;
        *self.per_tenant.entry(tenant).or_default() += 1;
        self.len += 1;
    }

    /// Takes the next request to admit: class by weight among `eligible` classes, tenant by
    /// round robin, and within the tenant the oldest (`lifo == false`) or newest.
    pub fn pop(&mut self, lifo: bool, eligible: impl Fn(usize) -> bool) -> Option<Entry<T>> {
        let total: i64 = self
            .classes
            .iter()
            .enumerate()
            .filter(|(i, c)| c.len > 0 && eligible(*i))
            .map(|(_, c)| c.weight)
            .sum();
        if total == 0 {
            return None;
        }
        let mut best: Option<(usize, i64)> = None;
        for (i, class) in self.classes.iter_mut().enumerate() {
            if class.len == 0 || !eligible(i) {
                continue;
            }
            class.current += class.weight;
            if best.is_none_or(|(_, current)| class.current > current) {
                best = Some((i, class.current));
            }
        }
        let (chosen, _) = best?;
        let class = &mut self.classes[chosen];
        class.current -= total;
        let tenant = class.ring.pop_front()?;
        let line = class.tenants.get_mut(&tenant)?;
        let entry = if lifo { line.pop_back() } else { line.pop_front() }?;
        if line.is_empty() {
            class.tenants.remove(&tenant);
        } else {
            class.ring.push_back(tenant);
        }
        class.len -= 1;
        self.forget(tenant);
        Some(entry)
    }

    /// Removes the request `id` (its client left or its wait timed out).
    pub fn remove(&mut self, id: u64, tenant: TenantId, class: usize) -> Option<Entry<T>> {
        let queue = self.classes.get_mut(class)?;
        let line = queue.tenants.get_mut(&tenant)?;
        let position = line.iter().position(|e| e.id == id)?;
        let entry = line.remove(position)?;
        if line.is_empty() {
            queue.tenants.remove(&tenant);
            queue.ring.retain(|t| *t != tenant);
        }
        queue.len -= 1;
        self.forget(tenant);
        Some(entry)
    }

    /// Makes room for `arriving`: evicts the newest request of the tenant with the most
    /// waiting, unless that would be `arriving` itself (or a tenant with no more than it has).
    pub fn evict_for(&mut self, arriving: TenantId) -> Option<Entry<T>> {
        let mine = self.tenant_len(arriving);
        let (heaviest, count) = self.top_tenants(1).into_iter().next()?;
        if heaviest == arriving || count <= mine + 1 {
            return None;
        }
        let (class, id) = self
            .classes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.tenants.get(&heaviest).and_then(|l| l.back()).map(|e| (i, e)))
            .max_by_key(|(_, e)| e.enqueued)
            .map(|(i, e)| (i, e.id))?;
        self.remove(id, heaviest, class)
    }

    /// Removes and returns every entry (shutdown).
    pub fn drain(&mut self) -> Vec<Entry<T>> {
        let mut all = Vec::with_capacity(self.len);
        for class in &mut self.classes {
            for (_, line) in class.tenants.drain() {
                all.extend(line);
            }
            class.ring.clear();
            class.len = 0;
        }
        self.per_tenant.clear();
        self.len = 0;
        all
    }

    fn forget(&mut self, tenant: TenantId) {
        if let Some(n) = self.per_tenant.get_mut(&tenant) {
            *n -= 1;
            if *n == 0 {
                self.per_tenant.remove(&tenant);
            }
        }
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod proptests;

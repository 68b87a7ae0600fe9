//! Fair queue: class weights, tenant round robin, FIFO/LIFO, eviction, cancellation.

use std::time::Duration;

use super::*;

fn entry(id: u64, tenant: TenantId, class: usize, at: Instant) -> Entry<()> {
    Entry { id, tenant, class, enqueued: at, payload: () }
}

fn order(q: &mut FairQueue<()>, lifo: bool) -> Vec<u64> {
    std::iter::from_fn(|| q.pop(lifo, |_| true).map(|e| e.id)).collect()
}

#[test]
fn tenants_take_turns_so_a_flood_does_not_starve_others() {
    let t0 = Instant::now();
    let mut q = FairQueue::new(&[1]);
    for id in 0..10 {
        q.push(entry(id, 1, 0, t0)); // tenant 1 floods
    }
    q.push(entry(100, 2, 0, t0 + Duration::from_millis(5))); // tenant 2 arrives last
    let served = order(&mut q, false);
    assert_eq!(served[..2], [0, 100], "tenant 2 is served second, not eleventh: {served:?}");
    assert!(q.is_empty());
}

#[test]
fn classes_share_by_weight() {
    let t0 = Instant::now();
    let mut q = FairQueue::new(&[4, 1]);
    for id in 0..10 {
        q.push(entry(id, 1, 1, t0)); // runs
    }
    for id in 100..110 {
        q.push(entry(id, 2, 0, t0)); // interactive
    }
    let first_five: Vec<u64> = order(&mut q, false).into_iter().take(5).collect();
    let runs = first_five.iter().filter(|id| **id < 100).count();
    assert_eq!(runs, 1, "4:1 weights: {first_five:?}");
}

#[test]
fn ineligible_classes_wait() {
    let t0 = Instant::now();
    let mut q = FairQueue::new(&[1, 1]);
    q.push(entry(1, 1, 1, t0));
    assert!(q.pop(false, |c| c != 1).is_none());
    assert_eq!(q.pop(false, |_| true).map(|e| e.id), Some(1));
}

#[test]
fn lifo_serves_the_newest_first() {
    let t0 = Instant::now();
    let mut q = FairQueue::new(&[1]);
    for id in 0..4 {
        q.push(entry(id, 1, 0, t0 + Duration::from_millis(id)));
    }
    assert_eq!(q.oldest(), Some(t0));
    assert_eq!(order(&mut q, true), [3, 2, 1, 0]);
}

#[test]
fn cancellation_removes_and_keeps_counts_right() {
    let t0 = Instant::now();
    let mut q = FairQueue::new(&[1, 1]);
    q.push(entry(1, 7, 0, t0));
    q.push(entry(2, 7, 1, t0));
    q.push(entry(3, 8, 1, t0));
    assert_eq!(q.tenant_len(7), 2);
    assert!(q.remove(2, 7, 1).is_some());
    assert!(q.remove(2, 7, 1).is_none(), "removing twice finds nothing");
    assert_eq!((q.len(), q.class_len(1), q.tenant_len(7)), (2, 1, 1));
    assert_eq!(order(&mut q, false).len(), 2);
    assert_eq!(q.top_tenants(5), vec![]);
}

#[test]
fn eviction_takes_from_the_heaviest_tenant() {
    let t0 = Instant::now();
    let mut q = FairQueue::new(&[1]);
    for id in 0..5 {
        q.push(entry(id, 1, 0, t0 + Duration::from_millis(id)));
    }
    q.push(entry(10, 2, 0, t0));
    let evicted = q.evict_for(2).map(|e| (e.tenant, e.id));
    assert_eq!(evicted, Some((1, 4)), "the flood's newest makes room");
    assert!(q.evict_for(1).is_none(), "the heaviest tenant itself gets no room");
    assert_eq!(q.drain().len(), 5);
    assert!(q.is_empty());
}

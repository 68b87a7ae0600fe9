//! Property tests of the fair queue against a model, under arbitrary sequences of pushes,
//! pops (FIFO or LIFO, with any classes held back), cancellations, evictions, weight changes
//! and drains:
//!
//! - every request pushed leaves exactly once — popped, removed, evicted or drained — and
//!   nothing that was not pushed ever comes out;
//! - the counts (`len`, per class, per tenant, tenants per class, the heaviest tenants) and
//!   the oldest arrival always agree with what is waiting;
//! - a pop takes from a class that may go and has requests, gives nothing only when no such
//!   class has any, serves the tenants of a class in turn, and within a tenant the oldest
//!   (FIFO) or the newest (LIFO);
//! - eviction takes the newest request of the heaviest tenant, and only from a tenant that
//!   has more than one request more than the arriving one;
//! - from a fresh queue with every class backlogged, each round of `sum(weights)` pops serves
//!   every class exactly its weight (smooth weighted round robin).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::{Entry, FairQueue, TenantId};

#[derive(Debug, Clone)]
enum Op {
    Push { tenant: TenantId, class: usize },
    Pop { lifo: bool, eligible: u8 },
    Remove { pick: usize, wrong_class: bool },
    Evict { tenant: TenantId },
    SetWeights(Vec<u32>),
    Drain,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u64..5, 0usize..5).prop_map(|(tenant, class)| Op::Push { tenant, class }),
        5 => (any::<bool>(), prop_oneof![Just(u8::MAX), any::<u8>()]).prop_map(|(lifo, eligible)| Op::Pop { lifo, eligible }),
        2 => (any::<usize>(), prop::bool::weighted(0.2)).prop_map(|(pick, wrong_class)| Op::Remove { pick, wrong_class }),
        2 => (0u64..6).prop_map(|tenant| Op::Evict { tenant }),
        1 => prop::collection::vec(0u32..5, 1..6).prop_map(Op::SetWeights),
        1 => Just(Op::Drain),
    ]
}

/// What the queue should hold: each waiting request's tenant, class, push order and arrival;
/// and each class's tenants in the order they take turns.
#[derive(Debug, Default)]
struct Model {
    classes: usize,
    waiting: BTreeMap<u64, (TenantId, usize, Instant)>,
    rings: Vec<VecDeque<TenantId>>,
}

impl Model {
    fn line(&self, tenant: TenantId, class: usize) -> Vec<u64> {
        self.waiting.iter().filter(|(_, w)| w.0 == tenant && w.1 == class).map(|(id, _)| *id).collect()
    }

    fn tenant_len(&self, tenant: TenantId) -> usize {
        self.waiting.values().filter(|w| w.0 == tenant).count()
    }

    /// Takes `id` out; its tenant leaves its class's turns when its line there empties.
    fn take(&mut self, id: u64) -> Option<(TenantId, usize, Instant)> {
        let (tenant, class, at) = self.waiting.remove(&id)?;
        if self.line(tenant, class).is_empty() {
            self.rings[class].retain(|t| *t != tenant);
        }
        Some((tenant, class, at))
    }
}

fn check_counts(queue: &FairQueue<u64>, model: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(queue.len(), model.waiting.len());
    prop_assert_eq!(queue.is_empty(), model.waiting.is_empty());
    for class in 0..model.classes + 1 {
        let in_class = model.waiting.values().filter(|w| w.1 == class).count();
        prop_assert_eq!(queue.class_len(class), in_class, "class {}", class);
        let ring = model.rings.get(class).map_or(0, VecDeque::len);
        prop_assert_eq!(queue.class_tenants(class), ring, "tenants of class {}", class);
        for tenant in 0..6 {
            prop_assert_eq!(queue.tenant_class_len(tenant, class), model.line(tenant, class).len());
        }
    }
    let mut heaviest: Vec<(TenantId, usize)> =
        (0..6).map(|t| (t, model.tenant_len(t))).filter(|(_, n)| *n > 0).collect();
    heaviest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    for tenant in 0..6 {
        prop_assert_eq!(queue.tenant_len(tenant), model.tenant_len(tenant));
    }
    prop_assert_eq!(queue.top_tenants(6), heaviest.clone());
    prop_assert_eq!(queue.top_tenants(1), heaviest.into_iter().take(1).collect::<Vec<_>>());
    prop_assert_eq!(queue.oldest(), model.waiting.values().map(|w| w.2).min());
    Ok(())
}

/// Runs `ops` against the queue and the model; returns how many requests were pushed and
/// the ids that came out, in order.
fn run(weights: &[u32], ops: &[Op]) -> Result<(u64, Vec<u64>), TestCaseError> {
    let t0 = Instant::now();
    let mut queue = FairQueue::new(weights);
    let mut model =
        Model { classes: weights.len(), rings: vec![VecDeque::new(); weights.len()], ..Model::default() };
    let mut next_id = 0u64;
    let mut out = Vec::new();
    for op in ops {
        match op {
            Op::Push { tenant, class } => {
                let id = next_id;
                next_id += 1;
                // Arrivals in push order; an unknown class index goes to the last class.
                let at = t0 + Duration::from_millis(id);
                let effective = (*class).min(model.classes - 1);
                queue.push(Entry { id, tenant: *tenant, class: *class, enqueued: at, payload: id });
                if model.line(*tenant, effective).is_empty() {
                    model.rings[effective].push_back(*tenant);
                }
                model.waiting.insert(id, (*tenant, effective, at));
            }
            Op::Pop { lifo, eligible } => {
                let may_go = |c: usize| eligible & (1 << c.min(7)) != 0;
                let any_waiting = model.waiting.values().any(|w| may_go(w.1));
                match queue.pop(*lifo, may_go) {
                    None => {
                        prop_assert!(!any_waiting, "a class that may go has requests, yet nothing was popped")
                    }
                    Some(entry) => {
                        prop_assert_eq!(entry.id, entry.payload, "the payload travels with its entry");
                        let Some(&(tenant, class, _)) = model.waiting.get(&entry.id) else {
                            return Err(TestCaseError::fail(format!(
                                "{} came out but was not waiting",
                                entry.id
                            )));
                        };
                        prop_assert!(may_go(class), "popped from held-back class {}", class);
                        prop_assert_eq!((entry.tenant, entry.class), (tenant, class));
                        // The class's tenants take turns: the one at the front goes.
                        prop_assert_eq!(
                            model.rings[class].front(),
                            Some(&tenant),
                            "tenant turns in class {}",
                            class
                        );
                        let line = model.line(tenant, class);
                        let expected = if *lifo { line.last() } else { line.first() };
                        prop_assert_eq!(
                            Some(&entry.id),
                            expected,
                            "{} within the tenant",
                            if *lifo { "newest" } else { "oldest" }
                        );
                        // Its turn is used: to the back of the turns while it has more waiting.
                        model.rings[class].pop_front();
                        model.waiting.remove(&entry.id);
                        if !model.line(tenant, class).is_empty() {
                            model.rings[class].push_back(tenant);
                        }
                        out.push(entry.id);
                    }
                }
            }
            Op::Remove { pick, wrong_class } => {
                // A waiting request (or one already gone), sometimes named with a wrong class.
                let ids: Vec<u64> = model.waiting.keys().copied().collect();
                let id = if ids.is_empty() || pick % 4 == 0 {
                    (*pick as u64) % (next_id + 1)
                } else {
                    ids[pick % ids.len()]
                };
                let known = model.waiting.get(&id).copied();
                let (tenant, class) = known.map_or((0, 0), |(t, c, _)| (t, c));
                let class = if *wrong_class { class + 1 } else { class };
                let removed = queue.remove(id, tenant, class);
                let should = known.is_some_and(|(_, c, _)| c == class);
                prop_assert_eq!(removed.as_ref().map(|e| e.id), should.then_some(id));
                if should {
                    model.take(id);
                    out.push(id);
                }
            }
            Op::Evict { tenant } => {
                let mine = model.tenant_len(*tenant);
                let heaviest = (0..6)
                    .map(|t| (t, model.tenant_len(t)))
                    .filter(|(_, n)| *n > 0)
                    .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0)));
                let expected = heaviest.filter(|(t, n)| t != tenant && *n > mine + 1).and_then(|(t, _)| {
                    model.waiting.iter().filter(|(_, w)| w.0 == t).map(|(id, _)| *id).max()
                });
                let evicted = queue.evict_for(*tenant).map(|e| e.id);
                prop_assert_eq!(evicted, expected, "eviction for tenant {}", tenant);
                if let Some(id) = evicted {
                    model.take(id);
                    out.push(id);
                }
            }
            Op::SetWeights(weights) => {
                queue.set_weights(weights);
                if weights.len() > model.classes {
                    model.rings.resize(weights.len(), VecDeque::new());
                    model.classes = weights.len();
                }
            }
            Op::Drain => {
                let drained: Vec<u64> = queue.drain().into_iter().map(|e| e.id).collect();
                let mut expected: Vec<u64> = model.waiting.keys().copied().collect();
                let mut sorted = drained.clone();
                sorted.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(sorted, expected);
                model.waiting.clear();
                model.rings.iter_mut().for_each(VecDeque::clear);
                out.extend(drained);
            }
        }
        check_counts(&queue, &model)?;
    }
    out.extend(queue.drain().into_iter().map(|e| e.id));
    Ok((next_id, out))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Under any sequence of operations the queue agrees with the model, and every request
    /// pushed leaves exactly once.
    #[test]
    fn every_request_leaves_exactly_once(
        weights in prop::collection::vec(0u32..6, 1..4),
        ops in prop::collection::vec(op(), 0..120),
    ) {
        let (pushed, mut out) = run(&weights, &ops)?;
        out.sort_unstable();
        prop_assert_eq!(out, (0..pushed).collect::<Vec<_>>());
    }

    /// From a fresh queue with every class backlogged, each round of `sum(weights)` pops
    /// serves every class exactly its weight, and a class's tenants alternate.
    #[test]
    fn classes_share_by_weight(
        weights in prop::collection::vec(1u32..6, 1..5),
        tenants in 1u64..4,
        rounds in 1usize..4,
    ) {
        let t0 = Instant::now();
        let mut queue = FairQueue::new(&weights);
        let total: usize = weights.iter().map(|w| *w as usize).sum();
        let mut id = 0;
        for (class, weight) in weights.iter().enumerate() {
            for _ in 0..(*weight as usize) * rounds * tenants as usize {
                for tenant in 0..tenants {
                    queue.push(Entry { id, tenant, class, enqueued: t0, payload: () });
                    id += 1;
                }
            }
        }
        let mut last_tenant: BTreeMap<usize, TenantId> = BTreeMap::new();
        for _ in 0..rounds {
            let mut served = vec![0u32; weights.len()];
            for _ in 0..total {
                let entry = queue.pop(false, |_| true).ok_or_else(|| TestCaseError::fail("backlogged, yet empty"))?;
                served[entry.class] += 1;
                if let Some(previous) = last_tenant.insert(entry.class, entry.tenant) {
                    prop_assert_eq!(entry.tenant, (previous + 1) % tenants, "tenants take turns");
                }
            }
            prop_assert_eq!(&served, &weights);
        }
    }
}

/// A queue made with no classes keeps what is pushed (it puts an arrival of an unknown class
/// in the last class; with none, `push` once called itself until the stack overflowed).
/// `Admission::new` makes such a queue from a policy with no classes (the config always has
/// three, so only a hand-made policy reaches it). Run in a child process, since a stack
/// overflow aborts.
#[test]
fn a_queue_without_classes_keeps_what_is_pushed() {
    let exe = std::env::current_exe().expect("the test binary");
    let child = std::process::Command::new(exe)
        .args(["--exact", "admission::queue::proptests::push_into_a_queue_without_classes", "--nocapture"])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    assert!(
        child.status.success(),
        "push into a queue without classes: {:?}\n{}",
        child.status,
        String::from_utf8_lossy(&child.stderr)
    );
}

const CHILD: &str = "DIFY_SHAPER_QUEUE_CHILD";

/// The body of the test above; does nothing unless run as its child.
#[test]
fn push_into_a_queue_without_classes() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let mut queue: FairQueue<()> = FairQueue::new(&[]);
    queue.push(Entry { id: 1, tenant: 1, class: 0, enqueued: Instant::now(), payload: () });
    assert_eq!(queue.len(), 1);
}

//! Admission hot paths: acquire/release with nothing waiting (the per-request cost under
//! normal load), and queue operations with 10,000 requests waiting (the cost under a flood).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use dify_shaper::admission::limit::LimitSettings;
use dify_shaper::admission::queue::{Entry, FairQueue};
use dify_shaper::admission::{Admission, AdmissionPolicy, ClassPolicy, Ticket};
use tokio::time::Instant;

fn gate(limit: usize, max_queue: usize) -> Arc<Admission> {
    let classes = ["interactive", "run"]
        .iter()
        .map(|name| ClassPolicy {
            name: (*name).into(),
            weight: 1,
            queue_timeout: Duration::from_secs(600),
            queued: true,
            interactive: *name == "interactive",
        })
        .collect();
    Admission::new(
        "api",
        AdmissionPolicy {
            limit: LimitSettings { initial: limit, min: limit, max: limit, ..LimitSettings::default() },
            max_queue,
            classes,
            ..AdmissionPolicy::default()
        },
    )
}

fn uncontended(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let gate = gate(1000, 1000);
    c.bench_function("admission acquire+release, uncontended", |b| {
        b.to_async(&rt).iter(|| {
            let gate = Arc::clone(&gate);
            async move {
                let permit = gate
                    .acquire(Ticket {
                        tenant: 1,
                        tenant_label: String::new(),
                        class: 1,
                        deadline: None,
                        since: None,
                        streams: false,
                    })
                    .await;
                drop(permit);
            }
        })
    });
}

fn with_10k_waiters(c: &mut Criterion) {
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    // A real gate with one slot held and 10,000 requests from 100 tenants waiting.
    let gate = gate(1, 20_000);
    let held = rt.block_on(gate.acquire(Ticket {
        tenant: 0,
        tenant_label: String::new(),
        class: 1,
        deadline: None,
        since: None,
        streams: false,
    }));
    let mut waiters = Vec::new();
    for i in 0..10_000u64 {
        let gate = Arc::clone(&gate);
        waiters.push(rt.spawn(async move {
            let _ = gate
                .acquire(Ticket {
                    tenant: i % 100 + 1,
                    tenant_label: String::new(),
                    class: 1,
                    deadline: None,
                    since: None,
                    streams: false,
                })
                .await;
        }));
    }
    while rt.block_on(async { gate.queued() }) < 10_000 {
        std::thread::sleep(Duration::from_millis(10));
    }
    c.bench_function("admission enqueue+withdraw, 10,000 waiting", |b| {
        b.to_async(&rt).iter(|| {
            let gate = Arc::clone(&gate);
            async move {
                // Queued behind the 10,000, then withdrawn (a client that leaves).
                // Poll the acquire once (it queues), then drop it.
                let attempt = gate.acquire(Ticket {
                    tenant: 7,
                    tenant_label: String::new(),
                    class: 1,
                    deadline: None,
                    since: None,
                    streams: false,
                });
                tokio::select! {
                    biased;
                    _ = attempt => {}
                    () = std::future::ready(()) => {}
                }
            }
        })
    });
    drop(held);
    for w in waiters {
        w.abort();
    }

    let t0 = Instant::now();
    let mut queue: FairQueue<()> = FairQueue::new(&[4, 1]);
    for i in 0..10_000u64 {
        queue.push(Entry { id: i, tenant: i % 100, class: (i % 2) as usize, enqueued: t0, payload: () });
    }
    let mut next = 10_000u64;
    c.bench_function("fair queue push+pop, 10,000 waiting (100 tenants)", |b| {
        b.iter_batched(
            || {
                next += 1;
                next
            },
            |id| {
                queue.push(Entry {
                    id,
                    tenant: id % 100,
                    class: (id % 2) as usize,
                    enqueued: t0,
                    payload: (),
                });
                queue.pop(false, |_| true)
            },
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, uncontended, with_10k_waiters);
criterion_main!(benches);

//! Dumpster costs on full dumpsters of 10^4, 10^5 and 10^6 entries: a delivery that evicts,
//! statistics, and selecting a 100-entry window. All three touch O(log n) per entry, so their
//! medians should stay roughly flat as n grows. Then what a hub does at start-up on such a store:
//! open it, list the queue and read the dumpster's statistics. Flushes happen outside the timed code, as the
//! hub's group commit does them: fsync cost is the caller's, not the dumpster's, but sled 0.34
//! must be flushed regularly (see `HubStore::flush`).

use std::cell::Cell;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use store::hub::{
    DumpsterEntry, DumpsterLimits, HubStore, MessageDsn, Millis, NewMessage, QueuedMessage,
    RcptDsn, RcptStatus, Recipient,
};

const SG: &str = "SG1";
const BODY: u64 = 64;
/// Entries per `record_attempt` while pre-filling, so 10^6 entries take 10^3 transactions.
const FILL_BATCH: u64 = 1_000;
const WINDOW: u64 = 100;
/// sled page cache, as a hub's default `store_cache_size`.
const CACHE: u64 = 64 * 1024 * 1024;

/// A store whose SG1 dumpster holds exactly `n` entries of `BODY` bytes, delivered at 0..n ms,
/// with the size bound at n × BODY: full, so each further delivery evicts one entry.
struct Fixture {
    dir: tempfile::TempDir,
    store: HubStore,
    limits: DumpsterLimits,
    n: u64,
}

fn fixture(n: u64) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = HubStore::open(dir.path(), CACHE).expect("open store");
    let limits = DumpsterLimits {
        max_bytes_per_sg: n * BODY,
        max_age_ms: Millis::MAX,
    };
    let started = Instant::now();
    // The filler entries share the body of one message that stays queued (its recipient stays
    // Pending), so filling is n entries in n / FILL_BATCH transactions.
    let carrier = store
        .enqueue(message(0), &[0; BODY as usize], 0)
        .expect("enqueue carrier");
    for start in (0..n).step_by(FILL_BATCH as usize) {
        let batch = (start..n.min(start + FILL_BATCH))
            .map(|t| entry(&carrier, t))
            .collect();
        store
            .record_attempt(&carrier, batch, limits)
            .expect("fill dumpster");
        store.flush().expect("flush");
    }
    let stats = store.dumpster_stats(SG, n, limits).expect("stats");
    assert_eq!((stats.items, stats.bytes), (n, n * BODY));
    eprintln!("filled {n} entries in {:.1?}", started.elapsed());
    Fixture {
        dir,
        store,
        limits,
        n,
    }
}

fn message(t: Millis) -> NewMessage {
    NewMessage {
        message_id: format!("<{t}@bench.test>"),
        sender: "sender@example.test".to_string(),
        received_ms: t,
        expires_ms: t + 86_400_000,
        recipients: vec![Recipient {
            address: "alice@example.test".to_string(),
            cms: "cms1".to_string(),
            storage_group: SG.to_string(),
            status: RcptStatus::Pending,
            dsn: RcptDsn::default(),
        }],
        dsn: MessageDsn::default(),
    }
}

fn entry(msg: &QueuedMessage, delivered_ms: Millis) -> DumpsterEntry {
    DumpsterEntry {
        storage_group: SG.to_string(),
        message_id: msg.message_id.clone(),
        sender: msg.sender.clone(),
        recipients: vec!["alice@example.test".to_string()],
        cms: "cms1".to_string(),
        received_ms: delivered_ms,
        delivered_ms,
        size: BODY,
        blob: msg.blob,
    }
}

fn bench_size(c: &mut Criterion, n: u64) {
    let f = fixture(n);
    let mut group = c.benchmark_group("dumpster");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));

    group.bench_function(BenchmarkId::new("stats", n), |b| {
        b.iter(|| f.store.dumpster_stats(SG, f.n, f.limits).expect("stats"))
    });

    let low = f.n / 2;
    let high = low + WINDOW - 1;
    let window = |s: &HubStore| s.dumpster_window(SG, low, high, f.n, f.limits);
    assert_eq!(window(&f.store).expect("window").len() as u64, WINDOW);
    group.bench_function(BenchmarkId::new("window_100", n), |b| {
        b.iter(|| window(&f.store).expect("window"))
    });

    // Runs last: it moves the dumpster forward, one eviction per delivery.
    let clock = Cell::new(f.n);
    group.bench_function(BenchmarkId::new("insert_evict", n), |b| {
        b.iter_batched(
            || {
                f.store.flush().expect("flush");
                let t = clock.get();
                clock.set(t + 1);
                let mut msg = f
                    .store
                    .enqueue(message(t), &[1; BODY as usize], t)
                    .expect("enqueue");
                msg.recipients[0].status = RcptStatus::Delivered { at_ms: t };
                msg
            },
            |msg| {
                let delivered = vec![entry(&msg, msg.received_ms)];
                let evicted = f
                    .store
                    .record_attempt(&msg, delivered, f.limits)
                    .expect("record_attempt");
                assert_eq!(evicted, 1, "a full dumpster evicts one entry per delivery");
            },
            BatchSize::SmallInput,
        )
    });

    // Start-up: each sample opens the store afresh. sled lets go of its file lock a few ms after
    // the last handle is dropped, so the pause between samples keeps that wait out of the time.
    let Fixture {
        dir, store, limits, ..
    } = f;
    store.flush().expect("flush");
    drop(store);
    group.bench_function(BenchmarkId::new("reopen", n), |b| {
        b.iter_custom(|iters| {
            let mut took = Duration::ZERO;
            for _ in 0..iters {
                std::thread::sleep(Duration::from_millis(100));
                let start = Instant::now();
                let s = HubStore::open(dir.path(), CACHE).expect("reopen");
                assert_eq!(s.queued().expect("queue").len(), 1, "the carrier");
                s.dumpster_stats(SG, 0, limits).expect("stats");
                took += start.elapsed();
                drop(s);
            }
            took
        })
    });
    group.finish();
}

fn dumpster(c: &mut Criterion) {
    for n in [10_000, 100_000, 1_000_000] {
        bench_size(c, n);
    }
}

criterion_group!(benches, dumpster);
criterion_main!(benches);

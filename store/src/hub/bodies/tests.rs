//! The hub's bodies in segments: given back, compacted, read across layouts and reopening.

use proptest::prelude::*;
use sled::Transactional;

use super::super::tests::{deliver, enqueue, limits, open, refcount, DAY, SG1};
use super::super::{QueuedMessage, SEGMENT_BYTES};
use super::*;

const KIB: usize = 1024;

/// The body [`enqueue`] stores for message `n`.
fn body_of(n: u64, size: usize) -> Vec<u8> {
    vec![b'a' + (n % 26) as u8; size]
}

#[test]
fn delivered_bodies_out_of_the_dumpster_give_their_segments_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let bound = 256 * KIB as u64;
    let lim = limits(bound, DAY);
    for n in 0..1_000 {
        let msg = enqueue(&store, n, 1_000 + n, 16 * KIB, &[SG1]);
        deliver(&store, &msg, 2_000 + n, lim);
    }
    let before = store.body_usage();
    assert!(
        before.files >= 4,
        "16 MB written in 4 MiB segments: {before:?}"
    );
    let done = store.compact_bodies().unwrap();
    assert!(done.removed >= 3, "{done:?}");
    let after = store.body_usage();
    assert!(
        after.bytes <= bound * 13 / 10 + SEGMENT_BYTES,
        "the dumpster holds {bound} bytes, its segments take {after:?}"
    );
    let kept = store.dumpster_window(SG1, 0, u64::MAX, 3_000, lim).unwrap();
    assert!(!kept.is_empty());
    for entry in kept {
        let n: u64 = entry.message_id[1..entry.message_id.find('@').unwrap()]
            .parse()
            .unwrap();
        assert_eq!(store.body(entry.blob).unwrap(), Some(body_of(n, 16 * KIB)));
    }
}

#[test]
fn a_mostly_dead_segment_is_compacted_and_its_bodies_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let size = 64 * KIB;
    let queued: Vec<QueuedMessage> = (0..200)
        .map(|n| enqueue(&store, n, 1_000 + n, size, &[SG1]))
        .collect();
    let kept: Vec<&QueuedMessage> = queued.iter().step_by(4).collect();
    for msg in queued.iter().filter(|m| !kept.iter().any(|k| k.id == m.id)) {
        store.delete(msg.id).unwrap();
    }
    let sparse = store.bodies.plan().sparse;
    assert!(sparse.len() >= 2, "three of four bodies gone: {sparse:?}");
    let done = store.compact_bodies().unwrap();
    assert!(
        done.moved > 0 && done.removed as usize >= sparse.len(),
        "{done:?}"
    );
    assert!(store.bodies.plan().sparse.is_empty());
    drop(store);
    let store = open(dir.path());
    for msg in &kept {
        let n: u64 = msg.message_id[1..msg.message_id.find('@').unwrap()]
            .parse()
            .unwrap();
        assert_eq!(store.body(msg.blob).unwrap(), Some(body_of(n, size)));
        assert_eq!(refcount(&store, msg.blob), Some(1));
    }
    let usage = store.body_usage();
    assert!(
        usage.bytes <= usage.live * 13 / 10 + SEGMENT_BYTES,
        "{usage:?}"
    );
}

/// What earlier releases wrote: the bare reference count, and the body in sled pieces.
#[test]
fn a_body_stored_in_pieces_by_an_earlier_release_is_read_and_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let old = enqueue(&store, 7, 1_000, 20 * KIB, &[SG1]);
    let key = id_key(old.blob);
    let t = store.trees().unwrap();
    let done: Result<(), sled::transaction::TransactionError> =
        (&t.refs, &t.blobs).transaction(|(refs, blobs)| {
            refs.insert(&key, &1u64.to_be_bytes())?;
            crate::pieces::insert(blobs, &key, &body_of(7, 20 * KIB))?;
            Ok(())
        });
    done.unwrap();
    drop(t);
    store.recount_bodies().unwrap();
    assert_eq!(store.body(old.blob).unwrap(), Some(body_of(7, 20 * KIB)));
    let new = enqueue(&store, 8, 1_001, 20 * KIB, &[SG1]);
    store.delete(old.id).unwrap();
    assert_eq!(store.body(old.blob).unwrap(), None);
    assert_eq!(store.trees().unwrap().blobs.scan_prefix(key).count(), 0);
    assert_eq!(store.body(new.blob).unwrap(), Some(body_of(8, 20 * KIB)));
}

#[derive(Debug, Clone)]
enum Op {
    Enqueue(usize),
    Deliver(prop::sample::Index),
    Delete(prop::sample::Index),
    Compact,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0usize..600 * KIB).prop_map(Op::Enqueue),
        2 => any::<prop::sample::Index>().prop_map(Op::Deliver),
        2 => any::<prop::sample::Index>().prop_map(Op::Delete),
        1 => Just(Op::Compact),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Whatever is enqueued, delivered into a small dumpster, deleted, compacted and reopened in
    /// whatever order: every body still referenced reads back, what is live is exactly what is
    /// referenced, and after a compaction no segment nothing points into is left.
    #[test]
    fn referenced_bodies_survive_any_order_of_operations(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let lim = limits(2 << 20, DAY);
        let mut queued: Vec<QueuedMessage> = Vec::new();
        let mut delivered: Vec<QueuedMessage> = Vec::new();
        let mut sizes = std::collections::HashMap::new();
        for (n, op) in (0u64..).zip(ops) {
            match op {
                Op::Enqueue(size) => {
                    let msg = enqueue(&store, n, 1_000 + n, size, &[SG1]);
                    sizes.insert(msg.blob, (msg.message_id.clone(), size));
                    queued.push(msg);
                }
                Op::Deliver(i) if !queued.is_empty() => {
                    let msg = queued.remove(i.index(queued.len()));
                    deliver(&store, &msg, 2_000 + n, lim);
                    delivered.push(msg);
                }
                Op::Delete(i) if !queued.is_empty() => {
                    let msg = queued.remove(i.index(queued.len()));
                    store.delete(msg.id).unwrap();
                }
                Op::Compact => {
                    store.compact_bodies().unwrap();
                    prop_assert!(store.bodies.plan().empty.is_empty());
                }
                Op::Reopen => {
                    drop(store);
                    store = open(dir.path());
                }
                _ => {}
            }
            let mut live = 0;
            for msg in queued.iter().chain(&delivered) {
                let Some(body) = store.body(msg.blob).unwrap() else {
                    // Only a delivered body leaves, once the dumpster evicted it.
                    prop_assert!(delivered.iter().any(|d| d.id == msg.id));
                    continue;
                };
                let (id, size) = &sizes[&msg.blob];
                let n: u64 = id[1..id.find('@').unwrap()].parse().unwrap();
                prop_assert_eq!(body, body_of(n, *size));
            }
            for item in store.trees().unwrap().refs.iter() {
                let (key, raw) = item.unwrap();
                live += BlobRef::decode(&key, &raw).unwrap().at.map_or(0, |at| at.len + 16);
            }
            prop_assert_eq!(store.body_usage().live, live);
        }
    }
}

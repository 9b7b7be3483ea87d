//! Behaviour tests of the hub store against real sled databases in temporary directories.

use std::collections::BTreeSet;
use std::path::Path;

use super::*;

pub(super) const SG1: &str = "SG1";
const SG2: &str = "SG2";
pub(super) const DAY: Millis = 86_400_000;
/// sled page cache for test stores: small, like a production default.
const CACHE: u64 = 16 * 1024 * 1024;

pub(super) fn limits(max_bytes_per_sg: u64, max_age_ms: Millis) -> DumpsterLimits {
    DumpsterLimits {
        max_bytes_per_sg,
        max_age_ms,
    }
}

pub(super) fn open(dir: &Path) -> HubStore {
    HubStore::open(dir, CACHE).expect("open store")
}

fn rcpt(address: &str, sg: &str) -> Recipient {
    Recipient {
        address: address.to_string(),
        cms: "cms1".to_string(),
        storage_group: sg.to_string(),
        status: RcptStatus::Pending,
        dsn: RcptDsn::default(),
    }
}

/// Enqueues `<n@test>` received at `received_ms` with one recipient per SG in `sgs`.
pub(super) fn enqueue(
    store: &HubStore,
    n: u64,
    received_ms: Millis,
    size: usize,
    sgs: &[&str],
) -> QueuedMessage {
    let recipients = sgs
        .iter()
        .map(|sg| rcpt(&format!("user{n}@{sg}.test"), sg))
        .collect();
    let msg = NewMessage {
        message_id: format!("<{n}@test>"),
        sender: "sender@example.test".to_string(),
        received_ms,
        expires_ms: received_ms + DAY,
        recipients,
        dsn: MessageDsn::default(),
    };
    let body = vec![b'a' + (n % 26) as u8; size];
    store.enqueue(msg, &body, received_ms).expect("enqueue")
}

/// Marks every recipient delivered at `at_ms` and records one dumpster entry per SG.
pub(super) fn deliver(
    store: &HubStore,
    msg: &QueuedMessage,
    at_ms: Millis,
    lim: DumpsterLimits,
) -> u64 {
    let (done, entries) = delivered_attempt(msg, at_ms);
    store
        .record_attempt(&done, entries, lim)
        .expect("record_attempt")
}

fn entry(msg: &QueuedMessage, sg: &str, delivered_ms: Millis) -> DumpsterEntry {
    DumpsterEntry {
        storage_group: sg.to_string(),
        message_id: msg.message_id.clone(),
        sender: msg.sender.clone(),
        recipients: msg
            .recipients
            .iter()
            .filter(|r| r.storage_group == sg)
            .map(|r| r.address.clone())
            .collect(),
        cms: "cms1".to_string(),
        received_ms: msg.received_ms,
        delivered_ms,
        size: msg.size,
        blob: msg.blob,
    }
}

fn message_ids(entries: &[DumpsterEntry]) -> Vec<String> {
    entries.iter().map(|e| e.message_id.clone()).collect()
}

pub(super) fn refcount(store: &HubStore, blob: u64) -> Option<u64> {
    let raw = store
        .trees()
        .unwrap()
        .refs
        .get(blob.to_be_bytes())
        .expect("read refs")?;
    Some(
        super::bodies::BlobRef::decode(&blob.to_be_bytes(), &raw)
            .expect("a reference entry")
            .count,
    )
}

#[test]
fn enqueue_get_record_attempt_queued_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    let a = enqueue(&store, 1, 1_000, 100, &[SG1, SG2]);
    let b = enqueue(&store, 2, 1_001, 50, &[SG1]);
    assert_ne!(a.id, b.id);
    assert_ne!(a.blob, b.blob);
    assert_eq!((a.size, a.next_attempt_ms, a.attempts), (100, 1_000, 0));
    assert_eq!(store.get(a.id).unwrap(), Some(a.clone()));
    assert_eq!(store.body(a.blob).unwrap(), Some(vec![b'b'; 100]));
    assert_eq!(store.queued().unwrap(), vec![a.clone(), b.clone()]);
    assert_eq!(store.queue_len(), 2);
    assert_eq!(store.due(1_000, 10).unwrap(), vec![a.clone()]);

    // A partial attempt: SG1 delivered, SG2 deferred; the message stays with its new state.
    let mut retry = a.clone();
    retry.attempts = 1;
    retry.next_attempt_ms = 5_000;
    retry.recipients[0].status = RcptStatus::Delivered { at_ms: 1_100 };
    retry.recipients[1].status = RcptStatus::Deferred {
        reason: "451 4.3.0 try later".into(),
    };
    let evicted = store
        .record_attempt(&retry, vec![entry(&a, SG1, 1_100)], lim)
        .unwrap();
    assert_eq!(evicted, 0);
    assert_eq!(store.get(a.id).unwrap(), Some(retry.clone()));
    assert_eq!(store.queue_len(), 2);
    let due: Vec<u64> = store.due(4_999, 10).unwrap().iter().map(|m| m.id).collect();
    assert_eq!(
        due,
        vec![b.id],
        "the deferred message is not due before its retry time"
    );
    let due: Vec<u64> = store.due(5_000, 10).unwrap().iter().map(|m| m.id).collect();
    assert_eq!(due, vec![b.id, a.id]);
    assert_eq!(refcount(&store, a.blob), Some(2), "queue + SG1 entry");

    // The final attempt removes the message; the dumpster keeps the body.
    let evicted = deliver(&store, &retry, 5_100, lim);
    assert_eq!(evicted, 0);
    assert_eq!(store.get(a.id).unwrap(), None);
    assert_eq!(store.queue_len(), 1);
    assert_eq!(store.queued().unwrap(), vec![b.clone()]);
    assert_eq!(store.body(a.blob).unwrap(), Some(vec![b'b'; 100]));
    assert_eq!(refcount(&store, a.blob), Some(3), "SG1 twice + SG2");

    // A permanent failure without dumpster entries drops the only reference: the body goes.
    let mut failed = b.clone();
    failed.recipients[0].status = RcptStatus::Failed {
        code: 550,
        reason: "5.1.1 unknown".into(),
        at_ms: 1_200,
    };
    store.record_attempt(&failed, Vec::new(), lim).unwrap();
    assert_eq!(store.get(b.id).unwrap(), None);
    assert_eq!(store.body(b.blob).unwrap(), None);
    assert_eq!(refcount(&store, b.blob), None);
    assert_eq!(store.queue_len(), 0);

    // Recording an attempt twice is refused instead of adding entries twice.
    match store.record_attempt(&failed, vec![entry(&b, SG1, 1_300)], lim) {
        Err(HubStoreError::UnknownMessage(id)) => assert_eq!(id, b.id),
        other => panic!("expected UnknownMessage, got {other:?}"),
    }
    assert_eq!(store.dumpster_stats(SG1, 6_000, lim).unwrap().items, 2);
}

#[test]
fn size_bound_evicts_oldest_delivered_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(20_000, DAY);
    let sizes: Vec<u64> = (0..30).map(|i| 1_800 + (i * 73) % 400).collect();
    let mut evicted = 0;
    for (i, &size) in sizes.iter().enumerate() {
        let n = i as u64;
        let msg = enqueue(&store, n, 1_000 + n, size as usize, &[SG1]);
        evicted += deliver(&store, &msg, 2_000 + n, lim);
    }
    // Expected survivors: the longest run of newest entries that fits the bound.
    let mut kept_bytes = 0;
    let kept = sizes
        .iter()
        .rev()
        .take_while(|&&s| {
            kept_bytes += s;
            kept_bytes <= 20_000
        })
        .count();
    let first_kept = 30 - kept;
    let stats = store.dumpster_stats(SG1, 3_000, lim).unwrap();
    assert!(
        stats.bytes <= 20_000,
        "bytes {} over the bound",
        stats.bytes
    );
    assert_eq!(stats.bytes, sizes[first_kept..].iter().sum::<u64>());
    assert_eq!(stats.items, kept as u64);
    assert_eq!(stats.evicted, first_kept as u64);
    assert_eq!(
        evicted, first_kept as u64,
        "record_attempt reports its evictions"
    );
    assert_eq!(stats.oldest_delivered_ms, Some(2_000 + first_kept as u64));
    assert_eq!(stats.oldest_received_ms, Some(1_000 + first_kept as u64));
    let window = store.dumpster_window(SG1, 0, u64::MAX, 3_000, lim).unwrap();
    let expected: Vec<String> = (first_kept..30).map(|n| format!("<{n}@test>")).collect();
    assert_eq!(message_ids(&window), expected);
    assert_eq!(
        store.trees().unwrap().refs.len(),
        kept,
        "evicted bodies are deleted"
    );
}

#[test]
fn new_entry_older_than_kept_ones_is_the_one_evicted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(2_000, DAY);
    for n in 0..2 {
        let msg = enqueue(&store, n, 100, 1_000, &[SG1]);
        deliver(&store, &msg, 500 + n, lim);
    }
    let late = enqueue(&store, 9, 50, 1_000, &[SG1]);
    assert_eq!(deliver(&store, &late, 100, lim), 1);
    let window = store.dumpster_window(SG1, 0, u64::MAX, 1_000, lim).unwrap();
    assert_eq!(message_ids(&window), vec!["<0@test>", "<1@test>"]);
    let stats = store.dumpster_stats(SG1, 1_000, lim).unwrap();
    assert_eq!((stats.items, stats.bytes, stats.evicted), (2, 2_000, 1));
    assert_eq!(store.body(late.blob).unwrap(), None);
}

#[test]
fn lowered_size_bound_trims_on_next_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for n in 0..10 {
        let msg = enqueue(&store, n, n, 1_000, &[SG1]);
        deliver(&store, &msg, 100 + n, limits(10_000, DAY));
    }
    let lim = limits(3_000, DAY);
    let msg = enqueue(&store, 10, 10, 1_000, &[SG1]);
    assert_eq!(deliver(&store, &msg, 110, lim), 8);
    let window = store.dumpster_window(SG1, 0, u64::MAX, 200, lim).unwrap();
    assert_eq!(
        message_ids(&window),
        vec!["<8@test>", "<9@test>", "<10@test>"]
    );
}

#[test]
fn too_large_entry_is_counted_not_kept_and_queue_record_removed() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(20_000, DAY);
    let small = enqueue(&store, 1, 10, 1_000, &[SG1]);
    deliver(&store, &small, 20, lim);
    let big = enqueue(&store, 2, 30, 25_000, &[SG1]);
    assert_eq!(deliver(&store, &big, 40, lim), 0);
    assert_eq!(store.get(big.id).unwrap(), None);
    assert_eq!(store.queue_len(), 0);
    assert_eq!(
        store.body(big.blob).unwrap(),
        None,
        "nothing references the body"
    );
    let stats = store.dumpster_stats(SG1, 50, lim).unwrap();
    assert_eq!(
        (stats.items, stats.bytes, stats.too_large, stats.evicted),
        (1, 1_000, 1, 0)
    );
    let window = store.dumpster_window(SG1, 0, u64::MAX, 50, lim).unwrap();
    assert_eq!(message_ids(&window), vec!["<1@test>"]);
}

#[test]
fn expired_entries_are_not_counted_and_are_swept() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, 1_000);
    let mut msgs = Vec::new();
    for (n, delivered) in [(0, 100), (1, 200), (2, 1_500)] {
        let msg = enqueue(&store, n, delivered - 50, 100, &[SG1, SG2]);
        deliver(&store, &msg, delivered, lim);
        msgs.push(msg);
    }
    let now = 1_600; // cutoff 600: the first two are expired

    let stats = store.dumpster_stats(SG1, now, lim).unwrap();
    assert_eq!((stats.items, stats.bytes, stats.expired), (1, 100, 2));
    assert_eq!(stats.oldest_received_ms, Some(1_450));
    assert_eq!(stats.oldest_delivered_ms, Some(1_500));

    let window = store.dumpster_window(SG2, 0, u64::MAX, now, lim).unwrap();
    assert_eq!(message_ids(&window), vec!["<2@test>"]);
    assert_eq!(
        store.trees().unwrap().dumpster.len(),
        4,
        "SG2's expired entries wait for a sweep"
    );

    assert_eq!(store.sweep_expired(now, lim).unwrap(), 2);
    assert_eq!(store.sweep_expired(now, lim).unwrap(), 0);
    let stats = store.dumpster_stats(SG2, now, lim).unwrap();
    assert_eq!((stats.items, stats.bytes, stats.expired), (1, 100, 2));
    assert_eq!(store.trees().unwrap().dumpster.len(), 2);
    assert_eq!(store.trees().unwrap().received.len(), 2);
    assert_eq!(store.body(msgs[0].blob).unwrap(), None);
    assert!(store.body(msgs[2].blob).unwrap().is_some());
}

#[test]
fn sweep_drains_a_backlog_larger_than_one_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 30, 1_000);
    for n in 0..600 {
        let msg = enqueue(&store, n, n, 10, &[SG1]);
        deliver(&store, &msg, n, lim);
    }
    assert_eq!(store.sweep_expired(1_000 + 550, lim).unwrap(), 550);
    let stats = store.dumpster_stats(SG1, 1_550, lim).unwrap();
    assert_eq!((stats.items, stats.expired), (50, 550));
    assert_eq!(stats.oldest_delivered_ms, Some(550));
    assert_eq!(store.trees().unwrap().refs.len(), 50);
}

#[test]
fn oldest_received_stays_right_after_eviction() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(2_000, DAY);
    // (n, received, delivered): B was received first but delivered after A (a retry).
    for (n, received, delivered) in [(0, 50, 300), (1, 10, 400), (2, 200, 500)] {
        let msg = enqueue(&store, n, received, 1_000, &[SG1]);
        deliver(&store, &msg, delivered, lim);
    }
    let stats = store.dumpster_stats(SG1, 600, lim).unwrap();
    assert_eq!(stats.oldest_delivered_ms, Some(400), "A was evicted");
    assert_eq!(stats.oldest_received_ms, Some(10));
    let d = enqueue(&store, 3, 600, 1_000, &[SG1]);
    deliver(&store, &d, 600, lim);
    let stats = store.dumpster_stats(SG1, 700, lim).unwrap();
    assert_eq!(stats.oldest_delivered_ms, Some(500));
    assert_eq!(
        stats.oldest_received_ms,
        Some(200),
        "B's receive time left with B"
    );
}

#[test]
fn two_storage_groups_share_one_body() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1_500, 1_000);
    let shared = enqueue(&store, 1, 10, 1_000, &[SG1, SG2]);
    deliver(&store, &shared, 100, lim);
    assert_eq!(store.trees().unwrap().dumpster.len(), 2, "one entry per SG");
    assert_eq!(store.trees().unwrap().refs.len(), 1, "one body");
    assert_eq!(refcount(&store, shared.blob), Some(2));

    // Evict SG1's copy: SG2's entry still has the body.
    let other = enqueue(&store, 2, 20, 1_000, &[SG1]);
    assert_eq!(deliver(&store, &other, 200, lim), 1);
    assert_eq!(refcount(&store, shared.blob), Some(1));
    assert_eq!(store.body(shared.blob).unwrap(), Some(vec![b'b'; 1_000]));
    let sg2 = store.dumpster_window(SG2, 0, u64::MAX, 200, lim).unwrap();
    assert_eq!(sg2, vec![entry(&shared, SG2, 100)]);

    // Expire SG2's copy: the last reference goes, and the body with it.
    assert_eq!(store.sweep_expired(1_150, lim).unwrap(), 1);
    assert_eq!(store.body(shared.blob).unwrap(), None);
    assert_eq!(refcount(&store, shared.blob), None);
    assert!(store.body(other.blob).unwrap().is_some());
}

#[test]
fn stats_survive_restart() {
    let dir = tempfile::tempdir().unwrap();
    let lim = limits(5_000, 500);
    let (before, groups, queue_len) = {
        let store = open(dir.path());
        for n in 0..12 {
            let msg = enqueue(&store, n, n * 10, 900 + n as usize, &[SG1, SG2]);
            deliver(&store, &msg, 100 + n * 100, lim);
        }
        let big = enqueue(&store, 99, 5, 6_000, &[SG2]);
        deliver(&store, &big, 1_250, lim);
        enqueue(&store, 100, 7, 10, &[SG1]);
        store.sweep_expired(1_350, lim).unwrap();
        let before: Vec<DumpsterStats> = [SG1, SG2]
            .iter()
            .map(|sg| store.dumpster_stats(sg, 1_350, lim).unwrap())
            .collect();
        store.flush().unwrap();
        (before, store.storage_groups().unwrap(), store.queue_len())
    };
    assert!(before[1].too_large == 1 && before[0].evicted > 0 && before[0].expired > 0);
    let store = open(dir.path());
    let after: Vec<DumpsterStats> = [SG1, SG2]
        .iter()
        .map(|sg| store.dumpster_stats(sg, 1_350, lim).unwrap())
        .collect();
    assert_eq!(after, before);
    assert_eq!(store.storage_groups().unwrap(), groups);
    assert_eq!(groups, vec![SG1.to_string(), SG2.to_string()]);
    assert_eq!((store.queue_len(), queue_len), (1, 1));
}

/// Delivers messages 0..10 to SG1 and SG2 at delivered_ms = 100, 200, … 1000.
fn fill_two_sgs(store: &HubStore, lim: DumpsterLimits) -> Vec<QueuedMessage> {
    (0..10)
        .map(|n| {
            let msg = enqueue(store, n, n, 100, &[SG1, SG2]);
            deliver(store, &msg, 100 * (n + 1), lim);
            msg
        })
        .collect()
}

#[test]
fn resubmit_selects_exactly_the_window_of_one_sg() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    let msgs = fill_two_sgs(&store, lim);
    let (req, created) = store
        .resubmit_begin("r1", SG1, (300, 700), &ResubmitFilter::default(), 2_000)
        .unwrap();
    assert!(created && !req.done && req.messages == 0 && req.cursor.is_none());
    let (req, queued) = store.resubmit_step("r1", 100, 2_000, 9_000, lim).unwrap();
    assert!(req.done);
    assert_eq!(req.messages, 5);
    let ids: Vec<&str> = queued.iter().map(|m| m.message_id.as_str()).collect();
    assert_eq!(
        ids,
        vec!["<2@test>", "<3@test>", "<4@test>", "<5@test>", "<6@test>"]
    );
    for (m, n) in queued.iter().zip(2..7) {
        let orig = &msgs[n];
        assert_eq!(m.blob, orig.blob, "the same body, not a copy");
        assert_eq!(
            refcount(&store, m.blob),
            Some(3),
            "SG1 + SG2 entries + the copy"
        );
        assert_eq!(m.received_ms, orig.received_ms);
        assert_eq!(
            (m.next_attempt_ms, m.expires_ms, m.attempts),
            (2_000, 9_000, 0)
        );
        assert_eq!(m.resubmission.as_deref(), Some("r1"));
        assert_eq!(m.size, 100);
        let expected = vec![rcpt(&format!("user{n}@SG1.test"), SG1)];
        assert_eq!(m.recipients, expected, "only SG1's recipients");
        assert_eq!(store.get(m.id).unwrap().as_ref(), Some(m));
    }
    assert_eq!(store.queue_len(), 5);
    assert_eq!(store.trees().unwrap().refs.len(), 10, "no body was copied");
}

/// Delivers, at 100, 200, 300: `<0@test>` from a@x to SG1's alice and bob, `<1@test>` from b@x
/// to alice, `<2@test>` from a@x to bob.
fn fill_for_filters(store: &HubStore, lim: DumpsterLimits) {
    let sent = [
        ("a@x.test", &["alice@SG1.test", "bob@SG1.test"][..]),
        ("b@x.test", &["alice@SG1.test"][..]),
        ("a@x.test", &["bob@SG1.test"][..]),
    ];
    for (n, (sender, rcpts)) in sent.iter().enumerate() {
        let msg = NewMessage {
            message_id: format!("<{n}@test>"),
            sender: sender.to_string(),
            received_ms: 50,
            expires_ms: DAY,
            recipients: rcpts.iter().map(|r| rcpt(r, SG1)).collect(),
            dsn: MessageDsn::default(),
        };
        let msg = store.enqueue(msg, b"body", 50).expect("enqueue");
        deliver(store, &msg, 100 * (n as u64 + 1), lim);
    }
}

/// A re-queued copy: its Message-ID and recipients.
type Requeued<'a> = (&'a str, Vec<&'a str>);

#[test]
fn resubmit_filters_by_recipient_sender_and_message_id_and_test_only_queues_nothing() {
    let lim = limits(1 << 20, DAY);
    let cases: Vec<(&str, ResubmitFilter, Vec<Requeued>)> = vec![
        (
            "recipient: its entries, to it alone",
            ResubmitFilter {
                recipient: Some("ALICE@sg1.test".into()),
                ..Default::default()
            },
            vec![
                ("<0@test>", vec!["alice@SG1.test"]),
                ("<1@test>", vec!["alice@SG1.test"]),
            ],
        ),
        (
            "sender",
            ResubmitFilter {
                sender: Some("A@x.test".into()),
                ..Default::default()
            },
            vec![
                ("<0@test>", vec!["alice@SG1.test", "bob@SG1.test"]),
                ("<2@test>", vec!["bob@SG1.test"]),
            ],
        ),
        (
            "message id without brackets",
            ResubmitFilter {
                message_id: Some("1@test".into()),
                ..Default::default()
            },
            vec![("<1@test>", vec!["alice@SG1.test"])],
        ),
        (
            "all three",
            ResubmitFilter {
                recipient: Some("bob@SG1.test".into()),
                sender: Some("a@x.test".into()),
                message_id: Some("<2@test>".into()),
                test_only: false,
            },
            vec![("<2@test>", vec!["bob@SG1.test"])],
        ),
        (
            "no match",
            ResubmitFilter {
                recipient: Some("carol@SG1.test".into()),
                ..Default::default()
            },
            vec![],
        ),
    ];
    for (name, filter, expected) in cases {
        for test_only in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = open(dir.path());
            fill_for_filters(&store, lim);
            let filter = ResubmitFilter {
                test_only,
                ..filter.clone()
            };
            store
                .resubmit_begin("r", SG1, (0, 1_000), &filter, 2_000)
                .unwrap();
            // One entry per step, so the cursor passes entries the filter skips.
            let mut queued = Vec::new();
            let req = loop {
                let (req, q) = store.resubmit_step("r", 1, 2_000, 9_000, lim).unwrap();
                queued.extend(q);
                if req.done {
                    break req;
                }
            };
            assert_eq!(
                req.messages,
                expected.len() as u64,
                "{name} test_only={test_only}"
            );
            assert_eq!(
                req.filter, filter,
                "{name}: the filter is kept with the request"
            );
            if test_only {
                assert!(queued.is_empty(), "{name}: test-only queued something");
                assert_eq!(store.queue_len(), 0, "{name}");
                continue;
            }
            let got: Vec<Requeued> = queued
                .iter()
                .map(|m| {
                    let rcpts = m.recipients.iter().map(|r| r.address.as_str()).collect();
                    (m.message_id.as_str(), rcpts)
                })
                .collect();
            assert_eq!(got, expected, "{name}");
            assert_eq!(store.queue_len(), expected.len(), "{name}");
        }
    }
}

#[test]
fn resubmit_with_same_id_twice_queues_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    fill_two_sgs(&store, lim);
    store
        .resubmit_begin("r1", SG2, (0, 10_000), &ResubmitFilter::default(), 2_000)
        .unwrap();
    let (first, queued) = store.resubmit_step("r1", 100, 2_000, 9_000, lim).unwrap();
    assert_eq!(queued.len(), 10);
    let (again, created) = store
        .resubmit_begin("r1", SG2, (0, 10_000), &ResubmitFilter::default(), 3_000)
        .unwrap();
    assert!(!created);
    assert_eq!(again, first, "the stored request, unchanged");
    let (_, queued) = store.resubmit_step("r1", 100, 3_000, 9_000, lim).unwrap();
    assert!(queued.is_empty());
    assert_eq!(store.queue_len(), 10);
    assert_eq!(store.resubmit_requests().unwrap(), vec![first]);
    match store.resubmit_step("nope", 1, 3_000, 9_000, lim) {
        Err(HubStoreError::UnknownRequest(id)) => assert_eq!(id, "nope"),
        other => panic!("expected UnknownRequest, got {other:?}"),
    }
}

#[test]
fn resubmit_resumes_across_reopen_and_queues_each_entry_once() {
    let dir = tempfile::tempdir().unwrap();
    let lim = limits(1 << 20, DAY);
    {
        let store = open(dir.path());
        fill_two_sgs(&store, lim);
        store
            .resubmit_begin("r1", SG1, (150, 950), &ResubmitFilter::default(), 2_000)
            .unwrap();
        store.flush().unwrap();
    }
    let mut seen = Vec::new();
    let mut steps = 0;
    loop {
        let store = open(dir.path());
        let (req, queued) = store.resubmit_step("r1", 3, 2_000, 9_000, lim).unwrap();
        seen.extend(queued.iter().map(|m| m.message_id.clone()));
        assert_eq!(req.messages, seen.len() as u64);
        store.flush().unwrap();
        steps += 1;
        if req.done {
            assert_eq!(store.queue_len(), seen.len());
            break;
        }
        assert!(steps < 10, "the request never finished");
    }
    let expected: Vec<String> = (1..9).map(|n| format!("<{n}@test>")).collect();
    assert_eq!(seen, expected);
    assert_eq!(steps, 3);
    let store = open(dir.path());
    let (req, queued) = store.resubmit_step("r1", 3, 2_000, 9_000, lim).unwrap();
    assert!(req.done && queued.is_empty());
}

#[test]
fn resubmit_skips_entries_evicted_or_expired_meanwhile() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, 2_000);
    fill_two_sgs(&store, lim);
    store
        .resubmit_begin("r1", SG1, (0, 10_000), &ResubmitFilter::default(), 1_000)
        .unwrap();
    let (_, first) = store.resubmit_step("r1", 2, 1_000, 9_000, lim).unwrap();
    // By now = 2_450 everything delivered before 450 has expired: <2@test> and <3@test> are gone.
    let (req, rest) = store.resubmit_step("r1", 100, 2_450, 9_000, lim).unwrap();
    let ids: Vec<String> = first
        .iter()
        .chain(&rest)
        .map(|m| m.message_id.clone())
        .collect();
    let expected: Vec<String> = [0, 1, 4, 5, 6, 7, 8, 9]
        .iter()
        .map(|n| format!("<{n}@test>"))
        .collect();
    assert_eq!(ids, expected);
    assert!(req.done);
}

#[test]
fn corrupt_records_give_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    let msg = enqueue(&store, 1, 10, 10, &[SG1]);
    store
        .trees()
        .unwrap()
        .queue
        .insert(msg.id.to_be_bytes(), &b"{not json"[..])
        .unwrap();
    match store.get(msg.id) {
        Err(HubStoreError::Corrupt { tree, key, .. }) => {
            assert_eq!(tree, "queue");
            assert_eq!(key, msg.id.to_be_bytes().escape_ascii().to_string());
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(
        store.queued(),
        Err(HubStoreError::Corrupt { tree: "queue", .. })
    ));

    store
        .trees()
        .unwrap()
        .stats
        .insert(SG1, &b"[]"[..])
        .unwrap();
    let err = store.dumpster_stats(SG1, 20, lim).unwrap_err();
    assert!(
        matches!(&err, HubStoreError::Corrupt { tree: "dumpster_stats", key, .. } if key == "SG1")
    );
    assert!(
        err.to_string().contains("dumpster_stats"),
        "message names the tree: {err}"
    );

    let other = enqueue(&store, 2, 10, 10, &[SG2]);
    deliver(&store, &other, 15, lim);
    let key = store
        .trees()
        .unwrap()
        .dumpster
        .scan_prefix(keys::sg_prefix(SG2))
        .keys()
        .next()
        .unwrap()
        .unwrap();
    store
        .trees()
        .unwrap()
        .dumpster
        .insert(&key, &b"garbage"[..])
        .unwrap();
    assert!(matches!(
        store.dumpster_window(SG2, 0, 100, 20, lim),
        Err(HubStoreError::Corrupt {
            tree: "dumpster",
            ..
        })
    ));

    // A key inside SG3's range that lacks its sequence number.
    let mut short = keys::sg_prefix("SG3");
    short.extend_from_slice(&50u64.to_be_bytes());
    store
        .trees()
        .unwrap()
        .dumpster
        .insert(short, &b"{}"[..])
        .unwrap();
    assert!(matches!(
        store.dumpster_window("SG3", 0, 100, 20, lim),
        Err(HubStoreError::Corrupt {
            tree: "dumpster",
            ..
        })
    ));
}

#[test]
fn second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match HubStore::open(dir.path(), CACHE) {
        Err(HubStoreError::Locked { path, .. }) => assert_eq!(path, dir.path()),
        Err(other) => panic!("expected Locked, got {other:?}"),
        Ok(_) => panic!("a second open of a locked store succeeded"),
    }
}

#[test]
fn concurrent_writers_share_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let store = &store;
            s.spawn(move || {
                for n in 0..50 {
                    enqueue(store, t * 100 + n, n, 64, &[SG1]);
                    store.flush().expect("flush");
                }
            });
        }
    });
    assert_eq!(store.queue_len(), 200);
    assert_eq!(store.queued().unwrap().len(), 200);
}

#[test]
fn entry_with_unknown_blob_aborts_the_whole_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    let msg = enqueue(&store, 1, 10, 10, &[SG1]);
    let mut done = msg.clone();
    done.recipients[0].status = RcptStatus::Delivered { at_ms: 20 };
    let mut bad = entry(&msg, SG1, 20);
    bad.blob = msg.blob + 1_000;
    match store.record_attempt(&done, vec![bad], lim) {
        Err(HubStoreError::UnknownBlob(blob)) => assert_eq!(blob, msg.blob + 1_000),
        other => panic!("expected UnknownBlob, got {other:?}"),
    }
    assert_eq!(
        store.get(msg.id).unwrap(),
        Some(msg.clone()),
        "nothing was committed"
    );
    assert_eq!(
        store.dumpster_stats(SG1, 30, lim).unwrap(),
        DumpsterStats::default()
    );
    assert_eq!(refcount(&store, msg.blob), Some(1));

    let mut other_blob = done.clone();
    other_blob.blob += 1;
    assert!(matches!(
        store.record_attempt(&other_blob, Vec::new(), lim),
        Err(HubStoreError::BlobMismatch { .. })
    ));
    assert_eq!(store.get(msg.id).unwrap(), Some(msg));
}

#[test]
fn queue_records_from_before_dsn_support_still_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let queued = enqueue(&store, 1, 1_000, 10, &[SG1]);
    let mut json = serde_json::to_value(&queued).expect("encode");
    json.as_object_mut().expect("a record").remove("dsn");
    for r in json["recipients"].as_array_mut().expect("recipients") {
        r.as_object_mut().expect("a recipient").remove("dsn");
    }
    let old: QueuedMessage = serde_json::from_value(json).expect("an old record decodes");
    assert_eq!(old, queued, "missing DSN fields mean no DSN request");
}

#[test]
fn a_hold_survives_reopen_and_keeps_the_message_out_of_the_due_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = {
        let store = open(dir.path());
        let a = enqueue(&store, 1, 1_000, 10, &[SG1]);
        let b = enqueue(&store, 2, 1_000, 10, &[SG1]);
        let held = store.hold(a.id, 1_500).expect("hold");
        assert_eq!(held.held_since_ms, Some(1_500));
        assert!(matches!(
            store.hold(a.id, 1_600),
            Err(HubStoreError::AlreadyHeld(id)) if id == a.id
        ));
        assert!(matches!(
            store.retry_now(a.id, 1_600),
            Err(HubStoreError::Held(id)) if id == a.id
        ));
        store.flush().expect("flush");
        (a, b)
    };
    let store = open(dir.path());
    let held = store.get(a.id).unwrap().expect("still queued");
    assert_eq!(held.held_since_ms, Some(1_500), "the hold is persisted");
    assert_eq!(store.body(a.blob).unwrap(), Some(vec![b'b'; 10]));
    let due: Vec<u64> = store
        .due(DAY * 2, 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(due, vec![b.id], "a held message is never due");

    let released = store.release(a.id, 11_500).expect("release");
    assert_eq!(released.held_since_ms, None);
    assert_eq!(released.next_attempt_ms, 11_500, "due now");
    assert_eq!(
        released.expires_ms,
        a.expires_ms + 10_000,
        "the time held is added to the expiry"
    );
    let due: Vec<u64> = store
        .due(11_500, 10)
        .unwrap()
        .iter()
        .map(|m| m.id)
        .collect();
    assert_eq!(due, vec![b.id, a.id]);
    assert!(matches!(
        store.release(a.id, 12_000),
        Err(HubStoreError::NotHeld(id)) if id == a.id
    ));
    assert!(matches!(
        store.hold(99_999, 1),
        Err(HubStoreError::UnknownMessage(99_999))
    ));
}

#[test]
fn retry_now_makes_a_deferred_message_due() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = enqueue(&store, 1, 1_000, 10, &[SG1]);
    let mut deferred = a.clone();
    deferred.attempts = 1;
    deferred.next_attempt_ms = 60_000;
    store
        .record_attempt(&deferred, Vec::new(), limits(1 << 20, DAY))
        .unwrap();
    assert!(store.due(2_000, 10).unwrap().is_empty());
    let retried = store.retry_now(a.id, 2_000).expect("retry");
    assert_eq!((retried.next_attempt_ms, retried.attempts), (2_000, 1));
    assert_eq!(store.due(2_000, 10).unwrap(), vec![retried]);
}

#[test]
fn an_attempt_recorded_after_a_hold_keeps_the_hold_and_expiry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let a = enqueue(&store, 1, 1_000, 10, &[SG1, SG2]);
    // The attempt read the message before the administrator held it.
    let mut attempt = a.clone();
    store.hold(a.id, 1_200).expect("hold");
    attempt.attempts = 1;
    attempt.next_attempt_ms = 5_000;
    attempt.expires_ms = 0;
    attempt.recipients[0].status = RcptStatus::Delivered { at_ms: 1_300 };
    attempt.recipients[1].status = RcptStatus::Deferred {
        reason: "451 4.3.0 later".into(),
    };
    store
        .record_attempt(&attempt, vec![entry(&a, SG1, 1_300)], limits(1 << 20, DAY))
        .unwrap();
    let stored = store.get(a.id).unwrap().expect("still queued");
    assert_eq!(stored.held_since_ms, Some(1_200), "still held");
    assert_eq!(
        stored.expires_ms, a.expires_ms,
        "expiry is not the attempt's"
    );
    assert_eq!(stored.recipients, attempt.recipients, "the outcome is kept");
    assert!(store.due(DAY * 2, 10).unwrap().is_empty());
}

#[test]
fn delete_drops_the_body_unless_the_dumpster_shares_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    let a = enqueue(&store, 1, 1_000, 10, &[SG1]);
    let removed = store.delete(a.id).expect("delete");
    assert_eq!(removed, a);
    assert_eq!(store.get(a.id).unwrap(), None);
    assert_eq!(store.body(a.blob).unwrap(), None);
    assert_eq!(store.queue_len(), 0);
    assert!(store.due(DAY, 10).unwrap().is_empty());
    assert!(matches!(
        store.delete(a.id),
        Err(HubStoreError::UnknownMessage(id)) if id == a.id
    ));

    // SG1 delivered, SG2 still queued: deleting the message leaves the dumpster's copy whole.
    let b = enqueue(&store, 2, 1_000, 10, &[SG1, SG2]);
    let mut partial = b.clone();
    partial.attempts = 1;
    partial.recipients[0].status = RcptStatus::Delivered { at_ms: 1_100 };
    store
        .record_attempt(&partial, vec![entry(&b, SG1, 1_100)], lim)
        .unwrap();
    store.hold(b.id, 1_200).expect("hold");
    store.delete(b.id).expect("a held message can be deleted");
    assert_eq!(refcount(&store, b.blob), Some(1), "the SG1 entry");
    assert_eq!(store.body(b.blob).unwrap(), Some(vec![b'c'; 10]));
    assert_eq!(store.dumpster_stats(SG1, 2_000, lim).unwrap().items, 1);
}

#[test]
fn queue_records_from_before_holds_load_as_not_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let queued = enqueue(&store, 1, 1_000, 10, &[SG1]);
    let mut json = serde_json::to_value(&queued).expect("encode");
    json.as_object_mut()
        .expect("a record")
        .remove("held_since_ms");
    let old: QueuedMessage = serde_json::from_value(json).expect("an old record decodes");
    assert!(!old.is_held());
    assert_eq!(old, queued);
}

/// A message's attempt in which every recipient was delivered at `at_ms`, with its entries.
fn delivered_attempt(msg: &QueuedMessage, at_ms: Millis) -> (QueuedMessage, Vec<DumpsterEntry>) {
    let mut done = msg.clone();
    done.attempts += 1;
    for r in &mut done.recipients {
        r.status = RcptStatus::Delivered { at_ms };
    }
    let sgs: BTreeSet<&str> = msg
        .recipients
        .iter()
        .map(|r| r.storage_group.as_str())
        .collect();
    let entries = sgs.into_iter().map(|sg| entry(msg, sg, at_ms)).collect();
    (done, entries)
}

#[test]
fn a_batch_of_new_messages_is_stored_whole_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let batch: Vec<(NewMessage, Vec<u8>)> = (0..5u8)
        .map(|n| {
            let msg = NewMessage {
                message_id: format!("<b{n}@test>"),
                sender: "sender@example.test".to_string(),
                received_ms: 1_000,
                expires_ms: 1_000 + DAY,
                recipients: vec![rcpt("user@sg1.test", SG1)],
                dsn: MessageDsn::default(),
            };
            (msg, vec![b'0' + n; 10 + n as usize])
        })
        .collect();
    let queued = store.enqueue_batch(batch, 1_000).expect("enqueue_batch");
    let ids: BTreeSet<u64> = queued.iter().map(|q| q.id).collect();
    assert_eq!(ids.len(), 5, "every message has its own id");
    assert_eq!(store.queue_len(), 5);
    for (n, q) in queued.iter().enumerate() {
        assert_eq!(q.message_id, format!("<b{n}@test>"));
        assert_eq!(q.size, 10 + n as u64);
        assert_eq!(store.get(q.id).unwrap().as_ref(), Some(q));
        assert_eq!(
            store.body(q.blob).unwrap(),
            Some(vec![b'0' + n as u8; 10 + n])
        );
        assert_eq!(refcount(&store, q.blob), Some(1));
    }
}

#[test]
fn a_batch_of_attempts_keeps_the_dumpster_as_one_by_one_would() {
    // The same deliveries recorded one by one and as one batch leave the same dumpster: the
    // size bound evicts the same (oldest) entries, counters and blob references agree.
    let lim = limits(1_000, DAY);
    let mut results = Vec::new();
    for batched in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let msgs: Vec<QueuedMessage> = (0..8)
            .map(|n| enqueue(&store, n, 1_000 + n, 300, &[SG1]))
            .collect();
        // One message stays queued: its recipient was deferred.
        let mut deferred = enqueue(&store, 99, 2_000, 300, &[SG2]);
        deferred.attempts += 1;
        deferred.recipients[0].status = RcptStatus::Deferred {
            reason: "451 try later".into(),
        };
        let mut attempts: Vec<_> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| delivered_attempt(m, 5_000 + i as u64))
            .collect();
        attempts.push((deferred.clone(), Vec::new()));
        let evicted = if batched {
            store.record_attempts(attempts, lim).expect("batch")
        } else {
            attempts
                .into_iter()
                .map(|(m, e)| store.record_attempt(&m, e, lim).expect("one"))
                .sum()
        };
        let window = store.dumpster_window(SG1, 0, u64::MAX, 6_000, lim).unwrap();
        let stats = store.dumpster_stats(SG1, 6_000, lim).unwrap();
        let refs: Vec<Option<u64>> = msgs.iter().map(|m| refcount(&store, m.blob)).collect();
        assert_eq!(store.queue_len(), 1, "only the deferred message is left");
        assert_eq!(store.get(deferred.id).unwrap().map(|m| m.attempts), Some(1));
        results.push((evicted, message_ids(&window), stats, refs));
    }
    let (evicted, kept, stats, refs) = &results[1];
    assert_eq!(*evicted, 5, "8 × 300 bytes under a 1000-byte bound keeps 3");
    assert_eq!(kept, &["<5@test>", "<6@test>", "<7@test>"]);
    assert_eq!((stats.items, stats.bytes, stats.evicted), (3, 900, 5));
    assert_eq!(
        refs.iter().filter(|r| r.is_some()).count(),
        3,
        "evicted bodies are freed"
    );
    assert_eq!(results[0], results[1]);
}

#[test]
fn a_batch_with_a_message_no_longer_queued_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    let a = enqueue(&store, 1, 1_000, 100, &[SG1]);
    let b = enqueue(&store, 2, 1_000, 100, &[SG1]);
    deliver(&store, &b, 2_000, lim);
    let batch = vec![delivered_attempt(&a, 3_000), delivered_attempt(&b, 3_000)];
    let e = store.record_attempts(batch, lim).expect_err("b is gone");
    assert!(
        matches!(e, HubStoreError::UnknownMessage(id) if id == b.id),
        "{e}"
    );
    assert_eq!(store.get(a.id).unwrap().map(|m| m.attempts), Some(0));
    assert_eq!(store.dumpster_stats(SG1, 3_000, lim).unwrap().items, 1);
}

#[test]
fn newest_delivered_is_the_latest_delivery_time_per_storage_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    assert_eq!(store.newest_delivered(SG1).unwrap(), None);
    // Delivered out of time order, as after a backward step of the hub's clock.
    for (n, at) in [(0, 5_000), (1, 9_000), (2, 7_000)] {
        let msg = enqueue(&store, n, 100, 10, &[SG1]);
        deliver(&store, &msg, at, lim);
    }
    let other = enqueue(&store, 3, 100, 10, &[SG2]);
    deliver(&store, &other, 20_000, lim);
    assert_eq!(store.newest_delivered(SG1).unwrap(), Some(9_000));
    assert_eq!(store.newest_delivered(SG2).unwrap(), Some(20_000));
}

#[test]
fn done_resubmission_requests_are_forgotten_after_the_cutoff_and_no_others() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let lim = limits(1 << 20, DAY);
    fill_two_sgs(&store, lim);
    for (id, created) in [("old", 2_000), ("new", 5_000), ("unfinished", 1_000)] {
        store
            .resubmit_begin(id, SG2, (0, 10_000), &ResubmitFilter::default(), created)
            .unwrap();
    }
    // Two of them run to the end; "unfinished" is never stepped.
    for id in ["old", "new"] {
        let (r, _) = store.resubmit_step(id, 100, 6_000, 9_000, lim).unwrap();
        assert!(r.done, "{r:?}");
    }
    assert_eq!(store.forget_resubmissions(4_000).unwrap(), 1);
    let left: Vec<String> = store
        .resubmit_requests()
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(left, ["new", "unfinished"]);
    // A forgotten request asked again starts over: it resubmits only what the dumpster holds.
    let (_, created) = store
        .resubmit_begin("old", SG2, (0, 10_000), &ResubmitFilter::default(), 7_000)
        .unwrap();
    assert!(created);
    assert_eq!(
        store.forget_resubmissions(u64::MAX).unwrap(),
        1,
        "only the done one"
    );
}

use super::*;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
/// Dedup retention of the test stores (ms).
const RETENTION: Millis = 1_000_000;
/// sled page cache for test stores: small, like a production default.
const CACHE: u64 = 16 * 1024 * 1024;

fn rec(id: &str, to: &[&str], time_ms: Millis) -> LogRecord {
    LogRecord {
        message_id: id.into(),
        recipients: to.iter().map(|s| s.to_string()).collect(),
        sender: "carol@remote.test".into(),
        time_ms,
        body: body(id),
    }
}

/// The body `rec` gives a message.
fn body(id: &str) -> Vec<u8> {
    format!("Message-ID: {id}\r\n\r\nhello\r\n").into_bytes()
}

fn at(generation: u64, index: u32) -> LogPosition {
    LogPosition { generation, index }
}

fn ids(store: &MailboxStore, address: &str) -> Vec<String> {
    store
        .list(address)
        .expect("list")
        .into_iter()
        .map(|m| m.message_id)
        .collect()
}

fn open(dir: &Path) -> MailboxStore {
    MailboxStore::open(&dir.join("mailbox"), RETENTION, CACHE).expect("open store")
}

#[test]
fn same_message_id_twice_is_stored_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    assert!(!store
        .contains(ALICE, "<m1>", &ContentDigest::of(&body("<m1>")), 0)
        .expect("contains"));
    assert_eq!(
        store
            .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 10))
            .expect("apply"),
        1
    );
    assert!(store
        .contains(ALICE, "<m1>", &ContentDigest::of(&body("<m1>")), 0)
        .expect("contains"));
    // A resubmission from a hub's dumpster arrives as a new record with the same Message-ID.
    assert_eq!(
        store
            .apply("SG1", at(1, 1), &rec("<m1>", &[ALICE], 20))
            .expect("apply"),
        0
    );
    let list = store.list(ALICE).expect("list");
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].position, at(1, 0));
    assert_eq!(list[0].delivered_ms, 10);
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(1, 1), 20))
    );
}

#[test]
fn only_recipients_missing_the_message_get_a_copy_sharing_one_body() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let first = rec("<m1>", &[ALICE], 10);
    store.apply("SG1", at(1, 0), &first).expect("apply");
    let both = rec("<m1>", &[ALICE, BOB, BOB], 20);
    assert_eq!(
        store.apply("SG1", at(1, 1), &both).expect("apply"),
        1,
        "only bob, once"
    );
    assert_eq!(ids(&store, ALICE), ["<m1>"]);
    assert_eq!(ids(&store, BOB), ["<m1>"]);
    assert_eq!(store.list(BOB).expect("list")[0].position, at(1, 1));
    assert_eq!(
        store.body(ALICE, "<m1>").expect("body"),
        Some(first.body.clone())
    );
    assert_eq!(
        store.body(BOB, "<m1>").expect("body"),
        Some(both.body.clone())
    );
    assert_eq!(store.body(BOB, "<m2>").expect("body"), None);

    let shared = rec("<m2>", &[ALICE, BOB], 30);
    assert_eq!(store.apply("SG1", at(1, 2), &shared).expect("apply"), 2);
    assert_eq!(
        store.t().unwrap().body_at.len(),
        3,
        "one body per record that added copies"
    );
    assert_eq!(store.body(BOB, "<m2>").expect("body"), Some(shared.body));
}

#[test]
fn replaying_the_same_positions_changes_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let log = [
        (at(1, 0), rec("<a>", &[ALICE, BOB], 1)),
        (at(1, 1), rec("<b>", &[ALICE], 2)),
        (at(2, 0), rec("<c>", &[BOB], 3)),
    ];
    let added: Vec<usize> = log
        .iter()
        .map(|(pos, r)| store.apply("SG1", *pos, r).expect("apply"))
        .collect();
    assert_eq!(added, [2, 1, 1]);
    let before = (
        store.list(ALICE).expect("list"),
        store.list(BOB).expect("list"),
    );
    // A crash mid-replay: the node replays the same records again.
    for (pos, r) in &log {
        assert_eq!(store.apply("SG1", *pos, r).expect("re-apply"), 0);
    }
    // Even a different record at an applied position is ignored: the position is what was applied.
    assert_eq!(
        store
            .apply("SG1", at(1, 1), &rec("<x>", &[ALICE], 9))
            .expect("apply"),
        0
    );
    assert_eq!(
        (
            store.list(ALICE).expect("list"),
            store.list(BOB).expect("list")
        ),
        before
    );
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(2, 0), 3))
    );
}

#[test]
fn list_is_in_delivery_order_not_message_id_order() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    for (i, id) in ["<z>", "<a>", "<m>"].iter().enumerate() {
        store
            .apply("SG1", at(1, i as u32), &rec(id, &[ALICE], 100 + i as u64))
            .expect("apply");
    }
    assert_eq!(ids(&store, ALICE), ["<z>", "<a>", "<m>"]);
    assert!(store.list(BOB).expect("list").is_empty());
    // An address that is a prefix of another must not see its messages.
    assert!(store.list("alice@example.tes").expect("list").is_empty());
}

#[test]
fn checkpoint_follows_the_newest_applied_record_per_storage_group() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    assert_eq!(store.checkpoint("SG1").expect("checkpoint"), None);
    store
        .apply("SG1", at(1, 0), &rec("<a>", &[ALICE], 5))
        .expect("apply");
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(1, 0), 5))
    );
    store
        .apply("SG1", at(3, 7), &rec("<b>", &[ALICE], 8))
        .expect("apply");
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(3, 7), 8))
    );
    store
        .apply("SG2", at(1, 0), &rec("<c>", &[BOB], 9))
        .expect("apply");
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(3, 7), 8))
    );
    assert_eq!(
        store.checkpoint("SG2").expect("checkpoint"),
        Some((at(1, 0), 9))
    );
    assert_eq!(
        store.checkpoint("SG").expect("checkpoint"),
        None,
        "prefix of another SG name"
    );
}

#[test]
fn discard_from_undoes_exactly_the_later_generations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 1))
        .expect("apply");
    store
        .apply("SG1", at(1, 1), &rec("<m2>", &[BOB], 2))
        .expect("apply");
    // Later generations: a duplicate for alice that added bob, and a new message.
    store
        .apply("SG1", at(2, 0), &rec("<m1>", &[ALICE, BOB], 3))
        .expect("apply");
    store
        .apply("SG1", at(3, 0), &rec("<m3>", &[ALICE, BOB], 4))
        .expect("apply");
    store
        .apply("SG2", at(2, 0), &rec("<o1>", &["dave@example.test"], 5))
        .expect("apply");

    assert_eq!(store.discard_from("SG1", 2).expect("discard"), 3);
    assert_eq!(
        ids(&store, ALICE),
        ["<m1>"],
        "alice keeps the copy from generation 1"
    );
    assert_eq!(ids(&store, BOB), ["<m2>"]);
    assert!(!store
        .contains(BOB, "<m1>", &ContentDigest::of(&body("<m1>")), 0)
        .expect("contains"));
    assert!(!store
        .contains(ALICE, "<m3>", &ContentDigest::of(&body("<m3>")), 0)
        .expect("contains"));
    assert_eq!(
        store.body(ALICE, "<m1>").expect("body"),
        Some(rec("<m1>", &[], 0).body)
    );
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(1, 1), 2))
    );
    assert_eq!(
        store.t().unwrap().body_at.len(),
        3,
        "the bodies of generation 1 and of SG2 remain"
    );
    assert_eq!(
        ids(&store, "dave@example.test"),
        ["<o1>"],
        "other SGs untouched"
    );
    assert_eq!(
        store.checkpoint("SG2").expect("checkpoint"),
        Some((at(2, 0), 5))
    );

    // The new active's generation 2 replays into the freed positions.
    assert_eq!(
        store
            .apply("SG1", at(2, 0), &rec("<m3>", &[ALICE], 6))
            .expect("apply"),
        1
    );
    assert_eq!(ids(&store, ALICE), ["<m1>", "<m3>"]);
    assert_eq!(store.discard_from("SG1", 9).expect("nothing that late"), 0);
}

#[test]
fn discard_walks_more_than_one_chunk() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let n = DISCARD_CHUNK as u32 * 2 + 3;
    for i in 0..n {
        store
            .apply("SG1", at(2, i), &rec(&format!("<{i}>"), &[ALICE], 1))
            .expect("apply");
    }
    store
        .apply("SG1", at(1, 0), &rec("<first>", &[ALICE], 1))
        .expect("apply");
    assert_eq!(store.discard_from("SG1", 2).expect("discard"), u64::from(n));
    assert_eq!(ids(&store, ALICE), ["<first>"]);
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(1, 0), 1))
    );
}

#[test]
fn clear_drops_one_storage_group() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .apply("SG1", at(1, 0), &rec("<a>", &[ALICE], 1))
        .expect("apply");
    store
        .apply("SG2", at(1, 0), &rec("<b>", &[BOB], 2))
        .expect("apply");
    store.clear("SG1").expect("clear");
    assert!(store.list(ALICE).expect("list").is_empty());
    assert_eq!(store.checkpoint("SG1").expect("checkpoint"), None);
    assert_eq!(ids(&store, BOB), ["<b>"]);
    assert_eq!(
        store.checkpoint("SG2").expect("checkpoint"),
        Some((at(1, 0), 2))
    );
}

#[test]
fn restart_keeps_everything() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let message = rec("<m1>", &[ALICE, BOB], 42);
    let before = {
        let store = open(tmp.path());
        store.apply("SG1", at(4, 2), &message).expect("apply");
        store
            .apply("SG1", at(4, 3), &rec("<m2>", &[ALICE], 43))
            .expect("apply");
        store.flush().expect("flush");
        store.list(ALICE).expect("list")
    };
    let store = open(tmp.path());
    assert_eq!(store.list(ALICE).expect("list"), before);
    assert_eq!(ids(&store, BOB), ["<m1>"]);
    assert_eq!(
        store.body(BOB, "<m1>").expect("body"),
        Some(message.body.clone())
    );
    assert_eq!(
        store.checkpoint("SG1").expect("checkpoint"),
        Some((at(4, 3), 43))
    );
    assert_eq!(store.apply("SG1", at(4, 2), &message).expect("replay"), 0);
    assert_eq!(
        store
            .apply("SG1", at(5, 0), &rec("<m3>", &[ALICE], 44))
            .expect("apply"),
        1
    );
    assert_eq!(
        ids(&store, ALICE),
        ["<m1>", "<m2>", "<m3>"],
        "order continues after restart"
    );
}

/// Message `<m1>` to alice at `time_ms` as hub `hub` stamped it, with `extra` headers a relay added
/// on top (trace headers), `subject` and `text` as its originator wrote them.
fn stamped(hub: &str, extra: &str, subject: &str, text: &str, time_ms: Millis) -> LogRecord {
    LogRecord {
        body: format!(
            "{extra}Received: from client.test ([127.0.0.1])\r\n\tby {hub} (hubrelay) with ESMTP id {time_ms};\r\n\t\
             Sun, 22 Nov 2026 10:00:00 +0000\r\nFrom: carol@remote.test\r\nMessage-ID: <m1>\r\n\
             Subject: {subject}\r\n\r\n{text}\r\n"
        )
        .into_bytes(),
        ..rec("<m1>", &[ALICE], time_ms)
    }
}

#[test]
fn the_same_message_through_another_hub_or_with_other_trace_headers_is_a_duplicate() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let first = stamped("hub1.site1", "", "s", "hello", 10);
    assert_eq!(store.apply("SG1", at(1, 0), &first).expect("apply"), 1);
    let copies = [
        // Re-sent by the client through the other hub: another Received line.
        stamped("hub2.site1", "", "s", "hello", 20),
        // Trace headers other relays add or rewrite.
        stamped(
            "hub2.site1",
            "Return-Path: <carol@remote.test>\r\nDelivered-To: alice@example.test\r\n",
            "s",
            "hello",
            30,
        ),
    ];
    for (i, copy) in copies.iter().enumerate() {
        assert!(
            store
                .contains(ALICE, "<m1>", &ContentDigest::of(&copy.body), copy.time_ms)
                .expect("contains"),
            "copy {i}"
        );
        assert_eq!(
            store
                .apply("SG1", at(1, i as u32 + 1), copy)
                .expect("apply"),
            0,
            "copy {i}"
        );
    }
    assert_eq!(ids(&store, ALICE), ["<m1>"]);
    assert_eq!(store.body(ALICE, "<m1>").expect("body"), Some(first.body));
}

#[test]
fn a_different_message_reusing_a_message_id_is_stored_beside_the_first() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let first = stamped("hub1.site1", "", "s", "hello", 10);
    assert_eq!(store.apply("SG1", at(1, 0), &first).expect("apply"), 1);
    let other_body = stamped("hub1.site1", "", "s", "something else", 20);
    let other_subject = stamped("hub1.site1", "", "another subject", "hello", 30);
    for (i, other) in [&other_body, &other_subject].into_iter().enumerate() {
        assert!(
            !store
                .contains(
                    ALICE,
                    "<m1>",
                    &ContentDigest::of(&other.body),
                    other.time_ms
                )
                .expect("contains"),
            "message {i}"
        );
        assert_eq!(
            store
                .apply("SG1", at(1, i as u32 + 1), other)
                .expect("apply"),
            1,
            "message {i}"
        );
    }
    assert_eq!(ids(&store, ALICE), ["<m1>", "<m1>", "<m1>"]);
    // Each is then a duplicate of itself only.
    assert!(store
        .contains(ALICE, "<m1>", &ContentDigest::of(&other_body.body), 40)
        .expect("contains"));
    assert_eq!(
        store
            .apply(
                "SG1",
                at(1, 3),
                &stamped("hub2.site1", "", "s", "something else", 40)
            )
            .expect("apply"),
        0
    );
    // `body` answers with the first delivered of the messages sharing the Message-ID.
    assert_eq!(store.body(ALICE, "<m1>").expect("body"), Some(first.body));
}

#[test]
fn replay_and_discard_keep_messages_sharing_a_message_id_apart() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let first = stamped("hub1.site1", "", "s", "hello", 10);
    let resent = stamped("hub2.site1", "", "s", "hello", 20);
    let other = stamped("hub1.site1", "", "s", "something else", 30);
    let log = [(at(1, 0), &first), (at(2, 0), &resent), (at(2, 1), &other)];
    let added: Vec<usize> = log
        .iter()
        .map(|(pos, r)| store.apply("SG1", *pos, r).expect("apply"))
        .collect();
    assert_eq!(added, [1, 0, 1]);
    let before = store.list(ALICE).expect("list");
    // A replay of the same positions (a passive, or a restart) changes nothing.
    for (pos, r) in &log {
        assert_eq!(store.apply("SG1", *pos, r).expect("re-apply"), 0);
    }
    assert_eq!(store.list(ALICE).expect("list"), before);

    // Generation 2 diverged: undoing it removes the other message and its key, and keeps the
    // first message's key (the re-sent copy made none).
    assert_eq!(store.discard_from("SG1", 2).expect("discard"), 1);
    assert_eq!(store.list(ALICE).expect("list"), before[..1]);
    assert!(store
        .contains(ALICE, "<m1>", &ContentDigest::of(&resent.body), 40)
        .expect("contains"));
    assert!(!store
        .contains(ALICE, "<m1>", &ContentDigest::of(&other.body), 40)
        .expect("contains"));
    // The new active's generation 2 delivers the other message again: stored once more.
    assert_eq!(store.apply("SG1", at(2, 0), &other).expect("apply"), 1);
    assert_eq!(ids(&store, ALICE), ["<m1>", "<m1>"]);
    assert_eq!(store.body(ALICE, "<m1>").expect("body"), Some(first.body));
}

#[test]
fn a_dedup_key_counts_for_the_retention_by_record_time_then_is_swept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 10))
        .expect("apply");
    assert!(store
        .contains(
            ALICE,
            "<m1>",
            &ContentDigest::of(&body("<m1>")),
            10 + RETENTION - 1
        )
        .expect("contains"));
    assert!(!store
        .contains(
            ALICE,
            "<m1>",
            &ContentDigest::of(&body("<m1>")),
            10 + RETENTION
        )
        .expect("contains"));
    // Within the retention a record of the same message adds nothing; past it, a copy is added,
    // on the active and on any replay alike (the decision uses the record's time only).
    assert_eq!(
        store
            .apply("SG1", at(1, 1), &rec("<m1>", &[ALICE], RETENTION))
            .expect("apply"),
        0
    );
    assert_eq!(
        store
            .apply("SG1", at(1, 2), &rec("<m1>", &[ALICE], 10 + RETENTION))
            .expect("apply"),
        1
    );
    assert_eq!(ids(&store, ALICE).len(), 2);
    // The sweep keeps keys a record not yet replayed could still match.
    let sgs = vec!["SG1".to_string()];
    assert_eq!(store.sweep_dedup(&sgs, 0).expect("sweep"), 0);
    store
        .apply("SG1", at(1, 3), &rec("<m2>", &[BOB], 10 + 3 * RETENTION))
        .expect("apply");
    assert_eq!(store.sweep_dedup(&sgs, 0).expect("sweep"), 1);
    assert!(!store
        .contains(
            ALICE,
            "<m1>",
            &ContentDigest::of(&body("<m1>")),
            10 + RETENTION
        )
        .expect("contains"));
    assert!(store
        .contains(
            BOB,
            "<m2>",
            &ContentDigest::of(&body("<m2>")),
            10 + 3 * RETENTION
        )
        .expect("contains"));
    // The copies stay, and can still be read, without their keys.
    assert_eq!(ids(&store, ALICE), ["<m1>", "<m1>"]);
    assert_eq!(store.body(ALICE, "<m1>").expect("body"), Some(body("<m1>")));
}

#[test]
fn sweeping_never_changes_a_dedup_decision() {
    // The active sweeps on its own schedule; a passive replaying the same records must still
    // decide alike, so a sweep may only remove keys no later record can match.
    let tmp = tempfile::tempdir().expect("tempdir");
    let swept = MailboxStore::open(&tmp.path().join("swept"), RETENTION, CACHE).expect("open");
    let replayed =
        MailboxStore::open(&tmp.path().join("replayed"), RETENTION, CACHE).expect("open");
    let log = [
        rec("<m1>", &[ALICE], 10),
        rec("<m2>", &[ALICE, BOB], 20),
        rec("<m1>", &[ALICE, BOB], 9 + RETENTION),
        rec("<m1>", &[ALICE], 10 + RETENTION),
        rec("<m2>", &[BOB], 19 + RETENTION),
        rec("<m3>", &[BOB], 10 + 3 * RETENTION),
        rec("<m1>", &[ALICE, BOB], 10 + 3 * RETENTION),
    ];
    let sgs = vec!["SG1".to_string()];
    let mut swept_keys = 0;
    for (i, r) in log.iter().enumerate() {
        let pos = at(1, i as u32);
        assert_eq!(
            swept.apply("SG1", pos, r).expect("apply"),
            replayed.apply("SG1", pos, r).expect("apply"),
            "record {i}"
        );
        swept_keys += swept.sweep_dedup(&sgs, 0).expect("sweep");
    }
    assert!(swept_keys > 0, "the log outlives the retention");
    for address in [ALICE, BOB] {
        assert_eq!(
            swept.list(address).expect("list"),
            replayed.list(address).expect("list")
        );
    }
    assert_eq!(ids(&replayed, ALICE), ["<m1>", "<m2>", "<m1>", "<m1>"]);
}

#[test]
fn each_storage_group_sweeps_by_its_own_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    const DAVE: &str = "dave@example.test";
    let sgs = vec!["SG1".to_string(), "SG2".to_string(), "SG3".to_string()];
    store
        .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 10))
        .expect("apply");
    store
        .apply("SG2", at(1, 0), &rec("<o1>", &[DAVE], 20))
        .expect("apply");
    // SG1 moves on past the retention; SG2 stays quiet and SG3 never had mail.
    store
        .apply("SG1", at(1, 1), &rec("<m2>", &[ALICE], 20 + 2 * RETENTION))
        .expect("apply");
    assert_eq!(store.sweep_dedup(&sgs, 0).expect("sweep"), 1);
    let old = |address, id| {
        store
            .contains(address, id, &ContentDigest::of(&body(id)), 20)
            .expect("contains")
    };
    assert!(!old(ALICE, "<m1>"), "SG1's expired key is gone");
    assert!(
        old(DAVE, "<o1>"),
        "a later record of SG2 could still match it"
    );
    // With SG2's checkpoint past the retention too, its key goes as well; the margin holds keys
    // back by that much.
    store
        .apply("SG2", at(1, 1), &rec("<o2>", &[DAVE], 20 + RETENTION))
        .expect("apply");
    assert_eq!(store.sweep_dedup(&sgs, 1).expect("sweep"), 0);
    assert_eq!(store.sweep_dedup(&sgs, 0).expect("sweep"), 1);
    assert!(!old(DAVE, "<o1>"));
    assert_eq!(ids(&store, DAVE), ["<o1>", "<o2>"], "the copies stay");
}

/// A record of `id` to alice as node1 took it from `hub`, which received it at `hub_secs` on its
/// own clock; the node's clock (`node_ms`) reads something else entirely.
fn from_hub(id: &str, hub: &str, hub_secs: u64, node_ms: Millis) -> LogRecord {
    let date = match hub_secs {
        0 => "Sun, 22 Nov 2026 10:00:00 +0000",
        1 => "Sun, 22 Nov 2026 10:00:01 +0000",
        2 => "Sun, 22 Nov 2026 10:00:02 +0000",
        _ => "Sun, 22 Nov 2026 10:00:03 +0000",
    };
    LogRecord {
        body: format!(
            "Received: from {hub} ([127.0.0.1])\r\n\tby node1.cms1 (hubrelay) with ESMTP id n;\r\n\t\
             Mon, 1 Jan 2074 00:00:00 +0000\r\n\
             Received: from client.test ([192.0.2.7])\r\n\tby {hub} (hubrelay) with ESMTP id h\r\n\t\
             for <alice@example.test>; {date}\r\nMessage-ID: {id}\r\n\r\nhi\r\n"
        )
        .into_bytes(),
        ..rec(id, &[ALICE], node_ms)
    }
}

/// 2026-11-22T10:00:00Z, the hubs' clock in `from_hub`.
const HUB_T0: Millis = 1_795_341_600_000;

#[test]
fn each_hub_is_anchored_on_its_own_stamp_of_its_newest_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    // The node's clock runs far ahead of the hubs'; the anchors never read it.
    let node = 4_000_000_000_000;
    store
        .apply("SG1", at(1, 0), &from_hub("<a>", "hub1.site1", 1, node))
        .expect("apply");
    store
        .apply("SG1", at(1, 1), &from_hub("<b>", "hub2.site1", 2, node))
        .expect("apply");
    store
        .apply("SG1", at(2, 0), &from_hub("<c>", "hub1.site1", 0, node))
        .expect("apply");
    // No hub stamp (a DSN the hub wrote itself): no anchor moves.
    store
        .apply("SG1", at(2, 1), &rec("<dsn>", &[ALICE], node))
        .expect("apply");
    let want = BTreeMap::from([
        ("hub1.site1".to_string(), HUB_T0),
        ("hub2.site1".to_string(), HUB_T0 + 2_000),
    ]);
    assert_eq!(
        store.hub_anchors("SG1").expect("anchors"),
        want,
        "the newest record's stamp, even when an older one's is later"
    );
    assert!(store.hub_anchors("SG2").expect("anchors").is_empty());
    drop(store);
    let store = open(tmp.path());
    assert_eq!(store.hub_anchors("SG1").expect("anchors"), want);
}

#[test]
fn discarding_moves_an_anchor_back_to_the_hubs_newest_kept_record() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .apply("SG1", at(1, 0), &from_hub("<a>", "hub1.site1", 1, 5))
        .expect("apply");
    store
        .apply("SG1", at(2, 0), &from_hub("<b>", "hub1.site1", 3, 6))
        .expect("apply");
    store
        .apply("SG1", at(2, 1), &from_hub("<c>", "hub2.site1", 2, 7))
        .expect("apply");
    store
        .apply("SG2", at(2, 0), &from_hub("<d>", "hub2.site1", 3, 7))
        .expect("apply");
    store.discard_from("SG1", 2).expect("discard");
    assert_eq!(
        store.hub_anchors("SG1").expect("anchors"),
        BTreeMap::from([("hub1.site1".to_string(), HUB_T0 + 1_000)]),
        "hub1 back to its kept record; hub2 kept none, so it has no anchor"
    );
    assert_eq!(
        store.hub_anchors("SG2").expect("anchors"),
        BTreeMap::from([("hub2.site1".to_string(), HUB_T0 + 3_000)]),
        "another storage group is untouched"
    );
    store.clear("SG1").expect("clear");
    assert!(store.hub_anchors("SG1").expect("anchors").is_empty());
}

#[test]
fn a_snapshot_sled_did_not_finish_does_not_stop_the_store_opening() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 10))
        .expect("apply");
    store.flush().expect("flush");
    drop(store);
    // What a snapshot write cut short by a full disk leaves: a name that sorts after every
    // finished snapshot, and a few bytes without their checksum.
    let unfinished = tmp.path().join("mailbox/snap.FFFFFFFFFFFFFFFF.generating");
    std::fs::write(&unfinished, b"half").expect("write");
    let store = open(tmp.path());
    assert_eq!(ids(&store, ALICE), ["<m1>"]);
    assert!(!unfinished.exists());
}

/// A tmpfs of `size` mounted on `dir` (root only, as CI runs), unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount")
            .success();
        assert!(
            ok,
            "this test mounts a tmpfs to fill, which needs root (CI runs as root)"
        );
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` to the last byte; the file frees it again.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("fill");
    let mut f = std::fs::File::create(&path).expect("create");
    let chunk = vec![7u8; 1 << 16];
    while f.write_all(&chunk).is_ok() {}
    while f.write_all(&[7]).is_ok() {}
    path
}

#[test]
fn a_store_that_failed_on_a_full_disk_opens_again_once_there_is_room() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let _disk = Tmpfs::mount(tmp.path(), "24m");
    let store = open(tmp.path());
    let mut stored = Vec::new();
    for round in 0..4u64 {
        // Where a replay would start from before anything of this round reopens the store.
        let before = store.replay_from();
        let full = fill(tmp.path());
        // Writes fail (sled keeps failing after its first I/O error) ...
        let failed = (0..50u32).any(|i| {
            let id = format!("<r{round}-{i}>");
            let mut r = rec(&id, &[ALICE], 10);
            r.body.extend([b'x'; 4000]);
            match store
                .apply("SG1", at(round + 1, i), &r)
                .and_then(|_| store.flush())
            {
                Ok(_) => {
                    stored.push(id);
                    false
                }
                Err(_) => true,
            }
        });
        assert!(failed, "round {round}: the full disk took every write");
        // ... and opening it again while the disk is full mostly fails too, each try leaving an
        // unfinished snapshot behind (sled writes one on open); one may find room in what sled
        // already holds, which is fine as long as nothing flushed is lost.
        for _ in 0..3 {
            let _ = store.recover();
        }
        std::fs::remove_file(full).expect("free the disk");
        assert!(store.recover().is_ok(), "round {round}: room again");
        assert_eq!(store.recover().expect("healthy"), Recovery::Healthy);
        let next = rec(&format!("<next-{round}>"), &[ALICE], 10);
        if store.replay_from() == before {
            // Only body appends failed (a segment is written before sled): sled took no error,
            // and the store takes records as before.
            store
                .apply("SG1", at(round + 1, 999), &next)
                .and_then(|_| store.flush())
                .expect("apply once there is room");
        } else {
            reopened_then_replayed(&store, round, before, &next);
        }
        stored.push(next.message_id.clone());
        let mut listed = ids(&store, ALICE);
        listed.sort();
        let mut want = stored.clone();
        want.sort();
        assert_eq!(
            listed, want,
            "round {round}: what was flushed is still there"
        );
    }
}

/// A store opened again after a failure takes no new record until the log is replayed into it.
fn reopened_then_replayed(store: &MailboxStore, round: u64, before: u64, next: &LogRecord) {
    // Opened again, it takes no new record until the log is replayed into it: one applied
    // first would put the checkpoint past what the failure lost.
    let err = store.apply("SG1", at(round + 1, 999), next).unwrap_err();
    assert!(matches!(err, MailboxError::NotReplayed { .. }), "{err}");
    // A replay that began before the reopen does not count ...
    store.replay_done("SG1", before);
    assert!(store.apply("SG1", at(round + 1, 999), next).is_err());
    // ... one from the handle now does.
    let from = store.replay_from();
    store.replay_done("SG1", from);
    assert!(
        store
            .reapply_batch("SG2", &[(at(round + 1, 0), next)])
            .and_then(|_| store.flush())
            .is_ok(),
        "a replay applies"
    );
}

/// Everything a storage group's mailboxes show: listings, bodies, anchors and checkpoint.
fn contents(store: &MailboxStore, sg: &str, mailboxes: &[&str]) -> String {
    let mut out = format!(
        "checkpoint {:?}\nanchors {:?}\n",
        store.checkpoint(sg).expect("checkpoint").map(|(p, _)| p),
        store.hub_anchors(sg).expect("anchors")
    );
    for m in mailboxes {
        for msg in store.list(m).expect("list") {
            let body = store.body(m, &msg.message_id).expect("body");
            out.push_str(&format!("{msg:?} {}\n", body.map_or(0, |b| b.len())));
        }
    }
    out
}

/// Sends a snapshot through the wire format in pieces of `piece` bytes and installs it.
fn seed(
    from: &MailboxStore,
    to: &MailboxStore,
    sg: &str,
    upto: LogPosition,
    piece: usize,
) -> snapshot::SnapshotHeader {
    use snapshot::{Decoder, Encoder, Frame, SnapshotHeader};
    let (records, reader) = from.snapshot(sg, upto).expect("snapshot");
    let mut enc = Encoder::default();
    let mut wire = enc.header(&SnapshotHeader {
        storage_group: sg.into(),
        checkpoint: Some(upto),
        records,
    });
    for rec in reader {
        wire.extend(enc.record(&rec.expect("record")));
    }
    wire.extend(enc.trailer());
    let mut dec = Decoder::default();
    let mut header = None;
    to.clear(sg).expect("clear");
    for chunk in wire.chunks(piece) {
        dec.push(chunk);
        while let Some(frame) = dec.next_frame().expect("frame") {
            match frame {
                Frame::Header(h) => header = Some(h),
                Frame::Record(r) => to.install(sg, &r).expect("install"),
                Frame::End => {}
            }
        }
    }
    assert!(dec.complete());
    header.expect("header")
}

#[test]
fn a_copy_seeded_from_a_snapshot_then_replayed_equals_the_source() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let active = open(&tmp.path().join("a"));
    let copy = open(&tmp.path().join("b"));
    // Something already in the copy's SG (and another SG it keeps) before the reseed.
    copy.apply("SG1", at(1, 0), &rec("<stale>", &[ALICE], 1))
        .expect("apply");
    copy.apply("SG2", at(1, 0), &rec("<other>", &["zed@example.test"], 1))
        .expect("apply");
    let mut log = Vec::new();
    for n in 0..40u32 {
        let to: &[&str] = match n % 3 {
            0 => &[ALICE],
            1 => &[BOB],
            _ => &[ALICE, BOB],
        };
        // Every fifth is a resubmission of an earlier one: a duplicate with no copy and no body.
        let id = if n % 5 == 4 {
            format!("<m{}>", n - 2)
        } else {
            format!("<m{n}>")
        };
        let r = if n % 7 == 0 {
            from_hub(&id, "hub1.site1", u64::from(n % 4), 5_000 + u64::from(n))
        } else {
            rec(&id, to, 5_000 + u64::from(n))
        };
        log.push((at(1 + u64::from(n / 10), n % 10), r));
    }
    for (pos, r) in &log[..25] {
        active.apply("SG1", *pos, r).expect("apply");
    }
    let upto = log[24].0;
    let header = seed(&active, &copy, "SG1", upto, 7);
    assert_eq!((header.records, header.checkpoint), (25, Some(upto)));
    assert_eq!(
        contents(&copy, "SG1", &[ALICE, BOB]),
        contents(&active, "SG1", &[ALICE, BOB])
    );
    assert_eq!(
        ids(&copy, "zed@example.test"),
        ["<other>"],
        "other SGs untouched"
    );
    // Then both apply the rest of the log; the copy replays from the snapshot's generation, so
    // it meets records the snapshot holds, which change nothing.
    for (pos, r) in &log[25..] {
        active.apply("SG1", *pos, r).expect("apply");
    }
    for (pos, r) in log.iter().filter(|(p, _)| p.generation >= upto.generation) {
        copy.reapply_batch("SG1", &[(*pos, r)]).expect("replay");
    }
    assert_eq!(
        contents(&copy, "SG1", &[ALICE, BOB]),
        contents(&active, "SG1", &[ALICE, BOB])
    );
    // The copy's own sequence numbers keep delivery order, and later applies never collide.
    let order: Vec<_> = copy
        .list(ALICE)
        .expect("list")
        .iter()
        .map(|m| m.position)
        .collect();
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
}

#[test]
fn a_snapshot_taken_while_records_are_applied_holds_exactly_its_checkpoint() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let active = open(&tmp.path().join("a"));
    let copy = open(&tmp.path().join("b"));
    for n in 0..10u32 {
        let id = format!("<m{n}>");
        active
            .apply("SG1", at(1, n), &rec(&id, &[ALICE], u64::from(n)))
            .expect("apply");
    }
    let (records, reader) = active.snapshot("SG1", at(1, 9)).expect("snapshot");
    // Intake goes on while the snapshot is read.
    for n in 10..20u32 {
        let id = format!("<m{n}>");
        active
            .apply("SG1", at(1, n), &rec(&id, &[ALICE], u64::from(n)))
            .expect("apply");
    }
    let got: Vec<_> = reader.map(|r| r.expect("record").position).collect();
    assert_eq!(records, 10);
    assert_eq!(got, (0..10).map(|n| at(1, n)).collect::<Vec<_>>());
    seed(&active, &copy, "SG1", at(1, 9), 1 << 20);
    assert_eq!(ids(&copy, ALICE).len(), 10);
}

#[test]
fn a_damaged_or_short_snapshot_is_refused() {
    use snapshot::{Decoder, Encoder, Frame, SnapshotHeader};
    let tmp = tempfile::tempdir().expect("tempdir");
    let active = open(tmp.path());
    for n in 0..3u32 {
        active
            .apply("SG1", at(1, n), &rec(&format!("<m{n}>"), &[ALICE], 1))
            .expect("apply");
    }
    let (records, reader) = active.snapshot("SG1", at(1, 2)).expect("snapshot");
    let mut enc = Encoder::default();
    let mut wire = enc.header(&SnapshotHeader {
        storage_group: "SG1".into(),
        checkpoint: Some(at(1, 2)),
        records,
    });
    for rec in reader {
        wire.extend(enc.record(&rec.expect("record")));
    }
    wire.extend(enc.trailer());
    let run = |bytes: &[u8]| -> Result<bool, snapshot::SnapshotError> {
        let mut dec = Decoder::default();
        dec.push(bytes);
        while let Some(f) = dec.next_frame()? {
            if f == Frame::End {
                break;
            }
        }
        dec.next_frame()?;
        Ok(dec.complete())
    };
    assert_eq!(run(&wire), Ok(true));
    assert_eq!(
        run(&wire[..wire.len() - 1]),
        Ok(false),
        "short: not complete"
    );
    for i in 0..wire.len() {
        let mut bad = wire.clone();
        bad[i] ^= 0x20;
        assert_ne!(run(&bad), Ok(true), "byte {i} altered and accepted");
    }
    let mut extra = wire.clone();
    extra.push(0);
    assert!(run(&extra).is_err(), "bytes after the trailer");
}

proptest::proptest! {
    /// Whatever arrives, the decoder answers (a frame, more please, or an error), never panics.
    #[test]
    fn the_snapshot_decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let mut dec = snapshot::Decoder::default();
        dec.push(&bytes);
        while let Ok(Some(_)) = dec.next_frame() {}
    }
}

/// A record whose body is `size` bytes after its Message-ID header.
fn large(id: &str, to: &[&str], time_ms: Millis, size: usize) -> LogRecord {
    let mut r = rec(id, to, time_ms);
    r.body.extend(std::iter::repeat_n(b'x', size));
    r
}

#[test]
fn a_duplicate_keeps_no_body_and_a_cleared_group_gives_its_segments_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let mib = 1 << 20;
    let sg1: Vec<LogRecord> = (0..40)
        .map(|i| large(&format!("<a{i}>"), &[ALICE], i, mib))
        .collect();
    let batch: Vec<(LogPosition, &LogRecord)> = (0..).map(|i| at(1, i)).zip(&sg1).collect();
    assert_eq!(
        store.apply_batch("SG1", &batch).expect("apply"),
        vec![1; 40]
    );
    store
        .apply(
            "SG2",
            at(1, 0),
            &large("<b>", &["dave@example.test"], 1, mib),
        )
        .expect("apply");
    let before = store.body_usage();
    // The same messages again (a resubmission): nothing added, no body kept.
    let again: Vec<(LogPosition, &LogRecord)> = (0..).map(|i| at(2, i)).zip(&sg1).collect();
    assert_eq!(
        store.apply_batch("SG1", &again).expect("apply"),
        vec![0; 40]
    );
    assert_eq!(store.body_usage().live, before.live);
    assert!(
        before.bytes <= before.live * 13 / 10,
        "bodies take their size on disk: {before:?}"
    );

    store.clear("SG1").expect("clear");
    store.compact_bodies().expect("compact");
    let after = store.body_usage();
    assert!(
        after.bytes <= after.live + SEGMENT_BYTES,
        "only SG2's body and the active segment stay: {after:?}"
    );
    drop(store);
    let store = open(tmp.path());
    assert_eq!(ids(&store, ALICE), Vec::<String>::new());
    assert_eq!(
        store.body("dave@example.test", "<b>").expect("body"),
        Some(large("<b>", &[], 1, mib).body)
    );
}

/// What earlier releases wrote: the body in sled pieces, no pointer.
#[test]
fn a_body_stored_in_pieces_by_an_earlier_release_is_read_snapshotted_and_discarded() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let old = large("<old>", &[ALICE], 1, 30_000);
    store.apply("SG1", at(1, 0), &old).expect("apply");
    let key = record_key(&sg_key("SG1").unwrap(), at(1, 0));
    let t = store.t().unwrap();
    let done: Result<(), TransactionError> =
        (&t.bodies, &t.body_at).transaction(|(bodies, body_at)| {
            crate::pieces::insert(bodies, &key, &old.body)?;
            body_at.remove(key.as_slice())?;
            Ok(())
        });
    done.expect("rewrite as an earlier release stored it");
    drop(t);
    store.recount_bodies().expect("recount");
    assert_eq!(
        store.body(ALICE, "<old>").expect("body"),
        Some(old.body.clone())
    );
    let (count, records) = store.snapshot("SG1", at(1, 0)).expect("snapshot");
    assert_eq!(count, 1);
    let records: Vec<_> = records.collect::<Result<_, _>>().expect("read");
    assert_eq!(records[0].body.as_ref(), Some(&old.body));
    store.discard_from("SG1", 1).expect("discard");
    assert_eq!(store.t().unwrap().bodies.scan_prefix(&key).count(), 0);
    assert_eq!(store.body(ALICE, "<old>").expect("body"), None);
}

use super::*;

const ALICE: &str = "alice@example.test";
const BOB: &str = "bob@example.test";
/// Dedup retention of the test stores (ms).
const RETENTION: Millis = 1_000_000;

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
    MailboxStore::open(&dir.join("mailbox"), RETENTION).expect("open store")
}

#[test]
fn same_message_id_twice_is_stored_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    assert!(!store
        .contains(ALICE, "<m1>", &body("<m1>"), 0)
        .expect("contains"));
    assert_eq!(
        store
            .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 10))
            .expect("apply"),
        1
    );
    assert!(store
        .contains(ALICE, "<m1>", &body("<m1>"), 0)
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
        store.bodies.len(),
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
        .contains(BOB, "<m1>", &body("<m1>"), 0)
        .expect("contains"));
    assert!(!store
        .contains(ALICE, "<m3>", &body("<m3>"), 0)
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
        store.bodies.len(),
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

#[test]
fn a_copy_through_another_hub_is_a_duplicate_and_a_different_message_is_not() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    let via = |hub: &str, text: &str| {
        LogRecord {
        body: format!(
            "Received: from client.test\r\n\tby {hub} (hubrelay); Sun, 22 Nov 2026\r\nMessage-ID: <m1>\r\nSubject: s\r\n\r\n{text}\r\n"
        )
        .into_bytes(),
        ..rec("<m1>", &[ALICE], 10)
    }
    };
    let first = via("hub1.example.test", "hello");
    assert_eq!(store.apply("SG1", at(1, 0), &first).expect("apply"), 1);
    // The same message, re-sent through hub2 (another Received line): dropped.
    let again = via("hub2.example.test", "hello");
    assert!(store
        .contains(ALICE, "<m1>", &again.body, 20)
        .expect("contains"));
    assert_eq!(store.apply("SG1", at(1, 1), &again).expect("apply"), 0);
    // A different message that reuses the Message-ID: stored beside the first.
    let other = via("hub1.example.test", "something else");
    assert!(!store
        .contains(ALICE, "<m1>", &other.body, 20)
        .expect("contains"));
    assert_eq!(store.apply("SG1", at(1, 2), &other).expect("apply"), 1);
    assert_eq!(ids(&store, ALICE), vec!["<m1>", "<m1>"]);
    // Undoing the later record removes only its copy and its key.
    store.discard_from("SG1", 1).expect("discard all");
    assert!(ids(&store, ALICE).is_empty());
    assert_eq!(store.apply("SG1", at(1, 0), &first).expect("reapply"), 1);
    assert!(store.body(ALICE, "<m1>").expect("body").is_some());
}

#[test]
fn a_dedup_key_counts_for_the_retention_by_record_time_then_is_swept() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let store = open(tmp.path());
    store
        .apply("SG1", at(1, 0), &rec("<m1>", &[ALICE], 10))
        .expect("apply");
    assert!(store
        .contains(ALICE, "<m1>", &body("<m1>"), 10 + RETENTION - 1)
        .expect("contains"));
    assert!(!store
        .contains(ALICE, "<m1>", &body("<m1>"), 10 + RETENTION)
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
        .contains(ALICE, "<m1>", &body("<m1>"), 10 + RETENTION)
        .expect("contains"));
    assert!(store
        .contains(BOB, "<m2>", &body("<m2>"), 10 + 3 * RETENTION)
        .expect("contains"));
}

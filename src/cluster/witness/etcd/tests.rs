use super::*;

const ME: &str = "node1";
const PEER: &str = "node2";

fn note(holder: &str, epoch: u64, generated: &[(&str, u64)]) -> Note {
    Note {
        holder: holder.into(),
        epoch,
        last_log_generated: generated.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
    }
}

fn read(holder: Option<(&str, i64, i64)>, n: Option<(Note, i64)>) -> Read {
    Read {
        holder: holder.map(|(value, mod_revision, lease)| Entry {
            value: value.into(),
            mod_revision,
            lease,
        }),
        note: n.map(|(value, mod_revision)| Entry {
            value,
            mod_revision,
            lease: 0,
        }),
    }
}

#[test]
fn a_free_witness_is_taken_with_the_note() {
    let generated: BTreeMap<String, u64> = [("SG1".to_string(), 7)].into();
    match plan(ME, 42, &Read::default(), 3_000, 1, Some(&generated)) {
        Plan::Write { take, note, lease } => {
            assert!(take);
            assert_eq!(note.holder, ME);
            assert_eq!(note.epoch, 1);
            assert_eq!(note.last_log_generated, generated);
            assert_eq!(lease.holder, ME);
        }
        other => panic!("expected a write, got {other:?}"),
    }
}

#[test]
fn another_holder_is_reported_with_the_note_and_nothing_is_written() {
    let r = read(Some((PEER, 9, 5)), Some((note(PEER, 4, &[("SG1", 30)]), 8)));
    match plan(ME, 42, &r, 3_000, 6, None) {
        Plan::Other(lease) => {
            assert_eq!(lease.holder, PEER);
            assert_eq!(lease.epoch, 4);
            assert_eq!(lease.version, 9);
            assert_eq!(lease.last_log_generated.get("SG1"), Some(&30));
        }
        other => panic!("expected the other holder, got {other:?}"),
    }
}

#[test]
fn the_epoch_on_the_note_never_goes_down_and_the_note_carries_over() {
    // Our key on our etcd lease: a renewal. An older epoch of ours does not lower the note.
    let r = read(Some((ME, 9, 42)), Some((note(PEER, 8, &[("SG1", 30)]), 8)));
    match plan(ME, 42, &r, 3_000, 3, None) {
        Plan::Write { take, note, .. } => {
            assert!(
                !take,
                "our key on our lease is renewed by the keep-alive alone"
            );
            assert_eq!(note.epoch, 8);
            assert_eq!(note.last_log_generated.get("SG1"), Some(&30));
            assert_eq!(note.holder, ME);
        }
        other => panic!("expected the note rewritten under our name, got {other:?}"),
    }
}

#[test]
fn a_renewal_with_nothing_new_writes_nothing() {
    let r = read(Some((ME, 9, 42)), Some((note(ME, 8, &[("SG1", 30)]), 8)));
    let generated: BTreeMap<String, u64> = [("SG1".to_string(), 30)].into();
    assert!(matches!(
        plan(ME, 42, &r, 3_000, 8, Some(&generated)),
        Plan::Ours(l) if l.epoch == 8 && l.holder == ME
    ));
    // New generations are written.
    let more: BTreeMap<String, u64> = [("SG1".to_string(), 31)].into();
    assert!(matches!(
        plan(ME, 42, &r, 3_000, 8, Some(&more)),
        Plan::Write { take: false, .. }
    ));
}

#[test]
fn our_key_on_an_older_etcd_lease_is_taken_over_by_this_instance() {
    // A restart of this node: its key is still on the lease of the previous process.
    let r = read(Some((ME, 9, 41)), Some((note(ME, 8, &[]), 8)));
    assert!(matches!(
        plan(ME, 42, &r, 3_000, 8, None),
        Plan::Write { take: true, .. }
    ));
}

#[test]
fn judge_counts_nothing_on_a_read_of_our_own_key_and_waits_for_the_others_to_go() {
    let now = 1_000;
    let ours = judge(ME, read(Some((ME, 9, 41)), None), 3_000, now).expect("a lease");
    assert_eq!(
        ours.until_ms, now,
        "a read never lets a holder count on its lease"
    );
    let theirs = judge(ME, read(Some((PEER, 9, 5)), None), 3_000, now).expect("a lease");
    assert!(
        theirs.until_ms > now,
        "the other node's key stands while it exists"
    );
    let gone = judge(ME, read(None, Some((note(PEER, 4, &[]), 8))), 3_000, now).expect("a note");
    assert!(gone.lease.released);
    assert_eq!(gone.lease.holder, PEER);
    assert_eq!(
        gone.until_ms, now,
        "an expired or revoked key is free at once"
    );
    assert_eq!(judge(ME, Read::default(), 3_000, now), None);
}

#[test]
fn gateway_answers_decode_with_int64_as_strings_and_defaults_left_out() {
    let answer = r#"{"header":{"cluster_id":"1","member_id":"2","revision":"12","raft_term":"2"},
        "responses":[{"response_range":{"header":{"revision":"12"},"kvs":[{"key":"dy9o",
        "create_revision":"2","mod_revision":"11","version":"1","value":"bm9kZTE=",
        "lease":"4111120506644464647"}],"count":"1"}},{"response_range":{"header":{"revision":"12"}}}]}"#;
    let t: TxnAnswer = serde_json::from_str(answer).expect("decodes");
    assert!(!t.succeeded, "an absent `succeeded` is false");
    assert_eq!(t.header.revision, 12);
    let kv = &t.responses[0].response_range.as_ref().expect("range").kvs[0];
    assert_eq!(kv.mod_revision, 11);
    assert_eq!(kv.lease, 4111120506644464647);
    assert_eq!(kv.bytes("k").expect("base64"), b"node1");
    assert!(t.responses[1]
        .response_range
        .as_ref()
        .expect("range")
        .kvs
        .is_empty());
}

use std::fs;

use super::*;

fn rec(n: u64) -> LogRecord {
    LogRecord {
        message_id: format!("<m{n}@example.test>"),
        recipients: vec!["alice@example.test".into(), "bob@example.test".into()],
        sender: "carol@remote.test".into(),
        time_ms: 1_000 + n,
        body: format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes(),
    }
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .expect("test dir is readable")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A log of small generations: every record is ~110 bytes, so 3 records pass 300 bytes.
fn small_log(dir: &Path) -> TxLog {
    TxLog::open(dir, "SG1", 300).expect("open log")
}

/// Bytes of closed generation 1 holding records 1..=3.
fn closed_gen1(dir: &Path) -> Vec<u8> {
    let mut log = small_log(dir);
    for n in 1..=3 {
        log.append(&rec(n)).expect("append");
    }
    assert_eq!(log.sync().expect("sync"), vec![1]);
    log.read_closed(1).expect("read closed")
}

#[test]
fn append_sync_closes_at_log_file_size_and_numbers_generations() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(tmp.path());
    assert_eq!(
        (
            log.current_generation(),
            log.last_closed(),
            log.last_generated()
        ),
        (1, 0, 0)
    );

    let p0 = log.append(&rec(1)).expect("append");
    let p1 = log.append(&rec(2)).expect("append");
    assert_eq!(
        p0,
        LogPosition {
            generation: 1,
            index: 0
        }
    );
    assert_eq!(
        p1,
        LogPosition {
            generation: 1,
            index: 1
        }
    );
    assert_eq!(log.sync().expect("sync"), Vec::<u64>::new(), "not full yet");
    assert_eq!(log.last_generated(), 1);
    assert!(matches!(
        log.read_closed(1),
        Err(TxLogError::NotClosed { generation: 1 })
    ));

    log.append(&rec(3)).expect("append");
    assert_eq!(log.sync().expect("sync"), vec![1]);
    assert_eq!(
        (
            log.current_generation(),
            log.last_closed(),
            log.last_generated()
        ),
        (2, 1, 1)
    );
    assert_eq!(
        names(tmp.path()),
        ["E00-0000000001.log", "E00-0000000002.open"]
    );

    let p = log.append(&rec(4)).expect("append");
    assert_eq!(
        p,
        LogPosition {
            generation: 2,
            index: 0
        }
    );
    assert_eq!(log.last_generated(), 2);
    let shipped = log.read_closed(1).expect("closed generation is readable");
    assert_eq!(
        verify(&shipped, "SG1", 1).expect("valid"),
        vec![rec(1), rec(2), rec(3)]
    );
    assert_eq!(log.records(2).expect("open records"), vec![rec(4)]);
}

#[test]
fn records_survive_reopen_and_appends_continue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let mut log = small_log(tmp.path());
        for n in 1..=4 {
            log.append(&rec(n)).expect("append");
        }
        assert_eq!(log.sync().expect("sync"), vec![1]);
        log.append(&rec(5)).expect("append");
        log.sync().expect("sync");
    }
    let mut log = small_log(tmp.path());
    assert_eq!((log.current_generation(), log.last_closed()), (2, 1));
    assert_eq!(
        log.records(1).expect("gen 1"),
        (1..=4).map(rec).collect::<Vec<_>>()
    );
    assert_eq!(log.records(2).expect("gen 2"), vec![rec(5)]);
    let p = log.append(&rec(6)).expect("append");
    assert_eq!(
        p,
        LogPosition {
            generation: 2,
            index: 1
        }
    );
    assert_eq!(log.records(2).expect("gen 2"), vec![rec(5), rec(6)]);
}

#[test]
fn torn_tail_is_cut_on_reopen_and_appends_continue() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let open = tmp.path().join("E00-0000000001.open");
    let synced_len = {
        let mut log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("open");
        log.append(&rec(1)).expect("append");
        log.append(&rec(2)).expect("append");
        log.sync().expect("sync");
        fs::metadata(&open).expect("open file").len()
    };
    // A crash mid-append: half of the next frame reached the disk.
    let frame = format::encode_frame(&rec(3)).expect("frame");
    let mut bytes = fs::read(&open).expect("read");
    bytes.extend_from_slice(&frame[..frame.len() / 2]);
    fs::write(&open, &bytes).expect("write torn tail");

    let mut log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("reopen recovers");
    assert_eq!(fs::metadata(&open).expect("open file").len(), synced_len);
    assert_eq!(log.records(1).expect("records"), vec![rec(1), rec(2)]);
    let p = log.append(&rec(3)).expect("append after recovery");
    assert_eq!(
        p,
        LogPosition {
            generation: 1,
            index: 2
        }
    );
    log.sync().expect("sync");
    drop(log);
    let log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("reopen");
    assert_eq!(
        log.records(1).expect("records"),
        vec![rec(1), rec(2), rec(3)]
    );
}

#[test]
fn closed_generations_are_never_modified_by_recovery() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let closed = closed_gen1(tmp.path());
    let path = tmp.path().join("E00-0000000001.log");
    let mut damaged = closed.clone();
    damaged.extend_from_slice(b"garbage");
    fs::write(&path, &damaged).expect("damage closed log");
    let log = small_log(tmp.path());
    assert_eq!(
        fs::read(&path).expect("read"),
        damaged,
        "closed log left as found"
    );
    assert!(matches!(
        log.records(1),
        Err(TxLogError::Corrupt { generation: 1, .. })
    ));
}

#[test]
fn verify_refuses_wrong_storage_group_and_generation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bytes = closed_gen1(tmp.path());
    assert_eq!(verify(&bytes, "SG1", 1).expect("valid").len(), 3);
    match verify(&bytes, "SG2", 1) {
        Err(TxLogError::WrongStorageGroup {
            generation: 1,
            expected,
            found,
        }) => {
            assert_eq!((expected.as_str(), found.as_str()), ("SG2", "SG1"));
        }
        other => panic!("expected WrongStorageGroup, got {other:?}"),
    }
    assert!(matches!(
        verify(&bytes, "SG1", 2),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 1
        })
    ));
}

#[test]
fn verify_refuses_every_flipped_byte_truncation_and_trailing_garbage() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bytes = closed_gen1(tmp.path());
    for i in 0..bytes.len() {
        for mask in [0x01, 0x80, 0xFF] {
            let mut bad = bytes.clone();
            bad[i] ^= mask;
            assert!(
                verify(&bad, "SG1", 1).is_err(),
                "byte {i} ^ {mask:#x} was accepted"
            );
        }
    }
    for len in 0..bytes.len() {
        match verify(&bytes[..len], "SG1", 1) {
            Err(TxLogError::Corrupt { generation: 1, .. }) => {}
            other => panic!("truncation to {len} bytes: {other:?}"),
        }
    }
    let mut long = bytes.clone();
    long.push(0);
    assert!(matches!(
        verify(&long, "SG1", 1),
        Err(TxLogError::Corrupt { .. })
    ));
    assert!(verify(b"", "SG1", 1).is_err());
}

#[test]
fn log_copy_keeps_verified_generations_in_sequence() {
    let active_dir = tempfile::tempdir().expect("tempdir");
    let copy_dir = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(active_dir.path());
    for n in 1..=9 {
        log.append(&rec(n)).expect("append");
        log.sync().expect("sync");
    }
    assert_eq!(log.last_closed(), 3);
    let gen = |g| log.read_closed(g).expect("closed");

    let mut copy = LogCopy::open(copy_dir.path(), "SG1").expect("open copy");
    assert_eq!(copy.last_copied(), 0);
    assert_eq!(
        copy.store(1, &gen(1)).expect("gen 1"),
        vec![rec(1), rec(2), rec(3)]
    );
    assert!(matches!(
        copy.store(3, &gen(3)),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 3
        })
    ));
    assert!(matches!(
        copy.store(1, &gen(1)),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 1
        })
    ));
    let mut bad = gen(2);
    let last = bad.len() - 20;
    bad[last] ^= 0x40;
    assert!(matches!(
        copy.store(2, &bad),
        Err(TxLogError::Corrupt { generation: 2, .. })
    ));
    assert!(matches!(
        copy.store(2, &gen(3)),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 3
        })
    ));
    assert_eq!(copy.last_copied(), 1, "refused logs are not kept");
    copy.store(2, &gen(2)).expect("gen 2");
    drop(copy);

    let copy = LogCopy::open(copy_dir.path(), "SG1").expect("reopen copy");
    assert_eq!(copy.last_copied(), 2);
    assert_eq!(
        copy.records(2).expect("copied"),
        vec![rec(4), rec(5), rec(6)]
    );
    assert!(matches!(
        copy.records(3),
        Err(TxLogError::Missing { generation: 3 })
    ));
    assert_eq!(
        names(copy_dir.path()),
        ["E00-0000000001.log", "E00-0000000002.log"]
    );
}

#[test]
fn roll_closes_a_partial_generation_and_is_a_noop_when_empty() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("open");
    assert_eq!(log.roll().expect("roll"), None);
    log.append(&rec(1)).expect("append");
    assert_eq!(log.roll().expect("roll"), Some(1));
    assert_eq!(
        (
            log.current_generation(),
            log.last_closed(),
            log.last_generated()
        ),
        (2, 1, 1)
    );
    assert_eq!(log.roll().expect("roll"), None, "nothing new to close");
    assert_eq!(
        verify(&log.read_closed(1).expect("closed"), "SG1", 1).expect("valid"),
        vec![rec(1)]
    );
}

#[test]
fn truncate_from_drops_later_generations_and_restarts_there() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(tmp.path());
    for n in 1..=10 {
        log.append(&rec(n)).expect("append");
        log.sync().expect("sync");
    }
    assert_eq!((log.last_closed(), log.current_generation()), (3, 4));
    log.truncate_from(2).expect("truncate");
    assert_eq!(
        (
            log.last_closed(),
            log.current_generation(),
            log.last_generated()
        ),
        (1, 2, 1)
    );
    assert_eq!(
        names(tmp.path()),
        ["E00-0000000001.log", "E00-0000000002.open"]
    );
    assert_eq!(log.records(1).expect("kept"), vec![rec(1), rec(2), rec(3)]);
    assert_eq!(
        log.append(&rec(20)).expect("append"),
        LogPosition {
            generation: 2,
            index: 0
        }
    );
    log.truncate_from(9)
        .expect("past the open generation: nothing to drop");
    assert_eq!(log.current_generation(), 2);
    assert!(matches!(
        log.truncate_from(0),
        Err(TxLogError::GenerationZero)
    ));
    log.sync().expect("sync");
    drop(log);
    let log = small_log(tmp.path());
    assert_eq!(log.records(2).expect("records"), vec![rec(20)]);
}

#[test]
fn roles_switch_over_the_same_directory() {
    let tmp = tempfile::tempdir().expect("tempdir");
    {
        let mut log = small_log(tmp.path());
        for n in 1..=4 {
            log.append(&rec(n)).expect("append");
            log.sync().expect("sync");
        }
        assert_eq!((log.last_closed(), log.last_generated()), (1, 2));
    }
    // The old active comes back as passive with generation 2 never shipped.
    let mut copy = LogCopy::open(tmp.path(), "SG1").expect("open as copy");
    assert_eq!((copy.last_copied(), copy.diverged()), (1, Some(2)));
    let other = tempfile::tempdir().expect("tempdir");
    let new_gen2 = {
        let mut log = small_log(other.path());
        log.append(&rec(1)).expect("append");
        log.roll().expect("roll");
        log.append(&rec(50)).expect("append");
        log.roll().expect("roll");
        log.read_closed(2).expect("closed")
    };
    assert!(matches!(
        copy.store(2, &new_gen2),
        Err(TxLogError::Diverged { generation: 2 })
    ));
    copy.truncate_from(2).expect("discard diverged");
    assert_eq!(copy.diverged(), None);
    assert_eq!(copy.store(2, &new_gen2).expect("store"), vec![rec(50)]);
    drop(copy);

    // Promoted again: the active log continues after the last copied generation.
    let log = small_log(tmp.path());
    assert_eq!((log.last_closed(), log.current_generation()), (2, 3));
}

#[test]
fn copy_open_removes_an_empty_open_generation() {
    let tmp = tempfile::tempdir().expect("tempdir");
    drop(small_log(tmp.path()));
    let copy = LogCopy::open(tmp.path(), "SG1").expect("open as copy");
    assert_eq!((copy.last_copied(), copy.diverged()), (0, None));
    assert!(names(tmp.path()).is_empty());
}

#[test]
fn open_refuses_gaps_and_foreign_logs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let gen1 = closed_gen1(tmp.path());
    fs::remove_file(tmp.path().join("E00-0000000002.open")).expect("remove open");
    fs::write(tmp.path().join("E00-0000000003.log"), &gen1).expect("plant gap");
    assert!(matches!(
        TxLog::open(tmp.path(), "SG1", 300),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 3
        })
    ));
    assert!(matches!(
        LogCopy::open(tmp.path(), "SG1"),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 3
        })
    ));

    let other = tempfile::tempdir().expect("tempdir");
    drop(small_log(other.path()));
    assert!(matches!(
        TxLog::open(other.path(), "SG2", 300),
        Err(TxLogError::WrongStorageGroup { generation: 1, .. })
    ));
}

#[test]
fn an_interrupted_close_is_undone_on_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let open = tmp.path().join("E00-0000000001.open");
    {
        let mut log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("open");
        log.append(&rec(1)).expect("append");
        log.sync().expect("sync");
    }
    // Crash after the seal was written but before the rename.
    let mut bytes = fs::read(&open).expect("read");
    bytes.extend_from_slice(&format::encode_seal(1));
    fs::write(&open, &bytes).expect("write seal");

    let mut log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("reopen");
    assert_eq!(
        log.append(&rec(2)).expect("append"),
        LogPosition {
            generation: 1,
            index: 1
        }
    );
    assert_eq!(log.roll().expect("roll"), Some(1));
    let shipped = log.read_closed(1).expect("closed");
    assert_eq!(
        verify(&shipped, "SG1", 1).expect("valid"),
        vec![rec(1), rec(2)]
    );
}

#[test]
fn a_failed_close_poisons_the_log_until_reopened() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("sg1");
    let mut log = TxLog::open(&dir, "SG1", 1 << 20).expect("open");
    log.append(&rec(1)).expect("append");
    fs::remove_dir_all(&dir).expect("pull the directory away");
    assert!(matches!(log.roll(), Err(TxLogError::Io { .. })));
    assert!(matches!(
        log.append(&rec(2)),
        Err(TxLogError::Poisoned { .. })
    ));
    assert!(matches!(log.sync(), Err(TxLogError::Poisoned { .. })));
    assert!(matches!(
        log.truncate_from(1),
        Err(TxLogError::Poisoned { .. })
    ));
    // Reported again and again, the failure is named once: the first error, not the report of it.
    let first = log.sync().expect_err("still poisoned").root_cause();
    let again = TxLogError::Poisoned {
        storage_group: "SG1".into(),
        reason: first.clone(),
    };
    assert_eq!(again.root_cause(), first);
    assert!(!first.contains("failed earlier"), "{first}");
}

#[test]
fn every_generation_belongs_to_one_epoch_stamped_in_its_header() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("open");
    // An empty open generation is stamped anew: nothing was written in the old epoch.
    assert_eq!(log.begin_epoch(3).expect("epoch 3"), None);
    assert_eq!((log.epoch(), log.current_generation()), (3, 1));
    log.append(&rec(1)).expect("append");
    log.sync().expect("sync");
    // Records of epoch 3 are in the open generation: it is closed before epoch 4 writes.
    assert_eq!(log.begin_epoch(4).expect("epoch 4"), Some(1));
    assert_eq!((log.epoch(), log.current_generation()), (4, 2));
    assert_eq!(log.begin_epoch(4).expect("same epoch"), None);
    log.append(&rec(2)).expect("append");
    log.roll().expect("roll");
    drop(log);
    // Reopened, new generations keep the epoch of the last one.
    let log = TxLog::open(tmp.path(), "SG1", 1 << 20).expect("reopen");
    assert_eq!((log.epoch(), log.current_generation()), (4, 3));
    drop(log);
    let copy = LogCopy::open(tmp.path(), "SG1").expect("as copy");
    assert_eq!(copy.epoch_of(1).expect("gen 1"), 3);
    assert_eq!(copy.epoch_of(2).expect("gen 2"), 4);
    assert!(matches!(
        copy.epoch_of(3),
        Err(TxLogError::Missing { generation: 3 })
    ));
    // The same generation number written in another epoch reads as another epoch, whatever
    // its records are: shipped bytes keep their writer's header.
    let other = tempfile::tempdir().expect("tempdir");
    let mut elsewhere = TxLog::open(other.path(), "SG1", 1 << 20).expect("open");
    elsewhere.begin_epoch(5).expect("epoch 5");
    elsewhere.append(&rec(1)).expect("append");
    elsewhere.roll().expect("roll");
    let shipped = elsewhere.read_closed(1).expect("closed");
    let target = tempfile::tempdir().expect("tempdir");
    let mut copy = LogCopy::open(target.path(), "SG1").expect("copy");
    copy.store(1, &shipped).expect("store");
    assert_eq!(copy.epoch_of(1).expect("gen 1"), 5);
}

#[test]
fn truncation_keeps_numbering_and_survives_reopen_and_role_changes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(tmp.path());
    for n in 1..=12 {
        log.append(&rec(n)).expect("append");
        log.sync().expect("sync");
    }
    assert_eq!((log.last_closed(), log.current_generation()), (4, 5));
    let done = truncate_before(tmp.path(), 3).expect("truncate");
    assert_eq!(done.generations, 2);
    assert!(done.bytes > 0);
    assert_eq!(first_kept(tmp.path()).expect("base"), 3);
    assert!(matches!(
        read_closed(tmp.path(), 2),
        Err(TxLogError::Truncated {
            generation: 2,
            first: 3
        })
    ));
    assert!(matches!(
        log.records(1),
        Err(TxLogError::Truncated { generation: 1, .. })
    ));
    assert_eq!(log.records(3).expect("kept"), vec![rec(7), rec(8), rec(9)]);
    assert_eq!(
        truncate_before(tmp.path(), 2).expect("behind the base"),
        Truncated::default()
    );
    assert!(
        matches!(
            truncate_before(tmp.path(), 6),
            Err(TxLogError::NotClosed { generation: 5 })
        ),
        "the open generation is never truncated"
    );
    // Everything closed goes: the log goes on at the same generation, after a reopen too.
    truncate_before(tmp.path(), 5).expect("truncate all closed");
    assert_eq!(names(tmp.path()), ["E00-0000000005.open", "E00.base"]);
    drop(log);
    let mut log = small_log(tmp.path());
    assert_eq!((log.last_closed(), log.current_generation()), (4, 5));
    let pos = log.append(&rec(13)).expect("append");
    assert_eq!(pos.generation, 5);
    log.sync().expect("sync");
    assert_eq!(log.records(5).expect("open").last(), Some(&rec(13)));
    log.roll().expect("roll");
    drop(log);
    // The same directory as a copy (a switchover): it holds 5 and copies on from 6.
    let copy = LogCopy::open(tmp.path(), "SG1").expect("copy");
    assert_eq!((copy.first_kept(), copy.last_copied()), (5, 5));
    assert!(matches!(
        copy.epoch_of(4),
        Err(TxLogError::Truncated { generation: 4, .. })
    ));
    assert!(matches!(
        copy.records(4),
        Err(TxLogError::Truncated { generation: 4, .. })
    ));
}

#[test]
fn a_truncation_cut_short_leaves_leftovers_the_next_listing_removes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(tmp.path());
    for n in 1..=9 {
        log.append(&rec(n)).expect("append");
        log.sync().expect("sync");
    }
    drop(log);
    // A crash after the base was written, before any file went (and one mid-rename of the base).
    fs::write(tmp.path().join("E00.base"), "3\n").expect("base");
    fs::write(tmp.path().join("E00.base.tmp"), "4").expect("torn tmp");
    let log = small_log(tmp.path());
    assert_eq!(log.last_closed(), 3);
    assert_eq!(
        names(tmp.path()),
        ["E00-0000000003.log", "E00-0000000004.open", "E00.base"]
    );
    drop(log);
    // A base that is not a number is refused, not taken for "nothing truncated".
    fs::write(tmp.path().join("E00.base"), "x").expect("base");
    assert!(matches!(
        LogCopy::open(tmp.path(), "SG1"),
        Err(TxLogError::Corrupt { .. })
    ));
    // A base past a gap: the generations between are missing, which is refused.
    fs::write(tmp.path().join("E00.base"), "2").expect("base");
    assert!(matches!(
        LogCopy::open(tmp.path(), "SG1"),
        Err(TxLogError::OutOfSequence {
            expected: 2,
            found: 3
        })
    ));
}

#[test]
fn a_copy_truncates_behind_what_it_copied_and_restarts_at_a_snapshot() {
    let active = tempfile::tempdir().expect("tempdir");
    let passive = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(active.path());
    for n in 1..=12 {
        log.append(&rec(n)).expect("append");
        log.sync().expect("sync");
    }
    let mut copy = LogCopy::open(passive.path(), "SG1").expect("copy");
    for g in 1..=3 {
        copy.store(g, &log.read_closed(g).expect("closed"))
            .expect("store");
    }
    let done = copy.truncate_before(9).expect("truncate");
    assert_eq!(done.generations, 3, "at most up to the next one to copy");
    assert_eq!((copy.first_kept(), copy.last_copied()), (4, 3));
    copy.store(4, &log.read_closed(4).expect("closed"))
        .expect("copies on");
    assert!(matches!(
        copy.truncate_from(2),
        Err(TxLogError::Truncated {
            generation: 2,
            first: 4
        })
    ));
    copy.restart_at(3).expect("restart");
    assert_eq!((copy.first_kept(), copy.last_copied()), (3, 2));
    assert_eq!(names(passive.path()), ["E00.base"]);
    copy.store(3, &log.read_closed(3).expect("closed"))
        .expect("copies from the snapshot's generation");
    drop(copy);
    let copy = LogCopy::open(passive.path(), "SG1").expect("reopen");
    assert_eq!((copy.first_kept(), copy.last_copied()), (3, 3));
}

#[test]
fn a_listing_removes_temporary_files_of_a_gone_process_only() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut log = small_log(tmp.path());
    for n in 1..=9 {
        log.append(&rec(n)).expect("append");
        log.sync().expect("sync");
    }
    let in_flight = format!("E00-0000000099.open{}", tmp_suffix());
    fs::write(tmp.path().join(&in_flight), "header").expect("ours");
    fs::write(tmp.path().join("E00.base.1.tmp"), "4").expect("a gone process's");
    fs::write(tmp.path().join("E00-0000000004.open.tmp"), "x").expect("an older release's");
    truncate_before(tmp.path(), 2).expect("truncate");
    let left = names(tmp.path());
    assert!(
        left.contains(&in_flight),
        "a write in flight was removed: {left:?}"
    );
    assert!(
        !left
            .iter()
            .any(|n| n == "E00.base.1.tmp" || n == "E00-0000000004.open.tmp"),
        "{left:?}"
    );
}

/// The checkpoint's truncation lists the directory while the writer closes generations in it (each
/// close writes the next open generation through a temporary file): neither may fail. Before
/// temporary files carried their process, the listing removed the writer's next generation
/// mid-rename (`E00-N.open: No such file`, deliveries refused until the log was reopened) and the
/// writer's reopen removed the truncation's new base (campaign, stop 33).
#[test]
fn truncation_beside_a_writer_closing_generations_fails_neither() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let closed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let truncator = {
        let (dir, closed, done) = (dir.clone(), closed.clone(), done.clone());
        std::thread::spawn(move || {
            let mut rounds = 0u64;
            while !done.load(Ordering::SeqCst) {
                let last = closed.load(Ordering::SeqCst);
                if last > 1 {
                    truncate_before(&dir, last).expect("a truncation beside the writer");
                    rounds += 1;
                }
            }
            rounds
        })
    };
    let mut log = small_log(&dir);
    let started = std::time::Instant::now();
    for n in 1..=3_000 {
        log.append(&rec(n)).expect("an append beside a truncation");
        let sealed = log.sync().expect("a sync beside a truncation");
        if let Some(&g) = sealed.last() {
            closed.store(g, Ordering::SeqCst);
        }
        if started.elapsed() > std::time::Duration::from_secs(20) {
            break;
        }
    }
    done.store(true, Ordering::SeqCst);
    let rounds = truncator.join().expect("the truncator did not panic");
    assert!(
        rounds > 10,
        "too few truncations ran beside the writer: {rounds}"
    );
}

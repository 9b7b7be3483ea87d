use proptest::prelude::*;

use super::*;

fn open(dir: &Path) -> Segments {
    Segments::open(dir, 1024).expect("open segments")
}

#[test]
fn a_body_reads_back_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let a = segments.append(b"first body").unwrap();
    let b = segments.append(b"").unwrap();
    segments.sync().unwrap();
    assert_eq!(segments.read(&a).unwrap(), b"first body");
    assert_eq!(segments.read(&b).unwrap(), b"");
    drop(segments);
    let again = open(dir.path());
    assert_eq!(again.read(&a).unwrap(), b"first body");
    // A reopened store appends to a new segment, never after a tail it cannot vouch for.
    let c = again.append(b"after").unwrap();
    assert!(c.segment > a.segment);
}

#[test]
fn a_full_segment_is_sealed_and_a_large_body_gets_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let small = segments.append(&[1; 600]).unwrap();
    let next = segments.append(&[2; 600]).unwrap();
    assert_ne!(
        small.segment, next.segment,
        "600 + 600 bytes exceed a 1 KiB segment"
    );
    let large = segments.append(&[3; 5000]).unwrap();
    assert_eq!(segments.read(&large).unwrap(), vec![3; 5000]);
    assert_eq!(segments.usage().files, 3);
}

#[test]
fn a_damaged_record_is_reported_not_returned() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let at = segments.append(b"the body of a message").unwrap();
    segments.sync().unwrap();
    let path = segments.path(at.segment);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    let err = segments.read(&at).unwrap_err();
    assert!(
        matches!(&err, SegmentError::Corrupt { reason, .. } if reason.contains("checksum")),
        "{err}"
    );
    let wrong = BodyAt { len: 3, ..at };
    assert!(matches!(
        segments.read(&wrong),
        Err(SegmentError::Corrupt { .. })
    ));
}

#[test]
fn only_sealed_segments_nothing_points_into_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let a = segments.append(&[1; 600]).unwrap();
    let b = segments.append(&[2; 600]).unwrap();
    segments.release(&b);
    assert_eq!(
        segments.plan(),
        Plan::default(),
        "b's segment is the active one"
    );
    segments.release(&a);
    assert_eq!(
        segments.plan(),
        Plan {
            empty: vec![a.segment],
            sparse: vec![]
        }
    );
    assert_eq!(segments.remove_empty(b.segment).unwrap(), 0);
    assert!(segments.remove_empty(a.segment).unwrap() > 600);
    assert!(!segments.path(a.segment).exists());
    assert!(matches!(segments.read(&a), Err(SegmentError::Gone(id)) if id == a.segment));
    assert_eq!(segments.read(&b).unwrap(), vec![2; 600]);
}

#[test]
fn a_mostly_dead_segment_is_planned_for_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let bodies: Vec<BodyAt> = (0..4)
        .map(|i| segments.append(&[i; 200]).unwrap())
        .collect();
    segments.append(&[9; 900]).unwrap();
    for at in &bodies[..2] {
        segments.release(at);
    }
    assert!(segments.plan().sparse.is_empty(), "half is still live");
    segments.release(&bodies[2]);
    assert_eq!(segments.plan().sparse, vec![bodies[0].segment]);
}

#[test]
fn recount_sets_what_is_live_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let a = segments.append(&[1; 300]).unwrap();
    let b = segments.append(&[2; 300]).unwrap();
    drop(segments);
    let again = open(dir.path());
    assert_eq!(again.usage().live, 0);
    assert_eq!(again.plan().empty, vec![a.segment]);
    assert_eq!(a.segment, b.segment);
    again.recount([b]);
    assert_eq!(again.usage().live, 316);
    assert_eq!(again.plan(), Plan::default(), "half of it is live");
    again.recount([]);
    assert_eq!(again.plan().empty, vec![a.segment]);
}

proptest! {
    #[test]
    fn pointers_decode_as_encoded(segment: u64, offset: u64, len: u64, crc: u32) {
        let at = BodyAt { segment, offset, len, crc };
        prop_assert_eq!(BodyAt::decode(&at.encode()), Some(at));
        prop_assert_eq!(BodyAt::decode(&at.encode()[1..]), None);
    }

    #[test]
    fn every_body_reads_back_whatever_the_sizes(sizes in prop::collection::vec(0usize..3000, 1..20)) {
        let dir = tempfile::tempdir().unwrap();
        let segments = open(dir.path());
        let stored: Vec<(Vec<u8>, BodyAt)> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let body = vec![i as u8; n];
                let at = segments.append(&body).unwrap();
                (body, at)
            })
            .collect();
        segments.sync().unwrap();
        for (body, at) in &stored {
            prop_assert_eq!(&segments.read(at).unwrap(), body);
        }
        let usage = segments.usage();
        prop_assert_eq!(usage.live, usage.bytes);
    }
}

#[test]
fn a_pointer_is_read_again_after_a_move_and_a_dangling_one_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let old = segments.append(&[1; 600]).unwrap();
    let new = segments.append(&[1; 600]).unwrap();
    segments.release(&old);
    segments.remove_empty(old.segment).unwrap();
    // The first read finds the pointer before the move, the second after it.
    let mut pointers = vec![Some(new), Some(old)];
    let read = segments.read_current(|| Ok::<_, SegmentError>(pointers.pop().unwrap()));
    assert_eq!(read.unwrap(), Some(vec![1; 600]));
    let dangling = segments.read_current(|| Ok::<_, SegmentError>(Some(old)));
    assert!(matches!(dangling, Err(SegmentError::Gone(id)) if id == old.segment));
    assert_eq!(
        segments
            .read_current(|| Ok::<_, SegmentError>(None))
            .unwrap(),
        None
    );
}

#[test]
fn a_sync_skips_what_the_last_one_covered_and_keeps_what_came_after() {
    let dir = tempfile::tempdir().unwrap();
    let segments = open(dir.path());
    let pending = |s: &Segments| {
        let state = s.lock();
        state
            .unsynced
            .iter()
            .filter(|u| state.usage[&u.id].size != u.synced)
            .map(|u| u.id)
            .collect::<Vec<_>>()
    };
    let first = segments.append(&[1; 600]).unwrap();
    assert_eq!(pending(&segments), vec![first.segment]);
    segments.sync().unwrap();
    assert_eq!(pending(&segments), Vec::<u64>::new(), "nothing new to sync");
    // Records in a second segment (the first is sealed, and was synced whole): only it is pending.
    let second = segments.append(&[2; 600]).unwrap();
    segments.append(&[3; 10]).unwrap();
    assert_ne!(first.segment, second.segment);
    assert_eq!(pending(&segments), vec![second.segment]);
    segments.sync().unwrap();
    assert_eq!(pending(&segments), Vec::<u64>::new());
    let state = segments.lock();
    let kept: Vec<u64> = state.unsynced.iter().map(|u| u.id).collect();
    assert_eq!(kept, vec![second.segment], "the sealed, synced one is done");
}

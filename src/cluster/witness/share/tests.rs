use super::*;

use std::sync::Barrier;

use tempfile::TempDir;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const A: &str = "node-a";
const B: &str = "node-b";
/// An hour, in ms: how far apart the tests put the two nodes' clocks.
const HOUR: u64 = 3_600_000;

fn share() -> Result<TempDir, io::Error> {
    tempfile::tempdir()
}

fn files(dir: &Path) -> Result<Vec<String>, io::Error> {
    let mut names = fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>, _>>()?;
    names.sort();
    Ok(names)
}

fn write_lock(dir: &Path, node: &str) -> Result<(), io::Error> {
    let info = LockInfo {
        node: node.to_string(),
        seq: "crashed".to_string(),
    };
    fs::write(dir.join(LOCK_FILE), serde_json::to_vec(&info)?)
}

#[test]
fn acquire_free_gives_us_the_lease_and_leaves_only_the_lease_file() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    assert_eq!(a.read()?, None);
    let seen = a.acquire(&|| 1_000, 500, 3, None)?;
    let ours = Lease {
        holder: A.to_string(),
        epoch: 3,
        version: 1,
        duration_ms: 500,
        released: false,
        last_log_generated: BTreeMap::new(),
    };
    assert_eq!(seen.lease, ours);
    assert_eq!(seen.until_ms, 1_500);
    assert_eq!(a.read()?, Some(ours));
    assert_eq!(files(dir.path())?, vec![LEASE_FILE.to_string()]);
    Ok(())
}

/// The other node's clock is an hour ahead of the holder's: it still waits a full lease duration
/// of its own clock from when it first saw the holder's last write.
#[test]
fn other_node_takes_only_after_a_full_duration_of_its_own_clock() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    let b = ShareWitness::new(dir.path(), B);
    let a_lease = a.acquire(&|| 1_000, 500, 1, None)?.lease;

    let seen = b.acquire(&|| HOUR, 500, 2, None)?;
    assert_eq!(
        seen.lease, a_lease,
        "b must get a's lease back, not its own"
    );
    assert_eq!(
        seen.until_ms,
        HOUR + 500,
        "free for b a full duration after it saw it"
    );
    assert_eq!(b.acquire(&|| HOUR + 499, 500, 2, None)?.lease.holder, A);
    assert_eq!(a.read()?, Some(a_lease));

    let taken = b.acquire(&|| HOUR + 500, 500, 2, None)?;
    assert_eq!(taken.lease.holder, B);
    assert_eq!(taken.lease.version, 2);
    assert_eq!(taken.until_ms, HOUR + 1_000);
    assert_eq!(a.read()?, Some(taken.lease));
    Ok(())
}

#[test]
fn every_renewal_restarts_the_other_nodes_wait() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    let b = ShareWitness::new(dir.path(), B);
    a.acquire(&|| 1_000, 500, 1, None)?;
    assert_eq!(
        b.observe(&|| 50_000, 500)?.map(|s| s.until_ms),
        Some(50_500)
    );
    // a renews (what its clock reads does not matter to b): b sees a new write and waits again.
    a.acquire(&|| 200, 500, 1, None)?;
    let seen = b.observe(&|| 50_400, 500)?.ok_or("no lease")?;
    assert_eq!((seen.lease.holder.as_str(), seen.until_ms), (A, 50_900));
    assert_eq!(b.acquire(&|| 50_899, 500, 2, None)?.lease.holder, A);
    assert_eq!(b.acquire(&|| 50_900, 500, 2, None)?.lease.holder, B);
    Ok(())
}

#[test]
fn the_longer_of_both_durations_is_waited_out() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    let b = ShareWitness::new(dir.path(), B);
    a.acquire(&|| 0, 2_000, 1, None)?;
    assert_eq!(b.acquire(&|| 10_000, 500, 2, None)?.until_ms, 12_000);
    assert_eq!(b.acquire(&|| 11_999, 500, 2, None)?.lease.holder, A);
    // A lease written before durations were recorded (0) is waited out for b's own duration.
    fs::write(
        dir.path().join(LEASE_FILE),
        br#"{"holder":"node-a","epoch":4,"expires_ms":99999999999999}"#,
    )?;
    assert_eq!(b.acquire(&|| 20_000, 500, 5, None)?.until_ms, 20_500);
    let taken = b.acquire(&|| 20_500, 500, 5, None)?.lease;
    assert_eq!((taken.holder.as_str(), taken.epoch), (B, 5));
    Ok(())
}

#[test]
fn release_lets_the_other_node_take_it_at_once() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    let b = ShareWitness::new(dir.path(), B);
    a.acquire(&|| 1_000, 500, 1, None)?;
    b.release(&|| 1_050)?;
    assert_eq!(
        a.read()?.map(|l| (l.holder, l.released)),
        Some((A.to_string(), false)),
        "b cannot release a's lease"
    );
    assert_eq!(b.acquire(&|| 77, 500, 2, None)?.lease.holder, A);

    a.release(&|| 1_100)?;
    let released = a.read()?.ok_or("released lease vanished")?;
    assert!(released.released);
    assert_eq!(released.version, 2);
    let taken = b.acquire(&|| 78, 500, 2, None)?;
    assert_eq!(taken.lease.holder, B);
    assert!(!taken.lease.released);
    assert_eq!(taken.until_ms, 578);
    Ok(())
}

#[test]
fn epoch_is_recorded() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    a.acquire(&|| 1_000, 500, 7, None)?;
    assert_eq!(a.read()?.map(|l| l.epoch), Some(7));
    a.acquire(&|| 1_100, 500, 8, None)?;
    assert_eq!(a.read()?.map(|l| l.epoch), Some(8));
    Ok(())
}

#[test]
fn missing_directory_is_unavailable_and_is_not_created() -> TestResult {
    let root = share()?;
    let dir = root.path().join("share");
    let a = ShareWitness::new(&dir, A);
    assert!(matches!(a.read(), Err(WitnessError::Unavailable { .. })));
    assert!(matches!(
        a.observe(&|| 1_000, 500),
        Err(WitnessError::Unavailable { .. })
    ));
    assert!(matches!(
        a.acquire(&|| 1_000, 500, 1, None),
        Err(WitnessError::Unavailable { .. })
    ));
    assert!(matches!(
        a.release(&|| 1_000),
        Err(WitnessError::Unavailable { .. })
    ));
    assert!(!dir.exists());
    assert!(files(root.path())?.is_empty());
    Ok(())
}

#[test]
fn a_lock_seen_unchanged_for_stale_lock_ms_is_broken() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    write_lock(dir.path(), B)?;
    assert!(matches!(
        a.acquire(&|| 5_000, 500, 1, None),
        Err(WitnessError::Busy)
    ));
    assert!(matches!(a.release(&|| 6_999), Err(WitnessError::Busy)));
    assert!(matches!(
        a.acquire(&|| 6_999, 500, 1, None),
        Err(WitnessError::Busy)
    ));
    assert_eq!(a.read()?, None, "a busy acquire must not write");

    assert_eq!(a.acquire(&|| 7_000, 500, 1, None)?.lease.holder, A);
    assert_eq!(files(dir.path())?, vec![LEASE_FILE.to_string()]);
    Ok(())
}

#[test]
fn a_lock_that_changes_is_never_broken_and_an_empty_one_ages_too() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    fs::write(dir.path().join(LOCK_FILE), b"")?;
    assert!(matches!(
        a.acquire(&|| 0, 500, 1, None),
        Err(WitnessError::Busy)
    ));
    // b took a new lock in between: a starts counting again.
    write_lock(dir.path(), B)?;
    assert!(matches!(
        a.acquire(&|| DEFAULT_STALE_LOCK_MS, 500, 1, None),
        Err(WitnessError::Busy)
    ));
    fs::write(dir.path().join(LOCK_FILE), b"")?;
    let later = 2 * DEFAULT_STALE_LOCK_MS;
    assert!(matches!(
        a.acquire(&|| later, 500, 1, None),
        Err(WitnessError::Busy)
    ));
    assert!(matches!(
        a.acquire(&|| later + DEFAULT_STALE_LOCK_MS - 1, 500, 1, None),
        Err(WitnessError::Busy)
    ));
    let taken = a.acquire(&|| later + DEFAULT_STALE_LOCK_MS, 500, 1, None)?;
    assert_eq!(taken.lease.holder, A);
    Ok(())
}

#[test]
fn corrupt_lease_is_reported_then_overwritten_by_acquire() -> TestResult {
    let dir = share()?;
    let a = ShareWitness::new(dir.path(), A);
    let b = ShareWitness::new(dir.path(), B);
    fs::write(
        dir.path().join(LEASE_FILE),
        b"{\"holder\": \"node-b\", \"epo",
    )?;
    assert!(matches!(a.read(), Err(WitnessError::Corrupt { .. })));
    b.release(&|| 1_000)?;
    assert!(
        matches!(a.read(), Err(WitnessError::Corrupt { .. })),
        "release must not touch it"
    );

    let seen = a.acquire(&|| 1_000, 500, 4, None)?;
    assert_eq!(seen.lease.holder, A);
    assert_eq!(a.read()?, Some(seen.lease));
    Ok(())
}

/// Retries `op` while the other node holds the lock (as a node would on its next tick), so every
/// attempt has an outcome; bounded, so a lock that is never freed fails the test, not hangs it.
fn past_busy<T>(mut op: impl FnMut() -> Result<T, WitnessError>) -> Result<T, WitnessError> {
    for _ in 0..1_000_000 {
        match op() {
            Err(WitnessError::Busy) => std::thread::yield_now(),
            done => return done,
        }
    }
    Err(WitnessError::Busy)
}

/// Two nodes race for the lease in rounds, each reading one logical time through its own clock (an
/// hour apart), renewing, stalling for several rounds now and then (so the other node times it out),
/// releasing now and then. Each records the spans of logical time it believed itself holder: from
/// just after a take returned to the lease's `until_ms` less the safety margin, cut short where it
/// decided to release. No two spans of different nodes may overlap.
#[test]
fn two_nodes_hammering_never_both_hold_whatever_their_clocks_read() -> TestResult {
    const ITERATIONS: u64 = 400;
    const DURATION: u64 = 20;
    const SAFETY: u64 = 3;
    let dir = share()?;
    let time = AtomicU64::new(1);
    let barrier = Barrier::new(2);
    let tick = || time.fetch_add(1, Ordering::SeqCst);

    let run = |node: &str, offset: u64| -> Result<Vec<(u64, u64)>, WitnessError> {
        let witness = ShareWitness::new(dir.path(), node).with_stale_lock_ms(u64::MAX / 4);
        let clock = || tick() + offset;
        let mut spans: Vec<(u64, u64)> = Vec::new();
        let mut failure = None;
        barrier.wait();
        for i in 0..ITERATIONS {
            // Stalled rounds, at different times for the two nodes: a holder that stalls long
            // enough loses the lease to the other.
            let stalled = (i + offset / HOUR * 7) % 17 < 6;
            if failure.is_none() && !stalled {
                match past_busy(|| witness.acquire(&clock, DURATION, i, None)) {
                    Ok(seen) if seen.lease.holder == node => {
                        let end = seen.until_ms.saturating_sub(SAFETY + offset);
                        spans.push((tick(), end));
                        if spans.len() % 10 == 0 {
                            let t = tick();
                            match past_busy(|| witness.release(&clock)) {
                                Ok(()) => spans.iter_mut().for_each(|s| s.1 = s.1.min(t)),
                                Err(e) => failure = Some(e),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(e) => failure = Some(e),
                }
            }
            // Both nodes race again in the next round, however the threads are scheduled; a node
            // that failed keeps turning up so the other is not left waiting.
            barrier.wait();
        }
        failure.map_or(Ok(spans), Err)
    };
    let (spans_a, spans_b) = std::thread::scope(|s| {
        let a = s.spawn(|| run(A, 0));
        let b = s.spawn(|| run(B, HOUR));
        (a.join(), b.join())
    });
    let spans_a = spans_a.map_err(|_| "node-a thread panicked")??;
    let spans_b = spans_b.map_err(|_| "node-b thread panicked")??;
    let held = |spans: &[(u64, u64)]| spans.iter().filter(|s| s.0 < s.1).count();
    assert!(
        held(&spans_a) > 0 && held(&spans_b) > 0,
        "both nodes must have held the lease"
    );
    for a in &spans_a {
        for b in &spans_b {
            assert!(a.1 <= b.0 || b.1 <= a.0, "both held: a {a:?}, b {b:?}");
        }
    }
    Ok(())
}

#[test]
fn highest_epoch_and_its_note_survive_a_takeover_without_a_mount() -> TestResult {
    let dir = tempfile::tempdir()?;
    let a = ShareWitness::new(dir.path(), A);
    let b = ShareWitness::new(dir.path(), B);
    let note = BTreeMap::from([("SG1".to_string(), 42)]);
    a.acquire(&|| 1_000, 500, 7, Some(&note))?;
    // B takes the lease once a stopped renewing, as a candidate (its own epoch is lower, no note of
    // its own).
    b.observe(&|| 2_000, 500)?;
    let taken = b.acquire(&|| 2_500, 500, 3, None)?.lease;
    assert_eq!(taken.holder, B);
    assert_eq!(taken.epoch, 7, "the highest epoch stays recorded");
    assert_eq!(
        taken.last_log_generated, note,
        "the active node's note is carried over"
    );
    // Once B is active it writes its own note.
    let own = BTreeMap::from([("SG1".to_string(), 45)]);
    assert_eq!(
        b.acquire(&|| 2_600, 500, 8, Some(&own))?
            .lease
            .last_log_generated,
        own
    );
    Ok(())
}

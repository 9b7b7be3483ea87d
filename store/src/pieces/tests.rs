use proptest::prelude::*;
use sled::transaction::{ConflictableTransactionError, TransactionError};

use super::{insert, piece_key, read, remove, PIECE};

fn tree() -> (tempfile::TempDir, sled::Tree) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .open()
        .expect("open sled");
    let tree = db.open_tree("bodies").expect("tree");
    (dir, tree)
}

fn put(tree: &sled::Tree, key: &[u8], body: &[u8]) {
    let done: Result<(), TransactionError> = tree.transaction(|t| {
        insert(t, key, body)?;
        Ok::<_, ConflictableTransactionError>(())
    });
    done.expect("insert");
}

fn delete(tree: &sled::Tree, key: &[u8]) {
    let done: Result<(), TransactionError> = tree.transaction(|t| {
        remove(t, key)?;
        Ok::<_, ConflictableTransactionError>(())
    });
    done.expect("remove");
}

fn body(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Bodies of every size around the piece boundaries come back byte for byte, neighbours
    /// (keys one apart) stay apart, and removal leaves nothing of the body and all of the others.
    #[test]
    fn bodies_round_trip_and_remove_cleanly(
        lens in proptest::collection::vec(
            prop_oneof![0..3usize, PIECE - 2..PIECE + 3, 3 * PIECE - 1..3 * PIECE + 2, 0..20_000usize],
            1..6,
        ),
        gone in any::<prop::sample::Index>(),
    ) {
        let (_dir, tree) = tree();
        let bodies: Vec<Vec<u8>> = lens.iter().enumerate().map(|(i, &len)| body(len, i as u8)).collect();
        let key = |i: usize| (i as u64).to_be_bytes();
        for (i, b) in bodies.iter().enumerate() {
            put(&tree, &key(i), b);
        }
        for (i, b) in bodies.iter().enumerate() {
            prop_assert_eq!(read(&tree, &key(i)).expect("read"), Some(b.clone()));
        }
        let gone = gone.index(bodies.len());
        delete(&tree, &key(gone));
        prop_assert_eq!(read(&tree, &key(gone)).expect("read"), None);
        prop_assert_eq!(tree.scan_prefix(key(gone)).count(), 0);
        for (i, b) in bodies.iter().enumerate().filter(|(i, _)| *i != gone) {
            prop_assert_eq!(read(&tree, &key(i)).expect("read"), Some(b.clone()));
        }
    }
}

#[test]
fn a_body_stored_whole_before_pieces_is_read_and_removed() {
    let (_dir, tree) = tree();
    let old = body(3 * PIECE + 5, 7);
    tree.insert(7u64.to_be_bytes(), old.as_slice())
        .expect("insert");
    put(&tree, &8u64.to_be_bytes(), b"next");
    assert_eq!(read(&tree, &7u64.to_be_bytes()).expect("read"), Some(old));
    delete(&tree, &7u64.to_be_bytes());
    assert_eq!(read(&tree, &7u64.to_be_bytes()).expect("read"), None);
    assert_eq!(
        read(&tree, &8u64.to_be_bytes()).expect("read"),
        Some(b"next".to_vec())
    );
}

#[test]
fn a_body_stored_in_smaller_pieces_by_an_older_release_is_read_and_removed() {
    let (_dir, tree) = tree();
    let old = body(5 * 4096 + 9, 3);
    for (index, piece) in (0u32..).zip(old.chunks(4096)) {
        tree.insert(piece_key(&7u64.to_be_bytes(), index), piece)
            .expect("insert");
    }
    put(&tree, &8u64.to_be_bytes(), b"next");
    assert_eq!(read(&tree, &7u64.to_be_bytes()).expect("read"), Some(old));
    delete(&tree, &7u64.to_be_bytes());
    assert_eq!(read(&tree, &7u64.to_be_bytes()).expect("read"), None);
    assert_eq!(tree.len(), 1, "only the other body is left");
}

#[test]
fn a_big_body_is_stored_in_pieces_no_larger_than_a_piece() {
    let (_dir, tree) = tree();
    put(&tree, b"k", &body(10 * PIECE + 1, 1));
    let sizes: Vec<usize> = tree.iter().map(|kv| kv.expect("item").1.len()).collect();
    assert_eq!(sizes.len(), 11);
    assert!(sizes.iter().all(|&s| s <= PIECE), "{sizes:?}");
}

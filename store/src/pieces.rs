//! Message bodies as releases before body segments (`crate::segments`) stored them: in sled, in
//! small pieces. Stores written then still open, so bodies are read and removed here; only tests
//! write them, to make such a store.
//!
//! Why pieces then: so that sled's cache bounded the memory they took.
//!
//! sled 0.34's cache does not bound memory when values are big: a leaf page holds up to 16
//! values, and its LRU (256 shards) weighs page accesses only in batches of 64 per shard, so pages
//! stay resident between batches whatever `cache_capacity` says. With 64 KiB bodies a leaf is
//! 1 MiB, and a hub with a 64 MiB cache was measured at 214 MB RSS after 1.1 GB of 64 KiB
//! messages (52 MB after 30,000 of 4 KiB). In pieces of at most [`PIECE`] bytes a leaf stays near
//! 128 KiB whatever the body size (101–103 MB peak after the same 1.1 GB, with jemalloc).
//!
//! 8 KiB rather than 4: half the B-tree inserts and removals per body, 12–20 % more 64 KiB
//! messages relayed per second in alternating runs. 16 KiB was slower: a leaf then outgrows the
//! largest record sled writes inline in its log (128 KiB with 512 KiB segments) and every rewrite
//! of it goes to a blob file of its own.
//!
//! A body is stored under `key ++ index (u32 BE)` for each piece; a body written before bodies were
//! split sits whole under `key` itself, which sorts first, so reading the prefix in order returns
//! either kind. `key` must not be a prefix of another body's key (the stores' keys are fixed-length
//! or length-prefixed).

use sled::transaction::{TransactionalTree, UnabortableTransactionError};

/// The largest piece, in bytes.
#[cfg(test)]
pub(crate) const PIECE: usize = 8192;

fn piece_key(key: &[u8], index: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 4);
    k.extend_from_slice(key);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Stores `body` under `key` (at least one piece, so an empty body still exists).
#[cfg(test)]
pub(crate) fn insert(
    tree: &TransactionalTree,
    key: &[u8],
    body: &[u8],
) -> Result<(), UnabortableTransactionError> {
    if body.is_empty() {
        tree.insert(piece_key(key, 0), &[])?;
    }
    for (index, piece) in (0..).zip(body.chunks(PIECE)) {
        tree.insert(piece_key(key, index), piece)?;
    }
    Ok(())
}

/// Removes the body under `key`, whichever way it was stored.
pub(crate) fn remove(
    tree: &TransactionalTree,
    key: &[u8],
) -> Result<(), UnabortableTransactionError> {
    tree.remove(key)?;
    let mut index = 0;
    while tree.remove(piece_key(key, index))?.is_some() {
        index += 1;
    }
    Ok(())
}

/// The body under `key`, or `None` if there is none. The pieces are read outside a transaction:
/// callers read only bodies that something still references, which nothing removes meanwhile.
pub(crate) fn read(tree: &sled::Tree, key: &[u8]) -> sled::Result<Option<Vec<u8>>> {
    let mut body: Option<Vec<u8>> = None;
    for item in tree.scan_prefix(key) {
        let (_, piece) = item?;
        body.get_or_insert_with(Vec::new).extend_from_slice(&piece);
    }
    Ok(body)
}

#[cfg(test)]
mod tests;

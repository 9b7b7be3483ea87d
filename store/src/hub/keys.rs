//! Key encodings. Everything scanned in order is fixed-width big-endian, so sled's byte order is
//! time order and range scans do the scheduling.

use super::{HubStoreError, Millis};

/// A u64 as an 8-byte big-endian key (queue ids, blob ids).
pub(super) fn id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// Due index key: (next_attempt_ms, queue id), so the first keys are the messages due first.
pub(super) fn due_key(at_ms: Millis, id: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&at_ms.to_be_bytes());
    key[8..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The per-SG prefix of both dumpster indexes: the name's length (u64 BE) then the name. The
/// length makes the prefix unambiguous, so a scan of "SG1" never runs into "SG10".
pub(super) fn sg_prefix(sg: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + sg.len() + 16);
    key.extend_from_slice(&(sg.len() as u64).to_be_bytes());
    key.extend_from_slice(sg.as_bytes());
    key
}

/// (SG, time BE, seq BE): the key of both dumpster indexes (delivery time in the primary index,
/// receive time in the secondary). `seq` is unique, so entries of the same millisecond coexist.
pub(super) fn timed_key(prefix: &[u8], ms: Millis, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 16);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&ms.to_be_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Splits a `timed_key` into (time, seq), checking that its length matches its SG prefix.
pub(super) fn parse_timed_key(
    tree: &'static str,
    key: &[u8],
) -> Result<(Millis, u64), HubStoreError> {
    let bad = |reason: &str| corrupt(tree, key, reason);
    let name_len = key
        .get(..8)
        .map(be_u64)
        .ok_or_else(|| bad("key shorter than its length prefix"))?;
    let tail = usize::try_from(name_len)
        .ok()
        .and_then(|n| n.checked_add(8))
        .filter(|&start| start.checked_add(16) == Some(key.len()))
        .ok_or_else(|| bad("key length does not match its storage-group length"))?;
    Ok((be_u64(&key[tail..tail + 8]), be_u64(&key[tail + 8..])))
}

/// Decodes an 8-byte big-endian value (blob reference counts, id keys).
pub(super) fn parse_u64(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<u64, HubStoreError> {
    match value.try_into() {
        Ok(bytes) => Ok(u64::from_be_bytes(bytes)),
        Err(_) => Err(corrupt(tree, key, "expected an 8-byte big-endian integer")),
    }
}

fn be_u64(bytes: &[u8]) -> u64 {
    u64::from_be_bytes(bytes.try_into().expect("callers pass exactly 8 bytes"))
}

/// The error for an undecodable record, naming where it is.
pub(super) fn corrupt(tree: &'static str, key: &[u8], reason: &str) -> HubStoreError {
    HubStoreError::Corrupt {
        tree,
        key: key.escape_ascii().to_string(),
        reason: reason.to_string(),
    }
}

/// Decodes a JSON record, reporting a failure as `Corrupt` with its tree and key.
pub(super) fn decode<T: serde::de::DeserializeOwned>(
    tree: &'static str,
    key: &[u8],
    value: &[u8],
) -> Result<T, HubStoreError> {
    serde_json::from_slice(value).map_err(|e| corrupt(tree, key, &e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timed_keys_sort_by_sg_then_time_then_seq() {
        let a = sg_prefix("SG1");
        let b = sg_prefix("SG10");
        assert!(
            !b.starts_with(&a),
            "one SG's prefix must not cover another's"
        );
        assert!(timed_key(&a, 1, 9) < timed_key(&a, 2, 0));
        assert!(timed_key(&a, 256, 0) > timed_key(&a, 255, u64::MAX));
        assert!(timed_key(&a, 5, 1) < timed_key(&a, 5, 2));
        assert_eq!(parse_timed_key("t", &timed_key(&b, 7, 8)).unwrap(), (7, 8));
        assert!(due_key(1, u64::MAX) < due_key(2, 0));
    }

    #[test]
    fn malformed_timed_key_is_corrupt() {
        let mut key = timed_key(&sg_prefix("SG1"), 1, 2);
        key.pop();
        match parse_timed_key("dumpster", &key) {
            Err(HubStoreError::Corrupt { tree, .. }) => assert_eq!(tree, "dumpster"),
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert!(parse_timed_key("dumpster", b"abc").is_err());
    }
}

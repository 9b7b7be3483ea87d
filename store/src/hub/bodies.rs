//! The hub's message bodies: in segment files ([`crate::segments`]), with each blob's pointer
//! beside its reference count; bodies written by earlier releases stay readable in sled pieces.

#[cfg(test)]
mod tests;

use std::collections::HashSet;

use super::keys::{corrupt, id_key, parse_u64};
use super::tx::REFS;
use super::{HubStore, HubStoreError};
use crate::segments::{BodyAt, SegmentError};

/// Bytes of live bodies one compaction round moves at most, so a round stays short and the
/// queue's writer is not held up behind it for long.
const MOVE_PER_ROUND: u64 = 64 << 20;

/// A blob's entry in the reference tree: how many queue entries and dumpster entries use it,
/// and where its body is (`None`: in sled pieces, as earlier releases stored it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BlobRef {
    pub count: u64,
    pub at: Option<BodyAt>,
}

impl BlobRef {
    /// The count (u64 BE), then the pointer if there is one.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.count.to_be_bytes().to_vec();
        if let Some(at) = &self.at {
            out.extend_from_slice(&at.encode());
        }
        out
    }

    /// Reads what [`BlobRef::encode`] wrote, or the bare count of earlier releases.
    pub fn decode(key: &[u8], raw: &[u8]) -> Result<BlobRef, HubStoreError> {
        let (count, at) = raw.split_at(raw.len().min(8));
        let count = parse_u64(REFS, key, count)?;
        let at = match at {
            [] => None,
            at => Some(BodyAt::decode(at).ok_or_else(|| corrupt(REFS, key, "bad body pointer"))?),
        };
        Ok(BlobRef { count, at })
    }
}

/// What a compaction round gave back.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Compaction {
    /// Live bodies moved out of mostly-dead segments.
    pub moved: u64,
    /// Segment files deleted.
    pub removed: u64,
    /// Their bytes.
    pub freed: u64,
}

impl HubStore {
    /// The body stored as `blob`, while a queued message or dumpster entry references it.
    pub fn body(&self, blob: u64) -> Result<Option<Vec<u8>>, HubStoreError> {
        let key = id_key(blob);
        loop {
            let t = self.trees()?;
            let Some(raw) = t.refs.get(key)? else {
                return Ok(None);
            };
            let Some(at) = BlobRef::decode(&key, &raw)?.at else {
                return Ok(crate::pieces::read(&t.blobs, &key)?);
            };
            match self.bodies.read(&at) {
                // Compacted between the two reads: the pointer has moved.
                Err(SegmentError::Gone(_)) => continue,
                other => return Ok(Some(other?)),
            }
        }
    }

    /// Sets the live bytes of every segment from the reference tree (at open, after a reopen).
    pub(super) fn recount_bodies(&self) -> Result<(), HubStoreError> {
        let t = self.trees()?;
        let mut live = Vec::new();
        for item in t.refs.iter() {
            let (key, raw) = item?;
            live.extend(BlobRef::decode(&key, &raw)?.at);
        }
        self.bodies.recount(live);
        Ok(())
    }

    /// One round of giving disk back: moves the live bodies of mostly-dead segments (up to
    /// [`MOVE_PER_ROUND`]), then flushes and deletes the segments nothing points into. Safe to
    /// run beside every other operation; a crash at any point loses no body (a segment goes only
    /// once the state without pointers into it is flushed, and a moved body's old copy stays
    /// until then).
    pub fn compact_bodies(&self) -> Result<Compaction, HubStoreError> {
        let mut done = Compaction::default();
        let sparse: HashSet<u64> = self.bodies.plan().sparse.into_iter().collect();
        if !sparse.is_empty() {
            done.moved = self.move_bodies(&sparse)?;
        }
        let empty = self.bodies.plan().empty;
        if empty.is_empty() {
            return Ok(done);
        }
        self.flush()?;
        for id in empty {
            let freed = self.bodies.remove_empty(id)?;
            if freed > 0 {
                done.removed += 1;
                done.freed += freed;
            }
        }
        Ok(done)
    }

    /// Appends the live bodies of `sparse` segments again and moves their pointers, each only if
    /// it still points where it did (a blob dropped meanwhile leaves its new copy dead).
    fn move_bodies(&self, sparse: &HashSet<u64>) -> Result<u64, HubStoreError> {
        let mut moves = Vec::new();
        let mut bytes = 0;
        for item in self.trees()?.refs.iter() {
            if bytes >= MOVE_PER_ROUND {
                break;
            }
            let (key, raw) = item?;
            let Some(old) = BlobRef::decode(&key, &raw)?.at else {
                continue;
            };
            if !sparse.contains(&old.segment) {
                continue;
            }
            // Only this round deletes segments, so `old`'s is still there.
            let body = self.bodies.read(&old)?;
            let new = self.bodies.append(&body)?;
            bytes += old.len;
            moves.push((key, old, new));
        }
        if moves.is_empty() {
            return Ok(0);
        }
        let committed = self
            .bodies
            .sync()
            .map_err(HubStoreError::from)
            .and_then(|()| {
                self.transact(|tx| {
                    let mut moved = Vec::with_capacity(moves.len());
                    for (key, old, new) in &moves {
                        let current = match tx.refs.get(key)? {
                            Some(raw) => BlobRef::decode(key, &raw)?,
                            None => {
                                moved.push(false);
                                continue;
                            }
                        };
                        let still = current.at == Some(*old);
                        if still {
                            let updated = BlobRef {
                                count: current.count,
                                at: Some(*new),
                            };
                            tx.refs.insert(key.as_ref(), updated.encode())?;
                        }
                        moved.push(still);
                    }
                    Ok(moved)
                })
            });
        let moved = match committed {
            Ok(moved) => moved,
            Err(e) => {
                for (_, _, new) in &moves {
                    self.bodies.release(new);
                }
                return Err(e);
            }
        };
        let mut count = 0;
        for ((_, old, new), moved) in moves.iter().zip(moved) {
            if moved {
                self.bodies.release(old);
                count += 1;
            } else {
                self.bodies.release(new);
            }
        }
        Ok(count)
    }
}

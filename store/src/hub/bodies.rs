//! The hub's message bodies: in segment files ([`crate::segments`]), with each blob's pointer
//! beside its reference count; bodies written by earlier releases stay readable in sled pieces.

#[cfg(test)]
mod tests;

use super::keys::{corrupt, id_key, parse_u64};
use super::tx::REFS;
use super::{HubStore, HubStoreError};
use crate::segments::{BodyAt, Compaction};

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

impl HubStore {
    /// The body stored as `blob`, while a queued message or dumpster entry references it.
    pub fn body(&self, blob: u64) -> Result<Option<Vec<u8>>, HubStoreError> {
        let key = id_key(blob);
        let t = self.trees()?;
        let in_segment = self.bodies.read_current(|| match t.refs.get(key)? {
            Some(raw) => Ok::<_, HubStoreError>(BlobRef::decode(&key, &raw)?.at),
            None => Ok(None),
        })?;
        match in_segment {
            Some(body) => Ok(Some(body)),
            // Stored by an earlier release, or no such blob (then there are no pieces either).
            None => Ok(crate::pieces::read(&t.blobs, &key)?),
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

    /// One round of giving disk back ([`Segments::compact`](crate::segments::Segments::compact)):
    /// bodies move by rewriting their blob's reference entry, count unchanged.
    pub fn compact_bodies(&self) -> Result<Compaction, HubStoreError> {
        let refs = self.trees()?.refs.clone();
        self.bodies.compact(
            || {
                Ok(refs.iter().filter_map(|item| {
                    let pointer = item.map_err(HubStoreError::from).and_then(|(key, raw)| {
                        Ok(BlobRef::decode(&key, &raw)?.at.map(|at| (key, at)))
                    });
                    pointer.transpose()
                }))
            },
            |moves| {
                self.transact(|tx| {
                    let mut moved = Vec::with_capacity(moves.len());
                    for m in moves {
                        let current = match tx.refs.get(&m.key)? {
                            Some(raw) => BlobRef::decode(&m.key, &raw)?,
                            None => {
                                moved.push(false);
                                continue;
                            }
                        };
                        let still = current.at == Some(m.old);
                        if still {
                            let updated = BlobRef {
                                count: current.count,
                                at: Some(m.new),
                            };
                            tx.refs.insert(&m.key, updated.encode())?;
                        }
                        moved.push(still);
                    }
                    Ok(moved)
                })
            },
            || self.flush(),
        )
    }
}

//! A snapshot of one storage group's part of a mailbox store, to seed a copy without replaying the
//! storage group's whole log history.
//!
//! A snapshot is the list of records applied up to a position (the active's checkpoint when it was
//! taken), each with what applying it did (which mailboxes got a copy) and its body: everything
//! the store keeps for a storage group follows from that list. Records are read in log order while
//! intake goes on; later applies only add keys after the snapshot's position, so what is read is
//! exactly the store as it was at that position. The copy installs the records with its own
//! sequence numbers, then copies and replays the logs from the snapshot's generation (applying a
//! position twice is a no-op, so the records of that generation already in the snapshot are
//! skipped).
//!
//! On the wire a snapshot is a stream of frames (`kind u8 ++ len u32 BE ++ payload`): a header,
//! one frame per record (JSON meta ++ body), and a trailer with the record count and the SHA-256
//! of every byte before it. [`Decoder`] takes the stream in arbitrary pieces and refuses anything
//! malformed, short or altered; it holds at most one frame in memory.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{
    anchor_key, copy_keys, decode, encode, from_tx, hex, record_key, sg_key, stamp, Anchor,
    Applied, ContentDigest, MailboxError, MailboxStore, StoredMessage, Trees,
};
use crate::segments::Segments;
use crate::txlog::{LogPosition, Millis};

/// One applied record as a snapshot carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    /// Where it is in the storage group's log.
    pub position: LogPosition,
    /// Its Message-ID.
    pub message_id: String,
    /// When the active node accepted it.
    pub time_ms: Millis,
    /// The mailboxes that got a copy (the others already held this very message).
    pub added: Vec<String>,
    /// Content digest (hex) of the dedup keys it made.
    pub digest: String,
    /// The body, when some mailbox holds a copy (the store keeps no other).
    #[serde(skip)]
    pub body: Option<Vec<u8>>,
}

/// The first frame: what the snapshot is of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHeader {
    /// The storage group.
    pub storage_group: String,
    /// The last record it holds (`None`: the storage group had nothing applied).
    pub checkpoint: Option<LogPosition>,
    /// How many records it holds (for progress).
    pub records: u64,
}

/// The last frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Trailer {
    records: u64,
    sha256: String,
}

const HEADER: u8 = b'H';
const RECORD: u8 = b'R';
const TRAILER: u8 = b'T';
/// The largest frame a decoder accepts (a body is at most the site's message size limit).
const MAX_FRAME: usize = 1 << 31;

/// Why a snapshot stream was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("snapshot refused: {0}")]
pub struct SnapshotError(pub String);

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The header (always first).
    Header(SnapshotHeader),
    /// A record.
    Record(SnapshotRecord),
    /// The trailer checked out: the snapshot is complete and unaltered.
    End,
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Writes a snapshot stream, hashing every byte it hands out for the trailer.
#[derive(Default)]
pub struct Encoder {
    hash: Sha256,
    records: u64,
}

impl Encoder {
    /// The header frame.
    pub fn header(&mut self, header: &SnapshotHeader) -> Vec<u8> {
        self.emit(frame(HEADER, &encode(header)))
    }

    /// A record frame.
    pub fn record(&mut self, rec: &SnapshotRecord) -> Vec<u8> {
        let meta = encode(rec);
        let body = rec.body.as_deref();
        let mut payload = Vec::with_capacity(4 + meta.len() + 9 + body.map_or(0, <[u8]>::len));
        payload.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        payload.extend_from_slice(&meta);
        payload.push(u8::from(body.is_some()));
        payload.extend_from_slice(body.unwrap_or_default());
        self.records += 1;
        self.emit(frame(RECORD, &payload))
    }

    /// The trailer frame (last).
    pub fn trailer(&mut self) -> Vec<u8> {
        let trailer = Trailer {
            records: self.records,
            sha256: hex(&std::mem::take(&mut self.hash).finalize()),
        };
        frame(TRAILER, &encode(&trailer))
    }

    fn emit(&mut self, bytes: Vec<u8>) -> Vec<u8> {
        self.hash.update(&bytes);
        bytes
    }
}

/// Reads a snapshot stream fed in pieces of any size.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
    hash: Sha256,
    records: u64,
    header: bool,
    ended: bool,
}

impl Decoder {
    /// Adds bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` if more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, SnapshotError> {
        let bad = |why: &str| SnapshotError(why.to_string());
        if self.ended {
            return match self.buf.is_empty() {
                true => Ok(None),
                false => Err(bad("bytes after the trailer")),
            };
        }
        let Some(head) = self.buf.get(..5) else {
            return Ok(None);
        };
        let kind = head[0];
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        if len > MAX_FRAME {
            return Err(bad("frame too large"));
        }
        if self.buf.len() < 5 + len {
            return Ok(None);
        }
        let bytes: Vec<u8> = self.buf.drain(..5 + len).collect();
        let payload = &bytes[5..];
        let parsed = match (kind, self.header) {
            (HEADER, false) => {
                self.header = true;
                let h: SnapshotHeader = serde_json::from_slice(payload)
                    .map_err(|e| SnapshotError(format!("header: {e}")))?;
                Frame::Header(h)
            }
            (RECORD, true) => {
                self.records += 1;
                Frame::Record(decode_record(payload)?)
            }
            (TRAILER, true) => {
                let t: Trailer = serde_json::from_slice(payload)
                    .map_err(|e| SnapshotError(format!("trailer: {e}")))?;
                let sha256 = hex(&std::mem::take(&mut self.hash).finalize());
                if t.records != self.records || t.sha256 != sha256 {
                    return Err(bad("trailer does not match what was received"));
                }
                self.ended = true;
                return Ok(Some(Frame::End));
            }
            (HEADER, true) => return Err(bad("a second header")),
            (_, false) => return Err(bad("no header first")),
            (k, true) => return Err(SnapshotError(format!("unknown frame kind {k}"))),
        };
        self.hash.update(&bytes);
        Ok(Some(parsed))
    }

    /// Whether the trailer was received and checked.
    pub fn complete(&self) -> bool {
        self.ended
    }
}

fn decode_record(payload: &[u8]) -> Result<SnapshotRecord, SnapshotError> {
    let bad = |why: &str| SnapshotError(format!("record: {why}"));
    let len = payload
        .get(..4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| bad("too short"))?;
    let meta = payload
        .get(4..4 + len)
        .ok_or_else(|| bad("meta cut short"))?;
    let mut rec: SnapshotRecord =
        serde_json::from_slice(meta).map_err(|e| SnapshotError(format!("record: {e}")))?;
    let rest = payload.get(4 + len..).ok_or_else(|| bad("cut short"))?;
    rec.body = match rest.split_first() {
        Some((0, [])) => None,
        Some((1, body)) => Some(body.to_vec()),
        _ => return Err(bad("bad body marker")),
    };
    if rec.body.is_none() != rec.added.is_empty() {
        return Err(bad("a body exactly when some mailbox got a copy"));
    }
    if let Some(body) = &rec.body {
        if hex(&ContentDigest::of(body).0) != rec.digest {
            return Err(bad("body does not match its digest"));
        }
    }
    Ok(rec)
}

/// The records of one storage group up to a position, read from the store in log order.
pub struct SnapshotReader {
    trees: std::sync::Arc<Trees>,
    bodies: std::sync::Arc<Segments>,
    iter: sled::Iter,
}

impl Iterator for SnapshotReader {
    type Item = Result<SnapshotRecord, MailboxError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.iter.next()?;
        Some(item.map_err(MailboxError::from).and_then(|(key, value)| {
            let applied: Applied = decode(&value, "applied record")?;
            let body = if applied.added.is_empty() {
                None
            } else {
                let body = super::read_body(&self.trees, &self.bodies, &key)?;
                Some(body.ok_or_else(|| MailboxError::Corrupt {
                    what: "body",
                    reason: format!("record {:?} of a snapshot has no body", applied.position),
                })?)
            };
            Ok(SnapshotRecord {
                position: applied.position,
                message_id: applied.message_id,
                time_ms: applied.time_ms,
                added: applied.added,
                digest: applied.digest,
                body,
            })
        }))
    }
}

impl MailboxStore {
    /// The records of `sg` applied up to and including `upto` (its checkpoint when the snapshot
    /// starts), and how many they are. Reading goes on while records are applied after `upto`.
    pub fn snapshot(
        &self,
        sg: &str,
        upto: LogPosition,
    ) -> Result<(u64, SnapshotReader), MailboxError> {
        let t = self.t()?;
        let prefix = sg_key(sg)?;
        let first = record_key(
            &prefix,
            LogPosition {
                generation: 0,
                index: 0,
            },
        );
        let last = record_key(&prefix, upto);
        let count = t.applied.range(first.clone()..=last.clone()).count() as u64;
        let iter = t.applied.range(first..=last);
        Ok((
            count,
            SnapshotReader {
                trees: t,
                bodies: self.bodies.clone(),
                iter,
            },
        ))
    }

    /// Installs one record of a snapshot of `sg` (in log order, into a storage group that was
    /// cleared first): the same mailbox copies, dedup keys, body and hub anchor that applying it
    /// made on the active, under this store's own sequence numbers. Installing a position twice
    /// is a no-op.
    pub fn install(&self, sg: &str, rec: &SnapshotRecord) -> Result<(), MailboxError> {
        let t = self.t()?;
        let key = record_key(&sg_key(sg)?, rec.position);
        if t.applied.contains_key(&key)? {
            return Ok(());
        }
        let seq = t.db.generate_id()?;
        let size = rec.body.as_ref().map_or(0, Vec::len) as u64;
        let digest = super::unhex(&rec.digest).ok_or_else(|| MailboxError::Corrupt {
            what: "snapshot record",
            reason: format!("bad digest {:?}", rec.digest),
        })?;
        let stamp = rec.body.as_deref().and_then(stamp::hub_stamp);
        let anchor = match &stamp {
            Some(s) => Some((
                anchor_key(sg, &s.host)?,
                encode(&Anchor {
                    time_ms: s.time_ms,
                    position: rec.position,
                }),
            )),
            None => None,
        };
        let mut entry = seq.to_be_bytes().to_vec();
        entry.extend_from_slice(&rec.time_ms.to_be_bytes());
        let template = StoredMessage {
            address: String::new(),
            message_id: rec.message_id.clone(),
            size,
            delivered_ms: rec.time_ms,
            position: rec.position,
        };
        let copies = copy_keys(sg, &rec.added, &template, &digest, seq)?;
        let applied = encode(&Applied {
            position: rec.position,
            message_id: rec.message_id.clone(),
            time_ms: rec.time_ms,
            seq,
            added: rec.added.clone(),
            digest: rec.digest.clone(),
            stamp,
        });
        // Not synced here: the copy flushes the store before it counts on what it installed.
        let at = match &rec.body {
            Some(body) => Some(self.bodies.append(body)?),
            None => None,
        };
        let trees = (&t.messages, &t.ids, &t.applied, &t.body_at, &t.anchors);
        let installed = trees
            .transaction(|(messages, ids, applied_tree, body_at, anchors)| {
                if applied_tree.get(&key)?.is_some() {
                    return Ok(false);
                }
                for (id, message, copy) in &copies {
                    ids.insert(id.as_slice(), entry.as_slice())?;
                    messages.insert(message.as_slice(), copy.as_slice())?;
                }
                if let Some(at) = &at {
                    body_at.insert(key.as_slice(), &at.encode())?;
                }
                applied_tree.insert(key.as_slice(), applied.as_slice())?;
                if let Some((k, v)) = &anchor {
                    anchors.insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<MailboxError>>(true)
            })
            .map_err(from_tx);
        if !matches!(installed, Ok(true)) {
            at.iter().for_each(|at| self.bodies.release(at));
        }
        installed.map(|_| ())
    }
}

//! Byte layout of one log generation, shared by the writer, crash recovery and `verify`.
//!
//! ```text
//! header : magic "HUBRTXLG" | version u16 | generation u64 | epoch u64 | sg_len u16 | sg (UTF-8) | crc32 u32
//! record : len u32 | crc32(payload) u32 | payload                      (repeated, len < u32::MAX)
//! seal   : 0xFFFF_FFFF | crc32(count) u32 | count u32                  (closed generations only)
//! payload: message_id str | sender str | time_ms u64 | n u32 | n × recipient str | body bytes
//! str / bytes: len u32 | raw
//! ```
//! The epoch is that of the active node that wrote the generation: two nodes that wrote the same
//! generation number in different epochs wrote different logs, and a returning node finds out by
//! comparing the epochs in its headers with the active node's epoch history.
//! All integers are big-endian. The seal is what makes a truncation at a record boundary detectable:
//! a closed generation that does not end with a seal counting exactly its records is refused.

use super::LogRecord;

const MAGIC: &[u8; 8] = b"HUBRTXLG";
const VERSION: u16 = 2;
/// Length value that marks the seal instead of a record.
const SEAL_MARKER: u32 = u32::MAX;
/// Bytes of a record frame before its payload (length + checksum).
const FRAME_OVERHEAD: usize = 8;
/// Longest possible header: magic, version, generation, epoch, name length, name, checksum.
pub(super) const MAX_HEADER_LEN: u64 = 8 + 2 + 8 + 8 + 2 + u16::MAX as u64 + 4;
/// Size of the seal frame.
const SEAL_LEN: usize = 12;

/// A parsed, checksum-verified header.
pub(super) struct Header {
    pub storage_group: String,
    pub generation: u64,
    /// Epoch of the active node that wrote it.
    pub epoch: u64,
    /// Bytes the header occupies at the start of the file.
    pub len: usize,
}

/// Why `scan` stopped reading frames.
pub(super) enum End {
    /// Every byte was consumed by whole records.
    Clean,
    /// A well-formed seal claiming `count` records; `trailing` bytes follow it.
    Sealed { count: u32, trailing: usize },
    /// A frame that is truncated, fails its checksum or does not decode.
    Bad(String),
}

/// Result of reading the frames that follow a header.
pub(super) struct Scan {
    pub records: Vec<LogRecord>,
    /// Bytes spanned by the valid records (relative to the start of the scanned slice).
    pub valid: usize,
    pub end: End,
}

pub(super) fn encode_header(storage_group: &str, generation: u64, epoch: u64) -> Vec<u8> {
    let sg = storage_group.as_bytes();
    let mut out = Vec::with_capacity(MAGIC.len() + 24 + sg.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_be_bytes());
    out.extend_from_slice(&generation.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    // The caller validated the name length (`check_storage_group`), so it fits in a u16.
    out.extend_from_slice(&(sg.len() as u16).to_be_bytes());
    out.extend_from_slice(sg);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

pub(super) fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let mut cur = Cursor::new(bytes);
    let magic = cur
        .take(MAGIC.len())
        .ok_or("file shorter than the header")?;
    if magic != MAGIC {
        return Err("bad magic: not a hubrelay transaction log".into());
    }
    let version = cur.u16().ok_or("truncated header")?;
    let generation = cur.u64().ok_or("truncated header")?;
    let epoch = cur.u64().ok_or("truncated header")?;
    let sg_len = cur.u16().ok_or("truncated header")?;
    let sg = cur.take(usize::from(sg_len)).ok_or("truncated header")?;
    let covered = cur.pos;
    let crc = cur.u32().ok_or("truncated header")?;
    if crc != crc32fast::hash(&bytes[..covered]) {
        return Err("header checksum mismatch".into());
    }
    // Checked after the checksum so a flipped version byte reads as damage, not as a newer format.
    if version != VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    let storage_group = std::str::from_utf8(sg)
        .map_err(|_| "storage group name is not UTF-8")?
        .to_owned();
    Ok(Header {
        storage_group,
        generation,
        epoch,
        len: cur.pos,
    })
}

/// Frames one record; `Err(size)` if its payload cannot be framed (length would hit the seal marker).
pub(super) fn encode_frame(rec: &LogRecord) -> Result<Vec<u8>, usize> {
    let mut payload = Vec::with_capacity(64 + rec.body.len());
    put_bytes(&mut payload, rec.message_id.as_bytes())?;
    put_bytes(&mut payload, rec.sender.as_bytes())?;
    payload.extend_from_slice(&rec.time_ms.to_be_bytes());
    put_len(&mut payload, rec.recipients.len())?;
    for r in &rec.recipients {
        put_bytes(&mut payload, r.as_bytes())?;
    }
    put_bytes(&mut payload, &rec.body)?;
    let len = u32::try_from(payload.len())
        .ok()
        .filter(|&l| l != SEAL_MARKER)
        .ok_or(payload.len())?;
    let mut frame = Vec::with_capacity(FRAME_OVERHEAD + payload.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame)
}

pub(super) fn encode_seal(count: u32) -> [u8; SEAL_LEN] {
    let body = count.to_be_bytes();
    let mut seal = [0u8; SEAL_LEN];
    seal[..4].copy_from_slice(&SEAL_MARKER.to_be_bytes());
    seal[4..8].copy_from_slice(&crc32fast::hash(&body).to_be_bytes());
    seal[8..].copy_from_slice(&body);
    seal
}

/// Reads frames until the input ends, a seal appears, or a frame is bad. Never panics.
pub(super) fn scan(bytes: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut cur = Cursor::new(bytes);
    let mut valid = 0;
    let end = loop {
        let start = cur.pos;
        if cur.remaining() == 0 {
            break End::Clean;
        }
        let (Some(len), Some(crc)) = (cur.u32(), cur.u32()) else {
            break End::Bad(format!("truncated frame header at offset {start}"));
        };
        if len == SEAL_MARKER {
            let Some(count) = cur.array::<4>() else {
                break End::Bad(format!("truncated seal at offset {start}"));
            };
            if crc != crc32fast::hash(&count) {
                break End::Bad(format!("seal checksum mismatch at offset {start}"));
            }
            break End::Sealed {
                count: u32::from_be_bytes(count),
                trailing: cur.remaining(),
            };
        }
        let Some(payload) = usize::try_from(len).ok().and_then(|l| cur.take(l)) else {
            break End::Bad(format!(
                "record at offset {start} truncated ({len} bytes announced)"
            ));
        };
        if crc != crc32fast::hash(payload) {
            break End::Bad(format!("record at offset {start}: checksum mismatch"));
        }
        match decode_record(payload) {
            Some(rec) => records.push(rec),
            None => break End::Bad(format!("record at offset {start}: undecodable payload")),
        }
        valid = cur.pos;
    };
    Scan {
        records,
        valid,
        end,
    }
}

fn decode_record(payload: &[u8]) -> Option<LogRecord> {
    let mut cur = Cursor::new(payload);
    let message_id = cur.string()?;
    let sender = cur.string()?;
    let time_ms = cur.u64()?;
    let n = cur.u32()?;
    let mut recipients = Vec::new();
    for _ in 0..n {
        recipients.push(cur.string()?);
    }
    let body = cur.bytes()?.to_vec();
    (cur.remaining() == 0).then_some(LogRecord {
        message_id,
        recipients,
        sender,
        time_ms,
        body,
    })
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), usize> {
    let len32 = u32::try_from(len).map_err(|_| len)?;
    out.extend_from_slice(&len32.to_be_bytes());
    Ok(())
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) -> Result<(), usize> {
    put_len(out, bytes.len())?;
    out.extend_from_slice(bytes);
    Ok(())
}

/// Bounds-checked reader: every accessor returns `None` instead of reading past the end.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let out = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(out)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(usize::try_from(len).ok()?)
    }

    fn string(&mut self) -> Option<String> {
        std::str::from_utf8(self.bytes()?).ok().map(str::to_owned)
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use super::{encode_frame, encode_header, encode_seal, parse_header, scan, End, LogRecord};

    fn record() -> impl Strategy<Value = LogRecord> {
        (
            "[ -~]{0,24}",
            "[ -~]{0,24}",
            any::<u64>(),
            prop::collection::vec("[a-z]{1,8}@[a-z]{1,8}\\.test", 0..4),
            prop::collection::vec(any::<u8>(), 0..96),
        )
            .prop_map(
                |(message_id, sender, time_ms, recipients, body)| LogRecord {
                    message_id,
                    recipients,
                    sender,
                    time_ms,
                    body,
                },
            )
    }

    /// The frames of `records`, and where each one starts.
    fn frames(records: &[LogRecord]) -> (Vec<u8>, Vec<usize>) {
        let mut bytes = Vec::new();
        let mut starts = Vec::new();
        for r in records {
            starts.push(bytes.len());
            bytes.extend(encode_frame(r).expect("small records frame"));
        }
        (bytes, starts)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn scan_and_parse_header_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let s = scan(&bytes);
            prop_assert!(s.valid <= bytes.len());
            let _ = parse_header(&bytes);
        }

        #[test]
        fn records_round_trip_through_a_sealed_generation(
            records in prop::collection::vec(record(), 0..6),
        ) {
            let (mut bytes, _) = frames(&records);
            bytes.extend(encode_seal(records.len() as u32));
            let s = scan(&bytes);
            prop_assert_eq!(&s.records, &records);
            let sealed_with_count = matches!(s.end, End::Sealed { count, trailing: 0 } if count as usize == records.len());
            prop_assert!(sealed_with_count);
        }

        #[test]
        fn a_flipped_bit_is_never_accepted(
            records in prop::collection::vec(record(), 1..6),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let (mut bytes, starts) = frames(&records);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let damaged = starts.iter().rposition(|&s| s <= i).expect("the first frame starts at 0");
            let s = scan(&bytes);
            prop_assert_eq!(&s.records, &records[..damaged], "only the frames before the damage are read");
            prop_assert!(matches!(s.end, End::Bad(_)));
        }

        #[test]
        fn a_torn_record_is_never_accepted(
            records in prop::collection::vec(record(), 1..6),
            at in any::<prop::sample::Index>(),
        ) {
            let (bytes, starts) = frames(&records);
            let last = *starts.last().expect("one record at least");
            let cut = last + 1 + at.index(bytes.len() - last - 1);
            let s = scan(&bytes[..cut]);
            prop_assert_eq!(&s.records, &records[..records.len() - 1]);
            prop_assert!(matches!(s.end, End::Bad(_)));
        }

        #[test]
        fn a_damaged_header_is_refused(
            sg in "[A-Za-z0-9]{1,16}",
            generation in any::<u64>(),
            epoch in any::<u64>(),
            at in any::<prop::sample::Index>(),
            bit in 0u8..8,
        ) {
            let mut header = encode_header(&sg, generation, epoch);
            let parsed = parse_header(&header).expect("a fresh header parses");
            prop_assert_eq!((parsed.storage_group, parsed.generation, parsed.epoch), (sg, generation, epoch));
            let i = at.index(header.len());
            header[i] ^= 1 << bit;
            prop_assert!(parse_header(&header).is_err());
        }
    }
}

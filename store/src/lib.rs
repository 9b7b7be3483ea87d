//! Persistence for hubrelay, on sled and plain files.
//!
//! - [`hub`]: a hub's delivery queue, the shared message bodies, the transport dumpster (per storage
//!   group, bounded by size and age, with incremental statistics) and resubmission requests.
//! - `segments`: message bodies in append-only, checksummed segment files beside sled, written once
//!   and compacted once mostly unused (the hub's bodies).
//! - [`txlog`]: a storage group's write-ahead transaction log: numbered, checksummed generations, the
//!   unit of log shipping.
//! - [`mailbox`]: a mailbox node's store, deduplicating by Message-ID, applied from the log.
//!
//! Time is milliseconds since the Unix epoch, passed in by the caller, so every bound is testable
//! without a clock.

mod db;
pub mod hub;
pub mod mailbox;
mod pieces;
mod segments;
pub mod txlog;

pub use segments::{Compaction, SegmentError, SegmentUsage};

//! What a node does about its disk: keep `min_free_space` free, and come back by itself after
//! a disk error.
//!
//! Every round: the store is probed and, after a disk error, opened again and refilled from the
//! logs (an active node's writers replay before their next write, a passive's copies replay
//! before they copy on). While the disk is short of its reserve an active node refuses new mail
//! with 452 4.3.1 ([`super::inbound`]) and, after [`MOVE_AFTER`], hands its databases to a
//! passive that has room by a scheduled move (no loss, no resubmission); a log that cannot be
//! written is handed over the same way. A passive short of space suspends its copies itself and
//! resumes them once there is room.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use store::mailbox::Recovery;
use tracing::{error, info, warn};

use super::MailboxNode;
use crate::clock::mono_ms;
use crate::cluster::machine::Role;

/// How often the disk is looked at.
pub const DISK_EVERY: Duration = Duration::from_millis(500);
/// How long an active node refuses for want of space (or cannot write a log) before it hands
/// over: long enough not to move for a moment's spike, short next to the 10 s after which a
/// failed log gives the databases up the lossy way.
const MOVE_AFTER: Duration = Duration::from_secs(2);
/// Between two attempts to move away for the disk's sake.
const MOVE_RETRY: Duration = Duration::from_secs(10);

/// Since when the node has been short of room to serve, and its last attempt to hand over.
#[derive(Default)]
pub struct DiskWatch {
    inner: Mutex<Watch>,
}

#[derive(Default)]
struct Watch {
    short_since: Option<Instant>,
    last_move: Option<Instant>,
    store_failing: bool,
}

impl MailboxNode {
    /// One round: recover the store, suspend or resume copies, hand over if the active cannot
    /// go on writing.
    pub async fn disk_round(self: &Arc<Self>) {
        self.recover_store().await;
        let low = self.space.low();
        let active = *self.machine().role() == Role::Active;
        for cs in self.copies().values_mut() {
            let reason = low
                .as_ref()
                .filter(|_| !active)
                .map(|r| format!("suspended by the node: disk full: {}", r.describe()));
            if cs.disk_full.is_some() != reason.is_some() {
                match &reason {
                    Some(why) => {
                        warn!(node = %self.name, "{why}; the copy resumes once there is room")
                    }
                    None => info!(node = %self.name, "disk space back; copy resumed"),
                }
            }
            cs.disk_full = reason;
        }
        let log_failing = self
            .writers()
            .iter()
            .find_map(|(sg, w)| w.failure().map(|why| format!("{sg}: {why}")));
        let why = match (&low, log_failing) {
            _ if !active => None,
            (Some(r), _) => Some(format!("disk full: {}", r.describe())),
            (None, Some(f)) => Some(format!("transaction log cannot be written: {f}")),
            (None, None) => None,
        };
        let due = {
            let mut w = self.disk.inner.lock().unwrap_or_else(|p| p.into_inner());
            match why {
                None => {
                    w.short_since = None;
                    None
                }
                Some(why) => {
                    let since = *w.short_since.get_or_insert_with(Instant::now);
                    let retry = w.last_move.is_none_or(|t| t.elapsed() >= MOVE_RETRY);
                    if since.elapsed() >= MOVE_AFTER && retry {
                        w.last_move = Some(Instant::now());
                        Some(why)
                    } else {
                        None
                    }
                }
            }
        };
        if let Some(why) = due {
            self.move_for_disk(why).await;
        }
    }

    /// Hands the databases to the peer by a scheduled move, if it is ready and has room.
    async fn move_for_disk(self: &Arc<Self>, why: String) {
        if !self.machine().peer_has_room(mono_ms()) {
            warn!(node = %self.name, reason = %why, peer = %self.peer.name, "cannot hand the databases over: the other node is not a healthy passive with room; refusing new mail until there is room");
            return;
        }
        warn!(node = %self.name, reason = %why, to = %self.peer.name, "handing the databases over by a scheduled move");
        match self.move_to_peer().await {
            Ok(_) => {
                info!(node = %self.name, to = %self.peer.name, "databases handed over for want of disk")
            }
            Err(e) => warn!(node = %self.name, error = %e, "the move for want of disk failed"),
        }
    }

    /// Probes the store and, after a disk error, opens it again and has it refilled from the
    /// logs before anything is written or copied on.
    async fn recover_store(self: &Arc<Self>) {
        let store = self.store.clone();
        let outcome = match tokio::task::spawn_blocking(move || store.recover()).await {
            Ok(r) => r,
            Err(e) => {
                warn!(node = %self.name, error = %e, "store recovery task failed");
                return;
            }
        };
        let was_failing = {
            let mut w = self.disk.inner.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut w.store_failing, outcome.is_err())
        };
        match outcome {
            Ok(Recovery::Healthy) => {}
            Ok(Recovery::Reopened) => {
                for (_, w) in self.writers() {
                    w.replay();
                }
                for cs in self.copies().values_mut() {
                    cs.io_failed = true;
                }
            }
            Err(e) if !was_failing => {
                error!(node = %self.name, error = %e, "mailbox store cannot be written; retried every round")
            }
            Err(_) => {}
        }
    }
}

//! The failover decisions of one node, as a state machine free of I/O.
//!
//! Inputs are what the driver observed (a tick of the clock, the peer's heartbeat, the outcome of a
//! witness operation, the copy's progress); outputs are [`Action`]s for the driver to carry out. Time
//! is passed in, so every schedule of faults can be replayed in a test.
//!
//! The rules (node and file share majority, as in Exchange 2007 CCR):
//! - a node may be active only while it sees its peer *and the peer sees it*, or while it holds the
//!   witness lease (with a safety margin before the lease's expiry, for clock rates and tick delay;
//!   the witness times leases on each node's own monotonic clock, [`super::witness`]);
//! - a passive node that has lost its peer takes the lease only once it is free or expired, then mounts
//!   only if the logs it is missing (LastLogGenerated last reported by the lost node − LastLogCopied)
//!   are within AutoDatabaseMountDial; otherwise it stays dismounted and says why;
//! - when both nodes see each other and neither is active, the one that was active most recently
//!   (highest epoch; then config order) becomes active;
//! - an active node that sees an active peer of a higher epoch steps down.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Milliseconds on the node's own monotonic clock: no time here is ever compared with another host's.
pub type Millis = u64;

/// How many of its own heartbeats a node remembers for echoes: a few seconds' worth.
const SENT_KEPT: usize = 64;

/// Timings of the cluster; the defaults give detection-to-mount in about four seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A peer not heard from for this long is lost.
    pub peer_timeout: Millis,
    /// Length of a witness lease.
    pub lease_duration: Millis,
    /// A holder stops counting on its lease this long before it expires.
    pub lease_safety: Millis,
    /// Renew the lease when less than this is left.
    pub renew_before: Millis,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            peer_timeout: 1_500,
            lease_duration: 3_000,
            lease_safety: 1_000,
            renew_before: 2_500,
        }
    }
}

/// What a node is doing for its CMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Holds the databases and accepts deliveries.
    Active,
    /// Copies and replays the active node's logs.
    Passive,
    /// Lost its peer but may not mount (too many logs missing, or no quorum); the reason says which.
    Dismounted(String),
}

/// What each node tells the other, several times a second.
///
/// A heartbeat proves the sender alive only after a heartbeat of the receiver's that it echoes:
/// the receiver counts the peer as seen at the time *it sent* the echoed one, never at the time
/// this one arrived. So a heartbeat that sat in a socket buffer while its receiver was frozen, or
/// was delayed or reordered on the way, cannot restore a quorum that has expired meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The sender.
    pub node: String,
    /// The sender's process instance (a restart starts a new sequence).
    pub instance: u64,
    /// The sender's sequence number; older or repeated ones are ignored.
    pub seq: u64,
    /// The newest sequence number the sender has received from the receiver (0: none yet).
    pub echo: u64,
    /// Its role.
    pub role: Role,
    /// The epoch of its most recent activity (bumped at every mount).
    pub epoch: u64,
    /// Whether it was the active node when it last held a role (decides who resumes).
    pub was_active: bool,
    /// Whether it currently sees the receiver.
    pub sees_peer: bool,
    /// Per storage group, its LastLogGenerated (meaningful while it is active).
    pub last_log_generated: BTreeMap<String, u64>,
    /// Its disk is short of `min_free_space`: moving the databases to it would only move the
    /// problem. Set by the node, not the machine; absent from older nodes (false).
    #[serde(default)]
    pub disk_full: bool,
}

/// The witness lease as last read or written. Besides the vote, the lease is the "note board" of
/// the CMS: its holder records its epoch and LastLogGenerated there, so a node that comes back after
/// both were down still knows how far the lost node had got.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LeaseView {
    /// Who holds it.
    pub holder: String,
    /// On this node's own clock: until when it may count on the lease if it is its own (before the
    /// safety margin), or from when it may take the other node's, should that not be renewed.
    pub expires_ms: Millis,
    /// The holder's epoch.
    pub epoch: u64,
    /// The holder's LastLogGenerated per storage group when it last wrote the lease.
    pub generated: BTreeMap<String, u64>,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Take or renew the witness lease. The witness records the highest of this epoch and the one
    /// it holds; an active node also writes its LastLogGenerated as the note, anyone else carries
    /// the previous note over.
    AcquireLease(u64),
    /// Give the lease up.
    ReleaseLease,
    /// Replay everything copied and mount the databases as active at `epoch`. `missing` holds the
    /// logs known lost per storage group. A failover (the peer was lost, not a scheduled move) may
    /// have lost more than the peer last reported — its newest logs can be younger than its last
    /// heartbeat — so every failover mount asks the hubs to resubmit; dedup makes that harmless.
    Mount {
        /// The new epoch.
        epoch: u64,
        /// Logs known lost per storage group.
        missing: BTreeMap<String, u64>,
        /// True when the peer was lost (automatic failover), false for a move or an agreed start.
        failover: bool,
    },
    /// Stop accepting deliveries and become passive (copy from the peer).
    Demote,
}

/// The persisted part of a node's cluster state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// The epoch of this node's most recent activity (0: never active).
    pub epoch: u64,
    /// Whether the node was active when it stopped.
    pub was_active: bool,
    /// LastLogGenerated the peer last reported while active, so a restarted passive still knows how
    /// many logs a failover would lose.
    pub peer_generated: BTreeMap<String, u64>,
}

/// The state machine of one node.
#[derive(Debug, Clone)]
pub struct Machine {
    me: String,
    /// Whether this node is first in config order (wins ties).
    first: bool,
    timing: Timing,
    max_lost_logs: u64,
    role: Role,
    epoch: u64,
    was_active: bool,
    started_ms: Millis,
    /// The peer's newest heartbeat, with the time this node sent the heartbeat it echoed.
    peer: Option<(Millis, Heartbeat)>,
    instance: u64,
    /// Sequence number of this node's last heartbeat.
    seq: u64,
    /// When this node sent its recent heartbeats, oldest first (bounded).
    sent: std::collections::VecDeque<(u64, Millis)>,
    /// The newest (instance, seq) received from the peer.
    peer_seq: Option<(u64, u64)>,
    /// LastLogGenerated the peer reported the last time it was active.
    peer_generated: BTreeMap<String, u64>,
    lease: Option<LeaseView>,
    witness_ok: bool,
    copied: BTreeMap<String, u64>,
    /// Storage groups whose local copy is incomplete (a reseed under way or cut short): its
    /// LastLogCopied says nothing of what it holds, so it never mounts by itself.
    incomplete: std::collections::BTreeSet<String>,
    /// This node's own LastLogGenerated while active (written to the lease note).
    generated: BTreeMap<String, u64>,
    /// A later epoch than ours was active while we were away: our logs may have diverged.
    superseded: Option<u64>,
    /// Set by a scheduled move: do not take over by preference until the peer is active.
    yielding: bool,
    /// A scheduled move away from this active node has released the lease: do not renew it.
    handing_over: bool,
    /// This node's databases failed while it was active: it stays dismounted, and its peer
    /// takes over, until it follows an active peer again.
    db_failed: bool,
    /// The administrator accepted a lossy mount (Restore-StorageGroupCopy): the next mount
    /// after a failover ignores AutoDatabaseMountDial. Cleared by that mount or by following
    /// an active peer.
    restore: bool,
}

impl Machine {
    /// A node starting (or restarting) with its persisted state; it starts passive and earns the
    /// active role through the rules. `instance` must differ from every earlier run's (random).
    pub fn new(
        me: &str,
        first: bool,
        persisted: Persisted,
        timing: Timing,
        max_lost_logs: u64,
        now: Millis,
        instance: u64,
    ) -> Machine {
        Machine {
            me: me.to_string(),
            first,
            timing,
            max_lost_logs,
            role: Role::Passive,
            epoch: persisted.epoch,
            was_active: persisted.was_active,
            started_ms: now,
            peer: None,
            instance,
            seq: 0,
            sent: std::collections::VecDeque::new(),
            peer_seq: None,
            peer_generated: persisted.peer_generated,
            lease: None,
            witness_ok: true,
            copied: BTreeMap::new(),
            incomplete: std::collections::BTreeSet::new(),
            generated: BTreeMap::new(),
            superseded: None,
            yielding: false,
            handing_over: false,
            db_failed: false,
            restore: false,
        }
    }

    /// The current role.
    pub fn role(&self) -> &Role {
        &self.role
    }

    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The highest epoch this node knows of: its own, the peer's last heartbeat, the lease's. A
    /// node answering with a lower one has lost its authority since.
    pub fn highest_known_epoch(&self) -> u64 {
        let peer = self.peer.as_ref().map(|(_, hb)| hb.epoch).unwrap_or(0);
        let lease = self.lease.as_ref().map(|l| l.epoch).unwrap_or(0);
        self.epoch.max(peer).max(lease)
    }

    /// What to persist.
    pub fn persisted(&self) -> Persisted {
        Persisted {
            epoch: self.epoch,
            was_active: self.was_active,
            peer_generated: self.peer_generated.clone(),
        }
    }

    /// Whether the witness answered the last operation.
    pub fn witness_ok(&self) -> bool {
        self.witness_ok
    }

    /// The lease as last seen.
    pub fn lease(&self) -> Option<&LeaseView> {
        self.lease.as_ref()
    }

    /// Whether the peer's heartbeat is fresh at `now`.
    pub fn sees_peer(&self, now: Millis) -> bool {
        self.peer
            .as_ref()
            .is_some_and(|(at, _)| now.saturating_sub(*at) < self.timing.peer_timeout)
    }

    /// Whether the peer's fresh heartbeat says it is active: the node a reseed copies from.
    pub fn peer_active(&self, now: Millis) -> bool {
        self.sees_peer(now)
            && self
                .peer
                .as_ref()
                .is_some_and(|(_, hb)| hb.role == Role::Active)
    }

    fn mutual(&self, now: Millis) -> bool {
        self.sees_peer(now) && self.peer.as_ref().is_some_and(|(_, hb)| hb.sees_peer)
    }

    fn holds_lease(&self, now: Millis) -> bool {
        self.lease
            .as_ref()
            .is_some_and(|l| l.holder == self.me && now + self.timing.lease_safety < l.expires_ms)
    }

    /// The authority to be active right now: quorum with the peer, or the witness lease. The SMTP
    /// path asks this on every message, so a node frozen and resumed refuses at once.
    pub fn may_serve(&self, now: Millis) -> bool {
        self.role == Role::Active && (self.mutual(now) || self.holds_lease(now))
    }

    /// What this node tells its peer (recorded as sent at `now`).
    pub fn heartbeat(
        &mut self,
        now: Millis,
        last_log_generated: BTreeMap<String, u64>,
    ) -> Heartbeat {
        self.seq += 1;
        self.sent.push_back((self.seq, now));
        while self.sent.len() > SENT_KEPT {
            self.sent.pop_front();
        }
        Heartbeat {
            node: self.me.clone(),
            instance: self.instance,
            seq: self.seq,
            echo: self.peer_seq.map(|(_, s)| s).unwrap_or(0),
            role: self.role.clone(),
            epoch: self.epoch,
            was_active: self.was_active,
            sees_peer: self.sees_peer(now),
            last_log_generated,
            disk_full: false,
        }
    }

    /// The peer's heartbeat arrived. Stale ones (an older sequence of the same instance) are
    /// ignored; one that echoes no heartbeat of ours still in memory only lets the peer learn
    /// our sequence (its next one will echo it).
    pub fn on_heartbeat(&mut self, now: Millis, hb: Heartbeat) -> Vec<Action> {
        if self
            .peer_seq
            .is_some_and(|(instance, seq)| instance == hb.instance && hb.seq <= seq)
        {
            return Vec::new();
        }
        self.peer_seq = Some((hb.instance, hb.seq));
        let Some(at) = self
            .sent
            .iter()
            .find(|(seq, _)| *seq == hb.echo)
            .map(|(_, at)| *at)
        else {
            return self.step(now);
        };
        // A later heartbeat of the peer was also sent after the one it answered before.
        let at = self.peer.as_ref().map_or(at, |(seen, _)| at.max(*seen));
        if hb.role == Role::Active {
            self.peer_generated = hb.last_log_generated.clone();
            self.yielding = false;
            self.superseded = None;
        }
        self.peer = Some((at, hb));
        self.step(now)
    }

    /// The outcome of an [`Action::AcquireLease`] or a read of the witness: `Some` lease in force,
    /// or `None` when the witness could not be reached.
    pub fn on_lease(&mut self, now: Millis, lease: Option<LeaseView>) -> Vec<Action> {
        self.witness_ok = lease.is_some();
        if let Some(l) = lease {
            // The lease keeps the highest epoch ever active and that node's note: a later epoch
            // than ours tells how far the other node got, and that our own logs may have diverged.
            if l.epoch > self.epoch {
                for (sg, n) in &l.generated {
                    let e = self.peer_generated.entry(sg.clone()).or_insert(0);
                    *e = (*e).max(*n);
                }
                if self.was_active {
                    self.superseded = Some(l.epoch);
                }
            }
            self.lease = Some(l);
        }
        self.step(now)
    }

    /// The lease was released (the driver did it).
    pub fn on_released(&mut self) {
        if self.lease.as_ref().is_some_and(|l| l.holder == self.me) {
            self.lease = None;
        }
    }

    /// The local copy's LastLogCopied per storage group.
    pub fn on_copied(&mut self, copied: BTreeMap<String, u64>) {
        self.copied = copied;
    }

    /// The storage groups whose local copy is incomplete (being reseeded, or a reseed was cut
    /// short): no automatic mount until they are whole again; a restore still may.
    pub fn on_incomplete(&mut self, incomplete: std::collections::BTreeSet<String>) {
        self.incomplete = incomplete;
    }

    /// This node's own LastLogGenerated (while active); a change is noted on the witness.
    pub fn on_generated(&mut self, generated: BTreeMap<String, u64>) {
        self.generated = generated;
    }

    /// The generated counts to write into the lease note.
    pub fn generated(&self) -> &BTreeMap<String, u64> {
        &self.generated
    }

    /// A scheduled move away from this (active) node: step down now, release the lease, and do not
    /// take the role back by preference until the target is active.
    pub fn move_away(&mut self) -> Vec<Action> {
        self.handing_over = false;
        if self.role != Role::Active {
            return Vec::new();
        }
        self.role = Role::Passive;
        self.was_active = false;
        self.yielding = true;
        vec![Action::Demote, Action::ReleaseLease]
    }

    /// The active node's databases failed (a log that cannot be written or reopened): step down
    /// and stay dismounted with the reason, so the peer takes over as after a failover (with the
    /// resubmission that implies), and release the lease for it.
    pub fn database_failed(&mut self, reason: String) -> Vec<Action> {
        if self.role != Role::Active {
            return Vec::new();
        }
        self.db_failed = true;
        self.was_active = false;
        self.handing_over = false;
        self.role = Role::Dismounted(format!("database failed: {reason}"));
        vec![Action::Demote, Action::ReleaseLease]
    }

    /// A scheduled move away from this active node begins: it is about to release the witness
    /// lease for the target to take, so it must not renew it meanwhile.
    pub fn begin_handover(&mut self) {
        self.handing_over = true;
    }

    /// The move did not happen and this node holds the lease again (`lease`): serve on.
    pub fn end_handover(&mut self, lease: LeaseView) {
        self.handing_over = false;
        self.lease = Some(lease);
    }

    /// Whether the peer is seen, sees this node and is passive: ready to take over by a move.
    pub fn peer_healthy(&self, now: Millis) -> bool {
        self.mutual(now)
            && self
                .peer
                .as_ref()
                .is_some_and(|(_, hb)| hb.role == Role::Passive)
    }

    /// Whether the peer, ready to take over by a move, also has room on its disk: where an active
    /// node short of space hands its databases.
    pub fn peer_has_room(&self, now: Millis) -> bool {
        self.peer_healthy(now) && self.peer.as_ref().is_some_and(|(_, hb)| !hb.disk_full)
    }

    /// A scheduled move to this (passive) node, after it copied everything and took the witness
    /// lease the old active released: mount losslessly. The lease decides the move, so an old
    /// active that gave up and took the lease back is never joined by a second active.
    pub fn take_over(&mut self, now: Millis, lease: LeaseView) -> Result<Vec<Action>, String> {
        if self.role == Role::Active {
            return Ok(Vec::new());
        }
        self.lease = Some(lease);
        if !self.holds_lease(now) {
            return Err(
                "the witness lease is not this node's: the old active kept its role".into(),
            );
        }
        Ok(self.activate(BTreeMap::new(), false))
    }

    /// Restore-StorageGroupCopy: the administrator accepts losing what the lost active node did
    /// not ship, so the next mount after a failover may miss more logs than the dial allows
    /// (the dumpster resubmission that follows any lossy mount brings that mail back). It still
    /// needs the witness lease like every activation, and it is refused when it cannot be the
    /// deliberate recovery of a lost active node.
    pub fn restore(&mut self, now: Millis) -> Result<(), String> {
        if self.role == Role::Active {
            return Err(format!("{} is already active", self.me));
        }
        if self.peer_active(now) {
            return Err("the other node is active and reachable: nothing is lost to restore; use `hubrelay move` for a lossless switchover".into());
        }
        if let Some(epoch) = self.superseded {
            return Err(format!(
                "this copy may have diverged: the other node was active after it (epoch {epoch}); bring that node back, or reseed this copy from it (`hubrelay copy update`)"
            ));
        }
        if self.db_failed {
            return Err("this node's own databases failed while it was active".into());
        }
        self.restore = true;
        Ok(())
    }

    /// The clock advanced.
    pub fn on_tick(&mut self, now: Millis) -> Vec<Action> {
        self.step(now)
    }

    fn activate(&mut self, missing: BTreeMap<String, u64>, failover: bool) -> Vec<Action> {
        let peer_epoch = self.peer.as_ref().map(|(_, hb)| hb.epoch).unwrap_or(0);
        let lease_epoch = self.lease.as_ref().map(|l| l.epoch).unwrap_or(0);
        self.epoch = self.epoch.max(peer_epoch).max(lease_epoch) + 1;
        self.role = Role::Active;
        self.was_active = true;
        vec![
            Action::Mount {
                epoch: self.epoch,
                missing,
                failover,
            },
            Action::AcquireLease(self.epoch),
        ]
    }

    /// Whether the peer is gone long enough to fail over. Twice the heartbeat timeout: the peer's
    /// own view of "we see each other" (the quorum an active without the lease relies on) expires
    /// one timeout after our last heartbeat reached it, so it has stepped down before we take over.
    fn peer_lost(&self, now: Millis) -> bool {
        match &self.peer {
            Some((at, _)) => now.saturating_sub(*at) >= 2 * self.timing.peer_timeout,
            // Never heard from it: a node that has never been active waits one timeout for the
            // peer to show up; the first node of a fresh cluster, or a node that was active, may
            // try the witness at once (the lease stops it if the peer is alive and active).
            None => {
                self.first && self.epoch == 0
                    || self.was_active
                    || now.saturating_sub(self.started_ms) >= self.timing.peer_timeout
            }
        }
    }

    fn step(&mut self, now: Millis) -> Vec<Action> {
        match self.role {
            Role::Active => self.step_active(now),
            _ => self.step_standby(now),
        }
    }

    fn step_active(&mut self, now: Millis) -> Vec<Action> {
        if let Some((_, hb)) = &self.peer {
            if self.sees_peer(now)
                && hb.role == Role::Active
                && (hb.epoch, !self.first) > (self.epoch, self.first)
            {
                self.role = Role::Passive;
                self.was_active = false;
                return vec![Action::Demote];
            }
        }
        if !self.mutual(now) && !self.holds_lease(now) {
            self.role = Role::Passive;
            return vec![Action::Demote];
        }
        let renew = match &self.lease {
            _ if self.handing_over => false,
            Some(l) if l.holder == self.me => {
                l.expires_ms.saturating_sub(now) < self.timing.renew_before
                    || l.generated != self.generated
            }
            // Someone else's lease: ours is the role by quorum; take it back when it is free.
            Some(l) => now >= l.expires_ms,
            None => true,
        };
        if renew {
            vec![Action::AcquireLease(self.epoch)]
        } else {
            Vec::new()
        }
    }

    fn step_standby(&mut self, now: Millis) -> Vec<Action> {
        if self.peer_active(now) {
            // Following an active peer: this node's data is now a copy of the peer's history.
            self.role = Role::Passive;
            self.was_active = false;
            self.db_failed = false;
            self.restore = false;
            // Let the active node have the witness.
            return if self.lease.as_ref().is_some_and(|l| l.holder == self.me) {
                vec![Action::ReleaseLease]
            } else {
                Vec::new()
            };
        }
        let peer_dismounted = self
            .peer
            .as_ref()
            .is_some_and(|(_, hb)| matches!(hb.role, Role::Dismounted(_)));
        if self.mutual(now) && peer_dismounted && self.role == Role::Passive && !self.db_failed {
            // The peer is up but cannot serve (its databases failed, or its copy may have
            // diverged): take over as after a failover, within the dial, asking for resubmission.
            return if self.holds_lease(now) {
                self.mount_after_failover()
            } else {
                self.try_lease(
                    now,
                    "waiting for the witness lease to take over from a dismounted peer",
                )
            };
        }
        if self.mutual(now) {
            // Both up, neither active: the preferred node takes the role, and like any activation
            // it needs the lease first, so a stale view can never make two actives.
            if !self.preferred_over_peer()
                || self.yielding
                || self.db_failed
                || !self.incomplete.is_empty()
            {
                return Vec::new();
            }
            return if self.holds_lease(now) {
                self.activate(BTreeMap::new(), false)
            } else {
                self.try_lease(now, "waiting for the witness lease to take the active role")
            };
        }
        if !self.peer_lost(now) {
            return Vec::new();
        }
        if !self.holds_lease(now) {
            return self.try_lease(
                now,
                "the peer is lost and the witness lease is held by it; waiting",
            );
        }
        if let Some(epoch) = self.superseded {
            self.dismount(format!(
                "not mounted: the other node was active after this one (epoch {epoch}); this copy may have diverged, so it waits for the other node"
            ));
            return Vec::new();
        }
        self.mount_after_failover()
    }

    /// Mounts after the active node was lost or could not serve, if the logs known missing are
    /// within the dial; otherwise stays dismounted and says why.
    fn mount_after_failover(&mut self) -> Vec<Action> {
        let missing: BTreeMap<String, u64> = self
            .peer_generated
            .iter()
            .map(|(sg, generated)| {
                let copied = self.copied.get(sg).copied().unwrap_or(0);
                (sg.clone(), generated.saturating_sub(copied))
            })
            .collect();
        let worst = missing.values().copied().max().unwrap_or(0);
        if !self.incomplete.is_empty() && !self.restore {
            let sgs: Vec<&str> = self.incomplete.iter().map(String::as_str).collect();
            self.dismount(format!(
                "not mounted after failover: the copy of {} is incomplete (a reseed is under way or was cut short); `hubrelay copy restore` mounts it anyway, and the hubs resubmit what their dumpsters hold",
                sgs.join(", ")
            ));
            return Vec::new();
        }
        if worst > self.max_lost_logs && !self.restore {
            let detail: Vec<String> = missing
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(sg, n)| format!("{sg} misses {n}"))
                .collect();
            self.dismount(format!(
                "not mounted after failover: {worst} log(s) lost ({}), AutoDatabaseMountDial allows {}",
                detail.join(", "),
                self.max_lost_logs
            ));
            return Vec::new();
        }
        self.restore = false;
        // Nothing can be lost if no epoch was ever active (a brand-new CMS starting).
        let had_history = self.epoch > 0
            || self.was_active
            || !self.peer_generated.is_empty()
            || self.lease.as_ref().is_some_and(|l| l.epoch > 0);
        self.activate(missing, had_history)
    }

    /// Asks for the lease when it may be free; otherwise records why this node waits.
    fn try_lease(&mut self, now: Millis, waiting: &str) -> Vec<Action> {
        if !self.witness_ok && !self.sees_peer(now) {
            self.dismount("no quorum: the peer is lost and the witness is unreachable".into());
            return vec![Action::AcquireLease(self.epoch)];
        }
        let free = match &self.lease {
            None => true,
            Some(l) => l.holder == self.me || now >= l.expires_ms,
        };
        if free || !self.witness_ok {
            vec![Action::AcquireLease(self.epoch)]
        } else {
            if !self.sees_peer(now) {
                self.dismount(waiting.to_string());
            }
            Vec::new()
        }
    }

    fn dismount(&mut self, reason: String) {
        self.role = Role::Dismounted(reason);
    }

    /// Who should be active when both nodes see each other and neither is: the most recent active
    /// (epoch, then having been active), then config order.
    fn preferred_over_peer(&self) -> bool {
        let Some((_, hb)) = &self.peer else {
            return false;
        };
        (self.epoch, self.was_active, self.first) > (hb.epoch, hb.was_active, !self.first)
    }
}

#[cfg(test)]
mod tests;

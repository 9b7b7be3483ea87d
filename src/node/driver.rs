//! The node's cluster driver: exchanges heartbeats with the peer, feeds the state machine its
//! observations (time, heartbeats, witness outcomes, copy progress) and carries out its actions.
//! Copying and resubmission requests run in their own loops so a slow log transfer never delays a
//! heartbeat.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::MailboxNode;
use crate::clock::mono_ms;
use crate::cluster::machine::{Action, Heartbeat, LeaseView, Role};
use crate::cluster::witness::{Seen, WitnessError};

/// How often the driver ticks and sends a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(200);
/// How often a passive node pulls closed logs.
const COPY_EVERY: Duration = Duration::from_millis(200);
/// How often outstanding dumpster requests are retried.
const RESUBMIT_EVERY: Duration = Duration::from_secs(2);
/// How long a storage group's log may stay failed (unwritable, not reopenable) before the active
/// node gives the databases up to a healthy passive.
const DATABASE_FAILED_AFTER: Duration = Duration::from_secs(10);
/// How often the store is checkpointed and logs behind it are deleted.
const TRUNCATE_EVERY: Duration = Duration::from_secs(5);
/// How often dedup keys past their retention are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// How often body segments no record uses any more are given back (after a reseed cleared a
/// storage group, or a discard), and mostly unused ones compacted.
const COMPACT_EVERY: Duration = Duration::from_secs(5);

/// Starts the driver, copy and resubmission loops of `node`.
pub fn spawn(node: Arc<MailboxNode>, shutdown: CancellationToken) {
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { every(HEARTBEAT_EVERY, &stop, || n.drive()).await });
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { every(HEARTBEAT_EVERY, &stop, || n.send_heartbeat()).await });
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        every(COPY_EVERY, &stop, || async {
            // Not gated on heartbeats: the peer's log status says whether it is active (and in
            // which epoch), so a copy keeps up while heartbeats are late.
            let active = *n.machine().role() == Role::Active;
            if !active {
                n.copy_round().await;
            }
        })
        .await
    });
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { every(SWEEP_EVERY, &stop, || n.sweep_dedup()).await });
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { every(COMPACT_EVERY, &stop, || n.compact_bodies()).await });
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { every(TRUNCATE_EVERY, &stop, || n.truncate_round()).await });
    let n = node.clone();
    let stop = shutdown.clone();
    tokio::spawn(async move { every(super::disk::DISK_EVERY, &stop, || n.disk_round()).await });
    tokio::spawn(async move { every(RESUBMIT_EVERY, &shutdown, || node.resubmit_round()).await });
}

async fn every<F, Fut>(period: Duration, stop: &CancellationToken, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => f().await,
            _ = stop.cancelled() => return,
        }
    }
}

impl MailboxNode {
    /// Removes dedup keys past their retention (on a blocking thread: it scans the index).
    async fn sweep_dedup(self: &Arc<Self>) {
        let store = self.store.clone();
        let sgs = self.storage_groups();
        let margin = crate::clock::window::MARGIN_MS;
        match tokio::task::spawn_blocking(move || store.sweep_dedup(&sgs, margin)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => {
                info!(node = %self.name, removed = n, "dedup keys past their retention swept")
            }
            Ok(Err(e)) => warn!(node = %self.name, error = %e, "dedup sweep failed"),
            Err(e) => warn!(node = %self.name, error = %e, "dedup sweep task failed"),
        }
    }

    /// One compaction round of the store's body segments (on a blocking thread).
    async fn compact_bodies(self: &Arc<Self>) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.compact_bodies()).await {
            Ok(Ok(done)) if done.removed > 0 => debug!(
                node = %self.name, moved = done.moved, segments = done.removed,
                bytes = done.freed, "body segments given back"
            ),
            Ok(Ok(_)) => {}
            // Failed on a disk error: the store's recovery reports and reopens it.
            Ok(Err(store::mailbox::MailboxError::Closed { .. })) => {}
            Ok(Err(e)) => warn!(node = %self.name, error = %e, "body compaction failed"),
            Err(e) => warn!(node = %self.name, error = %e, "body compaction task failed"),
        }
    }

    /// Our heartbeat for the peer.
    pub fn own_heartbeat(&self) -> Heartbeat {
        let generated = self.generated();
        let mut hb = self.machine().heartbeat(mono_ms(), generated);
        hb.disk_full = self.space.low().is_some();
        hb
    }

    /// The peer's heartbeat arrived (through our admin API or as the answer to ours).
    ///
    /// Never waits for the cluster actions it leads to: a heartbeat that waited behind a witness
    /// operation against an unreachable witness (up to 2 s) or a truncation round would not be
    /// sent, or answered, within the peer timeout, and two healthy nodes would lose each other
    /// (campaign seed 41, `cut-active-witness`: the active remounted in a new epoch). Lease
    /// renewals are left to the driver's tick, which asks for them itself; a demotion or a mount
    /// runs in its own task.
    pub async fn on_peer_heartbeat(self: &Arc<Self>, hb: Heartbeat) {
        let actions: Vec<Action> = self
            .machine()
            .on_heartbeat(mono_ms(), hb)
            .into_iter()
            .filter(|a| !matches!(a, Action::AcquireLease(_)))
            .collect();
        if !actions.is_empty() {
            let node = self.clone();
            tokio::spawn(async move { node.execute(actions).await });
        }
    }

    /// Sends our heartbeat; the peer answers with its own. A peer that does not answer within the
    /// heartbeat timeout simply misses this round: the tick loop never waits on it.
    async fn send_heartbeat(self: &Arc<Self>) {
        let hb = self.own_heartbeat();
        if let Ok(peer) = self
            .heartbeats
            .post::<_, Heartbeat>(self.peer.admin, "/api/cluster/heartbeat", &hb)
            .await
        {
            self.on_peer_heartbeat(peer).await;
        }
    }

    async fn drive(self: &Arc<Self>) {
        if self
            .handover_pending
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            if let Ok(_one_at_a_time) = self.exec.try_lock() {
                self.take_back_lease().await;
            }
        }
        // A move (for the disk's sake too) seals the logs; it decides, not a failed log.
        let moving = self.moving.load(std::sync::atomic::Ordering::SeqCst);
        let failed = self
            .writers()
            .into_iter()
            .filter(|_| !moving)
            .find_map(|(sg, w)| {
                w.failing_for()
                    .filter(|t| *t >= DATABASE_FAILED_AFTER)
                    .and_then(|_| w.failure().map(|why| format!("{sg}: {why}")))
            });
        if let Some(reason) = failed {
            let actions = {
                let mut m = self.machine();
                if m.peer_healthy(mono_ms()) {
                    m.database_failed(reason.clone())
                } else {
                    Vec::new()
                }
            };
            if !actions.is_empty() {
                error!(node = %self.name, reason = %reason, "database failed; handing the storage groups to the other node");
                self.execute(actions).await;
                return;
            }
        }
        let holder = self
            .machine()
            .lease()
            .is_some_and(|l| l.holder == self.name);
        let observed = if holder {
            Observed::Nothing
        } else {
            self.observe().await
        };
        let copied = self.copied();
        let incomplete = self.incomplete_copies();
        let generated = self.generated();
        let actions = {
            let mut m = self.machine();
            m.on_copied(copied);
            m.on_incomplete(incomplete);
            if *m.role() == Role::Active {
                m.on_generated(generated);
            }
            match observed {
                Observed::Lease(view) => m.on_lease(mono_ms(), Some(view)),
                Observed::Unreachable => m.on_lease(mono_ms(), None),
                Observed::Nothing => m.on_tick(mono_ms()),
            }
        };
        self.execute(actions).await;
    }

    /// LastLogCopied per storage group.
    pub fn copied(&self) -> std::collections::BTreeMap<String, u64> {
        self.copies()
            .iter()
            .map(|(sg, c)| (sg.clone(), c.copy.last_copied()))
            .collect()
    }

    /// Storage groups whose copy is being reseeded or whose reseed was cut short.
    pub fn incomplete_copies(&self) -> std::collections::BTreeSet<String> {
        let cut_short = self.state().seeding.clone();
        self.copies()
            .iter()
            .filter(|(sg, c)| c.seeding.is_some() || cut_short.contains(*sg))
            .map(|(sg, _)| sg.clone())
            .collect()
    }

    /// Carries out the machine's actions, one at a time (mounts and demotions never overlap).
    ///
    /// In a task of their own: the machine has already moved to the state these actions carry
    /// out, so they must run to the end even if the caller is dropped — an admin API handler whose
    /// client hung up (a heartbeat that timed out while this node was paused) would otherwise
    /// drop a Demote, leaving a node the machine calls passive with its databases still mounted
    /// and no copy, for good (campaign seed 12 with the etcd witness).
    pub async fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let node = self.clone();
        let run = tokio::spawn(async move {
            let _one_at_a_time = node.exec.lock().await;
            node.execute_locked(actions).await;
        });
        if let Err(e) = run.await {
            error!(node = %self.name, error = %e, "cluster action task failed");
        }
    }

    /// [`Self::execute`] for a caller that holds the execution lock.
    async fn execute_locked(self: &Arc<Self>, actions: Vec<Action>) {
        if actions.is_empty() {
            return;
        }
        let mut queue: VecDeque<Action> = actions.into();
        while let Some(action) = queue.pop_front() {
            match action {
                Action::AcquireLease(epoch) => {
                    let Some(view) = self.acquire(epoch).await else {
                        continue;
                    };
                    let more = self.machine().on_lease(mono_ms(), view);
                    // A further request waits for the next tick.
                    queue.extend(
                        more.into_iter()
                            .filter(|a| !matches!(a, Action::AcquireLease(_))),
                    );
                }
                Action::ReleaseLease => self.release_lease().await,
                Action::Mount {
                    epoch,
                    missing,
                    failover,
                } => {
                    // Decided earlier, carried out now: only if the machine still wants exactly
                    // this mount (a demotion may have been decided since, by another task).
                    let wanted = {
                        let m = self.machine();
                        *m.role() == Role::Active && m.epoch() == epoch
                    };
                    if !wanted {
                        warn!(node = %self.name, epoch, "a mount decided earlier is no longer wanted; skipped");
                        continue;
                    }
                    let node = self.clone();
                    match tokio::task::spawn_blocking(move || node.mount(epoch, &missing, failover))
                        .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            error!(node = %self.name, error = %e, "mount failed; deliveries are refused")
                        }
                        Err(e) => error!(node = %self.name, error = %e, "mount task failed"),
                    }
                }
                Action::Demote => {
                    // Likewise: a demotion decided before a newer mount must not undo it.
                    if *self.machine().role() == Role::Active {
                        warn!(node = %self.name, "a demotion decided earlier is no longer wanted; skipped");
                        continue;
                    }
                    let node = self.clone();
                    match tokio::task::spawn_blocking(move || node.demote()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => error!(node = %self.name, error = %e, "demotion failed"),
                        Err(e) => error!(node = %self.name, error = %e, "demote task failed"),
                    }
                }
            }
        }
        let node = self.clone();
        match tokio::task::spawn_blocking(move || node.persist()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                error!(node = %self.name, error = %e, "could not persist the cluster state")
            }
            Err(e) => error!(node = %self.name, error = %e, "persist task failed"),
        }
    }

    /// Gives the witness lease up (the machine forgets it once the witness has it).
    async fn release_lease(&self) {
        match self.witness.release().await {
            Ok(()) => self.machine().on_released(),
            Err(e) => warn!(node = %self.name, error = %e, "could not release the witness lease"),
        }
    }

    /// Takes or renews the lease; `Some(None)` when the witness is unreachable, `None` when the
    /// other node was mid-update (try again next tick).
    async fn acquire(&self, epoch: u64) -> Option<Option<LeaseView>> {
        let note = (*self.machine().role() == Role::Active).then(|| self.generated());
        match self
            .witness
            .acquire(self.timing.lease_duration, epoch, note)
            .await
        {
            Ok(seen) => Some(Some(lease_view(seen))),
            Err(WitnessError::Busy) => None,
            Err(e) => {
                self.witness_failed(e);
                Some(None)
            }
        }
    }

    /// Reads the lease without writing, so that the other node's last renewal is timed from when it
    /// happened (within a tick), not from when this node next needs the lease.
    async fn observe(&self) -> Observed {
        match self.witness.observe(self.timing.lease_duration).await {
            Ok(Some(seen)) => Observed::Lease(lease_view(seen)),
            Ok(None) => Observed::Nothing,
            Err(e) => {
                self.witness_failed(e);
                Observed::Unreachable
            }
        }
    }

    /// Logs a witness failure once (while the machine still thinks the witness answers).
    fn witness_failed(&self, e: WitnessError) {
        if self.machine().witness_ok() {
            warn!(node = %self.name, error = %e, "witness unavailable");
        }
    }

    /// A scheduled move away from this active node. It runs to its end in its own task, so a
    /// client that disconnects cannot leave it half done. Every writer is sealed (the writes
    /// queued before are fsynced and answered, the open generation is closed, nothing is written
    /// after), the lease is released, and the peer copies up to the sealed generations, takes the
    /// lease and mounts. If the peer does not confirm, this node takes the lease back and serves
    /// on; while the peer holds it instead, the writers stay sealed until the peer's heartbeat
    /// shows it active (this node then steps down) or the lease comes back. Returns the final
    /// generations.
    pub async fn move_to_peer(
        self: &Arc<Self>,
    ) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let node = self.clone();
        tokio::spawn(async move { node.run_move().await })
            .await
            .map_err(|e| format!("the move task failed: {e}"))?
    }

    async fn run_move(self: &Arc<Self>) -> Result<std::collections::BTreeMap<String, u64>, String> {
        let _one_at_a_time = self.exec.lock().await;
        if *self.machine().role() != Role::Active {
            return Err(format!("{} is not the active node", self.name));
        }
        if self.moving.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(format!(
                "a move away from {} is already under way",
                self.name
            ));
        }
        let writers = self.writers();
        let mut last = std::collections::BTreeMap::new();
        for (sg, w) in &writers {
            match w.seal().await {
                Ok(g) => {
                    last.insert(sg.clone(), g);
                }
                Err(e) => {
                    for (_, w) in &writers {
                        w.unseal();
                    }
                    self.set_moving(false);
                    return Err(format!("could not close the log of {sg}: {e}"));
                }
            }
        }
        self.machine().begin_handover();
        self.release_lease().await;
        let req = super::outstanding::Takeover {
            last_closed: last.clone(),
        };
        let answer: Result<serde_json::Value, _> = self
            .moves
            .post(self.peer.admin, "/api/cluster/takeover", &req)
            .await;
        if let Err(e) = answer {
            self.handover_pending
                .store(true, std::sync::atomic::Ordering::SeqCst);
            let kept = self.take_back_lease().await;
            return Err(format!(
                "{} did not take over: {e}; {}",
                self.peer.name,
                if kept {
                    "this node serves on"
                } else {
                    "the other node holds the lease, so this node waits for it to become active"
                }
            ));
        }
        let actions = self.machine().move_away();
        self.execute_locked(actions).await;
        self.metrics.moved();
        info!(node = %self.name, to = %self.peer.name, "scheduled move done");
        Ok(last)
    }

    /// Before the process stops (SIGTERM, Ctrl-C): an active node whose peer is healthy hands over
    /// with a scheduled move, so a routine restart loses nothing and needs no resubmission.
    pub async fn hand_over_before_exit(self: &Arc<Self>) {
        let ready = {
            let m = self.machine();
            *m.role() == Role::Active && m.peer_healthy(mono_ms())
        };
        if !ready {
            return;
        }
        info!(node = %self.name, to = %self.peer.name, "stopping: handing over to the other node first");
        match tokio::time::timeout(Duration::from_secs(45), self.move_to_peer()).await {
            Ok(Ok(_)) => info!(node = %self.name, "handed over; stopping"),
            Ok(Err(e)) => warn!(node = %self.name, error = %e, "handover failed; stopping anyway"),
            Err(_) => warn!(node = %self.name, "handover timed out; stopping anyway"),
        }
    }

    /// After a move that was not confirmed: takes the lease back if it is free and unseals the
    /// writers. Returns whether this node serves on.
    async fn take_back_lease(self: &Arc<Self>) -> bool {
        if *self.machine().role() != Role::Active {
            return false;
        }
        let epoch = self.machine().epoch();
        let Some(Some(view)) = self.acquire(epoch).await else {
            return false;
        };
        if view.holder != self.name {
            return false;
        }
        self.machine().end_handover(view);
        for (_, w) in self.writers() {
            w.unseal();
        }
        self.handover_pending
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.set_moving(false);
        warn!(node = %self.name, "the scheduled move did not happen; serving on");
        true
    }

    /// The target side of a scheduled move: copy up to the given generations, take the witness
    /// lease the old active released, then mount. In its own task, like [`Self::execute`]: the
    /// old active's request may time out, and a mount the machine has decided must still happen.
    pub async fn take_over(
        self: &Arc<Self>,
        last_closed: &std::collections::BTreeMap<String, u64>,
    ) -> Result<(), String> {
        let (node, last_closed) = (self.clone(), last_closed.clone());
        tokio::spawn(async move { node.run_take_over(&last_closed).await })
            .await
            .map_err(|e| format!("the takeover task failed: {e}"))?
    }

    async fn run_take_over(
        self: &Arc<Self>,
        last_closed: &std::collections::BTreeMap<String, u64>,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            self.copy_round().await;
            let copied = self.copied();
            if last_closed
                .iter()
                .all(|(sg, g)| copied.get(sg).copied().unwrap_or(0) >= *g)
            {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "copy did not reach {last_closed:?} (have {copied:?})"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _one_at_a_time = self.exec.lock().await;
        let epoch = self.machine().epoch();
        let lease = match self.acquire(epoch).await {
            Some(Some(view)) => view,
            Some(None) => return Err("the witness is unreachable".into()),
            None => return Err("the witness is busy".into()),
        };
        let copied = self.copied();
        let actions = {
            let mut m = self.machine();
            m.on_copied(copied);
            m.take_over(mono_ms(), lease)?
        };
        self.execute_locked(actions).await;
        if *self.machine().role() == Role::Active {
            Ok(())
        } else {
            Err("the state machine refused to mount".into())
        }
    }
}

/// The machine's view of a lease the witness returned: times are already on this node's clock.
fn lease_view(seen: Seen) -> LeaseView {
    LeaseView {
        holder: seen.lease.holder,
        expires_ms: seen.until_ms,
        epoch: seen.lease.epoch,
        generated: seen.lease.last_log_generated,
    }
}

/// What a read of the witness found, for a node that does not hold the lease.
enum Observed {
    /// The lease on file.
    Lease(LeaseView),
    /// No lease yet (or this node holds it and did not look).
    Nothing,
    /// The share did not answer.
    Unreachable,
}

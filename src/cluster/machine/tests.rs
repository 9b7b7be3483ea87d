//! The failover rules under randomized fault schedules: lost heartbeats (each direction), an
//! unreachable witness, crashes and restarts at every step. Invariants checked at every instant:
//! at most one node may serve; no mount is lossier than the dial allows.

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const SG: &str = "SG1";
const DIAL: u64 = 3;

/// The witness as the lease file behaves: free when absent, expired, or already ours.
#[derive(Default)]
struct WitnessModel {
    lease: Option<LeaseView>,
}

impl WitnessModel {
    fn acquire(
        &mut self,
        node: &str,
        now: Millis,
        duration: Millis,
        epoch: u64,
        note: Option<&BTreeMap<String, u64>>,
    ) -> LeaseView {
        let free = match &self.lease {
            None => true,
            Some(l) => l.holder == node || now >= l.expires_ms,
        };
        if free {
            let previous = self.lease.take().unwrap_or_default();
            self.lease = Some(LeaseView {
                holder: node.to_string(),
                expires_ms: now + duration,
                epoch: epoch.max(previous.epoch),
                generated: note.cloned().unwrap_or(previous.generated),
            });
        }
        self.lease.clone().expect("set above or already present")
    }

    fn release(&mut self, node: &str) {
        if self.lease.as_ref().is_some_and(|l| l.holder == node) {
            self.lease = None;
        }
    }
}

struct SimNode {
    name: &'static str,
    machine: Option<Machine>,
    persisted: Persisted,
    /// How much of the authoritative log history this node holds (LastLogGenerated while active,
    /// LastLogCopied while passive).
    has: u64,
}

struct Sim {
    rng: StdRng,
    now: Millis,
    nodes: [SimNode; 2],
    witness: WitnessModel,
    /// link[i]: heartbeats from node i reach the other node.
    link: [bool; 2],
    witness_reachable: [bool; 2],
    timing: Timing,
    mounts: Vec<(usize, BTreeMap<String, u64>, u64)>,
    crash_only: bool,
    /// The newest log of the authoritative history (the last mounted node's stream).
    head: u64,
}

impl Sim {
    fn new(seed: u64, crash_only: bool) -> Sim {
        let timing = Timing::default();
        let mk = |name| SimNode {
            name,
            machine: None,
            persisted: Persisted::default(),
            has: 0,
        };
        let mut sim = Sim {
            rng: StdRng::seed_from_u64(seed),
            now: 1_000_000,
            nodes: [mk("node1"), mk("node2")],
            witness: WitnessModel::default(),
            link: [true, true],
            witness_reachable: [true, true],
            timing,
            mounts: Vec::new(),
            crash_only,
            head: 0,
        };
        sim.start(0);
        sim.start(1);
        sim
    }

    fn start(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.machine = Some(Machine::new(
            n.name,
            i == 0,
            n.persisted.clone(),
            self.timing,
            DIAL,
            self.now,
        ));
    }

    fn apply(&mut self, i: usize, actions: Vec<Action>) {
        let mut queue = actions;
        while let Some(a) = queue.pop() {
            let now = self.now;
            let name = self.nodes[i].name;
            match a {
                Action::AcquireLease(epoch) => {
                    let m = self.nodes[i].machine.as_mut().expect("running");
                    let result = if self.witness_reachable[i] {
                        let note = (*m.role() == Role::Active).then(|| m.generated().clone());
                        let duration = self.timing.lease_duration;
                        Some(
                            self.witness
                                .acquire(name, now, duration, epoch, note.as_ref()),
                        )
                    } else {
                        None
                    };
                    let m = self.nodes[i].machine.as_mut().expect("running");
                    // As in the driver: a further lease request waits for the next tick.
                    queue.extend(
                        m.on_lease(now, result)
                            .into_iter()
                            .filter(|a| !matches!(a, Action::AcquireLease(_))),
                    );
                }
                Action::ReleaseLease => {
                    if self.witness_reachable[i] {
                        self.witness.release(name);
                        self.nodes[i]
                            .machine
                            .as_mut()
                            .expect("running")
                            .on_released();
                    }
                }
                Action::Mount { epoch, missing, .. } => {
                    // What this mount really loses: the history this node does not hold.
                    let true_loss = self.head.saturating_sub(self.nodes[i].has);
                    self.mounts.push((i, missing, true_loss));
                    self.head = self.nodes[i].has;
                    assert!(epoch > 0);
                }
                Action::Demote => {}
            }
        }
        let n = &mut self.nodes[i];
        if let Some(m) = &n.machine {
            n.persisted = m.persisted();
        }
    }

    fn serving(&self) -> Vec<usize> {
        (0..2)
            .filter(|&i| {
                self.nodes[i]
                    .machine
                    .as_ref()
                    .is_some_and(|m| m.may_serve(self.now))
            })
            .collect()
    }

    fn step(&mut self) {
        self.now += self.rng.gen_range(20..250);
        // Faults.
        let r: f64 = self.rng.gen();
        if r < 0.01 {
            let i = self.rng.gen_range(0..2);
            if self.nodes[i].machine.is_some() {
                self.nodes[i].machine = None;
            } else {
                self.start(i);
            }
        } else if !self.crash_only && r < 0.03 {
            let i = self.rng.gen_range(0..2);
            self.link[i] = !self.link[i];
        } else if !self.crash_only && r < 0.04 {
            let i = self.rng.gen_range(0..2);
            self.witness_reachable[i] = !self.witness_reachable[i];
        }
        // Work: the active node generates logs; the passive copies from a reachable active.
        for i in 0..2 {
            let active = self.nodes[i]
                .machine
                .as_ref()
                .is_some_and(|m| m.may_serve(self.now));
            if active && self.nodes[i].has == self.head && self.rng.gen_bool(0.3) {
                self.head += 1;
                self.nodes[i].has = self.head;
            }
        }
        for i in 0..2 {
            let peer_has = self.nodes[1 - i].has;
            let peer_up = self.nodes[1 - i]
                .machine
                .as_ref()
                .is_some_and(|m| *m.role() == Role::Active);
            if peer_up && self.link[1 - i] && self.link[i] && self.nodes[i].machine.is_some() {
                let lag = self.rng.gen_range(0..=5);
                let n = &mut self.nodes[i];
                // A copy follows the active: logs it holds beyond the active's diverged and are
                // discarded; otherwise it only ever gains.
                let lagged = peer_has.saturating_sub(lag);
                n.has = if n.has > peer_has {
                    lagged
                } else {
                    n.has.max(lagged)
                };
            }
        }
        // Heartbeats, then ticks, in random order.
        let order = if self.rng.gen_bool(0.5) {
            [0, 1]
        } else {
            [1, 0]
        };
        for i in order {
            let Some(m) = self.nodes[i].machine.as_ref() else {
                continue;
            };
            let generated = BTreeMap::from([(SG.to_string(), self.nodes[i].has)]);
            let hb = m.heartbeat(self.now, generated);
            let j = 1 - i;
            if self.link[i] && self.nodes[j].machine.is_some() {
                let copied = BTreeMap::from([(SG.to_string(), self.nodes[j].has)]);
                let peer = self.nodes[j].machine.as_mut().expect("checked");
                peer.on_copied(copied);
                let actions = peer.on_heartbeat(self.now, hb);
                self.apply(j, actions);
            }
        }
        for i in order {
            let copied = BTreeMap::from([(SG.to_string(), self.nodes[i].has)]);
            let generated = BTreeMap::from([(SG.to_string(), self.nodes[i].has)]);
            let Some(m) = self.nodes[i].machine.as_mut() else {
                continue;
            };
            m.on_copied(copied);
            if *m.role() == Role::Active {
                m.on_generated(generated);
            }
            let actions = m.on_tick(self.now);
            self.apply(i, actions);
        }
        let serving = self.serving();
        assert!(
            serving.len() <= 1,
            "two nodes may serve at t={}: {serving:?}",
            self.now
        );
    }
}

#[test]
fn at_most_one_active_under_random_faults() {
    for seed in 0..200 {
        let mut sim = Sim::new(seed, false);
        for _ in 0..2_000 {
            sim.step();
        }
        for (_, missing, _) in &sim.mounts {
            let worst = missing.values().copied().max().unwrap_or(0);
            assert!(
                worst <= DIAL,
                "seed {seed}: a mount reported {worst} missing logs"
            );
        }
    }
}

#[test]
fn crash_only_failovers_are_never_lossier_than_the_dial() {
    let mut failovers = 0;
    for seed in 0..200 {
        let mut sim = Sim::new(seed, true);
        for _ in 0..2_000 {
            sim.step();
        }
        for (node, missing, true_loss) in &sim.mounts {
            let reported = missing.get(SG).copied().unwrap_or(0);
            assert!(
                *true_loss <= DIAL,
                "seed {seed}: node {node} mounted losing {true_loss} logs"
            );
            assert!(
                reported >= *true_loss,
                "seed {seed}: reported {reported} < real loss {true_loss}"
            );
            failovers += 1;
        }
    }
    assert!(
        failovers > 100,
        "the schedules must exercise failover ({failovers})"
    );
}

fn hb(
    node: &str,
    role: Role,
    epoch: u64,
    was_active: bool,
    sees_peer: bool,
    generated: u64,
) -> Heartbeat {
    Heartbeat {
        node: node.into(),
        role,
        epoch,
        was_active,
        sees_peer,
        last_log_generated: BTreeMap::from([(SG.to_string(), generated)]),
    }
}

#[test]
fn fresh_cluster_first_node_becomes_active_with_the_lease() {
    let t = Timing::default();
    let mut m = Machine::new("node1", true, Persisted::default(), t, DIAL, 0);
    assert_eq!(m.on_tick(0), vec![Action::AcquireLease(0)]);
    let acts = m.on_lease(
        0,
        Some(LeaseView {
            holder: "node1".into(),
            expires_ms: t.lease_duration,
            ..Default::default()
        }),
    );
    assert!(
        matches!(
            acts[0],
            Action::Mount {
                epoch: 1,
                failover: false,
                ..
            }
        ),
        "{acts:?}"
    );
    assert!(m.may_serve(10));
}

#[test]
fn failover_within_dial_mounts_lossy_and_beyond_dial_stays_dismounted() {
    let t = Timing::default();
    for (generated, copied, mounts) in [(10, 10, true), (10, 7, true), (10, 6, false)] {
        let mut m = Machine::new(
            "node2",
            false,
            Persisted {
                epoch: 1,
                ..Default::default()
            },
            t,
            DIAL,
            0,
        );
        m.on_copied(BTreeMap::from([(SG.to_string(), copied)]));
        m.on_heartbeat(0, hb("node1", Role::Active, 1, true, true, generated));
        assert_eq!(m.role(), &Role::Passive);
        // The active node is lost; its lease expires.
        let now = (2 * t.peer_timeout).max(t.lease_duration) + 1;
        let acts = m.on_tick(now);
        assert_eq!(acts, vec![Action::AcquireLease(1)]);
        let acts = m.on_lease(
            now,
            Some(LeaseView {
                holder: "node2".into(),
                expires_ms: now + t.lease_duration,
                ..Default::default()
            }),
        );
        if mounts {
            let expect = BTreeMap::from([(SG.to_string(), generated - copied)]);
            assert_eq!(
                acts[0],
                Action::Mount {
                    epoch: 2,
                    missing: expect,
                    failover: true
                }
            );
        } else {
            assert!(acts.is_empty(), "{acts:?}");
            assert!(
                matches!(m.role(), Role::Dismounted(r) if r.contains("4 log(s) lost")),
                "{:?}",
                m.role()
            );
        }
    }
}

/// node1 of a fresh cluster, active with the lease from time 0.
fn fresh_active_node1(t: Timing) -> Machine {
    let mut m = Machine::new("node1", true, Persisted::default(), t, DIAL, 0);
    m.on_tick(0);
    m.on_lease(
        0,
        Some(LeaseView {
            holder: "node1".into(),
            expires_ms: t.lease_duration,
            ..Default::default()
        }),
    );
    m
}

#[test]
fn witness_down_with_both_nodes_up_keeps_the_active() {
    let t = Timing::default();
    let mut m = fresh_active_node1(t);
    for k in 1..100 {
        let now = k * 200;
        m.on_heartbeat(now, hb("node2", Role::Passive, 0, false, true, 0));
        for a in m.on_tick(now) {
            if let Action::AcquireLease(_) = a {
                m.on_lease(now, None);
            }
        }
        assert!(
            m.may_serve(now),
            "quorum with the peer keeps it active at {now}"
        );
    }
    assert!(!m.witness_ok());
}

#[test]
fn frozen_active_refuses_when_it_resumes() {
    let t = Timing::default();
    let mut m = fresh_active_node1(t);
    m.on_heartbeat(100, hb("node2", Role::Passive, 0, false, true, 0));
    assert!(m.may_serve(100));
    // Stopped for ten seconds: neither quorum nor lease holds any more, before any tick runs.
    assert!(!m.may_serve(10_100));
}

#[test]
fn returning_old_active_defers_to_the_new_active() {
    let t = Timing::default();
    let persisted = Persisted {
        epoch: 1,
        was_active: true,
        peer_generated: BTreeMap::new(),
    };
    let mut m = Machine::new("node1", true, persisted, t, DIAL, 0);
    let acts = m.on_tick(0);
    assert_eq!(acts, vec![Action::AcquireLease(1)]);
    // The new active holds the lease.
    m.on_lease(
        0,
        Some(LeaseView {
            holder: "node2".into(),
            expires_ms: 2_000,
            ..Default::default()
        }),
    );
    assert!(!m.may_serve(0));
    m.on_heartbeat(100, hb("node2", Role::Active, 2, true, true, 5));
    assert_eq!(m.role(), &Role::Passive);
    m.on_heartbeat(4_990, hb("node2", Role::Active, 2, true, true, 5));
    assert!(!m.may_serve(5_000));
    assert!(
        m.on_tick(5_000).is_empty(),
        "it stays passive while the active is seen"
    );
}

#[test]
fn scheduled_move_hands_over_without_a_double_active() {
    let t = Timing::default();
    let mut a = fresh_active_node1(t);
    let mut b = Machine::new("node2", false, Persisted::default(), t, DIAL, 0);
    b.on_heartbeat(10, a.heartbeat(10, BTreeMap::new()));
    a.on_heartbeat(10, b.heartbeat(10, BTreeMap::new()));
    // The old active stops renewing and releases the lease; it still serves by quorum meanwhile
    // (its writers are sealed, so it writes nothing).
    a.begin_handover();
    a.on_released();
    assert!(
        !a.on_tick(20).contains(&Action::AcquireLease(1)),
        "a node handing over must not take the lease back by itself"
    );
    let b_lease = LeaseView {
        holder: "node2".into(),
        expires_ms: 30 + t.lease_duration,
        ..Default::default()
    };
    let acts = b.take_over(30, b_lease).expect("b holds the lease");
    assert!(
        matches!(&acts[0], Action::Mount { epoch: 2, missing, failover: false } if missing.is_empty()),
        "{acts:?}"
    );
    assert_eq!(a.move_away(), vec![Action::Demote, Action::ReleaseLease]);
    assert!(!a.may_serve(40));
    b.on_heartbeat(40, a.heartbeat(40, BTreeMap::new()));
    a.on_heartbeat(40, b.heartbeat(40, BTreeMap::new()));
    assert!(b.may_serve(50) && !a.may_serve(50));
    assert!(a.on_tick(60).is_empty(), "the old active stays passive");
}

#[test]
fn a_move_target_without_the_lease_does_not_mount() {
    let t = Timing::default();
    let mut a = fresh_active_node1(t);
    let mut b = Machine::new("node2", false, Persisted::default(), t, DIAL, 0);
    b.on_heartbeat(10, a.heartbeat(10, BTreeMap::new()));
    a.on_heartbeat(10, b.heartbeat(10, BTreeMap::new()));
    a.begin_handover();
    // The old active gave up on the move and took the lease back before the target asked.
    let a_lease = LeaseView {
        holder: "node1".into(),
        expires_ms: 20 + t.lease_duration,
        epoch: 1,
        ..Default::default()
    };
    a.end_handover(a_lease.clone());
    assert!(b.take_over(30, a_lease).is_err());
    assert_eq!(b.role(), &Role::Passive);
    assert!(a.may_serve(40) && !b.may_serve(40));
    // A lease of the target's that has run out (the target was frozen after taking it) is no
    // ground to mount either.
    let stale = LeaseView {
        holder: "node2".into(),
        expires_ms: 100,
        ..Default::default()
    };
    assert!(b.take_over(5_000, stale).is_err());
}

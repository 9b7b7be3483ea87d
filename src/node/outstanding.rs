//! Dumpster resubmission after a lossy mount: every hub of the site is asked to redeliver, per
//! storage group, what it delivered since the newest record from it that this node holds. A node
//! that discards logs which diverged from the active's asks the same for what it kept.
//!
//! No bound of a window rests on this node's clock, nor on the clock of the node that wrote the
//! records (an active whose clock ran ahead turned windows inside out): the start is the hub's own
//! stamp on the newest record from it that this node holds, less the margin, and the end is left
//! to the hub, which closes it with its own now when it records the request
//! ([`crate::clock::window`]). A hub that does not answer stays in OutstandingDumpsterRequests and
//! is asked again until MaxDumpsterTime has passed; a hub that answers with an error is recorded as
//! refusing, shown by `status` and `health`, and asked again all the same (it serves once fixed).
//! The requests are persisted with the node's state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::state::{NodeState, Outstanding, RecordedWindow, Refusal};
use super::MailboxNode;
use crate::client::ClientError;
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::clock::window::low_from_anchor;
use crate::config::Site;
use crate::wire::hub::{ResubmitBody, ResubmitState};

/// Body of `POST /api/cluster/takeover` (a scheduled move's target).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Takeover {
    /// Per storage group, the generation the old active closed last.
    pub last_closed: BTreeMap<String, u64>,
}

/// Per hub host (lower-cased), that hub's own stamp on the newest record from it this node holds:
/// `store::mailbox::MailboxStore::hub_anchors`.
pub type Anchors = BTreeMap<String, u64>;

/// Records a request for every hub and every storage group of `anchors` (storage group → that
/// storage group's hub anchors).
pub fn request_all(
    site: &Site,
    st: &mut NodeState,
    cms: &str,
    epoch: u64,
    anchors: &BTreeMap<String, Anchors>,
    now: u64,
) {
    for (sg, of_sg) in anchors {
        let id = format!("{cms}-epoch{epoch}-{sg}");
        ask_every_hub(site, st, (&id, Some(epoch)), sg, of_sg, now);
    }
}

/// Records a request `id` for every hub to resubmit what storage group `sg` delivered after the
/// records this node kept (`anchors`, after the discard): the deliveries it discarded.
pub fn request_discarded(
    site: &Site,
    st: &mut NodeState,
    id: &str,
    sg: &str,
    anchors: &Anchors,
    now: u64,
) {
    if !st.outstanding.iter().any(|o| o.id == id) {
        ask_every_hub(site, st, (id, None), sg, anchors, now);
    }
}

/// One outstanding request `id` (of `epoch`, after a failover) per hub for `sg`, each from that
/// hub's own anchor.
fn ask_every_hub(
    site: &Site,
    st: &mut NodeState,
    (id, epoch): (&str, Option<u64>),
    sg: &str,
    anchors: &Anchors,
    now: u64,
) {
    for hub in &site.hubs {
        st.outstanding.push(Outstanding {
            id: id.to_string(),
            hub: hub.name.clone(),
            storage_group: sg.to_string(),
            hub_low_ms: low_from_anchor(hub_anchor(site, &hub.name, anchors)),
            created_ms: now,
            recorded: None,
            refused: None,
            epoch,
        });
    }
}

/// Hub `hub`'s anchor among `anchors`, found by the host name it writes in `Received:`.
fn hub_anchor(site: &Site, hub: &str, anchors: &Anchors) -> Option<u64> {
    anchors
        .get(&site.hub_hostname(hub).to_ascii_lowercase())
        .copied()
}

/// The request a node sends for `o`: its start on the hub's clock, its end left to the hub.
pub fn body_of(o: &Outstanding) -> ResubmitBody {
    ResubmitBody {
        id: o.id.clone(),
        storage_group: o.storage_group.clone(),
        low: rfc3339(o.hub_low_ms),
        high: None,
        // After a lossy failover everything in the window may be missing: no filter.
        recipient: None,
        sender: None,
        message_id: None,
        test_only: false,
        epoch: o.epoch,
    }
}

/// What one ask of a hub came to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    /// The hub completed the request (or it is void: expired, or the hub left the site).
    Finished,
    /// The hub recorded it and works on it.
    Recorded(RecordedWindow),
    /// The hub answered with an error.
    Refused(String),
    /// Nothing answered; ask again.
    Unanswered,
}

/// Applies `answer` to the outstanding request `(id, hub)` of `st`; returns whether anything
/// changed that must be persisted.
fn settle(st: &mut NodeState, id: &str, hub: &str, answer: Answer, now: u64) -> bool {
    let Some(i) = st
        .outstanding
        .iter()
        .position(|o| o.id == id && o.hub == hub)
    else {
        return false;
    };
    let o = &mut st.outstanding[i];
    match answer {
        Answer::Finished => {
            st.outstanding.remove(i);
            true
        }
        Answer::Recorded(window) => {
            if let Some(r) = o.refused.take() {
                info!(hub, request = id, was = %r.error, "the hub accepted the resubmission request it refused");
            }
            let changed = o.recorded.as_ref() != Some(&window);
            o.recorded = Some(window);
            changed
        }
        Answer::Refused(error) => {
            if o.refused.as_ref().is_some_and(|r| r.error == error) {
                return false;
            }
            warn!(hub, storage_group = %o.storage_group, request = id, error = %error, "the hub refused the resubmission request; status and health show it until it accepts");
            o.refused = Some(Refusal {
                error,
                since_ms: now,
            });
            true
        }
        Answer::Unanswered => false,
    }
}

impl MailboxNode {
    /// Sends every outstanding request once; forgets those a hub completed or that outlived
    /// MaxDumpsterTime, and records the hubs' windows and refusals.
    pub async fn resubmit_round(&self) {
        let pending = self.state().outstanding.clone();
        if pending.is_empty() {
            return;
        }
        let max_age = self.site.max_dumpster_time.as_millis() as u64;
        let mut answers = Vec::with_capacity(pending.len());
        for o in &pending {
            let answer = if now_ms() > o.created_ms.saturating_add(max_age) {
                warn!(hub = %o.hub, storage_group = %o.storage_group, refused = ?o.refused, "dumpster request expired unanswered (MaxDumpsterTime)");
                Answer::Finished
            } else if let Some(hub) = self.site.hub(&o.hub) {
                self.ask(hub.admin, o).await
            } else {
                Answer::Finished
            };
            answers.push((o.id.clone(), o.hub.clone(), answer));
        }
        let changed = {
            let mut st = self.state();
            let now = now_ms();
            answers.into_iter().fold(false, |changed, (id, hub, a)| {
                settle(&mut st, &id, &hub, a, now) || changed
            })
        };
        if changed {
            if let Err(e) = self.persist() {
                warn!(node = %self.name, error = %e, "could not persist outstanding requests");
            }
        }
    }

    /// Asks the hub at `admin` for `o` once.
    async fn ask(&self, admin: std::net::SocketAddr, o: &Outstanding) -> Answer {
        match self
            .client
            .post::<_, ResubmitState>(admin, "/api/resubmit", &body_of(o))
            .await
        {
            Ok(state) if state.done => {
                info!(hub = %o.hub, storage_group = %o.storage_group, low = %state.low, high = %state.high, messages = state.messages, "hub resubmitted its dumpster");
                Answer::Finished
            }
            Ok(state) => Answer::Recorded(RecordedWindow {
                low: state.low,
                high: state.high,
            }),
            Err(ClientError::Status {
                status, message, ..
            }) => Answer::Refused(format!("{status}: {message}")),
            Err(e) => {
                tracing::debug!(hub = %o.hub, error = %e, "hub did not answer; will ask again");
                Answer::Unanswered
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::window::{resolve, MARGIN_MS};
    use std::path::Path;

    fn site() -> Site {
        let text = include_str!("../../config/site.toml");
        Site::parse(Path::new("site.toml"), text).expect("example site")
    }

    /// The hubs' clock in these tests; the node's clock (`NODE_NOW`) is an hour ahead of it.
    const HUB_NOW: u64 = 1_795_341_600_000;
    const NODE_NOW: u64 = HUB_NOW + 3_600_000;

    #[test]
    fn each_hub_is_asked_from_its_own_stamp_and_never_with_the_nodes_clock() {
        let site = site();
        let (h1, h2) = (&site.hubs[0].name, &site.hubs[1].name);
        let mut st = NodeState::default();
        let anchors = BTreeMap::from([(
            "SG1".to_string(),
            Anchors::from([(site.hub_hostname(h1).to_ascii_lowercase(), HUB_NOW - 20_000)]),
        )]);
        request_all(&site, &mut st, "cms1", 4, &anchors, NODE_NOW);
        assert_eq!(st.outstanding.len(), 2, "one request per hub");
        let of = |hub: &str| {
            st.outstanding
                .iter()
                .find(|o| o.hub == hub)
                .expect("a request per hub")
        };
        assert_eq!(of(h1).hub_low_ms, HUB_NOW - 20_000 - MARGIN_MS);
        assert_eq!(
            of(h2).hub_low_ms,
            0,
            "no record of hub2: its whole dumpster"
        );
        for o in &st.outstanding {
            assert_eq!(o.id, "cms1-epoch4-SG1");
            let body = body_of(o);
            assert_eq!(body.high, None, "the end is the hub's own now");
            // What the hub makes of it, on its own clock: never inverted.
            let low = chrono::DateTime::parse_from_rfc3339(&body.low)
                .expect("RFC 3339")
                .timestamp_millis() as u64;
            let w = resolve(low, None, HUB_NOW, Some(HUB_NOW)).expect("served");
            assert!(w.low_ms <= w.high_ms && w.high_ms >= HUB_NOW, "{w:?}");
        }
    }

    #[test]
    fn discarded_deliveries_are_asked_for_once() {
        let site = site();
        let mut st = NodeState::default();
        let anchors = Anchors::new();
        request_discarded(&site, &mut st, "d1", "SG1", &anchors, NODE_NOW);
        request_discarded(&site, &mut st, "d1", "SG1", &anchors, NODE_NOW);
        assert_eq!(st.outstanding.len(), site.hubs.len());
    }

    #[test]
    fn a_refusal_is_recorded_once_and_cleared_when_the_hub_accepts() {
        let site = site();
        let mut st = NodeState::default();
        request_all(
            &site,
            &mut st,
            "cms1",
            2,
            &BTreeMap::from([("SG1".to_string(), Anchors::new())]),
            NODE_NOW,
        );
        let hub = site.hubs[0].name.clone();
        let id = "cms1-epoch2-SG1";
        let refused = Answer::Refused("404: no storage group named `SG1`".into());
        assert!(settle(&mut st, id, &hub, refused.clone(), 10));
        assert!(
            !settle(&mut st, id, &hub, refused, 20),
            "the same refusal again"
        );
        let o = st.outstanding.iter().find(|o| o.hub == hub).expect("kept");
        assert_eq!(o.refused.as_ref().map(|r| r.since_ms), Some(10));
        assert!(!settle(&mut st, id, &hub, Answer::Unanswered, 30));
        let window = RecordedWindow {
            low: "a".into(),
            high: "b".into(),
        };
        assert!(settle(
            &mut st,
            id,
            &hub,
            Answer::Recorded(window.clone()),
            40
        ));
        let o = st.outstanding.iter().find(|o| o.hub == hub).expect("kept");
        assert_eq!((&o.refused, &o.recorded), (&None, &Some(window)));
        assert!(settle(&mut st, id, &hub, Answer::Finished, 50));
        assert!(st.outstanding.iter().all(|o| o.hub != hub));
        assert!(
            !settle(&mut st, id, &hub, Answer::Finished, 60),
            "already gone"
        );
    }
}

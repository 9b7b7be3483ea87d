//! Dumpster resubmission after a lossy mount: every hub of the site is asked to redeliver, per
//! storage group, what it delivered from the newest replayed record (less a margin for clock skew)
//! until it serves the request (plus the margin: an old active may have acknowledged late). A node
//! that discards logs which diverged from the active's asks the same for what they held. A hub that does not answer stays in OutstandingDumpsterRequests and is asked again
//! until MaxDumpsterTime has passed; the requests are persisted with the node's state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::state::{NodeState, Outstanding};
use super::MailboxNode;
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::config::Site;
use crate::wire::hub::{ResubmitBody, ResubmitState};

/// How far before the newest replayed record the window starts, for clock skew between hubs and nodes.
pub const MARGIN_MS: u64 = 5 * 60 * 1000;

/// Body of `POST /api/cluster/takeover` (a scheduled move's target).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Takeover {
    /// Per storage group, the generation the old active closed last.
    pub last_closed: BTreeMap<String, u64>,
}

/// Records a request for every hub and every storage group of `newest` (storage group → time of
/// the newest replayed record).
pub fn request_all(
    site: &Site,
    st: &mut NodeState,
    cms: &str,
    epoch: u64,
    newest: &BTreeMap<String, u64>,
    now: u64,
) {
    for (sg, newest_ms) in newest {
        let id = format!("{cms}-epoch{epoch}-{sg}");
        ask_every_hub(site, st, &id, sg, *newest_ms, now);
    }
}

/// Records a request for every hub to resubmit what storage group `sg` delivered from `after` (the
/// newest record kept, less the margin) on: the window of deliveries a returning node discarded.
pub fn request_discarded(
    site: &Site,
    st: &mut NodeState,
    id: &str,
    sg: &str,
    after: u64,
    now: u64,
) {
    if !st.outstanding.iter().any(|o| o.id == id) {
        ask_every_hub(site, st, id, sg, after, now);
    }
}

/// One outstanding request `id` per hub for `sg`, from `after` less the margin.
fn ask_every_hub(site: &Site, st: &mut NodeState, id: &str, sg: &str, after: u64, now: u64) {
    for hub in &site.hubs {
        st.outstanding.push(Outstanding {
            id: id.to_string(),
            hub: hub.name.clone(),
            storage_group: sg.to_string(),
            low_ms: after.saturating_sub(MARGIN_MS),
            high_ms: now,
            created_ms: now,
        });
    }
}

impl MailboxNode {
    /// Sends every outstanding request once; forgets those a hub completed or that outlived
    /// MaxDumpsterTime.
    pub async fn resubmit_round(&self) {
        let pending = self.state().outstanding.clone();
        if pending.is_empty() {
            return;
        }
        let max_age = self.site.max_dumpster_time.as_millis() as u64;
        let mut finished = Vec::new();
        for o in &pending {
            if now_ms() > o.created_ms + max_age {
                warn!(hub = %o.hub, storage_group = %o.storage_group, "dumpster request expired unanswered (MaxDumpsterTime)");
                finished.push(o.clone());
                continue;
            }
            let Some(hub) = self.site.hub(&o.hub) else {
                finished.push(o.clone());
                continue;
            };
            let body = ResubmitBody {
                id: o.id.clone(),
                storage_group: o.storage_group.clone(),
                low: rfc3339(o.low_ms),
                // Up to when the hub serves it, plus the margin: an old active can have
                // acknowledged deliveries after this request was made (a reply that left late).
                high: rfc3339(o.high_ms.max(now_ms() + MARGIN_MS)),
                // After a lossy failover everything in the window may be missing: no filter.
                recipient: None,
                sender: None,
                message_id: None,
                test_only: false,
            };
            match self
                .client
                .post::<_, ResubmitState>(hub.admin, "/api/resubmit", &body)
                .await
            {
                Ok(state) if state.done => {
                    info!(hub = %o.hub, storage_group = %o.storage_group, messages = state.messages, "hub resubmitted its dumpster");
                    finished.push(o.clone());
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(hub = %o.hub, error = %e, "hub did not answer; will ask again")
                }
            }
        }
        if finished.is_empty() {
            return;
        }
        self.state().outstanding.retain(|o| !finished.contains(o));
        if let Err(e) = self.persist() {
            warn!(node = %self.name, error = %e, "could not persist outstanding requests");
        }
    }
}

//! The node's side of an SMTP session from a hub: only the active node takes mail, only for this
//! CMS's mailboxes, a message a mailbox already holds (Message-ID and content) is dropped, and
//! nothing is acknowledged without authority for the epoch the log was written in.

use std::collections::BTreeMap;
use std::sync::Arc;

use store::txlog::LogRecord;
use tracing::{error, info, warn};

use super::writer::WriteError;

use super::MailboxNode;
use crate::clock::now_ms;
use crate::smtp::{Backend, Incoming, Reply};

/// Plugs a [`MailboxNode`] into the SMTP server.
pub struct NodeInbound(pub Arc<MailboxNode>);

impl NodeInbound {
    fn passive_reply(&self) -> Reply {
        Reply::new(
            451,
            "4.3.2",
            format!(
                "{} is the passive node; deliver to the active node",
                self.0.name
            ),
        )
    }
}

impl Backend for NodeInbound {
    /// The passive sends the hub to the active; an active short of `min_free_space` answers
    /// 452 4.3.1 (and soon hands its databases to a passive with room).
    fn check_mail(&self, _sender: &str) -> Result<(), Reply> {
        if !self.0.is_active() {
            Err(self.passive_reply())
        } else if self.0.space.low().is_some() {
            Err(Reply::insufficient_storage())
        } else {
            Ok(())
        }
    }

    fn check_rcpt(&self, rcpt: &str) -> Result<(), Reply> {
        match self.0.site.route(rcpt) {
            Some(r) if r.cms == self.0.cms => Ok(()),
            _ => Err(Reply::new(
                550,
                "5.1.1",
                format!("<{rcpt}>: no such mailbox on this server"),
            )),
        }
    }

    fn auth_refused(&self, reason: &'static str) {
        self.0.metrics.auth_refused(reason);
    }

    async fn deliver(&self, msg: Incoming) -> Reply {
        let node = &self.0;
        if !node.is_active() {
            return self.passive_reply();
        }
        if node.space.low().is_some() {
            return Reply::insufficient_storage();
        }
        let epoch = node.machine().epoch();
        let now = now_ms();
        let digest = store::mailbox::ContentDigest::of(&msg.data);
        let mut by_sg: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rcpt in &msg.recipients {
            let addr = rcpt.to_ascii_lowercase();
            let Some(route) = node.site.route(&addr) else {
                continue;
            };
            match node.store.contains(&addr, &msg.message_id, &digest, now) {
                Ok(true) => node.metrics.delivered(&route.storage_group, 0, 1),
                Ok(false) => by_sg.entry(route.storage_group).or_default().push(addr),
                Err(e) => {
                    error!(error = %e, "mailbox store lookup failed");
                    return Reply::new(451, "4.3.0", "mailbox store unavailable, try again later");
                }
            }
        }
        let mut added = 0;
        for (sg, recipients) in by_sg {
            // A writer of another epoch, or none, means the role changed since the check above.
            let Some(writer) = node.writer(&sg).filter(|w| w.epoch() == epoch) else {
                return self.passive_reply();
            };
            let wanted = recipients.len();
            let rec = LogRecord {
                message_id: msg.message_id.clone(),
                recipients,
                sender: msg.sender.clone(),
                time_ms: now,
                body: msg.data.clone(),
            };
            match writer.write(rec).await {
                Ok(n) => {
                    node.metrics.delivered(&sg, n, wanted.saturating_sub(n));
                    added += n;
                }
                Err(WriteError::Stopped) => return self.passive_reply(),
                Err(e) => {
                    error!(storage_group = %sg, error = %e, "could not store");
                    return Reply::new(451, "4.3.0", "message not stored, try again later");
                }
            }
        }
        // The fence: whatever the store holds now is durable, but only a node still active in
        // the epoch it wrote in may say so; otherwise the hub delivers to the new active.
        let fenced_at = chrono::Utc::now();
        if !node.holds_authority(epoch) {
            warn!(message_id = %msg.message_id, node = %node.name, epoch, "lost the active role before acknowledging; refused with 451");
            return self.passive_reply();
        }
        #[cfg(feature = "fault-injection")]
        hold_acknowledgement(node).await;
        // `fenced_at`: when the authority was checked; the reply may go out later (a pause).
        info!(node = %node.name, epoch, message_id = %msg.message_id, copies = added, fenced_at = %fenced_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true), "acknowledged");
        // The epoch goes with the 250: a hub that has meanwhile heard from a newer epoch (this
        // reply was held up, by a pause of this process say) delivers the message again.
        if added == 0 {
            Reply::new(
                250,
                "2.0.0",
                format!("already delivered; duplicate dropped (epoch {epoch})"),
            )
        } else {
            Reply::new(250, "2.0.0", format!("stored (epoch {epoch})"))
        }
    }
}

/// A reply held up after the fence while `<node>/logs/HOLD-ACKS` exists (fault-injection builds
/// only), as a pause of the process between its last authority check and the 250 would: the test
/// of the hubs' epoch fence ([`crate::hub`]'s late acknowledgements).
#[cfg(feature = "fault-injection")]
async fn hold_acknowledgement(node: &crate::node::MailboxNode) {
    if node.dir.join("logs").join("HOLD-ACKS").exists() {
        tracing::warn!(node = %node.name, "holding the acknowledgement (fault injection)");
        tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    }
}

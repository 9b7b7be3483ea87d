//! The hub's side of an inbound SMTP session: who may receive mail here, and queueing what arrives.

use std::sync::Arc;

use store::hub::{RcptStatus, Recipient};
use tracing::error;

use super::Hub;
use crate::smtp::{Backend, Incoming, Reply};

/// Plugs a [`Hub`] into the SMTP server.
pub struct HubInbound(pub Arc<Hub>);

impl Backend for HubInbound {
    /// 452 4.3.1 while the store's disk has less than `min_free_space` free: the client keeps
    /// the message and tries again, as with Postfix's `queue_minfree`.
    fn check_mail(&self, _sender: &str) -> Result<(), Reply> {
        match self.0.space.low() {
            Some(_) => Err(Reply::insufficient_storage()),
            None => Ok(()),
        }
    }

    /// The hub generates every DSN: the mailbox nodes behind it are final delivery.
    fn offers_dsn(&self) -> bool {
        true
    }

    fn check_rcpt(&self, rcpt: &str) -> Result<(), Reply> {
        let site = &self.0.site;
        if site.route(rcpt).is_some() {
            Ok(())
        } else if site.is_accepted_domain(rcpt) {
            Err(Reply::new(
                550,
                "5.1.1",
                format!("<{rcpt}>: no such mailbox here"),
            ))
        } else {
            Err(Reply::new(
                550,
                "5.7.1",
                format!("<{rcpt}>: relaying denied"),
            ))
        }
    }

    async fn deliver(&self, msg: Incoming) -> Reply {
        let hub = &self.0;
        // Checked again: the disk may have filled while the body arrived.
        if hub.space.low().is_some() {
            return Reply::insufficient_storage();
        }
        let mut recipients: Vec<Recipient> = Vec::with_capacity(msg.recipients.len());
        for (i, addr) in msg.recipients.iter().enumerate() {
            let Some(route) = hub.site.route(addr) else {
                return Reply::new(550, "5.1.1", format!("<{addr}>: no such mailbox here"));
            };
            if recipients
                .iter()
                .any(|r| r.address.eq_ignore_ascii_case(addr))
            {
                continue;
            }
            recipients.push(Recipient {
                address: addr.clone(),
                cms: hub.site.cms[route.cms].name.clone(),
                storage_group: route.storage_group,
                status: RcptStatus::Pending,
                dsn: msg.dsn.recipients.get(i).cloned().unwrap_or_default(),
            });
        }
        let message_id = msg.message_id.clone();
        let token = hub.admit(&recipients).await;
        match hub
            .submit(
                token,
                msg.message_id,
                msg.sender,
                msg.dsn.message,
                recipients,
                msg.data,
            )
            .await
        {
            // The session logs the message with this reply; no second line per message.
            Ok(id) => Reply::new(250, "2.0.0", format!("queued as {id:x}")),
            Err(e) => {
                error!(message_id = %message_id, error = %e, "could not queue");
                Reply::new(451, "4.3.0", "message not stored, try again later")
            }
        }
    }
}

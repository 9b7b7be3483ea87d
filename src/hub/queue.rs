//! An administrator's hand on the queue (`hubrelay queue`, like `postsuper` and `Suspend-Message`):
//! hold, release, retry and delete. Every change is durable before it is reported; a held message
//! is neither attempted nor expired; nothing else about a message (body, recipients, dumpster
//! behaviour) changes. A delete with a DSN goes through the hub's one return-to-sender path.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use store::hub::{HubStore, HubStoreError, QueuedMessage};
use tracing::{info, warn};

use super::dsn::{self, Action, Notice};
use super::{Hub, HubError};
use crate::clock::now_ms;

/// How long a hold or a delete waits for a delivery attempt of the same message to finish
/// (short: the CLI gives up on a hub after a few seconds).
const CLAIM_WAIT: Duration = Duration::from_secs(2);

/// What the sender's DSN says of a deleted message; the administrator's own reason stays in the
/// log, since it is written for operators, not for senders.
pub const DELETED: &str = "deleted by the administrator";

/// A queue id as operators see it: lower-case hex, as in `250 2.0.0 queued as 1a2b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueId(pub u64);

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Why a queue id did not parse.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a queue id (hex, as in \"250 2.0.0 queued as 1a2b\")")]
pub struct BadQueueId(String);

impl FromStr for QueueId {
    type Err = BadQueueId;

    fn from_str(s: &str) -> Result<QueueId, BadQueueId> {
        let hex = s.strip_prefix("0x").unwrap_or(s);
        let valid = !hex.is_empty() && hex.bytes().all(|b| b.is_ascii_hexdigit());
        valid
            .then(|| u64::from_str_radix(hex, 16).ok())
            .flatten()
            .map(QueueId)
            .ok_or_else(|| BadQueueId(s.to_string()))
    }
}

/// Who deletes a message and why, for the log; and whether the sender gets a DSN.
#[derive(Debug, Clone)]
pub struct Deletion {
    /// Return the message to its sender as failed (never for the null sender or a resubmitted
    /// copy, as with every DSN of the hub).
    pub dsn: bool,
    /// Why, for the log.
    pub reason: String,
    /// Who, for the log (`user@host` of the CLI).
    pub by: String,
}

/// The outcome of `retry --all` on one hub.
#[derive(Debug, Default)]
pub struct RetryAll {
    /// Messages made due now.
    pub retried: Vec<u64>,
    /// Held messages, left alone.
    pub held: Vec<u64>,
}

impl Hub {
    /// Every queued message (held or not), in id order.
    pub async fn queue_messages(&self) -> Result<Vec<QueuedMessage>, HubError> {
        self.blocking(|s| s.queued()).await
    }

    /// Queued message `id`, if it is still queued.
    pub async fn queue_message(&self, id: u64) -> Result<Option<QueuedMessage>, HubError> {
        self.blocking(move |s| s.get(id)).await
    }

    /// Holds message `id`: once this returns, no attempt of it is under way and none starts
    /// until it is released, across restarts.
    pub async fn hold(&self, id: u64) -> Result<QueuedMessage, HubError> {
        let claim = self
            .claims
            .claim(id, CLAIM_WAIT)
            .await
            .ok_or(HubError::Busy(id))?;
        let held = self.blocking(move |s| s.hold(id, now_ms())).await;
        drop(claim);
        let held = self.owed_wake_up(id, held)?;
        self.durable().await?;
        info!(queue_id = %QueueId(id), message_id = %held.message_id, hub = %self.name, "held by the administrator");
        Ok(held)
    }

    /// Releases a held message and attempts it now; its expiry moves on by the time it was held.
    pub async fn release(&self, id: u64) -> Result<QueuedMessage, HubError> {
        let released = self.blocking(move |s| s.release(id, now_ms())).await?;
        self.durable().await?;
        self.schedule(released.next_attempt_ms, id);
        info!(queue_id = %QueueId(id), message_id = %released.message_id, hub = %self.name, "released by the administrator");
        Ok(released)
    }

    /// Attempts message `id` now (refused while it is held).
    pub async fn retry(&self, id: u64) -> Result<QueuedMessage, HubError> {
        let retried = self.blocking(move |s| s.retry_now(id, now_ms())).await?;
        self.durable().await?;
        self.schedule(retried.next_attempt_ms, id);
        info!(queue_id = %QueueId(id), message_id = %retried.message_id, hub = %self.name, "retry requested by the administrator");
        Ok(retried)
    }

    /// Attempts every queued message that is not held now.
    pub async fn retry_all(&self) -> Result<RetryAll, HubError> {
        let mut report = RetryAll::default();
        let mut due = Vec::new();
        for msg in self.queue_messages().await? {
            if msg.is_held() {
                report.held.push(msg.id);
                continue;
            }
            let id = msg.id;
            match self.blocking(move |s| s.retry_now(id, now_ms())).await {
                Ok(m) => due.push((m.next_attempt_ms, id)),
                // Delivered, or held, since the listing.
                Err(HubError::Store(HubStoreError::UnknownMessage(_))) => {}
                Err(HubError::Store(HubStoreError::Held(_))) => report.held.push(id),
                Err(e) => return Err(e),
            }
        }
        self.durable().await?;
        for (at, id) in due {
            self.schedule(at, id);
            report.retried.push(id);
        }
        info!(hub = %self.name, retried = report.retried.len(), held = report.held.len(), "retry of the whole queue requested by the administrator");
        Ok(report)
    }

    /// Deletes message `id` from the queue, logging who and why; with `deletion.dsn` its
    /// undelivered recipients are reported to the sender as failed. Once this returns, no
    /// attempt of the message is under way.
    pub async fn delete(
        self: &Arc<Self>,
        id: u64,
        deletion: &Deletion,
    ) -> Result<QueuedMessage, HubError> {
        let claim = self
            .claims
            .claim(id, CLAIM_WAIT)
            .await
            .ok_or(HubError::Busy(id))?;
        let want_body = deletion.dsn;
        let removed = self
            .blocking(move |s| {
                let msg = s.get(id)?.ok_or(HubStoreError::UnknownMessage(id))?;
                let body = if want_body {
                    s.body(msg.blob)?.unwrap_or_default()
                } else {
                    Vec::new()
                };
                Ok((s.delete(id)?, body))
            })
            .await;
        drop(claim);
        let (msg, body) = self.owed_wake_up(id, removed)?;
        self.durable().await?;
        let recipients: Vec<&str> = msg.recipients.iter().map(|r| r.address.as_str()).collect();
        warn!(
            queue_id = %QueueId(id),
            message_id = %msg.message_id,
            sender = %msg.sender,
            recipients = %recipients.join(","),
            by = %deletion.by,
            reason = %deletion.reason,
            dsn = %(if deletion.dsn { "yes" } else { "no" }),
            hub = %self.name,
            "message deleted from the queue by the administrator"
        );
        if deletion.dsn {
            let at = dsn::date(now_ms());
            let notices: Vec<Notice> = msg
                .recipients
                .iter()
                .filter(|r| r.status.is_open())
                .filter_map(|r| {
                    let action = Action::Failed {
                        code: 550,
                        reason: format!("5.3.0 {DELETED}"),
                    };
                    Notice::requested(r, action, None, at)
                })
                .collect();
            if !notices.is_empty() {
                self.return_to_sender(&msg, &body, &notices).await;
            }
        }
        Ok(msg)
    }

    /// Passes `result` on; after a failure, wakes the message, since a delivery attempt that
    /// found it claimed meanwhile skipped it and counted on the claimant to do so.
    fn owed_wake_up<T>(&self, id: u64, result: Result<T, HubError>) -> Result<T, HubError> {
        if result.is_err() {
            self.schedule(now_ms(), id);
        }
        result
    }

    /// Runs a store operation off the async threads.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&HubStore) -> Result<T, HubStoreError> + Send + 'static,
    ) -> Result<T, HubError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || op(&store))
            .await
            .map_err(|e| HubError::Task(e.to_string()))?
            .map_err(HubError::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_ids_are_hex_both_ways() {
        assert_eq!(QueueId(0x1a2b).to_string(), "1a2b");
        assert_eq!("1a2b".parse::<QueueId>().unwrap(), QueueId(0x1a2b));
        assert_eq!("0x1A2B".parse::<QueueId>().unwrap(), QueueId(0x1a2b));
        for bad in ["", "0x", "xyz", "-1", "+1", "1 2", "10000000000000000"] {
            let e = bad.parse::<QueueId>().unwrap_err().to_string();
            assert!(e.contains("is not a queue id"), "{bad}: {e}");
        }
    }
}

//! What a hub's queue routes answer and take (`hubrelay queue`).

use serde::{Deserialize, Serialize};

/// One recipient of a queued message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecipientView {
    /// The mailbox address.
    pub address: String,
    /// Its storage group.
    pub storage_group: String,
    /// "pending" (not tried yet), "deferred", "delivered" or "failed".
    pub state: String,
    /// Why the last attempt did not deliver it (deferred or failed), with the SMTP code if any.
    pub last_error: Option<String>,
}

/// One queued message, as `queue list` and `queue show` print it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageView {
    /// The hub holding it.
    pub hub: String,
    /// Queue id, hex.
    pub id: String,
    /// RFC 5322 Message-ID.
    pub message_id: String,
    /// Reverse path ("" = null sender).
    pub sender: String,
    /// Body bytes.
    pub size: u64,
    /// Hub receive time (RFC 3339).
    pub arrival: String,
    /// Seconds since it was received.
    pub age_seconds: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// When the next attempt is due (RFC 3339); none while held.
    pub next_attempt: Option<String>,
    /// The last error of a recipient still waiting, if any.
    pub last_error: Option<String>,
    /// When its undelivered recipients fail (RFC 3339); a hold moves it on at release.
    pub expires: String,
    /// Held by an administrator: neither attempted nor expired until released.
    pub held: bool,
    /// Since when it is held (RFC 3339).
    pub held_since: Option<String>,
    /// The resubmission request that queued this copy, if it is one.
    pub resubmission: Option<String>,
    /// Every recipient with its state.
    pub recipients: Vec<RecipientView>,
}

/// Body of `DELETE /api/queue/messages/:id`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteBody {
    /// Return the message to its sender as failed ("deleted by the administrator").
    #[serde(default)]
    pub dsn: bool,
    /// Why, for the log; default "deleted by the administrator".
    #[serde(default)]
    pub reason: Option<String>,
    /// Who, for the log.
    pub by: String,
}

/// Answer of a delete: the message as it was, and the request.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeleteReport {
    /// The deleted message.
    pub message: MessageView,
    /// Whether a DSN was asked for (the null sender and resubmitted copies never get one).
    pub dsn: bool,
    /// Why.
    pub reason: String,
    /// Who.
    pub by: String,
}

/// Answer of `POST /api/queue/retry`.
#[derive(Debug, Serialize, Deserialize)]
pub struct RetryAllReport {
    /// The hub.
    pub hub: String,
    /// Ids made due now.
    pub retried: Vec<String>,
    /// Held ids, left alone.
    pub held: Vec<String>,
}

//! What a node's mailbox routes answer and take (`hubrelay mailbox`).

use serde::{Deserialize, Serialize};

/// Query of `GET /api/mailbox`.
#[derive(Debug, Deserialize)]
pub struct MailboxQuery {
    /// The mailbox address.
    pub address: String,
}

/// Query of `GET /api/mailbox/message`.
#[derive(Debug, Deserialize)]
pub struct MessageQuery {
    /// The mailbox address.
    pub address: String,
    /// The Message-ID, with its angle brackets.
    pub message_id: String,
}

/// One stored message in a listing.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct MailboxMessage {
    /// Its Message-ID.
    pub message_id: String,
    /// Its size in bytes.
    pub size: u64,
    /// When this mailbox got it (RFC 3339).
    pub delivered: String,
}

/// `hubrelay mailbox --json` and `GET /api/mailbox`.
#[derive(Debug, Serialize, Deserialize)]
pub struct MailboxListing {
    /// The mailbox address.
    pub address: String,
    /// The active node that answered.
    pub node: String,
    /// Its messages, in delivery order.
    pub messages: Vec<MailboxMessage>,
}

//! The admin API's JSON, at the bottom of the layers: what the roles serve ([`crate::admin`]), what
//! their clients read ([`crate::client`], the CLI, the nodes asking hubs to resubmit) and what the
//! dashboard draws. Plain data with serde derives, so every layer can name it and none pulls in
//! another's code.

pub mod cluster;
pub mod hub;
pub mod mailbox;
pub mod queue;

use serde::{Deserialize, Serialize};

/// The JSON body of every error reply: `{"error": "..."}`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
}

//! A mailbox node's admin routes.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::cluster;
use axum::{Json, Router};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{rejection, ApiError};
use crate::node::MailboxNode;
use crate::runtime::now_ms;
use crate::telemetry;

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

/// The routes of a mailbox node.
pub fn node_router(node: Arc<MailboxNode>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/mailbox", get(mailbox))
        .route("/api/mailbox/message", get(message))
        .route("/api/status", get(cluster::status))
        .route("/api/outstanding", get(cluster::outstanding))
        .route("/api/cluster/heartbeat", post(cluster::heartbeat))
        .route("/api/cluster/move", post(cluster::move_away))
        .route("/api/cluster/takeover", post(cluster::takeover))
        .route("/api/logs/:sg", get(cluster::log_status))
        .route("/api/logs/:sg/:generation", get(cluster::log_file))
        .route("/api/copy/:sg/:op", post(cluster::copy_op))
        .with_state(node)
}

/// Checks that `address` is a mailbox of this CMS and that this node is active.
fn serving(node: &MailboxNode, address: &str) -> Result<String, ApiError> {
    let address = address.trim().to_ascii_lowercase();
    match node.site.route(&address) {
        Some(r) if r.cms == node.cms => {}
        _ => {
            return Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("{address} is not a mailbox of this CMS"),
            ))
        }
    }
    if !node.is_active() {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is the passive node; ask the active node", node.name),
        ));
    }
    Ok(address)
}

async fn mailbox(
    State(node): State<Arc<MailboxNode>>,
    q: Result<Query<MailboxQuery>, QueryRejection>,
) -> Result<Json<MailboxListing>, ApiError> {
    let Query(q) = q.map_err(rejection)?;
    let address = serving(&node, &q.address)?;
    let messages = node
        .store
        .list(&address)
        .map_err(ApiError::internal)?
        .into_iter()
        .map(|m| MailboxMessage {
            message_id: m.message_id,
            size: m.size,
            delivered: rfc3339(m.delivered_ms),
        })
        .collect();
    Ok(Json(MailboxListing {
        address,
        node: node.name.clone(),
        messages,
    }))
}

async fn message(
    State(node): State<Arc<MailboxNode>>,
    q: Result<Query<MessageQuery>, QueryRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let Query(q) = q.map_err(rejection)?;
    let address = serving(&node, &q.address)?;
    match node
        .store
        .body(&address, q.message_id.trim())
        .map_err(ApiError::internal)?
    {
        Some(body) => Ok(([(header::CONTENT_TYPE, "message/rfc822")], body)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{address} holds no message {}", q.message_id),
        )),
    }
}

/// `GET /metrics`: the node's counters, with its replication state as `GET /api/status` has it.
async fn metrics(State(node): State<Arc<MailboxNode>>) -> Result<impl IntoResponse, ApiError> {
    let status = cluster::node_status(&node);
    let text = node
        .metrics
        .encode(&status, now_ms())
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)], text))
}

/// Milliseconds since the epoch as RFC 3339 UTC.
pub fn rfc3339(ms: u64) -> String {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

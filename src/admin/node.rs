//! A mailbox node's admin routes.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::cluster;
use axum::{Json, Router};

use super::{rejection, ApiError};
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::node::MailboxNode;
use crate::telemetry;
use crate::wire::mailbox::{MailboxListing, MailboxMessage, MailboxQuery, MessageQuery};

/// The routes of a mailbox node.
pub fn node_router(node: Arc<MailboxNode>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/mailbox", get(mailbox))
        .route("/api/mailbox/message", get(message))
        .route("/api/status", get(cluster::status))
        .route("/api/disk", get(disk))
        .route("/api/outstanding", get(cluster::outstanding))
        .route("/api/cluster/heartbeat", post(cluster::heartbeat))
        .route("/api/cluster/move", post(cluster::move_away))
        .route("/api/cluster/takeover", post(cluster::takeover))
        .route("/api/logs/:sg", get(cluster::log_status))
        .route("/api/logs/:sg/:generation", get(cluster::log_file))
        .route("/api/snapshot/:sg", get(cluster::snapshot))
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
    // A mailbox of a hundred thousand messages takes seconds to read: off the runtime's threads,
    // or the heartbeats behind it miss their deadline and the peer takes over (campaign, stop 32).
    let listed = {
        let (node, address) = (node.clone(), address.clone());
        tokio::task::spawn_blocking(move || node.store.list(&address))
            .await
            .map_err(ApiError::internal)?
    };
    let messages = listed
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
    let found = {
        let (node, address, id) = (
            node.clone(),
            address.clone(),
            q.message_id.trim().to_string(),
        );
        tokio::task::spawn_blocking(move || node.store.body(&address, &id))
            .await
            .map_err(ApiError::internal)?
    };
    match found.map_err(ApiError::internal)? {
        Some(body) => Ok(([(header::CONTENT_TYPE, "message/rfc822")], body)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{address} holds no message {}", q.message_id),
        )),
    }
}

/// `GET /api/disk`: free space where the store and logs are, against `min_free_space`.
async fn disk(State(node): State<Arc<MailboxNode>>) -> Json<Vec<crate::space::Reading>> {
    Json(node.space.readings())
}

/// `GET /metrics`: the node's counters, with its replication state as `GET /api/status` has it.
async fn metrics(State(node): State<Arc<MailboxNode>>) -> Result<impl IntoResponse, ApiError> {
    let status = cluster::node_status(&node);
    let text = node
        .metrics
        .encode(&status, &node.space.readings(), now_ms())
        .map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)], text))
}

//! A mailbox node's cluster routes: heartbeats, log shipping, copy status and control, scheduled
//! moves, and the outstanding dumpster requests.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use store::mailbox::snapshot::Encoder;
use store::txlog::TxLogError;

use super::{rejection, ApiError};
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::cluster::machine::{Heartbeat, Role};
use crate::node::copy_admin::{CopyCommand, CopyRefused};
use crate::node::outstanding::Takeover;
use crate::node::replication::LogStatus;
use crate::node::state::Outstanding;
use crate::node::MailboxNode;
use crate::wire::cluster::{
    CopyBody, CopyCommandView, MoveBody, MoveResult, NodeStatus, OutstandingView,
    ResubmissionError, SgCopyStatus,
};

/// Answers the peer's heartbeat with ours, after feeding it to the state machine.
pub async fn heartbeat(
    State(node): State<Arc<MailboxNode>>,
    body: Result<Json<Heartbeat>, JsonRejection>,
) -> Result<Json<Heartbeat>, ApiError> {
    let Json(hb) = body.map_err(rejection)?;
    if hb.node != node.peer.name {
        return Err(ApiError::bad_request(format!(
            "`{}` is not the other node of this CMS",
            hb.node
        )));
    }
    node.on_peer_heartbeat(hb).await;
    Ok(Json(node.own_heartbeat()))
}

/// The node's status.
pub async fn status(State(node): State<Arc<MailboxNode>>) -> Json<NodeStatus> {
    Json(node_status(&node))
}

/// The node's status as `GET /api/status` reports it (also what `/metrics` reports per SG).
pub(crate) fn node_status(node: &MailboxNode) -> NodeStatus {
    let now = crate::clock::mono_ms();
    // Taken before the copies' lock: the state is never locked inside it.
    let (notes, refused) = {
        let st = node.state();
        (
            st.copy_notes.clone(),
            resubmission_errors(node, &st.outstanding),
        )
    };
    let refused_of = |sg: &str| -> Vec<ResubmissionError> {
        refused
            .iter()
            .filter(|(s, _)| s == sg)
            .map(|(_, e)| e.clone())
            .collect()
    };
    let note = |sg: &str| {
        notes.get(sg).map(|n| CopyCommandView {
            command: n.command.clone(),
            comment: n.comment.clone(),
            at: rfc3339(n.at_ms),
            suspended: n.suspended,
            node: node.name.clone(),
        })
    };
    let (role, reason, epoch, sees_peer, witness_ok, lease_holder) = {
        let m = node.machine();
        let (role, reason) = match m.role() {
            Role::Active => ("Active", None),
            Role::Passive => ("Passive", None),
            Role::Dismounted(r) => ("Dismounted", Some(r.clone())),
        };
        (
            role,
            reason,
            m.epoch(),
            m.sees_peer(now),
            m.witness_ok(),
            m.lease().map(|l| l.holder.clone()),
        )
    };
    let generated = node.generated();
    let copies = node.copies();
    let storage_groups = node
        .storage_groups()
        .into_iter()
        .map(|sg| {
            let checkpoint = node.store.checkpoint(&sg).ok().flatten();
            let replayed = checkpoint.map(|(p, _)| p.generation).unwrap_or(0);
            let newest_replayed = checkpoint.map(|(_, t)| rfc3339(t));
            match copies.get(&sg) {
                Some(c) => {
                    let behind_since = c
                        .unhealthy_since_ms
                        .map(|since| rfc3339(since.max(checkpoint.map_or(0, |(_, t)| t))));
                    let copied = c.copy.last_copied();
                    let gen = c.remote_generated.max(copied);
                    SgCopyStatus {
                        copy_command: note(&sg),
                        resubmission_errors: refused_of(&sg),
                        name: sg,
                        last_log_generated: gen,
                        last_log_copied: Some(copied),
                        last_log_replayed: Some(replayed.min(copied)),
                        copy_queue_length: Some(gen - copied),
                        replay_queue_length: Some(copied - replayed.min(copied)),
                        summary_copy_status: Some(c.reported_status()),
                        error: c.reported_error(),
                        newest_replayed,
                        behind_since,
                        seed: c
                            .seeding
                            .as_ref()
                            .map(|s| s.progress())
                            .or_else(|| c.last_seed.clone()),
                    }
                }
                None => {
                    let database_error = node.writer(&sg).and_then(|w| w.failure());
                    SgCopyStatus {
                        last_log_generated: generated.get(&sg).copied().unwrap_or(0),
                        copy_command: note(&sg),
                        resubmission_errors: refused_of(&sg),
                        name: sg,
                        last_log_copied: None,
                        last_log_replayed: None,
                        copy_queue_length: None,
                        replay_queue_length: None,
                        summary_copy_status: None,
                        error: database_error,
                        newest_replayed,
                        behind_since: None,
                        seed: None,
                    }
                }
            }
        })
        .collect();
    NodeStatus {
        node: node.name.clone(),
        cms: node.site.cms[node.cms].name.clone(),
        role: role.to_string(),
        reason,
        mounted: node.is_active(),
        epoch,
        sees_peer,
        witness_ok,
        lease_holder,
        storage_groups,
    }
}

/// Per storage group, the requests of `outstanding` that a hub refuses.
fn resubmission_errors(
    node: &MailboxNode,
    outstanding: &[Outstanding],
) -> Vec<(String, ResubmissionError)> {
    outstanding
        .iter()
        .filter_map(|o| {
            let r = o.refused.as_ref()?;
            Some((
                o.storage_group.clone(),
                ResubmissionError {
                    hub: o.hub.clone(),
                    request: o.id.clone(),
                    node: node.name.clone(),
                    error: r.error.clone(),
                    since: rfc3339(r.since_ms),
                },
            ))
        })
        .collect()
}

/// Dumpster requests this node is still waiting on, refused ones with the hub's error. Bounds
/// are on the hub's clock: as the hub recorded them, or as asked until it answered.
pub async fn outstanding(
    State(node): State<Arc<MailboxNode>>,
) -> Json<Vec<(String, OutstandingView)>> {
    let list = node
        .state()
        .outstanding
        .iter()
        .map(|o| {
            let (low, high) = match &o.recorded {
                Some(w) => (w.low.clone(), Some(w.high.clone())),
                None => (rfc3339(o.hub_low_ms), None),
            };
            (
                o.storage_group.clone(),
                OutstandingView {
                    hub: o.hub.clone(),
                    storage_group: o.storage_group.clone(),
                    low,
                    high,
                    error: o.refused.as_ref().map(|r| r.error.clone()),
                },
            )
        })
        .collect();
    Json(list)
}

fn known_sg(node: &MailboxNode, sg: &str) -> Result<(), ApiError> {
    if node.storage_groups().iter().any(|s| s == sg) {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no storage group `{sg}` on this CMS"),
        ))
    }
}

/// What can be copied of a storage group's log (active node only).
pub async fn log_status(
    State(node): State<Arc<MailboxNode>>,
    Path(sg): Path<String>,
    Query(report): Query<CopyReport>,
) -> Result<Json<LogStatus>, ApiError> {
    known_sg(&node, &sg)?;
    let Some(w) = node.writer(&sg) else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not active", node.name),
        ));
    };
    if let (Some(epoch), Some(next)) = (report.epoch, report.next) {
        node.note_copy_report(&sg, epoch, next);
    }
    let st = node.state();
    Ok(Json(LogStatus {
        epoch: w.epoch(),
        epochs: st.epochs.clone(),
        last_generated: w.last_generated(),
        last_closed: w.last_closed(),
    }))
}

/// What the other node's copy says with its `GET /api/logs/{sg}`: the active epoch it follows and
/// the next generation it needs (everything before is in its copy), so the active keeps that.
#[derive(Debug, Deserialize)]
pub struct CopyReport {
    epoch: Option<u64>,
    next: Option<u64>,
}

/// A closed log generation, raw (active node only).
pub async fn log_file(
    State(node): State<Arc<MailboxNode>>,
    Path((sg, generation)): Path<(String, u64)>,
) -> Result<impl IntoResponse, ApiError> {
    known_sg(&node, &sg)?;
    let Some(w) = node.writer(&sg) else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not active", node.name),
        ));
    };
    let bytes = tokio::task::spawn_blocking(move || w.read_closed(generation))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| match e {
            TxLogError::Truncated { .. } => ApiError(StatusCode::GONE, e.to_string()),
            e => ApiError(StatusCode::NOT_FOUND, e.to_string()),
        })?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], bytes))
}

/// A snapshot of a storage group's store up to its checkpoint, streamed (active node only): what a
/// reseed of the other node's copy installs before copying the logs from there.
pub async fn snapshot(
    State(node): State<Arc<MailboxNode>>,
    Path(sg): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    known_sg(&node, &sg)?;
    let Some((header, reader)) = node
        .snapshot_source(&sg)
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{} is not active", node.name),
        ));
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let name = node.name.clone();
    tokio::task::spawn_blocking(move || {
        let mut enc = Encoder::default();
        if tx.blocking_send(enc.header(&header)).is_err() {
            return;
        }
        for rec in reader {
            match rec {
                Ok(r) => {
                    if tx.blocking_send(enc.record(&r)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    // Ending without the trailer: the copy sees an incomplete snapshot.
                    tracing::warn!(node = %name, storage_group = %header.storage_group, error = %e, "snapshot cut short");
                    return;
                }
            }
        }
        let _ = tx.blocking_send(enc.trailer());
    });
    let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|piece| (Ok::<_, std::convert::Infallible>(piece), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(pieces),
    ))
}

/// Scheduled move away from this (active) node.
pub async fn move_away(
    State(node): State<Arc<MailboxNode>>,
    body: Result<Json<MoveBody>, JsonRejection>,
) -> Result<Json<MoveResult>, ApiError> {
    let Json(b) = body.map_err(rejection)?;
    if let Some(t) = &b.target {
        if *t != node.peer.name {
            return Err(ApiError::bad_request(format!(
                "`{t}` is not the other node of this CMS (it is {})",
                node.peer.name
            )));
        }
    }
    let started = now_ms();
    tracing::info!(node = %node.name, comment = b.comment.as_deref().unwrap_or(""), "scheduled move requested");
    let last_closed = node
        .move_to_peer()
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, e))?;
    Ok(Json(MoveResult {
        from: node.name.clone(),
        to: node.peer.name.clone(),
        last_closed,
        millis: now_ms() - started,
    }))
}

/// The target side of a scheduled move.
pub async fn takeover(
    State(node): State<Arc<MailboxNode>>,
    body: Result<Json<Takeover>, JsonRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Json(t) = body.map_err(rejection)?;
    node.take_over(&t.last_closed)
        .await
        .map_err(|e| ApiError(StatusCode::CONFLICT, e))?;
    Ok(Json(serde_json::json!({"node": node.name, "active": true})))
}

/// Suspend-, Resume-, Update- or Restore-StorageGroupCopy on this node (409 with the reason
/// where it is unsafe); an optional JSON body carries the administrator's comment.
pub async fn copy_op(
    State(node): State<Arc<MailboxNode>>,
    Path((sg, op)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<NodeStatus>, ApiError> {
    known_sg(&node, &sg)?;
    let command = CopyCommand::parse(&op).ok_or_else(|| {
        ApiError::bad_request(format!(
            "unknown copy command `{op}` (suspend, resume, update, restore)"
        ))
    })?;
    let CopyBody { comment } = if body.iter().all(u8::is_ascii_whitespace) {
        CopyBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::bad_request(e.to_string()))?
    };
    node.copy_command(&sg, command, comment)
        .map_err(|e| match e {
            CopyRefused::Node(e) => ApiError::internal(e),
            refused => ApiError(StatusCode::CONFLICT, refused.to_string()),
        })?;
    Ok(Json(node_status(&node)))
}

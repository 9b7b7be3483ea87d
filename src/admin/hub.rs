//! A hub's admin routes: dumpster statistics, resubmission, queue summary, metrics; the queue's
//! own routes are in [`super::queue`].

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::DateTime;
use store::hub::{ResubmitFilter, ResubmitRequest};

use super::{rejection, ApiError};
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::hub::metrics::HubState;
use crate::hub::{Hub, HubError};
use crate::space::Reading;
use crate::telemetry;
use crate::wire::hub::{HubDumpsterStats, QueueSummary, ResubmitBody, ResubmitState, StatsQuery};

/// The routes of a hub.
pub fn hub_router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route("/api/queue", get(queue))
        .route("/api/dumpster", get(dumpster))
        .route("/api/disk", get(disk))
        .route("/api/resubmit", post(resubmit))
        .route("/api/resubmit/:id", get(resubmit_state))
        .merge(super::queue::routes())
        .with_state(hub)
}

fn stats_of(hub: &Hub, sg: &str) -> Result<HubDumpsterStats, ApiError> {
    let s = hub
        .store
        .dumpster_stats(sg, now_ms(), hub.limits())
        .map_err(ApiError::internal)?;
    Ok(HubDumpsterStats {
        hub: hub.name.clone(),
        storage_group: sg.to_string(),
        oldest: s.oldest_received_ms.map(rfc3339),
        oldest_delivered: s.oldest_delivered_ms.map(rfc3339),
        items: s.items,
        bytes: s.bytes,
        evicted: s.evicted,
        expired: s.expired,
        too_large: s.too_large,
    })
}

fn known_sg(hub: &Hub, sg: &str) -> Result<(), ApiError> {
    if hub.site.cms_of_storage_group(sg).is_some() {
        Ok(())
    } else {
        Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no storage group named `{sg}` in site {}", hub.site.name),
        ))
    }
}

async fn dumpster(
    State(hub): State<Arc<Hub>>,
    q: Result<Query<StatsQuery>, QueryRejection>,
) -> Result<Json<Vec<HubDumpsterStats>>, ApiError> {
    let Query(q) = q.map_err(rejection)?;
    let sgs = match q.storage_group {
        Some(sg) => {
            known_sg(&hub, &sg)?;
            vec![sg]
        }
        None => hub.site.storage_group_names(),
    };
    let stats = sgs
        .iter()
        .map(|sg| stats_of(&hub, sg))
        .collect::<Result<_, _>>()?;
    Ok(Json(stats))
}

fn parse_time(field: &str, value: &str) -> Result<u64, ApiError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis().max(0) as u64)
        .map_err(|e| {
            ApiError::bad_request(format!("`{field}`: `{value}` is not an RFC 3339 time: {e}"))
        })
}

fn state(hub: &Hub, r: ResubmitRequest) -> ResubmitState {
    ResubmitState {
        hub: hub.name.clone(),
        id: r.id,
        storage_group: r.storage_group,
        low: rfc3339(r.low_ms),
        high: rfc3339(r.high_ms),
        filter: r.filter,
        done: r.done,
        messages: r.messages,
    }
}

async fn resubmit(
    State(hub): State<Arc<Hub>>,
    body: Result<Json<ResubmitBody>, JsonRejection>,
) -> Result<Json<ResubmitState>, ApiError> {
    let Json(b) = body.map_err(rejection)?;
    if b.id.trim().is_empty() || b.id.len() > 200 {
        return Err(ApiError::bad_request("`id` must be 1 to 200 characters"));
    }
    known_sg(&hub, &b.storage_group)?;
    let low = parse_time("low", &b.low)?;
    let high = b
        .high
        .as_deref()
        .map(|v| parse_time("high", v))
        .transpose()?;
    if let Some(rcpt) = &b.recipient {
        let sg = hub.site.route(rcpt).map(|r| r.storage_group);
        if sg.as_deref() != Some(b.storage_group.as_str()) {
            return Err(ApiError::bad_request(format!(
                "`recipient` {rcpt} is not a mailbox of storage group {}",
                b.storage_group
            )));
        }
    }
    if b.message_id.as_deref().is_some_and(|m| m.trim().is_empty()) {
        return Err(ApiError::bad_request("`message_id` is empty"));
    }
    // Noted before the dumpster is read: a late 250 of an older epoch is either in what the
    // request reads or judged late when it arrives ([`Hub::note_epoch`]).
    if let Some(epoch) = b.epoch {
        hub.note_epoch(&b.storage_group, epoch);
    }
    let filter = ResubmitFilter {
        recipient: b.recipient,
        sender: b.sender,
        message_id: b.message_id,
        test_only: b.test_only,
    };
    let r = hub
        .resubmit(&b.id, &b.storage_group, (low, high), &filter)
        .await
        .map_err(|e| match e {
            HubError::Window(w) => ApiError::bad_request(w.to_string()),
            e => ApiError::internal(e),
        })?;
    Ok(Json(state(&hub, r)))
}

async fn resubmit_state(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<Json<ResubmitState>, ApiError> {
    let found = hub
        .store
        .resubmit_requests()
        .map_err(ApiError::internal)?
        .into_iter()
        .find(|r| r.id == id);
    match found {
        Some(r) => Ok(Json(state(&hub, r))),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no resubmission request `{id}`"),
        )),
    }
}

async fn queue(State(hub): State<Arc<Hub>>) -> Result<Json<QueueSummary>, ApiError> {
    let messages = hub.store.queue_len();
    // A scan of the queue, so only when there is one (the usual queue is empty), and off the
    // runtime's threads: a backlog of tens of thousands after a failover takes a while to read.
    let oldest = if messages == 0 {
        None
    } else {
        let reader = hub.clone();
        let queued = tokio::task::spawn_blocking(move || reader.store.queued())
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?;
        queued.iter().map(|m| m.received_ms).min()
    };
    Ok(Json(QueueSummary {
        hub: hub.name.clone(),
        messages,
        oldest_age_seconds: oldest.map(|t| now_ms().saturating_sub(t) / 1000),
    }))
}

/// `GET /api/disk`: free space where the store is, against `min_free_space` (`health`, the
/// dashboard).
async fn disk(State(hub): State<Arc<Hub>>) -> Json<Vec<Reading>> {
    Json(hub.space.readings())
}

/// `GET /metrics`: the hub's counters, with the queue and dumpster read from the store now.
async fn metrics(State(hub): State<Arc<Hub>>) -> Result<impl IntoResponse, ApiError> {
    let reader = hub.clone();
    let state = tokio::task::spawn_blocking(move || hub_state(&reader))
        .await
        .map_err(ApiError::internal)?;
    let text = hub.metrics.encode(&state).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, telemetry::CONTENT_TYPE)], text))
}

/// What `/metrics` reports of the store (blocking: the oldest queued message takes a queue scan).
/// A store that cannot be read (a failed disk, until it is opened again) leaves its series out,
/// so the free-space series that explain it are still scraped.
fn hub_state(hub: &Hub) -> HubState {
    let now_ms = now_ms();
    let dumpster = hub
        .site
        .storage_group_names()
        .into_iter()
        .filter_map(|sg| {
            let s = hub.store.dumpster_stats(&sg, now_ms, hub.limits()).ok()?;
            Some((sg, s))
        })
        .collect();
    let oldest_queued_ms = hub
        .store
        .queued()
        .ok()
        .and_then(|q| q.iter().map(|m| m.received_ms).min());
    HubState {
        now_ms,
        queue_messages: hub.store.queue_len() as u64,
        oldest_queued_ms,
        dumpster,
        disk: hub.space.readings(),
        bodies: hub.store.body_usage(),
    }
}

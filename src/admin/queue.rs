//! A hub's queue routes: the messages with their per-recipient state, and an administrator's
//! retry, hold, release and delete (what `hubrelay queue` calls).
//!
//! Ids in paths and answers are hex, as in `250 2.0.0 queued as 1a2b`. An unknown id is a 404,
//! an action the message's state does not allow (releasing a message that is not held, retrying
//! a held one, holding or deleting while an attempt will not finish) a 409, bad input a 400.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use store::hub::{HubStoreError, QueuedMessage, RcptStatus};
use tracing::warn;

use super::{rejection, ApiError};
use crate::clock::now_ms;
use crate::clock::rfc3339;
use crate::hub::queue::{Deletion, QueueId, DELETED};
use crate::hub::{Hub, HubError};
use crate::wire::queue::{DeleteBody, DeleteReport, MessageView, RecipientView, RetryAllReport};

/// Longest `by` and `reason` of a delete: they go into one log line.
const MAX_TEXT: usize = 500;

/// The queue routes of a hub, merged into its router.
pub fn routes() -> Router<Arc<Hub>> {
    Router::new()
        .route("/api/queue/messages", get(list))
        .route("/api/queue/messages/:id", get(show).delete(delete))
        .route("/api/queue/messages/:id/retry", post(retry))
        .route("/api/queue/messages/:id/hold", post(hold))
        .route("/api/queue/messages/:id/release", post(release))
        .route("/api/queue/retry", post(retry_all))
}

fn queue_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<QueueId>()
        .map(|q| q.0)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Maps a hub error to its status: unknown id 404, state conflicts 409, the rest 500.
fn refused(hub: &Hub, e: HubError) -> ApiError {
    match e {
        HubError::Store(HubStoreError::UnknownMessage(id)) => ApiError(
            StatusCode::NOT_FOUND,
            format!("no message {} in the queue of {}", QueueId(id), hub.name),
        ),
        HubError::Store(
            HubStoreError::AlreadyHeld(_) | HubStoreError::NotHeld(_) | HubStoreError::Held(_),
        )
        | HubError::Busy(_) => ApiError(StatusCode::CONFLICT, e.to_string()),
        e => {
            warn!(hub = %hub.name, error = %e, "queue request failed");
            ApiError::internal(e)
        }
    }
}

fn view(hub: &Hub, msg: &QueuedMessage) -> Json<MessageView> {
    Json(message_view(&hub.name, msg, now_ms()))
}

async fn list(State(hub): State<Arc<Hub>>) -> Result<Json<Vec<MessageView>>, ApiError> {
    let now = now_ms();
    let all = hub.queue_messages().await.map_err(|e| refused(&hub, e))?;
    Ok(Json(
        all.iter()
            .map(|m| message_view(&hub.name, m, now))
            .collect(),
    ))
}

async fn show(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let id = queue_id(&id)?;
    match hub.queue_message(id).await {
        Ok(Some(m)) => Ok(view(&hub, &m)),
        Ok(None) => Err(refused(
            &hub,
            HubError::Store(HubStoreError::UnknownMessage(id)),
        )),
        Err(e) => Err(refused(&hub, e)),
    }
}

async fn retry(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let m = hub
        .retry(queue_id(&id)?)
        .await
        .map_err(|e| refused(&hub, e))?;
    Ok(view(&hub, &m))
}

async fn hold(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let m = hub
        .hold(queue_id(&id)?)
        .await
        .map_err(|e| refused(&hub, e))?;
    Ok(view(&hub, &m))
}

async fn release(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let m = hub
        .release(queue_id(&id)?)
        .await
        .map_err(|e| refused(&hub, e))?;
    Ok(view(&hub, &m))
}

async fn retry_all(State(hub): State<Arc<Hub>>) -> Result<Json<RetryAllReport>, ApiError> {
    let r = hub.retry_all().await.map_err(|e| refused(&hub, e))?;
    let hex = |ids: Vec<u64>| ids.into_iter().map(|i| QueueId(i).to_string()).collect();
    Ok(Json(RetryAllReport {
        hub: hub.name.clone(),
        retried: hex(r.retried),
        held: hex(r.held),
    }))
}

/// A `by` or `reason` that fits one log line: not blank, not too long, no control characters.
fn log_text(field: &str, value: &str) -> Result<String, ApiError> {
    let value = value.trim();
    if value.is_empty() || value.chars().count() > MAX_TEXT || value.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "`{field}` must be 1 to {MAX_TEXT} characters without control characters"
        )));
    }
    Ok(value.to_string())
}

async fn delete(
    State(hub): State<Arc<Hub>>,
    Path(id): Path<String>,
    body: Result<Json<DeleteBody>, JsonRejection>,
) -> Result<Json<DeleteReport>, ApiError> {
    let id = queue_id(&id)?;
    let Json(b) = body.map_err(rejection)?;
    let deletion = Deletion {
        dsn: b.dsn,
        reason: log_text("reason", b.reason.as_deref().unwrap_or(DELETED))?,
        by: log_text("by", &b.by)?,
    };
    let m = hub
        .delete(id, &deletion)
        .await
        .map_err(|e| refused(&hub, e))?;
    Ok(Json(DeleteReport {
        message: message_view(&hub.name, &m, now_ms()),
        dsn: deletion.dsn,
        reason: deletion.reason,
        by: deletion.by,
    }))
}

/// The view of `msg` on hub `hub` at `now_ms`.
fn message_view(hub: &str, msg: &QueuedMessage, now_ms: u64) -> MessageView {
    let recipients: Vec<RecipientView> = msg
        .recipients
        .iter()
        .map(|r| {
            let (state, last_error) = match &r.status {
                RcptStatus::Pending => ("pending", None),
                RcptStatus::Deferred { reason } => ("deferred", Some(reason.clone())),
                RcptStatus::Delivered { .. } => ("delivered", None),
                RcptStatus::Failed { code, reason, .. } => {
                    ("failed", Some(format!("{code} {reason}")))
                }
            };
            RecipientView {
                address: r.address.clone(),
                storage_group: r.storage_group.clone(),
                state: state.to_string(),
                last_error,
            }
        })
        .collect();
    let last_error = msg
        .recipients
        .iter()
        .zip(&recipients)
        .find(|(r, _)| r.status.is_open())
        .and_then(|(_, v)| v.last_error.clone());
    MessageView {
        hub: hub.to_string(),
        id: QueueId(msg.id).to_string(),
        message_id: msg.message_id.clone(),
        sender: msg.sender.clone(),
        size: msg.size,
        arrival: rfc3339(msg.received_ms),
        age_seconds: now_ms.saturating_sub(msg.received_ms) / 1000,
        attempts: msg.attempts,
        next_attempt: (!msg.is_held()).then(|| rfc3339(msg.next_attempt_ms)),
        last_error,
        expires: rfc3339(msg.expires_ms),
        held: msg.is_held(),
        held_since: msg.held_since_ms.map(rfc3339),
        resubmission: msg.resubmission.clone(),
        recipients,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_refuses_what_would_break_a_log_line() {
        assert_eq!(log_text("by", "  ops@host ").unwrap(), "ops@host");
        assert!(log_text("by", " ").is_err());
        assert!(log_text("reason", "spam\nfake log line").is_err());
        assert!(log_text("reason", &"x".repeat(MAX_TEXT + 1)).is_err());
    }
}

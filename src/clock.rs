//! Time, at the bottom of every layer: the wall clock (what records, windows and retention are
//! stamped with) and this process's monotonic clock (what timeouts and leases are measured with,
//! so that a step of the wall clock stretches nothing), how times are shown, and resubmission
//! windows ([`window`]), which live on the clock of the hub that serves them.

pub mod window;

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use chrono::{TimeZone, Utc};

/// Milliseconds since the Unix epoch on this host's wall clock: the store's clock. Never compared
/// with another host's for a safety decision.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Milliseconds on this process's monotonic clock: what the cluster state machine measures
/// timeouts and lease validity with, so a step of the wall clock stretches nothing.
pub fn mono_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Milliseconds since the epoch as RFC 3339 UTC with milliseconds: how every API and the CLI show
/// a time.
pub fn rfc3339(ms: u64) -> String {
    Utc.timestamp_millis_opt(ms as i64)
        .single()
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

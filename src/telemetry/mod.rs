//! What a role tells operators besides its admin API: Prometheus metrics at `/metrics` and log
//! lines on stderr.
//!
//! Each role owns one [`prometheus_client`] registry ([`crate::hub::metrics`],
//! [`crate::node::metrics`]) whose every series carries the role's name as a label, so the hubs
//! and nodes of an embedded site (`hubrelay site`) never mix. Label values go through the crate's
//! encoder, which escapes quotes, backslashes and newlines; nothing here writes exposition text by
//! hand.

pub mod disk;
pub mod histogram;
pub mod logging;

use std::borrow::Cow;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::registry::Registry;

/// The `Content-Type` of `/metrics`: OpenMetrics text, which Prometheus scrapes natively.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Every metric name starts with this (`hubrelay_…`).
pub const PREFIX: &str = "hubrelay";

/// The label set of a per-storage-group series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SgLabels {
    /// The storage group, as named in the site file.
    pub storage_group: String,
}

impl SgLabels {
    /// The labels of storage group `sg`.
    pub fn new(sg: &str) -> SgLabels {
        SgLabels {
            storage_group: sg.to_string(),
        }
    }
}

/// A registry whose series all carry `labels` (the role's identity) and the `hubrelay_` prefix.
pub fn registry(labels: &[(&'static str, &str)]) -> Registry {
    Registry::with_prefix_and_labels(
        PREFIX,
        labels
            .iter()
            .map(|(k, v)| (Cow::Borrowed(*k), Cow::Owned(v.to_string()))),
    )
}

/// The OpenMetrics text of `registry`, ending with `# EOF`.
pub fn encode(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}

/// Whole milliseconds as seconds, for the `_seconds` gauges.
pub fn seconds(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

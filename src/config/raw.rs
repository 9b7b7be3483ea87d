//! The site file as written: the serde `Raw*` tables, one field per accepted key (each refuses keys
//! it does not know), and the `default_*` functions that fill in a key left out. These defaults are
//! the only ones, mirrored in `config/site.toml`; `build` turns a `RawConfig` into a checked `Site`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{AdminTls, AutoDatabaseMountDial, DeliveryTls, Dur, Size};
use crate::smtp::BareNewline;

fn default_max_message_size() -> Size {
    Size(10_000_000)
}
/// sled's page cache per store: its default (1 GiB) let a hub's memory grow with its dumpster.
fn default_store_cache_size() -> Size {
    Size(64 * 1024 * 1024)
}
/// Postfix's `in_flow_delay` default.
fn default_in_flow_delay() -> Dur {
    Dur(Duration::from_secs(1))
}
/// A node on the site's own network answers a connection and MAIL in milliseconds, even loaded
/// and with a TLS handshake; 2 s leaves it that margin many times over and still passes a silent
/// node over quickly. (Postfix's `smtp_connect_timeout`, 30 s, is made for the Internet.)
fn default_node_connect_timeout() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(2)))
}
/// Room to finish what a role holds when the disk fills: messages in flight, a log generation
/// to seal, a handover. Postfix asks for 1.5 × message_size_limit (15 MB with ours); a busy role
/// has many messages in flight, so some more.
fn default_min_free_space() -> Size {
    Size(256 * 1024 * 1024)
}
fn default_max_dumpster_size() -> Size {
    Size(18_000_000)
}
fn default_max_dumpster_time() -> Dur {
    Dur(Duration::from_secs(7 * 86_400))
}
fn default_message_expiry() -> Dur {
    Dur(Duration::from_secs(2 * 86_400))
}
fn default_retry_min() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_retry_max() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_max_recipients() -> Spanned<usize> {
    Spanned::new(0..0, 100)
}
fn default_max_connections() -> Spanned<usize> {
    Spanned::new(0..0, 500)
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_data_timeout() -> Dur {
    Dur(Duration::from_secs(180))
}
fn default_max_connections_per_client() -> Spanned<usize> {
    Spanned::new(0..0, 50)
}
fn default_connection_limit_exceptions() -> Vec<IpNet> {
    ["127.0.0.0/8", "::1/128"]
        .iter()
        .map(|n| {
            n.parse()
                .expect("the default exceptions are valid networks")
        })
        .collect()
}
// Spanned defaults sit at offset 0: an error about a key left at its default points at line 1.
fn default_dedup_retention() -> Spanned<Dur> {
    Spanned::new(0..0, Dur(Duration::from_secs(14 * 86_400)))
}
fn default_resubmit_rate() -> Spanned<u64> {
    Spanned::new(0..0, 500)
}
fn default_require_tls() -> Spanned<bool> {
    Spanned::new(0..0, false)
}
fn default_admin_tls() -> Spanned<AdminTls> {
    Spanned::new(0..0, AdminTls::Off)
}
fn default_delivery_tls() -> Spanned<DeliveryTls> {
    Spanned::new(0..0, DeliveryTls::Opportunistic)
}
fn default_dial() -> AutoDatabaseMountDial {
    AutoDatabaseMountDial::GoodAvailability
}
fn default_log_file_size() -> Size {
    Size(1 << 20)
}
fn default_log_tail() -> u64 {
    8
}

/// The whole file: one `[site]`, any number of `[[hub]]` and `[[cms]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) site: RawSite,
    #[serde(default)]
    pub(super) hub: Vec<RawHub>,
    #[serde(default)]
    pub(super) cms: Vec<RawCms>,
}

/// `[site]`: the keys that hold for every role, and the TLS defaults hubs and nodes inherit.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    pub(super) name: String,
    pub(super) accepted_domains: Vec<Spanned<String>>,
    #[serde(default = "default_max_message_size")]
    pub(super) max_message_size: Size,
    #[serde(default = "default_max_dumpster_size")]
    pub(super) max_dumpster_size_per_storage_group: Size,
    #[serde(default = "default_max_dumpster_time")]
    pub(super) max_dumpster_time: Dur,
    #[serde(default = "default_message_expiry")]
    pub(super) message_expiry: Dur,
    #[serde(default = "default_retry_min")]
    pub(super) retry_min: Dur,
    #[serde(default = "default_retry_max")]
    pub(super) retry_max: Dur,
    #[serde(default = "default_max_recipients")]
    pub(super) max_recipients: Spanned<usize>,
    #[serde(default = "default_max_connections")]
    pub(super) max_connections: Spanned<usize>,
    #[serde(default = "default_idle_timeout")]
    pub(super) idle_timeout: Dur,
    #[serde(default = "default_max_connections_per_client")]
    pub(super) max_connections_per_client: Spanned<usize>,
    #[serde(default = "default_connection_limit_exceptions")]
    pub(super) connection_limit_exceptions: Vec<IpNet>,
    #[serde(default = "default_data_timeout")]
    pub(super) data_timeout: Dur,
    #[serde(default)]
    pub(super) bare_newline: BareNewline,
    #[serde(default = "default_resubmit_rate")]
    pub(super) resubmit_rate: Spanned<u64>,
    #[serde(default = "default_dedup_retention")]
    pub(super) dedup_retention: Spanned<Dur>,
    pub(super) admin_token: Option<Spanned<String>>,
    pub(super) admin_token_file: Option<Spanned<PathBuf>>,
    pub(super) delivery_secret_file: Option<Spanned<PathBuf>>,
    pub(super) tls_certificate: Option<Spanned<PathBuf>>,
    pub(super) tls_private_key: Option<Spanned<PathBuf>>,
    #[serde(default = "default_require_tls")]
    pub(super) require_tls: Spanned<bool>,
    pub(super) tls_ca: Option<Spanned<PathBuf>>,
    #[serde(default = "default_delivery_tls")]
    pub(super) delivery_tls: Spanned<DeliveryTls>,
    #[serde(default = "default_admin_tls")]
    pub(super) admin_tls: Spanned<AdminTls>,
    pub(super) admin_client_certificate: Option<Spanned<PathBuf>>,
    pub(super) admin_client_private_key: Option<Spanned<PathBuf>>,
    #[serde(default = "default_store_cache_size")]
    pub(super) store_cache_size: Size,
    #[serde(default = "default_in_flow_delay")]
    pub(super) in_flow_delay: Dur,
    #[serde(default = "default_node_connect_timeout")]
    pub(super) node_connect_timeout: Spanned<Dur>,
    #[serde(default = "default_min_free_space")]
    pub(super) min_free_space: Size,
}

/// One `[[hub]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHub {
    pub(super) name: Spanned<String>,
    pub(super) smtp: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) tls_certificate: Option<Spanned<PathBuf>>,
    pub(super) tls_private_key: Option<Spanned<PathBuf>>,
    pub(super) require_tls: Option<Spanned<bool>>,
}

/// One `[[cms]]`, with its nodes and storage groups nested.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCms {
    pub(super) name: Spanned<String>,
    #[serde(default = "default_dial")]
    pub(super) auto_database_mount_dial: AutoDatabaseMountDial,
    pub(super) witness: Spanned<String>,
    pub(super) witness_tls_ca: Option<Spanned<PathBuf>>,
    pub(super) witness_tls_certificate: Option<Spanned<PathBuf>>,
    pub(super) witness_tls_private_key: Option<Spanned<PathBuf>>,
    pub(super) witness_user: Option<Spanned<String>>,
    pub(super) witness_password_file: Option<Spanned<PathBuf>>,
    #[serde(default = "default_log_file_size")]
    pub(super) log_file_size: Size,
    #[serde(default)]
    pub(super) max_log_backlog: Option<Size>,
    #[serde(default = "default_log_tail")]
    pub(super) log_tail: u64,
    #[serde(default)]
    pub(super) node: Vec<RawNode>,
    #[serde(default)]
    pub(super) storage_group: Vec<RawSg>,
}

/// One `[[cms.node]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) name: Spanned<String>,
    pub(super) smtp: SocketAddr,
    pub(super) admin: SocketAddr,
    pub(super) tls_certificate: Option<Spanned<PathBuf>>,
    pub(super) tls_private_key: Option<Spanned<PathBuf>>,
    pub(super) require_tls: Option<Spanned<bool>>,
}

/// One `[[cms.storage_group]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSg {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) mailboxes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) domains: Vec<Spanned<String>>,
}

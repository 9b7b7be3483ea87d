//! The site configuration: one TOML file describes every hub and clustered mailbox server (SPEC §3).
//!
//! Parsing never opens a socket or a file other than the config (and an `admin_token_file`). Every error
//! names the file, the line and the key, because an operator fixing a typo at 3 a.m. needs exactly that.
//! Defaults live in one place: the `default_*` functions below, mirrored in `config/site.toml`.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::smtp::{BareNewline, TlsFiles};

pub mod sanity;

/// A configuration error, already located in the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The config file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Bad TOML, an unknown key, a wrong type or an invalid value.
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        /// The config file.
        file: PathBuf,
        /// 1-based line of the offending value (0 when TOML gave no position).
        line: usize,
        /// Dotted key path, e.g. `cms.storage_group.mailboxes`.
        key: String,
        /// What is wrong and what to do about it.
        message: String,
    },
}

/// How many transaction logs a passive copy may be missing and still mount after a failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum AutoDatabaseMountDial {
    /// No log may be missing.
    Lossless,
    /// Up to 3 logs missing (the default, as in Exchange 2007).
    GoodAvailability,
    /// Up to 6 logs missing.
    BestAvailability,
}

impl AutoDatabaseMountDial {
    /// The number of missing logs this dial tolerates (Exchange 2007 values).
    pub fn max_lost_logs(self) -> u64 {
        match self {
            Self::Lossless => 0,
            Self::GoodAvailability => 3,
            Self::BestAvailability => 6,
        }
    }
}

/// Whether a hub delivers to mailbox nodes over STARTTLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryTls {
    /// Never: clear text even when the node offers STARTTLS.
    Off,
    /// When the node offers STARTTLS, without checking its certificate (the default): protects
    /// against listening, not against an impostor.
    Opportunistic,
    /// Always, with the node's certificate verified against `tls_ca` and its address; a node
    /// that does not offer STARTTLS or fails the check is a temporary failure (mail waits).
    Required,
}

/// A byte size written as `"18MB"`, `"1MiB"` or a plain integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

/// The text form, shared by the site file and command-line options (`bench --size`), so both
/// accept the same spellings and explain a mistake alike.
impl std::str::FromStr for Size {
    type Err = String;

    fn from_str(s: &str) -> Result<Size, String> {
        s.trim()
            .parse::<bytesize::ByteSize>()
            .map(|b| Size(b.as_u64()))
            .map_err(|_| {
                format!("`{s}` is not a size (write e.g. \"18MB\", \"1MiB\" or a number of bytes)")
            })
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// A duration written as `"7d"`, `"90s"` or `"250ms"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{s}` is not a duration (write e.g. \"7d\", \"90s\" or \"250ms\")"
            ))
        })
    }
}

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
fn default_node_connect_timeout() -> Dur {
    Dur(Duration::from_secs(2))
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
fn default_admin_tls() -> Spanned<bool> {
    Spanned::new(0..0, false)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    site: RawSite,
    #[serde(default)]
    hub: Vec<RawHub>,
    #[serde(default)]
    cms: Vec<RawCms>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    accepted_domains: Vec<Spanned<String>>,
    #[serde(default = "default_max_message_size")]
    max_message_size: Size,
    #[serde(default = "default_max_dumpster_size")]
    max_dumpster_size_per_storage_group: Size,
    #[serde(default = "default_max_dumpster_time")]
    max_dumpster_time: Dur,
    #[serde(default = "default_message_expiry")]
    message_expiry: Dur,
    #[serde(default = "default_retry_min")]
    retry_min: Dur,
    #[serde(default = "default_retry_max")]
    retry_max: Dur,
    #[serde(default = "default_max_recipients")]
    max_recipients: Spanned<usize>,
    #[serde(default = "default_max_connections")]
    max_connections: Spanned<usize>,
    #[serde(default = "default_idle_timeout")]
    idle_timeout: Dur,
    #[serde(default = "default_max_connections_per_client")]
    max_connections_per_client: Spanned<usize>,
    #[serde(default = "default_connection_limit_exceptions")]
    connection_limit_exceptions: Vec<IpNet>,
    #[serde(default = "default_data_timeout")]
    data_timeout: Dur,
    #[serde(default)]
    bare_newline: BareNewline,
    #[serde(default = "default_resubmit_rate")]
    resubmit_rate: Spanned<u64>,
    #[serde(default = "default_dedup_retention")]
    dedup_retention: Spanned<Dur>,
    admin_token: Option<Spanned<String>>,
    admin_token_file: Option<Spanned<PathBuf>>,
    tls_certificate: Option<Spanned<PathBuf>>,
    tls_private_key: Option<Spanned<PathBuf>>,
    #[serde(default = "default_require_tls")]
    require_tls: Spanned<bool>,
    tls_ca: Option<Spanned<PathBuf>>,
    #[serde(default = "default_delivery_tls")]
    delivery_tls: Spanned<DeliveryTls>,
    #[serde(default = "default_admin_tls")]
    admin_tls: Spanned<bool>,
    #[serde(default = "default_store_cache_size")]
    store_cache_size: Size,
    #[serde(default = "default_in_flow_delay")]
    in_flow_delay: Dur,
    #[serde(default = "default_node_connect_timeout")]
    node_connect_timeout: Dur,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHub {
    name: Spanned<String>,
    smtp: SocketAddr,
    admin: SocketAddr,
    tls_certificate: Option<Spanned<PathBuf>>,
    tls_private_key: Option<Spanned<PathBuf>>,
    require_tls: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCms {
    name: Spanned<String>,
    #[serde(default = "default_dial")]
    auto_database_mount_dial: AutoDatabaseMountDial,
    witness: PathBuf,
    #[serde(default = "default_log_file_size")]
    log_file_size: Size,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    storage_group: Vec<RawSg>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: Spanned<String>,
    smtp: SocketAddr,
    admin: SocketAddr,
    tls_certificate: Option<Spanned<PathBuf>>,
    tls_private_key: Option<Spanned<PathBuf>>,
    require_tls: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSg {
    name: Spanned<String>,
    #[serde(default)]
    mailboxes: Vec<Spanned<String>>,
    #[serde(default)]
    domains: Vec<Spanned<String>>,
}

/// The validated site: what every role runs from.
#[derive(Debug, Clone)]
pub struct Site {
    /// The file it came from (shown in messages).
    pub file: PathBuf,
    /// The site's name.
    pub name: String,
    /// Domains the hubs accept mail for; anything else is relaying and refused.
    pub accepted_domains: Vec<String>,
    /// Largest message accepted (SMTP SIZE).
    pub max_message_size: u64,
    /// MaxDumpsterSizePerStorageGroup, per hub.
    pub max_dumpster_size_per_storage_group: u64,
    /// MaxDumpsterTime.
    pub max_dumpster_time: Duration,
    /// How long a hub keeps trying before it returns a message to its sender.
    pub message_expiry: Duration,
    /// First retry interval; each later one doubles, up to `retry_max`.
    pub retry_min: Duration,
    /// Longest retry interval.
    pub retry_max: Duration,
    /// Recipients per message before 452.
    pub max_recipients: usize,
    /// Concurrent SMTP connections per listener before 421.
    pub max_connections: usize,
    /// How long an SMTP session may stay silent between commands.
    pub idle_timeout: Duration,
    /// Concurrent SMTP sessions one client address may hold on a hub.
    pub max_connections_per_client: usize,
    /// Client networks `max_connections_per_client` does not apply to (like Postfix's
    /// `smtpd_client_event_limit_exceptions`, loopback by default).
    pub connection_limit_exceptions: Vec<IpNet>,
    /// How long an SMTP session may stay silent in the middle of a message.
    pub data_timeout: Duration,
    /// What a bare CR or LF in a message leads to.
    pub bare_newline: BareNewline,
    /// Bytes of sled page cache each hub or node store may keep in memory.
    pub store_cache_size: u64,
    /// How long a hub may hold a new message's 250 back while deliveries catch up.
    pub in_flow_delay: Duration,
    /// How long a hub waits for a mailbox node to answer a new connection (greeting, EHLO,
    /// STARTTLS) and MAIL before it counts the node as unreachable for that attempt.
    pub node_connect_timeout: Duration,
    /// Dumpster entries per second one hub puts back in its queue for a resubmission request, so
    /// normal traffic to the new active keeps flowing.
    pub resubmit_rate: u64,
    /// How long a mailbox node remembers a delivered message to drop its duplicates; never below
    /// MaxDumpsterTime, or a resubmission could double mail.
    pub dedup_retention: Duration,
    /// The bearer token every admin call must carry.
    pub admin_token: String,
    /// CA certificates (PEM) hubs verify mailbox nodes against when `delivery_tls` is `required`.
    pub tls_ca: Option<PathBuf>,
    /// Whether hubs deliver to nodes over STARTTLS.
    pub delivery_tls: DeliveryTls,
    /// The admin API of every role (CLI calls, heartbeats, log shipping, resubmission requests)
    /// is HTTPS with the role's certificate, verified against `tls_ca`.
    pub admin_tls: bool,
    /// Every hub of the site.
    pub hubs: Vec<Hub>,
    /// Every clustered mailbox server of the site.
    pub cms: Vec<Cms>,
}

/// One hub transport server.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Its name (`--name`).
    pub name: String,
    /// SMTP listener.
    pub smtp: SocketAddr,
    /// Admin API listener.
    pub admin: SocketAddr,
    /// Certificate for inbound STARTTLS (its own, or the site's); none: STARTTLS not offered.
    pub tls: Option<TlsFiles>,
    /// Refuse MAIL before STARTTLS on the SMTP listener.
    pub require_tls: bool,
}

/// One clustered mailbox server: two nodes hosting storage groups.
#[derive(Debug, Clone)]
pub struct Cms {
    /// Its name.
    pub name: String,
    /// How lossy an automatic mount may be.
    pub auto_database_mount_dial: AutoDatabaseMountDial,
    /// The file share witness directory (absolute, or relative to the data directory).
    pub witness: PathBuf,
    /// Size at which a transaction log generation is closed.
    pub log_file_size: u64,
    /// Its nodes, in config order (the first is active on a fresh start).
    pub nodes: Vec<Node>,
    /// The storage groups it hosts.
    pub storage_groups: Vec<StorageGroup>,
}

/// One node of a CMS.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its name (`--name`).
    pub name: String,
    /// SMTP listener for deliveries from hubs.
    pub smtp: SocketAddr,
    /// Admin API listener (status, log shipping, mailbox listing).
    pub admin: SocketAddr,
    /// Certificate for STARTTLS on deliveries from hubs (its own, or the site's).
    pub tls: Option<TlsFiles>,
    /// Refuse MAIL before STARTTLS on the SMTP listener.
    pub require_tls: bool,
}

/// A storage group: the unit of dumpster accounting and of resubmission.
#[derive(Debug, Clone)]
pub struct StorageGroup {
    /// Its name.
    pub name: String,
    /// Mailbox addresses, lower-cased.
    pub mailboxes: Vec<String>,
    /// Hosted domains, lower-cased: every address in them is a mailbox of this SG.
    pub domains: Vec<String>,
}

/// Where a recipient lives: its CMS (index into `Site::cms`) and storage group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Index of the CMS in `Site::cms`.
    pub cms: usize,
    /// The storage group's name.
    pub storage_group: String,
}

impl Site {
    /// Reads and validates a site file.
    pub fn load(path: &Path) -> Result<Site, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Site::parse(path, &text)
    }

    /// Validates a site from its text; `path` is used in messages and for `admin_token_file`.
    pub fn parse(path: &Path, text: &str) -> Result<Site, ConfigError> {
        let at = Locator { file: path, text };
        let raw: RawConfig = toml::from_str(text).map_err(|e| at.toml(&e))?;
        build(&at, raw)
    }

    /// Finds the CMS and storage group hosting `address` (case-insensitive), if any.
    pub fn route(&self, address: &str) -> Option<Route> {
        let address = address.to_ascii_lowercase();
        let domain = address.rsplit_once('@').map(|(_, d)| d)?;
        for (i, cms) in self.cms.iter().enumerate() {
            for sg in &cms.storage_groups {
                if sg.mailboxes.contains(&address) || sg.domains.iter().any(|d| d == domain) {
                    return Some(Route {
                        cms: i,
                        storage_group: sg.name.clone(),
                    });
                }
            }
        }
        None
    }

    /// True if `address` is in one of the site's accepted domains (or a hosted SG domain).
    pub fn is_accepted_domain(&self, address: &str) -> bool {
        let Some((_, domain)) = address.rsplit_once('@') else {
            return false;
        };
        let domain = domain.to_ascii_lowercase();
        self.accepted_domains.contains(&domain)
            || self.cms.iter().any(|c| {
                c.storage_groups
                    .iter()
                    .any(|sg| sg.domains.contains(&domain))
            })
    }

    /// The hub called `name`.
    pub fn hub(&self, name: &str) -> Option<&Hub> {
        self.hubs.iter().find(|h| h.name == name)
    }

    /// The node called `name` and the index of its CMS.
    pub fn node(&self, name: &str) -> Option<(usize, &Node)> {
        self.cms
            .iter()
            .enumerate()
            .find_map(|(i, c)| c.nodes.iter().find(|n| n.name == name).map(|n| (i, n)))
    }

    /// The CMS called `name`.
    pub fn cms_named(&self, name: &str) -> Option<&Cms> {
        self.cms.iter().find(|c| c.name == name)
    }

    /// The CMS hosting storage group `sg`.
    pub fn cms_of_storage_group(&self, sg: &str) -> Option<&Cms> {
        self.cms
            .iter()
            .find(|c| c.storage_groups.iter().any(|s| s.name == sg))
    }

    /// Every storage group name of the site, in config order.
    pub fn storage_group_names(&self) -> Vec<String> {
        self.cms
            .iter()
            .flat_map(|c| c.storage_groups.iter().map(|s| s.name.clone()))
            .collect()
    }
}

/// Turns byte offsets into `file:line: key:` messages.
struct Locator<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    /// The dotted key whose value is at byte `offset` (`site.bare_newline`): the `key =` that
    /// starts its line, under the last table header above it. `None` inside a multi-line value.
    fn key_at(&self, offset: usize) -> Option<String> {
        let before = self.text.get(..offset.min(self.text.len()))?;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = self.text[line_start..].lines().next()?;
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        let bare = |k: &str| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        };
        if !bare(key) {
            return None;
        }
        let table = self.text[..line_start]
            .lines()
            .rev()
            .map(str::trim)
            .find(|l| l.starts_with('['))
            .map(|l| l.trim_matches(['[', ']']).trim());
        Some(match table {
            Some(table) if bare(table) => format!("{table}.{key}"),
            _ => key.to_string(),
        })
    }

    fn line(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.text.len());
        self.text[..end].bytes().filter(|&b| b == b'\n').count() + 1
    }

    fn err(&self, span: &Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: self.line(span),
            key: key.to_string(),
            message: message.into(),
        }
    }

    fn toml(&self, e: &toml::de::Error) -> ConfigError {
        let line = e.span().map(|s| self.line(&s)).unwrap_or(0);
        // toml's message can span lines; the first is the one that says what is wrong.
        let message = e
            .message()
            .lines()
            .next()
            .unwrap_or("invalid TOML")
            .to_string();
        let named = key_from_toml_message(e.message());
        let key = named
            .or_else(|| e.span().and_then(|span| self.key_at(span.start)))
            .unwrap_or_else(|| "(document)".to_string());
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line,
            key,
            message,
        }
    }
}

/// toml reports unknown and missing keys as "unknown field `x`" / "missing field `x`"; the key is the
/// backquoted name. Other messages quote the bad *value* (e.g. "unknown variant `strip`"), so only
/// these two are read for a key.
fn key_from_toml_message(message: &str) -> Option<String> {
    let rest = message
        .strip_prefix("unknown field `")
        .or_else(|| message.strip_prefix("missing field `"))?;
    let len = rest.find('`')?;
    Some(rest[..len].to_string())
}

/// Remembers where each name was first seen so a duplicate can point at both.
struct Seen<'a> {
    at: &'a Locator<'a>,
    key: &'static str,
    what: &'static str,
    first: HashMap<String, (usize, String)>,
}

impl<'a> Seen<'a> {
    fn new(at: &'a Locator<'a>, key: &'static str, what: &'static str) -> Self {
        Seen {
            at,
            key,
            what,
            first: HashMap::new(),
        }
    }

    /// Records `name` (owned by `owner`), failing if it was already recorded.
    fn add(&mut self, name: &Spanned<String>, owner: &str) -> Result<(), ConfigError> {
        let line = self.at.line(&name.span());
        let folded = name.get_ref().to_ascii_lowercase();
        if let Some((first_line, first_owner)) = self.first.get(&folded) {
            let whose = if first_owner.is_empty() {
                String::new()
            } else {
                format!(" in {first_owner}")
            };
            return Err(self.at.err(
                &name.span(),
                self.key,
                format!(
                    "{} `{}` is already defined{whose} at line {first_line}; names must be unique",
                    self.what,
                    name.get_ref()
                ),
            ));
        }
        self.first.insert(folded, (line, owner.to_string()));
        Ok(())
    }
}

fn build(at: &Locator, raw: RawConfig) -> Result<Site, ConfigError> {
    let site = raw.site;
    let admin_token = admin_token(at, &site)?;
    let accepted_domains = site
        .accepted_domains
        .iter()
        .map(|d| checked_domain(at, d, "site.accepted_domains"))
        .collect::<Result<Vec<_>, _>>()?;
    for (value, key) in [
        (&site.max_recipients, "site.max_recipients"),
        (&site.max_connections, "site.max_connections"),
        (
            &site.max_connections_per_client,
            "site.max_connections_per_client",
        ),
    ] {
        if *value.get_ref() == 0 {
            return Err(at.err(&value.span(), key, "must be at least 1"));
        }
    }
    let dedup_retention = site.dedup_retention.get_ref().0;
    if dedup_retention < site.max_dumpster_time.0 {
        return Err(at.err(
            &site.dedup_retention.span(),
            "site.dedup_retention",
            format!(
                "must not be shorter than max_dumpster_time ({}; it is {}): a resubmitted copy would no longer be recognised as a duplicate",
                humantime::format_duration(site.max_dumpster_time.0),
                humantime::format_duration(dedup_retention)
            ),
        ));
    }
    let resubmit_rate = *site.resubmit_rate.get_ref();
    if resubmit_rate == 0 {
        return Err(at.err(
            &site.resubmit_rate.span(),
            "site.resubmit_rate",
            "must be at least 1 (messages per second)",
        ));
    }

    let site_tls = tls_files(
        at,
        "site",
        site.tls_certificate.as_ref(),
        site.tls_private_key.as_ref(),
    )?;
    let tls_ca = site.tls_ca.as_ref().map(|p| beside_config(at, p.get_ref()));
    let delivery_tls = *site.delivery_tls.get_ref();
    if delivery_tls == DeliveryTls::Required && tls_ca.is_none() {
        return Err(at.err(
            &site.delivery_tls.span(),
            "site.delivery_tls",
            "\"required\" verifies each node's certificate, so it needs tls_ca (the CA's PEM file)",
        ));
    }
    let admin_tls = *site.admin_tls.get_ref();
    if admin_tls && tls_ca.is_none() {
        return Err(at.err(
            &site.admin_tls.span(),
            "site.admin_tls",
            "every admin client verifies the role it calls, so admin_tls needs tls_ca (the CA's PEM file)",
        ));
    }
    let role_tls = |section: &str,
                    cert: Option<&Spanned<PathBuf>>,
                    key: Option<&Spanned<PathBuf>>,
                    require: Option<&Spanned<bool>>|
     -> Result<(Option<TlsFiles>, bool), ConfigError> {
        let tls = tls_files(at, section, cert, key)?.or_else(|| site_tls.clone());
        let (required, span, key) = match require {
            Some(r) => (*r.get_ref(), r.span(), format!("{section}.require_tls")),
            None => (
                *site.require_tls.get_ref(),
                site.require_tls.span(),
                "site.require_tls".to_string(),
            ),
        };
        if required && tls.is_none() {
            return Err(at.err(
                &span,
                &key,
                "require_tls needs a certificate: set tls_certificate and tls_private_key",
            ));
        }
        if admin_tls && tls.is_none() {
            return Err(at.err(
                &site.admin_tls.span(),
                "site.admin_tls",
                format!("every role needs a certificate for HTTPS, and a {section} has none: set tls_certificate and tls_private_key"),
            ));
        }
        if required && section == "cms.node" && delivery_tls == DeliveryTls::Off {
            return Err(at.err(
                &span,
                &key,
                "hubs deliver in clear text (delivery_tls = \"off\") and could never deliver to this node",
            ));
        }
        Ok((tls, required))
    };

    let mut roles = Seen::new(at, "name", "role");
    let mut hubs = Vec::new();
    for h in raw.hub {
        roles.add(&h.name, "")?;
        let (tls, require_tls) = role_tls(
            "hub",
            h.tls_certificate.as_ref(),
            h.tls_private_key.as_ref(),
            h.require_tls.as_ref(),
        )?;
        hubs.push(Hub {
            name: h.name.into_inner(),
            smtp: h.smtp,
            admin: h.admin,
            tls,
            require_tls,
        });
    }

    let mut sgs = Seen::new(at, "cms.storage_group.name", "storage group");
    let mut mailboxes = Seen::new(at, "cms.storage_group.mailboxes", "mailbox");
    let mut domains = Seen::new(at, "cms.storage_group.domains", "hosted domain");
    let mut cms_list = Vec::new();
    for c in raw.cms {
        roles.add(&c.name, "")?;
        if c.node.len() != 2 {
            return Err(at.err(
                &c.name.span(),
                "cms.node",
                format!(
                    "CMS `{}` has {} node(s); a clustered mailbox server has exactly two ([[cms.node]])",
                    c.name.get_ref(),
                    c.node.len()
                ),
            ));
        }
        if c.log_file_size.0 < 4096 {
            return Err(at.err(&c.name.span(), "cms.log_file_size", "must be at least 4KiB"));
        }
        let mut nodes = Vec::new();
        for n in c.node {
            roles.add(&n.name, c.name.get_ref())?;
            let (tls, require_tls) = role_tls(
                "cms.node",
                n.tls_certificate.as_ref(),
                n.tls_private_key.as_ref(),
                n.require_tls.as_ref(),
            )?;
            nodes.push(Node {
                name: n.name.into_inner(),
                smtp: n.smtp,
                admin: n.admin,
                tls,
                require_tls,
            });
        }
        let mut storage_groups = Vec::new();
        for sg in c.storage_group {
            sgs.add(&sg.name, c.name.get_ref())?;
            let mut mbx = Vec::new();
            for m in &sg.mailboxes {
                let addr = checked_address(at, m)?;
                mailboxes.add(m, sg.name.get_ref())?;
                mbx.push(addr);
            }
            let mut doms = Vec::new();
            for d in &sg.domains {
                let dom = checked_domain(at, d, "cms.storage_group.domains")?;
                domains.add(d, sg.name.get_ref())?;
                doms.push(dom);
            }
            storage_groups.push(StorageGroup {
                name: sg.name.into_inner(),
                mailboxes: mbx,
                domains: doms,
            });
        }
        cms_list.push(Cms {
            name: c.name.into_inner(),
            auto_database_mount_dial: c.auto_database_mount_dial,
            witness: c.witness,
            log_file_size: c.log_file_size.0,
            nodes,
            storage_groups,
        });
    }

    Ok(Site {
        file: at.file.to_path_buf(),
        name: site.name,
        accepted_domains,
        max_message_size: site.max_message_size.0,
        store_cache_size: site.store_cache_size.0,
        in_flow_delay: site.in_flow_delay.0,
        node_connect_timeout: site.node_connect_timeout.0,
        max_dumpster_size_per_storage_group: site.max_dumpster_size_per_storage_group.0,
        max_dumpster_time: site.max_dumpster_time.0,
        message_expiry: site.message_expiry.0,
        retry_min: site.retry_min.0,
        retry_max: site.retry_max.0.max(site.retry_min.0),
        max_recipients: site.max_recipients.into_inner(),
        max_connections: site.max_connections.into_inner(),
        idle_timeout: site.idle_timeout.0,
        max_connections_per_client: site.max_connections_per_client.into_inner(),
        connection_limit_exceptions: site.connection_limit_exceptions,
        data_timeout: site.data_timeout.0,
        bare_newline: site.bare_newline,
        resubmit_rate,
        dedup_retention,
        admin_token,
        tls_ca,
        delivery_tls,
        admin_tls,
        hubs,
        cms: cms_list,
    })
}

/// A relative path in the config is relative to the config file, not to the working directory.
fn beside_config(at: &Locator, path: &Path) -> PathBuf {
    match at.file.parent() {
        Some(dir) if path.is_relative() => dir.join(path),
        _ => path.to_path_buf(),
    }
}

/// The certificate and key of one section: both or neither (the files are read when the role
/// starts, so that parsing opens nothing).
fn tls_files(
    at: &Locator,
    section: &str,
    cert: Option<&Spanned<PathBuf>>,
    key: Option<&Spanned<PathBuf>>,
) -> Result<Option<TlsFiles>, ConfigError> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(Some(TlsFiles {
            certificate: beside_config(at, c.get_ref()),
            private_key: beside_config(at, k.get_ref()),
        })),
        (None, None) => Ok(None),
        (Some(c), None) => Err(at.err(
            &c.span(),
            &format!("{section}.tls_private_key"),
            "missing: tls_certificate needs its tls_private_key",
        )),
        (None, Some(k)) => Err(at.err(
            &k.span(),
            &format!("{section}.tls_certificate"),
            "missing: tls_private_key needs its tls_certificate",
        )),
    }
}

fn admin_token(at: &Locator, site: &RawSite) -> Result<String, ConfigError> {
    match (&site.admin_token, &site.admin_token_file) {
        (Some(t), None) if !t.get_ref().trim().is_empty() => Ok(t.get_ref().trim().to_string()),
        (Some(t), None) => Err(at.err(&t.span(), "site.admin_token", "must not be empty")),
        (None, Some(f)) => {
            let path = match at.file.parent() {
                Some(dir) if f.get_ref().is_relative() => dir.join(f.get_ref()),
                _ => f.get_ref().clone(),
            };
            let token = std::fs::read_to_string(&path).map_err(|e| {
                at.err(
                    &f.span(),
                    "site.admin_token_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let token = token.trim().to_string();
            if token.is_empty() {
                return Err(at.err(
                    &f.span(),
                    "site.admin_token_file",
                    format!("{} is empty", path.display()),
                ));
            }
            Ok(token)
        }
        (Some(t), Some(_)) => Err(at.err(
            &t.span(),
            "site.admin_token",
            "give either admin_token or admin_token_file, not both",
        )),
        (None, None) => Err(at.err(
            &(0..0),
            "site.admin_token",
            "missing: every admin call is authenticated; set admin_token or admin_token_file",
        )),
    }
}

fn checked_domain(at: &Locator, d: &Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let dom = d.get_ref().trim().to_ascii_lowercase();
    if dom.is_empty() || dom.contains('@') || dom.contains(char::is_whitespace) {
        return Err(at.err(
            &d.span(),
            key,
            format!("`{}` is not a domain name", d.get_ref()),
        ));
    }
    Ok(dom)
}

fn checked_address(at: &Locator, m: &Spanned<String>) -> Result<String, ConfigError> {
    let addr = m.get_ref().trim().to_ascii_lowercase();
    match addr.split_once('@') {
        Some((local, domain))
            if !local.is_empty() && !domain.is_empty() && !domain.contains('@') =>
        {
            Ok(addr)
        }
        _ => Err(at.err(
            &m.span(),
            "cms.storage_group.mailboxes",
            format!("`{}` is not a mailbox address (local@domain)", m.get_ref()),
        )),
    }
}

impl fmt::Display for AutoDatabaseMountDial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Lossless => "Lossless",
            Self::GoodAvailability => "GoodAvailability",
            Self::BestAvailability => "BestAvailability",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = include_str!("../config/site.toml");

    fn parse(text: &str) -> Result<Site, ConfigError> {
        Site::parse(Path::new("site.toml"), text)
    }

    fn err(text: &str) -> String {
        parse(text)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn example_site_loads_with_units() {
        let site = parse(GOOD).expect("config/site.toml is valid");
        assert_eq!(site.hubs.len(), 2);
        assert_eq!(site.cms[0].nodes.len(), 2);
        assert_eq!(site.max_message_size, 10_000_000);
        assert_eq!(site.store_cache_size, 64 * 1024 * 1024);
        assert_eq!(site.in_flow_delay, Duration::from_secs(1));
        assert_eq!(site.node_connect_timeout, Duration::from_secs(2));
        assert_eq!(site.max_dumpster_size_per_storage_group, 18_000_000);
        assert_eq!(site.max_dumpster_time, Duration::from_secs(7 * 86_400));
        assert_eq!(site.cms[0].log_file_size, 1 << 20);
        assert_eq!(
            site.cms[0].auto_database_mount_dial,
            AutoDatabaseMountDial::GoodAvailability
        );
        let r = site
            .route("Alice@Example.TEST")
            .expect("alice is a mailbox");
        assert_eq!(r.storage_group, "SG1");
        assert!(site.route("nobody@example.test").is_none());
        assert!(site.is_accepted_domain("nobody@EXAMPLE.test"));
        assert!(!site.is_accepted_domain("x@elsewhere.test"));
    }

    #[test]
    fn hosted_domain_routes_every_address() {
        let text = GOOD.replace(
            "mailboxes = [\"alice@example.test\", \"bob@example.test\"]",
            "mailboxes = [\"alice@example.test\", \"bob@example.test\"]\ndomains = [\"hosted.test\"]",
        );
        let site = parse(&text).unwrap();
        assert_eq!(
            site.route("anyone@hosted.test").unwrap().storage_group,
            "SG1"
        );
        assert!(site.is_accepted_domain("anyone@hosted.test"));
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = GOOD.replacen("[site]\n", "[site]\nmax_dumpster_tme = \"1d\"\n", 1);
        let e = err(&text);
        assert!(e.contains("max_dumpster_tme"), "{e}");
        let line = text
            .lines()
            .position(|l| l.starts_with("max_dumpster_tme"))
            .unwrap()
            + 1;
        assert!(e.starts_with(&format!("site.toml:{line}:")), "{e}");
    }

    #[test]
    fn sizes_parse_as_in_the_site_file() {
        let size = |s: &str| s.parse::<Size>().map(|s| s.0);
        assert_eq!(size("4KiB"), Ok(4096));
        assert_eq!(size(" 64KiB "), Ok(65_536));
        assert_eq!(size("18MB"), Ok(18_000_000));
        assert_eq!(size("4096"), Ok(4096));
        assert!(size("lots").unwrap_err().contains("not a size"));
    }

    #[test]
    fn bad_units_are_explained() {
        let e = err(&GOOD.replace(
            "max_dumpster_time = \"7d\"",
            "max_dumpster_time = \"7 fortnights\"",
        ));
        assert!(e.contains("not a duration"), "{e}");
        let e = err(&GOOD.replace(
            "max_dumpster_size_per_storage_group = \"18MB\"",
            "max_dumpster_size_per_storage_group = \"lots\"",
        ));
        assert!(e.contains("not a size"), "{e}");
    }

    #[test]
    fn duplicate_names_and_double_homed_mailboxes_are_refused() {
        let e = err(&GOOD.replace("name = \"hub2\"", "name = \"hub1\""));
        assert!(e.contains("`hub1` is already defined"), "{e}");
        let two_sgs = format!(
            "{GOOD}\n[[cms.storage_group]]\nname = \"SG2\"\nmailboxes = [\"ALICE@example.test\"]\n"
        );
        let e = err(&two_sgs);
        assert!(e.contains("cms.storage_group.mailboxes"), "{e}");
        assert!(e.contains("already defined in SG1"), "{e}");
        let line = two_sgs.lines().count();
        assert!(e.starts_with(&format!("site.toml:{line}:")), "{e}");
    }

    #[test]
    fn node_in_two_cms_is_refused() {
        let second = "\n[[cms]]\nname = \"cms2\"\nwitness = \"w2\"\n[[cms.node]]\nname = \"node1\"\nsmtp = \"127.0.0.1:1\"\nadmin = \"127.0.0.1:2\"\n[[cms.node]]\nname = \"node9\"\nsmtp = \"127.0.0.1:3\"\nadmin = \"127.0.0.1:4\"\n";
        let e = err(&format!("{GOOD}{second}"));
        assert!(e.contains("`node1` is already defined in cms1"), "{e}");
    }

    #[test]
    fn bad_config_fixtures_name_the_problem() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures/configs") {
            let path = entry.expect("entry").path();
            let text = std::fs::read_to_string(&path).expect("fixture");
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} has no `# expect:` line", path.display()));
            let e = err(&text);
            assert!(e.contains(expect), "{}: {e}", path.display());
            seen += 1;
        }
        assert!(seen >= 5, "only {seen} bad config fixtures");
    }

    #[test]
    fn smtp_edge_keys_default_and_bad_values_name_the_key() {
        let keys = [
            "max_connections_per_client",
            "connection_limit_exceptions",
            "data_timeout",
            "bare_newline",
        ];
        let text = GOOD
            .lines()
            .filter(|l| !keys.iter().any(|k| l.starts_with(k)))
            .collect::<Vec<_>>()
            .join("\n");
        let site = parse(&text).expect("defaults");
        assert_eq!(site.max_connections_per_client, 50);
        assert_eq!(site.data_timeout, Duration::from_secs(180));
        assert_eq!(site.bare_newline, BareNewline::Normalize);
        for ip in ["127.0.0.1", "127.9.9.9", "::1"] {
            let ip: std::net::IpAddr = ip.parse().expect("an address");
            assert!(
                site.connection_limit_exceptions
                    .iter()
                    .any(|n| n.contains(&ip)),
                "{ip} is exempt by default"
            );
        }
        let site =
            parse(&GOOD.replace("bare_newline = \"normalize\"", "bare_newline = \"reject\""))
                .expect("reject is a policy");
        assert_eq!(site.bare_newline, BareNewline::Reject);

        for (from, to, key) in [
            (
                "bare_newline = \"normalize\"",
                "bare_newline = \"strip\"",
                "bare_newline",
            ),
            (
                "connection_limit_exceptions = [\"127.0.0.0/8\"",
                "connection_limit_exceptions = [\"127.0.0.0/33\"",
                "connection_limit_exceptions",
            ),
            (
                "data_timeout = \"3m\"",
                "data_timeout = \"soon\"",
                "data_timeout",
            ),
            (
                "max_connections_per_client = 50",
                "max_connections_per_client = 0",
                "max_connections_per_client",
            ),
        ] {
            let bad = GOOD.replace(from, to);
            assert_ne!(bad, GOOD, "{from} is in config/site.toml");
            let e = err(&bad);
            assert!(e.contains(key), "{key}: {e}");
        }
    }

    #[test]
    fn resubmit_rate_and_dedup_retention_default_and_are_checked_at_their_line() {
        let text = GOOD
            .lines()
            .filter(|l| !l.starts_with("resubmit_rate") && !l.starts_with("dedup_retention"))
            .collect::<Vec<_>>()
            .join("\n");
        let site = parse(&text).expect("defaults");
        assert_eq!(site.resubmit_rate, 500);
        assert_eq!(site.dedup_retention, Duration::from_secs(14 * 86_400));
        let line_of = |text: &str, key: &str| {
            text.lines()
                .position(|l| l.starts_with(key))
                .expect("key in text")
                + 1
        };

        let zero = GOOD.replace("resubmit_rate = 500", "resubmit_rate = 0");
        let e = err(&zero);
        let line = line_of(&zero, "resubmit_rate");
        assert!(
            e.starts_with(&format!("site.toml:{line}: site.resubmit_rate:")),
            "{e}"
        );

        let short = GOOD.replace("dedup_retention = \"14d\"", "dedup_retention = \"6d\"");
        let e = err(&short);
        let line = line_of(&short, "dedup_retention");
        assert!(
            e.starts_with(&format!("site.toml:{line}: site.dedup_retention:")),
            "{e}"
        );
        assert!(e.contains("max_dumpster_time (7days; it is 6days)"), "{e}");
        // Equal to max_dumpster_time is enough; a longer dumpster needs a longer retention.
        let equal = GOOD.replace("dedup_retention = \"14d\"", "dedup_retention = \"7d\"");
        assert_eq!(
            parse(&equal).expect("equal").dedup_retention,
            Duration::from_secs(7 * 86_400)
        );
        let e = err(&text.replace("max_dumpster_time = \"7d\"", "max_dumpster_time = \"15d\""));
        assert!(e.contains("site.dedup_retention"), "{e}");
    }

    #[test]
    fn tls_keys_resolve_beside_the_config_and_hubs_and_nodes_may_override_them() {
        let text = GOOD
            .replacen(
                "[site]\n",
                "[site]\ntls_certificate = \"tls/site.crt\"\ntls_private_key = \"/etc/hubrelay/site.key\"\n",
                1,
            )
            .replacen(
                "name = \"hub2\"\n",
                "name = \"hub2\"\ntls_certificate = \"hub2.crt\"\ntls_private_key = \"hub2.key\"\nrequire_tls = true\n",
                1,
            );
        let site = Site::parse(Path::new("/srv/site/site.toml"), &text).expect("valid");
        let site_files = TlsFiles {
            certificate: PathBuf::from("/srv/site/tls/site.crt"),
            private_key: PathBuf::from("/etc/hubrelay/site.key"),
        };
        assert_eq!(site.hubs[0].tls.as_ref(), Some(&site_files));
        assert!(!site.hubs[0].require_tls);
        let hub2 = site.hubs[1].tls.as_ref().expect("hub2 has its own");
        assert_eq!(hub2.certificate, PathBuf::from("/srv/site/hub2.crt"));
        assert!(site.hubs[1].require_tls);
        assert_eq!(site.cms[0].nodes[0].tls.as_ref(), Some(&site_files));
        assert_eq!(site.delivery_tls, DeliveryTls::Opportunistic);
        assert_eq!(site.tls_ca, None);

        let plain = parse(GOOD).expect("valid");
        assert!(plain.hubs.iter().all(|h| h.tls.is_none() && !h.require_tls));
        assert!(plain.cms[0].nodes.iter().all(|n| n.tls.is_none()));
    }

    #[test]
    fn tls_mistakes_name_their_key() {
        let with = |lines: &str| GOOD.replacen("[site]\n", &format!("[site]\n{lines}\n"), 1);
        let e = err(&with("tls_certificate = \"a.crt\""));
        assert!(e.contains(": site.tls_private_key: missing"), "{e}");
        let e = err(&with("tls_private_key = \"a.key\""));
        assert!(e.contains(": site.tls_certificate: missing"), "{e}");
        let e = err(&with("require_tls = true"));
        assert!(
            e.contains(": site.require_tls: require_tls needs a certificate"),
            "{e}"
        );
        let e = err(&with("delivery_tls = \"required\""));
        assert!(e.contains(": site.delivery_tls: "), "{e}");
        assert!(e.contains("tls_ca"), "{e}");
        let e = err(&with("delivery_tls = \"sometimes\""));
        assert!(e.contains("unknown variant"), "{e}");
        let site = parse(&with("delivery_tls = \"required\"\ntls_ca = \"ca.pem\""))
            .expect("required with a CA");
        assert_eq!(site.delivery_tls, DeliveryTls::Required);
        assert_eq!(site.tls_ca, Some(PathBuf::from("ca.pem")));
        let e = err(&with(
            "tls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"\ndelivery_tls = \"off\"\nrequire_tls = true",
        ));
        assert!(
            e.contains(": site.require_tls: hubs deliver in clear text"),
            "{e}"
        );
        let e = err(&with("admin_tls = true"));
        assert!(
            e.contains(": site.admin_tls: ") && e.contains("tls_ca"),
            "{e}"
        );
        let e = err(&with("admin_tls = true\ntls_ca = \"ca.pem\""));
        assert!(
            e.contains(": site.admin_tls: every role needs a certificate"),
            "{e}"
        );
        let site = parse(&with(
            "admin_tls = true\ntls_ca = \"ca.pem\"\ntls_certificate = \"a.crt\"\ntls_private_key = \"a.key\"",
        ))
        .expect("admin_tls with certificates and a CA");
        assert!(site.admin_tls);
        assert!(!parse(GOOD).expect("valid").admin_tls);
    }

    #[test]
    fn missing_token_and_bad_address() {
        let e = err(&GOOD.replace("admin_token = \"change-me\"", ""));
        assert!(e.contains("site.admin_token"), "{e}");
        let e = err(&GOOD.replace("\"bob@example.test\"", "\"bob\""));
        assert!(e.contains("not a mailbox address"), "{e}");
    }

    mod props {
        use proptest::prelude::*;

        use super::{parse, GOOD};
        use crate::config::ConfigError;

        /// Each `key = value` line of the example, by index, with its key.
        fn key_lines() -> Vec<(usize, String)> {
            GOOD.lines()
                .enumerate()
                .filter_map(|(i, l)| {
                    let (key, _) = l.split_once(" = ")?;
                    (!l.starts_with('#')).then(|| (i, key.trim().to_string()))
                })
                .collect()
        }

        /// The char boundary at or before `i` in the example.
        fn char_boundary(mut i: usize) -> usize {
            while !GOOD.is_char_boundary(i) {
                i -= 1;
            }
            i
        }

        /// Well-formed TOML values of every type; a syntax error (which may surface lines
        /// later, as an unclosed array does) is covered by `no_text_makes_the_loader_panic`.
        fn wrong_value() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(vec![
                    "\"\"",
                    "0",
                    "-1",
                    "true",
                    "[]",
                    "{}",
                    "1.5",
                    "\"garbage\"",
                    "\"-5m\"",
                    "\"99999999999999999999TB\"",
                    "[\"\"]",
                    "\"127.0.0.1\"",
                    "\"0d\"",
                    "18446744073709551616",
                    "\"Lossless\"",
                ])
                .prop_map(str::to_string),
                any::<i64>().prop_map(|n| n.to_string()),
                "\"[ -!#-\\[\\]-~]{0,12}\"",
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn every_error_names_the_key_it_is_about(
                which in any::<prop::sample::Index>(),
                value in wrong_value(),
            ) {
                let lines = key_lines();
                let (at, key) = &lines[which.index(lines.len())];
                let text: Vec<String> = GOOD
                    .lines()
                    .enumerate()
                    .map(|(i, l)| if i == *at { format!("{key} = {value}") } else { l.to_string() })
                    .collect();
                if let Err(e) = parse(&text.join("\n")) {
                    let ConfigError::Invalid { key: named, .. } = &e else {
                        return Err(TestCaseError::fail(format!("not located: {e}")));
                    };
                    prop_assert!(named.ends_with(key.as_str()), "{} = {}: {}", key, value, e);
                }
            }

            #[test]
            fn no_text_makes_the_loader_panic(
                from in any::<prop::sample::Index>(),
                len in 0usize..40,
                junk in "[ -~\n\\[\\]=\"]{0,40}",
            ) {
                let start = char_boundary(from.index(GOOD.len()));
                let end = char_boundary((start + len).min(GOOD.len()));
                let text = format!("{}{junk}{}", &GOOD[..start], &GOOD[end..]);
                let _ = parse(&text);
            }
        }
    }
}

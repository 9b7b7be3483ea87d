//! The site configuration: one TOML file describes every hub and clustered mailbox server (SPEC §3).
//!
//! Parsing never opens a socket or a file other than the config (and an `admin_token_file`). Every error
//! names the file, the line and the key, because an operator fixing a typo at 3 a.m. needs exactly that.
//! Defaults live in one place: the `default_*` functions in `raw.rs`, mirrored in `config/site.toml`.
//!
//! - `units.rs`: how sizes, durations and the word-valued keys are written.
//! - `raw.rs`: the file as written, with the defaults.
//! - `locate.rs`: file, line and key of a mistake.
//! - `build/`: the checks, by what they configure: the site (`site.rs`), hubs (`hub.rs`), CMSs with
//!   their nodes and storage groups (`cms.rs`).
//! - `sanity.rs`: sizing warnings a valid site can still deserve.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::smtp::{BareNewline, TlsFiles};
use locate::Locator;
use raw::RawConfig;

mod build;
pub mod exposure;
mod locate;
mod raw;
pub mod sanity;
#[cfg(test)]
mod tests;
mod units;

pub use units::{AdminTls, AutoDatabaseMountDial, DeliveryTls, Dur, Size};

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
    /// Bytes every hub and node keeps free on the file systems of its data directory: below it,
    /// new mail is refused with 452 4.3.1 (Postfix's `queue_minfree`).
    pub min_free_space: u64,
    /// Dumpster entries per second one hub puts back in its queue for a resubmission request, so
    /// normal traffic to the new active keeps flowing.
    pub resubmit_rate: u64,
    /// How long a mailbox node remembers a delivered message to drop its duplicates; never below
    /// MaxDumpsterTime, or a resubmission could double mail.
    pub dedup_retention: Duration,
    /// The bearer token every admin call must carry.
    pub admin_token: String,
    /// What hubs prove themselves to nodes with (SMTP AUTH, `crate::smtp::DeliverySecret`): the
    /// content of `delivery_secret_file`, or derived from `admin_token` without one.
    pub delivery_secret: Vec<u8>,
    /// `delivery_secret_file`, read again on SIGHUP.
    pub delivery_secret_file: Option<PathBuf>,
    /// CA certificates (PEM) hubs verify mailbox nodes against when `delivery_tls` is `required`.
    pub tls_ca: Option<PathBuf>,
    /// Whether hubs deliver to nodes over STARTTLS.
    pub delivery_tls: DeliveryTls,
    /// Whether the admin API of every role (CLI calls, heartbeats, log shipping, resubmission
    /// requests) is HTTPS with the role's certificate, verified against `tls_ca`, and whether
    /// its clients must present one too.
    pub admin_tls: AdminTls,
    /// The certificate the CLI (and the programs that call roles as the operator) presents to
    /// admin APIs under `admin_tls = "mutual"` (`admin_client_certificate`/`_private_key`).
    pub admin_client: Option<TlsFiles>,
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
    /// Its witness: a file share directory or an etcd cluster.
    pub witness: WitnessConfig,
    /// Size at which a transaction log generation is closed.
    pub log_file_size: u64,
    /// Bytes of log the active keeps for a copy that is behind before it gives the copy up (the
    /// copy then needs a reseed): a copy that is down for good must not fill the active's disk.
    pub max_log_backlog: u64,
    /// Closed generations every node keeps however old, to look at after an incident.
    pub log_tail: u64,
    /// Its nodes, in config order (the first is active on a fresh start).
    pub nodes: Vec<Node>,
    /// The storage groups it hosts.
    pub storage_groups: Vec<StorageGroup>,
}

/// Where a CMS's witness lives (the `witness` key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WitnessConfig {
    /// A file share directory (absolute, or relative to the data directory).
    Share(PathBuf),
    /// An etcd cluster: `etcd://host:port[,host:port…]/prefix` (`etcds://` for TLS).
    Etcd(EtcdConfig),
}

impl WitnessConfig {
    /// What `status` and `health` call it.
    pub fn kind(&self) -> &'static str {
        match self {
            WitnessConfig::Share(_) => "FileShareWitness",
            WitnessConfig::Etcd(_) => "EtcdWitness",
        }
    }
}

/// How a node reaches the etcd witness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Base URLs of the endpoints (`http://host:port` or `https://…`), tried in turn.
    pub endpoints: Vec<String>,
    /// Key prefix of this CMS's witness (`/hubrelay/cms1`): one etcd cluster can serve many.
    pub prefix: String,
    /// CA that signed the etcd servers' certificates (`witness_tls_ca`), for `etcds://`.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (`witness_tls_certificate`/`witness_tls_private_key`), for etcd
    /// clusters that require them.
    pub tls_client: Option<TlsFiles>,
    /// etcd user (`witness_user`), for clusters with authentication on.
    pub user: Option<String>,
    /// File holding that user's password (`witness_password_file`).
    pub password_file: Option<PathBuf>,
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

/// Reads a delivery secret file: its bytes less trailing line ends, never empty.
pub fn read_secret_file(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

impl Site {
    /// `delivery_secret_file` read again (SIGHUP): `None` when the site has no such file.
    pub fn reread_delivery_secret(&self) -> Option<Result<Vec<u8>, String>> {
        self.delivery_secret_file.as_deref().map(read_secret_file)
    }

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
        build::build(&at, raw)
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

    /// The host name hub `hub` greets with and writes in its `Received:` headers: how a mailbox
    /// node tells which hub stamped a record (host names compare case-insensitively).
    pub fn hub_hostname(&self, hub: &str) -> String {
        format!("{hub}.{}", self.name)
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

//! The values keys are written in: sizes (`"18MB"`), durations (`"7d"`) and the two keys that take
//! one of a few words. Each explains a bad spelling itself, so the loader only has to add where it is.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

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
    /// As `required`, and the hub presents its own certificate, which the node verifies against
    /// `tls_ca`: that certificate, not the delivery secret, is what lets a hub deliver.
    Mutual,
}

impl DeliveryTls {
    /// Whether the hub verifies the node's certificate (`required` and `mutual`).
    pub fn verifies_nodes(self) -> bool {
        matches!(self, DeliveryTls::Required | DeliveryTls::Mutual)
    }
}

/// Whether the admin APIs speak HTTPS, and whether they also verify their clients (`admin_tls`:
/// `false`, `true` or `"mutual"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "AdminTlsValue")]
pub enum AdminTls {
    /// Plain HTTP (the default): for loopback and trusted networks.
    Off,
    /// HTTPS with each role's certificate, verified by every client against `tls_ca`.
    On,
    /// HTTPS, and every client (roles, the CLI) presents a certificate from `tls_ca`, so the
    /// bearer token alone no longer opens an admin API.
    Mutual,
}

impl AdminTls {
    /// Whether the admin APIs are HTTPS.
    pub fn is_on(self) -> bool {
        self != AdminTls::Off
    }
}

/// What `admin_tls` may be written as: the boolean of earlier releases, or a word.
#[derive(Deserialize)]
#[serde(untagged)]
enum AdminTlsValue {
    Flag(bool),
    Word(String),
}

impl TryFrom<AdminTlsValue> for AdminTls {
    type Error = String;

    fn try_from(v: AdminTlsValue) -> Result<AdminTls, String> {
        match v {
            AdminTlsValue::Flag(false) => Ok(AdminTls::Off),
            AdminTlsValue::Flag(true) => Ok(AdminTls::On),
            AdminTlsValue::Word(w) if w == "mutual" => Ok(AdminTls::Mutual),
            AdminTlsValue::Word(w) => Err(format!("\"{w}\" is not one of false, true, \"mutual\"")),
        }
    }
}

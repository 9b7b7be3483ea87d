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
}

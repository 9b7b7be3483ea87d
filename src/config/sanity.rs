//! Sizing rules from the seeds that a valid site file can still break. They are warnings, not
//! errors: the site runs, but part of its mail has no failover protection. Start-up logs
//! [`site_warnings`]; `hubrelay health` reports both rules, the second from the copies' status.

use std::time::Duration;

use super::Site;

/// A sizing problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SizingWarning {
    /// The dumpster bound is below 1.5 × the largest message: a message near the size limit
    /// evicts most of the dumpster or is not kept at all, so a failover can lose it for good.
    DumpsterSmallerThanMessages {
        /// `max_dumpster_size_per_storage_group` in bytes.
        max_dumpster_size: u64,
        /// `max_message_size` in bytes.
        max_message_size: u64,
    },
    /// A passive copy has been behind for longer than `max_dumpster_time`: the dumpster no longer
    /// holds everything the copy lacks, so a lossy failover now would lose mail.
    CopyBehindLongerThanDumpsterTime {
        /// The storage group.
        storage_group: String,
        /// How long the copy has been behind.
        behind: Duration,
        /// `max_dumpster_time`.
        max_dumpster_time: Duration,
    },
}

impl std::fmt::Display for SizingWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SizingWarning::DumpsterSmallerThanMessages {
                max_dumpster_size,
                max_message_size,
            } => write!(
                f,
                "max_dumpster_size_per_storage_group ({max_dumpster_size} bytes) is below 1.5 × max_message_size ({max_message_size} bytes, so at least {} bytes): \
                 the dumpster must hold a message of the largest size with room to spare, or such mail has no failover protection",
                min_dumpster_size(*max_message_size)
            ),
            SizingWarning::CopyBehindLongerThanDumpsterTime {
                storage_group,
                behind,
                max_dumpster_time,
            } => write!(
                f,
                "{storage_group}: the passive copy has been behind for {}, longer than max_dumpster_time ({}): \
                 the dumpster no longer holds everything the copy lacks, so a lossy failover now would lose mail",
                humantime::format_duration(Duration::from_secs(behind.as_secs())),
                humantime::format_duration(*max_dumpster_time)
            ),
        }
    }
}

/// The smallest dumpster bound the seeds' rule accepts for `max_message_size`: 1.5 × it.
pub fn min_dumpster_size(max_message_size: u64) -> u64 {
    max_message_size.saturating_add(max_message_size.div_ceil(2))
}

/// Rule 1: `max_dumpster_size_per_storage_group` ≥ 1.5 × `max_message_size`.
pub fn dumpster_size(max_dumpster_size: u64, max_message_size: u64) -> Option<SizingWarning> {
    // 2·d < 3·m, exactly, without rounding or overflow.
    (u128::from(max_dumpster_size) * 2 < u128::from(max_message_size) * 3).then_some(
        SizingWarning::DumpsterSmallerThanMessages {
            max_dumpster_size,
            max_message_size,
        },
    )
}

/// Rule 2: a copy behind for longer than `max_dumpster_time` (`behind` is `None` when it is
/// caught up).
pub fn copy_lag(
    storage_group: &str,
    behind: Option<Duration>,
    max_dumpster_time: Duration,
) -> Option<SizingWarning> {
    behind.filter(|b| *b > max_dumpster_time).map(|behind| {
        SizingWarning::CopyBehindLongerThanDumpsterTime {
            storage_group: storage_group.to_string(),
            behind,
            max_dumpster_time,
        }
    })
}

/// The rules a site file can break by itself (logged at start-up).
pub fn site_warnings(site: &Site) -> Vec<SizingWarning> {
    dumpster_size(
        site.max_dumpster_size_per_storage_group,
        site.max_message_size,
    )
    .into_iter()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumpster_size_rule() {
        // (dumpster bound, max message size, warns)
        let table = [
            (18_000_000, 10_000_000, false), // the shipped site.toml
            (15_000_000, 10_000_000, false), // exactly 1.5 ×
            (14_999_999, 10_000_000, true),
            (10_000_000, 10_000_000, true),
            (0, 1, true),
            (2, 1, false),
            (1, 1, true),
            (0, 0, false),
            (u64::MAX, u64::MAX, true),
            (u64::MAX, u64::MAX / 3 * 2, false),
        ];
        for (dumpster, message, warns) in table {
            let w = dumpster_size(dumpster, message);
            assert_eq!(w.is_some(), warns, "{dumpster} vs {message}: {w:?}");
            if let Some(w) = w {
                let text = w.to_string();
                assert!(text.contains(&format!("({dumpster} bytes)")), "{text}");
                assert!(text.contains("1.5 × max_message_size"), "{text}");
            }
        }
    }

    #[test]
    fn copy_lag_rule() {
        let week = Duration::from_secs(7 * 86_400);
        // (behind, max_dumpster_time, warns)
        let table = [
            (None, week, false),
            (Some(Duration::ZERO), week, false),
            (Some(week), week, false),
            (Some(week + Duration::from_secs(1)), week, true),
            (Some(Duration::from_secs(3)), Duration::from_secs(2), true),
        ];
        for (behind, max, warns) in table {
            let w = copy_lag("SG1", behind, max);
            assert_eq!(w.is_some(), warns, "{behind:?} vs {max:?}: {w:?}");
        }
        let text = copy_lag(
            "SG1",
            Some(Duration::from_millis(3_500)),
            Duration::from_secs(2),
        )
        .expect("warns")
        .to_string();
        assert!(
            text.starts_with(
                "SG1: the passive copy has been behind for 3s, longer than max_dumpster_time (2s)"
            ),
            "{text}"
        );
    }

    #[test]
    fn min_dumpster_size_rounds_up() {
        assert_eq!(min_dumpster_size(10_000_000), 15_000_000);
        assert_eq!(min_dumpster_size(3), 5);
        assert_eq!(min_dumpster_size(u64::MAX), u64::MAX);
    }

    #[test]
    fn shipped_site_file_does_not_warn() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/site.toml");
        let site = Site::load(&path).expect("config/site.toml loads");
        assert_eq!(site_warnings(&site), Vec::new());
    }
}

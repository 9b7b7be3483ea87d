//! The free-space series every role reports (`min_free_space`): what a disk-full alert watches.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::space::Reading;

/// The label of a per-directory series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PathLabels {
    /// The directory the role writes to.
    pub path: String,
}

/// Free space, reserve and the disk-full flag per directory of one role.
#[derive(Debug, Default)]
pub struct DiskGauges {
    free: Family<PathLabels, Gauge>,
    reserve: Family<PathLabels, Gauge>,
    full: Family<PathLabels, Gauge>,
}

impl DiskGauges {
    /// Registers the series in a role's registry.
    pub fn register(registry: &mut Registry) -> DiskGauges {
        let g = DiskGauges::default();
        registry.register(
            "disk_free_bytes",
            "Bytes free on the file system of a directory the role writes to",
            g.free.clone(),
        );
        registry.register(
            "disk_reserve_bytes",
            "min_free_space: below it the role refuses new mail with 452 4.3.1",
            g.reserve.clone(),
        );
        registry.register(
            "disk_full",
            "1 while less than min_free_space is free there (new mail refused), else 0",
            g.full.clone(),
        );
        g
    }

    /// Sets the series from `readings`, just before a scrape is encoded.
    pub fn set(&self, readings: &[Reading]) {
        self.free.clear();
        self.reserve.clear();
        self.full.clear();
        let int = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        for r in readings {
            let l = PathLabels {
                path: r.path.display().to_string(),
            };
            self.free.get_or_create(&l).set(int(r.free_bytes));
            self.reserve.get_or_create(&l).set(int(r.reserve_bytes));
            self.full.get_or_create(&l).set(i64::from(r.low()));
        }
    }
}

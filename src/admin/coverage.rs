//! Whether each hub's dumpster reaches back over a storage group's unreplicated window: the part of
//! the log the passive copy has not replayed is what a lossy failover now would lose, and only the
//! hubs' dumpsters can put it back. Pure, so the dashboard's red is tested without a site.
//!
//! The rule is `hubrelay health`'s DumpsterCoverage check, kept as spans on a time axis: a hub
//! covers the window when its oldest entry (by delivery time, the order the dumpster evicts in) is
//! no newer than the newest replayed record; an empty dumpster covers it when it never let an
//! entry go (it has delivered nothing of the storage group that it no longer holds).

use serde::Serialize;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// The unreplicated window of a storage group: what the passive copy has not replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// No passive copy answers: there is nothing a failover could mount, so nothing to cover.
    NoPassive,
    /// From the newest record the passive replayed to now; `None` when it has replayed nothing
    /// yet, so the window is the storage group's whole history.
    Since(Option<Millis>),
}

/// What one hub's dumpster of the storage group tells about its reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dumpster {
    /// Delivery time of the oldest entry; `None` when it is empty.
    pub oldest_delivered: Option<Millis>,
    /// Whether it ever evicted or expired an entry (an empty dumpster that did may have held
    /// mail of the window).
    pub let_go: bool,
}

/// How a hub (or, summed up, a storage group) stands against the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cover {
    /// The dumpster reaches back past the window's start.
    Covered,
    /// Part of the window is in no dumpster of this hub: a failover now could lose that mail.
    Gap,
    /// The hub did not answer, so its reach is not known.
    Unknown,
    /// There is no unreplicated window (no passive copy).
    NoWindow,
}

/// One hub's reach over the window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HubCoverage {
    /// The hub.
    pub hub: String,
    /// Where it stands.
    pub state: Cover,
    /// Start of what its dumpster holds (delivery time of its oldest entry); null when it is
    /// empty or the hub did not answer.
    pub reach_start_ms: Option<Millis>,
    /// Start of the uncovered part of the window (null: since the beginning); only for a gap.
    pub gap_start_ms: Option<Millis>,
    /// End of the uncovered part of the window; only for a gap.
    pub gap_end_ms: Option<Millis>,
}

/// A storage group's window and every hub's reach over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SgCoverage {
    /// The storage group.
    pub storage_group: String,
    /// The worst of its hubs: a gap anywhere, else unknown anywhere, else covered.
    pub state: Cover,
    /// Whether a passive copy answered (and so there is a window).
    pub has_passive: bool,
    /// Start of the unreplicated window (the newest replayed record); null when there is no
    /// passive copy or it has replayed nothing.
    pub window_start_ms: Option<Millis>,
    /// End of the window: now.
    pub now_ms: Millis,
    /// Each hub of the site, in site order.
    pub hubs: Vec<HubCoverage>,
}

/// Measures each hub's dumpster (`None`: the hub did not answer) against `window`, at `now`.
pub fn coverage(
    storage_group: &str,
    window: Window,
    hubs: &[(&str, Option<Dumpster>)],
    now: Millis,
) -> SgCoverage {
    let hubs: Vec<HubCoverage> = hubs
        .iter()
        .map(|(hub, dumpster)| hub_coverage(hub, window, *dumpster, now))
        .collect();
    let state = if hubs.iter().any(|h| h.state == Cover::Gap) {
        Cover::Gap
    } else if hubs.iter().any(|h| h.state == Cover::Unknown) {
        Cover::Unknown
    } else if window == Window::NoPassive {
        Cover::NoWindow
    } else {
        Cover::Covered
    };
    SgCoverage {
        storage_group: storage_group.to_string(),
        state,
        has_passive: window != Window::NoPassive,
        window_start_ms: match window {
            Window::Since(start) => start,
            Window::NoPassive => None,
        },
        now_ms: now,
        hubs,
    }
}

fn hub_coverage(hub: &str, window: Window, dumpster: Option<Dumpster>, now: Millis) -> HubCoverage {
    let reach_start_ms = dumpster.and_then(|d| d.oldest_delivered);
    let (state, gap) = match (window, dumpster) {
        (_, None) => (Cover::Unknown, None),
        (Window::NoPassive, Some(_)) => (Cover::NoWindow, None),
        (Window::Since(start), Some(d)) => match d.oldest_delivered {
            // Holds everything delivered since its oldest entry: the window is covered when that
            // entry is no newer than the window's start.
            Some(oldest) if start.is_some_and(|s| oldest <= s) => (Cover::Covered, None),
            Some(oldest) if d.let_go => (Cover::Gap, Some((start, oldest))),
            // It never let an entry go, so it holds everything it ever delivered.
            Some(_) => (Cover::Covered, None),
            None if d.let_go => (Cover::Gap, Some((start, now))),
            None => (Cover::Covered, None),
        },
    };
    HubCoverage {
        hub: hub.to_string(),
        state,
        reach_start_ms,
        gap_start_ms: gap.and_then(|(s, _)| s),
        gap_end_ms: gap.map(|(_, e)| e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 100_000;

    fn holds(oldest: Option<Millis>, let_go: bool) -> Option<Dumpster> {
        Some(Dumpster {
            oldest_delivered: oldest,
            let_go,
        })
    }

    #[test]
    fn each_hub_against_the_window() {
        type Case = (
            &'static str,
            Window,
            Option<Dumpster>,
            Cover,
            Option<(Option<Millis>, Millis)>,
        );
        let cases: &[Case] = &[
            (
                "reaches back past the window",
                Window::Since(Some(50_000)),
                holds(Some(40_000), true),
                Cover::Covered,
                None,
            ),
            (
                "oldest entry exactly at the window's start",
                Window::Since(Some(50_000)),
                holds(Some(50_000), true),
                Cover::Covered,
                None,
            ),
            (
                "evicted into the window: gap up to its oldest entry",
                Window::Since(Some(50_000)),
                holds(Some(70_000), true),
                Cover::Gap,
                Some((Some(50_000), 70_000)),
            ),
            (
                "starts after the window but never let go: holds all it delivered",
                Window::Since(Some(50_000)),
                holds(Some(70_000), false),
                Cover::Covered,
                None,
            ),
            (
                "empty and never let go: delivered nothing it lost",
                Window::Since(Some(50_000)),
                holds(None, false),
                Cover::Covered,
                None,
            ),
            (
                "empty after evicting: the whole window is a gap",
                Window::Since(Some(50_000)),
                holds(None, true),
                Cover::Gap,
                Some((Some(50_000), NOW)),
            ),
            (
                "nothing replayed yet and the dumpster evicted: gap since the beginning",
                Window::Since(None),
                holds(Some(70_000), true),
                Cover::Gap,
                Some((None, 70_000)),
            ),
            (
                "nothing replayed yet, nothing let go",
                Window::Since(None),
                holds(Some(70_000), false),
                Cover::Covered,
                None,
            ),
            (
                "hub down",
                Window::Since(Some(50_000)),
                None,
                Cover::Unknown,
                None,
            ),
            (
                "no passive copy",
                Window::NoPassive,
                holds(Some(70_000), true),
                Cover::NoWindow,
                None,
            ),
            (
                "no passive copy and hub down",
                Window::NoPassive,
                None,
                Cover::Unknown,
                None,
            ),
        ];
        for (what, window, dumpster, state, gap) in cases {
            let c = coverage("SG1", *window, &[("hub1", *dumpster)], NOW);
            let h = &c.hubs[0];
            assert_eq!(h.state, *state, "{what}");
            assert_eq!(h.gap_end_ms.map(|e| (h.gap_start_ms, e)), *gap, "{what}");
            assert_eq!(
                h.reach_start_ms,
                dumpster.and_then(|d| d.oldest_delivered),
                "{what}"
            );
        }
    }

    #[test]
    fn the_storage_group_shows_its_worst_hub() {
        let w = Window::Since(Some(50_000));
        let covered = holds(Some(40_000), true);
        let gap = holds(Some(60_000), true);
        let state = |hubs: &[(&str, Option<Dumpster>)], window| coverage("SG1", window, hubs, NOW);
        assert_eq!(
            state(&[("hub1", covered), ("hub2", covered)], w).state,
            Cover::Covered
        );
        assert_eq!(
            state(&[("hub1", covered), ("hub2", None)], w).state,
            Cover::Unknown
        );
        assert_eq!(state(&[("hub1", None), ("hub2", gap)], w).state, Cover::Gap);
        let none = state(&[("hub1", covered)], Window::NoPassive);
        assert_eq!(none.state, Cover::NoWindow);
        assert!(!none.has_passive);
        assert_eq!(none.window_start_ms, None);
        let some = state(&[("hub1", covered)], w);
        assert!(some.has_passive);
        assert_eq!((some.window_start_ms, some.now_ms), (Some(50_000), NOW));
    }
}

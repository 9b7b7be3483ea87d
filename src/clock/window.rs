//! Resubmission windows, on the clock of the hub that serves them.
//!
//! A hub's dumpster is indexed by the hub's own delivery time, so a window is only meaningful on
//! that hub's clock. A mailbox node asking for one after a lossy mount therefore never sends a time
//! of its own clock: the start is a time the hub stamped itself (its `Received:` time on the newest
//! record from it that the node holds — every later record, lost ones included, was delivered by
//! that hub after it), less [`MARGIN_MS`]; the end is left open, and the hub closes it with its own
//! now when it first records the request. Resolving that on the hub ([`resolve`]) can never give a
//! start after the end, whatever the clocks of the node, of the node that wrote the records, or of
//! the hub itself did.

use std::fmt;

use super::rfc3339;

/// How far before the anchor the window starts, and how far past the hub's now it ends: an anchor
/// truncated to its second, a small step of the hub's own clock, and a reply that reached the hub
/// after the request was made (an old active that acknowledged late) all fall inside it.
pub const MARGIN_MS: u64 = 5 * 60 * 1000;

/// A window start on a hub's clock, from `anchor`: the hub's own stamp on the newest record from
/// it that the asking node holds. Without one (no record of that hub is known) the start is 0, the
/// hub's whole dumpster, which is always safe: the mailbox drops what it already holds.
pub fn low_from_anchor(anchor: Option<u64>) -> u64 {
    anchor.map_or(0, |a| a.saturating_sub(MARGIN_MS))
}

/// A resolved window on the hub's delivery clock: `low_ms <= high_ms` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First delivery time included.
    pub low_ms: u64,
    /// Last delivery time included.
    pub high_ms: u64,
    /// The asked start lay in the hub's future (its clock stepped back since it stamped the
    /// anchor), so the whole dumpster is taken instead.
    pub widened: bool,
}

/// Why a hub refuses a window.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// An explicit window whose start is after its end.
    #[error("`low` ({}) is after `high` ({})", rfc3339(*.low_ms), rfc3339(*.high_ms))]
    Inverted {
        /// The asked start.
        low_ms: u64,
        /// The asked end.
        high_ms: u64,
    },
}

/// The window a hub serves for an asked `low` and `high`, at its own `now` with `newest` the
/// delivery time of the newest entry of the storage group's dumpster.
///
/// - `high` given (an operator's request, or a mailbox node of the previous release): served as
///   asked, and refused if `low` is after it — that caller chose both bounds.
/// - `high` open (a mailbox node after a lossy mount): the end is the later of `now` plus the
///   margin and `newest` (everything the dumpster holds, also entries stamped before a backward
///   step of this hub's clock); a start after `now` can only be a stamp from before such a step,
///   so the whole dumpster is taken. Never refused.
pub fn resolve(
    low: u64,
    high: Option<u64>,
    now: u64,
    newest: Option<u64>,
) -> Result<Window, WindowError> {
    match high {
        Some(high_ms) => {
            let low_ms = low;
            if low_ms > high_ms {
                return Err(WindowError::Inverted { low_ms, high_ms });
            }
            Ok(Window {
                low_ms,
                high_ms,
                widened: false,
            })
        }
        None => {
            let high_ms = now.saturating_add(MARGIN_MS).max(newest.unwrap_or(0));
            let (low_ms, widened) = if low <= now { (low, false) } else { (0, true) };
            Ok(Window {
                low_ms,
                high_ms,
                widened,
            })
        }
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} .. {}", rfc3339(self.low_ms), rfc3339(self.high_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Times around the present, and far from it both ways.
    fn time() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..10_000_000,
            1_700_000_000_000u64..1_900_000_000_000,
            (u64::MAX - 10_000_000)..=u64::MAX,
        ]
    }

    /// An offset of a clock from real time: none, seconds, hours, decades, either way.
    fn offset() -> impl Strategy<Value = i64> {
        prop_oneof![
            Just(0i64),
            -120_000i64..120_000,
            -36_000_000i64..36_000_000,
            -1_000_000_000_000i64..1_000_000_000_000,
        ]
    }

    fn on(clock: i64, real: u64) -> u64 {
        real.saturating_add_signed(clock)
    }

    #[test]
    fn the_observed_window_is_no_longer_inverted() {
        // The node's newest record was written by a clock an hour ahead; the hub's clock is right.
        let hub_now = 1_795_341_600_000;
        let hub_stamp = hub_now - 10_000;
        let w = resolve(
            low_from_anchor(Some(hub_stamp)),
            None,
            hub_now,
            Some(hub_now),
        )
        .unwrap();
        assert_eq!(w.low_ms, hub_stamp - MARGIN_MS);
        assert_eq!(w.high_ms, hub_now + MARGIN_MS);
        assert!(!w.widened);
    }

    #[test]
    fn an_explicit_inverted_window_is_refused_and_says_why() {
        let e = resolve(2_000, Some(1_000), 0, None).unwrap_err();
        assert_eq!(
            e,
            WindowError::Inverted {
                low_ms: 2_000,
                high_ms: 1_000
            }
        );
        assert!(e.to_string().contains("is after"), "{e}");
    }

    #[test]
    fn no_anchor_is_the_whole_dumpster() {
        let w = resolve(low_from_anchor(None), None, 50_000, None).unwrap();
        assert_eq!(
            (w.low_ms, w.high_ms, w.widened),
            (0, 50_000 + MARGIN_MS, false)
        );
    }

    #[test]
    fn an_anchor_in_the_hubs_future_widens_to_the_whole_dumpster() {
        let now = 1_000_000_000;
        let w = resolve(now + 1, None, now, Some(now + 3_600_000)).unwrap();
        assert_eq!((w.low_ms, w.high_ms, w.widened), (0, now + 3_600_000, true));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        /// Whatever is asked and whatever the hub's clock reads, a served window never starts
        /// after it ends; only an explicit inverted pair is refused.
        #[test]
        fn a_window_never_starts_after_it_ends(
            low in time(),
            high in proptest::option::of(time()),
            now in time(),
            newest in proptest::option::of(time()),
        ) {
            match resolve(low, high, now, newest) {
                Ok(w) => {
                    prop_assert!(w.low_ms <= w.high_ms, "{w:?}");
                    if let Some(h) = high {
                        prop_assert_eq!((w.low_ms, w.high_ms), (low, h));
                    } else {
                        prop_assert!(w.high_ms >= now && w.high_ms >= newest.unwrap_or(0));
                    }
                }
                Err(WindowError::Inverted { low_ms, high_ms }) => {
                    prop_assert_eq!(Some(high_ms), high);
                    prop_assert!(low_ms > high_ms);
                }
            }
        }

        /// The failover case end to end: a hub (clock `hub` off real time) stamps a record the
        /// node keeps at real time `stamped`, later delivers a record the node lost, and serves
        /// the request later still. The node's own clock, and the clock of the node that wrote
        /// the records, play no part; the lost delivery is inside the window for any offset of
        /// the hub's clock, also one far from real time, and also when the stamp is the hub's
        /// receive time truncated to its second.
        #[test]
        fn a_lost_delivery_is_always_inside_the_window(
            hub in offset(),
            stamped in 1_700_000_000_000u64..1_800_000_000_000,
            queued in 0u64..86_400_000,
            lost_after in 0u64..3_600_000,
            served_after in 0u64..86_400_000,
        ) {
            let stamp = on(hub, stamped) / 1_000 * 1_000;
            let delivered_real = stamped + queued + lost_after;
            let delivered = on(hub, delivered_real);
            let now = on(hub, delivered_real + served_after);
            let w = resolve(low_from_anchor(Some(stamp)), None, now, Some(delivered)).unwrap();
            prop_assert!(w.low_ms <= delivered && delivered <= w.high_ms, "{delivered} outside {w:?}");
        }

        /// The hub's clock stepped back after it stamped the anchor: by less than the margin the
        /// window still starts early enough; by more, whenever the anchor lies in the hub's future
        /// when it serves, the whole dumpster is taken. Entries stamped before the step, ahead of
        /// the hub's now, are inside the window too.
        #[test]
        fn a_step_back_of_the_hubs_clock_loses_nothing_it_can_see(
            before in offset(),
            step in prop_oneof![0i64..(MARGIN_MS as i64), 0i64..36_000_000],
            stamped in 1_700_000_000_000u64..1_800_000_000_000,
            lost_before_step in any::<bool>(),
            after in 0u64..600_000,
        ) {
            let stamp = on(before, stamped);
            let delivered = if lost_before_step {
                on(before, stamped + after)
            } else {
                on(before - step, stamped + after)
            };
            let now = on(before - step, stamped + after + 1);
            prop_assume!(step < MARGIN_MS as i64 || low_from_anchor(Some(stamp)) > now);
            let newest = delivered.max(stamp);
            let w = resolve(low_from_anchor(Some(stamp)), None, now, Some(newest)).unwrap();
            prop_assert!(w.low_ms <= delivered && delivered <= w.high_ms, "{delivered} outside {w:?}");
        }
    }
}
